/// The receiving side of replication (reference drbd.md section 1). Writes of one epoch are submitted together, in
/// any order; the next epoch is held back until the previous one is durable (all writes done, then a flush), and
/// only then is the barrier acknowledged. That is what lets the sender drop requests from its transfer log, and what
/// makes the peer's disk a consistent (if older) image at every moment.
extension ReplicationMachine {
    mutating func receiveData(_ packet: DataPacket, now: MonotonicInstant) {
        let isPureFlush = packet.range.sizeBytes == 0
        let zeroes = packet.flags.contains(.zeroes)
        guard isPureFlush || packet.range.endBytes <= sizeBytes,
            packet.payload.count == (zeroes ? 0 : Int(packet.range.sizeBytes))
        else {
            return protocolError("data packet for \(packet.range) beyond the device of \(sizeBytes) bytes")
        }
        let ack = BlockAck(range: packet.range, requestID: packet.requestID)
        if receivedEpochs.last.map({ $0.closed || $0.generation != connectionGeneration }) ?? true {
            receivedEpochs.append(ReceivedEpoch(generation: connectionGeneration, number: packet.epoch))
        }
        let last = receivedEpochs.count - 1
        guard receivedEpochs[last].number == packet.epoch else {
            return protocolError("write for epoch \(packet.epoch) inside open epoch \(receivedEpochs[last].number)")
        }
        // Every write counts in its epoch, stored or not: the barrier ack carries the count the sender checks.
        receivedEpochs[last].writeCount += 1
        guard hasLocalDisk else {
            // A Diskless node (perhaps only since the write was sent) cannot store it: the sender marks it out of
            // sync.
            return emit(.send(.negativeAck(ack)))
        }
        if peer.disk < .inconsistent && !isPureFlush {
            // A Diskless Primary writes only to us: its own (detached) disk will need these blocks. The bits must
            // be on disk before we acknowledge, since no activity log covers them on this side.
            bitmap.set(SyncBitmap.blocks(covering: packet.range))
            persistDirtyBitmapPages()
        }
        if packet.flags.contains(.sendReceiveAck) { emit(.send(.receiveAck(ack))) }
        if last == 0 {
            receivedEpochs[0].outstanding += 1
            submitPeerWrite(packet)
        } else {
            receivedEpochs[last].buffered.append(packet)
        }
        updateReceiveThrottle()
    }

    private mutating func submitPeerWrite(_ packet: DataPacket) {
        let purpose = LocalIOPurpose.peerWrite(packet, generation: receivedEpochs[0].generation)
        if packet.range.sizeBytes == 0 {
            // The sender's epochs never put a flush with writes that completed before it, so a clean cache means
            // there is nothing for this flush to make durable. Settled here without advancing the epochs: every
            // caller advances them itself once it is done.
            guard !receiverCacheIsClean else {
                return settlePeerWrite(packet, succeeded: true, generation: receivedEpochs[0].generation)
            }
            emit(.submitFlush(token: allocateToken(purpose)))
        } else {
            submitLocalWrite(
                range: packet.range, payload: packet.payload, forceUnitAccess: packet.flags.contains(.forceUnitAccess),
                zeroes: packet.flags.contains(.zeroes), purpose: purpose)
        }
    }

    /// Whether a receiver flush would find nothing to make durable (`DiskCacheTracker`).
    private var receiverCacheIsClean: Bool { diskCache.isClean || settings.mutations.skipReceiverFlushes }

    mutating func receiveBarrier(epoch: UInt32) {
        guard let last = receivedEpochs.indices.last, !receivedEpochs[last].closed,
            receivedEpochs[last].generation == connectionGeneration, receivedEpochs[last].number == epoch
        else {
            return protocolError("barrier for epoch \(epoch) that has no open writes")
        }
        receivedEpochs[last].closed = true
        advanceReceivedEpochs()
    }

    mutating func peerWriteCompleted(_ packet: DataPacket, succeeded: Bool, generation: UInt64) {
        settlePeerWrite(packet, succeeded: succeeded, generation: generation)
        advanceReceivedEpochs()
        updateReceiveThrottle()
    }

