import TandemConfig

/// The handshake in progress on a new connection (state WFReportParams).
struct Handshake: Sendable {
    var startedAt: MonotonicInstant
    var cram: CramHMAC?
    var peerFeatures: FeaturesPacket?
    var peerAuthenticated: Bool
    var parametersSent = false
    var ownNonce: UInt64
    var peerParameters: ProtocolParameters?
    var peerSizes: SizesPacket?
    var peerUUIDs: UUIDsPacket?
    var peerState: StatePacket?
}

/// The bitmap exchange before a resync (WFBitMapS/T): both sides send their bitmap and OR in the peer's.
struct BitmapExchange: Sendable {
    var direction: SyncDirection
    /// Set on the victim of a split-brain discard: save its diverged blocks before the resync overwrites them.
    var preserveBeforeSync: String?
}

extension ReplicationMachine {
    static let protocolVersion: UInt32 = 1
    /// A handshake that has not finished in this long is abandoned and retried.
    static let handshakeTimeout: Duration = .seconds(30)
    static let bitmapWordsPerChunk = PacketCodec.maximumBitmapWords

    // MARK: Establishing

    mutating func transportConnected(challenge: [UInt8], now: MonotonicInstant) {
        guard connection == .waitingForConnection || connection == .unconnected else {
            // A connection we no longer want (e.g. after disconnect): refuse it politely.
            emit(.dropConnection(reason: "not waiting for a connection (state \(connection.rawValue))"))
            return
        }
        connectionGeneration += 1
        connection = .waitingForReportParameters
        lastReceivedAt = now
        pingSentAt = nil
        let cram = settings.authentication.map { CramHMAC(authentication: $0, ownChallenge: challenge) }
        handshake = Handshake(
            startedAt: now, cram: cram, peerAuthenticated: cram == nil, ownNonce: random.next())
        emit(.send(.features(FeaturesPacket(
            protocolMinimum: Self.protocolVersion, protocolMaximum: Self.protocolVersion, featureFlags: 0))))
    }

    mutating func received(_ packet: Packet, now: MonotonicInstant) {
        guard connection == .waitingForReportParameters || connection.isEstablished else {
            // Stale bytes from a connection already being torn down: ignore them.
            return
        }
        lastReceivedAt = now
        if connection == .waitingForReportParameters {
            receivedDuringHandshake(packet, now: now)
        } else {
            receivedWhileEstablished(packet, now: now)
        }
    }

    private mutating func receivedDuringHandshake(_ packet: Packet, now: MonotonicInstant) {
        guard var progress = handshake else { preconditionFailure("WFReportParams without a handshake") }
        switch packet {
        case .features(let features) where progress.peerFeatures == nil:
            guard features.protocolMinimum <= Self.protocolVersion && features.protocolMaximum >= Self.protocolVersion
            else {
                return refuseConnection(
                    .incompatibleSettings,
                    detail: "peer speaks protocol \(features.protocolMinimum)-\(features.protocolMaximum), we speak \(Self.protocolVersion)")
            }
            progress.peerFeatures = features
            handshake = progress
            if let cram = progress.cram {
                emit(.send(.authChallenge(cram.ownChallenge)))
            } else {
                sendParameters()
            }
        case .authChallenge(let challenge) where progress.peerFeatures != nil:
            guard let cram = progress.cram else {
                return refuseConnection(.authenticationFailed, detail: "peer wants authentication; we have no shared-secret")
            }
            switch cram.response(toPeerChallenge: challenge) {
            case .success(let answer): emit(.send(.authResponse(answer)))
            case .failure(let failure): return refuseConnection(.authenticationFailed, detail: failure.rawValue)
            }
        case .authResponse(let response) where progress.cram != nil && !progress.peerAuthenticated:
            guard case .success = progress.cram!.verify(peerResponse: response) else {
                return refuseConnection(.authenticationFailed, detail: CramHMAC.Failure.wrongResponse.rawValue)
            }
            progress.peerAuthenticated = true
            handshake = progress
            log("Peer authenticated using \(progress.cram!.authentication.algorithm.rawValue) HMAC")
            sendParameters()
        case .protocolParameters(let parameters) where progress.peerAuthenticated && progress.peerParameters == nil:
            if let mismatch = incompatibility(with: parameters) {
                return refuseConnection(.incompatibleSettings, detail: mismatch)
            }
            guard parameters.conflictNonce != progress.ownNonce else {
                return protocolError("both peers drew the same conflict nonce; retrying")
            }
            progress.peerParameters = parameters
            handshake = progress
        case .sizes(let sizes) where progress.peerParameters != nil && progress.peerSizes == nil:
            progress.peerSizes = sizes
            handshake = progress
        case .uuids(let packet) where progress.peerSizes != nil && progress.peerUUIDs == nil:
            progress.peerUUIDs = packet
            handshake = progress
        case .state(let state) where progress.peerUUIDs != nil && progress.peerState == nil:
            progress.peerState = state
            handshake = progress
            finishHandshake(now: now)
        case .ping:
            emit(.send(.pingAck))
        case .pingAck:
            pingSentAt = nil
        default:
            protocolError("unexpected \(packet.command.name) packet during the handshake")
        }
    }

