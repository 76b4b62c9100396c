import ReplicationCore
import TandemConfig
import TandemDrivers

/// The result of one run.
public struct SimulationResult: Sendable {
    public var options: SimulationOptions
    /// What the checkers found; empty when the run is correct.
    public var violations: [String]
    /// The trace (all of it with `keepFullTrace`, otherwise the last lines).
    public var trace: [String]
    public var summary: String

    public var passed: Bool { violations.isEmpty }
}

enum SimulationEvent {
    case frame(to: Int, connectionID: UInt64, channel: PacketChannel, bytes: [UInt8])
    /// A copy of an earlier frame, delivered late (the stale-delivery fault).
    case replayedFrame(to: Int, connectionID: UInt64, channel: PacketChannel, bytes: [UInt8])
    case connectionClosed(node: Int, connectionID: UInt64, reason: String)
    case connectAttempt
    case diskDone(node: Int, incarnation: Int, token: UInt64, operation: DiskOperation)
    case tick(node: Int, incarnation: Int)
    case restart(node: Int)
    case command(node: Int, OperatorCommand)
    case clearIOErrors(node: Int)
    case promoteIfDisconnected(node: Int)
    case releaseHeldFrames
}

enum DiskOperation {
    case write(id: UInt64, forceUnitAccess: Bool, failed: Bool)
    case read(BlockRange, failed: Bool)
    case flush
}

/// A deterministic simulation of two nodes running the production replication driver over a simulated network and
/// simulated disks, with faults drawn from one seed. A safety phase (workload plus faults) is followed by a healing
/// phase, in which the operator does what the runbook says, and a liveness phase, in which the pair must converge to
/// Connected UpToDate/UpToDate with byte-identical images that hold every committed write.
public final class Simulation {
    static let nanosecondsPerMillisecond: Int64 = 1_000_000
    static let deviceBytes: UInt64 = 32 << 20
    static let hotWindowBlocks: UInt64 = 96
    static let liveness: Int64 = 600_000 * nanosecondsPerMillisecond
    static let traceTailLines = 80

    let options: SimulationOptions
    let settings: ReplicationSettings
    var random: SplitMix64
    var now: Int64 = 0
    var queue = EventQueue<SimulationEvent>()
    var network = SimulatedNetwork()
    var disks: [SimulatedDisk]
    var metadata: [SimulatedMetadata]
    var nodes: [SimulatedReplicationNode?] = [nil, nil]
    var incarnations = [0, 0]
    var workload = Workload()
    var traceLines: [String] = []
    var violations: [String] = []
    var nextCommandID: UInt64 = 1
    var nextDiskOperationID: UInt64 = 1
    var corruptNextFrame = false
    var faultCounts: [String: Int] = [:]
    var staleFramesIgnored = 0
    var corruptFramesRefused = 0
    var recentFrames: [(UInt64, Int, PacketChannel, [UInt8])] = []
    var inFaultPhase = false
    var repairAttempts = 0

    // Checker state.
    var primaryWhileDisconnected = [false, false]
    var splitBrainLoggedSinceFlag = [false, false]
    var wasEstablished = [false, false]
    var lastSyncedAt: [Int64] = [0, 0]
    var crashTimes: [[Int64]] = [[], []]
    /// When each node lost its disk (detached after I/O errors): for the A/B loss windows, a failure like a crash.
    var diskLossTimes: [[Int64]] = [[], []]
    var hadDisk = [false, false]
    var retiredUUIDs: Set<UInt64> = []
    var lastCurrentUUID: [UInt64?] = [nil, nil]
    /// For a node in a resync as target: the source's current generation while both were in that resync, which the
    /// target adopts when the resync ends.
    var resyncDestination: [UInt64?] = [nil, nil]

