#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every test.
#
#   bash tests/run-all.sh
#
# - SoftHSM2, opensc (pkcs11-tool), p11-kit, curl and jq are installed with apt-get when
#   missing (as root); as another user it fails loudly with the command to run. Nothing is
#   skipped because a dependency is absent.
# - Every test runs against throwaway tokens (SOFTHSM2_CONF in temp dirs); nothing touches
#   ~/.config/xki or a real HSM.
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
failures=()
step() {
    local name=$1
    shift
    echo
    echo "=== $name"
    local start=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "=== $name: FAILED ($((SECONDS - start)) s)"
    fi
}

# --- dependencies -------------------------------------------------------------------------
bash softhsm/ensure-installed.sh opensc p11-kit
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
# The audit full-disk tests mount a small tmpfs (tests/module_audit_disk.rs,
# proxy/tests/audit_disks.rs): mount(8), and root.
command -v mount >/dev/null 2>&1 || missing+=(mount)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# Java's SunPKCS11 KeyGenerator against the module (tests/module_conformance.rs): the
# single-file launcher needs a JDK (jdk.compiler), not just a JRE.
if ! { command -v java >/dev/null 2>&1 && java --list-modules 2>/dev/null | grep -q '^jdk.compiler'; }; then
    missing+=(openjdk-17-jdk-headless)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ERROR: missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Deployment tests (tests/deploy/, proxy/tests/fleet.rs, observability): the load balancer,
