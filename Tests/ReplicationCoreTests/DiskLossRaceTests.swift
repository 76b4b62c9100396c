import ReplicationCore
import Testing

/// A disk that fails while replication traffic is in flight. Each case here is an interleaving the long seeded
/// simulator run found (seeds printed in the test names' notes), written down so it is checked on every run.
@Suite("Replication: a disk lost while replication is in flight")
struct DiskLossRaceTests {
    static let range = BlockRange(sector: 2048, sizeBytes: 8192)
    static let write = ApplicationWrite(requestID: 1, offsetBytes: 2048 * 512, payload: [UInt8](repeating: 0xAB, count: 8192))

    enum HowTheDiskGoes: CaseIterable, CustomStringConvertible {
        /// The operator detaches it; the epoch's flush completes afterwards and proves nothing.
        case detachedBeforeTheFlushCompletes
        /// The epoch's flush itself fails (on-io-error detach).
        case flushFails

        var description: String {
            switch self {
            case .detachedBeforeTheFlushCompletes: "detached before the epoch flush completes"
            case .flushFails: "the epoch flush fails"
            }
        }
    }

    /// Found as seed 1002114 (protocol C): the Secondary acknowledged a write it held only in its disk's volatile
    /// cache, lost the disk before the epoch's flush, then crashed. The Primary had dropped the write from its
    /// transfer log on the barrier ack, so the resync after the disk's return skipped the block: images differed.
    @Test("A write the Secondary stored but never made stable is out of sync at the Primary", arguments: HowTheDiskGoes.allCases)
    func storedButNotStable(how: HowTheDiskGoes) {
        var pair = ReplicationPair.connectedWithPrimary()
        pair.handle(0, .write(Self.write))
        pair.completeAllDisk(0)
        pair.deliverAll(to: 1)
        pair.completeDisk(1, where: { $0 == .write(Self.range) }, result: .written)
        pair.deliverAll(to: 0)
        #expect(pair.completedWrites[0][1] == .success, "protocol C completes once the peer wrote it")
        pair.deliverAll(to: 1)
        #expect(pair.pendingDisk[1].contains { $0.operation == .flush }, "the barrier starts the epoch's flush")

        switch how {
        case .detachedBeforeTheFlushCompletes:
            #expect(pair.command(1, .detach) == .done)
            pair.completeDisk(1, where: { $0 == .flush }, result: .flushed)
        case .flushFails:
            pair.completeDisk(1, where: { $0 == .flush }, result: .failed)
        }
        #expect(pair.status(1).disk == .diskless)

        let outOfSync = pair.sent[1].firstIndex(of: .outOfSync(Self.range))
        let barrierAck = pair.sent[1].firstIndex { if case .barrierAck = $0 { true } else { false } }
        #expect(outOfSync != nil, "the Secondary reports the unstable write: \(pair.sent[1])")
        #expect(barrierAck != nil && outOfSync! < barrierAck!, "the report precedes the barrier ack")

        pair.deliverAll()
        #expect(pair.status(0).outOfSyncBytes == 8192, "the Primary keeps the blocks for the disk's return")
        #expect(pair.status(0).connection == .connected)
        #expect(pair.dropped == [[], []])
    }

    /// Found as seed 1003395 (protocol C): a write sent just before the peer's disk failed reached the peer when it
    /// was already Diskless. It refused the write without counting it in an epoch; the refusal (meta connection)
    /// overtook the Diskless state report (data connection), so the Primary closed the epoch with a barrier the
    /// peer called a protocol error, and the connection dropped.
    @Test("A write reaching a peer that has just lost its disk is refused, and its epoch is still acknowledged")
    func writeReachesDisklessPeer() {
        var pair = ReplicationPair.connectedWithPrimary()
        pair.handle(0, .write(Self.write))
        pair.completeAllDisk(0)
        pair.deliverAll(to: 1)
        pair.completeAllDisk(1)
        pair.deliverAll()
        pair.completeAllDisk(1)
        pair.deliverAll()
        #expect(pair.completedWrites[0][1] == .success)
        #expect(pair.machines[0].queueDepths.peerPendingWrites == 0, "the first epoch is acknowledged")

        #expect(pair.command(1, .detach) == .done)
        // The Primary writes before it hears of the detach, and hears of the refusal first.
        let second = BlockRange(sector: 4096, sizeBytes: 4096)
        pair.handle(0, .write(ApplicationWrite(requestID: 2, offsetBytes: 4096 * 512, payload: [UInt8](repeating: 2, count: 4096))))
        pair.completeAllDisk(0)
        pair.deliverAll(to: 1)
        #expect(pair.sent[1].contains(.negativeAck(BlockAck(range: second, requestID: 2))))
        pair.deliverAll(to: 0, on: .meta)
        pair.deliverAll()

        #expect(pair.dropped == [[], []], "no protocol error: \(pair.logs[1].suffix(3))")
        #expect(pair.completedWrites[0][2] == .success, "the Primary's own disk has it")
        #expect(pair.status(0).connection == .connected)
        #expect(pair.status(0).peerDisk == .diskless)
        #expect(pair.status(0).outOfSyncBytes == 4096)
        #expect(pair.machines[0].queueDepths.peerPendingWrites == 0)
    }

