/// Polls `condition` every `pollInterval` until it holds or `timeout` passes; returns whether it held. Tests wait
/// for conditions, never for times: a slow machine only makes them slower.
public func eventually(
    timeout: Duration, pollInterval: Duration = .milliseconds(10), _ condition: () -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: pollInterval)
    }
    return condition()
}
