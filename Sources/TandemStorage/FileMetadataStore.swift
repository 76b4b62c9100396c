#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ReplicationCore
import Synchronization
import TandemConfig
import TandemDrivers

/// The production `MetadataStore`: a volume's superblock, activity-log ring and bitmap on the meta-disk, in the
/// layout `MetaDiskLayout` computes for `meta-disk internal;` (end of the backing device), `meta-disk /dev/x [idx];`
/// (a 128 MiB slot of a shared device) or `meta-disk /dev/x;` (flexible external).
///
/// Durability: every write is pwrite followed by fdatasync of the meta device, so it is on stable storage when the
/// method returns, as the protocol requires. An activity-log transaction is preceded by an fdatasync of the data
/// device (DRBD's PREFLUSH with md-flushes): an extent that leaves the log is no longer resynced after a crash, so
/// the writes to it must already be stable. The methods block the calling thread (the resource's serial thread) for
/// the duration of the flushes; that is the contract, and why metadata writes are batched by the machine.
///
/// Life cycle: `init` opens the devices and reads nothing. Then either `create(force:)` (drbdadm create-md) or
/// `recover()` (attach) loads the metadata; the `MetadataStore` writes are only valid after one of them. Everything
/// read back is decoded and verified by the ReplicationCore codecs; damage is a typed `StorageError`, never a crash.
public final class FileMetadataStore: MetadataStore, Sendable {
    public struct Configuration: Sendable, Hashable {
        public static let preserveRootDirectory = "/var/lib/tandem/preserved"

        public var resourceName: String
        /// The backing device (drbd.conf `disk`).
        public var dataPath: String
        public var metaDisk: DrbdMetaDisk
        /// al-extents and the ring size for `create`; `recover` uses what the superblock records.
        public var activityLogExtents: Int
        public var activityLogSlots: Int
        /// Where preserved-blocks files go; by default `/var/lib/tandem/preserved/<resource>`.
        public var preserveDirectory: String

        public init(
            resourceName: String, dataPath: String, metaDisk: DrbdMetaDisk = .internal,
            activityLogExtents: Int = ActivityLog.defaultCapacityExtents,
            activityLogSlots: Int = ActivityLog.defaultRingSlots, preserveDirectory: String? = nil
        ) {
            self.resourceName = resourceName
            self.dataPath = dataPath
            self.metaDisk = metaDisk
            self.activityLogExtents = activityLogExtents
            self.activityLogSlots = activityLogSlots
            self.preserveDirectory = preserveDirectory ?? "\(Self.preserveRootDirectory)/\(resourceName)"
        }

        /// The meta device: the backing device itself for internal metadata.
        public var metaPath: String {
            switch metaDisk {
            case .internal: dataPath
            case .indexed(let path, _), .flexible(let path): path
            }
        }
    }

    /// Metadata that `create` found where it was about to write.
    public enum ExistingMetadata: Sendable, Hashable, CustomStringConvertible {
        /// A superblock that decodes.
        case valid(Superblock)
        /// Tandem's superblock magic, but the block does not decode.
        case damaged(MetadataError)

        public var description: String {
            switch self {
            case .valid(let superblock):
                "valid Tandem metadata: generation UUIDs \(superblock.uuids), "
                    + "\(superblock.isClean ? "clean" : "not clean (a Primary was running)"), flags "
                    + "\(describeFlags(superblock.flags)), agreed size \(superblock.agreedSizeBytes) bytes"
            case .damaged(let error): "damaged Tandem metadata (\(error))"
            }
        }
    }

    /// What `create` wrote.
    public struct CreateReport: Sendable, CustomStringConvertible {
        public var layout: MetaDiskLayout
        public var deviceUUID: UInt64
        /// What was there before, when `force` overwrote it.
        public var overwritten: ExistingMetadata?

        public var description: String {
            var text =
                "created metadata: \(layout.usableDataBytes) bytes of data, \(layout.metadataSizeBytes) bytes of "
                + "metadata at offset \(layout.metadataOffsetBytes), device UUID \(deviceUUID.fixedWidthHex)"
            if let overwritten { text += "; overwrote \(overwritten)" }
            return text
        }
    }

    public let configuration: Configuration
    public let environment: StorageEnvironment
    public let dataDeviceSizeBytes: UInt64
    public let metaDeviceSizeBytes: UInt64
    /// Read-only descriptor of the data device: flushed before activity-log writes, read by `preserve`.
    let dataFD: Int32
    /// Read-write descriptor of the meta device (the data device again for internal metadata).
    let metaFD: Int32

    struct Loaded: Sendable {
        var layout: MetaDiskLayout
        var deviceUUID: UInt64
    }