    private mutating func sendParameters() {
        guard var progress = handshake, !progress.parametersSent else { return }
        progress.parametersSent = true
        handshake = progress
        emit(.send(.protocolParameters(ownParameters(nonce: progress.ownNonce))))
        emit(.send(.sizes(SizesPacket(backingBytes: sizeBytes, agreedBytes: sizeBytes))))
        emit(.send(.uuids(ownUUIDsPacket())))
        emit(.send(.state(StatePacket(role: role, diskState: disk))))
    }

    func ownParameters(nonce: UInt64) -> ProtocolParameters {
        ProtocolParameters(
            replicationProtocol: settings.replicationProtocol,
            afterSplitBrainZeroPrimaries: settings.policies.zeroPrimaries,
            afterSplitBrainOnePrimary: settings.policies.onePrimary,
            afterSplitBrainTwoPrimaries: settings.policies.twoPrimaries,
            allowTwoPrimaries: settings.allowTwoPrimaries, discardMyData: discardMyDataOnNextConnect,
            integrityAlgorithm: settings.integrityAlgorithm, conflictNonce: nonce)
    }

    func ownUUIDsPacket(skipInitialSync: Bool = false) -> UUIDsPacket {
        var uuidFlags: UUIDExchangeFlags = []
        if discardMyDataOnNextConnect { uuidFlags.insert(.discardMyData) }
        if crashedPrimary { uuidFlags.insert(.crashedPrimary) }
        if disk == .inconsistent { uuidFlags.insert(.inconsistent) }
        if skipInitialSync { uuidFlags.insert(.skipInitialSync) }
        return UUIDsPacket(uuids: uuids, bitsSet: bitmap.setCount, flags: uuidFlags)
    }

    /// DRBD refuses to connect peers whose replication settings differ (receive_protocol): each would otherwise
    /// assume different guarantees or resolve a split brain differently.
    func incompatibility(with peer: ProtocolParameters) -> String? {
        let own = ownParameters(nonce: 0)
        if peer.replicationProtocol != own.replicationProtocol {
            return "incompatible protocol settings: we use \(own.replicationProtocol.rawValue), the peer \(peer.replicationProtocol.rawValue)"
        }
        if !Self.zeroPrimaryPoliciesCompatible(own.afterSplitBrainZeroPrimaries, peer.afterSplitBrainZeroPrimaries) {
            return "incompatible after-sb-0pri settings: \(own.afterSplitBrainZeroPrimaries.rawValue) vs \(peer.afterSplitBrainZeroPrimaries.rawValue)"
        }
        if peer.afterSplitBrainOnePrimary != own.afterSplitBrainOnePrimary {
            return "incompatible after-sb-1pri settings: \(own.afterSplitBrainOnePrimary.rawValue) vs \(peer.afterSplitBrainOnePrimary.rawValue)"
        }
        if peer.afterSplitBrainTwoPrimaries != own.afterSplitBrainTwoPrimaries {
            return "incompatible after-sb-2pri settings: \(own.afterSplitBrainTwoPrimaries.rawValue) vs \(peer.afterSplitBrainTwoPrimaries.rawValue)"
        }
        if peer.allowTwoPrimaries != own.allowTwoPrimaries {
            return "incompatible allow-two-primaries settings"
        }
        if peer.discardMyData && own.discardMyData {
            return "both sides are configured with --discard-my-data"
        }
        if peer.integrityAlgorithm != own.integrityAlgorithm {
            return "incompatible data-integrity-alg: '\(own.integrityAlgorithm)' vs '\(peer.integrityAlgorithm)'"
        }
        return nil
    }

