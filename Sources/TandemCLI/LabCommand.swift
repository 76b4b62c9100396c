import ArgumentParser
import Foundation
import TandemLab

/// `tandem lab`: the seeds' two-node MariaDB cluster on this machine, in namespaces, and its fault scenarios.
struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "Build a two-node MariaDB cluster in namespaces on this machine, break it, and show failover.",
        discussion: """
        node1 and node2 are machines of their own (network, mount, UTS and PID namespaces) running the production \
        replicad and heartbeatd with seed 001's configuration: drbddisk, Filesystem on /dev/drbd0, mysqld and the VIP \
        on eth1. A client machine reaches MariaDB through the VIP; a replica machine replicates from it. Addresses \
        are 10.216.0.0/16, used only inside the lab's namespaces. Needs root.
        """,
        subcommands: [
            Up.self, Down.self, Status.self, Failover.self, Scenario.self, Bench.self, MachineInit.self, PowerSwitch.self,
            FenceAgent.self,
        ])

    struct Options: ParsableArguments {
        @Option(name: .customLong("lab-dir"), help: ArgumentHelp("Where the lab keeps its disks, configuration and logs.", valueName: "dir"))
        var root = "/var/lib/tandem-lab"
        @Option(help: ArgumentHelp("Prefix of the lab's namespace names (1-8 letters and digits).", visibility: .hidden))
        var prefix = "tandem"
        @Option(name: .customLong("subnet-octet"), help: ArgumentHelp("The lab uses 10.N.0.0/16.", visibility: .hidden))
        var subnetOctet: UInt8 = 216

        func validate() throws {
            guard !prefix.isEmpty, prefix.count <= 8, prefix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
                throw ValidationError("--prefix must be 1 to 8 letters and digits")
            }
            guard subnetOctet >= 16, subnetOctet < 250 else { throw ValidationError("--subnet-octet must be 16...249") }
            if let problem = LabLayout(prefix: prefix, root: root, subnetOctet: subnetOctet).rootProblem {
                throw ValidationError(problem)
            }
        }

        var lab: Lab {
            Lab(layout: LabLayout(prefix: prefix, root: root, subnetOctet: subnetOctet), executable: Self.executable, say: emit)
        }

        static var executable: String {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        }
    }

    static func perform(_ body: () throws(LabError) -> Void) throws {
        do throws(LabError) {
            try body()
        } catch {
            printToStandardError("tandem lab: \(error.message)")
            throw ExitCode(error.exitCode)
        }
    }

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build the lab: namespaces, disks, create-md, initial sync, mkfs, install-db, the cluster.")
        @Flag(name: .customLong("no-replica"), help: "Leave out the replica machine.") var noReplica = false
        @Flag(help: "Fence through the lab's power switch (stonith_host in ha.cf): a silent node is powered off before the other takes over.")
        var stonith = false
        @Flag(help: "Run a witness (tandem witness) on the client machine and name it in ha.cf: on a split only the side it grants runs the group.")
        var witness = false
        @OptionGroup var options: Options
        func run() throws {
            let lab = options.lab
            try LabCommand.perform { () throws(LabError) in
                try lab.exclusively { () throws(LabError) in try lab.up(withReplica: !noReplica, stonith: stonith, witness: witness) }
                for line in try lab.statusLines() { emit(line) }
                emit("""

                    Look around:
                      tandem lab status                      the nodes, the VIP and replication
                      tandem lab scenario kill-node          power off the active node under load and watch it fail over
                      tandem lab failover                    a planned switchover
                      ip netns exec \(lab.layout.namespace(.client)) mariadb -h \(lab.layout.virtualAddress) -u \(LabLayout.databaseUser) -p\(LabLayout.databasePassword) \(LabLayout.databaseName)
                      \(lab.enterCommand(.node1).joined(separator: " ")) bash   a shell on node1 (tandem cl-status rscstatus, tandem adm status)
                      tandem lab down                        remove everything
                    """)
            }
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove the lab: its processes (by PID namespace), mounts, loop devices, namespaces and files. Safe to repeat.")
        @OptionGroup var options: Options
        func run() throws {
            let lab = options.lab
            var problems: [String] = []
            try LabCommand.perform { () throws(LabError) in
                problems = try lab.exclusively { lab.down() }
            }
            guard problems.isEmpty else {
                for problem in problems { printToStandardError("tandem lab down: \(problem)") }
                throw ExitCode(10)
            }
            emit("the lab is down")
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the nodes, who serves the VIP, replication and the replica.")
        @OptionGroup var options: Options
        func run() throws {
            let lab = options.lab
            try LabCommand.perform { () throws(LabError) in
                for line in try lab.statusLines() { emit(line) }
            }
        }
    }

    struct Failover: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move the service to the other node under load (tandem takeover there) and show the timeline.")
        @Option(name: .customLong("load-seconds"), help: "Seconds of load after the move.") var loadSeconds: Double = 2
        @OptionGroup var options: Options
        func validate() throws {
            guard loadSeconds >= 0, loadSeconds <= 3600 else { throw ValidationError("--load-seconds must be 0...3600") }
        }
        func run() throws {
            try runScenario(.switchover, lab: options.lab, loadSeconds: loadSeconds)
        }
    }

    struct Scenario: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run fault scenarios under load: " + LabScenario.allCases.map(\.rawValue).joined(separator: ", ") + ", or all.")
        @Argument(help: "The scenarios to run, in order (all: every one).") var names: [String]
        @Option(name: .customLong("load-seconds"), help: "Seconds of load after the recovery.") var loadSeconds: Double = 2
        @OptionGroup var options: Options

        func validate() throws {
            guard !names.isEmpty else { throw ValidationError("name a scenario: \(LabScenario.allCases.map(\.rawValue).joined(separator: ", ")) or all") }
            for name in names where name != "all" && LabScenario(rawValue: name) == nil {
                throw ValidationError("unknown scenario '\(name)': \(LabScenario.allCases.map(\.rawValue).joined(separator: ", ")) or all")
            }
            guard loadSeconds >= 0, loadSeconds <= 3600 else { throw ValidationError("--load-seconds must be 0...3600") }
        }

        func run() throws {
            let scenarios = names.flatMap { $0 == "all" ? LabScenario.allCases : [LabScenario(rawValue: $0)!] }
            var failed: [String] = []
            for scenario in scenarios {
                do {
                    try runScenario(scenario, lab: options.lab, loadSeconds: loadSeconds)
                } catch {
                    failed.append(scenario.rawValue)
                }
            }
            if !failed.isEmpty {
                printToStandardError("tandem lab: failed: \(failed.joined(separator: ", "))")
                throw ExitCode(10)
            }
        }
    }

    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure failover (repeated kill-node trials) and throughput through the VIP.")
        @Option(help: "Number of kill-node trials (0: none).") var trials: Int = 10
        @Option(name: .customLong("sysbench-seconds"), help: "Seconds of each sysbench run (0: no sysbench).") var sysbenchSeconds: Int = 30
        @Option(name: .customLong("sysbench-threads"), help: "sysbench's client threads.") var sysbenchThreads: Int = 4
        @OptionGroup var options: Options
        func validate() throws {
            guard (0...100).contains(trials) else { throw ValidationError("--trials must be 0...100") }
            guard sysbenchSeconds == 0 || (5...3600).contains(sysbenchSeconds) else { throw ValidationError("--sysbench-seconds must be 0 or 5...3600") }
            guard (1...64).contains(sysbenchThreads) else { throw ValidationError("--sysbench-threads must be 1...64") }
        }
        func run() throws {
            let lab = options.lab
            try LabCommand.perform { () throws(LabError) in
                var summary: [String] = []
                try lab.exclusively { () throws(LabError) in
                    if trials > 0 { summary += try lab.benchFailover(trials: trials) }
                    if sysbenchSeconds > 0 { summary += try lab.benchThroughput(seconds: sysbenchSeconds, threads: sysbenchThreads) }
                }
                emit("")
                for line in summary { emit(line) }
            }
        }
    }

    struct PowerSwitch: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "power-switch", abstract: "The lab's power switch (started by lab up --stonith).", shouldDisplay: false)
        @OptionGroup var options: Options
        func run() throws {
            throw ExitCode(LabPowerSwitch.serve(lab: options.lab))
        }
    }

    struct FenceAgent: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "fence-agent",
            abstract: "The lab's fence agent: name=value lines on stdin (action, port, socket), as fence agents read them.",
            shouldDisplay: false)
        func run() throws {
            var input = ""
            while input.utf8.count < 8192, let line = readLine() { input += line + "\n" }
            let status = LabFenceAgent.run(input: input, say: emit)
            if status != 0 { throw ExitCode(status) }
        }
    }

    struct MachineInit: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "machine-init", abstract: "Pid 1 of a lab machine (started by lab up).", shouldDisplay: false)
        @Option(help: "node1, node2, client or replica.") var host: String
        @Option(name: .customLong("outer-mount-namespace"), help: "The starting lab's mount namespace, which this one must not be.")
        var outerMountNamespace: String
        @OptionGroup var options: Options
        func run() throws {
            guard let machine = LabHost(rawValue: host) else { throw ValidationError("unknown machine \(host)") }
            throw ExitCode(TandemLab.MachineInit.run(
                layout: LabLayout(prefix: options.prefix, root: options.root, subnetOctet: options.subnetOctet), host: machine,
                outerMountNamespace: outerMountNamespace))
        }
    }
}

private func runScenario(_ scenario: LabScenario, lab: Lab, loadSeconds: Double) throws {
    try LabCommand.perform { () throws(LabError) in
        let report = try lab.exclusively { () throws(LabError) in
            try lab.run(scenario, loadAfterRecovery: .milliseconds(Int64(loadSeconds * 1000)))
        }
        for line in report.lines() { emit(line) }
        if !report.passed { throw LabError(.failed, "scenario \(scenario.rawValue) failed") }
    }
}

/// Prints a line at once, unbuffered: the lab's steps are followed live, often through a pipe.
@Sendable private func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
