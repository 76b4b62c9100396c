import ReplicationCore

/// The link between the two nodes: one logical connection at a time, made of a data and a meta channel. Within a
/// channel delivery is in order, as TCP guarantees; the two channels overtake each other freely. A cut direction
/// holds bytes until it heals (TCP retransmits); whichever side times out first tears the connection down.
struct SimulatedNetwork {
    struct Connection {
        var id: UInt64
        var alive: Bool
        /// Per receiving node and channel: the decoder the receiver's transport feeds.
        var decoders: [[PacketChannel: PacketDecoder]]
    }

    var connection: Connection?
    var nextConnectionID: UInt64 = 1
    var wantsConnection = [false, false]
    /// `cutUntil[from]`: the direction from -> other is cut until this time (nanoseconds).
    var cutUntil: [Int64] = [0, 0]
    /// Per sender and channel: the time the last frame is due, to keep each channel in order.
    var lastDelivery: [[PacketChannel: Int64]] = [[.data: 0, .meta: 0], [.data: 0, .meta: 0]]
    var receivingPaused = [false, false]
    /// Frames held back while a receiver applies max-buffers back-pressure.
    var heldFrames: [[(UInt64, PacketChannel, [UInt8])]] = [[], []]

    mutating func setReceivingPaused(_ paused: Bool, node: Int) { receivingPaused[node] = paused }

    func isCut(from node: Int, at time: Int64) -> Bool { cutUntil[node] > time }
}
