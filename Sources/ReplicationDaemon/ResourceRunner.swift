import DaemonSupport
import Foundation
import Logging
import ReplicationCore
import Synchronization
import TandemConfig
import TandemDrivers
import TandemStorage
import TandemTransport

typealias DaemonNode = ReplicationNode<DaemonTransport, DaemonBlockStore, DaemonMetadataStore, ResourceObserver>

/// One resource (volume 0) on this node: the production `ReplicationNode` on a dedicated thread.
///
/// The node and everything it touches synchronously (the metadata store, whose writes are durable and blocking) are
/// used by one thread at a time: the resource's thread, or a helper that may block too (a FUSE worker or an I/O
/// thread, never an event loop or the cooperative pool; see `Mailbox` and `ResourceProcessor`). Messages are
/// processed in arrival order: transport events (from the event loop), block-store completions (from the I/O
/// threads), device requests (FUSE, NBD) and control requests (from the control socket). The resource's thread ticks
/// the node every 100 ms on the monotonic clock, expires control requests that waited too long, and runs the stop
/// sequence.
///
/// Life cycle: `start` opens the disks, recovers the metadata (a crash leaves it unclean; the machine replays the
/// activity log) and starts the node; a `stop` request drains it and writes the metadata clean; then the thread
/// ends and `join` returns. The transport is started before and shut down after by the daemon, which owns it.
final class ResourceRunner: Sendable {
    static let tickInterval: Duration = .milliseconds(100)

    let plan: ResourcePlan
    let mailbox: Mailbox
    /// How threads that may block deliver messages (the FUSE file, the block store's completions).
    let processor: ResourceProcessor
    /// The role and the device's holders, shared with the device frontends.
    let exportState = DeviceExportState()
    private let thread = Mutex<DaemonThread?>(nil)

    init(plan: ResourcePlan, mailbox: Mailbox) {
        self.plan = plan
        self.mailbox = mailbox
        self.processor = ResourceProcessor(mailbox: mailbox)
    }

    /// Starts the thread. `started` is called once, from the thread: `ok` once the node runs, or `failed` with the
    /// reason (the disk or metadata could not be opened or recovered), after which the thread has ended.
    func start(
        transport: TCPReplicationTransport, pause: ReceivePause, logger: Logger, handlerTimeout: Duration,
        started: @escaping @Sendable (ControlResponse) -> Void
    ) {
        let plan = plan
        let mailbox = mailbox
        let processor = processor
        let exportState = exportState
        let handle = DaemonThread.start(name: "tandem-\(plan.resourceName)") {
            switch RunnerLoop.open(plan: plan, processor: processor, exportState: exportState, transport: transport,
                pause: pause, logger: logger, handlerTimeout: handlerTimeout)
            {
            case .failure(let failure):
                RunnerLoop.refuseAll(mailbox.close(), "\(plan.resourceName) is not up")
                started(ControlResponse(.failed, failure.message))
            case .success(let loop):
                processor.attach(loop)
                started(ControlResponse(.ok))
                loop.run()
            }
        }
        thread.withLock { $0 = handle }
    }

    /// Sends a request to the thread and waits for its answer.
    func submit(_ kind: RunnerRequest.Kind) async -> ControlResponse {
        let mailbox = mailbox
        let name = plan.resourceName
        return await withCheckedContinuation { continuation in
            let request = RunnerRequest(kind: kind) { continuation.resume(returning: $0) }
            if !mailbox.post(request) {
                continuation.resume(returning: ControlResponse(.refused, "\(name) is busy or going down; try again"))
            }
        }
    }

    /// Waits for the thread to end (after a stop, or a failed start).
    func join() {
        thread.withLock { $0 }?.join()
    }
}

/// Delivers messages from threads that may block (FUSE workers, the block store's I/O threads, the replication
/// connection's receiver threads) and, when nobody holds the resource, processes them on the calling thread instead
/// of waking the resource's thread: see `Mailbox`.
///
/// A helper that holds the resource may also keep one disk request the node issued and carry it out itself once it
/// has released the resource, then deliver that request's completion the same way. So a FUSE write on a
/// StandAlone or protocol A resource goes from the FUSE worker to the disk and back to the kernel on one thread; with
/// the pool alone it took four hand-overs (worker to resource thread to I/O thread and back twice).
///
/// Never call `deliver` from an event loop or Swift's cooperative pool: it may write metadata or data synchronously.
final class ResourceProcessor: @unchecked Sendable {
    // @unchecked: `loop` and `store` are written once, by the resource's thread in `attach`, before helpers are
    // allowed; a helper reads them only after `postHolding` handed it the resource, which the mailbox's lock orders
    // after that write. The loop itself is touched only by whoever holds the resource.
    let mailbox: Mailbox
    private var loop: RunnerLoop?
    private var store: FileBlockStore?

