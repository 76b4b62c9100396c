import ReplicationCore

/// The checkers: the simulator's oracle.
extension Simulation {
    /// Runs after every event a node handled.
    func observe() {
        let statuses = [status(0), status(1)]
        // Never two Primaries on a live connection without allow-two-primaries.
        if let first = statuses[0], let second = statuses[1], first.role == .primary, second.role == .primary,
            first.connection.isEstablished, second.connection.isEstablished, !settings.allowTwoPrimaries
        {
            violations.append("two Primaries while connected: node0 \(describe(0)); node1 \(describe(1))")
        }
        for node in 0..<2 {
            guard let status = statuses[node] else { continue }
            // Only a Primary with its own UpToDate disk can diverge; a Diskless one has nothing to diverge with.
            if status.role == .primary && status.disk == .upToDate && !status.connection.isEstablished
                && !primaryWhileDisconnected[node]
            {
                primaryWhileDisconnected[node] = true
                splitBrainLoggedSinceFlag[node] = false
            }
            if status.connection == .connected && status.disk == .upToDate && status.peerDisk == .upToDate
                && status.outOfSyncBytes == 0 && status.requestsInFlight == 0
            {
                lastSyncedAt[node] = now
            }
            checkGenerationMovesForward(node, status: status, peer: statuses[1 - node])
            if status.disk == .diskless && hadDisk[node] { diskLossTimes[node].append(now) }
            hadDisk[node] = status.disk >= .inconsistent
        }
        let established = statuses.map { $0?.connection.isEstablished ?? false }
        let bothHaveDisks = statuses.allSatisfy { ($0?.disk ?? .diskless) != .diskless }
        if established == [true, true] && wasEstablished != [true, true] && bothHaveDisks {
            // A handshake between two disks just succeeded. If both nodes were Primary while apart, the data
            // diverged: the handshake must have recognised the split brain (and resolved it by policy or by
            // --discard-my-data). A Diskless side compares nothing; its detached disk is judged when it returns.
            if primaryWhileDisconnected == [true, true] && !splitBrainLoggedSinceFlag.contains(true) {
                violations.append("split brain not detected: both nodes were Primary while disconnected, yet they connected without a split-brain decision")
            }
            primaryWhileDisconnected = [false, false]
        }
        wasEstablished = established
    }

    /// Generation UUIDs only move forward: once a node leaves a generation that its peer does not share, nobody
    /// returns to it. One return is legitimate: a resync target ends its resync by adopting the generation its
    /// source had during the resync, even if the source has moved on since without the target hearing of it (as
    /// DRBD's target does with the UUIDs it last received). The data is then the source's as of that generation,
    /// and the next handshake finds the source ahead.
    private func checkGenerationMovesForward(_ node: Int, status: ReplicationStatus, peer: ReplicationStatus?) {
        let current = status.uuids.current & ~1
        defer {
            lastCurrentUUID[node] = current
            if let peer, status.connection.isSyncTarget, peer.connection.isSyncSource {
                resyncDestination[node] = peer.uuids.current & ~1
            } else if !status.connection.isSyncTarget {
                resyncDestination[node] = nil
            }
        }
        guard let previous = lastCurrentUUID[node], previous != current else { return }
        if retiredUUIDs.contains(current) && current != resyncDestination[node] {
            violations.append("node\(node): generation moved backwards to \(String(current, radix: 16)) (left earlier)")
        }
        if let peer, peer.uuids.current & ~1 == previous { return }
        if previous != GenerationUUIDs.justCreated { retiredUUIDs.insert(previous) }
    }

    /// After convergence the two images are byte-identical.
    func checkImagesIdentical() {
        let first = disks[0].visibleImage
        let second = disks[1].visibleImage
        let sectors = Set(first.keys).union(second.keys).sorted()
        let differing = sectors.filter { !SimulatedDisk.sameContents(first[$0], second[$0]) }
        guard !differing.isEmpty else { return }
        let samples = differing.prefix(4).map { sector -> String in
            let left = first[sector].map { WorkloadPattern.decode($0[...], sector: sector) } ?? .zero
            let right = second[sector].map { WorkloadPattern.decode($0[...], sector: sector) } ?? .zero
            return "sector \(sector) (block \(sector / 8)): node0 \(left), node1 \(right)"
        }
        violations.append("images differ after resync in \(differing.count) sectors: \(samples.joined(separator: "; "))")
    }

