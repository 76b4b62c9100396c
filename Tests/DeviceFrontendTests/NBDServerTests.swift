import Foundation
import NIOCore
import NIOPosix
import TandemTestSupport
import Testing

@testable import DeviceFrontend

/// The NIO server over a real Unix domain socket: a hand-written blocking client, then libnbd's own tools.
@Suite("NBD server over a Unix socket", .serialized, .timeLimit(.minutes(2)))
struct NBDServerTests {
    static let exportSizeBytes = 1 << 20

    func withServer(
        backend: InMemoryNBDBackend, limits: NBDLimits = NBDLimits(),
        _ body: (_ socketPath: String) async throws -> Void
    ) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let socketPath = "/tmp/tandem-nbd-\(UInt32.random(in: 0...UInt32.max)).sock"
        let server = try await NBDServer.start(
            address: .unixDomainSocket(path: socketPath), exports: [.init(name: "r0", backend: backend)], limits: limits,
            group: group)
        do {
            try await body(socketPath)
        } catch {
            try await server.close()
            try await group.shutdownGracefully()
            throw error
        }
        try await server.close()
        try await group.shutdownGracefully()
        #expect(!FileManager.default.fileExists(atPath: socketPath), "close() removes the socket file")
    }

    @Test("A hand-written client negotiates with NBD_OPT_GO, writes, reads back, trims, flushes and disconnects")
    func handWrittenClient() async throws {
        let backend = InMemoryNBDBackend(sizeBytes: Self.exportSizeBytes)
        try await withServer(backend: backend) { socketPath in
            let client = try BlockingSocket(unixPath: socketPath)
            defer { client.close() }
            #expect(try client.read(18) == NBDProtocol.greeting())
            try client.write(NBDProtocol.clientFlags([.fixedNewstyle, .noZeroes]))
            try client.write(NBDProtocol.optionRequest(.go, data: NBDProtocol.goData(name: "r0", infoRequests: [.blockSize])))
            // INFO export (20 + 12), INFO block size (20 + 14), ACK (20).
            let negotiation = try client.read(32 + 34 + 20)
            #expect(Array(negotiation[22..<30]) == [0, 0, 0, 0, 0, 0x10, 0, 0], "size 1 MiB")
            #expect(Array(negotiation[66..<86]) == NBDProtocol.optionReply(.go, .ack))

            let payload = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try client.write(NBDProtocol.RequestHeader(flags: .fua, type: .write, handle: 1, offset: 8192, length: 4096).encode() + payload)
            #expect(try client.read(16) == NBDProtocol.simpleReply(handle: 1))
            try client.write(NBDProtocol.RequestHeader(type: .read, handle: 2, offset: 8192, length: 4096).encode())
            #expect(try client.read(16 + 4096) == NBDProtocol.simpleReply(handle: 2, data: payload))
            try client.write(NBDProtocol.RequestHeader(type: .trim, handle: 3, offset: 8192, length: 512).encode())
            #expect(try client.read(16) == NBDProtocol.simpleReply(handle: 3))
            try client.write(NBDProtocol.RequestHeader(type: .flush, handle: 4, offset: 0, length: 0).encode())
            #expect(try client.read(16) == NBDProtocol.simpleReply(handle: 4))
            try client.write(NBDProtocol.RequestHeader(type: .read, handle: 5, offset: UInt64(Self.exportSizeBytes), length: 512).encode())
            #expect(try client.read(16) == NBDProtocol.simpleReply(handle: 5, error: .invalidArgument))
            try client.write(NBDProtocol.RequestHeader(type: .disconnect, handle: 6, offset: 0, length: 0).encode())
            #expect(try client.readToEnd().isEmpty, "the server closes after DISC")

            #expect(Array(backend.contents[8192..<8704]) == [UInt8](repeating: 0, count: 512))
            #expect(Array(backend.contents[8704..<12288]) == Array(payload[512...]))
            #expect(backend.callCount("flush") == 1)
        }
    }

    @Test("Many pipelined requests beyond the in-flight limit are all answered")
    func pipelined() async throws {
        let backend = InMemoryNBDBackend(sizeBytes: Self.exportSizeBytes)
        var limits = NBDLimits()
        limits.inFlightRequestsMax = 2
        try await withServer(backend: backend, limits: limits) { socketPath in
            let client = try BlockingSocket(unixPath: socketPath)
            defer { client.close() }
            _ = try client.read(18)
            try client.write(NBDProtocol.clientFlags([.fixedNewstyle, .noZeroes]))
            try client.write(NBDProtocol.optionRequest(.exportName, data: Array("r0".utf8)))
            _ = try client.read(10)
            var requests: [UInt8] = []
            for handle in 0..<64 {
                requests += NBDProtocol.RequestHeader(type: .write, handle: UInt64(handle), offset: UInt64(handle) * 512, length: 512).encode()
                requests += [UInt8](repeating: UInt8(handle), count: 512)
            }
            try client.write(requests)
            var handles: Set<UInt64> = []
            for _ in 0..<64 {
                let reply = try client.read(16)
                #expect(Array(reply[0..<8]) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0])
                handles.insert(reply[8..<16].reduce(0) { $0 << 8 | UInt64($1) })
            }
            #expect(handles == Set(0..<64))
            #expect(backend.contents[63 * 512] == 63)
        }
    }

    @Test("Hostile bytes close that connection; the server still serves the next client")
    func hostileClient() async throws {
        let backend = InMemoryNBDBackend(sizeBytes: Self.exportSizeBytes)
        try await withServer(backend: backend) { socketPath in
            let hostile = try BlockingSocket(unixPath: socketPath)
            _ = try hostile.read(18)
            try hostile.write([0, 0, 0, 3] + Array("GET / HTTP/1.1\r\n\r\n".utf8))
            #expect(try hostile.readToEnd().isEmpty)
            hostile.close()

            let client = try BlockingSocket(unixPath: socketPath)
            defer { client.close() }
            #expect(try client.read(18) == NBDProtocol.greeting())
            try client.write(NBDProtocol.clientFlags([.fixedNewstyle]))
            try client.write(NBDProtocol.optionRequest(.abort))
            #expect(try client.read(20) == NBDProtocol.optionReply(.abort, .ack))
        }
    }

    /// libnbd's tools are a second, independent implementation of the client side. They are a test dependency
    /// (scripts/install-dependencies installs libnbd-bin): a missing tool fails the test rather than skipping it.
    @Test("nbdinfo sees the export; nbdcopy copies 1 MiB in and out byte-identically")
    func libnbdTools() async throws {
        let nbdcopy = try #require(Self.tool("nbdcopy"), "nbdcopy not found: install libnbd-bin")
        let nbdinfo = try #require(Self.tool("nbdinfo"), "nbdinfo not found: install libnbd-bin")
        let backend = InMemoryNBDBackend(sizeBytes: Self.exportSizeBytes)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-nbd-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var generator = SplitMix64(seed: 42)
        let image = (0..<Self.exportSizeBytes).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let input = directory.appendingPathComponent("in.img").path
        let output = directory.appendingPathComponent("out.img").path
        try Data(image).write(to: URL(fileURLWithPath: input))

        try await withServer(backend: backend) { socketPath in
            let uri = "nbd+unix:///r0?socket=\(socketPath)"
            let info = try ExternalCommand.run(nbdinfo, ["--json", uri])
            #expect(info.status == 0, "\(info.standardError)")
            #expect(info.standardOutput.contains("\"export-size\": \(Self.exportSizeBytes)"), "\(info.standardOutput)")
            #expect(info.standardOutput.contains("\"is_read_only\": false"), "\(info.standardOutput)")

            let copyIn = try ExternalCommand.run(nbdcopy, [input, uri])
            #expect(copyIn.status == 0, "\(copyIn.standardError)")
            #expect(backend.contents == image)

            let copyOut = try ExternalCommand.run(nbdcopy, [uri, output])
            #expect(copyOut.status == 0, "\(copyOut.standardError)")
            #expect(FileManager.default.contents(atPath: output) == Data(image))
        }
    }

    static func tool(_ name: String) -> String? { ExternalCommand.tool(name) }
}
