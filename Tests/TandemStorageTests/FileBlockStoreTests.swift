import Foundation
import ReplicationCore
import Testing

@testable import TandemStorage

@Suite("FileBlockStore")
struct FileBlockStoreTests {
    static let deviceBytes: UInt64 = 4 << 20

    func makeStore(
        _ directory: TemporaryDirectory, options: FileBlockStore.Options = FileBlockStore.Options(),
        faults: StorageFaults = StorageFaults(), recorder: CompletionRecorder, log: LogRecorder = LogRecorder()
    ) throws -> FileBlockStore {
        let path = try directory.makeFile("data", sizeBytes: Self.deviceBytes)
        return try FileBlockStore(
            path: path, options: options, faults: faults, log: log.sink, completions: recorder.sink)
    }

    @Test("writes read back through the I/O threads, in every direct-I/O policy that opens",
          arguments: [FileBlockStore.DirectIOPolicy.off, .preferred])
    func writeReadRoundTrip(policy: FileBlockStore.DirectIOPolicy) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let store = try makeStore(directory, options: .init(directIO: policy), recorder: recorder)
        defer { store.close() }
        #expect(store.sizeBytes == Self.deviceBytes)
        #expect(store.deviceSizeBytes == Self.deviceBytes)
        #expect(!store.isBlockDevice)
        if policy == .off { #expect(store.ioMode == .buffered(reason: "direct I/O is off by configuration")) }

        let first = pattern(sizeBytes: 4096, seed: 1)
        let second = pattern(sizeBytes: 65536, seed: 2)
        store.submitWrite(token: 1, range: range(offsetBytes: 0, sizeBytes: 4096), payload: first, forceUnitAccess: false)
        store.submitWrite(
            token: 2, range: range(offsetBytes: 1 << 20, sizeBytes: 65536), payload: second, forceUnitAccess: false)
        #expect(try recorder.wait(for: [1, 2]) == [1: .written, 2: .written])

        store.submitRead(token: 3, range: range(offsetBytes: 0, sizeBytes: 4096))
        store.submitRead(token: 4, range: range(offsetBytes: 1 << 20, sizeBytes: 65536))
        store.submitRead(token: 5, range: range(offsetBytes: 8192, sizeBytes: 512))
        let reads = try recorder.wait(for: [3, 4, 5])
        #expect(reads[3] == .read(first))
        #expect(reads[4] == .read(second))
        #expect(reads[5] == .read(Array(repeating: 0, count: 512)))
        // What the store wrote is in the file, where a restarted process would find it.
        #expect(try RawFile.read(directory.file("data"), offsetBytes: 1 << 20, count: 65536) == second)
    }

