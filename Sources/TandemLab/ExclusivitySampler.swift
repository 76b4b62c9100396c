#if canImport(Glibc)
import CoreSupport
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation

/// Samples, every 50 ms through a scenario, which nodes hold the VIP and which have the replicated file system
/// mounted. Two at once is the split brain that fencing exists to prevent: a frozen node still holds its address
/// and its mount, and answers ARP from its kernel, so it counts as a holder until it is powered off.
final class ExclusivitySampler: @unchecked Sendable {
    // @unchecked: `verdict` and `running` are guarded by `lock`; `thread` is written once in start().
    struct Verdict: Sendable {
        var samples = 0
        var longestGapMilliseconds: Int64 = 0
        var bothHoldVIP = 0
        var bothMount = 0
        /// When the first sample with two holders was taken, in ms after the sampler started.
        var firstOverlapMilliseconds: Int64?

        var overlaps: Int { max(bothHoldVIP, bothMount) }

        var summary: String {
            "\(samples) samples of both nodes (every 50 ms, longest gap \(longestGapMilliseconds) ms): "
                + (overlaps == 0
                    ? "at most one node held the VIP and the mounted file system in every sample"
                    : "BOTH held the VIP in \(bothHoldVIP) and mounted the file system in \(bothMount) samples, first at +\(firstOverlapMilliseconds ?? 0) ms")
        }
    }

    static let interval: Duration = .milliseconds(50)
    /// A scenario is bounded; so is the sampling (20 minutes).
    static let samplesMaximum = 24_000

    private let lab: Lab
    private let lock = PthreadLock()
    private var verdict = Verdict()
    private var running = true
    private var thread: DaemonThread?

    init(lab: Lab) { self.lab = lab }

    func start() {
        thread = DaemonThread.start(name: "exclusivity") { [self] in
            let started = Workload.unixMilliseconds()
            var previous = started
            while lock.withLock({ running && verdict.samples < Self.samplesMaximum }) {
                let sampleStarted = DaemonClock.now
                // A powered-off machine holds nothing, though its namespace keeps the address (on a link that is down).
                let holders = LabHost.nodes.map { node in
                    let running = lab.machines.isRunning(node)
                    return (vip: running && lab.network.holds(node, address: lab.layout.virtualAddress),
                            mount: running && lab.machines.mounts(node).contains { $0.target == LabLayout.mountPoint })
                }
                let now = Workload.unixMilliseconds()
                lock.withLock {
                    verdict.samples += 1
                    verdict.longestGapMilliseconds = max(verdict.longestGapMilliseconds, now - previous)
                    let bothVIP = holders.allSatisfy(\.vip)
                    let bothMount = holders.allSatisfy(\.mount)
                    if bothVIP { verdict.bothHoldVIP += 1 }
                    if bothMount { verdict.bothMount += 1 }
                    if (bothVIP || bothMount) && verdict.firstOverlapMilliseconds == nil {
                        verdict.firstOverlapMilliseconds = now - started
                    }
                }
                previous = now
                let rest = Self.interval - (DaemonClock.now - sampleStarted)
                if rest > .zero { usleep(useconds_t(rest.wholeMilliseconds * 1000)) }
            }
        }
    }

    func stop() -> Verdict {
        lock.withLock { running = false }
        thread?.join()
        return lock.withLock { verdict }
    }
}
