/// Production transports built on SwiftNIO: the replication data and meta channels over TCP and the heartbeat
/// media over UDP (bcast, mcast, ucast). Handlers stay thin and confined to their event loop.
public enum TandemTransport {}
