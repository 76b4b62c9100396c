import CoreSupport
import FencingCore
import MembershipCore
import ResourceCore
import TandemConfig

/// What the cluster driver needs from the world: the heartbeat links, agent operations, a wall clock for the `ts`
/// field, and the log. The daemon implements it over UDP sockets and processes; tests and the simulator over
/// in-memory links.
public protocol ClusterEnvironment {
    /// Send one signed datagram on every heartbeat link.
    func transmit(_ datagram: [UInt8])
    /// Send one signed datagram to the witness (ha.cf `witness`).
    func transmitToWitness(_ datagram: [UInt8])
    /// Run one resource operation; the outcome comes back through `ClusterNode.operationFinished`.
    func runOperation(_ operation: ResourceOperation, resource: String, timeout: Duration)
    func log(_ level: LogLevel, _ message: String)
    /// Run the fence agents against `target`; the outcome comes back through `ClusterNode.fenceAgentFinished`.
    func runFenceAgent(target: String, action: FenceAction, timeout: Duration)
    /// Announce the floating addresses of these groups again (gratuitous ARP), where this node has them. Must not
    /// block.
    func reannounceAddresses(groups: [Int])
    /// Tell the operator (ha.cf's `alert` scripts). Must not block.
    func alert(_ kind: ClusterAlertKind, _ detail: String)
    /// The peer asks this node to outdate its disk of `resource` (dopd): run replicad's `outdate`, then call
    /// `ClusterNode.localOutdateFinished`. Must not block.
    func outdateLocalResource(_ resource: String, requestID: UInt64)
    /// The answer to `ClusterNode.requestPeerOutdate`: `tandem fence-peer` exits with `code`.
    func answerPeerOutdate(requestID: UInt64, _ code: FencePeerExitCode, detail: String)
    /// A resource will not stop: carry out the last resort (stop heartbeats, reboot).
    func lastResort(_ action: StopFailureAction, reason: String)
    /// Every group is released and `shutdone` was sent: the daemon may exit.
    func shutdownComplete()
    /// Seconds since the Unix epoch, for the informational `ts` field.
    var wallClockSeconds: UInt64 { get }
    /// `/proc/loadavg`'s first three fields, for the informational `ld` field of status messages.
    var loadAverage: String? { get }
}

/// The production driver of one cluster node: decodes and authenticates datagrams, feeds the membership and
/// resource machines, and carries out their actions over the environment. The simulator runs this same type.
///
/// Confined to one serial executor (the daemon's cluster thread, or a test's loop).
public struct ClusterNode<Environment: ClusterEnvironment> {
    public private(set) var membership: MembershipMachine
    public private(set) var resources: ResourceManagerMachine
    /// STONITH, when ha.cf configures it: the peer's death reaches the resource manager only once it is fenced.
    public private(set) var fencing: PeerFencingMachine?
    /// Resource-level fencing over the heartbeat links (dopd), when there is a peer.
    public private(set) var outdater: PeerOutdateMachine?
    /// ha.cf's ping nodes, when there are any: ipfail and the fence race use what this node reaches.
    public private(set) var pingNodes: PingNodeTracker?
    /// The witness, when ha.cf names one: a node that does not hear its peer has quorum only with its grant.
    public private(set) var witness: WitnessClient?
    /// Whether this node may run resources (always, without a witness).
    public private(set) var hasQuorum = true
    /// Since when this node does not hear its peer (with a witness).
    private var peerUnheardSince: MonotonicInstant?
    /// When `reviewQuorum` last ran.
    private var quorumReviewedAt: MonotonicInstant?
    /// Membership declared the peer dead (and when); with a witness, acting on it waits for the grant.
    private var peerDeathAwaitingGrant: (node: String, declaredAt: MonotonicInstant)?
    /// The (local, peer) ping counts for which ipfail last gave the groups up: once per change of counts.
    private var ipfailGaveUpAt: [Int]?
    /// When to announce the addresses this node kept after a partition healed.
    private var reannounceAt: MonotonicInstant?
    /// Time for the two nodes to settle who keeps what after a partition (a few keepalives' worth of messages).
    public static var reannounceSettleTime: Duration { .seconds(2) }
    public private(set) var authenticator: MessageAuthenticator
    public private(set) var wireCounters = WireCounters()
    public let environment: Environment

