#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
@testable import ReplicationDaemon
import TandemTestSupport
import Testing

/// Generous bound for anything that happens within a few connect-ints on loopback. Tests wait for conditions, never
/// for times: a slow machine only makes them slower.
let patience: Duration = .seconds(60)

/// Two nodes, alpha and beta: one drbd.conf each (backing files and meta-disk internal in a temporary folder), a
/// run directory each, and `tandem replicad --foreground` processes started and stopped by PID. `tearDown` kills
/// whatever still runs (by PID), deletes the namespaces it made and removes every file.
///
/// Two networks:
/// - `.loopback`: both daemons in this network namespace, on two free loopback ports;
/// - `.namespaces`: one network namespace per node (`ip netns`), joined by a veth pair with 10.213.0.1/24 (alpha)
///   and 10.213.0.2/24 (beta); the daemons and every `tandem adm` run inside their node's namespace, as on two
///   machines. The pair is private to the test, so the addresses cannot collide with anything, and `cutLink` /
///   `healLink` take the veth down and up. Needs root and iproute2, and fails loudly without them.
final class TestCluster: @unchecked Sendable {
    // @unchecked: used by one test at a time; the processes are only started and stopped from that test.
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var executable: String { TandemExecutable.path(packageRoot: packageRoot) }

    enum Network {
        case loopback
        case namespaces
    }

    struct Node {
        var name: String
        var directory: String
        /// The network namespace the node runs in, or nil on loopback.
        var namespace: String?
        /// The node's end of the veth pair (in its namespace), or nil on loopback.
        var interface: String?
        var address: String
        var configDirectory: String { directory + "/conf" }
        var runDirectory: String { directory + "/run" }
        var disk: String { directory + "/disk.img" }
        var log: String { directory + "/replicad.log" }
        var preserveRoot: String { directory + "/preserved" }
        /// The node's own /dev for device links: both nodes share the machine's.
        var deviceLinkRoot: String { directory + "/devices" }
        /// drbd.conf's `device /dev/drbd0`, as this node links it.
        var deviceLink: String { deviceLinkRoot + "/dev/drbd0" }
        var client: ControlClient { ControlClient(runDirectory: runDirectory) }
        var nbdSocket: String { runDirectory + "/nbd/r0.sock" }
        var nbdURI: String { "nbd+unix:///r0?socket=\(nbdSocket)" }
    }

    let root: String
    let nodes: [Node]
    let network: Network
    let diskBytes: Int
    private var processes: [String: Process] = [:]

    var alpha: Node { nodes[0] }
    var beta: Node { nodes[1] }
    /// alpha's drbd.conf folder (both nodes' files are the same unless `nodeNetOptions` differ).
    var configDirectory: String { alpha.configDirectory }

