/// Whether the local disk's volatile cache can still hold a write, as far as the machine can tell: every completed
/// write is counted, and a flush makes durable what had completed when it was submitted (a real disk promises no
/// more). When every completed write is covered by a completed flush, another flush would find nothing to make
/// durable, and the receiver skips it.
///
/// Why it matters: an application that fsyncs after each write makes the receiver flush three times per fsync
/// otherwise (the barrier before the flush's epoch, the flush itself, and the barrier after it, whose epoch held
/// nothing but that flush), and each flush of a real disk costs far more than the write.
struct DiskCacheTracker: Sendable, Hashable {
    /// Writes completed on the disk (successful or not: a failed write may still have changed the cache).
    private var writesCompleted: UInt64 = 1  // A disk just attached may hold writes nobody flushed.
    /// Writes known to be durable: the coverage of the newest completed flush.
    private var durableThrough: UInt64 = 0
    /// Flushes in flight, by I/O token: the count of completed writes each covers.
    private var coverageOfFlushes: [UInt64: UInt64] = [:]

    /// Every completed write is covered by a completed flush.
    var isClean: Bool { durableThrough >= writesCompleted }

    mutating func writeCompleted() { writesCompleted += 1 }

    mutating func flushSubmitted(token: UInt64) { coverageOfFlushes[token] = writesCompleted }

    mutating func flushCompleted(token: UInt64, succeeded: Bool) {
        guard let coverage = coverageOfFlushes.removeValue(forKey: token), succeeded else { return }
        durableThrough = max(durableThrough, coverage)
    }
}
