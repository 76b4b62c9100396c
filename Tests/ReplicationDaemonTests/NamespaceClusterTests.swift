#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Foundation
import ReplicationCore
import ReplicationDaemon
import Synchronization
import TandemTestSupport
import Testing

/// The replication daemon as the seeds run it: two nodes, each in its own network namespace with its own backing
/// file, joined by a veth pair; every step through `tandem adm`, data through the NBD export with libnbd's tools
/// and a client written from the NBD specification. Needs root, iproute2 and libnbd-bin (CI installs them); a missing
/// prerequisite fails the test.
@Suite("replicad in two network namespaces", .serialized, .timeLimit(.minutes(10)))
struct NamespaceClusterTests {
    // MARK: Setup shared by the scenarios

    enum InitialSync {
        /// `primary --force` on alpha: a full sync of the device, as the seeds do it.
        case full
        /// `new-current-uuid --clear-bitmap` on fresh, zeroed disks (DRBD's "skipping the initial sync"), then
        /// `primary` on alpha.
        case skip
    }

    /// Daemons up on both nodes, create-md, up, alpha Primary, in sync.
    func setUp(_ cluster: TestCluster, _ initialSync: InitialSync, daemonArguments: [[String]] = [[], []]) async throws {
        for (node, arguments) in zip(cluster.nodes, daemonArguments) {
            try await cluster.startDaemon(node, extraDaemonArguments: arguments)
        }
        for node in cluster.nodes { try cluster.admOK(node, "create-md", "r0") }
        for node in cluster.nodes { try cluster.admOK(node, "up", "r0") }
        #expect(
            await eventually { cluster.nodes.allSatisfy { cluster.status($0)?.connection == "Connected" } },
            "\(cluster.describe())")
        switch initialSync {
        case .full:
            try cluster.admOK(cluster.alpha, "primary", "--force", "r0")
        case .skip:
            try cluster.admOK(cluster.alpha, "new-current-uuid", "--clear-bitmap", "r0")
            try cluster.admOK(cluster.alpha, "primary", "r0")
        }
        await cluster.waitUntilInSync()
    }

    /// The data area's size (the backing file less the internal metadata).
    func dataBytes(_ cluster: TestCluster) throws -> UInt64 {
        try #require(cluster.status(cluster.alpha)?.sizeBytes)
    }

    /// Both backing files hold the same bytes in the data area (`cmp`, outside the daemons).
    func expectIdenticalBackingFiles(_ cluster: TestCluster, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let cmp = try TestCluster.requiredTool("cmp", package: "diffutils")
        let size = try dataBytes(cluster)
        let output = try ExternalCommand.run(cmp, ["-n", String(size), cluster.alpha.disk, cluster.beta.disk])
        #expect(
            output.status == 0, "backing files differ: \(output.standardOutput)\(output.standardError)",
            sourceLocation: sourceLocation)
    }

    func counters(_ cluster: TestCluster, _ node: TestCluster.Node) throws -> ResourceCounters {
        try #require(cluster.status(node)?.counters, "\(cluster.describe())")
    }

    /// A client of the node's NBD export.
    func nbdClient(_ node: TestCluster.Node) throws -> NBDTestClient {
        try NBDTestClient(unixPath: node.nbdSocket, export: "r0")
    }

    /// Reproducible from the seed, incompressible enough for a storage test.
    static func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var generator = SplitMix64(seed: seed)
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
    }

    // MARK: The scenarios

    @Test("the seeds' first-time setup: create-md and up on both, primary --force on alpha, the initial sync runs to UpToDate/UpToDate and its progress moves in status and proc")
    func firstTimeSetup() async throws {
        // 64 MiB at 8 MiB/s: a sync of about eight seconds, long enough to watch.
        let cluster = try TestCluster(
            network: .namespaces, diskBytes: 64 << 20, diskOptions: "c-plan-ahead 0; resync-rate 8M;")
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        for node in cluster.nodes { try await cluster.startDaemon(node) }
        for node in cluster.nodes { try cluster.admOK(node, "create-md", "r0") }
        for node in cluster.nodes { try cluster.admOK(node, "up", "r0") }
        #expect(await eventually { cluster.status(alpha)?.connection == "Connected" }, "\(cluster.describe())")
        #expect(try cluster.admOK(alpha, "dstate", "r0").standardOutput == "Inconsistent/Inconsistent\n")
        let refused = try cluster.adm(alpha, "primary", "r0")
        #expect(refused.status == 10 && refused.standardError.contains("--force"), "\(refused.standardError)")

        try cluster.admOK(alpha, "primary", "--force", "r0")
        var percentages: Set<Int> = []
        var procShowedProgress = false
        let synced = await eventually {
            guard let json = try? cluster.admOK(beta, "status", "--json", "r0").standardOutput,
                let report = try? JSONDecoder().decode([ResourceStatusReport].self, from: Data(json.utf8)).first
            else { return false }
            if let resync = report.resync { percentages.insert(Int(resync.percentDone)) }
            if let proc = try? cluster.admOK(alpha, "proc", "r0").standardOutput,
                proc.contains("sync'ed:"), proc.contains("finish:"), proc.contains("cs:SyncSource")
            {
                procShowedProgress = true
            }
            return report.disk == "UpToDate" && report.peerDisk == "UpToDate"
        }
        #expect(synced, "\(cluster.describe())")
        #expect(percentages.count >= 2, "the progress moved: \(percentages.sorted())")
        #expect(procShowedProgress, "proc showed the progress bar while syncing")
        let loop = try #require(cluster.status(alpha)?.blockDevice?.loopDevice, "the Primary's block device")
        #expect(
            try cluster.admOK(alpha, "status", "r0").standardOutput
                == "r0 role:Primary\n  disk:UpToDate\n  device:\(alpha.deviceLink) loop:\(loop)\n  beta role:Secondary\n    peer-disk:UpToDate\n")
        let proc = try cluster.admOK(beta, "proc", "r0").standardOutput
        #expect(proc.contains(" 0: cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate C r-----"), "\(proc)")
        let received = try counters(cluster, beta).networkReceivedKiB
        #expect(received >= (try dataBytes(cluster)) / 1024, "the full sync moved the whole device: nr \(received)")
        let watched = try cluster.admOK(alpha, "proc", "--watch", "--interval", "0.2", "--iterations", "2", "r0")
        #expect(watched.standardOutput.components(separatedBy: "\u{1B}[H\u{1B}[2J").count == 3, "refreshed in place twice")
        let handlerLog = cluster.root + "/after-resync-target.log"
        #expect(
            await eventually { (try? String(contentsOfFile: handlerLog, encoding: .utf8)) == "r0 alpha 10.213.0.1\n" },
            "after-resync-target ran on beta with the peer's name and address")
    }

    @Test("256 MiB of random data written with nbdcopy on alpha, 8 MiB trimmed, roles switched, read back with nbdcopy on beta byte for byte; both backing files identical, with a hole where the trim was")
    func nbdcopyRoundTrip() async throws {
        let nbdcopy = try TestCluster.requiredTool("nbdcopy", package: "libnbd-bin")
        let cmp = try TestCluster.requiredTool("cmp", package: "diffutils")
        let dd = try TestCluster.requiredTool("dd", package: "coreutils")
        let cluster = try TestCluster(network: .namespaces, diskBytes: 272 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)
        let input = cluster.root + "/input.img"
        let output = cluster.root + "/output.img"
        // The kernel's generator: generating 256 MiB in (unoptimised) test code would take a minute.
        try TestCluster.run(dd, [
            "if=/dev/urandom", "of=\(input)", "bs=1M", "count=256", "iflag=fullblock", "status=none",
        ])

        let copyIn = try cluster.runOnNode(alpha, nbdcopy, ["--flush", input, alpha.nbdURI])
        #expect(copyIn.status == 0, "nbdcopy to alpha: \(copyIn.standardError)")
        // A discard, as mkfs and fstrim send: 8 MiB become zeroes on both disks, as punched holes.
        let trimmed: Range<UInt64> = (64 << 20)..<(72 << 20)
        let client = try nbdClient(alpha)
        #expect(try client.trim(offset: trimmed.lowerBound, length: UInt32(trimmed.count)) == 0)
        #expect(try client.flush() == 0)
        client.disconnect()
        try TestCluster.run(dd, [
            "if=/dev/zero", "of=\(input)", "bs=1M", "seek=64", "count=8", "conv=notrunc", "status=none",
        ])
        #expect(await eventually { cluster.status(alpha)?.heldOpenBy?.isEmpty == true }, "\(cluster.describe())")
        try cluster.admOK(alpha, "secondary", "r0")
        try cluster.admOK(beta, "primary", "r0")
        // The whole device comes back; its first 256 MiB are what was written.
        let copyOut = try cluster.runOnNode(beta, nbdcopy, [beta.nbdURI, output])
        #expect(copyOut.status == 0, "nbdcopy from beta: \(copyOut.standardError)")
        let same = try ExternalCommand.run(cmp, ["-n", String(256 << 20), input, output])
        #expect(same.status == 0, "read back on beta differs: \(same.standardOutput)")
        try expectIdenticalBackingFiles(cluster)
        let onAlpha = try ExternalCommand.run(cmp, ["-n", String(256 << 20), input, alpha.disk])
        #expect(onAlpha.status == 0, "alpha's backing file holds the data at offset 0: \(onAlpha.standardOutput)")
        for node in [alpha, beta] {
            #expect(try dataAfter(node.disk, offset: trimmed.lowerBound) >= trimmed.upperBound, "\(node.name): no hole")
        }
    }

    /// SEEK_DATA: where the first allocated byte at or after `offset` is (the end of a hole that starts there).
    private func dataAfter(_ path: String, offset: UInt64) throws -> UInt64 {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let seekData: Int32 = 3
        let found = lseek(fd, off_t(offset), seekData)
        guard found >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return UInt64(found)
    }

    @Test("bitmap resync moves only what changed: 8 MiB written at random places while disconnected is what the reconnect transfers")
    func bitmapResync() async throws {
        let cluster = try TestCluster(network: .namespaces, diskBytes: 128 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)
        try cluster.admOK(alpha, "disconnect", "r0")
        // 128 distinct 64 KiB slots out of the device's first 120 MiB, in random order: exactly 8 MiB.
        var generator = SplitMix64(seed: 8)  // fixed, so that a failure replays with the same places
        let slots = Array((0..<1920).shuffled(using: &generator).prefix(128))
        let client = try nbdClient(alpha)
        for (index, slot) in slots.enumerated() {
            let error = try client.write(offset: UInt64(slot) * 65536, Self.randomBytes(65536, seed: UInt64(index)))
            #expect(error == 0)
        }
        #expect(try client.flush() == 0)
        client.disconnect()
        #expect(cluster.status(alpha)?.outOfSyncKiB == 8192, "\(cluster.describe())")

        let before = try counters(cluster, beta).networkReceivedKiB
        let sentBefore = try counters(cluster, alpha).networkSentKiB
        try cluster.admOK(alpha, "connect", "r0")
        await cluster.waitUntilInSync()
        let received = try counters(cluster, beta).networkReceivedKiB - before
        let sent = try counters(cluster, alpha).networkSentKiB - sentBefore
        let deviceKiB = try dataBytes(cluster) / 1024
        #expect(received == 8192, "beta received \(received) KiB for 8 MiB of changes (device: \(deviceKiB) KiB)")
        #expect(sent == 8192, "alpha sent \(sent) KiB")
        try expectIdenticalBackingFiles(cluster)
    }

    /// What the crash test's writer saw acknowledged.
    final class AcknowledgedBatches: Sendable {
        private let count = Mutex(0)
        private let ended = Mutex<String?>(nil)
        var acknowledged: Int { count.withLock { $0 } }
        var end: String? { ended.withLock { $0 } }
        func acknowledge() { count.withLock { $0 += 1 } }
        func finish(_ reason: String) { ended.withLock { $0 = reason } }
    }

    static let batchWrites = 8

    /// Batch `batch`'s write `index`: 4 KiB naming itself, at its own offset (batches follow each other on disk).
    static func record(batch: Int, index: Int) -> (offset: UInt64, bytes: [UInt8]) {
        let number = batch * batchWrites + index
        var bytes = Array("batch \(batch) write \(index) ".utf8)
        bytes += [UInt8](repeating: UInt8(truncatingIfNeeded: number), count: 4096 - bytes.count)
        return (UInt64(number) * 4096, bytes)
    }

    @Test("kill -9 of the Primary's daemon during an NBD write stream: every acknowledged write is on beta after promotion; alpha rejoins as SyncTarget and converges")
    func crashOfThePrimary() async throws {
        let cluster = try TestCluster(network: .namespaces, diskBytes: 64 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)
        let batches = AcknowledgedBatches()
        let socketPath = alpha.nbdSocket
        // The writer: batches of writes, FLUSH after each; a batch counts once its FLUSH is acknowledged. Bounded:
        // 1500 batches (47 MiB) at most.
        let writer = Thread {
            do {
                let client = try NBDTestClient(unixPath: socketPath, export: "r0")
                for batch in 0..<1500 {
                    for index in 0..<Self.batchWrites {
                        let record = Self.record(batch: batch, index: index)
                        guard try client.write(offset: record.offset, record.bytes) == 0 else {
                            return batches.finish("write error in batch \(batch)")
                        }
                    }
                    guard try client.flush() == 0 else { return batches.finish("flush error in batch \(batch)") }
                    batches.acknowledge()
                }
                batches.finish("all batches written before the crash")
            } catch {
                batches.finish("connection ended: \(error)")
            }
        }
        writer.start()
        #expect(await eventually { batches.acknowledged >= 40 || batches.end != nil }, "\(cluster.describe())")
        #expect(batches.end == nil, "the writer stopped early: \(batches.end ?? "")")
        #expect(await cluster.stopDaemon(alpha, signal: SIGKILL) == -SIGKILL)
        #expect(await eventually { batches.end != nil }, "the writer noticed the crash")
        let acknowledged = batches.acknowledged

        #expect(await eventually { cluster.isUpButNotConnected(beta) }, "\(cluster.describe())")
        try cluster.admOK(beta, "primary", "r0")
        let reader = try nbdClient(beta)
        for batch in 0..<acknowledged {
            for index in 0..<Self.batchWrites {
                let record = Self.record(batch: batch, index: index)
                let (error, data) = try reader.read(offset: record.offset, length: 4096)
                #expect(error == 0 && data == record.bytes, "acknowledged batch \(batch) write \(index) is on beta")
            }
        }
        reader.disconnect()

        try await cluster.startDaemon(alpha)
        try cluster.admOK(alpha, "up", "r0")
        await cluster.waitUntilInSync()
        #expect(cluster.status(alpha)?.role == "Secondary" && cluster.status(beta)?.role == "Primary")
        let alphaLog = (try? String(contentsOfFile: alpha.log, encoding: .utf8)) ?? ""
        #expect(alphaLog.contains("crashed primary"), "alpha recovered as a crashed primary")
        #expect(alphaLog.contains("Began resync as SyncTarget"), "alpha rejoined as SyncTarget")
        try expectIdenticalBackingFiles(cluster)
    }

    @Test("split brain as seed 003 section 12: cut link, promote beta, write on both; heal: both StandAlone; connect --discard-my-data on alpha and connect on beta; alpha's discarded blocks come back with restore-discarded")
    func splitBrainManualRecovery() async throws {
        let cluster = try TestCluster(network: .namespaces, diskBytes: 64 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)

        try cluster.cutLink(alpha)
        #expect(
            await eventually { cluster.nodes.allSatisfy(cluster.isUpButNotConnected) },
            "\(cluster.describe())")
        try cluster.admOK(beta, "primary", "r0")
        let alphaBytes = Self.randomBytes(64 << 10, seed: 1)
        let betaBytes = Self.randomBytes(64 << 10, seed: 2)
        let alphaClient = try nbdClient(alpha)
        #expect(try alphaClient.write(offset: 1 << 20, alphaBytes) == 0 && alphaClient.flush() == 0)
        alphaClient.disconnect()
        let betaClient = try nbdClient(beta)
        #expect(try betaClient.write(offset: 1 << 20, betaBytes) == 0)
        #expect(try betaClient.write(offset: 8 << 20, betaBytes) == 0 && betaClient.flush() == 0)
        betaClient.disconnect()

        try cluster.healLink(alpha)
        #expect(
            await eventually { cluster.nodes.allSatisfy { cluster.status($0)?.connection == "StandAlone" } },
            "both detect the split brain and stay StandAlone:\n\(cluster.describe())")
        for node in cluster.nodes {
            let log = (try? String(contentsOfFile: node.log, encoding: .utf8)) ?? ""
            #expect(log.contains("split brain detected but unresolved"), "\(node.name) logged the split brain")
        }

        try cluster.admOK(alpha, "secondary", "r0")
        try cluster.admOK(alpha, "connect", "--discard-my-data", "r0")
        try cluster.admOK(beta, "connect", "r0")
        await cluster.waitUntilInSync()
        try expectIdenticalBackingFiles(cluster)

        let listing = try cluster.admOK(alpha, "restore-discarded", "r0").standardOutput
        #expect(listing.contains("checksums ok"), "\(listing)")
        let restored = cluster.root + "/restored.img"
        try cluster.admOK(alpha, "restore-discarded", "r0", "--output", restored)
        let image = try #require(FileManager.default.contents(atPath: restored))
        #expect(Array(image[(1 << 20)..<(1 << 20) + (64 << 10)]) == alphaBytes, "alpha's discarded write is back")
        let again = try cluster.adm(alpha, "restore-discarded", "r0", "--output", restored)
        #expect(again.status == 10 && again.standardError.contains("exists"), "\(again.standardError)")
    }

    @Test("after-sb-0pri discard-zero-changes: the node that wrote nothing is resynced from the other without the operator")
    func splitBrainDiscardZeroChanges() async throws {
        let cluster = try TestCluster(
            network: .namespaces, diskBytes: 64 << 20, netOptions: "after-sb-0pri discard-zero-changes;")
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)

        try cluster.cutLink(alpha)
        #expect(
            await eventually { cluster.nodes.allSatisfy(cluster.isUpButNotConnected) },
            "\(cluster.describe())")
        // beta takes over and gives up again without writing: a new data generation with zero changes.
        try cluster.admOK(beta, "primary", "r0")
        try cluster.admOK(beta, "secondary", "r0")
        let written = Self.randomBytes(256 << 10, seed: 3)
        let client = try nbdClient(alpha)
        #expect(try client.write(offset: 4 << 20, written) == 0 && client.flush() == 0)
        client.disconnect()
        try cluster.admOK(alpha, "secondary", "r0")

        try cluster.healLink(alpha)
        await cluster.waitUntilInSync()
        let betaLog = (try? String(contentsOfFile: beta.log, encoding: .utf8)) ?? ""
        #expect(betaLog.contains("Began resync as SyncTarget"), "beta, with zero changes, was the one resynced")
        try expectIdenticalBackingFiles(cluster)
    }

    @Test("online verify finds 3 blocks corrupted on purpose in the secondary's backing file; disconnect and connect resync them")
    func onlineVerifyFindsCorruption() async throws {
        let dd = try TestCluster.requiredTool("dd", package: "coreutils")
        let cluster = try TestCluster(network: .namespaces, diskBytes: 64 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)
        let client = try nbdClient(alpha)
        #expect(try client.write(offset: 0, Self.randomBytes(1 << 20, seed: 4)) == 0 && client.flush() == 0)
        client.disconnect()

        let garbage = cluster.root + "/garbage"
        try Data(Self.randomBytes(4096, seed: 5)).write(to: URL(fileURLWithPath: garbage))
        for block in [3, 100, 9000] {
            let output = try ExternalCommand.run(dd, [
                "if=\(garbage)", "of=\(beta.disk)", "bs=4096", "seek=\(block)", "count=1", "conv=notrunc,fsync",
                "oflag=direct", "status=none",
            ])
            #expect(output.status == 0, "\(output.standardError)")
        }
        try cluster.admOK(alpha, "verify", "r0")
        #expect(
            await eventually {
                let status = cluster.status(alpha)
                return status?.connection == "Connected" && status?.verifyMismatchesKiB == 12
            }, "verify found 12 KiB out of sync:\n\(cluster.describe())")
        #expect(try cluster.admOK(alpha, "proc", "r0").standardOutput.contains("oos:12"))
        try cluster.admOK(alpha, "disconnect", "r0")
        try cluster.admOK(alpha, "connect", "r0")
        await cluster.waitUntilInSync()
        try expectIdenticalBackingFiles(cluster)
    }

    @Test("a wrong shared-secret is refused with a logged reason, and never connects")
    func wrongSharedSecret() async throws {
        let cluster = try TestCluster(
            network: .namespaces, netOptions: "cram-hmac-alg sha1;",
            nodeNetOptions: ["shared-secret \"alpha-secret\";", "shared-secret \"not-alpha-secret\";"])
        defer { cluster.tearDown() }
        for node in cluster.nodes { try await cluster.startDaemon(node) }
        for node in cluster.nodes { try cluster.admOK(node, "create-md", "r0") }
        for node in cluster.nodes { try cluster.admOK(node, "up", "r0") }
        #expect(
            await eventually {
                cluster.nodes.contains { node in
                    ((try? String(contentsOfFile: node.log, encoding: .utf8)) ?? "")
                        .contains("authentication of the peer failed")
                }
            }, "the refusal is logged:\n\(cluster.describe())")
        #expect(cluster.nodes.allSatisfy(cluster.isUpButNotConnected), "\(cluster.describe())")
    }

    @Test("mismatched protocols between the nodes are refused with a logged reason")
    func mismatchedProtocols() async throws {
        let cluster = try TestCluster(network: .namespaces, protocols: ["C", "A"])
        defer { cluster.tearDown() }
        for node in cluster.nodes { try await cluster.startDaemon(node) }
        for node in cluster.nodes { try cluster.admOK(node, "create-md", "r0") }
        for node in cluster.nodes { try cluster.admOK(node, "up", "r0") }
        #expect(
            await eventually {
                cluster.nodes.contains { node in
                    let log = (try? String(contentsOfFile: node.log, encoding: .utf8)) ?? ""
                    return log.contains("incompatible protocol settings")
                }
            }, "the refusal is logged:\n\(cluster.describe())")
        #expect(cluster.nodes.allSatisfy(cluster.isUpButNotConnected), "\(cluster.describe())")
    }

    @Test("garbage sent to the replication port and to the NBD TCP port is dropped; the daemon keeps replicating")
    func garbageToThePorts() async throws {
        let bash = try TestCluster.requiredTool("bash", package: "bash")
        let cluster = try TestCluster(network: .namespaces, diskBytes: 32 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip, daemonArguments: [["--nbd-tcp", "r0=10.213.0.1:10809"], []])
        #expect(cluster.status(alpha)?.nbdExports?.contains("nbd://10.213.0.1:10809/r0") == true)
        // From beta's namespace, 64 KiB of random bytes to each port, five times each; bounded by count.
        let script = """
            for port in 7789 10809; do
              for attempt in 1 2 3 4 5; do
                head -c 65536 /dev/urandom > /dev/tcp/10.213.0.1/$port 2>/dev/null || true
              done
            done
            """
        let sent = try cluster.runOnNode(beta, bash, ["-c", script])
        #expect(sent.status == 0, "\(sent.standardError)")
        #expect(
            await eventually { cluster.nodes.allSatisfy { cluster.status($0)?.connection == "Connected" } },
            "still (or again) connected:\n\(cluster.describe())")
        let bytes = Self.randomBytes(64 << 10, seed: 6)
        let client = try nbdClient(alpha)
        #expect(try client.write(offset: 0, bytes) == 0 && client.flush() == 0)
        client.disconnect()
        await cluster.waitUntilInSync()
        try expectIdenticalBackingFiles(cluster)
    }

    @Test("secondary and down fail with a clear message while an NBD client holds the export, and succeed once it leaves")
    func secondaryWhileHeld() async throws {
        let cluster = try TestCluster(network: .namespaces, diskBytes: 32 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)
        let client = try nbdClient(alpha)
        #expect(await eventually { cluster.status(alpha)?.heldOpenBy?.isEmpty == false }, "\(cluster.describe())")
        let holder = "NBD client pid \(getpid())"
        let secondary = try cluster.adm(alpha, "secondary", "r0")
        #expect(
            secondary.status == 10 && secondary.standardError.contains("held open by \(holder)"),
            "\(secondary.standardError)")
        let down = try cluster.adm(alpha, "down", "r0")
        #expect(down.status == 10 && down.standardError.contains("held open by"), "\(down.standardError)")
        #expect(cluster.status(alpha)?.role == "Primary", "nothing changed")
        // On the Secondary the export refuses new clients, as DRBD refuses to open a Secondary's device.
        #expect(throws: NBDTestClient.Failure.self) { try NBDTestClient(unixPath: beta.nbdSocket, export: "r0") }
        client.disconnect()
        #expect(await eventually { cluster.status(alpha)?.heldOpenBy?.isEmpty == true }, "\(cluster.describe())")
        try cluster.admOK(alpha, "secondary", "r0")
    }
}
