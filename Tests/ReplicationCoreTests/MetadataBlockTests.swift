import Testing

@testable import ReplicationCore

@Suite("Superblock")
struct SuperblockTests {
    typealias Support = MetadataTestSupport

    static func sample(isClean: Bool = true) throws -> Superblock {
        let layout = try MetaDiskLayout(.internal(backingSizeBytes: 1 << 30))
        return Superblock(
            isClean: isClean, agreedSizeBytes: layout.usableDataBytes,
            uuids: GenerationUUIDs(current: 0xA1B2_C3D4_E5F6_0711, bitmap: 0x10, history1: 0x20, history2: 0x30),
            deviceUUID: 0xDEAD_BEEF_0000_0001, flags: [.consistent, .wasUpToDate, .activityLogClean],
            layout: layout.superblockLayout)
    }

    @Test("A superblock is exactly 4096 bytes and decodes to the same value, clean or unclean")
    func roundTrip() throws {
        for isClean in [true, false] {
            let superblock = try Self.sample(isClean: isClean)
            let bytes = superblock.encoded()
            #expect(bytes.count == 4096)
            #expect(try Superblock.decode(bytes) == superblock)
        }
    }

    @Test("Clean and unclean superblocks carry different magics")
    func magicSelectsCleanliness() throws {
        let clean = try Self.sample(isClean: true).encoded()
        let unclean = try Self.sample(isClean: false).encoded()
        #expect(MetadataBlock.readUInt32(clean, at: 0) == Superblock.cleanMagic)
        #expect(MetadataBlock.readUInt32(unclean, at: 0) == Superblock.uncleanMagic)
        #expect((Superblock.cleanMagic ^ Superblock.uncleanMagic).nonzeroBitCount > 1)
    }

    @Test("Any single flipped bit makes decoding fail with a bad magic or a checksum mismatch")
    func singleBitFlipsAreDetected() throws {
        let bytes = try Self.sample().encoded()
        for bit in Support.bitPositionsToFlip(seed: 1) {
            let error = Support.error { () throws(MetadataError) in
                try Superblock.decode(Support.flippingBit(bit, of: bytes))
            }
            #expect(
                error?.code == .checksumMismatch || error?.code == .badMagic, "bit \(bit): \(String(describing: error))"
            )
        }
    }

    @Test("A checksum mismatch names the block and both checksums")
    func checksumMismatchDescription() throws {
        var bytes = try Self.sample().encoded()
        bytes[200] ^= 0x01
        let error = Support.error { () throws(MetadataError) in try Superblock.decode(bytes) }
        let description = try #require(error).description
        #expect(description.hasPrefix("superblock: checksum mismatch (stored 0x"))
        #expect(description.contains(", computed 0x"))
    }

    @Test("A short buffer is reported as truncated, a long one as invalid")
    func lengthIsChecked() throws {
        let bytes = try Self.sample().encoded()
        #expect(throws: MetadataError.self) { try Superblock.decode([]) }
        #expect(
            Support.error { () throws(MetadataError) in try Superblock.decode(Array(bytes.prefix(4095))) }?.code
                == .truncated)
        #expect(Support.error { () throws(MetadataError) in try Superblock.decode([]) }?.code == .truncated)
        #expect(Support.error { () throws(MetadataError) in try Superblock.decode(bytes + [0]) }?.code == .invalidField)
    }

    @Test("An all-zero block, as on a device never written, has a bad magic")
    func zeroBlockHasBadMagic() {
        let error = Support.error { () throws(MetadataError) in try Superblock.decode(Array(repeating: 0, count: 4096))
        }
        #expect(error?.code == .badMagic)
    }

    @Test("An intact superblock of another format version is refused as unsupported")
    func otherVersionIsRefused() throws {
        let bytes = Support.patching(try Self.sample().encoded(), u32: 2, at: 4)
        let error = Support.error { () throws(MetadataError) in try Superblock.decode(bytes) }
        #expect(error?.code == .unsupportedVersion)
        #expect(error?.message.contains("version 2") == true)
    }

    @Test("Unknown flag bits are refused even with a good checksum")
    func unknownFlagsAreRefused() throws {
        let bytes = Support.patching(try Self.sample().encoded(), u32: 1 << 20 | 1, at: 12)
        let error = Support.error { () throws(MetadataError) in try Superblock.decode(bytes) }
        #expect(error?.code == .invalidField)
        #expect(error?.message.contains("unknown flag bits 0x00100000") == true)
    }

    @Test("Insane layout fields are refused: bytes per bit, al-extents, overlapping or misplaced regions")
    func insaneLayoutsAreRefused() throws {
        let good = try Self.sample().encoded()
        let cases: [(String, [UInt8])] = [
            ("bytes per bit 512", Support.patching(good, u32: 512, at: 104)),
            ("al-extents 6", Support.patching(good, u32: 6, at: 100)),
            ("al-extents 65535", Support.patching(good, u32: 65535, at: 100)),
            ("ring of 3 slots", Support.patching(good, u32: 3, at: 96)),
            ("bitmap overlapping the activity log", Support.patching(good, u64: UInt64(bitPattern: -4096), at: 80)),
            ("activity log outside the area", Support.patching(good, u64: UInt64(bitPattern: -(1 << 30)), at: 72)),
            ("metadata size not a multiple of 4096", Support.patching(good, u64: 73729, at: 64)),
            ("agreed size beyond the bitmap", Support.patching(good, u64: 1 << 40, at: 16)),
            ("non-zero reserved byte", Support.resealed(Support.flippingBit(2000 * 8, of: good))),
        ]
        for (name, bytes) in cases {
            let error = Support.error { () throws(MetadataError) in try Superblock.decode(bytes) }
            #expect(error?.code == .invalidField, "\(name): \(String(describing: error))")
        }
    }

    @Test("The layouts of every meta-disk placement are accepted by the superblock")
    func everyPlacementEncodes() throws {
        let placements: [MetaDiskLayout.Placement] = [
            .internal(backingSizeBytes: 10 << 30),
            .external(metaDeviceSizeBytes: 1 << 30, index: 3, backingSizeBytes: 100 << 30),
            .external(metaDeviceSizeBytes: 1 << 30, index: nil, backingSizeBytes: 100 << 30),
        ]
        for placement in placements {
            let layout = try MetaDiskLayout(placement)
            let superblock = Superblock(
                isClean: false, agreedSizeBytes: layout.usableDataBytes, uuids: .created, deviceUUID: 7, flags: [],
                layout: layout.superblockLayout)
            #expect(try Superblock.decode(superblock.encoded()) == superblock)
        }
    }
}

