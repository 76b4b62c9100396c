import ArgumentParser
import TandemConfig

/// `tandem check`: validates a configuration folder and cross-checks its files.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate drbd.conf, ha.cf, authkeys and haresources and check they agree with each other.",
        discussion: "Every problem is printed as file:line:column with the offending line. Exits 1 if any error was found."
    )

    @Flag(name: .customLong("warnings-as-errors"), help: "Exit 1 on warnings too.")
    var warningsAreErrors = false

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let report = ConfigDirectory.check(directory: global.configDirectory)
        for diagnostic in report.diagnostics { printToStandardError(diagnostic.description) }
        let errors = report.diagnostics.filter { $0.severity == .error }.count
        let warnings = report.diagnostics.filter { $0.severity == .warning }.count
        let checked = report.filesChecked.joined(separator: ", ")
        print("checked \(checked.isEmpty ? "nothing" : checked): \(errors) error(s), \(warnings) warning(s)")
        if errors > 0 || (warningsAreErrors && warnings > 0) {
            throw TandemExitCode.configurationProblems
        }
    }
}
