import ArgumentParser
import TandemConfig

/// `tandem adm VERB`: drbdadm's verbs. `dump` works from the configuration alone; the others talk to the
/// replication daemon (`tandem replicad`).
public struct AdmCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "adm",
        abstract: "Administer replicated resources, with drbdadm's verbs.",
        subcommands: [
            DumpCommand.self,
            DaemonVerb.CreateMetadata.self, DaemonVerb.Up.self, DaemonVerb.Down.self,
            DaemonVerb.Attach.self, DaemonVerb.Detach.self, DaemonVerb.Connect.self, DaemonVerb.Disconnect.self,
            DaemonVerb.Primary.self, DaemonVerb.Secondary.self,
            DaemonVerb.Invalidate.self, DaemonVerb.InvalidateRemote.self, DaemonVerb.Verify.self,
            DaemonVerb.PauseSync.self, DaemonVerb.ResumeSync.self, DaemonVerb.Outdate.self,
            DaemonVerb.NewCurrentUUID.self,
            DaemonVerb.Role.self, DaemonVerb.ConnectionState.self, DaemonVerb.DiskState.self,
            DaemonVerb.GetGenerationIdentifiers.self, DaemonVerb.ShowGenerationIdentifiers.self,
            DaemonVerb.Status.self,
        ]
    )

    public init() {}
}

/// `tandem adm dump [RES|all]`: the effective configuration in drbd.conf syntax.
struct DumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump",
        abstract: "Print the effective, normalized drbd.conf (after includes, common and 8.3 spellings).",
        discussion: "The output parses back to the same configuration, and drbdadm accepts it."
    )

    @Argument(help: "A resource name, or 'all' (the default).")
    var resources: [String] = []

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let path = global.path("drbd.conf")
        let parsed: Parsed<DrbdConfig>
        do {
            parsed = try DrbdConfParser.load(path: path)
        } catch {
            printToStandardError(error.description)
            throw TandemExitCode.configurationProblems
        }
        for diagnostic in parsed.diagnostics { printToStandardError(diagnostic.description) }
        let wanted = resources.isEmpty || resources == ["all"] ? nil : resources
        for name in wanted ?? [] where parsed.model.resource(named: name) == nil {
            printToStandardError("tandem adm dump: '\(name)' is not defined in \(path)")
            throw TandemExitCode.configurationProblems
        }
        print("# \(path)")
        print(DrbdDump.render(parsed.model, resources: wanted), terminator: "")
    }
}

/// The verbs that act on a running resource. They need `tandem replicad`, which this build does not contain yet;
/// they exist so that scripts and `--help` see the whole drbdadm surface, and they fail clearly.
enum DaemonVerb {
    struct ResourceArguments: ParsableArguments {
        @Argument(help: "Resource names, or 'all'.")
        var resources: [String] = ["all"]
    }

    static func unavailable(_ verb: String) -> ExitCode {
        printToStandardError(
            "tandem adm \(verb): the replication daemon (tandem replicad) is not part of this build yet; "
                + "nothing was changed"
        )
        return TandemExitCode.daemonUnavailable
    }

    struct CreateMetadata: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create-md", abstract: "Write fresh metadata (refuses to overwrite existing metadata without --force).")
        @OptionGroup var target: ResourceArguments
        @Flag(help: "Overwrite existing metadata.") var force = false
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("create-md") }
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "up", abstract: "Attach the disk and connect to the peer.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("up") }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "down", abstract: "Disconnect and detach (refused while the device is in use).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("down") }
    }

    struct Attach: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "attach", abstract: "Attach the backing disk.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("attach") }
    }

    struct Detach: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "detach", abstract: "Detach the backing disk and continue diskless.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("detach") }
    }

    struct Connect: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "connect", abstract: "Connect to the peer.")
        @OptionGroup var target: ResourceArguments
        @Flag(name: .customLong("discard-my-data"), help: "Resolve a split brain by giving up this node's changes.")
        var discardMyData = false
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("connect") }
    }

    struct Disconnect: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "disconnect", abstract: "Drop the connection and stay StandAlone.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("disconnect") }
    }

    struct Primary: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "primary", abstract: "Promote to Primary.")
        @OptionGroup var target: ResourceArguments
        @Flag(name: [.customLong("force"), .customLong("overwrite-data-of-peer")], help: "Promote without UpToDate data; the peer is overwritten.")
        var force = false
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("primary") }
    }

    struct Secondary: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "secondary", abstract: "Demote to Secondary (refused while the device is in use).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("secondary") }
    }

    struct Invalidate: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "invalidate", abstract: "Mark the local data out of date and resync it from the peer.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("invalidate") }
    }

    struct InvalidateRemote: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "invalidate-remote", abstract: "Mark the peer's data out of date and resync it from here.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("invalidate-remote") }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "verify", abstract: "Compare both disks online and mark differences out of sync.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("verify") }
    }

    struct PauseSync: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "pause-sync", abstract: "Pause a running resync.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("pause-sync") }
    }

    struct ResumeSync: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "resume-sync", abstract: "Resume a paused resync.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("resume-sync") }
    }

    struct Outdate: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "outdate", abstract: "Mark the local data Outdated (the fencing hook).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("outdate") }
    }

    struct NewCurrentUUID: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "new-current-uuid", abstract: "Start a new data generation.")
        @OptionGroup var target: ResourceArguments
        @Flag(name: .customLong("clear-bitmap"), help: "Also clear the bitmap (skip the initial sync of fresh disks).")
        var clearBitmap = false
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("new-current-uuid") }
    }

    struct Role: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "role", abstract: "Print local/peer roles.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("role") }
    }

    struct ConnectionState: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cstate", abstract: "Print the connection state.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("cstate") }
    }

    struct DiskState: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "dstate", abstract: "Print local/peer disk states.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("dstate") }
    }

    struct GetGenerationIdentifiers: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "get-gi", abstract: "Print the generation UUIDs, terse.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("get-gi") }
    }

    struct ShowGenerationIdentifiers: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show-gi", abstract: "Print the generation UUIDs, explained.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("show-gi") }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Print resource status in drbdadm-9 style.")
        @OptionGroup var target: ResourceArguments
        @Flag(help: "Print JSON.") var json = false
        @OptionGroup var global: GlobalOptions
        func run() throws { throw unavailable("status") }
    }
}
