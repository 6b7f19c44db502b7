# shellcheck shell=bash
# Helpers for the proxy benchmarks (sourced after common.sh; the sourcing script sets RATE,
# DURATION, WARMUP, CONNECTIONS, REQUEST_PATH, ROOT and TMP): what they need from the
# machine, the release binaries, the backend, starting and stopping processes, CPU and RSS
# from /proc, one measured load run, and client/server proxy pairs (Trellis plain and mTLS,
# Envoy plain and mTLS, HAProxy).
#
# Every proxy gets WORKERS worker threads (default 1, a sidecar's usual share: Envoy's
# --concurrency, HAProxy's nbthread, trellis-proxy's --workers).
WORKERS=${WORKERS:-1}

# How HTTP/1.1 crosses between the two proxies of Trellis and Envoy: `keep` (HTTP/1.1 on
# pooled keep-alive connections, both systems' default as a mesh) or `multiplex` (over one
# HTTP/2 connection: Trellis's `meshHttp1: multiplex`, Envoy's http2_protocol_options).
MESH_HTTP1=${MESH_HTTP1:-keep}
# The L7 routes the client-side proxy evaluates for every request, the same in Trellis and
# Envoy: a header match that does not hold, then a path-prefix route with a timeout and a
# retry policy that forwards everything the benchmark sends.
TRELLIS_ROUTES="routes: [{name: debug, match: {headers: {x-debug: '1'}}, timeout: 1s}, {name: bytes, match: {path: {prefix: /bytes/}, method: GET}, timeout: 10s, retries: {attempts: 2, on: [connect-failure, reset]}}]"

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

# release_binaries: sets BIN and PROXY_BIN (where trellis-proxy is) to BIN_DIR and
# PROXY_BIN_DIR (default BIN_DIR); without BIN_DIR, builds the release binaries and the
# sidecar binary as it ships (scripts/build-proxy: `--profile proxy`, release with
# whole-program optimization, glibc linked in) and points at them.
release_binaries() {
    if [[ -n ${BIN_DIR:-} ]]; then
        BIN=$(cd "$BIN_DIR" && pwd)
        PROXY_BIN=$(cd "${PROXY_BIN_DIR:-$BIN_DIR}" && pwd)
    else
        need cargo "install Rust with rustup"
        say "building release binaries (cargo build --release, and scripts/build-proxy for trellis-proxy)…"
        local proxy
        (cd "$ROOT" && cargo build --release --bins -p trellis-cli -p trellis-testkit -p trellis-bench) &&
            proxy=$("$ROOT/scripts/build-proxy") || die "the release build failed (see above)"
        PROXY_BIN=$(dirname "$proxy")
        BIN=$(dirname "$PROXY_BIN")/release
    fi
    local b
    for b in trellis trellis-test-backend trellis-bench; do
        [[ -x $BIN/$b ]] || die "$BIN/$b is missing (set BIN_DIR to where it is, or unset BIN_DIR to build it)"
    done
    [[ -x $PROXY_BIN/trellis-proxy ]] || die "$PROXY_BIN/trellis-proxy is missing"
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

# wait_ok URL NAME PID: until URL answers 200, or NAME's process dies.
wait_ok() { # WAIT_SECONDS (default 20) changes the limit
    local url=$1 name=$2 pid=$3
    for _ in $(seq $((${WAIT_SECONDS:-20} * 10))); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$TMP/$name.log" >&2; die "$name exited during start-up"; }
        [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null) == 200 ]] && return
        sleep 0.1
    done
    tail -20 "$TMP/$name.log" >&2
    die "$name did not answer 200 on $url within ${WAIT_SECONDS:-20} s"
}

# check_body URL: one request must give 200 and the expected body size.
check_body() {
    local out
    out=$(curl -s -o /dev/null -m 5 -w '%{http_code} %{size_download}' "$1") || die "curl $1 failed"
    [[ $out == "200 $EXPECTED_BYTES" ]] || die "$1 answered '$out' (want '200 $EXPECTED_BYTES')"
}

