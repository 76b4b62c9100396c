#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation

/// Pid 1 of a lab machine: what makes a namespace look like a computer of its own.
///
/// The lab starts it as `unshare --pid --fork --mount --uts --propagation private tandem lab machine-init ...` inside
/// the machine's network namespace. It gives the machine its hostname, its own /proc, /run, /tmp and /dev, an /etc
/// that is the host's plus the machine's own files (an overlay), and its own /var/log and /data. Then it only reaps
/// orphans, as an init does, until the lab kills it: killing pid 1 of a PID namespace makes the kernel kill every
/// process in it at once, which is how the lab powers a machine off.
///
/// Everything is mounted in the machine's private mount namespace; the host's mounts never change.
public enum MachineInit {
    /// Character devices a machine's /dev gets: what MariaDB, the daemons and the tools open. Block devices (the
    /// loop devices behind /dev/drbd0) are made by replicad when it attaches them.
    static let characterDevices = ["null", "zero", "full", "random", "urandom", "tty", "fuse", "loop-control"]

    /// `outerMountNamespace` is the lab's own mount namespace ("mnt:[N]"), which this one must not be.
    public static func run(layout: LabLayout, host: LabHost, outerMountNamespace: String) -> Int32 {
        do {
            // Before /proc is replaced, /proc/self still names this process as the host sees it: that PID is how
            // the lab finds, enters and powers off the machine.
            let hostPID = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8).split(separator: " ").first.map(String.init) ?? ""
            guard Int32(hostPID) != nil else { throw MachineInitError("cannot read this process's host PID from /proc/self/stat") }
            try prepare(layout: layout, host: host, outerMountNamespace: outerMountNamespace)
            // Written last: its presence says the machine is ready.
            let pidFile = layout.initPIDFile(host)
            try (hostPID + "\n").write(toFile: pidFile + ".new", atomically: false, encoding: .utf8)
            guard rename(pidFile + ".new", pidFile) == 0 else { throw MachineInitError("cannot write \(pidFile)") }
        } catch {
            FileHandle.standardError.write(Data("tandem lab machine-init \(host.rawValue): \(error)\n".utf8))
            return 1
        }
        // Signals sent to pid 1 from inside its namespace are ignored unless handled; the lab's SIGKILL comes from
        // outside and ends everything. Until then: reap, as every init must, or orphans stay zombies.
        while true {
            var status: Int32 = 0
            if waitpid(-1, &status, 0) < 0 && errno == ECHILD { sleep(1) }
        }
    }

    private static func prepare(layout: LabLayout, host: LabHost, outerMountNamespace: String) throws {
        // Only as pid 1 of a fresh PID namespace, in a mount namespace other than the one of the lab that started
        // it: run any other way (by hand, on the host) it would mount over the host's /dev, /run, /tmp and /etc.
        guard getpid() == 1 else { throw MachineInitError("machine-init runs only as pid 1 of a new PID namespace (tandem lab up starts it)") }
        let ownMounts = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")
        guard let ownMounts, ownMounts != outerMountNamespace else {
            throw MachineInitError("machine-init must run in a mount namespace of its own (tandem lab up starts it)")
        }
        // Nothing mounted from here on may propagate anywhere.
        guard Glibc.mount("none", "/", nil, UInt(MS_REC | MS_PRIVATE), nil) == 0 else { throw MachineInitError.errno("making / private") }
        guard sethostname(host.rawValue, host.rawValue.utf8.count) == 0 else { throw MachineInitError.errno("sethostname") }
        // The host's device numbers, read before /dev is replaced.
        var devices: [(name: String, mode: mode_t, number: dev_t)] = []
        for name in characterDevices {
            var info = stat()
            guard stat("/dev/" + name, &info) == 0 else { continue }  // e.g. no FUSE: replicad reports it by name.
            devices.append((name, info.st_mode, info.st_rdev))
        }
        // The machine's own files, from the lab's folder, before anything hides that folder.
        try mount(
            "overlay", "/etc", "overlay", flags: 0,
            data: "lowerdir=/etc,upperdir=\(layout.etcUpper(host)),workdir=\(layout.etcWork(host))")
        try bind(layout.logDirectory(host), "/var/log")
        if host.isClusterNode {
            try bind(layout.dataDirectory(host), "/data")
        }
        if host == .replica {
            try bind(layout.directory(host) + "/mysql", "/var/lib/mysql")
        }
        try mount("proc", "/proc", "proc", flags: UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC))
        try mount("tmpfs", "/run", "tmpfs", flags: UInt(MS_NOSUID | MS_NODEV), data: "mode=755,size=64m")
        try mount("tmpfs", "/tmp", "tmpfs", flags: UInt(MS_NOSUID | MS_NODEV), data: "mode=1777,size=256m")
        try mount("tmpfs", "/dev", "tmpfs", flags: UInt(MS_NOSUID), data: "mode=755,size=1m")
        for device in devices {
            guard mknod("/dev/" + device.name, device.mode, device.number) == 0 else { throw MachineInitError.errno("mknod /dev/\(device.name)") }
        }
        for (link, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
            symlink(target, "/dev/" + link)
        }
        mkdir("/dev/shm", 0o1777)
        try mount("tmpfs", "/dev/shm", "tmpfs", flags: UInt(MS_NOSUID | MS_NODEV), data: "mode=1777,size=64m")
        mkdir("/dev/pts", 0o755)
        try mount("devpts", "/dev/pts", "devpts", flags: UInt(MS_NOSUID | MS_NOEXEC), data: "newinstance,ptmxmode=0666,mode=620")
        symlink("pts/ptmx", "/dev/ptmx")
        // MariaDB's socket and pid file, and replicad's and heartbeatd's run directory, on this machine's /run.
        mkdir("/run/mysqld", 0o755)
        if let mysql = getpwnam("mysql") { chown("/run/mysqld", mysql.pointee.pw_uid, mysql.pointee.pw_gid) }
        mkdir("/run/tandem", 0o755)
        chdir("/")
    }

    private static func bind(_ source: String, _ target: String) throws {
        try mount(source, target, nil, flags: UInt(MS_BIND))
    }

    private static func mount(_ source: String, _ target: String, _ type: String?, flags: UInt, data: String? = nil) throws {
        let result: Int32 =
            if let data { Glibc.mount(source, target, type, flags, data) } else { Glibc.mount(source, target, type, flags, nil) }
        guard result == 0 else { throw MachineInitError.errno("mount \(source) on \(target)") }
    }
}

struct MachineInitError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }

    static func errno(_ what: String) -> MachineInitError {
        MachineInitError("\(what): \(String(cString: strerror(Glibc.errno)))")
    }
}
