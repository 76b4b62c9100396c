import Testing
import TandemConfig

@testable import ReplicationCore

/// Current, Bitmap, History1, History2 in one line.
private func gen(_ current: UInt64, _ bitmap: UInt64 = 0, _ history1: UInt64 = 0, _ history2: UInt64 = 0)
    -> GenerationUUIDs
{
    GenerationUUIDs(current: current, bitmap: bitmap, history1: history1, history2: history2)
}

/// One node as a handshake sees it. Defaults: Secondary, UpToDate, no changes in the bitmap, no flags.
struct HandshakeNode: Sendable {
    var uuids: GenerationUUIDs
    var role: Role = .secondary
    var disk: DiskState = .upToDate
    var changes: UInt64 = 0
    var flags: UUIDExchangeFlags = []

    // Generations. `ahead`, `farAhead` and `behind` are one line of history; `splitA`/`splitB` both moved on from
    // parent 0xB0 (rule 90); `olderA`/`olderB` share only 0xA0 in their History (rule 100).
    static let same = HandshakeNode(uuids: gen(0xB0, 0, 0xA0))
    static let behind = HandshakeNode(uuids: gen(0xB0, 0, 0xA0))
    /// Against `behind`: rule 70, a bitmap sync as source.
    static let ahead = HandshakeNode(uuids: gen(0xC0, 0xB0, 0xA0))
    /// Against `behind`: rule 80, a full sync as source.
    static let farAhead = HandshakeNode(uuids: gen(0xD0, 0, 0xB0, 0xA0))
    static let splitA = HandshakeNode(uuids: gen(0xC0, 0xB0, 0xA0))
    static let splitB = HandshakeNode(uuids: gen(0xD0, 0xB0, 0xA0))
    static let olderA = HandshakeNode(uuids: gen(0xC0, 0xE0, 0xA0))
    static let olderB = HandshakeNode(uuids: gen(0xD0, 0xF0, 0x90, 0xA0))
    static let unrelatedA = HandshakeNode(uuids: gen(0xC0, 0, 0x70))
    static let unrelatedB = HandshakeNode(uuids: gen(0xD0, 0, 0x80))

    func role(_ role: Role) -> HandshakeNode { var copy = self; copy.role = role; return copy }
    var primary: HandshakeNode { role(.primary) }
    func disk(_ disk: DiskState) -> HandshakeNode { var copy = self; copy.disk = disk; return copy }
    func changes(_ changes: UInt64) -> HandshakeNode { var copy = self; copy.changes = changes; return copy }
    func flags(_ flags: UUIDExchangeFlags) -> HandshakeNode { var copy = self; copy.flags = flags; return copy }
    /// Sets bit 0 of the Bitmap UUID: this node was already Primary when its generation split off (the "older"
    /// Primary for discard-younger-primary / discard-older-primary).
    var wasPrimaryAtSplit: HandshakeNode { var copy = self; copy.uuids.bitmap |= 1; return copy }
}

private func handshake(_ local: HandshakeNode, _ peer: HandshakeNode, resolvesConflicts: Bool = false)
    -> SyncHandshakeInput
{
    SyncHandshakeInput(
        local: UUIDComparisonSide(uuids: local.uuids, flags: local.flags),
        peer: UUIDComparisonSide(uuids: peer.uuids, flags: peer.flags), localRole: local.role, peerRole: peer.role,
        localDisk: local.disk, peerDisk: peer.disk, localBitsSet: local.changes, peerBitsSet: peer.changes,
        resolvesConflicts: resolvesConflicts)
}

private func decide(
    _ local: HandshakeNode, _ peer: HandshakeNode, resolvesConflicts: Bool = false,
    _ policies: SplitBrainPolicies = SplitBrainPolicies()
) -> SyncDecision {
    SyncDecision.decide(handshake(local, peer, resolvesConflicts: resolvesConflicts), policies: policies).0
}

extension SyncHandshakeInput {
    /// The same handshake as the peer runs it: sides swapped, the other node holds RESOLVE_CONFLICTS.
    fileprivate var mirrored: SyncHandshakeInput {
        SyncHandshakeInput(
            local: peer, peer: local, localRole: peerRole, peerRole: localRole, localDisk: peerDisk,
            peerDisk: localDisk, localBitsSet: peerBitsSet, peerBitsSet: localBitsSet,
            resolvesConflicts: !resolvesConflicts)
    }
}

extension SplitBrainPolicies {
    /// The peer's configuration: DRBD only connects when discard-local on one side is discard-remote on the other.
    fileprivate var mirrored: SplitBrainPolicies {
        var copy = self
        switch zeroPrimaries {
        case .discardLocal: copy.zeroPrimaries = .discardRemote
        case .discardRemote: copy.zeroPrimaries = .discardLocal
        default: break
        }
        return copy
    }
}

private let unresolved = SyncDecision.Outcome.refuse(.splitBrainUnresolved)

// MARK: - Disk states, refusals, rr-conflict, handlers

