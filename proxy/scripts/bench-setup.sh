#!/usr/bin/env bash
# Set up a throwaway benchmark environment for `xki-proxy bench` (tests/measurements only):
# a SoftHSM2 token and an embedded token behind libxki_pkcs11.so, a SigV4 credential, a TLS
# certificate, two proxy configs (plain HTTP and HTTPS) and the key "bench-key" on both slots.
#
# Usage: proxy/scripts/bench-setup.sh DIR [PROXY_BIN]
# Then:  source DIR/env.sh; "$PROXY" -c DIR/proxy-http.toml serve   (see README: Performance)
#
# Threads: the configs leave async_workers and [hsm] sessions to the proxy, which chooses them
# at start-up (both tokens here run inside the proxy process: half the CPUs each, 1 + 1 on 2
# CPUs; README: Performance). Set them explicitly: XKI_BENCH_ASYNC_WORKERS=N
# XKI_BENCH_SESSIONS=N (e.g. 2 and 8 on 2 CPUs: the defaults before start-up tuning existed).
set -euo pipefail
dir=$1
bin=${2:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/xki-proxy}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
eval "$("$root/softhsm/new-token.sh" "$dir" bench-hsm)"
cat >"$dir/pkcs11.toml" <<CONF
log_level = "warn"
audit_file = "$dir/audit.log"
[[slot]]
label = "bench-hsm"
backends = ["softhsm"]
[[slot]]
label = "bench-emb"
backends = ["emb"]
[backend.softhsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "bench-hsm"
pin_file = "$dir/user.pin"
[backend.emb]
type = "embedded"
create = true
store = "$dir/emb.store"
pin_file = "$dir/user.pin"
CONF
export XKI_PKCS11_CONF="$dir/pkcs11.toml"
export XKI_EMBEDDED_TEST_KDF=fast
akid=BENCHKEYAAAAAAAAAAAAAAAA
head -c 48 /dev/urandom | base64 -w0 >"$dir/secret"
# A throwaway CA (bench --cacert DIR/ca.pem) and a leaf for localhost (rustls refuses a CA
# certificate as the server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=xki-bench-ca -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$dir/leaf.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/leaf.ext" -out "$dir/server.pem" 2>/dev/null
# Thread and session counts: the proxy's defaults (chosen at start-up) unless
# XKI_BENCH_ASYNC_WORKERS / XKI_BENCH_SESSIONS set them.
workers=${XKI_BENCH_ASYNC_WORKERS:+async_workers = $XKI_BENCH_ASYNC_WORKERS}
sessions=${XKI_BENCH_SESSIONS:+sessions = $XKI_BENCH_SESSIONS}
for slot in bench-hsm bench-emb; do
  for mode in http https; do
    port=$([ $mode = http ] && echo 18080 || echo 18443)
    tls=""
    [ $mode = https ] && tls=$(printf '[tls]\ncert_file = "%s/server.pem"\nkey_file = "%s/server.key"' "$dir" "$dir")
    cat >"$dir/proxy-$slot-$mode.toml" <<CONF
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 1))"
$workers
$tls
[hsm]
$sessions
token_label = "$slot"
pin_file = "$dir/user.pin"
[[prefix]]
path = ""
keys = "all"
[[prefix.credential]]
access_key_id = "$akid"
secret_file = "$dir/secret"
CONF
  done
  "$bin" -c "$dir/proxy-$slot-http.toml" keys create --label bench-key >/dev/null
done
cat >"$dir/env.sh" <<ENV
export SOFTHSM2_CONF=$SOFTHSM2_CONF
export XKI_PKCS11_CONF=$dir/pkcs11.toml
export XKI_EMBEDDED_TEST_KDF=fast
export AKID=$akid
export PROXY=$bin
ENV
echo "ready: source $dir/env.sh"
