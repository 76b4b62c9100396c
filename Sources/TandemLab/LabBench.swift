import CoreSupport
import DaemonSupport
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

    /// `lab bench`'s second part: sysbench oltp_write_only from the client machine through the VIP, first with the
    /// resource replicating (protocol C), then with the active node disconnected from its peer (StandAlone: writes go
    /// to the local disk only), side by side in one run. The peer resyncs afterwards.
    public func benchThroughput(seconds: Int, threads: Int) throws(LabError) -> [String] {
        precondition((5...3600).contains(seconds) && (1...64).contains(threads), "bench \(seconds) s, \(threads) threads out of range")
        let sysbench = Tool(name: "sysbench", debianPackage: "sysbench")
        guard sysbench.path != nil else { throw LabError(.unavailable, "sysbench is not installed (Debian: apt-get install sysbench)") }
        let active = try waitForHealthy(timeout: .seconds(180))
        let common = [
            "sysbench", "oltp_write_only", "--db-driver=mysql", "--mysql-host=\(layout.virtualAddress)",
            "--mysql-port=\(LabLayout.mysqlPort)", "--mysql-user=\(LabLayout.databaseUser)",
            "--mysql-password=\(LabLayout.databasePassword)", "--mysql-db=\(LabLayout.databaseName)", "--tables=4",
            "--table-size=10000",
        ]
        step("sysbench: preparing 4 tables of 10000 rows through the VIP")
        _ = try? machines.run(.client, common + ["cleanup"], timeout: .seconds(120))
        try machines.check(.client, common + ["prepare"], timeout: .seconds(300))
        defer { _ = try? machines.run(.client, common + ["cleanup"], timeout: .seconds(120)) }
        func run(_ label: String) throws(LabError) -> Double {
            step("sysbench: \(label), \(threads) threads, \(seconds) s")
            let output = try machines.check(
                .client, common + ["--threads=\(threads)", "--time=\(seconds)", "--events=0", "run"], timeout: .seconds(Int64(seconds) + 120))
            // "    transactions:                        12345  (411.47 per sec.)"
            guard let line = output.split(separator: "\n").first(where: { $0.contains("transactions:") }),
                let open = line.firstIndex(of: "("), let rate = Double(line[line.index(after: open)...].split(separator: " ").first ?? "")
            else { throw LabError(.failed, "cannot read sysbench's result: \(output.suffix(400))") }
            say("    \(String(format: "%.1f", rate)) transactions/s")
            return rate
        }
        let replicated = try run("replicated (protocol C, \(active.rawValue) -> \(active.peer.rawValue))")
        try machines.tandem(active, ["adm", "disconnect", LabLayout.resourceName])
        let unreplicated: Double
        do throws(LabError) {
            unreplicated = try run("unreplicated (\(active.rawValue) disconnected from its peer)")
        } catch {
            _ = try? machines.tandem(active, ["adm", "connect", LabLayout.resourceName])
            throw error
        }
        try machines.tandem(active, ["adm", "connect", LabLayout.resourceName])
        step("sysbench: the peer resyncs")
        try waitForHealthy(timeout: .seconds(300))
        return [
            "sysbench oltp_write_only through the VIP, \(threads) threads, \(seconds) s each:",
            "  replicated (protocol C)  \(String(format: "%8.1f", replicated)) transactions/s",
            "  unreplicated             \(String(format: "%8.1f", unreplicated)) transactions/s",
            "  replicated / unreplicated = \(String(format: "%.2f", replicated / max(unreplicated, 0.001)))",
        ]
    }
}
