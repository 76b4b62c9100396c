#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DeviceFrontend
import Dispatch
import Foundation
import Synchronization
import TandemTestSupport
import Testing

/// A device in memory behind the FUSE file. Completions come from another thread, as the replication engine's do.
final class MemoryBlockFile: BlockFileBackend {
    let bytes: Mutex<[UInt8]>
    let flushes = Atomic<Int>(0)
    let zeroedBytes = Atomic<Int>(0)
    private let completions = DispatchQueue(label: "tandem.test.memory-block-file")

    init(sizeBytes: Int) { bytes = Mutex([UInt8](repeating: 0, count: sizeBytes)) }

    func read(offset: UInt64, length: UInt32, completion: @escaping @Sendable (Int32, [UInt8]) -> Void) {
        let data = bytes.withLock { bytes in
            bytes.withUnsafeBytes { [UInt8](UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + Int(length)])) }
        }
        completions.async { completion(0, data) }
    }

    // Byte copies through raw pointers: element-wise array operations over 64 MiB are slow in debug builds, and
    // mkfs discards and writes the whole device.
    func write(offset: UInt64, bytes data: [UInt8], completion: @escaping @Sendable (Int32) -> Void) {
        bytes.withLock { bytes in
            bytes.withUnsafeMutableBytes { target in
                data.withUnsafeBytes { target.baseAddress!.advanced(by: Int(offset)).copyMemory(from: $0.baseAddress!, byteCount: data.count) }
            }
        }
        completions.async { completion(0) }
    }

    func flush(completion: @escaping @Sendable (Int32) -> Void) {
        flushes.add(1, ordering: .relaxed)
        completions.async { completion(0) }
    }

    func zero(offset: UInt64, length: UInt32, completion: @escaping @Sendable (Int32) -> Void) {
        bytes.withLock { bytes in
            bytes.withUnsafeMutableBytes { _ = memset($0.baseAddress!.advanced(by: Int(offset)), 0, Int(length)) }
        }
        zeroedBytes.add(Int(length), ordering: .relaxed)
        completions.async { completion(0) }
    }
}

/// The FUSE block file against the real kernel: these need root and /dev/fuse, which CI has; they fail, not skip,
/// without them.
@Suite("FUSE block file", .serialized)
struct FuseBlockFileTests {
    static let sizeBytes = 64 << 20

    /// Mounts a server on a fresh directory, runs `body`, then stops it and checks the mount is gone.
    func withServer(_ body: (FuseBlockFileServer, MemoryBlockFile) async throws -> Void) async throws {
        var template = Array("/tmp/tandem-fuse-XXXXXX".utf8CString)
        guard let directory = mkdtemp(&template) else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        let mountpoint = String(cString: directory)
        defer { rmdir(mountpoint) }
        let controlMountedBefore = try Self.mountTable().contains(" - fusectl ")
        let backend = MemoryBlockFile(sizeBytes: Self.sizeBytes)
        let server = try FuseBlockFileServer(
            options: .init(mountpoint: mountpoint, fileName: "r0", sizeBytes: UInt64(Self.sizeBytes)), backend: backend)
        try server.start()
        do {
            try await body(server, backend)
        } catch {
            server.stop()
            throw error
        }
        server.stop()
        let mounts = try Self.mountTable()
        #expect(!mounts.contains(" \(mountpoint) "), "the FUSE mount is gone after stop")
        #expect(mounts.contains(" - fusectl ") == controlMountedBefore, "fusectl is left as it was found")
    }

