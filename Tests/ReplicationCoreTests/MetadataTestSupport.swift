@testable import ReplicationCore

/// Helpers shared by the metadata suites.
enum MetadataTestSupport {
    /// Bit positions to flip in a 4096-byte block: every bit of the first 128 bytes (where the header and most fields
    /// live) plus a seeded sample of the rest, so the test is thorough yet fast in debug builds.
    static func bitPositionsToFlip(seed: UInt64, sampled: Int = 400) -> [Int] {
        var random = SplitMix64(seed: seed)
        let header = Array(0..<(128 * 8))
        let rest = (0..<sampled).map { _ in Int.random(in: (128 * 8)..<(4096 * 8), using: &random) }
        return header + rest
    }

    static func flippingBit(_ bit: Int, of bytes: [UInt8]) -> [UInt8] {
        var copy = bytes
        copy[bit / 8] ^= UInt8(1) << UInt8(bit % 8)
        return copy
    }

    /// Overwrites a big-endian u32 at `offset` and recomputes the block checksum, producing an intact block that
    /// says something the decoder must refuse on its merits.
    static func patching(_ bytes: [UInt8], u32 value: UInt32, at offset: Int) -> [UInt8] {
        var copy = bytes
        for index in 0..<4 { copy[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * (3 - index))) }
        return resealed(copy)
    }

    static func patching(_ bytes: [UInt8], u64 value: UInt64, at offset: Int) -> [UInt8] {
        var copy = bytes
        for index in 0..<8 { copy[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * (7 - index))) }
        return resealed(copy)
    }

    static func resealed(_ bytes: [UInt8]) -> [UInt8] {
        var copy = bytes
        let checksum = MetadataBlock.checksum(of: copy)
        for index in 0..<4 { copy[8 + index] = UInt8(truncatingIfNeeded: checksum >> (8 * (3 - index))) }
        return copy
    }

    /// The error a decode throws, or nil if it succeeded.
    static func error<T>(_ body: () throws(MetadataError) -> T) -> MetadataError? {
        do {
            _ = try body()
            return nil
        } catch {
            return error
        }
    }
}
