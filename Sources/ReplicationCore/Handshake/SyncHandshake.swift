import TandemConfig

/// What one node knows at the end of the parameter exchange: its own state and what the peer reported.
public struct SyncHandshakeInput: Sendable, Hashable {
    public var local: UUIDComparisonSide
    public var peer: UUIDComparisonSide
    public var localRole: Role
    public var peerRole: Role
    public var localDisk: DiskState
    public var peerDisk: DiskState
    /// Bits set in each bitmap: the "changes" counted by discard-least-changes and discard-zero-changes.
    public var localBitsSet: UInt64
    public var peerBitsSet: UInt64
    /// This node wins ties (DRBD's RESOLVE_CONFLICTS); exactly one of the two peers has it.
    public var resolvesConflicts: Bool

    public init(
        local: UUIDComparisonSide, peer: UUIDComparisonSide, localRole: Role, peerRole: Role, localDisk: DiskState,
        peerDisk: DiskState, localBitsSet: UInt64, peerBitsSet: UInt64, resolvesConflicts: Bool
    ) {
        self.local = local
        self.peer = peer
        self.localRole = localRole
        self.peerRole = peerRole
        self.localDisk = localDisk
        self.peerDisk = peerDisk
        self.localBitsSet = localBitsSet
        self.peerBitsSet = peerBitsSet
        self.resolvesConflicts = resolvesConflicts
    }
}

/// The split-brain and resync-conflict policies of a resource (drbd.conf `net` section).
public struct SplitBrainPolicies: Sendable, Hashable {
    public var zeroPrimaries: AfterSplitBrainZeroPrimaries
    public var onePrimary: AfterSplitBrainOnePrimary
    public var twoPrimaries: AfterSplitBrainTwoPrimaries
    public var resyncConflict: ResyncConflictPolicy
    /// DRBD's `always-asbp`: apply the policies even to a rule-100 split brain (with a full sync).
    public var alwaysApplyToOlderAncestor: Bool

    public init(
        zeroPrimaries: AfterSplitBrainZeroPrimaries = .disconnect, onePrimary: AfterSplitBrainOnePrimary = .disconnect,
        twoPrimaries: AfterSplitBrainTwoPrimaries = .disconnect, resyncConflict: ResyncConflictPolicy = .disconnect,
        alwaysApplyToOlderAncestor: Bool = false
    ) {
        self.zeroPrimaries = zeroPrimaries
        self.onePrimary = onePrimary
        self.twoPrimaries = twoPrimaries
        self.resyncConflict = resyncConflict
        self.alwaysApplyToOlderAncestor = alwaysApplyToOlderAncestor
    }
}

/// Why a handshake ends without a connection. The node goes StandAlone: retrying cannot help until an operator acts.
public enum HandshakeRefusal: String, Sendable, Hashable {
    case unrelatedData = "unrelated data"
    case splitBrainUnresolved = "split brain detected but unresolved"
    case sourceIsInconsistent = "I shall become sync source, but I am inconsistent"
    case primaryWouldBecomeTarget = "I shall become sync target, but I am Primary"
    case twoPrimaries = "both nodes are Primary and allow-two-primaries is off"
    case incompatibleSettings = "the peers' settings are incompatible"
    case authenticationFailed = "authentication of the peer failed"
    case differentSizes = "the backing devices have different sizes"
    case disklessPrimaryMismatch = "the disk does not hold everything the Diskless Primary exposed"
}

/// How a detected split brain was settled.
public enum SplitBrainResolution: String, Sendable, Hashable {
    case automatic = "automatically solved"
    case manual = "manually solved (--discard-my-data)"
    case unresolved
}

/// The decision a handshake reaches, with everything the node must do as a consequence.
public struct SyncDecision: Sendable, Hashable, CustomStringConvertible {
    public enum Outcome: Sendable, Hashable {
        case noSync
        case sync(SyncDirection, full: Bool)
        case refuse(HandshakeRefusal)
    }

    public var outcome: Outcome
    public var comparison: UUIDComparison
    /// Set when rule 90 or 100 fired, whatever happened next.
    public var splitBrain: SplitBrainResolution?
    /// Handlers to run, in order (initial-split-brain, split-brain, pri-lost, pri-lost-after-sb).
    public var handlers: [DrbdHandler]
    /// The after-sb-1pri/2pri `call-pri-lost-after-sb` policy chose this Primary as the victim: it must give up
    /// the Primary role; if it cannot (the device is in use), it runs pri-lost-after-sb and drops the connection.
    public var mustDemote: Bool
    /// A human-readable account for the log ("Becoming sync target due to disk states", ...).
    public var notes: [String]

