/// The binary form of `Packet` on the two replication connections (docs/wire-formats.md has the same tables).
///
/// Every packet travels as one frame, modelled on DRBD's `p_header100`, all big-endian:
///
/// | offset | type | field |
/// |---|---|---|
/// | 0 | u32 | magic `0x8620EC20` |
/// | 4 | u16 | volume, always 0 for now |
/// | 6 | u16 | command (`PacketCommand`) |
/// | 8 | u32 | payload length in bytes |
/// | 12 | u32 | CRC32C over the 16 header bytes with this field zeroed, followed by the payload |
/// | 16 | ... | payload, laid out field by field as documented per command |
///
/// The payload is strict: every field has an explicit width, enums travel as explicit u8 codes (0 is never valid),
/// booleans as u8 0 or 1, strings as u16 length + UTF-8, and byte arrays as u32 length + bytes. A payload with bytes
/// left over after its last field is refused, so each packet has exactly one encoding.
public enum PacketCodec {
    /// The version of this frame layout and of the payload tables. It is not repeated in every frame: the peers
    /// exchange the protocol versions they speak in the `features` packet (`protocolMinimum`...`protocolMaximum`),
    /// the first packet on a connection, and a layout change is announced by raising those.
    public static let formatVersion: UInt32 = 1

    /// The first four bytes of every frame (DRBD's `DRBD_MAGIC_100`).
    public static let magic: UInt32 = 0x8620_EC20
    public static let headerBytes = 16
    /// Byte offset of the CRC32C field in the header.
    static let checksumOffset = 12

    /// DRBD addresses the device in 512-byte sectors; every block size on the wire is a multiple of this.
    public static let sectorBytes = 512
    /// The largest block one data, resync or verify packet covers (DRBD's `DRBD_MAX_BIO_SIZE`).
    public static let maximumBlockBytes = 1 << 20
    /// The largest payload of any frame: one maximal block plus its fields.
    public static let maximumPayloadBytes = maximumBlockBytes + 64
    /// cram-hmac challenges are exactly this long.
    public static let authChallengeBytes = 64
    public static let maximumAuthResponseBytes = 64
    /// Digests (csums-alg, verify-alg) are at most this long (SHA-512).
    public static let maximumDigestBytes = 64
    public static let maximumBitmapWords = 4096
    public static let maximumAlgorithmNameBytes = 64
    public static let maximumReasonBytes = 256
    /// The largest sector a range may start at, so that its end in bytes always fits in a `UInt64`.
    public static let maximumSector: UInt64 = (UInt64.max - UInt64(maximumBlockBytes)) / UInt64(sectorBytes)
    /// `firstWord + words.count` of a bitmap chunk may not exceed this, so that every block number fits in a `UInt64`.
    public static let maximumBitmapWordEnd: UInt64 = UInt64.max / 64

    /// The frame for `packet`. Sending a packet that breaks a limit (an oversized payload, a size that is not a
    /// multiple of 512, an unknown flag bit, ...) is a programmer error and traps with the reason.
    public static func encode(_ packet: Packet) -> [UInt8] {
        do {
            try validate(packet)
        } catch {
            fatalError("PacketCodec.encode: \(error)")
        }
        var payload = ByteWriter()
        writePayload(of: packet, into: &payload)
        let command = packet.command
        precondition(
            payload.bytes.count <= command.maximumPayloadBytes,
            "PacketCodec.encode: \(command.name) payload of \(payload.bytes.count) bytes exceeds "
                + "\(command.maximumPayloadBytes)"
        )
        return frame(commandCode: command.rawValue, payload: payload.bytes)
    }

    /// A frame around any payload, with a correct checksum. Used by `encode`, and by tests to build hostile frames.
    static func frame(commandCode: UInt16, volume: UInt16 = 0, payload: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(reservingCapacity: headerBytes + payload.count)
        writer.write(magic)
        writer.write(volume)
        writer.write(commandCode)
        writer.write(UInt32(payload.count))
        writer.write(UInt32(0))
        writer.write(payload)
        // The checksum field is still zero here, so this is exactly "header with the field zeroed, then payload".
        writer.overwrite(CRC32C.checksum(writer.bytes), at: checksumOffset)
        return writer.bytes
    }

