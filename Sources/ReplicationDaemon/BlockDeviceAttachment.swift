#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DeviceFrontend
import Foundation
import ReplicationCore

/// Why a resource's block device could not be attached or detached.
struct BlockDeviceError: Error, Sendable, CustomStringConvertible {
    enum Code: Sendable {
        /// Someone holds the device (mounted, open); it stays as it is.
        case busy
        /// FUSE or loop devices are missing here, or a path is taken by something that is not ours.
        case unavailable
        case failed
    }

    var code: Code
    var message: String

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    var description: String { message }

    var controlResult: ControlResult { code == .busy ? .refused : .failed }
}

/// Where one resource's block device lives on this node.
public struct BlockDevicePaths: Sendable, Hashable {
    /// The private FUSE mount serving the device's data as one file: `<run-dir>/fuse/<resource>`.
    var fuseMountpoint: String
    /// The file's name inside the mount: the resource's name, so that `losetup -l` says whose it is.
    var fileName: String
    /// The links made to point at the loop device: drbd.conf's `device` (/dev/drbd0) and
    /// /dev/tandem/by-res/<resource>, each under the daemon's device-link root.
    var links: [String]
    /// Recorded in the loop device's status, to find it again after a replicad died: "tandem:" + a hash of the node,
    /// the backing disk, the run directory and the resource + ":" + as much of the resource's name as fits in the
    /// kernel's 63 bytes. Loop devices are global, and nodes of a lab (or of two labs) on one machine have the same
    /// run directory and resource names, each in its own mount namespace; the backing disk is what no two of them
    /// share, so no node ever takes another's device for its leftovers.
    var loopTag: String

    var filePath: String { fuseMountpoint + "/" + fileName }

    /// The loop tag of a node's resource (see `loopTag`): what finds the devices a replicad left behind.
    public static func loopTag(nodeName: String, backingDisk: String, runDirectory: String, resourceName: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        let identity = [nodeName, backingDisk, runDirectory, resourceName].map { Array($0.utf8) }.joined(separator: [0])
        for byte in identity {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        var tag = "tandem:" + String(hash, radix: 16) + ":"
        for character in resourceName where tag.utf8.count + character.utf8.count <= 63 { tag.append(character) }
        return tag
    }

    init(resourceName: String, devicePath: String, nodeName: String, backingDisk: String, runDirectory: String, linkRoot: String) {
        fuseMountpoint = runDirectory + "/fuse/" + resourceName
        fileName = resourceName
        let root = linkRoot.hasSuffix("/") ? String(linkRoot.dropLast()) : linkRoot
        links = [root + devicePath, root + "/dev/tandem/by-res/" + resourceName]
        loopTag = Self.loopTag(
            nodeName: nodeName, backingDisk: backingDisk, runDirectory: runDirectory, resourceName: resourceName)
    }
}

/// A Primary resource's block device: its data served as a file in a private FUSE mount, a loop device with direct
/// I/O on that file, and the configured device links pointing at the loop device. Attached by `primary`, detached
/// by `secondary` and `down`, which refuse while anyone holds it, as DRBD refuses to demote an open device.
///
/// All of it is blocking work (mounts, ioctls, opening a file the FUSE server must answer): call it from a
/// dedicated thread, never from an event loop or the cooperative pool.
final class BlockDeviceAttachment: Sendable {
    let paths: BlockDevicePaths
    let loop: LoopDevice
    /// The loop device's "MAJOR:MINOR", as mount tables name it.
    let deviceNumber: String
    private let fuse: FuseBlockFileServer

    private init(paths: BlockDevicePaths, loop: LoopDevice, deviceNumber: String, fuse: FuseBlockFileServer) {
        self.paths = paths
        self.loop = loop
        self.deviceNumber = deviceNumber
        self.fuse = fuse
    }

    /// fsync/flush requests the FUSE server completed.
    var flushesCompleted: UInt64 { fuse.flushesCompleted }