# cpu_ticks PID (utime+stime), cpu_split PID ("utime stime") and rss_kib PID, with bash
# builtins only (no fork while measuring).
cpu_split() {
    local stat rest
    read -r stat <"/proc/$1/stat" || { echo "0 0"; return; }
    rest=${stat##*) }   # fields after "pid (comm) "; the first of them is field 3
    local -a fields
    read -r -a fields <<<"$rest"
    echo "${fields[11]} ${fields[12]}"  # fields 14 (utime) and 15 (stime)
}
cpu_ticks() {
    local user sys
    read -r user sys <<<"$(cpu_split "$1")"
    echo $((user + sys))
}
rss_kib() { # PID [FIELD of /proc/PID/status, default VmRSS]
    local key value _ field=${2:-VmRSS}
    while read -r key value _; do
        [[ $key == "$field:" ]] && { echo "$value"; return; }
    done <"/proc/$1/status"
    echo 0
}

# memory PID...: "VmRSS RssAnon" in KiB for each PID, on one line.
memory() {
    local pid out=()
    for pid in "$@"; do out+=("$(rss_kib "$pid")" "$(rss_kib "$pid" RssAnon)"); done
    echo "${out[*]}"
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
# RATE may be `max` (closed loop: the most the path answers). Leaves $TMP/LABEL.json (the
# generator's report) and $TMP/LABEL.procs (name rss_idle_kib rss_load_kib cpu_ticks
# user_ticks sys_ticks per line).
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
        --connections "${MEASURE_CONNECTIONS:-$CONNECTIONS}" --threads 1 --output json >"$TMP/$label.json" 2>"$TMP/events" &
    local bench=$!
    PIDS+=("$bench")
    local line fd
    exec {fd}<"$TMP/events"
    # Blocking reads: the samples are taken the moment the generator announces each phase.
    while IFS= read -r -u "$fd" line; do
        case $line in
        "trellis-bench: measuring")
            for i in "${!pids[@]}"; do cpu0[i]=$(cpu_split "${pids[i]}"); done ;;
        "trellis-bench: schedule done")
            for i in "${!pids[@]}"; do cpu1[i]=$(cpu_split "${pids[i]}"); load[i]=$(rss_kib "${pids[i]}"); done ;;
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
    local u0 s0 u1 s1
    for i in "${!pids[@]}"; do
        kill -0 "${pids[i]}" 2>/dev/null || die "$label: ${names[i]} died during the load"
        read -r u0 s0 <<<"${cpu0[i]}"
        read -r u1 s1 <<<"${cpu1[i]}"
        echo "${names[i]} ${idle[i]} ${load[i]} $((u1 + s1 - u0 - s0)) $((u1 - u0)) $((s1 - s0))"
    done >"$TMP/$label.procs"
    say "$label: ok $(jget "$TMP/$label.json" ok), errors $(jget "$TMP/$label.json" errors), p50 $(jget "$TMP/$label.json" latency_ms.p50) ms, p99 $(jget "$TMP/$label.json" latency_ms.p99) ms"
}

# proxy_pair LABEL MESHED: starts a server proxy (inbound → backend) and a client proxy
# (explicit listener → server proxy, through TRELLIS_ROUTES), each `trellis-proxy --workers
# WORKERS` from a static file; sets CLIENT_PID SERVER_PID CLIENT_URL CLIENT_ADMIN
# SERVER_ADMIN. PAIR_SERVER_EXTRA and PAIR_CLIENT_EXTRA are added to the `kind: Proxy`
# documents (e.g. `accessLog: …`), PAIR_CLIENT_SERVICES to the client's file (more services).
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
meshHttp1: $MESH_HTTP1
$TRELLIS_ROUTES
---
kind: Endpoints
service: web
endpoints: [{address: '127.0.0.1:$inbound', meshed: $meshed}]
EOF
    [[ -z ${PAIR_CLIENT_SERVICES:-} ]] || cat "$PAIR_CLIENT_SERVICES" >>"$TMP/$label-client.yaml"
    local side
    for side in server client; do
        "$BIN/trellis" validate -f "$TMP/$label-$side.yaml" >"$TMP/validate.log" 2>&1 ||
            { cat "$TMP/validate.log" >&2; die "the generated $side proxy configuration is invalid"; }
    done
    start_trellis_proxies "$label" "$admin_s" "$admin_c" "$listen"
    check_body "$CLIENT_URL"
}

