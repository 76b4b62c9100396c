import ReplicationCore

extension FileMetadataStore {
    /// Lines shown per list (hot extents, damaged blocks) before "... and N more": a dump must stay readable.
    static let dumpListMaximum = 32

    /// A human-readable description of the on-disk metadata, for `tandem adm dump-md`: the superblock's fields, each
    /// activity-log slot, the log recovery would rebuild, and the bitmap's pages and set bits. Read-only, and never
    /// throws for damage: a block that does not decode is described with its error, so the dump is most useful
    /// exactly when something is wrong. Only an unreadable device ends it early.
    public func dump() -> String {
        var lines: [String] = [
            "resource \(configuration.resourceName): \(metaDiskDescription)",
            "data device \(configuration.dataPath): \(dataDeviceSizeBytes) bytes",
        ]
        if configuration.metaDisk != .internal {
            lines.append("meta device \(configuration.metaPath): \(metaDeviceSizeBytes) bytes")
        }
        guard let offset = superblockOffsetBytes else {
            lines.append("no room for a superblock: \(minimumSizeAdvice())")
            return lines.joined(separator: "\n")
        }
        do throws(StorageError) {
            let superblock = try decodeSuperblock(try readMeta(count: Superblock.sizeBytes, at: offset), at: offset)
            lines += describeSuperblock(superblock, at: offset)
            let layout = try checkLayout(of: superblock)
            lines.append(
                "data: \(layout.usableDataBytes) bytes; metadata: \(layout.metadataSizeBytes) bytes at offset "
                    + "\(layout.metadataOffsetBytes) (activity log at \(layout.activityLogOffsetBytes), bitmap of "
                    + "\(layout.bitmapBytes) bytes at \(layout.bitmapOffsetBytes))")
            lines += try describeActivityLog(layout)
            lines += try describeBitmap(layout)
        } catch {
            lines.append("error: \(error)")
        }
        return lines.joined(separator: "\n")
    }

    func describeSuperblock(_ superblock: Superblock, at offsetBytes: UInt64) -> [String] {
        [
            "superblock at offset \(offsetBytes): format version \(Superblock.currentFormatVersion), "
                + (superblock.isClean ? "clean" : "unclean (the activity log is replayed at attach)"),
            "  generation UUIDs (current:bitmap:history1:history2): \(superblock.uuids)",
            "  flags: \(describeFlags(superblock.flags))",
            "  agreed size: \(superblock.agreedSizeBytes) bytes",
            "  device UUID: \(superblock.deviceUUID.fixedWidthHex)",
            "  al-extents: \(superblock.layout.activityLogExtents), ring slots: \(superblock.layout.activityLogSlots)",
        ]
    }

    func describeActivityLog(_ layout: MetaDiskLayout) throws(StorageError) -> [String] {
        let slots = try readMetaBlocks(count: layout.activityLogSlots, at: layout.activityLogOffsetBytes)
        var lines = ["activity log: \(layout.activityLogSlots) ring slots"]
        var transactions: [ActivityLogTransaction] = []
        for (index, bytes) in slots.enumerated() {
            do {
                let transaction = try ActivityLogTransaction.decode(
                    bytes, slotIndex: index, ringSlots: layout.activityLogSlots)
                transactions.append(transaction)
                lines.append(
                    "  slot \(index): transaction \(transaction.transactionNumber), \(transaction.updates.count) "
                        + "updates, context of \(transaction.context.count) slots from slot "
                        + "\(transaction.contextStartSlot)")
            } catch {
                lines.append("  slot \(index): skipped at recovery: \(error.message)")
            }
        }
        do {
            let log = try ActivityLog(
                recoveredFrom: transactions, capacityExtents: layout.activityLogExtents,
                ringSlots: layout.activityLogSlots)
            let hot = log.hotExtents
            lines.append(
                "  recovered: \(hot.count) hot extents of \(layout.activityLogExtents), next transaction "
                    + "\(log.nextTransactionNumber)\(hot.isEmpty ? "" : ": " + Self.abbreviated(hot.map(String.init)))")
        } catch {
            lines.append("  recovery fails: \(error)")
        }
        return lines
    }

    func describeBitmap(_ layout: MetaDiskLayout) throws(StorageError) -> [String] {
        let pageCount = Int(BitmapPage.pageCount(forDataBytes: layout.usableDataBytes))
        let pages = try readMetaBlocks(count: pageCount, at: layout.bitmapOffsetBytes)
        let blockCount = layout.usableDataBytes / SyncBitmap.blockBytes
        var bitsSet: UInt64 = 0
        var damaged: [String] = []
        for (index, bytes) in pages.enumerated() {
            do {
                let words = try BitmapPage.decode(bytes, expectedPageIndex: UInt32(index))
                let firstBlock = UInt64(index) * BitmapPage.bitsPerPage
                for (wordIndex, word) in words.enumerated() where word != 0 {
                    let wordFirstBlock = firstBlock + UInt64(wordIndex) * 64
                    guard wordFirstBlock < blockCount else { break }
                    let valid = min(64, blockCount - wordFirstBlock)
                    let mask: UInt64 = valid == 64 ? ~0 : (1 << valid) - 1
                    bitsSet += UInt64((word & mask).nonzeroBitCount)
                }
            } catch {
                damaged.append("page \(index): \(error.message)")
            }
        }
        var lines = [
            "bitmap: \(pageCount) pages for \(blockCount) blocks of 4 KiB; \(bitsSet) bits set "
                + "(\(bitsSet * SyncBitmap.blockBytes) bytes out of sync)"
        ]
        if !damaged.isEmpty { lines.append("  damaged: " + Self.abbreviated(damaged)) }
        return lines
    }

    static func abbreviated(_ items: [String]) -> String {
        let shown = items.prefix(dumpListMaximum).joined(separator: ", ")
        return items.count > dumpListMaximum ? "\(shown) ... and \(items.count - dumpListMaximum) more" : shown
    }
}
