import CoreSupport

/// Heartbeat's membership layer as a pure state machine: it sends the keepalives, decides who is alive on which
/// link, checks generations and sequence numbers, and repairs gaps by retransmission.
///
/// Inputs are authenticated messages (the driver checks signatures before anything reaches this machine), the
/// passage of time (`tick`) and messages the resource layer wants sent. Outputs are `MembershipAction`s. Time is
/// passed in, randomness comes from a seeded generator, and nothing here does I/O.
///
/// Receive rules, as Heartbeat's (heartbeat.c, hb_rexmit.c):
/// - our own messages (a broadcast heard back) and unknown nodes are dropped;
/// - a lower generation than the one seen is a replay and is dropped;
/// - a higher generation is a restart: the old incarnation is dead, sequence tracking starts over;
/// - the same generation from a node we declared dead is a return after a partition;
/// - a sequence number already seen is a duplicate (normal: every message goes out on every link);
/// - a gap asks for retransmission after a random 50 ms to `max_rexmit_delay`, at most three times per message;
///   a gap over 250 messages resets the tracking instead.
public struct MembershipMachine: Sendable {
    public let configuration: MembershipConfiguration
    public private(set) var localStatus: NodeStatus = .up
    public private(set) var counters = MembershipCounters()

    private var peers: [String: PeerState]
    private var history: [UInt64: HeartbeatMessage] = [:]
    private var nextSequence: UInt64 = 1
    private var nextKeepaliveAt: MonotonicInstant?
    private var startedAt: MonotonicInstant?
    private var random: SplitMix64

    public init(configuration: MembershipConfiguration) {
        self.configuration = configuration
        self.random = SplitMix64(seed: configuration.randomSeed)
        var peers: [String: PeerState] = [:]
        for name in configuration.peers {
            peers[Self.key(name)] = PeerState(name: name, links: configuration.links)
        }
        self.peers = peers
    }

    // MARK: Events

    /// The daemon started: send the first status message at once.
    public mutating func start(now: MonotonicInstant) -> [MembershipAction] {
        precondition(startedAt == nil, "membership of \(configuration.localNode) started twice")
        startedAt = now
        var actions: [MembershipAction] = []
        sendStatus(now: now, into: &actions)
        return actions
    }

    /// Time passed: send a keepalive when due, declare silent nodes and links dead, ask for missing messages.
    public mutating func tick(now: MonotonicInstant) -> [MembershipAction] {
        guard let startedAt else { return [] }
        var actions: [MembershipAction] = []
        if let due = nextKeepaliveAt, now >= due { sendStatus(now: now, into: &actions) }
        for key in peers.keys.sorted() {
            var peer = peers[key]!
            let silenceLimit = peer.lastHeard.map { $0 + configuration.deadtime } ?? startedAt + configuration.initdead
            if peer.status != .dead, now >= silenceLimit {
                peer.status = .dead
                actions.append(.log(.warning, "node \(peer.name): is dead"))
                actions.append(.nodeStatusChanged(node: peer.name, status: .dead))
            }
            for index in peer.links.indices {
                let heard = peer.links[index].lastHeard
                let limit = heard.map { $0 + configuration.deadtime } ?? startedAt + configuration.initdead
                if peer.links[index].status != .dead, now >= limit {
                    peer.links[index].status = .dead
                    actions.append(.log(.info, "Link \(peer.name):\(configuration.links[index]) dead."))
                    actions.append(.linkStatusChanged(node: peer.name, link: configuration.links[index], status: .dead))
                }
            }
            requestRetransmissions(peer: &peer, now: now, into: &actions)
            peers[key] = peer
        }
        return actions
    }

