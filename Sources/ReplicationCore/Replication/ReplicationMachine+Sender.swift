import TandemConfig

/// The write path on the Primary (reference drbd.md section 1): the activity log is updated before a write to a cold
/// extent, the write is tagged with the current epoch, submitted locally and sent to the peer, and completes upward
/// exactly when the replication protocol says. It stays in the transfer log until the peer's barrier
/// acknowledgement proves it stable there; if the connection is lost first, its blocks are marked out of sync.
extension ReplicationMachine {
    /// The largest request the device accepts (also the wire's payload limit).
    public static let requestBytesMaximum = PacketCodec.maximumBlockBytes

    enum AckLevel { case received, written }

    var hasLocalDisk: Bool { disk > .failed && disk != .unknown }

    // MARK: Submission

    mutating func submit(_ write: ApplicationWrite, now: MonotonicInstant) {
        if let failure = validate(write) {
            return emit(.completeWrite(requestID: write.requestID, .failure(failure)))
        }
        precondition(requests[write.requestID] == nil, "request ID \(write.requestID) reused while in flight")
        let range = BlockRange(sector: write.offsetBytes / 512, sizeBytes: UInt32(write.lengthBytes))
        if connection.isSyncSource, resyncReadOverlaps(byteRange(range)) {
            // A resync read of these blocks is in flight; its (older) data must reach the peer before this write.
            writesHeldForResync.append(write)
            return
        }
        var extents: [UInt32] = []
        if hasLocalDisk {
            extents = Array(ActivityLog.extents(coveringOffset: write.offsetBytes, lengthBytes: UInt64(write.lengthBytes)))
            switch activityLog.begin(extents: extents) {
            case .alreadyHot:
                break
            case .needsTransactions(let transactions, let evicted):
                // Bits of extents leaving the log must be on disk first: after a crash only hot extents are
                // resynced wholesale, so a cold extent's bits are all the protection it has.
                let evictedPages = evicted.flatMap { bitmap.pages(covering: blocks(ofExtent: $0)) }
                if !evictedPages.isEmpty { emit(.persistBitmap(evictedPages)) }
                for transaction in transactions { emit(.persistActivityLog(transaction)) }
            case .full:
                writesWaitingForActivityLog.append(write)
                return
            }
        }
        startWrite(write, range: range, extents: extents, now: now)
    }

    private func validate(_ write: ApplicationWrite) -> RequestFailure? {
        guard role == .primary else { return .notPrimary }
        precondition(!write.isZeroing || write.payload.isEmpty, "zeroing write \(write.requestID) carries data")
        guard write.offsetBytes % 512 == 0, write.lengthBytes % 512 == 0, write.lengthBytes > 0 else {
            return .misaligned
        }
        guard write.lengthBytes <= Self.requestBytesMaximum else { return .tooLarge }
        guard write.offsetBytes <= sizeBytes, UInt64(write.lengthBytes) <= sizeBytes - write.offsetBytes else {
            return .outOfRange
        }
        guard hasUpToDateData || (!hasLocalDisk && peerReceivesWrites && peer.disk == .upToDate) else {
            return .noUpToDateData
        }
        return nil
    }

    private mutating func startWrite(_ write: ApplicationWrite, range: BlockRange, extents: [UInt32], now: MonotonicInstant) {
        let sending = peerReceivesWrites
        var request = WriteRequest(
            requestID: write.requestID, range: range, epoch: sending ? assignEpoch() : currentEpoch, isFlush: false,
            extents: extents, local: hasLocalDisk ? .pending : .notIssued, network: sending ? .awaitingAck : .notSent,
            sentAt: now)
        if !sending {
            // The peer will not see this write: remember the blocks for the next resync.
            bitmap.set(SyncBitmap.blocks(covering: range))
        }
        if hasLocalDisk {
            submitLocalWrite(
                range: range, payload: write.payload, forceUnitAccess: write.forceUnitAccess, zeroes: write.isZeroing,
                purpose: .applicationWrite(requestID: write.requestID))
        }
        if sending {
            var dataFlags = ackFlag
            if write.forceUnitAccess { dataFlags.insert(.forceUnitAccess) }
            if connection.isSyncSource { dataFlags.insert(.mayClearOutOfSync) }
            if write.isZeroing { dataFlags.insert(.zeroes) }
            emit(.send(.data(DataPacket(
                range: range, requestID: write.requestID, epoch: request.epoch, flags: dataFlags,
                payload: write.payload))))
            addToTransferLog(&request)
        }
        requests[write.requestID] = request
        completeIfReady(write.requestID)
    }

