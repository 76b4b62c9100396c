import ReplicationCore

/// Decides which TCP sockets become the replication connection: a pure state machine, time passed in, no I/O.
///
/// Why a machine of its own: as in DRBD, each node both listens and connects every connect-int, and a connection
/// is two sockets (data and meta) that must end up paired the same way on both nodes. When both nodes connect at
/// the same moment each holds two half-made pairs; the rule below makes both keep the same one, without a further
/// round trip. Keeping this logic out of the NIO handlers lets it be tested event by event.
///
/// The exchange on each socket: the connecting side sends a `ChannelHello` offer; the listening side answers with
/// an accept on the same socket (or closes it). A pair is one data and one meta socket of the same attempt (the
/// connecting side's session nonce and attempt number). It is established on the listening side when it has
/// accepted both, and on the connecting side when both accepts have arrived.
///
/// The race rule: a node that receives an offer while its own attempt has at least one socket past TCP connect (so
/// its offer is on its way to the peer) keeps the attempt of the node with the higher session nonce. The peer
/// applies the same comparison, so both keep the same pair. A node whose own sockets are still connecting gives its
/// attempt up for the peer's: that keeps a node whose outgoing connects never get through (a one-way firewall)
/// reachable. Equal nonces mean the peer address leads back to this node, which is refused and logged.
///
/// Connecting is edge-triggered: `startConnecting` arms it, and the end of an established connection (however it
/// ends) disarms it, so that no new connection is made before the node has heard of the old one's end. The
/// replication machine calls `startConnecting` again once it is back in WFConnection. See docs/replication.md.
///
/// Limits: at most `halfOpenSocketsMax` accepted sockets that are not yet part of a connection; a socket that has
/// not completed its hello exchange within `helloTimeout` is closed; an attempt starts at most once per connect-int.
public struct ConnectionPairingMachine: Sendable {
    public struct Settings: Sendable, Hashable {
        /// The drbd.conf resource name both hellos must carry.
        public var resourceName: String
        /// This node's random session nonce: pairs the sockets of one attempt and settles races.
        public var sessionNonce: UInt64
        /// DRBD's connect-int: the least time between the starts of two outgoing attempts.
        public var connectInterval: Duration
        /// How long a socket may take from TCP accept (or the start of an outgoing attempt) until it is paired.
        public var helloTimeout: Duration
        /// Accepted sockets that are not yet part of a connection; beyond this, new sockets are closed at once.
        public var halfOpenSocketsMax: Int

        public init(
            resourceName: String, sessionNonce: UInt64, connectInterval: Duration, helloTimeout: Duration,
            halfOpenSocketsMax: Int = 8
        ) {
            self.resourceName = resourceName
            self.sessionNonce = sessionNonce
            self.connectInterval = connectInterval
            self.helloTimeout = helloTimeout
            self.halfOpenSocketsMax = halfOpenSocketsMax
        }
    }

    /// A socket, named by the machine (outgoing) or allocated by it for the shell (accepted).
    public struct SocketID: Sendable, Hashable, Comparable, CustomStringConvertible {
        public var rawValue: UInt64
        public init(_ rawValue: UInt64) { self.rawValue = rawValue }
        public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
        public var description: String { "socket#\(rawValue)" }
    }

    /// Two sockets paired into one replication connection.
    public struct Connection: Sendable, Hashable {
        public var data: SocketID
        public var meta: SocketID
        public var peerNonce: UInt64
        /// The connecting side's attempt number.
        public var attempt: UInt32
        /// This node made the outgoing connects (otherwise it accepted them).
        public var initiatedLocally: Bool

        public func contains(_ socket: SocketID) -> Bool { socket == data || socket == meta }
        public func channel(of socket: SocketID) -> PacketChannel? {
            socket == data ? .data : socket == meta ? .meta : nil
        }
    }

    public enum LogLevel: Sendable, Hashable {
        /// Routine: refused retries while not connecting, race losers, abandoned attempts.
        case debug
        /// For the operator: a wrong resource, a bad hello, a connection to itself, too many half-open sockets.
        case notice
    }

