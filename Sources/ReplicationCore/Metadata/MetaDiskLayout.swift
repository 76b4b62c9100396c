/// Where a volume's metadata lives, and how much data the volume can hold (reference drbd.md section 2, "Layout").
///
/// Internal metadata (`meta-disk internal;`) sits at the end of the backing device, which it shares with the data:
///
///     [ data | bitmap | activity log | superblock (4 KiB) ]   <- end of the backing device, rounded down to 4 KiB
///
/// External metadata lives on a separate device, superblock first:
///
///     [ superblock (4 KiB) | activity log | bitmap | (unused) ]
///
/// With an index (`meta-disk /dev/x [idx];`) each index owns a fixed 128 MiB slot at `idx * 128 MiB`, as in DRBD, so
/// several volumes can share one device; the data is then limited to what the bitmap fitting in the slot can describe
/// (about 4 TiB with the default 32 KiB activity log). Without an index (flexible external) the metadata starts at
/// offset 0 and is exactly as large as the data needs; the meta device must be at least that large.
///
/// Sizes: the superblock takes 4 KiB; the activity log `ringSlots * 4 KiB` (32 KiB by default, like DRBD); the
/// bitmap one bit per 4 KiB of data, in whole `BitmapPage`s of 32640 bits each. All regions and the data size are
/// multiples of 4096 bytes.
public struct MetaDiskLayout: Sendable, Hashable {
    /// The drbd.conf `meta-disk` choice together with the device sizes it needs.
    public enum Placement: Sendable, Hashable {
        /// `meta-disk internal;`: metadata at the end of the backing device.
        case `internal`(backingSizeBytes: UInt64)
        /// `meta-disk /dev/x [index];` (indexed) or `meta-disk /dev/x;` (`index == nil`, flexible) on a meta device
        /// of `metaDeviceSizeBytes`, for a backing device of `backingSizeBytes` that holds only data.
        case external(metaDeviceSizeBytes: UInt64, index: Int?, backingSizeBytes: UInt64)
    }

    public static let superblockBytes: UInt64 = UInt64(Superblock.sizeBytes)
    /// Smaller volumes are refused: the metadata would dwarf the data, and a device that small is a mistake.
    public static let minimumDataBytes: UInt64 = 1 << 20
    /// 1 PiB: a Tandem limit that keeps extent numbers, page indexes and the bitmap in memory comfortably bounded.
    public static let maximumDataBytes: UInt64 = 1 << 50
    /// The size of one index slot of indexed external metadata (DRBD's rule).
    public static let indexedSlotBytes: UInt64 = 128 << 20
    /// Highest `meta-disk /dev/x [index]`, as drbd.conf accepts (see docs/config.md).
    public static let maximumIndex = 255
    /// The largest metadata area any valid layout has: maximum data and the largest activity-log ring.
    public static let maximumMetadataBytes: UInt64 =
        superblockBytes + activityLogBytes(ringSlots: ActivityLog.ringSlotsRange.upperBound)
        + bitmapBytes(forDataBytes: maximumDataBytes)

    public let placement: Placement
    public let activityLogExtents: Int
    public let activityLogSlots: Int

    /// Absolute offset on the meta device (the backing device for internal metadata) of the metadata area's first
    /// byte.
    public let metadataOffsetBytes: UInt64
    /// Size of the metadata area: superblock, activity log, bitmap, and for indexed metadata the unused rest of the
    /// slot.
    public let metadataSizeBytes: UInt64
    /// Absolute offsets of the three regions on the meta device.
    public let superblockOffsetBytes: UInt64
    public let activityLogOffsetBytes: UInt64
    public let bitmapOffsetBytes: UInt64
    public let activityLogBytes: UInt64
    public let bitmapBytes: UInt64
    /// Bytes of the backing device that hold data: a multiple of 4096, in `minimumDataBytes...maximumDataBytes`.
    public let usableDataBytes: UInt64

