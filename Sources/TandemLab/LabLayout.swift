import Foundation

/// Names, addresses and paths of one lab: the seeds' two-node cluster on this machine.
///
/// Every namespace name starts with `prefix` and every address comes from `10.<subnetOctet>.0.0/16`, used only
/// inside the lab's own namespaces: two labs with different prefixes and octets (the demo's and a test's) never
/// touch each other. Everything the lab keeps on disk lives under `root`.
public struct LabLayout: Sendable, Hashable {
    public var prefix: String
    public var root: String
    public var subnetOctet: UInt8

    public init(prefix: String = "tandem", root: String = "/var/lib/tandem-lab", subnetOctet: UInt8 = 216) {
        precondition(!prefix.isEmpty && prefix.count <= 8, "lab prefix '\(prefix)' must be 1...8 characters")
        precondition(prefix.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber) }, "lab prefix '\(prefix)' must be letters and digits")
        precondition(subnetOctet >= 16 && subnetOctet < 250, "lab subnet octet \(subnetOctet) out of range")
        self.prefix = prefix
        self.root = root
        self.subnetOctet = subnetOctet
    }

    /// The two cluster nodes, as haresources and ha.cf name them.
    public static let nodeNames = ["node1", "node2"]
    /// The resource (drbd.conf), its device and where the Filesystem agent mounts it.
    public static let resourceName = "mysql"
    public static let devicePath = "/dev/drbd0"
    public static let mountPoint = "/data/mysql"
    /// The database the workload writes to, and the account it uses through the VIP.
    public static let databaseName = "lab"
    public static let databaseUser = "tandem"
    public static let databasePassword = "tandem-lab"
    public static let replicationUser = "replicator"
    public static let replicationPassword = "tandem-repl"
    public static let mysqlPort: UInt16 = 3306
    public static let replicationPort: UInt16 = 7788
    /// Size of each node's backing file. Small enough for a fast initial sync, big enough for MariaDB's files,
    /// binary logs and a few minutes of workload.
    public static let diskSizeMiB = 384

    /// Folders each machine replaces with its own: the lab's folder must not be under one of them, or the machines
    /// could not see their disks and configuration.
    static let machinePrivateFolders = ["/proc", "/run", "/tmp", "/dev", "/etc", "/var/log", "/data"]

    /// Why `root` cannot hold a lab, or nil when it can.
    public var rootProblem: String? {
        guard root.hasPrefix("/") else { return "the lab folder \(root) must be an absolute path" }
        let normalized = (root as NSString).standardizingPath
        if let folder = Self.machinePrivateFolders.first(where: { normalized == $0 || normalized.hasPrefix($0 + "/") }) {
            return "the lab folder \(root) is under \(folder), which every lab machine replaces with its own; choose a folder elsewhere (such as /var/lib or /var/tmp)"
        }
        return nil
    }

    // MARK: Namespaces

    public func namespace(_ host: LabHost) -> String { "\(prefix)-\(host.rawValue)" }
    /// The service network's bridge lives in a namespace of its own, like a switch.
    public var switchNamespace: String { "\(prefix)-switch" }

    // MARK: Addresses

    /// eth1: the service network (bridged to the client and the replica), where the VIP lives.
    public func serviceAddress(_ host: LabHost) -> String {
        let last: Int = switch host {
        case .node1: 11
        case .node2: 12
        case .client: 20
        case .replica: 30
        }
        return "10.\(subnetOctet).1.\(last)"
    }

    public var virtualAddress: String { "10.\(subnetOctet).1.100" }
    public var servicePrefixLength: Int { 24 }
    /// eth2: the dedicated heartbeat link (a crossover cable between the nodes).
    public func heartbeatAddress(_ node: LabHost) -> String { "10.\(subnetOctet).2.\(node.nodeNumber)" }
    /// eth3: the replication link.
    public func replicationAddress(_ node: LabHost) -> String { "10.\(subnetOctet).3.\(node.nodeNumber)" }

    // MARK: Paths

    public var stateFile: String { root + "/lab.json" }
    /// Everything the lab makes in its folder; `down` removes these and nothing else.
    var madeEntries: [String] {
        [stateFile, lockFile, runsDirectory, powerSwitchSocket, powerSwitchPIDFile, powerSwitchLog] + LabHost.allCases.map(directory)
    }
    /// The power switch (`lab up --stonith`): its socket, which the nodes' fence agent reaches, its PID and its log.
    public var powerSwitchSocket: String { root + "/power-switch.sock" }
    var powerSwitchPIDFile: String { root + "/power-switch.pid" }
    var powerSwitchLog: String { root + "/power-switch.log" }
    public var lockFile: String { root + "/lab.lock" }
    public var runsDirectory: String { root + "/runs" }
    public func directory(_ host: LabHost) -> String { root + "/" + host.rawValue }
    /// The node's backing file: drbd.conf's `disk`, with internal metadata.
    public func diskImage(_ node: LabHost) -> String { directory(node) + "/disk.img" }
    /// The upper layer of the node's /etc: what the node has that the machine's /etc does not (/etc/tandem,
    /// /etc/my.cnf, /etc/hostname).
    public func etcUpper(_ host: LabHost) -> String { directory(host) + "/etc" }
    public func etcWork(_ host: LabHost) -> String { directory(host) + "/.etc-work" }
    /// The node's /var/log, kept across power cycles (ha-log, replicad's and heartbeatd's logs).
    public func logDirectory(_ host: LabHost) -> String { directory(host) + "/log" }
    /// The node's /data: holds the mount point of the replicated file system.
    public func dataDirectory(_ host: LabHost) -> String { directory(host) + "/data" }
    /// heartbeatd's state (hb_generation) and replicad's preserved blocks.
    public func stateDirectory(_ host: LabHost) -> String { directory(host) + "/state" }
    /// The host PID of the node's init (pid 1 of its PID namespace), while it runs.
    public func initPIDFile(_ host: LabHost) -> String { directory(host) + "/init.pid" }
    /// The node's ha-log as the host sees it.
    public func haLog(_ host: LabHost) -> String { logDirectory(host) + "/ha-log" }
}

/// The machines of the lab.
public enum LabHost: String, Sendable, CaseIterable, Codable, Hashable {
    case node1, node2, client, replica

    public static let nodes: [LabHost] = [.node1, .node2]

    public var isClusterNode: Bool { self == .node1 || self == .node2 }

    var nodeNumber: Int {
        switch self {
        case .node1: 1
        case .node2: 2
        case .client, .replica: preconditionFailure("\(self) is not a cluster node")
        }
    }

    public var peer: LabHost {
        switch self {
        case .node1: .node2
        case .node2: .node1
        case .client, .replica: preconditionFailure("\(self) has no cluster peer")
        }
    }

    /// Its name on the service bridge (interface names in the switch namespace).
    var switchPortName: String {
        switch self {
        case .node1: "n1"
        case .node2: "n2"
        case .client: "cl"
        case .replica: "rp"
        }
    }
}
