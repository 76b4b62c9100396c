import Foundation
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

/// One malformed input and the first diagnostic it must produce, for the parameterised malformed-input tests.
struct MalformedCase: Sendable, CustomStringConvertible {
    var file: String
    var code: DiagnosticCode
    var line: Int
    var column: Int

    var description: String { file }
}
