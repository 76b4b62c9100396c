#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CTandemStorage
import Foundation

/// Why a loop device could not be attached or detached.
public struct LoopError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The loop driver or /dev/loop-control is missing, or we lack the privilege.
        case unavailable
        /// The kernel would only give buffered I/O, and direct I/O was required.
        case noDirectIO
        /// The device is still open or mounted somewhere; it stays attached.
        case busy
        case failed
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// A loop device (/dev/loopN) over a file, attached and detached through the kernel's ioctls, its state read back
/// from /sys/block/loopN. The loop keeps its own reference to the file, so it outlives any descriptor we hold.
public struct LoopDevice: Sendable, Hashable, CustomStringConvertible {
    public let number: Int32

    public init(number: Int32) { self.number = number }

    public var path: String { "/dev/loop\(number)" }
    public var description: String { path }
    var sysfsDirectory: String { "/sys/block/loop\(number)" }

    /// "MAJOR:MINOR", as mountinfo names the devices mounted from it.
    public var deviceNumber: String? { Self.readLine("\(sysfsDirectory)/dev") }

    /// The file behind the device as the kernel reports it, or nil when nothing is attached.
    public var backingFile: String? { Self.readLine("\(sysfsDirectory)/loop/backing_file") }

    /// Whether the kernel does direct I/O to the backing file (it silently falls back to buffered I/O when the file
    /// does not support it).
    public var usesDirectIO: Bool { Self.readLine("\(sysfsDirectory)/loop/dio") == "1" }

    /// Whether the device will detach itself when last closed (a detach asked for while it was in use).
    public var detachesOnLastClose: Bool { Self.readLine("\(sysfsDirectory)/loop/autoclear") == "1" }

    /// Attaches `filePath` to a free loop device with direct I/O. Refuses (and detaches again) when the kernel falls
    /// back to buffered I/O and `requireDirectIO` is set: buffered loop over FUSE caches every block twice and can
    /// deadlock under memory pressure (writeback that needs the FUSE server).
    ///
    /// `tag` (at most 63 bytes) is recorded in the device's status: `attached(taggedWith:)` finds the device by it
    /// even after the file's mount is gone from every namespace, when sysfs no longer shows the file's full path.
    public static func attach(filePath: String, tag: String, requireDirectIO: Bool = true) throws(LoopError) -> LoopDevice {
        precondition(tag.utf8.count < 64 && !tag.isEmpty, "loop tag \(tag) must be 1...63 bytes")
        let fd = open(filePath, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            throw LoopError(.failed, "cannot open \(filePath) for the loop device: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var number: Int32 = -1
        let result = ctandem_loop_attach(fd, 1, tag, &number)
        guard result == 0 else {
            let reason = String(cString: strerror(result))
            switch result {
            case ENOENT, ENODEV, ENXIO:
                throw LoopError(.unavailable, "no loop devices (/dev/loop-control: \(reason)); load the loop module")
            case EACCES, EPERM:
                throw LoopError(.unavailable, "attaching a loop device needs root (\(reason))")
            default:
                throw LoopError(.failed, "cannot attach \(filePath) to a loop device: \(reason)")
            }
        }
        let device = LoopDevice(number: number)
        if requireDirectIO && !device.usesDirectIO {
            try? device.detach()
            throw LoopError(
                .noDirectIO,
                "the kernel would not do direct I/O from \(device.path) to \(filePath); a buffered loop is refused")
        }
        return device
    }

    /// Detaches the device and checks that it is really gone. When the device is still open or mounted somewhere,
    /// the kernel only marks it to detach on last close and reports success. After a short grace (a udev probe
    /// holds a new device for a moment), that mark is cleared again, since a device vanishing later under whoever
    /// holds it would be worse, and `busy` is thrown.
    public func detach() throws(LoopError) {
        // O_NONBLOCK: a plain open of a loop device whose FUSE server is gone fails with ENOTCONN (the block layer
        // touches the backing file), which would leave exactly the devices that most need detaching.
        let fd = ctandem_open_loop_node(number, O_RDWR | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ENOENT || errno == ENXIO { return }
            throw LoopError(.failed, "cannot open \(path) to detach it: \(String(cString: strerror(errno)))")
        }
        let result = ctandem_loop_detach(fd)
        // Our descriptor counts as a user too: if nobody else holds the device, closing it completes the detach.
        close(fd)
        if result == ENXIO { return }  // Nothing was attached.
        guard result == 0 else {
            throw LoopError(.failed, "cannot detach \(path): \(String(cString: strerror(result)))")
        }
        for _ in 0..<Self.detachGraceChecks {
            if backingFile == nil { return }
            usleep(10_000)
        }
        let again = ctandem_open_loop_node(number, O_RDWR | O_CLOEXEC | O_NONBLOCK)
        if again >= 0 {
            _ = ctandem_loop_clear_autoclear(again)
            close(again)
        }
        if backingFile == nil { return }  // The last holder let go just now.
        throw LoopError(.busy, "\(path) is still in use, so it stays attached")
    }

    /// How often (10 ms apart) a detach looks for the device to be gone before calling it busy.
    static let detachGraceChecks = 50

    /// What the device's status says about the tag recorded when it was attached.
    public enum RecordedTag: Sendable, Equatable {
        case tag(String)
        /// The status cannot be read because the backing file's FUSE server is gone (ENOTCONN): the kernel asks the
        /// file for its attributes first, and a dead FUSE connection answers only while its 60 s attribute cache
        /// lasts. The device is still attached; only its tag is hidden.
        case backingFileServerGone
        /// Nothing attached, no tag recorded, or the device cannot be opened.
        case none
    }

    public var recordedTag: RecordedTag {
        // A plain open: reading a tag (of every loop device, when looking for ours) must not make nodes for
        // devices that are not ours in a /dev without udev.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)  // See detach(): a dead backing file must not hide it.
        guard fd >= 0 else { return .none }
        defer { close(fd) }
        var name = [CChar](repeating: 0, count: 64)
        let status = ctandem_loop_recorded_name(fd, &name)
        if status == ENOTCONN { return .backingFileServerGone }
        guard status == 0 else { return .none }
        let tag = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return tag.isEmpty ? .none : .tag(tag)
    }

    /// The tag recorded when the device was attached, or nil when nothing is attached or it cannot be read.
    public var tag: String? {
        if case .tag(let tag) = recordedTag { return tag }
        return nil
    }

    /// The attached loop devices whose recorded tag is `tag`.
    public static func attached(taggedWith tag: String) -> [LoopDevice] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []
        return names.compactMap { name -> LoopDevice? in
            guard name.hasPrefix("loop"), let number = Int32(name.dropFirst(4)) else { return nil }
            let device = LoopDevice(number: number)
            return device.backingFile != nil && device.tag == tag ? device : nil
        }.sorted { $0.number < $1.number }
    }

    static func readLine(_ path: String) -> String? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let line = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return line.isEmpty ? nil : line
    }
}
