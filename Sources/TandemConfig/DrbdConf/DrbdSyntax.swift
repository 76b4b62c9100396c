import Foundation

/// One statement (`keyword arguments... ;`) or section (`keyword arguments... { body }`) of drbd.conf.
struct DrbdNode: Sendable {
    var keyword: DrbdToken
    var arguments: [DrbdToken]
    /// The section's contents, or nil for a statement.
    var body: [DrbdNode]?

    var name: String { keyword.text }
    var isSection: Bool { body != nil }
}

/// The syntax tree of a drbd.conf and every file it includes, with the files' text for diagnostics.
struct DrbdDocument: Sendable {
    var nodes: [DrbdNode]
    var sources: [String: SourceFile]

    /// A diagnostic at a token, quoting its line.
    func diagnostic(
        _ severity: Diagnostic.Severity,
        _ code: DiagnosticCode,
        at token: DrbdToken,
        _ message: String,
        hint: String? = nil
    ) -> Diagnostic {
        diagnostic(severity, code, at: token.location, message, hint: hint)
    }

    /// A diagnostic at a location in one of the document's files, quoting its line.
    func diagnostic(
        _ severity: Diagnostic.Severity,
        _ code: DiagnosticCode,
        at location: SourceLocation,
        _ message: String,
        hint: String? = nil
    ) -> Diagnostic {
        let sourceLine = sources[location.file]?.lineText(location.line)
        return Diagnostic(severity, code, at: location, message, hint: hint, sourceLine: sourceLine)
    }
}

/// The places a section can appear in. Sections are checked while parsing, not afterwards, because a section in the
/// wrong place almost always means a lost `}` just before it, and that is the line the operator needs to see (seed
/// 001's web page lost every closing brace).
enum DrbdContext: Sendable, Hashable {
    case topLevel
    case global
    case common
    case resource
    case host
    case volume
    case connection
    case path
    case connectionMesh
    case options(String)

    var displayName: String {
        switch self {
        case .topLevel: "the top level"
        case .global: "global"
        case .common: "common"
        case .resource: "resource"
        case .host: "on"
        case .volume: "volume"
        case .connection: "connection"
        case .path: "path"
        case .connectionMesh: "connection-mesh"
        case .options(let name): name
        }
    }

    /// The option sections: their contents are statements only.
    static let optionSectionNames = ["disk", "net", "syncer", "startup", "options", "handlers"]

    /// Which sections may open inside this context, and the context each one starts.
    func childContext(for keyword: String) -> DrbdContext? {
        let optionSection: DrbdContext? =
            Self.optionSectionNames.contains(keyword) ? .options(keyword) : nil
        switch self {
        case .topLevel:
            return ["global": .global, "common": .common, "resource": .resource][keyword]
        case .common:
            return optionSection
        case .resource:
            let structural: [String: DrbdContext] = [
                "on": .host, "floating": .host, "volume": .volume, "connection": .connection,
                "connection-mesh": .connectionMesh,
            ]
            return structural[keyword] ?? optionSection
        case .host:
            return ["volume": .volume][keyword]
        case .volume:
            return keyword == "disk" ? .options("disk") : nil
        case .connection:
            let structural: [String: DrbdContext] = ["path": .path, "volume": .volume]
            return structural[keyword] ?? (["net", "disk"].contains(keyword) ? .options(keyword) : nil)
        case .connectionMesh:
            return keyword == "net" ? .options("net") : nil
        case .global, .path, .options:
            return nil
        }
    }

    var allowedSectionNames: [String] {
        let candidates = ["global", "common", "resource", "on", "floating", "volume", "connection",
                          "connection-mesh", "path"] + Self.optionSectionNames
        return candidates.filter { childContext(for: $0) != nil }
    }
}

/// Builds the syntax tree of a drbd.conf, following `include` statements.
struct DrbdSyntaxParser {
    /// Includes nest at most this deep, which also stops a file that includes itself.
    static let includeDepthMax = 8
    /// At most this many files in one configuration.
    static let filesMax = 512
    /// Sections nest at most this deep (resource > connection > volume > disk is 4).
    static let nestingDepthMax = 8

    private(set) var sources: [String: SourceFile] = [:]

    /// Parses the file at `path` and everything it includes.
    static func parse(path: String) throws(ConfigError) -> DrbdDocument {
        let source = try SourceFile.load(path: path)
        return try parse(source: source)
    }

