import NIOCore
import ReplicationCore

/// The one handler on every replication socket: turns bytes into a hello, then into packets, and hands both to the
/// `TransportCore`. It decides nothing: which sockets to keep is the pairing machine's business, what a packet means
/// the replication machine's. Confined to the transport's event loop, like the core it reports to.
///
/// Phases: `hello` collects the first `ChannelHello.encodedBytes`; `pending` (hello exchanged, connection not yet
/// established) decodes frames eagerly, so garbage is refused at once, but holds at most `pendingPacketsMax`
/// packets; `active` delivers packets as they are decoded, unless paused (max-buffers back-pressure).
final class ReplicationSocketHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    /// Packets a peer may send before this side has established the connection: the peer's first handshake packet
    /// and perhaps a ping. A peer that sends more is not following the protocol.
    static let pendingPacketsMax = 16

    private enum Phase {
        case hello
        case pending
        case active
        case failed
    }

    private let core: TransportCore
    /// Set at once for outgoing sockets, on `channelActive` for accepted ones.
    private var socket: ConnectionPairingMachine.SocketID?
    private let outgoing: Bool
    private let frameBytesMax: Int
    private var phase = Phase.hello
    private var helloBytes: [UInt8] = []
    private var decoder = PacketDecoder()
    private var pendingPackets: [Packet] = []
    private var paused = false
    private var context: ChannelHandlerContext?
    /// Why the socket is closing, when this side knows better than "closed by the peer".
    private var closeReason: String?

    init(core: TransportCore, socket: ConnectionPairingMachine.SocketID?, frameBytesMax: Int) {
        self.core = core
        self.socket = socket
        self.outgoing = socket != nil
        self.frameBytesMax = frameBytesMax
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelActive(context: ChannelHandlerContext) {
        if let socket, outgoing {
            core.outgoingActive(socket, handler: self, channel: context.channel)
        } else {
            _ = core.socketAccepted(self, channel: context.channel)
        }
        context.fireChannelActive()
    }

    /// The ID of an accepted socket, set by the core before it acts on the socket (which may close it at once).
    func assign(_ socket: ConnectionPairingMachine.SocketID) {
        precondition(self.socket == nil, "socket \(String(describing: self.socket)) assigned again as \(socket)")
        self.socket = socket
    }

    func channelInactive(context: ChannelHandlerContext) {
        phase = .failed
        if let socket { core.socketClosed(socket, reason: closeReason ?? "connection closed by the peer") }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closeReason == nil { closeReason = "\(error)" }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard let socket else { return }
        if phase == .hello {
            let needed = ChannelHello.encodedBytes - helloBytes.count
            helloBytes += buffer.readBytes(length: min(needed, buffer.readableBytes)) ?? []
            let hello: ChannelHello?
            do {
                hello = try ChannelHello.decode(helloBytes)
            } catch {
                phase = .failed
                core.helloRefused(socket, error)
                return
            }
            guard let hello else { return }
            phase = .pending
            helloBytes = []
            // The core may establish the connection (and activate this handler) or close the socket here.
            core.helloReceived(socket, hello)
        }
        guard phase == .pending || phase == .active, buffer.readableBytes > 0 else { return }
        buffer.withUnsafeReadableBytes { decoder.append($0) }
        drain()
    }

    // MARK: Called by the core

    /// The connection this socket belongs to is established: deliver what was held, then everything that follows.
    func activate(paused: Bool) {
        guard phase == .pending else { return }
        phase = .active
        setPaused(paused)
        let held = pendingPackets
        pendingPackets = []
        for packet in held {
            guard phase == .active else { return }
            core.packetReceived(packet, on: socket!)
        }
        drain()
    }

    /// max-buffers back-pressure: stop delivering and reading, or resume both.
    func setPaused(_ paused: Bool) {
        self.paused = paused
        guard let context else { return }
        context.channel.setOption(ChannelOptions.autoRead, value: !paused).whenFailure { _ in }
        if !paused && phase == .active { drain() }
    }

    /// Closes with a reason that the core will hear back in `socketClosed`.
    func close(reason: String) {
        if closeReason == nil { closeReason = reason }
        context?.close(promise: nil)
    }

    // MARK: Decoding

    private func drain() {
        while phase == .pending || (phase == .active && !paused) {
            let packet: Packet?
            do {
                packet = try decoder.next()
            } catch {
                return fail("corrupt frame", detail: "\(error)")
            }
            guard let packet else { break }
            if phase == .pending {
                guard pendingPackets.count < Self.pendingPacketsMax else {
                    return fail(
                        "protocol error",
                        detail: "more than \(Self.pendingPacketsMax) packets before the connection was established")
                }
                pendingPackets.append(packet)
            } else {
                core.packetReceived(packet, on: socket!)
            }
        }
        // After a full drain the decoder holds only the start of one frame; a frame longer than the limit is refused
        // once that many bytes have arrived, so one socket never holds more than about `frameBytesMax` bytes.
        if decoder.bufferedByteCount > frameBytesMax && (phase == .pending || (phase == .active && !paused)) {
            fail("corrupt frame", detail: "a frame longer than \(frameBytesMax) bytes")
        }
    }

    private func fail(_ reason: String, detail: String) {
        guard phase != .failed, let socket else { return }
        phase = .failed
        core.socketFailed(socket, reason: reason, detail: detail)
    }
}

@available(*, unavailable)
extension ReplicationSocketHandler: Sendable {}
