#!/usr/bin/env bash
# control-plane-scale.sh: the control plane's configuration push at scale, in one command.
#
#   bench/control-plane-scale.sh
#
# Builds the release binaries (trellis, trellis-push-scale), starts `trellis control` on
# loopback with its own data directory, applies a synthetic mesh with `trellis apply -f`
# (1,000 Services in 10 namespaces, each with an Endpoints document of 10 static endpoints),
# then runs the simulator (`trellis-push-scale run`): 200 lightweight proxies on one runtime,
# each a ConfigDiscovery stream whose workload is in one of the namespaces and calls all of it,
# ACKing every update at once. Once all are in sync it applies 50 changes, one modified
# Service at a time in a random namespace (POST /v1/apply), and times each from the API's
# answer until every proxy of that namespace has ACKed an update carrying it; it counts the
# bytes every proxy received for each change (prost encoded_len), and samples the control
# plane's VmRSS and CPU (utime+stime) from /proc. Finally, with the control plane stopped, it
# times the compiler in process on the same mesh (`trellis-push-scale compile`).
#
# Writes a markdown report to bench/results/control-plane-scale-<date>.md and prints it.
#
# Knobs (environment variables):
#   NAMESPACES=10  SERVICES=1000  ENDPOINTS_PER_SERVICE=10   the mesh
#   PROXIES=200        simulated proxies (round-robin over the namespaces)
#   CHANGES=50         measured changes
#   SEED=1             which namespace/service/weight each change picks
#   FILES=4            files the mesh is applied in (each must stay under the API's 2 MiB)
#   NOT_READY=         set to 1: proxies are not ready and give no address (not endpoints)
#   SETTLE_MS=300      wait after each change's last ACK before counting bytes
#   SIM_THREADS=1      the simulator's runtime threads
#   COMPILE_ROUNDS=10  rebuilds timed in process (0: skip that part)
#   OUT_DIR=bench/results
#   BIN_DIR=           use trellis and trellis-push-scale from this directory instead of building
#   COMMIT=            what to call the code in the report (default: git's HEAD, "+ uncommitted
#                      changes" if the tree is dirty)
#
# Needs: cargo (unless BIN_DIR), curl. Linux (/proc). Every process the script starts is
# stopped when it exits, however it exits.

set -euo pipefail

NAMESPACES=${NAMESPACES:-10}
SERVICES=${SERVICES:-1000}
ENDPOINTS_PER_SERVICE=${ENDPOINTS_PER_SERVICE:-10}
PROXIES=${PROXIES:-200}
CHANGES=${CHANGES:-50}
SEED=${SEED:-1}
FILES=${FILES:-4}
NOT_READY=${NOT_READY:-}
SETTLE_MS=${SETTLE_MS:-300}
SIM_THREADS=${SIM_THREADS:-1}
COMPILE_ROUNDS=${COMPILE_ROUNDS:-10}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}

BENCH_NAME=control-plane-scale
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"

need curl "apt-get install curl"
[[ -r /proc/self/stat ]] || die "/proc is needed (Linux only)"

# ---------------------------------------------------------------- cleanup

# ---------------------------------------------------------------- build
if [[ -n ${BIN_DIR:-} ]]; then
    BIN=$(cd "$BIN_DIR" && pwd)
else
    need cargo "install Rust with rustup"
    say "building release binaries (cargo build --release)…"
    (cd "$ROOT" && cargo build --release --bin trellis --bin trellis-push-scale -p trellis-cli -p trellis-bench) \
        || die "the release build failed (see above)"
    BIN=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release
fi
for b in trellis trellis-push-scale; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (set BIN_DIR to where it is, or unset BIN_DIR to build it)"
done

# ---------------------------------------------------------------- helpers

