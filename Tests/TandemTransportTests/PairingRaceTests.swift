import ReplicationCore
import Testing

@testable import TandemTransport

/// Two pairing machines wired by a tiny simulated TCP: connects are accepted by the other machine, bytes on a socket
/// arrive in order, and everything else is interleaved by a seeded generator. Checks that however the events
/// interleave, both nodes end with the same single pair.
private struct TwoNodes {
    struct End: Hashable {
        var node: Int
        var socket: SocketID
    }

    enum Message {
        case tcpConnect(from: End, channel: PacketChannel)
        case connected(End)
        case hello(to: End, ChannelHello)
        case closed(to: End)

        var destination: End? {
            switch self {
            case .tcpConnect: nil
            case .connected(let end), .hello(let end, _), .closed(let end): end
            }
        }
    }

    var machines: [Machine]
    var random: SplitMix64
    var now = MonotonicInstant(nanoseconds: 0)
    var queue: [Message] = []
    var links: [End: End] = [:]
    var open: Set<End> = []
    var connections: [Machine.Connection?] = [nil, nil]
    var establishedCount = [0, 0]
    var lostCount = [0, 0]

    init(nonces: (UInt64, UInt64), seed: UInt64) {
        func make(_ nonce: UInt64) -> Machine {
            Machine(
                settings: .init(
                    resourceName: "r0", sessionNonce: nonce, connectInterval: .milliseconds(100),
                    helloTimeout: .seconds(1)))
        }
        machines = [make(nonces.0), make(nonces.1)]
        random = SplitMix64(seed: seed)
    }

    mutating func apply(_ node: Int, _ actions: [Machine.Action]) {
        for action in actions {
            switch action {
            case .connect(let socket, let channel):
                queue.append(.tcpConnect(from: End(node: node, socket: socket), channel: channel))
            case .sendHello(let socket, let hello):
                let end = End(node: node, socket: socket)
                if let other = links[end], open.contains(end) { queue.append(.hello(to: other, hello)) }
            case .close(let socket, _):
                let end = End(node: node, socket: socket)
                guard open.remove(end) != nil else { continue }
                if let other = links[end], open.contains(other) { queue.append(.closed(to: other)) }
            case .established(let connection):
                connections[node] = connection
                establishedCount[node] += 1
            case .lost:
                connections[node] = nil
                lostCount[node] += 1
            case .log:
                break
            }
        }
    }

    /// Delivers one message: a random one among those that are first in line for their socket.
    mutating func step() {
        var seen: Set<End> = []
        var eligible: [Int] = []
        for (index, message) in queue.enumerated() {
            if let destination = message.destination {
                guard seen.insert(destination).inserted else { continue }
            }
            eligible.append(index)
        }
        deliver(at: eligible.randomElement(using: &random)!)
    }

    mutating func deliver(at index: Int) {
        let message = queue.remove(at: index)
        switch message {
        case .tcpConnect(let from, _):
            let listener = 1 - from.node
            let (socket, actions) = machines[listener].socketAccepted(fromPeerHost: true, remote: "peer", now: now)
            let accepted = End(node: listener, socket: socket)
            links[from] = accepted
            links[accepted] = from
            open.insert(from)
            open.insert(accepted)
            apply(listener, actions)
            queue.append(.connected(from))
        case .connected(let end):
            guard open.contains(end) else { return }
            apply(end.node, machines[end.node].outgoingConnected(end.socket, now: now))
        case .hello(let end, let hello):
            guard open.contains(end) else { return }
            apply(end.node, machines[end.node].helloReceived(end.socket, hello, now: now))
        case .closed(let end):
            guard open.remove(end) != nil else { return }
            apply(end.node, machines[end.node].socketClosed(end.socket, reason: "closed by the peer", now: now))
        }
    }

    /// Runs until both nodes are connected and nothing is in flight, advancing time in 10 ms ticks when idle.
    mutating func run(stepsMax: Int = 10_000) {
        for _ in 0..<stepsMax {
            if queue.isEmpty {
                if connections[0] != nil && connections[1] != nil { return }
                now = now + .milliseconds(10)
                for node in 0..<2 { apply(node, machines[node].tick(now: now)) }
                continue
            }
            // Ticks interleave with deliveries, as timers do with socket events.
            if random.next() % 20 == 0 {
                now = now + .milliseconds(1)
                let node = Int(random.next() % 2)
                apply(node, machines[node].tick(now: now))
            }
            step()
        }
    }

    func peer(of end: End) -> End? { links[end] }
}

