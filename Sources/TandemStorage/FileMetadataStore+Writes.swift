import ReplicationCore
import TandemDrivers

/// The `MetadataStore` operations. Each is durable when it returns; a failure is logged and reported as
/// `MetadataStoreError`, after which the replication node treats the disk as failed.
extension FileMetadataStore {
    public func writeSuperblock(_ superblockState: SuperblockState) throws(MetadataStoreError) {
        try reporting { () throws(StorageError) in
            let loaded = try requireLoaded()
            let superblock = Superblock(
                isClean: superblockState.flags.contains(.activityLogClean),
                agreedSizeBytes: superblockState.agreedSizeBytes, uuids: superblockState.uuids,
                deviceUUID: loaded.deviceUUID, flags: superblockState.flags, layout: loaded.layout.superblockLayout)
            try writeMeta(superblock.encoded(), at: loaded.layout.superblockOffsetBytes, what: "superblock")
            try syncMeta(what: "superblock")
        }
    }

    public func writeActivityLog(_ transaction: ActivityLogTransaction) throws(MetadataStoreError) {
        try reporting { () throws(StorageError) in
            let loaded = try requireLoaded()
            do throws(IOFailure) {
                try Posix.syncData(dataFD, what: configuration.dataPath)
            } catch {
                throw error.storageError(
                    .ioFailed, "The data device could not be flushed before an activity-log update")
            }
            try writeMeta(
                transaction.encoded(), at: activityLogSlotOffset(loaded.layout, transaction), what: "activity log")
            try syncMeta(what: "activity-log transaction \(transaction.transactionNumber)")
        }
    }

    /// Writes the pages, contiguous runs in one write each, then flushes once.
    public func writeBitmap(_ pages: [BitmapPageContents]) throws(MetadataStoreError) {
        try reporting { () throws(StorageError) in
            let loaded = try requireLoaded()
            let pageCount = loaded.layout.bitmapBytes / Self.blockBytes
            let sorted = pages.sorted { $0.pageIndex < $1.pageIndex }
            var start = 0
            while start < sorted.count {
                var end = start + 1
                while end < sorted.count && sorted[end].pageIndex == sorted[end - 1].pageIndex + 1 { end += 1 }
                var run: [UInt8] = []
                run.reserveCapacity((end - start) * Int(Self.blockBytes))
                for page in sorted[start..<end] {
                    precondition(
                        UInt64(page.pageIndex) < pageCount,
                        "bitmap page \(page.pageIndex) beyond the \(pageCount) pages of \(metaDiskDescription)")
                    run += BitmapPage.encode(pageIndex: page.pageIndex, words: page.words[...])
                }
                let offset = loaded.layout.bitmapOffsetBytes + UInt64(sorted[start].pageIndex) * Self.blockBytes
                try writeMeta(run, at: offset, what: "bitmap")
                start = end
            }
            try syncMeta(what: "bitmap")
        }
    }

    /// `blocks` are 4 KiB block ranges (bitmap bit numbers, as `SyncBitmap.setRuns()` gives them); see
    /// `preserve(blocks:reason:)`.
    public func preserveDivergedBlocks(_ blocks: [Range<UInt64>], reason: String) throws(MetadataStoreError) {
        try reporting { () throws(StorageError) in _ = try preserve(blocks: blocks, reason: reason) }
    }

    private func reporting(_ body: () throws(StorageError) -> Void) throws(MetadataStoreError) {
        do {
            try body()
        } catch {
            environment.log("\(configuration.resourceName): meta-data I/O error: \(error)")
            throw error.metadataStoreError
        }
    }
}