    /// An authenticated message arrived on link number `link`.
    public mutating func received(_ message: HeartbeatMessage, link: Int, now: MonotonicInstant) -> [MembershipAction] {
        precondition(configuration.links.indices.contains(link), "link \(link) is not one of \(configuration.links)")
        guard startedAt != nil else { return [] }
        guard let source = message.source, let type = message.type else {
            counters.malformed += 1
            return []
        }
        if Self.key(source) == Self.key(configuration.localNode) {
            counters.ownEchoes += 1
            return []
        }
        guard var peer = peers[Self.key(source)] else {
            counters.unknownNode += 1
            return [.log(.warning, "message from node \(source), which is not in ha.cf's node lines: dropped")]
        }
        defer { peers[Self.key(source)] = peer }
        var actions: [MembershipAction] = []
        guard let generation = message.hexadecimal(HeartbeatField.generation) else {
            counters.malformed += 1
            return []
        }
        if let known = peer.generation, generation < known {
            counters.replaysRejected += 1
            if LogThrottle.shouldLog(occurrence: counters.replaysRejected) {
                actions.append(.log(.error, "node \(peer.name): attempted replay attack [\(type.rawValue), generation \(generation) < \(known)] (\(counters.replaysRejected) so far)"))
            }
            return actions
        } else if let known = peer.generation, generation > known {
            actions.append(.log(.warning, "Heartbeat restart on node \(peer.name)"))
            if peer.status != .dead && peer.status != .initial {
                peer.status = .dead
                actions.append(.nodeStatusChanged(node: peer.name, status: .dead))
            }
            peer.restartTracking(generation: generation)
            counters.restartsSeen += 1
        } else if peer.generation == nil {
            peer.restartTracking(generation: generation)
        } else if peer.status == .dead && !peer.shutDown {
            actions.append(.log(.critical, "Cluster node \(peer.name) returning after partition."))
            actions.append(.log(.warning, "Deadtime value may be too small."))
            // Alive again at once, whatever kind of message this is, so that the return is reported once.
            setStatus(&peer, .up, into: &actions)
            actions.append(.nodeReturnedAfterPartition(node: peer.name))
            counters.partitionReturns += 1
        }
        if peer.shutDown {
            // A node that announced its shutdown is gone until it restarts with a new generation; late copies of its
            // last messages must not bring it back.
            counters.duplicates += 1
            return actions
        }
        noteHeard(&peer, link: link, now: now, into: &actions)

        if type.isSequenced {
            guard let sequence = message.hexadecimal(HeartbeatField.sequence) else {
                counters.malformed += 1
                return actions
            }
            guard accept(sequence: sequence, peer: &peer, now: now, into: &actions) else { return actions }
        }
        counters.messagesReceived += 1
        switch type {
        case .status:
            receivedStatus(message, peer: &peer, now: now, into: &actions)
        case .retransmitRequest:
            if isForUs(message) { retransmit(message, peer: peer, into: &actions) }
        case .retransmitRefused:
            if isForUs(message) { giveUp(message, peer: &peer, into: &actions) }
        case .acknowledgement:
            break
        case .shutdownDone:
            peer.shutDown = true
            peer.status = .dead
            actions.append(.log(.info, "Received shutdown notice from '\(peer.name)'."))
            actions.append(.nodeStatusChanged(node: peer.name, status: .dead))
            actions.append(.deliver(message, from: peer.name))
        default:
            if isForUs(message) {
                if peer.status == .dead || peer.status == .initial {
                    // Anything but a status message still proves the node alive.
                    setStatus(&peer, .up, into: &actions)
                }
                // In order only: a message recovered by retransmission after a newer one was delivered (after a
                // partition, say) describes a state the sender has already left; delivering it would undo the
                // newer one (an old "I hold this group" after "I released it").
                if type.isSequenced, let sequence = message.hexadecimal(HeartbeatField.sequence) {
                    if let delivered = peer.highestDeliveredSequence, sequence < delivered {
                        counters.staleNotDelivered += 1
                        actions.append(.log(.debug, "not delivering \(type.rawValue) \(sequence) from \(peer.name): \(delivered) is newer"))
                        return actions
                    }
                    peer.highestDeliveredSequence = sequence
                }
                actions.append(.deliver(message, from: peer.name))
            }
        }
        return actions
    }

    /// The resource layer wants `message` sent to every node (or to its `dest`).
    public mutating func send(_ message: HeartbeatMessage, now: MonotonicInstant) -> [MembershipAction] {
        var actions: [MembershipAction] = []
        transmit(message, into: &actions)
        return actions
    }