    /// The frame checksum: CRC32C over the header with its checksum field zeroed, then the payload.
    static func frameChecksum(headerPrefix: ArraySlice<UInt8>, payload: ArraySlice<UInt8>) -> UInt32 {
        var crc = CRC32C()
        crc.update(headerPrefix)
        crc.update(repeatElement(UInt8(0), count: 4))
        crc.update(payload)
        return crc.value
    }

    // MARK: - Payload layouts

    private static func writePayload(of packet: Packet, into writer: inout ByteWriter) {
        switch packet {
        case .features(let features):
            writer.write(features.protocolMinimum)
            writer.write(features.protocolMaximum)
            writer.write(features.featureFlags)
        case .authChallenge(let bytes), .authResponse(let bytes):
            writer.writeLengthPrefixed(bytes)
        case .protocolParameters(let parameters):
            writer.write(parameters.replicationProtocol.wireCode)
            writer.write(parameters.afterSplitBrainZeroPrimaries.wireCode)
            writer.write(parameters.afterSplitBrainOnePrimary.wireCode)
            writer.write(parameters.afterSplitBrainTwoPrimaries.wireCode)
            writer.writeBool(parameters.allowTwoPrimaries)
            writer.writeBool(parameters.discardMyData)
            writer.writeString(parameters.integrityAlgorithm, maximumBytes: maximumAlgorithmNameBytes)
            writer.write(parameters.conflictNonce)
        case .sizes(let sizes):
            writer.write(sizes.backingBytes)
            writer.write(sizes.agreedBytes)
        case .uuids(let uuids):
            writer.write(uuids.uuids.current)
            writer.write(uuids.uuids.bitmap)
            writer.write(uuids.uuids.history1)
            writer.write(uuids.uuids.history2)
            writer.write(uuids.bitsSet)
            writer.write(uuids.flags.rawValue)
        case .state(let state):
            writer.write(state.role.wireCode)
            writer.write(state.diskState.wireCode)
        case .bitmapChunk(let chunk):
            writer.write(chunk.firstWord)
            writer.write(UInt32(chunk.words.count))
            for word in chunk.words { writer.write(word) }
            writer.writeBool(chunk.isLast)
        case .syncUUID(let uuid):
            writer.write(uuid)
        case .data(let data):
            writer.writeRange(data.range)
            writer.write(data.requestID)
            writer.write(data.epoch)
            writer.write(data.flags.rawValue)
            writer.writeLengthPrefixed(data.payload)
        case .barrier(let epoch):
            writer.write(epoch)
        case .resyncRequest(let request), .verifyRequest(let request), .readRequest(let request):
            writer.writeRequest(request)
        case .checksumResyncRequest(let request, let digest), .verifyReply(let request, let digest):
            writer.writeRequest(request)
            writer.writeLengthPrefixed(digest)
        case .resyncReply(let reply), .readReply(let reply):
            writer.writeRange(reply.range)
            writer.write(reply.requestID)
            writer.writeLengthPrefixed(reply.payload)
        case .outOfSync(let range):
            writer.writeRange(range)
        case .stateChangeRequest(let request):
            writer.write(request.requestID)
            writer.write(request.newRole.wireCode)
        case .stateChangeReply(let reply):
            writer.write(reply.requestID)
            writer.writeBool(reply.granted)
            writer.writeString(reply.reason, maximumBytes: maximumReasonBytes)
        case .invalidateRequest(let requestID):
            writer.write(requestID)
        case .pauseResync(let paused):
            writer.writeBool(paused)
        case .ping, .pingAck:
            break
        case .receiveAck(let ack), .writeAck(let ack), .negativeAck(let ack):
            writer.writeAck(ack)
        case .resyncWriteAck(let ack, let inSync):
            writer.writeAck(ack)
            writer.writeBool(inSync)
        case .barrierAck(let epoch, let writeCount):
            writer.write(epoch)
            writer.write(writeCount)
        }
    }

