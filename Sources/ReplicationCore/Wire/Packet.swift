import TandemConfig

/// Which of the two TCP connections a packet travels on. As in DRBD, acknowledgements and pings have their own
/// "meta" connection so that they are never queued behind megabytes of data.
public enum PacketChannel: String, Sendable, Hashable {
    case data
    case meta
}

/// Everything two replication peers say to each other. The binary layout of each case is defined by
/// `PacketCodec` and documented in docs/wire-formats.md; this enum is the decoded, validated form.
public enum Packet: Sendable, Hashable {
    // Handshake, in the order it is sent (data channel).
    case features(FeaturesPacket)
    case authChallenge([UInt8])
    case authResponse([UInt8])
    case protocolParameters(ProtocolParameters)
    case sizes(SizesPacket)
    case uuids(UUIDsPacket)
    case state(StatePacket)
    /// One chunk of the sender's bitmap, sent in the WFBitMapS/T phase; the receiver ORs it into its own.
    case bitmapChunk(BitmapChunk)
    /// The sync source's freshly generated Bitmap UUID, which the target adopts as its Current UUID.
    case syncUUID(UInt64)

    // Replication (data channel).
    case data(DataPacket)
    /// Closes epoch `number` on the receiver: it answers with `barrierAck` once every write of that epoch is durable.
    case barrier(epoch: UInt32)
    case resyncRequest(BlockRequest)
    /// A resync request carrying the digest of the target's block (csums-alg): the source answers `inSync` if its
    /// own block has the same digest.
    case checksumResyncRequest(BlockRequest, digest: [UInt8])
    case resyncReply(BlockReply)
    case verifyRequest(BlockRequest)
    case verifyReply(BlockRequest, digest: [UInt8])
    /// The sender knows that the range differs between the peers (set in both bitmaps).
    case outOfSync(BlockRange)
    /// A cluster-wide state change (promotion while connected), answered by `stateChangeReply`.
    case stateChangeRequest(StateChangeRequest)
    case stateChangeReply(StateChangeReply)
    /// `invalidate-remote`: the sender asks the peer to invalidate its disk and resync it in full from the sender;
    /// answered by `stateChangeReply` with the same request ID.
    case invalidateRequest(requestID: UInt64)
    case pauseResync(Bool)
    /// A Diskless Primary reads a block from its UpToDate peer (DRBD's P_DATA_REQUEST).
    case readRequest(BlockRequest)
    /// The answer to `readRequest`; an empty payload means the peer could not read the block.
    case readReply(BlockReply)

    // Acknowledgements and liveness (meta channel).
    case ping
    case pingAck
    /// Protocol B: the write reached the peer's memory.
    case receiveAck(BlockAck)
    /// Protocol C: the write reached the peer's disk.
    case writeAck(BlockAck)
    /// The peer could not write the block (it will be resynced).
    case negativeAck(BlockAck)
    /// A resync write reached the target's disk, or the source's block was already in sync.
    case resyncWriteAck(BlockAck, inSync: Bool)
    case barrierAck(epoch: UInt32, writeCount: UInt32)

    public var channel: PacketChannel {
        switch self {
        case .ping, .pingAck, .receiveAck, .writeAck, .negativeAck, .resyncWriteAck, .barrierAck: .meta
        default: .data
        }
    }
}

/// The first packet on a new connection: which protocol versions the sender speaks.
public struct FeaturesPacket: Sendable, Hashable {
    public var protocolMinimum: UInt32
    public var protocolMaximum: UInt32
    public var featureFlags: UInt32

    public init(protocolMinimum: UInt32, protocolMaximum: UInt32, featureFlags: UInt32) {
        self.protocolMinimum = protocolMinimum
        self.protocolMaximum = protocolMaximum
        self.featureFlags = featureFlags
    }
}

/// The settings both peers must agree on (DRBD's P_PROTOCOL), plus the connection-scoped `--discard-my-data`.
public struct ProtocolParameters: Sendable, Hashable {
    public var replicationProtocol: ReplicationProtocol
    public var afterSplitBrainZeroPrimaries: AfterSplitBrainZeroPrimaries
    public var afterSplitBrainOnePrimary: AfterSplitBrainOnePrimary
    public var afterSplitBrainTwoPrimaries: AfterSplitBrainTwoPrimaries
    public var allowTwoPrimaries: Bool
    public var discardMyData: Bool
    /// `data-integrity-alg`, empty when off. Both sides must name the same algorithm.
    public var integrityAlgorithm: String
    /// A random number drawn per connection; the higher one resolves conflicts (DRBD's RESOLVE_CONFLICTS), e.g.
    /// which of two concurrent promotions wins.
    public var conflictNonce: UInt64

    public init(
        replicationProtocol: ReplicationProtocol, afterSplitBrainZeroPrimaries: AfterSplitBrainZeroPrimaries,
        afterSplitBrainOnePrimary: AfterSplitBrainOnePrimary, afterSplitBrainTwoPrimaries: AfterSplitBrainTwoPrimaries,
        allowTwoPrimaries: Bool, discardMyData: Bool, integrityAlgorithm: String, conflictNonce: UInt64
    ) {
        self.replicationProtocol = replicationProtocol
        self.afterSplitBrainZeroPrimaries = afterSplitBrainZeroPrimaries
        self.afterSplitBrainOnePrimary = afterSplitBrainOnePrimary
        self.afterSplitBrainTwoPrimaries = afterSplitBrainTwoPrimaries
        self.allowTwoPrimaries = allowTwoPrimaries
        self.discardMyData = discardMyData
        self.integrityAlgorithm = integrityAlgorithm
        self.conflictNonce = conflictNonce
    }
}

