import Foundation
import TandemConfig
import Testing

@testable import ReplicationCore

// MARK: - Samples and helpers

private func pattern(_ count: Int, seed: UInt8 = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
}

/// One packet per `Packet` case, with distinctive field values.
private let samples: [Packet] = [
    .features(FeaturesPacket(protocolMinimum: 1, protocolMaximum: 3, featureFlags: 0x0000_0005)),
    .authChallenge(pattern(64, seed: 1)),
    .authResponse(pattern(32, seed: 2)),
    .protocolParameters(
        ProtocolParameters(
            replicationProtocol: .c, afterSplitBrainZeroPrimaries: .discardZeroChanges,
            afterSplitBrainOnePrimary: .discardSecondary, afterSplitBrainTwoPrimaries: .callPriLostAfterSB,
            allowTwoPrimaries: true, discardMyData: false, integrityAlgorithm: "crc32c",
            conflictNonce: 0xDEAD_BEEF_0123_4567)),
    .sizes(SizesPacket(backingBytes: 10 << 30, agreedBytes: (10 << 30) - 4096)),
    .uuids(
        UUIDsPacket(
            uuids: GenerationUUIDs(
                current: 0xA1B2_C3D4_E5F6_0719, bitmap: 0x1122_3344_5566_7788, history1: 0x99AA_BBCC_DDEE_FF00,
                history2: 0x0102_0304_0506_0708),
            bitsSet: 12_345, flags: [.crashedPrimary, .inconsistent])),
    .state(StatePacket(role: .primary, diskState: .upToDate)),
    .bitmapChunk(BitmapChunk(firstWord: 128, words: [0, .max, 0x8000_0000_0000_0001], isLast: false)),
    .syncUUID(0x1234_5678_9ABC_DEF0),
    .data(
        DataPacket(
            range: BlockRange(sector: 2048, sizeBytes: 1024), requestID: 77, epoch: 5,
            flags: [.sendWriteAck, .forceUnitAccess], payload: pattern(1024, seed: 3))),
    .barrier(epoch: 5),
    .resyncRequest(BlockRequest(range: BlockRange(sector: 8, sizeBytes: 4096), requestID: 9)),
    .checksumResyncRequest(
        BlockRequest(range: BlockRange(sector: 16, sizeBytes: 4096), requestID: 10), digest: pattern(20, seed: 4)),
    .resyncReply(BlockReply(range: BlockRange(sector: 24, sizeBytes: 512), requestID: 11, payload: pattern(512))),
    .verifyRequest(BlockRequest(range: BlockRange(sector: 32, sizeBytes: 4096), requestID: 12)),
    .verifyReply(BlockRequest(range: BlockRange(sector: 32, sizeBytes: 4096), requestID: 12), digest: pattern(32)),
    .outOfSync(BlockRange(sector: 40, sizeBytes: 8192)),
    .stateChangeRequest(StateChangeRequest(requestID: 3, newRole: .primary)),
    .stateChangeReply(
        StateChangeReply(requestID: 3, granted: false, reason: "peer is Primary and allow-two-primaries is off")),
    .invalidateRequest(requestID: 4),
    .pauseResync(true),
    .readRequest(BlockRequest(range: BlockRange(sector: 48, sizeBytes: 4096), requestID: 13)),
    .readReply(BlockReply(range: BlockRange(sector: 48, sizeBytes: 512), requestID: 13, payload: pattern(512))),
    .ping,
    .pingAck,
    .receiveAck(BlockAck(range: BlockRange(sector: 2048, sizeBytes: 1024), requestID: 77)),
    .writeAck(BlockAck(range: BlockRange(sector: 2048, sizeBytes: 1024), requestID: 78)),
    .negativeAck(BlockAck(range: BlockRange(sector: 2048, sizeBytes: 1024), requestID: 79)),
    .resyncWriteAck(BlockAck(range: BlockRange(sector: 24, sizeBytes: 512), requestID: 11), inSync: true),
    .barrierAck(epoch: 5, writeCount: 17),
]

