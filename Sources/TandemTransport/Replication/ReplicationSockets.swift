#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import NIOCore

/// The replication sockets' system calls: the listener, the outgoing connect and the socket options.
///
/// The transport makes its sockets itself instead of letting SwiftNIO make them, because it keeps each socket's
/// descriptor: the hello exchange runs on the event loop, and once a connection is established its two sockets are
/// taken over by threads of their own (`EstablishedConnection`), which only a descriptor allows.
enum ReplicationSockets {
    struct Options: Sendable {
        var noDelay: Bool
        var keepalive: Bool
        var sendBufferBytes: Int
        var receiveBufferBytes: Int
    }

    /// A socket bound to `address` and listening (backlog 16), close-on-exec and non-blocking (accepts are polled).
    static func listen(
        on address: SocketAddress, endpoint: ReplicationEndpoint, receiveBufferBytes: Int
    ) throws(TransportError) -> CInt {
        let descriptor = socket(CInt(address.protocol.rawValue), CInt(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else {
            throw TransportError(.bindFailed, "could not make a socket for \(endpoint)", cause: SystemCallError("socket"))
        }
        var failure: TransportError?
        markCloseOnExec(descriptor)
        setFlag(descriptor, SOL_SOCKET, SO_REUSEADDR, true)
        // On the listener: the window scale is fixed in the SYN exchange, before the accepted socket exists.
        if receiveBufferBytes > 0 { setValue(descriptor, SOL_SOCKET, SO_RCVBUF, CInt(receiveBufferBytes)) }
        let bound = address.withSockAddr { pointer, size in bind(descriptor, pointer, socklen_t(size)) }
        if bound != 0 {
            failure = bindError(errno, endpoint)
        } else if Glibc.listen(descriptor, 16) != 0 {
            failure = TransportError(.bindFailed, "could not listen on \(endpoint)", cause: SystemCallError("listen"))
        } else if fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK) != 0 {
            failure = TransportError(.bindFailed, "could not listen on \(endpoint)", cause: SystemCallError("fcntl"))
        }
        if let failure {
            close(descriptor)
            throw failure
        }
        return descriptor
    }

    /// The port the listener is bound to.
    static func boundPort(_ descriptor: CInt) -> UInt16? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        guard result == 0 else { return nil }
        let family = Int32(storage.ss_family)
        return withUnsafePointer(to: &storage) { pointer in
            switch family {
            case AF_INET:
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
            case AF_INET6:
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            default:
                nil
            }
        }
    }

