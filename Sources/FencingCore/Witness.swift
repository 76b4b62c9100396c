import CoreSupport
import MembershipCore

// The witness (tiebreaker): a third, tiny daemon that decides which side of a split between two nodes may run
// resources. The nodes ask it every keepalive, signed with authkeys, over UDP. Quorum rules (docs/cluster-manager.md):
//
// - A node that hears its peer has quorum: the two of them are a majority of three, witness or not.
// - A node that does not hear its peer has quorum only while it holds the witness's grant. At most one node holds
//   it. The witness gives it to a node that has lost its peer when the other node is silent at the witness too, or
//   has lost its peer as well and loses the tie-break: the node that runs resource groups wins, then the name that
//   sorts first.
// - The holder takes over what the peer ran only once the witness says the peer is clear: at once when the peer
//   says it runs nothing (having lost quorum, it stopped its groups and takes none); when the peer is only silent
//   (for twice its deadtime), two deadtimes after the holder declared it dead, since the peer may have learned of
//   the split up to a deadtime later (a one-way partition hides it) and then needs time to stop.
// - Losing the witness changes nothing while the peer is heard. Losing both: no quorum, every group is stopped.
// - Startup (wait_for_all): a node that never heard its peer needs the grant like any other, and a witness that
//   has just started grants nothing until it has listened for `silenceBeforeGrant`, so that it has heard from
//   every node that is alive.

/// A node's question to the witness (`witness_ask`), and the witness's answer (`witness_answer`).
public enum WitnessMessage: Sendable, Hashable {
    case ask(WitnessAsk)
    case answer(WitnessAnswer)

    static let peerField = "peer"
    static let seesPeerField = "seespeer"
    static let runsField = "runs"
    static let nonceField = "nonce"
    static let grantedField = "granted"
    static let leaseField = "lease"
    static let holderField = "holder"
    static let peerClearField = "peerclear"

    public func encode() -> HeartbeatMessage {
        switch self {
        case .ask(let ask):
            var message = HeartbeatMessage(type: .witnessAsk)
            message[HeartbeatField.source] = ask.node
            message[Self.peerField] = ask.peer
            message[Self.seesPeerField] = ask.seesPeer ? "1" : "0"
            message[Self.runsField] = ask.runsGroups ? "1" : "0"
            message.setHexadecimal(HeartbeatField.deadtime, UInt64(ask.deadtime.wholeMilliseconds))
            message.setHexadecimal(Self.nonceField, ask.nonce)
            return message
        case .answer(let answer):
            var message = HeartbeatMessage(type: .witnessAnswer)
            message[HeartbeatField.destination] = answer.node
            message.setHexadecimal(Self.nonceField, answer.nonce)
            message[Self.grantedField] = answer.granted ? "1" : "0"
            message.setHexadecimal(Self.leaseField, UInt64(answer.lease.wholeMilliseconds))
            if let holder = answer.holder { message[Self.holderField] = holder }
            message[Self.peerClearField] = answer.peerClear.rawValue
            message[HeartbeatField.comment] = answer.reason
            return message
        }
    }

    /// The typed message, or nil when it is not one of these or is malformed.
    public init?(_ message: HeartbeatMessage) {
        guard let nonce = message.hexadecimal(Self.nonceField) else { return nil }
        switch message.type {
        case .witnessAsk?:
            guard let node = message.source, let peer = message[Self.peerField], !node.isEmpty, !peer.isEmpty,
                node.utf8.count <= 64, peer.utf8.count <= 64, node.lowercased() != peer.lowercased(),
                let seesPeer = message[Self.seesPeerField], seesPeer == "0" || seesPeer == "1",
                let runs = message[Self.runsField], runs == "0" || runs == "1",
                let deadtime = message.hexadecimal(HeartbeatField.deadtime), (100...600_000).contains(deadtime)
            else { return nil }
            self = .ask(WitnessAsk(
                node: node, peer: peer, seesPeer: seesPeer == "1", runsGroups: runs == "1",
                deadtime: .milliseconds(Int64(deadtime)), nonce: nonce))
        case .witnessAnswer?:
            guard let node = message[HeartbeatField.destination], let granted = message[Self.grantedField],
                granted == "0" || granted == "1", let lease = message.hexadecimal(Self.leaseField), lease <= 600_000
            else { return nil }
            self = .answer(WitnessAnswer(
                node: node, nonce: nonce, granted: granted == "1", lease: .milliseconds(Int64(lease)),
                holder: message[Self.holderField],
                peerClear: message[Self.peerClearField].flatMap(WitnessPeerClearance.init(rawValue:)) ?? .notClear,
                reason: message[HeartbeatField.comment] ?? ""))
        default:
            return nil
        }
    }
}