    /// after-sb-0pri must be equal on both sides, except that discard-local pairs only with discard-remote on the
    /// peer (and vice versa): the two together name the same victim (DRBD's cmp_after_sb).
    static func zeroPrimaryPoliciesCompatible(
        _ own: AfterSplitBrainZeroPrimaries, _ peer: AfterSplitBrainZeroPrimaries
    ) -> Bool {
        switch (own, peer) {
        case (.discardLocal, .discardRemote), (.discardRemote, .discardLocal): true
        case (.discardLocal, _), (.discardRemote, _), (_, .discardLocal), (_, .discardRemote): false
        default: own == peer
        }
    }

    private mutating func finishHandshake(now: MonotonicInstant) {
        guard let progress = handshake, let parameters = progress.peerParameters, let sizes = progress.peerSizes,
            let peerUUIDs = progress.peerUUIDs, let peerState = progress.peerState
        else { preconditionFailure("finishing an incomplete handshake: \(String(describing: handshake))") }
        handshake = nil
        guard sizes.backingBytes == sizeBytes else {
            return refuseConnection(
                .differentSizes,
                detail: "the peer has \(sizes.backingBytes) bytes, we have \(sizeBytes); use equal sizes (online resize is not supported yet)")
        }
        peer.role = peerState.role
        peer.disk = peerState.diskState
        peer.uuids = peerUUIDs.uuids
        peer.uuidFlags = peerUUIDs.flags
        peer.bitsSet = peerUUIDs.bitsSet
        peer.resolvesConflicts = parameters.conflictNonce > progress.ownNonce
        connection = .connected
        log("Handshake successful: agreed network protocol version \(Self.protocolVersion)")
        if let detail = disklessPrimaryRefusal() { return refuseConnection(.disklessPrimaryMismatch, detail: detail) }
        // The peer forgot our pause with the old connection; it must know before any resync starts.
        if resyncPausedByUser { emit(.send(.pauseResync(true))) }
        // The peer is back: what the metadata remembers about its disk is stale, and fencing has no reason left.
        flags.remove(.peerOutdated)
        runSyncDecision(now: now)
        if connection.isEstablished { fencingResolvedByConnection() }
    }

