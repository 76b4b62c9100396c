/// Reads Heartbeat's `ha.cf`.
///
/// Like Heartbeat (`parse_config` in heartbeat/config.c), the parser reads one directive per line, a `#` anywhere
/// starts a comment, and directives apply in order: `udpport` and `baud` affect only the media lines after them.
/// Unlike Heartbeat, which logs and carries on, every problem becomes a `Diagnostic` pointing at the offending field,
/// and all of them are reported together. The whole-file checks are Heartbeat's own (`init_config`).
public enum HaCfParser {
    // Limits on repeated directives. Heartbeat's own limits are larger (MAXNODE 100, MAXMEDIA 64); a two-node
    // Tandem cluster needs a handful of each, and a bound keeps a broken or hostile file from growing the model.

    /// Node names across all `node` lines.
    public static let nodesMax = 64
    /// Media across all bcast, mcast, mcast6, ucast, ucast6 and serial lines.
    public static let mediaMax = 32
    /// Addresses across all `ping` and `ping_group` lines.
    public static let pingNodesMax = 64
    /// `respawn` lines.
    public static let respawnClientsMax = 32
    /// `apiauth` lines.
    public static let apiAuthorizationsMax = 64
    /// `stonith_host` lines.
    public static let stonithHostsMax = 32
    /// `alert` lines.
    public static let alertScriptsMax = 8
    /// The witness's UDP port when `witness` names none (`tandem witness --listen` uses it too).
    public static let witnessDefaultPort: UInt16 = 5695

    /// Parses the text of an ha.cf. Throws every error found; warnings come back with the model.
    public static func parse(_ source: SourceFile) throws(ConfigError) -> Parsed<HaConfig> {
        var builder = HaCfBuilder(source: source)
        for line in LineFields.logicalLines(of: source, comments: .anywhere) {
            builder.apply(line)
        }
        return try builder.finish()
    }

    /// Reads and parses the ha.cf at `path`.
    public static func load(path: String) throws(ConfigError) -> Parsed<HaConfig> {
        try parse(SourceFile.load(path: path))
    }

    /// Every directive Tandem reads, in the order of Heartbeat's sample ha.cf where it has one.
    public static let supportedDirectives: [String] = [
        "debugfile", "logfile", "logfacility", "use_logd", "debug", "conn_logd_time",
        "keepalive", "deadtime", "warntime", "initdead", "deadping", "max_rexmit_delay",
        "udpport", "baud", "serial", "bcast", "udp", "mcast", "mcast6", "ucast", "ucast6",
        "auto_failback", "nice_failback", "stonith_host", "watchdog", "node", "autojoin",
        "ping", "ping_group", "respawn", "apiauth", "crm", "pacemaker",
        "hopfudge", "hbgenmethod", "realtime", "rtprio", "msgfmt", "compression", "compression_threshold",
        "traditional_compression", "coredumps", "uuidfrom", "memreserve",
        "record_config_changes", "record_pengine_inputs", "enable_config_writes",
        // Tandem's own.
        "resource_start_timeout", "resource_stop_timeout", "stop_failure_action",
        "monitor_interval", "monitor_timeout", "monitor_failures", "monitor_failure_window",
        "stonith_action", "stonith_delay", "stonith_timeout", "alert", "witness",
    ]

    /// Directives that Heartbeat 3 knows and Tandem does not implement, with a hint where there is an alternative.
    /// They are errors rather than ignored: each changes how the cluster behaves.
    static let unsupportedDirectives: [String: String?] = [
        "cluster": nil, "quorum_server": "Tandem's tiebreaker is 'witness ADDRESS[:PORT]' (tandem witness)", "env": nil, "normalpoll": nil, "log_badpack": nil,
        "use_apphbd": nil, "syslogmsgfmt": nil, "coreroot": nil, "crm_daemon_dir": nil, "crmd_spawns_pengine": nil,
        "failfast": "use 'respawn'; Tandem does not reboot the node when a client dies",
        "stonith": "write the device as 'stonith_host * AGENT name=value ...' with a fence agent (fence_ipmilan, ...)",
        "hbaping": mediaHint, "ping6": mediaHint, "rds": mediaHint,
    ]

    private static let mediaHint =
        "Tandem supports bcast, mcast, mcast6, ucast, ucast6 and serial media, and IPv4 ping nodes"

    /// Directives that may appear more than once; every other one is single-valued.
    static let repeatableDirectives: Set<String> = [
        "node", "bcast", "udp", "mcast", "mcast6", "ucast", "ucast6", "serial", "ping", "ping_group",
        "respawn", "apiauth", "stonith_host", "alert",
        // udpport and baud apply to the media lines after them, so a file may change them between media.
        "udpport", "baud",
    ]

    /// The setting a single-valued directive sets, for the duplicate check: `nice_failback` is an old spelling of
    /// `auto_failback` and `crm` of `pacemaker`, so giving both is giving one setting twice.
    static func settingName(_ directive: String) -> String {
        switch directive {
        case "nice_failback": "auto_failback"
        case "pacemaker": "crm"
        default: directive
        }
    }
}

