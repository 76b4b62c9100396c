import CoreSupport
import MembershipCore

/// Heartbeat R1's resource manager as a pure state machine: which node runs which haresources group, started left
/// to right and stopped right to left, one operation at a time.
///
/// The machine keeps, per group, whether this node wants it and how many of its resources are (possibly) started.
/// Every event adjusts what is wanted; `reconcile` then issues the next stop (groups being released, last group
/// first) or start (groups being acquired, first group first). When nothing is left to do the node is "settled" and
/// the notices that waited for that go out (the `resource` announcement, the standby's `done`, `shutdone`).
///
/// The rules (R1 with nice_failback semantics, see docs/cluster-manager.md):
/// - At start the node sends `starting` and waits. If the peer is dead (or never heard within initdead) it takes
///   every group. When the peer answers, it takes the groups the peer does not hold: all of them if the peer is
///   stable, only its own (local) ones otherwise.
/// - `auto_failback on`: a node that sees its peer start releases the peer's own groups, then announces; the peer
///   takes them.
/// - When the peer dies or announces its shutdown, this node takes every group ("Resources being acquired from X").
/// - Standby is a three-step exchange (offer, accept, done); takeover asks the peer to run standby.
/// - A failed start releases the group and leaves it to the peer; a node never retries a group that failed on it
///   until an operator moves it or the peer dies.
/// - A failed stop is retried; after the retries the configured last resort runs.
/// - With monitoring, each resource of a running group is checked every interval; a failed check restarts it in
///   place (with the resources after it), and repeated failures within the window move the group to the peer.
/// - If both nodes hold a group (a healed partition, a hung node that woke up), the one that acquired it earlier
///   releases it: the other took it over because it believed this one dead, and has served it since. Per-group
///   acquisition epochs (Tandem's `epochs` field) order the two; when they are equal or the peer sends none
///   (Heartbeat), the node that is not the group's preferred node releases it.
public struct ResourceManagerMachine: Sendable {
    public let configuration: ResourceManagerConfiguration
    public private(set) var phase: Phase = .notStarted
    public private(set) var counters = ResourceCounters()

    private var groups: [GroupState]
    private var peer = PeerView()
    private var exchange: Exchange?
    private var inFlight: ResourceOperation?
    private var stopRetryAt: MonotonicInstant?
    private var notices: [Notice] = []
    private var isActive = false
    private var warnedAboutUnknownGroups = false
    /// False while a witness denies this node quorum: it runs nothing and takes nothing.
    public private(set) var hasQuorum = true
    /// Groups released since the peer's last `resource` message: handed to it (standby, auto_failback, a split
    /// brain it won) or given up. Not taken back as "unheld" before the peer has said what it now holds.
    private var releasedSincePeerSpoke: Set<Int> = []
    /// The highest acquisition epoch seen, ours or the peer's (see `ResourceMessage.Holdings.acquisitionEpochs`).
    public private(set) var highestEpochSeen: UInt64
    /// When `starting` last went out, while waiting for the peer's answer.
    private var startingSentAt: MonotonicInstant?
    /// How often `starting` is repeated to a live peer that has not answered.
    private var startingResendInterval: Duration { configuration.exchangeTimeout / 4 }

    public enum Phase: String, Sendable, Hashable {
        case notStarted = "not-started"
        /// Sent `starting`; waiting for the peer's answer or its death.
        case waitingForPeer = "waiting-for-peer"
        case running
        /// Releasing everything before exit.
        case shuttingDown = "shutting-down"
        /// Shut down, or stopped by the last resort: no more operations.
        case halted
    }

    public init(configuration: ResourceManagerConfiguration) {
        self.configuration = configuration
        self.groups = configuration.groups.map { GroupState(definition: $0) }
        self.highestEpochSeen = configuration.initialEpoch
    }

    // MARK: Events

    public mutating func start(now: MonotonicInstant) -> [ResourceAction] {
        precondition(phase == .notStarted, "resource manager of \(configuration.localNode) started in phase \(phase)")
        var actions: [ResourceAction] = []
        guard let peerName = configuration.peerNode else {
            phase = .running
            actions.append(.log(.info, "no other node in ha.cf: acquiring every resource group"))
            acquire(groups.indices.map { $0 }, reason: "single node", into: &actions)
            notices.append(.initialAcquisitionComplete)
            reconcile(now: now, into: &actions)
            return actions
        }
        phase = .waitingForPeer
        startingSentAt = now
        actions.append(.send(.starting))
        actions.append(.log(.info, "waiting for \(peerName) before acquiring resources"))
        return actions
    }

