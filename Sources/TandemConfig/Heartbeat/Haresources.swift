/// The typed contents of Heartbeat's `/etc/ha.d/haresources`: resource groups, each with its preferred node.
///
/// Heartbeat R1 starts a group's resources left to right and stops them right to left; the group moves as a
/// whole. The file must be identical on all nodes.
public struct Haresources: Sendable, Equatable {
    /// The groups in file order.
    public var groups: [ResourceGroup]

    public init(groups: [ResourceGroup]) {
        self.groups = groups
    }
}

/// One logical line of haresources: `preferred-node resource1 resource2 ...`.
public struct ResourceGroup: Sendable, Equatable {
    /// The node that runs the group when it is up (with `auto_failback on`, the group returns to it). Checked
    /// against ha.cf's `node` lines by the cross-file check.
    public var preferredNode: Located<String>
    /// The resources in start order. Never empty in a parsed file.
    public var resources: [ResourceSpec]

    public init(preferredNode: Located<String>, resources: [ResourceSpec]) {
        self.preferredNode = preferredNode
        self.resources = resources
    }

    /// Heartbeat names a group by its first resource (`hb_standby`, `ResourceManager listkeys`).
    public var key: String { resources.first?.text ?? "" }
}

/// One resource of a group, such as `IPaddr::192.168.4.1/16/eth1` or `Filesystem::/dev/drbd0::/data::ext4`.
public struct ResourceSpec: Sendable, Equatable {
    /// Where the resource is written.
    public var location: SourceLocation
    /// The resource as written.
    public var text: String
    /// The script that manages it: the part before the first `::`, or `IPaddr` for a bare IPv4 address.
    public var agent: String
    /// The `::`-separated arguments as written, passed to the script before the action.
    public var arguments: [String]
    /// What the resource is, for the resources Tandem manages itself.
    public var kind: Kind

    /// What a resource is.
    public enum Kind: Sendable, Hashable {
        /// A floating address (`IPaddr::`, `IPaddr2::`, or a bare IPv4 address, which means IPaddr).
        case ipAddress(IPAddressResource)
        /// A DRBD resource made primary here (`drbddisk::r0`). Nil means all resources, as Heartbeat's drbddisk
        /// does without an argument.
        case drbddisk(resource: String?)
        /// A mount (`Filesystem::DEVICE::MOUNTPOINT[::FSTYPE[::OPTIONS]]`).
        case filesystem(device: String, mountPoint: String, fsType: String?, options: String?)
        /// Anything else: a script from /etc/ha.d/resource.d, an init script, or `ocf:PROVIDER:TYPE`. Later stages
        /// resolve the name.
        case script(name: String, arguments: [String])
    }

    public init(location: SourceLocation, text: String, agent: String, arguments: [String], kind: Kind) {
        self.location = location
        self.text = text
        self.agent = agent
        self.arguments = arguments
        self.kind = kind
    }

    /// Equal when written the same, wherever that was, as `Located` values are.
    public static func == (lhs: ResourceSpec, rhs: ResourceSpec) -> Bool {
        lhs.text == rhs.text && lhs.agent == rhs.agent && lhs.arguments == rhs.arguments && lhs.kind == rhs.kind
    }
}

/// The argument of `IPaddr` and `IPaddr2` in haresources: `ADDRESS[/MASK[/INTERFACE[:LABEL][/BROADCAST]]]`.
/// Empty parts (`10.0.0.1//eth0`) leave the value to the agent, which calculates the mask from the routing table.
public struct IPAddressResource: Sendable, Hashable {
    /// The resource agent: a bare address means IPaddr.
    public enum Agent: String, Sendable, Hashable, CaseIterable {
        case ipaddr = "IPaddr"
        case ipaddr2 = "IPaddr2"
    }

    /// The script that manages the address.
    public var agent: Agent
    /// The floating address itself.
    public var address: IPv4Address
    /// 0 to 32, from `/16` or from a dotted mask such as `/255.255.0.0`.
    public var prefixLength: UInt8?
    /// The interface to add the address to; nil lets the agent pick the one whose network holds the address.
    public var interface: String?
    /// The interface label, from `INTERFACE:LABEL`.
    public var label: String?
    /// The broadcast address; nil lets the agent calculate it.
    public var broadcast: IPv4Address?

