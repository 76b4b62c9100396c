import Foundation
import ReplicationDaemon

/// `tandem adm proc`: the resources in /proc/drbd's DRBD 8.4 layout, which monitoring scripts and operators' eyes
/// know:
/// ```
///  0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
///     ns:180441216 nr:0 dw:0 dr:180441216 al:16 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:794704668
///         [==>.................] sync'ed: 18.6% (776076/952288)M
///         finish: 5:27:02 speed: 40,480 (avg) K/sec
/// ```
/// `wo:f`: writes are ordered by flushes (fdatasync), DRBD's flush method.
enum ProcText {
    static let header = "version: Tandem (DRBD 8.4 compatible; api:1/proto:86-101)"

    static func render(_ reports: [ResourceStatusReport]) -> String {
        ([header] + reports.map(resource)).joined(separator: "\n") + "\n"
    }

    static func resource(_ report: ResourceStatusReport) -> String {
        let minor = String(format: "%2d", report.minor ?? report.volume)
        guard report.up else { return "\(minor): cs:Unconfigured" }
        let protocolLetter = report.replicationProtocol ?? "C"
        var lines = [
            "\(minor): cs:\(report.connection) ro:\(report.role)/\(report.peerRole) "
                + "ds:\(report.disk)/\(report.peerDisk) \(protocolLetter) r-----"
        ]
        let oos = report.outOfSyncKiB ?? 0
        if let counters = report.counters {
            lines.append(
                "    ns:\(counters.networkSentKiB) nr:\(counters.networkReceivedKiB) dw:\(counters.diskWrittenKiB) "
                    + "dr:\(counters.diskReadKiB) al:\(counters.activityLogUpdates) bm:\(counters.bitmapUpdates) "
                    + "lo:\(counters.localPending) pe:\(counters.peerPending) ua:\(counters.unacknowledged) "
                    + "ap:\(counters.applicationPending) ep:\(counters.epochs) wo:f oos:\(oos)")
        }
        if let resync = report.resync {
            lines.append("\t\(progressBar(permille: Int(resync.percentDone * 10))) sync'ed:"
                + "\(String(format: "%5.1f", resync.percentDone))% \(remaining(resync))")
            let finish = resync.etaSeconds.map(duration) ?? "-:--:--"
            lines.append(
                "\tfinish: \(finish) speed: \(grouped(resync.speedKiBPerSecond)) (avg) K/sec"
                    + (resync.paused ? " (paused)" : ""))
        }
        return lines.joined(separator: "\n")
    }

    /// DRBD's 20-character bar: `=` for each 5% done but the last, `>`, then `.` for what remains.
    static func progressBar(permille: Int) -> String {
        let done = min(max(permille, 0), 1000) / 50
        return "[" + String(repeating: "=", count: max(done - 1, 0)) + ">"
            + String(repeating: ".", count: 20 - max(done, 1)) + "]"
    }

    /// `(remaining/total)M`, in MiB from 1 GiB up and in KiB below, as DRBD switches units.
    static func remaining(_ resync: ResyncReport) -> String {
        resync.totalKiB >= 1 << 20
            ? "(\(resync.remainingKiB >> 10)/\(resync.totalKiB >> 10))M" : "(\(resync.remainingKiB)/\(resync.totalKiB))K"
    }

    static func duration(_ seconds: UInt64) -> String {
        String(format: "%llu:%02llu:%02llu", seconds / 3600, seconds / 60 % 60, seconds % 60)
    }

    /// 40480 -> "40,480", as DRBD prints speeds.
    static func grouped(_ value: UInt64) -> String {
        var digits = Array(String(value))
        var index = digits.count - 3
        while index > 0 {
            digits.insert(",", at: index)
            index -= 3
        }
        return String(digits)
    }
}
