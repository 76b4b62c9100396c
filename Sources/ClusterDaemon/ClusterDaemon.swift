#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import FencingCore
import Foundation
import MembershipCore
import ResourceCore
import Synchronization
import TandemConfig
import TandemDrivers

/// `tandem heartbeatd`'s engine: one dedicated thread owns the production `ClusterNode` and everything reaches it
/// through a mailbox (datagrams from the links' threads, finished operations from the agents' threads, control
/// requests). The thread sleeps until the next message or the machines' next deadline.
public final class ClusterDaemon: Sendable {
    let plan: ClusterPlan
    let generation: UInt64
    private let mailbox = ClusterMailbox()
    private let links: [HeartbeatLink]
    private let pingProber: PingProber?
    private let witnessLink: HeartbeatLink?
    private let log: ClusterLog
    private let agents: ResourceAgents
    private let thread: Mutex<DaemonThread?> = Mutex(nil)
    /// The acquisition epoch the node starts from, and where it is kept when it grows.
    private let epoch: (initial: UInt64, file: StateNumberFile)

    init(
        plan: ClusterPlan, generation: UInt64, epoch: (initial: UInt64, file: StateNumberFile), links: [HeartbeatLink],
        pingProber: PingProber?, witnessLink: HeartbeatLink?, log: ClusterLog, agents: ResourceAgents
    ) {
        self.pingProber = pingProber
        self.witnessLink = witnessLink
        self.plan = plan
        self.generation = generation
        self.epoch = epoch
        self.links = links
        self.log = log
        self.agents = agents
    }

    /// Starts the cluster thread and the links' receivers.
    func start() {
        let environment = DaemonClusterEnvironment(
            links: links, witnessLink: witnessLink, mailbox: mailbox, agents: agents, log: log, groups: plan.groups,
            fenceDevices: plan.fenceDevices,
            outdater: LocalOutdater(runDirectory: agents.runDirectory, log: log),
            alerts: AlertRunner(scripts: plan.haConfig.alertScripts.map(\.value), node: plan.localNode, log: log))
        let membership = plan.membershipConfiguration(generation: generation, randomSeed: UInt64.random(in: .min ... .max))
        let resources = plan.resourceConfiguration(initialEpoch: epoch.initial)
        let stonith = plan.stonithPolicy()
        let pingNodes = plan.pingNodeTracker()
        let witness = plan.witnessClient(randomSeed: UInt64.random(in: .min ... .max))
        let epochFile = epoch.file
        let keys = plan.authkeys
        let mailbox = self.mailbox
        let authkeysPath = plan.authkeysPath
        let haConfig = plan.haConfig
        let log = self.log
        for (index, link) in links.enumerated() {
            link.startReceiving { datagram in mailbox.post(.datagram(datagram, link: index)) }
        }
        witnessLink?.startReceiving { datagram in mailbox.post(.witnessDatagram(datagram)) }
        // Heartbeat pings its ping nodes every keepalive.
        pingProber?.start(interval: plan.haConfig.keepalive) { address in mailbox.post(.pingReply(address)) }
        let handle = DaemonThread.start(name: "heartbeatd") {
            var node = ClusterNode(
                membership: membership, resources: resources, authenticator: MessageAuthenticator(keys: keys),
                environment: environment, stonith: stonith, pingNodes: pingNodes, witness: witness)
            var keysWatcher = AuthkeysWatcher(path: authkeysPath)
            var persistedEpoch = resources.initialEpoch
            node.start(now: DaemonClock.now)
            var stall = StallGuard(haConfig: haConfig)
            while !environment.isFinished {
                var deadline = min(node.nextDeadline ?? DaemonClock.now + .seconds(1), DaemonClock.now + .seconds(1))
                if let held = stall.ticksHeldUntil { deadline = max(deadline, held) }
                let taken = mailbox.take(until: deadline)
                if let stalled = stall.awoke(at: DaemonClock.now) {
                    log.warning("heartbeatd did not run for \(stalled.wholeNanoseconds / 1_000_000) ms (was this node frozen or starved?): reading what arrived meanwhile before judging any peer dead")
                }
                for message in taken {
                    let now = DaemonClock.now
                    switch message {
                    case .datagram(let bytes, let link):
                        if !environment.isSilenced { node.datagramReceived(bytes, link: link, now: now) }
                    case .operationFinished(let operation, let outcome):
                        environment.operationEnded(operation)
                        node.operationFinished(operation, outcome: outcome, now: now)
                    case .pingReply(let address):
                        node.pingReplyReceived(from: address, now: now)
                    case .witnessDatagram(let bytes):
                        if !environment.isSilenced { node.witnessDatagramReceived(bytes, now: now) }
                    case .fenceFinished(let outcome):
                        environment.fenceEnded()
                        node.fenceAgentFinished(outcome, now: now)
                    case .localOutdateFinished(let requestID, let code, let detail):
                        environment.localOutdateEnded(requestID)
                        node.localOutdateFinished(requestID: requestID, code, detail: detail, now: now)
                    case .admin(let request, let reply):
                        if let response = Self.answer(request, reply: reply, node: &node, environment: environment, now: now) {
                            reply(response)
                        }
                    case .shutdown:
                        node.shutdown(now: now)
                    }
                }
                if let keys = keysWatcher.changedKeys(log: log) { node.replaceKeys(MessageAuthenticator(keys: keys)) }
                if stall.mayTick(at: DaemonClock.now) { node.tick(now: DaemonClock.now) }
                // A small synced write on this thread, only when the epoch grew (an acquisition, or a peer's).
                if node.resources.highestEpochSeen != persistedEpoch {
                    do throws(DaemonStartError) {
                        try epochFile.write(node.resources.highestEpochSeen)
                        persistedEpoch = node.resources.highestEpochSeen
                    } catch {
                        log.error("\(error.message): after a restart this node may acquire groups under an older epoch")
                        persistedEpoch = node.resources.highestEpochSeen
                    }
                }
            }
            environment.finish()
        }
        thread.withLock { $0 = handle }
    }

