import ReplicationCore
import TandemConfig
import TandemSimulator
import Testing

/// Runs many seeded fault schedules per replication protocol. Every checker is active in every run; a failing run
/// prints its violations, the tail of its trace and the command that replays it.
@Suite("Simulator: seeded fault schedules")
struct SimulatorSeedTests {
    /// Seeds per protocol in `swift test`. A longer run is `tandem sim --seed 1 --count 20000`.
    static let seedsPerProtocol: UInt64 = 500
    static let stepsPerRun = 120
    /// Every fault the simulator knows, I/O errors included.
    static let faults = SimulationFaults.all

    /// Each protocol's seeds run in chunks, so that the test runner can spread them evenly over the cores.
    static let seedsPerChunk: UInt64 = 100
    static let chunks = Array(0..<seedsPerProtocol / seedsPerChunk)

    @Test("Protocol A keeps its guarantees over 500 seeded fault schedules", arguments: chunks)
    func protocolA(chunk: UInt64) { runSeeds(.a, firstSeed: 100_000 + chunk * Self.seedsPerChunk) }

    @Test("Protocol B keeps its guarantees over 500 seeded fault schedules", arguments: chunks)
    func protocolB(chunk: UInt64) { runSeeds(.b, firstSeed: 200_000 + chunk * Self.seedsPerChunk) }

    @Test("Protocol C keeps its guarantees over 500 seeded fault schedules", arguments: chunks)
    func protocolC(chunk: UInt64) { runSeeds(.c, firstSeed: 300_000 + chunk * Self.seedsPerChunk) }

    private func runSeeds(_ replicationProtocol: ReplicationProtocol, firstSeed: UInt64) {
        var failures: [String] = []
        for seed in firstSeed..<firstSeed + Self.seedsPerChunk {
            let options = SimulationOptions(
                seed: seed, steps: Self.stepsPerRun, replicationProtocol: replicationProtocol, faults: Self.faults)
            let result = Simulation(options: options).run()
            if !result.passed {
                failures.append(SimulationReport.failure(result))
            }
        }
        let range = "\(firstSeed)..<\(firstSeed + Self.seedsPerChunk)"
        #expect(
            failures.isEmpty,
            "\(failures.count) of the seeds \(range) failed:\n\(failures.prefix(3).joined(separator: "\n"))")
        print("\(replicationProtocol.rawValue): \(Self.seedsPerChunk - UInt64(failures.count)) of the seeds \(range) passed")
    }
}

/// The mutation check: a deliberately broken core must be caught by a checker within a bounded number of seeds.
@Suite("Simulator: mutations are caught")
struct SimulatorMutationTests {
    static let seedBudget: UInt64 = 200

    @Test("Acknowledging a protocol C write before the peer has it is caught")
    func acknowledgeBeforePeerWrite() {
        expectCaught(ReplicationMutations(acknowledgeProtocolCBeforePeerWrite: true), faults: [.failover, .crash, .delay])
    }

    @Test("Forgetting to mark the bitmap on disconnect is caught")
    func skipBitmapOnDisconnect() {
        expectCaught(ReplicationMutations(skipBitmapMarkingOnDisconnect: true), faults: [.reset, .partition, .crash])
    }

    @Test("Ignoring rule 90 (a split brain read as no sync) is caught")
    func ignoreRule90() {
        expectCaught(ReplicationMutations(ignoreRule90: true), faults: [.splitBrain])
    }

    @Test("Skipping the receiver's flushes (a disk cache taken for clean) is caught")
    func skipReceiverFlushes() {
        expectCaught(ReplicationMutations(skipReceiverFlushes: true), faults: [.crash, .failover, .delay])
    }

    private func expectCaught(_ mutations: ReplicationMutations, faults: SimulationFaults) {
        for seed in 1...Self.seedBudget {
            var options = SimulationOptions(seed: seed, steps: 200, replicationProtocol: .c, faults: faults)
            options.mutations = mutations
            let result = Simulation(options: options).run()
            if !result.passed {
                print("mutation caught by seed \(seed): \(result.violations.first ?? "")")
                return
            }
        }
        Issue.record("the mutation \(mutations) survived \(Self.seedBudget) seeds: the checkers are too weak")
    }
}
