import Crypto

/// The digest and HMAC algorithms drbd.conf may name for csums-alg, verify-alg, data-integrity-alg and
/// cram-hmac-alg. DRBD takes any kernel crypto name; Tandem supports the ones people use and refuses the rest by name.
public enum DigestAlgorithm: String, Sendable, Hashable, CaseIterable {
    case crc32c
    case md5
    case sha1
    case sha256
    case sha512

    /// Accepts the spellings drbd.conf uses ("sha1", "crc32c", "sha256", ...), case-insensitively.
    public init?(configName: String) {
        self.init(rawValue: configName.lowercased())
    }

    public func digest(_ bytes: [UInt8]) -> [UInt8] {
        switch self {
        case .crc32c:
            let value = CRC32C.checksum(bytes)
            return [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
        case .md5: return Array(Insecure.MD5.hash(data: bytes))
        case .sha1: return Array(Insecure.SHA1.hash(data: bytes))
        case .sha256: return Array(SHA256.hash(data: bytes))
        case .sha512: return Array(SHA512.hash(data: bytes))
        }
    }

    /// HMAC over `message`. CRC32C is not a hash function and cannot key an HMAC; configurations naming it for
    /// cram-hmac-alg are refused when the settings are built.
    public func hmac(key: [UInt8], message: [UInt8]) -> [UInt8]? {
        let symmetricKey = SymmetricKey(data: key)
        switch self {
        case .crc32c: return nil
        case .md5: return Array(HMAC<Insecure.MD5>.authenticationCode(for: message, using: symmetricKey))
        case .sha1: return Array(HMAC<Insecure.SHA1>.authenticationCode(for: message, using: symmetricKey))
        case .sha256: return Array(HMAC<SHA256>.authenticationCode(for: message, using: symmetricKey))
        case .sha512: return Array(HMAC<SHA512>.authenticationCode(for: message, using: symmetricKey))
        }
    }
}
