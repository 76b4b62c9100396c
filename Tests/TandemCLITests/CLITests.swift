import Foundation
import TandemTestSupport
import Testing
@testable import TandemCLI

/// The `tandem` executable, driven as an operator drives it. `swift build --build-tests` builds it next to the tests.
@Suite("tandem CLI")
struct CLITests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let fixtures = packageRoot.appendingPathComponent("Tests/Fixtures").path

    static var executable: String { TandemExecutable.path(packageRoot: packageRoot) }

    static func tandem(_ arguments: String...) throws -> ExternalCommand.Output {
        try tandem(arguments)
    }

    static func tandem(_ arguments: [String]) throws -> ExternalCommand.Output {
        #expect(FileManager.default.isExecutableFile(atPath: executable), "build the tandem executable first")
        return try ExternalCommand.run(executable, arguments)
    }

    /// A private copy of a fixture folder with authkeys at mode 600, as it would be installed. Git does not keep
    /// file modes other than the executable bit, so the committed fixtures are 644.
    static func installedCopy(of fixture: String) throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-cli-\(UUID())").path
        try FileManager.default.copyItem(atPath: fixtures + "/" + fixture, toPath: directory)
        let authkeys = directory + "/authkeys"
        if FileManager.default.fileExists(atPath: authkeys) {
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: authkeys)
        }
        return directory
    }

    @Test("--help lists every verb group")
    func help() throws {
        let run = try Self.tandem("--help")
        #expect(run.status == 0)
        for verb in ["adm", "replicad", "check", "takeover", "standby", "cl-status", "lab"] {
            #expect(run.standardOutput.contains(verb), "missing \(verb) in:\n\(run.standardOutput)")
        }
        let adm = try Self.tandem("adm", "--help")
        for verb in ["dump", "create-md", "primary", "secondary", "connect", "verify", "invalidate", "status", "new-current-uuid"] {
            #expect(adm.standardOutput.contains(verb), "missing adm \(verb)")
        }
        let primary = try Self.tandem("adm", "primary", "--help")
        #expect(primary.standardOutput.contains("--force") && primary.standardOutput.contains("--config-dir"))
    }

    @Test("shell completion scripts are generated")
    func completion() throws {
        for shell in ["bash", "zsh", "fish"] {
            let run = try Self.tandem("--generate-completion-script", shell)
            #expect(run.status == 0)
            #expect(run.standardOutput.contains("tandem"))
        }
    }

    @Test("adm dump prints the normalized configuration; global options work before or after the verb")
    func dump() throws {
        let directory = Self.fixtures + "/seed004"
        let after = try Self.tandem("adm", "dump", "--config-dir", directory)
        let before = try Self.tandem("--config-dir", directory, "adm", "dump")
        let equalsForm = try Self.tandem("--config-dir=\(directory)", "adm", "dump", "all")
        #expect(after.status == 0, "\(after.standardError)")
        #expect(after.standardOutput == before.standardOutput)
        #expect(after.standardOutput == equalsForm.standardOutput)
        #expect(after.standardOutput.contains("resource data {"))
        #expect(after.standardOutput.contains("disk-flushes no;"))
        #expect(after.standardOutput.contains("meta-disk /dev/sdb2 [0];"))
        let one = try Self.tandem("adm", "dump", "data", "--config-dir", directory)
        #expect(one.status == 0 && !one.standardOutput.contains("global {"))
    }

    @Test("adm dump of an unknown resource or a broken file fails with the location")
    func dumpFailures() throws {
        let unknown = try Self.tandem("adm", "dump", "nosuch", "--config-dir", Self.fixtures + "/seed004")
        #expect(unknown.status == 1)
        #expect(unknown.standardError.contains("'nosuch' is not defined"))
        let broken = try Self.tandem("adm", "dump", "--config-dir", Self.fixtures + "/seed001-faithful")
        #expect(broken.status == 1)
        #expect(broken.standardError.contains("seed001-faithful/drbd.conf:5:1: error[drbd.unexpected-section]"))
        #expect(broken.standardOutput.isEmpty, "nothing half-printed on stdout")
    }

    @Test("verbs that need the replication daemon fail clearly with exit 20 when it is not running")
    func daemonVerbs() throws {
        let runDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-run-\(UUID())").path
        for verb in [["primary", "--force", "r0"], ["status"], ["up", "all"], ["role", "r0"]] {
            let run = try Self.tandem(
                ["adm"] + verb + ["--config-dir", Self.fixtures + "/seed004", "--run-dir", runDirectory])
            #expect(run.status == 20, "\(verb): \(run.standardError)")
            #expect(run.standardError.contains("the replication daemon is not running"), "\(run.standardError)")
        }
        let takeover = try Self.tandem("takeover")
        #expect(takeover.status == 20)
    }

    @Test("check passes on every seed configuration", arguments: ["seed001", "seed003", "seed004", "seed004-logs"])
    func checkSeeds(_ fixture: String) throws {
        let directory = try Self.installedCopy(of: fixture)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let run = try Self.tandem("check", "--config-dir", directory)
        #expect(run.status == 0, "\(run.standardError)")
        #expect(run.standardOutput.contains("0 error(s)"))
    }

    @Test("check reports every problem with file:line:column and exits 1", arguments: [
        ("seed001-faithful", "drbd.conf:5:1: error[drbd.unexpected-section]"),
        ("seed003-faithful", "global_common.conf:3:2: error[drbd.unexpected-token]"),
    ])
    func checkFailures(_ fixture: String, _ expected: String) throws {
        let directory = try Self.installedCopy(of: fixture)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let run = try Self.tandem("check", "--config-dir", directory)
        #expect(run.status == 1)
        #expect(run.standardError.contains(expected), "\(run.standardError)")
    }

    @Test("check of an empty folder says there is nothing to check")
    func checkEmpty() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-empty-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let run = try Self.tandem("check", "--config-dir", directory)
        #expect(run.status == 1)
        #expect(run.standardError.contains("check.nothing-to-check"))
    }

    @Test("global options before the verb are moved after it; everything after -- is left alone")
    func hoisting() {
        #expect(GlobalOptions.hoisted(["--node", "n1", "adm", "dump"]) == ["adm", "dump", "--node", "n1"])
        #expect(GlobalOptions.hoisted(["--config-dir=/x", "check"]) == ["check", "--config-dir=/x"])
        #expect(GlobalOptions.hoisted(["adm", "dump", "--node", "n1"]) == ["adm", "dump", "--node", "n1"])
        #expect(GlobalOptions.hoisted(["--run-dir", "/r", "adm", "connect", "--", "--node"])
                == ["adm", "connect", "--run-dir", "/r", "--", "--node"])
    }

    @Test("the node name comes from --node, then TANDEM_NODE, then uname -n")
    func nodeName() throws {
        var options = try GlobalOptions.parse(["--node", "alpha"])
        #expect(options.nodeName == "alpha")
        options = try GlobalOptions.parse([])
        #expect(!options.nodeName.isEmpty)
        #expect(options.configDirectory == "/etc/tandem" && options.runDirectory == "/run/tandem")
    }
}
