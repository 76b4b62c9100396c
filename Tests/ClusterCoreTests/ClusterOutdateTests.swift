import CoreSupport
import FencingCore
import MembershipCore
import ResourceCore
import TandemConfig
import Testing

/// Resource-level fencing over the heartbeat links (dopd) through the production driver: `tandem fence-peer` on
/// one node has the peer outdate its disk and exits with DRBD's code.
@Suite struct ClusterOutdateTests {
    static let groups = [
        GroupDefinition(key: "drbddisk::r0", preferredNode: "node1", resources: ["drbddisk::r0", "mysqld"])
    ]

    func bothUp() -> ClusterHarness {
        let harness = ClusterHarness(groups: Self.groups, autoFailback: .off)
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(3))
        return harness
    }

    /// Sends the request from `node`, returning the request ID, or the immediate answer.
    func request(_ harness: ClusterHarness, from node: String, resource: String = "r0") -> PeerOutdateRequest {
        harness.nodes[node]!.requestPeerOutdate(resource: resource, now: harness.clock(node))
    }

    @Test("The requester hears the code the peer's outdate ended with", arguments: [
        FencePeerExitCode.peerOutdated, .peerInconsistent, .peerIsPrimary, .peerUnreachable, .refused,
    ])
    func thePeerAnswersWithItsCode(code: FencePeerExitCode) {
        let harness = bothUp()
        harness.outdateCodes["node2"] = code
        guard case .sent(let requestID, _) = request(harness, from: "node1") else {
            Issue.record("the request was not sent")
            return
        }
        harness.run(for: .seconds(1))
        let answers = harness.environments["node1"]!.outdateAnswers
        #expect(answers.map(\.requestID) == [requestID])
        #expect(answers.map(\.code) == [code])
        #expect(harness.log("node2").contains("node1 asks to outdate r0 here (request \(requestID))"))
    }

    @Test func aPeerMembershipCallsDeadIsUnreachableAtOnce() {
        let harness = bothUp()
        harness.cutLinks = [0, 1]
        harness.run(for: .seconds(2))
        guard case .answered(let code, let detail) = request(harness, from: "node1") else {
            Issue.record("a request was sent to a dead peer")
            return
        }
        #expect(code == .peerUnreachable)
        #expect(detail == "node2 is not reachable over the heartbeat links")
        #expect(harness.outdates.isEmpty)
    }

    @Test func aPeerLostBeforeItAnswersIsUnreachable() {
        let harness = bothUp()
        harness.freeze("node2")
        guard case .sent(let requestID, _) = request(harness, from: "node1") else {
            Issue.record("the request was not sent")
            return
        }
        harness.run(for: .milliseconds(500))
        #expect(harness.environments["node1"]!.outdateAnswers.isEmpty, "still waiting: the peer may answer")
        harness.run(for: .seconds(2))
        let answers = harness.environments["node1"]!.outdateAnswers
        #expect(answers.map(\.requestID) == [requestID])
        #expect(answers.map(\.code) == [.peerUnreachable])
        #expect(answers.first?.detail == "node2 was lost before it answered")
        // The frozen peer's late answer, once it thaws, finds nobody waiting.
        harness.thaw("node2")
        harness.run(for: .seconds(3))
        #expect(harness.environments["node1"]!.outdateAnswers.count == 1)
    }

    @Test func aNameThatIsNoResourceIsRefusedWithoutAsking() {
        let harness = bothUp()
        guard case .answered(let code, _) = request(harness, from: "node1", resource: "r0; reboot") else {
            Issue.record("a hostile resource name was sent")
            return
        }
        #expect(code == .refused)
    }

    @Test func malformedOutdateMessagesAreNotUnderstood() {
        var request = PeerOutdateMessage.request(resource: "r0", requestID: 0x1f).encode()
        #expect(PeerOutdateMessage(request) == .request(resource: "r0", requestID: 0x1f))
        request["drbd_resource"] = "../../etc"
        #expect(PeerOutdateMessage(request) == nil)
        var reply = PeerOutdateMessage.reply(requestID: 7, .peerOutdated).encode()
        #expect(PeerOutdateMessage(reply) == .reply(requestID: 7, .peerOutdated))
        reply["rc"] = "0"
        #expect(PeerOutdateMessage(reply) == nil, "0 is no fence-peer code")
        reply["rc"] = "4"
        reply["reqid"] = "zz"
        #expect(PeerOutdateMessage(reply) == nil)
    }

    @Test func answersToRequestsOfAnEarlierRunNeverMatch() {
        var first = PeerOutdateMachine(peer: "node2", firstRequestID: 1 << 32)
        let later = PeerOutdateMachine(peer: "node2", firstRequestID: 2 << 32)
        let now = MonotonicInstant(nanoseconds: 1)
        guard case .sent(let id, _) = first.request(resource: "r0", peerReachable: true, now: now) else {
            Issue.record("not sent")
            return
        }
        var restarted = later
        let actions = restarted.received(.reply(requestID: id, .peerOutdated), now: now)
        #expect(actions.allSatisfy { if case .answer = $0 { false } else { true } })
        #expect(first.tick(now: now + PeerOutdateMachine.answerTimeout) == [
            .answer(requestID: id, .peerUnreachable, detail: "node2 did not answer within \(PeerOutdateMachine.answerTimeout)")
        ])
    }
}
