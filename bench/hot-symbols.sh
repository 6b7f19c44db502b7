#!/usr/bin/env bash
# hot-symbols.sh: writes crates/trellis-proxy/hot-symbols.txt, the functions a running
# trellis-proxy executes, which its build places side by side (see that crate's build.rs).
#
#   bench/hot-symbols.sh        # about two minutes; then rebuild the proxy
#
# It runs the two-hop benchmark pairs with every proxy under callgrind (instruction counts,
# so every function that runs is seen, however rarely): plain Trellis from static files, and
# Trellis mTLS joined to a control plane with SCALE_SERVICES extra services, HTTP/1.1 kept
# and multiplexed over HTTP/2 between the proxies. Each pair starts, carries RATE req/s for
# DURATION, idles IDLE seconds, and stops. valgrind's virtual CPU lacks some instructions (AVX-512, for one), so
# libraries that choose code by CPU (aws-lc's AES-GCM) run other functions natively: if
# `perf` works here, the mTLS pair also runs natively under `perf record` and the functions
# it samples are added.
#
# The list names functions by their mangled symbols, whose hashes change with the compiler,
# dependency versions and the workspace's own version number: run it again after updating
# any of them, and before a benchmark that measures memory (compare.sh reports how much of
# the list the binary still has). Knobs: SCALE_SERVICES=1000, RATE=200, DURATION=3s, IDLE=22, BIN_DIR
# and PROXY_BIN_DIR (built binaries; the list must come from scripts/build-proxy's build, the
# one that ships), OUT (default crates/trellis-proxy/hot-symbols.txt).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE_SERVICES=${SCALE_SERVICES:-1000}
RATE=${RATE:-200}
DURATION=${DURATION:-3s}
IDLE=${IDLE:-22}
WARMUP=1s
CONNECTIONS=16
REQUEST_PATH=/bytes/1024
OUT=${OUT:-$ROOT/crates/trellis-proxy/hot-symbols.txt}

BENCH_NAME=hot-symbols
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
# shellcheck source=bench/proxy-lib.sh
source "$ROOT/bench/proxy-lib.sh"
bench_prerequisites
need python3 "apt-get install python3"
need valgrind "apt-get install valgrind"
need nm "apt-get install binutils"
release_binaries
start_backend
scale_configs "$SCALE_SERVICES" 10

load() {
    "$BIN/trellis-bench" --url "$CLIENT_URL" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
        --connections "$CONNECTIONS" --threads 1 --output json >"$TMP/load.json" 2>"$TMP/load.err" ||
        { cat "$TMP/load.err" >&2; die "the load through $1 failed"; }
}

# Both proxies of a pair under callgrind: start (slowly: everything runs ~50× slower), load, stop.
under_callgrind() {
    local label=$1
    shift
    local grind="valgrind --tool=callgrind --demangle=no --callgrind-out-file=$TMP/$label"
    say "$label: both proxies under callgrind"
    WAIT_SECONDS=120 CLIENT_WRAPPER="$grind-client.out" SERVER_WRAPPER="$grind-server.out" "$@"
    load "$label"
    # Idle long enough for the periodic work (heartbeats, pool sweeps, keep-alive pings every
    # 5 to 20 s) to run too: it is part of what stays resident.
    sleep "$IDLE"
    stop "$CLIENT_PID"
    stop "$SERVER_PID"
    [[ -z ${CONTROL_PID:-} ]] || { stop "$CONTROL_PID"; CONTROL_PID=; }
    # callgrind writes its file as the process exits: none means it was killed first.
    local side
    for side in client server; do
        [[ -s $TMP/$label-$side.out ]] || die "$label: the $side proxy left no callgrind profile (see $TMP/$label-$side.log)"
    done
}

under_callgrind plain proxy_pair plain true
PAIR_CLIENT_SERVICES=$TMP/scale-trellis.yaml under_callgrind mtls mtls_pair mtls
MESH_HTTP1=multiplex under_callgrind mtls-h2 mtls_pair mtls-h2

samples=()
if perf record -q -o /dev/null -- true >/dev/null 2>&1; then
    say "native: the mTLS pair under perf record"
    PAIR_CLIENT_SERVICES=$TMP/scale-trellis.yaml mtls_pair native
    RATE=2000
    perf record -q -F 10000 -e cpu-clock -p "$CLIENT_PID,$SERVER_PID" -o "$TMP/perf.data" >/dev/null 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
    load native
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    forget "$perf_pid"
    perf script -i "$TMP/perf.data" --no-demangle -F ip,sym,dso 2>"$TMP/perf.err" >"$TMP/perf.txt" || true
    if grep -q trellis-proxy "$TMP/perf.txt"; then
        samples=("$TMP/perf.txt")
    else
        say "perf recorded no samples of the proxies ($(head -c 300 "$TMP/perf.err")): the list has only what callgrind saw"
    fi
else
    say "perf is not usable here: the list has only what callgrind saw"
fi

python3 "$ROOT/bench/hot-symbols.py" "$PROXY_BIN/trellis-proxy" "$OUT" "$TMP"/*.out "${samples[@]}"
say "wrote $OUT; rebuild the proxy (scripts/build-proxy) to use it"
