#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Logging
import ReplicationCore
import TandemConfig

/// Runs a resource's drbd.conf handlers (`handlers { split-brain "..."; ... }`) as `/bin/sh -c COMMAND`, one at a
/// time, on a thread of its own: the resource's thread only queues them and never waits for a script.
///
/// As DRBD does, the script gets the resource's details in its environment (DRBD_RESOURCE, DRBD_PEER, ...; see
/// `environment(for:)`). Unlike DRBD, a script has a time limit: after `timeout` it is sent SIGTERM (its whole
/// process group), and SIGKILL 5 seconds later. The exit status is logged; the replication machine does not wait
/// for it (fence-peer's exit codes are not interpreted yet).
///
/// Limits: at most `queueMaximum` runs wait; more are dropped with a log line.
final class HandlerRunner: @unchecked Sendable {
    // @unchecked: `queue`, `isStopped` and `thread` are only touched with `lock` held.
    struct Job: Sendable {
        var handler: DrbdHandler
        var command: String
        var environment: [String: String]
    }

    static let queueMaximum = 16
    static let killGrace: Duration = .seconds(5)
    static let pollInterval: Duration = .milliseconds(20)

    let timeout: Duration
    private let logger: Logger
    private let lock = PthreadLock()
    private var queue: [Job] = []
    private var isStopped = false
    private var thread: DaemonThread?

    init(name: String, timeout: Duration, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
        let thread = DaemonThread.start(name: "tandem-h-\(name)") { [self] in self.run() }
        lock.withLock { self.thread = thread }
    }

    /// Queues a run; never blocks.
    func submit(_ job: Job) {
        let accepted = lock.withLock { () -> Bool in
            guard !isStopped, queue.count < Self.queueMaximum else { return false }
            queue.append(job)
            lock.broadcast()
            return true
        }
        if !accepted {
            logger.error("handler \(job.handler.rawValue) not run: \(Self.queueMaximum) handler runs already wait")
        }
    }

    /// Lets the queued runs finish (each within its time limit) and joins the thread.
    func stop() {
        let thread = lock.withLock { () -> DaemonThread? in
            isStopped = true
            lock.broadcast()
            return self.thread
        }
        thread?.join()
    }

    private func run() {
        while let job = next() { execute(job) }
    }

    private func next() -> Job? {
        lock.withLock {
            while queue.isEmpty && !isStopped { lock.wait(until: DaemonClock.now + .seconds(60)) }
            return queue.isEmpty ? nil : queue.removeFirst()
        }
    }

    private func execute(_ job: Job) {
        logger.notice("running handler \(job.handler.rawValue): \(job.command)")
        let pid: pid_t
        switch Self.spawn(command: job.command, environment: job.environment) {
        case .success(let spawned): pid = spawned
        case .failure(let error):
            logger.error("handler \(job.handler.rawValue) could not be started: \(error)")
            return
        }
        let deadline = DaemonClock.now + timeout
        var signalled: (signal: Int32, at: MonotonicInstant)?
        while true {
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid {
                logger.notice("handler \(job.handler.rawValue) \(Self.describe(status: status))")
                return
            }
            if result < 0 && errno != EINTR {
                logger.error("handler \(job.handler.rawValue): waitpid failed (errno \(errno)); not waiting for it")
                return
            }
            let now = DaemonClock.now
            if signalled == nil && now >= deadline {
                logger.error("handler \(job.handler.rawValue) exceeded its \(timeout) limit; sending SIGTERM")
                kill(-pid, SIGTERM)
                signalled = (SIGTERM, now)
            } else if let sent = signalled, sent.signal == SIGTERM, now >= sent.at + Self.killGrace {
                logger.error("handler \(job.handler.rawValue) ignored SIGTERM; sending SIGKILL")
                kill(-pid, SIGKILL)
                signalled = (SIGKILL, now)
            }
            var pause = timespec(tv_sec: 0, tv_nsec: Int(Self.pollInterval.wholeNanoseconds))
            nanosleep(&pause, nil)
        }
    }

    static func describe(status: Int32) -> String {
        let signal = status & 0x7F
        if signal == 0 { return "exited with status \((status >> 8) & 0xFF)" }
        return "was killed by signal \(signal)"
    }

    /// posix_spawn of `/bin/sh -c command` in a process group of its own (so a time-out reaches the script's
    /// children too), with default signal handling and mask, standard input from /dev/null, and output inherited
    /// (the daemon's log).
    static func spawn(command: String, environment: [String: String]) -> Result<pid_t, SpawnError> {
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
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let arguments = ["/bin/sh", "-c", command]
        let variables = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = variables.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/bin/sh", &actions, &attributes, argv, envp)
        guard result == 0 else { return .failure(SpawnError(errnoValue: result)) }
        return .success(pid)
    }

    struct SpawnError: Error, CustomStringConvertible {
        var errnoValue: Int32
        var description: String { "posix_spawn failed: \(String(cString: strerror(errnoValue)))" }
    }
}

extension ResourcePlan {
    /// The environment DRBD gives its handlers (drbd-utils: DRBD_RESOURCE, DRBD_MINOR, DRBD_VOLUME,
    /// DRBD_BACKING_DEV, DRBD_CONF, DRBD_PEER_ADDRESS, DRBD_PEER_AF, DRBD_MY_ADDRESS, DRBD_MY_AF, DRBD_PEERS; DRBD 8.3's
    /// DRBD_PEER), plus PATH so that scripts find the usual tools.
    func handlerEnvironment() -> [String: String] {
        [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "DRBD_RESOURCE": resourceName,
            "DRBD_MINOR": String(device.minor),
            "DRBD_VOLUME": String(volumeNumber),
            "DRBD_BACKING_DEV": backingDisk,
            "DRBD_CONF": configPath,
            "DRBD_PEER_ADDRESS": peerAddress.host,
            "DRBD_PEER_AF": peerAddress.family.rawValue,
            "DRBD_MY_ADDRESS": localAddress.host,
            "DRBD_MY_AF": localAddress.family.rawValue,
            "DRBD_PEERS": peerName,
            "DRBD_PEER": peerName,
        ]
    }
}
