#if canImport(Glibc)
import CoreSupport
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation

/// What can go wrong with the active node, from seed 001's list of what must be tested, plus the planned moves.
public enum LabScenario: String, CaseIterable, Sendable {
    case killNode = "kill-node"
    case freezeNode = "freeze-node"
    case stopHeartbeat = "stop-heartbeat"
    case cutLinks = "cut-links"
    case cutHeartbeat = "cut-heartbeat"
    case cutReplication = "cut-replication"
    case losePingNode = "lose-ping-node"
    case losePingNodeStandby = "lose-ping-node-standby"
    case killDatabase = "kill-mysqld"
    case killDatabaseRepeatedly = "kill-mysqld-repeatedly"
    case switchover
    case failback

    /// Whether the service ends on the same node (a restart in place, or the winner of a split) rather than on the
    /// peer.
    var staysOnTheActiveNode: Bool {
        self == .killDatabase || self == .cutHeartbeat || self == .cutReplication || self == .losePingNodeStandby
    }

    public var summary: String {
        switch self {
        case .killNode: "power loss of the active node: SIGKILL to all its processes at once, its links down; it boots again later"
        case .freezeNode: "a hung active node: SIGSTOP to all its processes; thawed once the peer took over"
        case .stopHeartbeat: "heartbeatd stopped cleanly on the active node (it releases the group); started again later"
        case .cutLinks: "every link of the active node cut (heartbeat, replication, service); restored once it stopped serving"
        case .cutHeartbeat: "every heartbeat path between the nodes cut, both nodes up: the node that runs the group fences the other, or holds the witness's grant, or (neither) refuses the other's promotion over the replication link"
        case .cutReplication: "the replication link cut, heartbeat links up: the Primary has the standby outdate its disk (resource-only fencing) and serves on; the Outdated standby refuses promotion"
        case .losePingNode: "the ping node (the client machine) unreachable from the active node only: ipfail moves the group to the peer"
        case .losePingNodeStandby: "the ping node unreachable from the standby only: nothing moves"
        case .killDatabase: "mariadbd killed on the active node: the monitor notices and restarts it in place"
        case .killDatabaseRepeatedly: "mariadbd killed on the active node three times: the third failure moves the group to the peer"
        case .switchover: "planned switchover: tandem takeover on the standby node"
        case .failback: "failback to node1 (the preferred node): tandem standby on node2"
        }
    }
}

/// One scenario's outcome: the timeline, the workload's verdict and the cluster's state afterwards.
public struct ScenarioReport: Sendable {
    public var scenario: LabScenario
    public var from: LabHost
    public var to: LabHost
    /// (what, milliseconds after the fault), in order.
    public var timeline: [(label: String, millisecondsAfterFault: Int64)] = []
    public var verdict: WorkloadVerdict?
    public var cluster: [String] = []
    public var replica: String?
    public var problems: [String] = []
    public var notes: [String] = []
    /// Who held the VIP and the file system, sampled every 50 ms from the fault to the end.
    public var exclusivity: String?

    public var passed: Bool { problems.isEmpty && verdict?.passed == true }

    /// From the fault to the first commit on the serving node, when it happened.
    public var faultToFirstCommitMilliseconds: Int64? { timeline.first { $0.label == Self.firstCommit }?.millisecondsAfterFault }

    static let firstCommit = "first commit on the serving node"

