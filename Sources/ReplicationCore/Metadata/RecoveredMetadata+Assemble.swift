extension RecoveredMetadata {
    /// Builds what a restarting node recovers from the raw 4 KiB blocks of its meta-disk.
    ///
    /// This is the one implementation behind both the simulator's in-memory metadata and the production file-backed
    /// store (`TandemStorage.FileMetadataStore`), so that the recovery rules the simulator exercises are the ones that
    /// ship. The callers only differ in where the bytes come from.
    ///
    /// - `superblockBytes`: the superblock. Any decoding error is thrown: without a trustworthy superblock nothing
    ///   else on the meta-disk can be interpreted.
    /// - `activityLogSlots`: ring slot (`0..<ringSlots`) -> the block read from it. Slots that do not decode (never
    ///   written, torn by a crash, misdirected) are skipped, as `ActivityLog.init(recoveredFrom:)` expects: the ring
    ///   is written so that losing any one transaction still restates the whole log.
    /// - `bitmapPages`: page index -> the page read from it. A missing page reads as all clear; a page that does not
    ///   decode is thrown, because silently clearing its bits would skip a resync. Words beyond `sizeBytes` are
    ///   dropped.
    /// - `ringSlots`, `capacityExtents`: the activity log's geometry (al-extents and the ring size).
    /// - `sizeBytes`: the size of the data the bitmap describes.
    public static func assemble(
        superblock superblockBytes: [UInt8], activityLogSlots: [Int: [UInt8]], bitmapPages: [UInt32: [UInt8]],
        ringSlots: Int, capacityExtents: Int, sizeBytes: UInt64
    ) throws(MetadataError) -> RecoveredMetadata {
        let decoded = try Superblock.decode(superblockBytes)
        var transactions: [ActivityLogTransaction] = []
        for slot in activityLogSlots.keys.sorted() {
            if let transaction = try? ActivityLogTransaction.decode(
                activityLogSlots[slot]!, slotIndex: slot, ringSlots: ringSlots)
            {
                transactions.append(transaction)
            }
        }
        let activityLog = try ActivityLog(
            recoveredFrom: transactions, capacityExtents: capacityExtents, ringSlots: ringSlots)
        let blockCount = sizeBytes / SyncBitmap.blockBytes
        let wordCount = Int((blockCount + 63) / 64)
        var words = Array(repeating: UInt64(0), count: wordCount)
        for page in bitmapPages.keys.sorted() {
            let pageWords = try BitmapPage.decode(bitmapPages[page]!, expectedPageIndex: page)
            let first = Int(page) * BitmapPage.wordsPerPage
            for (offset, word) in pageWords.enumerated() where first + offset < wordCount { words[first + offset] = word }
        }
        return RecoveredMetadata(
            superblock: SuperblockState(
                uuids: decoded.uuids, flags: decoded.flags, agreedSizeBytes: decoded.agreedSizeBytes),
            wasUnclean: !decoded.isClean, bitmapWords: words, activityLog: activityLog, sizeBytes: sizeBytes)
    }
}
