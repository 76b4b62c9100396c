/// Why a metadata block could not be read, or why a metadata layout cannot be built.
///
/// Corrupt input from a disk is never a programmer error, so every decoder throws this instead of trapping. The
/// block description says which block failed ("superblock", "bitmap page 3", "activity-log slot 5"), so that an
/// operator reading the message knows where on the meta-disk to look.
public struct MetadataError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The class of failure; callers branch on this, people read `message`.
    public enum Code: String, Sendable, Hashable {
        /// The block does not start with the magic number of its kind (never written, or not ours).
        case badMagic
        /// The block was written by a format version this build does not read.
        case unsupportedVersion
        /// The stored checksum does not match the block's contents (torn or corrupted write).
        case checksumMismatch
        /// Fewer bytes than the block's fixed size.
        case truncated
        /// A field holds a value the format does not allow, although the checksum is good.
        case invalidField
        /// The requested metadata does not fit the devices it should live on.
        case layoutDoesNotFit
    }

    public var code: Code
    /// What is wrong, for people: e.g. "checksum mismatch (stored 0x1234ABCD, computed 0x0BADF00D)".
    public var message: String
    /// Which block or object failed, e.g. "superblock", "bitmap page 3", "activity-log slot 5", "meta-disk layout".
    public var blockDescription: String

    /// An error of class `code` in the block named `blockDescription`.
    public init(_ code: Code, _ message: String, block blockDescription: String) {
        self.code = code
        self.message = message
        self.blockDescription = blockDescription
    }

    /// For example "superblock: checksum mismatch (stored 0x1234ABCD, computed 0x0BADF00D)".
    public var description: String { "\(blockDescription): \(message)" }
}

/// The framing shared by every 4 KiB metadata block (superblock, bitmap page, activity-log transaction): a u32 magic
/// at byte 0 and a CRC-32C at byte 8 computed over the whole block with its own four bytes taken as zero. Keeping the
/// magic and checksum at the same offsets in every block kind and every format version is what lets the checksum be
/// verified before the version is interpreted.
enum MetadataBlock {
    static let sizeBytes = 4096
    static let magicOffset = 0
    static let checksumOffset = 8

    /// CRC-32C of `bytes` with the checksum field read as zero.
    static func checksum(of bytes: [UInt8]) -> UInt32 {
        precondition(bytes.count >= checksumOffset + 4, "block of \(bytes.count) bytes has no checksum field")
        var crc = CRC32C()
        crc.update(bytes[0..<checksumOffset])
        crc.update(repeatElement(UInt8(0), count: 4))
        crc.update(bytes[(checksumOffset + 4)...])
        return crc.value
    }

    /// Writes the checksum into an otherwise finished block.
    static func seal(_ writer: inout ByteWriter) {
        precondition(
            writer.bytes.count == sizeBytes, "sealing a block of \(writer.bytes.count) bytes, not \(sizeBytes)")
        writer.overwrite(checksum(of: writer.bytes), at: checksumOffset)
    }

    /// Checks length, magic and checksum, in that order, and returns the magic found.
    ///
    /// A single flipped bit anywhere therefore surfaces as `badMagic` (if it hit the magic) or `checksumMismatch`;
    /// the version and the other fields are only interpreted once the block is known to be intact.
    static func checkFrame(_ bytes: [UInt8], block: String, magics: [UInt32]) throws(MetadataError) -> UInt32 {
        guard bytes.count >= sizeBytes else {
            throw MetadataError(.truncated, "truncated: \(bytes.count) bytes, expected \(sizeBytes)", block: block)
        }
        guard bytes.count == sizeBytes else {
            throw MetadataError(.invalidField, "\(bytes.count) bytes, expected exactly \(sizeBytes)", block: block)
        }
        let magic = readUInt32(bytes, at: magicOffset)
        guard magics.contains(magic) else {
            let expected = magics.map(\.prefixedHex).joined(separator: " or ")
            throw MetadataError(.badMagic, "bad magic \(magic.prefixedHex) (expected \(expected))", block: block)
        }
        let stored = readUInt32(bytes, at: checksumOffset)
        let computed = checksum(of: bytes)
        guard stored == computed else {
            throw MetadataError(
                .checksumMismatch, "checksum mismatch (stored \(stored.prefixedHex), computed \(computed.prefixedHex))",
                block: block)
        }
        return magic
    }

    /// Big-endian u32 at `offset`; the caller has checked the length.
    static func readUInt32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes[offset..<offset + 4].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
    }

    /// Runs a sequence of reads over a block whose length has already been checked. A read past the end would then
    /// be a layout bug in this file, but it is still reported as `truncated` rather than trapping, since the bytes
    /// came from a disk.
    static func read<T>(
        _ bytes: [UInt8], block: String, _ body: (inout ByteReader) throws(ByteReaderError) -> T
    ) throws(MetadataError) -> T {
        var reader = ByteReader(bytes)
        do {
            return try body(&reader)
        } catch {
            throw MetadataError(.truncated, "truncated: \(error)", block: block)
        }
    }
}
