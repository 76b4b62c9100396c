import Testing

@testable import ReplicationCore

@Suite("Meta-disk layout")
struct MetadataLayoutTests {
    typealias Support = MetadataTestSupport
    static let kib: UInt64 = 1 << 10
    static let mib: UInt64 = 1 << 20
    static let gib: UInt64 = 1 << 30

    /// The superblock, activity log and bitmap as absolute ranges, in that order.
    static func regions(_ layout: MetaDiskLayout) -> [Range<UInt64>] {
        [
            layout.superblockOffsetBytes..<(layout.superblockOffsetBytes + 4096),
            layout.activityLogOffsetBytes..<(layout.activityLogOffsetBytes + layout.activityLogBytes),
            layout.bitmapOffsetBytes..<(layout.bitmapOffsetBytes + layout.bitmapBytes),
        ]
    }

    /// Regions are 4 KiB aligned, disjoint, inside the metadata area, and the bitmap covers the data.
    static func expectWellFormed(_ layout: MetaDiskLayout, sourceLocation: SourceLocation = #_sourceLocation) {
        let area = layout.metadataOffsetBytes..<(layout.metadataOffsetBytes + layout.metadataSizeBytes)
        let regions = Self.regions(layout)
        for (index, region) in regions.enumerated() {
            #expect(region.lowerBound % 4096 == 0 && region.upperBound % 4096 == 0, sourceLocation: sourceLocation)
            #expect(
                area.lowerBound <= region.lowerBound && region.upperBound <= area.upperBound,
                sourceLocation: sourceLocation)
            for other in regions[..<index] { #expect(!region.overlaps(other), sourceLocation: sourceLocation) }
        }
        #expect(layout.usableDataBytes % 4096 == 0, sourceLocation: sourceLocation)
        let coverable = layout.bitmapBytes / 4096 * 32640 * 4096
        #expect(coverable >= layout.usableDataBytes, sourceLocation: sourceLocation)
    }

    @Test("Internal metadata on 1 GiB is the superblock, a 32 KiB log and a 36 KiB bitmap at the device end")
    func internalOneGiB() throws {
        let layout = try MetaDiskLayout(.internal(backingSizeBytes: Self.gib))
        Self.expectWellFormed(layout)
        #expect(layout.activityLogBytes == 32 * Self.kib)
        #expect(layout.bitmapBytes == 36 * Self.kib)
        #expect(layout.metadataSizeBytes == 72 * Self.kib)
        #expect(layout.superblockOffsetBytes == Self.gib - 4096)
        #expect(layout.metadataOffsetBytes + layout.metadataSizeBytes == Self.gib)
        // Order on disk: data, bitmap, activity log, superblock.
        #expect(layout.usableDataBytes == layout.bitmapOffsetBytes)
        #expect(layout.bitmapOffsetBytes + layout.bitmapBytes == layout.activityLogOffsetBytes)
        #expect(layout.activityLogOffsetBytes + layout.activityLogBytes == layout.superblockOffsetBytes)
        #expect(layout.usableDataBytes == Self.gib - 72 * Self.kib)
    }

    @Test("Internal metadata on a device that is not a multiple of 4 KiB ends at the last whole 4 KiB")
    func internalUnalignedDevice() throws {
        let backing = 3 * Self.gib + 1536
        let layout = try MetaDiskLayout(.internal(backingSizeBytes: backing))
        Self.expectWellFormed(layout)
        #expect(layout.superblockOffsetBytes == 3 * Self.gib - 4096)
        #expect(layout.superblockOffsetBytes + 4096 <= backing)
    }

    @Test("Internal metadata takes about 36 KiB plus 32 KiB per GiB, like DRBD")
    func internalMetadataFormula() throws {
        let tib: UInt64 = 1 << 40
        let backings: [UInt64] = [2 * Self.mib, 100 * Self.mib, Self.gib, 10 * Self.gib, tib, 7 * tib + 12345]
        for backing in backings {
            let bytes = MetaDiskLayout.internalMetadataBytes(forBackingBytes: backing)
            let fixedBytes: UInt64 = 36 * Self.kib
            #expect(bytes >= fixedBytes + backing / 32768, "\(backing)")
            #expect(bytes <= fixedBytes + backing / 32640 + 4096, "\(backing)")
            #expect(try MetaDiskLayout(.internal(backingSizeBytes: backing)).metadataSizeBytes == bytes)
        }
    }

