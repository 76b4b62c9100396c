import Dispatch
import Foundation
import ReplicationCore
import Synchronization
import Testing

@testable import TandemStorage

/// A directory of its own under the system temporary directory, removed by `remove()` (call it in a `defer`).
struct TemporaryDirectory {
    let path: String

    init(_ label: String = #function) throws {
        let name = "tandem-storage-\(label.filter { $0.isLetter || $0.isNumber })-\(UUID().uuidString)"
        path = (NSTemporaryDirectory() as NSString).appendingPathComponent(name)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }

    /// A directory under /dev/shm (tmpfs), when there is one.
    static func inSharedMemory(_ label: String = #function) throws -> TemporaryDirectory? {
        guard FileManager.default.fileExists(atPath: "/dev/shm") else { return nil }
        let path = "/dev/shm/tandem-storage-\(label.filter { $0.isLetter || $0.isNumber })-\(UUID().uuidString)"
        guard (try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)) != nil
        else { return nil }
        return TemporaryDirectory(path: path)
    }

    private init(path: String) { self.path = path }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    /// A sparse file of `sizeBytes` zero bytes.
    @discardableResult
    func makeFile(_ name: String, sizeBytes: UInt64) throws -> String {
        let filePath = file(name)
        let fd = open(filePath, O_RDWR | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw TestFailure("cannot create \(filePath): errno \(errno)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(sizeBytes)) == 0 else { throw TestFailure("cannot size \(filePath)") }
        return filePath
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Raw access to test files, bypassing the stores.
enum RawFile {
    static func read(_ path: String, offsetBytes: UInt64, count: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TestFailure("cannot open \(path)") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let done = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offsetBytes)) }
        guard done == count else { throw TestFailure("short read of \(path): \(done) of \(count)") }
        return bytes
    }

    static func readAll(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else { throw TestFailure("cannot read \(path)") }
        return [UInt8](data)
    }

    static func write(_ path: String, offsetBytes: UInt64, _ bytes: [UInt8]) throws {
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { throw TestFailure("cannot open \(path)") }
        defer { close(fd) }
        let done = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes.count, off_t(offsetBytes)) }
        guard done == bytes.count else { throw TestFailure("short write to \(path)") }
    }

    /// Inverts every bit of one byte.
    static func flipByte(_ path: String, offsetBytes: UInt64) throws {
        let byte = try read(path, offsetBytes: offsetBytes, count: 1)
        try write(path, offsetBytes: offsetBytes, [~byte[0]])
    }

    static func resize(_ path: String, sizeBytes: UInt64) throws {
        guard truncate(path, off_t(sizeBytes)) == 0 else { throw TestFailure("cannot resize \(path)") }
    }
}

/// Collects a block store's completions and lets a test wait for them.
final class CompletionRecorder: Sendable {
    /// Generous, and only a bound against a hung test: no test asserts how long anything takes.
    static let waitSeconds = 120

    private let results = Mutex<[UInt64: LocalIOResult]>([:])
    private let arrivals = DispatchSemaphore(value: 0)

    var sink: @Sendable (ReplicationEvent) -> Void {
        { [self] event in
            guard case .localIOCompleted(let token, let result) = event else {
                Issue.record("unexpected event \(event)")
                return
            }
            let duplicate = results.withLock { $0.updateValue(result, forKey: token) != nil }
            if duplicate { Issue.record("token \(token) completed twice") }
            arrivals.signal()
        }
    }

    /// Waits until every token in `tokens` has completed and returns their results.
    func wait(for tokens: [UInt64]) throws -> [UInt64: LocalIOResult] {
        while true {
            let snapshot = results.withLock { $0 }
            if tokens.allSatisfy({ snapshot[$0] != nil }) { return snapshot.filter { tokens.contains($0.key) } }
            guard arrivals.wait(timeout: .now() + .seconds(Self.waitSeconds)) == .success else {
                throw TestFailure("tokens \(tokens.filter { snapshot[$0] == nil }) never completed")
            }
        }
    }

    func wait(for token: UInt64) throws -> LocalIOResult { try wait(for: [token])[token]! }
}

/// Collects log lines.
final class LogRecorder: Sendable {
    private let lines = Mutex<[String]>([])

    var sink: @Sendable (String) -> Void { { [self] line in lines.withLock { $0.append(line) } } }

    var all: [String] { lines.withLock { $0 } }
}

/// A recognisable payload: every byte depends on the seed and its position.
func pattern(sizeBytes: Int, seed: UInt8) -> [UInt8] {
    (0..<sizeBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ 1) }
}

func range(offsetBytes: UInt64, sizeBytes: UInt32) -> BlockRange {
    precondition(offsetBytes % 512 == 0, "test range at \(offsetBytes) is not sector aligned")
    return BlockRange(sector: offsetBytes / 512, sizeBytes: sizeBytes)
}