# start_trellis_proxies LABEL SERVER_ADMIN_PORT CLIENT_ADMIN_PORT CLIENT_LISTEN_PORT: runs
# `trellis-proxy --workers WORKERS` on $TMP/LABEL-server.yaml and LABEL-client.yaml (under
# SERVER_WRAPPER and CLIENT_WRAPPER, e.g. valgrind for a profile) until both are ready; sets SERVER_PID,
# CLIENT_PID, CLIENT_URL, SERVER_ADMIN and CLIENT_ADMIN.
start_trellis_proxies() {
    local label=$1 admin_s=$2 admin_c=$3 listen=$4
    start "$label-server" ${SERVER_WRAPPER:-} "$PROXY_BIN/trellis-proxy" --workers "$WORKERS" -c "$TMP/$label-server.yaml"
    SERVER_PID=$STARTED_PID
    start "$label-client" ${CLIENT_WRAPPER:-} "$PROXY_BIN/trellis-proxy" --workers "$WORKERS" -c "$TMP/$label-client.yaml"
    CLIENT_PID=$STARTED_PID
    wait_ok "http://127.0.0.1:$admin_s/ready" "$label-server" "$SERVER_PID"
    wait_ok "http://127.0.0.1:$admin_c/ready" "$label-client" "$CLIENT_PID"
    CLIENT_URL="http://127.0.0.1:$listen$REQUEST_PATH"
    SERVER_ADMIN="127.0.0.1:$admin_s"
    CLIENT_ADMIN="127.0.0.1:$admin_c"
}

# mtls_pair LABEL: like proxy_pair, but both proxies join a control plane (started here, `trellis
# control`) with single-use join tokens, get SPIFFE certificates from its CA, and talk mutual
# TLS 1.3 under a strict Policy; the routes come from the control plane. Sets
# the same variables plus CONTROL_PID, CLIENT_STATE and SERVER_INBOUND.
mtls_pair() {
    local label=$1
    local api push inbound admin_s listen admin_c
    api=$(free_port) push=$(free_port) inbound=$(free_port) admin_s=$(free_port) listen=$(free_port) admin_c=$(free_port)
    rm -rf "$TMP/$label-control" "$TMP/$label-server-state" "$TMP/$label-client-state" # from an earlier phase
    start "$label-control" "$BIN/trellis" control --data-dir "$TMP/$label-control" --listen "127.0.0.1:$api" --push-listen "127.0.0.1:$push"
    CONTROL_PID=$STARTED_PID
    wait_ok "http://127.0.0.1:$api/healthz" "$label-control" "$CONTROL_PID"
    local cli=("$BIN/trellis" --server "http://127.0.0.1:$api" --token-file "$TMP/$label-control/admin.token")
    local who
    for who in server client; do
        "${cli[@]}" token create "$who" --role join --namespace bench --service-account "$who" --ttl 10m --single-use \
            >"$TMP/$label-$who.token" 2>>"$TMP/cli.log" || { cat "$TMP/cli.log" >&2; die "cannot create a join token"; }
    done
    cat >"$TMP/$label-mesh.yaml" <<EOF
kind: Service
name: web
namespace: bench
ports: [{port: 80, protocol: http}]
meshHttp1: $MESH_HTTP1
$TRELLIS_ROUTES
---
kind: Policy
name: strict
namespace: bench
mtls: strict
EOF
    "${cli[@]}" apply -f "$TMP/$label-mesh.yaml" >>"$TMP/cli.log" 2>&1 || { cat "$TMP/cli.log" >&2; die "cannot apply the benchmark's service"; }
    # More services for the client: applied to the namespace, and the client calls them all.
    local calls="calls: [web]"
    if [[ -n ${PAIR_CLIENT_SERVICES:-} ]]; then
        sed 's/^kind: \(Service\|Endpoints\)$/&\nnamespace: bench/' "$PAIR_CLIENT_SERVICES" >"$TMP/$label-more.yaml"
        "${cli[@]}" apply -f "$TMP/$label-more.yaml" >>"$TMP/cli.log" 2>&1 || { cat "$TMP/cli.log" >&2; die "cannot apply the extra services"; }
        calls=""
    fi
    cat >"$TMP/$label-server.yaml" <<EOF
kind: Proxy
name: $label-server
admin: '127.0.0.1:$admin_s'
drainTimeout: 1s
inbound: {listen: '127.0.0.1:$inbound', forward: '127.0.0.1:$BACKEND_PORT'}
control: {url: 'http://127.0.0.1:$push', stateDir: '$TMP/$label-server-state', joinTokenFile: '$TMP/$label-server.token'}
workload: {service: web, namespace: bench, serviceAccount: server, address: '127.0.0.1:$inbound'}
EOF
    CLIENT_STATE=$TMP/$label-client-state
    cat >"$TMP/$label-client.yaml" <<EOF
kind: Proxy
name: $label-client
admin: '127.0.0.1:$admin_c'
drainTimeout: 1s
explicit: [{listen: '127.0.0.1:$listen', service: web.bench}]
control: {url: 'http://127.0.0.1:$push', stateDir: '$CLIENT_STATE', joinTokenFile: '$TMP/$label-client.token'}
workload: {service: client, namespace: bench, serviceAccount: client, address: '127.0.0.1:$(free_port)'${calls:+, $calls}}
EOF
    start_trellis_proxies "$label" "$admin_s" "$admin_c" "$listen"
    SERVER_INBOUND="127.0.0.1:$inbound"
    # The server's endpoint reaches the client proxy by push: wait for the first 200.
    wait_ok "$CLIENT_URL" "$label-client" "$CLIENT_PID"
    check_body "$CLIENT_URL"
}

