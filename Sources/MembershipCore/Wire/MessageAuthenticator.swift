import Crypto
import TandemConfig

/// Signs and checks the `auth=INDEX HEXDIGEST` field, as Heartbeat's auth plugins do.
///
/// What is signed: the message's fields as `name=value\n` lines, in order, without the frame and without the `auth`
/// field (Heartbeat's `add_msg_auth`). The digest is lower-case hex: HMAC with the key's secret for md5, sha1, and
/// Tandem's sha256 and sha512; a plain CRC-32 for crc, which only detects corruption.
///
/// Every key in authkeys is accepted on receipt; outgoing messages are signed with the active key (`auth N`). That
/// is how Heartbeat rotates keys: add the new key everywhere, then switch `auth N`, then remove the old one.
public struct MessageAuthenticator: Sendable {
    public let keys: Authkeys

    public init(keys: Authkeys) {
        precondition(keys.activeKey != nil, "authkeys without the active key \(keys.activeIndex.value) reached the authenticator")
        self.keys = keys
    }

    /// The message with its `auth` field (re)computed with the active key, as the last field.
    public func sign(_ message: HeartbeatMessage) -> HeartbeatMessage {
        var signed = message
        signed[HeartbeatField.authentication] = nil
        let key = keys.activeKey!
        signed[HeartbeatField.authentication] = "\(key.index) \(Self.digest(signed.body(excludingAuthentication: true), key: key))"
        return signed
    }

    /// Whether the message carries a valid `auth` field made with one of the keys.
    public func verify(_ message: HeartbeatMessage) -> AuthenticationVerdict {
        guard let field = message[HeartbeatField.authentication] else { return .missing }
        let parts = field.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2, let index = UInt8(parts[0]) else { return .malformed }
        guard let key = keys.keys.first(where: { $0.value.index == index })?.value else { return .unknownKey(index) }
        let expected = Self.digest(message.body(excludingAuthentication: true), key: key)
        // Compared without an early exit, so that the time taken does not tell how many leading digits were right.
        let given = Array(parts[1].utf8)
        let wanted = Array(expected.utf8)
        guard given.count == wanted.count else { return .mismatch }
        var difference: UInt8 = 0
        for (left, right) in zip(given, wanted) { difference |= left ^ right }
        return difference == 0 ? .authentic : .mismatch
    }

    static func digest(_ body: [UInt8], key: AuthKey) -> String {
        let secret = SymmetricKey(data: Array((key.secret ?? "").utf8))
        switch key.method {
        case .crc: return String(CRC32.checksum(body), radix: 16)
        case .md5: return hex(HMAC<Insecure.MD5>.authenticationCode(for: body, using: secret))
        case .sha1: return hex(HMAC<Insecure.SHA1>.authenticationCode(for: body, using: secret))
        case .sha256: return hex(HMAC<SHA256>.authenticationCode(for: body, using: secret))
        case .sha512: return hex(HMAC<SHA512>.authenticationCode(for: body, using: secret))
        }
    }

    private static func hex(_ code: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in code {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}

/// The outcome of checking a message's `auth` field. Anything but `authentic` is dropped and counted.
public enum AuthenticationVerdict: Sendable, Hashable {
    case authentic
    case missing
    case malformed
    case unknownKey(UInt8)
    case mismatch
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it), for authkeys' `crc` method.
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
