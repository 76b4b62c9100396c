#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage
import CoreSupport

/// Runs external programs for the daemons (DRBD handlers, resource agents, `ip`, `mount`), bounded in time.
///
/// Each child gets a process group of its own, so that a time-out reaches everything it started: SIGTERM to the
/// group at the deadline, SIGKILL `killGrace` later. Standard input is /dev/null or a small input; signal mask and dispositions are
/// reset. `run` blocks its caller: call it only from a dedicated thread.
public enum ChildProcess {
    /// How often a waiting caller checks on the child.
    static let pollInterval: Duration = .milliseconds(10)
    /// Captured output kept per run; the rest is dropped (and the drop is noted).
    public static let capturedBytesMaximum = 64 * 1024

    public struct Outcome: Sendable, CustomStringConvertible {
        /// The exit status, when the child exited.
        public var exitStatus: Int32?
        /// The signal that ended the child, when one did.
        public var signal: Int32?
        /// The deadline passed and the group was signalled.
        public var timedOut: Bool
        /// Standard output and standard error, interleaved, when captured.
        public var output: String

        public var succeeded: Bool { exitStatus == 0 && !timedOut }

        public var description: String {
            let ending = exitStatus.map { "exited with status \($0)" } ?? "was killed by signal \(signal ?? 0)"
            return timedOut ? "timed out and \(ending)" : ending
        }
    }

    public enum Output: Sendable {
        /// The child writes to the daemon's own standard output and error.
        case inherit
        /// The child's output is collected (up to `capturedBytesMaximum`) into `Outcome.output`.
        case capture
    }

    public struct SpawnError: Error, Sendable, CustomStringConvertible {
        public var errnoValue: Int32
        public var description: String { "posix_spawn failed: \(String(cString: strerror(errnoValue)))" }
    }

