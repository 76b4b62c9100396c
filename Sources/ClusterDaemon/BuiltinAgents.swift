#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import DeviceFrontend
import Foundation
import ReplicationDaemon
import ResourceCore
import Synchronization
import TandemConfig

/// IPaddr and IPaddr2: the floating address, added with its label and broadcast address, then announced with
/// gratuitous ARP from the new owner (without it, clients keep the old MAC for up to a minute). Stopping deletes
/// the address. Both are idempotent.
struct IPAddressAgent {
    let address: IPAddressResource
    let log: ClusterLog
    /// Gratuitous ARP: `arping -U` (unsolicited) and `-A` (reply), this many each, in the background.
    static let announcements = 3
    /// A held address is announced again this often (one round, from its check), so that a switch or client that
    /// lost the mapping (a reboot, an ARP cache flushed, a partition healed) finds it without asking.
    static let reannounceInterval: Duration = .seconds(60)
    /// How late an announcement round may come before it is dropped as stale (see `announce`).
    static let staleRoundSlack: Duration = .milliseconds(500)
    /// When each address was last announced.
    private static let lastAnnounced = Mutex<[IPv4Address: MonotonicInstant]>([:])

    func run(_ kind: ResourceOperation.Kind, deadline: MonotonicInstant) -> OperationOutcome {
        let resolved: (interface: String, prefix: UInt8)
        switch resolve(deadline: deadline) {
        case .success(let value): resolved = value
        case .failure(let error): return .failed(error.description)
        }
        let cidr = "\(address.address)/\(resolved.prefix)"
        let present = isPresent(on: resolved.interface, deadline: deadline)
        switch kind {
        case .start:
            // Checked first, so that a missing tool changes nothing.
            guard Tool.arping.path != nil else {
                return .failed("arping is not installed (Debian: apt-get install iputils-arping): without gratuitous ARP clients keep the old owner's MAC")
            }
            if !present {
                var arguments = ["-4", "addr", "add", cidr]
                arguments += ["brd", address.broadcast.map(String.init(describing:)) ?? "+"]
                arguments += ["dev", resolved.interface]
                if let label = address.label { arguments += ["label", "\(resolved.interface):\(label)"] }
                if case .failure(let error) = Tool.ip.check(arguments, deadline: deadline) { return .failed(error.description) }
            }
            // Announced only over a link that carries traffic. A node cut off from the service network (whose
            // monitor restarts the address in place) must not announce it the moment the cable is back: the peer
            // has probably taken over meanwhile, and clients would follow the announcement to the stale node.
            if hasCarrier(resolved.interface, deadline: deadline) {
                announce(interface: resolved.interface)
            } else {
                log.warning("\(resolved.interface) has no link: \(address.address) is added but not announced")
            }
            return .succeeded
        case .stop:
            guard present else { return .succeeded }
            return Tool.ip.check(["-4", "addr", "del", cidr, "dev", resolved.interface], deadline: deadline).outcome
        case .monitor:
            guard present else { return .failed("\(cidr) is not on \(resolved.interface)") }
            // The address is only useful on a link that carries traffic.
            guard hasCarrier(resolved.interface, deadline: deadline) else {
                return .failed("\(resolved.interface), which carries \(cidr), has no link")
            }
            let now = DaemonClock.now
            let due = Self.lastAnnounced.withLock { last in
                guard last[address.address].map({ now - $0 >= Self.reannounceInterval }) ?? true else { return false }
                last[address.address] = now
                return true
            }
            if due { announce(interface: resolved.interface, rounds: 1) }
            return .succeeded
        }
    }

    /// The interface is up with a carrier (LOWER_UP).
    private func hasCarrier(_ interface: String, deadline: MonotonicInstant) -> Bool {
        guard case .success(let link) = Tool.ip.check(["-o", "link", "show", "dev", interface], deadline: deadline) else { return false }
        return link.contains("LOWER_UP")
    }

