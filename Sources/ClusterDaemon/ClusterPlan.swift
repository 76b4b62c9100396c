import DaemonSupport
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
        if haConfig.autoFailback == .legacy {
            warnings.append("auto_failback legacy is run as 'on'; set auto_failback on or off explicitly")
        }
        return (
            ClusterPlan(
                localNode: localNode, peerNode: peers.first, configDirectory: configDirectory, links: links,
                haConfig: haConfig, authkeys: authkeys, authkeysPath: path(ConfigDirectory.authkeysFileName),
                groups: haresources.groups),
            warnings
        )
    }

    func membershipConfiguration(generation: UInt64, randomSeed: UInt64) -> MembershipConfiguration {
        MembershipConfiguration(
            localNode: localNode, peers: peerNode.map { [$0] } ?? [], links: links.map(\.name),
            keepalive: haConfig.keepalive, warntime: haConfig.warntime, deadtime: haConfig.deadtime,
            initdead: haConfig.initdead, maxRetransmitDelay: haConfig.maxRetransmitDelay, generation: generation,
            randomSeed: randomSeed)
    }

    func resourceConfiguration() -> ResourceManagerConfiguration {
        ResourceManagerConfiguration(
            localNode: localNode, peerNode: peerNode,
            groups: groups.map {
                GroupDefinition(key: $0.key, preferredNode: $0.preferredNode.value, resources: $0.resources.map(\.text))
            },
            autoFailback: haConfig.autoFailback == .off ? .off : .on,
            startTimeout: haConfig.resourceStartTimeout, stopTimeout: haConfig.resourceStopTimeout,
            stopFailureAction: StopFailureAction(rawValue: haConfig.stopFailureAction.rawValue) ?? .stopHeartbeats,
            exchangeTimeout: haConfig.deadtime * 2)
    }
}

/// The generation (`hg`) of this start: one more than the last, kept in `<state-dir>/hb_generation` and synced
/// before any message goes out, so that a restarted node is never mistaken for a replay of its earlier self.
enum GenerationFile {
    static let fileName = "hb_generation"

    static func next(stateDirectory: String) throws(DaemonStartError) -> UInt64 {
        let path = (stateDirectory as NSString).appendingPathComponent(fileName)
        do {
            try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
        } catch {
            throw DaemonStartError("cannot create the state directory \(stateDirectory): \(error)", exitCode: 20)
        }
        var previous: UInt64 = 0
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            guard let value = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw DaemonStartError("\(path) does not hold a generation number; remove it only if no other node still runs with this one's messages", exitCode: 1)
            }
            previous = value
        }
        let next = previous + 1
        guard let handle = FileHandle(forWritingAtPath: path) ?? {
            _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
            return FileHandle(forWritingAtPath: path)
        }() else {
            throw DaemonStartError("cannot write \(path)", exitCode: 20)
        }
        defer { try? handle.close() }
        do {
            try handle.truncate(atOffset: 0)
            try handle.write(contentsOf: Data("\(next)\n".utf8))
            try handle.synchronize()
        } catch {
            throw DaemonStartError("cannot write \(path): \(error)", exitCode: 20)
        }
        return next
    }
}
