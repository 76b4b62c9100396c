import TandemConfig

/// Turns the bytes of one replication connection back into packets, however the bytes are split into reads.
///
/// A transport appends each read with `append` and then calls `next()` until it returns nil (more bytes needed).
/// The header is checked as soon as its 16 bytes are there: a bad magic, an unknown command or an oversized length
/// is refused before any of the payload is waited for. Then the checksum is verified and the payload is decoded
/// strictly: every field is validated and bytes left over after the last field are an error. No input makes the
/// decoder trap.
///
/// After an error the stream can no longer be trusted: the decoder stays failed, every later `next()` throws the
/// same error, and `append` discards what it is given. The transport drops the connection.
///
/// Memory: the decoder never waits for more than one frame, whose length it has checked, so once `next()` has
/// returned nil it holds fewer than `PacketCodec.headerBytes + PacketCodec.maximumPayloadBytes` bytes (see
/// `bufferedByteCount`); between an `append` and the draining `next()` calls it also holds that append's bytes.
public struct PacketDecoder: Sendable {
    private var buffer: [UInt8] = []
    /// Start of the first byte not yet consumed; consumed bytes are dropped when the decoder next waits for input.
    private var readIndex = 0
    /// The error that ended this stream, if any.
    public private(set) var failure: WireError?

    public init() {}

    /// Bytes received and not yet returned as packets.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        guard failure == nil else { return }
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete packet, or nil if more bytes are needed.
    public mutating func next() throws(WireError) -> Packet? {
        if let failure { throw failure }
        do {
            guard let packet = try decodeFrame() else {
                if readIndex > 0 {
                    buffer.removeSubrange(..<readIndex)
                    readIndex = 0
                }
                return nil
            }
            return packet
        } catch {
            failure = error
            buffer = []
            readIndex = 0
            throw error
        }
    }

    private mutating func decodeFrame() throws(WireError) -> Packet? {
        let start = readIndex
        guard buffer.count - start >= PacketCodec.headerBytes else { return nil }

        let magic = bigEndian(UInt32.self, at: start)
        let volume = bigEndian(UInt16.self, at: start + 4)
        let commandCode = bigEndian(UInt16.self, at: start + 6)
        let length = bigEndian(UInt32.self, at: start + 8)
        let checksum = bigEndian(UInt32.self, at: start + PacketCodec.checksumOffset)

        guard magic == PacketCodec.magic else {
            let expected = PacketCodec.magic.prefixedHex
            throw WireError(.badMagic, "frame starts with \(magic.prefixedHex), expected \(expected)")
        }
        guard let command = PacketCommand(rawValue: commandCode) else {
            throw WireError(
                .unknownCommand, "command code \(commandCode.prefixedHex) is not known to this version")
        }
        guard volume == 0 else {
            throw WireError(
                .invalidValue, "volume \(volume) in the header; only volume 0 is supported", command: command)
        }
        guard length <= UInt32(PacketCodec.maximumPayloadBytes) else {
            throw WireError(
                .payloadTooLarge,
                "header announces \(length) payload bytes; no packet may exceed \(PacketCodec.maximumPayloadBytes)",
                command: command)
        }
        guard length <= UInt32(command.maximumPayloadBytes) else {
            throw WireError(
                .payloadTooLarge,
                "header announces \(length) payload bytes; the limit for this command is "
                    + "\(command.maximumPayloadBytes)",
                command: command)
        }

        let payloadStart = start + PacketCodec.headerBytes
        let frameEnd = payloadStart + Int(length)
        guard buffer.count >= frameEnd else { return nil }

        let payload = buffer[payloadStart..<frameEnd]
        let computed = PacketCodec.frameChecksum(
            headerPrefix: buffer[start..<start + PacketCodec.checksumOffset], payload: payload)
        guard computed == checksum else {
            throw WireError(
                .checksumMismatch,
                "header says \(checksum.prefixedHex), frame computes \(computed.prefixedHex)",
                command: command)
        }
        readIndex = frameEnd
        return try PacketCodec.decodePayload(payload, command: command)
    }

    private func bigEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for index in offset..<offset + MemoryLayout<T>.size { value = (value << 8) | T(buffer[index]) }
        return value
    }
}

