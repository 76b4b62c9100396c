#!/usr/bin/env bash
# Benchmark (not a test) of the block device path, side by side in one run:
#   local-file   a file on this machine's file system (fio with O_DIRECT; MariaDB's datadir in a directory here)
#   loop-file    a loop device with direct I/O on a local file (the reference: same kernel path minus FUSE/Tandem)
#   standalone   Tandem's device (FUSE file + loop device) with no peer: resource r2, up on alpha only, disconnected
#   protocol-c   Tandem's device, protocol C, connected to the peer over a veth link between two namespaces
#   protocol-a   the same with protocol A (resource r1)
# fio (direct=1): 4k randwrite QD1 with fsync after each write, 4k randwrite QD16, 1M sequential write QD4, 4k
# randread QD1 and QD16 - IOPS, MB/s, p50/p99 completion latency. Then MariaDB with sysbench oltp_write_only
# (4 threads, 4 tables of 10,000 rows) on ext4 on each path: TPS. Every figure is also printed as a ratio to
# loop-file.
#
# This machine's disk is shared and noisy: one target measured after another can differ by 3x for reasons outside
# the run. So the targets take turns: BENCH_ROUNDS rounds (default 3), each running every target's jobs in turn, and
# every figure is the median over the rounds (the spread, min-max, is printed for the ratios that matter).
#
# Usage: sudo scripts/bench-blockdevice.sh [PATH-TO-TANDEM]   (default: a release build, made if missing)
# Environment: BENCH_SIZE (fio region, default 512M), BENCH_SECONDS (per fio job, default 10), BENCH_DB_SECONDS
# (sysbench run, default 30), BENCH_ROUNDS (default 3), BENCH_SKIP_DB=1 to skip MariaDB.
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
rounds=${BENCH_ROUNDS:-3}
[[ $rounds =~ ^[1-9]$ ]] || { echo "BENCH_ROUNDS must be 1 to 9" >&2; exit 1; }
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
for disk in alpha/r0 alpha/r1 alpha/r2 beta/r0 beta/r1 beta/r2 local; do truncate -s 1536M "$work/$disk.img"; done
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
{ resource r0 C 0; resource r1 A 1; resource r2 C 2; } > "$work/conf/drbd.conf"
declare -A namespace=([alpha]=$ns_a [beta]=$ns_b)
bench_start_daemons r0 r1 r2
for res in r0 r1; do bench_primary_in_sync "$res"; done
# r2 never meets its peer: up on alpha only, made UpToDate by force, then StandAlone.
adm alpha up r2
adm alpha primary --force r2
adm alpha disconnect r2
bench_wait_for alpha r2 "connection:StandAlone"
loop_file=$(losetup --direct-io=on --find --show "$work/local.img")
[[ $(losetup --list --noheadings --output DIO "$loop_file" | tr -d ' ') == 1 ]] || { echo "no direct I/O on $loop_file" >&2; exit 1; }
declare -A device=([local-file]="$work/local-fio.img" [loop-file]="$loop_file"
    [protocol-c]="$work/alpha/dev/drbd0" [protocol-a]="$work/alpha/dev/drbd1" [standalone]="$work/alpha/dev/drbd2")

# prefill TARGET: write the whole region once (reads of never-written blocks would be free, and writes into holes
# allocate).
prefill() {
    fio --name=prefill --filename="${device[$1]}" --direct=1 --size="$size" --rw=write --bs=1M --ioengine=libaio \
        --iodepth=8 --output-format=json >/dev/null
}

# run_fio TARGET ROUND: the five jobs.
run_fio() {
    local target=$1 round=$2 file=${device[$1]}
    echo "fio: round $round, $target ($file)" >&2
    local common=(--filename="$file" --direct=1 --size="$size" --output-format=json)
    local timed=(--time_based --runtime="$seconds" --ramp_time=1 --norandommap --randrepeat=0)
    fio --name=w4k_qd1_fsync "${common[@]}" "${timed[@]}" --rw=randwrite --bs=4k --ioengine=psync --fsync=1 \
        --output="$work/results/$target-w4k_qd1_fsync-$round.json"
    fio --name=w4k_qd16 "${common[@]}" "${timed[@]}" --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 \
        --output="$work/results/$target-w4k_qd16-$round.json"
    fio --name=w1m_seq "${common[@]}" "${timed[@]}" --rw=write --bs=1M --ioengine=libaio --iodepth=4 \
        --output="$work/results/$target-w1m_seq-$round.json"
    fio --name=r4k_qd1 "${common[@]}" "${timed[@]}" --rw=randread --bs=4k --ioengine=psync \
        --output="$work/results/$target-r4k_qd1-$round.json"
    fio --name=r4k_qd16 "${common[@]}" "${timed[@]}" --rw=randread --bs=4k --ioengine=libaio --iodepth=16 \
        --output="$work/results/$target-r4k_qd16-$round.json"
}

