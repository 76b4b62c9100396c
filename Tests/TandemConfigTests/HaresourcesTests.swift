import Testing

@testable import TandemConfig

/// haresources: the seeds' groups, continuations, the typed resource kinds and every malformed fixture.
@Suite struct HaresourcesTests {
    static func parse(_ text: String) throws(ConfigError) -> Parsed<Haresources> {
        try HaresourcesParser.parse(SourceFile(path: "test/haresources", text: text))
    }

    static func rejection(_ text: String) -> ConfigError? {
        refusal { () throws(ConfigError) in _ = try parse(text) }
    }

    static func onlyResource(_ text: String) throws -> ResourceSpec {
        let groups = try parse("alpha \(text)\n").model.groups
        try #require(groups.count == 1 && groups[0].resources.count == 1)
        return groups[0].resources[0]
    }

    // MARK: Seeds

    /// Seed 001's group continues over four lines and ends at a commented-out line that itself ends in `\`.
    @Test(arguments: ["seed001/haresources", "seed001-faithful/haresources"])
    func seed001ParsesCleanly(fixture: String) throws {
        let parsed = try HaresourcesParser.load(path: FixturePaths.path(fixture))
        #expect(parsed.diagnostics.isEmpty)
        let groups = parsed.model.groups
        try #require(groups.count == 1)
        #expect(groups[0].preferredNode.value == "server1")
        #expect(groups[0].key == "drbddisk::drbd_r1")
        #expect(
            groups[0].resources.map(\.kind) == [
                .drbddisk(resource: "drbd_r1"),
                .filesystem(device: "/dev/drbd0", mountPoint: "/data/mysql", fsType: "ext3", options: nil),
                .filesystem(device: "/dev/mpath/mpath2p1", mountPoint: "/data/backup", fsType: "ext3", options: nil),
                .script(name: "mysql", arguments: []),
            ])
        #expect(groups[0].resources.map(\.location.line) == [3, 4, 5, 6])
        #expect(groups[0].resources.map(\.location.column) == [9, 9, 9, 9])
    }

    @Test func seed004ParsesCleanly() throws {
        let parsed = try HaresourcesParser.load(path: FixturePaths.path("seed004/haresources"))
        #expect(parsed.diagnostics.isEmpty)
        let groups = parsed.model.groups
        try #require(groups.count == 1)
        #expect(groups[0].preferredNode.value == "master1")
        let address = try #require(IPv4Address("192.168.4.1"))
        #expect(
            groups[0].resources.map(\.kind) == [
                .ipAddress(IPAddressResource(agent: .ipaddr, address: address, prefixLength: 16, interface: "eth1"))
            ])
        #expect(groups[0].resources[0].agent == "IPaddr")
        #expect(groups[0].resources[0].arguments == ["192.168.4.1/16/eth1"])
    }

    /// The group seed 004's logs show being acquired ("Acquiring resource group: master1 IPaddr::... mysqld").
    @Test func seed004GroupFromTheLogsParsesCleanly() throws {
        let parsed = try HaresourcesParser.load(path: FixturePaths.path("seed004-logs/haresources"))
        #expect(parsed.diagnostics.isEmpty)
        let resources = try #require(parsed.model.groups.first).resources
        #expect(resources.map(\.agent) == ["IPaddr", "drbddisk", "Filesystem", "mysqld"])
        #expect(resources[1].kind == .drbddisk(resource: "data"))
        #expect(
            resources[2].kind == .filesystem(device: "/dev/drbd1", mountPoint: "/data", fsType: "ext3", options: nil))
        #expect(resources[3].kind == .script(name: "mysqld", arguments: []))
    }

    // MARK: Addresses

    @Test func bareAddressMeansIPaddr() throws {
        let resource = try Self.onlyResource("10.0.0.10/24/eth0:web/10.0.0.255")
        #expect(resource.agent == "IPaddr")
        #expect(resource.arguments == ["10.0.0.10/24/eth0:web/10.0.0.255"])
        #expect(
            resource.kind
                == .ipAddress(
                    IPAddressResource(
                        agent: .ipaddr, address: try #require(IPv4Address("10.0.0.10")), prefixLength: 24,
                        interface: "eth0", label: "web", broadcast: IPv4Address("10.0.0.255")
                    )))
    }

    @Test func ipaddr2AcceptsADottedMask() throws {
        let resource = try Self.onlyResource("IPaddr2::10.0.0.10/255.255.254.0/eth0")
        guard case .ipAddress(let address) = resource.kind else {
            Issue.record("expected an address, got \(resource.kind)")
            return
        }
        #expect(address.agent == .ipaddr2)
        #expect(address.prefixLength == 23)
    }

    @Test func emptyAddressPartsAreLeftToTheAgent() throws {
        let resource = try Self.onlyResource("IPaddr::10.0.0.10//eth0")
        #expect(
            resource.kind
                == .ipAddress(
                    IPAddressResource(agent: .ipaddr, address: IPv4Address(rawValue: 0x0A00_000A), interface: "eth0")))
    }

    @Test(arguments: ["255.0.255.0", "33", "abc", "255.255.255.256"])
    func badMaskIsRefused(mask: String) throws {
        let error = try #require(Self.rejection("alpha IPaddr::10.0.0.10/\(mask)\n"))
        #expect(error.errors.map(\.code) == [.haresourcesBadPrefix])
        #expect(error.errors[0].location.column == 25)
    }

    // MARK: Other resources

    @Test func drbddiskWithoutAResourceMeansAll() throws {
        #expect(try Self.onlyResource("drbddisk").kind == .drbddisk(resource: nil))
    }

    @Test func filesystemKeepsTypeAndOptions() throws {
        #expect(
            try Self.onlyResource("Filesystem::/dev/drbd0::/data::ext4::noatime,nodiratime").kind
                == .filesystem(device: "/dev/drbd0", mountPoint: "/data", fsType: "ext4", options: "noatime,nodiratime")
        )
        #expect(
            try Self.onlyResource("Filesystem::/dev/drbd0::/data").kind
                == .filesystem(device: "/dev/drbd0", mountPoint: "/data", fsType: nil, options: nil))
    }

    @Test(arguments: [
        ("mysqld", "mysqld", [String]()),
        ("Crontab::mysql::/data/mysql/crontab.txt", "Crontab", ["mysql", "/data/mysql/crontab.txt"]),
        ("ocf:heartbeat:apache::/etc/apache2/apache2.conf", "ocf:heartbeat:apache", ["/etc/apache2/apache2.conf"]),
    ])
    func otherResourcesAreScripts(text: String, name: String, arguments: [String]) throws {
        let resource = try Self.onlyResource(text)
        #expect(resource.kind == .script(name: name, arguments: arguments))
        #expect(resource.agent == name)
        #expect(resource.text == text)
    }

    // MARK: Lines

    @Test func continuationsJoinLinesAndAGroupPerLogicalLine() throws {
        let parsed = try Self.parse(
            """
            alpha drbddisk::r0 \\
                  Filesystem::/dev/drbd0::/data::ext4   # the data volume
            beta  drbddisk::r1 \\
            # a comment ends the continued line, as in seed 001
            gamma apache
            """)
        let groups = parsed.model.groups
        #expect(groups.map(\.preferredNode.value) == ["alpha", "beta", "gamma"])
        #expect(groups.map(\.resources.count) == [2, 1, 1])
        #expect(groups[0].resources[1].location.line == 2)
        #expect(groups[0].resources[1].location.column == 7)
        #expect(groups[1].preferredNode.location.line == 3)
        #expect(groups[2].preferredNode.location.line == 5)
    }

    @Test func bareAddressAndIPaddrKeyAreTheSameGroup() throws {
        let error = try #require(Self.rejection("alpha 10.0.0.1 mysqld\nbeta IPaddr::10.0.0.1 apache\n"))
        #expect(error.errors.map(\.code) == [.haresourcesDuplicateGroup])
        #expect(error.errors[0].message.contains("line 1"))
    }

    @Test func everyErrorIsReported() throws {
        let error = try #require(Self.rejection("alpha IPaddr\nbeta\ngamma Filesystem::/dev/sdb1\n"))
        #expect(
            error.errors.map(\.code) == [
                .haresourcesMissingAddress, .haresourcesNoResources, .haresourcesMissingArgument,
            ])
    }

    // MARK: Malformed fixtures

    static let malformed: [MalformedCase] = [
        MalformedCase(file: "bad-address", code: .haresourcesBadAddress, line: 1, column: 15),
        MalformedCase(file: "continued-line-error", code: .haresourcesRelativeMountPoint, line: 4, column: 31),
        MalformedCase(file: "drbddisk-two-arguments", code: .haresourcesExtraArgument, line: 1, column: 21),
        MalformedCase(file: "duplicate-group", code: .haresourcesDuplicateGroup, line: 2, column: 6),
        MalformedCase(file: "empty-argument", code: .haresourcesEmptyArgument, line: 1, column: 28),
        MalformedCase(file: "filesystem-missing-mount-point", code: .haresourcesMissingArgument, line: 1, column: 42),
        MalformedCase(file: "ipaddr-missing-address", code: .haresourcesMissingAddress, line: 1, column: 26),
        MalformedCase(file: "missing-node", code: .haresourcesMissingNode, line: 1, column: 1),
        MalformedCase(file: "no-resources", code: .haresourcesNoResources, line: 1, column: 1),
        MalformedCase(file: "prefix-too-long", code: .haresourcesBadPrefix, line: 1, column: 16),
        MalformedCase(file: "relative-mount-point", code: .haresourcesRelativeMountPoint, line: 1, column: 44),
    ]

    @Test(arguments: malformed)
    func malformedFileIsRejectedAtTheFault(_ fixture: MalformedCase) throws {
        let errors = try fixture.expectRefusal(in: "haresources") { path throws(ConfigError) in
            _ = try HaresourcesParser.load(path: path)
        }.errors
        #expect(errors.count == 1, "\(errors)")
        let first = try #require(errors.first)
        #expect(first.message.contains("expected"), "messages say what was expected: \(first.message)")
    }

    @Test func everyMalformedFixtureIsInTheTable() {
        #expect(FixturePaths.fileNames(in: "malformed/haresources") == Self.malformed.map(\.file).sorted())
    }
}
