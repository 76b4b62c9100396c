#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ClusterDaemon
import DaemonSupport
import Foundation
import Synchronization
import TandemTestSupport
import Testing

/// Generous bound for anything a few deadtimes long. Tests wait for conditions, never for times.
let patience: Duration = .seconds(60)

/// The seeds' two-node Heartbeat cluster, for real, on this machine: three network namespaces (node1, node2 and a
/// client) made by the test, two independent heartbeat links between the nodes (eth1 with bcast, eth2 with ucast),
/// and a service network (eth3 on each node) bridged to the client. A dummy TCP service on the floating address
/// answers with the name of the node it runs on. `tandem heartbeatd --foreground` runs in each node's namespace and
/// is started and stopped by PID; `tearDown` kills what the test started (daemons and services, by PID), deletes the
/// namespaces and removes every file.
///
/// Addresses come from 10.214.0.0/16, used only inside these namespaces. Needs root, iproute2, iputils-arping and
/// python3 (CI installs them); a missing tool fails the test.
final class HeartbeatLab: @unchecked Sendable {
    // @unchecked: used by one test at a time.
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var executable: String { TandemExecutable.path(packageRoot: packageRoot) }
    static let counter = Mutex(0)

    struct Node {
        var name: String
        var namespace: String
        var directory: String
        var heartbeatAddresses: [String]
        var serviceAddress: String
        var configDirectory: String { directory + "/conf" }
        var runDirectory: String { directory + "/run" }
        var stateDirectory: String { directory + "/state" }
        var haLog: String { directory + "/ha-log" }
        var daemonLog: String { directory + "/heartbeatd.out" }
        var servicePIDFile: String { directory + "/service.pid" }
        /// MariaDB's files, when a test gives the node a database (`installDatabase`).
        var mysqlDirectory: String { directory + "/mysql" }
        var mysqlDefaultsFile: String { directory + "/my.cnf" }
        var mysqlPIDFile: String { mysqlDirectory + "/mysqld.pid" }
    }

    static let virtualAddress = "10.214.3.100"
    static let servicePort = 7000

    let root: String
    let prefix: String
    let nodes: [Node]
    let clientNamespace: String
    private var namespacesMade: [String] = []
    /// The daemons this test started, by node name. Started with posix_spawn and reaped with waitpid here, not
    /// with Foundation's `Process`, whose exit notification depends on threads the test's own blocking waits use.
    private var daemons: [String: pid_t] = [:]
    let ip: String

    var node1: Node { nodes[0] }
    var node2: Node { nodes[1] }

    /// Makes the namespaces, links and configuration (not yet the daemons).
    init(haresources: String, haCfExtra: String = "", autoFailback: String = "on") throws {
        ip = try #require(ExternalCommand.tool("ip"), "ip not found: install iproute2")
        _ = try #require(ExternalCommand.tool("arping"), "arping not found: install iputils-arping")
        _ = try #require(ExternalCommand.tool("python3"), "python3 not found: install python3")
        let number = Self.counter.withLock { value -> Int in
            value += 1
            return value
        }
        let prefix = "hb\(getpid() % 10000)x\(number)"
        let root = NSTemporaryDirectory() + "tandem-hblab-\(prefix)"
        self.prefix = prefix
        self.root = root
        try? FileManager.default.removeItem(atPath: root)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        nodes = (1...2).map { index in
            Node(
                name: "node\(index)", namespace: "\(prefix)n\(index)", directory: "\(root)/node\(index)",
                heartbeatAddresses: ["10.214.1.\(index)", "10.214.2.\(index)"], serviceAddress: "10.214.3.\(index)")
        }
        clientNamespace = "\(prefix)c"
        do {
            try makeNetwork()
            try writeConfiguration(haresources: haresources, haCfExtra: haCfExtra, autoFailback: autoFailback)
        } catch {
            tearDown()
            throw error
        }
    }

