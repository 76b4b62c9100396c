import Foundation
import TandemTestSupport
import Testing
@testable import TandemConfig

/// drbd-utils' own parsers are the external oracle: Tandem accepts exactly the drbd.conf fixtures that drbdadm
/// accepts (DRBD 8.3/8.4 syntax through drbdadm-84, DRBD 9 syntax through drbdadm), except for the documented
/// cases where Tandem is deliberately stricter, and for accepted files both agree on the effective values.
/// drbdadm's `dump` needs no kernel module. .ci/run installs drbd-utils; without it these tests fail loudly.
@Suite("drbdadm oracle")
struct DrbdAdmOracleTests {
    static let drbdadm84 = "/usr/lib/drbd/drbdadm-84"
    static let drbdadm9 = "/usr/sbin/drbdadm"

    /// Files drbdadm accepts and Tandem refuses on purpose; docs/config.md "Differences from drbdadm" gives the
    /// reasons. The test fails if drbdadm ever starts refusing one of these too, so the list stays true.
    static let deliberatelyStricter: Set<String> = [
        "malformed/drbd84/invalid-ipv4.conf",
        "malformed/drbd84/bad-after-sb-policy.conf",
        "malformed/drbd84/secret-too-long.conf",
        "malformed/drbd84/unclosed-at-end.conf",
        "malformed/drbd84/al-extents-out-of-range.conf",
        "malformed/drbd84/duplicate-volume.conf",
    ]

    static var fixtures: [String] {
        ["seed001", "seed001-faithful", "seed003", "seed003-faithful", "seed004", "seed004-logs", "seed004-faithful"]
            .map { "\($0)/drbd.conf" }
            + DrbdFixtures.files(in: "valid/drbd84") + DrbdFixtures.files(in: "valid/drbd9")
            + DrbdFixtures.files(in: "malformed/drbd84") + DrbdFixtures.files(in: "malformed/drbd9")
    }

    /// drbdadm 9 asks the kernel module for its version; there is none here, and dump does not need it.
    static let environment = ["DRBD_DONT_WARN_ON_VERSION_MISMATCH": "1"]

    static func oracle(for fixture: String) -> String {
        fixture.contains("/drbd9/") ? drbdadm9 : drbdadm84
    }

    @Test("drbd-utils is installed (the oracle must not be skipped)")
    func oracleIsInstalled() {
        #expect(FileManager.default.isExecutableFile(atPath: Self.drbdadm84), "install drbd-utils")
        #expect(FileManager.default.isExecutableFile(atPath: Self.drbdadm9), "install drbd-utils")
    }

    @Test("Tandem accepts a fixture exactly when drbdadm does, and they agree on its values", arguments: fixtures)
    func agreesWithDrbdadm(_ fixture: String) throws {
        let path = DrbdFixtures.path(fixture)
        let result = try ExternalCommand.run(Self.oracle(for: fixture), ["-c", path, "dump"], environment: Self.environment)
        let ours = Result { () throws(ConfigError) in try DrbdConfParser.load(path: path) }
        let oursAccepted = (try? ours.get()) != nil
        if Self.deliberatelyStricter.contains(fixture) {
            #expect(result.status == 0, "drbdadm now refuses \(fixture); remove it from deliberatelyStricter and docs/config.md")
            #expect(!oursAccepted)
            return
        }
        #expect(oursAccepted == (result.status == 0),
                "drbdadm exit \(result.status): \(result.standardError)\nTandem: \(ours)")
        guard case .success(let parsed) = ours, result.status == 0 else { return }
        let theirs = try DrbdConfParser.parse(SourceFile(path: path + ".drbdadm-dump", text: result.standardOutput)).model
        EffectiveValues.expectEqual(parsed.model, theirs, context: fixture)
    }

    @Test("drbdadm accepts `tandem adm dump` output and reads the same values from it", arguments: fixtures.filter {
        !$0.contains("malformed/") && !$0.contains("faithful")
    })
    func drbdadmAcceptsOurDump(_ fixture: String) throws {
        let ours = try DrbdConfParser.load(path: DrbdFixtures.path(fixture)).model
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-dump-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let dumpPath = directory + "/drbd.conf"
        try DrbdDump.render(ours).write(toFile: dumpPath, atomically: true, encoding: .utf8)
        let result = try ExternalCommand.run(Self.oracle(for: fixture), ["-c", dumpPath, "dump"], environment: Self.environment)
        #expect(result.status == 0, "drbdadm refused our dump: \(result.standardError)")
        guard result.status == 0 else { return }
        let theirs = try DrbdConfParser.parse(SourceFile(path: dumpPath + ".drbdadm-dump", text: result.standardOutput)).model
        EffectiveValues.expectEqual(ours, theirs, context: "dump of \(fixture)")
    }
}

/// The values the issue names as the ones that must agree with drbdadm: protocol, device, disk, meta-disk,
/// address, after-sb-*, rr-conflict, on-io-error and the resync rate.
enum EffectiveValues {
    static func expectEqual(_ ours: DrbdConfig, _ theirs: DrbdConfig, context: String) {
        #expect(ours.resources.map(\.name.value).sorted() == theirs.resources.map(\.name.value).sorted(), "\(context)")
        for resource in ours.resources {
            guard let other = theirs.resource(named: resource.name.value) else { continue }
            #expect(summary(resource) == summary(other), "\(context): resource \(resource.name.value)")
        }
    }

    static func summary(_ resource: DrbdResource) -> [String] {
        let options = resource.options
        var lines = [
            "protocol \(options.replicationProtocol)",
            "after-sb \(options.afterSplitBrainZeroPrimaries) \(options.afterSplitBrainOnePrimary) \(options.afterSplitBrainTwoPrimaries)",
            "rr-conflict \(options.resyncConflict)",
            "on-io-error \(options.onIOError)",
            "resync-rate \(options.resyncRateKiBPerSecond)",
        ]
        for host in resource.hosts.sorted(by: { $0.displayName < $1.displayName }) {
            lines.append("host \(host.displayName) address \(host.address?.value.description ?? "-")")
            // Per-volume disk options are not compared: drbdadm 8.4's dump does not print them (it keeps them),
            // so its output cannot tell. DrbdConfTests checks them against the fixture directly.
            for volume in host.volumes {
                lines.append("  volume \(volume.number) \(volume.device.value) \(volume.disk.value) \(volume.metaDisk.value)")
            }
        }
        for connection in resource.connections {
            let addresses = connection.addresses.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            lines.append("connection \(connection.hosts.map(\.value)) \(addresses) protocol \(connection.options.replicationProtocol)")
        }
        return lines
    }
}