    /// The resource layer settled (active) or started changing resources (up); peers hear it at once.
    public mutating func setLocalStatus(_ status: NodeStatus, now: MonotonicInstant) -> [MembershipAction] {
        precondition(status == .up || status == .active, "the local node cannot declare itself \(status)")
        guard status != localStatus else { return [] }
        localStatus = status
        var actions: [MembershipAction] = [.log(.info, "Local status now set to: '\(status.rawValue)'")]
        if startedAt != nil { sendStatus(now: now, into: &actions) }
        return actions
    }

    // MARK: Queries

    /// When `tick` must next run. Nil before `start`.
    public var nextDeadline: MonotonicInstant? {
        guard let startedAt, var earliest = nextKeepaliveAt else { return nil }
        for peer in peers.values {
            if peer.status != .dead {
                earliest = min(earliest, peer.lastHeard.map { $0 + configuration.deadtime } ?? startedAt + configuration.initdead)
            }
            for link in peer.links where link.status != .dead {
                earliest = min(earliest, link.lastHeard.map { $0 + configuration.deadtime } ?? startedAt + configuration.initdead)
            }
            if let due = peer.missing.values.map(\.requestAt).min() { earliest = min(earliest, due) }
        }
        return earliest
    }

    /// Every peer's status and links, in configuration order.
    public var peerReports: [PeerReport] {
        configuration.peers.map { name in
            let peer = peers[Self.key(name)]!
            return PeerReport(
                name: peer.name, status: peer.status, generation: peer.generation,
                links: zip(configuration.links, peer.links).map { ($0, $1.status) }.map(LinkReport.init),
                lastHeard: peer.lastHeard)
        }
    }

    /// How many ping nodes and groups this node reaches, sent in its status messages; nil without ping nodes.
    public private(set) var localPingReachability: Int?

    /// The ping tracker's count changed: the peer hears of it at once, so that ipfail can act.
    public mutating func setLocalPingReachability(_ count: Int, now: MonotonicInstant) -> [MembershipAction] {
        guard count != localPingReachability else { return [] }
        localPingReachability = count
        var actions: [MembershipAction] = []
        if localStatus != .initial && localStatus != .dead { sendStatus(now: now, into: &actions) }
        return actions
    }

    /// How many ping nodes `node` said it reaches in its last status message; nil if it did not say.
    public func pingReachability(of node: String) -> Int? {
        peers[Self.key(node)]?.pingReachability
    }

    /// Whether `node`'s last status message said it hears this node. True for a node that does not say (Heartbeat).
    public func hearsUs(_ node: String) -> Bool {
        peers[Self.key(node)]?.hearsUs ?? true
    }

    /// Whether `node` sent `shutdone` in its current incarnation: it released everything before it went.
    public func hasAnnouncedShutdown(_ node: String) -> Bool {
        peers[Self.key(node)]?.shutDown == true
    }

    public func status(of node: String) -> NodeStatus? {
        if Self.key(node) == Self.key(configuration.localNode) { return localStatus }
        return peers[Self.key(node)]?.status
    }

    // MARK: Sending

    private mutating func sendStatus(now: MonotonicInstant, into actions: inout [MembershipAction]) {
        var status = HeartbeatMessage(type: .status)
        status[HeartbeatField.status] = localStatus.rawValue
        status.setHexadecimal(HeartbeatField.deadtime, UInt64(configuration.deadtime.wholeNanoseconds / 1_000_000))
        status[HeartbeatField.protocolVersion] = "1"
        if let localPingReachability { status[HeartbeatField.pingNodesReachable] = String(localPingReachability) }
        // Whom this node hears, so that a peer whose messages no longer arrive here (a one-way partition) knows it.
        status[HeartbeatField.hears] = peers.values.filter { $0.status == .up || $0.status == .active }
            .map(\.name).sorted().joined(separator: " ")
        transmit(status, into: &actions)
        nextKeepaliveAt = now + configuration.keepalive
    }

