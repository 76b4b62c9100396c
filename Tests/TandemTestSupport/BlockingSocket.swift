#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// A minimal blocking stream-socket client with exact reads, so tests can spell protocols out by hand.
public final class BlockingSocket {
    private let fd: Int32

    /// Connects to a Unix domain socket; reads time out after `receiveTimeoutSeconds`.
    public init(unixPath: String, receiveTimeoutSeconds: Int = 10) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(unixPath.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
        }
        var timeout = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard status == 0 else {
            let code = errno
            Glibc.close(fd)
            throw POSIXError(.init(rawValue: code) ?? .EIO)
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
            sent += count
        }
    }

    /// Exactly `count` bytes; throws on end of file or timeout.
    public func read(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var received = 0
        while received < count {
            let n = bytes.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + received, count - received, 0) }
            guard n > 0 else { throw POSIXError(n == 0 ? .ECONNRESET : (.init(rawValue: errno) ?? .EIO)) }
            received += n
        }
        return bytes
    }

    /// Everything until the server closes.
    public func readToEnd() throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return bytes }
            guard n > 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
            bytes += chunk[..<n]
        }
    }

    public func close() { Glibc.close(fd) }
}
