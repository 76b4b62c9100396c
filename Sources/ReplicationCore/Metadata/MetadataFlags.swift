/// The persistent per-volume flags of the superblock, with DRBD's bit values (reference drbd.md section 2) so that
/// `get-gi` output reads the same.
public struct MetadataFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The data is consistent (a resync into it is not half done).
    public static let consistent = MetadataFlags(rawValue: 1 << 0)
    /// The node was Primary when the metadata was last written; still set at attach means it crashed as Primary.
    public static let primaryIndicator = MetadataFlags(rawValue: 1 << 1)
    /// The node was connected when the metadata was last written.
    public static let connectedIndicator = MetadataFlags(rawValue: 1 << 2)
    /// A full sync is pending: every bitmap bit is to be treated as set.
    public static let fullSync = MetadataFlags(rawValue: 1 << 3)
    /// The data was UpToDate (not merely Consistent) when last written.
    public static let wasUpToDate = MetadataFlags(rawValue: 1 << 4)
    /// The peer's disk has been marked Outdated (by fencing or by a clean demotion while connected).
    public static let peerOutdated = MetadataFlags(rawValue: 1 << 5)
    /// The node crashed while Primary and has not yet resynced the activity log's hot extents.
    public static let crashedPrimary = MetadataFlags(rawValue: 1 << 6)
    /// The activity log was cleanly emptied at shutdown: no replay is needed.
    public static let activityLogClean = MetadataFlags(rawValue: 1 << 7)
    /// The activity log is disabled (DRBD's `al-updates no`).
    public static let activityLogDisabled = MetadataFlags(rawValue: 1 << 8)

    /// Every flag with the name dump-md, status and get-gi use for it, in bit order.
    public static let named: [(flag: MetadataFlags, name: String)] = [
        (.consistent, "consistent"), (.primaryIndicator, "primary"), (.connectedIndicator, "connected"),
        (.fullSync, "full-sync"), (.wasUpToDate, "was-up-to-date"), (.peerOutdated, "peer-outdated"),
        (.crashedPrimary, "crashed-primary"), (.activityLogClean, "al-clean"), (.activityLogDisabled, "al-disabled"),
    ]

    /// The names of the flags that are set, in bit order.
    public var names: [String] { Self.named.filter { contains($0.flag) }.map(\.name) }

    public static let known: MetadataFlags = [
        .consistent, .primaryIndicator, .connectedIndicator, .fullSync, .wasUpToDate, .peerOutdated, .crashedPrimary,
        .activityLogClean, .activityLogDisabled,
    ]
}
