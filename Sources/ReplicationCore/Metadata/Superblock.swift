/// The 4096-byte block at the heart of a volume's metadata (DRBD's `struct meta_data_on_disk`, reference drbd.md
/// section 2): the agreed size, the generation UUIDs, the flags and where the activity log and bitmap live.
///
/// Layout (big-endian; bytes 108 to 4095 are zero):
///
/// | Offset | Size | Field |
/// |---|---|---|
/// | 0 | 4 | magic: `cleanMagic` or `uncleanMagic` |
/// | 4 | 4 | format version (`currentFormatVersion`) |
/// | 8 | 4 | CRC-32C of the 4096 bytes with this field zeroed |
/// | 12 | 4 | flags (`MetadataFlags.rawValue`) |
/// | 16 | 8 | agreed size in bytes (DRBD's la_size) |
/// | 24 | 32 | generation UUIDs: Current, Bitmap, History1, History2 |
/// | 56 | 8 | device UUID |
/// | 64 | 8 | metadata size in bytes |
/// | 72 | 8 | activity-log offset in bytes, signed, relative to the superblock's first byte |
/// | 80 | 8 | bitmap offset in bytes, signed, relative to the superblock's first byte |
/// | 88 | 8 | bitmap size in bytes |
/// | 96 | 4 | activity-log ring slots (4 KiB transactions) |
/// | 100 | 4 | activity-log extents (al-extents) |
/// | 104 | 4 | bytes per bitmap bit (4096) |
public struct Superblock: Sendable, Hashable {
    public static let sizeBytes = 4096
    /// "TndC": the activity log needs no replay.
    public static let cleanMagic: UInt32 = 0x546E_6443
    /// "TndU": the volume was in use when this was written; the activity log must be replayed before the data is
    /// trusted. The two magics differ in three bits, so a single flipped bit cannot turn one into the other.
    public static let uncleanMagic: UInt32 = 0x546E_6455
    public static let currentFormatVersion: UInt32 = 1
    /// Bytes of the fixed fields; the rest of the block is zero.
    static let fieldBytes = 108

    /// Where the activity log and bitmap live, as recorded in the superblock. Offsets are relative to the
    /// superblock's first byte, so they are negative for internal metadata (which sits before the superblock) and
    /// positive for external metadata. `MetaDiskLayout.superblockLayout` computes them.
    public struct Layout: Sendable, Hashable {
        /// Size of the whole metadata area (superblock, activity log, bitmap, and for indexed external metadata the
        /// unused rest of the 128 MiB slot).
        public var metadataSizeBytes: UInt64
        /// Start of the activity-log ring, relative to the superblock's first byte.
        public var activityLogOffsetBytes: Int64
        /// Number of 4 KiB transactions in the activity-log ring.
        public var activityLogSlots: UInt32
        /// Capacity of the activity log in 4 MiB extents (al-extents).
        public var activityLogExtents: UInt32
        /// Start of the bitmap, relative to the superblock's first byte.
        public var bitmapOffsetBytes: Int64
        /// Size of the bitmap: whole `BitmapPage`s.
        public var bitmapBytes: UInt64
        /// Always 4096; stored so that a different block size in a future format is detected, not misread.
        public var bytesPerBit: UInt32

        public init(
            metadataSizeBytes: UInt64, activityLogOffsetBytes: Int64, activityLogSlots: UInt32,
            activityLogExtents: UInt32, bitmapOffsetBytes: Int64, bitmapBytes: UInt64, bytesPerBit: UInt32 = 4096
        ) {
            self.metadataSizeBytes = metadataSizeBytes
            self.activityLogOffsetBytes = activityLogOffsetBytes
            self.activityLogSlots = activityLogSlots
            self.activityLogExtents = activityLogExtents
            self.bitmapOffsetBytes = bitmapOffsetBytes
            self.bitmapBytes = bitmapBytes
            self.bytesPerBit = bytesPerBit
        }

