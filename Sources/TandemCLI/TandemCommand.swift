import ArgumentParser

/// `tandem`: one executable for the replication daemon and its admin verbs, the cluster manager's verbs, configuration
/// checks and the lab.
public struct TandemCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "tandem",
        abstract: "Replicated block devices and failover for databases, in user space.",
        discussion: """
        Tandem reads the same files as DRBD and Heartbeat (drbd.conf, ha.cf, authkeys, haresources) from \
        --config-dir and answers to the same verbs. Exit codes: 0 success; 1 the configuration has problems; \
        10 the request was refused; 20 the daemon it needs is not available; 64 a usage error.
        """,
        subcommands: [SimCommand.self,
            AdmCommand.self,
            ReplicadCommand.self,
            CheckCommand.self,
            HeartbeatdCommand.self,
            StatusCommand.self,
            TakeoverCommand.self,
            StandbyCommand.self,
            FencePeerCommand.self,
            WitnessCommand.self,
            ClusterStatusCommand.self,
            LabCommand.self,
        ]
    )

    public init() {}
}

/// Exit codes shared by all verbs; documented in README.md and docs/config.md.
public enum TandemExitCode {
    public static let configurationProblems = ExitCode(1)
    public static let refused = ExitCode(10)
    public static let daemonUnavailable = ExitCode(20)
}

extension TandemCommand {
    /// Parses `arguments` and runs the verb, awaiting the asynchronous ones (`replicad`); exits as ArgumentParser
    /// does on errors.
    public static func run(arguments: [String]) async {
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