    /// Runs DRBD's sync handshake against what the peer last reported and acts on it: stay Connected, start the
    /// bitmap exchange, or refuse the connection.
    mutating func runSyncDecision(now: MonotonicInstant) {
        guard let peerUUIDs = peer.uuids else { preconditionFailure("sync decision without the peer's UUIDs") }
        guard hasLocalDisk && peer.disk > .failed else { return becomeConnectedAcrossDisklessSide() }
        var localFlags: UUIDExchangeFlags = []
        if discardMyDataOnNextConnect { localFlags.insert(.discardMyData) }
        if crashedPrimary { localFlags.insert(.crashedPrimary) }
        let input = SyncHandshakeInput(
            local: UUIDComparisonSide(uuids: uuids, flags: localFlags),
            peer: UUIDComparisonSide(uuids: peerUUIDs, flags: peer.uuidFlags),
            localRole: role, peerRole: peer.role, localDisk: disk, peerDisk: peer.disk,
            localBitsSet: bitmap.setCount, peerBitsSet: peer.bitsSet, resolvesConflicts: !peer.resolvesConflicts)
        let (decision, corrections) = SyncDecision.decide(
            input, policies: settings.policies,
            mutations: UUIDComparison.Mutations(ignoreRule90: settings.mutations.ignoreRule90))
        if let corrected = corrections.local {
            log("UUIDs corrected after a lost resync event: \(uuids) -> \(corrected)")
            uuids = corrected
            uuids.setPrimaryBit(role == .primary)
            persistSuperblock()
        }
        if let corrected = corrections.peer { peer.uuids = corrected }
        log("drbd_sync_handshake: \(decision) self \(uuids) bits:\(bitmap.setCount) peer \(peerUUIDs) bits:\(peer.bitsSet)")
        for note in decision.notes { log(note) }
        var handlers = decision.handlers
        if decision.mustDemote {
            if requests.isEmpty {
                role = .secondary
                uuids.setPrimaryBit(false)
                log("Successfully gave up primary role.")
            } else {
                handlers.append(.priLostAfterSB)
            }
        }
        for handler in handlers { emit(.runHandler(handler)) }
        if decision.mustDemote && role == .primary {
            return refuseConnection(.splitBrainUnresolved, detail: "the split-brain victim could not give up the Primary role")
        }
        if decision.splitBrain != nil && decision.splitBrain != .unresolved && discardMyDataOnNextConnect {
            discardMyDataOnNextConnect = false
        }
        switch decision.outcome {
        case .refuse(let refusal):
            refuseConnection(refusal, detail: decision.description)
        case .noSync:
            if refusedAsTwoPrimaries() { return }
            becomeConnectedWithoutSync()
        case .sync(let direction, let full):
            if refusedAsTwoPrimaries() { return }
            let victim = decision.splitBrain.map { _ in direction == .target } ?? false
            startBitmapExchange(
                direction: direction, full: full,
                preserve: victim ? "split brain (\(decision.splitBrain!.rawValue)): this node's changes are discarded" : nil)
        }
    }

    /// A Diskless Primary may only be served by a disk that holds everything it exposed: no blocks the Primary
    /// wrote without the disk side confirming them stable (its bitmap: writes lost in flight when the disk side
    /// crashed, or not resynced before its own disk failed). Otherwise the application would read older data
    /// than it wrote, and the disk side's new generation would later make the detached disk's newer blocks lose;
    /// the detached disk must come back (down, up) so that a resync can use its activity log. Both sides decide
    /// alike from the handshake's bit counts.
    private func disklessPrimaryRefusal() -> String? {
        guard !(hasLocalDisk && peer.disk > .failed), hasLocalDisk || peer.disk > .failed else { return nil }
        let disklessIsPrimary = hasLocalDisk ? peer.role == .primary : role == .primary
        guard disklessIsPrimary else { return nil }
        let unconfirmedBlocks = hasLocalDisk ? peer.bitsSet : bitmap.setCount
        if unconfirmedBlocks > 0 {
            return "the Diskless Primary wrote \(unconfirmedBlocks) blocks the disk side never confirmed stable; "
                + "attach its disk again (down, up) so that a resync can recover them"
        }
        return nil
    }

    /// Both nodes Primary without allow-two-primaries: the connection is refused, whatever the data says.
    private mutating func refusedAsTwoPrimaries() -> Bool {
        guard role == .primary && peer.role == .primary && !settings.allowTwoPrimaries else { return false }
        refuseConnection(.twoPrimaries, detail: "both nodes are Primary")
        return true
    }

    /// One side has no disk: there is nothing to compare or sync (DRBD skips its sync handshake too). The disk
    /// side serves the Diskless side's I/O; a disk attached later meets the peer in a new handshake.
    private mutating func becomeConnectedAcrossDisklessSide() {
        if refusedAsTwoPrimaries() { return }
        connection = .connected
        log(hasLocalDisk ? "The peer is Diskless: no sync; this node serves its I/O" : "No local disk: the peer serves all I/O")
        startGenerationForDisklessPeer()
        emit(.send(.state(StatePacket(role: role, diskState: disk))))
    }

    /// The peer has no disk while one of us is Primary: from now on only our copy is current. A new generation
    /// makes the peer's detached disk recognisably older (rule 50) when it is attached again, whether the disk
    /// left while we were connected or the peer came back Diskless; without it, equal UUIDs (and a crashed-Primary
    /// flag on the detached disk) would let its stale blocks win.
    private mutating func startGenerationForDisklessPeer() {
        guard hasLocalDisk, disk == .upToDate, uuids.bitmap == 0, peer.disk < .inconsistent,
            role == .primary || peer.role == .primary
        else { return }
        uuids.startNewGeneration(fresh: freshUUID(), isPrimary: role == .primary)
        log("new current UUID \(uuids) (the peer has no disk)")
        persistSuperblock()
    }