    /// The membership layer's view of the peer changed.
    public mutating func peerStatusChanged(_ status: NodeStatus, now: MonotonicInstant) -> [ResourceAction] {
        guard let peerName = configuration.peerNode, phase != .notStarted, phase != .halted else { return [] }
        var actions: [ResourceAction] = []
        switch status {
        case .dead:
            let wasAlive = peer.isAlive
            peer = PeerView()
            releasedSincePeerSpoke = []
            // A standby that was releasing groups to the peer has no one to tell any more; they are taken back below.
            notices.removeAll { if case .standbyDone = $0 { true } else { false } }
            if let exchange {
                actions.append(.log(.warning, "standby exchange (\(exchange.description)) abandoned: \(peerName) is dead"))
                self.exchange = nil
            }
            switch phase {
            case .waitingForPeer:
                phase = .running
                actions.append(.log(.info, "\(peerName) is not running: acquiring every resource group"))
                acquire(groups.indices.map { $0 }, reason: "peer dead at start", into: &actions)
                notices.append(.initialAcquisitionComplete)
            case .running:
                actions.append(.log(.info, "Resources being acquired from \(peerName)."))
                if !wasAlive { actions.append(.log(.debug, "(\(peerName) was not known to be alive)")) }
                // A group that failed here gets another chance: nobody else can run it now.
                for index in groups.indices { groups[index].failedHere = false }
                let taken = acquire(groups.indices.map { $0 }, reason: "takeover from \(peerName)", into: &actions)
                if taken > 0 { actions.append(.alert(.takeover, "taking over \(taken) resource group(s) from \(peerName)")) }
                notices.append(.takeoverComplete(peerName))
                counters.takeovers += 1
            default:
                break
            }
        case .up, .active:
            let wasAlive = peer.isAlive
            peer.isAlive = true
            if phase == .waitingForPeer && !wasAlive {
                // Our `starting` may have gone out while the peer could not hear it.
                startingSentAt = now
                actions.append(.send(.starting))
            } else if phase == .running && !wasAlive {
                // Heard again (or for the first time in this incarnation) after we thought it dead: we may both hold
                // groups. Say what we hold; the conflict rule settles the rest on both sides.
                actions.append(.send(.holdings(holdingsMessage, stable: isSettled)))
            }
        case .initial:
            break
        }
        reconcile(now: now, into: &actions)
        return actions
    }

    /// A witness is configured and this node lost quorum (it does not hear its peer and the witness did not grant
    /// it the cluster), or has it again. Without quorum every group is stopped and none is taken: the other side of
    /// the split may be running them.
    public mutating func quorumChanged(_ quorate: Bool, now: MonotonicInstant) -> [ResourceAction] {
        guard quorate != hasQuorum, phase != .notStarted, phase != .halted else { return [] }
        hasQuorum = quorate
        var actions: [ResourceAction] = []
        if !quorate {
            let held = groups.indices.filter { groups[$0].isHeld }
            if !held.isEmpty { actions.append(.log(.critical, "no quorum: stopping every resource group")) }
            release(held, reason: "no quorum", into: &actions)
            // Stopped, not handed to the peer: this node's own groups are its to take again with quorum.
            releasedSincePeerSpoke.subtract(held)
        } else if phase == .running && peer.isAlive && exchange == nil {
            // What the peer held before may be stale (it may have taken groups over meanwhile): no unheld group is
            // taken before it answers with what it holds now. (A standby exchange under way brings fresh holdings by
            // itself, and a question in its middle would get an answer from before its acquisitions.)
            peer.isStable = false
            actions.append(.send(.answerWanted(holdingsMessage, stable: isSettled)))
        }
        reconcile(now: now, into: &actions)
        return actions
    }

    /// The peer was dead to us and is back in the same incarnation: we may both hold groups. Tell it what we hold;
    /// its announcement tells us what it holds, and the conflict rule settles the rest.
    public mutating func peerReturnedAfterPartition(now: MonotonicInstant) -> [ResourceAction] {
        guard phase == .running || phase == .waitingForPeer else { return [] }
        peer.isAlive = true
        return [.send(.holdings(holdingsMessage, stable: isSettled))]
    }

    public mutating func received(_ message: ResourceMessage, now: MonotonicInstant) -> [ResourceAction] {
        guard let peerName = configuration.peerNode, phase != .notStarted, phase != .halted else { return [] }
        var actions: [ResourceAction] = []
        peer.isAlive = true
        warnAboutUnknownGroups(in: message, into: &actions)
        switch message {
        case .starting:
            // The peer (re)started and holds nothing.
            peer.held = []
            peer.isStable = false
            peer.epochs = [:]
            peer.failed = []
            releasedSincePeerSpoke = []
            if let exchange {
                actions.append(.log(.warning, "standby exchange (\(exchange.description)) abandoned: \(peerName) restarted"))
                self.exchange = nil
            }
            if phase == .running, configuration.autoFailback == .on {
                let theirs = groups.indices.filter { !configuration.isLocal(groups[$0].definition) && groups[$0].isHeld }
                if !theirs.isEmpty {
                    actions.append(.log(.info, "auto_failback: giving \(peerName) its resource groups back"))
                    release(theirs, reason: "auto_failback to \(peerName)", into: &actions)
                    notices.append(.announce)
                }
            }
            actions.append(.send(.holdings(holdingsMessage, stable: isSettled && phase == .running)))
        case .holdings(let holdings, let stable), .conflictAnswer(let holdings, let stable),
            .answerWanted(let holdings, let stable):
            peer.held = resolve(holdings)
            peer.isStable = stable
            let failedKeys = Set(holdings.failedGroupKeys ?? [])
            peer.failed = Set(groups.indices.filter { failedKeys.contains(groups[$0].definition.key) })
            releasedSincePeerSpoke = []
            let epochs = holdings.epochsByKey
            peer.epochs = Dictionary(uniqueKeysWithValues: groups.indices.compactMap { index in
                epochs[groups[index].definition.key].map { (index, $0) }
            })
            highestEpochSeen = max(highestEpochSeen, epochs.values.max() ?? 0)
            switch message {
            case .conflictAnswer: settleConflicts(answering: false, into: &actions)
            case .answerWanted:
                settleConflicts(answering: false, into: &actions)
                actions.append(.send(.conflictAnswer(holdingsMessage, stable: isSettled)))
            default: settleConflicts(answering: true, into: &actions)
            }
            if phase == .waitingForPeer {
                phase = .running
                let unheld = groups.indices.filter { !peer.held.contains($0) && !groups[$0].failedHere }
                let taking = stable ? unheld : unheld.filter { configuration.isLocal(groups[$0].definition) }
                acquire(taking, reason: "initial acquisition", into: &actions)
                notices.append(.initialAcquisitionComplete)
            }
            // Running and stable on both sides: the groups nobody holds are taken in `reconcile`, once settled.
        case .standby(let step, let holdings, let reason):
            receivedStandby(step, resolve(holdings), reason: reason, now: now, into: &actions)
        case .takeover(let selection):
            // The peer checked that it was settled before asking.
            peer.isStable = true
            actions.append(.log(.info, "\(peerName) asks to take over \(selection.rawValue) resources (hb_takeover)"))
            offer(select(selection.swapped), now: now, into: &actions)
        case .shutdownDone:
            // Membership reports the peer dead with the same notice; the takeover happens there.
            break
        }
        reconcile(now: now, into: &actions)
        return actions
    }

