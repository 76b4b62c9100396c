/// The deterministic simulator: runs the production drivers for two or three nodes over a lossy, partitionable
/// network and crash-prone disks, all from one seed, with checkers as the oracle.
public enum TandemSimulator {}
