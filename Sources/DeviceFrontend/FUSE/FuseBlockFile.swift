#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CFuse
import CTandemStorage
import Synchronization

/// What the FUSE file asks of the device behind it. Each completion is called exactly once, from any thread, with
/// 0 or an errno value: FUSE's own currency, so nothing is translated twice.
public protocol BlockFileBackend: AnyObject, Sendable {
    func read(offset: UInt64, length: UInt32, completion: @escaping @Sendable (_ errno: Int32, _ data: [UInt8]) -> Void)
    func write(offset: UInt64, bytes: [UInt8], completion: @escaping @Sendable (_ errno: Int32) -> Void)
    /// Everything completed before is on stable storage when this completes: fsync(2) on the file, and the loop
    /// device's flushes, end here.
    func flush(completion: @escaping @Sendable (_ errno: Int32) -> Void)
    /// The range reads as zeroes afterwards (fallocate PUNCH_HOLE and ZERO_RANGE: the loop device's discard and
    /// write-zeroes).
    func zero(offset: UInt64, length: UInt32, completion: @escaping @Sendable (_ errno: Int32) -> Void)
}

/// Why the FUSE file could not be served.
public struct FuseError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One block device's data served as one regular file in a private FUSE mount (libfuse3, low-level API), for a
/// loop device to sit on. The mount holds exactly two inodes: the root directory and the file.
///
/// Requests are answered asynchronously: a libfuse worker hands the request to the backend, and the backend's
/// completion replies from whatever thread it runs on (fuse_reply_* is thread-safe). So no worker waits for a reply
/// (with replication, for the peer), and the kernel's `max_background` bounds the requests in flight. A backend may
/// still do blocking work on the worker before returning (replicad writes the local copy there), so the workers
/// also bound the requests at the disk from this file.
///
/// Durability: FSYNC and FLUSH both become a backend flush. The file must never answer them with ENOSYS: the
/// kernel would then remember fsync as unsupported and complete every later fsync without asking, silently.
public final class FuseBlockFileServer: Sendable {
    public struct Options: Sendable {
        public var mountpoint: String
        public var fileName: String
        public var sizeBytes: UInt64
        /// The largest request handed to the backend; larger reads and discards are split. Also the kernel's
        /// max_write.
        public var requestBytesMaximum: UInt32 = 1 << 20
        /// Requests the kernel keeps in flight (FUSE's max_background; the kernel default is 12).
        public var backgroundRequestsMaximum: UInt32 = 64
        /// libfuse worker threads. Each may process the resource and write to the disk itself (replicad), so they
        /// bound the requests at the disk from this file.
        public var workerThreadsMaximum: Int32 = 8
        /// How long the kernel caches the file's attributes and entry (its size changes only across a remount).
        /// While the cache lasts, a loop device on a file whose server died can still report its status.
        public var attributeCacheSeconds: Double = 60

        public init(mountpoint: String, fileName: String, sizeBytes: UInt64) {
            self.mountpoint = mountpoint
            self.fileName = fileName
            self.sizeBytes = sizeBytes
        }

        /// Sane bounds; the kernel caps max_background at 65535 and max_write at its max_pages.
        func problem() -> String? {
            if fileName.isEmpty || fileName.contains("/") || fileName == "." || fileName == ".." {
                return "file name \"\(fileName)\" must be a plain name"
            }
            if sizeBytes == 0 || sizeBytes % 512 != 0 { return "size \(sizeBytes) must be a positive multiple of 512" }
            if !(4096...(16 << 20)).contains(requestBytesMaximum) || requestBytesMaximum % 4096 != 0 {
                return "request size \(requestBytesMaximum) must be a multiple of 4096 from 4 KiB to 16 MiB"
            }
            if !(1...4096).contains(backgroundRequestsMaximum) { return "max_background must be 1...4096" }
            if !(1...256).contains(workerThreadsMaximum) { return "worker threads must be 1...256" }
            if !(0...3600).contains(attributeCacheSeconds) { return "the attribute cache must be 0...3600 seconds" }
            return nil
        }
    }