    /// Sends the gratuitous ARPs on a detached thread (they take a few seconds and must not delay the next
    /// resource): one unsolicited request and one reply a second, `announcements` times, and only while the address
    /// is still here and its link has a carrier. An address removed meanwhile (the group stopped, or moved on) is
    /// not announced again: a late announcement would draw clients to a node that no longer serves.
    ///
    /// Nor is a round that comes `staleRoundSlack` after its time (a second after the previous round ended): the
    /// process was stalled (frozen, or starved), and the world moved on without it. A node thawed after its peer
    /// took over still has the address for the moment it takes to hear the peer and release it; a round sent in
    /// that moment sent clients to it, and their commits were then discarded with its side of the split brain.
    func announce(interface: String, rounds: Int = Self.announcements) {
        let agent = self
        let started = DaemonClock.now
        Self.lastAnnounced.withLock { $0[address.address] = started }
        DaemonThread.detach(name: "garp") {
            let address = String(describing: agent.address.address)
            var sent = 0
            var due = started
            for round in 0..<rounds {
                if round > 0 { usleep(useconds_t(clamping: max(.zero, due - DaemonClock.now).wholeNanoseconds / 1000)) }
                let lateness = DaemonClock.now - due
                if lateness > Self.staleRoundSlack {
                    agent.log.warning(
                        "gratuitous ARP for \(address): round \(round + 1) came \(lateness.wholeNanoseconds / 1_000_000) ms late (was this node stalled?); not announcing")
                    break
                }
                let deadline = DaemonClock.now + .seconds(5)
                guard agent.isPresent(on: interface, deadline: deadline), agent.hasCarrier(interface, deadline: deadline) else { break }
                for mode in ["-U", "-A"] {
                    let result = Tool.arping.run([mode, "-c", "1", "-I", interface, address], deadline: DaemonClock.now + .seconds(5))
                    if case .failure(let error) = result { agent.log.error("gratuitous ARP for \(address): \(error)") }
                }
                sent += 1
                due = DaemonClock.now + .seconds(1)
            }
            agent.log.info("gratuitous ARP for \(address) sent on \(interface) (\(sent) of \(rounds) rounds)")
        }
    }

    /// Announces the address again if this node has it on a link with a carrier: after a partition healed while
    /// this node kept the group, clients that followed the other node's announcements come back.
    func reannounce(deadline: MonotonicInstant) {
        guard case .success(let resolved) = resolve(deadline: deadline), isPresent(on: resolved.interface, deadline: deadline),
            hasCarrier(resolved.interface, deadline: deadline)
        else { return }
        announce(interface: resolved.interface)
    }

    /// The interface and prefix: as written, or those of the interface whose network holds the address.
    private func resolve(deadline: MonotonicInstant) -> Result<(interface: String, prefix: UInt8), ToolError> {
        if let interface = address.interface, let prefix = address.prefixLength { return .success((interface, prefix)) }
        let output: String
        switch Tool.ip.check(["-o", "-4", "addr", "show"], deadline: deadline) {
        case .success(let text): output = text
        case .failure(let error): return .failure(error)
        }
        // Lines such as "3: eth1    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth1".
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 4, let inet = fields.firstIndex(of: "inet"), inet + 1 < fields.count else { continue }
            let parts = fields[inet + 1].split(separator: "/")
            guard parts.count == 2, let network = IPv4Address(parts[0]), let prefix = UInt8(parts[1]), prefix <= 32 else { continue }
            let interface = String(fields[1])
            if let wanted = address.interface, wanted != interface { continue }
            let mask: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << (32 - UInt32(prefix))
            if network.rawValue & mask == address.address.rawValue & mask {
                return .success((interface, address.prefixLength ?? prefix))
            }
        }
        return .failure(ToolError(
            "no interface has a network that holds \(address.address); give it as IPaddr2::\(address.address)/PREFIX/INTERFACE"))
    }

    private func isPresent(on interface: String, deadline: MonotonicInstant) -> Bool {
        guard case .success(let output) = Tool.ip.check(["-o", "-4", "addr", "show", "dev", interface], deadline: deadline) else {
            return false
        }
        return output.contains(" \(address.address)/")
    }
}

