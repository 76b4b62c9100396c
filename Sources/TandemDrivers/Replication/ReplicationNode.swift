import ReplicationCore

/// The production driver of one replicated volume: feeds events to the `ReplicationMachine` and carries out its
/// actions, in order, over the environment. The simulator runs this very type over simulated environments.
///
/// It is confined to one serial executor (the daemon's per-resource thread, or the simulator's loop), never shared.
public struct ReplicationNode<
    Transport: ReplicationTransport, Blocks: BlockStore, Metadata: MetadataStore, Observer: ReplicationObserver
> {
    public private(set) var machine: ReplicationMachine
    public let transport: Transport
    public let blocks: Blocks
    public let metadata: Metadata
    public let observer: Observer
    /// Set once a metadata write failed: the disk is then treated as failed, and data I/O the machine asks for
    /// afterwards is failed at once instead of being issued behind metadata that is not on disk.
    public private(set) var metadataFailed = false

    public init(machine: ReplicationMachine, transport: Transport, blocks: Blocks, metadata: Metadata, observer: Observer) {
        self.machine = machine
        self.transport = transport
        self.blocks = blocks
        self.metadata = metadata
        self.observer = observer
    }

    public var status: ReplicationStatus { machine.status }

    public mutating func start(now: MonotonicInstant) {
        perform(machine.start(now: now), now: now)
    }

    public mutating func handle(_ event: ReplicationEvent, now: MonotonicInstant) {
        perform(machine.handle(event, now: now), now: now)
    }

    /// Clean shutdown, after the caller has stopped new I/O and drained the old.
    public mutating func shutdown(now: MonotonicInstant) {
        perform(machine.shutdown(), now: now)
    }

    private mutating func perform(_ actions: [ReplicationAction], now: MonotonicInstant) {
        var failedIO: [UInt64] = []
        for action in actions {
            switch action {
            case .connectTransport: transport.startConnecting()
            case .stopConnecting: transport.stopConnecting()
            case .dropConnection(let reason): transport.dropConnection(reason: reason)
            case .send(let packet): transport.send(packet)
            case .throttleReceiving(let paused): transport.setReceivingPaused(paused)
            case .submitWrite(let token, let range, let payload, let forceUnitAccess):
                if metadataFailed { failedIO.append(token) } else {
                    blocks.submitWrite(token: token, range: range, payload: payload, forceUnitAccess: forceUnitAccess)
                }
            case .submitRead(let token, let range):
                if metadataFailed { failedIO.append(token) } else { blocks.submitRead(token: token, range: range) }
            case .submitFlush(let token):
                if metadataFailed { failedIO.append(token) } else { blocks.submitFlush(token: token) }
            case .submitZeroes(let token, let range, let forceUnitAccess):
                if metadataFailed {
                    failedIO.append(token)
                } else {
                    blocks.submitZeroes(token: token, range: range, forceUnitAccess: forceUnitAccess)
                }
            case .persistSuperblock(let state):
                persist(.superblock(state))
            case .persistActivityLog(let transaction):
                persist(.activityLog(transaction))
            case .persistBitmap(let pages):
                if !pages.isEmpty { persist(.bitmap(pages)) }
            case .preserveDivergedBlocks(let ranges, let reason):
                persist(.preserve(ranges, reason: reason))
            case .completeWrite(let requestID, let outcome): observer.writeCompleted(requestID: requestID, outcome)
            case .completeRead(let requestID, let outcome, let payload):
                observer.readCompleted(requestID: requestID, outcome, payload: payload)
            case .completeFlush(let requestID, let outcome): observer.flushCompleted(requestID: requestID, outcome)
            case .commandCompleted(let commandID, let outcome): observer.commandCompleted(commandID: commandID, outcome)
            case .runHandler(let handler): observer.runHandler(handler)
            case .log(let line): observer.log(line)
            }
        }
        // Failed I/O is reported after the batch, as the completions of a real device would be.
        for token in failedIO { handle(.localIOCompleted(token: token, .failed), now: now) }
    }

    private enum MetadataWrite {
        case superblock(SuperblockState)
        case activityLog(ActivityLogTransaction)
        case bitmap([BitmapPageContents])
        case preserve([Range<UInt64>], reason: String)
    }

    private mutating func persist(_ write: MetadataWrite) {
        guard !metadataFailed else { return }
        do {
            switch write {
            case .superblock(let state): try metadata.writeSuperblock(state)
            case .activityLog(let transaction): try metadata.writeActivityLog(transaction)
            case .bitmap(let pages): try metadata.writeBitmap(pages)
            case .preserve(let ranges, let reason): try metadata.preserveDivergedBlocks(ranges, reason: reason)
            }
        } catch {
            metadataFailed = true
            observer.log("meta-data I/O error: \(error); the local disk is treated as failed")
        }
    }
}
