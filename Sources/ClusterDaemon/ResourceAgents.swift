#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import Foundation
import ResourceCore
import TandemConfig

/// Runs one start or stop of one haresources resource. Blocking: called on a thread of its own.
///
/// Agents are found in this order:
/// 1. built-in: `IPaddr`/`IPaddr2` (and a bare address), `drbddisk`, `Filesystem`, `mysqld`;
/// 2. `<config-dir>/resource.d/NAME` (Heartbeat's /etc/ha.d/resource.d), run as `NAME ARG... start|stop`;
/// 3. `/etc/init.d/NAME`, an LSB init script, run as `NAME start|stop`;
/// 4. `ocf:PROVIDER:TYPE::name=value::...`, an OCF agent under /usr/lib/ocf/resource.d, with the arguments as
///    `OCF_RESKEY_name`.
struct ResourceAgents: Sendable {
    let configDirectory: String
    /// This node's name, given to scripts as TANDEM_NODE.
    let localNode: String
    /// replicad's run directory, for drbddisk.
    let runDirectory: String
    let initDirectory: String
    let ocfRoot: String
    let log: ClusterLog

    func run(_ kind: ResourceOperation.Kind, _ resource: ResourceSpec, timeout: Duration) -> OperationOutcome {
        // Checks run every few seconds: only their failures are logged (by the resource manager), not each run.
        if kind != .monitor { log.info("Running \(resource.text) \(kind.rawValue)") }
        let deadline = DaemonClock.now + timeout
        let outcome: OperationOutcome
        switch resource.kind {
        case .ipAddress(let address):
            outcome = IPAddressAgent(address: address, log: log).run(kind, deadline: deadline)
        case .drbddisk(let name):
            outcome = DrbddiskAgent(resource: name, runDirectory: runDirectory, log: log).run(kind, deadline: deadline)
        case .filesystem(let device, let mountPoint, let fsType, let options):
            outcome = FilesystemAgent(
                device: device, mountPoint: mountPoint, fsType: fsType, options: options, log: log
            ).run(kind, deadline: deadline)
        case .script("mysqld", let arguments):
            outcome = MysqldAgent(defaultsFile: arguments.first ?? MysqldAgent.defaultDefaultsFile, log: log)
                .run(kind, deadline: deadline)
        case .script(let name, let arguments):
            outcome = runScript(name: name, arguments: arguments, kind: kind, timeout: timeout)
        }
        if case .failed(let detail) = outcome, kind != .monitor {
            log.error("\(resource.text) \(kind.rawValue) failed: \(detail)")
        } else if kind != .monitor {
            log.info("\(resource.text) \(kind.rawValue) done")
        }
        return outcome
    }

    private func runScript(
        name: String, arguments: [String], kind: ResourceOperation.Kind, timeout: Duration
    ) -> OperationOutcome {
        var environment = ["PATH": ChildProcess.searchPath, "HA_d": configDirectory, "TANDEM_NODE": localNode]
        let command: [String]
        if name.hasPrefix("ocf:") {
            let parts = name.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 3, !parts[1].isEmpty, !parts[2].isEmpty else {
                return .failed("'\(name)' is not ocf:PROVIDER:TYPE")
            }
            let script = "\(ocfRoot)/resource.d/\(parts[1])/\(parts[2])"
            guard access(script, X_OK) == 0 else {
                return .failed("OCF agent \(script) not found or not executable (Debian: apt-get install resource-agents)")
            }
            environment["OCF_ROOT"] = ocfRoot
            environment["OCF_FUNCTIONS_DIR"] = "\(ocfRoot)/lib/heartbeat"
            environment["OCF_RESOURCE_TYPE"] = String(parts[2])
            environment["OCF_RESOURCE_PROVIDER"] = String(parts[1])
            environment["OCF_RESOURCE_INSTANCE"] = String(parts[2]) + "_" + String(arguments.joined().unicodeScalars.filter { CharacterSet.alphanumerics.contains($0) }.prefix(32))
            environment["OCF_RESKEY_CRM_meta_timeout"] = String(timeout.wholeMilliseconds)
            for argument in arguments {
                guard let equals = argument.firstIndex(of: "="), equals != argument.startIndex else {
                    return .failed("OCF argument '\(argument)' is not name=value")
                }
                environment["OCF_RESKEY_" + argument[..<equals]] = String(argument[argument.index(after: equals)...])
            }
            command = [script, kind.rawValue]
        } else if access("\(configDirectory)/resource.d/\(name)", X_OK) == 0 {
            // resource.d scripts and LSB scripts are checked with `status`, OCF agents with `monitor`.
            command = ["\(configDirectory)/resource.d/\(name)"] + arguments + [kind == .monitor ? "status" : kind.rawValue]
        } else if access("\(initDirectory)/\(name)", X_OK) == 0 {
            command = ["\(initDirectory)/\(name)", kind == .monitor ? "status" : kind.rawValue]
        } else {
            return .failed(
                "no agent for '\(name)': not built in, not in \(configDirectory)/resource.d, not in \(initDirectory), not ocf:PROVIDER:TYPE")
        }
        switch ChildProcess.run(command, environment: environment, timeout: timeout) {
        case .failure(let error):
            return .failed("\(command[0]): \(error)")
        case .success(let outcome):
            if kind == .monitor {
                // OCF and LSB: 0 is running; OCF's 7 and LSB's 3 say "not running", anything else is an error.
                // resource.d scripts follow Heartbeat's convention instead: `status` prints "running" or "OK".
                let isResourceDScript = command[0].hasPrefix("\(configDirectory)/resource.d/")
                let saysRunning = ["running", "ok"].contains { outcome.output.lowercased().contains($0) }
                if outcome.succeeded && (!isResourceDScript || saysRunning) { return .succeeded }
                let said = outcome.output.split(separator: "\n").suffix(3).joined(separator: " | ")
                let meaning = (outcome.exitStatus == 7 && name.hasPrefix("ocf:")) || (outcome.exitStatus == 3 && !name.hasPrefix("ocf:"))
                    ? "not running" : "error"
                return .failed("\(command[0]) \(command.last ?? "") \(outcome) (\(meaning)): \(said)")
            }
            for line in outcome.output.split(separator: "\n").prefix(50) { log.info("\(name): \(line)") }
            // OCF: a stop of something not running is a success (7 is tolerated from agents that say so).
            if outcome.succeeded || (kind == .stop && outcome.exitStatus == 7 && name.hasPrefix("ocf:")) {
                return .succeeded
            }
            return .failed("\(command[0]) \(kind.rawValue) \(outcome)")
        }
    }
}


extension Result where Failure == ToolError {
    var outcome: OperationOutcome {
        switch self {
        case .success: .succeeded
        case .failure(let error): .failed(error.description)
        }
    }
}
