#!/usr/bin/env bash
# Drive the built libxki_pkcs11.so with Debian's pkcs11-tool (OpenSC) and check its output.
#
# Usage: tests/scripts/pkcs11-tool.sh [path/to/libxki_pkcs11.so]
#        (default target/debug/libxki_pkcs11.so, see setup-env.sh; this script builds nothing)
#
# Creates its own throwaway SoftHSM2 token and config (tests/scripts/setup-env.sh), then on
# both slots: --list-slots, --list-mechanisms (exactly AES-KEY-GEN and AES-GCM), a secure
# --keygen (--sensitive --private) that --list-objects then shows, and pkcs11-tool's default
# AES keygen template (not sensitive, not private) refused by the never-export rule.
# Exits non-zero on the first failed check. Installs opensc with apt-get when missing (root).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh" "${1:-}"
"$XKI_REPO/softhsm/ensure-installed.sh" opensc >/dev/null

fail() {
    echo "FAIL: $*" >&2
    if [[ -s "$XKI_TMP/module.log" ]]; then
        echo "--- module log ---" >&2
        cat "$XKI_TMP/module.log" >&2
    fi
    exit 1
}
p11() { pkcs11-tool --module "$XKI_SO" "$@" 2>&1; }
expect() { # expect WHAT OUTPUT FIXED-STRING
    grep -qF -- "$3" <<<"$2" || fail "$1: output lacks '$3':"$'\n'"$2"
}

out=$(p11 --list-slots) || fail "--list-slots: $out"
expect "--list-slots" "$out" "xki-softhsm"
expect "--list-slots" "$out" "xki-embedded"
[[ $(grep -c '^Slot ' <<<"$out") -eq 2 ]] || fail "--list-slots: expected 2 slots:"$'\n'"$out"
expect "--list-slots" "$out" "login required"

for slot in 0 1; do
    out=$(p11 --slot "$slot" --list-mechanisms) || fail "--list-mechanisms: $out"
    mechs=$(grep -v '^Supported mechanisms' <<<"$out" || true)
    [[ $(wc -l <<<"$mechs") -eq 2 ]] || fail "slot $slot: expected exactly 2 mechanisms:"$'\n'"$out"
    expect "slot $slot mechanisms" "$mechs" "AES-KEY-GEN, keySize={32,32}, generate"
    expect "slot $slot mechanisms" "$mechs" "AES-GCM, keySize={32,32}, encrypt, decrypt"
    if grep -q "AES-GCM.*\(sign\|wrap\|derive\|generate\)" <<<"$mechs"; then
        fail "slot $slot: AES-GCM has extra flags:"$'\n'"$mechs"
    fi

    label=xki-tool-key-$slot
    out=$(p11 --slot "$slot" --login --pin "$XKI_PIN" --keygen --key-type AES:32 \
        --sensitive --private --label "$label") || fail "slot $slot: secure keygen refused:"$'\n'"$out"
    expect "slot $slot keygen" "$out" "Secret Key Object; AES length 32"
    expect "slot $slot keygen" "$out" "$label"

    out=$(p11 --slot "$slot" --login --pin "$XKI_PIN" --list-objects) ||
        fail "slot $slot: --list-objects: $out"
    expect "slot $slot list-objects" "$out" "$label"
    expect "slot $slot list-objects" "$out" "Secret Key Object; AES length 32"
    expect "slot $slot list-objects" "$out" "sensitive"
    expect "slot $slot list-objects" "$out" "never extractable"
    # Nothing before login.
    out=$(p11 --slot "$slot" --list-objects) || fail "slot $slot: --list-objects (no login): $out"
    if grep -qF "$label" <<<"$out"; then fail "slot $slot: key visible without login:"$'\n'"$out"; fi

    # pkcs11-tool's default AES template asks for CKA_SENSITIVE=false: refused.
    refused=xki-tool-weak-$slot
    if out=$(p11 --slot "$slot" --login --pin "$XKI_PIN" --keygen --key-type AES:32 \
        --label "$refused"); then
        fail "slot $slot: keygen without --sensitive succeeded:"$'\n'"$out"
    fi
    expect "slot $slot weak keygen" "$out" "CKR_TEMPLATE_INCONSISTENT"
    out=$(p11 --slot "$slot" --login --pin "$XKI_PIN" --list-objects)
    if grep -qF "$refused" <<<"$out"; then fail "slot $slot: refused key exists:"$'\n'"$out"; fi
    echo "slot $slot: ok"
done

# A wrong PIN is refused.
if out=$(p11 --slot 0 --login --pin 9999 --list-objects); then
    fail "wrong PIN accepted:"$'\n'"$out"
fi
expect "wrong PIN" "$out" "CKR_PIN_INCORRECT"

echo "pkcs11-tool.sh: all checks passed"