    public enum Action: Sendable, Hashable {
        /// Open a TCP connection to the peer for this channel; report `outgoingConnected` or `outgoingFailed`.
        case connect(SocketID, PacketChannel)
        case sendHello(SocketID, ChannelHello)
        /// Close the socket (it may still be connecting, or already closed: then nothing is to be done).
        case close(SocketID, reason: String)
        /// A new connection: the shell starts a new generation and reports `transportConnected`.
        case established(Connection)
        /// The established connection ended without the node asking: the shell reports `transportLost`.
        case lost(reason: String)
        case log(LogLevel, String)
    }

    private enum OutgoingState: Sendable, Hashable {
        case connecting
        case awaitingAccept
        case accepted(peerNonce: UInt64)
    }

    private struct OutgoingAttempt: Sendable {
        var attempt: UInt32
        var startedAt: MonotonicInstant
        var sockets: [PacketChannel: (id: SocketID, state: OutgoingState)]

        var hasConnectedSocket: Bool { sockets.values.contains { $0.state != .connecting } }
        func channel(of socket: SocketID) -> PacketChannel? { sockets.first { $0.value.id == socket }?.key }
    }

    private struct IncomingSocket: Sendable {
        var acceptedAt: MonotonicInstant
        /// Set once the peer's offer was accepted; nil while its hello is awaited.
        var offer: ChannelHello?
    }

    public let settings: Settings
    /// Armed by `startConnecting`; disarmed by `stopConnecting` and by the end of an established connection.
    public private(set) var isConnecting = false
    public private(set) var connection: Connection?
    private var outgoing: OutgoingAttempt?
    private var incoming: [SocketID: IncomingSocket] = [:]
    /// The peer's attempt this node last refused a socket of. The peer abandons an attempt when one of its sockets
    /// is closed, so the attempt's other socket, if it arrives later, is refused too: accepting it would abandon this
    /// node's own attempt for one that is already dead.
    private var lastRefusedAttempt: (sessionNonce: UInt64, attempt: UInt32)?
    private var lastAttemptStartedAt: MonotonicInstant?
    private var nextSocketID: UInt64 = 1
    private var nextAttempt: UInt32 = 1
    private var actions: [Action] = []

    public init(settings: Settings) {
        precondition(
            ChannelHello.resourceNameProblem(settings.resourceName) == nil,
            "ConnectionPairingMachine: \(ChannelHello.resourceNameProblem(settings.resourceName) ?? "")")
        precondition(settings.connectInterval > .zero, "connect-int must be positive: \(settings.connectInterval)")
        precondition(settings.helloTimeout > .zero, "hello timeout must be positive: \(settings.helloTimeout)")
        precondition(
            settings.halfOpenSocketsMax >= 2, "halfOpenSocketsMax \(settings.halfOpenSocketsMax) cannot hold a pair")
        self.settings = settings
    }

    /// Sockets accepted from the listener and not yet part of a connection.
    public var halfOpenSocketCount: Int { incoming.count }
    /// An outgoing attempt is under way.
    public var isAttemptInProgress: Bool { outgoing != nil }

    // MARK: Inputs from the node

    public mutating func startConnecting(now: MonotonicInstant) -> [Action] {
        isConnecting = true
        startAttemptIfDue(now: now)
        return takeActions()
    }

    /// Stops attempts and refuses connections from now on. An established connection is left alone: the node drops
    /// it explicitly when it wants to (as `disconnect` does).
    public mutating func stopConnecting(now: MonotonicInstant) -> [Action] {
        isConnecting = false
        abandonOutgoing(reason: "stopped connecting", level: .debug)
        closeAllIncoming(reason: "stopped connecting")
        return takeActions()
    }

    /// The node drops the established connection. It knows, so no `lost` is reported.
    public mutating func dropConnection(reason: String, now: MonotonicInstant) -> [Action] {
        guard let current = connection else { return [] }
        connection = nil
        isConnecting = false
        emit(.close(current.data, reason: "dropped by the node: \(reason)"))
        emit(.close(current.meta, reason: "dropped by the node: \(reason)"))
        return takeActions()
    }

