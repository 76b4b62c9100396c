#if canImport(Glibc)
import CoreSupport
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation

/// The lab's workload client: one connection through the VIP from the client machine, committing one row per
/// transaction, each with a unique operation id, and recording what the server answered.
///
/// Every operation ends in one of three ways, and the checker holds each to its promise:
/// - acknowledged: COMMIT answered OK. The row must be there, exactly once.
/// - failed: the transaction was refused or its connection was lost before COMMIT was sent. It was rolled back;
///   the row must not be there.
/// - in doubt: the connection was lost after COMMIT was sent, before the answer. The row may or may not be there,
///   but at most once: operation ids are never reused, so a row that shows up twice was written twice.
///
/// Bounded in time and in count; reconnects (every 100 ms, with the connect timeout it is given) after any lost
/// connection.
public final class Workload: @unchecked Sendable {
    // @unchecked: the fields below are guarded by `lock`; `thread` is written once in start().
    public struct Operation: Sendable {
        public enum Outcome: String, Sendable { case acknowledged = "ack", failed = "fail", inDoubt = "doubt" }
        public var id: Int64
        public var outcome: Outcome
        /// When the outcome was known, in Unix milliseconds (the timeline's clock).
        public var unixMilliseconds: Int64
        /// The node that answered (its @@hostname), for acknowledged operations.
        public var node: String?
    }

    public struct Limits: Sendable {
        public var duration: Duration
        public var operationsMaximum: Int
        public init(duration: Duration, operationsMaximum: Int = 1_000_000) {
            self.duration = duration
            self.operationsMaximum = operationsMaximum
        }
    }

    let runID: Int32
    let connection: MySQLConnection.Options
    let namespace: String
    let limits: Limits
    let journalPath: String?

    private let lock = PthreadLock()
    private var operations: [Operation] = []
    private var events: [(unixMilliseconds: Int64, text: String)] = []
    private var stopRequested = false
    private var thread: DaemonThread?
    private var setupError: LabError?

    init(runID: Int32, connection: MySQLConnection.Options, namespace: String, limits: Limits, journalPath: String?) {
        self.runID = runID
        self.connection = connection
        self.namespace = namespace
        self.limits = limits
        self.journalPath = journalPath
    }

    static func unixMilliseconds() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }

    func start() {
        thread = DaemonThread.start(name: "workload") { [self] in
            do throws(LabError) {
                try NetworkNamespace.enterCurrentThread(namespace)
                loop()
            } catch {
                lock.withLock { setupError = error }
            }
        }
    }

    /// Asks the loop to end after the operation in progress and waits for it.
    func stop() throws(LabError) {
        lock.withLock { stopRequested = true }
        thread?.join()
        if let error = lock.withLock({ setupError }) { throw error }
    }

    /// Waits for the loop to end by itself (its time or count limit).
    func join() throws(LabError) {
        thread?.join()
        if let error = lock.withLock({ setupError }) { throw error }
    }

    var snapshot: [Operation] { lock.withLock { operations } }
    var eventLog: [(unixMilliseconds: Int64, text: String)] { lock.withLock { events } }

    private func loop() {
        let journal = journalPath.map { open($0, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644) } ?? -1
        defer { if journal >= 0 { close(journal) } }
        func record(_ line: String) {
            guard journal >= 0 else { return }
            let bytes = Array((line + "\n").utf8)
            _ = bytes.withUnsafeBytes { write(journal, $0.baseAddress, $0.count) }
        }
        func note(_ text: String) {
            let now = Self.unixMilliseconds()
            lock.withLock { events.append((now, text)) }
            record("# \(now) \(text)")
        }
        let deadline = DaemonClock.now + limits.duration
        var session: (connection: MySQLConnection, node: String)?
        var nextID: Int64 = 1
        var lastConnectError = ""
        while DaemonClock.now < deadline, Int(nextID) <= limits.operationsMaximum, !lock.withLock({ stopRequested }) {
            guard let current = session else {
                do throws(MySQLError) {
                    let connection = try MySQLConnection.connect(self.connection)
                    let node = try connection.query("SELECT @@hostname").rows.first?.first.flatMap { $0 } ?? "?"
                    session = (connection, node)
                    note("connected to \(node)")
                } catch {
                    if error.message != lastConnectError { note("cannot connect: \(error)") }
                    lastConnectError = error.message
                    usleep(100_000)
                }
                continue
            }
            lastConnectError = ""
            let id = nextID
            nextID += 1
            var commitSent = false
            let outcome: Operation.Outcome
            do throws(MySQLError) {
                try current.connection.query("START TRANSACTION")
                try current.connection.query(
                    "INSERT INTO \(LabLayout.databaseName).commits (run_id, op_id, client_ms, node) VALUES (\(runID), \(id), \(Self.unixMilliseconds()), @@hostname)")
                commitSent = true
                try current.connection.query("COMMIT")
                outcome = .acknowledged
            } catch {
                outcome = commitSent && error.connectionLost ? .inDoubt : .failed
                if error.connectionLost {
                    session = nil
                    note("lost the connection to \(current.node): \(error)")
                } else {
                    _ = try? current.connection.query("ROLLBACK")
                }
            }
            let operation = Operation(
                id: id, outcome: outcome, unixMilliseconds: Self.unixMilliseconds(),
                node: outcome == .acknowledged ? current.node : nil)
            lock.withLock { operations.append(operation) }
            record("\(operation.outcome.rawValue) \(id) \(operation.unixMilliseconds) \(operation.node ?? "-")")
        }
        session?.connection.close()
    }
}

