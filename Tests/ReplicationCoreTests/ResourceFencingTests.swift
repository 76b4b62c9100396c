import ReplicationCore
import TandemConfig
import Testing

/// Resource-level fencing (reference drbd.md section 5): the fence-peer handler runs when a Primary loses its peer
/// and before a disconnected node is promoted; its exit status decides, as DRBD's does.
@Suite("Resource-level fencing")
struct ResourceFencingTests {
    static let range = BlockRange(sector: 0, sizeBytes: 4096)
    static let write = ApplicationWrite(requestID: 1, offsetBytes: 0, payload: [UInt8](repeating: 0xAB, count: 4096))

    static func settings(_ fencing: FencingPolicy) -> ReplicationSettings {
        var settings = ReplicationSettings()
        settings.fencing = fencing
        return settings
    }

    /// A connected pair with node 0 Primary, then the replication link cut and both nodes' disks settled.
    static func cutPair(_ fencing: FencingPolicy) -> ReplicationPair {
        var pair = ReplicationPair.connectedWithPrimary(settings: settings(fencing))
        pair.cutLink()
        return pair
    }

    @Test("resource-only: a Primary that loses its peer runs fence-peer and keeps serving; exit 4 records the peer Outdated")
    func resourceOnlyPrimaryFencesAndServes() {
        var pair = Self.cutPair(.resourceOnly)
        #expect(pair.handlersRun[0] == [.fencePeer])
        #expect(pair.handlersRun[1] == [], "a Secondary that loses its peer fences nobody")
        #expect(pair.status(0).fencingPeer)
        #expect(!pair.status(0).ioSuspendedForFencing, "resource-only does not suspend I/O")

        pair.handle(0, .write(Self.write))
        pair.completeAllDisk(0)
        #expect(pair.completedWrites[0][1] == .success, "writes complete locally while the handler runs")

        pair.handle(0, .fencePeerFinished(exitStatus: FencePeerExitCode.peerOutdated.rawValue))
        #expect(!pair.status(0).fencingPeer)
        #expect(pair.machines[0].flags.contains(.peerOutdated))
        #expect(pair.logs[0].contains("fence-peer helper returned 4 (peer was fenced)"))
    }

    @Test("resource-and-stonith: completions of writes the peer never confirmed, and new requests, wait for the fence")
    func resourceAndStonithSuspendsUntilFenced() {
        var pair = ReplicationPair.connectedWithPrimary(settings: Self.settings(.resourceAndStonith))
        pair.handle(0, .write(Self.write))
        pair.completeAllDisk(0)
        #expect(pair.completedWrites[0][1] == nil, "protocol C waits for the peer")
        pair.cutLink()
        #expect(pair.status(0).ioSuspendedForFencing)
        #expect(pair.completedWrites[0][1] == nil, "the unconfirmed write is not acknowledged before the fence")

        var second = Self.write
        second.requestID = 2
        second.offsetBytes = 4096
        pair.handle(0, .write(second))
        pair.handle(0, .flush(requestID: 3))
        #expect(pair.pendingDisk[0].isEmpty, "new requests are held, not started")

        pair.handle(0, .fencePeerFinished(exitStatus: FencePeerExitCode.peerFenced.rawValue))
        #expect(!pair.status(0).ioSuspendedForFencing)
        #expect(pair.completedWrites[0][1] == .success, "released once the peer is fenced")
        pair.completeAllDisk(0)
        #expect(pair.completedWrites[0][2] == .success)
        #expect(pair.completedFlushes[0][3] == .success)
        #expect(pair.status(0).outOfSyncBytes == 8192, "both writes are out of sync for the peer's return")
    }

    @Test("resource-and-stonith: a failed fence leaves I/O suspended until resume-io")
    func failedFenceKeepsIOSuspended() {
        var pair = ReplicationPair.connectedWithPrimary(settings: Self.settings(.resourceAndStonith))
        pair.handle(0, .write(Self.write))
        pair.completeAllDisk(0)
        pair.cutLink()
        pair.handle(0, .fencePeerFinished(exitStatus: 20))
        #expect(pair.status(0).ioSuspendedForFencing)
        #expect(pair.logs[0].contains("fence-peer helper broken, returned 20"))
        #expect(pair.completedWrites[0][1] == nil)

        #expect(pair.command(0, .resumeIO) == .done)
        #expect(pair.completedWrites[0][1] == .success)
        #expect(pair.command(0, .resumeIO) == .refused("application I/O is not suspended"))
    }

    @Test("resource-and-stonith: the peer connecting again ends the suspension")
    func reconnectionEndsTheSuspension() {
        var pair = ReplicationPair.connectedWithPrimary(settings: Self.settings(.resourceAndStonith))
        pair.handle(0, .write(Self.write))
        pair.completeAllDisk(0)
        pair.cutLink()
        pair.completeAllDisk(1)
        pair.connectTransports()
        pair.completeAllDisk(0)
        pair.completeAllDisk(1)
        pair.deliverAll()
        #expect(pair.status(0).connection.isEstablished)
        #expect(!pair.status(0).ioSuspendedForFencing)
        #expect(pair.completedWrites[0][1] == .success)
        // The handler's late answer changes nothing.
        pair.handle(0, .fencePeerFinished(exitStatus: FencePeerExitCode.peerOutdated.rawValue))
        #expect(!pair.machines[0].flags.contains(.peerOutdated))
    }

