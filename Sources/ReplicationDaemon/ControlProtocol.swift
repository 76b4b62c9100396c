import DaemonSupport

/// The control socket's protocol: how `tandem adm` (and any other local client) talks to `tandem replicad`.
///
/// Transport: a Unix stream socket at `<run-dir>/replicad.sock`, mode 0600. Only root (uid 0) and the daemon's own
/// uid may connect; the daemon checks the peer's credentials (SO_PEERCRED) and closes anyone else's connection.
///
/// Framing: one JSON object per line (UTF-8, terminated by "\n") in each direction. A client sends a request line
/// and reads exactly one response line; it may send further requests on the same connection, which are answered in
/// order. A request line longer than `requestBytesMaximum` (newline excluded) ends the connection with a
/// `bad-request` response. Responses are at most `responseBytesMaximum` bytes.
///
/// Versioning: every request and response carries `version`. The daemon answers a request whose version it does not
/// speak with `bad-request` naming the versions it speaks. Fields may be added within a version; clients ignore
/// fields they do not know, and every field but `version` and `verb` is optional in a request.
///
/// See docs/operations.md for the verbs and examples.
public enum ControlProtocol {
    /// The protocol version this build speaks.
    public static let version = 1
    /// A request line is at most 64 KiB. That bounds what a client can make the daemon buffer, and it is why the
    /// test-only `write` request carries at most `testWriteBytesMaximum` bytes.
    public static let requestBytesMaximum = 64 * 1024
    /// A response line is at most 8 MiB (a `read` of 1 MiB in base64, or a long `dump-md`).
    public static let responseBytesMaximum = 8 << 20
    /// The socket file's name inside the run directory.
    public static let socketFileName = "replicad.sock"
    /// Payload of one test-only `write` request: what fits in a request line once base64-encoded.
    public static let testWriteBytesMaximum = 32 * 1024
    /// Length of one test-only `read` request (the replication machine's own request limit).
    public static let testReadBytesMaximum = 1 << 20
    /// How long a state-changing command may take before the daemon answers `timeout`, by default and at most.
    public static let commandTimeoutSecondsDefault = 30
    public static let commandTimeoutSecondsRange = 1...600

    public static func socketPath(runDirectory: String) -> String {
        runDirectory.hasSuffix("/") ? runDirectory + socketFileName : runDirectory + "/" + socketFileName
    }
}

/// What a request asks for. The names are drbdadm's verbs where one exists.
public enum ControlVerb: String, Codable, Sendable, CaseIterable {
    /// Is the daemon there? Answers `ok` with the daemon's node name and pid in `message`.
    case ping
    /// The resources drbd.conf defines for this node, and which are up (`resources`).
    case list
    /// drbdadm up: attach the disk (recovering the metadata) and connect.
    case up
    /// drbdadm down: demote if Primary (refused while requests are in flight), disconnect, write the metadata
    /// clean, close the disk.
    case down
    /// drbdadm attach: as `up` without connecting. On a resource that is up with its disk, nothing to do.
    case attach
    case detach
    /// `discardMyData` is drbdadm's `--discard-my-data`.
    case connect
    case disconnect
    /// `force` is drbdadm's `--force` / `--overwrite-data-of-peer`.
    case primary
    case secondary
    case invalidate
    case invalidateRemote = "invalidate-remote"
    case verify
    case pauseSync = "pause-sync"
    case resumeSync = "resume-sync"
    case outdate
    /// drbdadm resume-io: end the I/O suspension of resource-and-stonith fencing (the peer is known to be down).
    case resumeIO = "resume-io"
    /// `clearBitmap` is drbdadm's `--clear-bitmap`.
    case newCurrentUUID = "new-current-uuid"
    /// Role, disk, peer, connection, UUIDs, out-of-sync, resync figures, I/O mode (`status`).
    case status
    /// The on-disk metadata, described (`dump`). Read on the resource's own thread while it is up, so the dump is
    /// consistent with the metadata writes.
    case dumpMetadata = "dump-md"