extension DiagnosticCode {
    public static let hacfUnknownDirective: DiagnosticCode = "hacf.unknown-directive"
    public static let hacfUnsupportedDirective: DiagnosticCode = "hacf.unsupported-directive"
    public static let hacfObsoleteDirective: DiagnosticCode = "hacf.obsolete-directive"
    public static let hacfMissingArgument: DiagnosticCode = "hacf.missing-argument"
    public static let hacfExtraArgument: DiagnosticCode = "hacf.extra-argument"
    public static let hacfDuplicateDirective: DiagnosticCode = "hacf.duplicate-directive"
    public static let hacfTooMany: DiagnosticCode = "hacf.too-many"
    public static let hacfBadTime: DiagnosticCode = "hacf.bad-time"
    public static let hacfBadNumber: DiagnosticCode = "hacf.bad-number"
    public static let hacfBadPort: DiagnosticCode = "hacf.bad-port"
    public static let hacfBadBoolean: DiagnosticCode = "hacf.bad-boolean"
    public static let hacfBadValue: DiagnosticCode = "hacf.bad-value"
    public static let hacfBadAddress: DiagnosticCode = "hacf.bad-address"
    public static let hacfBadMulticastGroup: DiagnosticCode = "hacf.bad-multicast-group"
    public static let hacfBadTTL: DiagnosticCode = "hacf.bad-ttl"
    public static let hacfBadLoop: DiagnosticCode = "hacf.bad-loop"
    public static let hacfBadRespawn: DiagnosticCode = "hacf.bad-respawn"
    public static let hacfBadAPIAuth: DiagnosticCode = "hacf.bad-apiauth"
    public static let hacfSettingAfterMedia: DiagnosticCode = "hacf.setting-after-media"
    public static let hacfDuplicateNode: DiagnosticCode = "hacf.duplicate-node"
    public static let hacfNodeNameNotHostname: DiagnosticCode = "hacf.node-name-not-hostname"
    public static let hacfCRMUnsupported: DiagnosticCode = "hacf.crm-unsupported"
    public static let hacfAutojoinWithR1: DiagnosticCode = "hacf.autojoin-with-r1"
    public static let hacfLegacyAutoFailback: DiagnosticCode = "hacf.legacy-auto-failback"
    public static let hacfDeadtimeTooShort: DiagnosticCode = "hacf.deadtime-too-short"
    public static let hacfInitdeadTooShort: DiagnosticCode = "hacf.initdead-too-short"
    public static let hacfInitdeadBelow10s: DiagnosticCode = "hacf.initdead-below-10s"
    public static let hacfDeadpingTooShort: DiagnosticCode = "hacf.deadping-too-short"
    public static let hacfWarntimeNotBelowDeadtime: DiagnosticCode = "hacf.warntime-not-below-deadtime"
    public static let hacfNoMedia: DiagnosticCode = "hacf.no-media"
    public static let hacfNoNodes: DiagnosticCode = "hacf.no-nodes"
}

/// One ha.cf line: the directive and its arguments.
struct HaCfDirective {
    var name: Field
    var arguments: [Field]

    var key: String { name.text }
}

/// The parser's state while it reads one file.
struct HaCfBuilder {
    let source: SourceFile
    var config = HaConfig()
    var log = DiagnosticLog()
    /// The value field (or the directive, when it had none) that first set each single-valued setting.
    var firstSetting: [String: Field] = [:]
    /// Node names seen, lower-cased as Heartbeat compares them.
    var nodeNames: [String: Field] = [:]
    /// Client names of `apiauth` lines seen.
    var apiClients: [String: Field] = [:]
    /// Whether a bcast/ucast (which take `udpport`) or a serial (which takes `baud`) line came already.
    var hasUDPPortMedia = false
    var hasSerialMedia = false
    /// Whether any medium or node line was seen, even one that failed: the whole-file "no media" and "no nodes"
    /// errors would only repeat that line's error.
    var sawMediumLine = false
    var sawNodeLine = false
    /// Settings whose line had an error. The whole-file checks skip them, so that a bad value is reported once and
    /// not again as a relation between the default left in its place and another setting.
    var failedSettings: Set<String> = []

    init(source: SourceFile) {
        self.source = source
    }

    mutating func apply(_ line: LogicalLine) {
        guard let name = line.fields.first else { return }
        let directive = HaCfDirective(name: name, arguments: Array(line.fields.dropFirst()))
        do {
            try dispatch(directive)
        } catch {
            failedSettings.insert(HaCfParser.settingName(directive.key))
            log.report(error)
        }
    }

    private mutating func dispatch(_ directive: HaCfDirective) throws(Diagnostic) {
        if HaCfParser.supportedDirectives.contains(directive.key),
            !HaCfParser.repeatableDirectives.contains(directive.key)
        {
            try claimSetting(directive)
        }
        if HaCfBuilder.mediumDirectives.contains(directive.key) { sawMediumLine = true }
        if directive.key == "node" { sawNodeLine = true }
        if try applyTiming(directive) { return }
        if try applyMedium(directive) { return }
        if try applyMembership(directive) { return }
        if try applyProcess(directive) { return }
        if try applyLogging(directive) { return }
        if try applyTuning(directive) { return }
        throw unknownDirective(directive.name)
    }

    static let mediumDirectives: Set<String> = ["bcast", "udp", "mcast", "mcast6", "ucast", "ucast6", "serial"]

    /// Refuses a second line for the same single-valued setting. Heartbeat silently keeps the last one (or, for
    /// baud, watchdog and crm, fails with a terse message); two values for one setting are almost always an
    /// edit that went wrong.
    private mutating func claimSetting(_ directive: HaCfDirective) throws(Diagnostic) {
        let setting = HaCfParser.settingName(directive.key)
        let valueField = directive.arguments.first ?? directive.name
        if let first = firstSetting[setting] {
            throw error(
                .hacfDuplicateDirective, at: directive.name,
                "'\(setting)' is already set on line \(first.line); expected it once",
                hint: "remove one of the two lines (Heartbeat would silently use the last)"
            )
        }
        firstSetting[setting] = valueField
    }

    private func unknownDirective(_ name: Field) -> Diagnostic {
        if let hint = HaCfParser.unsupportedDirectives[name.text] {
            return error(
                .hacfUnsupportedDirective, at: name,
                "Heartbeat's '\(name.text)' directive is not supported by Tandem; expected one of the directives "
                    + "Tandem implements",
                hint: hint
            )
        }
        let candidates = HaCfParser.supportedDirectives + HaCfParser.unsupportedDirectives.keys.sorted()
        return error(
            .hacfUnknownDirective, at: name,
            "unknown directive '\(name.text)'; expected an ha.cf directive such as node, keepalive or mcast",
            hint: Suggestions.didYouMean(name.text, among: candidates)
        )
    }

    // MARK: Diagnostics

    func error(_ code: DiagnosticCode, at field: Field, _ message: String, hint: String? = nil) -> Diagnostic {
        source.diagnostic(.error, code, line: field.line, column: field.column, message, hint: hint)
    }

    func warning(_ code: DiagnosticCode, at field: Field, _ message: String, hint: String? = nil) -> Diagnostic {
        source.diagnostic(.warning, code, line: field.line, column: field.column, message, hint: hint)
    }

