import ReplicationCore
import TandemConfig
import Testing

@testable import ReplicationDaemon

/// drbd.conf -> what a resource runs with: the replication settings, the transport, the handlers, and what is
/// refused or not applied.
@Suite("Resource plans from drbd.conf")
struct ResourcePlanTests {
    static func resource(_ text: String, name: String = "r0") throws -> DrbdResource {
        let parsed = try DrbdConfParser.parse(SourceFile(path: "/etc/tandem/drbd.conf", text: text))
        return try #require(parsed.model.resource(named: name))
    }

    static let hosts = """
        on alpha { device /dev/drbd0 minor 0; disk /dev/sdb1; address 10.0.0.1:7789; meta-disk internal; }
        on beta { device /dev/drbd0 minor 0; disk /dev/sdb1; address 10.0.0.2:7789; meta-disk internal; }
        """

    @Test("every option the machine has is taken from drbd.conf, with DRBD's units")
    func settingsFromOptions() throws {
        let resource = try Self.resource("""
            resource r0 {
              net {
                protocol B; after-sb-0pri discard-zero-changes; after-sb-1pri discard-secondary;
                after-sb-2pri call-pri-lost-after-sb; rr-conflict call-pri-lost; allow-two-primaries yes;
                always-asbp yes; cram-hmac-alg sha256; shared-secret "s3cret"; max-buffers 4096;
                max-epoch-size 1000; timeout 50; ko-count 4; ping-int 7; ping-timeout 8; connect-int 3;
                csums-alg sha1; verify-alg crc32c; data-integrity-alg md5; sndbuf-size 1M; rcvbuf-size 2M;
              }
              disk {
                on-io-error call-local-io-error; fencing resource-only; disk-flushes no; al-extents 3001;
                resync-rate 40M; c-plan-ahead 0; c-fill-target 2048; c-delay-target 20; c-max-rate 200M; c-min-rate 4M;
              }
              handlers { split-brain "/usr/lib/drbd/notify-split-brain.sh root"; fence-peer "tandem fence-peer"; }
            \(Self.hosts)
            }
            """)
        let plan = try ResourcePlan.make(resource: resource, node: "alpha", configPath: "/etc/tandem/drbd.conf")
        let settings = plan.settings
        #expect(settings.replicationProtocol == .b)
        #expect(settings.policies.zeroPrimaries == .discardZeroChanges)
        #expect(settings.policies.onePrimary == .discardSecondary)
        #expect(settings.policies.twoPrimaries == .callPriLostAfterSB)
        #expect(settings.policies.resyncConflict == .callPriLost)
        #expect(settings.policies.alwaysApplyToOlderAncestor)
        #expect(settings.allowTwoPrimaries)
        #expect(settings.authentication == PeerAuthentication(algorithm: .sha256, secret: Array("s3cret".utf8)))
        #expect(settings.maxBuffers == 4096 && settings.maxEpochSize == 1000)
        #expect(settings.requestTimeout == .seconds(20), "timeout 5 s x ko-count 4")
        #expect(settings.pingInterval == .seconds(7) && settings.pingTimeout == .milliseconds(800))
        #expect(settings.connectInterval == .seconds(3) && plan.transport.connectInterval == .seconds(3))
        #expect(settings.checksumResyncAlgorithm == .sha1 && settings.verifyAlgorithm == .crc32c)
        #expect(settings.integrityAlgorithm == "md5")
        #expect(settings.onIOError == .callLocalIOError && settings.fencing == .resourceOnly && !settings.diskFlushes)
        #expect(settings.activityLogExtents == 3001)
        #expect(settings.resync.rateBytesPerSecond == 40 << 20 && settings.resync.planAhead == .zero)
        #expect(settings.resync.fillTargetBytes == 2048 * 512 && settings.resync.delayTarget == .seconds(2))
        #expect(settings.resync.maxRateBytesPerSecond == 200 << 20 && settings.resync.minRateBytesPerSecond == 4 << 20)
        #expect(plan.transport.sendBufferBytes == 1 << 20 && plan.transport.receiveBufferBytes == 2 << 20)
        #expect(plan.transport.localAddress.description == "10.0.0.1:7789")
        #expect(plan.transport.peerAddress.description == "10.0.0.2:7789")
        #expect(plan.peerName == "beta" && plan.backingDisk == "/dev/sdb1" && plan.metaDisk == .internal)
        #expect(plan.handlers[.splitBrain] == "/usr/lib/drbd/notify-split-brain.sh root")
        let environment = plan.handlerEnvironment()
        #expect(environment["DRBD_RESOURCE"] == "r0" && environment["DRBD_PEER"] == "beta")
        #expect(environment["DRBD_PEER_ADDRESS"] == "10.0.0.2" && environment["DRBD_MINOR"] == "0")
    }

    @Test("DRBD's defaults give DRBD's timings: 6 s x ko-count 7, pings every 10 s")
    func defaults() throws {
        let plan = try ResourcePlan.make(
            resource: try Self.resource("resource r0 {\n\(Self.hosts)\n}"), node: "beta", configPath: "drbd.conf")
        #expect(plan.settings.requestTimeout == .seconds(42))
        #expect(plan.settings.pingInterval == .seconds(10) && plan.settings.pingTimeout == .milliseconds(500))
        #expect(plan.settings.replicationProtocol == .c && plan.settings.authentication == nil)
        #expect(plan.peerName == "alpha" && plan.notApplied.isEmpty)
    }

    @Test("ko-count 0 turns the request timeout off; options the machine lacks are reported, not applied")
    func knockOutDisabledAndUnapplied() throws {
        let resource = try Self.resource("""
            resource r0 {
              net { ko-count 0; on-congestion pull-ahead; }
              disk { size 1G; md-flushes no; }
            \(Self.hosts)
            }
            """)
        let plan = try ResourcePlan.make(resource: resource, node: "alpha", configPath: "drbd.conf")
        #expect(plan.settings.requestTimeout == .seconds(86_400))
        #expect(plan.notApplied.count == 3)
        #expect(plan.notApplied.contains { $0.contains("on-congestion") })
        #expect(plan.notApplied.contains { $0.contains("disk { size }") })
    }

    @Test("what this build cannot run is refused with the reason", arguments: [
        ("resource r0 {\n on alpha { device /dev/drbd0 minor 0; disk /dev/sdb1; address 10.0.0.1:7789; meta-disk internal; }\n}",
         "exactly two hosts"),
        ("resource r0 {\n net { cram-hmac-alg sha1; }\n" + hosts + "\n}", "shared-secret"),
        ("resource r0 {\n net { csums-alg whirlpool; }\n" + hosts + "\n}", "csums-alg whirlpool is not supported"),
        ("resource r0 {\n" + hosts + "\n}", "no 'on gamma' section"),
        ("resource r0 {\n disk { fencing resource-only; }\n" + hosts + "\n}",
         "fencing resource-only needs a fence-peer handler"),
    ])
    func refusals(_ text: String, _ expected: String) throws {
        let node = expected.contains("gamma") ? "gamma" : "alpha"
        #expect {
            try ResourcePlan.make(resource: try Self.resource(text), node: node, configPath: "drbd.conf")
        } throws: { error in
            (error as? PlanError)?.message.contains(expected) == true
        }
    }
}