    /// Adds the fields every message carries (source, sequence for sequenced types, generation, hops), keeps
    /// sequenced messages for retransmission, and hands the message to the driver, which stamps the time, signs it
    /// and sends it on every link.
    private mutating func transmit(_ message: HeartbeatMessage, into actions: inout [MembershipAction]) {
        var outgoing = message
        outgoing[HeartbeatField.source] = configuration.localNode
        let sequenced = outgoing.type?.isSequenced ?? true
        if sequenced { outgoing.setHexadecimal(HeartbeatField.sequence, nextSequence) }
        outgoing.setHexadecimal(HeartbeatField.generation, configuration.generation)
        outgoing[HeartbeatField.timeToLive] = "3"
        if sequenced {
            history[nextSequence] = outgoing
            let kept = UInt64(MembershipConfiguration.historyMessagesMaximum)
            if nextSequence > kept { history[nextSequence - kept] = nil }
            nextSequence += 1
        }
        counters.messagesSent += 1
        actions.append(.transmit(outgoing))
    }

    // MARK: Receiving

    private func isForUs(_ message: HeartbeatMessage) -> Bool {
        guard let destination = message[HeartbeatField.destination] else { return true }
        return Self.key(destination) == Self.key(configuration.localNode)
    }

    private mutating func noteHeard(
        _ peer: inout PeerState, link: Int, now: MonotonicInstant, into actions: inout [MembershipAction]
    ) {
        if peer.links[link].status != .up {
            peer.links[link].status = .up
            actions.append(.log(.info, "Link \(peer.name):\(configuration.links[link]) up."))
            actions.append(.linkStatusChanged(node: peer.name, link: configuration.links[link], status: .up))
        }
        peer.links[link].lastHeard = now
    }

    /// Whether a sequenced message is new; records gaps for retransmission.
    private mutating func accept(
        sequence: UInt64, peer: inout PeerState, now: MonotonicInstant, into actions: inout [MembershipAction]
    ) -> Bool {
        guard let highest = peer.highestSequence else {
            peer.highestSequence = sequence
            return true
        }
        if sequence <= highest {
            if peer.missing.removeValue(forKey: sequence) != nil {
                counters.retransmissionsReceived += 1
                return true
            }
            counters.duplicates += 1
            return false
        }
        let gap = sequence - highest - 1
        if gap > MembershipConfiguration.gapMaximum {
            actions.append(.log(.warning, "\(gap) lost packet(s) for [\(peer.name)] [\(highest):\(sequence)]: too many to ask for, tracking reset"))
            counters.messagesLost += gap
            counters.trackingResets += 1
            peer.missing.removeAll()
        } else if gap > 0 {
            actions.append(.log(.info, "\(gap) lost packet(s) for [\(peer.name)] [\(highest):\(sequence)]"))
            for missing in (highest + 1)..<sequence {
                peer.missing[missing] = MissingMessage(requestAt: now + retransmitDelay(), attempts: 0)
            }
        }
        peer.highestSequence = sequence
        return true
    }

    private mutating func receivedStatus(
        _ message: HeartbeatMessage, peer: inout PeerState, now: MonotonicInstant,
        into actions: inout [MembershipAction]
    ) {
        if let previous = peer.lastStatusAt, peer.status != .dead, now - previous > configuration.warntime {
            let milliseconds = (now - previous).wholeNanoseconds / 1_000_000
            actions.append(.log(.warning, "Late heartbeat: Node \(peer.name): interval \(milliseconds) ms"))
            counters.lateHeartbeats += 1
        }
        peer.lastStatusAt = now
        peer.pingReachability = message[HeartbeatField.pingNodesReachable].flatMap { Int($0) }.map { min(max($0, 0), 1000) }
        peer.hearsUs = message[HeartbeatField.hears].map { field in
            field.split(separator: " ").contains { Self.key(String($0)) == Self.key(configuration.localNode) }
        }
        let reported = message[HeartbeatField.status].flatMap(NodeStatus.init(rawValue:)) ?? .up
        // A node never reports itself dead or initial; treat such a claim as "up".
        setStatus(&peer, reported == .active ? .active : .up, into: &actions)
    }