# envoy_pair LABEL [mtls]: the same two hops through Envoy (client listener → HTTP/1.1, or
# HTTP/2 with MESH_HTTP1=multiplex → server listener → backend over HTTP/1.1), each Envoy
# with WORKERS worker threads; with `mtls`, the hop between them is mutual TLS 1.3 with
# certificates from envoy_certificates.
# Sets CLIENT_PID, SERVER_PID, CLIENT_URL, CLIENT_ADMIN, SERVER_ADMIN. Needs ENVOY (the
# binary). ENVOY_CLIENT_CLUSTERS and ENVOY_CLIENT_VHOSTS name files of clusters and virtual
# hosts to add to the client's configuration (YAML at their indentation). Files, not text:
# a large configuration in a variable would be exported to every command run meanwhile, past
# the kernel's limit on one environment string.
envoy_pair() {
    local label=$1 tls=${2:-}
    local server_port client_port admin_s admin_c
    server_port=$(free_port) client_port=$(free_port) admin_s=$(free_port) admin_c=$(free_port)
    [[ -z $tls ]] || envoy_certificates
    envoy_config "$TMP/$label-server-envoy.yaml" server "$admin_s" "$server_port" "$BACKEND_PORT" "$tls"
    envoy_config "$TMP/$label-client-envoy.yaml" client "$admin_c" "$client_port" "$server_port" "$tls"
    ENVOY_BASE_ID=$((${ENVOY_BASE_ID:-100} + 2))
    start "$label-server" "$ENVOY" -c "$TMP/$label-server-envoy.yaml" --concurrency "$WORKERS" --base-id "$ENVOY_BASE_ID" --log-level warn
    SERVER_PID=$STARTED_PID
    start "$label-client" "$ENVOY" -c "$TMP/$label-client-envoy.yaml" --concurrency "$WORKERS" --base-id $((ENVOY_BASE_ID + 1)) --log-level warn
    CLIENT_PID=$STARTED_PID
    wait_ok "http://127.0.0.1:$admin_s/ready" "$label-server" "$SERVER_PID"
    wait_ok "http://127.0.0.1:$admin_c/ready" "$label-client" "$CLIENT_PID"
    CLIENT_URL="http://127.0.0.1:$client_port$REQUEST_PATH"
    CLIENT_ADMIN="127.0.0.1:$admin_c"
    SERVER_ADMIN="127.0.0.1:$admin_s"
    check_body "$CLIENT_URL"
}

