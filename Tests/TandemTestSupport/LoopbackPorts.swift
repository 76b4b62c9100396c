import Foundation

#if canImport(Glibc)
import Glibc
#endif

public struct LoopbackPortsError: Error, CustomStringConvertible {
    public let description: String
}

/// Free TCP ports on 127.0.0.1, chosen by the kernel: each is bound to port 0, read back and closed again once all
/// are chosen (so the ports differ). Tests only ever use loopback.
public func freeLoopbackPorts(_ count: Int) throws -> [UInt16] {
    var descriptors: [Int32] = []
    defer { for descriptor in descriptors { close(descriptor) } }
    var ports: [UInt16] = []
    for _ in 0..<count {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw LoopbackPortsError(description: "socket() failed: errno \(errno)") }
        descriptors.append(descriptor)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw LoopbackPortsError(description: "bind(127.0.0.1:0) failed: errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        ports.append(UInt16(bigEndian: address.sin_port))
    }
    return ports
}