@Suite("Connection pairing: two nodes connecting at once")
struct PairingRaceTests {
    @Test("Both nodes start together: whatever the interleaving, both keep the same single pair", arguments: 0..<200)
    func simultaneousStart(seed: UInt64) {
        var nodes = TwoNodes(nonces: (1000 + seed, 2000 &* (seed % 3)), seed: seed)
        nodes.apply(0, nodes.machines[0].startConnecting(now: nodes.now))
        nodes.apply(1, nodes.machines[1].startConnecting(now: nodes.now))
        nodes.run()
        guard let a = nodes.connections[0], let b = nodes.connections[1] else {
            Issue.record("not connected after the step limit: \(nodes.connections)")
            return
        }
        #expect(nodes.establishedCount == [1, 1])
        #expect(nodes.lostCount == [0, 0])
        #expect(nodes.peer(of: .init(node: 0, socket: a.data)) == .init(node: 1, socket: b.data))
        #expect(nodes.peer(of: .init(node: 0, socket: a.meta)) == .init(node: 1, socket: b.meta))
        #expect(a.initiatedLocally != b.initiatedLocally)
        #expect(a.attempt == b.attempt)
        // Every other socket is closed on both sides.
        let kept: Set<TwoNodes.End> = [
            .init(node: 0, socket: a.data), .init(node: 0, socket: a.meta),
            .init(node: 1, socket: b.data), .init(node: 1, socket: b.meta),
        ]
        #expect(nodes.open == kept)
        #expect(nodes.machines[0].halfOpenSocketCount == 0 && nodes.machines[1].halfOpenSocketCount == 0)
    }

    @Test("Offers cross on the wire: the node with the higher session nonce keeps its own attempt")
    func crossedOffers() {
        var nodes = TwoNodes(nonces: (10, 20), seed: 1)
        nodes.apply(0, nodes.machines[0].startConnecting(now: nodes.now))
        nodes.apply(1, nodes.machines[1].startConnecting(now: nodes.now))
        // All four TCP connects go through, then both nodes send their offers, before any offer arrives.
        while let index = nodes.queue.firstIndex(where: { if case .tcpConnect = $0 { true } else { false } }) {
            nodes.deliver(at: index)
        }
        while let index = nodes.queue.firstIndex(where: { if case .connected = $0 { true } else { false } }) {
            nodes.deliver(at: index)
        }
        #expect(nodes.queue.count == 4)
        nodes.run()
        #expect(nodes.connections[1]?.initiatedLocally == true)
        #expect(nodes.connections[0]?.initiatedLocally == false)
        #expect(nodes.connections[0]?.peerNonce == 20 && nodes.connections[1]?.peerNonce == 10)
    }

    @Test("One node starts late: it takes the other's attempt, and no connection is made and lost on the way", arguments: 0..<200)
    func staggeredStart(seed: UInt64) {
        // Half the seeds give the late node the lower nonce, so that it loses races to the early node's attempts.
        var nodes = TwoNodes(nonces: seed % 2 == 0 ? (seed &+ 1, ~seed) : (~seed, seed &+ 1), seed: seed)
        nodes.apply(0, nodes.machines[0].startConnecting(now: nodes.now))
        nodes.run(stepsMax: Int(seed / 2 % 7))
        nodes.apply(1, nodes.machines[1].startConnecting(now: nodes.now))
        nodes.run()
        #expect(nodes.connections[0] != nil && nodes.connections[1] != nil)
        #expect(nodes.establishedCount == [1, 1])
        #expect(nodes.lostCount == [0, 0])
        #expect(nodes.open.count == 4)
    }

    @Test("After a loss, both re-arm and reconnect to exactly one new pair", arguments: 0..<50)
    func reconnectAfterLoss(seed: UInt64) {
        var nodes = TwoNodes(nonces: (seed &+ 3, seed &* 7 &+ 11), seed: seed)
        for node in 0..<2 { nodes.apply(node, nodes.machines[node].startConnecting(now: nodes.now)) }
        nodes.run()
        let dropper = Int(seed % 2)
        nodes.apply(dropper, nodes.machines[dropper].dropConnection(reason: "test", now: nodes.now))
        nodes.connections[dropper] = nil
        nodes.apply(dropper, nodes.machines[dropper].startConnecting(now: nodes.now))
        while !nodes.queue.isEmpty { nodes.step() }
        #expect(nodes.lostCount[1 - dropper] == 1 && nodes.lostCount[dropper] == 0)
        // The other node re-arms once it has heard of the loss, as the replication machine does.
        nodes.apply(1 - dropper, nodes.machines[1 - dropper].startConnecting(now: nodes.now))
        nodes.run()
        #expect(nodes.connections[0] != nil && nodes.connections[1] != nil)
        #expect(nodes.establishedCount == [2, 2])
        #expect(nodes.open.count == 4)
    }
}
