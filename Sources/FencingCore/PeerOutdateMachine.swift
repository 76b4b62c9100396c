import CoreSupport
import MembershipCore
import TandemConfig

/// Resource-level fencing over the heartbeat links: what Heartbeat's dopd (drbd-peer-outdater) did.
///
/// A Primary that lost its replication link runs drbd.conf's fence-peer handler, `tandem fence-peer`, which asks
/// this node's heartbeatd to have the peer outdate its disk. The request travels as a sequenced heartbeat message
/// (retransmitted like any other); the peer's heartbeatd runs `outdate` against its own replicad and answers with
/// DRBD's fence-peer code:
///
/// ```
/// requester                                   peer
///   fence-peer r0 ──► outdate(r0, id) ───────►  replicad: outdate r0
///                                              ├ done                  → 4 peer outdated
///                                              ├ disk Inconsistent     → 3 peer inconsistent
///                                              ├ Primary               → 6 peer is primary
///                                              ├ replicad not running r0 → 5 unreachable
///                                              └ still connected after the wait → 1 refused
///   exit code ◄── outdate_rpl(id, rc) ◄────────┘
///   no answer within answerTimeout, or the peer dead/unknown to membership → 5 unreachable
/// ```
///
/// Pure: the driver carries out the actions, passes the time in and routes the messages.
public struct PeerOutdateMachine: Sendable {
    /// How long a request waits for the peer's answer before it counts as unreachable (drbd-peer-outdater's -t is
    /// 60 s; the peer needs at most its replication ping timeout to see the link go, plus the outdate itself).
    public static let answerTimeout: Duration = .seconds(30)
    /// Requests waiting for answers, and outdates the peer asked of this node, at most.
    public static let pendingMaximum = 16

    private struct Outgoing: Sendable {
        var resource: String
        var deadline: MonotonicInstant
    }

    public let peer: String
    private var outgoing: [UInt64: Outgoing] = [:]
    private var incoming: Set<UInt64> = []
    private var nextRequestID: UInt64

    /// `firstRequestID` should differ between runs of the daemon (its generation, say), so that an answer to a
    /// request of an earlier run is never taken for one of this run's.
    public init(peer: String, firstRequestID: UInt64) {
        self.peer = peer
        self.nextRequestID = firstRequestID
    }

    /// `tandem fence-peer` asks to outdate `resource` on the peer. `peerReachable` is membership's view: a peer that
    /// is dead or was never heard cannot answer, and waiting would only delay the handler.
    public mutating func request(resource: String, peerReachable: Bool, now: MonotonicInstant) -> PeerOutdateRequest {
        guard PeerOutdateMessage.isValidResourceName(resource) else {
            return .answered(.refused, detail: "'\(resource)' is not a resource name")
        }
        guard peerReachable else {
            return .answered(.peerUnreachable, detail: "\(peer) is not reachable over the heartbeat links")
        }
        guard outgoing.count < Self.pendingMaximum else {
            return .answered(.refused, detail: "\(Self.pendingMaximum) outdate requests already wait")
        }
        let id = nextRequestID
        nextRequestID &+= 1
        outgoing[id] = Outgoing(resource: resource, deadline: now + Self.answerTimeout)
        return .sent(requestID: id, [
            .log(.notice, "asking \(peer) to outdate \(resource) (request \(id))"),
            .send(PeerOutdateMessage.request(resource: resource, requestID: id).encode()),
        ])
    }

    /// A message of ours arrived from the peer.
    public mutating func received(_ message: PeerOutdateMessage, now: MonotonicInstant) -> [PeerOutdateAction] {
        switch message {
        case .request(let resource, let requestID):
            guard !incoming.contains(requestID) else { return [] }
            guard incoming.count < Self.pendingMaximum else {
                return [.log(.error, "\(peer) asked to outdate \(resource) while \(Self.pendingMaximum) outdates run; not answered")]
            }
            incoming.insert(requestID)
            return [.log(.notice, "\(peer) asks to outdate \(resource) here (request \(requestID))"),
                    .outdateLocally(resource: resource, requestID: requestID)]
        case .reply(let requestID, let code):
            guard let request = outgoing.removeValue(forKey: requestID) else {
                return [.log(.info, "an outdate answer for request \(requestID), which no longer waits; ignored")]
            }
            let detail = "\(peer) answered for \(request.resource): \(code.summary)"
            return [.log(.notice, detail), .answer(requestID: requestID, code, detail: detail)]
        }
    }

