#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// Why a request did not get an answer.
public struct ControlClientError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// No daemon listens on the socket (no socket file, connection refused, permission denied).
        case daemonUnavailable
        /// The daemon did not answer in time, or the answer was not a response.
        case noAnswer
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// A blocking client of a daemon's control socket, for the CLI and for agents: one connection per request, one
/// request line, one response line.
public struct LineControlClient: Sendable {
    public let socketPath: String
    /// The daemon's name in messages ("replicad"), and how to start it ("start it with 'tandem replicad'").
    public let daemonName: String
    public let startHint: String
    public let responseBytesMaximum: Int

    public init(socketPath: String, daemonName: String, startHint: String, responseBytesMaximum: Int) {
        self.socketPath = socketPath
        self.daemonName = daemonName
        self.startHint = startHint
        self.responseBytesMaximum = responseBytesMaximum
    }

    /// Sends `request` and waits up to `answerTimeout` for the response.
    public func exchange<Request: Encodable, Response: Decodable>(
        _ request: Request, answerTimeout: Duration = .seconds(60)
    ) throws(ControlClientError) -> Response {
        let descriptor = try connect()
        defer { close(descriptor) }
        var timeout = timeval(
            tv_sec: Int(answerTimeout.components.seconds), tv_usec: Int(answerTimeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var line = try? encoder.encode(request) else {
            throw ControlClientError(.noAnswer, "the request cannot be encoded")
        }
        line.append(UInt8(ascii: "\n"))
        let answer: [UInt8]
        do throws(ControlClientError) {
            try write(descriptor, Array(line))
            answer = try readLine(descriptor)
        } catch {
            // The daemon may answer and close before reading the whole request (a refusal by credentials, a line
            // over the limit): its answer, if one arrived, says more than our broken pipe.
            guard let early = try? readLine(descriptor) else { throw error }
            answer = early
        }
        do {
            return try JSONDecoder().decode(Response.self, from: Data(answer))
        } catch {
            throw ControlClientError(.noAnswer, "\(daemonName) sent something that is not a response: \(error)")
        }
    }

    private func connect() throws(ControlClientError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw ControlClientError(.daemonUnavailable, "the socket path \(socketPath) is too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: pathBytes)
            buffer[pathBytes.count] = 0
        }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else {
            throw ControlClientError(.daemonUnavailable, "cannot create a socket: \(String(cString: strerror(errno)))")
        }
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            close(descriptor)
            throw ControlClientError(
                .daemonUnavailable,
                "\(daemonName) is not running (cannot connect to \(socketPath): "
                    + "\(String(cString: strerror(code)))); \(startHint)")
        }
        return descriptor
    }

    private func write(_ descriptor: Int32, _ bytes: [UInt8]) throws(ControlClientError) {
        var sent = 0
        while sent < bytes.count {
            let result = bytes.withUnsafeBytes { buffer in
                Glibc.send(descriptor, buffer.baseAddress! + sent, buffer.count - sent, Int32(MSG_NOSIGNAL))
            }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else {
                throw ControlClientError(.noAnswer, "sending to \(daemonName) failed: \(String(cString: strerror(errno)))")
            }
            sent += result
        }
    }

    private func readLine(_ descriptor: Int32) throws(ControlClientError) -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw ControlClientError(.noAnswer, "\(daemonName) did not answer in time")
            }
            guard count > 0 else {
                throw ControlClientError(.noAnswer, "\(daemonName) closed the connection without answering")
            }
            if let newline = chunk[0..<count].firstIndex(of: UInt8(ascii: "\n")) {
                received += chunk[0..<newline]
                return received
            }
            received += chunk[0..<count]
            guard received.count <= responseBytesMaximum else {
                throw ControlClientError(.noAnswer, "\(daemonName)'s answer exceeds \(responseBytesMaximum) bytes")
            }
        }
    }
}