    /// SIGTERM: release every group, send shutdone, then return. The links close last, so that shutdone goes out.
    func shutdown() async {
        mailbox.post(.shutdown)
        let handle = thread.withLock { $0 }
        await DaemonThread.run(name: "hb-join") { handle?.join() }
        for link in links { link.close() }
        witnessLink?.close()
        pingProber?.close()
        mailbox.close()
    }

    public func handle(_ request: ClusterControlRequest) async -> ClusterControlResponse {
        await withCheckedContinuation { continuation in
            let posted = mailbox.post(.admin(request, reply: { continuation.resume(returning: $0) }))
            if !posted { continuation.resume(returning: ClusterControlResponse(.failed, "heartbeatd is stopping")) }
        }
    }

    /// The answer to a control request, or nil when it comes later through `reply` (fence-peer).
    private static func answer(
        _ request: ClusterControlRequest, reply: @escaping @Sendable (ClusterControlResponse) -> Void,
        node: inout ClusterNode<DaemonClusterEnvironment>, environment: DaemonClusterEnvironment, now: MonotonicInstant
    ) -> ClusterControlResponse? {
        switch request.verb {
        case .fencePeer:
            guard let resource = request.resource else { return ClusterControlResponse(.badRequest, "fence-peer needs a resource") }
            switch node.requestPeerOutdate(resource: resource, now: now) {
            case .answered(let code, let detail):
                return ClusterControlResponse(.ok, detail, exitCode: code.rawValue)
            case .sent(let requestID, _):
                environment.awaitPeerOutdate(requestID, reply: reply)
                return nil
            }
        case .ping:
            return ClusterControlResponse(.ok, "heartbeatd of \(node.membership.configuration.localNode) (pid \(getpid()))")
        case .status:
            return ClusterControlResponse(.ok, status: report(node, environment: environment))
        case .standby, .takeover:
            guard let selection = ResourceSelection(rawValue: request.selection ?? "all") else {
                return ClusterControlResponse(.badRequest, "'\(request.selection ?? "")' is not all, local, foreign or failback")
            }
            if environment.isSilenced {
                return ClusterControlResponse(.refused, "this node stopped its heartbeats after a failed stop; restart heartbeatd")
            }
            let outcome = request.verb == .standby
                ? node.requestStandby(selection, now: now) : node.requestTakeover(selection, now: now)
            return ClusterControlResponse(outcome.accepted ? .ok : .refused, outcome.message)
        }
    }

    static func quorumSummary(_ node: ClusterNode<DaemonClusterEnvironment>) -> String? {
        guard let witness = node.witness else { return nil }
        let quorum = node.hasQuorum ? "yes" : "NO: this node runs nothing"
        let grant = witness.holdsGrant(now: DaemonClock.now) ? ", holding the witness's grant" : ""
        let answer: String = witness.lastAnswer?.reason ?? "no answer yet"
        return "\(quorum)\(grant); witness: \(answer)"
    }

