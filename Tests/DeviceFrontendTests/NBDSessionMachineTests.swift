import Testing

@testable import DeviceFrontend

/// The pure session machine, event by event. Byte layouts are spelled out by hand here, independently of the
/// encoders, so that a symmetric bug in encoder and test cannot hide.
@Suite("NBD session machine")
struct NBDSessionMachineTests {
    typealias Action = NBDSessionMachine.Action
    static let disk = NBDExport(name: "disk", sizeBytes: 1 << 20, isWritable: true)
    static let readOnly = NBDExport(name: "ro", sizeBytes: 4096, isWritable: false)

    func be(_ value: some FixedWidthInteger) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(value)
        return bytes
    }

    func sent(_ actions: [Action]) -> [UInt8] {
        actions.flatMap { action -> [UInt8] in
            if case .sendBytes(let bytes) = action { bytes } else { [] }
        }
    }

    func isDisconnect(_ action: Action?) -> Bool {
        if case .disconnect = action { true } else { false }
    }

    /// A machine past the client flags, in the option phase.
    func negotiating(_ exports: [NBDExport] = [Self.disk, Self.readOnly], limits: NBDLimits = NBDLimits()) -> NBDSessionMachine {
        var machine = NBDSessionMachine(exports: exports, limits: limits)
        _ = machine.connected()
        #expect(machine.received([0, 0, 0, 3]).isEmpty)
        return machine
    }

    /// A machine in transmission on `export` (chosen with NBD_OPT_GO).
    func transmitting(_ name: String = "disk", limits: NBDLimits = NBDLimits()) -> NBDSessionMachine {
        var machine = negotiating(limits: limits)
        let actions = machine.received(NBDProtocol.optionRequest(.go, data: NBDProtocol.goData(name: name, infoRequests: [.blockSize])))
        #expect(machine.isTransmitting, "\(actions)")
        return machine
    }

    func request(_ type: UInt16, handle: UInt64, offset: UInt64 = 0, length: UInt32 = 0, flags: UInt16 = 0) -> [UInt8] {
        [0x25, 0x60, 0x95, 0x13] + be(flags) + be(type) + be(handle) + be(offset) + be(length)
    }

    func reply(handle: UInt64, error: UInt32 = 0) -> [UInt8] {
        [0x67, 0x44, 0x66, 0x98] + be(error) + be(handle)
    }

    func optionReply(_ option: UInt32, _ type: UInt32, _ data: [UInt8] = []) -> [UInt8] {
        be(UInt64(0x0003_e889_0455_65a9)) + be(option) + be(type) + be(UInt32(data.count)) + data
    }

    // MARK: Handshake

    @Test("The greeting is NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES, 18 bytes")
    func greeting() {
        var machine = NBDSessionMachine(exports: [Self.disk])
        #expect(machine.connected() == [.sendBytes(Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8) + [0x00, 0x03])])
    }

    @Test("Client flags may arrive one byte at a time")
    func clientFlagsByteByByte() {
        var machine = NBDSessionMachine(exports: [Self.disk])
        _ = machine.connected()
        for byte: UInt8 in [0, 0, 0, 1] { #expect(machine.received([byte]).isEmpty) }
        #expect(!machine.isClosed)
    }

    @Test("Unknown client flags or a client without fixed newstyle are disconnected")
    func badClientFlags() {
        for flags: [UInt8] in [[0, 0, 0, 4], [0, 0, 0, 0], [0x80, 0, 0, 1]] {
            var machine = NBDSessionMachine(exports: [Self.disk])
            _ = machine.connected()
            #expect(isDisconnect(machine.received(flags).last))
            #expect(machine.isClosed)
        }
    }

    @Test("NBD_OPT_GO with BLOCK_SIZE and NAME: INFO export, INFO name, INFO block size, ACK, byte-exact; then transmission")
    func goByteExact() {
        var machine = negotiating()
        let actions = machine.received(
            NBDProtocol.optionRequest(.go, data: NBDProtocol.goData(name: "disk", infoRequests: [.blockSize, .name])))
        let expected =
            optionReply(7, 3, [0, 0] + be(UInt64(1 << 20)) + [0x00, 0x6d])  // HAS_FLAGS|FLUSH|FUA|TRIM|WRITE_ZEROES
            + optionReply(7, 3, [0, 1] + Array("disk".utf8))
            + optionReply(7, 3, [0, 3] + be(UInt32(512)) + be(UInt32(4096)) + be(UInt32(32 << 20)))
            + optionReply(7, 1)
        #expect(sent(actions) == expected)
        #expect(actions.last == .startTransmission(Self.disk))
        #expect(machine.isTransmitting)
    }

    @Test("A read-only export advertises READ_ONLY and none of the write-side commands")
    func readOnlyFlags() {
        var machine = negotiating()
        let actions = machine.received(NBDProtocol.optionRequest(.info, data: NBDProtocol.goData(name: "ro", infoRequests: [])))
        #expect(sent(actions).starts(with: optionReply(6, 3, [0, 0] + be(UInt64(4096)) + [0x00, 0x03])))
        #expect(!machine.isTransmitting, "NBD_OPT_INFO stays in negotiation")
    }

    @Test("NBD_OPT_GO without requesting BLOCK_SIZE is answered ERR_BLOCK_SIZE_REQD and negotiation goes on")
    func goWithoutBlockSize() {
        var machine = negotiating()
        let actions = machine.received(NBDProtocol.optionRequest(.go, data: NBDProtocol.goData(name: "disk", infoRequests: [])))
        #expect(sent(actions).starts(with: be(UInt64(0x0003_e889_0455_65a9)) + be(UInt32(7)) + be(UInt32(0x8000_0008))))
        #expect(!machine.isTransmitting && !machine.isClosed)
    }

    @Test("The empty name selects the first export")
    func defaultExport() {
        var machine = negotiating()
        let actions = machine.received(NBDProtocol.optionRequest(.go, data: NBDProtocol.goData(name: "", infoRequests: [.blockSize])))
        #expect(actions.last == .startTransmission(Self.disk))
    }

    @Test("An unknown export name is ERR_UNKNOWN for GO and INFO, a disconnect for EXPORT_NAME")
    func unknownExport() {
        var machine = negotiating()
        for option in [NBDProtocol.Option.go, .info] {
            let actions = machine.received(NBDProtocol.optionRequest(option, data: NBDProtocol.goData(name: "nope", infoRequests: [.blockSize])))
            #expect(sent(actions).starts(with: optionReply(option.rawValue, 0x8000_0006, []).prefix(16)))
        }
        #expect(!machine.isClosed)
        #expect(isDisconnect(machine.received(NBDProtocol.optionRequest(.exportName, data: Array("nope".utf8))).last))
    }

    @Test("Malformed GO data (lengths that do not add up) is ERR_INVALID")
    func malformedGo() {
        var machine = negotiating()
        for data: [[UInt8]] in [[[0, 0]], [be(UInt32(100)), Array("disk".utf8), [0, 0]], [be(UInt32(4)), Array("disk".utf8), [0, 2, 0, 3]]] {
            let actions = machine.received(NBDProtocol.optionRequest(.go, data: data.flatMap { $0 }))
            #expect(sent(actions).starts(with: optionReply(7, 0x8000_0003).prefix(16)))
        }
        #expect(!machine.isClosed && !machine.isTransmitting)
    }

    @Test("NBD_OPT_LIST answers one SERVER reply per export, then ACK")
    func list() {
        var machine = negotiating()
        let actions = machine.received(NBDProtocol.optionRequest(.list))
        #expect(sent(actions) == optionReply(3, 2, be(UInt32(4)) + Array("disk".utf8)) + optionReply(3, 2, be(UInt32(2)) + Array("ro".utf8)) + optionReply(3, 1))
        let withData = machine.received(NBDProtocol.optionRequest(.list, data: [1]))
        #expect(sent(withData).starts(with: optionReply(3, 0x8000_0003).prefix(16)))
    }

    @Test("NBD_OPT_ABORT is acknowledged, then the connection closes")
    func abort() {
        var machine = negotiating()
        let actions = machine.received(NBDProtocol.optionRequest(.abort))
        #expect(sent(actions) == optionReply(2, 1))
        #expect(isDisconnect(actions.last))
        #expect(machine.received(NBDProtocol.optionRequest(.list)).isEmpty)
    }

    @Test("Unknown and unsupported options are ERR_UNSUP and negotiation goes on")
    func unsupportedOptions() {
        var machine = negotiating()
        for option: UInt32 in [8, 5, 9, 10, 11, 4, 0xdead_beef] {
            let actions = machine.received(NBDProtocol.optionRequest(NBDProtocol.Option(rawValue: option), data: [1, 2, 3]))
            #expect(sent(actions).starts(with: optionReply(option, 0x8000_0001).prefix(16)))
        }
        #expect(!machine.isClosed)
    }

    @Test("NBD_OPT_EXPORT_NAME: size, flags and 124 zero bytes unless the client set NO_ZEROES")
    func exportName() {
        var padded = NBDSessionMachine(exports: [Self.disk])
        _ = padded.connected()
        _ = padded.received([0, 0, 0, 1])
        let actions = padded.received(NBDProtocol.optionRequest(.exportName, data: Array("disk".utf8)))
        #expect(sent(actions) == be(UInt64(1 << 20)) + [0x00, 0x6d] + [UInt8](repeating: 0, count: 124))
        #expect(padded.isTransmitting)

        var machine = negotiating()
        #expect(sent(machine.received(NBDProtocol.optionRequest(.exportName, data: []))) == be(UInt64(1 << 20)) + [0x00, 0x6d])
    }

    @Test("A bad option magic, an oversized option and too many options disconnect")
    func hostileOptions() {
        var badMagic = negotiating()
        #expect(isDisconnect(badMagic.received(Array("GET / HTTP/1.1\r\n\r\n".utf8)).last))

        var oversized = negotiating()
        #expect(isDisconnect(oversized.received(Array("IHAVEOPT".utf8) + be(UInt32(7)) + be(UInt32(4097))).last))

        var limits = NBDLimits()
        limits.optionsPerNegotiationMax = 3
        var chatty = negotiating(limits: limits)
        let actions = chatty.received(Array(repeating: NBDProtocol.optionRequest(.list), count: 4).flatMap { $0 })
        #expect(isDisconnect(actions.last))
    }

    @Test("A truncated option waits for the rest, whatever the split")
    func truncatedOption() {
        let bytes = NBDProtocol.optionRequest(.go, data: NBDProtocol.goData(name: "disk", infoRequests: [.blockSize]))
        for split in 1..<bytes.count {
            var machine = negotiating()
            #expect(machine.received(bytes[..<split]).isEmpty)
            #expect(machine.received(bytes[split...]).last == .startTransmission(Self.disk))
        }
    }

    @Test("Requests pipelined behind NBD_OPT_GO in the same bytes are served")
    func pipelinedAfterGo() {
        var machine = negotiating()
        let actions = machine.received(
            NBDProtocol.optionRequest(.go, data: NBDProtocol.goData(name: "disk", infoRequests: [.blockSize]))
                + request(0, handle: 9, offset: 512, length: 1024))
        #expect(actions.last == .read(handle: 9, offset: 512, length: 1024))
    }

    // MARK: Commands

    @Test("READ goes to the backend; its completion becomes a reply with the data")
    func read() {
        var machine = transmitting()
        #expect(machine.received(request(0, handle: 1, offset: 4096, length: 512)) == [.read(handle: 1, offset: 4096, length: 512)])
        let data = [UInt8](repeating: 0xab, count: 512)
        #expect(machine.completed(handle: 1, .success(data: data)) == [.sendBytes(reply(handle: 1) + data)])
        #expect(machine.inFlightCount == 0)
    }

    @Test("WRITE carries its payload and FUA; WRITE_ZEROES and TRIM carry FUA; FLUSH goes to the backend")
    func writeSideCommands() {
        var machine = transmitting()
        let payload = (0..<1024).map { UInt8(truncatingIfNeeded: $0) }
        #expect(machine.received(request(1, handle: 2, offset: 0, length: 1024, flags: 1) + payload) == [.write(handle: 2, offset: 0, payload: payload, fua: true)])
        #expect(machine.received(request(6, handle: 3, offset: 512, length: 512, flags: 2)) == [.writeZeroes(handle: 3, offset: 512, length: 512, fua: false)])
        #expect(machine.received(request(4, handle: 4, offset: 1024, length: 512, flags: 1)) == [.trim(handle: 4, offset: 1024, length: 512, fua: true)])
        #expect(machine.received(request(3, handle: 5)) == [.flush(handle: 5)])
        #expect(machine.inFlightCount == 4)
        #expect(machine.completed(handle: 3, .failure(.ioError)) == [.sendBytes(reply(handle: 3, error: 5))])
    }

    @Test("Replies go out in completion order, not request order")
    func outOfOrderReplies() {
        var machine = transmitting()
        _ = machine.received(request(0, handle: 1, length: 512) + request(0, handle: 2, length: 512))
        let two = [UInt8](repeating: 2, count: 512)
        let one = [UInt8](repeating: 1, count: 512)
        #expect(machine.completed(handle: 2, .success(data: two)) == [.sendBytes(reply(handle: 2) + two)])
        #expect(machine.completed(handle: 1, .success(data: one)) == [.sendBytes(reply(handle: 1) + one)])
    }

    @Test("Bounds: beyond the end is EINVAL for READ and TRIM, ENOSPC for WRITE and WRITE_ZEROES, without the backend")
    func bounds() {
        var machine = transmitting()
        let size = Self.disk.sizeBytes
        #expect(machine.received(request(0, handle: 1, offset: size, length: 512)) == [.sendBytes(reply(handle: 1, error: 22))])
        #expect(machine.received(request(4, handle: 2, offset: size - 512, length: 1024)) == [.sendBytes(reply(handle: 2, error: 22))])
        #expect(machine.received(request(1, handle: 3, offset: size - 512, length: 1024) + [UInt8](repeating: 0, count: 1024)) == [.sendBytes(reply(handle: 3, error: 28))])
        #expect(machine.received(request(6, handle: 4, offset: UInt64.max - 511, length: 512)) == [.sendBytes(reply(handle: 4, error: 28))])
        // The offset plus length overflows 64 bits: still a clean error.
        #expect(machine.received(request(0, handle: 5, offset: UInt64.max & ~511, length: 1024)) == [.sendBytes(reply(handle: 5, error: 22))])
        #expect(machine.inFlightCount == 0 && machine.isTransmitting)
    }

    @Test("Unaligned offsets or lengths, zero lengths and oversized READs are EINVAL")
    func alignment() {
        var machine = transmitting()
        #expect(machine.received(request(0, handle: 1, offset: 1, length: 512)) == [.sendBytes(reply(handle: 1, error: 22))])
        #expect(machine.received(request(0, handle: 2, offset: 0, length: 100)) == [.sendBytes(reply(handle: 2, error: 22))])
        #expect(machine.received(request(0, handle: 3, offset: 0, length: 0)) == [.sendBytes(reply(handle: 3, error: 22))])
        #expect(machine.received(request(0, handle: 4, offset: 0, length: (32 << 20) + 512)) == [.sendBytes(reply(handle: 4, error: 22))])
    }

    @Test("Write-side commands on a read-only export are EPERM; FLUSH succeeds without the backend; READ works")
    func readOnlyExport() {
        var machine = transmitting("ro")
        #expect(machine.received(request(1, handle: 1, length: 512) + [UInt8](repeating: 7, count: 512)) == [.sendBytes(reply(handle: 1, error: 1))])
        #expect(machine.received(request(4, handle: 2, length: 512)) == [.sendBytes(reply(handle: 2, error: 1))])
        #expect(machine.received(request(6, handle: 3, length: 512)) == [.sendBytes(reply(handle: 3, error: 1))])
        #expect(machine.received(request(3, handle: 4)) == [.sendBytes(reply(handle: 4))])
        #expect(machine.received(request(0, handle: 5, length: 512)) == [.read(handle: 5, offset: 0, length: 512)])
    }

    @Test("Unknown commands, unadvertised commands and unknown flags are EINVAL and the session goes on")
    func unknownCommands() {
        var machine = transmitting()
        #expect(machine.received(request(5, handle: 1, length: 512)) == [.sendBytes(reply(handle: 1, error: 22))])  // CACHE
        #expect(machine.received(request(7, handle: 2, length: 512)) == [.sendBytes(reply(handle: 2, error: 22))])  // BLOCK_STATUS
        #expect(machine.received(request(0xffff, handle: 3)) == [.sendBytes(reply(handle: 3, error: 22))])
        #expect(machine.received(request(0, handle: 4, length: 512, flags: 4)) == [.sendBytes(reply(handle: 4, error: 22))])  // DF
        #expect(machine.received(request(1, handle: 5, length: 512, flags: 2) + [UInt8](repeating: 0, count: 512)) == [.sendBytes(reply(handle: 5, error: 22))])  // NO_HOLE on WRITE
        #expect(machine.received(request(0, handle: 6, length: 512)) == [.read(handle: 6, offset: 0, length: 512)])
    }

    @Test("A bad request magic, an oversized WRITE and a handle reused in flight disconnect")
    func hostileRequests() {
        var badMagic = transmitting()
        #expect(isDisconnect(badMagic.received([0xde, 0xad, 0xbe, 0xef] + [UInt8](repeating: 0, count: 24)).last))

        var oversized = transmitting()
        #expect(isDisconnect(oversized.received(request(1, handle: 1, length: (32 << 20) + 512)).last))

        var reused = transmitting()
        _ = reused.received(request(0, handle: 1, length: 512))
        #expect(isDisconnect(reused.received(request(0, handle: 1, length: 512)).last))
        #expect(reused.completed(handle: 1, .success(data: [UInt8](repeating: 0, count: 512))).isEmpty, "completions after close are dropped")
    }

    @Test("A truncated WRITE waits for its whole payload")
    func truncatedWrite() {
        var machine = transmitting()
        let payload = [UInt8](repeating: 5, count: 512)
        let bytes = request(1, handle: 1, offset: 512, length: 512) + payload
        for chunk in stride(from: 0, to: bytes.count - 1, by: 100) {
            #expect(machine.received(bytes[chunk..<min(chunk + 100, bytes.count - 1)]).isEmpty)
        }
        #expect(machine.received(bytes.suffix(1)) == [.write(handle: 1, offset: 512, payload: payload, fua: false)])
    }

    @Test("DISC waits for the requests in flight, replies to them, then disconnects; later bytes are ignored")
    func disconnectDrains() {
        var machine = transmitting()
        _ = machine.received(request(0, handle: 1, length: 512))
        #expect(machine.received(request(2, handle: 2) + request(0, handle: 3, length: 512)).isEmpty)
        #expect(machine.received(request(0, handle: 4, length: 512)).isEmpty)
        let actions = machine.completed(handle: 1, .success(data: [UInt8](repeating: 0, count: 512)))
        #expect(actions.count == 2 && isDisconnect(actions.last))

        var idle = transmitting()
        #expect(isDisconnect(idle.received(request(2, handle: 1)).last))
    }

    @Test("At the in-flight limit the machine pauses reading, keeps later requests buffered, and resumes on completion")
    func inFlightLimit() {
        var limits = NBDLimits()
        limits.inFlightRequestsMax = 2
        var machine = transmitting(limits: limits)
        let actions = machine.received((1...4).flatMap { request(0, handle: UInt64($0), length: 512) })
        #expect(actions == [.read(handle: 1, offset: 0, length: 512), .read(handle: 2, offset: 0, length: 512), .pauseReading])
        #expect(machine.received(request(0, handle: 5, length: 512)).isEmpty, "bytes that arrive while paused are buffered")
        let data = [UInt8](repeating: 0, count: 512)
        #expect(machine.completed(handle: 1, .success(data: data)) == [.sendBytes(reply(handle: 1) + data), .read(handle: 3, offset: 0, length: 512)])
        #expect(machine.completed(handle: 2, .success(data: data)) == [.sendBytes(reply(handle: 2) + data), .read(handle: 4, offset: 0, length: 512)])
        #expect(machine.completed(handle: 3, .success(data: data)) == [.sendBytes(reply(handle: 3) + data), .read(handle: 5, offset: 0, length: 512)])
        #expect(machine.completed(handle: 4, .success(data: data)) == [.sendBytes(reply(handle: 4) + data), .resumeReading])
    }

    @Test("Random bytes in every phase never trap")
    func fuzz() {
        var generator = SplitMix64(seed: 0x6e6264)
        for round in 0..<300 {
            var machine = round % 2 == 0 ? negotiating() : transmitting()
            for _ in 0..<8 {
                let count = Int(generator.next() % 64)
                var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                // Often start with a valid magic, so that the fuzz reaches the fields behind it.
                if generator.next() % 2 == 0 { bytes = (machine.isTransmitting ? [0x25, 0x60, 0x95, 0x13] : Array("IHAVEOPT".utf8)) + bytes }
                for action in machine.received(bytes) {
                    if case .read(let handle, _, let length) = action {
                        _ = machine.completed(handle: handle, .success(data: [UInt8](repeating: 0, count: Int(length))))
                    } else if case .write(let handle, _, _, _) = action {
                        _ = machine.completed(handle: handle, .done)
                    }
                }
            }
        }
    }
}

struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