    /// Found in the lab (freeze-node): a Primary lost its peer, the peer came back promoted, and the handshake refused
    /// the connection while the first fence-peer run was still out; the second loss started a second run.
    @Test("A connection refused while fence-peer runs does not start a second run")
    func refusedReconnectionDuringTheFence() {
        var pair = Self.cutPair(.resourceOnly)
        pair.command(1, .promote(force: false))
        pair.handle(1, .fencePeerFinished(exitStatus: FencePeerExitCode.peerUnreachable.rawValue))
        #expect(pair.status(1).role == .primary)
        pair.completeAllDisk(0)
        pair.completeAllDisk(1)
        pair.connectTransports()
        #expect(!pair.status(0).connection.isEstablished, "two Primaries are refused")
        #expect(pair.handlersRun[0] == [.fencePeer, .initialSplitBrain, .splitBrain], "one fence-peer run, still out")
        pair.handle(0, .fencePeerFinished(exitStatus: FencePeerExitCode.peerIsPrimary.rawValue))
        #expect(pair.status(0).role == .primary, "a Primary whose peer is Primary too stays so: a split brain, for after-sb")
    }

    @Test("A disconnected Secondary is promoted only once fence-peer has fenced the peer", arguments: [
        (FencePeerExitCode.peerInconsistent.rawValue, true), (FencePeerExitCode.peerOutdated.rawValue, true),
        (FencePeerExitCode.peerUnreachable.rawValue, true), (FencePeerExitCode.peerFenced.rawValue, true),
        (FencePeerExitCode.peerIsPrimary.rawValue, false), (Int32(1), false), (Int32(20), false),
    ])
    func promotionWaitsForTheFence(exitStatus: Int32, promoted: Bool) {
        var pair = ReplicationPair.connectedWithPrimary(settings: Self.settings(.resourceOnly))
        #expect(pair.command(0, .demote) == .done)
        pair.deliverAll()
        pair.cutLink()
        #expect(pair.handlersRun[1] == [])

        #expect(pair.command(1, .promote(force: false)) == nil, "the answer waits for the handler")
        #expect(pair.handlersRun[1] == [.fencePeer])
        #expect(pair.command(1, .promote(force: false)) == .refused("a promotion is already in progress"))
        let answeredBefore = pair.commandOutcomes[1]
        pair.handle(1, .fencePeerFinished(exitStatus: exitStatus))
        #expect(pair.status(1).role == (promoted ? .primary : .secondary))
        let outcomes = pair.commandOutcomes[1].filter { answeredBefore[$0.key] == nil }.map(\.value)
        #expect(outcomes.count == 1 && (outcomes.first == .done) == promoted, "\(outcomes)")
        if exitStatus == FencePeerExitCode.peerIsPrimary.rawValue {
            #expect(pair.status(1).disk == .outdated, "a node whose peer is Primary outdates itself")
            #expect(pair.command(1, .promote(force: false)) != .done, "an Outdated node refuses promotion")
        }
    }

    @Test("--force promotes even when the fence fails, and says it risks a split brain")
    func forcedPromotionAfterFailedFence() {
        var pair = Self.cutPair(.resourceOnly)
        pair.handle(0, .fencePeerFinished(exitStatus: FencePeerExitCode.peerOutdated.rawValue))
        pair.command(1, .promote(force: true))
        pair.handle(1, .fencePeerFinished(exitStatus: 1))
        #expect(pair.status(1).role == .primary)
        #expect(pair.logs[1].contains("Forced into split brain situation!"))
    }

    @Test("The metadata remembers an outdated peer: a later promotion needs no fence, until the peer connects again")
    func peerOutdatedIsRemembered() {
        var pair = ReplicationPair.connectedWithPrimary(settings: Self.settings(.resourceOnly))
        #expect(pair.command(0, .demote) == .done)
        pair.deliverAll()
        pair.cutLink()
        pair.command(0, .promote(force: false))
        pair.handle(0, .fencePeerFinished(exitStatus: FencePeerExitCode.peerOutdated.rawValue))
        #expect(pair.status(0).role == .primary)
        #expect(pair.command(0, .demote) == .done)
        #expect(pair.command(0, .promote(force: false)) == .done, "the peer is known Outdated: no second fence")
        #expect(pair.handlersRun[0] == [.fencePeer])
    }

    @Test("An Outdated node refuses promotion without --force, and --force still asks for the fence first")
    func outdatedNodeRefusesPromotion() {
        var pair = Self.cutPair(.resourceOnly)
        #expect(pair.command(1, .outdate) == .done)
        #expect(pair.status(1).disk == .outdated)
        guard case .refused(let reason) = pair.command(1, .promote(force: false)) else {
            Issue.record("an Outdated node was promoted")
            return
        }
        #expect(reason.contains("no UpToDate data"))
        #expect(pair.command(1, .promote(force: true)) == nil)
        pair.handle(1, .fencePeerFinished(exitStatus: FencePeerExitCode.peerUnreachable.rawValue))
        #expect(pair.status(1).role == .primary, "--force overrides: \(pair.logs[1].suffix(3))")
    }

    @Test("DRBD's reading of the exit status: 5 is trusted only with an UpToDate disk")
    func exitStatusVerdicts() {
        let upToDate = [3, 4, 5, 7].map { ReplicationMachine.peerFenceSucceeds(exitStatus: Int32($0), ownDiskUpToDate: true) }
        #expect(upToDate == [true, true, true, true])
        #expect(!ReplicationMachine.peerFenceSucceeds(exitStatus: 5, ownDiskUpToDate: false))
        for status: Int32? in [nil, 0, 1, 2, 6, 8, 255] {
            #expect(!ReplicationMachine.peerFenceSucceeds(exitStatus: status, ownDiskUpToDate: true))
        }
    }
}
