import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ReplicationCore
import TandemTestSupport
import Testing

@testable import TandemTransport

private func dataPacket(_ index: Int, bytes: Int = 4096) -> Packet {
    .data(
        DataPacket(
            range: BlockRange(sector: UInt64(index) * 8, sizeBytes: UInt32(bytes)), requestID: UInt64(index),
            epoch: 1, flags: [.sendWriteAck], payload: [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: bytes)))
}

private func ack(_ index: Int) -> Packet {
    .writeAck(BlockAck(range: BlockRange(sector: UInt64(index) * 8, sizeBytes: 4096), requestID: UInt64(index)))
}

@Suite("TCP replication transport over loopback", .serialized, .timeLimit(.minutes(2)))
struct TCPReplicationTransportTests {
    @Test("Two transports connect and both report transportConnected with a fresh 64-byte challenge")
    func connects() async throws {
        try await withPair { a, b, _ in
            await connect(a, b)
            let challenges = [a, b].compactMap { node in
                node.recorded.compactMap { if case .transportConnected(let challenge) = $0 { challenge } else { nil } }
                    .first
            }
            #expect(challenges.count == 2)
            #expect(challenges.allSatisfy { $0.count == 64 })
            #expect(challenges[0] != challenges[1])
            #expect(a.lostReasons.isEmpty && b.lostReasons.isEmpty)
        }
    }

    @Test("Packets on both channels arrive in order, in both directions, large and small")
    func packetsInOrder() async throws {
        try await withPair { a, b, _ in
            await connect(a, b)
            let count = 300
            var sentData: [Packet] = []
            var sentMeta: [Packet] = []
            for index in 0..<count {
                let data = dataPacket(index, bytes: index % 50 == 0 ? PacketCodec.maximumBlockBytes : 4096)
                sentData.append(data)
                sentMeta.append(ack(index))
                a.transport.send(data)
                a.transport.send(ack(index))
                b.transport.send(.barrier(epoch: UInt32(index)))
                b.transport.send(.barrierAck(epoch: UInt32(index), writeCount: 1))
            }
            #expect(await eventually { b.packets(on: .data).count == count && b.packets(on: .meta).count == count })
            #expect(b.packets(on: .data) == sentData)
            #expect(b.packets(on: .meta) == sentMeta)
            #expect(await eventually { a.packets(on: .data).count == count && a.packets(on: .meta).count == count })
            #expect(a.packets(on: .data) == (0..<count).map { .barrier(epoch: UInt32($0)) })
            #expect(a.packets(on: .meta) == (0..<count).map { .barrierAck(epoch: UInt32($0), writeCount: 1) })
        }
    }

    @Test("dropConnection: the peer hears exactly one transportLost, the dropper none; both reconnect")
    func dropAndReconnect() async throws {
        try await withPair { a, b, _ in
            await connect(a, b)
            a.transport.dropConnection(reason: "protocol error: test")
            a.transport.send(.ping)  // after the drop: must go nowhere
            a.transport.startConnecting()  // the replication machine re-arms once it has dropped
            #expect(await eventually { a.connectedCount == 2 && b.connectedCount == 2 }, "a: \(a.logs) b: \(b.logs)")
            #expect(a.lostReasons.isEmpty)
            #expect(b.lostReasons.count == 1)
            // The new connection works, and nothing of the old one reaches it.
            b.transport.send(.ping)
            a.transport.send(.pingAck)
            #expect(await eventually { a.packetsOfCurrentConnection == [.ping] && b.packetsOfCurrentConnection == [.pingAck] })
            try await Task.sleep(for: .milliseconds(300))
            #expect(a.connectedCount == 2 && b.connectedCount == 2)
            #expect(a.lostReasons.isEmpty && b.lostReasons.count == 1)
        }
    }

