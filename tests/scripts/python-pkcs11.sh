#!/usr/bin/env bash
# Run tests/scripts/python_gcm.py (python-pkcs11) against the built libxki_pkcs11.so, on both
# slots of a throwaway config.
#
# Usage: tests/scripts/python-pkcs11.sh [path/to/libxki_pkcs11.so]
#        (default target/debug/libxki_pkcs11.so, see setup-env.sh; this script builds nothing)
#
# python-pkcs11 lives in a venv under target/py-pkcs11, created and filled with
# `pip install python-pkcs11` on first use. If that is impossible the script fails loudly.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh" "${1:-}"

venv=$XKI_REPO/target/py-pkcs11
if ! "$venv/bin/python" -c 'import pkcs11' 2>/dev/null; then
    echo "python-pkcs11 not found: creating $venv" >&2
    python3 -m venv "$venv" || {
        echo "ERROR: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/pip" install --quiet python-pkcs11 || {
        echo "ERROR: pip install python-pkcs11 failed" >&2
        exit 1
    }
    "$venv/bin/python" -c 'import pkcs11' || {
        echo "ERROR: python-pkcs11 installed but cannot be imported" >&2
        exit 1
    }
fi

for token in xki-softhsm xki-embedded; do
    if ! "$venv/bin/python" "$XKI_REPO/tests/scripts/python_gcm.py" "$XKI_SO" "$token" "$XKI_PIN"; then
        echo "FAIL: python_gcm.py on $token" >&2
        [[ -s "$XKI_TMP/module.log" ]] && cat "$XKI_TMP/module.log" >&2
        exit 1
    fi
done
echo "python-pkcs11.sh: all checks passed"
