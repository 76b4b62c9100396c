import NIOCore
import ReplicationCore

/// The one handler on every replication socket while its connection is being made: turns bytes into a hello, then
/// into packets, and hands both to the `TransportCore`. It decides nothing: which sockets to keep is the pairing
/// machine's business, what a packet means the replication machine's. Confined to the transport's event loop, like
/// the core it reports to.
///
/// Phases: `hello` collects the first `ChannelHello.encodedBytes`; `pending` (hello exchanged, connection not yet
/// established) decodes frames eagerly, so garbage is refused at once, but holds at most `pendingPacketsMax`
/// packets; `handedOver`: the connection is established and the core gave the socket to an `EstablishedConnection`
/// (with the packets held and the bytes not yet decoded), so what SwiftNIO reports about it no longer matters.
final class ReplicationSocketHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    /// Packets a peer may send before this side has established the connection: the peer's first handshake packet
    /// and perhaps a ping. A peer that sends more is not following the protocol.
    static let pendingPacketsMax = 16

    private enum Phase {
        case hello
        case pending
        case handedOver
        case failed
    }

    private let core: TransportCore
    /// Set at once for outgoing sockets, on `channelActive` for accepted ones.
    private var socket: ConnectionPairingMachine.SocketID?
    private let outgoing: Bool
    /// The socket's descriptor, which SwiftNIO owns until the core hands the socket over.
    let descriptor: CInt
    private let frameBytesMax: Int
    private var phase = Phase.hello
    private var helloBytes: [UInt8] = []
    private var decoder = PacketDecoder()
    private var pendingPackets: [Packet] = []
    private var context: ChannelHandlerContext?
    /// Why the socket is closing, when this side knows better than "closed by the peer".
    private var closeReason: String?

    init(core: TransportCore, socket: ConnectionPairingMachine.SocketID?, descriptor: CInt, frameBytesMax: Int) {
        self.core = core
        self.socket = socket
        self.outgoing = socket != nil
        self.descriptor = descriptor
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
        if phase != .handedOver {
            phase = .failed
            if let socket { core.socketClosed(socket, reason: closeReason ?? "connection closed by the peer") }
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closeReason == nil { closeReason = "\(error)" }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard let socket else { return }
        switch phase {
        case .hello:
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
            // What came after the hello in the same read goes to the decoder first: the core may establish the
            // connection here and take the decoder with it.
            buffer.withUnsafeReadableBytes { decoder.append($0) }
            core.helloReceived(socket, hello)
            if phase == .pending { decodePending() }
        case .pending:
            buffer.withUnsafeReadableBytes { decoder.append($0) }
            decodePending()
        case .handedOver, .failed:
            return
        }
    }

    // MARK: Called by the core

    /// The connection this socket belongs to is established: the packets held and the bytes not yet decoded, for
    /// the thread that reads the socket from now on. Nil unless the hello was exchanged and nothing failed.
    func handOver() -> (heldPackets: [Packet], decoder: PacketDecoder)? {
        guard phase == .pending else { return nil }
        phase = .handedOver
        defer {
            pendingPackets = []
            decoder = PacketDecoder()
        }
        return (pendingPackets, decoder)
    }

    /// Closes with a reason that the core will hear back in `socketClosed`.
    func close(reason: String) {
        if closeReason == nil { closeReason = reason }
        context?.close(promise: nil)
    }

    // MARK: Decoding

    private func decodePending() {
        while phase == .pending {
            let packet: Packet?
            do {
                packet = try decoder.next()
            } catch {
                return fail("corrupt frame", detail: "\(error)")
            }
            guard let packet else { break }
            guard pendingPackets.count < Self.pendingPacketsMax else {
                return fail(
                    "protocol error",
                    detail: "more than \(Self.pendingPacketsMax) packets before the connection was established")
            }
            pendingPackets.append(packet)
        }
        // After a full drain the decoder holds only the start of one frame; a frame longer than the limit is refused
        // once that many bytes have arrived, so one socket never holds more than about `frameBytesMax` bytes.
        if phase == .pending && decoder.bufferedByteCount > frameBytesMax {
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
