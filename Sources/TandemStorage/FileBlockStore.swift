#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage
import ReplicationCore
import Synchronization
import TandemDrivers

/// The production `BlockStore`: a volume's data on a regular file or a block device.
///
/// Requests are carried out by blocking pread/pwrite/fdatasync on a small pool of dedicated threads
/// (`IOThreadPool`), never on an event loop or Swift's cooperative pool. Each completion is handed to the injected
/// `completions` sink as `.localIOCompleted(token:, result)` from an I/O thread; the daemon hops it onto the
/// resource's serial thread. Completions arrive in any order.
///
/// Durability, as the `BlockStore` contract needs it:
/// - A completed plain write may still sit in a volatile cache (the page cache when buffered, the disk's write
///   cache when direct).
/// - A flush is fdatasync(2) of the device; it covers every write that completed before the flush was submitted,
///   whichever descriptor wrote it, because fdatasync flushes the inode (and, for a block device or a file system
///   with barriers, the disk's write cache).
/// - A FUA write goes through a second descriptor opened with O_DSYNC, so it is on stable storage when it completes
///   (Linux then uses REQ_FUA, or a write followed by a cache flush on disks without FUA).
///
/// Direct I/O (O_DIRECT) bypasses the page cache, so that data is not cached twice (the application above has its
/// own cache, and the device frontend's loop device another) and so that an I/O error surfaces on the request that
/// caused it. See `DirectIOPolicy` and `IOMode`. In direct mode a request whose offset or length is not a multiple of
/// the device's direct-I/O alignment (possible on 4 KiB-sector disks, since requests are only 512-byte aligned) is
/// carried out through a buffered descriptor onto the same file instead of being read-modify-written: the kernel
/// keeps the page cache coherent with direct I/O for non-overlapping requests, and the replication machine never has
/// two overlapping writes in flight. Read-modify-write would instead race with a concurrent write to the other half
/// of the same 4 KiB block. `unalignedRequestCount` counts those requests.
///
/// Errors never throw from the submit methods: a failed request completes as `.failed`, and the errno is logged
/// through `log`. Short transfers are retried until complete. Request limits: at most `requestBytesMaximum` bytes, a
/// multiple of 512, inside the first `sizeBytes` bytes of the device.
public final class FileBlockStore: BlockStore, Sendable {
    /// Whether to use O_DIRECT.
    public enum DirectIOPolicy: String, Sendable, Hashable, CaseIterable {
        /// Direct I/O or nothing: opening fails with `directIOUnsupported` if the file system or device refuses it.
        case required
        /// Direct I/O when possible; otherwise buffered I/O with the reason in `IOMode.buffered`. The default.
        case preferred
        /// Buffered I/O through the page cache.
        case off
    }

    /// The I/O mode in force, for `tandem status`.
    public enum IOMode: Sendable, Hashable, CustomStringConvertible {
        /// O_DIRECT; requests aligned to `alignmentBytes` bypass the page cache.
        case direct(alignmentBytes: UInt32)
        /// Through the page cache, and why.
        case buffered(reason: String)

        public var isDirect: Bool {
            if case .direct = self { return true }
            return false
        }

        public var description: String {
            switch self {
            case .direct(let alignmentBytes): "direct I/O (O_DIRECT, \(alignmentBytes)-byte alignment)"
            case .buffered(let reason): "buffered I/O (\(reason))"
            }
        }
    }

    public struct Options: Sendable {
        public static let threadCountRange = IOThreadPool.threadCountRange
        public static let queueDepthRange = IOThreadPool.queueDepthRange
        public static let requestBytesRange = 512...(64 << 20)

        public var directIO: DirectIOPolicy
        /// I/O threads: requests in flight at the disk at once. A handful keeps an SSD's queue busy; more only adds
        /// contention on a spinning disk.
        public var threadCount: Int
        /// Requests queued for the threads before `submit...` blocks the caller.
        public var queueDepthMaximum: Int
        /// Larger requests are failed (the replication machine never issues more than its own maximum).
        public var requestBytesMaximum: Int
        /// Only the first `dataSizeBytes` bytes of the device hold data (internal metadata follows them: pass
        /// `FileMetadataStore.dataSizeBytes`); nil for the whole device rounded down to 4 KiB.
        public var dataSizeBytes: UInt64?
        /// Direct I/O's bounce buffers, each `requestBytesMaximum` bytes, allocated at open (`AlignedBufferPool`):
        /// enough for the I/O threads and the threads that run requests themselves (replicad's FUSE workers).
        public var preallocatedBuffers: Int