    @Test("Internal metadata refuses a backing device that leaves less than 1 MiB of data")
    func internalTooSmall() {
        let error = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.internal(backingSizeBytes: Self.mib))
        }
        #expect(error?.code == .layoutDoesNotFit)
        #expect(error?.description.hasPrefix("meta-disk layout: a backing device of 1048576 bytes") == true)
        #expect(throws: Never.self) { try MetaDiskLayout(.internal(backingSizeBytes: Self.mib + 80 * Self.kib)) }
    }

    @Test("Indexed external metadata puts index N in the 128 MiB slot at N times 128 MiB, superblock first")
    func indexedSlots() throws {
        for index in 0..<4 {
            let layout = try MetaDiskLayout(
                .external(metaDeviceSizeBytes: 512 * Self.mib, index: index, backingSizeBytes: 20 * Self.gib))
            Self.expectWellFormed(layout)
            #expect(layout.metadataOffsetBytes == UInt64(index) * 128 * Self.mib)
            #expect(layout.metadataSizeBytes == 128 * Self.mib)
            #expect(layout.superblockOffsetBytes == layout.metadataOffsetBytes)
            #expect(layout.activityLogOffsetBytes == layout.superblockOffsetBytes + 4096)
            #expect(layout.bitmapOffsetBytes == layout.activityLogOffsetBytes + 32 * Self.kib)
            #expect(layout.usableDataBytes == 20 * Self.gib)
        }
    }

    @Test("Indexed external metadata refuses an index beyond the meta device and an out-of-range index")
    func indexedSlotOutsideDevice() {
        let beyond = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.external(metaDeviceSizeBytes: 512 * Self.mib, index: 4, backingSizeBytes: Self.gib))
        }
        #expect(beyond?.code == .layoutDoesNotFit)
        #expect(beyond?.message.contains("no room for index 4") == true)
        let negative = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.external(metaDeviceSizeBytes: 512 * Self.mib, index: -1, backingSizeBytes: Self.gib))
        }
        #expect(negative?.code == .invalidField)
    }

    @Test("Indexed external metadata covers about 4 TiB of data and refuses more")
    func indexedSlotCapacity() throws {
        let maximum = MetaDiskLayout.maximumIndexedDataBytes()
        #expect(maximum > 3 * (1 << 40) + (1 << 39))
        #expect(maximum < 4 * (1 << 40))
        let fits = try MetaDiskLayout(
            .external(metaDeviceSizeBytes: 128 * Self.mib, index: 0, backingSizeBytes: maximum))
        Self.expectWellFormed(fits)
        #expect(fits.usableDataBytes == maximum)
        let error = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(
                .external(metaDeviceSizeBytes: 128 * Self.mib, index: 0, backingSizeBytes: maximum + 4096))
        }
        #expect(error?.code == .layoutDoesNotFit)
        #expect(error?.message.contains("more than a 128 MiB index slot holds") == true)
    }

    @Test("Flexible external metadata starts at offset 0 and is as large as the data needs")
    func flexibleExternal() throws {
        let layout = try MetaDiskLayout(
            .external(metaDeviceSizeBytes: Self.gib, index: nil, backingSizeBytes: 10 * (1 << 40)))
        Self.expectWellFormed(layout)
        #expect(layout.metadataOffsetBytes == 0)
        #expect(layout.superblockOffsetBytes == 0)
        #expect(layout.activityLogOffsetBytes == 4096)
        #expect(layout.bitmapOffsetBytes == 4096 + 32 * Self.kib)
        #expect(layout.metadataSizeBytes == 4096 + 32 * Self.kib + layout.bitmapBytes)
        #expect(layout.usableDataBytes == 10 * (1 << 40))
    }

    @Test("Flexible external metadata refuses a meta device smaller than the metadata")
    func flexibleExternalTooSmall() {
        let error = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.external(metaDeviceSizeBytes: 64 * Self.kib, index: nil, backingSizeBytes: Self.gib))
        }
        #expect(error?.code == .layoutDoesNotFit)
        #expect(error?.message.contains("smaller than the") == true)
    }

    @Test("External metadata refuses a backing device below 1 MiB")
    func externalBackingTooSmall() {
        let error = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.external(metaDeviceSizeBytes: Self.gib, index: nil, backingSizeBytes: 512 * Self.kib))
        }
        #expect(error?.code == .layoutDoesNotFit)
    }

    @Test("Data beyond 1 PiB is refused")
    func dataTooLarge() {
        let error = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.internal(backingSizeBytes: 2 << 50))
        }
        #expect(error?.code == .layoutDoesNotFit)
    }

    @Test("A larger activity-log ring grows the log region and allows more al-extents")
    func activityLogParameters() throws {
        let layout = try MetaDiskLayout(
            .internal(backingSizeBytes: Self.gib), activityLogExtents: 20000, activityLogSlots: 32)
        Self.expectWellFormed(layout)
        #expect(layout.activityLogBytes == 128 * Self.kib)
        #expect(layout.superblockLayout.activityLogOffsetBytes == -128 * 1024)
        #expect(layout.superblockLayout.activityLogExtents == 20000)
        let tooMany = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.internal(backingSizeBytes: Self.gib), activityLogExtents: 20000)
        }
        #expect(tooMany?.code == .invalidField)
        #expect(tooMany?.message.contains("exceeds 6223") == true)
        let oddRing = Support.error { () throws(MetadataError) in
            try MetaDiskLayout(.internal(backingSizeBytes: Self.gib), activityLogSlots: 6)
        }
        #expect(oddRing?.code == .invalidField)
    }

    @Test("Superblock offsets are negative for internal and positive for external metadata")
    func relativeOffsets() throws {
        let internalLayout = try MetaDiskLayout(.internal(backingSizeBytes: Self.gib)).superblockLayout
        #expect(internalLayout.activityLogOffsetBytes == -32 * 1024)
        #expect(internalLayout.bitmapOffsetBytes == -(32 + 36) * 1024)
        let external = try MetaDiskLayout(
            .external(metaDeviceSizeBytes: Self.gib, index: 2, backingSizeBytes: Self.gib)
        ).superblockLayout
        #expect(external.activityLogOffsetBytes == 4096)
        #expect(external.bitmapOffsetBytes == 4096 + 32 * 1024)
        #expect(external.metadataSizeBytes == 128 * Self.mib)
    }
}
