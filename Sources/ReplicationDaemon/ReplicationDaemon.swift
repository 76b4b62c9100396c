import DaemonSupport
import DeviceFrontend
import Foundation
import Logging
import NIOCore
import NIOPosix
import ReplicationCore
import Synchronization
import TandemConfig
import TandemStorage
import TandemTransport

/// A response that ends a request early, carried through `Result`.
struct ResponseError: Error {
    var response: ControlResponse
    init(_ response: ControlResponse) { self.response = response }
    init(_ result: ControlResult, _ message: String) { self.response = ControlResponse(result, message) }
}

/// What `tandem replicad` is started with.
public struct DaemonOptions: Sendable {
    public var configDirectory: String
    public var runDirectory: String
    public var nodeName: String
    /// Handler scripts are sent SIGTERM after this long.
    public var handlerTimeout: Duration = .seconds(60)
    /// How long `down` (and SIGTERM) waits for a resource to drain.
    public var stopTimeout: Duration = .seconds(30)
    /// Where split-brain victims' blocks are kept, one folder per resource; nil for /var/lib/tandem/preserved.
    public var preserveDirectory: String?
    /// Resources whose NBD export also listens on TCP, by resource name. Every resource that is up exports on its
    /// Unix socket (`nbdSocketPath`) in any case.
    public var nbdTCPAddresses: [String: NBDTCPAddress] = [:]
    /// Prepended to every device link (drbd.conf's `device`, /dev/tandem/by-res/NAME); empty for the real paths.
    /// Two nodes sharing one machine's /dev (the lab, the tests) each get their own root.
    public var deviceLinkRoot = ""
    /// Lets the loop device fall back to buffered I/O when the kernel will not do direct I/O on the FUSE file.
    /// Off by default: buffered loop over FUSE caches every block twice and risks a reclaim deadlock.
    public var allowBufferedLoop = false

    public init(configDirectory: String, runDirectory: String, nodeName: String) {
        self.configDirectory = configDirectory
        self.runDirectory = runDirectory
        self.nodeName = nodeName
    }

    public var configPath: String { (configDirectory as NSString).appendingPathComponent("drbd.conf") }
    public var socketPath: String { ControlProtocol.socketPath(runDirectory: runDirectory) }
    public var nbdDirectory: String { (runDirectory as NSString).appendingPathComponent("nbd") }

    /// Where a resource's block device lives: its FUSE mount under the run directory, and its links.
    func blockDevicePaths(_ plan: ResourcePlan) -> BlockDevicePaths {
        BlockDevicePaths(
            resourceName: plan.resourceName, devicePath: plan.device.path, nodeName: nodeName, backingDisk: plan.backingDisk,
            runDirectory: runDirectory, linkRoot: deviceLinkRoot)
    }

    /// `<run-dir>/nbd/<resource>.sock`: the resource's NBD export (export name = the resource name).
    public func nbdSocketPath(resource: String) -> String {
        (nbdDirectory as NSString).appendingPathComponent("\(resource).sock")
    }
}

/// Where a resource's NBD export listens on TCP (`--nbd-tcp RESOURCE=HOST:PORT`).
public struct NBDTCPAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// The replication daemon: the table of resources that are up on this node, and the answers to control requests.
///
/// Resources are brought up by `up` (or `attach`), as drbdadm does, never at start. Each resource that is up has a
/// `ResourceRunner` (its thread) and a `TCPReplicationTransport` (its sockets, on the daemon's event loops). drbd.conf
/// is read again at every `up`, `attach` and `list`, so an edited file takes effect at the next `up`, as with
/// drbdadm.
public final class ReplicationDaemon: Sendable {
    enum Slot: Sendable {
        /// `up` is opening the resource; other requests for it are refused as busy.
        case starting
        case running(RunningResource)
        /// `down` (or the daemon's termination) is closing it.
        case stopping
    }

    struct RunningResource: Sendable {
        var runner: ResourceRunner
        var transport: TCPReplicationTransport
        /// The NBD export's listeners: the Unix socket, and TCP if configured.
        var exports: [NBDServer]
        var mailbox: Mailbox
        var blockDevice: BlockDeviceSlot
        var blockDevicePaths: BlockDevicePaths
    }

    public let options: DaemonOptions
    let logger: Logger
    let group: any EventLoopGroup
    private let slots = Mutex<[String: Slot]>([:])
    private let isTerminating = Mutex(false)

    public init(options: DaemonOptions, logger: Logger, eventLoopGroup: any EventLoopGroup) {
        self.options = options
        self.logger = logger
        self.group = eventLoopGroup
    }

    // MARK: Configuration

