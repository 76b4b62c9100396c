import ReplicationCore
import TandemConfig
import TandemStorage
import TandemTransport

/// Everything a `ResourceRunner` needs to bring one resource up on this node, taken from drbd.conf: the volume's
/// disks, the two addresses, the replication settings, the transport settings and the handlers.
///
/// Scope of this build: one volume per resource (the classic two-host resource of DRBD 8.4 syntax), with a backing
/// disk. DRBD 9 `connection` sections, more than one volume, more than two hosts and `disk none` are refused with a
/// message saying so.
public struct ResourcePlan: Sendable {
    public var resourceName: String
    public var nodeName: String
    public var peerName: String
    /// drbd.conf's path, for handlers (DRBD_CONF).
    public var configPath: String
    public var volumeNumber: Int
    public var device: DrbdDevice
    public var backingDisk: String
    public var metaDisk: DrbdMetaDisk
    public var localAddress: DrbdAddress
    public var peerAddress: DrbdAddress
    public var settings: ReplicationSettings
    public var transport: TCPReplicationTransport.Configuration
    /// Handler commands by handler, as drbd.conf's `handlers { }` section gives them.
    public var handlers: [DrbdHandler: String]
    /// Options drbd.conf sets that Tandem's parser implements but this daemon does not apply yet, with the reason;
    /// logged at `up` so that nobody believes they are in force.
    public var notApplied: [String]
    /// Where split-brain victims' blocks are kept; nil for the default under /var/lib/tandem/preserved.
    public var preserveDirectory: String?

    public var metadataConfiguration: FileMetadataStore.Configuration {
        FileMetadataStore.Configuration(
            resourceName: resourceName, dataPath: backingDisk, metaDisk: metaDisk,
            activityLogExtents: settings.activityLogExtents, activityLogSlots: settings.activityLogRingSlots,
            preserveDirectory: preserveDirectory)
    }
}

/// Why a resource cannot be planned: the CLI shows the message and exits with 1 (configuration problems).
public struct PlanError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension ResourcePlan {
    /// The plan for `resource` on `node`, or a `PlanError` that says what in drbd.conf stands in the way.
    public static func make(
        resource: DrbdResource, node: String, configPath: String, preserveDirectory: String? = nil
    ) throws(PlanError) -> ResourcePlan {
        let name = resource.name.value
        guard resource.connections.isEmpty else {
            throw PlanError("\(name): DRBD 9 connection sections are not supported by replicad yet")
        }
        guard let host = resource.host(named: node) else {
            throw PlanError("\(name) has no 'on \(node)' section in \(configPath)")
        }
        let others = resource.hosts.filter { !$0.names.contains { $0.value == node } }
        guard others.count == 1, let peer = others.first else {
            throw PlanError("\(name): replicad needs exactly two hosts, this node and one peer (found \(resource.hosts.count))")
        }
        guard let localAddress = host.address?.value, let peerAddress = peer.address?.value else {
            throw PlanError("\(name): both hosts need an address")
        }
        for address in [localAddress, peerAddress] where address.family != .ipv4 && address.family != .ipv6 {
            throw PlanError("\(name): address family \(address.family.rawValue) is not supported (only ipv4 and ipv6)")
        }
        guard host.volumes.count == 1, let volume = host.volumes.first else {
            throw PlanError(
                "\(name): replicad supports one volume per resource in this build (found \(host.volumes.count))")
        }
        guard case .path(let backingDisk) = volume.disk.value else {
            throw PlanError("\(name): 'disk none' (a diskless node) is not supported by replicad yet")
        }
        let options = resource.options.overlaid(by: volume.diskOptions)
        let (settings, notApplied) = try Self.settings(from: options, resource: name)
        var transport = TCPReplicationTransport.Configuration(
            resourceName: name,
            localAddress: ReplicationEndpoint(host: localAddress.host, port: localAddress.port),
            peerAddress: ReplicationEndpoint(host: peerAddress.host, port: peerAddress.port))
        transport.connectInterval = settings.connectInterval
        transport.sendBufferBytes = Int(options.sendBufferBytes)
        transport.receiveBufferBytes = Int(options.receiveBufferBytes)
        if let problem = transport.problem() { throw PlanError("\(name): \(problem)") }
        var handlers: [DrbdHandler: String] = [:]
        for handler in DrbdHandler.allCases {
            if let command = options.handler(handler) { handlers[handler] = command }
        }
        if settings.fencing != .dontCare && handlers[.fencePeer] == nil {
            // Without the handler a fence could never succeed: every promotion of a disconnected node would be
            // refused, and with resource-and-stonith I/O would stay suspended after every disconnect.
            throw PlanError(
                "\(name): fencing \(settings.fencing.rawValue) needs a fence-peer handler "
                    + "(handlers { fence-peer \"tandem fence-peer\"; } asks the peer, over the heartbeat links, to outdate its disk)")
        }
        return ResourcePlan(
            resourceName: name, nodeName: node, peerName: peer.displayName, configPath: configPath,
            volumeNumber: volume.number, device: volume.device.value, backingDisk: backingDisk,
            metaDisk: volume.metaDisk.value, localAddress: localAddress, peerAddress: peerAddress,
            settings: settings, transport: transport, handlers: handlers, notApplied: notApplied,
            preserveDirectory: preserveDirectory)
    }

