#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import DaemonSupport
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ReplicationCore

/// The event-loop side of `TCPReplicationTransport`: owns the listener, the sockets being paired and the pairing
/// machine, and carries out the machine's actions. Confined to one event loop; every method runs there.
///
/// It adds four things to the machine's decisions: the sockets themselves (made here, with their descriptors kept,
/// then given to SwiftNIO for the hello exchange), the map from socket IDs to channels, the generation counter
/// (which connection the node's calls refer to), and the hand-over of an established connection's two sockets to
/// an `EstablishedConnection`, whose threads carry the replication traffic from then on. The event sink only ever
/// hears of the connection the machine currently holds.
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
    private let packetSink: @Sendable (Packet) -> Void

    private var state = State.created
    /// `startConnecting` came before `start` had bound the listener: connect once it has.
    private var connectingRequestedBeforeStart = false
    private var machine: ConnectionPairingMachine
    private var selfBox: NIOLoopBoundBox<TransportCore>?
    private var listenerPort: UInt16?
    /// Set to stop the accept thread and the connect attempts (read by their threads).
    private let stopping = NIOLockedValueBox(false)
    private var acceptThreadRunning = false
    private var ticker: RepeatedTask?
    private var sockets: [ConnectionPairingMachine.SocketID: Socket] = [:]
    /// Outgoing connects not yet reported by their threads, awaited by `shutdown`.
    private var connecting: Set<ConnectionPairingMachine.SocketID> = []
    /// The established connection, on its threads, until it has ended.
    private var current: EstablishedConnection?
    /// A connection established while the one before (dropped by the node) was still ending, and the challenge for
    /// its `transportConnected`: it starts when that one's threads are gone, so that no packet of the old connection
    /// can reach the node after the new one's `transportConnected`.
    private var waiting: (connection: EstablishedConnection, challenge: [UInt8])?
    private var shutdownPromise: EventLoopPromise<Void>?
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
        eventSink: @escaping @Sendable (ReplicationEvent) -> Void, packetSink: @escaping @Sendable (Packet) -> Void
    ) {
        self.configuration = configuration
        self.localAddress = localAddress
        self.peerAddress = peerAddress
        self.loop = loop
        self.sendState = sendState
        self.logSink = log
        self.eventSink = eventSink
        self.packetSink = packetSink
        self.machine = ConnectionPairingMachine(
            settings: .init(
                resourceName: configuration.resourceName, sessionNonce: sessionNonce,
                connectInterval: configuration.connectInterval, helloTimeout: configuration.helloTimeout,
                halfOpenSocketsMax: configuration.halfOpenSocketsMax))
    }

    private var now: MonotonicInstant {
        MonotonicInstant(nanoseconds: Int64(clamping: NIODeadline.now().uptimeNanoseconds))
    }

    var listeningAddress: ReplicationEndpoint? {
        listenerPort.map { ReplicationEndpoint(host: configuration.localAddress.host, port: $0) }
    }

    // MARK: Lifecycle

    func start(selfBox: NIOLoopBoundBox<TransportCore>) -> EventLoopFuture<ReplicationEndpoint> {
        guard state == .created else {
            return loop.makeFailedFuture(
                TransportError(.invalidState, "the replication transport was already started or shut down"))
        }
        self.selfBox = selfBox
        let listener: CInt
        do {
            listener = try ReplicationSockets.listen(
                on: localAddress, endpoint: configuration.localAddress,
                receiveBufferBytes: configuration.receiveBufferBytes)
        } catch {
            state = .shutDown
            return loop.makeFailedFuture(error)
        }
        state = .running
        listenerPort = ReplicationSockets.boundPort(listener)
        startAcceptThread(listener, selfBox)
        let tick = tickInterval
        ticker = loop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in selfBox.value.tick() }
        let endpoint = listeningAddress ?? configuration.localAddress
        log(.notice, "listening on \(endpoint) for resource '\(configuration.resourceName)'")
        if connectingRequestedBeforeStart {
            connectingRequestedBeforeStart = false
            startConnecting()
        }
        return loop.makeSucceededFuture(endpoint)
    }

    func shutdown() -> EventLoopFuture<Void> {
        guard state != .shutDown else { return shutdownPromise?.futureResult ?? loop.makeSucceededVoidFuture() }
        let wasRunning = state == .running
        state = .shutDown
        stopping.withLockedValue { $0 = true }
        ticker?.cancel()
        ticker = nil
        var closing: [EventLoopFuture<Void>] = []
        for socket in sockets.values { closing.append(socket.channel.close().recover { _ in }) }
        sockets.removeAll()
        current?.shutDown()
        if let waiting {
            self.waiting = nil
            waiting.connection.discard()
        }
        guard wasRunning else { return loop.makeSucceededVoidFuture() }
        let promise = loop.makePromise(of: Void.self)
        shutdownPromise = promise
        closing.append(promise.futureResult)
        finishShutdownIfDone()
        return EventLoopFuture.andAllComplete(closing, on: loop)
    }

    /// Completes `shutdown` once the accept thread, the connect attempts and the established connection's threads
    /// are all gone: none of them reports to this loop any more.
    private func finishShutdownIfDone() {
        guard state == .shutDown, !acceptThreadRunning, connecting.isEmpty, current == nil else { return }
        shutdownPromise?.succeed()
    }

    /// Accepts on a thread of its own, polling so that it notices `stopping`; each socket is adopted on the loop.
    private func startAcceptThread(_ listener: CInt, _ selfBox: NIOLoopBoundBox<TransportCore>) {
        acceptThreadRunning = true
        let stopping = self.stopping
        let loop = self.loop
        let options = ReplicationSockets.Options(
            noDelay: configuration.dataNoDelay, keepalive: configuration.keepalive,
            sendBufferBytes: configuration.sendBufferBytes, receiveBufferBytes: configuration.receiveBufferBytes)
        DaemonThread.detach(name: "tdm-accept") {
            while !stopping.withLockedValue({ $0 }) {
                guard let descriptor = ReplicationSockets.accept(listener, timeout: .milliseconds(100), options: options)
                else { continue }
                loop.execute { selfBox.value.adopt(acceptedDescriptor: descriptor) }
            }
            close(listener)
            loop.execute {
                selfBox.value.acceptThreadRunning = false
                selfBox.value.finishShutdownIfDone()
            }
        }
    }

    /// An accepted socket: SwiftNIO carries its hello exchange.
    private func adopt(acceptedDescriptor descriptor: CInt) {
        guard state == .running else {
            close(descriptor)
            return
        }
        _ = helloChannel(descriptor, socket: nil)
    }

    /// Gives a connected socket to SwiftNIO, with the handler that carries its hello exchange. `socket` is nil for
    /// an accepted socket (the pairing machine names it when the channel becomes active).
    private func helloChannel(_ descriptor: CInt, socket: ConnectionPairingMachine.SocketID?) -> EventLoopFuture<any Channel> {
        guard let selfBox else { preconditionFailure("socket \(String(describing: socket)) made before start, in state \(state)") }
        let frameBytesMax = configuration.frameBytesMax
        return ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = ReplicationSocketHandler(
                        core: selfBox.value, socket: socket, descriptor: descriptor, frameBytesMax: frameBytesMax)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .withConnectedSocket(descriptor)
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

    /// The node dropped the connection; `TCPReplicationTransport.dropConnection` has already told its threads.
    func nodeDroppedConnection(generation dropped: UInt64, reason: String) {
        guard state == .running, dropped == generation, machine.connection != nil else { return }
        log(.notice, "dropping the connection: \(reason)")
        perform(machine.dropConnection(reason: reason, now: now))
    }

    /// The established connection's threads are gone. If it failed (rather than being dropped by the node or shut
    /// down), the machine hears that its sockets closed, and the node gets its `transportLost`.
    func connectionEnded(_ connection: EstablishedConnection, _ end: EstablishedConnection.End) {
        guard connection === current else { return }
        current = nil
        defer { finishShutdownIfDone() }
        if let waiting {
            self.waiting = nil
            return begin(waiting.connection, challenge: waiting.challenge)
        }
        guard state == .running, case .failed(let reason, let detail) = end, connection.generation == generation,
            let paired = machine.connection
        else { return }
        log(.notice, "closing the connection: \(reason): \(detail)")
        perform(machine.socketClosed(paired.data, reason: reason, now: now))
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
                if state?.generation == generation { state = nil }
            }
            log(.notice, "connection lost: \(reason)")
            eventSink(.transportLost(reason: reason))
        case .log(let level, let message):
            log(level, message)
        }
    }

    /// Both sockets of a connection said hello: they leave SwiftNIO for an `EstablishedConnection`'s threads, with
    /// what their handlers had already read.
    private func established(_ connection: ConnectionPairingMachine.Connection) {
        guard let data = sockets[connection.data], let meta = sockets[connection.meta],
            let dataState = data.handler.handOver(), let metaState = meta.handler.handOver()
        else {
            preconditionFailure("established \(connection) with sockets \(sockets.keys.sorted()) open")
        }
        sockets[connection.data] = nil
        sockets[connection.meta] = nil
        // SwiftNIO closes its descriptors; the connection keeps duplicates of them, so the sockets stay open.
        let dataDescriptor = ReplicationSockets.duplicate(data.handler.descriptor)
        let metaDescriptor = ReplicationSockets.duplicate(meta.handler.descriptor)
        data.channel.close(promise: nil)
        meta.channel.close(promise: nil)
        guard let dataDescriptor, let metaDescriptor,
            ReplicationSockets.makeBlocking(dataDescriptor), ReplicationSockets.makeBlocking(metaDescriptor)
        else {
            let failure = SystemCallError("fcntl")
            for descriptor in [dataDescriptor, metaDescriptor].compactMap({ $0 }) { close(descriptor) }
            log(.notice, "closing the new connection: its sockets could not be taken over: \(failure)")
            return perform(machine.socketClosed(connection.data, reason: "the sockets could not be taken over", now: now))
        }
        generation += 1
        let current = generation
        let loop = self.loop
        let selfBox = self.selfBox!
        let established = EstablishedConnection(
            generation: current,
            data: .init(
                descriptor: dataDescriptor, channel: .data, heldPackets: dataState.heldPackets, decoder: dataState.decoder),
            meta: .init(
                descriptor: metaDescriptor, channel: .meta, heldPackets: metaState.heldPackets, decoder: metaState.decoder),
            frameBytesMax: configuration.frameBytesMax, sendQueueBytesMax: configuration.sendQueueBytesMax,
            packetSink: packetSink,
            ended: { connection, end in loop.execute { selfBox.value.connectionEnded(connection, end) } })
        let side = connection.initiatedLocally ? "this node connected" : "the peer connected"
        log(.notice, "connected to the peer (\(side), attempt \(connection.attempt), generation \(current))")
        var random = SystemRandomNumberGenerator()
        let challenge = (0..<PacketCodec.authChallengeBytes).map { _ in UInt8.random(in: .min ... .max, using: &random) }
        if self.current != nil {
            precondition(waiting == nil, "connection \(current) established while two others run")
            waiting = (established, challenge)
        } else {
            begin(established, challenge: challenge)
        }
    }

    /// Makes `connection` the one the node's calls reach, tells the node, and starts its threads.
    private func begin(_ connection: EstablishedConnection, challenge: [UInt8]) {
        current = connection
        sendState.withLockedValue { $0 = connection }
        eventSink(.transportConnected(challenge: challenge))
        connection.start()
    }

    /// Connects on a thread of its own (so the loop never waits for a SYN), then hands the socket to SwiftNIO.
    private func connect(_ socket: ConnectionPairingMachine.SocketID, _ kind: PacketChannel) {
        guard let selfBox else { return }
        connecting.insert(socket)
        let options = ReplicationSockets.Options(
            noDelay: kind == .meta ? configuration.metaNoDelay : configuration.dataNoDelay,
            keepalive: configuration.keepalive, sendBufferBytes: configuration.sendBufferBytes,
            receiveBufferBytes: configuration.receiveBufferBytes)
        let address = peerAddress
        let timeout = configuration.helloTimeout
        let stopping = self.stopping
        let loop = self.loop
        DaemonThread.detach(name: "tdm-connect") {
            let result = ReplicationSockets.connect(
                to: address, timeout: timeout, options: options, cancelled: { stopping.withLockedValue { $0 } })
            loop.execute { selfBox.value.outgoingConnectFinished(socket, result) }
        }
    }

    private func outgoingConnectFinished(
        _ socket: ConnectionPairingMachine.SocketID, _ result: Result<CInt, SystemCallError>
    ) {
        connecting.remove(socket)
        defer { finishShutdownIfDone() }
        switch result {
        case .failure(let error):
            guard state == .running else { return }
            perform(machine.outgoingFailed(socket, reason: "\(error)", now: now))
        case .success(let descriptor):
            guard state == .running else {
                close(descriptor)
                return
            }
            helloChannel(descriptor, socket: socket)
                .assumeIsolated().whenFailure { error in
                    guard self.state == .running else { return }
                    self.perform(self.machine.outgoingFailed(socket, reason: "\(error)", now: self.now))
                }
        }
    }

    private func log(_ level: ConnectionPairingMachine.LogLevel, _ message: String) {
        logSink(level, "[\(configuration.resourceName)] \(message)")
    }
}

@available(*, unavailable)
extension TransportCore: Sendable {}
