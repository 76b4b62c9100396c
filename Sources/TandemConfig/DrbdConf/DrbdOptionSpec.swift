/// The option sections of drbd.conf, in DRBD 8.4's arrangement (which Tandem uses internally and in `dump`).
/// DRBD 8.3's `syncer` section and flag spellings are mapped onto these when parsed.
public enum DrbdOptionSection: String, Sendable, Hashable, CaseIterable, Comparable {
    case global
    case net
    case disk
    case startup
    case options
    case handlers

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// The unit a numeric option is counted in, which is also the unit of a bare number in drbd.conf.
public enum DrbdNumericUnit: Sendable, Hashable {
    /// A count or a time; the text says of what (for example "1/10 seconds").
    case plain(String)
    case bytes
    /// A bare number means KiB (resync-rate 250 is 250 KiB/s).
    case kibibytes
    /// A bare number means 512-byte sectors.
    case sectors

    /// How many bytes one unit is, for converting values written with a K/M/G suffix.
    var bytesPerUnit: Int64 {
        switch self {
        case .plain, .bytes: 1
        case .kibibytes: 1024
        case .sectors: 512
        }
    }

    var documentation: String {
        switch self {
        case .plain(let text): text
        case .bytes: "bytes"
        case .kibibytes: "KiB"
        case .sectors: "512-byte sectors"
        }
    }
}

/// What values an option takes.
public enum DrbdOptionKind: Sendable, Hashable {
    /// Present or absent (`disable-ip-verification;`).
    case flag
    /// `yes` or `no`; a bare keyword means `yes` (`allow-two-primaries;`).
    case boolean(default: Bool)
    case numeric(min: Int64, max: Int64, default: Int64, unit: DrbdNumericUnit)
    /// One of a fixed set of words.
    case symbol([String], default: String?)
    /// A number in a range, or one of some words (DRBD 9's `quorum majority`).
    case numericOrSymbol(min: Int64, max: Int64, symbols: [String], default: String)
    /// Free text: an algorithm name, a secret, a handler command, a resource name.
    case string
    /// One or more host names (`become-primary-on`).
    case hostNames
}

/// One option that Tandem understands: where it lives, what it takes, and whether Tandem acts on it.
public struct DrbdOptionSpec: Sendable, Hashable {
    public var section: DrbdOptionSection
    public var name: String
    public var kind: DrbdOptionKind
    /// False for options that are accepted, so that existing files keep working, but change nothing in Tandem.
    /// docs/config.md lists them with the reason.
    public var isImplemented: Bool
    public var summary: String

    init(_ section: DrbdOptionSection, _ name: String, _ kind: DrbdOptionKind, implemented: Bool = true, _ summary: String) {
        self.section = section
        self.name = name
        self.kind = kind
        self.isImplemented = implemented
        self.summary = summary
    }
}

/// Every option of drbd.conf that Tandem accepts. Ranges and defaults are DRBD's (drbdsetup's option tables,
/// 8.4 and 9), so a file that DRBD accepts passes here and a value DRBD refuses is refused here too.
public enum DrbdOptionCatalog {
    public static let all: [DrbdOptionSpec] = global + net + disk + startup + resourceOptions + handlers

    static func spec(_ section: DrbdOptionSection, _ name: String) -> DrbdOptionSpec? {
        index[DrbdOptionKey(section: section, name: name)]
    }

    static func names(in section: DrbdOptionSection) -> [String] {
        all.filter { $0.section == section }.map(\.name)
    }

    private static let index: [DrbdOptionKey: DrbdOptionSpec] = Dictionary(
        uniqueKeysWithValues: all.map { (DrbdOptionKey(section: $0.section, name: $0.name), $0) }
    )

    private static let tenths = DrbdNumericUnit.plain("1/10 seconds")
    private static let seconds = DrbdNumericUnit.plain("seconds")
    private static let count = DrbdNumericUnit.plain("count")