    struct State: Sendable {
        var loaded: Loaded?
        var isClosed = false
    }

    let state = Mutex(State())

    /// Bytes moved per system call when the bitmap is read or written whole, and when blocks are preserved.
    static let chunkBytes = 1 << 20
    static let blockBytes = UInt64(Superblock.sizeBytes)

    /// Opens the data and meta devices and reads their sizes. Reads no metadata.
    public init(configuration: Configuration, environment: StorageEnvironment) throws(StorageError) {
        let dataFD = try Self.open(configuration.dataPath, flags: O_RDONLY)
        var metaFD: Int32 = -1
        do throws(StorageError) {
            metaFD = try Self.open(configuration.metaPath, flags: O_RDWR)
            self.dataDeviceSizeBytes = try Posix.sizeBytes(dataFD, path: configuration.dataPath).sizeBytes
            self.metaDeviceSizeBytes = try Posix.sizeBytes(metaFD, path: configuration.metaPath).sizeBytes
        } catch {
            Posix.close(dataFD)
            if metaFD >= 0 { Posix.close(metaFD) }
            throw error
        }
        self.configuration = configuration
        self.environment = environment
        self.dataFD = dataFD
        self.metaFD = metaFD
    }

    deinit { close() }

    /// Closes the devices. Idempotent; later writes fail with `closed`.
    public func close() {
        let wasClosed = state.withLock { state in
            defer { state.isClosed = true }
            return state.isClosed
        }
        guard !wasClosed else { return }
        Posix.close(dataFD)
        Posix.close(metaFD)
    }

    /// The layout of the loaded metadata; nil before `create` or `recover`.
    public var layout: MetaDiskLayout? { state.withLock { $0.loaded?.layout } }

    /// Bytes of the data device that hold data (internal metadata takes the rest); nil before `create` or
    /// `recover`. Pass it to `FileBlockStore.Options.dataSizeBytes`.
    public var dataSizeBytes: UInt64? { layout?.usableDataBytes }

    // MARK: Placement

    /// The drbd.conf placement with today's device sizes.
    var placement: MetaDiskLayout.Placement {
        switch configuration.metaDisk {
        case .internal: .internal(backingSizeBytes: dataDeviceSizeBytes)
        case .indexed(_, let index):
            .external(metaDeviceSizeBytes: metaDeviceSizeBytes, index: index, backingSizeBytes: dataDeviceSizeBytes)
        case .flexible:
            .external(metaDeviceSizeBytes: metaDeviceSizeBytes, index: nil, backingSizeBytes: dataDeviceSizeBytes)
        }
    }

    /// Where the superblock lives. It depends only on the placement and the device sizes, not on the activity-log
    /// size, so it can be found before the superblock says how large the rest is. Nil when the device is too small
    /// to hold one there.
    var superblockOffsetBytes: UInt64? {
        switch configuration.metaDisk {
        case .internal:
            let alignedEnd = dataDeviceSizeBytes & ~(Self.blockBytes - 1)
            return alignedEnd >= Self.blockBytes ? alignedEnd - Self.blockBytes : nil
        case .indexed(_, let index):
            guard (0...MetaDiskLayout.maximumIndex).contains(index) else { return nil }
            let offset = UInt64(index) * MetaDiskLayout.indexedSlotBytes
            return metaDeviceSizeBytes >= offset + Self.blockBytes ? offset : nil
        case .flexible:
            return metaDeviceSizeBytes >= Self.blockBytes ? 0 : nil
        }
    }

    var metaDiskDescription: String {
        switch configuration.metaDisk {
        case .internal: "internal metadata on \(configuration.dataPath)"
        case .indexed(let path, let index): "external metadata on \(path) index \(index)"
        case .flexible(let path): "flexible external metadata on \(path)"
        }
    }

    /// The layout `create` would write with the configured activity-log size, or `deviceTooSmall` saying the
    /// minimum, or `invalidArgument` for an index or activity-log size out of range.
    func layoutForCreate() throws(StorageError) -> MetaDiskLayout {
        do {
            return try MetaDiskLayout(
                placement, activityLogExtents: configuration.activityLogExtents,
                activityLogSlots: configuration.activityLogSlots)
        } catch {
            guard error.code == .layoutDoesNotFit else {
                throw StorageError(.invalidArgument, "cannot lay out \(metaDiskDescription)", cause: .metadata(error))
            }
            throw StorageError(
                .deviceTooSmall, "the devices are too small for \(metaDiskDescription): \(minimumSizeAdvice())",
                cause: .metadata(error))
        }
    }

