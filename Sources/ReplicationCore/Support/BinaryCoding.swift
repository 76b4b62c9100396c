/// Big-endian writing into a byte array, for the explicit on-disk and on-wire layouts.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(reservingCapacity capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    public mutating func write<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func write(_ raw: some Sequence<UInt8>) { bytes.append(contentsOf: raw) }

    /// A u16 length followed by UTF-8 bytes; `maximumBytes` is a programmer-set limit, never exceeded by callers.
    public mutating func writeString(_ string: String, maximumBytes: Int) {
        let utf8 = Array(string.utf8)
        precondition(utf8.count <= maximumBytes, "string of \(utf8.count) bytes exceeds its limit of \(maximumBytes)")
        write(UInt16(utf8.count))
        write(utf8)
    }

    /// Pads with zeros up to `length` bytes in total.
    public mutating func pad(toLength length: Int) {
        precondition(bytes.count <= length, "layout overflow: \(bytes.count) bytes written into \(length)")
        bytes.append(contentsOf: repeatElement(0, count: length - bytes.count))
    }

    /// Overwrites a big-endian value at `offset` (for checksums computed after the rest is laid out).
    public mutating func overwrite<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value.bigEndian) { raw in
            for (index, byte) in raw.enumerated() { bytes[offset + index] = byte }
        }
    }
}

/// Why a byte layout could not be read. Carries the offset so that a corrupt block can be located.
public struct ByteReaderError: Error, Sendable, Hashable, CustomStringConvertible {
    public var offset: Int
    public var message: String

    public var description: String { "at byte \(offset): \(message)" }
}

/// Big-endian reading from a byte array. Every read is bounds-checked and throws instead of trapping, because the
/// bytes come from disks and peers that may be corrupt or hostile.
public struct ByteReader: Sendable {
    public let bytes: ArraySlice<UInt8>
    public private(set) var offset: Int

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.offset = bytes.startIndex
    }

    public init(_ bytes: [UInt8]) { self.init(bytes[...]) }

    public var remaining: Int { bytes.endIndex - offset }
    public var position: Int { offset - bytes.startIndex }

    public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) throws(ByteReaderError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else {
            throw ByteReaderError(offset: position, message: "needs \(size) more bytes, has \(remaining)")
        }
        var value: T = 0
        for index in 0..<size { value = (value << 8) | T(bytes[offset + index]) }
        offset += size
        return value
    }

    public mutating func readBytes(_ count: Int) throws(ByteReaderError) -> [UInt8] {
        guard count >= 0, remaining >= count else {
            throw ByteReaderError(offset: position, message: "needs \(count) more bytes, has \(remaining)")
        }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    public mutating func readString(maximumBytes: Int) throws(ByteReaderError) -> String {
        let length = Int(try read(UInt16.self))
        guard length <= maximumBytes else {
            throw ByteReaderError(offset: position, message: "string of \(length) bytes exceeds the limit \(maximumBytes)")
        }
        let raw = try readBytes(length)
        guard let string = String(validating: raw, as: UTF8.self) else {
            throw ByteReaderError(offset: position, message: "string is not valid UTF-8")
        }
        return string
    }

    public mutating func skip(_ count: Int) throws(ByteReaderError) { _ = try readBytes(count) }
}
