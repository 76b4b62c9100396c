import Foundation

/// Where the `tandem` executable that `swift build --build-tests` (or `swift test`) built lives.
///
/// The test bundle and the executable land in the same build folder, whatever `--scratch-path` says, so the
/// executable is looked for next to the running test binary first, then in the package's `.build/debug` and
/// `.build/release`. `TANDEM_EXECUTABLE` overrides all of them.
public enum TandemExecutable {
    public static func path(packageRoot: URL) -> String {
        if let override = ProcessInfo.processInfo.environment["TANDEM_EXECUTABLE"], !override.isEmpty {
            return override
        }
        var candidates: [String] = []
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = testBinary.deletingLastPathComponent()
        // On Linux the test binary is `<build>/debug/TandemPackageTests.xctest`; on macOS it sits inside the bundle.
        for _ in 0..<4 {
            candidates.append(directory.appendingPathComponent("tandem").path)
            directory = directory.deletingLastPathComponent()
        }
        for configuration in ["debug", "release"] {
            candidates.append(packageRoot.appendingPathComponent(".build/\(configuration)/tandem").path)
        }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }
}
