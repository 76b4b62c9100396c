import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ReplicationCore
import TandemDrivers

/// The production `ReplicationTransport`: DRBD's two TCP connections (data and meta) to the peer, made and kept by
/// listening and connecting every connect-int.
///
/// Threading: the listener, the pairing of sockets into connections and the hello exchange run on one event loop
/// taken from the group given at init, so the pairing machine and the event sink are serialised without locks. Once
/// a connection is established its two sockets belong to an `EstablishedConnection`: a receiver thread per socket
/// reads, decodes and hands packets to `packetSink`, and `send` writes from the caller's thread (a writer thread
/// per socket takes over only while the socket's buffer is full). The node calls the other `ReplicationTransport`
/// methods from whichever thread holds the resource; they take effect at once on the connection's threads, and hop
/// to the loop for the pairing machine.
///
/// Events reach the node in order: `transportConnected` (through `eventSink`, on the event loop, once both sockets
/// of a connection are paired), the connection's packets in order per channel (through `packetSink`, on the
/// connection's receiver threads), then at most one `transportLost` (through `eventSink`, after every receiver
/// thread has stopped). `eventSink` must not block; `packetSink` may.
///
/// Semantics the replication machine relies on (the simulator's, docs/replication.md):
/// - `dropConnection` closes both sockets; the node asked, so no `transportLost` is reported to it. The peer sees
///   the sockets close and gets its `transportLost`. A connection the transport gives up on (a corrupt frame, a send
///   queue over its limit, a socket closed by the peer) is reported with exactly one `transportLost`.
/// - Connecting is edge-triggered: `startConnecting` arms it; the end of an established connection disarms it until
///   the node calls `startConnecting` again (it does on returning to WFConnection). So no new connection is made
///   before the node has processed the old one's end, and nothing the node sends for an old connection can land on
///   a new one.
/// - `send` without a connection drops the packet, as a closed socket would.
/// - `setReceivingPaused` applies to the current connection; a new connection starts unpaused.
public final class TCPReplicationTransport: ReplicationTransport, Sendable {
    public struct Configuration: Sendable, Hashable {
        /// The drbd.conf resource name; both peers must agree. At most 64 bytes of UTF-8.
        public var resourceName: String
        /// The address this node listens on (its own `address` in drbd.conf). Port 0 picks a free port.
        public var localAddress: ReplicationEndpoint
        /// The peer's `address`, which this node connects to.
        public var peerAddress: ReplicationEndpoint
        /// DRBD's connect-int: the least time between two outgoing attempts (10 s by default in DRBD).
        public var connectInterval: Duration = .seconds(10)
        /// How long a socket may take to connect and exchange its hello before it is given up.
        public var helloTimeout: Duration = .seconds(10)
        /// SO_SNDBUF (DRBD's sndbuf-size); 0 leaves the kernel's autotuning on.
        public var sendBufferBytes: Int = 0
        /// SO_RCVBUF (DRBD's rcvbuf-size); 0 leaves the kernel's autotuning on.
        public var receiveBufferBytes: Int = 0
        /// TCP_NODELAY on the meta socket: acks and pings are small and latency-critical (DRBD sets it too).
        public var metaNoDelay: Bool = true
        /// TCP_NODELAY on the data socket. DRBD corks the data socket and uncorks after each batch, which pushes
        /// partial segments out at once; NIO's flush is that uncork, so Nagle would only add delay to the last
        /// segment of each protocol C write.
        public var dataNoDelay: Bool = true
        /// SO_KEEPALIVE, so that a peer that vanished is noticed even by an idle socket; pings do the fast detection.
        public var keepalive: Bool = true
        /// The largest frame accepted from the peer, header included. At most the codec's limit (1 MiB + 80).
        public var frameBytesMax: Int = PacketCodec.headerBytes + PacketCodec.maximumPayloadBytes
        /// Bytes handed to a connection's sockets and not yet written to the kernel. Beyond this the connection is
        /// given up (`transportLost`): a peer that stopped reading must not make this node buffer without bound.
        public var sendQueueBytesMax: Int = 64 << 20
        /// Accepted sockets not yet part of a connection.
        public var halfOpenSocketsMax: Int = 8
        /// Refuse sockets whose source address is not the peer's host.
        public var acceptOnlyFromPeerHost: Bool = true

        public init(resourceName: String, localAddress: ReplicationEndpoint, peerAddress: ReplicationEndpoint) {
            self.resourceName = resourceName
            self.localAddress = localAddress
            self.peerAddress = peerAddress
        }

        public static let connectIntervalRange: ClosedRange<Duration> = .milliseconds(10) ... .seconds(600)
        public static let helloTimeoutRange: ClosedRange<Duration> = .milliseconds(10) ... .seconds(600)
        public static let socketBufferBytesMax = 128 << 20
        public static let frameBytesMin = 64 << 10
        /// At least a few of the largest frames (1 MiB + 80 bytes), which a single send may queue.
        public static let sendQueueBytesRange: ClosedRange<Int> = (4 << 20) ... (4 << 30)
        public static let halfOpenSocketsRange: ClosedRange<Int> = 2 ... 1024

