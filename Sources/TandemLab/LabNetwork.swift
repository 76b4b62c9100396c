import Foundation

/// The lab's wiring, made with `ip`: a network namespace per machine plus one for the service switch.
///
///     node1 eth1 ──┐                 ┌── eth1 client
///                  ├── switch (br0) ─┤
///     node2 eth1 ──┘                 └── eth1 replica
///     node1 eth2 ─────────────────────── eth2 node2     heartbeat link (a crossover cable)
///     node1 eth3 ─────────────────────── eth3 node2     replication link
///
/// Cutting a node's links is `ip link set down` on its side; a power cycle also resets its addresses, since a
/// machine that boots again has only its configured addresses, never the VIP it held.
struct LabNetwork {
    let layout: LabLayout

    var allNamespaces: [String] { LabHost.allCases.map(layout.namespace) + [layout.switchNamespace] }

    static func existingNamespaces() -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? [])
    }

    func create() throws(LabError) {
        let existing = Self.existingNamespaces()
        if let taken = allNamespaces.first(where: existing.contains) {
            throw LabError(.refused, "network namespace \(taken) already exists: another lab with prefix \(layout.prefix) is up (tandem lab down)")
        }
        for namespace in allNamespaces {
            try ip(["netns", "add", namespace])
            try ip(["-n", namespace, "link", "set", "lo", "up"])
        }
        let bridge = layout.switchNamespace
        try ip(["-n", bridge, "link", "add", "br0", "type", "bridge"])
        try ip(["-n", bridge, "link", "set", "br0", "up"])
        for host in LabHost.allCases {
            let namespace = layout.namespace(host)
            try ip(["link", "add", "eth1", "netns", namespace, "type", "veth", "peer", "name", host.switchPortName, "netns", bridge])
            try ip(["-n", bridge, "link", "set", host.switchPortName, "master", "br0", "up"])
        }
        for interface in ["eth2", "eth3"] {
            try ip([
                "link", "add", interface, "netns", layout.namespace(.node1), "type", "veth", "peer", "name", interface, "netns",
                layout.namespace(.node2),
            ])
        }
        for host in LabHost.allCases { try configureAddresses(host) }
    }

    /// The machine's own addresses, as after a boot: the VIP is never among them.
    func configureAddresses(_ host: LabHost) throws(LabError) {
        let namespace = layout.namespace(host)
        var addresses = [("eth1", layout.serviceAddress(host) + "/\(layout.servicePrefixLength)")]
        if host.isClusterNode {
            addresses.append(("eth2", layout.heartbeatAddress(host) + "/24"))
            addresses.append(("eth3", layout.replicationAddress(host) + "/24"))
        }
        for (interface, address) in addresses {
            try ip(["-n", namespace, "addr", "flush", "dev", interface])
            try ip(["-n", namespace, "addr", "add", address, "brd", "+", "dev", interface])
            try ip(["-n", namespace, "link", "set", interface, "up"])
        }
    }

    func interfaces(_ host: LabHost) -> [String] { host.isClusterNode ? ["eth1", "eth2", "eth3"] : ["eth1"] }

    func setLinks(_ host: LabHost, up: Bool) throws(LabError) {
        for interface in interfaces(host) {
            try ip(["-n", layout.namespace(host), "link", "set", interface, up ? "up" : "down"])
        }
    }

    /// Cuts (or restores) every heartbeat path between the nodes and nothing else: eth2, the dedicated link, goes down
    /// on both, and the unicast heartbeats over the service network go nowhere (each node's entry for the other's
    /// service address is misdirected). A route cannot do it: heartbeatd binds its sockets to the interface, and
    /// such a socket's packets follow the interface's own routes. Clients, the VIP and replication (eth3) keep
    /// working.
    func setHeartbeatPaths(cut: Bool) throws(LabError) {
        for node in LabHost.nodes {
            try ip(["-n", layout.namespace(node), "link", "set", "eth2", cut ? "down" : "up"])
            try misdirect(from: node, to: layout.serviceAddress(node.peer), cut)
        }
    }

    /// Cuts (or restores) the replication link (eth3) at `node`; the heartbeat links and the service network stay.
    func setReplicationLink(_ node: LabHost, up: Bool) throws(LabError) {
        try ip(["-n", layout.namespace(node), "link", "set", "eth3", up ? "up" : "down"])
    }

    /// Makes `node` unable (or able again) to reach the client machine, the lab's ping node, while the client still
    /// reaches the VIP: the client's echo replies to the node's own service address go nowhere.
    func setPingNodeReachable(from node: LabHost, _ reachable: Bool) throws(LabError) {
        try misdirect(from: .client, to: layout.serviceAddress(node), !reachable)
    }

    /// Pins (or unpins) `host`'s eth1 neighbour entry for `address` to a MAC address no machine has: the bridge then
    /// delivers what `host` sends to that address to no one, and nothing else changes.
    private func misdirect(from host: LabHost, to address: String, _ misdirected: Bool) throws(LabError) {
        let arguments = ["-n", layout.namespace(host), "neigh"]
        if misdirected {
            try ip(arguments + ["replace", address, "lladdr", Self.nowhereMAC, "dev", "eth1", "nud", "permanent"])
        } else {
            _ = try? ip(arguments + ["del", address, "dev", "eth1"])  // Already gone when the machine was powered off.
        }
    }

    /// A locally administered unicast address that no lab machine has.
    static let nowhereMAC = "02:00:5e:00:de:ad"

    /// Whether `address` is configured on the machine (the VIP's holder).
    func holds(_ host: LabHost, address: String) -> Bool {
        guard let output = try? ip(["-n", layout.namespace(host), "-o", "-4", "addr", "show"]) else { return false }
        return output.contains(" \(address)/")
    }

    /// Deletes every namespace of the lab that exists (their links go with them). Safe to repeat.
    func delete() -> [String] {
        var problems: [String] = []
        let existing = Self.existingNamespaces()
        for namespace in allNamespaces where existing.contains(namespace) {
            do throws(LabError) {
                try ip(["netns", "delete", namespace])
            } catch {
                problems.append(error.message)
            }
        }
        return problems
    }

    @discardableResult
    private func ip(_ arguments: [String]) throws(LabError) -> String {
        try LabTool.check(LabTool.ip, arguments)
    }
}