    /// Found as seed 1003023 (protocol B): the Primary's disk failed while the bitmaps were being exchanged. It
    /// went on to start the resync as source, sending a sync UUID it could not persist; the target adopted it, and
    /// when the disk returned with its old UUIDs the two were unrelated data and never converged.
    @Test("A disk lost during the bitmap exchange ends the connection before any sync UUID is sent")
    func diskLostDuringBitmapExchange() {
        var pair = ReplicationPair.connectedWithPrimary()
        #expect(pair.command(0, .disconnect) == .done)
        pair.deliverAll()
        // A write while apart: the reconnect must resync it, node 0 as source.
        pair.handle(0, .write(Self.write))
        pair.completeAllDisk(0)
        #expect(pair.status(0).outOfSyncBytes == 8192)
        #expect(pair.command(0, .connect(discardMyData: false)) == .done)
        for node in 0..<2 { pair.handle(node, .transportConnected(challenge: [UInt8](repeating: 7, count: 64))) }
        var deliveries = 0
        while pair.status(0).connection != .waitingForBitmapSource && deliveries < 100 {
            for node in 0..<2 where !pair.inbox[node].isEmpty { pair.deliverOne(to: node) }
            deliveries += 1
        }
        #expect(pair.status(0).connection == .waitingForBitmapSource)
        let peerUUIDs = pair.status(1).uuids

        // An application write fails on node 0's disk before the peer's bitmap arrives.
        pair.handle(0, .write(ApplicationWrite(requestID: 2, offsetBytes: 0, payload: [UInt8](repeating: 1, count: 4096))))
        pair.completeDisk(0, where: { $0 == .write(BlockRange(sector: 0, sizeBytes: 4096)) }, result: .failed)
        pair.deliverAll()

        #expect(pair.status(0).disk == .diskless)
        #expect(!pair.dropped[0].isEmpty, "the resync in preparation is abandoned")
        #expect(!pair.sent[0].contains { if case .syncUUID = $0 { true } else { false } })
        #expect(pair.status(1).uuids == peerUUIDs, "the peer adopted nothing")
        #expect(pair.status(1).disk == .upToDate)
    }
}

@Suite("Replication: zeroing writes")
struct ZeroingWriteTests {
    @Test("A zeroing write travels as a range without data and zeroes both disks")
    func zeroingReachesBothDisks() {
        var pair = ReplicationPair.connectedWithPrimary()
        let range = BlockRange(sector: 8192, sizeBytes: 1 << 20)
        pair.handle(0, .write(.zeroing(requestID: 1, offsetBytes: 8192 * 512, lengthBytes: 1 << 20)))
        #expect(pair.pendingDisk[0].map(\.operation) == [.zeroes(range)])
        let sent = pair.sent[0].compactMap { packet -> DataPacket? in if case .data(let data) = packet { data } else { nil } }
        #expect(sent.count == 1)
        #expect(sent.first?.flags.contains(.zeroes) == true)
        #expect(sent.first?.payload.isEmpty == true)
        #expect(sent.first?.range == range)

        pair.completeAllDisk(0)
        pair.deliverAll(to: 1)
        #expect(pair.pendingDisk[1].map(\.operation) == [.zeroes(range)])
        pair.completeAllDisk(1)
        pair.deliverAll()
        #expect(pair.completedWrites[0][1] == .success)
        #expect(pair.status(0).outOfSyncBytes == 0)
    }

    @Test("A zeroing write while disconnected is remembered in the bitmap like any write")
    func zeroingWhileDisconnected() {
        var pair = ReplicationPair.connectedWithPrimary()
        #expect(pair.command(0, .disconnect) == .done)
        pair.handle(0, .write(.zeroing(requestID: 1, offsetBytes: 0, lengthBytes: 65536)))
        pair.completeAllDisk(0)
        #expect(pair.completedWrites[0][1] == .success)
        #expect(pair.status(0).outOfSyncBytes == 65536)
    }

    @Test("A zeroing write larger than a request, or misaligned, is refused before it touches a disk")
    func zeroingLimits() {
        var pair = ReplicationPair.connectedWithPrimary()
        let tooLarge = UInt32(ReplicationMachine.requestBytesMaximum + 4096)
        pair.handle(0, .write(.zeroing(requestID: 1, offsetBytes: 0, lengthBytes: tooLarge)))
        pair.handle(0, .write(.zeroing(requestID: 2, offsetBytes: 100, lengthBytes: 4096)))
        #expect(pair.completedWrites[0][1] == .failure(.tooLarge))
        #expect(pair.completedWrites[0][2] == .failure(.misaligned))
        #expect(pair.pendingDisk[0].isEmpty)
    }
}

@Suite("Replication: operator's resync pause")
struct ResyncPauseTests {
    /// Found as seed 1003848 (protocol B): the operator paused a resync, the connection dropped, and resume-sync
    /// was refused while disconnected; the pause stayed, and every later resync started paused, forever.
    @Test("resume-sync clears the pause even after the paused resync was interrupted")
    func resumeAfterInterruptedResync() {
        var pair = ReplicationPair.connectedWithPrimary()
        #expect(pair.command(0, .disconnect) == .done)
        pair.deliverAll()
        pair.handle(0, .write(ApplicationWrite(requestID: 1, offsetBytes: 0, payload: [UInt8](repeating: 1, count: 4096))))
        pair.completeAllDisk(0)
        #expect(pair.command(0, .connect(discardMyData: false)) == .done)
        pair.connectTransports()
        #expect(pair.status(1).connection == .syncTarget)
        #expect(pair.command(1, .pauseResync) == .done)
        #expect(pair.status(1).connection == .pausedSyncTarget)

        #expect(pair.command(1, .disconnect) == .done)
        #expect(pair.command(1, .resumeResync) == .done, "the pause is cleared while disconnected")
        #expect(pair.command(1, .connect(discardMyData: false)) == .done)
        pair.connectTransports()
        #expect(pair.status(1).connection == .syncTarget, "the next resync runs")
    }
}
