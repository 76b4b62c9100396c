import CoreSupport
import FencingCore
import MembershipCore
import ResourceCore
import TandemConfig
import TandemDrivers

/// A deterministic two-node cluster in memory: production `ClusterNode` drivers over links that can be cut, lose
/// or duplicate datagrams, and agents whose operations finish after a fixed delay (or fail on demand). Time only
/// moves when the harness moves it.
final class ClusterHarness {
    final class Environment: ClusterEnvironment {
        let name: String
        unowned let harness: ClusterHarness
        var logLines: [String] = []
        var isShutDown = false
        var lastResorts: [StopFailureAction] = []

        init(name: String, harness: ClusterHarness) {
            self.name = name
            self.harness = harness
        }

        func transmit(_ datagram: [UInt8]) { harness.transmit(from: name, datagram) }
        func transmitToWitness(_ datagram: [UInt8]) { harness.askWitness(from: name, datagram) }
        func runOperation(_ operation: ResourceOperation, resource: String, timeout: Duration) {
            harness.schedule(operation, on: name, resource: resource)
        }
        func log(_ level: LogLevel, _ message: String) { logLines.append("\(harness.now) \(level.rawValue): \(message)") }
        func lastResort(_ action: StopFailureAction, reason: String) { lastResorts.append(action) }
        var alerts: [(ClusterAlertKind, String)] = []
        var reannouncements: [[Int]] = []
        func reannounceAddresses(groups: [Int]) { reannouncements.append(groups) }
        func alert(_ kind: ClusterAlertKind, _ detail: String) { alerts.append((kind, detail)) }
        func runFenceAgent(target: String, action: FenceAction, timeout: Duration) {
            harness.fences.append(PendingFence(due: harness.now + harness.fenceAgentDuration, fencer: name, target: target))
        }
        func shutdownComplete() { isShutDown = true }
        /// Answers to this node's `requestPeerOutdate`, in order.
        var outdateAnswers: [(requestID: UInt64, code: FencePeerExitCode, detail: String)] = []
        func outdateLocalResource(_ resource: String, requestID: UInt64) {
            harness.outdates.append(PendingOutdate(due: harness.now + harness.operationDelay, node: name, requestID: requestID))
        }
        func answerPeerOutdate(requestID: UInt64, _ code: FencePeerExitCode, detail: String) {
            outdateAnswers.append((requestID, code, detail))
        }
        var wallClockSeconds: UInt64 { 1_700_000_000 }
        var loadAverage: String? { "0.00 0.00 0.00" }
    }

    struct Pending {
        var due: MonotonicInstant
        var node: String
        var operation: ResourceOperation
        var resource: String
    }

    /// A fence agent run: at `due` the power switch turns `target` off (or fails, see `fenceDeviceFailing`).
    struct PendingFence {
        var due: MonotonicInstant
        var fencer: String
        var target: String
    }

    /// An outdate the peer asked of `node`: at `due` its replicad answers with `outdateCodes[node]`.
    struct PendingOutdate {
        var due: MonotonicInstant
        var node: String
        var requestID: UInt64
    }

    var outdates: [PendingOutdate] = []
    /// What each node's replicad answers to an outdate (`.peerOutdated` when absent).
    var outdateCodes: [String: FencePeerExitCode] = [:]

    static let linkNames = ["eth1", "eth2"]
    static let keys = Authkeys(
        activeIndex: Located(1, at: SourceLocation(file: "authkeys", line: 1, column: 1)),
        keys: [Located(AuthKey(index: 1, method: .sha1, secret: "secret"), at: SourceLocation(file: "authkeys", line: 2, column: 1))])

