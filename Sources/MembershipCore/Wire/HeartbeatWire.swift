/// Heartbeat's classic wire format: `>>>\n`, then one `name=value\n` line per field, then `<<<\n`.
///
/// Decoding is strict and bounded, because every byte comes from the network before it is authenticated: a
/// datagram over `messageBytesMaximum`, with more than `fieldsMaximum` fields, with a field name outside
/// `[A-Za-z0-9_.()-]`, a control character in a value, a repeated name, or anything outside the frame is refused
/// with the reason. One NUL after the end marker is tolerated: Heartbeat sends its C string's terminator.
public enum HeartbeatWire {
    /// Largest datagram accepted or produced: 16 KiB, far above any R1 message (a status message is about 200
    /// bytes, a resource message a few hundred), and below what one UDP datagram can carry, so that the limit is
    /// enforced rather than left to the network.
    public static let messageBytesMaximum = 16 * 1024
    /// Fields in one message; R1 messages have about a dozen.
    public static let fieldsMaximum = 256
    /// Length of one field name.
    public static let nameBytesMaximum = 64

    static let startMarker = Array(">>>\n".utf8)
    static let endMarker = Array("<<<\n".utf8)

    public static func encode(_ message: HeartbeatMessage) -> [UInt8] {
        var bytes = startMarker
        bytes.append(contentsOf: message.body(excludingAuthentication: false))
        bytes.append(contentsOf: endMarker)
        precondition(
            bytes.count <= messageBytesMaximum,
            "a \(bytes.count)-byte heartbeat message exceeds the wire limit: \(message)")
        return bytes
    }

    public static func decode(_ datagram: some Collection<UInt8>) throws(HeartbeatWireError) -> HeartbeatMessage {
        guard datagram.count <= messageBytesMaximum else {
            throw HeartbeatWireError(.oversized, "\(datagram.count) bytes, more than \(messageBytesMaximum)")
        }
        var bytes = Array(datagram)
        if bytes.last == 0 { bytes.removeLast() }
        guard bytes.starts(with: startMarker) else {
            throw HeartbeatWireError(.malformed, "does not start with '>>>'")
        }
        guard bytes.count >= startMarker.count + endMarker.count, bytes.suffix(endMarker.count).elementsEqual(endMarker)
        else {
            throw HeartbeatWireError(.malformed, "does not end with '<<<'")
        }
        let body = bytes[startMarker.count..<(bytes.count - endMarker.count)]
        // Every field ends in "\n" (a body that does not was cut off), so splitting leaves one empty piece after
        // the last field, which is dropped.
        guard body.isEmpty || body.last == UInt8(ascii: "\n") else {
            throw HeartbeatWireError(.malformed, "the last field is not terminated")
        }
        var fields: [HeartbeatMessage.Field] = []
        var names = Set<String>()
        for line in body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast() {
            guard fields.count < fieldsMaximum else {
                throw HeartbeatWireError(.malformed, "more than \(fieldsMaximum) fields")
            }
            guard let equals = line.firstIndex(of: UInt8(ascii: "=")) else {
                throw HeartbeatWireError(.malformed, "field \(fields.count + 1) has no '='")
            }
            let name = line[line.startIndex..<equals]
            let value = line[(equals + 1)...]
            guard (1...nameBytesMaximum).contains(name.count), name.allSatisfy(isNameByte) else {
                throw HeartbeatWireError(.malformed, "field \(fields.count + 1) has an invalid name")
            }
            guard value.allSatisfy({ $0 >= 0x20 && $0 != 0x7F || $0 == UInt8(ascii: "\t") }),
                let valueText = String(validating: value, as: UTF8.self)
            else {
                throw HeartbeatWireError(.malformed, "field \(fields.count + 1) has a control character or invalid UTF-8")
            }
            let nameText = String(decoding: name, as: UTF8.self)
            guard names.insert(nameText).inserted else {
                throw HeartbeatWireError(.malformed, "field '\(nameText)' appears twice")
            }
            fields.append(HeartbeatMessage.Field(nameText, valueText))
        }
        return HeartbeatMessage(fields: fields)
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }
}

/// Why a datagram is not a Heartbeat message. Receivers drop it and count it by code.
public struct HeartbeatWireError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        case oversized
        case malformed
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
}
