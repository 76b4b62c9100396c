#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Dispatch
import NIOConcurrencyHelpers
import ReplicationCore
import Testing

@testable import TandemTransport

/// `EstablishedConnection` on its own, over two local socket pairs: the test holds the far ends and plays the peer.
@Suite("An established connection's threads")
struct EstablishedConnectionTests {
    /// What the connection hands to the node, and how it ended.
    final class Recorder: Sendable {
        private let packets = NIOLockedValueBox<[Packet]>([])
        private let end = NIOLockedValueBox<EstablishedConnection.End?>(nil)
        private let endCount = NIOLockedValueBox(0)
        /// When set, the first delivery blocks (as a receiver writing to a slow disk does) until it is signalled.
        let firstDeliveryGate: DispatchSemaphore?

        init(holdingTheFirstDelivery: Bool = false) {
            firstDeliveryGate = holdingTheFirstDelivery ? DispatchSemaphore(value: 0) : nil
        }

        func deliver(_ packet: Packet) {
            let first = packets.withLockedValue { packets in
                packets.append(packet)
                return packets.count == 1
            }
            if first { firstDeliveryGate?.wait() }
        }
        func ended(_ how: EstablishedConnection.End) {
            end.withLockedValue { $0 = how }
            endCount.withLockedValue { $0 += 1 }
        }

        var delivered: [Packet] { packets.withLockedValue { $0 } }
        var howEnded: EstablishedConnection.End? { end.withLockedValue { $0 } }
        var timesEnded: Int { endCount.withLockedValue { $0 } }
        var failureReason: String? {
            if case .failed(let reason, let detail) = howEnded { "\(reason): \(detail)" } else { nil }
        }
    }

    /// A started connection whose peer ends are `peerData` and `peerMeta` (closed by the test or by `closePeer`).
    struct Harness {
        let connection: EstablishedConnection
        let recorder: Recorder
        var peerData: CInt
        var peerMeta: CInt

        /// Long timeouts by default: the tests wait for what they name, never against a clock.
        init(
            peerCloseTimeout: Duration = .seconds(600), sendQueueBytesMax: Int = 4 << 20,
            holdingTheFirstDelivery: Bool = false
        ) throws {
            let data = try Self.socketPair()
            let meta = try Self.socketPair()
            let recorder = Recorder(holdingTheFirstDelivery: holdingTheFirstDelivery)
            connection = EstablishedConnection(
                generation: 1,
                data: .init(descriptor: data.0, channel: .data, heldPackets: [], decoder: PacketDecoder()),
                meta: .init(descriptor: meta.0, channel: .meta, heldPackets: [], decoder: PacketDecoder()),
                frameBytesMax: 1 << 20, sendQueueBytesMax: sendQueueBytesMax,
                timeouts: .init(drain: .seconds(600), peerClose: peerCloseTimeout),
                packetSink: { recorder.deliver($0) }, ended: { _, how in recorder.ended(how) })
            self.recorder = recorder
            peerData = data.1
            peerMeta = meta.1
            connection.start()
        }

        static func socketPair() throws -> (CInt, CInt) {
            var descriptors: [CInt] = [-1, -1]
            guard socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &descriptors) == 0
            else { throw SystemCallError("socketpair") }
            return (descriptors[0], descriptors[1])
        }

