/// The NBD wire protocol (github.com/NetworkBlockDevice/nbd, doc/proto.md): constants, the explicit big-endian layouts
/// Tandem speaks (fixed newstyle negotiation, simple replies), and a strict incremental reader that never traps on
/// hostile bytes. Everything here is pure: no I/O, no clock.
public enum NBDProtocol {
    // MARK: Magics

    /// "NBDMAGIC", the first eight bytes of the server greeting.
    public static let greetingMagic: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": ends the newstyle greeting and starts every option request.
    public static let optionMagic: UInt64 = 0x4948_4156_454f_5054
    /// Starts every option reply.
    public static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    /// Starts every transmission request.
    public static let requestMagic: UInt32 = 0x2560_9513
    /// Starts every simple reply.
    public static let simpleReplyMagic: UInt32 = 0x6744_6698

    // MARK: Sizes

    /// NBDMAGIC (8) + IHAVEOPT (8) + handshake flags (2).
    public static let greetingSizeBytes = 18
    /// Client flags: one 32-bit word.
    public static let clientFlagsSizeBytes = 4
    /// IHAVEOPT (8) + option (4) + length (4).
    public static let optionHeaderSizeBytes = 16
    /// Magic (4) + command flags (2) + type (2) + handle (8) + offset (8) + length (4).
    public static let requestHeaderSizeBytes = 28
    /// Magic (4) + error (4) + handle (8).
    public static let simpleReplyHeaderSizeBytes = 16
    /// The zero padding after the NBD_OPT_EXPORT_NAME reply unless the client set NBD_FLAG_C_NO_ZEROES.
    public static let exportNameZeroPaddingBytes = 124

    // MARK: Flags