    /// The operation from the last `.run` action finished.
    public mutating func operationFinished(
        _ operation: ResourceOperation, outcome: OperationOutcome, now: MonotonicInstant
    ) -> [ResourceAction] {
        precondition(inFlight == operation, "finished \(operation) but \(String(describing: inFlight)) was running")
        inFlight = nil
        var actions: [ResourceAction] = []
        let name = configuration.groups[operation.group].resources[operation.resource]
        switch (operation.kind, outcome) {
        case (.start, .succeeded):
            groups[operation.group].started = operation.resource + 1
            if groups[operation.group].started == groups[operation.group].definition.resources.count {
                // Running: the first check comes one interval from now.
                groups[operation.group].monitorCursor = 0
                groups[operation.group].nextMonitorAt = configuration.monitor.map { now + $0.interval }
            }
        case (.start, .failed(let detail)):
            counters.startFailures += 1
            // The failed resource may be half started: it is stopped with the rest.
            groups[operation.group].started = operation.resource + 1
            groups[operation.group].failedHere = true
            groups[operation.group].wanted = false
            actions.append(.log(.critical, "Giving up resources due to failure of \(name): \(detail)"))
            actions.append(.alert(.resourceFailure, "start of \(name) failed: \(detail)"))
            actions.append(.log(.info, "Releasing resource group: \(describe(operation.group))"))
            notices.append(.announce)
        case (.stop, .succeeded):
            groups[operation.group].started = operation.resource
            groups[operation.group].stopAttempts = 0
        case (.monitor, .succeeded):
            let group = operation.group
            if operation.resource + 1 < groups[group].definition.resources.count {
                groups[group].monitorCursor = operation.resource + 1
            } else {
                groups[group].monitorCursor = 0
                groups[group].nextMonitorAt = configuration.monitor.map { now + $0.interval }
            }
        case (.monitor, .failed(let detail)):
            monitorFailed(operation, detail: detail, now: now, into: &actions)
        case (.stop, .failed(let detail)):
            counters.stopFailures += 1
            groups[operation.group].stopAttempts += 1
            let attempts = groups[operation.group].stopAttempts
            if attempts <= configuration.stopRetries {
                actions.append(.log(.error, "stop of \(name) failed (\(detail)); retry \(attempts) of \(configuration.stopRetries) in \(configuration.stopRetryInterval)"))
                stopRetryAt = now + configuration.stopRetryInterval
            } else {
                groups[operation.group].stopFailed = true
                actions.append(.log(.critical, "Resource STOP failure. Reboot required! \(name) did not stop after \(attempts) attempts: \(detail)"))
                actions.append(.lastResort(configuration.stopFailureAction, reason: "\(name) cannot be stopped"))
                if configuration.stopFailureAction != .none {
                    phase = .halted
                    return actions
                }
            }
        }
        reconcile(now: now, into: &actions)
        return actions
    }

    public mutating func tick(now: MonotonicInstant) -> [ResourceAction] {
        var actions: [ResourceAction] = []
        if phase == .waitingForPeer, peer.isAlive, let sent = startingSentAt, now - sent >= startingResendInterval {
            // Still no answer from a peer we hear: ask again (messages sent before the peer first heard this
            // incarnation are never retransmitted).
            startingSentAt = now
            actions.append(.send(.starting))
        }
        if let due = stopRetryAt, now >= due { stopRetryAt = nil }
        expireMonitorFailures(now: now, into: &actions)
        if case .offering(_, let since)? = exchange, now - since >= configuration.exchangeTimeout {
            actions.append(.log(.warning, "standby: \(configuration.peerNode ?? "the peer") did not answer within \(configuration.exchangeTimeout); nothing moved"))
            exchange = nil
        }
        reconcile(now: now, into: &actions)
        return actions
    }

    /// `hb_standby`: give the selected groups to the peer.
    public mutating func requestStandby(_ selection: ResourceSelection, now: MonotonicInstant) -> AdminOutcome {
        if let refusal = exchangeRefusal() { return AdminOutcome(accepted: false, message: refusal, actions: []) }
        let chosen = select(selection)
        guard !chosen.isEmpty else {
            return AdminOutcome(accepted: false, message: "this node holds no \(selection.rawValue) resource group", actions: [])
        }
        var actions: [ResourceAction] = []
        offer(chosen, now: now, into: &actions)
        return AdminOutcome(
            accepted: true, message: "offered \(chosen.map { groups[$0].definition.key }.joined(separator: ", ")) to \(configuration.peerNode!)",
            actions: actions)
    }