/// drbddisk: makes a replicated resource Primary (start) or Secondary (stop) through replicad. Like Heartbeat's
/// drbddisk it keeps trying for a while (start about 6 s, stop about 3 s): the peer may still be demoting, or
/// replicad may not yet have noticed that the dead peer is gone. It asks every 200 ms rather than every second,
/// so that the promotion happens as soon as replicad allows it.
struct DrbddiskAgent {
    let resource: String?
    let runDirectory: String
    let log: ClusterLog

    static let retryInterval: Duration = .milliseconds(200)

    func run(_ kind: ResourceOperation.Kind, deadline: MonotonicInstant) -> OperationOutcome {
        guard let resource else { return .failed("drbddisk without a resource name is not supported; write drbddisk::NAME") }
        let client = ControlClient(runDirectory: runDirectory)
        if kind == .monitor { return monitor(resource, client: client, deadline: deadline) }
        let patience: Duration = kind == .start ? .seconds(6) : .seconds(3)
        let giveUpAt = min(deadline, DaemonClock.now + patience)
        var lastProblem = ""
        var attempts = 0
        while true {
            let remaining = deadline - DaemonClock.now
            guard remaining > .zero else { break }
            attempts += 1
            let request = ControlRequest(verb: kind == .start ? .primary : .secondary, resource: resource)
            var problem: String
            do {
                let response = try client.send(request, answerTimeout: min(remaining, .seconds(60)))
                if response.result == .ok {
                    if attempts > 1 { log.info("drbddisk \(resource) \(kind.rawValue) succeeded at attempt \(attempts)") }
                    return .succeeded
                }
                problem = "\(response.result.rawValue): \(response.message ?? "")"
            } catch {
                problem = error.message
            }
            // Said once per distinct answer, not at every poll.
            if problem != lastProblem { log.warning("drbddisk \(resource) \(kind.rawValue), attempt \(attempts): \(problem); retrying") }
            lastProblem = problem
            guard DaemonClock.now + Self.retryInterval < giveUpAt else { break }
            var pause = timespec(tv_sec: 0, tv_nsec: Int(Self.retryInterval.wholeNanoseconds))
            nanosleep(&pause, nil)
        }
        return .failed("drbddisk \(resource) \(kind.rawValue) (\(attempts) attempts): \(lastProblem)")
    }

    /// The resource is Primary here, with a disk.
    private func monitor(_ resource: String, client: ControlClient, deadline: MonotonicInstant) -> OperationOutcome {
        let request = ControlRequest(verb: .status, resource: resource)
        do {
            let response = try client.send(request, answerTimeout: max(.milliseconds(100), min(deadline - DaemonClock.now, .seconds(10))))
            guard let status = response.status, status.up else { return .failed("\(resource) is not up: \(response.message ?? "")") }
            guard status.role == "Primary" else { return .failed("\(resource) is \(status.role), not Primary") }
            guard status.disk != "Diskless" else { return .failed("\(resource) has lost its disk (Diskless)") }
            return .succeeded
        } catch {
            return .failed("replicad does not answer about \(resource): \(error.message)")
        }
    }
}

/// Filesystem: checks the file system when needed, mounts it, and unmounts it; an unmount that is refused because
/// the file system is busy sends SIGTERM, then SIGKILL, to the processes that use it, within the operation's time.
struct FilesystemAgent {
    let device: String
    let mountPoint: String
    let fsType: String?
    let options: String?
    let log: ClusterLog

    func run(_ kind: ResourceOperation.Kind, deadline: MonotonicInstant) -> OperationOutcome {
        switch kind {
        case .start: return start(deadline: deadline)
        case .stop: return stop(deadline: deadline)
        case .monitor: return monitor(deadline: deadline)
        }
    }

