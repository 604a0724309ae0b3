# Shared by the proxy benchmark and diagnostic scripts in this directory: source it after the
# bench directory's env.sh ($PROXY, $AKID).

# Wait up to $1 seconds (default 10) until the server's admin listener (127.0.0.1:18081, as
# bench-setup.sh writes it) answers /ping.
wait_ready() {
    local tries=$((${1:-10} * 10))
    for _ in $(seq "$tries"); do
        curl -sf http://127.0.0.1:18081/ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
}

# Start "$PROXY -c CONFIG serve" with stderr to LOG, in the background; sets SERVER_PID and
# waits until it answers (wait_ready).
start_server() {
    "$PROXY" -c "$1" serve >/dev/null 2>"$2" &
    SERVER_PID=$!
    wait_ready
}

# Stop the server start_server started.
stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
}

# CPU clock ticks (10 ms, utime + stime) of process $1 so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Run `xki-proxy bench` against the server of bench directory $1 (W1 shape: --aad-size 32,
# 1 s warm-up, one client thread); the remaining arguments are passed on (--size,
# --concurrency, --duration, --rate ...).
run_bench() {
    local d=$1
    shift
    "$PROXY" bench --url http://127.0.0.1:18080 --key bench-key --access-key-id "$AKID" \
        --secret-file "$d/secret" --aad-size 32 --warmup 1 --threads 1 "$@" 2>/dev/null
}

# Requests a bench output (stdin) counts: the measured ones and the warm-up's.
bench_requests() {
    awk '/^ok=/ {split($1, a, "="); n += a[2]} /^warm-up:/ {n += $2} END {print n + 0}'
}
