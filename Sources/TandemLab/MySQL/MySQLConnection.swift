#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import Crypto
import Foundation

/// Why a MySQL/MariaDB exchange failed. `server` errors come from the server (the statement was refused; the
/// connection is still usable); the others mean the connection is gone, and whether the last statement took effect
/// is unknown.
public struct MySQLError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        case connect
        case timeout
        case closed
        case protocolViolation
        case server(UInt16)
    }

    public var code: Code
    public var message: String

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        if case .server(let number) = code { return "server error \(number): \(message)" }
        return message
    }

    /// The connection is unusable after this error.
    public var connectionLost: Bool { if case .server = code { false } else { true } }
}

/// A blocking client for MariaDB's (and MySQL's) client/server protocol: handshake v10 with mysql_native_password
/// (and an auth switch to it), COM_QUERY, and text result sets. Enough for the lab's workload and checks, with every
/// wait bounded: connect, each read and each write have a timeout, and a packet has a size limit.
///
/// Not thread-safe: one connection per thread. The socket belongs to the network namespace of the thread that
/// connected, which is how the lab talks to the VIP from the client's namespace.
public final class MySQLConnection {
    public struct Options: Sendable {
        public var host: String
        public var port: UInt16 = 3306
        public var user: String
        public var password: String
        public var database: String?
        public var connectTimeout: Duration = .seconds(1)
        /// How long a statement may take before the connection is given up (and its outcome is unknown).
        public var readTimeout: Duration = .seconds(3)

        public init(host: String, port: UInt16 = 3306, user: String, password: String, database: String? = nil) {
            self.host = host
            self.port = port
            self.user = user
            self.password = password
            self.database = database
        }
    }

    /// What a statement returned: rows for a SELECT, affected rows for the others.
    public struct Result: Sendable {
        public var columns: [String] = []
        public var rows: [[String?]] = []
        public var affectedRows: UInt64 = 0
    }

    static let packetBytesMaximum = 16 * 1024 * 1024 - 1
    static let resultRowsMaximum = 10_000_000

    private var socket: Int32
    private var sequence: UInt8 = 0
    public let serverVersion: String

    private init(socket: Int32, serverVersion: String) {
        self.socket = socket
        self.serverVersion = serverVersion
    }

    deinit { if socket >= 0 { Glibc.close(socket) } }

    public func close() {
        guard socket >= 0 else { return }
        sequence = 0
        try? writePacket([0x01])  // COM_QUIT
        Glibc.close(socket)
        socket = -1
    }

    // MARK: Connecting

