import ReplicationCore
import Testing

@Suite("Channel hello: the preamble of every replication socket")
struct ChannelHelloTests {
    static let sample = ChannelHello(
        channel: .meta, role: .offer, sessionNonce: 0x0102_0304_0506_0708, attempt: 0x0A0B_0C0D, resourceName: "r0")

    /// Bytes with a correct checksum around whatever fields a test wants to break.
    static func withChecksum(_ bytes: [UInt8]) -> [UInt8] {
        var bytes = bytes
        let crc = CRC32C.checksum(bytes[..<88])
        bytes[88] = UInt8(truncatingIfNeeded: crc >> 24)
        bytes[89] = UInt8(truncatingIfNeeded: crc >> 16)
        bytes[90] = UInt8(truncatingIfNeeded: crc >> 8)
        bytes[91] = UInt8(truncatingIfNeeded: crc)
        return bytes
    }

    static func refusal(_ bytes: [UInt8]) -> ChannelHelloError? {
        do {
            _ = try ChannelHello.decode(bytes)
            return nil
        } catch {
            return error
        }
    }

    @Test("Every channel, role and resource name round-trips", arguments: [PacketChannel.data, .meta])
    func roundTrip(channel: PacketChannel) throws {
        let names = ["r0", "a", String(repeating: "x", count: 64), "réplica-ü", "db/mysql 1"]
        for role in [ChannelHello.Role.offer, .accept] {
            for name in names {
                let hello = ChannelHello(
                    channel: channel, role: role, sessionNonce: .max, attempt: .max, resourceName: name)
                let bytes = hello.encode()
                #expect(bytes.count == ChannelHello.encodedBytes)
                #expect(try ChannelHello.decode(bytes) == hello)
            }
        }
    }

    @Test("The layout matches docs/wire-formats.md byte for byte")
    func layout() {
        let bytes = Self.sample.encode()
        #expect(Array(bytes[0..<4]) == Array("TNDH".utf8))
        #expect(Array(bytes[4..<6]) == [0, 1])
        #expect(bytes[6] == 2)  // meta
        #expect(bytes[7] == 1)  // offer
        #expect(Array(bytes[8..<16]) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(Array(bytes[16..<20]) == [0x0A, 0x0B, 0x0C, 0x0D])
        #expect(Array(bytes[20..<22]) == [0, 2])
        #expect(Array(bytes[22..<24]) == [0, 0])
        #expect(Array(bytes[24..<26]) == Array("r0".utf8))
        #expect(bytes[26..<88].allSatisfy { $0 == 0 })
        #expect(Self.withChecksum(bytes) == bytes)
    }

    @Test("A prefix asks for more bytes; trailing bytes (the first frames) are left alone")
    func incremental() throws {
        let bytes = Self.sample.encode()
        for length in 0..<bytes.count {
            #expect(try ChannelHello.decode(bytes[..<length]) == nil, "prefix of \(length) bytes")
        }
        #expect(try ChannelHello.decode(bytes + PacketCodec.encode(.ping)) == Self.sample)
    }

    @Test("A client that is not a Tandem peer is refused after four bytes")
    func badMagicIsRefusedEarly() {
        let http = Array("GET / HTTP/1.1\r\n".utf8)
        #expect(Self.refusal(Array(http.prefix(3))) == nil)
        #expect(Self.refusal(Array(http.prefix(4)))?.code == .badMagic)
        let frame = PacketCodec.encode(.ping)
        let error = Self.refusal(frame)
        #expect(error?.code == .badMagic)
        #expect(error?.message.contains("a packet frame without a hello") == true)
    }

    @Test("Another hello version is refused as soon as the version field is there, whatever follows")
    func otherVersion() {
        var bytes = Self.sample.encode()
        bytes[5] = 2
        #expect(Self.refusal(Array(bytes.prefix(6)))?.code == .unsupportedVersion)
        #expect(Self.refusal(bytes)?.code == .unsupportedVersion)
        #expect("\(Self.refusal(bytes)!)" == "unsupported hello version: hello version 2; this node speaks version 1")
    }

    @Test("Every single-bit error anywhere in the hello is refused")
    func everyBitFlipIsRefused() {
        let bytes = Self.sample.encode()
        for bit in 0..<(bytes.count * 8) {
            var damaged = bytes
            damaged[bit / 8] ^= UInt8(1 << (bit % 8))
            #expect(Self.refusal(damaged) != nil, "bit \(bit)")
        }
    }

    @Test("Fields outside their limits are refused even with a correct checksum")
    func invalidFields() {
        let good = Self.sample.encode()
        func broken(_ change: (inout [UInt8]) -> Void) -> ChannelHelloError? {
            var bytes = good
            change(&bytes)
            return Self.refusal(Self.withChecksum(bytes))
        }
        let cases: [(String, ChannelHelloError?, String)] = [
            ("channel 3", broken { $0[6] = 3 }, "unknown channel code 3"),
            ("channel 0", broken { $0[6] = 0 }, "unknown channel code 0"),
            ("role 0", broken { $0[7] = 0 }, "unknown role code 0"),
            ("name length 0", broken { $0[21] = 0 }, "resource name length 0"),
            ("name length 65", broken { $0[21] = 65 }, "resource name length 65"),
            ("reserved", broken { $0[23] = 1 }, "reserved field is 1"),
            ("padding", broken { $0[87] = 1 }, "padding after the resource name"),
            ("UTF-8", broken { $0[24] = 0xFF }, "not valid UTF-8"),
            ("control", broken { $0[24] = 0x0A }, "control character"),
        ]
        for (name, error, message) in cases {
            #expect(error?.code == .invalidValue, "\(name)")
            #expect(error?.message.contains(message) == true, "\(name): \(String(describing: error))")
        }
        var checksum = good
        checksum[91] ^= 0xFF
        #expect(Self.refusal(checksum)?.code == .checksumMismatch)
    }

    @Test("Resource names that cannot travel are named before any socket opens")
    func resourceNames() {
        #expect(ChannelHello.resourceNameProblem("r0") == nil)
        #expect(ChannelHello.resourceNameProblem(String(repeating: "é", count: 32)) == nil)
        #expect(ChannelHello.resourceNameProblem("") != nil)
        #expect(ChannelHello.resourceNameProblem(String(repeating: "é", count: 33))?.contains("66 bytes") == true)
        #expect(ChannelHello.resourceNameProblem("r\u{0}") != nil)
    }
}
