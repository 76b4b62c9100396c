import ReplicationCore
import TandemConfig
import TandemDrivers

/// One simulated node's environment: the transport, block store, metadata store and observer the production
/// `ReplicationNode` driver runs over. A new instance is made for every process incarnation, so that anything an
/// old incarnation left in flight is recognised and dropped.
final class SimulatedEnvironment: ReplicationTransport, BlockStore, MetadataStore, ReplicationObserver {
    unowned let simulation: Simulation
    let node: Int
    let incarnation: Int

    init(simulation: Simulation, node: Int, incarnation: Int) {
        self.simulation = simulation
        self.node = node
        self.incarnation = incarnation
    }

    // ReplicationTransport
    func startConnecting() { simulation.network.wantsConnection[node] = true }
    func stopConnecting() { simulation.network.wantsConnection[node] = false }
    func dropConnection(reason: String) { simulation.dropConnection(by: node, reason: reason) }
    func send(_ packet: Packet) { simulation.send(packet, from: node) }
    func setReceivingPaused(_ paused: Bool) {
        simulation.network.setReceivingPaused(paused, node: node)
        // Held frames go on from the event loop, not from inside the node that is handling an event.
        if !paused { simulation.queue.schedule(.releaseHeldFrames, at: simulation.now) }
    }

    // BlockStore
    func submitWrite(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool) {
        simulation.submitDiskWrite(node: node, incarnation: incarnation, token: token, range: range, payload: payload, fua: forceUnitAccess)
    }
    func submitRead(token: UInt64, range: BlockRange) {
        simulation.submitDiskRead(node: node, incarnation: incarnation, token: token, range: range)
    }
    func submitFlush(token: UInt64) { simulation.submitDiskFlush(node: node, incarnation: incarnation, token: token) }
    func submitZeroes(token: UInt64, range: BlockRange, forceUnitAccess: Bool) {
        // The simulated disk keeps sectors sparsely; zeroes written are as good as a hole, and tear the same way.
        let zeroes = [UInt8](repeating: 0, count: Int(range.sizeBytes))
        simulation.submitDiskWrite(node: node, incarnation: incarnation, token: token, range: range, payload: zeroes, fua: forceUnitAccess)
    }

    // MetadataStore
    func writeSuperblock(_ state: SuperblockState) throws(MetadataStoreError) { simulation.metadata[node].write(state) }
    func writeActivityLog(_ transaction: ActivityLogTransaction) throws(MetadataStoreError) {
        simulation.disks[node].flush()
        simulation.metadata[node].write(transaction)
    }
    func writeBitmap(_ pages: [BitmapPageContents]) throws(MetadataStoreError) { simulation.metadata[node].write(pages) }
    func preserveDivergedBlocks(_ blocks: [Range<UInt64>], reason: String) throws(MetadataStoreError) {
        simulation.preserve(node: node, blocks: blocks, reason: reason)
    }

    // ReplicationObserver
    func writeCompleted(requestID: UInt64, _ outcome: RequestOutcome) {
        if simulation.options.keepFullTrace { simulation.trace(node, "workload: write v\(requestID) completed: \(outcome)") }
        simulation.workload.writeCompleted(node: node, requestID: requestID, outcome: outcome, now: simulation.now)
    }
    func readCompleted(requestID: UInt64, _ outcome: RequestOutcome, payload: [UInt8]) {}
    func flushCompleted(requestID: UInt64, _ outcome: RequestOutcome) {
        if simulation.options.keepFullTrace { simulation.trace(node, "workload: flush #\(requestID) completed: \(outcome)") }
        simulation.workload.flushCompleted(node: node, requestID: requestID, outcome: outcome, now: simulation.now)
    }
    func commandCompleted(commandID: UInt64, _ outcome: CommandOutcome) {
        if case .refused(let reason) = outcome { simulation.trace(node, "command \(commandID) refused: \(reason)") }
    }
    func runHandler(_ handler: DrbdHandler) { simulation.trace(node, "handler \(handler.rawValue)") }
    func log(_ line: String) {
        if line.contains("Split-Brain detected") { simulation.splitBrainLogged(node: node) }
        simulation.trace(node, line)
    }
}

typealias SimulatedReplicationNode = ReplicationNode<
    SimulatedEnvironment, SimulatedEnvironment, SimulatedEnvironment, SimulatedEnvironment
>
