import ArgumentParser
import ClusterDaemon
import DaemonSupport
import Foundation
import Logging
import ReplicationDaemon

/// `tandem heartbeatd`: the cluster manager (Heartbeat's heartbeat process with R1 resource management).
struct HeartbeatdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heartbeatd",
        abstract: "Run the cluster manager: membership over ha.cf's links, haresources groups, failover.",
        discussion: """
        Reads ha.cf, authkeys and haresources from --config-dir, sends heartbeats on every medium, and starts, \
        stops and moves the haresources groups as Heartbeat R1 does. Serves <run-dir>/heartbeatd.sock (root only) \
        for takeover, standby, cl-status and status. Without --foreground it starts itself in the background \
        (output appended to <run-dir>/heartbeatd.log). SIGTERM releases every group, tells the peer, and exits. \
        See docs/cluster-manager.md.
        """
    )

    @Flag(help: "Stay in the foreground and log to standard error.") var foreground = false
    @Flag(help: "Also log debug lines.") var verbose = false

    @Option(name: .customLong("state-dir"), help: ArgumentHelp(
        "Where the generation number survives restarts (default /var/lib/tandem).", valueName: "dir"))
    var stateDirectory = "/var/lib/tandem"

    @Option(name: .customLong("init-dir"), help: ArgumentHelp("Where LSB init scripts are found.", valueName: "dir"))
    var initDirectory = "/etc/init.d"

    @Option(name: .customLong("ocf-root"), help: ArgumentHelp("The OCF root (OCF_ROOT).", valueName: "dir"))
    var ocfRoot = "/usr/lib/ocf"

    @OptionGroup var global: GlobalOptions

    func run() async throws {
        // Absolute, because agents are found and run under the configuration folder from the daemon's thread.
        func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }
        var options = HeartbeatdOptions(
            configDirectory: absolute(global.configDirectory), runDirectory: absolute(global.runDirectory),
            nodeName: global.nodeName)
        options.stateDirectory = absolute(stateDirectory)
        options.initDirectory = initDirectory
        options.ocfRoot = ocfRoot
        guard foreground else {
            var arguments = [
                "heartbeatd", "--foreground", "--config-dir", options.configDirectory, "--run-dir",
                options.runDirectory, "--node", options.nodeName, "--state-dir", stateDirectory, "--init-dir",
                initDirectory, "--ocf-root", ocfRoot,
            ]
            if verbose { arguments.append("--verbose") }
            let client = ClusterControlProtocol.client(runDirectory: options.runDirectory)
            try BackgroundDaemon.start(name: "heartbeatd", arguments: arguments, runDirectory: options.runDirectory) { pid in
                let response: ClusterControlResponse? = try? client.exchange(
                    ClusterControlRequest(verb: .ping), answerTimeout: .seconds(2))
                return response?.result == .ok && response?.message?.contains("pid \(pid)") == true
            }
            return
        }
        let level: Logger.Level = verbose ? .debug : .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let code = await HeartbeatdMain.run(options: options, logger: Logger(label: "tandem.heartbeatd"))
        if code != 0 { throw ExitCode(code) }
    }
}

/// One request to heartbeatd, with the CLI's exit codes: 0 ok, 10 refused, 20 no daemon, 64 bad request.
enum ClusterRequest {
    static func send(_ request: ClusterControlRequest, global: GlobalOptions, verb: String) throws -> ClusterControlResponse {
        let response: ClusterControlResponse
        do {
            response = try ClusterControlProtocol.client(runDirectory: global.runDirectory).exchange(request, answerTimeout: .seconds(30))
        } catch {
            printToStandardError("tandem \(verb): \(error.message)")
            throw TandemExitCode.daemonUnavailable
        }
        switch response.result {
        case .ok: return response
        case .refused:
            printToStandardError("tandem \(verb): refused: \(response.message ?? "")")
            throw TandemExitCode.refused
        case .badRequest:
            printToStandardError("tandem \(verb): \(response.message ?? "bad request")")
            throw ExitCode(64)
        case .failed:
            printToStandardError("tandem \(verb): failed: \(response.message ?? "")")
            throw TandemExitCode.refused
        }
    }
}

