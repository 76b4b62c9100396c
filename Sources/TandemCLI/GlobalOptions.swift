import ArgumentParser
import Foundation

/// Options every verb takes. With them several nodes can run on one machine, each in its own namespaces and
/// with its own configuration and runtime folders (that is how the lab runs two nodes).
public struct GlobalOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("config-dir"), help: ArgumentHelp(
        "Folder holding drbd.conf (and drbd.d/), ha.cf, authkeys and haresources.", valueName: "dir"))
    public var configDirectory: String = "/etc/tandem"

    @Option(name: .customLong("run-dir"), help: ArgumentHelp(
        "Folder for control sockets, pid files and NBD sockets.", valueName: "dir"))
    public var runDirectory: String = "/run/tandem"

    @Option(name: .customLong("node"), help: ArgumentHelp(
        "This node's name as the configuration knows it (default: $TANDEM_NODE, else `uname -n`).", valueName: "name"))
    public var nodeOverride: String?

    public init() {}

    /// The node name: --node, else TANDEM_NODE, else the kernel's node name, as Heartbeat and drbdadm use it.
    public var nodeName: String {
        if let nodeOverride, !nodeOverride.isEmpty { return nodeOverride }
        if let fromEnvironment = ProcessInfo.processInfo.environment["TANDEM_NODE"], !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: &name.nodename) { buffer in
            String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    public func path(_ file: String) -> String {
        (configDirectory as NSString).appendingPathComponent(file)
    }

    static let optionsWithValue: Set<String> = ["--config-dir", "--run-dir", "--node"]

    /// Moves global options that appear before the first verb to the end, where ArgumentParser looks for them.
    /// Everything after a `--` is left alone.
    public static func hoisted(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var rest: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = argument.split(separator: "=", maxSplits: 1).first.map(String.init) ?? argument
            if argument == "--" {
                rest += arguments[index...]
                break
            }
            if optionsWithValue.contains(name), rest.isEmpty {
                leading.append(argument)
                if !argument.contains("="), index + 1 < arguments.count {
                    leading.append(arguments[index + 1])
                    index += 1
                }
            } else {
                rest.append(argument)
            }
            index += 1
        }
        guard !leading.isEmpty else { return arguments }
        if let separator = rest.firstIndex(of: "--") {
            rest.insert(contentsOf: leading, at: separator)
            return rest
        }
        return rest + leading
    }
}
