/// The preamble that opens every replication TCP socket, before any packet frame (docs/wire-formats.md, "Channel
/// hello").
///
/// Why it exists: each node both listens and connects, and a connection is made of two sockets (data and meta).
/// Without a preamble the listening side cannot tell which socket is which, which resource it is for, or whether two
/// sockets belong together; DRBD answers the first with `P_INITIAL_DATA` / `P_INITIAL_META`. The hello also carries
/// the sender's session nonce, which pairs sockets and settles the race when both nodes connect at once, and an
/// attempt number, so that a socket of an abandoned attempt is never paired with one of a newer attempt.
///
/// The connecting side sends an `offer`; the listening side answers on the same socket with an `accept` carrying its
/// own nonce and echoing the attempt number, or closes the socket. Fixed size, all big-endian:
///
/// | offset | type | field |
/// |---|---|---|
/// | 0 | u32 | magic `0x544E4448` ("TNDH") |
/// | 4 | u16 | version, 1 |
/// | 6 | u8 | channel: 1 data, 2 meta |
/// | 7 | u8 | role: 1 offer (connecting side), 2 accept (listening side's reply) |
/// | 8 | u64 | session nonce of the sender |
/// | 16 | u32 | attempt number of the connecting side (echoed in the accept) |
/// | 20 | u16 | resource name length in bytes, 1...64 |
/// | 22 | u16 | reserved, 0 |
/// | 24 | 64 bytes | resource name, UTF-8, padded with zeros |
/// | 88 | u32 | CRC32C over bytes 0..<88 |
public struct ChannelHello: Sendable, Hashable, CustomStringConvertible {
    /// Which side of the exchange sent the hello.
    public enum Role: UInt8, Sendable, Hashable {
        /// Sent by the connecting side as the first bytes of a socket.
        case offer = 1
        /// The listening side's reply: it keeps the socket.
        case accept = 2
    }

    /// Distinct from `PacketCodec.magic`, so that a peer that skips the preamble is named as such.
    public static let magic: UInt32 = 0x544E_4448
    public static let version: UInt16 = 1
    public static let encodedBytes = 92
    /// Long enough for any drbd.conf resource name seen in practice; the field has a fixed size so that the whole
    /// hello has one, and a listener never has to buffer more than `encodedBytes` from an unknown client.
    public static let resourceNameBytesMax = 64
    static let resourceNameOffset = 24
    static let checksumOffset = 88

    public var channel: PacketChannel
    public var role: Role
    public var sessionNonce: UInt64
    public var attempt: UInt32
    public var resourceName: String

    public init(channel: PacketChannel, role: Role, sessionNonce: UInt64, attempt: UInt32, resourceName: String) {
        self.channel = channel
        self.role = role
        self.sessionNonce = sessionNonce
        self.attempt = attempt
        self.resourceName = resourceName
    }

    public var description: String {
        "\(role) hello for \(channel) channel of '\(resourceName)' (nonce \(sessionNonce.prefixedHex), attempt \(attempt))"
    }