    // Test and diagnostic hooks. There is no block-device frontend yet: these submit application requests to the
    // replication machine directly, which is also how the NBD and FUSE frontends will plug in. They are not a
    // supported interface for data.
    /// TEST/DIAGNOSTIC: an application write of `dataBase64` at `offsetBytes` (512-byte aligned, at most
    /// `testWriteBytesMaximum` bytes), optionally FUA; answers when the machine completes it.
    case write
    /// TEST/DIAGNOSTIC: an application read of `lengthBytes` at `offsetBytes`; the data comes back in `dataBase64`.
    case read
    /// TEST/DIAGNOSTIC: an application flush.
    case flush
    /// TEST ONLY: add, clear or list `StorageFaults` rules on the resource's block store (see `FaultRequest`).
    case fault
}

/// `fault` request details. TEST ONLY: injected I/O errors on the backing device, to exercise on-io-error.
public struct FaultRequest: Codable, Sendable, Hashable {
    public enum Action: String, Codable, Sendable {
        /// Fail reads and/or writes overlapping [offsetBytes, offsetBytes + lengthBytes).
        case add
        /// Remove every rule and stop failing flushes.
        case clear
        /// Only list the rules in force.
        case list
        /// Fail every flush (`failFlushes`), or stop (`failFlushes` false).
        case flushes
    }

    public var action: Action
    /// "reads", "writes" or "both", for `add`.
    public var kinds: String?
    public var offsetBytes: UInt64?
    public var lengthBytes: UInt64?
    public var failFlushes: Bool?

    public init(
        action: Action, kinds: String? = nil, offsetBytes: UInt64? = nil, lengthBytes: UInt64? = nil,
        failFlushes: Bool? = nil
    ) {
        self.action = action
        self.kinds = kinds
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
        self.failFlushes = failFlushes
    }
}

public struct ControlRequest: Codable, Sendable, Hashable {
    public var version: Int
    public var verb: ControlVerb
    /// The resource; every verb but `ping` and `list` needs one. `all` is expanded by the client (via `list`).
    public var resource: String?
    /// `primary --force`.
    public var force: Bool?
    /// `connect --discard-my-data` (also honoured by `up`).
    public var discardMyData: Bool?
    /// `new-current-uuid --clear-bitmap`.
    public var clearBitmap: Bool?
    /// How long to wait for a state-changing command; `ControlProtocol.commandTimeoutSecondsDefault` if absent.
    public var timeoutSeconds: Int?
    // Test and diagnostic hooks (`write`, `read`, `fault`).
    public var offsetBytes: UInt64?
    public var lengthBytes: UInt64?
    public var dataBase64: String?
    public var forceUnitAccess: Bool?
    public var fault: FaultRequest?

    public init(
        verb: ControlVerb, resource: String? = nil, force: Bool? = nil, discardMyData: Bool? = nil,
        clearBitmap: Bool? = nil, timeoutSeconds: Int? = nil
    ) {
        self.version = ControlProtocol.version
        self.verb = verb
        self.resource = resource
        self.force = force
        self.discardMyData = discardMyData
        self.clearBitmap = clearBitmap
        self.timeoutSeconds = timeoutSeconds
    }
}

/// How a request ended. The CLI maps these to its exit codes.
public enum ControlResult: String, Codable, Sendable, Hashable {
    /// Done (exit 0).
    case ok
    /// The replication machine or the daemon refused; `message` says why (exit 10, as drbdadm's kernel refusals).
    case refused
    /// The command was accepted but did not complete within its timeout; it may still complete (exit 10).
    case timeout
    /// drbd.conf cannot be read, or does not define the resource for this node (exit 1).
    case configError = "config-error"
    /// The request itself is malformed: unknown verb, missing field, wrong version, too long (exit 64).
    case badRequest = "bad-request"
    /// Something failed while carrying the request out: the disk could not be opened, the metadata could not be
    /// recovered, the address could not be bound (exit 10).
    case failed
}