    public var description: String {
        let base: String
        switch outcome {
        case .noSync: base = "no sync"
        case .sync(let direction, let full): base = "\(full ? "full" : "bitmap") sync as \(direction)"
        case .refuse(let refusal): base = "refused: \(refusal.rawValue)"
        }
        return "\(base) [\(comparison)]"
    }
}

extension SyncDecision {
    /// DRBD's `drbd_sync_handshake` (8.4.7): the UUID comparison post-processed by disk states, the after-split-brain
    /// policies, `--discard-my-data` and `rr-conflict`. Both peers run it on mirrored inputs and reach mirrored
    /// decisions; that symmetry is tested.
    public static func decide(
        _ input: SyncHandshakeInput, policies: SplitBrainPolicies,
        mutations: UUIDComparison.Mutations = UUIDComparison.Mutations()
    ) -> (SyncDecision, UUIDCorrections) {
        let (comparison, corrections) = UUIDComparison.compare(
            local: input.local, peer: input.peer, resolvesConflicts: input.resolvesConflicts, mutations: mutations)
        var decision = SyncDecision(
            outcome: .noSync, comparison: comparison, splitBrain: nil, handlers: [], mustDemote: false, notes: [])
        var verdict = Verdict(comparison)

        if case .unrelated = verdict {
            decision.outcome = .refuse(.unrelatedData)
            return (decision, corrections)
        }
        verdict = applyDiskStates(verdict, input, &decision)
        if verdict.isSplitBrain { decision.handlers.append(.initialSplitBrain) }
        verdict = applySplitBrainPolicies(verdict, input, policies, &decision)
        verdict = applyDiscardMyData(verdict, input, &decision)
        if verdict.isSplitBrain {
            decision.splitBrain = .unresolved
            decision.handlers.append(.splitBrain)
            decision.notes.append("Split-Brain detected but unresolved, dropping connection!")
            decision.outcome = .refuse(.splitBrainUnresolved)
            return (decision, corrections)
        }
        verdict = applyLeftoverBits(verdict, input, &decision)
        decision.outcome = finalOutcome(verdict, input, policies, &decision)
        return (decision, corrections)
    }

    /// The comparison as DRBD's signed integer: ±1 bitmap sync, ±2 full sync, 100 / -100 split brain.
    enum Verdict: Hashable {
        case none
        case sync(SyncDirection, full: Bool)
        case splitBrain(ambiguous: Bool)
        case unrelated

        init(_ comparison: UUIDComparison) {
            switch comparison {
            case .noSync: self = .none
            case .bitmapSync(let direction, _): self = .sync(direction, full: false)
            case .fullSync(let direction, _): self = .sync(direction, full: true)
            case .splitBrain: self = .splitBrain(ambiguous: false)
            case .splitBrainOlderAncestor: self = .splitBrain(ambiguous: true)
            case .unrelatedData: self = .unrelated
            }
        }

        var isSplitBrain: Bool { if case .splitBrain = self { true } else { false } }
    }

    /// An Inconsistent disk facing a better one always receives, whatever the UUIDs say; a full sync if the UUIDs
    /// alone would have required one or were ambiguous.
    private static func applyDiskStates(_ verdict: Verdict, _ input: SyncHandshakeInput, _ decision: inout SyncDecision)
        -> Verdict
    {
        let localInconsistent = input.localDisk == .inconsistent && input.peerDisk > .inconsistent
        let peerInconsistent = input.peerDisk == .inconsistent && input.localDisk > .inconsistent
        guard localInconsistent || peerInconsistent else { return verdict }
        let full: Bool
        switch verdict {
        case .splitBrain(ambiguous: true), .sync(_, full: true): full = true
        default: full = false
        }
        let direction: SyncDirection = input.localDisk > .inconsistent ? .source : .target
        decision.notes.append("Becoming sync \(direction) due to disk states.")
        return .sync(direction, full: full)
    }