    private mutating func becomeConnectedWithoutSync() {
        connection = .connected
        // Same generation on both sides: whichever copy is UpToDate vouches for the other.
        if disk >= .outdated && disk < .upToDate && peer.disk == .upToDate { disk = .upToDate }
        if peer.disk >= .outdated && peer.disk < .upToDate && disk == .upToDate { peer.disk = .upToDate }
        if crashedPrimary && bitmap.setCount == 0 { crashedPrimary = false }
        persistSuperblock()
        emit(.send(.state(StatePacket(role: role, diskState: disk))))
        if bitmap.setCount > 0 { log("No resync, but \(bitmap.setCount) bits in bitmap!") }
    }

    // MARK: Refusals and failures

    /// The handshake failed in a way that retrying cannot fix: go StandAlone until an operator acts.
    mutating func refuseConnection(_ refusal: HandshakeRefusal, detail: String) {
        log("\(refusal.rawValue): \(detail)")
        emit(.dropConnection(reason: "\(refusal.rawValue): \(detail)"))
        connectionLost(reason: refusal.rawValue, failureState: .disconnecting, reconnect: false)
    }

    /// The peer broke the protocol: drop the connection and retry later.
    mutating func protocolError(_ detail: String) {
        log("protocol error: \(detail)")
        emit(.dropConnection(reason: "protocol error: \(detail)"))
        connectionLost(reason: detail, failureState: .protocolError, reconnect: reconnectAfterDrain)
    }

    mutating func transportLost(reason: String, now: MonotonicInstant) {
        guard connection == .waitingForReportParameters || connection.isEstablished else { return }
        connectionLost(reason: reason, failureState: .networkFailure, reconnect: reconnectAfterDrain)
    }

    /// Connection loss, from any cause. Everything the peer has not confirmed on stable storage is marked out of
    /// sync; requests waiting for the peer complete on their local result; the receiver finishes writing what it
    /// has; the node then waits for the peer again (or stays StandAlone).
    mutating func connectionLost(reason: String, failureState: ConnectionState, reconnect: Bool) {
        let wasEstablished = connection.isEstablished
        let wasSourcingResync = connection.isSyncSource
        let peerWasPrimary = peer.role == .primary
        let peerDiskBeforeLoss = peer.disk
        // The new state comes first: completions below may let waiting writes start, and those must see that
        // there is no peer any more.
        connection = failureState
        reconnectAfterDrain = reconnect
        peer = PeerView()
        pingSentAt = nil
        handshake = nil
        bitmapExchange = nil
        pendingPromotionFailed("the connection was lost during the promotion; retry")
        pendingRemoteInvalidationFailed("the connection was lost before the peer answered; retry")
        abandonResyncAndVerify()
        failReadsFromPeer()
        if wasEstablished {
            // A peer that was Inconsistent or Outdated cannot be promoted without us; remember that.
            if hasLocalDisk && (peerDiskBeforeLoss == .inconsistent || peerDiskBeforeLoss == .outdated) {
                flags.insert(.peerOutdated)
            }
            // Before the lost requests complete: with resource-and-stonith their completions wait for the fence.
            fencePeerAfterConnectionLoss(peerDiskBeforeLoss: peerDiskBeforeLoss)
            markTransferLogOutOfSync()
        }
        resetEpochsForNewConnection()
        if wasEstablished {
            log("conn( \(failureState.rawValue) ): \(reason)")
            if role == .primary && disk == .upToDate && (uuids.bitmap == 0 || wasSourcingResync) {
                // Our writes are now ours alone: start a new generation so that the peer's copy is recognisably
                // older (rule 50) when it comes back. DRBD skips this while the Bitmap UUID is set, but a resync
                // target may have finished (adopting our Current) without our hearing of it, and then be
                // promoted: without a new generation of our own, our later writes would look like its past. The
                // sync UUID stays the Bitmap UUID; rules 52, 61, 72, 81 and 91 recognise the layout.
                uuids.startNewGeneration(fresh: freshUUID(), isPrimary: true)
                log("new current UUID \(uuids) (lost the peer while Primary)")
            }
            if !peerWasPrimary || role == .primary { persistSuperblock() }
        }
        finishReceivedEpochsAfterLoss()
        finishDrainIfIdle()
    }

