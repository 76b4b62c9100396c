#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import Foundation
import MembershipCore
import ResourceCore

/// Runs ha.cf's `alert` programs on cluster events, one event at a time, in order, on a thread of its own, so that
/// a slow script (a mail being sent) never holds up the cluster. Each program gets the event in its environment:
///
/// - `TANDEM_ALERT_KIND`: node-dead, link-down, takeover, fenced, fence-failed, resource-failure or ipfail;
/// - `TANDEM_ALERT_NODE`: this node; `TANDEM_ALERT_DETAIL`: what happened, in words;
/// - `TANDEM_ALERT_TIMESTAMP`: when, as Unix seconds with milliseconds.
///
/// At most `queueMaximum` events wait; more are dropped and counted in the log. Each run is bounded by
/// `timeout`.
final class AlertRunner: @unchecked Sendable {
    // @unchecked: `queue`, `dropped` and `closing` are guarded by `lock`; `thread` is set once in the initializer.
    struct Event: Sendable {
        var kind: ClusterAlertKind
        var detail: String
        var unixSeconds: Double
    }

    static let queueMaximum = 64
    static let timeout: Duration = .seconds(30)

    private let scripts: [String]
    private let node: String
    private let log: ClusterLog
    private let lock = PthreadLock()
    private var queue: [Event] = []
    private var dropped = 0
    private var closing = false
    private var thread: DaemonThread?

    init(scripts: [String], node: String, log: ClusterLog) {
        self.scripts = scripts
        self.node = node
        self.log = log
        guard !scripts.isEmpty else { return }
        thread = DaemonThread.start(name: "hb-alert") { [self] in
            while let event = next() { run(event) }
        }
    }

    func post(_ kind: ClusterAlertKind, _ detail: String) {
        guard !scripts.isEmpty else { return }
        let event = Event(kind: kind, detail: detail, unixSeconds: Date().timeIntervalSince1970)
        lock.withLock {
            guard !closing else { return }
            guard queue.count < Self.queueMaximum else {
                dropped += 1
                return
            }
            queue.append(event)
            lock.broadcast()
        }
    }

    /// Runs what is queued, then stops.
    func close() {
        lock.withLock {
            closing = true
            lock.broadcast()
        }
        thread?.join()
    }

    private func next() -> Event? {
        let (event, droppedNow) = lock.withLock { () -> (Event?, Int) in
            while queue.isEmpty && !closing { lock.wait(until: DaemonClock.now + Duration.seconds(3600)) }
            defer { dropped = 0 }
            return (queue.isEmpty ? nil : queue.removeFirst(), dropped)
        }
        if droppedNow > 0 { log.log(.warning, "alert: \(droppedNow) events dropped (more than \(Self.queueMaximum) waiting)") }
        return event
    }

    private func run(_ event: Event) {
        let environment = [
            "PATH": ChildProcess.searchPath, "TANDEM_ALERT_KIND": event.kind.rawValue, "TANDEM_ALERT_NODE": node,
            "TANDEM_ALERT_DETAIL": event.detail, "TANDEM_ALERT_TIMESTAMP": String(format: "%.3f", event.unixSeconds),
        ]
        for script in scripts {
            switch ChildProcess.run([script], environment: environment, timeout: Self.timeout) {
            case .success(let outcome) where outcome.succeeded:
                continue
            case .success(let outcome):
                log.log(.warning, "alert \(script) for \(event.kind.rawValue) failed: \(outcome)")
            case .failure(let error):
                log.log(.warning, "alert \(script) for \(event.kind.rawValue) could not run: \(error)")
            }
        }
    }
}
