import TandemConfig

/// One node's replication state for one volume: DRBD's semantics as a pure value type.
///
/// Every input is a mutating method that takes `now` and returns the actions the driver must carry out, in order.
/// The machine never performs I/O, reads a clock or draws system randomness: the simulator drives the very same
/// code through thousands of seeded fault schedules. The parts live in extensions by concern:
/// `+Connection` (handshake, liveness, connection loss), `+Sender` (the Primary's write path: activity log,
/// epochs, transfer log), `+Receiver` (applying the peer's writes epoch by epoch), `+Resync` (bitmap exchange,
/// resync and verify) and `+Roles` (operator commands).
///
/// Legal states are those of docs/architecture.md; an impossible combination is a programmer error and traps with
/// the machine's state in the message.
public struct ReplicationMachine: Sendable {
    public let settings: ReplicationSettings
    /// Usable size of the device in bytes (a multiple of 4096).
    public let sizeBytes: UInt64
    var random: SplitMix64

    // Local, persistent state.
    public internal(set) var role: Role = .secondary
    public internal(set) var disk: DiskState
    public internal(set) var uuids: GenerationUUIDs
    public internal(set) var flags: MetadataFlags
    public internal(set) var bitmap: SyncBitmap
    public internal(set) var activityLog: ActivityLog
    /// Set at attach when the metadata says we crashed as Primary; cleared once the hot extents are resynced.
    var crashedPrimary: Bool

    // Connection.
    public internal(set) var connection: ConnectionState = .standAlone
    /// Counts transport connections, so that completions of I/O issued for an earlier connection never send on a
    /// later one.
    var connectionGeneration: UInt64 = 0
    var bitmapExchange: BitmapExchange?
    /// Where to go once a lost connection has drained: back to waiting for the peer, or StandAlone.
    var reconnectAfterDrain = true
    var handshake: Handshake?
    var peer = PeerView()
    var discardMyDataOnNextConnect = false
    var lastReceivedAt: MonotonicInstant = .zero
    var pingSentAt: MonotonicInstant?
    var pendingPromotion: PendingPromotion?
    /// An `invalidate-remote` waiting for the peer's answer.
    var pendingRemoteInvalidation: (commandID: UInt64, stateChangeID: UInt64)?
    var nextStateChangeID: UInt64 = 1

    // Application requests and the transfer log (sender side).
    var requests: [UInt64: WriteRequest] = [:]
    /// Request IDs sent to the peer and not yet covered by a barrier acknowledgement, by epoch, oldest first.
    var transferLog: [(epoch: UInt32, requestIDs: [UInt64])] = []
    var currentEpoch: UInt32 = 1
    var writesInCurrentEpoch = 0
    /// Set when any request completed upward: the next write starts a new epoch (write-after-write ordering).
    var epochClosedByCompletion = false
    var writesWaitingForActivityLog: [ApplicationWrite] = []
    /// Application writes held back until an overlapping resync read has been answered (SyncSource interlock).
    var writesHeldForResync: [ApplicationWrite] = []
    var readsFromPeer: [UInt64: UInt64] = [:]

    // Receiver side.
    var receivedEpochs = ReceivedEpochQueue()
    var receivingThrottled = false

    // Resync and verify.
    var resync: ResyncProgress?
    var verify: VerifyProgress?
    /// Source side: resync reads in flight, by I/O token, and requests held behind overlapping application writes.
    var resyncReadsInFlight: [UInt64: Range<UInt64>] = [:]
    var heldResyncRequests: [(BlockRequest, [UInt8]?)] = []
    var lastVerifyMismatchedBlocks: UInt64?
    /// `pause-sync` on this node. It outlives connections, like DRBD's user_isp; the peer's pause lives in PeerView
    /// because it ends with the connection and is announced again on the next one.
    var resyncPausedByUser = false

    // Resource-level fencing (+Fencing).
    /// Why the fence-peer handler runs, while it has not reported back.
    var peerFence: PeerFencePurpose?
    /// resource-and-stonith: application I/O held until the peer is fenced (DRBD's susp_fen).
    var suspendedIO: SuspendedIO?

    // Local I/O.
    var nextToken: UInt64 = 1
    var localIO: [UInt64: LocalIOPurpose] = [:]
    var gate = OverlapGate()
    var gatedWrites: [UInt64: GatedWrite] = [:]
    var diskCache = DiskCacheTracker()

    var outbox: [ReplicationAction] = []
    /// The time of the event being handled.
    var clock: MonotonicInstant = .zero