    private static func applySplitBrainPolicies(
        _ verdict: Verdict, _ input: SyncHandshakeInput, _ policies: SplitBrainPolicies, _ decision: inout SyncDecision
    ) -> Verdict {
        guard case .splitBrain(let ambiguous) = verdict, !ambiguous || policies.alwaysApplyToOlderAncestor else {
            return verdict
        }
        let primaries = (input.localRole == .primary ? 1 : 0) + (input.peerRole == .primary ? 1 : 0)
        let recovered: SyncDirection?
        switch primaries {
        case 0: recovered = recoverZeroPrimaries(input, policies.zeroPrimaries)
        case 1: recovered = recoverOnePrimary(input, policies, &decision)
        default: recovered = recoverTwoPrimaries(input, policies, &decision)
        }
        guard let recovered else { return verdict }
        decision.splitBrain = .automatic
        decision.notes.append(
            "Split-Brain detected, \(primaries) primaries, automatically solved. Sync from \(recovered == .source ? "this" : "peer") node"
        )
        if ambiguous { decision.notes.append("Doing a full sync, since UUIDs were ambiguous.") }
        return .sync(recovered, full: ambiguous)
    }

    /// after-sb-0pri. Returns the direction for this node, or nil to leave the split brain unresolved.
    static func recoverZeroPrimaries(_ input: SyncHandshakeInput, _ policy: AfterSplitBrainZeroPrimaries)
        -> SyncDirection?
    {
        // Bit 0 of the Bitmap UUID records whether the node was Primary when its generation split off: a node
        // that was already Primary is the "older" Primary; one promoted after the split is the "younger".
        let selfWasPrimary = input.local.uuids.bitmap & 1 == 1
        let peerWasPrimary = input.peer.uuids.bitmap & 1 == 1
        let tieBreak: SyncDirection = input.resolvesConflicts ? .target : .source
        switch policy {
        case .disconnect:
            return nil
        case .discardLocal:
            return .target
        case .discardRemote:
            return .source
        case .discardYoungerPrimary, .discardOlderPrimary:
            if selfWasPrimary != peerWasPrimary {
                let selfIsOlder = selfWasPrimary
                let keepOlder = policy == .discardYoungerPrimary
                return selfIsOlder == keepOlder ? .source : .target
            }
            // No decision from the roles: DRBD falls through to discard-least-changes.
            return leastChanges(input, tieBreak: tieBreak)
        case .discardZeroChanges:
            if input.localBitsSet == 0 && input.peerBitsSet == 0 { return tieBreak }
            if input.peerBitsSet == 0 { return .source }
            if input.localBitsSet == 0 { return .target }
            return nil
        case .discardLeastChanges:
            return leastChanges(input, tieBreak: tieBreak)
        }
    }

    private static func leastChanges(_ input: SyncHandshakeInput, tieBreak: SyncDirection) -> SyncDirection {
        if input.localBitsSet < input.peerBitsSet { return .target }
        if input.localBitsSet > input.peerBitsSet { return .source }
        return tieBreak
    }

    private static func recoverOnePrimary(
        _ input: SyncHandshakeInput, _ policies: SplitBrainPolicies, _ decision: inout SyncDecision
    ) -> SyncDirection? {
        let isPrimary = input.localRole == .primary
        switch policies.onePrimary {
        case .disconnect:
            return nil
        case .consensus:
            // Only if the after-sb-0pri verdict agrees with the roles: it discards the Secondary.
            let verdict = recoverZeroPrimaries(input, policies.zeroPrimaries)
            if verdict == .target && !isPrimary { return .target }
            if verdict == .source && isPrimary { return .source }
            return nil
        case .violentlyAs0p:
            return recoverZeroPrimaries(input, policies.zeroPrimaries)
        case .discardSecondary:
            return isPrimary ? .source : .target
        case .callPriLostAfterSB:
            return victimPrimaryMustYield(recoverZeroPrimaries(input, policies.zeroPrimaries), input, &decision)
        }
    }

    private static func recoverTwoPrimaries(
        _ input: SyncHandshakeInput, _ policies: SplitBrainPolicies, _ decision: inout SyncDecision
    ) -> SyncDirection? {
        switch policies.twoPrimaries {
        case .disconnect:
            return nil
        case .violentlyAs0p:
            return recoverZeroPrimaries(input, policies.zeroPrimaries)
        case .callPriLostAfterSB:
            return victimPrimaryMustYield(recoverZeroPrimaries(input, policies.zeroPrimaries), input, &decision)
        }
    }