    enum Lookup {
        case found(DrbdResource)
        case problem(ControlResponse)
    }

    func loadConfig() -> Result<DrbdConfig, ResponseError> {
        do {
            let parsed = try DrbdConfParser.load(path: options.configPath)
            return .success(parsed.model)
        } catch {
            return .failure(ResponseError(.configError, error.description))
        }
    }

    /// The resources drbd.conf defines with an `on <this node>` section.
    func configuredResources(_ config: DrbdConfig) -> [DrbdResource] {
        config.resources.filter { $0.host(named: options.nodeName) != nil }
    }

    func lookup(_ name: String) -> Lookup {
        switch loadConfig() {
        case .failure(let error): return .problem(error.response)
        case .success(let config):
            guard let resource = config.resource(named: name), resource.host(named: options.nodeName) != nil else {
                return .problem(ControlResponse(
                    .configError, "'\(name)' is not defined for node \(options.nodeName) in \(options.configPath)"))
            }
            return .found(resource)
        }
    }

    func plan(_ name: String) -> Result<ResourcePlan, ResponseError> {
        switch lookup(name) {
        case .problem(let response): return .failure(ResponseError(response))
        case .found(let resource):
            do throws(PlanError) {
                return .success(try ResourcePlan.make(
                    resource: resource, node: options.nodeName, configPath: options.configPath,
                    preserveDirectory: options.preserveDirectory.map { "\($0)/\(name)" }))
            } catch {
                return .failure(ResponseError(.configError, error.message))
            }
        }
    }

    func running(_ name: String) -> RunningResource? {
        slots.withLock { slots in
            if case .running(let resource)? = slots[name] { return resource }
            return nil
        }
    }

    // MARK: Requests

    /// Answers one control request. Never throws: every problem is a response.
    public func handle(_ request: ControlRequest) async -> ControlResponse {
        guard request.version == ControlProtocol.version else {
            return ControlResponse(
                .badRequest, "protocol version \(request.version) is not spoken here (this daemon speaks \(ControlProtocol.version))")
        }
        switch request.verb {
        case .ping:
            return ControlResponse(.ok, "replicad for node \(options.nodeName), pid \(ProcessInfo.processInfo.processIdentifier)")
        case .list:
            return list()
        default:
            break
        }
        guard let name = request.resource, !name.isEmpty, name != "all" else {
            return ControlResponse(.badRequest, "\(request.verb.rawValue) needs one resource name ('all' is expanded by the client)")
        }
        let timeoutSeconds = request.timeoutSeconds ?? ControlProtocol.commandTimeoutSecondsDefault
        guard ControlProtocol.commandTimeoutSecondsRange.contains(timeoutSeconds) else {
            return ControlResponse(.badRequest, "timeoutSeconds must be in \(ControlProtocol.commandTimeoutSecondsRange)")
        }
        let timeout = Duration.seconds(timeoutSeconds)
        switch request.verb {
        case .up, .attach:
            return await bringUp(name, connect: request.verb == .up, discardMyData: request.discardMyData ?? false,
                timeout: timeout)
        case .down:
            return await takeDown(name, mode: .down)
        case .primary:
            return await promote(name, request, timeout: timeout)
        case .secondary:
            return await demote(name, timeout: timeout)
        case .status:
            return await status(name)
        case .dumpMetadata:
            return await dumpMetadata(name)
        default:
            return await forward(request, to: name, timeout: timeout)
        }
    }

    private func list() -> ControlResponse {
        switch loadConfig() {
        case .failure(let error): return error.response
        case .success(let config):
            var response = ControlResponse(.ok)
            response.resources = configuredResources(config).map { resource in
                ResourceListing(name: resource.name.value, up: running(resource.name.value) != nil)
            }
            return response
        }
    }

    func notUp(_ name: String) -> ControlResponse {
        if case .problem(let response) = lookup(name) { return response }
        return ControlResponse(.refused, "\(name) is not up; run 'tandem adm up \(name)' first")
    }

    /// Requests carried out by the resource's thread.
    private func forward(_ request: ControlRequest, to name: String, timeout: Duration) async -> ControlResponse {
        let kind: RunnerRequest.Kind
        switch Self.runnerKind(request, timeout: timeout) {
        case .success(let made): kind = made
        case .failure(let error): return error.response
        }
        guard let resource = running(name) else { return notUp(name) }
        return await resource.runner.submit(kind)
    }