/// Packets at the edges of what the format allows.
private let edgeSamples: [Packet] = [
    .features(FeaturesPacket(protocolMinimum: .max, protocolMaximum: .max, featureFlags: .max)),
    .authResponse([0xFF]),
    .authResponse(pattern(64)),
    .protocolParameters(
        ProtocolParameters(
            replicationProtocol: .a, afterSplitBrainZeroPrimaries: .disconnect, afterSplitBrainOnePrimary: .disconnect,
            afterSplitBrainTwoPrimaries: .disconnect, allowTwoPrimaries: false, discardMyData: true,
            integrityAlgorithm: "", conflictNonce: 0)),
    .protocolParameters(
        ProtocolParameters(
            replicationProtocol: .b, afterSplitBrainZeroPrimaries: .discardRemote,
            afterSplitBrainOnePrimary: .violentlyAs0p, afterSplitBrainTwoPrimaries: .violentlyAs0p,
            allowTwoPrimaries: true, discardMyData: true,
            integrityAlgorithm: String(repeating: "a", count: PacketCodec.maximumAlgorithmNameBytes),
            conflictNonce: .max)),
    .sizes(SizesPacket(backingBytes: .max, agreedBytes: 0)),
    .uuids(UUIDsPacket(uuids: .created, bitsSet: 0, flags: [])),
    .bitmapChunk(BitmapChunk(firstWord: 0, words: [], isLast: true)),
    .bitmapChunk(
        BitmapChunk(
            firstWord: PacketCodec.maximumBitmapWordEnd - UInt64(PacketCodec.maximumBitmapWords),
            words: (0..<PacketCodec.maximumBitmapWords).map { UInt64($0) &* 0x9E37_79B9_7F4A_7C15 }, isLast: true)),
    // A flush-only write: no payload, size 0, acknowledged with a size-0 write ack.
    .data(
        DataPacket(
            range: BlockRange(sector: 0, sizeBytes: 0), requestID: 1, epoch: 0, flags: [.flush, .sendWriteAck],
            payload: [])),
    .writeAck(BlockAck(range: BlockRange(sector: 0, sizeBytes: 0), requestID: 1)),
    // A zeroing write: a range of the largest size and no payload.
    .data(
        DataPacket(
            range: BlockRange(sector: 4096, sizeBytes: UInt32(PacketCodec.maximumBlockBytes)), requestID: 2, epoch: 1,
            flags: [.zeroes, .sendWriteAck, .forceUnitAccess], payload: [])),
    .data(
        DataPacket(
            range: BlockRange(sector: PacketCodec.maximumSector, sizeBytes: UInt32(PacketCodec.maximumBlockBytes)),
            requestID: .max, epoch: .max,
            flags: [.forceUnitAccess, .flush, .sendReceiveAck, .sendWriteAck, .mayClearOutOfSync],
            payload: pattern(PacketCodec.maximumBlockBytes, seed: 9))),
    .resyncReply(
        BlockReply(
            range: BlockRange(sector: 1, sizeBytes: UInt32(PacketCodec.maximumBlockBytes)), requestID: 0,
            payload: pattern(PacketCodec.maximumBlockBytes))),
    .checksumResyncRequest(BlockRequest(range: BlockRange(sector: 0, sizeBytes: 512), requestID: 0), digest: [7]),
    .verifyReply(BlockRequest(range: BlockRange(sector: 0, sizeBytes: 512), requestID: 0), digest: pattern(64)),
    .stateChangeReply(StateChangeReply(requestID: 0, granted: true, reason: "")),
    .stateChangeReply(
        StateChangeReply(requestID: .max, granted: false, reason: String(repeating: "é", count: 128))),
    .pauseResync(false),
    .resyncWriteAck(BlockAck(range: BlockRange(sector: 0, sizeBytes: 512), requestID: 0), inSync: false),
    .barrierAck(epoch: .max, writeCount: 0),
]

/// A packet as a test argument, named by its command and size rather than its (possibly 1 MiB) contents.
struct PacketSample: Sendable, CustomTestStringConvertible {
    var packet: Packet
    var testDescription: String { "\(packet.command.name), \(PacketCodec.encode(packet).count) bytes" }
}

private let sampleArguments = samples.map(PacketSample.init)
private let edgeSampleArguments = edgeSamples.map(PacketSample.init)

/// Decodes everything in `bytes`; the error if the decoder refused them.
private func decodeAll(_ bytes: [UInt8]) -> (packets: [Packet], error: WireError?) {
    var decoder = PacketDecoder()
    decoder.append(bytes)
    var packets: [Packet] = []
    do {
        while let packet = try decoder.next() { packets.append(packet) }
        return (packets, nil)
    } catch {
        return (packets, error)
    }
}

private func refusal(_ bytes: [UInt8]) -> WireError? { decodeAll(bytes).error }

/// The payload bytes of an encoded packet.
private func payload(of packet: Packet) -> [UInt8] {
    Array(PacketCodec.encode(packet).dropFirst(PacketCodec.headerBytes))
}

private func frame(_ command: PacketCommand, _ payload: [UInt8]) -> [UInt8] {
    PacketCodec.frame(commandCode: command.rawValue, payload: payload)
}

private func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    var writer = ByteWriter()
    writer.write(value)
    return writer.bytes
}

private func header(command: UInt16, length: UInt32, magic: UInt32 = PacketCodec.magic, volume: UInt16 = 0) -> [UInt8] {
    bigEndian(magic) + bigEndian(volume) + bigEndian(command) + bigEndian(length) + bigEndian(UInt32(0))
}

// MARK: - Round trips and layout

@Suite("Packet codec: round trips and layout")
struct PacketCodecRoundTripTests {
    @Test("Every packet case survives an encode and decode round trip", arguments: sampleArguments)
    func roundTrip(sample: PacketSample) {
        let packet = sample.packet
        let result = decodeAll(PacketCodec.encode(packet))
        #expect(result.error == nil)
        #expect(result.packets == [packet])
    }

    @Test("The samples cover every command")
    func samplesCoverEveryCommand() {
        #expect(Set(samples.map(\.command)) == Set(PacketCommand.allCases))
        #expect(samples.count == PacketCommand.allCases.count)
    }

