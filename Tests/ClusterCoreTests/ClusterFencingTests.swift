import CoreSupport
import FencingCore
import MembershipCore
import ResourceCore
import TandemConfig
import Testing

/// STONITH over the production driver: a peer that goes silent is fenced before anything it ran is taken over, the
/// node that runs the groups wins the race, and a fence that fails leaves the groups where they are.
@Suite struct ClusterFencingTests {
    static let stonith = StonithPolicy(
        action: .off, delayWhenIdle: .seconds(1), agentTimeout: .seconds(5), retryInterval: .milliseconds(500))
    /// One group, preferred by node1: node2 stands by.
    static let groups = [
        GroupDefinition(key: "IPaddr::10.0.0.10", preferredNode: "node1", resources: ["IPaddr::10.0.0.10", "mysqld"])
    ]

    func bothUp(stonith: StonithPolicy? = Self.stonith, groups: [GroupDefinition] = Self.groups) -> ClusterHarness {
        let harness = ClusterHarness(groups: groups, autoFailback: .off, stonith: stonith)
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(3))
        return harness
    }

    @Test func aPartitionIsWonByTheNodeThatRunsTheGroupAndNothingMoves() {
        let harness = bothUp()
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "mysqld"])
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(4))
        #expect(harness.fenced == ["node2"])
        #expect(harness.crashed == ["node2"])
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.doubleHolders.prefix(3).isEmpty, "\(harness.doubleHolders.count) steps with two holders")
        #expect(harness.log("node1").contains("node2 fenced (STONITH off, attempt 1"))
        // Both links, the peer, the fence; nothing to take over (node1 already runs everything).
        #expect(harness.environments["node1"]!.alerts.map(\.0.rawValue).sorted() == ["fenced", "link-down", "link-down", "node-dead"])
        #expect(harness.nodes["node1"]!.fencing!.counters.fencesSucceeded == 1)
    }

    @Test func aHungActiveNodeIsFencedBeforeTheStandbyTakesOverAndNeverWakesUpWriting() {
        let harness = bothUp()
        harness.freeze("node1")
        harness.run(for: .seconds(4))
        #expect(harness.fenced == ["node1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.log("node2").contains("this node runs no resource group: fencing in 1.0 seconds (stonith_delay)"))
        harness.thaw("node1")  // already off: there is nothing left to thaw
        harness.run(for: .seconds(2))
        #expect(harness.running["node1"] == [])
        #expect(harness.doubleHolders.prefix(3).isEmpty, "\(harness.doubleHolders.count) steps with two holders")
    }

    @Test func aHungNodeThatWakesUpBeforeItsFenceIsLeftAlone() {
        let harness = bothUp()
        harness.freeze("node1")
        harness.run(for: .milliseconds(1500))  // dead to node2 after 1 s; node2 waits 1 s more before fencing
        harness.thaw("node1")
        harness.run(for: .seconds(3))
        #expect(harness.fenced == [])
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.running["node2"] == [])
        #expect(harness.log("node2").contains("node1 is heard again before it was fenced: fencing called off"))
        #expect(harness.doubleHolders.prefix(3).isEmpty, "\(harness.doubleHolders.count) steps with two holders")
    }

    @Test func aFailingFenceDeviceKeepsTheGroupsWhereTheyAreAndIsRetried() {
        let harness = bothUp()
        harness.fenceDeviceFailing = true
        harness.freeze("node1")
        harness.run(for: .seconds(5))
        #expect(harness.running["node2"] == [])
        #expect(harness.nodes["node2"]!.fencing!.counters.fenceFailures >= 3)
        #expect(harness.log("node2").contains("STONITH of node1 failed (attempt 1): power switch unreachable"))
        #expect(harness.environments["node2"]!.alerts.contains { $0.0 == .fenceFailed && $0.1.contains("power switch unreachable") })
        harness.fenceDeviceFailing = false
        harness.run(for: .seconds(2))
        #expect(harness.fenced == ["node1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.doubleHolders.prefix(3).isEmpty, "\(harness.doubleHolders.count) steps with two holders")
    }

    @Test func aPowerLossIsConfirmedByTheFenceAndThenTakenOver() {
        let harness = bothUp()
        harness.crash("node1")
        harness.run(for: .seconds(4))
        #expect(harness.fenced == ["node1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
    }

    @Test func aCleanShutdownIsNotFenced() {
        let harness = bothUp()
        harness.nodes["node1"]!.shutdown(now: harness.now)
        harness.run(for: .seconds(3))
        #expect(harness.fenced == [])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
    }

    @Test func withGroupsOnBothNodesTheTieBreakerFencesFirstAndOnlyOneNodeIsFenced() {
        let harness = bothUp(groups: ClusterScenarioTests.groups)
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(4))
        #expect(harness.fenced == ["node2"])
        #expect(harness.running["node1"]!.sorted() == ["IPaddr::10.0.0.10", "IPaddr::10.0.0.20", "service1"])
        #expect(harness.doubleHolders.prefix(3).isEmpty, "\(harness.doubleHolders.count) steps with two holders")
    }

    @Test func afterAPartitionHealsTheNodeThatKeepsTheGroupAnnouncesItsAddressesAgain() {
        let harness = bothUp(stonith: nil)
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(3))
        harness.cutLinks = []
        harness.run(for: .seconds(5))
        // node2 acquired the group later: it keeps it, node1 releases it, and only node2 announces.
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.running["node1"] == [])
        #expect(harness.environments["node2"]!.reannouncements == [[0]])
        #expect(harness.environments["node1"]!.reannouncements == [])
    }

    @Test func withoutStonithAPartitionRunsTheGroupTwiceAndSaysSo() {
        let harness = bothUp(stonith: nil)
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(3))
        #expect(!harness.doubleHolders.isEmpty)
        #expect(harness.log("node2").contains("No STONITH device configured. Shared disks are not protected."))
    }
}

