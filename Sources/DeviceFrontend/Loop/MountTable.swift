import Foundation

/// One line of a /proc/PID/mountinfo file: "ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE
/// SUPEROPTIONS". Paths are unescaped (the kernel writes space, tab, newline and backslash as octal escapes).
public struct MountEntry: Sendable, Hashable {
    /// "MAJOR:MINOR" of the mounted device (for FUSE, 0:N with N its connection number).
    public var device: String
    public var mountPoint: String
    public var fileSystemType: String
    public var source: String

    /// Parses one line; nil for a line that does not have the format.
    public init?(line: Substring) {
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count >= 10, let separator = fields.firstIndex(of: "-"), separator >= 6,
            separator + 2 < fields.count
        else { return nil }
        device = String(fields[2])
        mountPoint = Self.unescape(fields[4])
        fileSystemType = String(fields[separator + 1])
        source = Self.unescape(fields[separator + 2])
    }

    /// The minor number of `device`.
    public var minor: UInt32? { device.split(separator: ":").last.flatMap { UInt32($0) } }

    static func unescape(_ field: Substring) -> String {
        guard field.contains("\\") else { return String(field) }
        var bytes: [UInt8] = []
        let raw = Array(field.utf8)
        var index = 0
        while index < raw.count {
            if raw[index] == UInt8(ascii: "\\"), index + 3 < raw.count,
                let value = UInt8(String(decoding: raw[index + 1...index + 3], as: UTF8.self), radix: 8)
            {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(raw[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The mount tables of this process and of every other process, read from /proc.
public enum MountTable {
    /// The entries of `/proc/<process>/mountinfo` (process "self" for ours), in mount order; empty when the
    /// process is gone or cannot be read.
    public static func entries(process: String = "self") -> [MountEntry] {
        guard let text = try? String(contentsOfFile: "/proc/\(process)/mountinfo", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { MountEntry(line: $0) }
    }

    /// The newest mount at `mountPoint` in this process's mount namespace.
    public static func newestMount(at mountPoint: String) -> MountEntry? {
        entries().last { $0.mountPoint == mountPoint }
    }

    /// The PIDs of all processes, as listed in /proc.
    public static func processIDs() -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap { Int32($0) }.sorted()
    }

    /// What the open descriptors of `pid` point at (/proc/PID/fd/*), or nothing when the process is gone.
    public static func openFiles(of pid: Int32) -> [String] {
        let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return descriptors.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }
    }

    /// The mount namespace of `pid` ("mnt:[4026531841]"), or nil when the process is gone.
    public static func mountNamespace(of pid: Int32) -> String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/mnt")
    }

    /// The command name of `pid` (its /proc comm), or "?" when the process is gone.
    public static func command(of pid: Int32) -> String {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "?"
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
