#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ReplicationCore

extension FileMetadataStore {
    /// Copies the data of `blocks` (4 KiB block ranges of the data device, as the bitmap numbers them) into a new
    /// preserved-blocks file (`PreservedBlocksHeader`) under `configuration.preserveDirectory`, and returns its path.
    ///
    /// Durable when it returns: the file is written under a temporary name, fsynced, renamed to
    /// `<UTC time>.preserved` and the directory fsynced, so a crash leaves either the whole file or none under a
    /// `.preserved` name.
    ///
    /// Limits: the ranges are sorted and merged; more than `PreservedBlocksHeader.rangesMaximum` ranges are merged
    /// across their smallest gaps (copying a few blocks more rather than failing); the total is therefore at most
    /// the data size. Refuses with `noSpace` before writing anything when the file system lacks room for the file,
    /// and with `invalidArgument` for a range beyond the data. A refusal makes the machine treat the disk as failed,
    /// which is better than overwriting data nobody kept.
    public func preserve(blocks: [Range<UInt64>], reason: String) throws(StorageError) -> String {
        let loaded = try requireLoaded()
        let dataBytes = loaded.layout.usableDataBytes
        let byteRanges = try Self.preservedRanges(blocks, dataBytes: dataBytes)
        let header = PreservedBlocksHeader(
            resourceName: String(configuration.resourceName.utf8.prefix(PreservedBlocksHeader.resourceNameBytesMaximum))
                ?? "?",
            reason: String(reason.utf8.prefix(PreservedBlocksHeader.textBytesMaximum)) ?? "?",
            sourcePath: configuration.dataPath, createdAtNanoseconds: environment.wallClockNanoseconds(),
            deviceSizeBytes: dataBytes,
            ranges: byteRanges.map { .init(offsetBytes: $0.lowerBound, lengthBytes: $0.upperBound - $0.lowerBound, checksum: 0) })
        let directory = configuration.preserveDirectory
        try Self.makeDirectories(directory)
        let neededBytes = header.dataOffsetBytes + header.totalDataBytes
        let freeBytes = try environment.freeBytes(directory)
        guard neededBytes <= freeBytes else {
            throw StorageError(
                .noSpace,
                "preserving \(header.totalDataBytes) bytes of diverged data needs \(neededBytes) bytes in "
                    + "\(directory), which has \(freeBytes) bytes free. Nothing was discarded; the disk is treated "
                    + "as failed. Free space there (or point the preserve directory elsewhere), then attach and "
                    + "connect again")
        }
        let finalPath = try uniquePath(in: directory, nanoseconds: header.createdAtNanoseconds)
        let temporaryPath = "\(directory)/.\(finalPath.split(separator: "/").last!).partial"
        try writePreservedFile(header, to: temporaryPath)
        guard rename(temporaryPath, finalPath) == 0 else {
            let code = errno
            unlink(temporaryPath)
            throw StorageError(.ioFailed, "cannot rename \(temporaryPath) to \(finalPath)", cause: .errno(code))
        }
        do {
            try Posix.syncDirectory(directory)
        } catch {
            throw error.storageError(.ioFailed, "\(finalPath) was written but its directory entry may not be durable")
        }
        environment.log(
            "\(configuration.resourceName): preserved \(header.totalDataBytes) bytes of diverged data in "
                + "\(header.ranges.count) ranges to \(finalPath) (\(reason))")
        return finalPath
    }

