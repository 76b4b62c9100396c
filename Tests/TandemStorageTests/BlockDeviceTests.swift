import Foundation
import ReplicationCore
import Testing

@testable import TandemStorage

/// Runs only when `TANDEM_TEST_BLOCK_DEVICE` names a block device whose contents may be destroyed, for example a loop
/// device made for the purpose (as root):
///
///     truncate -s 64M /tmp/scratch.img
///     export TANDEM_TEST_BLOCK_DEVICE=$(losetup --find --show --sector-size 4096 /tmp/scratch.img)
///     swift test --filter TandemStorageTests
///     losetup -d $TANDEM_TEST_BLOCK_DEVICE
@Suite("Block device (opt-in)", .serialized, .enabled(if: ProcessInfo.processInfo.environment["TANDEM_TEST_BLOCK_DEVICE"] != nil))
struct BlockDeviceTests {
    var devicePath: String { ProcessInfo.processInfo.environment["TANDEM_TEST_BLOCK_DEVICE"]! }

    @Test("a block device: BLKGETSIZE64 size, BLKSSZGET alignment, exclusive claim, direct and unaligned I/O")
    func blockDevice() throws {
        let recorder = CompletionRecorder()
        let store = try FileBlockStore(
            path: devicePath, options: .init(directIO: .required), log: { _ in }, completions: recorder.sink)
        defer { store.close() }
        #expect(store.isBlockDevice)
        #expect(store.deviceSizeBytes > 0)
        guard case .direct(let alignmentBytes) = store.ioMode else {
            Issue.record("required policy opened \(store.ioMode)")
            return
        }
        #expect([512, 4096].contains(alignmentBytes))
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
        #expect(store.unalignedRequestCount == (alignmentBytes > 512 ? 2 : 0))
    }

    @Test("internal metadata on a block device: create-md, recover, dump")
    func metadataOnBlockDevice() throws {
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