    /// Computes the layout, or throws `layoutDoesNotFit` when the devices are too small (or the data too large for an
    /// indexed slot), and `invalidField` for an index or activity-log size outside the accepted ranges.
    public init(
        _ placement: Placement, activityLogExtents: Int = ActivityLog.defaultCapacityExtents,
        activityLogSlots: Int = ActivityLog.defaultRingSlots
    ) throws(MetadataError) {
        let block = "meta-disk layout"
        if let problem = ActivityLog.parameterProblem(capacityExtents: activityLogExtents, ringSlots: activityLogSlots)
        {
            throw MetadataError(.invalidField, problem, block: block)
        }
        self.placement = placement
        self.activityLogExtents = activityLogExtents
        self.activityLogSlots = activityLogSlots
        let alBytes = Self.activityLogBytes(ringSlots: activityLogSlots)
        activityLogBytes = alBytes

        switch placement {
        case .internal(let backingSizeBytes):
            // The bitmap is sized for the whole aligned backing device rather than for the (smaller) data, which
            // avoids a circular definition and wastes at most one page.
            let alignedEnd = Self.roundDown(backingSizeBytes)
            let size = Self.superblockBytes + alBytes + Self.bitmapBytes(forDataBytes: alignedEnd)
            guard alignedEnd >= size + Self.minimumDataBytes else {
                throw MetadataError(
                    .layoutDoesNotFit,
                    "a backing device of \(backingSizeBytes) bytes cannot hold \(size) bytes of internal metadata "
                        + "and at least \(Self.minimumDataBytes) bytes of data",
                    block: block)
            }
            metadataSizeBytes = size
            metadataOffsetBytes = alignedEnd - size
            bitmapOffsetBytes = metadataOffsetBytes
            bitmapBytes = size - Self.superblockBytes - alBytes
            activityLogOffsetBytes = bitmapOffsetBytes + bitmapBytes
            superblockOffsetBytes = activityLogOffsetBytes + alBytes
            usableDataBytes = metadataOffsetBytes

        case .external(let metaDeviceSizeBytes, let index, let backingSizeBytes):
            let dataBytes = Self.roundDown(backingSizeBytes)
            guard dataBytes >= Self.minimumDataBytes else {
                throw MetadataError(
                    .layoutDoesNotFit,
                    "a backing device of \(backingSizeBytes) bytes is below the minimum of \(Self.minimumDataBytes) "
                        + "bytes of data",
                    block: block)
            }
            usableDataBytes = dataBytes
            bitmapBytes = Self.bitmapBytes(forDataBytes: dataBytes)
            let neededBytes = Self.superblockBytes + alBytes + bitmapBytes
            if let index {
                guard (0...Self.maximumIndex).contains(index) else {
                    throw MetadataError(
                        .invalidField, "meta-disk index \(index) is outside 0...\(Self.maximumIndex)", block: block)
                }
                metadataOffsetBytes = UInt64(index) * Self.indexedSlotBytes
                metadataSizeBytes = Self.indexedSlotBytes
                guard metaDeviceSizeBytes >= metadataOffsetBytes + Self.indexedSlotBytes else {
                    throw MetadataError(
                        .layoutDoesNotFit,
                        "a meta device of \(metaDeviceSizeBytes) bytes has no room for index \(index), which needs "
                            + "\(metadataOffsetBytes + Self.indexedSlotBytes) bytes",
                        block: block)
                }
                guard neededBytes <= Self.indexedSlotBytes else {
                    let maximumData = Self.maximumIndexedDataBytes(activityLogSlots: activityLogSlots)
                    throw MetadataError(
                        .layoutDoesNotFit,
                        "\(dataBytes) bytes of data need \(neededBytes) bytes of metadata, more than a 128 MiB index "
                            + "slot holds; an index slot covers at most \(maximumData) bytes of data (use flexible "
                            + "external metadata)",
                        block: block)
                }
            } else {
                metadataOffsetBytes = 0
                metadataSizeBytes = neededBytes
                guard Self.roundDown(metaDeviceSizeBytes) >= neededBytes else {
                    throw MetadataError(
                        .layoutDoesNotFit,
                        "a meta device of \(metaDeviceSizeBytes) bytes is smaller than the \(neededBytes) bytes of "
                            + "metadata that \(dataBytes) bytes of data need",
                        block: block)
                }
            }
            superblockOffsetBytes = metadataOffsetBytes
            activityLogOffsetBytes = superblockOffsetBytes + Self.superblockBytes
            bitmapOffsetBytes = activityLogOffsetBytes + alBytes
        }

        guard usableDataBytes <= Self.maximumDataBytes else {
            throw MetadataError(
                .layoutDoesNotFit,
                "\(usableDataBytes) bytes of data exceed the maximum of \(Self.maximumDataBytes)", block: block)
        }
        precondition(
            superblockLayout.problem() == nil,
            "computed layout is inconsistent: \(superblockLayout.problem() ?? ""); \(self)")
    }

