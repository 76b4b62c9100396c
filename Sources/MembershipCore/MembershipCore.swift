/// The membership core: Heartbeat's failure detector as a pure state machine.
///
/// Node and link status (keepalive, warntime, deadtime, initdead), generations and sequence numbers, duplicate
/// suppression and retransmit requests. Time is passed in; no I/O. Built by the cluster-manager issue.
public enum MembershipCore {}
