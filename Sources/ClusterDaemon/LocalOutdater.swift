#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import ReplicationCore
import ReplicationDaemon
import TandemConfig

/// Carries out the peer's outdate request here (what dopd did on the receiving side): looks at the resource in
/// replicad and outdates its disk, answering with DRBD's fence-peer code.
///
/// The peer asks because it lost the replication connection; this side may not have noticed yet (it notices within
/// its ping-int and ping-timeout). replicad refuses to outdate a connected disk, so the outdater waits up to
/// `disconnectWait` for the connection to go, then answers `refused`: a fence that failed, never a false success.
struct LocalOutdater: Sendable {
    let runDirectory: String
    let log: ClusterLog

    static let disconnectWait: Duration = .seconds(15)
    static let pollInterval: Duration = .milliseconds(200)

    func outdate(_ resource: String) -> (FencePeerExitCode, String) {
        let client = ControlClient(runDirectory: runDirectory)
        let giveUpAt = DaemonClock.now + Self.disconnectWait
        var lastRefusal = ""
        while true {
            let report: ResourceStatusReport
            do {
                let response = try client.send(ControlRequest(verb: .status, resource: resource), answerTimeout: .seconds(5))
                guard let status = response.status, status.up else {
                    return (.peerUnreachable, "replicad does not run \(resource) here (\(response.message ?? "not up"))")
                }
                report = status
            } catch {
                return (.peerUnreachable, "replicad does not answer here: \(error.message)")
            }
            if report.role == Role.primary.rawValue { return (.peerIsPrimary, "\(resource) is Primary here") }
            if report.disk == DiskState.outdated.description { return (.peerOutdated, "\(resource) was already Outdated") }
            if report.disk != DiskState.upToDate.description && report.disk != DiskState.consistent.description {
                return (.peerInconsistent, "the disk of \(resource) is \(report.disk)")
            }
            let connected = ConnectionState(rawValue: report.connection)?.isEstablished ?? false
            if !connected {
                do {
                    let response = try client.send(ControlRequest(verb: .outdate, resource: resource), answerTimeout: .seconds(10))
                    if response.result == .ok { return (.peerOutdated, "\(resource) is now Outdated here") }
                    // Refused: the state changed between the two requests (connected again, or promoted). Look again.
                    lastRefusal = response.message ?? response.result.rawValue
                } catch {
                    return (.peerUnreachable, "replicad does not answer here: \(error.message)")
                }
            } else {
                lastRefusal = "the replication connection is still \(report.connection) here"
            }
            guard DaemonClock.now + Self.pollInterval < giveUpAt else {
                return (.refused, "\(lastRefusal) after \(Self.disconnectWait)")
            }
            var pause = timespec(tv_sec: 0, tv_nsec: Int(Self.pollInterval.wholeNanoseconds))
            nanosleep(&pause, nil)
        }
    }
}
