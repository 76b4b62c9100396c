/// What `ActivityLog.begin(extents:)` asks of its caller.
public enum ActivityLogBeginResult: Sendable, Hashable {
    /// Every extent was already hot: the data writes may be submitted at once.
    case alreadyHot
    /// Some extents had to be brought in. Before submitting the data writes the caller must, in this order:
    /// persist the bitmap bits of the `evicted` extents (their writes are no longer covered by the log), then write
    /// the transactions to their ring slots one after the other, each durable before the next is written.
    case needsTransactions([ActivityLogTransaction], evicted: [UInt32])
    /// Not enough unpinned slots for the extents that are not hot. Nothing changed; the caller waits for `end` calls
    /// and retries.
    case full
}

/// The activity log: the set of 4 MiB extents of the data that may have writes in flight (reference drbd.md
/// section 3, glossary "Activity log").
///
/// The log has `capacityExtents` slots (al-extents), each empty or holding one extent. An extent must be hot (in a
/// slot) from before a write to it is submitted until after the write completes; `begin` and `end` bracket each write
/// and keep a per-extent count of writes in flight (pins). A pinned extent is never evicted. When an extent is brought
/// in, the least recently begun unpinned extent gives up its slot if there is no empty one.
///
/// Every change of slot contents is recorded in an `ActivityLogTransaction` that the caller writes to the on-disk
/// ring before the data writes it covers. After a crash, `init(recoveredFrom:capacityExtents:ringSlots:)` rebuilds
/// the slots from the ring; every extent that may have had a write in flight is then hot, and is resynced.
///
/// Everything is deterministic: slot choice depends only on slot indexes and a use counter, never on hashing order.
public struct ActivityLog: Sendable, Hashable {
    /// 4 MiB, DRBD's AL extent.
    public static let extentBytes: UInt64 = 4 << 20
    /// al-extents accepted by the core. (drbd.conf, like DRBD 8.4, accepts 67 and up.)
    public static let capacityRange = 7...65534
    /// DRBD's default al-extents, about 4.8 GiB of hot data.
    public static let defaultCapacityExtents = 1237
    /// A power of two, so that `transactionNumber % ringSlots` stays continuous when the number wraps at 2^32; at
    /// least 2, so that one torn transaction still leaves one to restate the log.
    public static let ringSlotsRange = 2...1024
    /// 8 transactions of 4 KiB = 32 KiB, DRBD's default activity-log size.
    public static let defaultRingSlots = 8

    /// The most extents a ring of `ringSlots` can restate: the `ringSlots - 1` transactions that survive a torn write
    /// restate `maximumContextEntries` slots each (DRBD's `drbd_al_extents_max`).
    public static func maximumCapacityExtents(ringSlots: Int) -> Int {
        min(capacityRange.upperBound, (ringSlots - 1) * ActivityLogTransaction.maximumContextEntries)
    }

    /// Why a log of this size cannot exist, or nil.
    static func parameterProblem(capacityExtents: Int, ringSlots: Int) -> String? {
        guard ringSlotsRange.contains(ringSlots), ringSlots & (ringSlots - 1) == 0 else {
            return "activity-log ring of \(ringSlots) slots is not a power of two in \(ringSlotsRange)"
        }
        guard capacityRange.contains(capacityExtents) else {
            return "al-extents \(capacityExtents) is outside \(capacityRange)"
        }
        let maximum = maximumCapacityExtents(ringSlots: ringSlots)
        guard capacityExtents <= maximum else {
            return "al-extents \(capacityExtents) exceeds \(maximum), the most an activity log of \(ringSlots) "
                + "transactions can restate"
        }
        return nil
    }

    public let capacityExtents: Int
    public let ringSlots: Int
    /// The number the next transaction will carry.
    public private(set) var nextTransactionNumber: UInt32