    var now = MonotonicInstant(nanoseconds: 1_000_000_000)
    var nodes: [String: ClusterNode<Environment>] = [:]
    var environments: [String: Environment] = [:]
    /// Links cut per link index (both directions).
    var cutLinks: Set<Int> = []
    /// Nodes whose processes are gone (crashed): they neither send nor receive.
    var crashed: Set<String> = []
    var pending: [Pending] = []
    var operationDelay: Duration = .milliseconds(300)
    /// Resources whose start or stop fails on a node: "node/resource/start".
    var failing: Set<String> = []
    /// Every start and stop that completed successfully, per node: the resources running there.
    var running: [String: [String]] = [:]
    var generations: [String: UInt64] = [:]
    var booted: Set<String> = []
    let groups: [GroupDefinition]
    let autoFailback: FailbackPolicy
    let monitor: MonitorPolicy?

    /// STONITH on both nodes (with a power switch that turns the target off), or none.
    let stonith: StonithPolicy?
    var fences: [PendingFence] = []
    var fenceAgentDuration: Duration = .milliseconds(150)
    /// The power switch does not answer: every fence fails.
    var fenceDeviceFailing = false
    /// Nodes fenced so far, in order.
    var fenced: [String] = []
    /// Nodes whose processes are all stopped (SIGSTOP, a hung machine): they neither tick nor read their sockets;
    /// what is sent to them waits, and is read when they thaw.
    var frozen: Set<String> = []
    var frozenBacklog: [(String, Int, [UInt8])] = []
    /// The ping node (ha.cf `ping`), when the harness has one, and the nodes that cannot reach it.
    let pingNode: IPv4Address?
    var pingUnreachable: Set<String> = []
    static let deadping: Duration = .seconds(1)
    /// Per-node clock rates (1.0 when absent): a node's monotonic clock runs this much faster or slower.
    var clockRates: [String: Double] = [:]
    private let start = MonotonicInstant(nanoseconds: 1_000_000_000)

    /// The witness, when the harness has one (every node's ha.cf names it), and the nodes that cannot reach it.
    var witness: WitnessArbiter?
    var witnessUnreachable: Set<String> = []
    /// Answers on their way from the witness to a node.
    var witnessAnswers: [(String, [UInt8])] = []

    init(
        groups: [GroupDefinition], autoFailback: FailbackPolicy = .on, monitor: MonitorPolicy? = nil,
        stonith: StonithPolicy? = nil, pingNode: IPv4Address? = nil, witness: Bool = false
    ) {
        self.witness = witness ? WitnessArbiter(startedAt: MonotonicInstant(nanoseconds: 1_000_000_000)) : nil
        self.pingNode = pingNode
        self.groups = groups
        self.autoFailback = autoFailback
        self.monitor = monitor
        self.stonith = stonith
    }

    /// `node`'s own clock, which may drift from the harness's.
    func clock(_ node: String) -> MonotonicInstant {
        guard let rate = clockRates[node], rate != 1 else { return now }
        let elapsed = Double((now - start).wholeNanoseconds)
        return start + .nanoseconds(Int64(elapsed * rate))
    }

    func freeze(_ node: String) { frozen.insert(node) }

    func thaw(_ node: String) {
        frozen.remove(node)
        let waiting = frozenBacklog.filter { $0.0 == node }
        frozenBacklog.removeAll { $0.0 == node }
        deliveries.append(contentsOf: waiting)
    }

    /// A resource dies on its own (its process killed): its next check fails.
    func kill(_ resource: String, on node: String) {
        running[node, default: []].removeAll { $0 == resource }
    }