    private func setStatus(_ peer: inout PeerState, _ status: NodeStatus, into actions: inout [MembershipAction]) {
        guard peer.status != status else { return }
        peer.status = status
        actions.append(.log(.info, "Status update for node \(peer.name): status \(status.rawValue)"))
        actions.append(.nodeStatusChanged(node: peer.name, status: status))
    }

    /// The peer asks for messages it missed: resend those still kept, refuse the rest.
    private mutating func retransmit(_ request: HeartbeatMessage, peer: PeerState, into actions: inout [MembershipAction]) {
        guard let first = request.hexadecimal(HeartbeatField.firstSequence),
            let last = request.hexadecimal(HeartbeatField.lastSequence), first <= last, first > 0,
            last - first < MembershipConfiguration.retransmitRangeMaximum
        else {
            counters.malformed += 1
            return
        }
        var refused: [UInt64] = []
        for sequence in first...last {
            if let kept = history[sequence] {
                counters.retransmissionsSent += 1
                actions.append(.transmit(kept))
            } else if sequence < nextSequence {
                refused.append(sequence)
            }
        }
        for range in Self.contiguousRanges(refused) {
            var refusal = HeartbeatMessage(type: .retransmitRefused)
            refusal[HeartbeatField.destination] = peer.name
            refusal.setHexadecimal(HeartbeatField.firstSequence, range.lowerBound)
            refusal.setHexadecimal(HeartbeatField.lastSequence, range.upperBound)
            transmit(refusal, into: &actions)
        }
    }

    private mutating func giveUp(_ refusal: HeartbeatMessage, peer: inout PeerState, into actions: inout [MembershipAction]) {
        guard let first = refusal.hexadecimal(HeartbeatField.firstSequence),
            let last = refusal.hexadecimal(HeartbeatField.lastSequence), first <= last
        else { return }
        let lost = peer.missing.keys.filter { (first...last).contains($0) }
        for sequence in lost { peer.missing[sequence] = nil }
        if !lost.isEmpty {
            counters.messagesLost += UInt64(lost.count)
            actions.append(.log(.warning, "node \(peer.name) no longer has \(lost.count) message(s) we missed [\(first):\(last)]"))
        }
    }

    private mutating func requestRetransmissions(
        peer: inout PeerState, now: MonotonicInstant, into actions: inout [MembershipAction]
    ) {
        let due = peer.missing.filter { $0.value.requestAt <= now }.keys.sorted()
        guard !due.isEmpty else { return }
        for sequence in due {
            peer.missing[sequence]!.attempts += 1
            if peer.missing[sequence]!.attempts > MembershipConfiguration.retransmitAttemptsMaximum {
                peer.missing[sequence] = nil
                counters.messagesLost += 1
            } else {
                peer.missing[sequence]!.requestAt = now + retransmitDelay()
            }
        }
        let stillMissing = due.filter { peer.missing[$0] != nil }
        for range in Self.contiguousRanges(stillMissing) {
            var request = HeartbeatMessage(type: .retransmitRequest)
            request[HeartbeatField.destination] = peer.name
            request.setHexadecimal(HeartbeatField.firstSequence, range.lowerBound)
            request.setHexadecimal(HeartbeatField.lastSequence, range.upperBound)
            counters.retransmissionsRequested += 1
            transmit(request, into: &actions)
        }
    }

    private mutating func retransmitDelay() -> Duration {
        let span = (configuration.maxRetransmitDelay - MembershipConfiguration.retransmitDelayMinimum).wholeNanoseconds
        return MembershipConfiguration.retransmitDelayMinimum + .nanoseconds(Int64.random(in: 0...span, using: &random))
    }

    static func contiguousRanges(_ sorted: [UInt64]) -> [ClosedRange<UInt64>] {
        var ranges: [ClosedRange<UInt64>] = []
        for value in sorted {
            if let last = ranges.last, last.upperBound + 1 == value,
                value - last.lowerBound < MembershipConfiguration.retransmitRangeMaximum
            {
                ranges[ranges.count - 1] = last.lowerBound...value
            } else {
                ranges.append(value...value)
            }
        }
        return ranges
    }

    /// Heartbeat compares node names without regard to ASCII case.
    static func key(_ name: String) -> String { name.lowercased() }
}

