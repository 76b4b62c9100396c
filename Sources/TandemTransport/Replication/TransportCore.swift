#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ReplicationCore

/// The event-loop side of `TCPReplicationTransport`: owns the listener, the sockets and the pairing machine, and
/// carries out the machine's actions. Confined to one event loop; every method runs there.
///
/// It adds three things to the machine's decisions: the map from socket IDs to NIO channels, the generation
/// counter (which connection the node's calls refer to), and the event sink, which only ever hears of the
/// connection the machine currently holds.
final class TransportCore {
    private enum State {
        case created
        case running
        case shutDown
    }

    private struct Socket {
        var channel: any Channel
        var handler: ReplicationSocketHandler
    }

    private let configuration: TCPReplicationTransport.Configuration
    private let localAddress: SocketAddress
    private let peerAddress: SocketAddress
    private let loop: any EventLoop
    private let sendState: NIOLockedValueBox<SendState>
    private let logSink: @Sendable (ConnectionPairingMachine.LogLevel, String) -> Void
    private let eventSink: @Sendable (ReplicationEvent) -> Void

    private var state = State.created
    /// `startConnecting` came before `start` had bound the listener: connect once it has.
    private var connectingRequestedBeforeStart = false
    private var machine: ConnectionPairingMachine
    private var selfBox: NIOLoopBoundBox<TransportCore>?
    private var listener: (any Channel)?
    private var ticker: RepeatedTask?
    private var sockets: [ConnectionPairingMachine.SocketID: Socket] = [:]
    /// Outgoing connects not yet completed, awaited by `shutdown`.
    private var connecting: [ConnectionPairingMachine.SocketID: EventLoopFuture<any Channel>] = [:]
    /// The generation of the established connection (counts connections; 0 before the first).
    private var generation: UInt64 = 0
    /// Actions are carried out in order, one at a time: closing a socket can report its closure back to the machine
    /// synchronously, and the actions that produces queue behind the ones still to do.
    private var actionQueue: [ConnectionPairingMachine.Action] = []
    private var performing = false

    init(
        configuration: TCPReplicationTransport.Configuration, sessionNonce: UInt64, localAddress: SocketAddress,
        peerAddress: SocketAddress, loop: any EventLoop, sendState: NIOLockedValueBox<SendState>,
        log: @escaping @Sendable (ConnectionPairingMachine.LogLevel, String) -> Void,
        eventSink: @escaping @Sendable (ReplicationEvent) -> Void
    ) {
        self.configuration = configuration
        self.localAddress = localAddress
        self.peerAddress = peerAddress
        self.loop = loop
        self.sendState = sendState
        self.logSink = log
        self.eventSink = eventSink
        self.machine = ConnectionPairingMachine(
            settings: .init(
                resourceName: configuration.resourceName, sessionNonce: sessionNonce,
                connectInterval: configuration.connectInterval, helloTimeout: configuration.helloTimeout,
                halfOpenSocketsMax: configuration.halfOpenSocketsMax))
    }

    private var now: MonotonicInstant {
        MonotonicInstant(nanoseconds: Int64(clamping: NIODeadline.now().uptimeNanoseconds))
    }

    var listeningAddress: ReplicationEndpoint? { listener?.localAddress.flatMap(ReplicationEndpoint.init) }

    // MARK: Lifecycle