    private func makeNetwork() throws {
        for namespace in nodes.map(\.namespace) + [clientNamespace] {
            try run(ip, ["netns", "add", namespace])
            namespacesMade.append(namespace)
            try run(ip, ["-n", namespace, "link", "set", "lo", "up"])
        }
        // Two heartbeat links, node1 <-> node2.
        for link in 1...2 {
            try run(ip, [
                "link", "add", "\(prefix)a\(link)", "netns", node1.namespace, "type", "veth", "peer", "name",
                "\(prefix)b\(link)", "netns", node2.namespace,
            ])
            for (node, end) in zip(nodes, ["a", "b"]) {
                try run(ip, ["-n", node.namespace, "link", "set", "\(prefix)\(end)\(link)", "name", "eth\(link)"])
                try run(ip, ["-n", node.namespace, "addr", "add", "\(node.heartbeatAddresses[link - 1])/24", "dev", "eth\(link)"])
                try run(ip, ["-n", node.namespace, "link", "set", "eth\(link)", "up"])
            }
        }
        // The service network: each node's eth3 on a bridge in the client namespace.
        try run(ip, ["-n", clientNamespace, "link", "add", "br0", "type", "bridge"])
        try run(ip, ["-n", clientNamespace, "addr", "add", "10.214.3.10/24", "dev", "br0"])
        try run(ip, ["-n", clientNamespace, "link", "set", "br0", "up"])
        for (index, node) in nodes.enumerated() {
            let port = "\(prefix)p\(index + 1)"
            try run(ip, [
                "link", "add", "\(prefix)s\(index + 1)", "netns", node.namespace, "type", "veth", "peer", "name", port,
                "netns", clientNamespace,
            ])
            try run(ip, ["-n", node.namespace, "link", "set", "\(prefix)s\(index + 1)", "name", "eth3"])
            try run(ip, ["-n", node.namespace, "addr", "add", "\(node.serviceAddress)/24", "dev", "eth3"])
            try run(ip, ["-n", node.namespace, "link", "set", "eth3", "up"])
            try run(ip, ["-n", clientNamespace, "link", "set", port, "master", "br0"])
            try run(ip, ["-n", clientNamespace, "link", "set", port, "up"])
        }
    }

    private func writeConfiguration(haresources: String, haCfExtra: String, autoFailback: String) throws {
        let service = """
            import socket, sys
            address, node = sys.argv[1], sys.argv[2]
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((address, \(Self.servicePort)))
            server.listen(16)
            while True:
                connection, _ = server.accept()
                connection.sendall((node + "\\n").encode())
                connection.close()
            """
        try service.write(toFile: "\(root)/service.py", atomically: true, encoding: .utf8)
        for node in nodes {
            for directory in [node.configDirectory + "/resource.d", node.runDirectory, node.stateDirectory] {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            }
            let haCf = """
                # The seeds' ha.cf, with timings a test can wait for.
                logfile \(node.haLog)
                keepalive 250ms
                warntime 1
                deadtime 2
                initdead 4
                udpport 6940
                bcast eth1
                ucast eth2 10.214.2.1
                ucast eth2 10.214.2.2
                auto_failback \(autoFailback)
                node node1
                node node2
                \(haCfExtra)
                """
            try haCf.write(toFile: node.configDirectory + "/ha.cf", atomically: true, encoding: .utf8)
            try "auth 1\n1 sha1 tandem-lab-secret\n".write(toFile: node.configDirectory + "/authkeys", atomically: true, encoding: .utf8)
            chmod(node.configDirectory + "/authkeys", 0o600)
            try (haresources + "\n").write(toFile: node.configDirectory + "/haresources", atomically: true, encoding: .utf8)
            // The dummy service: `hbservice ADDRESS start|stop|status`, as Heartbeat calls resource.d scripts.
            let script = """
                #!/bin/sh
                pidfile=\(node.servicePIDFile)
                case "$2" in
                start)
                  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then exit 0; fi
                  setsid python3 \(root)/service.py "$1" "$TANDEM_NODE" </dev/null >/dev/null 2>&1 &
                  echo $! > "$pidfile"
                  for i in $(seq 100); do
                    python3 -c "import socket; socket.create_connection(('$1', \(Self.servicePort)), 0.2)" 2>/dev/null && exit 0
                    sleep 0.1
                  done
                  echo "service did not start listening"; exit 1 ;;
                stop)
                  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null; rm -f "$pidfile"; fi
                  exit 0 ;;
                status)
                  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo running; else echo stopped; fi ;;
                esac
                """
            try script.write(toFile: node.configDirectory + "/resource.d/hbservice", atomically: true, encoding: .utf8)
            chmod(node.configDirectory + "/resource.d/hbservice", 0o755)
        }
    }

