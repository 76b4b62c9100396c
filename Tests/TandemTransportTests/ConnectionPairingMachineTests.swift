import ReplicationCore
import Testing

@testable import TandemTransport

typealias Machine = ConnectionPairingMachine
typealias SocketID = ConnectionPairingMachine.SocketID

private let interval = Duration.milliseconds(100)
private let helloTimeout = Duration.seconds(1)

private func machine(nonce: UInt64, resource: String = "r0", halfOpen: Int = 8) -> Machine {
    Machine(
        settings: .init(
            resourceName: resource, sessionNonce: nonce, connectInterval: interval, helloTimeout: helloTimeout,
            halfOpenSocketsMax: halfOpen))
}

private func at(_ milliseconds: Int64) -> MonotonicInstant { MonotonicInstant(nanoseconds: milliseconds * 1_000_000) }

private func offer(_ channel: PacketChannel, nonce: UInt64 = 7, attempt: UInt32 = 1, resource: String = "r0")
    -> ChannelHello
{
    ChannelHello(channel: channel, role: .offer, sessionNonce: nonce, attempt: attempt, resourceName: resource)
}

private func accept(_ channel: PacketChannel, nonce: UInt64 = 7, attempt: UInt32 = 1, resource: String = "r0")
    -> ChannelHello
{
    ChannelHello(channel: channel, role: .accept, sessionNonce: nonce, attempt: attempt, resourceName: resource)
}

extension [Machine.Action] {
    var connects: [(SocketID, PacketChannel)] {
        compactMap { if case .connect(let socket, let channel) = $0 { (socket, channel) } else { nil } }
    }
    var closed: [SocketID] { compactMap { if case .close(let socket, _) = $0 { socket } else { nil } } }
    var hellos: [(SocketID, ChannelHello)] {
        compactMap { if case .sendHello(let socket, let hello) = $0 { (socket, hello) } else { nil } }
    }
    var established: Machine.Connection? {
        compactMap { if case .established(let connection) = $0 { connection } else { nil } }.first
    }
    var lost: [String] { compactMap { if case .lost(let reason) = $0 { reason } else { nil } } }
    var notices: [String] { compactMap { if case .log(.notice, let message) = $0 { message } else { nil } } }
    func closeReason(_ socket: SocketID) -> String? {
        compactMap { if case .close(socket, let reason) = $0 { reason } else { nil } }.first
    }
}

@Suite("Connection pairing: one node")
struct ConnectionPairingMachineTests {
    /// Starts connecting and returns the data and meta sockets of the first attempt.
    private func startAttempt(_ m: inout Machine, at time: MonotonicInstant = at(0)) -> (SocketID, SocketID) {
        let connects = m.startConnecting(now: time).connects
        #expect(connects.map(\.1) == [.data, .meta])
        return (connects[0].0, connects[1].0)
    }

    /// Accepts a socket from the peer and feeds it `hello`.
    private func acceptSocket(_ m: inout Machine, _ hello: ChannelHello, at time: MonotonicInstant = at(1))
        -> (SocketID, [Machine.Action])
    {
        let (socket, actions) = m.socketAccepted(fromPeerHost: true, remote: "127.0.0.1:5000", now: time)
        #expect(actions.isEmpty)
        return (socket, m.helloReceived(socket, hello, now: time))
    }

    @Test("Connecting side: both connects, both offers, both accepts make one connection")
    func connectingSide() {
        var m = machine(nonce: 5)
        let (data, meta) = startAttempt(&m)
        let dataHello = m.outgoingConnected(data, now: at(1)).hellos
        #expect(dataHello.map(\.1) == [ChannelHello(channel: .data, role: .offer, sessionNonce: 5, attempt: 1, resourceName: "r0")])
        #expect(m.outgoingConnected(meta, now: at(1)).hellos.count == 1)
        #expect(m.helloReceived(data, accept(.data), now: at(2)).isEmpty)
        let connection = m.helloReceived(meta, accept(.meta), now: at(2)).established
        #expect(connection == Machine.Connection(data: data, meta: meta, peerNonce: 7, attempt: 1, initiatedLocally: true))
        #expect(m.connection == connection)
        #expect(!m.isAttemptInProgress)
    }

