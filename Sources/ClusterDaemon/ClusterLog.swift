#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import DaemonSupport
import Foundation
import Logging
import MembershipCore

/// heartbeatd's log: every line to the daemon's logger (standard error, or syslog under systemd), and to ha.cf's
/// `logfile` (and, for debug lines too, `debugfile`) in Heartbeat's format, which operators grep:
/// `heartbeat[PID]: 2026/11/22_06:30:00 info: Resources being acquired from node1.`
final class ClusterLog: @unchecked Sendable {
    // @unchecked: the file handles are written only with `lock` held.
    private let logger: Logger
    private let lock = PthreadLock()
    private let logFile: Int32?
    private let debugFile: Int32?
    private let pid = getpid()

    init(logger: Logger, logFilePath: String?, debugFilePath: String?) {
        self.logger = logger
        func open(_ path: String?) -> Int32? {
            guard let path else { return nil }
            let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            if descriptor < 0 { logger.error("cannot open log file \(path): \(String(cString: strerror(errno)))") }
            return descriptor < 0 ? nil : descriptor
        }
        logFile = open(logFilePath)
        debugFile = open(debugFilePath)
    }

    deinit {
        if let logFile { close(logFile) }
        if let debugFile { close(debugFile) }
    }

    func log(_ level: LogLevel, _ message: String) {
        switch level {
        case .debug: logger.debug("\(message)")
        case .info: logger.info("\(message)")
        case .notice: logger.notice("\(message)")
        case .warning: logger.warning("\(message)")
        case .error: logger.error("\(message)")
        case .critical: logger.critical("\(message)")
        }
        let label = level == .warning ? "WARN" : level == .critical ? "CRIT" : level == .error ? "ERROR" : level.rawValue
        let line = Array("heartbeat[\(pid)]: \(Self.timestamp()) \(label): \(message)\n".utf8)
        lock.withLock {
            if level != .debug, let logFile { _ = line.withUnsafeBytes { write(logFile, $0.baseAddress, $0.count) } }
            if let debugFile { _ = line.withUnsafeBytes { write(debugFile, $0.baseAddress, $0.count) } }
        }
    }

    func info(_ message: String) { log(.info, message) }
    func warning(_ message: String) { log(.warning, message) }
    func error(_ message: String) { log(.error, message) }

    /// Heartbeat's time format: 2026/11/22_06:30:00.
    private static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(parts.tm_year + 1900)/\(two(parts.tm_mon + 1))/\(two(parts.tm_mday))_\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
    }
}