    // MARK: Inputs from the shell

    /// Timers: hello timeouts and the next outgoing attempt. Called every few tens of milliseconds.
    public mutating func tick(now: MonotonicInstant) -> [Action] {
        if let attempt = outgoing, now - attempt.startedAt > settings.helloTimeout {
            abandonOutgoing(
                reason: "attempt \(attempt.attempt) not accepted within \(settings.helloTimeout)", level: .debug)
        }
        for (socket, entry) in incoming.sorted(by: { $0.key < $1.key })
        where now - entry.acceptedAt > settings.helloTimeout {
            incoming[socket] = nil
            let what = entry.offer == nil ? "no hello" : "its partner socket did not arrive"
            emit(.close(socket, reason: "\(what) within \(settings.helloTimeout)"))
        }
        startAttemptIfDue(now: now)
        return takeActions()
    }

    public mutating func outgoingConnected(_ socket: SocketID, now: MonotonicInstant) -> [Action] {
        guard var attempt = outgoing, let channel = attempt.channel(of: socket),
            attempt.sockets[channel]?.state == .connecting
        else {
            return [.close(socket, reason: "its attempt was abandoned")]
        }
        attempt.sockets[channel]!.state = .awaitingAccept
        outgoing = attempt
        emit(.sendHello(socket, hello(channel: channel, role: .offer, attempt: attempt.attempt)))
        return takeActions()
    }

    public mutating func outgoingFailed(_ socket: SocketID, reason: String, now: MonotonicInstant) -> [Action] {
        guard let attempt = outgoing, attempt.channel(of: socket) != nil else { return [] }
        abandonOutgoing(reason: "connect failed: \(reason)", level: .debug, except: socket)
        return takeActions()
    }

    /// A socket accepted by the listener. `fromPeerHost` says whether it comes from the peer's configured address.
    public mutating func socketAccepted(fromPeerHost: Bool, remote: String, now: MonotonicInstant)
        -> (socket: SocketID, actions: [Action])
    {
        let socket = allocateSocketID()
        if !fromPeerHost {
            emit(.log(.notice, "refused a connection from \(remote): not the peer's address"))
            emit(.close(socket, reason: "not from the peer's address"))
        } else if connection != nil {
            emit(.close(socket, reason: "already connected"))
        } else if incoming.count >= settings.halfOpenSocketsMax {
            emit(.log(.notice, "refused a connection from \(remote): \(incoming.count) half-open sockets already"))
            emit(.close(socket, reason: "too many half-open sockets"))
        } else {
            incoming[socket] = IncomingSocket(acceptedAt: now, offer: nil)
        }
        return (socket, takeActions())
    }

    /// The first `ChannelHello.encodedBytes` of a socket decoded as a hello.
    public mutating func helloReceived(_ socket: SocketID, _ hello: ChannelHello, now: MonotonicInstant) -> [Action] {
        if let entry = incoming[socket], entry.offer == nil {
            offerReceived(socket, hello, now: now)
        } else if let attempt = outgoing, let channel = attempt.channel(of: socket),
            attempt.sockets[channel]?.state == .awaitingAccept
        {
            acceptReceived(socket, channel: channel, hello, now: now)
        } else {
            emit(.close(socket, reason: "a hello was not expected on this socket"))
        }
        return takeActions()
    }

    /// The first bytes of a socket are not a hello this node accepts.
    public mutating func helloRefused(_ socket: SocketID, _ error: ChannelHelloError, now: MonotonicInstant) -> [Action]
    {
        if incoming.removeValue(forKey: socket) != nil {
            emit(.log(.notice, "refused an incoming socket: \(error)"))
            emit(.close(socket, reason: "\(error)"))
        } else if let attempt = outgoing, attempt.channel(of: socket) != nil {
            abandonOutgoing(reason: "the peer's reply: \(error)", level: .notice)
        } else {
            emit(.close(socket, reason: "\(error)"))
        }
        return takeActions()
    }