@Suite("Sync handshake: disk states, refusals and rr-conflict")
struct SyncHandshakePostProcessingTests {
    @Test("Unrelated data is refused without running any handler")
    func unrelatedData() {
        let decision = decide(.unrelatedA, .unrelatedB)
        #expect(decision.outcome == .refuse(.unrelatedData))
        #expect(decision.comparison == .unrelatedData)
        #expect(decision.handlers.isEmpty)
        #expect(decision.splitBrain == nil)
    }

    struct UUIDCase: Sendable, CustomTestStringConvertible {
        var local: HandshakeNode
        var peer: HandshakeNode
        var expected: SyncDecision.Outcome
        var testDescription: String { "\(local.uuids) vs \(peer.uuids) -> \(expected)" }
    }

    @Test(
        "With both disks UpToDate the UUIDs alone decide",
        arguments: [
            UUIDCase(local: .same, peer: .same, expected: .noSync),
            UUIDCase(local: .ahead, peer: .behind, expected: .sync(.source, full: false)),
            UUIDCase(local: .behind, peer: .ahead, expected: .sync(.target, full: false)),
            UUIDCase(local: .farAhead, peer: .behind, expected: .sync(.source, full: true)),
            UUIDCase(local: .behind, peer: .farAhead, expected: .sync(.target, full: true)),
        ])
    func uuidsDecide(_ c: UUIDCase) {
        let decision = decide(c.local, c.peer)
        #expect(decision.outcome == c.expected)
        #expect(decision.handlers.isEmpty)
        #expect(!decision.mustDemote)
    }

    @Test("A local Inconsistent disk facing an UpToDate peer becomes target even when the UUIDs say source")
    func inconsistentBecomesTarget() {
        let decision = decide(HandshakeNode.ahead.disk(.inconsistent), .behind)
        #expect(decision.comparison == .bitmapSync(.source, rule: 70))
        #expect(decision.outcome == .sync(.target, full: false))
        #expect(decision.notes.contains("Becoming sync target due to disk states."))
    }

    struct DiskOverrideCase: Sendable, CustomTestStringConvertible {
        var local: HandshakeNode
        var peer: HandshakeNode
        var comparison: UUIDComparison
        var full: Bool
        var testDescription: String { "\(comparison) -> \(full ? "full" : "bitmap") sync" }
    }

    @Test(
        "Disk states force a full sync when the UUIDs said full sync (±2) or older-ancestor split brain (rule 100), otherwise a bitmap sync",
        arguments: [
            DiskOverrideCase(local: .farAhead, peer: .behind, comparison: .fullSync(.source, rule: 80), full: true),
            DiskOverrideCase(local: .behind, peer: .farAhead, comparison: .fullSync(.target, rule: 60), full: true),
            DiskOverrideCase(local: .olderA, peer: .olderB, comparison: .splitBrainOlderAncestor(rule: 100), full: true),
            DiskOverrideCase(local: .splitA, peer: .splitB, comparison: .splitBrain(rule: 90), full: false),
            DiskOverrideCase(local: .ahead, peer: .behind, comparison: .bitmapSync(.source, rule: 70), full: false),
            DiskOverrideCase(local: .same, peer: .same, comparison: .noSync(rule: 40), full: false),
        ])
    func diskStatesKeepFullSync(_ c: DiskOverrideCase) {
        let decision = decide(c.local.disk(.inconsistent), c.peer)
        #expect(decision.comparison == c.comparison)
        #expect(decision.outcome == .sync(.target, full: c.full))
        // The disk states settled it before any split-brain processing: no handlers, no split-brain resolution.
        #expect(decision.handlers.isEmpty)
        #expect(decision.splitBrain == nil)
    }

    @Test(
        "A peer Inconsistent disk forces this node to be source, even when the UUIDs say target",
        arguments: [DiskState.outdated, .consistent, .upToDate])
    func peerInconsistentForcesSource(localDisk: DiskState) {
        #expect(decide(HandshakeNode.behind.disk(localDisk), HandshakeNode.ahead.disk(.inconsistent)).outcome == .sync(.source, full: false))
        #expect(decide(HandshakeNode.same.disk(localDisk), HandshakeNode.same.disk(.inconsistent)).outcome == .sync(.source, full: false))
    }

    struct LeftoverBitsCase: Sendable, CustomTestStringConvertible {
        var local: HandshakeNode
        var peer: HandshakeNode
        var resolvesConflicts = false
        var expected: SyncDirection
        var testDescription: String
    }