    /// `netOptions` and `extra` go into the resource's `net { }` and body, `nodeNetOptions[i]` and `protocols[i]`
    /// into node i's `net { }` only (to make the nodes disagree), `diskOptions` into `disk { }`.
    init(
        network: Network = .loopback, diskBytes: Int = 16 << 20, netOptions: String = "", extra: String = "",
        diskOptions: String = "c-plan-ahead 0; resync-rate 200M;", nodeNetOptions: [String] = ["", ""],
        protocols: [String] = ["C", "C"]
    ) throws {
        // Short paths: a Unix socket path has at most 107 bytes.
        let base = FileManager.default.fileExists(atPath: "/tmp") ? "/tmp" : NSTemporaryDirectory()
        let tag = String(UUID().uuidString.prefix(8)).lowercased()
        root = "\(base)/tdm-\(tag)"
        self.network = network
        self.diskBytes = diskBytes
        let ports: [UInt16]
        switch network {
        case .loopback:
            ports = try freeLoopbackPorts(2)
            nodes = [
                Node(name: "alpha", directory: root + "/alpha", address: "127.0.0.1"),
                Node(name: "beta", directory: root + "/beta", address: "127.0.0.1"),
            ]
        case .namespaces:
            ports = [7789, 7789]
            nodes = [
                Node(name: "alpha", directory: root + "/alpha", namespace: "tdm\(tag)a", interface: "tdm\(tag)a",
                    address: "10.213.0.1"),
                Node(name: "beta", directory: root + "/beta", namespace: "tdm\(tag)b", interface: "tdm\(tag)b",
                    address: "10.213.0.2"),
            ]
        }
        for node in nodes {
            try FileManager.default.createDirectory(atPath: node.configDirectory, withIntermediateDirectories: true)
            try #require(FileManager.default.createFile(atPath: node.disk, contents: nil))
            let handle = try #require(FileHandle(forWritingAtPath: node.disk))
            try handle.truncate(atOffset: UInt64(diskBytes))
            try handle.close()
        }
        for (index, node) in nodes.enumerated() {
            let config = """
                resource r0 {
                  net { protocol \(protocols[index]); connect-int 1; ping-int 1; ping-timeout 10; verify-alg crc32c; \(netOptions) \(nodeNetOptions[index]) }
                  disk { \(diskOptions) }
                  handlers { after-resync-target "echo $DRBD_RESOURCE $DRBD_PEER $DRBD_PEER_ADDRESS >> \(root)/after-resync-target.log"; }
                  \(extra)
                  on alpha { device /dev/drbd0 minor 0; disk \(nodes[0].disk); address \(nodes[0].address):\(ports[0]); meta-disk internal; }
                  on beta { device /dev/drbd0 minor 0; disk \(nodes[1].disk); address \(nodes[1].address):\(ports[1]); meta-disk internal; }
                }
                """
            try config.write(toFile: node.configDirectory + "/drbd.conf", atomically: true, encoding: .utf8)
        }
        if network == .namespaces { try makeNamespaces() }
    }

    /// Two namespaces and a veth pair between them, addressed and up. Half-made namespaces are deleted on failure.
    private func makeNamespaces() throws {
        let ip = try Self.requiredTool("ip", package: "iproute2")
        do {
            for node in nodes { try Self.run(ip, ["netns", "add", node.namespace!]) }
            try Self.run(ip, [
                "link", "add", alpha.interface!, "netns", alpha.namespace!, "type", "veth", "peer", "name",
                beta.interface!, "netns", beta.namespace!,
            ])
            for node in nodes {
                try Self.run(ip, ["-n", node.namespace!, "addr", "add", "\(node.address)/24", "dev", node.interface!])
                try Self.run(ip, ["-n", node.namespace!, "link", "set", node.interface!, "up"])
                try Self.run(ip, ["-n", node.namespace!, "link", "set", "lo", "up"])
            }
        } catch {
            deleteNamespaces()
            throw error
        }
    }

    private func deleteNamespaces() {
        guard network == .namespaces, let ip = Self.tool("ip") else { return }
        // Deleting a namespace removes the veth end in it, and with it the pair.
        for node in nodes { _ = try? ExternalCommand.run(ip, ["netns", "del", node.namespace!]) }
    }

    /// Takes `node`'s end of the veth pair down: the link is cut both ways, as a pulled cable.
    func cutLink(_ node: Node) throws {
        try Self.run(try Self.requiredTool("ip", package: "iproute2"), ["-n", node.namespace!, "link", "set", node.interface!, "down"])
    }

    func healLink(_ node: Node) throws {
        try Self.run(try Self.requiredTool("ip", package: "iproute2"), ["-n", node.namespace!, "link", "set", node.interface!, "up"])
    }

    /// Kills every daemon still running (SIGKILL, by PID), deletes the namespaces and removes the folder.
    func tearDown() {
        for (_, process) in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        processes.removeAll()
        // A daemon killed while Primary leaves its loop device attached to the dead FUSE file.
        for node in nodes {
            let paths = BlockDevicePaths(
                resourceName: "r0", devicePath: "/dev/drbd0", nodeName: node.name, backingDisk: node.disk, runDirectory: node.runDirectory, linkRoot: node.deviceLinkRoot)
            do throws(BlockDeviceError) {
                try BlockDeviceAttachment.clearLeftovers(paths)
            } catch {
                Issue.record("\(node.name): the block device left by its daemon cannot be cleared: \(error)")
            }
        }
        deleteNamespaces()
        try? FileManager.default.removeItem(atPath: root)
    }

