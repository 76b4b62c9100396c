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

    /// Starts `tandem replicad --foreground` in the background and waits until it answers.
    private func startInBackground(_ options: DaemonOptions) throws {
        var arguments = [
            "replicad", "--foreground", "--config-dir", options.configDirectory, "--run-dir",
            options.runDirectory, "--node", options.nodeName, "--handler-timeout", String(handlerTimeoutSeconds),
        ]
        if verbose { arguments.append("--verbose") }
        if let preserveDirectory { arguments += ["--preserve-dir", preserveDirectory] }
        for value in nbdTCP { arguments += ["--nbd-tcp", value] }
        if let deviceLinkRoot { arguments += ["--device-link-root", deviceLinkRoot] }
        if allowBufferedLoop { arguments.append("--allow-buffered-loop") }
        let client = ControlClient(runDirectory: options.runDirectory)
        try BackgroundDaemon.start(name: "replicad", arguments: arguments, runDirectory: options.runDirectory) { pid in
            guard let response = try? client.send(ControlRequest(verb: .ping), answerTimeout: .seconds(2)) else { return false }
            return response.result == .ok && response.message?.contains("pid \(pid)") == true
        }
    }
}