    /// A socket closed, or failed (a corrupt frame, a send queue over its limit): `reason` says why.
    public mutating func socketClosed(_ socket: SocketID, reason: String, now: MonotonicInstant) -> [Action] {
        if let current = connection, let channel = current.channel(of: socket) {
            connection = nil
            isConnecting = false
            let partner = channel == .data ? current.meta : current.data
            emit(.close(partner, reason: "the \(channel) socket ended: \(reason)"))
            emit(.lost(reason: reason))
        } else if let attempt = outgoing, attempt.channel(of: socket) != nil {
            abandonOutgoing(reason: "a socket closed: \(reason)", level: .debug, except: socket)
        } else {
            incoming[socket] = nil
        }
        return takeActions()
    }

    // MARK: The hello exchange

    private mutating func offerReceived(_ socket: SocketID, _ offer: ChannelHello, now: MonotonicInstant) {
        func refuse(_ reason: String, _ level: LogLevel = .debug) {
            incoming[socket] = nil
            lastRefusedAttempt = (offer.sessionNonce, offer.attempt)
            if level == .notice { emit(.log(.notice, "refused an incoming \(offer.channel) socket: \(reason)")) }
            emit(.close(socket, reason: reason))
        }
        guard offer.role == .offer else { return refuse("its first hello is an accept, not an offer", .notice) }
        guard offer.resourceName == settings.resourceName else {
            return refuse(
                "it is for resource '\(offer.resourceName)', this is '\(settings.resourceName)'", .notice)
        }
        guard offer.sessionNonce != settings.sessionNonce else {
            return refuse("it comes from this node itself: the peer address leads back here", .notice)
        }
        if let refused = lastRefusedAttempt, refused == (offer.sessionNonce, offer.attempt) {
            return refuse("attempt \(offer.attempt) is already given up: one of its sockets was refused")
        }
        guard isConnecting else { return refuse("not connecting") }
        guard connection == nil else { return refuse("already connected") }
        if let attempt = outgoing {
            if attempt.hasConnectedSocket && settings.sessionNonce > offer.sessionNonce {
                return refuse("connection race: this node's attempt wins (higher session nonce)")
            }
            abandonOutgoing(reason: "connection race: the peer's attempt wins", level: .debug)
        }
        for (other, entry) in incoming.sorted(by: { $0.key < $1.key }) {
            guard let earlier = entry.offer else { continue }
            if earlier.sessionNonce == offer.sessionNonce && earlier.attempt == offer.attempt {
                if earlier.channel == offer.channel {
                    return refuse("a second \(offer.channel) socket for attempt \(offer.attempt)", .notice)
                }
            } else if earlier.sessionNonce == offer.sessionNonce && earlier.attempt > offer.attempt {
                return refuse("attempt \(offer.attempt) is older than attempt \(earlier.attempt)")
            } else {
                incoming[other] = nil
                emit(.close(other, reason: "superseded by attempt \(offer.attempt) of the peer"))
            }
        }
        incoming[socket] = IncomingSocket(acceptedAt: incoming[socket]!.acceptedAt, offer: offer)
        emit(.sendHello(socket, hello(channel: offer.channel, role: .accept, attempt: offer.attempt)))

        let partnerChannel: PacketChannel = offer.channel == .data ? .meta : .data
        guard
            let partner = incoming.first(where: {
                $0.value.offer?.channel == partnerChannel && $0.value.offer?.sessionNonce == offer.sessionNonce
                    && $0.value.offer?.attempt == offer.attempt
            })?.key
        else { return }
        incoming[socket] = nil
        incoming[partner] = nil
        let (data, meta) = offer.channel == .data ? (socket, partner) : (partner, socket)
        establish(
            Connection(
                data: data, meta: meta, peerNonce: offer.sessionNonce, attempt: offer.attempt,
                initiatedLocally: false))
    }