    static func report(_ node: ClusterNode<DaemonClusterEnvironment>, environment: DaemonClusterEnvironment) -> ClusterStatusReport {
        var counters: [String: UInt64] = [:]
        let sources = [
            Mirror(reflecting: node.membership.counters), Mirror(reflecting: node.wireCounters),
            Mirror(reflecting: node.resources.counters), Mirror(reflecting: node.fencing?.counters ?? FencingCounters()),
        ]
        for source in sources {
            for child in source.children { if let name = child.label, let value = child.value as? UInt64 { counters[name] = value } }
        }
        return ClusterStatusReport(
            node: node.membership.configuration.localNode,
            status: environment.isSilenced ? "halted" : node.membership.localStatus.rawValue,
            resourcesHeld: node.resources.heldSummary, phase: node.resources.phase.rawValue,
            exchange: node.resources.exchangeDescription, fencing: node.fencing?.summary(now: DaemonClock.now),
            pingNodes: node.pingNodes.map { tracker in
                "\(tracker.reachableCount) of \(tracker.targets.count) reachable ("
                    + tracker.targets.map { "\($0.name) \($0.isUp ? "up" : "dead")" }.joined(separator: ", ") + ")"
                    + (node.resources.configuration.peerNode.flatMap { peer in
                        node.membership.pingReachability(of: peer).map { "; \(peer) reaches \($0)" } } ?? "")
            },
            quorum: quorumSummary(node),
            generation: node.membership.configuration.generation,
            peers: node.membership.peerReports.map { peer in
                ClusterStatusReport.Peer(
                    name: peer.name, status: peer.status.rawValue,
                    links: peer.links.map { ClusterStatusReport.Link(name: $0.name, status: $0.status.rawValue) })
            },
            groups: node.resources.groupReports.map { group in
                ClusterStatusReport.Group(
                    key: group.key, preferredNode: group.preferredNode, resources: group.resources,
                    state: group.state.rawValue, resourcesStarted: group.resourcesStarted, heldByPeer: group.heldByPeer,
                    failedHere: group.failedHere, recentMonitorFailures: group.recentMonitorFailures,
                    lastMonitorFailure: group.lastMonitorFailure)
            },
            counters: counters)
    }
}

/// The environment the production driver runs over in the daemon. Used only on the cluster thread, except for the
/// agents' threads, which post their outcomes to the mailbox.
final class DaemonClusterEnvironment: ClusterEnvironment, @unchecked Sendable {
    // @unchecked: the mutable fields are only touched on the cluster thread.
    let links: [HeartbeatLink]
    let witnessLink: HeartbeatLink?
    let mailbox: ClusterMailbox
    let agents: ResourceAgents
    let log: ClusterLog
    let groups: [ResourceGroup]
    let fenceDevices: [ClusterPlan.FenceDevice]
    let alerts: AlertRunner
    private(set) var isFinished = false
    /// Set by the stop-heartbeats last resort: nothing more is sent or acted on.
    private(set) var isSilenced = false
    private var operationThreads: [ResourceOperation: DaemonThread] = [:]
    private var fenceThread: DaemonThread?
    private let outdater: LocalOutdater
    /// The peer's outdate requests being carried out here, by request ID.
    private var outdateThreads: [UInt64: DaemonThread] = [:]
    /// `tandem fence-peer` clients waiting for the peer's answer, by request ID.
    private var fencePeerReplies: [UInt64: @Sendable (ClusterControlResponse) -> Void] = [:]

    init(
        links: [HeartbeatLink], witnessLink: HeartbeatLink?, mailbox: ClusterMailbox, agents: ResourceAgents, log: ClusterLog,
        groups: [ResourceGroup], fenceDevices: [ClusterPlan.FenceDevice], outdater: LocalOutdater, alerts: AlertRunner
    ) {
        self.witnessLink = witnessLink
        self.outdater = outdater
        self.alerts = alerts
        self.links = links
        self.mailbox = mailbox
        self.agents = agents
        self.log = log
        self.groups = groups
        self.fenceDevices = fenceDevices
    }

    func transmitToWitness(_ datagram: [UInt8]) {
        guard !isSilenced, let witnessLink else { return }
        if let error = witnessLink.send(datagram) {
            log.log(.debug, "sending to the witness failed: \(String(cString: strerror(error)))")
        }
    }

    func transmit(_ datagram: [UInt8]) {
        guard !isSilenced else { return }
        for link in links {
            if let error = link.send(datagram) {
                log.log(.debug, "sending on \(link.name) failed: \(String(cString: strerror(error)))")
            }
        }
    }