public struct WitnessAsk: Sendable, Hashable {
    public var node: String
    public var peer: String
    /// The node hears its peer: it needs no grant, and gives back one it holds.
    public var seesPeer: Bool
    public var runsGroups: Bool
    /// The node's deadtime: how long the witness keeps a grant, and how long a node must be silent to count as gone.
    public var deadtime: Duration
    /// Echoed in the answer: a node takes only answers to questions it asked recently (a replayed answer is stale).
    public var nonce: UInt64

    public init(node: String, peer: String, seesPeer: Bool, runsGroups: Bool, deadtime: Duration, nonce: UInt64) {
        self.node = node
        self.peer = peer
        self.seesPeer = seesPeer
        self.runsGroups = runsGroups
        self.deadtime = deadtime
        self.nonce = nonce
    }
}

/// What the witness knows of the asker's peer (`peerclear`).
public enum WitnessPeerClearance: String, Sendable, Hashable {
    /// The peer may be running groups.
    case notClear = "0"
    /// The peer's last question said it runs nothing and does not hear its own peer: it lost quorum and stopped.
    case runsNothing = "idle"
    /// The peer has not asked for twice its deadtime: dead, or cut off and (by now) stopped.
    case silent
}

public struct WitnessAnswer: Sendable, Hashable {
    public var node: String
    public var nonce: UInt64
    public var granted: Bool
    /// How long the grant lasts from when the question was asked.
    public var lease: Duration
    /// Who holds the grant now, if anyone.
    public var holder: String?
    /// Whether the asker's peer may still run anything: it says it runs no group, or it has been silent at the
    /// witness for twice its deadtime. Only then may the holder take over what the peer ran.
    public var peerClear: WitnessPeerClearance
    public var reason: String

    public init(
        node: String, nonce: UInt64, granted: Bool, lease: Duration, holder: String?,
        peerClear: WitnessPeerClearance = .notClear,
        reason: String
    ) {
        self.node = node
        self.nonce = nonce
        self.granted = granted
        self.lease = lease
        self.holder = holder
        self.peerClear = peerClear
        self.reason = reason
    }
}

/// The witness's decisions: pure, one method per question. One witness serves up to `clustersMaximum` two-node
/// clusters, each known by its pair of node names.
public struct WitnessArbiter: Sendable {
    public static let clustersMaximum = 64

    struct NodeRecord: Sendable {
        var lastAskedAt: MonotonicInstant
        var seesPeer: Bool
        var runsGroups: Bool
    }

    struct Cluster: Sendable {
        var nodes: [String: NodeRecord] = [:]
        var holder: String?
        var holderLeaseEnds: MonotonicInstant = .zero
    }

    private var clusters: [String: Cluster] = [:]
    private let startedAt: MonotonicInstant

    public init(startedAt: MonotonicInstant) {
        self.startedAt = startedAt
    }

    /// How long a node must not have asked before the witness counts it gone: its deadtime (the peer's view of its
    /// death), and as long again for it to stop what it runs once it lost quorum.
    static func silenceBeforeGrant(deadtime: Duration) -> Duration { deadtime * 2 }