    /// `hb_takeover`: ask the peer to give us the selected groups (named from our side).
    public mutating func requestTakeover(_ selection: ResourceSelection, now: MonotonicInstant) -> AdminOutcome {
        if let refusal = exchangeRefusal() { return AdminOutcome(accepted: false, message: refusal, actions: []) }
        let wanted = groups.indices.filter { selectionContains(selection, $0) && peer.held.contains($0) }
        guard !wanted.isEmpty else {
            return AdminOutcome(accepted: false, message: "\(configuration.peerNode!) holds no \(selection.rawValue) resource group", actions: [])
        }
        for index in wanted { groups[index].failedHere = false }
        return AdminOutcome(
            accepted: true, message: "asked \(configuration.peerNode!) to hand over \(selection.rawValue) resource groups",
            actions: [.send(.takeover(selection))])
    }

    /// SIGTERM: release everything (last group first, each right to left), then send `shutdone` and finish.
    public mutating func shutdown(now: MonotonicInstant) -> [ResourceAction] {
        var actions: [ResourceAction] = []
        switch phase {
        case .notStarted, .halted:
            phase = .halted
            return [.shutdownComplete]
        case .shuttingDown:
            return []
        case .waitingForPeer, .running:
            phase = .shuttingDown
        }
        exchange = nil
        actions.append(.log(.info, "Heartbeat shutdown in progress. Giving up all HA resources."))
        release(groups.indices.filter { groups[$0].isHeld }, reason: "shutdown", into: &actions)
        notices = [.shutdownDone]
        reconcile(now: now, into: &actions)
        return actions
    }

    // MARK: Queries

    /// When `tick` must next run, if any timer is pending.
    public var nextDeadline: MonotonicInstant? {
        var deadline = stopRetryAt
        if phase == .waitingForPeer, peer.isAlive, let sent = startingSentAt {
            let due = sent + startingResendInterval
            deadline = deadline.map { min($0, due) } ?? due
        }
        if case .offering(_, let since)? = exchange {
            let due = since + configuration.exchangeTimeout
            deadline = deadline.map { min($0, due) } ?? due
        }
        return deadline
    }

    public var groupReports: [GroupReport] {
        groups.indices.map { index in
            let group = groups[index]
            return GroupReport(
                key: group.definition.key, preferredNode: group.definition.preferredNode,
                resources: group.definition.resources, state: state(of: index), resourcesStarted: group.started,
                heldByPeer: peer.held.contains(index), failedHere: group.failedHere,
                recentMonitorFailures: group.failureTimes.count, lastMonitorFailure: group.lastFailure)
        }
    }

    /// Heartbeat's `cl_status rscstatus`: what this node holds (none, local, foreign, all), or `transition`.
    public var heldSummary: String { isSettled && exchange == nil ? heldSelection.rawValue : "transition" }

    public var exchangeDescription: String? { exchange?.description }

    /// Whether any group is wanted or (possibly) partly started here: the node a STONITH race should favour.
    public var holdsAnyGroup: Bool { groups.contains(where: \.isHeld) }


    // MARK: Internals

    /// Nothing to start or stop. A check in flight does not count: it changes nothing, and with short intervals a
    /// node is often checking something.
    private var isSettled: Bool {
        (inFlight == nil || inFlight?.kind == .monitor) && stopRetryAt == nil && !groups.contains(where: \.needsWork)
    }

    private var heldSelection: HeldSelection {
        let held = groups.indices.filter { groups[$0].isHeld }
        let local = held.contains { configuration.isLocal(groups[$0].definition) }
        let foreign = held.contains { !configuration.isLocal(groups[$0].definition) }
        switch (local, foreign) {
        case (true, true): return .all
        case (true, false): return .local
        case (false, true): return .foreign
        case (false, false): return .none
        }
    }

    private var holdingsMessage: ResourceMessage.Holdings {
        let held = groups.filter(\.isHeld)
        return ResourceMessage.Holdings(
            selection: heldSelection, groupKeys: held.map(\.definition.key), acquisitionEpochs: held.map(\.acquiredEpoch),
            failedGroupKeys: groups.filter(\.failedHere).map(\.definition.key))
    }

    private func state(of index: Int) -> GroupReport.State {
        let group = groups[index]
        if group.stopFailed { return .stopFailed }
        // A check in flight does not change what the group is doing.
        if (inFlight?.group == index && inFlight?.kind != .monitor) || (stopRetryAt != nil && !group.wanted && group.started > 0) {
            return group.wanted ? .starting : .stopping
        }
        if group.wanted && group.started == group.definition.resources.count { return .running }
        if group.wanted { return .starting }
        if group.started > 0 { return .stopping }
        return group.failedHere ? .failed : .stopped
    }

    private func selectionContains(_ selection: ResourceSelection, _ index: Int) -> Bool {
        let local = configuration.isLocal(groups[index].definition)
        switch selection {
        case .all: return true
        case .local: return local
        case .foreign, .failback: return !local
        }
    }

    /// The held groups in `selection`.
    private func select(_ selection: ResourceSelection) -> [Int] {
        groups.indices.filter { groups[$0].isHeld && selectionContains(selection, $0) }
    }

    /// The groups a holdings message from the peer names, as indices.
    private func resolve(_ holdings: ResourceMessage.Holdings) -> Set<Int> {
        if let keys = holdings.groupKeys {
            return Set(groups.indices.filter { keys.contains(groups[$0].definition.key) })
        }
        // From a Heartbeat node: rsc_hold is from its side, so its "local" groups are our foreign ones.
        let selection = holdings.selection.swapped
        return Set(groups.indices.filter { index in
            let local = configuration.isLocal(groups[index].definition)
            switch selection {
            case .none: return false
            case .all: return true
            case .local: return local
            case .foreign: return !local
            }
        })
    }

