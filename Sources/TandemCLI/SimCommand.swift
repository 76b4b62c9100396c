import ArgumentParser
import ReplicationCore
import TandemConfig
import TandemSimulator

/// `tandem sim`: replays deterministic simulation runs of the replication core and prints their trace.
struct SimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sim",
        abstract: "Run the deterministic replication simulator (one seed, or a range of seeds).",
        discussion: """
            Two nodes run the production replication driver over a simulated network and simulated disks. Faults \
            come from the seed; the checkers (no committed write lost, never two Primaries while connected, \
            identical images after resync, generations only move forward, every split brain detected, \
            convergence after healing) decide whether the run passed. A failing run prints its trace and the \
            command that replays it.
            """)

    @Option(help: "The seed of the (first) run.")
    var seed: UInt64 = 1

    @Option(help: "How many consecutive seeds to run, starting at --seed.")
    var count: Int = 1

    @Option(help: "Workload operations during the fault phase.")
    var steps: Int = 200

    @Option(name: .customLong("protocol"), help: "Replication protocol: A, B or C.")
    var replicationProtocol: String = "C"

    @Option(help: "Comma-separated faults: \(SimulationFaults.names.map(\.0).joined(separator: ",")), all or none.")
    var faults: String = "all"

    @Option(help: "A deliberate bug to switch on: ack-before-peer-write, skip-bitmap-on-disconnect, ignore-rule-90, skip-receiver-flushes.")
    var mutation: [String] = []

    @Flag(help: "Print the whole trace of each run, not just of failures.")
    var trace = false

    func run() throws {
        guard let parsedProtocol = ReplicationProtocol(rawValue: replicationProtocol.uppercased()) else {
            throw ValidationError("--protocol must be A, B or C, not '\(replicationProtocol)'")
        }
        guard let parsedFaults = SimulationFaults(names: faults) else {
            throw ValidationError("--faults: unknown fault in '\(faults)'; known: \(SimulationFaults.names.map(\.0).joined(separator: ", "))")
        }
        guard count >= 1, count <= 1_000_000, steps >= 0, steps <= 100_000 else {
            throw ValidationError("--count must be 1...1000000 and --steps 0...100000")
        }
        var mutations = ReplicationMutations()
        for name in mutation {
            switch name {
            case "ack-before-peer-write": mutations.acknowledgeProtocolCBeforePeerWrite = true
            case "skip-bitmap-on-disconnect": mutations.skipBitmapMarkingOnDisconnect = true
            case "ignore-rule-90": mutations.ignoreRule90 = true
            case "skip-receiver-flushes": mutations.skipReceiverFlushes = true
            default: throw ValidationError("--mutation: unknown mutation '\(name)'")
            }
        }
        var failures = 0
        for offset in 0..<UInt64(count) {
            var options = SimulationOptions(
                seed: seed &+ offset, steps: steps, replicationProtocol: parsedProtocol, faults: parsedFaults)
            options.mutations = mutations
            options.keepFullTrace = trace
            let result = Simulation(options: options).run()
            if trace || !result.passed { for line in result.trace { print(line) } }
            print(result.passed ? "PASS \(result.summary)" : "FAIL \(result.summary)")
            if !result.passed {
                failures += 1
                for violation in result.violations { print("  violation: \(violation)") }
                print("  replay: \(options.replayCommand) --trace")
            }
        }
        if count > 1 { print("\(count - failures) of \(count) runs passed") }
        if failures > 0 { throw ExitCode(1) }
    }
}