    public init(
        agent: Agent, address: IPv4Address, prefixLength: UInt8? = nil, interface: String? = nil,
        label: String? = nil, broadcast: IPv4Address? = nil
    ) {
        self.agent = agent
        self.address = address
        self.prefixLength = prefixLength
        self.interface = interface
        self.label = label
        self.broadcast = broadcast
    }
}

/// Reads Heartbeat's `haresources`.
///
/// One group per logical line; a `\` at the end of a line continues it and a `#` anywhere starts a comment, as
/// Heartbeat's ResourceManager reads the file.
public enum HaresourcesParser {
    // Bounds on a file that describes a two-node cluster's services.

    /// Groups (logical lines) in the file.
    public static let groupsMax = 64
    /// Resources in one group.
    public static let resourcesPerGroupMax = 64
    /// `::` arguments of one resource.
    public static let argumentsPerResourceMax = 16

    /// Parses the text of a haresources file. Throws every error found.
    public static func parse(_ source: SourceFile) throws(ConfigError) -> Parsed<Haresources> {
        var builder = HaresourcesBuilder(source: source)
        for line in LineFields.logicalLines(of: source, comments: .anywhere, joiningContinuations: true) {
            builder.apply(line)
        }
        return try builder.log.finish(Haresources(groups: builder.groups))
    }

    /// Reads and parses the haresources file at `path`.
    public static func load(path: String) throws(ConfigError) -> Parsed<Haresources> {
        try parse(SourceFile.load(path: path))
    }
}

extension DiagnosticCode {
    public static let haresourcesNoResources: DiagnosticCode = "haresources.no-resources"
    public static let haresourcesMissingNode: DiagnosticCode = "haresources.missing-node"
    public static let haresourcesEmptyArgument: DiagnosticCode = "haresources.empty-argument"
    public static let haresourcesMissingAddress: DiagnosticCode = "haresources.missing-address"
    public static let haresourcesBadAddress: DiagnosticCode = "haresources.bad-address"
    public static let haresourcesBadPrefix: DiagnosticCode = "haresources.bad-prefix"
    public static let haresourcesMissingArgument: DiagnosticCode = "haresources.missing-argument"
    public static let haresourcesExtraArgument: DiagnosticCode = "haresources.extra-argument"
    public static let haresourcesRelativeMountPoint: DiagnosticCode = "haresources.relative-mount-point"
    public static let haresourcesDuplicateGroup: DiagnosticCode = "haresources.duplicate-group"
    public static let haresourcesTooMany: DiagnosticCode = "haresources.too-many"
}

/// The parser's state while it reads one haresources file.
struct HaresourcesBuilder {
    let source: SourceFile
    var log = DiagnosticLog()
    var groups: [ResourceGroup] = []
    /// The line of each group key seen, by the key's canonical form (a bare address and `IPaddr::` the same).
    var keyLines: [String: Int] = [:]

    init(source: SourceFile) {
        self.source = source
    }

    mutating func apply(_ line: LogicalLine) {
        do {
            try applyGroup(line.fields)
        } catch {
            log.report(error)
        }
    }

    private mutating func applyGroup(_ fields: [Field]) throws(Diagnostic) {
        let node = fields[0]
        guard !node.text.contains("::") else {
            throw error(
                .haresourcesMissingNode, at: node,
                "expected the preferred node's name first, got the resource '\(node.text)'",
                hint: "start the line with the node that should run the group, as ha.cf's 'node' line names it"
            )
        }
        guard fields.count > 1 else {
            throw error(
                .haresourcesNoResources, at: node,
                "the group of node '\(node.text)' lists no resources; expected 'NODE RESOURCE...'"
            )
        }
        guard groups.count < HaresourcesParser.groupsMax else {
            throw tooMany("groups", HaresourcesParser.groupsMax, at: node)
        }
        guard fields.count - 1 <= HaresourcesParser.resourcesPerGroupMax else {
            throw tooMany("resources in one group", HaresourcesParser.resourcesPerGroupMax, at: fields[1])
        }
        var resources: [ResourceSpec] = []
        for field in fields.dropFirst() { resources.append(try resource(field)) }
        try claimKey(of: resources[0], at: fields[1])
        groups.append(ResourceGroup(preferredNode: Located(node.text, at: location(node)), resources: resources))
    }

