import DaemonSupport
import FencingCore
import MembershipCore

/// Runs fence agents the way the fence-agents programs expect: `name=value` lines on standard input (the action,
/// the node to fence as `port`, `plug` and `nodename`, then the `stonith_host` line's parameters), success as exit
/// status 0. Devices are tried in order until one succeeds.
enum FenceAgentRunner {
    /// Blocks for up to `timeout` per device: call it on a thread of its own.
    static func fence(
        _ target: String, action: FenceAction, devices: [ClusterPlan.FenceDevice], timeout: Duration, log: ClusterLog
    ) -> FenceOutcome {
        var failures: [String] = []
        for device in devices {
            var lines = ["action=\(action.rawValue)", "port=\(target)", "plug=\(target)", "nodename=\(target)"]
            lines += device.parameters.map { "\($0.name)=\($0.value)" }
            let input = Array((lines.joined(separator: "\n") + "\n").utf8)
            guard input.count <= ChildProcess.inputBytesMaximum else {
                failures.append("\(device.agentPath): its parameters exceed \(ChildProcess.inputBytesMaximum) bytes")
                continue
            }
            log.log(.info, "running fence agent \(device.agentPath) (action=\(action.rawValue) port=\(target))")
            let result = ChildProcess.run(
                [device.agentPath], environment: ["PATH": ChildProcess.searchPath], timeout: timeout, input: input)
            switch result {
            case .success(let outcome) where outcome.succeeded:
                return .succeeded(detail: "\(device.agentPath) \(firstLine(outcome.output))")
            case .success(let outcome):
                // The agent's output may echo its parameters (passwords): only its first line is kept.
                failures.append("\(device.agentPath): \(outcome.timedOut ? "timed out" : outcome.exitStatus.map { "exit \($0)" } ?? "killed by a signal") \(firstLine(outcome.output))")
            case .failure(let error):
                failures.append("\(device.agentPath): \(error)")
            }
        }
        return .failed(detail: failures.joined(separator: "; "))
    }

    private static func firstLine(_ output: String) -> String {
        let line = output.split(separator: "\n").first.map(String.init) ?? ""
        return line.isEmpty ? "" : "(\(line.prefix(200)))"
    }
}
