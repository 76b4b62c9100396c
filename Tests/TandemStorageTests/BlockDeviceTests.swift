import Foundation
import ReplicationCore
import TandemTestSupport
import Testing

@testable import TandemStorage

/// On a real block device: a loop device with 4 KiB sectors over a scratch file, made by the test itself (root is
/// required, as in CI; without it the test fails rather than skipping) and detached afterwards.
@Suite("Block device (loop device)", .serialized)
struct BlockDeviceTests {
    /// A scratch loop device, detached and deleted by `remove()`.
    struct ScratchLoopDevice {
        let directory: TemporaryDirectory
        let path: String

        init() throws {
            try #require(getuid() == 0, "this test attaches a loop device and needs root (CI runs as root)")
            directory = try TemporaryDirectory()
            let image = directory.file("scratch.img")
            try #require(FileManager.default.createFile(atPath: image, contents: nil))
            try #require(truncate(image, 64 << 20) == 0, "cannot size \(image)")
            let attached = try ExternalCommand.run(
                "/usr/sbin/losetup", ["--find", "--show", "--sector-size", "4096", image])
            try #require(attached.status == 0, "losetup failed: \(attached.standardError)")
            path = attached.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        func remove() {
            _ = try? ExternalCommand.run("/usr/sbin/losetup", ["-d", path])
            directory.remove()
        }
    }

    @Test("a block device: BLKGETSIZE64 size, BLKSSZGET alignment, exclusive claim, direct and unaligned I/O")
    func blockDevice() throws {
        let device = try ScratchLoopDevice()
        defer { device.remove() }
        let devicePath = device.path
        let recorder = CompletionRecorder()
        let store = try FileBlockStore(
            path: devicePath, options: .init(directIO: .required), log: { _ in }, completions: recorder.sink)
        defer { store.close() }
        #expect(store.isBlockDevice)
        #expect(store.deviceSizeBytes == 64 << 20, "BLKGETSIZE64 of the 64 MiB loop device")
        guard case .direct(let alignmentBytes) = store.ioMode else {
            Issue.record("required policy opened \(store.ioMode)")
            return
        }
        #expect(alignmentBytes == 4096, "BLKSSZGET of a loop device attached with --sector-size 4096")
        let busy = #expect(throws: StorageError.self) {
            try FileBlockStore(path: devicePath, log: { _ in }, completions: recorder.sink)
        }
        #expect(busy?.errnoValue == EBUSY)

        let aligned = pattern(sizeBytes: 8192, seed: 21)
        store.submitWrite(token: 1, range: range(offsetBytes: 8192, sizeBytes: 8192), payload: aligned, forceUnitAccess: true)
        let small = pattern(sizeBytes: 512, seed: 22)
        store.submitWrite(token: 2, range: range(offsetBytes: 512, sizeBytes: 512), payload: small, forceUnitAccess: false)
        #expect(try recorder.wait(for: [1, 2]) == [1: .written, 2: .written])
        store.submitFlush(token: 3)
        store.submitRead(token: 4, range: range(offsetBytes: 8192, sizeBytes: 8192))
        store.submitRead(token: 5, range: range(offsetBytes: 512, sizeBytes: 512))
        let results = try recorder.wait(for: [3, 4, 5])
        #expect(results == [3: .flushed, 4: .read(aligned), 5: .read(small)])
        #expect(store.unalignedRequestCount == 2, "the 512-byte write and read are unaligned for 4096-byte sectors")
    }

    @Test("internal metadata on a block device: create-md, recover, dump")
    func metadataOnBlockDevice() throws {
        let device = try ScratchLoopDevice()
        defer { device.remove() }
        let devicePath = device.path
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let configuration = FileMetadataStore.Configuration(
            resourceName: "r0", dataPath: devicePath, preserveDirectory: directory.file("preserved"))
        let store = try FileMetadataStore(configuration: configuration, environment: StorageEnvironment(log: { _ in }))
        let report = try store.create(force: true)
        let recovered = try FileMetadataStore(configuration: configuration, environment: StorageEnvironment(log: { _ in }))
            .recover()
        #expect(recovered.superblock.uuids == .created)
        #expect(recovered.sizeBytes == report.layout.usableDataBytes)
        #expect(store.dump().contains("bits set"))
    }
}