        public init(
            directIO: DirectIOPolicy = .preferred, threadCount: Int = 4, queueDepthMaximum: Int = 1024,
            requestBytesMaximum: Int = ReplicationMachine.requestBytesMaximum, dataSizeBytes: UInt64? = nil,
            preallocatedBuffers: Int = 12
        ) {
            self.directIO = directIO
            self.threadCount = threadCount
            self.queueDepthMaximum = queueDepthMaximum
            self.requestBytesMaximum = requestBytesMaximum
            self.dataSizeBytes = dataSizeBytes
            self.preallocatedBuffers = preallocatedBuffers
        }

        func problem() -> String? {
            guard Self.threadCountRange.contains(threadCount) else {
                return "thread count \(threadCount) is outside \(Self.threadCountRange)"
            }
            guard Self.queueDepthRange.contains(queueDepthMaximum) else {
                return "queue depth \(queueDepthMaximum) is outside \(Self.queueDepthRange)"
            }
            guard Self.requestBytesRange.contains(requestBytesMaximum), requestBytesMaximum % 512 == 0 else {
                return "request size limit \(requestBytesMaximum) is not a multiple of 512 in \(Self.requestBytesRange)"
            }
            guard preallocatedBuffers >= 0, preallocatedBuffers * requestBytesMaximum <= AlignedBufferPool.bytesMaximum
            else {
                return "\(preallocatedBuffers) preallocated buffers of \(requestBytesMaximum) bytes exceed "
                    + "\(AlignedBufferPool.bytesMaximum >> 20) MiB"
            }
            return nil
        }
    }

    public let path: String
    /// The size of the file or device.
    public let deviceSizeBytes: UInt64
    /// Bytes that hold data: requests must lie below this.
    public let sizeBytes: UInt64
    public let isBlockDevice: Bool
    public let ioMode: IOMode
    public let faults: StorageFaults

    private let context: IOContext
    private let pool: IOThreadPool
    private let completions: @Sendable (ReplicationEvent) -> Void
    /// Closed, and how many requests run on callers' threads (`runHere`): `close` waits for them.
    private let closing = Mutex<(isClosed: Bool, runningHere: Int)>((false, 0))

    /// Opens `path` for reading and writing and starts the I/O threads.
    ///
    /// - `faults`: injected failures, shared with whoever sets them (the control socket, a test).
    /// - `log`: one line per failed request or notable decision (the fallback to buffered I/O), from any thread.
    /// - `completions`: receives every `.localIOCompleted`, from an I/O thread (or from the caller's thread for a
    ///   request submitted after `close()`). It runs on that I/O thread, which it holds up meanwhile: it may do
    ///   blocking work (replicad processes the resource there), but it must not call `close()`.
    ///
    /// Throws `openFailed`, `unsupportedDevice`, `directIOUnsupported` (policy `.required`) or `invalidArgument`
    /// (options out of range, `dataSizeBytes` beyond the device).
    public convenience init(
        path: String, options: Options = Options(), faults: StorageFaults = StorageFaults(),
        log: @escaping @Sendable (String) -> Void, completions: @escaping @Sendable (ReplicationEvent) -> Void
    ) throws(StorageError) {
        try self.init(
            path: path, options: options, faults: faults, log: log, completions: completions,
            opener: { path, flags throws(IOFailure) in try Posix.open(path, flags: flags) })
    }