    public init(
        membership: MembershipConfiguration, resources: ResourceManagerConfiguration,
        authenticator: MessageAuthenticator, environment: Environment, stonith: StonithPolicy? = nil,
        pingNodes: PingNodeTracker? = nil, witness: WitnessClient? = nil
    ) {
        self.pingNodes = pingNodes
        self.witness = witness
        if let peer = resources.peerNode {
            // Request IDs start from the generation, so that a late answer to a request of an earlier run of
            // heartbeatd never matches one of this run's.
            self.outdater = PeerOutdateMachine(peer: peer, firstRequestID: membership.generation << 32)
        }
        self.membership = MembershipMachine(configuration: membership)
        self.resources = ResourceManagerMachine(configuration: resources)
        if let peer = resources.peerNode, let stonith {
            self.fencing = PeerFencingMachine(peer: peer, policy: stonith)
        }
        self.authenticator = authenticator
        self.environment = environment
    }

    public mutating func start(now: MonotonicInstant) {
        perform(membership.start(now: now), now: now)
        // The peer learns from the first status message that this node has ping nodes and reaches none yet.
        if pingNodes != nil { perform(membership.setLocalPingReachability(0, now: now), now: now) }
        perform(resources.start(now: now), now: now)
        if witness != nil {
            peerUnheardSince = now
            perform(witness!.start(now: now), now: now)
        }
        reviewConnectivity(now: now)
    }

    public mutating func tick(now: MonotonicInstant) {
        perform(membership.tick(now: now), now: now)
        if pingNodes != nil { perform(pingNodes!.tick(now: now), now: now) }
        if fencing != nil { perform(fencing!.tick(now: now), now: now) }
        if outdater != nil { perform(outdater!.tick(now: now), now: now) }
        if witness != nil { perform(witness!.tick(now: now), now: now) }
        perform(resources.tick(now: now), now: now)
        if let due = reannounceAt, now >= due {
            reannounceAt = nil
            let running = resources.groupReports.indices.filter { resources.groupReports[$0].state == .running }
            if !running.isEmpty {
                environment.log(.info, "the partition healed and this node kept its resource groups: announcing their addresses again")
                environment.reannounceAddresses(groups: running)
            }
        }
        reviewConnectivity(now: now)
    }

    /// A datagram arrived from the witness. Only a signed answer to one of this node's recent questions counts.
    public mutating func witnessDatagramReceived(_ datagram: some Collection<UInt8>, now: MonotonicInstant) {
        guard witness != nil else { return }
        guard let message = try? HeartbeatWire.decode(datagram), authenticator.verify(message) == .authentic,
            case .answer(let answer)? = WitnessMessage(message)
        else {
            wireCounters.badWitnessAnswers += 1
            if LogThrottle.shouldLog(occurrence: wireCounters.badWitnessAnswers) {
                environment.log(.warning, "dropped a datagram from the witness: not a signed witness answer (\(wireCounters.badWitnessAnswers) so far)")
            }
            return
        }
        perform(witness!.answered(answer, now: now), now: now)
        reviewConnectivity(now: now)
    }

    /// An ICMP echo reply from `address` arrived.
    public mutating func pingReplyReceived(from address: IPv4Address, now: MonotonicInstant) {
        guard pingNodes != nil else { return }
        perform(pingNodes!.replyReceived(from: address, now: now), now: now)
        reviewConnectivity(now: now)
    }

