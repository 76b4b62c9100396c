import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ReplicationCore
import TandemTestSupport
import Testing

@testable import TandemTransport

/// Generous bound for anything that should happen within a few connect-ints on loopback. Tests wait for
/// conditions, never for times, so a slow machine only makes them slower.
let patience = Duration.seconds(20)

/// `TandemTestSupport.eventually` with this target's patience.
func eventually(timeout: Duration = patience, _ condition: () -> Bool) async -> Bool {
    await TandemTestSupport.eventually(timeout: timeout, condition)
}

/// Stands in for the replication node: records events and log lines, and re-arms connecting after a loss, as the
/// replication machine does when it returns to WFConnection.
final class TestNode: Sendable {
    let name: String
    private let events = NIOLockedValueBox<[ReplicationEvent]>([])
    private let logLines = NIOLockedValueBox<[String]>([])
    let transportBox = NIOLockedValueBox<TCPReplicationTransport?>(nil)
    let rearmAfterLoss: Bool
    private let holdNext = NIOLockedValueBox(false)
    private let holding = NIOLockedValueBox(false)
    private let heldPacketRelease = DispatchSemaphore(value: 0)

    init(name: String, rearmAfterLoss: Bool = true) {
        self.name = name
        self.rearmAfterLoss = rearmAfterLoss
    }

    var transport: TCPReplicationTransport { transportBox.withLockedValue { $0! } }

    func record(_ event: ReplicationEvent) {
        events.withLockedValue { $0.append(event) }
        if case .transportLost = event, rearmAfterLoss {
            transportBox.withLockedValue { $0 }?.startConnecting()
        }
    }

    /// The transport's packet sink, on a receiver thread: records the packet, then blocks there if `holdNextPacket`
    /// asked for it (as a receiver writing to a slow disk blocks), until `releaseHeldPacket`.
    func deliver(_ packet: Packet) {
        record(.packet(packet))
        guard holdNext.withLockedValue({ hold in defer { hold = false }; return hold }) else { return }
        holding.withLockedValue { $0 = true }
        heldPacketRelease.wait()
        holding.withLockedValue { $0 = false }
    }

    func holdNextPacket() { holdNext.withLockedValue { $0 = true } }
    var isHoldingPacket: Bool { holding.withLockedValue { $0 } }
    func releaseHeldPacket() { heldPacketRelease.signal() }

    func log(_ level: ConnectionPairingMachine.LogLevel, _ line: String) {
        logLines.withLockedValue { $0.append("\(level): \(line)") }
    }

    var recorded: [ReplicationEvent] { events.withLockedValue { $0 } }
    var logs: [String] { logLines.withLockedValue { $0 } }

    var connectedCount: Int {
        recorded.filter { if case .transportConnected = $0 { true } else { false } }.count
    }
    var lostReasons: [String] {
        recorded.compactMap { if case .transportLost(let reason) = $0 { reason } else { nil } }
    }
    func packets(on channel: PacketChannel) -> [Packet] {
        recorded.compactMap { if case .packet(let packet) = $0, packet.channel == channel { packet } else { nil } }
    }
    /// Packets received since the last `transportConnected`.
    var packetsOfCurrentConnection: [Packet] {
        let start = recorded.lastIndex { if case .transportConnected = $0 { true } else { false } } ?? 0
        return recorded[start...].compactMap { if case .packet(let packet) = $0 { packet } else { nil } }
    }
}

func configuration(local: UInt16, peer: UInt16, resource: String = "r0") -> TCPReplicationTransport.Configuration {
    var configuration = TCPReplicationTransport.Configuration(
        resourceName: resource, localAddress: ReplicationEndpoint(host: "127.0.0.1", port: local),
        peerAddress: ReplicationEndpoint(host: "127.0.0.1", port: peer))
    configuration.connectInterval = .milliseconds(100)
    configuration.helloTimeout = .seconds(2)
    return configuration
}

func makeTransport(_ node: TestNode, _ configuration: TCPReplicationTransport.Configuration, group: any EventLoopGroup)
    throws -> TCPReplicationTransport
{
    let transport = try TCPReplicationTransport(
        configuration: configuration, eventLoopGroup: group, log: { node.log($0, $1) },
        eventSink: { node.record($0) }, packetSink: { node.deliver($0) })
    node.transportBox.withLockedValue { $0 = transport }
    return transport
}

/// Two transports on loopback that know each other's ports, started (listening) but not yet connecting. Everything
/// is shut down after `body`, whether it throws or not.
func withPair(
    configure: (inout TCPReplicationTransport.Configuration) -> Void = { _ in },
    _ body: (TestNode, TestNode, any EventLoopGroup) async throws -> Void
) async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let a = TestNode(name: "a")
    let b = TestNode(name: "b")
    var started: [TCPReplicationTransport] = []
    do {
        let ports = try freeLoopbackPorts(2)
        var configurationA = configuration(local: ports[0], peer: ports[1])
        var configurationB = configuration(local: ports[1], peer: ports[0])
        configure(&configurationA)
        configure(&configurationB)
        for (node, configuration) in [(a, configurationA), (b, configurationB)] {
            let transport = try makeTransport(node, configuration, group: group)
            try await transport.start()
            started.append(transport)
        }
        try await body(a, b, group)
    } catch {
        for transport in started { await transport.shutdown() }
        try await group.shutdownGracefully()
        throw error
    }
    for transport in started { await transport.shutdown() }
    try await group.shutdownGracefully()
}

/// Connects both nodes and waits until each has its `transportConnected`.
func connect(_ a: TestNode, _ b: TestNode) async {
    a.transport.startConnecting()
    b.transport.startConnecting()
    #expect(await eventually { a.connectedCount == 1 && b.connectedCount == 1 }, "a: \(a.logs) b: \(b.logs)")
}

/// A raw TCP client for playing a hostile or fake peer: records what it receives and when the server closes.
final class RawClient: Sendable {
    let channel: any Channel
    private let state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>

    private init(channel: any Channel, state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>) {
        self.channel = channel
        self.state = state
    }

    private final class Recorder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>
        init(_ state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>) { self.state = state }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = Array(buffer: unwrapInboundIn(data))
            state.withLockedValue { $0.bytes += bytes }
        }
        func channelInactive(context: ChannelHandlerContext) {
            state.withLockedValue { $0.closed = true }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    static func connect(port: UInt16, group: any EventLoopGroup) async throws -> RawClient {
        let state = NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>(([], false))
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Recorder(state))
                }
            }
            .connect(host: "127.0.0.1", port: Int(port)).get()
        return RawClient(channel: channel, state: state)
    }

    func write(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    var received: [UInt8] { state.withLockedValue { $0.bytes } }
    var isClosed: Bool { state.withLockedValue { $0.closed } }

    func close() async {
        try? await channel.close()
    }
}