    @Test(
        "Equal UUIDs with bits left by an unclean restart: those blocks are resynced (Tandem; DRBD only logs them)",
        arguments: [
            LeftoverBitsCase(
                local: .same.changes(7), peer: .same, expected: .target,
                testDescription: "the node with bits lost cached writes: it receives"),
            LeftoverBitsCase(
                local: .same.changes(7).primary, peer: .same, expected: .source,
                testDescription: "a Primary is always the source"),
            LeftoverBitsCase(
                local: .same.changes(7), peer: .same.disk(.outdated), expected: .source,
                testDescription: "the better disk is the source"),
            LeftoverBitsCase(
                local: .same.changes(7), peer: .same.changes(3), resolvesConflicts: true, expected: .target,
                testDescription: "bits on both sides: the conflict tie-break decides"),
            LeftoverBitsCase(
                local: .same.changes(7), peer: .same.changes(3), resolvesConflicts: false, expected: .source,
                testDescription: "bits on both sides: the conflict tie-break decides (other side)"),
        ])
    func leftoverBitsAreResynced(_ c: LeftoverBitsCase) {
        let local = decide(c.local, c.peer, resolvesConflicts: c.resolvesConflicts)
        let peer = decide(c.peer, c.local, resolvesConflicts: !c.resolvesConflicts)
        #expect(local.outcome == .sync(c.expected, full: false))
        #expect(peer.outcome == .sync(c.expected.reversed, full: false))
        #expect(local.comparison == .noSync(rule: 40))
    }

    @Test("Equal UUIDs and empty bitmaps: no sync")
    func equalUUIDsNoBitsNoSync() {
        #expect(decide(.same, .same).outcome == .noSync)
    }

    @Test("\"I shall become SyncSource, but I am inconsistent\": both Inconsistent and the UUIDs say source -> refused")
    func inconsistentSourceRefuses() {
        let decision = decide(HandshakeNode.ahead.disk(.inconsistent), HandshakeNode.behind.disk(.inconsistent))
        #expect(decision.outcome == .refuse(.sourceIsInconsistent))
        #expect(decision.notes.contains("I shall become SyncSource, but I am inconsistent!"))
        // The other side of the same handshake is a plain target.
        #expect(decide(HandshakeNode.behind.disk(.inconsistent), HandshakeNode.ahead.disk(.inconsistent)).outcome == .sync(.target, full: false))
    }

    @Test("rr-conflict disconnect: a Primary with good data refuses to become sync target")
    func rrConflictDisconnect() {
        let decision = decide(HandshakeNode.behind.primary, .ahead, SplitBrainPolicies(resyncConflict: .disconnect))
        #expect(decision.outcome == .refuse(.primaryWouldBecomeTarget))
        #expect(decision.handlers.isEmpty)
        #expect(decision.notes.contains("I shall become SyncTarget, but I am primary!"))
    }

    @Test("rr-conflict call-pri-lost: a Primary that would become target refuses and runs the pri-lost handler")
    func rrConflictCallPriLost() {
        let decision = decide(HandshakeNode.behind.primary, .ahead, SplitBrainPolicies(resyncConflict: .callPriLost))
        #expect(decision.outcome == .refuse(.primaryWouldBecomeTarget))
        #expect(decision.handlers == [.priLost])
    }

    @Test("rr-conflict violently: a Primary becomes sync target anyway")
    func rrConflictViolently() {
        let decision = decide(HandshakeNode.behind.primary, .ahead, SplitBrainPolicies(resyncConflict: .violently))
        #expect(decision.outcome == .sync(.target, full: false))
        #expect(decision.handlers.isEmpty)
    }

    @Test("rr-conflict does not apply to a Primary whose own disk is Inconsistent, nor to a Primary that becomes source")
    func rrConflictOnlyForGoodDataBecomingTarget() {
        let inconsistentPrimary = decide(HandshakeNode.behind.primary.disk(.inconsistent), .ahead)
        #expect(inconsistentPrimary.outcome == .sync(.target, full: false))
        #expect(decide(HandshakeNode.ahead.primary, .behind).outcome == .sync(.source, full: false))
    }

    struct HandlerCase: Sendable, CustomTestStringConvertible {
        var name: String
        var local: HandshakeNode
        var peer: HandshakeNode
        var policies: SplitBrainPolicies
        var handlers: [DrbdHandler]
        var resolution: SplitBrainResolution
        var testDescription: String { name }
    }

    @Test(
        "initial-split-brain runs on every split brain; split-brain runs too when it stays unresolved",
        arguments: [
            HandlerCase(
                name: "rule 90, disconnect", local: .splitA, peer: .splitB, policies: SplitBrainPolicies(),
                handlers: [.initialSplitBrain, .splitBrain], resolution: .unresolved),
            HandlerCase(
                name: "rule 90, discard-remote", local: .splitA, peer: .splitB,
                policies: SplitBrainPolicies(zeroPrimaries: .discardRemote), handlers: [.initialSplitBrain],
                resolution: .automatic),
            HandlerCase(
                name: "rule 90, --discard-my-data", local: HandshakeNode.splitA.flags(.discardMyData), peer: .splitB,
                policies: SplitBrainPolicies(), handlers: [.initialSplitBrain], resolution: .manual),
            HandlerCase(
                name: "rule 100, discard-remote without always-asbp", local: .olderA, peer: .olderB,
                policies: SplitBrainPolicies(zeroPrimaries: .discardRemote),
                handlers: [.initialSplitBrain, .splitBrain], resolution: .unresolved),
            HandlerCase(
                name: "rule 100, discard-remote with always-asbp", local: .olderA, peer: .olderB,
                policies: SplitBrainPolicies(zeroPrimaries: .discardRemote, alwaysApplyToOlderAncestor: true),
                handlers: [.initialSplitBrain], resolution: .automatic),
            HandlerCase(
                name: "rule 90, one Primary, after-sb-1pri disconnect", local: HandshakeNode.splitA.primary, peer: .splitB,
                policies: SplitBrainPolicies(zeroPrimaries: .discardRemote), handlers: [.initialSplitBrain, .splitBrain],
                resolution: .unresolved),
        ])
    func splitBrainHandlers(_ c: HandlerCase) {
        let decision = decide(c.local, c.peer, c.policies)
        #expect(decision.handlers == c.handlers)
        #expect(decision.splitBrain == c.resolution)
    }

