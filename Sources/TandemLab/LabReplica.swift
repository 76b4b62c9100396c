#if canImport(Glibc)
import CoreSupport
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation

/// Seed 004's replica: MariaDB on the replica machine, replicating through the VIP with GTIDs, so that it follows
/// the service from node to node. The binary log is on the replicated device (sync_binlog=1), so the node that
/// takes over serves the same log from the same position.
struct LabReplica {
    let lab: Lab

    private var machines: LabMachines { lab.machines }
    private var layout: LabLayout { lab.layout }

    func setUp() throws(LabError) {
        // The machine's /var/lib/mysql is <lab-dir>/replica/mysql, bound at boot; its my.cnf was written before.
        try machines.check(.replica, ["chown", "mysql:mysql", "/var/lib/mysql"])
        try machines.check(
            .replica, ["mariadb-install-db", "--defaults-file=/etc/mysql/my.cnf", "--user=mysql", "--skip-test-db"], timeout: .seconds(180))
        try machines.check(.replica, ["/bin/sh", "-c", "setsid mariadbd --defaults-file=/etc/mysql/my.cnf </dev/null >/dev/null 2>&1 &"])
        try lab.waitFor("MariaDB on the replica", timeout: .seconds(60)) { () -> Bool in
            (try? machines.run(.replica, ["mariadb-admin", "--defaults-file=/etc/mysql/my.cnf", "ping"], timeout: .seconds(5)))?.succeeded == true
        }
        // A primary that dies without closing the connection is noticed after slave_net_timeout; the heartbeat
        // keeps an idle link from looking dead.
        try sql("""
            SET GLOBAL slave_net_timeout = 4;
            CHANGE MASTER TO MASTER_HOST='\(layout.virtualAddress)', MASTER_PORT=\(LabLayout.mysqlPort),
                MASTER_USER='\(LabLayout.replicationUser)', MASTER_PASSWORD='\(LabLayout.replicationPassword)',
                MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1;
            START SLAVE;
            """)
        try lab.waitFor("the replica to copy the lab's table", timeout: .seconds(60)) { () -> Bool in
            (try? sql("SELECT COUNT(*) FROM \(LabLayout.databaseName).commits")) != nil
        }
        lab.say("    replica \(layout.serviceAddress(.replica)) replicates from \(layout.virtualAddress) (GTID, slave_pos)")
    }

    /// Waits until the replica's IO thread has received everything the serving node logged: it then streams from
    /// that node. Before a frozen or cut-off node comes back, the lab waits for this. A replica still connected to
    /// the stale node would receive what that node commits locally when it resumes (a transaction under a GTID
    /// the new node also uses for a different one) and silently diverge. STONITH (`lab up --stonith`) powers the
    /// stale node off before it can commit; without it this wait keeps the scenario about the cluster.
    func waitUntilFollowingTheServingNode(timeout: Duration) throws(LabError) {
        let sqlClient = LabSQL(layout: layout)
        let position = try sqlClient.run(sqlClient.options(), ["SELECT @@gtid_binlog_pos"]).first?.rows.first?.first.flatMap { $0 } ?? ""
        var received = ""
        do throws(LabError) {
            // The workload still runs: the replica has caught up with the serving node once it has received at
            // least what that node had logged when we looked.
            try lab.waitFor("the replica to stream from the serving node", timeout: timeout) { () -> Bool in
                guard let status = try? slaveStatus() else { return false }
                received = status["Gtid_IO_Pos"] ?? ""
                guard let have = Self.sequence(received), let want = Self.sequence(position) else { return false }
                return have >= want && status["Slave_IO_Running"] == "Yes"
            }
        } catch {
            throw LabError(.failed, "the replica did not reconnect to the serving node: it received \(received), the node is at \(position)")
        }
    }

    /// The sequence number of a one-domain GTID position ("0-1-1234" -> 1234); the lab's servers use domain 0 only.
    static func sequence(_ position: String) -> UInt64? {
        position.split(separator: ",").count == 1 ? position.split(separator: "-").last.flatMap { UInt64($0) } : nil
    }

    /// Waits until the replica has applied everything the primary logged, with both threads running and no error,
    /// then compares the run's rows. Returns a one-line summary; throws when the replica is broken or differs.
    func check(runID: Int32, primaryCounts: [Int64: Int]) throws(LabError) -> String {
        let sqlClient = LabSQL(layout: layout)
        let primaryPosition = try sqlClient.run(sqlClient.options(), ["SELECT @@gtid_binlog_pos"]).first?.rows.first?.first.flatMap { $0 } ?? ""
        var status: [String: String] = [:]
        do throws(LabError) {
            try lab.waitFor("the replica to catch up with \(primaryPosition)", timeout: .seconds(90)) { () -> Bool in
                guard let current = try? slaveStatus() else { return false }
                status = current
                return status["Gtid_Slave_Pos"] == primaryPosition && status["Slave_SQL_Running"] == "Yes"
            }
        } catch {
            throw LabError(
                .failed,
                "the replica did not catch up: primary at \(primaryPosition), replica at \(status["Gtid_Slave_Pos"] ?? "?"), IO \(status["Slave_IO_Running"] ?? "?"), SQL \(status["Slave_SQL_Running"] ?? "?"), last error \(status["Last_Error"] ?? "")")
        }
        guard status["Last_Errno"] == "0" || status["Last_Errno"] == nil else {
            throw LabError(.failed, "the replica reports error \(status["Last_Errno"] ?? ""): \(status["Last_Error"] ?? "")")
        }
        let replicaCounts = try lab.rowCounts(runID: runID, at: layout.serviceAddress(.replica))
        guard replicaCounts == primaryCounts else {
            let missing = primaryCounts.keys.filter { replicaCounts[$0] == nil }.count
            let extra = replicaCounts.keys.filter { primaryCounts[$0] == nil }.count
            throw LabError(.failed, "the replica's rows differ from the primary's: \(missing) missing, \(extra) extra")
        }
        return "caught up at GTID \(primaryPosition), \(replicaCounts.count) rows of this run identical to the primary's, "
            + "IO \(status["Slave_IO_Running"] ?? "?"), SQL \(status["Slave_SQL_Running"] ?? "?"), no errors"
    }

    /// SHOW SLAVE STATUS as field -> value, and @@gtid_slave_pos as Gtid_Slave_Pos.
    func slaveStatus() throws(LabError) -> [String: String] {
        var status: [String: String] = [:]
        let output = try machines.check(.replica, ["mariadb", "--defaults-file=/etc/mysql/my.cnf", "-e", "SHOW SLAVE STATUS\\G"])
        for line in output.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            status[key] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        guard !status.isEmpty else { throw LabError(.failed, "the replica is not configured as a replica") }
        status["Gtid_Slave_Pos"] = try sql("SELECT @@gtid_slave_pos").trimmingCharacters(in: .whitespacesAndNewlines)
        return status
    }

    /// Runs SQL as root over the replica's socket; tab-separated output without headers.
    @discardableResult
    private func sql(_ statements: String) throws(LabError) -> String {
        try machines.check(.replica, ["mariadb", "--defaults-file=/etc/mysql/my.cnf", "--batch", "--skip-column-names", "-e", statements])
    }
}