extension PacketCodec {
    /// Decodes one payload whose frame has already passed its header and checksum checks.
    static func decodePayload(_ bytes: ArraySlice<UInt8>, command: PacketCommand) throws(WireError) -> Packet {
        var reader = PayloadReader(bytes, command: command)
        let packet: Packet
        switch command {
        case .features:
            packet = .features(
                FeaturesPacket(
                    protocolMinimum: try reader.integer("protocolMinimum"),
                    protocolMaximum: try reader.integer("protocolMaximum"),
                    featureFlags: try reader.integer("featureFlags")))
        case .authChallenge:
            packet = .authChallenge(try reader.bytes("challenge", maximum: authChallengeBytes))
        case .authResponse:
            packet = .authResponse(try reader.bytes("response", maximum: maximumAuthResponseBytes))
        case .protocolParameters:
            packet = .protocolParameters(
                ProtocolParameters(
                    replicationProtocol: try reader.replicationProtocol(),
                    afterSplitBrainZeroPrimaries: try reader.afterSplitBrainZeroPrimaries(),
                    afterSplitBrainOnePrimary: try reader.afterSplitBrainOnePrimary(),
                    afterSplitBrainTwoPrimaries: try reader.afterSplitBrainTwoPrimaries(),
                    allowTwoPrimaries: try reader.bool("allowTwoPrimaries"),
                    discardMyData: try reader.bool("discardMyData"),
                    integrityAlgorithm: try reader.string("integrityAlgorithm", maximum: maximumAlgorithmNameBytes),
                    conflictNonce: try reader.integer("conflictNonce")))
        case .sizes:
            packet = .sizes(
                SizesPacket(
                    backingBytes: try reader.integer("backingBytes"), agreedBytes: try reader.integer("agreedBytes")))
        case .uuids:
            let uuids = GenerationUUIDs(
                current: try reader.integer("current UUID"), bitmap: try reader.integer("bitmap UUID"),
                history1: try reader.integer("history1 UUID"), history2: try reader.integer("history2 UUID"))
            packet = .uuids(
                UUIDsPacket(
                    uuids: uuids, bitsSet: try reader.integer("bitsSet"),
                    flags: UUIDExchangeFlags(rawValue: try reader.integer("flags"))))
        case .state:
            packet = .state(StatePacket(role: try reader.role("role"), diskState: try reader.diskState()))
        case .bitmapChunk:
            packet = .bitmapChunk(
                BitmapChunk(
                    firstWord: try reader.integer("firstWord"), words: try reader.bitmapWords(),
                    isLast: try reader.bool("isLast")))
        case .syncUUID:
            packet = .syncUUID(try reader.integer("sync UUID"))
        case .data:
            packet = .data(
                DataPacket(
                    range: try reader.range(), requestID: try reader.integer("requestID"),
                    epoch: try reader.integer("epoch"), flags: DataFlags(rawValue: try reader.integer("flags")),
                    payload: try reader.bytes("payload", maximum: maximumBlockBytes)))
        case .barrier:
            packet = .barrier(epoch: try reader.integer("epoch"))
        case .resyncRequest:
            packet = .resyncRequest(try reader.request())
        case .checksumResyncRequest:
            packet = .checksumResyncRequest(
                try reader.request(), digest: try reader.bytes("digest", maximum: maximumDigestBytes))
        case .resyncReply:
            packet = .resyncReply(
                BlockReply(
                    range: try reader.range(), requestID: try reader.integer("requestID"),
                    payload: try reader.bytes("payload", maximum: maximumBlockBytes)))
        case .verifyRequest:
            packet = .verifyRequest(try reader.request())
        case .verifyReply:
            packet = .verifyReply(try reader.request(), digest: try reader.bytes("digest", maximum: maximumDigestBytes))
        case .outOfSync:
            packet = .outOfSync(try reader.range())
        case .stateChangeRequest:
            packet = .stateChangeRequest(
                StateChangeRequest(requestID: try reader.integer("requestID"), newRole: try reader.role("newRole")))
        case .stateChangeReply:
            packet = .stateChangeReply(
                StateChangeReply(
                    requestID: try reader.integer("requestID"), granted: try reader.bool("granted"),
                    reason: try reader.string("reason", maximum: maximumReasonBytes)))
        case .invalidateRequest:
            packet = .invalidateRequest(requestID: try reader.integer("requestID"))
        case .pauseResync:
            packet = .pauseResync(try reader.bool("paused"))
        case .readRequest:
            packet = .readRequest(try reader.request())
        case .readReply:
            packet = .readReply(
                BlockReply(
                    range: try reader.range(), requestID: try reader.integer("requestID"),
                    payload: try reader.bytes("payload", maximum: maximumBlockBytes)))
        case .ping:
            packet = .ping
        case .pingAck:
            packet = .pingAck
        case .receiveAck:
            packet = .receiveAck(try reader.ack())
        case .writeAck:
            packet = .writeAck(try reader.ack())
        case .negativeAck:
            packet = .negativeAck(try reader.ack())
        case .resyncWriteAck:
            packet = .resyncWriteAck(try reader.ack(), inSync: try reader.bool("inSync"))
        case .barrierAck:
            packet = .barrierAck(epoch: try reader.integer("epoch"), writeCount: try reader.integer("writeCount"))
        }
        try reader.finish()
        try validate(packet)
        return packet
    }
}

/// Reads one payload field by field, turning every failure into a `WireError` that names the packet and field.
struct PayloadReader {
    private var reader: ByteReader
    let command: PacketCommand

    init(_ bytes: ArraySlice<UInt8>, command: PacketCommand) {
        self.reader = ByteReader(bytes)
        self.command = command
    }

    private func malformed(_ message: String) -> WireError { WireError(.malformedPayload, message, command: command) }
    private func invalid(_ message: String) -> WireError { WireError(.invalidValue, message, command: command) }

