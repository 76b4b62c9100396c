#if canImport(Glibc)
import Glibc
#endif
import DeviceFrontend
import ReplicationCore
import Synchronization

/// An I/O request from a device frontend (the NBD export) to a resource's thread. `completion` is called exactly
/// once: by the thread when the replication engine completed the request, or with `.unavailable` when the resource
/// is going down or gone.
struct DeviceRequest: Sendable {
    enum Operation: Sendable {
        case read(offsetBytes: UInt64, lengthBytes: UInt32)
        case write(offsetBytes: UInt64, payload: [UInt8], forceUnitAccess: Bool)
        /// Discard or write-zeroes: the range reads as zeroes on both disks afterwards; no data crosses the network.
        case zeroes(offsetBytes: UInt64, lengthBytes: UInt32, forceUnitAccess: Bool)
        case flush
    }

    var operation: Operation
    var completion: @Sendable (DeviceOutcome) -> Void
}

/// How a device request ended.
enum DeviceOutcome: Sendable {
    /// Done; the bytes read for a read, empty otherwise.
    case success([UInt8])
    /// The replication engine refused or failed it.
    case failure(RequestFailure)
    /// The resource is going down or gone.
    case unavailable
}

/// What a resource's thread and its device frontends share: the role (published by the thread after every batch
/// of messages) and the clients that hold the device open (kept by the frontends). `secondary` and `down` are
/// refused while anyone holds it, as DRBD refuses to demote an open device.
final class DeviceExportState: Sendable {
    private struct State {
        var role: Role = .secondary
        var holders: [UInt64: String] = [:]
    }

    private let state = Mutex(State())

    var role: Role { state.withLock { $0.role } }

    func publish(role: Role) {
        state.withLock { $0.role = role }
    }

    func attach(_ client: NBDClient) {
        state.withLock { $0.holders[client.connectionID] = client.description }
    }

    func detach(_ client: NBDClient) {
        _ = state.withLock { $0.holders.removeValue(forKey: client.connectionID) }
    }

    /// Who holds the device open, oldest connection first; empty when nobody does.
    var holders: [String] {
        state.withLock { state in state.holders.sorted { $0.key < $1.key }.map(\.value) }
    }

    /// The refusal for a role change or `down` while the device is open, or nil when nobody holds it.
    func heldOpenRefusal(resource: String) -> String? {
        let holders = holders
        guard !holders.isEmpty else { return nil }
        return "\(resource): the device is held open by \(holders.joined(separator: ", ")); close it first"
    }
}

/// The NBD view of one replicated resource: every request goes to the resource's thread and through the replication
/// engine, so a write completes when the resource's protocol says it has (protocol C: on both disks, FUA and FLUSH
/// durably). Only a Primary exports the device, as only a Primary's DRBD device can be opened; a client that
/// connected before a demotion gets EPERM for writes from the engine itself.
///
/// TRIM and WRITE_ZEROES both become zeroing writes, one request at a time, each at most the engine's request size:
/// both disks punch holes and stay identical (NBD would let a server ignore TRIM, but then a later read could tell
/// the nodes apart).
final class ReplicatedDeviceBackend: NBDBackend {
    let resourceName: String
    let sizeBytes: UInt64
    let state: DeviceExportState
    private let mailbox: Mailbox

    init(resourceName: String, sizeBytes: UInt64, state: DeviceExportState, mailbox: Mailbox) {
        self.resourceName = resourceName
        self.sizeBytes = sizeBytes
        self.state = state
        self.mailbox = mailbox
    }

    /// The NBD limits that fit the engine: no payload larger than one replicated request.
    static var limits: NBDLimits {
        var limits = NBDLimits()
        limits.payloadBytesMax = UInt32(ReplicationMachine.requestBytesMaximum)
        limits.connectionsMax = 8
        return limits
    }

    var isWritable: Bool { state.role == .primary }

    var unavailableReason: String? {
        let role = state.role
        return role == .primary ? nil : "\(resourceName) is \(role.rawValue); only a Primary exports its device"
    }

    func clientAttached(_ client: NBDClient) { state.attach(client) }
    func clientDetached(_ client: NBDClient) { state.detach(client) }

    func read(offset: UInt64, length: UInt32, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        submit(.read(offsetBytes: offset, lengthBytes: length), completion)
    }

