import CoreSupport
import DaemonSupport

/// Why a lab operation failed: what it was doing, and what went wrong underneath.
public struct LabError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// A tool is missing or the machine cannot do it (no netns, no FUSE): install and retry.
        case unavailable
        /// The lab is not in a state that allows it (not up, already up, a node down).
        case refused
        case failed
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }

    /// The exit status of the CLI for this error (0 ok, 10 refused or failed, 20 unavailable).
    public var exitCode: Int32 {
        switch code {
        case .unavailable: 20
        case .refused, .failed: 10
        }
    }
}

/// The external programs the lab uses, found on the search path.
enum LabTool {
    static let ip = Tool.ip
    static let nsenter = Tool(name: "nsenter", debianPackage: "util-linux")
    static let unshare = Tool(name: "unshare", debianPackage: "util-linux")
    static let setsid = Tool(name: "setsid", debianPackage: "util-linux")
    static let mkfsExt4 = Tool(name: "mkfs.ext4", debianPackage: "e2fsprogs")
    static let installDatabase = Tool(name: "mariadb-install-db", debianPackage: "mariadb-server")
    static let mariadbd = Tool(name: "mariadbd", debianPackage: "mariadb-server")
    static let mariadb = Tool(name: "mariadb", debianPackage: "mariadb-client")
    static let arping = Tool.arping

    static let required = [ip, nsenter, unshare, setsid, mkfsExt4, installDatabase, mariadbd, mariadb, arping]

    /// Fails with what to install when any tool is missing, before anything is made.
    static func checkInstalled() throws(LabError) {
        let missing = required.filter { $0.path == nil }
        guard missing.isEmpty else {
            let packages = Set(missing.map(\.debianPackage)).sorted().joined(separator: " ")
            throw LabError(
                .unavailable,
                "missing \(missing.map(\.name).joined(separator: ", ")) (Debian: apt-get install \(packages), or run scripts/install-dependencies.sh)")
        }
    }

    /// Runs a tool on the host and requires success.
    @discardableResult
    static func check(_ tool: Tool, _ arguments: [String], timeout: Duration = .seconds(30)) throws(LabError) -> String {
        switch tool.check(arguments, deadline: DaemonClock.now + timeout) {
        case .success(let output): return output
        case .failure(let error): throw LabError(.failed, error.description)
        }
    }
}
