#!/usr/bin/env bash
# Proxy CPU per request against the HSM's own work, side by side (issue #15, README:
# Performance). Each round runs, one after the other on the same box:
#   1. SoftHSM2's own work, before and after step 2 (the mean of the two is the yardstick, so a
#      drift of the machine's speed during the round falls on both sides):
#      `cargo bench --bench module_throughput`, SoftHSM2 used directly
#      (no module, no proxy), 4 KiB AES-GCM encrypt + decrypt round trip, one thread: CPU µs
#      per round trip (the target's yardstick: W1 is one encrypt and one verifying decrypt);
#   2. the proxy serving W1 (4 KiB Encrypt + 32 B AAD + CDIV) over SoftHSM2 through the module,
#      plain HTTP, default thread counts, client on the same box: server CPU per request, split
#      by thread (HSM workers, async workers, log writer, rest) from /proc/PID/task/*/stat.
# Prints one line per round (the ratio proxy / HSM) and at the end the median of the ratios.
#
# Usage: proxy/scripts/bench-cpu.sh DIR [ROUNDS] [SECONDS] [CONCURRENCY]
#   DIR: prepared by bench-setup.sh. Build first: cargo build --release -p xki-proxy -p xki-pkcs11
set -euo pipefail
dir=$(cd "$1" && pwd)
rounds=${2:-3}
secs=${3:-6}
conc=${4:-64}
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck disable=SC1091
source "$dir/env.sh"
# shellcheck source=bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"

# Ticks (10 ms) of every thread of PID whose name starts with $2 ("" = all).
ticks() {
    local sum=0 f rest
    for f in /proc/"$1"/task/*/stat; do
        rest=$(cat "$f" 2>/dev/null) || continue
        local name=${rest#*(}
        name=${name%%)*}
        [[ -n $2 && $name != "$2"* ]] && continue
        # Fields 3.. of stat after the name: utime is field 14, stime 15.
        # shellcheck disable=SC2086
        set -- "$1" "$2" ${rest##*) }
        sum=$((sum + ${14} + ${15}))
        set -- "$1" "$2"
    done
    echo "$sum"
}
snapshot() { echo "$(ticks "$1" "") $(ticks "$1" xki-hsm) $(ticks "$1" tokio-rt) $(ticks "$1" xki-log)"; }

hsm_work() {
    (cd "$root" && XKI_BENCH_TARGETS=direct XKI_BENCH_PAYLOADS=4096 XKI_BENCH_THREADS=1 \
        XKI_BENCH_SECS="$secs" cargo bench -q --bench module_throughput 2>/dev/null) |
        awk '/^  4 KiB   1 \|/ { for (i = 1; i <= NF; i++) if ($i ~ /µs$/) { sub(/µs/, "", $i); print $i; exit } }'
}

ratios=()
for round in $(seq "$rounds"); do
    hsm_before=$(hsm_work)
    start_server "$dir/proxy-bench-hsm-http.toml" "$dir/server-cpu.log"
    pid=$SERVER_PID
    read -r t0 h0 a0 l0 <<<"$(snapshot $pid)"
    out=$(run_bench "$dir" --size 4096 --concurrency "$conc" --duration "$secs")
    read -r t1 h1 a1 l1 <<<"$(snapshot $pid)"
    rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
    stop_server
    hsm_after=$(hsm_work)
    hsm=$(echo "$hsm_before $hsm_after" | awk '{printf "%.1f", ($1 + $2) / 2}')
    n=$(echo "$out" | bench_requests)
    per() { echo "$1 $n" | awk '{printf "%.0f", $1 * 10000 / $2}'; }
    total=$(per $((t1 - t0)))
    tput=$(echo "$out" | grep -oE 'throughput=[0-9]+' | cut -d= -f2)
    p99=$(echo "$out" | grep -oE 'p99=[0-9.]+' | cut -d= -f2)
    ratio=$(echo "$total $hsm" | awk '{printf "%.2f", $1 / $2}')
    ratios+=("$ratio")
    echo "round $round: HSM own work (SoftHSM2 direct 4 KiB enc+dec) ${hsm} µs" \
        "(${hsm_before} before, ${hsm_after} after);" \
        "proxy W1 c=$conc ${tput} req/s p99 ${p99} ms: CPU/req ${total} µs" \
        "(HSM threads $(per $((h1 - h0))), async $(per $((a1 - a0))), log $(per $((l1 - l0))))," \
        "RSS ${rss} MB; ratio $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n |
    awk '{r[NR] = $1} END {m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2;
        printf "ratios %s-%s, median %.2f of %d rounds\n", r[1], r[NR], m, NR}'
