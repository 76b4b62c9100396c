/// Progress figures, as `drbdadm status` and /proc/drbd show them.
public struct ResyncFigures: Sendable, Hashable {
    public var direction: SyncDirection
    public var totalBytes: UInt64
    public var remainingBytes: UInt64
    public var averageBytesPerSecond: UInt64
    /// Seconds left at the average speed; nil before any progress.
    public var estimatedSecondsRemaining: UInt64?
    public var paused: Bool

    /// Percentage done, with two decimals as DRBD 9 prints it.
    public var percentDone: Double {
        guard totalBytes > 0 else { return 100 }
        return (Double(totalBytes - min(remainingBytes, totalBytes)) / Double(totalBytes) * 10_000).rounded() / 100
    }
}

/// A running resync (either side).
struct ResyncProgress: Sendable {
    var direction: SyncDirection
    var startedAt: MonotonicInstant
    var totalBlocks: UInt64
    var remainingBlocks: UInt64
    var paused = false
    /// Target side: every block is in, the final flush is on its way.
    var finishing = false
    // Target side: requests in flight, by first block, with their block count.
    var cursor: UInt64 = 0
    var inFlight: [UInt64: UInt64] = [:]
    var controller: ResyncRateController
    var lastNow: MonotonicInstant

    var inFlightBytes: Int64 { Int64(inFlight.values.reduce(0, +) * SyncBitmap.blockBytes) }

    var figures: ResyncFigures {
        let doneBytes = (totalBlocks - min(remainingBlocks, totalBlocks)) * SyncBitmap.blockBytes
        let elapsed = (lastNow - startedAt).seconds
        let speed = elapsed > 0 ? UInt64(Double(doneBytes) / elapsed) : 0
        let remainingBytes = remainingBlocks * SyncBitmap.blockBytes
        return ResyncFigures(
            direction: direction, totalBytes: totalBlocks * SyncBitmap.blockBytes, remainingBytes: remainingBytes,
            averageBytesPerSecond: speed, estimatedSecondsRemaining: speed > 0 ? remainingBytes / speed : nil,
            paused: paused)
    }
}

/// A running online verify (VerifyS side).
struct VerifyProgress: Sendable {
    var cursor: UInt64 = 0
    var inFlight: [UInt64: UInt64] = [:]
    var mismatchedBlocks: UInt64 = 0
    var controller: ResyncRateController
    var commandID: UInt64
}

/// Bitmap exchange, resync (target pulls, source serves) and online verify (reference drbd.md section 3).
extension ReplicationMachine {
    /// Resync requests cover up to this many bytes of consecutive out-of-sync blocks.
    public static let resyncRequestBytesMaximum = 128 * 1024
    /// Online verify compares one bitmap block per request, as DRBD does (BM_BLOCK_SIZE): a mismatch then marks
    /// exactly the blocks that differ, and the report and the resync that follows are no larger than the damage.
    static let verifyRequestBytesMaximum = Int(SyncBitmap.blockBytes)

    // MARK: Bitmap exchange

    mutating func startBitmapExchange(direction: SyncDirection, full: Bool, preserve: String?) {
        if full {
            bitmap.setAll()
            flags.insert(.fullSync)
        }
        if direction == .source && disk == .consistent {
            // The peer's copy is worse than ours: ours is the newest there is.
            disk = .upToDate
        }
        connection = direction == .source ? .waitingForBitmapSource : .waitingForBitmapTarget
        bitmapExchange = BitmapExchange(direction: direction, preserveBeforeSync: preserve)
        let words = bitmap.words
        var first = 0
        repeat {
            let end = min(first + Self.bitmapWordsPerChunk, words.count)
            emit(.send(.bitmapChunk(BitmapChunk(
                firstWord: UInt64(first), words: Array(words[first..<end]), isLast: end == words.count))))
            first = end
        } while first < words.count
    }

    mutating func receiveBitmapChunk(_ chunk: BitmapChunk, now: MonotonicInstant) {
        guard let exchange = bitmapExchange else {
            return protocolError("bitmap chunk outside the bitmap exchange")
        }
        guard chunk.firstWord <= UInt64(bitmap.words.count),
            UInt64(chunk.words.count) <= UInt64(bitmap.words.count) - chunk.firstWord
        else {
            return protocolError("bitmap chunk at word \(chunk.firstWord) beyond our \(bitmap.words.count) words")
        }
        bitmap.merge(words: chunk.words, startingAt: Int(chunk.firstWord))
        guard chunk.isLast else { return }
        bitmapExchangeDone(exchange, now: now)
    }

