/// Serialises local writes that overlap, in the order they were issued. Two writes to the same block in flight at
/// once could reach the disk in either order; the replication protocol relies on the later one winning (a resync
/// write followed by the application's newer data, for example), so an overlapping write waits for its predecessor.
struct OverlapGate: Sendable {
    /// Ranges of writes submitted and not yet completed, by I/O token.
    private var inFlight: [UInt64: Range<UInt64>] = [:]
    /// Writes waiting for an overlapping predecessor, in issue order.
    private var waiting: [(token: UInt64, bytes: Range<UInt64>)] = []

    func overlapsInFlight(_ bytes: Range<UInt64>) -> Bool {
        inFlight.values.contains { $0.overlaps(bytes) } || waiting.contains { $0.bytes.overlaps(bytes) }
    }

    /// Returns true if the write may be submitted now; otherwise it is queued and released by `complete`.
    mutating func admit(token: UInt64, bytes: Range<UInt64>) -> Bool {
        if bytes.isEmpty || !overlapsInFlight(bytes) {
            inFlight[token] = bytes
            return true
        }
        waiting.append((token, bytes))
        return false
    }

    /// Marks a write complete and returns the queued writes that may now be submitted, in issue order.
    mutating func complete(token: UInt64) -> [UInt64] {
        guard inFlight.removeValue(forKey: token) != nil else { return [] }
        var released: [UInt64] = []
        var stillWaiting: [(token: UInt64, bytes: Range<UInt64>)] = []
        for entry in waiting {
            // A waiting write may go only if it overlaps nothing in flight and no earlier write still waiting.
            let blocked = inFlight.values.contains { $0.overlaps(entry.bytes) }
                || stillWaiting.contains { $0.bytes.overlaps(entry.bytes) }
            if blocked {
                stillWaiting.append(entry)
            } else {
                inFlight[entry.token] = entry.bytes
                released.append(entry.token)
            }
        }
        waiting = stillWaiting
        return released
    }
}
