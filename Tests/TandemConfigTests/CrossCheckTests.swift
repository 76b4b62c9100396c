import Foundation
import Testing
@testable import TandemConfig

/// `tandem check`'s cross-file checks, on seed 004's configuration with one thing changed at a time.
@Suite("cross-checks")
struct CrossCheckTests {
    /// A copy of seed004-logs (drbd.conf, ha.cf, authkeys at 600, haresources) with `edits` applied.
    static func check(editing edits: [String: (String) -> String]) throws -> CheckReport {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-cross-\(UUID())").path
        try FileManager.default.copyItem(atPath: DrbdFixtures.path("seed004-logs"), toPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: directory + "/authkeys")
        for (file, edit) in edits {
            let path = directory + "/" + file
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let edited = edit(text)
            #expect(edited != text, "the edit of \(file) changed nothing")
            try edited.write(toFile: path, atomically: true, encoding: .utf8)
        }
        return ConfigDirectory.check(directory: directory)
    }

    static func only(_ report: CheckReport, _ code: DiagnosticCode, file: String, line: Int) {
        let problems = report.diagnostics.filter { $0.severity >= .warning }
        #expect(problems.count == 1, "\(problems)")
        #expect(problems.first?.code == code, "\(problems)")
        #expect(problems.first?.location.file.hasSuffix("/" + file) == true, "\(problems)")
        #expect(problems.first?.location.line == line, "\(problems)")
    }

    @Test("seed 004's full configuration checks clean")
    func clean() throws {
        let report = try Self.check(editing: [:])
        #expect(report.diagnostics.isEmpty, "\(report.diagnostics)")
        #expect(report.filesChecked == ["drbd.conf", "ha.cf", "authkeys", "haresources"])
    }

    @Test("a drbd.conf host that is not an ha.cf node is an error at the host")
    func hostNotANode() throws {
        let report = try Self.check(editing: ["drbd.conf": { $0.replacing("on master2 {", with: "on mastr2 {") }])
        let errors = report.diagnostics.filter { $0.severity == .error }
        #expect(errors.map(\.code) == [.checkNodeMismatch])
        #expect(errors.first?.location.line == 47)
        #expect(errors.first?.hint == "did you mean 'master2'?")
    }

    @Test("drbddisk must name a defined resource")
    func unknownDrbddisk() throws {
        let report = try Self.check(editing: ["haresources": { $0.replacing("drbddisk::data", with: "drbddisk::dta") }])
        let errors = report.diagnostics.filter { $0.severity == .error }
        #expect(errors.first?.code == .checkUnknownResource)
        #expect(errors.first?.hint == "did you mean 'data'?")
    }

    @Test("a Filesystem on a replicated device path must be a defined resource's device")
    func unknownDevice() throws {
        let report = try Self.check(editing: ["haresources": { $0.replacing("/dev/drbd1::", with: "/dev/drbd7::") }])
        #expect(report.diagnostics.filter { $0.severity == .error }.map(\.code) == [.checkUnknownDevice])
    }

    @Test("a Filesystem on another device (a SAN path) is not ours to check")
    func sanDeviceIsFine() throws {
        let report = try Self.check(editing: ["haresources": { $0.replacing("/dev/drbd1::/data", with: "/dev/mpath/mpath2p1::/data") }])
        #expect(!report.hasErrors, "\(report.diagnostics)")
    }

    @Test("a Filesystem before the drbddisk that promotes its device is refused")
    func filesystemBeforePromotion() throws {
        let report = try Self.check(editing: ["haresources": {
            $0.replacing("drbddisk::data Filesystem::/dev/drbd1::/data::ext3", with: "Filesystem::/dev/drbd1::/data::ext3 drbddisk::data")
        }])
        let errors = report.diagnostics.filter { $0.severity == .error }
        #expect(errors.map(\.code) == [.checkResourceOrder])
        #expect(errors.first?.hint?.contains("drbddisk::data before") == true)
    }

    @Test("a floating IP that is a replication address collides")
    func vipCollision() throws {
        let report = try Self.check(editing: ["haresources": { $0.replacing("IPaddr::192.168.4.1/16", with: "IPaddr::192.168.4.3/16") }])
        let errors = report.diagnostics.filter { $0.severity == .error }
        #expect(errors.map(\.code) == [.checkAddressCollision])
        #expect(errors.first?.message.contains("replication address of 'master2'") == true)
    }

    @Test("a preferred node that is not an ha.cf node is an error")
    func preferredNodeUnknown() throws {
        let report = try Self.check(editing: ["haresources": { $0.replacing("master1 IPaddr", with: "mastr1 IPaddr") }])
        let errors = report.diagnostics.filter { $0.severity == .error }
        #expect(errors.map(\.code) == [.checkNodeMismatch])
        #expect(errors.first?.location.file.hasSuffix("/haresources") == true)
    }

    @Test("an authkeys file readable by others is refused with the fix")
    func insecureAuthkeys() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-cross-\(UUID())").path
        try FileManager.default.copyItem(atPath: DrbdFixtures.path("seed004-logs"), toPath: directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: directory + "/authkeys")
        let report = ConfigDirectory.check(directory: directory)
        #expect(report.diagnostics.first?.code == .authkeysInsecurePermissions)
        #expect(report.diagnostics.first?.hint?.contains("chmod 600") == true)
    }
}