    static let global: [DrbdOptionSpec] = [
        .init(.global, "usage-count", .symbol(["yes", "no", "ask"], default: "ask"), implemented: false,
              "whether drbdadm reports installs to LINBIT; Tandem never phones home"),
        .init(.global, "minor-count", .numeric(min: 1, max: 1_048_575, default: 32, unit: count), implemented: false,
              "how many minors the kernel module preallocates; Tandem has no kernel module"),
        .init(.global, "dialog-refresh", .numeric(min: 0, max: 3600, default: 1, unit: seconds), implemented: false,
              "refresh interval of drbdadm's wait dialog"),
        .init(.global, "disable-ip-verification", .flag, implemented: false,
              "skip the check that a host's address is configured on it"),
        .init(.global, "udev-always-use-vnr", .flag, implemented: false, "udev symlink naming"),
        .init(.global, "cmd-timeout-short", .numeric(min: 0, max: 3600, default: 5, unit: seconds), implemented: false,
              "drbdadm's timeouts for drbdsetup calls"),
        .init(.global, "cmd-timeout-medium", .numeric(min: 0, max: 3600, default: 121, unit: seconds), implemented: false,
              "drbdadm's timeouts for drbdsetup calls"),
        .init(.global, "cmd-timeout-long", .numeric(min: 0, max: 3600, default: 600, unit: seconds), implemented: false,
              "drbdadm's timeouts for drbdsetup calls"),
    ]

    static let net: [DrbdOptionSpec] = [
        .init(.net, "protocol", .symbol(ReplicationProtocol.allCases.map(\.rawValue), default: "C"),
              "when a write completes: A local disk + send buffer, B + peer memory, C + peer disk"),
        .init(.net, "timeout", .numeric(min: 1, max: 600, default: 60, unit: tenths),
              "the peer must answer a request or ping within this time or the connection is dropped"),
        .init(.net, "max-epoch-size", .numeric(min: 1, max: 20000, default: 2048, unit: count),
              "the most writes in one epoch between two barriers"),
        .init(.net, "max-buffers", .numeric(min: 32, max: 131_072, default: 2048, unit: count),
              "the most 4 KiB buffers a receiver uses for in-flight writes and resync"),
        .init(.net, "unplug-watermark", .numeric(min: 1, max: 131_072, default: 128, unit: count), implemented: false,
              "a kernel queue-plugging hint with no user-space equivalent"),
        .init(.net, "connect-int", .numeric(min: 1, max: 120, default: 10, unit: seconds),
              "how often to retry connecting to the peer"),
        .init(.net, "ping-int", .numeric(min: 1, max: 120, default: 10, unit: seconds),
              "idle time after which a ping checks the connection"),
        .init(.net, "sndbuf-size", .numeric(min: 0, max: 10_485_760, default: 0, unit: .bytes),
              "TCP send buffer; 0 lets the kernel tune it"),
        .init(.net, "rcvbuf-size", .numeric(min: 0, max: 10_485_760, default: 0, unit: .bytes),
              "TCP receive buffer; 0 lets the kernel tune it"),
        .init(.net, "ko-count", .numeric(min: 0, max: 200, default: 7, unit: count),
              "a peer that misses this many request timeouts in a row is dropped; 0 disables"),
        .init(.net, "allow-two-primaries", .boolean(default: false),
              "allow both nodes to be Primary (only for cluster file systems)"),
        .init(.net, "cram-hmac-alg", .string, "HMAC algorithm of the peer authentication (sha1, sha256, ...)"),
        .init(.net, "shared-secret", .string, "the secret for cram-hmac-alg, at most 64 characters"),
        .init(.net, "after-sb-0pri", .symbol(AfterSplitBrainZeroPrimaries.allCases.map(\.rawValue), default: "disconnect"),
              "split-brain recovery when neither node is Primary"),
        .init(.net, "after-sb-1pri", .symbol(AfterSplitBrainOnePrimary.allCases.map(\.rawValue), default: "disconnect"),
              "split-brain recovery when one node is Primary"),
        .init(.net, "after-sb-2pri", .symbol(AfterSplitBrainTwoPrimaries.allCases.map(\.rawValue), default: "disconnect"),
              "split-brain recovery when both nodes are Primary"),
        .init(.net, "always-asbp", .boolean(default: false),
              "apply the after-sb policies even when the UUIDs show no common ancestor generation"),
        .init(.net, "rr-conflict", .symbol(ResyncConflictPolicy.allCases.map(\.rawValue), default: "disconnect"),
              "what to do when a Primary would become sync target"),
        .init(.net, "ping-timeout", .numeric(min: 1, max: 300, default: 5, unit: tenths),
              "how long to wait for a ping's answer"),
        .init(.net, "data-integrity-alg", .string, "digest over every data packet, checked by the receiver"),
        .init(.net, "tcp-cork", .boolean(default: true), implemented: false,
              "TCP_CORK hinting; Tandem batches writes itself"),
        .init(.net, "on-congestion", .symbol(["block", "pull-ahead", "disconnect"], default: "block"),
              "what protocol A does when the send buffer fills"),
        .init(.net, "congestion-fill", .numeric(min: 0, max: 20_971_520, default: 0, unit: .sectors),
              "in-flight data that counts as congestion"),
        .init(.net, "congestion-extents", .numeric(min: 67, max: 65534, default: 1237, unit: count),
              "active-log extents that count as congestion"),
        .init(.net, "csums-alg", .string, "digest for checksum-based resync: only blocks whose digests differ move"),
        .init(.net, "csums-after-crash-only", .boolean(default: false),
              "use csums-alg only for the resync after a primary crash"),
        .init(.net, "verify-alg", .string, "digest for online verify"),
        .init(.net, "use-rle", .boolean(default: true), "run-length encode bitmaps exchanged at connect"),
        .init(.net, "socket-check-timeout", .numeric(min: 0, max: 300, default: 0, unit: tenths), implemented: false,
              "extra wait for both sockets in slow networks"),
        .init(.net, "discard-my-data", .boolean(default: false),
              "resolve a split brain by discarding this node's changes (normally given to connect)"),
        .init(.net, "fencing", .symbol(FencingPolicy.allCases.map(\.rawValue), default: "dont-care"),
              "DRBD 9's place for the fencing policy; the same as disk { fencing }"),
        .init(.net, "allow-remote-read", .boolean(default: true), "serve reads from the peer when useful"),
        .init(.net, "transport", .symbol(["tcp"], default: "tcp"), "DRBD 9 transport; Tandem speaks TCP"),
    ]

