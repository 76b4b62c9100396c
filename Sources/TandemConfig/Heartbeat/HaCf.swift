#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The typed contents of Heartbeat's `/etc/ha.d/ha.cf`, as Tandem runs it: Heartbeat R1 (haresources) resource
/// management, so `crm`/`pacemaker` is always off.
///
/// Every field holds the value in force after the whole file was read, with Heartbeat's defaults (from its
/// `config.c`) for directives the file does not give. Values that other checks must point back at are `Located`.
public struct HaConfig: Sendable, Equatable {
    // MARK: Timing

    /// Interval between status packets (`keepalive`, default 1 s).
    public var keepalive: Duration = .seconds(1)
    /// Silence after which a node is declared dead (`deadtime`, default 30 s). Must be more than 2 x keepalive.
    public var deadtime: Duration = .seconds(30)
    /// Lateness that logs "Late heartbeat" (`warntime`). Heartbeat's default is deadtime / 2.
    public var warntime: Duration = .seconds(15)
    /// Dead time used while the cluster starts (`initdead`); see `derivedInitdead(deadtime:)` for the default.
    public var initdead: Duration = .seconds(30)
    /// Dead time for ping nodes (`deadping`); defaults to deadtime.
    public var deadping: Duration = .seconds(30)

    // MARK: Media and membership

    /// The `udpport` given (default 694). Each medium keeps the port in force on its own line.
    public var udpPort: UInt16 = 694
    /// The `baud` given for serial media (default 19200).
    public var baudRate: Int = 19200
    /// Heartbeat links, in file order (bcast, mcast, mcast6, ucast, ucast6, serial).
    public var media: [Located<HeartbeatMedium>] = []
    /// `ping` nodes: pseudo-members whose reachability ipfail compares.
    public var pingNodes: [Located<IPv4Address>] = []
    /// `ping_group` pseudo-members: up when any one address answers.
    public var pingGroups: [Located<PingGroup>] = []
    /// Cluster nodes from the `node` lines, as written (several names per line allowed). Heartbeat compares node
    /// names without regard to ASCII case, and they must match `uname -n`.
    public var nodes: [Located<String>] = []
    /// `autojoin` (default none). Heartbeat refuses `other` and `any` with R1 resource management, so a parsed
    /// configuration always has `.none`.
    public var autojoin: AutojoinMode = .none
    /// `auto_failback` (default legacy, which Heartbeat warns about). `nice_failback` maps onto this.
    public var autoFailback: AutoFailback = .legacy

    // MARK: Processes and API

    /// `respawn` clients, started with Heartbeat and restarted unless they exit with 100.
    public var respawnClients: [Located<RespawnClient>] = []
    /// `apiauth` entries: which users and groups may use the client API under each client name.
    public var apiAuthorizations: [Located<APIAuthorization>] = []

    // MARK: Logging

    /// `logfile`: where messages go besides syslog.
    public var logFile: Located<String>?
    /// `debugfile`: where debug messages go.
    public var debugFile: Located<String>?
    /// `logfacility`: the syslog facility, or `.none` to not use syslog. Nil when not given.
    public var logFacility: Located<SyslogFacility>?
    /// `use_logd`. Nil when not given: Heartbeat then uses the logging daemon only when no other logging is set.
    public var useLogd: Bool?
    /// `debug` level, 0-255 (default 0).
    public var debugLevel: UInt8 = 0

    // MARK: Tuning

