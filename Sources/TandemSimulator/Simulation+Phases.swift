import ReplicationCore

/// The workload, the fault schedule, and the healing and liveness phases.
extension Simulation {
    // MARK: Workload

    func workloadStep() {
        let primaries = (0..<2).filter { status($0)?.role == .primary }
        guard let node = primaries.randomElement(using: &random) else { return }
        if random.next() % 100 < 15 {
            let id = workload.nextFlushID
            workload.nextFlushID += 1
            workload.flushes[id] = Workload.FlushRecord(node: node, submittedAt: now)
            if options.keepFullTrace { trace(node, "workload: flush #\(id)") }
            deliver(node, .flush(requestID: id))
            return
        }
        let blockCount = Self.deviceBytes / SyncBitmap.blockBytes
        let length = 1 + random.next() % 4
        let first: UInt64
        if random.next() % 10 < 7 {
            // A hot window spread over several activity-log extents, so that writes collide and extents churn.
            let slot = random.next() % Self.hotWindowBlocks
            first = (slot * 97) % (blockCount - length)
        } else {
            first = random.next() % (blockCount - length)
        }
        let blocks = Set(first..<first + length)
        guard workload.busyBlocks[node].isDisjoint(with: blocks) else { return }
        let version = workload.nextVersion
        workload.nextVersion += 1
        let sectorCount = Int(length) * 8
        // One write in twenty is a discard, as a filesystem issues when it frees blocks.
        let zeroing = random.next() % 20 == 0
        workload.writes[version] = Workload.WriteRecord(
            node: node, version: version, firstSector: first * 8, sectorCount: sectorCount, zeroing: zeroing)
        workload.busyBlocks[node].formUnion(blocks)
        if options.keepFullTrace {
            trace(node, "workload: \(zeroing ? "zeroing" : "write") v\(version) blocks \(first)..<\(first + length)")
        }
        if zeroing {
            deliver(node, .write(.zeroing(requestID: version, offsetBytes: first * 4096, lengthBytes: UInt32(length * 4096))))
        } else {
            let payload = WorkloadPattern.payload(version: version, firstSector: first * 8, sectorCount: sectorCount)
            deliver(node, .write(ApplicationWrite(requestID: version, offsetBytes: first * 4096, payload: payload)))
        }
    }

    // MARK: Faults

    func injectFault() {
        let enabled = SimulationFaults.names.filter { options.faults.contains($0.1) }
        guard let (name, fault) = enabled.randomElement(using: &random) else { return }
        faultCounts[name, default: 0] += 1
        let milliseconds = Self.nanosecondsPerMillisecond
        switch fault {
        case .partition:
            let until = now + Int64(500 + random.next() % 8000) * milliseconds
            network.cutUntil = [until, until]
            trace(0, "fault: network partitioned until \(until / milliseconds) ms")
        case .asymmetricPartition:
            let from = Int(random.next() % 2)
            network.cutUntil[from] = now + Int64(500 + random.next() % 8000) * milliseconds
            trace(from, "fault: frames from this node are cut")
        case .reset:
            let node = Int(random.next() % 2)
            trace(node, "fault: connection reset")
            if network.connection?.alive == true {
                dropConnection(by: node, reason: "connection reset")
                deliver(node, .transportLost(reason: "connection reset"))
            }
        case .corruption:
            corruptNextFrame = true
        case .staleDelivery:
            for (id, node, channel, bytes) in recentFrames {
                queue.schedule(
                    .replayedFrame(to: node, connectionID: id, channel: channel, bytes: bytes),
                    at: now + Int64(1 + random.next() % 3000) * milliseconds)
            }
        case .crash:
            crash(Int(random.next() % 2), restartAfterMilliseconds: Int64(500 + random.next() % 8000))
        case .ioError:
            let node = Int(random.next() % 2)
            let start = (random.next() % Self.hotWindowBlocks) * 97 % (Self.deviceBytes / 4096 - 16) * 4096
            disks[node].failingRanges.append(start..<start + 64 * 1024)
            trace(node, "fault: I/O errors on [\(start), \(start + 65536))")
            queue.schedule(.clearIOErrors(node: node), at: now + Int64(1000 + random.next() % 4000) * milliseconds)
        case .failover:
            guard let primary = (0..<2).first(where: { status($0)?.role == .primary }) else { return }
            crash(primary, restartAfterMilliseconds: Int64(3000 + random.next() % 8000))
            queue.schedule(
                .command(node: 1 - primary, .promote(force: false)),
                at: now + Int64(600 + random.next() % 3000) * milliseconds)
        case .splitBrain:
            guard let secondary = (0..<2).first(where: { status($0)?.role == .secondary }) else { return }
            let until = now + Int64(3000 + random.next() % 6000) * milliseconds
            network.cutUntil = [max(network.cutUntil[0], until), max(network.cutUntil[1], until)]
            trace(secondary, "fault: partition, then this Secondary gets promoted")
            // The operator promotes as soon as the Secondary has noticed the lost peer (timeouts take ~1.5 s).
            for delay in [1600, 2500, 3500] as [Int64] {
                queue.schedule(.promoteIfDisconnected(node: secondary), at: now + delay * milliseconds)
            }
        case .operatorActions:
            operatorAction()
        default:
            break
        }
    }

