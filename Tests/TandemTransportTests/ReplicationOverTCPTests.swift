import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ReplicationCore
import TandemConfig
import TandemDrivers
import TandemTestSupport
import Testing

@testable import TandemTransport

/// One replication node as the daemon will run it: the production `ReplicationNode` on its own serial thread (a
/// dispatch queue here), fed by the TCP transport's sink and by an in-memory disk whose completions come back
/// asynchronously, with a 100 ms tick.
///
/// `@unchecked Sendable`: every mutable field is touched only on `queue`, which is what the daemon's per-resource
/// thread guarantees in production.
private final class MemoryNode: BlockStore, MetadataStore, ReplicationObserver, @unchecked Sendable {
    typealias Node = ReplicationNode<TCPReplicationTransport, MemoryNode, MemoryNode, MemoryNode>

    static let deviceBytes = 4 << 20

    let name: String
    let queue: DispatchQueue
    private var node: Node?
    private var device = [UInt8](repeating: 0, count: MemoryNode.deviceBytes)
    private var completions: [UInt64: RequestOutcome] = [:]
    private var logLines: [String] = []
    private var ticker: (any DispatchSourceTimer)?
    private var nextCommandID: UInt64 = 1

    init(name: String) {
        self.name = name
        self.queue = DispatchQueue(label: "tandem.test.\(name)")
    }

    private static var now: MonotonicInstant {
        MonotonicInstant(nanoseconds: Int64(DispatchTime.now().uptimeNanoseconds))
    }

    /// Builds the node over `transport` and starts it, with fresh metadata (just created, Inconsistent).
    func start(transport: TCPReplicationTransport) {
        var settings = ReplicationSettings()
        settings.activityLogExtents = 7
        settings.activityLogRingSlots = 8
        settings.resync.planAhead = .zero
        settings.resync.rateBytesPerSecond = 200 << 20
        let recovered = RecoveredMetadata(
            superblock: SuperblockState(uuids: .created, flags: [], agreedSizeBytes: 0), wasUnclean: false,
            bitmapWords: [UInt64](repeating: 0, count: Self.deviceBytes / 4096 / 64),
            activityLog: ActivityLog(capacityExtents: 7, ringSlots: 8), sizeBytes: UInt64(Self.deviceBytes))
        queue.sync {
            let machine = ReplicationMachine(settings: settings, recovered: recovered, randomSeed: .random(in: 1...UInt64.max))
            node = Node(machine: machine, transport: transport, blocks: self, metadata: self, observer: self)
            node!.start(now: Self.now)
            let timer = DispatchSource.makeTimerSource(queue: queue)
            timer.schedule(deadline: .now() + .milliseconds(100), repeating: .milliseconds(100))
            timer.setEventHandler { [unowned self] in self.node?.handle(.tick, now: Self.now) }
            timer.resume()
            ticker = timer
        }
    }

    func stop() {
        queue.sync {
            ticker?.cancel()
            ticker = nil
            node = nil
        }
    }

    /// The transport's sink: events go to the node's thread in the order they come.
    func deliver(_ event: ReplicationEvent) {
        queue.async { self.node?.handle(event, now: Self.now) }
    }

    func command(_ command: OperatorCommand) {
        queue.async {
            self.nextCommandID += 1
            self.node?.handle(.command(id: self.nextCommandID, command), now: Self.now)
        }
    }

    func write(requestID: UInt64, offsetBytes: UInt64, payload: [UInt8]) {
        deliver(.write(ApplicationWrite(requestID: requestID, offsetBytes: offsetBytes, payload: payload)))
    }

    var status: ReplicationStatus? { queue.sync { node?.status } }
    var contents: [UInt8] { queue.sync { device } }
    var logs: [String] { queue.sync { logLines } }
    func outcome(_ requestID: UInt64) -> RequestOutcome? { queue.sync { completions[requestID] } }

    // BlockStore: the work is done at once; the completion comes back as a later event, as a real device's would.
    func submitWrite(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool) {
        let offset = Int(range.offsetBytes)
        device.replaceSubrange(offset..<offset + payload.count, with: payload)
        deliver(.localIOCompleted(token: token, .written))
    }