    @Test("Packets at the limits of the format survive a round trip", arguments: edgeSampleArguments)
    func edgeRoundTrip(sample: PacketSample) {
        let packet = sample.packet
        let result = decodeAll(PacketCodec.encode(packet))
        #expect(result.error == nil)
        #expect(result.packets == [packet])
    }

    @Test("Every role, disk state, protocol and after-sb policy survives a round trip")
    func everyEnumCaseRoundTrips() {
        for role in Role.allCases where role != .unknown {
            for disk in DiskState.allCases where disk != .unknown {
                let packet = Packet.state(StatePacket(role: role, diskState: disk))
                #expect(decodeAll(PacketCodec.encode(packet)).packets == [packet])
            }
        }
        for proto in ReplicationProtocol.allCases {
            for zero in AfterSplitBrainZeroPrimaries.allCases {
                for one in AfterSplitBrainOnePrimary.allCases {
                    for two in AfterSplitBrainTwoPrimaries.allCases {
                        let packet = Packet.protocolParameters(
                            ProtocolParameters(
                                replicationProtocol: proto, afterSplitBrainZeroPrimaries: zero,
                                afterSplitBrainOnePrimary: one, afterSplitBrainTwoPrimaries: two,
                                allowTwoPrimaries: false, discardMyData: false, integrityAlgorithm: "sha1",
                                conflictNonce: 1))
                        #expect(decodeAll(PacketCodec.encode(packet)).packets == [packet])
                    }
                }
            }
        }
    }

    @Test("A frame has the documented header: magic, volume 0, command, length and CRC32C of header and payload")
    func headerLayout() {
        let bytes = PacketCodec.encode(.barrier(epoch: 0x0102_0304))
        #expect(bytes.count == 20)
        #expect(Array(bytes[0..<4]) == [0x86, 0x20, 0xEC, 0x20])
        #expect(Array(bytes[4..<6]) == [0, 0])
        #expect(Array(bytes[6..<8]) == [0x01, 0x01])
        #expect(Array(bytes[8..<12]) == [0, 0, 0, 4])
        #expect(Array(bytes[16..<20]) == [1, 2, 3, 4])
        var zeroed = bytes
        zeroed.replaceSubrange(12..<16, with: [0, 0, 0, 0])
        #expect(Array(bytes[12..<16]) == bigEndian(CRC32C.checksum(zeroed)))
    }

    @Test("A data payload is laid out field by field: range, request ID, epoch, flags, length-prefixed bytes")
    func dataPayloadLayout() {
        let packet = Packet.data(
            DataPacket(
                range: BlockRange(sector: 3, sizeBytes: 512), requestID: 0x0A0B, epoch: 7,
                flags: [.flush, .sendWriteAck], payload: pattern(512)))
        let expected =
            bigEndian(UInt64(3)) + bigEndian(UInt32(512)) + bigEndian(UInt64(0x0A0B)) + bigEndian(UInt32(7))
            + bigEndian(UInt32(0b1010)) + bigEndian(UInt32(512)) + pattern(512)
        #expect(payload(of: packet) == expected)
    }

