import ReplicationCore
import TandemConfig

/// The connection to the peer. Production: two NIO TCP connections (data and meta). Simulator: a lossy,
/// partitionable simulated network. Incoming packets and connection events reach the node as `ReplicationEvent`s.
public protocol ReplicationTransport {
    /// Keep trying to connect (and accept connections) every connect-int until `stopConnecting`, or until a
    /// connection is established and ends: the machine calls this again when it is back in WFConnection, and the TCP
    /// transport waits for that, so that no new connection exists before the node has heard of the old one's end.
    func startConnecting()
    func stopConnecting()
    /// Close the current connection; the peer notices as a lost connection. The node itself gets no
    /// `transportLost` for a drop it asked for.
    func dropConnection(reason: String)
    func send(_ packet: Packet)
    /// max-buffers back-pressure: stop or resume reading from the data connection.
    func setReceivingPaused(_ paused: Bool)
}

/// The backing device. Operations are asynchronous: each completion comes back as `.localIOCompleted(token:)`,
/// possibly out of order. A flush covers every write that completed before it was submitted.
public protocol BlockStore {
    func submitWrite(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool)
    func submitRead(token: UInt64, range: BlockRange)
    func submitFlush(token: UInt64)
    /// Sets the range to zeroes, cheaply where the device allows (a punched hole); completes as `.written`.
    func submitZeroes(token: UInt64, range: BlockRange, forceUnitAccess: Bool)
}

/// Why a metadata operation failed.
public struct MetadataStoreError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The meta-disk. Every write is synchronous and durable when it returns: the machine's ordering obligations
/// (activity log before data, bitmap before activity-log eviction, UUIDs before acknowledging) rest on that.
public protocol MetadataStore {
    func writeSuperblock(_ state: SuperblockState) throws(MetadataStoreError)
    /// Writes an activity-log transaction, after flushing the data device's volatile cache (a PREFLUSH, as DRBD
    /// issues with md-flushes): an extent leaving the log is no longer resynced after a crash, so the writes to it
    /// must already be stable.
    func writeActivityLog(_ transaction: ActivityLogTransaction) throws(MetadataStoreError)
    func writeBitmap(_ pages: [BitmapPageContents]) throws(MetadataStoreError)
    /// Copies the blocks to a safe place before a split-brain discard overwrites them.
    func preserveDivergedBlocks(_ blocks: [Range<UInt64>], reason: String) throws(MetadataStoreError)
}

/// Whoever sits above the device (FUSE, NBD, the simulator's workload) and the operator.
public protocol ReplicationObserver {
    func writeCompleted(requestID: UInt64, _ outcome: RequestOutcome)
    func readCompleted(requestID: UInt64, _ outcome: RequestOutcome, payload: [UInt8])
    func flushCompleted(requestID: UInt64, _ outcome: RequestOutcome)
    func commandCompleted(commandID: UInt64, _ outcome: CommandOutcome)
    func runHandler(_ handler: DrbdHandler)
    func log(_ line: String)
}
