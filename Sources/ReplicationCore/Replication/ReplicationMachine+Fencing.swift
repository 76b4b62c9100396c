import TandemConfig

/// Resource-level fencing (reference drbd.md section 5): with `fencing resource-only` or `resource-and-stonith`, a
/// node never runs as Primary while a peer it cannot reach might hold UpToDate data and be promoted too.
///
/// - A Primary that loses a peer whose disk was better than Outdated runs the fence-peer handler. With
///   `resource-and-stonith` its application I/O is suspended until the handler says the peer is fenced: writes the
///   peer never confirmed are not acknowledged, so none of them can be lost to a peer promoted meanwhile.
/// - A disconnected Secondary is promoted only after the fence-peer handler has fenced the peer (or the metadata
///   already says the peer is Outdated). A Consistent disk becomes UpToDate that way.
/// - The handler's exit status is interpreted as DRBD's (`FencePeerExitCode`). A successful fence is remembered in
///   the metadata (peer-outdated) until the peer connects again.
extension ReplicationMachine {
    /// Why the fence-peer handler runs.
    enum PeerFencePurpose: Sendable {
        case connectionLost
        case promotion(commandID: UInt64, force: Bool)
    }

    /// What a fence-peer run concluded.
    enum PeerFenceVerdict: Sendable, Equatable {
        /// The peer cannot be promoted behind our back.
        case peerFenced(String)
        /// The peer is Primary: this node must not be, and outdates itself when it can.
        case peerIsPrimary
        /// Nothing is known: the peer may still hold UpToDate data.
        case failed(String)
    }

    /// Whether fencing applies: a policy is set.
    var fencingEnabled: Bool { settings.fencing != .dontCare }

    /// Whether promoting this disconnected node needs the peer fenced first.
    var promotionNeedsPeerFenced: Bool {
        fencingEnabled && !connection.isEstablished && !flags.contains(.peerOutdated)
    }

    /// A Primary lost a peer that might be promoted: fence it. Called before the lost requests complete, so that
    /// with resource-and-stonith their completions are held.
    mutating func fencePeerAfterConnectionLoss(peerDiskBeforeLoss: DiskState) {
        // Only a Primary with its own UpToDate data fences: a Diskless one would outdate the only good copy.
        guard fencingEnabled, role == .primary, disk == .upToDate, peerDiskBeforeLoss > .outdated else { return }
        if settings.fencing == .resourceAndStonith && suspendedIO == nil {
            suspendedIO = SuspendedIO()
            log("susp-io( no -> fencing ): application I/O suspended until the peer is fenced")
        }
        // A run started for an earlier loss (the peer came back only to be refused, split brain say) is still out:
        // its answer, about the peer as it is now, serves this loss too.
        guard peerFence == nil else { return }
        startPeerFence(.connectionLost)
    }

    /// Starts the fence-peer handler; one run at a time.
    mutating func startPeerFence(_ purpose: PeerFencePurpose) {
        precondition(peerFence == nil, "fence-peer started while a run is under way: \(String(describing: peerFence))")
        peerFence = purpose
        log("helper command: fence-peer")
        emit(.runHandler(.fencePeer))
    }

    /// The fence-peer handler ended. `exitStatus` is nil when it could not be run or was killed at its time limit.
    mutating func peerFenceFinished(exitStatus: Int32?, now: MonotonicInstant) {
        guard let purpose = peerFence else {
            return log("fence-peer helper returned \(exitStatus.map(String.init) ?? "nothing") after its reason had gone; ignored")
        }
        peerFence = nil
        let verdict = Self.verdict(exitStatus: exitStatus, ownDiskUpToDate: disk == .upToDate)
        switch verdict {
        case .peerFenced(let reason):
            log("fence-peer helper returned \(exitStatus!) (\(reason))")
            if exitStatus == FencePeerExitCode.peerFenced.rawValue && settings.fencing != .resourceAndStonith {
                log("fence-peer() = 7 && fencing != resource-and-stonith: the peer was powered off")
            }
            flags.insert(.peerOutdated)
            persistSuperblock()
        case .peerIsPrimary:
            log("fence-peer helper returned \(exitStatus!) (the peer is Primary)")
            if role != .primary && disk > .outdated {
                log("Peer is primary, outdating myself.")
                disk = .outdated
                persistSuperblock()
            }
        case .failed(let reason):
            log("fence-peer helper \(reason)")
        }
        switch purpose {
        case .connectionLost:
            if case .peerFenced = verdict {
                resumeSuspendedIO(reason: "the peer is fenced")
            } else if suspendedIO != nil {
                log("application I/O stays suspended: the peer may still be promoted; "
                    + "`resume-io` once it is known to be down, or reconnect it")
            }
        case .promotion(let commandID, let force):
            if case .peerFenced = verdict {
                if disk == .consistent { disk = .upToDate }
                becomePrimary(force: force, now: now)
                emit(.commandCompleted(commandID: commandID, .done))
            } else if force {
                log("Forced into split brain situation!")
                becomePrimary(force: true, now: now)
                emit(.commandCompleted(commandID: commandID, .done))
            } else {
                let why: String = switch verdict {
                case .peerIsPrimary: "the peer is Primary"
                case .failed(let reason): "the peer could not be fenced (fence-peer \(reason))"
                case .peerFenced: preconditionFailure("unreachable")
                }
                emit(.commandCompleted(commandID: commandID, .refused(
                    "\(why); with fencing \(settings.fencing.rawValue) a node is not promoted while its peer may hold "
                        + "UpToDate data (disk is \(disk)); --force promotes anyway, at the risk of a split brain")))
            }
        }
    }

