import DaemonSupport

/// A blocking client of replicad's control socket, for the CLI and the drbddisk agent.
public struct ControlClient: Sendable {
    private let line: LineControlClient

    public var socketPath: String { line.socketPath }

    public init(socketPath: String) {
        line = LineControlClient(
            socketPath: socketPath, daemonName: "the replication daemon",
            startHint: "start it with 'tandem replicad'", responseBytesMaximum: ControlProtocol.responseBytesMaximum)
    }

    public init(runDirectory: String) { self.init(socketPath: ControlProtocol.socketPath(runDirectory: runDirectory)) }

    /// Sends `request` and waits up to `answerTimeout` for the response.
    public func send(_ request: ControlRequest, answerTimeout: Duration = .seconds(60)) throws(ControlClientError)
        -> ControlResponse
    {
        try line.exchange(request, answerTimeout: answerTimeout)
    }
}
