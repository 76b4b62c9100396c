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
/// At most `queueMaximum` events wait; more are dropped, each with a log line. Each run is bounded by `timeout`.
final class AlertRunner: Sendable {
    struct Event: Sendable {
        var kind: ClusterAlertKind
        var detail: String
        var unixSeconds: Double
    }

    static let queueMaximum = 64
    static let timeout: Duration = .seconds(30)

    private let log: ClusterLog
    /// Nil without alert programs.
    private let worker: SerialWorker<Event>?

    init(scripts: [String], node: String, log: ClusterLog) {
        self.log = log
        worker = scripts.isEmpty ? nil : SerialWorker(name: "hb-alert", queueMaximum: Self.queueMaximum) { event in
            Self.run(event, scripts: scripts, node: node, log: log)
        }
    }

    func post(_ kind: ClusterAlertKind, _ detail: String) {
        guard let worker else { return }
        if !worker.submit(Event(kind: kind, detail: detail, unixSeconds: Date().timeIntervalSince1970)) {
            log.log(.warning, "alert \(kind.rawValue) dropped: \(Self.queueMaximum) alerts already wait (\(detail))")
        }
    }

    /// Runs what is queued, then stops.
    func close() { worker?.stop() }

    private static func run(_ event: Event, scripts: [String], node: String, log: ClusterLog) {
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