    /// Mounted here from the right device, and the device answers a direct read (a hung or failed device makes
    /// the read fail or time out, while the mount table still looks fine).
    private func monitor(deadline: MonotonicInstant) -> OperationOutcome {
        guard let mounted = MountTable.newestMount(at: mountPoint)?.source else { return .failed("\(mountPoint) is not mounted") }
        guard Self.sameDevice(mounted, device) else { return .failed("\(mountPoint) has \(mounted) mounted, not \(device)") }
        switch Tool.dd.run(["if=\(device)", "of=/dev/null", "bs=4096", "count=1", "iflag=direct", "status=none"], deadline: deadline) {
        case .failure(let error): return .failed(error.description)
        case .success(let outcome) where !outcome.succeeded: return .failed("a direct read of \(device) \(outcome): \(outcome.output)")
        case .success: return .succeeded
        }
    }

    private func start(deadline: MonotonicInstant) -> OperationOutcome {
        if let mounted = MountTable.newestMount(at: mountPoint)?.source {
            if Self.sameDevice(mounted, device) { return .succeeded }
            return .failed("\(mountPoint) already has \(mounted) mounted on it")
        }
        if let fsType, ["ext2", "ext3", "ext4"].contains(fsType) {
            // -p repairs what is safe; 0 clean, 1 repaired, 2 repaired and a reboot advised (not for a data volume).
            switch Tool.fsck.run(["-p", "-T", "-t", fsType, device], deadline: deadline) {
            case .failure(let error): return .failed(error.description)
            case .success(let outcome) where (outcome.exitStatus ?? 8) >= 4 || outcome.timedOut:
                return .failed("fsck of \(device) \(outcome): \(outcome.output)")
            case .success(let outcome):
                if outcome.exitStatus != 0 { log.warning("fsck repaired \(device): \(outcome.output)") }
            }
        }
        do {
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        } catch {
            return .failed("cannot create \(mountPoint): \(error)")
        }
        var arguments: [String] = []
        if let fsType { arguments += ["-t", fsType] }
        if let options { arguments += ["-o", options] }
        return Tool.mount.check(arguments + [device, mountPoint], deadline: deadline).outcome
    }

    private func stop(deadline: MonotonicInstant) -> OperationOutcome {
        guard MountTable.newestMount(at: mountPoint)?.source != nil else { return .succeeded }
        let started = DaemonClock.now
        // Half the time for users to leave after SIGTERM, as the Filesystem agent does; then SIGKILL.
        let killAt = started + (deadline - started) / 2
        var lastError = ""
        while DaemonClock.now < deadline {
            switch Tool.umount.run([mountPoint], deadline: deadline) {
            case .failure(let error): return .failed(error.description)
            case .success(let outcome) where outcome.succeeded: return .succeeded
            case .success(let outcome): lastError = outcome.output.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            guard MountTable.newestMount(at: mountPoint)?.source != nil else { return .succeeded }
            let users = MountUsers.find(mountPoint: mountPoint)
            let signal = DaemonClock.now >= killAt ? SIGKILL : SIGTERM
            if !users.isEmpty {
                log.warning("\(mountPoint) is busy: sending \(signal == SIGKILL ? "SIGKILL" : "SIGTERM") to \(users.map(String.init).joined(separator: ", "))")
                for pid in users { kill(pid, signal) }
            }
            usleep(200_000)
        }
        return .failed("\(mountPoint) could not be unmounted in time: \(lastError)")
    }

    /// Whether two device paths name the same node (/dev/drbd0 is a link to the loop device mount shows).
    static func sameDevice(_ left: String, _ right: String) -> Bool {
        func resolved(_ path: String) -> String {
            guard let real = realpath(path, nil) else { return path }
            defer { free(real) }
            return String(cString: real)
        }
        return resolved(left) == resolved(right)
    }
}

/// The processes that use a mounted file system: working directory, root, or an open file under the mount point.
enum MountUsers {
    static func find(mountPoint: String) -> [pid_t] {
        let root = URL(fileURLWithPath: mountPoint).standardizedFileURL.path
        func inside(_ path: String) -> Bool { path == root || path.hasPrefix(root + "/") }
        let own = getpid()
        return MountTable.processIDs().filter { pid in
            guard pid != own else { return false }
            let places = ["cwd", "root"].compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/\($0)") }
            return places.contains(where: inside) || MountTable.openFiles(of: pid).contains(where: inside)
        }
    }
}

/// mysqld: MariaDB (or MySQL) with its datadir and my.cnf on the replicated file system, as the seeds run it:
/// `mysqld[::DEFAULTS_FILE]` (default /etc/mysql/my.cnf).
///
/// Start reads the server's options from the defaults file (`my_print_defaults`), starts `mariadbd
/// --defaults-file=...` in a session of its own (it outlives the agent; the pid file says where it is), and waits
/// until the server answers `mariadb-admin ping` on its socket, or fails at once, with the error log's tail, when
/// the server exits during startup (crash recovery that cannot finish, a datadir that is not there). Stop sends
/// SIGTERM (MariaDB's clean shutdown: InnoDB flushes and closes), waits for the process to end for half the stop
/// time, then sends SIGKILL. Both are idempotent.
struct MysqldAgent {
    let defaultsFile: String
    let log: ClusterLog