    @Test("Command codes keep their documented values")
    func commandCodesAreStable() {
        let expected: [PacketCommand: UInt16] = [
            .features: 0x0001, .authChallenge: 0x0002, .authResponse: 0x0003, .protocolParameters: 0x0004,
            .sizes: 0x0005, .uuids: 0x0006, .state: 0x0007, .bitmapChunk: 0x0008, .syncUUID: 0x0009,
            .data: 0x0100, .barrier: 0x0101, .resyncRequest: 0x0110, .checksumResyncRequest: 0x0111,
            .resyncReply: 0x0112, .verifyRequest: 0x0120, .verifyReply: 0x0121, .outOfSync: 0x0130,
            .stateChangeRequest: 0x0140, .stateChangeReply: 0x0141, .invalidateRequest: 0x0142,
            .pauseResync: 0x0150,
            .readRequest: 0x0160, .readReply: 0x0161,
            .ping: 0x0200, .pingAck: 0x0201, .receiveAck: 0x0210, .writeAck: 0x0211, .negativeAck: 0x0212,
            .resyncWriteAck: 0x0213, .barrierAck: 0x0220,
        ]
        #expect(expected.count == PacketCommand.allCases.count)
        for command in PacketCommand.allCases { #expect(command.rawValue == expected[command]) }
    }

    @Test("Enum wire codes keep their documented values")
    func enumCodesAreStable() {
        #expect(Role.allCases.map(\.wireCode) == [1, 2, 3])
        #expect(DiskState.allCases.map(\.wireCode) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        #expect(ReplicationProtocol.allCases.map(\.wireCode) == [1, 2, 3])
        #expect(AfterSplitBrainZeroPrimaries.allCases.map(\.wireCode) == [1, 2, 3, 4, 5, 6, 7])
        #expect(AfterSplitBrainOnePrimary.allCases.map(\.wireCode) == [1, 8, 9, 10, 11])
        #expect(AfterSplitBrainTwoPrimaries.allCases.map(\.wireCode) == [1, 10, 11])
        for role in Role.allCases { #expect(Role(wireCode: role.wireCode) == role) }
        for disk in DiskState.allCases { #expect(DiskState(wireCode: disk.wireCode) == disk) }
        #expect(Role(wireCode: 0) == nil)
        #expect(DiskState(wireCode: 0) == nil)
        #expect(ReplicationProtocol(wireCode: 0) == nil)
    }

    @Test("Every command's payload limit fits in the frame limit, and the meta channel carries only small packets")
    func commandLimitsFitTheFrameLimit() {
        for command in PacketCommand.allCases {
            #expect(command.maximumPayloadBytes <= PacketCodec.maximumPayloadBytes, "\(command)")
        }
        for packet in samples where packet.channel == .meta {
            #expect(packet.command.maximumPayloadBytes <= 64, "\(packet.command)")
        }
    }

    @Test("The command table in docs/wire-formats.md matches the code")
    func documentedCommandTable() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/wire-formats.md")
        let text = try String(contentsOf: path, encoding: .utf8)
        let channels = Dictionary(uniqueKeysWithValues: samples.map { ($0.command, $0.channel) })
        // The doc names commands by their `Packet` case, e.g. "authChallenge".
        let caseNames = Dictionary(
            uniqueKeysWithValues: samples.map { ($0.command, String(String(describing: $0).prefix { $0 != "(" })) })
        func documentedSize(_ bytes: Int) -> String {
            bytes >= PacketCodec.maximumBlockBytes ? "1MiB+\(bytes - PacketCodec.maximumBlockBytes)" : "\(bytes)"
        }
        let expected = PacketCommand.allCases.map { command in
            ["`\(command.rawValue.prefixedHex)`", caseNames[command]!, channels[command]!.rawValue,
             documentedSize(command.maximumPayloadBytes)]
        }
        let documented = text.split(separator: "\n").filter { $0.hasPrefix("| `0x") }.map { line in
            line.split(separator: "|").map { $0.filter { !$0.isWhitespace } }
        }
        #expect(documented == expected.map { $0.map { $0.filter { !$0.isWhitespace } } })
    }

    @Test("Encoding a packet that breaks a limit traps with the reason")
    func encodingAnInvalidPacketTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            _ = PacketCodec.encode(.authChallenge([1, 2, 3]))
        }
        let standardError = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(standardError.contains("invalid auth challenge packet: challenge of 3 bytes; it must be exactly 64"))
    }
}

// MARK: - Streaming

@Suite("Packet decoder: streaming")
struct PacketDecoderStreamingTests {
    private static func stream(count: Int, seed: UInt64) -> (packets: [Packet], bytes: [UInt8]) {
        var random = SplitMix64(seed: seed)
        let packets = (0..<count).map { _ in samples.randomElement(using: &random)! }
        return (packets, packets.flatMap(PacketCodec.encode))
    }

    @Test("A stream of many packets decodes the same when fed one byte at a time")
    func oneByteAtATime() throws {
        let (packets, bytes) = Self.stream(count: 200, seed: 1)
        var decoder = PacketDecoder()
        var decoded: [Packet] = []
        for byte in bytes {
            decoder.append(CollectionOfOne(byte))
            while let packet = try decoder.next() { decoded.append(packet) }
        }
        #expect(decoded == packets)
        #expect(decoder.bufferedByteCount == 0)
    }

    @Test("A stream of many packets decodes the same when split into random chunk sizes", arguments: [2, 3, 5, 8, 13])
    func randomChunks(seed: UInt64) throws {
        let (packets, bytes) = Self.stream(count: 300, seed: seed)
        var random = SplitMix64(seed: seed &* 1000)
        var decoder = PacketDecoder()
        var decoded: [Packet] = []
        var offset = 0
        while offset < bytes.count {
            let size = min(bytes.count - offset, Int.random(in: 1...3000, using: &random))
            decoder.append(bytes[offset..<offset + size])
            offset += size
            while let packet = try decoder.next() { decoded.append(packet) }
            #expect(decoder.bufferedByteCount < PacketCodec.headerBytes + PacketCodec.maximumPayloadBytes)
        }
        #expect(decoded == packets)
        #expect(decoder.bufferedByteCount == 0)
    }

    @Test("The whole stream appended at once decodes the same")
    func wholeStreamAtOnce() {
        let (packets, bytes) = Self.stream(count: 300, seed: 21)
        let result = decodeAll(bytes)
        #expect(result.error == nil)
        #expect(result.packets == packets)
    }

    @Test("A truncated frame waits for more bytes, and decodes once they arrive")
    func truncatedFrameWaits() throws {
        for packet in samples {
            let bytes = PacketCodec.encode(packet)
            for cut in 0..<bytes.count {
                var decoder = PacketDecoder()
                decoder.append(bytes[..<cut])
                #expect(try decoder.next() == nil, "\(packet.command) cut at \(cut)")
                #expect(decoder.bufferedByteCount == cut)
                decoder.append(bytes[cut...])
                #expect(try decoder.next() == packet)
                #expect(try decoder.next() == nil)
            }
        }
    }

