#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import DeviceFrontend
import Foundation
import ReplicationDaemon
import Synchronization
import TandemLab
import TandemTestSupport
import Testing

/// The lab for real: `lab up` builds the two-node MariaDB cluster (namespaces, FUSE and loop devices, replicad,
/// heartbeatd, MariaDB, a replica), every scenario runs under load, and `lab down` must leave nothing behind.
/// Needs root, iproute2, util-linux, e2fsprogs, MariaDB and arping; a missing one fails `up` with what to install.
/// The lab's names start with "tl" and its addresses are 10.217.0.0/16, inside its own namespaces only.
@Suite(.serialized) struct LabScenarioTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var executable: String { TandemExecutable.path(packageRoot: packageRoot) }

    let layout = LabLayout(
        prefix: "tl\(getpid() % 100_000)", root: "/var/tmp/tandem-labtest-\(getpid())", subnetOctet: 217)

    func makeLab(_ transcript: Transcript) -> Lab {
        Lab(layout: layout, executable: Self.executable) { line in transcript.append(line) }
    }

    final class Transcript: Sendable {
        private let lines = Mutex<[String]>([])
        func append(_ line: String) { lines.withLock { $0.append(line) } }
        var text: String { lines.withLock { $0.joined(separator: "\n") } }
    }

    /// Runs blocking lab work on a thread of its own, off Swift's cooperative pool.
    func blocking<T: Sendable>(_ body: @escaping @Sendable () throws(LabError) -> T) async throws -> T {
        let result: Result<T, LabError> = await DaemonThread.run(name: "lab-test") {
            do throws(LabError) { return .success(try body()) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// The loop devices that have a backing file, by number (from sysfs).
    static func attachedLoopDevices() -> Set<Int32> {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return Set(names.compactMap { name -> Int32? in
            guard name.hasPrefix("loop"), let number = Int32(name.dropFirst(4)) else { return nil }
            return LoopDevice(number: number).backingFile != nil ? number : nil
        })
    }

    func tandem(_ arguments: [String]) async throws -> ExternalCommand.Output {
        try await ExternalCommand.runDetached(Self.executable, ["lab"] + arguments + layout.commandLineOptions)
    }

    @Test func everyScenarioFailsOverWithoutLosingAnAcknowledgedCommit() async throws {
        let transcript = Transcript()
        let lab = makeLab(transcript)
        // This test runs on its own (scripts/test.sh): every loop device attached after it that was not before is
        // one it left behind.
        let loopsBefore = Self.attachedLoopDevices()
        do {
            try await blocking { () throws(LabError) in try lab.up(withReplica: true) }
        } catch {
            _ = try? await blocking { lab.down() }
            Issue.record("lab up failed: \(error)\n\(transcript.text)")
            return
        }

        // While it is up: a second `up` is refused and changes nothing; a scenario name must exist.
        let again = try await tandem(["up"])
        #expect(again.status == 10, "\(again.standardError)")
        #expect(again.standardError.contains("a lab is already up"), "\(again.standardError)")
        let unknown = try await tandem(["scenario", "meteor-strike"])
        #expect(unknown.status == 64, "\(unknown.standardError)")
        #expect(unknown.standardError.contains("unknown scenario 'meteor-strike'"), "\(unknown.standardError)")
        let status = try await tandem(["status"])
        #expect(status.status == 0)
        #expect(status.standardOutput.contains("service: node1 serves MariaDB"), "\(status.standardOutput)")

        for scenario in LabScenario.allCases {
            do {
                let report = try await blocking { () throws(LabError) in
                    try lab.run(scenario, loadAfterRecovery: .seconds(1))
                }
                print(report.lines().joined(separator: "\n"))
                #expect(report.passed, "\(report.lines().joined(separator: "\n"))")
                let verdict = try #require(report.verdict)
                #expect(verdict.acknowledged > 20)
                #expect(verdict.lost.isEmpty && verdict.duplicated.isEmpty && verdict.phantom.isEmpty)
                // The replica followed the VIP through the failover with no error and the same rows.
                #expect(report.replica?.contains("identical to the primary's") == true, "\(report.replica ?? "no replica report")")
                #expect(report.faultToFirstCommitMilliseconds != nil, "no commit on \(report.to.rawValue) after the fault")
                #expect(report.cluster.filter { $0.contains("holds VIP, /data/mysql, mariadbd") }.count == 1, "\(report.cluster)")
                if scenario == .cutHeartbeat {
                    // No fencing, no witness: the replication link keeps the standby from becoming a second Primary.
                    #expect(report.timeline.contains { $0.label == "node2's promotion refused (node1 is Primary)" }, "\(report.lines())")
                    #expect(report.exclusivity?.contains("at most one node held the VIP and the mounted file system in every sample") == true)
                }
                if scenario == .cutReplication {
                    // Resource-level fencing over the heartbeat links: the standby was outdated by the serving node's
                    // fence-peer, and refused to become Primary while it was.
                    let standby = report.from.peer.rawValue
                    #expect(report.timeline.contains { $0.label == "peer outdated its disk (fence-peer exit 4)" }, "\(report.lines())")
                    #expect(report.timeline.contains { $0.label == "promotion of the Outdated \(standby) refused" }, "\(report.lines())")
                    #expect(report.notes.contains { $0.contains("local disk is Outdated") }, "\(report.notes)")
                }
                if !report.passed {
                    lab.showLogs()
                    Issue.record("logs after \(scenario.rawValue):\n\(transcript.text)")
                }
            } catch {
                lab.showLogs()
                Issue.record("scenario \(scenario.rawValue): \(error)\n\(transcript.text)")
                break
            }
        }

        let problems = try await blocking { lab.down() }
        #expect(problems.isEmpty, "\(problems)")
        // Nothing is left: namespaces, the lab's folder, loop devices of its nodes.
        let namespaces = (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []
        #expect(!namespaces.contains { $0.hasPrefix(layout.prefix + "-") }, "\(namespaces)")
        #expect(!FileManager.default.fileExists(atPath: layout.root))
        // By number, not by tag: a loop device whose FUSE server died cannot report its tag any more.
        let leftBehind = Self.attachedLoopDevices().subtracting(loopsBefore)
        #expect(leftBehind.isEmpty, "loop devices left attached: \(leftBehind.sorted())")
        // And `down` again, or `status` without a lab, is calm about it.
        let downAgain = try await tandem(["down"])
        #expect(downAgain.status == 0, "\(downAgain.standardError)")
        let noLab = try await tandem(["status"])
        #expect(noLab.status == 10)
        #expect(noLab.standardError.contains("no lab is up"), "\(noLab.standardError)")
    }

    /// With a witness (`lab up --witness`: `tandem witness` on the client machine): when the heartbeat paths are cut
    /// with both nodes up, the witness grants the node that runs the group, and the other, without quorum, starts
    /// nothing; a power loss is taken over once the witness has not heard from the dead node for twice its deadtime.
    /// Every 50 ms at most one node holds the VIP and the mounted file system, and no acknowledged commit is lost.
    @Test func withAWitnessOnlyTheGrantedSideServes() async throws {
        try await runProtectedLab(stonith: false, witness: true, [.cutHeartbeat, .killNode]) { scenario, report, text in
            if scenario == .cutHeartbeat {
                #expect(report.timeline.contains { $0.label == "node2 lost quorum (the witness granted node1)" }, "\(text)")
                #expect(!report.timeline.contains { $0.label == "takeover starts (drbddisk start)" }, "\(text)")
            }
        }
    }

    /// With STONITH (`lab up --stonith`: the lab's power switch and fence agent): when the heartbeat paths are cut
    /// with both nodes up, the node that runs the group fences the other and serves on; a hung active node is
    /// fenced (powered off) before the standby takes over, so it never comes back writing; a power loss is confirmed
    /// by the fence before the takeover; an active node cut off from every network (its ping node too) loses the
    /// race to the standby that clients can still reach. Every 50 ms at most one node holds the VIP and the mounted file system, and
    /// no acknowledged commit is lost.
    @Test func withStonithTheSilentNodeIsFencedBeforeAnythingMoves() async throws {
        // cut-links: the active node loses its peer and its ping node (the client) at once, so it loses the fence
        // race although it runs the group.
        let fenced: [LabScenario: LabHost] = [.cutHeartbeat: .node2, .freezeNode: .node1, .killNode: .node2, .cutLinks: .node1]
        try await runProtectedLab(stonith: true, witness: false, [.cutHeartbeat, .freezeNode, .killNode, .cutLinks]) { scenario, report, text in
            #expect(report.notes.contains { $0.hasPrefix("\(fenced[scenario]!.rawValue) was fenced") }, "\(text)")
            #expect(report.timeline.contains { $0.label == "peer fenced (STONITH)" }, "\(text)")
        }
        #expect(!FileManager.default.fileExists(atPath: layout.powerSwitchSocket))
        let switches = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { entry in
            guard Int32(entry) != nil, let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return arguments.contains("power-switch") && arguments.contains(layout.root)
        }
        #expect(switches.isEmpty, "power switch processes left running: \(switches)")
    }

    /// Builds a lab with STONITH or a witness, runs `scenarios` in it with the checks every protected lab must pass
    /// (no acknowledged commit lost, at most one holder in every sample, one node serving at the end) and
    /// `checks`, then takes it down and checks that nothing is left.
    private func runProtectedLab(
        stonith: Bool, witness: Bool, _ scenarios: [LabScenario],
        checks: (LabScenario, ScenarioReport, String) -> Void
    ) async throws {
        let transcript = Transcript()
        let lab = makeLab(transcript)
        let loopsBefore = Self.attachedLoopDevices()
        do {
            try await blocking { () throws(LabError) in try lab.up(withReplica: false, stonith: stonith, witness: witness) }
        } catch {
            _ = try? await blocking { lab.down() }
            Issue.record("lab up (stonith \(stonith), witness \(witness)) failed: \(error)\n\(transcript.text)")
            return
        }
        for scenario in scenarios {
            do {
                let report = try await blocking { () throws(LabError) in
                    try lab.run(scenario, loadAfterRecovery: .seconds(1))
                }
                let text = report.lines().joined(separator: "\n")
                print(text)
                #expect(report.passed, "\(text)")
                #expect(report.verdict?.lost.isEmpty == true && report.verdict?.phantom.isEmpty == true, "\(text)")
                #expect(report.exclusivity?.contains("at most one node held the VIP and the mounted file system in every sample") == true, "\(text)")
                // Whoever was fenced or lost quorum came back as a Secondary: one node serves.
                #expect(report.cluster.filter { $0.contains("holds VIP, /data/mysql, mariadbd") }.count == 1, "\(report.cluster)")
                checks(scenario, report, text)
                if !report.passed { lab.showLogs() }
            } catch {
                lab.showLogs()
                Issue.record("scenario \(scenario.rawValue): \(error)\n\(transcript.text)")
                break
            }
        }
        let problems = try await blocking { lab.down() }
        #expect(problems.isEmpty, "\(problems)")
        #expect(!FileManager.default.fileExists(atPath: layout.root))
        let leftBehind = Self.attachedLoopDevices().subtracting(loopsBefore)
        #expect(leftBehind.isEmpty, "loop devices left attached: \(leftBehind.sorted())")
    }
}