    /// Marks every request the peer has not confirmed as stable out of sync, and releases those that waited on the
    /// network.
    private mutating func markTransferLogOutOfSync() {
        let skipMarking = settings.mutations.skipBitmapMarkingOnDisconnect
        for entry in transferLog {
            for requestID in entry.requestIDs {
                guard var request = requests[requestID] else { continue }
                if !skipMarking && !request.isFlush { bitmap.set(SyncBitmap.blocks(covering: request.range)) }
                request.inTransferLog = false
                if request.network == .awaitingAck { request.network = .failed }
                requests[requestID] = request
                completeIfReady(requestID)
            }
        }
        transferLog.removeAll()
        // Requests that had not even been sent (waiting for the activity log) are handled when they are submitted.
        for requestID in requests.keys.sorted() where requests[requestID]?.network == .awaitingAck {
            requests[requestID]!.network = .failed
            if !skipMarking && !requests[requestID]!.isFlush {
                bitmap.set(SyncBitmap.blocks(covering: requests[requestID]!.range))
            }
            completeIfReady(requestID)
        }
    }

    /// After a connection loss the state stays in its failure state until the receiver has written everything it
    /// holds; then the node waits for the peer again (or stays StandAlone).
    mutating func finishDrainIfIdle() {
        guard !connection.isEstablished, connection != .waitingForReportParameters,
            connection != .waitingForConnection, connection != .standAlone, connection != .unconnected
        else { return }
        guard receivedEpochs.isEmpty else { return }
        if reconnectAfterDrain {
            connection = .waitingForConnection
            emit(.connectTransport)
        } else {
            connection = .standAlone
        }
    }

    // MARK: Liveness

    mutating func tick(now: MonotonicInstant) {
        if connection == .waitingForReportParameters, let progress = handshake,
            now - progress.startedAt > Self.handshakeTimeout
        {
            emit(.dropConnection(reason: "handshake timed out"))
            return connectionLost(reason: "handshake timed out", failureState: .timeout, reconnect: reconnectAfterDrain)
        }
        guard connection.isEstablished || connection == .waitingForReportParameters else { return }
        if let sentAt = pingSentAt, now - sentAt > settings.pingTimeout {
            emit(.dropConnection(reason: "PingAck did not arrive in time"))
            return connectionLost(reason: "PingAck did not arrive in time", failureState: .networkFailure, reconnect: reconnectAfterDrain)
        }
        if let oldest = oldestUnacknowledgedSend(), now - oldest > settings.requestTimeout {
            emit(.dropConnection(reason: "peer did not answer a request within the timeout"))
            return connectionLost(reason: "request timeout", failureState: .timeout, reconnect: reconnectAfterDrain)
        }
        if pingSentAt == nil && now - lastReceivedAt >= settings.pingInterval {
            pingSentAt = now
            emit(.send(.ping))
        }
        if connection.isEstablished {
            pumpResync(now: now)
            pumpVerify(now: now)
        }
    }

    private func oldestUnacknowledgedSend() -> MonotonicInstant? {
        var oldest: MonotonicInstant?
        for entry in transferLog.prefix(1) {
            for requestID in entry.requestIDs {
                guard let request = requests[requestID] else { continue }
                if oldest == nil || request.sentAt < oldest! { oldest = request.sentAt }
            }
        }
        return oldest
    }

    // MARK: Established traffic

