#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage

/// A fixed set of POSIX threads that run blocking jobs (pread, pwrite, fdatasync) from a bounded FIFO queue.
///
/// Why not Swift concurrency or an event loop: a blocked pwrite holds its thread for as long as the disk takes, and
/// blocking the cooperative pool or an event loop stalls unrelated work (timers, heartbeats). Dedicated threads keep
/// disk latency where it belongs.
///
/// Why bounded: an unbounded queue turns a slow disk into unbounded memory. When the queue is full, `submit` blocks
/// the submitting thread (the resource's serial thread) until a worker takes a job: back-pressure reaches the
/// replication machine, which already bounds its in-flight requests (max-buffers, the activity log), so in practice
/// the queue limit is a safety net.
///
/// Jobs run in submission order per worker pick-up; with more than one thread they complete in any order, which the
/// `BlockStore` contract allows.
final class IOThreadPool: @unchecked Sendable {
    // @unchecked: every mutable field below is only touched with `mutex` held; the threads are joined in `shutdown`.
    typealias Job = @Sendable () -> Void

    static let threadCountRange = 1...64
    static let queueDepthRange = 1...65536

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let jobAvailable: UnsafeMutablePointer<pthread_cond_t>
    private let spaceAvailable: UnsafeMutablePointer<pthread_cond_t>
    /// A ring of `queueDepthMaximum` entries; `head` is the next job to run, `count` how many are queued.
    private var queue: [Job?]
    private var head = 0
    private var count = 0
    private var isShutDown = false
    private var threads: [pthread_t] = []
    let name: String
    let queueDepthMaximum: Int

    /// Starts `threadCount` threads named `name` (truncated to the 15 characters Linux keeps).
    init(name: String, threadCount: Int, queueDepthMaximum: Int) {
        precondition(Self.threadCountRange.contains(threadCount), "I/O pool '\(name)' with \(threadCount) threads")
        precondition(
            Self.queueDepthRange.contains(queueDepthMaximum), "I/O pool '\(name)' with queue depth \(queueDepthMaximum)")
        self.name = name
        self.queueDepthMaximum = queueDepthMaximum
        queue = Array(repeating: nil, count: queueDepthMaximum)
        mutex = .allocate(capacity: 1)
        jobAvailable = .allocate(capacity: 1)
        spaceAvailable = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(jobAvailable, nil)
        pthread_cond_init(spaceAvailable, nil)
        for index in 0..<threadCount { threads.append(startThread(index: index)) }
    }

    deinit {
        shutdown()
        pthread_cond_destroy(spaceAvailable)
        pthread_cond_destroy(jobAvailable)
        pthread_mutex_destroy(mutex)
        spaceAvailable.deallocate()
        jobAvailable.deallocate()
        mutex.deallocate()
    }

    /// Queues `job`, waiting while the queue is full. Returns false (and does not run the job) once the pool is
    /// shut down; the caller then completes the request itself.
    func submit(_ job: @escaping Job) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while count == queueDepthMaximum && !isShutDown { pthread_cond_wait(spaceAvailable, mutex) }
        guard !isShutDown else { return false }
        queue[(head + count) % queueDepthMaximum] = job
        count += 1
        pthread_cond_signal(jobAvailable)
        return true
    }

    /// Stops taking jobs, lets the workers finish every job already queued, and joins them. Idempotent. Must not
    /// be called from one of the pool's own jobs (a thread cannot join itself).
    func shutdown() {
        pthread_mutex_lock(mutex)
        isShutDown = true
        let toJoin = threads
        threads = []
        pthread_cond_broadcast(jobAvailable)
        pthread_cond_broadcast(spaceAvailable)
        pthread_mutex_unlock(mutex)
        for thread in toJoin {
            precondition(pthread_equal(thread, pthread_self()) == 0, "I/O pool '\(name)' shut down from its own job")
            pthread_join(thread, nil)
        }
    }

    /// The next job, or nil when the pool is shut down and the queue is drained.
    private func take() -> Job? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while count == 0 && !isShutDown { pthread_cond_wait(jobAvailable, mutex) }
        guard count > 0 else { return nil }
        let job = queue[head]
        queue[head] = nil
        head = (head + 1) % queueDepthMaximum
        count -= 1
        pthread_cond_signal(spaceAvailable)
        return job
    }

    private func run(index: Int) {
        ctandem_name_current_thread("\(name)-\(index)")
        while let job = take() { job() }
    }

    private func startThread(index: Int) -> pthread_t {
        // The thread holds a strong reference until it exits, so the pool outlives its workers.
        let context = Unmanaged.passRetained(ThreadStart(pool: self, index: index)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { context in
                let start = Unmanaged<ThreadStart>.fromOpaque(context!).takeRetainedValue()
                start.pool.run(index: start.index)
                return nil
            }, context)
        precondition(result == 0, "cannot start thread \(index) of I/O pool '\(name)': errno \(result)")
        return thread
    }
}

/// What a new worker thread receives.
private final class ThreadStart {
    let pool: IOThreadPool
    let index: Int

    init(pool: IOThreadPool, index: Int) {
        self.pool = pool
        self.index = index
    }
}
