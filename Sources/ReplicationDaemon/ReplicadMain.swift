#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage
import DaemonSupport
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import TandemConfig

/// `tandem replicad --foreground`: the daemon process.
///
/// Start: takes the run directory's lock (`replicad.lock`; a second daemon on the same run directory is refused),
/// writes `replicad.pid`, checks drbd.conf (a configuration with errors is refused with exit 1), binds the control
/// socket and serves it. No resource is brought up: that is `tandem adm up`, as with drbdadm.
///
/// Stop: SIGTERM or SIGINT. The control socket stops accepting, every resource that is up is stopped (new I/O
/// refused, disconnected, drained, metadata written clean), the sockets are closed and the files removed.
public enum ReplicadMain {
    /// Runs the daemon until SIGTERM; returns the process's exit code.
    public static func run(options: DaemonOptions, logger: Logger) async -> Int32 {
        umask(0o077)
        let lock: LockFile
        do {
            lock = try LockFile.acquire(runDirectory: options.runDirectory, daemonName: "replicad")
        } catch {
            logger.critical("\(error.message)")
            return error.exitCode
        }
        defer { lock.release() }
        do {
            let parsed = try DrbdConfParser.load(path: options.configPath)
            for diagnostic in parsed.diagnostics { logger.warning("\(diagnostic.description)") }
            let mine = parsed.model.resources.filter { $0.host(named: options.nodeName) != nil }.map(\.name.value)
            if mine.isEmpty {
                logger.warning(
                    "\(options.configPath) defines no resource with an 'on \(options.nodeName)' section; nothing to serve until it does")
            } else {
                logger.notice("node \(options.nodeName): resources \(mine.joined(separator: ", ")) (bring them up with tandem adm up)")
            }
        } catch {
            logger.critical("\(error.description)")
            return 1
        }
        hardenForBlockDevices(logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let code = await serve(options: options, logger: logger, group: group)
        try? await group.shutdownGracefully()
        return code
    }

    /// The daemon serves block devices that file systems write back through: memory reclaim must not wait on
    /// writeback that needs this process (PR_SET_IO_FLUSHER), and its pages must not be swapped out (mlockall).
    /// Without them the daemon still runs; the log says what is missing.
    private static func hardenForBlockDevices(_ logger: Logger) {
        var failedStep: Int32 = 0
        let result = ctandem_harden_io_daemon(&failedStep)
        guard result != 0 else { return }
        let step = failedStep == 1 ? "PR_SET_IO_FLUSHER (needs CAP_SYS_RESOURCE)" : "mlockall (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK)"
        logger.warning("\(step) failed: \(String(cString: strerror(result))); under memory pressure the block device may stall")
    }

    private static func serve(options: DaemonOptions, logger: Logger, group: MultiThreadedEventLoopGroup) async
        -> Int32
    {
        let daemon = ReplicationDaemon(options: options, logger: logger, eventLoopGroup: group)
        let server: ControlServer<ReplicationDaemon>
        do {
            server = try await ControlServer.bind(
                path: options.socketPath, handler: daemon, group: group, logger: logger)
        } catch let error as DaemonStartError {
            logger.critical("\(error.message)")
            return error.exitCode
        } catch {
            logger.critical("cannot listen on \(options.socketPath): \(error)")
            return 20
        }
        logger.notice("replicad for node \(options.nodeName) listening on \(options.socketPath) (pid \(getpid()))")
        let service = DaemonService(daemon: daemon, server: server)
        let serviceGroup = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: service)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await serviceGroup.run()
        } catch {
            logger.error("replicad ended with an error: \(error)")
            return 20
        }
        logger.notice("replicad stopped")
        return 0
    }
}

/// The daemon as a service: serve the control socket until a graceful shutdown (SIGTERM), then stop accepting,
/// stop every resource (which answers the requests still waiting) and let the connections end.
struct DaemonService: Service {
    let daemon: ReplicationDaemon
    let server: ControlServer<ReplicationDaemon>

    func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.run() }
            // Returns at SIGTERM, or throws when the group is cancelled (the server failed): stop either way.
            try? await gracefulShutdown()
            server.close()
            await daemon.terminateAll()
        }
    }
}