    @Test("Listening side: offers for data and meta are accepted and paired")
    func listeningSide() {
        var m = machine(nonce: 5)
        _ = m.startConnecting(now: at(0))
        _ = m.outgoingFailed(SocketID(1), reason: "refused", now: at(0))
        let (meta, metaActions) = acceptSocket(&m, offer(.meta))
        #expect(metaActions.hellos.map(\.1) == [accept(.meta, nonce: 5)])
        #expect(metaActions.established == nil)
        let (data, dataActions) = acceptSocket(&m, offer(.data))
        #expect(dataActions.hellos.map(\.1) == [accept(.data, nonce: 5)])
        #expect(dataActions.established == Machine.Connection(data: data, meta: meta, peerNonce: 7, attempt: 1, initiatedLocally: false))
        #expect(m.halfOpenSocketCount == 0)
    }

    @Test("Race: an offer from a lower nonce is refused while this node's offer is on its way")
    func raceWonByHigherNonce() {
        var m = machine(nonce: 9)
        let (data, _) = startAttempt(&m)
        _ = m.outgoingConnected(data, now: at(1))
        let (incoming, actions) = acceptSocket(&m, offer(.data, nonce: 3))
        #expect(actions.closeReason(incoming)?.contains("this node's attempt wins") == true)
        #expect(actions.hellos.isEmpty)
        #expect(m.isAttemptInProgress)
    }

    @Test("Race: an offer from a higher nonce wins; this node abandons its own attempt")
    func raceLostToHigherNonce() {
        var m = machine(nonce: 3)
        let (data, meta) = startAttempt(&m)
        _ = m.outgoingConnected(data, now: at(1))
        let (_, actions) = acceptSocket(&m, offer(.data, nonce: 9))
        #expect(Set(actions.closed) == [data, meta])
        #expect(actions.hellos.map(\.1) == [accept(.data, nonce: 3, attempt: 1)])
        #expect(!m.isAttemptInProgress)
        let (_, metaActions) = acceptSocket(&m, offer(.meta, nonce: 9))
        #expect(metaActions.established?.initiatedLocally == false)
    }

    @Test("Race: while this node's sockets are still connecting, the peer's attempt is taken whatever the nonces")
    func stillConnectingGivesWay() {
        var m = machine(nonce: 9)
        let (data, meta) = startAttempt(&m)
        let (_, actions) = acceptSocket(&m, offer(.data, nonce: 3))
        #expect(Set(actions.closed) == [data, meta])
        #expect(actions.hellos.count == 1)
        // The abandoned connect completes later: the socket is closed at once.
        #expect(m.outgoingConnected(data, now: at(2)).closed == [data])
    }

    @Test("A socket of an attempt already refused is refused too, and this node keeps its own attempt")
    func refusedAttemptStaysRefused() {
        var m = machine(nonce: 9)
        // The peer's data socket arrives before this node connects: refused, so the peer gives the attempt up.
        let (early, refusal) = acceptSocket(&m, offer(.data, nonce: 3, attempt: 4), at: at(0))
        #expect(refusal.closeReason(early) == "not connecting")
        let (data, meta) = startAttempt(&m, at: at(1))
        // Its meta socket, of the same (dead) attempt, arrives while this node's sockets still connect.
        let (late, actions) = acceptSocket(&m, offer(.meta, nonce: 3, attempt: 4), at: at(2))
        #expect(actions.closeReason(late)?.contains("attempt 4 is already given up") == true)
        #expect(!actions.closed.contains(data) && !actions.closed.contains(meta), "this node's attempt stands")
        #expect(actions.hellos.isEmpty)
        #expect(m.isAttemptInProgress)
        // The peer's next attempt is taken as usual (this node's sockets are still connecting).
        let (_, next) = acceptSocket(&m, offer(.data, nonce: 3, attempt: 5), at: at(3))
        #expect(next.hellos.map(\.1) == [accept(.data, nonce: 9, attempt: 5)])
    }

    @Test("A hello for another resource is refused and logged")
    func wrongResource() {
        var m = machine(nonce: 5)
        _ = m.startConnecting(now: at(0))
        let (socket, actions) = acceptSocket(&m, offer(.data, resource: "r1"))
        #expect(actions.closed == [socket])
        #expect(actions.notices.first?.contains("it is for resource 'r1', this is 'r0'") == true)
    }

    @Test("A hello of another version is refused and logged")
    func badVersion() {
        var m = machine(nonce: 5)
        _ = m.startConnecting(now: at(0))
        let (socket, _) = m.socketAccepted(fromPeerHost: true, remote: "peer", now: at(1))
        let error = ChannelHelloError(.unsupportedVersion, "hello version 2; this node speaks version 1")
        let actions = m.helloRefused(socket, error, now: at(1))
        #expect(actions.closed == [socket])
        #expect(actions.notices == ["refused an incoming socket: unsupported hello version: hello version 2; this node speaks version 1"])
        #expect(m.halfOpenSocketCount == 0)
    }

