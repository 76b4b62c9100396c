#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import NIOCore

/// Linux's `struct ucred` (pid_t pid; uid_t uid; gid_t gid), which Glibc only declares with _GNU_SOURCE and Swift
/// therefore cannot see: three 32-bit fields, the same size and layout. Read with SO_PEERCRED.
public struct UnixPeerCredentials: Sendable {
    public var pid: Int32 = 0
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public init() {}

    /// The peer's credentials, or nil when the channel is not a Unix socket that can report them.
    public static func of(_ channel: any Channel) -> EventLoopFuture<UnixPeerCredentials>? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        return provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
    }

    /// "pid 4242 (nbdcopy)": the command name from procfs, when the process is still there to ask.
    public var processDescription: String {
        let comm = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return comm.map { "pid \(pid) (\($0))" } ?? "pid \(pid)"
    }
}
