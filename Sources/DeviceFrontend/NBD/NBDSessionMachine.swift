/// One export the server offers: what negotiation needs to know about it. The bytes live behind an `NBDBackend`.
public struct NBDExport: Sendable, Hashable {
    public var name: String
    public var sizeBytes: UInt64
    public var isWritable: Bool
    /// Why a client may not use the export now (a replicated device that is not Primary), or nil. Negotiation
    /// refuses it with this text.
    public var unavailableReason: String?

    public init(name: String, sizeBytes: UInt64, isWritable: Bool, unavailableReason: String? = nil) {
        self.name = name
        self.sizeBytes = sizeBytes
        self.isWritable = isWritable
        self.unavailableReason = unavailableReason
    }

    /// The transmission flags advertised for this export. A read-only export advertises none of the write-side
    /// commands; a writable one advertises FLUSH, FUA, TRIM and WRITE_ZEROES. CAN_MULTI_CONN is never advertised: the
    /// backend gives no cross-connection flush guarantee.
    public var transmissionFlags: NBDProtocol.TransmissionFlags {
        isWritable ? [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes] : [.hasFlags, .readOnly]
    }
}

/// The limits of one session. Every count and length the peer controls is bounded by one of these.
public struct NBDLimits: Sendable, Hashable {
    /// The longest option data accepted during negotiation; a longer option is a hard disconnect.
    public var optionBytesMax: Int = 4096
    /// The longest export name (the protocol's own limit for strings).
    public var nameBytesMax: Int = 4096
    /// The largest READ or WRITE payload (advertised as NBD_INFO_BLOCK_SIZE maximum). A longer READ gets EINVAL; a
    /// longer WRITE is a hard disconnect, since its payload would have to be buffered to be skipped.
    public var payloadBytesMax: UInt32 = 32 << 20
    /// Offsets and lengths must be multiples of this (advertised as NBD_INFO_BLOCK_SIZE minimum); others get EINVAL.
    public var blockSizeBytesMin: UInt32 = 512
    /// Advertised as NBD_INFO_BLOCK_SIZE preferred.
    public var blockSizeBytesPreferred: UInt32 = 4096
    /// Requests handed to the backend and not yet completed; at this count the session stops reading.
    public var inFlightRequestsMax: Int = 16
    /// Options accepted in one negotiation before the server gives up on the client.
    public var optionsPerNegotiationMax: Int = 64
    /// Connections one server holds at once (counted by the server, not the session); more are closed on accept.
    public var connectionsMax: Int = 16

    public init() {}
}

/// What the backend answered for one request.
public enum NBDCompletion: Sendable, Hashable {
    /// Success; `data` is the bytes read for a READ and empty for every other command.
    case success(data: [UInt8])
    case failure(NBDErrorCode)

    public static let done = NBDCompletion.success(data: [])
}

/// The NBD server side of one connection as a pure state machine: the fixed newstyle negotiation, then transmission
/// with simple replies. The shell calls one method per event and performs the returned actions in order.
///
/// Phases and their legal transitions:
///
///     awaitingConnection --connected--> awaitingClientFlags --4 bytes--> negotiating
///     negotiating --OPT_GO ack / OPT_EXPORT_NAME--> transmitting
///     negotiating --OPT_ABORT / hostile input--> closed
///     transmitting --DISC, then last in-flight completion--> closed
///     transmitting --hostile input--> closed
///     any --connectionClosed--> closed
///
/// Policy choices (docs/nbd.md): clients must set NBD_FLAG_C_FIXED_NEWSTYLE; NBD_OPT_GO must request
/// NBD_INFO_BLOCK_SIZE (offsets and lengths must be 512-byte multiples) or it is answered NBD_REP_ERR_BLOCK_SIZE_REQD;
/// NBD_OPT_EXPORT_NAME is supported (its clients, the kernel included, use 512-byte sectors). Structured replies, meta
/// contexts, TLS and extended headers answer NBD_REP_ERR_UNSUP. A handle reused while still in flight is a hard
/// disconnect, since two replies with one handle would be ambiguous.
public struct NBDSessionMachine: Sendable {
    public enum Action: Sendable, Hashable {
        case sendBytes([UInt8])
        /// Negotiation chose this export: route the I/O actions that follow to its backend.
        case startTransmission(NBDExport)
        case read(handle: UInt64, offset: UInt64, length: UInt32)
        case write(handle: UInt64, offset: UInt64, payload: [UInt8], fua: Bool)
        case flush(handle: UInt64)
        case trim(handle: UInt64, offset: UInt64, length: UInt32, fua: Bool)
        case writeZeroes(handle: UInt64, offset: UInt64, length: UInt32, fua: Bool)
        /// Back-pressure: the in-flight limit is reached; stop reading from the socket.
        case pauseReading
        case resumeReading
        /// Close the connection (after sending whatever the earlier actions sent).
        case disconnect(reason: String)
    }

