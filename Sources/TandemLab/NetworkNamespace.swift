#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage
import DaemonSupport

/// Runs code with its sockets in a named network namespace (/run/netns/NAME), on a thread of its own: setns() with
/// CLONE_NEWNET changes only the calling thread, and a socket stays in the namespace it was made in. That is how
/// the lab's client (the workload, the checks) talks to the VIP from the client machine's network.
enum NetworkNamespace {
    /// Moves the calling thread (a dedicated one) into the namespace for the rest of its life.
    static func enterCurrentThread(_ name: String) throws(LabError) {
        let fd = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LabError(.refused, "network namespace \(name) does not exist: is the lab up?") }
        defer { close(fd) }
        guard ctandem_enter_network_namespace(fd) == 0 else {
            throw LabError(.unavailable, "cannot enter network namespace \(name): \(String(cString: strerror(errno)))")
        }
    }

    /// Blocks the calling thread (which must not be an event loop or the cooperative pool) until `body` is done.
    static func run<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws(LabError) -> T) throws(LabError) -> T {
        let box = ResultBox<T>()
        let thread = DaemonThread.start(name: "netns") {
            do throws(LabError) {
                try enterCurrentThread(name)
                box.set(.success(try body()))
            } catch {
                box.set(.failure(error))
            }
        }
        thread.join()
        return try box.get()
    }
}

/// One result handed from a thread to the one that joins it.
final class ResultBox<T: Sendable>: @unchecked Sendable {
    // @unchecked: written once by the thread before join() returns, read after; the lock orders both.
    private let lock = PthreadLock()
    private var value: Result<T, LabError>?

    func set(_ result: Result<T, LabError>) { lock.withLock { value = result } }

    func get() throws(LabError) -> T {
        let result = lock.withLock { value }
        guard let result else { throw LabError(.failed, "the namespace thread ended without a result") }
        return try result.get()
    }
}