    // MARK: - Validation, shared by encoder (trap) and decoder (throw)

    /// Checks every limit and rule of the wire format that the Swift types do not already enforce.
    static func validate(_ packet: Packet) throws(WireError) {
        let command = packet.command
        func invalid(_ message: String) -> WireError { WireError(.invalidValue, message, command: command) }

        switch packet {
        case .features(let features):
            guard features.protocolMinimum <= features.protocolMaximum else {
                throw invalid(
                    "protocolMinimum \(features.protocolMinimum) is above protocolMaximum \(features.protocolMaximum)")
            }
        case .authChallenge(let challenge):
            guard challenge.count == authChallengeBytes else {
                throw invalid("challenge of \(challenge.count) bytes; it must be exactly \(authChallengeBytes)")
            }
        case .authResponse(let response):
            guard (1...maximumAuthResponseBytes).contains(response.count) else {
                throw invalid("response of \(response.count) bytes; it must be 1 to \(maximumAuthResponseBytes)")
            }
        case .protocolParameters(let parameters):
            try checkText(
                parameters.integrityAlgorithm, field: "integrityAlgorithm", maximumBytes: maximumAlgorithmNameBytes,
                command: command)
        case .sizes, .syncUUID, .barrier, .pauseResync, .ping, .pingAck, .barrierAck, .invalidateRequest:
            break
        case .uuids(let uuids):
            let known: UUIDExchangeFlags = [.discardMyData, .crashedPrimary, .inconsistent, .skipInitialSync]
            let unknown = uuids.flags.rawValue & ~known.rawValue
            guard unknown == 0 else { throw invalid("unknown flag bits \(unknown.prefixedHex)") }
        case .state(let state):
            guard state.role != .unknown else { throw invalid("a peer cannot report its own role as Unknown") }
            guard state.diskState != .unknown else {
                throw invalid("a peer cannot report its own disk state as DUnknown")
            }
        case .bitmapChunk(let chunk):
            guard chunk.words.count <= maximumBitmapWords else {
                throw invalid("\(chunk.words.count) words; a chunk holds at most \(maximumBitmapWords)")
            }
            guard chunk.firstWord <= maximumBitmapWordEnd - UInt64(chunk.words.count) else {
                throw invalid("firstWord \(chunk.firstWord) puts the chunk's blocks beyond the largest block number")
            }
        case .data(let data):
            let known: DataFlags = [.forceUnitAccess, .flush, .sendReceiveAck, .sendWriteAck, .mayClearOutOfSync, .zeroes]
            let unknown = data.flags.rawValue & ~known.rawValue
            guard unknown == 0 else { throw invalid("unknown flag bits \(unknown.prefixedHex)") }
            if data.flags.contains(.zeroes) {
                try checkRange(data.range, allowsEmpty: false, command: command)
                guard data.payload.isEmpty else {
                    throw WireError(.malformedPayload, "a zeroing write carries no payload, this one \(data.payload.count) bytes", command: command)
                }
            } else {
                try checkRange(data.range, allowsEmpty: data.flags.contains(.flush), command: command)
                try checkPayload(data.payload, matches: data.range, command: command)
            }
        case .resyncRequest(let request), .verifyRequest(let request), .readRequest(let request):
            try checkRange(request.range, allowsEmpty: false, command: command)
        case .checksumResyncRequest(let request, let digest), .verifyReply(let request, let digest):
            try checkRange(request.range, allowsEmpty: false, command: command)
            guard (1...maximumDigestBytes).contains(digest.count) else {
                throw invalid("digest of \(digest.count) bytes; it must be 1 to \(maximumDigestBytes)")
            }
        case .resyncReply(let reply):
            try checkRange(reply.range, allowsEmpty: false, command: command)
            try checkPayload(reply.payload, matches: reply.range, command: command)
        case .readReply(let reply):
            // An empty payload reports that the peer could not read the range.
            try checkRange(reply.range, allowsEmpty: false, command: command)
            if !reply.payload.isEmpty { try checkPayload(reply.payload, matches: reply.range, command: command) }
        case .outOfSync(let range):
            try checkRange(range, allowsEmpty: false, command: command)
        case .stateChangeRequest(let request):
            guard request.newRole != .unknown else { throw invalid("newRole cannot be Unknown") }
        case .stateChangeReply(let reply):
            try checkText(reply.reason, field: "reason", maximumBytes: maximumReasonBytes, command: command)
            guard !reply.granted || reply.reason.isEmpty else {
                throw invalid("a granted request carries no reason, got \"\(reply.reason)\"")
            }
        case .receiveAck(let ack), .writeAck(let ack), .negativeAck(let ack):
            // Size 0 acknowledges a flush-only data packet.
            try checkRange(ack.range, allowsEmpty: true, command: command)
        case .resyncWriteAck(let ack, _):
            try checkRange(ack.range, allowsEmpty: false, command: command)
        }
    }

