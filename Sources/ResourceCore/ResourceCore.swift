/// The resource core: who owns which resource group, as a pure state machine.
///
/// Heartbeat R1's nice_failback/auto_failback exchange, takeover and standby, ordered group start and stop, and
/// (later) monitoring and fencing decisions. No I/O. Built by the cluster-manager issue.
public enum ResourceCore {}
