#!/usr/bin/env bash
# The Debian packages, built, installed and used on THIS machine (root; CI runs it too):
#
#   bash tests/deploy/packages.sh
#
# 1. builds libxki-pkcs11 and xki-proxy with packaging/build-debs.sh (profile: $XKI_DEB_PROFILE,
#    default `dev`, the debug build tests/run-all.sh has already made: this test checks the
#    packaging, not speed; the shipped packages use the default of build-debs.sh, release);
# 2. `dpkg -i` both; checks the files, conffiles, user xki, /var/lib/xki; lintian (errors fail);
# 3. `p11-kit list-modules` shows the module, and a copy of p11-kit under another program name
#    does NOT load it (enable-in); pkcs11-tool through p11-kit-proxy.so lists the xki slot and
#    generates a key; python-pkcs11 through p11-kit-proxy.so (enabled for python by a per-user
#    p11-kit file, as xki.module documents) does the GCM round trip: Debian 12's pkcs11-tool
#    (OpenSC 0.23) has no AES-GCM encrypt ("Mechanism AES-GCM illegal or not supported";
#    OpenSC 0.24 added --aad/--tag-bits-len);
# 4. `systemd-analyze verify` accepts the unit;
# 5. runs the unit's ExecStart line (as user xki, with the unit's Environment=) on the packaged
#    config plus --listen/--admin-listen 127.0.0.1:0: /ping, /metrics; then the documented
#    operator steps (credentials new, [[prefix]] added, check-config, keys create, reload with
#    the unit's ExecReload signal) and a signed Encrypt with curl --aws-sigv4;
# 6. `dpkg -r` both: key store, PIN, secret and config stay; reinstall; the ciphertext from
#    step 5 decrypts again through a new server; then `dpkg --purge` (which keeps /var/lib/xki)
#    and this test deletes what it created.
# Idempotent: a previous run's leftovers (marked) are cleaned first. Refuses to run on a host
# with an /etc/xki or /var/lib/xki it did not create.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || fail "needs root (dpkg -i); CI runs as root"
marker=/var/lib/xki/.xki-deploy-test
for d in /etc/xki /var/lib/xki; do
    if [[ -e $d && ! -e $marker ]]; then
        fail "$d exists and was not made by this test: refusing to touch a real installation"
    fi
done

tmp=$(mktemp -d /tmp/xki-deploy.XXXXXX)
chmod 755 "$tmp"
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

purge_all() {
    dpkg --purge xki-proxy libxki-pkcs11 >/dev/null 2>&1 || true
    rm -rf /etc/xki /var/lib/xki /run/xki
    if getent passwd xki >/dev/null; then deluser --quiet --system xki >/dev/null 2>&1 || true; fi
    if getent group xki >/dev/null; then delgroup --quiet --system xki >/dev/null 2>&1 || true; fi
}
[[ -e $marker ]] && purge_all

# --- 1. build ---------------------------------------------------------------------------------
export XKI_DEB_PROFILE=${XKI_DEB_PROFILE:-dev}
out="$tmp/debs"
XKI_DEB_OUT=$out bash packaging/build-debs.sh >"$tmp/build.log" 2>&1 || {
    cat "$tmp/build.log"
    fail "packaging/build-debs.sh"
}
lib_deb=$(ls "$out"/libxki-pkcs11_*.deb)
proxy_deb=$(ls "$out"/xki-proxy_*.deb)
echo "built: $(basename "$lib_deb") $(basename "$proxy_deb")"

# --- 2. install -------------------------------------------------------------------------------
install_debs() {
    dpkg -i "$lib_deb" "$proxy_deb" >"$tmp/dpkg.log" 2>&1 || {
        cat "$tmp/dpkg.log"
        fail "dpkg -i"
    }
    touch "$marker"
}
install_debs
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
so=/usr/lib/$multiarch/pkcs11/libxki_pkcs11.so
for f in "$so" /usr/share/p11-kit/modules/xki.module /etc/xki/pkcs11.toml /usr/include/xki_pkcs11.h \
    /usr/share/doc/libxki-pkcs11/README.md /usr/bin/xki-proxy /etc/xki/proxy.toml \
    /lib/systemd/system/xki-proxy.service /usr/share/doc/xki-proxy/README.md \
    /usr/share/xki-proxy/prometheus/xki-proxy.rules.yml /usr/share/doc/xki-proxy/examples/haproxy.cfg; do
    [[ -f $f ]] || fail "not installed: $f"
