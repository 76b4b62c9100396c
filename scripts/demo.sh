#!/usr/bin/env bash
# The lab demo: a two-node MariaDB cluster in network namespaces on this machine, failing over under load.
#
# Installs what is missing, builds Tandem in release mode, builds the lab (tandem lab up: namespaces, replicated
# disks, initial sync, mkfs, MariaDB, the cluster, a replica), runs a workload through the VIP, powers off the
# active node, shows the failover's timeline and the zero-loss verdict, fails back, and leaves the lab up to look
# around. `tandem lab down` removes it. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-dependencies.sh
export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product tandem
tandem="$(pwd)/.build/release/tandem"

if [ -e /var/lib/tandem-lab/lab.json ]; then
  echo "== a lab from an earlier run is up: removing it first (tandem lab down)"
  "$tandem" lab down
fi
echo "== tandem lab up"
"$tandem" lab up
echo
echo "== power loss of the active node under load (tandem lab scenario kill-node)"
"$tandem" lab scenario kill-node --load-seconds 3
echo
echo "== failback to node1 (tandem lab scenario failback)"
"$tandem" lab scenario failback --load-seconds 2
echo
echo "== tandem lab status"
"$tandem" lab status
cat <<TEXT

The lab is still up. Look around:
  $tandem lab status
  $tandem lab scenario all                 every fault scenario, with timelines and verdicts
  $tandem lab bench                        10 kill-node trials (min/median/max) and sysbench through the VIP
  ip netns exec tandem-client mariadb -h 10.216.1.100 -u tandem -ptandem-lab lab
  nsenter -t \$(cat /var/lib/tandem-lab/node1/init.pid) -m -u -n -p -r -w bash     a shell on node1
  less /var/lib/tandem-lab/node2/log/ha-log       node2's Heartbeat log
  $tandem lab down                         remove everything
TEXT
