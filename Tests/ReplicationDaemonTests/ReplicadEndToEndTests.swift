#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import ReplicationDaemon
import TandemTestSupport
import Testing

/// `tandem replicad` and `tandem adm` as an operator uses them: two daemon processes on loopback, real TCP, real
/// backing files with internal metadata. Nothing here needs root (the daemons accept their own uid).
@Suite("replicad end to end", .serialized, .timeLimit(.minutes(5)))
struct ReplicadEndToEndTests {
    @Test("create-md, up, initial sync after primary --force, replicated writes, verify, invalidate, disconnect/connect, reads after a role switch, down and up, SIGTERM writes the metadata clean")
    func lifecycle() async throws {
        let cluster = try TestCluster()
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)

        for node in cluster.nodes { try cluster.admOK(node, "create-md", "r0") }
        let again = try cluster.adm(alpha, "create-md", "r0")
        #expect(again.status == 10 && again.standardError.contains("already holds"), "\(again.standardError)")

        for node in cluster.nodes { try await cluster.startDaemon(node) }
        for node in cluster.nodes { try cluster.admOK(node, "up", "r0") }
        #expect(
            await eventually {
                cluster.nodes.allSatisfy { cluster.status($0)?.connection == "Connected" }
            }, "\(cluster.describe())")
        #expect(try cluster.admOK(alpha, "cstate", "r0").standardOutput == "Connected\n")
        #expect(try cluster.admOK(alpha, "dstate", "r0").standardOutput == "Inconsistent/Inconsistent\n")
        #expect(try cluster.admOK(beta, "role", "all").standardOutput == "Secondary/Secondary\n")
        let busy = try cluster.adm(alpha, "create-md", "--force", "r0")
        #expect(busy.status == 10 && busy.standardError.contains("is up"), "\(busy.standardError)")

        try cluster.admOK(alpha, "primary", "--force", "r0")
        await cluster.waitUntilInSync()
        #expect(try cluster.admOK(alpha, "role", "r0").standardOutput == "Primary/Secondary\n")
        let loop = try #require(cluster.status(alpha)?.blockDevice?.loopDevice, "a Primary has its block device")
        #expect(
            try cluster.admOK(alpha, "status", "r0").standardOutput
                == "r0 role:Primary\n  disk:UpToDate\n  device:\(alpha.deviceLink) loop:\(loop)\n  beta role:Secondary\n    peer-disk:UpToDate\n")
        let device = try cluster.admOK(alpha, "device", "r0").standardOutput
        #expect(device.contains("\(alpha.deviceLink) -> \(loop)") && device.contains("direct I/O") && device.contains("not in use"), "\(device)")
        let none = try cluster.adm(beta, "device", "r0")
        #expect(none.status == 10 && none.standardOutput.contains("no block device attached"), "\(none.standardOutput)")
        let json = try cluster.admOK(beta, "status", "--json", "all").standardOutput
        let reports = try JSONDecoder().decode([ResourceStatusReport].self, from: Data(json.utf8))
        #expect(reports.count == 1 && reports.first?.peerRole == "Primary" && reports.first?.uuids != nil, "\(json)")
        let handlerLog = cluster.root + "/after-resync-target.log"
        #expect(
            await eventually {
                (try? String(contentsOfFile: handlerLog, encoding: .utf8)) == "r0 alpha 127.0.0.1\n"
            }, "after-resync-target ran on the sync target with DRBD's environment")

        let first = pattern(bytes: 32 * 1024, seed: 1)
        let second = pattern(bytes: 16 * 1024, seed: 2)
        #expect(try cluster.write(alpha, offsetBytes: 1 << 20, first).result == .ok)
        #expect(try cluster.write(alpha, offsetBytes: 9 << 20, second).result == .ok)
        #expect(try cluster.read(alpha, offsetBytes: 1 << 20, lengthBytes: 32 * 1024).1 == first)
        let onSecondary = try cluster.read(beta, offsetBytes: 1 << 20, lengthBytes: 4096).0
        #expect(onSecondary.result == .refused && onSecondary.message?.contains("not Primary") == true)

        // Online verify answers once it runs, and finds nothing; with no resync running, pause-sync is refused.
        try cluster.admOK(alpha, "verify", "r0")
        #expect(
            await eventually {
                cluster.status(alpha)?.connection == "Connected" && cluster.status(alpha)?.verifyMismatchesKiB == 0
            }, "\(cluster.describe())")
        let noResync = try cluster.adm(alpha, "pause-sync", "r0")
        #expect(noResync.status == 10 && noResync.standardError.contains("no resync"), "\(noResync.standardError)")
        // invalidate on the Secondary: a full resync from the Primary.
        try cluster.admOK(beta, "invalidate", "r0")
        await cluster.waitUntilInSync()
        // invalidate-remote on the Primary: the same full resync, asked for from the side whose data wins. The
        // peer's answer comes after it invalidated, so the resync is under way when the verb returns.
        let received = cluster.status(beta)?.counters?.networkReceivedKiB ?? 0
        try cluster.admOK(alpha, "invalidate-remote", "r0")
        let peerDisk = try #require(cluster.status(alpha)?.peerDisk, "\(cluster.describe())")
        #expect(peerDisk != "UpToDate", "\(cluster.describe())")
        await cluster.waitUntilInSync()
        let resynced = (cluster.status(beta)?.counters?.networkReceivedKiB ?? 0) - received
        #expect(resynced >= UInt64(cluster.diskBytes / 2048), "a full resync: \(resynced) KiB")
        let onPrimary = try cluster.adm(beta, "invalidate-remote", "r0")
        #expect(onPrimary.status == 10 && onPrimary.standardError.contains("Primary"), "\(onPrimary.standardError)")
        // Writes made while disconnected are in the bitmap and resynced at connect.
        try cluster.admOK(alpha, "disconnect", "r0")
        #expect(try cluster.admOK(alpha, "cstate", "r0").standardOutput == "StandAlone\n")
        let third = pattern(bytes: 8192, seed: 3)
        #expect(try cluster.write(alpha, offsetBytes: 12 << 20, third).result == .ok)
        #expect((cluster.status(alpha)?.outOfSyncKiB ?? 0) >= 8)
        try cluster.admOK(alpha, "connect", "r0")
        await cluster.waitUntilInSync()

        let twoPrimaries = try cluster.adm(beta, "primary", "r0")
        #expect(twoPrimaries.status == 10 && twoPrimaries.standardError.contains("Primary"), "\(twoPrimaries.standardError)")
        try cluster.admOK(alpha, "secondary", "r0")
        try cluster.admOK(beta, "primary", "r0")
        #expect(try cluster.read(beta, offsetBytes: 1 << 20, lengthBytes: 32 * 1024).1 == first)
        #expect(try cluster.read(beta, offsetBytes: 9 << 20, lengthBytes: 16 * 1024).1 == second)
        #expect(try cluster.read(beta, offsetBytes: 12 << 20, lengthBytes: 8192).1 == third)
        let generations = try cluster.nodes.map { try cluster.admOK($0, "get-gi", "r0").standardOutput }
        #expect(generations.allSatisfy { $0.split(separator: ":").count == 10 }, "\(generations)")
        #expect(generations[0].prefix(15) == generations[1].prefix(15), "same data generation: \(generations)")

        // down on the Primary demotes it first; the metadata is written clean; up brings it back in sync.
        try cluster.admOK(beta, "down", "r0")
        #expect(try cluster.admOK(beta, "status", "r0").standardOutput == "r0 role:Unconfigured\n")
        #expect(try cluster.admOK(beta, "dump-md", "r0").standardOutput.contains(", clean"))
        #expect(
            await eventually { cluster.status(alpha)?.connection == "WFConnection" }, "\(cluster.describe())")
        try cluster.admOK(beta, "up", "r0")
        await cluster.waitUntilInSync()
        try cluster.admOK(beta, "primary", "r0")
        #expect(try cluster.read(beta, offsetBytes: 1 << 20, lengthBytes: 32 * 1024).1 == first)

        // SIGTERM: every resource is stopped and its metadata written clean; the daemons exit 0.
        for node in cluster.nodes {
            #expect(await cluster.stopDaemon(node) == 0, "\(cluster.logText(node))")
            #expect(!FileManager.default.fileExists(atPath: ControlProtocol.socketPath(runDirectory: node.runDirectory)))
        }
        for node in cluster.nodes {
            let dump = try cluster.admOK(node, "dump-md", "r0").standardOutput
            #expect(dump.contains(", clean"), "\(node.name): \(dump)")
        }
    }

    @Test("SIGKILL of a Primary leaves the metadata unclean; the next up recovers it and resyncs the activity log's extents from the crashed Primary")
    func crashRecovery() async throws {
        let cluster = try TestCluster()
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        for node in cluster.nodes { try cluster.admOK(node, "create-md", "r0") }
        for node in cluster.nodes { try await cluster.startDaemon(node) }
        for node in cluster.nodes { try cluster.admOK(node, "up", "r0") }
        #expect(await eventually { cluster.status(alpha)?.connection == "Connected" }, "\(cluster.describe())")
        try cluster.admOK(alpha, "primary", "--force", "r0")
        await cluster.waitUntilInSync()
        let data = pattern(bytes: 32 * 1024, seed: 7)
        #expect(try cluster.write(alpha, offsetBytes: 2 << 20, data).result == .ok)

        #expect(await cluster.stopDaemon(alpha, signal: SIGKILL) == -SIGKILL)
        let dump = try cluster.admOK(alpha, "dump-md", "r0").standardOutput
        #expect(dump.contains("unclean"), "\(dump)")
        #expect(
            await eventually { cluster.status(beta)?.connection == "WFConnection" }, "\(cluster.describe())")

        try await cluster.startDaemon(alpha)
        try cluster.admOK(alpha, "up", "r0")
        await cluster.waitUntilInSync()
        #expect(cluster.logText(alpha).contains("crashed primary"), "\(cluster.logText(alpha))")
        try cluster.admOK(alpha, "primary", "r0")
        #expect(try cluster.read(alpha, offsetBytes: 2 << 20, lengthBytes: 32 * 1024).1 == data)
        try cluster.admOK(alpha, "secondary", "r0")
        try cluster.admOK(beta, "primary", "r0")
        #expect(try cluster.read(beta, offsetBytes: 2 << 20, lengthBytes: 32 * 1024).1 == data)
        for node in cluster.nodes { #expect(await cluster.stopDaemon(node) == 0) }
    }

    @Test("the control socket: mode 0600, one daemon per run directory, versioned requests, limits, refusals and their exit codes")
    func controlSocket() async throws {
        let cluster = try TestCluster()
        defer { cluster.tearDown() }
        let alpha = cluster.alpha
        try await cluster.startDaemon(alpha)
        let socketPath = ControlProtocol.socketPath(runDirectory: alpha.runDirectory)
        var information = stat()
        #expect(stat(socketPath, &information) == 0 && information.st_mode & 0o777 == 0o600)

        let ping = try alpha.client.send(ControlRequest(verb: .ping))
        #expect(ping.result == .ok && ping.message?.contains("node alpha") == true)
        let wrongVersion = try rawExchange(socketPath: socketPath, Array("{\"version\":99,\"verb\":\"ping\"}\n".utf8))
        #expect(wrongVersion?.contains("\"bad-request\"") == true && wrongVersion?.contains("version 99") == true)
        let notJSON = try rawExchange(socketPath: socketPath, Array("hello\n".utf8))
        #expect(notJSON?.contains("\"bad-request\"") == true)
        let unknownVerb = try rawExchange(socketPath: socketPath, Array("{\"version\":1,\"verb\":\"format\"}\n".utf8))
        #expect(unknownVerb?.contains("\"bad-request\"") == true)
        let overlong = try rawExchange(
            socketPath: socketPath, [UInt8](repeating: UInt8(ascii: "x"), count: ControlProtocol.requestBytesMaximum + 10))
        #expect(overlong?.contains("longer than") == true, "\(overlong ?? "closed")")
        let noNewline = try rawExchange(socketPath: socketPath, Array("{\"version\":1,\"verb\":\"ping\"}".utf8))
        #expect(noNewline?.contains("\"ok\"") == true, "a last line without its newline is answered")

        let unknown = try cluster.adm(alpha, "status", "nosuch")
        #expect(unknown.status == 1 && unknown.standardError.contains("not defined for node alpha"))
        #expect(try cluster.admOK(alpha, "role", "r0").standardOutput == "Unconfigured\n")
        let notUp = try cluster.adm(alpha, "primary", "r0")
        #expect(notUp.status == 10 && notUp.standardError.contains("not up"), "\(notUp.standardError)")
        try cluster.admOK(alpha, "down", "r0")
        let noMetadata = try cluster.adm(alpha, "up", "r0")
        #expect(noMetadata.status == 10 && noMetadata.standardError.contains("create-md"), "\(noMetadata.standardError)")
        var write = ControlRequest(verb: .write, resource: "r0")
        write.offsetBytes = 100
        write.dataBase64 = Data([1, 2, 3]).base64EncodedString()
        #expect(try alpha.client.send(write).result == .badRequest)

        let second = try await cluster.runToExit(
            ["replicad", "--foreground", "--config-dir", cluster.configDirectory, "--run-dir", alpha.runDirectory,
             "--node", "alpha"])
        #expect(second.status == 10 && second.output.contains("already uses"), "\(second.output)")

        #expect(await cluster.stopDaemon(alpha) == 0)
        #expect(!FileManager.default.fileExists(atPath: socketPath))
        let gone = try cluster.adm(alpha, "status", "r0")
        #expect(gone.status == 20 && gone.standardError.contains("not running"))
    }

    @Test(
        "a client that is neither root nor the daemon's user is refused by its credentials (SO_PEERCRED), even when the socket's mode would let it in"
    )
    func peerCredentials() async throws {
        // Root switches to an outsider uid with setpriv; without root (CI runs as root) the test fails, never skips.
        try #require(getuid() == 0, "this test runs a client as uid 65534 and needs root")
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "setpriv (util-linux) is missing")
        let cluster = try TestCluster()
        defer { cluster.tearDown() }
        let alpha = cluster.alpha
        try await cluster.startDaemon(alpha)
        // Open the way the file modes would normally block, so that only the credentials check is left.
        for directory in [cluster.root, alpha.directory, alpha.runDirectory] { chmod(directory, 0o755) }
        chmod(ControlProtocol.socketPath(runDirectory: alpha.runDirectory), 0o666)
        let outsider = try ExternalCommand.run(
            "/usr/bin/setpriv",
            ["--reuid=65534", "--regid=65534", "--clear-groups", TestCluster.executable, "adm", "status", "r0",
             "--config-dir", cluster.configDirectory, "--run-dir", alpha.runDirectory, "--node", "alpha"])
        #expect(outsider.status == 10, "\(outsider.standardError)")
        #expect(outsider.standardError.contains("permission denied: uid 65534"), "\(outsider.standardError)")
        #expect(try cluster.admOK(alpha, "status", "r0").standardOutput == "r0 role:Unconfigured\n")
        #expect(await cluster.stopDaemon(alpha) == 0)
    }

    @Test("a write error injected on the Primary's disk detaches it (on-io-error detach); I/O continues through the peer")
    func injectedWriteError() async throws {
        let cluster = try TestCluster()
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        for node in cluster.nodes { try cluster.admOK(node, "create-md", "r0") }
        for node in cluster.nodes { try await cluster.startDaemon(node) }
        for node in cluster.nodes { try cluster.admOK(node, "up", "r0") }
        #expect(await eventually { cluster.status(alpha)?.connection == "Connected" }, "\(cluster.describe())")
        try cluster.admOK(alpha, "primary", "--force", "r0")
        await cluster.waitUntilInSync()

        var fault = ControlRequest(verb: .fault, resource: "r0")
        fault.fault = FaultRequest(action: .add, kinds: "writes", offsetBytes: 4 << 20, lengthBytes: 4096)
        let added = try alpha.client.send(fault)
        #expect(added.result == .ok && added.faults?.count == 1)
        let data = pattern(bytes: 8192, seed: 3)
        #expect(try cluster.write(alpha, offsetBytes: 4 << 20, data).result == .ok)
        #expect(await eventually { cluster.status(alpha)?.disk == "Diskless" }, "\(cluster.describe())")
        #expect(try cluster.read(alpha, offsetBytes: 4 << 20, lengthBytes: 8192).1 == data, "read from the peer")
        try cluster.admOK(alpha, "secondary", "r0")
        try cluster.admOK(beta, "primary", "r0")
        #expect(try cluster.read(beta, offsetBytes: 4 << 20, lengthBytes: 8192).1 == data)
        for node in cluster.nodes { #expect(await cluster.stopDaemon(node) == 0) }
    }
}
