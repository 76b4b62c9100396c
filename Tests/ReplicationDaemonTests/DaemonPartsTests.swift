import DaemonSupport
import Foundation
import Logging
import ReplicationCore
import Synchronization
import TandemConfig
import Testing

@testable import ReplicationDaemon

/// The daemon's parts on their own: the mailbox's limits and the handler runner.
@Suite("replicad parts")
struct DaemonPartsTests {
    @Test("the mailbox keeps arrival order, pauses the data connection above its high-water mark, and refuses requests once closed")
    func mailbox() {
        let mailbox = Mailbox()
        let pressure = Mutex<[Bool]>([])
        mailbox.setPressureHandler { paused in pressure.withLock { $0.append(paused) } }
        let payload = [UInt8](repeating: 7, count: 1 << 20)
        let packetCount = Mailbox.packetBytesHighWater / payload.count + 1
        for index in 0..<packetCount {
            let data = DataPacket(
                range: BlockRange(sector: UInt64(index) * 2048, sizeBytes: UInt32(payload.count)), requestID: UInt64(index),
                epoch: 1, flags: [], payload: payload)
            mailbox.post(.packet(.data(data)))
        }
        #expect(pressure.withLock { $0 } == [true])
        let batch = mailbox.hold(until: DaemonClock.now)
        mailbox.release()
        #expect(batch.count == packetCount)
        let order = batch.compactMap { message -> UInt64? in
            if case .event(.packet(.data(let data))) = message { return data.requestID }
            return nil
        }
        #expect(order == (0..<UInt64(packetCount)).map { $0 })
        #expect(pressure.withLock { $0 } == [true, false], "taking the batch lets the data connection read again")

        #expect(mailbox.hold(until: DaemonClock.now + .milliseconds(20)).isEmpty, "nothing queued: the wait ends")
        mailbox.release()
        let answered = Mutex<ControlResponse?>(nil)
        #expect(mailbox.post(RunnerRequest(kind: .status) { response in answered.withLock { $0 = response } }))
        let left = mailbox.close()
        #expect(left.count == 1, "the queued request is handed back to be answered")
        #expect(!mailbox.post(RunnerRequest(kind: .status) { _ in }), "a closed mailbox takes no request")
    }

    @Test("one thread at a time holds the resource: a helper holds it only when it is free and the resource's thread is not waiting for it")
    func mailboxHolding() throws {
        let mailbox = Mailbox()
        func event(_ token: UInt64) -> Mailbox.Message { .event(.localIOCompleted(token: token, .flushed)) }
        @Sendable func tokens(_ batch: [Mailbox.Message]) -> [UInt64] {
            batch.compactMap { message in
                if case .event(.localIOCompleted(let token, _)) = message { return token }
                return nil
            }
        }
        guard case .queued = mailbox.postHolding(event(1)) else {
            Issue.record("helpers are not allowed before the resource is open")
            return
        }
        mailbox.allowHelpers()
        guard case .held(let first) = mailbox.postHolding(event(2)) else {
            Issue.record("a free resource goes to the helper")
            return
        }
        #expect(tokens(first) == [1, 2], "the helper takes everything queued, its own message last")
        guard case .queued = mailbox.postHolding(event(3)) else {
            Issue.record("a held resource is not handed out twice")
            return
        }
        #expect(tokens(mailbox.takeMore()) == [3], "the holder takes what arrived meanwhile")

        // The resource's thread has something to do while the helper holds the resource: it waits for the release,
        // and helpers step aside until it has had its turn.
        mailbox.post(.localIOCompleted(token: 4, .flushed))
        let taken = Mutex<[UInt64]?>(nil)
        let resourceThread = Thread {
            let batch = mailbox.hold(until: DaemonClock.now + .seconds(60))
            taken.withLock { $0 = tokens(batch) }
            mailbox.release()
        }
        resourceThread.start()
        try waitUntil("the resource's thread waits for its turn") { mailbox.resourceThreadIsWaiting }
        guard case .queued = mailbox.postHolding(event(5)) else {
            Issue.record("a helper must not take the resource's thread's turn")
            return
        }
        mailbox.release()
        try waitUntil("the resource's thread had its turn") { taken.withLock { $0 } != nil }
        #expect(taken.withLock { $0 } == [4, 5])
        guard case .held(let after) = mailbox.postHolding(event(6)) else {
            Issue.record("after the resource's thread released it, a helper may hold it again")
            return
        }
        #expect(tokens(after) == [6])
        mailbox.release()
        _ = mailbox.close()
        guard case .refused = mailbox.postHolding(event(7)) else {
            Issue.record("a closed mailbox takes nothing")
            return
        }
    }

    /// Polls `condition` (bounded: 60 s, a guard against a hung test, not a timing assertion).
    private func waitUntil(_ what: String, _ condition: () -> Bool) throws {
        for _ in 0..<6000 {
            if condition() { return }
            usleep(10_000)
        }
        throw GaveUp(what: what)
    }

    struct GaveUp: Error {
        var what: String
    }

    @Test("the mailbox refuses control requests beyond its limit")
    func mailboxRequestLimit() {
        let mailbox = Mailbox()
        for _ in 0..<Mailbox.controlRequestsMaximum {
            #expect(mailbox.post(RunnerRequest(kind: .status) { _ in }))
        }
        #expect(!mailbox.post(RunnerRequest(kind: .status) { _ in }))
        _ = mailbox.hold(until: DaemonClock.now)
        mailbox.release()
        #expect(mailbox.post(RunnerRequest(kind: .status) { _ in }))
    }

    @Test("handlers run with DRBD's environment, one at a time; one that overruns its limit is killed and the next runs")
    func handlers() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-handlers-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let runner = HandlerRunner(name: "r0", timeout: .seconds(1), logger: Logger(label: "test"))
        defer { runner.stop() }
        let environment = ["DRBD_RESOURCE": "r0", "DRBD_PEER": "beta"]
        runner.submit(HandlerRunner.Job(handler: .splitBrain, command: "exec sleep 600", environment: environment))
        runner.submit(HandlerRunner.Job(
            handler: .afterResyncTarget, command: "echo \"$DRBD_RESOURCE $DRBD_PEER\" > \(directory)/ran",
            environment: environment))
        let ran = await eventually {
            (try? String(contentsOfFile: directory + "/ran", encoding: .utf8)) == "r0 beta\n"
        }
        #expect(ran, "the second handler ran after the first was killed at its time limit")
    }
}
