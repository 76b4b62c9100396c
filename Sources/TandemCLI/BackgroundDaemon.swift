#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ArgumentParser
import Foundation

/// Starting a daemon without `--foreground`: `tandem NAME --foreground ...` in a new session, its output appended
/// to `<run-dir>/NAME.log`, then a wait (at most 15 s) until it answers on its control socket or exits.
enum BackgroundDaemon {
    static func start(
        name: String, arguments: [String], runDirectory: String, isAnswering: (pid_t) -> Bool
    ) throws {
        try? FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        let logPath = runDirectory + "/\(name).log"
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26): detach from the terminal's session.
        posix_spawnattr_setflags(&attributes, Int16(0x80))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = (["/proc/self/exe"] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, environ)
        guard result == 0 else {
            printToStandardError("tandem \(name): cannot start the daemon: \(String(cString: strerror(result)))")
            throw TandemExitCode.daemonUnavailable
        }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let code = (status >> 8) & 0xFF
                printToStandardError("tandem \(name): the daemon exited with status \(code); see \(logPath):")
                let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                printToStandardError(log.split(separator: "\n").suffix(10).joined(separator: "\n"))
                throw ExitCode(code == 0 ? 20 : code)
            }
            if isAnswering(pid) {
                print("\(name) started (pid \(pid)); log: \(logPath)")
                return
            }
            usleep(100_000)
        }
        printToStandardError("tandem \(name): the daemon (pid \(pid)) did not answer within 15 s; see \(logPath)")
        throw TandemExitCode.daemonUnavailable
    }
}
