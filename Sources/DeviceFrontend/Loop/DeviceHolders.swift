import Foundation

/// Someone who holds a block device: a mount of it (in some mount namespace) or a process with it open.
public struct DeviceHolder: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// Mounted at `path` in the mount namespace of `pid` (one PID named per namespace).
        case mount(path: String)
        /// Open by `pid`.
        case openFile
        /// Another block device is stacked on it (device mapper, md): /sys/block/X/holders.
        case stackedDevice(name: String)
    }

    public var kind: Kind
    public var pid: Int32?
    public var command: String?

    public init(kind: Kind, pid: Int32? = nil, command: String? = nil) {
        self.kind = kind
        self.pid = pid
        self.command = command
    }

    public var description: String {
        let process = pid.map { " (pid \($0) \(command ?? "?"))" } ?? ""
        switch kind {
        case .mount(let path): return "mounted at \(path)\(process)"
        case .openFile: return "open\(process)"
        case .stackedDevice(let name): return "used by the block device \(name)"
        }
    }
}

/// Finds everyone who holds a block device, across all mount namespaces: what `secondary` and `down` must refuse
/// on, and what the operator must be told. A mount copied into another namespace (every `unshare -m` or `ip netns
/// exec` started while it was mounted gets one) keeps the file system alive after the original is unmounted.
public enum DeviceHolders {
    /// The holders of the device `devicePath` ("/dev/loop3") with number `deviceNumber` ("7:3"). Mounts are named
    /// once per mount namespace; our own process is left out of the open-file holders (it may be probing).
    public static func find(devicePath: String, deviceNumber: String) -> [DeviceHolder] {
        var holders: [DeviceHolder] = []
        var namespacesSeen: Set<String> = []
        let ownPID = getpid()
        let name = (devicePath as NSString).lastPathComponent
        let stacked = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/block/\(name)/holders")) ?? []
        holders += stacked.sorted().map { DeviceHolder(kind: .stackedDevice(name: $0)) }
        for pid in MountTable.processIDs() {
            if let namespace = MountTable.mountNamespace(of: pid), namespacesSeen.insert(namespace).inserted {
                for entry in MountTable.entries(process: String(pid)) where entry.device == deviceNumber {
                    holders.append(DeviceHolder(kind: .mount(path: entry.mountPoint), pid: pid, command: MountTable.command(of: pid)))
                }
            }
            guard pid != ownPID else { continue }
            if MountTable.openFiles(of: pid).contains(devicePath) { holders.append(DeviceHolder(kind: .openFile, pid: pid, command: MountTable.command(of: pid))) }
        }
        return holders
    }
}
