import CoreSupport
import MembershipCore

/// How this node fences its peer (ha.cf's `stonith_host` lines with Tandem's `stonith_action`, `stonith_delay` and
/// `stonith_timeout`), resolved by the daemon.
public struct StonithPolicy: Sendable, Hashable {
    /// What the fence agent is asked to do to the peer.
    public var action: FenceAction
    /// How long a node that runs no resource group waits before it fences: in a split, the node that runs the
    /// groups fences first and wins, so that the two cannot shoot each other and the service does not move.
    public var delayWhenIdle: Duration
    /// How long one run of the fence agent may take before it counts as failed.
    public var agentTimeout: Duration
    /// Pause between failed attempts. Fencing never gives up: the peer's groups stay unowned until it succeeds.
    public var retryInterval: Duration
    /// With ping nodes (`deadping`): every fence waits this long first, so that a node that lost its service
    /// network along with its peer knows it before it decides to fence (zero without ping nodes).
    public var connectivityGrace: Duration

    public init(
        action: FenceAction, delayWhenIdle: Duration, agentTimeout: Duration, retryInterval: Duration,
        connectivityGrace: Duration = .zero
    ) {
        precondition(delayWhenIdle >= .zero && agentTimeout > .zero && retryInterval > .zero,
                     "stonith delay \(delayWhenIdle), timeout \(agentTimeout), retry \(retryInterval) out of range")
        self.action = action
        self.delayWhenIdle = delayWhenIdle
        self.agentTimeout = agentTimeout
        self.retryInterval = retryInterval
        self.connectivityGrace = connectivityGrace
    }
}

/// The `action=` a fence agent is given to fence a node (the fence-agents convention; its other actions, on,
/// status, list, are for operators).
public enum FenceAction: String, Sendable, Hashable, CaseIterable {
    case off
    case reboot
}

/// What a run of the fence agent ended with.
public enum FenceOutcome: Sendable, Hashable {
    case succeeded(detail: String)
    case failed(detail: String)
}

/// STONITH as a pure state machine: a peer that membership declares dead is fenced before this node may take over
/// what it ran, because a peer that is merely silent (cut off, hung, overloaded) may still be writing.
///
/// ```
///            peerLost                 due                agent succeeded
///   idle ───────────────▶ waiting ──────────▶ running ─────────────────▶ fenced ──peerHeard──▶ idle
///    ▲                      │  ▲                │ agent failed
///    └──────peerHeard───────┘  └──── retrying ◀─┘  (every retryInterval, forever)
/// ```
///
/// Only `.peerFenced` lets the driver tell the resource manager that the peer is gone. A peer heard again before
/// its fence ran is left alone (nothing was taken over, so nothing needs protecting); one heard while the agent runs
/// is not reported fenced, since it may have answered after the agent's action: if the agent did power it off,
/// membership declares it dead again and it is fenced again, which for a powered-off node is quick and harmless.
public struct PeerFencingMachine: Sendable {
    public let peer: String
    public let policy: StonithPolicy
    public private(set) var state: State = .idle
    public private(set) var counters = FencingCounters()
    /// What the last failed attempt said.
    public private(set) var lastFailure: String?
    /// Where this node stands in a fence race, as the driver last said.
    public private(set) var standing = FenceStanding(role: .idle, reachesPingNodes: true)

    public enum State: Sendable, Hashable {
        case idle
        /// The peer was lost; the agent runs once the delay for this node's standing has passed since `lostAt`.
        case waiting(lostAt: MonotonicInstant)
        case running(lostAt: MonotonicInstant, attempt: Int, heardMeanwhile: Bool)
        case retrying(lostAt: MonotonicInstant, attempt: Int, due: MonotonicInstant)
        /// Confirmed off (or rebooted) at `at`; stays so until the peer is heard again.
        case fenced(at: MonotonicInstant)
    }