    @Test("An unresolved split brain refuses the connection, logging DRBD's message")
    func unresolvedSplitBrainRefuses() {
        let decision = decide(.splitA, .splitB)
        #expect(decision.comparison == .splitBrain(rule: 90))
        #expect(decision.outcome == unresolved)
        #expect(decision.splitBrain == .unresolved)
        #expect(decision.notes.contains("Split-Brain detected but unresolved, dropping connection!"))
    }
}

// MARK: - after-sb policies

/// One row of an after-sb policy table: the split brain is `splitA` (local) vs `splitB` (peer).
struct SplitBrainCase: Sendable, CustomTestStringConvertible {
    var localRole: Role = .secondary
    var peerRole: Role = .secondary
    var localWasPrimary = false
    var peerWasPrimary = false
    var localChanges: UInt64 = 0
    var peerChanges: UInt64 = 0
    var resolvesConflicts = false
    var rrConflict: ResyncConflictPolicy = .disconnect
    /// The expected outcome for the local node: a sync direction, or nil for an unresolved split brain.
    var expected: SyncDirection?
    var mustDemote = false

    var local: HandshakeNode {
        let node = HandshakeNode.splitA.role(localRole).changes(localChanges)
        return localWasPrimary ? node.wasPrimaryAtSplit : node
    }
    var peer: HandshakeNode {
        let node = HandshakeNode.splitB.role(peerRole).changes(peerChanges)
        return peerWasPrimary ? node.wasPrimaryAtSplit : node
    }

    var testDescription: String {
        var parts = ["\(localRole)/\(peerRole)", "changes \(localChanges)/\(peerChanges)"]
        if localWasPrimary || peerWasPrimary { parts.append("was Primary at split \(localWasPrimary)/\(peerWasPrimary)") }
        if resolvesConflicts { parts.append("resolves conflicts") }
        if rrConflict != .disconnect { parts.append("rr-conflict \(rrConflict.rawValue)") }
        parts.append("-> \(expected.map { "\($0)" } ?? "unresolved")\(mustDemote ? ", demote" : "")")
        return parts.joined(separator: ", ")
    }

    /// Runs the handshake and checks the outcome, the resolution, the handlers and the demotion.
    func check(_ policies: SplitBrainPolicies, sourceLocation: Testing.SourceLocation = #_sourceLocation) {
        var policies = policies
        policies.resyncConflict = rrConflict
        let decision = SyncDecision.decide(
            handshake(local, peer, resolvesConflicts: resolvesConflicts), policies: policies
        ).0
        #expect(decision.comparison == .splitBrain(rule: 90), sourceLocation: sourceLocation)
        #expect(decision.mustDemote == mustDemote, sourceLocation: sourceLocation)
        if let expected {
            #expect(decision.outcome == .sync(expected, full: false), sourceLocation: sourceLocation)
            #expect(decision.splitBrain == .automatic, sourceLocation: sourceLocation)
            #expect(decision.handlers == [.initialSplitBrain], sourceLocation: sourceLocation)
        } else {
            #expect(decision.outcome == unresolved, sourceLocation: sourceLocation)
            #expect(decision.splitBrain == .unresolved, sourceLocation: sourceLocation)
            #expect(decision.handlers == [.initialSplitBrain, .splitBrain], sourceLocation: sourceLocation)
        }
    }
}

@Suite("Sync handshake: after-sb-0pri")
struct AfterSplitBrainZeroPrimariesTests {
    @Test("after-sb-0pri disconnect leaves the split brain unresolved, whatever the changes")
    func disconnect() {
        SplitBrainCase(localChanges: 0, peerChanges: 7, expected: nil).check(SplitBrainPolicies(zeroPrimaries: .disconnect))
    }