        /// Why these fields cannot describe real metadata, or nil if they can.
        ///
        /// The metadata area is `[4096 - metadataSizeBytes, 4096)` relative to the superblock when the activity log
        /// lies before the superblock (internal), else `[0, metadataSizeBytes)` (external). The superblock, the
        /// activity log and the bitmap must each lie inside it, on 4 KiB boundaries, without overlapping.
        func problem() -> String? {
            if UInt64(bytesPerBit) != BitmapPage.bytesPerBit {
                return "bytes per bit is \(bytesPerBit), expected \(BitmapPage.bytesPerBit)"
            }
            if let problem = ActivityLog.parameterProblem(
                capacityExtents: Int(activityLogExtents), ringSlots: Int(activityLogSlots))
            {
                return problem
            }
            let block = UInt64(Superblock.sizeBytes)
            guard metadataSizeBytes % block == 0, metadataSizeBytes >= block,
                metadataSizeBytes <= MetaDiskLayout.maximumMetadataBytes
            else {
                return "metadata size \(metadataSizeBytes) is not a multiple of 4096 in 4096..."
                    + "\(MetaDiskLayout.maximumMetadataBytes)"
            }
            guard bitmapBytes % block == 0, bitmapBytes > 0, bitmapBytes < metadataSizeBytes else {
                return "bitmap size \(bitmapBytes) is not a positive multiple of 4096 below the metadata size"
            }
            // Every value is now bounded by the metadata size (about 2^35), so the sums below cannot overflow.
            let size = Int64(metadataSizeBytes)
            for (name, offset) in [("activity-log", activityLogOffsetBytes), ("bitmap", bitmapOffsetBytes)] {
                guard offset % Int64(block) == 0, offset.magnitude <= metadataSizeBytes else {
                    return "\(name) offset \(offset) is not a multiple of 4096 within the metadata size \(size)"
                }
            }
            let area = activityLogOffsetBytes < 0 ? (Int64(block) - size)..<Int64(block) : 0..<size
            let regions: [(String, Range<Int64>)] = [
                ("superblock", 0..<Int64(block)),
                (
                    "activity log",
                    activityLogOffsetBytes..<(activityLogOffsetBytes + Int64(activityLogSlots) * Int64(block))
                ),
                ("bitmap", bitmapOffsetBytes..<(bitmapOffsetBytes + Int64(bitmapBytes))),
            ]
            for (index, (name, range)) in regions.enumerated() {
                guard range.lowerBound >= area.lowerBound, range.upperBound <= area.upperBound else {
                    return "\(name) at \(range) lies outside the metadata area \(area)"
                }
                for (otherName, other) in regions[..<index] where range.overlaps(other) {
                    return "\(name) at \(range) overlaps the \(otherName) at \(other)"
                }
            }
            return nil
        }

        /// Bytes of data the bitmap can describe.
        var coverableDataBytes: UInt64 {
            bitmapBytes / UInt64(BitmapPage.sizeBytes) * BitmapPage.bitsPerPage * BitmapPage.bytesPerBit
        }
    }

    /// False when the activity log must be replayed before the data is trusted (written with `uncleanMagic`).
    public var isClean: Bool
    /// The size both peers last agreed on (DRBD's la_size); 0 before the first connection.
    public var agreedSizeBytes: UInt64
    public var uuids: GenerationUUIDs
    /// Identifies this copy of the metadata (DRBD's device_uuid); changes when the metadata is recreated.
    public var deviceUUID: UInt64
    public var flags: MetadataFlags
    public var layout: Layout

    public init(
        isClean: Bool, agreedSizeBytes: UInt64, uuids: GenerationUUIDs, deviceUUID: UInt64, flags: MetadataFlags,
        layout: Layout
    ) {
        self.isClean = isClean
        self.agreedSizeBytes = agreedSizeBytes
        self.uuids = uuids
        self.deviceUUID = deviceUUID
        self.flags = flags
        self.layout = layout
    }

    /// Why this superblock must not be written, or nil. Decoding refuses exactly what encoding refuses.
    func problem() -> String? {
        let unknown = flags.rawValue & ~MetadataFlags.known.rawValue
        if unknown != 0 { return "unknown flag bits \(unknown.prefixedHex)" }
        if let problem = layout.problem() { return problem }
        guard agreedSizeBytes <= layout.coverableDataBytes else {
            return "agreed size \(agreedSizeBytes) exceeds the \(layout.coverableDataBytes) bytes the bitmap covers"
        }
        return nil
    }

