import ReplicationCore

/// How the simulated world reacts to what the nodes do: frames on the wire, connections, disk operations.
extension Simulation {
    func process(_ event: SimulationEvent) {
        switch event {
        case .frame(let node, let connectionID, let channel, let bytes):
            receiveFrame(node: node, connectionID: connectionID, channel: channel, bytes: bytes)
        case .replayedFrame(let node, let connectionID, let channel, let bytes):
            if network.connection?.id == connectionID {
                // A live TCP stream never delivers bytes twice: only a frame of an older connection can turn up
                // late (through a stale socket), and the transport must ignore it.
                staleFramesIgnored += 1
            } else {
                receiveFrame(node: node, connectionID: connectionID, channel: channel, bytes: bytes)
            }
        case .connectionClosed(let node, let connectionID, let reason):
            if network.connection?.id == connectionID { deliver(node, .transportLost(reason: reason)) }
        case .connectAttempt:
            attemptConnection()
            queue.schedule(.connectAttempt, at: now + 500 * Self.nanosecondsPerMillisecond)
        case .diskDone(let node, let incarnation, let token, let operation):
            diskDone(node: node, incarnation: incarnation, token: token, operation: operation)
        case .tick(let node, let incarnation):
            guard incarnation == incarnations[node], nodes[node] != nil else { return }
            deliver(node, .tick)
            queue.schedule(.tick(node: node, incarnation: incarnation), at: now + 100 * Self.nanosecondsPerMillisecond)
        case .restart(let node):
            if nodes[node] == nil { startNode(node) }
        case .command(let node, let command):
            if nodes[node] != nil { self.command(node, command) }
        case .clearIOErrors(let node):
            disks[node].failingRanges.removeAll()
        case .releaseHeldFrames:
            releaseHeldFrames()
        case .promoteIfDisconnected(let node):
            if let status = status(node), !status.connection.isEstablished, status.role == .secondary {
                command(node, .promote(force: false))
            }
        }
    }

    // MARK: Network

    func attemptConnection() {
        if let connection = network.connection, connection.alive { return }
        guard nodes[0] != nil, nodes[1] != nil, network.wantsConnection == [true, true],
            !network.isCut(from: 0, at: now), !network.isCut(from: 1, at: now)
        else { return }
        let id = network.nextConnectionID
        network.nextConnectionID += 1
        let decoders: [PacketChannel: PacketDecoder] = [.data: PacketDecoder(), .meta: PacketDecoder()]
        network.connection = SimulatedNetwork.Connection(id: id, alive: true, decoders: [decoders, decoders])
        network.lastDelivery = [[.data: now, .meta: now], [.data: now, .meta: now]]
        network.heldFrames = [[], []]
        for node in 0..<2 {
            let challenge = (0..<CramHMAC.challengeBytes).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            deliver(node, .transportConnected(challenge: challenge))
        }
    }

    func send(_ packet: Packet, from node: Int) {
        guard let connection = network.connection, connection.alive else { return }
        var bytes = PacketCodec.encode(packet)
        if corruptNextFrame {
            corruptNextFrame = false
            let bit = Int(random.next() % UInt64(bytes.count * 8))
            bytes[bit / 8] ^= UInt8(1 << (bit % 8))
        }
        let channel = packet.channel
        var latency = Int64(100_000 + random.next() % 900_000)
        if options.faults.contains(.delay) && inFaultPhase && random.next() % 10 == 0 {
            latency += Int64(random.next() % 20) * Self.nanosecondsPerMillisecond
        }
        var due = max(now + latency, network.lastDelivery[node][channel]!)
        if network.isCut(from: node, at: now) { due = max(due, network.cutUntil[node] + latency) }
        network.lastDelivery[node][channel] = due
        queue.schedule(.frame(to: 1 - node, connectionID: connection.id, channel: channel, bytes: bytes), at: due)
        recentFrames.append((connection.id, 1 - node, channel, bytes))
        if recentFrames.count > 8 { recentFrames.removeFirst() }
    }

    private func receiveFrame(node: Int, connectionID: UInt64, channel: PacketChannel, bytes: [UInt8]) {
        guard var connection = network.connection, connection.id == connectionID, connection.alive, nodes[node] != nil
        else {
            staleFramesIgnored += 1
            return
        }
        if channel == .data && (network.receivingPaused[node] || !network.heldFrames[node].isEmpty) {
            // Behind frames already held, even if reading has resumed: TCP delivers a stream in order.
            network.heldFrames[node].append((connectionID, channel, bytes))
            if !network.receivingPaused[node] { releaseHeldFrames() }
            return
        }
        connection.decoders[node][channel]!.append(bytes)
        var packets: [Packet] = []
        var failure: WireError?
        while true {
            do {
                guard let packet = try connection.decoders[node][channel]!.next() else { break }
                packets.append(packet)
            } catch {
                failure = error
                break
            }
        }
        network.connection = connection
        for packet in packets {
            deliver(node, .packet(packet))
            guard network.connection?.id == connectionID, network.connection?.alive == true else { return }
        }
        if let failure {
            corruptFramesRefused += 1
            trace(node, "transport: refused a frame (\(failure)); dropping the connection")
            dropConnection(by: node, reason: "corrupt frame: \(failure)")
            deliver(node, .transportLost(reason: "corrupt frame"))
        }
        releaseHeldFrames()
    }