    /// Extent per slot, `ActivityLogTransaction.emptyExtent` when empty.
    private var slots: [UInt32]
    /// Writes in flight per slot.
    private var pinCounts: [UInt32]
    /// `useClock` value of the slot's last `begin`; the smallest among unpinned slots is evicted first.
    private var lastUsed: [UInt64]
    /// The inverse of `slots`; only ever looked up, never iterated, so hashing order cannot leak into behaviour.
    private var slotOfExtent: [UInt32: Int]
    private var useClock: UInt64 = 0
    private var pinnedTotal = 0
    private var emptySlotCount: Int
    /// The first slot the next transaction's context restates.
    private var contextCursor = 0

    /// An empty log whose first transaction carries `firstTransactionNumber`.
    ///
    /// Only for a ring that holds no valid transaction (freshly created metadata), or together with `rewriteRing()`:
    /// over a ring that holds transactions, use `init(recoveredFrom:capacityExtents:ringSlots:)`, which continues
    /// their numbering; new transactions numbered below old ones would be replayed before them.
    public init(capacityExtents: Int, ringSlots: Int, firstTransactionNumber: UInt32 = 0) {
        if let problem = Self.parameterProblem(capacityExtents: capacityExtents, ringSlots: ringSlots) {
            preconditionFailure(problem)
        }
        self.capacityExtents = capacityExtents
        self.ringSlots = ringSlots
        nextTransactionNumber = firstTransactionNumber
        slots = Array(repeating: ActivityLogTransaction.emptyExtent, count: capacityExtents)
        pinCounts = Array(repeating: 0, count: capacityExtents)
        lastUsed = Array(repeating: 0, count: capacityExtents)
        slotOfExtent = [:]
        emptySlotCount = capacityExtents
    }

    /// Rebuilds the log from the transactions that decoded successfully from the ring (at most one per ring slot;
    /// torn and never-written slots are simply left out). An empty list gives an empty log.
    ///
    /// Replay order is by transaction number, newest last. Numbers wrap at 2^32, so "newest" is the transaction that
    /// every other one precedes in serial-number arithmetic (`newest &- other < 2^31`); transactions more than
    /// `ringSlots - 1` behind it cannot belong to the current ring contents and are ignored. Each transaction's updates
    /// and then its context are applied; the last `ringSlots - 1` transactions restate every slot, so the result is
    /// the log as of the newest valid transaction. Numbering continues after it.
    ///
    /// Throws `invalidField` when a transaction was written for another capacity (al-extents changed without
    /// `rewriteRing()`), or when the numbers are so far apart that no newest one exists.
    public init(
        recoveredFrom transactions: [ActivityLogTransaction], capacityExtents: Int, ringSlots: Int
    ) throws(MetadataError) {
        self.init(capacityExtents: capacityExtents, ringSlots: ringSlots)
        guard !transactions.isEmpty else { return }
        precondition(
            transactions.count <= ringSlots, "\(transactions.count) transactions from a ring of \(ringSlots) slots")
        var seenRingSlots = Set<Int>()
        for transaction in transactions {
            let ringSlot = transaction.ringSlot(ringSlots: ringSlots)
            precondition(
                seenRingSlots.insert(ringSlot).inserted,
                "two transactions for ring slot \(ringSlot): recovery takes one decoded block per ring slot")
            guard transaction.capacityExtents == UInt32(capacityExtents) else {
                throw MetadataError(
                    .invalidField,
                    "transaction \(transaction.transactionNumber) was written for \(transaction.capacityExtents) "
                        + "extents, the log has \(capacityExtents)",
                    block: "activity-log slot \(ringSlot)")
            }
            if let problem = transaction.problem() {
                preconditionFailure("transaction \(transaction.transactionNumber) was not decoded: \(problem)")
            }
        }
        let halfRange: UInt32 = 1 << 31
        guard
            let newest = transactions.first(where: { candidate in
                transactions.allSatisfy { candidate.transactionNumber &- $0.transactionNumber < halfRange }
            })
        else {
            let numbers = transactions.map(\.transactionNumber).sorted()
            throw MetadataError(
                .invalidField, "transaction numbers \(numbers) are too far apart to order", block: "activity log")
        }
        func age(_ transaction: ActivityLogTransaction) -> UInt32 {
            newest.transactionNumber &- transaction.transactionNumber
        }
        let replay = transactions.filter { age($0) < UInt32(ringSlots) }.sorted { age($0) > age($1) }
        for transaction in replay {
            for update in transaction.updates { slots[Int(update.slot)] = update.extent }
            for (offset, extent) in transaction.context.enumerated() {
                slots[(Int(transaction.contextStartSlot) + offset) % capacityExtents] = extent
            }
        }
        // An intact ring never yields an extent twice; if corrupt input does, the lowest slot keeps it (the extent
        // stays hot, which is what safety needs).
        for (slot, extent) in slots.enumerated() where extent != ActivityLogTransaction.emptyExtent {
            if slotOfExtent[extent] == nil {
                slotOfExtent[extent] = slot
                emptySlotCount -= 1
            } else {
                slots[slot] = ActivityLogTransaction.emptyExtent
            }
        }
        nextTransactionNumber = newest.transactionNumber &+ 1
        contextCursor = (Int(newest.contextStartSlot) + newest.context.count) % capacityExtents
    }

