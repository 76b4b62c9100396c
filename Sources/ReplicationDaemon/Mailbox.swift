import DaemonSupport
import ReplicationCore

/// A request from the control socket to a resource's thread. `reply` is called exactly once: by the thread when
/// the request is done, refused or timed out, or by `Mailbox.close` when the thread is gone.
struct RunnerRequest: Sendable {
    enum Kind: Sendable {
        case command(OperatorCommand, timeout: Duration)
        case status
        /// The test/diagnostic `write`, `read` and `flush`: application I/O, as a device frontend submits it.
        case io(DeviceRequest.Operation, timeout: Duration)
        case dumpMetadata
        case fault(FaultRequest)
        /// Take the resource down (`down`), or shut it down because the daemon is terminating.
        case stop(StopMode, timeout: Duration)
    }

    var kind: Kind
    var reply: @Sendable (ControlResponse) -> Void
}

/// How a resource is stopped.
enum StopMode: Sendable {
    /// drbdadm down: demote first (refused while requests are in flight), disconnect, drain, write the metadata
    /// clean. If the drain does not finish in time the resource stays up and the caller hears `timeout`.
    case down
    /// SIGTERM: refuse new I/O, disconnect, drain, write the metadata clean. A Primary stays Primary on disk only
    /// through the clean shutdown's Primary-bit handling. If the drain does not finish in time the metadata is left
    /// as it is (unclean, so the activity log is replayed at the next attach, as after a crash).
    case terminate
}

/// The inbox of a resource's thread: transport and storage events and control requests, in arrival order.
///
/// Producers never block: the transport's sink runs on an event loop and the block store's on an I/O thread. Memory
/// is bounded nonetheless:
/// - replicated data arriving faster than the thread handles it pauses reading on the data connection once
///   `packetBytesHighWater` bytes of packets wait here, until the thread takes them (on top of the machine's own
///   max-buffers throttle, which only sees packets the thread has handled). The thread handles a batch before it
///   takes the next, so at most about twice the high-water mark of packets is held;
/// - storage completions are bounded by the machine's requests in flight;
/// - control requests beyond `controlRequestsMaximum` waiting are refused (`post` returns false);
/// - device requests are bounded by the frontend that sends them (the NBD export: connections times requests in
///   flight per connection, each at most one replicated request's size).
final class Mailbox: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with `lock` held.
    enum Message: Sendable {
        case event(ReplicationEvent)
        case request(RunnerRequest)
        case device(DeviceRequest)
    }

    static let packetBytesHighWater = 64 << 20
    static let controlRequestsMaximum = 256

    private let lock = PthreadLock()
    private var messages: [Message] = []
    private var isClosed = false
    private var packetBytes = 0
    private var controlRequests = 0
    private var isPressured = false
    private var pressureHandler: (@Sendable (Bool) -> Void)?

    /// Called with true when queued packets exceed the high-water mark and false when they fall below the low one,
    /// with the mailbox's lock held (so calls arrive in order); it must not block or post.
    func setPressureHandler(_ handler: @escaping @Sendable (Bool) -> Void) {
        lock.withLock { pressureHandler = handler }
    }

    /// Queues a transport or storage event. Events after `close` are dropped: the resource is gone.
    func post(_ event: ReplicationEvent) {
        lock.withLock {
            guard !isClosed else { return }
            messages.append(.event(event))
            if case .packet(let packet) = event {
                packetBytes += Self.estimatedBytes(packet)
                if !isPressured && packetBytes > Self.packetBytesHighWater {
                    isPressured = true
                    pressureHandler?(true)
                }
            }
            lock.broadcast()
        }
    }

    /// Queues a control request; false (and the request is not queued) when the thread is gone or too many wait.
    func post(_ request: RunnerRequest) -> Bool {
        lock.withLock {
            guard !isClosed, controlRequests < Self.controlRequestsMaximum else { return false }
            controlRequests += 1
            messages.append(.request(request))
            lock.broadcast()
            return true
        }
    }

    /// Queues a device request; false (and the request is not queued) when the thread is gone.
    func post(_ request: DeviceRequest) -> Bool {
        lock.withLock {
            guard !isClosed else { return false }
            messages.append(.device(request))
            lock.broadcast()
            return true
        }
    }

    /// Everything queued, oldest first, waiting until `deadline` for at least one message. Empty when the deadline
    /// passed with nothing queued.
    func take(until deadline: MonotonicInstant) -> [Message] {
        lock.withLock {
            while messages.isEmpty && !isClosed && DaemonClock.now < deadline { lock.wait(until: deadline) }
            let batch = messages
            messages.removeAll(keepingCapacity: true)
            controlRequests = 0
            packetBytes = 0
            if isPressured {
                // Everything queued is now the thread's: it handles the batch before it takes again.
                isPressured = false
                pressureHandler?(false)
            }
            return batch
        }
    }

    /// Stops taking messages and returns those still queued (their requests must still be answered).
    func close() -> [Message] {
        lock.withLock {
            isClosed = true
            let left = messages
            messages.removeAll()
            if isPressured {
                isPressured = false
                pressureHandler?(false)
            }
            pressureHandler = nil
            lock.broadcast()
            return left
        }
    }

    /// Roughly what a packet holds in memory: its payload, or a small constant.
    static func estimatedBytes(_ packet: Packet) -> Int {
        switch packet {
        case .data(let data): 64 + data.payload.count
        case .resyncReply(let reply), .readReply(let reply): 64 + reply.payload.count
        case .bitmapChunk(let chunk): 64 + chunk.words.count * 8
        default: 64
        }
    }
}