        /// The first value outside its limits, as a message for the operator; nil if all are within them.
        public func problem() -> String? {
            if let problem = ChannelHello.resourceNameProblem(resourceName) { return problem }
            if !Self.connectIntervalRange.contains(connectInterval) {
                return "connect-int \(connectInterval) is outside \(Self.connectIntervalRange)"
            }
            if !Self.helloTimeoutRange.contains(helloTimeout) {
                return "hello timeout \(helloTimeout) is outside \(Self.helloTimeoutRange)"
            }
            for (name, value) in [("sndbuf-size", sendBufferBytes), ("rcvbuf-size", receiveBufferBytes)]
            where !(0...Self.socketBufferBytesMax).contains(value) {
                return "\(name) \(value) is outside 0...\(Self.socketBufferBytesMax) bytes"
            }
            let frameBytesLimit = PacketCodec.headerBytes + PacketCodec.maximumPayloadBytes
            if !(Self.frameBytesMin...frameBytesLimit).contains(frameBytesMax) {
                return "the frame limit \(frameBytesMax) is outside \(Self.frameBytesMin)...\(frameBytesLimit) bytes"
            }
            if !Self.sendQueueBytesRange.contains(sendQueueBytesMax) {
                return "the send queue limit \(sendQueueBytesMax) is outside \(Self.sendQueueBytesRange) bytes"
            }
            if !Self.halfOpenSocketsRange.contains(halfOpenSocketsMax) {
                return "the half-open socket limit \(halfOpenSocketsMax) is outside \(Self.halfOpenSocketsRange)"
            }
            return nil
        }
    }

    public typealias LogLevel = ConnectionPairingMachine.LogLevel

    private let loop: any EventLoop
    private let core: NIOLoopBoundBox<TransportCore>
    private let sendState: NIOLockedValueBox<SendState>
    /// This run's session nonce (random, from the system CSPRNG), as sent in every hello.
    public let sessionNonce: UInt64

    /// Validates the configuration; opens nothing yet (see `start`).
    ///
    /// - Parameters:
    ///   - eventLoopGroup: one of its loops carries all of this transport's sockets. The caller owns the group and
    ///     shuts it down after `shutdown()`.
    ///   - log: messages for the operator (`.notice`) and for debugging (`.debug`), called on the event loop.
    ///   - eventSink: the node's inbox for connection events, called on the event loop, in order; must not block.
    ///   - packetSink: where received packets go, called on the connection's receiver threads, in order per channel;
    ///     may block (the receiver reads no further meanwhile). By default, `eventSink` with `.packet`.
    public init(
        configuration: Configuration, eventLoopGroup: any EventLoopGroup,
        log: @escaping @Sendable (LogLevel, String) -> Void = { _, _ in },
        eventSink: @escaping @Sendable (ReplicationEvent) -> Void,
        packetSink: (@Sendable (Packet) -> Void)? = nil
    ) throws(TransportError) {
        if let problem = configuration.problem() { throw TransportError(.invalidConfiguration, problem) }
        let localAddress = try configuration.localAddress.socketAddress()
        let peerAddress = try configuration.peerAddress.socketAddress()
        var random = SystemRandomNumberGenerator()
        let nonce = UInt64.random(in: 1...UInt64.max, using: &random)
        let loop = eventLoopGroup.next()
        let sendState = NIOLockedValueBox<SendState>(nil)
        let core = TransportCore(
            configuration: configuration, sessionNonce: nonce, localAddress: localAddress, peerAddress: peerAddress,
            loop: loop, sendState: sendState, log: log, eventSink: eventSink,
            packetSink: packetSink ?? { eventSink(.packet($0)) })
        self.loop = loop
        self.sessionNonce = nonce
        self.sendState = sendState
        self.core = NIOLoopBoundBox.makeBoxSendingValue(core, eventLoop: loop)
    }

    /// Binds the listener and starts the timers. Returns the address actually bound (the port, when 0 was asked).
    /// Bind failures come back as `TransportError` with code `addressInUse`, `addressNotAvailable`,
    /// `permissionDenied` or `bindFailed`.
    @discardableResult
    public func start() async throws(TransportError) -> ReplicationEndpoint {
        let core = self.core
        let box = core
        do {
            return try await loop.flatSubmit { core.value.start(selfBox: box) }.get()
        } catch let error as TransportError {
            throw error
        } catch {
            throw TransportError(.bindFailed, "could not start the replication listener", cause: error)
        }
    }

    /// Stops connecting, closes the listener and every socket, and returns once they are closed and the threads
    /// that served them are gone. No event reaches either sink after this returns. Idempotent.
    public func shutdown() async {
        sendState.withLockedValue { $0 = nil }
        let core = self.core
        try? await loop.flatSubmit { core.value.shutdown() }.get()
    }

    /// The address the listener is bound to, once started.
    public func listeningAddress() async -> ReplicationEndpoint? {
        let core = self.core
        return try? await loop.submit { core.value.listeningAddress }.get()
    }

    // MARK: ReplicationTransport

    public func startConnecting() {
        let core = self.core
        loop.execute { core.value.startConnecting() }
    }

    public func stopConnecting() {
        let core = self.core
        loop.execute { core.value.stopConnecting() }
    }

    public func dropConnection(reason: String) {
        // Taken here, not on the loop, so that a `send` right after this call cannot reach the old sockets. Frames
        // sent before it are still written before the sockets close: the split-brain handshake a node sends just
        // before it drops the connection must reach the peer.
        let dropped = sendState.withLockedValue { state -> EstablishedConnection? in
            defer { state = nil }
            return state
        }
        guard let dropped else { return }
        dropped.drop()
        let core = self.core
        let generation = dropped.generation
        loop.execute { core.value.nodeDroppedConnection(generation: generation, reason: reason) }
    }

    public func send(_ packet: Packet) {
        guard let connection = sendState.withLockedValue({ $0 }) else { return }
        connection.send(PacketCodec.encode(packet), on: packet.channel)
    }

    public func setReceivingPaused(_ paused: Bool) {
        sendState.withLockedValue { $0 }?.setReceivingPaused(paused)
    }
}

/// The current connection, for the node's calls from any thread; nil while there is none.
typealias SendState = EstablishedConnection?
