import Foundation

extension Lab {
    /// `lab bench`: repeated kill-node trials, each phase's min/median/max over the trials.
    public func benchFailover(trials: Int) throws(LabError) -> [String] {
        precondition((1...100).contains(trials), "trials \(trials) out of 1...100")
        var reports: [ScenarioReport] = []
        for trial in 1...trials {
            step("trial \(trial) of \(trials)")
            let report = try run(.killNode, loadAfterRecovery: .seconds(1))
            for line in report.lines() { say(line) }
            guard report.passed else { throw LabError(.failed, "trial \(trial) failed: \(report.problems.joined(separator: "; "))") }
            reports.append(report)
        }
        var labels: [String] = []
        for report in reports { for entry in report.timeline where !labels.contains(entry.label) { labels.append(entry.label) } }
        var lines = ["kill-node, \(trials) trials: milliseconds after the fault (min / median / max)"]
        for label in labels {
            let values = reports.compactMap { report in report.timeline.first { $0.label == label }?.millisecondsAfterFault }.sorted()
            guard !values.isEmpty else { continue }
            lines.append("  \(label.padding(toLength: 40, withPad: " ", startingAt: 0)) \(values.first!) / \(values[values.count / 2]) / \(values.last!)  (\(values.count) trials)")
        }
        let acknowledged = reports.compactMap(\.verdict).map(\.acknowledged).reduce(0, +)
        let lost = reports.compactMap(\.verdict).map(\.lost.count).reduce(0, +)
        lines.append("  acknowledged commits \(acknowledged), lost \(lost)")
        return lines
    }
}