/// ipfail: with a ping node, the node that reaches fewer ping nodes than its peer gives its groups up; and in a
/// fence race, a node that reaches none loses even if it runs the groups.
@Suite struct ClusterPingNodeTests {
    static let pingNode = IPv4Address("10.0.0.254")!
    static let stonith = StonithPolicy(
        action: .off, delayWhenIdle: .seconds(1), agentTimeout: .seconds(5), retryInterval: .milliseconds(500),
        connectivityGrace: ClusterHarness.deadping)

    func bothUp(stonith: StonithPolicy? = nil) -> ClusterHarness {
        let harness = ClusterHarness(groups: ClusterFencingTests.groups, autoFailback: .off, stonith: stonith, pingNode: Self.pingNode)
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(3))
        return harness
    }

    @Test func theActiveNodeThatLosesItsPingNodeGivesTheGroupToItsPeer() {
        let harness = bothUp()
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.nodes["node1"]!.membership.pingReachability(of: "node2") == 1)
        harness.pingUnreachable = ["node1"]
        harness.run(for: .seconds(4))
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.running["node1"] == [])
        #expect(harness.log("node1").contains("ipfail: this node reaches 0 of its 1 ping nodes and node2 reaches 1"))
        #expect(harness.environments["node1"]!.alerts.map(\.0) == [.ipfail])
        #expect(harness.environments["node2"]!.alerts.map(\.0) == [])
        // Back in reach: nothing moves back (auto_failback off), and nothing moves again.
        harness.pingUnreachable = []
        harness.run(for: .seconds(3))
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
    }

    @Test func theStandbyLosingItsPingNodeMovesNothing() {
        let harness = bothUp()
        harness.pingUnreachable = ["node2"]
        harness.run(for: .seconds(4))
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.running["node2"] == [])
        #expect(!harness.log("node2").contains("ipfail"))
    }

    @Test func withStonithTheNodeCutOffFromEverythingLosesTheFenceRace() {
        let harness = bothUp(stonith: Self.stonith)
        // node1 runs the group and loses every link: its peer and its ping node at once.
        harness.cutLinks = [0, 1]
        harness.pingUnreachable = ["node1"]
        harness.run(for: .seconds(6))
        #expect(harness.fenced == ["node1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.10", "mysqld"])
        #expect(harness.doubleHolders.prefix(3).isEmpty, "\(harness.doubleHolders.count) steps with two holders")
    }

    @Test func withStonithAndPingNodesAHeartbeatPartitionIsStillWonByTheActiveNode() {
        let harness = bothUp(stonith: Self.stonith)
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(6))
        #expect(harness.fenced == ["node2"])
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "mysqld"])
    }
}

