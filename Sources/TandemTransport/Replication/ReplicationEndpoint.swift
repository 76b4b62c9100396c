import NIOCore

/// An IP address and TCP port, as drbd.conf writes them (`address 10.1.1.31:7789`). The host is a numeric IPv4 or
/// IPv6 address: replication never resolves names, so a DNS failure cannot keep a node from reconnecting.
public struct ReplicationEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    func socketAddress() throws(TransportError) -> SocketAddress {
        do {
            return try SocketAddress(ipAddress: host, port: Int(port))
        } catch {
            throw TransportError(
                .invalidAddress, "\(description) is not a numeric IPv4 or IPv6 address and port", cause: error)
        }
    }

    init?(_ address: SocketAddress) {
        guard let host = address.ipAddress, let port = address.port, let port16 = UInt16(exactly: port) else {
            return nil
        }
        self.init(host: host, port: port16)
    }
}

/// Why the replication transport could not do what it was asked: shown by the daemon to the operator, so the
/// message names the address and the remedy where there is one.
public struct TransportError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// The local address is already bound, by another Tandem or DRBD resource or another program.
        case addressInUse
        /// The local address is not an address of this machine (EADDRNOTAVAIL).
        case addressNotAvailable
        /// Binding needs a privilege this process lacks (a port below 1024).
        case permissionDenied
        /// Binding failed for another reason; `cause` has the system error.
        case bindFailed
        /// An address is not a numeric IP address and port.
        case invalidAddress
        /// A configuration value is outside its limits.
        case invalidConfiguration
        /// `start` was called twice, or after `shutdown`.
        case invalidState
    }

    public var code: Code
    public var message: String
    /// The underlying error (an `IOError` from the socket call, for instance), if any.
    public var cause: (any Error)?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        cause.map { "\(message) (\($0))" } ?? message
    }
}
