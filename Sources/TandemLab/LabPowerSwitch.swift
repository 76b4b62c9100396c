#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation

/// A request to the lab's power switch: `action` is off, on, reboot or status, for `host`.
struct PowerSwitchRequest: Codable, Sendable {
    var version: Int
    var action: String
    var host: String
}

struct PowerSwitchResponse: Codable, Sendable {
    var version: Int
    var succeeded: Bool
    /// on or off, after the action.
    var power: String?
    var message: String
}

/// The lab's power switch: what an IPMI board or a networked PDU is to a real cluster. It runs outside the
/// machines (started by `lab up --stonith`), where it can see their inits, and answers on a Unix socket in the lab's
/// folder, which the nodes reach whatever happens to their network links (a management network that the
/// scenarios do not cut). Turning a node off is the lab's power loss: its links go down and every process in it
/// is killed at once. Requests are served one at a time, as a real switch does.
public enum LabPowerSwitch {
    static let version = 1
    static let requestBytesMaximum = 1024

    /// Serves until killed (SIGTERM from `lab down`). Returns an exit status when it cannot start.
    public static func serve(lab: Lab) -> Int32 {
        let path = lab.layout.powerSwitchSocket
        guard path.utf8.count < 108 else {
            FileHandle.standardError.write(Data("power switch: \(path) is too long for a Unix socket\n".utf8))
            return 64
        }
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { return 20 }
        unlink(path)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(path, 0o600) == 0, listen(listener, 16) == 0 else {
            FileHandle.standardError.write(Data("power switch: cannot listen on \(path): \(String(cString: strerror(errno)))\n".utf8))
            return 20
        }
        // Written once it listens: `lab up` waits for this file.
        try? "\(getpid())\n".write(toFile: lab.layout.powerSwitchPIDFile, atomically: true, encoding: .utf8)
        lab.say("power switch listening on \(path)")
        while true {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            serve(connection, lab: lab)
            close(connection)
        }
    }

    private static func serve(_ connection: Int32, lab: Lab) {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count <= requestBytesMaximum, read(connection, &byte, 1) == 1, byte != UInt8(ascii: "\n") { line.append(byte) }
        let response: PowerSwitchResponse
        if let request = try? JSONDecoder().decode(PowerSwitchRequest.self, from: Data(line)), request.version == version {
            response = handle(request, lab: lab)
            lab.say("\(request.action) \(request.host): \(response.succeeded ? "done" : "FAILED"): \(response.message)")
        } else {
            response = PowerSwitchResponse(version: version, succeeded: false, power: nil, message: "not a power switch request (version \(version))")
        }
        guard var answer = try? JSONEncoder().encode(response) else { return }
        answer.append(UInt8(ascii: "\n"))
        _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    static func handle(_ request: PowerSwitchRequest, lab: Lab) -> PowerSwitchResponse {
        func answer(_ succeeded: Bool, _ message: String, host: LabHost? = nil) -> PowerSwitchResponse {
            PowerSwitchResponse(
                version: version, succeeded: succeeded, power: host.map { lab.machines.isRunning($0) ? "on" : "off" },
                message: message)
        }
        guard let host = LabHost(rawValue: request.host), host.isClusterNode else {
            return answer(false, "no outlet for '\(request.host)': the switch powers \(LabHost.nodes.map(\.rawValue).joined(separator: " and "))")
        }
        do throws(LabError) {
            switch request.action {
            case "status":
                return answer(true, "\(host.rawValue) is \(lab.machines.isRunning(host) ? "on" : "off")", host: host)
            case "off":
                return answer(true, try powerOff(host, lab: lab), host: host)
            case "on":
                return answer(true, try powerOn(host, lab: lab), host: host)
            case "reboot":
                let off = try powerOff(host, lab: lab)
                return answer(true, off + "; " + (try powerOn(host, lab: lab)), host: host)
            default:
                return answer(false, "unknown action '\(request.action)' (off, on, reboot, status)")
            }
        } catch {
            return answer(false, error.message, host: host)
        }
    }

    private static func powerOff(_ host: LabHost, lab: Lab) throws(LabError) -> String {
        guard lab.machines.isRunning(host) else { return "\(host.rawValue) was already off" }
        try lab.network.setLinks(host, up: false)
        let count = try lab.powerOff(host)
        return "\(host.rawValue) powered off (\(count) processes, links down)"
    }

    private static func powerOn(_ host: LabHost, lab: Lab) throws(LabError) -> String {
        guard !lab.machines.isRunning(host) else { return "\(host.rawValue) was already on" }
        try lab.powerOn(host)
        return "\(host.rawValue) powered on (replicad, up, heartbeatd)"
    }
}

/// `tandem lab fence-agent`: the lab's fence agent, in the fence-agents style (`fence_ipmilan` and the others):
/// `name=value` lines on standard input (`action`, the node as `port`, `plug` or `nodename`, and `socket`, the power
/// switch's socket), exit status 0 on success, 1 on failure; `status` exits 0 when the node is on and 2 when off.
public enum LabFenceAgent {
    public static func run(input: String, say: (String) -> Void) -> Int32 {
        var parameters: [String: String] = [:]
        for line in input.split(separator: "\n").prefix(64) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty, !trimmed.hasPrefix("#") else { continue }
            let parts = trimmed.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else {
                say("fence_tandem_lab: '\(trimmed)' is not name=value")
                return 1
            }
            parameters[parts[0]] = parts[1]
        }
        let action = parameters["action"] ?? parameters["option"] ?? "reboot"
        if action == "metadata" {
            say("<?xml version=\"1.0\" ?><resource-agent name=\"fence_tandem_lab\" shortdesc=\"The Tandem lab's power switch\"/>")
            return 0
        }
        if action == "list" {
            for node in LabHost.nodes { say(node.rawValue) }
            return 0
        }
        guard let socket = parameters["socket"] else {
            say("fence_tandem_lab: no socket= parameter (the power switch's socket)")
            return 1
        }
        let host = parameters["port"] ?? parameters["plug"] ?? parameters["nodename"] ?? ""
        let switchAction = action == "monitor" ? "status" : action
        let client = LineControlClient(
            socketPath: socket, daemonName: "the lab's power switch", startHint: "tandem lab up --stonith starts it",
            responseBytesMaximum: 4096)
        do throws(ControlClientError) {
            let response: PowerSwitchResponse = try client.exchange(
                PowerSwitchRequest(version: LabPowerSwitch.version, action: switchAction, host: host), answerTimeout: .seconds(60))
            say("fence_tandem_lab: \(response.message)")
            guard response.succeeded else { return 1 }
            if action == "status" { return response.power == "on" ? 0 : 2 }
            return 0
        } catch {
            say("fence_tandem_lab: \(error.message)")
            return 1
        }
    }
}
