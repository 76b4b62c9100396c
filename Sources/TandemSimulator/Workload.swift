import ReplicationCore

/// The application on top of the device: unique, self-describing writes and periodic flushes, with a record of
/// what was acknowledged and what was made durable ("committed": acknowledged, then covered by a completed flush).
struct Workload {
    struct WriteRecord {
        var node: Int
        var version: UInt64
        var firstSector: UInt64
        var sectorCount: Int
        /// A zeroing write (discard): its sectors read as zeroes afterwards, with nothing to tell its version by.
        var zeroing = false
        var acknowledgedAt: Int64?
        var committed = false
        /// A flush covering this write failed: the device reported that it may not be durable, so no later flush
        /// can vouch for it (the block-device contract; databases treat a failed fsync as fatal for that reason).
        var durabilityUnknown = false
        /// Legitimately lost: discarded by a split-brain resolution, or inside a protocol's documented loss window.
        var exemptReason: String?
    }

    struct FlushRecord {
        var node: Int
        var submittedAt: Int64
    }

    var writes: [UInt64: WriteRecord] = [:]
    var flushes: [UInt64: FlushRecord] = [:]
    /// Blocks with a write in flight, per node: the workload never overlaps its own writes, as a filesystem would not.
    var busyBlocks: [Set<UInt64>] = [[], []]
    var nextVersion: UInt64 = 1
    var nextFlushID: UInt64 = 1 << 40
    var acknowledgedCount = 0
    var failedCount = 0
    var committedCount = 0
    /// When each node last crashed: a flush after a restart cannot commit what the crashed process acknowledged.
    var lastCrashAt: [Int64] = [-1, -1]

    mutating func writeCompleted(node: Int, requestID: UInt64, outcome: RequestOutcome, now: Int64) {
        guard var record = writes[requestID] else { return }
        let blocks = Self.blocks(record)
        busyBlocks[node].subtract(blocks)
        if outcome == .success {
            record.acknowledgedAt = now
            acknowledgedCount += 1
        } else {
            failedCount += 1
        }
        writes[requestID] = record
    }

    mutating func flushCompleted(node: Int, requestID: UInt64, outcome: RequestOutcome, now: Int64) {
        guard let flush = flushes.removeValue(forKey: requestID) else { return }
        guard outcome == .success else {
            for (version, record) in writes where record.node == node && !record.committed {
                if let acknowledged = record.acknowledgedAt, acknowledged <= flush.submittedAt {
                    writes[version]!.durabilityUnknown = true
                }
            }
            return
        }
        for (version, record) in writes where record.node == node && !record.committed && !record.durabilityUnknown {
            if let acknowledged = record.acknowledgedAt, acknowledged <= flush.submittedAt,
                acknowledged > lastCrashAt[node]
            {
                writes[version]!.committed = true
                committedCount += 1
            }
        }
    }

    /// A node crashed: what it had in flight will never be acknowledged.
    mutating func nodeCrashed(_ node: Int, at time: Int64) {
        lastCrashAt[node] = time
        abandonInFlight(node)
    }

    /// A node's process went away (crash or restart): its requests in flight will never complete.
    mutating func abandonInFlight(_ node: Int) {
        busyBlocks[node].removeAll()
        flushes = flushes.filter { $0.value.node != node }
    }

    static func blocks(_ record: WriteRecord) -> [UInt64] {
        let first = record.firstSector / 8
        let last = (record.firstSector + UInt64(record.sectorCount) - 1) / 8
        return Array(first...last)
    }
}
