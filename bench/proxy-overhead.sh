#!/usr/bin/env bash
# proxy-overhead.sh: what two Trellis proxies add to a request, measured in one command.
#
#   bench/proxy-overhead.sh
#
# Builds the release binaries (trellis, trellis-test-backend, trellis-bench), starts an HTTP
# backend on loopback, then drives the same open-loop load (trellis-bench: fixed rate, latency
# from each request's intended start) through three paths, one after the other:
#
#   direct      generator → backend
#   meshed      generator → client proxy → (HTTP/2, `meshHttp1: multiplex`) → server proxy → backend
#   mtls        generator → client proxy → (HTTP/1.1 in mutual TLS) → server proxy → backend
#   not meshed  generator → client proxy → (HTTP/1.1) → server proxy → backend
#
# The client proxy has an explicit listener bound to a service whose one endpoint is the server
# proxy's inbound listener (`meshed: true` or `false`); the server proxy forwards to the backend.
# The mtls pair is the same with a control plane: both proxies join with tokens, get SPIFFE
# certificates, and the client proxy receives the server's endpoint (with its identity) by
# push; the server's inbound port is `strict`. After the load, `openssl s_time` opens fresh
# mutual-TLS connections to the server proxy for HANDSHAKE_TIME seconds to count full
# handshakes per second of the server proxy's CPU.
# Each proxied path gets a fresh pair of proxies. For every proxy it records CPU time over the
# measured window (utime+stime from /proc/PID/stat) and VmRSS idle and at the end of the load.
#
# Writes a markdown report to bench/results/proxy-overhead-<date>.md and prints it.
#
# Knobs (environment variables):
#   RATE=1000          requests per second
#   DURATION=30s       measured window per path
#   WARMUP=5s          load before each window, left out of every number
#   CONNECTIONS=16     HTTP/1.1 keep-alive connections from the generator
#   REQUEST_PATH=/bytes/1024   what to GET (the backend answers /bytes/N with N bytes)
#   HANDSHAKE_TIME=10  seconds of openssl s_time against the mTLS server proxy (0 skips it)
#   OUT_DIR=bench/results
#   BIN_DIR=           use trellis, trellis-test-backend and trellis-bench from this directory
#                      instead of building them
#
# Needs: cargo (unless BIN_DIR), curl, and jq or python3. Nothing is pinned to a CPU; the
# generator runs one runtime thread, leaving the other core(s) to the proxies and backend.
# Every process the script starts is stopped when it exits, however it exits.

set -euo pipefail

RATE=${RATE:-1000}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
CONNECTIONS=${CONNECTIONS:-16}
REQUEST_PATH=${REQUEST_PATH:-/bytes/1024}
HANDSHAKE_TIME=${HANDSHAKE_TIME:-10}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/bench/results}

BENCH_NAME=proxy-overhead
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"

# ---------------------------------------------------------------- prerequisites
# shellcheck source=bench/proxy-lib.sh
source "$ROOT/bench/proxy-lib.sh"
need openssl "apt-get install openssl"
bench_prerequisites
release_binaries


# security ADMIN: inbound connections by transport security (e.g. "mtls=17").
security() {
    curl -s -m 5 "http://$1/metrics" |
        awk '/^trellis_inbound_connections_total/ {
                 match($0, /security="[^"]*"/); o = substr($0, RSTART + 10, RLENGTH - 11)
                 n[o] += $NF }
             END { for (o in n) if (n[o] > 0) printf "%s%s=%d", (c++ ? " " : ""), o, n[o] }'
}

