# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run): messages, prerequisites, process
# cleanup and free ports. The sourcing script sets BENCH_NAME first.

die() { echo "$BENCH_NAME: $*" >&2; exit 1; }
say() { echo "$BENCH_NAME: $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is needed but not installed${2:+ ($2)}"; }

# Every process started with its pid appended to PIDS is stopped on exit (TERM, then KILL
# after 5 s), and TMP is removed.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/trellis-$BENCH_NAME.XXXXXX")
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback TCP port: random in 20000-32767 (below the usual ephemeral range), not in
# /proc/net/tcp{,6} (listening or connected) and not handed out before by this script. It runs
# in a subshell ($(free_port)), so the ports handed out are kept in a file, not a variable.
free_port() {
    local p hex
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 12768))
        printf -v hex '%04X' "$p"
        grep -qx "$p" "$TMP/given-ports" 2>/dev/null && continue
        grep -qi ":$hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null && continue
        echo "$p" >>"$TMP/given-ports"
        echo "$p"
        return
    done
    # Dying here would only end the subshell: stop the script too.
    say "found no free port"
    kill -TERM $$
    exit 1
}
