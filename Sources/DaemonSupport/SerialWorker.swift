import CoreSupport

/// Runs jobs one at a time, in order, on a thread of its own, so that whoever submits them (a daemon's event
/// thread) never waits for one: scripts that send mail, DRBD handlers. At most `queueMaximum` jobs wait; `submit`
/// refuses more, and the caller says so in its log.
public final class SerialWorker<Job: Sendable>: @unchecked Sendable {
    // @unchecked: `queue`, `isStopped` and `thread` are only touched with `lock` held.
    public let queueMaximum: Int
    private let lock = PthreadLock()
    private var queue: [Job] = []
    private var isStopped = false
    private var thread: DaemonThread?

    public init(name: String, queueMaximum: Int, perform: @escaping @Sendable (Job) -> Void) {
        precondition(queueMaximum > 0, "worker \(name) with a queue of \(queueMaximum)")
        self.queueMaximum = queueMaximum
        let thread = DaemonThread.start(name: name) { [self] in
            while let job = next() { perform(job) }
        }
        lock.withLock { self.thread = thread }
    }

    /// Queues a job; never blocks. False when it was refused (stopped, or the queue is full).
    @discardableResult
    public func submit(_ job: Job) -> Bool {
        lock.withLock {
            guard !isStopped, queue.count < queueMaximum else { return false }
            queue.append(job)
            lock.broadcast()
            return true
        }
    }

    /// Lets the queued jobs finish and joins the thread.
    public func stop() {
        let thread = lock.withLock { () -> DaemonThread? in
            isStopped = true
            lock.broadcast()
            return self.thread
        }
        thread?.join()
    }

    private func next() -> Job? {
        lock.withLock {
            while queue.isEmpty && !isStopped { lock.wait(until: DaemonClock.now + Duration.seconds(60)) }
            return queue.isEmpty ? nil : queue.removeFirst()
        }
    }
}
