import Testing

@testable import ReplicationCore

@Suite("Activity log")
struct ActivityLogTests {
    typealias Support = MetadataTestSupport

    /// The transactions of a begin that had to bring extents in; fails the test otherwise.
    static func transactions(
        _ result: ActivityLogBeginResult, sourceLocation: SourceLocation = #_sourceLocation
    ) -> (transactions: [ActivityLogTransaction], evicted: [UInt32]) {
        guard case .needsTransactions(let transactions, let evicted) = result else {
            Issue.record("expected transactions, got \(result)", sourceLocation: sourceLocation)
            return ([], [])
        }
        return (transactions, evicted)
    }

    @Test("Extents covering a write are 4 MiB wide and include a partly touched last extent")
    func extentsCoveringAWrite() {
        let mib: UInt64 = 1 << 20
        #expect(ActivityLog.extents(coveringOffset: 0, lengthBytes: 4096) == 0...0)
        #expect(ActivityLog.extents(coveringOffset: 4 * mib - 4096, lengthBytes: 4096) == 0...0)
        #expect(ActivityLog.extents(coveringOffset: 4 * mib - 4096, lengthBytes: 8192) == 0...1)
        #expect(ActivityLog.extents(coveringOffset: 40 * mib, lengthBytes: 9 * mib) == 10...12)
    }

    @Test("A first write to cold extents needs one transaction; the next write to them needs none")
    func coldThenHot() {
        var log = ActivityLog(capacityExtents: 7, ringSlots: 2)
        let (transactions, evicted) = Self.transactions(log.begin(extents: [5, 6]))
        #expect(evicted.isEmpty)
        #expect(transactions.count == 1)
        #expect(transactions.first?.transactionNumber == 0)
        #expect(transactions.first?.updates == [.init(slot: 0, extent: 5), .init(slot: 1, extent: 6)])
        #expect(log.hotExtents == [5, 6])
        #expect(log.begin(extents: [6]) == .alreadyHot)
        #expect(log.pinCount(6) == 2)
        #expect(!log.isIdle)
        log.end(extents: [5, 6])
        log.end(extents: [6])
        #expect(log.isIdle)
        #expect(log.hotExtents == [5, 6])
        #expect(log.nextTransactionNumber == 1)
    }

    @Test("When the log is full the least recently begun unpinned extent is evicted")
    func leastRecentlyUsedIsEvicted() {
        var log = ActivityLog(capacityExtents: 7, ringSlots: 2)
        for extent in UInt32(0)..<7 {
            _ = log.begin(extents: [extent])
            log.end(extents: [extent])
        }
        // Use 0 again, so 1 becomes the least recently used.
        #expect(log.begin(extents: [0]) == .alreadyHot)
        log.end(extents: [0])
        let (transactions, evicted) = Self.transactions(log.begin(extents: [100]))
        #expect(evicted == [1])
        #expect(transactions.first?.updates == [.init(slot: 1, extent: 100)])
        #expect(!log.isHot(1))
        #expect(log.isHot(100))
    }

    @Test("Pinned extents are never evicted, and the extents being begun are not evicted for each other")
    func pinnedExtentsStay() {
        var log = ActivityLog(capacityExtents: 7, ringSlots: 2)
        _ = log.begin(extents: [0, 1, 2, 3, 4, 5])  // pinned
        _ = log.begin(extents: [6])
        log.end(extents: [6])
        // 6 is the only unpinned extent; it is part of the request, so 7 and 8 cannot both come in.
        #expect(log.begin(extents: [6, 7, 8]) == .full)
        let (_, evicted) = Self.transactions(log.begin(extents: [7]))
        #expect(evicted == [6])
        #expect(log.hotExtents == [0, 1, 2, 3, 4, 5, 7])
    }

    @Test("A full log changes nothing and succeeds once writes end")
    func fullChangesNothing() {
        var log = ActivityLog(capacityExtents: 7, ringSlots: 2)
        _ = log.begin(extents: Array(0..<7))
        let before = log
        #expect(log.begin(extents: [10]) == .full)
        #expect(log == before)
        log.end(extents: [3])
        let (_, evicted) = Self.transactions(log.begin(extents: [10]))
        #expect(evicted == [3])
    }