    /// A diagnostic about the file as a whole, such as a directive that is missing: line 1, column 1, no excerpt.
    func fileDiagnostic(
        _ severity: Diagnostic.Severity, _ code: DiagnosticCode, _ message: String, hint: String? = nil
    ) -> Diagnostic {
        Diagnostic(severity, code, at: source.location(line: 1, column: 1), message, hint: hint)
    }

    // MARK: Arguments

    /// The argument at `index`, or a missing-argument error pointing just past the end of the line.
    func argument(_ directive: HaCfDirective, _ index: Int, expected: String) throws(Diagnostic) -> Field {
        if index < directive.arguments.count { return directive.arguments[index] }
        let last = directive.arguments.last ?? directive.name
        let endOfLine = Field(text: "", line: last.line, column: last.column + last.text.count)
        throw error(.hacfMissingArgument, at: endOfLine, "'\(directive.key)' needs \(expected)")
    }

    /// Refuses arguments after the first `count`.
    func noExtraArguments(_ directive: HaCfDirective, after count: Int, usage: String) throws(Diagnostic) {
        guard directive.arguments.count > count else { return }
        let extra = directive.arguments[count]
        throw error(
            .hacfExtraArgument, at: extra,
            "unexpected '\(extra.text)'; expected '\(usage)'"
        )
    }

    /// The one argument of a directive that takes exactly one.
    func single(_ directive: HaCfDirective, expected: String) throws(Diagnostic) -> Field {
        let field = try argument(directive, 0, expected: expected)
        try noExtraArguments(directive, after: 1, usage: "\(directive.key) VALUE")
        return field
    }

    // MARK: Values

    static let timeExample = "a time such as 2, 1.5 or 500ms"

    func time(_ field: Field) throws(Diagnostic) -> Duration {
        switch HeartbeatTime.parse(field.text) {
        case .success(let duration): return duration
        case .failure(let problem): throw error(.hacfBadTime, at: field, problem.message)
        }
    }

    /// A time that must be more than zero: Heartbeat refuses a zero keepalive or warntime.
    func positiveTime(_ field: Field) throws(Diagnostic) -> Duration {
        let duration = try time(field)
        guard duration > .zero else {
            throw error(
                .hacfBadTime, at: field, "expected a time more than 0, such as 2, 1.5 or 500ms, got '\(field.text)'")
        }
        return duration
    }

    /// A decimal integer in `range` (no sign, no units), as Heartbeat's `atoi` fields should be written.
    func integer(_ field: Field, in range: ClosedRange<Int>, what: String) throws(Diagnostic) -> Int {
        guard field.text.count <= 10, field.text.allSatisfy({ $0.isASCII && $0.isNumber }),
            let value = Int(field.text), range.contains(value)
        else {
            throw error(
                .hacfBadNumber, at: field,
                "expected \(what), a whole number from \(range.lowerBound) to \(range.upperBound), got '\(field.text)'"
            )
        }
        return value
    }

    func port(_ field: Field) throws(Diagnostic) -> UInt16 {
        guard field.text.count <= 5, field.text.allSatisfy({ $0.isASCII && $0.isNumber }),
            let value = UInt16(field.text), value > 0
        else {
            throw error(.hacfBadPort, at: field, "expected a UDP port from 1 to 65535, got '\(field.text)'")
        }
        return value
    }

    /// Heartbeat's booleans (`cl_str_to_boolean`), in any letter case.
    func boolean(_ field: Field) throws(Diagnostic) -> Bool {
        switch field.text.lowercased() {
        case "true", "on", "yes", "y", "1": return true
        case "false", "off", "no", "n", "0": return false
        default:
            throw error(
                .hacfBadBoolean, at: field,
                "expected a boolean (true, on, yes, y, 1 or false, off, no, n, 0), got '\(field.text)'"
            )
        }
    }

    /// One of the values of an enumeration, in any letter case.
    func choice<Value: RawRepresentable & CaseIterable>(
        _ field: Field, _ type: Value.Type, what: String
    ) throws(Diagnostic) -> Value where Value.RawValue == String {
        if let value = Value(rawValue: field.text.lowercased()) { return value }
        let names = Value.allCases.map(\.rawValue)
        throw error(
            .hacfBadValue, at: field,
            "expected \(what): \(names.joined(separator: ", ")); got '\(field.text)'",
            hint: Suggestions.didYouMean(field.text, among: names)
        )
    }

    func ipv4(_ field: Field, what: String) throws(Diagnostic) -> IPv4Address {
        guard let address = IPv4Address(field.text) else {
            throw error(
                .hacfBadAddress, at: field, "expected \(what), an IPv4 address such as 10.0.0.2, got '\(field.text)'")
        }
        return address
    }
}

// MARK: - Directives

extension HaCfBuilder {
    /// keepalive, deadtime, warntime, initdead, deadping and the other times. Their relations are checked in
    /// `finish`, once every value and default is known.
    mutating func applyTiming(_ directive: HaCfDirective) throws(Diagnostic) -> Bool {
        let expectedTime = HaCfBuilder.timeExample
        switch directive.key {
        case "keepalive": config.keepalive = try positiveTime(single(directive, expected: expectedTime))
        case "deadtime": config.deadtime = try time(single(directive, expected: expectedTime))
        case "warntime": config.warntime = try positiveTime(single(directive, expected: expectedTime))
        case "initdead": config.initdead = try time(single(directive, expected: expectedTime))
        case "deadping": config.deadping = try time(single(directive, expected: expectedTime))
        case "conn_logd_time":
            config.logdReconnectInterval = try positiveTime(single(directive, expected: expectedTime))
        case "resource_start_timeout":
            config.resourceStartTimeout = try positiveTime(single(directive, expected: expectedTime))
        case "resource_stop_timeout":
            config.resourceStopTimeout = try positiveTime(single(directive, expected: expectedTime))
        case "stonith_delay": config.stonithDelay = try time(single(directive, expected: expectedTime))
        case "stonith_timeout": config.stonithTimeout = try positiveTime(single(directive, expected: expectedTime))
        case "monitor_interval": config.monitorInterval = try time(single(directive, expected: expectedTime))
        case "monitor_timeout": config.monitorTimeout = try positiveTime(single(directive, expected: expectedTime))
        case "monitor_failure_window":
            config.monitorFailureWindow = try positiveTime(single(directive, expected: expectedTime))
        case "monitor_failures":
            let field = try single(directive, expected: "a count from 1 to 100 such as 3")
            config.monitorFailures = try integer(field, in: 1...100, what: "a count")
        case "max_rexmit_delay":
            // Heartbeat reads this one with atoi as milliseconds, not with its time syntax.
            let field = try single(directive, expected: "a delay in milliseconds such as 250")
            config.maxRetransmitDelay = .milliseconds(try integer(field, in: 1...60_000, what: "milliseconds"))
        default:
            return false
        }
        return true
    }

