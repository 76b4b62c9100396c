import ReplicationDaemon
import Testing

@testable import TandemCLI

/// `tandem adm status`, `get-gi` and `show-gi` as text.
@Suite("Status text")
struct StatusTextTests {
    static func report(
        connection: String, role: String = "Primary", disk: String = "UpToDate", peerRole: String = "Secondary",
        peerDisk: String = "UpToDate"
    ) -> ResourceStatusReport {
        var report = ResourceStatusReport(name: "r0", node: "alpha", peerNode: "beta")
        report.up = true
        report.role = role
        report.disk = disk
        report.connection = connection
        report.peerRole = peerRole
        report.peerDisk = peerDisk
        report.outOfSyncKiB = 0
        return report
    }

    @Test("established: the peer's role and disk; resyncing: the replication state and done, as drbdadm 9")
    func established() {
        #expect(
            StatusText.render(Self.report(connection: "Connected"))
                == "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    peer-disk:UpToDate\n")
        var syncing = Self.report(connection: "SyncSource", peerDisk: "Inconsistent")
        syncing.resync = ResyncReport(
            direction: "source", percentDone: 47.3, totalKiB: 1000, remainingKiB: 527, speedKiBPerSecond: 10,
            etaSeconds: 52, paused: false)
        #expect(
            StatusText.render(syncing)
                == "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    replication:SyncSource peer-disk:Inconsistent done:47.30\n")
    }

    @Test("a Primary's block device: a device line in status; adm device lists links, the loop device and holders")
    func blockDevice() {
        var report = Self.report(connection: "Connected")
        report.blockDevice = BlockDeviceReport(
            loopDevice: "/dev/loop3", links: ["/dev/drbd0", "/dev/tandem/by-res/r0"], fuseFile: "/run/tandem/fuse/r0/r0",
            directIO: true, flushesCompleted: 7)
        #expect(
            StatusText.render(report)
                == "r0 role:Primary\n  disk:UpToDate\n  device:/dev/drbd0 loop:/dev/loop3\n  beta role:Secondary\n    peer-disk:UpToDate\n")
        report.heldOpenBy = ["mounted at /data (pid 812 mariadbd)"]
        #expect(
            StatusText.device(report)
                == "/dev/drbd0 -> /dev/loop3\n/dev/tandem/by-res/r0 -> /dev/loop3\n/dev/loop3: direct I/O to /run/tandem/fuse/r0/r0\nheld: mounted at /data (pid 812 mariadbd)")
        #expect(StatusText.device(Self.report(connection: "Connected", role: "Secondary")).contains("no block device attached"))
    }

    @Test("not established: the connection state (WFConnection is Connecting); out-of-sync shown on the disk line")
    func notEstablished() {
        var waiting = Self.report(connection: "WFConnection", peerRole: "Unknown", peerDisk: "DUnknown")
        waiting.outOfSyncKiB = 8
        #expect(
            StatusText.render(waiting) == "r0 role:Primary\n  disk:UpToDate out-of-sync:8\n  beta connection:Connecting\n")
        #expect(
            StatusText.render(Self.report(connection: "StandAlone", role: "Secondary"))
                == "r0 role:Secondary\n  disk:UpToDate\n  beta connection:StandAlone\n")
        #expect(
            StatusText.render(ResourceStatusReport(name: "r0", node: "alpha", peerNode: "beta"))
                == "r0 role:Unconfigured\n")
    }

    @Test("get-gi: four UUIDs and drbdmeta's six flags; show-gi explains them")
    func generations() {
        let generations = StatusText.Generations(
            uuids: GenerationIdentifiers(current: 0xC9A5_A0CC_6A9B_8DE5, bitmap: 0, history1: 0x0C2A_6B7E_4EFD_D3A4, history2: 4),
            flags: ["consistent", "was-up-to-date", "primary", "al-clean"])
        #expect(
            StatusText.terseGenerations(generations)
                == "C9A5A0CC6A9B8DE5:0000000000000000:0C2A6B7E4EFDD3A4:0000000000000004:1:1:1:0:0:0")
        let explained = StatusText.explainedGenerations(generations)
        #expect(explained.contains(StatusText.terseGenerations(generations)))
        #expect(explained.contains("Data consistency flag"))
    }
}
