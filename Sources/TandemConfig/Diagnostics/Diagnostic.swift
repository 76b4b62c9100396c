/// Where something was found in a configuration file. Lines and columns count from 1; columns count characters
/// (extended grapheme clusters), which is what an operator sees in an editor.
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One problem (or remark) about a configuration file.
///
/// Every parser and checker in Tandem reports through this one type, so that `tandem check`, the daemons and the
/// tests all see the same code, position and words. The `code` is stable and is what tests and scripts match on;
/// the message is for people.
public struct Diagnostic: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Severity: String, Sendable, Hashable, Comparable {
        case note
        case warning
        case error

        private var rank: Int {
            switch self {
            case .note: 0
            case .warning: 1
            case .error: 2
            }
        }

        public static func < (lhs: Severity, rhs: Severity) -> Bool { lhs.rank < rhs.rank }
    }

    public var severity: Severity
    public var code: DiagnosticCode
    public var location: SourceLocation
    public var message: String
    /// A suggested fix, shown on its own line ("did you mean ...", "chmod 600 ...").
    public var hint: String?
    /// The text of the offending line, for the caret excerpt. Nil when the problem concerns the whole file.
    public var sourceLine: String?

    public init(
        _ severity: Severity,
        _ code: DiagnosticCode,
        at location: SourceLocation,
        _ message: String,
        hint: String? = nil,
        sourceLine: String? = nil
    ) {
        self.severity = severity
        self.code = code
        self.location = location
        self.message = message
        self.hint = hint
        self.sourceLine = sourceLine
    }

    /// `file:line:column: error[code]: message`, then the line with a caret under the column, then the hint.
    public var description: String {
        var text = "\(location): \(severity.rawValue)[\(code.rawValue)]: \(message)"
        if let sourceLine {
            let shown = sourceLine.replacingTabs()
            let caretColumn = sourceLine.prefix(max(0, location.column - 1)).replacingTabs().count
            text += "\n    \(shown)\n    \(String(repeating: " ", count: caretColumn))^"
        }
        if let hint {
            text += "\n    hint: \(hint)"
        }
        return text
    }
}

extension StringProtocol {
    /// Tabs become four spaces in excerpts so that the caret lines up whatever the terminal's tab width.
    fileprivate func replacingTabs() -> String {
        String(self).replacing("\t", with: "    ")
    }
}

/// A stable, evolvable identifier of a kind of problem, such as `drbd.unknown-option`. New codes can be added
/// without breaking anyone who matches on the existing ones.
public struct DiagnosticCode: RawRepresentable, Sendable, Hashable, ExpressibleByStringLiteral, CustomStringConvertible {
    public var rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { rawValue }
}

/// Thrown when a configuration cannot be used. It carries every diagnostic found (errors first, then warnings),
/// not only the first, so that an operator can fix a file in one pass.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [Diagnostic]

    public init(_ diagnostics: [Diagnostic]) {
        precondition(
            diagnostics.contains { $0.severity == .error },
            "a ConfigError needs at least one error, got \(diagnostics)"
        )
        self.diagnostics = diagnostics
    }

    public var errors: [Diagnostic] { diagnostics.filter { $0.severity == .error } }

    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// The result of a successful parse: the model, plus the warnings and notes that did not stop it.
public struct Parsed<Model: Sendable>: Sendable {
    public var model: Model
    public var diagnostics: [Diagnostic]

    public init(model: Model, diagnostics: [Diagnostic]) {
        self.model = model
        self.diagnostics = diagnostics
    }
}

/// Collects diagnostics while a parser or checker runs, and turns them into a result at the end.
public struct DiagnosticLog: Sendable {
    public private(set) var diagnostics: [Diagnostic] = []
    /// A hostile or broken file must not make us produce an unbounded report.
    public static let diagnosticsMax = 200

    public init() {}

    public var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }

    public mutating func report(_ diagnostic: Diagnostic) {
        guard diagnostics.count < Self.diagnosticsMax else { return }
        diagnostics.append(diagnostic)
    }

    public mutating func append(contentsOf other: [Diagnostic]) {
        for diagnostic in other { report(diagnostic) }
    }

    /// Returns the model with the warnings, or throws every diagnostic if any of them is an error.
    public func finish<Model: Sendable>(_ model: Model) throws(ConfigError) -> Parsed<Model> {
        if hasErrors {
            throw ConfigError(sortedForReport)
        }
        return Parsed(model: model, diagnostics: diagnostics)
    }

    /// Errors first, each group in file order.
    public var sortedForReport: [Diagnostic] {
        diagnostics.enumerated().sorted { lhs, rhs in
            if lhs.element.severity != rhs.element.severity {
                return lhs.element.severity > rhs.element.severity
            }
            return lhs.offset < rhs.offset
        }.map(\.element)
    }
}