    init(mailbox: Mailbox) { self.mailbox = mailbox }

    /// The resource is open: helpers may hold it from now on.
    func attach(_ loop: RunnerLoop) {
        self.loop = loop
        self.store = loop.blocks.store
        mailbox.allowHelpers()
    }

    /// Posts `message`, and processes the resource here if nobody holds it. False when the resource is gone (the
    /// message was not taken; a request must then be answered by the caller). Without `mayRunDiskRequest` the disk
    /// requests of the turn all go to the I/O threads: for a thread that must stay responsive, as the meta socket's
    /// receiver must (a ping answered late is a connection lost).
    func deliver(_ message: Mailbox.Message, mayRunDiskRequest: Bool = true) -> Bool {
        var next = message
        var accepted: Bool?
        while true {
            let delivery = mailbox.postHolding(next)
            if accepted == nil {
                if case .refused = delivery { accepted = false } else { accepted = true }
            }
            guard case .held(let batch) = delivery else { break }
            guard let loop, let store else {
                preconditionFailure("a helper held the resource before attach allowed helpers")
            }
            guard let request = loop.processAsHelper(batch, keepingDiskRequest: mayRunDiskRequest) else { break }
            // Outside the hold: other threads process the resource while this one waits for the disk.
            next = .event(store.runHere(request))
        }
        return accepted ?? false
    }
}

/// The resource's state. Created on the resource's thread, then used only by whoever holds the resource (the
/// resource's thread or a helper; see `Mailbox`). The stop sequence and the ticks run only on the resource's thread.
final class RunnerLoop {
    struct OpenFailure: Error {
        var message: String
    }

    /// A stop in progress: demote (for `down`), disconnect, wait for the node to drain, then close.
    struct Stop {
        enum Phase {
            case demoting(commandID: UInt64)
            case disconnecting(commandID: UInt64)
            case draining
        }

        var mode: StopMode
        var phase: Phase
        var deadline: MonotonicInstant
        var reply: @Sendable (ControlResponse) -> Void
    }

    let plan: ResourcePlan
    let mailbox: Mailbox
    let exportState: DeviceExportState
    let logger: Logger
    var node: DaemonNode
    let observer: ResourceObserver
    let blocks: DaemonBlockStore
    let metadata: FileMetadataStore
    let handlers: HandlerRunner
    let counters: TrafficCounters
    private var stop: Stop?
    private var finished = false
    private var nextCommandID: UInt64 = 1
    private var nextRequestID: UInt64 = 1

    private init(
        plan: ResourcePlan, mailbox: Mailbox, exportState: DeviceExportState, logger: Logger, node: DaemonNode,
        observer: ResourceObserver, blocks: DaemonBlockStore, metadata: FileMetadataStore, handlers: HandlerRunner,
        counters: TrafficCounters
    ) {
        self.counters = counters
        self.plan = plan
        self.mailbox = mailbox
        self.exportState = exportState
        self.logger = logger
        self.node = node
        self.observer = observer
        self.blocks = blocks
        self.metadata = metadata
        self.handlers = handlers
    }

    // MARK: Opening

