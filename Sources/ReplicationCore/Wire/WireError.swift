/// Why a byte stream from a peer could not be decoded. Any of these means the stream can no longer be trusted: the
/// decoder stays failed and the transport drops the connection.
public struct WireError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// The frame does not start with `PacketCodec.magic`: not a Tandem peer, or the stream lost its framing.
        case badMagic
        /// The header names a command code this version does not know.
        case unknownCommand
        /// The header announces a payload longer than the command (or any command) may have.
        case payloadTooLarge
        /// The CRC32C in the header does not match the header and payload: the frame was corrupted.
        case checksumMismatch
        /// The payload's structure is wrong: truncated, trailing bytes, or lengths that disagree.
        case malformedPayload
        /// A field holds a value that is not allowed: an unknown enum code, a bad boolean, a string or byte array
        /// over its limit, a size that is not a multiple of 512, and so on.
        case invalidValue
    }

    public var code: Code
    /// What exactly was wrong, without the prefix that `description` adds.
    public var message: String
    /// The command of the frame, when the header named a known one.
    public var command: PacketCommand?

    public init(_ code: Code, _ message: String, command: PacketCommand? = nil) {
        self.code = code
        self.message = message
        self.command = command
    }

    /// For logs, e.g. "malformed data packet: payload 4096 bytes but range says 8192".
    public var description: String {
        let packet = command.map { "\($0.name) packet" } ?? "packet"
        return switch code {
        case .badMagic: "bad frame magic: \(message)"
        case .unknownCommand: "unknown command: \(message)"
        case .payloadTooLarge: "oversized \(packet): \(message)"
        case .checksumMismatch: "checksum mismatch in \(packet): \(message)"
        case .malformedPayload: "malformed \(packet): \(message)"
        case .invalidValue: "invalid \(packet): \(message)"
        }
    }
}