    @Test("After draining, the decoder holds only the incomplete frame it waits for")
    func drainedDecoderHoldsOnlyThePartialFrame() throws {
        let big = PacketCodec.encode(edgeSamples.first { $0.command == .resyncReply }!)
        let small = PacketCodec.encode(.ping)
        var decoder = PacketDecoder()
        decoder.append(small + small + big.dropLast(1))
        #expect(try decoder.next() == .ping)
        #expect(try decoder.next() == .ping)
        #expect(try decoder.next() == nil)
        #expect(decoder.bufferedByteCount == big.count - 1)
        #expect(decoder.bufferedByteCount < PacketCodec.headerBytes + PacketCodec.maximumPayloadBytes)
    }
}

// MARK: - Hostile input

@Suite("Packet decoder: hostile input")
struct PacketDecoderHostileInputTests {
    @Test("A frame with a bad magic is refused as soon as its header arrives")
    func badMagic() {
        var decoder = PacketDecoder()
        decoder.append(header(command: PacketCommand.ping.rawValue, length: 0, magic: 0x1234_5678).dropLast())
        #expect(throws: Never.self) { try decoder.next() }
        decoder.append([0])
        let expected = WireError(.badMagic, "frame starts with 0x12345678, expected 0x8620EC20")
        #expect(throws: expected) { try decoder.next() }
        #expect(decoder.failure?.description == "bad frame magic: frame starts with 0x12345678, expected 0x8620EC20")
    }

    @Test(
        "An unknown command code is refused, including the reserved code 0",
        arguments: [0x0000, 0x000A, 0x7777, 0xFFFF])
    func unknownCommand(code: UInt16) {
        let error = refusal(PacketCodec.frame(commandCode: code, payload: []))
        #expect(error?.code == .unknownCommand)
        #expect(error?.command == nil)
    }

    @Test("A length over the frame limit is refused before the payload arrives")
    func lengthOverFrameLimit() {
        var decoder = PacketDecoder()
        let length = UInt32(PacketCodec.maximumPayloadBytes) + 1
        decoder.append(header(command: PacketCommand.data.rawValue, length: length))
        #expect(throws: WireError.self) { try decoder.next() }
        #expect(decoder.failure?.code == .payloadTooLarge)
        #expect(decoder.failure?.command == .data)
        #expect(decoder.bufferedByteCount == 0)
        let huge = refusal(header(command: PacketCommand.resyncReply.rawValue, length: .max))
        #expect(huge?.code == .payloadTooLarge)
    }

