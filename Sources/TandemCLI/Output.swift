import Foundation

/// Diagnostics and errors go to standard error so that standard output stays parseable (`dump`, `--json`).
func printToStandardError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}