    /// Every committed write (acknowledged, then covered by a completed flush) is in the final image, unless a
    /// split-brain recovery discarded it or it falls inside the protocol's documented loss window.
    func checkCommittedWritesSurvive() {
        applyProtocolLossWindows()
        var required: [UInt64: UInt64] = [:]
        for record in workload.writes.values where record.committed && record.exemptReason == nil {
            for sector in record.firstSector..<record.firstSector + UInt64(record.sectorCount) {
                required[sector] = max(required[sector] ?? 0, record.version)
            }
        }
        // Zeroes carry no version: a zeroed sector counts as holding the newest discard issued for it, committed or
        // not (an unacknowledged write may land, as any other).
        var newestZeroing: [UInt64: UInt64] = [:]
        for record in workload.writes.values where record.zeroing {
            for sector in record.firstSector..<record.firstSector + UInt64(record.sectorCount) {
                newestZeroing[sector] = max(newestZeroing[sector] ?? 0, record.version)
            }
        }
        let image = disks[status(0)?.role == .primary ? 0 : 1].visibleImage
        var lost: [String] = []
        for sector in Set(required.keys).union(image.keys).sorted() {
            let decoded = image[sector].map { WorkloadPattern.decode($0[...], sector: sector) } ?? .zero
            let found: UInt64
            switch decoded {
            case .zero: found = newestZeroing[sector] ?? 0
            case .written(let version):
                found = version
                if let record = workload.writes[version],
                    !(record.firstSector..<record.firstSector + UInt64(record.sectorCount)).contains(sector)
                {
                    violations.append("sector \(sector) holds version \(version), which never wrote there")
                }
            case .corrupt(let why):
                violations.append("sector \(sector) is corrupt: \(why)")
                continue
            }
            if let needed = required[sector], found < needed {
                lost.append("sector \(sector) (block \(sector / 8)) holds version \(found), committed version \(needed) was lost")
            }
        }
        if !lost.isEmpty {
            violations.append("\(lost.count) sectors lost committed writes: \(lost.prefix(4).joined(separator: "; "))")
        }
    }

    /// Protocol A acknowledges once data is in the local send buffer: a failure of the writer (a crash, or losing
    /// its disk to I/O errors, after which the peer's copy is all there is) can lose what the peer never received.
    /// Protocol B acknowledges once data is in the peer's memory: only a failure of both nodes can lose it.
    /// Protocol C loses nothing that was committed.
    private func applyProtocolLossWindows() {
        guard settings.replicationProtocol != .c else { return }
        for (version, record) in workload.writes where record.committed && record.exemptReason == nil {
            guard let acknowledged = record.acknowledgedAt else { continue }
            let writerFailed = (crashTimes[record.node] + diskLossTimes[record.node]).contains { $0 > acknowledged }
            let peerFailed = (crashTimes[1 - record.node] + diskLossTimes[1 - record.node]).contains { $0 > acknowledged }
            if settings.replicationProtocol == .a && writerFailed {
                workload.writes[version]!.exemptReason = "protocol A loss window (the writer failed)"
            }
            if settings.replicationProtocol == .b && writerFailed && peerFailed {
                workload.writes[version]!.exemptReason = "protocol B loss window (both nodes failed)"
            }
        }
    }

    func summary() -> String {
        let faults = faultCounts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let exempt = workload.writes.values.filter { $0.exemptReason != nil }.count
        return "seed \(options.seed) protocol \(options.replicationProtocol.rawValue): writes acked \(workload.acknowledgedCount), committed \(workload.committedCount), failed \(workload.failedCount), exempt \(exempt); faults [\(faults)]; stale frames ignored \(staleFramesIgnored), corrupt frames refused \(corruptFramesRefused); final node0 \(describe(0)), node1 \(describe(1))"
    }
}