    private mutating func acceptReceived(
        _ socket: SocketID, channel: PacketChannel, _ reply: ChannelHello, now: MonotonicInstant
    ) {
        guard var attempt = outgoing else { return }
        let problem: String? =
            if reply.role != .accept {
                "the reply is an offer, not an accept"
            } else if reply.channel != channel {
                "the reply is for the \(reply.channel) channel on the \(channel) socket"
            } else if reply.attempt != attempt.attempt {
                "the reply is for attempt \(reply.attempt), not \(attempt.attempt)"
            } else if reply.resourceName != settings.resourceName {
                "the peer answered for resource '\(reply.resourceName)', this is '\(settings.resourceName)'"
            } else if reply.sessionNonce == settings.sessionNonce {
                "the reply comes from this node itself: the peer address leads back here"
            } else {
                nil
            }
        if let problem { return abandonOutgoing(reason: problem, level: .notice) }
        attempt.sockets[channel]!.state = .accepted(peerNonce: reply.sessionNonce)
        outgoing = attempt
        guard case .accepted(let dataNonce) = attempt.sockets[.data]!.state,
            case .accepted(let metaNonce) = attempt.sockets[.meta]!.state
        else { return }
        guard dataNonce == metaNonce else {
            return abandonOutgoing(reason: "the two sockets were accepted by different peer sessions", level: .notice)
        }
        outgoing = nil
        establish(
            Connection(
                data: attempt.sockets[.data]!.id, meta: attempt.sockets[.meta]!.id, peerNonce: dataNonce,
                attempt: attempt.attempt, initiatedLocally: true))
    }

    private mutating func establish(_ established: Connection) {
        precondition(connection == nil, "establishing \(established) while \(String(describing: connection)) stands")
        connection = established
        abandonOutgoing(reason: "a connection was established", level: .debug)
        closeAllIncoming(reason: "a connection was established")
        emit(.established(established))
    }

    // MARK: Helpers

    private mutating func startAttemptIfDue(now: MonotonicInstant) {
        guard isConnecting, connection == nil, outgoing == nil else { return }
        // An offer from the peer already accepted is a pair in the making: do not compete with it.
        guard !incoming.values.contains(where: { $0.offer != nil }) else { return }
        if let last = lastAttemptStartedAt, now - last < settings.connectInterval { return }
        let attempt = nextAttempt
        nextAttempt &+= 1
        lastAttemptStartedAt = now
        let data = allocateSocketID()
        let meta = allocateSocketID()
        outgoing = OutgoingAttempt(
            attempt: attempt, startedAt: now, sockets: [.data: (data, .connecting), .meta: (meta, .connecting)])
        emit(.connect(data, .data))
        emit(.connect(meta, .meta))
    }

    private mutating func abandonOutgoing(reason: String, level: LogLevel, except closed: SocketID? = nil) {
        guard let attempt = outgoing else { return }
        outgoing = nil
        if level == .notice { emit(.log(.notice, "gave up connection attempt \(attempt.attempt): \(reason)")) }
        for channel in [PacketChannel.data, .meta] {
            guard let socket = attempt.sockets[channel]?.id, socket != closed else { continue }
            emit(.close(socket, reason: "attempt \(attempt.attempt) abandoned: \(reason)"))
        }
    }

    private mutating func closeAllIncoming(reason: String) {
        for socket in incoming.keys.sorted() { emit(.close(socket, reason: reason)) }
        incoming.removeAll()
    }

    private func hello(channel: PacketChannel, role: ChannelHello.Role, attempt: UInt32) -> ChannelHello {
        ChannelHello(
            channel: channel, role: role, sessionNonce: settings.sessionNonce, attempt: attempt,
            resourceName: settings.resourceName)
    }

    private mutating func allocateSocketID() -> SocketID {
        defer { nextSocketID += 1 }
        return SocketID(nextSocketID)
    }

    private mutating func emit(_ action: Action) { actions.append(action) }

    private mutating func takeActions() -> [Action] {
        defer { actions.removeAll(keepingCapacity: true) }
        return actions
    }
}