    /// udpport, baud and the media lines.
    mutating func applyMedium(_ directive: HaCfDirective) throws(Diagnostic) -> Bool {
        switch directive.key {
        case "udpport": try applyUDPPort(directive)
        case "baud": try applyBaud(directive)
        case "bcast", "udp": try applyBroadcast(directive)
        case "mcast": try applyMulticast(directive)
        case "mcast6": try applyMulticast6(directive)
        case "ucast", "ucast6": try applyUnicast(directive)
        case "serial":
            _ = try argument(directive, 0, expected: "a serial device such as /dev/ttyS0")
            for device in directive.arguments {
                try addMedium(.serial(device: device.text, baudRate: config.baudRate), at: device)
            }
            hasSerialMedia = true
        default:
            return false
        }
        return true
    }

    /// node, autojoin, auto_failback (and its old name nice_failback), ping nodes, crm.
    mutating func applyMembership(_ directive: HaCfDirective) throws(Diagnostic) -> Bool {
        switch directive.key {
        case "node":
            _ = try argument(directive, 0, expected: "a node name (as `uname -n` prints it)")
            // Heartbeat adds every word after `node` as a node name.
            for name in directive.arguments { try addNode(name) }
        case "autojoin": try applyAutojoin(directive)
        case "auto_failback": try applyAutoFailback(directive)
        case "nice_failback": try applyNiceFailback(directive)
        case "ping":
            _ = try argument(directive, 0, expected: "the IPv4 address of a ping node")
            for field in directive.arguments {
                try checkPingNodeLimit(at: field)
                config.pingNodes.append(Located(try ipv4(field, what: "a ping node"), at: location(field)))
            }
        case "ping_group": try applyPingGroup(directive)
        case "crm", "pacemaker": try applyCRM(directive)
        default:
            return false
        }
        return true
    }

    /// respawn, apiauth, watchdog and STONITH.
    mutating func applyProcess(_ directive: HaCfDirective) throws(Diagnostic) -> Bool {
        switch directive.key {
        case "respawn": try applyRespawn(directive)
        case "apiauth": try applyAPIAuth(directive)
        case "watchdog":
            let device = try single(directive, expected: "the watchdog device such as /dev/watchdog")
            config.watchdogDevice = Located(device.text, at: location(device))
        case "stonith_host":
            let host = try argument(directive, 0, expected: "the node that uses the device (or *)")
            guard config.stonithHosts.count < HaCfParser.stonithHostsMax else {
                throw tooMany("stonith_host lines", HaCfParser.stonithHostsMax, at: host)
            }
            config.stonithHosts.append(Located(try stonithDevice(directive), at: location(host)))
        case "alert":
            let path = try single(directive, expected: "the absolute path of a program to run on cluster events")
            guard path.text.hasPrefix("/") else {
                throw error(.hacfBadValue, at: path, "expected an absolute path for the alert program, got '\(path.text)'")
            }
            guard config.alertScripts.count < HaCfParser.alertScriptsMax else {
                throw tooMany("alert lines", HaCfParser.alertScriptsMax, at: path)
            }
            config.alertScripts.append(Located(path.text, at: location(path)))
        case "witness":
            let field = try single(directive, expected: "the witness's IPv4 address, optionally with :PORT")
            guard let endpoint = WitnessEndpoint(parsing: field.text, defaultPort: HaCfParser.witnessDefaultPort) else {
                throw error(.hacfBadValue, at: field, "expected the witness as IPV4ADDRESS or IPV4ADDRESS:PORT, got '\(field.text)'")
            }
            config.witness = Located(endpoint, at: location(field))
        case "stonith_action":
            let field = try single(directive, expected: "off or reboot")
            config.stonithAction = try choice(field, StonithAction.self, what: "a STONITH action")
        default:
            return false
        }
        return true
    }

    /// `stonith_host FROMHOST AGENT NAME=VALUE...`. Heartbeat's own plugins took positional parameters
    /// (`baytech 10.0.0.3 login password`); fence agents take named ones, which is what is checked here.
    func stonithDevice(_ directive: HaCfDirective) throws(Diagnostic) -> StonithDevice {
        let host = try argument(directive, 0, expected: "the node that uses the device (or *)")
        let agent = try argument(directive, 1, expected: "a fence agent after the node, such as /usr/sbin/fence_ipmilan")
        guard !agent.text.contains("="), agent.text.hasPrefix("/") || !agent.text.contains("/") else {
            throw error(.hacfBadValue, at: agent, "expected a fence agent (an absolute path or a program name such as fence_ipmilan), got '\(agent.text)'")
        }
        var parameters: [StonithDevice.Parameter] = []
        for field in directive.arguments.dropFirst(2) {
            let parts = field.text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = parts.first.map(String.init) ?? ""
            guard parts.count == 2, !name.isEmpty,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") })
            else {
                throw error(
                    .hacfBadValue, at: field,
                    "expected a name=value parameter for the fence agent (such as ip=10.0.0.3), got '\(field.text)'; Heartbeat's positional plugin parameters are not supported")
            }
            guard !StonithDevice.reservedParameters.contains(name) else {
                throw error(.hacfBadValue, at: field, "'\(name)' is set by heartbeatd for each run (the node to fence and the action)")
            }
            parameters.append(StonithDevice.Parameter(name: name, value: String(parts[1])))
        }
        return StonithDevice(fromHost: host.text == "*" ? nil : host.text, agent: agent.text, parameters: parameters)
    }