    func runOperation(_ operation: ResourceOperation, resource: String, timeout: Duration) {
        let spec = groups[operation.group].resources[operation.resource]
        let agents = self.agents
        let mailbox = self.mailbox
        operationThreads[operation] = DaemonThread.start(name: "hb-\(operation.kind.rawValue)") {
            let outcome = agents.run(operation.kind, spec, timeout: timeout)
            mailbox.post(.operationFinished(operation, outcome))
        }
    }

    func operationEnded(_ operation: ResourceOperation) {
        operationThreads.removeValue(forKey: operation)?.join()
    }

    func runFenceAgent(target: String, action: FenceAction, timeout: Duration) {
        precondition(fenceThread == nil, "a fence agent is already running against \(target)")
        let devices = fenceDevices
        let mailbox = self.mailbox
        let log = self.log
        fenceThread = DaemonThread.start(name: "hb-stonith") {
            mailbox.post(.fenceFinished(FenceAgentRunner.fence(target, action: action, devices: devices, timeout: timeout, log: log)))
        }
    }

    func outdateLocalResource(_ resource: String, requestID: UInt64) {
        let outdater = self.outdater
        let mailbox = self.mailbox
        outdateThreads[requestID] = DaemonThread.start(name: "hb-outdate") {
            let (code, detail) = outdater.outdate(resource)
            mailbox.post(.localOutdateFinished(requestID: requestID, code, detail: detail))
        }
    }

    func localOutdateEnded(_ requestID: UInt64) {
        outdateThreads.removeValue(forKey: requestID)?.join()
    }

    func awaitPeerOutdate(_ requestID: UInt64, reply: @escaping @Sendable (ClusterControlResponse) -> Void) {
        fencePeerReplies[requestID] = reply
    }

    func answerPeerOutdate(requestID: UInt64, _ code: FencePeerExitCode, detail: String) {
        fencePeerReplies.removeValue(forKey: requestID)?(ClusterControlResponse(.ok, detail, exitCode: code.rawValue))
    }

    func fenceEnded() {
        fenceThread?.join()
        fenceThread = nil
    }

    func log(_ level: LogLevel, _ message: String) { log.log(level, message) }

    func alert(_ kind: ClusterAlertKind, _ detail: String) { alerts.post(kind, detail) }

    func reannounceAddresses(groups indices: [Int]) {
        let log = self.log
        for index in indices {
            for case .ipAddress(let address) in groups[index].resources.map(\.kind) {
                DaemonThread.detach(name: "reannounce") {
                    IPAddressAgent(address: address, log: log).reannounce(deadline: DaemonClock.now + .seconds(5))
                }
            }
        }
    }

    func lastResort(_ action: StopFailureAction, reason: String) {
        switch action {
        case .stopHeartbeats:
            log.log(.critical, "\(reason): stopping heartbeats so that the peer takes over (stop_failure_action stop-heartbeats); this node keeps what it could not stop until an operator intervenes")
            isSilenced = true
        case .reboot:
            log.log(.critical, "\(reason): rebooting now (stop_failure_action reboot)")
            sync()
            _ = ChildProcess.run(["/sbin/reboot", "-f"], environment: ["PATH": ChildProcess.searchPath], timeout: .seconds(10))
        case .none:
            log.log(.critical, "\(reason): left as it is (stop_failure_action none); the group is marked stop-failed")
        }
    }

    func shutdownComplete() { isFinished = true }

    /// Joins what is left once the loop ends.
    func finish() {
        for thread in operationThreads.values { thread.join() }
        operationThreads.removeAll()
        for thread in outdateThreads.values { thread.join() }
        outdateThreads.removeAll()
        for reply in fencePeerReplies.values { reply(ClusterControlResponse(.failed, "heartbeatd stopped before the peer answered")) }
        fencePeerReplies.removeAll()
        fenceEnded()
        alerts.close()
    }

    var wallClockSeconds: UInt64 { UInt64(time(nil)) }

    var loadAverage: String? {
        guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return nil }
        return text.split(separator: " ").prefix(3).joined(separator: " ")
    }
}