    /// An application flush: every write completed before it is on stable storage on every node with a copy
    /// (protocol C), or handed to the peer (A) / in its memory (B), when it completes.
    mutating func flush(requestID: UInt64, now: MonotonicInstant) {
        guard role == .primary else { return emit(.completeFlush(requestID: requestID, .failure(.notPrimary))) }
        let sending = peerReceivesWrites
        guard hasLocalDisk || sending else {
            return emit(.completeFlush(requestID: requestID, .failure(.noUpToDateData)))
        }
        var request = WriteRequest(
            requestID: requestID, range: BlockRange(sector: 0, sizeBytes: 0), epoch: sending ? assignEpoch() : currentEpoch,
            isFlush: true, extents: [], local: hasLocalDisk ? .pending : .notIssued,
            network: sending ? .awaitingAck : .notSent, sentAt: now)
        if hasLocalDisk {
            emit(.submitFlush(token: allocateToken(.applicationFlush(requestID: requestID))))
        }
        if sending {
            emit(.send(.data(DataPacket(
                range: request.range, requestID: requestID, epoch: request.epoch, flags: ackFlag.union(.flush),
                payload: []))))
            addToTransferLog(&request)
        }
        requests[requestID] = request
        completeIfReady(requestID)
    }

    /// The protocol requests complete by. A Diskless Primary's only copy is the peer's disk, so it waits for that
    /// disk as protocol C does: with A or B it would acknowledge writes (and flushes) that exist on no disk at all.
    var completionProtocol: ReplicationProtocol { hasLocalDisk ? settings.replicationProtocol : .c }

    /// The acknowledgement the protocol waits for, as a flag telling the receiver to send it.
    private var ackFlag: DataFlags {
        switch completionProtocol {
        case .a: []
        case .b: .sendReceiveAck
        case .c: .sendWriteAck
        }
    }

    /// The epoch for the next write sent to the peer, closing the current one first if a request completed since
    /// it began or it is full: a write issued after a completion must never overtake it on the peer.
    private mutating func assignEpoch() -> UInt32 {
        if writesInCurrentEpoch > 0 && (epochClosedByCompletion || writesInCurrentEpoch >= settings.maxEpochSize) {
            sendBarrier()
        }
        epochClosedByCompletion = false
        writesInCurrentEpoch += 1
        return currentEpoch
    }

    /// A completion closes the epoch: the barrier goes out now rather than with the next write, so that the
    /// peer acknowledges (and we can release) the epoch's requests even if no further write comes.
    private mutating func closeCurrentEpoch() {
        guard writesInCurrentEpoch > 0, peerReceivesWrites else {
            epochClosedByCompletion = true
            return
        }
        sendBarrier()
        epochClosedByCompletion = false
    }

    /// Closes the current epoch on the wire and starts the next.
    private mutating func sendBarrier() {
        emit(.send(.barrier(epoch: currentEpoch)))
        currentEpoch &+= 1
        writesInCurrentEpoch = 0
    }

    private mutating func addToTransferLog(_ request: inout WriteRequest) {
        request.inTransferLog = true
        if completionProtocol == .a
            || (completionProtocol == .c && settings.mutations.acknowledgeProtocolCBeforePeerWrite)
        {
            // Protocol A: handed to the send buffer is all it waits for.
            request.network = .acknowledged
        }
        if transferLog.last?.epoch == request.epoch {
            transferLog[transferLog.count - 1].requestIDs.append(request.requestID)
        } else {
            transferLog.append((request.epoch, [request.requestID]))
        }
    }

