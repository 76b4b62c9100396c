#!/usr/bin/env bash
# Two replicad processes on loopback replicate a resource: create-md, up, primary --force and the initial sync,
# ext4 made and a file written on the Primary's block device, a role switch, the file read back on the other node,
# and a clean shutdown.
#
# Usage: scripts/replication-demo.sh PATH-TO-TANDEM
# Everything lives in a temporary directory; the daemons it starts are stopped by PID on exit. Traffic stays on
# 127.0.0.1. Both nodes share this machine's /dev, so each makes its device link (drbd.conf's /dev/drbd0) under its
# own directory (--device-link-root); file systems are mounted in private mount namespaces (unshare), so that no
# copy of a mount outlives the step that made it. Needs root, FUSE, loop devices and e2fsprogs.
set -euo pipefail
tandem=$(realpath "${1:?usage: $0 PATH-TO-TANDEM}")
work=$(mktemp -d /tmp/tandem-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Two free loopback ports, chosen by the kernel.
read -r port_alpha port_beta < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

mkdir -p "$work/conf" "$work/alpha" "$work/beta"
truncate -s 64M "$work/alpha/disk.img" "$work/beta/disk.img"
cat > "$work/conf/drbd.conf" <<EOF
resource r0 {
  net { protocol C; connect-int 1; ping-int 1; verify-alg crc32c; }
  disk { c-plan-ahead 0; resync-rate 200M; }
  on alpha { device /dev/drbd0 minor 0; disk $work/alpha/disk.img; address 127.0.0.1:$port_alpha; meta-disk internal; }
  on beta  { device /dev/drbd0 minor 0; disk $work/beta/disk.img;  address 127.0.0.1:$port_beta;  meta-disk internal; }
}
EOF

adm() { local node=$1; shift; "$tandem" adm "$@" --config-dir "$work/conf" --run-dir "$work/$node/run" --node "$node"; }
say() { printf '\n== %s\n' "$*"; }
wait_for() { # NODE PATTERN SECONDS: poll `status` until it matches
    local deadline=$((SECONDS + $3))
    until adm "$1" status r0 | grep -q "$2"; do
        if ((SECONDS > deadline)); then echo "gave up waiting for '$2' on $1" >&2; adm "$1" status r0 >&2; return 1; fi
        sleep 0.5
    done
}

say "create-md on both nodes (internal meta-disk at the end of each 64 MiB backing file)"
adm alpha create-md r0
adm beta create-md r0

say "start tandem replicad on alpha and beta (each with its own run directory and control socket)"
for node in alpha beta; do
    mkdir -p "$work/$node/run"
    "$tandem" replicad --foreground --config-dir "$work/conf" --run-dir "$work/$node/run" --node "$node" \
        --device-link-root "$work/$node" > "$work/$node/replicad.log" 2>&1 &
    pids+=($!)
done
for node in alpha beta; do
    for _ in $(seq 1 100); do [ -S "$work/$node/run/replicad.sock" ] && break; sleep 0.1; done
done

say "up on both: attach and connect; neither has UpToDate data yet"
adm alpha up r0
adm beta up r0
wait_for alpha "peer-disk:" 30
adm alpha status r0

say "primary --force on alpha: alpha's data wins, the initial sync runs"
adm alpha primary --force r0
wait_for alpha "peer-disk:UpToDate" 120
adm alpha status r0

say "alpha is Primary: its block device is a loop device on a FUSE file, linked as drbd.conf's /dev/drbd0"
ls -l "$work/alpha/dev/drbd0"
losetup -l -O NAME,DIO,BACK-FILE "$(readlink "$work/alpha/dev/drbd0")"

say "mkfs.ext4 on alpha's device, mount it, write a file, fsync, umount"
mkdir -p "$work/mnt"
unshare --mount --propagation private sh -euc "
    mkfs.ext4 -q -F '$work/alpha/dev/drbd0'
    mount '$work/alpha/dev/drbd0' '$work/mnt'
    echo 'written on alpha, replicated with protocol C' > '$work/mnt/hello.txt'
    sync '$work/mnt/hello.txt'
    umount '$work/mnt'"

say "switch roles: secondary on alpha (its device goes away), primary on beta (beta's device appears)"
adm alpha secondary r0
adm beta primary r0
adm beta status r0

say "mount beta's device and read the file; fsck is clean"
unshare --mount --propagation private sh -euc "
    mount '$work/beta/dev/drbd0' '$work/mnt'
    cat '$work/mnt/hello.txt'
    umount '$work/mnt'
    e2fsck -fn '$work/beta/dev/drbd0' >/dev/null && echo 'e2fsck -fn: clean'"

say "online verify from beta: no block differs"
adm beta verify r0
wait_for beta "peer-disk:UpToDate" 60
sleep 2
adm beta status r0

say "down on both; SIGTERM to the daemons; the metadata is clean"
adm beta secondary r0
adm alpha down r0
adm beta down r0
adm alpha dump-md r0 | head -5
echo
echo "Replication demo finished."