    private enum Phase: Sendable {
        case awaitingConnection
        case awaitingClientFlags
        case negotiating
        case transmitting
        case closed
    }

    public let exports: [NBDExport]
    public let limits: NBDLimits
    private var phase: Phase = .awaitingConnection
    private var input = NBDByteReader()
    private var noZeroes = false
    private var optionCount = 0
    private var export: NBDExport?
    private var inFlight: [UInt64: NBDProtocol.CommandType] = [:]
    private var readingPaused = false
    private var disconnectRequested = false

    public init(exports: [NBDExport], limits: NBDLimits = NBDLimits()) {
        self.exports = exports
        self.limits = limits
    }

    public var inFlightCount: Int { inFlight.count }
    public var isTransmitting: Bool { if case .transmitting = phase { true } else { false } }
    public var isClosed: Bool { if case .closed = phase { true } else { false } }

    // MARK: Events

    /// The connection is up: greet the client.
    public mutating func connected() -> [Action] {
        guard case .awaitingConnection = phase else { preconditionFailure("connected() in phase \(phase)") }
        phase = .awaitingClientFlags
        return [.sendBytes(NBDProtocol.greeting())]
    }

    /// Bytes arrived from the client.
    public mutating func received(_ bytes: some Sequence<UInt8>) -> [Action] {
        switch phase {
        case .awaitingConnection: preconditionFailure("received bytes before connected()")
        case .closed: return []
        default: break
        }
        // After DISC the client must send nothing more; whatever it sends is ignored.
        if disconnectRequested { return [] }
        input.append(bytes)
        var actions: [Action] = []
        process(into: &actions)
        return actions
    }

    /// The backend finished the request with `handle`.
    public mutating func completed(handle: UInt64, _ completion: NBDCompletion) -> [Action] {
        if case .closed = phase { return [] }  // The connection went away while the backend worked.
        guard let type = inFlight.removeValue(forKey: handle) else {
            preconditionFailure("completion for handle \(handle), which is not in flight")
        }
        var actions: [Action] = []
        switch completion {
        case .success(let data):
            precondition(type == .read || data.isEmpty, "\(type) completed with \(data.count) bytes of data")
            actions.append(.sendBytes(NBDProtocol.simpleReply(handle: handle, data: data)))
        case .failure(let error):
            precondition(error != .none, "failure without an error code")
            actions.append(.sendBytes(NBDProtocol.simpleReply(handle: handle, error: error)))
        }
        if disconnectRequested {
            if inFlight.isEmpty { close(&actions, reason: "client sent NBD_CMD_DISC") }
            return actions
        }
        process(into: &actions)
        return actions
    }

    /// The connection closed (either side). Later completions are dropped.
    public mutating func connectionClosed() -> [Action] {
        phase = .closed
        inFlight = [:]
        input.removeAll()
        return []
    }

    // MARK: Input processing

    private mutating func process(into actions: inout [Action]) {
        var progressing = true
        while progressing {
            switch phase {
            case .awaitingClientFlags: progressing = processClientFlags(into: &actions)
            case .negotiating: progressing = processOption(into: &actions)
            case .transmitting: progressing = processRequest(into: &actions)
            case .awaitingConnection, .closed: progressing = false
            }
        }
        if case .transmitting = phase, readingPaused, inFlight.count < limits.inFlightRequestsMax, !disconnectRequested {
            readingPaused = false
            actions.append(.resumeReading)
        }
    }

    private mutating func close(_ actions: inout [Action], reason: String) {
        phase = .closed
        input.removeAll()
        actions.append(.disconnect(reason: reason))
    }

    private mutating func processClientFlags(into actions: inout [Action]) -> Bool {
        guard let raw = input.peekUInt32(at: 0) else { return false }
        input.consume(NBDProtocol.clientFlagsSizeBytes)
        let flags = NBDProtocol.ClientFlags(rawValue: raw)
        guard flags.isSubset(of: .known) else {
            close(&actions, reason: "unknown client flags 0x\(String(raw, radix: 16))")
            return false
        }
        guard flags.contains(.fixedNewstyle) else {
            close(&actions, reason: "client does not speak fixed newstyle negotiation")
            return false
        }
        noZeroes = flags.contains(.noZeroes)
        phase = .negotiating
        return true
    }

