/// The u16 command code in a frame header: one per `Packet` case.
///
/// The raw values are part of the wire format and never change. They are grouped with gaps for later additions:
/// `0x00xx` handshake, `0x01xx` replication and resync (data connection), `0x02xx` acknowledgements and liveness
/// (meta connection). Code 0 is reserved and never valid, so a zero-filled header is refused.
public enum PacketCommand: UInt16, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    // Handshake (data connection), in the order it is sent.
    case features = 0x0001
    case authChallenge = 0x0002
    case authResponse = 0x0003
    case protocolParameters = 0x0004
    case sizes = 0x0005
    case uuids = 0x0006
    case state = 0x0007
    case bitmapChunk = 0x0008
    case syncUUID = 0x0009

    // Replication, resync, verify and cluster-wide state changes (data connection).
    case data = 0x0100
    case barrier = 0x0101
    case resyncRequest = 0x0110
    case checksumResyncRequest = 0x0111
    case resyncReply = 0x0112
    case verifyRequest = 0x0120
    case verifyReply = 0x0121
    case outOfSync = 0x0130
    case stateChangeRequest = 0x0140
    case stateChangeReply = 0x0141
    case invalidateRequest = 0x0142
    case pauseResync = 0x0150
    case readRequest = 0x0160
    case readReply = 0x0161

    // Acknowledgements and liveness (meta connection).
    case ping = 0x0200
    case pingAck = 0x0201
    case receiveAck = 0x0210
    case writeAck = 0x0211
    case negativeAck = 0x0212
    case resyncWriteAck = 0x0213
    case barrierAck = 0x0220

    /// The name used in log messages, e.g. "malformed data packet: ...".
    public var name: String {
        switch self {
        case .features: "features"
        case .authChallenge: "auth challenge"
        case .authResponse: "auth response"
        case .protocolParameters: "protocol parameters"
        case .sizes: "sizes"
        case .uuids: "UUIDs"
        case .state: "state"
        case .bitmapChunk: "bitmap chunk"
        case .syncUUID: "sync UUID"
        case .data: "data"
        case .barrier: "barrier"
        case .resyncRequest: "resync request"
        case .checksumResyncRequest: "checksum resync request"
        case .resyncReply: "resync reply"
        case .verifyRequest: "verify request"
        case .verifyReply: "verify reply"
        case .outOfSync: "out-of-sync"
        case .stateChangeRequest: "state change request"
        case .stateChangeReply: "state change reply"
        case .invalidateRequest: "invalidate request"
        case .pauseResync: "pause resync"
        case .readRequest: "read request"
        case .readReply: "read reply"
        case .ping: "ping"
        case .pingAck: "ping ack"
        case .receiveAck: "receive ack"
        case .writeAck: "write ack"
        case .negativeAck: "negative ack"
        case .resyncWriteAck: "resync write ack"
        case .barrierAck: "barrier ack"
        }
    }

    public var description: String { name }

    /// The largest payload this command can have. The decoder refuses a header announcing more as soon as the
    /// header has arrived, without waiting for (or buffering) the payload.
    public var maximumPayloadBytes: Int {
        let range = 12  // u64 sector + u32 sizeBytes
        let lengthPrefix = 4
        let digest = lengthPrefix + PacketCodec.maximumDigestBytes
        return switch self {
        case .features: 12
        case .authChallenge: lengthPrefix + PacketCodec.authChallengeBytes
        case .authResponse: lengthPrefix + PacketCodec.maximumAuthResponseBytes
        case .protocolParameters: 6 + 2 + PacketCodec.maximumAlgorithmNameBytes + 8
        case .sizes: 16
        case .uuids: 48
        case .state: 2
        case .bitmapChunk: 8 + 4 + 8 * PacketCodec.maximumBitmapWords + 1
        case .syncUUID: 8
        case .data: range + 8 + 4 + 4 + lengthPrefix + PacketCodec.maximumBlockBytes
        case .barrier: 4
        case .resyncRequest, .verifyRequest, .readRequest: range + 8
        case .checksumResyncRequest, .verifyReply: range + 8 + digest
        case .resyncReply, .readReply: range + 8 + lengthPrefix + PacketCodec.maximumBlockBytes
        case .outOfSync: range
        case .stateChangeRequest: 8 + 1
        case .stateChangeReply: 8 + 1 + 2 + PacketCodec.maximumReasonBytes
        case .invalidateRequest: 8
        case .pauseResync: 1
        case .ping, .pingAck: 0
        case .receiveAck, .writeAck, .negativeAck: range + 8
        case .resyncWriteAck: range + 8 + 1
        case .barrierAck: 8
        }
    }
}

extension Packet {
    /// The command code this packet is sent with.
    public var command: PacketCommand {
        switch self {
        case .features: .features
        case .authChallenge: .authChallenge
        case .authResponse: .authResponse
        case .protocolParameters: .protocolParameters
        case .sizes: .sizes
        case .uuids: .uuids
        case .state: .state
        case .bitmapChunk: .bitmapChunk
        case .syncUUID: .syncUUID
        case .data: .data
        case .barrier: .barrier
        case .resyncRequest: .resyncRequest
        case .checksumResyncRequest: .checksumResyncRequest
        case .resyncReply: .resyncReply
        case .verifyRequest: .verifyRequest
        case .verifyReply: .verifyReply
        case .outOfSync: .outOfSync
        case .stateChangeRequest: .stateChangeRequest
        case .stateChangeReply: .stateChangeReply
        case .invalidateRequest: .invalidateRequest
        case .pauseResync: .pauseResync
        case .readRequest: .readRequest
        case .readReply: .readReply
        case .ping: .ping
        case .pingAck: .pingAck
        case .receiveAck: .receiveAck
        case .writeAck: .writeAck
        case .negativeAck: .negativeAck
        case .resyncWriteAck: .resyncWriteAck
        case .barrierAck: .barrierAck
        }
    }
}
