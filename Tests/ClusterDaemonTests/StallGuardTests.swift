import CoreSupport
import Testing

@testable import ClusterDaemon
@testable import TandemConfig

@Suite("heartbeatd's stall guard")
struct StallGuardTests {
    private func config(keepalive: Duration, deadtime: Duration) -> HaConfig {
        var config = HaConfig()
        config.keepalive = keepalive
        config.deadtime = deadtime
        return config
    }

    @Test("a gap of half a deadtime is a stall: the next tick waits one keepalive, so what arrived is read first")
    func stallHoldsTheTick() {
        var guardian = StallGuard(haConfig: config(keepalive: .milliseconds(200), deadtime: .seconds(1)))
        let start = MonotonicInstant(nanoseconds: 1_000_000_000)
        let first = guardian.awoke(at: start)
        #expect(first == nil)
        let mayTickAtStart = guardian.mayTick(at: start)
        #expect(mayTickAtStart)
        // Ordinary wake-ups, a keepalive apart: no stall.
        let ordinary = guardian.awoke(at: start + .milliseconds(200))
        #expect(ordinary == nil)
        let mayTickOrdinary = guardian.mayTick(at: start + .milliseconds(200))
        #expect(mayTickOrdinary)
        // Frozen for 4 s.
        let thawed = start + .milliseconds(4200)
        let stalled = guardian.awoke(at: thawed)
        #expect(stalled == .seconds(4))
        let mayTickThawed = guardian.mayTick(at: thawed)
        #expect(!mayTickThawed)
        #expect(guardian.ticksHeldUntil == thawed + .milliseconds(200))
        let during = guardian.awoke(at: thawed + .milliseconds(50))
        #expect(during == nil)
        let mayTickDuring = guardian.mayTick(at: thawed + .milliseconds(50))
        #expect(!mayTickDuring)
        let mayTickAfter = guardian.mayTick(at: thawed + .milliseconds(200))
        #expect(mayTickAfter)
        #expect(guardian.ticksHeldUntil == nil)
    }

    @Test("with a long deadtime, waits of a second are not stalls")
    func longDeadtime() {
        var guardian = StallGuard(haConfig: config(keepalive: .seconds(2), deadtime: .seconds(30)))
        var now = MonotonicInstant(nanoseconds: 0)
        _ = guardian.awoke(at: now)
        for _ in 0..<10 {
            now = now + .seconds(1)
            let gap = guardian.awoke(at: now)
            #expect(gap == nil)
            let mayTick = guardian.mayTick(at: now)
            #expect(mayTick)
        }
        let stalled = guardian.awoke(at: now + .seconds(16))
        #expect(stalled == .seconds(16))
    }
}