done
dpkg-query -W -f='${Conffiles}\n' libxki-pkcs11 | grep -q ' /etc/xki/pkcs11.toml ' || fail "pkcs11.toml is not a conffile"
dpkg-query -W -f='${Conffiles}\n' xki-proxy | grep -q ' /etc/xki/proxy.toml ' || fail "proxy.toml is not a conffile"
getent passwd xki | grep -q ':/usr/sbin/nologin$' || fail "system user xki missing"
[[ $(stat -c '%U %a' /var/lib/xki) == "xki 750" ]] || fail "/var/lib/xki: $(stat -c '%U %a' /var/lib/xki)"
[[ $(stat -c '%U %a' /var/lib/xki/user.pin) == "xki 600" ]] || fail "user.pin: $(stat -c '%U %a' /var/lib/xki/user.pin)"
for f in embedded-token.store embedded-token.key embedded-token.store.lock; do
    # Made by the postinst as xki. (On a machine shared with other test runs, a root process
    # that loads the module without XKI_PKCS11_CONF reads the installed /etc/xki/pkcs11.toml
    # and could create these as root first: then this check says so.)
    [[ $(stat -c '%U' "/var/lib/xki/$f" 2>&1) == xki ]] || fail "/var/lib/xki/$f: not created as xki: $(ls -la /var/lib/xki)"
done
(cd /usr/share/xki-proxy/prometheus && promtool check rules xki-proxy.rules.yml >/dev/null && promtool test rules xki-proxy.rules.test.yml >/dev/null) ||
    fail "the packaged alerting rules do not pass promtool"
echo "installed: files, conffiles, user xki, /var/lib/xki (0750), user.pin (0600), alerting rules"

if command -v lintian >/dev/null; then
    # Errors fail the test; warnings are printed. Suppressed, on purpose: the upstream-style
    # changelog and man pages (documentation is in README.md), and the module's soname (a
    # PKCS#11 module is dlopen()ed by path, never linked against, so no libNAME0 package).
    lintian --fail-on error --suppress-tags no-changelog,no-manual-page,package-name-doesnt-match-sonames,sharedobject-in-library-directory-missing-soname,shared-library-lacks-version,debian-changelog-file-missing,no-copyright-file "$lib_deb" "$proxy_deb" || fail "lintian reports errors (above)"
    echo "lintian: no errors"
else
    fail "lintian missing (tests/run-all.sh installs it)"
fi

as_xki() { setpriv --reuid=xki --regid=xki --init-groups -- env HOME=/var/lib/xki XKI_PKCS11_CONF=/etc/xki/pkcs11.toml "$@"; }

# --- 3. p11-kit, pkcs11-tool, python-pkcs11 ---------------------------------------------------
mods=$(as_xki p11-kit list-modules 2>&1) || fail "p11-kit list-modules: $mods"
grep -q "^xki: $so\|^xki: libxki_pkcs11.so\|^xki:" <<<"$mods" || fail "p11-kit list-modules does not show xki:"$'\n'"$mods"
grep -q 'token: xki' <<<"$mods" || fail "p11-kit list-modules: no token xki:"$'\n'"$mods"
cp /usr/bin/p11-kit "$tmp/other-program"
other=$(as_xki "$tmp/other-program" list-modules 2>&1 || true)
grep -q '^xki:' <<<"$other" && fail "a program not in enable-in loaded the module:"$'\n'"$other"
echo "p11-kit: list-modules shows module xki with token xki; other programs do not load it"

proxy_so=/usr/lib/$multiarch/p11-kit-proxy.so
pin=$(cat /var/lib/xki/user.pin)
slots=$(as_xki pkcs11-tool --module "$proxy_so" -L 2>&1) || fail "pkcs11-tool -L: $slots"
grep -q 'token label *: xki$' <<<"$slots" || fail "pkcs11-tool through p11-kit-proxy: no xki slot:"$'\n'"$slots"
gen=$(as_xki pkcs11-tool --module "$proxy_so" --token-label xki --login --pin "$pin" --keygen \
    --key-type AES:32 --sensitive --private --label deploy-tool-key 2>&1) || fail "pkcs11-tool keygen: $gen"
grep -q 'never extractable' <<<"$gen" || fail "pkcs11-tool keygen: $gen"
echo "pkcs11-tool via p11-kit-proxy: xki slot listed, AES-256 key generated (sensitive, never extractable)"

