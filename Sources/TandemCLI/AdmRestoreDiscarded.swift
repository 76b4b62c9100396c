import ArgumentParser
import Foundation
import ReplicationDaemon
import TandemStorage

/// `tandem adm restore-discarded RES`: the blocks a split-brain recovery discarded on this node, which replicad
/// copied aside before the resync overwrote them (DRBD keeps no such copy). Lists the preserved sets, or writes one
/// out as an image file with every block at its device offset, for the operator to compare, mount (a copy) or
/// copy data back from.
struct RestoreDiscardedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore-discarded",
        abstract: "List or read back the blocks a split-brain recovery discarded on this node.",
        discussion: """
        Without --output, lists the preserved sets of RESOURCE, oldest first, and verifies their checksums. With \
        --output PATH, writes the newest set (or --file NAME) to PATH: a sparse file as large as the device, each \
        preserved block at its own offset and holes elsewhere. PATH must not exist unless --force is given, in \
        which case the blocks are written into it in place (a scratch image or device; never the resource itself \
        while it is in use). Exit 10 if a set is damaged (the intact ranges are still written).
        """
    )

    @Argument(help: "The resource.") var resource: String

    @Option(help: ArgumentHelp("Write this set out instead of listing (default: the newest).", valueName: "path"))
    var output: String?

    @Option(help: ArgumentHelp("The preserved set to write: its file name or path.", valueName: "name"))
    var file: String?

    @Flag(help: "Write into an existing --output file or device.") var force = false

    @Option(name: .customLong("preserve-dir"), help: ArgumentHelp(
        "The preserve directory replicad was started with, if it is not running (default /var/lib/tandem/preserved).",
        valueName: "dir"))
    var preserveRoot: String?

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let directory = preserveDirectory()
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".preserved") && !$0.hasPrefix(".") }.sorted()
        guard let output else { return try list(names, in: directory) }
        let path: String
        if let file {
            path = file.contains("/") ? file : "\(directory)/\(file)"
        } else if let newest = names.last {
            path = "\(directory)/\(newest)"
        } else {
            printToStandardError("tandem adm restore-discarded \(resource): nothing preserved in \(directory)")
            throw TandemExitCode.refused
        }
        try write(path, to: output)
    }

    /// The folder of this resource's preserved sets: `--preserve-dir`, else what the running daemon uses, else the
    /// default.
    private func preserveDirectory() -> String {
        if let preserveRoot { return "\(preserveRoot)/\(resource)" }
        let client = ControlClient(runDirectory: global.runDirectory)
        if let response = try? client.send(ControlRequest(verb: .status, resource: resource), answerTimeout: .seconds(10)),
            let directory = response.status?.preserveDirectory
        {
            return directory
        }
        return "\(FileMetadataStore.Configuration.preserveRootDirectory)/\(resource)"
    }

    private func list(_ names: [String], in directory: String) throws {
        guard !names.isEmpty else { return print("\(resource): nothing preserved in \(directory)") }
        var damaged = false
        for name in names {
            do {
                let reader = try PreservedBlocksReader(path: "\(directory)/\(name)")
                let header = reader.header
                var state = "checksums ok"
                do { try reader.verify() } catch {
                    state = "DAMAGED: \(error)"
                    damaged = true
                }
                let created = Date(timeIntervalSince1970: Double(header.createdAtNanoseconds) / 1e9)
                print("\(directory)/\(name)")
                print("  created \(created), \(header.ranges.count) ranges, \(header.totalDataBytes) bytes of "
                    + "\(header.sourcePath) (device \(header.deviceSizeBytes) bytes), \(state)")
                print("  reason: \(header.reason)")
            } catch {
                print("\(directory)/\(name)\n  unreadable: \(error)")
                damaged = true
            }
        }
        if damaged { throw TandemExitCode.refused }
    }

    private func write(_ path: String, to output: String) throws {
        let reader: PreservedBlocksReader
        do {
            reader = try PreservedBlocksReader(path: path)
        } catch {
            printToStandardError("tandem adm restore-discarded \(resource): \(error)")
            throw TandemExitCode.refused
        }
        let header = reader.header
        let exists = FileManager.default.fileExists(atPath: output)
        if exists && !force {
            printToStandardError(
                "tandem adm restore-discarded \(resource): \(output) exists; choose a new path or give --force to "
                    + "write into it")
            throw TandemExitCode.refused
        }
        if !exists {
            guard FileManager.default.createFile(atPath: output, contents: nil, attributes: [.posixPermissions: 0o600])
            else {
                printToStandardError("tandem adm restore-discarded \(resource): cannot create \(output)")
                throw TandemExitCode.refused
            }
        }
        guard let handle = FileHandle(forWritingAtPath: output) else {
            printToStandardError("tandem adm restore-discarded \(resource): cannot open \(output) for writing")
            throw TandemExitCode.refused
        }
        defer { try? handle.close() }
        var damaged: [String] = []
        do {
            if !exists { try handle.truncate(atOffset: header.deviceSizeBytes) }
            for (index, range) in header.ranges.enumerated() {
                try handle.seek(toOffset: range.offsetBytes)
                do {
                    try reader.readRange(at: index) { chunk in handle.write(Data(chunk)) }
                } catch {
                    damaged.append(error.description)
                }
            }
            try handle.synchronize()
        } catch {
            printToStandardError("tandem adm restore-discarded \(resource): writing \(output) failed: \(error)")
            throw TandemExitCode.refused
        }
        print("\(resource): wrote \(header.totalDataBytes) bytes in \(header.ranges.count) ranges from \(path) to "
            + "\(output), each at its device offset")
        for problem in damaged {
            printToStandardError("tandem adm restore-discarded \(resource): \(problem); that range in \(output) is unreliable")
        }
        if !damaged.isEmpty { throw TandemExitCode.refused }
    }
}