    @Test(
        "after-sb-0pri discard-younger-primary keeps the node that was already Primary at the split; else least changes",
        arguments: [
            SplitBrainCase(localWasPrimary: true, localChanges: 0, peerChanges: 9, expected: .source),
            SplitBrainCase(peerWasPrimary: true, localChanges: 9, peerChanges: 0, expected: .target),
            // Neither or both were Primary: DRBD falls through to discard-least-changes.
            SplitBrainCase(localChanges: 3, peerChanges: 5, expected: .target),
            SplitBrainCase(localWasPrimary: true, peerWasPrimary: true, localChanges: 5, peerChanges: 3, expected: .source),
            SplitBrainCase(localChanges: 4, peerChanges: 4, resolvesConflicts: true, expected: .target),
            SplitBrainCase(localChanges: 4, peerChanges: 4, resolvesConflicts: false, expected: .source),
        ])
    func discardYoungerPrimary(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardYoungerPrimary))
    }

    @Test(
        "after-sb-0pri discard-older-primary discards the node that was already Primary at the split; else least changes",
        arguments: [
            SplitBrainCase(localWasPrimary: true, localChanges: 9, peerChanges: 0, expected: .target),
            SplitBrainCase(peerWasPrimary: true, localChanges: 0, peerChanges: 9, expected: .source),
            SplitBrainCase(localChanges: 5, peerChanges: 3, expected: .source),
            SplitBrainCase(localWasPrimary: true, peerWasPrimary: true, localChanges: 3, peerChanges: 5, expected: .target),
        ])
    func discardOlderPrimary(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardOlderPrimary))
    }

    @Test(
        "after-sb-0pri discard-zero-changes discards a node without changes; both without: tie-break; both with: unresolved",
        arguments: [
            SplitBrainCase(localChanges: 5, peerChanges: 0, expected: .source),
            SplitBrainCase(localChanges: 0, peerChanges: 5, expected: .target),
            SplitBrainCase(localChanges: 0, peerChanges: 0, resolvesConflicts: true, expected: .target),
            SplitBrainCase(localChanges: 0, peerChanges: 0, resolvesConflicts: false, expected: .source),
            SplitBrainCase(localChanges: 1, peerChanges: 9, expected: nil),
        ])
    func discardZeroChanges(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardZeroChanges))
    }

    @Test(
        "after-sb-0pri discard-least-changes discards the node with fewer changes; equal: tie-break by resolvesConflicts",
        arguments: [
            SplitBrainCase(localChanges: 3, peerChanges: 5, expected: .target),
            SplitBrainCase(localChanges: 5, peerChanges: 3, expected: .source),
            SplitBrainCase(localChanges: 4, peerChanges: 4, resolvesConflicts: true, expected: .target),
            SplitBrainCase(localChanges: 4, peerChanges: 4, resolvesConflicts: false, expected: .source),
        ])
    func discardLeastChanges(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges))
    }

    @Test("after-sb-0pri discard-local makes this node the target, whatever the changes")
    func discardLocal() {
        SplitBrainCase(localChanges: 9, peerChanges: 0, expected: .target).check(SplitBrainPolicies(zeroPrimaries: .discardLocal))
    }

    @Test("after-sb-0pri discard-remote makes this node the source, whatever the changes")
    func discardRemote() {
        SplitBrainCase(localChanges: 0, peerChanges: 9, expected: .source).check(SplitBrainPolicies(zeroPrimaries: .discardRemote))
    }
}

@Suite("Sync handshake: after-sb-1pri")
struct AfterSplitBrainOnePrimaryTests {
    @Test(
        "after-sb-1pri disconnect leaves the split brain unresolved",
        arguments: [
            SplitBrainCase(localRole: .primary, localChanges: 9, expected: nil),
            SplitBrainCase(peerRole: .primary, peerChanges: 9, expected: nil),
        ])
    func disconnect(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .disconnect))
    }

    @Test(
        "after-sb-1pri consensus resolves only when the after-sb-0pri verdict discards the Secondary",
        arguments: [
            // Agrees: the Secondary has fewer changes.
            SplitBrainCase(peerRole: .primary, localChanges: 3, peerChanges: 5, expected: .target),
            SplitBrainCase(localRole: .primary, localChanges: 5, peerChanges: 3, expected: .source),
            // Disagrees: the after-sb-0pri verdict would discard the Primary.
            SplitBrainCase(peerRole: .primary, localChanges: 5, peerChanges: 3, expected: nil),
            SplitBrainCase(localRole: .primary, localChanges: 3, peerChanges: 5, expected: nil),
        ])
    func consensus(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .consensus))
    }

    @Test("after-sb-1pri consensus with after-sb-0pri disconnect never resolves")
    func consensusWithoutZeroPrimaryVerdict() {
        SplitBrainCase(peerRole: .primary, localChanges: 3, peerChanges: 5, expected: nil)
            .check(SplitBrainPolicies(zeroPrimaries: .disconnect, onePrimary: .consensus))
    }

    @Test(
        "after-sb-1pri violently-as0p applies the after-sb-0pri verdict even against the Primary; rr-conflict still governs it",
        arguments: [
            SplitBrainCase(peerRole: .primary, localChanges: 5, peerChanges: 3, expected: .source),
            SplitBrainCase(localRole: .primary, localChanges: 3, peerChanges: 5, rrConflict: .violently, expected: .target),
        ])
    func violentlyAs0p(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .violentlyAs0p))
    }

    @Test("after-sb-1pri violently-as0p that makes the Primary a target is refused by rr-conflict disconnect")
    func violentlyAs0pMeetsRRConflict() {
        let decision = decide(
            HandshakeNode.splitA.primary.changes(3), HandshakeNode.splitB.changes(5),
            SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .violentlyAs0p, resyncConflict: .disconnect))
        #expect(decision.splitBrain == .automatic)
        #expect(decision.outcome == .refuse(.primaryWouldBecomeTarget))
    }

    @Test(
        "after-sb-1pri discard-secondary: the Primary is source and the Secondary target, whatever the changes",
        arguments: [
            SplitBrainCase(localRole: .primary, localChanges: 0, peerChanges: 9, expected: .source),
            SplitBrainCase(peerRole: .primary, localChanges: 9, peerChanges: 0, expected: .target),
        ])
    func discardSecondary(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .discardSecondary))
    }

    @Test(
        "after-sb-1pri call-pri-lost-after-sb applies the after-sb-0pri verdict; a Primary victim must demote and becomes target",
        arguments: [
            SplitBrainCase(localRole: .primary, localChanges: 3, peerChanges: 5, expected: .target, mustDemote: true),
            SplitBrainCase(localRole: .primary, localChanges: 5, peerChanges: 3, expected: .source),
            SplitBrainCase(peerRole: .primary, localChanges: 3, peerChanges: 5, expected: .target),
            SplitBrainCase(peerRole: .primary, localChanges: 5, peerChanges: 3, expected: .source),
        ])
    func callPriLostAfterSB(_ c: SplitBrainCase) {
        // rr-conflict stays at its default, disconnect: the victim gives up the Primary role before the rr-conflict
        // check, as in DRBD, so it does not count as "Primary becoming target".
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .callPriLostAfterSB))
    }
}