    private mutating func bitmapExchangeDone(_ exchange: BitmapExchange, now: MonotonicInstant) {
        bitmapExchange = nil
        // Both bitmaps are now the union; it must survive a crash before any block moves.
        persistDirtyBitmapPages()
        switch exchange.direction {
        case .source:
            var syncUUID = uuids.bitmap & ~1
            if syncUUID != 0 && syncUUID != GenerationUUIDs.justCreated {
                syncUUID &+= UUIDComparison.newBitmapUUIDOffset
            } else {
                syncUUID = freshUUID()
            }
            if uuids.bitmap != 0 { uuids.pushHistory(uuids.bitmap) }
            uuids.bitmap = syncUUID
            persistSuperblock()
            emit(.send(.syncUUID(syncUUID)))
            emit(.send(.uuids(ownUUIDsPacket())))
            connection = resyncIsPaused ? .pausedSyncSource : .syncSource
            // The target turns Inconsistent as it adopts the sync UUID; its UpToDate state report ends the resync.
            peer.disk = .inconsistent
            beginResync(.source, now: now)
        case .target:
            if let reason = exchange.preserveBeforeSync, bitmap.setCount > 0 {
                emit(.preserveDivergedBlocks(bitmap.setRuns(), reason: reason))
            }
            emit(.runHandler(.beforeResyncTarget))
            connection = .waitingForSyncUUID
        }
    }

    mutating func receiveSyncUUID(_ syncUUID: UInt64, now: MonotonicInstant) {
        guard connection == .waitingForSyncUUID else {
            return protocolError("sync UUID in state \(connection.rawValue)")
        }
        uuids.current = syncUUID & ~1
        uuids.bitmap = 0
        uuids.setPrimaryBit(role == .primary)
        disk = .inconsistent
        persistSuperblock()
        connection = resyncIsPaused ? .pausedSyncTarget : .syncTarget
        emit(.send(.state(StatePacket(role: role, diskState: disk))))
        beginResync(.target, now: now)
        pumpResync(now: now)
    }

    private mutating func beginResync(_ direction: SyncDirection, now: MonotonicInstant) {
        resync = ResyncProgress(
            direction: direction, startedAt: now, totalBlocks: bitmap.setCount, remainingBlocks: bitmap.setCount,
            paused: connection == .pausedSyncSource || connection == .pausedSyncTarget,
            controller: ResyncRateController(settings: settings.resync), lastNow: now)
        log("Began resync as \(connection.rawValue) (will sync \(bitmap.setCount * 4) KB [\(bitmap.setCount) bits set]).")
    }

    // MARK: Target: pulling

    /// Issues resync requests for out-of-sync blocks, as many as the pacing allows.
    mutating func pumpResync(now: MonotonicInstant) {
        guard connection == .syncTarget, var progress = resync else { return }
        progress.lastNow = now
        progress.remainingBlocks = bitmap.setCount
        defer { if resync != nil { resync = progress } }
        var allowance = progress.controller.allowanceBytes(
            now: now, inFlightBytes: progress.inFlightBytes, applicationActive: !receivedEpochs.isEmpty)
        var wrapped = false
        while progress.inFlight.count < settings.resync.requestsInFlightMaximum && allowance >= 4096 {
            guard let first = nextBlockToRequest(&progress, wrapped: &wrapped) else { break }
            var count: UInt64 = 1
            let limit = UInt64(Self.resyncRequestBytesMaximum) / SyncBitmap.blockBytes
            while count < limit, first + count < bitmap.blockCount, bitmap.isSet(first + count),
                !isResyncInFlight(first + count, progress)
            {
                count += 1
            }
            progress.inFlight[first] = count
            progress.cursor = first + count
            let bytes = Int64(count * SyncBitmap.blockBytes)
            allowance -= bytes
            progress.controller.consume(bytes)
            let request = BlockRequest(
                range: BlockRange(sector: first * 8, sizeBytes: UInt32(bytes)), requestID: first)
            if settings.checksumResyncAlgorithm != nil {
                emit(.submitRead(
                    token: allocateToken(.resyncChecksumRead(request, generation: connectionGeneration)),
                    range: request.range))
            } else {
                emit(.send(.resyncRequest(request)))
            }
        }
        if progress.inFlight.isEmpty && bitmap.setCount == 0 && !progress.finishing {
            // The resynced blocks may sit in a volatile cache: make them stable before claiming UpToDate, because
            // the source forgets them the moment we do.
            progress.finishing = true
            resync = progress
            emit(.submitFlush(token: allocateToken(.resyncFinishFlush(generation: connectionGeneration))))
        }
    }