    /// haresources must be the same on both nodes; a group key the peer names that this node does not know means
    /// they differ, and that group is managed by neither in agreement. Said once, loudly.
    private mutating func warnAboutUnknownGroups(in message: ResourceMessage, into actions: inout [ResourceAction]) {
        let keys: [String]
        switch message {
        case .holdings(let holdings, _), .conflictAnswer(let holdings, _), .answerWanted(let holdings, _),
            .standby(_, let holdings, _):
            keys = holdings.groupKeys ?? []
        default: return
        }
        let known = Set(groups.map(\.definition.key))
        let unknown = keys.filter { !known.contains($0) }
        guard !unknown.isEmpty, !warnedAboutUnknownGroups else { return }
        warnedAboutUnknownGroups = true
        actions.append(.log(.error, "\(configuration.peerNode ?? "the peer") names resource groups that are not in this node's haresources (\(unknown.joined(separator: ", "))): haresources must be identical on both nodes"))
    }

    /// Unheld groups this node should take when the stable peer does not hold them: its own (preferred here), the
    /// peer's own only when they failed on the peer (otherwise the peer takes them, and both taking one at once
    /// would run it twice), and a group whose preferred node is neither of us on the node whose name sorts first.
    private func unheldGroupsToTake() -> [Int] {
        let peerName = configuration.peerNode ?? ""
        return groups.indices.filter { index in
            let group = groups[index]
            guard !group.isHeld, !peer.held.contains(index), !group.failedHere, !releasedSincePeerSpoke.contains(index) else { return false }
            let preferred = group.definition.preferredNode.lowercased()
            if preferred == configuration.localNode.lowercased() { return true }
            if preferred == peerName.lowercased() { return peer.failed.contains(index) }
            return configuration.localNode.lowercased() < peerName.lowercased()
        }
    }

    /// Both nodes hold a group (a partition healed, a hung node woke up): the node that acquired it earlier releases
    /// it; with equal epochs (or a Heartbeat peer, which sends none) the node that is not its preferred node does.
    private mutating func settleConflicts(answering: Bool, into actions: inout [ResourceAction]) {
        let peerName = configuration.peerNode ?? ""
        let contested = groups.indices.filter { groups[$0].isHeld && peer.held.contains($0) }
        guard !contested.isEmpty else { return }
        let local = configuration.localNode.lowercased()
        func peerEpoch(_ index: Int) -> UInt64? {
            peer.epochs[index].flatMap { $0 == groups[index].acquiredEpoch ? nil : $0 }
        }
        let kept = contested.filter { index in
            if let theirs = peerEpoch(index) { return groups[index].acquiredEpoch > theirs }
            let preferred = groups[index].definition.preferredNode.lowercased()
            if preferred == local || preferred == peerName.lowercased() { return preferred == local }
            return local < peerName.lowercased()
        }
        func reason(_ index: Int) -> String {
            if let theirs = peerEpoch(index) {
                return "acquisition epochs: \(configuration.localNode) \(groups[index].acquiredEpoch), \(peerName) \(theirs); the later acquisition keeps it"
            }
            return peer.epochs[index] == nil
                ? "\(peerName) sends no acquisition epochs: the preferred node keeps it"
                : "equal acquisition epochs: the preferred node keeps it"
        }
        // Groups already being released were reported when the conflict was first seen.
        let releasing = contested.filter { !kept.contains($0) && groups[$0].wanted }
        for index in releasing {
            counters.conflicts += 1
            actions.append(.log(.critical, "both nodes run \(groups[index].definition.key) (split brain): releasing it to \(peerName) (\(reason(index)))"))
        }
        if !releasing.isEmpty {
            release(releasing, reason: "split brain resolution", into: &actions)
            notices.append(.announce)
        }
        if !kept.isEmpty && answering {
            // The peer may not know that we hold what it must release (it may not have seen a partition at all):
            // tell it. The answer is marked as one and is never answered in turn, so two nodes that each keep a
            // group cannot answer each other forever; if it is lost, the next announcement gets a new one.
            for index in kept {
                counters.conflicts += 1
                actions.append(.log(.critical, "both nodes run \(groups[index].definition.key) (split brain): keeping it here, \(peerName) releases it (\(reason(index)))"))
            }
            actions.append(.send(.conflictAnswer(holdingsMessage, stable: isSettled)))
        }
    }

    private func exchangeRefusal() -> String? {
        guard let peerName = configuration.peerNode else { return "there is no other node in ha.cf" }
        if phase != .running { return "this node is \(phase.rawValue)" }
        if !peer.isAlive { return "\(peerName) is not up" }
        if let exchange { return "a standby exchange is already under way (\(exchange.description))" }
        if !isSettled { return "this node is still starting or stopping resources" }
        if !peer.isStable { return "\(peerName) is not stable (it is acquiring or releasing resources)" }
        return nil
    }

    private mutating func offer(_ chosen: [Int], now: MonotonicInstant, into actions: inout [ResourceAction]) {
        guard !chosen.isEmpty else { return }
        if let refusal = exchangeRefusal() {
            actions.append(.log(.warning, "standby refused: \(refusal)"))
            return
        }
        exchange = .offering(chosen, since: now)
        actions.append(.log(.info, "Giving up \(chosen.map { groups[$0].definition.key }.joined(separator: ", ")): asking \(configuration.peerNode!) to take over"))
        actions.append(.send(.standby(.offer, holdings(of: chosen), reason: nil)))
    }

