#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import FencingCore
import Foundation
import MembershipCore
import ResourceCore
import TandemConfig

/// Everything heartbeatd runs with, resolved and checked from the configuration folder before anything starts.
public struct ClusterPlan: Sendable {
    public var localNode: String
    public var peerNode: String?
    public var configDirectory: String
    /// The media Tandem opens (ucast lines to one of our own addresses already dropped), with their link names.
    public var links: [(name: String, medium: HeartbeatMedium)]
    public var haConfig: HaConfig
    public var authkeys: Authkeys
    public var authkeysPath: String
    /// The haresources groups, each resource as parsed.
    public var groups: [ResourceGroup]
    /// The fence devices this node uses against its peer (its own `stonith_host` lines, then the `*` ones), with
    /// each agent's absolute path; empty without STONITH.
    public var fenceDevices: [FenceDevice]

    /// A `stonith_host` line resolved for this node.
    public struct FenceDevice: Sendable {
        public var agentPath: String
        public var parameters: [StonithDevice.Parameter]
    }

    /// Between failed fence attempts: often enough to finish soon after a device comes back, rarely enough not to
    /// hammer a power switch that is down.
    static let fenceRetryInterval: Duration = .seconds(5)

    /// Reads ha.cf, authkeys and haresources from `configDirectory` and checks them for this node. Any error is
    /// reported with its file:line:column and nothing starts.
    public static func load(
        configDirectory: String, nodeName: String, localAddresses: Set<IPv4Address>
    ) throws(DaemonStartError) -> (ClusterPlan, warnings: [String]) {
        func path(_ name: String) -> String { (configDirectory as NSString).appendingPathComponent(name) }
        var warnings: [String] = []
        let haConfig: HaConfig
        let authkeys: Authkeys
        let haresources: Haresources
        do {
            let parsedConfig = try HaCfParser.load(path: path(ConfigDirectory.haConfigFileName))
            let parsedKeys = try AuthkeysParser.load(path: path(ConfigDirectory.authkeysFileName))
            let parsedResources = try HaresourcesParser.load(path: path(ConfigDirectory.haresourcesFileName))
            warnings += (parsedConfig.diagnostics + parsedKeys.diagnostics + parsedResources.diagnostics).map(\.description)
            (haConfig, authkeys, haresources) = (parsedConfig.model, parsedKeys.model, parsedResources.model)
        } catch {
            throw DaemonStartError(error.description, exitCode: 1)
        }
        let nodes = haConfig.nodes.map(\.value)
        guard let localNode = nodes.first(where: { $0.lowercased() == nodeName.lowercased() }) else {
            throw DaemonStartError(
                "\(path(ConfigDirectory.haConfigFileName)): this node (\(nodeName)) is not in the node lines (\(nodes.joined(separator: ", "))); ha.cf's node names must match uname -n, or pass --node",
                exitCode: 1)
        }
        let peers = nodes.filter { $0.lowercased() != localNode.lowercased() }
        guard peers.count <= 1 else {
            let location = haConfig.nodes[2].location
            throw DaemonStartError(
                "\(location): haresources resource management (R1) runs on two nodes; ha.cf names \(nodes.count)", exitCode: 1)
        }
        for group in haresources.groups where !nodes.contains(where: { $0.lowercased() == group.preferredNode.value.lowercased() }) {
            throw DaemonStartError(
                "\(group.preferredNode.location): '\(group.preferredNode.value)' is not a node of ha.cf (\(nodes.joined(separator: ", ")))",
                exitCode: 1)
        }
        var links: [(name: String, medium: HeartbeatMedium)] = []
        for located in haConfig.media {
            let medium = located.value
            if case .ucast(_, let peer, _) = medium, localAddresses.contains(peer) { continue }
            let interface: String
            switch medium {
            case .bcast(let device, _), .ucast(let device, _, _), .mcast(let device, _, _, _, _): interface = device
            case .mcast6, .ucast6, .serial:
                throw DaemonStartError(
                    "\(located.location): this build of heartbeatd runs bcast, mcast and ucast over IPv4 only", exitCode: 1)
            }
            var name = interface
            var suffix = 2
            while links.contains(where: { $0.name == name }) {
                name = "\(interface)-\(suffix)"
                suffix += 1
            }
            links.append((name, medium))
        }
        guard !links.isEmpty else {
            throw DaemonStartError(
                "\(path(ConfigDirectory.haConfigFileName)): no heartbeat medium left for this node (every ucast line points at one of its own addresses?)",
                exitCode: 1)
        }
        let fenceDevices = try resolveFenceDevices(haConfig, localNode: localNode, nodes: nodes)
        for script in haConfig.alertScripts where ChildProcess.executablePath(script.value) == nil {
            throw DaemonStartError("\(script.location): alert program \(script.value) is not an executable file", exitCode: 1)
        }
        if fenceDevices.isEmpty, let peer = peers.first {
            warnings.append("no STONITH device for \(localNode) (stonith_host): if \(peer) stops answering while it still runs, both nodes may run the resources")
        }
        if haConfig.autoFailback == .legacy {
            warnings.append("auto_failback legacy is run as 'on'; set auto_failback on or off explicitly")
        }
        return (
            ClusterPlan(
                localNode: localNode, peerNode: peers.first, configDirectory: configDirectory, links: links,
                haConfig: haConfig, authkeys: authkeys, authkeysPath: path(ConfigDirectory.authkeysFileName),
                groups: haresources.groups, fenceDevices: fenceDevices),
            warnings
        )
    }

