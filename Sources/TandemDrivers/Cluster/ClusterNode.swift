import CoreSupport
import MembershipCore
import ResourceCore

/// What the cluster driver needs from the world: the heartbeat links, agent operations, a wall clock for the `ts`
/// field, and the log. The daemon implements it over UDP sockets and processes; tests and the simulator over
/// in-memory links.
public protocol ClusterEnvironment {
    /// Send one signed datagram on every heartbeat link.
    func transmit(_ datagram: [UInt8])
    /// Run one resource operation; the outcome comes back through `ClusterNode.operationFinished`.
    func runOperation(_ operation: ResourceOperation, resource: String, timeout: Duration)
    func log(_ level: LogLevel, _ message: String)
    /// A resource will not stop: carry out the last resort (stop heartbeats, reboot).
    func lastResort(_ action: StopFailureAction, reason: String)
    /// Every group is released and `shutdone` was sent: the daemon may exit.
    func shutdownComplete()
    /// Seconds since the Unix epoch, for the informational `ts` field.
    var wallClockSeconds: UInt64 { get }
    /// `/proc/loadavg`'s first three fields, for the informational `ld` field of status messages.
    var loadAverage: String? { get }
}

/// The production driver of one cluster node: decodes and authenticates datagrams, feeds the membership and
/// resource machines, and carries out their actions over the environment. The simulator runs this same type.
///
/// Confined to one serial executor (the daemon's cluster thread, or a test's loop).
public struct ClusterNode<Environment: ClusterEnvironment> {
    public private(set) var membership: MembershipMachine
    public private(set) var resources: ResourceManagerMachine
    public private(set) var authenticator: MessageAuthenticator
    public private(set) var wireCounters = WireCounters()
    public let environment: Environment

    public init(
        membership: MembershipConfiguration, resources: ResourceManagerConfiguration,
        authenticator: MessageAuthenticator, environment: Environment
    ) {
        self.membership = MembershipMachine(configuration: membership)
        self.resources = ResourceManagerMachine(configuration: resources)
        self.authenticator = authenticator
        self.environment = environment
    }

    public mutating func start(now: MonotonicInstant) {
        perform(membership.start(now: now), now: now)
        perform(resources.start(now: now), now: now)
    }

    public mutating func tick(now: MonotonicInstant) {
        perform(membership.tick(now: now), now: now)
        perform(resources.tick(now: now), now: now)
    }

    /// A datagram arrived on link number `link`. Anything that does not decode, or is not signed with one of our
    /// keys, is dropped and counted before any machine sees it.
    public mutating func datagramReceived(_ datagram: some Collection<UInt8>, link: Int, now: MonotonicInstant) {
        let message: HeartbeatMessage
        do {
            message = try HeartbeatWire.decode(datagram)
        } catch {
            switch error.code {
            case .oversized: wireCounters.oversized += 1
            case .malformed: wireCounters.malformed += 1
            }
            if LogThrottle.shouldLog(occurrence: wireCounters.oversized + wireCounters.malformed) {
                environment.log(.warning, "dropped a datagram on link \(membership.configuration.links[link]): \(error.message) (\(wireCounters.oversized + wireCounters.malformed) so far)")
            }
            return
        }
        let verdict = authenticator.verify(message)
        guard verdict == .authentic else {
            wireCounters.badAuthentication += 1
            if LogThrottle.shouldLog(occurrence: wireCounters.badAuthentication) {
                environment.log(.error, "Bad/invalid auth token from \(message.source ?? "an unknown sender") on link \(membership.configuration.links[link]): \(verdict) (\(wireCounters.badAuthentication) so far)")
            }
            return
        }
        perform(membership.received(message, link: link, now: now), now: now)
    }

    public mutating func operationFinished(_ operation: ResourceOperation, outcome: OperationOutcome, now: MonotonicInstant) {
        perform(resources.operationFinished(operation, outcome: outcome, now: now), now: now)
    }

    public mutating func requestStandby(_ selection: ResourceSelection, now: MonotonicInstant) -> AdminOutcome {
        let outcome = resources.requestStandby(selection, now: now)
        perform(outcome.actions, now: now)
        return outcome
    }

    public mutating func requestTakeover(_ selection: ResourceSelection, now: MonotonicInstant) -> AdminOutcome {
        let outcome = resources.requestTakeover(selection, now: now)
        perform(outcome.actions, now: now)
        return outcome
    }

    public mutating func shutdown(now: MonotonicInstant) {
        perform(resources.shutdown(now: now), now: now)
    }

    /// authkeys changed on disk and parsed cleanly: sign with the new active key and accept the new set.
    public mutating func replaceKeys(_ authenticator: MessageAuthenticator) {
        self.authenticator = authenticator
    }

    /// When `tick` must next run.
    public var nextDeadline: MonotonicInstant? {
        switch (membership.nextDeadline, resources.nextDeadline) {
        case (let left?, let right?): min(left, right)
        case (let left?, nil): left
        case (nil, let right): right
        }
    }

    // MARK: Actions

    private mutating func perform(_ actions: [MembershipAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .transmit(var message):
                message[HeartbeatField.timestamp] = String(environment.wallClockSeconds, radix: 16)
                if message.type == .status, let load = environment.loadAverage { message[HeartbeatField.load] = load }
                environment.transmit(HeartbeatWire.encode(authenticator.sign(message)))
            case .deliver(let message, _):
                if let typed = ResourceMessage(message) { perform(resources.received(typed, now: now), now: now) }
            case .nodeStatusChanged(let node, let status):
                if isPeer(node) { perform(resources.peerStatusChanged(status, now: now), now: now) }
            case .linkStatusChanged:
                break  // logged by the machine; status reads the link table
            case .nodeReturnedAfterPartition(let node):
                if isPeer(node) { perform(resources.peerReturnedAfterPartition(now: now), now: now) }
            case .log(let level, let text):
                environment.log(level, text)
            }
        }
    }

    private mutating func perform(_ actions: [ResourceAction], now: MonotonicInstant) {
        for action in actions {
            switch action {
            case .send(let message):
                perform(membership.send(message.encode(), now: now), now: now)
            case .run(let operation, let resource, let timeout):
                environment.runOperation(operation, resource: resource, timeout: timeout)
            case .setLocalStatus(let status):
                perform(membership.setLocalStatus(status, now: now), now: now)
            case .log(let level, let text):
                environment.log(level, text)
            case .lastResort(let action, let reason):
                environment.lastResort(action, reason: reason)
            case .shutdownComplete:
                environment.shutdownComplete()
            }
        }
    }

    private func isPeer(_ node: String) -> Bool {
        resources.configuration.peerNode?.lowercased() == node.lowercased()
    }
}

/// Datagrams dropped before the membership machine saw them.
public struct WireCounters: Sendable, Hashable, Codable {
    public var malformed: UInt64 = 0
    public var oversized: UInt64 = 0
    public var badAuthentication: UInt64 = 0

    public init() {}
}