    @Test("many concurrent writes through a small queue all complete, and a flush after them succeeds")
    func boundedQueueUnderLoad() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let store = try makeStore(
            directory, options: .init(directIO: .off, threadCount: 3, queueDepthMaximum: 4), recorder: recorder)
        defer { store.close() }
        let count = 200
        for index in 0..<count {
            store.submitWrite(
                token: UInt64(index), range: range(offsetBytes: UInt64(index) * 8192, sizeBytes: 8192),
                payload: pattern(sizeBytes: 8192, seed: UInt8(truncatingIfNeeded: index)), forceUnitAccess: index % 7 == 0)
        }
        let writes = try recorder.wait(for: (0..<count).map(UInt64.init))
        #expect(writes.values.allSatisfy { $0 == .written })
        store.submitFlush(token: 1000)
        #expect(try recorder.wait(for: 1000) == .flushed)
        for index in [0, 7, 99, 199] {
            let expected = pattern(sizeBytes: 8192, seed: UInt8(truncatingIfNeeded: index))
            #expect(try RawFile.read(directory.file("data"), offsetBytes: UInt64(index) * 8192, count: 8192) == expected)
        }
    }

    @Test("a request run on the caller's thread returns its completion instead of sending it; after close it is refused")
    func runHere() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let store = try makeStore(directory, recorder: recorder)
        let payload = pattern(sizeBytes: 4096, seed: 5)
        let write = store.writeRequest(
            token: 1, range: range(offsetBytes: 8192, sizeBytes: 4096), payload: payload, forceUnitAccess: false)
        #expect(store.runHere(write) == .localIOCompleted(token: 1, .written))
        #expect(store.runHere(store.flushRequest(token: 2)) == .localIOCompleted(token: 2, .flushed))
        let read = store.runHere(store.readRequest(token: 3, range: range(offsetBytes: 8192, sizeBytes: 4096)))
        #expect(read == .localIOCompleted(token: 3, .read(payload)))
        // The same request kind through the pool still goes to the sink: the two paths mix.
        store.submitRead(token: 4, range: range(offsetBytes: 8192, sizeBytes: 4096))
        #expect(try recorder.wait(for: 4) == .read(payload))
        #expect(try RawFile.read(directory.file("data"), offsetBytes: 8192, count: 4096) == payload)
        store.close()
        let late = store.runHere(store.readRequest(token: 5, range: range(offsetBytes: 0, sizeBytes: 4096)))
        #expect(late == .localIOCompleted(token: 5, .failed), "a closed store runs nothing, and says so")
    }

    @Test("a FUA write completes as written and its data is there; flushes complete as flushed")
    func forceUnitAccessAndFlush() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let store = try makeStore(directory, recorder: recorder)
        defer { store.close() }
        let payload = pattern(sizeBytes: 4096, seed: 9)
        store.submitFlush(token: 1)
        store.submitWrite(token: 2, range: range(offsetBytes: 12288, sizeBytes: 4096), payload: payload, forceUnitAccess: true)
        #expect(try recorder.wait(for: [1, 2]) == [1: .flushed, 2: .written])
        store.submitFlush(token: 3)
        #expect(try recorder.wait(for: 3) == .flushed)
        #expect(try RawFile.read(directory.file("data"), offsetBytes: 12288, count: 4096) == payload)
    }

    @Test("zeroing punches a hole: the range reads as zeroes, its blocks are freed, its neighbours are untouched",
          arguments: [FileBlockStore.DirectIOPolicy.off, .preferred])
    func zeroingPunchesAHole(policy: FileBlockStore.DirectIOPolicy) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let store = try makeStore(directory, options: .init(directIO: policy), recorder: recorder)
        defer { store.close() }
        let data = pattern(sizeBytes: 1 << 20, seed: 5)
        store.submitWrite(token: 1, range: range(offsetBytes: 0, sizeBytes: 1 << 20), payload: data, forceUnitAccess: true)
        #expect(try recorder.wait(for: 1) == .written)
        let allocatedBefore = try allocatedBytes(directory.file("data"))

        store.submitZeroes(token: 2, range: range(offsetBytes: 256 << 10, sizeBytes: 512 << 10), forceUnitAccess: true)
        #expect(try recorder.wait(for: 2) == .written)

        let contents = try RawFile.read(directory.file("data"), offsetBytes: 0, count: 1 << 20)
        #expect(contents[0..<(256 << 10)] == data[0..<(256 << 10)])
        #expect(contents[(256 << 10)..<(768 << 10)].allSatisfy { $0 == 0 })
        #expect(contents[(768 << 10)...] == data[(768 << 10)...])
        let allocatedAfter = try allocatedBytes(directory.file("data"))
        #expect(allocatedAfter + (512 << 10) <= allocatedBefore, "freed \(allocatedBefore - allocatedAfter) bytes")
    }

    @Test("a zeroing on a failing range fails like a write")
    func zeroingHonoursFaults() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let faults = StorageFaults()
        try faults.failWrites(in: 8192..<12288)
        let log = LogRecorder()
        let store = try makeStore(directory, faults: faults, recorder: recorder, log: log)
        defer { store.close() }
        store.submitZeroes(token: 1, range: range(offsetBytes: 0, sizeBytes: 65536), forceUnitAccess: false)
        #expect(try recorder.wait(for: 1) == .failed)
        #expect(log.all.contains { $0.contains("zeroing of") && $0.contains("injected fault") })
    }

    private func allocatedBytes(_ path: String) throws -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0 else { throw TestFailure("stat \(path) failed: errno \(errno)") }
        return UInt64(info.st_blocks) * 512
    }

    @Test("fault rules fail exactly the overlapping requests of their kind, and clearing them heals the device")
    func faultHooks() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let faults = StorageFaults()
        let log = LogRecorder()
        let store = try makeStore(directory, faults: faults, recorder: recorder, log: log)
        defer { store.close() }
        try faults.failWrites(in: 8192..<12288)
        try faults.failReads(in: 65536..<65537)
        let block = pattern(sizeBytes: 4096, seed: 3)
        func write(_ token: UInt64, _ offset: UInt64) {
            store.submitWrite(token: token, range: range(offsetBytes: offset, sizeBytes: 4096), payload: block, forceUnitAccess: false)
        }
        write(1, 4096)  // ends where the rule starts: untouched
        write(2, 8192)  // inside
        write(3, 10240)  // straddles the end
        write(4, 12288)  // starts where the rule ends: untouched
        write(5, 65536)  // a read rule does not fail writes
        #expect(try recorder.wait(for: [1, 2, 3, 4, 5]) == [1: .written, 2: .failed, 3: .failed, 4: .written, 5: .written])
        #expect(try RawFile.read(directory.file("data"), offsetBytes: 8192, count: 4096) == Array(repeating: 0, count: 4096))

        store.submitRead(token: 6, range: range(offsetBytes: 65024, sizeBytes: 512))  // ends at 65536: untouched
        store.submitRead(token: 7, range: range(offsetBytes: 61440, sizeBytes: 8192))  // covers 65536
        store.submitRead(token: 8, range: range(offsetBytes: 8192, sizeBytes: 512))  // a write rule does not fail reads
        let reads = try recorder.wait(for: [6, 7, 8])
        #expect(reads[6] == .read(Array(repeating: 0, count: 512)))
        #expect(reads[7] == .failed)
        #expect(reads[8] == .read(Array(repeating: 0, count: 512)))

        faults.failFlushes = true
        store.submitFlush(token: 9)
        #expect(try recorder.wait(for: 9) == .failed)
        #expect(log.all.contains { $0.contains("injected fault") })

        faults.clear()
        #expect(faults.rules.isEmpty)
        write(10, 8192)
        store.submitRead(token: 11, range: range(offsetBytes: 61440, sizeBytes: 8192))
        store.submitFlush(token: 12)
        let healed = try recorder.wait(for: [10, 11, 12])
        #expect(healed[10] == .written)
        #expect(healed[12] == .flushed)
        if case .read(let data) = healed[11] { #expect(data.count == 8192) } else { Issue.record("read failed: \(String(describing: healed[11]))") }
    }

    @Test("fault rules are validated and bounded")
    func faultRuleLimits() throws {
        let faults = StorageFaults()
        #expect(throws: StorageError.self) { try faults.failWrites(in: 10..<10) }
        for index in 0..<StorageFaults.rulesMaximum { try faults.failReads(in: UInt64(index)..<UInt64(index + 1)) }
        let error = #expect(throws: StorageError.self) { try faults.failReads(in: 0..<1) }
        #expect(error?.code == .invalidArgument)
        #expect(faults.remove(.init(kinds: .reads, rangeBytes: 0..<1)) == 1)
        try faults.failReads(in: 0..<1)
    }

    @Test("requests beyond the data, of a bad size or too large fail without touching the device")
    func invalidRequestsFail() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let log = LogRecorder()
        let store = try makeStore(
            directory, options: .init(directIO: .off, requestBytesMaximum: 65536, dataSizeBytes: 1 << 20),
            recorder: recorder, log: log)
        defer { store.close() }
        #expect(store.sizeBytes == 1 << 20)
        let block = pattern(sizeBytes: 4096, seed: 4)
        store.submitWrite(token: 1, range: range(offsetBytes: (1 << 20) - 2048, sizeBytes: 4096), payload: block, forceUnitAccess: false)
        store.submitRead(token: 2, range: range(offsetBytes: 1 << 20, sizeBytes: 512))
        store.submitRead(token: 3, range: BlockRange(sector: 0, sizeBytes: 100))
        store.submitRead(token: 4, range: range(offsetBytes: 0, sizeBytes: 131072))
        store.submitRead(token: 5, range: BlockRange(sector: UInt64.max / 256, sizeBytes: 512))
        #expect(try recorder.wait(for: [1, 2, 3, 4, 5]).values.allSatisfy { $0 == .failed })
        #expect(log.all.filter { $0.contains("refused") }.count == 5)
        #expect(try RawFile.read(directory.file("data"), offsetBytes: (1 << 20) - 2048, count: 4096) == Array(repeating: 0, count: 4096))
    }

    @Test("a device that shrank under the store fails the read with the reason logged, instead of returning zeros")
    func shortDeviceFailsRead() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let log = LogRecorder()
        let store = try makeStore(directory, options: .init(directIO: .off), recorder: recorder, log: log)
        defer { store.close() }
        try RawFile.resize(directory.file("data"), sizeBytes: 6144)
        store.submitRead(token: 1, range: range(offsetBytes: 4096, sizeBytes: 4096))
        #expect(try recorder.wait(for: 1) == .failed)
        #expect(log.all.contains { $0.contains("local I/O error") && $0.contains("unexpected end of file at offset 6144") })
    }

    @Test("after close, requests fail at once and the device is released")
    func closeFailsLaterRequests() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let store = try makeStore(directory, recorder: recorder)
        store.submitWrite(token: 1, range: range(offsetBytes: 0, sizeBytes: 4096), payload: pattern(sizeBytes: 4096, seed: 5), forceUnitAccess: false)
        store.close()
        // The write queued before close completed before close returned.
        #expect(try recorder.wait(for: 1) == .written)
        store.submitRead(token: 2, range: range(offsetBytes: 0, sizeBytes: 4096))
        store.submitFlush(token: 3)
        #expect(try recorder.wait(for: [2, 3]) == [2: .failed, 3: .failed])
        store.close()
    }

    @Test("opening a missing path, or a directory, fails with a typed error that says what to check")
    func openErrors() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let missing = #expect(throws: StorageError.self) {
            try FileBlockStore(path: directory.file("absent"), log: { _ in }, completions: recorder.sink)
        }
        #expect(missing?.code == .openFailed)
        #expect(missing?.errnoValue == ENOENT)
        #expect(missing?.description.contains("drbd.conf") == true)
        let notAFile = #expect(throws: StorageError.self) {
            try FileBlockStore(path: directory.path, log: { _ in }, completions: recorder.sink)
        }
        #expect(notAFile?.code == .openFailed)
    }

    @Test("policy preferred reports the mode in force; on ext4 and XFS that is direct I/O with the file system's alignment")
    func preferredReportsMode() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let store = try makeStore(directory, options: .init(directIO: .preferred), recorder: recorder)
        defer { store.close() }
        switch store.ioMode {
        case .direct(let alignmentBytes):
            #expect((512...4096).contains(alignmentBytes))
            #expect(store.ioMode.description.contains("O_DIRECT"))
        case .buffered(let reason):
            #expect(!reason.isEmpty)
        }
    }

    /// tmpfs accepts O_DIRECT since Linux 6.6, so the refusing file system is played by an opener that fails
    /// O_DIRECT with EINVAL, as older tmpfs and some FUSE file systems do.
    static let refusingOpener: @Sendable (String, Int32) throws(IOFailure) -> Int32 = { path, flags throws(IOFailure) in
        if flags & Posix.directFlag != 0 { throw IOFailure("cannot open \(path)", errno: EINVAL) }
        return try Posix.open(path, flags: flags)
    }

    @Test("a file system that refuses O_DIRECT: preferred falls back to buffered with the reason; required fails clearly")
    func directIORefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.deviceBytes)
        let recorder = CompletionRecorder()
        let log = LogRecorder()
        let preferred = try FileBlockStore(
            path: path, options: .init(directIO: .preferred), faults: StorageFaults(), log: log.sink,
            completions: recorder.sink, opener: Self.refusingOpener)
        guard case .buffered(let reason) = preferred.ioMode else {
            Issue.record("expected buffered I/O, got \(preferred.ioMode)")
            return
        }
        #expect(reason.contains("O_DIRECT"))
        #expect(reason.contains("EINVAL"))
        #expect(log.all.contains { $0.contains("using buffered I/O") })
        preferred.submitWrite(token: 1, range: range(offsetBytes: 0, sizeBytes: 4096), payload: pattern(sizeBytes: 4096, seed: 6), forceUnitAccess: true)
        #expect(try recorder.wait(for: 1) == .written)
        preferred.close()

        let error = #expect(throws: StorageError.self) {
            try FileBlockStore(
                path: path, options: .init(directIO: .required), faults: StorageFaults(), log: { _ in },
                completions: recorder.sink, opener: Self.refusingOpener)
        }
        #expect(error?.code == .directIOUnsupported)
        #expect(error?.message.contains("does not support direct I/O") == true)
        #expect(error?.message.contains("'preferred' or 'off'") == true)
    }

    @Test("on tmpfs, required either works or fails with directIOUnsupported; unaligned requests take the buffered path")
    func tmpfsDirectIO() throws {
        guard let directory = try TemporaryDirectory.inSharedMemory() else { return }
        defer { directory.remove() }
        let path = try directory.makeFile("data", sizeBytes: Self.deviceBytes)
        let recorder = CompletionRecorder()
        let store: FileBlockStore
        do {
            store = try FileBlockStore(path: path, options: .init(directIO: .required), log: { _ in }, completions: recorder.sink)
        } catch {
            // Kernels before 6.6: tmpfs refuses O_DIRECT.
            #expect(error.code == .directIOUnsupported)
            return
        }
        defer { store.close() }
        guard case .direct(let alignmentBytes) = store.ioMode else {
            Issue.record("required policy opened \(store.ioMode)")
            return
        }
        let aligned = pattern(sizeBytes: Int(alignmentBytes), seed: 7)
        store.submitWrite(token: 1, range: range(offsetBytes: UInt64(alignmentBytes), sizeBytes: alignmentBytes), payload: aligned, forceUnitAccess: false)
        #expect(try recorder.wait(for: 1) == .written)
        #expect(store.unalignedRequestCount == 0)
        guard alignmentBytes > 512 else { return }
        let small = pattern(sizeBytes: 512, seed: 8)
        store.submitWrite(token: 2, range: range(offsetBytes: 512, sizeBytes: 512), payload: small, forceUnitAccess: true)
        #expect(try recorder.wait(for: 2) == .written)
        store.submitRead(token: 3, range: range(offsetBytes: 0, sizeBytes: alignmentBytes * 2))
        #expect(try recorder.wait(for: 3) == .read(Array(repeating: 0, count: 512) + small + Array(repeating: 0, count: Int(alignmentBytes) - 1024) + aligned))
        #expect(store.unalignedRequestCount == 1)
    }
}