    public func lines() -> [String] {
        var text = ["scenario \(scenario.rawValue): \(scenario.summary)", "  from \(from.rawValue) to \(to.rawValue)"]
        text.append("  timeline (ms after the fault; log lines stamped when they appeared, +-10 ms):")
        for entry in timeline { text.append("    \(String(entry.millisecondsAfterFault).leftPadded(8))  \(entry.label)") }
        for note in notes { text.append("  note: \(note)") }
        if let verdict { text.append("  workload: \(verdict.summary)") }
        if let exclusivity { text.append("  exclusivity: \(exclusivity)") }
        for line in cluster { text.append("  \(line)") }
        if let replica { text.append("  replica: \(replica)") }
        for problem in problems { text.append("  PROBLEM: \(problem)") }
        text.append("  verdict: " + (passed ? "PASS (no acknowledged commit lost)" : "FAIL"))
        return text
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}

extension Lab {
    /// The steps a takeover goes through on the new node, as its ha-log shows them: (label, text of the line).
    private var takeoverSteps: [(label: String, fragment: String)] {
        [
            ("peer declared dead", ": is dead"),
            ("peer fenced (STONITH)", " fenced (STONITH "),
            ("peer asked to outdate its disk (fence-peer)", "to outdate \(LabLayout.resourceName) (request"),
            ("peer outdated its disk (fence-peer exit 4)", "answered for \(LabLayout.resourceName): the peer outdated its disk"),
            ("failure noticed by the monitor", "monitor of mysqld failed"),
            ("takeover starts (drbddisk start)", "Running drbddisk::\(LabLayout.resourceName) start"),
            ("Primary (drbddisk start done)", "drbddisk::\(LabLayout.resourceName) start done"),
            ("fsck and mount done", "Filesystem::\(LabLayout.devicePath)::\(LabLayout.mountPoint)::ext4 start done"),
            ("MariaDB ready (mysqld start done)", "mysqld start done"),
            ("VIP moved (IPaddr2 start done)", "IPaddr2::\(layout.virtualAddress)/\(layout.servicePrefixLength)/eth1 start done"),
        ]
    }