# Debian's python3 (the user xki must be able to run it: not a pyenv under /root).
venv=$repo/target/py-pkcs11-system
if ! "$venv/bin/python" -c 'import pkcs11' 2>/dev/null; then
    /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install --quiet python-pkcs11 || fail "python-pkcs11 venv"
fi
# python is not in the packaged enable-in: add it for one user the way xki.module documents.
py_home=$tmp/py-home
mkdir -p "$py_home/.config/pkcs11/modules"
printf 'enable-in: python, python3\n' >"$py_home/.config/pkcs11/modules/xki.module"
chown -R xki:xki "$py_home"
py=$(setpriv --reuid=xki --regid=xki --init-groups -- env HOME="$py_home" XKI_PKCS11_CONF=/etc/xki/pkcs11.toml \
    "$venv/bin/python" tests/scripts/python_gcm.py "$proxy_so" xki "$pin" 2>&1) ||
    fail "python-pkcs11 GCM round trip through p11-kit-proxy.so: $py"
echo "python-pkcs11 via p11-kit-proxy: GCM round trip, tamper and export refusals ok"

# --- 4. systemd unit --------------------------------------------------------------------------
unit=/lib/systemd/system/xki-proxy.service
verify=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
[[ -z $verify ]] || fail "systemd-analyze verify printed:"$'\n'"$verify"
for want in 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' 'PrivateTmp=yes' \
    'LimitCORE=0' 'MemoryDenyWriteExecute=yes' 'User=xki' 'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -qxF "$want" "$unit" || fail "unit lacks $want"
done
grep -qx 'CapabilityBoundingSet=' "$unit" || fail "unit lacks an empty CapabilityBoundingSet="
echo "systemd-analyze verify: ok; sandboxing present"

# --- 5. the unit's ExecStart line, by hand, as xki --------------------------------------------
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
mapfile -t unit_env < <(sed -n 's/^Environment=//p' "$unit")
install -d -o xki -g xki -m 0750 /run/xki # what RuntimeDirectory=xki does
start_server() {
    : >"$tmp/server.out"
    # shellcheck disable=SC2086 # ExecStart is a plain word list
    setpriv --reuid=xki --regid=xki --init-groups -- env -i PATH=/usr/bin:/bin "${unit_env[@]}" \
        $exec_start --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        >"$tmp/server.out" 2>"$tmp/server.err" &
    server_pid=$!
    for _ in $(seq 100); do
        api=$(sed -n 's/^xki-proxy listening on \([^ ]*\).*/\1/p' "$tmp/server.out")
        [[ -n $api ]] && break
        kill -0 "$server_pid" 2>/dev/null || fail "server exited: $(cat "$tmp/server.err")"
        sleep 0.1
    done
    [[ -n $api ]] || fail "server did not start: $(cat "$tmp/server.err")"
    admin=$(sed -n 's/^xki-proxy admin listening on //p' "$tmp/server.out")
}
stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
}
start_server
[[ $(curl -sS "http://$api/ping") == ok ]] || fail "/ping on $api"
[[ $(curl -sS "http://$admin/ping") == ok ]] || fail "/ping on admin $admin"
metrics=$(curl -sS "http://$admin/metrics") || fail "/metrics"
grep -q '^xki_proxy_hsm_sessions ' <<<"$metrics" || fail "/metrics: $metrics"
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://$admin/health") == 200 ]] || fail "/health"
grep -q 'libxki_pkcs11.so' "$tmp/server.err" || fail "server did not load the packaged module: $(cat "$tmp/server.err")"
grep -q "$so" "$tmp/server.err" || fail "server loaded another module than $so: $(cat "$tmp/server.err")"
echo "ExecStart as xki: serving on $api (admin $admin) with the packaged module"

