#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ClusterDaemon
import Foundation
import TandemTestSupport
import Testing

/// The seeds' Heartbeat tests (seed 004 section 5) against real heartbeatd processes in network namespaces, each
/// asserted from the client's side (who answers on the floating address) and from status.
@Suite("heartbeatd in network namespaces", .serialized, .timeLimit(.minutes(10)))
struct HeartbeatClusterTests {
    static let group = "node1 IPaddr2::\(HeartbeatLab.virtualAddress)/24/eth3 hbservice::\(HeartbeatLab.virtualAddress)"

    func bothUp(_ lab: HeartbeatLab) async throws {
        try await lab.start(lab.node1)
        try await lab.start(lab.node2)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node1" }, "\(lab.describe())")
        #expect(await eventually(timeout: patience) { lab.status(lab.node2)?.status == "active" }, "\(lab.describe())")
    }

    @Test func normalStateCleanStopAndAutoFailbackOn() async throws {
        let lab = try HeartbeatLab(haresources: Self.group)
        defer { lab.tearDown() }
        try await bothUp(lab)
        #expect(lab.holdsAddress(lab.node1) && !lab.holdsAddress(lab.node2))
        let node1 = try #require(lab.status(lab.node1))
        #expect(node1.resourcesHeld == "local")
        #expect(node1.peers.first?.links.map(\.status) == ["up", "up"])

        // The active node's daemon stopped cleanly: the peer takes over at once (shutdone), not after deadtime.
        await lab.stop(lab.node1)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        #expect(!lab.holdsAddress(lab.node1))
        #expect(lab.haLog(lab.node2).contains("Received shutdown notice from 'node1'."))
        #expect(lab.haLog(lab.node1).contains("All HA resources relinquished."))

        // auto_failback on: node1 takes its group back when it returns.
        try await lab.start(lab.node1)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node1" }, "\(lab.describe())")
        #expect(await eventually(timeout: patience) { !lab.holdsAddress(lab.node2) }, "\(lab.describe())")
    }

