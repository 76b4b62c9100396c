#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// Aligned I/O buffers allocated, and touched, once when the device is opened, for direct I/O's bounce copies.
///
/// Why: the daemon serving a block device is on the path that frees memory (the kernel's writeback of the file
/// system above the device reaches it through FUSE). If it needs fresh memory to carry out a write, and memory is what
/// is short, reclaim can wait on the very write the daemon is trying to do. PR_SET_IO_FLUSHER keeps the daemon's own
/// allocations from recursing into I/O, and mlockall keeps what it has resident; buffers taken from here mean the
/// largest allocation of a request (up to a whole request, 1 MiB) is not made at all. Touching every page at creation
/// makes them resident (and locked, under mlockall's MCL_ONFAULT) before they are needed.
///
/// When all buffers are in use a buffer is allocated for the request, as before, and counted in `overflows`: the
/// pool is sized for the requests that can be at the disk at once (the I/O threads plus helper threads), so an
/// overflow means a burst beyond that, not an error.
final class AlignedBufferPool: Sendable {
    static let bytesMaximum = 256 << 20

    let bufferBytes: Int
    let alignmentBytes: Int
    /// Addresses of the free buffers. Stored as integers: raw pointers are not Sendable, and the buffers are owned
    /// by the pool for its whole life (freed in deinit, when no request can hold one any more).
    private let freeBuffers: Mutex<[Int]>
    private let all: [Int]
    private let overflowCount = Atomic<UInt64>(0)

    /// `count` buffers of `bufferBytes` bytes at `alignmentBytes` (a power of two, at least a pointer's size).
    /// Fails when the memory cannot be had: a daemon that cannot get it at open will not get it under pressure.
    init(count: Int, bufferBytes: Int, alignmentBytes: Int) throws(IOFailure) {
        precondition(
            count >= 0 && bufferBytes > 0 && count * bufferBytes <= Self.bytesMaximum
                && alignmentBytes >= MemoryLayout<Int>.size && alignmentBytes & (alignmentBytes - 1) == 0,
            "buffer pool of \(count) x \(bufferBytes) bytes at alignment \(alignmentBytes)")
        self.bufferBytes = bufferBytes
        self.alignmentBytes = alignmentBytes
        var addresses: [Int] = []
        for _ in 0..<count {
            var pointer: UnsafeMutableRawPointer?
            let result = posix_memalign(&pointer, alignmentBytes, bufferBytes)
            guard result == 0, let pointer else {
                for address in addresses { free(UnsafeMutableRawPointer(bitPattern: address)) }
                throw IOFailure(
                    "cannot allocate \(count) I/O buffers of \(bufferBytes) bytes", errno: result == 0 ? ENOMEM : result)
            }
            memset(pointer, 0, bufferBytes)
            addresses.append(Int(bitPattern: pointer))
        }
        all = addresses
        freeBuffers = Mutex(addresses)
    }

    deinit {
        for address in all { free(UnsafeMutableRawPointer(bitPattern: address)) }
    }

    /// Requests that found every buffer in use (or needed more than `bufferBytes`) and allocated their own.
    var overflows: UInt64 { overflowCount.load(ordering: .relaxed) }

    /// Calls `body` with `count` bytes of aligned memory: a pooled buffer when one is free and large enough.
    func withBuffer<Result>(
        count: Int, _ body: (UnsafeMutableRawBufferPointer) throws(IOFailure) -> Result
    ) throws(IOFailure) -> Result {
        let taken: Int? = count <= bufferBytes ? freeBuffers.withLock { $0.popLast() } : nil
        guard let taken else {
            overflowCount.add(1, ordering: .relaxed)
            return try Posix.withAlignedBuffer(count: count, alignment: alignmentBytes, body)
        }
        defer { freeBuffers.withLock { $0.append(taken) } }
        return try body(UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: taken), count: count))
    }
}
