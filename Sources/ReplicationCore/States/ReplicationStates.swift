/// A node's role for one resource (DRBD: `ro:`). `unknown` is only ever the peer's role while disconnected.
public enum Role: String, Sendable, Hashable, CaseIterable, Codable {
    case primary = "Primary"
    case secondary = "Secondary"
    case unknown = "Unknown"
}

/// The state of a disk, local or peer (DRBD: `ds:`). Declared from worst to best so that `<` means "less usable";
/// only `upToDate` may serve application I/O.
public enum DiskState: Int, Sendable, Hashable, CaseIterable, Comparable, Codable, CustomStringConvertible {
    case diskless
    case attaching
    case detaching
    case failed
    case negotiating
    case inconsistent
    case outdated
    /// Peer only: we do not know the peer's disk because we are not connected.
    case unknown
    case consistent
    case upToDate

    public static func < (lhs: DiskState, rhs: DiskState) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .diskless: "Diskless"
        case .attaching: "Attaching"
        case .detaching: "Detaching"
        case .failed: "Failed"
        case .negotiating: "Negotiating"
        case .inconsistent: "Inconsistent"
        case .outdated: "Outdated"
        case .unknown: "DUnknown"
        case .consistent: "Consistent"
        case .upToDate: "UpToDate"
        }
    }

    /// Whether the disk holds a usable (if possibly stale) copy of the data.
    public var hasConsistentData: Bool { self >= .outdated && self != .unknown }
}

/// The connection state of a resource (DRBD 8.4: `cs:`), including the transient failure states that a lost
/// connection passes through on its way back to `unconnected`.
public enum ConnectionState: String, Sendable, Hashable, CaseIterable, Codable {
    case standAlone = "StandAlone"
    case disconnecting = "Disconnecting"
    case unconnected = "Unconnected"
    case timeout = "Timeout"
    case brokenPipe = "BrokenPipe"
    case networkFailure = "NetworkFailure"
    case protocolError = "ProtocolError"
    case tearDown = "TearDown"
    case waitingForConnection = "WFConnection"
    case waitingForReportParameters = "WFReportParams"
    case connected = "Connected"
    case startingSyncSource = "StartingSyncS"
    case startingSyncTarget = "StartingSyncT"
    case waitingForBitmapSource = "WFBitMapS"
    case waitingForBitmapTarget = "WFBitMapT"
    case waitingForSyncUUID = "WFSyncUUID"
    case syncSource = "SyncSource"
    case syncTarget = "SyncTarget"
    case pausedSyncSource = "PausedSyncS"
    case pausedSyncTarget = "PausedSyncT"
    case verifySource = "VerifyS"
    case verifyTarget = "VerifyT"

    /// Connected to the peer with the handshake complete: replication traffic flows.
    public var isEstablished: Bool {
        switch self {
        case .connected, .startingSyncSource, .startingSyncTarget, .waitingForBitmapSource, .waitingForBitmapTarget,
            .waitingForSyncUUID, .syncSource, .syncTarget, .pausedSyncSource, .pausedSyncTarget, .verifySource,
            .verifyTarget:
            true
        default:
            false
        }
    }

    /// A resync is running or paused in this state.
    public var isResyncing: Bool { isSyncSource || isSyncTarget }

    /// This node is the source of a running or paused resync.
    public var isSyncSource: Bool { self == .syncSource || self == .pausedSyncSource }

    /// This node is the target of a running or paused resync.
    public var isSyncTarget: Bool { self == .syncTarget || self == .pausedSyncTarget }

    /// Between the sync decision and the first resync request: bitmaps and the sync UUID are being exchanged.
    public var isPreparingResync: Bool {
        switch self {
        case .startingSyncSource, .startingSyncTarget, .waitingForBitmapSource, .waitingForBitmapTarget,
            .waitingForSyncUUID:
            true
        default:
            false
        }
    }
}
