import ReplicationCore

extension FileMetadataStore {
    /// Attach: reads the superblock, every activity-log ring slot and the bitmap pages that cover the data, and
    /// assembles them with `RecoveredMetadata.assemble` (the simulator's recovery, exactly). Torn or never-written
    /// ring slots are skipped, as activity-log recovery expects; anything else that does not decode is an error.
    ///
    /// The superblock is found where the configured placement puts it; the activity-log size comes from the
    /// superblock, and the layout it records must be the one the devices give today. `sizeBytes` of the result is
    /// the data the volume holds (`dataSizeBytes`).
    ///
    /// Throws `noMetadata` (nothing there: run create-md), `metadataCorrupt` (checksums, magic, fields),
    /// `layoutMismatch` (devices resized or meta-disk changed since create-md), `ioFailed`.
    public func recover() throws(StorageError) -> RecoveredMetadata {
        guard let superblockOffset = superblockOffsetBytes else {
            throw StorageError(
                .noMetadata,
                "\(metaDiskDescription): the device is too small to hold metadata (\(minimumSizeAdvice()))")
        }
        let superblockBytes = try readMeta(count: Superblock.sizeBytes, at: superblockOffset)
        let superblock = try decodeSuperblock(superblockBytes, at: superblockOffset)
        let layout = try checkLayout(of: superblock)
        guard superblock.agreedSizeBytes <= layout.usableDataBytes else {
            throw StorageError(
                .layoutMismatch,
                "\(metaDiskDescription): the device now holds \(layout.usableDataBytes) bytes of data, fewer than the "
                    + "\(superblock.agreedSizeBytes) bytes agreed with the peer. Restore the device's size; shrinking "
                    + "a replicated volume in place would lose data")
        }
        let slots = try readMetaBlocks(count: layout.activityLogSlots, at: layout.activityLogOffsetBytes)
        let pageCount = Int(BitmapPage.pageCount(forDataBytes: layout.usableDataBytes))
        let pages = try readMetaBlocks(count: pageCount, at: layout.bitmapOffsetBytes)
        let recovered: RecoveredMetadata
        do {
            recovered = try RecoveredMetadata.assemble(
                superblock: superblockBytes,
                activityLogSlots: Dictionary(uniqueKeysWithValues: slots.enumerated().map { ($0.offset, $0.element) }),
                bitmapPages: Dictionary(
                    uniqueKeysWithValues: pages.enumerated().map { (UInt32($0.offset), $0.element) }),
                ringSlots: layout.activityLogSlots, capacityExtents: layout.activityLogExtents,
                sizeBytes: layout.usableDataBytes)
        } catch {
            throw StorageError(
                .metadataCorrupt,
                "\(metaDiskDescription) is damaged (\(error.blockDescription)). The node cannot trust its bitmap "
                    + "or activity log: recreate the metadata (create-md --force) and let a full sync from the peer "
                    + "repair this node", cause: .metadata(error))
        }
        if layout.activityLogExtents != configuration.activityLogExtents
            || layout.activityLogSlots != configuration.activityLogSlots
        {
            environment.log(
                "\(configuration.resourceName): the metadata was created with al-extents \(layout.activityLogExtents) "
                    + "and \(layout.activityLogSlots) ring slots; the configuration asks for "
                    + "\(configuration.activityLogExtents) and \(configuration.activityLogSlots). Using the "
                    + "metadata's; recreate the metadata to change them")
        }
        state.withLock { $0.loaded = Loaded(layout: layout, deviceUUID: superblock.deviceUUID) }
        return recovered
    }

    func decodeSuperblock(_ bytes: [UInt8], at offsetBytes: UInt64) throws(StorageError) -> Superblock {
        do {
            return try Superblock.decode(bytes)
        } catch {
            if error.code == .badMagic {
                throw StorageError(
                    .noMetadata,
                    "no Tandem metadata at offset \(offsetBytes) of \(configuration.metaPath) (\(metaDiskDescription))."
                        + " Initialise it with `tandem adm create-md \(configuration.resourceName)`; if it was there "
                        + "before, check that drbd.conf names the right disk and meta-disk",
                    cause: .metadata(error))
            }
            throw StorageError(
                .metadataCorrupt,
                "the superblock at offset \(offsetBytes) of \(configuration.metaPath) is damaged. The node cannot "
                    + "attach: recreate the metadata (create-md --force) and let a full sync from the peer repair "
                    + "this node", cause: .metadata(error))
        }
    }

    /// The layout the devices give for the superblock's activity-log size, which must be the one it records.
    func checkLayout(of superblock: Superblock) throws(StorageError) -> MetaDiskLayout {
        let recorded = superblock.layout
        let advice =
            "The backing or meta device was resized, or the meta-disk setting changed, since create-md. Restore "
            + "them, or recreate the metadata (create-md --force) and resync fully"
        let layout: MetaDiskLayout
        do {
            layout = try MetaDiskLayout(
                placement, activityLogExtents: Int(recorded.activityLogExtents),
                activityLogSlots: Int(recorded.activityLogSlots))
        } catch {
            throw StorageError(
                .layoutMismatch, "\(metaDiskDescription) no longer fits its devices. \(advice)", cause: .metadata(error))
        }
        guard layout.superblockLayout == recorded else {
            throw StorageError(
                .layoutMismatch,
                "\(metaDiskDescription): the superblock records \(describe(recorded)), but the devices give "
                    + "\(describe(layout.superblockLayout)). \(advice)")
        }
        return layout
    }

    func describe(_ layout: Superblock.Layout) -> String {
        "metadata of \(layout.metadataSizeBytes) bytes (activity log of \(layout.activityLogSlots) slots at "
            + "\(layout.activityLogOffsetBytes), bitmap of \(layout.bitmapBytes) bytes at \(layout.bitmapOffsetBytes), "
            + "relative to the superblock)"
    }
}
