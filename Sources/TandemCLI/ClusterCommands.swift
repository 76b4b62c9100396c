import ArgumentParser

/// Heartbeat's `hb_takeover`, `hb_standby` and `cl_status`. They talk to the cluster manager (`tandem
/// heartbeatd`), which this build does not contain yet.
enum ClusterVerb {
    static func unavailable(_ verb: String) -> ExitCode {
        printToStandardError(
            "tandem \(verb): the cluster manager (tandem heartbeatd) is not part of this build yet; nothing was changed"
        )
        return TandemExitCode.daemonUnavailable
    }
}

struct TakeoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "takeover", abstract: "Take resources over from the peer (Heartbeat's hb_takeover).")
    @Argument(help: "all, local or foreign (default all).") var which: String = "all"
    @OptionGroup var global: GlobalOptions
    func run() throws { throw ClusterVerb.unavailable("takeover") }
}

struct StandbyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "standby", abstract: "Give resources to the peer (Heartbeat's hb_standby).")
    @Argument(help: "all, local, foreign or failback (default all).") var which: String = "all"
    @OptionGroup var global: GlobalOptions
    func run() throws { throw ClusterVerb.unavailable("standby") }
}

struct ClusterStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cl-status",
        abstract: "Query the cluster manager (Heartbeat's cl_status).",
        discussion: "Queries: hbstatus, listnodes, nodetype NODE, listhblinks NODE, hblinkstatus NODE LINK, rscstatus."
    )
    @Argument(help: "The query and its arguments.") var query: [String] = []
    @OptionGroup var global: GlobalOptions
    func run() throws { throw ClusterVerb.unavailable("cl-status") }
}

struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Build a two-node MariaDB cluster in network namespaces and show failover (not yet available).")
    @Argument(help: "up, down, status, failover, scenario NAME or bench.") var action: [String] = []
    @OptionGroup var global: GlobalOptions
    func run() throws {
        printToStandardError(
            "tandem lab: not yet. The lab arrives with the replication daemon, the device frontend and the cluster manager. "
                + "What works today: tandem check and tandem adm dump on a configuration folder."
        )
        throw TandemExitCode.daemonUnavailable
    }
}
