/// The configuration files of the lab's nodes: seed 001's recipe (drbd.conf, ha.cf, authkeys, haresources, a tiny
/// /etc/my.cnf that includes the my.cnf on the replicated file system) with timings for one machine.
///
/// Both nodes get the same files, as the seed asks ("all 3 files should be the same on both nodes").
struct LabConfigFiles {
    let layout: LabLayout
    /// The shared secret of the replication link and the heartbeat signatures, made at `lab up`.
    let secret: String
    /// STONITH through the lab's power switch (`lab up --stonith`).
    let stonith: Bool
    /// A witness on the client machine (`lab up --witness`).
    let witness: Bool
    static let witnessPort = 5695
    /// The `tandem` executable, which the fence agent script runs.
    let executable: String

    /// DRBD 8.4 syntax. Protocol C: a write completes only when both disks have it. The timers are short because
    /// the link is a veth pair on one machine: a dead peer is noticed within ping-int + ping-timeout (1.5 s).
    var drbdConf: String {
        var text = """
            # /etc/tandem/drbd.conf of the Tandem lab (seed 001's resource, on files instead of disks)
            global {
                usage-count no;
            }
            common {
                net {
                    protocol C;
                    cram-hmac-alg sha1;
                    shared-secret "\(secret)";
                    after-sb-0pri discard-zero-changes;
                    after-sb-1pri discard-secondary;
                    after-sb-2pri disconnect;
                    ping-int 1;
                    ping-timeout 5;
                    connect-int 1;
                    timeout 5;
                }
                disk {
                    on-io-error detach;
                    resync-rate 400M;
                    # dopd's recipe: a Primary that loses the replication link has the peer outdate its disk
                    # over the heartbeat links before it carries on alone.
                    fencing resource-only;
                }
                handlers {
                    fence-peer "\(executable) fence-peer";
                }
            }
            resource \(LabLayout.resourceName) {

            """
        for node in LabHost.nodes {
            text += """
                    on \(node.rawValue) {
                        device \(LabLayout.devicePath);
                        disk \(layout.diskImage(node));
                        address \(layout.replicationAddress(node)):\(LabLayout.replicationPort);
                        meta-disk internal;
                    }

                """
        }
        return text + "}\n"
    }

    /// The failed check (within 20 s) that moves the group rather than restarting it in place.
    static let monitorFailures = 3

    /// Seed 001's ha.cf with fast timings: a 200 ms keepalive and a dead peer declared after 1 s. Two links, as the
    /// seed insists: broadcast on the dedicated heartbeat link (eth2) and unicast over the service network (eth1).
    /// Tandem's monitoring checks every resource every second (the default is 10 s).
    var haCf: String {
        var text = """
            # /etc/tandem/ha.cf of the Tandem lab
            node node1
            node node2
            auto_failback off
            bcast eth2

            """
        for node in LabHost.nodes { text += "ucast eth1 \(layout.serviceAddress(node))\n" }
        text += """
            udpport 694
            logfile /var/log/ha-log
            keepalive 200ms
            warntime 600ms
            deadtime 1
            initdead 10
            ping \(layout.serviceAddress(.client))
            monitor_interval 1
            monitor_timeout 5
            monitor_failures \(Self.monitorFailures)
            monitor_failure_window 20

            """
        if witness {
            // The client machine is the third site: both nodes reach it over the service network.
            text += "witness \(layout.serviceAddress(.client)):\(Self.witnessPort)\n"
        }
        if stonith {
            // The node that runs the group fences at once; the other waits a second, far longer than the switch
            // takes to power a node off.
            text += """
                stonith_host * \(Self.fenceAgentPath) socket=\(layout.powerSwitchSocket)
                stonith_action off
                stonith_delay 1
                stonith_timeout 30

                """
        }
        return text
    }

    /// The fence agent, as a fence-agents program would be installed: a script that runs `tandem lab fence-agent`.
    static let fenceAgentPath = "/etc/tandem/fence_tandem_lab"

    var fenceAgentScript: String {
        "#!/bin/sh\n# The Tandem lab's fence agent: name=value lines on stdin, as fence_ipmilan reads them.\nexec \(executable) lab fence-agent\n"
    }

    var authkeys: String { "auth 1\n1 sha1 \(secret)\n" }

    /// The (and seed 001's) resource group: the device, its file system, MariaDB, then the VIP last, so
    /// that clients reach the new node only when it can serve them.
    var haresources: String {
        "node1 drbddisk::\(LabLayout.resourceName) Filesystem::\(LabLayout.devicePath)::\(LabLayout.mountPoint)::ext4 "
            + "mysqld IPaddr2::\(layout.virtualAddress)/\(layout.servicePrefixLength)/eth1\n"
    }

    /// /etc/my.cnf (and /etc/mysql/my.cnf, which the mysqld agent and MariaDB's tools read) on each node: only an
    /// include, so that both nodes always run the configuration that is on the replicated device.
    var etcMyCnf: String { "# The real configuration is on the replicated device.\n!include \(LabLayout.mountPoint)/my.cnf\n" }

    /// /data/mysql/my.cnf, on the replicated device. Durability first: every commit is flushed (redo log and binary
    /// log), so a commit acknowledged to a client is on both nodes' disks (protocol C) before the client hears of it.
    var deviceMyCnf: String {
        """
        # /data/mysql/my.cnf: MariaDB's configuration, on the replicated device (seed 001)
        \(Self.socketAndPort)
        datadir                        = \(LabLayout.mountPoint)
        pid-file                       = /run/mysqld/mysqld.pid
        user                           = mysql
        skip-name-resolve
        default_storage_engine         = InnoDB
        innodb_buffer_pool_size        = 64M
        innodb_log_file_size           = 32M
        innodb_flush_log_at_trx_commit = 1
        innodb_flush_method            = O_DIRECT
        innodb_doublewrite             = 1
        log_error                      = \(LabLayout.mountPoint)/error.log
        server_id                      = 1
        log-bin                        = mysql-bin
        sync_binlog                    = 1
        binlog_format                  = row
        gtid_strict_mode               = 1
        expire_logs_days               = 1
        max_binlog_size                = 64M
        max_connections                = 100

        """
    }

    /// What the nodes' and the replica's my.cnf share: where clients and the server meet.
    static let socketAndPort = """
        [client]
        port                           = \(LabLayout.mysqlPort)
        socket                         = /run/mysqld/mysqld.sock

        [mysqld]
        port                           = \(LabLayout.mysqlPort)
        socket                         = /run/mysqld/mysqld.sock
        bind-address                   = 0.0.0.0
        """

    /// The replica's own my.cnf (on its local disk): a different server id, relay logs made crash-safe.
    static let replicaMyCnf = """
        # /etc/mysql/my.cnf of the lab's replica
        \(Self.socketAndPort)
        datadir                        = /var/lib/mysql
        pid-file                       = /run/mysqld/mysqld.pid
        user                           = mysql
        skip-name-resolve
        innodb_buffer_pool_size        = 64M
        innodb_flush_log_at_trx_commit = 1
        log_error                      = /var/lib/mysql/error.log
        server_id                      = 2
        relay_log                      = relay-bin
        relay_log_recovery             = 1
        read_only                      = 1
        gtid_strict_mode               = 1

        """
}
