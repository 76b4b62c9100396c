import Foundation
import ReplicationCore
import TandemConfig
import TandemDrivers
import Testing

@testable import TandemStorage

@Suite("FileMetadataStore")
struct FileMetadataStoreTests {
    static let dataBytes: UInt64 = 8 << 20

    static func environment(log: LogRecorder = LogRecorder(), freeBytes: UInt64? = nil) -> StorageEnvironment {
        var environment = StorageEnvironment(log: log.sink)
        environment.randomUInt64 = { 0x1234_5678_9ABC_DEF0 }
        environment.wallClockNanoseconds = { 1_700_000_000_123_456_789 }
        if let freeBytes { environment.freeBytes = { _ throws(StorageError) in freeBytes } }
        return environment
    }

    static func configuration(
        _ directory: TemporaryDirectory, metaDisk: DrbdMetaDisk = .internal
    ) -> FileMetadataStore.Configuration {
        FileMetadataStore.Configuration(
            resourceName: "r0", dataPath: directory.file("data"), metaDisk: metaDisk,
            activityLogExtents: 61, activityLogSlots: 8, preserveDirectory: directory.file("preserved/r0"))
    }

    static func open(
        _ directory: TemporaryDirectory, metaDisk: DrbdMetaDisk = .internal,
        environment: StorageEnvironment = environment()
    ) throws -> FileMetadataStore {
        try FileMetadataStore(configuration: configuration(directory, metaDisk: metaDisk), environment: environment)
    }

    @Test("create-md then recover gives the just-created UUIDs, an empty bitmap and an empty activity log")
    func createThenRecover() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let log = LogRecorder()
        let store = try Self.open(directory, environment: Self.environment(log: log))
        let report = try store.create(force: false)
        #expect(report.overwritten == nil)
        #expect(report.deviceUUID == 0x1234_5678_9ABC_DEF0)
        #expect(report.layout.usableDataBytes < Self.dataBytes)
        #expect(store.dataSizeBytes == report.layout.usableDataBytes)
        #expect(log.all.contains { $0.contains("created metadata") })
        store.close()