    /// `realtime`: run with high priority and locked memory (default on).
    public var realtime: Bool = true
    /// `rtprio`: the SCHED_FIFO priority, 1-99. Nil means Heartbeat's built-in choice.
    public var realtimePriority: Int?
    /// `compression`: the module for large messages (default zlib).
    public var compression: CompressionModule = .zlib
    /// `compression_threshold`: messages larger than this many KiB are compressed (default 2).
    public var compressionThresholdKiB: Int = 2
    /// `traditional_compression`: compress the whole message instead of single fields (default off).
    public var traditionalCompression: Bool = false
    /// `max_rexmit_delay`: upper bound of the random delay before asking for a retransmission (default 250 ms).
    /// Heartbeat reads this one as whole milliseconds, not as a time.
    public var maxRetransmitDelay: Duration = .milliseconds(250)
    /// `hopfudge`: hops allowed above the number of nodes (default 1).
    public var hopFudge: Int = 1
    /// `msgfmt`: the wire format (default classic).
    public var messageFormat: MessageFormat = .classic
    /// `coredumps`: let Heartbeat processes dump core (default on).
    public var coreDumps: Bool = true
    /// `uuidfrom`: where node UUIDs come from (default file).
    public var uuidSource: UUIDSource = .file
    /// `hbgenmethod`: how the restart generation number is made (default file).
    public var generationMethod: GenerationMethod = .file
    /// `conn_logd_time`: interval between attempts to reconnect to the logging daemon (default 60 s).
    public var logdReconnectInterval: Duration = .seconds(60)
    /// `memreserve`: KiB of memory Heartbeat preallocates and locks (default 6500).
    public var memoryReserveKiB: Int = 6500
    /// `record_config_changes`, `record_pengine_inputs`, `enable_config_writes`: Pacemaker-only switches that
    /// Heartbeat accepts and ignores without `crm on` (default on each); kept so that a file reads back the same.
    public var recordConfigChanges: Bool = true
    /// `record_pengine_inputs` (Pacemaker only; see `recordConfigChanges`).
    public var recordPengineInputs: Bool = true
    /// `enable_config_writes` (Pacemaker only; see `recordConfigChanges`).
    public var enableConfigWrites: Bool = true

    // MARK: Tandem extensions (not in Heartbeat; a Heartbeat node would refuse these lines)

    /// `resource_start_timeout`: how long one resource's start may take before it counts as failed (default 120 s).
    public var resourceStartTimeout: Duration = .seconds(120)
    /// `resource_stop_timeout`: the same for a stop; a stop that times out is retried like a failed one.
    public var resourceStopTimeout: Duration = .seconds(120)
    /// `stop_failure_action`: the last resort when a resource cannot be stopped after every retry.
    public var stopFailureAction: StopFailurePolicy = .stopHeartbeats
    /// `monitor_interval`: how often each resource of a running group is checked (default 10 s; 0 turns
    /// monitoring off, which is Heartbeat R1's behaviour).
    public var monitorInterval: Duration = .seconds(10)
    /// `monitor_timeout`: how long one check may take before it counts as failed (default 20 s).
    public var monitorTimeout: Duration = .seconds(20)
    /// `monitor_failures`: the failed check, counted within `monitor_failure_window`, that moves the group to the
    /// peer instead of restarting it in place (default 3; 1 moves it at the first failure).
    public var monitorFailures: Int = 3
    /// `monitor_failure_window`: how long a failed check counts (default 10 min).
    public var monitorFailureWindow: Duration = .seconds(600)

    // MARK: Fencing and watchdog

    /// `watchdog`: the watchdog device Heartbeat feeds.
    public var watchdogDevice: Located<String>?
    /// `alert PATH` (Tandem) lines: programs run on cluster events (node dead, link down, takeover, fence, fence
    /// failure, resource failure, ipfail), with the event in their environment.
    public var alertScripts: [Located<String>] = []
    /// `witness ADDRESS[:PORT]` (Tandem): the tiebreaker. A node that does not hear its peer runs resources only with
    /// the witness's grant.
    public var witness: Located<WitnessEndpoint>?
    /// `stonith_host FROMHOST AGENT NAME=VALUE...` lines: the fence devices. Their parameters may hold passwords.
    public var stonithHosts: [Located<StonithDevice>] = []
    /// `stonith_action` (Tandem): what fencing does to the peer, off (default) or reboot.
    public var stonithAction: StonithAction = .off
    /// `stonith_delay` (Tandem): how long a node that runs no resource group waits before fencing (default 5 s).
    public var stonithDelay: Duration = .seconds(5)
    /// `stonith_timeout` (Tandem): how long one run of a fence agent may take (default 60 s).
    public var stonithTimeout: Duration = .seconds(60)

    /// The fence devices `node` uses: the lines for it by name first, then the `*` lines, in file order.
    public func stonithDevices(for node: String) -> [StonithDevice] {
        let devices = stonithHosts.map(\.value)
        return devices.filter { $0.fromHost?.lowercased() == node.lowercased() } + devices.filter { $0.fromHost == nil }
    }