    /// Runs one scenario under load and checks the outcome. The cluster must be healthy first (one node serving,
    /// both connected and UpToDate); it waits for that, up to 3 minutes, since the previous scenario's resync may
    /// still run.
    public func run(_ scenario: LabScenario, loadAfterRecovery: Duration) throws(LabError) -> ScenarioReport {
        let state = try loadState()
        let stonith = state.stonith == true
        let witness = state.witness == true
        var active = try waitForHealthy(timeout: .seconds(180))
        if scenario == .failback && active == .node1 {
            say("failback needs the service away from node1: switching over to node2 first")
            try machines.tandem(.node2, ["takeover"])
            try waitFor("the group on node2", timeout: .seconds(120)) { () -> Bool in
                activeNode([observe(.node1), observe(.node2)]) == .node2
            }
            active = try waitForHealthy(timeout: .seconds(180))
        }
        let target = scenario.staysOnTheActiveNode ? active : active.peer
        var report = ScenarioReport(scenario: scenario, from: active, to: target)
        // Milliseconds, wrapping every 24 days: two runs of one lab never share an id.
        let runID = Int32(truncatingIfNeeded: Workload.unixMilliseconds() % 2_000_000_000)
        try? FileManager.default.createDirectory(atPath: layout.runsDirectory, withIntermediateDirectories: true)
        var options = LabSQL(layout: layout).options()
        options.readTimeout = .seconds(2)
        // Short, as a client in front of a failover cluster should have it: a connect that went to the old node's
        // MAC (before the gratuitous ARP) is abandoned quickly and the next one reaches the new node.
        options.connectTimeout = .milliseconds(300)
        let workload = Workload(
            runID: runID, connection: options, namespace: layout.namespace(.client),
            limits: Workload.Limits(duration: .seconds(600)), journalPath: layout.runsDirectory + "/\(runID)-\(scenario.rawValue).journal")
        let follower = LogFollower(files: LabHost.nodes.map { ($0, layout.haLog($0)) })
        follower.start()
        defer { follower.stop() }
        step("\(scenario.rawValue): workload running through the VIP (run \(runID)), active node \(active.rawValue)")
        workload.start()
        // Whatever fails below, the workload's thread ends with the scenario (stop is idempotent).
        defer { try? workload.stop() }
        do throws(LabError) {
            try waitFor("the workload's first commits", timeout: .seconds(30)) { () -> Bool in
                workload.snapshot.filter { $0.outcome == .acknowledged }.count >= 20
            }
        } catch {
            throw LabError(.failed, "the workload cannot commit before the fault: \(workload.eventLog.last?.text ?? error.message)")
        }

        var faultAt = Workload.unixMilliseconds()
        step("\(scenario.rawValue): \(scenario.summary)")
        let sampler = ExclusivitySampler(lab: self)
        sampler.start()
        var samplerStopped = false
        defer { if !samplerStopped { _ = sampler.stop() } }
        var killed = Set(machines.processes(active, named: "mariadbd"))
        try inject(scenario, on: active)
        if scenario == .killDatabaseRepeatedly {
            // Failures within the window are restarted in place until the configured count moves the group (earlier
            // failures within the window, such as kill-mysqld's, count too): kill again after each restart. A restart
            // is a mariadbd other than the ones killed, and a commit after it appeared: a commit acknowledged just
            // after the kill may have been made by the process just killed.
            for round in 1..<LabConfigFiles.monitorFailures {
                // Or the group moved already (the failures before this scenario's counted): nothing to kill again.
                let since = faultAt
                let movedAway = { () -> Bool in
                    workload.snapshot.contains {
                        $0.outcome == .acknowledged && $0.unixMilliseconds >= since && $0.node != active.rawValue
                    }
                }
                do throws(LabError) {
                    try waitFor("mariadbd restarted in place on \(active.rawValue)", timeout: .seconds(60)) { () -> Bool in
                        movedAway() || !Set(machines.processes(active, named: "mariadbd")).subtracting(killed).isEmpty
                    }
                } catch {
                    break
                }
                if movedAway() { break }
                guard waitForCommit(after: Workload.unixMilliseconds(), timeout: .seconds(60), workload) == active else { break }
                say("    failure \(round) restarted in place on \(active.rawValue); killing mariadbd again")
                killed = Set(machines.processes(active, named: "mariadbd"))
                faultAt = Workload.unixMilliseconds()
                try inject(scenario, on: active)
            }
        }
        if scenario == .cutHeartbeat && !stonith && !witness {
            // Neither fencing nor a witness: the standby believes the active node dead and starts the group, but its
            // promotion is refused by the Primary it is still connected to over the replication link (single
            // Primary), so it mounts nothing and takes no address.
            do throws(LabError) {
                try waitFor("\(active.peer.rawValue)'s takeover to fail at the promotion", timeout: .seconds(60)) { () -> Bool in
                    follower.first(active.peer, containing: "drbddisk::\(LabLayout.resourceName) start failed", after: faultAt) != nil
                }
                report.timeline.append(("\(active.peer.rawValue)'s promotion refused (\(active.rawValue) is Primary)", Workload.unixMilliseconds() - faultAt))
            } catch {
                report.problems.append(error.message)
            }
        }
        if scenario == .cutHeartbeat && witness && !stonith {
            // Both nodes lose each other; the witness grants the one that runs the group, and the other, without
            // quorum, starts nothing.
            do throws(LabError) {
                try waitFor("\(active.peer.rawValue) to lose quorum", timeout: .seconds(30)) { () -> Bool in
                    follower.first(active.peer, containing: "quorum lost: ", after: faultAt) != nil
                }
                report.timeline.append(("\(active.peer.rawValue) lost quorum (the witness granted \(active.rawValue))", Workload.unixMilliseconds() - faultAt))
            } catch {
                report.problems.append(error.message)
            }
        }
        if scenario == .cutHeartbeat && stonith {
            // Both nodes lose each other; the one that runs the group fences the other at once, and serves on.
            do throws(LabError) {
                try waitFor("\(active.rawValue) to fence \(active.peer.rawValue)", timeout: .seconds(60)) { () -> Bool in
                    wasFenced(active.peer, after: faultAt, follower)
                }
            } catch {
                report.problems.append(error.message)
            }
        }
        if scenario == .cutReplication {
            checkOutdatedStandby(active.peer, after: faultAt, report: &report)
        }
        if waitForCommit(on: target, after: faultAt, timeout: .seconds(120), workload) == nil { report.problems.append("no commit on \(target.rawValue) within the time allowed after the fault") }
        usleep(useconds_t(clamping: loadAfterRecovery.wholeMilliseconds * 1000))
        // The load runs on through the heal where a node that was cut off or frozen comes back: there a client could
        // be told of a commit that the split-brain recovery then discards. Elsewhere it stops now (a node that boots
        // again resyncs faster without it).
        let loadThroughHeal = scenario == .freezeNode || scenario == .cutLinks
        if !loadThroughHeal { try workload.stop() }
        let operationsBeforeHeal = workload.snapshot

        // The timeline, from the serving node's log and the workload.
        for (label, fragment) in takeoverSteps {
            if let line = follower.first(target, containing: fragment, after: faultAt) {
                report.timeline.append((label, line.unixMilliseconds - faultAt))
            }
        }
        if scenario == .losePingNode, let line = follower.first(active, containing: "ipfail: this node reaches", after: faultAt) {
            report.timeline.append(("ipfail on \(active.rawValue): ping node lost, groups given up", line.unixMilliseconds - faultAt))
        }
        if let first = operationsBeforeHeal.first(where: { $0.outcome == .acknowledged && $0.node == target.rawValue && $0.unixMilliseconds >= faultAt }) {
            report.timeline.append((ScenarioReport.firstCommit, first.unixMilliseconds - faultAt))
        }

        if state.withReplica && (scenario == .freezeNode || scenario == .cutLinks) {
            do throws(LabError) {
                try LabReplica(lab: self).waitUntilFollowingTheServingNode(timeout: .seconds(60))
            } catch {
                report.problems.append("replica: \(error.message)")
            }
        }
        if scenario == .losePingNodeStandby {
            // Nothing must move: watched for a few seconds after the standby noticed.
            do throws(LabError) {
                try waitFor("\(active.peer.rawValue) to lose its ping node", timeout: .seconds(30)) { () -> Bool in
                    follower.first(active.peer, containing: "ping nodes: 0 of 1 reachable", after: faultAt) != nil
                }
                report.timeline.append(("standby lost its ping node", Workload.unixMilliseconds() - faultAt))
                usleep(3_000_000)
            } catch {
                report.problems.append(error.message)
            }
        }
        if scenario == .cutLinks {
            // A node cut off from its service network cannot serve: with STONITH its peer powers it off; without,
            // its monitor finds the VIP without a link and, after monitor_failures checks, stops the group (no peer
            // it can hear to give it to). Only then do the cables come back: without fencing, a partition shorter
            // than those checks leaves the cut-off node holding the VIP when they do.
            do throws(LabError) {
                try waitFor("\(active.rawValue), cut off, to stop serving", timeout: .seconds(30)) { () -> Bool in
                    let observation = observe(active)
                    return !observation.holdsVirtualAddress && !observation.mountsFileSystem && !observation.runsDatabase
                }
                report.timeline.append(("cut-off node stopped serving", Workload.unixMilliseconds() - faultAt))
            } catch {
                report.problems.append(error.message)
            }
        }
        step("\(scenario.rawValue): healing \(active.rawValue)" + (loadThroughHeal ? ", under load" : ""))
        // A node that STONITH powered off is not there to heal: it is powered on again (the operator's step after
        // a fence with stonith_action off), and comes back as Secondary with nothing to discard.
        let fenced = LabHost.nodes.filter { wasFenced($0, after: faultAt, follower) }
        // A fenced node comes back empty, as after a power loss: nothing it did can reach a client, and the load
        // stops before it boots, as in kill-node (its resync is faster without the load).
        if fenced.contains(active) { try workload.stop() }
        try heal(scenario, node: active, fenced: fenced, report: &report)
        for node in fenced {
            report.notes.append("\(node.rawValue) was fenced (powered off by \(node.peer.rawValue) through the power switch) and powered on again")
            if !machines.isRunning(node) { try powerOn(node) }
        }
        if (scenario == .freezeNode || scenario == .cutLinks) && !fenced.contains(active) {
            try resolveSplitBrain(victim: active, survivor: target, report: &report)
        }
        do throws(LabError) {
            let now = try waitForHealthy(timeout: .seconds(180))
            if now != target { report.problems.append("the service ended on \(now.rawValue), expected \(target.rawValue)") }
        } catch {
            report.problems.append(error.message)
        }
        try workload.stop()
        let exclusivity = sampler.stop()
        samplerStopped = true
        report.exclusivity = exclusivity.summary
        if exclusivity.overlaps > 0 {
            // A witness, or the replication link's single Primary, decides a split of the heartbeat links
            // (cut-heartbeat); pauses and isolations need STONITH.
            if stonith || scenario == .cutHeartbeat {
                report.problems.append("two nodes held the service at once despite STONITH: \(exclusivity.summary)")
            } else {
                report.notes.append("without fencing both nodes held the service for a while (lab up --stonith prevents it)")
            }
        }
        let operations = workload.snapshot
        let observations = LabHost.nodes.map(observe)
        report.cluster = observations.map(\.summary)
        if activeNode(observations) == nil {
            report.problems.append("not exactly one node holds the VIP, the mounted file system and MariaDB")
        }

        report.timeline.sort { $0.millisecondsAfterFault < $1.millisecondsAfterFault }
        step("\(scenario.rawValue): checking every commit through the VIP")
        let counts = try rowCounts(runID: runID)
        let verdict = WorkloadVerdict(operations: operations, counts: counts)
        report.verdict = verdict
        if state.withReplica {
            do throws(LabError) {
                report.replica = try LabReplica(lab: self).check(runID: runID, primaryCounts: counts)
            } catch {
                report.problems.append("replica: \(error.message)")
            }
        }
        return report
    }

