import Testing

@testable import TandemConfig

/// ha.cf: Heartbeat's time syntax, the seeds' files, defaults, order rules and every malformed fixture.
@Suite struct HaCfTests {
    /// The smallest usable ha.cf, to which a test adds the lines it is about.
    static let minimal = """
        node alpha beta
        ucast eth1 10.0.0.2
        auto_failback on

        """

    static func parse(_ text: String) throws(ConfigError) -> Parsed<HaConfig> {
        try HaCfParser.parse(SourceFile(path: "test/ha.cf", text: text))
    }

    static func parseMinimal(adding lines: String) throws(ConfigError) -> Parsed<HaConfig> {
        try parse(minimal + lines + "\n")
    }

    static func rejection(_ text: String) -> ConfigError? {
        refusal { () throws(ConfigError) in _ = try parse(text) }
    }

    // MARK: Time syntax

    @Test(arguments: [
        ("2", Duration.seconds(2)), ("1.5", .milliseconds(1500)), ("500ms", .milliseconds(500)),
        ("1500MS", .milliseconds(1500)), ("250us", .microseconds(250)), ("0.1", .milliseconds(100)),
        (".5", .milliseconds(500)), ("2s", .seconds(2)), ("1msec", .milliseconds(1)), ("0", .zero),
        ("0.000001", .microseconds(1)), ("1.250ms", .microseconds(1250)), ("86400", .seconds(86400)),
        ("007", .seconds(7)),
    ])
    func timeIsParsed(text: String, expected: Duration) {
        #expect(HeartbeatTime.parse(text) == .success(expected))
    }

    @Test(arguments: [
        ("fast", HeartbeatTime.ParseError.notATime("fast")), ("", .notATime("")), ("ms", .notATime("ms")),
        ("1.5.2", .notATime("1.5.2")), ("1e3", .notATime("1e3")), ("2 s", .notATime("2 s")), (".", .notATime(".")),
        ("2min", .notATime("2min")), ("-1", .negative("-1")), ("86401", .tooLarge("86401")),
        ("99999999999999999999", .tooLarge("99999999999999999999")), ("0.0000001", .tooPrecise("0.0000001")),
        ("1.5us", .tooPrecise("1.5us")),
    ])
    func badTimeIsRefused(text: String, expected: HeartbeatTime.ParseError) {
        #expect(HeartbeatTime.parse(text) == .failure(expected))
    }

