import NIOCore
import NIOPosix
import ReplicationCore
import Testing

@testable import TandemTransport

/// One listening transport (its peer is not running) and raw clients that misbehave against it. Afterwards a real
/// peer must still connect: no hostile client may break the listener.
@Suite("TCP replication transport against hostile clients", .serialized, .timeLimit(.minutes(2)))
struct HostileClientTests {
    /// `helloTimeout` is short only for the tests about it: elsewhere a loaded machine could let the timeout close
    /// a client before it sends what the test is about (CI once starved a test's task for over 10 s while other
    /// suites held the two threads of the cooperative pool).
    private func withListener(
        helloTimeout: Duration = .seconds(60),
        _ body: (_ node: TestNode, _ port: UInt16, _ group: any EventLoopGroup) async throws -> Void
    ) async throws {
        try await withPair(configure: { $0.helloTimeout = helloTimeout }) { a, b, group in
            b.transport.startConnecting()
            let port = try #require(await b.transport.listeningAddress()).port
            try await body(b, port, group)
            // The listener still works: the real peer connects.
            a.transport.startConnecting()
            #expect(await eventually { a.connectedCount >= 1 && b.connectedCount >= 1 }, "b: \(b.logs)")
            a.transport.send(.ping)
            #expect(await eventually { b.packetsOfCurrentConnection.contains(.ping) })
        }
    }

    /// The highest nonce, so that the fake peer wins the race against the listener's own attempts to its real peer.
    private func offer(_ channel: PacketChannel, resource: String = "r0", nonce: UInt64 = .max) -> [UInt8] {
        ChannelHello(channel: channel, role: .offer, sessionNonce: nonce, attempt: 1, resourceName: resource).encode()
    }

    @Test("Garbage instead of a hello is refused and closed")
    func garbage() async throws {
        try await withListener { node, port, group in
            let client = try await RawClient.connect(port: port, group: group)
            try await client.write(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(await eventually { client.isClosed })
            #expect(client.received.isEmpty)
            #expect(node.logs.contains { $0.contains("bad hello magic") })
            await client.close()
        }
    }

    @Test("A hello of another version, for another resource, or damaged is refused with a logged reason")
    func badHellos() async throws {
        try await withListener { node, port, group in
            var otherVersion = offer(.data)
            otherVersion[5] = 9
            var damaged = offer(.meta)
            damaged[30] ^= 0x10
            let cases: [([UInt8], String)] = [
                (otherVersion, "unsupported hello version: hello version 9"),
                (offer(.data, resource: "r7"), "it is for resource 'r7', this is 'r0'"),
                (damaged, "hello checksum mismatch"),
            ]
            for (bytes, logged) in cases {
                let client = try await RawClient.connect(port: port, group: group)
                try await client.write(bytes)
                #expect(await eventually { client.isClosed }, "\(logged)")
                #expect(client.received.isEmpty)
                #expect(node.logs.contains { $0.contains(logged) }, "\(node.logs)")
                await client.close()
            }
            #expect(node.connectedCount == 0)
        }
    }

    @Test("A client that says nothing is closed after the hello timeout")
    func silence() async throws {
        try await withListener(helloTimeout: .milliseconds(500)) { _, port, group in
            let client = try await RawClient.connect(port: port, group: group)
            #expect(await eventually { client.isClosed })
            await client.close()
        }
    }

    @Test("Sockets beyond the half-open limit are closed at once")
    func halfOpenLimit() async throws {
        // A long hello timeout: with a short one, a loaded machine could time the first sockets out before the last
        // ones arrive, and the limit would never be reached. It must still end within `eventually`'s patience.
        try await withListener(helloTimeout: .seconds(10)) { node, port, group in
            var clients: [RawClient] = []
            for _ in 0..<12 { clients.append(try await RawClient.connect(port: port, group: group)) }
            // The limit is 8 half-open sockets: the last 4 are refused.
            #expect(await eventually { clients.filter(\.isClosed).count == 4 })
            #expect(clients.prefix(8).allSatisfy { !$0.isClosed }, "the first 8 wait for their hello")
            #expect(node.logs.contains { $0.contains("half-open sockets already") })
            // The rest go when the hello timeout ends them: 10 s after they connected, which on a machine busy with
            // other suites can be well after `patience`, so this wait is longer.
            #expect(await eventually(timeout: .seconds(90)) { clients.allSatisfy(\.isClosed) })
            for client in clients { await client.close() }
        }
    }

    @Test("A fake peer that pairs and then sends an oversized frame loses the connection; nothing else breaks")
    func oversizedFrame() async throws {
        try await withListener { node, port, group in
            let data = try await RawClient.connect(port: port, group: group)
            let meta = try await RawClient.connect(port: port, group: group)
            try await data.write(offer(.data))
            try await meta.write(offer(.meta))
            let helloBytes = ChannelHello.encodedBytes
            #expect(await eventually { data.received.count == helloBytes && meta.received.count == helloBytes })
            let reply = try #require(try ChannelHello.decode(data.received))
            #expect(reply.role == .accept && reply.channel == .data && reply.attempt == 1)
            #expect(await eventually { node.connectedCount == 1 })
            // A data-packet header announcing 4 GiB: refused from the header alone, before any payload.
            var header = ByteWriter()
            header.write(PacketCodec.magic)
            header.write(UInt16(0))
            header.write(PacketCommand.data.rawValue)
            header.write(UInt32.max)
            header.write(UInt32(0))
            try await data.write(header.bytes)
            #expect(await eventually { data.isClosed && meta.isClosed })
            #expect(await eventually { node.lostReasons == ["corrupt frame"] })
            #expect(node.logs.contains { $0.contains("oversized data packet") }, "\(node.logs)")
            await data.close()
            await meta.close()
            // The node re-armed after the loss (as the replication machine does); the real peer connects next.
        }
    }

    @Test("A fake peer that pairs and sends a corrupted frame loses the connection with one transportLost")
    func corruptFrame() async throws {
        try await withListener { node, port, group in
            let data = try await RawClient.connect(port: port, group: group)
            let meta = try await RawClient.connect(port: port, group: group)
            try await data.write(offer(.data, nonce: .max - 1))
            try await meta.write(offer(.meta, nonce: .max - 1))
            #expect(await eventually { node.connectedCount == 1 })
            var frame = PacketCodec.encode(.writeAck(BlockAck(range: BlockRange(sector: 8, sizeBytes: 4096), requestID: 5)))
            try await meta.write(frame)
            #expect(await eventually { node.packetsOfCurrentConnection.count == 1 })
            frame[frame.count - 1] ^= 1
            try await meta.write(frame)
            #expect(await eventually { data.isClosed && meta.isClosed })
            #expect(await eventually { node.lostReasons == ["corrupt frame"] })
            await data.close()
            await meta.close()
        }
    }
}