    static func mountTable() throws -> String { try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) }

    @Test("reads, writes, fsync and a punched hole reach the backend; truncation is refused")
    func fileOperations() async throws {
        let fallocate = try #require(ExternalCommand.tool("fallocate"), "fallocate (util-linux) is required")
        let truncate = try #require(ExternalCommand.tool("truncate"), "truncate (coreutils) is required")
        try await withServer { server, backend in
            var info = stat()
            #expect(stat(server.filePath, &info) == 0)
            #expect(info.st_size == off_t(Self.sizeBytes))

            let data = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
            let fd = open(server.filePath, O_RDWR)
            #expect(fd >= 0, "open: errno \(errno)")
            defer { close(fd) }
            #expect(data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 4 << 20) } == data.count)
            #expect(fsync(fd) == 0)
            #expect(backend.flushes.load(ordering: .relaxed) >= 1, "fsync became a backend flush")
            #expect(server.flushesCompleted >= 1)
            var readBack = [UInt8](repeating: 0, count: data.count)
            #expect(readBack.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 4 << 20) } == data.count)
            #expect(readBack == data)
            #expect(backend.bytes.withLock { Array($0[(4 << 20)..<(5 << 20)]) } == data)

            let hole = try ExternalCommand.run(fallocate, ["-p", "-o", String((4 << 20) + (256 << 10)), "-l", String(512 << 10), server.filePath])
            #expect(hole.status == 0, "fallocate -p: \(hole.standardError)")
            #expect(backend.zeroedBytes.load(ordering: .relaxed) == 512 << 10)
            let after = backend.bytes.withLock { Array($0[(4 << 20)..<(5 << 20)]) }
            #expect(after[0..<(256 << 10)] == data[0..<(256 << 10)])
            #expect(after[(256 << 10)..<(768 << 10)].allSatisfy { $0 == 0 })
            #expect(after[(768 << 10)...] == data[(768 << 10)...])

            let shrink = try ExternalCommand.run(truncate, ["-s", "1M", server.filePath])
            #expect(shrink.status != 0, "truncating the device file must fail")
            #expect(stat(server.filePath, &info) == 0 && info.st_size == off_t(Self.sizeBytes))
        }
    }

    @Test("a loop device with direct I/O on the FUSE file carries ext4: mkfs discards, mount, write, umount, fsck clean")
    func loopDeviceWithExt4() async throws {
        let unshare = try #require(ExternalCommand.tool("unshare"), "unshare (util-linux) is required")
        for tool in ["losetup", "mkfs.ext4", "e2fsck", "mount", "umount"] {
            _ = try #require(ExternalCommand.tool(tool), "\(tool) is required")
        }
        try await withServer { server, backend in
            let mountpoint = server.options.mountpoint + "-ext4"
            // The filesystem lives in a private mount namespace, so that no other namespace keeps a copy of it.
            let script = """
                set -eu
                device=$(losetup --direct-io=on --find --show '\(server.filePath)')
                trap 'umount -q "\(mountpoint)" 2>/dev/null || true; losetup -d "$device"; rmdir "\(mountpoint)"' EXIT
                dio=$(losetup --list --noheadings --output DIO "$device" | tr -d ' ')
                [ "$dio" = 1 ] || { echo "loop direct I/O is off on $device" >&2; exit 3; }
                mkfs.ext4 -q -F "$device"
                mkdir -p '\(mountpoint)'
                mount "$device" '\(mountpoint)'
                echo 'the replicated file system' > '\(mountpoint)/hello'
                sync -f '\(mountpoint)/hello'
                umount '\(mountpoint)'
                e2fsck -fn "$device"
                """
            let run = try await ExternalCommand.runDetached(unshare, ["--mount", "--propagation", "private", "/bin/sh", "-c", script])
            #expect(run.status == 0, "stdout: \(run.standardOutput)\nstderr: \(run.standardError)")
            #expect(backend.zeroedBytes.load(ordering: .relaxed) > 0, "mkfs.ext4's discard became zeroing requests")
            #expect(backend.flushes.load(ordering: .relaxed) > 0, "the journal's flushes reached the backend")
        }
    }

    @Test("LoopDevice on a file whose FUSE server died, once the attribute cache expired: the tag is hidden (backingFileServerGone) but the device is still attached, its backing file named, and it detaches")
    func loopDeviceOnDeadServer() throws {
        var template = Array("/tmp/tandem-fuse-XXXXXX".utf8CString)
        guard let directory = mkdtemp(&template) else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        let mountpoint = String(cString: directory)
        defer { rmdir(mountpoint) }
        var options = FuseBlockFileServer.Options(mountpoint: mountpoint, fileName: "r0", sizeBytes: UInt64(Self.sizeBytes))
        options.attributeCacheSeconds = 0
        let server = try FuseBlockFileServer(options: options, backend: MemoryBlockFile(sizeBytes: Self.sizeBytes))
        try server.start()
        let tag = "tandem:test-dead:\(getpid())"
        let loop: LoopDevice
        do {
            loop = try LoopDevice.attach(filePath: server.filePath, tag: tag)
        } catch {
            server.stop()
            throw error
        }
        defer { try? loop.detach() }
        #expect(loop.recordedTag == .tag(tag))
        // What a replicad killed with SIGKILL leaves: the connection aborted, the loop device still on the file.
        server.stop()
        #expect(loop.recordedTag == .backingFileServerGone)
        #expect(loop.tag == nil)
        #expect(LoopDevice.attached(taggedWith: tag).isEmpty, "the tag cannot find it: the daemon's links must")
        #expect(loop.backingFile.map { ($0 as NSString).lastPathComponent } == "r0")
        try loop.detach()
        #expect(loop.backingFile == nil)
        #expect(loop.recordedTag == .none)
    }

    @Test("LoopDevice: attached with direct I/O and its tag; a detach while held is refused and leaves no autoclear; holders name the process; detached for real once let go")
    func loopDeviceAttachDetach() async throws {
        try await withServer { server, _ in
            let tag = "tandem:test:\(getpid())"
            let loop = try LoopDevice.attach(filePath: server.filePath, tag: tag)
            defer { try? loop.detach() }
            #expect(loop.usesDirectIO)
            #expect(loop.tag == tag)
            #expect(LoopDevice.attached(taggedWith: tag) == [loop])
            let number = try #require(loop.deviceNumber)
            #expect(DeviceHolders.find(devicePath: loop.path, deviceNumber: number).isEmpty)

            // A process of ours (not the test process) holds the device open.
            let holder = Process()
            holder.executableURL = URL(fileURLWithPath: "/bin/sh")
            holder.arguments = ["-c", "exec sleep 60 < \(loop.path)"]
            try holder.run()
            defer {
                kill(holder.processIdentifier, SIGKILL)
                holder.waitUntilExit()
            }
            let deadline = ContinuousClock.now + .seconds(10)
            var holders: [DeviceHolder] = []
            while holders.isEmpty && ContinuousClock.now < deadline {
                usleep(20_000)
                holders = DeviceHolders.find(devicePath: loop.path, deviceNumber: number)
            }
            #expect(holders.contains(DeviceHolder(kind: .openFile, pid: holder.processIdentifier, command: "sleep")), "\(holders)")
            #expect(throws: LoopError.self) { try loop.detach() }
            #expect(loop.backingFile != nil, "still attached while held")
            #expect(!loop.detachesOnLastClose, "the refused detach left no autoclear behind")

            kill(holder.processIdentifier, SIGKILL)
            holder.waitUntilExit()
            try loop.detach()
            #expect(loop.backingFile == nil)
            #expect(LoopDevice.attached(taggedWith: tag).isEmpty)
        }
    }

    @Test("mountinfo lines parse, with octal escapes in paths; malformed lines are skipped")
    func mountInfoParsing() {
        let line = "36 35 7:3 / /mnt/with\\040space\\134x rw,relatime shared:1 - ext4 /dev/loop3 rw"
        let entry = MountEntry(line: Substring(line))
        #expect(entry?.device == "7:3")
        #expect(entry?.minor == 3)
        #expect(entry?.mountPoint == "/mnt/with space\\x")
        #expect(entry?.fileSystemType == "ext4")
        #expect(entry?.source == "/dev/loop3")
        #expect(MountEntry(line: "36 35 7:3 / /mnt rw") == nil)
        #expect(MountEntry(line: "") == nil)
    }
}
