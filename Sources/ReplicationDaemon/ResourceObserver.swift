import Foundation
import Logging
import ReplicationCore
import TandemConfig
import TandemDrivers

/// The replication node's observer inside the daemon: it answers the control requests waiting for a command or an
/// application request to complete, logs the machine's lines, and hands handlers to the `HandlerRunner`.
///
/// Confined to the resource's thread, like the node that calls it.
final class ResourceObserver: ReplicationObserver {
    /// Someone waiting for a command or request: a control-socket client, or the resource's own stop sequence.
    struct Pending {
        enum Waiter {
            case client(@Sendable (ControlResponse) -> Void)
            /// The stop sequence's own commands: the outcome is left in `internalOutcomes`.
            case stopSequence
            /// Nobody waits any more (an online verify runs for as long as the disk is large): only logged.
            case detached
            /// A device frontend's I/O. It never expires: a block device's request ends when the engine ends it
            /// (completed, or failed because no good copy is reachable), as a DRBD request does.
            case device(@Sendable (DeviceOutcome) -> Void)
        }

        var waiter: Waiter
        var deadline: MonotonicInstant
        var what: String

        /// Whether a deadline applies: not to a detached command nor to device I/O.
        var expires: Bool {
            switch waiter {
            case .detached, .device: false
            case .client, .stopSequence: true
            }
        }
    }

    let plan: ResourcePlan
    let logger: Logger
    let handlers: HandlerRunner
    var commands: [UInt64: Pending] = [:]
    /// Application requests (the test/diagnostic `write`, `read`, `flush`) by request ID.
    var requests: [UInt64: Pending] = [:]
    var internalOutcomes: [UInt64: CommandOutcome] = [:]

    /// Feeds fence-peer's exit status back to the machine (through the resource's mailbox).
    let fencePeerFinished: @Sendable (Int32?) -> Void

    init(plan: ResourcePlan, logger: Logger, handlers: HandlerRunner, fencePeerFinished: @escaping @Sendable (Int32?) -> Void) {
        self.plan = plan
        self.logger = logger
        self.handlers = handlers
        self.fencePeerFinished = fencePeerFinished
    }

    func commandCompleted(commandID: UInt64, _ outcome: CommandOutcome) {
        guard let pending = commands.removeValue(forKey: commandID) else { return }
        switch pending.waiter {
        case .stopSequence:
            internalOutcomes[commandID] = outcome
        case .detached, .device:
            logger.notice("\(pending.what) finished: \(outcome)")
        case .client(let reply):
            switch outcome {
            case .done: reply(ControlResponse(.ok))
            case .refused(let reason):
                logger.notice("\(pending.what) refused: \(reason)")
                reply(ControlResponse(.refused, reason))
            }
        }
    }

    func writeCompleted(requestID: UInt64, _ outcome: RequestOutcome) {
        answer(requestID, outcome, payload: [])
    }

    func readCompleted(requestID: UInt64, _ outcome: RequestOutcome, payload: [UInt8]) {
        answer(requestID, outcome, payload: payload)
    }

    func flushCompleted(requestID: UInt64, _ outcome: RequestOutcome) {
        answer(requestID, outcome, payload: [])
    }

    private func answer(_ requestID: UInt64, _ outcome: RequestOutcome, payload: [UInt8]) {
        guard let pending = requests.removeValue(forKey: requestID) else { return }
        switch (pending.waiter, outcome) {
        case (.device(let completion), .success): completion(.success(payload))
        case (.device(let completion), .failure(let failure)): completion(.failure(failure))
        case (.client(let reply), .success):
            var response = ControlResponse(.ok)
            if !payload.isEmpty { response.dataBase64 = Data(payload).base64EncodedString() }
            reply(response)
        case (.client(let reply), .failure(let failure)):
            reply(ControlResponse(.refused, "\(pending.what) failed: \(failure.rawValue)"))
        case (.stopSequence, _), (.detached, _):
            break
        }
    }

    func runHandler(_ handler: DrbdHandler) {
        let report = handler == .fencePeer ? fencePeerFinished : nil
        guard let command = plan.handlers[handler] else {
            if let report {
                // ResourcePlan refuses fencing without a fence-peer handler; this is only reached if that changes.
                logger.error("fencing needs a fence-peer handler and none is configured")
                report(nil)
            } else {
                logger.info("handler \(handler.rawValue) is not configured; nothing to run")
            }
            return
        }
        handlers.submit(HandlerRunner.Job(
            handler: handler, command: command, environment: plan.handlerEnvironment(), finished: report))
    }

    func log(_ line: String) {
        logger.notice("\(line)")
    }

    /// Answers `timeout` to everyone whose deadline has passed. A late completion then finds nobody and is dropped.
    func expire(now: MonotonicInstant) {
        for (id, pending) in commands where pending.deadline <= now && pending.expires {
            commands[id] = nil
            timedOut(pending, commandID: id)
        }
        for (id, pending) in requests where pending.deadline <= now && pending.expires {
            requests[id] = nil
            timedOut(pending, commandID: nil)
        }
    }

    private func timedOut(_ pending: Pending, commandID: UInt64?) {
        logger.warning("\(pending.what) did not complete in time")
        switch pending.waiter {
        case .client(let reply):
            reply(ControlResponse(.timeout, "\(pending.what) did not complete in time; it may still complete"))
        case .stopSequence:
            if let commandID { internalOutcomes[commandID] = .refused("\(pending.what) did not complete in time") }
        case .detached, .device:
            break
        }
    }

    /// Answers everyone still waiting: the resource is going away.
    func failAll(_ message: String) {
        for pending in Array(commands.values) + Array(requests.values) {
            switch pending.waiter {
            case .client(let reply): reply(ControlResponse(.refused, message))
            case .device(let completion): completion(.unavailable)
            case .stopSequence, .detached: break
            }
        }
        commands.removeAll()
        requests.removeAll()
    }
}