    /// Opens the metadata and recovers it, opens the backing device, builds the machine and starts the node.
    static func open(
        plan: ResourcePlan, processor: ResourceProcessor, exportState: DeviceExportState,
        transport: TCPReplicationTransport, pause: ReceivePause, logger: Logger, handlerTimeout: Duration
    ) -> Result<RunnerLoop, OpenFailure> {
        let mailbox = processor.mailbox
        for line in plan.notApplied { logger.warning("\(line)") }
        let metadata: FileMetadataStore
        let recovered: RecoveredMetadata
        do {
            metadata = try FileMetadataStore(
                configuration: plan.metadataConfiguration,
                environment: StorageEnvironment(log: { line in logger.notice("\(line)") }))
            recovered = try metadata.recover()
        } catch {
            logger.error("attach failed: \(error)")
            return .failure(OpenFailure(message: "\(plan.resourceName): attach failed: \(error)"))
        }
        let store: FileBlockStore
        do {
            store = try FileBlockStore(
                path: plan.backingDisk, options: FileBlockStore.Options(dataSizeBytes: metadata.dataSizeBytes),
                log: { line in logger.warning("\(line)") }, completions: { _ = processor.deliver(.event($0)) })
        } catch {
            metadata.close()
            logger.error("attach failed: \(error)")
            return .failure(OpenFailure(message: "\(plan.resourceName): attach failed: \(error)"))
        }
        var settings = plan.settings
        if let layout = metadata.layout {
            // The metadata's activity-log geometry wins over drbd.conf's (FileMetadataStore.recover logs the clash).
            settings.activityLogExtents = layout.activityLogExtents
            settings.activityLogRingSlots = layout.activityLogSlots
        }
        var random = SystemRandomNumberGenerator()
        let machine = ReplicationMachine(
            settings: settings, recovered: recovered, randomSeed: UInt64.random(in: 1...UInt64.max, using: &random))
        let handlers = HandlerRunner(name: plan.resourceName, timeout: handlerTimeout, logger: logger)
        let observer = ResourceObserver(plan: plan, logger: logger, handlers: handlers) { exitStatus in
            mailbox.post(.fencePeerFinished(exitStatus: exitStatus))
        }
        let counters = TrafficCounters()
        let blocks = DaemonBlockStore(store: store, counters: counters)
        var node = DaemonNode(
            machine: machine, transport: DaemonTransport(inner: transport, pause: pause, counters: counters),
            blocks: blocks, metadata: DaemonMetadataStore(store: metadata, counters: counters), observer: observer)
        node.start(now: DaemonClock.now)
        if node.metadataFailed {
            store.close()
            metadata.close()
            handlers.stop()
            return .failure(OpenFailure(message: "\(plan.resourceName): attach failed: the metadata could not be written"))
        }
        logger.notice(
            "attached \(plan.backingDisk) (\(store.ioMode)), \(machine.sizeBytes) bytes of data, disk \(node.status.disk)")
        exportState.publish(role: node.machine.role)
        return .success(
            RunnerLoop(
                plan: plan, mailbox: mailbox, exportState: exportState, logger: logger, node: node,
                observer: observer, blocks: blocks, metadata: metadata, handlers: handlers, counters: counters))
    }

    // MARK: The loop

    /// The resource's thread: holds the resource whenever something is queued that no helper took, and every tick.
    func run() {
        var nextTick = DaemonClock.now + ResourceRunner.tickInterval
        while !finished {
            process(mailbox.hold(until: nextTick))
            if !finished {
                let now = DaemonClock.now
                if now >= nextTick {
                    node.handle(.tick, now: now)
                    observer.expire(now: now)
                    exportState.publish(role: node.machine.role)
                    nextTick = nextTick + ResourceRunner.tickInterval
                    if nextTick < now { nextTick = now + ResourceRunner.tickInterval }
                }
                advanceStop(now: now)
            }
            mailbox.release()
        }
    }

    /// A helper's turn (see `ResourceProcessor`): processes `first` and whatever arrives meanwhile, for at most
    /// `helperRoundsMaximum` batches (a helper has its own work: a FUSE worker its queue, an I/O thread the pool's),
    /// then releases the resource. Returns the one disk request left for the helper to carry out itself, if any.
    func processAsHelper(_ first: [Mailbox.Message], keepingDiskRequest: Bool = true) -> FileBlockStore.Request? {
        if keepingDiskRequest { blocks.openHelperSlot() }
        var batch = first
        var rounds = 1
        while true {
            process(batch)
            guard rounds < Self.helperRoundsMaximum else { break }
            batch = mailbox.takeMore()
            if batch.isEmpty { break }
            rounds += 1
        }
        let request = blocks.closeHelperSlot()
        // Only the resource's thread advances a stop (it closes the block store, which an I/O thread cannot do).
        mailbox.release(wantResourceThread: stop != nil)
        return request
    }

    static let helperRoundsMaximum = 16