    /// A write of the head epoch is done: it leaves the epoch's count and is acknowledged as the packet asks.
    private mutating func settlePeerWrite(_ packet: DataPacket, succeeded: Bool, generation: UInt64) {
        precondition(!receivedEpochs.isEmpty && receivedEpochs[0].outstanding > 0, "peer write completed with no epoch in flight")
        receivedEpochs[0].outstanding -= 1
        if generation == connectionGeneration && connection.isEstablished {
            let ack = BlockAck(range: packet.range, requestID: packet.requestID)
            if succeeded {
                if packet.range.sizeBytes > 0 { receivedEpochs[0].storedRanges.append(packet.range) }
                if packet.flags.contains(.mayClearOutOfSync) && connection.isSyncTarget {
                    bitmap.clear(SyncBitmap.blocksFullyCovered(by: packet.range))
                }
                if packet.flags.contains(.sendWriteAck) { emit(.send(.writeAck(ack))) }
            } else {
                emit(.send(.negativeAck(ack)))
            }
        }
    }

    /// Moves the head epoch on: once closed and written it is flushed, then acknowledged, then the next epoch's
    /// writes go to the disk.
    mutating func advanceReceivedEpochs() {
        while let head = receivedEpochs.first, head.closed, head.outstanding == 0, !head.flushing {
            if settings.diskFlushes && hasLocalDisk && !receiverCacheIsClean {
                receivedEpochs[0].flushing = true
                emit(.submitFlush(token: allocateToken(.epochFlush)))
                return
            }
            // Without disk-flushes the operator accepted a volatile cache; without a disk, nothing can be flushed;
            // with a clean cache, a flush would find nothing to make durable.
            finishHeadEpoch(stable: !settings.diskFlushes || (hasLocalDisk && receiverCacheIsClean))
        }
    }

    mutating func epochFlushCompleted(succeeded: Bool) {
        precondition(receivedEpochs.first?.flushing == true, "epoch flush completed but no epoch was flushing")
        finishHeadEpoch(stable: succeeded && hasLocalDisk)
        advanceReceivedEpochs()
    }

    /// Acknowledges the head epoch's barrier, which lets the sender forget its writes. If our disk was lost before
    /// the flush made them stable (they sat in its volatile cache, and a detached disk keeps no promise), the
    /// sender must first learn that they are out of sync: it keeps the bits for the disk's return. The out-of-sync
    /// packets travel on the data channel, the ack on the meta channel; the sender sets the bits whenever they
    /// arrive, and until then its own disk holds the data.
    private mutating func finishHeadEpoch(stable: Bool) {
        let head = receivedEpochs.removeFirst()
        if head.generation == connectionGeneration && connection.isEstablished {
            if !stable {
                for range in head.storedRanges { emit(.send(.outOfSync(range))) }
            }
            emit(.send(.barrierAck(epoch: head.number, writeCount: head.writeCount)))
        }
        guard !receivedEpochs.isEmpty else { return }
        let next = receivedEpochs[0].buffered
        receivedEpochs[0].buffered.removeAll()
        receivedEpochs[0].outstanding += next.count
        for packet in next { submitPeerWrite(packet) }
    }

    /// After a connection loss the writes already received are still written, in epoch order, as DRBD does; no
    /// acknowledgement can be sent any more.
    mutating func finishReceivedEpochsAfterLoss() {
        for index in receivedEpochs.indices { receivedEpochs[index].closed = true }
        if receivingThrottled {
            receivingThrottled = false
            emit(.throttleReceiving(false))
        }
        advanceReceivedEpochs()
    }

    /// max-buffers: stop reading replicated data while too many writes are buffered or in flight.
    private mutating func updateReceiveThrottle() {
        let held = receivedEpochs.heldWrites
        if !receivingThrottled && held >= settings.maxBuffers && connection.isEstablished {
            receivingThrottled = true
            emit(.throttleReceiving(true))
        } else if receivingThrottled && held < settings.maxBuffers / 2 {
            receivingThrottled = false
            emit(.throttleReceiving(false))
        }
    }
}