    public struct HandshakeFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
        public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
    }

    public struct ClientFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
        public static let noZeroes = ClientFlags(rawValue: 1 << 1)
        public static let known: ClientFlags = [.fixedNewstyle, .noZeroes]
    }

    public struct TransmissionFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
        public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
        public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
        public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
        public static let rotational = TransmissionFlags(rawValue: 1 << 4)
        public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
        public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
        public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
        public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
    }

    public struct CommandFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let fua = CommandFlags(rawValue: 1 << 0)
        public static let noHole = CommandFlags(rawValue: 1 << 1)
        public static let dontFragment = CommandFlags(rawValue: 1 << 2)
        public static let requestOne = CommandFlags(rawValue: 1 << 3)
        public static let fastZero = CommandFlags(rawValue: 1 << 4)
    }

    // MARK: Options and replies

    public struct Option: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let exportName = Option(rawValue: 1)
        public static let abort = Option(rawValue: 2)
        public static let list = Option(rawValue: 3)
        public static let peekExport = Option(rawValue: 4)
        public static let startTLS = Option(rawValue: 5)
        public static let info = Option(rawValue: 6)
        public static let go = Option(rawValue: 7)
        public static let structuredReply = Option(rawValue: 8)
        public static let listMetaContext = Option(rawValue: 9)
        public static let setMetaContext = Option(rawValue: 10)
        public static let extendedHeaders = Option(rawValue: 11)
        public var description: String { "option \(rawValue)" }
    }

    public struct OptionReplyType: RawRepresentable, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let ack = OptionReplyType(rawValue: 1)
        public static let server = OptionReplyType(rawValue: 2)
        public static let info = OptionReplyType(rawValue: 3)
        public static let errorUnsupported = OptionReplyType(rawValue: 1 << 31 | 1)
        public static let errorPolicy = OptionReplyType(rawValue: 1 << 31 | 2)
        public static let errorInvalid = OptionReplyType(rawValue: 1 << 31 | 3)
        public static let errorPlatform = OptionReplyType(rawValue: 1 << 31 | 4)
        public static let errorTLSRequired = OptionReplyType(rawValue: 1 << 31 | 5)
        public static let errorUnknown = OptionReplyType(rawValue: 1 << 31 | 6)
        public static let errorShutdown = OptionReplyType(rawValue: 1 << 31 | 7)
        public static let errorBlockSizeRequired = OptionReplyType(rawValue: 1 << 31 | 8)
        public static let errorTooBig = OptionReplyType(rawValue: 1 << 31 | 9)
        public var isError: Bool { rawValue & (1 << 31) != 0 }
    }

    public struct InfoType: RawRepresentable, Sendable, Hashable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let export = InfoType(rawValue: 0)
        public static let name = InfoType(rawValue: 1)
        public static let description = InfoType(rawValue: 2)
        public static let blockSize = InfoType(rawValue: 3)
    }

    public struct CommandType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let read = CommandType(rawValue: 0)
        public static let write = CommandType(rawValue: 1)
        public static let disconnect = CommandType(rawValue: 2)
        public static let flush = CommandType(rawValue: 3)
        public static let trim = CommandType(rawValue: 4)
        public static let cache = CommandType(rawValue: 5)
        public static let writeZeroes = CommandType(rawValue: 6)
        public static let blockStatus = CommandType(rawValue: 7)
        public var description: String {
            switch self {
            case .read: "READ"
            case .write: "WRITE"
            case .disconnect: "DISC"
            case .flush: "FLUSH"
            case .trim: "TRIM"
            case .writeZeroes: "WRITE_ZEROES"
            default: "command \(rawValue)"
            }
        }
    }

    // MARK: Messages

    /// An option request's header; its `length` bytes of data follow.
    public struct OptionHeader: Sendable, Hashable {
        public var option: Option
        public var length: UInt32
    }

    /// A transmission request's header; a WRITE's `length` bytes of payload follow it.
    public struct RequestHeader: Sendable, Hashable {
        public var flags: CommandFlags
        public var type: CommandType
        public var handle: UInt64
        public var offset: UInt64
        public var length: UInt32

        public init(flags: CommandFlags = [], type: CommandType, handle: UInt64, offset: UInt64, length: UInt32) {
            self.flags = flags
            self.type = type
            self.handle = handle
            self.offset = offset
            self.length = length
        }

        public func encode() -> [UInt8] {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(NBDProtocol.requestHeaderSizeBytes)
            bytes.appendBigEndian(NBDProtocol.requestMagic)
            bytes.appendBigEndian(flags.rawValue)
            bytes.appendBigEndian(type.rawValue)
            bytes.appendBigEndian(handle)
            bytes.appendBigEndian(offset)
            bytes.appendBigEndian(length)
            return bytes
        }
    }

    // MARK: Encoders

    /// The newstyle greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    public static func greeting(flags: HandshakeFlags = [.fixedNewstyle, .noZeroes]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(greetingSizeBytes)
        bytes.appendBigEndian(greetingMagic)
        bytes.appendBigEndian(optionMagic)
        bytes.appendBigEndian(flags.rawValue)
        return bytes
    }

    public static func clientFlags(_ flags: ClientFlags) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(flags.rawValue)
        return bytes
    }

    /// An option request as a client sends it (used by tests and tools).
    public static func optionRequest(_ option: Option, data: [UInt8] = []) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(optionMagic)
        bytes.appendBigEndian(option.rawValue)
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: data.count))
        bytes.append(contentsOf: data)
        return bytes
    }

    /// The data of an NBD_OPT_GO or NBD_OPT_INFO request.
    public static func goData(name: String, infoRequests: [InfoType]) -> [UInt8] {
        var bytes: [UInt8] = []
        let nameBytes = Array(name.utf8)
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: nameBytes.count))
        bytes.append(contentsOf: nameBytes)
        bytes.appendBigEndian(UInt16(truncatingIfNeeded: infoRequests.count))
        for info in infoRequests { bytes.appendBigEndian(info.rawValue) }
        return bytes
    }

    public static func optionReply(_ option: Option, _ type: OptionReplyType, data: [UInt8] = []) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(20 + data.count)
        bytes.appendBigEndian(optionReplyMagic)
        bytes.appendBigEndian(option.rawValue)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: data.count))
        bytes.append(contentsOf: data)
        return bytes
    }

    /// NBD_REP_SERVER data for NBD_OPT_LIST: the name's length, then the name.
    public static func serverReplyData(name: String) -> [UInt8] {
        var bytes: [UInt8] = []
        let nameBytes = Array(name.utf8)
        bytes.appendBigEndian(UInt32(truncatingIfNeeded: nameBytes.count))
        bytes.append(contentsOf: nameBytes)
        return bytes
    }

    /// NBD_INFO_EXPORT: type, size in bytes, transmission flags (12 bytes).
    public static func infoExport(sizeBytes: UInt64, flags: TransmissionFlags) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(InfoType.export.rawValue)
        bytes.appendBigEndian(sizeBytes)
        bytes.appendBigEndian(flags.rawValue)
        return bytes
    }

    /// NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum payload (14 bytes).
    public static func infoBlockSize(minimumBytes: UInt32, preferredBytes: UInt32, maximumBytes: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(InfoType.blockSize.rawValue)
        bytes.appendBigEndian(minimumBytes)
        bytes.appendBigEndian(preferredBytes)
        bytes.appendBigEndian(maximumBytes)
        return bytes
    }

    /// NBD_INFO_NAME: type, then the name.
    public static func infoName(_ name: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(InfoType.name.rawValue)
        bytes.append(contentsOf: name.utf8)
        return bytes
    }

    /// The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless the client asked for none.
    public static func exportNameReply(sizeBytes: UInt64, flags: TransmissionFlags, noZeroes: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(sizeBytes)
        bytes.appendBigEndian(flags.rawValue)
        if !noZeroes { bytes.append(contentsOf: repeatElement(0, count: exportNameZeroPaddingBytes)) }
        return bytes
    }

    /// A simple reply: magic, error, handle, then (for a successful READ only) the data.
    public static func simpleReply(handle: UInt64, error: NBDErrorCode = .none, data: [UInt8] = []) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(simpleReplyHeaderSizeBytes + data.count)
        bytes.appendBigEndian(simpleReplyMagic)
        bytes.appendBigEndian(error.rawValue)
        bytes.appendBigEndian(handle)
        bytes.append(contentsOf: data)
        return bytes
    }
}