    public let options: Options
    let context: FuseFileContext
    private let session: FuseSession
    /// The kernel's number for this FUSE connection (the mount's minor device number): its control files are
    /// /sys/fs/fuse/connections/N.
    public let connectionID: UInt32
    private let loopThread = Mutex<pthread_t?>(nil)

    /// Mounts the file system (the mount point must exist and be an empty directory). Nothing is served until
    /// `start`.
    public init(options: Options, backend: any BlockFileBackend) throws(FuseError) {
        if let problem = options.problem() { throw FuseError("FUSE file options: \(problem)") }
        self.options = options
        self.context = FuseFileContext(options: options, backend: backend)
        var operations = FuseFileOperations.table
        let arguments = ["tandem", "-o", "fsname=tandem,subtype=tandem,default_permissions"]
        let userdata = Unmanaged.passUnretained(context).toOpaque()
        let session: OpaquePointer? = withCStringArray(arguments) { argc, argv in
            var fuseArguments = fuse_args(argc: argc, argv: argv, allocated: 0)
            return fuse_session_new(
                &fuseArguments, &operations, MemoryLayout<fuse_lowlevel_ops>.size, userdata)
        }
        guard let session else { throw FuseError("fuse_session_new failed (see the log for libfuse's reason)") }
        guard fuse_session_mount(session, options.mountpoint) == 0 else {
            fuse_session_destroy(session)
            throw FuseError(
                "cannot mount FUSE at \(options.mountpoint): is /dev/fuse there (modprobe fuse), are we root, and is the mount point an existing directory?")
        }
        // Not stat(2): the root's attributes would be asked of this server, which is not serving yet.
        guard let connectionID = Self.connectionID(mountpoint: options.mountpoint) else {
            fuse_session_unmount(session)
            fuse_session_destroy(session)
            throw FuseError("the FUSE mount at \(options.mountpoint) is not in /proc/self/mountinfo")
        }
        self.connectionID = connectionID
        self.session = FuseSession(raw: session)
    }

    static let controlDirectory = "/sys/fs/fuse/connections"

    /// The connection number of the newest mount at `mountpoint` if it is a FUSE mount: its minor device number.
    static func connectionID(mountpoint: String) -> UInt32? {
        guard let mount = MountTable.newestMount(at: mountpoint), mount.fileSystemType.hasPrefix("fuse") else {
            return nil
        }
        return mount.minor
    }

    /// Writes the fusectl abort switch of connection `connectionID`: every request, queued or being read, fails,
    /// and the workers' reads of /dev/fuse end with ENODEV. `stop` uses it, and so does the clearing of a mount left
    /// by a process that died. fusectl is not mounted everywhere; if it is not, it is mounted for this write and
    /// unmounted again, so that nothing is left behind (EBUSY from mount means another process has it mounted, and
    /// then it stays theirs).
    public static func abortConnection(_ connectionID: UInt32) {
        let mountedHere = mount("fusectl", controlDirectory, "fusectl", 0, nil) == 0
        defer { if mountedHere { umount2(controlDirectory, 0) } }
        let fd = open("\(controlDirectory)/\(connectionID)/abort", O_WRONLY)
        guard fd >= 0 else { return }  // Already gone: the kernel ended it (the mount was removed everywhere).
        _ = write(fd, "1", 1)
        close(fd)
    }

    /// The file's path inside the mount.
    public var filePath: String { options.mountpoint + "/" + options.fileName }

    /// fsync/flush requests the backend completed successfully (counted before the reply goes out, so a caller
    /// whose fsync returned sees it counted).
    public var flushesCompleted: UInt64 { context.flushesCompleted.load(ordering: .relaxed) }

    /// Starts serving on libfuse's worker threads.
    public func start() throws(FuseError) {
        try loopThread.withLock { thread throws(FuseError) in
            precondition(thread == nil, "FUSE server for \(options.mountpoint) started twice")
            let box = Unmanaged.passRetained(FuseLoopStart(session: session, workers: options.workerThreadsMaximum))
            var created = pthread_t()
            let status = pthread_create(&created, nil, { raw in
                let start = Unmanaged<FuseLoopStart>.fromOpaque(raw!).takeRetainedValue()
                start.run()
                return nil
            }, box.toOpaque())
            guard status == 0 else {
                box.release()
                throw FuseError("cannot start the FUSE loop thread: \(String(cString: strerror(status)))")
            }
            thread = created
        }
    }

