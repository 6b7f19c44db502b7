# shellcheck shell=bash
# Helpers for the proxy benchmarks (sourced after common.sh; the sourcing script sets RATE,
# DURATION, WARMUP, CONNECTIONS, REQUEST_PATH, ROOT and TMP): what they need from the
# machine, the release binaries, the backend, starting and stopping processes, CPU and RSS
# from /proc, one measured load run, and client/server proxy pairs (Trellis, Envoy, HAProxy).

# bench_prerequisites: curl, /proc, and jq or python3 for trellis-bench's JSON; sets JSON and
# CLK_TCK.
bench_prerequisites() {
    need curl "apt-get install curl"
    need getconf
    need awk
    if command -v jq >/dev/null 2>&1; then
        JSON=jq
    elif command -v python3 >/dev/null 2>&1; then
        JSON=python3
    else
        die "jq or python3 is needed to read trellis-bench's JSON (apt-get install jq)"
    fi
    [[ -r /proc/self/stat ]] || die "/proc is needed (Linux only)"
    CLK_TCK=$(getconf CLK_TCK)
}

# release_binaries: sets BIN to BIN_DIR, or builds the release binaries and points at them.
release_binaries() {
    if [[ -n ${BIN_DIR:-} ]]; then
        BIN=$(cd "$BIN_DIR" && pwd)
    else
        need cargo "install Rust with rustup"
        say "building release binaries (cargo build --release)…"
        (cd "$ROOT" && cargo build --release --bins -p trellis-cli -p trellis-testkit -p trellis-bench) \
            || die "the release build failed (see above)"
        BIN=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release
    fi
    local b
    for b in trellis trellis-test-backend trellis-bench; do
        [[ -x $BIN/$b ]] || die "$BIN/$b is missing (set BIN_DIR to where it is, or unset BIN_DIR to build it)"
    done
}

