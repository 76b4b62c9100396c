/// A value given to a drbd.conf option, in the option's own unit (see `DrbdOptionSpec`).
public enum DrbdOptionValue: Sendable, Hashable, CustomStringConvertible {
    case flag
    case boolean(Bool)
    case number(Int64)
    case symbol(String)
    case string(String)
    case hostNames([String])

    public var description: String {
        switch self {
        case .flag: ""
        case .boolean(let value): value ? "yes" : "no"
        case .number(let value): String(value)
        case .symbol(let value): value
        case .string(let value): value
        case .hostNames(let names): names.joined(separator: " ")
        }
    }
}

/// The options set in some scope (common, a resource, a volume, a connection), keyed by section and name.
/// Only options that were written are stored; the typed accessors below fall back to DRBD's defaults.
public struct DrbdOptions: Sendable, Equatable {
    public private(set) var values: [DrbdOptionKey: Located<DrbdOptionValue>] = [:]

    public init() {}

    public subscript(section: DrbdOptionSection, name: String) -> DrbdOptionValue? {
        values[DrbdOptionKey(section: section, name: name)]?.value
    }

    public func located(_ section: DrbdOptionSection, _ name: String) -> Located<DrbdOptionValue>? {
        values[DrbdOptionKey(section: section, name: name)]
    }

    mutating func set(_ key: DrbdOptionKey, _ value: Located<DrbdOptionValue>) {
        values[key] = value
    }

    /// These options with `overrides` laid over them: the inheritance common -> resource -> volume.
    public func overlaid(by overrides: DrbdOptions) -> DrbdOptions {
        var result = self
        for (key, value) in overrides.values { result.values[key] = value }
        return result
    }

    /// The options of one section, sorted by name, for dumping.
    func entries(in section: DrbdOptionSection) -> [(name: String, value: DrbdOptionValue)] {
        values.filter { $0.key.section == section }
            .sorted { $0.key < $1.key }
            .map { ($0.key.name, $0.value.value) }
    }

    var isEmpty: Bool { values.isEmpty }

    // MARK: Typed access to what Tandem implements. Each falls back to DRBD's documented default.

    private func symbol<T: RawRepresentable>(_ section: DrbdOptionSection, _ name: String, default fallback: T) -> T
    where T.RawValue == String {
        if case .symbol(let text)? = self[section, name], let value = T(rawValue: text) { return value }
        return fallback
    }

    private func number(_ section: DrbdOptionSection, _ name: String) -> Int64 {
        if case .number(let value)? = self[section, name] { return value }
        guard let spec = DrbdOptionCatalog.spec(section, name), case .numeric(_, _, let fallback, _) = spec.kind else {
            preconditionFailure("no numeric option \(section.rawValue).\(name) in the catalog")
        }
        return fallback
    }

    private func boolean(_ section: DrbdOptionSection, _ name: String) -> Bool {
        switch self[section, name] {
        case .boolean(let value)?: return value
        case .flag?: return true
        default:
            guard let spec = DrbdOptionCatalog.spec(section, name), case .boolean(let fallback) = spec.kind else {
                preconditionFailure("no boolean option \(section.rawValue).\(name) in the catalog")
            }
            return fallback
        }
    }

    private func string(_ section: DrbdOptionSection, _ name: String) -> String? {
        if case .string(let text)? = self[section, name] { return text }
        return nil
    }

    public var replicationProtocol: ReplicationProtocol { symbol(.net, "protocol", default: .c) }
    public var afterSplitBrainZeroPrimaries: AfterSplitBrainZeroPrimaries {
        symbol(.net, "after-sb-0pri", default: .disconnect)
    }
    public var afterSplitBrainOnePrimary: AfterSplitBrainOnePrimary { symbol(.net, "after-sb-1pri", default: .disconnect) }
    public var afterSplitBrainTwoPrimaries: AfterSplitBrainTwoPrimaries {
        symbol(.net, "after-sb-2pri", default: .disconnect)
    }
    public var resyncConflict: ResyncConflictPolicy { symbol(.net, "rr-conflict", default: .disconnect) }
    public var allowTwoPrimaries: Bool { boolean(.net, "allow-two-primaries") }
    public var cramHMACAlgorithm: String? { string(.net, "cram-hmac-alg") }
    public var sharedSecret: String? { string(.net, "shared-secret") }
    public var dataIntegrityAlgorithm: String? { string(.net, "data-integrity-alg") }
    public var checksumResyncAlgorithm: String? { string(.net, "csums-alg") }
    public var verifyAlgorithm: String? { string(.net, "verify-alg") }
    public var timeoutDeciseconds: Int64 { number(.net, "timeout") }
    public var connectIntervalSeconds: Int64 { number(.net, "connect-int") }
    public var pingIntervalSeconds: Int64 { number(.net, "ping-int") }
    public var pingTimeoutDeciseconds: Int64 { number(.net, "ping-timeout") }
    public var knockOutCount: Int64 { number(.net, "ko-count") }
    public var maxBuffers: Int64 { number(.net, "max-buffers") }
    public var maxEpochSize: Int64 { number(.net, "max-epoch-size") }
    public var sendBufferBytes: Int64 { number(.net, "sndbuf-size") }
    public var receiveBufferBytes: Int64 { number(.net, "rcvbuf-size") }

    public var onIOError: OnIOErrorPolicy { symbol(.disk, "on-io-error", default: .detach) }
    /// DRBD 8.4 keeps fencing in `disk`, DRBD 9 in `net`; either is honoured.
    public var fencing: FencingPolicy {
        if self[.disk, "fencing"] != nil { return symbol(.disk, "fencing", default: .dontCare) }
        return symbol(.net, "fencing", default: .dontCare)
    }
    public var diskFlushes: Bool { boolean(.disk, "disk-flushes") }
    public var metadataFlushes: Bool { boolean(.disk, "md-flushes") }
    public var resyncRateKiBPerSecond: Int64 { number(.disk, "resync-rate") }
    public var activityLogExtents: Int64 { number(.disk, "al-extents") }
    public var planAheadDeciseconds: Int64 { number(.disk, "c-plan-ahead") }
    public var fillTargetSectors: Int64 { number(.disk, "c-fill-target") }
    public var delayTargetDeciseconds: Int64 { number(.disk, "c-delay-target") }
    public var maxRateKiBPerSecond: Int64 { number(.disk, "c-max-rate") }
    public var minRateKiBPerSecond: Int64 { number(.disk, "c-min-rate") }
    public var sizeSectors: Int64 { number(.disk, "size") }

    public var waitForConnectionTimeoutSeconds: Int64 { number(.startup, "wfc-timeout") }
    public var degradedWaitForConnectionTimeoutSeconds: Int64 { number(.startup, "degr-wfc-timeout") }

    /// The command configured for a handler, if any.
    public func handler(_ handler: DrbdHandler) -> String? { string(.handlers, handler.rawValue) }
}