# handshakes: openssl s_time against the mTLS server proxy with the client proxy's
# certificate; sets HANDSHAKES, HANDSHAKE_SECONDS and HANDSHAKE_CPU (server proxy CPU seconds).
handshakes() {
    local before after out
    before=$(cpu_ticks "$SERVER_PID")
    out=$(openssl s_time -connect "$SERVER_INBOUND" -new -time "$HANDSHAKE_TIME"         -cert "$CLIENT_STATE/identity/svid.pem" -key "$CLIENT_STATE/identity/svid.key" 2>&1) ||
        { echo "$out" >&2; die "openssl s_time failed"; }
    after=$(cpu_ticks "$SERVER_PID")
    # "N connections in T real seconds, ..."
    HANDSHAKES=$(awk '/connections in .* real seconds/ { print $1; exit }' <<<"$out")
    HANDSHAKE_SECONDS=$(awk '/connections in .* real seconds/ { for (i = 1; i <= NF; i++) if ($i == "in") { print $(i + 1); exit } }' <<<"$out")
    HANDSHAKE_CPU=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
    [[ -n $HANDSHAKES ]] || { echo "$out" >&2; die "could not read openssl s_time's count"; }
}

# detections ADMIN: accepted connections by protocol-detection outcome (e.g. "http1=17"), from
# the proxy's /metrics. Anything but http1/http2 means some connections were not handled as
# HTTP (a connection idle past detectTimeout becomes opaque TCP).
detections() {
    curl -s -m 5 "http://$1/metrics" |
        awk '/^trellis_protocol_detections_total/ {
                 match($0, /outcome="[^"]*"/); o = substr($0, RSTART + 9, RLENGTH - 10)
                 n[o] += $NF }
             END { for (o in n) if (n[o] > 0) printf "%s%s=%d", (c++ ? " " : ""), o, n[o] }'
}

# ---------------------------------------------------------------- run
start_backend

declare -A DETECTED=()
measure direct "$BACKEND_URL" backend="$BACKEND_PID"

MESH_HTTP1=multiplex proxy_pair meshed true
measure meshed "$CLIENT_URL" client="$CLIENT_PID" server="$SERVER_PID" backend="$BACKEND_PID"
DETECTED[meshed-client]=$(detections "$CLIENT_ADMIN")
DETECTED[meshed-server]=$(detections "$SERVER_ADMIN")
stop "$CLIENT_PID"
stop "$SERVER_PID"

mtls_pair mtls
measure mtls "$CLIENT_URL" client="$CLIENT_PID" server="$SERVER_PID" backend="$BACKEND_PID"
DETECTED[mtls-client]=$(detections "$CLIENT_ADMIN")
DETECTED[mtls-server]=$(security "$SERVER_ADMIN")
HANDSHAKES=-
if ((HANDSHAKE_TIME > 0)); then
    say "mtls: $HANDSHAKE_TIME s of full handshakes (openssl s_time -new) against the server proxy"
    handshakes
fi
stop "$CLIENT_PID"
stop "$SERVER_PID"
stop "$CONTROL_PID"

proxy_pair plain false
measure plain "$CLIENT_URL" client="$CLIENT_PID" server="$SERVER_PID" backend="$BACKEND_PID"
DETECTED[plain-client]=$(detections "$CLIENT_ADMIN")
DETECTED[plain-server]=$(detections "$SERVER_ADMIN")
stop "$CLIENT_PID"
stop "$SERVER_PID"

# ---------------------------------------------------------------- report
num() { # num FILE PATH: a number with 3 decimals, or "-"
    local v
    v=$(jget "$1" "$2")
    [[ $v == - ]] && { echo -; return; }
    awk -v v="$v" 'BEGIN { printf "%.3f", v }'
}
delta() { # delta A B: A - B with a sign, or "-"
    [[ $1 == - || $2 == - ]] && { echo -; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'
}

declare -A TITLE=([direct]="direct" [meshed]="2 proxies, meshed (HTTP/2 between)" [mtls]="2 proxies, mutual TLS (HTTP/1.1 in TLS 1.3 between)" [plain]="2 proxies, not meshed (HTTP/1.1 between)")
PATHS=(direct meshed mtls plain)
D50=$(num "$TMP/direct.json" latency_ms.p50)
D99=$(num "$TMP/direct.json" latency_ms.p99)
NOTES=()

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/proxy-overhead-$STAMP.md"
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $COMMIT != unknown ]] && [[ -n $(cd "$ROOT" && git status --porcelain 2>/dev/null) ]]; then COMMIT+=" + uncommitted changes"; fi

