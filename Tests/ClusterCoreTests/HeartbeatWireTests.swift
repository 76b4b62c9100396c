import CoreSupport
import MembershipCore
import ResourceCore
import TandemConfig
import TandemDrivers
import Testing

@Suite struct HeartbeatWireTests {
    static func keys(_ method: AuthMethod, _ secret: String?, extra: [AuthKey] = []) -> Authkeys {
        let location = SourceLocation(file: "authkeys", line: 1, column: 1)
        return Authkeys(
            activeIndex: Located(1, at: location),
            keys: ([AuthKey(index: 1, method: method, secret: secret)] + extra).map { Located($0, at: location) })
    }

    static let body = HeartbeatMessage(fields: [
        .init("t", "status"), .init("st", "active"), .init("src", "node1"), .init("seq", "1"), .init("hg", "2"),
    ])

    @Test func classicFramingRoundTripsByteForByte() throws {
        let bytes = HeartbeatWire.encode(Self.body)
        #expect(String(decoding: bytes, as: UTF8.self) == ">>>\nt=status\nst=active\nsrc=node1\nseq=1\nhg=2\n<<<\n")
        #expect(try HeartbeatWire.decode(bytes) == Self.body)
        // Heartbeat sends its C string's terminating NUL.
        #expect(try HeartbeatWire.decode(bytes + [0]) == Self.body)
    }

    /// Digests computed independently (Python's hmac and zlib) over the same `name=value\n` body.
    @Test(arguments: [
        (AuthMethod.sha1, "19bd12b4de0ef07025bda722d28dd92e63ffdb7d"),
        (.md5, "3488fb9c1d955693224e10a5fac397b7"),
        (.sha256, "c44fb94556a2e89fdccdb674fe0cb203d95dd3e2fee7a6315d32c2a060c02fb6"),
        (.crc, "1ba59a59"),
    ])
    func signaturesMatchHeartbeatsComputation(method: AuthMethod, digest: String) {
        let authenticator = MessageAuthenticator(keys: Self.keys(method, method == .crc ? nil : "secret"))
        let signed = authenticator.sign(Self.body)
        #expect(signed["auth"] == "1 \(digest)")
        #expect(signed.fields.last?.name == "auth")
        #expect(authenticator.verify(signed) == .authentic)
    }

    @Test func anyKeyInTheFileIsAcceptedButOnlyTheActiveOneSigns() {
        let old = MessageAuthenticator(keys: Self.keys(.sha1, "old"))
        let rotating = MessageAuthenticator(
            keys: Self.keys(.sha1, "new", extra: [AuthKey(index: 2, method: .sha1, secret: "old")]).withActive(1))
        let fromOld = old.sign(Self.body)
        #expect(old.verify(fromOld) == .authentic)
        // Index 1 is "old" in one file and "new" in the other: a mismatch, never accepted.
        #expect(rotating.verify(fromOld) == .mismatch)
        var retagged = fromOld
        retagged["auth"] = "2 " + fromOld["auth"]!.split(separator: " ")[1]
        #expect(rotating.verify(retagged) == .authentic)
    }

    @Test func tamperingAndMissingSignaturesAreRejected() {
        let authenticator = MessageAuthenticator(keys: Self.keys(.sha1, "secret"))
        var tampered = authenticator.sign(Self.body)
        tampered["st"] = "dead"
        #expect(authenticator.verify(tampered) == .mismatch)
        #expect(authenticator.verify(Self.body) == .missing)
        var unknown = authenticator.sign(Self.body)
        unknown["auth"] = "9 00"
        #expect(authenticator.verify(unknown) == .unknownKey(9))
        unknown["auth"] = "garbage"
        #expect(authenticator.verify(unknown) == .malformed)
    }

