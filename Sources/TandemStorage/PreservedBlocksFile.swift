#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ReplicationCore

/// The file that keeps a split-brain victim's diverged blocks before a resync overwrites them.
///
/// DRBD throws the victim's changes away; Tandem copies them first (`MetadataStore.preserveDivergedBlocks`), so that
/// an operator can inspect or restore them. One file per discard, named by its UTC time, under the configured
/// directory (by default `/var/lib/tandem/preserved/<resource>/`).
///
/// Layout (big-endian). The header is followed by zero padding up to `dataOffsetBytes`, a multiple of 4096, so that
/// the data can be copied back with aligned I/O; then the ranges' bytes, back to back, in table order.
///
/// | Offset | Size | Field |
/// |---|---|---|
/// | 0 | 4 | magic `TndP` (0x546E6450) |
/// | 4 | 4 | format version (1) |
/// | 8 | 4 | CRC-32C of the header's `headerBytes` bytes with this field zeroed |
/// | 12 | 4 | header length in bytes (`headerBytes`, without the padding) |
/// | 16 | 8 | data offset in bytes (`dataOffsetBytes`) |
/// | 24 | 8 | creation time, nanoseconds since the Unix epoch (UTC), signed |
/// | 32 | 8 | size of the data device the blocks came from, in bytes |
/// | 40 | 8 | total data bytes (the sum of the range lengths) |
/// | 48 | 4 | range count (at most `rangesMaximum`) |
/// | 52 | 2+n | resource name: u16 length, UTF-8 (at most 255 bytes) |
/// | then | 2+n | reason: u16 length, UTF-8 (at most 4096 bytes) |
/// | then | 2+n | source device path: u16 length, UTF-8 (at most 4096 bytes) |
/// | then | 20 each | ranges: u64 offset in bytes on the data device, u64 length in bytes, u32 CRC-32C of the data |
///
/// Each range's data carries its own checksum, so a damaged file still yields its intact ranges.
public struct PreservedBlocksHeader: Sendable, Hashable {
    public struct Range: Sendable, Hashable {
        public var offsetBytes: UInt64
        public var lengthBytes: UInt64
        /// CRC-32C of the range's data as copied.
        public var checksum: UInt32

        public init(offsetBytes: UInt64, lengthBytes: UInt64, checksum: UInt32) {
            self.offsetBytes = offsetBytes
            self.lengthBytes = lengthBytes
            self.checksum = checksum
        }
    }

    /// "TndP".
    public static let magic: UInt32 = 0x546E_6450
    public static let currentFormatVersion: UInt32 = 1
    public static let rangesMaximum = 65536
    public static let resourceNameBytesMaximum = 255
    public static let textBytesMaximum = 4096
    static let fixedBytes = 52
    static let rangeEntryBytes = 20
    /// The largest header: every string and range at its limit.
    static let headerBytesMaximum = fixedBytes + 6 + resourceNameBytesMaximum + 2 * textBytesMaximum
        + rangesMaximum * rangeEntryBytes
    static let alignmentBytes: UInt64 = 4096

    public var resourceName: String
    public var reason: String
    public var sourcePath: String
    public var createdAtNanoseconds: Int64
    public var deviceSizeBytes: UInt64
    public var ranges: [Range]

    public init(
        resourceName: String, reason: String, sourcePath: String, createdAtNanoseconds: Int64,
        deviceSizeBytes: UInt64, ranges: [Range]
    ) {
        self.resourceName = resourceName
        self.reason = reason
        self.sourcePath = sourcePath
        self.createdAtNanoseconds = createdAtNanoseconds
        self.deviceSizeBytes = deviceSizeBytes
        self.ranges = ranges
    }

    public var totalDataBytes: UInt64 { ranges.reduce(0) { $0 + $1.lengthBytes } }

    /// Bytes of the header without padding.
    public var headerBytes: Int {
        Self.fixedBytes + 6 + Array(resourceName.utf8).count + Array(reason.utf8).count
            + Array(sourcePath.utf8).count + ranges.count * Self.rangeEntryBytes
    }

