/// One whitespace-separated word of a line-oriented file (ha.cf, authkeys, haresources), with where it starts.
public struct Field: Sendable, Hashable, CustomStringConvertible {
    public var text: String
    public var line: Int
    public var column: Int

    public init(text: String, line: Int, column: Int) {
        self.text = text
        self.line = line
        self.column = column
    }

    public var description: String { text }
}

/// A line after comments are removed and continuations joined: its fields, and the physical line it starts on.
public struct LogicalLine: Sendable, Hashable {
    public var fields: [Field]
    public var line: Int

    public init(fields: [Field], line: Int) {
        self.fields = fields
        self.line = line
    }
}

/// Splits line-oriented Heartbeat files into fields, the way Heartbeat reads them.
public enum LineFields {
    public enum CommentStyle: Sendable {
        /// A `#` anywhere starts a comment that runs to the end of the line (ha.cf, haresources).
        case anywhere
        /// Only a line whose first non-blank character is `#` is a comment (authkeys, where a key may contain `#`).
        case wholeLine
    }

    /// The logical lines of `source`, skipping blank and comment lines.
    ///
    /// With `joiningContinuations`, a line whose last non-blank character is `\` continues on the next line
    /// (haresources). The comment is removed first, so a `\` inside a comment does not continue the line, and a
    /// continuation followed by a comment line or a blank line ends there: that is how Heartbeat's ResourceManager
    /// reads seed 001's haresources, whose last entries are commented out.
    public static func logicalLines(
        of source: SourceFile,
        comments: CommentStyle,
        joiningContinuations: Bool = false
    ) -> [LogicalLine] {
        var result: [LogicalLine] = []
        var pending: LogicalLine?
        for (index, rawLine) in source.lines.enumerated() {
            let lineNumber = index + 1
            var fields = splitFields(rawLine, line: lineNumber, comments: comments)
            var continues = false
            if joiningContinuations, let last = fields.last, last.text.hasSuffix("\\") {
                continues = true
                var trimmed = last
                trimmed.text.removeLast()
                fields.removeLast()
                if !trimmed.text.isEmpty { fields.append(trimmed) }
            }
            if pending == nil, !fields.isEmpty {
                pending = LogicalLine(fields: [], line: lineNumber)
            }
            pending?.fields += fields
            if !continues {
                if let done = pending { result.append(done) }
                pending = nil
            }
        }
        if let done = pending, !done.fields.isEmpty { result.append(done) }
        return result
    }

    static func splitFields(_ rawLine: Substring, line: Int, comments: CommentStyle) -> [Field] {
        var fields: [Field] = []
        var current = ""
        var currentColumn = 0
        var column = 0
        var isFirstNonBlank = true
        for character in rawLine {
            column += 1
            if character == "#" {
                if comments == .anywhere || (comments == .wholeLine && isFirstNonBlank) { break }
            }
            if character.isWhitespace {
                if !current.isEmpty {
                    fields.append(Field(text: current, line: line, column: currentColumn))
                    current = ""
                }
                continue
            }
            isFirstNonBlank = false
            if current.isEmpty { currentColumn = column }
            current.append(character)
        }
        if !current.isEmpty {
            fields.append(Field(text: current, line: line, column: currentColumn))
        }
        return fields
    }
}