    /// logfile, debugfile, logfacility, use_logd, debug.
    mutating func applyLogging(_ directive: HaCfDirective) throws(Diagnostic) -> Bool {
        switch directive.key {
        case "logfile":
            let path = try single(directive, expected: "a log file path such as /var/log/ha-log")
            config.logFile = Located(path.text, at: location(path))
        case "debugfile":
            let path = try single(directive, expected: "a debug file path such as /var/log/ha-debug")
            config.debugFile = Located(path.text, at: location(path))
        case "logfacility":
            let field = try single(directive, expected: "a syslog facility such as local0, or none")
            let facility = try choice(field, SyslogFacility.self, what: "a syslog facility")
            config.logFacility = Located(facility, at: location(field))
        case "use_logd": config.useLogd = try boolean(single(directive, expected: "yes or no"))
        case "debug":
            let field = try single(directive, expected: "a debug level from 0 to 255")
            config.debugLevel = UInt8(try integer(field, in: 0...255, what: "a debug level"))
        default:
            return false
        }
        return true
    }

    /// The rarely changed knobs.
    mutating func applyTuning(_ directive: HaCfDirective) throws(Diagnostic) -> Bool {
        let yesNo = "yes or no"
        switch directive.key {
        case "realtime": config.realtime = try boolean(single(directive, expected: yesNo))
        case "rtprio":
            let field = try single(directive, expected: "a SCHED_FIFO priority from 1 to 99")
            config.realtimePriority = try integer(field, in: 1...99, what: "a SCHED_FIFO priority")
        case "compression":
            let field = try single(directive, expected: "a compression module, zlib or bz2")
            config.compression = try choice(field, CompressionModule.self, what: "a compression module")
        case "compression_threshold":
            let field = try single(directive, expected: "a size in KiB such as 2")
            config.compressionThresholdKiB = try integer(field, in: 1...1024, what: "a size in KiB")
        case "traditional_compression": config.traditionalCompression = try boolean(single(directive, expected: yesNo))
        case "hopfudge":
            let field = try single(directive, expected: "a hop count from 0 to 255")
            config.hopFudge = try integer(field, in: 0...255, what: "a hop count")
        case "msgfmt":
            let field = try single(directive, expected: "classic or netstring")
            config.messageFormat = try choice(field, MessageFormat.self, what: "a message format")
        case "stop_failure_action":
            let field = try single(directive, expected: "stop-heartbeats, reboot or none")
            config.stopFailureAction = try choice(field, StopFailurePolicy.self, what: "a stop failure action")
        case "coredumps": config.coreDumps = try boolean(single(directive, expected: yesNo))
        case "uuidfrom":
            let field = try single(directive, expected: "file or nodename")
            config.uuidSource = try choice(field, UUIDSource.self, what: "a UUID source")
        case "hbgenmethod":
            let field = try single(directive, expected: "file or time")
            config.generationMethod = try choice(field, GenerationMethod.self, what: "a generation method")
        case "memreserve":
            let field = try single(directive, expected: "a size in KiB such as 6500")
            config.memoryReserveKiB = try integer(field, in: 1...1_048_576, what: "a size in KiB")
        case "record_config_changes": config.recordConfigChanges = try boolean(single(directive, expected: yesNo))
        case "record_pengine_inputs": config.recordPengineInputs = try boolean(single(directive, expected: yesNo))
        case "enable_config_writes": config.enableConfigWrites = try boolean(single(directive, expected: yesNo))
        default:
            return false
        }
        return true
    }
}

// MARK: - Media

extension HaCfBuilder {
    private static let mcastUsage = "mcast INTERFACE GROUP PORT TTL LOOP"
    private static let mcast6Usage = "mcast6 INTERFACE GROUP PORT HOPS LOOP"

    private mutating func applyUDPPort(_ directive: HaCfDirective) throws(Diagnostic) {
        let field = try single(directive, expected: "a UDP port such as 694")
        config.udpPort = try port(field)
        if hasUDPPortMedia {
            log.report(
                warning(
                    .hacfSettingAfterMedia, at: directive.name,
                    "udpport applies only to the bcast and ucast lines after it; those above keep the port in force "
                        + "when they were read",
                    hint: "move udpport above the media lines"
                ))
        }
    }

    private mutating func applyBaud(_ directive: HaCfDirective) throws(Diagnostic) {
        let field = try single(directive, expected: "a baud rate such as 19200")
        // The rates of Heartbeat's StringToBaud.
        let rates = [9600, 19200, 38400, 57600, 115_200, 230_400, 460_800]
        guard let rate = Int(field.text), rates.contains(rate) else {
            throw error(
                .hacfBadNumber, at: field,
                "expected a baud rate, one of \(rates.map(String.init).joined(separator: ", ")); got '\(field.text)'"
            )
        }
        config.baudRate = rate
        if hasSerialMedia {
            log.report(
                warning(
                    .hacfSettingAfterMedia, at: directive.name,
                    "baud applies only to the serial lines after it; those above keep the rate in force when they "
                        + "were read",
                    hint: "move baud above the serial lines"
                ))
        }
    }

    private mutating func applyBroadcast(_ directive: HaCfDirective) throws(Diagnostic) {
        _ = try argument(directive, 0, expected: "an interface such as eth1")
        if directive.key == "udp" {
            // Heartbeat still reads `udp` as `bcast`, with a warning (DIRTYALIASKLUDGE in config.c).
            log.report(
                warning(
                    .hacfObsoleteDirective, at: directive.name, "'udp' is an old name for 'bcast'",
                    hint: "write 'bcast'"
                ))
        }
        for interface in directive.arguments {
            try addMedium(.bcast(interface: interface.text, port: config.udpPort), at: interface)
        }
        hasUDPPortMedia = true
    }