    private func operatorAction() {
        let node = Int(random.next() % 2)
        guard let status = status(node) else { return }
        switch random.next() % 5 {
        case 0:
            command(node, .disconnect)
            queue.schedule(.command(node: node, .connect(discardMyData: false)), at: now + Int64(random.next() % 3000) * Self.nanosecondsPerMillisecond)
        case 1 where random.next() % 3 == 0:
            // A full resync, asked for by the node to be overwritten or by the one whose data wins. Only while
            // Connected: a disconnected node's `invalidate` throws away whatever only it holds (DRBD lets the
            // Inconsistent disk decide the next handshake, with no split-brain check), which is the runbook's
            // discard-my-data, not a repair the oracle could judge.
            guard status.connection == .connected else { return }
            command(node, status.role == .secondary ? .invalidate : .invalidateRemote)
        case 2:
            command(node, .verify)
        case 3:
            command(node, .pauseResync)
            queue.schedule(.command(node: node, .resumeResync), at: now + Int64(random.next() % 2000) * Self.nanosecondsPerMillisecond)
        default:
            if status.role == .primary && random.next() % 2 == 0 {
                // A planned switchover: demote here (refused while I/O is in flight), promote the peer.
                command(node, .demote)
                queue.schedule(.command(node: 1 - node, .promote(force: false)), at: now + 200 * Self.nanosecondsPerMillisecond)
            }
        }
    }

    func crash(_ node: Int, restartAfterMilliseconds delay: Int64) {
        guard nodes[node] != nil else { return }
        trace(node, "fault: crash (power loss)")
        nodes[node] = nil
        incarnations[node] += 1
        crashTimes[node].append(now)
        disks[node].crash(random: &random)
        workload.nodeCrashed(node, at: now)
        network.wantsConnection[node] = false
        if network.connection?.alive == true {
            // Power loss sends no FIN; sometimes the peer's kernel answers a later packet with a reset.
            dropConnection(by: node, reason: "peer crashed", silently: random.next() % 2 == 0)
        }
        queue.schedule(.restart(node: node), at: now + delay * Self.nanosecondsPerMillisecond)
    }

    // MARK: Healing and liveness

    /// The faults stop: the network heals, disks are repaired, crashed nodes come back.
    func heal() {
        trace(0, "heal: faults stop")
        network.cutUntil = [0, 0]
        for node in 0..<2 {
            disks[node].failingRanges.removeAll()
            if nodes[node] == nil { startNode(node) }
        }
        runFor(milliseconds: 3000)
    }

