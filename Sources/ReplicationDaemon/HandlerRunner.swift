#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Logging
import ReplicationCore
import TandemConfig

/// Runs a resource's drbd.conf handlers (`handlers { split-brain "..."; ... }`) as `/bin/sh -c COMMAND`, one at a
/// time, on a thread of its own: the resource's thread only queues them and never waits for a script.
///
/// As DRBD does, the script gets the resource's details in its environment (DRBD_RESOURCE, DRBD_PEER, ...; see
/// `environment(for:)`). Unlike DRBD, a script has a time limit: after `timeout` it is sent SIGTERM (its whole
/// process group), and SIGKILL 5 seconds later. The exit status is logged, and handed to `Job.finished` for the
/// handlers whose status the replication machine reads (fence-peer).
///
/// Limits: at most `queueMaximum` runs wait; more are dropped with a log line.
final class HandlerRunner: Sendable {
    struct Job: Sendable {
        var handler: DrbdHandler
        var command: String
        var environment: [String: String]
        /// Called on the handler thread with the exit status: nil when the script could not be started, was
        /// killed at its time limit or died of a signal.
        var finished: (@Sendable (Int32?) -> Void)? = nil
    }

    static let queueMaximum = 16
    static let killGrace: Duration = .seconds(5)

    let timeout: Duration
    private let logger: Logger
    private let worker: SerialWorker<Job>

    init(name: String, timeout: Duration, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
        worker = SerialWorker(name: "tandem-h-\(name)", queueMaximum: Self.queueMaximum) { job in
            Self.execute(job, timeout: timeout, logger: logger)
        }
    }

    /// Queues a run; never blocks.
    func submit(_ job: Job) {
        if !worker.submit(job) {
            logger.error("handler \(job.handler.rawValue) not run: \(Self.queueMaximum) handler runs already wait")
            job.finished?(nil)
        }
    }

    /// Lets the queued runs finish (each within its time limit) and joins the thread.
    func stop() { worker.stop() }

    private static func execute(_ job: Job, timeout: Duration, logger: Logger) {
        logger.notice("running handler \(job.handler.rawValue): \(job.command)")
        switch ChildProcess.run(
            ["/bin/sh", "-c", job.command], environment: job.environment, timeout: timeout, killGrace: Self.killGrace,
            output: .inherit)
        {
        case .success(let outcome):
            if outcome.timedOut { logger.error("handler \(job.handler.rawValue) exceeded its \(timeout) limit") }
            logger.notice("handler \(job.handler.rawValue) \(outcome)")
            job.finished?(outcome.timedOut ? nil : outcome.exitStatus)
        case .failure(let error):
            logger.error("handler \(job.handler.rawValue) could not be started: \(error)")
            job.finished?(nil)
        }
    }
}

extension ResourcePlan {
    /// The environment DRBD gives its handlers (drbd-utils: DRBD_RESOURCE, DRBD_MINOR, DRBD_VOLUME,
    /// DRBD_BACKING_DEV, DRBD_CONF, DRBD_PEER_ADDRESS, DRBD_PEER_AF, DRBD_MY_ADDRESS, DRBD_MY_AF, DRBD_PEERS; DRBD 8.3's
    /// DRBD_PEER), plus PATH so that scripts find the usual tools.
    func handlerEnvironment() -> [String: String] {
        [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "DRBD_RESOURCE": resourceName,
            "DRBD_MINOR": String(device.minor),
            "DRBD_VOLUME": String(volumeNumber),
            "DRBD_BACKING_DEV": backingDisk,
            "DRBD_CONF": configPath,
            "DRBD_PEER_ADDRESS": peerAddress.host,
            "DRBD_PEER_AF": peerAddress.family.rawValue,
            "DRBD_MY_ADDRESS": localAddress.host,
            "DRBD_MY_AF": localAddress.family.rawValue,
            "DRBD_PEERS": peerName,
            "DRBD_PEER": peerName,
        ]
    }
}