now_ms() { echo $(($(date +%s%N) / 1000000)); }
rss_kib() { awk '/^VmRSS:/ { print $2; f = 1 } END { if (!f) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- control plane
DATA=$TMP/control
API_PORT=$(free_port)
PUSH_PORT=$(free_port)
API=http://127.0.0.1:$API_PORT
PUSH=http://127.0.0.1:$PUSH_PORT
say "starting the control plane (API $API, streams $PUSH, data $DATA)"
"$BIN/trellis" control --data-dir "$DATA" --listen "127.0.0.1:$API_PORT" --push-listen "127.0.0.1:$PUSH_PORT" --allow-unauthenticated-proxies \
    --registry-grace 30s >"$TMP/control.log" 2>&1 &
CONTROL_PID=$!
PIDS+=("$CONTROL_PID")
for _ in $(seq 200); do
    grep -q "control plane listening on " "$TMP/control.log" && break
    kill -0 "$CONTROL_PID" 2>/dev/null || { cat "$TMP/control.log" >&2; die "the control plane exited during start-up"; }
    sleep 0.1
done
grep -q "control plane listening on " "$TMP/control.log" || { cat "$TMP/control.log" >&2; die "the control plane did not start within 20 s"; }
[[ -s $DATA/admin.token ]] || die "no admin token in $DATA/admin.token"
RSS_EMPTY=$(rss_kib "$CONTROL_PID")
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- the mesh
MESH=(--namespaces "$NAMESPACES" --services "$SERVICES" --endpoints-per-service "$ENDPOINTS_PER_SERVICE")
mapfile -t FILE_LIST < <("$BIN/trellis-push-scale" generate "${MESH[@]}" --files "$FILES" --out "$TMP/mesh")
((${#FILE_LIST[@]})) || die "the generator wrote no files"
APPLY_ARGS=()
for f in "${FILE_LIST[@]}"; do APPLY_ARGS+=(-f "$f"); done
MESH_BYTES=$(cat "${FILE_LIST[@]}" | wc -c)
say "applying $SERVICES Services and their Endpoints ($((SERVICES * ENDPOINTS_PER_SERVICE)) endpoints) in ${#FILE_LIST[@]} files, $((MESH_BYTES / 1024)) KiB"
t0=$(now_ms)
TRELLIS_SERVER=$API TRELLIS_TOKEN_FILE=$DATA/admin.token "$BIN/trellis" apply "${APPLY_ARGS[@]}" >"$TMP/apply.log" 2>&1 ||
    { tail -20 "$TMP/apply.log" >&2; die "trellis apply failed"; }
APPLY_MS=$(($(now_ms) - t0))
CREATED=$(grep -c " created$" "$TMP/apply.log" || true)
[[ $CREATED == $((2 * SERVICES)) ]] || die "trellis apply created $CREATED resources, expected $((2 * SERVICES)) (see $TMP/apply.log)"
say "applied $CREATED resources in $APPLY_MS ms"
# Let the snapshot builder finish its rebuilds of the applied commits.
sleep 2
RSS_LOADED=$(rss_kib "$CONTROL_PID")

# ---------------------------------------------------------------- the simulator
SIM_ARGS=("${MESH[@]}" --api "$API" --push "$PUSH" --token-file "$DATA/admin.token" --control-pid "$CONTROL_PID"
    --proxies "$PROXIES" --changes "$CHANGES" --seed "$SEED" --settle-ms "$SETTLE_MS" --threads "$SIM_THREADS"
    --json "$TMP/run.json" --markdown "$TMP/run.md")
[[ -n $NOT_READY ]] && SIM_ARGS+=(--not-ready)
say "simulating $PROXIES proxies, then $CHANGES changes"
"$BIN/trellis-push-scale" run "${SIM_ARGS[@]}" >/dev/null 2>"$TMP/sim.err" &
SIM_PID=$!
PIDS+=("$SIM_PID")
tail -f "$TMP/sim.err" --pid "$SIM_PID" >&2 &
TAIL_PID=$!
status=0
wait "$SIM_PID" || status=$?
wait "$TAIL_PID" 2>/dev/null || true
((status == 0)) || { tail -30 "$TMP/control.log" >&2; die "the simulator failed (exit $status)"; }
kill -0 "$CONTROL_PID" 2>/dev/null || die "the control plane died during the run"
STORE_KIB=$(du -sk "$DATA" | awk '{ print $1 }')
WARNINGS=$(grep -cE 'WARN|ERROR' "$TMP/control.log" || true)
# Without colour codes, the first few.
WARNING_LINES=$(grep -E 'WARN|ERROR' "$TMP/control.log" | sed 's/\x1b\[[0-9;]*m//g' | head -5 || true)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

kill -TERM "$CONTROL_PID" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$CONTROL_PID" 2>/dev/null || break; sleep 0.1; done

# ---------------------------------------------------------------- the compiler, in process
if ((COMPILE_ROUNDS > 0)); then
    say "timing the compiler in process ($COMPILE_ROUNDS rebuilds)"
    CARGS=("${MESH[@]}" --proxies "$PROXIES" --rounds "$COMPILE_ROUNDS" --files "$FILES" --json "$TMP/compile.json"
        --markdown "$TMP/compile.md")
    [[ -n $NOT_READY ]] && CARGS+=(--not-ready)
    "$BIN/trellis-push-scale" compile "${CARGS[@]}" >/dev/null || die "trellis-push-scale compile failed"
fi

# ---------------------------------------------------------------- report
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/control-plane-scale-$STAMP.md"
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1024 / 1024 }' /proc/meminfo)
if [[ -z ${COMMIT:-} ]]; then
    COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ $COMMIT != unknown ]] && [[ -n $(cd "$ROOT" && git status --porcelain 2>/dev/null) ]]; then COMMIT+=" + uncommitted changes"; fi
fi
{
    echo "# Trellis control plane at scale: config push, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, $MEM_TOTAL RAM, Linux $(uname -r). Commit: $COMMIT."
    [[ -n ${BIN_DIR:-} ]] && echo "Binaries: taken from \`$BIN\`, not built by the script."
    echo "Control plane, simulator and (afterwards) the in-process compiler timing share the machine; nothing is pinned."
    echo "Load average (1/5/15 min) when the control plane started: $LOAD_START; after the simulator: $LOAD_END"
    echo "(anything well above the benchmark's own use means other work shared the CPUs)."
    echo
    echo "## Loading the mesh"
    echo
    echo "| | |"
    echo "|---|---:|"
    echo "| \`trellis apply\` of $CREATED resources in ${#FILE_LIST[@]} files ($((MESH_BYTES / 1024)) KiB of YAML), one transaction per file | $APPLY_MS ms |"
    awk -v a="$RSS_EMPTY" -v b="$RSS_LOADED" 'BEGIN { printf "| control-plane VmRSS: empty store → loaded, no proxies | %.1f → %.1f MiB |\n", a / 1024, b / 1024 }'
    awk -v k="$STORE_KIB" 'BEGIN { printf "| data directory at the end (store + registry) | %.1f MiB |\n", k / 1024 }'
    echo
    echo "## Push to $PROXIES simulated proxies"
    echo
    cat "$TMP/run.md"
    echo
    if [[ -s $TMP/compile.md ]]; then
        echo "## The compiler at this size"
        echo
        cat "$TMP/compile.md"
        echo
    fi
    echo "Control-plane log lines at WARN or ERROR: $WARNINGS."
    if [[ -n $WARNING_LINES ]]; then
        echo
        echo '```'
        echo "$WARNING_LINES"
        echo '```'
    fi
    echo
    echo "Reproduce: \`NAMESPACES=$NAMESPACES SERVICES=$SERVICES ENDPOINTS_PER_SERVICE=$ENDPOINTS_PER_SERVICE PROXIES=$PROXIES CHANGES=$CHANGES SEED=$SEED${NOT_READY:+ NOT_READY=1} bench/control-plane-scale.sh\`."
} >"$OUT"

cat "$OUT"
say "report written to $OUT"