/// The error field of a simple reply. The values are fixed by the protocol (they happen to equal Linux errno values).
public struct NBDErrorCode: RawRepresentable, Sendable, Hashable, Error, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let none = NBDErrorCode(rawValue: 0)
    public static let notPermitted = NBDErrorCode(rawValue: 1)  // NBD_EPERM
    public static let ioError = NBDErrorCode(rawValue: 5)  // NBD_EIO
    public static let outOfMemory = NBDErrorCode(rawValue: 12)  // NBD_ENOMEM
    public static let invalidArgument = NBDErrorCode(rawValue: 22)  // NBD_EINVAL
    public static let noSpace = NBDErrorCode(rawValue: 28)  // NBD_ENOSPC
    public static let overflow = NBDErrorCode(rawValue: 75)  // NBD_EOVERFLOW
    public static let notSupported = NBDErrorCode(rawValue: 95)  // NBD_ENOTSUP
    public static let shuttingDown = NBDErrorCode(rawValue: 108)  // NBD_ESHUTDOWN
    public var description: String {
        switch self {
        case .none: "OK"
        case .notPermitted: "EPERM"
        case .ioError: "EIO"
        case .outOfMemory: "ENOMEM"
        case .invalidArgument: "EINVAL"
        case .noSpace: "ENOSPC"
        case .overflow: "EOVERFLOW"
        case .notSupported: "ENOTSUP"
        case .shuttingDown: "ESHUTDOWN"
        default: "NBD error \(rawValue)"
        }
    }
}

/// A growable input buffer with bounds-checked big-endian reads. Every read returns nil instead of trapping when the
/// bytes are not there yet; consumed bytes are dropped in amortised O(1).
public struct NBDByteReader: Sendable {
    private var storage: [UInt8] = []
    private var readIndex = 0

    public init() {}

    public var readableBytes: Int { storage.count - readIndex }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        storage.append(contentsOf: bytes)
    }

    public func peekUInt16(at offset: Int) -> UInt16? { peek(at: offset, as: UInt16.self) }
    public func peekUInt32(at offset: Int) -> UInt32? { peek(at: offset, as: UInt32.self) }
    public func peekUInt64(at offset: Int) -> UInt64? { peek(at: offset, as: UInt64.self) }

    public func peekBytes(at offset: Int, count: Int) -> [UInt8]? {
        guard offset >= 0, count >= 0, count <= readableBytes - offset else { return nil }
        let start = readIndex + offset
        return Array(storage[start..<start + count])
    }

    /// Drops `count` bytes from the front; `count` must not exceed `readableBytes` (a programmer error otherwise).
    public mutating func consume(_ count: Int) {
        precondition(count >= 0 && count <= readableBytes, "consume(\(count)) with \(readableBytes) readable bytes")
        readIndex += count
        if readIndex == storage.count {
            storage.removeAll(keepingCapacity: storage.count <= 1 << 16)
            readIndex = 0
        } else if readIndex >= 1 << 16 && readIndex * 2 >= storage.count {
            storage.removeFirst(readIndex)
            readIndex = 0
        }
    }

    public mutating func removeAll() {
        storage = []
        readIndex = 0
    }

    private func peek<T: FixedWidthInteger>(at offset: Int, as: T.Type) -> T? {
        let width = MemoryLayout<T>.size
        guard offset >= 0, width <= readableBytes - offset else { return nil }
        var value: T = 0
        for index in 0..<width { value = value << 8 | T(storage[readIndex + offset + index]) }
        return value
    }
}

/// Parsed NBD_OPT_GO / NBD_OPT_INFO data.
public struct NBDExportRequest: Sendable, Hashable {
    public var nameBytes: [UInt8]
    public var infoRequests: [NBDProtocol.InfoType]

    /// Parses `name length (4), name, request count (2), requests (2 each)`; nil when the lengths do not add up
    /// exactly or the name is longer than `nameBytesMax`.
    public static func parse(_ data: [UInt8], nameBytesMax: Int) -> NBDExportRequest? {
        var reader = NBDByteReader()
        reader.append(data)
        guard let nameLength = reader.peekUInt32(at: 0), nameLength <= nameBytesMax else { return nil }
        let nameCount = Int(nameLength)
        guard let nameBytes = reader.peekBytes(at: 4, count: nameCount),
            let requestCount = reader.peekUInt16(at: 4 + nameCount),
            data.count == 4 + nameCount + 2 + 2 * Int(requestCount)
        else { return nil }
        var infoRequests: [NBDProtocol.InfoType] = []
        for index in 0..<Int(requestCount) {
            guard let raw = reader.peekUInt16(at: 6 + nameCount + 2 * index) else { return nil }
            infoRequests.append(NBDProtocol.InfoType(rawValue: raw))
        }
        return NBDExportRequest(nameBytes: nameBytes, infoRequests: infoRequests)
    }
}

extension Array where Element == UInt8 {

    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        let width = MemoryLayout<T>.size
        for index in (0..<width).reversed() { append(UInt8(truncatingIfNeeded: value >> (index * 8))) }
    }
}
