/// The on-disk form of the out-of-sync bitmap: a sequence of self-describing 4096-byte pages.
///
/// Layout of one page (big-endian):
///
/// | Offset | Size | Field |
/// |---|---|---|
/// | 0 | 4 | magic (`BitmapPage.magic`) |
/// | 4 | 4 | page index (0 for the first page of the bitmap) |
/// | 8 | 4 | CRC-32C of the page with this field zeroed |
/// | 12 | 4 | reserved, 0 |
/// | 16 | 4080 | 510 u64 words of bits |
///
/// Bit `b` of the bitmap (block `b`, bytes `b * 4096 ..< (b + 1) * 4096` of the data) is bit `b % 64` (least
/// significant first) of word `(b / 64) % 510` of page `b / 32640`.
///
/// DRBD stores bare bits and relies on the disk; Tandem spends 16 bytes per page on a header so that a torn write or
/// a write that landed on the wrong page (a misdirected write) is detected at attach instead of silently skipping a
/// resync. A page therefore covers 32640 blocks (about 127.5 MiB) rather than 32768.
public enum BitmapPage {
    /// "TndB".
    public static let magic: UInt32 = 0x546E_6442
    public static let sizeBytes = 4096
    public static let headerBytes = 16
    public static let wordsPerPage = 510
    public static let bitsPerPage: UInt64 = 510 * 64
    /// Bytes of data one bit stands for (DRBD's BM_BLOCK_SIZE).
    public static let bytesPerBit: UInt64 = 4096

    /// Number of pages needed for a bitmap covering `dataBytes` (one bit per started 4 KiB block).
    public static func pageCount(forDataBytes dataBytes: UInt64) -> UInt64 {
        let bits = dataBytes / bytesPerBit + (dataBytes % bytesPerBit == 0 ? 0 : 1)
        return bits / bitsPerPage + (bits % bitsPerPage == 0 ? 0 : 1)
    }

    /// Encodes one page. `words` may be shorter than `wordsPerPage` (the last page of a bitmap); the rest is zero.
    public static func encode(pageIndex: UInt32, words: ArraySlice<UInt64>) -> [UInt8] {
        precondition(
            words.count <= wordsPerPage, "bitmap page \(pageIndex): \(words.count) words exceed \(wordsPerPage)")
        var writer = ByteWriter(reservingCapacity: sizeBytes)
        writer.write(magic)
        writer.write(pageIndex)
        writer.write(UInt32(0))  // checksum, sealed below
        writer.write(UInt32(0))  // reserved
        for word in words { writer.write(word) }
        writer.pad(toLength: sizeBytes)
        MetadataBlock.seal(&writer)
        let result = writer.bytes
        assert(
            (try? decode(result, expectedPageIndex: pageIndex)) == Array(words)
                + Array(repeating: 0, count: wordsPerPage - words.count),
            "bitmap page \(pageIndex) does not decode to what was encoded")
        return result
    }

    /// Decodes one page read from the position of page `expectedPageIndex`, returning all `wordsPerPage` words.
    ///
    /// Refuses a page with the wrong magic, a bad checksum, a different page index (a write that landed on the
    /// wrong page) or a non-zero reserved field.
    public static func decode(_ bytes: [UInt8], expectedPageIndex: UInt32) throws(MetadataError) -> [UInt64] {
        let block = "bitmap page \(expectedPageIndex)"
        _ = try MetadataBlock.checkFrame(bytes, block: block, magics: [magic])
        let (storedIndex, reserved, words) = try MetadataBlock.read(bytes, block: block) {
            reader throws(ByteReaderError) in
            try reader.skip(4)  // magic, already checked
            let storedIndex = try reader.read(UInt32.self)
            try reader.skip(4)  // checksum, already checked
            let reserved = try reader.read(UInt32.self)
            var words: [UInt64] = []
            words.reserveCapacity(wordsPerPage)
            for _ in 0..<wordsPerPage { words.append(try reader.read(UInt64.self)) }
            return (storedIndex, reserved, words)
        }
        guard storedIndex == expectedPageIndex else {
            throw MetadataError(
                .invalidField,
                "holds page index \(storedIndex), expected \(expectedPageIndex) (misdirected write)", block: block)
        }
        guard reserved == 0 else {
            throw MetadataError(.invalidField, "reserved field is \(reserved.prefixedHex), expected 0", block: block)
        }
        return words
    }
}