/// drbd.conf's fence-peer handler for Tandem clusters, as drbd-peer-outdater was with Heartbeat's dopd:
/// `handlers { fence-peer "tandem fence-peer"; }` with `fencing resource-only` (or resource-and-stonith).
struct FencePeerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fence-peer",
        abstract: "Ask the peer, over the heartbeat links, to outdate its disk (drbd.conf's fence-peer handler).",
        discussion: """
        heartbeatd sends the request to the peer's heartbeatd, which outdates the resource there through its         replicad. Exit codes are DRBD's: 3 the peer is Inconsistent, 4 the peer outdated its disk, 5 the peer         could not be reached, 6 the peer is Primary, 1 the peer could not outdate its disk or heartbeatd did not         answer (the fence failed).
        """)
    @Argument(help: "The resource (default: $DRBD_RESOURCE, which replicad sets for its handlers).") var resource: String?
    @OptionGroup var global: GlobalOptions

    func run() throws {
        guard let name = resource ?? ProcessInfo.processInfo.environment["DRBD_RESOURCE"], !name.isEmpty else {
            throw ValidationError("name the resource, or run as replicad's handler (which sets DRBD_RESOURCE)")
        }
        let response: ClusterControlResponse
        do {
            response = try ClusterControlProtocol.client(runDirectory: global.runDirectory).exchange(
                ClusterControlRequest(verb: .fencePeer, resource: name),
                answerTimeout: ClusterControlProtocol.fencePeerAnswerTimeout)
        } catch {
            // Not 5: "unreachable" counts as success for an UpToDate node, and nobody asked the peer.
            printToStandardError("tandem fence-peer \(name): \(error.message); the peer was not asked, the fence failed")
            throw ExitCode(1)
        }
        guard response.result == .ok, let code = response.exitCode else {
            printToStandardError("tandem fence-peer \(name): \(response.result.rawValue): \(response.message ?? ""); the fence failed")
            throw ExitCode(1)
        }
        print("tandem fence-peer \(name): \(response.message ?? "") (exit \(code))")
        throw ExitCode(code)
    }
}

struct TakeoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "takeover", abstract: "Take resources over from the peer (Heartbeat's hb_takeover).")
    @Argument(help: "all, local, foreign or failback (default all).") var which: String = "all"
    @OptionGroup var global: GlobalOptions
    func run() throws {
        let response = try ClusterRequest.send(ClusterControlRequest(verb: .takeover, selection: which), global: global, verb: "takeover")
        print(response.message ?? "ok")
    }
}

struct StandbyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "standby", abstract: "Give resources to the peer (Heartbeat's hb_standby).")
    @Argument(help: "all, local, foreign or failback (default all).") var which: String = "all"
    @OptionGroup var global: GlobalOptions
    func run() throws {
        let response = try ClusterRequest.send(ClusterControlRequest(verb: .standby, selection: which), global: global, verb: "standby")
        print(response.message ?? "ok")
    }
}

