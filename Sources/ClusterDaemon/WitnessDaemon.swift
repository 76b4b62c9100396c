#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CoreSupport
import DaemonSupport
import FencingCore
import Logging
import MembershipCore
import ServiceLifecycle
import Synchronization
import TandemConfig

/// `tandem witness`: the tiebreaker of two-node clusters, for a third machine. It keeps no state on disk and needs
/// only authkeys (the clusters' key) and a UDP port: every question is answered from memory by `WitnessArbiter`.
/// A restarted witness grants nothing until it has listened for twice the askers' deadtime (see `WitnessArbiter`).
public enum WitnessMain {
    public struct Options: Sendable {
        public var configDirectory: String
        /// Where to listen; 0.0.0.0 for every address.
        public var listen: WitnessEndpoint

        public init(configDirectory: String, listen: WitnessEndpoint) {
            self.configDirectory = configDirectory
            self.listen = listen
        }
    }

    public static func run(options: Options, logger: Logger) async -> Int32 {
        let authkeysPath = options.configDirectory.hasSuffix("/")
            ? options.configDirectory + ConfigDirectory.authkeysFileName
            : options.configDirectory + "/" + ConfigDirectory.authkeysFileName
        let keys: Authkeys
        let socket: WitnessSocket
        do throws(DaemonStartError) {
            do {
                keys = try AuthkeysParser.load(path: authkeysPath).model
            } catch {
                throw DaemonStartError(error.description, exitCode: 1)
            }
            socket = try WitnessSocket.open(listen: options.listen)
        } catch {
            logger.critical("\(error.message)")
            return error.exitCode
        }
        logger.notice("witness listening on \(options.listen) (pid \(getpid())), keys from \(authkeysPath)")
        let server = WitnessServer(socket: socket, authenticator: MessageAuthenticator(keys: keys), logger: logger)
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            logger.error("the witness ended with an error: \(error)")
            return 20
        }
        logger.notice("witness stopped")
        return 0
    }
}

/// Answers questions on a thread of its own until SIGTERM. Hostile input (not decoding, not signed with a key of
/// authkeys, not a question) is counted and dropped without an answer.
struct WitnessServer: Service {
    let socket: WitnessSocket
    let authenticator: MessageAuthenticator
    let logger: Logger

    func run() async throws {
        let socket = self.socket
        let authenticator = self.authenticator
        let logger = self.logger
        let loop = DaemonThread.start(name: "witness") {
            var arbiter = WitnessArbiter(startedAt: DaemonClock.now)
            var dropped: UInt64 = 0
            var holders: [String: String] = [:]
            while let (datagram, sender) = socket.receive() {
                guard let message = try? HeartbeatWire.decode(datagram), authenticator.verify(message) == .authentic,
                    case .ask(let ask)? = WitnessMessage(message)
                else {
                    dropped += 1
                    if LogThrottle.shouldLog(occurrence: dropped) {
                        logger.warning("dropped a datagram from \(sender): not a signed witness question (\(dropped) so far)")
                    }
                    continue
                }
                let answer = arbiter.asked(ask, now: DaemonClock.now)
                // The log says when a cluster's grant changes hands, not every question.
                let cluster = [ask.node, ask.peer].map { $0.lowercased() }.sorted().joined(separator: "/")
                let holder = arbiter.holder(node: ask.node, peer: ask.peer) ?? "nobody"
                if holders[cluster] != holder {
                    logger.notice("\(cluster): the grant is held by \(holder) (\(answer.reason))")
                    holders[cluster] = holder
                }
                var reply = WitnessMessage.answer(answer).encode()
                reply[HeartbeatField.source] = "witness"
                socket.send(HeartbeatWire.encode(authenticator.sign(reply)), to: sender)
            }
        }
        try? await gracefulShutdown()
        socket.close()
        await DaemonThread.run(name: "witness-join") { loop.join() }
    }
}

/// The witness's UDP socket: questions come in with their sender's address, answers go back to it.
final class WitnessSocket: Sendable {
    private let descriptor: Int32
    private let closing = ClosingFlag()

    private init(descriptor: Int32) { self.descriptor = descriptor }

    static func open(listen: WitnessEndpoint) throws(DaemonStartError) -> WitnessSocket {
        let descriptor = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw DaemonStartError("witness: socket: \(String(cString: strerror(errno)))", exitCode: 20) }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_port = listen.port.bigEndian
        local.sin_addr.s_addr = listen.address.rawValue.bigEndian
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(descriptor)
            throw DaemonStartError("witness: cannot listen on \(listen): \(message)", exitCode: 20)
        }
        return WitnessSocket(descriptor: descriptor)
    }

    /// The next datagram and its sender, or nil once the socket is closed.
    func receive() -> ([UInt8], WitnessEndpoint)? {
        var buffer = [UInt8](repeating: 0, count: HeartbeatLink.receiveBufferBytes)
        while true {
            var sender = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let count = buffer.withUnsafeMutableBytes { bytes in
                withUnsafeMutablePointer(to: &sender) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(descriptor, bytes.baseAddress!, bytes.count, 0, $0, &length) }
                }
            }
            if count < 0 && errno == EINTR { continue }
            if count < 0 || closing.isSet { return nil }
            if count == 0 { continue }
            let address = IPv4Address(rawValue: UInt32(bigEndian: sender.sin_addr.s_addr))
            return (Array(buffer[0..<count]), WitnessEndpoint(address: address, port: UInt16(bigEndian: sender.sin_port)))
        }
    }

    func send(_ datagram: [UInt8], to endpoint: WitnessEndpoint) {
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = endpoint.port.bigEndian
        target.sin_addr.s_addr = endpoint.address.rawValue.bigEndian
        _ = datagram.withUnsafeBytes { bytes in
            withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    func close() {
        closing.set()
        Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
    }

    deinit { Glibc.close(descriptor) }
}