    /// `mcast INTERFACE GROUP PORT TTL LOOP`. The fields are checked in order, as Heartbeat's mcast plugin does, so
    /// a line that lost its group address (seed 001's web page) is reported at the field where the group should be.
    private mutating func applyMulticast(_ directive: HaCfDirective) throws(Diagnostic) {
        let usage = HaCfBuilder.mcastUsage
        let interface = try argument(directive, 0, expected: "an interface; expected '\(usage)'")
        let groupField = try argument(
            directive, 1, expected: "a multicast group such as 239.0.0.1; expected '\(usage)'")
        let group = try multicastGroup(groupField, directive: directive)
        let (port, ttl, loop) = try multicastTail(directive, usage: usage)
        try addMedium(.mcast(interface: interface.text, group: group, port: port, ttl: ttl, loop: loop), at: interface)
    }

    private mutating func applyMulticast6(_ directive: HaCfDirective) throws(Diagnostic) {
        let usage = HaCfBuilder.mcast6Usage
        let interface = try argument(directive, 0, expected: "an interface; expected '\(usage)'")
        let group = try argument(
            directive, 1, expected: "an IPv6 multicast group such as ff02::694; expected '\(usage)'")
        guard IPv6Text.isMulticast(group.text) else {
            throw error(
                .hacfBadMulticastGroup, at: group,
                "expected an IPv6 multicast group address in ff00::/8 such as ff02::694, got '\(group.text)'"
            )
        }
        let (port, hops, loop) = try multicastTail(directive, usage: usage)
        try addMedium(
            .mcast6(interface: interface.text, group: group.text, port: port, hops: hops, loop: loop), at: interface)
    }

    /// PORT TTL LOOP, the last three fields of both multicast lines, and nothing after them.
    private func multicastTail(_ directive: HaCfDirective, usage: String) throws(Diagnostic) -> (UInt16, UInt8, Bool) {
        let port = try port(argument(directive, 2, expected: "a UDP port such as 694; expected '\(usage)'"))
        let ttlField = try argument(directive, 3, expected: "a TTL from 1 to 255; expected '\(usage)'")
        // Heartbeat's sample ha.cf: "(0-255) Must be greater than zero".
        guard ttlField.text.count <= 3, let ttl = UInt8(ttlField.text), ttl >= 1 else {
            throw error(.hacfBadTTL, at: ttlField, "expected a multicast TTL from 1 to 255, got '\(ttlField.text)'")
        }
        let loopField = try argument(directive, 4, expected: "a loop flag, 0 or 1; expected '\(usage)'")
        guard loopField.text == "0" || loopField.text == "1" else {
            throw error(
                .hacfBadLoop, at: loopField,
                "expected a loop flag, 0 (do not receive our own packets, the usual choice) or 1, "
                    + "got '\(loopField.text)'"
            )
        }
        try noExtraArguments(directive, after: 5, usage: usage)
        return (port, ttl, loopField.text == "1")
    }

    private func multicastGroup(_ field: Field, directive: HaCfDirective) throws(Diagnostic) -> IPv4Address {
        guard let group = IPv4Address(field.text) else {
            // A number where the group belongs, on a line one field short, is the shape of a lost group address.
            let lostGroup = directive.arguments.count == 4 && field.text.allSatisfy { $0.isASCII && $0.isNumber }
            throw error(
                .hacfBadMulticastGroup, at: field,
                "expected a multicast group address such as 239.0.0.1, got '\(field.text)'",
                hint: lostGroup
                    ? "the group address seems to be missing: the syntax is '\(HaCfBuilder.mcastUsage)'" : nil
            )
        }
        guard group.isMulticast else {
            throw error(
                .hacfBadMulticastGroup, at: field,
                "'\(field.text)' is not a multicast group address; expected one in 224.0.0.0/4 such as 239.0.0.1"
            )
        }
        return group
    }

    /// `ucast INTERFACE PEER` and `ucast6 INTERFACE PEER`. A ucast to one's own address is fine: Heartbeat ignores
    /// it at run time, which lets both nodes share one ha.cf.
    private mutating func applyUnicast(_ directive: HaCfDirective) throws(Diagnostic) {
        let usage = "\(directive.key) INTERFACE PEER-ADDRESS"
        let interface = try argument(directive, 0, expected: "an interface and the peer's address; expected '\(usage)'")
        let peerField = try argument(directive, 1, expected: "the peer's address; expected '\(usage)'")
        try noExtraArguments(directive, after: 2, usage: usage)
        let medium: HeartbeatMedium
        if directive.key == "ucast" {
            let peer = try ipv4(peerField, what: "the peer's address")
            medium = .ucast(interface: interface.text, peer: peer, port: config.udpPort)
        } else {
            guard IPv6Text.bytes(peerField.text) != nil else {
                throw error(
                    .hacfBadAddress, at: peerField,
                    "expected the peer's address, an IPv6 address such as fd00::2, got '\(peerField.text)'"
                )
            }
            medium = .ucast6(interface: interface.text, peer: peerField.text, port: config.udpPort)
        }
        try addMedium(medium, at: interface)
        hasUDPPortMedia = true
    }

    private mutating func addMedium(_ medium: HeartbeatMedium, at field: Field) throws(Diagnostic) {
        guard config.media.count < HaCfParser.mediaMax else {
            throw tooMany("media", HaCfParser.mediaMax, at: field)
        }
        config.media.append(Located(medium, at: location(field)))
    }
}

// MARK: - Membership

