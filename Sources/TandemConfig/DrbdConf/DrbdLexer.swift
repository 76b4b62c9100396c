/// A token of drbd.conf.
struct DrbdToken: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        /// An unquoted word: keywords, names, numbers with suffixes, paths, `1.2.3.4:7789`.
        case word
        /// A double-quoted string, with its escapes already resolved.
        case quoted
        case openBrace
        case closeBrace
        case semicolon
        case openBracket
        case closeBracket
        case endOfFile
    }

    var kind: Kind
    var text: String
    var file: String
    var line: Int
    var column: Int

    var location: SourceLocation { SourceLocation(file: file, line: line, column: column) }

    /// How the token is named in "expected ..., got ..." messages.
    var description: String {
        switch kind {
        case .word: "'\(text)'"
        case .quoted: "\"\(text)\""
        case .openBrace: "'{'"
        case .closeBrace: "'}'"
        case .semicolon: "';'"
        case .openBracket: "'['"
        case .closeBracket: "']'"
        case .endOfFile: "the end of the file"
        }
    }

    /// True for tokens that can be an option's value.
    var isValue: Bool { kind == .word || kind == .quoted }
}

/// Splits drbd.conf text into tokens, as drbdadm's scanner does: `#` comments to the end of the line, double-quoted
/// strings with backslash escapes (no newline inside), and the punctuation `{ } ; [ ]`. Everything else that is not
/// whitespace is part of a word, so `192.168.1.1:7789`, `/dev/drbd0` and `100M` are single words.
struct DrbdLexer {
    /// A word or string longer than this is not a plausible drbd.conf value (paths are limited to 4096 bytes by
    /// Linux); refusing it keeps a hostile file from making us build huge strings.
    static let tokenLengthMax = 4096

    private let source: SourceFile
    private var characters: [Character]
    private var index = 0
    private var line = 1
    private var column = 1

    init(source: SourceFile) {
        self.source = source
        self.characters = Array(source.text)
    }

    /// All tokens, ending with `.endOfFile`, or the first lexical error.
    mutating func tokenize() throws(ConfigError) -> [DrbdToken] {
        var tokens: [DrbdToken] = []
        while true {
            let token = try next()
            tokens.append(token)
            if token.kind == .endOfFile { return tokens }
        }
    }

    private mutating func next() throws(ConfigError) -> DrbdToken {
        skipBlanksAndComments()
        let startLine = line
        let startColumn = column
        guard index < characters.count else {
            return token(.endOfFile, "", line: startLine, column: startColumn)
        }
        let character = characters[index]
        let punctuation: [Character: DrbdToken.Kind] = [
            "{": .openBrace, "}": .closeBrace, ";": .semicolon, "[": .openBracket, "]": .closeBracket,
        ]
        if let kind = punctuation[character] {
            advance()
            return token(kind, String(character), line: startLine, column: startColumn)
        }
        if character == "\"" {
            return try quotedString(line: startLine, column: startColumn)
        }
        var text = ""
        while index < characters.count, !Self.endsWord(characters[index]) {
            text.append(characters[index])
            advance()
        }
        try checkLength(text, line: startLine, column: startColumn)
        return token(.word, text, line: startLine, column: startColumn)
    }

    private static func endsWord(_ character: Character) -> Bool {
        character.isWhitespace || "{};[]\"#".contains(character)
    }

    private mutating func quotedString(line startLine: Int, column startColumn: Int) throws(ConfigError) -> DrbdToken {
        advance()  // the opening quote
        var text = ""
        while index < characters.count {
            let character = characters[index]
            if character == "\"" {
                advance()
                try checkLength(text, line: startLine, column: startColumn)
                return token(.quoted, text, line: startLine, column: startColumn)
            }
            if character.isNewline { break }
            if character == "\\", index + 1 < characters.count, !characters[index + 1].isNewline {
                advance()
                text.append(Self.unescaped(characters[index]))
                advance()
                continue
            }
            text.append(character)
            advance()
        }
        throw ConfigError([
            source.diagnostic(
                .error, .drbdUnterminatedString, line: startLine, column: startColumn,
                "this string has no closing '\"' on its line",
                hint: "strings cannot span lines; close the quote or escape an embedded quote as \\\""
            )
        ])
    }

    /// drbdadm keeps the character after a backslash, except for the usual C escapes.
    private static func unescaped(_ character: Character) -> Character {
        switch character {
        case "n": "\n"
        case "t": "\t"
        default: character
        }
    }

    private func checkLength(_ text: String, line: Int, column: Int) throws(ConfigError) {
        guard text.count > Self.tokenLengthMax else { return }
        throw ConfigError([
            source.diagnostic(
                .error, .drbdTokenTooLong, line: line, column: column,
                "this word is \(text.count) characters long; the limit is \(Self.tokenLengthMax)"
            )
        ])
    }

    private mutating func skipBlanksAndComments() {
        while index < characters.count {
            let character = characters[index]
            if character == "#" {
                while index < characters.count, !characters[index].isNewline { advance() }
            } else if character.isWhitespace {
                advance()
            } else {
                return
            }
        }
    }

    private mutating func advance() {
        if characters[index].isNewline {
            line += 1
            column = 1
        } else {
            column += 1
        }
        index += 1
    }

    private func token(_ kind: DrbdToken.Kind, _ text: String, line: Int, column: Int) -> DrbdToken {
        DrbdToken(kind: kind, text: text, file: source.path, line: line, column: column)
    }
}