    /// As the public initialiser, with open(2) replaced: tests use it to play a file system that refuses O_DIRECT,
    /// since tmpfs accepts it on current kernels.
    init(
        path: String, options: Options, faults: StorageFaults, log: @escaping @Sendable (String) -> Void,
        completions: @escaping @Sendable (ReplicationEvent) -> Void,
        opener: @Sendable (String, Int32) throws(IOFailure) -> Int32
    ) throws(StorageError) {
        if let problem = options.problem() { throw StorageError(.invalidArgument, "block store options: \(problem)") }
        let opened = try OpenedDevice.open(path: path, policy: options.directIO, log: log, opener: opener)
        let usable = opened.sizeBytes & ~(SyncBitmap.blockBytes - 1)
        let dataSize = options.dataSizeBytes ?? usable
        guard dataSize <= opened.sizeBytes else {
            opened.descriptors.close()
            throw StorageError(
                .invalidArgument,
                "\(path) holds \(opened.sizeBytes) bytes, fewer than the \(dataSize) bytes of data configured for it")
        }
        self.path = path
        self.deviceSizeBytes = opened.sizeBytes
        self.sizeBytes = dataSize
        self.isBlockDevice = opened.isBlockDevice
        self.ioMode = opened.mode
        self.faults = faults
        self.completions = completions
        let buffers: AlignedBufferPool
        do {
            // Buffered mode copies through the page cache and needs no bounce buffers.
            let alignment: Int
            if case .direct(let bytes) = opened.mode { alignment = max(Int(bytes), 4096) } else { alignment = 4096 }
            buffers = try AlignedBufferPool(
                count: opened.mode.isDirect ? options.preallocatedBuffers : 0,
                bufferBytes: options.requestBytesMaximum, alignmentBytes: alignment)
        } catch {
            opened.descriptors.close()
            throw error.storageError(.ioFailed, "Free memory, or lower the preallocated buffers")
        }
        self.context = IOContext(
            path: path, descriptors: opened.descriptors, mode: opened.mode, sizeBytes: dataSize,
            requestBytesMaximum: options.requestBytesMaximum, buffers: buffers, faults: faults, log: log)
        self.pool = IOThreadPool(
            name: "tandem-io", threadCount: options.threadCount, queueDepthMaximum: options.queueDepthMaximum)
    }

    deinit { close() }

    /// Requests carried out through the buffered descriptor because they were not aligned for direct I/O.
    public var unalignedRequestCount: UInt64 { context.unalignedRequests.load(ordering: .relaxed) }

    /// Direct requests that found every preallocated buffer in use and allocated their own.
    public var bufferOverflowCount: UInt64 { context.buffers.overflows }

    public func submitWrite(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool) {
        submit(writeRequest(token: token, range: range, payload: payload, forceUnitAccess: forceUnitAccess))
    }

    public func submitRead(token: UInt64, range: BlockRange) { submit(readRequest(token: token, range: range)) }

    public func submitFlush(token: UInt64) { submit(flushRequest(token: token)) }

    public func submitZeroes(token: UInt64, range: BlockRange, forceUnitAccess: Bool) {
        submit(zeroesRequest(token: token, range: range, forceUnitAccess: forceUnitAccess))
    }

    /// One disk request, made but not yet carried out: `submit` hands it to the I/O threads, `runHere` carries it
    /// out on the calling thread.
    public struct Request: Sendable {
        public let token: UInt64
        /// "write", "read", "zeroing" or "flush", and the range: described only if the request is refused.
        fileprivate let kind: StaticString
        fileprivate let range: BlockRange?
        fileprivate let work: @Sendable () -> LocalIOResult

        fileprivate var what: String { range.map { "\(kind) of \(describe($0))" } ?? "\(kind)" }
    }

    public func writeRequest(token: UInt64, range: BlockRange, payload: [UInt8], forceUnitAccess: Bool) -> Request {
        precondition(
            payload.count == Int(range.sizeBytes),
            "write \(token) of \(describe(range)) carries \(payload.count) bytes")
        let context = context
        return Request(token: token, kind: "write", range: range) {
            context.write(range: range, payload: payload, forceUnitAccess: forceUnitAccess)
        }
    }

    public func readRequest(token: UInt64, range: BlockRange) -> Request {
        let context = context
        return Request(token: token, kind: "read", range: range) { context.read(range: range) }
    }

    public func flushRequest(token: UInt64) -> Request {
        let context = context
        return Request(token: token, kind: "flush", range: nil) { context.flush() }
    }