    @Test(arguments: [
        ("no frame", "t=status\n"),
        ("no end", ">>>\nt=status\n"),
        ("unterminated field", ">>>\nt=status<<<\n"),
        ("no equals", ">>>\nstatus\n<<<\n"),
        ("empty name", ">>>\n=x\n<<<\n"),
        ("bad name", ">>>\nt y=x\n<<<\n"),
        ("control character", ">>>\nt=a\u{1}b\n<<<\n"),
        ("duplicate", ">>>\nt=a\nt=b\n<<<\n"),
        ("blank line", ">>>\nt=a\n\n<<<\n"),
    ])
    func malformedDatagramsAreRefusedWithAReason(name: String, text: String) {
        #expect(throws: HeartbeatWireError.self, "\(name)") { try HeartbeatWire.decode(Array(text.utf8)) }
    }

    @Test func oversizedAndFieldFloodsAreRefused() {
        #expect(throws: HeartbeatWireError(.oversized, "16385 bytes, more than 16384")) {
            try HeartbeatWire.decode([UInt8](repeating: 0x41, count: HeartbeatWire.messageBytesMaximum + 1))
        }
        let flood = ">>>\n" + (0...HeartbeatWire.fieldsMaximum).map { "f\($0)=x\n" }.joined() + "<<<\n"
        #expect(throws: HeartbeatWireError.self) { try HeartbeatWire.decode(Array(flood.utf8)) }
    }

    @Test func resourceMessagesSurviveTheWire() {
        let messages: [ResourceMessage] = [
            .starting,
            .holdings(.init(selection: .local, groupKeys: ["IPaddr::10.0.0.10", "drbddisk::r0"]), stable: true),
            .holdings(.init(selection: .none, groupKeys: nil), stable: false),
            .conflictAnswer(.init(selection: .all, groupKeys: ["g"]), stable: true),
            .standby(.refuse, .init(selection: .all, groupKeys: ["g"]), reason: "node2 is not stable"),
            .takeover(.foreign),
            .shutdownDone,
        ]
        for message in messages {
            #expect(ResourceMessage(message.encode()) == message)
        }
    }
}

/// Hostile input reaches the driver, not just the codec: every kind is dropped and counted, and nothing changes.
@Suite struct HostileDatagramTests {
    @Test func wrongKeyGarbageOversizedAndReplaysAreDroppedAndCounted() throws {
        let harness = ClusterHarness(groups: ClusterScenarioTests.groups)
        harness.boot("node1")
        harness.boot("node2")
        harness.run(for: .seconds(3))
        let before = harness.running

        let forger = MessageAuthenticator(keys: HeartbeatWireTests.keys(.sha1, "not-the-key"))
        var takeover = ResourceMessage.takeover(.all).encode()
        takeover["src"] = "node1"
        takeover["seq"] = "ffff"
        takeover["hg"] = "1"
        harness.nodes["node2"]!.datagramReceived(HeartbeatWire.encode(forger.sign(takeover)), link: 0, now: harness.now)
        harness.nodes["node2"]!.datagramReceived(Array("garbage".utf8), link: 0, now: harness.now)
        harness.nodes["node2"]!.datagramReceived(
            [UInt8](repeating: 0x3E, count: HeartbeatWire.messageBytesMaximum + 1), link: 1, now: harness.now)

        // A correctly signed message from node1's previous incarnation (generation 0) is a replay.
        let genuine = MessageAuthenticator(keys: ClusterHarness.keys)
        var replay = ResourceMessage.takeover(.all).encode()
        replay["src"] = "node1"
        replay["seq"] = "1"
        replay["hg"] = "0"
        harness.nodes["node2"]!.datagramReceived(HeartbeatWire.encode(genuine.sign(replay)), link: 0, now: harness.now)
        harness.run(for: .seconds(2))

        let node2 = harness.nodes["node2"]!
        #expect(node2.wireCounters.badAuthentication == 1)
        #expect(node2.wireCounters.malformed == 1)
        #expect(node2.wireCounters.oversized == 1)
        #expect(node2.membership.counters.replaysRejected == 1)
        #expect(harness.log("node2").contains("attempted replay attack"))
        #expect(harness.log("node2").contains("Bad/invalid auth token"))
        #expect(harness.running == before)
    }
}

extension Authkeys {
    func withActive(_ index: UInt8) -> Authkeys {
        Authkeys(activeIndex: Located(index, at: activeIndex.location), keys: keys)
    }
}