    /// Block ranges -> sorted, merged byte ranges, at most `rangesMaximum` of them.
    static func preservedRanges(_ blocks: [Range<UInt64>], dataBytes: UInt64) throws(StorageError) -> [Range<UInt64>] {
        let blockCount = dataBytes / SyncBitmap.blockBytes
        var merged: [Range<UInt64>] = []
        for block in blocks.sorted(by: { $0.lowerBound < $1.lowerBound }) where !block.isEmpty {
            guard block.upperBound <= blockCount else {
                throw StorageError(
                    .invalidArgument,
                    "blocks \(block) lie beyond the \(blockCount) blocks of data; nothing was preserved")
            }
            if let last = merged.last, block.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, block.upperBound)
            } else {
                merged.append(block)
            }
        }
        if merged.count > PreservedBlocksHeader.rangesMaximum {
            // Close the smallest gaps: the (excess)-th smallest gap is the threshold.
            var gaps = zip(merged, merged.dropFirst()).map { $1.lowerBound - $0.upperBound }
            gaps.sort()
            let threshold = gaps[merged.count - PreservedBlocksHeader.rangesMaximum - 1]
            var coalesced: [Range<UInt64>] = [merged[0]]
            for range in merged.dropFirst() {
                let last = coalesced[coalesced.count - 1]
                if range.lowerBound - last.upperBound <= threshold {
                    coalesced[coalesced.count - 1] = last.lowerBound..<range.upperBound
                } else {
                    coalesced.append(range)
                }
            }
            merged = coalesced
        }
        let blockBytes = SyncBitmap.blockBytes
        return merged.map { ($0.lowerBound * blockBytes)..<($0.upperBound * blockBytes) }
    }

    /// Writes data then header to a new file and fsyncs it; removes it on failure.
    func writePreservedFile(_ draft: PreservedBlocksHeader, to path: String) throws(StorageError) {
        let fd: Int32
        do {
            fd = try Posix.open(path, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        } catch {
            throw error.storageError(.ioFailed, "Cannot create the preserved-blocks file; check the directory")
        }
        do throws(StorageError) {
            var header = draft
            var fileOffset = header.dataOffsetBytes
            for index in header.ranges.indices {
                header.ranges[index].checksum = try copyRange(header.ranges[index], to: fd, at: fileOffset, path: path)
                fileOffset += header.ranges[index].lengthBytes
            }
            do throws(IOFailure) {
                try Posix.writeFully(fd, bytes: header.encoded(), offsetBytes: 0)
                try Posix.syncData(fd, what: path)
            } catch {
                throw error.storageError(.ioFailed, "Writing the preserved-blocks file \(path) failed")
            }
            Posix.close(fd)
        } catch {
            Posix.close(fd)
            unlink(path)
            throw error
        }
    }

    /// Copies one range from the data device into the file, a chunk at a time; returns its CRC-32C.
    func copyRange(_ range: PreservedBlocksHeader.Range, to fd: Int32, at fileOffset: UInt64, path: String)
        throws(StorageError) -> UInt32
    {
        var crc = CRC32C()
        var done: UInt64 = 0
        while done < range.lengthBytes {
            let count = Int(min(UInt64(Self.chunkBytes), range.lengthBytes - done))
            do throws(IOFailure) {
                let bytes = try Posix.readFully(dataFD, count: count, offsetBytes: range.offsetBytes + done)
                crc.update(bytes)
                try Posix.writeFully(fd, bytes: bytes, offsetBytes: fileOffset + done)
            } catch {
                throw error.storageError(
                    .ioFailed, "Copying diverged data from \(configuration.dataPath) to \(path) failed")
            }
            done += UInt64(count)
        }
        return crc.value
    }

    /// `<directory>/<yyyymmddThhmmss.nnnnnnnnnZ>.preserved`, with `-2`, `-3`... if that exists.
    func uniquePath(in directory: String, nanoseconds: Int64) throws(StorageError) -> String {
        let stem = "\(directory)/\(Self.utcTimestamp(nanoseconds: nanoseconds))"
        for attempt in 1...100 {
            let candidate = attempt == 1 ? "\(stem).preserved" : "\(stem)-\(attempt).preserved"
            if access(candidate, F_OK) != 0 { return candidate }
        }
        throw StorageError(.ioFailed, "100 preserved-blocks files named \(stem)* exist; clean up \(directory)")
    }

    /// For example "20250131T120000.123456789Z".
    static func utcTimestamp(nanoseconds: Int64) -> String {
        var seconds = time_t(nanoseconds / 1_000_000_000)
        var fields = tm()
        gmtime_r(&seconds, &fields)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let fraction = pad(Int32(nanoseconds % 1_000_000_000), 9)
        return pad(fields.tm_year + 1900, 4) + pad(fields.tm_mon + 1, 2) + pad(fields.tm_mday, 2) + "T"
            + pad(fields.tm_hour, 2) + pad(fields.tm_min, 2) + pad(fields.tm_sec, 2) + ".\(fraction)Z"
    }

    /// mkdir -p with mode 0700 (diverged data may be confidential), fsyncing the parent of each directory created.
    static func makeDirectories(_ path: String) throws(StorageError) {
        guard path.hasPrefix("/") else {
            throw StorageError(.invalidArgument, "the preserve directory \(path) must be an absolute path")
        }
        var current = ""
        for component in path.split(separator: "/") {
            let parent = current.isEmpty ? "/" : current
            current += "/\(component)"
            if mkdir(current, 0o700) == 0 {
                do {
                    try Posix.syncDirectory(parent)
                } catch {
                    throw error.storageError(.ioFailed, "Cannot make the new directory \(current) durable")
                }
            } else if errno != EEXIST {
                throw StorageError(
                    .ioFailed, "cannot create the preserve directory \(current); check permissions",
                    cause: .errno(errno))
            }
        }
    }
}
