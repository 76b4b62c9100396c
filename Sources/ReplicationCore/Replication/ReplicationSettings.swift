import TandemConfig

/// Everything the replication machine takes from drbd.conf, already typed and range-checked, plus the debug
/// switches of the mutation tests. Built by the driver from `DrbdOptions` (see `init(options:)`).
public struct ReplicationSettings: Sendable, Hashable {
    public var replicationProtocol: ReplicationProtocol = .c
    public var policies = SplitBrainPolicies()
    public var allowTwoPrimaries = false
    /// Receive-side limit on replicated writes buffered or in flight (max-buffers); beyond it the receiver stops
    /// reading from the data connection until writes complete.
    public var maxBuffers = 2048
    /// Writes per epoch before the sender closes it even without a completion (max-epoch-size).
    public var maxEpochSize = 2048
    public var activityLogExtents = 1237
    public var activityLogRingSlots = 8
    public var pingInterval: Duration = .seconds(10)
    public var pingTimeout: Duration = .milliseconds(500)
    /// How long the peer may leave a request unanswered (timeout x ko-count) before the connection is declared dead.
    public var requestTimeout: Duration = .milliseconds(600 * 7)
    public var connectInterval: Duration = .seconds(10)
    public var resync = ResyncSettings()
    /// csums-alg: compare digests before sending resync data.
    public var checksumResyncAlgorithm: DigestAlgorithm?
    /// verify-alg: enables online verify.
    public var verifyAlgorithm: DigestAlgorithm?
    /// cram-hmac-alg and shared-secret; nil disables peer authentication.
    public var authentication: PeerAuthentication?
    /// data-integrity-alg, carried in the protocol parameters so that both sides agree; empty when off.
    public var integrityAlgorithm = ""
    public var onIOError: OnIOErrorPolicy = .detach
    public var fencing: FencingPolicy = .dontCare
    /// disk-flushes: flush the backing device at every epoch boundary on the receiver.
    public var diskFlushes = true
    public var mutations = ReplicationMutations()

    public init() {}
}

/// Resync pacing: a fixed rate (`planAhead` zero) or DRBD's dynamic controller.
public struct ResyncSettings: Sendable, Hashable {
    public var rateBytesPerSecond: Int64 = 250 * 1024
    /// c-plan-ahead; zero selects the fixed rate.
    public var planAhead: Duration = .milliseconds(2000)
    /// c-fill-target: bytes to keep in flight; zero selects c-delay-target instead.
    public var fillTargetBytes: Int64 = 100 * 512
    public var delayTarget: Duration = .milliseconds(1000)
    public var maxRateBytesPerSecond: Int64 = 100 * 1024 * 1024
    /// c-min-rate: the resync keeps at least this rate while application I/O runs, and is throttled to it.
    public var minRateBytesPerSecond: Int64 = 250 * 1024
    /// Hard limit on resync requests in flight, whatever the controller wants.
    public var requestsInFlightMaximum = 256

    public init() {}
}

/// cram-hmac-alg + shared-secret.
public struct PeerAuthentication: Sendable, Hashable {
    public var algorithm: DigestAlgorithm
    public var secret: [UInt8]

    public init(algorithm: DigestAlgorithm, secret: [UInt8]) {
        self.algorithm = algorithm
        self.secret = secret
    }
}

/// Deliberate bugs, switched on only by the mutation tests to prove that the simulator's checkers notice them.
/// Production code never sets these.
public struct ReplicationMutations: Sendable, Hashable {
    /// Complete a protocol C write as soon as it is sent, without waiting for the peer's write acknowledgement.
    public var acknowledgeProtocolCBeforePeerWrite = false
    /// Forget to mark unacknowledged writes out of sync when the connection is lost.
    public var skipBitmapMarkingOnDisconnect = false
    /// Treat a rule-90 split brain as if the rule did not exist.
    public var ignoreRule90 = false
    /// Skip every receiver flush as if the disk cache were always clean.
    public var skipReceiverFlushes = false

    public init(
        acknowledgeProtocolCBeforePeerWrite: Bool = false, skipBitmapMarkingOnDisconnect: Bool = false,
        ignoreRule90: Bool = false, skipReceiverFlushes: Bool = false
    ) {
        self.acknowledgeProtocolCBeforePeerWrite = acknowledgeProtocolCBeforePeerWrite
        self.skipBitmapMarkingOnDisconnect = skipBitmapMarkingOnDisconnect
        self.ignoreRule90 = ignoreRule90
        self.skipReceiverFlushes = skipReceiverFlushes
    }
}
