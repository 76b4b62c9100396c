import MembershipCore

/// The resource-layer messages of Heartbeat R1, typed. `HeartbeatMessage` is their wire form.
///
/// Holdings travel twice: as R1's `rsc_hold` (none, local, foreign, all, from the sender's point of view), which
/// Heartbeat understands, and as Tandem's `groups` field (the keys of the groups the sender holds or names, separated
/// by spaces), which is exact when a node holds only some of its local groups. A receiver uses `groups` when present.
public enum ResourceMessage: Sendable, Hashable {
    /// "I have just started and hold nothing."
    case starting
    /// What the sender holds, and whether it is stable (not acquiring or releasing anything).
    case holdings(Holdings, stable: Bool)
    /// The same, sent to answer holdings that showed a group both nodes hold (Tandem's `reply=conflict`). It is never
    /// itself answered, so that two nodes cannot answer each other forever.
    case conflictAnswer(Holdings, stable: Bool)
    /// The same, asking the peer to answer with what it holds (Tandem's `reply=wanted`): a node that regained quorum
    /// must hear what its peer holds now before it takes any group nobody seemed to hold. The answer is a
    /// `conflictAnswer`, which is never answered in turn.
    case answerWanted(Holdings, stable: Bool)
    /// The standby exchange: the sender offers `groups` (`info=me`), accepts an offer (`other`), refuses one
    /// (`refused`, Tandem's addition, with the reason), or has released what it offered (`done`).
    case standby(StandbyPhase, Holdings, reason: String?)
    /// hb_takeover: "give me these" (the selection as seen by the sender).
    case takeover(ResourceSelection)
    /// "I released everything and I am leaving."
    case shutdownDone

    public enum StandbyPhase: String, Sendable, Hashable {
        case offer = "me"
        case accept = "other"
        case refuse = "refused"
        case done
    }

    /// A set of groups: `rsc_hold` and, from Tandem nodes, the exact keys and when each was acquired.
    public struct Holdings: Sendable, Hashable {
        public var selection: HeldSelection
        public var groupKeys: [String]?
        /// Tandem's `epochs` field, one per key of `groupKeys`, in the same order: the acquisition epoch at which the
        /// sender acquired that group (one more than the highest epoch it had seen then). Of two nodes that both
        /// hold a group, the one that acquired it later has the higher epoch. Heartbeat nodes send none (nil).
        public var acquisitionEpochs: [UInt64]?
        /// Tandem's `failed` field: the groups that failed on the sender (a failed start, or monitoring gave them up)
        /// and that it will not take again by itself. A group's other node takes such a group when nobody holds it;
        /// a group its preferred node has not failed is left to that node (both taking it at once is the race
        /// this avoids).
        public var failedGroupKeys: [String]?

        public init(
            selection: HeldSelection, groupKeys: [String]?, acquisitionEpochs: [UInt64]? = nil, failedGroupKeys: [String]? = nil
        ) {
            precondition(
                acquisitionEpochs == nil || acquisitionEpochs?.count == groupKeys?.count,
                "\(acquisitionEpochs?.count ?? 0) epochs for \(groupKeys?.count ?? 0) group keys")
            self.selection = selection
            self.groupKeys = groupKeys
            self.acquisitionEpochs = acquisitionEpochs
            self.failedGroupKeys = failedGroupKeys
        }

        /// Each named group's epoch, when the sender gave them.
        public var epochsByKey: [String: UInt64] {
            guard let groupKeys, let acquisitionEpochs else { return [:] }
            return Dictionary(zip(groupKeys, acquisitionEpochs), uniquingKeysWith: max)
        }
    }

