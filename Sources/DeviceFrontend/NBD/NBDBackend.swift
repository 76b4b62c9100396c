import Synchronization

/// Where an NBD export's bytes live. The server calls these from its event loop; each must return promptly and call
/// `completion` exactly once, from any thread, when the operation is done (for a write with `fua`, durable). Blocking
/// disk I/O belongs on the backend's own threads, never on the caller's.
///
/// The server validates every request before it gets here: offsets and lengths are multiples of the advertised
/// minimum block size, non-zero, inside `sizeBytes`, and write-side calls only reach a backend that was writable when
/// the connection negotiated. A backend whose writability changes later (a demoted primary) answers `.notPermitted`.
public protocol NBDBackend: AnyObject, Sendable {
    var sizeBytes: UInt64 { get }
    var isWritable: Bool { get }
    /// Why new clients may not use the export now, or nil (the default). Read when a connection starts.
    var unavailableReason: String? { get }
    /// A client entered transmission on this export (it holds the device open) and, later, left it. `client` is
    /// unique per connection; `description` says who it is, for "held open by" messages. Default: nothing.
    func clientAttached(_ client: NBDClient)
    func clientDetached(_ client: NBDClient)
    /// Completes with `.success(data:)` holding exactly `length` bytes, or a failure.
    func read(offset: UInt64, length: UInt32, completion: @escaping @Sendable (NBDCompletion) -> Void)
    func write(offset: UInt64, bytes: [UInt8], fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void)
    func flush(completion: @escaping @Sendable (NBDCompletion) -> Void)
    func trim(offset: UInt64, length: UInt32, fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void)
    func writeZeroes(offset: UInt64, length: UInt32, fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void)
}

extension NBDBackend {
    public var unavailableReason: String? { nil }
    public func clientAttached(_ client: NBDClient) {}
    public func clientDetached(_ client: NBDClient) {}
}

/// One client connection, as a backend sees it.
public struct NBDClient: Sendable, Hashable, CustomStringConvertible {
    /// Unique within the process.
    public var connectionID: UInt64
    /// "pid 4242 (nbdcopy)" on a Unix socket, the peer address on TCP.
    public var description: String

    public init(connectionID: UInt64, description: String) {
        self.connectionID = connectionID
        self.description = description
    }
}

/// A backend over an array in memory, for tests and demos. Trim zeroes the range (reads after a trim are then
/// deterministic). Operations complete synchronously, before the call returns.
public final class InMemoryNBDBackend: NBDBackend {
    private let bytes: Mutex<[UInt8]>
    private let writable: Mutex<Bool>
    private let counts = Mutex<[String: Int]>([:])
    public let sizeBytes: UInt64

    public init(sizeBytes: Int, isWritable: Bool = true, contents: [UInt8]? = nil) {
        precondition(sizeBytes >= 0 && (contents == nil || contents!.count == sizeBytes), "contents must fill the export")
        self.sizeBytes = UInt64(sizeBytes)
        self.bytes = Mutex(contents ?? [UInt8](repeating: 0, count: sizeBytes))
        self.writable = Mutex(isWritable)
    }

    public var isWritable: Bool {
        get { writable.withLock { $0 } }
        set { writable.withLock { $0 = newValue } }
    }

    /// A copy of the whole export.
    public var contents: [UInt8] { bytes.withLock { $0 } }

    /// How many calls of each operation ("read", "write", "flush", "trim", "writeZeroes") the backend served.
    public func callCount(_ operation: String) -> Int { counts.withLock { $0[operation, default: 0] } }

    private func range(_ offset: UInt64, _ length: Int) -> Range<Int>? {
        guard offset <= sizeBytes, UInt64(length) <= sizeBytes - offset else { return nil }
        return Int(offset)..<Int(offset) + length
    }

    private func count(_ operation: String) { counts.withLock { $0[operation, default: 0] += 1 } }

    public func read(offset: UInt64, length: UInt32, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        count("read")
        guard let range = range(offset, Int(length)) else { return completion(.failure(.invalidArgument)) }
        completion(.success(data: bytes.withLock { Array($0[range]) }))
    }

    public func write(offset: UInt64, bytes data: [UInt8], fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        count("write")
        guard isWritable else { return completion(.failure(.notPermitted)) }
        guard let range = range(offset, data.count) else { return completion(.failure(.noSpace)) }
        bytes.withLock { $0.replaceSubrange(range, with: data) }
        completion(.done)
    }

    public func flush(completion: @escaping @Sendable (NBDCompletion) -> Void) {
        count("flush")
        completion(.done)
    }

    public func trim(offset: UInt64, length: UInt32, fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        count("trim")
        zero(offset: offset, length: length, completion: completion)
    }

    public func writeZeroes(offset: UInt64, length: UInt32, fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        count("writeZeroes")
        zero(offset: offset, length: length, completion: completion)
    }

    private func zero(offset: UInt64, length: UInt32, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        guard isWritable else { return completion(.failure(.notPermitted)) }
        guard let range = range(offset, Int(length)) else { return completion(.failure(.noSpace)) }
        bytes.withLock { $0.replaceSubrange(range, with: repeatElement(0, count: range.count)) }
        completion(.done)
    }
}
