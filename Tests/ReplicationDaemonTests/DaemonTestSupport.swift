#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import ReplicationDaemon
import TandemTestSupport
import Testing

/// Generous bound for anything that happens within a few connect-ints on loopback. Tests wait for conditions, never
/// for times: a slow machine only makes them slower.
let patience: Duration = .seconds(60)

/// Two nodes, alpha and beta, on loopback: one drbd.conf (two free ports, backing files and meta-disk internal in a
/// temporary folder), a run directory each, and `tandem replicad --foreground` processes started and stopped by PID.
/// `tearDown` kills whatever still runs (by PID) and removes every file.
final class TestCluster: @unchecked Sendable {
    // @unchecked: used by one test at a time; the processes are only started and stopped from that test.
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var executable: String { TandemExecutable.path(packageRoot: packageRoot) }
    static let diskBytes = 16 << 20

    struct Node {
        var name: String
        var directory: String
        var runDirectory: String { directory + "/run" }
        var disk: String { directory + "/disk.img" }
        var log: String { directory + "/replicad.log" }
        var client: ControlClient { ControlClient(runDirectory: runDirectory) }
    }

    let root: String
    let configDirectory: String
    let nodes: [Node]
    let ports: [UInt16]
    private var processes: [String: Process] = [:]

    var alpha: Node { nodes[0] }
    var beta: Node { nodes[1] }

    /// `netOptions` and `extra` go into the resource's `net { }` and body.
    init(netOptions: String = "", extra: String = "") throws {
        // Short paths: a Unix socket path has at most 107 bytes.
        let base = FileManager.default.fileExists(atPath: "/tmp") ? "/tmp" : NSTemporaryDirectory()
        root = "\(base)/tdm-\(UUID().uuidString.prefix(8))"
        configDirectory = root + "/conf"
        nodes = [Node(name: "alpha", directory: root + "/alpha"), Node(name: "beta", directory: root + "/beta")]
        ports = try freeLoopbackPorts(2)
        for directory in [configDirectory] + nodes.map(\.directory) {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        for node in nodes {
            try #require(FileManager.default.createFile(atPath: node.disk, contents: nil))
            let handle = try #require(FileHandle(forWritingAtPath: node.disk))
            try handle.truncate(atOffset: UInt64(Self.diskBytes))
            try handle.close()
        }
        let config = """
            resource r0 {
              net { protocol C; connect-int 1; ping-int 1; ping-timeout 10; verify-alg crc32c; \(netOptions) }
              disk { c-plan-ahead 0; resync-rate 200M; }
              handlers { after-resync-target "echo $DRBD_RESOURCE $DRBD_PEER $DRBD_PEER_ADDRESS >> \(root)/after-resync-target.log"; }
              \(extra)
              on alpha { device /dev/drbd0 minor 0; disk \(nodes[0].disk); address 127.0.0.1:\(ports[0]); meta-disk internal; }
              on beta { device /dev/drbd0 minor 0; disk \(nodes[1].disk); address 127.0.0.1:\(ports[1]); meta-disk internal; }
            }
            """
        try config.write(toFile: configDirectory + "/drbd.conf", atomically: true, encoding: .utf8)
    }

    /// Kills every daemon still running (SIGKILL, by PID) and removes the folder.
    func tearDown() {
        for (_, process) in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        processes.removeAll()
        try? FileManager.default.removeItem(atPath: root)
    }

    // MARK: The CLI

    /// `tandem adm VERB ARGS --config-dir ... --run-dir ... --node NAME`.
    func adm(_ node: Node, _ arguments: String...) throws -> ExternalCommand.Output {
        try ExternalCommand.run(
            Self.executable,
            ["adm"] + arguments + [
                "--config-dir", configDirectory, "--run-dir", node.runDirectory, "--node", node.name,
            ])
    }

    /// As `adm`, expecting exit 0.
    @discardableResult
    func admOK(_ node: Node, _ arguments: String..., sourceLocation: SourceLocation = #_sourceLocation) throws
        -> ExternalCommand.Output
    {
        let output = try ExternalCommand.run(
            Self.executable,
            ["adm"] + arguments + [
                "--config-dir", configDirectory, "--run-dir", node.runDirectory, "--node", node.name,
            ])
        #expect(
            output.status == 0, "tandem adm \(arguments.joined(separator: " ")) on \(node.name): \(output.standardError)",
            sourceLocation: sourceLocation)
        return output
    }

    // MARK: Daemons

    /// Starts `tandem replicad --foreground` for `node` and waits until it answers.
    func startDaemon(_ node: Node) async throws {
        try FileManager.default.createDirectory(atPath: node.runDirectory, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: node.log) {
            try #require(FileManager.default.createFile(atPath: node.log, contents: nil))
        }
        let log = try #require(FileHandle(forWritingAtPath: node.log))
        try log.seekToEnd()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.executable)
        process.arguments = [
            "replicad", "--foreground", "--config-dir", configDirectory, "--run-dir", node.runDirectory, "--node",
            node.name, "--preserve-dir", root + "/preserved-\(node.name)", "--handler-timeout", "10",
        ]
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

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration = patience, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return condition()
}

/// Sends raw bytes on the control socket and returns the first response line (or nil if the daemon closed).
func rawExchange(socketPath: String, _ bytes: [UInt8]) throws -> String? {
    let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    try #require(descriptor >= 0)
    defer { close(descriptor) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let path = Array(socketPath.utf8)
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        buffer.copyBytes(from: path)
        buffer[path.count] = 0
    }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    try #require(connected == 0)
    var timeout = timeval(tv_sec: 20, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var sent = 0
    while sent < bytes.count {
        let result = bytes.withUnsafeBytes {
            send(descriptor, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
        }
        // The daemon may answer and close before it has read everything (an overlong line).
        guard result > 0 else { break }
        sent += result
    }
    // Half-close, as socat does at the end of its input: the daemon answers what it got.
    shutdown(descriptor, Int32(SHUT_WR))
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while !received.contains(UInt8(ascii: "\n")) {
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress!, $0.count, 0) }
        guard count > 0 else { break }
        received += buffer[0..<count]
    }
    guard let newline = received.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
    return String(decoding: received[..<newline], as: UTF8.self)
}