    /// DRBD's reading of the fence-peer exit status (drbd_nl.c, conn_try_outdate_peer).
    static func verdict(exitStatus: Int32?, ownDiskUpToDate: Bool) -> PeerFenceVerdict {
        guard let exitStatus else { return .failed("could not be run or exceeded its time limit") }
        switch FencePeerExitCode(rawValue: exitStatus) {
        case .peerInconsistent: return .peerFenced("peer is inconsistent or worse")
        case .peerOutdated: return .peerFenced("peer was fenced")
        case .peerUnreachable:
            return ownDiskUpToDate
                ? .peerFenced("peer is unreachable, assumed to be dead")
                : .failed("returned 5: peer unreachable, doing nothing since disk != UpToDate")
        case .peerIsPrimary: return .peerIsPrimary
        case .peerFenced: return .peerFenced("peer was stonithed")
        case .refused: return .failed("returned 1: the peer could not outdate its disk")
        case nil: return .failed("broken, returned \(exitStatus)")
        }
    }

    /// The peer is connected again, or the operator said it is down (`resume-io`): the reason to fence is gone.
    mutating func fencingResolvedByConnection() {
        if case .promotion(let commandID, _)? = peerFence {
            peerFence = nil
            emit(.commandCompleted(commandID: commandID, .refused("the peer connected while it was being fenced; retry")))
        } else if peerFence != nil {
            peerFence = nil
            log("the peer connected while fence-peer ran; its answer will be ignored")
        }
        resumeSuspendedIO(reason: "the peer is connected")
    }

    /// `resume-io`: the operator vouches that the peer cannot be promoted (drbdadm resume-io).
    mutating func resumeIO() -> CommandOutcome {
        guard suspendedIO != nil else { return .refused("application I/O is not suspended") }
        resumeSuspendedIO(reason: "resume-io by the operator")
        return .done
    }

    /// Releases the completions and requests held since the suspension began, in their original order.
    mutating func resumeSuspendedIO(reason: String) {
        guard let held = suspendedIO else { return }
        suspendedIO = nil
        log("susp-io( fencing -> no ): \(reason); releasing \(held.completions.count) completions and \(held.requests.count) requests")
        for completion in held.completions { emit(completion) }
        for request in held.requests {
            switch request {
            case .write(let write): submit(write, now: clock)
            case .read(let requestID, let range): read(requestID: requestID, range: range, now: clock)
            case .flush(let requestID): flush(requestID: requestID, now: clock)
            }
        }
    }
}

/// Application I/O held while the peer is being fenced (resource-and-stonith): completions not yet given to the
/// application, and requests not yet started.
struct SuspendedIO: Sendable {
    enum Request: Sendable {
        case write(ApplicationWrite)
        case read(requestID: UInt64, range: BlockRange)
        case flush(requestID: UInt64)
    }

    var completions: [ReplicationAction] = []
    var requests: [Request] = []
}

extension ReplicationMachine {
    /// Whether fence-peer's exit status means the peer can no longer be promoted, as the machine reads it.
    public static func peerFenceSucceeds(exitStatus: Int32?, ownDiskUpToDate: Bool) -> Bool {
        if case .peerFenced = verdict(exitStatus: exitStatus, ownDiskUpToDate: ownDiskUpToDate) { return true }
        return false
    }
}
