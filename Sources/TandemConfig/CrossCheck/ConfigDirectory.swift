import Foundation

/// The files of one node's configuration folder (`--config-dir`), each parsed if present.
public struct ConfigDirectory: Sendable {
    public var directory: String
    public var drbd: Parsed<DrbdConfig>?
    public var haConfig: Parsed<HaConfig>?
    public var authkeys: Parsed<Authkeys>?
    public var haresources: Parsed<Haresources>?

    public static let drbdFileName = "drbd.conf"
    public static let haConfigFileName = "ha.cf"
    public static let authkeysFileName = "authkeys"
    public static let haresourcesFileName = "haresources"
}

/// What `tandem check` found.
public struct CheckReport: Sendable {
    public var diagnostics: [Diagnostic]
    /// The files that were present and read, by name.
    public var filesChecked: [String]

    public var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }
}

extension DiagnosticCode {
    public static let checkNothingToCheck: DiagnosticCode = "check.nothing-to-check"
    public static let checkNodeMismatch: DiagnosticCode = "check.node-mismatch"
    public static let checkUnknownResource: DiagnosticCode = "check.unknown-resource"
    public static let checkUnknownDevice: DiagnosticCode = "check.unknown-device"
    public static let checkResourceOrder: DiagnosticCode = "check.resource-order"
    public static let checkAddressCollision: DiagnosticCode = "check.address-collision"
}

extension ConfigDirectory {
    /// Reads and checks every configuration file in `directory`, then cross-checks them. Nothing is changed.
    public static func check(directory: String) -> CheckReport {
        var log = DiagnosticLog()
        var files: [String] = []
        var config = ConfigDirectory(directory: directory)
        func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }
        func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path(name)) }

        if exists(drbdFileName) {
            files.append(drbdFileName)
            config.drbd = collect(&log) { () throws(ConfigError) in try DrbdConfParser.load(path: path(drbdFileName)) }
        }
        if exists(haConfigFileName) {
            files.append(haConfigFileName)
            config.haConfig = collect(&log) { () throws(ConfigError) in try HaCfParser.load(path: path(haConfigFileName)) }
        }
        if exists(authkeysFileName) {
            files.append(authkeysFileName)
            config.authkeys = collect(&log) { () throws(ConfigError) in try AuthkeysParser.load(path: path(authkeysFileName)) }
        }
        if exists(haresourcesFileName) {
            files.append(haresourcesFileName)
            config.haresources = collect(&log) { () throws(ConfigError) in
                try HaresourcesParser.load(path: path(haresourcesFileName))
            }
        }
        if files.isEmpty {
            log.report(Diagnostic(
                .error, .checkNothingToCheck, at: SourceLocation(file: directory, line: 1, column: 1),
                "no drbd.conf, ha.cf, authkeys or haresources in this folder",
                hint: "point --config-dir at the folder that holds them"
            ))
        }
        var crossCheck = CrossCheck(config: config)
        crossCheck.run()
        log.append(contentsOf: crossCheck.log.diagnostics)
        return CheckReport(diagnostics: log.sortedForReport, filesChecked: files)
    }

    private static func collect<Model>(
        _ log: inout DiagnosticLog, _ load: () throws(ConfigError) -> Parsed<Model>
    ) -> Parsed<Model>? {
        do {
            let parsed = try load()
            log.append(contentsOf: parsed.diagnostics)
            return parsed
        } catch {
            log.append(contentsOf: error.diagnostics)
            return nil
        }
    }
}