# envoy_certificates: once per run, an ECDSA P-256 CA and a client and a server certificate
# with SPIFFE URI SANs (what Trellis's CA issues), in $TMP/envoy-pki.
envoy_certificates() {
    local dir=$TMP/envoy-pki who
    [[ -f $dir/ca.pem ]] && return
    need openssl "apt-get install openssl"
    mkdir -p "$dir"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /O=bench-ca \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>"$dir/openssl.log" || { cat "$dir/openssl.log" >&2; die "openssl could not make the CA"; }
    for who in server client; do
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=bench" \
            -keyout "$dir/$who.key" -out "$dir/$who.csr" 2>>"$dir/openssl.log" || { cat "$dir/openssl.log" >&2; die "openssl could not make a key"; }
        printf 'subjectAltName=URI:spiffe://bench.local/ns/bench/sa/%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n' "$who" >"$dir/$who.ext"
        openssl x509 -req -in "$dir/$who.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
            -extfile "$dir/$who.ext" -out "$dir/$who.pem" 2>>"$dir/openssl.log" || { cat "$dir/openssl.log" >&2; die "openssl could not sign a certificate"; }
    done
}

# envoy_common_tls OWN PEER INDENT: the common_tls_context of one side of the mutual TLS 1.3
# hop, presenting OWN's certificate and accepting only PEER's SPIFFE ID, indented by INDENT.
envoy_common_tls() {
    local pki=$TMP/envoy-pki pad alpn=http/1.1
    [[ $MESH_HTTP1 == multiplex ]] && alpn=h2
    printf -v pad '%*s' "$3" ''
    sed "s/^/$pad/" <<EOF
common_tls_context:
  tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}
  alpn_protocols: [$alpn]
  tls_certificates: [{certificate_chain: {filename: $pki/$1.pem}, private_key: {filename: $pki/$1.key}}]
  validation_context:
    trusted_ca: {filename: $pki/ca.pem}
    match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: spiffe://bench.local/ns/bench/sa/$2}}]
EOF
}

# envoy_config FILE client|server ADMIN LISTEN UPSTREAM [mtls]: one listener and one upstream
# cluster. The client side evaluates the same routes as TRELLIS_ROUTES and speaks HTTP/1.1
# (HTTP/2 with MESH_HTTP1=multiplex) to the server side; the server side forwards everything
# to the backend over HTTP/1.1. With `mtls` the hop between them is mutual TLS 1.3, each
# side checking the other's SPIFFE ID.
envoy_config() {
    local file=$1 side=$2 admin=$3 listen=$4 upstream=$5 tls=${6:-}
    local listener_tls="" cluster_options="" routes extra_vhosts="" extra_clusters=""
    if [[ $side == client ]]; then
        [[ -z ${ENVOY_CLIENT_VHOSTS:-} ]] || extra_vhosts=$(cat "$ENVOY_CLIENT_VHOSTS")
        [[ -z ${ENVOY_CLIENT_CLUSTERS:-} ]] || extra_clusters=$(cat "$ENVOY_CLIENT_CLUSTERS")
        routes='
              - match: {prefix: "/", headers: [{name: x-debug, string_match: {exact: "1"}}]}
                route: {cluster: up, timeout: 1s}
              - match: {prefix: "/bytes/", headers: [{name: ":method", string_match: {exact: GET}}]}
                route: {cluster: up, timeout: 10s, retry_policy: {retry_on: "connect-failure,reset", num_retries: 1}}'
        local upstream_http=http_protocol_options
        [[ $MESH_HTTP1 == multiplex ]] && upstream_http=http2_protocol_options
        cluster_options="
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {$upstream_http: {}}"
        if [[ -n $tls ]]; then
            cluster_options+="
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
$(envoy_common_tls client server 8)"
        fi
    else
        routes='
              - match: {prefix: "/"}
                route: {cluster: up, timeout: 10s}'
        if [[ -n $tls ]]; then
            listener_tls="
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
$(envoy_common_tls server client 10)"
        fi
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
              routes:$routes
$extra_vhosts
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}$listener_tls
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $upstream}}}}]}]$cluster_options
$extra_clusters
EOF
}

