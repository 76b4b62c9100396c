# Shared by the benchmark scripts (sourced, not run): the tandem binary, two network namespaces joined by a veth
# pair, a replicad in each, and the cleanup. The caller sets `work` (a temporary directory with conf/drbd.conf),
# `ns_a`, `ns_b` and `pids=()`, and calls bench_cleanup on exit.

# bench_tandem_binary [PATH]: sets `tandem` to PATH, or to a release build (made if missing).
bench_tandem_binary() {
    if [[ -n ${1:-} ]]; then
        tandem=$(realpath "$1")
    else
        swift build -c release --product tandem >&2
        tandem=$(realpath .build/release/tandem)
    fi
}

# bench_cleanup: stops the daemons by PID, deletes the namespaces and the work directory.
bench_cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$ns_a" 2>/dev/null || true
    ip netns del "$ns_b" 2>/dev/null || true
    rm -rf "$work"
}

# bench_namespaces NS_A ADDRESS_A NS_B ADDRESS_B (addresses with their prefix, e.g. 10.213.9.1/24): each veth end
# is named after its namespace.
bench_namespaces() {
    ip netns add "$1"
    ip netns add "$3"
    ip link add "$1" netns "$1" type veth peer name "$3" netns "$3"
    ip -n "$1" addr add "$2" dev "$1"
    ip -n "$3" addr add "$4" dev "$3"
    for ns in "$1" "$3"; do
        ip -n "$ns" link set lo up
        ip -n "$ns" link set "$ns" up
    done
}

# adm NODE VERB ARGS...: tandem adm on NODE, in its namespace (the `namespace` map: node name -> namespace).
adm() { local node=$1; shift; ip netns exec "${namespace[$node]}" "$tandem" adm "$@" --config-dir "$work/conf" --run-dir "$work/$node/run" --node "$node"; }

# bench_wait_for NODE RESOURCE PATTERN: poll status until it matches (bounded: 120 s).
bench_wait_for() {
    local deadline=$((SECONDS + 120))
    until adm "$1" status "$2" | grep -q "$3"; do
        ((SECONDS < deadline)) || { echo "gave up waiting for '$3' on $1 $2" >&2; adm "$1" status "$2" >&2; exit 1; }
        sleep 0.3
    done
}

# bench_start_daemons RESOURCES...: create-md, then replicad on alpha and beta (device links under $work/NODE),
# waiting until both answer.
bench_start_daemons() {
    local node deadline
    for node in alpha beta; do
        adm "$node" create-md "$@" >/dev/null
        mkdir -p "$work/$node/run"
        ip netns exec "${namespace[$node]}" "$tandem" replicad --foreground --config-dir "$work/conf" \
            --run-dir "$work/$node/run" --node "$node" --preserve-dir "$work/$node/preserved" \
            --device-link-root "$work/$node" >"$work/$node/replicad.log" 2>&1 &
        pids+=($!)
    done
    for node in alpha beta; do
        deadline=$((SECONDS + 30))
        until [[ -S $work/$node/run/replicad.sock ]]; do
            ((SECONDS < deadline)) || { echo "replicad on $node did not start" >&2; cat "$work/$node/replicad.log" >&2; exit 1; }
            sleep 0.1
        done
    done
}

# bench_primary_in_sync RESOURCE: up on both, skip the initial sync of the fresh disks, alpha Primary, in sync.
bench_primary_in_sync() {
    local node
    for node in alpha beta; do adm "$node" up "$1"; done
    bench_wait_for alpha "$1" "peer-disk:Inconsistent"
    adm alpha new-current-uuid --clear-bitmap "$1"
    adm alpha primary "$1"
    bench_wait_for alpha "$1" "peer-disk:UpToDate"
}