    /// A datagram arrived on link number `link`. Anything that does not decode, or is not signed with one of our
    /// keys, is dropped and counted before any machine sees it.
    public mutating func datagramReceived(_ datagram: some Collection<UInt8>, link: Int, now: MonotonicInstant) {
        let message: HeartbeatMessage
        do {
            message = try HeartbeatWire.decode(datagram)
        } catch {
            switch error.code {
            case .oversized: wireCounters.oversized += 1
            case .malformed: wireCounters.malformed += 1
            }
            if LogThrottle.shouldLog(occurrence: wireCounters.oversized + wireCounters.malformed) {
                environment.log(.warning, "dropped a datagram on link \(membership.configuration.links[link]): \(error.message) (\(wireCounters.oversized + wireCounters.malformed) so far)")
            }
            return
        }
        let verdict = authenticator.verify(message)
        guard verdict == .authentic else {
            wireCounters.badAuthentication += 1
            if LogThrottle.shouldLog(occurrence: wireCounters.badAuthentication) {
                environment.log(.error, "Bad/invalid auth token from \(message.source ?? "an unknown sender") on link \(membership.configuration.links[link]): \(verdict) (\(wireCounters.badAuthentication) so far)")
            }
            return
        }
        perform(membership.received(message, link: link, now: now), now: now)
        reviewConnectivity(now: now)
    }

    public mutating func operationFinished(_ operation: ResourceOperation, outcome: OperationOutcome, now: MonotonicInstant) {
        perform(resources.operationFinished(operation, outcome: outcome, now: now), now: now)
        reviewConnectivity(now: now)
    }

    /// The fence agents started by the last `runFenceAgent` finished.
    public mutating func fenceAgentFinished(_ outcome: FenceOutcome, now: MonotonicInstant) {
        precondition(fencing != nil, "fence agent finished on \(membership.configuration.localNode), which has no STONITH")
        if case .failed(let detail) = outcome { environment.alert(.fenceFailed, "fencing \(fencing!.peer) failed: \(detail)") }
        perform(fencing!.agentFinished(outcome, now: now), now: now)
        reviewConnectivity(now: now)
    }

    /// `tandem fence-peer`: ask the peer to outdate its disk of `resource`. When sent, the answer comes through the
    /// environment's `answerPeerOutdate` for the request ID.
    public mutating func requestPeerOutdate(resource: String, now: MonotonicInstant) -> PeerOutdateRequest {
        guard outdater != nil, let peer = resources.configuration.peerNode else {
            return .answered(.peerUnreachable, detail: "this cluster has no peer node")
        }
        let status = membership.status(of: peer)
        let request = outdater!.request(resource: resource, peerReachable: status == .up || status == .active, now: now)
        if case .sent(_, let actions) = request { perform(actions, now: now) }
        return request
    }

    /// The outdate the peer asked for finished here.
    public mutating func localOutdateFinished(requestID: UInt64, _ code: FencePeerExitCode, detail: String, now: MonotonicInstant) {
        perform(outdater!.localOutdateFinished(requestID: requestID, code, detail: detail), now: now)
    }

    public mutating func requestStandby(_ selection: ResourceSelection, now: MonotonicInstant) -> AdminOutcome {
        let outcome = resources.requestStandby(selection, now: now)
        perform(outcome.actions, now: now)
        return outcome
    }

    public mutating func requestTakeover(_ selection: ResourceSelection, now: MonotonicInstant) -> AdminOutcome {
        let outcome = resources.requestTakeover(selection, now: now)
        perform(outcome.actions, now: now)
        return outcome
    }

    public mutating func shutdown(now: MonotonicInstant) {
        perform(resources.shutdown(now: now), now: now)
    }

    /// authkeys changed on disk and parsed cleanly: sign with the new active key and accept the new set.
    public mutating func replaceKeys(_ authenticator: MessageAuthenticator) {
        self.authenticator = authenticator
    }

    /// When `tick` must next run.
    public var nextDeadline: MonotonicInstant? {
        [membership.nextDeadline, resources.nextDeadline, fencing?.nextDeadline, pingNodes?.nextDeadline,
         outdater?.nextDeadline, witness?.nextDeadline, quorumDecisionAt, reannounceAt]
            .compactMap { $0 }.min()
    }

    // MARK: Actions