    public func zeroesRequest(token: UInt64, range: BlockRange, forceUnitAccess: Bool) -> Request {
        let context = context
        let isBlockDevice = isBlockDevice
        return Request(token: token, kind: "zeroing", range: range) {
            context.zero(range: range, isBlockDevice: isBlockDevice, forceUnitAccess: forceUnitAccess)
        }
    }

    /// Queues `request` for the I/O threads; its completion goes to the `completions` sink.
    public func submit(_ request: Request) {
        let sink = completions
        let accepted = !closing.withLock { $0.isClosed } && pool.submit {
            sink(.localIOCompleted(token: request.token, request.work()))
        }
        if !accepted { sink(refused(request)) }
    }

    /// Carries out `request` on the calling thread, which must be allowed to block (never an event loop or the
    /// cooperative pool), and returns its completion instead of sending it to the sink: the caller delivers it.
    /// Saves the two thread hand-offs of the pool when the caller would only wait for the answer anyway.
    public func runHere(_ request: Request) -> ReplicationEvent {
        let admitted = closing.withLock { state -> Bool in
            guard !state.isClosed else { return false }
            state.runningHere += 1
            return true
        }
        guard admitted else { return refused(request) }
        defer { closing.withLock { $0.runningHere -= 1 } }
        return .localIOCompleted(token: request.token, request.work())
    }

    private func refused(_ request: Request) -> ReplicationEvent {
        context.log("\(path): \(request.what) refused: the block store is closed")
        return .localIOCompleted(token: request.token, .failed)
    }

    /// Stops taking requests, waits for those already queued or running on a caller's thread to complete (their
    /// completions are delivered), and closes the device. Later submissions complete as `.failed` at once.
    /// Idempotent; must not be called from the completion sink (it runs on an I/O thread, which cannot wait for
    /// itself).
    public func close() {
        let wasClosed = closing.withLock { state in
            defer { state.isClosed = true }
            return state.isClosed
        }
        guard !wasClosed else { return }
        pool.shutdown()
        // A request run on a caller's thread still uses the descriptors; it is one system call, so this is short.
        while closing.withLock({ $0.runningHere }) > 0 { usleep(1000) }
        context.descriptors.close()
    }
}

/// The descriptors of one open device. Closed once, explicitly, after the I/O threads are joined.
final class DeviceDescriptors: Sendable {
    /// O_DIRECT in direct mode, else buffered.
    let primary: Int32
    /// As `primary`, plus O_DSYNC: for FUA writes.
    let primarySync: Int32
    /// Direct mode only: buffered descriptors for requests not aligned for direct I/O.
    let buffered: Int32?
    let bufferedSync: Int32?
    private let isClosed = Mutex(false)

    init(primary: Int32, primarySync: Int32, buffered: Int32?, bufferedSync: Int32?) {
        self.primary = primary
        self.primarySync = primarySync
        self.buffered = buffered
        self.bufferedSync = bufferedSync
    }

    func close() {
        let wasClosed = isClosed.withLock { closed in
            defer { closed = true }
            return closed
        }
        guard !wasClosed else { return }
        for fd in [primary, primarySync, buffered, bufferedSync].compactMap({ $0 }) { Posix.close(fd) }
    }
}

/// Opening a device: its type and size, and the direct-I/O decision.
struct OpenedDevice {
    var descriptors: DeviceDescriptors
    var mode: FileBlockStore.IOMode
    var sizeBytes: UInt64
    var isBlockDevice: Bool

    /// The alignment assumed for files whose file system does not report one (statx STATX_DIOALIGN): 4 KiB satisfies
    /// every Linux file system on disks with 512-byte or 4 KiB logical sectors.
    static let fallbackAlignmentBytes: UInt32 = 4096
    static let alignmentRange: ClosedRange<UInt32> = 512...65536

