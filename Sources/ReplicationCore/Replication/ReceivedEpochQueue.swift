/// The receiver's epochs, oldest first, with the count of writes they hold kept as they change.
///
/// With small epochs (a write completing upward closes one, so at queue depth 16 most epochs hold one write) a
/// receiver that lags holds thousands of them, up to max-buffers writes. Summing them on every received packet, and
/// shifting the array on every finished epoch, made the receiver's cost grow with its backlog: a profile of a QD16
/// write run showed the sum alone at 6% of both CPUs. Here both are O(1) (amortised for `removeFirst`).
struct ReceivedEpochQueue: Sendable {
    /// Finished epochs before `head` are dropped lazily, when they are the larger part of the storage.
    private var storage: [ReceivedEpoch] = []
    private var head = 0
    /// The sum of every epoch's `heldWrites`.
    private(set) var heldWrites = 0

    var isEmpty: Bool { head == storage.count }
    var count: Int { storage.count - head }
    var first: ReceivedEpoch? { isEmpty ? nil : storage[head] }
    var last: ReceivedEpoch? { isEmpty ? nil : storage[storage.count - 1] }
    var indices: Range<Int> { 0..<count }

    /// Epochs in order, oldest first (for descriptions; the queue itself is changed only through its methods).
    var epochs: ArraySlice<ReceivedEpoch> { storage[head...] }

    /// Position 0 is the oldest epoch. Changes through the subscript keep `heldWrites` true.
    subscript(position: Int) -> ReceivedEpoch {
        get {
            precondition(position >= 0 && position < count, "received epoch \(position) of \(count)")
            return storage[head + position]
        }
        _modify {
            precondition(position >= 0 && position < count, "received epoch \(position) of \(count)")
            let before = storage[head + position].heldWrites
            yield &storage[head + position]
            heldWrites += storage[head + position].heldWrites - before
        }
    }

    mutating func append(_ epoch: ReceivedEpoch) {
        storage.append(epoch)
        heldWrites += epoch.heldWrites
    }

    mutating func removeFirst() -> ReceivedEpoch {
        precondition(!isEmpty, "removeFirst on an empty received-epoch queue")
        let epoch = storage[head]
        heldWrites -= epoch.heldWrites
        head += 1
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return epoch
    }
}
