/// Paces resync and verify requests (reference drbd.md section 3).
///
/// With `c-plan-ahead` zero it is a token bucket at `resync-rate`. Otherwise it is a simplified form of DRBD's
/// dynamic controller: it keeps `c-fill-target` bytes in flight (or, with a zero fill target, as many as
/// `c-delay-target` worth of the maximum rate), never exceeds `c-max-rate`, and falls back to `c-min-rate` while
/// application I/O is running so that the resync does not starve the database.
struct ResyncRateController: Sendable {
    let settings: ResyncSettings
    private var tokensBytes: Int64 = 0
    private var lastRefill: MonotonicInstant?

    init(settings: ResyncSettings) { self.settings = settings }

    var isDynamic: Bool { settings.planAhead > .zero }

    /// Bytes that may be requested now, given what is already in flight.
    mutating func allowanceBytes(now: MonotonicInstant, inFlightBytes: Int64, applicationActive: Bool) -> Int64 {
        let rate: Int64
        if !isDynamic {
            rate = settings.rateBytesPerSecond
        } else if applicationActive {
            rate = max(settings.minRateBytesPerSecond, 4096)
        } else {
            rate = settings.maxRateBytesPerSecond
        }
        refill(now: now, rateBytesPerSecond: rate)
        guard isDynamic else { return tokensBytes }
        let delayTargetBytes = Int64(Double(settings.maxRateBytesPerSecond) * settings.delayTarget.seconds)
        let target = settings.fillTargetBytes > 0 ? settings.fillTargetBytes : delayTargetBytes
        let wanted = max(target, 4096) - inFlightBytes
        return max(0, min(wanted, tokensBytes))
    }

    mutating func consume(_ bytes: Int64) { tokensBytes -= bytes }

    private mutating func refill(now: MonotonicInstant, rateBytesPerSecond: Int64) {
        // A bucket of a tenth of a second's worth (at least one full request) keeps bursts short.
        let capacity = max(rateBytesPerSecond / 10, Int64(ReplicationMachine.resyncRequestBytesMaximum))
        guard let last = lastRefill else {
            lastRefill = now
            tokensBytes = capacity
            return
        }
        let elapsed = max(0, (now - last).seconds)
        tokensBytes = min(capacity, tokensBytes + Int64(Double(rateBytesPerSecond) * elapsed))
        lastRefill = now
    }
}

extension Duration {
    /// The duration in seconds, as a Double, for rates and progress figures.
    var seconds: Double { Double(wholeNanoseconds) / 1e9 }
}
