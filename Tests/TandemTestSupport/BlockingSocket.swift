#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// A minimal blocking stream-socket client with exact reads, so tests can spell protocols out by hand.
public final class BlockingSocket {
    /// -1 once closed: a second close(2) of the number could close a descriptor another thread has opened since
    /// (an event loop's epoll fd, say), which is how a test once brought down an unrelated one.
    private var fd: Int32

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
            close()
            throw POSIXError(.init(rawValue: code) ?? .EIO)
        }
    }

    /// Sends all of `bytes`; throws when the peer stops taking them.
    public func write(_ bytes: [UInt8]) throws {
        guard writeUntilRefused(bytes) == bytes.count else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
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

    /// Sends as much of `bytes` as the peer takes, stopping without an error when it closes or resets (a server may
    /// answer and close before reading everything); returns how many bytes went out.
    @discardableResult
    public func writeUntilRefused(_ bytes: [UInt8]) -> Int {
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { break }
            sent += count
        }
        return sent
    }

    /// Half-closes: the peer reads end of file after what was sent, and may still answer.
    public func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Bytes up to (not including) the first `delimiter`, or nil when the peer closes (or the read times out)
    /// before sending one.
    public func read(upTo delimiter: UInt8) -> [UInt8]? {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !received.contains(delimiter) {
            let n = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return nil }
            received += chunk[..<n]
        }
        return Array(received[..<received.firstIndex(of: delimiter)!])
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

    /// Closes the socket; idempotent.
    public func close() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
    }

    deinit { close() }
}