    private func process(_ batch: [Mailbox.Message]) {
        for message in batch {
            switch message {
            case .event(let event):
                if !finished { handle(event) }
            case .request(let request):
                if finished {
                    request.reply(ControlResponse(.refused, "\(plan.resourceName) went down"))
                } else {
                    handle(request)
                }
            case .device(let request):
                if finished || stop != nil {
                    request.completion(.unavailable)
                } else {
                    handle(request)
                }
            }
        }
        if !finished { exportState.publish(role: node.machine.role) }
    }

    private func handle(_ event: ReplicationEvent) {
        switch event {
        case .localIOCompleted: blocks.completionArrived()
        case .packet(let packet): counters.networkReceivedBytes += TrafficCounters.payloadBytes(packet)
        default: break
        }
        node.handle(event, now: DaemonClock.now)
    }

    private func handle(_ request: RunnerRequest) {
        let now = DaemonClock.now
        if stop != nil {
            switch request.kind {
            case .status, .dumpMetadata: break
            default: return request.reply(ControlResponse(.refused, "\(plan.resourceName) is going down"))
            }
        }
        switch request.kind {
        case .command(let command, let timeout):
            if case .demote = command, let refusal = exportState.heldOpenRefusal(resource: plan.resourceName) {
                logger.notice("operator: secondary refused: \(refusal)")
                return request.reply(ControlResponse(.refused, refusal))
            }
            let id = allocateCommandID()
            observer.commands[id] = ResourceObserver.Pending(
                waiter: .client(request.reply), deadline: now + timeout, what: Self.describe(command))
            logger.notice("operator: \(Self.describe(command))")
            node.handle(.command(id: id, command), now: now)
            if case .verify = command, let pending = observer.commands[id], node.status.connection == .verifySource {
                // As drbdadm verify: answer once the verify runs; its progress shows in status, its end in the log.
                observer.commands[id]?.waiter = .detached
                if case .client(let reply) = pending.waiter {
                    reply(ControlResponse(.ok, "online verify started; watch 'tandem adm status'"))
                }
            }
        case .status:
            var response = ControlResponse(.ok)
            response.status = statusReport()
            request.reply(response)
        case .io(let operation, let timeout):
            submit(operation, waiter: .client(request.reply), deadline: now + timeout, describedAs: "")
        case .dumpMetadata:
            var response = ControlResponse(.ok)
            response.dump = metadata.dump()
            request.reply(response)
        case .fault(let fault):
            request.reply(applyFault(fault))
        case .stop(let mode, let timeout):
            if mode == .down, let refusal = exportState.heldOpenRefusal(resource: plan.resourceName) {
                logger.notice("operator: down refused: \(refusal)")
                return request.reply(ControlResponse(.refused, refusal))
            }
            beginStop(mode: mode, deadline: now + timeout, reply: request.reply)
        }
    }

    /// A device frontend's read, write or flush, through the replication engine like any application I/O.
    private func handle(_ request: DeviceRequest) {
        let now = DaemonClock.now
        submit(request.operation, waiter: .device(request.completion), deadline: now, describedAs: "device ")
    }

    /// Hands application I/O to the node; the observer answers `waiter` when the node completes it.
    private func submit(
        _ operation: DeviceRequest.Operation, waiter: ResourceObserver.Pending.Waiter, deadline: MonotonicInstant,
        describedAs prefix: String
    ) {
        let id = nextRequestID
        nextRequestID += 1
        let event: ReplicationEvent
        let what: String
        switch operation {
        case .read(let offset, let length):
            event = .read(requestID: id, range: BlockRange(sector: offset / 512, sizeBytes: length))
            what = "read of \(length) bytes at \(offset)"
        case .write(let offset, let payload, let forceUnitAccess):
            event = .write(ApplicationWrite(
                requestID: id, offsetBytes: offset, payload: payload, forceUnitAccess: forceUnitAccess))
            what = "write of \(payload.count) bytes at \(offset)"
        case .zeroes(let offset, let length, let forceUnitAccess):
            event = .write(.zeroing(
                requestID: id, offsetBytes: offset, lengthBytes: length, forceUnitAccess: forceUnitAccess))
            what = "zeroing of \(length) bytes at \(offset)"
        case .flush:
            event = .flush(requestID: id)
            what = "flush"
        }
        observer.requests[id] = ResourceObserver.Pending(waiter: waiter, deadline: deadline, what: prefix + what)
        node.handle(event, now: DaemonClock.now)
    }