    /// A machine for metadata the driver just read at attach time.
    public init(settings: ReplicationSettings, recovered: RecoveredMetadata, randomSeed: UInt64) {
        precondition(recovered.sizeBytes % SyncBitmap.blockBytes == 0, "size \(recovered.sizeBytes) not 4 KiB aligned")
        self.settings = settings
        self.sizeBytes = recovered.sizeBytes
        self.random = SplitMix64(seed: randomSeed)
        self.uuids = recovered.superblock.uuids
        self.flags = recovered.superblock.flags
        self.bitmap = SyncBitmap(blockCount: recovered.sizeBytes / SyncBitmap.blockBytes, words: recovered.bitmapWords)
        self.activityLog = recovered.activityLog
        let crashedJustNow = recovered.superblock.flags.contains(.primaryIndicator)
        self.crashedPrimary = crashedJustNow || recovered.superblock.flags.contains(.crashedPrimary)
        self.disk = Self.diskStateAtAttach(recovered.superblock.flags)
        if disk == .consistent && (settings.fencing == .dontCare || flags.contains(.peerOutdated)) {
            // Without fencing nobody can have outdated us behind our back, and a peer known to be Outdated cannot
            // hold newer data: trust our last UpToDate state.
            disk = .upToDate
        }
        uuids.setPrimaryBit(false)
        if flags.contains(.fullSync) { bitmap.setAll() }
        if crashedJustNow { flags.insert(.crashedPrimary) }
        if recovered.wasUnclean {
            // The node stopped without a clean shutdown: bits set for its hot extents may not have reached the
            // on-disk bitmap, and a Primary's writes there may differ from the peer. Treat the hot extents as out of
            // sync (DRBD's activity-log replay).
            for extent in activityLog.hotExtents { bitmap.set(blocks(ofExtent: extent)) }
        }
    }

    /// Disk state after attach, from the superblock flags (reference drbd.md section 2).
    static func diskStateAtAttach(_ flags: MetadataFlags) -> DiskState {
        if !flags.contains(.consistent) { return .inconsistent }
        return flags.contains(.wasUpToDate) ? .consistent : .outdated
    }

    /// The state as `drbdadm status` shows it, and as the simulator's checkers read it.
    public var status: ReplicationStatus {
        ReplicationStatus(
            role: role, disk: disk, connection: connection, peerRole: peer.role, peerDisk: peer.disk, uuids: uuids,
            outOfSyncBytes: bitmap.setCount * SyncBitmap.blockBytes, resync: resync.map(\.figures),
            verifyMismatches: verify?.mismatchedBlocks ?? lastVerifyMismatchedBlocks, requestsInFlight: requests.count,
            ioSuspendedForFencing: suspendedIO != nil, fencingPeer: peerFence != nil)
    }

    /// /proc/drbd's queue depths. Computed on demand (they scan the requests), not with every `status`, which the
    /// simulator reads after every event.
    public var queueDepths: ReplicationQueueDepths {
        ReplicationQueueDepths(
            peerPendingWrites: requests.values.reduce(0) { $0 + ($1.network == .awaitingAck ? 1 : 0) },
            receivedWritesUnacknowledged: receivedEpochs.heldWrites,
            epochsInFlight: max(1, transferLog.count))
    }

    // MARK: Events

    /// The driver's entry point: one method per kind of input, each returning the actions to carry out.
    public mutating func handle(_ event: ReplicationEvent, now: MonotonicInstant) -> [ReplicationAction] {
        clock = now
        switch event {
        case .command(let id, let command): run(command, commandID: id, now: now)
        case .write(let write):
            if suspendedIO != nil { suspendedIO!.requests.append(.write(write)) } else { submit(write, now: now) }
        case .read(let requestID, let range):
            if suspendedIO != nil {
                suspendedIO!.requests.append(.read(requestID: requestID, range: range))
            } else {
                read(requestID: requestID, range: range, now: now)
            }
        case .flush(let requestID):
            if suspendedIO != nil { suspendedIO!.requests.append(.flush(requestID: requestID)) } else { flush(requestID: requestID, now: now) }
        case .fencePeerFinished(let exitStatus): peerFenceFinished(exitStatus: exitStatus, now: now)
        case .transportConnected(let challenge): transportConnected(challenge: challenge, now: now)
        case .transportLost(let reason): transportLost(reason: reason, now: now)
        case .packet(let packet): received(packet, now: now)
        case .localIOCompleted(let token, let result): localIOCompleted(token: token, result: result, now: now)
        case .tick: tick(now: now)
        }
        return takeActions()
    }

    /// Attach-time housekeeping the driver runs once: persist the crashed-primary state and mark the metadata
    /// "in use" so that a crash from here on is recognised.
    public mutating func start(now: MonotonicInstant) -> [ReplicationAction] {
        persistSuperblock()
        persistDirtyBitmapPages()
        emit(.log("attached: disk \(disk), UUIDs \(uuids)\(crashedPrimary ? ", crashed primary" : "")"))
        return takeActions()
    }

