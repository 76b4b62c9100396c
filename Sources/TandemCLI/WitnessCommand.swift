import ArgumentParser
import ClusterDaemon
import Foundation
import Logging
import TandemConfig

/// `tandem witness`: the tiebreaker for two-node clusters, run on a third machine that both nodes reach.
struct WitnessCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "witness",
        abstract: "Run the witness (tiebreaker) that decides which side of a split may run resources.",
        discussion: """
        Listens on UDP (default port \(HaCfParser.witnessDefaultPort)) for the questions of the nodes whose ha.cf \
        names it (`witness ADDRESS[:PORT]`), signed with the key of --config-dir's authkeys, which must be the \
        clusters' own. It keeps no state on disk. Without --foreground it starts itself in the background (output \
        appended to <run-dir>/witness.log). See docs/cluster-manager.md, "The witness".
        """)

    @Option(help: ArgumentHelp("Address and port to listen on.", valueName: "address[:port]"))
    var listen = "0.0.0.0"
    @Flag(help: "Stay in the foreground and log to standard error.") var foreground = false
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        guard let endpoint = WitnessEndpoint(parsing: listen, defaultPort: HaCfParser.witnessDefaultPort) else {
            throw ValidationError("--listen takes an IPv4 address, optionally with :PORT; got '\(listen)'")
        }
        let configDirectory = URL(fileURLWithPath: global.configDirectory).standardizedFileURL.path
        guard foreground else {
            let logPath = global.runDirectory + "/witness.log"
            try BackgroundDaemon.start(
                name: "witness",
                arguments: ["witness", "--foreground", "--listen", listen, "--config-dir", configDirectory, "--run-dir", global.runDirectory],
                runDirectory: global.runDirectory
            ) { pid in
                // No control socket: the witness says in its log that it listens.
                (try? String(contentsOfFile: logPath, encoding: .utf8))?.contains("(pid \(pid))") == true
            }
            return
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .info
            return handler
        }
        let code = await WitnessMain.run(
            options: WitnessMain.Options(configDirectory: configDirectory, listen: endpoint),
            logger: Logger(label: "tandem.witness"))
        if code != 0 { throw ExitCode(code) }
    }
}