@Suite("Sync handshake: after-sb-2pri")
struct AfterSplitBrainTwoPrimariesTests {
    @Test("after-sb-2pri disconnect leaves the split brain unresolved")
    func disconnect() {
        SplitBrainCase(localRole: .primary, peerRole: .primary, localChanges: 3, peerChanges: 5, expected: nil)
            .check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, twoPrimaries: .disconnect))
    }

    @Test(
        "after-sb-2pri violently-as0p applies the after-sb-0pri verdict to two Primaries",
        arguments: [
            SplitBrainCase(localRole: .primary, peerRole: .primary, localChanges: 5, peerChanges: 3, expected: .source),
            SplitBrainCase(
                localRole: .primary, peerRole: .primary, localChanges: 3, peerChanges: 5, rrConflict: .violently,
                expected: .target),
        ])
    func violentlyAs0p(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, twoPrimaries: .violentlyAs0p))
    }

    @Test(
        "after-sb-2pri call-pri-lost-after-sb: the Primary the after-sb-0pri verdict discards must demote and becomes target",
        arguments: [
            SplitBrainCase(
                localRole: .primary, peerRole: .primary, localChanges: 3, peerChanges: 5, expected: .target,
                mustDemote: true),
            SplitBrainCase(localRole: .primary, peerRole: .primary, localChanges: 5, peerChanges: 3, expected: .source),
        ])
    func callPriLostAfterSB(_ c: SplitBrainCase) {
        c.check(SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, twoPrimaries: .callPriLostAfterSB))
    }
}

// MARK: - Rule 100 and --discard-my-data

@Suite("Sync handshake: older-ancestor split brain and --discard-my-data")
struct ManualSplitBrainRecoveryTests {
    @Test("A rule-100 split brain is not auto-resolved by the policies without always-asbp")
    func olderAncestorNotAutoResolved() {
        let decision = decide(.olderA, .olderB, SplitBrainPolicies(zeroPrimaries: .discardRemote))
        #expect(decision.comparison == .splitBrainOlderAncestor(rule: 100))
        #expect(decision.outcome == unresolved)
    }

    @Test("With always-asbp a rule-100 split brain is resolved by the policies, with a full sync")
    func olderAncestorAlwaysASBP() {
        let policies = SplitBrainPolicies(zeroPrimaries: .discardRemote, alwaysApplyToOlderAncestor: true)
        let decision = decide(.olderA, .olderB, policies)
        #expect(decision.outcome == .sync(.source, full: true))
        #expect(decision.splitBrain == .automatic)
        #expect(decision.notes.contains("Doing a full sync, since UUIDs were ambiguous."))
        let peerSide = SyncDecision.decide(handshake(.olderA, .olderB).mirrored, policies: policies.mirrored).0
        #expect(peerSide.outcome == .sync(.target, full: true))
    }

    @Test("--discard-my-data on this side only makes this node the target of an unresolved split brain")
    func discardMyDataLocal() {
        let decision = decide(HandshakeNode.splitA.flags(.discardMyData).changes(9), .splitB)
        #expect(decision.outcome == .sync(.target, full: false))
        #expect(decision.splitBrain == .manual)
        #expect(decision.handlers == [.initialSplitBrain])
    }

    @Test("--discard-my-data on the peer only makes this node the source of an unresolved split brain")
    func discardMyDataPeer() {
        let decision = decide(.splitA, HandshakeNode.splitB.flags(.discardMyData).changes(9))
        #expect(decision.outcome == .sync(.source, full: false))
        #expect(decision.splitBrain == .manual)
    }

