#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// The typed contents of Heartbeat's `/etc/ha.d/authkeys`: the keys that may sign packets, and the one that signs
/// ours.
///
/// Several keys may be defined so that a key can be rotated without stopping the cluster: every node accepts
/// packets signed with any key in the file, and `auth N` chooses the one it signs with.
public struct Authkeys: Sendable, Equatable {
    /// The index given by `auth N`, the key outgoing packets are signed with.
    public var activeIndex: Located<UInt8>
    /// Every key, in file order, with a distinct index each.
    public var keys: [Located<AuthKey>]

    public init(activeIndex: Located<UInt8>, keys: [Located<AuthKey>]) {
        self.activeIndex = activeIndex
        self.keys = keys
    }

    /// The key named by `auth N`. A parsed `Authkeys` always has it.
    public var activeKey: AuthKey? {
        keys.first { $0.value.index == activeIndex.value }?.value
    }
}

/// One `N method [key]` line.
///
/// Its descriptions never show the secret, so that a key cannot leak into a log or a test report.
public struct AuthKey: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    /// 1 to 15.
    public var index: UInt8
    /// How packets signed with this key are signed.
    public var method: AuthMethod
    /// The shared secret; nil for `crc`, which has none.
    public var secret: String?

    public init(index: UInt8, method: AuthMethod, secret: String?) {
        self.index = index
        self.method = method
        self.secret = secret
    }

    public var description: String {
        "\(index) \(method.rawValue)\(secret == nil ? "" : " <secret hidden>")"
    }

    public var debugDescription: String { "AuthKey(\(description))" }
}

/// How packets are signed.
public enum AuthMethod: String, Sendable, Hashable, CaseIterable {
    /// CRC-32: detects corruption, authenticates nothing (anyone on the network can forge packets).
    case crc
    /// HMAC-MD5.
    case md5
    /// HMAC-SHA1, lower-case hex; what most Heartbeat clusters use.
    case sha1
    /// HMAC-SHA256 and HMAC-SHA512 are Tandem additions: Heartbeat has no such plugins, so a cluster that still has
    /// a Heartbeat node must sign with md5 or sha1 until it is gone.
    case sha256
    case sha512

    /// Whether the method takes a secret (all but crc).
    public var needsSecret: Bool { self != .crc }
}

/// Reads Heartbeat's `authkeys`.
///
/// As in Heartbeat (`parse_authfile` in heartbeat/auth.c) only a line whose first non-blank character is `#` is a
/// comment, so a key may contain `#`. Diagnostics quote a line only up to the method: the secret is never shown.
public enum AuthkeysParser {
    /// Heartbeat's key indexes run from 1 to 15 (its `authkeys(5)` page).
    public static let indexRange: ClosedRange<Int> = 1...15
    /// A bound on a secret's length; an HMAC key longer than a hash block is hashed first anyway.
    public static let secretLengthMax = 1024
    /// Group and other permission bits that `load` refuses: Heartbeat's page says the file "must not be readable or
    /// writable by any users other than root".
    public static let forbiddenPermissionBits = 0o066

    /// Parses the text of an authkeys file. This does not look at the file's permissions; `load` does.
    public static func parse(_ source: SourceFile) throws(ConfigError) -> Parsed<Authkeys> {
        var builder = AuthkeysBuilder(source: source)
        for line in LineFields.logicalLines(of: source, comments: .wholeLine) {
            builder.apply(line)
        }
        return try builder.finish()
    }

    /// Reads the authkeys file at `path`, refusing it when group or others may read or write it (anyone who can
    /// read the key can forge cluster messages), then parses it.
    public static func load(path: String) throws(ConfigError) -> Parsed<Authkeys> {
        let source = try SourceFile.load(path: path)
        let permissionProblem = insecurePermissions(path: path)
        let parsed: Parsed<Authkeys>
        do {
            parsed = try parse(source)
        } catch {
            throw ConfigError((permissionProblem.map { [$0] } ?? []) + error.diagnostics)
        }
        if let permissionProblem {
            throw ConfigError([permissionProblem] + parsed.diagnostics)
        }
        return parsed
    }

    /// An `authkeys.insecure-permissions` error when the file's mode lets group or others read or write it.
    /// `stat` follows a symbolic link, so the mode checked is that of the file read, as Heartbeat's `fstat` does.
    static func insecurePermissions(path: String) -> Diagnostic? {
        let location = SourceLocation(file: path, line: 1, column: 1)
        var status = stat()
        guard stat(path, &status) == 0 else {
            return Diagnostic(
                .error, .authkeysInsecurePermissions, at: location,
                "cannot read the file's permissions; expected mode 600 (read and write for its owner only)"
            )
        }
        let mode = Int(status.st_mode) & 0o777
        guard mode & forbiddenPermissionBits != 0 else { return nil }
        return Diagnostic(
            .error, .authkeysInsecurePermissions, at: location,
            "the file has mode \(String(mode, radix: 8)), so group or others may read or change the cluster key; "
                + "expected 600",
            hint: "chmod 600 \(path)"
        )
    }
}