    /// Ends the connection, waits for the workers and for the backend's outstanding replies, and unmounts.
    /// Idempotent. Whoever used the file (the loop device) must be gone: its requests fail from here on.
    ///
    /// The order matters. libfuse's unmount closes the /dev/fuse descriptor; a worker still reading it, or a reply
    /// still on its way from the backend, would then use a number the process may already have handed to someone
    /// else (an event loop's epoll descriptor, say). So the connection is aborted first (every worker's read ends,
    /// in every mount namespace holding a copy of the mount, which a plain unmount would not achieve), the workers
    /// are joined, and the replies are waited for, before the descriptor is closed.
    public func stop() {
        let thread = loopThread.withLock { thread -> pthread_t? in
            defer { thread = nil }
            return thread
        }
        guard !session.isDestroyed else { return }
        fuse_session_exit(session.raw)
        Self.abortConnection(connectionID)
        if let thread { pthread_join(thread, nil) }
        guard context.waitForBackendReplies(timeoutMilliseconds: Self.replyPatienceMilliseconds) else {
            // A backend that never answers: the session and its descriptor are left as they are (leaked) rather
            // than freed under a reply that may still come. The mount itself goes.
            unmountIfOurs()
            return
        }
        // The connection is aborted, so this only closes the descriptor; the mount is removed below.
        fuse_session_unmount(session.raw)
        unmountIfOurs()
        session.destroy()
    }

    /// How long `stop` waits for replies the backend still owes.
    static let replyPatienceMilliseconds = 60_000

    /// Removes the mount at the mount point if it is still this connection's (lazily: an aborted FUSE mount can
    /// still be some process's working directory).
    private func unmountIfOurs() {
        guard Self.connectionID(mountpoint: options.mountpoint) == connectionID else { return }
        umount2(options.mountpoint, Int32(MNT_DETACH))
    }

    deinit { stop() }
}

/// The session pointer, destroyed once. Unchecked: libfuse's session calls used from other threads
/// (fuse_session_exit, fuse_session_unmount while the loop runs) are the ones it documents for that purpose.
final class FuseSession: @unchecked Sendable {
    let raw: OpaquePointer
    private let destroyed = Mutex(false)

    init(raw: OpaquePointer) { self.raw = raw }

    var isDestroyed: Bool { destroyed.withLock { $0 } }

    func destroy() {
        let wasDestroyed = destroyed.withLock { destroyed in
            defer { destroyed = true }
            return destroyed
        }
        if !wasDestroyed { fuse_session_destroy(raw) }
    }
}

/// What the loop thread needs, passed through pthread_create's single pointer.
final class FuseLoopStart: Sendable {
    let session: FuseSession
    let workers: Int32

    init(session: FuseSession, workers: Int32) {
        self.session = session
        self.workers = workers
    }

    func run() {
        // libfuse's workers are started from this thread and inherit its name.
        ctandem_name_current_thread("tandem-fuse")
        let config = fuse_loop_cfg_create()
        defer { fuse_loop_cfg_destroy(config) }
        fuse_loop_cfg_set_max_threads(config, UInt32(workers))
        fuse_loop_cfg_set_clone_fd(config, 0)
        _ = fuse_session_loop_mt(session.raw, config)
    }
}

/// The state the C callbacks reach through `fuse_req_userdata`.
final class FuseFileContext: Sendable {
    static let rootInode: fuse_ino_t = 1
    static let fileInode: fuse_ino_t = 2

    let options: FuseBlockFileServer.Options
    let backend: any BlockFileBackend
    let flushesCompleted = Atomic<UInt64>(0)
    /// Requests handed to the backend and not answered yet: the session must outlive their replies.
    private let requestsAtBackend = Atomic<Int>(0)

    init(options: FuseBlockFileServer.Options, backend: any BlockFileBackend) {
        self.options = options
        self.backend = backend
    }