extension HaCfBuilder {
    /// Characters of a host name as `uname -n` prints it (letters, digits, '-', '.', and '_' which some sites use).
    private static func isHostName(_ name: String) -> Bool {
        (1...64).contains(name.count)
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }
    }

    private mutating func addNode(_ field: Field) throws(Diagnostic) {
        let key = field.text.lowercased()
        if let first = nodeNames[key] {
            throw error(
                .hacfDuplicateNode, at: field,
                "node '\(field.text)' is already declared on line \(first.line); expected each node once "
                    + "(Heartbeat compares node names ignoring case)"
            )
        }
        guard config.nodes.count < HaCfParser.nodesMax else { throw tooMany("nodes", HaCfParser.nodesMax, at: field) }
        if !HaCfBuilder.isHostName(field.text) {
            log.report(
                warning(
                    .hacfNodeNameNotHostname, at: field,
                    "'\(field.text)' is not a host name, yet Heartbeat takes every word after 'node' as another node "
                        + "name; node names must match `uname -n`",
                    hint: "if this is a remark, start it with '#'"
                ))
        }
        nodeNames[key] = field
        config.nodes.append(Located(field.text, at: location(field)))
    }

    /// Heartbeat refuses `autojoin other` and `autojoin any` with R1 resource management ("R1 style resource
    /// management conflicts with autojoin set", `r1_style_valid`), and Tandem runs only R1.
    private mutating func applyAutojoin(_ directive: HaCfDirective) throws(Diagnostic) {
        let field = try single(directive, expected: "none, other or any")
        config.autojoin = try choice(field, AutojoinMode.self, what: "an autojoin mode")
        if config.autojoin != .none {
            log.report(
                error(
                    .hacfAutojoinWithR1, at: field,
                    "'autojoin \(field.text)' conflicts with R1 resource management (haresources), which Tandem runs; "
                        + "expected 'autojoin none'",
                    hint: "list every node on 'node' lines and remove autojoin"
                ))
        }
    }

    private mutating func applyAutoFailback(_ directive: HaCfDirective) throws(Diagnostic) {
        let field = try single(directive, expected: "on, off or legacy")
        if field.text.lowercased() == "legacy" {
            config.autoFailback = .legacy
            return
        }
        guard let value = try? boolean(field) else {
            throw error(
                .hacfBadValue, at: field, "expected on, off or legacy (or another boolean), got '\(field.text)'")
        }
        config.autoFailback = value ? .on : .off
    }

    /// `nice_failback` is obsolete. Heartbeat reads `nice_failback on` as `auto_failback off` and `nice_failback off`
    /// as `auto_failback legacy` (`set_nice_failback`), and complains either way.
    private mutating func applyNiceFailback(_ directive: HaCfDirective) throws(Diagnostic) {
        let field = try single(directive, expected: "on or off")
        let nice = try boolean(field)
        config.autoFailback = nice ? .off : .legacy
        log.report(
            warning(
                .hacfObsoleteDirective, at: directive.name,
                "nice_failback is obsolete; 'nice_failback \(field.text)' is read as 'auto_failback "
                    + "\(config.autoFailback.rawValue)'",
                hint: "write 'auto_failback \(config.autoFailback.rawValue)'"
            ))
    }

    private mutating func applyPingGroup(_ directive: HaCfDirective) throws(Diagnostic) {
        let name = try argument(directive, 0, expected: "a group name and the IPv4 addresses of its members")
        _ = try argument(directive, 1, expected: "the IPv4 addresses of the group's members after its name")
        var addresses: [IPv4Address] = []
        for field in directive.arguments.dropFirst() {
            try checkPingNodeLimit(at: field)
            addresses.append(try ipv4(field, what: "a ping group member"))
        }
        config.pingGroups.append(Located(PingGroup(name: name.text, addresses: addresses), at: location(name)))
    }

    private func checkPingNodeLimit(at field: Field) throws(Diagnostic) {
        let count = config.pingNodes.count + config.pingGroups.reduce(0) { $0 + $1.value.addresses.count }
        guard count < HaCfParser.pingNodesMax else {
            throw tooMany("ping addresses", HaCfParser.pingNodesMax, at: field)
        }
    }

    /// `crm` (and `pacemaker`): any value that turns Pacemaker on is refused, since Tandem manages resources the
    /// Heartbeat R1 way, from haresources. Off, in any boolean spelling, is fine.
    private mutating func applyCRM(_ directive: HaCfDirective) throws(Diagnostic) {
        let field = try single(directive, expected: "off")
        let enabling = ["on", "true", "yes", "y", "1", "respawn", "minimal", "manual", "ccm-only", "valgrind"]
        let disabling = ["off", "false", "no", "n", "0"]
        let value = field.text.lowercased()
        if disabling.contains(value) { return }
        guard enabling.contains(value) else {
            throw error(
                .hacfBadValue, at: field,
                "expected off (or on, respawn, minimal, which Tandem refuses), got '\(field.text)'"
            )
        }
        throw error(
            .hacfCRMUnsupported, at: field,
            "'\(directive.key) \(field.text)' hands resources to Pacemaker, but Tandem runs Heartbeat R1 resource "
                + "management from haresources; expected '\(directive.key) off'",
            hint: "write '\(directive.key) off' (or remove the line) and list the resources in haresources"
        )
    }
}

// MARK: - Processes

extension HaCfBuilder {
    /// `respawn USER /path/to/program ARGS`. Heartbeat refuses a program that is not a full path.
    private mutating func applyRespawn(_ directive: HaCfDirective) throws(Diagnostic) {
        let usage = "respawn USER /PATH/TO/PROGRAM [ARGUMENTS]"
        let user = try argument(directive, 0, expected: "a user and a program; expected '\(usage)'")
        let program = try argument(directive, 1, expected: "the program's absolute path after the user")
        guard program.text.hasPrefix("/") else {
            throw error(.hacfBadRespawn, at: program, "expected the program's absolute path, got '\(program.text)'")
        }
        guard config.respawnClients.count < HaCfParser.respawnClientsMax else {
            throw tooMany("respawn lines", HaCfParser.respawnClientsMax, at: user)
        }
        let client = RespawnClient(
            user: user.text, commandLine: joined(directive.arguments.dropFirst()), executable: program.text)
        config.respawnClients.append(Located(client, at: location(user)))
    }

    /// `apiauth CLIENT uid=LIST gid=LIST`: at least one of the two, each once (`set_api_authorization`).
    private mutating func applyAPIAuth(_ directive: HaCfDirective) throws(Diagnostic) {
        let usage = "apiauth CLIENT [uid=USERS] [gid=GROUPS]"
        let client = try argument(directive, 0, expected: "a client name and uid= or gid= lists; expected '\(usage)'")
        _ = try argument(directive, 1, expected: "uid=USERS or gid=GROUPS after the client name")
        var seenKinds: Set<String> = []
        for setting in directive.arguments.dropFirst() {
            let kind = String(setting.text.prefix(4))
            guard kind == "uid=" || kind == "gid=", setting.text.count > 4, !seenKinds.contains(kind) else {
                throw error(
                    .hacfBadAPIAuth, at: setting,
                    "expected one uid=USERS and/or one gid=GROUPS list (comma-separated), got '\(setting.text)'"
                )
            }
            seenKinds.insert(kind)
        }
        if let first = apiClients[client.text] {
            throw error(
                .hacfDuplicateDirective, at: client,
                "apiauth for '\(client.text)' is already given on line \(first.line); expected one per client"
            )
        }
        guard config.apiAuthorizations.count < HaCfParser.apiAuthorizationsMax else {
            throw tooMany("apiauth lines", HaCfParser.apiAuthorizationsMax, at: client)
        }
        apiClients[client.text] = client
        let authorization = APIAuthorization(client: client.text, settings: joined(directive.arguments.dropFirst()))
        config.apiAuthorizations.append(Located(authorization, at: location(client)))
    }

