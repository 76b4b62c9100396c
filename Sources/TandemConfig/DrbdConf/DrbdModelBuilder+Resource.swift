import Foundation

/// The settings of one volume while they are being gathered from the resource level and the host level.
struct VolumeDraft {
    var device: Located<DrbdDevice>?
    var disk: Located<DrbdBackingDisk>?
    var metaDisk: Located<DrbdMetaDisk>?
    var diskOptions = DrbdOptions()
    /// Settings that were written but could not be parsed; already reported, so not reported again as missing.
    var invalidSettings: Set<String> = []

    /// This draft with `other`'s settings taking precedence where it has them (host over resource).
    func overlaid(by other: VolumeDraft?) -> VolumeDraft {
        guard let other else { return self }
        return VolumeDraft(
            device: other.device ?? device,
            disk: other.disk ?? disk,
            metaDisk: other.metaDisk ?? metaDisk,
            diskOptions: diskOptions.overlaid(by: other.diskOptions),
            invalidSettings: invalidSettings.union(other.invalidSettings)
        )
    }
}

extension DrbdModelBuilder {
    static let volumeNumberMax: Int64 = 65534
    static let nodeIDMax: Int64 = 31
    static let hostsPerResourceMax = 32

    mutating func resource(_ node: DrbdNode, common: DrbdOptions) -> DrbdResource? {
        guard let name = node.arguments.first else { return nil }
        var options = DrbdOptions()
        var seen: [DrbdOptionKey: DrbdToken] = [:]
        var volumes: [Int: VolumeDraft] = [:]
        var hostNodes: [DrbdNode] = []
        var connections: [DrbdConnection] = []
        for child in node.body ?? [] {
            switch (child.name, child.isSection) {
            case ("on", true), ("floating", _):
                // `floating ADDRESS;` is drbdadm's short form of a floating host that inherits everything.
                hostNodes.append(child)
            case ("volume", true):
                if let (number, draft) = volume(child) { addVolume(number, draft, at: child, to: &volumes) }
            case ("connection", true), ("connection-mesh", true):
                if let connection = connection(child) { connections.append(connection) }
            case (_, true):
                applyOptions(of: child, section: child.name, into: &options, seen: &seen)
            case ("protocol", false):
                applyOption(child, section: "net", into: &options, seen: &seen)
            case ("device", false), ("disk", false), ("meta-disk", false), ("flexible-meta-disk", false):
                applyVolumeSetting(child, to: &volumes[0, default: VolumeDraft()])
            default:
                reportUnknownStatement(
                    child, in: "resource '\(name.text)'",
                    known: ["protocol", "device", "disk", "meta-disk", "flexible-meta-disk", "on", "floating", "volume"]
                )
            }
        }
        var hosts: [DrbdHost] = []
        if hostNodes.count > Self.hostsPerResourceMax {
            report(.drbdHostCount, at: hostNodes[Self.hostsPerResourceMax].keyword,
                   "resource '\(name.text)' has more than \(Self.hostsPerResourceMax) host sections")
        }
        for hostNode in hostNodes.prefix(Self.hostsPerResourceMax) {
            let addressRequired = connections.isEmpty
            if let host = host(hostNode, inherited: volumes, resource: name.text, addressRequired: addressRequired) {
                hosts.append(host)
            }
        }
        checkHosts(hosts, connections: connections, resource: name)
        return DrbdResource(
            name: Located(name.text, at: name.location), options: common.overlaid(by: options),
            hosts: hosts, connections: connections
        )
    }

