# Sourced by the scripts in tests/scripts/: a throwaway SoftHSM2 token and a two-slot module
# config, the way tests/support/module_fixture/ sets them up for the Rust integration tests.
#
# In:  $1 (optional) path of libxki_pkcs11.so; default target/debug/libxki_pkcs11.so (or
#      target/debug/deps/libxki_pkcs11.so when that is newer).
# Out: XKI_REPO, XKI_SO (absolute .so path), XKI_TMP (removed on exit), XKI_PIN, and exported
#      SOFTHSM2_CONF, XKI_PKCS11_CONF, XKI_EMBEDDED_TEST_KDF=fast.
# Slots: 0 = "xki-softhsm" (SoftHSM2 token "xki-script"), 1 = "xki-embedded"; user PIN 1234
# (TEST ONLY) on both.

XKI_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
XKI_SO=${1:-$XKI_REPO/target/debug/libxki_pkcs11.so}
# `cargo test` relinks target/debug/deps/libxki_pkcs11.so without always refreshing the
# uplifted target/debug/libxki_pkcs11.so, which can then be stale or missing: by default use
# whichever of the two is newer.
if [[ -z ${1:-} && -f "$XKI_REPO/target/debug/deps/libxki_pkcs11.so" &&
    "$XKI_REPO/target/debug/deps/libxki_pkcs11.so" -nt "$XKI_SO" ]]; then
    echo "note: using target/debug/deps/libxki_pkcs11.so (newer than target/debug/libxki_pkcs11.so)" >&2
    XKI_SO=$XKI_REPO/target/debug/deps/libxki_pkcs11.so
fi
if [[ ! -f "$XKI_SO" ]]; then
    echo "ERROR: $XKI_SO is not built. Run: cargo build -p xki-pkcs11" >&2
    exit 1
fi
XKI_SO=$(cd "$(dirname "$XKI_SO")" && pwd)/$(basename "$XKI_SO")

"$XKI_REPO/softhsm/ensure-installed.sh" >/dev/null

XKI_PIN=1234
XKI_TMP=$(mktemp -d "${TMPDIR:-/tmp}/xki-script.XXXXXX")
trap 'rm -rf "$XKI_TMP"' EXIT
"$XKI_REPO/softhsm/new-token.sh" "$XKI_TMP/softhsm" xki-script "$XKI_PIN" >/dev/null
export SOFTHSM2_CONF=$XKI_TMP/softhsm/softhsm2.conf
# PIN attempt counters (pin_attempts.rs) in the temp dir, not in the user's data directory.
export XDG_DATA_HOME=$XKI_TMP/data
printf '%s' "$XKI_PIN" >"$XKI_TMP/user.pin"
chmod 600 "$XKI_TMP/user.pin"
cat >"$XKI_TMP/pkcs11.toml" <<CONF
log_level = "warn"
log_file = "$XKI_TMP/module.log"

[[slot]]
label = "xki-softhsm"
backends = ["softhsm"]

[[slot]]
label = "xki-embedded"
backends = ["emb"]

[backend.softhsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "xki-script"
pin_file = "$XKI_TMP/user.pin"

[backend.emb]
type = "embedded"
create = true
store = "$XKI_TMP/embedded.store"
pin_file = "$XKI_TMP/user.pin"
CONF
export XKI_PKCS11_CONF=$XKI_TMP/pkcs11.toml
export XKI_EMBEDDED_TEST_KDF=fast
