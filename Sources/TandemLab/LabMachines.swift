#if canImport(Glibc)
import CoreSupport
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import DeviceFrontend
import Foundation

/// The lab's machines as processes: booting one (its init, see `MachineInit`), running commands in it, listing,
/// freezing and killing its processes. A machine's processes are those in its PID namespace, whose init is checked
/// by its command line (this lab's folder, prefix and host) before anything is signalled. A process that exits
/// between the listing and the signal can have its PID reused by another; the window is that of one /proc scan.
struct LabMachines {
    let layout: LabLayout
    /// The `tandem` executable (this one), run inside the machines.
    let executable: String

    // MARK: Boot and power

    /// Starts the machine's init and waits until it has set the machine up. The init is started through
    /// `setsid --fork`, so it belongs to no one here and outlives this command.
    func boot(_ host: LabHost) throws(LabError) {
        if let pid = initPID(host) { throw LabError(.refused, "\(host.rawValue) is already running (init pid \(pid))") }
        let directory = layout.directory(host)
        for path in [layout.etcUpper(host), layout.etcWork(host), layout.logDirectory(host), layout.stateDirectory(host)] {
            try makeDirectory(path)
        }
        if host.isClusterNode { try makeDirectory(layout.dataDirectory(host) + "/mysql") }
        if host == .replica { try makeDirectory(directory + "/mysql") }
        unlink(layout.initPIDFile(host))
        let logPath = directory + "/init.log"
        let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw LabError(.failed, "cannot open \(logPath): \(String(cString: strerror(errno)))") }
        defer { close(log) }
        let arguments = [
            LabTool.setsid.path ?? "/usr/bin/setsid", "--fork", LabTool.ip.path ?? "/usr/sbin/ip", "netns", "exec",
            layout.namespace(host), LabTool.unshare.path ?? "/usr/bin/unshare", "--pid", "--fork", "--mount", "--uts",
            "--propagation", "private", "--kill-child", executable, "lab", "machine-init", "--host", host.rawValue,
            "--outer-mount-namespace", (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")) ?? "",
        ] + layout.commandLineOptions
        let launcher: pid_t
        switch ChildProcess.spawn(arguments, environment: ["PATH": ChildProcess.searchPath], outputDescriptor: log) {
        case .success(let pid): launcher = pid
        case .failure(let error): throw LabError(.failed, "cannot start \(host.rawValue): \(error)")
        }
        var status: Int32 = 0
        waitpid(launcher, &status, 0)  // setsid --fork returns at once; the machine runs on.
        let deadline = DaemonClock.now + .seconds(20)
        while DaemonClock.now < deadline {
            if initPID(host) != nil { return }
            usleep(20_000)
        }
        let output = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        throw LabError(.failed, "\(host.rawValue) did not come up within 20 s: \(output.trimmingCharacters(in: .whitespacesAndNewlines))")
    }

    /// The host PID of the machine's init, when it runs: the PID in init.pid, if that process is this lab's
    /// machine-init for this host.
    func initPID(_ host: LabHost) -> pid_t? {
        labProcess(pidFile: layout.initPIDFile(host), verb: "machine-init", options: ["--host": host.rawValue])
    }

    /// The PID in `pidFile`, if that process runs `tandem lab VERB` for this lab (a PID file can outlive its process,
    /// and PIDs are reused).
    func labProcess(pidFile: String, verb: String, options: [String: String] = [:]) -> pid_t? {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
            isLabProcess(pid, verb: verb, options: options)
        else { return nil }
        return pid
    }