    /// A clean shutdown: the driver calls this after all I/O has drained, and persists what it returns.
    public mutating func shutdown() -> [ReplicationAction] {
        persistDirtyBitmapPages()
        uuids.setPrimaryBit(false)
        persistSuperblock(clean: true)
        return takeActions()
    }

    // MARK: Helpers shared by the extensions

    mutating func emit(_ action: ReplicationAction) {
        switch action {
        case .submitFlush(let token):
            diskCache.flushSubmitted(token: token)
        case .completeWrite, .completeFlush:
            // Fencing suspends I/O: nothing is acknowledged until the peer can no longer be promoted.
            if suspendedIO != nil { return suspendedIO!.completions.append(action) }
        default:
            break
        }
        outbox.append(action)
    }

    mutating func log(_ line: String) { emit(.log(line)) }

    mutating func takeActions() -> [ReplicationAction] {
        defer { outbox.removeAll(keepingCapacity: true) }
        return outbox
    }

    mutating func allocateToken(_ purpose: LocalIOPurpose) -> UInt64 {
        let token = nextToken
        nextToken += 1
        localIO[token] = purpose
        return token
    }

    mutating func freshUUID() -> UInt64 {
        // Never collide with the special values 0 and JUST_CREATED, nor carry the Primary bit.
        var value: UInt64
        repeat { value = random.next() & ~1 } while value <= GenerationUUIDs.justCreated
        return value
    }

    /// Writes the bitmap pages changed since the last write (nothing while Diskless, as for the superblock).
    mutating func persistDirtyBitmapPages() {
        guard hasLocalDisk else { return }
        emit(.persistBitmap(bitmap.takeDirtyPages()))
    }

    /// Writes the superblock. `clean` marks an orderly shutdown; otherwise the Primary indicator records that a
    /// Primary is running, so a crash is recognised at the next attach. A Diskless node has no metadata of its own:
    /// the detached disk's metadata keeps what it said when the disk left, which a later attach compares against.
    mutating func persistSuperblock(clean: Bool = false) {
        guard hasLocalDisk else { return }
        if role == .primary && !clean { flags.insert(.primaryIndicator) } else { flags.remove(.primaryIndicator) }
        if disk == .upToDate { flags.formUnion([.consistent, .wasUpToDate]) }
        if disk == .inconsistent { flags.remove([.consistent, .wasUpToDate]) }
        if disk == .outdated { flags.insert(.consistent); flags.remove(.wasUpToDate) }
        if crashedPrimary { flags.insert(.crashedPrimary) } else { flags.remove(.crashedPrimary) }
        if connection.isEstablished { flags.insert(.connectedIndicator) } else { flags.remove(.connectedIndicator) }
        if clean { flags.insert(.activityLogClean) } else { flags.remove(.activityLogClean) }
        emit(.persistSuperblock(SuperblockState(uuids: uuids, flags: flags, agreedSizeBytes: sizeBytes)))
    }

    func blocks(ofExtent extent: UInt32) -> Range<UInt64> {
        let perExtent = ActivityLog.extentBytes / SyncBitmap.blockBytes
        let first = UInt64(extent) * perExtent
        return min(first, bitmap.blockCount)..<min(first + perExtent, bitmap.blockCount)
    }

    func byteRange(_ range: BlockRange) -> Range<UInt64> { range.offsetBytes..<range.endBytes }

    /// The disk can serve application I/O.
    var hasUpToDateData: Bool { disk == .upToDate }

    /// The peer can take replicated writes: connected, and its disk is there (a SyncTarget receives writes too).
    var peerReceivesWrites: Bool {
        connection.isEstablished && peer.disk >= .inconsistent && peer.disk != .unknown
    }
}

/// Inputs to the machine.
public enum ReplicationEvent: Sendable, Hashable {
    case command(id: UInt64, OperatorCommand)
    case write(ApplicationWrite)
    case read(requestID: UInt64, range: BlockRange)
    case flush(requestID: UInt64)
    /// Both TCP connections to the peer are up. `challenge` is 64 bytes from the driver's CSPRNG: authentication
    /// challenges must be unpredictable, which a seeded generator is not.
    case transportConnected(challenge: [UInt8])
    case transportLost(reason: String)
    case packet(Packet)
    case localIOCompleted(token: UInt64, LocalIOResult)
    /// The fence-peer handler ended with this exit status; nil when it could not be run or exceeded its time limit.
    case fencePeerFinished(exitStatus: Int32?)
    /// Timers: pings, timeouts and resync pacing. The driver ticks every 100 ms.
    case tick
}

