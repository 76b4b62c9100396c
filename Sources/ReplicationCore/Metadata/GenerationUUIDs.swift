/// The four data-generation identifiers DRBD keeps per volume (reference drbd.md section 2).
///
/// - `current`: the generation the data is in now. Bit 0 is set while the node is Primary; comparisons mask it.
/// - `bitmap`: the generation the bitmap's bits are relative to; 0 when the bitmap tracks nothing.
/// - `history1`, `history2`: older generations, newest first, used to recognise common ancestors.
///
/// Generations only move forward: a node never goes back to a UUID it has left, except when a resync target adopts
/// its source's set. The simulator checks that.
public struct GenerationUUIDs: Sendable, Hashable, CustomStringConvertible {
    /// `UUID_JUST_CREATED`: the Current UUID of metadata that `create-md` has just written.
    public static let justCreated: UInt64 = 4

    public var current: UInt64
    public var bitmap: UInt64
    public var history1: UInt64
    public var history2: UInt64

    public init(current: UInt64, bitmap: UInt64 = 0, history1: UInt64 = 0, history2: UInt64 = 0) {
        self.current = current
        self.bitmap = bitmap
        self.history1 = history1
        self.history2 = history2
    }

    /// Freshly created metadata: no generation yet.
    public static let created = GenerationUUIDs(current: justCreated)

    /// The UUIDs with the Primary bit masked, as every comparison uses them.
    public var masked: GenerationUUIDs {
        GenerationUUIDs(current: current & ~1, bitmap: bitmap & ~1, history1: history1 & ~1, history2: history2 & ~1)
    }

    /// Whether `uuid` (masked) is one of the two history UUIDs.
    public func historyContains(_ uuid: UInt64) -> Bool {
        uuid & ~1 != 0 && (history1 & ~1 == uuid & ~1 || history2 & ~1 == uuid & ~1)
    }

    /// Marks the generation as written by a Primary (bit 0 of Current), as DRBD does on promotion.
    public mutating func setPrimaryBit(_ isPrimary: Bool) {
        current = isPrimary ? (current | 1) : (current & ~1)
    }

    /// Starts a new data generation: Bitmap <- Current, Current <- `fresh`. Used when a node is promoted while
    /// disconnected, or loses its peer while Primary, with an empty Bitmap UUID.
    ///
    /// The old Current moves into Bitmap *with* its Primary bit, as DRBD does: bit 0 of the Bitmap UUID then tells
    /// whether this node was already Primary when the generation split, which is what `discard-younger-primary`
    /// and `discard-older-primary` compare.
    public mutating func startNewGeneration(fresh: UInt64, isPrimary: Bool) {
        precondition(fresh & ~1 > Self.justCreated, "a fresh generation UUID must not collide with special values")
        if bitmap == 0 { bitmap = current } else { pushHistory(current) }
        current = fresh & ~1
        setPrimaryBit(isPrimary)
    }

    /// Clears the Bitmap UUID after the bitmap has become empty: History2 <- History1, History1 <- Bitmap, Bitmap <- 0.
    public mutating func clearBitmapUUID() {
        guard bitmap != 0 else { return }
        pushHistory(bitmap)
        bitmap = 0
    }

    /// History2 <- History1, History1 <- `uuid`.
    public mutating func pushHistory(_ uuid: UInt64) {
        history2 = history1
        history1 = uuid & ~1
    }

    public var description: String {
        "\(current.fixedWidthHex):\(bitmap.fixedWidthHex):\(history1.fixedWidthHex):\(history2.fixedWidthHex)"
    }
}