    /// Who holds the grant of the cluster of `node` and `peer`.
    public func holder(node: String, peer: String) -> String? {
        clusters[Self.key(node, peer)]?.holder
    }

    public mutating func asked(_ ask: WitnessAsk, now: MonotonicInstant) -> WitnessAnswer {
        let key = Self.key(ask.node, ask.peer)
        let node = ask.node.lowercased()
        let peer = ask.peer.lowercased()
        if clusters[key] == nil && clusters.count >= Self.clustersMaximum {
            return WitnessAnswer(
                node: ask.node, nonce: ask.nonce, granted: false, lease: ask.deadtime, holder: nil,
                reason: "this witness already serves \(Self.clustersMaximum) clusters")
        }
        let silence = Self.silenceBeforeGrant(deadtime: ask.deadtime)
        var cluster = clusters[key] ?? Cluster()
        defer { clusters[key] = cluster }
        func peerClear(_ cluster: Cluster) -> WitnessPeerClearance {
            guard let other = cluster.nodes[peer] else { return now - startedAt >= silence ? .silent : .notClear }
            let quiet = now - other.lastAskedAt
            // "Runs nothing" only from a recent question: a node silent since may have heard its peer again (and
            // so regained quorum) without the witness knowing.
            if !other.runsGroups && !other.seesPeer && quiet < ask.deadtime { return .runsNothing }
            return quiet >= silence ? .silent : .notClear
        }
        func answer(_ granted: Bool, _ reason: String, holder: String?) -> WitnessAnswer {
            WitnessAnswer(
                node: ask.node, nonce: ask.nonce, granted: granted, lease: ask.deadtime, holder: holder,
                peerClear: granted ? peerClear(cluster) : .notClear, reason: reason)
        }
        func grant(_ cluster: inout Cluster) -> WitnessAnswer {
            cluster.holder = node
            cluster.holderLeaseEnds = now + ask.deadtime
            return WitnessAnswer(
                node: ask.node, nonce: ask.nonce, granted: true, lease: ask.deadtime, holder: node,
                peerClear: peerClear(cluster), reason: "granted to \(ask.node)")
        }
        cluster.nodes[node] = NodeRecord(lastAskedAt: now, seesPeer: ask.seesPeer, runsGroups: ask.runsGroups)
        if cluster.holder != nil && now >= cluster.holderLeaseEnds { cluster.holder = nil }

        if ask.seesPeer {
            // The two nodes hear each other: quorum without the witness; a grant held is given back.
            if cluster.holder == node { cluster.holder = nil }
            return answer(false, "\(ask.node) hears \(ask.peer): no grant needed", holder: cluster.holder)
        }
        if cluster.holder == node {
            cluster.holderLeaseEnds = now + ask.deadtime
            return answer(true, "\(ask.node) keeps the grant", holder: node)
        }
        if let holder = cluster.holder {
            return answer(false, "\(holder) holds the grant", holder: holder)
        }
        guard let other = cluster.nodes[peer], now - other.lastAskedAt < silence else {
            if now - startedAt < silence {
                return answer(false, "the witness started \((now - startedAt).wholeMilliseconds) ms ago and has not heard from \(ask.peer) yet; waiting \(silence) before granting", holder: nil)
            }
            return grant(&cluster)
        }
        if other.seesPeer {
            return answer(false, "\(ask.peer) still hears \(ask.node) and asks no grant: \(ask.node) is the one cut off", holder: nil)
        }
        // Both lost each other and both ask: the one that runs groups, then the name that sorts first.
        let wins = ask.runsGroups != other.runsGroups ? ask.runsGroups : node < peer
        guard wins else {
            return answer(false, "\(ask.peer) also asks and wins the tie-break (\(other.runsGroups ? "it runs resource groups" : "its name sorts first"))", holder: nil)
        }
        return grant(&cluster)
    }

    static func key(_ a: String, _ b: String) -> String {
        [a.lowercased(), b.lowercased()].sorted().joined(separator: " ")
    }
}

