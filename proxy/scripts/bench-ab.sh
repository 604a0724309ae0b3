#!/usr/bin/env bash
# Two proxy builds side by side (the regression check of issue #10, README: Performance):
# alternating A B B A ... so drift of a noisy box falls on both, W1 (4 KiB Encrypt + 32 B AAD +
# CDIV) over SoftHSM2 through each build's module, plain HTTP, client on the same box. Each
# round runs both builds at c=64 (as fast as possible) and at a held 1 800 req/s. One line per
# run (build, load, throughput, p99, server CPU per request), then per load the mean of each
# build and the median of the per-round ratios B/A.
#
# Usage: [LOADS="c64 held"] proxy/scripts/bench-ab.sh DIR_A DIR_B [ROUNDS] [SECONDS]
#   DIR_A, DIR_B: each prepared by its own build's bench-setup.sh (its env.sh names $PROXY).
#   LOADS: which loads to run (default both).
set -euo pipefail
dir_a=$(cd "$1" && pwd)
dir_b=$(cd "$2" && pwd)
rounds=${3:-6}
secs=${4:-5}
# shellcheck source=bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

one() { # label dir load
    local label=$1 d=$2 load=$3
    (
        # shellcheck disable=SC1091
        source "$d/env.sh"
        start_server "$d/proxy-bench-hsm-http.toml" "$d/server-ab.log"
        pid=$SERVER_PID
        rate=()
        conc=64
        if [[ $load == held ]]; then
            rate=(--rate 1800)
            conc=32
        fi
        t0=$(cpu_ticks "$pid")
        res=$(run_bench "$d" --size 4096 --duration "$secs" --concurrency "$conc" "${rate[@]}")
        t1=$(cpu_ticks "$pid")
        stop_server
        n=$(echo "$res" | bench_requests)
        tput=$(echo "$res" | grep -oE 'throughput=[0-9]+' | cut -d= -f2)
        p99=$(echo "$res" | grep -oE 'p99=[0-9.]+' | cut -d= -f2)
        echo "$label $load $tput $p99 $(((t1 - t0) * 10000 / n))"
    ) | tee -a "$out"
}

loads=${LOADS:-c64 held}
for r in $(seq "$rounds"); do
    for load in $loads; do
        if ((r % 2)); then
            one A "$dir_a" $load
            one B "$dir_b" $load
        else
            one B "$dir_b" $load
            one A "$dir_a" $load
        fi
    done
done
echo "columns above: build load req/s p99-ms cpu-us/req"
# Median over rounds of B/A in column $1 (3 = req/s, 4 = p99, 5 = CPU) for load $2.
median_ratio() {
    awk -v col="$1" -v load="$2" '$2 == load { v[$1, ++n[$1]] = $col }
        END { for (k = 1; k <= n["A"] && k <= n["B"]; k++) print v["B", k] / v["A", k] }' "$out" |
        sort -g | awk '{ r[NR] = $1 } END { print (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'
}
for load in $loads; do
    awk -v load=$load -v mt="$(median_ratio 3 $load)" -v mp="$(median_ratio 4 $load)" -v mc="$(median_ratio 5 $load)" '
        $2 == load { i = ++n[$1]; t[$1, i] = $3; p[$1, i] = $4; c[$1, i] = $5 }
        function mean(a, b,   s, k) { s = 0; for (k = 1; k <= n[b]; k++) s += a[b, k]; return s / n[b] }
        END {
            printf "%s: A %.0f req/s p99 %.2f ms cpu %.0f us | B %.0f req/s p99 %.2f ms cpu %.0f us | B/A means: req/s %.3f p99 %.3f cpu %.3f; medians of rounds: req/s %.3f p99 %.3f cpu %.3f\n",
                load, mean(t, "A"), mean(p, "A"), mean(c, "A"), mean(t, "B"), mean(p, "B"), mean(c, "B"),
                mean(t, "B") / mean(t, "A"), mean(p, "B") / mean(p, "A"), mean(c, "B") / mean(c, "A"), mt, mp, mc
        }' "$out"
done