    /// Where the data starts: the header rounded up to 4 KiB.
    public var dataOffsetBytes: UInt64 {
        (UInt64(headerBytes) + Self.alignmentBytes - 1) / Self.alignmentBytes * Self.alignmentBytes
    }

    /// Why this header cannot be written, or nil. Decoding refuses exactly what encoding refuses.
    func problem() -> String? {
        guard ranges.count <= Self.rangesMaximum else { return "\(ranges.count) ranges exceed \(Self.rangesMaximum)" }
        for (name, text, limit) in [
            ("resource name", resourceName, Self.resourceNameBytesMaximum), ("reason", reason, Self.textBytesMaximum),
            ("source path", sourcePath, Self.textBytesMaximum),
        ] where text.utf8.count > limit {
            return "\(name) of \(text.utf8.count) bytes exceeds \(limit)"
        }
        var previousEnd: UInt64 = 0
        var total: UInt64 = 0
        for range in ranges {
            let (end, overflow) = range.offsetBytes.addingReportingOverflow(range.lengthBytes)
            guard range.lengthBytes > 0, !overflow, end <= deviceSizeBytes, range.offsetBytes >= previousEnd else {
                return "range [\(range.offsetBytes), +\(range.lengthBytes)) is empty, out of order, overlapping or "
                    + "beyond the device's \(deviceSizeBytes) bytes"
            }
            previousEnd = end
            total += range.lengthBytes
        }
        guard total <= deviceSizeBytes else { return "\(total) bytes exceed the device's \(deviceSizeBytes)" }
        return nil
    }

    /// The header bytes, padded with zeros to `dataOffsetBytes`.
    func encoded() -> [UInt8] {
        if let problem = problem() { preconditionFailure("preserved-blocks header cannot be encoded: \(problem)") }
        var writer = ByteWriter(reservingCapacity: Int(dataOffsetBytes))
        writer.write(Self.magic)
        writer.write(Self.currentFormatVersion)
        writer.write(UInt32(0))  // checksum, filled in below
        writer.write(UInt32(headerBytes))
        writer.write(dataOffsetBytes)
        writer.write(createdAtNanoseconds)
        writer.write(deviceSizeBytes)
        writer.write(totalDataBytes)
        writer.write(UInt32(ranges.count))
        writer.writeString(resourceName, maximumBytes: Self.resourceNameBytesMaximum)
        writer.writeString(reason, maximumBytes: Self.textBytesMaximum)
        writer.writeString(sourcePath, maximumBytes: Self.textBytesMaximum)
        for range in ranges {
            writer.write(range.offsetBytes)
            writer.write(range.lengthBytes)
            writer.write(range.checksum)
        }
        assert(writer.bytes.count == headerBytes, "header of \(writer.bytes.count) bytes, computed \(headerBytes)")
        writer.overwrite(Self.checksum(of: writer.bytes[...]), at: 8)
        writer.pad(toLength: Int(dataOffsetBytes))
        return writer.bytes
    }

    /// CRC-32C of a header with its checksum field read as zero.
    static func checksum(of header: ArraySlice<UInt8>) -> UInt32 {
        var crc = CRC32C()
        crc.update(header.prefix(8))
        crc.update(repeatElement(UInt8(0), count: 4))
        crc.update(header.dropFirst(12))
        return crc.value
    }

    /// Reads the 24-byte frame: checks magic and version, returns the header length and the data offset.
    static func decodeFrame(_ bytes: [UInt8]) throws(StorageError) -> (headerBytes: Int, dataOffsetBytes: UInt64) {
        let fields: (magic: UInt32, version: UInt32, headerBytes: UInt32, dataOffsetBytes: UInt64)
        do throws(ByteReaderError) {
            var reader = ByteReader(bytes)
            let magic = try reader.read(UInt32.self)
            let version = try reader.read(UInt32.self)
            try reader.skip(4)
            fields = (magic, version, try reader.read(), try reader.read())
        } catch {
            throw StorageError(.preservedFileCorrupt, "preserved-blocks header is truncated: \(error)")
        }
        guard fields.magic == Self.magic else {
            throw StorageError(.preservedFileCorrupt, "not a preserved-blocks file (magic \(fields.magic.prefixedHex))")
        }
        guard fields.version == currentFormatVersion else {
            throw StorageError(
                .preservedFileCorrupt,
                "unsupported preserved-blocks format version \(fields.version) (this build reads "
                    + "\(currentFormatVersion))")
        }
        let headerBytes = Int(fields.headerBytes)
        guard headerBytes >= fixedBytes, headerBytes <= headerBytesMaximum,
            fields.dataOffsetBytes == (UInt64(headerBytes) + alignmentBytes - 1) / alignmentBytes * alignmentBytes
        else {
            throw StorageError(
                .preservedFileCorrupt,
                "implausible header length \(headerBytes) or data offset \(fields.dataOffsetBytes)")
        }
        return (headerBytes, fields.dataOffsetBytes)
    }