public struct SizesPacket: Sendable, Hashable {
    /// Usable bytes of the sender's backing device (after its internal metadata, if any).
    public var backingBytes: UInt64
    /// The size the sender last agreed with a peer (0 if never).
    public var agreedBytes: UInt64

    public init(backingBytes: UInt64, agreedBytes: UInt64) {
        self.backingBytes = backingBytes
        self.agreedBytes = agreedBytes
    }
}

/// The flags DRBD sends in P_UUIDS, with its bit values.
public struct UUIDExchangeFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let discardMyData = UUIDExchangeFlags(rawValue: 1)
    public static let crashedPrimary = UUIDExchangeFlags(rawValue: 2)
    public static let inconsistent = UUIDExchangeFlags(rawValue: 4)
    public static let skipInitialSync = UUIDExchangeFlags(rawValue: 8)
}

public struct UUIDsPacket: Sendable, Hashable {
    public var uuids: GenerationUUIDs
    /// Bits set in the sender's bitmap: "changes" for discard-least-changes and discard-zero-changes.
    public var bitsSet: UInt64
    public var flags: UUIDExchangeFlags

    public init(uuids: GenerationUUIDs, bitsSet: UInt64, flags: UUIDExchangeFlags) {
        self.uuids = uuids
        self.bitsSet = bitsSet
        self.flags = flags
    }
}

public struct StatePacket: Sendable, Hashable {
    public var role: Role
    public var diskState: DiskState

    public init(role: Role, diskState: DiskState) {
        self.role = role
        self.diskState = diskState
    }
}

/// A run of the bitmap: `words` are 64-bit bitmap words starting at word index `firstWord`. Bit `b` of word `w`
/// stands for the 4 KiB block `w * 64 + b`.
public struct BitmapChunk: Sendable, Hashable {
    public var firstWord: UInt64
    public var words: [UInt64]
    /// Set on the sender's last chunk.
    public var isLast: Bool

    public init(firstWord: UInt64, words: [UInt64], isLast: Bool) {
        self.firstWord = firstWord
        self.words = words
        self.isLast = isLast
    }
}

/// A byte range of the device, in 512-byte sectors as on DRBD's wire.
public struct BlockRange: Sendable, Hashable, CustomStringConvertible {
    public var sector: UInt64
    public var sizeBytes: UInt32

    public init(sector: UInt64, sizeBytes: UInt32) {
        self.sector = sector
        self.sizeBytes = sizeBytes
    }

    public var offsetBytes: UInt64 { sector * 512 }
    public var endBytes: UInt64 { offsetBytes + UInt64(sizeBytes) }

    public var description: String { "[\(offsetBytes), \(endBytes))" }
}

/// Per-write flags on the wire (DRBD's dp_flags).
public struct DataFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Write through to stable storage before acknowledging (REQ_FUA).
    public static let forceUnitAccess = DataFlags(rawValue: 1 << 0)
    /// Flush the receiver's volatile cache before this write (REQ_PREFLUSH). With no payload it is a pure flush.
    public static let flush = DataFlags(rawValue: 1 << 1)
    /// The sender waits for `receiveAck` (protocol B).
    public static let sendReceiveAck = DataFlags(rawValue: 1 << 2)
    /// The sender waits for `writeAck` (protocol C).
    public static let sendWriteAck = DataFlags(rawValue: 1 << 3)
    /// The receiver is a sync target and may clear the range's bits once written.
    public static let mayClearOutOfSync = DataFlags(rawValue: 1 << 4)
    /// No payload: the receiver sets the range to zeroes (discard, write-zeroes; DRBD's P_TRIM/P_ZEROES).
    public static let zeroes = DataFlags(rawValue: 1 << 5)
}

/// An application write replicated to the peer.
public struct DataPacket: Sendable, Hashable {
    public var range: BlockRange
    /// Opaque to the receiver, echoed in its acknowledgement.
    public var requestID: UInt64
    /// The epoch the write belongs to.
    public var epoch: UInt32
    public var flags: DataFlags
    public var payload: [UInt8]

    public init(range: BlockRange, requestID: UInt64, epoch: UInt32, flags: DataFlags, payload: [UInt8]) {
        self.range = range
        self.requestID = requestID
        self.epoch = epoch
        self.flags = flags
        self.payload = payload
    }
}

public struct BlockRequest: Sendable, Hashable {
    public var range: BlockRange
    public var requestID: UInt64

    public init(range: BlockRange, requestID: UInt64) {
        self.range = range
        self.requestID = requestID
    }
}

public struct BlockReply: Sendable, Hashable {
    public var range: BlockRange
    public var requestID: UInt64
    public var payload: [UInt8]

    public init(range: BlockRange, requestID: UInt64, payload: [UInt8]) {
        self.range = range
        self.requestID = requestID
        self.payload = payload
    }
}

public struct BlockAck: Sendable, Hashable {
    public var range: BlockRange
    public var requestID: UInt64

    public init(range: BlockRange, requestID: UInt64) {
        self.range = range
        self.requestID = requestID
    }
}

public struct StateChangeRequest: Sendable, Hashable {
    public var requestID: UInt64
    public var newRole: Role

    public init(requestID: UInt64, newRole: Role) {
        self.requestID = requestID
        self.newRole = newRole
    }
}

public struct StateChangeReply: Sendable, Hashable {
    public var requestID: UInt64
    public var granted: Bool
    /// Why the peer refused, shown to the operator; empty when granted.
    public var reason: String

    public init(requestID: UInt64, granted: Bool, reason: String) {
        self.requestID = requestID
        self.granted = granted
        self.reason = reason
    }
}
