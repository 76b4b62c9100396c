import CoreSupport

/// What the resource manager needs to know, resolved from ha.cf and haresources by the daemon.
public struct ResourceManagerConfiguration: Sendable {
    /// This node's name.
    public var localNode: String
    /// The other node of the pair; nil for a one-node cluster, which runs everything itself.
    public var peerNode: String?
    /// The groups in haresources order.
    public var groups: [GroupDefinition]
    /// `auto_failback`: whether a group returns to its preferred node when that node comes back.
    public var autoFailback: FailbackPolicy
    /// How long a start or stop of one resource may take before it counts as failed.
    public var startTimeout: Duration
    public var stopTimeout: Duration
    /// A failed stop is retried this many times, `stopRetryInterval` apart (Heartbeat: 10 x 1 s).
    public var stopRetries: Int
    public var stopRetryInterval: Duration
    /// What to do when a resource cannot be stopped at all.
    public var stopFailureAction: StopFailureAction
    /// How long to wait for the peer's part of a standby or startup exchange before giving up on it.
    public var exchangeTimeout: Duration
    /// How running groups are checked; nil: never (Heartbeat R1's behaviour).
    public var monitor: MonitorPolicy?
    /// The highest acquisition epoch this node had seen before it (re)started, kept by the daemon in its state
    /// folder: a node that restarts must not acquire a group under an epoch lower than one it has already seen,
    /// or a stale peer that still holds the group at that higher epoch would keep it.
    public var initialEpoch: UInt64

    public init(
        localNode: String, peerNode: String?, groups: [GroupDefinition], autoFailback: FailbackPolicy,
        startTimeout: Duration = .seconds(120), stopTimeout: Duration = .seconds(120), stopRetries: Int = 10,
        stopRetryInterval: Duration = .seconds(1), stopFailureAction: StopFailureAction = .stopHeartbeats,
        exchangeTimeout: Duration = .seconds(60), monitor: MonitorPolicy? = nil, initialEpoch: UInt64 = 0
    ) {
        precondition(stopRetries >= 0, "stop retries \(stopRetries) < 0")
        self.localNode = localNode
        self.peerNode = peerNode
        self.groups = groups
        self.autoFailback = autoFailback
        self.startTimeout = startTimeout
        self.stopTimeout = stopTimeout
        self.stopRetries = stopRetries
        self.stopRetryInterval = stopRetryInterval
        self.stopFailureAction = stopFailureAction
        self.exchangeTimeout = exchangeTimeout
        self.monitor = monitor
        self.initialEpoch = initialEpoch
    }

    /// Whether `group` belongs to this node (its preferred node is us): Heartbeat's "local" resources, as opposed
    /// to "foreign" ones.
    public func isLocal(_ group: GroupDefinition) -> Bool {
        group.preferredNode.lowercased() == localNode.lowercased()
    }
}

/// One haresources line.
public struct GroupDefinition: Sendable, Hashable {
    /// The group's name: its first resource as written (Heartbeat's convention).
    public var key: String
    public var preferredNode: String
    /// The resources in start order, as written.
    public var resources: [String]

    public init(key: String, preferredNode: String, resources: [String]) {
        precondition(!resources.isEmpty, "group \(key) has no resources")
        self.key = key
        self.preferredNode = preferredNode
        self.resources = resources
    }
}

/// Resource monitoring (Tandem's ha.cf extensions `monitor_interval`, `monitor_timeout`, `monitor_failures`,
/// `monitor_failure_window`): every resource of a running group is checked every `interval`, one after the other.
/// A failed check restarts the resource in place (it and the resources after it in the group are stopped, right
/// to left, and started again); the `failuresBeforeFailover`-th failure within `failureWindow` moves the group to
/// the peer instead (Pacemaker's migration-threshold and failure-timeout). With no live peer to move to, the
/// group keeps being restarted here.
public struct MonitorPolicy: Sendable, Hashable {
    public var interval: Duration
    public var timeout: Duration
    public var failuresBeforeFailover: Int
    public var failureWindow: Duration

    public init(interval: Duration, timeout: Duration, failuresBeforeFailover: Int, failureWindow: Duration) {
        precondition(interval > .zero && timeout > .zero, "monitor interval \(interval) and timeout \(timeout) must be positive")
        precondition(failuresBeforeFailover >= 1, "monitor failures before failover \(failuresBeforeFailover) < 1")
        self.interval = interval
        self.timeout = timeout
        self.failuresBeforeFailover = failuresBeforeFailover
        self.failureWindow = failureWindow
    }

    /// The defaults when ha.cf says nothing: on, every 10 s, each check bounded by 20 s, the third failure within
    /// 10 minutes moves the group.
    public static let standard = MonitorPolicy(
        interval: .seconds(10), timeout: .seconds(20), failuresBeforeFailover: 3, failureWindow: .seconds(600))
}

/// `auto_failback`, with `legacy` already resolved (Tandem runs it as `on`, with the warning Heartbeat gives).
public enum FailbackPolicy: String, Sendable, Hashable {
    case on
    case off
}

/// The last resort when a resource will not stop after every retry.
public enum StopFailureAction: String, Sendable, Hashable, CaseIterable {
    /// Stop sending heartbeats and exit without releasing anything: the peer declares this node dead after deadtime
    /// and takes over. Heartbeat's own default was to reboot; this is the closest thing that a user-space daemon can
    /// do by itself, and fencing (STONITH) makes it safe.
    case stopHeartbeats = "stop-heartbeats"
    /// Reboot the machine at once (`reboot -f`), as Heartbeat did ("Resource STOP failure. Reboot required!").
    case reboot
    /// Keep running and keep the group marked as failed to stop; the operator must intervene.
    case none
}

/// Which groups a standby or takeover is about, from the asking node's point of view (hb_standby's argument).
public enum ResourceSelection: String, Sendable, Hashable, CaseIterable {
    case all
    /// Groups whose preferred node is the asking node.
    case local
    /// Groups whose preferred node is the other node.
    case foreign
    /// Same as foreign: give the other node its groups back.
    case failback

    /// The same groups, named from the other node's point of view.
    public var swapped: ResourceSelection {
        switch self {
        case .all: .all
        case .local: .foreign
        case .foreign, .failback: .local
        }
    }
}
