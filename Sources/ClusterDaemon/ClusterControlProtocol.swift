import DaemonSupport
import FencingCore

/// heartbeatd's control socket: `<run-dir>/heartbeatd.sock`, JSON lines, root only, like replicad's (see
/// `ControlServer`). `tandem takeover`, `standby`, `cl-status` and `status` use it.
public enum ClusterControlProtocol {
    public static let version = 1
    public static let socketFileName = "heartbeatd.sock"
    public static let requestBytesMaximum = 4096
    public static let responseBytesMaximum = 1 << 20
    /// How long `tandem fence-peer` waits for heartbeatd: the peer's answer (`PeerOutdateMachine.answerTimeout`),
    /// with room to spare.
    public static let fencePeerAnswerTimeout: Duration = PeerOutdateMachine.answerTimeout + .seconds(10)

    public static func socketPath(runDirectory: String) -> String {
        runDirectory.hasSuffix("/") ? runDirectory + socketFileName : runDirectory + "/" + socketFileName
    }

    public static func client(runDirectory: String) -> LineControlClient {
        LineControlClient(
            socketPath: socketPath(runDirectory: runDirectory), daemonName: "the cluster manager",
            startHint: "start it with 'tandem heartbeatd'", responseBytesMaximum: responseBytesMaximum)
    }
}

public enum ClusterControlVerb: String, Codable, Sendable, CaseIterable {
    case ping
    case status
    /// hb_standby: give the `selection` to the peer.
    case standby
    /// hb_takeover: take the `selection` from the peer.
    case takeover
    /// dopd: ask the peer, over the heartbeat links, to outdate its disk of `resource`. The answer carries DRBD's
    /// fence-peer code in `exitCode`; it comes when the peer answers (at most `PeerOutdateMachine.answerTimeout`).
    case fencePeer = "fence-peer"
}

public struct ClusterControlRequest: Codable, Sendable {
    public var version: Int
    public var verb: ClusterControlVerb
    /// all, local, foreign or failback.
    public var selection: String?
    /// The replicated resource, for `fence-peer`.
    public var resource: String?

    public init(verb: ClusterControlVerb, selection: String? = nil, resource: String? = nil) {
        self.version = ClusterControlProtocol.version
        self.verb = verb
        self.selection = selection
        self.resource = resource
    }
}

public enum ClusterControlResult: String, Codable, Sendable {
    case ok
    case refused
    case badRequest = "bad-request"
    case failed
}

public struct ClusterControlResponse: Codable, Sendable {
    public var version: Int
    public var result: ClusterControlResult
    public var message: String?
    public var status: ClusterStatusReport?
    /// `fence-peer`: the fence-peer handler's exit code (DRBD's 3-7, or 1).
    public var exitCode: Int32?

    public init(_ result: ClusterControlResult, _ message: String? = nil, status: ClusterStatusReport? = nil, exitCode: Int32? = nil) {
        self.version = ClusterControlProtocol.version
        self.result = result
        self.message = message
        self.status = status
        self.exitCode = exitCode
    }
}

/// What `status` reports: nodes, links, groups, counters.
public struct ClusterStatusReport: Codable, Sendable {
    public struct Peer: Codable, Sendable {
        public var name: String
        public var status: String
        public var links: [Link]
    }

    public struct Link: Codable, Sendable {
        public var name: String
        public var status: String
    }

    public struct Group: Codable, Sendable {
        public var key: String
        public var preferredNode: String
        public var resources: [String]
        /// stopped, starting, running, stopping, failed, stop-failed.
        public var state: String
        public var resourcesStarted: Int
        public var heldByPeer: Bool
        public var failedHere: Bool
        /// Failed monitor checks within the failure window, and the last one's message.
        public var recentMonitorFailures: Int?
        public var lastMonitorFailure: String?
    }

    public var node: String
    /// This node's status: up, active; `halted` after a last resort.
    public var status: String
    /// Heartbeat's rscstatus: none, local, foreign, all, transition.
    public var resourcesHeld: String
    public var phase: String
    public var exchange: String?
    /// STONITH towards the peer (armed, waiting, running, failed, fenced); nil without a fence device.
    public var fencing: String?
    /// The ping nodes this node reaches, and what the peer says it reaches; nil without ping nodes.
    public var pingNodes: String?
    /// Quorum and the witness's last answer; nil without a witness.
    public var quorum: String?
    public var generation: UInt64
    public var peers: [Peer]
    public var groups: [Group]
    /// Counters by name: membership, wire and resource counters together.
    public var counters: [String: UInt64]
}

extension ClusterDaemon: ControlHandler {
    public static var protocolVersion: Int { ClusterControlProtocol.version }
    public static var requestBytesMaximum: Int { ClusterControlProtocol.requestBytesMaximum }
    public static var responseBytesMaximum: Int { ClusterControlProtocol.responseBytesMaximum }
    public static var daemonName: String { "heartbeatd" }

    public static func errorResponse(_ kind: ControlErrorKind, _ message: String) -> ClusterControlResponse {
        switch kind {
        case .refused: ClusterControlResponse(.refused, message)
        case .badRequest: ClusterControlResponse(.badRequest, message)
        case .failed: ClusterControlResponse(.failed, message)
        }
    }
}