    @Test("A length over the command's own limit is refused before the payload arrives")
    func lengthOverCommandLimit() {
        let pingWithPayload = refusal(header(command: PacketCommand.ping.rawValue, length: 1))
        #expect(pingWithPayload?.code == .payloadTooLarge)
        let hugeFeatures = refusal(header(command: PacketCommand.features.rawValue, length: 5000))
        #expect(
            hugeFeatures?.description
                == "oversized features packet: header announces 5000 payload bytes; the limit for this command is 12")
    }

    @Test("A header naming a volume other than 0 is refused")
    func nonzeroVolume() {
        let error = refusal(PacketCodec.frame(commandCode: PacketCommand.ping.rawValue, volume: 1, payload: []))
        #expect(error?.code == .invalidValue)
        #expect(error?.command == .ping)
    }

    @Test("Every single-bit flip in a frame is detected and never yields a packet")
    func everyBitFlipIsDetected() throws {
        for packet in samples {
            let bytes = PacketCodec.encode(packet)
            for bit in 0..<bytes.count * 8 {
                var flipped = bytes
                flipped[bit / 8] ^= 1 << (bit % 8)
                var decoder = PacketDecoder()
                decoder.append(flipped)
                var error: WireError?
                do {
                    // A flip that makes the length larger (within the limit) waits for the rest of the frame.
                    if try decoder.next() == nil {
                        let announced = flipped[8..<12].reduce(0) { $0 << 8 | Int($1) }
                        let missing = PacketCodec.headerBytes + announced - flipped.count
                        #expect(missing > 0, "\(packet.command): bit \(bit) waits although the frame is complete")
                        decoder.append(repeatElement(0, count: max(missing, 0)))
                        _ = try decoder.next()
                    }
                } catch let caught {
                    error = caught
                }
                #expect(error != nil, "\(packet.command): flipping bit \(bit) went undetected")
                if bit / 8 >= PacketCodec.checksumOffset {
                    #expect(error?.code == .checksumMismatch, "\(packet.command): bit \(bit)")
                }
            }
        }
    }

    @Test("A data payload that disagrees with its range is refused")
    func dataPayloadRangeMismatch() {
        let bytes =
            bigEndian(UInt64(0)) + bigEndian(UInt32(8192)) + bigEndian(UInt64(1)) + bigEndian(UInt32(1))
            + bigEndian(UInt32(0)) + bigEndian(UInt32(4096)) + pattern(4096)
        let error = refusal(frame(.data, bytes))
        #expect(error?.code == .malformedPayload)
        #expect(error?.description == "malformed data packet: payload 4096 bytes but range says 8192")
    }

    @Test("A zeroing write that carries a payload, or covers nothing, is refused")
    func zeroingWriteShape() {
        let zeroes = UInt32(1 << 5)
        let withPayload =
            bigEndian(UInt64(0)) + bigEndian(UInt32(4096)) + bigEndian(UInt64(1)) + bigEndian(UInt32(1))
            + bigEndian(zeroes) + bigEndian(UInt32(4096)) + pattern(4096)
        let error = refusal(frame(.data, withPayload))
        #expect(error?.code == .malformedPayload)
        #expect(error?.description == "malformed data packet: a zeroing write carries no payload, this one 4096 bytes")
        let empty =
            bigEndian(UInt64(0)) + bigEndian(UInt32(0)) + bigEndian(UInt64(1)) + bigEndian(UInt32(1))
            + bigEndian(zeroes) + bigEndian(UInt32(0))
        #expect(refusal(frame(.data, empty))?.code == .invalidValue)
    }

    @Test("A resync reply whose payload disagrees with its range is refused")
    func resyncReplyPayloadRangeMismatch() {
        let bytes =
            bigEndian(UInt64(0)) + bigEndian(UInt32(512)) + bigEndian(UInt64(1)) + bigEndian(UInt32(1024))
            + pattern(1024)
        let error = refusal(frame(.resyncReply, bytes))
        #expect(error?.description == "malformed resync reply packet: payload 1024 bytes but range says 512")
    }

    @Test(
        "Unknown and misplaced enum codes are refused",
        arguments: [
            (PacketCommand.state, [0, 10] as [UInt8], "unknown role code 0"),
            (.state, [4, 10], "unknown role code 4"),
            (.state, [1, 0], "unknown diskState code 0"),
            (.state, [1, 11], "unknown diskState code 11"),
            (.state, [3, 10], "a peer cannot report its own role as Unknown"),
            (.state, [1, 8], "a peer cannot report its own disk state as DUnknown"),
            (.stateChangeRequest, [0, 0, 0, 0, 0, 0, 0, 1, 9], "unknown newRole code 9"),
        ])
    func invalidEnumCodes(command: PacketCommand, bytes: [UInt8], message: String) {
        let error = refusal(frame(command, bytes))
        #expect(error == WireError(.invalidValue, message, command: command))
    }

    @Test(
        "Protocol parameters with unknown or misplaced policy codes are refused",
        arguments: [
            ([4, 1, 1, 1] as [UInt8], "unknown replicationProtocol code 4"),
            ([0, 1, 1, 1], "unknown replicationProtocol code 0"),
            ([3, 8, 1, 1], "after-sb-0pri code 8 (consensus) is not a policy that after-sb-0pri accepts"),
            ([3, 1, 2, 1], "after-sb-1pri code 2 (discard-younger-primary) is not a policy that after-sb-1pri accepts"),
            ([3, 1, 1, 9], "after-sb-2pri code 9 (discard-secondary) is not a policy that after-sb-2pri accepts"),
            ([3, 1, 1, 99], "unknown after-sb-2pri code 99"),
        ])
    func invalidPolicyCodes(codes: [UInt8], message: String) {
        let bytes = codes + [0, 0] + bigEndian(UInt16(0)) + bigEndian(UInt64(1))
        let expected = WireError(.invalidValue, message, command: .protocolParameters)
        #expect(refusal(frame(.protocolParameters, bytes)) == expected)
    }

    @Test("A boolean other than 0 or 1 is refused")
    func invalidBoolean() {
        let error = refusal(frame(.pauseResync, [2]))
        #expect(error?.description == "invalid pause resync packet: paused is 2; a boolean is 0 or 1")
        var ack = payload(of: samples.first { $0.command == .resyncWriteAck }!)
        ack[ack.count - 1] = 0xFF
        #expect(refusal(frame(.resyncWriteAck, ack))?.code == .invalidValue)
    }

    @Test("A string that is not valid UTF-8 is refused")
    func nonUTF8String() {
        let bytes = bigEndian(UInt64(1)) + [0] + bigEndian(UInt16(3)) + [0x61, 0xC3, 0x28]
        let error = refusal(frame(.stateChangeReply, bytes))
        #expect(error == WireError(.invalidValue, "reason is not valid UTF-8", command: .stateChangeReply))
    }

    @Test("Strings over their limits are refused")
    func oversizedStrings() {
        // The length is refused before the string is read (with the nonce, 81 bytes would exceed the command's limit).
        let algorithm = [3, 1, 1, 1, 0, 0] + bigEndian(UInt16(65)) + [UInt8](repeating: 0x61, count: 65)
        #expect(
            refusal(frame(.protocolParameters, algorithm))?.message
                == "integrityAlgorithm of 65 bytes exceeds the limit of 64")
        let reason = bigEndian(UInt64(1)) + [0] + bigEndian(UInt16(257)) + [UInt8](repeating: 0x61, count: 257)
        let error = refusal(frame(.stateChangeReply, reason))
        // 257 bytes of reason make the payload larger than the command allows, so the header already fails.
        #expect(error?.code == .payloadTooLarge)
        let lyingLength = bigEndian(UInt64(1)) + [0] + bigEndian(UInt16(257)) + [UInt8](repeating: 0x61, count: 200)
        #expect(
            refusal(frame(.stateChangeReply, lyingLength))?.message == "reason of 257 bytes exceeds the limit of 256")
    }

    @Test("Strings with control characters are refused")
    func controlCharacters() {
        let reason = Array("line one\nFAKE LOG LINE".utf8)
        let bytes = bigEndian(UInt64(1)) + [0] + bigEndian(UInt16(reason.count)) + reason
        #expect(refusal(frame(.stateChangeReply, bytes))?.message == "reason contains a control character")
    }

    @Test("A granted state change carries no reason")
    func grantedWithReason() {
        let bytes = bigEndian(UInt64(1)) + [1] + bigEndian(UInt16(2)) + Array("ok".utf8)
        #expect(refusal(frame(.stateChangeReply, bytes))?.code == .invalidValue)
    }

    @Test(
        "Byte arrays outside their limits are refused",
        arguments: [
            (PacketCommand.authChallenge, 63, "challenge of 63 bytes; it must be exactly 64"),
            (.authChallenge, 65, "challenge of 65 bytes exceeds the limit of 64"),
            (.authChallenge, 0, "challenge of 0 bytes; it must be exactly 64"),
            (.authResponse, 0, "response of 0 bytes; it must be 1 to 64"),
            (.authResponse, 65, "response of 65 bytes exceeds the limit of 64"),
        ])
    func byteArrayLimits(command: PacketCommand, count: Int, message: String) {
        // At most 64 bytes follow, so that the frame stays within the command's limit and the length prefix is what
        // the decoder refuses.
        let bytes = bigEndian(UInt32(count)) + pattern(min(count, 64))
        #expect(refusal(frame(command, bytes)) == WireError(.invalidValue, message, command: command))
    }

    @Test("Digests must hold 1 to 64 bytes", arguments: [PacketCommand.checksumResyncRequest, .verifyReply])
    func digestLimits(command: PacketCommand) {
        let request = bigEndian(UInt64(0)) + bigEndian(UInt32(4096)) + bigEndian(UInt64(1))
        #expect(
            refusal(frame(command, request + bigEndian(UInt32(0))))?.message == "digest of 0 bytes; it must be 1 to 64")
        #expect(
            refusal(frame(command, request + bigEndian(UInt32(65)) + pattern(65)))?.code == .payloadTooLarge)
        #expect(
            refusal(frame(command, request + bigEndian(UInt32(65)) + pattern(60)))?.message
                == "digest of 65 bytes exceeds the limit of 64")
    }

    @Test("A bitmap chunk holds at most 4096 words and stays within the block numbers")
    func bitmapChunkLimits() {
        let tooMany = bigEndian(UInt64(0)) + bigEndian(UInt32(4097)) + [0]
        #expect(refusal(frame(.bitmapChunk, tooMany))?.message == "4097 words; a chunk holds at most 4096")
        let beyond = bigEndian(UInt64.max) + bigEndian(UInt32(1)) + bigEndian(UInt64(1)) + [1]
        #expect(refusal(frame(.bitmapChunk, beyond))?.code == .invalidValue)
        let short = bigEndian(UInt64(0)) + bigEndian(UInt32(2)) + bigEndian(UInt64(1)) + [1]
        #expect(refusal(frame(.bitmapChunk, short))?.code == .malformedPayload)
    }

    @Test(
        "Block ranges must be whole sectors, at most 1 MiB, addressable, and empty only for flushes",
        arguments: [
            (UInt64(0), UInt32(1000), "range size 1000 bytes is not a multiple of 512"),
            (0, UInt32(2 << 20), "range size 2097152 bytes exceeds the limit of 1048576"),
            (0, 0, "range size 0; a resync request covers at least one sector"),
            (UInt64.max, 512, "sector 18446744073709551615 is beyond the largest addressable sector 36028797018961919"),
        ])
    func rangeLimits(sector: UInt64, size: UInt32, message: String) {
        let bytes = bigEndian(sector) + bigEndian(size) + bigEndian(UInt64(1))
        #expect(refusal(frame(.resyncRequest, bytes)) == WireError(.invalidValue, message, command: .resyncRequest))
    }

    @Test("An empty data packet without the flush flag is refused")
    func emptyDataWithoutFlush() {
        let bytes =
            bigEndian(UInt64(0)) + bigEndian(UInt32(0)) + bigEndian(UInt64(1)) + bigEndian(UInt32(1))
            + bigEndian(DataFlags.sendWriteAck.rawValue) + bigEndian(UInt32(0))
        #expect(
            refusal(frame(.data, bytes))?.message
                == "range size 0 is allowed only for a flush-only data packet (flush flag set, no payload)")
    }

    @Test("Unknown flag bits are refused")
    func unknownFlagBits() {
        var data = payload(of: samples.first { $0.command == .data }!)
        data.replaceSubrange(24..<28, with: bigEndian(UInt32(1 << 9)))
        #expect(refusal(frame(.data, data))?.message == "unknown flag bits 0x00000200")
        var uuids = payload(of: samples.first { $0.command == .uuids }!)
        uuids.replaceSubrange(40..<48, with: bigEndian(UInt64(0x10)))
        #expect(refusal(frame(.uuids, uuids))?.message == "unknown flag bits 0x0000000000000010")
    }

    @Test("A features packet whose minimum protocol is above its maximum is refused")
    func featuresRange() {
        let bytes = bigEndian(UInt32(5)) + bigEndian(UInt32(3)) + bigEndian(UInt32(0))
        #expect(refusal(frame(.features, bytes))?.code == .invalidValue)
    }

    @Test("Bytes left over after the last field are refused", arguments: sampleArguments)
    func trailingBytes(sample: PacketSample) {
        let packet = sample.packet
        let bytes = payload(of: packet) + [0]
        let error = refusal(frame(packet.command, bytes))
        if bytes.count > packet.command.maximumPayloadBytes {
            // A fixed-size packet: the extra byte is caught by the header's length check, before decoding.
            #expect(error?.code == .payloadTooLarge, "\(packet.command): \(String(describing: error))")
        } else {
            #expect(error == WireError(.malformedPayload, "1 byte left over after the last field", command: packet.command))
        }
    }

    @Test("A payload that ends inside a field is refused", arguments: sampleArguments)
    func truncatedPayload(sample: PacketSample) {
        let packet = sample.packet
        let bytes = payload(of: packet)
        guard !bytes.isEmpty else { return }
        let error = refusal(frame(packet.command, Array(bytes.dropLast())))
        #expect(error?.code == .malformedPayload, "\(packet.command): \(String(describing: error))")
    }

    @Test("A failed decoder keeps throwing the same error and discards later bytes")
    func decoderStaysFailed() {
        var decoder = PacketDecoder()
        decoder.append(PacketCodec.encode(.ping) + frame(.pauseResync, [7]) + PacketCodec.encode(.pingAck))
        #expect((try? decoder.next()) == .ping)
        let expected = WireError(.invalidValue, "paused is 7; a boolean is 0 or 1", command: .pauseResync)
        #expect(throws: expected) { try decoder.next() }
        #expect(decoder.bufferedByteCount == 0)
        decoder.append(PacketCodec.encode(.ping))
        #expect(decoder.bufferedByteCount == 0)
        for _ in 0..<3 {
            #expect(throws: expected) { try decoder.next() }
        }
        #expect(decoder.failure == expected)
    }
}

