#if canImport(Glibc)
import CoreSupport
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ClusterDaemon
import DaemonSupport
import DeviceFrontend
import Foundation
import ReplicationDaemon

/// What `lab up` made, kept in `<lab-dir>/lab.json` before anything is made, so that `lab down` can remove a lab
/// that was only half made.
struct LabState: Codable {
    var secret: String
    /// /data did not exist and the lab made it (the nodes mount their /data over it); `down` removes it again.
    var createdDataDirectory: Bool
    var withReplica: Bool
    /// The nodes fence each other through the lab's power switch (nil in a state file from before STONITH).
    var stonith: Bool?
    /// A witness runs on the client machine and the nodes' ha.cf names it (nil in older state files).
    var witness: Bool?
}

/// The lab: the seeds' two-node MariaDB cluster, for real, on this machine.
///
/// Each node is a machine of its own (network, mount, UTS and PID namespaces, see `MachineInit`) running the
/// production `replicad` and `heartbeatd` with the seed's configuration files. A client machine and, optionally,
/// a replica machine sit on the service network with the nodes.
public struct Lab: Sendable {
    public let layout: LabLayout
    let executable: String
    let machines: LabMachines
    let network: LabNetwork
    let say: @Sendable (String) -> Void

    public init(layout: LabLayout, executable: String, say: @escaping @Sendable (String) -> Void) {
        self.layout = layout
        self.executable = executable
        machines = LabMachines(layout: layout, executable: executable)
        network = LabNetwork(layout: layout)
        self.say = say
    }

    var isUp: Bool { FileManager.default.fileExists(atPath: layout.stateFile) }

    func loadState() throws(LabError) -> LabState {
        guard let data = FileManager.default.contents(atPath: layout.stateFile) else {
            throw LabError(.refused, "no lab is up under \(layout.root) (tandem lab up)")
        }
        do {
            return try JSONDecoder().decode(LabState.self, from: data)
        } catch {
            throw LabError(.failed, "\(layout.stateFile) cannot be read: \(error)")
        }
    }