    private mutating func receivedWhileEstablished(_ packet: Packet, now: MonotonicInstant) {
        switch packet {
        case .ping: emit(.send(.pingAck))
        case .pingAck: pingSentAt = nil
        case .data(let data): receiveData(data, now: now)
        case .barrier(let epoch): receiveBarrier(epoch: epoch)
        case .receiveAck(let ack): peerAcknowledged(ack, level: .received)
        case .writeAck(let ack): peerAcknowledged(ack, level: .written)
        case .negativeAck(let ack): peerFailedWrite(ack)
        case .barrierAck(let epoch, let count): receiveBarrierAck(epoch: epoch, writeCount: count)
        case .state(let state): receivePeerState(state, now: now)
        case .uuids(let packet): receivePeerUUIDs(packet, now: now)
        case .stateChangeRequest(let request): receiveStateChangeRequest(request)
        case .stateChangeReply(let reply): receiveStateChangeReply(reply, now: now)
        case .invalidateRequest(let requestID): receiveInvalidateRequest(requestID: requestID, now: now)
        case .bitmapChunk(let chunk): receiveBitmapChunk(chunk, now: now)
        case .syncUUID(let uuid): receiveSyncUUID(uuid, now: now)
        case .resyncRequest(let request): serveResyncRequest(request, peerDigest: nil)
        case .checksumResyncRequest(let request, let digest): serveResyncRequest(request, peerDigest: digest)
        case .resyncReply(let reply): receiveResyncReply(reply)
        case .resyncWriteAck(let ack, let inSync): receiveResyncWriteAck(ack, inSync: inSync, now: now)
        case .outOfSync(let range): peerMarkedOutOfSync(range)
        case .verifyRequest(let request): serveVerifyRequest(request)
        case .verifyReply(let request, let digest): receiveVerifyReply(request, digest: digest)
        case .pauseResync(let paused): peerPausedResync(paused)
        case .readRequest(let request): serveReadRequest(request)
        case .readReply(let reply): receiveReadReply(reply)
        case .features, .authChallenge, .authResponse, .protocolParameters, .sizes:
            protocolError("unexpected \(packet.command.name) packet on an established connection")
        }
    }

    /// The peer's disk missed a write that ours holds. The bit is made durable at once: no activity log on this
    /// side covers it, and it must outlive a crash of either node.
    private mutating func peerMarkedOutOfSync(_ range: BlockRange) {
        guard range.endBytes <= sizeBytes else { return protocolError("out-of-sync range \(range) beyond the device") }
        bitmap.set(SyncBitmap.blocks(covering: range))
        persistDirtyBitmapPages()
    }

    /// The peer's role or disk changed.
    private mutating func receivePeerState(_ state: StatePacket, now: MonotonicInstant) {
        let previousDisk = peer.disk
        peer.role = state.role
        peer.disk = state.diskState
        startGenerationForDisklessPeer()
        if connection == .verifyTarget { connection = .connected }
        if connection.isSyncSource, state.diskState == .upToDate,
            previousDisk < .upToDate
        {
            return finishResyncAsSource(now: now)
        }
        if role == .primary && peer.role == .primary && !settings.allowTwoPrimaries {
            // Cannot happen with a conforming peer: promotions while connected need our consent.
            return protocolError("the peer became Primary without our consent")
        }
        if peer.considerResync && connection == .connected {
            peer.considerResync = false
            runSyncDecision(now: now)
        }
    }

    private mutating func receivePeerUUIDs(_ packet: UUIDsPacket, now: MonotonicInstant) {
        if packet.flags.contains(.skipInitialSync) && disk == .inconsistent
            && uuids.current & ~1 == GenerationUUIDs.justCreated && connection == .connected
        {
            // new-current-uuid --clear-bitmap on the peer: both start from this generation without a sync.
            uuids = GenerationUUIDs(current: packet.uuids.current & ~1)
            uuids.setPrimaryBit(role == .primary)
            bitmap.clearAll()
            disk = .upToDate
            log("Accepted new current UUID, preparing to skip initial sync")
            persistSuperblock()
            persistDirtyBitmapPages()
            emit(.send(.state(StatePacket(role: role, diskState: disk))))
            peer.uuids = packet.uuids
            return
        }
        peer.uuids = packet.uuids
        peer.uuidFlags = packet.flags
        peer.bitsSet = packet.bitsSet
        if connection == .connected { peer.considerResync = true }
    }
}