    private static func checkRange(_ range: BlockRange, allowsEmpty: Bool, command: PacketCommand) throws(WireError) {
        func invalid(_ message: String) -> WireError { WireError(.invalidValue, message, command: command) }
        guard range.sizeBytes % UInt32(sectorBytes) == 0 else {
            throw invalid("range size \(range.sizeBytes) bytes is not a multiple of \(sectorBytes)")
        }
        guard range.sizeBytes <= UInt32(maximumBlockBytes) else {
            throw invalid("range size \(range.sizeBytes) bytes exceeds the limit of \(maximumBlockBytes)")
        }
        guard range.sizeBytes > 0 || allowsEmpty else {
            throw invalid(
                command == .data
                    ? "range size 0 is allowed only for a flush-only data packet (flush flag set, no payload)"
                    : "range size 0; a \(command.name) covers at least one sector")
        }
        guard range.sector <= maximumSector else {
            throw invalid("sector \(range.sector) is beyond the largest addressable sector \(maximumSector)")
        }
    }

    private static func checkPayload(_ payload: [UInt8], matches range: BlockRange, command: PacketCommand)
        throws(WireError)
    {
        guard payload.count == Int(range.sizeBytes) else {
            throw WireError(
                .malformedPayload, "payload \(payload.count) bytes but range says \(range.sizeBytes)", command: command)
        }
    }

    /// Strings are shown to operators and written to logs: bounded, and without control characters (no forged
    /// log lines from a peer).
    private static func checkText(_ text: String, field: String, maximumBytes: Int, command: PacketCommand)
        throws(WireError)
    {
        let byteCount = text.utf8.count
        guard byteCount <= maximumBytes else {
            throw WireError(
                .invalidValue, "\(field) of \(byteCount) bytes exceeds the limit of \(maximumBytes)", command: command)
        }
        guard !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw WireError(.invalidValue, "\(field) contains a control character", command: command)
        }
    }

}

extension ByteWriter {
    mutating func writeBool(_ value: Bool) { write(UInt8(value ? 1 : 0)) }

    /// A u32 length followed by the bytes.
    mutating func writeLengthPrefixed(_ bytes: [UInt8]) {
        write(UInt32(bytes.count))
        write(bytes)
    }

    mutating func writeRange(_ range: BlockRange) {
        write(range.sector)
        write(range.sizeBytes)
    }

    mutating func writeRequest(_ request: BlockRequest) {
        writeRange(request.range)
        write(request.requestID)
    }

    mutating func writeAck(_ ack: BlockAck) {
        writeRange(ack.range)
        write(ack.requestID)
    }
}
