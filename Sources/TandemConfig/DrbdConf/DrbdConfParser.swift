/// Reads drbd.conf (DRBD 8.3, 8.4 and 9 syntax as used in practice) into a `DrbdConfig`.
///
/// Parsing has two passes. The syntax pass (`DrbdSyntaxParser`) builds a tree of statements and sections and stops
/// at the first syntax error, as drbdadm does. This pass gives the tree its meaning: it maps DRBD 8.3 spellings to
/// 8.4 ones, checks every option and value, folds `common` into resources and resource-level settings into hosts,
/// and checks what must be unique. It reports every problem it finds, not only the first.
public enum DrbdConfParser {
    public static func load(path: String) throws(ConfigError) -> Parsed<DrbdConfig> {
        try build(DrbdSyntaxParser.parse(path: path))
    }

    /// Parses text as if it were the file at `source.path` (includes resolve relative to its folder).
    public static func parse(_ source: SourceFile) throws(ConfigError) -> Parsed<DrbdConfig> {
        try build(DrbdSyntaxParser.parse(source: source))
    }

    private static func build(_ document: DrbdDocument) throws(ConfigError) -> Parsed<DrbdConfig> {
        var builder = DrbdModelBuilder(document: document)
        let config = builder.build()
        return try builder.log.finish(config)
    }
}

extension DiagnosticCode {
    public static let drbdUnterminatedString: DiagnosticCode = "drbd.unterminated-string"
    public static let drbdTokenTooLong: DiagnosticCode = "drbd.token-too-long"
    public static let drbdUnexpectedToken: DiagnosticCode = "drbd.unexpected-token"
    public static let drbdExpectedSemicolon: DiagnosticCode = "drbd.expected-semicolon"
    public static let drbdUnclosedSection: DiagnosticCode = "drbd.unclosed-section"
    public static let drbdUnexpectedSection: DiagnosticCode = "drbd.unexpected-section"
    public static let drbdUnknownSection: DiagnosticCode = "drbd.unknown-section"
    public static let drbdBadInclude: DiagnosticCode = "drbd.bad-include"
    public static let drbdIncludeTooDeep: DiagnosticCode = "drbd.include-too-deep"
    public static let drbdUnknownOption: DiagnosticCode = "drbd.unknown-option"
    public static let drbdBadValue: DiagnosticCode = "drbd.bad-value"
    public static let drbdValueOutOfRange: DiagnosticCode = "drbd.value-out-of-range"
    public static let drbdDuplicateOption: DiagnosticCode = "drbd.duplicate-option"
    public static let drbdMissingName: DiagnosticCode = "drbd.missing-name"
    public static let drbdMissingSetting: DiagnosticCode = "drbd.missing-setting"
    public static let drbdBadAddress: DiagnosticCode = "drbd.bad-address"
    public static let drbdBadDevice: DiagnosticCode = "drbd.bad-device"
    public static let drbdBadMetaDisk: DiagnosticCode = "drbd.bad-meta-disk"
    public static let drbdDuplicateResource: DiagnosticCode = "drbd.duplicate-resource"
    public static let drbdDuplicateHost: DiagnosticCode = "drbd.duplicate-host"
    public static let drbdDuplicateVolume: DiagnosticCode = "drbd.duplicate-volume"
    public static let drbdAddressInUse: DiagnosticCode = "drbd.address-in-use"
    public static let drbdMinorInUse: DiagnosticCode = "drbd.minor-in-use"
    public static let drbdSecretTooLong: DiagnosticCode = "drbd.secret-too-long"
    public static let drbdHostCount: DiagnosticCode = "drbd.host-count"
    public static let drbdUnknownHost: DiagnosticCode = "drbd.unknown-host"
}