/// What `drbdadm status` and the checkers see.
public struct ReplicationStatus: Sendable, Hashable {
    public var role: Role
    public var disk: DiskState
    public var connection: ConnectionState
    public var peerRole: Role
    public var peerDisk: DiskState
    public var uuids: GenerationUUIDs
    public var outOfSyncBytes: UInt64
    public var resync: ResyncFigures?
    public var verifyMismatches: UInt64?
    public var requestsInFlight: Int
    /// resource-and-stonith: application I/O waits for the peer to be fenced (`suspended:fencing`).
    public var ioSuspendedForFencing: Bool
    /// The fence-peer handler is running.
    public var fencingPeer: Bool
}

/// What `ReplicationMachine.queueDepths` reports.
public struct ReplicationQueueDepths: Sendable, Hashable {
    /// Writes sent to the peer and not yet acknowledged (/proc/drbd's `pe`).
    public var peerPendingWrites: Int
    /// The peer's writes received here and not yet acknowledged (`ua`).
    public var receivedWritesUnacknowledged: Int
    /// Epochs sent and not yet barrier-acknowledged, at least the open one (`ep`).
    public var epochsInFlight: Int
}

/// What we know of the peer.
struct PeerView: Sendable {
    var role: Role = .unknown
    var disk: DiskState = .unknown
    var uuids: GenerationUUIDs?
    var uuidFlags: UUIDExchangeFlags = []
    var bitsSet: UInt64 = 0
    var resolvesConflicts = false
    /// The peer sent new UUIDs while connected: its next state packet re-runs the sync decision.
    var considerResync = false
    /// The peer's operator paused the resync (`pause-sync` there).
    var pausedResync = false
}

struct PendingPromotion: Sendable {
    var commandID: UInt64
    var stateChangeID: UInt64
    var force: Bool
}

/// One application write or flush, from submission until the peer has it on stable storage.
struct WriteRequest: Sendable {
    enum LocalState: Sendable { case pending, done, failed, notIssued }
    enum NetworkState: Sendable { case awaitingAck, acknowledged, notSent, failed }

    let requestID: UInt64
    let range: BlockRange
    let epoch: UInt32
    let isFlush: Bool
    let extents: [UInt32]
    var local: LocalState
    var network: NetworkState
    var completedUpward = false
    /// In the transfer log: sent to the peer, not yet covered by a barrier acknowledgement.
    var inTransferLog = false
    var sentAt: MonotonicInstant

    var isFinished: Bool { completedUpward && !inTransferLog && local != .pending }
}

/// A replicated write the receiver holds, in arrival order within its epoch.
struct ReceivedEpoch: Sendable {
    var generation: UInt64
    var number: UInt32
    var buffered: [DataPacket] = []
    var outstanding = 0
    /// The writes this epoch holds: received and not yet written (buffered, or on the disk now).
    var heldWrites: Int { buffered.count + outstanding }
    var writeCount: UInt32 = 0
    /// Writes of this epoch our disk completed, which only the epoch's flush makes stable (at most max-epoch-size).
    var storedRanges: [BlockRange] = []
    var closed = false
    var flushing = false
}

/// Why a local I/O was issued, so its completion can be routed.
enum LocalIOPurpose: Sendable {
    case applicationWrite(requestID: UInt64)
    case applicationFlush(requestID: UInt64)
    case applicationRead(requestID: UInt64)
    case peerWrite(DataPacket, generation: UInt64)
    case epochFlush
    case resyncWrite(BlockRequest, generation: UInt64)
    case resyncChecksumRead(BlockRequest, generation: UInt64)
    case resyncSourceRead(BlockRequest, peerDigest: [UInt8]?, generation: UInt64)
    case verifyTargetRead(BlockRequest, generation: UInt64)
    case verifySourceRead(BlockRequest, peerDigest: [UInt8], generation: UInt64)
    case servePeerRead(BlockRequest, generation: UInt64)
    /// The sync target flushes its resynced blocks before it calls itself UpToDate.
    case resyncFinishFlush(generation: UInt64)
}

/// A write admitted by the machine but waiting in the overlap gate.
struct GatedWrite: Sendable {
    var range: BlockRange
    /// Empty for a zeroing write.
    var payload: [UInt8]
    var forceUnitAccess: Bool
    var zeroes: Bool
}

extension ReplicationMachine {
    /// The requests still held, for failure reports: ID, epoch, local and network state.
    public var requestsDescription: String {
        requests.keys.sorted().prefix(8).map { id in
            let request = requests[id]!
            return "#\(id) e\(request.epoch) \(request.local) \(request.network) up:\(request.completedUpward) tl:\(request.inTransferLog)"
        }.joined(separator: ", ") + " tl-epochs:\(transferLog.map { "\($0.epoch)/\($0.requestIDs.count)" }) epoch:\(currentEpoch)/\(writesInCurrentEpoch) recv:\(receivedEpochs.epochs.map { "\($0.number)/\($0.outstanding)/\($0.buffered.count)/\($0.closed)" })"
    }
}
