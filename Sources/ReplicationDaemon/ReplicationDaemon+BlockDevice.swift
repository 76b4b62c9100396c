import DaemonSupport
import DeviceFrontend
import Foundation
import Synchronization

/// A resource's block device while the resource is up: attached while Primary. One role change works on it at a
/// time; a second one meanwhile is refused as busy.
final class BlockDeviceSlot: Sendable {
    private enum State {
        case detached
        case changing
        case attached(BlockDeviceAttachment)
    }

    private let state = Mutex(State.detached)

    var attachment: BlockDeviceAttachment? {
        state.withLock { if case .attached(let attachment) = $0 { attachment } else { nil } }
    }

    enum Claim {
        case claimed(BlockDeviceAttachment?)
        case busy
    }

    /// Takes the slot for a change; `finish` must follow.
    func claim() -> Claim {
        state.withLock { state in
            switch state {
            case .changing: return .busy
            case .detached:
                state = .changing
                return .claimed(nil)
            case .attached(let attachment):
                state = .changing
                return .claimed(attachment)
            }
        }
    }

    func finish(_ attachment: BlockDeviceAttachment?) {
        state.withLock { $0 = attachment.map { .attached($0) } ?? .detached }
    }
}

extension ReplicationDaemon {
    /// `primary`: promotes, then attaches the block device. A device that cannot be attached undoes the promotion,
    /// so that `primary` either gives a usable device or changes nothing.
    func promote(_ name: String, _ request: ControlRequest, timeout: Duration) async -> ControlResponse {
        guard let resource = running(name) else { return notUp(name) }
        guard case .claimed(let existing) = resource.blockDevice.claim() else { return Self.deviceBusy(name) }
        let response = await resource.runner.submit(.command(.promote(force: request.force ?? false), timeout: timeout))
        guard response.result == .ok, existing == nil else {
            resource.blockDevice.finish(existing)
            return response
        }
        switch await attachDevice(name, resource) {
        case .success(let attachment):
            resource.blockDevice.finish(attachment)
            logger.notice("\(name): block device \(attachment.paths.links.joined(separator: ", ")) -> \(attachment.loop.path)")
            return response
        case .failure(let error):
            resource.blockDevice.finish(nil)
            let undone = await resource.runner.submit(.command(.demote, timeout: timeout))
            let outcome =
                undone.result == .ok
                ? "so it is Secondary again" : "and demoting it again failed too (\(undone.message ?? undone.result.rawValue))"
            logger.error("\(name): primary undone: the block device could not be attached: \(error)")
            return ControlResponse(error.controlResult, "\(name): the block device could not be attached (\(error)), \(outcome)")
        }
    }

    /// `secondary`: detaches the block device (refused while anyone holds it), then demotes. A demotion the engine
    /// refuses attaches the device again.
    func demote(_ name: String, timeout: Duration) async -> ControlResponse {
        guard let resource = running(name) else { return notUp(name) }
        // An NBD client refuses the demotion anyway (the resource's thread checks again, against a client that
        // arrives meanwhile); asked first, it spares detaching the block device for nothing.
        if let refusal = resource.runner.exportState.heldOpenRefusal(resource: name) {
            return ControlResponse(.refused, refusal)
        }
        guard case .claimed(let existing) = resource.blockDevice.claim() else { return Self.deviceBusy(name) }
        if let existing, let error = await detachDevice(name, existing) {
            resource.blockDevice.finish(existing)
            logger.notice("operator: secondary refused: \(error)")
            return ControlResponse(error.controlResult, error.message)
        }
        let response = await resource.runner.submit(.command(.demote, timeout: timeout))
        if response.result != .ok && existing != nil {
            await reattachDevice(name, resource, after: "a refused demotion")
        } else {
            resource.blockDevice.finish(nil)
        }
        return response
    }