    private func holdings(of indices: [Int]) -> ResourceMessage.Holdings {
        let local = indices.contains { configuration.isLocal(groups[$0].definition) }
        let foreign = indices.contains { !configuration.isLocal(groups[$0].definition) }
        let selection: HeldSelection = local && foreign ? .all : local ? .local : foreign ? .foreign : .none
        return ResourceMessage.Holdings(selection: selection, groupKeys: indices.map { groups[$0].definition.key })
    }

    private mutating func receivedStandby(
        _ step: ResourceMessage.StandbyPhase, _ named: Set<Int>, reason: String?, now: MonotonicInstant,
        into actions: inout [ResourceAction]
    ) {
        let peerName = configuration.peerNode!
        let keys = named.sorted().map { groups[$0].definition.key }.joined(separator: ", ")
        switch step {
        case .offer:
            // The peer was stable when it asked; its offer proves it.
            peer.isStable = true
            if let refusal = exchangeRefusal() {
                actions.append(.log(.warning, "\(peerName) offers \(keys): refused, \(refusal)"))
                actions.append(.send(.standby(.refuse, holdings(of: named.sorted()), reason: refusal)))
                return
            }
            exchange = .accepting(named.sorted())
            actions.append(.log(.info, "\(peerName) gives up \(keys): accepting"))
            actions.append(.send(.standby(.accept, holdings(of: named.sorted()), reason: nil)))
        case .accept:
            guard case .offering(let offered, _)? = exchange else { return }
            actions.append(.log(.info, "\(peerName) accepts \(keys): releasing them"))
            release(offered, reason: "standby", into: &actions)
            notices.append(.standbyDone(offered))
            notices.append(.announce)
        case .refuse:
            guard case .offering? = exchange else { return }
            exchange = nil
            actions.append(.log(.warning, "standby: \(peerName) refused to take \(keys): \(reason ?? "no reason given")"))
        case .done:
            guard case .accepting(let accepted)? = exchange else { return }
            exchange = nil
            for index in accepted { groups[index].failedHere = false }
            acquire(accepted, reason: "standby of \(peerName)", into: &actions)
            notices.append(.announce)
            counters.standbysAccepted += 1
        }
    }

    /// Wants the groups here; returns how many were not wanted before.
    @discardableResult
    private mutating func acquire(_ indices: [Int], reason: String, into actions: inout [ResourceAction]) -> Int {
        guard hasQuorum else {
            if !indices.isEmpty { actions.append(.log(.warning, "not acquiring \(indices.count) resource group(s) (\(reason)): no quorum")) }
            return 0
        }
        var count = 0
        // One epoch for the whole batch, above everything seen: a group taken over is newer than the peer's copy.
        let epoch = highestEpochSeen + 1
        for index in indices where !groups[index].wanted && !groups[index].stopFailed {
            count += 1
            groups[index].wanted = true
            groups[index].acquiredEpoch = epoch
            actions.append(.log(.info, "Taking over resource group \(groups[index].definition.key) (\(reason))"))
            actions.append(.log(.info, "Acquiring resource group: \(describe(index))"))
        }
        if count > 0 { highestEpochSeen = epoch }
        return count
    }

    private mutating func release(_ indices: [Int], reason: String, into actions: inout [ResourceAction]) {
        for index in indices where groups[index].wanted || groups[index].started > 0 {
            groups[index].wanted = false
            releasedSincePeerSpoke.insert(index)
            actions.append(.log(.info, "Releasing resource group: \(describe(index)) (\(reason))"))
        }
    }

    private func describe(_ index: Int) -> String {
        ([groups[index].definition.preferredNode] + groups[index].definition.resources).joined(separator: " ")
    }