    /// cut-replication: the standby's disk must be Outdated (the Primary's fence-peer asked for it over the heartbeat
    /// links), and a promotion of it refused: it holds none of the commits made since the cut.
    private func checkOutdatedStandby(_ standby: LabHost, after faultAt: Int64, report: inout ScenarioReport) {
        do throws(LabError) {
            try waitFor("\(standby.rawValue)'s disk to be Outdated", timeout: .seconds(30)) { () -> Bool in
                observe(standby).disk == "Outdated"
            }
        } catch {
            return report.problems.append(error.message)
        }
        report.timeline.append(("\(standby.rawValue) seen Outdated", Workload.unixMilliseconds() - faultAt))
        do throws(LabError) {
            let output = try machines.tandem(standby, ["adm", "primary", LabLayout.resourceName])
            report.problems.append("the Outdated \(standby.rawValue) was promoted: \(output)")
        } catch {
            report.timeline.append(("promotion of the Outdated \(standby.rawValue) refused", Workload.unixMilliseconds() - faultAt))
            report.notes.append("tandem adm primary on \(standby.rawValue): \(error.message.split(separator: "\n").first ?? "")")
        }
    }

    /// Whether `node` is off because its peer fenced it after `after` (the peer's log says so).
    private func wasFenced(_ node: LabHost, after: Int64, _ follower: LogFollower) -> Bool {
        !machines.isRunning(node) && follower.first(node.peer, containing: "\(node.rawValue) fenced (STONITH ", after: after) != nil
    }