// MARK: - Fuzzing

@Suite("Packet decoder: fuzzing")
struct PacketDecoderFuzzTests {
    @Test("Thousands of random byte buffers never make the decoder trap")
    func randomBuffers() {
        var random = SplitMix64(seed: 0x7A5D_E3)
        let commands = PacketCommand.allCases
        var refused = 0
        for _ in 0..<4000 {
            var bytes: [UInt8] = (0..<Int.random(in: 0..<200, using: &random)).map { _ in
                UInt8.random(in: 0...255, using: &random)
            }
            // Most buffers get a plausible header, a third of those with a correct checksum, so that the payload
            // decoders see random input too.
            if Int.random(in: 0..<4, using: &random) > 0 {
                let command = commands.randomElement(using: &random)!
                let longest = UInt32(min(bytes.count, command.maximumPayloadBytes))
                let length = UInt32.random(in: 0...longest, using: &random)
                if Bool.random(using: &random) {
                    bytes = PacketCodec.frame(commandCode: command.rawValue, payload: Array(bytes.prefix(Int(length))))
                } else {
                    bytes = header(command: command.rawValue, length: length) + bytes
                }
            }
            var decoder = PacketDecoder()
            decoder.append(bytes)
            var iterations = 0
            do {
                while try decoder.next() != nil, iterations < 100 { iterations += 1 }
            } catch {
                refused += 1
                #expect(throws: error) { try decoder.next() }
            }
        }
        #expect(refused > 0)
    }

