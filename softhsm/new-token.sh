#!/usr/bin/env bash
# Create a throwaway SoftHSM2 token for tests and demos.
#
# Usage: softhsm/new-token.sh DIR LABEL [PIN] [SO_PIN]
#
# Creates DIR/tokens and DIR/softhsm2.conf (file object store, log level ERROR), initialises a
# token labelled LABEL in the first free slot, writes the user PIN to DIR/user.pin (mode 0600)
# and prints the line to export SOFTHSM2_CONF. Several tokens may share one DIR.
#
# The default PINs (user 1234, SO 5678) are for TESTS ONLY. Never use them for real keys.
# Fails (exit 1) if a token with LABEL already exists in DIR: pick a new label or a new DIR.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 4 ]]; then
    echo "usage: $0 DIR LABEL [PIN] [SO_PIN]" >&2
    exit 2
fi
dir=$1
label=$2
pin=${3:-1234}
so_pin=${4:-5678}

if ! command -v softhsm2-util >/dev/null 2>&1; then
    echo "ERROR: softhsm2-util not found; run softhsm/ensure-installed.sh" >&2
    exit 1
fi

mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
cat >"$conf" <<CONF
# Written by softhsm/new-token.sh (throwaway test token store).
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF="$conf"

# softhsm2-util pads labels to 32 characters in its listing; compare trimmed labels exactly.
if softhsm2-util --show-slots 2>/dev/null |
    sed -n 's/^ *Label: *//p' | sed 's/ *$//' | grep -qxF -- "$label"; then
    echo "ERROR: a token labelled '$label' already exists in $dir" >&2
    exit 1
fi

softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >/dev/null

umask 077
printf '%s' "$pin" >"$dir/user.pin"
chmod 600 "$dir/user.pin"

echo "export SOFTHSM2_CONF=$conf"