    @Test("A node whose peer address leads back to itself refuses its own offer and says so")
    func connectedToItself() {
        var m = machine(nonce: 5)
        let (data, _) = startAttempt(&m)
        let offered = m.outgoingConnected(data, now: at(1)).hellos[0].1
        let (socket, actions) = acceptSocket(&m, offered)
        #expect(actions.closed == [socket])
        #expect(actions.notices.first?.contains("the peer address leads back here") == true)
    }

    @Test("Sockets beyond the half-open limit and from other hosts are closed at once")
    func limits() {
        var m = machine(nonce: 5, halfOpen: 2)
        _ = m.startConnecting(now: at(0))
        _ = m.socketAccepted(fromPeerHost: true, remote: "a", now: at(1))
        _ = m.socketAccepted(fromPeerHost: true, remote: "b", now: at(1))
        let (third, actions) = m.socketAccepted(fromPeerHost: true, remote: "c", now: at(1))
        #expect(actions.closed == [third])
        #expect(actions.notices == ["refused a connection from c: 2 half-open sockets already"])
        let (stranger, strangerActions) = m.socketAccepted(fromPeerHost: false, remote: "10.9.9.9:1", now: at(1))
        #expect(strangerActions.closed == [stranger])
        #expect(m.halfOpenSocketCount == 2)
    }

    @Test("A socket that sends no hello, or whose partner never comes, is closed after the hello timeout")
    func helloTimeout() {
        var m = machine(nonce: 5)
        _ = m.startConnecting(now: at(0))
        _ = m.outgoingFailed(SocketID(1), reason: "refused", now: at(0))
        let (silent, _) = m.socketAccepted(fromPeerHost: true, remote: "a", now: at(10))
        let (lonely, _) = acceptSocket(&m, offer(.data), at: at(20))
        #expect(m.tick(now: at(1010)).closed.isEmpty)
        let first = m.tick(now: at(1011))
        #expect(first.closeReason(silent) == "no hello within 1.0 seconds")
        let second = m.tick(now: at(1021))
        #expect(second.closeReason(lonely) == "its partner socket did not arrive within 1.0 seconds")
        #expect(m.halfOpenSocketCount == 0)
    }

    @Test("Attempts start at most once per connect-int, and an attempt not accepted in time is abandoned")
    func pacing() {
        var m = machine(nonce: 5)
        let (data, meta) = startAttempt(&m)
        #expect(m.outgoingFailed(data, reason: "connection refused", now: at(1)).closed == [meta])
        #expect(m.tick(now: at(99)).connects.isEmpty)
        let second = m.tick(now: at(100)).connects
        #expect(second.count == 2)
        _ = m.outgoingConnected(second[0].0, now: at(101))
        // Connected but never answered: given up after the hello timeout, retried on the next tick.
        #expect(m.tick(now: at(1100)).connects.isEmpty)
        let timedOut = m.tick(now: at(1101))
        #expect(Set(timedOut.closed) == [second[0].0, second[1].0])
        #expect(timedOut.connects.count == 2)
    }

    @Test("Not connecting: offers are refused once read; stopConnecting abandons the attempt and closes pending sockets")
    func notConnecting() {
        var m = machine(nonce: 5)
        let (early, actions) = acceptSocket(&m, offer(.data), at: at(0))
        #expect(actions.closeReason(early) == "not connecting")
        let (data, meta) = startAttempt(&m, at: at(1))
        let (pending, _) = m.socketAccepted(fromPeerHost: true, remote: "a", now: at(2))
        let stopped = m.stopConnecting(now: at(3))
        #expect(Set(stopped.closed) == [data, meta, pending])
        #expect(m.tick(now: at(1000)).isEmpty)
    }