public struct ControlResponse: Codable, Sendable {
    public var version: Int
    public var result: ControlResult
    /// For people: the refusal or failure reason, or what was done.
    public var message: String?
    public var status: ResourceStatusReport?
    public var resources: [ResourceListing]?
    /// `dump-md`.
    public var dump: String?
    /// `read`.
    public var dataBase64: String?
    /// `fault`: the rules in force afterwards.
    public var faults: [String]?

    public init(_ result: ControlResult, _ message: String? = nil) {
        self.version = ControlProtocol.version
        self.result = result
        self.message = message
    }
}

/// One resource of drbd.conf that has an `on <this node>` section.
public struct ResourceListing: Codable, Sendable, Hashable {
    public var name: String
    public var up: Bool

    public init(name: String, up: Bool) {
        self.name = name
        self.up = up
    }
}

/// What `status` reports for one resource (volume 0). Field names follow drbdsetup's where they exist. UUIDs are
/// 16 uppercase hexadecimal digits, as drbdadm get-gi prints them (and because JSON numbers lose precision above
/// 2^53).
public struct ResourceStatusReport: Codable, Sendable, Hashable {
    public var name: String
    public var volume: Int
    /// The device's minor number (drbd.conf's `device ... minor N`).
    public var minor: Int?
    public var node: String
    public var peerNode: String?
    /// false for a resource that is configured but not up: the remaining fields then say "Unconfigured".
    public var up: Bool
    public var role: String
    public var disk: String
    public var connection: String
    public var peerRole: String
    public var peerDisk: String
    public var uuids: GenerationIdentifiers?
    public var flags: [String]?
    public var sizeBytes: UInt64?
    public var outOfSyncKiB: UInt64?
    public var resync: ResyncReport?
    /// Blocks found different by the last (or the running) online verify, in KiB.
    public var verifyMismatchesKiB: UInt64?
    public var requestsInFlight: Int?
    /// "fencing" while resource-and-stonith fencing holds application I/O (drbdadm's `suspended:fencing`).
    public var suspended: String?
    /// The fence-peer handler is running.
    public var fencingPeer: Bool?
    /// The backing device's I/O mode (direct or buffered, and why).
    public var ioMode: String?
    public var replicationProtocol: String?
    public var backingDevice: String?
    /// The device drbd.conf names (a link to the loop device while Primary).
    public var device: String?
    /// The block device while it is attached (Primary), nil otherwise.
    public var blockDevice: BlockDeviceReport?
    /// /proc/drbd's counters.
    public var counters: ResourceCounters?
    /// Who holds the device open (mounts in any mount namespace, processes, NBD clients); `secondary` and `down`
    /// are refused while this is not empty.
    public var heldOpenBy: [String]?
    /// Where this resource's split-brain victims' blocks are kept (`tandem adm restore-discarded`).
    public var preserveDirectory: String?
    /// The NBD export's URIs (the Unix socket, and TCP if configured), as nbdinfo and nbdcopy take them.
    public var nbdExports: [String]?

    public init(name: String, node: String, peerNode: String?) {
        self.name = name
        self.volume = 0
        self.node = node
        self.peerNode = peerNode
        self.up = false
        self.role = "Unconfigured"
        self.disk = "Unconfigured"
        self.connection = "Unconfigured"
        self.peerRole = "Unconfigured"
        self.peerDisk = "Unconfigured"
    }
}

/// /proc/drbd's counters (DRBD 8.4's names in the comments). Traffic is cumulative since `up`.
public struct ResourceCounters: Codable, Sendable, Hashable {
    /// ns: replicated payload sent to the peer.
    public var networkSentKiB: UInt64
    /// nr: replicated payload received from the peer.
    public var networkReceivedKiB: UInt64
    /// dw: written to the backing device.
    public var diskWrittenKiB: UInt64
    /// dr: read from the backing device.
    public var diskReadKiB: UInt64
    /// al: activity-log transactions written.
    public var activityLogUpdates: UInt64
    /// bm: bitmap pages written.
    public var bitmapUpdates: UInt64
    /// lo: requests on the backing device, not yet completed.
    public var localPending: Int
    /// pe: writes sent to the peer, not yet acknowledged.
    public var peerPending: Int
    /// ua: the peer's writes received here, not yet acknowledged.
    public var unacknowledged: Int
    /// ap: application requests not yet completed.
    public var applicationPending: Int
    /// ep: epochs not yet barrier-acknowledged.
    public var epochs: Int
    /// Flushes submitted to the backing device (not in /proc/drbd): how the FUSE file's fsyncs reach the disks.
    public var diskFlushes: UInt64?

