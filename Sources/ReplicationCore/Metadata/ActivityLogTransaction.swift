/// One 4096-byte record of the on-disk activity-log ring (DRBD's `struct al_transaction_on_disk`, reference drbd.md
/// section 3).
///
/// A transaction carries the slot changes it makes (up to 64 updates) and, in addition, restates the current contents
/// of a window of slots (the context). The window advances round-robin from one transaction to the next, so that the
/// last `ringSlots - 1` transactions together restate every slot: after a crash, replaying whatever the ring still
/// holds rebuilds the whole log even though older update records have been overwritten. One transaction of the ring
/// may be torn by the crash, hence `- 1` (`ActivityLog.maximumCapacityExtents(ringSlots:)`).
///
/// Layout (big-endian; the rest of the block is zero):
///
/// | Offset | Size | Field |
/// |---|---|---|
/// | 0 | 4 | magic (`ActivityLogTransaction.magic`) |
/// | 4 | 4 | format version (`currentFormatVersion`) |
/// | 8 | 4 | CRC-32C of the block with this field zeroed |
/// | 12 | 4 | transaction number |
/// | 16 | 2 | update count (0...64) |
/// | 18 | 2 | context count (0...889) |
/// | 20 | 4 | context start slot |
/// | 24 | 4 | capacity in extents (al-extents) the transaction was written for |
/// | 28 | 8 each | updates: u32 slot, u32 extent (`emptyExtent` when the slot was emptied) |
/// | then | 4 each | context: the extent in each slot from the start slot on, wrapping at the capacity |
///
/// 28 + 64 * 8 + 889 * 4 = 4096, which is where the 889 comes from (DRBD, with 16-bit slot numbers, fits 919).
public struct ActivityLogTransaction: Sendable, Hashable {
    /// One slot change: `slot` now holds `extent`, or is empty when `extent == emptyExtent`.
    public struct Update: Sendable, Hashable {
        public var slot: UInt32
        public var extent: UInt32

        public init(slot: UInt32, extent: UInt32) {
            self.slot = slot
            self.extent = extent
        }
    }

    /// "TndA".
    public static let magic: UInt32 = 0x546E_6441
    public static let currentFormatVersion: UInt32 = 1
    public static let sizeBytes = 4096
    static let headerBytes = 28
    public static let maximumUpdates = 64
    public static let maximumContextEntries = 889
    /// The extent number that marks an empty slot; therefore never a real extent.
    public static let emptyExtent: UInt32 = 0xFFFF_FFFF

    /// Increases by one per transaction (wrapping at 2^32); the transaction lives in ring slot
    /// `transactionNumber % ringSlots`.
    public var transactionNumber: UInt32
    /// The log's capacity when written; recovery refuses a transaction written for a different capacity.
    public var capacityExtents: UInt32
    public var updates: [Update]
    public var contextStartSlot: UInt32
    /// `context[i]` is the extent in slot `(contextStartSlot + i) % capacityExtents` after this transaction's
    /// updates, `emptyExtent` for an empty slot.
    public var context: [UInt32]

    public init(
        transactionNumber: UInt32, capacityExtents: UInt32, updates: [Update], contextStartSlot: UInt32,
        context: [UInt32]
    ) {
        self.transactionNumber = transactionNumber
        self.capacityExtents = capacityExtents
        self.updates = updates
        self.contextStartSlot = contextStartSlot
        self.context = context
    }

    /// The ring slot this transaction belongs in.
    public func ringSlot(ringSlots: Int) -> Int {
        precondition(ringSlots > 0, "activity-log ring of \(ringSlots) slots")
        return Int(transactionNumber % UInt32(ringSlots))
    }

    /// Why this transaction cannot be written, or nil. Decoding refuses exactly what encoding refuses.
    func problem() -> String? {
        guard ActivityLog.capacityRange.contains(Int(capacityExtents)) else {
            return "capacity of \(capacityExtents) extents is outside \(ActivityLog.capacityRange)"
        }
        guard updates.count <= Self.maximumUpdates else {
            return "\(updates.count) updates exceed \(Self.maximumUpdates)"
        }
        let contextLimit = min(Self.maximumContextEntries, Int(capacityExtents))
        guard context.count <= contextLimit else { return "\(context.count) context entries exceed \(contextLimit)" }
        guard contextStartSlot < capacityExtents else {
            return "context start slot \(contextStartSlot) is outside a log of \(capacityExtents) slots"
        }
        if let bad = updates.first(where: { $0.slot >= capacityExtents }) {
            return "update of slot \(bad.slot) is outside a log of \(capacityExtents) slots"
        }
        return nil
    }