    @Test("--discard-my-data on both sides leaves the split brain unresolved")
    func discardMyDataBoth() {
        let decision = decide(
            HandshakeNode.splitA.flags(.discardMyData), HandshakeNode.splitB.flags(.discardMyData))
        #expect(decision.outcome == unresolved)
        #expect(decision.splitBrain == .unresolved)
    }

    @Test("--discard-my-data on the Secondary resolves a split brain that after-sb-1pri left unresolved")
    func discardMyDataAfterFailedPolicy() {
        let decision = decide(
            HandshakeNode.splitA.flags(.discardMyData).changes(9), HandshakeNode.splitB.primary,
            SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .disconnect))
        #expect(decision.outcome == .sync(.target, full: false))
        #expect(decision.splitBrain == .manual)
    }

    @Test("--discard-my-data on a rule-100 split brain resolves it with a full sync")
    func discardMyDataOlderAncestor() {
        // Tandem's choice, commented in SyncHandshake.swift: DRBD 8.4.7 sets hg = -1 here, a bitmap sync, although
        // the two bitmaps are relative to different generations.
        let decision = decide(HandshakeNode.olderA.flags(.discardMyData), .olderB)
        #expect(decision.outcome == .sync(.target, full: true))
        #expect(decision.splitBrain == .manual)
    }

    @Test("--discard-my-data does not override a split brain the policies already resolved, nor a normal handshake")
    func discardMyDataIgnoredOtherwise() {
        let resolved = decide(
            HandshakeNode.splitA.flags(.discardMyData), .splitB, SplitBrainPolicies(zeroPrimaries: .discardRemote))
        #expect(resolved.outcome == .sync(.source, full: false))
        #expect(resolved.splitBrain == .automatic)
        #expect(decide(HandshakeNode.ahead.flags(.discardMyData), .behind).outcome == .sync(.source, full: false))
    }
}

// MARK: - Mirrored decisions

@Suite("Sync handshake: both sides reach mirrored decisions")
struct MirroredHandshakeTests {
    struct Scenario: Sendable, CustomTestStringConvertible {
        var name: String
        var local: HandshakeNode
        var peer: HandshakeNode
        var resolvesConflicts = false
        var policies = SplitBrainPolicies()
        /// The local node's outcome; the peer's must be the opposite direction, or also a refusal.
        var expected: SyncDecision.Outcome
        var testDescription: String { name }
    }

    static let lsc = SplitBrainPolicies(zeroPrimaries: .discardLeastChanges)

