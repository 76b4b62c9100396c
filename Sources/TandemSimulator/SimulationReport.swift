/// Formats a failed run for test output: the violations, the trace tail and the replay command.
public enum SimulationReport {
    public static func failure(_ result: SimulationResult) -> String {
        var lines = ["FAIL \(result.summary)"]
        lines += result.violations.map { "  violation: \($0)" }
        lines += result.trace.suffix(30).map { "  | \($0)" }
        lines.append("  replay: \(result.options.replayCommand) --trace")
        return lines.joined(separator: "\n")
    }
}