@Suite("AlignedBufferPool")
struct AlignedBufferPoolTests {
    @Test("pooled buffers are aligned, distinct while held and reused once given back; a burst beyond the pool, or a larger request, gets its own buffer and is counted")
    func handOutAndOverflow() throws {
        let pool = try AlignedBufferPool(count: 2, bufferBytes: 8192, alignmentBytes: 4096)
        var seen: [UnsafeMutableRawPointer] = []
        try pool.withBuffer(count: 4096) { first throws(IOFailure) in
            try pool.withBuffer(count: 8192) { second throws(IOFailure) in
                #expect(Int(bitPattern: first.baseAddress!) % 4096 == 0)
                #expect(Int(bitPattern: second.baseAddress!) % 4096 == 0)
                #expect(first.baseAddress != second.baseAddress)
                #expect(first.count == 4096 && second.count == 8192)
                seen = [first.baseAddress!, second.baseAddress!]
                try pool.withBuffer(count: 512) { third throws(IOFailure) in
                    #expect(!seen.contains(third.baseAddress!), "both pooled buffers are held: the third is its own")
                    #expect(Int(bitPattern: third.baseAddress!) % 4096 == 0)
                }
            }
        }
        #expect(pool.overflows == 1)
        try pool.withBuffer(count: 16384) { large throws(IOFailure) in
            #expect(large.count == 16384)
            #expect(!seen.contains(large.baseAddress!))
        }
        #expect(pool.overflows == 2, "a request larger than the pool's buffers is counted too")
        try pool.withBuffer(count: 4096) { again throws(IOFailure) in
            #expect(seen.contains(again.baseAddress!), "a buffer given back is handed out again")
        }
        #expect(pool.overflows == 2)
    }