    /// `ReplicationSettings` from the effective drbd.conf options. Returns the settings and a line for every option
    /// that is set but not applied, because the replication machine has no such setting yet.
    static func settings(from options: DrbdOptions, resource: String) throws(PlanError)
        -> (ReplicationSettings, [String])
    {
        var settings = ReplicationSettings()
        settings.replicationProtocol = options.replicationProtocol
        settings.policies = SplitBrainPolicies(
            zeroPrimaries: options.afterSplitBrainZeroPrimaries, onePrimary: options.afterSplitBrainOnePrimary,
            twoPrimaries: options.afterSplitBrainTwoPrimaries, resyncConflict: options.resyncConflict,
            alwaysApplyToOlderAncestor: options[.net, "always-asbp"] == .boolean(true)
                || options[.net, "always-asbp"] == .flag)
        settings.allowTwoPrimaries = options.allowTwoPrimaries
        settings.maxBuffers = Int(options.maxBuffers)
        settings.maxEpochSize = Int(options.maxEpochSize)
        // The metadata's activity-log geometry wins at attach (FileMetadataStore.recover); this is what create-md
        // writes.
        settings.activityLogExtents = Int(options.activityLogExtents)
        settings.pingInterval = .seconds(options.pingIntervalSeconds)
        settings.pingTimeout = .milliseconds(options.pingTimeoutDeciseconds * 100)
        // DRBD drops a peer that leaves a request unanswered for `timeout` ko-count times in a row. ko-count 0
        // disables that; the pings (ping-int, ping-timeout) still notice a dead peer, so a day stands for "never".
        let knockOut = options.knockOutCount
        settings.requestTimeout =
            knockOut > 0 ? .milliseconds(options.timeoutDeciseconds * 100 * knockOut) : .seconds(86_400)
        settings.connectInterval = .seconds(options.connectIntervalSeconds)
        settings.resync.rateBytesPerSecond = options.resyncRateKiBPerSecond * 1024
        settings.resync.planAhead = .milliseconds(options.planAheadDeciseconds * 100)
        settings.resync.fillTargetBytes = options.fillTargetSectors * 512
        settings.resync.delayTarget = .milliseconds(options.delayTargetDeciseconds * 100)
        settings.resync.maxRateBytesPerSecond = options.maxRateKiBPerSecond * 1024
        settings.resync.minRateBytesPerSecond = options.minRateKiBPerSecond * 1024
        settings.checksumResyncAlgorithm = try algorithm(options.checksumResyncAlgorithm, "csums-alg", resource)
        settings.verifyAlgorithm = try algorithm(options.verifyAlgorithm, "verify-alg", resource)
        if let name = options.cramHMACAlgorithm {
            guard let algorithm = try self.algorithm(name, "cram-hmac-alg", resource), algorithm != .crc32c else {
                throw PlanError("\(resource): cram-hmac-alg \(name) is not an HMAC algorithm (use sha1, sha256, ...)")
            }
            guard let secret = options.sharedSecret, !secret.isEmpty else {
                throw PlanError("\(resource): cram-hmac-alg is set but shared-secret is not")
            }
            settings.authentication = PeerAuthentication(algorithm: algorithm, secret: Array(secret.utf8))
        }
        // Negotiated in the handshake so that both sides must agree; the machine computes no per-packet digest yet
        // (every frame carries a CRC32C regardless).
        settings.integrityAlgorithm = options.dataIntegrityAlgorithm ?? ""
        settings.onIOError = options.onIOError
        settings.fencing = options.fencing
        settings.diskFlushes = options.diskFlushes
        return (settings, notApplied(options))
    }

