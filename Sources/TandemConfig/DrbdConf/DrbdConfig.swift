/// A drbd.conf as Tandem uses it: the global options and every resource with its effective settings. `common`
/// has already been folded into each resource and resource-level device/disk/meta-disk into each host, so what a
/// resource says here is what it gets.
public struct DrbdConfig: Sendable, Equatable {
    public var globalOptions: DrbdOptions
    public var resources: [DrbdResource]

    public init(globalOptions: DrbdOptions = DrbdOptions(), resources: [DrbdResource] = []) {
        self.globalOptions = globalOptions
        self.resources = resources
    }

    public func resource(named name: String) -> DrbdResource? {
        resources.first { $0.name.value == name }
    }
}

public struct DrbdResource: Sendable, Equatable {
    public var name: Located<String>
    /// net, disk, startup, options and handlers, from `common` overlaid by the resource's own sections.
    public var options: DrbdOptions
    public var hosts: [DrbdHost]
    /// DRBD 9 `connection` / `connection-mesh` sections. Empty means the classic two-node pair of `hosts`.
    public var connections: [DrbdConnection]

    public init(name: Located<String>, options: DrbdOptions, hosts: [DrbdHost], connections: [DrbdConnection] = []) {
        self.name = name
        self.options = options
        self.hosts = hosts
        self.connections = connections
    }

    /// The host section for a node name, as `on NAME` selects it.
    public func host(named node: String) -> DrbdHost? {
        hosts.first { $0.names.contains { $0.value == node } }
    }

    /// True when the resource uses DRBD 9 constructs, so `dump` writes DRBD 9 syntax for it.
    public var usesDrbd9Syntax: Bool {
        !connections.isEmpty || hosts.contains { $0.nodeID != nil }
    }
}

/// One `on HOST { ... }` (or `floating ADDRESS { ... }`) section.
public struct DrbdHost: Sendable, Equatable {
    /// The host names of `on`; empty for a `floating` section, which is selected by its address.
    public var names: [Located<String>]
    public var address: Located<DrbdAddress>?
    public var nodeID: Int?
    public var volumes: [DrbdVolume]
    public var isFloating: Bool

    public init(
        names: [Located<String>], address: Located<DrbdAddress>?, nodeID: Int? = nil,
        volumes: [DrbdVolume], isFloating: Bool = false
    ) {
        self.names = names
        self.address = address
        self.nodeID = nodeID
        self.volumes = volumes
        self.isFloating = isFloating
    }

    public var displayName: String {
        isFloating ? "floating \(address?.value.description ?? "?")" : names.map(\.value).joined(separator: " ")
    }
}

/// One replicated volume of a host: the device it appears as, its backing disk and where its metadata lives.
public struct DrbdVolume: Sendable, Equatable {
    public var number: Int
    public var device: Located<DrbdDevice>
    public var disk: Located<DrbdBackingDisk>
    public var metaDisk: Located<DrbdMetaDisk>
    /// `disk { }` options set for this volume only; they override the resource's.
    public var diskOptions: DrbdOptions

    public init(
        number: Int, device: Located<DrbdDevice>, disk: Located<DrbdBackingDisk>, metaDisk: Located<DrbdMetaDisk>,
        diskOptions: DrbdOptions = DrbdOptions()
    ) {
        self.number = number
        self.device = device
        self.disk = disk
        self.metaDisk = metaDisk
        self.diskOptions = diskOptions
    }
}

/// `device /dev/drbd0;`, `device /dev/drbd0 minor 0;` or `device minor 0;`.
public struct DrbdDevice: Sendable, Hashable, CustomStringConvertible {
    public static let minorMax = 1_048_575

    public var path: String
    public var minor: Int

    public init(path: String, minor: Int) {
        self.path = path
        self.minor = minor
    }

    public var description: String { "\(path) minor \(minor)" }
}

public enum DrbdBackingDisk: Sendable, Hashable, CustomStringConvertible {
    case path(String)
    /// `disk none;`: a diskless node that serves I/O from its peer.
    case none

    public var description: String {
        switch self {
        case .path(let path): path
        case .none: "none"
        }
    }
}

/// Where the metadata (superblock, activity log, bitmap) is kept.
public enum DrbdMetaDisk: Sendable, Hashable, CustomStringConvertible {
    /// At the end of the backing device.
    case `internal`
    /// Slot `index` (128 MiB each) of a shared external metadata device: `meta-disk /dev/sdb2 [0];`.
    case indexed(path: String, index: Int)
    /// A whole external device sized to the backing device: `meta-disk /dev/sdb2;` or `flexible-meta-disk`.
    case flexible(path: String)

    public static let indexMax = 255

    public var description: String {
        switch self {
        case .internal: "internal"
        case .indexed(let path, let index): "\(path) [\(index)]"
        case .flexible(let path): path
        }
    }
}

/// `address [ipv4|ipv6] HOST:PORT`.
public struct DrbdAddress: Sendable, Hashable, CustomStringConvertible {
    public enum Family: String, Sendable, Hashable, CaseIterable {
        case ipv4
        case ipv6
        case ssocks
        case sdp
        case sci
    }

    public var family: Family
    public var host: String
    public var port: UInt16

    public init(family: Family, host: String, port: UInt16) {
        self.family = family
        self.host = host
        self.port = port
    }

    /// `ipv4 10.0.0.1:7789` or `ipv6 [fd00::1]:7789`.
    public var description: String {
        family == .ipv6 ? "ipv6 [\(host)]:\(port)" : "\(family.rawValue) \(host):\(port)"
    }

    /// `10.0.0.1:7789` or `[fd00::1]:7789`, for messages and uniqueness checks.
    public var endpoint: String { family == .ipv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A DRBD 9 connection between hosts of a resource, with its own net options.
public struct DrbdConnection: Sendable, Equatable {
    public var hosts: [Located<String>]
    /// Per-connection addresses (`host NAME address ...;` or `path { }`), by host name.
    public var addresses: [String: DrbdAddress]
    public var options: DrbdOptions
    /// `connection-mesh { hosts a b c; }` rather than a single `connection`.
    public var isMesh: Bool

    public init(hosts: [Located<String>], addresses: [String: DrbdAddress] = [:], options: DrbdOptions = DrbdOptions(), isMesh: Bool = false) {
        self.hosts = hosts
        self.addresses = addresses
        self.options = options
        self.isMesh = isMesh
    }
}
