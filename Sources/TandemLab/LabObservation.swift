#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ClusterDaemon
import DaemonSupport
import Foundation
import ReplicationDaemon

/// What the lab sees of one cluster node, asked of the node's own daemons through their control sockets (reached
/// through the node's root) and of its kernel (addresses, mounts, processes).
public struct NodeObservation: Sendable {
    public var node: String
    public var running: Bool
    /// heartbeatd: this node's status and the group's state, or why it could not be asked.
    public var heartbeat: String?
    public var groupState: String?
    /// Monitoring gave the group up on this node: it will not run here until its failures expire.
    public var groupFailedHere = false
    /// replicad: role, disk and connection state of the resource.
    public var role: String?
    public var disk: String?
    public var connection: String?
    public var peerDisk: String?
    public var outOfSyncKiB: UInt64?
    public var holdsVirtualAddress: Bool
    public var mountsFileSystem: Bool
    public var runsDatabase: Bool

    public var summary: String {
        guard running else { return "\(node): powered off" }
        var parts: [String] = []
        parts.append(
            "heartbeatd \(heartbeat ?? "not answering")" + (groupState.map { ", group \($0)" } ?? "")
                + (groupFailedHere ? " (failed here: not eligible until its failures expire)" : ""))
        if let role {
            var replication = "\(LabLayout.resourceName) \(role)/\(disk ?? "?") \(connection ?? "?")" + (peerDisk.map { " peer \($0)" } ?? "")
            if let outOfSyncKiB, outOfSyncKiB > 0 { replication += " (\(outOfSyncKiB) KiB out of sync)" }
            parts.append(replication)
        } else {
            parts.append("replicad not answering")
        }
        var holds: [String] = []
        if holdsVirtualAddress { holds.append("VIP") }
        if mountsFileSystem { holds.append(LabLayout.mountPoint) }
        if runsDatabase { holds.append("mariadbd") }
        parts.append(holds.isEmpty ? "holds nothing" : "holds " + holds.joined(separator: ", "))
        return "\(node): " + parts.joined(separator: "; ")
    }
}

extension Lab {
    public func observe(_ node: LabHost) -> NodeObservation {
        var observation = NodeObservation(
            node: node.rawValue, running: machines.isRunning(node), holdsVirtualAddress: false, mountsFileSystem: false,
            runsDatabase: false)
        guard observation.running, let runDirectory = try? machines.path(node, "/run/tandem") else { return observation }
        let cluster = ClusterControlProtocol.client(runDirectory: runDirectory)
        let response: ClusterControlResponse? = try? cluster.exchange(ClusterControlRequest(verb: .status), answerTimeout: .seconds(5))
        if let status = response?.status {
            observation.heartbeat = status.status
            observation.groupState = status.groups.first.map { $0.heldByPeer ? "held by peer" : $0.state }
            observation.groupFailedHere = status.groups.first?.failedHere ?? false
        }
        let replication = ControlClient(runDirectory: runDirectory)
        if let response = try? replication.send(ControlRequest(verb: .status, resource: LabLayout.resourceName), answerTimeout: .seconds(5)),
            let status = response.status, status.up
        {
            observation.role = status.role
            observation.disk = status.disk
            observation.connection = status.connection
            observation.peerDisk = status.peerDisk
            observation.outOfSyncKiB = status.outOfSyncKiB
        }
        observation.holdsVirtualAddress = network.holds(node, address: layout.virtualAddress)
        observation.mountsFileSystem = machines.mounts(node).contains { $0.target == LabLayout.mountPoint }
        observation.runsDatabase = !machines.processes(node, named: "mariadbd").isEmpty
        return observation
    }

    /// The one node that runs the service (VIP, file system and database), or nil when none or both do.
    func activeNode(_ observations: [NodeObservation]) -> LabHost? {
        let holders = observations.filter { $0.holdsVirtualAddress || $0.mountsFileSystem || $0.runsDatabase }
        guard holders.count == 1, let holder = holders.first, holder.holdsVirtualAddress, holder.mountsFileSystem,
            holder.runsDatabase
        else { return nil }
        return LabHost(rawValue: holder.node)
    }
}