    /// The node of the latest acknowledged commit after `after` (on `node` only, when given), waiting for one up to
    /// `timeout`; nil when none came.
    private func waitForCommit(on node: LabHost? = nil, after: Int64, timeout: Duration, _ workload: Workload) -> LabHost? {
        let deadline = DaemonClock.now + timeout
        while DaemonClock.now < deadline {
            if let commit = workload.snapshot.last(where: {
                $0.outcome == .acknowledged && $0.unixMilliseconds >= after && (node == nil || $0.node == node?.rawValue)
            }) {
                return commit.node.flatMap(LabHost.init(rawValue:))
            }
            usleep(20_000)
        }
        return nil
    }

    private func inject(_ scenario: LabScenario, on node: LabHost) throws(LabError) {
        switch scenario {
        case .killNode:
            try network.setLinks(node, up: false)
            let count = try powerOff(node)
            say("    \(node.rawValue): \(count) processes killed, links down")
        case .freezeNode:
            let count = machines.freeze(node)
            say("    \(node.rawValue): \(count) processes stopped")
        case .stopHeartbeat:
            machines.stopDaemons("heartbeatd", on: [node], within: .seconds(120))
        case .cutLinks:
            try network.setLinks(node, up: false)
        case .cutHeartbeat:
            try network.setHeartbeatPaths(cut: true)
        case .cutReplication:
            try network.setReplicationLink(node, up: false)
        case .losePingNode:
            try network.setPingNodeReachable(from: node, false)
        case .losePingNodeStandby:
            try network.setPingNodeReachable(from: node.peer, false)
        case .killDatabase, .killDatabaseRepeatedly:
            let victims = machines.processes(node, named: "mariadbd")
            for pid in victims { kill(pid, SIGKILL) }
            say("    \(node.rawValue): mariadbd (pid \(victims.map(String.init).joined(separator: ", "))) killed")
        case .switchover:
            try machines.tandem(node.peer, ["takeover"])
        case .failback:
            try machines.tandem(node, ["standby"])
        }
    }

