# Shared by the proxy benchmark scripts (bench-ab.sh, bench-cpu.sh, bench-defaults.sh):
# source it after the bench directory's env.sh ($PROXY, $AKID).

# Start "$PROXY -c CONFIG serve" with stderr to LOG, in the background; sets SERVER_PID and
# waits (up to 10 s) until its admin listener (127.0.0.1:18081, as bench-setup.sh writes it)
# answers /ping.
start_server() {
    "$PROXY" -c "$1" serve >/dev/null 2>"$2" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf http://127.0.0.1:18081/ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
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