    private func nextBlockToRequest(_ progress: inout ResyncProgress, wrapped: inout Bool) -> UInt64? {
        var from = progress.cursor
        while true {
            if let block = bitmap.firstSet(from: from) {
                if !isResyncInFlight(block, progress) { return block }
                from = block + 1
                continue
            }
            // Bits behind the cursor (set again meanwhile): go round once more.
            guard !wrapped, progress.cursor > 0 else { return nil }
            wrapped = true
            progress.cursor = 0
            from = 0
        }
    }

    private func isResyncInFlight(_ block: UInt64, _ progress: ResyncProgress) -> Bool {
        progress.inFlight.contains { block >= $0.key && block < $0.key + $0.value }
    }

    mutating func checksumReadCompleted(_ request: BlockRequest, result: LocalIOResult, generation: UInt64) {
        guard generation == connectionGeneration, connection.isResyncing, let algorithm = settings.checksumResyncAlgorithm
        else { return }
        guard case .read(let data) = result else { return }
        emit(.send(.checksumResyncRequest(request, digest: algorithm.digest(data))))
    }

    mutating func receiveResyncReply(_ reply: BlockReply) {
        guard connection.isSyncTarget,
            resync?.inFlight[reply.requestID] == UInt64(reply.range.sizeBytes) / SyncBitmap.blockBytes,
            reply.range.sector == reply.requestID * 8, reply.payload.count == Int(reply.range.sizeBytes)
        else {
            return protocolError("resync reply \(reply.requestID) \(reply.range) was not requested")
        }
        submitLocalWrite(
            range: reply.range, payload: reply.payload, forceUnitAccess: false,
            purpose: .resyncWrite(BlockRequest(range: reply.range, requestID: reply.requestID), generation: connectionGeneration))
    }

    mutating func resyncWriteCompleted(_ request: BlockRequest, succeeded: Bool, generation: UInt64, now: MonotonicInstant) {
        guard generation == connectionGeneration, connection.isResyncing else { return }
        resync?.inFlight[request.requestID] = nil
        guard succeeded else { return }
        bitmap.clear(SyncBitmap.blocks(covering: request.range))
        emit(.send(.resyncWriteAck(BlockAck(range: request.range, requestID: request.requestID), inSync: false)))
        pumpResync(now: now)
    }

    mutating func receiveResyncWriteAck(_ ack: BlockAck, inSync: Bool, now: MonotonicInstant) {
        switch connection {
        case .syncTarget, .pausedSyncTarget:
            // The source found our block identical (csums-alg).
            guard inSync, resync?.inFlight.removeValue(forKey: ack.requestID) != nil else {
                return protocolError("unexpected in-sync answer for \(ack.range)")
            }
            bitmap.clear(SyncBitmap.blocks(covering: ack.range))
            pumpResync(now: now)
        case .syncSource, .pausedSyncSource:
            guard ack.range.endBytes <= sizeBytes else { return protocolError("resync ack beyond the device") }
            bitmap.clear(SyncBitmap.blocks(covering: ack.range))
            resync?.remainingBlocks = bitmap.setCount
            resync?.lastNow = now
        default:
            // Late acknowledgements after the resync finished carry no information.
            break
        }
    }

    mutating func resyncFinishFlushCompleted(succeeded: Bool, generation: UInt64, now: MonotonicInstant) {
        guard generation == connectionGeneration, connection.isSyncTarget,
            resync?.finishing == true
        else { return }
        guard succeeded else {
            resync?.finishing = false
            return
        }
        finishResyncAsTarget(now: now)
    }

    private mutating func finishResyncAsTarget(now: MonotonicInstant) {
        guard let peerUUIDs = peer.uuids else { preconditionFailure("resync finished without the source's UUIDs") }
        let figures = resync?.figures
        resync = nil
        // Adopt the source's generation, as it will look after it rotates its Bitmap UUID into history.
        var adopted = peerUUIDs
        adopted.clearBitmapUUID()
        adopted.setPrimaryBit(role == .primary)
        uuids = adopted
        disk = .upToDate
        crashedPrimary = false
        flags.remove(.fullSync)
        connection = .connected
        persistSuperblock()
        persistDirtyBitmapPages()
        emit(.send(.uuids(ownUUIDsPacket())))
        emit(.send(.state(StatePacket(role: role, diskState: disk))))
        emit(.runHandler(.afterResyncTarget))
        log("Resync done (total \(figures.map { "\($0.totalBytes / 1024) KB, \($0.averageBytesPerSecond / 1024) K/sec" } ?? "?"))")
    }

