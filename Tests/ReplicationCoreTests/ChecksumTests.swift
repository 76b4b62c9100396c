import CoreSupport
import Testing

@testable import ReplicationCore

@Suite("CRC32C")
struct ChecksumTests {
    /// The bit-at-a-time definition the sliced tables are derived from.
    private static func bitwise(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return crc ^ 0xFFFF_FFFF
    }

    @Test("the published check values: \"123456789\" is 0xE3069283; 32 zero bytes are 0x8A9136AA (RFC 3720)")
    func checkValues() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum([UInt8]()) == 0)
    }

    @Test("eight bytes at a time equals bit at a time, for every length 0...80 and start offset 0...7, and in pieces")
    func slicedEqualsBitwise() {
        var generator = SplitMix64(seed: 0x5EED)
        let bytes = (0..<96).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for start in 0..<8 {
            for length in 0...80 {
                let slice = bytes[start..<(start + length)]
                #expect(CRC32C.checksum(slice) == Self.bitwise(slice), "start \(start) length \(length)")
            }
        }
        var pieces = CRC32C()
        pieces.update(bytes[0..<13])
        pieces.update(bytes[13..<14])
        pieces.update(bytes[14..<96])
        #expect(pieces.value == Self.bitwise(bytes[...]))
    }
}
