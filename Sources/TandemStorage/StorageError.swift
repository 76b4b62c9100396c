#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ReplicationCore
import TandemDrivers

/// Why a storage operation failed, in words an operator can act on.
///
/// The struct style (an evolvable `code`, a `message`, an optional `cause`) follows SwiftNIO's `FileSystemError`:
/// callers branch on `code`, people read `message`, and the `cause` keeps the errno or the codec's error so that
/// nothing is lost when an error is wrapped.
public struct StorageError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The class of failure. New codes may be added; switch with a default.
    public enum Code: String, Sendable, Hashable {
        /// open(2) failed: a missing path, no permission, a busy device.
        case openFailed
        /// Direct I/O is required by configuration but the file system or device refuses it.
        case directIOUnsupported
        /// The path is neither a regular file nor a block device, or its size could not be read.
        case unsupportedDevice
        /// A read, write or flush failed (EIO, ENOSPC, an unexpected end of file).
        case ioFailed
        /// The device cannot hold the metadata (and the minimum amount of data).
        case deviceTooSmall
        /// create-md found valid (or damaged) Tandem metadata and was not told to overwrite it.
        case metadataExists
        /// No Tandem metadata where the configuration says it lives.
        case noMetadata
        /// The metadata is there but does not decode (checksum, magic, field checks).
        case metadataCorrupt
        /// The metadata decodes but describes another layout than the configuration and devices give.
        case layoutMismatch
        /// Not enough free space for a preserved-blocks file.
        case noSpace
        /// An argument outside what the store accepts (a fault range, a block range beyond the device).
        case invalidArgument
        /// A preserved-blocks file that does not decode or whose checksums do not match.
        case preservedFileCorrupt
        /// The store was closed.
        case closed
    }

    /// What lies underneath, when something does.
    public enum Cause: Sendable, Hashable, CustomStringConvertible {
        /// A system call's errno.
        case errno(Int32)
        /// A metadata codec's error.
        case metadata(MetadataError)

        public var description: String {
            switch self {
            case .errno(let value): errnoDescription(value)
            case .metadata(let error): error.description
            }
        }
    }

    public var code: Code
    /// What happened and what to do about it, e.g. "cannot open /dev/sdb1: ... Check that the device exists".
    public var message: String
    public var cause: Cause?

    public init(_ code: Code, _ message: String, cause: Cause? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// The errno, when the cause is one.
    public var errnoValue: Int32? {
        if case .errno(let value) = cause { return value }
        return nil
    }

    public var description: String {
        guard let cause else { return message }
        return "\(message) (cause: \(cause))"
    }

    /// The `MetadataStore` protocol's error type carries one string; the replication node logs it and treats the
    /// disk as failed.
    var metadataStoreError: MetadataStoreError { MetadataStoreError(description) }
}

/// For example "EIO (Input/output error)".
func errnoDescription(_ value: Int32) -> String {
    let names: [Int32: String] = [
        EIO: "EIO", ENOSPC: "ENOSPC", EINVAL: "EINVAL", ENOENT: "ENOENT", EACCES: "EACCES", EPERM: "EPERM",
        EBUSY: "EBUSY", EROFS: "EROFS", EDQUOT: "EDQUOT", EFBIG: "EFBIG", ENOTTY: "ENOTTY", EISDIR: "EISDIR",
        EBADF: "EBADF", ENXIO: "ENXIO", ENODEV: "ENODEV", EEXIST: "EEXIST", ENOTDIR: "ENOTDIR", EINTR: "EINTR",
    ]
    let text = String(cString: strerror(value))
    return "\(names[value] ?? "errno \(value)") (\(text))"
}