    public func encode() -> HeartbeatMessage {
        switch self {
        case .starting:
            return HeartbeatMessage(type: .starting)
        case .holdings(let holdings, let stable), .conflictAnswer(let holdings, let stable),
            .answerWanted(let holdings, let stable):
            var message = HeartbeatMessage(type: .resource)
            Self.put(holdings, into: &message)
            message[HeartbeatField.isStable] = stable ? "1" : "0"
            if case .conflictAnswer = self { message[Self.replyField] = Self.conflictReply }
            if case .answerWanted = self { message[Self.replyField] = Self.answerWantedReply }
            return message
        case .standby(let phase, let holdings, let reason):
            var message = HeartbeatMessage(type: .askResources)
            message[HeartbeatField.info] = phase.rawValue
            Self.put(holdings, into: &message)
            if let reason { message[HeartbeatField.comment] = reason }
            return message
        case .takeover(let selection):
            var message = HeartbeatMessage(type: .takeover)
            message[HeartbeatField.resourcesHeld] = selection.rawValue
            return message
        case .shutdownDone:
            return HeartbeatMessage(type: .shutdownDone)
        }
    }

    /// The typed message, or nil for messages that are not about resources or lack a required field.
    public init?(_ message: HeartbeatMessage) {
        switch message.type {
        case .starting?:
            self = .starting
        case .resource?:
            guard let holdings = Self.holdings(in: message) else { return nil }
            let stable = message[HeartbeatField.isStable] == "1"
            switch message[Self.replyField] {
            case Self.conflictReply?: self = .conflictAnswer(holdings, stable: stable)
            case Self.answerWantedReply?: self = .answerWanted(holdings, stable: stable)
            default: self = .holdings(holdings, stable: stable)
            }
        case .askResources?:
            guard let phase = message[HeartbeatField.info].flatMap(StandbyPhase.init(rawValue:)),
                let holdings = Self.holdings(in: message)
            else { return nil }
            self = .standby(phase, holdings, reason: message[HeartbeatField.comment])
        case .takeover?:
            guard let selection = message[HeartbeatField.resourcesHeld].flatMap(ResourceSelection.init(rawValue:)) else {
                return nil
            }
            self = .takeover(selection)
        case .shutdownDone?:
            self = .shutdownDone
        default:
            return nil
        }
    }

    static let groupsField = "groups"
    static let epochsField = "epochs"
    static let failedField = "failed"
    static let replyField = "reply"
    static let conflictReply = "conflict"
    static let answerWantedReply = "wanted"

    private static func put(_ holdings: Holdings, into message: inout HeartbeatMessage) {
        message[HeartbeatField.resourcesHeld] = holdings.selection.rawValue
        if let keys = holdings.groupKeys { message[groupsField] = keys.joined(separator: " ") }
        if let epochs = holdings.acquisitionEpochs { message[epochsField] = epochs.map(String.init).joined(separator: " ") }
        if let failed = holdings.failedGroupKeys, !failed.isEmpty { message[failedField] = failed.joined(separator: " ") }
    }

    private static func holdings(in message: HeartbeatMessage) -> Holdings? {
        guard let selection = message[HeartbeatField.resourcesHeld].flatMap(HeldSelection.init(rawValue:)) else {
            return nil
        }
        let keys = message[groupsField].map { $0.split(separator: " ").map(String.init) }
        // Malformed epochs (not numbers, or not one per key) count as none: the preferred-node rule then decides, as
        // with a Heartbeat peer.
        var epochs = message[epochsField].map { $0.split(separator: " ").compactMap { UInt64($0) } }
        if epochs?.count != keys?.count { epochs = nil }
        let failed = message[failedField].map { $0.split(separator: " ").map(String.init) }
        return Holdings(selection: selection, groupKeys: keys, acquisitionEpochs: epochs, failedGroupKeys: failed)
    }
}

/// R1's `rsc_hold` values.
public enum HeldSelection: String, Sendable, Hashable {
    case none
    case local
    case foreign
    case all

    /// The same set seen from the other node.
    public var swapped: HeldSelection {
        switch self {
        case .none: .none
        case .local: .foreign
        case .foreign: .local
        case .all: .all
        }
    }
}
