import Foundation
import Testing
@testable import TandemConfig

/// drbd.conf: the seeds' files, every malformed input with its exact diagnostic, and dump round trips.
@Suite("drbd.conf")
struct DrbdConfTests {
    static let seedDirectories = ["seed001", "seed003", "seed004", "seed004-logs", "seed004-faithful"]

    static var validFiles: [String] {
        seedDirectories.map { "\($0)/drbd.conf" }
            + DrbdFixtures.files(in: "valid/drbd84") + DrbdFixtures.files(in: "valid/drbd9")
    }

    @Test("every seed drbd.conf and valid fixture parses with no errors and no warnings", arguments: validFiles)
    func validFixtureParsesClean(_ file: String) throws {
        let parsed = try DrbdConfParser.load(path: DrbdFixtures.path(file))
        #expect(parsed.diagnostics.isEmpty, "\(parsed.diagnostics)")
        #expect(!parsed.model.resources.isEmpty)
    }

    @Test("dump output parses back to an equal model", arguments: validFiles)
    func dumpRoundTrips(_ file: String) throws {
        let original = try DrbdConfParser.load(path: DrbdFixtures.path(file)).model
        let text = DrbdDump.render(original)
        let reparsed = try DrbdConfParser.parse(SourceFile(path: "/nonexistent/dump.conf", text: text)).model
        #expect(reparsed == original, "dump:\n\(text)")
        // The dump of the dump is the same text: the output is normalized.
        #expect(DrbdDump.render(reparsed).replacing(/# defined at .*\n/, with: "")
                == text.replacing(/# defined at .*\n/, with: ""))
    }

    @Test("seed 001 (DRBD 8.3): common and syncer fold into the resource")
    func seed001EffectiveValues() throws {
        let config = try DrbdConfParser.load(path: DrbdFixtures.path("seed001/drbd.conf")).model
        let resource = try #require(config.resource(named: "drbd_r1"))
        #expect(resource.options.replicationProtocol == .c)
        #expect(resource.options.resyncRateKiBPerSecond == 100 * 1024)
        #expect(resource.options.activityLogExtents == 1801)
        #expect(resource.options.onIOError == .detach)
        #expect(resource.options.afterSplitBrainZeroPrimaries == .disconnect)
        #expect(resource.options.resyncConflict == .disconnect)
        #expect(resource.options.degradedWaitForConnectionTimeoutSeconds == 0)
        #expect(resource.options.handler(.priLostAfterSB) == "echo 0 > /proc/sysrq-trigger ; halt -f")
        #expect(resource.hosts.map(\.displayName) == ["server1", "server2"])
        let volume = try #require(resource.host(named: "server2")?.volumes.first)
        #expect(volume.device.value == DrbdDevice(path: "/dev/drbd0", minor: 0))
        #expect(volume.disk.value == .path("/dev/sdb1"))
        #expect(volume.metaDisk.value == .internal)
    }

    @Test("seed 004 (DRBD 8.3): flag spellings, suffixes and an indexed external meta-disk")
    func seed004EffectiveValues() throws {
        let config = try DrbdConfParser.load(path: DrbdFixtures.path("seed004/drbd.conf")).model
        let resource = try #require(config.resource(named: "data"))
        #expect(resource.options.diskFlushes == false)
        #expect(resource.options.metadataFlushes == false)
        #expect(resource.options.sendBufferBytes == 512 * 1024)
        #expect(resource.options.maxBuffers == 8000)
        #expect(resource.options.cramHMACAlgorithm == "sha1")
        #expect(resource.options.sharedSecret == "hdhwXes23sYEhart8t")
        #expect(resource.options.resyncRateKiBPerSecond == 120 * 1024)
        let host = try #require(resource.host(named: "master1"))
        #expect(host.address?.value == DrbdAddress(family: .ipv4, host: "192.168.4.2", port: 7788))
        #expect(host.volumes.first?.metaDisk.value == .indexed(path: "/dev/sdb2", index: 0))
        #expect(host.volumes.first?.device.value.minor == 1)
    }

    @Test("seed 003 (DRBD 8.4, includes): resource-level device and meta-disk reach both hosts")
    func seed003EffectiveValues() throws {
        let config = try DrbdConfParser.load(path: DrbdFixtures.path("seed003/drbd.conf")).model
        let resource = try #require(config.resource(named: "mysql"))
        #expect(resource.options.allowTwoPrimaries)
        #expect(resource.options.verifyAlgorithm == "sha1")
        #expect(resource.options.resyncRateKiBPerSecond == 1024 * 1024)
        for host in resource.hosts {
            #expect(host.volumes.map(\.device.value.path) == ["/dev/drbd0"])
            #expect(host.volumes.map(\.metaDisk.value) == [.indexed(path: "/dev/sdb2", index: 0)])
        }
        #expect(resource.name.location.file.hasSuffix("drbd.d/mysql.res"))
    }

    @Test("volumes, floating hosts and per-volume disk options")
    func volumesAndFloating() throws {
        let config = try DrbdConfParser.load(path: DrbdFixtures.path("valid/drbd84/volumes-and-floating.conf")).model
        let database = try #require(config.resource(named: "db"))
        let beta = try #require(database.host(named: "beta"))
        #expect(beta.volumes.map(\.number) == [0, 1])
        #expect(beta.volumes[1].device.value == DrbdDevice(path: "/dev/drbd11", minor: 11))
        #expect(database.options.overlaid(by: beta.volumes[1].diskOptions).resyncRateKiBPerSecond == 10 * 1024)
        #expect(database.options.resyncRateKiBPerSecond == 40 * 1024)
        #expect(database.options.sharedSecret == "s3cret with spaces and \"quotes\"")
        let web = try #require(config.resource(named: "web"))
        #expect(web.hosts.allSatisfy { $0.isFloating })
        #expect(web.hosts.first?.volumes.first?.metaDisk.value == .flexible(path: "/dev/vg0/webmeta"))
        #expect(config.resource(named: "old") == nil, "skip { } hides a resource")
    }

    @Test("DRBD 9 syntax: node ids and connections")
    func drbd9Syntax() throws {
        let config = try DrbdConfParser.load(path: DrbdFixtures.path("valid/drbd9/two-nodes.conf")).model
        let resource = try #require(config.resource(named: "r9"))
        #expect(resource.usesDrbd9Syntax)
        #expect(resource.hosts.map(\.nodeID) == [0, 1])
        #expect(resource.options.fencing == .resourceOnly)
        #expect(resource.connections.first?.addresses["beta"] == DrbdAddress(family: .ipv4, host: "192.168.50.2", port: 7790))
        #expect(resource.connections.first?.options.afterSplitBrainZeroPrimaries == .discardLeastChanges)
    }

    @Test("number suffixes convert to the option's unit as drbdadm does")
    func numberSuffixes() {
        #expect(DrbdNumber.parse("100M", unit: .kibibytes) == 102_400)
        #expect(DrbdNumber.parse("512k", unit: .bytes) == 524_288)
        #expect(DrbdNumber.parse("1M", unit: .sectors) == 2048)
        #expect(DrbdNumber.parse("250", unit: .kibibytes) == 250)
        #expect(DrbdNumber.parse("8s", unit: .bytes) == 4096)
        #expect(DrbdNumber.parse("10X", unit: .bytes) == nil)
        #expect(DrbdNumber.parse("99999999999999999999", unit: .bytes) == nil)
        #expect(DrbdNumber.parse("9999999999T", unit: .bytes) == nil)
        #expect(DrbdNumber.parse("", unit: .bytes) == nil)
    }

    @Test("the mangled seed 001 (lost braces) names the line where the first brace went missing")
    func mangledSeed001() throws {
        let error = try DrbdFixtures.expectFailure("seed001-faithful/drbd.conf")
        let first = try #require(error.errors.first)
        #expect(first.code == .drbdUnexpectedSection)
        #expect(first.location.line == 5 && first.location.column == 1)
        #expect(first.hint?.contains("'}' missing") == true)
    }

    @Test("seed 003 as printed, with the blog's // annotations, fails at the first annotation")
    func annotatedSeed003() throws {
        let error = try DrbdFixtures.expectFailure("seed003-faithful/drbd.conf")
        let first = try #require(error.errors.first)
        #expect(first.code == .drbdUnexpectedToken)
        #expect(first.location.file.hasSuffix("drbd.d/global_common.conf"))
        #expect(first.location.line == 3 && first.location.column == 2)
    }

    static let malformed: [MalformedCase] = [
        .init(file: "drbd84/unknown-option.conf", code: .drbdUnknownOption, line: 3, column: 5),
        .init(file: "drbd84/unknown-section.conf", code: .drbdUnknownSection, line: 2, column: 3),
        .init(file: "drbd84/missing-semicolon.conf", code: .drbdExpectedSemicolon, line: 4, column: 3),
        .init(file: "drbd84/unterminated-string.conf", code: .drbdUnterminatedString, line: 3, column: 17),
        .init(file: "drbd84/bad-protocol.conf", code: .drbdBadValue, line: 2, column: 12),
        .init(file: "drbd84/out-of-range.conf", code: .drbdValueOutOfRange, line: 3, column: 17),
        .init(file: "drbd84/bad-number-suffix.conf", code: .drbdBadValue, line: 3, column: 17),
        .init(file: "drbd84/bad-boolean.conf", code: .drbdBadValue, line: 3, column: 25),
        .init(file: "drbd84/missing-address-port.conf", code: .drbdBadAddress, line: 11, column: 13),
        .init(file: "drbd84/port-out-of-range.conf", code: .drbdBadAddress, line: 11, column: 13),
        .init(file: "drbd84/missing-device.conf", code: .drbdMissingSetting, line: 8, column: 3),
        .init(file: "drbd84/missing-meta-disk.conf", code: .drbdMissingSetting, line: 2, column: 3),
        .init(file: "drbd84/device-without-minor.conf", code: .drbdBadDevice, line: 9, column: 12),
        .init(file: "drbd84/bad-meta-disk-index.conf", code: .drbdBadValue, line: 6, column: 26),
        .init(file: "drbd84/duplicate-resource.conf", code: .drbdDuplicateResource, line: 15, column: 10),
        .init(file: "drbd84/duplicate-host.conf", code: .drbdDuplicateHost, line: 8, column: 6),
        .init(file: "drbd84/address-in-use.conf", code: .drbdAddressInUse, line: 19, column: 13),
        .init(file: "drbd84/minor-in-use.conf", code: .drbdMinorInUse, line: 17, column: 5),
        .init(file: "drbd84/missing-include.conf", code: .drbdBadInclude, line: 1, column: 9),
        .init(file: "drbd84/section-in-wrong-place.conf", code: .drbdUnexpectedSection, line: 3, column: 1),
        .init(file: "drbd84/resource-without-name.conf", code: .drbdMissingName, line: 1, column: 1),
        .init(file: "drbd84/statement-in-handlers-section.conf", code: .drbdBadValue, line: 3, column: 5),
        .init(file: "drbd84/stray-close-brace.conf", code: .drbdUnexpectedToken, line: 15, column: 1),
        .init(file: "drbd84/syncer-unknown-option.conf", code: .drbdUnknownOption, line: 4, column: 5),
        .init(file: "drbd84/comment-slashes.conf", code: .drbdUnexpectedToken, line: 3, column: 3),
        .init(file: "drbd84/invalid-ipv4.conf", code: .drbdBadAddress, line: 11, column: 13),
        .init(file: "drbd84/bad-after-sb-policy.conf", code: .drbdBadValue, line: 3, column: 19),
        .init(file: "drbd84/secret-too-long.conf", code: .drbdSecretTooLong, line: 4, column: 5),
        .init(file: "drbd84/unclosed-at-end.conf", code: .drbdUnclosedSection, line: 15, column: 1),
        .init(file: "drbd84/al-extents-out-of-range.conf", code: .drbdValueOutOfRange, line: 3, column: 16),
        .init(file: "drbd84/duplicate-volume.conf", code: .drbdDuplicateVolume, line: 7, column: 10),
        .init(file: "drbd84/ipv6-without-brackets.conf", code: .drbdBadAddress, line: 14, column: 18),
        .init(file: "drbd84/second-common.conf", code: .drbdUnexpectedSection, line: 4, column: 1),
        .init(file: "drbd9/bad-quorum.conf", code: .drbdBadValue, line: 8, column: 16),
        .init(file: "drbd9/connection-unknown-host.conf", code: .drbdUnknownHost, line: 29, column: 14),
        .init(file: "drbd9/node-id-out-of-range.conf", code: .drbdValueOutOfRange, line: 15, column: 17),
    ]

    @Test("malformed drbd.conf gets the exact code, line and column", arguments: malformed)
    func malformedInput(_ expected: MalformedCase) throws {
        let error = try expected.expectRefusal(in: ".") { path throws(ConfigError) in _ = try DrbdConfParser.load(path: path) }
        let first = try #require(error.errors.first)
        #expect(first.location.file.hasSuffix(expected.file))
        #expect(first.sourceLine != nil, "errors quote the offending line")
    }

    @Test("every malformed fixture on disk is in the table")
    func malformedTableIsComplete() {
        let onDisk = Set(DrbdFixtures.files(in: "malformed/drbd84") + DrbdFixtures.files(in: "malformed/drbd9"))
        let listed = Set(Self.malformed.map { "malformed/\($0.file)" })
        #expect(onDisk == listed)
    }

    @Test("an unknown option suggests the closest spelling, or the section it belongs in")
    func suggestions() throws {
        let error = try DrbdFixtures.expectFailure("malformed/drbd84/unknown-option.conf")
        #expect(error.errors.first?.hint == "did you mean 'protocol'?")
        let misplaced = SourceFile(path: "/nonexistent/x.conf", text: "resource r { disk { verify-alg sha1; } }\n")
        let misplacedError = try #require(refusal { () throws(ConfigError) in _ = try DrbdConfParser.parse(misplaced) })
        #expect(misplacedError.errors.first?.hint == "'verify-alg' belongs in the net section")
    }

    @Test("the rendered diagnostic has file:line:column, the line and a caret under the column")
    func diagnosticRendering() throws {
        let error = try DrbdFixtures.expectFailure("malformed/drbd84/unknown-option.conf")
        let lines = try #require(error.errors.first).description.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines[0].hasSuffix("unknown-option.conf:3:5: error[drbd.unknown-option]: unknown option 'protocl' in section 'net'"))
        #expect(lines[1] == "        protocl C;")
        #expect(lines[2] == "        ^")
    }

    @Test("a file with Windows line ends parses, and errors still name the right line")
    func windowsLineEnds() throws {
        let text = try String(contentsOfFile: DrbdFixtures.path("seed004/drbd.conf"), encoding: .utf8)
        let crlf = text.replacing("\n", with: "\r\n")
        let model = try DrbdConfParser.parse(SourceFile(path: "/nonexistent/crlf.conf", text: crlf)).model
        #expect(model == (try DrbdConfParser.load(path: DrbdFixtures.path("seed004/drbd.conf")).model))
        let broken = SourceFile(path: "/nonexistent/crlf.conf", text: crlf.replacing("protocol C;", with: "protocol D;"))
        let error = try #require(refusal { () throws(ConfigError) in _ = try DrbdConfParser.parse(broken) })
        #expect(error.errors.first?.location.line == 8)
        #expect(error.errors.first?.sourceLine == "protocol D;")
    }

    @Test("an include that includes itself stops at the depth limit")
    func includeLoop() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-include-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/drbd.conf"
        try "include \"drbd.conf\";\n".write(toFile: path, atomically: true, encoding: .utf8)
        let error = try #require(refusal { () throws(ConfigError) in _ = try DrbdConfParser.load(path: path) })
        #expect(error.errors.first?.code == .drbdIncludeTooDeep)
    }
}

/// Where the drbd.conf fixtures are and small helpers for them.
enum DrbdFixtures {
    static func path(_ relative: String) -> String { FixturePaths.path(relative) }

    /// The .conf files of a fixture folder, relative to the fixture root, sorted.
    static func files(in folder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path(folder))) ?? []
        return names.filter { $0.hasSuffix(".conf") }.sorted().map { "\(folder)/\($0)" }
    }

    static func expectFailure(_ relative: String) throws -> ConfigError {
        try #require(refusal { () throws(ConfigError) in _ = try DrbdConfParser.load(path: path(relative)) },
                     "expected \(relative) to be refused")
    }
}
