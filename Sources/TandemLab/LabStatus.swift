import Foundation

extension Lab {
    /// The command line that enters a machine (for people: a shell, `tandem cl-status`, `mariadb`).
    public func enterCommand(_ host: LabHost) -> [String] {
        let pid = machines.initPID(host).map(String.init) ?? "PID"
        return ["nsenter", "-t", pid, "-m", "-u", "-n", "-p", "-r", "-w"]
    }

    /// `lab status`: each node as its daemons and kernel report it, who serves, and the replica.
    public func statusLines() throws(LabError) -> [String] {
        let state = try loadState()
        let observations = LabHost.nodes.map(observe)
        var lines = observations.map(\.summary)
        if let active = activeNode(observations) {
            lines.append("service: \(active.rawValue) serves MariaDB at \(layout.virtualAddress):\(LabLayout.mysqlPort)")
        } else {
            lines.append("service: not served by exactly one node (a failover in progress, or a problem)")
        }
        if state.withReplica {
            if machines.isRunning(.replica), let output = try? machines.check(
                .replica, ["mariadb", "--defaults-file=/etc/mysql/my.cnf", "-e", "SHOW SLAVE STATUS\\G"], timeout: .seconds(10))
            {
                let wanted = ["Slave_IO_Running", "Slave_SQL_Running", "Gtid_IO_Pos", "Seconds_Behind_Master", "Last_Error"]
                let fields = output.split(separator: "\n").compactMap { line -> String? in
                    let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                    guard parts.count == 2, wanted.contains(parts[0]), !parts[1].isEmpty else { return nil }
                    return "\(parts[0]) \(parts[1])"
                }
                lines.append("replica: " + fields.joined(separator: ", "))
            } else {
                lines.append("replica: not answering")
            }
        }
        return lines
    }
}