    public init(peer: String, policy: StonithPolicy) {
        self.peer = peer
        self.policy = policy
    }

    // MARK: Events

    /// Membership declared the peer dead (it did not announce a shutdown). `standing` decides how long to wait:
    /// the node that runs the groups fences first and wins a race.
    public mutating func peerLost(now: MonotonicInstant, standing: FenceStanding) -> [FencingAction] {
        self.standing = standing
        switch state {
        case .idle, .fenced:
            state = .waiting(lostAt: now)
            var actions: [FencingAction] = [.log(.warning, "\(peer) is dead to us: fencing it (STONITH \(policy.action.rawValue)) before anything is taken over")]
            let delay = standing.delay(policy)
            if delay > .zero {
                actions.append(.log(.info, "\(standing.description): fencing in \(delay) (stonith_delay) so that the node that runs the groups fences first"))
            }
            return actions + tick(now: now)
        case .running(let lostAt, let attempt, _):
            // Heard and lost again while the agent runs: its result counts again.
            state = .running(lostAt: lostAt, attempt: attempt, heardMeanwhile: false)
            return []
        case .waiting, .retrying:
            return []
        }
    }

    /// Membership hears the peer again (back after a partition, thawed, or restarted).
    public mutating func peerHeard(now: MonotonicInstant) -> [FencingAction] {
        switch state {
        case .idle:
            return []
        case .waiting, .retrying:
            state = .idle
            return [.log(.warning, "\(peer) is heard again before it was fenced: fencing called off (nothing was taken over)")]
        case .running(let lostAt, let attempt, _):
            state = .running(lostAt: lostAt, attempt: attempt, heardMeanwhile: true)
            return []
        case .fenced:
            state = .idle
            return [.log(.info, "\(peer) is back after it was fenced")]
        }
    }

    /// What this node runs, or whether it reaches its ping nodes, changed: a node that lost its service network
    /// while it waited now waits longer.
    public mutating func standingChanged(_ standing: FenceStanding, now: MonotonicInstant) -> [FencingAction] {
        guard standing != self.standing else { return [] }
        let before = self.standing
        self.standing = standing
        guard case .waiting = state else { return [] }
        return [.log(.info, "fence race: \(before.description) -> \(standing.description); fencing \(standing.delay(policy)) after the loss")] + tick(now: now)
    }

    public mutating func tick(now: MonotonicInstant) -> [FencingAction] {
        switch state {
        case .waiting(let lostAt) where now >= lostAt + standing.delay(policy):
            return run(lostAt: lostAt, attempt: 1)
        case .retrying(let lostAt, let attempt, let due) where now >= due:
            return run(lostAt: lostAt, attempt: attempt + 1)
        default:
            return []
        }
    }

    /// The agent started by the last `.runAgent` finished.
    public mutating func agentFinished(_ outcome: FenceOutcome, now: MonotonicInstant) -> [FencingAction] {
        guard case .running(let lostAt, let attempt, let heardMeanwhile) = state else {
            preconditionFailure("fence agent for \(peer) finished in state \(state)")
        }
        switch outcome {
        case .succeeded(let detail):
            counters.fencesSucceeded += 1
            if heardMeanwhile {
                state = .idle
                return [.log(.warning, "STONITH of \(peer) reported success (\(detail)), but \(peer) was heard while it ran: not taking anything over; if it is gone it will be declared dead and fenced again")]
            }
            state = .fenced(at: now)
            return [
                .log(.notice, "\(peer) fenced (STONITH \(policy.action.rawValue), attempt \(attempt), \(now - lostAt) after it was lost): \(detail)"),
                .peerFenced(peer),
            ]
        case .failed(let detail):
            counters.fenceFailures += 1
            lastFailure = detail
            if heardMeanwhile {
                state = .idle
                return [.log(.error, "STONITH of \(peer) failed (\(detail)); \(peer) is heard again, so nothing is taken over")]
            }
            state = .retrying(lostAt: lostAt, attempt: attempt, due: now + policy.retryInterval)
            return [.log(.critical, "STONITH of \(peer) failed (attempt \(attempt)): \(detail); its resources stay unowned until it is fenced (retry in \(policy.retryInterval))")]
        }
    }

