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
            if machines.isRunning(.replica), let status = try? LabReplica(lab: self).slaveStatus() {
                let wanted = ["Slave_IO_Running", "Slave_SQL_Running", "Gtid_Slave_Pos", "Seconds_Behind_Master", "Last_Error"]
                let fields = wanted.compactMap { key in status[key].flatMap { $0.isEmpty ? nil : "\(key) \($0)" } }
                lines.append("replica: " + fields.joined(separator: ", "))
            } else {
                lines.append("replica: not answering")
            }
        }
        return lines
    }
}