    /// Whether `extent` is in the log.
    public func isHot(_ extent: UInt32) -> Bool { slotOfExtent[extent] != nil }

    /// The extents in the log, in increasing order.
    public var hotExtents: [UInt32] { slots.filter { $0 != ActivityLogTransaction.emptyExtent }.sorted() }

    /// The extent in each slot, nil for an empty slot.
    public var slotExtents: [UInt32?] { slots.map { $0 == ActivityLogTransaction.emptyExtent ? nil : $0 } }

    /// Writes in flight to `extent` (0 when it is not hot).
    public func pinCount(_ extent: UInt32) -> Int { slotOfExtent[extent].map { Int(pinCounts[$0]) } ?? 0 }

    /// No write is in flight.
    public var isIdle: Bool { pinnedTotal == 0 }

    /// The extents touched by `lengthBytes` bytes of data from `offsetBytes` on.
    public static func extents(coveringOffset offsetBytes: UInt64, lengthBytes: UInt64) -> ClosedRange<UInt32> {
        precondition(lengthBytes > 0, "an empty write at \(offsetBytes) touches no extent")
        let (endBytes, overflow) = offsetBytes.addingReportingOverflow(lengthBytes)
        precondition(!overflow, "write of \(lengthBytes) bytes at \(offsetBytes) overflows")
        let first = offsetBytes / extentBytes
        let last = (endBytes - 1) / extentBytes
        precondition(
            last < UInt64(ActivityLogTransaction.emptyExtent),
            "write of \(lengthBytes) bytes at \(offsetBytes) reaches extent \(last), beyond the largest extent number")
        return UInt32(first)...UInt32(last)
    }

