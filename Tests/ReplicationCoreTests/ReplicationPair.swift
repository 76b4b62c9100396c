import ReplicationCore
import TandemConfig

/// Two replication machines wired back to back in memory. Packets wait in a queue per direction until the test
/// delivers them, and every disk operation waits until the test completes it: the exact interleavings that the
/// seeded simulator reaches only by luck can be written down and replayed here.
struct ReplicationPair {
    enum DiskOperation: Equatable {
        case write(BlockRange)
        case zeroes(BlockRange)
        case read(BlockRange)
        case flush
    }

    static let deviceBytes: UInt64 = 16 << 20

    var machines: [ReplicationMachine]
    /// Packets on their way to each node, oldest first.
    var inbox: [[Packet]] = [[], []]
    /// Everything each node sent, in order.
    var sent: [[Packet]] = [[], []]
    /// Disk operations each node submitted and the test has not completed yet.
    var pendingDisk: [[(token: UInt64, operation: DiskOperation)]] = [[], []]
    var completedWrites: [[UInt64: RequestOutcome]] = [[:], [:]]
    var commandOutcomes: [[UInt64: CommandOutcome]] = [[:], [:]]
    var logs: [[String]] = [[], []]
    var handlersRun: [[DrbdHandler]] = [[], []]
    var completedFlushes: [[UInt64: RequestOutcome]] = [[:], [:]]
    /// Reasons each node gave for closing the connection.
    var dropped: [[String]] = [[], []]
    var now = MonotonicInstant(nanoseconds: 1_000_000_000)
    private var nextCommandID: UInt64 = 1

    init(settings: ReplicationSettings = ReplicationSettings()) {
        let blockCount = Int(Self.deviceBytes / SyncBitmap.blockBytes)
        let recovered = RecoveredMetadata(
            superblock: SuperblockState(uuids: .created, flags: [], agreedSizeBytes: 0), wasUnclean: false,
            bitmapWords: [UInt64](repeating: 0, count: blockCount / 64),
            activityLog: ActivityLog(capacityExtents: settings.activityLogExtents, ringSlots: settings.activityLogRingSlots),
            sizeBytes: Self.deviceBytes)
        machines = (0..<2).map { node in
            ReplicationMachine(settings: settings, recovered: recovered, randomSeed: UInt64(node + 1))
        }
        for node in 0..<2 { apply(node, machines[node].start(now: now)) }
    }

    /// Both nodes connected, UpToDate/UpToDate (initial sync skipped), node 0 Primary.
    static func connectedWithPrimary(settings: ReplicationSettings = ReplicationSettings()) -> ReplicationPair {
        var pair = ReplicationPair(settings: settings)
        pair.command(0, .connect(discardMyData: false))
        pair.command(1, .connect(discardMyData: false))
        pair.connectTransports()
        pair.command(0, .newCurrentUUID(clearBitmap: true))
        pair.deliverAll()
        pair.command(0, .promote(force: false))
        pair.deliverAll()
        return pair
    }

    func status(_ node: Int) -> ReplicationStatus { machines[node].status }

    mutating func handle(_ node: Int, _ event: ReplicationEvent) {
        now = now + .milliseconds(1)
        apply(node, machines[node].handle(event, now: now))
    }

    @discardableResult
    mutating func command(_ node: Int, _ command: OperatorCommand) -> CommandOutcome? {
        let id = nextCommandID
        nextCommandID += 1
        handle(node, .command(id: id, command))
        return commandOutcomes[node][id]
    }

    /// The replication link breaks: both nodes lose the transport, and whatever was on the wire is gone.
    mutating func cutLink() {
        inbox = [[], []]
        for node in 0..<2 { handle(node, .transportLost(reason: "link cut")) }
    }

    mutating func connectTransports() {
        for node in 0..<2 { handle(node, .transportConnected(challenge: [UInt8](repeating: UInt8(node + 1), count: 64))) }
        deliverAll()
    }

    /// Delivers the oldest packet waiting for `node`.
    mutating func deliverOne(to node: Int) {
        handle(node, .packet(inbox[node].removeFirst()))
    }

    mutating func deliverAll(to node: Int) {
        while !inbox[node].isEmpty { deliverOne(to: node) }
    }

    /// Delivers what waits for `node` on one TCP connection only: the data and meta connections keep their own
    /// order, not each other's.
    mutating func deliverAll(to node: Int, on channel: PacketChannel) {
        while let index = inbox[node].firstIndex(where: { $0.channel == channel }) {
            handle(node, .packet(inbox[node].remove(at: index)))
        }
    }

    mutating func deliverAll() {
        while !inbox[0].isEmpty || !inbox[1].isEmpty {
            for node in 0..<2 where !inbox[node].isEmpty { deliverOne(to: node) }
        }
    }

    /// Completes the oldest pending disk operation of `node` that matches, with `result`.
    mutating func completeDisk(_ node: Int, where matches: (DiskOperation) -> Bool, result: LocalIOResult) {
        guard let index = pendingDisk[node].firstIndex(where: { matches($0.operation) }) else {
            preconditionFailure("node\(node) has no such pending disk operation: \(pendingDisk[node])")
        }
        let token = pendingDisk[node].remove(at: index).token
        handle(node, .localIOCompleted(token: token, result))
    }

    /// Completes every pending disk operation of `node` successfully, including those submitted meanwhile.
    mutating func completeAllDisk(_ node: Int) {
        while let next = pendingDisk[node].first {
            pendingDisk[node].removeFirst()
            let result: LocalIOResult
            switch next.operation {
            case .write, .zeroes: result = .written
            case .read(let range): result = .read([UInt8](repeating: 0, count: Int(range.sizeBytes)))
            case .flush: result = .flushed
            }
            handle(node, .localIOCompleted(token: next.token, result))
        }
    }

    private mutating func apply(_ node: Int, _ actions: [ReplicationAction]) {
        for action in actions {
            switch action {
            case .send(let packet):
                inbox[1 - node].append(packet)
                sent[node].append(packet)
            case .dropConnection(let reason):
                // Both TCP connections close: what was in flight is gone, and the peer notices.
                inbox = [[], []]
                dropped[node].append(reason)
                handle(1 - node, .transportLost(reason: "the peer closed the connection"))
            case .submitWrite(let token, let range, _, _):
                pendingDisk[node].append((token, .write(range)))
            case .submitZeroes(let token, let range, _):
                pendingDisk[node].append((token, .zeroes(range)))
            case .submitRead(let token, let range):
                pendingDisk[node].append((token, .read(range)))
            case .submitFlush(let token):
                pendingDisk[node].append((token, .flush))
            case .completeWrite(let requestID, let outcome):
                completedWrites[node][requestID] = outcome
            case .commandCompleted(let commandID, let outcome):
                commandOutcomes[node][commandID] = outcome
            case .log(let line):
                logs[node].append(line)
            case .runHandler(let handler):
                handlersRun[node].append(handler)
            case .completeFlush(let requestID, let outcome):
                completedFlushes[node][requestID] = outcome
            case .connectTransport, .stopConnecting, .throttleReceiving, .persistSuperblock, .persistActivityLog,
                .persistBitmap, .preserveDivergedBlocks, .completeRead:
                break
            }
        }
    }
}