    /// The 4096-byte on-disk form.
    public func encoded() -> [UInt8] {
        if let problem = problem() {
            preconditionFailure("activity-log transaction \(transactionNumber) cannot be encoded: \(problem)")
        }
        var writer = ByteWriter(reservingCapacity: Self.sizeBytes)
        writer.write(Self.magic)
        writer.write(Self.currentFormatVersion)
        writer.write(UInt32(0))  // checksum, sealed below
        writer.write(transactionNumber)
        writer.write(UInt16(updates.count))
        writer.write(UInt16(context.count))
        writer.write(contextStartSlot)
        writer.write(capacityExtents)
        for update in updates {
            writer.write(update.slot)
            writer.write(update.extent)
        }
        for extent in context { writer.write(extent) }
        writer.pad(toLength: Self.sizeBytes)
        MetadataBlock.seal(&writer)
        let result = writer.bytes
        assert(
            (try? Self.decodeUnplaced(result, block: "activity-log transaction")) == self,
            "activity-log transaction \(transactionNumber) does not decode to what was encoded")
        return result
    }

    /// Decodes the block read from ring slot `slotIndex` of a ring of `ringSlots`.
    ///
    /// Checks, in order: length, magic, checksum, format version, field sanity (counts, slot numbers, capacity, zero
    /// padding), and that the transaction number belongs in this ring slot (a write that landed in the wrong slot is
    /// refused). A never-written or torn slot fails with `badMagic` or `checksumMismatch`; recovery skips those.
    public static func decode(_ bytes: [UInt8], slotIndex: Int, ringSlots: Int) throws(MetadataError)
        -> ActivityLogTransaction
    {
        precondition(
            ActivityLog.ringSlotsRange.contains(ringSlots) && (0..<ringSlots).contains(slotIndex),
            "ring slot \(slotIndex) of a ring of \(ringSlots)")
        let block = "activity-log slot \(slotIndex)"
        let transaction = try decodeUnplaced(bytes, block: block)
        if let problem = ActivityLog.parameterProblem(
            capacityExtents: Int(transaction.capacityExtents), ringSlots: ringSlots)
        {
            throw MetadataError(.invalidField, problem, block: block)
        }
        let expectedSlot = transaction.ringSlot(ringSlots: ringSlots)
        guard expectedSlot == slotIndex else {
            throw MetadataError(
                .invalidField,
                "holds transaction \(transaction.transactionNumber), which belongs in slot \(expectedSlot) "
                    + "(misdirected write)",
                block: block)
        }
        return transaction
    }

    /// Decodes without checking where the block was read from.
    private static func decodeUnplaced(_ bytes: [UInt8], block: String) throws(MetadataError) -> ActivityLogTransaction
    {
        _ = try MetadataBlock.checkFrame(bytes, block: block, magics: [magic])
        let version = MetadataBlock.readUInt32(bytes, at: 4)
        guard version == currentFormatVersion else {
            throw MetadataError(
                .unsupportedVersion, "unsupported format version \(version) (this build reads \(currentFormatVersion))",
                block: block)
        }
        let header = try MetadataBlock.read(bytes, block: block) { reader throws(ByteReaderError) in
            try reader.skip(12)  // magic, version, checksum: already checked
            return (
                number: try reader.read(UInt32.self), updateCount: Int(try reader.read(UInt16.self)),
                contextCount: Int(try reader.read(UInt16.self)), contextStartSlot: try reader.read(UInt32.self),
                capacity: try reader.read(UInt32.self)
            )
        }
        // Bounded before the entries are read, so that a corrupt count cannot run past the block.
        guard header.updateCount <= maximumUpdates, header.contextCount <= maximumContextEntries else {
            throw MetadataError(
                .invalidField,
                "\(header.updateCount) updates and \(header.contextCount) context entries exceed "
                    + "\(maximumUpdates) and \(maximumContextEntries)",
                block: block)
        }
        let (updates, context, endOffset) = try MetadataBlock.read(bytes, block: block) {
            reader throws(ByteReaderError) in
            try reader.skip(headerBytes)
            var updates: [Update] = []
            updates.reserveCapacity(header.updateCount)
            for _ in 0..<header.updateCount {
                updates.append(Update(slot: try reader.read(), extent: try reader.read()))
            }
            var context: [UInt32] = []
            context.reserveCapacity(header.contextCount)
            for _ in 0..<header.contextCount { context.append(try reader.read()) }
            return (updates, context, reader.position)
        }
        let transaction = ActivityLogTransaction(
            transactionNumber: header.number, capacityExtents: header.capacity, updates: updates,
            contextStartSlot: header.contextStartSlot, context: context)
        if let problem = transaction.problem() { throw MetadataError(.invalidField, problem, block: block) }
        if let offset = bytes[endOffset...].firstIndex(where: { $0 != 0 }) {
            throw MetadataError(.invalidField, "padding byte \(offset) is not zero", block: block)
        }
        return transaction
    }
}