    func boot(_ name: String) {
        let peer = name == "node1" ? "node2" : "node1"
        generations[name, default: 0] += 1
        let environment = Environment(name: name, harness: self)
        // One log per node across its boots, as a log file would be.
        environment.logLines = (environments[name]?.logLines ?? []) + ["\(now) BOOT generation \(generations[name]!)"]
        environments[name] = environment
        booted.insert(name)
        crashed.remove(name)
        running[name] = []
        pending.removeAll { $0.node == name }
        var node = ClusterNode(
            membership: MembershipConfiguration(
                localNode: name, peers: [peer], links: Self.linkNames, keepalive: .milliseconds(200),
                warntime: .milliseconds(500), deadtime: .seconds(1), initdead: .seconds(2),
                maxRetransmitDelay: .milliseconds(250), generation: generations[name]!, randomSeed: 7),
            resources: ResourceManagerConfiguration(
                localNode: name, peerNode: peer, groups: groups, autoFailback: autoFailback,
                startTimeout: .seconds(5), stopTimeout: .seconds(5), stopRetries: 2,
                stopRetryInterval: .milliseconds(100), stopFailureAction: .stopHeartbeats, exchangeTimeout: .seconds(2),
                monitor: monitor),
            authenticator: MessageAuthenticator(keys: Self.keys), environment: environment, stonith: stonith,
            pingNodes: pingNode.map { PingNodeTracker(nodes: [$0], groups: [], deadping: Self.deadping) },
            witness: witness.map { _ in
                WitnessClient(node: name, peer: peer, askInterval: .milliseconds(200), deadtime: .seconds(1), randomSeed: generations[name]!)
            })
        node.start(now: clock(name))
        nodes[name] = node
    }

    /// Power loss: the node's processes, its resources and its fence agent runs are gone.
    func crash(_ name: String) {
        crashed.insert(name)
        frozen.remove(name)
        frozenBacklog.removeAll { $0.0 == name }
        running[name] = []
        pending.removeAll { $0.node == name }
        fences.removeAll { $0.fencer == name }
        outdates.removeAll { $0.node == name }
    }

    /// Nodes whose messages are lost on every link while they still hear the others (a one-way partition).
    var muted: Set<String> = []

    func transmit(from sender: String, _ datagram: [UInt8]) {
        guard !crashed.contains(sender), !muted.contains(sender), !frozen.contains(sender) else { return }
        for link in Self.linkNames.indices where !cutLinks.contains(link) {
            // Not `nodes.keys`: the sender's driver is being mutated inside `nodes` while it transmits.
            for receiver in booted where receiver != sender && !crashed.contains(receiver) {
                deliveries.append((receiver, link, datagram))
            }
        }
    }

    var deliveries: [(String, Int, [UInt8])] = []

    /// The witness answers at once (signed with the cluster's key, as `tandem witness` does); the answer reaches the
    /// node with the next deliveries.
    func askWitness(from sender: String, _ datagram: [UInt8]) {
        guard witness != nil, !crashed.contains(sender), !frozen.contains(sender), !witnessUnreachable.contains(sender),
            let message = try? HeartbeatWire.decode(datagram), MessageAuthenticator(keys: Self.keys).verify(message) == .authentic,
            case .ask(let ask)? = WitnessMessage(message)
        else { return }
        let answer = witness!.asked(ask, now: now)
        let reply = MessageAuthenticator(keys: Self.keys).sign(WitnessMessage.answer(answer).encode())
        witnessAnswers.append((sender, HeartbeatWire.encode(reply)))
    }

    func schedule(_ operation: ResourceOperation, on node: String, resource: String) {
        pending.append(Pending(due: now + operationDelay, node: node, operation: operation, resource: resource))
    }

