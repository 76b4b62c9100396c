import Foundation

/// Checks that the files of a configuration folder agree with each other: the cluster's nodes are the replicated
/// resources' hosts, haresources names resources and devices that drbd.conf defines, in an order that can work,
/// and no address is used for two things. Each file on its own has already been checked by its parser.
struct CrossCheck {
    let config: ConfigDirectory
    var log = DiagnosticLog()
    private var sources: [String: SourceFile] = [:]

    init(config: ConfigDirectory) {
        self.config = config
    }

    mutating func run() {
        let drbd = config.drbd?.model
        let haConfig = config.haConfig?.model
        let haresources = config.haresources?.model
        if let drbd, let haConfig { checkNodes(drbd: drbd, haConfig: haConfig) }
        if let haresources, let haConfig { checkPreferredNodes(haresources, haConfig: haConfig) }
        if let haresources, let drbd { checkReplicatedResources(haresources, drbd: drbd) }
        if let haresources { checkAddresses(haresources, drbd: drbd, haConfig: haConfig) }
    }

    // MARK: Nodes

    /// Every drbd.conf host must be a cluster node, or the cluster manager could never promote it. A cluster node
    /// without a replica (a witness, say) is allowed but worth a warning.
    private mutating func checkNodes(drbd: DrbdConfig, haConfig: HaConfig) {
        let nodes = Set(haConfig.nodes.map(\.value))
        let nodeList = haConfig.nodes.map(\.value).joined(separator: ", ")
        var hostNames = Set<String>()
        for resource in drbd.resources {
            for name in resource.hosts.flatMap(\.names) {
                hostNames.insert(name.value)
                if !nodes.isEmpty, !nodes.contains(name.value) {
                    report(.error, .checkNodeMismatch, at: name.location,
                           "host '\(name.value)' of resource '\(resource.name.value)' is not a node in ha.cf (nodes: \(nodeList))",
                           hint: Suggestions.didYouMean(name.value, among: haConfig.nodes.map(\.value)))
                }
            }
        }
        guard !drbd.resources.isEmpty else { return }
        for node in haConfig.nodes where !hostNames.contains(node.value) {
            report(.warning, .checkNodeMismatch, at: node.location,
                   "node '\(node.value)' has no 'on \(node.value)' section in drbd.conf, so it can never run replicated resources")
        }
    }

    private mutating func checkPreferredNodes(_ haresources: Haresources, haConfig: HaConfig) {
        let nodes = Set(haConfig.nodes.map(\.value))
        guard !nodes.isEmpty else { return }
        for group in haresources.groups where !nodes.contains(group.preferredNode.value) {
            report(.error, .checkNodeMismatch, at: group.preferredNode.location,
                   "'\(group.preferredNode.value)' is not a node in ha.cf (nodes: \(haConfig.nodes.map(\.value).joined(separator: ", ")))",
                   hint: Suggestions.didYouMean(group.preferredNode.value, among: haConfig.nodes.map(\.value)))
        }
    }

    // MARK: Replicated resources and devices

    /// drbddisk names a defined resource; a Filesystem on a replicated device names a defined resource's device
    /// and comes after the drbddisk that promotes it. Other devices (a SAN path, say) are not ours to check.
    private mutating func checkReplicatedResources(_ haresources: Haresources, drbd: DrbdConfig) {
        let resourceNames = drbd.resources.map(\.name.value)
        var resourceByDevice: [String: String] = [:]
        for resource in drbd.resources {
            for volume in resource.hosts.flatMap(\.volumes) {
                resourceByDevice[volume.device.value.path] = resource.name.value
            }
            resourceByDevice["/dev/drbd/by-res/\(resource.name.value)"] = resource.name.value
            resourceByDevice["/dev/tandem/by-res/\(resource.name.value)"] = resource.name.value
        }
        for group in haresources.groups {
            var promoted = Set<String>()
            for resource in group.resources {
                switch resource.kind {
                case .drbddisk(let name?):
                    if resourceNames.contains(name) {
                        promoted.insert(name)
                    } else {
                        report(.error, .checkUnknownResource, at: resource.location,
                               "drbddisk names resource '\(name)', which drbd.conf does not define (defined: \(resourceNames.joined(separator: ", ")))",
                               hint: Suggestions.didYouMean(name, among: resourceNames))
                    }
                case .drbddisk(nil):
                    promoted.formUnion(resourceNames)
                case .filesystem(let device, _, _, _):
                    checkFilesystemDevice(device, at: resource.location, resourceByDevice: resourceByDevice, promoted: promoted)
                default:
                    break
                }
            }
        }
    }

    private mutating func checkFilesystemDevice(
        _ device: String, at location: SourceLocation, resourceByDevice: [String: String], promoted: Set<String>
    ) {
        let looksReplicated = device.hasPrefix("/dev/drbd") || device.hasPrefix("/dev/tandem/")
        guard let resource = resourceByDevice[device] else {
            if looksReplicated {
                report(.error, .checkUnknownDevice, at: location,
                       "Filesystem device \(device) is not the device of any resource in drbd.conf (devices: \(resourceByDevice.keys.filter { !$0.contains("/by-res/") }.sorted().joined(separator: ", ")))")
            }
            return
        }
        if !promoted.contains(resource) {
            report(.error, .checkResourceOrder, at: location,
                   "Filesystem on \(device) starts before resource '\(resource)' is promoted",
                   hint: "put drbddisk::\(resource) before this Filesystem in the group (groups start left to right)")
        }
    }

    // MARK: Addresses

    /// A floating IP must not be a node's own address, a replication endpoint's host or another group's VIP.
    private mutating func checkAddresses(_ haresources: Haresources, drbd: DrbdConfig?, haConfig: HaConfig?) {
        var used: [String: String] = [:]
        for resource in drbd?.resources ?? [] {
            for host in resource.hosts {
                if let address = host.address {
                    used[address.value.host] = "the replication address of '\(host.displayName)' in resource '\(resource.name.value)'"
                }
            }
        }
        for ping in haConfig?.pingNodes ?? [] {
            used[ping.value.description] = "a ping node in ha.cf"
        }
        for medium in haConfig?.media ?? [] {
            if case .ucast(_, let peer, _) = medium.value { used[peer.description] = "a ucast heartbeat peer in ha.cf" }
        }
        for group in haresources.groups {
            for resource in group.resources {
                guard case .ipAddress(let vip) = resource.kind else { continue }
                let key = vip.address.description
                if let owner = used[key] {
                    report(.error, .checkAddressCollision, at: resource.location,
                           "the floating address \(key) is already \(owner)")
                } else {
                    used[key] = "the floating address of group '\(group.preferredNode.value) \(group.key)'"
                }
            }
        }
    }

    // MARK: Reporting

    private mutating func report(
        _ severity: Diagnostic.Severity, _ code: DiagnosticCode, at location: SourceLocation, _ message: String,
        hint: String? = nil
    ) {
        if sources[location.file] == nil, let source = try? SourceFile.load(path: location.file) {
            sources[location.file] = source
        }
        let line = sources[location.file]?.lineText(location.line)
        log.report(Diagnostic(severity, code, at: location, message, hint: hint, sourceLine: line))
    }
}