    static func algorithm(_ name: String?, _ option: String, _ resource: String) throws(PlanError) -> DigestAlgorithm? {
        guard let name else { return nil }
        guard let algorithm = DigestAlgorithm(configName: name) else {
            let known = DigestAlgorithm.allCases.map(\.rawValue).joined(separator: ", ")
            throw PlanError("\(resource): \(option) \(name) is not supported (supported: \(known))")
        }
        return algorithm
    }

    /// Options the parser accepts as implemented that neither the replication machine nor the daemon applies yet,
    /// with the reason. Options the catalog marks as not implemented are already explained by `tandem check`.
    static let unappliedOptions: [DrbdOptionKey: String] = [
        DrbdOptionKey(section: .net, name: "on-congestion"): "Ahead/Behind (pull-ahead) is not implemented",
        DrbdOptionKey(section: .net, name: "congestion-fill"): "Ahead/Behind is not implemented",
        DrbdOptionKey(section: .net, name: "congestion-extents"): "Ahead/Behind is not implemented",
        DrbdOptionKey(section: .net, name: "csums-after-crash-only"): "csums-alg applies to every resync",
        DrbdOptionKey(section: .net, name: "use-rle"): "bitmaps are sent as plain words",
        DrbdOptionKey(section: .net, name: "allow-remote-read"): "reads are always local while the disk is UpToDate",
        DrbdOptionKey(section: .disk, name: "md-flushes"): "metadata writes are always flushed",
        DrbdOptionKey(section: .disk, name: "size"): "the whole backing device (less internal metadata) is used",
        DrbdOptionKey(section: .disk, name: "resync-after"): "resources resync independently",
        DrbdOptionKey(section: .disk, name: "al-updates"): "the activity log is always written",
        DrbdOptionKey(section: .disk, name: "disk-timeout"): "backing-device requests never time out",
        DrbdOptionKey(section: .disk, name: "discard-zeroes-if-aligned"): "discards are not implemented",
        DrbdOptionKey(section: .startup, name: "wfc-timeout"): "replicad does not wait at up; see tandem adm status",
        DrbdOptionKey(section: .startup, name: "degr-wfc-timeout"): "replicad does not wait at up",
        DrbdOptionKey(section: .startup, name: "outdated-wfc-timeout"): "replicad does not wait at up",
        DrbdOptionKey(section: .startup, name: "wait-after-sb"): "replicad does not wait at up",
        DrbdOptionKey(section: .startup, name: "become-primary-on"): "promotion is left to the operator or heartbeatd",
        DrbdOptionKey(section: .options, name: "on-no-data-accessible"): "I/O without UpToDate data fails",
        DrbdOptionKey(section: .options, name: "max-io-depth"): "the machine's own limits bound requests in flight",
    ]

    static func notApplied(_ options: DrbdOptions) -> [String] {
        options.values.keys.sorted().compactMap { key in
            guard let reason = unappliedOptions[key] else { return nil }
            return "\(key.section.rawValue) { \(key.name) } is not applied by this build: \(reason)"
        }
    }
}