/// A node's side of the witness: asks every keepalive, and knows whether it holds the grant.
public struct WitnessClient: Sendable {
    public let node: String
    public let peer: String
    public let askInterval: Duration
    public let deadtime: Duration
    /// Questions whose answers are still taken, by nonce: the last few, each with when it was asked.
    private var asked: [(nonce: UInt64, at: MonotonicInstant)] = []
    private var random: SplitMix64
    private var nextAskAt: MonotonicInstant?
    public private(set) var seesPeer = true
    public private(set) var runsGroups = false
    public private(set) var grantEnds: MonotonicInstant?
    /// What the witness's last grant said of the peer.
    public private(set) var peerClear: WitnessPeerClearance = .notClear
    /// The witness's last reason, for status and the log.
    public private(set) var lastAnswer: WitnessAnswer?

    static let questionsRemembered = 8

    public init(node: String, peer: String, askInterval: Duration, deadtime: Duration, randomSeed: UInt64) {
        self.node = node
        self.peer = peer
        self.askInterval = askInterval
        self.deadtime = deadtime
        self.random = SplitMix64(seed: randomSeed)
    }

    public func holdsGrant(now: MonotonicInstant) -> Bool { grantEnds.map { now < $0 } ?? false }

    /// Sends the first question.
    public mutating func start(now: MonotonicInstant) -> [WitnessAction] { ask(now: now) }

    public mutating func tick(now: MonotonicInstant) -> [WitnessAction] {
        guard let due = nextAskAt, now >= due else { return [] }
        return ask(now: now)
    }

    /// What the question says changed: ask at once, so that a lost peer is answered within a round trip.
    public mutating func update(seesPeer: Bool, runsGroups: Bool, now: MonotonicInstant) -> [WitnessAction] {
        guard seesPeer != self.seesPeer || runsGroups != self.runsGroups else { return [] }
        let lostPeer = self.seesPeer && !seesPeer
        self.seesPeer = seesPeer
        self.runsGroups = runsGroups
        if seesPeer {
            grantEnds = nil
            peerClear = .notClear
        }
        return lostPeer || seesPeer ? ask(now: now) : []
    }

    public mutating func answered(_ answer: WitnessAnswer, now: MonotonicInstant) -> [WitnessAction] {
        guard answer.node.lowercased() == node.lowercased(), let index = asked.firstIndex(where: { $0.nonce == answer.nonce }) else {
            return [.log(.debug, "a witness answer to no recent question; dropped")]
        }
        let askedAt = asked[index].at
        asked.remove(at: index)
        let changed = lastAnswer?.granted != answer.granted || lastAnswer?.reason != answer.reason
        lastAnswer = answer
        var actions: [WitnessAction] = []
        if answer.granted && !seesPeer {
            // From when the question left: the witness started its lease later, so this node's view ends first.
            grantEnds = askedAt + min(answer.lease, deadtime)
            peerClear = answer.peerClear
        } else if !answer.granted {
            grantEnds = nil
            peerClear = .notClear
        }
        if changed { actions.append(.log(answer.granted ? .warning : .info, "witness: \(answer.reason)")) }
        return actions
    }

    public var nextDeadline: MonotonicInstant? { nextAskAt }

    private mutating func ask(now: MonotonicInstant) -> [WitnessAction] {
        nextAskAt = now + askInterval
        let nonce = random.next()
        asked.append((nonce, now))
        if asked.count > Self.questionsRemembered { asked.removeFirst() }
        let question = WitnessAsk(node: node, peer: peer, seesPeer: seesPeer, runsGroups: runsGroups, deadtime: deadtime, nonce: nonce)
        return [.send(WitnessMessage.ask(question).encode())]
    }
}

public enum WitnessAction: Sendable, Hashable {
    /// Sign and send this message to the witness.
    case send(HeartbeatMessage)
    case log(LogLevel, String)
}
