#!/usr/bin/env bash
# Benchmark (not a test) of the block device path, side by side in one run:
#   local-file   a file on this machine's file system (fio with O_DIRECT; MariaDB's datadir in a directory here)
#   loop-file    a loop device with direct I/O on a local file (the reference: same kernel path minus FUSE/Tandem)
#   standalone   Tandem's device (FUSE file + loop device) with no peer: resource r0 disconnected
#   protocol-c   Tandem's device, protocol C, connected to the peer over a veth link between two namespaces
#   protocol-a   the same with protocol A (resource r1)
# fio (direct=1): 4k randwrite QD1 with fsync after each write, 4k randwrite QD16, 1M sequential write QD4, 4k
# randread QD1 and QD16 - IOPS, MB/s, p50/p99 completion latency. Then MariaDB with sysbench oltp_write_only
# (4 threads, 4 tables of 10,000 rows) on ext4 on each path: TPS. Every figure is also printed as a ratio to
# loop-file.
#
# Usage: sudo scripts/bench-blockdevice.sh [PATH-TO-TANDEM]   (default: a release build, made if missing)
# Environment: BENCH_SIZE (fio region, default 512M), BENCH_SECONDS (per fio job, default 10), BENCH_DB_SECONDS
# (sysbench run, default 30), BENCH_SKIP_DB=1 to skip MariaDB.
# Needs root, iproute2, util-linux, fio, e2fsprogs, python3, and for MariaDB mariadb-server and sysbench. Everything
# lives in a temporary directory and two namespaces named tdmblk-a/-b (10.213.10.1/.2, private to them); daemons and
# servers are stopped by PID, loop devices detached and namespaces deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "bench-blockdevice.sh needs root" >&2; exit 1; }
tools=(ip fio losetup unshare mkfs.ext4 python3)
[[ ${BENCH_SKIP_DB:-0} == 1 ]] || tools+=(mariadbd mariadb-install-db mariadb sysbench)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "bench-blockdevice.sh: $tool is missing (apt-get install fio sysbench mariadb-server ...)" >&2; exit 1; }
done
source scripts/lib/bench-lab.sh
bench_tandem_binary "${1:-}"
size=${BENCH_SIZE:-512M}
seconds=${BENCH_SECONDS:-10}
db_seconds=${BENCH_DB_SECONDS:-30}
work=$(mktemp -d /tmp/tandem-blk.XXXXXX)
ns_a=tdmblk-a ns_b=tdmblk-b
pids=()
loop_file=""
cleanup() {
    [[ -z $loop_file ]] || losetup -d "$loop_file" 2>/dev/null || true
    bench_cleanup
}
trap cleanup EXIT

bench_namespaces "$ns_a" 10.213.10.1/24 "$ns_b" 10.213.10.2/24

mkdir -p "$work/conf" "$work/alpha" "$work/beta" "$work/results"
for disk in alpha/r0 alpha/r1 beta/r0 beta/r1 local; do truncate -s 1536M "$work/$disk.img"; done
resource() { # NAME PROTOCOL PORT
    cat <<EOF
resource $1 {
  net { protocol $2; connect-int 1; ping-int 1; max-buffers 8000; sndbuf-size 0; }
  disk { c-plan-ahead 0; resync-rate 500M; al-extents 1237; }
  on alpha { device /dev/drbd$3 minor $3; disk $work/alpha/$1.img; address 10.213.10.1:779$3; meta-disk internal; }
  on beta  { device /dev/drbd$3 minor $3; disk $work/beta/$1.img;  address 10.213.10.2:779$3; meta-disk internal; }
}
EOF
}
{ resource r0 C 0; resource r1 A 1; } > "$work/conf/drbd.conf"
declare -A namespace=([alpha]=$ns_a [beta]=$ns_b)
bench_start_daemons r0 r1
for res in r0 r1; do bench_primary_in_sync "$res"; done
loop_file=$(losetup --direct-io=on --find --show "$work/local.img")
[[ $(losetup --list --noheadings --output DIO "$loop_file" | tr -d ' ') == 1 ]] || { echo "no direct I/O on $loop_file" >&2; exit 1; }
declare -A device=([local-file]="$work/local-fio.img" [loop-file]="$loop_file"
    [protocol-c]="$work/alpha/dev/drbd0" [protocol-a]="$work/alpha/dev/drbd1" [standalone]="$work/alpha/dev/drbd0")

# fio TARGET: prefill the region (reads of never-written blocks would be free), then the five jobs.
run_fio() {
    local target=$1 file=${device[$1]}
    echo "fio: $target ($file)" >&2
    local common=(--filename="$file" --direct=1 --size="$size" --output-format=json)
    fio --name=prefill "${common[@]}" --rw=write --bs=1M --ioengine=libaio --iodepth=8 >/dev/null
    local timed=(--time_based --runtime="$seconds" --ramp_time=1 --norandommap --randrepeat=0)
    fio --name=w4k_qd1_fsync "${common[@]}" "${timed[@]}" --rw=randwrite --bs=4k --ioengine=psync --fsync=1 \
        --output="$work/results/$target-w4k_qd1_fsync.json"
    fio --name=w4k_qd16 "${common[@]}" "${timed[@]}" --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 \
        --output="$work/results/$target-w4k_qd16.json"
    fio --name=w1m_seq "${common[@]}" "${timed[@]}" --rw=write --bs=1M --ioengine=libaio --iodepth=4 \
        --output="$work/results/$target-w1m_seq.json"
    fio --name=r4k_qd1 "${common[@]}" "${timed[@]}" --rw=randread --bs=4k --ioengine=psync \
        --output="$work/results/$target-r4k_qd1.json"
    fio --name=r4k_qd16 "${common[@]}" "${timed[@]}" --rw=randread --bs=4k --ioengine=libaio --iodepth=16 \
        --output="$work/results/$target-r4k_qd16.json"
}

