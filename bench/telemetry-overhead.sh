#!/usr/bin/env bash
# telemetry-overhead.sh: what per-request metrics and access logs cost the proxies.
#
#   bench/telemetry-overhead.sh
#
# Builds the release binaries, then drives the same open-loop load (trellis-bench) through a
# client proxy → server proxy → backend pair (HTTP/2 between the proxies), alternating two
# configurations ROUNDS times each, each with a fresh pair:
#
#   off      requestMetrics: false, no access log: the proxies record nothing per request
#   metrics  request statistics only (the default configuration)
#   on       request statistics and a JSON access log line per request on both proxies,
#            written to a file
#
# MODES picks which (default "off metrics on"); the report compares each with "off".
#
# For each run it records the CPU seconds both proxies used over the measured window
# (utime+stime from /proc) and reports CPU per 10,000 requests per configuration (median of
# the rounds) and the difference. Tracing is left out: it is off unless a Telemetry document
# samples traces.
#
# Knobs: RATE=1000, DURATION=30s, WARMUP=5s, CONNECTIONS=16, ROUNDS=3, MODES,
# REQUEST_PATH=/bytes/1024, OUT_DIR=bench/results, BIN_DIR (use built binaries).
# Writes bench/results/telemetry-overhead-<date>.md and prints it.

set -euo pipefail

RATE=${RATE:-1000}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
CONNECTIONS=${CONNECTIONS:-16}
ROUNDS=${ROUNDS:-3}
read -r -a MODES <<<"${MODES:-off metrics on}"
REQUEST_PATH=${REQUEST_PATH:-/bytes/1024}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}

BENCH_NAME=telemetry-overhead
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"

# shellcheck source=bench/proxy-lib.sh
source "$ROOT/bench/proxy-lib.sh"
bench_prerequisites
release_binaries

start_backend

declare -A CPU=() P99=()
LOG_LINES=0
for round in $(seq "$ROUNDS"); do
    for mode in "${MODES[@]}"; do
        label=$mode-$round
        case $mode in
        off) PAIR_SERVER_EXTRA="requestMetrics: false" PAIR_CLIENT_EXTRA="requestMetrics: false" ;;
        metrics) PAIR_SERVER_EXTRA="" PAIR_CLIENT_EXTRA="" ;;
        on)
            PAIR_SERVER_EXTRA="accessLog: '$TMP/$label-server.access.log'"
            PAIR_CLIENT_EXTRA="accessLog: '$TMP/$label-client.access.log'"
            ;;
        *) die "unknown mode $mode (use off, metrics, on)" ;;
        esac
        proxy_pair "$label" true
        measure "$label" "$CLIENT_URL" client="$CLIENT_PID" server="$SERVER_PID"
        stop "$CLIENT_PID"
        stop "$SERVER_PID"
        ok=$(jget "$TMP/$label.json" ok)
        ticks=$(awk '{ t += $4 } END { print t }' "$TMP/$label.procs")
        CPU[$label]=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$ok" 'BEGIN { printf "%.3f", t / hz / n * 10000 }')
        P99[$label]=$(jget "$TMP/$label.json" latency_ms.p99)
        if [[ $mode == on ]]; then
            LOG_LINES=$(cat "$TMP/$label-client.access.log" "$TMP/$label-server.access.log" | wc -l)
        fi
        say "$label: both proxies ${CPU[$label]} CPU s per 10k requests, p99 ${P99[$label]} ms"
    done
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A MEDIAN=()
for mode in "${MODES[@]}"; do
    values=()
    for round in $(seq "$ROUNDS"); do values+=("${CPU[$mode-$round]}"); done
    MEDIAN[$mode]=$(median "${values[@]}")
done

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/telemetry-overhead-$STAMP.md"
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo "# Telemetry overhead — $STAMP"
    echo
    echo "Commit $COMMIT on $(nproc) × $CPU_MODEL. Load: $RATE req/s, $DURATION (after $WARMUP warm-up), $CONNECTIONS HTTP/1.1 connections, GET $REQUEST_PATH; client proxy → HTTP/2 → server proxy → backend; $ROUNDS rounds, alternating."
    echo
    echo "| run | both proxies' CPU s per 10k requests | p99 ms |"
    echo "|---|---|---|"
    for round in $(seq "$ROUNDS"); do
        for mode in "${MODES[@]}"; do echo "| $mode, round $round | ${CPU[$mode-$round]} | ${P99[$mode-$round]} |"; done
    done
    echo
    echo "| configuration | median CPU s per 10k requests | vs off |"
    echo "|---|---|---|"
    for mode in "${MODES[@]}"; do
        vs=-
        [[ -n ${MEDIAN[off]:-} ]] && vs=$(awk -v a="${MEDIAN[$mode]}" -v b="${MEDIAN[off]}" 'BEGIN { printf "%+.1f%%", (a - b) / b * 100 }')
        echo "| $mode | ${MEDIAN[$mode]} | $vs |"
    done
    echo
    echo "\"on\" wrote $LOG_LINES access log lines in its last round (both proxies, warm-up included)."
} >"$OUT"
cat "$OUT"
say "report: $OUT"