    static func open(
        path: String, policy: FileBlockStore.DirectIOPolicy, log: @Sendable (String) -> Void,
        opener: (String, Int32) throws(IOFailure) -> Int32
    ) throws(StorageError) -> OpenedDevice {
        // A block device is claimed exclusively (O_EXCL), as DRBD claims its backing device: opening fails with
        // EBUSY while it is mounted or held by another exclusive user, instead of corrupting a live file system.
        var status = stat()
        let isBlock = stat(path, &status) == 0 && status.st_mode & Posix.fileTypeMask == Posix.blockDeviceType
        let buffered = try openOrExplain(path, O_RDWR | (isBlock ? O_EXCL : 0), opener)
        var opened: [Int32] = [buffered]
        do throws(StorageError) {
            let (sizeBytes, isBlockDevice) = try Posix.sizeBytes(buffered, path: path)
            var mode: FileBlockStore.IOMode = .buffered(reason: "direct I/O is off by configuration")
            var directFD: Int32?
            if policy != .off {
                switch try openDirect(path, buffered, isBlockDevice, sizeBytes, opener) {
                case .success(let direct):
                    opened.append(direct.fd)
                    directFD = direct.fd
                    mode = .direct(alignmentBytes: direct.alignmentBytes)
                case .failure(let reason) where policy == .required:
                    throw StorageError(
                        .directIOUnsupported,
                        "\(path) does not support direct I/O (O_DIRECT): \(reason). Move the backing file to a file "
                            + "system that supports it, or set the direct-I/O policy to 'preferred' or 'off'")
                case .failure(let reason):
                    mode = .buffered(reason: "O_DIRECT unavailable: \(reason)")
                    log("\(path): using buffered I/O: \(reason)")
                }
            }
            let primarySync = try openOrExplain(path, O_RDWR | O_DSYNC | (directFD == nil ? 0 : Posix.directFlag), opener)
            opened.append(primarySync)
            let descriptors: DeviceDescriptors
            if let directFD {
                let bufferedSync = try openOrExplain(path, O_RDWR | O_DSYNC, opener)
                opened.append(bufferedSync)
                descriptors = DeviceDescriptors(
                    primary: directFD, primarySync: primarySync, buffered: buffered, bufferedSync: bufferedSync)
            } else {
                descriptors = DeviceDescriptors(
                    primary: buffered, primarySync: primarySync, buffered: nil, bufferedSync: nil)
            }
            return OpenedDevice(descriptors: descriptors, mode: mode, sizeBytes: sizeBytes, isBlockDevice: isBlockDevice)
        } catch {
            for fd in opened { Posix.close(fd) }
            throw error
        }
    }

    struct DirectDescriptor {
        var fd: Int32
        var alignmentBytes: UInt32
    }

    /// Tries O_DIRECT: the alignment the device or file system asks for, an open with O_DIRECT, and one aligned read,
    /// because some file systems accept the flag at open and refuse the first request. Returns why it is unavailable
    /// (EINVAL from open or the probe, or a file system that reports no direct-I/O support); other errors throw.
    static func openDirect(
        _ path: String, _ fd: Int32, _ isBlockDevice: Bool, _ sizeBytes: UInt64,
        _ opener: (String, Int32) throws(IOFailure) -> Int32
    ) throws(StorageError) -> Result<DirectDescriptor, DirectIOUnavailable> {
        var alignment = fallbackAlignmentBytes
        if isBlockDevice {
            var logical: UInt32 = 0
            let result = ctandem_block_device_logical_block_size(fd, &logical)
            guard result == 0 else {
                throw StorageError(
                    .unsupportedDevice, "cannot read the logical block size of \(path) (BLKSSZGET)",
                    cause: .errno(result))
            }
            alignment = logical
        } else {
            var known: Int32 = 0
            var offsetAlignment: UInt32 = 0
            var memoryAlignment: UInt32 = 0
            if ctandem_direct_io_alignment(fd, &known, &offsetAlignment, &memoryAlignment) == 0, known != 0 {
                guard offsetAlignment != 0 else {
                    return .failure(DirectIOUnavailable("the file system reports no direct-I/O support for this file"))
                }
                alignment = max(offsetAlignment, memoryAlignment)
            }
        }
        guard alignmentRange.contains(alignment), alignment & (alignment - 1) == 0 else {
            return .failure(DirectIOUnavailable("unusable direct-I/O alignment of \(alignment) bytes"))
        }
        let directFD: Int32
        do {
            directFD = try opener(path, O_RDWR | Posix.directFlag)
        } catch {
            if error.errnoValue == EINVAL { return .failure(DirectIOUnavailable("open with O_DIRECT failed: \(error)")) }
            throw explainOpenFailure(path, error)
        }
        if sizeBytes >= UInt64(alignment) {
            do {
                try Posix.withAlignedBuffer(count: Int(alignment), alignment: max(Int(alignment), 4096)) {
                    buffer throws(IOFailure) in try Posix.readFully(directFD, into: buffer, offsetBytes: 0)
                }
            } catch {
                Posix.close(directFD)
                if error.errnoValue == EINVAL {
                    return .failure(DirectIOUnavailable("a direct read was refused: \(error)"))
                }
                throw error.storageError(.ioFailed, "The device failed its first read; check it (dmesg, smartctl)")
            }
        }
        return .success(DirectDescriptor(fd: directFD, alignmentBytes: alignment))
    }