    /// Adds an executable resource.d script on both nodes.
    func addScript(_ name: String, _ body: String) throws {
        for node in nodes {
            let path = node.configDirectory + "/resource.d/" + name
            try ("#!/bin/sh\n" + body + "\n").write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o755)
        }
    }

    // MARK: Daemons

    /// Starts `tandem heartbeatd --foreground` on `node` and waits until it answers.
    func start(_ node: Node) async throws {
        let log = open(node.daemonLog, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        try #require(log >= 0, "cannot open \(node.daemonLog)")
        defer { close(log) }
        let spawned = ChildProcess.spawn(
            [
                ip, "netns", "exec", node.namespace, Self.executable, "heartbeatd", "--foreground", "--config-dir",
                node.configDirectory, "--run-dir", node.runDirectory, "--state-dir", node.stateDirectory, "--node",
                node.name,
            ], environment: ProcessInfo.processInfo.environment, outputDescriptor: log)
        let pid = try spawned.get()
        daemons[node.name] = pid
        let answered = await eventually(timeout: patience) { self.status(node) != nil || !self.isRunning(node) }
        try #require(answered && isRunning(node), "heartbeatd on \(node.name) did not answer: \(tail(node.daemonLog))")
    }

    /// Whether the daemon the test started on `node` still runs; reaps it when it has ended.
    func isRunning(_ node: Node) -> Bool {
        guard let pid = daemons[node.name] else { return false }
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return true }
        daemons[node.name] = nil
        return false
    }

    /// SIGTERM, then wait for the daemon to release its groups and exit.
    func stop(_ node: Node) async {
        guard let pid = daemons[node.name] else { return }
        kill(pid, SIGTERM)
        if !(await eventually(timeout: patience) { !self.isRunning(node) }) {
            Issue.record("heartbeatd on \(node.name) did not stop after SIGTERM: \(tail(node.daemonLog))")
            kill(pid, SIGKILL)
            reap(node)
        }
    }

    private func reap(_ node: Node) {
        guard let pid = daemons.removeValue(forKey: node.name) else { return }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }

    /// The node dies: kill -9 of everything the test started on it (heartbeatd and its service), and its links go
    /// down, as when the machine loses power.
    func crash(_ node: Node) async {
        if let pid = daemons[node.name] {
            kill(pid, SIGKILL)
            reap(node)
        }
        killService(node)
        for link in ["eth1", "eth2", "eth3"] { _ = try? ExternalCommand.run(ip, ["-n", node.namespace, "link", "set", link, "down"]) }
    }

    /// The crashed node's machine is back: links up, its floating address (left configured on the dead machine)
    /// gone as after a reboot.
    func powerOn(_ node: Node) throws {
        _ = try? ExternalCommand.run(ip, ["-n", node.namespace, "addr", "del", "\(Self.virtualAddress)/24", "dev", "eth3"])
        for link in ["eth1", "eth2", "eth3"] { try run(ip, ["-n", node.namespace, "link", "set", link, "up"]) }
    }

    func setLink(_ node: Node, _ link: String, up: Bool) throws {
        try run(ip, ["-n", node.namespace, "link", "set", link, up ? "up" : "down"])
    }

    /// Gives `node` a MariaDB of its own (datadir, socket, pid file and error log under the node's folder) for the
    /// built-in mysqld agent: `mysqld::<node>/my.cnf`.
    func installDatabase(_ node: Node) async throws {
        let installer = try #require(ExternalCommand.tool("mariadb-install-db"), "mariadb-install-db not found: install mariadb-server")
        let cnf = """
            [mysqld]
            datadir=\(node.mysqlDirectory)
            socket=\(node.mysqlDirectory)/mysqld.sock
            pid-file=\(node.mysqlPIDFile)
            log-error=\(node.mysqlDirectory)/mysqld.err
            port=3306
            skip-name-resolve
            innodb_buffer_pool_size=16M
            [client]
            socket=\(node.mysqlDirectory)/mysqld.sock
            """
        try cnf.write(toFile: node.mysqlDefaultsFile, atomically: true, encoding: .utf8)
        chmod(node.directory, 0o755)
        chmod(root, 0o755)
        let output = try await ExternalCommand.runDetached(installer, [
            "--defaults-file=\(node.mysqlDefaultsFile)", "--user=mysql", "--skip-test-db",
        ])
        try #require(output.status == 0, "mariadb-install-db for \(node.name): \(output.standardError)")
    }

    /// `SELECT 1` through the node's socket, as root; nil when the server does not answer.
    func query(_ node: Node, _ sql: String) -> String? {
        guard let client = ExternalCommand.tool("mariadb"),
            let output = try? ExternalCommand.run(client, ["--defaults-file=\(node.mysqlDefaultsFile)", "-N", "-B", "-e", sql]),
            output.status == 0
        else { return nil }
        return output.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether `<lab>/data` is mounted in the mount namespace of the node's heartbeatd (`ip netns exec` gives each
    /// daemon one of its own).
    func mountedData(_ node: Node) -> Bool {
        guard let pid = daemons[node.name],
            let table = try? String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8)
        else { return false }
        return table.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(4).first == "\(root)/data" }
    }

    func mysqldPID(_ node: Node) -> pid_t? {
        guard let text = try? String(contentsOfFile: node.mysqlPIDFile, encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0
        else { return nil }
        return pid
    }

    private func killService(_ node: Node) {
        if let pid = mysqldPID(node) { kill(pid, SIGKILL) }
        if let text = try? String(contentsOfFile: node.servicePIDFile, encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
        {
            kill(pid, SIGKILL)
            try? FileManager.default.removeItem(atPath: node.servicePIDFile)
        }
    }

    func tearDown() {
        for node in nodes where daemons[node.name] != nil {
            kill(daemons[node.name]!, SIGKILL)
            reap(node)
        }
        for node in nodes { killService(node) }
        for namespace in namespacesMade { _ = try? ExternalCommand.run(ip, ["netns", "del", namespace]) }
        namespacesMade.removeAll()
        try? FileManager.default.removeItem(atPath: root)
    }

    // MARK: Looking

    /// The CLI on `node` (in its namespace).
    func tandem(_ node: Node, _ arguments: [String]) throws -> ExternalCommand.Output {
        try ExternalCommand.run(
            ip, ["netns", "exec", node.namespace, Self.executable] + arguments + ["--run-dir", node.runDirectory])
    }

    /// Runs a standby or takeover on `node` until heartbeatd accepts it (exit 0). Right after a move both nodes may
    /// still be settling, and the verb is then refused with the reason (exit 10), as an operator would see; the last
    /// refusal is returned when it never gets accepted.
    func moveAccepted(_ node: Node, _ arguments: [String]) async -> (accepted: Bool, lastError: String) {
        var lastError = ""
        let accepted = await eventually(timeout: patience) {
            guard let output = try? self.tandem(node, arguments) else { return false }
            lastError = output.standardError
            return output.status == 0
        }
        return (accepted, lastError)
    }

    func status(_ node: Node) -> ClusterStatusReport? {
        let client = ClusterControlProtocol.client(runDirectory: node.runDirectory)
        let response: ClusterControlResponse? = try? client.exchange(ClusterControlRequest(verb: .status), answerTimeout: .seconds(5))
        return response?.status
    }

    /// Which node answers on the floating address, from the client's side; nil when nobody does.
    func answeringNode() -> String? {
        let probe = """
            import socket
            try:
                s = socket.create_connection(("\(Self.virtualAddress)", \(Self.servicePort)), 1)
                print(s.recv(64).decode().strip())
            except OSError:
                pass
            """
        guard let output = try? ExternalCommand.run(ip, ["netns", "exec", clientNamespace, "python3", "-c", probe]) else { return nil }
        let answer = output.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        return answer.isEmpty ? nil : answer
    }

    /// Whether `node` has the floating address on eth3.
    func holdsAddress(_ node: Node) -> Bool {
        let output = try? ExternalCommand.run(ip, ["-n", node.namespace, "-o", "-4", "addr", "show", "dev", "eth3"])
        return output?.standardOutput.contains(" \(Self.virtualAddress)/") ?? false
    }

    func haLog(_ node: Node) -> String { (try? String(contentsOfFile: node.haLog, encoding: .utf8)) ?? "" }

    func tail(_ path: String) -> String {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").suffix(30).joined(separator: "\n")
    }

    func describe() -> String {
        nodes.map { node in
            let text = status(node).map { "\($0.status) held=\($0.resourcesHeld) groups=\($0.groups.map { "\($0.key):\($0.state)" })" } ?? "not answering"
            return "\(node.name): \(text), holds VIP: \(holdsAddress(node))\n--- ha-log:\n\(tail(node.haLog))"
        }.joined(separator: "\n") + "\nclient sees: \(answeringNode() ?? "nobody")"
    }

    @discardableResult
    private func run(_ executable: String, _ arguments: [String]) throws -> ExternalCommand.Output {
        let output = try ExternalCommand.run(executable, arguments)
        try #require(
            output.status == 0, "\(executable) \(arguments.joined(separator: " ")) exited \(output.status): \(output.standardError)")
        return output
    }
}