    /// Starts a fresh epoch on a new connection, so that barrier numbers on the wire start clean.
    mutating func resetEpochsForNewConnection() {
        currentEpoch &+= 1
        writesInCurrentEpoch = 0
        epochClosedByCompletion = false
    }

    // MARK: Local I/O

    /// Submits a write (or, with `zeroes`, a zeroing of the range) once no overlapping write is in flight.
    mutating func submitLocalWrite(
        range: BlockRange, payload: [UInt8], forceUnitAccess: Bool, zeroes: Bool = false, purpose: LocalIOPurpose
    ) {
        let token = allocateToken(purpose)
        let write = GatedWrite(range: range, payload: payload, forceUnitAccess: forceUnitAccess, zeroes: zeroes)
        if gate.admit(token: token, bytes: byteRange(range)) {
            emitLocalWrite(token: token, write)
        } else {
            gatedWrites[token] = write
        }
    }

    private mutating func emitLocalWrite(token: UInt64, _ write: GatedWrite) {
        if write.zeroes {
            emit(.submitZeroes(token: token, range: write.range, forceUnitAccess: write.forceUnitAccess))
        } else {
            emit(.submitWrite(token: token, range: write.range, payload: write.payload, forceUnitAccess: write.forceUnitAccess))
        }
    }

    /// Releases writes that waited behind a completed overlapping write.
    mutating func releaseGate(after token: UInt64) {
        for released in gate.complete(token: token) {
            guard let write = gatedWrites.removeValue(forKey: released) else {
                preconditionFailure("gate released token \(released) that has no waiting write")
            }
            emitLocalWrite(token: released, write)
        }
    }

    mutating func localIOCompleted(token: UInt64, result: LocalIOResult, now: MonotonicInstant) {
        guard let purpose = localIO.removeValue(forKey: token) else {
            preconditionFailure("completion for unknown I/O token \(token) (\(result))")
        }
        releaseGate(after: token)
        resyncReadsInFlight[token] = nil
        switch purpose {
        case .applicationWrite, .resyncWrite: diskCache.writeCompleted()
        case .peerWrite(let packet, _) where packet.range.sizeBytes > 0: diskCache.writeCompleted()
        case .applicationFlush, .peerWrite, .epochFlush, .resyncFinishFlush:
            diskCache.flushCompleted(token: token, succeeded: result == .flushed)
        case .applicationRead, .resyncChecksumRead, .resyncSourceRead, .verifyTargetRead, .verifySourceRead,
            .servePeerRead:
            break
        }
        if result == .failed {
            if case .applicationWrite(let requestID) = purpose { markFailedLocalWrite(requestID) }
            localDiskFailed(purpose: purpose)
        }
        switch purpose {
        case .applicationWrite(let requestID):
            requests[requestID]?.local = result == .written ? .done : .failed
            completeIfReady(requestID)
        case .applicationFlush(let requestID):
            requests[requestID]?.local = result == .flushed ? .done : .failed
            completeIfReady(requestID)
        case .applicationRead(let requestID):
            if case .read(let payload) = result {
                emit(.completeRead(requestID: requestID, .success, payload: payload))
            } else {
                emit(.completeRead(requestID: requestID, .failure(.ioError), payload: []))
            }
        case .peerWrite(let packet, let generation):
            peerWriteCompleted(packet, succeeded: result != .failed, generation: generation)
        case .epochFlush:
            epochFlushCompleted(succeeded: result == .flushed)
        case .resyncWrite(let request, let generation):
            resyncWriteCompleted(request, succeeded: result == .written, generation: generation, now: now)
        case .resyncChecksumRead(let request, let generation):
            checksumReadCompleted(request, result: result, generation: generation)
        case .resyncSourceRead(let request, let digest, let generation):
            resyncSourceReadCompleted(request, peerDigest: digest, result: result, generation: generation)
        case .verifyTargetRead(let request, let generation):
            verifyTargetReadCompleted(request, result: result, generation: generation)
        case .verifySourceRead(let request, let digest, let generation):
            verifySourceReadCompleted(request, peerDigest: digest, result: result, generation: generation)
        case .servePeerRead(let request, let generation):
            servePeerReadCompleted(request, result: result, generation: generation)
        case .resyncFinishFlush(let generation):
            resyncFinishFlushCompleted(succeeded: result == .flushed, generation: generation, now: now)
        }
        retryHeldResyncRequests()
        finishDrainIfIdle()
    }