    /// Why `name` cannot travel in a hello, or nil if it can. Configuration checks this before any socket is opened.
    public static func resourceNameProblem(_ name: String) -> String? {
        let byteCount = name.utf8.count
        if byteCount == 0 { return "the resource name is empty" }
        if byteCount > resourceNameBytesMax {
            return "the resource name is \(byteCount) bytes of UTF-8; at most \(resourceNameBytesMax) fit in the hello"
        }
        if name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "the resource name contains a control character"
        }
        return nil
    }

    // MARK: Encoding

    /// The 92 bytes of this hello. A resource name that `resourceNameProblem` refuses is a programmer error: the
    /// configuration is checked before any hello is built.
    public func encode() -> [UInt8] {
        if let problem = Self.resourceNameProblem(resourceName) {
            preconditionFailure("ChannelHello.encode: \(problem) (\(resourceName.debugDescription))")
        }
        var writer = ByteWriter(reservingCapacity: Self.encodedBytes)
        writer.write(Self.magic)
        writer.write(Self.version)
        writer.write(Self.channelCode(channel))
        writer.write(role.rawValue)
        writer.write(sessionNonce)
        writer.write(attempt)
        let name = Array(resourceName.utf8)
        writer.write(UInt16(name.count))
        writer.write(UInt16(0))
        writer.write(name)
        writer.pad(toLength: Self.checksumOffset)
        writer.write(CRC32C.checksum(writer.bytes))
        precondition(writer.bytes.count == Self.encodedBytes, "hello layout is \(writer.bytes.count) bytes")
        return writer.bytes
    }

    static func channelCode(_ channel: PacketChannel) -> UInt8 {
        switch channel {
        case .data: 1
        case .meta: 2
        }
    }

    // MARK: Decoding

    /// Decodes a hello from the first bytes received on a socket, or returns nil while more bytes are needed.
    ///
    /// The magic is checked as soon as 4 bytes are there and the version as soon as 6 are, so that a client that
    /// is not a Tandem peer (or a future version) is refused without waiting for the rest. Bytes after the first
    /// `encodedBytes` are not looked at: they are the first packet frames. No input makes this trap.
    public static func decode(_ bytes: some Collection<UInt8>) throws(ChannelHelloError) -> ChannelHello? {
        let prefix = Array(bytes.prefix(encodedBytes))
        if prefix.count >= 4 {
            let magic = bigEndian(UInt32.self, prefix, at: 0)
            guard magic == Self.magic else {
                throw ChannelHelloError(
                    .badMagic,
                    "the socket starts with \(magic.prefixedHex), expected \(Self.magic.prefixedHex): "
                        + (magic == PacketCodec.magic
                            ? "a packet frame without a hello" : "not a Tandem replication peer"))
            }
        }
        if prefix.count >= 6 {
            let version = bigEndian(UInt16.self, prefix, at: 4)
            guard version == Self.version else {
                throw ChannelHelloError(
                    .unsupportedVersion, "hello version \(version); this node speaks version \(Self.version)")
            }
        }
        guard prefix.count == encodedBytes else { return nil }

        let checksum = bigEndian(UInt32.self, prefix, at: checksumOffset)
        let computed = CRC32C.checksum(prefix[..<checksumOffset])
        guard checksum == computed else {
            throw ChannelHelloError(
                .checksumMismatch,
                "hello says \(checksum.prefixedHex), its bytes compute \(computed.prefixedHex)")
        }
        let channel: PacketChannel
        switch prefix[6] {
        case 1: channel = .data
        case 2: channel = .meta
        default: throw ChannelHelloError(.invalidValue, "unknown channel code \(prefix[6])")
        }
        guard let role = Role(rawValue: prefix[7]) else {
            throw ChannelHelloError(.invalidValue, "unknown role code \(prefix[7])")
        }
        let nameLength = Int(bigEndian(UInt16.self, prefix, at: 20))
        guard nameLength >= 1, nameLength <= resourceNameBytesMax else {
            throw ChannelHelloError(
                .invalidValue, "resource name length \(nameLength); it must be 1...\(resourceNameBytesMax)")
        }
        let reserved = bigEndian(UInt16.self, prefix, at: 22)
        guard reserved == 0 else {
            throw ChannelHelloError(.invalidValue, "reserved field is \(reserved); it must be 0")
        }
        let nameEnd = resourceNameOffset + nameLength
        guard prefix[nameEnd..<checksumOffset].allSatisfy({ $0 == 0 }) else {
            throw ChannelHelloError(.invalidValue, "the padding after the resource name is not all zeros")
        }
        guard let name = String(validating: prefix[resourceNameOffset..<nameEnd], as: UTF8.self) else {
            throw ChannelHelloError(.invalidValue, "the resource name is not valid UTF-8")
        }
        if let problem = resourceNameProblem(name) {
            throw ChannelHelloError(.invalidValue, problem)
        }
        return ChannelHello(
            channel: channel, role: role, sessionNonce: bigEndian(UInt64.self, prefix, at: 8),
            attempt: bigEndian(UInt32.self, prefix, at: 16), resourceName: name)
    }

    private static func bigEndian<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], at offset: Int) -> T {
        var value: T = 0
        for index in offset..<offset + MemoryLayout<T>.size { value = (value << 8) | T(bytes[index]) }
        return value
    }
}

/// Why the first bytes of a socket are not an acceptable hello. The socket is closed with this as the logged reason.
public struct ChannelHelloError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// Not `ChannelHello.magic`: not a Tandem peer, or a peer that skipped the preamble.
        case badMagic
        /// A hello version this node does not speak.
        case unsupportedVersion
        /// The CRC32C does not match: the bytes were damaged.
        case checksumMismatch
        /// A field holds a value that is not allowed (unknown code, bad length, non-zero padding, bad UTF-8).
        case invalidValue
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        switch code {
        case .badMagic: "bad hello magic: \(message)"
        case .unsupportedVersion: "unsupported hello version: \(message)"
        case .checksumMismatch: "hello checksum mismatch: \(message)"
        case .invalidValue: "invalid hello: \(message)"
        }
    }
}
