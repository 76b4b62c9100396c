import ArgumentParser
import DaemonSupport
import Foundation
import ReplicationCore
import ReplicationDaemon
import TandemConfig
import TandemStorage

/// The drbdadm verbs that act on resources. `create-md` works on the disks directly (the resource must not be
/// up); `dump-md`, `get-gi` and `show-gi` ask the daemon when the resource is up and read the disks otherwise; the
/// others talk to `tandem replicad` over its control socket (`<run-dir>/replicad.sock`).
///
/// Exit codes: 0 done; 1 drbd.conf has problems or does not define the resource for this node; 10 refused (the
/// reason is printed), timed out, or failed; 20 the daemon is not running; 64 usage. With several resources (or
/// `all`), every one is tried and the worst code is returned.
enum DaemonVerb {
    struct ResourceArguments: ParsableArguments {
        @Argument(help: "Resource names, or 'all'.")
        var resources: [String] = ["all"]
    }

    // MARK: State-changing verbs

    struct Up: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "up", abstract: "Attach the disk and connect to the peer.")
        @OptionGroup var target: ResourceArguments
        @Flag(name: .customLong("discard-my-data"), help: "Connect with --discard-my-data.") var discardMyData = false
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try AdmSession(verb: "up", global).perform(.up, target) { $0.discardMyData = discardMyData }
        }
    }

    struct Down: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "down", abstract: "Demote, disconnect and detach; the metadata is written clean (refused while requests are in flight).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "down", global).perform(.down, target) }
    }

    struct Attach: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "attach", abstract: "Attach the backing disk (the resource comes up StandAlone).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "attach", global).perform(.attach, target) }
    }

    struct Detach: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "detach", abstract: "Detach the backing disk and continue diskless.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "detach", global).perform(.detach, target) }
    }

    struct Connect: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "connect", abstract: "Connect to the peer.")
        @OptionGroup var target: ResourceArguments
        @Flag(name: .customLong("discard-my-data"), help: "Resolve a split brain by giving up this node's changes.")
        var discardMyData = false
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try AdmSession(verb: "connect", global).perform(.connect, target) { $0.discardMyData = discardMyData }
        }
    }

    struct Disconnect: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "disconnect", abstract: "Drop the connection and stay StandAlone.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "disconnect", global).perform(.disconnect, target) }
    }

    struct Primary: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "primary", abstract: "Promote to Primary.")
        @OptionGroup var target: ResourceArguments
        @Flag(name: [.customLong("force"), .customLong("overwrite-data-of-peer")], help: "Promote without UpToDate data; the peer is overwritten.")
        var force = false
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "primary", global).perform(.primary, target) { $0.force = force } }
    }

    struct Secondary: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "secondary", abstract: "Demote to Secondary (refused while the device is in use).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "secondary", global).perform(.secondary, target) }
    }

    struct Invalidate: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "invalidate", abstract: "Mark the local data out of date and resync it from the peer.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "invalidate", global).perform(.invalidate, target) }
    }

    struct InvalidateRemote: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "invalidate-remote", abstract: "Mark the peer's data out of date and resync it from here.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "invalidate-remote", global).perform(.invalidateRemote, target) }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "verify", abstract: "Compare both disks online and mark differences out of sync.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "verify", global).perform(.verify, target) }
    }

    struct PauseSync: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "pause-sync", abstract: "Pause a running resync.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "pause-sync", global).perform(.pauseSync, target) }
    }

    struct ResumeSync: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "resume-sync", abstract: "Resume a paused resync.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "resume-sync", global).perform(.resumeSync, target) }
    }

    struct Outdate: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "outdate", abstract: "Mark the local data Outdated (the fencing hook).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "outdate", global).perform(.outdate, target) }
    }

    struct ResumeIO: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "resume-io",
            abstract: "End the I/O suspension of resource-and-stonith fencing.",
            discussion: "Only when the peer is known to be down (powered off): acknowledged writes may be lost if it is promoted.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "resume-io", global).perform(.resumeIO, target) }
    }

    struct NewCurrentUUID: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "new-current-uuid", abstract: "Start a new data generation.")
        @OptionGroup var target: ResourceArguments
        @Flag(name: .customLong("clear-bitmap"), help: "Also clear the bitmap (skip the initial sync of fresh disks).")
        var clearBitmap = false
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try AdmSession(verb: "new-current-uuid", global).perform(.newCurrentUUID, target) {
                $0.clearBitmap = clearBitmap
            }
        }
    }

    // MARK: Queries

    struct Role: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "role", abstract: "Print local/peer roles.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try AdmSession(verb: "role", global).eachStatus(target) { print($0.up ? "\($0.role)/\($0.peerRole)" : $0.role) }
        }
    }

    struct ConnectionState: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cstate", abstract: "Print the connection state.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws { try AdmSession(verb: "cstate", global).eachStatus(target) { print($0.connection) } }
    }

    struct DiskState: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "dstate", abstract: "Print local/peer disk states.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try AdmSession(verb: "dstate", global).eachStatus(target) { print($0.up ? "\($0.disk)/\($0.peerDisk)" : $0.disk) }
        }
    }

    struct Device: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "device",
            abstract: "Print the block device (its links, the loop device) and who holds it; exit 10 when none is attached.",
            discussion: """
                For scripts and the cluster manager: exit 0 when the resource's block device is attached (it is \
                Primary), 10 when it is not. Holders are mounts in any mount namespace and processes with the \
                device open; 'secondary' and 'down' are refused while there are any.
                """)
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws {
            var attached = true
            try AdmSession(verb: "device", global).eachStatus(target) { status in
                print(StatusText.device(status))
                attached = attached && status.blockDevice != nil
            }
            if !attached { throw TandemExitCode.refused }
        }
    }

    struct GetGenerationIdentifiers: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "get-gi", abstract: "Print the generation UUIDs and metadata flags, terse.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try AdmSession(verb: "get-gi", global).eachGenerationIdentifiers(target) { print(StatusText.terseGenerations($0)) }
        }
    }

    struct ShowGenerationIdentifiers: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show-gi", abstract: "Print the generation UUIDs and metadata flags, explained.")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws {
            try AdmSession(verb: "show-gi", global).eachGenerationIdentifiers(target) {
                print(StatusText.explainedGenerations($0))
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Print resource status in drbdadm-9 style.")
        @OptionGroup var target: ResourceArguments
        @Flag(help: "Print JSON (an array of resource objects).") var json = false
        @OptionGroup var watch: WatchOptions
        @OptionGroup var global: GlobalOptions
        func run() throws {
            let session = AdmSession(verb: "status", global)
            try watch.repeatOutput {
                var reports: [ResourceStatusReport] = []
                try session.eachStatus(target) { reports.append($0) }
                return json ? try StatusText.json(reports) : reports.map(StatusText.render).joined()
            }
        }
    }

    struct Proc: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "proc", abstract: "Print resource status in /proc/drbd style, with counters and sync progress.")
        @OptionGroup var target: ResourceArguments
        @Flag(help: "Print JSON (the same facts as 'status --json').") var json = false
        @OptionGroup var watch: WatchOptions
        @OptionGroup var global: GlobalOptions
        func run() throws {
            let session = AdmSession(verb: "proc", global)
            try watch.repeatOutput {
                var reports: [ResourceStatusReport] = []
                try session.eachStatus(target) { reports.append($0) }
                return json ? try StatusText.json(reports) : ProcText.render(reports)
            }
        }
    }

    /// `--watch`: print again every `--interval` seconds, in place (the screen is cleared first), until interrupted
    /// or `--iterations` prints.
    struct WatchOptions: ParsableArguments {
        @Flag(help: "Refresh in place until interrupted.") var watch = false
        @Option(help: ArgumentHelp("Seconds between refreshes with --watch.", valueName: "seconds"))
        var interval: Double = 1
        @Option(help: ArgumentHelp("Stop after this many refreshes (for scripts).", valueName: "count"))
        var iterations: Int?

        func validate() throws {
            guard (0.1...3600).contains(interval) else { throw ValidationError("--interval must be 0.1...3600 seconds") }
            if let iterations, iterations < 1 { throw ValidationError("--iterations must be at least 1") }
        }

        func repeatOutput(_ render: () throws -> String) throws {
            guard watch else { return print(try render(), terminator: "") }
            var printed = 0
            while iterations.map({ printed < $0 }) ?? true {
                let text = try render()
                // Home, clear the screen, then the new text: the refresh replaces the old one in place.
                print("\u{1B}[H\u{1B}[2J" + text, terminator: "")
                fflush(nil)  // all streams: strict concurrency forbids naming the C global `stdout`
                printed += 1
                if iterations.map({ printed < $0 }) ?? true { usleep(useconds_t(interval * 1_000_000)) }
            }
        }
    }

    // MARK: Metadata

    struct CreateMetadata: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create-md", abstract: "Write fresh metadata (refuses to overwrite existing metadata without --force).")
        @OptionGroup var target: ResourceArguments
        @Flag(help: "Overwrite existing metadata (this node then needs a full sync from its peer).") var force = false
        @OptionGroup var global: GlobalOptions
        func run() throws {
            let session = AdmSession(verb: "create-md", global)
            var worst: Int32 = 0
            for plan in try session.localPlans(target.resources) {
                if session.isUp(plan.resourceName) {
                    printToStandardError(
                        "tandem adm create-md \(plan.resourceName): the resource is up; run 'tandem adm down \(plan.resourceName)' first")
                    worst = max(worst, 10)
                    continue
                }
                do {
                    let store = try FileMetadataStore(
                        configuration: plan.metadataConfiguration, environment: StorageEnvironment(log: { _ in }))
                    defer { store.close() }
                    let report = try store.create(force: force)
                    print("initializing activity log")
                    print("initializing bitmap (\(report.layout.bitmapBytes / 1024) KB) to all zero")
                    print("Writing meta data...")
                    print("New meta data block successfully created (\(plan.resourceName): \(report)).")
                } catch {
                    printToStandardError("tandem adm create-md \(plan.resourceName): \(error)")
                    worst = max(worst, 10)
                }
            }
            if worst != 0 { throw ExitCode(worst) }
        }
    }

    struct DumpMetadata: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "dump-md", abstract: "Describe the on-disk metadata (through the daemon while the resource is up).")
        @OptionGroup var target: ResourceArguments
        @OptionGroup var global: GlobalOptions
        func run() throws {
            let session = AdmSession(verb: "dump-md", global)
            var worst: Int32 = 0
            for plan in try session.localPlans(target.resources) {
                let name = plan.resourceName
                do {
                    let response = try session.client.send(ControlRequest(verb: .dumpMetadata, resource: name))
                    if response.result == .ok, let dump = response.dump {
                        print(dump)
                    } else {
                        worst = max(worst, session.report(response, resource: name))
                    }
                } catch {
                    // No daemon: read the disks directly.
                    do {
                        let store = try FileMetadataStore(
                            configuration: plan.metadataConfiguration, environment: StorageEnvironment(log: { _ in }))
                        defer { store.close() }
                        print(store.dump())
                    } catch {
                        printToStandardError("tandem adm dump-md \(name): \(error)")
                        worst = max(worst, 10)
                    }
                }
            }
            if worst != 0 { throw ExitCode(worst) }
        }
    }
}

