#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ArgumentParser
import Foundation
import Logging
import ReplicationDaemon

/// `tandem replicad`: the replication daemon (DRBD's kernel module and drbdsetup in one process).
struct ReplicadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replicad",
        abstract: "Run the replication daemon that 'tandem adm' talks to.",
        discussion: """
        Reads drbd.conf from --config-dir, serves the control socket <run-dir>/replicad.sock (mode 0600, root or \
        the daemon's own user only) and brings resources up when 'tandem adm up' asks, as drbdadm does. Without \
        --foreground it starts itself in the background (a new session, output appended to \
        <run-dir>/replicad.log), waits until the control socket answers, and exits. SIGTERM stops every resource \
        cleanly (metadata written clean) and ends the daemon. See docs/operations.md.
        """
    )

    @Flag(help: "Stay in the foreground and log to standard error (for systemd, tests and debugging).")
    var foreground = false

    @Flag(help: "Also log debug lines (connection attempts, refused sockets).")
    var verbose = false

    @Option(name: .customLong("handler-timeout"), help: ArgumentHelp(
        "Seconds a drbd.conf handler may run before it is sent SIGTERM.", valueName: "seconds"))
    var handlerTimeoutSeconds = 60

    @Option(name: .customLong("preserve-dir"), help: ArgumentHelp(
        "Where split-brain victims' blocks are kept (default /var/lib/tandem/preserved).", valueName: "dir"))
    var preserveDirectory: String?

    @Option(name: .customLong("nbd-tcp"), help: ArgumentHelp(
        "Also serve RESOURCE's NBD export on TCP at HOST:PORT (repeatable; [v6]:PORT for IPv6). Every resource "
            + "that is up is exported on <run-dir>/nbd/RESOURCE.sock in any case.", valueName: "resource=host:port"))
    var nbdTCP: [String] = []

    @Option(name: .customLong("device-link-root"), help: ArgumentHelp(
        "Make the device links (drbd.conf's 'device', /dev/tandem/by-res/RESOURCE) under this directory instead of "
            + "/; for two nodes sharing one machine's /dev, as in the lab.", valueName: "dir"))
    var deviceLinkRoot: String?

    @Flag(name: .customLong("allow-buffered-loop"), help: ArgumentHelp(
        "Accept a loop device that falls back to buffered I/O on the FUSE file (refused by default: it caches every "
            + "block twice and risks a deadlock under memory pressure)."))
    var allowBufferedLoop = false

    @OptionGroup var global: GlobalOptions

    func validate() throws {
        guard (1...3600).contains(handlerTimeoutSeconds) else {
            throw ValidationError("--handler-timeout must be 1...3600 seconds")
        }
        _ = try Self.parseNBDTCP(nbdTCP)
        if let deviceLinkRoot, !deviceLinkRoot.hasPrefix("/") {
            throw ValidationError("--device-link-root must be an absolute path")
        }
    }

    /// `r0=10.0.0.1:10809`, `r0=[fd00::1]:10809`, one address per resource.
    static func parseNBDTCP(_ values: [String]) throws -> [String: NBDTCPAddress] {
        var addresses: [String: NBDTCPAddress] = [:]
        for value in values {
            let usage = "--nbd-tcp '\(value)': expected RESOURCE=HOST:PORT (IPv6: RESOURCE=[ADDRESS]:PORT)"
            guard let equals = value.firstIndex(of: "="), let colon = value.lastIndex(of: ":"), equals < colon
            else { throw ValidationError(usage) }
            let resource = String(value[..<equals])
            var host = String(value[value.index(after: equals)..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !resource.isEmpty, !host.isEmpty, let port = Int(value[value.index(after: colon)...]),
                (1...65535).contains(port)
            else { throw ValidationError(usage) }
            guard addresses[resource] == nil else {
                throw ValidationError("--nbd-tcp names \(resource) twice; one TCP address per resource")
            }
            addresses[resource] = NBDTCPAddress(host: host, port: port)
        }
        return addresses
    }

    func run() async throws {
        var options = DaemonOptions(
            configDirectory: global.configDirectory, runDirectory: global.runDirectory, nodeName: global.nodeName)
        options.handlerTimeout = .seconds(handlerTimeoutSeconds)
        options.preserveDirectory = preserveDirectory
        options.nbdTCPAddresses = try Self.parseNBDTCP(nbdTCP)
        options.deviceLinkRoot = deviceLinkRoot ?? ""
        options.allowBufferedLoop = allowBufferedLoop
        guard foreground else { return try startInBackground(options) }
        let level: Logger.Level = verbose ? .debug : .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let code = await ReplicadMain.run(options: options, logger: Logger(label: "tandem.replicad"))
        if code != 0 { throw ExitCode(code) }
    }

    /// Starts `tandem replicad --foreground` in a new session with its output in `<run-dir>/replicad.log`, and
    /// waits (at most 15 s) until it answers on the control socket or exits.
    private func startInBackground(_ options: DaemonOptions) throws {
        try? FileManager.default.createDirectory(atPath: options.runDirectory, withIntermediateDirectories: true)
        let logPath = options.runDirectory + "/replicad.log"
        var arguments = [
            "/proc/self/exe", "replicad", "--foreground", "--config-dir", options.configDirectory, "--run-dir",
            options.runDirectory, "--node", options.nodeName, "--handler-timeout", String(handlerTimeoutSeconds),
        ]
        if verbose { arguments.append("--verbose") }
        if let preserveDirectory { arguments += ["--preserve-dir", preserveDirectory] }
        for value in nbdTCP { arguments += ["--nbd-tcp", value] }
        if let deviceLinkRoot { arguments += ["--device-link-root", deviceLinkRoot] }
        if allowBufferedLoop { arguments.append("--allow-buffered-loop") }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (glibc 2.26): detach from the terminal's session.
        posix_spawnattr_setflags(&attributes, Int16(0x80))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, environ)
        guard result == 0 else {
            printToStandardError("tandem replicad: cannot start the daemon: \(String(cString: strerror(result)))")
            throw TandemExitCode.daemonUnavailable
        }
        let client = ControlClient(runDirectory: options.runDirectory)
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let code = (status >> 8) & 0xFF
                printToStandardError("tandem replicad: the daemon exited with status \(code); see \(logPath):")
                let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                printToStandardError(log.split(separator: "\n").suffix(10).joined(separator: "\n"))
                throw ExitCode(code == 0 ? 20 : code)
            }
            if let response = try? client.send(ControlRequest(verb: .ping), answerTimeout: .seconds(2)),
                response.result == .ok, response.message?.contains("pid \(pid)") == true
            {
                print("replicad started (pid \(pid)); log: \(logPath)")
                return
            }
            usleep(100_000)
        }
        printToStandardError("tandem replicad: the daemon (pid \(pid)) did not answer within 15 s; see \(logPath)")
        throw TandemExitCode.daemonUnavailable
    }
}