    /// Counts `request` as waiting on the backend until `FuseRequest.reply...` answers it.
    func handToBackend(_ request: fuse_req_t?) -> FuseRequest {
        requestsAtBackend.add(1, ordering: .acquiringAndReleasing)
        return FuseRequest(raw: request, context: self)
    }

    fileprivate func answeredByBackend() {
        let before = requestsAtBackend.subtract(1, ordering: .acquiringAndReleasing).oldValue
        precondition(before > 0, "a FUSE request was answered twice (\(before) at the backend)")
    }

    /// Whether every request handed to the backend has been answered within the time.
    func waitForBackendReplies(timeoutMilliseconds: Int) -> Bool {
        for _ in 0..<(timeoutMilliseconds / 10) {
            if requestsAtBackend.load(ordering: .acquiring) == 0 { return true }
            usleep(10_000)
        }
        return requestsAtBackend.load(ordering: .acquiring) == 0
    }

    static func of(_ request: fuse_req_t?) -> FuseFileContext {
        Unmanaged<FuseFileContext>.fromOpaque(fuse_req_userdata(request)!).takeUnretainedValue()
    }

    func attributes(_ inode: fuse_ino_t) -> stat? {
        var attributes = stat()
        attributes.st_ino = ino_t(inode)
        attributes.st_uid = getuid()
        attributes.st_gid = getgid()
        switch inode {
        case Self.rootInode:
            attributes.st_mode = S_IFDIR | 0o700
            attributes.st_nlink = 2
        case Self.fileInode:
            attributes.st_mode = S_IFREG | 0o600
            attributes.st_nlink = 1
            attributes.st_size = off_t(options.sizeBytes)
            attributes.st_blksize = 4096
            attributes.st_blocks = blkcnt_t(options.sizeBytes / 512)
        default:
            return nil
        }
        return attributes
    }
}

/// A FUSE request carried to the thread that answers it. Answered exactly once, through one of its reply methods;
/// one that went to the backend (it has a `context`) is then no longer counted as waiting there.
struct FuseRequest: @unchecked Sendable {
    let raw: fuse_req_t?
    /// Set for requests handed to the backend.
    var context: FuseFileContext? = nil

    func replyError(_ errno: Int32) {
        fuse_reply_err(raw, errno)
        context?.answeredByBackend()
    }

    func replyWrite(_ count: Int) {
        fuse_reply_write(raw, count)
        context?.answeredByBackend()
    }

    func replyData(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            _ = fuse_reply_buf(raw, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count)
        }
        context?.answeredByBackend()
    }
}