# haproxy_pair LABEL: the same two hops through HAProxy (HTTP/1.1 keep-alive on both hops),
# nbthread WORKERS; sets CLIENT_PID, SERVER_PID, CLIENT_URL.
haproxy_pair() {
    local label=$1 server_port client_port
    server_port=$(free_port) client_port=$(free_port)
    haproxy_config "$TMP/$label-server-haproxy.cfg" "$server_port" "$BACKEND_PORT"
    haproxy_config "$TMP/$label-client-haproxy.cfg" "$client_port" "$server_port" "${HAPROXY_CLIENT_RULES:-}"
    [[ -z ${HAPROXY_CLIENT_BACKENDS:-} ]] || cat "$HAPROXY_CLIENT_BACKENDS" >>"$TMP/$label-client-haproxy.cfg"
    start "$label-server" haproxy -db -f "$TMP/$label-server-haproxy.cfg"
    SERVER_PID=$STARTED_PID
    start "$label-client" haproxy -db -f "$TMP/$label-client-haproxy.cfg"
    CLIENT_PID=$STARTED_PID
    CLIENT_URL="http://127.0.0.1:$client_port$REQUEST_PATH"
    wait_ok "$CLIENT_URL" "$label-client" "$CLIENT_PID"
    check_body "$CLIENT_URL"
}

haproxy_config() { # FILE LISTEN UPSTREAM [RULES_FILE: lines for the frontend]
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
$([[ -n ${4:-} ]] && cat "$4")
  default_backend up
backend up
  server s1 127.0.0.1:$3
EOF
}

# scale_configs SERVICES ENDPOINTS: the same large mesh for each proxy's client side, on top
# of the benchmark's own service: SERVICES services `svc-N`, each with ENDPOINTS endpoints
# (10.x.y.z:8080, never connected) and one route. Writes $TMP/scale-trellis.yaml (Service and
# Endpoints documents), $TMP/scale-envoy-clusters.yaml and $TMP/scale-envoy-vhosts.yaml (one
# cluster and one virtual host per service, as Istio configures a sidecar) and
# $TMP/scale-haproxy-rules.cfg and $TMP/scale-haproxy.cfg (a backend per service, chosen by
# Host).
scale_configs() {
    awk -v services="$1" -v endpoints="$2" -v dir="$TMP" 'BEGIN {
        t = dir "/scale-trellis.yaml"; c = dir "/scale-envoy-clusters.yaml"; v = dir "/scale-envoy-vhosts.yaml"; h = dir "/scale-haproxy.cfg"
        printf "" > t; printf "" > c; printf "" > v
        r = dir "/scale-haproxy-rules.cfg"
        printf "" > r; printf "" > h
        for (s = 0; s < services; s++) {
            name = "svc-" s
            printf "---\nkind: Service\nname: %s\nports: [{port: 8080, protocol: http}]\nroutes: [{name: api, match: {path: {prefix: /api/}}, timeout: 5s}]\n---\nkind: Endpoints\nservice: %s\nendpoints: [", name, name > t
            printf "  - name: %s\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: %s\n      endpoints: [{lb_endpoints: [", name, name > c
            printf "            - name: %s\n              domains: [\"%s\", \"%s:8080\"]\n              routes: [{match: {prefix: \"/api/\"}, route: {cluster: %s, timeout: 5s}}]\n", name, name, name, name > v
            printf "  use_backend %s if { hdr(host) -m str %s }\n", name, name > r
            for (e = 0; e < endpoints; e++) {
                addr = sprintf("10.%d.%d.%d", int(s / 256), s % 256, e + 1)
                printf "%s{address: \x27%s:8080\x27}", (e ? ", " : ""), addr > t
                printf "%s{endpoint: {address: {socket_address: {address: %s, port_value: 8080}}}}", (e ? ", " : ""), addr > c
            }
            print "]" > t
            print "]}]" > c
        }
        for (s = 0; s < services; s++) {
            printf "backend svc-%d\n", s > h
            for (e = 0; e < endpoints; e++) printf "  server e%d 10.%d.%d.%d:8080\n", e, int(s / 256), s % 256, e + 1 > h
        }
    }'
}