    /// Advances time in 10 ms steps, delivering datagrams and finishing operations as they come due.
    func run(for duration: Duration) {
        let end = now + duration
        while now < end {
            now = now + .milliseconds(10)
            drain()
            // One at a time, looked up again after each: finishing one can crash a node (a fence), which drops
            // that node's pending operations and fence runs.
            while let index = pending.firstIndex(where: { $0.due <= now && !frozen.contains($0.node) }) {
                finish(pending.remove(at: index))
                drain()
            }
            while let index = fences.firstIndex(where: { $0.due <= now && !frozen.contains($0.fencer) }) {
                finishFence(fences.remove(at: index))
                drain()
            }
            while let index = outdates.firstIndex(where: { $0.due <= now && !frozen.contains($0.node) }) {
                let outdate = outdates.remove(at: index)
                let code = outdateCodes[outdate.node] ?? .peerOutdated
                nodes[outdate.node]!.localOutdateFinished(requestID: outdate.requestID, code, detail: "harness", now: clock(outdate.node))
                drain()
            }
            for name in nodes.keys.sorted() where !crashed.contains(name) && !frozen.contains(name) {
                // An echo reply every 200 ms from a reachable ping node.
                if let pingNode, !pingUnreachable.contains(name), (now - start).wholeMilliseconds % 200 == 0 {
                    nodes[name]!.pingReplyReceived(from: pingNode, now: clock(name))
                }
                nodes[name]!.tick(now: clock(name))
            }
            drain()
            checkOneHolderPerResource()
        }
    }

    /// Deliveries allowed within one 10 ms step: more means two nodes answer each other forever.
    static let deliveriesPerStepMaximum = 10_000

    private func drain() {
        var delivered = 0
        while !witnessAnswers.isEmpty {
            let (receiver, datagram) = witnessAnswers.removeFirst()
            guard !crashed.contains(receiver), !frozen.contains(receiver), !witnessUnreachable.contains(receiver) else { continue }
            nodes[receiver]!.witnessDatagramReceived(datagram, now: clock(receiver))
        }
        while !deliveries.isEmpty {
            delivered += 1
            precondition(delivered < Self.deliveriesPerStepMaximum, "message storm at \(now): \(deliveries.count) waiting; last from \(String(decoding: deliveries.last!.2.prefix(200), as: UTF8.self))")
            let (receiver, link, datagram) = deliveries.removeFirst()
            guard !crashed.contains(receiver) else { continue }
            if frozen.contains(receiver) {
                // A socket buffer: bounded, the oldest kept.
                if frozenBacklog.count < 512 { frozenBacklog.append((receiver, link, datagram)) }
                continue
            }
            nodes[receiver]!.datagramReceived(datagram, link: link, now: clock(receiver))
        }
    }

    private func finish(_ item: Pending) {
        let kind = item.operation.kind
        var failure = failing.contains("\(item.node)/\(item.resource)/\(kind.rawValue)")
        switch kind {
        case .start where !failure: running[item.node, default: []].append(item.resource)
        case .stop where !failure: running[item.node, default: []].removeAll { $0 == item.resource }
        case .monitor: failure = failure || running[item.node]?.contains(item.resource) != true
        default: break
        }
        nodes[item.node]!.operationFinished(
            item.operation, outcome: failure ? .failed("injected failure") : .succeeded, now: clock(item.node))
    }

    private func finishFence(_ fence: PendingFence) {
        let outcome: FenceOutcome
        if fenceDeviceFailing {
            outcome = .failed(detail: "power switch unreachable")
        } else {
            if !crashed.contains(fence.target) { crash(fence.target) }
            fenced.append(fence.target)
            outcome = .succeeded(detail: "\(fence.target) is off")
        }
        nodes[fence.fencer]!.fenceAgentFinished(outcome, now: clock(fence.fencer))
    }

    /// Moments at which two live nodes (frozen ones count: they wake up holding what they held) ran the same
    /// resource, with the resource: the split brain the fencing must prevent.
    var doubleHolders: [(MonotonicInstant, String)] = []

    private func checkOneHolderPerResource() {
        for resource in groups.flatMap(\.resources) {
            let holders = running.filter { !crashed.contains($0.key) && $0.value.contains(resource) }
            if holders.count > 1 { doubleHolders.append((now, resource)) }
        }
    }

    /// The node that runs `resource`, or nil; fails the caller's expectation when two do.
    func holders(of resource: String) -> [String] {
        running.filter { $0.value.contains(resource) }.map(\.key).sorted()
    }

    func log(_ name: String) -> String { environments[name]!.logLines.joined(separator: "\n") }
}