    /// The program and arguments that run `arguments` on `node`: inside its namespace when it has one.
    /// `ip netns exec` execs the program, so the process's PID is the program's own.
    func onNode(_ node: Node, _ executable: String, _ arguments: [String]) -> (String, [String]) {
        guard let namespace = node.namespace, let ip = Self.tool("ip") else { return (executable, arguments) }
        return (ip, ["netns", "exec", namespace, executable] + arguments)
    }

    /// Runs a program on `node` (in its namespace) to completion.
    func runOnNode(_ node: Node, _ executable: String, _ arguments: [String]) throws -> ExternalCommand.Output {
        let (program, all) = onNode(node, executable, arguments)
        return try ExternalCommand.run(program, all)
    }

    static func tool(_ name: String) -> String? { ExternalCommand.tool(name) }

    /// The tool's path; a missing tool fails the test with what to install.
    static func requiredTool(_ name: String, package: String) throws -> String {
        try #require(tool(name), "\(name) not found: install \(package)")
    }

    /// Runs a setup command that must succeed.
    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) throws -> ExternalCommand.Output {
        let output = try ExternalCommand.run(executable, arguments)
        try #require(
            output.status == 0,
            "\(executable) \(arguments.joined(separator: " ")) exited \(output.status): \(output.standardError)")
        return output
    }

    // MARK: The CLI

    /// `tandem adm VERB ARGS --config-dir ... --run-dir ... --node NAME`, on the node (in its namespace).
    func adm(_ node: Node, _ arguments: String...) throws -> ExternalCommand.Output {
        try admArray(node, arguments)
    }

    func admArray(_ node: Node, _ arguments: [String]) throws -> ExternalCommand.Output {
        try runOnNode(
            node, Self.executable,
            ["adm"] + arguments + [
                "--config-dir", node.configDirectory, "--run-dir", node.runDirectory, "--node", node.name,
            ])
    }

    /// As `adm`, expecting exit 0.
    @discardableResult
    func admOK(_ node: Node, _ arguments: String..., sourceLocation: SourceLocation = #_sourceLocation) throws
        -> ExternalCommand.Output
    {
        let output = try admArray(node, arguments)
        #expect(
            output.status == 0, "tandem adm \(arguments.joined(separator: " ")) on \(node.name): \(output.standardError)",
            sourceLocation: sourceLocation)
        return output
    }

    // MARK: Daemons

    /// Starts `tandem replicad --foreground` for `node` (in its namespace) and waits until it answers.
    func startDaemon(_ node: Node, extraDaemonArguments: [String] = []) async throws {
        try FileManager.default.createDirectory(atPath: node.runDirectory, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: node.log) {
            try #require(FileManager.default.createFile(atPath: node.log, contents: nil))
        }
        let log = try #require(FileHandle(forWritingAtPath: node.log))
        try log.seekToEnd()
        let process = Process()
        let (program, arguments) = onNode(node, Self.executable, [
            "replicad", "--foreground", "--config-dir", node.configDirectory, "--run-dir", node.runDirectory, "--node",
            node.name, "--preserve-dir", node.preserveRoot, "--handler-timeout", "10", "--device-link-root",
            node.deviceLinkRoot,
        ] + extraDaemonArguments)
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try log.close()
        processes[node.name] = process
        let answered = await eventually {
            (try? node.client.send(ControlRequest(verb: .ping), answerTimeout: .seconds(2)))?.result == .ok
                || !process.isRunning
        }
        #expect(answered && process.isRunning, "replicad for \(node.name) did not start:\n\(logText(node))")
    }

    /// Runs `tandem ARGUMENTS` that should exit on its own; kills it by PID if it has not within `patience`.
    func runToExit(_ arguments: [String]) async throws -> (status: Int32?, output: String) {
        let outputPath = root + "/run-\(UUID().uuidString.prefix(8)).out"
        try #require(FileManager.default.createFile(atPath: outputPath, contents: nil))
        let output = try #require(FileHandle(forWritingAtPath: outputPath))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.executable)
        process.arguments = arguments
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try output.close()
        let exited = await eventually { !process.isRunning }
        if !exited { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (exited ? process.terminationStatus : nil, text)
    }

    /// Sends `signal` to the node's daemon and waits (bounded) for it to exit; returns its exit status.
    func stopDaemon(_ node: Node, signal: Int32 = SIGTERM) async -> Int32? {
        guard let process = processes[node.name] else { return nil }
        kill(process.processIdentifier, signal)
        let exited = await eventually { !process.isRunning }
        #expect(exited, "replicad for \(node.name) did not exit after signal \(signal):\n\(logText(node))")
        guard exited else { return nil }
        processes[node.name] = nil
        process.waitUntilExit()
        return process.terminationReason == .exit ? process.terminationStatus : -process.terminationStatus
    }

    func logText(_ node: Node) -> String {
        ((try? String(contentsOfFile: node.log, encoding: .utf8)) ?? "").split(separator: "\n").suffix(40)
            .joined(separator: "\n")
    }

    // MARK: The control socket

    func status(_ node: Node) -> ResourceStatusReport? {
        (try? node.client.send(ControlRequest(verb: .status, resource: "r0"), answerTimeout: .seconds(10)))?.status
    }

    func describe() -> String {
        nodes.map { node in
            guard let status = status(node) else { return "\(node.name): no answer" }
            return "\(node.name): \(status.role) \(status.connection) \(status.disk)/\(status.peerDisk) "
                + "oos:\(status.outOfSyncKiB ?? 0)K uuids:\(status.uuids.map { "\($0.current):\($0.bitmap)" } ?? "-")"
        }.joined(separator: "\n") + "\n--- alpha log:\n\(logText(alpha))\n--- beta log:\n\(logText(beta))"
    }

    /// The node's daemon answers, the resource is up, and it is not Connected (a daemon that died or hangs is not).
    func isUpButNotConnected(_ node: Node) -> Bool {
        guard let status = status(node) else { return false }
        return status.up && status.connection != "Connected"
    }

    /// Waits until both nodes are Connected with UpToDate disks on both sides.
    func waitUntilInSync(sourceLocation: SourceLocation = #_sourceLocation) async {
        let synced = await eventually {
            nodes.allSatisfy { node in
                guard let status = status(node) else { return false }
                return status.connection == "Connected" && status.disk == "UpToDate" && status.peerDisk == "UpToDate"
            }
        }
        #expect(synced, "not in sync:\n\(describe())", sourceLocation: sourceLocation)
    }

    /// TEST HOOK `write`: an application write through the replication machine.
    func write(_ node: Node, offsetBytes: UInt64, _ payload: [UInt8]) throws -> ControlResponse {
        var request = ControlRequest(verb: .write, resource: "r0")
        request.offsetBytes = offsetBytes
        request.dataBase64 = Data(payload).base64EncodedString()
        return try node.client.send(request)
    }

    /// TEST HOOK `read`.
    func read(_ node: Node, offsetBytes: UInt64, lengthBytes: UInt64) throws -> (ControlResponse, [UInt8]?) {
        var request = ControlRequest(verb: .read, resource: "r0")
        request.offsetBytes = offsetBytes
        request.lengthBytes = lengthBytes
        let response = try node.client.send(request)
        return (response, response.dataBase64.flatMap { Data(base64Encoded: $0) }.map { Array($0) })
    }
}

/// A recognisable pattern: every byte depends on its offset and the seed.
func pattern(bytes: Int, seed: UInt8) -> [UInt8] {
    (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 / 4096) }
}

/// `TandemTestSupport.eventually` with this target's patience, polling every 50 ms (each poll may run a process).
func eventually(timeout: Duration = patience, _ condition: () -> Bool) async -> Bool {
    await TandemTestSupport.eventually(timeout: timeout, pollInterval: .milliseconds(50), condition)
}

/// Sends raw bytes on the control socket and returns the first response line (or nil if the daemon closed).
func rawExchange(socketPath: String, _ bytes: [UInt8]) throws -> String? {
    let socket = try BlockingSocket(unixPath: socketPath, receiveTimeoutSeconds: 20)
    defer { socket.close() }
    socket.writeUntilRefused(bytes)
    // Half-close, as socat does at the end of its input: the daemon answers what it got.
    socket.shutdownWrite()
    return socket.read(upTo: UInt8(ascii: "\n")).map { String(decoding: $0, as: UTF8.self) }
}
