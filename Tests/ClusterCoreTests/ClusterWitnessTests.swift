import CoreSupport
import FencingCore
import MembershipCore
import ResourceCore
import TandemConfig
import Testing

/// The witness (tiebreaker) through the production driver and the witness's own arbiter: on a split only the side
/// holding the witness's grant runs resources, and a node that loses both its peer and the witness stops its groups.
@Suite struct ClusterWitnessTests {
    static let groups = [
        GroupDefinition(key: "IPaddr::10.0.0.10", preferredNode: "node1", resources: ["IPaddr::10.0.0.10", "mysqld"])
    ]
    static let service = ["IPaddr::10.0.0.10", "mysqld"]

    func bothUp() -> ClusterHarness {
        let harness = ClusterHarness(groups: Self.groups, autoFailback: .off, witness: true)
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(4))
        return harness
    }

    @Test func cutHeartbeatLinksLeaveTheServiceWhereItRunsAndTheStandbyStartsNothing() {
        let harness = bothUp()
        #expect(harness.running["node1"] == Self.service)
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(6))
        #expect(harness.running["node1"] == Self.service)
        #expect(harness.running["node2"] == [])
        #expect(harness.doubleHolders.isEmpty, "\(harness.doubleHolders.count) steps with two holders")
        #expect(harness.nodes["node1"]!.hasQuorum)
        #expect(!harness.nodes["node2"]!.hasQuorum)
        #expect(harness.witness!.holder(node: "node1", peer: "node2") == "node1")
        #expect(harness.log("node2").contains("quorum lost: node1 and this node do not hear each other and the witness says: node1 holds the grant"))
        // The links come back: node2 has quorum again, and nothing moves.
        harness.cutLinks = []
        harness.run(for: .seconds(4))
        #expect(harness.nodes["node2"]!.hasQuorum)
        #expect(harness.running["node1"] == Self.service && harness.running["node2"] == [])
        #expect(harness.witness!.holder(node: "node1", peer: "node2") == nil, "the grant is given back once they hear each other")
    }

    @Test func aDeadActiveNodeIsTakenOverOnceTheWitnessCountsItGone() {
        let harness = bothUp()
        harness.crash("node1")
        harness.run(for: .milliseconds(1500))
        #expect(harness.running["node2"] == [], "the witness waits twice the deadtime of silence")
        harness.run(for: .seconds(3))
        #expect(harness.running["node2"] == Self.service)
        #expect(harness.log("node2").contains("the witness granted this node the cluster and node1 runs nothing: acting on node1's death"))
    }

    @Test func aNodeCutOffFromPeerAndWitnessStopsItsGroupsBeforeThePeerStartsThem() {
        let harness = bothUp()
        harness.cutLinks = [0, 1]
        harness.witnessUnreachable = ["node1"]
        harness.run(for: .seconds(6))
        #expect(harness.running["node1"] == [])
        #expect(harness.running["node2"] == Self.service)
        #expect(harness.doubleHolders.isEmpty, "\(harness.doubleHolders.count) steps with two holders")
        #expect(harness.environments["node1"]!.alerts.contains { $0.0 == .quorumLost })
    }

    @Test func losingTheWitnessAloneChangesNothing() {
        let harness = bothUp()
        harness.witnessUnreachable = ["node1", "node2"]
        harness.run(for: .seconds(5))
        #expect(harness.running["node1"] == Self.service)
        #expect(harness.nodes["node1"]!.hasQuorum && harness.nodes["node2"]!.hasQuorum)
    }

    @Test func losingTheWitnessAndThenThePeerStopsEverything() {
        let harness = bothUp()
        harness.witnessUnreachable = ["node1", "node2"]
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(5))
        #expect(harness.running["node1"] == [] && harness.running["node2"] == [])
        #expect(!harness.nodes["node1"]!.hasQuorum && !harness.nodes["node2"]!.hasQuorum)
        // The witness comes back: the node that still asks for the group's... both ask; node1's name sorts first.
        harness.witnessUnreachable = []
        harness.run(for: .seconds(4))
        let holders = [harness.running["node1"]!, harness.running["node2"]!].filter { !$0.isEmpty }
        #expect(holders == [Self.service], "exactly one node runs the group again: \(harness.running)")
        #expect(harness.doubleHolders.isEmpty)
    }

    @Test func aNodeStartingAloneWaitsForTheWitnessThenRunsEverything() {
        let harness = ClusterHarness(groups: Self.groups, autoFailback: .off, witness: true)
        harness.run(for: .seconds(3))  // the witness has been up for a while
        harness.boot("node2")
        harness.run(for: .seconds(6))
        #expect(harness.running["node2"] == Self.service)
        #expect(harness.witness!.holder(node: "node2", peer: "node1") == "node2")
    }

    @Test func forgedAndReplayedWitnessAnswersAreDropped() {
        let harness = bothUp()
        let forged = WitnessMessage.answer(WitnessAnswer(
            node: "node2", nonce: 1, granted: true, lease: .seconds(1), holder: "node2", reason: "forged")).encode()
        // Unsigned.
        harness.nodes["node2"]!.witnessDatagramReceived(HeartbeatWire.encode(forged), now: harness.now)
        // Signed, but answering no question node2 asked.
        let signed = MessageAuthenticator(keys: ClusterHarness.keys).sign(forged)
        harness.nodes["node2"]!.witnessDatagramReceived(HeartbeatWire.encode(signed), now: harness.now)
        harness.cutLinks = [0, 1]
        harness.witnessUnreachable = ["node2"]
        harness.run(for: .seconds(3))
        #expect(harness.running["node2"] == [])
        #expect(harness.nodes["node2"]!.wireCounters.badWitnessAnswers == 1)
    }

    @Test func theArbiterGrantsOneNodeAtATime() {
        var arbiter = WitnessArbiter(startedAt: .zero)
        let start = MonotonicInstant(nanoseconds: 10_000_000_000)
        func ask(_ node: String, sees: Bool, runs: Bool, at offset: Duration) -> WitnessAnswer {
            arbiter.asked(WitnessAsk(node: node, peer: node == "a" ? "b" : "a", seesPeer: sees, runsGroups: runs,
                                     deadtime: .seconds(1), nonce: 9), now: start + offset)
        }
        #expect(!ask("a", sees: true, runs: true, at: .zero).granted)
        #expect(!ask("b", sees: false, runs: false, at: .milliseconds(100)).granted, "a still hears b")
        #expect(ask("a", sees: false, runs: true, at: .milliseconds(200)).granted, "a runs the groups")
        #expect(!ask("b", sees: false, runs: false, at: .milliseconds(300)).granted)
        #expect(ask("a", sees: false, runs: true, at: .milliseconds(1100)).granted, "renewed")
        // a falls silent: its lease ends, and b must wait for two deadtimes of silence.
        #expect(!ask("b", sees: false, runs: false, at: .milliseconds(2500)).granted)
        #expect(ask("b", sees: false, runs: false, at: .milliseconds(3200)).granted)
        #expect(!ask("a", sees: false, runs: true, at: .milliseconds(3300)).granted, "b holds it now")
    }
}