    @Test("Established: the end of a socket closes its partner, reports the loss once, and disarms connecting")
    func lostConnection() {
        var m = machine(nonce: 5)
        _ = m.startConnecting(now: at(0))
        _ = m.outgoingFailed(SocketID(1), reason: "refused", now: at(0))
        let (meta, _) = acceptSocket(&m, offer(.meta))
        let (data, _) = acceptSocket(&m, offer(.data))
        let (extra, extraActions) = m.socketAccepted(fromPeerHost: true, remote: "a", now: at(2))
        #expect(extraActions.closeReason(extra) == "already connected")
        let actions = m.socketClosed(meta, reason: "connection reset by peer", now: at(3))
        #expect(actions.closed == [data])
        #expect(actions.lost == ["connection reset by peer"])
        #expect(m.socketClosed(data, reason: "closed", now: at(3)).isEmpty)
        #expect(m.connection == nil && !m.isConnecting)
        #expect(m.tick(now: at(10_000)).isEmpty)
        #expect(m.startConnecting(now: at(10_001)).connects.count == 2)
    }

    @Test("The node's own drop closes both sockets without a loss report")
    func droppedByTheNode() {
        var m = machine(nonce: 5)
        let (data, meta) = startAttempt(&m)
        _ = m.outgoingConnected(data, now: at(1))
        _ = m.outgoingConnected(meta, now: at(1))
        _ = m.helloReceived(data, accept(.data), now: at(2))
        #expect(m.helloReceived(meta, accept(.meta), now: at(2)).established != nil)
        let actions = m.dropConnection(reason: "protocol error", now: at(3))
        #expect(Set(actions.closed) == [data, meta])
        #expect(actions.lost.isEmpty)
        #expect(m.socketClosed(data, reason: "closed", now: at(3)).isEmpty)
        #expect(m.dropConnection(reason: "again", now: at(4)).isEmpty)
    }

    @Test("Duplicate and superseded offers: a second data socket is refused, an older attempt gives way")
    func duplicatesAndStaleAttempts() {
        var m = machine(nonce: 5)
        _ = m.startConnecting(now: at(0))
        _ = m.outgoingFailed(SocketID(1), reason: "refused", now: at(0))
        let (first, _) = acceptSocket(&m, offer(.data, attempt: 1))
        let (duplicate, duplicateActions) = acceptSocket(&m, offer(.data, attempt: 1))
        #expect(duplicateActions.closed == [duplicate])
        let (newer, newerActions) = acceptSocket(&m, offer(.data, attempt: 2))
        #expect(newerActions.closeReason(first) == "superseded by attempt 2 of the peer")
        let (older, olderActions) = acceptSocket(&m, offer(.meta, attempt: 1))
        #expect(olderActions.closed == [older])
        let (meta, metaActions) = acceptSocket(&m, offer(.meta, attempt: 2))
        #expect(metaActions.established == Machine.Connection(data: newer, meta: meta, peerNonce: 7, attempt: 2, initiatedLocally: false))
    }

    @Test("A reply that does not fit the attempt makes the node give the attempt up, with a logged reason")
    func badReplies() {
        let replies: [(ChannelHello, String)] = [
            (accept(.data, attempt: 2), "the reply is for attempt 2, not 1"),
            (accept(.meta), "the reply is for the meta channel on the data socket"),
            (offer(.data), "the reply is an offer, not an accept"),
            (accept(.data, resource: "r9"), "the peer answered for resource 'r9'"),
        ]
        for (reply, reason) in replies {
            var m = machine(nonce: 5)
            let (data, meta) = startAttempt(&m)
            _ = m.outgoingConnected(data, now: at(1))
            let actions = m.helloReceived(data, reply, now: at(2))
            #expect(Set(actions.closed) == [data, meta], "\(reason)")
            #expect(actions.notices.first?.contains(reason) == true, "\(actions.notices)")
            #expect(!m.isAttemptInProgress)
        }
    }

    @Test("Accepts from two different peer sessions do not make a connection")
    func acceptsFromTwoSessions() {
        var m = machine(nonce: 5)
        let (data, meta) = startAttempt(&m)
        _ = m.outgoingConnected(data, now: at(1))
        _ = m.outgoingConnected(meta, now: at(1))
        _ = m.helloReceived(data, accept(.data, nonce: 7), now: at(2))
        let actions = m.helloReceived(meta, accept(.meta, nonce: 8), now: at(2))
        #expect(actions.established == nil)
        #expect(Set(actions.closed) == [data, meta])
    }

    @Test("An accepted offer from the peer holds back this node's next attempt")
    func pendingIncomingHoldsBackAttempts() {
        var m = machine(nonce: 5)
        _ = m.startConnecting(now: at(0))
        _ = m.outgoingFailed(SocketID(1), reason: "refused", now: at(0))
        _ = acceptSocket(&m, offer(.data), at: at(150))
        #expect(m.tick(now: at(200)).connects.isEmpty)
    }
}