/// The low-level operation table. Every callback answers (at once, or later through the backend); an operation
/// the file does not support answers a definite error, never ENOSYS for fsync or flush.
enum FuseFileOperations {
    static var table: fuse_lowlevel_ops {
        var operations = fuse_lowlevel_ops()
        operations.`init` = { userdata, connection in
            guard let connection else { return }
            let context = Unmanaged<FuseFileContext>.fromOpaque(userdata!).takeUnretainedValue()
            // Loop's direct I/O arrives as asynchronous direct I/O; allow it a real queue depth.
            connection.pointee.max_background = context.options.backgroundRequestsMaximum
            connection.pointee.congestion_threshold = context.options.backgroundRequestsMaximum * 3 / 4
            connection.pointee.max_write = context.options.requestBytesMaximum
            if connection.pointee.capable & UInt32(FUSE_CAP_ASYNC_DIO) != 0 {
                connection.pointee.want |= UInt32(FUSE_CAP_ASYNC_DIO)
            }
        }
        operations.lookup = { request, parent, name in
            let context = FuseFileContext.of(request)
            guard parent == FuseFileContext.rootInode, let name, String(cString: name) == context.options.fileName,
                let attributes = context.attributes(FuseFileContext.fileInode)
            else { return FuseRequest(raw: request).replyError(ENOENT) }
            var entry = fuse_entry_param()
            entry.ino = FuseFileContext.fileInode
            entry.attr = attributes
            entry.attr_timeout = context.options.attributeCacheSeconds
            entry.entry_timeout = context.options.attributeCacheSeconds
            fuse_reply_entry(request, &entry)
        }
        operations.getattr = { request, inode, _ in
            let context = FuseFileContext.of(request)
            guard var attributes = context.attributes(inode) else { return FuseRequest(raw: request).replyError(ENOENT) }
            fuse_reply_attr(request, &attributes, context.options.attributeCacheSeconds)
        }
        operations.setattr = { request, inode, _, toSet, _ in
            let context = FuseFileContext.of(request)
            // The size is the device's: truncation would change what the loop device sees underneath a filesystem.
            if toSet & FUSE_SET_ATTR_SIZE != 0 { return FuseRequest(raw: request).replyError(EPERM) }
            guard var attributes = context.attributes(inode) else { return FuseRequest(raw: request).replyError(ENOENT) }
            fuse_reply_attr(request, &attributes, context.options.attributeCacheSeconds)
        }
        operations.open = { request, inode, info in
            guard inode == FuseFileContext.fileInode else {
                return FuseRequest(raw: request).replyError(inode == FuseFileContext.rootInode ? EISDIR : ENOENT)
            }
            // No page cache for the file: the loop device opens it O_DIRECT anyway, and any other reader must see
            // the device's data, not a copy cached before a failover.
            info?.pointee.direct_io = 1
            info?.pointee.keep_cache = 0
            fuse_reply_open(request, info)
        }
        operations.read = { request, inode, size, offset, _ in
            guard inode == FuseFileContext.fileInode, offset >= 0 else { return FuseRequest(raw: request).replyError(EINVAL) }
            let context = FuseFileContext.of(request)
            let start = UInt64(offset)
            guard start < context.options.sizeBytes else {
                _ = fuse_reply_buf(request, nil, 0)
                return
            }
            let end = min(start + UInt64(size), context.options.sizeBytes)
            FuseFileOperations.read(context, context.handToBackend(request), from: start, end: end, collected: [])
        }
        operations.write = { request, inode, buffer, size, offset, _ in
            let reply = FuseRequest(raw: request)
            guard inode == FuseFileContext.fileInode, offset >= 0, let buffer else { return reply.replyError(EINVAL) }
            let context = FuseFileContext.of(request)
            guard size <= Int(context.options.requestBytesMaximum) else { return reply.replyError(EINVAL) }
            guard UInt64(offset) + UInt64(size) <= context.options.sizeBytes else { return reply.replyError(ENOSPC) }
            // The buffer lives only as long as this callback.
            let bytes = [UInt8](UnsafeRawBufferPointer(start: buffer, count: size))
            let waiting = context.handToBackend(request)
            context.backend.write(offset: UInt64(offset), bytes: bytes) { errno in
                if errno == 0 { waiting.replyWrite(size) } else { waiting.replyError(errno) }
            }
        }
        operations.flush = { request, _, _ in FuseFileOperations.flush(request) }
        operations.fsync = { request, _, _, _ in FuseFileOperations.flush(request) }
        operations.release = { request, _, _ in fuse_reply_err(request, 0) }
        operations.fallocate = { request, inode, mode, offset, length, _ in
            let reply = FuseRequest(raw: request)
            guard inode == FuseFileContext.fileInode, offset >= 0, length > 0 else { return reply.replyError(EINVAL) }
            let context = FuseFileContext.of(request)
            let start = UInt64(offset)
            let size = context.options.sizeBytes
            // Growing the file would grow the device: only KEEP_SIZE requests may reach past the end, and they act
            // on the part inside it.
            guard start + UInt64(length) <= size || mode & FALLOC_FL_KEEP_SIZE != 0 else {
                return reply.replyError(EFBIG)
            }
            let end = min(start + UInt64(length), size)
            guard start < end else { return reply.replyError(0) }
            switch mode & ~FALLOC_FL_KEEP_SIZE {
            case 0:
                // Every byte of the device already exists.
                reply.replyError(0)
            case FALLOC_FL_PUNCH_HOLE where mode & FALLOC_FL_KEEP_SIZE != 0, FALLOC_FL_ZERO_RANGE:
                FuseFileOperations.zero(context, context.handToBackend(request), from: start, end: end)
            default:
                reply.replyError(EOPNOTSUPP)
            }
        }
        operations.opendir = { request, inode, info in
            guard inode == FuseFileContext.rootInode else { return FuseRequest(raw: request).replyError(ENOTDIR) }
            fuse_reply_open(request, info)
        }
        operations.readdir = { request, inode, size, offset, _ in
            guard inode == FuseFileContext.rootInode else { return FuseRequest(raw: request).replyError(ENOTDIR) }
            FuseFileOperations.listRoot(request, capacity: size, from: offset)
        }
        operations.releasedir = { request, _, _ in fuse_reply_err(request, 0) }
        operations.statfs = { request, _ in
            let context = FuseFileContext.of(request)
            var info = statvfs()
            info.f_bsize = 4096
            info.f_frsize = 4096
            info.f_blocks = fsblkcnt_t(context.options.sizeBytes / 4096)
            info.f_files = 2
            info.f_namemax = 255
            fuse_reply_statfs(request, &info)
        }
        return operations
    }