    /// A configuration with Heartbeat's defaults and no nodes or media (so not usable as it is).
    public init() {}

    /// Heartbeat's default `initdead`: deadtime when that is over 10 s, 12 s when deadtime is under 6 s, and twice
    /// deadtime otherwise (`init_config` in heartbeat/config.c), so that a slow network has time to come up.
    public static func derivedInitdead(deadtime: Duration) -> Duration {
        if deadtime > .seconds(10) { return deadtime }
        if deadtime < .seconds(6) { return .seconds(12) }
        return deadtime * 2
    }

    /// Heartbeat's default `warntime`: half of deadtime.
    public static func derivedWarntime(deadtime: Duration) -> Duration { deadtime / 2 }
}

/// One Heartbeat link, with everything Heartbeat had resolved for it when it read the line.
public enum HeartbeatMedium: Sendable, Hashable {
    /// UDP broadcast on an interface, to the `udpport` in force on its line.
    case bcast(interface: String, port: UInt16)
    /// UDP multicast to an IPv4 group in 224.0.0.0/4. `loop` sends our packets back to us too.
    case mcast(interface: String, group: IPv4Address, port: UInt16, ttl: UInt8, loop: Bool)
    /// UDP multicast to an IPv6 group in ff00::/8, kept as written.
    case mcast6(interface: String, group: String, port: UInt16, hops: UInt8, loop: Bool)
    /// UDP unicast to the peer. A ucast to one's own address is ignored at run time, so one ha.cf serves both nodes.
    case ucast(interface: String, peer: IPv4Address, port: UInt16)
    /// UDP unicast to an IPv6 peer, kept as written.
    case ucast6(interface: String, peer: String, port: UInt16)
    /// A serial line, at the `baud` in force on its line.
    case serial(device: String, baudRate: Int)
}

/// A `ping_group` pseudo-member.
public struct PingGroup: Sendable, Hashable {
    /// The name the group is known by, as a pseudo-node.
    public var name: String
    /// The members; the group is up while any of them answers.
    public var addresses: [IPv4Address]

    public init(name: String, addresses: [IPv4Address]) {
        self.name = name
        self.addresses = addresses
    }
}

/// A `respawn user /path args` line.
public struct RespawnClient: Sendable, Hashable {
    /// The user the command runs as.
    public var user: String
    /// The command line after the user, fields joined by one space.
    public var commandLine: String
    /// The program: the first word of the command line, an absolute path.
    public var executable: String

    public init(user: String, commandLine: String, executable: String) {
        self.user = user
        self.commandLine = commandLine
        self.executable = executable
    }
}

/// An `apiauth client uid=... gid=...` line.
public struct APIAuthorization: Sendable, Hashable {
    /// The client name an API user signs on with, such as ipfail.
    public var client: String
    /// The `uid=`/`gid=` settings as written, fields joined by one space.
    public var settings: String

    public init(client: String, settings: String) {
        self.client = client
        self.settings = settings
    }
}

/// `stop_failure_action`: what to do when a resource will not stop after every retry. Heartbeat rebooted; Tandem's
/// default stops sending heartbeats, so that the peer declares this node dead and takes over.
/// One `stonith_host` line. Tandem runs fence agents in the fence-agents style (the `fence_*` programs): the agent
/// reads `name=value` lines on its standard input (`action=`, `port=`/`plug=`/`nodename=` naming the node to fence,
/// then the line's parameters) and exits 0 on success.
public struct StonithDevice: Sendable, Hashable {
    /// The node that uses this device; nil for `*` (every node).
    public var fromHost: String?
    /// The fence agent: an absolute path, or a program name looked up in the standard search path.
    public var agent: String
    /// The line's `name=value` parameters, in order.
    public var parameters: [Parameter]

    public struct Parameter: Sendable, Hashable {
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    /// Parameters heartbeatd sets itself for each run.
    public static let reservedParameters: Set<String> = ["action", "port", "plug", "nodename"]

    public init(fromHost: String?, agent: String, parameters: [Parameter]) {
        self.fromHost = fromHost
        self.agent = agent
        self.parameters = parameters
    }
}

/// Where the witness listens.
public struct WitnessEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var address: IPv4Address
    public var port: UInt16