    public init(options: SimulationOptions) {
        self.options = options
        var random = SplitMix64(seed: options.seed)
        self.settings = Self.settings(for: options, random: &random)
        self.random = random
        let blockCount = Self.deviceBytes / SyncBitmap.blockBytes
        let layout = Superblock.Layout(
            metadataSizeBytes: 1 << 20, activityLogOffsetBytes: 4096,
            activityLogSlots: UInt32(settings.activityLogRingSlots),
            activityLogExtents: UInt32(settings.activityLogExtents), bitmapOffsetBytes: 4096 * 9,
            bitmapBytes: (blockCount / BitmapPage.bitsPerPage + 1) * 4096, bytesPerBit: 4096)
        disks = (0..<2).map { _ in SimulatedDisk(sizeBytes: Self.deviceBytes) }
        let ringSlots = settings.activityLogRingSlots
        let capacityExtents = settings.activityLogExtents
        metadata = (0..<2).map { node in
            SimulatedMetadata(
                layout: layout, deviceUUID: UInt64(node + 1), ringSlots: ringSlots, capacityExtents: capacityExtents)
        }
    }

    /// Settings drawn from the seed, so that runs cover the policies and limits without a combinatorial test list.
    static func settings(for options: SimulationOptions, random: inout SplitMix64) -> ReplicationSettings {
        var settings = ReplicationSettings()
        settings.replicationProtocol = options.replicationProtocol
        settings.mutations = options.mutations
        settings.policies = SplitBrainPolicies(
            zeroPrimaries: AfterSplitBrainZeroPrimaries.allCases.randomElement(using: &random)!,
            onePrimary: [.disconnect, .consensus, .discardSecondary, .violentlyAs0p, .callPriLostAfterSB]
                .randomElement(using: &random)!,
            twoPrimaries: AfterSplitBrainTwoPrimaries.allCases.randomElement(using: &random)!)
        settings.maxBuffers = [4, 16, 2048].randomElement(using: &random)!
        settings.maxEpochSize = [2, 16, 2048].randomElement(using: &random)!
        settings.activityLogExtents = 7
        settings.activityLogRingSlots = 8
        settings.pingInterval = .seconds(1)
        settings.pingTimeout = .milliseconds(500)
        settings.requestTimeout = .seconds(4)
        settings.connectInterval = .milliseconds(500)
        settings.resync.planAhead = Bool.random(using: &random) ? .milliseconds(2000) : .zero
        settings.resync.rateBytesPerSecond = 40 << 20
        settings.resync.maxRateBytesPerSecond = 100 << 20
        settings.resync.minRateBytesPerSecond = 10 << 20
        settings.resync.fillTargetBytes = 1 << 20
        settings.checksumResyncAlgorithm = Bool.random(using: &random) ? .crc32c : nil
        settings.verifyAlgorithm = .crc32c
        if Bool.random(using: &random) {
            settings.authentication = PeerAuthentication(algorithm: .sha256, secret: Array("simulated-secret".utf8))
        }
        // disk-flushes stays on: without it a barrier acknowledgement says nothing about a volatile cache, which
        // is exactly why DRBD documents "disk-flushes no" as safe only with a battery-backed controller.
        return settings
    }

    // MARK: Running

    public func run() -> SimulationResult {
        setUp()
        inFaultPhase = true
        for _ in 0..<options.steps {
            runFor(milliseconds: Int64(random.next() % 40))
            if random.next() % 100 < 6 { injectFault() }
            workloadStep()
            if !violations.isEmpty { break }
        }
        inFaultPhase = false
        if violations.isEmpty { heal() }
        if violations.isEmpty { converge() }
        if violations.isEmpty { finalWorkloadAndChecks() }
        let trace: [String]
        if options.keepFullTrace {
            trace = traceLines
        } else {
            trace = violations.isEmpty ? [] : Array(traceLines.suffix(Self.traceTailLines))
        }
        return SimulationResult(options: options, violations: violations, trace: trace, summary: summary())
    }

