import ReplicationCore
import TandemConfig

/// The faults a simulation may inject. Everything is drawn from the run's seed.
public struct SimulationFaults: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Latency jitter on each channel; the data and meta channels overtake each other.
    public static let delay = SimulationFaults(rawValue: 1 << 0)
    /// Both directions cut for a while.
    public static let partition = SimulationFaults(rawValue: 1 << 1)
    /// One direction cut: each side sees the other differently.
    public static let asymmetricPartition = SimulationFaults(rawValue: 1 << 2)
    /// A connection reset (both TCP connections closed).
    public static let reset = SimulationFaults(rawValue: 1 << 3)
    /// A corrupted frame on the wire, which the codec must refuse (and the connection is then dropped).
    public static let corruption = SimulationFaults(rawValue: 1 << 4)
    /// Stale frames of a torn-down connection arrive after a new one is up; they must be ignored.
    public static let staleDelivery = SimulationFaults(rawValue: 1 << 5)
    /// A node's process and its disk's volatile cache die; it restarts from its metadata later.
    public static let crash = SimulationFaults(rawValue: 1 << 6)
    /// I/O errors on a range of a node's backing device.
    public static let ioError = SimulationFaults(rawValue: 1 << 7)
    /// The operator fails over: crash or demote the Primary and promote the other node.
    public static let failover = SimulationFaults(rawValue: 1 << 8)
    /// The operator promotes a disconnected Secondary: a split brain in the making.
    public static let splitBrain = SimulationFaults(rawValue: 1 << 9)
    /// Operator actions: disconnect/connect, invalidate, verify, pause/resume resync.
    public static let operatorActions = SimulationFaults(rawValue: 1 << 10)

    public static let all: SimulationFaults = [
        .delay, .partition, .asymmetricPartition, .reset, .corruption, .staleDelivery, .crash, .ioError, .failover,
        .splitBrain, .operatorActions,
    ]

    public static let names: [(String, SimulationFaults)] = [
        ("delay", .delay), ("partition", .partition), ("asymmetric", .asymmetricPartition), ("reset", .reset),
        ("corruption", .corruption), ("stale", .staleDelivery), ("crash", .crash), ("io-error", .ioError),
        ("failover", .failover), ("split-brain", .splitBrain), ("operator", .operatorActions),
    ]

    /// Parses a comma-separated list ("crash,partition", "all", "none").
    public init?(names list: String) {
        var faults: SimulationFaults = []
        for name in list.split(separator: ",").map({ String($0).filter { $0 != " " } }) where !name.isEmpty {
            if name == "all" { faults.formUnion(.all); continue }
            if name == "none" { continue }
            guard let match = Self.names.first(where: { $0.0 == name }) else { return nil }
            faults.insert(match.1)
        }
        self = faults
    }
}

/// One simulation run's parameters. The seed determines everything else.
public struct SimulationOptions: Sendable, Hashable {
    public var seed: UInt64
    /// Workload operations (writes and flushes) during the fault phase.
    public var steps = 200
    public var replicationProtocol: ReplicationProtocol = .c
    public var faults: SimulationFaults = .all
    public var mutations = ReplicationMutations()
    /// Keep the whole trace (for `tandem sim`); tests keep only the last lines for failure reports.
    public var keepFullTrace = false

    public init(seed: UInt64, steps: Int = 200, replicationProtocol: ReplicationProtocol = .c, faults: SimulationFaults = .all) {
        self.seed = seed
        self.steps = steps
        self.replicationProtocol = replicationProtocol
        self.faults = faults
    }

    /// The command that replays this run.
    public var replayCommand: String {
        var command = "tandem sim --seed \(seed) --steps \(steps) --protocol \(replicationProtocol.rawValue)"
        if faults != .all {
            let names = SimulationFaults.names.filter { faults.contains($0.1) }.map(\.0)
            command += " --faults \(names.isEmpty ? "none" : names.joined(separator: ","))"
        }
        if mutations.acknowledgeProtocolCBeforePeerWrite { command += " --mutation ack-before-peer-write" }
        if mutations.skipBitmapMarkingOnDisconnect { command += " --mutation skip-bitmap-on-disconnect" }
        if mutations.ignoreRule90 { command += " --mutation ignore-rule-90" }
        if mutations.skipReceiverFlushes { command += " --mutation skip-receiver-flushes" }
        return command
    }
}