        /// Writes `bytes` to a peer end, all of them.
        func peerWrite(_ descriptor: CInt, _ bytes: [UInt8]) {
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
                precondition(written > 0 || errno == EINTR, "write to the test's peer end failed: errno \(errno)")
                offset += max(written, 0)
            }
        }

        /// Reads a peer end to its end of file and decodes what came.
        func peerReadAll(_ descriptor: CInt) throws -> [Packet] {
            var decoder = PacketDecoder()
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count == 0 { break }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { throw SystemCallError("read") }
                decoder.append(buffer[..<count])
            }
            var packets: [Packet] = []
            while let packet = try decoder.next() { packets.append(packet) }
            return packets
        }

        mutating func closePeer() {
            for descriptor in [peerData, peerMeta] where descriptor >= 0 { close(descriptor) }
            peerData = -1
            peerMeta = -1
        }

        func waitUntilEnded() async -> Bool { await eventually { recorder.timesEnded > 0 } }
    }

    static let pings = 200

    @Test("packets the peer sent on the data socket before closing are all delivered, though its meta socket closed first")
    func dataSentBeforeThePeerClosedIsDelivered() async throws {
        // The data receiver is held in its first delivery while the meta receiver reads the end of file.
        var harness = try Harness(holdingTheFirstDelivery: true)
        harness.peerWrite(harness.peerData, Array((0..<Self.pings).map { _ in PacketCodec.encode(.ping) }.joined()))
        #expect(await eventually { harness.recorder.delivered.count == 1 })
        close(harness.peerMeta)
        harness.peerMeta = -1
        harness.closePeer()
        #expect(await eventually { harness.connection.hasSeenPeerClose })
        // A send now goes nowhere: it must not end the connection (a failed send would, with the data unread).
        harness.connection.send(PacketCodec.encode(.pingAck), on: .meta)
        harness.recorder.firstDeliveryGate?.signal()

        #expect(await harness.waitUntilEnded())
        #expect(harness.recorder.delivered.count == Self.pings)
        #expect(harness.recorder.failureReason?.hasPrefix("connection closed by the peer: end of file on the meta socket, then on the data socket") == true,
            "\(String(describing: harness.recorder.howEnded))")
    }

    @Test("a peer that closes one socket and keeps the other open loses the connection after the peer-close timeout")
    func halfClosedPeerEndsAfterTheTimeout() async throws {
        var harness = try Harness(peerCloseTimeout: .milliseconds(100))
        defer { harness.closePeer() }
        close(harness.peerMeta)
        harness.peerMeta = -1

        #expect(await harness.waitUntilEnded())
        #expect(harness.recorder.failureReason?.contains("end of file on the meta socket; the other was still open") == true,
            "\(String(describing: harness.recorder.howEnded))")
    }

    @Test("drop: what the node sent before dropping reaches the peer, then both sockets close; the node hears .dropped")
    func dropWritesWhatWasSent() async throws {
        var harness = try Harness()
        defer { harness.closePeer() }
        // More than a socket buffer holds, so that some of it waits in the writer's queue when the drop comes.
        let frame = PacketCodec.encode(.ping)
        let frames = (1 << 20) / frame.count
        for _ in 0..<frames { harness.connection.send(frame, on: .data) }
        harness.connection.send(PacketCodec.encode(.pingAck), on: .meta)
        harness.connection.drop()

        // Data first: its writer drains only as the peer reads, and the sockets close once it has.
        let data = try harness.peerReadAll(harness.peerData)
        let meta = try harness.peerReadAll(harness.peerMeta)
        #expect(meta == [.pingAck])
        #expect(data.count == frames)
        #expect(await harness.waitUntilEnded())
        if case .dropped = harness.recorder.howEnded {} else {
            Issue.record("ended \(String(describing: harness.recorder.howEnded)), expected .dropped")
        }
    }

    @Test("a peer that stops reading: the send queue passes its limit and the connection fails, naming the limit")
    func sendQueueLimitEndsTheConnection() async throws {
        var harness = try Harness(sendQueueBytesMax: 256 << 10)
        defer { harness.closePeer() }
        let frame = PacketCodec.encode(.ping)
        // Bounded: at most 64 MiB offered, far past any socket buffer plus the limit.
        var offered = 0
        while harness.recorder.timesEnded == 0 && offered < 64 << 20 {
            harness.connection.send(frame, on: .data)
            offered += frame.count
        }

        #expect(await harness.waitUntilEnded())
        #expect(harness.recorder.failureReason?.hasPrefix("send queue over its limit") == true,
            "\(String(describing: harness.recorder.howEnded)) after \(offered) bytes")
    }
}