    private func setUp() {
        for node in 0..<2 {
            metadata[node].write(SuperblockState(uuids: .created, flags: [], agreedSizeBytes: Self.deviceBytes))
            startNode(node)
        }
        queue.schedule(.connectAttempt, at: now)
        runUntil(limit: 30_000) { self.status(0)?.connection == .connected && self.status(1)?.connection == .connected }
        command(0, .newCurrentUUID(clearBitmap: true))
        runUntil(limit: 10_000) { self.status(1)?.disk == .upToDate }
        command(0, .promote(force: false))
        runUntil(limit: 10_000) { self.status(0)?.role == .primary }
        if status(0)?.role != .primary || status(1)?.disk != .upToDate {
            violations.append("setup failed: \(describe(0)) / \(describe(1))")
        }
    }

    func startNode(_ node: Int) {
        incarnations[node] += 1
        let recovered: RecoveredMetadata
        do {
            recovered = try metadata[node].recover(sizeBytes: Self.deviceBytes)
        } catch {
            violations.append("node \(node): metadata did not recover: \(error)")
            return
        }
        let environment = SimulatedEnvironment(simulation: self, node: node, incarnation: incarnations[node])
        var nodeSettings = settings
        if node == 1 {
            // discard-local and discard-remote are configured as a mirrored pair: they name the same victim.
            switch settings.policies.zeroPrimaries {
            case .discardLocal: nodeSettings.policies.zeroPrimaries = .discardRemote
            case .discardRemote: nodeSettings.policies.zeroPrimaries = .discardLocal
            default: break
            }
        }
        let machine = ReplicationMachine(settings: nodeSettings, recovered: recovered, randomSeed: random.next())
        nodes[node] = SimulatedReplicationNode(
            machine: machine, transport: environment, blocks: environment, metadata: environment, observer: environment)
        nodes[node]!.start(now: instant)
        trace(node, "started (incarnation \(incarnations[node])): \(describe(node))")
        queue.schedule(.tick(node: node, incarnation: incarnations[node]), at: now + 100 * Self.nanosecondsPerMillisecond)
        command(node, .connect(discardMyData: false))
    }

    var instant: MonotonicInstant { MonotonicInstant(nanoseconds: now) }

    func status(_ node: Int) -> ReplicationStatus? { nodes[node]?.status }

    func describe(_ node: Int) -> String {
        guard let status = status(node) else { return "down" }
        return "\(status.role.rawValue) \(status.connection.rawValue) \(status.disk)/\(status.peerDisk) oos:\(status.outOfSyncBytes / 1024)K inflight:\(status.requestsInFlight)/\(workload.busyBlocks[node].count) uuids:\(status.uuids)"
    }

    func deliver(_ node: Int, _ event: ReplicationEvent) {
        guard nodes[node] != nil else { return }
        nodes[node]!.handle(event, now: instant)
        observe()
    }

    func command(_ node: Int, _ command: OperatorCommand) {
        let id = nextCommandID
        nextCommandID += 1
        trace(node, "operator: \(command)")
        deliver(node, .command(id: id, command))
    }

    func trace(_ node: Int, _ line: String) {
        traceLines.append("[\(instant)] node\(node): \(line)")
        if !options.keepFullTrace && traceLines.count > 4 * Self.traceTailLines {
            traceLines.removeFirst(traceLines.count - Self.traceTailLines)
        }
    }

    func runFor(milliseconds: Int64) {
        let until = now + milliseconds * Self.nanosecondsPerMillisecond
        while let next = queue.nextTime, next <= until, violations.isEmpty {
            let (time, event) = queue.pop()!
            now = max(now, time)
            process(event)
        }
        now = max(now, until)
    }

    /// Runs until `condition` holds or `limit` milliseconds pass.
    @discardableResult
    func runUntil(limit milliseconds: Int64, _ condition: () -> Bool) -> Bool {
        let deadline = now + milliseconds * Self.nanosecondsPerMillisecond
        while now < deadline && violations.isEmpty {
            if condition() { return true }
            runFor(milliseconds: 10)
        }
        return condition()
    }
}