    /// The layout fields of the superblock, with offsets relative to the superblock's first byte.
    public var superblockLayout: Superblock.Layout {
        Superblock.Layout(
            metadataSizeBytes: metadataSizeBytes,
            activityLogOffsetBytes: Int64(activityLogOffsetBytes) - Int64(superblockOffsetBytes),
            activityLogSlots: UInt32(activityLogSlots), activityLogExtents: UInt32(activityLogExtents),
            bitmapOffsetBytes: Int64(bitmapOffsetBytes) - Int64(superblockOffsetBytes), bitmapBytes: bitmapBytes,
            bytesPerBit: UInt32(BitmapPage.bytesPerBit))
    }

    /// Bitmap bytes for `dataBytes` of data: one bit per 4 KiB, in whole 4 KiB pages of 32640 bits,
    /// i.e. `ceil(ceil(dataBytes / 4096) / 32640) * 4096`, about `dataBytes / 32640`.
    public static func bitmapBytes(forDataBytes dataBytes: UInt64) -> UInt64 {
        BitmapPage.pageCount(forDataBytes: dataBytes) * UInt64(BitmapPage.sizeBytes)
    }

    /// Activity-log bytes: one 4 KiB transaction per ring slot.
    public static func activityLogBytes(ringSlots: Int) -> UInt64 {
        precondition(ringSlots > 0, "activity-log ring of \(ringSlots) slots")
        return UInt64(ringSlots) * UInt64(ActivityLogTransaction.sizeBytes)
    }

    /// Internal metadata for a backing device of `backingBytes`:
    /// `4 KiB + ringSlots * 4 KiB + bitmapBytes(forDataBytes: backingBytes rounded down to 4 KiB)`, i.e. with the
    /// default ring about 36 KiB + backingBytes / 32768 (32 KiB per GiB), like DRBD, plus up to one page of rounding.
    public static func internalMetadataBytes(
        forBackingBytes backingBytes: UInt64, activityLogSlots: Int = ActivityLog.defaultRingSlots
    ) -> UInt64 {
        superblockBytes + activityLogBytes(ringSlots: activityLogSlots)
            + bitmapBytes(forDataBytes: roundDown(backingBytes))
    }

    /// The most data an indexed external slot can describe: the pages left in 128 MiB after the superblock and the
    /// activity log, times 32640 bits of 4 KiB each.
    public static func maximumIndexedDataBytes(activityLogSlots: Int = ActivityLog.defaultRingSlots) -> UInt64 {
        let pages =
            (indexedSlotBytes - superblockBytes - activityLogBytes(ringSlots: activityLogSlots))
            / UInt64(BitmapPage.sizeBytes)
        return pages * BitmapPage.bitsPerPage * BitmapPage.bytesPerBit
    }

    private static func roundDown(_ bytes: UInt64) -> UInt64 { bytes & ~(superblockBytes - 1) }
}
