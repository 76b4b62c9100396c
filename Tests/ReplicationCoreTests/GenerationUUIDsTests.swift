import Testing

@testable import ReplicationCore

@Suite("Generation UUIDs")
struct GenerationUUIDsTests {
    @Test("A new generation keeps the old Current, with its Primary bit, as the Bitmap UUID")
    func newGenerationMovesCurrentToBitmap() {
        var uuids = GenerationUUIDs(current: 0xA0 | 1)
        uuids.startNewGeneration(fresh: 0xB0, isPrimary: true)
        #expect(uuids.current == 0xB1)
        #expect(uuids.bitmap == 0xA1)
        uuids.clearBitmapUUID()
        #expect(uuids.bitmap == 0)
        #expect(uuids.history1 == 0xA0)
    }
}
