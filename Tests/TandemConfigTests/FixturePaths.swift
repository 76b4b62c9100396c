import Foundation
import Testing
@testable import TandemConfig

/// Where the test fixtures live: `Tests/Fixtures`, found from this file's own path so that the tests pass whatever
/// directory they run from.
enum FixturePaths {
    /// …/Tests/TandemConfigTests/FixturePaths.swift -> …/Tests/Fixtures
    static let root: String = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
        .path

    /// The path of a fixture given relative to `root`, such as `seed001/ha.cf`.
    static func path(_ relative: String) -> String {
        root + "/" + relative
    }

    /// The names of the files in a fixture folder, sorted.
    static func fileNames(in relativeFolder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path(relativeFolder))) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted()
    }
}

/// The error `attempt` throws, or nil if it succeeds.
func refusal(_ attempt: () throws(ConfigError) -> Void) -> ConfigError? {
    do {
        try attempt()
        return nil
    } catch {
        return error
    }
}

/// One malformed input and the first diagnostic it must produce, for the parameterised malformed-input tests.
struct MalformedCase: Sendable, CustomStringConvertible {
    var file: String
    var code: DiagnosticCode
    var line: Int
    var column: Int

    var description: String { file }

    /// Expects `load` to refuse `malformed/<folder>/<file>` with this case's code, line and column as its first
    /// error, and returns the error for the suite's own further checks.
    func expectRefusal(in folder: String, by load: (String) throws(ConfigError) -> Void) throws -> ConfigError {
        let path = FixturePaths.path("malformed/\(folder)/\(file)")
        let error = try #require(refusal { () throws(ConfigError) in try load(path) }, "\(file) was accepted")
        let first = try #require(error.errors.first)
        #expect(first.code == code, "\(error)")
        #expect(first.location.line == line, "\(error)")
        #expect(first.location.column == column, "\(error)")
        return error
    }
}