    /// The runner request for a command or test request, or `bad-request` for a malformed one.
    static func runnerKind(_ request: ControlRequest, timeout: Duration) -> Result<RunnerRequest.Kind, ResponseError> {
        func command(_ command: OperatorCommand) -> Result<RunnerRequest.Kind, ResponseError> {
            .success(.command(command, timeout: timeout))
        }
        switch request.verb {
        case .detach: return command(.detach)
        case .connect: return command(.connect(discardMyData: request.discardMyData ?? false))
        case .disconnect: return command(.disconnect)
        case .invalidate: return command(.invalidate)
        case .invalidateRemote: return command(.invalidateRemote)
        case .verify: return command(.verify)
        case .pauseSync: return command(.pauseResync)
        case .resumeSync: return command(.resumeResync)
        case .outdate: return command(.outdate)
        case .resumeIO: return command(.resumeIO)
        case .newCurrentUUID: return command(.newCurrentUUID(clearBitmap: request.clearBitmap ?? false))
        case .write:
            guard let text = request.dataBase64, let data = Data(base64Encoded: text) else {
                return .failure(ResponseError(.badRequest, "write needs dataBase64"))
            }
            guard let offset = request.offsetBytes, offset % 512 == 0, !data.isEmpty, data.count % 512 == 0,
                data.count <= ControlProtocol.testWriteBytesMaximum
            else {
                return .failure(ResponseError(
                    .badRequest, "write needs a 512-byte aligned offsetBytes and 512...\(ControlProtocol.testWriteBytesMaximum) bytes in multiples of 512"))
            }
            return .success(.io(
                .write(offsetBytes: offset, payload: Array(data), forceUnitAccess: request.forceUnitAccess ?? false),
                timeout: timeout))
        case .read:
            guard let offset = request.offsetBytes, offset % 512 == 0, let length = request.lengthBytes, length > 0,
                length % 512 == 0, length <= UInt64(ControlProtocol.testReadBytesMaximum)
            else {
                return .failure(ResponseError(
                    .badRequest, "read needs a 512-byte aligned offsetBytes and lengthBytes of 512...\(ControlProtocol.testReadBytesMaximum) in multiples of 512"))
            }
            return .success(.io(.read(offsetBytes: offset, lengthBytes: UInt32(length)), timeout: timeout))
        case .flush:
            return .success(.io(.flush, timeout: timeout))
        case .fault:
            guard let fault = request.fault else { return .failure(ResponseError(.badRequest, "fault needs 'fault'")) }
            return .success(.fault(fault))
        case .ping, .list, .up, .down, .attach, .status, .dumpMetadata, .primary, .secondary:
            // primary and secondary go through `promote` and `demote`, which attach and detach the block device.
            preconditionFailure("\(request.verb) is not carried out by the resource's thread alone")
        }
    }

    // MARK: up and down

    private func bringUp(_ name: String, connect: Bool, discardMyData: Bool, timeout: Duration) async -> ControlResponse {
        enum Reservation { case reserved, alreadyUp(RunningResource), busy }
        let reservation = slots.withLock { slots -> Reservation in
            switch slots[name] {
            case .running(let resource)?: return .alreadyUp(resource)
            case .starting?, .stopping?: return .busy
            case nil:
                slots[name] = .starting
                return .reserved
            }
        }
        switch reservation {
        case .busy:
            return ControlResponse(.refused, "\(name) is being brought up or down; try again")
        case .alreadyUp(let resource):
            let status = await resource.runner.submit(.status)
            if !connect, let disk = status.status?.disk, disk == DiskState.diskless.description {
                return ControlResponse(
                    .refused, "\(name) is up without its disk; re-attaching needs 'down' and 'up' in this build")
            }
            return ControlResponse(.ok, "\(name) is already up")
        case .reserved:
            break
        }
        if isTerminating.withLock({ $0 }) {
            release(name)
            return ControlResponse(.refused, "replicad is shutting down")
        }
        let plan: ResourcePlan
        switch self.plan(name) {
        case .success(let made): plan = made
        case .failure(let error):
            release(name)
            return error.response
        }
        if let refusal = await clearDeviceLeftovers(
            options.blockDevicePaths(plan))
        {
            release(name)
            return refusal
        }
        let started = await start(plan)
        guard case .success(let resource) = started else {
            release(name)
            if case .failure(let error) = started { return error.response }
            return ControlResponse(.failed, "\(name) did not start")
        }
        let registered = slots.withLock { slots -> Bool in
            guard !isTerminating.withLock({ $0 }) else { return false }
            slots[name] = .running(resource)
            return true
        }
        if !registered {
            _ = await resource.runner.submit(.stop(.terminate, timeout: options.stopTimeout))
            resource.runner.join()
            for server in resource.exports { try? await server.close() }
            await resource.transport.shutdown()
            release(name)
            return ControlResponse(.refused, "replicad is shutting down")
        }
        guard connect else { return ControlResponse(.ok) }
        return await resource.runner.submit(.command(.connect(discardMyData: discardMyData), timeout: timeout))
    }