    @Test("Mutated payloads with a valid checksum are refused or decode to a packet that re-encodes to the same bytes")
    func mutatedPayloads() {
        var random = SplitMix64(seed: 0xC0DEC)
        let bases = (samples + edgeSamples).filter { $0.command.maximumPayloadBytes < 70_000 }.map {
            (command: $0.command, payload: payload(of: $0))
        }
        var accepted = 0
        for _ in 0..<4000 {
            let base = bases.randomElement(using: &random)!
            var bytes = base.payload
            switch Int.random(in: 0..<4, using: &random) {
            case 0 where !bytes.isEmpty:
                for _ in 0..<Int.random(in: 1...3, using: &random) {
                    bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
            case 1 where !bytes.isEmpty:
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &random))
            case 2:
                let extra = Int.random(in: 1...8, using: &random)
                for _ in 0..<extra { bytes.append(.random(in: 0...255, using: &random)) }
            default:
                if !bytes.isEmpty {
                    // Flip a single bit somewhere in the payload; small enum and length fields are hit often.
                    let bit = Int.random(in: 0..<bytes.count * 8, using: &random)
                    bytes[bit / 8] ^= 1 << (bit % 8)
                }
            }
            let framed = frame(base.command, bytes)
            let result = decodeAll(framed)
            if let packet = result.packets.first {
                accepted += 1
                #expect(PacketCodec.encode(packet) == framed)
            } else {
                #expect(result.error != nil)
            }
        }
        #expect(accepted > 0)
    }
}
