// swift-tools-version: 6.2
//
// The package layout mirrors the architecture in docs/architecture.md:
//   pure cores (no I/O)  ->  drivers over small environment protocols  ->  NIO transports / device frontend
// with configuration parsing shared by all of them, a deterministic simulator that runs the production
// drivers, and one thin `tandem` executable.
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .treatAllWarnings(as: .error),
]

/// The replication core and the simulator are optimised even in debug builds: `swift test` runs thousands of
/// simulated fault schedules, each checksumming and copying megabytes, which unoptimised code makes ten times slower.
let optimisedSettings: [SwiftSetting] = strictSettings + [
    .unsafeFlags(["-O"], .when(configuration: .debug)),
]

let package = Package(
    name: "Tandem",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "tandem", targets: ["tandem"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        // Configuration: drbd.conf, ha.cf, authkeys, haresources, their diagnostics and cross-checks. Pure parsing;
        // the only I/O is reading the files named by the caller.
        .target(name: "TandemConfig", swiftSettings: strictSettings),

        // Pure protocol cores: value-type state machines, time passed in, no I/O. CoreSupport holds what they share:
        // the monotonic instant every event carries and the seeded generator.
        .target(name: "CoreSupport", swiftSettings: optimisedSettings),
        .target(
            name: "ReplicationCore",
            dependencies: ["CoreSupport", "TandemConfig", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: optimisedSettings
        ),
        // Heartbeat's membership (failure detector, sequencing, retransmission) and its wire format and signatures.
        .target(
            name: "MembershipCore",
            dependencies: ["CoreSupport", "TandemConfig", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strictSettings
        ),
        // Heartbeat R1's resource ownership: who runs which group, ordered start and stop, standby and takeover.
        .target(name: "ResourceCore", dependencies: ["CoreSupport", "MembershipCore"], swiftSettings: strictSettings),
        // STONITH: a lost peer is fenced before anything it ran is taken over.
        .target(name: "FencingCore", dependencies: ["CoreSupport", "MembershipCore", "TandemConfig"], swiftSettings: strictSettings),

        // Drivers that interpret the cores' actions over small environment protocols.
        .target(
            name: "TandemDrivers",
            dependencies: ["ReplicationCore", "MembershipCore", "ResourceCore", "FencingCore", "TandemConfig"],
            swiftSettings: optimisedSettings
        ),
        // Production transports: replication over TCP (paired on SwiftNIO, carried by threads of its own once
        // established) and heartbeats over UDP (SwiftNIO).
        .target(
            name: "TandemTransport",
            dependencies: [
                "TandemDrivers",
                "ReplicationCore",
                "DaemonSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // Production block and metadata stores over files and block devices: blocking pread/pwrite/fdatasync on
        // dedicated threads, O_DIRECT where possible, the on-disk metadata and preserved-blocks files.
        .target(name: "CTandemStorage"),
        .target(
            name: "TandemStorage",
            dependencies: ["CTandemStorage", "ReplicationCore", "TandemDrivers", "TandemConfig"],
            swiftSettings: strictSettings
        ),
        // The replication daemon (`tandem replicad`): one dedicated thread per resource running the production
        // `ReplicationNode` over the TCP transport and the file stores, handlers, and the control socket the
        // `tandem adm` verbs talk to. Also the control protocol's types and its blocking client.
        .target(
            name: "ReplicationDaemon",
            dependencies: [
                "CTandemStorage",
                "DaemonSupport",
                "DeviceFrontend",
                "ReplicationCore",
                "TandemDrivers",
                "TandemTransport",
                "TandemStorage",
                "TandemConfig",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // What every daemon shares: dedicated threads and locks, the run directory's lock file, the control socket's
        // server (JSON lines over a Unix socket, root only) and its blocking client.
        .target(
            name: "DaemonSupport",
            dependencies: [
                "CoreSupport",
                "CTandemStorage",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        // The cluster manager (`tandem heartbeatd`): the production `ClusterNode` on a thread of its own, UDP heartbeat
        // links, resource agents (built-in, resource.d, LSB, OCF), and its control socket.
        .target(
            name: "ClusterDaemon",
            dependencies: [
                "CoreSupport",
                "DaemonSupport",
                "DeviceFrontend",
                "MembershipCore",
                "ReplicationCore",
                "ReplicationDaemon",
                "ResourceCore",
                "FencingCore",
                "TandemConfig",
                "TandemDrivers",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // libfuse3's low-level API (Debian: libfuse3-dev), for the FUSE block file.
        .systemLibrary(name: "CFuse", path: "Sources/CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        // The block-device frontend (FUSE + loop, NBD).
        // The NBD server is a pure session machine plus a thin NIO shell; the FUSE file serves one file through
        // libfuse, and a loop device with direct I/O turns it into a block device. Their backends are injected, so
        // this target does not depend on the replication core.
        .target(
            name: "DeviceFrontend",
            dependencies: [
                "CFuse",
                "CTandemStorage",
                "DaemonSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // The lab (`tandem lab`): the seeds' two-node MariaDB cluster on one machine, each node a machine of its own
        // (network, mount, UTS and PID namespaces) running the production daemons; the workload client (a MariaDB
        // protocol client), the fault scenarios and their checks.
        .target(
            name: "TandemLab",
            dependencies: [
                "ClusterDaemon",
                "CoreSupport",
                "CTandemStorage",
                "DaemonSupport",
                "DeviceFrontend",
                "ReplicationDaemon",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSettings
        ),
        // The deterministic simulator: runs the production drivers over a simulated network and disks.
        .target(
            name: "TandemSimulator", dependencies: ["TandemDrivers", "ReplicationCore", "TandemConfig"],
            swiftSettings: optimisedSettings),

        // The command-line interface as a library, so that its behaviour is testable.
        .target(
            name: "TandemCLI",
            dependencies: [
                "ClusterDaemon",
                "DaemonSupport",
                "TandemConfig",
                "ReplicationCore",
                "TandemSimulator",
                "TandemStorage",
                "ReplicationDaemon",
                "TandemLab",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        .executableTarget(name: "tandem", dependencies: ["TandemCLI"], swiftSettings: strictSettings),

        // Helpers shared by the test targets (running external programs such as drbdadm and tandem itself).
        .target(name: "TandemTestSupport", path: "Tests/TandemTestSupport", swiftSettings: strictSettings),
        .testTarget(
            name: "TandemConfigTests",
            dependencies: ["TandemConfig", "TandemTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ReplicationCoreTests",
            dependencies: ["ReplicationCore", "TandemConfig"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ClusterCoreTests",
            dependencies: ["CoreSupport", "MembershipCore", "ResourceCore", "FencingCore", "TandemDrivers", "TandemConfig"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ClusterDaemonTests",
            dependencies: ["ClusterDaemon", "DaemonSupport", "TandemTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "TandemSimulatorTests",
            dependencies: ["TandemSimulator", "ReplicationCore", "TandemConfig"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "TandemTransportTests",
            dependencies: [
                "TandemTransport",
                "TandemTestSupport",
                "TandemDrivers",
                "ReplicationCore",
                "TandemConfig",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "TandemStorageTests",
            dependencies: ["TandemStorage", "ReplicationCore", "TandemDrivers", "TandemConfig", "TandemTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ReplicationDaemonTests",
            dependencies: [
                "ReplicationDaemon", "ReplicationCore", "TandemConfig", "TandemStorage", "TandemTestSupport",
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "DeviceFrontendTests",
            dependencies: [
                "DeviceFrontend",
                "TandemTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "LabTests",
            dependencies: ["TandemLab", "DaemonSupport", "DeviceFrontend", "ReplicationDaemon", "TandemTestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "TandemCLITests",
            dependencies: ["TandemCLI", "TandemConfig", "ReplicationDaemon", "TandemTestSupport"],
            swiftSettings: strictSettings
        ),
    ]
)