    /// Two groups with the same first resource would share one name, and `hb_standby` or a takeover could not say
    /// which one they mean.
    private mutating func claimKey(of resource: ResourceSpec, at field: Field) throws(Diagnostic) {
        let key = ([resource.agent] + resource.arguments).joined(separator: "::")
        if let firstLine = keyLines[key] {
            throw error(
                .haresourcesDuplicateGroup, at: field,
                "a group starting with '\(resource.text)' is already defined on line \(firstLine); expected each "
                    + "group's first resource, which names the group, to be unique"
            )
        }
        keyLines[key] = field.line
    }

    // MARK: Resources

    private func resource(_ field: Field) throws(Diagnostic) -> ResourceSpec {
        let parts = HaresourcesBuilder.split(field, separator: "::")
        guard parts.count <= HaresourcesParser.argumentsPerResourceMax + 1 else {
            throw tooMany("arguments", HaresourcesParser.argumentsPerResourceMax, at: parts[parts.count - 1])
        }
        for (position, part) in parts.enumerated() where part.text.isEmpty {
            throw error(
                .haresourcesEmptyArgument, at: part,
                position == 0
                    ? "expected a resource name before '::' in '\(field.text)'"
                    : "argument \(position) of '\(parts[0].text)' is empty; expected text between the '::' separators"
            )
        }
        let isBareAddress = HaresourcesBuilder.looksLikeAddress(parts[0].text)
        let agent = isBareAddress ? IPAddressResource.Agent.ipaddr.rawValue : parts[0].text
        let arguments = isBareAddress ? parts : Array(parts.dropFirst())
        let kind = try self.kind(agent: agent, arguments: arguments, field: field)
        return ResourceSpec(
            location: location(field), text: field.text, agent: agent, arguments: arguments.map(\.text), kind: kind)
    }

    private func kind(agent: String, arguments: [Field], field: Field) throws(Diagnostic) -> ResourceSpec.Kind {
        if let ipAgent = IPAddressResource.Agent(rawValue: agent) {
            return .ipAddress(try ipAddress(ipAgent, arguments: arguments, field: field))
        }
        switch agent {
        case "drbddisk":
            try noExtraArguments(arguments, after: 1, usage: "drbddisk[::RESOURCE]")
            return .drbddisk(resource: arguments.first?.text)
        case "Filesystem":
            return try filesystem(arguments, field: field)
        default:
            return .script(name: agent, arguments: arguments.map(\.text))
        }
    }

    /// `Filesystem::DEVICE::MOUNTPOINT[::FSTYPE[::OPTIONS]]`: the Filesystem script needs at least the device and an
    /// absolute mount point.
    private func filesystem(_ arguments: [Field], field: Field) throws(Diagnostic) -> ResourceSpec.Kind {
        let usage = "Filesystem::DEVICE::MOUNTPOINT[::FSTYPE[::OPTIONS]]"
        guard arguments.count >= 2 else {
            throw error(
                .haresourcesMissingArgument, at: endOf(field),
                "Filesystem needs a device and a mount point; expected '\(usage)', such as "
                    + "'Filesystem::/dev/drbd0::/data::ext4'"
            )
        }
        try noExtraArguments(arguments, after: 4, usage: usage)
        let mountPoint = arguments[1]
        guard mountPoint.text.hasPrefix("/") else {
            throw error(
                .haresourcesRelativeMountPoint, at: mountPoint,
                "expected an absolute mount point such as /data, got '\(mountPoint.text)'"
            )
        }
        return .filesystem(
            device: arguments[0].text, mountPoint: mountPoint.text,
            fsType: arguments.count > 2 ? arguments[2].text : nil,
            options: arguments.count > 3 ? arguments[3].text : nil
        )
    }

    // MARK: Addresses

