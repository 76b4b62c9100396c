/// Which way data flows after a handshake.
public enum SyncDirection: String, Sendable, Hashable {
    /// This node sends its data.
    case source
    /// This node receives the peer's data.
    case target

    public var reversed: SyncDirection { self == .source ? .target : .source }
}

/// One side's inputs to the generation-UUID comparison, as exchanged in the UUIDs packet.
public struct UUIDComparisonSide: Sendable, Hashable {
    public var uuids: GenerationUUIDs
    public var flags: UUIDExchangeFlags

    public init(uuids: GenerationUUIDs, flags: UUIDExchangeFlags = []) {
        self.uuids = uuids
        self.flags = flags
    }
}

/// The outcome of comparing two nodes' generation UUIDs (DRBD's `drbd_uuid_compare`, 8.4), before disk states and
/// split-brain policies are applied. The `rule` is DRBD's rule number, logged so that operators can look it up.
public enum UUIDComparison: Sendable, Hashable, CustomStringConvertible {
    /// The data is the same generation: nothing to sync (rules 10, 40).
    case noSync(rule: Int)
    /// Sync only the blocks marked in the bitmaps (rules 34-40, 50, 51, 70, 71; Tandem's 52, 61, 72, 81).
    case bitmapSync(SyncDirection, rule: Int)
    /// Sync every block (rules 20, 30, 60, 80).
    case fullSync(SyncDirection, rule: Int)
    /// Both moved on from the same parent generation (rule 90; Tandem's 91): split brain that a policy may resolve.
    case splitBrain(rule: Int)
    /// Both share only an older ancestor (rule 100): split brain with ambiguous bitmaps; only a full sync can
    /// resolve it, so policies apply only when explicitly allowed.
    case splitBrainOlderAncestor(rule: Int)
    /// No generation in common: these are different data sets; never sync.
    case unrelatedData

    public var rule: Int? {
        switch self {
        case .noSync(let rule), .bitmapSync(_, let rule), .fullSync(_, let rule), .splitBrain(let rule),
            .splitBrainOlderAncestor(let rule):
            rule
        case .unrelatedData: nil
        }
    }

    public var description: String {
        switch self {
        case .noSync(let rule): "no sync (rule \(rule))"
        case .bitmapSync(let direction, let rule): "bitmap sync as \(direction) (rule \(rule))"
        case .fullSync(let direction, let rule): "full sync as \(direction) (rule \(rule))"
        case .splitBrain(let rule): "split brain (rule \(rule))"
        case .splitBrainOlderAncestor(let rule): "split brain, older common ancestor (rule \(rule))"
        case .unrelatedData: "unrelated data"
        }
    }
}

/// Corrections a comparison makes when it recognises that a previous resync's last step was lost (rules 34, 35,
/// 51, 71): the UUIDs are repaired to what they would have been, and the comparison continues from there.
public struct UUIDCorrections: Sendable, Hashable {
    public var local: GenerationUUIDs?
    public var peer: GenerationUUIDs?

    public init(local: GenerationUUIDs? = nil, peer: GenerationUUIDs? = nil) {
        self.local = local
        self.peer = peer
    }
}

extension UUIDComparison {
    /// DRBD adds this to a History UUID to form the new Bitmap UUID when it starts a resync as source, so that a
    /// lost sync-UUID packet can be recognised later (rules 51 and 71).
    public static let newBitmapUUIDOffset: UInt64 = 0x0001_0000_0000_0000

    /// Debug switches used only by the mutation tests, to prove the simulator notices a broken rule.
    public struct Mutations: Sendable, Hashable {
        /// A broken rule 90 that reads "both moved on from the same parent" as "nothing to sync": the split brain
        /// goes unnoticed and the two diverged copies silently stay different.
        public var ignoreRule90 = false
        public init(ignoreRule90: Bool = false) { self.ignoreRule90 = ignoreRule90 }
    }