    func submitRead(token: UInt64, range: BlockRange) {
        let offset = Int(range.offsetBytes)
        deliver(.localIOCompleted(token: token, .read(Array(device[offset..<offset + Int(range.sizeBytes)]))))
    }

    func submitFlush(token: UInt64) { deliver(.localIOCompleted(token: token, .flushed)) }

    func submitZeroes(token: UInt64, range: BlockRange, forceUnitAccess: Bool) {
        submitWrite(token: token, range: range, payload: [UInt8](repeating: 0, count: Int(range.sizeBytes)), forceUnitAccess: forceUnitAccess)
    }

    // MetadataStore: kept nowhere; this test is about the wire.
    func writeSuperblock(_ state: SuperblockState) throws(MetadataStoreError) {}
    func writeActivityLog(_ transaction: ActivityLogTransaction) throws(MetadataStoreError) {}
    func writeBitmap(_ pages: [BitmapPageContents]) throws(MetadataStoreError) {}
    func preserveDivergedBlocks(_ blocks: [Range<UInt64>], reason: String) throws(MetadataStoreError) {}

    // ReplicationObserver
    func writeCompleted(requestID: UInt64, _ outcome: RequestOutcome) { completions[requestID] = outcome }
    func readCompleted(requestID: UInt64, _ outcome: RequestOutcome, payload: [UInt8]) {}
    func flushCompleted(requestID: UInt64, _ outcome: RequestOutcome) {}
    func commandCompleted(commandID: UInt64, _ outcome: CommandOutcome) {
        if case .refused(let reason) = outcome { logLines.append("command \(commandID) refused: \(reason)") }
    }
    func runHandler(_ handler: DrbdHandler) { logLines.append("handler \(handler.rawValue)") }
    func log(_ line: String) { logLines.append(line) }
}

@Suite("The replication machine over the TCP transport", .serialized, .timeLimit(.minutes(2)))
struct ReplicationOverTCPTests {
    @Test("Two nodes connect, resync after a forced promotion, replicate a protocol C write, and reconnect")
    func endToEnd() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let ports = try freeLoopbackPorts(2)
        let nodes = [MemoryNode(name: "a"), MemoryNode(name: "b")]
        var transports: [TCPReplicationTransport] = []
        for (index, node) in nodes.enumerated() {
            let transport = try TCPReplicationTransport(
                configuration: configuration(local: ports[index], peer: ports[1 - index]), eventLoopGroup: group,
                eventSink: { node.deliver($0) })
            try await transport.start()
            transports.append(transport)
            node.start(transport: transport)
        }
        let (a, b) = (nodes[0], nodes[1])
        func connectionStates() -> String {
            "a: \(String(describing: a.status)) \(a.logs)\nb: \(String(describing: b.status)) \(b.logs)"
        }

        a.command(.connect(discardMyData: false))
        b.command(.connect(discardMyData: false))
        #expect(
            await eventually { a.status?.connection == .connected && b.status?.connection == .connected },
            "\(connectionStates())")

        a.command(.promote(force: true))
        #expect(
            await eventually {
                a.status?.disk == .upToDate && b.status?.disk == .upToDate && b.status?.connection == .connected
                    && a.status?.role == .primary
            }, "\(connectionStates())")

        let payload = (0..<8192).map { UInt8(truncatingIfNeeded: $0 * 7) }
        a.write(requestID: 1, offsetBytes: 1 << 20, payload: payload)
        #expect(await eventually { a.outcome(1) != nil })
        #expect(a.outcome(1) == .success)
        #expect(Array(b.contents[(1 << 20)..<(1 << 20) + 8192]) == payload)

        a.command(.disconnect)
        #expect(await eventually { a.status?.connection == .standAlone && b.status?.connection == .waitingForConnection })
        a.command(.connect(discardMyData: false))
        #expect(
            await eventually { a.status?.connection == .connected && b.status?.connection == .connected },
            "\(connectionStates())")
        a.write(requestID: 2, offsetBytes: 0, payload: payload)
        #expect(await eventually { a.outcome(2) != nil })
        #expect(a.outcome(2) == .success)
        #expect(a.contents == b.contents)

        for node in nodes { node.stop() }
        for transport in transports { await transport.shutdown() }
        try await group.shutdownGracefully()
    }
}