    static let disk: [DrbdOptionSpec] = [
        .init(.disk, "size", .numeric(min: 0, max: 2_199_023_255_552, default: 0, unit: .sectors),
              "use only this much of the backing device; 0 means all of it"),
        .init(.disk, "on-io-error", .symbol(OnIOErrorPolicy.allCases.map(\.rawValue), default: "detach"),
              "what a backing-device I/O error does"),
        .init(.disk, "fencing", .symbol(FencingPolicy.allCases.map(\.rawValue), default: "dont-care"),
              "how a Primary that loses its peer protects the data"),
        .init(.disk, "disk-barrier", .boolean(default: false), implemented: false,
              "kernel barrier requests; Tandem orders writes with flushes"),
        .init(.disk, "disk-flushes", .boolean(default: true), "flush the backing device at epoch boundaries"),
        .init(.disk, "disk-drain", .boolean(default: true), implemented: false,
              "drain the queue between epochs; implied by Tandem's flush ordering"),
        .init(.disk, "md-flushes", .boolean(default: true), "flush metadata writes"),
        .init(.disk, "max-bio-bvecs", .numeric(min: 0, max: 128, default: 0, unit: count), implemented: false,
              "a kernel bio limit"),
        .init(.disk, "resync-rate", .numeric(min: 1, max: 8_388_608, default: 250, unit: .kibibytes),
              "the fixed resync rate (used when c-plan-ahead is 0)"),
        .init(.disk, "resync-after", .string, "do not resync before the named resource has finished"),
        .init(.disk, "al-extents", .numeric(min: 67, max: 65534, default: 1237, unit: count),
              "number of 4 MiB extents in the activity log"),
        .init(.disk, "al-updates", .boolean(default: true), "write activity-log updates"),
        .init(.disk, "discard-zeroes-if-aligned", .boolean(default: true), "aligned discards read back zeroes"),
        .init(.disk, "disable-write-same", .boolean(default: false), implemented: false, "a kernel WRITE SAME switch"),
        .init(.disk, "c-plan-ahead", .numeric(min: 0, max: 300, default: 20, unit: tenths),
              "dynamic resync controller horizon; 0 uses the fixed resync-rate"),
        .init(.disk, "c-delay-target", .numeric(min: 1, max: 100, default: 10, unit: tenths),
              "dynamic resync controller delay target"),
        .init(.disk, "c-fill-target", .numeric(min: 0, max: 1_048_576, default: 100, unit: .sectors),
              "dynamic resync controller fill target"),
        .init(.disk, "c-max-rate", .numeric(min: 0, max: 4_194_304, default: 102_400, unit: .kibibytes),
              "upper bound of the dynamic resync rate"),
        .init(.disk, "c-min-rate", .numeric(min: 0, max: 4_194_304, default: 250, unit: .kibibytes),
              "resync is throttled to this while application I/O runs"),
        .init(.disk, "disk-timeout", .numeric(min: 0, max: 6000, default: 0, unit: tenths),
              "treat a backing-device request older than this as failed; 0 disables"),
        .init(.disk, "read-balancing",
              .symbol(["prefer-local", "prefer-remote", "round-robin", "least-pending", "when-congested-remote",
                       "32K-striping", "64K-striping", "128K-striping", "256K-striping", "512K-striping",
                       "1M-striping"], default: "prefer-local"), implemented: false,
              "reads are served locally"),
        .init(.disk, "rs-discard-granularity", .numeric(min: 0, max: 1_048_576, default: 0, unit: .bytes),
              implemented: false, "resync zeroes as discards of this granularity"),
        .init(.disk, "use-bmbv", .flag, implemented: false, "obsolete DRBD 8.3 switch"),
    ]

