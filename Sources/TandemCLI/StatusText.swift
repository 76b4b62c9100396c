import Foundation
import ReplicationCore
import ReplicationDaemon

/// The text forms of `tandem adm status`, `get-gi` and `show-gi`.
enum StatusText {
    /// drbdadm 9's `status`:
    /// ```
    /// r0 role:Primary
    ///   disk:UpToDate
    ///   bob role:Secondary
    ///     replication:SyncSource peer-disk:Inconsistent done:47.30
    /// ```
    /// The peer line shows `connection:` while the connection is not established, `role:` and `peer-disk:` once it
    /// is, and `replication:` (with `done:`) while a resync or verify runs. DRBD 8.4's connection states are shown
    /// with DRBD 9's names where they differ (WFConnection and WFReportParams are "Connecting").
    static func render(_ report: ResourceStatusReport) -> String {
        guard report.up else { return "\(report.name) role:Unconfigured\n" }
        var first = "\(report.name) role:\(report.role)"
        if let suspended = report.suspended { first += " suspended:\(suspended)" }
        if report.fencingPeer == true { first += " fence-peer:running" }
        var lines = [first]
        var disk = "  disk:\(report.disk)"
        if let outOfSync = report.outOfSyncKiB, outOfSync > 0, report.resync == nil {
            disk += " out-of-sync:\(outOfSync)"
        }
        lines.append(disk)
        if let device = report.blockDevice {
            lines.append("  device:\(device.links.first ?? device.loopDevice) loop:\(device.loopDevice)\(device.directIO ? "" : " buffered")")
        }
        let peer = report.peerNode ?? "peer"
        switch report.connection {
        case "StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe", "NetworkFailure", "ProtocolError",
            "TearDown":
            lines.append("  \(peer) connection:\(report.connection)")
        case "WFConnection", "WFReportParams":
            lines.append("  \(peer) connection:Connecting")
        default:
            lines.append("  \(peer) role:\(report.peerRole)")
            var replication = "    "
            if report.connection != "Connected" { replication += "replication:\(report.connection) " }
            replication += "peer-disk:\(report.peerDisk)"
            if let resync = report.resync {
                replication += " done:\(String(format: "%.2f", resync.percentDone))"
            }
            lines.append(replication)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// `tandem adm device`: the links and the loop device, then one line per holder.
    static func device(_ report: ResourceStatusReport) -> String {
        guard let device = report.blockDevice else {
            return "\(report.name): no block device attached (\(report.up ? report.role : "not up"); only a Primary has one)"
        }
        var lines = device.links.map { "\($0) -> \(device.loopDevice)" }
        lines.append("\(device.loopDevice): \(device.directIO ? "direct I/O" : "buffered I/O") to \(device.fuseFile)")
        let holders = report.heldOpenBy ?? []
        lines += holders.isEmpty ? ["not in use"] : holders.map { "held: \($0)" }
        return lines.joined(separator: "\n")
    }

    /// `status --json`: an array of resource objects.
    static func json(_ reports: [ResourceStatusReport]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(reports), as: UTF8.self) + "\n"
    }

    struct Generations {
        var uuids: GenerationIdentifiers
        var flags: Set<String>
    }

    /// The flags drbdmeta prints after the UUIDs, in its order.
    static let printedFlags = ["consistent", "was-up-to-date", "primary", "connected", "full-sync", "peer-outdated"]

    /// drbdadm get-gi: `CURRENT:BITMAP:HISTORY1:HISTORY2:` then the six flags as 0 or 1.
    static func terseGenerations(_ generations: Generations) -> String {
        let uuids = [generations.uuids.current, generations.uuids.bitmap, generations.uuids.history1,
                     generations.uuids.history2]
        let flags = printedFlags.map { generations.flags.contains($0) ? "1" : "0" }
        return (uuids + flags).joined(separator: ":")
    }

    /// drbdadm show-gi: the terse line with what each field means.
    static func explainedGenerations(_ generations: Generations) -> String {
        """

               +--<  Current data generation UUID  >-
               |               +--<  Bitmap's base data generation UUID  >-
               |               |                 +--<  younger history UUID  >-
               |               |                 |         +-<  older history  >-
               V               V                 V         V
        \(terseGenerations(generations))
                                                                            ^ ^ ^ ^ ^ ^
                                              -<  Data consistency flag  >--+ | | | | |
                                     -<  Data was/is currently up-to-date  >--+ | | | |
                                          -<  Node was/is currently primary  >--+ | | |
                                          -<  Node was/is currently connected  >--+ | |
                 -<  Node was in the progress of setting all bits in the bitmap  >--+ |
                                -<  The peer's disk was out-dated or inconsistent  >--+

        """
    }
}
