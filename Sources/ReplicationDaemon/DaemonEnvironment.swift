import ReplicationCore
import Synchronization
import TandemDrivers
import TandemStorage
import TandemTransport

/// Who wants reading from the data connection paused: the replication machine (max-buffers) and the mailbox
/// (packets piling up before the resource's thread). Reading is paused while either does.
///
/// A new connection starts unpaused in the transport, so `connectionEstablished` forgets what was applied and
/// applies again what is wanted.
final class ReceivePause: Sendable {
    private struct State {
        var transport: TCPReplicationTransport?
        var byMachine = false
        var byMailbox = false
        var applied = false
    }

    private let state = Mutex(State())

    func attach(_ transport: TCPReplicationTransport) { state.withLock { $0.transport = transport } }

    func setByMachine(_ paused: Bool) { update { $0.byMachine = paused } }
    func setByMailbox(_ paused: Bool) { update { $0.byMailbox = paused } }
    func connectionEstablished() { update { $0.applied = false } }

    private func update(_ change: (inout State) -> Void) {
        state.withLock { state in
            change(&state)
            let wanted = state.byMachine || state.byMailbox
            guard wanted != state.applied else { return }
            state.applied = wanted
            // Non-blocking: the transport hops to its event loop.
            state.transport?.setReceivingPaused(wanted)
        }
    }
}

/// /proc/drbd's traffic counters for one resource, in bytes (reported in KiB). Confined to the resource's thread,
/// like the node whose environment updates them.
final class TrafficCounters {
    /// Replicated payload (application writes, resync and read replies) sent to and received from the peer.
    var networkSentBytes: UInt64 = 0
    var networkReceivedBytes: UInt64 = 0
    var diskWrittenBytes: UInt64 = 0
    var diskReadBytes: UInt64 = 0
    /// Flushes submitted to the backing device (a FUA write is not counted as one).
    var diskFlushes: UInt64 = 0
    var activityLogTransactions: UInt64 = 0
    var bitmapPageWrites: UInt64 = 0

    /// The payload a packet carries, as DRBD's ns/nr count it: data, not headers or control packets.
    static func payloadBytes(_ packet: Packet) -> UInt64 {
        switch packet {
        case .data(let data): UInt64(data.payload.count)
        case .resyncReply(let reply), .readReply(let reply): UInt64(reply.payload.count)
        default: 0
        }
    }
}

/// The transport as the replication node sees it: the TCP transport, with the pause shared with the mailbox.
struct DaemonTransport: ReplicationTransport {
    let inner: TCPReplicationTransport
    let pause: ReceivePause
    let counters: TrafficCounters

    func startConnecting() { inner.startConnecting() }
    func stopConnecting() { inner.stopConnecting() }
    func dropConnection(reason: String) { inner.dropConnection(reason: reason) }

    func send(_ packet: Packet) {
        counters.networkSentBytes += TrafficCounters.payloadBytes(packet)
        inner.send(packet)
    }
    func setReceivingPaused(_ paused: Bool) { pause.setByMachine(paused) }
}

/// The block store as the replication node sees it: `FileBlockStore`, counting the requests whose completions have
/// not been handled yet, so that a stop knows when the disk is quiet. Confined to the resource's thread.
final class DaemonBlockStore: BlockStore {
    let store: FileBlockStore
    let counters: TrafficCounters
    /// Submitted, completion not yet handled by the node.
    private(set) var outstanding = 0

    /// While a helper holds the resource (`ResourceProcessor`), the first disk request the node issues is kept for
    /// the helper to carry out itself; the others go to the I/O threads, so that requests issued together still run
    /// in parallel.
    private enum HelperSlot {
        case none
        case open
        case taken(FileBlockStore.Request)
    }

    private var helperSlot = HelperSlot.none

    init(store: FileBlockStore, counters: TrafficCounters) {
        self.store = store
        self.counters = counters
    }

    func submitWrite(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool) {
        outstanding += 1
        counters.diskWrittenBytes += UInt64(payload.count)
        dispatch(store.writeRequest(token: token, range: range, payload: payload, forceUnitAccess: forceUnitAccess))
    }

    func submitRead(token: UInt64, range: BlockRange) {
        outstanding += 1
        counters.diskReadBytes += UInt64(range.sizeBytes)
        dispatch(store.readRequest(token: token, range: range))
    }

    func submitFlush(token: UInt64) {
        outstanding += 1
        counters.diskFlushes += 1
        dispatch(store.flushRequest(token: token))
    }

    func submitZeroes(token: UInt64, range: BlockRange, forceUnitAccess: Bool) {
        outstanding += 1
        // /proc/drbd's dw counts discards too: the range is written, if not with data.
        counters.diskWrittenBytes += UInt64(range.sizeBytes)
        dispatch(store.zeroesRequest(token: token, range: range, forceUnitAccess: forceUnitAccess))
    }

    private func dispatch(_ request: FileBlockStore.Request) {
        if case .open = helperSlot {
            helperSlot = .taken(request)
        } else {
            store.submit(request)
        }
    }

    /// A helper holds the resource: keep the next request for it.
    func openHelperSlot() {
        helperSlot = .open
    }

    /// The helper releases the resource: the request kept for it, if any.
    func closeHelperSlot() -> FileBlockStore.Request? {
        defer { helperSlot = .none }
        if case .taken(let request) = helperSlot { return request }
        return nil
    }

    /// The resource's thread is about to hand a completion to the node.
    func completionArrived() {
        precondition(outstanding > 0, "a block-store completion without a request outstanding")
        outstanding -= 1
    }
}

/// The metadata store as the replication node sees it: `FileMetadataStore`, counting activity-log transactions and
/// bitmap page writes (/proc/drbd's `al` and `bm`). Confined to the resource's thread.
struct DaemonMetadataStore: MetadataStore {
    let store: FileMetadataStore
    let counters: TrafficCounters

    func writeSuperblock(_ state: SuperblockState) throws(MetadataStoreError) {
        try store.writeSuperblock(state)
    }

    func writeActivityLog(_ transaction: ActivityLogTransaction) throws(MetadataStoreError) {
        counters.activityLogTransactions += 1
        try store.writeActivityLog(transaction)
    }

    func writeBitmap(_ pages: [BitmapPageContents]) throws(MetadataStoreError) {
        counters.bitmapPageWrites += UInt64(pages.count)
        try store.writeBitmap(pages)
    }

    func preserveDivergedBlocks(_ blocks: [Range<UInt64>], reason: String) throws(MetadataStoreError) {
        try store.preserveDivergedBlocks(blocks, reason: reason)
    }
}
