#!/usr/bin/env bash
# SoftHSM2 losing keys created by another process while the proxy reads the token (top-level
# README: "Behaviour callers can rely on", SoftHSM2's own limit). A diagnostic, not a test.
#
# The proxy serves over SoftHSM2 (through our module, or with DIRECT=1 loading SoftHSM2
# itself) with its background key count every 30 ms. PAIRS times: `pkcs11-tool` makes two
# AES keys with one new label and different IDs, one signed Encrypt on that label must answer
# 500 ("2 secret keys carry the label"; a 200 means the proxy saw only one key), then both
# keys are deleted again. Prints each pair that did not answer 500 and a count.
#
# Usage: [DIRECT=1] proxy/scripts/softhsm-concurrent-create.sh DIR [PAIRS]
#   DIR: prepared by bench-setup.sh (use a fresh one: every listing reads every key).
set -uo pipefail
dir=$(cd "$1" && pwd)
pairs=${2:-50}
# shellcheck disable=SC1091
source "$dir/env.sh"
# shellcheck source=bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
softhsm=/usr/lib/softhsm/libsofthsm2.so
cfg="$dir/concurrent-create.toml"
sed "s|^\[hsm\]\$|[hsm]\nhealth_interval_ms = 30${DIRECT:+\nmodule = \"$softhsm\"}|" \
    "$dir/proxy-bench-hsm-http.toml" >"$cfg"
start_server "$cfg" "$dir/server-concurrent-create.log"
secret=$(cat "$dir/secret")
pin=$(cat "$dir/user.pin")
body='{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:user/a","kmsOperation":"Encrypt","kmsRequestId":"r1","kmsKeyArn":"arn:aws:kms:us-east-1:123456789012:key/x"},"plaintext":"aGk=","encryptionAlgorithm":"AES_GCM"}'
tool() { pkcs11-tool --module "$softhsm" --login --pin "$pin" --token-label bench-hsm "$@" >/dev/null 2>&1; }
refused=0 other=0 failed_keygen=0
for i in $(seq "$pairs"); do
    label="concurrent-$$-$i"
    made=0
    for _ in 1 2; do
        tool --keygen --key-type AES:32 --label "$label" --sensitive --private \
            --id "$(printf '%08x' $((RANDOM * 65536 + RANDOM)))" && made=$((made + 1))
    done
    status=$(curl -sS -o "$dir/concurrent-create.out" -w '%{http_code}' \
        --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$AKID:$secret" \
        -H "Content-Type: application/json" -d "$body" \
        "http://127.0.0.1:18080/kms/xks/v1/keys/$label/encrypt")
    if [[ $made != 2 ]]; then
        failed_keygen=$((failed_keygen + 1))
    elif [[ $status == 500 ]]; then
        refused=$((refused + 1))
    else
        other=$((other + 1))
        echo "$label: $status $(cat "$dir/concurrent-create.out")"
    fi
    for _ in 1 2; do tool --delete-object --type secrkey --label "$label"; done
done
stop_server
echo "pairs refused as two keys (500): $refused; seen as one key or other: $other;" \
    "pairs not made (pkcs11-tool keygen failed): $failed_keygen"