    /// The `stonith_host` lines for `localNode`, their agents found and executable.
    private static func resolveFenceDevices(
        _ haConfig: HaConfig, localNode: String, nodes: [String]
    ) throws(DaemonStartError) -> [FenceDevice] {
        for line in haConfig.stonithHosts {
            if let host = line.value.fromHost, !nodes.contains(where: { $0.lowercased() == host.lowercased() }) {
                throw DaemonStartError("\(line.location): stonith_host names '\(host)', which is not a node of ha.cf (\(nodes.joined(separator: ", ")))", exitCode: 1)
            }
        }
        let devices = haConfig.stonithDevices(for: localNode)
        if devices.isEmpty, let first = haConfig.stonithHosts.first {
            throw DaemonStartError("\(first.location): ha.cf has stonith_host lines, but none for this node (\(localNode)) or '*': this node could not fence its peer", exitCode: 1)
        }
        return try devices.map { device throws(DaemonStartError) in
            guard let path = ChildProcess.executablePath(device.agent) else {
                throw DaemonStartError("fence agent '\(device.agent)' (stonith_host) is not an executable file\(device.agent.hasPrefix("/") ? "" : " in \(ChildProcess.searchPath)")", exitCode: 1)
            }
            return FenceDevice(agentPath: path, parameters: device.parameters)
        }
    }

    func stonithPolicy() -> StonithPolicy? {
        guard !fenceDevices.isEmpty else { return nil }
        return StonithPolicy(
            action: haConfig.stonithAction == .reboot ? .reboot : .off, delayWhenIdle: haConfig.stonithDelay,
            agentTimeout: haConfig.stonithTimeout, retryInterval: Self.fenceRetryInterval,
            connectivityGrace: hasPingNodes ? haConfig.deadping : .zero)
    }

    /// The witness client, when ha.cf names a witness and there is a peer.
    func witnessClient(randomSeed: UInt64) -> WitnessClient? {
        guard haConfig.witness != nil, let peerNode else { return nil }
        return WitnessClient(
            node: localNode, peer: peerNode, askInterval: haConfig.keepalive, deadtime: haConfig.deadtime, randomSeed: randomSeed)
    }

    var hasPingNodes: Bool { !haConfig.pingNodes.isEmpty || !haConfig.pingGroups.isEmpty }

    /// ha.cf's ping nodes and groups, or nil without any.
    func pingNodeTracker() -> PingNodeTracker? {
        guard hasPingNodes else { return nil }
        return PingNodeTracker(
            nodes: haConfig.pingNodes.map(\.value), groups: haConfig.pingGroups.map(\.value), deadping: haConfig.deadping)
    }