    private func release(_ name: String) {
        slots.withLock { $0[name] = nil }
    }

    /// Starts the transport (binding the replication address) and the resource's thread (opening the disks).
    private func start(_ plan: ResourcePlan) async -> Result<RunningResource, ResponseError> {
        var resourceLogger = logger
        resourceLogger[metadataKey: "resource"] = "\(plan.resourceName)"
        let mailbox = Mailbox()
        let pause = ReceivePause()
        mailbox.setPressureHandler { pause.setByMailbox($0) }
        let transportLogger = resourceLogger
        let runner = ResourceRunner(plan: plan, mailbox: mailbox)
        let processor = runner.processor
        let transport: TCPReplicationTransport
        do {
            transport = try TCPReplicationTransport(
                configuration: plan.transport, eventLoopGroup: group,
                log: { level, line in
                    switch level {
                    case .notice: transportLogger.notice("\(line)")
                    case .debug: transportLogger.debug("\(line)")
                    }
                },
                eventSink: { event in
                    if case .transportConnected = event { pause.connectionEstablished() }
                    mailbox.post(event)
                },
                // On the connection's receiver threads, which may block: a packet is processed by the thread that
                // read it when nobody else holds the resource. The data receiver writes the peer's data to disk
                // itself; the meta receiver leaves disk work to the I/O threads, so that it is always back reading
                // pings and acknowledgements at once, as DRBD's ack receiver is.
                packetSink: { packet in
                    _ = processor.deliver(.event(.packet(packet)), mayRunDiskRequest: packet.channel == .data)
                })
            pause.attach(transport)
            try await transport.start()
        } catch {
            return .failure(ResponseError(
                .failed, "\(plan.resourceName): cannot listen on \(plan.localAddress.endpoint): \(error)"))
        }
        let handlerTimeout = options.handlerTimeout
        let response = await withCheckedContinuation { continuation in
            runner.start(
                transport: transport, pause: pause, logger: resourceLogger,
                handlerTimeout: handlerTimeout, started: { continuation.resume(returning: $0) })
        }
        guard response.result == .ok else {
            // The thread has answered and ends at once: joining it does not hold this task up.
            runner.join()
            await transport.shutdown()
            return .failure(ResponseError(response))
        }
        switch await startExports(plan, runner: runner, mailbox: mailbox, logger: resourceLogger) {
        case .success(let exports):
            return .success(RunningResource(
                runner: runner, transport: transport, exports: exports, mailbox: mailbox, blockDevice: BlockDeviceSlot(),
                blockDevicePaths: options.blockDevicePaths(plan)))
        case .failure(let error):
            _ = await runner.submit(.stop(.terminate, timeout: options.stopTimeout))
            runner.join()
            await transport.shutdown()
            return .failure(error)
        }
    }