# Prometheus (promtool), headless Chromium, systemd-analyze and lintian, from Debian.
deploy_missing=()
command -v haproxy >/dev/null 2>&1 || deploy_missing+=(haproxy)
command -v promtool >/dev/null 2>&1 || deploy_missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || deploy_missing+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || deploy_missing+=(systemd)
command -v lintian >/dev/null 2>&1 || deploy_missing+=(lintian)
command -v setpriv >/dev/null 2>&1 || deploy_missing+=(util-linux)
if [[ ${#deploy_missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ERROR: missing packages: ${deploy_missing[*]}; run: sudo apt-get install -y ${deploy_missing[*]}" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${deploy_missing[@]}"
fi
# curl signs SigV4 itself from 7.75 on; the proxy's curl test depends on it.
curl_version=$(curl --version | head -1 | awk '{print $2}')
if [[ "$(printf '%s\n7.75.0\n' "$curl_version" | sort -V | head -1)" != "7.75.0" ]]; then
    echo "ERROR: curl $curl_version is older than 7.75 (no --aws-sigv4)" >&2
    exit 1
fi

# --- disk -------------------------------------------------------------------------------
# A one-shot build has no use for incremental caches (about 3 GB of target/debug otherwise);
# CARGO_INCREMENTAL=1 in the environment keeps them for local iteration.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
# The whole run writes about 4 GB: target/ 2.9 GB and the fuzz cache 1.2 GB at the end of a
# fresh-clone run (2026-12-06; 8.1 + 5.2 GB before line tables only and no incremental), plus
# temp tokens and packages. Say so up front rather than fail steps one by one with ENOSPC.
need_gb=${XKI_DISK_NEED_GB:-5}
for dir in . "${TMPDIR:-/tmp}" /var/cache; do
    free_gb=$(df -Pk "$dir" | awk 'NR == 2 {print int($4 / 1048576)}')
    if [[ $free_gb -lt $need_gb ]]; then
        echo "ERROR: $free_gb GB free on the file system of $dir; the test command needs about $need_gb GB (target/, /var/cache/xki-fuzz, temp tokens). Free some space (or set XKI_DISK_NEED_GB) and run again." >&2
        exit 1
    fi
done

# --- build --------------------------------------------------------------------------------
cargo build --workspace --all-targets

# --- checks -------------------------------------------------------------------------------
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy -D warnings" cargo clippy --workspace --all-targets -- -D warnings
step "cargo clippy -D warnings (fault-injection builds)" cargo clippy --workspace --all-targets --features xki-pkcs11/fault-injection,xki-proxy/fault-injection -- -D warnings

# --- tests --------------------------------------------------------------------------------
step "cargo test (workspace)" cargo test --workspace
# Real consumers of the built module: Debian's pkcs11-tool and python-pkcs11.
for script in tests/scripts/pkcs11-tool.sh tests/scripts/python-pkcs11.sh; do
    step "$script" bash "$script" target/debug/libxki_pkcs11.so
done
# The module's integration suite (tests/module_*.rs) and the proxy's API tests
# over other tokens than SoftHSM2 (XKI_ITEST_BACKEND, tests/support/itest_backend.rs):
# kryoptic, a second independent PKCS#11 implementation, and the vendor emulator (its own
# tests run in the workspace step above) in every mode: Luna's caller IVs, and the HSMs that
# generate every encryption IV themselves (Luna in FIPS mode, CloudHSM, nShield), where slot 0
# encrypts under the zero-IV convention (EncryptIv in tests/support/module_fixture/mod.rs: a caller IV
# is refused, the IV the HSM wrote back is checked and decrypted with) and the proxy through
# the message API. About 30-45 s + 20 s per backend once built (2 cores, another build
# running). kryoptic is built once per machine (tests/scripts/kryoptic.sh, cached in
# /var/cache/xki-kryoptic; the first build is about 3.5 CPU-minutes, longer in wall time on a
# loaded machine; then instant); a failed build fails its step, nothing is skipped.
# Three tests never use the slot these runs change and run in the workspace step already, so
# they are left out here (about 25-35 s per backend): the million-IV test (embedded slot only)
# and the two consumer scripts (their own SoftHSM2 token; also the steps above).
step "kryoptic build (cached)" bash tests/scripts/kryoptic.sh build
same_on_every_backend=(--skip a_million_generated_ivs_under_one_key_never_repeat
    --skip pkcs11_tool_script --skip python_pkcs11_script)
for backend in kryoptic emu-luna emu-luna-fips emu-cloudhsm emu-nshield; do
    step "module suite over $backend" \
        env XKI_ITEST_BACKEND=$backend cargo test -p xki-pkcs11 --test 'module_*' \
        -- "${same_on_every_backend[@]}"
    step "proxy API tests over $backend" \
        env XKI_ITEST_BACKEND=$backend cargo test -p xki-proxy --test api --test keys --test tls
done
# Every marked shell block of README.md and proxy/README.md, as a new user runs them (fresh
# HOME; builds the release binaries the READMEs use). Lists the blocks it skips and why.
step "README blocks (tests/readme/run_readme.py)" python3 tests/readme/run_readme.py
# Fuzzers: replay the committed corpora and fuzz each target for 20 s (fuzz/run-short.sh;
# nightly + cargo-fuzz are installed when missing).
step "fuzz (corpora replay + 20 s per target)" bash fuzz/run-short.sh
# Debian packages: build (from the debug build above), dpkg -i, p11-kit, pkcs11-tool, the unit,
# the packaged config serving, remove/reinstall keeping keys, purge (root; ~20-40 s).
step "Debian packages (tests/deploy/packages.sh)" bash tests/deploy/packages.sh
# Prometheus alerting rules: syntax and unit tests (promtool, Debian's prometheus package).
step "promtool check rules" promtool check rules deploy/prometheus/xki-proxy.rules.yml
step "promtool test rules" promtool test rules deploy/prometheus/xki-proxy.rules.test.yml
# A real Prometheus scraping a running proxy; the /status page in headless Chromium (~15 s).
# These and the fleet test are #[ignore]d in the plain workspace run (they need the Debian tools
# installed above) and run here, once, with --ignored.
step "Prometheus scrape and status page in Chromium (proxy/tests/observability.rs)" \
    cargo test -p xki-proxy --test observability -- --ignored --nocapture
# Fleet: HAProxy (deploy/haproxy/haproxy.cfg) in front of 3 proxies; kill -9, SIGTERM drain,
# restarts, a new key, credential rotation; prints failures and p99 per event (~20 s).
step "fleet behind HAProxy (proxy/tests/fleet.rs)" \
    cargo test -p xki-proxy --test fleet -- --ignored --nocapture
# Replica-group failover tests need the test-only fault injector compiled in. They run last
# because this rebuilds target/debug/deps/libxki_pkcs11.so with the feature.
step "replica groups (fault injection)" \
    cargo test -p xki-pkcs11 --features fault-injection --test replica_group --test replica_module \
        --test replica_inline
# ... the start-up tuning over a backend delayed like a network HSM (tests/tuning.rs), and
# queueing behind one slow HSM session (tests/api.rs overload_gives_throttling_...).
step "proxy health per replica member, tuning for a network HSM, overload (fault injection)" \
    cargo test -p xki-proxy --features fault-injection --test replica_health --test tuning --test api
# Key state: crash at every write step (XKI_FAULT_ABORT_AFTER_STATE_STEP), purge with a
# test-only "today" (--as-of), both compiled only with the feature (about 20 s).
step "key state crashes and purge (fault injection)" \
    cargo test -p xki-proxy --features fault-injection --test keystate --test keys

echo
echo "disk: target/ $(du -sh target | cut -f1), fuzz cache $(du -sh "${XKI_FUZZ_TARGET_DIR:-/var/cache/xki-fuzz/target}" 2>/dev/null | cut -f1), $(df -Ph . | awk 'NR == 2 {print $4}') left"
if [[ $failed -gt 0 ]]; then
    echo "failed steps: ${failures[*]}"
fi
echo "steps: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
