import DaemonSupport
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// An NBD server: listens on a Unix domain socket (or TCP), runs one `NBDSessionMachine` per connection and hands
/// the I/O actions to the backend of the export the client chose.
public final class NBDServer: Sendable {
    public struct Export: Sendable {
        public var name: String
        public var backend: any NBDBackend
        public init(name: String, backend: any NBDBackend) {
            self.name = name
            self.backend = backend
        }
    }

    public enum Address: Sendable, Hashable, CustomStringConvertible {
        case unixDomainSocket(path: String)
        case tcp(host: String, port: Int)

        public var description: String {
            switch self {
            case .unixDomainSocket(let path): path
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            }
        }
    }

    private let channel: any Channel
    private let socketPath: String?
    /// The address asked for at `start`.
    public let address: Address

    /// The bound address (for TCP with port 0, the port the system chose).
    public var localAddress: SocketAddress? { channel.localAddress }

    private init(channel: any Channel, socketPath: String?, address: Address) {
        self.channel = channel
        self.socketPath = socketPath
        self.address = address
    }

    /// Binds and starts accepting. The first export is the default one (the empty name selects it). `log` receives
    /// one line per connection event worth an operator's attention (hostile input, disconnects).
    public static func start(
        address: Address, exports: [Export], limits: NBDLimits = NBDLimits(), group: any EventLoopGroup,
        log: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws -> NBDServer {
        precondition(!exports.isEmpty, "an NBD server needs at least one export")
        precondition(Set(exports.map(\.name)).count == exports.count, "export names must be unique")
        let connections = ConnectionCounter(maximum: limits.connectionsMax)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { channel in
                guard connections.admit() else {
                    log("NBD connection refused: \(limits.connectionsMax) connections are open already")
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in connections.release() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NBDSessionHandler(exports: exports, limits: limits, log: log))
                }
            }
        switch address {
        case .unixDomainSocket(let path):
            let channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            // The export is the raw device: only its owner (root) may connect, whatever the umask was.
            guard chmod(path, 0o600) == 0 else {
                let code = errno
                try? await channel.close()
                throw IOError(errnoCode: code, reason: "chmod 0600 \(path)")
            }
            return NBDServer(channel: channel, socketPath: path, address: address)
        case .tcp(let host, let port):
            let channel = try await bootstrap
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .bind(host: host, port: port).get()
            return NBDServer(channel: channel, socketPath: nil, address: address)
        }
    }

    /// Stops accepting and removes the socket file. Connections already accepted run until their clients leave.
    public func close() async throws {
        try await channel.close()
        if let socketPath { try? FileManager.default.removeItem(atPath: socketPath) }
    }
}

/// Counts a server's open connections against its limit.
private final class ConnectionCounter: Sendable {
    private let open = Mutex(0)
    let maximum: Int

    init(maximum: Int) { self.maximum = maximum }

    func admit() -> Bool {
        open.withLock { count in
            guard count < maximum else { return false }
            count += 1
            return true
        }
    }

    func release() { open.withLock { $0 -= 1 } }
}

/// Unique connection numbers for `NBDClient`.
private let nextConnectionID = Atomic<UInt64>(1)