# The operator steps the packaged proxy.toml documents.
cred=$(as_xki xki-proxy credentials new --prefix /deploy --out /var/lib/xki/deploy.secret) || fail "credentials new"
akid=$(sed -n 's/^access_key_id = "\(.*\)"$/\1/p' <<<"$cred")
[[ -n $akid ]] || fail "credentials new printed no access_key_id: $cred"
printf '\n[[prefix]]\npath = "/deploy"\nkeys = "all"\n[[prefix.credential]]\naccess_key_id = "%s"\nsecret_file = "/var/lib/xki/deploy.secret"\n' "$akid" >>/etc/xki/proxy.toml
as_xki xki-proxy keys create --label deploy-key >/dev/null || fail "keys create"
check=$(as_xki xki-proxy check-config 2>&1) || fail "check-config: $check"
grep -q "$akid" <<<"$check" || fail "check-config does not show the credential: $check"
creds=$(as_xki xki-proxy credentials list) || fail "credentials list"
grep -q "^$akid " <<<"$creds" || fail "credentials list: $creds"
kill -HUP "$server_pid" # the unit's ExecReload
secret=$(cat /var/lib/xki/deploy.secret)
encrypt() {
    curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$akid:$secret" \
        -H "Content-Type: application/json" \
        -d '{"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::1:user/t","kmsOperation":"Encrypt","kmsRequestId":"r1","kmsKeyArn":"arn:aws:kms:us-east-1:1:key/k"},"plaintext":"aGVsbG8sIGRlcGxveSE=","encryptionAlgorithm":"AES_GCM"}' \
        "http://$api/deploy/kms/xks/v1/keys/deploy-key/encrypt"
}
decrypt() {
    jq -c '{requestMetadata:{awsPrincipalArn:"arn:aws:iam::1:user/t",kmsOperation:"Decrypt",kmsRequestId:"r2",kmsKeyArn:"arn:aws:kms:us-east-1:1:key/k"},encryptionAlgorithm:"AES_GCM",ciphertext,initializationVector,authenticationTag,ciphertextMetadata}' "$tmp/ct.json" |
        curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" --user "$akid:$secret" \
            -H "Content-Type: application/json" -d @- \
            "http://$api/deploy/kms/xks/v1/keys/deploy-key/decrypt" | jq -r .plaintext
}
ok=
for _ in $(seq 50); do # the reload is asynchronous
    if encrypt >"$tmp/ct.json" 2>/dev/null; then ok=1 && break; fi
    sleep 0.1
done
[[ -n $ok ]] || fail "signed Encrypt after reload: $(cat "$tmp/ct.json")"
[[ $(decrypt) == aGVsbG8sIGRlcGxveSE= ]] || fail "Decrypt"
stop_server
echo "operator steps: credentials new, keys create, check-config, credentials list, reload (SIGHUP), signed Encrypt/Decrypt ok"

# --- 6. remove keeps keys; reinstall; purge ---------------------------------------------------
dpkg -r xki-proxy libxki-pkcs11 >"$tmp/dpkg.log" 2>&1 || fail "dpkg -r: $(cat "$tmp/dpkg.log")"
[[ ! -e /usr/bin/xki-proxy && ! -e $so ]] || fail "dpkg -r left the binaries"
for f in /var/lib/xki/embedded-token.store /var/lib/xki/embedded-token.key /var/lib/xki/user.pin \
    /var/lib/xki/deploy.secret /etc/xki/proxy.toml /etc/xki/pkcs11.toml; do
    [[ -f $f ]] || fail "dpkg -r deleted $f"
done
echo "dpkg -r: binaries gone; key store, store key, PIN, secret and configs kept"
install_debs
grep -q "$akid" /etc/xki/proxy.toml || fail "reinstall replaced the edited proxy.toml"
keys=$(as_xki xki-proxy keys list) || fail "keys list after reinstall"
grep -q '^deploy-key ' <<<"$keys" || fail "deploy-key gone after reinstall: $keys"
start_server
[[ $(decrypt) == aGVsbG8sIGRlcGxveSE= ]] || fail "the ciphertext made before remove does not decrypt after reinstall"
stop_server
echo "reinstall: edited config kept, deploy-key listed, old ciphertext decrypts"

purge=$(dpkg --purge xki-proxy libxki-pkcs11 2>&1) || fail "dpkg --purge: $purge"
grep -q 'KEPT: /var/lib/xki' <<<"$purge" || fail "purge does not say what it keeps: $purge"
[[ -f /var/lib/xki/embedded-token.store && -f /var/lib/xki/deploy.secret ]] || fail "purge deleted keys or secrets"
[[ ! -e /etc/xki/pkcs11.toml && ! -e /etc/xki/proxy.toml ]] || fail "purge left the conffiles"
echo "dpkg --purge: conffiles removed, key store and secrets kept, and it says so"
purge_all # this test's own clean-up: the keys it made are test keys
echo "packages.sh: all checks passed"
