import ReplicationCore
import Testing

/// An application that fsyncs after every write (a database's commit) must cost the Secondary one disk flush per
/// fsync, not three: the barrier that closes the write's epoch flushes, and the fsync and the next barrier then find
/// nothing new in the disk's cache. Skipping a flush is only right when every completed write is covered by a
/// completed flush, which these cases also pin down.
@Suite("Replication: flushes the Secondary's disk cache does not need are skipped")
struct FlushCoalescingTests {
    static func write(_ requestID: UInt64, sector: UInt64) -> ApplicationWrite {
        ApplicationWrite(requestID: requestID, offsetBytes: sector * 512, payload: [UInt8](repeating: UInt8(requestID), count: 4096))
    }

    /// Delivers and completes everything until both nodes are idle; returns the flushes node 1 submitted.
    static func settle(_ pair: inout ReplicationPair) -> Int {
        var flushes = 0
        while !pair.inbox[0].isEmpty || !pair.inbox[1].isEmpty || !pair.pendingDisk[0].isEmpty || !pair.pendingDisk[1].isEmpty {
            flushes += pair.pendingDisk[1].filter { $0.operation == .flush }.count
            pair.completeAllDisk(0)
            pair.completeAllDisk(1)
            pair.deliverAll()
        }
        return flushes
    }

    @Test("write then fsync, 20 times: one flush of the Secondary's disk per fsync, and every fsync completes")
    func oneFlushPerFsync() {
        var pair = ReplicationPair.connectedWithPrimary()
        _ = Self.settle(&pair)
        var flushes = 0
        for round in UInt64(1)...20 {
            pair.handle(0, .write(Self.write(round * 2, sector: round * 64)))
            flushes += Self.settle(&pair)
            pair.handle(0, .flush(requestID: round * 2 + 1))
            flushes += Self.settle(&pair)
            #expect(pair.completedWrites[0][round * 2] == .success)
        }
        #expect(flushes == 20, "the Secondary flushed \(flushes) times for 20 fsyncs")
        #expect(pair.machines[0].queueDepths.peerPendingWrites == 0)
    }

    @Test("a flush skipped beside a write still in flight does not cover it: that write's completion makes the next barrier flush")
    func skippedFlushDoesNotCoverWritesInFlight() {
        var pair = ReplicationPair.connectedWithPrimary()
        // A write and an fsync first: a disk just attached counts as holding unflushed writes until its first flush.
        pair.handle(0, .write(Self.write(10, sector: 256)))
        let flushesForWrite = Self.settle(&pair)
        pair.handle(0, .flush(requestID: 11))
        #expect(flushesForWrite + Self.settle(&pair) == 1)
        // W is not complete at the Primary when the fsync comes, so both share an epoch, and the fsync need not
        // cover W (the block layer's rule).
        pair.handle(0, .write(Self.write(1, sector: 64)))
        pair.handle(0, .flush(requestID: 2))
        pair.deliverAll(to: 1)
        #expect(pair.pendingDisk[1].map(\.operation) == [.write(BlockRange(sector: 64, sizeBytes: 4096))],
            "the clean cache answers the flush at once; W is on its way to the disk")
        pair.completeAllDisk(1)
        pair.completeAllDisk(0)
        pair.deliverAll()
        #expect(pair.completedWrites[0][1] == .success)
        // The next write closes W's epoch with a barrier: W completed after the last real flush, so it flushes.
        pair.handle(0, .write(Self.write(3, sector: 128)))
        pair.completeAllDisk(0)
        pair.deliverAll(to: 1)
        #expect(pair.pendingDisk[1].contains { $0.operation == .flush }, "W's epoch is flushed before its barrier ack")
    }
}
