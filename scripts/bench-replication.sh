#!/usr/bin/env bash
# Benchmark (not a test): fio through the NBD export of the Primary in three configurations, side by side in one run:
#   1. protocol C, connected to the peer over a veth link between two network namespaces;
#   2. the same resource StandAlone (disconnected);
#   3. the raw backing file (fio's psync engine with O_DIRECT, on the same file system).
# For each: sequential 1 MiB writes (MB/s, queue depth 16) and 4 KiB random writes at queue depth 1, each followed by
# a flush (fsync over NBD, fdatasync on the file): IOPS and completion latency p50/p99. Then the ratios to raw.
#
# Usage: sudo scripts/bench-replication.sh [PATH-TO-TANDEM]   (default: a release build, made if missing)
# Environment: BENCH_SIZE (default 512M, written sequentially), BENCH_SECONDS (default 10, per random-write run).
# Needs root, iproute2, fio (with its nbd engine) and python3. Everything is made in a temporary directory and two
# namespaces named tdmbench-a/-b (10.213.9.1/.2, private to them) and removed on exit; the daemons are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "bench-replication.sh needs root (network namespaces)" >&2; exit 1; }
for tool in ip fio python3; do
    command -v "$tool" >/dev/null || { echo "bench-replication.sh: $tool is missing (scripts/install-dependencies.sh)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench-replication.sh: this fio has no nbd engine" >&2; exit 1; }
source scripts/lib/bench-lab.sh
bench_tandem_binary "${1:-}"
size=${BENCH_SIZE:-512M}
seconds=${BENCH_SECONDS:-10}
work=$(mktemp -d /tmp/tandem-bench.XXXXXX)
ns_a=tdmbench-a ns_b=tdmbench-b
pids=()
trap bench_cleanup EXIT

bench_namespaces "$ns_a" 10.213.9.1/24 "$ns_b" 10.213.9.2/24

mkdir -p "$work/conf" "$work/alpha" "$work/beta"
truncate -s 1G "$work/alpha/disk.img" "$work/beta/disk.img" "$work/raw.img"
cat > "$work/conf/drbd.conf" <<EOF
resource r0 {
  net { protocol C; connect-int 1; ping-int 1; max-buffers 8000; sndbuf-size 0; }
  disk { c-plan-ahead 0; resync-rate 500M; al-extents 1237; }
  on alpha { device /dev/drbd0 minor 0; disk $work/alpha/disk.img; address 10.213.9.1:7789; meta-disk internal; }
  on beta  { device /dev/drbd0 minor 0; disk $work/beta/disk.img;  address 10.213.9.2:7789; meta-disk internal; }
}
EOF
declare -A namespace=([alpha]=$ns_a [beta]=$ns_b)
bench_start_daemons r0
bench_primary_in_sync r0
uri="nbd+unix:///r0?socket=$work/alpha/run/nbd/r0.sock"

# fio JOB-NAME ARGS...: one fio run, its JSON kept for the report.
run_fio() {
    local name=$1; shift
    fio --name="$name" --output-format=json --output="$work/$name.json" "$@" >/dev/null
}
measure() { # LABEL FLUSH-OPTION ENGINE-ARGS...
    local label=$1 flush=$2; shift 2
    echo "measuring: $label" >&2
    run_fio "$label-seq" "$@" --rw=write --bs=1M --iodepth=16 --size="$size"
    run_fio "$label-sync" "$@" --rw=randwrite --bs=4k --iodepth=1 "$flush" --size="$size" \
        --time_based --runtime="$seconds"
}
# The flush after each write: NBD_CMD_FLUSH through the nbd engine (--fsync), fdatasync on the raw file (what
# replicad's block store calls for a flush; fsync would also write the file's timestamps).
nbd_engine=(--ioengine=nbd --uri="$uri")
measure connected --fsync=1 "${nbd_engine[@]}"
adm alpha disconnect r0
bench_wait_for alpha r0 "connection:StandAlone"
measure standalone --fsync=1 "${nbd_engine[@]}"
measure raw --fdatasync=1 --ioengine=psync --direct=1 --filename="$work/raw.img"
adm alpha proc r0 >&2

python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
def job(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)["jobs"][0]["write"]
rows = []
for label in ["connected", "standalone", "raw"]:
    seq, sync = job(f"{label}-seq"), job(f"{label}-sync")
    clat = sync["clat_ns"]["percentile"]
    # With --fsync=1 every write is followed by a flush, so 1/IOPS is the latency of a durable 4 KiB write.
    rows.append((label, seq["bw_bytes"] / 1e6, sync["iops"], 1e6 / max(sync["iops"], 1e-9),
                 clat["50.000000"] / 1e3, clat["99.000000"] / 1e3))
names = {"connected": "protocol C, connected (veth)", "standalone": "StandAlone (no peer)", "raw": "raw backing file"}
print(f"{'configuration':30} {'seq 1M MB/s':>11} {'sync 4k IOPS':>12} {'durable 4k us':>13} {'write p50 us':>12} {'write p99 us':>12}")
for label, mbps, iops, durable, p50, p99 in rows:
    print(f"{names[label]:30} {mbps:11.1f} {iops:12.0f} {durable:13.0f} {p50:12.0f} {p99:12.0f}")
raw = rows[2]
print("\nratios to the raw backing file (higher is better for MB/s and IOPS, lower for latency):")
for label, mbps, iops, durable, p50, p99 in rows[:2]:
    print(f"  {names[label]:30} MB/s {mbps / raw[1]:.2f}x   sync IOPS {iops / raw[2]:.2f}x   durable 4k latency {durable / raw[3]:.2f}x")
c, s = rows[0], rows[1]
print(f"\nconnected vs StandAlone: MB/s {c[1] / s[1]:.2f}x, sync IOPS {c[2] / s[2]:.2f}x, durable 4k latency {c[3] / s[3]:.2f}x")
EOF
