#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the metadata store takes from the outside world, injected so that tests can replace the parts they cannot
/// control otherwise (a full file system, the time in a file name, the device UUID).
public struct StorageEnvironment: Sendable {
    /// One line per notable event (metadata created, blocks preserved, a write that failed), from the calling thread.
    public var log: @Sendable (String) -> Void
    /// Free bytes in the file system holding a directory; by default statvfs(3)'s f_bavail * f_frsize.
    public var freeBytes: @Sendable (String) throws(StorageError) -> UInt64
    /// Wall-clock time in nanoseconds since the Unix epoch, UTC: names and stamps preserved-blocks files.
    public var wallClockNanoseconds: @Sendable () -> Int64
    /// A fresh device UUID for create-md; must not be 0.
    public var randomUInt64: @Sendable () -> UInt64

    /// The production environment, logging through `log`.
    public init(log: @escaping @Sendable (String) -> Void) {
        self.log = log
        self.freeBytes = { path throws(StorageError) in try Posix.freeBytes(path) }
        self.wallClockNanoseconds = {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
        }
        self.randomUInt64 = {
            var generator = SystemRandomNumberGenerator()
            return UInt64.random(in: 1...UInt64.max, using: &generator)
        }
    }
}
