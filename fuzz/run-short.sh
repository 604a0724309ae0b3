#!/usr/bin/env bash
# The fuzzers' part of the test command (tests/run-all.sh): build the cargo-fuzz harnesses
# (nightly, libFuzzer, AddressSanitizer), replay every input of the committed corpora
# (fuzz/corpus/<target>/: the regression inputs included) and fuzz each target for a bounded
# time (FUZZ_SECONDS, default 20). Fails if any input crashes, panics or trips ASan, or if a
# tool is missing and cannot be installed. New inputs found go to a temp dir, never into the
# repository; crash inputs are copied to fuzz/artifacts/<target>/ for a regression test.
#
#   bash fuzz/run-short.sh            # all targets
#   bash fuzz/run-short.sh sigv4      # one target
#
# Long runs: see README.md, "Security evidence".
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-20}
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(sigv4 request_bodies module_config proxy_config embedded_store module_abi)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain (libFuzzer and -Zsanitizer need it)"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The harnesses' dependencies take minutes to build with ASan: keep them in a cache outside
# the clone (CI builds a fresh clone on the same machine), keyed by nothing but cargo's own
# fingerprints, so only the project's crates rebuild. XKI_FUZZ_TARGET_DIR overrides it.
target_dir=${XKI_FUZZ_TARGET_DIR:-/var/cache/xki-fuzz/target}
# Each rebuild of the project's crates leaves its old artefacts behind: a fresh cache is about
# 1.2 GB and grew to 5 GB over a day of runs. Past 3 GB it is emptied and built again (about
# four minutes, once).
if [[ -d $target_dir ]] && [[ $(du -sm "$target_dir" | cut -f1) -gt 3072 ]]; then
    echo "fuzz: cache $target_dir is over 3 GB of mostly stale artefacts; emptying it"
    rm -rf "$target_dir"
fi
mkdir -p "$target_dir"

start=$SECONDS
cargo +nightly fuzz build -O --target-dir "$target_dir"
echo "fuzz: build $((SECONDS - start)) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/xki-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "artifacts/$t"
    extra=()
    [[ $t == module_abi ]] && extra=(-max_len=2048)
    t0=$SECONDS
    if cargo +nightly fuzz run -O --target-dir "$target_dir" "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -artifact_prefix="$work/$t/crash-" -print_final_stats=1 \
        "${extra[@]}" >"$work/$t.log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo '?')
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$t.log" | tail -1 || true)
        echo "fuzz: $t ok: $(ls "corpus/$t" | wc -l) corpus inputs replayed, $runs runs in $((SECONDS - t0)) s, $cov"
    else
        echo "fuzz: $t FAILED; log:"
        tail -60 "$work/$t.log"
        cp "$work/$t"/crash-* "artifacts/$t/" 2>/dev/null || true
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz: failing targets: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