    @Test("Both nodes start connecting at the same moment: they end with exactly one connection", arguments: 0..<5)
    func simultaneousConnect(round: Int) async throws {
        try await withPair { a, b, _ in
            a.transport.startConnecting()
            b.transport.startConnecting()
            func standing(_ node: TestNode) -> Int { node.connectedCount - node.lostReasons.count }
            #expect(await eventually { standing(a) == 1 && standing(b) == 1 }, "a: \(a.logs) b: \(b.logs)")
            // Let several connect-ints pass: a second pair or a torn-down first one would show up here.
            try await Task.sleep(for: .milliseconds(500))
            #expect(standing(a) == 1 && standing(b) == 1, "a: \(a.logs) b: \(b.logs)")
            // Exactly one connection, and none lost: also when one node's first socket reaches the other before that
            // one has started connecting (refused "not connecting", and the rest of that attempt with it).
            #expect(a.connectedCount == 1 && b.connectedCount == 1, "a: \(a.logs) b: \(b.logs)")
            #expect(a.lostReasons.isEmpty && b.lostReasons.isEmpty, "a: \(a.logs) b: \(b.logs)")
            a.transport.send(.ping)
            b.transport.send(.ping)
            #expect(await eventually { a.packetsOfCurrentConnection == [.ping] && b.packetsOfCurrentConnection == [.ping] })
        }
    }

    @Test("A connection made while the dropped one's receiver is still busy is announced only once that one has ended, so no packet of the old one can follow the new transportConnected")
    func newConnectionWaitsForTheOldOne() async throws {
        try await withPair { a, b, _ in
            await connect(a, b)
            a.holdNextPacket()
            b.transport.send(.ping)
            #expect(await eventually { a.isHoldingPacket })
            // Both drop (as both do on a split brain) and connect again, while a's old receiver is still busy.
            a.transport.dropConnection(reason: "test")
            b.transport.dropConnection(reason: "test")
            a.transport.startConnecting()
            b.transport.startConnecting()
            #expect(await eventually { b.connectedCount == 2 }, "a: \(a.logs) b: \(b.logs)")
            #expect(a.connectedCount == 1, "a holds the new connection back while the old one's receiver is busy")

            a.releaseHeldPacket()
            #expect(await eventually { a.connectedCount == 2 }, "a: \(a.logs)")
            b.transport.send(.pingAck)
            #expect(await eventually { a.packetsOfCurrentConnection == [.pingAck] }, "\(a.packetsOfCurrentConnection)")
            #expect(a.lostReasons.isEmpty && b.lostReasons.isEmpty)
        }
    }

    @Test("max-buffers back-pressure: a paused receiver holds data packets while meta packets still flow")
    func receivingPaused() async throws {
        try await withPair { a, b, _ in
            await connect(a, b)
            b.transport.setReceivingPaused(true)
            _ = await b.transport.listeningAddress()  // a round trip through B's event loop: the pause is in force
            a.transport.send(.ping)
            #expect(await eventually { b.packets(on: .meta).count == 1 })
            for index in 0..<20 { a.transport.send(dataPacket(index)) }
            a.transport.send(.pingAck)
            #expect(await eventually { b.packets(on: .meta).count == 2 })
            try await Task.sleep(for: .milliseconds(200))
            #expect(b.packets(on: .data).isEmpty)
            b.transport.setReceivingPaused(false)
            #expect(await eventually { b.packets(on: .data).count == 20 })
            #expect(b.packets(on: .data) == (0..<20).map { dataPacket($0) })
        }
    }

    @Test("A peer that stops reading: the sender gives the connection up once its send queue passes the limit")
    func sendQueueOverflow() async throws {
        try await withPair(configure: {
            $0.sendQueueBytesMax = 4 << 20
            $0.sendBufferBytes = 64 << 10
            $0.receiveBufferBytes = 64 << 10
        }) { a, b, _ in
            await connect(a, b)
            b.transport.setReceivingPaused(true)
            _ = await b.transport.listeningAddress()  // the pause is in force
            // 8 MiB: more than the queue limit plus what the small socket buffers hold.
            for index in 0..<256 { a.transport.send(dataPacket(index, bytes: 32 << 10)) }
            #expect(await eventually { a.lostReasons == ["send queue over its limit"] }, "\(a.logs)")
            #expect(await eventually { b.lostReasons.count == 1 })
            #expect(a.logs.contains { $0.contains("the peer is not reading") })
        }
    }

