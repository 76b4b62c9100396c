#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DeviceFrontend
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// One frame read from a control connection: a request line, or the news that a line exceeded the limit.
enum ControlFrame: Sendable {
    case line(ByteBuffer)
    case overlong
}

/// Splits the control stream into lines of at most `ControlProtocol.requestBytesMaximum` bytes. A longer line is
/// reported once as `overlong` and the rest of the stream is dropped: the server answers and closes.
struct ControlLineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ControlFrame

    private var overflowed = false

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if overflowed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        if let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - buffer.readerIndex
            guard length <= ControlProtocol.requestBytesMaximum else { return overflow(context, &buffer) }
            let line = buffer.readSlice(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            context.fireChannelRead(Self.wrapInboundOut(.line(line)))
            return .continue
        }
        if buffer.readableBytes > ControlProtocol.requestBytesMaximum { return overflow(context, &buffer) }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        // A last line without its newline is still a request (printf '{...}' | socat ...).
        if !overflowed && buffer.readableBytes > 0 && buffer.readableBytes <= ControlProtocol.requestBytesMaximum {
            let line = buffer.readSlice(length: buffer.readableBytes)!
            context.fireChannelRead(Self.wrapInboundOut(.line(line)))
            return .continue
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }

    private mutating func overflow(_ context: ChannelHandlerContext, _ buffer: inout ByteBuffer) -> DecodingState {
        overflowed = true
        buffer.moveReaderIndex(to: buffer.writerIndex)
        context.fireChannelRead(Self.wrapInboundOut(.overlong))
        return .needMoreData
    }
}

/// Closes a control connection that sent nothing for the idle limit.
final class IdleConnectionCloser: ChannelInboundHandler {
    typealias InboundIn = ControlFrame
    typealias InboundOut = ControlFrame

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

@available(*, unavailable)
extension IdleConnectionCloser: Sendable {}

/// The control socket: `<run-dir>/replicad.sock`, mode 0600, clients with uid 0 or the daemon's uid only.
///
/// Limits: at most `connectionsMaximum` connections at once (more are answered `refused` and closed); a connection
/// idle for `idleTimeout` is closed; request lines are at most 64 KiB (see `ControlProtocol`).
public final class ControlServer: Sendable {
    public static let connectionsMaximum = 16
    public static let idleTimeout: TimeAmount = .minutes(15)

    typealias Connection = NIOAsyncChannel<ControlFrame, ByteBuffer>
    typealias Server = NIOAsyncChannel<Connection, Never>

    let path: String
    let daemon: ReplicationDaemon
    let logger: Logger
    private let server: Server
    private let connections = Mutex(0)

    private init(path: String, daemon: ReplicationDaemon, logger: Logger, server: Server) {
        self.path = path
        self.daemon = daemon
        self.logger = logger
        self.server = server
    }

    /// Binds the socket (replacing a stale socket file: the caller holds the run directory's lock) and sets its mode.
    public static func bind(
        path: String, daemon: ReplicationDaemon, group: any EventLoopGroup, logger: Logger
    ) async throws -> ControlServer {
        guard path.utf8.count < 108 else {
            throw DaemonStartError(
                "the control socket path \(path) is longer than a Unix socket path may be (107 bytes); use a shorter --run-dir",
                exitCode: 64)
        }
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            // A client that half-closes after its request (`socat`, `nc -N`) still gets its answer.
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ControlLineDecoder()))
                    try channel.pipeline.syncOperations.addHandler(
                        IdleStateHandler(readTimeout: ControlServer.idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(IdleConnectionCloser())
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        guard chmod(path, 0o600) == 0 else {
            let code = errno
            try? await server.channel.close()
            throw DaemonStartError("cannot set mode 0600 on \(path): \(String(cString: strerror(code)))", exitCode: 20)
        }
        return ControlServer(path: path, daemon: daemon, logger: logger, server: server)
    }

    /// Accepts connections until `close`, serving each in a child task; then waits for them.
    func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { inbound in
                for try await connection in inbound {
                    group.addTask { await self.serve(connection) }
                }
            }
            // Closed: idle clients are waiting for nothing; end their connections.
            group.cancelAll()
        }
    }

    /// Stops accepting; `run` returns once the connections have ended.
    func close() {
        server.channel.close(promise: nil)
        unlink(path)
    }

    private func serve(_ connection: Connection) async {
        let admitted = connections.withLock { count -> Bool in
            guard count < Self.connectionsMaximum else { return false }
            count += 1
            return true
        }
        defer { if admitted { connections.withLock { $0 -= 1 } } }
        do {
            try await connection.executeThenClose { inbound, outbound in
                guard admitted else {
                    try await outbound.write(
                        Self.encode(ControlResponse(.refused, "more than \(Self.connectionsMaximum) control connections")))
                    return
                }
                if let refusal = await self.credentialsProblem(connection.channel) {
                    logger.warning("control connection refused: \(refusal)")
                    try await outbound.write(Self.encode(ControlResponse(.refused, refusal)))
                    return
                }
                for try await frame in inbound {
                    switch frame {
                    case .overlong:
                        try await outbound.write(Self.encode(ControlResponse(
                            .badRequest, "request longer than \(ControlProtocol.requestBytesMaximum) bytes")))
                        return
                    case .line(let line):
                        let response = await self.answer(line)
                        try await outbound.write(Self.encode(response))
                    }
                }
            }
        } catch {
            logger.debug("control connection ended: \(error)")
        }
    }

    /// SO_PEERCRED: only root and the daemon's own user may control it.
    private func credentialsProblem(_ channel: any Channel) async -> String? {
        guard let request = UnixPeerCredentials.of(channel) else { return "cannot read the client's credentials" }
        do {
            let credentials = try await request.get()
            if credentials.uid == 0 || credentials.uid == getuid() { return nil }
            return "permission denied: uid \(credentials.uid) (pid \(credentials.pid)) may not control replicad"
        } catch {
            return "cannot read the client's credentials: \(error)"
        }
    }

    private func answer(_ line: ByteBuffer) async -> ControlResponse {
        struct Envelope: Decodable { var version: Int }
        let bytes = Data(line.readableBytesView)
        let decoder = JSONDecoder()
        guard let envelope = try? decoder.decode(Envelope.self, from: bytes) else {
            return ControlResponse(.badRequest, "not a JSON object with a 'version' field")
        }
        guard envelope.version == ControlProtocol.version else {
            return ControlResponse(
                .badRequest, "protocol version \(envelope.version) is not spoken here (this daemon speaks \(ControlProtocol.version))")
        }
        let request: ControlRequest
        do {
            request = try decoder.decode(ControlRequest.self, from: bytes)
        } catch {
            return ControlResponse(.badRequest, "not a valid request: \(error)")
        }
        return await daemon.handle(request)
    }

    static func encode(_ response: ControlResponse) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = (try? encoder.encode(response)) ?? Data()
        if data.count + 1 > ControlProtocol.responseBytesMaximum || data.isEmpty {
            data = (try? encoder.encode(ControlResponse(.failed, "the response would exceed the protocol's limit"))) ?? Data()
        }
        data.append(UInt8(ascii: "\n"))
        return ByteBuffer(bytes: data)
    }
}

/// Why the daemon could not start, with the exit code the CLI uses.
public struct DaemonStartError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var exitCode: Int32
    public init(_ message: String, exitCode: Int32) {
        self.message = message
        self.exitCode = exitCode
    }
    public var description: String { message }
}
