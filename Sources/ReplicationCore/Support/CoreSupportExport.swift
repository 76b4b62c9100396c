// The clock and the seeded generator are shared by every pure core; users of the replication core see them too.
@_exported import CoreSupport