    /// Answers every request left in a closed mailbox.
    static func refuseAll(_ messages: [Mailbox.Message], _ reason: String) {
        for message in messages {
            switch message {
            case .request(let request): request.reply(ControlResponse(.refused, reason))
            case .device(let request): request.completion(.unavailable)
            case .event: break
            }
        }
    }

    private func allocateCommandID() -> UInt64 {
        defer { nextCommandID += 1 }
        return nextCommandID
    }

    /// A command issued by the stop sequence itself.
    private func internalCommand(_ command: OperatorCommand, deadline: MonotonicInstant) -> UInt64 {
        let id = allocateCommandID()
        observer.commands[id] = ResourceObserver.Pending(
            waiter: .stopSequence, deadline: deadline, what: Self.describe(command))
        node.handle(.command(id: id, command), now: DaemonClock.now)
        return id
    }

    static func describe(_ command: OperatorCommand) -> String {
        switch command {
        case .promote(let force): force ? "primary --force" : "primary"
        case .demote: "secondary"
        case .connect(let discard): discard ? "connect --discard-my-data" : "connect"
        case .disconnect: "disconnect"
        case .invalidate: "invalidate"
        case .invalidateRemote: "invalidate-remote"
        case .verify: "verify"
        case .pauseResync: "pause-sync"
        case .resumeResync: "resume-sync"
        case .outdate: "outdate"
        case .resumeIO: "resume-io"
        case .newCurrentUUID(let clear): clear ? "new-current-uuid --clear-bitmap" : "new-current-uuid"
        case .detach: "detach"
        }
    }

    // MARK: Stopping

    private func beginStop(mode: StopMode, deadline: MonotonicInstant, reply: @escaping @Sendable (ControlResponse) -> Void) {
        logger.notice(mode == .down ? "going down" : "shutting down (terminating)")
        let phase: Stop.Phase
        if mode == .down && node.status.role == .primary {
            phase = .demoting(commandID: internalCommand(.demote, deadline: deadline))
        } else {
            phase = .disconnecting(commandID: internalCommand(.disconnect, deadline: deadline))
        }
        stop = Stop(mode: mode, phase: phase, deadline: deadline, reply: reply)
    }

    private func advanceStop(now: MonotonicInstant) {
        guard var current = stop else { return }
        switch current.phase {
        case .demoting(let id):
            guard let outcome = observer.internalOutcomes.removeValue(forKey: id) else { return }
            if case .refused(let reason) = outcome {
                stop = nil
                return current.reply(ControlResponse(.refused, "\(plan.resourceName) cannot go down: \(reason)"))
            }
            current.phase = .disconnecting(commandID: internalCommand(.disconnect, deadline: current.deadline))
            stop = current
        case .disconnecting(let id):
            guard observer.internalOutcomes.removeValue(forKey: id) != nil else { return }
            current.phase = .draining
            stop = current
            advanceStop(now: now)
        case .draining:
            let status = node.status
            let drained = status.connection == .standAlone && status.requestsInFlight == 0 && blocks.outstanding == 0
            if drained { return finish(clean: true, reply: current.reply) }
            guard now >= current.deadline else { return }
            let stuck =
                "connection \(status.connection.rawValue), \(status.requestsInFlight) requests in flight, "
                + "\(blocks.outstanding) disk requests outstanding"
            switch current.mode {
            case .down:
                stop = nil
                current.reply(ControlResponse(
                    .timeout, "\(plan.resourceName) did not drain in time (\(stuck)); it stays up, disconnected"))
            case .terminate:
                logger.error("did not drain in time (\(stuck)); leaving the metadata unclean")
                finish(clean: false, reply: current.reply)
            }
        }
    }

    /// Closes the disk, writes the metadata clean (unless the drain failed) and ends the loop.
    private func finish(clean: Bool, reply: @escaping @Sendable (ControlResponse) -> Void) {
        stop = nil
        finished = true
        if clean {
            blocks.store.close()
        } else {
            // The drain failed, most likely on a hung disk: closing the store would wait for its stuck I/O threads
            // for ever (and so would its deinit). The process is terminating; leave them behind so that it can.
            _ = Unmanaged.passRetained(blocks.store)
        }
        Self.refuseAll(mailbox.close(), "\(plan.resourceName) went down")
        exportState.publish(role: .secondary)
        observer.failAll("\(plan.resourceName) went down")
        var wroteClean = false
        if clean {
            node.shutdown(now: DaemonClock.now)
            wroteClean = !node.metadataFailed
        }
        metadata.close()
        handlers.stop()
        if wroteClean {
            logger.notice("down: metadata written clean")
            reply(ControlResponse(.ok))
        } else {
            logger.error("down: the metadata was not written clean; the activity log is replayed at the next attach")
            reply(ControlResponse(.failed, "\(plan.resourceName) went down without writing its metadata clean"))
        }
    }