    /// Frames held by max-buffers back-pressure go on, in order, once the receiver resumes reading. They are fed
    /// to the receiver directly rather than re-queued, so that no frame still on the wire can overtake them; if the
    /// receiver pauses again part-way, the rest are held again in the same order.
    func releaseHeldFrames() {
        for node in 0..<2 where !network.receivingPaused[node] && !network.heldFrames[node].isEmpty {
            let held = network.heldFrames[node]
            network.heldFrames[node].removeAll()
            for (id, channel, bytes) in held { receiveFrame(node: node, connectionID: id, channel: channel, bytes: bytes) }
        }
    }

    /// `node` closes the connection; the other side hears of it once the path allows (or times out on its own).
    func dropConnection(by node: Int, reason: String, silently: Bool = false) {
        guard var connection = network.connection, connection.alive else { return }
        connection.alive = false
        network.connection = connection
        network.receivingPaused = [false, false]
        network.heldFrames = [[], []]
        guard !silently else { return }
        let latency = Int64(200_000 + random.next() % 800_000)
        let due = network.isCut(from: node, at: now) ? network.cutUntil[node] + latency : now + latency
        queue.schedule(.connectionClosed(node: 1 - node, connectionID: connection.id, reason: reason), at: due)
    }

    // MARK: Disks

    func submitDiskWrite(node: Int, incarnation: Int, token: UInt64, range: BlockRange, payload: [UInt8], fua: Bool) {
        let id = nextDiskOperationID
        nextDiskOperationID += 1
        let failed = disks[node].fails(range)
        if !failed { disks[node].beginWrite(id: id, range: range, payload: payload) }
        queue.schedule(
            .diskDone(node: node, incarnation: incarnation, token: token, operation: .write(id: id, forceUnitAccess: fua, failed: failed)),
            at: now + diskLatency())
    }

    func submitDiskRead(node: Int, incarnation: Int, token: UInt64, range: BlockRange) {
        queue.schedule(
            .diskDone(node: node, incarnation: incarnation, token: token, operation: .read(range, failed: disks[node].fails(range))),
            at: now + diskLatency())
    }

    func submitDiskFlush(node: Int, incarnation: Int, token: UInt64) {
        queue.schedule(.diskDone(node: node, incarnation: incarnation, token: token, operation: .flush), at: now + diskLatency())
    }

    private func diskLatency() -> Int64 { Int64(50_000 + random.next() % 2_000_000) }

    private func diskDone(node: Int, incarnation: Int, token: UInt64, operation: DiskOperation) {
        guard incarnation == incarnations[node], nodes[node] != nil else { return }
        let result: LocalIOResult
        switch operation {
        case .write(let id, let fua, let failed):
            if failed {
                result = .failed
            } else {
                disks[node].completeWrite(id: id, forceUnitAccess: fua)
                result = .written
            }
        case .read(let range, let failed):
            result = failed ? .failed : .read(disks[node].read(range))
        case .flush:
            disks[node].flush()
            result = .flushed
        }
        deliver(node, .localIOCompleted(token: token, result))
    }

    func preserve(node: Int, blocks: [Range<UInt64>], reason: String) {
        // The copy itself is the production metadata store's job; the simulator records which writes it covers.
        trace(node, "preserving \(blocks.reduce(0) { $0 + $1.count }) diverged blocks: \(reason)")
        let reason = "discarded by split-brain recovery on node\(node)"
        // Writes this node acknowledged since it was last in sync are the ones being discarded.
        for (version, record) in workload.writes where record.node == node && workload.writes[version]!.exemptReason == nil {
            if let acknowledged = record.acknowledgedAt, acknowledged > lastSyncedAt[node] {
                workload.writes[version]!.exemptReason = reason
            }
        }
        // So is every version this node's disk holds and the winner's does not, whoever wrote it: a Diskless
        // Primary's writes live only on the disk that served it, and go if that disk loses.
        let (victim, winner) = (disks[node].visibleImage, disks[1 - node].visibleImage)
        func version(_ image: [UInt64: [UInt8]], _ sector: UInt64) -> UInt64 {
            guard let bytes = image[sector], case .written(let version) = WorkloadPattern.decode(bytes[...], sector: sector)
            else { return 0 }
            return version
        }
        var discarded: [UInt64: ClosedRange<UInt64>] = [:]
        for range in blocks {
            for sector in range.lowerBound * 8..<range.upperBound * 8 {
                let (lost, kept) = (version(victim, sector), version(winner, sector))
                if lost > kept { discarded[sector] = kept + 1...lost }
            }
        }
        for (version, record) in workload.writes where record.committed && record.exemptReason == nil {
            let sectors = record.firstSector..<record.firstSector + UInt64(record.sectorCount)
            if sectors.contains(where: { discarded[$0]?.contains(version) == true }) {
                workload.writes[version]!.exemptReason = reason
            }
        }
    }

    func splitBrainLogged(node: Int) {
        splitBrainLoggedSinceFlag[node] = true
    }
}
