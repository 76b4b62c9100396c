import Foundation

/// A small blocking NBD client, written from the protocol document and independently of Tandem's server code, so
/// that the daemon's export is checked against the specification rather than against itself: fixed newstyle
/// negotiation with NBD_OPT_GO, then one request at a time with simple replies.
public final class NBDTestClient {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The error of a simple reply; 0 is success (the values are Linux errno numbers).
    public typealias ErrorCode = UInt32
    public static let notPermitted: ErrorCode = 1
    public static let ioError: ErrorCode = 5
    public static let shuttingDown: ErrorCode = 108

    private let socket: BlockingSocket
    public let exportSizeBytes: UInt64
    private var nextHandle: UInt64 = 1

    /// Connects and negotiates `export`. Throws `Failure` with the server's message when it refuses the export.
    public init(unixPath: String, export: String, receiveTimeoutSeconds: Int = 60) throws {
        socket = try BlockingSocket(unixPath: unixPath, receiveTimeoutSeconds: receiveTimeoutSeconds)
        do {
            let greeting = try socket.read(18)
            guard Array(greeting[0..<16]) == Array("NBDMAGICIHAVEOPT".utf8) else {
                throw Failure(description: "not an NBD newstyle server")
            }
            // Client flags: FIXED_NEWSTYLE | NO_ZEROES.
            try socket.write(Self.bigEndian(UInt32(3)))
            let name = Array(export.utf8)
            // NBD_OPT_GO: name, then one information request (NBD_INFO_BLOCK_SIZE = 3).
            let data = Self.bigEndian(UInt32(name.count)) + name + Self.bigEndian(UInt16(1)) + Self.bigEndian(UInt16(3))
            try socket.write(Array("IHAVEOPT".utf8) + Self.bigEndian(UInt32(7)) + Self.bigEndian(UInt32(data.count)) + data)
            var size: UInt64?
            while true {
                let header = try socket.read(20)
                let type = Self.readUInt32(header, 12)
                let length = Int(Self.readUInt32(header, 16))
                let body = try socket.read(length)
                if type == 1 { break }  // NBD_REP_ACK
                if type & 0x8000_0000 != 0 {
                    throw Failure(description: "export refused: \(String(decoding: body, as: UTF8.self))")
                }
                // NBD_REP_INFO with NBD_INFO_EXPORT: size and flags.
                if type == 3, body.count >= 10, Self.readUInt16(body, 0) == 0 { size = Self.readUInt64(body, 2) }
            }
            guard let size else { throw Failure(description: "no NBD_INFO_EXPORT in the reply") }
            exportSizeBytes = size
        } catch {
            socket.close()
            throw error
        }
    }


    /// Sends NBD_CMD_DISC and closes.
    public func disconnect() {
        try? socket.write(request(type: 2, flags: 0, offset: 0, length: 0))
        socket.close()
    }

    public func write(offset: UInt64, _ bytes: [UInt8], fua: Bool = false) throws -> ErrorCode {
        try socket.write(request(type: 1, flags: fua ? 1 : 0, offset: offset, length: UInt32(bytes.count)) + bytes)
        return try reply().error
    }

    public func read(offset: UInt64, length: UInt32) throws -> (error: ErrorCode, data: [UInt8]) {
        try socket.write(request(type: 0, flags: 0, offset: offset, length: length))
        let error = try reply().error
        return (error, error == 0 ? try socket.read(Int(length)) : [])
    }

    public func flush() throws -> ErrorCode {
        try socket.write(request(type: 3, flags: 0, offset: 0, length: 0))
        return try reply().error
    }

    public func trim(offset: UInt64, length: UInt32) throws -> ErrorCode {
        try socket.write(request(type: 4, flags: 0, offset: offset, length: length))
        return try reply().error
    }

    public func writeZeroes(offset: UInt64, length: UInt32) throws -> ErrorCode {
        try socket.write(request(type: 6, flags: 0, offset: offset, length: length))
        return try reply().error
    }

    private func request(type: UInt16, flags: UInt16, offset: UInt64, length: UInt32) -> [UInt8] {
        let handle = nextHandle
        nextHandle += 1
        return Self.bigEndian(UInt32(0x2560_9513)) + Self.bigEndian(flags) + Self.bigEndian(type)
            + Self.bigEndian(handle) + Self.bigEndian(offset) + Self.bigEndian(length)
    }

    private func reply() throws -> (error: ErrorCode, handle: UInt64) {
        let header = try socket.read(16)
        guard Self.readUInt32(header, 0) == 0x6744_6698 else { throw Failure(description: "bad reply magic") }
        let handle = Self.readUInt64(header, 8)
        guard handle == nextHandle - 1 else { throw Failure(description: "reply for handle \(handle)") }
        return (Self.readUInt32(header, 4), handle)
    }

    static func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    static func readUInt16(_ bytes: [UInt8], _ at: Int) -> UInt16 {
        bytes[at..<at + 2].reduce(0) { $0 << 8 | UInt16($1) }
    }

    static func readUInt32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func readUInt64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        bytes[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }
}