    // MARK: Status and faults

    func statusReport() -> ResourceStatusReport {
        let status = node.status
        var report = ResourceStatusReport(name: plan.resourceName, node: plan.nodeName, peerNode: plan.peerName)
        report.volume = plan.volumeNumber
        report.minor = plan.device.minor
        report.preserveDirectory = plan.metadataConfiguration.preserveDirectory
        report.up = true
        report.role = status.role.rawValue
        report.disk = status.disk.description
        report.connection = status.connection.rawValue
        report.peerRole = status.peerRole.rawValue
        report.peerDisk = status.peerDisk.description
        report.uuids = GenerationIdentifiers(
            current: status.uuids.current, bitmap: status.uuids.bitmap, history1: status.uuids.history1,
            history2: status.uuids.history2)
        report.flags = node.machine.flags.names
        report.sizeBytes = node.machine.sizeBytes
        report.outOfSyncKiB = status.outOfSyncBytes / 1024
        report.resync = status.resync.map { figures in
            ResyncReport(
                direction: figures.direction.rawValue, percentDone: figures.percentDone,
                totalKiB: figures.totalBytes / 1024, remainingKiB: figures.remainingBytes / 1024,
                speedKiBPerSecond: figures.averageBytesPerSecond / 1024, etaSeconds: figures.estimatedSecondsRemaining,
                paused: figures.paused)
        }
        report.verifyMismatchesKiB = status.verifyMismatches.map { $0 * SyncBitmap.blockBytes / 1024 }
        report.requestsInFlight = status.requestsInFlight
        report.suspended = status.ioSuspendedForFencing ? "fencing" : nil
        report.fencingPeer = status.fencingPeer ? true : nil
        let depths = node.machine.queueDepths
        report.counters = ResourceCounters(
            networkSentKiB: counters.networkSentBytes / 1024, networkReceivedKiB: counters.networkReceivedBytes / 1024,
            diskWrittenKiB: counters.diskWrittenBytes / 1024, diskReadKiB: counters.diskReadBytes / 1024,
            activityLogUpdates: counters.activityLogTransactions, bitmapUpdates: counters.bitmapPageWrites,
            localPending: blocks.outstanding, peerPending: depths.peerPendingWrites,
            unacknowledged: depths.receivedWritesUnacknowledged, applicationPending: status.requestsInFlight,
            epochs: depths.epochsInFlight)
        report.counters?.diskFlushes = counters.diskFlushes
        report.heldOpenBy = exportState.holders
        report.ioMode = blocks.store.ioMode.description
        report.replicationProtocol = plan.settings.replicationProtocol.rawValue
        report.backingDevice = plan.backingDisk
        report.device = plan.device.path
        return report
    }

    private func applyFault(_ fault: FaultRequest) -> ControlResponse {
        let faults = blocks.store.faults
        switch fault.action {
        case .add:
            let kinds: StorageFaults.Kinds
            switch fault.kinds ?? "both" {
            case "reads": kinds = .reads
            case "writes": kinds = .writes
            case "both": kinds = .readsAndWrites
            default: return ControlResponse(.badRequest, "fault kinds must be reads, writes or both")
            }
            guard let offset = fault.offsetBytes, let length = fault.lengthBytes, length > 0,
                offset <= UInt64.max - length
            else {
                return ControlResponse(.badRequest, "fault add needs offsetBytes and a positive lengthBytes")
            }
            do {
                try faults.add(StorageFaults.Rule(kinds: kinds, rangeBytes: offset..<offset + length))
            } catch {
                return ControlResponse(.refused, error.description)
            }
        case .clear:
            faults.clear()
        case .list:
            break
        case .flushes:
            faults.failFlushes = fault.failFlushes ?? true
        }
        logger.warning("test fault injection: \(fault.action.rawValue); rules now \(faults.rules)")
        var response = ControlResponse(.ok)
        response.faults = faults.rules.map(\.description) + (faults.failFlushes ? ["fail every flush"] : [])
        return response
    }
}