    /// `on NAME { ... }` or `floating [FAMILY] ADDRESS:PORT { ... }`.
    mutating func host(
        _ node: DrbdNode, inherited: [Int: VolumeDraft], resource: String, addressRequired: Bool
    ) -> DrbdHost? {
        let isFloating = node.name == "floating"
        var names: [Located<String>] = []
        var address: Located<DrbdAddress>?
        if isFloating {
            address = parseAddress(node.arguments, after: node.keyword)
            if address == nil { return nil }
        } else {
            guard !node.arguments.isEmpty, node.arguments.allSatisfy(\.isValue) else {
                report(.drbdMissingName, at: node.arguments.first ?? node.keyword, "expected a host name after 'on', such as 'on alpha {'")
                return nil
            }
            names = node.arguments.map { Located($0.text, at: $0.location) }
        }
        var volumes: [Int: VolumeDraft] = [:]
        var nodeID: Int?
        var addressWritten = isFloating
        for child in node.body ?? [] {
            switch (child.name, child.isSection) {
            case ("volume", true):
                if let (number, draft) = volume(child) { addVolume(number, draft, at: child, to: &volumes) }
            case ("device", false), ("disk", false), ("meta-disk", false), ("flexible-meta-disk", false):
                applyVolumeSetting(child, to: &volumes[0, default: VolumeDraft()])
            case ("address", false) where !isFloating:
                addressWritten = true
                address = parseAddress(child.arguments, after: child.keyword)
            case ("node-id", false):
                if let token = oneArgument(child, expecting: "a node id 0...\(Self.nodeIDMax)"),
                   let id = parseNumber(token, option: "node-id", min: 0, max: Self.nodeIDMax, unit: .plain("count")) {
                    nodeID = Int(id)
                }
            default:
                reportUnknownStatement(child, in: "'\(node.name)'", known: ["device", "disk", "meta-disk", "flexible-meta-disk", "address", "node-id", "volume"])
            }
        }
        let displayName = "\(node.name) \(node.arguments.map(\.text).joined(separator: " "))"
        if !addressWritten, addressRequired {
            report(.drbdMissingSetting, at: node.keyword, "'address' is missing in '\(displayName)' of resource '\(resource)'")
        }
        let finished = finishVolumes(inherited: inherited, own: volumes, host: node, displayName: displayName, resource: resource)
        return DrbdHost(names: names, address: address, nodeID: nodeID, volumes: finished, isFloating: isFloating)
    }

    /// A `volume N` section; the same number twice in one scope is an error (drbdadm refuses it too).
    mutating func addVolume(_ number: Int, _ draft: VolumeDraft, at node: DrbdNode, to volumes: inout [Int: VolumeDraft]) {
        if volumes[number] != nil, node.arguments.first != nil {
            report(.drbdDuplicateVolume, at: node.arguments[0], "volume \(number) is defined twice here")
            return
        }
        volumes[number] = draft
    }

    /// Merges resource-level and host-level volume settings and checks each volume is complete.
    mutating func finishVolumes(
        inherited: [Int: VolumeDraft], own: [Int: VolumeDraft], host: DrbdNode, displayName: String, resource: String
    ) -> [DrbdVolume] {
        let numbers = Set(inherited.keys).union(own.keys).sorted()
        if numbers.isEmpty {
            report(.drbdMissingSetting, at: host.keyword,
                   "'\(displayName)' of resource '\(resource)' has no 'device', 'disk' and 'meta-disk'")
            return []
        }
        var volumes: [DrbdVolume] = []
        for number in numbers {
            let draft = (inherited[number] ?? VolumeDraft()).overlaid(by: own[number])
            let volumeName = numbers.count > 1 || number != 0 ? "volume \(number) of " : ""
            var missing: [String] = []
            if draft.device == nil { missing.append("device") }
            if draft.disk == nil { missing.append("disk") }
            if draft.metaDisk == nil, draft.disk?.value != DrbdBackingDisk.none { missing.append("meta-disk") }
            missing.removeAll { draft.invalidSettings.contains($0) }
            guard missing.isEmpty, let device = draft.device, let disk = draft.disk else {
                if missing.isEmpty { continue }
                let list = missing.map { "'\($0)'" }.joined(separator: ", ")
                report(.drbdMissingSetting, at: host.keyword, "\(list) missing in \(volumeName)'\(displayName)' of resource '\(resource)'")
                continue
            }
            let metaDisk = draft.metaDisk ?? Located(.internal, at: disk.location)
            volumes.append(DrbdVolume(number: number, device: device, disk: disk, metaDisk: metaDisk, diskOptions: draft.diskOptions))
        }
        return volumes
    }