    /// `call-pri-lost-after-sb`: a Primary chosen as the victim gives up its role; the driver demotes it, and if
    /// the device is in use it runs the pri-lost-after-sb handler instead.
    private static func victimPrimaryMustYield(
        _ verdict: SyncDirection?, _ input: SyncHandshakeInput, _ decision: inout SyncDecision
    ) -> SyncDirection? {
        if verdict == .target && input.localRole == .primary { decision.mustDemote = true }
        return verdict
    }

    /// `--discard-my-data` on exactly one side settles a split brain the policies left open.
    private static func applyDiscardMyData(_ verdict: Verdict, _ input: SyncHandshakeInput, _ decision: inout SyncDecision)
        -> Verdict
    {
        guard case .splitBrain(let ambiguous) = verdict else { return verdict }
        let selfDiscards = input.local.flags.contains(.discardMyData)
        let peerDiscards = input.peer.flags.contains(.discardMyData)
        guard selfDiscards != peerDiscards else { return verdict }
        let direction: SyncDirection = selfDiscards ? .target : .source
        decision.splitBrain = .manual
        decision.notes.append(
            "Split-Brain detected, manually solved. Sync from \(direction == .source ? "this" : "peer") node")
        // An older-ancestor split brain has ambiguous bitmaps: only a full sync is safe.
        return .sync(direction, full: ambiguous)
    }

    /// Equal UUIDs but bits set: a node restarted after a crash whose activity log marked the extents it was
    /// writing, and its volatile disk cache may have lost some of them. DRBD only logs "No resync, but N bits in
    /// bitmap!" and leaves the images different until some later resync; we resync those blocks now, because
    /// identical images are the promise. The source is the copy with the best claim: a Primary, then the better
    /// disk, then the node without bits (its cache did not drop anything), then the conflict tie-break.
    private static func applyLeftoverBits(_ verdict: Verdict, _ input: SyncHandshakeInput, _ decision: inout SyncDecision)
        -> Verdict
    {
        guard verdict == .none, input.localBitsSet > 0 || input.peerBitsSet > 0,
            input.localDisk >= .outdated, input.peerDisk >= .outdated
        else { return verdict }
        let direction: SyncDirection
        if input.localRole != input.peerRole && (input.localRole == .primary || input.peerRole == .primary) {
            direction = input.localRole == .primary ? .source : .target
        } else if input.localDisk != input.peerDisk {
            direction = input.localDisk > input.peerDisk ? .source : .target
        } else if (input.localBitsSet == 0) != (input.peerBitsSet == 0) {
            direction = input.localBitsSet == 0 ? .source : .target
        } else {
            direction = input.resolvesConflicts ? .target : .source
        }
        decision.notes.append(
            "No resync by the UUIDs, but \(input.localBitsSet) bits here and \(input.peerBitsSet) on the peer: "
                + "resyncing them as sync \(direction)")
        return .sync(direction, full: false)
    }

    private static func finalOutcome(
        _ verdict: Verdict, _ input: SyncHandshakeInput, _ policies: SplitBrainPolicies, _ decision: inout SyncDecision
    ) -> Outcome {
        guard case .sync(let direction, let full) = verdict else { return .noSync }
        if direction == .source && input.localDisk <= .inconsistent {
            decision.notes.append("I shall become SyncSource, but I am inconsistent!")
            return .refuse(.sourceIsInconsistent)
        }
        // A call-pri-lost-after-sb victim has given up the Primary role by now: DRBD demotes it inside
        // drbd_asb_recover_1p/2p, before this check, so rr-conflict does not apply to it (otherwise that policy
        // could never resolve a split brain under the default rr-conflict disconnect).
        if direction == .target && input.localRole == .primary && !decision.mustDemote
            && input.localDisk >= .consistent
        {
            switch policies.resyncConflict {
            case .violently, .autoDiscard:
                decision.notes.append("Becoming SyncTarget, violating the stable-data assumption")
            case .callPriLost:
                decision.handlers.append(.priLost)
                decision.notes.append("I shall become SyncTarget, but I am primary!")
                return .refuse(.primaryWouldBecomeTarget)
            case .disconnect, .retryConnect:
                decision.notes.append("I shall become SyncTarget, but I am primary!")
                return .refuse(.primaryWouldBecomeTarget)
            }
        }
        if full { decision.notes.append("Writing the whole bitmap, full sync required after drbd_sync_handshake.") }
        return .sync(direction, full: full)
    }
}