{
    echo "# Trellis proxy overhead, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, Linux $(uname -r). Commit: $COMMIT."
    [[ -n ${BIN_DIR:-} ]] && echo "Binaries: taken from \`$BIN\`, not built by the script."
    echo
    echo "Load: \`trellis-bench\`, open loop at $RATE req/s for $DURATION per path after a $WARMUP warm-up"
    echo "(excluded), $CONNECTIONS HTTP/1.1 keep-alive connections, GET $REQUEST_PATH, 1 generator thread, nothing"
    echo "pinned. Latency runs from each request's intended start (coordinated-omission corrected) and"
    echo "covers 2xx responses read to the end. The paths ran one after the other in one run of"
    echo "\`bench/proxy-overhead.sh\`; each proxied path had a fresh pair of proxies."
    echo
    echo "| path | ok | errors | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms | added p50 ms | added p99 ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for l in "${PATHS[@]}"; do
        f=$TMP/$l.json
        p50=$(num "$f" latency_ms.p50) p99=$(num "$f" latency_ms.p99)
        if [[ $l == direct ]]; then a50="" a99=""; else a50=$(delta "$p50" "$D50") a99=$(delta "$p99" "$D99"); fi
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${TITLE[$l]}" "$(jget "$f" ok)" "$(jget "$f" errors)" \
            "$(awk -v v="$(jget "$f" achieved_rate)" 'BEGIN { printf "%.1f", v }')" \
            "$p50" "$p99" "$(num "$f" latency_ms.p999)" "$(num "$f" latency_ms.max)" "$a50" "$a99"
    done
    echo
    echo "Per process, over the measured window (CPU from /proc/PID/stat utime+stime, $CLK_TCK ticks/s;"
    echo "RSS is VmRSS before the load and at the end of it):"
    echo
    echo "| path | process | CPU s / 10k req | CPU % of a core | RSS idle MiB | RSS load MiB |"
    echo "|---|---|---:|---:|---:|---:|"
    for l in "${PATHS[@]}"; do
        requests=$(jget "$TMP/$l.json" intended)
        seconds=$(jget "$TMP/$l.json" duration_s)
        while read -r name rss0 rss1 ticks _; do
            case $name in client) what="client-side proxy" ;; server) what="server-side proxy" ;; *) what="backend (for scale)" ;; esac
            awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" -v s="$seconds" -v r0="$rss0" -v r1="$rss1" \
                -v path="${TITLE[$l]}" -v what="$what" 'BEGIN {
                    cpu = t / hz
                    printf "| %s | %s | %.3f | %.1f | %.1f | %.1f |\n", path, what, (n > 0 ? cpu / n * 10000 : 0), cpu / s * 100, r0 / 1024, r1 / 1024 }'
        done <"$TMP/$l.procs"
    done
    echo
    echo "Generator health (its own delay is part of every latency above):"
    echo
    echo "| path | lag p50 ms | lag p99 ms | max lag ms | requests >10 ms late | most queued for a connection | reconnects | generator CPU % |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for l in "${PATHS[@]}"; do
        f=$TMP/$l.json
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${TITLE[$l]}" "$(num "$f" lag_ms.p50)" "$(num "$f" lag_ms.p99)" \
            "$(num "$f" max_lag_ms)" "$(jget "$f" late_requests)" "$(jget "$f" max_queued)" "$(jget "$f" reconnects)" \
            "$(awk -v v="$(jget "$f" generator_cpu_percent)" 'BEGIN { printf "%.1f", v }')"
    done
    echo
    echo "Connections each proxy accepted, by detected protocol (the generator's plus one curl check;"
    echo "anything but http1/http2 would have bypassed HTTP handling):"
    echo
    echo "| proxy | meshed | not meshed |"
    echo "|---|---|---|"
    echo "| client-side | ${DETECTED[meshed-client]:-none} | ${DETECTED[plain-client]:-none} |"
    echo "| server-side | ${DETECTED[meshed-server]:-none} | ${DETECTED[plain-server]:-none} |"
    echo
    echo "mTLS pair: client-side detections ${DETECTED[mtls-client]:-none}; server-side inbound connections by security ${DETECTED[mtls-server]:-none}."
    if [[ $HANDSHAKES != - ]]; then
        echo
        echo "Full mutual-TLS handshakes (TLS 1.3, ECDSA P-256, no resumption; \`openssl s_time -new\` for $HANDSHAKE_SECONDS s"
        echo "with the client proxy's certificate; openssl and the proxy share the machine):"
        echo
        echo "| handshakes | per second | server proxy CPU s | handshakes per server-proxy CPU second |"
        echo "|---:|---:|---:|---:|"
        awk -v n="$HANDSHAKES" -v s="$HANDSHAKE_SECONDS" -v c="$HANDSHAKE_CPU" \
            'BEGIN { printf "| %d | %.0f | %.2f | %s |\n", n, n / s, c, (c > 0 ? sprintf("%.0f", n / c) : "-") }'
    fi
    for l in "${PATHS[@]}"; do
        f=$TMP/$l.json
        [[ $(jget "$f" errors) != 0 ]] && NOTES+=("${TITLE[$l]}: $(jget "$f" errors) errors (non-2xx $(jget "$f" non_2xx), io $(jget "$f" io_errors), timeout $(jget "$f" timeouts)).")
        [[ $(jget "$f" connect_errors) != 0 ]] && NOTES+=("${TITLE[$l]}: $(jget "$f" connect_errors) failed connection attempts.")
        [[ $(jget "$f" fell_behind) == true ]] && NOTES+=("${TITLE[$l]}: the generator fell behind its schedule ($(jget "$f" late_requests) requests more than 10 ms late; max lag $(num "$f" max_lag_ms) ms).")
        [[ $(jget "$f" intended) != "$(jget "$f" ok)" ]] && NOTES+=("${TITLE[$l]}: $(jget "$f" intended) requests scheduled but $(jget "$f" ok) answered 2xx.")
        body=$(awk -v v="$(jget "$f" mean_body_bytes)" 'BEGIN { printf "%d", v + 0.5 }')
        [[ $body != "$EXPECTED_BYTES" ]] && NOTES+=("${TITLE[$l]}: mean body $body bytes, expected $EXPECTED_BYTES.")
        [[ -s $TMP/$l.err ]] && NOTES+=("${TITLE[$l]}: generator said: $(tr '\n' ' ' <"$TMP/$l.err")")
    done
    for k in meshed-client meshed-server plain-client plain-server; do
        for o in ${DETECTED[$k]:-none=0}; do
            [[ $o == http1=* || $o == http2=* ]] || NOTES+=("$k proxy: $o connection(s) not detected as HTTP (so not proxied as HTTP).")
        done
    done
    [[ ${DETECTED[mtls-server]:-} == mtls=* && ${DETECTED[mtls-server]} != *" "* ]] || NOTES+=("mtls: the server proxy saw connections other than mutual TLS (${DETECTED[mtls-server]:-none}).")
    [[ ${DETECTED[meshed-server]:-} == http2=* ]] || NOTES+=("meshed: the hop between the proxies was not HTTP/2 only (${DETECTED[meshed-server]:-none}).")
    [[ ${DETECTED[plain-server]:-} == http1=* && ${DETECTED[plain-server]} != *" "* ]] || NOTES+=("not meshed: the hop between the proxies was not HTTP/1.1 only (${DETECTED[plain-server]:-none}).")
    echo
    if ((${#NOTES[@]})); then
        echo "**Check:**"
        for n in "${NOTES[@]}"; do echo "- $n"; done
    else
        echo "No errors, the generator kept its schedule, every response had the expected $EXPECTED_BYTES bytes."
    fi
} >"$OUT"

cat "$OUT"
say "report written to $OUT"