    private func saveState(_ state: LabState) throws(LabError) {
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(state).write(to: URL(fileURLWithPath: layout.stateFile), options: .atomic)
        } catch {
            throw LabError(.failed, "cannot write \(layout.stateFile): \(error)")
        }
    }

    // MARK: up

    /// Builds the whole lab and starts the cluster; prints each step. When a step fails, everything made so far is
    /// removed again (after the logs that explain it are shown), so that a failed `up` leaves nothing behind.
    public func up(withReplica: Bool, stonith: Bool = false, witness: Bool = false) throws(LabError) {
        if let problem = layout.rootProblem { throw LabError(.refused, problem) }
        try LabTool.checkInstalled()
        for device in ["/dev/fuse", "/dev/loop-control"] where !FileManager.default.fileExists(atPath: device) {
            throw LabError(.unavailable, "\(device) is missing: the lab needs FUSE and loop devices (modprobe fuse loop)")
        }
        guard geteuid() == 0 else { throw LabError(.unavailable, "the lab makes namespaces, mounts and loop devices: run it as root") }
        guard !isUp else {
            throw LabError(.refused, "a lab is already up under \(layout.root): tandem lab status shows it, tandem lab down removes it")
        }
        // Checked before anything is made, so that a refusal removes nothing (another lab's network least of all).
        if let taken = network.allNamespaces.first(where: LabNetwork.existingNamespaces().contains) {
            throw LabError(
                .refused, "network namespace \(taken) already exists: another lab with prefix \(layout.prefix) is up (tandem lab down with its --lab-dir)")
        }
        do {
            try FileManager.default.createDirectory(atPath: layout.root, withIntermediateDirectories: true)
        } catch {
            throw LabError(.failed, "cannot create \(layout.root): \(error)")
        }
        let secretBytes = (0..<12).map { _ in UInt8.random(in: 0...255) }
        var state = LabState(
            secret: secretBytes.map { String(format: "%02x", $0) }.joined(), createdDataDirectory: false, withReplica: withReplica,
            stonith: stonith, witness: witness)
        if !FileManager.default.fileExists(atPath: "/data") {
            guard mkdir("/data", 0o755) == 0 else { throw LabError(.failed, "cannot create /data: \(String(cString: strerror(errno)))") }
            state.createdDataDirectory = true
        }
        try saveState(state)
        let started = DaemonClock.now
        do throws(LabError) {
            try build(state)
        } catch {
            say("lab up failed: \(error.message)")
            showLogs()
            say("removing what was made")
            for problem in down() { say("  \(problem)") }
            throw error
        }
        say("the lab is up (\(seconds(DaemonClock.now - started)) s)")
    }

    private func build(_ state: LabState) throws(LabError) {
        let files = LabConfigFiles(
            layout: layout, secret: state.secret, stonith: state.stonith == true, witness: state.witness == true,
            executable: executable)
        step("network: namespaces \(network.allNamespaces.joined(separator: ", "))")
        try network.create()
        say("    eth1 service \(layout.serviceAddress(.node1))/24 (node1), \(layout.serviceAddress(.node2)) (node2), "
            + "\(layout.serviceAddress(.client)) (client), \(layout.serviceAddress(.replica)) (replica), bridged; VIP \(layout.virtualAddress)")
        say("    eth2 heartbeat \(layout.heartbeatAddress(.node1)) <-> \(layout.heartbeatAddress(.node2)); "
            + "eth3 replication \(layout.replicationAddress(.node1)) <-> \(layout.replicationAddress(.node2))")

        step("configuration: /etc/tandem/{drbd.conf,ha.cf,authkeys,haresources} and /etc/my.cnf on each node")
        for node in LabHost.nodes {
            try writeFile(layout.etcUpper(node) + "/tandem/drbd.conf", files.drbdConf)
            try writeFile(layout.etcUpper(node) + "/tandem/ha.cf", files.haCf)
            try writeFile(layout.etcUpper(node) + "/tandem/authkeys", files.authkeys, mode: 0o600)
            try writeFile(layout.etcUpper(node) + "/tandem/haresources", files.haresources)
            try writeFile(layout.etcUpper(node) + "/my.cnf", files.etcMyCnf)
            try writeFile(layout.etcUpper(node) + "/mysql/my.cnf", files.etcMyCnf)
            if state.stonith == true {
                try writeFile(layout.etcUpper(node) + "/tandem/fence_tandem_lab", files.fenceAgentScript, mode: 0o755)
            }
            try makeDisk(node)
        }
        if state.stonith == true {
            step("power switch: fencing through \(layout.powerSwitchSocket) (stonith_host * \(LabConfigFiles.fenceAgentPath))")
            try startPowerSwitch()
        }
        if state.withReplica { try writeFile(layout.etcUpper(.replica) + "/mysql/my.cnf", LabConfigFiles.replicaMyCnf) }
        if state.witness == true { try writeFile(layout.etcUpper(.client) + "/tandem/authkeys", files.authkeys, mode: 0o600) }
        say("    haresources: \(files.haresources.trimmingCharacters(in: .newlines))")

        step("machines: node1, node2 and client" + (state.withReplica ? " and replica" : "") + " boot")
        for host in LabHost.allCases where host != .replica || state.withReplica { try machines.boot(host) }

        step("replication: create-md, replicad and up on both nodes")
        for node in LabHost.nodes {
            try machines.tandem(node, ["adm", "create-md", LabLayout.resourceName])
            try startReplicad(node)
            try machines.tandem(node, ["adm", "up", LabLayout.resourceName])
        }
        try waitFor("both nodes connected", timeout: .seconds(30)) { () -> Bool in
            LabHost.nodes.allSatisfy { observe($0).connection == "Connected" }
        }

        step("initial sync: primary --force on node1, \(LabLayout.diskSizeMiB) MiB to node2")
        let syncStarted = DaemonClock.now
        try machines.tandem(.node1, ["adm", "primary", "--force", LabLayout.resourceName])
        try waitFor("the initial sync", timeout: .seconds(300)) { () -> Bool in
            observe(.node2).disk == "UpToDate" && observe(.node1).disk == "UpToDate"
        }
        let syncSeconds = Double((DaemonClock.now - syncStarted).wholeMilliseconds) / 1000
        say("    synced in \(String(format: "%.1f", syncSeconds)) s (\(String(format: "%.0f", Double(LabLayout.diskSizeMiB) / max(syncSeconds, 0.001))) MiB/s)")

        step("file system and database on node1: mkfs.ext4 \(LabLayout.devicePath), mount, my.cnf, mariadb-install-db")
        try machines.check(.node1, ["mkfs.ext4", "-q", "-F", "-L", LabLayout.resourceName, LabLayout.devicePath], timeout: .seconds(120))
        try machines.check(.node1, ["mount", LabLayout.devicePath, LabLayout.mountPoint])
        try writeFile(try machines.path(.node1, LabLayout.mountPoint + "/my.cnf"), files.deviceMyCnf)
        try machines.check(.node1, ["chown", "mysql:mysql", LabLayout.mountPoint])
        try machines.check(
            .node1, ["mariadb-install-db", "--defaults-file=/etc/mysql/my.cnf", "--user=mysql", "--skip-test-db"], timeout: .seconds(180))
        try machines.check(.node1, ["umount", LabLayout.mountPoint])
        try machines.tandem(.node1, ["adm", "secondary", LabLayout.resourceName])

        if state.witness == true {
            step("witness: tandem witness on the client machine, \(layout.serviceAddress(.client)):\(LabConfigFiles.witnessPort)")
            try machines.tandem(.client, ["witness", "--listen", "\(layout.serviceAddress(.client)):\(LabConfigFiles.witnessPort)"])
        }
        step("cluster: heartbeatd on both nodes; node1 starts the group")
        for node in LabHost.nodes { try startHeartbeatd(node) }
        try waitFor("the group running on node1", timeout: .seconds(120)) { () -> Bool in
            activeNode([observe(.node1), observe(.node2)]) == .node1
        }

        step("database: the lab's database, its account (through the VIP) and the replication account")
        try machines.check(.node1, ["mariadb", "--defaults-file=/etc/mysql/my.cnf", "-e", Self.setupSQL])
        let served = try LabSQL(layout: layout).serverName()
        say("    the client reaches MariaDB on \(served) through \(layout.virtualAddress):\(LabLayout.mysqlPort)")

        if state.withReplica {
            step("replica: MariaDB on the replica machine, replicating from the VIP (GTID)")
            try LabReplica(lab: self).setUp()
        }
    }

    static let setupSQL = """
        CREATE DATABASE IF NOT EXISTS \(LabLayout.databaseName);
        CREATE USER IF NOT EXISTS '\(LabLayout.databaseUser)'@'%' IDENTIFIED BY '\(LabLayout.databasePassword)';
        GRANT ALL ON \(LabLayout.databaseName).* TO '\(LabLayout.databaseUser)'@'%';
        CREATE USER IF NOT EXISTS '\(LabLayout.replicationUser)'@'%' IDENTIFIED BY '\(LabLayout.replicationPassword)';
        GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '\(LabLayout.replicationUser)'@'%';
        CREATE TABLE IF NOT EXISTS \(LabLayout.databaseName).commits (
            pk BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            run_id INT NOT NULL,
            op_id BIGINT NOT NULL,
            client_ms BIGINT NOT NULL,
            node VARCHAR(64) NOT NULL,
            KEY run_op (run_id, op_id)
        ) ENGINE=InnoDB;
        """

    func startReplicad(_ node: LabHost) throws(LabError) {
        try machines.tandem(node, ["replicad", "--preserve-dir", layout.stateDirectory(node) + "/preserved"])
    }

    func startHeartbeatd(_ node: LabHost) throws(LabError) {
        try machines.tandem(node, ["heartbeatd", "--state-dir", layout.stateDirectory(node)])
    }

    /// A node powered on again: its addresses reset, its links up, its init, then replicad (up, as an init script
    /// would run it) and heartbeatd. It comes back as Secondary; heartbeatd decides the rest.
    func powerOn(_ node: LabHost) throws(LabError) {
        try network.configureAddresses(node)
        try network.setLinks(node, up: true)
        try machines.boot(node)
        try startReplicad(node)
        try machines.tandem(node, ["adm", "up", LabLayout.resourceName])
        try startHeartbeatd(node)
    }

    /// Starts the power switch outside the machines, detached (`setsid --fork`), and waits until it listens.
    private func startPowerSwitch() throws(LabError) {
        unlink(layout.powerSwitchPIDFile)
        let log = open(layout.powerSwitchLog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw LabError(.failed, "cannot open \(layout.powerSwitchLog): \(String(cString: strerror(errno)))") }
        defer { close(log) }
        let arguments = [LabTool.setsid.path ?? "/usr/bin/setsid", "--fork", executable, "lab", "power-switch"] + layout.commandLineOptions
        switch ChildProcess.spawn(arguments, environment: ["PATH": ChildProcess.searchPath], outputDescriptor: log) {
        case .success(let pid):
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        case .failure(let error):
            throw LabError(.failed, "cannot start the power switch: \(error)")
        }
        try waitFor("the power switch", timeout: .seconds(10)) { () -> Bool in powerSwitchPID() != nil }
    }

    /// The power switch's PID, when it runs: the PID in its file, if that process is this lab's power switch.
    func powerSwitchPID() -> pid_t? { machines.labProcess(pidFile: layout.powerSwitchPIDFile, verb: "power-switch") }

    private func makeDisk(_ node: LabHost) throws(LabError) {
        let path = layout.diskImage(node)
        do {
            try FileManager.default.createDirectory(atPath: layout.directory(node), withIntermediateDirectories: true)
        } catch {
            throw LabError(.failed, "cannot create \(layout.directory(node)): \(error)")
        }
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LabError(.failed, "cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(LabLayout.diskSizeMiB) << 20) == 0 else {
            throw LabError(.failed, "cannot size \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// Says the last lines of every machine's logs: what explains a failure.
    public func showLogs() {
        for host in LabHost.allCases {
            for file in ["log/ha-log", "init.log"] {
                let path = layout.directory(host) + "/" + file
                guard let text = try? String(contentsOfFile: path, encoding: .utf8), !text.isEmpty else { continue }
                say("--- last lines of \(path)")
                for line in text.split(separator: "\n").suffix(15) { say("    \(line)") }
            }
            for daemon in ["replicad", "heartbeatd"] {
                guard let path = try? machines.path(host, "/run/tandem/\(daemon).log"),
                    let text = try? String(contentsOfFile: path, encoding: .utf8), !text.isEmpty
                else { continue }
                say("--- last lines of \(host.rawValue):/run/tandem/\(daemon).log")
                for line in text.split(separator: "\n").suffix(15) { say("    \(line)") }
            }
        }
    }

    // MARK: down

    /// Removes everything the lab made: its machines (every process in them, by PID namespace), what they left
    /// attached (loop devices), its namespaces, files and /data if it made it. Safe to run again; returns the
    /// problems it could not fix.
    public func down() -> [String] {
        var problems: [String] = []
        let state = try? loadState()
        // The power switch first: nothing may power a machine on again while the lab is being removed.
        if let pid = powerSwitchPID() {
            kill(pid, SIGKILL)
            say("power switch (pid \(pid)) stopped")
        }
        // Clean stops first, so that MariaDB shuts down and the file system is unmounted; then power off whatever
        // is left. Bounded: a stuck daemon only delays the power-off.
        // A frozen machine (a scenario that failed half way) would not hear SIGTERM.
        for host in LabHost.allCases { machines.thaw(host) }
        for daemon in ["heartbeatd", "replicad"] { machines.stopDaemons(daemon, on: LabHost.nodes, within: .seconds(60)) }
        for host in LabHost.allCases where machines.isRunning(host) {
            do throws(LabError) {
                let count = try powerOff(host)
                say("\(host.rawValue): powered off (\(count) processes)")
            } catch {
                problems.append(error.message)
            }
        }
        // A machine whose boot never finished wrote no init.pid: found by its command line.
        for pid in machines.unreadyInits() {
            kill(pid, SIGKILL)
            say("a machine that never finished booting (init pid \(pid)): killed")
        }
        problems += network.delete()
        if state?.createdDataDirectory == true, rmdir("/data") != 0, errno != ENOENT {
            problems.append("cannot remove /data, which the lab made: \(String(cString: strerror(errno)))")
        }
        // Only what the lab makes, then the folder if that leaves it empty: --lab-dir may name a folder that holds
        // other things too.
        for entry in layout.madeEntries where FileManager.default.fileExists(atPath: entry) {
            do {
                try FileManager.default.removeItem(atPath: entry)
            } catch {
                problems.append("cannot remove \(entry): \(error)")
            }
        }
        if rmdir(layout.root) != 0 && errno != ENOENT && errno != ENOTEMPTY {
            problems.append("cannot remove \(layout.root): \(String(cString: strerror(errno)))")
        }
        return problems
    }

    /// The loop tag of a node's device (see `BlockDevicePaths.loopTag`).
    func loopTag(_ node: LabHost) -> String {
        BlockDevicePaths.loopTag(
            nodeName: node.rawValue, backingDisk: layout.diskImage(node), runDirectory: "/run/tandem", resourceName: LabLayout.resourceName)
    }

    /// Power loss of a machine, and then of its block device: a node that was Primary leaves its loop device
    /// attached to a FUSE file whose server died with it. The kernel can no longer report such a device's tag (its
    /// status needs the dead file), so it is found while the node still runs and detached once the machine is gone.
    func powerOff(_ host: LabHost) throws(LabError) -> Int {
        // A frozen machine's device cannot be asked for its tag (see mountedLoopDevices): it is found by its mount.
        var loops = host.isClusterNode ? machines.mountedLoopDevices(host) : []
        if host.isClusterNode && !machines.isFrozen(host) { loops += LoopDevice.attached(taggedWith: loopTag(host)) }
        loops = Dictionary(grouping: loops, by: \.number).compactMap(\.value.first)
        let count = try machines.powerOff(host)
        for loop in loops {
            // The file system on it goes with the machine's mount namespace, a moment after its last process.
            var detached = false
            for _ in 0..<100 where !detached {
                detached = (try? loop.detach()) != nil
                if !detached { usleep(50_000) }
            }
            if !detached { throw LabError(.failed, "\(loop.path) (\(host.rawValue)'s device) is still in use and stays attached") }
        }
        return count
    }

    // MARK: helpers

    func step(_ text: String) { say("==> " + text) }

    func waitFor(_ what: String, timeout: Duration, _ condition: () -> Bool) throws(LabError) {
        let deadline = DaemonClock.now + timeout
        while DaemonClock.now < deadline {
            if condition() { return }
            usleep(100_000)
        }
        throw LabError(.failed, "timed out after \(timeout) waiting for \(what)")
    }

    func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644) throws(LabError) {
        do {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw LabError(.failed, "cannot write \(path): \(error)")
        }
        chmod(path, mode)
    }

    func seconds(_ duration: Duration) -> String { String(format: "%.1f", Double(duration.wholeMilliseconds) / 1000) }
}

extension Lab {
    /// Runs `body` holding the lab's lock (`<lab-dir>/lab.lock`, flock), so that two commands never change one lab
    /// at once; a second one is refused at once rather than queued.
    public func exclusively<T>(_ body: () throws(LabError) -> T) throws(LabError) -> T {
        do {
            try FileManager.default.createDirectory(atPath: layout.root, withIntermediateDirectories: true)
        } catch {
            throw LabError(.failed, "cannot create \(layout.root): \(error)")
        }
        let fd = open(layout.lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw LabError(.failed, "cannot open \(layout.lockFile): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            throw LabError(.refused, "another tandem lab command is working on \(layout.root); wait for it to finish")
        }
        return try body()
    }
}