extension DiagnosticCode {
    public static let authkeysMissingAuth: DiagnosticCode = "authkeys.missing-auth"
    public static let authkeysDuplicateAuth: DiagnosticCode = "authkeys.duplicate-auth"
    public static let authkeysUndefinedKey: DiagnosticCode = "authkeys.undefined-key"
    public static let authkeysBadIndex: DiagnosticCode = "authkeys.bad-index"
    public static let authkeysDuplicateIndex: DiagnosticCode = "authkeys.duplicate-index"
    public static let authkeysUnknownMethod: DiagnosticCode = "authkeys.unknown-method"
    public static let authkeysMissingKey: DiagnosticCode = "authkeys.missing-key"
    public static let authkeysUnexpectedKey: DiagnosticCode = "authkeys.unexpected-key"
    public static let authkeysKeyContainsSpace: DiagnosticCode = "authkeys.key-contains-space"
    public static let authkeysKeyTooLong: DiagnosticCode = "authkeys.key-too-long"
    public static let authkeysBadLine: DiagnosticCode = "authkeys.bad-line"
    public static let authkeysInsecureMethod: DiagnosticCode = "authkeys.insecure-method"
    public static let authkeysInsecurePermissions: DiagnosticCode = "authkeys.insecure-permissions"
}

/// The parser's state while it reads one authkeys file.
struct AuthkeysBuilder {
    let source: SourceFile
    var log = DiagnosticLog()
    var active: (index: Located<UInt8>, field: Field)?
    var keys: [Located<AuthKey>] = []
    var keyLines: [UInt8: Int] = [:]

    init(source: SourceFile) {
        self.source = source
    }

    mutating func apply(_ line: LogicalLine) {
        guard let first = line.fields.first else { return }
        do {
            if first.text == "auth" {
                try applyAuth(line.fields)
            } else {
                try applyKey(line.fields)
            }
        } catch {
            log.report(error)
        }
    }

    /// `auth N`.
    private mutating func applyAuth(_ fields: [Field]) throws(Diagnostic) {
        guard fields.count >= 2 else {
            throw diagnostic(
                .error, .authkeysBadIndex, at: endOfLine(fields),
                "'auth' needs the index of the key to sign with, 1 to 15")
        }
        let index = try self.index(fields[1])
        guard fields.count == 2 else {
            throw diagnostic(
                .error, .authkeysBadLine, at: fields[2], "unexpected text after 'auth \(index)'; expected 'auth N'")
        }
        if let previous = active {
            throw diagnostic(
                .error, .authkeysDuplicateAuth, at: fields[0],
                "'auth' is already given on line \(previous.field.line); expected one 'auth N' line"
            )
        }
        active = (Located(index, at: location(fields[1])), fields[1])
    }

    /// `N method [secret]`.
    private mutating func applyKey(_ fields: [Field]) throws(Diagnostic) {
        guard fields[0].text.first?.isNumber == true else {
            throw diagnostic(
                .error, .authkeysBadLine, at: fields[0],
                "expected 'auth N' or a key line 'N METHOD SECRET' such as '1 sha1 SECRET', got \(shown(fields[0]))"
            )
        }
        let index = try self.index(fields[0])
        guard fields.count >= 2 else {
            throw diagnostic(
                .error, .authkeysUnknownMethod, at: endOfLine(fields), "key \(index) needs a method: \(methodList)")
        }
        let method = try self.method(fields[1])
        let secret = try self.secret(fields, method: method, index: index)
        if let firstLine = keyLines[index] {
            throw diagnostic(
                .error, .authkeysDuplicateIndex, at: fields[0],
                "key \(index) is already defined on line \(firstLine); expected each index once"
            )
        }
        keyLines[index] = fields[0].line
        keys.append(Located(AuthKey(index: index, method: method, secret: secret), at: location(fields[0])))
        if method == .crc {
            log.report(
                diagnostic(
                    .warning, .authkeysInsecureMethod, at: fields[1],
                    "key \(index) uses crc, which only detects corruption: anyone on the heartbeat network can forge "
                        + "cluster messages",
                    hint: "use sha256 (or sha1 while a Heartbeat node remains) with a long random secret"
                ))
        }
    }

    private func index(_ field: Field) throws(Diagnostic) -> UInt8 {
        guard field.text.count <= 2, field.text.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(field.text),
            AuthkeysParser.indexRange.contains(value)
        else {
            throw diagnostic(
                .error, .authkeysBadIndex, at: field, "expected a key index from 1 to 15, got \(shown(field))")
        }
        return UInt8(value)
    }

    private var methodList: String { AuthMethod.allCases.map(\.rawValue).joined(separator: ", ") }

    private func method(_ field: Field) throws(Diagnostic) -> AuthMethod {
        guard let method = AuthMethod(rawValue: field.text) else {
            throw diagnostic(
                .error, .authkeysUnknownMethod, at: field,
                "unknown method \(shown(field)); expected one of \(methodList)",
                hint: Suggestions.didYouMean(field.text, among: AuthMethod.allCases.map(\.rawValue))
            )
        }
        return method
    }

