#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Synchronization
import TandemConfig

/// One heartbeat medium: a UDP socket bound to its interface (SO_BINDTODEVICE), sending to the broadcast address,
/// the multicast group or the peer, and a thread that receives.
///
/// Plain blocking sockets on a dedicated thread rather than an event loop: a link carries a few datagrams per
/// second, and binding to a device, joining a group and waking a blocked receive (`shutdown`) are one system call
/// each this way.
final class HeartbeatLink: @unchecked Sendable {
    // @unchecked: `descriptor` and `destination` are set in `open` before the link is shared and never change;
    // `receiver` is set once by `startReceiving` and read by `close`, both called by the daemon's start and stop.
    let name: String
    private let descriptor: Int32
    private let destination: sockaddr_in
    private var receiver: DaemonThread?
    private let closing = ClosingFlag()

    /// Largest datagram read; anything longer is truncated and then refused by the decoder as malformed.
    static let receiveBufferBytes = 65_536

    private init(name: String, descriptor: Int32, destination: sockaddr_in) {
        self.name = name
        self.descriptor = descriptor
        self.destination = destination
    }

    /// Opens the socket for `medium`. Errors name the medium and the system call.
    static func open(name: String, medium: HeartbeatMedium) throws(DaemonStartError) -> HeartbeatLink {
        let interface: String
        let port: UInt16
        let target: IPv4Address
        switch medium {
        case .bcast(let device, let udpPort):
            (interface, port, target) = (device, udpPort, IPv4Address(rawValue: 0xFFFF_FFFF))
        case .ucast(let device, let peer, let udpPort):
            (interface, port, target) = (device, udpPort, peer)
        case .mcast(let device, let group, let udpPort, _, _):
            (interface, port, target) = (device, udpPort, group)
        case .mcast6, .ucast6, .serial:
            throw DaemonStartError(
                "heartbeat medium \(medium) is not supported by this build of heartbeatd (use bcast, mcast or ucast over IPv4)",
                exitCode: 1)
        }
        let descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw failure("socket", medium) }
        func check(_ result: Int32, _ call: String) throws(DaemonStartError) {
            guard result == 0 else {
                let error = failure(call, medium)
                Glibc.close(descriptor)
                throw error
            }
        }
        var on: Int32 = 1
        try check(setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size)), "SO_REUSEADDR")
        try check(setsockopt(descriptor, SOL_SOCKET, SO_BROADCAST, &on, socklen_t(MemoryLayout<Int32>.size)), "SO_BROADCAST")
        var deviceName = Array(interface.utf8CString)
        try check(
            setsockopt(descriptor, SOL_SOCKET, SO_BINDTODEVICE, &deviceName, socklen_t(deviceName.count)),
            "SO_BINDTODEVICE \(interface)")
        if case .mcast(_, let group, _, let ttl, let loop) = medium {
            var request = ip_mreqn()
            request.imr_multiaddr.s_addr = group.rawValue.bigEndian
            request.imr_ifindex = Int32(if_nametoindex(interface))
            try check(
                setsockopt(descriptor, Int32(IPPROTO_IP), IP_ADD_MEMBERSHIP, &request, socklen_t(MemoryLayout<ip_mreqn>.size)),
                "IP_ADD_MEMBERSHIP")
            try check(
                setsockopt(descriptor, Int32(IPPROTO_IP), IP_MULTICAST_IF, &request, socklen_t(MemoryLayout<ip_mreqn>.size)),
                "IP_MULTICAST_IF")
            var hops = Int32(ttl)
            try check(setsockopt(descriptor, Int32(IPPROTO_IP), IP_MULTICAST_TTL, &hops, socklen_t(MemoryLayout<Int32>.size)), "IP_MULTICAST_TTL")
            var looping = Int32(loop ? 1 : 0)
            try check(setsockopt(descriptor, Int32(IPPROTO_IP), IP_MULTICAST_LOOP, &looping, socklen_t(MemoryLayout<Int32>.size)), "IP_MULTICAST_LOOP")
        }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_port = port.bigEndian
        local.sin_addr.s_addr = INADDR_ANY
        try check(
            withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }, "bind to port \(port)")
        var destination = sockaddr_in()
        destination.sin_family = sa_family_t(AF_INET)
        destination.sin_port = port.bigEndian
        destination.sin_addr.s_addr = target.rawValue.bigEndian
        return HeartbeatLink(name: name, descriptor: descriptor, destination: destination)
    }

    /// The socket to the witness (ha.cf `witness`): any interface, an ephemeral local port, since the witness answers
    /// where each question came from.
    static func openToWitness(_ witness: WitnessEndpoint) throws(DaemonStartError) -> HeartbeatLink {
        let descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = INADDR_ANY
        let bound = descriptor >= 0 && withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
        guard bound else {
            let message = String(cString: strerror(errno))
            if descriptor >= 0 { Glibc.close(descriptor) }
            throw DaemonStartError("cannot open the socket to the witness \(witness): \(message)", exitCode: 20)
        }
        var destination = sockaddr_in()
        destination.sin_family = sa_family_t(AF_INET)
        destination.sin_port = witness.port.bigEndian
        destination.sin_addr.s_addr = witness.address.rawValue.bigEndian
        return HeartbeatLink(name: "witness", descriptor: descriptor, destination: destination)
    }

    private static func failure(_ call: String, _ medium: HeartbeatMedium) -> DaemonStartError {
        DaemonStartError("cannot open heartbeat medium \(medium): \(call): \(String(cString: strerror(errno)))", exitCode: 20)
    }

    /// Starts the receiving thread; every datagram goes to `deliver`.
    func startReceiving(_ deliver: @escaping @Sendable ([UInt8]) -> Void) {
        precondition(receiver == nil, "link \(name) receiving twice")
        let descriptor = self.descriptor
        let closing = self.closing
        receiver = DaemonThread.start(name: "hb-rx-\(name)") {
            var buffer = [UInt8](repeating: 0, count: Self.receiveBufferBytes)
            while true {
                let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
                if count < 0 && errno == EINTR { continue }
                if count < 0 { return }
                // `close` sets the flag, then shuts the socket down, which makes a blocked recv return 0. An empty
                // datagram also reads as 0 bytes; it is no message, so it is skipped.
                if closing.isSet { return }
                if count == 0 { continue }
                deliver(Array(buffer[0..<count]))
            }
        }
    }

    /// Sends one datagram. Failures (no route, interface down) are reported; the link then simply goes silent,
    /// which the peer sees as a dead link.
    @discardableResult
    func send(_ datagram: [UInt8]) -> Int32? {
        var target = destination
        let result = datagram.withUnsafeBytes { bytes in
            withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        return result < 0 ? errno : nil
    }

    /// Stops the receiving thread and closes the socket.
    func close() {
        closing.set()
        Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
        receiver?.join()
        Glibc.close(descriptor)
    }
}

/// Set when a link is closing, so that its receiving thread tells the shutdown's wake-up from an empty datagram.
final class ClosingFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}