    mutating func finishResyncAsSource(now: MonotonicInstant) {
        resync = nil
        bitmap.clearAll()
        uuids.clearBitmapUUID()
        crashedPrimary = false
        flags.remove(.fullSync)
        connection = .connected
        peer.disk = .upToDate
        persistSuperblock()
        persistDirtyBitmapPages()
        log("Resync done as SyncSource; peer is UpToDate")
    }

    // MARK: Source: serving

    mutating func serveResyncRequest(_ request: BlockRequest, peerDigest: [UInt8]?) {
        guard connection.isSyncSource else {
            return protocolError("resync request in state \(connection.rawValue)")
        }
        guard request.range.sizeBytes > 0, request.range.endBytes <= sizeBytes else {
            return protocolError("resync request for \(request.range) beyond the device")
        }
        guard hasLocalDisk && disk >= .consistent else {
            emit(.dropConnection(reason: "the sync source lost its disk"))
            return connectionLost(reason: "sync source without a disk", failureState: .networkFailure, reconnect: true)
        }
        if gate.overlapsInFlight(byteRange(request.range)) {
            // An application write to these blocks is on its way to our disk; read after it lands, so that the
            // data sent cannot be older than the write the peer already received.
            heldResyncRequests.append((request, peerDigest))
            return
        }
        let token = allocateToken(.resyncSourceRead(request, peerDigest: peerDigest, generation: connectionGeneration))
        resyncReadsInFlight[token] = byteRange(request.range)
        emit(.submitRead(token: token, range: request.range))
    }

    func resyncReadOverlaps(_ bytes: Range<UInt64>) -> Bool {
        resyncReadsInFlight.values.contains { $0.overlaps(bytes) }
    }

    mutating func resyncSourceReadCompleted(
        _ request: BlockRequest, peerDigest: [UInt8]?, result: LocalIOResult, generation: UInt64
    ) {
        defer { releaseWritesHeldForResync() }
        guard generation == connectionGeneration, connection.isResyncing else { return }
        guard case .read(let data) = result else { return }
        if let peerDigest, let algorithm = settings.checksumResyncAlgorithm, algorithm.digest(data) == peerDigest {
            bitmap.clear(SyncBitmap.blocks(covering: request.range))
            emit(.send(.resyncWriteAck(BlockAck(range: request.range, requestID: request.requestID), inSync: true)))
        } else {
            emit(.send(.resyncReply(BlockReply(range: request.range, requestID: request.requestID, payload: data))))
        }
    }

    private mutating func releaseWritesHeldForResync() {
        guard !writesHeldForResync.isEmpty else { return }
        let held = writesHeldForResync
        writesHeldForResync.removeAll()
        for write in held { submit(write, now: clock) }
    }

    /// Resync requests held behind application writes are retried whenever a local write completes.
    mutating func retryHeldResyncRequests() {
        guard !heldResyncRequests.isEmpty else { return }
        let held = heldResyncRequests
        heldResyncRequests.removeAll()
        for (request, digest) in held { serveResyncRequest(request, peerDigest: digest) }
    }

    mutating func abandonResyncAndVerify() {
        resync = nil
        if let verify {
            emit(.commandCompleted(commandID: verify.commandID, .refused("online verify aborted: the connection was lost")))
        }
        verify = nil
        resyncReadsInFlight.removeAll()
        heldResyncRequests.removeAll()
    }

    // MARK: Pause and resume

    mutating func setResyncPaused(byUser: Bool? = nil, byPeer: Bool? = nil) {
        if let byUser { resyncPausedByUser = byUser }
        if let byPeer { peer.pausedResync = byPeer }
        let paused = resyncIsPaused
        switch connection {
        case .syncSource where paused: connection = .pausedSyncSource
        case .syncTarget where paused: connection = .pausedSyncTarget
        case .pausedSyncSource where !paused: connection = .syncSource
        case .pausedSyncTarget where !paused: connection = .syncTarget
        default: break
        }
        resync?.paused = paused
    }

    var resyncIsPaused: Bool { resyncPausedByUser || peer.pausedResync }

    mutating func peerPausedResync(_ paused: Bool) {
        setResyncPaused(byPeer: paused)
        pumpResync(now: clock)
    }

    // MARK: Online verify