    /// The local outdate the peer asked for finished with `code`.
    public mutating func localOutdateFinished(requestID: UInt64, _ code: FencePeerExitCode, detail: String) -> [PeerOutdateAction] {
        precondition(incoming.remove(requestID) != nil, "outdate \(requestID) finished but was never asked for: \(incoming)")
        return [.log(.notice, "answered \(peer)'s outdate request \(requestID) with \(code.rawValue): \(detail)"),
                .send(PeerOutdateMessage.reply(requestID: requestID, code).encode())]
    }

    /// Membership lost the peer: nobody will answer the waiting requests.
    public mutating func peerLost() -> [PeerOutdateAction] {
        defer { outgoing.removeAll() }
        return outgoing.keys.sorted().map { .answer(requestID: $0, .peerUnreachable, detail: "\(peer) was lost before it answered") }
    }

    public mutating func tick(now: MonotonicInstant) -> [PeerOutdateAction] {
        let expired = outgoing.filter { $0.value.deadline <= now }.keys.sorted()
        for id in expired { outgoing[id] = nil }
        return expired.map { .answer(requestID: $0, .peerUnreachable, detail: "\(peer) did not answer within \(Self.answerTimeout)") }
    }

    public var nextDeadline: MonotonicInstant? { outgoing.values.map(\.deadline).min() }
}

/// How a request of `tandem fence-peer` started.
public enum PeerOutdateRequest: Sendable, Hashable {
    /// Sent: the answer arrives as `.answer` for `requestID`.
    case sent(requestID: UInt64, [PeerOutdateAction])
    /// Answered at once, without asking the peer.
    case answered(FencePeerExitCode, detail: String)
}

public enum PeerOutdateAction: Sendable, Hashable {
    /// Send this message to the peer, sequenced like the resource messages.
    case send(HeartbeatMessage)
    /// Outdate the local disk of `resource` (replicad's `outdate`), then call `localOutdateFinished`.
    case outdateLocally(resource: String, requestID: UInt64)
    /// The answer to this node's request: `tandem fence-peer` exits with the code.
    case answer(requestID: UInt64, FencePeerExitCode, detail: String)
    case log(LogLevel, String)
}

/// The wire form: dopd's message types, `outdate` and `outdate_rpl`.
public enum PeerOutdateMessage: Sendable, Hashable {
    case request(resource: String, requestID: UInt64)
    case reply(requestID: UInt64, FencePeerExitCode)

    static let resourceField = "drbd_resource"
    static let requestIDField = "reqid"
    static let codeField = "rc"

    /// drbd.conf resource names, and nothing that could confuse the message format or a command line.
    static func isValidResourceName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64
            && name.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_.".unicodeScalars.contains($0) }
            && name.unicodeScalars.allSatisfy(\.isASCII)
    }

    public func encode() -> HeartbeatMessage {
        switch self {
        case .request(let resource, let requestID):
            var message = HeartbeatMessage(type: .outdateRequest)
            message[Self.resourceField] = resource
            message[Self.requestIDField] = String(requestID, radix: 16)
            return message
        case .reply(let requestID, let code):
            var message = HeartbeatMessage(type: .outdateReply)
            message[Self.requestIDField] = String(requestID, radix: 16)
            message[Self.codeField] = String(code.rawValue)
            return message
        }
    }

    /// The typed message, or nil when `message` is not one of ours or is malformed.
    public init?(_ message: HeartbeatMessage) {
        guard let id = message[Self.requestIDField].flatMap({ UInt64($0, radix: 16) }) else { return nil }
        switch message.type {
        case .outdateRequest?:
            guard let resource = message[Self.resourceField], Self.isValidResourceName(resource) else { return nil }
            self = .request(resource: resource, requestID: id)
        case .outdateReply?:
            guard let code = message[Self.codeField].flatMap({ Int32($0) }).flatMap(FencePeerExitCode.init(rawValue:)) else {
                return nil
            }
            self = .reply(requestID: id, code)
        default:
            return nil
        }
    }
}
