#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// `<run-dir>/NAME.lock`, held (flock) for the daemon's life, and `<run-dir>/NAME.pid`: one daemon of a kind per
/// run directory.
public struct LockFile: Sendable {
    let descriptor: Int32
    let pidPath: String

    public static func acquire(runDirectory: String, daemonName: String) throws(DaemonStartError) -> LockFile {
        do {
            try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        } catch {
            throw DaemonStartError("cannot create the run directory \(runDirectory): \(error)", exitCode: 20)
        }
        let lockPath = runDirectory + "/\(daemonName).lock"
        let pidPath = runDirectory + "/\(daemonName).pid"
        let descriptor = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw DaemonStartError(
                "cannot open \(lockPath): \(String(cString: strerror(errno)))", exitCode: 20)
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            close(descriptor)
            let holder = (try? String(contentsOfFile: pidPath, encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines)
            throw DaemonStartError(
                "another \(daemonName) (pid \(holder ?? "unknown")) already uses the run directory \(runDirectory)",
                exitCode: 10)
        }
        try? "\(getpid())\n".write(toFile: pidPath, atomically: true, encoding: .utf8)
        return LockFile(descriptor: descriptor, pidPath: pidPath)
    }

    public func release() {
        unlink(pidPath)
        close(descriptor)
    }
}