/// The per-connection shell: bytes in, machine, actions out. Confined to its channel's event loop.
final class NBDSessionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: NBDSessionMachine
    private let backends: [String: any NBDBackend]
    private let log: @Sendable (String) -> Void
    private var context: ChannelHandlerContext?
    private var backend: (any NBDBackend)?
    private var greeted = false
    private var client: NBDClient
    /// The backend this connection holds open (between entering transmission and closing).
    private var attachedBackend: (any NBDBackend)?
    private var readingPaused = false
    private var readPending = false

    init(exports: [NBDServer.Export], limits: NBDLimits, log: @escaping @Sendable (String) -> Void) {
        // Sizes, writability and availability are read when the connection starts, so a new connection sees the
        // current role.
        machine = NBDSessionMachine(
            exports: exports.map {
                NBDExport(
                    name: $0.name, sizeBytes: $0.backend.sizeBytes, isWritable: $0.backend.isWritable,
                    unavailableReason: $0.backend.unavailableReason)
            }, limits: limits)
        client = NBDClient(
            connectionID: nextConnectionID.wrappingAdd(1, ordering: .relaxed).oldValue, description: "NBD client")
        backends = Dictionary(uniqueKeysWithValues: exports.map { ($0.name, $0.backend) })
        self.log = log
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { greet(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        detach()
    }

    func channelActive(context: ChannelHandlerContext) {
        greet(context)
        context.fireChannelActive()
    }

    /// Says who the client is, for "held open by" messages: its process on a Unix socket, its address on TCP.
    /// Negotiation takes round trips, so the answer is in long before a client can enter transmission.
    private func identifyClient(_ context: ChannelHandlerContext) {
        switch context.channel.remoteAddress {
        case .unixDomainSocket?, nil: break
        case let address?:
            client.description = "NBD client \(address)"
            return
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        UnixPeerCredentials.of(context.channel)?.whenSuccess { credentials in
            bound.value.client.description = "NBD client \(credentials.processDescription)"
        }
    }

    private func detach() {
        attachedBackend?.clientDetached(client)
        attachedBackend = nil
    }

    private func greet(_ context: ChannelHandlerContext) {
        guard !greeted else { return }
        greeted = true
        identifyClient(context)
        perform(machine.connected(), context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
        perform(machine.received(bytes), context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        _ = machine.connectionClosed()
        detach()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        log("NBD connection error: \(error)")
        _ = machine.connectionClosed()
        context.close(promise: nil)
    }

    /// Back-pressure both ways: while the machine has paused reading (in-flight limit) or the socket's send buffer
    /// is full (a client that sends but does not read its replies), NIO's read requests are held here.
    func read(context: ChannelHandlerContext) {
        if readingPaused || !context.channel.isWritable {
            readPending = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        resumeReadingIfAllowed(context)
        context.fireChannelWritabilityChanged()
    }

    private func resumeReadingIfAllowed(_ context: ChannelHandlerContext) {
        guard readPending, !readingPaused, context.channel.isWritable else { return }
        readPending = false
        context.read()
    }

    private func completed(handle: UInt64, _ completion: NBDCompletion) {
        guard let context else { return }
        perform(machine.completed(handle: handle, completion), context)
    }

    private func perform(_ actions: [NBDSessionMachine.Action], _ context: ChannelHandlerContext) {
        var lastWrite: EventLoopFuture<Void>?
        for action in actions {
            switch action {
            case .sendBytes(let bytes):
                lastWrite = context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)))
            case .startTransmission(let export):
                backend = backends[export.name]
                backend?.clientAttached(client)
                attachedBackend = backend
            case .pauseReading:
                readingPaused = true
            case .resumeReading:
                readingPaused = false
                resumeReadingIfAllowed(context)
            case .disconnect(let reason):
                log("NBD connection closed: \(reason)")
                context.flush()
                let channel = context.channel
                (lastWrite ?? context.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in
                    channel.close(promise: nil)
                }
                return
            default:
                submit(action, context)
            }
        }
        context.flush()
    }

    /// Hands an I/O action to the backend; the completion comes back on the event loop, always asynchronously, so
    /// the machine is never re-entered from inside `perform`.
    private func submit(_ action: NBDSessionMachine.Action, _ context: ChannelHandlerContext) {
        guard let backend else { preconditionFailure("I/O action \(action) before the export was chosen") }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        func done(_ handle: UInt64) -> @Sendable (NBDCompletion) -> Void {
            { completion in bound.eventLoop.execute { bound.value.completed(handle: handle, completion) } }
        }
        switch action {
        case .read(let handle, let offset, let length):
            backend.read(offset: offset, length: length, completion: done(handle))
        case .write(let handle, let offset, let payload, let fua):
            backend.write(offset: offset, bytes: payload, fua: fua, completion: done(handle))
        case .flush(let handle):
            backend.flush(completion: done(handle))
        case .trim(let handle, let offset, let length, let fua):
            backend.trim(offset: offset, length: length, fua: fua, completion: done(handle))
        case .writeZeroes(let handle, let offset, let length, let fua):
            backend.writeZeroes(offset: offset, length: length, fua: fua, completion: done(handle))
        default:
            preconditionFailure("not an I/O action: \(action)")
        }
    }
}

@available(*, unavailable)
extension NBDSessionHandler: Sendable {}