    /// Decodes a whole header (`bytes` holds at least its `headerBytes`). Checks the checksum before any field past
    /// the frame is trusted.
    static func decode(_ bytes: [UInt8]) throws(StorageError) -> PreservedBlocksHeader {
        let frame = try decodeFrame(bytes)
        guard bytes.count >= frame.headerBytes else {
            throw StorageError(
                .preservedFileCorrupt, "header is truncated: \(bytes.count) of \(frame.headerBytes) bytes")
        }
        let header = bytes[0..<frame.headerBytes]
        let stored = MetadataBlockBytes.readUInt32(bytes, at: 8)
        let computed = checksum(of: header)
        guard stored == computed else {
            throw StorageError(
                .preservedFileCorrupt,
                "header checksum mismatch (stored \(stored.prefixedHex), computed \(computed.prefixedHex)): the file is damaged")
        }
        let decoded: PreservedBlocksHeader?
        let total: UInt64
        var tableProblem = ""
        do throws(ByteReaderError) {
            var reader = ByteReader(header)
            try reader.skip(24)
            let createdAt = try reader.read(Int64.self)
            let deviceSize = try reader.read(UInt64.self)
            total = try reader.read(UInt64.self)
            let rangeCount = Int(try reader.read(UInt32.self))
            let resource = try reader.readString(maximumBytes: resourceNameBytesMaximum)
            let reason = try reader.readString(maximumBytes: textBytesMaximum)
            let source = try reader.readString(maximumBytes: textBytesMaximum)
            // The count is bounded by the header length, itself bounded by `headerBytesMaximum`.
            if rangeCount * rangeEntryBytes == reader.remaining {
                var ranges: [Range] = []
                ranges.reserveCapacity(rangeCount)
                for _ in 0..<rangeCount {
                    ranges.append(
                        Range(offsetBytes: try reader.read(), lengthBytes: try reader.read(), checksum: try reader.read()))
                }
                decoded = PreservedBlocksHeader(
                    resourceName: resource, reason: reason, sourcePath: source, createdAtNanoseconds: createdAt,
                    deviceSizeBytes: deviceSize, ranges: ranges)
            } else {
                tableProblem = "\(rangeCount) ranges do not fill the \(reader.remaining) bytes of the range table"
                decoded = nil
            }
        } catch {
            throw StorageError(.preservedFileCorrupt, "preserved-blocks header is malformed: \(error)")
        }
        guard let decoded else { throw StorageError(.preservedFileCorrupt, tableProblem) }
        if let problem = decoded.problem() { throw StorageError(.preservedFileCorrupt, problem) }
        guard decoded.totalDataBytes == total, decoded.dataOffsetBytes == frame.dataOffsetBytes else {
            throw StorageError(.preservedFileCorrupt, "the totals do not match the range table")
        }
        return decoded
    }
}

/// Reads a preserved-blocks file: the header, and each range's data with its checksum verified. For tests and for
/// the restore tool (`tandem adm`) to come.
public final class PreservedBlocksReader: Sendable {
    /// A range is returned whole; larger ranges must be read with `readRange(at:chunk:)`.
    public static let rangeReadBytesMaximum: UInt64 = 256 << 20
    static let chunkBytes = 1 << 20

    public let path: String
    public let header: PreservedBlocksHeader
    private let fd: Int32
    /// Where each range's data starts in the file.
    private let rangeFileOffsets: [UInt64]

