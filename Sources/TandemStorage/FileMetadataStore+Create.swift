import ReplicationCore

extension FileMetadataStore {
    /// drbdadm create-md: writes fresh metadata: Current UUID `GenerationUUIDs.justCreated` and nothing else, no
    /// flags but `activityLogClean` (the disk attaches Inconsistent), an empty bitmap and an empty activity-log ring.
    ///
    /// Refuses, before writing anything:
    /// - `deviceTooSmall` when the devices cannot hold the metadata and `MetaDiskLayout.minimumDataBytes` of data
    ///   (the message gives the minimum);
    /// - `metadataExists` when the superblock's place holds valid Tandem metadata, or a damaged block with Tandem's
    ///   superblock magic, unless `force` (the message says what was found: UUIDs, clean or not).
    ///
    /// Write order, so that a crash part-way never leaves metadata that decodes but is half new: with `force` the old
    /// superblock is zeroed and flushed first; then the bitmap and the whole activity-log ring are written and
    /// flushed; the new superblock is written and flushed last. Until that final write there is no valid superblock,
    /// so an interrupted create reads as "no metadata", and is simply run again.
    @discardableResult
    public func create(force: Bool) throws(StorageError) -> CreateReport {
        let layout = try layoutForCreate()
        let existing = try existingMetadata(at: layout.superblockOffsetBytes)
        if let existing, !force {
            throw StorageError(
                .metadataExists,
                "\(metaDiskDescription) already holds \(existing). Nothing was written. To discard it (this node "
                    + "then needs a full sync from its peer), run create-md again with --force")
        }
        if existing != nil {
            try writeMeta(
                Array(repeating: 0, count: Superblock.sizeBytes), at: layout.superblockOffsetBytes,
                what: "invalidated superblock")
            try syncMeta(what: "invalidated superblock")
        }
        try writeEmptyBitmap(layout)
        var activityLog = ActivityLog(capacityExtents: layout.activityLogExtents, ringSlots: layout.activityLogSlots)
        for transaction in activityLog.rewriteRing() {
            try writeMeta(
                transaction.encoded(), at: activityLogSlotOffset(layout, transaction), what: "activity log")
        }
        try syncMeta(what: "bitmap and activity log")
        var deviceUUID = environment.randomUInt64()
        if deviceUUID == 0 { deviceUUID = 1 }
        let superblock = Superblock(
            isClean: true, agreedSizeBytes: 0, uuids: .created, deviceUUID: deviceUUID, flags: [.activityLogClean],
            layout: layout.superblockLayout)
        try writeMeta(superblock.encoded(), at: layout.superblockOffsetBytes, what: "superblock")
        try syncMeta(what: "superblock")
        state.withLock { $0.loaded = Loaded(layout: layout, deviceUUID: deviceUUID) }
        let report = CreateReport(layout: layout, deviceUUID: deviceUUID, overwritten: existing)
        environment.log("\(configuration.resourceName): \(metaDiskDescription): \(report)")
        return report
    }

    /// What the superblock's place holds: nil when it is not Tandem metadata at all (zeros, another format).
    func existingMetadata(at offsetBytes: UInt64) throws(StorageError) -> ExistingMetadata? {
        let bytes = try readMeta(count: Superblock.sizeBytes, at: offsetBytes)
        do {
            return .valid(try Superblock.decode(bytes))
        } catch {
            let magic = MetadataBlockBytes.readUInt32(bytes, at: 0)
            guard magic == Superblock.cleanMagic || magic == Superblock.uncleanMagic else { return nil }
            return .damaged(error)
        }
    }

    /// Every bitmap page of the layout, all bits clear, a chunk per write.
    func writeEmptyBitmap(_ layout: MetaDiskLayout) throws(StorageError) {
        let pageCount = Int(layout.bitmapBytes / Self.blockBytes)
        let perChunk = Self.chunkBytes / Int(Self.blockBytes)
        var page = 0
        while page < pageCount {
            let end = min(page + perChunk, pageCount)
            var chunk: [UInt8] = []
            chunk.reserveCapacity((end - page) * Int(Self.blockBytes))
            for index in page..<end { chunk += BitmapPage.encode(pageIndex: UInt32(index), words: []) }
            try writeMeta(chunk, at: layout.bitmapOffsetBytes + UInt64(page) * Self.blockBytes, what: "bitmap")
            page = end
        }
    }

    func activityLogSlotOffset(_ layout: MetaDiskLayout, _ transaction: ActivityLogTransaction) -> UInt64 {
        layout.activityLogOffsetBytes
            + UInt64(transaction.ringSlot(ringSlots: layout.activityLogSlots)) * UInt64(ActivityLogTransaction.sizeBytes)
    }
}
