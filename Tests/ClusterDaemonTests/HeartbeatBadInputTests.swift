import ClusterDaemon
import Foundation
import TandemTestSupport
import Testing

/// Hostile and broken input to a real heartbeatd: datagrams with a wrong key, a replayed generation, garbage and
/// oversized ones are dropped and counted, and change nothing; a broken ha.cf is refused at startup with file:line.
@Suite("heartbeatd bad input", .serialized, .timeLimit(.minutes(5)))
struct HeartbeatBadInputTests {
    @Test func hostileDatagramsAreDroppedAndCounted() async throws {
        let lab = try HeartbeatLab(haresources: HeartbeatClusterTests.group)
        defer { lab.tearDown() }
        try await lab.start(lab.node1)
        try await lab.start(lab.node2)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node1" }, "\(lab.describe())")

        // Sent from node2's namespace to node1's heartbeat port on eth1, as an attacker on the link would.
        let sender = """
            import hmac, hashlib, socket
            def frame(fields):
                return (">>>\\n" + "".join(f"{k}={v}\\n" for k, v in fields) + "<<<\\n").encode()
            def signed(fields, key):
                body = "".join(f"{k}={v}\\n" for k, v in fields).encode()
                return fields + [("auth", "1 " + hmac.new(key, body, hashlib.sha1).hexdigest())]
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            target = ("10.214.1.1", 6940)
            takeover = [("t", "hb_takeover"), ("rsc_hold", "all"), ("src", "node2"), ("seq", "ffff"), ("hg", "99"), ("ts", "0")]
            s.sendto(frame(signed(takeover, b"not-the-key")), target)
            replay = [("t", "hb_takeover"), ("rsc_hold", "all"), ("src", "node2"), ("seq", "1"), ("hg", "0"), ("ts", "0")]
            s.sendto(frame(signed(replay, b"tandem-lab-secret")), target)
            s.sendto(b"garbage", target)
            s.sendto(b">" * 20000, target)
            """
        let sent = try ExternalCommand.run(lab.ip, ["netns", "exec", lab.node2.namespace, "python3", "-c", sender])
        try #require(sent.status == 0, "\(sent.standardError)")
        #expect(await eventually(timeout: patience) {
            let counters = lab.status(lab.node1)?.counters ?? [:]
            return counters["badAuthentication"] == 1 && counters["malformed"] == 1 && counters["oversized"] == 1
                && counters["replaysRejected"] == 1
        }, "\(lab.status(lab.node1)?.counters ?? [:])")
        #expect(lab.haLog(lab.node1).contains("Bad/invalid auth token"))
        #expect(lab.haLog(lab.node1).contains("attempted replay attack"))
        #expect(lab.answeringNode() == "node1")
        #expect(lab.holdsAddress(lab.node1) && !lab.holdsAddress(lab.node2))
    }

    /// Key rotation as Heartbeat does it, with no restart: authkeys is re-read when it changes.
    @Test func authkeysAreReReadWhenTheyChange() async throws {
        let lab = try HeartbeatLab(haresources: HeartbeatClusterTests.group)
        defer { lab.tearDown() }
        try await lab.start(lab.node1)
        try await lab.start(lab.node2)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node1" }, "\(lab.describe())")
        func write(_ node: HeartbeatLab.Node, _ text: String) throws {
            try text.write(toFile: node.configDirectory + "/authkeys", atomically: true, encoding: .utf8)
            chmod(node.configDirectory + "/authkeys", 0o600)
        }
        // Both nodes learn the new key, then node1 signs with it: nothing is dropped.
        try write(lab.node2, "auth 1\n1 sha1 tandem-lab-secret\n2 sha256 rotated-secret\n")
        // As an operator would: switch the signing key only once every node accepts the new one.
        #expect(await eventually(timeout: patience) { lab.haLog(lab.node2).contains("authkeys changed") })
        try write(lab.node1, "auth 2\n1 sha1 tandem-lab-secret\n2 sha256 rotated-secret\n")
        #expect(await eventually(timeout: patience) { lab.haLog(lab.node1).contains("signing with key 2") })
        #expect(await eventually(timeout: patience) { (lab.status(lab.node2)?.counters["messagesReceived"] ?? 0) > 20 })
        #expect(lab.status(lab.node2)?.counters["badAuthentication"] == 0)
        #expect(lab.status(lab.node2)?.peers.first?.status == "active")

        // node2 forgets the key node1 signs with: node1's messages are dropped and counted, and node2 stops seeing it.
        try write(lab.node2, "auth 1\n1 sha1 tandem-lab-secret\n")
        #expect(await eventually(timeout: patience) { (lab.status(lab.node2)?.counters["badAuthentication"] ?? 0) > 0 })
        #expect(await eventually(timeout: patience) { lab.status(lab.node2)?.peers.first?.status == "dead" })
    }

    @Test func aBrokenHaCfIsRefusedAtStartupWithItsLocation() throws {
        let lab = try HeartbeatLab(haresources: HeartbeatClusterTests.group, haCfExtra: "keepalives 2")
        defer { lab.tearDown() }
        let output = try ExternalCommand.run(lab.ip, [
            "netns", "exec", lab.node1.namespace, HeartbeatLab.executable, "heartbeatd", "--foreground", "--config-dir",
            lab.node1.configDirectory, "--run-dir", lab.node1.runDirectory, "--state-dir", lab.node1.stateDirectory,
            "--node", "node1",
        ])
        #expect(output.status == 1)
        #expect(output.standardError.contains("ha.cf:14:1: error"), "\(output.standardError)")
        #expect(output.standardError.contains("keepalive"), "\(output.standardError)")
        #expect(!FileManager.default.fileExists(atPath: lab.node1.runDirectory + "/heartbeatd.sock"))
    }
}