    // MARK: Queries

    public var nextDeadline: MonotonicInstant? {
        switch state {
        case .waiting(let lostAt): lostAt + standing.delay(policy)
        case .retrying(_, _, let due): due
        default: nil
        }
    }

    /// One line for status.
    public func summary(now: MonotonicInstant) -> String {
        switch state {
        case .idle: "armed (\(policy.action.rawValue))"
        case .waiting(let lostAt): "fencing \(peer) in \(max(lostAt + standing.delay(policy) - now, .zero))"
        case .running(_, let attempt, _): "fencing \(peer): agent running (attempt \(attempt))"
        case .retrying(_, let attempt, let due):
            "fencing \(peer) FAILED \(attempt) times, retry in \(max(due - now, .zero)): \(lastFailure ?? "")"
        case .fenced(let at): "\(peer) fenced \(now - at) ago"
        }
    }

    private mutating func run(lostAt: MonotonicInstant, attempt: Int) -> [FencingAction] {
        state = .running(lostAt: lostAt, attempt: attempt, heardMeanwhile: false)
        return [.runAgent(target: peer, action: policy.action, timeout: policy.agentTimeout)]
    }
}

/// Where a node stands when its peer is lost, for the fence race: the side that would lose the least by being
/// fenced waits longest.
public struct FenceStanding: Sendable, Hashable, CustomStringConvertible {
    public enum Role: Sendable, Hashable {
        /// Runs resource groups and the peer runs none.
        case runsTheGroups
        /// Both run groups; `breaksTies`: this node's name sorts first.
        case sharesTheGroups(breaksTies: Bool)
        /// Runs nothing.
        case idle
    }

    public var role: Role
    /// Reaches at least one of its ping nodes (true without ping nodes): a node cut off from its service network
    /// must lose the race even if it runs the groups, since clients cannot reach it.
    public var reachesPingNodes: Bool

    public init(role: Role, reachesPingNodes: Bool) {
        self.role = role
        self.reachesPingNodes = reachesPingNodes
    }

    /// After the connectivity grace: a node that runs the groups (or breaks the tie) fences at once, the other of
    /// two that both run groups waits half the delay, an idle node the whole delay, and a node that reaches no
    /// ping node twice the delay.
    func delay(_ policy: StonithPolicy) -> Duration {
        guard reachesPingNodes else { return policy.connectivityGrace + policy.delayWhenIdle * 2 }
        switch role {
        case .runsTheGroups, .sharesTheGroups(breaksTies: true): return policy.connectivityGrace
        case .sharesTheGroups(breaksTies: false): return policy.connectivityGrace + policy.delayWhenIdle / 2
        case .idle: return policy.connectivityGrace + policy.delayWhenIdle
        }
    }

    public var description: String {
        let what = switch role {
        case .runsTheGroups: "this node runs the resource groups"
        case .sharesTheGroups(let breaksTies):
            "both nodes run resource groups and this node \(breaksTies ? "breaks" : "does not break") the tie"
        case .idle: "this node runs no resource group"
        }
        return reachesPingNodes ? what : what + " but reaches none of its ping nodes"
    }
}

public enum FencingAction: Sendable, Hashable {
    /// Run the fence agent(s) against `target`; the outcome comes back through `agentFinished`.
    case runAgent(target: String, action: FenceAction, timeout: Duration)
    /// `target` is confirmed fenced: what it ran may be taken over.
    case peerFenced(String)
    case log(LogLevel, String)
}

public struct FencingCounters: Sendable, Hashable, Codable {
    public var fencesSucceeded: UInt64 = 0
    public var fenceFailures: UInt64 = 0

    public init() {}
}