    /// Attaches the device again after the step it was detached for was refused (the slot is claimed), so that a
    /// refused `secondary` or `down` leaves the Primary as it was.
    func reattachDevice(_ name: String, _ resource: RunningResource, after what: String) async {
        switch await attachDevice(name, resource) {
        case .success(let attachment): resource.blockDevice.finish(attachment)
        case .failure(let error):
            resource.blockDevice.finish(nil)
            logger.error("\(name): still Primary after \(what), but its block device could not come back: \(error)")
        }
    }

    enum DeviceRelease {
        case nothingAttached
        case detached
        case refused(ControlResponse)
    }

    /// For `down` and termination: detaches the device before the resource stops. `force` (termination) stops
    /// serving even under a holder.
    func releaseDevice(_ name: String, _ resource: RunningResource, force: Bool) async -> DeviceRelease {
        guard case .claimed(let existing) = resource.blockDevice.claim() else { return .refused(Self.deviceBusy(name)) }
        guard let existing else {
            resource.blockDevice.finish(nil)
            return .nothingAttached
        }
        if force {
            await DaemonThread.run(name: "tandem-detach") { existing.forceDetach() }
            resource.blockDevice.finish(nil)
            return .detached
        }
        if let error = await detachDevice(name, existing) {
            resource.blockDevice.finish(existing)
            logger.notice("operator: down refused: \(error)")
            return .refused(ControlResponse(error.controlResult, error.message))
        }
        resource.blockDevice.finish(nil)
        return .detached
    }

    /// Clears what a replicad that died left of the device (stale loop, dead FUSE mount, links), at `up`.
    func clearDeviceLeftovers(_ paths: BlockDevicePaths) async -> ControlResponse? {
        let logger = logger
        return await DaemonThread.run(name: "tandem-clear") {
            let stale: [LoopDevice]
            do throws(BlockDeviceError) {
                stale = try BlockDeviceAttachment.clearLeftovers(paths)
            } catch {
                return ControlResponse(error.controlResult, error.message)
            }
            if !stale.isEmpty {
                logger.notice("cleared \(stale.map(\.path).joined(separator: ", ")), left over from a replicad that stopped")
            }
            return nil
        }
    }

    func blockDeviceReport(_ resource: RunningResource) -> (BlockDeviceReport?, [String]) {
        guard let attachment = resource.blockDevice.attachment else { return (nil, []) }
        let report = BlockDeviceReport(
            loopDevice: attachment.loop.path, links: attachment.paths.links, fuseFile: attachment.paths.filePath,
            directIO: attachment.loop.usesDirectIO, flushesCompleted: attachment.flushesCompleted)
        return (report, attachment.holders().map(\.description))
    }

    func attachDevice(_ name: String, _ resource: RunningResource) async -> Result<BlockDeviceAttachment, BlockDeviceError> {
        guard let sizeBytes = await resource.runner.submit(.status).status?.sizeBytes, sizeBytes > 0 else {
            return .failure(BlockDeviceError(.failed, "\(name): the device size is unknown"))
        }
        let paths = resource.blockDevicePaths
        let backend = ReplicatedBlockFile(processor: resource.runner.processor)
        let requireDirectIO = !options.allowBufferedLoop
        return await DaemonThread.run(name: "tandem-attach") {
            do throws(BlockDeviceError) {
                return .success(try BlockDeviceAttachment.attach(
                    paths: paths, sizeBytes: sizeBytes, backend: backend, requireDirectIO: requireDirectIO))
            } catch {
                return .failure(error)
            }
        }
    }

    private func detachDevice(_ name: String, _ attachment: BlockDeviceAttachment) async -> BlockDeviceError? {
        await DaemonThread.run(name: "tandem-detach") {
            do throws(BlockDeviceError) {
                try attachment.detach(resourceName: name)
                return nil
            } catch {
                return error
            }
        }
    }

    static func deviceBusy(_ name: String) -> ControlResponse {
        ControlResponse(.refused, "\(name): its block device is being attached or detached; try again")
    }
}
