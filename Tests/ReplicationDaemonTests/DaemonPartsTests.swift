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
        let batch = mailbox.take(until: DaemonClock.now)
        #expect(batch.count == packetCount)
        let order = batch.compactMap { message -> UInt64? in
            if case .event(.packet(.data(let data))) = message { return data.requestID }
            return nil
        }
        #expect(order == (0..<UInt64(packetCount)).map { $0 })
        #expect(pressure.withLock { $0 } == [true, false], "taking the batch lets the data connection read again")

        #expect(mailbox.take(until: DaemonClock.now + .milliseconds(20)).isEmpty, "nothing queued: the wait ends")
        let answered = Mutex<ControlResponse?>(nil)
        #expect(mailbox.post(RunnerRequest(kind: .status) { response in answered.withLock { $0 = response } }))
        let left = mailbox.close()
        #expect(left.count == 1, "the queued request is handed back to be answered")
        #expect(!mailbox.post(RunnerRequest(kind: .status) { _ in }), "a closed mailbox takes no request")
    }

    @Test("the mailbox refuses control requests beyond its limit")
    func mailboxRequestLimit() {
        let mailbox = Mailbox()
        for _ in 0..<Mailbox.controlRequestsMaximum {
            #expect(mailbox.post(RunnerRequest(kind: .status) { _ in }))
        }
        #expect(!mailbox.post(RunnerRequest(kind: .status) { _ in }))
        _ = mailbox.take(until: DaemonClock.now)
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