    /// Pins every extent in `extents` for a write about to be submitted, bringing in those that are not hot.
    ///
    /// Slots for new extents: empty slots first (lowest index first), then the least recently begun unpinned hot
    /// extents that are not themselves in `extents`. All or nothing: `.full` changes nothing. More than
    /// `maximumUpdates` new extents are spread over several transactions, in order; each one's context restates the
    /// slots as they are after its own updates, so that a crash between them recovers a consistent prefix.
    ///
    /// `extents` must not repeat an extent, and must not name more extents than the log holds (such a write could
    /// never proceed; the caller splits it).
    public mutating func begin(extents requested: [UInt32]) -> ActivityLogBeginResult {
        precondition(
            requested.count <= capacityExtents,
            "a write over \(requested.count) extents can never fit a log of \(capacityExtents)")
        var requestedSet = Set<UInt32>(minimumCapacity: requested.count)
        var missing: [UInt32] = []
        for extent in requested {
            precondition(extent != ActivityLogTransaction.emptyExtent, "extent \(extent) is the empty-slot marker")
            precondition(requestedSet.insert(extent).inserted, "extent \(extent) listed twice in one begin")
            if slotOfExtent[extent] == nil { missing.append(extent) }
        }
        var transactions: [ActivityLogTransaction] = []
        var evicted: [UInt32] = []
        if !missing.isEmpty {
            guard let targetSlots = chooseSlots(count: missing.count, sparing: requestedSet) else { return .full }
            // From here on nothing can fail.
            var start = 0
            while start < missing.count {
                let end = min(start + ActivityLogTransaction.maximumUpdates, missing.count)
                var updates: [ActivityLogTransaction.Update] = []
                for index in start..<end {
                    let slot = targetSlots[index]
                    let old = slots[slot]
                    if old == ActivityLogTransaction.emptyExtent {
                        emptySlotCount -= 1
                    } else {
                        evicted.append(old)
                        slotOfExtent[old] = nil
                    }
                    slots[slot] = missing[index]
                    slotOfExtent[missing[index]] = slot
                    updates.append(.init(slot: UInt32(slot), extent: missing[index]))
                }
                transactions.append(makeTransaction(updates: updates))
                start = end
            }
        }
        for extent in requested {
            guard let slot = slotOfExtent[extent] else { preconditionFailure("extent \(extent) not hot after begin") }
            precondition(pinCounts[slot] < UInt32.max, "extent \(extent) has \(pinCounts[slot]) writes in flight")
            pinCounts[slot] += 1
            pinnedTotal += 1
            useClock += 1
            lastUsed[slot] = useClock
        }
        return transactions.isEmpty ? .alreadyHot : .needsTransactions(transactions, evicted: evicted)
    }

    /// Unpins the extents of a completed write; `extents` is what was passed to the matching `begin`.
    public mutating func end(extents: [UInt32]) {
        for extent in extents {
            guard let slot = slotOfExtent[extent], pinCounts[slot] > 0 else {
                preconditionFailure("end of a write to extent \(extent), which has no write in flight")
            }
            pinCounts[slot] -= 1
            pinnedTotal -= 1
        }
    }

    /// `ringSlots` transactions without updates whose contexts together restate every slot. Writing them over the
    /// whole ring makes it describe exactly this log, whatever it held before: used when metadata is created, and
    /// after al-extents changed (start a new empty log numbered after the old ring's newest transaction, then
    /// rewrite the ring).
    public mutating func rewriteRing() -> [ActivityLogTransaction] {
        (0..<ringSlots).map { _ in makeTransaction(updates: []) }
    }

    /// The slots for `count` new extents, or nil if there are not enough: empty slots by index, then unpinned hot
    /// slots whose extent is not in `sparing`, least recently used first (ties by index).
    private func chooseSlots(count: Int, sparing: Set<UInt32>) -> [Int]? {
        var chosen: [Int] = []
        chosen.reserveCapacity(count)
        if emptySlotCount > 0 {
            for slot in slots.indices where slots[slot] == ActivityLogTransaction.emptyExtent {
                chosen.append(slot)
                if chosen.count == count { return chosen }
            }
        }
        var candidates = slots.indices.filter { slot in
            slots[slot] != ActivityLogTransaction.emptyExtent && pinCounts[slot] == 0 && !sparing.contains(slots[slot])
        }
        let needed = count - chosen.count
        guard candidates.count >= needed else { return nil }
        candidates.sort { (lastUsed[$0], $0) < (lastUsed[$1], $1) }
        return chosen + candidates.prefix(needed)
    }

    /// A transaction carrying `updates` (already applied to `slots`) and the next window of context.
    private mutating func makeTransaction(updates: [ActivityLogTransaction.Update]) -> ActivityLogTransaction {
        let start = contextCursor
        let count = min(ActivityLogTransaction.maximumContextEntries, capacityExtents)
        let context = (0..<count).map { slots[(start + $0) % capacityExtents] }
        contextCursor = (start + count) % capacityExtents
        let transaction = ActivityLogTransaction(
            transactionNumber: nextTransactionNumber, capacityExtents: UInt32(capacityExtents), updates: updates,
            contextStartSlot: UInt32(start), context: context)
        nextTransactionNumber &+= 1
        return transaction
    }
}
