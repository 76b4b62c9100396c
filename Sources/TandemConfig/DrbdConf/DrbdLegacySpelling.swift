/// Maps what a drbd.conf writes (section and option name, in any supported DRBD version's spelling) to the option
/// Tandem stores. DRBD 8.3 kept resync settings in `syncer` and wrote negative flags (`no-disk-flushes;`); DRBD 8.4
/// moved them to `disk`/`net` and made them booleans. drbdadm 8.4 performs the same conversion in its dump.
enum DrbdLegacySpelling {
    struct Resolution {
        var key: DrbdOptionKey
        /// For flag spellings such as `no-disk-flushes`, the value they stand for.
        var fixedValue: DrbdOptionValue?
        /// 8.3 options that DRBD itself no longer uses; accepted and dropped.
        var isObsolete = false
    }

    static func resolve(_ name: String, writtenIn section: String) -> Resolution? {
        if let direct = DrbdOptionSection(rawValue: section), DrbdOptionCatalog.spec(direct, name) != nil {
            return Resolution(key: DrbdOptionKey(section: direct, name: name))
        }
        return legacy[section]?[name]
    }

    /// Every spelling accepted in a section, for "did you mean" suggestions.
    static func spellings(in section: String) -> [String] {
        let direct = DrbdOptionSection(rawValue: section).map(DrbdOptionCatalog.names(in:)) ?? []
        return direct + (legacy[section]?.keys.sorted() ?? [])
    }

    private static func to(_ section: DrbdOptionSection, _ name: String, _ value: DrbdOptionValue? = nil) -> Resolution {
        Resolution(key: DrbdOptionKey(section: section, name: name), fixedValue: value)
    }

    private static let obsolete = Resolution(key: DrbdOptionKey(section: .disk, name: ""), isObsolete: true)

    private static let legacy: [String: [String: Resolution]] = [
        "syncer": [
            "rate": to(.disk, "resync-rate"),
            "after": to(.disk, "resync-after"),
            "al-extents": to(.disk, "al-extents"),
            "c-plan-ahead": to(.disk, "c-plan-ahead"),
            "c-delay-target": to(.disk, "c-delay-target"),
            "c-fill-target": to(.disk, "c-fill-target"),
            "c-max-rate": to(.disk, "c-max-rate"),
            "c-min-rate": to(.disk, "c-min-rate"),
            "verify-alg": to(.net, "verify-alg"),
            "csums-alg": to(.net, "csums-alg"),
            "use-rle": to(.net, "use-rle"),
            "cpu-mask": to(.options, "cpu-mask"),
            "on-no-data-accessible": to(.options, "on-no-data-accessible"),
            "delay-probe-volume": obsolete,
            "delay-probe-interval": obsolete,
            "throttle-threshold": obsolete,
            "hold-off-threshold": obsolete,
        ],
        "disk": [
            "no-disk-barrier": to(.disk, "disk-barrier", .boolean(false)),
            "no-disk-flushes": to(.disk, "disk-flushes", .boolean(false)),
            "no-disk-drain": to(.disk, "disk-drain", .boolean(false)),
            "no-md-flushes": to(.disk, "md-flushes", .boolean(false)),
        ],
        "net": [
            "no-tcp-cork": to(.net, "tcp-cork", .boolean(false)),
        ],
        "handlers": [
            "outdate-peer": to(.handlers, "fence-peer"),
        ],
    ]
}
