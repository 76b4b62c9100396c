import ReplicationCore
import Synchronization
import TandemDrivers
import TandemStorage
import TandemTransport

/// Who wants reading from the data connection paused: the replication machine (max-buffers) and the mailbox
/// (packets piling up before the resource's thread). Reading is paused while either does.
///
/// A new connection starts unpaused in the transport, so `connectionEstablished` forgets what was applied and
/// applies again what is wanted.
final class ReceivePause: Sendable {
    private struct State {
        var transport: TCPReplicationTransport?
        var byMachine = false
        var byMailbox = false
        var applied = false
    }

    private let state = Mutex(State())

    func attach(_ transport: TCPReplicationTransport) { state.withLock { $0.transport = transport } }

    func setByMachine(_ paused: Bool) { update { $0.byMachine = paused } }
    func setByMailbox(_ paused: Bool) { update { $0.byMailbox = paused } }
    func connectionEstablished() { update { $0.applied = false } }

    private func update(_ change: (inout State) -> Void) {
        state.withLock { state in
            change(&state)
            let wanted = state.byMachine || state.byMailbox
            guard wanted != state.applied else { return }
            state.applied = wanted
            // Non-blocking: the transport hops to its event loop.
            state.transport?.setReceivingPaused(wanted)
        }
    }
}

/// The transport as the replication node sees it: the TCP transport, with the pause shared with the mailbox.
struct DaemonTransport: ReplicationTransport {
    let inner: TCPReplicationTransport
    let pause: ReceivePause

    func startConnecting() { inner.startConnecting() }
    func stopConnecting() { inner.stopConnecting() }
    func dropConnection(reason: String) { inner.dropConnection(reason: reason) }
    func send(_ packet: Packet) { inner.send(packet) }
    func setReceivingPaused(_ paused: Bool) { pause.setByMachine(paused) }
}

/// The block store as the replication node sees it: `FileBlockStore`, counting the requests whose completions have
/// not been handled yet, so that a stop knows when the disk is quiet. Confined to the resource's thread.
final class DaemonBlockStore: BlockStore {
    let store: FileBlockStore
    /// Submitted, completion not yet handled by the resource's thread.
    private(set) var outstanding = 0

    init(store: FileBlockStore) { self.store = store }

    func submitWrite(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool) {
        outstanding += 1
        store.submitWrite(token: token, range: range, payload: payload, forceUnitAccess: forceUnitAccess)
    }

    func submitRead(token: UInt64, range: BlockRange) {
        outstanding += 1
        store.submitRead(token: token, range: range)
    }

    func submitFlush(token: UInt64) {
        outstanding += 1
        store.submitFlush(token: token)
    }

    /// The resource's thread is about to hand a completion to the node.
    func completionArrived() {
        precondition(outstanding > 0, "a block-store completion without a request outstanding")
        outstanding -= 1
    }
}
