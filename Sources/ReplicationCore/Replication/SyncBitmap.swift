/// The out-of-sync bitmap in memory: one bit per 4 KiB block of the device, set when the block may differ from the
/// peer's copy. It counts its set bits and remembers which on-disk pages changed, so that the driver writes only
/// those (DRBD writes bitmap pages lazily: when activity-log extents leave the log and at shutdown).
public struct SyncBitmap: Sendable, Hashable {
    /// One bit per this many bytes: the on-disk bitmap's granularity.
    public static let blockBytes: UInt64 = BitmapPage.bytesPerBit
    /// The on-disk bitmap page's words, so that a dirty in-memory page is exactly one page to write.
    public static let wordsPerPage = BitmapPage.wordsPerPage

    public let blockCount: UInt64
    public private(set) var words: [UInt64]
    public private(set) var setCount: UInt64 = 0
    /// Pages changed since the driver last persisted them, sorted and unique when read through `takeDirtyPages`.
    private var dirtyPages: Set<UInt32> = []

    public init(blockCount: UInt64) {
        self.blockCount = blockCount
        self.words = Array(repeating: 0, count: Int((blockCount + 63) / 64))
    }

    /// A bitmap restored from disk. Bits beyond `blockCount` are ignored (cleared), so a corrupt tail cannot count.
    public init(blockCount: UInt64, words restored: [UInt64]) {
        self.init(blockCount: blockCount)
        for index in 0..<min(words.count, restored.count) { words[index] = restored[index] }
        clearTail()
        setCount = words.reduce(0) { $0 + UInt64($1.nonzeroBitCount) }
    }

    public static func blocks(covering range: BlockRange) -> Range<UInt64> {
        let first = range.offsetBytes / blockBytes
        let end = (range.endBytes + blockBytes - 1) / blockBytes
        return first..<max(end, first)
    }

    /// Blocks that `range` covers completely (a write of those may clear their bits).
    public static func blocksFullyCovered(by range: BlockRange) -> Range<UInt64> {
        let first = (range.offsetBytes + blockBytes - 1) / blockBytes
        let end = range.endBytes / blockBytes
        return first..<max(end, first)
    }

    public func isSet(_ block: UInt64) -> Bool {
        precondition(block < blockCount, "block \(block) beyond bitmap of \(blockCount) blocks")
        return words[Int(block / 64)] & (1 << (block % 64)) != 0
    }

    /// Sets the bits of `blocks`; returns how many were newly set.
    @discardableResult
    public mutating func set(_ blocks: Range<UInt64>) -> UInt64 {
        update(blocks, setting: true)
    }

    @discardableResult
    public mutating func clear(_ blocks: Range<UInt64>) -> UInt64 {
        update(blocks, setting: false)
    }

    public mutating func setAll() { set(0..<blockCount) }

    public mutating func clearAll() { clear(0..<blockCount) }

    private mutating func update(_ blocks: Range<UInt64>, setting: Bool) -> UInt64 {
        precondition(blocks.upperBound <= blockCount, "blocks \(blocks) beyond bitmap of \(blockCount) blocks")
        var changed: UInt64 = 0
        var block = blocks.lowerBound
        while block < blocks.upperBound {
            let wordIndex = Int(block / 64)
            let bitOffset = block % 64
            let bitsHere = min(64 - bitOffset, blocks.upperBound - block)
            let mask: UInt64 = bitsHere == 64 ? ~0 : ((1 << bitsHere) - 1) << bitOffset
            let before = words[wordIndex]
            let after = setting ? before | mask : before & ~mask
            if after != before {
                words[wordIndex] = after
                dirtyPages.insert(UInt32(wordIndex / Self.wordsPerPage))
                changed += UInt64((before ^ after).nonzeroBitCount)
            }
            block += bitsHere
        }
        if setting { setCount += changed } else { setCount -= changed }
        return changed
    }

    /// ORs words received from the peer into ours (the bitmap exchange before a resync).
    public mutating func merge(words incoming: [UInt64], startingAt firstWord: Int) {
        precondition(firstWord >= 0 && firstWord + incoming.count <= words.count, "merge beyond the bitmap")
        for (offset, word) in incoming.enumerated() where word != 0 {
            let index = firstWord + offset
            let merged = words[index] | word
            if merged != words[index] {
                setCount += UInt64((merged ^ words[index]).nonzeroBitCount)
                words[index] = merged
                dirtyPages.insert(UInt32(index / Self.wordsPerPage))
            }
        }
        clearTail()
    }

    /// The first set bit at or after `block`, or nil.
    public func firstSet(from block: UInt64) -> UInt64? {
        guard block < blockCount else { return nil }
        var wordIndex = Int(block / 64)
        var word = words[wordIndex] & (~0 << (block % 64))
        while true {
            if word != 0 {
                let found = UInt64(wordIndex) * 64 + UInt64(word.trailingZeroBitCount)
                return found < blockCount ? found : nil
            }
            wordIndex += 1
            guard wordIndex < words.count else { return nil }
            word = words[wordIndex]
        }
    }

    /// Every maximal run of set bits, as block ranges.
    public func setRuns() -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        var cursor: UInt64 = 0
        while let start = firstSet(from: cursor) {
            var end = start + 1
            while end < blockCount && isSet(end) { end += 1 }
            runs.append(start..<end)
            cursor = end
        }
        return runs
    }

    /// The on-disk pages that changed since the last call, with their words; the driver persists them.
    public mutating func takeDirtyPages() -> [BitmapPageContents] {
        let pages = dirtyPages.sorted()
        dirtyPages.removeAll()
        return pages.map(pageContents)
    }

    /// Pages covering `blocks`, e.g. those of extents leaving the activity log.
    public func pages(covering blocks: Range<UInt64>) -> [BitmapPageContents] {
        guard !blocks.isEmpty else { return [] }
        let first = UInt32(blocks.lowerBound / 64 / UInt64(Self.wordsPerPage))
        let last = UInt32((blocks.upperBound - 1) / 64 / UInt64(Self.wordsPerPage))
        return (first...last).map(pageContents)
    }

    private func pageContents(_ page: UInt32) -> BitmapPageContents {
        let start = Int(page) * Self.wordsPerPage
        let end = min(start + Self.wordsPerPage, words.count)
        return BitmapPageContents(pageIndex: page, words: Array(words[start..<end]))
    }

    private mutating func clearTail() {
        let usedBits = blockCount % 64
        if usedBits != 0, let last = words.indices.last { words[last] &= (1 << usedBits) - 1 }
    }
}

/// One on-disk bitmap page's words, as handed to the driver for persisting.
public struct BitmapPageContents: Sendable, Hashable {
    public var pageIndex: UInt32
    public var words: [UInt64]
}