/// What every resource verb does: expand `all`, send a request per resource, report refusals, pick the exit code.
struct AdmSession {
    let verb: String
    let global: GlobalOptions

    init(verb: String, _ global: GlobalOptions) {
        self.verb = verb
        self.global = global
    }

    var client: ControlClient { ControlClient(runDirectory: global.runDirectory) }

    static func exitCode(_ result: ControlResult) -> Int32 {
        switch result {
        case .ok: 0
        case .configError: 1
        case .refused, .timeout, .failed: 10
        case .badRequest: 64
        }
    }

    /// Sends a request; a daemon that is not running ends the verb with exit 20.
    func send(_ request: ControlRequest) throws -> ControlResponse {
        let timeout = Duration.seconds((request.timeoutSeconds ?? ControlProtocol.commandTimeoutSecondsDefault) + 90)
        do throws(ControlClientError) {
            return try client.send(request, answerTimeout: timeout)
        } catch {
            printToStandardError("tandem adm \(verb): \(error.message)")
            throw error.code == .daemonUnavailable ? TandemExitCode.daemonUnavailable : TandemExitCode.refused
        }
    }

    /// Prints why a request did not succeed and returns its exit code (0 when it did).
    func report(_ response: ControlResponse, resource: String) -> Int32 {
        guard response.result != .ok else { return 0 }
        let reason = response.message ?? response.result.rawValue
        let prefix = response.result == .timeout ? "timed out: " : ""
        printToStandardError("tandem adm \(verb) \(resource): \(prefix)\(reason)")
        return Self.exitCode(response.result)
    }

