#!/usr/bin/env bash
# User-space instructions per W1 request (4 KiB Encrypt + 32 B AAD + CDIV) of one proxy build,
# for comparing builds on a machine whose speed drifts (README: Performance, "The same check
# on instructions"). The server runs under `valgrind --tool=callgrind` with instrumentation
# off; after 5 s of W1 at concurrency 4 (warm-up: connections, key lookup, IV batch)
# instrumentation is switched on for SECONDS of W1 and off again. Every instruction of the
# process in that window (all threads: HTTP, SigV4, JSON, the module, the token's library,
# OpenSSL) is divided by the requests answered in it. Kernel work is not counted (compare
# system calls with `strace -f -c`). Needs valgrind.
#
# Usage: proxy/scripts/bench-instructions.sh DIR [CONFIG] [SECONDS]
#   DIR: prepared by bench-setup.sh; CONFIG: a proxy config in it (default: a copy of
#   proxy-bench-hsm-http.toml with async_workers = 1 and sessions = 1: under valgrind every
#   call is slow, and the start-up probe would otherwise take the token for a network HSM).
set -euo pipefail
dir=$(cd "$1" && pwd)
secs=${3:-20}
# shellcheck disable=SC1091
source "$dir/env.sh"
# shellcheck source=bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
cfg=${2:-$dir/instructions-one-one.toml}
if [[ -z ${2:-} ]]; then
    sed -e 's/^\[hsm\]$/[hsm]\nsessions = 1/' "$dir/proxy-bench-hsm-http.toml" |
        { echo "async_workers = 1"; cat; } >"$cfg"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# KEEP_CALLGRIND=1: keep the profile for callgrind_annotate (its path is printed).
if [[ -n ${KEEP_CALLGRIND:-} ]]; then
    trap - EXIT
    echo "callgrind profile: $out/cg" >&2
fi

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg" \
    "$PROXY" -c "$cfg" serve >/dev/null 2>"$dir/server-instructions.log" &
pid=$!
wait_ready 120 # everything is slow under valgrind
w1() { run_bench "$dir" --size 4096 --concurrency 4 --duration "$1"; }
w1 5 >/dev/null
callgrind_control -i on "$pid" >/dev/null 2>&1
res=$(w1 "$secs")
callgrind_control -i off "$pid" >/dev/null 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
kill "$pid"
wait "$pid" 2>/dev/null || true
n=$(echo "$res" | bench_requests)
total=$(cat "$out"/cg* | awk '/^totals:/ {s += $2} END {printf "%.0f", s}')
echo "$PROXY: $n requests, $total instructions, $(awk -v t="$total" -v n="$n" 'BEGIN {printf "%.0f", t / n}') per request"
