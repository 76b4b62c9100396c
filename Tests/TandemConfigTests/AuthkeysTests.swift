import Foundation
import Testing

@testable import TandemConfig

/// authkeys: the seeds' files, key rotation, secrets kept out of every message, and the permission check.
@Suite struct AuthkeysTests {
    static func parse(_ text: String) throws(ConfigError) -> Parsed<Authkeys> {
        try AuthkeysParser.parse(SourceFile(path: "test/authkeys", text: text))
    }

    static func rejection(_ text: String) -> ConfigError? {
        refusal { () throws(ConfigError) in _ = try parse(text) }
    }

    // MARK: Seeds

    @Test(arguments: [
        ("seed001/authkeys", "FromDual"), ("seed001-faithful/authkeys", "FromDual"),
        ("seed004/authkeys", "47e9336850f1db6fa58bc470bc9b7810eb397f04"),
        ("seed004-logs/authkeys", "47e9336850f1db6fa58bc470bc9b7810eb397f04"),
    ])
    func seedParsesCleanly(fixture: String, secret: String) throws {
        let parsed = try AuthkeysParser.parse(SourceFile.load(path: FixturePaths.path(fixture)))
        #expect(parsed.diagnostics.isEmpty)
        #expect(parsed.model.activeIndex.value == 1)
        #expect(parsed.model.keys.map(\.value) == [AuthKey(index: 1, method: .sha1, secret: secret)])
        #expect(parsed.model.activeKey == AuthKey(index: 1, method: .sha1, secret: secret))
    }

    // MARK: Keys

    @Test func severalKeysAllowRotation() throws {
        let parsed = try Self.parse("auth 2\n1 sha1 old-secret\n2 sha256 new-secret\n3 sha512 next-secret\n")
        #expect(parsed.model.keys.map(\.value.index) == [1, 2, 3])
        #expect(parsed.model.keys.map(\.value.method) == [.sha1, .sha256, .sha512])
        #expect(parsed.model.activeKey?.secret == "new-secret")
        #expect(parsed.model.activeIndex.location.line == 1)
        #expect(parsed.model.activeIndex.location.column == 6)
        #expect(parsed.diagnostics.isEmpty)
    }

    @Test func authMayFollowTheKeys() throws {
        #expect(try Self.parse("1 md5 a-secret\nauth 1\n").model.activeKey?.method == .md5)
    }

    /// Only a whole-line comment is a comment: Heartbeat keeps a `#` inside a key.
    @Test func hashInsideAKeyIsPartOfTheKey() throws {
        let parsed = try Self.parse("# comment\n   # indented comment\nauth 1\n1 sha1 abc#def\n")
        #expect(parsed.model.activeKey?.secret == "abc#def")
    }

    @Test func crcIsAcceptedWithALoudWarning() throws {
        let parsed = try Self.parse("auth 1\n1 crc\n")
        #expect(parsed.model.activeKey == AuthKey(index: 1, method: .crc, secret: nil))
        #expect(parsed.diagnostics.map(\.code) == [.authkeysInsecureMethod])
        #expect(parsed.diagnostics[0].severity == .warning)
        #expect(parsed.diagnostics[0].message.contains("forge"))
    }

    @Test func descriptionsHideTheSecret() {
        let key = AuthKey(index: 1, method: .sha1, secret: "do-not-print")
        #expect(!key.description.contains("do-not-print"))
        #expect(!String(reflecting: key).contains("do-not-print"))
        #expect(key.description == "1 sha1 <secret hidden>")
    }

    @Test func unknownMethodSuggestsTheClosest() throws {
        let error = try #require(Self.rejection("auth 1\n1 SHA1 a-secret\n"))
        #expect(error.errors.map(\.code) == [.authkeysUnknownMethod])
        #expect(error.errors[0].hint == "did you mean 'sha1'?")
    }

    // MARK: Malformed fixtures

    static let malformed: [MalformedCase] = [
        MalformedCase(file: "auth-not-a-number", code: .authkeysBadIndex, line: 1, column: 6),
        MalformedCase(file: "crc-with-key", code: .authkeysUnexpectedKey, line: 2, column: 7),
        MalformedCase(file: "duplicate-index", code: .authkeysDuplicateIndex, line: 3, column: 1),
        MalformedCase(file: "index-out-of-range", code: .authkeysBadIndex, line: 3, column: 1),
        MalformedCase(file: "key-with-space", code: .authkeysKeyContainsSpace, line: 2, column: 15),
        MalformedCase(file: "missing-auth", code: .authkeysMissingAuth, line: 1, column: 1),
        MalformedCase(file: "missing-key", code: .authkeysMissingKey, line: 2, column: 6),
        MalformedCase(file: "undefined-key", code: .authkeysUndefinedKey, line: 1, column: 6),
        MalformedCase(file: "unknown-method", code: .authkeysUnknownMethod, line: 2, column: 3),
        MalformedCase(file: "wrapped-key", code: .authkeysMissingKey, line: 2, column: 7),
    ]