    /// The 4096-byte on-disk form.
    public func encoded() -> [UInt8] {
        if let problem = problem() { preconditionFailure("superblock cannot be encoded: \(problem); \(self)") }
        var writer = ByteWriter(reservingCapacity: Self.sizeBytes)
        writer.write(isClean ? Self.cleanMagic : Self.uncleanMagic)
        writer.write(Self.currentFormatVersion)
        writer.write(UInt32(0))  // checksum, sealed below
        writer.write(flags.rawValue)
        writer.write(agreedSizeBytes)
        writer.write(uuids.current)
        writer.write(uuids.bitmap)
        writer.write(uuids.history1)
        writer.write(uuids.history2)
        writer.write(deviceUUID)
        writer.write(layout.metadataSizeBytes)
        writer.write(layout.activityLogOffsetBytes)
        writer.write(layout.bitmapOffsetBytes)
        writer.write(layout.bitmapBytes)
        writer.write(layout.activityLogSlots)
        writer.write(layout.activityLogExtents)
        writer.write(layout.bytesPerBit)
        assert(writer.bytes.count == Self.fieldBytes, "superblock fields take \(writer.bytes.count) bytes")
        writer.pad(toLength: Self.sizeBytes)
        MetadataBlock.seal(&writer)
        let result = writer.bytes
        assert((try? Superblock.decode(result)) == self, "superblock does not decode to what was encoded: \(self)")
        return result
    }

    /// Decodes and validates a superblock.
    ///
    /// Checks, in order: length, magic, checksum, format version, then field sanity (known flags only, 4096 bytes
    /// per bit, al-extents in range, zero padding, a layout whose regions fit the metadata size without
    /// overlapping). The checksum is checked before the version because the frame (magic, version, checksum) is the
    /// same in every version, so a flipped bit in the version field reads as the corruption it is.
    public static func decode(_ bytes: [UInt8]) throws(MetadataError) -> Superblock {
        let block = "superblock"
        let magic = try MetadataBlock.checkFrame(bytes, block: block, magics: [cleanMagic, uncleanMagic])
        let version = MetadataBlock.readUInt32(bytes, at: 4)
        guard version == currentFormatVersion else {
            throw MetadataError(
                .unsupportedVersion, "unsupported format version \(version) (this build reads \(currentFormatVersion))",
                block: block)
        }
        let superblock = try MetadataBlock.read(bytes, block: block) { reader throws(ByteReaderError) in
            try reader.skip(12)  // magic, version, checksum: already checked
            let flags = MetadataFlags(rawValue: try reader.read())
            let agreedSizeBytes: UInt64 = try reader.read()
            let uuids = GenerationUUIDs(
                current: try reader.read(), bitmap: try reader.read(), history1: try reader.read(),
                history2: try reader.read())
            let deviceUUID: UInt64 = try reader.read()
            let metadataSizeBytes: UInt64 = try reader.read()
            let activityLogOffsetBytes: Int64 = try reader.read()
            let bitmapOffsetBytes: Int64 = try reader.read()
            let bitmapBytes: UInt64 = try reader.read()
            let activityLogSlots: UInt32 = try reader.read()
            let activityLogExtents: UInt32 = try reader.read()
            let bytesPerBit: UInt32 = try reader.read()
            return Superblock(
                isClean: magic == cleanMagic, agreedSizeBytes: agreedSizeBytes, uuids: uuids, deviceUUID: deviceUUID,
                flags: flags,
                layout: Layout(
                    metadataSizeBytes: metadataSizeBytes, activityLogOffsetBytes: activityLogOffsetBytes,
                    activityLogSlots: activityLogSlots, activityLogExtents: activityLogExtents,
                    bitmapOffsetBytes: bitmapOffsetBytes, bitmapBytes: bitmapBytes, bytesPerBit: bytesPerBit))
        }
        if let offset = bytes[fieldBytes...].firstIndex(where: { $0 != 0 }) {
            throw MetadataError(.invalidField, "reserved byte \(offset) is not zero", block: block)
        }
        if let problem = superblock.problem() { throw MetadataError(.invalidField, problem, block: block) }
        return superblock
    }
}