struct ClusterStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cl-status",
        abstract: "Query the cluster manager (Heartbeat's cl_status).",
        discussion: """
        Queries: hbstatus, listnodes, nodestatus NODE, nodetype NODE, listhblinks NODE, hblinkstatus NODE LINK, \
        rscstatus. Answers are printed as cl_status prints them; exit status 0, or 1 when the answer is negative \
        (heartbeat stopped, node or link unknown).
        """
    )
    @Argument(help: "The query and its arguments.") var query: [String] = []
    @OptionGroup var global: GlobalOptions

    func run() throws {
        guard let verb = query.first else { throw ValidationError("name a query: hbstatus, listnodes, nodestatus, nodetype, listhblinks, hblinkstatus, rscstatus") }
        if verb == "hbstatus" {
            let response: ClusterControlResponse? = try? ClusterControlProtocol.client(runDirectory: global.runDirectory)
                .exchange(ClusterControlRequest(verb: .ping), answerTimeout: .seconds(5))
            guard response?.result == .ok else {
                print("Heartbeat is stopped on this machine.")
                throw ExitCode(1)
            }
            print("Heartbeat is running on this machine.")
            return
        }
        guard let status = try ClusterRequest.send(ClusterControlRequest(verb: .status), global: global, verb: "cl-status").status else {
            throw TandemExitCode.daemonUnavailable
        }
        func peer(_ index: Int) throws -> ClusterStatusReport.Peer? {
            guard query.count > index else { throw ValidationError("\(verb) needs a node name") }
            return status.peers.first { $0.name.lowercased() == query[index].lowercased() }
        }
        func isLocal(_ index: Int) -> Bool { query.count > index && query[index].lowercased() == status.node.lowercased() }
        switch verb {
        case "listnodes":
            for name in [status.node] + status.peers.map(\.name) { print(name) }
        case "nodestatus":
            if isLocal(1) { print(status.status) } else if let node = try peer(1) { print(node.status) } else { throw ExitCode(1) }
        case "nodetype":
            let known = try isLocal(1) || peer(1) != nil
            guard known else { throw ExitCode(1) }
            print("normal")
        case "listhblinks":
            guard let node = try peer(1) else { throw ExitCode(1) }
            for link in node.links { print(link.name) }
        case "hblinkstatus":
            guard let node = try peer(1), query.count > 2, let link = node.links.first(where: { $0.name == query[2] }) else {
                throw ExitCode(1)
            }
            print(link.status)
        case "rscstatus":
            print(status.resourcesHeld)
        default:
            throw ValidationError("unknown query '\(verb)': use hbstatus, listnodes, nodestatus, nodetype, listhblinks, hblinkstatus or rscstatus")
        }
    }
}

/// `tandem status`: the cluster as heartbeatd sees it (nodes, links, groups, counters).
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show nodes, links and resource groups as the cluster manager sees them.")
    @Flag(help: "Print the JSON report.") var json = false
    @OptionGroup var global: GlobalOptions

    func run() throws {
        guard let status = try ClusterRequest.send(ClusterControlRequest(verb: .status), global: global, verb: "status").status else {
            throw TandemExitCode.daemonUnavailable
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(status), as: UTF8.self))
            return
        }
        print(ClusterStatusText.render(status))
        // The replicated resources, when replicad runs on this node too.
        let replicad = ControlClient(runDirectory: global.runDirectory)
        guard let listing = try? replicad.send(ControlRequest(verb: .list), answerTimeout: .seconds(5)),
            listing.result == .ok
        else { return }
        for resource in listing.resources ?? [] where resource.up {
            if let report = try? replicad.send(ControlRequest(verb: .status, resource: resource.name), answerTimeout: .seconds(5)).status {
                print(StatusText.render(report))
            }
        }
    }
}

enum ClusterStatusText {
    static func render(_ status: ClusterStatusReport) -> String {
        var lines = ["node \(status.node): \(status.status), holds \(status.resourcesHeld) (\(status.phase), generation \(status.generation))"]
        if let exchange = status.exchange { lines.append("  standby exchange: \(exchange)") }
        if let pingNodes = status.pingNodes { lines.append("  ping nodes: \(pingNodes)") }
        if let quorum = status.quorum { lines.append("  quorum: \(quorum)") }
        lines.append("  stonith: \(status.fencing ?? "none configured (shared data is not protected against a peer that is silent but running)")")
        for peer in status.peers {
            lines.append("node \(peer.name): \(peer.status)")
            for link in peer.links { lines.append("  link \(link.name): \(link.status)") }
        }
        for group in status.groups {
            let place = ["running", "starting", "stopping", "stop-failed"].contains(group.state)
                ? "here" : group.heldByPeer ? "on the peer" : "nowhere"
            var line = "group \(group.key) (prefers \(group.preferredNode)): \(place), \(group.state) here, \(group.resourcesStarted)/\(group.resources.count) started"
            if group.failedHere { line += ", failed here (left to the peer until an operator moves it, the peer dies or its monitor failures expire)" }
            if let failures = group.recentMonitorFailures, failures > 0 {
                line += "; \(failures) monitor failure\(failures == 1 ? "" : "s") within the window, last: \(group.lastMonitorFailure ?? "?")"
            }
            lines.append(line)
        }
        let interesting = status.counters.filter { $0.value > 0 }.sorted { $0.key < $1.key }
        if !interesting.isEmpty {
            lines.append("counters: " + interesting.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        }
        return lines.joined(separator: "\n")
    }
}