    func membershipConfiguration(generation: UInt64, randomSeed: UInt64) -> MembershipConfiguration {
        MembershipConfiguration(
            localNode: localNode, peers: peerNode.map { [$0] } ?? [], links: links.map(\.name),
            keepalive: haConfig.keepalive, warntime: haConfig.warntime, deadtime: haConfig.deadtime,
            initdead: haConfig.initdead, maxRetransmitDelay: haConfig.maxRetransmitDelay, generation: generation,
            randomSeed: randomSeed)
    }

    func resourceConfiguration(initialEpoch: UInt64) -> ResourceManagerConfiguration {
        ResourceManagerConfiguration(
            localNode: localNode, peerNode: peerNode,
            groups: groups.map {
                GroupDefinition(key: $0.key, preferredNode: $0.preferredNode.value, resources: $0.resources.map(\.text))
            },
            autoFailback: haConfig.autoFailback == .off ? .off : .on,
            startTimeout: haConfig.resourceStartTimeout, stopTimeout: haConfig.resourceStopTimeout,
            stopFailureAction: StopFailureAction(rawValue: haConfig.stopFailureAction.rawValue) ?? .stopHeartbeats,
            exchangeTimeout: haConfig.deadtime * 2,
            monitor: haConfig.monitorInterval > .zero
                ? MonitorPolicy(
                    interval: haConfig.monitorInterval, timeout: haConfig.monitorTimeout,
                    failuresBeforeFailover: haConfig.monitorFailures, failureWindow: haConfig.monitorFailureWindow)
                : nil,
            initialEpoch: initialEpoch)
    }
}

/// A number kept in a file of the state folder across restarts, written durably (a temporary file, fsync, rename).
struct StateNumberFile: Sendable {
    let path: String
    /// What the number is, for messages.
    let what: String

    init(stateDirectory: String, fileName: String, what: String) {
        path = (stateDirectory as NSString).appendingPathComponent(fileName)
        self.what = what
    }

    /// The number kept, or 0 when there is no file yet.
    func read() throws(DaemonStartError) -> UInt64 {
        do {
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        } catch {
            throw DaemonStartError("cannot create the state directory for \(path): \(error)", exitCode: 20)
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return 0 }
        guard let value = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw DaemonStartError("\(path) does not hold \(what); remove it only if no other node still runs with this one's messages", exitCode: 1)
        }
        return value
    }

    func write(_ value: UInt64) throws(DaemonStartError) {
        let temporary = path + ".new"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DaemonStartError("cannot write \(temporary): \(String(cString: strerror(errno)))", exitCode: 20) }
        let bytes = Array("\(value)\n".utf8)
        let written = bytes.withUnsafeBytes { systemWrite(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw DaemonStartError("cannot write \(path): \(String(cString: strerror(errno)))", exitCode: 20)
        }
    }
}

/// The generation (`hg`) of this start: one more than the last, kept in `<state-dir>/hb_generation` and synced
/// before any message goes out, so that a restarted node is never mistaken for a replay of its earlier self.
enum GenerationFile {
    static let fileName = "hb_generation"

    static func next(stateDirectory: String) throws(DaemonStartError) -> UInt64 {
        let file = StateNumberFile(stateDirectory: stateDirectory, fileName: fileName, what: "a generation number")
        let next = try file.read() + 1
        try file.write(next)
        return next
    }
}

/// The highest acquisition epoch this node has seen, kept in `<state-dir>/acquisition_epoch`, so that a restarted
/// node never acquires a group under an epoch lower than one it had already seen.
enum EpochFile {
    static func file(stateDirectory: String) -> StateNumberFile {
        StateNumberFile(stateDirectory: stateDirectory, fileName: "acquisition_epoch", what: "an acquisition epoch")
    }
}

private func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer?, _ count: Int) -> Int {
    write(fd, buffer, count)
}