    @Test("startConnecting before start is remembered: the node connects once the listener is bound")
    func startConnectingBeforeStart() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let ports = try freeLoopbackPorts(2)
        let a = TestNode(name: "a")
        let b = TestNode(name: "b")
        let transports = [
            try makeTransport(a, configuration(local: ports[0], peer: ports[1]), group: group),
            try makeTransport(b, configuration(local: ports[1], peer: ports[0]), group: group),
        ]
        for transport in transports { transport.startConnecting() }
        for transport in transports { try await transport.start() }
        #expect(await eventually { a.connectedCount == 1 && b.connectedCount == 1 })
        for transport in transports { await transport.shutdown() }
        try await group.shutdownGracefully()
    }

    @Test("The peer-host check treats an IPv4-mapped IPv6 address as the IPv4 address")
    func sameHost() {
        #expect(TransportCore.sameHost("10.1.1.31", "10.1.1.31"))
        #expect(TransportCore.sameHost("::FFFF:10.1.1.31", "10.1.1.31"))
        #expect(TransportCore.sameHost("fe80::1", "FE80::1"))
        #expect(!TransportCore.sameHost("10.1.1.32", "10.1.1.31"))
        #expect(!TransportCore.sameHost("::ffff:10.1.1.32", "10.1.1.31"))
        #expect(!TransportCore.sameHost(nil, "10.1.1.31"))
    }

    @Test("stopConnecting stops the retries")
    func stopConnectingStopsRetries() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let node = TestNode(name: "a")
        let ports = try freeLoopbackPorts(1)
        // A peer that accepts and closes at once, counting attempts.
        let accepted = NIOLockedValueBoxCounter()
        let peer = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                accepted.increment()
                return channel.close()
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let transport = try makeTransport(
            node, configuration(local: ports[0], peer: UInt16(peer.localAddress!.port!)), group: group)
        try await transport.start()
        transport.startConnecting()
        #expect(await eventually { accepted.value >= 6 })
        transport.stopConnecting()
        _ = await transport.listeningAddress()  // a round trip through the event loop: the stop has been processed
        try await Task.sleep(for: .milliseconds(300))  // a connect already on its way may still land
        let afterStop = accepted.value
        try await Task.sleep(for: .milliseconds(600))
        #expect(accepted.value == afterStop)
        #expect(node.connectedCount == 0)
        await transport.shutdown()
        try await peer.close()
        try await group.shutdownGracefully()
    }

    @Test("Bind failures say what is wrong: address in use, address not local, not an IP address, bad limits")
    func bindFailures() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let ports = try freeLoopbackPorts(2)
        let first = try makeTransport(TestNode(name: "first"), configuration(local: ports[0], peer: ports[1]), group: group)
        try await first.start()
        let second = try makeTransport(TestNode(name: "second"), configuration(local: ports[0], peer: ports[1]), group: group)
        await #expect(throws: TransportError.self) { try await second.start() }
        do {
            try await second.start()
        } catch {
            #expect(error.code == .invalidState || error.code == .addressInUse)
        }
        let third = try makeTransport(TestNode(name: "third"), configuration(local: ports[0], peer: ports[1]), group: group)
        do {
            try await third.start()
            Issue.record("binding a port in use succeeded")
        } catch {
            #expect(error.code == .addressInUse)
            #expect(error.description.contains("127.0.0.1:\(ports[0]) is already in use"))
        }
        // 192.0.2.1 (TEST-NET-1) is never an address of this machine; binding sends nothing anywhere.
        var foreign = configuration(local: 0, peer: ports[1])
        foreign.localAddress = ReplicationEndpoint(host: "192.0.2.1", port: 7789)
        let fourth = try makeTransport(TestNode(name: "fourth"), foreign, group: group)
        do {
            try await fourth.start()
            Issue.record("binding a foreign address succeeded")
        } catch {
            #expect(error.code == .addressNotAvailable)
        }
        var named = configuration(local: 0, peer: ports[1])
        named.peerAddress = ReplicationEndpoint(host: "node2.example", port: 7789)
        #expect { try makeTransport(TestNode(name: "named"), named, group: group) } throws: { error in
            (error as? TransportError)?.code == .invalidAddress
        }
        var tooLong = configuration(local: 0, peer: ports[1], resource: String(repeating: "r", count: 65))
        tooLong.connectInterval = .seconds(1)
        #expect { try makeTransport(TestNode(name: "long"), tooLong, group: group) } throws: { error in
            (error as? TransportError)?.code == .invalidConfiguration
        }
        for transport in [first, second, third, fourth] { await transport.shutdown() }
        try await group.shutdownGracefully()
    }
}

/// A thread-safe counter for NIO callbacks.
final class NIOLockedValueBoxCounter: Sendable {
    private let box = NIOLockedValueBox(0)
    func increment() { box.withLockedValue { $0 += 1 } }
    var value: Int { box.withLockedValue { $0 } }
}
