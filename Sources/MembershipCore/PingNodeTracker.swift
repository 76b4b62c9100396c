import CoreSupport
import TandemConfig

/// Heartbeat's ping nodes (`ping`, `ping_group`) as a pure state machine: which of them this node can reach. A ping
/// node is up while its echo replies keep coming, and dead after `deadping` without one; a ping group is up while
/// any of its members is. The count of reachable ping nodes (single nodes and groups) is what ipfail compares
/// between the two nodes: the node that reaches fewer gives its resources up.
public struct PingNodeTracker: Sendable {
    /// One ping node or ping group, as status shows it.
    public struct Target: Sendable, Hashable {
        public var name: String
        public var addresses: [IPv4Address]
        public var isUp: Bool
    }

    public private(set) var targets: [Target]
    public let deadping: Duration
    private var lastReply: [IPv4Address: MonotonicInstant] = [:]

    public init(nodes: [IPv4Address], groups: [PingGroup], deadping: Duration) {
        precondition(deadping > .zero, "deadping \(deadping) must be positive")
        targets = nodes.map { Target(name: "\($0)", addresses: [$0], isUp: false) }
            + groups.map { Target(name: $0.name, addresses: $0.addresses, isUp: false) }
        self.deadping = deadping
    }

    /// Every address to send echo requests to.
    public var addresses: [IPv4Address] { Array(Set(targets.flatMap(\.addresses))).sorted() }

    /// Reachable ping nodes and groups.
    public var reachableCount: Int { targets.filter(\.isUp).count }

    /// An echo reply from `address` arrived.
    public mutating func replyReceived(from address: IPv4Address, now: MonotonicInstant) -> [PingAction] {
        guard targets.contains(where: { $0.addresses.contains(address) }) else { return [] }
        lastReply[address] = now
        return update(now: now)
    }

    public mutating func tick(now: MonotonicInstant) -> [PingAction] { update(now: now) }

    /// When a ping node next goes dead if nothing arrives.
    public var nextDeadline: MonotonicInstant? {
        targets.filter(\.isUp).flatMap(\.addresses).compactMap { lastReply[$0].map { $0 + deadping } }.min()
    }

    private mutating func update(now: MonotonicInstant) -> [PingAction] {
        let before = reachableCount
        var actions: [PingAction] = []
        for index in targets.indices {
            let up = targets[index].addresses.contains { address in
                lastReply[address].map { now - $0 < deadping } ?? false
            }
            guard up != targets[index].isUp else { continue }
            targets[index].isUp = up
            // Heartbeat's wording for a ping node's pseudo-link.
            actions.append(.log(up ? .info : .warning, "Link \(targets[index].name):\(targets[index].name) \(up ? "up" : "dead")."))
        }
        if reachableCount != before { actions.append(.reachabilityChanged(reachable: reachableCount, of: targets.count)) }
        return actions
    }
}

public enum PingAction: Sendable, Hashable {
    case reachabilityChanged(reachable: Int, of: Int)
    case log(LogLevel, String)
}
