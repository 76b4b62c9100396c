/// Operator commands (drbdadm's state-changing verbs) and the role rules of reference drbd.md sections 2 and 4.
extension ReplicationMachine {
    mutating func run(_ command: OperatorCommand, commandID: UInt64, now: MonotonicInstant) {
        let outcome: CommandOutcome?
        switch command {
        case .promote(let force): outcome = promote(force: force, commandID: commandID, now: now)
        case .demote: outcome = demote()
        case .connect(let discardMyData): outcome = connect(discardMyData: discardMyData)
        case .disconnect: outcome = disconnect()
        case .invalidate: outcome = invalidate(now: now)
        case .invalidateRemote: outcome = invalidateRemote(commandID: commandID)
        case .verify: outcome = startVerify(commandID: commandID, now: now)
        case .pauseResync: outcome = pauseResync(true)
        case .resumeResync: outcome = pauseResync(false)
        case .outdate: outcome = outdate()
        case .resumeIO: outcome = resumeIO()
        case .newCurrentUUID(let clearBitmap): outcome = newCurrentUUID(clearBitmap: clearBitmap, now: now)
        case .detach: outcome = detach()
        }
        if let outcome { emit(.commandCompleted(commandID: commandID, outcome)) }
    }

    // MARK: Roles

    /// Returns nil when the answer comes later (a promotion needs the connected peer's consent).
    private mutating func promote(force: Bool, commandID: UInt64, now: MonotonicInstant) -> CommandOutcome? {
        if role == .primary { return .done }
        if pendingPromotion != nil || peerFence != nil { return .refused("a promotion is already in progress") }
        let disklessWithGoodPeer = !hasLocalDisk && connection.isEstablished && peer.disk == .upToDate
        // A Consistent disk is as good as UpToDate once the peer is fenced (+Fencing).
        let consistentUntilFenced = disk == .consistent && promotionNeedsPeerFenced
        if !force && !hasUpToDateData && !disklessWithGoodPeer && !consistentUntilFenced {
            return .refused(
                "no UpToDate data (local disk is \(disk)); use --force to overwrite the peer's data with this node's")
        }
        if force && !hasLocalDisk { return .refused("cannot force a Diskless node to Primary") }
        if connection.isResyncing && disk < .upToDate && !force {
            return .refused("a resync into this node is running; wait for it or use --force")
        }
        guard connection.isEstablished else {
            if promotionNeedsPeerFenced {
                startPeerFence(.promotion(commandID: commandID, force: force))
                return nil
            }
            becomePrimary(force: force, now: now)
            return .done
        }
        if peer.role == .primary && !settings.allowTwoPrimaries {
            return .refused("the peer is Primary and allow-two-primaries is off; demote the peer first")
        }
        let stateChangeID = nextStateChangeID
        nextStateChangeID += 1
        pendingPromotion = PendingPromotion(commandID: commandID, stateChangeID: stateChangeID, force: force)
        emit(.send(.stateChangeRequest(StateChangeRequest(requestID: stateChangeID, newRole: .primary))))
        return nil
    }

    /// Becomes Primary. A new data generation starts when promoted while disconnected with an empty Bitmap UUID,
    /// or when forced: from here on this node's data differs from anything the peer could hold.
    mutating func becomePrimary(force: Bool, now: MonotonicInstant) {
        if force && disk < .upToDate {
            log("Forced to consider local data as UpToDate!")
            disk = .upToDate
        }
        role = .primary
        let newGeneration = (!connection.isEstablished && uuids.bitmap == 0) || force
        if newGeneration {
            uuids.startNewGeneration(fresh: freshUUID(), isPrimary: true)
            log("new current UUID \(uuids)")
        } else {
            uuids.setPrimaryBit(true)
        }
        persistSuperblock()
        guard connection.isEstablished else { return }
        if newGeneration { emit(.send(.uuids(ownUUIDsPacket()))) }
        emit(.send(.state(StatePacket(role: role, diskState: disk))))
        if newGeneration && connection == .connected { runSyncDecision(now: now) }
    }

    mutating func pendingPromotionFailed(_ reason: String) {
        guard let pending = pendingPromotion else { return }
        pendingPromotion = nil
        emit(.commandCompleted(commandID: pending.commandID, .refused(reason)))
    }

    mutating func pendingRemoteInvalidationFailed(_ reason: String) {
        guard let pending = pendingRemoteInvalidation else { return }
        pendingRemoteInvalidation = nil
        emit(.commandCompleted(commandID: pending.commandID, .refused(reason)))
    }