    @Test func activeNodeKilledAndAutoFailbackOff() async throws {
        let lab = try HeartbeatLab(haresources: Self.group, autoFailback: "off")
        defer { lab.tearDown() }
        try await bothUp(lab)
        await lab.crash(lab.node1)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        // The address answers as soon as it is up; heartbeatd logs the takeover's end after its last resource.
        #expect(await eventually(timeout: patience) {
            lab.haLog(lab.node2).contains("mach_down takeover complete for node node1.")
        }, "\(lab.haLog(lab.node2))")
        let log = lab.haLog(lab.node2)
        #expect(log.contains("node node1: is dead"))
        #expect(log.contains("Resources being acquired from node1."))

        // auto_failback off: node1 comes back and the group stays where it is.
        try lab.powerOn(lab.node1)
        try await lab.start(lab.node1)
        #expect(await eventually(timeout: patience) { lab.status(lab.node1)?.status == "active" }, "\(lab.describe())")
        #expect(lab.answeringNode() == "node2")
        #expect(!lab.holdsAddress(lab.node1))
        #expect(lab.status(lab.node1)?.resourcesHeld == "none")
    }

    /// ha.cf's `alert` programs hear of the events, with the event in their environment.
    @Test func alertProgramsHearOfTheDeathAndTheTakeover() async throws {
        let script = NSTemporaryDirectory() + "tandem-alert-\(getpid()).sh"
        let events = script + ".log"
        defer {
            unlink(script)
            unlink(events)
        }
        try """
            #!/bin/sh
            echo "$TANDEM_ALERT_NODE $TANDEM_ALERT_KIND $TANDEM_ALERT_TIMESTAMP $TANDEM_ALERT_DETAIL" >> \(events)
            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let lab = try HeartbeatLab(haresources: Self.group, haCfExtra: "alert \(script)", autoFailback: "off")
        defer { lab.tearDown() }
        try await bothUp(lab)
        await lab.crash(lab.node1)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        func lines() -> [String] { ((try? String(contentsOfFile: events, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init) }
        #expect(await eventually(timeout: patience) { lines().contains { $0.hasPrefix("node2 takeover ") } }, "\(lines())")
        let kinds = lines().filter { $0.hasPrefix("node2 ") }.map { $0.split(separator: " ")[1] }
        #expect(kinds.contains("link-down") && kinds.contains("node-dead") && kinds.contains("takeover"), "\(lines())")
        #expect(lines().contains { $0.hasPrefix("node2 node-dead ") && $0.hasSuffix("node1 is dead (no message for deadtime)") }, "\(lines())")
    }

    @Test func takeoverAndStandbyBothWays() async throws {
        let lab = try HeartbeatLab(haresources: Self.group)
        defer { lab.tearDown() }
        try await bothUp(lab)
        let standby = await lab.moveAccepted(lab.node1, ["standby"])
        #expect(standby.accepted, "\(standby.lastError)")
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        #expect(!lab.holdsAddress(lab.node1))

        let takeover = await lab.moveAccepted(lab.node1, ["takeover"])
        #expect(takeover.accepted, "\(takeover.lastError)")
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node1" }, "\(lab.describe())")
        #expect(await eventually(timeout: patience) { !lab.holdsAddress(lab.node2) })

        // From the other side: node2 takes over, then gives the group back with standby.
        #expect(await eventually(timeout: patience) { lab.status(lab.node2)?.exchange == nil && lab.status(lab.node1)?.exchange == nil })
        let fromNode2 = await lab.moveAccepted(lab.node2, ["takeover", "foreign"])
        #expect(fromNode2.accepted, "\(fromNode2.lastError)")
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        #expect(await eventually(timeout: patience) { lab.status(lab.node2)?.exchange == nil && lab.status(lab.node1)?.exchange == nil })
        let back = await lab.moveAccepted(lab.node2, ["standby", "foreign"])
        #expect(back.accepted, "\(back.lastError)")
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node1" }, "\(lab.describe())")

        // Nothing to take: refused with exit 10 and a reason. The address answers before the group's last resource has
        // started; until then the refusal is "still starting", so wait for node1 to be settled holding its group.
        #expect(await eventually(timeout: patience) { lab.status(lab.node1)?.resourcesHeld == "local" }, "\(lab.describe())")
        let refused = try lab.tandem(lab.node1, ["takeover"])
        #expect(refused.status == 10)
        #expect(refused.standardError.contains("holds no all resource group"))

        let queries = try lab.tandem(lab.node1, ["cl-status", "hblinkstatus", "node2", "eth2"])
        #expect(queries.standardOutput == "up\n")
        #expect(try lab.tandem(lab.node1, ["cl-status", "rscstatus"]).standardOutput == "local\n")
        #expect(try lab.tandem(lab.node1, ["cl-status", "listnodes"]).standardOutput == "node1\nnode2\n")
        // The acquisition epochs seen (node1's initial acquisition, the moves since) are kept for the next start.
        let epoch = try String(contentsOfFile: lab.node1.stateDirectory + "/acquisition_epoch", encoding: .utf8)
        #expect((UInt64(epoch.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0) >= 2, "\(epoch)")
    }

    @Test func oneLinkCutIsNoFailoverAllLinksCutIsSplitBrain() async throws {
        let lab = try HeartbeatLab(haresources: Self.group)
        defer { lab.tearDown() }
        try await bothUp(lab)

        try lab.setLink(lab.node1, "eth1", up: false)
        #expect(await eventually(timeout: patience) { lab.haLog(lab.node2).contains("Link node1:eth1 dead.") }, "\(lab.describe())")
        #expect(lab.status(lab.node2)?.peers.first?.links.map(\.status) == ["dead", "up"])
        #expect(lab.status(lab.node2)?.peers.first?.status == "active")
        #expect(lab.answeringNode() == "node1")
        #expect(!lab.holdsAddress(lab.node2))

        // Every link cut: R1 behaviour, both nodes take the group (the next issue's fencing prevents it).
        try lab.setLink(lab.node1, "eth2", up: false)
        #expect(await eventually(timeout: patience) { lab.holdsAddress(lab.node2) }, "\(lab.describe())")
        #expect(lab.holdsAddress(lab.node1))
        #expect(lab.haLog(lab.node2).contains("node node1: is dead"))

        // Healed: both see the partition end, the logs say split brain, and one owner remains: node2, which acquired
        // the group later (node1 only kept what it had), so node1 releases it.
        try lab.setLink(lab.node1, "eth1", up: true)
        try lab.setLink(lab.node1, "eth2", up: true)
        #expect(await eventually(timeout: patience) { !lab.holdsAddress(lab.node1) }, "\(lab.describe())")
        // node1 may release on node2's first message, before node2 has logged the partition's end: wait for it.
        #expect(await eventually(timeout: patience) { lab.haLog(lab.node2).contains("returning after partition") }, "\(lab.describe())")
        #expect(lab.haLog(lab.node1).contains("split brain): releasing it to node2 (acquisition epochs: node1 1, node2 2"))
        #expect(lab.holdsAddress(lab.node2))
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
    }

    @Test func aFailedStartMovesTheGroupAndAHungStopIsKilled() async throws {
        let lab = try HeartbeatLab(
            haresources: "node1 IPaddr2::\(HeartbeatLab.virtualAddress)/24/eth3 hbservice::\(HeartbeatLab.virtualAddress) flaky",
            haCfExtra: "resource_stop_timeout 2")
        defer { lab.tearDown() }
        // flaky: its start fails on node1; its first stop on node2 hangs (a marker file says which stop is first).
        try lab.addScript("flaky", """
            case "$1" in
            start) [ "$TANDEM_NODE" = node1 ] && { echo "cannot start here"; exit 1; }; exit 0 ;;
            stop) if [ "$TANDEM_NODE" = node2 ] && [ ! -f "$HA_d/hung-once" ]; then touch "$HA_d/hung-once"; exec sleep 600; fi; exit 0 ;;
            status) echo running ;;
            esac
            """)
        try await lab.start(lab.node1)
        try await lab.start(lab.node2)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        #expect(lab.haLog(lab.node1).contains("Giving up resources due to failure of flaky"))
        #expect(!lab.holdsAddress(lab.node1))

        // The service answers before the group's last resource (flaky) has started: wait for all of it.
        #expect(await eventually(timeout: patience) { lab.status(lab.node2)?.groups.first?.state == "running" })
        // node2's stop of flaky hangs: it is killed after resource_stop_timeout and retried; the group is released.
        await lab.stop(lab.node2)
        let log = lab.haLog(lab.node2)
        #expect(log.contains("stop of flaky failed"), "\(log)")
        #expect(log.contains("timed out"), "\(log)")
        #expect(log.contains("All HA resources relinquished."))
        #expect(!lab.holdsAddress(lab.node2))
    }

    /// The built-in mysqld agent starts a real MariaDB from the node's my.cnf after the address, restarts it on the
    /// peer when the active node dies, and shuts it down cleanly when heartbeatd stops.
    @Test func mysqldStartsFailsOverAndStopsCleanly() async throws {
        let lab = try HeartbeatLab(haresources: "")
        defer { lab.tearDown() }
        for node in lab.nodes {
            try await lab.installDatabase(node)
            // Each node's own my.cnf (no shared storage here; the lab issue puts the datadir on the replicated device).
            try "node1 IPaddr2::\(HeartbeatLab.virtualAddress)/24/eth3 mysqld::\(node.mysqlDefaultsFile)\n"
                .write(toFile: node.configDirectory + "/haresources", atomically: true, encoding: .utf8)
        }
        try await lab.start(lab.node1)
        try await lab.start(lab.node2)
        #expect(await eventually(timeout: patience) { lab.query(lab.node1, "SELECT 1") == "1" }, "\(lab.describe())")
        #expect(await eventually(timeout: patience) { lab.status(lab.node1)?.groups.first?.state == "running" })
        #expect(lab.mysqldPID(lab.node2) == nil)

        await lab.crash(lab.node1)
        #expect(await eventually(timeout: patience) { lab.query(lab.node2, "SELECT 1") == "1" }, "\(lab.describe())")
        #expect(lab.holdsAddress(lab.node2))

        let server = try #require(lab.mysqldPID(lab.node2))
        await lab.stop(lab.node2)
        #expect(kill(server, 0) != 0, "mariadbd (pid \(server)) still runs after heartbeatd released the group")
        let errorLog = (try? String(contentsOfFile: lab.node2.mysqlDirectory + "/mysqld.err", encoding: .utf8)) ?? ""
        #expect(errorLog.contains("Shutdown complete"), "\(errorLog.suffix(500))")
    }

    /// Debian's ocf:heartbeat:Filesystem, unchanged, mounts an ext4 image (one per node: no shared storage here) in
    /// heartbeatd's mount namespace, and unmounts it when the group moves.
    @Test func debiansOCFFilesystemMountsAndUnmounts() async throws {
        let agent = "/usr/lib/ocf/resource.d/heartbeat/Filesystem"
        try #require(FileManager.default.isExecutableFile(atPath: agent), "\(agent) not found: install resource-agents")
        let mkfs = try #require(ExternalCommand.tool("mkfs.ext4"), "mkfs.ext4 not found: install e2fsprogs")
        let lab = try HeartbeatLab(haresources: "")
        defer { lab.tearDown() }
        // One image for both nodes, as shared storage: R1's ordering (unmount on one before mount on the other) is
        // what keeps it from being mounted twice. haresources is the same on both, as it must be.
        let image = lab.root + "/fs.img"
        try #require(FileManager.default.createFile(atPath: image, contents: nil))
        try FileHandle(forWritingAtPath: image)!.truncate(atOffset: 64 << 20)
        let made = try await ExternalCommand.runDetached(mkfs, ["-q", "-F", image])
        try #require(made.status == 0, "\(made.standardError)")
        for node in lab.nodes {
            try """
                node1 ocf:heartbeat:Filesystem::device=\(image)::directory=\(lab.root)/data::fstype=ext4::options=loop \\
                    IPaddr2::\(HeartbeatLab.virtualAddress)/24/eth3 hbservice::\(HeartbeatLab.virtualAddress)

                """.write(toFile: node.configDirectory + "/haresources", atomically: true, encoding: .utf8)
        }
        try await lab.start(lab.node1)
        try await lab.start(lab.node2)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node1" }, "\(lab.describe())")
        #expect(lab.mountedData(lab.node1))
        #expect(!lab.mountedData(lab.node2))

        let standby = await lab.moveAccepted(lab.node1, ["standby"])
        #expect(standby.accepted, "\(standby.lastError)")
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        #expect(await eventually(timeout: patience) { !lab.mountedData(lab.node1) },
            "node1 still has its file system mounted after standby: \(lab.haLog(lab.node1).split(separator: "\n").filter { $0.contains("Filesystem") }.suffix(12).joined(separator: "\n"))")
        #expect(lab.mountedData(lab.node2))
    }

    @Test func debiansOCFIPaddr2WorksInPlaceOfTheBuiltIn() async throws {
        let agent = "/usr/lib/ocf/resource.d/heartbeat/IPaddr2"
        try #require(FileManager.default.isExecutableFile(atPath: agent), "\(agent) not found: install resource-agents")
        let lab = try HeartbeatLab(
            haresources: "node1 ocf:heartbeat:IPaddr2::ip=\(HeartbeatLab.virtualAddress)::cidr_netmask=24::nic=eth3 hbservice::\(HeartbeatLab.virtualAddress)")
        defer { lab.tearDown() }
        try await bothUp(lab)
        await lab.crash(lab.node1)
        #expect(await eventually(timeout: patience) { lab.answeringNode() == "node2" }, "\(lab.describe())")
        #expect(lab.holdsAddress(lab.node2))
    }
}
