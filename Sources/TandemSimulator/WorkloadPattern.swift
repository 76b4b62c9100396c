import ReplicationCore

/// The workload's self-describing data: every 512-byte sector written carries the write's version, its own sector
/// number and a checksum, so a checker can tell from any image which write each sector came from, and notice a
/// sector that is corrupt or landed in the wrong place.
enum WorkloadPattern {
    static let sectorBytes = 512

    static func payload(version: UInt64, firstSector: UInt64, sectorCount: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(sectorCount * sectorBytes)
        for index in 0..<sectorCount {
            bytes.append(contentsOf: sector(version: version, sector: firstSector + UInt64(index)))
        }
        return bytes
    }

    static func sector(version: UInt64, sector: UInt64) -> [UInt8] {
        var writer = ByteWriter(reservingCapacity: sectorBytes)
        writer.write(version)
        writer.write(sector)
        let header = writer.bytes
        writer.write(CRC32C.checksum(header))
        let seed = UInt8(truncatingIfNeeded: version &* 31 &+ sector &* 7)
        for index in 0..<(sectorBytes - 20) { writer.write(seed &+ UInt8(truncatingIfNeeded: index)) }
        return writer.bytes
    }

    enum Decoded: Equatable {
        case zero
        case written(version: UInt64)
        case corrupt(String)
    }

    /// Decodes one sector read from an image at `sector`.
    static func decode(_ bytes: ArraySlice<UInt8>, sector expected: UInt64) -> Decoded {
        if !bytes.contains(where: { $0 != 0 }) { return .zero }
        var reader = ByteReader(bytes)
        guard let version = try? reader.read(UInt64.self), let sector = try? reader.read(UInt64.self),
            let checksum = try? reader.read(UInt32.self)
        else { return .corrupt("short sector") }
        let header = Array(bytes.prefix(16))
        guard CRC32C.checksum(header) == checksum else { return .corrupt("bad sector checksum") }
        guard sector == expected else { return .corrupt("sector \(sector)'s data found at sector \(expected)") }
        let seed = UInt8(truncatingIfNeeded: version &* 31 &+ sector &* 7)
        let filler = bytes.dropFirst(20)
        for (index, byte) in filler.enumerated() where byte != seed &+ UInt8(truncatingIfNeeded: index) {
            return .corrupt("sector \(sector) filler damaged at byte \(20 + index)")
        }
        return .written(version: version)
    }
}