    /// Whether `pid` runs `tandem lab VERB` for this lab (its folder and prefix) with these other option values.
    func isLabProcess(_ pid: pid_t, verb: String, options: [String: String] = [:]) -> Bool {
        let arguments = Self.commandLine(of: pid)
        guard let index = arguments.firstIndex(of: verb), index > 0, arguments[index - 1] == "lab" else { return false }
        func value(_ option: String) -> String? {
            arguments.firstIndex(of: option).flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1] : nil }
        }
        let expected = options.merging(["--lab-dir": layout.root, "--prefix": layout.prefix]) { mine, _ in mine }
        return expected.allSatisfy { value($0.key) == $0.value }
    }

    static func commandLine(of pid: pid_t) -> [String] {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return [] }
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    /// This lab's machine-inits that wrote no init.pid (a boot that never finished), by their command lines.
    func unreadyInits() -> [pid_t] {
        let ready = Set(LabHost.allCases.compactMap(initPID))
        return MountTable.processIDs().filter { !ready.contains($0) && isLabProcess($0, verb: "machine-init") }
    }

    func isRunning(_ host: LabHost) -> Bool { initPID(host) != nil }

    /// Every process of the machine (its PID namespace), init included.
    func processes(_ host: LabHost) -> [pid_t] {
        guard let initPID = initPID(host), let namespace = Self.pidNamespace(of: initPID) else { return [] }
        return MountTable.processIDs().filter { Self.pidNamespace(of: $0) == namespace }
    }

    static func pidNamespace(of pid: pid_t) -> String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/pid")
    }

    /// Power loss: SIGKILL to the machine's init makes the kernel kill every process in it, at once. Returns how
    /// many processes there were. Waits until they are gone (processes in uninterruptible sleep take a moment).
    @discardableResult
    func powerOff(_ host: LabHost) throws(LabError) -> Int {
        guard let initPID = initPID(host) else { return 0 }
        let victims = processes(host)
        kill(initPID, SIGKILL)  // Stopped (frozen) processes die too: SIGKILL needs no SIGCONT.
        let deadline = DaemonClock.now + .seconds(30)
        while DaemonClock.now < deadline {
            if victims.allSatisfy({ kill($0, 0) != 0 || Self.isZombie($0) }) {
                unlink(layout.initPIDFile(host))
                return victims.count
            }
            usleep(10_000)
        }
        throw LabError(.failed, "\(host.rawValue): processes still alive 30 s after its init was killed: \(processes(host))")
    }

    static func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        return stat[stat.index(after: close)...].dropFirst().first == "Z"
    }

    /// A hung server: SIGSTOP to every process of the machine, repeated until none is left running (a process
    /// may fork while the others stop). Returns how many were stopped.
    @discardableResult
    func freeze(_ host: LabHost) -> Int {
        var stopped = Set<pid_t>()
        for _ in 0..<20 {
            let current = processes(host)
            let fresh = current.filter { !stopped.contains($0) }
            if fresh.isEmpty { break }
            for pid in fresh {
                kill(pid, SIGSTOP)
                stopped.insert(pid)
            }
        }
        return stopped.count
    }

    /// Whether any of the machine's processes is stopped (frozen).
    func isFrozen(_ host: LabHost) -> Bool {
        processes(host).contains { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let end = stat.lastIndex(of: ")")
            else { return false }
            return stat[stat.index(after: end)...].trimmingCharacters(in: .whitespaces).hasPrefix("T")
        }
    }

    /// The loop devices the machine has mounted, by the device numbers in its mountinfo: read without touching the
    /// devices, so it works while the machine's FUSE server is frozen (reading a loop device's status asks the
    /// backing file's server for its attributes, and waits for it).
    func mountedLoopDevices(_ host: LabHost) -> [LoopDevice] {
        guard let pid = initPID(host), let text = try? String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8) else { return [] }
        let loopMajor = "7"
        return text.split(separator: "\n").compactMap { line -> LoopDevice? in
            let fields = line.split(separator: " ")
            guard fields.count > 2 else { return nil }
            let numbers = fields[2].split(separator: ":")
            guard numbers.count == 2, numbers[0] == loopMajor, let minor = Int32(numbers[1]) else { return nil }
            return LoopDevice(number: minor)
        }
    }

    func thaw(_ host: LabHost) {
        for pid in processes(host) { kill(pid, SIGCONT) }
    }

    /// The machine's `tandem NAME --foreground` daemons (replicad, heartbeatd). Only the lab starts processes in a
    /// machine, so the command line is enough to tell them (argv[0] is /proc/self/exe, as BackgroundDaemon starts them).
    func daemonPIDs(_ host: LabHost, _ name: String) -> [pid_t] {
        processes(host).filter { pid in
            let arguments = Self.commandLine(of: pid)
            return arguments.count >= 3 && arguments[1] == name && arguments.contains("--foreground")
        }
    }

    /// The machine's processes whose command name (comm) starts with `name`.
    func processes(_ host: LabHost, named name: String) -> [pid_t] {
        processes(host).filter { (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8))?.hasPrefix(name) == true }
    }

    /// SIGTERM to a daemon on each of `hosts` at once (its clean stop: heartbeatd releases its groups, replicad
    /// detaches and closes its disks), then a bounded wait for them to end. At once, so that two heartbeatds
    /// stopping do not first hand the group to each other.
    func stopDaemons(_ name: String, on hosts: [LabHost], within timeout: Duration) {
        let pids = hosts.flatMap { daemonPIDs($0, name) }
        for pid in pids { kill(pid, SIGTERM) }
        let deadline = DaemonClock.now + timeout
        while DaemonClock.now < deadline, pids.contains(where: { kill($0, 0) == 0 && !Self.isZombie($0) }) { usleep(50_000) }
    }

    // MARK: Commands in a machine

    /// The command line that runs `arguments` inside the machine: all its namespaces, its root and /.
    func commandLine(_ host: LabHost, _ arguments: [String]) throws(LabError) -> [String] {
        guard let pid = initPID(host) else { throw LabError(.refused, "\(host.rawValue) is not running") }
        return [LabTool.nsenter.path ?? "/usr/bin/nsenter", "-t", String(pid), "-m", "-u", "-n", "-p", "-r", "-w", "--"] + arguments
    }

    /// Runs a command in the machine and returns its outcome (output captured).
    func run(_ host: LabHost, _ arguments: [String], timeout: Duration = .seconds(60)) throws(LabError) -> ChildProcess.Outcome {
        let command = try commandLine(host, arguments)
        switch ChildProcess.run(command, environment: ["PATH": ChildProcess.searchPath, "LC_ALL": "C"], timeout: timeout) {
        case .success(let outcome): return outcome
        case .failure(let error): throw LabError(.failed, "\(host.rawValue): cannot run \(arguments.joined(separator: " ")): \(error)")
        }
    }

    /// Runs a command in the machine and requires success.
    @discardableResult
    func check(_ host: LabHost, _ arguments: [String], timeout: Duration = .seconds(60)) throws(LabError) -> String {
        let outcome = try run(host, arguments, timeout: timeout)
        guard outcome.succeeded else {
            throw LabError(
                .failed,
                "\(host.rawValue): \(arguments.joined(separator: " ")) \(outcome): \(outcome.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return outcome.output
    }

    /// Runs `tandem ARGS` in the machine.
    @discardableResult
    func tandem(_ host: LabHost, _ arguments: [String], timeout: Duration = .seconds(60)) throws(LabError) -> String {
        try check(host, [executable] + arguments, timeout: timeout)
    }

    /// A path inside the machine, as the host reaches it (through its init's root).
    func path(_ host: LabHost, _ path: String) throws(LabError) -> String {
        guard let pid = initPID(host) else { throw LabError(.refused, "\(host.rawValue) is not running") }
        return "/proc/\(pid)/root" + path
    }

    /// The machine's mount table, when it runs.
    func mounts(_ host: LabHost) -> [(source: String, target: String, type: String)] {
        guard let pid = initPID(host), let text = try? String(contentsOfFile: "/proc/\(pid)/mounts", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count >= 3 else { return nil }
            return (String(fields[0]), String(fields[1]), String(fields[2]))
        }
    }

    private func makeDirectory(_ path: String) throws(LabError) {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw LabError(.failed, "cannot create \(path): \(error)")
        }
    }
}

extension LabLayout {
    /// The options that select this lab, for commands that run the lab's own verbs.
    public var commandLineOptions: [String] { ["--lab-dir", root, "--prefix", prefix, "--subnet-octet", String(subnetOctet)] }
}
