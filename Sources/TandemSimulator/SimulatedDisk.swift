import ReplicationCore

/// A backing device with a volatile write cache, kept sector by sector (512 bytes) and sparsely: unwritten sectors
/// read as zeros.
///
/// - A completed write lands in the cache (or, with FUA, on stable storage).
/// - A flush makes everything that completed before it was submitted stable.
/// - A crash loses the cache, except that each cached or in-flight sector independently may or may not have
///   reached the medium: writes tear at 512-byte granularity, the worst a real disk does.
/// - Reads and writes on configured ranges fail.
final class SimulatedDisk {
    static let sectorBytes = 512

    let sizeBytes: UInt64
    private(set) var stable: [UInt64: [UInt8]] = [:]
    private(set) var cache: [UInt64: [UInt8]] = [:]
    /// Sectors of writes submitted but not complete, with their data.
    private var inFlight: [UInt64: [UInt64: [UInt8]]] = [:]
    var failingRanges: [Range<UInt64>] = []

    init(sizeBytes: UInt64) { self.sizeBytes = sizeBytes }

    func fails(_ range: BlockRange) -> Bool {
        failingRanges.contains { $0.overlaps(range.offsetBytes..<range.endBytes) }
    }

    func beginWrite(id: UInt64, range: BlockRange, payload: [UInt8]) {
        var sectors: [UInt64: [UInt8]] = [:]
        for index in 0..<Int(range.sizeBytes) / Self.sectorBytes {
            let start = index * Self.sectorBytes
            sectors[range.sector + UInt64(index)] = Array(payload[start..<start + Self.sectorBytes])
        }
        inFlight[id] = sectors
    }

    /// Completes a write: its sectors reach the cache, or stable storage with FUA.
    func completeWrite(id: UInt64, forceUnitAccess: Bool) {
        guard let sectors = inFlight.removeValue(forKey: id) else { return }
        for (sector, data) in sectors {
            if forceUnitAccess {
                storeStable(sector, data)
                cache[sector] = nil
            } else {
                cache[sector] = data
            }
        }
    }

    /// A flush: everything in the cache now becomes stable. (Writes completing after the flush was submitted may
    /// be included too; that is allowed.)
    func flush() {
        for (sector, data) in cache { storeStable(sector, data) }
        cache.removeAll()
    }

    /// Zero sectors are not stored: an absent sector reads as zeros. (The cache keeps zeros, since a cached zero
    /// must hide an older stable value.)
    private func storeStable(_ sector: UInt64, _ data: [UInt8]) {
        stable[sector] = data.contains { $0 != 0 } ? data : nil
    }

    func read(_ range: BlockRange) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(Int(range.sizeBytes))
        for index in 0..<UInt64(range.sizeBytes) / UInt64(Self.sectorBytes) {
            let sector = range.sector + index
            if let data = cache[sector] ?? stable[sector] {
                result.append(contentsOf: data)
            } else {
                result.append(contentsOf: repeatElement(0, count: Self.sectorBytes))
            }
        }
        return result
    }

    /// Power loss: each cached or in-flight sector reaches the medium or not, as the random draw says.
    func crash(random: inout SplitMix64) {
        for (sector, data) in cache.sorted(by: { $0.key < $1.key }) where random.next() % 2 == 0 {
            storeStable(sector, data)
        }
        cache.removeAll()
        for id in inFlight.keys.sorted() {
            for (sector, data) in inFlight[id]!.sorted(by: { $0.key < $1.key }) where random.next() % 3 == 0 {
                storeStable(sector, data)
            }
        }
        inFlight.removeAll()
    }

    /// What a read of the whole device returns now, for the checkers: sector -> data. A missing sector and an
    /// all-zero sector read the same; `sameContents` compares images that way.
    var visibleImage: [UInt64: [UInt8]] {
        var image = stable
        for (sector, data) in cache { image[sector] = data }
        return image
    }

    static func sameContents(_ left: [UInt8]?, _ right: [UInt8]?) -> Bool {
        switch (left, right) {
        case (nil, nil): true
        case (let data?, nil), (nil, let data?): !data.contains { $0 != 0 }
        case (let left?, let right?): left == right
        }
    }
}

/// The meta-disk, kept as encoded 4 KiB blocks so that every restart decodes what was written through the real
/// codecs. Writes are synchronous and durable, as the `MetadataStore` contract requires.
final class SimulatedMetadata {
    var superblock: [UInt8]?
    var activityLogSlots: [Int: [UInt8]] = [:]
    var bitmapPages: [UInt32: [UInt8]] = [:]
    let layout: Superblock.Layout
    let deviceUUID: UInt64
    let ringSlots: Int
    let capacityExtents: Int

    init(layout: Superblock.Layout, deviceUUID: UInt64, ringSlots: Int, capacityExtents: Int) {
        self.layout = layout
        self.deviceUUID = deviceUUID
        self.ringSlots = ringSlots
        self.capacityExtents = capacityExtents
    }

    func write(_ state: SuperblockState) {
        let block = Superblock(
            isClean: state.flags.contains(.activityLogClean), agreedSizeBytes: state.agreedSizeBytes,
            uuids: state.uuids, deviceUUID: deviceUUID, flags: state.flags, layout: layout)
        superblock = block.encoded()
    }

    func write(_ transaction: ActivityLogTransaction) {
        activityLogSlots[transaction.ringSlot(ringSlots: ringSlots)] = transaction.encoded()
    }

    func write(_ pages: [BitmapPageContents]) {
        for page in pages { bitmapPages[page.pageIndex] = BitmapPage.encode(pageIndex: page.pageIndex, words: page.words[...]) }
    }

    /// Reads everything back as a restarting daemon would, through the same assembly as the production store.
    /// Corrupt or missing blocks are errors; torn activity-log slots are skipped, as recovery requires.
    func recover(sizeBytes: UInt64) throws -> RecoveredMetadata {
        guard let superblockBytes = superblock else { throw MetadataError(.truncated, "no superblock", block: "superblock") }
        return try RecoveredMetadata.assemble(
            superblock: superblockBytes, activityLogSlots: activityLogSlots, bitmapPages: bitmapPages,
            ringSlots: ringSlots, capacityExtents: capacityExtents, sizeBytes: sizeBytes)
    }
}