    /// Compares generation UUIDs, following DRBD 8.4.7's `drbd_uuid_compare` rule for rule.
    ///
    /// - Parameters:
    ///   - local: this node's UUIDs and flags; `local.flags.crashedPrimary` is this node's crashed-primary flag.
    ///   - peer: the peer's UUIDs and flags as received.
    ///   - resolvesConflicts: whether this node wins ties (both crashed Primaries).
    /// - Returns: the comparison and any UUID corrections the caller must adopt (and persist) for itself, or
    ///   remember for the peer.
    public static func compare(
        local: UUIDComparisonSide, peer: UUIDComparisonSide, resolvesConflicts: Bool,
        mutations: Mutations = Mutations()
    ) -> (UUIDComparison, UUIDCorrections) {
        let mine = local.uuids.masked
        let theirs = peer.uuids.masked
        let created = GenerationUUIDs.justCreated
        var corrections = UUIDCorrections()

        if mine.current == created && theirs.current == created { return (.noSync(rule: 10), corrections) }
        if (mine.current == created || mine.current == 0) && theirs.current != created {
            return (.fullSync(.target, rule: 20), corrections)
        }
        if mine.current != created && (theirs.current == created || theirs.current == 0) {
            return (.fullSync(.source, rule: 30), corrections)
        }

        if mine.current == theirs.current {
            return (equalCurrents(local: local, peer: peer, resolvesConflicts: resolvesConflicts, &corrections), corrections)
        }

        if mine.current == theirs.bitmap { return (.bitmapSync(.target, rule: 50), corrections) }
        if mine.current == theirs.history1 && theirs.history1 &+ newBitmapUUIDOffset == theirs.bitmap {
            // The peer started a resync as source but we never received its sync UUID: undo that start on our
            // picture of the peer and sync from it. Rule 71 is the mirror image.
            corrections.peer = peer.uuids.undoingLostSyncStart()
            return (.bitmapSync(.target, rule: 51), corrections)
        }
        // Rules 52, 61, 72 and 81 are Tandem's: a Primary that loses its peer while sourcing a resync starts a new
        // generation and keeps the sync UUID as its Bitmap UUID (Current N, Bitmap S, History X, P). Its bitmap
        // still covers every block the peer may lack, so a bitmap sync is enough whichever way the resync ended.
        if mine.current == theirs.history2 && theirs.history2 &+ newBitmapUUIDOffset == theirs.bitmap {
            // We never received the sync UUID (mirror of 72).
            return (.bitmapSync(.target, rule: 52), corrections)
        }
        if theirs.bitmap != 0 && mine.current == theirs.history1 && mine.history1 == theirs.bitmap {
            // We finished the resync the peer was sourcing; it moved on without hearing so (mirror of 81).
            return (.bitmapSync(.target, rule: 61), corrections)
        }
        if theirs.historyContains(mine.current) { return (.fullSync(.target, rule: 60), corrections) }
        if mine.bitmap == theirs.current { return (.bitmapSync(.source, rule: 70), corrections) }
        if theirs.current == mine.history1 && mine.history1 &+ newBitmapUUIDOffset == mine.bitmap {
            corrections.local = local.uuids.undoingLostSyncStart()
            return (.bitmapSync(.source, rule: 71), corrections)
        }
        if theirs.current == mine.history2 && mine.history2 &+ newBitmapUUIDOffset == mine.bitmap {
            return (.bitmapSync(.source, rule: 72), corrections)
        }
        if mine.bitmap != 0 && theirs.current == mine.history1 && theirs.history1 == mine.bitmap {
            return (.bitmapSync(.source, rule: 81), corrections)
        }
        if mine.historyContains(theirs.current) { return (.fullSync(.source, rule: 80), corrections) }
        if mine.bitmap == theirs.bitmap && mine.bitmap != 0 {
            return (mutations.ignoreRule90 ? .noSync(rule: 90) : .splitBrain(rule: 90), corrections)
        }
        // Rule 91 is Tandem's: both moved on from one generation, but a resync start hides it, so DRBD would
        // report unrelated data (or an older ancestor), which only a full sync from scratch recovers.
        //  - One side had just started a resync as source (Bitmap UUID = History1 + offset) when the connection
        //    broke, and the other was then promoted. Undone, that start leaves equal Bitmap UUIDs.
        //  - The target finished a resync (adopting the source's Current X, the sync UUID S in its history) and
        //    was promoted, while the source, not having heard, moved on too (Bitmap S, History X).
        let splitBrain: UUIDComparison = mutations.ignoreRule90 ? .noSync(rule: 91) : .splitBrain(rule: 91)
        if theirs.bitmap != 0 && mine.history1 == theirs.bitmap && mine.history1 &+ newBitmapUUIDOffset == mine.bitmap {
            corrections.local = local.uuids.undoingLostSyncStart()
            return (splitBrain, corrections)
        }
        if mine.bitmap != 0 && theirs.history1 == mine.bitmap && theirs.history1 &+ newBitmapUUIDOffset == theirs.bitmap {
            corrections.peer = peer.uuids.undoingLostSyncStart()
            return (splitBrain, corrections)
        }
        if mine.bitmap != 0 && theirs.bitmap != 0 && mine.history1 == theirs.bitmap && theirs.history1 == mine.bitmap {
            return (splitBrain, corrections)
        }
        //  - As the first case, but the source then lost the peer while Primary and started a new generation
        //    (Current N, Bitmap S = X + offset, History P, X): its bitmap still covers every change since X, as for
        //    rules 52 and 72, so nothing needs undoing.
        if theirs.bitmap != 0 && mine.history2 == theirs.bitmap && mine.history2 &+ newBitmapUUIDOffset == mine.bitmap {
            return (splitBrain, corrections)
        }
        if mine.bitmap != 0 && theirs.history2 == mine.bitmap && theirs.history2 &+ newBitmapUUIDOffset == theirs.bitmap {
            return (splitBrain, corrections)
        }
        for ours in [mine.history1, mine.history2] where ours != 0 {
            if theirs.historyContains(ours) { return (.splitBrainOlderAncestor(rule: 100), corrections) }
        }
        return (.unrelatedData, corrections)
    }