    /// Parses in-memory text; includes are resolved relative to the directory of `source.path`.
    static func parse(source: SourceFile) throws(ConfigError) -> DrbdDocument {
        var parser = DrbdSyntaxParser()
        let nodes = try parser.parseFile(source, includeDepth: 0)
        return DrbdDocument(nodes: nodes, sources: parser.sources)
    }

    private mutating func parseFile(_ source: SourceFile, includeDepth: Int) throws(ConfigError) -> [DrbdNode] {
        sources[source.path] = source
        var lexer = DrbdLexer(source: source)
        var stream = TokenStream(tokens: try lexer.tokenize(), source: source)
        var nodes: [DrbdNode] = []
        while stream.peek.kind != .endOfFile {
            let node = try stream.parseNode(in: .topLevel, depth: 0)
            if node.name == "include", !node.isSection {
                nodes += try include(node, from: source, includeDepth: includeDepth)
            } else if node.name == "skip" {
                continue  // drbdadm's way of commenting out a whole block
            } else {
                nodes.append(node)
            }
        }
        return nodes
    }

    /// `include "glob";` pulls in every matching file, in sorted order, relative to the including file's folder.
    /// A pattern with wildcards may match nothing (drbd.d/*.res on a fresh install); a plain path must exist.
    private mutating func include(
        _ node: DrbdNode,
        from source: SourceFile,
        includeDepth: Int
    ) throws(ConfigError) -> [DrbdNode] {
        let document = DrbdDocument(nodes: [], sources: sources)
        guard node.arguments.count == 1, let pattern = node.arguments.first, pattern.isValue else {
            throw ConfigError([
                document.diagnostic(
                    .error, .drbdBadInclude, at: node.arguments.first ?? node.keyword,
                    "expected one file name or pattern after 'include', such as include \"drbd.d/*.res\";"
                )
            ])
        }
        guard includeDepth < Self.includeDepthMax else {
            throw ConfigError([
                document.diagnostic(
                    .error, .drbdIncludeTooDeep, at: pattern,
                    "includes nest more than \(Self.includeDepthMax) deep; does a file include itself?"
                )
            ])
        }
        let directory = (source.path as NSString).deletingLastPathComponent
        let absolute = pattern.text.hasPrefix("/") ? pattern.text : (directory as NSString).appendingPathComponent(pattern.text)
        let paths = Self.expand(absolute)
        let hasWildcard = pattern.text.contains { "*?[".contains($0) }
        if paths.isEmpty, !hasWildcard {
            throw ConfigError([
                document.diagnostic(.error, .drbdBadInclude, at: pattern, "cannot open included file '\(absolute)'")
            ])
        }
        var nodes: [DrbdNode] = []
        for path in paths {
            guard sources.count < Self.filesMax else {
                throw ConfigError([
                    document.diagnostic(
                        .error, .drbdIncludeTooDeep, at: pattern,
                        "the configuration spans more than \(Self.filesMax) files"
                    )
                ])
            }
            let included = try SourceFile.load(path: path)
            nodes += try parseFile(included, includeDepth: includeDepth + 1)
        }
        return nodes
    }

    /// Files matching a glob pattern, sorted; directories are skipped.
    static func expand(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard glob(pattern, 0, nil, &result) == 0 else { return [] }
        var paths: [String] = []
        for index in 0..<Int(result.gl_pathc) {
            guard let cString = result.gl_pathv[index] else { continue }
            let path = String(cString: cString)
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
                paths.append(path)
            }
        }
        return paths.sorted()
    }
}

/// A cursor over one file's tokens with the recursive-descent rules.
private struct TokenStream {
    var tokens: [DrbdToken]
    var source: SourceFile
    var position = 0

    var peek: DrbdToken { tokens[position] }

    mutating func take() -> DrbdToken {
        let token = tokens[position]
        if token.kind != .endOfFile { position += 1 }
        return token
    }

    func error(_ code: DiagnosticCode, at token: DrbdToken, _ message: String, hint: String? = nil) -> ConfigError {
        ConfigError([
            source.diagnostic(.error, code, line: token.line, column: token.column, message, hint: hint)
        ])
    }