    private mutating func processOption(into actions: inout [Action]) -> Bool {
        guard let magic = input.peekUInt64(at: 0), let rawOption = input.peekUInt32(at: 8),
            let length = input.peekUInt32(at: 12)
        else { return false }
        guard magic == NBDProtocol.optionMagic else {
            close(&actions, reason: "bad option magic 0x\(String(magic, radix: 16))")
            return false
        }
        guard length <= limits.optionBytesMax else {
            close(&actions, reason: "option \(rawOption) of \(length) bytes exceeds \(limits.optionBytesMax)")
            return false
        }
        guard let data = input.peekBytes(at: NBDProtocol.optionHeaderSizeBytes, count: Int(length)) else { return false }
        input.consume(NBDProtocol.optionHeaderSizeBytes + Int(length))
        optionCount += 1
        guard optionCount <= limits.optionsPerNegotiationMax else {
            close(&actions, reason: "more than \(limits.optionsPerNegotiationMax) options")
            return false
        }
        handleOption(NBDProtocol.Option(rawValue: rawOption), data: data, into: &actions)
        return true
    }

    private func lookUpExport(nameBytes: [UInt8]) -> NBDExport? {
        // The empty name selects the default export, the first one configured.
        if nameBytes.isEmpty { return exports.first }
        return exports.first { Array($0.name.utf8) == nameBytes }
    }

    private mutating func handleOption(_ option: NBDProtocol.Option, data: [UInt8], into actions: inout [Action]) {
        func reply(_ type: NBDProtocol.OptionReplyType, _ data: [UInt8] = []) {
            actions.append(.sendBytes(NBDProtocol.optionReply(option, type, data: data)))
        }
        func error(_ type: NBDProtocol.OptionReplyType, _ message: String) {
            reply(type, Array(message.utf8))
        }
        switch option {
        case .exportName:
            guard data.count <= limits.nameBytesMax, let chosen = lookUpExport(nameBytes: data) else {
                // The protocol gives NBD_OPT_EXPORT_NAME no error reply: the server closes.
                close(&actions, reason: "NBD_OPT_EXPORT_NAME for an unknown export")
                return
            }
            if let reason = chosen.unavailableReason {
                close(&actions, reason: "NBD_OPT_EXPORT_NAME for \(chosen.name), which is unavailable: \(reason)")
                return
            }
            actions.append(.sendBytes(NBDProtocol.exportNameReply(
                sizeBytes: chosen.sizeBytes, flags: chosen.transmissionFlags, noZeroes: noZeroes)))
            enterTransmission(chosen, into: &actions)
        case .abort:
            reply(.ack)
            close(&actions, reason: "client sent NBD_OPT_ABORT")
        case .list:
            guard data.isEmpty else { return error(.errorInvalid, "NBD_OPT_LIST takes no data") }
            for export in exports { reply(.server, NBDProtocol.serverReplyData(name: export.name)) }
            reply(.ack)
        case .info, .go:
            guard let request = NBDExportRequest.parse(data, nameBytesMax: limits.nameBytesMax) else {
                return error(.errorInvalid, "malformed \(option == .go ? "NBD_OPT_GO" : "NBD_OPT_INFO") data")
            }
            guard let chosen = lookUpExport(nameBytes: request.nameBytes) else {
                return error(.errorUnknown, "no such export")
            }
            if let reason = chosen.unavailableReason { return error(.errorPolicy, reason) }
            let wantsBlockSize = request.infoRequests.contains(.blockSize)
            if option == .go && !wantsBlockSize {
                return error(.errorBlockSizeRequired, "requests must be \(limits.blockSizeBytesMin)-byte aligned")
            }
            reply(.info, NBDProtocol.infoExport(sizeBytes: chosen.sizeBytes, flags: chosen.transmissionFlags))
            if request.infoRequests.contains(.name) { reply(.info, NBDProtocol.infoName(chosen.name)) }
            reply(.info, NBDProtocol.infoBlockSize(
                minimumBytes: limits.blockSizeBytesMin, preferredBytes: limits.blockSizeBytesPreferred,
                maximumBytes: limits.payloadBytesMax))
            reply(.ack)
            if option == .go { enterTransmission(chosen, into: &actions) }
        default:
            error(.errorUnsupported, "\(option) is not supported")
        }
    }

