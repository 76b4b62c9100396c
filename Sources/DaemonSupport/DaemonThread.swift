#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage
import CoreSupport

/// A dedicated POSIX thread that runs one closure and can be joined.
///
/// The daemon keeps blocking work (the resource's synchronous metadata writes, waiting for handler scripts) off the
/// event loops and Swift's cooperative pool, on threads of its own. Each thread is joined by whoever stops it.
public final class DaemonThread: @unchecked Sendable {
    // @unchecked: `thread` is written once in `start`, before the handle is shared, and only read by `join`, which
    // `joined` (behind `lock`) makes idempotent.
    private var thread = pthread_t()
    private let lock = PthreadLock()
    private var joined = false
    public let name: String

    private init(name: String) { self.name = name }

    /// Starts a thread named `name` (Linux keeps 15 characters) running `body`.
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) -> DaemonThread {
        let handle = DaemonThread(name: name)
        handle.thread = create(name: name, body)
        return handle
    }

    /// Runs `body` on a detached thread of its own and returns its result: for short blocking work (reading
    /// metadata) that must stay off the event loops and the cooperative pool.
    public static func run<T: Sendable>(name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            detach(name: name) { continuation.resume(returning: body()) }
        }
    }

    /// Runs `body` on a detached thread that nobody joins: for bounded background work whose end nobody waits for
    /// (gratuitous ARP after an address moved).
    public static func detach(name: String, _ body: @escaping @Sendable () -> Void) {
        pthread_detach(create(name: name, body))
    }

    private static func create(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t {
        let context = Unmanaged.passRetained(ThreadBody(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(
            &thread, nil,
            { context in
                let start = Unmanaged<ThreadBody>.fromOpaque(context!).takeRetainedValue()
                ctandem_name_current_thread(start.name)
                start.body()
                return nil
            }, context)
        precondition(result == 0, "cannot start thread \(name): errno \(result)")
        return thread
    }

    /// Waits for the thread to end. Idempotent; must not be called from the thread itself.
    public func join() {
        let first = lock.withLock { () -> Bool in
            defer { joined = true }
            return !joined
        }
        guard first else { return }
        precondition(pthread_equal(thread, pthread_self()) == 0, "thread \(name) joined from itself")
        pthread_join(thread, nil)
    }
}

private final class ThreadBody {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}

/// A pthread mutex with a condition variable on the monotonic clock, for the queues the daemon's threads wait on.
public final class PthreadLock: @unchecked Sendable {
    // @unchecked: the pthread objects are used only through their thread-safe C API.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Waits for `signal`/`broadcast` or until `deadline` on the monotonic clock; call with the lock held (inside
    /// `withLock`). Spurious wake-ups happen: callers re-check their condition.
    public func wait(until deadline: MonotonicInstant) {
        var time = timespec(
            tv_sec: Int(deadline.nanoseconds / 1_000_000_000), tv_nsec: Int(deadline.nanoseconds % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &time)
    }

    public func broadcast() { pthread_cond_broadcast(condition) }
}

/// The monotonic clock the daemons feed their machines (CLOCK_MONOTONIC, which the condition variables
/// above wait on too).
public enum DaemonClock {
    public static var now: MonotonicInstant {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return MonotonicInstant(nanoseconds: Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec))
    }
}