    func write(offset: UInt64, bytes: [UInt8], fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        submit(.write(offsetBytes: offset, payload: bytes, forceUnitAccess: fua), completion)
    }

    func flush(completion: @escaping @Sendable (NBDCompletion) -> Void) {
        submit(.flush, completion)
    }

    func trim(offset: UInt64, length: UInt32, fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        writeZeroChunks(from: offset, end: offset + UInt64(length), fua: fua, completion: completion)
    }

    func writeZeroes(offset: UInt64, length: UInt32, fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void) {
        writeZeroChunks(from: offset, end: offset + UInt64(length), fua: fua, completion: completion)
    }

    private func writeZeroChunks(
        from offset: UInt64, end: UInt64, fua: Bool, completion: @escaping @Sendable (NBDCompletion) -> Void
    ) {
        guard offset < end else { return completion(.done) }
        let chunkBytes = min(end - offset, UInt64(ReplicationMachine.requestBytesMaximum))
        submit(.zeroes(offsetBytes: offset, lengthBytes: UInt32(chunkBytes), forceUnitAccess: fua)) { [self] answer in
            guard answer == .done else { return completion(answer) }
            writeZeroChunks(from: offset + chunkBytes, end: end, fua: fua, completion: completion)
        }
    }

    private func submit(_ operation: DeviceRequest.Operation, _ completion: @escaping @Sendable (NBDCompletion) -> Void) {
        let request = DeviceRequest(operation: operation) { outcome in completion(Self.nbdCompletion(outcome)) }
        if !mailbox.post(request) { request.completion(.unavailable) }
    }

    static func nbdCompletion(_ outcome: DeviceOutcome) -> NBDCompletion {
        switch outcome {
        case .success(let data): .success(data: data)
        case .unavailable: .failure(.shuttingDown)
        case .failure(let failure):
            switch failure {
            case .notPrimary: .failure(.notPermitted)
            case .noUpToDateData, .ioError: .failure(.ioError)
            case .outOfRange: .failure(.noSpace)
            case .misaligned, .tooLarge: .failure(.invalidArgument)
            }
        }
    }
}

/// The FUSE file's view of one replicated resource: like the NBD export, every request goes through the resource's
/// thread and the replication engine. fsync and flush on the file (the loop device's flushes) are replication
/// flushes: with protocol C, both disks are durable before the reply.
final class ReplicatedBlockFile: BlockFileBackend {
    /// FUSE workers may block, so they process the resource themselves when nobody else does.
    private let processor: ResourceProcessor

    init(processor: ResourceProcessor) { self.processor = processor }

    func read(offset: UInt64, length: UInt32, completion: @escaping @Sendable (Int32, [UInt8]) -> Void) {
        submit(.read(offsetBytes: offset, lengthBytes: length)) { errno, data in completion(errno, data) }
    }

    func write(offset: UInt64, bytes: [UInt8], completion: @escaping @Sendable (Int32) -> Void) {
        submit(.write(offsetBytes: offset, payload: bytes, forceUnitAccess: false)) { errno, _ in completion(errno) }
    }

    func flush(completion: @escaping @Sendable (Int32) -> Void) {
        submit(.flush) { errno, _ in completion(errno) }
    }

    func zero(offset: UInt64, length: UInt32, completion: @escaping @Sendable (Int32) -> Void) {
        submit(.zeroes(offsetBytes: offset, lengthBytes: length, forceUnitAccess: false)) { errno, _ in completion(errno) }
    }

    private func submit(_ operation: DeviceRequest.Operation, _ completion: @escaping @Sendable (Int32, [UInt8]) -> Void) {
        let request = DeviceRequest(operation: operation) { outcome in
            switch outcome {
            case .success(let data): completion(0, data)
            case .unavailable: completion(EIO, [])
            case .failure(let failure): completion(Self.errno(failure), [])
            }
        }
        if !processor.deliver(.device(request)) { request.completion(.unavailable) }
    }

    /// The errno a file system sees for each refusal.
    static func errno(_ failure: RequestFailure) -> Int32 {
        switch failure {
        case .notPrimary: EROFS
        case .noUpToDateData, .ioError: EIO
        case .outOfRange: ENOSPC
        case .misaligned, .tooLarge: EINVAL
        }
    }
}