    static func flush(_ request: fuse_req_t?) {
        let context = FuseFileContext.of(request)
        let waiting = context.handToBackend(request)
        context.backend.flush { errno in
            if errno == 0 { context.flushesCompleted.add(1, ordering: .relaxed) }
            waiting.replyError(errno)
        }
    }

    /// Reads `[start, end)` in requests the backend accepts, one after another, and replies once.
    static func read(_ context: FuseFileContext, _ reply: FuseRequest, from start: UInt64, end: UInt64, collected: [UInt8]) {
        guard start < end else { return reply.replyData(collected) }
        let length = UInt32(min(end - start, UInt64(context.options.requestBytesMaximum)))
        context.backend.read(offset: start, length: length) { errno, data in
            guard errno == 0 else { return reply.replyError(errno) }
            guard data.count == Int(length) else { return reply.replyError(EIO) }
            read(context, reply, from: start + UInt64(length), end: end, collected: collected + data)
        }
    }

    /// Zeroes `[start, end)` in requests the backend accepts, one after another, and replies once.
    static func zero(_ context: FuseFileContext, _ reply: FuseRequest, from start: UInt64, end: UInt64) {
        guard start < end else { return reply.replyError(0) }
        let length = UInt32(min(end - start, UInt64(context.options.requestBytesMaximum)))
        context.backend.zero(offset: start, length: length) { errno in
            guard errno == 0 else { return reply.replyError(errno) }
            zero(context, reply, from: start + UInt64(length), end: end)
        }
    }

    /// ".", ".." and the file, from entry `offset` on, as many as fit.
    static func listRoot(_ request: fuse_req_t?, capacity: Int, from offset: off_t) {
        let context = FuseFileContext.of(request)
        let entries: [(String, fuse_ino_t, mode_t)] = [
            (".", FuseFileContext.rootInode, S_IFDIR), ("..", FuseFileContext.rootInode, S_IFDIR),
            (context.options.fileName, FuseFileContext.fileInode, S_IFREG),
        ]
        var buffer = [CChar](repeating: 0, count: capacity)
        var used = 0
        for index in Int(max(0, offset))..<entries.count {
            var attributes = stat()
            attributes.st_ino = ino_t(entries[index].1)
            attributes.st_mode = entries[index].2
            let needed = buffer.withUnsafeMutableBufferPointer { pointer in
                fuse_add_direntry(
                    request, pointer.baseAddress! + used, capacity - used, entries[index].0, &attributes, off_t(index + 1))
            }
            if needed > capacity - used { break }
            used += needed
        }
        buffer.withUnsafeBufferPointer { _ = fuse_reply_buf(request, $0.baseAddress, used) }
    }
}

/// Calls `body` with a C argv for `strings`, valid only during the call.
func withCStringArray<Result>(_ strings: [String], _ body: (Int32, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Result) -> Result {
    let copies = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    var argv = copies + [nil]
    return argv.withUnsafeMutableBufferPointer { body(Int32(strings.count), $0.baseAddress!) }
}
