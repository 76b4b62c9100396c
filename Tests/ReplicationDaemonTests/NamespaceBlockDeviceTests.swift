#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DeviceFrontend
import Foundation
@testable import ReplicationDaemon
import TandemTestSupport
import Testing

/// The replicated resource as a Linux block device (FUSE file + loop device with direct I/O), driven as the seeds
/// drive /dev/drbd0: mkfs, mount, role switches, a daemon killed under a file system. Every mount happens in a
/// private mount namespace inside a node's network namespace, as a cluster manager's would. Needs root, FUSE, loop
/// devices, util-linux, e2fsprogs and xfsprogs (CI installs them); a missing one fails the test.
extension NamespaceClusterTests {
    /// A shell script run on `node` in a private mount namespace; returns its output, failing the test on a
    /// non-zero exit.
    @discardableResult
    func onNodePrivately(
        _ cluster: TestCluster, _ node: TestCluster.Node, _ script: String, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> String {
        let unshare = try TestCluster.requiredTool("unshare", package: "util-linux")
        let (program, arguments) = cluster.onNode(node, unshare, ["--mount", "--propagation", "private", "sh", "-euc", script])
        let output = try await ExternalCommand.runDetached(program, arguments)
        #expect(
            output.status == 0, "script on \(node.name) failed (\(output.status)):\n\(output.standardOutput)\(output.standardError)",
            sourceLocation: sourceLocation)
        return output.standardOutput
    }