    public static func connect(_ options: Options) throws(MySQLError) -> MySQLConnection {
        let fd = try openSocket(options)
        var handshake: [UInt8]
        do {
            handshake = try readPacket(fd, expectedSequence: 0).payload
        } catch {
            Glibc.close(fd)
            throw error
        }
        do {
            return try authenticate(fd, handshake: &handshake, options: options)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    private static func openSocket(_ options: Options) throws(MySQLError) -> Int32 {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = options.port.bigEndian
        guard inet_pton(AF_INET, options.host, &address.sin_addr) == 1 else {
            throw MySQLError(.connect, "\(options.host) is not an IPv4 address")
        }
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw MySQLError(.connect, "socket: \(String(cString: strerror(errno)))") }
        let started = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if started != 0 && errno != EINPROGRESS {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw MySQLError(.connect, "connect to \(options.host):\(options.port): \(reason)")
        }
        var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let ready = poll(&poller, 1, Int32(clamping: options.connectTimeout.wholeMilliseconds))
        var socketError: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &socketError, &length)
        guard ready == 1, socketError == 0 else {
            Glibc.close(fd)
            let reason = ready == 1 ? String(cString: strerror(socketError)) : "no answer within \(options.connectTimeout)"
            throw MySQLError(ready == 1 ? .connect : .timeout, "connect to \(options.host):\(options.port): \(reason)")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        // The login, like the connect, is bounded by the connect timeout: a hung server still completes TCP
        // handshakes (the kernel does), and only its greeting shows that it is alive.
        setTimeouts(fd, options.connectTimeout)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    private static func setTimeouts(_ fd: Int32, _ duration: Duration) {
        var timeout = timeval(
            tv_sec: Int(duration.components.seconds), tv_usec: Int(duration.components.attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    private struct Capability {
        static let longPassword: UInt32 = 0x1
        static let longFlag: UInt32 = 0x4
        static let connectWithDatabase: UInt32 = 0x8
        static let protocol41: UInt32 = 0x200
        static let transactions: UInt32 = 0x2000
        static let secureConnection: UInt32 = 0x8000
        static let pluginAuth: UInt32 = 0x80000
    }

    private static func authenticate(_ fd: Int32, handshake: inout [UInt8], options: Options) throws(MySQLError) -> MySQLConnection {
        // A server that refuses at once (1040 too many connections, 1129 host blocked) greets with an error.
        if handshake.first == 0xFF { throw serverError(handshake) }
        var reader = PacketReader(handshake)
        guard reader.byte() == 10 else { throw MySQLError(.protocolViolation, "not a protocol 10 handshake") }
        let version = reader.nulString()
        _ = reader.bytes(4)  // connection id
        var scramble = reader.bytes(8)
        _ = reader.bytes(1)
        let lowCapabilities = UInt32(reader.uint16())
        _ = reader.bytes(3)  // character set, status
        let capabilities = lowCapabilities | UInt32(reader.uint16()) << 16
        let scrambleLength = Int(reader.byte())
        _ = reader.bytes(10)
        if capabilities & Capability.secureConnection != 0 {
            scramble += reader.bytes(max(13, scrambleLength - 8)).prefix { $0 != 0 }
        }
        guard scramble.count >= 20, capabilities & Capability.protocol41 != 0 else {
            throw MySQLError(.protocolViolation, "the server (\(version)) offers no 4.1 authentication")
        }
        // No CLIENT_MULTI_RESULTS: one statement, one result, which is all readResult reads.
        var flags = Capability.longPassword | Capability.longFlag | Capability.protocol41 | Capability.transactions
            | Capability.secureConnection | Capability.pluginAuth
        if options.database != nil { flags |= Capability.connectWithDatabase }
        var response: [UInt8] = []
        response.appendLittleEndian(flags)
        response.appendLittleEndian(UInt32(packetBytesMaximum))
        response.append(45)  // utf8mb4_general_ci
        response += [UInt8](repeating: 0, count: 23)
        response += Array(options.user.utf8) + [0]
        let token = nativePasswordToken(password: options.password, scramble: Array(scramble.prefix(20)))
        response.append(UInt8(token.count))
        response += token
        if let database = options.database { response += Array(database.utf8) + [0] }
        response += Array("mysql_native_password".utf8) + [0]
        try writePacket(fd, response, sequence: 1)
        var (answer, sequence) = try readPacket(fd, expectedSequence: 2)
        if answer.first == 0xFE {
            // Auth switch: the account uses another plugin; only mysql_native_password is spoken here.
            var switchReader = PacketReader(answer)
            _ = switchReader.byte()
            let plugin = switchReader.nulString()
            guard plugin == "mysql_native_password" else {
                throw MySQLError(.protocolViolation, "the account wants authentication plugin \(plugin); create it IDENTIFIED BY a password")
            }
            let data = Array(switchReader.rest().prefix { $0 != 0 }.prefix(20))
            try writePacket(fd, nativePasswordToken(password: options.password, scramble: data), sequence: sequence &+ 1)
            (answer, sequence) = try readPacket(fd, expectedSequence: sequence &+ 2)
        }
        if answer.first == 0xFF { throw serverError(answer) }
        guard answer.first == 0x00 else { throw MySQLError(.protocolViolation, "unexpected answer to the login") }
        setTimeouts(fd, options.readTimeout)
        return MySQLConnection(socket: fd, serverVersion: version)
    }

    /// mysql_native_password: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))).
    static func nativePasswordToken(password: String, scramble: [UInt8]) -> [UInt8] {
        guard !password.isEmpty else { return [] }
        let stage1 = Array(Insecure.SHA1.hash(data: Array(password.utf8)))
        let stage2 = Array(Insecure.SHA1.hash(data: stage1))
        let mix = Array(Insecure.SHA1.hash(data: scramble + stage2))
        return zip(stage1, mix).map { $0 ^ $1 }
    }

    // MARK: Statements

    /// Runs one statement. A server error leaves the connection usable; any other error closes it.
    @discardableResult
    public func query(_ statement: String) throws(MySQLError) -> Result {
        guard socket >= 0 else { throw MySQLError(.closed, "the connection is closed") }
        do {
            sequence = 0
            try writePacket([0x03] + Array(statement.utf8))
            return try readResult()
        } catch {
            if error.connectionLost {
                Glibc.close(socket)
                socket = -1
            }
            throw error
        }
    }

    private func readResult() throws(MySQLError) -> Result {
        let first = try nextPacket()
        switch first.first {
        case 0x00:
            var reader = PacketReader(first)
            _ = reader.byte()
            return Result(affectedRows: reader.lengthEncoded())
        case 0xFF:
            throw Self.serverError(first)
        default:
            var reader = PacketReader(first)
            let columnCount = Int(reader.lengthEncoded())
            guard columnCount > 0, columnCount < 4096 else { throw MySQLError(.protocolViolation, "bad column count") }
            var result = Result()
            for _ in 0..<columnCount {
                var column = PacketReader(try nextPacket())
                for _ in 0..<4 { _ = column.lengthEncodedString() }  // catalog, schema, table, original table
                result.columns.append(column.lengthEncodedString() ?? "")
            }
            guard Self.isEOF(try nextPacket()) else { throw MySQLError(.protocolViolation, "no EOF after the columns") }
            while true {
                let packet = try nextPacket()
                if Self.isEOF(packet) { return result }
                if packet.first == 0xFF { throw Self.serverError(packet) }
                guard result.rows.count < Self.resultRowsMaximum else {
                    throw MySQLError(.protocolViolation, "more than \(Self.resultRowsMaximum) rows")
                }
                var row = PacketReader(packet)
                result.rows.append((0..<columnCount).map { _ in row.lengthEncodedString() })
            }
        }
    }

    private static func isEOF(_ packet: [UInt8]) -> Bool { packet.first == 0xFE && packet.count < 9 }

    private static func serverError(_ packet: [UInt8]) -> MySQLError {
        var reader = PacketReader(packet)
        _ = reader.byte()
        let number = reader.uint16()
        var message = reader.rest()
        if message.first == UInt8(ascii: "#") { message = Array(message.dropFirst(6)) }
        return MySQLError(.server(number), String(decoding: message, as: UTF8.self))
    }

    // MARK: Packets

    private func nextPacket() throws(MySQLError) -> [UInt8] {
        let (payload, received) = try Self.readPacket(socket, expectedSequence: sequence &+ 1)
        sequence = received
        return payload
    }

    private func writePacket(_ payload: [UInt8]) throws(MySQLError) {
        try Self.writePacket(socket, payload, sequence: sequence)
    }

    private static func writePacket(_ fd: Int32, _ payload: [UInt8], sequence: UInt8) throws(MySQLError) {
        precondition(payload.count < 0xFF_FFFF, "packet of \(payload.count) bytes needs splitting, which is not implemented")
        var bytes: [UInt8] = [UInt8(payload.count & 0xFF), UInt8(payload.count >> 8 & 0xFF), UInt8(payload.count >> 16), sequence]
        bytes += payload
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 && errno == EINTR { continue }
            guard sent > 0 else { throw ioError(errno, "send") }
            offset += sent
        }
    }

    private static func readPacket(_ fd: Int32, expectedSequence: UInt8) throws(MySQLError) -> (payload: [UInt8], sequence: UInt8) {
        let header = try readExactly(fd, 4)
        let length = Int(header[0]) | Int(header[1]) << 8 | Int(header[2]) << 16
        // 0xFFFFFF means the payload continues in the next packet: results that large are not read here.
        guard length < 0xFF_FFFF else { throw MySQLError(.protocolViolation, "a payload split over several packets is not supported") }
        guard header[3] == expectedSequence else {
            throw MySQLError(.protocolViolation, "packet sequence \(header[3]), expected \(expectedSequence)")
        }
        return (try readExactly(fd, length), header[3])
    }

    private static func readExactly(_ fd: Int32, _ count: Int) throws(MySQLError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let received = buffer[offset...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if received < 0 && errno == EINTR { continue }
            if received == 0 { throw MySQLError(.closed, "the server closed the connection") }
            guard received > 0 else { throw ioError(errno, "receive") }
            offset += received
        }
        return buffer
    }

    private static func ioError(_ number: Int32, _ what: String) -> MySQLError {
        if number == EAGAIN || number == EWOULDBLOCK { return MySQLError(.timeout, "\(what): no answer in time") }
        return MySQLError(.closed, "\(what): \(String(cString: strerror(number)))")
    }
}

/// Reads the protocol's little-endian fields; reading past the end yields zeros, which the callers' checks catch.
struct PacketReader {
    private let bytes: [UInt8]
    private var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, offset + count)
        defer { offset = end }
        return Array(bytes[min(offset, end)..<end])
    }

    mutating func uint16() -> UInt16 { UInt16(byte()) | UInt16(byte()) << 8 }

    mutating func nulString() -> String {
        var text: [UInt8] = []
        while offset < bytes.count, bytes[offset] != 0 {
            text.append(bytes[offset])
            offset += 1
        }
        offset += 1
        return String(decoding: text, as: UTF8.self)
    }

    mutating func rest() -> [UInt8] { bytes(bytes.count - offset) }

    mutating func lengthEncoded() -> UInt64 {
        let first = byte()
        switch first {
        case 0xFC: return UInt64(uint16())
        case 0xFD: return UInt64(byte()) | UInt64(byte()) << 8 | UInt64(byte()) << 16
        case 0xFE: return (0..<8).reduce(UInt64(0)) { value, shift in value | UInt64(byte()) << (8 * UInt64(shift)) }
        default: return UInt64(first)
        }
    }

    /// A length-encoded string, or nil for SQL NULL (0xFB).
    mutating func lengthEncodedString() -> String? {
        guard offset < bytes.count else { return nil }
        if bytes[offset] == 0xFB {
            offset += 1
            return nil
        }
        let length = Int(min(lengthEncoded(), UInt64(bytes.count)))
        return String(decoding: bytes(length), as: UTF8.self)
    }
}

extension [UInt8] {
    mutating func appendLittleEndian(_ value: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }
}