    /// `ADDRESS[/MASK[/INTERFACE[:LABEL][/BROADCAST]]]`, the one argument of the IPaddr scripts.
    private func ipAddress(
        _ agent: IPAddressResource.Agent, arguments: [Field], field: Field
    ) throws(Diagnostic) -> IPAddressResource {
        let usage = "\(agent.rawValue)::ADDRESS[/MASK[/INTERFACE[/BROADCAST]]]"
        guard let argument = arguments.first else {
            throw error(
                .haresourcesMissingAddress, at: endOf(field),
                "\(agent.rawValue) needs an address; expected '\(usage)', "
                    + "such as '\(agent.rawValue)::10.0.0.10/24/eth0'"
            )
        }
        try noExtraArguments(arguments, after: 1, usage: usage)
        let parts = HaresourcesBuilder.split(argument, separator: "/")
        guard parts.count <= 4 else {
            throw error(.haresourcesExtraArgument, at: parts[4], "unexpected '/\(parts[4].text)'; expected '\(usage)'")
        }
        var resource = IPAddressResource(agent: agent, address: try address(parts[0], what: "the address"))
        if parts.count > 1, !parts[1].text.isEmpty { resource.prefixLength = try prefixLength(parts[1]) }
        if parts.count > 2, !parts[2].text.isEmpty {
            let interface = parts[2].text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            resource.interface = String(interface[0])
            resource.label = interface.count > 1 && !interface[1].isEmpty ? String(interface[1]) : nil
        }
        if parts.count > 3, !parts[3].text.isEmpty {
            resource.broadcast = try address(parts[3], what: "the broadcast address")
        }
        return resource
    }

    private func address(_ part: Field, what: String) throws(Diagnostic) -> IPv4Address {
        guard !part.text.isEmpty else {
            throw error(.haresourcesMissingAddress, at: part, "expected \(what), an IPv4 address such as 10.0.0.10")
        }
        guard let address = IPv4Address(part.text) else {
            throw error(
                .haresourcesBadAddress, at: part,
                "expected \(what), an IPv4 address such as 10.0.0.10, got '\(part.text)'"
            )
        }
        return address
    }

    /// `/16` or `/255.255.0.0`. A dotted mask must be contiguous ones, as a netmask is.
    private func prefixLength(_ part: Field) throws(Diagnostic) -> UInt8 {
        if part.text.count <= 2, part.text.allSatisfy({ $0.isASCII && $0.isNumber }), let bits = UInt8(part.text),
            bits <= 32
        {
            return bits
        }
        if let mask = IPv4Address(part.text) {
            let ones = mask.rawValue.nonzeroBitCount
            if mask.rawValue == (ones == 0 ? 0 : UInt32.max << (32 - ones)) { return UInt8(ones) }
        }
        throw error(
            .haresourcesBadPrefix, at: part,
            "expected a prefix length from 0 to 32 (such as 24) or a netmask (such as 255.255.255.0), "
                + "got '\(part.text)'"
        )
    }

    /// A resource that starts with a digit and has a dot is an address: Heartbeat's ResourceManager treats such a
    /// bare resource as `IPaddr::`.
    private static func looksLikeAddress(_ name: String) -> Bool {
        name.first?.isNumber == true && name.contains(".")
    }

    // MARK: Helpers

    /// Splits a field on `separator`, keeping empty parts, each with the column where it starts.
    static func split(_ field: Field, separator: String) -> [Field] {
        var parts: [Field] = []
        var rest = field.text[...]
        var column = field.column
        while let range = rest.firstRange(of: separator) {
            let part = rest[..<range.lowerBound]
            parts.append(Field(text: String(part), line: field.line, column: column))
            column += part.count + separator.count
            rest = rest[range.upperBound...]
        }
        parts.append(Field(text: String(rest), line: field.line, column: column))
        return parts
    }

    private func noExtraArguments(_ arguments: [Field], after count: Int, usage: String) throws(Diagnostic) {
        guard arguments.count > count else { return }
        let extra = arguments[count]
        throw error(.haresourcesExtraArgument, at: extra, "unexpected argument '\(extra.text)'; expected '\(usage)'")
    }

    private func error(_ code: DiagnosticCode, at field: Field, _ message: String, hint: String? = nil) -> Diagnostic {
        source.diagnostic(.error, code, line: field.line, column: field.column, message, hint: hint)
    }

    private func tooMany(_ what: String, _ limit: Int, at field: Field) -> Diagnostic {
        error(.haresourcesTooMany, at: field, "too many \(what): Tandem accepts at most \(limit)")
    }

    private func location(_ field: Field) -> SourceLocation {
        source.location(line: field.line, column: field.column)
    }

    /// The position just after a field, where a missing part belongs.
    private func endOf(_ field: Field) -> Field {
        Field(text: "", line: field.line, column: field.column + field.text.count)
    }
}