/// What the database holds for a workload run, checked against what the workload was told.
public struct WorkloadVerdict: Sendable {
    public var acknowledged = 0
    public var inDoubt = 0
    public var failed = 0
    /// Acknowledged operations whose row is missing: lost commits.
    public var lost: [Int64] = []
    /// The lost operations with the node that acknowledged each and when (Unix milliseconds), for the report.
    public var lostDescriptions: [String] = []
    /// Operations whose row is there more than once.
    public var duplicated: [Int64] = []
    /// Failed operations whose row is there anyway, and rows of operations never attempted.
    public var phantom: [Int64] = []
    /// In-doubt operations that did commit.
    public var inDoubtCommitted = 0

    public var passed: Bool { lost.isEmpty && duplicated.isEmpty && phantom.isEmpty }

    /// `counts` is op_id -> number of rows, as the database has them.
    init(operations: [Workload.Operation], counts: [Int64: Int]) {
        var attempted: [Int64: Workload.Operation.Outcome] = [:]
        for operation in operations {
            attempted[operation.id] = operation.outcome
            let rows = counts[operation.id] ?? 0
            if rows > 1 { duplicated.append(operation.id) }
            switch operation.outcome {
            case .acknowledged:
                acknowledged += 1
                if rows == 0 {
                    lost.append(operation.id)
                    lostDescriptions.append(
                        "\(operation.id) (acknowledged by \(operation.node ?? "an unknown node") at \(operation.unixMilliseconds))")
                }
            case .failed:
                failed += 1
                if rows > 0 { phantom.append(operation.id) }
            case .inDoubt:
                inDoubt += 1
                if rows > 0 { inDoubtCommitted += 1 }
            }
        }
        phantom += counts.keys.filter { attempted[$0] == nil }.sorted()
    }

    public var summary: String {
        var text = "\(acknowledged) acknowledged commits, \(lost.count) lost; \(inDoubt) in doubt (\(inDoubtCommitted) committed), \(failed) failed"
        if !duplicated.isEmpty { text += "; DUPLICATED rows for operations \(duplicated.prefix(10).map(String.init).joined(separator: ", "))" }
        if !phantom.isEmpty { text += "; rows that must not exist for operations \(phantom.prefix(10).map(String.init).joined(separator: ", "))" }
        if !lost.isEmpty { text += "; LOST operations \(lostDescriptions.prefix(10).joined(separator: ", "))" }
        return text
    }
}
