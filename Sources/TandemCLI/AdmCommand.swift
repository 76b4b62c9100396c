import ArgumentParser
import TandemConfig

/// `tandem adm VERB`: drbdadm's verbs. `dump` works from the configuration alone, `create-md` on the disks
/// directly; the others talk to the replication daemon (`tandem replicad`) over its control socket.
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
            DaemonVerb.PauseSync.self, DaemonVerb.ResumeSync.self, DaemonVerb.Outdate.self, DaemonVerb.ResumeIO.self,
            DaemonVerb.NewCurrentUUID.self,
            DaemonVerb.Role.self, DaemonVerb.ConnectionState.self, DaemonVerb.DiskState.self, DaemonVerb.Device.self,
            DaemonVerb.GetGenerationIdentifiers.self, DaemonVerb.ShowGenerationIdentifiers.self,
            DaemonVerb.Status.self, DaemonVerb.Proc.self, DaemonVerb.DumpMetadata.self,
            RestoreDiscardedCommand.self,
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