    /// The secrets the malformed fixtures use; no diagnostic may contain them.
    static let fixtureSecrets = ["s3cr3t", "47e9336850f1db6fa58bc470bc9b7810eb397f04"]

    @Test(arguments: malformed)
    func malformedFileIsRejectedAtTheFault(_ fixture: MalformedCase) throws {
        let error = try fixture.expectRefusal(in: "authkeys") { path throws(ConfigError) in
            _ = try AuthkeysParser.parse(SourceFile.load(path: path))
        }
        let first = try #require(error.errors.first)
        #expect(first.message.contains("expected"), "messages say what was expected: \(first.message)")
        for diagnostic in error.diagnostics {
            for secret in Self.fixtureSecrets {
                #expect(!diagnostic.description.contains(secret), "a secret leaked: \(diagnostic)")
            }
        }
    }

    @Test func everyMalformedFixtureIsInTheTable() {
        #expect(FixturePaths.fileNames(in: "malformed/authkeys") == Self.malformed.map(\.file).sorted())
    }

    /// A key wrapped onto its own line is where an index belongs: neither the message nor the excerpt shows it.
    @Test func aSecretOnALineOfItsOwnIsNotQuoted() throws {
        let error = try #require(Self.rejection("auth 1\n1 sha1\n47e9336850f1db6fa58bc470bc9b7810eb397f04\n"))
        let badLine = try #require(error.errors.first { $0.location.line == 3 })
        #expect(badLine.code == .authkeysBadIndex)
        #expect(badLine.sourceLine == "<line hidden: it may hold a secret>")
        #expect(!badLine.message.contains("47e9"))
    }

    @Test func excerptsStopBeforeTheSecret() throws {
        let error = try #require(Self.rejection("auth 1\n1 sha1 s3cr3t key\n"))
        #expect(error.errors[0].sourceLine == "1 sha1 <secret hidden>")
    }

    // MARK: Permissions

    /// `load` refuses a file that group or others may read or write, and says how to fix it; `parse` does not look.
    @Test func loadRefusesAFileOthersMayRead() throws {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("tandem-authkeys-\(UUID().uuidString)").path
        let text = try String(contentsOfFile: FixturePaths.path("seed001/authkeys"), encoding: .utf8)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8)))
        defer { try? FileManager.default.removeItem(atPath: path) }

        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        let error = #expect(throws: ConfigError.self) { try AuthkeysParser.load(path: path) }
        let refusal = try #require(error?.errors.first)
        #expect(refusal.code == .authkeysInsecurePermissions)
        #expect(refusal.hint?.contains("chmod 600 \(path)") == true)
        #expect(refusal.message.contains("644"))

        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        let parsed = try AuthkeysParser.load(path: path)
        #expect(parsed.model.activeKey?.method == .sha1)
        #expect(parsed.diagnostics.isEmpty)

        try FileManager.default.setAttributes([.posixPermissions: 0o620], ofItemAtPath: path)
        #expect(throws: ConfigError.self) { try AuthkeysParser.load(path: path) }
    }

    /// The mode checked is the file's, not a symbolic link's (whose own mode is always 777).
    @Test func loadFollowsASymbolicLink() throws {
        let directory = FileManager.default.temporaryDirectory
        let target = directory.appendingPathComponent("tandem-authkeys-\(UUID().uuidString)").path
        let link = target + "-link"
        #expect(FileManager.default.createFile(atPath: target, contents: Data("auth 1\n1 sha1 a-secret\n".utf8)))
        defer {
            try? FileManager.default.removeItem(atPath: link)
            try? FileManager.default.removeItem(atPath: target)
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: target)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        #expect(try AuthkeysParser.load(path: link).model.activeKey?.method == .sha1)
    }

    @Test func loadReportsBothPermissionsAndContents() throws {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("tandem-authkeys-\(UUID().uuidString)").path
        #expect(FileManager.default.createFile(atPath: path, contents: Data("1 md5\n".utf8)))
        defer { try? FileManager.default.removeItem(atPath: path) }
        try FileManager.default.setAttributes([.posixPermissions: 0o604], ofItemAtPath: path)

        let error = #expect(throws: ConfigError.self) { try AuthkeysParser.load(path: path) }
        let codes = error?.errors.map(\.code) ?? []
        #expect(codes.contains(.authkeysInsecurePermissions))
        #expect(codes.contains(.authkeysMissingKey))
    }
}