/// The cluster thread's inbox. Producers never block. Datagrams beyond `datagramsMaximum` waiting are dropped (a
/// flood must not grow memory; heartbeats are repeated anyway), and control requests beyond
/// `requestsMaximum` are refused.
final class ClusterMailbox: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with `lock` held.
    enum Message: Sendable {
        case datagram([UInt8], link: Int)
        case operationFinished(ResourceOperation, OperationOutcome)
        case fenceFinished(FenceOutcome)
        case localOutdateFinished(requestID: UInt64, FencePeerExitCode, detail: String)
        case pingReply(IPv4Address)
        case witnessDatagram([UInt8])
        case admin(ClusterControlRequest, reply: @Sendable (ClusterControlResponse) -> Void)
        case shutdown
    }

    static let datagramsMaximum = 1024
    static let requestsMaximum = 64

    private let lock = PthreadLock()
    private var messages: [Message] = []
    private var datagrams = 0
    private var requests = 0
    private var isClosed = false

    /// Adds a message; false when it was dropped (closed, or over a limit).
    @discardableResult
    func post(_ message: Message) -> Bool {
        lock.withLock {
            guard !isClosed else { return false }
            switch message {
            case .datagram, .pingReply, .witnessDatagram:
                guard datagrams < Self.datagramsMaximum else { return false }
                datagrams += 1
            case .admin:
                guard requests < Self.requestsMaximum else { return false }
                requests += 1
            default:
                break
            }
            messages.append(message)
            lock.broadcast()
            return true
        }
    }

    /// Everything waiting, or nothing once `deadline` passes.
    func take(until deadline: MonotonicInstant) -> [Message] {
        lock.withLock {
            while messages.isEmpty && DaemonClock.now < deadline { lock.wait(until: deadline) }
            let taken = messages
            messages.removeAll()
            datagrams = 0
            requests = 0
            return taken
        }
    }

    /// Refuses everything from now on, and answers the control requests still waiting.
    func close() {
        let stranded = lock.withLock {
            isClosed = true
            defer { messages.removeAll() }
            return messages
        }
        for case .admin(_, let reply) in stranded { reply(ClusterControlResponse(.failed, "heartbeatd stopped")) }
    }
}

/// authkeys is re-read when it changes, as Heartbeat does: its modification or change time (a `chmod 600` after the
/// write changes only the latter, and a file read before it was refused for its mode). A changed file that does
/// not parse is reported and the keys in force stay.
struct AuthkeysWatcher {
    let path: String
    private var stamp: [Int]?

    init(path: String) {
        self.path = path
        self.stamp = Self.stamp(path)
    }

    mutating func changedKeys(log: ClusterLog) -> Authkeys? {
        let now = Self.stamp(path)
        guard now != stamp else { return nil }
        stamp = now
        do {
            let parsed = try AuthkeysParser.load(path: path)
            log.info("\(path) changed: signing with key \(parsed.model.activeIndex.value) from now on")
            return parsed.model
        } catch {
            log.error("\(path) changed but cannot be used, keeping the keys in force: \(error.description)")
            return nil
        }
    }

    private static func stamp(_ path: String) -> [Int]? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return [status.st_mtim.tv_sec, status.st_mtim.tv_nsec, status.st_ctim.tv_sec, status.st_ctim.tv_nsec, Int(status.st_ino)]
    }
}

/// Notices that the daemon's own thread did not run for a while (the node was frozen, SIGSTOPped, or starved of
/// CPU) and holds the next tick back for a moment, so that the heartbeats that arrived meanwhile are read before
/// the peers' silence is judged. Without it a node thawed after a freeze declared its live peer dead (its messages
/// were still in the socket buffer), took the group over again, and announced the address to clients before it
/// heard the peer: their commits then went to the side of the split brain that is discarded.
///
/// The loop wakes at least every keepalive (the next status message is due), so a gap of half a deadtime (and of
/// two keepalives) is a stall.
struct StallGuard {
    private let stallThreshold: Duration
    private let grace: Duration
    private var lastAwake: MonotonicInstant?
    /// The end of the grace after a stall, while it lasts.
    private(set) var ticksHeldUntil: MonotonicInstant?

    init(haConfig: HaConfig) {
        stallThreshold = max(haConfig.deadtime / 2, haConfig.keepalive * 2, .milliseconds(200))
        grace = min(max(haConfig.keepalive, .milliseconds(100)), .seconds(1))
    }

    /// The loop woke at `now`; returns how long it did not run when that was a stall.
    mutating func awoke(at now: MonotonicInstant) -> Duration? {
        defer { lastAwake = now }
        guard let lastAwake, now - lastAwake > stallThreshold else { return nil }
        ticksHeldUntil = now + grace
        return now - lastAwake
    }

    /// Whether the machines may be ticked now: not during the grace after a stall.
    mutating func mayTick(at now: MonotonicInstant) -> Bool {
        guard let until = ticksHeldUntil else { return true }
        if now < until { return false }
        ticksHeldUntil = nil
        return true
    }
}