    @Test("Bringing in more than 64 extents yields several consecutive transactions of at most 64 updates")
    func manyExtentsNeedSeveralTransactions() {
        var log = ActivityLog(capacityExtents: 1237, ringSlots: 8)
        let (transactions, evicted) = Self.transactions(log.begin(extents: Array(1000..<1150)))
        #expect(evicted.isEmpty)
        #expect(transactions.map(\.updates.count) == [64, 64, 22])
        #expect(transactions.map(\.transactionNumber) == [0, 1, 2])
        #expect(transactions.flatMap(\.updates).map(\.extent) == Array(1000..<1150))
        // Each context reflects the slots after its own transaction only: slot 64 is filled by the second one.
        #expect(transactions[0].context[64] == ActivityLogTransaction.emptyExtent)
        // The second context starts at slot 889 and wraps to slot 0 after 348 entries: slot 64 is filled, 128 not.
        #expect(transactions[1].contextStartSlot == 889)
        #expect(transactions[1].context[348 + 64] == 1064)
        #expect(transactions[1].context[348 + 128] == ActivityLogTransaction.emptyExtent)
        #expect(log.nextTransactionNumber == 3)
    }

    @Test("Context windows advance round-robin and wrap at the capacity")
    func contextWindowsAdvance() {
        var log = ActivityLog(capacityExtents: 2000, ringSlots: 4)
        let transactions = log.rewriteRing()
        #expect(transactions.map(\.contextStartSlot) == [0, 889, 1778, 667])
        #expect(transactions.allSatisfy { $0.context.count == 889 && $0.updates.isEmpty })
    }

    @Test("Recovering from an empty ring gives an empty log numbered from 0")
    func recoverFromNothing() throws {
        let log = try ActivityLog(recoveredFrom: [], capacityExtents: 61, ringSlots: 8)
        #expect(log.hotExtents.isEmpty)
        #expect(log.nextTransactionNumber == 0)
    }

    @Test("Recovery rebuilds the exact slots from a ring that has wrapped many times")
    func recoverAfterWrapping() throws {
        var log = ActivityLog(capacityExtents: 2000, ringSlots: 4)
        var ring: [[UInt8]] = Array(repeating: Array(repeating: 0, count: 4096), count: 4)
        var random = SplitMix64(seed: 11)
        for _ in 0..<300 {
            let start = UInt32.random(in: 0..<5000, using: &random)
            let extents = Array(start..<(start + UInt32.random(in: 1...80, using: &random)))
            if case .needsTransactions(let transactions, _) = log.begin(extents: extents) {
                for transaction in transactions { ring[transaction.ringSlot(ringSlots: 4)] = transaction.encoded() }
            }
            log.end(extents: extents)
        }
        let decoded = ring.enumerated().compactMap { slot, bytes in
            try? ActivityLogTransaction.decode(bytes, slotIndex: slot, ringSlots: 4)
        }
        #expect(decoded.count == 4)
        let recovered = try ActivityLog(recoveredFrom: decoded, capacityExtents: 2000, ringSlots: 4)
        #expect(recovered.slotExtents == log.slotExtents)
        #expect(recovered.nextTransactionNumber == log.nextTransactionNumber)
    }

    @Test("Recovery orders transactions across the 2^32 wrap of transaction numbers")
    func recoverAcrossNumberWrap() throws {
        var log = ActivityLog(capacityExtents: 7, ringSlots: 4, firstTransactionNumber: UInt32.max - 1)
        var ring: [ActivityLogTransaction?] = Array(repeating: nil, count: 4)
        for extent in UInt32(0)..<12 {
            if case .needsTransactions(let transactions, _) = log.begin(extents: [extent]) {
                for transaction in transactions { ring[transaction.ringSlot(ringSlots: 4)] = transaction }
            }
            log.end(extents: [extent])
        }
        #expect(log.nextTransactionNumber == 10)
        let recovered = try ActivityLog(recoveredFrom: ring.compactMap { $0 }, capacityExtents: 7, ringSlots: 4)
        #expect(recovered.slotExtents == log.slotExtents)
        #expect(recovered.hotExtents == Array(5..<12))
        #expect(recovered.nextTransactionNumber == 10)
    }

    @Test("A rewritten ring recovers to exactly the log it was rewritten from")
    func rewrittenRingRecovers() throws {
        var log = ActivityLog(capacityExtents: 3000, ringSlots: 8, firstTransactionNumber: 77)
        _ = log.begin(extents: Array(500..<700))
        let ring = log.rewriteRing()
        let recovered = try ActivityLog(recoveredFrom: ring, capacityExtents: 3000, ringSlots: 8)
        #expect(recovered.slotExtents == log.slotExtents)
        #expect(recovered.nextTransactionNumber == log.nextTransactionNumber)
    }

    @Test("Recovery refuses transactions written for another al-extents")
    func recoveryRefusesOtherCapacity() {
        var log = ActivityLog(capacityExtents: 61, ringSlots: 8)
        let ring = log.rewriteRing()
        let error = Support.error { () throws(MetadataError) in
            try ActivityLog(recoveredFrom: ring, capacityExtents: 67, ringSlots: 8)
        }
        #expect(error?.code == .invalidField)
        #expect(error?.message.contains("written for 61 extents, the log has 67") == true)
    }