/// The fencing machine on its own.
@Suite struct PeerFencingMachineTests {
    let start = MonotonicInstant(nanoseconds: 1_000_000_000)

    static let runs = FenceStanding(role: .runsTheGroups, reachesPingNodes: true)
    static let idle = FenceStanding(role: .idle, reachesPingNodes: true)

    func machine() -> PeerFencingMachine { PeerFencingMachine(peer: "node2", policy: ClusterFencingTests.stonith) }

    @Test func theNodeThatRunsTheGroupsFencesAtOnceAndAnIdleNodeWaits() {
        var running = machine()
        #expect(running.peerLost(now: start, standing: FenceStanding(role: .runsTheGroups, reachesPingNodes: true)).contains(.runAgent(target: "node2", action: .off, timeout: .seconds(5))))
        var idle = machine()
        #expect(!idle.peerLost(now: start, standing: Self.idle).contains { if case .runAgent = $0 { true } else { false } })
        #expect(idle.nextDeadline == start + .seconds(1))
        #expect(idle.tick(now: start + .milliseconds(999)).isEmpty)
        #expect(idle.tick(now: start + .seconds(1)) == [.runAgent(target: "node2", action: .off, timeout: .seconds(5))])
        var loser = machine()
        _ = loser.peerLost(now: start, standing: FenceStanding(role: .sharesTheGroups(breaksTies: false), reachesPingNodes: true))
        #expect(loser.nextDeadline == start + .milliseconds(500))
    }

    @Test func onlyASuccessfulFenceReportsThePeerFencedAndFailuresRetryForever() {
        var fencing = machine()
        _ = fencing.peerLost(now: start, standing: Self.runs)
        var now = start
        for attempt in 1...5 {
            let actions = fencing.agentFinished(.failed(detail: "no route"), now: now)
            #expect(!actions.contains(.peerFenced("node2")))
            #expect(fencing.counters.fenceFailures == UInt64(attempt))
            now = now + .milliseconds(500)
            #expect(fencing.tick(now: now) == [.runAgent(target: "node2", action: .off, timeout: .seconds(5))])
        }
        #expect(fencing.agentFinished(.succeeded(detail: "off"), now: now).contains(.peerFenced("node2")))
        #expect(fencing.state == .fenced(at: now))
        _ = fencing.peerHeard(now: now + .seconds(10))
        #expect(fencing.state == .idle)
    }

    @Test func aPeerHeardWhileTheAgentRunsIsNotReportedFenced() {
        var fencing = machine()
        _ = fencing.peerLost(now: start, standing: Self.runs)
        _ = fencing.peerHeard(now: start + .milliseconds(10))
        let actions = fencing.agentFinished(.succeeded(detail: "off"), now: start + .milliseconds(100))
        #expect(!actions.contains(.peerFenced("node2")))
        #expect(fencing.state == .idle)
        // If the agent did turn it off, membership loses it again and it is fenced again.
        #expect(fencing.peerLost(now: start + .seconds(2), standing: Self.runs).contains(.runAgent(target: "node2", action: .off, timeout: .seconds(5))))
    }

    @Test func aPeerHeardBeforeItsFenceRanIsLeftAlone() {
        var fencing = machine()
        _ = fencing.peerLost(now: start, standing: Self.idle)
        _ = fencing.peerHeard(now: start + .milliseconds(300))
        #expect(fencing.state == .idle)
        #expect(fencing.tick(now: start + .seconds(5)).isEmpty)
    }
}
