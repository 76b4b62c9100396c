import Foundation

/// The text of one configuration file, split into lines, so that parsers can point at line and column and
/// diagnostics can quote the line.
public struct SourceFile: Sendable {
    /// No configuration file we read has a legitimate reason to be larger; a bigger one is refused rather than
    /// read into memory.
    public static let sizeBytesMax = 4 * 1024 * 1024

    public var path: String
    public var text: String
    public private(set) var lines: [Substring]

    public init(path: String, text: String) {
        self.path = path
        self.text = text
        // Keep empty lines, so that line N of the array is line N of the file. Swift reads "\r\n" (a file edited
        // on Windows) as one Character, so both line ends must be named.
        self.lines = text.split(omittingEmptySubsequences: false) { $0 == "\n" || $0 == "\r\n" }
    }

    /// Reads a file. A missing, unreadable, oversized or non-UTF-8 file is reported as a diagnostic at line 1.
    public static func load(path: String) throws(ConfigError) -> SourceFile {
        let location = SourceLocation(file: path, line: 1, column: 1)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigError([Diagnostic(.error, .fileMissing, at: location, "no such file")])
        }
        guard !isDirectory.boolValue else {
            throw ConfigError([Diagnostic(.error, .fileUnreadable, at: location, "is a directory, expected a file")])
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError([Diagnostic(.error, .fileUnreadable, at: location, "cannot read the file")])
        }
        guard data.count <= sizeBytesMax else {
            throw ConfigError([
                Diagnostic(
                    .error, .fileTooLarge, at: location,
                    "the file is \(data.count) bytes; configuration files are limited to \(sizeBytesMax) bytes"
                )
            ])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError([Diagnostic(.error, .fileNotText, at: location, "the file is not UTF-8 text")])
        }
        return SourceFile(path: path, text: text)
    }

    public func location(line: Int, column: Int) -> SourceLocation {
        SourceLocation(file: path, line: line, column: column)
    }

    /// The text of a line (1-based) for excerpts, without a trailing carriage return.
    public func lineText(_ line: Int) -> String? {
        guard line >= 1, line <= lines.count else { return nil }
        var text = String(lines[line - 1])
        if text.hasSuffix("\r") { text.removeLast() }
        return text
    }

    /// Builds a diagnostic that quotes the line it points at.
    public func diagnostic(
        _ severity: Diagnostic.Severity,
        _ code: DiagnosticCode,
        line: Int,
        column: Int,
        _ message: String,
        hint: String? = nil
    ) -> Diagnostic {
        Diagnostic(
            severity, code, at: location(line: line, column: column), message,
            hint: hint, sourceLine: lineText(line)
        )
    }
}

extension DiagnosticCode {
    public static let fileMissing: DiagnosticCode = "file.missing"
    public static let fileUnreadable: DiagnosticCode = "file.unreadable"
    public static let fileTooLarge: DiagnosticCode = "file.too-large"
    public static let fileNotText: DiagnosticCode = "file.not-text"
}