# sysbench TARGET: ext4 on the device (a directory here for local-file), MariaDB on it, oltp_write_only. All of it
# in a private mount namespace, so that no copy of the mount outlives the run.
run_sysbench() {
    local target=$1 round=$2 dev=${device[$1]}
    echo "sysbench: round $round, $target" >&2
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
    ' _ "$dev" "$work/db-$target-$round" "$db_seconds" "$work/results/$target-sysbench-$round.txt"
}

targets=(local-file loop-file protocol-c protocol-a standalone)
for target in "${targets[@]}"; do prefill "$target"; done
for round in $(seq 1 "$rounds"); do
    for target in "${targets[@]}"; do run_fio "$target" "$round"; done
done
if [[ ${BENCH_SKIP_DB:-0} != 1 ]]; then
    for round in $(seq 1 "$rounds"); do
        for target in "${targets[@]}"; do run_sysbench "$target" "$round"; done
    done
fi
for res in r0 r1 r2; do adm alpha proc "$res" >&2; done

python3 - "$work/results" "$rounds" "${targets[@]}" <<'EOF'
import json, os, re, statistics, sys
results, rounds, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
jobs = [("w4k_qd1_fsync", "write", "4k randwrite QD1 +fsync"), ("w4k_qd16", "write", "4k randwrite QD16"),
        ("w1m_seq", "write", "1M seq write QD4"), ("r4k_qd1", "read", "4k randread QD1"),
        ("r4k_qd16", "read", "4k randread QD16")]
def fio_round(target, job, side, round):
    with open(f"{results}/{target}-{job}-{round}.json") as f:
        data = json.load(f)["jobs"][0][side]
    pct = data["clat_ns"]["percentile"]
    value = data["bw_bytes"] / 1e6 if job == "w1m_seq" else data["iops"]
    return value, pct["50.000000"] / 1e3, pct["99.000000"] / 1e3
def fio(target, job, side):
    figures = [fio_round(target, job, side, r) for r in range(1, rounds + 1)]
    return [statistics.median(column) for column in zip(*figures)], [f[0] for f in figures]
print(f"fio, direct=1: median of {rounds} interleaved rounds (IOPS for 4k jobs, MB/s for 1M; completion latency "
      "p50/p99 in us); ratio to loop-file, of the medians")
print(f"{'job':26}" + "".join(f"{t:>26}" for t in targets))
for job, side, label in jobs:
    row = f"{label:26}"
    (base, _, _), _ = fio("loop-file", job, side)
    for t in targets:
        (value, p50, p99), _ = fio(t, job, side)
        unit = "MB/s" if job == "w1m_seq" else ""
        row += f"{value:.0f}{unit} {value / base:.2f}x {p50:.0f}/{p99:.0f}".rjust(26)
    print(row)
print("\nper-round ratios to loop-file for 4k randwrite QD1 +fsync (min-max over the rounds):")
_, base_rounds = fio("loop-file", "w4k_qd1_fsync", "write")
for t in targets:
    _, values = fio(t, "w4k_qd1_fsync", "write")
    ratios = [v / b for v, b in zip(values, base_rounds)]
    print(f"  {t:12} {min(ratios):4.2f}-{max(ratios):4.2f}x")
def tps(target):
    values = []
    for r in range(1, rounds + 1):
        path = f"{results}/{target}-sysbench-{r}.txt"
        match = re.search(r"transactions:\s+\d+\s+\(([\d.]+) per sec", open(path).read()) if os.path.exists(path) else None
        if not match:
            return None
        values.append(float(match.group(1)))
    return values
base = tps("loop-file")
if base:
    print(f"\nMariaDB sysbench oltp_write_only, 4 threads: TPS, median of {rounds} interleaved rounds "
          "(ratio to ext4 on loop-file; per-round ratios min-max)")
    for t in targets:
        values = tps(t)
        if not values:
            print(f"  {t:12} (no result)")
            continue
        ratios = [v / b for v, b in zip(values, base)]
        print(f"  {t:12} {statistics.median(values):8.0f}  {statistics.median(values) / statistics.median(base):4.2f}x"
              f"  ({min(ratios):4.2f}-{max(ratios):4.2f}x)")
EOF