    private func heal(_ scenario: LabScenario, node: LabHost, fenced: [LabHost], report: inout ScenarioReport) throws(LabError) {
        switch scenario {
        case .killNode:
            try powerOn(node)
            say("    \(node.rawValue): booted, replicad and heartbeatd started")
        case .freezeNode:
            if !fenced.contains(node) { machines.thaw(node) }
        case .cutHeartbeat:
            try network.setHeartbeatPaths(cut: false)
            if observe(node.peer).groupFailedHere {
                // The standby's takeover failed at the promotion, and a group that failed on a node is not its again
                // until an operator says so: restarting its heartbeatd is that step.
                report.notes.append("\(node.peer.rawValue)'s failed takeover cleared by restarting its heartbeatd (the operator's step)")
                machines.stopDaemons("heartbeatd", on: [node.peer], within: .seconds(60))
                try startHeartbeatd(node.peer)
            }
        case .cutReplication:
            try network.setReplicationLink(node, up: true)
        case .losePingNode:
            try network.setPingNodeReachable(from: node, true)
        case .losePingNodeStandby:
            try network.setPingNodeReachable(from: node.peer, true)
        case .stopHeartbeat:
            try startHeartbeatd(node)
        case .cutLinks:
            try network.setLinks(node, up: true)
        case .killDatabase, .killDatabaseRepeatedly, .switchover, .failback:
            break
        }
    }

