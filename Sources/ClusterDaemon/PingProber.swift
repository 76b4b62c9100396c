#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import TandemConfig

/// Sends ICMP echo requests to the ping nodes every interval and reports each echo reply: ha.cf's `ping` and
/// `ping_group`, which Heartbeat treats as pseudo-nodes. One raw socket (heartbeatd runs as root, as Heartbeat
/// does) and one thread, which waits for replies between rounds; what the replies mean is `PingNodeTracker`'s.
final class PingProber: @unchecked Sendable {
    // @unchecked: `descriptor` and `addresses` never change; `thread` is set once by `start` and read by `close`.
    private let descriptor: Int32
    private let addresses: [IPv4Address]
    private let identifier: UInt16
    private var thread: DaemonThread?
    private let closing = ClosingFlag()

    static let replyBufferBytes = 2048

    private init(descriptor: Int32, addresses: [IPv4Address]) {
        self.descriptor = descriptor
        self.addresses = addresses
        identifier = UInt16(truncatingIfNeeded: getpid())
    }

    static func open(addresses: [IPv4Address]) throws(DaemonStartError) -> PingProber {
        let descriptor = socket(AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_ICMP))
        guard descriptor >= 0 else {
            throw DaemonStartError("cannot open a raw ICMP socket for the ping nodes: \(String(cString: strerror(errno))) (heartbeatd pings as root)", exitCode: 20)
        }
        return PingProber(descriptor: descriptor, addresses: addresses)
    }

    /// Pings every address each `interval` and calls `reply` with the source of every echo reply that answers ours.
    func start(interval: Duration, reply: @escaping @Sendable (IPv4Address) -> Void) {
        precondition(thread == nil, "ping prober started twice")
        let (descriptor, addresses, identifier, closing) = (self.descriptor, self.addresses, self.identifier, self.closing)
        thread = DaemonThread.start(name: "hb-ping") {
            var sequence: UInt16 = 0
            var nextRound = DaemonClock.now
            var buffer = [UInt8](repeating: 0, count: Self.replyBufferBytes)
            while !closing.isSet {
                if DaemonClock.now >= nextRound {
                    sequence &+= 1
                    for address in addresses { Self.sendEcho(descriptor, to: address, identifier: identifier, sequence: sequence) }
                    nextRound = DaemonClock.now + interval
                }
                let wait = max((nextRound - DaemonClock.now).wholeMilliseconds, 1)
                var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                guard poll(&poller, 1, Int32(min(wait, 1000))) > 0 else { continue }
                var source = sockaddr_in()
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                let count = buffer.withUnsafeMutableBytes { bytes in
                    withUnsafeMutablePointer(to: &source) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            recvfrom(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, &length)
                        }
                    }
                }
                guard count > 0, Self.isEchoReply(buffer[0..<count], identifier: identifier) else { continue }
                reply(IPv4Address(rawValue: UInt32(bigEndian: source.sin_addr.s_addr)))
            }
        }
    }

    func close() {
        closing.set()
        thread?.join()
        Glibc.close(descriptor)
    }

    /// An ICMP echo request (type 8) with our identifier and `sequence`, and 8 bytes of payload.
    static func echoRequest(identifier: UInt16, sequence: UInt16) -> [UInt8] {
        var packet: [UInt8] = [8, 0, 0, 0, UInt8(identifier >> 8), UInt8(identifier & 0xFF), UInt8(sequence >> 8), UInt8(sequence & 0xFF)]
        packet += Array("tandemhb".utf8)
        let checksum = internetChecksum(packet)
        packet[2] = UInt8(checksum >> 8)
        packet[3] = UInt8(checksum & 0xFF)
        return packet
    }

    /// A raw ICMP socket reads the IP header too: an echo reply (type 0) is ours if it carries our identifier.
    static func isEchoReply(_ packet: ArraySlice<UInt8>, identifier: UInt16) -> Bool {
        let bytes = Array(packet)
        guard bytes.count >= 20, bytes[0] >> 4 == 4 else { return false }
        let headerLength = Int(bytes[0] & 0x0F) * 4
        guard headerLength >= 20, bytes.count >= headerLength + 8 else { return false }
        let icmp = bytes[headerLength...]
        let start = icmp.startIndex
        return icmp[start] == 0 && icmp[start + 1] == 0
            && (UInt16(icmp[start + 4]) << 8 | UInt16(icmp[start + 5])) == identifier
    }

    static func internetChecksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var index = 0
        while index + 1 < bytes.count {
            sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
            index += 2
        }
        if index < bytes.count { sum += UInt32(bytes[index]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
        return ~UInt16(sum)
    }

    private static func sendEcho(_ descriptor: Int32, to address: IPv4Address, identifier: UInt16, sequence: UInt16) {
        let packet = echoRequest(identifier: identifier, sequence: sequence)
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_addr.s_addr = address.rawValue.bigEndian
        _ = packet.withUnsafeBytes { bytes in
            withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }
}