        let reopened = try Self.open(directory)
        let recovered = try reopened.recover()
        #expect(recovered.superblock.uuids == .created)
        #expect(recovered.superblock.uuids.current == GenerationUUIDs.justCreated)
        #expect(recovered.superblock.flags == [.activityLogClean])
        #expect(recovered.superblock.agreedSizeBytes == 0)
        #expect(!recovered.wasUnclean)
        #expect(recovered.sizeBytes == report.layout.usableDataBytes)
        #expect(recovered.bitmapWords.count == Int((recovered.sizeBytes / 4096 + 63) / 64))
        #expect(recovered.bitmapWords.allSatisfy { $0 == 0 })
        #expect(recovered.activityLog.hotExtents.isEmpty)
        #expect(recovered.activityLog.capacityExtents == 61)
        #expect(recovered.activityLog.nextTransactionNumber == 8)
        // Internal metadata lives at the end: the data area is untouched.
        let data = try RawFile.read(directory.file("data"), offsetBytes: 0, count: Int(recovered.sizeBytes))
        #expect(data.allSatisfy { $0 == 0 })
    }

    @Test("create-md refuses to overwrite metadata without force, says what it found, and changes no byte")
    func createRefusesExisting() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let store = try Self.open(directory)
        try store.create(force: false)
        let uuids = GenerationUUIDs(current: 0xAAAA_0000_0000_0010, bitmap: 0, history1: 0xBBBB_0000_0000_0020)
        try store.writeSuperblock(SuperblockState(uuids: uuids, flags: [.consistent, .wasUpToDate], agreedSizeBytes: 4096))
        let before = try RawFile.readAll(path)

        let error = #expect(throws: StorageError.self) { try store.create(force: false) }
        #expect(error?.code == .metadataExists)
        #expect(error?.message.contains(uuids.description) == true)
        #expect(error?.message.contains("not clean") == true)
        #expect(error?.message.contains("--force") == true)
        #expect(try RawFile.readAll(path) == before)

        let report = try store.create(force: true)
        guard case .valid(let old) = report.overwritten else {
            Issue.record("expected the old superblock in the report, got \(String(describing: report.overwritten))")
            return
        }
        #expect(old.uuids == uuids)
        #expect(try Self.open(directory).recover().superblock.uuids == .created)
    }

    @Test("create-md refuses damaged Tandem metadata without force too")
    func createRefusesDamaged() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let store = try Self.open(directory)
        let layout = try store.create(force: false).layout
        try RawFile.flipByte(path, offsetBytes: layout.superblockOffsetBytes + 30)
        let before = try RawFile.readAll(path)
        let error = #expect(throws: StorageError.self) { try store.create(force: false) }
        #expect(error?.code == .metadataExists)
        #expect(error?.message.contains("damaged") == true)
        #expect(try RawFile.readAll(path) == before)
    }

    @Test("create-md refuses a device too small, naming the minimum, and writes nothing")
    func createRefusesSmallDevice() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: 1 << 20)
        let store = try Self.open(directory)
        let error = #expect(throws: StorageError.self) { try store.create(force: false) }
        #expect(error?.code == .deviceTooSmall)
        // 1 MiB of data, a superblock, 8 ring slots and one bitmap page.
        let minimum = MetaDiskLayout.minimumDataBytes + 4096 + 8 * 4096 + 4096
        #expect(error?.message.contains("at least \(minimum) bytes") == true)
        #expect(try RawFile.readAll(path).allSatisfy { $0 == 0 })
        // The minimum it names is enough.
        try RawFile.resize(path, sizeBytes: minimum)
        #expect(try Self.open(directory).create(force: false).layout.usableDataBytes == MetaDiskLayout.minimumDataBytes)
    }

    @Test("activity-log transactions, bitmap pages and the superblock survive a crash (a reopen without shutdown)")
    func writesSurviveReopen() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let store = try Self.open(directory)
        try store.create(force: false)
        var activityLog = try store.recover().activityLog
        guard case .needsTransactions(let transactions, _) = activityLog.begin(extents: [0, 1]) else {
            Issue.record("extents 0 and 1 should need a transaction")
            return
        }
        for transaction in transactions { try store.writeActivityLog(transaction) }
        activityLog.end(extents: [0, 1])
        var bitmap = SyncBitmap(blockCount: try #require(store.dataSizeBytes) / SyncBitmap.blockBytes)
        _ = bitmap.set(5..<9)
        _ = bitmap.set(1000..<1001)
        try store.writeBitmap(bitmap.takeDirtyPages())
        let superblock = SuperblockState(
            uuids: GenerationUUIDs(current: 0x5000_0000_0000_0001, bitmap: 0x6000_0000_0000_0000),
            flags: [.consistent, .wasUpToDate, .primaryIndicator], agreedSizeBytes: try #require(store.dataSizeBytes))
        try store.writeSuperblock(superblock)
        // No close, no clean shutdown: a new process reads what is on disk.
        let recovered = try Self.open(directory).recover()
        #expect(recovered.superblock == superblock)
        #expect(recovered.wasUnclean)
        #expect(recovered.activityLog.hotExtents == [0, 1])
        #expect(recovered.activityLog.nextTransactionNumber == activityLog.nextTransactionNumber)
        #expect(recovered.bitmapWords == bitmap.words)
        store.close()
    }

    @Test("a torn activity-log slot is skipped; the rest of the ring restates the log")
    func tornActivityLogSlotIsSkipped() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let store = try Self.open(directory)
        let layout = try store.create(force: false).layout
        var activityLog = try store.recover().activityLog
        guard case .needsTransactions(let transactions, _) = activityLog.begin(extents: [1]) else {
            Issue.record("extent 1 should need a transaction")
            return
        }
        for transaction in transactions { try store.writeActivityLog(transaction) }
        guard case .needsTransactions(let more, _) = activityLog.begin(extents: [2]) else {
            Issue.record("extent 2 should need a transaction")
            return
        }
        for transaction in more { try store.writeActivityLog(transaction) }
        // Tear the newest transaction: extent 2 was never covered durably, extent 1 still is.
        let newestSlot = UInt64(more.last!.ringSlot(ringSlots: 8))
        try RawFile.flipByte(path, offsetBytes: layout.activityLogOffsetBytes + newestSlot * 4096 + 100)
        let recovered = try Self.open(directory).recover()
        #expect(recovered.activityLog.hotExtents == [1])
        #expect(try Self.open(directory).dump().contains("slot \(newestSlot): skipped at recovery: checksum mismatch"))
    }

    @Test("a flipped byte in the superblock is refused with metadataCorrupt; a flipped magic reads as no metadata")
    func corruptSuperblockIsRefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let layout = try Self.open(directory).create(force: false).layout
        try RawFile.flipByte(path, offsetBytes: layout.superblockOffsetBytes + 40)
        let error = #expect(throws: StorageError.self) { try Self.open(directory).recover() }
        #expect(error?.code == .metadataCorrupt)
        guard case .metadata(let cause)? = error?.cause else {
            Issue.record("expected a metadata cause, got \(String(describing: error?.cause))")
            return
        }
        #expect(cause.code == .checksumMismatch)
        #expect(error?.message.contains("create-md --force") == true)
        #expect(try Self.open(directory).dump().contains("checksum mismatch"))

        try RawFile.flipByte(path, offsetBytes: layout.superblockOffsetBytes + 40)
        _ = try Self.open(directory).recover()
        try RawFile.flipByte(path, offsetBytes: layout.superblockOffsetBytes)
        let missing = #expect(throws: StorageError.self) { try Self.open(directory).recover() }
        #expect(missing?.code == .noMetadata)
        #expect(missing?.message.contains("tandem adm create-md r0") == true)
    }

    @Test("a damaged bitmap page is refused rather than read as clear")
    func corruptBitmapPageIsRefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let layout = try Self.open(directory).create(force: false).layout
        try RawFile.flipByte(path, offsetBytes: layout.bitmapOffsetBytes + 2000)
        let error = #expect(throws: StorageError.self) { try Self.open(directory).recover() }
        #expect(error?.code == .metadataCorrupt)
        #expect(error?.message.contains("bitmap page 0") == true)
    }

    @Test("indexed external metadata lives in its 128 MiB slot and leaves the data device alone")
    func externalIndexed() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let data = try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let meta = try directory.makeFile("meta", sizeBytes: 2 * MetaDiskLayout.indexedSlotBytes)
        let store = try Self.open(directory, metaDisk: .indexed(path: meta, index: 1))
        let layout = try store.create(force: false).layout
        #expect(layout.superblockOffsetBytes == MetaDiskLayout.indexedSlotBytes)
        #expect(layout.usableDataBytes == Self.dataBytes)
        #expect(try RawFile.read(meta, offsetBytes: 0, count: 4096).allSatisfy { $0 == 0 })
        try store.writeSuperblock(SuperblockState(uuids: .created, flags: [.consistent], agreedSizeBytes: 0))
        let recovered = try Self.open(directory, metaDisk: .indexed(path: meta, index: 1)).recover()
        #expect(recovered.sizeBytes == Self.dataBytes)
        #expect(recovered.superblock.flags == [.consistent])
        #expect(try RawFile.readAll(data).allSatisfy { $0 == 0 })
        // Index 0 of the same device holds nothing; index 2 does not fit.
        let empty = #expect(throws: StorageError.self) {
            try Self.open(directory, metaDisk: .indexed(path: meta, index: 0)).recover()
        }
        #expect(empty?.code == .noMetadata)
        let tooSmall = #expect(throws: StorageError.self) {
            try Self.open(directory, metaDisk: .indexed(path: meta, index: 2)).create(force: false)
        }
        #expect(tooSmall?.code == .deviceTooSmall)
        #expect(tooSmall?.message.contains("at least \(3 * MetaDiskLayout.indexedSlotBytes) bytes") == true)
    }

    @Test("flexible external metadata starts at offset 0 and is as large as the data needs")
    func externalFlexible() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let needed = MetaDiskLayout.superblockBytes + 8 * 4096 + 4096
        let meta = try directory.makeFile("meta", sizeBytes: needed - 4096)
        let small = #expect(throws: StorageError.self) {
            try Self.open(directory, metaDisk: .flexible(path: meta)).create(force: false)
        }
        #expect(small?.code == .deviceTooSmall)
        #expect(small?.message.contains("at least \(needed) bytes") == true)
        #expect(try RawFile.readAll(meta).allSatisfy { $0 == 0 })

        try RawFile.resize(meta, sizeBytes: needed)
        let layout = try Self.open(directory, metaDisk: .flexible(path: meta)).create(force: false).layout
        #expect(layout.superblockOffsetBytes == 0)
        #expect(layout.metadataSizeBytes == needed)
        let recovered = try Self.open(directory, metaDisk: .flexible(path: meta)).recover()
        #expect(recovered.superblock.uuids == .created)
        #expect(recovered.sizeBytes == Self.dataBytes)

        // Growing the data past what the bitmap covers no longer matches the recorded layout.
        try RawFile.resize(directory.file("data"), sizeBytes: 200 << 20)
        try RawFile.resize(meta, sizeBytes: 1 << 20)
        let mismatch = #expect(throws: StorageError.self) {
            try Self.open(directory, metaDisk: .flexible(path: meta)).recover()
        }
        #expect(mismatch?.code == .layoutMismatch)
    }

    @Test("preserved blocks round-trip: header, merged ranges, data and checksums; no temporary file is left")
    func preserveRoundTrip() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let log = LogRecorder()
        let store = try Self.open(directory, environment: Self.environment(log: log))
        try store.create(force: false)
        let first = pattern(sizeBytes: 3 * 4096, seed: 11)
        let second = pattern(sizeBytes: 4096, seed: 12)
        try RawFile.write(path, offsetBytes: 2 * 4096, first)
        try RawFile.write(path, offsetBytes: 10 * 4096, second)

        let file = try store.preserve(blocks: [10..<11, 2..<4, 3..<5], reason: "split brain: discard-younger-primary")
        #expect(file == directory.file("preserved/r0/20231114T221320.123456789Z.preserved"))
        #expect(log.all.contains { $0.contains("preserved 16384 bytes") })
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.file("preserved/r0")) == [
            "20231114T221320.123456789Z.preserved"
        ])

        let reader = try PreservedBlocksReader(path: file)
        #expect(reader.header.resourceName == "r0")
        #expect(reader.header.reason == "split brain: discard-younger-primary")
        #expect(reader.header.sourcePath == path)
        #expect(reader.header.createdAtNanoseconds == 1_700_000_000_123_456_789)
        #expect(reader.header.deviceSizeBytes == store.dataSizeBytes)
        #expect(reader.header.ranges.map { $0.offsetBytes..<($0.offsetBytes + $0.lengthBytes) } == [8192..<20480, 40960..<45056])
        #expect(try reader.readRange(at: 0) == first)
        #expect(try reader.readRange(at: 1) == second)
        try reader.verify()

        // A second preserve in the same nanosecond gets its own name.
        let again = try store.preserve(blocks: [0..<1], reason: "again")
        #expect(again.hasSuffix("Z-2.preserved"))

        // A damaged data byte is caught by the range's checksum; a damaged header by the header's.
        try RawFile.flipByte(file, offsetBytes: reader.header.dataOffsetBytes + 5)
        let damaged = #expect(throws: StorageError.self) { try PreservedBlocksReader(path: file).verify() }
        #expect(damaged?.code == .preservedFileCorrupt)
        try RawFile.flipByte(file, offsetBytes: 60)
        let header = #expect(throws: StorageError.self) { try PreservedBlocksReader(path: file) }
        #expect(header?.code == .preservedFileCorrupt)
    }

    @Test("preserving refuses, before writing, when the file system lacks the space; the node sees a metadata error")
    func preserveRefusesWithoutSpace() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let log = LogRecorder()
        let store = try Self.open(directory, environment: Self.environment(log: log, freeBytes: 4096 + 8192 - 1))
        try store.create(force: false)
        let error = #expect(throws: StorageError.self) { try store.preserve(blocks: [0..<2], reason: "test") }
        #expect(error?.code == .noSpace)
        #expect(error?.message.contains("needs 12288 bytes") == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.file("preserved/r0")).isEmpty)
        // Through the MetadataStore protocol, as the replication node calls it.
        #expect(throws: MetadataStoreError.self) { try store.preserveDivergedBlocks([0..<2], reason: "test") }
        #expect(log.all.contains { $0.contains("meta-data I/O error") })

        let roomy = try Self.open(directory, environment: Self.environment(freeBytes: 4096 + 8192))
        _ = try roomy.recover()
        _ = try roomy.preserve(blocks: [0..<2], reason: "test")
        let beyond = #expect(throws: StorageError.self) {
            try roomy.preserve(blocks: [0..<(Self.dataBytes / 4096)], reason: "test")
        }
        #expect(beyond?.code == .invalidArgument)
    }

    @Test("more ranges than the file format holds are merged across their smallest gaps")
    func preserveCoalescesRanges() throws {
        let count = PreservedBlocksHeader.rangesMaximum + 10
        var blocks = (0..<UInt64(count)).map { ($0 * 3)..<($0 * 3 + 1) }
        blocks[5] = 15..<17  // a gap of one block, smaller than the others
        let merged = try FileMetadataStore.preservedRanges(blocks, dataBytes: UInt64(count) * 3 * 4096)
        #expect(merged.count <= PreservedBlocksHeader.rangesMaximum)
        for block in blocks {
            let bytes = (block.lowerBound * 4096)..<(block.upperBound * 4096)
            #expect(merged.contains { $0.contains(bytes.lowerBound) && $0.upperBound >= bytes.upperBound })
        }
        #expect(merged.reduce(UInt64(0)) { $0 + $1.upperBound - $1.lowerBound } <= UInt64(count) * 3 * 4096)
    }

    @Test("dump describes the superblock, the activity log and the bitmap")
    func dumpDescribesMetadata() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.makeFile("data", sizeBytes: Self.dataBytes)
        let store = try Self.open(directory)
        try store.create(force: false)
        var activityLog = try store.recover().activityLog
        if case .needsTransactions(let transactions, _) = activityLog.begin(extents: [1]) {
            for transaction in transactions { try store.writeActivityLog(transaction) }
        }
        var bitmap = SyncBitmap(blockCount: try #require(store.dataSizeBytes) / SyncBitmap.blockBytes)
        _ = bitmap.set(0..<3)
        try store.writeBitmap(bitmap.takeDirtyPages())
        let text = store.dump()
        #expect(text.contains("0000000000000004:0000000000000000:0000000000000000:0000000000000000"))
        #expect(text.contains("flags: al-clean"))
        #expect(text.contains("device UUID: 123456789ABCDEF0"))
        #expect(text.contains("recovered: 1 hot extents of 61, next transaction 9: 1"))
        #expect(text.contains("3 bits set (12288 bytes out of sync)"))
    }
}
