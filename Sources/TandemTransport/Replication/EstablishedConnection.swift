#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import ReplicationCore

/// An established connection's two sockets, served by threads of their own, as DRBD's receiver and ack-receiver
/// threads serve its sockets.
///
/// Why not the event loop: a replicated write used to cross the event loop four times (send and receive on each
/// node), each crossing a thread wake-up that costs more, on a 2-core machine, than the write's own processing.
/// Here a packet is written to the socket by the thread that sends it, and a received packet is handed to
/// `packetSink` by the thread that read it, which may process it there and then (a receiver thread is allowed to
/// block: it may write the peer's data to disk itself).
///
/// Threads: one receiver per socket (blocking reads, then decoding and delivery, in order), one writer per socket
/// (it sleeps until a send finds the socket's buffer full; then it writes what is queued, in order, and sends go
/// to its queue until it has caught up).
///
/// The end: the first of a read error, a corrupt frame, a send queue over its limit, `drop` or `shutDown` ends the
/// connection. The sockets are shut down (after a `drop`, once the queued frames are written, for at most
/// `timeouts.drain`), every thread leaves, and the last one closes the descriptors and calls `ended` once. No packet
/// is delivered after `ended`.
///
/// End of file is the peer closing the connection, which it does to both sockets, in no particular order. What the
/// peer sent before closing still counts, on both sockets: a peer that detects a split brain sends its handshake
/// packets on the data socket and then drops the connection, and this side must read them to detect the split
/// brain too. So end of file on one socket ends the connection only once the other socket's receiver has read to its
/// own end, or after `timeouts.peerClose`.
final class EstablishedConnection: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `lock`; the descriptors are immutable and closed only by the
    // last thread to leave, after which nothing uses them.

    /// How the connection ended, as `ended` reports it.
    enum End: Sendable {
        /// This side gave the connection up: `reason` is for the node, `detail` for the log.
        case failed(reason: String, detail: String)
        /// The node asked (`dropConnection`): it hears nothing back.
        case dropped
        /// The transport shut down.
        case shutDown
    }

    /// One socket as the event loop hands it over: the descriptor (now this connection's), the bytes already read
    /// past the hello and the packets already decoded from them.
    struct HandedOverSocket {
        var descriptor: CInt
        var channel: PacketChannel
        var heldPackets: [Packet]
        var decoder: PacketDecoder
    }

    private struct Side {
        let descriptor: CInt
        /// Frames waiting for the writer, oldest first; the first may be partly written already.
        var queue: [[UInt8]] = []
        var queuedBytes = 0
        /// The writer is writing frames it took from the queue: sends queue behind them.
        var writerBusy = false
    }

    static let receiveBufferBytes = 256 << 10
    /// The bounds on the two ways of ending that wait: for the writers after a `drop`, and for the other receiver
    /// after the peer closed one socket. Short: the node waits for these before it may connect again.
    struct Timeouts: Sendable {
        var drain: Duration = .seconds(1)
        var peerClose: Duration = .seconds(1)
    }

    let generation: UInt64
    private let lock = PthreadLock()
    private var sides: [PacketChannel: Side]
    private var handedOver: [PacketChannel: HandedOverSocket]
    private var end: End?
    /// After `drop`: the writers finish their queues before the sockets are shut down, until `drainDeadline`.
    private var draining = false
    private var drainDeadline = MonotonicInstant(nanoseconds: 0)
    private var socketsShutDown = false
    private var paused = false
    /// Set when a receiver reads end of file: the peer is closing, and sends go nowhere.
    private var peerClosing: PacketChannel?
    private var writersRunning = 0
    private var threadsRunning = 0
    private let frameBytesMax: Int
    private let sendQueueBytesMax: Int
    private let timeouts: Timeouts
    private let packetSink: @Sendable (Packet) -> Void
    private let ended: @Sendable (EstablishedConnection, End) -> Void

    /// - Parameters:
    ///   - packetSink: called on a receiver thread with each packet, in order per socket; may block.
    ///   - ended: called once, on the last thread to leave, after the descriptors are closed.
    init(
        generation: UInt64, data: HandedOverSocket, meta: HandedOverSocket, frameBytesMax: Int,
        sendQueueBytesMax: Int, timeouts: Timeouts = Timeouts(),
        packetSink: @escaping @Sendable (Packet) -> Void,
        ended: @escaping @Sendable (EstablishedConnection, End) -> Void
    ) {
        precondition(data.channel == .data && meta.channel == .meta, "sockets handed over as \(data.channel), \(meta.channel)")
        for socket in [data, meta] {
            // A writer blocked on a peer that does not read wakes up every so often to see whether to give up.
            var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(socket.descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        self.generation = generation
        self.sides = [.data: Side(descriptor: data.descriptor), .meta: Side(descriptor: meta.descriptor)]
        self.handedOver = [.data: data, .meta: meta]
        self.frameBytesMax = frameBytesMax
        self.sendQueueBytesMax = sendQueueBytesMax
        self.timeouts = timeouts
        self.packetSink = packetSink
        self.ended = ended
    }

    /// Closes the sockets of a connection that never started (the transport shut down first).
    func discard() {
        lock.withLock {
            precondition(threadsRunning == 0 && end == nil, "discarding a connection that started")
            end = .shutDown
            for side in sides.values { close(side.descriptor) }
        }
    }

    /// Starts the four threads. Packets flow from here on.
    func start() {
        lock.withLock {
            threadsRunning = 4
            writersRunning = 2
        }
        for channel in [PacketChannel.data, .meta] {
            let name = channel == .data ? "tdm-rx-data" : "tdm-rx-meta"
            DaemonThread.detach(name: name) { self.receive(on: channel) }
            DaemonThread.detach(name: channel == .data ? "tdm-tx-data" : "tdm-tx-meta") { self.write(on: channel) }
        }
    }

    // MARK: From any thread

    /// Writes `frame` at once if the socket takes it and nothing is queued before it; queues the rest for the
    /// writer otherwise. Past the queue limit the connection is given up.
    func send(_ frame: [UInt8], on channel: PacketChannel) {
        lock.withLock {
            // After the peer closed a socket, what is sent would only come back as a reset.
            guard end == nil, peerClosing == nil, let descriptor = sides[channel]?.descriptor else { return }
            var remaining = frame[...]
            if sides[channel]!.queue.isEmpty && !sides[channel]!.writerBusy {
                let written = frame.withUnsafeBytes {
                    Glibc.send(descriptor, $0.baseAddress, $0.count, CInt(MSG_DONTWAIT) | CInt(MSG_NOSIGNAL))
                }
                if written == frame.count { return }
                if written < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                    return endLocked(.failed(reason: "send failed", detail: "\(SystemCallError("send"))"))
                }
                remaining = frame[max(written, 0)...]
            }
            // In place: a copy of the side would copy its queue on every append.
            sides[channel]!.queue.append(Array(remaining))
            sides[channel]!.queuedBytes += remaining.count
            let queued = sides.values.reduce(0) { $0 + $1.queuedBytes }
            if queued > sendQueueBytesMax {
                return endLocked(.failed(
                    reason: "send queue over its limit",
                    detail: "\(queued) bytes queued, limit \(sendQueueBytesMax): the peer is not reading"))
            }
            lock.broadcast()
        }
    }

    /// max-buffers back-pressure: the data socket's receiver stops delivering and reading, or resumes.
    func setReceivingPaused(_ paused: Bool) {
        lock.withLock {
            self.paused = paused
            if !paused { lock.broadcast() }
        }
    }

    /// Whether a receiver has read the peer's end of file (for tests and diagnostics).
    var hasSeenPeerClose: Bool { lock.withLock { peerClosing != nil } }

    /// The node dropped the connection: frames already sent are still written (the split-brain handshake sent
    /// just before a drop must reach the peer), then the sockets close.
    func drop() {
        lock.withLock { endLocked(.dropped) }
    }

    /// The transport shuts down: the sockets close at once.
    func shutDown() {
        lock.withLock { endLocked(.shutDown) }
    }

    // MARK: Threads

    private func receive(on channel: PacketChannel) {
        let (descriptor, held, initialDecoder) = lock.withLock { () -> (CInt, [Packet], PacketDecoder) in
            let socket = handedOver.removeValue(forKey: channel)!
            return (socket.descriptor, socket.heldPackets, socket.decoder)
        }
        var decoder = initialDecoder
        var pending = held[...]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.receiveBufferBytes, alignment: 16)
        defer { buffer.deallocate() }
        receiving: while true {
            // Deliver what is decoded, one packet at a time, while the connection lasts and (data) is not paused.
            while true {
                guard waitUntilDeliverable(channel) else { break receiving }
                let packet: Packet?
                if let next = pending.popFirst() {
                    packet = next
                } else {
                    do {
                        packet = try decoder.next()
                    } catch {
                        fail("corrupt frame", detail: "\(error)")
                        break receiving
                    }
                }
                guard let packet else { break }
                packetSink(packet)
            }
            // After a full drain the decoder holds only the start of one frame: a frame longer than the limit is
            // refused once that many bytes have arrived, so one socket never holds more than about that much.
            if decoder.bufferedByteCount > frameBytesMax {
                fail("corrupt frame", detail: "a frame longer than \(frameBytesMax) bytes")
                break
            }
            let count = read(descriptor, buffer.baseAddress, buffer.count)
            if count > 0 {
                decoder.append(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
            } else if count == 0 {
                endOfFile(on: channel)
                break
            } else if errno != EINTR {
                fail("connection lost", detail: "\(SystemCallError("read on the \(channel) socket"))")
                break
            }
        }
        leave(writer: false)
    }

    /// Whether the receiver may deliver its next packet: false once the connection has ended; waits while the
    /// data socket is paused.
    private func waitUntilDeliverable(_ channel: PacketChannel) -> Bool {
        lock.withLock {
            while end == nil && channel == .data && paused {
                lock.wait(until: DaemonClock.now + .seconds(1))
            }
            return end == nil
        }
    }

    private func write(on channel: PacketChannel) {
        let descriptor = lock.withLock { sides[channel]!.descriptor }
        writing: while true {
            let frames = lock.withLock { () -> [[UInt8]]? in
                while true {
                    let side = sides[channel]!
                    if !side.queue.isEmpty && (end == nil || draining) {
                        sides[channel]!.queue = []
                        sides[channel]!.writerBusy = true
                        return side.queue
                    }
                    if end != nil { return nil }
                    lock.wait(until: DaemonClock.now + .seconds(1))
                }
            }
            guard let frames else { break }
            for frame in frames {
                var offset = 0
                while offset < frame.count {
                    let written = frame.withUnsafeBytes {
                        Glibc.send(descriptor, $0.baseAddress! + offset, $0.count - offset, CInt(MSG_NOSIGNAL))
                    }
                    if written > 0 {
                        offset += written
                        lock.withLock { sides[channel]!.queuedBytes -= written }
                        continue
                    }
                    if written < 0 && errno == EINTR { continue }
                    if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                        // SO_SNDTIMEO passed: the peer is slow to read. Keep trying, unless the sockets are shut
                        // down or a drop has waited long enough.
                        let stop = lock.withLock { socketsShutDown || drainExpiredLocked }
                        if stop { break writing }
                        continue
                    }
                    // Once the peer is closing, a failed send is expected; its end comes from the receivers.
                    let failure = SystemCallError("send on the \(channel) socket")
                    lock.withLock {
                        if peerClosing == nil { endLocked(.failed(reason: "send failed", detail: "\(failure)")) }
                    }
                    break writing
                }
                let giveUp = lock.withLock { drainExpiredLocked }
                if giveUp { break writing }
            }
            lock.withLock { sides[channel]!.writerBusy = false }
        }
        leave(writer: true)
    }

    /// A drop has waited `timeouts.drain` for the writers: they give up what is left.
    private var drainExpiredLocked: Bool { draining && DaemonClock.now > drainDeadline }

    /// End of file on `channel`. The first waits (its thread has nothing else to read) until the other receiver has
    /// read to its end too, or `timeouts.peerClose`; the second ends the connection.
    private func endOfFile(on channel: PacketChannel) {
        lock.withLock {
            guard end == nil else { return }
            if let first = peerClosing {
                return endLocked(.failed(
                    reason: "connection closed by the peer",
                    detail: "end of file on the \(first) socket, then on the \(channel) socket"))
            }
            peerClosing = channel
            let deadline = DaemonClock.now + timeouts.peerClose
            while end == nil && DaemonClock.now < deadline { lock.wait(until: deadline) }
            if end == nil {
                endLocked(.failed(
                    reason: "connection closed by the peer",
                    detail: "end of file on the \(channel) socket; the other was still open \(timeouts.peerClose) later"))
            }
        }
    }

    private func fail(_ reason: String, detail: String) {
        lock.withLock { endLocked(.failed(reason: reason, detail: detail)) }
    }

    /// Records the end (the first one counts) and shuts the sockets down, unless a drop waits for the writers.
    private func endLocked(_ reason: End) {
        if end == nil {
            end = reason
            if case .dropped = reason {
                draining = sides.values.contains { !$0.queue.isEmpty || $0.writerBusy }
                drainDeadline = DaemonClock.now + timeouts.drain
            }
        } else if draining, case .dropped = reason {
            return
        } else if draining {
            draining = false  // a failure or a shutdown during the drain: stop waiting for the writers
        }
        if !draining { shutDownSocketsLocked() }
        lock.broadcast()
    }

    /// Wakes every thread blocked on a socket: reads return end of file, writes fail.
    private func shutDownSocketsLocked() {
        guard !socketsShutDown else { return }
        socketsShutDown = true
        for side in sides.values { Glibc.shutdown(side.descriptor, CInt(SHUT_RDWR)) }
    }

    private func leave(writer: Bool) {
        let last = lock.withLock { () -> Bool in
            threadsRunning -= 1
            if writer {
                writersRunning -= 1
                if writersRunning == 0 && draining {
                    draining = false
                    shutDownSocketsLocked()
                    lock.broadcast()
                }
            }
            return threadsRunning == 0
        }
        guard last else { return }
        let (descriptors, reason) = lock.withLock { (sides.values.map(\.descriptor), end ?? .shutDown) }
        for descriptor in descriptors { close(descriptor) }
        ended(self, reason)
    }
}