    static let startup: [DrbdOptionSpec] = [
        .init(.startup, "wfc-timeout", .numeric(min: 0, max: 4_294_967, default: 0, unit: seconds),
              "how long `up` waits for the peer at boot; 0 waits forever"),
        .init(.startup, "degr-wfc-timeout", .numeric(min: 0, max: 4_294_967, default: 60, unit: seconds),
              "wfc-timeout when the node was part of a degraded cluster"),
        .init(.startup, "outdated-wfc-timeout", .numeric(min: 0, max: 4_294_967, default: 0, unit: seconds),
              "wfc-timeout when the peer was outdated"),
        .init(.startup, "wait-after-sb", .flag, "keep waiting for the peer after a split brain was detected"),
        .init(.startup, "become-primary-on", .hostNames, "hosts (or 'both') to promote at startup"),
        .init(.startup, "stacked-timeouts", .flag, implemented: false, "stacked resources are not supported"),
    ]

    static let resourceOptions: [DrbdOptionSpec] = [
        .init(.options, "cpu-mask", .string, implemented: false, "kernel thread CPU affinity"),
        .init(.options, "on-no-data-accessible", .symbol(["io-error", "suspend-io"], default: "io-error"),
              "what I/O does when no node has UpToDate data"),
        .init(.options, "auto-promote", .boolean(default: true), implemented: false,
              "DRBD 9's promote-on-open; Tandem promotes only on request"),
        .init(.options, "quorum", .numericOrSymbol(min: 1, max: 32, symbols: ["off", "majority", "all"], default: "off"),
              implemented: false, "DRBD 9 quorum; Tandem's quorum comes from the witness (see the cluster manager)"),
        .init(.options, "on-no-quorum", .symbol(["io-error", "suspend-io"], default: "suspend-io"), implemented: false,
              "what I/O does without DRBD 9 quorum"),
        .init(.options, "quorum-minimum-redundancy",
              .numericOrSymbol(min: 1, max: 32, symbols: ["off", "majority", "all"], default: "off"), implemented: false,
              "DRBD 9 quorum refinement"),
        .init(.options, "peer-ack-window", .numeric(min: 2048, max: 204_800, default: 4096, unit: .sectors),
              implemented: false, "DRBD 9 multi-peer acknowledgement batching"),
        .init(.options, "peer-ack-delay", .numeric(min: 1, max: 10000, default: 100, unit: .plain("milliseconds")),
              implemented: false, "DRBD 9 multi-peer acknowledgement batching"),
        .init(.options, "twopc-timeout", .numeric(min: 50, max: 600, default: 300, unit: tenths), implemented: false,
              "DRBD 9 two-phase commit timeout"),
        .init(.options, "twopc-retry-timeout", .numeric(min: 1, max: 50, default: 1, unit: tenths), implemented: false,
              "DRBD 9 two-phase commit retry"),
        .init(.options, "auto-promote-timeout", .numeric(min: 0, max: 600, default: 20, unit: tenths), implemented: false,
              "DRBD 9 auto-promote wait"),
        .init(.options, "max-io-depth", .numeric(min: 4, max: 4_294_967_295, default: 8000, unit: count),
              "the most application requests in flight per resource"),
        .init(.options, "on-suspended-primary-outdated", .symbol(["disconnect", "force-secondary"], default: "disconnect"),
              implemented: false, "DRBD 9 behaviour of a suspended, outdated Primary"),
    ]

    static let handlers: [DrbdOptionSpec] = DrbdHandler.allCases.map {
        .init(.handlers, $0.rawValue, .string, $0.summary)
    }
}

/// Where an option lives: its section and canonical name.
public struct DrbdOptionKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var section: DrbdOptionSection
    public var name: String

    public init(section: DrbdOptionSection, name: String) {
        self.section = section
        self.name = name
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.section, lhs.name) < (rhs.section, rhs.name)
    }

    public var description: String { "\(section.rawValue) { \(name) }" }
}