    /// The resources named, with `all` replaced by every resource the daemon's drbd.conf defines for its node.
    func resolve(_ names: [String]) throws -> [String] {
        guard names.contains("all") else { return names }
        let response = try send(ControlRequest(verb: .list))
        guard response.result == .ok, let listed = response.resources else {
            let code = report(response, resource: "all")
            throw ExitCode(code == 0 ? 10 : code)
        }
        return names.flatMap { $0 == "all" ? listed.map(\.name) : [$0] }
    }

    /// One request per resource; refusals are printed and the worst exit code is thrown at the end.
    func perform(_ verb: ControlVerb, _ target: DaemonVerb.ResourceArguments, configure: (inout ControlRequest) -> Void = { _ in })
        throws
    {
        var worst: Int32 = 0
        for name in try resolve(target.resources) {
            var request = ControlRequest(verb: verb, resource: name)
            configure(&request)
            worst = max(worst, report(try send(request), resource: name))
        }
        if worst != 0 { throw ExitCode(worst) }
    }

    /// The status of each resource, handed to `body`.
    func eachStatus(_ target: DaemonVerb.ResourceArguments, _ body: (ResourceStatusReport) throws -> Void) throws {
        var worst: Int32 = 0
        for name in try resolve(target.resources) {
            let response = try send(ControlRequest(verb: .status, resource: name))
            if response.result == .ok, let status = response.status {
                try body(status)
            } else {
                worst = max(worst, report(response, resource: name))
            }
        }
        if worst != 0 { throw ExitCode(worst) }
    }

