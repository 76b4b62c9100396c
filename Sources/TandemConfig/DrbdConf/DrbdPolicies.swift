/// When a write completes upward (reference: DRBD's protocol definitions).
public enum ReplicationProtocol: String, Sendable, Hashable, CaseIterable {
    /// Local disk written and the data handed to the local TCP send buffer.
    case a = "A"
    /// Local disk written and the data received in the peer's memory.
    case b = "B"
    /// Local disk written and the peer's disk written.
    case c = "C"
}

/// `after-sb-0pri`: split-brain recovery when neither node is Primary.
public enum AfterSplitBrainZeroPrimaries: String, Sendable, Hashable, CaseIterable {
    case disconnect
    case discardYoungerPrimary = "discard-younger-primary"
    case discardOlderPrimary = "discard-older-primary"
    case discardZeroChanges = "discard-zero-changes"
    case discardLeastChanges = "discard-least-changes"
    case discardLocal = "discard-local"
    case discardRemote = "discard-remote"
}

/// `after-sb-1pri`: split-brain recovery when one node is Primary.
public enum AfterSplitBrainOnePrimary: String, Sendable, Hashable, CaseIterable {
    case disconnect
    case consensus
    case discardSecondary = "discard-secondary"
    case callPriLostAfterSB = "call-pri-lost-after-sb"
    case violentlyAs0p = "violently-as0p"
}

/// `after-sb-2pri`: split-brain recovery when both nodes are Primary.
public enum AfterSplitBrainTwoPrimaries: String, Sendable, Hashable, CaseIterable {
    case disconnect
    case callPriLostAfterSB = "call-pri-lost-after-sb"
    case violentlyAs0p = "violently-as0p"
}

/// `rr-conflict`: a Primary that would have to become sync target.
public enum ResyncConflictPolicy: String, Sendable, Hashable, CaseIterable {
    case disconnect
    case callPriLost = "call-pri-lost"
    case violently
    /// DRBD 9 additions.
    case retryConnect = "retry-connect"
    case autoDiscard = "auto-discard"
}

/// `on-io-error`: what a backing-device I/O error does.
public enum OnIOErrorPolicy: String, Sendable, Hashable, CaseIterable {
    case passOn = "pass_on"
    case callLocalIOError = "call-local-io-error"
    case detach
}

/// `fencing`: how a Primary that loses its peer protects the data.
public enum FencingPolicy: String, Sendable, Hashable, CaseIterable {
    case dontCare = "dont-care"
    case resourceOnly = "resource-only"
    case resourceAndStonith = "resource-and-stonith"
}

/// What a fence-peer handler's exit status says (DRBD's codes; drbd-peer-outdater and `tandem fence-peer` return
/// them). Any other status means the handler is broken and the peer's state is unknown.
public enum FencePeerExitCode: Int32, Sendable, Hashable, CaseIterable {
    /// Tandem's: the peer answered but could not outdate its disk (it still saw the replication connection). The
    /// fence failed.
    case refused = 1
    /// The peer's disk is Inconsistent (or worse): it cannot be promoted.
    case peerInconsistent = 3
    /// The peer marked its disk Outdated.
    case peerOutdated = 4
    /// The peer could not be reached. DRBD trusts this only when the local disk is UpToDate.
    case peerUnreachable = 5
    /// The peer is Primary: this node must outdate itself.
    case peerIsPrimary = 6
    /// The peer was powered off (STONITH).
    case peerFenced = 7

    public var summary: String {
        switch self {
        case .refused: "the peer could not outdate its disk"
        case .peerInconsistent: "the peer is Inconsistent"
        case .peerOutdated: "the peer outdated its disk"
        case .peerUnreachable: "the peer could not be reached"
        case .peerIsPrimary: "the peer is Primary"
        case .peerFenced: "the peer was fenced (STONITH)"
        }
    }
}

/// The handler scripts drbd.conf can name, and when DRBD runs them.
public enum DrbdHandler: String, Sendable, Hashable, CaseIterable {
    case priOnInconDegr = "pri-on-incon-degr"
    case priLostAfterSB = "pri-lost-after-sb"
    case priLost = "pri-lost"
    case fencePeer = "fence-peer"
    case unfencePeer = "unfence-peer"
    case localIOError = "local-io-error"
    case splitBrain = "split-brain"
    case initialSplitBrain = "initial-split-brain"
    case beforeResyncTarget = "before-resync-target"
    case afterResyncTarget = "after-resync-target"
    case beforeResyncSource = "before-resync-source"
    case outOfSync = "out-of-sync"
    case quorumLost = "quorum-lost"
    case disconnected

    var summary: String {
        switch self {
        case .priOnInconDegr: "the node is Primary, degraded, and its data is inconsistent"
        case .priLostAfterSB: "the node is Primary and lost the split-brain recovery"
        case .priLost: "the node is Primary but must become sync target"
        case .fencePeer: "fence the peer (resource-only fencing); exit codes 3-7 as DRBD's"
        case .unfencePeer: "undo fence-peer once the peer is back"
        case .localIOError: "the backing device returned an I/O error (on-io-error call-local-io-error)"
        case .splitBrain: "a split brain was detected and not resolved automatically"
        case .initialSplitBrain: "a split brain was detected, before any recovery policy runs"
        case .beforeResyncTarget: "before this node becomes sync target"
        case .afterResyncTarget: "after this node finished as sync target"
        case .beforeResyncSource: "before this node becomes sync source"
        case .outOfSync: "online verify found blocks out of sync"
        case .quorumLost: "the node lost quorum"
        case .disconnected: "the connection to the peer was lost"
        }
    }
}