    private mutating func perform(_ actions: [MembershipAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .transmit(var message):
                message[HeartbeatField.timestamp] = String(environment.wallClockSeconds, radix: 16)
                if message.type == .status, let load = environment.loadAverage { message[HeartbeatField.load] = load }
                environment.transmit(HeartbeatWire.encode(authenticator.sign(message)))
            case .deliver(let message, _):
                if let typed = ResourceMessage(message) {
                    perform(resources.received(typed, now: now), now: now)
                } else if let outdate = PeerOutdateMessage(message), outdater != nil {
                    perform(outdater!.received(outdate, now: now), now: now)
                }
            case .nodeStatusChanged(let node, .dead):
                guard isPeer(node) else { break }
                let how = membership.hasAnnouncedShutdown(node) ? "shut down"
                    : membership.status(of: node) != .dead ? "restarted (a new generation)" : "is dead (no message for deadtime)"
                environment.alert(.nodeDead, "\(node) \(how)")
                if outdater != nil { perform(outdater!.peerLost(), now: now) }
                peerDeclaredDead(node, now: now)
            case .nodeStatusChanged(let node, let status):
                guard isPeer(node) else { break }
                if fencing != nil, status != .initial { perform(fencing!.peerHeard(now: now), now: now) }
                perform(resources.peerStatusChanged(status, now: now), now: now)
            case .linkStatusChanged(let node, let link, .dead):
                environment.alert(.linkDown, "link \(link) to \(node) is dead")
            case .linkStatusChanged:
                break  // logged by the machine; status reads the link table
            case .nodeReturnedAfterPartition(let node):
                guard isPeer(node) else { break }
                // Clients may have followed the peer's announcements meanwhile; whoever keeps a group announces it.
                reannounceAt = now + Self.reannounceSettleTime
                if fencing != nil { perform(fencing!.peerHeard(now: now), now: now) }
                perform(resources.peerReturnedAfterPartition(now: now), now: now)
            case .log(let level, let text):
                environment.log(level, text)
            }
        }
    }

    /// Membership says the peer is dead. A peer that announced its shutdown released everything and may be taken
    /// over at once. One that restarted (dead and alive again in the same message, a new generation) holds nothing
    /// in its new incarnation: with STONITH its `starting` settles who runs what, and nothing is taken over. A
    /// silent peer may still be running its groups: with STONITH it is fenced first, and the resource manager hears
    /// of its death only from `.peerFenced`.
    private mutating func peerDeclaredDead(_ node: String, now: MonotonicInstant) {
        let announcedShutdown = membership.hasAnnouncedShutdown(node)
        let restarted = membership.status(of: node) != .dead
        if witness != nil, !announcedShutdown, !restarted {
            // A silent peer may be running on the other side of a split: only the side the witness grants acts, and
            // only once the peer runs nothing (`reviewQuorum` decides, after every event).
            peerDeathAwaitingGrant = (node, now)
            environment.log(.warning, "\(node) is dead to this node: asking the witness before taking anything over")
            return
        }
        actOnPeerDeath(node, announcedShutdown: announcedShutdown, restarted: restarted, now: now)
    }

    private mutating func actOnPeerDeath(_ node: String, announcedShutdown: Bool, restarted: Bool, now: MonotonicInstant) {
        if fencing != nil, !announcedShutdown {
            if restarted {
                environment.log(.info, "\(node) restarted: not fencing it; its startup exchange settles who runs what")
            } else {
                perform(fencing!.peerLost(now: now, standing: fenceStanding), now: now)
            }
            return
        }
        if !announcedShutdown && !restarted {
            environment.log(.warning, "No STONITH device configured. Shared disks are not protected.")
        }
        perform(resources.peerStatusChanged(.dead, now: now), now: now)
    }

    private var fenceStanding: FenceStanding {
        let peerHolds = resources.groupReports.contains(where: \.heldByPeer)
        let role: FenceStanding.Role = switch (resources.holdsAnyGroup, peerHolds) {
        case (true, false): .runsTheGroups
        case (true, true):
            .sharesTheGroups(breaksTies: resources.configuration.localNode.lowercased() < (resources.configuration.peerNode ?? "").lowercased())
        case (false, _): .idle
        }
        return FenceStanding(role: role, reachesPingNodes: pingNodes.map { $0.reachableCount > 0 } ?? true)
    }

    /// How long a node that lost its peer waits for the witness's grant before it counts itself without quorum:
    /// two questions' worth (the witness may first refuse it while the peer's last question says it still hears
    /// this node). The witness lets the peer take over only after twice its deadtime of silence, which leaves a node
    /// without quorum deadtime minus this to stop its groups.
    public var grantWait: Duration { membership.configuration.keepalive * 2 }

    /// The next moment `reviewQuorum` may decide something by time alone (after the last review, never before: a
    /// deadline in the past would make the daemon's loop spin).
    /// How long after declaring a silent peer dead its groups are taken over (with a witness).
    private var silentPeerTakeoverDelay: Duration { membership.configuration.deadtime * 2 }

    private var quorumDecisionAt: MonotonicInstant? {
        guard witness != nil, let reviewedAt = quorumReviewedAt else { return nil }
        let takeover = peerDeathAwaitingGrant.map { $0.declaredAt + silentPeerTakeoverDelay }
        let quorumLoss = hasQuorum ? peerUnheardSince.map { $0 + grantWait } : nil
        return [takeover, quorumLoss].compactMap { $0 }.filter { $0 > reviewedAt }.min()
    }

    /// With a witness: quorum is hearing the peer, or a peer that announced its shutdown, or the witness's grant.
    /// A node without quorum stops every group and takes none; one that gets the grant acts on the peer's death.
    private mutating func reviewQuorum(now: MonotonicInstant) {
        guard witness != nil, let peer = resources.configuration.peerNode else { return }
        quorumReviewedAt = now
        let status = membership.status(of: peer)
        // A peer heard at all is not dead: its death, if it comes again, is declared anew.
        if status == .up || status == .active { peerDeathAwaitingGrant = nil }
        // Both ways: a peer that no longer hears this node (a one-way partition) may be taking over.
        let hearsPeer = (status == .up || status == .active) && membership.hearsUs(peer)
        perform(witness!.update(seesPeer: hearsPeer, runsGroups: resources.holdsAnyGroup, now: now), now: now)
        if hearsPeer {
            peerUnheardSince = nil
            peerDeathAwaitingGrant = nil
            return setQuorum(true, because: "\(peer) and this node hear each other", now: now)
        }
        if peerUnheardSince == nil { peerUnheardSince = now }
        if membership.hasAnnouncedShutdown(peer) { return setQuorum(true, because: "\(peer) shut down cleanly", now: now) }
        if witness!.holdsGrant(now: now) {
            setQuorum(true, because: "the witness granted it", now: now)
            // The peer, alive on the other side of a split, may still be stopping what it ran: its groups are taken
            // once the witness says it runs nothing, or, when it is only silent, two deadtimes after it was declared
            // dead here (it may learn of the split a deadtime later than this node, then stops).
            if let (node, declaredAt) = peerDeathAwaitingGrant, witness!.peerClear == .runsNothing
                || (witness!.peerClear == .silent && now - declaredAt >= silentPeerTakeoverDelay)
            {
                peerDeathAwaitingGrant = nil
                environment.log(.warning, "the witness granted this node the cluster and \(node) runs nothing: acting on \(node)'s death")
                actOnPeerDeath(node, announcedShutdown: false, restarted: false, now: now)
            }
            return
        }
        if now - peerUnheardSince! >= grantWait {
            let reason = witness!.lastAnswer.map { "the witness says: \($0.reason)" } ?? "the witness does not answer"
            setQuorum(false, because: "\(peer) and this node do not hear each other and \(reason)", now: now)
        }
    }

    private mutating func setQuorum(_ quorate: Bool, because reason: String, now: MonotonicInstant) {
        guard quorate != hasQuorum else { return }
        hasQuorum = quorate
        environment.log(quorate ? .notice : .critical, quorate ? "quorum regained: \(reason)" : "quorum lost: \(reason); this node runs nothing")
        if !quorate { environment.alert(.quorumLost, reason) }
        perform(resources.quorumChanged(quorate, now: now), now: now)
    }

    /// After every event: the fence race hears of what changed (a group acquired or released, ping nodes lost),
    /// and ipfail gives the groups to the peer when it reaches more ping nodes than this node.
    private mutating func reviewConnectivity(now: MonotonicInstant) {
        reviewQuorum(now: now)
        if fencing != nil { perform(fencing!.standingChanged(fenceStanding, now: now), now: now) }
        guard let pingNodes, let peer = resources.configuration.peerNode,
            membership.status(of: peer) == .active, let peerCount = membership.pingReachability(of: peer),
            pingNodes.reachableCount < peerCount, resources.holdsAnyGroup
        else {
            ipfailGaveUpAt = nil
            return
        }
        let counts = [pingNodes.reachableCount, peerCount]
        guard ipfailGaveUpAt != counts else { return }
        let outcome = resources.requestStandby(.all, now: now)
        // Refused while a move is under way: asked again at the next event.
        guard outcome.accepted else { return }
        ipfailGaveUpAt = counts
        environment.log(.warning, "ipfail: this node reaches \(counts[0]) of its \(pingNodes.targets.count) ping nodes and \(peer) reaches \(counts[1]): giving the resource groups to \(peer)")
        environment.alert(.ipfail, "reaching \(counts[0]) ping nodes against \(peer)'s \(counts[1]): giving the resource groups to \(peer)")
        perform(outcome.actions, now: now)
    }

    private mutating func perform(_ actions: [PingAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .reachabilityChanged(let reachable, let total):
                environment.log(.info, "ping nodes: \(reachable) of \(total) reachable")
                perform(membership.setLocalPingReachability(reachable, now: now), now: now)
            case .log(let level, let text):
                environment.log(level, text)
            }
        }
    }

    private mutating func perform(_ actions: [FencingAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .runAgent(let target, let fenceAction, let timeout):
                environment.runFenceAgent(target: target, action: fenceAction, timeout: timeout)
            case .peerFenced(let peer):
                environment.alert(.fenced, "\(peer) fenced (STONITH \(fencing?.policy.action.rawValue ?? ""))")
                perform(resources.peerStatusChanged(.dead, now: now), now: now)
            case .log(let level, let text):
                environment.log(level, text)
            }
        }
    }

    private mutating func perform(_ actions: [WitnessAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .send(var message):
                message[HeartbeatField.timestamp] = String(environment.wallClockSeconds, radix: 16)
                environment.transmitToWitness(HeartbeatWire.encode(authenticator.sign(message)))
            case .log(let level, let text):
                environment.log(level, text)
            }
        }
    }

    private mutating func perform(_ actions: [PeerOutdateAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .send(let message):
                perform(membership.send(message, now: now), now: now)
            case .outdateLocally(let resource, let requestID):
                environment.outdateLocalResource(resource, requestID: requestID)
            case .answer(let requestID, let code, let detail):
                environment.answerPeerOutdate(requestID: requestID, code, detail: detail)
            case .log(let level, let text):
                environment.log(level, text)
            }
        }
    }

    private mutating func perform(_ actions: [ResourceAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .send(let message):
                perform(membership.send(message.encode(), now: now), now: now)
            case .run(let operation, let resource, let timeout):
                environment.runOperation(operation, resource: resource, timeout: timeout)
            case .setLocalStatus(let status):
                perform(membership.setLocalStatus(status, now: now), now: now)
            case .log(let level, let text):
                environment.log(level, text)
            case .lastResort(let action, let reason):
                environment.lastResort(action, reason: reason)
            case .shutdownComplete:
                environment.shutdownComplete()
            case .alert(let kind, let detail):
                environment.alert(kind, detail)
            }
        }
    }

    private func isPeer(_ node: String) -> Bool {
        resources.configuration.peerNode?.lowercased() == node.lowercased()
    }
}

/// Datagrams dropped before the membership machine saw them.
public struct WireCounters: Sendable, Hashable, Codable {
    public var malformed: UInt64 = 0
    public var oversized: UInt64 = 0
    public var badAuthentication: UInt64 = 0
    /// Datagrams from the witness's address that were not a signed witness answer.
    public var badWitnessAnswers: UInt64 = 0

    public init() {}
}