/// What the membership machine asks its driver to do or tells the resource layer.
public enum MembershipAction: Sendable, Equatable {
    /// Stamp `ts` (and `ld` for status), sign, and send on every link.
    case transmit(HeartbeatMessage)
    /// A new message for the resource layer.
    case deliver(HeartbeatMessage, from: String)
    case nodeStatusChanged(node: String, status: NodeStatus)
    case linkStatusChanged(node: String, link: String, status: LinkStatus)
    /// A node we had declared dead is heard again in the same incarnation: both sides may hold resources.
    case nodeReturnedAfterPartition(node: String)
    case log(LogLevel, String)
}

/// Syslog's levels, as Heartbeat's messages use them.
public enum LogLevel: String, Sendable, Hashable, Comparable {
    case debug, info, notice, warning, error, critical

    private var rank: Int {
        switch self {
        case .debug: 0
        case .info: 1
        case .notice: 2
        case .warning: 3
        case .error: 4
        case .critical: 5
        }
    }

    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rank < rhs.rank }
}

/// What the machine counted; status shows them.
public struct MembershipCounters: Sendable, Hashable, Codable {
    public var messagesSent: UInt64 = 0
    public var messagesReceived: UInt64 = 0
    public var duplicates: UInt64 = 0
    public var ownEchoes: UInt64 = 0
    public var unknownNode: UInt64 = 0
    public var malformed: UInt64 = 0
    public var replaysRejected: UInt64 = 0
    public var restartsSeen: UInt64 = 0
    public var partitionReturns: UInt64 = 0
    public var lateHeartbeats: UInt64 = 0
    public var retransmissionsRequested: UInt64 = 0
    public var retransmissionsSent: UInt64 = 0
    public var retransmissionsReceived: UInt64 = 0
    public var messagesLost: UInt64 = 0
    public var trackingResets: UInt64 = 0
    /// Retransmitted messages older than one already delivered, kept from the resource layer.
    public var staleNotDelivered: UInt64 = 0

    public init() {}
}

/// One peer as status shows it.
public struct PeerReport: Sendable, Hashable {
    public var name: String
    public var status: NodeStatus
    public var generation: UInt64?
    public var links: [LinkReport]
    public var lastHeard: MonotonicInstant?
}

public struct LinkReport: Sendable, Hashable {
    public var name: String
    public var status: LinkStatus
}

struct PeerState: Sendable {
    var name: String
    var status: NodeStatus = .initial
    var generation: UInt64?
    var highestSequence: UInt64?
    /// The sequence number of the last message handed to the resource layer: a retransmitted message older than
    /// it arrives after what superseded it, and is not delivered.
    var highestDeliveredSequence: UInt64?
    var missing: [UInt64: MissingMessage] = [:]
    var lastStatusAt: MonotonicInstant?
    var links: [LinkState]
    /// The node sent `shutdone` in its current generation.
    var shutDown = false
    /// The `pings` field of its last status message.
    var pingReachability: Int?
    /// Whether its last status message listed this node in `hears`; nil when it sends no such field.
    var hearsUs: Bool?

    init(name: String, links: [String]) {
        self.name = name
        self.links = links.map { _ in LinkState() }
    }

    mutating func restartTracking(generation: UInt64) {
        self.generation = generation
        highestSequence = nil
        highestDeliveredSequence = nil
        missing.removeAll()
        lastStatusAt = nil
        shutDown = false
    }

    /// The last message from the node, on any link.
    var lastHeard: MonotonicInstant? { links.compactMap(\.lastHeard).max() }
}

struct LinkState: Sendable {
    var status: LinkStatus = .initial
    var lastHeard: MonotonicInstant?
}

struct MissingMessage: Sendable {
    var requestAt: MonotonicInstant
    var attempts: Int
}

/// Flood control for log lines about dropped input: the 1st, 2nd, 4th, 8th... occurrence is logged, so that a flood
/// of bad packets cannot fill the log while the counters still say how many there were.
public enum LogThrottle {
    public static func shouldLog(occurrence: UInt64) -> Bool { occurrence & (occurrence - 1) == 0 }
}