    /// After a hung node woke up or a partition healed, both nodes were Primary for a while and replicad refuses to
    /// reconnect them (split brain, after-sb-2pri disconnect) in a lab without STONITH. Once heartbeatd
    /// made the victim release the group (Secondary), the lab recovers as the DRBD guide tells an operator to:
    /// `connect --discard-my-data` on the victim (its changes since the fault are discarded, and kept by replicad
    /// in its preserve directory), `connect` on the survivor; the victim then resyncs from the survivor.
    private func resolveSplitBrain(victim: LabHost, survivor: LabHost, report: inout ScenarioReport) throws(LabError) {
        try waitFor("\(victim.rawValue) to release the group and become Secondary", timeout: .seconds(120)) { () -> Bool in
            let observation = observe(victim)
            return observation.role == "Secondary" && !observation.mountsFileSystem && !observation.holdsVirtualAddress
        }
        // A moment for the two to meet: a split brain shows as StandAlone, a clean reconnect as Connected.
        let deadline = DaemonClock.now + .seconds(10)
        var states: [String?] = []
        // Connected, or already resyncing: the two met without a split brain (the cut-off node had stopped the
        // group itself, its monitor having failed it, before it wrote anything).
        func met(_ state: String?) -> Bool {
            guard let state else { return false }
            return state == "Connected" || state.contains("Sync") || state.hasPrefix("WFBitMap") || state.hasPrefix("Verify")
        }
        while DaemonClock.now < deadline {
            states = [observe(victim).connection, observe(survivor).connection]
            if states.contains("StandAlone") || states.allSatisfy(met) { break }
            usleep(200_000)
        }
        guard states.contains("StandAlone") else {
            if !states.allSatisfy(met) {
                report.problems.append("after the heal replication is neither connected nor StandAlone: \(states.map { $0 ?? "not answering" })")
            }
            return
        }
        report.notes.append(
            "split brain (no STONITH in this lab): \(victim.rawValue)'s changes after the fault discarded (kept in its preserve directory), resync from \(survivor.rawValue) (connect --discard-my-data)")
        say("    split brain: tandem adm connect --discard-my-data on \(victim.rawValue), tandem adm connect on \(survivor.rawValue)")
        if observe(victim).connection == "StandAlone" {
            try machines.tandem(victim, ["adm", "connect", "--discard-my-data", LabLayout.resourceName])
        }
        if observe(survivor).connection == "StandAlone" {
            try machines.tandem(survivor, ["adm", "connect", LabLayout.resourceName])
        }
        // What the resync overwrote on the victim was copied aside first: list it, with its checksums checked
        // (docs/operator-guide.md shows how to get the discarded transactions back from it).
        do throws(LabError) {
            try waitFor("the resync after the split brain", timeout: .seconds(120)) { () -> Bool in
                observe(victim).connection == "Connected" && observe(victim).disk == "UpToDate"
            }
            let listing = try machines.tandem(victim, ["adm", "restore-discarded", LabLayout.resourceName])
            let summary = listing.split(separator: "\n").last { $0.contains("ranges,") }.map { $0.trimmingCharacters(in: .whitespaces) }
            report.notes.append("\(victim.rawValue)'s discarded blocks, preserved: \(summary ?? listing.trimmingCharacters(in: .whitespacesAndNewlines))")
            if summary?.contains("checksums ok") != true { report.problems.append("the preserved blocks are not intact: \(listing)") }
        } catch {
            report.problems.append("restore-discarded on \(victim.rawValue): \(error.message)")
        }
    }

    /// Waits until exactly one node serves and both resources are connected and UpToDate; returns the server.
    @discardableResult
    func waitForHealthy(timeout: Duration) throws(LabError) -> LabHost {
        var last: [NodeObservation] = []
        let deadline = DaemonClock.now + timeout
        while DaemonClock.now < deadline {
            last = LabHost.nodes.map(observe)
            // Healthy includes both nodes being able to take the group: a node that monitoring gave it up on is
            // not, until its failures expire (monitor_failure_window).
            if let active = activeNode(last),
                last.allSatisfy({ $0.connection == "Connected" && $0.disk == "UpToDate" && $0.peerDisk == "UpToDate" && !$0.groupFailedHere })
            {
                return active
            }
            usleep(200_000)
        }
        throw LabError(
            .failed, "the cluster is not healthy after \(timeout): " + last.map(\.summary).joined(separator: " | "))
    }

    /// op_id -> number of rows of the run, as the MariaDB at `address` (the VIP by default) has them, asked from
    /// the client machine.
    func rowCounts(runID: Int32, at address: String? = nil) throws(LabError) -> [Int64: Int] {
        let sql = LabSQL(layout: layout)
        let result = try sql.run(
            sql.options(host: address),
            ["SELECT op_id, COUNT(*) FROM \(LabLayout.databaseName).commits WHERE run_id = \(runID) GROUP BY op_id"])
        var counts: [Int64: Int] = [:]
        for row in result.first?.rows ?? [] {
            guard row.count == 2, let id = row[0].flatMap({ Int64($0) }), let count = row[1].flatMap({ Int($0) }) else { continue }
            counts[id] = count
        }
        return counts
    }
}