    /// Starts `arguments[0]` (an absolute path) and waits for it, at most `timeout` plus `killGrace`.
    /// `input`, when given, is the child's standard input (at most `inputBytesMaximum`, so that it fits the pipe
    /// and is written without blocking).
    public static func run(
        _ arguments: [String], environment: [String: String], timeout: Duration, killGrace: Duration = .seconds(5),
        output: Output = .capture, input: [UInt8]? = nil
    ) -> Result<Outcome, SpawnError> {
        var pipeEnds: [Int32] = [-1, -1]
        if output == .capture {
            // Close-on-exec from the start, so that children other threads spawn meanwhile do not keep the write end
            // open; posix_spawn's dup2 gives this child its own copy.
            guard ctandem_pipe_cloexec(&pipeEnds) == 0 else { return .failure(SpawnError(errnoValue: errno)) }
            // Read without blocking, so that the wait loop below can also watch the deadline.
            _ = fcntl(pipeEnds[0], F_SETFL, fcntl(pipeEnds[0], F_GETFL) | O_NONBLOCK)
        }
        defer { for end in pipeEnds where end >= 0 { close(end) } }
        var inputEnds: [Int32] = [-1, -1]
        if let input {
            precondition(input.count <= inputBytesMaximum, "child input of \(input.count) bytes > \(inputBytesMaximum)")
            guard ctandem_pipe_cloexec(&inputEnds) == 0 else { return .failure(SpawnError(errnoValue: errno)) }
        }
        defer { for end in inputEnds where end >= 0 { close(end) } }
        let pid: pid_t
        switch spawn(
            arguments, environment: environment, outputDescriptor: output == .capture ? pipeEnds[1] : nil,
            inputDescriptor: input == nil ? nil : inputEnds[0])
        {
        case .success(let spawned): pid = spawned
        case .failure(let error): return .failure(error)
        }
        if let input {
            close(inputEnds[0])
            inputEnds[0] = -1
            // Fits the empty pipe, so this does not block. A child that exits without reading makes the write fail
            // with EPIPE, which only means it did not want its input.
            writeWithoutSIGPIPE(inputEnds[1], input)
            close(inputEnds[1])
            inputEnds[1] = -1
        }
        if pipeEnds[1] >= 0 {
            close(pipeEnds[1])
            pipeEnds[1] = -1
        }
        var captured: [UInt8] = []
        var dropped = false
        func drain() {
            guard pipeEnds[0] >= 0 else { return }
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = chunk.withUnsafeMutableBytes { read(pipeEnds[0], $0.baseAddress!, $0.count) }
                guard count > 0 else { return }
                let room = capturedBytesMaximum - captured.count
                captured += chunk[0..<min(count, max(room, 0))]
                if count > room { dropped = true }
            }
        }
        let deadline = DaemonClock.now + timeout
        var signalled: (signal: Int32, at: MonotonicInstant)?
        while true {
            drain()
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                drain()
                let signal = status & 0x7F
                var text = String(decoding: captured, as: UTF8.self)
                if dropped { text += "\n[output beyond \(capturedBytesMaximum) bytes dropped]" }
                return .success(Outcome(
                    exitStatus: signal == 0 ? (status >> 8) & 0xFF : nil, signal: signal == 0 ? nil : signal,
                    timedOut: signalled != nil, output: text))
            }
            if result < 0 && errno != EINTR {
                return .success(Outcome(exitStatus: nil, signal: nil, timedOut: signalled != nil, output: "waitpid failed: errno \(errno)"))
            }
            let now = DaemonClock.now
            if signalled == nil && now >= deadline {
                kill(-pid, SIGTERM)
                signalled = (SIGTERM, now)
            } else if let sent = signalled, sent.signal == SIGTERM, now >= sent.at + killGrace {
                kill(-pid, SIGKILL)
                signalled = (SIGKILL, now)
            }
            var pause = timespec(tv_sec: 0, tv_nsec: Int(pollInterval.wholeNanoseconds))
            nanosleep(&pause, nil)
        }
    }

    /// Writes to a pipe with SIGPIPE blocked on this thread, and takes back the SIGPIPE a closed reader raises, so
    /// that it cannot end the daemon (whose other threads may not ignore it).
    private static func writeWithoutSIGPIPE(_ fd: Int32, _ bytes: [UInt8]) {
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &pipeSignal, &previous)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written < 0 && errno == EPIPE {
            var noWait = timespec(tv_sec: 0, tv_nsec: 0)
            _ = sigtimedwait(&pipeSignal, nil, &noWait)
        }
        pthread_sigmask(SIG_SETMASK, &previous, nil)
    }

    /// The most a child may be given on its standard input by `run`: the smallest pipe capacity.
    public static let inputBytesMaximum = 4096

    /// posix_spawn in a process group of its own, with default signal handling and mask and standard input from
    /// `inputDescriptor` (else /dev/null); output to `outputDescriptor` when given, else inherited.
    public static func spawn(
        _ arguments: [String], environment: [String: String], outputDescriptor: Int32? = nil,
        inputDescriptor: Int32? = nil
    ) -> Result<pid_t, SpawnError> {
        precondition(arguments.first?.hasPrefix("/") == true, "spawn needs an absolute path, not \(arguments)")
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD, SIGQUIT, SIGUSR1, SIGUSR2] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let inputDescriptor {
            posix_spawn_file_actions_adddup2(&actions, inputDescriptor, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        if let outputDescriptor {
            posix_spawn_file_actions_adddup2(&actions, outputDescriptor, 1)
            posix_spawn_file_actions_adddup2(&actions, outputDescriptor, 2)
        }
        let variables = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = variables.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
        guard result == 0 else { return .failure(SpawnError(errnoValue: result)) }
        return .success(pid)
    }

    /// The search path children get.
    public static let searchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// `program` if it is an absolute path to an executable file, else the first executable of that name on
    /// `searchPath`; nil when there is none.
    public static func executablePath(_ program: String) -> String? {
        if program.hasPrefix("/") { return access(program, X_OK) == 0 ? program : nil }
        return searchPath.split(separator: ":").map { "\($0)/\(program)" }.first { access($0, X_OK) == 0 }
    }
}