    /// Opens and decodes `path`; throws `openFailed` or `preservedFileCorrupt` (including a file too short for the
    /// data its header announces).
    public init(path: String) throws(StorageError) {
        let fd: Int32
        do {
            fd = try Posix.open(path, flags: O_RDONLY)
        } catch {
            throw error.storageError(.openFailed, "Check the path of the preserved-blocks file")
        }
        do throws(StorageError) {
            var status = stat()
            guard fstat(fd, &status) == 0 else { throw StorageError(.ioFailed, "cannot stat \(path)", cause: .errno(errno)) }
            let fileBytes = UInt64(status.st_size)
            let first = try Self.read(fd, count: Int(min(fileBytes, 4096)), at: 0, path: path)
            let frame = try PreservedBlocksHeader.decodeFrame(first)
            guard fileBytes >= UInt64(frame.headerBytes) else {
                throw StorageError(.preservedFileCorrupt, "\(path) is truncated inside its header")
            }
            let header = try PreservedBlocksHeader.decode(
                try Self.read(fd, count: frame.headerBytes, at: 0, path: path))
            guard fileBytes == header.dataOffsetBytes + header.totalDataBytes else {
                throw StorageError(
                    .preservedFileCorrupt,
                    "\(path) holds \(fileBytes) bytes; its header announces \(header.dataOffsetBytes) + "
                        + "\(header.totalDataBytes)")
            }
            var offsets: [UInt64] = []
            var position = header.dataOffsetBytes
            for range in header.ranges {
                offsets.append(position)
                position += range.lengthBytes
            }
            self.path = path
            self.header = header
            self.fd = fd
            self.rangeFileOffsets = offsets
        } catch {
            Posix.close(fd)
            throw error
        }
    }

    deinit { Posix.close(fd) }

    /// The data of range `index`, checksum verified. Throws `invalidArgument` for a range larger than
    /// `rangeReadBytesMaximum` (use `readRange(at:chunk:)`), `preservedFileCorrupt` on a checksum mismatch.
    public func readRange(at index: Int) throws(StorageError) -> [UInt8] {
        let range = header.ranges[index]
        guard range.lengthBytes <= Self.rangeReadBytesMaximum else {
            throw StorageError(
                .invalidArgument, "range \(index) holds \(range.lengthBytes) bytes; read it in chunks instead")
        }
        var data: [UInt8] = []
        data.reserveCapacity(Int(range.lengthBytes))
        try readRange(at: index) { chunk in data.append(contentsOf: chunk) }
        return data
    }

    /// Streams range `index` in chunks of at most 1 MiB, then verifies its checksum (so a consumer that restores must
    /// not commit the chunks before this returns).
    public func readRange(at index: Int, chunk: ([UInt8]) -> Void) throws(StorageError) {
        precondition(header.ranges.indices.contains(index), "range \(index) of \(header.ranges.count)")
        let range = header.ranges[index]
        var crc = CRC32C()
        var done: UInt64 = 0
        while done < range.lengthBytes {
            let count = Int(min(UInt64(Self.chunkBytes), range.lengthBytes - done))
            let bytes = try Self.read(fd, count: count, at: rangeFileOffsets[index] + done, path: path)
            crc.update(bytes)
            chunk(bytes)
            done += UInt64(count)
        }
        guard crc.value == range.checksum else {
            throw StorageError(
                .preservedFileCorrupt,
                "range \(index) ([\(range.offsetBytes), +\(range.lengthBytes))) has checksum \(crc.value.prefixedHex), "
                    + "expected \(range.checksum.prefixedHex): its data is damaged")
        }
    }

    /// Verifies every range's checksum.
    public func verify() throws(StorageError) {
        for index in header.ranges.indices { try readRange(at: index) { _ in } }
    }

    private static func read(_ fd: Int32, count: Int, at offsetBytes: UInt64, path: String) throws(StorageError)
        -> [UInt8]
    {
        do {
            return try Posix.readFully(fd, count: count, offsetBytes: offsetBytes)
        } catch {
            throw error.storageError(.ioFailed, "Reading \(path) failed")
        }
    }
}

/// Big-endian field access for already length-checked byte arrays.
enum MetadataBlockBytes {
    static func readUInt32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes[offset..<offset + 4].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
    }
}