    /// Issues the next operation, or, when there is nothing left to do, sends what waited for that.
    private mutating func reconcile(now: MonotonicInstant, into actions: inout [ResourceAction]) {
        guard inFlight == nil, stopRetryAt == nil, phase != .halted, phase != .notStarted else { return }
        // Releases first, last group first, each right to left.
        if let index = groups.indices.reversed().first(where: { !groups[$0].wanted && groups[$0].started > 0 && !groups[$0].stopFailed }) {
            issue(ResourceOperation(group: index, resource: groups[index].started - 1, kind: .stop), into: &actions)
            return
        }
        // A restart in place: stop down to the failed resource, right to left; then it and the rest start again.
        if let index = groups.indices.reversed().first(where: { index in
            groups[index].restartFrom.map { groups[index].started > $0 } ?? false
        }) {
            issue(ResourceOperation(group: index, resource: groups[index].started - 1, kind: .stop), into: &actions)
            return
        }
        for index in groups.indices where groups[index].restartFrom != nil { groups[index].restartFrom = nil }
        if phase != .shuttingDown,
            let index = groups.indices.first(where: { groups[$0].wanted && groups[$0].started < groups[$0].definition.resources.count })
        {
            issue(ResourceOperation(group: index, resource: groups[index].started, kind: .start), into: &actions)
            return
        }
        guard phase == .running || phase == .shuttingDown else { return }
        // Settled, with a live and stable peer: the groups nobody holds that are ours to take (see
        // `unheldGroupsToTake`), whether the peer just said so or said so while we were busy.
        if phase == .running, exchange == nil, peer.isAlive, peer.isStable, hasQuorum {
            let unheld = unheldGroupsToTake()
            if !unheld.isEmpty, acquire(unheld, reason: "\(configuration.peerNode ?? "the peer") does not hold it", into: &actions) > 0 {
                notices.append(.announce)
                reconcile(now: now, into: &actions)
                return
            }
        }
        let due = notices
        notices.removeAll()
        var announced = false
        for notice in due {
            switch notice {
            case .announce:
                if !announced { actions.append(.send(.holdings(holdingsMessage, stable: true))) }
                announced = true
            case .initialAcquisitionComplete:
                actions.append(.log(.info, "Initial resource acquisition complete"))
                if !announced { actions.append(.send(.holdings(holdingsMessage, stable: true))) }
                announced = true
            case .takeoverComplete(let node):
                actions.append(.log(.info, "mach_down takeover complete for node \(node)."))
                if !announced { actions.append(.send(.holdings(holdingsMessage, stable: true))) }
                announced = true
            case .standbyDone(let released):
                exchange = nil
                actions.append(.send(.standby(.done, holdings(of: released), reason: nil)))
                actions.append(.log(.info, "standby completed: \(configuration.peerNode ?? "the peer") takes over"))
            case .shutdownDone:
                actions.append(.log(.info, "All HA resources relinquished."))
                actions.append(.send(.shutdownDone))
                actions.append(.shutdownComplete)
                phase = .halted
            }
        }
        if phase == .running, !isActive {
            isActive = true
            actions.append(.setLocalStatus(.active))
        }
        // Checks last, when nothing else is to be done: a running group whose check is due.
        if phase == .running, exchange == nil,
            let index = groups.indices.first(where: { index in
                let group = groups[index]
                return group.wanted && group.started == group.definition.resources.count && !group.stopFailed
                    && group.nextMonitorAt.map { now >= $0 } == true
            })
        {
            issue(ResourceOperation(group: index, resource: groups[index].monitorCursor, kind: .monitor), into: &actions)
        }
    }

    /// Failures older than the window are forgotten. A group that monitoring stopped here (failed here) may run
    /// here again once its last failure has expired; when no peer runs it, this node takes it again.
    private mutating func expireMonitorFailures(now: MonotonicInstant, into actions: inout [ResourceAction]) {
        guard let policy = configuration.monitor, phase == .running else { return }
        for index in groups.indices where !groups[index].failureTimes.isEmpty {
            groups[index].failureTimes.removeAll { now - $0 >= policy.failureWindow }
            guard groups[index].failureTimes.isEmpty, groups[index].failedHere, !groups[index].isHeld else { continue }
            groups[index].failedHere = false
            actions.append(.log(.info, "the monitor failures of \(groups[index].definition.key) expired: it may run here again"))
            // Nobody may be running it (both nodes failed it): take it when the peer is gone, or is settled
            // without it.
            let unheld = !peer.isAlive || (peer.isStable && !peer.held.contains(index))
            if unheld, acquire([index], reason: "its failures expired and no peer runs it", into: &actions) > 0 {
                notices.append(.announce)
            }
        }
    }

    /// A check failed: restart in place, or, at the configured count within the window, move the group to a live
    /// peer (or stop it here when there is none).
    private mutating func monitorFailed(
        _ operation: ResourceOperation, detail: String, now: MonotonicInstant, into actions: inout [ResourceAction]
    ) {
        let index = operation.group
        // A check that was in flight when the group was released (standby, takeover) says nothing any more.
        guard let policy = configuration.monitor, groups[index].wanted else { return }
        let name = configuration.groups[index].resources[operation.resource]
        counters.monitorFailures += 1
        groups[index].failureTimes = groups[index].failureTimes.filter { now - $0 < policy.failureWindow } + [now]
        groups[index].lastFailure = "\(name): \(detail)"
        groups[index].monitorCursor = 0
        groups[index].nextMonitorAt = nil
        let failures = groups[index].failureTimes.count
        actions.append(.log(.critical, "monitor of \(name) failed (\(failures) of \(policy.failuresBeforeFailover) within \(policy.failureWindow)): \(detail)"))
        actions.append(.alert(.resourceFailure, "check of \(name) failed (\(failures) of \(policy.failuresBeforeFailover)): \(detail)"))
        if failures >= policy.failuresBeforeFailover {
            // It cannot run here. With a live peer it moves there; without one it stops here all the same (as
            // Pacemaker does at migration-threshold with nowhere to go): a node whose resource keeps failing, for
            // instance one cut off from its service network, must not go on serving, or announcing the VIP, while
            // the peer it cannot hear may be serving. It starts here again when the failures expire, the peer dies
            // or an operator moves it.
            counters.monitorFailovers += 1
            groups[index].failedHere = true
            let destination = peer.isAlive ? "moving \(groups[index].definition.key) to \(configuration.peerNode ?? "the peer")"
                : "stopping \(groups[index].definition.key) here (no live peer to move it to) until the failures expire after \(policy.failureWindow)"
            actions.append(.log(.critical, "\(name) failed \(failures) times within \(policy.failureWindow): \(destination)"))
            release([index], reason: "monitor failures", into: &actions)
            notices.append(.announce)
        } else {
            counters.monitorRestarts += 1
            groups[index].restartFrom = operation.resource
            actions.append(.log(.warning, "restarting \(name) in place, with the resources after it in \(groups[index].definition.key)"))
        }
    }