# sysbench TARGET: ext4 on the device (a directory here for local-file), MariaDB on it, oltp_write_only. All of it
# in a private mount namespace, so that no copy of the mount outlives the run.
run_sysbench() {
    local target=$1 dev=${device[$1]}
    echo "sysbench: $target" >&2
    [[ $target == local-file ]] && dev=""
    unshare --mount --propagation private bash -euc '
        dev=$1 dir=$2 seconds=$3 out=$4
        mkdir -p "$dir"
        if [[ -n $dev ]]; then mkfs.ext4 -q -F "$dev"; mount -o noatime "$dev" "$dir"; fi
        mariadb-install-db --user=root --datadir="$dir/data" --auth-root-authentication-method=normal \
            --skip-test-db >/dev/null 2>&1
        mariadbd --no-defaults --user=root --datadir="$dir/data" --socket="$dir/mysql.sock" --skip-networking \
            --pid-file="$dir/mysql.pid" --log-error="$dir/error.log" --innodb-flush-log-at-trx-commit=1 \
            --sync-binlog=1 --log-bin="$dir/data/binlog" --innodb-flush-method=O_DIRECT \
            --innodb-buffer-pool-size=256M &
        server=$!
        trap "kill $server 2>/dev/null || true" EXIT
        for _ in $(seq 1 300); do [[ -S $dir/mysql.sock ]] && break; sleep 0.1; done
        mariadb --socket="$dir/mysql.sock" -uroot -e "CREATE DATABASE sbtest"
        sb=(sysbench oltp_write_only --db-driver=mysql --mysql-socket="$dir/mysql.sock" --mysql-user=root
            --tables=4 --table-size=10000 --threads=4)
        "${sb[@]}" prepare >/dev/null
        "${sb[@]}" --time="$seconds" --report-interval=0 run > "$out"
        kill "$server"; wait "$server" 2>/dev/null || true
        trap - EXIT
        [[ -z $dev ]] || umount "$dir"
    ' _ "$dev" "$work/db-$target" "$db_seconds" "$work/results/$target-sysbench.txt"
}

targets=(local-file loop-file protocol-c protocol-a standalone)
for target in local-file loop-file protocol-c protocol-a; do
    run_fio "$target"
    [[ ${BENCH_SKIP_DB:-0} == 1 ]] || run_sysbench "$target"
done
adm alpha disconnect r0
bench_wait_for alpha r0 "connection:StandAlone"
run_fio standalone
[[ ${BENCH_SKIP_DB:-0} == 1 ]] || run_sysbench standalone
adm alpha proc r0 >&2

python3 - "$work/results" "${targets[@]}" <<'EOF'
import json, os, re, sys
results, targets = sys.argv[1], sys.argv[2:]
jobs = [("w4k_qd1_fsync", "write", "4k randwrite QD1 +fsync"), ("w4k_qd16", "write", "4k randwrite QD16"),
        ("w1m_seq", "write", "1M seq write QD4"), ("r4k_qd1", "read", "4k randread QD1"),
        ("r4k_qd16", "read", "4k randread QD16")]
def fio(target, job, side):
    with open(f"{results}/{target}-{job}.json") as f:
        data = json.load(f)["jobs"][0][side]
    pct = data["clat_ns"]["percentile"]
    return data["iops"], data["bw_bytes"] / 1e6, pct["50.000000"] / 1e3, pct["99.000000"] / 1e3
print(f"fio, direct=1 (IOPS for 4k jobs, MB/s for 1M; completion latency p50/p99 in us); ratio to loop-file")
print(f"{'job':26}" + "".join(f"{t:>26}" for t in targets))
for job, side, label in jobs:
    row = f"{label:26}"
    base = fio("loop-file", job, side)
    for t in targets:
        iops, mbps, p50, p99 = fio(t, job, side)
        value, ref = (mbps, base[1]) if job == "w1m_seq" else (iops, base[0])
        unit = "MB/s" if job == "w1m_seq" else ""
        row += f"{value:.0f}{unit} {value / ref:.2f}x {p50:.0f}/{p99:.0f}".rjust(26)
    print(row)
def tps(target):
    path = f"{results}/{target}-sysbench.txt"
    if not os.path.exists(path):
        return None
    match = re.search(r"transactions:\s+\d+\s+\(([\d.]+) per sec", open(path).read())
    return float(match.group(1)) if match else None
if tps("loop-file"):
    print("\nMariaDB sysbench oltp_write_only, 4 threads: TPS (ratio to ext4 on loop-file)")
    base = tps("loop-file")
    for t in targets:
        value = tps(t)
        print(f"  {t:12} {value:8.0f}  {value / base:4.2f}x" if value else f"  {t:12} (no result)")
EOF