    /// The operator follows the runbook until the pair is Connected UpToDate/UpToDate with one Primary.
    func converge() {
        let deadline = now + Self.liveness
        while now < deadline && violations.isEmpty {
            if isConverged() { return }
            operatorRepair()
            runFor(milliseconds: 1000)
        }
        if !isConverged() {
            let held = (0..<2).map { nodes[$0]?.machine.requestsDescription ?? "down" }
            violations.append("liveness: no convergence within \(Self.liveness / 1_000_000_000) s after healing: node0 \(describe(0)); node1 \(describe(1)); requests: \(held)")
        }
    }

    func isConverged() -> Bool {
        guard let first = status(0), let second = status(1) else { return false }
        let primaries = [first, second].filter { $0.role == .primary }.count
        return first.connection == .connected && second.connection == .connected && first.disk == .upToDate
            && second.disk == .upToDate && first.peerDisk == .upToDate && second.peerDisk == .upToDate
            && primaries == 1 && first.requestsInFlight == 0 && second.requestsInFlight == 0
            && workload.busyBlocks.allSatisfy(\.isEmpty)
    }

    private func operatorRepair() {
        for node in 0..<2 where nodes[node] != nil && status(node)!.disk == .diskless {
            // Replace the failed disk: detach/attach is a restart of the node's process on a repaired disk.
            trace(node, "operator: down/up after a disk failure")
            disks[node].flush()
            workload.abandonInFlight(node)
            nodes[node] = nil
            incarnations[node] += 1
            network.wantsConnection[node] = false
            dropConnection(by: node, reason: "peer went down")
            startNode(node)
        }
        guard let first = status(0), let second = status(1) else { return }
        let statuses = [first, second]
        if statuses.contains(where: { $0.connection == .standAlone }) {
            // The runbook for a split brain (or any refused handshake): pick the victim, discard its data. First
            // try to keep the Primary's data; if the configured policy insists on the other outcome (for example
            // "I shall become sync target, but I am Primary"), give up the Primary's data on the next attempt.
            repairAttempts += 1
            let keepPrimary = repairAttempts % 2 == 1
            let primaryNode = statuses[0].role == .primary ? 0 : (statuses[1].role == .primary ? 1 : nil)
            let victim = primaryNode.map { keepPrimary ? 1 - $0 : $0 } ?? 0
            trace(victim, "operator: manual split-brain recovery, this node discards its data")
            if statuses[victim].connection != .standAlone { command(victim, .disconnect) }
            if statuses[victim].role == .primary { command(victim, .demote) }
            command(victim, .connect(discardMyData: true))
            if statuses[1 - victim].connection == .standAlone { command(1 - victim, .connect(discardMyData: false)) }
            return
        }
        let primaries = statuses.indices.filter { statuses[$0].role == .primary }
        if primaries.count == 2 && first.connection.isEstablished == false {
            command(1, .demote)
        }
        if primaries.isEmpty && first.connection == .connected && second.connection == .connected {
            if let candidate = statuses.indices.first(where: { statuses[$0].disk == .upToDate }) {
                command(candidate, .promote(force: false))
            }
        }
    }

    /// A last burst of writes on the Primary, then the final checks on quiet, converged nodes.
    func finalWorkloadAndChecks() {
        for _ in 0..<20 {
            workloadStep()
            runFor(milliseconds: 5)
        }
        if let primary = (0..<2).first(where: { status($0)?.role == .primary }) {
            let id = workload.nextFlushID
            workload.nextFlushID += 1
            workload.flushes[id] = Workload.FlushRecord(node: primary, submittedAt: now)
            deliver(primary, .flush(requestID: id))
        }
        if !runUntil(limit: 60_000, { isConverged() && workload.flushes.isEmpty }) {
            violations.append("liveness: the final writes did not complete: node0 \(describe(0)); node1 \(describe(1))")
            return
        }
        checkImagesIdentical()
        checkCommittedWritesSurvive()
    }
}
