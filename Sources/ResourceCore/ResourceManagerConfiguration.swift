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

    public init(
        localNode: String, peerNode: String?, groups: [GroupDefinition], autoFailback: FailbackPolicy,
        startTimeout: Duration = .seconds(120), stopTimeout: Duration = .seconds(120), stopRetries: Int = 10,
        stopRetryInterval: Duration = .seconds(1), stopFailureAction: StopFailureAction = .stopHeartbeats,
        exchangeTimeout: Duration = .seconds(60)
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