    mutating func startVerify(commandID: UInt64, now: MonotonicInstant) -> CommandOutcome? {
        guard settings.verifyAlgorithm != nil else { return .refused("no verify-alg is configured for this resource") }
        guard connection == .connected, disk == .upToDate, peer.disk == .upToDate else {
            return .refused("verify needs Connected UpToDate/UpToDate (now \(connection.rawValue) \(disk)/\(peer.disk))")
        }
        connection = .verifySource
        verify = VerifyProgress(controller: ResyncRateController(settings: settings.resync), commandID: commandID)
        log("Online Verify start")
        pumpVerify(now: now)
        return nil
    }

    mutating func pumpVerify(now: MonotonicInstant) {
        guard connection == .verifySource, var progress = verify else { return }
        var allowance = progress.controller.allowanceBytes(
            now: now, inFlightBytes: Int64(progress.inFlight.values.reduce(0, +) * SyncBitmap.blockBytes),
            applicationActive: !requests.isEmpty)
        let limit = UInt64(Self.verifyRequestBytesMaximum) / SyncBitmap.blockBytes
        while progress.cursor < bitmap.blockCount && progress.inFlight.count < settings.resync.requestsInFlightMaximum
            && allowance >= 4096
        {
            let count = min(limit, bitmap.blockCount - progress.cursor)
            let request = BlockRequest(
                range: BlockRange(sector: progress.cursor * 8, sizeBytes: UInt32(count * SyncBitmap.blockBytes)),
                requestID: progress.cursor)
            progress.inFlight[progress.cursor] = count
            progress.cursor += count
            allowance -= Int64(count * SyncBitmap.blockBytes)
            progress.controller.consume(Int64(count * SyncBitmap.blockBytes))
            emit(.send(.verifyRequest(request)))
        }
        verify = progress
        if progress.cursor >= bitmap.blockCount && progress.inFlight.isEmpty { finishVerify() }
    }

    mutating func serveVerifyRequest(_ request: BlockRequest) {
        guard connection == .connected || connection == .verifyTarget, request.range.endBytes <= sizeBytes,
            request.range.sizeBytes > 0, hasUpToDateData
        else {
            return protocolError("verify request for \(request.range) in state \(connection.rawValue)")
        }
        if connection == .connected { log("Online Verify start (as VerifyT)") }
        connection = .verifyTarget
        emit(.submitRead(
            token: allocateToken(.verifyTargetRead(request, generation: connectionGeneration)), range: request.range))
    }

    mutating func verifyTargetReadCompleted(_ request: BlockRequest, result: LocalIOResult, generation: UInt64) {
        guard generation == connectionGeneration, connection.isEstablished,
            let algorithm = settings.verifyAlgorithm, case .read(let data) = result
        else { return }
        emit(.send(.verifyReply(request, digest: algorithm.digest(data))))
    }

    mutating func receiveVerifyReply(_ request: BlockRequest, digest: [UInt8]) {
        guard connection == .verifySource, verify?.inFlight[request.requestID] != nil else {
            return protocolError("verify reply for \(request.range) that was not requested")
        }
        emit(.submitRead(
            token: allocateToken(.verifySourceRead(request, peerDigest: digest, generation: connectionGeneration)),
            range: request.range))
    }

    mutating func verifySourceReadCompleted(
        _ request: BlockRequest, peerDigest: [UInt8], result: LocalIOResult, generation: UInt64
    ) {
        guard generation == connectionGeneration, connection == .verifySource, var progress = verify,
            let algorithm = settings.verifyAlgorithm
        else { return }
        progress.inFlight[request.requestID] = nil
        if case .read(let data) = result, algorithm.digest(data) != peerDigest {
            let blocks = SyncBitmap.blocks(covering: request.range)
            progress.mismatchedBlocks += UInt64(blocks.count)
            bitmap.set(blocks)
            emit(.send(.outOfSync(request.range)))
            log("Out of sync: start=\(request.range.sector), size=\(request.range.sizeBytes / 512) (sectors)")
        }
        verify = progress
        pumpVerify(now: clock)
    }

    private mutating func finishVerify() {
        guard let progress = verify else { return }
        verify = nil
        connection = .connected
        persistDirtyBitmapPages()
        emit(.send(.state(StatePacket(role: role, diskState: disk))))
        log("Online verify done (out of sync: \(progress.mismatchedBlocks * 4) KB); disconnect and connect to resync")
        emit(.commandCompleted(commandID: progress.commandID, .done))
        lastVerifyMismatchedBlocks = progress.mismatchedBlocks
    }
}
