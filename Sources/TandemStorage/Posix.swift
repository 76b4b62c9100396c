#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage

/// A failed system call inside the I/O paths: the errno when there is one, and what was being done. The public
/// surfaces turn it into `StorageError` (metadata, open) or `LocalIOResult.failed` plus a log line (data I/O).
struct IOFailure: Error, Sendable, CustomStringConvertible {
    var errnoValue: Int32?
    var detail: String

    init(_ detail: String, errno errnoValue: Int32?) {
        self.detail = detail
        self.errnoValue = errnoValue
    }

    var description: String {
        guard let errnoValue else { return detail }
        return "\(detail): \(errnoDescription(errnoValue))"
    }

    func storageError(_ code: StorageError.Code, _ advice: String) -> StorageError {
        StorageError(code, "\(detail). \(advice)", cause: errnoValue.map { .errno($0) })
    }
}

/// Thin wrappers over the system calls the stores use. They retry what must be retried (EINTR, short transfers)
/// and report everything else; none of them keeps state.
enum Posix {
    /// The most EINTRs (or zero-byte writes) in a row before a call is given up on. A signal storm that long means
    /// something else is wrong; looping forever would hide it.
    static let retriesMaximum = 1000
    static let fileTypeMask: mode_t = 0o170000
    static let regularFileType: mode_t = 0o100000
    static let blockDeviceType: mode_t = 0o060000

    static var directFlag: Int32 { ctandem_o_direct() }

    /// open(2), retried on EINTR. Returns the descriptor or throws with the errno.
    static func open(_ path: String, flags: Int32, mode: mode_t = 0o600) throws(IOFailure) -> Int32 {
        for _ in 0..<retriesMaximum {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno != EINTR { throw IOFailure("cannot open \(path)", errno: errno) }
        }
        throw IOFailure("cannot open \(path): interrupted \(retriesMaximum) times", errno: EINTR)
    }

    static func close(_ fd: Int32) {
        // Linux releases the descriptor even when close fails (EINTR included), so it must not be retried; errors
        // from writes were already reported by fdatasync, which every durable path calls before this.
        _ = Glibc.close(fd)
    }

