#!/usr/bin/env bash
# Side-by-side benchmark of thread/session configs (issue #15, README: Performance): for each
# round, each config in turn serves W1 (4 KiB Encrypt + 32 B AAD + CDIV) at c=1, c=16, c=64
# and 32 B Encrypt at c=64 over SoftHSM2 through the module, plain HTTP, client on the same box
# (`xki-proxy bench --threads 1`). Prints one line per run: config, load, the bench summary,
# server CPU per request and the server's peak resident memory.
#
# Usage: proxy/scripts/bench-defaults.sh DIR [ROUNDS] [SECONDS]
#   DIR: a directory prepared by bench-setup.sh (sourced env.sh); configs compared:
#   - "defaults": the config as bench-setup writes it (counts chosen at start-up);
#   - "old-defaults": async_workers = <CPUs>, [hsm] sessions = 8 (the defaults before tuning);
#   - "1+1": async_workers = 1, sessions = 1 (the hand-tuned config of earlier rounds).
set -euo pipefail
dir=$(cd "$1" && pwd)
rounds=${2:-2}
secs=${3:-6}
# shellcheck disable=SC1091
source "$dir/env.sh"
cpus=$(nproc)
base="$dir/proxy-bench-hsm-http.toml"
make_config() { # name async sessions
    local out="$dir/cmp-$1.toml"
    if [[ -z $2 ]]; then
        cp "$base" "$out"
    else
        sed -e "s/^\[hsm\]$/[hsm]\nsessions = $3/" "$base" | { echo "async_workers = $2"; cat; } >"$out"
    fi
    echo "$out"
}
declare -A configs=(
    [defaults]=$(make_config defaults "" "")
    [old-defaults]=$(make_config old-defaults "$cpus" 8)
    [1+1]=$(make_config one-one 1 1)
)
order=(defaults old-defaults 1+1)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "$rounds"); do
    for name in "${order[@]}"; do
        "$PROXY" -c "${configs[$name]}" serve >/dev/null 2>"$dir/server-$name.log" &
        pid=$!
        for _ in $(seq 100); do
            curl -sf http://127.0.0.1:18081/ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        choice=$(grep -o 'threads: [^"]*' "$dir/server-$name.log" | head -1 | sed 's/.*CPUs -> //; s/; set.*//')
        for load in "4096 64" "4096 16" "4096 1" "32 64"; do
            read -r size conc <<<"$load"
            before=$(cpu_ticks $pid)
            out=$("$PROXY" bench --url http://127.0.0.1:18080 --key bench-key --access-key-id "$AKID" \
                --secret-file "$dir/secret" --size "$size" --aad-size 32 --concurrency "$conc" \
                --duration "$secs" --warmup 1 --threads 1 2>/dev/null)
            after=$(cpu_ticks $pid)
            rss=$(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$pid/status")
            # Server CPU per request: clock ticks (10 ms) over every request of the run,
            # the warm-up's included.
            cpu_us=$(echo "$out" | awk -v t=$((after - before)) '
                /^ok=/ {split($1, a, "="); n += a[2]}
                /^warm-up:/ {n += $2}
                END {if (n > 0) printf "%.0f", t * 10000 / n}')
            summary=$(echo "$out" | grep -E '^(ok=|latency|errors)' | sed 's/latency ms: //' | tr '\n' ' ')
            echo "round $round | $name ($choice) | ${size} B c=$conc | $summary| server CPU ${cpu_us} us/req | RSS $rss"
        done
        kill $pid
        wait $pid 2>/dev/null || true
    done
done