    @Test("Recovery ignores transactions too old to belong to the current ring contents")
    func recoveryIgnoresStaleTransactions() throws {
        let stale = ActivityLogTransaction(
            transactionNumber: 1, capacityExtents: 7, updates: [.init(slot: 0, extent: 99)], contextStartSlot: 0,
            context: [])
        let fresh = ActivityLogTransaction(
            transactionNumber: 42, capacityExtents: 7, updates: [.init(slot: 1, extent: 5)], contextStartSlot: 1,
            context: [5])
        let recovered = try ActivityLog(recoveredFrom: [stale, fresh], capacityExtents: 7, ringSlots: 8)
        #expect(recovered.hotExtents == [5])
        #expect(recovered.nextTransactionNumber == 43)
    }

    /// The safety property: after thousands of random writes with periodic crashes, including crashes that tear a
    /// transaction being written, the recovered log holds every extent that may have been written at the crash, and
    /// is exactly the log as of the last durable transaction.
    @Test(
        "Recovery after a crash at any point yields every extent that may have been written",
        arguments: [
            (capacity: 7, ringSlots: 2, universe: UInt32(20), maximumWrite: UInt32(4), seed: UInt64(1)),
            (capacity: 61, ringSlots: 8, universe: UInt32(150), maximumWrite: UInt32(8), seed: UInt64(2)),
            (capacity: 2000, ringSlots: 4, universe: UInt32(2600), maximumWrite: UInt32(150), seed: UInt64(3)),
        ])
    func crashRecoveryIsSafe(
        configuration: (capacity: Int, ringSlots: Int, universe: UInt32, maximumWrite: UInt32, seed: UInt64)
    ) throws {
        let (capacity, ringSlots) = (configuration.capacity, configuration.ringSlots)
        var random = SplitMix64(seed: configuration.seed)
        var log = ActivityLog(capacityExtents: capacity, ringSlots: ringSlots)
        var ring: [[UInt8]] = Array(repeating: Array(repeating: 0, count: 4096), count: ringSlots)
        // The slots as the durable transactions say, replayed from the complete history rather than the ring.
        var durableSlots: [UInt32] = Array(repeating: ActivityLogTransaction.emptyExtent, count: capacity)
        // Writes submitted to the disk and not yet completed: exactly those whose begin was made durable.
        var inFlight: [[UInt32]] = []
        var crashes = 0

        func crashAndRecover() throws {
            crashes += 1
            let decoded = ring.enumerated().compactMap { slot, bytes in
                try? ActivityLogTransaction.decode(bytes, slotIndex: slot, ringSlots: ringSlots)
            }
            let recovered = try ActivityLog(recoveredFrom: decoded, capacityExtents: capacity, ringSlots: ringSlots)
            let maybeWritten = Set(inFlight.joined())
            #expect(maybeWritten.isSubset(of: Set(recovered.hotExtents)))
            #expect(recovered.slotExtents == durableSlots.map { $0 == ActivityLogTransaction.emptyExtent ? nil : $0 })
            #expect(recovered.isIdle)
            log = recovered
            inFlight = []
        }

        for _ in 0..<2000 {
            let choice = Int.random(in: 0..<100, using: &random)
            if choice < 55 {
                let length = UInt32.random(in: 1...configuration.maximumWrite, using: &random)
                let start = UInt32.random(in: 0...(configuration.universe - length), using: &random)
                let extents = Array(start..<(start + length))
                switch log.begin(extents: extents) {
                case .alreadyHot:
                    inFlight.append(extents)
                case .full:
                    if !inFlight.isEmpty {
                        log.end(extents: inFlight.remove(at: Int.random(in: 0..<inFlight.count, using: &random)))
                    }
                case .needsTransactions(let transactions, _):
                    // Sometimes the crash comes while these transactions are being written: a prefix is durable,
                    // the next one is torn (its first sectors new, the rest old), and the data writes were never
                    // submitted. A tear that happens to leave exactly the new bytes is a complete write.
                    let tearAt: Int? =
                        Int.random(in: 0..<25, using: &random) == 0
                        ? Int.random(in: 0..<transactions.count, using: &random) : nil
                    for (index, transaction) in transactions.enumerated() {
                        let slot = transaction.ringSlot(ringSlots: ringSlots)
                        let bytes = transaction.encoded()
                        if index == tearAt {
                            let newBytes = 512 * Int.random(in: 1...7, using: &random)
                            ring[slot] = Array(bytes.prefix(newBytes)) + ring[slot].suffix(4096 - newBytes)
                            if ring[slot] == bytes {
                                for update in transaction.updates { durableSlots[Int(update.slot)] = update.extent }
                            }
                            break
                        }
                        ring[slot] = bytes
                        for update in transaction.updates { durableSlots[Int(update.slot)] = update.extent }
                    }
                    if tearAt != nil {
                        try crashAndRecover()
                    } else {
                        inFlight.append(extents)
                    }
                }
            } else if choice < 97 {
                if !inFlight.isEmpty {
                    log.end(extents: inFlight.remove(at: Int.random(in: 0..<inFlight.count, using: &random)))
                }
            } else {
                try crashAndRecover()
            }
        }
        try crashAndRecover()
        #expect(crashes > 30)
    }
}