    private mutating func enterTransmission(_ chosen: NBDExport, into actions: inout [Action]) {
        export = chosen
        phase = .transmitting
        actions.append(.startTransmission(chosen))
    }

    // MARK: Transmission

    private mutating func processRequest(into actions: inout [Action]) -> Bool {
        guard !disconnectRequested else { return false }
        guard inFlight.count < limits.inFlightRequestsMax else {
            if !readingPaused {
                readingPaused = true
                actions.append(.pauseReading)
            }
            return false
        }
        guard let magic = input.peekUInt32(at: 0), let rawFlags = input.peekUInt16(at: 4),
            let rawType = input.peekUInt16(at: 6), let handle = input.peekUInt64(at: 8),
            let offset = input.peekUInt64(at: 16), let length = input.peekUInt32(at: 24)
        else { return false }
        guard magic == NBDProtocol.requestMagic else {
            close(&actions, reason: "bad request magic 0x\(String(magic, radix: 16))")
            return false
        }
        let request = NBDProtocol.RequestHeader(
            flags: NBDProtocol.CommandFlags(rawValue: rawFlags), type: NBDProtocol.CommandType(rawValue: rawType),
            handle: handle, offset: offset, length: length)
        var payload: [UInt8] = []
        if request.type == .write {
            guard length <= limits.payloadBytesMax else {
                close(&actions, reason: "WRITE of \(length) bytes exceeds \(limits.payloadBytesMax)")
                return false
            }
            guard let bytes = input.peekBytes(at: NBDProtocol.requestHeaderSizeBytes, count: Int(length)) else {
                return false
            }
            payload = bytes
            input.consume(NBDProtocol.requestHeaderSizeBytes + Int(length))
        } else {
            input.consume(NBDProtocol.requestHeaderSizeBytes)
        }
        if request.type == .disconnect {
            disconnectRequested = true
            input.removeAll()
            if inFlight.isEmpty { close(&actions, reason: "client sent NBD_CMD_DISC") }
            return false
        }
        guard inFlight[handle] == nil else {
            close(&actions, reason: "handle \(handle) reused while in flight")
            return false
        }
        if let error = validate(request) {
            actions.append(.sendBytes(NBDProtocol.simpleReply(handle: handle, error: error)))
            return true
        }
        guard let export else { preconditionFailure("transmitting without an export") }
        let fua = request.flags.contains(.fua)
        switch request.type {
        case .read: actions.append(.read(handle: handle, offset: offset, length: length))
        case .write: actions.append(.write(handle: handle, offset: offset, payload: payload, fua: fua))
        case .flush:
            // A read-only export has nothing to flush; answer without the backend.
            guard export.isWritable else {
                actions.append(.sendBytes(NBDProtocol.simpleReply(handle: handle)))
                return true
            }
            actions.append(.flush(handle: handle))
        case .trim: actions.append(.trim(handle: handle, offset: offset, length: length, fua: fua))
        case .writeZeroes: actions.append(.writeZeroes(handle: handle, offset: offset, length: length, fua: fua))
        default: preconditionFailure("validate() let \(request.type) through")
        }
        inFlight[handle] = request.type
        return true
    }

    /// The error a request gets without reaching the backend, or nil when it is valid.
    private func validate(_ request: NBDProtocol.RequestHeader) -> NBDErrorCode? {
        guard let export else { preconditionFailure("transmitting without an export") }
        let isWrite = [.write, .trim, .writeZeroes].contains(request.type)
        var allowedFlags: NBDProtocol.CommandFlags = [.fua]
        switch request.type {
        case .read, .write, .trim, .flush: break
        case .writeZeroes: allowedFlags.insert(.noHole)
        default: return .invalidArgument  // Unknown or unadvertised command (CACHE, BLOCK_STATUS, ...).
        }
        guard request.flags.isSubset(of: allowedFlags) else { return .invalidArgument }
        if request.type == .flush { return nil }
        if isWrite && !export.isWritable { return .notPermitted }
        if request.type == .read && request.length > limits.payloadBytesMax { return .invalidArgument }
        let blockSize = UInt64(limits.blockSizeBytesMin)
        guard request.length > 0, request.offset % blockSize == 0, UInt64(request.length) % blockSize == 0 else {
            return .invalidArgument
        }
        // Beyond the end: EINVAL for reads and trims, ENOSPC for writes and write-zeroes (proto.md).
        if request.offset > export.sizeBytes || UInt64(request.length) > export.sizeBytes - request.offset {
            return request.type == .write || request.type == .writeZeroes ? .noSpace : .invalidArgument
        }
        return nil
    }
}