@Suite("Bitmap pages")
struct BitmapPageTests {
    typealias Support = MetadataTestSupport

    static func words(seed: UInt64, count: Int = BitmapPage.wordsPerPage) -> [UInt64] {
        var random = SplitMix64(seed: seed)
        return (0..<count).map { _ in random.next() }
    }

    @Test("A full page decodes to the words it was encoded from")
    func roundTrip() throws {
        let words = Self.words(seed: 42)
        let bytes = BitmapPage.encode(pageIndex: 7, words: words[...])
        #expect(bytes.count == 4096)
        #expect(try BitmapPage.decode(bytes, expectedPageIndex: 7) == words)
    }

    @Test("A short last page is padded with zero words")
    func shortPageIsPadded() throws {
        let words = Self.words(seed: 3, count: 17)
        let decoded = try BitmapPage.decode(BitmapPage.encode(pageIndex: 0, words: words[...]), expectedPageIndex: 0)
        #expect(decoded.count == BitmapPage.wordsPerPage)
        #expect(Array(decoded.prefix(17)) == words)
        #expect(decoded.dropFirst(17).allSatisfy { $0 == 0 })
    }

    @Test("Words are stored big-endian after a 16-byte header")
    func wordsAreBigEndian() {
        let bytes = BitmapPage.encode(pageIndex: 1, words: [0x0102_0304_0506_0708][...])
        #expect(Array(bytes[16..<24]) == [1, 2, 3, 4, 5, 6, 7, 8])
    }

    @Test("Any single flipped bit makes decoding fail with a bad magic or a checksum mismatch")
    func singleBitFlipsAreDetected() {
        let bytes = BitmapPage.encode(pageIndex: 5, words: Self.words(seed: 9)[...])
        for bit in Support.bitPositionsToFlip(seed: 2) {
            let error = Support.error { () throws(MetadataError) in
                try BitmapPage.decode(Support.flippingBit(bit, of: bytes), expectedPageIndex: 5)
            }
            #expect(
                error?.code == .checksumMismatch || error?.code == .badMagic, "bit \(bit): \(String(describing: error))"
            )
        }
    }

    @Test("A page read from the wrong position is refused, naming both page indexes")
    func misdirectedPageIsRefused() throws {
        let bytes = BitmapPage.encode(pageIndex: 3, words: Self.words(seed: 1)[...])
        let error = try #require(
            Support.error { () throws(MetadataError) in try BitmapPage.decode(bytes, expectedPageIndex: 4) })
        #expect(error.code == .invalidField)
        #expect(error.blockDescription == "bitmap page 4")
        #expect(error.description == "bitmap page 4: holds page index 3, expected 4 (misdirected write)")
    }

    @Test("A truncated page is reported as truncated")
    func truncatedPage() {
        let bytes = BitmapPage.encode(pageIndex: 0, words: [][...])
        let error = Support.error { () throws(MetadataError) in
            try BitmapPage.decode(Array(bytes.prefix(100)), expectedPageIndex: 0)
        }
        #expect(error?.code == .truncated)
    }

    @Test("A non-zero reserved field is refused even with a good checksum")
    func reservedFieldMustBeZero() {
        let bytes = Support.patching(BitmapPage.encode(pageIndex: 0, words: [][...]), u32: 1, at: 12)
        let error = Support.error { () throws(MetadataError) in try BitmapPage.decode(bytes, expectedPageIndex: 0) }
        #expect(error?.code == .invalidField)
    }

    @Test("Page counts follow one bit per started 4 KiB block and 32640 bits per page")
    func pageCounts() {
        #expect(BitmapPage.pageCount(forDataBytes: 0) == 0)
        #expect(BitmapPage.pageCount(forDataBytes: 1) == 1)
        #expect(BitmapPage.pageCount(forDataBytes: 32640 * 4096) == 1)
        #expect(BitmapPage.pageCount(forDataBytes: 32640 * 4096 + 1) == 2)
        #expect(BitmapPage.pageCount(forDataBytes: 1 << 30) == 9)
    }
}

@Suite("Metadata errors")
struct MetadataErrorTests {
    @Test("The description names the block first, then the problem")
    func descriptionFormat() {
        let error = MetadataError(.invalidField, "bytes per bit is 512, expected 4096", block: "superblock")
        #expect(error.description == "superblock: bytes per bit is 512, expected 4096")
        #expect((0xBEEF as UInt32).prefixedHex == "0x0000BEEF")
        #expect((0xAB as UInt64).fixedWidthHex == "00000000000000AB")
    }
}