    /// Waits up to `timeout` for a connection on the listener; nil when none came (or the accept failed, which the
    /// next call retries). The socket returned is blocking, close-on-exec, with `options` applied.
    static func accept(_ listener: CInt, timeout: Duration, options: Options) -> CInt? {
        var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, CInt(clamping: timeout.wholeNanoseconds / 1_000_000)) == 1 else { return nil }
        let descriptor = Glibc.accept(listener, nil, nil)
        guard descriptor >= 0 else { return nil }
        markCloseOnExec(descriptor)
        apply(options, to: descriptor)
        return descriptor
    }

    /// Connects to `address` within `timeout`, checking `cancelled` every 50 ms. Returns a connected, blocking
    /// socket with `options` applied, or why it failed.
    static func connect(
        to address: SocketAddress, timeout: Duration, options: Options, cancelled: @Sendable () -> Bool
    ) -> Result<CInt, SystemCallError> {
        let descriptor = socket(CInt(address.protocol.rawValue), CInt(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return .failure(SystemCallError("socket")) }
        markCloseOnExec(descriptor)
        apply(options, to: descriptor)
        let flags = fcntl(descriptor, F_GETFL)
        _ = fcntl(descriptor, F_SETFL, flags | O_NONBLOCK)
        let started = address.withSockAddr { pointer, size in Glibc.connect(descriptor, pointer, socklen_t(size)) }
        var failure: SystemCallError?
        if started != 0 && errno != EINPROGRESS {
            failure = SystemCallError("connect")
        } else if started != 0 {
            let deadline = DaemonClock.now + timeout
            while true {
                if cancelled() {
                    failure = SystemCallError("connect", code: ECANCELED)
                    break
                }
                let left = deadline - DaemonClock.now
                if left <= .zero {
                    failure = SystemCallError("connect", code: ETIMEDOUT)
                    break
                }
                var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                let ready = poll(&poller, 1, CInt(clamping: min(left, .milliseconds(50)).wholeNanoseconds / 1_000_000 + 1))
                if ready < 0 && errno != EINTR {
                    failure = SystemCallError("poll")
                    break
                }
                guard ready == 1 else { continue }
                var code: CInt = 0
                var length = socklen_t(MemoryLayout<CInt>.size)
                getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &code, &length)
                if code != 0 { failure = SystemCallError("connect", code: code) }
                break
            }
        }
        if let failure {
            close(descriptor)
            return .failure(failure)
        }
        _ = fcntl(descriptor, F_SETFL, flags & ~O_NONBLOCK)
        return .success(descriptor)
    }

    static func apply(_ options: Options, to descriptor: CInt) {
        setFlag(descriptor, CInt(IPPROTO_TCP), TCP_NODELAY, options.noDelay)
        setFlag(descriptor, SOL_SOCKET, SO_KEEPALIVE, options.keepalive)
        if options.sendBufferBytes > 0 { setValue(descriptor, SOL_SOCKET, SO_SNDBUF, CInt(options.sendBufferBytes)) }
        if options.receiveBufferBytes > 0 {
            setValue(descriptor, SOL_SOCKET, SO_RCVBUF, CInt(options.receiveBufferBytes))
        }
    }

    /// Makes a descriptor blocking (a duplicate shares the flags of the descriptor SwiftNIO made non-blocking).
    static func makeBlocking(_ descriptor: CInt) -> Bool {
        let flags = fcntl(descriptor, F_GETFL)
        return flags >= 0 && fcntl(descriptor, F_SETFL, flags & ~O_NONBLOCK) == 0
    }

    /// A duplicate of `descriptor`, close-on-exec; nil (with errno) if the process is out of descriptors.
    static func duplicate(_ descriptor: CInt) -> CInt? {
        let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
        return copy >= 0 ? copy : nil
    }

    private static func markCloseOnExec(_ descriptor: CInt) {
        _ = fcntl(descriptor, F_SETFD, fcntl(descriptor, F_GETFD) | FD_CLOEXEC)
    }

    private static func setFlag(_ descriptor: CInt, _ level: CInt, _ name: CInt, _ on: Bool) {
        setValue(descriptor, level, name, on ? 1 : 0)
    }

    private static func setValue(_ descriptor: CInt, _ level: CInt, _ name: CInt, _ value: CInt) {
        var value = value
        setsockopt(descriptor, level, name, &value, socklen_t(MemoryLayout<CInt>.size))
    }

    private static func bindError(_ code: CInt, _ address: ReplicationEndpoint) -> TransportError {
        let cause = SystemCallError("bind", code: code)
        switch code {
        case EADDRINUSE:
            return TransportError(
                .addressInUse,
                "\(address) is already in use (by another resource, a running DRBD, or another program)",
                cause: cause)
        case EADDRNOTAVAIL:
            return TransportError(
                .addressNotAvailable, "\(address) is not an address of this machine; check the 'address' line",
                cause: cause)
        case EACCES:
            return TransportError(
                .permissionDenied, "listening on \(address) needs privileges this process does not have", cause: cause)
        default:
            return TransportError(.bindFailed, "could not listen on \(address)", cause: cause)
        }
    }
}

/// A failed system call: its name and errno, described as the C library does.
struct SystemCallError: Error, Sendable, CustomStringConvertible {
    var call: String
    var code: CInt

    init(_ call: String, code: CInt = errno) {
        self.call = call
        self.code = code
    }

    var description: String { "\(call): \(String(cString: strerror(code))) (errno \(code))" }
}

