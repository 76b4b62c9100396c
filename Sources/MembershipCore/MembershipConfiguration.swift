import CoreSupport

/// What the membership machine needs to know, resolved from ha.cf by the daemon.
public struct MembershipConfiguration: Sendable {
    /// This node's name as in ha.cf's `node` lines (`uname -n`).
    public var localNode: String
    /// The other cluster nodes.
    public var peers: [String]
    /// The heartbeat links, by the name status shows (usually the interface). Every message goes out on each.
    public var links: [String]
    /// Interval between status messages (`keepalive`).
    public var keepalive: Duration
    /// Lateness that logs "Late heartbeat" (`warntime`).
    public var warntime: Duration
    /// Silence after which a node or link is dead (`deadtime`).
    public var deadtime: Duration
    /// Silence after which a node never heard since our start is dead (`initdead`).
    public var initdead: Duration
    /// Upper bound of the random delay before asking for a retransmission (`max_rexmit_delay`).
    public var maxRetransmitDelay: Duration
    /// This incarnation's generation (`hg`): larger than every earlier one of this node, so that peers can tell a
    /// restart from a replay.
    public var generation: UInt64
    /// Seeds the retransmission-delay jitter; the simulator passes its run's seed.
    public var randomSeed: UInt64

    /// Sent messages kept for retransmission (Heartbeat keeps 500).
    public static let historyMessagesMaximum = 500
    /// A gap larger than this resets the sender's tracking instead of asking for retransmission (Heartbeat: 250).
    public static let gapMaximum: UInt64 = 250
    /// Shortest delay before asking for a retransmission (Heartbeat: 50 ms).
    public static let retransmitDelayMinimum: Duration = .milliseconds(50)
    /// Requests for one missing message before it is given up as lost.
    public static let retransmitAttemptsMaximum = 3
    /// Messages one retransmission request may ask for.
    public static let retransmitRangeMaximum: UInt64 = 100

    public init(
        localNode: String, peers: [String], links: [String], keepalive: Duration, warntime: Duration,
        deadtime: Duration, initdead: Duration, maxRetransmitDelay: Duration, generation: UInt64, randomSeed: UInt64
    ) {
        precondition(!links.isEmpty, "membership needs at least one link (node \(localNode))")
        precondition(keepalive > .zero && deadtime > keepalive, "keepalive \(keepalive) must be below deadtime \(deadtime)")
        self.localNode = localNode
        self.peers = peers
        self.links = links
        self.keepalive = keepalive
        self.warntime = warntime
        self.deadtime = deadtime
        self.initdead = initdead
        self.maxRetransmitDelay = max(maxRetransmitDelay, Self.retransmitDelayMinimum)
        self.generation = generation
        self.randomSeed = randomSeed
    }
}

/// A node's status as Heartbeat reports it (`cl_status nodestatus`).
public enum NodeStatus: String, Sendable, Hashable, CaseIterable {
    /// Not heard from since we started.
    case initial = "init"
    /// Running, resources not settled yet.
    case up
    /// Running with its resources settled.
    case active
    /// Silent for deadtime (initdead before the first message), or shut down.
    case dead
}

/// A link's status towards one node (`cl_status hblinkstatus`).
public enum LinkStatus: String, Sendable, Hashable {
    case initial = "init"
    case up
    case dead
}