# start_backend: the HTTP backend on a free port; sets BACKEND_PID, BACKEND_PORT, BACKEND_URL
# and EXPECTED_BYTES (from REQUEST_PATH, which must be /bytes/N).
start_backend() {
    case $REQUEST_PATH in /bytes/*) EXPECTED_BYTES=${REQUEST_PATH#/bytes/} ;; *) die "REQUEST_PATH must be /bytes/N" ;; esac
    start backend "$BIN/trellis-test-backend" --listen 127.0.0.1:0 http
    BACKEND_PID=$STARTED_PID
    BACKEND_PORT=
    for _ in $(seq 100); do
        BACKEND_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/backend.log")
        [[ -n $BACKEND_PORT ]] && break
        kill -0 "$BACKEND_PID" 2>/dev/null || { cat "$TMP/backend.log" >&2; die "the backend exited"; }
        sleep 0.1
    done
    [[ -n $BACKEND_PORT ]] || die "the backend did not say where it listens"
    BACKEND_URL="http://127.0.0.1:$BACKEND_PORT$REQUEST_PATH"
    check_body "$BACKEND_URL"
}


# start NAME CMD...: runs CMD in the background, output to $TMP/NAME.log; sets STARTED_PID.
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# forget PID: it has been waited for, so cleanup must not signal it (the number may be reused).
forget() {
    local p kept=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

# stop PID: SIGTERM, then SIGKILL after 5 s.
stop() {
    local pid=$1
    if kill -TERM "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

# wait_ok URL NAME PID: until URL answers 200 (20 s), or NAME's process dies.
wait_ok() {
    local url=$1 name=$2 pid=$3
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$TMP/$name.log" >&2; die "$name exited during start-up"; }
        [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null) == 200 ]] && return
        sleep 0.1
    done
    tail -20 "$TMP/$name.log" >&2
    die "$name did not answer 200 on $url within 20 s"
}

# check_body URL: one request must give 200 and the expected body size.
check_body() {
    local out
    out=$(curl -s -o /dev/null -m 5 -w '%{http_code} %{size_download}' "$1") || die "curl $1 failed"
    [[ $out == "200 $EXPECTED_BYTES" ]] || die "$1 answered '$out' (want '200 $EXPECTED_BYTES')"
}

# cpu_ticks PID and rss_kib PID, with bash builtins only (no fork while measuring).
cpu_ticks() {
    local stat rest
    read -r stat <"/proc/$1/stat" || { echo 0; return; }
    rest=${stat##*) }   # fields after "pid (comm) "; the first of them is field 3
    local -a fields
    read -r -a fields <<<"$rest"
    echo $((fields[11] + fields[12]))  # fields 14 (utime) and 15 (stime)
}
rss_kib() {
    local key value _
    while read -r key value _; do
        [[ $key == VmRSS: ]] && { echo "$value"; return; }
    done <"/proc/$1/status"
    echo 0
}

jget() { # jget FILE DOTTED.PATH
    if [[ $JSON == jq ]]; then
        jq -r "(.$2) | if . == null then \"-\" else . end" "$1"
    else
        python3 -c 'import json,sys
v=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v=v.get(k) if isinstance(v,dict) else None
print("-" if v is None else str(v).lower() if isinstance(v,bool) else v)' "$1" "$2"
    fi
}

# measure LABEL URL NAME=PID...: one load run against URL. Samples CPU of every named process
# when the generator starts and ends its measured window, RSS before the load and at its end.
# Leaves $TMP/LABEL.json (the generator's report) and $TMP/LABEL.procs (name rss_idle
# rss_load cpu_ticks per line).
measure() {
    local label=$1 url=$2
    shift 2
    local -a names=() pids=() idle=() cpu0=() cpu1=() load=()
    local np i
    for np in "$@"; do names+=("${np%%=*}"); pids+=("${np#*=}"); done
    for i in "${!pids[@]}"; do idle[i]=$(rss_kib "${pids[i]}"); done

    say "$label: $RATE req/s for $DURATION after $WARMUP warm-up → $url"
    rm -f "$TMP/events"
    mkfifo "$TMP/events"
    "$BIN/trellis-bench" --url "$url" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
        --connections "$CONNECTIONS" --threads 1 --output json >"$TMP/$label.json" 2>"$TMP/events" &
    local bench=$!
    PIDS+=("$bench")
    local line fd
    exec {fd}<"$TMP/events"
    # Blocking reads: the samples are taken the moment the generator announces each phase.
    while IFS= read -r -u "$fd" line; do
        case $line in
        "trellis-bench: measuring")
            for i in "${!pids[@]}"; do cpu0[i]=$(cpu_ticks "${pids[i]}"); done ;;
        "trellis-bench: schedule done")
            for i in "${!pids[@]}"; do cpu1[i]=$(cpu_ticks "${pids[i]}"); load[i]=$(rss_kib "${pids[i]}"); done ;;
        *) echo "$line" >>"$TMP/$label.err" ;;
        esac
    done
    exec {fd}<&-
    local status=0
    wait "$bench" || status=$?
    forget "$bench"
    if ((status != 0)) || [[ -z ${cpu1[0]:-} ]]; then
        cat "$TMP/$label.err" >&2 2>/dev/null || true
        die "$label: trellis-bench failed (exit $status)"
    fi
    for i in "${!pids[@]}"; do
        kill -0 "${pids[i]}" 2>/dev/null || die "$label: ${names[i]} died during the load"
        echo "${names[i]} ${idle[i]} ${load[i]} $((cpu1[i] - cpu0[i]))"
    done >"$TMP/$label.procs"
    say "$label: ok $(jget "$TMP/$label.json" ok), errors $(jget "$TMP/$label.json" errors), p50 $(jget "$TMP/$label.json" latency_ms.p50) ms, p99 $(jget "$TMP/$label.json" latency_ms.p99) ms"
}

# proxy_pair LABEL MESHED: starts a server proxy (inbound → backend) and a client proxy
# (explicit listener → server proxy); sets CLIENT_PID SERVER_PID CLIENT_URL CLIENT_ADMIN
# SERVER_ADMIN. PAIR_SERVER_EXTRA and PAIR_CLIENT_EXTRA are added to the `kind: Proxy`
# documents (e.g. `accessLog: …`).
proxy_pair() {
    local label=$1 meshed=$2
    local inbound admin_s listen admin_c
    inbound=$(free_port) admin_s=$(free_port) listen=$(free_port) admin_c=$(free_port)
    cat >"$TMP/$label-server.yaml" <<EOF
kind: Proxy
name: $label-server
admin: '127.0.0.1:$admin_s'
drainTimeout: 1s
inbound: {listen: '127.0.0.1:$inbound', forward: '127.0.0.1:$BACKEND_PORT'}
${PAIR_SERVER_EXTRA:-}
EOF
    cat >"$TMP/$label-client.yaml" <<EOF
kind: Proxy
name: $label-client
admin: '127.0.0.1:$admin_c'
drainTimeout: 1s
explicit: [{listen: '127.0.0.1:$listen', service: web}]
${PAIR_CLIENT_EXTRA:-}
---
kind: Service
name: web
---
kind: Endpoints
service: web
endpoints: [{address: '127.0.0.1:$inbound', meshed: $meshed}]
EOF
    local side
    for side in server client; do
        "$BIN/trellis" validate -f "$TMP/$label-$side.yaml" >"$TMP/validate.log" 2>&1 ||
            { cat "$TMP/validate.log" >&2; die "the generated $side proxy configuration is invalid"; }
    done
    start "$label-server" "$BIN/trellis" proxy -c "$TMP/$label-server.yaml"
    SERVER_PID=$STARTED_PID
    start "$label-client" "$BIN/trellis" proxy -c "$TMP/$label-client.yaml"
    CLIENT_PID=$STARTED_PID
    wait_ok "http://127.0.0.1:$admin_s/ready" "$label-server" "$SERVER_PID"
    wait_ok "http://127.0.0.1:$admin_c/ready" "$label-client" "$CLIENT_PID"
    CLIENT_URL="http://127.0.0.1:$listen$REQUEST_PATH"
    SERVER_ADMIN="127.0.0.1:$admin_s"
    CLIENT_ADMIN="127.0.0.1:$admin_c"
    check_body "$CLIENT_URL"
}


# envoy_pair LABEL: the same two hops through Envoy (client listener → HTTP/2 → server
# listener → backend over HTTP/1.1), each Envoy with WORKERS worker threads; sets CLIENT_PID,
# SERVER_PID, CLIENT_URL. Needs ENVOY (the binary).
envoy_pair() {
    local label=$1
    local server_port client_port admin_s admin_c
    server_port=$(free_port) client_port=$(free_port) admin_s=$(free_port) admin_c=$(free_port)
    envoy_config "$TMP/$label-server-envoy.yaml" "$admin_s" "$server_port" "$BACKEND_PORT" http1
    envoy_config "$TMP/$label-client-envoy.yaml" "$admin_c" "$client_port" "$server_port" http2
    ENVOY_BASE_ID=$((${ENVOY_BASE_ID:-100} + 2))
    start "$label-server" "$ENVOY" -c "$TMP/$label-server-envoy.yaml" --concurrency "$WORKERS" --base-id "$ENVOY_BASE_ID" --log-level warn
    SERVER_PID=$STARTED_PID
    start "$label-client" "$ENVOY" -c "$TMP/$label-client-envoy.yaml" --concurrency "$WORKERS" --base-id $((ENVOY_BASE_ID + 1)) --log-level warn
    CLIENT_PID=$STARTED_PID
    wait_ok "http://127.0.0.1:$admin_s/ready" "$label-server" "$SERVER_PID"
    wait_ok "http://127.0.0.1:$admin_c/ready" "$label-client" "$CLIENT_PID"
    CLIENT_URL="http://127.0.0.1:$client_port$REQUEST_PATH"
    check_body "$CLIENT_URL"
}

# envoy_config FILE ADMIN LISTEN UPSTREAM http1|http2: one listener routing everything to one
# upstream, like a Trellis route with a single endpoint.
envoy_config() {
    local file=$1 admin=$2 listen=$3 upstream=$4 protocol=$5 options=""
    if [[ $protocol == http2 ]]; then
        options='
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}'
    fi
    cat >"$file" <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.1, port_value: $listen}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: up, timeout: 10s}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]$options
EOF
}

# haproxy_pair LABEL: the same two hops through HAProxy (HTTP/1.1 keep-alive on both hops),
# nbthread WORKERS; sets CLIENT_PID, SERVER_PID, CLIENT_URL.
haproxy_pair() {
    local label=$1 server_port client_port
    server_port=$(free_port) client_port=$(free_port)
    haproxy_config "$TMP/$label-server-haproxy.cfg" "$server_port" "$BACKEND_PORT"
    haproxy_config "$TMP/$label-client-haproxy.cfg" "$client_port" "$server_port"
    start "$label-server" haproxy -db -f "$TMP/$label-server-haproxy.cfg"
    SERVER_PID=$STARTED_PID
    start "$label-client" haproxy -db -f "$TMP/$label-client-haproxy.cfg"
    CLIENT_PID=$STARTED_PID
    CLIENT_URL="http://127.0.0.1:$client_port$REQUEST_PATH"
    wait_ok "$CLIENT_URL" "$label-client" "$CLIENT_PID"
    check_body "$CLIENT_URL"
}

haproxy_config() {
    cat >"$1" <<EOF
global
  nbthread $WORKERS
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend in
  bind 127.0.0.1:$2
  default_backend up
backend up
  server s1 127.0.0.1:$3
EOF
}
