import Synchronization

/// Injected I/O failures for a `FileBlockStore`, set and cleared while it runs (by tests today, later by the daemon's
/// control socket), so that the local-io-error paths (detach, pass-on, call-local-io-error) can be exercised on a
/// real node without a failing disk.
///
/// A read or write whose byte range overlaps a rule of its kind completes as `LocalIOResult.failed` without touching
/// the disk. A flush fails while `failFlushes` is set. Rules are checked when the worker thread picks the request up,
/// so a rule set after submission may still catch a queued request; tests that need exactness set rules first.
///
/// Thread-safe: rules live behind a mutex and are read by the I/O threads.
public final class StorageFaults: Sendable {
    /// Which requests a rule fails.
    public struct Kinds: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        public static let reads = Kinds(rawValue: 1 << 0)
        public static let writes = Kinds(rawValue: 1 << 1)
        public static let readsAndWrites: Kinds = [.reads, .writes]
    }

    /// Fail requests of `kinds` that overlap `rangeBytes` (byte offsets of the data device).
    public struct Rule: Sendable, Hashable, CustomStringConvertible {
        public var kinds: Kinds
        public var rangeBytes: Range<UInt64>

        public init(kinds: Kinds, rangeBytes: Range<UInt64>) {
            self.kinds = kinds
            self.rangeBytes = rangeBytes
        }

        public var description: String {
            let what =
                kinds == .readsAndWrites ? "reads and writes" : kinds.contains(.reads) ? "reads" : "writes"
            return "fail \(what) overlapping [\(rangeBytes.lowerBound), \(rangeBytes.upperBound))"
        }
    }

    /// More rules than this is a runaway script, not a test.
    public static let rulesMaximum = 64

    private struct State {
        var rules: [Rule] = []
        var failFlushes = false
    }

    private let state = Mutex(State())

    public init() {}

    /// Adds a rule. Throws `invalidArgument` for an empty range, no kinds, or more than `rulesMaximum` rules.
    public func add(_ rule: Rule) throws(StorageError) {
        guard !rule.rangeBytes.isEmpty, !rule.kinds.isEmpty else {
            throw StorageError(.invalidArgument, "a fault rule needs a non-empty range and reads or writes: \(rule)")
        }
        let added = state.withLock { state in
            guard state.rules.count < Self.rulesMaximum else { return false }
            state.rules.append(rule)
            return true
        }
        guard added else {
            throw StorageError(
                .invalidArgument, "at most \(Self.rulesMaximum) fault rules may be set; clear some first")
        }
    }

    /// Fails reads overlapping `rangeBytes`.
    public func failReads(in rangeBytes: Range<UInt64>) throws(StorageError) {
        try add(Rule(kinds: .reads, rangeBytes: rangeBytes))
    }

    /// Fails writes overlapping `rangeBytes`.
    public func failWrites(in rangeBytes: Range<UInt64>) throws(StorageError) {
        try add(Rule(kinds: .writes, rangeBytes: rangeBytes))
    }

    /// Removes every rule equal to `rule`; returns how many were removed.
    @discardableResult
    public func remove(_ rule: Rule) -> Int {
        state.withLock { state in
            let before = state.rules.count
            state.rules.removeAll { $0 == rule }
            return before - state.rules.count
        }
    }

    /// Removes every rule and stops failing flushes.
    public func clear() {
        state.withLock { $0 = State() }
    }

    /// Whether flushes fail.
    public var failFlushes: Bool {
        get { state.withLock { $0.failFlushes } }
        set { state.withLock { $0.failFlushes = newValue } }
    }

    /// The rules in force, in the order they were added.
    public var rules: [Rule] { state.withLock { $0.rules } }

    /// The rule that fails a request of `kind` over `rangeBytes`, if any.
    func matchingRule(_ kind: Kinds, _ rangeBytes: Range<UInt64>) -> Rule? {
        state.withLock { state in
            state.rules.first { $0.kinds.contains(kind) && $0.rangeBytes.overlaps(rangeBytes) }
        }
    }
}