    /// Reads exactly `buffer.count` bytes at `offsetBytes`, retrying short reads and EINTR. Reaching the end of the
    /// file first is an error: every caller reads inside a size it checked.
    static func readFully(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offsetBytes: UInt64)
        throws(IOFailure)
    {
        var done = 0
        var interruptions = 0
        while done < buffer.count {
            let result = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offsetBytes) + off_t(done))
            if result > 0 {
                done += result
            } else if result == 0 {
                throw IOFailure(
                    "unexpected end of file at offset \(offsetBytes + UInt64(done)) (read \(done) of "
                        + "\(buffer.count) bytes)", errno: nil)
            } else if errno == EINTR, interruptions < retriesMaximum {
                interruptions += 1
            } else {
                throw IOFailure(
                    "read of \(buffer.count) bytes at offset \(offsetBytes) failed after \(done) bytes", errno: errno)
            }
        }
    }

    /// Writes exactly `buffer.count` bytes at `offsetBytes`, retrying short writes and EINTR.
    static func writeFully(_ fd: Int32, from buffer: UnsafeRawBufferPointer, offsetBytes: UInt64) throws(IOFailure) {
        var done = 0
        var stalls = 0
        while done < buffer.count {
            let result = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offsetBytes) + off_t(done))
            if result > 0 {
                done += result
            } else if (result == 0 || errno == EINTR) && stalls < retriesMaximum {
                stalls += 1
            } else {
                throw IOFailure(
                    "write of \(buffer.count) bytes at offset \(offsetBytes) failed after \(done) bytes",
                    errno: result == 0 ? EIO : errno)
            }
        }
    }

    /// `writeFully` from an array. (Array's `withUnsafeBytes` rethrows untyped errors, hence the detour.)
    static func writeFully(_ fd: Int32, bytes: [UInt8], offsetBytes: UInt64) throws(IOFailure) {
        let failure: IOFailure? = bytes.withUnsafeBytes { buffer in
            do throws(IOFailure) {
                try writeFully(fd, from: buffer, offsetBytes: offsetBytes)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    /// `readFully` into a new array of `count` bytes.
    static func readFully(_ fd: Int32, count: Int, offsetBytes: UInt64) throws(IOFailure) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let failure: IOFailure? = bytes.withUnsafeMutableBytes { buffer in
            do throws(IOFailure) {
                try readFully(fd, into: buffer, offsetBytes: offsetBytes)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
        return bytes
    }

    /// fdatasync(2), retried on EINTR only. After an EIO the kernel may already have dropped the dirty pages and
    /// cleared the error, so a retry that succeeds proves nothing (the "fsyncgate" lesson): the failure is final.
    static func syncData(_ fd: Int32, what: String) throws(IOFailure) {
        for _ in 0..<retriesMaximum {
            if fdatasync(fd) == 0 { return }
            if errno != EINTR { throw IOFailure("flush of \(what) failed", errno: errno) }
        }
        throw IOFailure("flush of \(what) interrupted \(retriesMaximum) times", errno: EINTR)
    }

    /// fsync(2) of a directory, so that a file created or renamed in it survives a crash.
    static func syncDirectory(_ path: String) throws(IOFailure) {
        let fd = try open(path, flags: O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        for _ in 0..<retriesMaximum {
            if fsync(fd) == 0 { return }
            if errno != EINTR { throw IOFailure("flush of directory \(path) failed", errno: errno) }
        }
        throw IOFailure("flush of directory \(path) interrupted \(retriesMaximum) times", errno: EINTR)
    }

    /// What kind of file `fd` is and how large: a regular file's size, or a block device's (BLKGETSIZE64).
    static func sizeBytes(_ fd: Int32, path: String) throws(StorageError) -> (sizeBytes: UInt64, isBlockDevice: Bool) {
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            throw StorageError(.unsupportedDevice, "cannot stat \(path)", cause: .errno(errno))
        }
        switch status.st_mode & fileTypeMask {
        case regularFileType:
            return (UInt64(status.st_size), false)
        case blockDeviceType:
            var size: UInt64 = 0
            let result = ctandem_block_device_size(fd, &size)
            guard result == 0 else {
                throw StorageError(
                    .unsupportedDevice, "cannot read the size of block device \(path) (BLKGETSIZE64)",
                    cause: .errno(result))
            }
            return (size, true)
        default:
            throw StorageError(
                .unsupportedDevice,
                "\(path) is neither a regular file nor a block device; point the configuration at a disk, a "
                    + "partition, a logical volume or a preallocated file")
        }
    }

    /// Runs `body` over an uninitialised buffer of `count` bytes aligned to `alignment` (a power of two, at least
    /// the pointer size), as direct I/O needs; every caller fills the whole buffer (a payload copy or a full read),
    /// so zeroing it first would only cost memory bandwidth on each request. posix_memalign, because Swift's
    /// allocator makes no alignment promise that direct I/O can rely on.
    static func withAlignedBuffer<Result>(
        count: Int, alignment: Int, _ body: (UnsafeMutableRawBufferPointer) throws(IOFailure) -> Result
    ) throws(IOFailure) -> Result {
        precondition(
            count >= 0 && alignment >= MemoryLayout<Int>.size && alignment & (alignment - 1) == 0,
            "aligned buffer of \(count) bytes at alignment \(alignment)")
        var pointer: UnsafeMutableRawPointer?
        let result = posix_memalign(&pointer, alignment, max(count, 1))
        guard result == 0, let pointer else {
            throw IOFailure("cannot allocate an I/O buffer of \(count) bytes", errno: result == 0 ? ENOMEM : result)
        }
        defer { free(pointer) }
        return try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    /// Free bytes for an unprivileged writer in the file system holding `path` (statvfs f_bavail * f_frsize).
    static func freeBytes(_ path: String) throws(StorageError) -> UInt64 {
        var status = statvfs()
        guard statvfs(path, &status) == 0 else {
            throw StorageError(.ioFailed, "cannot read the free space of \(path) (statvfs)", cause: .errno(errno))
        }
        return UInt64(status.f_bavail).multipliedReportingOverflow(by: UInt64(status.f_frsize)).partialValue
    }
}