    static let scenarios: [Scenario] = [
        Scenario(name: "same generation", local: .same, peer: .same, expected: .noSync),
        Scenario(name: "bitmap sync (rule 70)", local: .ahead, peer: .behind, expected: .sync(.source, full: false)),
        Scenario(name: "full sync (rule 80)", local: .farAhead, peer: .behind, expected: .sync(.source, full: true)),
        Scenario(
            name: "both crashed Primaries (rule 40)", local: HandshakeNode.same.flags(.crashedPrimary),
            peer: HandshakeNode.same.flags(.crashedPrimary), resolvesConflicts: true, expected: .sync(.target, full: false)),
        Scenario(
            name: "lost sync UUID (rule 71)",
            local: HandshakeNode(uuids: gen(0xC0, 0xB0 + UUIDComparison.newBitmapUUIDOffset, 0xB0, 0xA0)),
            peer: .behind, expected: .sync(.source, full: false)),
        Scenario(
            name: "missed resync-finished event (rule 34)", local: HandshakeNode(uuids: gen(0xC0, 0xB0, 0xA0, 0x90)),
            peer: HandshakeNode(uuids: gen(0xC0, 0, 0xB0, 0xA0)), expected: .sync(.source, full: false)),
        Scenario(
            name: "Inconsistent against UpToDate", local: HandshakeNode.ahead.disk(.inconsistent), peer: .behind,
            expected: .sync(.target, full: false)),
        Scenario(
            name: "Inconsistent against UpToDate, older-ancestor UUIDs", local: HandshakeNode.olderA.disk(.inconsistent),
            peer: .olderB, expected: .sync(.target, full: true)),
        Scenario(
            name: "discard-least-changes", local: HandshakeNode.splitA.changes(3), peer: HandshakeNode.splitB.changes(5),
            policies: lsc, expected: .sync(.target, full: false)),
        Scenario(
            name: "discard-least-changes, tie", local: HandshakeNode.splitA.changes(4),
            peer: HandshakeNode.splitB.changes(4), resolvesConflicts: true, policies: lsc,
            expected: .sync(.target, full: false)),
        Scenario(
            name: "discard-zero-changes, both zero", local: .splitA, peer: .splitB,
            policies: SplitBrainPolicies(zeroPrimaries: .discardZeroChanges), expected: .sync(.source, full: false)),
        Scenario(
            name: "discard-younger-primary", local: HandshakeNode.splitA.wasPrimaryAtSplit, peer: .splitB,
            policies: SplitBrainPolicies(zeroPrimaries: .discardYoungerPrimary), expected: .sync(.source, full: false)),
        Scenario(
            name: "discard-older-primary", local: HandshakeNode.splitA.wasPrimaryAtSplit, peer: .splitB,
            policies: SplitBrainPolicies(zeroPrimaries: .discardOlderPrimary), expected: .sync(.target, full: false)),
        Scenario(
            name: "discard-local (peer: discard-remote)", local: .splitA, peer: .splitB,
            policies: SplitBrainPolicies(zeroPrimaries: .discardLocal), expected: .sync(.target, full: false)),
        Scenario(
            name: "after-sb-1pri consensus agrees", local: HandshakeNode.splitA.changes(3),
            peer: HandshakeNode.splitB.primary.changes(5),
            policies: SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .consensus),
            expected: .sync(.target, full: false)),
        Scenario(
            name: "after-sb-1pri discard-secondary", local: HandshakeNode.splitA.primary, peer: HandshakeNode.splitB.changes(9),
            policies: SplitBrainPolicies(onePrimary: .discardSecondary), expected: .sync(.source, full: false)),
        Scenario(
            name: "after-sb-1pri call-pri-lost-after-sb", local: HandshakeNode.splitA.primary.changes(3),
            peer: HandshakeNode.splitB.changes(5),
            policies: SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .callPriLostAfterSB),
            expected: .sync(.target, full: false)),
        Scenario(
            name: "after-sb-2pri call-pri-lost-after-sb", local: HandshakeNode.splitA.primary.changes(5),
            peer: HandshakeNode.splitB.primary.changes(3),
            policies: SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, twoPrimaries: .callPriLostAfterSB),
            expected: .sync(.source, full: false)),
        Scenario(
            name: "after-sb-2pri violently-as0p, rr-conflict violently", local: HandshakeNode.splitA.primary.changes(3),
            peer: HandshakeNode.splitB.primary.changes(5),
            policies: SplitBrainPolicies(
                zeroPrimaries: .discardLeastChanges, twoPrimaries: .violentlyAs0p, resyncConflict: .violently),
            expected: .sync(.target, full: false)),
        Scenario(
            name: "rule 100 with always-asbp", local: .olderA, peer: .olderB,
            policies: SplitBrainPolicies(zeroPrimaries: .discardLocal, alwaysApplyToOlderAncestor: true),
            expected: .sync(.target, full: true)),
        Scenario(
            name: "--discard-my-data on one side", local: .splitA, peer: HandshakeNode.splitB.flags(.discardMyData),
            expected: .sync(.source, full: false)),
        // Both refuse.
        Scenario(name: "unrelated data", local: .unrelatedA, peer: .unrelatedB, expected: .refuse(.unrelatedData)),
        Scenario(name: "split brain, disconnect", local: .splitA, peer: .splitB, expected: unresolved),
        Scenario(
            name: "rule 100 without always-asbp", local: .olderA, peer: .olderB,
            policies: SplitBrainPolicies(zeroPrimaries: .discardLocal), expected: unresolved),
        Scenario(
            name: "--discard-my-data on both sides", local: HandshakeNode.splitA.flags(.discardMyData),
            peer: HandshakeNode.splitB.flags(.discardMyData), expected: unresolved),
        Scenario(
            name: "after-sb-1pri consensus disagrees", local: HandshakeNode.splitA.changes(5),
            peer: HandshakeNode.splitB.primary.changes(3),
            policies: SplitBrainPolicies(zeroPrimaries: .discardLeastChanges, onePrimary: .consensus),
            expected: unresolved),
        Scenario(
            name: "discard-zero-changes, both changed", local: HandshakeNode.splitA.changes(1),
            peer: HandshakeNode.splitB.changes(2), policies: SplitBrainPolicies(zeroPrimaries: .discardZeroChanges),
            expected: unresolved),
    ]

    @Test("decide() on both sides gives opposite directions, or both refuse", arguments: scenarios)
    func bothSidesMirror(_ s: Scenario) {
        let input = handshake(s.local, s.peer, resolvesConflicts: s.resolvesConflicts)
        let (mine, myCorrections) = SyncDecision.decide(input, policies: s.policies)
        let (theirs, theirCorrections) = SyncDecision.decide(input.mirrored, policies: s.policies.mirrored)
        #expect(mine.outcome == s.expected)
        switch (mine.outcome, theirs.outcome) {
        case (.noSync, .noSync), (.refuse, .refuse):
            break
        case (.sync(let direction, let full), .sync(let peerDirection, let peerFull)):
            #expect(peerDirection == direction.reversed)
            #expect(peerFull == full)
        default:
            Issue.record("not mirrored: \(mine) / \(theirs)")
        }
        #expect(mine.splitBrain == theirs.splitBrain)
        #expect(!(mine.mustDemote && theirs.mustDemote))
        #expect(myCorrections.local == theirCorrections.peer)
        #expect(myCorrections.peer == theirCorrections.local)
    }
}