    public init(
        networkSentKiB: UInt64, networkReceivedKiB: UInt64, diskWrittenKiB: UInt64, diskReadKiB: UInt64,
        activityLogUpdates: UInt64, bitmapUpdates: UInt64, localPending: Int, peerPending: Int, unacknowledged: Int,
        applicationPending: Int, epochs: Int
    ) {
        self.networkSentKiB = networkSentKiB
        self.networkReceivedKiB = networkReceivedKiB
        self.diskWrittenKiB = diskWrittenKiB
        self.diskReadKiB = diskReadKiB
        self.activityLogUpdates = activityLogUpdates
        self.bitmapUpdates = bitmapUpdates
        self.localPending = localPending
        self.peerPending = peerPending
        self.unacknowledged = unacknowledged
        self.applicationPending = applicationPending
        self.epochs = epochs
    }
}

public struct GenerationIdentifiers: Codable, Sendable, Hashable {
    public var current: String
    public var bitmap: String
    public var history1: String
    public var history2: String

    public init(current: UInt64, bitmap: UInt64, history1: UInt64, history2: UInt64) {
        self.current = current.fixedWidthHex
        self.bitmap = bitmap.fixedWidthHex
        self.history1 = history1.fixedWidthHex
        self.history2 = history2.fixedWidthHex
    }
}

public struct ResyncReport: Codable, Sendable, Hashable {
    /// "source" or "target".
    public var direction: String
    public var percentDone: Double
    public var totalKiB: UInt64
    public var remainingKiB: UInt64
    public var speedKiBPerSecond: UInt64
    public var etaSeconds: UInt64?
    public var paused: Bool

    public init(
        direction: String, percentDone: Double, totalKiB: UInt64, remainingKiB: UInt64, speedKiBPerSecond: UInt64,
        etaSeconds: UInt64?, paused: Bool
    ) {
        self.direction = direction
        self.percentDone = percentDone
        self.totalKiB = totalKiB
        self.remainingKiB = remainingKiB
        self.speedKiBPerSecond = speedKiBPerSecond
        self.etaSeconds = etaSeconds
        self.paused = paused
    }
}

/// A Primary's block device: the loop device, the links to it and the FUSE file under it.
public struct BlockDeviceReport: Codable, Sendable, Hashable {
    public var loopDevice: String
    /// The configured device path and /dev/tandem/by-res/NAME (under the daemon's link root).
    public var links: [String]
    public var fuseFile: String
    /// Whether the loop device does direct I/O to the FUSE file (it should; buffered only when allowed).
    public var directIO: Bool
    /// fsync/flush requests on the FUSE file completed since it was attached.
    public var flushesCompleted: UInt64

    public init(loopDevice: String, links: [String], fuseFile: String, directIO: Bool, flushesCompleted: UInt64) {
        self.loopDevice = loopDevice
        self.links = links
        self.fuseFile = fuseFile
        self.directIO = directIO
        self.flushesCompleted = flushesCompleted
    }
}

extension ReplicationDaemon: ControlHandler {
    public static var protocolVersion: Int { ControlProtocol.version }
    public static var requestBytesMaximum: Int { ControlProtocol.requestBytesMaximum }
    public static var responseBytesMaximum: Int { ControlProtocol.responseBytesMaximum }
    public static var daemonName: String { "replicad" }

    public static func errorResponse(_ kind: ControlErrorKind, _ message: String) -> ControlResponse {
        switch kind {
        case .refused: ControlResponse(.refused, message)
        case .badRequest: ControlResponse(.badRequest, message)
        case .failed: ControlResponse(.failed, message)
        }
    }
}
