import CoreSupport
import MembershipCore
import ResourceCore
import Testing

/// Heartbeat R1 behaviour of the production cluster driver, in the deterministic in-memory harness: the seed's
/// failover tests (seed 004 section 5) and the R1 rules, asserted from which node runs what.
@Suite struct ClusterScenarioTests {
    static let groups = [
        GroupDefinition(key: "IPaddr::10.0.0.10", preferredNode: "node1", resources: ["IPaddr::10.0.0.10", "service1"]),
        GroupDefinition(key: "IPaddr::10.0.0.20", preferredNode: "node2", resources: ["IPaddr::10.0.0.20"]),
    ]

    func bothUp(autoFailback: FailbackPolicy = .on) -> ClusterHarness {
        let harness = ClusterHarness(groups: Self.groups, autoFailback: autoFailback)
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(3))
        return harness
    }

    @Test func normalStateEachNodeRunsItsOwnGroupInOrder() {
        let harness = bothUp()
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "service1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.20"])
        #expect(harness.nodes["node1"]!.membership.localStatus == .active)
        #expect(harness.nodes["node1"]!.membership.status(of: "node2") == .active)
        #expect(harness.nodes["node1"]!.resources.heldSummary == "local")
    }

    @Test func deadNodeIsTakenOverAndReturnsWithAutoFailbackOn() {
        let harness = bothUp()
        harness.crash("node1")
        harness.run(for: .seconds(3))
        #expect(harness.running["node2"]!.sorted() == ["IPaddr::10.0.0.10", "IPaddr::10.0.0.20", "service1"])
        #expect(harness.log("node2").contains("node node1: is dead"))
        #expect(harness.log("node2").contains("Resources being acquired from node1."))
        #expect(harness.log("node2").contains("mach_down takeover complete for node node1."))

        harness.boot("node1")
        harness.run(for: .seconds(4))
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "service1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.20"])
        #expect(harness.log("node2").contains("Heartbeat restart on node node1"))
    }

    @Test func withAutoFailbackOffTheGroupStaysWhereItIs() {
        let harness = bothUp(autoFailback: .off)
        harness.crash("node1")
        harness.run(for: .seconds(3))
        harness.boot("node1")
        harness.run(for: .seconds(4))
        #expect(harness.running["node1"] == [])
        #expect(harness.running["node2"]!.count == 3)
        #expect(harness.nodes["node1"]!.membership.localStatus == .active)
    }

    @Test func cleanShutdownHandsOverWithoutWaitingForDeadtime() {
        let harness = bothUp()
        harness.nodes["node1"]!.shutdown(now: harness.now)
        // Two stops of 300 ms each, then shutdone; well under the 1 s deadtime after that.
        harness.run(for: .milliseconds(700))
        #expect(harness.environments["node1"]!.isShutDown)
        harness.crash("node1")
        harness.run(for: .milliseconds(800))
        #expect(harness.running["node2"]!.count == 3)
        #expect(harness.log("node2").contains("Received shutdown notice from 'node1'."))
        #expect(!harness.log("node2").contains("node node1: is dead"))
    }

    @Test func standbyAndTakeoverBothWays() {
        let harness = bothUp()
        let standby = harness.nodes["node1"]!.requestStandby(.all, now: harness.now)
        #expect(standby.accepted, "\(standby.message)")
        harness.run(for: .seconds(3))
        #expect(harness.running["node1"] == [])
        #expect(harness.running["node2"]!.count == 3)

        let takeover = harness.nodes["node1"]!.requestTakeover(.local, now: harness.now)
        #expect(takeover.accepted, "\(takeover.message)")
        harness.run(for: .seconds(3))
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "service1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.20"])

        let refused = harness.nodes["node1"]!.requestTakeover(.local, now: harness.now)
        #expect(!refused.accepted)
    }

    @Test func oneLinkCutIsNoFailover() {
        let harness = bothUp()
        harness.cutLinks = [0]
        harness.run(for: .seconds(3))
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "service1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.20"])
        #expect(harness.log("node2").contains("Link node1:eth1 dead."))
        #expect(!harness.log("node2").contains("is dead"))
        harness.cutLinks = []
        harness.run(for: .seconds(1))
        #expect(harness.log("node2").contains("Link node1:eth1 up."))
    }

    @Test func allLinksCutIsSplitBrainAndHealingLeavesOneOwner() {
        let harness = bothUp()
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(3))
        // R1 behaviour: both nodes take everything. Each took the other's group over at a new acquisition epoch,
        // so when the partition heals each group stays with the node that acquired it later: they swap.
        #expect(harness.running["node1"]!.count == 3)
        #expect(harness.running["node2"]!.count == 3)
        harness.cutLinks = []
        harness.run(for: .seconds(4))
        #expect(harness.log("node1").contains("returning after partition"))
        #expect(harness.holders(of: "IPaddr::10.0.0.10") == ["node2"])
        #expect(harness.holders(of: "service1") == ["node2"])
        #expect(harness.holders(of: "IPaddr::10.0.0.20") == ["node1"])
        // Each node's view of the other agrees with what runs where: the messages of the partition, recovered by
        // retransmission after newer ones, did not bring back an old "I hold it".
        #expect(harness.nodes["node1"]!.resources.groupReports.map(\.heldByPeer) == [true, false])
        #expect(harness.nodes["node2"]!.resources.groupReports.map(\.heldByPeer) == [false, true])
    }

    /// Only node2 sees a partition (node1's messages are lost; node1 still hears node2): node2 takes node1's group,
    /// node1 never thought anything happened (as a hung node that wakes up). node1 still hears node2 announce the
    /// takeover: the group stays with node2, which acquired it later, and node1 releases it at once rather than
    /// both running it until the partition heals.
    @Test func aOneWayPartitionHealsWithTheLaterAcquisitionKept() {
        let harness = bothUp()
        harness.muted = ["node1"]
        harness.run(for: .seconds(3))
        #expect(harness.running["node2"]!.count == 3)
        #expect(harness.running["node1"]!.isEmpty)
        harness.muted = []
        harness.run(for: .seconds(4))
        #expect(harness.holders(of: "IPaddr::10.0.0.10") == ["node2"])
        #expect(harness.holders(of: "service1") == ["node2"])
        #expect(harness.holders(of: "IPaddr::10.0.0.20") == ["node2"])
        #expect(harness.log("node1").contains("releasing it to node2 (acquisition epochs: node1 1, node2 2; the later acquisition keeps it)"))
        #expect(harness.log("node2").components(separatedBy: "returning after partition").count == 2)
    }

    static let monitor = MonitorPolicy(
        interval: .milliseconds(500), timeout: .seconds(1), failuresBeforeFailover: 3, failureWindow: .seconds(60))

    func bothUpMonitored() -> ClusterHarness {
        let harness = ClusterHarness(groups: Self.groups, monitor: Self.monitor)
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(3))
        return harness
    }

    /// A resource that dies is noticed by its next check and restarted in place, with the resources after it in
    /// its group (none here: service1 is last); the address before it stays up.
    @Test func aDeadResourceIsRestartedInPlace() {
        let harness = bothUpMonitored()
        harness.kill("service1", on: "node1")
        harness.run(for: .seconds(2))
        #expect(harness.running["node1"]!.sorted() == ["IPaddr::10.0.0.10", "service1"])
        #expect(harness.running["node2"] == ["IPaddr::10.0.0.20"])
        #expect(harness.log("node1").contains("monitor of service1 failed (1 of 3 within 60.0 seconds)"))
        #expect(harness.log("node1").contains("restarting service1 in place"))
        #expect(harness.nodes["node1"]!.resources.counters.monitorRestarts == 1)
        #expect(harness.nodes["node1"]!.resources.groupReports[0].recentMonitorFailures == 1)
    }

    /// A failure in the middle of a group restarts what follows it too, right to left, then left to right.
    @Test func aRestartTakesTheResourcesAfterItAlong() {
        let harness = bothUpMonitored()
        harness.kill("IPaddr::10.0.0.10", on: "node1")
        harness.run(for: .seconds(3))
        #expect(harness.running["node1"] == ["IPaddr::10.0.0.10", "service1"])
        let log = harness.log("node1")
        #expect(log.contains("restarting IPaddr::10.0.0.10 in place, with the resources after it"))
    }

    /// The third failure within the window moves the group to the live peer, which starts it.
    @Test func repeatedFailuresMoveTheGroupToThePeer() {
        let harness = bothUpMonitored()
        for _ in 0..<3 {
            harness.kill("service1", on: "node1")
            harness.run(for: .seconds(2))
        }
        harness.run(for: .seconds(2))
        #expect(harness.holders(of: "service1") == ["node2"])
        #expect(harness.holders(of: "IPaddr::10.0.0.10") == ["node2"])
        #expect(harness.log("node1").contains("service1 failed 3 times within 60.0 seconds: moving IPaddr::10.0.0.10 to node2"))
        #expect(harness.nodes["node1"]!.resources.counters.monitorFailovers == 1)
    }

    /// With no live peer the group has nowhere to go: at the third failure it stops here all the same (a node whose
    /// resource keeps failing must not go on serving), and starts again once the failures have expired.
    @Test func withoutALivePeerRepeatedFailuresStopTheGroupUntilTheyExpire() {
        let harness = ClusterHarness(
            groups: Self.groups,
            monitor: MonitorPolicy(interval: .milliseconds(500), timeout: .seconds(1), failuresBeforeFailover: 3, failureWindow: .seconds(10)))
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(3))
        harness.crash("node2")
        harness.run(for: .seconds(3))
        for _ in 0..<3 {
            harness.kill("service1", on: "node1")
            harness.run(for: .seconds(2))
        }
        #expect(!harness.running["node1"]!.contains("service1"))
        #expect(!harness.running["node1"]!.contains("IPaddr::10.0.0.10"))
        #expect(harness.log("node1").contains("stopping IPaddr::10.0.0.10 here (no live peer to move it to)"))
        harness.run(for: .seconds(12))
        #expect(harness.running["node1"]!.contains("service1"))
        #expect(harness.log("node1").contains("the monitor failures of IPaddr::10.0.0.10 expired"))
    }

    /// A restarted node starts from the epoch it had seen (the daemon keeps it in its state folder): its next
    /// acquisition is above it, never below a stale peer's copy.
    @Test func aRestartedNodeAcquiresAboveTheEpochItHadSeen() {
        var machine = ResourceManagerMachine(configuration: ResourceManagerConfiguration(
            localNode: "node1", peerNode: "node2", groups: Self.groups, autoFailback: .off, initialEpoch: 7))
        let now = MonotonicInstant(nanoseconds: 1_000_000_000)
        _ = machine.start(now: now)
        let actions = machine.peerStatusChanged(.dead, now: now)
        #expect(machine.highestEpochSeen == 8)
        #expect(actions.contains { if case .run(let operation, _, _) = $0 { operation.kind == .start } else { false } })
    }

    @Test func aFailedStartMovesTheGroupToThePeer() {
        let harness = ClusterHarness(groups: Self.groups)
        harness.failing = ["node1/service1/start"]
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(5))
        #expect(harness.holders(of: "service1") == ["node2"])
        #expect(harness.holders(of: "IPaddr::10.0.0.10") == ["node2"])
        #expect(harness.log("node1").contains("Giving up resources due to failure of service1"))
        // The group failed on node1, so node1 does not take it back (no ping-pong).
        harness.run(for: .seconds(3))
        #expect(harness.holders(of: "service1") == ["node2"])
    }

    @Test func aStopThatNeverSucceedsRunsTheLastResort() {
        let harness = bothUp()
        harness.failing = ["node1/service1/stop"]
        _ = harness.nodes["node1"]!.requestStandby(.all, now: harness.now)
        harness.run(for: .seconds(3))
        #expect(harness.environments["node1"]!.lastResorts == [.stopHeartbeats])
        #expect(harness.log("node1").contains("Resource STOP failure. Reboot required!"))
    }

    @Test func lostMessagesAreRetransmitted() {
        let harness = bothUp()
        let before = harness.nodes["node2"]!.membership.counters.retransmissionsReceived
        // Drop everything node1 sends for a moment, shorter than deadtime.
        harness.cutLinks = [0, 1]
        harness.run(for: .milliseconds(450))
        harness.cutLinks = []
        harness.run(for: .seconds(1))
        let counters = harness.nodes["node2"]!.membership.counters
        #expect(counters.retransmissionsRequested > 0)
        #expect(counters.retransmissionsReceived > before)
        #expect(harness.nodes["node2"]!.membership.status(of: "node1") == .active)
    }
}