    /// `volume N { device ...; disk ...; meta-disk ...; disk { options } }`.
    mutating func volume(_ node: DrbdNode) -> (Int, VolumeDraft)? {
        guard node.arguments.count == 1, let token = node.arguments.first, token.kind == .word,
              let number = parseNumber(token, option: "volume", min: 0, max: Self.volumeNumberMax, unit: .plain("count"))
        else {
            if node.arguments.count != 1 {
                report(.drbdMissingName, at: node.arguments.first ?? node.keyword, "expected a volume number after 'volume', such as 'volume 0 {'")
            }
            return nil
        }
        var draft = VolumeDraft()
        var seen: [DrbdOptionKey: DrbdToken] = [:]
        for child in node.body ?? [] {
            if child.isSection, child.name == "disk" {
                applyOptions(of: child, section: "disk", into: &draft.diskOptions, seen: &seen)
            } else if !child.isSection, ["device", "disk", "meta-disk", "flexible-meta-disk"].contains(child.name) {
                applyVolumeSetting(child, to: &draft)
            } else {
                reportUnknownStatement(child, in: "'volume \(number)'", known: ["device", "disk", "meta-disk", "flexible-meta-disk"])
            }
        }
        return (Int(number), draft)
    }

    mutating func applyVolumeSetting(_ node: DrbdNode, to draft: inout VolumeDraft) {
        switch node.name {
        case "device":
            if let device = parseDevice(node) {
                draft.device = Located(device, at: node.keyword.location)
            } else {
                draft.invalidSettings.insert("device")
            }
        case "disk":
            if let path = oneArgument(node, expecting: "a block device path or 'none'") {
                draft.disk = Located(path.text == "none" ? .none : .path(path.text), at: node.keyword.location)
            } else {
                draft.invalidSettings.insert("disk")
            }
        default:
            if let metaDisk = parseMetaDisk(node) {
                draft.metaDisk = Located(metaDisk, at: node.keyword.location)
            } else {
                draft.invalidSettings.insert("meta-disk")
            }
        }
    }

    /// `device /dev/drbd0;`, `device /dev/drbd0 minor 0;` or `device minor 0;`.
    mutating func parseDevice(_ node: DrbdNode) -> DrbdDevice? {
        let words = node.arguments
        var path: String?
        var minor: Int?
        var index = 0
        if index < words.count, words[index].isValue, words[index].text != "minor" {
            path = words[index].text
            index += 1
        }
        if index < words.count, words[index].text == "minor" {
            guard index + 1 < words.count,
                  let number = parseNumber(words[index + 1], option: "minor", min: 0, max: Int64(DrbdDevice.minorMax), unit: .plain("count"))
            else {
                if index + 1 >= words.count { report(.drbdBadDevice, at: words[index], "expected a number after 'minor'") }
                return nil
            }
            minor = Int(number)
            index += 2
        }
        if index < words.count {
            report(.drbdBadDevice, at: words[index], "unexpected \(words[index]) in 'device'; expected 'device /dev/drbdN [minor N];'")
            return nil
        }
        if let path, !path.hasPrefix("/") {
            report(.drbdBadDevice, at: words[0], "the device must be an absolute path such as /dev/drbd0, got '\(path)'")
            return nil
        }
        let resolvedMinor = minor ?? path.flatMap(Self.minorFromDevicePath)
        guard let resolvedMinor else {
            report(.drbdBadDevice, at: words.first ?? node.keyword,
                   "no minor given and the device name has no minor number",
                   hint: "write 'device \(path ?? "/dev/drbdN") minor N;' or name the device /dev/drbdN")
            return nil
        }
        return DrbdDevice(path: path ?? "/dev/drbd\(resolvedMinor)", minor: resolvedMinor)
    }

    /// The N of /dev/drbdN.
    static func minorFromDevicePath(_ path: String) -> Int? {
        guard let range = path.range(of: "/dev/drbd", options: .anchored) else { return nil }
        let rest = path[range.upperBound...]
        guard !rest.isEmpty, rest.allSatisfy({ $0.isASCII && $0.isNumber }), let minor = Int(rest), minor <= DrbdDevice.minorMax else {
            return nil
        }
        return minor
    }