@Suite("Activity-log transactions")
struct ActivityLogTransactionTests {
    typealias Support = MetadataTestSupport

    static func sample(number: UInt32 = 13) -> ActivityLogTransaction {
        ActivityLogTransaction(
            transactionNumber: number, capacityExtents: 1237,
            updates: (0..<64).map { .init(slot: UInt32($0 * 3), extent: UInt32($0 + 1000)) },
            contextStartSlot: 1200,
            context: (0..<889).map { $0 % 5 == 0 ? ActivityLogTransaction.emptyExtent : UInt32($0) })
    }

    @Test("A transaction with 64 updates and 889 context entries fills 4096 bytes and decodes to itself")
    func roundTrip() throws {
        let transaction = Self.sample()
        let bytes = transaction.encoded()
        #expect(bytes.count == 4096)
        #expect(try ActivityLogTransaction.decode(bytes, slotIndex: 5, ringSlots: 8) == transaction)
        let small = ActivityLogTransaction(
            transactionNumber: 2, capacityExtents: 7, updates: [.init(slot: 6, extent: 0)], contextStartSlot: 3,
            context: [1, 2, ActivityLogTransaction.emptyExtent])
        #expect(try ActivityLogTransaction.decode(small.encoded(), slotIndex: 0, ringSlots: 2) == small)
    }

    @Test("Any single flipped bit makes decoding fail with a bad magic or a checksum mismatch")
    func singleBitFlipsAreDetected() {
        let bytes = Self.sample().encoded()
        for bit in Support.bitPositionsToFlip(seed: 3) {
            let error = Support.error { () throws(MetadataError) in
                try ActivityLogTransaction.decode(Support.flippingBit(bit, of: bytes), slotIndex: 5, ringSlots: 8)
            }
            #expect(
                error?.code == .checksumMismatch || error?.code == .badMagic, "bit \(bit): \(String(describing: error))"
            )
        }
    }

    @Test("A transaction read from the wrong ring slot is refused as misdirected")
    func misdirectedTransaction() throws {
        let error = try #require(
            Support.error { () throws(MetadataError) in
                try ActivityLogTransaction.decode(Self.sample().encoded(), slotIndex: 4, ringSlots: 8)
            })
        #expect(error.code == .invalidField)
        #expect(
            error.description
                == "activity-log slot 4: holds transaction 13, which belongs in slot 5 (misdirected write)")
    }

    @Test("A truncated transaction is reported as truncated")
    func truncated() {
        let error = Support.error { () throws(MetadataError) in
            try ActivityLogTransaction.decode(Array(Self.sample().encoded().prefix(28)), slotIndex: 5, ringSlots: 8)
        }
        #expect(error?.code == .truncated)
    }

    @Test("Intact transactions with impossible counts or slots are refused")
    func impossibleFieldsAreRefused() {
        let good = Self.sample().encoded()
        let cases: [(String, [UInt8])] = [
            ("65 updates", Support.patching(good, u32: 65 << 16 | 889, at: 16)),
            ("890 context entries", Support.patching(good, u32: 64 << 16 | 890, at: 16)),
            ("context start beyond capacity", Support.patching(good, u32: 1237, at: 20)),
            ("capacity 6", Support.patching(good, u32: 6, at: 24)),
            ("update slot beyond capacity", Support.patching(good, u32: 5000, at: 28)),
            ("version 9", Support.patching(good, u32: 9, at: 4)),
        ]
        for (name, bytes) in cases {
            let error = Support.error { () throws(MetadataError) in
                try ActivityLogTransaction.decode(bytes, slotIndex: 5, ringSlots: 8)
            }
            let expected: MetadataError.Code = name.hasPrefix("version") ? .unsupportedVersion : .invalidField
            #expect(error?.code == expected, "\(name): \(String(describing: error))")
        }
    }

    @Test("A never-written ring slot of zeros has a bad magic")
    func zeroSlot() {
        let error = Support.error { () throws(MetadataError) in
            try ActivityLogTransaction.decode(Array(repeating: 0, count: 4096), slotIndex: 0, ringSlots: 8)
        }
        #expect(error?.code == .badMagic)
        #expect(error?.blockDescription == "activity-log slot 0")
    }
}