    static let defaultDefaultsFile = "/etc/mysql/my.cnf"
    static let server = Tool(name: "mariadbd", debianPackage: "mariadb-server")
    static let admin = Tool(name: "mariadb-admin", debianPackage: "mariadb-client")
    static let client = Tool(name: "mariadb", debianPackage: "mariadb-client")
    static let printDefaults = Tool(name: "my_print_defaults", debianPackage: "mariadb-server")

    struct Options {
        var datadir: String
        var pidFile: String
        var socket: String?
        var errorLog: String?
        var user: String?
    }

    func run(_ kind: ResourceOperation.Kind, deadline: MonotonicInstant) -> OperationOutcome {
        guard FileManager.default.fileExists(atPath: defaultsFile) else {
            return .failed("\(defaultsFile) does not exist (is the replicated file system mounted before mysqld?)")
        }
        let options: Options
        switch readOptions(deadline: deadline) {
        case .success(let value): options = value
        case .failure(let error): return .failed(error.description)
        }
        switch kind {
        case .start: return start(options, deadline: deadline)
        case .stop: return stop(options, deadline: deadline)
        case .monitor: return monitor(options, deadline: deadline)
        }
    }

    private func readOptions(deadline: MonotonicInstant) -> Result<Options, ToolError> {
        let output: String
        switch Self.printDefaults.check(["--defaults-file=\(defaultsFile)", "mysqld", "server", "mariadb", "mariadbd"], deadline: deadline) {
        case .success(let text): output = text
        case .failure(let error): return .failure(error)
        }
        var values: [String: String] = [:]
        for line in output.split(separator: "\n") where line.hasPrefix("--") {
            let option = line.dropFirst(2)
            let parts = option.split(separator: "=", maxSplits: 1)
            values[parts[0].replacingOccurrences(of: "_", with: "-")] = parts.count == 2 ? String(parts[1]) : ""
        }
        guard let datadir = values["datadir"] else {
            return .failure(ToolError("\(defaultsFile) sets no datadir for [mysqld]"))
        }
        var hostName = utsname()
        uname(&hostName)
        let host = withUnsafeBytes(of: &hostName.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let pidFile = values["pid-file"].map { $0.hasPrefix("/") ? $0 : "\(datadir)/\($0)" } ?? "\(datadir)/\(host).pid"
        let errorLog = values["log-error"].map { $0.hasPrefix("/") ? $0 : "\(datadir)/\($0)" }
        return .success(Options(datadir: datadir, pidFile: pidFile, socket: values["socket"], errorLog: errorLog, user: values["user"]))
    }

    private func runningPID(_ options: Options) -> pid_t? {
        guard let text = try? String(contentsOfFile: options.pidFile, encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, kill(pid, 0) == 0
        else { return nil }
        return pid
    }

    private func answers(deadline: MonotonicInstant) -> Bool {
        let result = Self.admin.run(
            ["--defaults-file=\(defaultsFile)", "--connect-timeout=2", "ping"], deadline: min(deadline, DaemonClock.now + .seconds(5)))
        if case .success(let outcome) = result { return outcome.succeeded }
        return false
    }

    private func start(_ options: Options, deadline: MonotonicInstant) -> OperationOutcome {
        if runningPID(options) != nil, answers(deadline: deadline) { return .succeeded }
        guard let server = Self.server.path else {
            return .failed("mariadbd is not installed (Debian: apt-get install mariadb-server)")
        }
        guard Self.admin.path != nil else { return .failed("mariadb-admin is not installed (Debian: apt-get install mariadb-client)") }
        var arguments = ["--defaults-file=\(defaultsFile)"]
        if options.user == nil && getuid() == 0 { arguments.append("--user=mysql") }
        // Through `sh -c '... &'` so that the server is not heartbeatd's child: it must survive the agent, and
        // nobody here would reap it.
        let quoted = ([server] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        switch ChildProcess.run(
            ["/bin/sh", "-c", "setsid \(quoted) </dev/null >/dev/null 2>&1 &"], environment: ["PATH": ChildProcess.searchPath],
            timeout: .seconds(10))
        {
        case .failure(let error): return .failed("cannot start mariadbd: \(error)")
        case .success(let outcome) where !outcome.succeeded: return .failed("cannot start mariadbd: \(outcome)")
        case .success: break
        }
        var sawPID = false
        while DaemonClock.now < deadline {
            if runningPID(options) != nil {
                sawPID = true
                if answers(deadline: deadline) { return .succeeded }
            } else if sawPID {
                return .failed("mariadbd exited during startup: \(errorLogTail(options))")
            }
            usleep(200_000)
        }
        return .failed("mariadbd did not answer before the start timeout: \(errorLogTail(options))")
    }

    private func stop(_ options: Options, deadline: MonotonicInstant) -> OperationOutcome {
        guard let pid = runningPID(options) else { return .succeeded }
        kill(pid, SIGTERM)
        let killAt = DaemonClock.now + (deadline - DaemonClock.now) / 2
        while DaemonClock.now < deadline {
            if kill(pid, 0) != 0 { return .succeeded }
            if DaemonClock.now >= killAt {
                log.warning("mariadbd (pid \(pid)) did not shut down in time: sending SIGKILL (InnoDB recovers at the next start)")
                kill(pid, SIGKILL)
            }
            usleep(100_000)
        }
        return .failed("mariadbd (pid \(pid)) is still running after SIGKILL")
    }

    /// A query through the server's socket (`SELECT 1`), not a pid: a server that is up but does not answer
    /// (hung, out of connections, crash recovery stuck) fails the check too.
    private func monitor(_ options: Options, deadline: MonotonicInstant) -> OperationOutcome {
        let seconds = max(1, min(30, (deadline - DaemonClock.now).wholeMilliseconds / 1000))
        let arguments = ["--defaults-file=\(defaultsFile)", "--connect-timeout=\(seconds)", "--batch", "--skip-column-names", "-e", "SELECT 1"]
        switch Self.client.run(arguments, deadline: deadline) {
        case .failure(let error): return .failed(error.description)
        case .success(let outcome) where outcome.succeeded && outcome.output.trimmingCharacters(in: .whitespacesAndNewlines) == "1":
            return .succeeded
        case .success(let outcome):
            let running = runningPID(options).map { "mariadbd (pid \($0)) runs but" } ?? "mariadbd is not running;"
            return .failed("\(running) SELECT 1 through its socket \(outcome): \(outcome.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    private func errorLogTail(_ options: Options) -> String {
        guard let path = options.errorLog, let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            return "(no log-error file in \(defaultsFile))"
        }
        return text.split(separator: "\n").suffix(5).joined(separator: " | ")
    }
}
