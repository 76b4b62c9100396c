/// Drivers interpret the cores' actions over small environment protocols (transport, block store, metadata store,
/// clock, script runner, address manager), so that the production daemons and the simulator run the same code.
public enum TandemDrivers {}