    /// The peer asks to become Primary. Two concurrent promotions are settled by the conflict nonce.
    mutating func receiveStateChangeRequest(_ request: StateChangeRequest) {
        guard request.newRole == .primary else {
            return protocolError("state change request to \(request.newRole.rawValue)")
        }
        let refusal: String?
        if role == .primary && !settings.allowTwoPrimaries {
            refusal = "the peer is Primary and allow-two-primaries is off"
        } else if pendingPromotion != nil && !peer.resolvesConflicts && !settings.allowTwoPrimaries {
            refusal = "the peer is being promoted at the same time and won the tie-break"
        } else {
            refusal = nil
        }
        if refusal == nil { peer.role = .primary }
        emit(.send(.stateChangeReply(StateChangeReply(
            requestID: request.requestID, granted: refusal == nil, reason: refusal ?? ""))))
    }

    mutating func receiveStateChangeReply(_ reply: StateChangeReply, now: MonotonicInstant) {
        if let pending = pendingRemoteInvalidation, pending.stateChangeID == reply.requestID {
            pendingRemoteInvalidation = nil
            let outcome: CommandOutcome = reply.granted ? .done : .refused("refused by the peer: \(reply.reason)")
            return emit(.commandCompleted(commandID: pending.commandID, outcome))
        }
        guard let pending = pendingPromotion, pending.stateChangeID == reply.requestID else {
            return protocolError("state change reply \(reply.requestID) to no request")
        }
        pendingPromotion = nil
        if reply.granted {
            becomePrimary(force: pending.force, now: now)
            emit(.commandCompleted(commandID: pending.commandID, .done))
        } else {
            emit(.commandCompleted(commandID: pending.commandID, .refused("refused by the peer: \(reply.reason)")))
        }
    }

    private mutating func demote() -> CommandOutcome {
        if role == .secondary { return .done }
        let inUse = requests.count + writesWaitingForActivityLog.count + writesHeldForResync.count
        if inUse > 0 { return .refused("the device is in use: \(inUse) requests in flight") }
        role = .secondary
        uuids.setPrimaryBit(false)
        persistSuperblock()
        if connection.isEstablished { emit(.send(.state(StatePacket(role: role, diskState: disk)))) }
        return .done
    }

    // MARK: Connection

    private mutating func connect(discardMyData: Bool) -> CommandOutcome {
        guard connection == .standAlone else {
            return .refused("already connecting or connected (\(connection.rawValue)); disconnect first")
        }
        discardMyDataOnNextConnect = discardMyData
        reconnectAfterDrain = true
        connection = .waitingForConnection
        emit(.connectTransport)
        return .done
    }

    private mutating func disconnect() -> CommandOutcome {
        switch connection {
        case .standAlone:
            return .done
        case .waitingForConnection, .unconnected:
            connection = .standAlone
            emit(.stopConnecting)
            return .done
        default:
            emit(.stopConnecting)
            emit(.dropConnection(reason: "disconnected by the operator"))
            connectionLost(reason: "disconnected by the operator", failureState: .disconnecting, reconnect: false)
            return .done
        }
    }

    // MARK: Data

    private mutating func invalidate(now: MonotonicInstant) -> CommandOutcome {
        guard role == .secondary else { return .refused("invalidate on a Primary is refused; demote first") }
        guard hasLocalDisk else { return .refused("no local disk to invalidate") }
        if connection.isEstablished {
            guard connection == .connected, peer.disk == .upToDate else {
                return .refused("the peer must be Connected and UpToDate to resync from it (now \(connection.rawValue), peer \(peer.disk))")
            }
        }
        bitmap.setAll()
        disk = .inconsistent
        persistSuperblock()
        persistDirtyBitmapPages()
        log("invalidated: full sync from the peer required")
        if connection == .connected {
            emit(.send(.uuids(ownUUIDsPacket())))
            emit(.send(.state(StatePacket(role: role, diskState: disk))))
            runSyncDecision(now: now)
        }
        return .done
    }

    /// drbdadm invalidate-remote: this node's UpToDate data overwrites the peer's in a full resync. The peer carries
    /// it out as its own `invalidate` (and refuses for the same reasons, such as being Primary); the answer
    /// completes the command. Returns nil while the answer is awaited.
    private mutating func invalidateRemote(commandID: UInt64) -> CommandOutcome? {
        guard connection == .connected else {
            return .refused("invalidate-remote needs a Connected peer (now \(connection.rawValue))")
        }
        guard disk == .upToDate else { return .refused("this node's disk is \(disk); it needs UpToDate data to be the source") }
        guard peer.disk != .diskless else { return .refused("the peer has no disk to invalidate") }
        guard pendingRemoteInvalidation == nil else { return .refused("an invalidate-remote is already in progress") }
        let stateChangeID = nextStateChangeID
        nextStateChangeID += 1
        pendingRemoteInvalidation = (commandID, stateChangeID)
        emit(.send(.invalidateRequest(requestID: stateChangeID)))
        return nil
    }