    public init(address: IPv4Address, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `ADDRESS` or `ADDRESS:PORT` (ha.cf's `witness`, `tandem witness --listen`); nil when it is neither.
    public init?(parsing text: String, defaultPort: UInt16) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPv4Address(String(parts[0])),
            let port = parts.count == 2 ? UInt16(parts[1]) : defaultPort, port > 0
        else { return nil }
        self.init(address: address, port: port)
    }

    public var description: String { "\(address):\(port)" }
}

/// `stonith_action`: what fencing does to the peer.
public enum StonithAction: String, Sendable, Hashable, CaseIterable {
    /// Power it off; it stays off until an operator powers it on. The default: a two-node cluster whose fenced node
    /// reboots can fence the survivor in turn when the link that failed is still down (a fence loop).
    case off
    case reboot
}

public enum StopFailurePolicy: String, Sendable, Hashable, CaseIterable {
    case stopHeartbeats = "stop-heartbeats"
    case reboot
    case none
}

/// `auto_failback`: whether resources move back to their preferred node when it returns.
public enum AutoFailback: String, Sendable, Hashable, CaseIterable {
    case on
    case off
    /// Pre-1.0 behaviour for clusters where not every node knows auto_failback; Heartbeat warns about it.
    case legacy
}

/// `autojoin`: whether nodes missing from the `node` lines may join.
public enum AutojoinMode: String, Sendable, Hashable, CaseIterable {
    case none
    case other
    case any
}

/// `msgfmt`: how messages are encoded on the wire.
public enum MessageFormat: String, Sendable, Hashable, CaseIterable {
    case classic
    case netstring
}

/// `uuidfrom`: where node UUIDs come from.
public enum UUIDSource: String, Sendable, Hashable, CaseIterable {
    case file
    case nodename
}

/// `hbgenmethod`: how the generation number that marks a restart is made.
public enum GenerationMethod: String, Sendable, Hashable, CaseIterable {
    case file
    case time
}

/// `compression`: the compression plugins Heartbeat ships.
public enum CompressionModule: String, Sendable, Hashable, CaseIterable {
    case zlib
    case bz2
}

/// `logfacility`: the syslog facilities cluster-glue knows, plus `none` to not use syslog.
public enum SyslogFacility: String, Sendable, Hashable, CaseIterable {
    case none
    case auth, authpriv, cron, daemon, ftp, kern, lpr, mail, news, syslog, user, uucp
    case local0, local1, local2, local3, local4, local5, local6, local7
}

/// An IPv4 address, written as a strict dotted quad (`192.168.4.1`). Shared by ha.cf and haresources.
public struct IPv4Address: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The address in host byte order: `10.0.0.1` is `0x0A00_0001`.
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Parses four decimal octets 0-255. Leading zeros are refused, as glibc's `inet_pton` does, because other
    /// tools read `010` as octal.
    public init?(_ text: some StringProtocol) {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var value: UInt32 = 0
        for octet in octets {
            guard (1...3).contains(octet.count), octet.allSatisfy({ $0.isASCII && $0.isNumber }),
                octet.count == 1 || octet.first != "0", let number = UInt32(octet), number <= 255
            else { return nil }
            value = value << 8 | number
        }
        rawValue = value
    }

    /// True for 224.0.0.0/4, the IPv4 multicast range.
    public var isMulticast: Bool { rawValue >> 28 == 0xE }

    public var description: String {
        (0..<4).map { String((rawValue >> (24 - 8 * $0)) & 0xFF) }.joined(separator: ".")
    }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// IPv6 text checks for `mcast6` and `ucast6`, which keep their addresses as written.
enum IPv6Text {
    /// The 16 bytes of an IPv6 address in any form `inet_pton` accepts, or nil.
    static func bytes(_ text: String) -> [UInt8]? {
        var address = in6_addr()
        guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
        return withUnsafeBytes(of: &address) { Array($0) }
    }

    /// True when `text` is an IPv6 multicast address (ff00::/8).
    static func isMulticast(_ text: String) -> Bool { bytes(text)?.first == 0xFF }
}