    /// Our disk missed a write the peer may have stored. Both bitmaps must say so: ours (if its metadata can still
    /// be written) for when the disk is attached again, and the peer's, which survives our disk and is what a
    /// resync after re-attaching will use. The out-of-sync packet follows the write on the data channel.
    private mutating func markFailedLocalWrite(_ requestID: UInt64) {
        guard var request = requests[requestID] else { return }
        bitmap.set(SyncBitmap.blocks(covering: request.range))
        persistDirtyBitmapPages()
        if connection.isEstablished { emit(.send(.outOfSync(request.range))) }
        if settings.replicationProtocol != .c && settings.onIOError != .passOn && request.inTransferLog
            && request.network == .acknowledged
        {
            // Protocol A or B counted the write done once sent or received; with our copy gone only the peer's
            // disk can hold it, so it completes when the barrier ack proves it stable there, or fails.
            request.network = .awaitingAck
            requests[requestID] = request
            closeCurrentEpoch()
        }
    }

    /// A backing-device error. With on-io-error detach (the default) the node goes Diskless and, if Primary,
    /// carries on through the peer; pass_on leaves the disk attached and reports the error upward.
    private mutating func localDiskFailed(purpose: LocalIOPurpose) {
        guard hasLocalDisk else { return }
        switch settings.onIOError {
        case .passOn:
            log("local I/O error passed on (on-io-error pass_on)")
        case .callLocalIOError:
            emit(.runHandler(.localIOError))
            detachDisk(reason: "local I/O error (on-io-error call-local-io-error)")
        case .detach:
            detachDisk(reason: "local I/O error (on-io-error detach)")
        }
    }

    // MARK: Completion

    /// Completes a request upward once both its local and its network side are settled.
    mutating func completeIfReady(_ requestID: UInt64) {
        guard var request = requests[requestID] else { return }
        if !request.completedUpward && request.local != .pending && request.network != .awaitingAck {
            let localOK = request.local == .done || (request.local == .failed && settings.onIOError != .passOn)
            let succeeded = (request.local == .done || request.network == .acknowledged)
                && (localOK || request.local == .notIssued)
            let outcome: RequestOutcome = succeeded ? .success : .failure(.ioError)
            emit(request.isFlush
                ? .completeFlush(requestID: requestID, outcome) : .completeWrite(requestID: requestID, outcome))
            request.completedUpward = true
            requests[requestID] = request
            closeCurrentEpoch()
        }
        releaseIfFinished(requestID)
    }

    private mutating func releaseIfFinished(_ requestID: UInt64) {
        guard let request = requests[requestID], request.isFinished else { return }
        requests[requestID] = nil
        if !request.extents.isEmpty {
            activityLog.end(extents: request.extents)
            retryWritesWaitingForActivityLog()
        }
    }

    private mutating func retryWritesWaitingForActivityLog() {
        guard !writesWaitingForActivityLog.isEmpty else { return }
        let waiting = writesWaitingForActivityLog
        writesWaitingForActivityLog.removeAll()
        for write in waiting { submit(write, now: clock) }
    }

    // MARK: Acknowledgements

    mutating func peerAcknowledged(_ ack: BlockAck, level: AckLevel) {
        guard var request = requests[ack.requestID], request.inTransferLog, request.range == ack.range else {
            return protocolError("acknowledgement for unknown request \(ack.requestID) \(ack.range)")
        }
        let awaited: AckLevel = completionProtocol == .c ? .written : .received
        if level == awaited && request.network == .awaitingAck { request.network = .acknowledged }
        if level == .written && connection.isSyncSource {
            bitmap.clear(SyncBitmap.blocksFullyCovered(by: request.range))
        }
        requests[ack.requestID] = request
        completeIfReady(ack.requestID)
    }

