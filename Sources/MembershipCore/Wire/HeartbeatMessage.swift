/// One Heartbeat message: an ordered list of `name=value` fields.
///
/// The order matters: the authentication digest covers the fields in the order they were sent, so a message is
/// kept exactly as it arrived and re-encoded byte for byte.
public struct HeartbeatMessage: Sendable, Hashable, CustomStringConvertible {
    public struct Field: Sendable, Hashable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public private(set) var fields: [Field]

    public init(fields: [Field] = []) { self.fields = fields }

    /// A message of type `type` (`t=`), the field every message starts with.
    public init(type: HeartbeatMessageType) { self.fields = [Field(HeartbeatField.type, type.rawValue)] }

    /// The value of the first field called `name`.
    public subscript(name: String) -> String? {
        get { fields.first { $0.name == name }?.value }
        set {
            if let index = fields.firstIndex(where: { $0.name == name }) {
                if let newValue { fields[index].value = newValue } else { fields.remove(at: index) }
            } else if let newValue {
                fields.append(Field(name, newValue))
            }
        }
    }

    /// The message type (`t=`); nil when missing or not one Tandem knows.
    public var type: HeartbeatMessageType? { self[HeartbeatField.type].flatMap(HeartbeatMessageType.init(rawValue:)) }

    /// The sending node (`src=`).
    public var source: String? { self[HeartbeatField.source] }

    /// A hexadecimal field (`seq=`, `hg=`, `firstseq=`...), as Heartbeat writes numbers on the wire.
    public func hexadecimal(_ name: String) -> UInt64? {
        guard let text = self[name], (1...16).contains(text.utf8.count) else { return nil }
        return UInt64(text, radix: 16)
    }

    public mutating func setHexadecimal(_ name: String, _ value: UInt64) {
        self[name] = String(value, radix: 16)
    }

    /// The fields as `name=value` lines, without the frame: what the authentication digest covers (the `auth` field
    /// excluded), and what Heartbeat's `msg2string(..., NOHEAD)` produces.
    public func body(excludingAuthentication: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        for field in fields where !(excludingAuthentication && field.name == HeartbeatField.authentication) {
            bytes.append(contentsOf: field.name.utf8)
            bytes.append(UInt8(ascii: "="))
            bytes.append(contentsOf: field.value.utf8)
            bytes.append(UInt8(ascii: "\n"))
        }
        return bytes
    }

    public var description: String {
        fields.filter { $0.name != HeartbeatField.authentication }.map { "\($0.name)=\($0.value)" }
            .joined(separator: " ")
    }
}

/// The field names Heartbeat R1 uses (cluster-glue's ha_msg.h), under readable names.
public enum HeartbeatField {
    /// `t`: the message type.
    public static let type = "t"
    /// `st`: the sender's status in a status message (init, up, active).
    public static let status = "st"
    /// `dt`: the sender's deadtime in milliseconds, hexadecimal.
    public static let deadtime = "dt"
    /// `protocol`: the protocol version (1).
    public static let protocolVersion = "protocol"
    /// `src`: the sending node's name.
    public static let source = "src"
    /// `dest`: the node a message is for; absent means every node.
    public static let destination = "dest"
    /// `seq`: the sender's sequence number, hexadecimal.
    public static let sequence = "seq"
    /// `hg`: the sender's generation, hexadecimal; it grows at every restart.
    public static let generation = "hg"
    /// `ts`: the sender's `time()`, hexadecimal.
    public static let timestamp = "ts"
    /// `ld`: the sender's load average.
    public static let load = "ld"
    /// `pings` (Tandem): in a status message, how many of its ping nodes and groups the sender reaches, decimal;
    /// absent without ping nodes. ipfail compares it with the local count.
    public static let pingNodesReachable = "pings"
    /// `hears` (Tandem): in status messages, the nodes the sender hears, separated by spaces.
    public static let hears = "hears"
    /// `ttl`: hops left.
    public static let timeToLive = "ttl"
    /// `auth`: `INDEX HEXDIGEST`, always the last field.
    public static let authentication = "auth"
    /// `rsc_hold`: none, local, foreign or all: which resources the sender holds or asks about.
    public static let resourcesHeld = "rsc_hold"
    /// `isstable`: 1 when the sender is not in the middle of acquiring or releasing resources.
    public static let isStable = "isstable"
    /// `info`: the phase of an `ask_resources` exchange (me, other, done).
    public static let info = "info"
    /// `firstseq`, `lastseq`: the range an `NS_rexmit` asks for.
    public static let firstSequence = "firstseq"
    public static let lastSequence = "lastseq"
    /// `comment`: free text, ignored by receivers.
    public static let comment = "comment"
}

/// The message types Tandem sends and understands: the ones Heartbeat R1 uses between nodes.
public enum HeartbeatMessageType: String, Sendable, Hashable, CaseIterable {
    /// The keepalive: sent every `keepalive`, sequenced.
    case status
    /// "I have just started": the peer answers with `resource`.
    case starting
    /// Which resources the sender holds (`rsc_hold`) and whether it is stable.
    case resource
    /// The standby handshake (`info=me|other|done`).
    case askResources = "ask_resources"
    /// "Run standby on the resources named in `rsc_hold`, seen from your side": hb_takeover.
    case takeover = "hb_takeover"
    /// "I have stopped my resources and am leaving": the peer may take everything without waiting for deadtime.
    case shutdownDone = "shutdone"
    /// Heartbeat's IP takeover request and answer (R1 IPaddr). Accepted and ignored: Tandem's groups carry their
    /// addresses.
    case ipRequest = "ip-request"
    case ipRequestResponse = "ip-request-resp"
    /// dopd's resource-level fencing: "outdate your disk of `drbd_resource`", and the answer with DRBD's fence-peer
    /// code (`FencingCore.PeerOutdateMessage`).
    case outdateRequest = "outdate"
    case outdateReply = "outdate_rpl"
    /// Tandem's witness: a node's question, sent to the witness only, and its answer (`FencingCore.WitnessMessage`).
    case witnessAsk = "witness_ask"
    case witnessAnswer = "witness_answer"
    /// Unsequenced retransmission control: a request for `firstseq..lastseq`, and "those are gone".
    case retransmitRequest = "NS_rexmit"
    case retransmitRefused = "NS_nak_rexmit"
    /// Unsequenced acknowledgement; accepted and ignored.
    case acknowledgement = "NS_ackmsg"

    /// Heartbeat gives no sequence number to types starting with `NS_`, so that retransmission control is never
    /// itself retransmitted.
    public var isSequenced: Bool { !rawValue.hasPrefix("NS_") }
}