    struct DirectIOUnavailable: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    static func openOrExplain(
        _ path: String, _ flags: Int32, _ opener: (String, Int32) throws(IOFailure) -> Int32
    ) throws(StorageError) -> Int32 {
        do {
            return try opener(path, flags)
        } catch {
            throw explainOpenFailure(path, error)
        }
    }

    static func explainOpenFailure(_ path: String, _ failure: IOFailure) -> StorageError {
        let advice: String
        switch failure.errnoValue {
        case ENOENT: advice = "Check the disk path in drbd.conf; create the file or volume first"
        case EACCES, EPERM: advice = "Run the daemon as root, or give it read-write access to \(path)"
        case EBUSY: advice = "The device is in use (mounted, or held by another program); release it first"
        case EROFS: advice = "The device or file system is read-only"
        default: advice = "Check the path and the device"
        }
        return failure.storageError(.openFailed, advice)
    }
}

/// What the I/O threads need: shared, immutable apart from the counter.
final class IOContext: Sendable {
    let path: String
    let descriptors: DeviceDescriptors
    let mode: FileBlockStore.IOMode
    let alignmentBytes: UInt64
    let sizeBytes: UInt64
    let requestBytesMaximum: Int
    let faults: StorageFaults
    let log: @Sendable (String) -> Void
    let unalignedRequests = Atomic<UInt64>(0)
    let buffers: AlignedBufferPool

    init(
        path: String, descriptors: DeviceDescriptors, mode: FileBlockStore.IOMode, sizeBytes: UInt64,
        requestBytesMaximum: Int, buffers: AlignedBufferPool, faults: StorageFaults,
        log: @escaping @Sendable (String) -> Void
    ) {
        self.buffers = buffers
        self.path = path
        self.descriptors = descriptors
        self.mode = mode
        if case .direct(let alignment) = mode { alignmentBytes = UInt64(alignment) } else { alignmentBytes = 512 }
        self.sizeBytes = sizeBytes
        self.requestBytesMaximum = requestBytesMaximum
        self.faults = faults
        self.log = log
    }

    /// Why the device cannot carry out `range`, or nil.
    func problem(_ range: BlockRange) -> String? {
        guard range.sizeBytes > 0, range.sizeBytes % 512 == 0 else {
            return "its size of \(range.sizeBytes) bytes is not a positive multiple of 512"
        }
        guard Int(range.sizeBytes) <= requestBytesMaximum else {
            return "its size of \(range.sizeBytes) bytes exceeds the limit of \(requestBytesMaximum)"
        }
        let (startBytes, overflow) = range.sector.multipliedReportingOverflow(by: 512)
        guard !overflow, startBytes <= sizeBytes, range.endBytes <= sizeBytes else {
            return "it ends beyond the \(sizeBytes) bytes of data"
        }
        return nil
    }

    /// The descriptor for `range`, and whether it is the direct one.
    private func descriptor(for range: BlockRange, sync: Bool) -> (fd: Int32, direct: Bool) {
        guard mode.isDirect else { return (sync ? descriptors.primarySync : descriptors.primary, false) }
        if range.offsetBytes % alignmentBytes == 0 && UInt64(range.sizeBytes) % alignmentBytes == 0 {
            return (sync ? descriptors.primarySync : descriptors.primary, true)
        }
        unalignedRequests.add(1, ordering: .relaxed)
        return (sync ? descriptors.bufferedSync! : descriptors.buffered!, false)
    }