    private mutating func issue(_ operation: ResourceOperation, into actions: inout [ResourceAction]) {
        inFlight = operation
        let timeout = switch operation.kind {
        case .start: configuration.startTimeout
        case .stop: configuration.stopTimeout
        case .monitor: configuration.monitor?.timeout ?? configuration.stopTimeout
        }
        actions.append(.run(operation, resource: configuration.groups[operation.group].resources[operation.resource], timeout: timeout))
    }
}

/// One start, stop or monitor (check) of one resource.
public struct ResourceOperation: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable { case start, stop, monitor }
    /// Index into the configuration's groups, and into that group's resources.
    public var group: Int
    public var resource: Int
    public var kind: Kind

    public init(group: Int, resource: Int, kind: Kind) {
        self.group = group
        self.resource = resource
        self.kind = kind
    }

    public var description: String { "\(kind.rawValue) of resource \(resource) of group \(group)" }
}

public enum OperationOutcome: Sendable, Hashable {
    case succeeded
    /// Failed, timed out or could not run; the detail says which.
    case failed(String)
}

public enum ResourceAction: Sendable, Equatable {
    case send(ResourceMessage)
    /// Run one agent action; call `operationFinished` with the outcome. `timeout` is the operation's bound.
    case run(ResourceOperation, resource: String, timeout: Duration)
    case setLocalStatus(NodeStatus)
    case log(LogLevel, String)
    /// A resource cannot be stopped: carry out the configured last resort.
    case lastResort(StopFailureAction, reason: String)
    /// Shutdown finished: every group is released and `shutdone` was sent.
    case shutdownComplete
    /// Something an operator should hear of (ha.cf's `alert` scripts).
    case alert(ClusterAlertKind, String)
}

/// The events ha.cf's `alert` scripts are run for (`TANDEM_ALERT_KIND`).
public enum ClusterAlertKind: String, Sendable, Hashable, CaseIterable {
    /// The peer was declared dead (deadtime without a message, or its shutdown).
    case nodeDead = "node-dead"
    /// One heartbeat link to the peer went dead.
    case linkDown = "link-down"
    /// This node takes over the peer's resource groups.
    case takeover
    /// The peer was fenced (STONITH).
    case fenced
    /// A fence attempt failed; it is retried.
    case fenceFailed = "fence-failed"
    /// A resource failed: its start, or a check of a running one.
    case resourceFailure = "resource-failure"
    /// This node gives its resource groups up because its peer reaches more ping nodes.
    case ipfail
    /// This node lost quorum (a witness is configured): it stops every resource group.
    case quorumLost = "quorum-lost"
}

/// The answer to an operator's standby or takeover.
public struct AdminOutcome: Sendable, Equatable {
    public var accepted: Bool
    public var message: String
    public var actions: [ResourceAction]
}

public struct GroupReport: Sendable, Hashable {
    public enum State: String, Sendable, Hashable {
        case stopped, starting, running, stopping, failed
        case stopFailed = "stop-failed"
    }

    public var key: String
    public var preferredNode: String
    public var resources: [String]
    public var state: State
    public var resourcesStarted: Int
    public var heldByPeer: Bool
    public var failedHere: Bool
    /// Monitoring: failed checks within the failure window, and what the last one said.
    public var recentMonitorFailures: Int
    public var lastMonitorFailure: String?
}

public struct ResourceCounters: Sendable, Hashable, Codable {
    public var takeovers: UInt64 = 0
    public var standbysAccepted: UInt64 = 0
    public var startFailures: UInt64 = 0
    public var stopFailures: UInt64 = 0
    public var conflicts: UInt64 = 0
    public var monitorFailures: UInt64 = 0
    public var monitorRestarts: UInt64 = 0
    public var monitorFailovers: UInt64 = 0

    public init() {}
}

struct GroupState: Sendable {
    var definition: GroupDefinition
    /// This node should run the group.
    var wanted = false
    /// Resources 0..<started are started or may be (a failed start counts, so that it is stopped).
    var started = 0
    /// A start failed here; the group is left to the peer.
    var failedHere = false
    /// The last resort ran for this group's stop.
    var stopFailed = false
    var stopAttempts = 0
    /// Monitoring: when the next pass is due (nil: not running, or not monitored), which resource it checks next,
    /// the recent failures (within the window), the last one, and a restart in place under way (stop down to here).
    var nextMonitorAt: MonotonicInstant?
    var monitorCursor = 0
    var failureTimes: [MonotonicInstant] = []
    var lastFailure: String?
    var restartFrom: Int?
    /// The acquisition epoch at which this node last acquired the group.
    var acquiredEpoch: UInt64 = 0

    init(definition: GroupDefinition) { self.definition = definition }

    /// Held: running, starting, or still to be stopped.
    var isHeld: Bool { wanted || started > 0 }

    var needsWork: Bool {
        if stopFailed { return false }
        return wanted ? started < definition.resources.count : started > 0
    }
}

struct PeerView: Sendable {
    var isAlive = false
    var isStable = false
    var held: Set<Int> = []
    /// The acquisition epoch of each group the peer holds, when it sent them.
    var epochs: [Int: UInt64] = [:]
    /// The groups that failed on the peer (its `failed` field).
    var failed: Set<Int> = []
}

enum Exchange: Sendable, CustomStringConvertible {
    case offering([Int], since: MonotonicInstant)
    case accepting([Int])

    var description: String {
        switch self {
        case .offering(let groups, _): "offering \(groups.count) group(s)"
        case .accepting(let groups): "accepting \(groups.count) group(s)"
        }
    }
}

enum Notice: Sendable, Equatable {
    case announce
    case initialAcquisitionComplete
    case takeoverComplete(String)
    case standbyDone([Int])
    case shutdownDone
}