    func location(_ field: Field) -> SourceLocation {
        source.location(line: field.line, column: field.column)
    }

    /// Whole-line values (respawn, stonith, apiauth) are kept with their fields joined by one space.
    func joined(_ fields: some Sequence<Field>) -> String {
        fields.map(\.text).joined(separator: " ")
    }

    func tooMany(_ what: String, _ limit: Int, at field: Field) -> Diagnostic {
        error(.hacfTooMany, at: field, "too many \(what): Tandem accepts at most \(limit)")
    }
}

// MARK: - Whole-file checks

extension HaCfBuilder {
    /// Fills in the derived defaults, runs Heartbeat's whole-file checks and returns the model or every error.
    mutating func finish() throws(ConfigError) -> Parsed<HaConfig> {
        deriveDefaults()
        checkTimes()
        checkMembership()
        return try log.finish(config)
    }

    /// Heartbeat's defaults that depend on other values (`init_config`): warntime, initdead and deadping.
    private mutating func deriveDefaults() {
        if firstSetting["warntime"] == nil { config.warntime = HaConfig.derivedWarntime(deadtime: config.deadtime) }
        if firstSetting["initdead"] == nil { config.initdead = HaConfig.derivedInitdead(deadtime: config.deadtime) }
        if firstSetting["deadping"] == nil { config.deadping = config.deadtime }
    }

    private mutating func checkTimes() {
        let timingSettings: Set = ["keepalive", "deadtime", "warntime", "initdead", "deadping"]
        guard failedSettings.isDisjoint(with: timingSettings) else { return }
        let keepalive = HeartbeatTime.format(config.keepalive)
        let deadtime = HeartbeatTime.format(config.deadtime)
        if config.deadtime <= config.keepalive * 2 {
            report(
                .error, .hacfDeadtimeTooShort, at: firstSetting["deadtime"] ?? firstSetting["keepalive"],
                "deadtime (\(deadtime)) must be more than twice keepalive (\(keepalive)): expected more than "
                    + "\(HeartbeatTime.format(config.keepalive * 2)), or two lost packets declare a healthy peer dead",
                hint: "raise deadtime above \(HeartbeatTime.format(config.keepalive * 2)) or lower keepalive"
            )
        }
        if let field = firstSetting["initdead"] {
            checkInitdead(at: field, deadtime: deadtime)
        }
        if let field = firstSetting["deadping"], config.deadping <= config.keepalive * 2 {
            report(
                .error, .hacfDeadpingTooShort, at: field,
                "deadping (\(HeartbeatTime.format(config.deadping))) must be more than twice keepalive (\(keepalive)): "
                    + "expected more than \(HeartbeatTime.format(config.keepalive * 2))"
            )
        }
        if let field = firstSetting["warntime"], config.warntime >= config.deadtime {
            // Heartbeat does not check this; the warning can then never come before the node is declared dead.
            report(
                .warning, .hacfWarntimeNotBelowDeadtime, at: field,
                "warntime (\(HeartbeatTime.format(config.warntime))) is not below deadtime (\(deadtime)), so no "
                    + "'Late heartbeat' warning can come before the peer is declared dead",
                hint: "set warntime below deadtime, such as \(HeartbeatTime.format(config.deadtime / 2))"
            )
        }
    }

    private mutating func checkInitdead(at field: Field, deadtime: String) {
        let initdead = HeartbeatTime.format(config.initdead)
        if config.initdead < config.deadtime {
            report(
                .error, .hacfInitdeadTooShort, at: field,
                "initdead (\(initdead)) is shorter than deadtime: expected at least \(deadtime), to give the network "
                    + "time to come up at boot",
                hint: "set initdead to at least \(deadtime), or remove it (the default is derived from deadtime)"
            )
        } else if config.initdead < .seconds(10) {
            report(
                .warning, .hacfInitdeadBelow10s, at: field,
                "initdead (\(initdead)) may be too short: Heartbeat recommends at least 10s for slow network startup"
            )
        }
    }

    private mutating func checkMembership() {
        if config.media.isEmpty && !sawMediumLine {
            report(
                .error, .hacfNoMedia, at: nil,
                "no heartbeat medium; expected at least one bcast, mcast, mcast6, ucast, ucast6 or serial line",
                hint: "for example 'ucast eth1 10.0.0.2' (the same line on both nodes is fine)"
            )
        }
        if config.nodes.isEmpty && config.autojoin != .any && !sawNodeLine {
            report(
                .error, .hacfNoNodes, at: nil, "no nodes defined; expected a 'node' line naming each cluster node",
                hint: "add 'node NAME' for each node, NAME as `uname -n` prints it"
            )
        }
        if config.autoFailback == .legacy && !failedSettings.contains("auto_failback") {
            report(
                .warning, .hacfLegacyAutoFailback, at: firstSetting["auto_failback"],
                "auto_failback is 'legacy', Heartbeat's deprecated default",
                hint: "add 'auto_failback on' (resources return to their preferred node) or 'auto_failback off'"
            )
        }
    }

    /// Reports at `field`, or at line 1 column 1 when the directive concerned is absent from the file.
    private mutating func report(
        _ severity: Diagnostic.Severity, _ code: DiagnosticCode, at field: Field?, _ message: String,
        hint: String? = nil
    ) {
        guard let field else {
            log.report(fileDiagnostic(severity, code, message, hint: hint))
            return
        }
        log.report(source.diagnostic(severity, code, line: field.line, column: field.column, message, hint: hint))
    }
}