    /// Generation UUIDs and flags of each resource: from the daemon while it is up, else from the disk.
    func eachGenerationIdentifiers(
        _ target: DaemonVerb.ResourceArguments, _ body: (StatusText.Generations) -> Void
    ) throws {
        var worst: Int32 = 0
        for plan in try localPlans(target.resources) {
            let name = plan.resourceName
            if let response = try? client.send(ControlRequest(verb: .status, resource: name)),
                response.result == .ok, let status = response.status, status.up, let uuids = status.uuids
            {
                body(StatusText.Generations(uuids: uuids, flags: Set(status.flags ?? [])))
                continue
            }
            do {
                let store = try FileMetadataStore(
                    configuration: plan.metadataConfiguration, environment: StorageEnvironment(log: { _ in }))
                defer { store.close() }
                let recovered = try store.recover()
                let uuids = recovered.superblock.uuids
                body(StatusText.Generations(
                    uuids: GenerationIdentifiers(
                        current: uuids.current, bitmap: uuids.bitmap, history1: uuids.history1, history2: uuids.history2),
                    flags: Set(recovered.superblock.flags.names)))
            } catch {
                printToStandardError("tandem adm \(verb) \(name): \(error)")
                worst = max(worst, 10)
            }
        }
        if worst != 0 { throw ExitCode(worst) }
    }

    /// Whether the daemon (if it runs) has the resource up.
    func isUp(_ name: String) -> Bool {
        guard let response = try? client.send(ControlRequest(verb: .status, resource: name), answerTimeout: .seconds(10))
        else { return false }
        return response.status?.up == true
    }

    /// Plans from drbd.conf read here, for the verbs that touch the disks without the daemon. `all` is every
    /// resource with an `on <node>` section.
    func localPlans(_ names: [String]) throws -> [ResourcePlan] {
        let path = global.path("drbd.conf")
        let config: DrbdConfig
        do {
            let parsed = try DrbdConfParser.load(path: path)
            for diagnostic in parsed.diagnostics { printToStandardError(diagnostic.description) }
            config = parsed.model
        } catch {
            printToStandardError(error.description)
            throw TandemExitCode.configurationProblems
        }
        let node = global.nodeName
        let wanted = names.flatMap { name in
            name == "all" ? config.resources.filter { $0.host(named: node) != nil }.map(\.name.value) : [name]
        }
        return try wanted.map { name in
            guard let resource = config.resource(named: name), resource.host(named: node) != nil else {
                printToStandardError("tandem adm \(verb): '\(name)' is not defined for node \(node) in \(path)")
                throw TandemExitCode.configurationProblems
            }
            do {
                return try ResourcePlan.make(resource: resource, node: node, configPath: path)
            } catch let error as PlanError {
                printToStandardError("tandem adm \(verb): \(error.message)")
                throw TandemExitCode.configurationProblems
            }
        }
    }
}