    /// The secret after the method. Heartbeat reads it with `sscanf("%s")`, which stops at the first blank, so a
    /// secret with a blank in it would silently be cut to its first word: that is refused instead.
    private func secret(_ fields: [Field], method: AuthMethod, index: UInt8) throws(Diagnostic) -> String? {
        guard method.needsSecret else {
            guard fields.count == 2 else {
                throw diagnostic(
                    .error, .authkeysUnexpectedKey, at: fields[2],
                    "crc takes no secret, yet key \(index) has one; expected '\(index) crc'",
                    hint: "use a method that takes a secret, such as sha256"
                )
            }
            return nil
        }
        guard fields.count >= 3 else {
            throw diagnostic(
                .error, .authkeysMissingKey, at: endOfLine(fields),
                "\(method.rawValue) needs a secret; expected '\(index) \(method.rawValue) SECRET'",
                hint: "a long random secret, such as the output of 'openssl rand -hex 32'"
            )
        }
        guard fields.count == 3 else {
            throw diagnostic(
                .error, .authkeysKeyContainsSpace, at: fields[3],
                "the secret of key \(index) contains a blank; Heartbeat would use only its first word, so expected a "
                    + "secret without blanks"
            )
        }
        guard fields[2].text.count <= AuthkeysParser.secretLengthMax else {
            throw diagnostic(
                .error, .authkeysKeyTooLong, at: fields[2],
                "the secret of key \(index) is longer than \(AuthkeysParser.secretLengthMax) characters"
            )
        }
        return fields[2].text
    }

    mutating func finish() throws(ConfigError) -> Parsed<Authkeys> {
        guard let active else {
            log.report(
                Diagnostic(
                    .error, .authkeysMissingAuth, at: source.location(line: 1, column: 1),
                    "no 'auth N' line; expected one naming the key to sign with",
                    hint: "add 'auth 1' above the key lines"
                ))
            return try log.finish(
                Authkeys(activeIndex: Located(0, at: source.location(line: 1, column: 1)), keys: keys))
        }
        if keyLines[active.index.value] == nil && !log.hasErrors {
            log.report(
                diagnostic(
                    .error, .authkeysUndefinedKey, at: active.field,
                    "'auth \(active.index.value)' names no key; expected the index of a key line in this file",
                    hint: keys.isEmpty ? "add a key line such as '\(active.index.value) sha256 SECRET'" : nil
                ))
        }
        return try log.finish(Authkeys(activeIndex: active.index, keys: keys))
    }

    // MARK: Diagnostics

    private func location(_ field: Field) -> SourceLocation {
        source.location(line: field.line, column: field.column)
    }

    private func endOfLine(_ fields: [Field]) -> Field {
        let last = fields[fields.count - 1]
        return Field(text: "", line: last.line, column: last.column + last.text.count)
    }

    /// A diagnostic that quotes the line only up to the end of its second field, where a secret starts: the
    /// secret never appears in a message or an excerpt.
    private func diagnostic(
        _ severity: Diagnostic.Severity, _ code: DiagnosticCode, at field: Field, _ message: String,
        hint: String? = nil
    ) -> Diagnostic {
        Diagnostic(
            severity, code, at: location(field), message, hint: hint, sourceLine: redactedLine(field.line))
    }

    /// The line as far as it cannot hold a secret: `auth` or an index, then the method after an index. A secret
    /// sits after those, or anywhere on a line that has neither (a key wrapped onto its own line).
    private func redactedLine(_ line: Int) -> String? {
        guard let text = source.lineText(line) else { return nil }
        let fields = LineFields.splitFields(Substring(text), line: line, comments: .wholeLine)
        var keptCount = 0
        if let first = fields.first, first.text == "auth" || AuthkeysBuilder.isIndexLike(first.text) {
            keptCount = 1
            if fields.count > 1, AuthkeysBuilder.isShortWord(fields[1].text) { keptCount = 2 }
        }
        guard keptCount < fields.count else { return text }
        guard keptCount > 0 else { return "<line hidden: it may hold a secret>" }
        let lastKept = fields[keptCount - 1]
        return String(text.prefix(lastKept.column - 1 + lastKept.text.count)) + " <secret hidden>"
    }

    /// How a field is named in a message: quoted when it is a short word that cannot be a secret, else only
    /// described, since a key line that lost its index or method has its secret where those belong.
    private func shown(_ field: Field) -> String {
        AuthkeysBuilder.isShortWord(field.text)
            ? "'\(field.text)'" : "a word of \(field.text.count) characters (not shown: it may be a secret)"
    }

    private static func isIndexLike(_ text: String) -> Bool {
        text.count <= 2 && text.allSatisfy { $0.isASCII && $0.isNumber }
    }

    /// Method names and indexes are at most 6 characters; a longer word may be a secret.
    private static func isShortWord(_ text: String) -> Bool {
        text.count <= 8 && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber) }
    }
}