    @Test("a direct-I/O store with one preallocated buffer carries many concurrent writes and reads correctly")
    func directStoreWithOneBuffer() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let recorder = CompletionRecorder()
        let path = try directory.makeFile("data", sizeBytes: FileBlockStoreTests.deviceBytes)
        let store = try FileBlockStore(
            path: path, options: .init(directIO: .required, threadCount: 4, preallocatedBuffers: 1),
            log: LogRecorder().sink, completions: recorder.sink)
        defer { store.close() }
        let count = 64
        for index in 0..<count {
            store.submitWrite(
                token: UInt64(index), range: range(offsetBytes: UInt64(index) * 16384, sizeBytes: 16384),
                payload: pattern(sizeBytes: 16384, seed: UInt8(index)), forceUnitAccess: false)
        }
        #expect(try recorder.wait(for: (0..<count).map(UInt64.init)).values.allSatisfy { $0 == .written })
        for index in 0..<count {
            store.submitRead(token: UInt64(1000 + index), range: range(offsetBytes: UInt64(index) * 16384, sizeBytes: 16384))
        }
        let reads = try recorder.wait(for: (0..<count).map { UInt64(1000 + $0) })
        for index in 0..<count {
            #expect(reads[UInt64(1000 + index)] == .read(pattern(sizeBytes: 16384, seed: UInt8(index))))
        }
    }

    @Test("preallocated buffers beyond the pool's limit are refused as an option problem")
    func limit() {
        var options = FileBlockStore.Options(preallocatedBuffers: 1000)
        #expect(options.problem()?.contains("preallocated buffers") == true)
        options.preallocatedBuffers = 12
        #expect(options.problem() == nil)
    }
}
