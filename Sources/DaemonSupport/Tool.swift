#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport

/// An external program found on the search path, with the Debian package that provides it, so that a missing
/// tool is reported as what to install rather than as a failed exec.
public struct Tool: Sendable {
    public let name: String
    public let debianPackage: String

    public init(name: String, debianPackage: String) {
        self.name = name
        self.debianPackage = debianPackage
    }

    public var path: String? { ChildProcess.executablePath(name) }

    /// Runs the tool; `.failure` carries a message that says what is missing or what the tool said.
    public func run(_ arguments: [String], deadline: MonotonicInstant) -> Result<ChildProcess.Outcome, ToolError> {
        guard let path else { return .failure(ToolError("\(name) is not installed (Debian: apt-get install \(debianPackage))")) }
        let remaining = deadline - DaemonClock.now
        guard remaining > .zero else { return .failure(ToolError("no time left to run \(name)")) }
        switch ChildProcess.run([path] + arguments, environment: ["PATH": ChildProcess.searchPath], timeout: remaining, killGrace: .seconds(2)) {
        case .success(let outcome): return .success(outcome)
        case .failure(let error): return .failure(ToolError("\(name): \(error)"))
        }
    }

    /// Runs the tool and requires exit status 0.
    public func check(_ arguments: [String], deadline: MonotonicInstant) -> Result<String, ToolError> {
        switch run(arguments, deadline: deadline) {
        case .failure(let error): return .failure(error)
        case .success(let outcome) where outcome.succeeded: return .success(outcome.output)
        case .success(let outcome):
            return .failure(ToolError("\(name) \(arguments.joined(separator: " ")) \(outcome): \(outcome.output.trimmingCharacters(in: .whitespacesAndNewlines))"))
        }
    }
}

public struct ToolError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The system tools the daemons and the lab use.
extension Tool {
    public static let ip = Tool(name: "ip", debianPackage: "iproute2")
    public static let arping = Tool(name: "arping", debianPackage: "iputils-arping")
    public static let mount = Tool(name: "mount", debianPackage: "mount")
    public static let umount = Tool(name: "umount", debianPackage: "mount")
    public static let fsck = Tool(name: "fsck", debianPackage: "util-linux")
    public static let dd = Tool(name: "dd", debianPackage: "coreutils")
}