    func start(selfBox: NIOLoopBoundBox<TransportCore>) -> EventLoopFuture<ReplicationEndpoint> {
        guard state == .created else {
            return loop.makeFailedFuture(
                TransportError(.invalidState, "the replication transport was already started or shut down"))
        }
        self.selfBox = selfBox
        state = .running
        let bound = makeServerBootstrap(selfBox).bind(to: localAddress)
        return bound.assumeIsolated().flatMapError { error in
            self.state = .shutDown
            return self.loop.makeFailedFuture(self.bindError(error))
        }.map { channel in
            guard self.state == .running else {
                channel.close(promise: nil)
                return self.configuration.localAddress
            }
            self.listener = channel
            let tick = self.tickInterval
            self.ticker = self.loop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in
                selfBox.value.tick()
            }
            let endpoint = channel.localAddress.flatMap(ReplicationEndpoint.init) ?? self.configuration.localAddress
            self.log(.notice, "listening on \(endpoint) for resource '\(self.configuration.resourceName)'")
            if self.connectingRequestedBeforeStart {
                self.connectingRequestedBeforeStart = false
                self.startConnecting()
            }
            return endpoint
        }.nonisolated()
    }

    func shutdown() -> EventLoopFuture<Void> {
        guard state != .shutDown else { return loop.makeSucceededVoidFuture() }
        state = .shutDown
        ticker?.cancel()
        ticker = nil
        var closing: [EventLoopFuture<Void>] = []
        if let listener { closing.append(listener.close().recover { _ in }) }
        listener = nil
        for socket in sockets.values { closing.append(socket.channel.close().recover { _ in }) }
        sockets.removeAll()
        for connect in connecting.values {
            closing.append(connect.flatMap { $0.close() }.recover { _ in })
        }
        connecting.removeAll()
        return EventLoopFuture.andAllComplete(closing, on: loop)
    }

    /// Often enough for hello timeouts and connect-int to be kept to within a quarter, rarely enough to cost nothing.
    private var tickInterval: TimeAmount {
        let base = min(configuration.connectInterval, configuration.helloTimeout) / 4
        let clamped = min(max(base, .milliseconds(10)), .milliseconds(250))
        return .nanoseconds(clamped.wholeNanoseconds)
    }

    // MARK: From the node

    func startConnecting() {
        if state == .created { connectingRequestedBeforeStart = true }
        guard state == .running else { return }
        perform(machine.startConnecting(now: now))
    }

    func stopConnecting() {
        connectingRequestedBeforeStart = false
        guard state == .running else { return }
        perform(machine.stopConnecting(now: now))
    }

    func nodeDroppedConnection(generation dropped: UInt64, reason: String) {
        guard state == .running, dropped == generation, machine.connection != nil else { return }
        log(.notice, "dropping the connection: \(reason)")
        perform(machine.dropConnection(reason: reason, now: now))
    }

    func setReceivingPaused(_ paused: Bool, generation current: UInt64) {
        guard state == .running, current == generation, let connection = machine.connection else { return }
        sockets[connection.data]?.handler.setPaused(paused)
    }

    func sendQueueOverflowed(generation overflowed: UInt64, queuedBytes: Int, limit: Int) {
        guard state == .running, overflowed == generation, let connection = machine.connection else { return }
        socketFailed(
            connection.data, reason: "send queue over its limit",
            detail: "\(queuedBytes) bytes queued, limit \(limit): the peer is not reading")
    }

    // MARK: From the handlers

    /// An accepted socket became active; returns the ID the machine gave it.
    func socketAccepted(_ handler: ReplicationSocketHandler, channel: any Channel) -> ConnectionPairingMachine.SocketID {
        let remote = channel.remoteAddress
        let fromPeerHost =
            !configuration.acceptOnlyFromPeerHost || Self.sameHost(remote?.ipAddress, peerAddress.ipAddress)
        let (socket, actions) = machine.socketAccepted(
            fromPeerHost: fromPeerHost, remote: remote.map { "\($0)" } ?? "an unknown address", now: now)
        handler.assign(socket)
        sockets[socket] = Socket(channel: channel, handler: handler)
        perform(state == .running ? actions : [.close(socket, reason: "shutting down")])
        return socket
    }

    /// An outgoing socket's TCP connect completed.
    func outgoingActive(_ socket: ConnectionPairingMachine.SocketID, handler: ReplicationSocketHandler, channel: any Channel) {
        sockets[socket] = Socket(channel: channel, handler: handler)
        connecting[socket] = nil
        perform(state == .running ? machine.outgoingConnected(socket, now: now) : [.close(socket, reason: "shutting down")])
    }

    func helloReceived(_ socket: ConnectionPairingMachine.SocketID, _ hello: ChannelHello) {
        guard state == .running else { return }
        perform(machine.helloReceived(socket, hello, now: now))
    }

    func helloRefused(_ socket: ConnectionPairingMachine.SocketID, _ error: ChannelHelloError) {
        guard state == .running else { return }
        perform(machine.helloRefused(socket, error, now: now))
    }

    func packetReceived(_ packet: Packet, on socket: ConnectionPairingMachine.SocketID) {
        guard state == .running, machine.connection?.contains(socket) == true else { return }
        eventSink(.packet(packet))
    }

    func socketClosed(_ socket: ConnectionPairingMachine.SocketID, reason: String) {
        sockets[socket] = nil
        guard state == .running else { return }
        perform(machine.socketClosed(socket, reason: reason, now: now))
    }

    /// This side gives the socket up (corrupt frame, protocol error, send queue overflow): `reason` goes to the node
    /// in `transportLost`, `detail` to the log.
    func socketFailed(_ socket: ConnectionPairingMachine.SocketID, reason: String, detail: String) {
        guard state == .running else { return }
        let handler = sockets[socket]?.handler
        sockets[socket] = nil
        log(.notice, "closing \(socket): \(reason): \(detail)")
        perform(machine.socketClosed(socket, reason: reason, now: now))
        handler?.close(reason: "\(reason): \(detail)")
    }

    /// Whether two numeric addresses name the same host. A listener on a dual-stack IPv6 socket sees an IPv4 peer
    /// as `::ffff:a.b.c.d`, which is the same host as `a.b.c.d`.
    static func sameHost(_ first: String?, _ second: String?) -> Bool {
        guard let first, let second else { return false }
        func unmapped(_ address: String) -> String {
            let lowercased = address.lowercased()
            let prefix = "::ffff:"
            guard lowercased.hasPrefix(prefix), lowercased.dropFirst(prefix.count).contains(".") else {
                return lowercased
            }
            return String(lowercased.dropFirst(prefix.count))
        }
        return unmapped(first) == unmapped(second)
    }

    // MARK: Timers

    func tick() {
        guard state == .running else { return }
        perform(machine.tick(now: now))
    }

    // MARK: Actions

    private func perform(_ actions: [ConnectionPairingMachine.Action]) {
        actionQueue.append(contentsOf: actions)
        guard !performing else { return }
        performing = true
        defer { performing = false }
        while !actionQueue.isEmpty {
            execute(actionQueue.removeFirst())
        }
    }

    private func execute(_ action: ConnectionPairingMachine.Action) {
        switch action {
        case .connect(let socket, let channel):
            connect(socket, channel)
        case .sendHello(let socket, let hello):
            guard let target = sockets[socket] else { return }
            if hello.role == .accept && hello.channel == .meta && configuration.metaNoDelay != configuration.dataNoDelay {
                // Accepted sockets start with the data socket's setting; the kind is known only now.
                let value: SocketOptionValue = configuration.metaNoDelay ? 1 : 0
                target.channel.setOption(ChannelOptions.socketOption(.tcp_nodelay), value: value).whenFailure { _ in }
            }
            target.channel.writeAndFlush(ByteBuffer(bytes: hello.encode()), promise: nil)
        case .close(let socket, let reason):
            if let target = sockets[socket] {
                log(.debug, "closing \(socket): \(reason)")
                target.handler.close(reason: reason)
            }
        case .established(let connection):
            established(connection)
        case .lost(let reason):
            sendState.withLockedValue { state in
                if state.generation == generation { state = SendState() }
            }
            log(.notice, "connection lost: \(reason)")
            eventSink(.transportLost(reason: reason))
        case .log(let level, let message):
            log(level, message)
        }
    }

    private func established(_ connection: ConnectionPairingMachine.Connection) {
        guard let data = sockets[connection.data], let meta = sockets[connection.meta] else {
            preconditionFailure("established \(connection) with sockets \(sockets.keys.sorted()) open")
        }
        generation += 1
        let current = generation
        sendState.withLockedValue { state in
            state = SendState(generation: current, data: data.channel, meta: meta.channel, queuedBytes: 0)
        }
        let side = connection.initiatedLocally ? "this node connected" : "the peer connected"
        log(.notice, "connected to the peer (\(side), attempt \(connection.attempt), generation \(current))")
        var random = SystemRandomNumberGenerator()
        let challenge = (0..<PacketCodec.authChallengeBytes).map { _ in UInt8.random(in: .min ... .max, using: &random) }
        eventSink(.transportConnected(challenge: challenge))
        data.handler.activate(paused: false)
        if machine.connection == connection { meta.handler.activate(paused: false) }
    }

    private func connect(_ socket: ConnectionPairingMachine.SocketID, _ kind: PacketChannel) {
        guard let selfBox else { return }
        let frameBytesMax = configuration.frameBytesMax
        let noDelay = kind == .meta ? configuration.metaNoDelay : configuration.dataNoDelay
        var bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(configuration.helloTimeout.wholeNanoseconds))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: noDelay ? 1 : 0)
            .channelOption(ChannelOptions.socketOption(.so_keepalive), value: configuration.keepalive ? 1 : 0)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = ReplicationSocketHandler(
                        core: selfBox.value, socket: socket, frameBytesMax: frameBytesMax)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        if configuration.sendBufferBytes > 0 {
            bootstrap = bootstrap.channelOption(
                ChannelOptions.socketOption(.so_sndbuf), value: SocketOptionValue(configuration.sendBufferBytes))
        }
        if configuration.receiveBufferBytes > 0 {
            bootstrap = bootstrap.channelOption(
                ChannelOptions.socketOption(.so_rcvbuf), value: SocketOptionValue(configuration.receiveBufferBytes))
        }
        let future = bootstrap.connect(to: peerAddress)
        connecting[socket] = future
        future.assumeIsolated().whenFailure { error in
            self.connecting[socket] = nil
            guard self.state == .running else { return }
            self.perform(self.machine.outgoingFailed(socket, reason: "\(error)", now: self.now))
        }
    }

    private func makeServerBootstrap(_ selfBox: NIOLoopBoundBox<TransportCore>) -> ServerBootstrap {
        let frameBytesMax = configuration.frameBytesMax
        var bootstrap = ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.backlog, value: 16)
            .childChannelOption(
                ChannelOptions.socketOption(.tcp_nodelay), value: configuration.dataNoDelay ? 1 : 0)
            .childChannelOption(ChannelOptions.socketOption(.so_keepalive), value: configuration.keepalive ? 1 : 0)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = ReplicationSocketHandler(core: selfBox.value, socket: nil, frameBytesMax: frameBytesMax)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        if configuration.sendBufferBytes > 0 {
            bootstrap = bootstrap.childChannelOption(
                ChannelOptions.socketOption(.so_sndbuf), value: SocketOptionValue(configuration.sendBufferBytes))
        }
        if configuration.receiveBufferBytes > 0 {
            // On the listener too: the window scale is fixed in the SYN exchange, before the accepted socket exists.
            let bytes = SocketOptionValue(configuration.receiveBufferBytes)
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.socketOption(.so_rcvbuf), value: bytes)
                .childChannelOption(ChannelOptions.socketOption(.so_rcvbuf), value: bytes)
        }
        return bootstrap
    }

    private func bindError(_ error: any Error) -> TransportError {
        let address = configuration.localAddress
        guard let ioError = error as? IOError else {
            return TransportError(.bindFailed, "could not listen on \(address)", cause: error)
        }
        switch ioError.errnoCode {
        case EADDRINUSE:
            return TransportError(
                .addressInUse,
                "\(address) is already in use (by another resource, a running DRBD, or another program)",
                cause: error)
        case EADDRNOTAVAIL:
            return TransportError(
                .addressNotAvailable, "\(address) is not an address of this machine; check the 'address' line",
                cause: error)
        case EACCES:
            return TransportError(
                .permissionDenied, "listening on \(address) needs privileges this process does not have",
                cause: error)
        default:
            return TransportError(.bindFailed, "could not listen on \(address)", cause: error)
        }
    }

    private func log(_ level: ConnectionPairingMachine.LogLevel, _ message: String) {
        logSink(level, "[\(configuration.resourceName)] \(message)")
    }
}

@available(*, unavailable)
extension TransportCore: Sendable {}
