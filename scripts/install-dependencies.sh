#!/usr/bin/env bash
# Installs the Debian packages Tandem's build and tests need. Safe to run again: it installs only what is missing.
# Needs root (apt-get). Swift itself is expected at /opt/swift (or on PATH).
set -euo pipefail

packages=(
  coreutils    # dd: the verify test corrupts blocks with it
  diffutils    # cmp: the replicad tests compare images and backing files with it
  e2fsprogs    # mkfs.ext4, e2fsck: file systems on the replicated block device
  drbd-utils   # drbdadm / drbdadm-84: the external oracle for drbd.conf parsing
  fio          # scripts/bench-replication.sh (its nbd engine)
  fuse3        # fusermount3, and the fuse kernel interface's user side, for the FUSE block file
  iproute2     # ip netns / veth: the two-namespace replicad tests; ip addr for the IPaddr2 agent
  iputils-arping # arping: gratuitous ARP after a floating address moves (the IPaddr2 agent)
  kmod         # modinfo, which drbdadm 9 calls to look for a kernel module (there is none; it copes)
  libfuse3-dev # libfuse3's headers: the CFuse system library target builds against them
  libnbd-bin   # nbdinfo, nbdcopy: an independent NBD client for the NBD server and replicad tests
  mariadb-client # mariadb, mariadb-admin: the mysqld agent's readiness check and the tests' queries
  mariadb-server # mariadbd, mariadb-install-db: the mysqld agent's test runs a real server
  pkg-config   # how SwiftPM finds libfuse3's flags
  python3      # the replication demo's small control-socket client; the cluster tests' dummy service
  sysbench     # tandem lab bench: oltp_write_only through the VIP, replicated and unreplicated
  resource-agents # Debian's OCF agents (ocf:heartbeat:IPaddr2...): the cluster tests run them unchanged
  util-linux   # setpriv, unshare, nsenter, setsid, losetup: the block device tests and the lab's machines
  xfsprogs     # mkfs.xfs, xfs_repair: the switchover test runs xfs as well as ext4
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages must not start services on this machine (mariadb-server would start a server of its own): tests start
  # what they need and stop it. policy-rc.d refuses every start during the install, then goes.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1 && [ ! -x /opt/swift/usr/bin/swift ]; then
  echo "error: Swift 6 is not installed (expected /opt/swift/usr/bin/swift or swift on PATH)" >&2
  exit 1
fi