    mutating func peerFailedWrite(_ ack: BlockAck) {
        guard var request = requests[ack.requestID], request.inTransferLog else {
            return protocolError("negative acknowledgement for unknown request \(ack.requestID)")
        }
        bitmap.set(SyncBitmap.blocks(covering: request.range))
        if request.network == .awaitingAck { request.network = .failed }
        requests[ack.requestID] = request
        completeIfReady(ack.requestID)
    }

    /// Every write of `epoch` is on the peer's stable storage: drop them from the transfer log.
    mutating func receiveBarrierAck(epoch: UInt32, writeCount: UInt32) {
        guard let oldest = transferLog.first, oldest.epoch == epoch, oldest.requestIDs.count == Int(writeCount) else {
            return protocolError(
                "barrier ack for epoch \(epoch) with \(writeCount) writes does not match the transfer log (oldest \(transferLog.first.map { "\($0.epoch)/\($0.requestIDs.count)" } ?? "none"))")
        }
        transferLog.removeFirst()
        for requestID in oldest.requestIDs {
            guard var request = requests[requestID] else { continue }
            request.inTransferLog = false
            if request.network == .awaitingAck { request.network = .acknowledged }
            requests[requestID] = request
            completeIfReady(requestID)
        }
    }

    // MARK: Reads

    mutating func read(requestID: UInt64, range: BlockRange, now: MonotonicInstant) {
        guard role == .primary else { return emit(.completeRead(requestID: requestID, .failure(.notPrimary), payload: [])) }
        guard range.sizeBytes > 0, range.sizeBytes % 512 == 0, Int(range.sizeBytes) <= Self.requestBytesMaximum else {
            return emit(.completeRead(requestID: requestID, .failure(.misaligned), payload: []))
        }
        guard range.endBytes <= sizeBytes else {
            return emit(.completeRead(requestID: requestID, .failure(.outOfRange), payload: []))
        }
        if hasUpToDateData {
            emit(.submitRead(token: allocateToken(.applicationRead(requestID: requestID)), range: range))
        } else if connection.isEstablished && peer.disk == .upToDate {
            let peerRequestID = nextToken
            nextToken += 1
            readsFromPeer[peerRequestID] = requestID
            emit(.send(.readRequest(BlockRequest(range: range, requestID: peerRequestID))))
        } else {
            emit(.completeRead(requestID: requestID, .failure(.noUpToDateData), payload: []))
        }
    }

    mutating func serveReadRequest(_ request: BlockRequest) {
        guard hasUpToDateData, request.range.endBytes <= sizeBytes else {
            return emit(.send(.readReply(BlockReply(range: request.range, requestID: request.requestID, payload: []))))
        }
        emit(.submitRead(
            token: allocateToken(.servePeerRead(request, generation: connectionGeneration)), range: request.range))
    }

    mutating func receiveReadReply(_ reply: BlockReply) {
        guard let requestID = readsFromPeer.removeValue(forKey: reply.requestID) else {
            return protocolError("read reply for unknown request \(reply.requestID)")
        }
        let succeeded = reply.payload.count == Int(reply.range.sizeBytes)
        emit(.completeRead(requestID: requestID, succeeded ? .success : .failure(.ioError), payload: reply.payload))
    }

    mutating func failReadsFromPeer() {
        for (_, requestID) in readsFromPeer.sorted(by: { $0.key < $1.key }) {
            emit(.completeRead(requestID: requestID, .failure(.noUpToDateData), payload: []))
        }
        readsFromPeer.removeAll()
    }

    mutating func servePeerReadCompleted(_ request: BlockRequest, result: LocalIOResult, generation: UInt64) {
        guard generation == connectionGeneration, connection.isEstablished else { return }
        var payload: [UInt8] = []
        if case .read(let data) = result { payload = data }
        emit(.send(.readReply(BlockReply(range: request.range, requestID: request.requestID, payload: payload))))
    }
}