    /// Rules 34 to 40: the Current UUIDs are equal.
    private static func equalCurrents(
        local: UUIDComparisonSide, peer: UUIDComparisonSide, resolvesConflicts: Bool,
        _ corrections: inout UUIDCorrections
    ) -> UUIDComparison {
        let mine = local.uuids.masked
        let theirs = peer.uuids.masked
        if theirs.bitmap == 0 && mine.bitmap != 0 {
            // We were sync source. If our Bitmap UUID already sits in the peer's history, the resync finished but
            // we missed the event (rule 34): finish it on our side. Otherwise the peer never got our sync UUID (36).
            if mine.bitmap == theirs.history1 && mine.history1 == theirs.history2 {
                var repaired = local.uuids
                repaired.clearBitmapUUID()
                corrections.local = repaired
                return .bitmapSync(.source, rule: 34)
            }
            return .bitmapSync(.source, rule: 36)
        }
        if mine.bitmap == 0 && theirs.bitmap != 0 {
            if theirs.bitmap == mine.history1 && theirs.history1 == mine.history2 {
                var repaired = peer.uuids
                repaired.clearBitmapUUID()
                corrections.peer = repaired
                return .bitmapSync(.target, rule: 35)
            }
            return .bitmapSync(.target, rule: 37)
        }
        // Common power failure: whichever node crashed as Primary may hold writes in its activity log that the
        // other never saw, so it becomes the source for its hot extents.
        let selfCrashed = local.flags.contains(.crashedPrimary)
        let peerCrashed = peer.flags.contains(.crashedPrimary)
        switch (selfCrashed, peerCrashed) {
        case (false, false): return .noSync(rule: 40)
        case (true, false): return .bitmapSync(.source, rule: 40)
        case (false, true): return .bitmapSync(.target, rule: 40)
        case (true, true): return .bitmapSync(resolvesConflicts ? .target : .source, rule: 40)
        }
    }
}

extension GenerationUUIDs {
    /// The UUIDs as they were before a resync start whose sync UUID never reached the peer (rules 51 and 71):
    /// Bitmap <- History1, History1 <- History2.
    func undoingLostSyncStart() -> GenerationUUIDs {
        var repaired = self
        repaired.bitmap = history1
        repaired.history1 = history2
        return repaired
    }
}