    /// The peer ran invalidate-remote: invalidate here, and answer.
    mutating func receiveInvalidateRequest(requestID: UInt64, now: MonotonicInstant) {
        let outcome = invalidate(now: now)
        let refusal: String? = if case .refused(let reason) = outcome { reason } else { nil }
        if let refusal { log("invalidate-remote from the peer refused: \(refusal)") }
        emit(.send(.stateChangeReply(StateChangeReply(
            requestID: requestID, granted: refusal == nil, reason: refusal ?? ""))))
    }

    /// pause-sync needs a running resync. resume-sync always clears the operator's pause (DRBD's user_isp), even
    /// when the resync it paused was interrupted: a pause left behind would hold the next resync forever.
    private mutating func pauseResync(_ paused: Bool) -> CommandOutcome {
        guard connection.isResyncing || (!paused && resyncPausedByUser) else {
            return .refused("no resync is running (\(connection.rawValue))")
        }
        setResyncPaused(byUser: paused)
        if connection.isEstablished { emit(.send(.pauseResync(paused))) }
        if !paused { pumpResync(now: clock) }
        return .done
    }

    private mutating func outdate() -> CommandOutcome {
        guard role != .primary else { return .refused("a Primary cannot be outdated; demote it first") }
        guard !connection.isEstablished else { return .refused("outdate is only possible while disconnected") }
        guard disk >= .outdated else { return disk == .outdated ? .done : .refused("the disk is \(disk)") }
        disk = .outdated
        persistSuperblock()
        return .done
    }

    private mutating func newCurrentUUID(clearBitmap: Bool, now: MonotonicInstant) -> CommandOutcome {
        if clearBitmap {
            guard uuids.current & ~1 == GenerationUUIDs.justCreated, disk == .inconsistent,
                !connection.isEstablished || peer.disk == .inconsistent
            else {
                return .refused("--clear-bitmap only skips the initial sync of new metadata on Inconsistent disks")
            }
            uuids = GenerationUUIDs(current: freshUUID())
            uuids.setPrimaryBit(role == .primary)
            bitmap.clearAll()
            disk = .upToDate
            persistSuperblock()
            persistDirtyBitmapPages()
            if connection == .connected {
                emit(.send(.uuids(ownUUIDsPacket(skipInitialSync: true))))
                emit(.send(.state(StatePacket(role: role, diskState: disk))))
            }
            return .done
        }
        guard disk == .upToDate else { return .refused("a new current UUID needs UpToDate data (disk is \(disk))") }
        uuids.startNewGeneration(fresh: freshUUID(), isPrimary: role == .primary)
        persistSuperblock()
        if connection == .connected {
            emit(.send(.uuids(ownUUIDsPacket())))
            emit(.send(.state(StatePacket(role: role, diskState: disk))))
        }
        return .done
    }

    private mutating func detach() -> CommandOutcome {
        guard hasLocalDisk else { return .done }
        if role == .primary && !(connection.isEstablished && peer.disk == .upToDate) {
            return .refused("detaching would leave this Primary without UpToDate data")
        }
        persistSuperblock(clean: false)
        persistDirtyBitmapPages()
        detachDisk(reason: "detached by the operator")
        return .done
    }

    /// Goes Diskless. A Primary with a connected UpToDate peer carries on: reads and writes are served by the peer.
    mutating func detachDisk(reason: String) {
        guard hasLocalDisk else { return }
        log("disk( \(disk) -> Diskless ): \(reason)")
        disk = .diskless
        // A resync in preparation would go on without a disk behind it (a sync UUID this node cannot persist, or
        // an Inconsistent state it has no disk for); a source or verify cannot serve. Start over in a new handshake.
        if connection.isSyncSource || connection.isPreparingResync || connection == .verifySource
            || connection == .verifyTarget
        {
            emit(.dropConnection(reason: "lost the local disk during \(connection.rawValue)"))
            return connectionLost(reason: "local disk lost", failureState: .networkFailure, reconnect: reconnectAfterDrain)
        }
        if connection.isResyncing { resync = nil; connection = .connected }
        if connection.isEstablished { emit(.send(.state(StatePacket(role: role, diskState: disk)))) }
    }
}
