#!/usr/bin/env bash
# Side-by-side benchmark of thread/session configs (issue #15, README: Performance): for each
# round, each config in turn serves W1 (4 KiB Encrypt + 32 B AAD + CDIV) and 32 B Encrypt, each
# at c=64, c=16 and c=1, over SoftHSM2 through the module, plain HTTP, client on the same box
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
# shellcheck source=bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
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
for round in $(seq "$rounds"); do
    for name in "${order[@]}"; do
        start_server "${configs[$name]}" "$dir/server-$name.log"
        pid=$SERVER_PID
        choice=$(grep -o 'threads: [^"]*' "$dir/server-$name.log" | head -1 | sed 's/.*CPUs -> //; s/; set.*//')
        for load in "4096 64" "4096 16" "4096 1" "32 64" "32 16" "32 1"; do
            read -r size conc <<<"$load"
            before=$(cpu_ticks $pid)
            out=$(run_bench "$dir" --size "$size" --concurrency "$conc" --duration "$secs")
            after=$(cpu_ticks $pid)
            rss=$(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$pid/status")
            # Server CPU per request: clock ticks (10 ms) over every request of the run,
            # the warm-up's included.
            n=$(echo "$out" | bench_requests)
            cpu_us=$(awk -v t=$((after - before)) -v n="$n" 'BEGIN {if (n > 0) printf "%.0f", t * 10000 / n}')
            summary=$(echo "$out" | grep -E '^(ok=|latency|errors)' | sed 's/latency ms: //' | tr '\n' ' ')
            echo "round $round | $name ($choice) | ${size} B c=$conc | $summary| server CPU ${cpu_us} us/req | RSS $rss"
        done
        stop_server
    done
done
