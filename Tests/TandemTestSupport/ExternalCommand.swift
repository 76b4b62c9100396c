import Foundation

/// Runs a program to completion and collects its output.
public enum ExternalCommand {
    /// The path of an installed program, looked for where Debian puts them; nil when it is not installed.
    public static func tool(_ name: String) -> String? {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"].map { "\($0)/\(name)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    public struct Output: Sendable {
        public var status: Int32
        public var standardOutput: String
        public var standardError: String
    }

    /// As `run`, on a thread of its own, for commands that take long (mkfs, a whole script): a blocking wait would hold
    /// one of the few threads of Swift's cooperative pool, which the tests running in parallel need; starved, their
    /// timeouts fire.
    public static func runDetached(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:]
    ) async throws -> Output {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(with: Result { try run(executable, arguments, environment: environment) })
            }.start()
        }
    }

    /// Runs `executable` with `arguments`, its environment being ours with `environment` laid over it.
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        // Standard error goes to a file rather than a second pipe: reading two pipes one after the other can
        // deadlock when the child fills the one not being read.
        let errorPath = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-stderr-\(UUID())").path
        guard FileManager.default.createFile(atPath: errorPath, contents: nil), let errorFile = FileHandle(forWritingAtPath: errorPath) else {
            throw CocoaError(.fileWriteUnknown)
        }
        defer {
            try? errorFile.close()
            try? FileManager.default.removeItem(atPath: errorPath)
        }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = errorFile
        try process.run()
        let outputData = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let errorData = FileManager.default.contents(atPath: errorPath) ?? Data()
        return Output(
            status: process.terminationStatus,
            standardOutput: String(decoding: outputData, as: UTF8.self),
            standardError: String(decoding: errorData, as: UTF8.self)
        )
    }
}