    /// `meta-disk internal;`, `meta-disk /dev/x;`, `meta-disk /dev/x [N];` and `flexible-meta-disk ...;`.
    mutating func parseMetaDisk(_ node: DrbdNode) -> DrbdMetaDisk? {
        let words = node.arguments
        guard let first = words.first, first.isValue else {
            report(.drbdBadMetaDisk, at: words.first ?? node.keyword, "expected 'internal' or a device path after '\(node.name)'")
            return nil
        }
        if first.text == "internal" {
            if words.count > 1 { report(.drbdBadMetaDisk, at: words[1], "'internal' takes no index") }
            return words.count > 1 ? nil : .internal
        }
        guard first.text.hasPrefix("/") else {
            report(.drbdBadMetaDisk, at: first, "expected 'internal' or an absolute device path, got \(first)")
            return nil
        }
        if words.count == 1 { return .flexible(path: first.text) }
        guard node.name == "meta-disk", words.count == 4, words[1].kind == .openBracket, words[3].kind == .closeBracket else {
            let expected = node.name == "meta-disk" ? "meta-disk \(first.text) [INDEX];" : "flexible-meta-disk \(first.text);"
            report(.drbdBadMetaDisk, at: words[1], "expected '\(expected)'")
            return nil
        }
        guard let index = parseNumber(words[2], option: "meta-disk index", min: 0, max: Int64(DrbdMetaDisk.indexMax), unit: .plain("count")) else {
            return nil
        }
        return .indexed(path: first.text, index: Int(index))
    }

    /// `[ipv4|ipv6|...] HOST:PORT` or `ipv6 [HOST]:PORT`.
    mutating func parseAddress(_ words: [DrbdToken], after keyword: DrbdToken) -> Located<DrbdAddress>? {
        var rest = words[...]
        var family = DrbdAddress.Family.ipv4
        if let first = rest.first, let named = DrbdAddress.Family(rawValue: first.text) {
            family = named
            rest = rest.dropFirst()
        }
        guard let start = rest.first else {
            report(.drbdBadAddress, at: keyword, "expected an address such as 10.0.0.1:7789 after '\(keyword.text)'")
            return nil
        }
        let host: String
        let portText: Substring
        if start.kind == .openBracket {
            let parts = Array(rest)
            guard parts.count == 4, parts[1].kind == .word, parts[2].kind == .closeBracket, parts[3].text.hasPrefix(":") else {
                report(.drbdBadAddress, at: start, "expected an IPv6 address such as [fd00::1]:7789")
                return nil
            }
            host = parts[1].text
            portText = parts[3].text.dropFirst()
        } else {
            // An IPv6 address must be bracketed, as drbdadm requires: in fd00::1:7789 the port is ambiguous.
            guard family != .ipv6 else {
                report(.drbdBadAddress, at: start, "an IPv6 address must be written in brackets, such as [fd00::1]:7789")
                return nil
            }
            guard rest.count == 1, start.kind == .word, let colon = start.text.lastIndex(of: ":") else {
                report(.drbdBadAddress, at: start, "expected HOST:PORT, such as 10.0.0.1:7789, got \(start)")
                return nil
            }
            host = String(start.text[..<colon])
            portText = start.text[start.text.index(after: colon)...]
        }
        guard let port = UInt16(portText), port >= 1 else {
            report(.drbdBadAddress, at: start, "the port '\(portText)' is not a number in 1...65535")
            return nil
        }
        if family == .ipv4, !Self.isIPv4(host) {
            report(.drbdBadAddress, at: start, "'\(host)' is not an IPv4 address such as 10.0.0.1")
            return nil
        }
        if family == .ipv6, !Self.isIPv6(host) {
            report(.drbdBadAddress, at: start, "'\(host)' is not an IPv6 address such as fd00::1")
            return nil
        }
        return Located(DrbdAddress(family: family, host: host, port: port), at: start.location)
    }

    static func isIPv4(_ text: String) -> Bool {
        var address = in_addr()
        return text.split(separator: ".", omittingEmptySubsequences: false).count == 4 && inet_pton(AF_INET, text, &address) == 1
    }