    @Test func timeErrorSaysWhatWasExpected() {
        #expect(
            HeartbeatTime.ParseError.notATime("fast").message
                == "expected a time such as 2, 1.5 or 500ms, got 'fast'")
    }

    @Test(arguments: [
        (Duration.seconds(2), "2s"), (.milliseconds(500), "500ms"), (.microseconds(1500), "1500us"), (.zero, "0s"),
    ])
    func timeIsFormattedInTheLargestExactUnit(duration: Duration, expected: String) {
        #expect(HeartbeatTime.format(duration) == expected)
    }

    // MARK: Seeds

    @Test func seed001RepairedParsesCleanly() throws {
        let parsed = try HaCfParser.load(path: FixturePaths.path("seed001/ha.cf"))
        let config = parsed.model
        #expect(parsed.diagnostics.isEmpty)
        #expect(config.nodes.map(\.value) == ["server1", "server2"])
        #expect(config.autoFailback == .off)
        #expect(config.keepalive == .milliseconds(500))
        #expect(config.warntime == .seconds(5))
        #expect(config.deadtime == .seconds(10))
        #expect(config.initdead == .seconds(120))
        #expect(config.deadping == .seconds(15))
        #expect(config.logFacility?.value == .local0)
        #expect(config.logFile?.value == "/var/log/ha.log")
        #expect(config.debugFile?.value == "/var/log/ha.debug")
        let group1 = try #require(IPv4Address("239.0.0.1"))
        let group2 = try #require(IPv4Address("239.0.0.2"))
        #expect(
            config.media.map(\.value) == [
                .bcast(interface: "bond1", port: 694), .bcast(interface: "bond0", port: 694),
                .mcast(interface: "bond1", group: group1, port: 694, ttl: 2, loop: false),
                .mcast(interface: "bond0", group: group2, port: 694, ttl: 1, loop: false),
            ])
        #expect(
            config.respawnClients.map(\.value.executable) == [
                "/usr/lib64/heartbeat/ipfail", "/usr/lib64/heartbeat/dopd",
            ])
        #expect(
            config.apiAuthorizations.map(\.value) == [
                APIAuthorization(client: "ipfail", settings: "gid=haclient uid=hacluster"),
                APIAuthorization(client: "dopd", settings: "gid=haclient uid=hacluster"),
            ])
        // Positions are kept for later checks: "mcast bond1 239.0.0.1 ..." is on line 28.
        #expect(config.media[2].location.line == 28)
        #expect(config.media[2].location.column == 7)
    }

    /// Seed 001's page lost the multicast groups; Tandem must say so at the field where the group belongs.
    @Test func seed001AsPrintedIsRejectedAtTheMissingGroup() throws {
        let error = #expect(throws: ConfigError.self) {
            try HaCfParser.load(path: FixturePaths.path("seed001-faithful/ha.cf"))
        }
        let errors = try #require(error).errors
        #expect(errors.map(\.code) == [.hacfBadMulticastGroup, .hacfBadMulticastGroup])
        #expect(errors.map(\.location.line) == [25, 26])
        #expect(errors.map(\.location.column) == [13, 13])
        #expect(errors[0].message == "expected a multicast group address such as 239.0.0.1, got '694'")
        #expect(errors[0].hint?.contains("mcast INTERFACE GROUP PORT TTL LOOP") == true)
        #expect(errors[0].description.contains("mcast bond1 694 2 0\n                ^"))
    }

    @Test(arguments: ["seed004/ha.cf", "seed004-logs/ha.cf"])
    func seed004ParsesCleanly(fixture: String) throws {
        let parsed = try HaCfParser.load(path: FixturePaths.path(fixture))
        let config = parsed.model
        #expect(parsed.diagnostics.isEmpty)
        #expect(config.nodes.map(\.value) == ["master1", "master2"])
        #expect(config.autoFailback == .on)
        #expect(config.keepalive == .seconds(2))
        #expect(config.deadtime == .seconds(30))
        #expect(config.warntime == .seconds(10))
        #expect(config.initdead == .seconds(120))
        #expect(config.deadping == .seconds(30))
        #expect(config.logFacility?.value == .local1)
        let group = try #require(IPv4Address("225.0.0.7"))
        #expect(config.media.map(\.value) == [.mcast(interface: "eth2", group: group, port: 694, ttl: 1, loop: false)])
    }

    /// Seed 004's blog annotates the node lines (`node master1 <==主节点主机名`). Heartbeat reads every word after
    /// `node` as a node name, so it would declare four nodes, two of which never come up. Tandem reads the same four
    /// and warns at each annotation.
    @Test func seed004AsPrintedTakesTheAnnotationsAsNodeNames() throws {
        let parsed = try HaCfParser.load(path: FixturePaths.path("seed004-faithful/ha.cf"))
        #expect(parsed.model.nodes.map(\.value) == ["master1", "<==主节点主机名", "master2", "<==备节点主机名"])
        #expect(parsed.diagnostics.map(\.code) == [.hacfNodeNameNotHostname, .hacfNodeNameNotHostname])
        #expect(parsed.diagnostics.map(\.severity) == [.warning, .warning])
        #expect(parsed.diagnostics.map(\.location.line) == [14, 15])
        #expect(parsed.diagnostics.map(\.location.column) == [14, 14])
    }

    // MARK: Defaults

    @Test func defaultsFollowHeartbeat() throws {
        let config = try Self.parse("node alpha beta\nbcast eth1\n").model
        #expect(config.keepalive == .seconds(1))
        #expect(config.deadtime == .seconds(30))
        #expect(config.warntime == .seconds(15))
        #expect(config.initdead == .seconds(30))
        #expect(config.deadping == .seconds(30))
        #expect(config.udpPort == 694)
        #expect(config.baudRate == 19200)
        #expect(config.autoFailback == .legacy)
        #expect(config.maxRetransmitDelay == .milliseconds(250))
        #expect(config.realtime)
        #expect(config.media.map(\.value) == [.bcast(interface: "eth1", port: 694)])
    }

    @Test func legacyAutoFailbackIsTheDefaultAndWarnedAbout() throws {
        let parsed = try Self.parse("node alpha beta\nbcast eth1\n")
        #expect(parsed.diagnostics.map(\.code) == [.hacfLegacyAutoFailback])
        #expect(parsed.diagnostics[0].location.line == 1)
        #expect(parsed.diagnostics[0].location.column == 1)
        #expect(parsed.diagnostics[0].sourceLine == nil)

        let explicit = try Self.parse("node alpha beta\nbcast eth1\nauto_failback legacy\n")
        #expect(explicit.diagnostics.map(\.code) == [.hacfLegacyAutoFailback])
        #expect(explicit.diagnostics[0].location.line == 3)
        #expect(explicit.diagnostics[0].location.column == 15)
    }

    @Test func warntimeDefaultsToHalfOfDeadtime() throws {
        let config = try Self.parseMinimal(adding: "deadtime 10").model
        #expect(config.warntime == .seconds(5))
    }

    /// initdead: deadtime when over 10 s; 12 s when deadtime is under 6 s; else twice deadtime.
    @Test(arguments: [
        (Duration.seconds(5), Duration.seconds(12)), (.seconds(6), .seconds(12)), (.seconds(8), .seconds(16)),
        (.seconds(10), .seconds(20)), (.milliseconds(10_500), .milliseconds(10_500)), (.seconds(30), .seconds(30)),
    ])
    func initdeadIsDerivedFromDeadtime(deadtime: Duration, expected: Duration) throws {
        #expect(HaConfig.derivedInitdead(deadtime: deadtime) == expected)
        let config = try Self.parseMinimal(adding: "deadtime \(HeartbeatTime.format(deadtime))").model
        #expect(config.initdead == expected)
        #expect(config.deadping == deadtime)
    }

    @Test func shortInitdeadIsWarnedAbout() throws {
        let parsed = try Self.parseMinimal(adding: "keepalive 1\ndeadtime 4\ninitdead 8")
        #expect(parsed.diagnostics.map(\.code) == [.hacfInitdeadBelow10s])
        #expect(parsed.model.initdead == .seconds(8))
    }

    @Test func warntimeNotBelowDeadtimeIsWarnedAbout() throws {
        let parsed = try Self.parseMinimal(adding: "deadtime 10\nwarntime 10")
        #expect(parsed.diagnostics.map(\.code) == [.hacfWarntimeNotBelowDeadtime])
        #expect(parsed.diagnostics[0].location.line == 5)
        #expect(parsed.diagnostics[0].location.column == 10)
    }

    @Test func deadpingMustExceedTwiceKeepalive() throws {
        let error = try #require(Self.rejection(Self.minimal + "keepalive 2\ndeadping 4\n"))
        #expect(error.errors.map(\.code) == [.hacfDeadpingTooShort])
    }

    // MARK: Values

    @Test(arguments: ["true", "on", "yes", "y", "1", "TRUE", "On", "Yes", "Y"])
    func trueSpellingsAreAccepted(spelling: String) throws {
        #expect(try Self.parseMinimal(adding: "realtime false\ncoredumps \(spelling)").model.coreDumps == true)
    }

    @Test(arguments: ["false", "off", "no", "n", "0", "FALSE", "Off", "NO", "N"])
    func falseSpellingsAreAccepted(spelling: String) throws {
        #expect(try Self.parseMinimal(adding: "coredumps \(spelling)").model.coreDumps == false)
    }

    @Test(arguments: ["off", "no", "false", "0", "OFF"])
    func crmOffIsAccepted(spelling: String) throws {
        #expect(try Self.parseMinimal(adding: "crm \(spelling)").diagnostics.isEmpty)
    }

    @Test(arguments: ["crm on", "crm respawn", "pacemaker yes", "crm minimal"])
    func crmOnIsRefusedBecauseTandemRunsR1(line: String) throws {
        let error = try #require(Self.rejection(Self.minimal + line + "\n"))
        #expect(error.errors.map(\.code) == [.hacfCRMUnsupported])
        #expect(error.errors[0].message.contains("R1"))
    }

    @Test func crmAndPacemakerAreOneSetting() throws {
        let error = try #require(Self.rejection(Self.minimal + "crm off\npacemaker off\n"))
        #expect(error.errors.map(\.code) == [.hacfDuplicateDirective])
        #expect(error.errors[0].message.contains("line 4"))
    }

    @Test func niceFailbackMapsToAutoFailback() throws {
        let on = try Self.parse("node a b\nbcast eth0\nnice_failback on\n")
        #expect(on.model.autoFailback == .off)
        #expect(on.diagnostics.map(\.code) == [.hacfObsoleteDirective])
        let off = try Self.parse("node a b\nbcast eth0\nnice_failback off\n")
        #expect(off.model.autoFailback == .legacy)
        #expect(off.diagnostics.map(\.code) == [.hacfObsoleteDirective, .hacfLegacyAutoFailback])
    }

    @Test func severalNodesMayShareALine() throws {
        let config = try Self.parse("node alpha beta gamma\nbcast eth0\nauto_failback off\n").model
        #expect(config.nodes.map(\.value) == ["alpha", "beta", "gamma"])
        #expect(config.nodes.map(\.location.column) == [6, 12, 17])
    }

    @Test func logfacilityNoneIsAccepted() throws {
        #expect(try Self.parseMinimal(adding: "logfacility none").model.logFacility?.value == SyslogFacility.none)
    }

    @Test func maxRexmitDelayIsInMilliseconds() throws {
        #expect(try Self.parseMinimal(adding: "max_rexmit_delay 400").model.maxRetransmitDelay == .milliseconds(400))
    }

    @Test func pingNodesAndGroupsAreRead() throws {
        let config = try Self.parseMinimal(adding: "ping 10.0.0.254\nping_group uplinks 10.0.0.253 10.0.1.253").model
        #expect(config.pingNodes.map(\.value.description) == ["10.0.0.254"])
        #expect(config.pingGroups.map(\.value.name) == ["uplinks"])
        #expect(config.pingGroups[0].value.addresses.map(\.description) == ["10.0.0.253", "10.0.1.253"])
    }

    @Test func ipv6MediaAreRead() throws {
        let config = try Self.parse("node a b\nauto_failback on\nmcast6 eth0 ff02::694 694 1 0\nucast6 eth1 fd00::2\n")
            .model
        #expect(
            config.media.map(\.value) == [
                .mcast6(interface: "eth0", group: "ff02::694", port: 694, hops: 1, loop: false),
                .ucast6(interface: "eth1", peer: "fd00::2", port: 694),
            ])
        let error = try #require(Self.rejection("node a b\nauto_failback on\nmcast6 eth0 fe80::1 694 1 0\n"))
        #expect(error.errors.map(\.code) == [.hacfBadMulticastGroup])
    }

    // MARK: Order

    /// Heartbeat applies udpport and baud to the media lines after them only.
    @Test func udpportAppliesOnlyToMediaAfterIt() throws {
        let parsed = try Self.parse(
            "node a b\nauto_failback on\nbcast eth0\nudpport 695\nbcast eth1\nucast eth2 10.0.0.2\n")
        #expect(
            parsed.model.media.map(\.value) == [
                .bcast(interface: "eth0", port: 694), .bcast(interface: "eth1", port: 695),
                .ucast(interface: "eth2", peer: IPv4Address(rawValue: 0x0A00_0002), port: 695),
            ])
        #expect(parsed.model.udpPort == 695)
        #expect(parsed.diagnostics.map(\.code) == [.hacfSettingAfterMedia])
        #expect(parsed.diagnostics[0].location.line == 4)
    }

    @Test func baudAppliesOnlyToSerialLinesAfterIt() throws {
        let parsed = try Self.parse("node a b\nauto_failback on\nbaud 115200\nserial /dev/ttyS0 /dev/ttyS1\n")
        #expect(
            parsed.model.media.map(\.value) == [
                .serial(device: "/dev/ttyS0", baudRate: 115_200), .serial(device: "/dev/ttyS1", baudRate: 115_200),
            ])
        #expect(parsed.diagnostics.isEmpty)
        let late = try Self.parse("node a b\nauto_failback on\nserial /dev/ttyS0\nbaud 115200\n")
        #expect(late.model.media.map(\.value) == [.serial(device: "/dev/ttyS0", baudRate: 19200)])
        #expect(late.diagnostics.map(\.code) == [.hacfSettingAfterMedia])
    }

    // MARK: STONITH

    @Test func stonithHostLinesAreFenceAgentsWithNamedParameters() throws {
        let parsed = try Self.parseMinimal(adding: """
            stonith_host a /usr/sbin/fence_ipmilan ip=10.0.0.3 username=admin password=
            stonith_host * fence_lab socket=/run/switch.sock
            stonith_action reboot
            stonith_delay 2
            stonith_timeout 30
            """)
        let devices = parsed.model.stonithHosts.map(\.value)
        #expect(devices[0] == StonithDevice(fromHost: "a", agent: "/usr/sbin/fence_ipmilan", parameters: [
            .init(name: "ip", value: "10.0.0.3"), .init(name: "username", value: "admin"), .init(name: "password", value: ""),
        ]))
        #expect(devices[1].fromHost == nil)
        #expect(parsed.model.stonithDevices(for: "A").map(\.agent) == ["/usr/sbin/fence_ipmilan", "fence_lab"])
        #expect(parsed.model.stonithDevices(for: "b").map(\.agent) == ["fence_lab"])
        #expect(parsed.model.stonithAction == .reboot)
        #expect(parsed.model.stonithDelay == .seconds(2))
        #expect(parsed.model.stonithTimeout == .seconds(30))
    }

    @Test func stonithDefaultsPowerOffAfterFiveSeconds() throws {
        let model = try Self.parseMinimal(adding: "").model
        #expect(model.stonithHosts.isEmpty)
        #expect(model.stonithAction == .off)
        #expect(model.stonithDelay == .seconds(5))
        #expect(model.stonithTimeout == .seconds(60))
    }

    @Test(arguments: [
        ("stonith_host * baytech 10.0.0.3 mylogin secret", 24, "name=value"),
        ("stonith_host * fence_x port=node2", 24, "set by heartbeatd"),
        ("stonith_host * ip=10.0.0.3", 16, "fence agent"),
        ("stonith_host * bin/fence_x", 16, "fence agent"),
    ])
    func badStonithHostLinesAreRefusedAtTheField(line: String, column: Int, message: String) throws {
        let error = try #require(Self.rejection(Self.minimal + line + "\n"))
        #expect(error.errors.map(\.code) == [.hacfBadValue])
        #expect(error.errors[0].location.column == column)
        #expect(error.errors[0].message.contains(message))
    }

    @Test func alertProgramsAreAbsolutePaths() throws {
        let parsed = try Self.parseMinimal(adding: "alert /usr/local/sbin/ha-alert\nalert /etc/tandem/mail-alert")
        #expect(parsed.model.alertScripts.map(\.value) == ["/usr/local/sbin/ha-alert", "/etc/tandem/mail-alert"])
        let error = try #require(Self.rejection(Self.minimal + "alert ha-alert\n"))
        #expect(error.errors.map(\.code) == [.hacfBadValue])
        #expect(error.errors[0].message.contains("absolute path"))
    }

    @Test func theWitnessIsAnAddressWithAnOptionalPort() throws {
        #expect(try Self.parseMinimal(adding: "witness 10.0.0.3").model.witness?.value.description == "10.0.0.3:5695")
        #expect(try Self.parseMinimal(adding: "witness 10.0.0.3:7000").model.witness?.value.description == "10.0.0.3:7000")
        for bad in ["witness.example.com", "10.0.0.3:0", "10.0.0.3:70000", "10.0.0.3:7:8"] {
            let error = try #require(Self.rejection(Self.minimal + "witness \(bad)\n"), "\(bad)")
            #expect(error.errors.map(\.code) == [.hacfBadValue], "\(bad)")
            #expect(error.errors[0].message.contains("IPV4ADDRESS:PORT"), "\(bad)")
        }
        let quorumServer = try #require(Self.rejection(Self.minimal + "quorum_server 10.0.0.3\n"))
        #expect(quorumServer.errors[0].hint?.contains("witness ADDRESS") == true)
    }

    @Test func heartbeatsStonithDirectiveIsRefusedWithTheStonithHostForm() throws {
        let error = try #require(Self.rejection(Self.minimal + "stonith baytech /etc/ha.d/conf/stonith.baytech\n"))
        #expect(error.errors.map(\.code) == [.hacfUnsupportedDirective])
        #expect(error.errors[0].hint?.contains("stonith_host *") == true)
    }

    // MARK: Directives

    /// Every directive in the list is handled: given without a value, none is reported as unknown.
    @Test(arguments: HaCfParser.supportedDirectives)
    func everySupportedDirectiveIsKnown(directive: String) {
        let error = Self.rejection(Self.minimal + directive + "\n")
        #expect(error?.errors.contains { $0.code == .hacfUnknownDirective } != true)
    }

    @Test func unknownDirectiveSuggestsTheClosest() throws {
        let error = try #require(Self.rejection(Self.minimal + "deadtmie 30\n"))
        #expect(error.errors.map(\.code) == [.hacfUnknownDirective])
        #expect(error.errors[0].hint == "did you mean 'deadtime'?")
    }

    @Test func everyErrorIsReportedNotOnlyTheFirst() throws {
        let error = try #require(Self.rejection("keepalive fast\nnode a\nmcast eth0 1.2.3.4 694 1 0\ndebug x\n"))
        #expect(error.errors.map(\.code) == [.hacfBadTime, .hacfBadMulticastGroup, .hacfBadNumber])
        #expect(error.errors.map(\.location.line) == [1, 3, 4])
    }

    @Test func commentsAreRemovedAnywhereOnALine() throws {
        let config = try Self.parse("node alpha # beta\nbcast eth0 # eth1\nauto_failback on # yes\n").model
        #expect(config.nodes.map(\.value) == ["alpha"])
        #expect(config.media.count == 1)
    }

    /// A bad value is reported once, not again through the default left in its place.
    @Test func aBadTimeIsNotCheckedAgainstOtherTimes() throws {
        let error = try #require(Self.rejection(Self.minimal + "deadtime 60\ninitdead soon\n"))
        #expect(error.errors.map(\.code) == [.hacfBadTime])
    }

    /// A failed medium line is not reported a second time as "no medium".
    @Test func aFailedMediumLineIsNotAlsoMissing() throws {
        let error = try #require(Self.rejection("node a b\nauto_failback on\nucast eth0 nowhere\n"))
        #expect(error.errors.map(\.code) == [.hacfBadAddress])
    }

    @Test func tooManyNodesAreRefused() throws {
        let names = (1...HaCfParser.nodesMax + 1).map { "n\($0)" }.joined(separator: " ")
        let error = try #require(Self.rejection("node \(names)\nbcast eth0\nauto_failback on\n"))
        #expect(error.errors.map(\.code) == [.hacfTooMany])
    }

    // MARK: Malformed fixtures

    static let malformed: [MalformedCase] = [
        MalformedCase(file: "autojoin-any.cf", code: .hacfAutojoinWithR1, line: 4, column: 10),
        MalformedCase(file: "bad-boolean.cf", code: .hacfBadBoolean, line: 4, column: 10),
        MalformedCase(file: "bad-logfacility.cf", code: .hacfBadValue, line: 4, column: 13),
        MalformedCase(file: "bad-time.cf", code: .hacfBadTime, line: 4, column: 11),
        MalformedCase(file: "bad-udpport.cf", code: .hacfBadPort, line: 2, column: 9),
        MalformedCase(file: "crm-on.cf", code: .hacfCRMUnsupported, line: 4, column: 5),
        MalformedCase(file: "deadtime-too-short.cf", code: .hacfDeadtimeTooShort, line: 5, column: 10),
        MalformedCase(file: "debug-out-of-range.cf", code: .hacfBadNumber, line: 4, column: 7),
        MalformedCase(file: "duplicate-deadtime.cf", code: .hacfDuplicateDirective, line: 6, column: 1),
        MalformedCase(file: "duplicate-node.cf", code: .hacfDuplicateNode, line: 2, column: 6),
        MalformedCase(file: "extra-argument.cf", code: .hacfExtraArgument, line: 4, column: 13),
        MalformedCase(file: "initdead-below-deadtime.cf", code: .hacfInitdeadTooShort, line: 5, column: 10),
        MalformedCase(file: "mcast-bad-loop.cf", code: .hacfBadLoop, line: 3, column: 28),
        MalformedCase(file: "mcast-group-not-multicast.cf", code: .hacfBadMulticastGroup, line: 3, column: 12),
        MalformedCase(file: "mcast-missing-loop.cf", code: .hacfMissingArgument, line: 3, column: 27),
        MalformedCase(file: "mcast-ttl-out-of-range.cf", code: .hacfBadTTL, line: 3, column: 26),
        MalformedCase(file: "no-media.cf", code: .hacfNoMedia, line: 1, column: 1),
        MalformedCase(file: "no-nodes.cf", code: .hacfNoNodes, line: 1, column: 1),
        MalformedCase(file: "respawn-relative-path.cf", code: .hacfBadRespawn, line: 4, column: 19),
        MalformedCase(file: "ucast-bad-address.cf", code: .hacfBadAddress, line: 2, column: 12),
        MalformedCase(file: "unknown-directive.cf", code: .hacfUnknownDirective, line: 5, column: 1),
        MalformedCase(file: "unsupported-failfast.cf", code: .hacfUnsupportedDirective, line: 4, column: 1),
    ]

    @Test(arguments: malformed)
    func malformedFileIsRejectedAtTheFault(_ fixture: MalformedCase) throws {
        let errors = try fixture.expectRefusal(in: "hacf") { path throws(ConfigError) in _ = try HaCfParser.load(path: path) }.errors
        #expect(errors.count == 1, "\(errors)")
        let first = try #require(errors.first)
        #expect(first.location.file == FixturePaths.path("malformed/hacf/\(fixture.file)"))
        #expect(first.message.contains("expected"), "messages say what was expected: \(first.message)")
    }

    @Test func everyMalformedFixtureIsInTheTable() {
        let files = FixturePaths.fileNames(in: "malformed/hacf").filter { $0.hasSuffix(".cf") }
        #expect(files == Self.malformed.map(\.file).sorted())
    }
}