    /// The minimum device sizes, in words.
    func minimumSizeAdvice() -> String {
        let slots = configuration.activityLogSlots
        let minimumData = MetaDiskLayout.minimumDataBytes
        switch configuration.metaDisk {
        case .internal:
            // Metadata grows with the device, so search upwards; one bitmap page covers 127 MiB, so the first few
            // candidates settle it.
            var candidate = minimumData + MetaDiskLayout.internalMetadataBytes(forBackingBytes: 0, activityLogSlots: slots)
            for _ in 0..<64 {
                if (try? MetaDiskLayout(.internal(backingSizeBytes: candidate), activityLogSlots: slots)) != nil { break }
                candidate += Self.blockBytes
            }
            return "the backing device \(configuration.dataPath) holds \(dataDeviceSizeBytes) bytes; internal "
                + "metadata needs a backing device of at least \(candidate) bytes (\(minimumData) bytes of data "
                + "plus the metadata)"
        case .indexed(let path, let index):
            return "index \(index) needs a meta device \(path) of at least "
                + "\((UInt64(index) + 1) * MetaDiskLayout.indexedSlotBytes) bytes (it holds \(metaDeviceSizeBytes)), "
                + "and a backing device of \(minimumData) to \(MetaDiskLayout.maximumIndexedDataBytes(activityLogSlots: slots)) "
                + "bytes (it holds \(dataDeviceSizeBytes))"
        case .flexible(let path):
            let dataBytes = max(minimumData, dataDeviceSizeBytes & ~(Self.blockBytes - 1))
            let needed = MetaDiskLayout.superblockBytes + MetaDiskLayout.activityLogBytes(ringSlots: slots)
                + MetaDiskLayout.bitmapBytes(forDataBytes: dataBytes)
            return "the backing device needs at least \(minimumData) bytes (it holds \(dataDeviceSizeBytes)) and the "
                + "meta device \(path) at least \(needed) bytes (it holds \(metaDeviceSizeBytes))"
        }
    }

    // MARK: Raw access

    static func open(_ path: String, flags: Int32) throws(StorageError) -> Int32 {
        do {
            return try Posix.open(path, flags: flags)
        } catch {
            throw OpenedDevice.explainOpenFailure(path, error)
        }
    }

    func readMeta(count: Int, at offsetBytes: UInt64) throws(StorageError) -> [UInt8] {
        do {
            return try Posix.readFully(metaFD, count: count, offsetBytes: offsetBytes)
        } catch {
            throw error.storageError(
                .ioFailed, "Reading the metadata on \(configuration.metaPath) failed; check the device (dmesg)")
        }
    }

    /// `count` consecutive 4 KiB blocks from `offsetBytes`, read a chunk at a time.
    func readMetaBlocks(count: Int, at offsetBytes: UInt64) throws(StorageError) -> [[UInt8]] {
        var blocks: [[UInt8]] = []
        blocks.reserveCapacity(count)
        let perChunk = Self.chunkBytes / Int(Self.blockBytes)
        while blocks.count < count {
            let now = min(perChunk, count - blocks.count)
            let bytes = try readMeta(
                count: now * Int(Self.blockBytes), at: offsetBytes + UInt64(blocks.count) * Self.blockBytes)
            for index in 0..<now {
                blocks.append(Array(bytes[index * Int(Self.blockBytes)..<(index + 1) * Int(Self.blockBytes)]))
            }
        }
        return blocks
    }

    func writeMeta(_ bytes: [UInt8], at offsetBytes: UInt64, what: String) throws(StorageError) {
        do {
            try Posix.writeFully(metaFD, bytes: bytes, offsetBytes: offsetBytes)
        } catch {
            throw error.storageError(
                .ioFailed, "Writing the \(what) to \(configuration.metaPath) failed; the metadata is not up to date")
        }
    }

    func syncMeta(what: String) throws(StorageError) {
        do {
            try Posix.syncData(metaFD, what: "the metadata on \(configuration.metaPath)")
        } catch {
            throw error.storageError(.ioFailed, "The \(what) may not be on stable storage")
        }
    }

    func requireLoaded() throws(StorageError) -> Loaded {
        let snapshot = state.withLock { $0 }
        guard !snapshot.isClosed else { throw StorageError(.closed, "the metadata store is closed") }
        guard let loaded = snapshot.loaded else {
            preconditionFailure("metadata written before create or recover (\(metaDiskDescription))")
        }
        return loaded
    }
}

/// Names of the set flags, e.g. "consistent, was-up-to-date (0x00000011)".
func describeFlags(_ flags: MetadataFlags) -> String {
    let set = flags.names
    return "\(set.isEmpty ? "none" : set.joined(separator: ", ")) (\(flags.rawValue.prefixedHex))"
}