    private func truncated(_ field: String, needs count: Int) -> WireError {
        malformed(
            "payload ends at byte \(reader.position) in \(field) (\(count) bytes needed, \(reader.remaining) left)")
    }

    mutating func integer<T: FixedWidthInteger>(_ field: String, as _: T.Type = T.self) throws(WireError) -> T {
        do {
            return try reader.read(T.self)
        } catch {
            throw truncated(field, needs: MemoryLayout<T>.size)
        }
    }

    private mutating func raw(_ field: String, count: Int) throws(WireError) -> [UInt8] {
        do {
            return try reader.readBytes(count)
        } catch {
            throw truncated(field, needs: count)
        }
    }

    mutating func bool(_ field: String) throws(WireError) -> Bool {
        let value: UInt8 = try integer(field)
        switch value {
        case 0: return false
        case 1: return true
        default: throw invalid("\(field) is \(value); a boolean is 0 or 1")
        }
    }

    /// A u32 length and that many bytes; the length is checked against `maximum` before anything is allocated.
    mutating func bytes(_ field: String, maximum: Int) throws(WireError) -> [UInt8] {
        let count: UInt32 = try integer("\(field) length")
        guard count <= UInt32(maximum) else {
            throw invalid("\(field) of \(count) bytes exceeds the limit of \(maximum)")
        }
        return try raw(field, count: Int(count))
    }

    /// A u16 length and that many bytes of UTF-8.
    mutating func string(_ field: String, maximum: Int) throws(WireError) -> String {
        let count: UInt16 = try integer("\(field) length")
        guard count <= UInt16(maximum) else {
            throw invalid("\(field) of \(count) bytes exceeds the limit of \(maximum)")
        }
        let bytes = try raw(field, count: Int(count))
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw invalid("\(field) is not valid UTF-8")
        }
        return string
    }

    mutating func range() throws(WireError) -> BlockRange {
        BlockRange(sector: try integer("sector"), sizeBytes: try integer("sizeBytes"))
    }

    mutating func request() throws(WireError) -> BlockRequest {
        BlockRequest(range: try range(), requestID: try integer("requestID"))
    }

    mutating func ack() throws(WireError) -> BlockAck {
        BlockAck(range: try range(), requestID: try integer("requestID"))
    }

    mutating func bitmapWords() throws(WireError) -> [UInt64] {
        let count: UInt32 = try integer("word count")
        guard count <= UInt32(PacketCodec.maximumBitmapWords) else {
            throw invalid("\(count) words; a chunk holds at most \(PacketCodec.maximumBitmapWords)")
        }
        guard reader.remaining >= Int(count) * 8 else { throw truncated("words", needs: Int(count) * 8) }
        var words: [UInt64] = []
        words.reserveCapacity(Int(count))
        for _ in 0..<count { words.append(try integer("words")) }
        return words
    }

    mutating func role(_ field: String) throws(WireError) -> Role {
        let code: UInt8 = try integer(field)
        guard let role = Role(wireCode: code) else { throw invalid("unknown \(field) code \(code)") }
        return role
    }

    mutating func diskState() throws(WireError) -> DiskState {
        let code: UInt8 = try integer("diskState")
        guard let state = DiskState(wireCode: code) else { throw invalid("unknown diskState code \(code)") }
        return state
    }

    mutating func replicationProtocol() throws(WireError) -> ReplicationProtocol {
        let code: UInt8 = try integer("replicationProtocol")
        guard let value = ReplicationProtocol(wireCode: code) else {
            throw invalid("unknown replicationProtocol code \(code)")
        }
        return value
    }

    mutating func afterSplitBrainZeroPrimaries() throws(WireError) -> AfterSplitBrainZeroPrimaries {
        let code: UInt8 = try integer("after-sb-0pri")
        guard let value = AfterSplitBrainZeroPrimaries(wireCode: code) else {
            throw afterSplitBrainError("after-sb-0pri", code: code)
        }
        return value
    }

    mutating func afterSplitBrainOnePrimary() throws(WireError) -> AfterSplitBrainOnePrimary {
        let code: UInt8 = try integer("after-sb-1pri")
        guard let value = AfterSplitBrainOnePrimary(wireCode: code) else {
            throw afterSplitBrainError("after-sb-1pri", code: code)
        }
        return value
    }

    mutating func afterSplitBrainTwoPrimaries() throws(WireError) -> AfterSplitBrainTwoPrimaries {
        let code: UInt8 = try integer("after-sb-2pri")
        guard let value = AfterSplitBrainTwoPrimaries(wireCode: code) else {
            throw afterSplitBrainError("after-sb-2pri", code: code)
        }
        return value
    }

    private func afterSplitBrainError(_ field: String, code: UInt8) -> WireError {
        if let name = AfterSplitBrainWireCode.name(code) {
            invalid("\(field) code \(code) (\(name)) is not a policy that \(field) accepts")
        } else {
            invalid("unknown \(field) code \(code)")
        }
    }

    func finish() throws(WireError) {
        guard reader.remaining == 0 else {
            let count = reader.remaining
            throw malformed("\(count) \(count == 1 ? "byte" : "bytes") left over after the last field")
        }
    }
}