    /// Starts `script` on `node` in a private mount namespace in the background; it should end with `exec sleep`,
    /// so that the returned process (by PID) is what holds the namespace and its mounts.
    func startHolder(_ cluster: TestCluster, _ node: TestCluster.Node, _ script: String) throws -> Process {
        let unshare = try TestCluster.requiredTool("unshare", package: "util-linux")
        let (program, arguments) = cluster.onNode(node, unshare, ["--mount", "--propagation", "private", "sh", "-euc", script])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    func endHolder(_ process: Process) {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// mkfs for `fileSystem`, quiet and without questions.
    static func mkfs(_ fileSystem: String) -> String {
        fileSystem == "xfs" ? "mkfs.xfs -q -f" : "mkfs.ext4 -q -F"
    }

    /// mkfs and fsck for `fileSystem` must be installed.
    static func requireTools(_ fileSystem: String) throws {
        for tool in [fileSystem == "xfs" ? "mkfs.xfs" : "mkfs.ext4", fileSystem == "xfs" ? "xfs_repair" : "e2fsck"] {
            _ = try TestCluster.requiredTool(tool, package: fileSystem == "xfs" ? "xfsprogs" : "e2fsprogs")
        }
    }

    /// The read-only check for `fileSystem` on an unmounted device: exit 0 only when clean.
    static func fsckReadOnly(_ fileSystem: String) -> String {
        fileSystem == "xfs" ? "xfs_repair -n" : "e2fsck -fn"
    }

    @Test(
        "the seeds' manual switchover on the block device: mkfs, mount and files on alpha; secondary and down refused while mounted, naming the mount; umount, secondary on alpha, primary on beta, files there and fsck clean",
        arguments: ["ext4", "xfs"])
    func switchover(fileSystem: String) async throws {
        try Self.requireTools(fileSystem)
        let cluster = try TestCluster(network: .namespaces, diskBytes: 320 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)
        let device = try #require(cluster.status(alpha)?.blockDevice, "alpha is Primary: its block device is attached")
        #expect(device.directIO, "the loop device does direct I/O to the FUSE file")
        #expect(device.links.contains(alpha.deviceLink))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: alpha.deviceLink) == device.loopDevice)
        #expect(cluster.status(beta)?.blockDevice == nil, "a Secondary has no block device")

        let mountpoint = cluster.root + "/mnt-alpha"
        let ready = cluster.root + "/mounted"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        let holder = try startHolder(cluster, alpha, """
            \(Self.mkfs(fileSystem)) \(alpha.deviceLink)
            mount \(alpha.deviceLink) \(mountpoint)
            for i in $(seq 1 40); do head -c 100000 /dev/urandom > \(mountpoint)/file-$i; done
            (cd \(mountpoint) && sha256sum file-* > \(cluster.root)/sums)
            sync
            touch \(ready)
            exec sleep 300
            """)
        defer { endHolder(holder) }
        #expect(await eventually(timeout: .seconds(120)) { FileManager.default.fileExists(atPath: ready) || !holder.isRunning })
        try #require(holder.isRunning, "mkfs and mount on alpha")

        for verb in ["secondary", "down"] {
            let refused = try cluster.adm(alpha, verb, "r0")
            #expect(refused.status == 10, "\(verb) while mounted is refused: \(refused.standardError)")
            #expect(refused.standardError.contains("mounted at \(mountpoint)"), "\(verb) names the mount: \(refused.standardError)")
            #expect(refused.standardError.contains("pid \(holder.processIdentifier)"), "and its process: \(refused.standardError)")
        }
        #expect(cluster.status(alpha)?.role == "Primary", "the refusals changed nothing")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: alpha.deviceLink) == device.loopDevice)

        endHolder(holder)  // The namespace goes, and with it the mount.
        try cluster.admOK(alpha, "secondary", "r0")
        #expect(!FileManager.default.fileExists(atPath: alpha.deviceLink), "the device link is gone after secondary")
        // By alpha's tag and file, not by number: the kernel may give the freed number to a test running alongside.
        let loopNumber = try #require(Int32(device.loopDevice.dropFirst("/dev/loop".count)))
        #expect(LoopDevice.attached(taggedWith: blockDevicePaths(alpha).loopTag).isEmpty, "the loop device is really detached")
        #expect(LoopDevice(number: loopNumber).backingFile != blockDevicePaths(alpha).filePath)

        try cluster.admOK(beta, "primary", "r0")
        let betaDevice = try #require(cluster.status(beta)?.blockDevice)
        #expect(betaDevice.directIO)
        let betaMount = cluster.root + "/mnt-beta"
        try FileManager.default.createDirectory(atPath: betaMount, withIntermediateDirectories: true)
        try await onNodePrivately(cluster, beta, """
            mount \(beta.deviceLink) \(betaMount)
            cd \(betaMount)
            sha256sum -c --quiet \(cluster.root)/sums
            cd /
            umount \(betaMount)
            \(Self.fsckReadOnly(fileSystem)) \(beta.deviceLink)
            """)
        try cluster.admOK(beta, "secondary", "r0")
        for node in cluster.nodes { try cluster.admOK(node, "down", "r0") }
    }

    @Test(
        "durability through the whole stack: numbered batches fsynced on alpha's file system, replicad on alpha killed (SIGKILL) mid-run; on beta every batch whose fsync returned is there and fsck is clean; alpha's next up clears its stale loop device",
        arguments: ["ext4", "xfs"])
    func killedPrimaryKeepsFsyncedBatches(fileSystem: String) async throws {
        try Self.requireTools(fileSystem)
        // 320 MiB: xfs needs at least 300.
        let cluster = try TestCluster(network: .namespaces, diskBytes: 320 << 20)
        defer { cluster.tearDown() }
        let (alpha, beta) = (cluster.alpha, cluster.beta)
        try await setUp(cluster, .skip)
        let flushesBefore = try #require(cluster.status(beta)?.counters?.diskFlushes)
        let mountpoint = cluster.root + "/mnt-alpha"
        let acked = cluster.root + "/acked"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        // `sync FILE DIR` fsyncs both: the batch's data and its directory entry. A batch is acknowledged only after
        // that returned. Bounded: at most 3000 batches.
        let writer = try startHolder(cluster, alpha, """
            \(Self.mkfs(fileSystem)) \(alpha.deviceLink)
            mount \(alpha.deviceLink) \(mountpoint)
            i=0
            while [ $i -lt 3000 ]; do
              i=$((i + 1))
              seq -f "batch $i line %g" 1 300 > \(mountpoint)/batch-$i || exit 0
              sync \(mountpoint)/batch-$i \(mountpoint) || exit 0
              echo $i >> \(acked)
            done
            exec sleep 300
            """)
        defer { endHolder(writer) }
        func ackedCount() -> Int {
            ((try? String(contentsOfFile: acked, encoding: .utf8)) ?? "").split(separator: "\n").count
        }
        #expect(await eventually(timeout: .seconds(120)) { ackedCount() >= 40 || !writer.isRunning }, "the writer makes progress")
        let fuseFlushes = try #require(cluster.status(alpha)?.blockDevice?.flushesCompleted)
        let peerFlushes = try #require(cluster.status(beta)?.counters?.diskFlushes) - flushesBefore
        #expect(fuseFlushes > 0 && peerFlushes >= fuseFlushes, "each fsync at alpha's FUSE file (\(fuseFlushes)) flushed beta's disk (\(peerFlushes))")

        _ = await cluster.stopDaemon(alpha, signal: SIGKILL)
        #expect(await eventually(timeout: .seconds(30)) { !writer.isRunning }, "the writer's I/O fails at once without its daemon")
        endHolder(writer)
        let acknowledged = ackedCount()
        #expect(await eventually { cluster.status(beta)?.connection != "Connected" })
        try cluster.admOK(beta, "primary", "r0")
        let betaMount = cluster.root + "/mnt-beta"
        try FileManager.default.createDirectory(atPath: betaMount, withIntermediateDirectories: true)
        try await onNodePrivately(cluster, beta, """
            mount \(beta.deviceLink) \(betaMount)
            for i in $(cat \(acked)); do
              seq -f "batch $i line %g" 1 300 | cmp -s - \(betaMount)/batch-$i || { echo "batch $i is missing or wrong"; exit 1; }
            done
            umount \(betaMount)
            \(Self.fsckReadOnly(fileSystem)) \(beta.deviceLink)
            """)
        #expect(acknowledged >= 40, "\(acknowledged) batches acknowledged before the kill")

        // alpha's daemon died holding a loop device on its FUSE file; up clears it.
        try await cluster.startDaemon(alpha)
        try cluster.admOK(alpha, "up", "r0")
        let tag = blockDevicePaths(alpha).loopTag
        #expect(LoopDevice.attached(taggedWith: tag).isEmpty, "no loop device of alpha's is left")
        #expect(cluster.logText(alpha).contains("left over from a replicad that stopped"), "\(cluster.logText(alpha))")
        try cluster.admOK(beta, "secondary", "r0")
    }

    @Test("mkfs.ext4 on a 4 GiB replicated device discards by punching holes: both backing files stay sparse")
    func mkfsOnLargeDeviceStaysSparse() async throws {
        let cluster = try TestCluster(network: .namespaces, diskBytes: 4 << 30)
        defer { cluster.tearDown() }
        try await setUp(cluster, .skip)
        let started = ContinuousClock.now
        try await onNodePrivately(cluster, cluster.alpha, "mkfs.ext4 -q -F -E lazy_itable_init=1 \(cluster.alpha.deviceLink)")
        print("mkfs.ext4 on 4 GiB took \(ContinuousClock.now - started)")
        await cluster.waitUntilInSync()
        for node in cluster.nodes {
            var info = stat()
            #expect(stat(node.disk, &info) == 0)
            let allocatedBytes = Int(info.st_blocks) * 512
            #expect(allocatedBytes < 512 << 20, "\(node.name): \(allocatedBytes >> 20) MiB allocated; a zero-filled device would be 4096")
        }
    }

    @Test("primary undoes itself when the device link's path is taken by something that is not Tandem's: refused with the reason, still Secondary, the file untouched")
    func primaryRefusedWhenTheDevicePathIsTaken() async throws {
        let cluster = try TestCluster(network: .namespaces, diskBytes: 64 << 20)
        defer { cluster.tearDown() }
        let alpha = cluster.alpha
        try await setUp(cluster, .skip)
        try cluster.admOK(alpha, "secondary", "r0")
        try FileManager.default.createDirectory(
            atPath: (alpha.deviceLink as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try "not a device".write(toFile: alpha.deviceLink, atomically: false, encoding: .utf8)
        let refused = try cluster.adm(alpha, "primary", "r0")
        #expect(refused.status == 10, "\(refused.standardError)")
        #expect(refused.standardError.contains("\(alpha.deviceLink) exists and is not a link"), "\(refused.standardError)")
        #expect(refused.standardError.contains("so it is Secondary again"), "\(refused.standardError)")
        #expect(cluster.status(alpha)?.role == "Secondary")
        #expect(cluster.status(alpha)?.blockDevice == nil)
        #expect(try String(contentsOfFile: alpha.deviceLink, encoding: .utf8) == "not a device")
        try FileManager.default.removeItem(atPath: alpha.deviceLink)
        try cluster.admOK(alpha, "primary", "r0")
        #expect(cluster.status(alpha)?.blockDevice != nil)
        try cluster.admOK(alpha, "secondary", "r0")
    }

    func blockDevicePaths(_ node: TestCluster.Node) -> BlockDevicePaths {
        BlockDevicePaths(resourceName: "r0", devicePath: "/dev/drbd0", nodeName: node.name, backingDisk: node.disk, runDirectory: node.runDirectory, linkRoot: node.deviceLinkRoot)
    }
}
