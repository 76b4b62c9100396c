import TandemConfig

/// An application write handed to the replicated device (from FUSE, NBD or the simulator's workload).
public struct ApplicationWrite: Sendable, Hashable {
    public var requestID: UInt64
    public var offsetBytes: UInt64
    /// The data; empty for a zeroing write.
    public var payload: [UInt8]
    /// Write through to stable storage on every node that acknowledges it (REQ_FUA).
    public var forceUnitAccess: Bool
    /// A zeroing write (discard, write-zeroes, a punched hole) sets this many bytes to zero and carries no data:
    /// nothing but the range crosses the network, and each disk zeroes it as cheaply as it can. Zero otherwise.
    public var zeroingBytes: UInt32

    public init(requestID: UInt64, offsetBytes: UInt64, payload: [UInt8], forceUnitAccess: Bool = false) {
        self.requestID = requestID
        self.offsetBytes = offsetBytes
        self.payload = payload
        self.forceUnitAccess = forceUnitAccess
        self.zeroingBytes = 0
    }

    /// Sets `lengthBytes` at `offsetBytes` to zero on every disk.
    public static func zeroing(
        requestID: UInt64, offsetBytes: UInt64, lengthBytes: UInt32, forceUnitAccess: Bool = false
    ) -> ApplicationWrite {
        var write = ApplicationWrite(requestID: requestID, offsetBytes: offsetBytes, payload: [], forceUnitAccess: forceUnitAccess)
        write.zeroingBytes = lengthBytes
        return write
    }

    public var isZeroing: Bool { zeroingBytes > 0 }

    /// The bytes the write covers.
    public var lengthBytes: Int { isZeroing ? Int(zeroingBytes) : payload.count }
}

/// How an application request ended.
public enum RequestOutcome: Sendable, Hashable {
    case success
    case failure(RequestFailure)
}

public enum RequestFailure: String, Sendable, Hashable, Error {
    case notPrimary = "the device is not Primary: only a Primary accepts I/O"
    case noUpToDateData = "no UpToDate data is reachable"
    case outOfRange = "the request lies beyond the end of the device"
    case misaligned = "the request is not aligned to 512-byte sectors"
    case ioError = "the write failed on every copy"
    case tooLarge = "the request exceeds the maximum request size"
}

/// The result of a local disk operation, reported by the block store.
public enum LocalIOResult: Sendable, Hashable {
    case written
    case read([UInt8])
    case flushed
    case failed
}

/// Operator commands: drbdadm's verbs that change state.
public enum OperatorCommand: Sendable, Hashable {
    case promote(force: Bool)
    case demote
    case connect(discardMyData: Bool)
    case disconnect
    case invalidate
    case invalidateRemote
    case verify
    case pauseResync
    case resumeResync
    case outdate
    /// Ends the I/O suspension of resource-and-stonith fencing: the operator vouches that the peer is down.
    case resumeIO
    case newCurrentUUID(clearBitmap: Bool)
    case detach
}

public enum CommandOutcome: Sendable, Hashable {
    case done
    case refused(String)
}

/// What the machine asks its driver to do. The driver carries them out in order. Actions marked "durable" must be
/// complete and on stable storage before the driver moves to the next action: the protocol's safety depends on that
/// ordering (for example, an activity-log transaction is durable before the data write it covers is submitted).
public enum ReplicationAction: Sendable, Hashable {
    // Transport.
    /// Start (or keep) trying to connect to the peer every connect-int, and accept its connections.
    case connectTransport
    /// Stop trying to connect (the resource goes StandAlone).
    case stopConnecting
    /// Close the current connection, e.g. after a protocol error or a timeout.
    case dropConnection(reason: String)
    /// Send on the current connection; `Packet.channel` picks the TCP connection.
    case send(Packet)
    /// Stop or resume reading replicated data (max-buffers back-pressure).
    case throttleReceiving(Bool)

    // Backing device: completions come back as `localIOCompleted`.
    case submitWrite(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool)
    case submitRead(token: UInt64, range: BlockRange)
    case submitFlush(token: UInt64)
    /// Set the range to zeroes (a punched hole where the disk can), completing as `.written`; with FUA, on stable
    /// storage when it completes.
    case submitZeroes(token: UInt64, range: BlockRange, forceUnitAccess: Bool)

    // Metadata: durable, synchronous.
    case persistSuperblock(SuperblockState)
    case persistActivityLog(ActivityLogTransaction)
    case persistBitmap([BitmapPageContents])
    /// Durable: copy these blocks away before they are overwritten by a split-brain discard.
    case preserveDivergedBlocks([Range<UInt64>], reason: String)

    // Upward.
    case completeWrite(requestID: UInt64, RequestOutcome)
    case completeRead(requestID: UInt64, RequestOutcome, payload: [UInt8])
    case completeFlush(requestID: UInt64, RequestOutcome)
    case commandCompleted(commandID: UInt64, CommandOutcome)

    // Side effects for the operator.
    case runHandler(DrbdHandler)
    /// A line for the kernel-log-like event log, in DRBD's wording where one exists.
    case log(String)
}

/// The persistent part of the machine's state, as the superblock stores it.
public struct SuperblockState: Sendable, Hashable {
    public var uuids: GenerationUUIDs
    public var flags: MetadataFlags
    public var agreedSizeBytes: UInt64

    public init(uuids: GenerationUUIDs, flags: MetadataFlags, agreedSizeBytes: UInt64) {
        self.uuids = uuids
        self.flags = flags
        self.agreedSizeBytes = agreedSizeBytes
    }
}

/// What the driver recovered from the metadata at attach time.
public struct RecoveredMetadata: Sendable {
    public var superblock: SuperblockState
    /// The superblock said a Primary was running and never shut down cleanly.
    public var wasUnclean: Bool
    public var bitmapWords: [UInt64]
    public var activityLog: ActivityLog
    public var sizeBytes: UInt64

    public init(
        superblock: SuperblockState, wasUnclean: Bool, bitmapWords: [UInt64], activityLog: ActivityLog,
        sizeBytes: UInt64
    ) {
        self.superblock = superblock
        self.wasUnclean = wasUnclean
        self.bitmapWords = bitmapWords
        self.activityLog = activityLog
        self.sizeBytes = sizeBytes
    }
}