    /// Mounts the FUSE file, attaches a loop device to it and makes the links. Undoes what it did when a step fails.
    static func attach(
        paths: BlockDevicePaths, sizeBytes: UInt64, backend: any BlockFileBackend, requireDirectIO: Bool
    ) throws(BlockDeviceError) -> BlockDeviceAttachment {
        // What a replicad that died left behind was cleared at `up` (clearLeftovers).
        try checkLinksAreFree(paths)
        do {
            try FileManager.default.createDirectory(
                atPath: paths.fuseMountpoint, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw BlockDeviceError(.failed, "cannot create the FUSE mount point \(paths.fuseMountpoint): \(error)")
        }
        var options = FuseBlockFileServer.Options(
            mountpoint: paths.fuseMountpoint, fileName: paths.fileName, sizeBytes: sizeBytes)
        options.requestBytesMaximum = UInt32(ReplicationMachine.requestBytesMaximum)
        let fuse: FuseBlockFileServer
        do {
            fuse = try FuseBlockFileServer(options: options, backend: backend)
            try fuse.start()
        } catch {
            throw BlockDeviceError(.unavailable, "cannot serve the device through FUSE: \(error)")
        }
        let loop: LoopDevice
        do {
            loop = try LoopDevice.attach(filePath: paths.filePath, tag: paths.loopTag, requireDirectIO: requireDirectIO)
        } catch {
            fuse.stop()
            throw BlockDeviceError(error.code == .failed ? .failed : .unavailable, error.message)
        }
        guard let deviceNumber = loop.deviceNumber else {
            try? loop.detach()
            fuse.stop()
            throw BlockDeviceError(.failed, "\(loop.path) has no device number in sysfs")
        }
        let attachment = BlockDeviceAttachment(paths: paths, loop: loop, deviceNumber: deviceNumber, fuse: fuse)
        do {
            try attachment.makeLinks()
        } catch {
            attachment.removeLinks()
            try? loop.detach()
            fuse.stop()
            throw error
        }
        return attachment
    }

    /// Everyone holding the loop device, in every mount namespace.
    func holders() -> [DeviceHolder] {
        DeviceHolders.find(devicePath: loop.path, deviceNumber: deviceNumber)
    }

    /// Detaches the loop device (checking it is really gone), stops the FUSE server and removes the links.
    /// Refuses with `busy`, naming the holders, while anyone holds the device; nothing changes then.
    func detach(resourceName: String) throws(BlockDeviceError) {
        let holders = holders()
        guard holders.isEmpty else { throw Self.busy(resourceName, loop, holders) }
        do {
            try loop.detach()
        } catch where error.code == .busy {
            // Someone opened it between the look and the detach.
            throw Self.busy(resourceName, loop, self.holders())
        } catch {
            throw BlockDeviceError(.failed, "\(resourceName): \(error.message)")
        }
        removeLinks()
        fuse.stop()
    }

    /// For a daemon that is going away: detaches what it can and stops serving in any case. A device still held
    /// then fails its I/O (EIO) until the next `up` clears it.
    func forceDetach() {
        try? loop.detach()
        removeLinks()
        fuse.stop()
    }

    static func busy(_ resourceName: String, _ loop: LoopDevice, _ holders: [DeviceHolder]) -> BlockDeviceError {
        let who = holders.isEmpty ? "a process that has it open" : holders.map(\.description).joined(separator: "; ")
        return BlockDeviceError(.busy, "\(resourceName): the device \(loop.path) is in use: \(who); unmount or close it first")
    }

    // MARK: Leftovers of a daemon that died

    /// Clears what a replicad that died left of this resource's device: loop devices still attached to the FUSE
    /// file (refused, naming the holders, while one is still mounted or open), the dead FUSE mount, and links to
    /// loop devices. Nothing to clear is the normal case. Returns the loop devices it detached.
    @discardableResult
    static func clearLeftovers(_ paths: BlockDevicePaths) throws(BlockDeviceError) -> [LoopDevice] {
        var stale = LoopDevice.attached(taggedWith: paths.loopTag)
        // A device whose FUSE server died long ago hides its tag; the links it left still name it.
        for device in paths.links.compactMap(linkedLoopDevice)
        where !stale.contains(where: { $0.number == device.number }) && isOurs(device, paths) {
            stale.append(device)
        }
        for loop in stale {
            if let number = loop.deviceNumber {
                let holders = DeviceHolders.find(devicePath: loop.path, deviceNumber: number)
                guard holders.isEmpty else {
                    throw BlockDeviceError(
                        .busy,
                        "\(loop.path) is left over from a replicad that stopped, and still in use: "
                            + "\(holders.map(\.description).joined(separator: "; ")); unmount or close it first")
                }
            }
            do {
                try loop.detach()
            } catch {
                throw BlockDeviceError(.busy, "cannot clear \(loop.path), left over from a replicad that stopped: \(error)")
            }
        }
        // Bounded: a mount point can hold a stack of mounts, never an endless one.
        for _ in 0..<8 {
            guard let mount = MountTable.newestMount(at: paths.fuseMountpoint), mount.fileSystemType.hasPrefix("fuse")
            else { break }
            if let connection = mount.minor { FuseBlockFileServer.abortConnection(connection) }
            guard umount2(paths.fuseMountpoint, Int32(MNT_DETACH)) == 0 else {
                throw BlockDeviceError(
                    .failed, "cannot unmount the stale FUSE mount at \(paths.fuseMountpoint): \(String(cString: strerror(errno)))")
            }
        }
        for link in paths.links where Self.isReplaceable(link: link, paths: paths) { unlink(link) }
        return stale
    }

    // MARK: Links

    /// Every link path must be free or replaceable.
    static func checkLinksAreFree(_ paths: BlockDevicePaths) throws(BlockDeviceError) {
        for link in paths.links {
            var info = stat()
            guard lstat(link, &info) == 0, !isReplaceable(link: link, paths: paths) else { continue }
            throw BlockDeviceError(
                .unavailable,
                "\(link) exists and is not a link of this resource's; choose another 'device' in drbd.conf or remove it")
        }
    }

    /// A link may be replaced when it points at a loop device that is detached or is this resource's (`isOurs`: left
    /// by a replicad that stopped); a link to another live loop device is someone else's (another resource, or the
    /// other node of a lab on this machine), and anything else is not Tandem's at all.
    static func isReplaceable(link: String, paths: BlockDevicePaths) -> Bool {
        guard let device = linkedLoopDevice(link) else { return false }
        return device.backingFile == nil || isOurs(device, paths)
    }

    /// The loop device `link` points to, if it is a symbolic link to one.
    static func linkedLoopDevice(_ link: String) -> LoopDevice? {
        var info = stat()
        guard lstat(link, &info) == 0, info.st_mode & S_IFMT == S_IFLNK, let target = linkTarget(link),
            target.hasPrefix("/dev/loop"), let number = Int32(target.dropFirst("/dev/loop".count))
        else { return nil }
        return LoopDevice(number: number)
    }

    /// Whether `device` is this resource's: it carries the resource's tag or, when a dead FUSE server hides the tag,
    /// its backing file is this resource's FUSE file (the caller found it through this resource's own link).
    static func isOurs(_ device: LoopDevice, _ paths: BlockDevicePaths) -> Bool {
        switch device.recordedTag {
        case .tag(let tag): tag == paths.loopTag
        case .backingFileServerGone:
            device.backingFile.map { ($0 as NSString).lastPathComponent == paths.fileName } ?? false
        case .none: false
        }
    }

    private func makeLinks() throws(BlockDeviceError) {
        for link in paths.links {
            let directory = (link as NSString).deletingLastPathComponent
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw BlockDeviceError(.failed, "cannot create \(directory) for the device link: \(error)")
            }
            // A new link under a temporary name, renamed over the old one: never a moment without a link.
            let temporary = link + ".tandem-new"
            unlink(temporary)
            guard symlink(loop.path, temporary) == 0, rename(temporary, link) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temporary)
                throw BlockDeviceError(.failed, "cannot link \(link) to \(loop.path): \(reason)")
            }
        }
    }

    /// Removes the links that still point at this loop device.
    private func removeLinks() {
        for link in paths.links where Self.linkTarget(link) == loop.path { unlink(link) }
    }

    static func linkTarget(_ path: String) -> String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: path)
    }
}
