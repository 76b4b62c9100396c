/// The replication core: DRBD's semantics as pure, value-type state machines.
///
/// This target holds the connection/handshake machine, generation-UUID comparison, the write path (protocols A, B
/// and C, epochs and barriers), resync and verify, and the metadata layouts. It imports no networking, file or
/// clock API: time is passed in, randomness is injected, and every decision is returned as an action for a driver
/// to carry out. It is built by the replication-core issue; see docs/architecture.md.
public enum ReplicationCore {}
