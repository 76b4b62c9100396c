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

/// The inbox of a resource: transport and storage events, device and control requests, in arrival order. It also
/// decides who processes them: one thread at a time "holds" the resource (the node, the observer, the stop sequence;
/// none of them is thread-safe), and the mailbox's lock orders every hand-over.
///
/// Who holds it:
/// - the resource's thread (`hold`, `release`): it ticks the node, runs the stop sequence, and takes what was posted
///   by threads that must not block (event loops, the control socket's tasks);
/// - a helper (`postHolding`): a thread that may block (a FUSE worker, an I/O thread, a replication connection's
///   receiver thread) that posts a message while nobody holds the resource processes everything queued itself. A FUSE write then reaches the disk without waking
///   anyone: on a 2-core machine each hand-over between threads costs more than the request's own processing.
///   Helpers step aside while the resource's thread waits for its turn, so ticks are never starved.
///
/// Posting never blocks: the transport's connection events come from an event loop, its packets from its receiver
/// threads, and the block store's completions from its I/O threads. Memory is bounded nonetheless:
/// - replicated data arriving faster than it is handled pauses reading on the data connection once
///   `packetBytesHighWater` bytes of packets wait here, until they are taken (on top of the machine's own
///   max-buffers throttle, which only sees packets already handled). A batch is handled before the next is taken,
///   so at most about twice the high-water mark of packets is held;
/// - storage completions are bounded by the machine's requests in flight;
/// - control requests beyond `controlRequestsMaximum` waiting are refused (`post` returns false);
/// - device requests are bounded by the frontends that send them (the FUSE file: max_background; the NBD export:
///   connections times requests in flight per connection), each at most one replicated request's size.
final class Mailbox: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with `lock` held.
    enum Message: Sendable {
        case event(ReplicationEvent)
        case request(RunnerRequest)
        case device(DeviceRequest)
    }

    /// What `postHolding` did with a message.
    enum Delivery {
        /// The mailbox is closed: the message was not taken.
        case refused
        /// Queued for whoever holds the resource, or for the resource's thread.
        case queued
        /// The caller now holds the resource and must process these (its message last), then `release`.
        case held([Message])
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
    /// Someone processes the resource.
    private var isHeld = false
    /// Helpers may hold the resource (set once the resource's thread has opened it).
    private var helpersAllowed = false
    /// The resource's thread has something to do and waits only for the holder to release.
    private var resourceThreadWaiting = false
    /// A helper asked the resource's thread to run even with nothing queued (a stop to advance).
    private var resourceThreadWanted = false

    /// Called with true when queued packets exceed the high-water mark and false when they fall below the low one,
    /// with the mailbox's lock held (so calls arrive in order); it must not block or post.
    func setPressureHandler(_ handler: @escaping @Sendable (Bool) -> Void) {
        lock.withLock { pressureHandler = handler }
    }

    /// Whether the resource's thread waits for the holder to release (for tests).
    var resourceThreadIsWaiting: Bool { lock.withLock { resourceThreadWaiting } }

    /// Lets helpers hold the resource from now on.
    func allowHelpers() {
        lock.withLock { helpersAllowed = true }
    }

    /// Queues a transport or storage event. Events after `close` are dropped: the resource is gone.
    func post(_ event: ReplicationEvent) {
        lock.withLock {
            if enqueueLocked(.event(event)) { lock.broadcast() }
        }
    }

    /// Queues a control request; false (and the request is not queued) when the thread is gone or too many wait.
    func post(_ request: RunnerRequest) -> Bool {
        lock.withLock {
            guard enqueueLocked(.request(request)) else { return false }
            lock.broadcast()
            return true
        }
    }

    /// Queues a device request; false (and the request is not queued) when the thread is gone.
    func post(_ request: DeviceRequest) -> Bool {
        lock.withLock {
            guard enqueueLocked(.device(request)) else { return false }
            lock.broadcast()
            return true
        }
    }

    /// Queues `message` and, when helpers are allowed, nobody holds the resource and the resource's thread is not
    /// waiting for its turn, hands the caller the resource with everything queued. Only for threads that may block.
    func postHolding(_ message: Message) -> Delivery {
        lock.withLock {
            guard enqueueLocked(message) else { return .refused }
            guard helpersAllowed && !isHeld && !resourceThreadWaiting else {
                // A holder takes it before it releases; otherwise the resource's thread must wake for it.
                if !isHeld { lock.broadcast() }
                return .queued
            }
            isHeld = true
            return .held(takeLocked())
        }
    }

    /// The resource's thread: waits until nobody else holds the resource and a message is queued, a helper wants
    /// this thread, or `deadline` passed; then holds the resource and returns everything queued (possibly nothing).
    /// Returns nothing without holding once the mailbox is closed. `release` ends the hold.
    func hold(until deadline: MonotonicInstant) -> [Message] {
        lock.withLock {
            while !isClosed {
                let due = !messages.isEmpty || resourceThreadWanted || DaemonClock.now >= deadline
                if due && !isHeld {
                    resourceThreadWaiting = false
                    resourceThreadWanted = false
                    isHeld = true
                    return takeLocked()
                }
                resourceThreadWaiting = due
                if due {
                    lock.wait(until: DaemonClock.now + .seconds(1))  // until the holder releases (which broadcasts)
                } else {
                    lock.wait(until: deadline)
                }
            }
            resourceThreadWaiting = false
            return []
        }
    }

    /// While holding the resource: everything queued since the last take (possibly nothing).
    func takeMore() -> [Message] {
        lock.withLock {
            precondition(isHeld || isClosed, "takeMore without holding the resource")
            return takeLocked()
        }
    }

    /// Ends a hold. `wantResourceThread` wakes the resource's thread even with nothing queued.
    func release(wantResourceThread: Bool = false) {
        lock.withLock {
            isHeld = false
            if wantResourceThread { resourceThreadWanted = true }
            // Waking the resource's thread for nothing would cost a context switch on every request.
            if resourceThreadWaiting || resourceThreadWanted || !messages.isEmpty { lock.broadcast() }
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

    /// Appends `message` unless the mailbox is closed (or, for a control request, full). Lock held.
    private func enqueueLocked(_ message: Message) -> Bool {
        guard !isClosed else { return false }
        switch message {
        case .event(let event):
            if case .packet(let packet) = event {
                packetBytes += Self.estimatedBytes(packet)
                if !isPressured && packetBytes > Self.packetBytesHighWater {
                    isPressured = true
                    pressureHandler?(true)
                }
            }
        case .request:
            guard controlRequests < Self.controlRequestsMaximum else { return false }
            controlRequests += 1
        case .device:
            break
        }
        messages.append(message)
        return true
    }

    /// Everything queued, oldest first; the holder now owns it. Lock held.
    private func takeLocked() -> [Message] {
        let batch = messages
        messages.removeAll(keepingCapacity: true)
        controlRequests = 0
        packetBytes = 0
        if isPressured {
            // Everything queued is now the holder's: it handles the batch before it takes again.
            isPressured = false
            pressureHandler?(false)
        }
        return batch
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