    /// `keyword arguments... ;` or `keyword arguments... { nodes }`.
    mutating func parseNode(in context: DrbdContext, depth: Int) throws(ConfigError) -> DrbdNode {
        let keyword = take()
        guard keyword.kind == .word else {
            throw unexpected(keyword, in: context)
        }
        guard Self.isKeyword(keyword.text) else {
            // Checked here rather than later because the rest of such a line rarely parses: seed 003's `//`
            // annotations end in a full-width '；', and the error must name the line where the problem starts.
            throw error(
                .drbdUnexpectedToken, at: keyword, "expected a keyword, got '\(keyword.text)'",
                hint: keyword.text.hasPrefix("//") ? "drbd.conf comments start with '#'" : nil
            )
        }
        if keyword.text == "skip" {
            try skipBlock(after: keyword)
            return DrbdNode(keyword: keyword, arguments: [], body: [])
        }
        var arguments: [DrbdToken] = []
        while true {
            let token = peek
            switch token.kind {
            case .word, .quoted, .openBracket, .closeBracket:
                arguments.append(take())
            case .semicolon:
                _ = take()
                return DrbdNode(keyword: keyword, arguments: arguments, body: nil)
            case .openBrace:
                let child = try sectionContext(for: keyword, in: context)
                _ = take()
                let body = try parseBody(of: keyword, context: child, depth: depth + 1)
                return DrbdNode(keyword: keyword, arguments: arguments, body: body)
            case .closeBrace, .endOfFile:
                throw error(
                    .drbdExpectedSemicolon, at: token,
                    "expected ';' to end '\(keyword.text)' (line \(keyword.line)), got \(token)"
                )
            }
        }
    }

    private mutating func parseBody(of keyword: DrbdToken, context: DrbdContext, depth: Int) throws(ConfigError) -> [DrbdNode] {
        guard depth <= DrbdSyntaxParser.nestingDepthMax else {
            throw error(.drbdUnexpectedSection, at: keyword, "sections nest too deeply here")
        }
        var body: [DrbdNode] = []
        while true {
            switch peek.kind {
            case .closeBrace:
                _ = take()
                return body
            case .endOfFile:
                throw error(
                    .drbdUnclosedSection, at: peek,
                    "expected '}' to close '\(keyword.text)' opened at line \(keyword.line), got the end of the file"
                )
            default:
                body.append(try parseNode(in: context, depth: depth))
            }
        }
    }

    /// The context a `{` after `keyword` opens, or an error naming the likely missing `}`.
    private func sectionContext(for keyword: DrbdToken, in context: DrbdContext) throws(ConfigError) -> DrbdContext {
        if let child = context.childContext(for: keyword.text) { return child }
        let knownSomewhere = DrbdContext.topLevel.allowedSectionNames + DrbdContext.resource.allowedSectionNames
            + DrbdContext.connection.allowedSectionNames
        if knownSomewhere.contains(keyword.text) {
            let allowed = context.allowedSectionNames
            let place = context == .topLevel ? "at the top level" : "inside '\(context.displayName)'"
            var message = "section '\(keyword.text)' cannot appear \(place)"
            if !allowed.isEmpty { message += "; allowed here: \(allowed.joined(separator: ", "))" }
            throw error(.drbdUnexpectedSection, at: keyword, message, hint: "is a '}' missing before this line?")
        }
        throw error(
            .drbdUnknownSection, at: keyword,
            "unknown section '\(keyword.text)' \(context == .topLevel ? "at the top level" : "inside '\(context.displayName)'")",
            hint: Suggestions.didYouMean(keyword.text, among: context.allowedSectionNames)
        )
    }

    private func unexpected(_ token: DrbdToken, in context: DrbdContext) -> ConfigError {
        if token.kind == .closeBrace, context == .topLevel {
            return error(.drbdUnexpectedToken, at: token, "this '}' closes nothing")
        }
        return error(.drbdUnexpectedToken, at: token, "expected a keyword, got \(token)")
    }

    /// Keywords are letters, digits, '-' and '_', starting with a letter.
    static func isKeyword(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII else { return false }
        return text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-" || $0 == "_") }
    }

    /// `skip [anything] { anything with balanced braces }`.
    private mutating func skipBlock(after keyword: DrbdToken) throws(ConfigError) {
        while peek.kind != .openBrace {
            if peek.kind == .endOfFile || peek.kind == .semicolon || peek.kind == .closeBrace {
                throw error(.drbdUnexpectedToken, at: peek, "expected '{' after 'skip', got \(peek)")
            }
            _ = take()
        }
        _ = take()
        var depth = 1
        while depth > 0 {
            let token = take()
            switch token.kind {
            case .openBrace: depth += 1
            case .closeBrace: depth -= 1
            case .endOfFile:
                throw error(
                    .drbdUnclosedSection, at: token,
                    "expected '}' to close 'skip' opened at line \(keyword.line), got the end of the file"
                )
            default: break
            }
        }
    }
}
