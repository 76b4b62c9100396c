import ReplicationCore

/// A deterministic priority queue of timed events: ties are broken by insertion order, so a seed always replays the
/// same interleaving.
struct EventQueue<Event> {
    private var heap: [(time: Int64, sequence: UInt64, event: Event)] = []
    private var nextSequence: UInt64 = 0

    var nextTime: Int64? { heap.first?.time }

    mutating func schedule(_ event: Event, at time: Int64) {
        heap.append((time, nextSequence, event))
        nextSequence += 1
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard precedes(child, parent) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> (time: Int64, event: Event)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var parent = 0
        while true {
            let left = parent * 2 + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count && precedes(left, smallest) { smallest = left }
            if right < heap.count && precedes(right, smallest) { smallest = right }
            guard smallest != parent else { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        return (top.time, top.event)
    }

    private func precedes(_ left: Int, _ right: Int) -> Bool {
        (heap[left].time, heap[left].sequence) < (heap[right].time, heap[right].sequence)
    }
}
