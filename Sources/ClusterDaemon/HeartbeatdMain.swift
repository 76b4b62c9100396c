#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
import TandemConfig

public struct HeartbeatdOptions: Sendable {
    public var configDirectory: String
    public var runDirectory: String
    public var nodeName: String
    /// Where the generation number is kept across restarts (Heartbeat: /var/lib/heartbeat).
    public var stateDirectory = "/var/lib/tandem"
    /// LSB init scripts (/etc/init.d) and OCF agents (/usr/lib/ocf).
    public var initDirectory = "/etc/init.d"
    public var ocfRoot = "/usr/lib/ocf"

    public init(configDirectory: String, runDirectory: String, nodeName: String) {
        self.configDirectory = configDirectory
        self.runDirectory = runDirectory
        self.nodeName = nodeName
    }
}

/// `tandem heartbeatd --foreground`: the cluster manager process.
///
/// Start: takes `<run-dir>/heartbeatd.lock`, reads and checks ha.cf, authkeys and haresources (errors refuse the
/// start with exit 1 and file:line), takes the next generation number, opens every medium, then serves the
/// control socket `<run-dir>/heartbeatd.sock` and runs the cluster.
///
/// Stop: SIGTERM or SIGINT releases every group (last first, each right to left), sends `shutdone` so that the
/// peer takes over at once, and exits.
public enum HeartbeatdMain {
    public static func run(options: HeartbeatdOptions, logger: Logger) async -> Int32 {
        umask(0o077)
        let lock: LockFile
        do {
            lock = try LockFile.acquire(runDirectory: options.runDirectory, daemonName: "heartbeatd")
        } catch {
            logger.critical("\(error.message)")
            return error.exitCode
        }
        defer { lock.release() }
        let plan: ClusterPlan
        let generation: UInt64
        let epochFile: StateNumberFile
        let initialEpoch: UInt64
        var links: [HeartbeatLink] = []
        var pingProber: PingProber?
        var witnessLink: HeartbeatLink?
        do throws(DaemonStartError) {
            let (loaded, warnings) = try ClusterPlan.load(
                configDirectory: options.configDirectory, nodeName: options.nodeName,
                localAddresses: localIPv4Addresses())
            for warning in warnings { logger.warning("\(warning)") }
            plan = loaded
            generation = try GenerationFile.next(stateDirectory: options.stateDirectory)
            epochFile = EpochFile.file(stateDirectory: options.stateDirectory)
            initialEpoch = try epochFile.read()
            for (name, medium) in plan.links { links.append(try HeartbeatLink.open(name: name, medium: medium)) }
            if let pingNodes = plan.pingNodeTracker() { pingProber = try PingProber.open(addresses: pingNodes.addresses) }
            if let witness = plan.haConfig.witness?.value { witnessLink = try HeartbeatLink.openToWitness(witness) }
        } catch {
            for link in links { link.close() }
            pingProber?.close()
            logger.critical("\(error.message)")
            return error.exitCode
        }
        let log = ClusterLog(logger: logger, logFilePath: plan.haConfig.logFile?.value, debugFilePath: plan.haConfig.debugFile?.value)
        log.info("Configuration validated. Starting heartbeat (Tandem heartbeatd) for node \(plan.localNode), generation \(generation)")
        for (name, medium) in plan.links { log.info("link \(name): \(medium.haCfText)") }
        if let pingNodes = plan.pingNodeTracker() {
            log.info("ping nodes: \(pingNodes.targets.map(\.name).joined(separator: ", ")) (deadping \(plan.haConfig.deadping)): the node that reaches fewer gives its resource groups up (ipfail)")
        }
        if let witness = plan.haConfig.witness?.value {
            log.info("witness \(witness): without its peer this node runs resources only with the witness's grant")
        }
        let agents = ResourceAgents(
            configDirectory: options.configDirectory, localNode: plan.localNode, runDirectory: options.runDirectory,
            initDirectory: options.initDirectory, ocfRoot: options.ocfRoot, log: log)
        let daemon = ClusterDaemon(
            plan: plan, generation: generation, epoch: (initialEpoch, epochFile), links: links, pingProber: pingProber,
            witnessLink: witnessLink, log: log, agents: agents)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let code = await serve(daemon: daemon, plan: plan, links: links, log: log, options: options, group: group, logger: logger)
        try? await group.shutdownGracefully()
        return code
    }

    private static func serve(
        daemon: ClusterDaemon, plan: ClusterPlan, links: [HeartbeatLink], log: ClusterLog, options: HeartbeatdOptions,
        group: MultiThreadedEventLoopGroup, logger: Logger
    ) async -> Int32 {
        let server: ControlServer<ClusterDaemon>
        do {
            server = try await ControlServer.bind(
                path: ClusterControlProtocol.socketPath(runDirectory: options.runDirectory), handler: daemon,
                group: group, logger: logger)
        } catch {
            for link in links { link.close() }
            logger.critical("\((error as? DaemonStartError)?.message ?? "cannot listen on the control socket: \(error)")")
            return (error as? DaemonStartError)?.exitCode ?? 20
        }
        daemon.start()
        logger.notice("heartbeatd for node \(plan.localNode) running (pid \(getpid()))")
        let serviceGroup = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: ClusterService(daemon: daemon, server: server))],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await serviceGroup.run()
        } catch {
            logger.error("heartbeatd ended with an error: \(error)")
            return 20
        }
        log.info("\(plan.localNode): Heartbeat shutdown complete.")
        return 0
    }

    /// The IPv4 addresses of this network namespace: a ucast line to one of them is this node's own line.
    static func localIPv4Addresses() -> Set<IPv4Address> {
        var addresses: Set<IPv4Address> = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var cursor = list
        while let entry = cursor {
            if let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) {
                let value = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                addresses.insert(IPv4Address(rawValue: value))
            }
            cursor = entry.pointee.ifa_next
        }
        return addresses
    }
}

/// Serves the control socket until SIGTERM, then stops accepting and shuts the cluster node down.
struct ClusterService: Service {
    let daemon: ClusterDaemon
    let server: ControlServer<ClusterDaemon>

    func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.run() }
            try? await gracefulShutdown()
            await daemon.shutdown()
            server.close()
        }
    }
}

extension HeartbeatMedium {
    /// The medium as ha.cf writes it, for the log.
    var haCfText: String {
        switch self {
        case .bcast(let interface, let port): "bcast \(interface) (port \(port))"
        case .mcast(let interface, let group, let port, let ttl, let loop): "mcast \(interface) \(group) \(port) \(ttl) \(loop ? 1 : 0)"
        case .ucast(let interface, let peer, let port): "ucast \(interface) \(peer) (port \(port))"
        case .mcast6(let interface, let group, let port, let hops, let loop): "mcast6 \(interface) \(group) \(port) \(hops) \(loop ? 1 : 0)"
        case .ucast6(let interface, let peer, let port): "ucast6 \(interface) \(peer) (port \(port))"
        case .serial(let device, let baudRate): "serial \(device) (baud \(baudRate))"
        }
    }
}
