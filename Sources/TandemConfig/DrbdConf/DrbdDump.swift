/// Writes a `DrbdConfig` back as drbd.conf text: the effective, normalized configuration, in DRBD 8.4 syntax (DRBD 9
/// syntax for resources that use node ids or connections). Parsing the output gives back an equal model, and
/// drbdadm accepts it.
public enum DrbdDump {
    /// The whole configuration, or only the named resources.
    public static func render(_ config: DrbdConfig, resources names: [String]? = nil) -> String {
        var writer = ConfigWriter()
        if names == nil, !config.globalOptions.isEmpty {
            writer.section("global") { writer in
                writer.options(config.globalOptions, in: .global)
            }
            writer.blankLine()
        }
        let selected = config.resources.filter { names?.contains($0.name.value) ?? true }
        for (index, resource) in selected.enumerated() {
            if index > 0 { writer.blankLine() }
            render(resource, into: &writer)
        }
        return writer.text
    }

    private static func render(_ resource: DrbdResource, into writer: inout ConfigWriter) {
        writer.line("# defined at \(resource.name.location)")
        writer.section("resource \(resource.name.value)") { writer in
            for section in DrbdOptionSection.allCases where section != .global {
                let entries = resource.options.entries(in: section)
                guard !entries.isEmpty else { continue }
                writer.section(section.rawValue) { writer in writer.options(resource.options, in: section) }
            }
            for host in resource.hosts { render(host, into: &writer) }
            for connection in resource.connections { render(connection, into: &writer) }
        }
    }

    private static func render(_ host: DrbdHost, into writer: inout ConfigWriter) {
        let header = host.isFloating
            ? "floating \(host.address?.value.description ?? "")"
            : "on \(host.names.map(\.value).joined(separator: " "))"
        writer.section(header) { writer in
            let explicitVolumes = host.volumes.count > 1 || host.volumes.contains { $0.number != 0 || !$0.diskOptions.isEmpty }
            for volume in host.volumes {
                if explicitVolumes {
                    writer.section("volume \(volume.number)") { writer in render(volume, into: &writer) }
                } else {
                    render(volume, into: &writer)
                }
            }
            if let address = host.address, !host.isFloating {
                writer.line("address \(address.value.description);")
            }
            if let nodeID = host.nodeID {
                writer.line("node-id \(nodeID);")
            }
        }
    }

    private static func render(_ volume: DrbdVolume, into writer: inout ConfigWriter) {
        writer.line("device \(volume.device.value.path) minor \(volume.device.value.minor);")
        writer.line("disk \(volume.disk.value.description);")
        writer.line("meta-disk \(volume.metaDisk.value.description);")
        if !volume.diskOptions.isEmpty {
            writer.section("disk") { writer in writer.options(volume.diskOptions, in: .disk) }
        }
    }

    private static func render(_ connection: DrbdConnection, into writer: inout ConfigWriter) {
        writer.section(connection.isMesh ? "connection-mesh" : "connection") { writer in
            if connection.isMesh {
                writer.line("hosts \(connection.hosts.map(\.value).joined(separator: " "));")
            } else {
                for host in connection.hosts {
                    switch connection.addresses[host.value] {
                    case let address? where address.host.isEmpty:
                        writer.line("host \(host.value) port \(address.port);")
                    case let address?:
                        writer.line("host \(host.value) address \(address.description);")
                    case nil:
                        writer.line("host \(host.value);")
                    }
                }
            }
            for section in [DrbdOptionSection.net, .disk] where !connection.options.entries(in: section).isEmpty {
                writer.section(section.rawValue) { writer in writer.options(connection.options, in: section) }
            }
        }
    }
}

/// Indented drbd.conf text.
struct ConfigWriter {
    private(set) var text = ""
    private var depth = 0

    mutating func line(_ content: String) {
        text += String(repeating: "    ", count: depth) + content + "\n"
    }

    mutating func blankLine() { text += "\n" }

    mutating func section(_ header: String, _ body: (inout ConfigWriter) -> Void) {
        line("\(header) {")
        depth += 1
        body(&self)
        depth -= 1
        line("}")
    }

    mutating func options(_ options: DrbdOptions, in section: DrbdOptionSection) {
        for (name, value) in options.entries(in: section) {
            switch value {
            case .flag: line("\(name);")
            case .string(let text): line("\(name) \(Self.quoted(text));")
            default: line("\(name) \(value.description);")
            }
        }
    }

    /// A drbd.conf string literal: quotes and backslashes escaped, as drbdadm reads them back.
    static func quoted(_ text: String) -> String {
        var escaped = ""
        for character in text {
            switch character {
            case "\"", "\\": escaped += "\\\(character)"
            case "\n": escaped += "\\n"
            case "\t": escaped += "\\t"
            default: escaped.append(character)
            }
        }
        return "\"\(escaped)\""
    }
}