    static func isIPv6(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    /// DRBD 9 `connection { host A [address ...]; host B ...; path { } net { } }` and
    /// `connection-mesh { hosts A B C; net { } }`.
    mutating func connection(_ node: DrbdNode) -> DrbdConnection? {
        let isMesh = node.name == "connection-mesh"
        var connection = DrbdConnection(hosts: [], isMesh: isMesh)
        var seen: [DrbdOptionKey: DrbdToken] = [:]
        for child in node.body ?? [] {
            switch (child.name, child.isSection) {
            case ("net", true), ("disk", true):
                applyOptions(of: child, section: child.name, into: &connection.options, seen: &seen)
            case ("volume", true):
                for volumeChild in child.body ?? [] where volumeChild.isSection && volumeChild.name == "disk" {
                    applyOptions(of: volumeChild, section: "disk", into: &connection.options, seen: &seen)
                }
            case ("path", true):
                for pathHost in child.body ?? [] { connectionHost(pathHost, into: &connection, listing: false) }
            case ("hosts", false) where isMesh:
                connection.hosts += child.arguments.map { Located($0.text, at: $0.location) }
            case ("host", false) where !isMesh:
                connectionHost(child, into: &connection, listing: true)
            default:
                reportUnknownStatement(child, in: "'\(node.name)'", known: isMesh ? ["hosts", "net"] : ["host", "path", "net", "disk", "volume"])
            }
        }
        return connection
    }

    /// `host NAME [address [FAMILY] HOST:PORT | port N];` inside a connection or its path.
    mutating func connectionHost(_ node: DrbdNode, into connection: inout DrbdConnection, listing: Bool) {
        guard node.name == "host", !node.isSection, let name = node.arguments.first, name.isValue else {
            report(.drbdUnknownOption, at: node.keyword, "expected 'host NAME [address HOST:PORT];'")
            return
        }
        if !connection.hosts.contains(where: { $0.value == name.text }) {
            connection.hosts.append(Located(name.text, at: name.location))
        }
        let rest = Array(node.arguments.dropFirst())
        guard let keyword = rest.first else { return }
        if keyword.text == "address", let address = parseAddress(Array(rest.dropFirst()), after: keyword) {
            connection.addresses[name.text] = address.value
        } else if keyword.text == "port", rest.count == 2,
                  let port = parseNumber(rest[1], option: "port", min: 1, max: 65535, unit: .plain("count")) {
            connection.addresses[name.text] = DrbdAddress(family: .ipv4, host: "", port: UInt16(port))
        } else if keyword.text != "address", keyword.text != "port" {
            report(.drbdUnknownOption, at: keyword, "expected 'address' or 'port' after the host name, got \(keyword)")
        }
    }

    /// Host sections of one resource: no name twice, and every connection host defined.
    mutating func checkHosts(_ hosts: [DrbdHost], connections: [DrbdConnection], resource: DrbdToken) {
        var firstByName: [String: SourceLocation] = [:]
        for name in hosts.flatMap(\.names) {
            if let first = firstByName[name.value] {
                report(.drbdDuplicateHost, at: name.location,
                       "host '\(name.value)' appears twice in resource '\(resource.text)'; first at \(first)")
            } else {
                firstByName[name.value] = name.location
            }
        }
        for host in connections.flatMap(\.hosts) where firstByName[host.value] == nil {
            report(.drbdUnknownHost, at: host.location,
                   "connection names host '\(host.value)', which has no 'on \(host.value)' section in resource '\(resource.text)'")
        }
        if hosts.isEmpty {
            warn(.drbdHostCount, at: resource, "resource '\(resource.text)' has no 'on' or 'floating' sections; it cannot be used")
        } else if hosts.count == 1 {
            warn(.drbdHostCount, at: resource, "resource '\(resource.text)' has one host; it cannot replicate until a second is defined")
        } else if hosts.count > 2, connections.isEmpty, !hosts.contains(where: { $0.nodeID != nil }) {
            warn(.drbdHostCount, at: resource, "resource '\(resource.text)' has \(hosts.count) hosts; DRBD 8.4 syntax pairs exactly two")
        }
    }
}