    func write(range: BlockRange, payload: [UInt8], forceUnitAccess: Bool) -> LocalIOResult {
        if let problem = problem(range) {
            log("\(path): write of \(describe(range)) refused: \(problem)")
            return .failed
        }
        if let rule = faults.matchingRule(.writes, range.offsetBytes..<range.endBytes) {
            log("\(path): write of \(range) failed by an injected fault (\(rule))")
            return .failed
        }
        let (fd, direct) = descriptor(for: range, sync: forceUnitAccess)
        do throws(IOFailure) {
            if direct {
                try buffers.withBuffer(count: payload.count) {
                    buffer throws(IOFailure) in
                    payload.withUnsafeBytes { buffer.copyMemory(from: $0) }
                    try Posix.writeFully(fd, from: UnsafeRawBufferPointer(buffer), offsetBytes: range.offsetBytes)
                }
            } else {
                try Posix.writeFully(fd, bytes: payload, offsetBytes: range.offsetBytes)
            }
            return .written
        } catch {
            log("\(path): local I/O error: \(forceUnitAccess ? "FUA " : "")write of \(range) failed: \(error)")
            return .failed
        }
    }

    func read(range: BlockRange) -> LocalIOResult {
        if let problem = problem(range) {
            log("\(path): read of \(describe(range)) refused: \(problem)")
            return .failed
        }
        if let rule = faults.matchingRule(.reads, range.offsetBytes..<range.endBytes) {
            log("\(path): read of \(range) failed by an injected fault (\(rule))")
            return .failed
        }
        let (fd, direct) = descriptor(for: range, sync: false)
        let count = Int(range.sizeBytes)
        do throws(IOFailure) {
            guard direct else { return .read(try Posix.readFully(fd, count: count, offsetBytes: range.offsetBytes)) }
            let data = try buffers.withBuffer(count: count) {
                buffer throws(IOFailure) in
                try Posix.readFully(fd, into: buffer, offsetBytes: range.offsetBytes)
                return [UInt8](UnsafeRawBufferPointer(buffer))
            }
            return .read(data)
        } catch {
            log("\(path): local I/O error: read of \(range) failed: \(error)")
            return .failed
        }
    }

    /// Makes the range read as zeroes: a punched hole in a file, BLKZEROOUT on a block device, or written zeroes
    /// where neither is supported. With FUA the result is on stable storage before it completes.
    func zero(range: BlockRange, isBlockDevice: Bool, forceUnitAccess: Bool) -> LocalIOResult {
        if let problem = problem(range) {
            log("\(path): zeroing of \(describe(range)) refused: \(problem)")
            return .failed
        }
        if let rule = faults.matchingRule(.writes, range.offsetBytes..<range.endBytes) {
            log("\(path): zeroing of \(range) failed by an injected fault (\(rule))")
            return .failed
        }
        let status = ctandem_zero_range(
            descriptors.primary, isBlockDevice ? 1 : 0, range.offsetBytes, UInt64(range.sizeBytes))
        if status == EOPNOTSUPP {
            return write(range: range, payload: [UInt8](repeating: 0, count: Int(range.sizeBytes)), forceUnitAccess: forceUnitAccess)
        }
        guard status == 0 else {
            log("\(path): local I/O error: zeroing of \(range) failed: \(errnoDescription(status))")
            return .failed
        }
        return forceUnitAccess && flush() != .flushed ? .failed : .written
    }

    func flush() -> LocalIOResult {
        if faults.failFlushes {
            log("\(path): flush failed by an injected fault")
            return .failed
        }
        do throws(IOFailure) {
            try Posix.syncData(descriptors.primary, what: path)
            return .flushed
        } catch {
            log("\(path): local I/O error: \(error)")
            return .failed
        }
    }
}

/// "4096 bytes at offset 8192", or in sectors when the offset does not fit 64 bits (a corrupt request must not trap
/// while its refusal is being logged, as `BlockRange.description` would).
func describe(_ range: BlockRange) -> String {
    let (offsetBytes, overflow) = range.sector.multipliedReportingOverflow(by: 512)
    return overflow
        ? "\(range.sizeBytes) bytes at sector \(range.sector)" : "\(range.sizeBytes) bytes at offset \(offsetBytes)"
}