    /// Starts the resource's NBD export on `<run-dir>/nbd/<resource>.sock` (a 0700 directory, a 0600 socket: the
    /// device is root's) and on TCP if configured.
    private func startExports(
        _ plan: ResourcePlan, runner: ResourceRunner, mailbox: Mailbox, logger: Logger
    ) async -> Result<[NBDServer], ResponseError> {
        let name = plan.resourceName
        let sizeBytes = await runner.submit(.status).status?.sizeBytes ?? 0
        let backend = ReplicatedDeviceBackend(
            resourceName: name, sizeBytes: sizeBytes, state: runner.exportState, mailbox: mailbox)
        let export = NBDServer.Export(name: name, backend: backend)
        var addresses: [NBDServer.Address] = [.unixDomainSocket(path: options.nbdSocketPath(resource: name))]
        if let tcp = options.nbdTCPAddresses[name] { addresses.append(.tcp(host: tcp.host, port: tcp.port)) }
        do {
            try FileManager.default.createDirectory(
                atPath: options.nbdDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            return .failure(ResponseError(.failed, "\(name): cannot create \(options.nbdDirectory): \(error)"))
        }
        var servers: [NBDServer] = []
        for address in addresses {
            do {
                let server = try await NBDServer.start(
                    address: address, exports: [export], limits: ReplicatedDeviceBackend.limits, group: group,
                    log: { line in logger.notice("\(line)") })
                servers.append(server)
                logger.notice("NBD export: \(Self.nbdURI(address, export: name))")
            } catch {
                for server in servers { try? await server.close() }
                return .failure(ResponseError(.failed, "\(name): cannot start the NBD export on \(address): \(error)"))
            }
        }
        return .success(servers)
    }

    func takeDown(_ name: String, mode: StopMode) async -> ControlResponse {
        enum Reservation { case reserved(RunningResource), notUp, busy }
        let reservation = slots.withLock { slots -> Reservation in
            switch slots[name] {
            case .running(let resource)?:
                slots[name] = .stopping
                return .reserved(resource)
            case .starting?, .stopping?: return .busy
            case nil: return .notUp
            }
        }
        let resource: RunningResource
        switch reservation {
        case .busy: return ControlResponse(.refused, "\(name) is being brought up or down; try again")
        case .notUp:
            if case .problem(let response) = lookup(name) { return response }
            return ControlResponse(.ok, "\(name) is not up")
        case .reserved(let reserved): resource = reserved
        }
        // As for `secondary`: asked before the block device is detached, and again by the resource's thread.
        if mode == .down, let refusal = resource.runner.exportState.heldOpenRefusal(resource: name) {
            slots.withLock { $0[name] = .running(resource) }
            return ControlResponse(.refused, refusal)
        }
        let deviceRelease = await releaseDevice(name, resource, force: mode != .down)
        if case .refused(let refusal) = deviceRelease {
            slots.withLock { $0[name] = .running(resource) }
            return refusal
        }
        let response = await resource.runner.submit(.stop(mode, timeout: options.stopTimeout))
        // `ok` and `failed` come from the end of the resource's thread; anything else leaves it running.
        guard response.result == .ok || response.result == .failed else {
            if case .detached = deviceRelease, case .claimed = resource.blockDevice.claim() {
                await reattachDevice(name, resource, after: "a refused down")
            }
            slots.withLock { $0[name] = .running(resource) }
            return response
        }
        resource.runner.join()
        for server in resource.exports { try? await server.close() }
        await resource.transport.shutdown()
        release(name)
        return response
    }

    /// SIGTERM: no resource may come up any more; every resource that is up is stopped, all at once.
    public func terminateAll() async {
        isTerminating.withLock { $0 = true }
        let names = slots.withLock { slots in
            slots.compactMap { name, slot -> String? in
                if case .running = slot { return name }
                return nil
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for name in names {
                group.addTask {
                    let response = await self.takeDown(name, mode: .terminate)
                    self.logger.notice(
                        "\(name): stopped: \(response.result.rawValue)\(response.message.map { " (\($0))" } ?? "")")
                }
            }
        }
    }

    // MARK: status and dump-md

    private func status(_ name: String) async -> ControlResponse {
        if let resource = running(name) {
            var response = await resource.runner.submit(.status)
            response.status?.nbdExports = resource.exports.map { Self.nbdURI($0.address, export: name) }
            // Scanning /proc for holders is blocking work.
            let (blockDevice, holders) =
                resource.blockDevice.attachment == nil
                ? (nil, []) : await DaemonThread.run(name: "tandem-status") { self.blockDeviceReport(resource) }
            response.status?.blockDevice = blockDevice
            if !holders.isEmpty, var status = response.status {
                status.heldOpenBy = (status.heldOpenBy ?? []) + holders
                response.status = status
            }
            return response
        }
        switch lookup(name) {
        case .problem(let response): return response
        case .found(let resource):
            var response = ControlResponse(.ok)
            let peer = resource.hosts.first { !$0.names.contains { $0.value == options.nodeName } }
            response.status = ResourceStatusReport(name: name, node: options.nodeName, peerNode: peer?.displayName)
            return response
        }
    }

    /// The export's NBD URI, as nbdinfo, nbdcopy and qemu-img take it.
    static func nbdURI(_ address: NBDServer.Address, export: String) -> String {
        switch address {
        case .unixDomainSocket(let path): "nbd+unix:///\(export)?socket=\(path)"
        case .tcp: "nbd://\(address)/\(export)"
        }
    }

    private func dumpMetadata(_ name: String) async -> ControlResponse {
        if let resource = running(name) { return await resource.runner.submit(.dumpMetadata) }
        let plan: ResourcePlan
        switch self.plan(name) {
        case .success(let made): plan = made
        case .failure(let error): return error.response
        }
        let logger = logger
        // Reading the metadata blocks; kept off the cooperative pool.
        return await DaemonThread.run(name: "tandem-dump") {
            do {
                let store = try FileMetadataStore(
                    configuration: plan.metadataConfiguration,
                    environment: StorageEnvironment(log: { line in logger.notice("\(line)") }))
                defer { store.close() }
                var response = ControlResponse(.ok)
                response.dump = store.dump()
                return response
            } catch {
                return ControlResponse(.failed, "\(name): \(error)")
            }
        }
    }
}
