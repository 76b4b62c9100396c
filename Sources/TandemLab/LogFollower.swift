#if canImport(Glibc)
import CoreSupport
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation

/// Follows the nodes' ha-logs during a scenario and stamps each new line with the time it appeared (Unix ms,
/// looked at every 10 ms). Heartbeat's log format has whole seconds; the stamps give the timeline its precision.
final class LogFollower: @unchecked Sendable {
    // @unchecked: `lines` and `running` are guarded by `lock`; `thread` is written once in start().
    struct Line: Sendable {
        var unixMilliseconds: Int64
        var host: LabHost
        var text: String
    }

    static let linesMaximum = 100_000

    private let files: [(host: LabHost, path: String)]
    private let lock = PthreadLock()
    private var lines: [Line] = []
    private var running = true
    private var thread: DaemonThread?

    init(files: [(host: LabHost, path: String)]) { self.files = files }

    func start() {
        // Only what is written from now on.
        let startingOffsets = files.map { file -> off_t in
            var info = stat()
            return stat(file.path, &info) == 0 ? info.st_size : 0
        }
        thread = DaemonThread.start(name: "log-follower") { [self] in
            var offsets = startingOffsets
            var partial = [[UInt8]](repeating: [], count: files.count)
            while lock.withLock({ running }) {
                for (index, file) in files.enumerated() {
                    let fd = open(file.path, O_RDONLY | O_CLOEXEC)
                    guard fd >= 0 else { continue }
                    var chunk = [UInt8](repeating: 0, count: 65536)
                    while true {
                        let count = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offsets[index]) }
                        guard count > 0 else { break }
                        offsets[index] += off_t(count)
                        partial[index] += chunk[0..<count]
                        // A line without an end is cut at 64 KiB rather than held forever.
                        if partial[index].count > 65536, partial[index].firstIndex(of: UInt8(ascii: "\n")) == nil {
                            partial[index].removeAll()
                        }
                    }
                    close(fd)
                    let now = Workload.unixMilliseconds()
                    while let newline = partial[index].firstIndex(of: UInt8(ascii: "\n")) {
                        let text = String(decoding: partial[index][..<newline], as: UTF8.self)
                        partial[index].removeSubrange(...newline)
                        lock.withLock {
                            if lines.count < Self.linesMaximum { lines.append(Line(unixMilliseconds: now, host: file.host, text: text)) }
                        }
                    }
                }
                usleep(10_000)
            }
        }
    }

    func stop() {
        lock.withLock { running = false }
        thread?.join()
    }

    var snapshot: [Line] { lock.withLock { lines } }

    /// The first line from `host`, at or after `after`, that contains `fragment`.
    func first(_ host: LabHost, containing fragment: String, after: Int64) -> Line? {
        snapshot.first { $0.host == host && $0.unixMilliseconds >= after && $0.text.contains(fragment) }
    }
}
