#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
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

/// A daemon that answers requests on a control socket: one JSON object per line each way, every request carrying
/// `version`. `tandem replicad` and `tandem heartbeatd` are two.
public protocol ControlHandler: Sendable {
    associatedtype Request: Decodable & Sendable
    associatedtype Response: Encodable & Sendable
    /// The protocol version this daemon speaks; a request with another is answered `bad-request`.
    static var protocolVersion: Int { get }
    /// Longest request line (newline excluded) and longest response line.
    static var requestBytesMaximum: Int { get }
    static var responseBytesMaximum: Int { get }
    /// The daemon's name in messages, such as "replicad".
    static var daemonName: String { get }
    /// The response that carries a refusal, a malformed request or a failure of the server itself.
    static func errorResponse(_ kind: ControlErrorKind, _ message: String) -> Response
    func handle(_ request: Request) async -> Response
}

public enum ControlErrorKind: Sendable {
    case refused
    case badRequest
    case failed
}

/// Splits the control stream into lines of at most `maximumBytes` bytes. A longer line is
/// reported once as `overlong` and the rest of the stream is dropped: the server answers and closes.
struct ControlLineDecoder: ByteToMessageDecoder {
    typealias InboundOut = ControlFrame

    let maximumBytes: Int
    private var overflowed = false

    init(maximumBytes: Int) { self.maximumBytes = maximumBytes }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if overflowed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        if let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - buffer.readerIndex
            guard length <= maximumBytes else { return overflow(context, &buffer) }
            let line = buffer.readSlice(length: length)!
            buffer.moveReaderIndex(forwardBy: 1)
            context.fireChannelRead(Self.wrapInboundOut(.line(line)))
            return .continue
        }
        if buffer.readableBytes > maximumBytes { return overflow(context, &buffer) }
        return .needMoreData
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        // A last line without its newline is still a request (printf '{...}' | socat ...).
        if !overflowed && buffer.readableBytes > 0 && buffer.readableBytes <= maximumBytes {
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

/// A control socket: mode 0600, clients with uid 0 or the daemon's uid only (SO_PEERCRED).
///
/// Limits: at most `connectionsMaximum` connections at once (more are answered `refused` and closed); a connection
/// idle for `idleTimeout` is closed; request lines are at most `Handler.requestBytesMaximum` bytes.
public final class ControlServer<Handler: ControlHandler>: Sendable {
    public static var connectionsMaximum: Int { 16 }
    public static var idleTimeout: TimeAmount { .minutes(15) }

    typealias Connection = NIOAsyncChannel<ControlFrame, ByteBuffer>
    typealias Server = NIOAsyncChannel<Connection, Never>

    let path: String
    let handler: Handler
    let logger: Logger
    private let server: Server
    private let connections = Mutex(0)

    private init(path: String, handler: Handler, logger: Logger, server: Server) {
        self.path = path
        self.handler = handler
        self.logger = logger
        self.server = server
    }

    /// Binds the socket (replacing a stale socket file: the caller holds the run directory's lock) and sets its mode.
    public static func bind(
        path: String, handler: Handler, group: any EventLoopGroup, logger: Logger
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
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(ControlLineDecoder(maximumBytes: Handler.requestBytesMaximum)))
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: Self.idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(IdleConnectionCloser())
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        guard chmod(path, 0o600) == 0 else {
            let code = errno
            try? await server.channel.close()
            throw DaemonStartError("cannot set mode 0600 on \(path): \(String(cString: strerror(code)))", exitCode: 20)
        }
        return ControlServer(path: path, handler: handler, logger: logger, server: server)
    }

    /// Accepts connections until `close`, serving each in a child task; then waits for them.
    public func run() async throws {
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
    public func close() {
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
                        Self.encode(Handler.errorResponse(.refused, "more than \(Self.connectionsMaximum) control connections")))
                    return
                }
                if let refusal = await self.credentialsProblem(connection.channel) {
                    logger.warning("control connection refused: \(refusal)")
                    try await outbound.write(Self.encode(Handler.errorResponse(.refused, refusal)))
                    return
                }
                for try await frame in inbound {
                    switch frame {
                    case .overlong:
                        try await outbound.write(Self.encode(Handler.errorResponse(
                            .badRequest, "request longer than \(Handler.requestBytesMaximum) bytes")))
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
            return "permission denied: uid \(credentials.uid) (pid \(credentials.pid)) may not control \(Handler.daemonName)"
        } catch {
            return "cannot read the client's credentials: \(error)"
        }
    }

    private func answer(_ line: ByteBuffer) async -> Handler.Response {
        let bytes = Data(line.readableBytesView)
        let decoder = JSONDecoder()
        guard let envelope = try? decoder.decode(ControlEnvelope.self, from: bytes) else {
            return Handler.errorResponse(.badRequest, "not a JSON object with a 'version' field")
        }
        guard envelope.version == Handler.protocolVersion else {
            return Handler.errorResponse(
                .badRequest,
                "protocol version \(envelope.version) is not spoken here (this daemon speaks \(Handler.protocolVersion))")
        }
        let request: Handler.Request
        do {
            request = try decoder.decode(Handler.Request.self, from: bytes)
        } catch {
            return Handler.errorResponse(.badRequest, "not a valid request: \(error)")
        }
        return await handler.handle(request)
    }

    static func encode(_ response: Handler.Response) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var data = (try? encoder.encode(response)) ?? Data()
        if data.count + 1 > Handler.responseBytesMaximum || data.isEmpty {
            data = (try? encoder.encode(Handler.errorResponse(.failed, "the response would exceed the protocol's limit"))) ?? Data()
        }
        data.append(UInt8(ascii: "\n"))
        return ByteBuffer(bytes: data)
    }
}

/// What every request carries, read first so that a request of another version gets a clear answer.
private struct ControlEnvelope: Decodable { var version: Int }

/// Why a daemon could not start, with the exit code the CLI uses.
public struct DaemonStartError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var exitCode: Int32
    public init(_ message: String, exitCode: Int32) {
        self.message = message
        self.exitCode = exitCode
    }
    public var description: String { message }
}
