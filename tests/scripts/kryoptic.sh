#!/usr/bin/env bash
# Kryoptic (https://github.com/latchset/kryoptic, crates.io, Apache-2.0), a second independent
# PKCS#11 3.x token implementation the test suite runs over besides SoftHSM2.
#
#   tests/scripts/kryoptic.sh build
#       Builds libkryoptic_pkcs11.so (cached) and prints its path as the last line of stdout.
#   tests/scripts/kryoptic.sh new-token DIR LABEL [PIN] [SO_PIN]
#       Writes DIR/kryoptic.conf (one sqlite slot, DIR/token.sql), initialises the token and
#       its user PIN with pkcs11-tool, writes DIR/user.pin and prints `export KRYOPTIC_CONF=...`.
#       Uses $XKI_KRYOPTIC_LIB when set, else builds the library first when the cache has none.
#
# Why a build: kryoptic needs OpenSSL >= 3.2 and Debian 12 ships 3.0. The script builds OpenSSL
# from the `openssl-src` crate's sources (version pinned below) into a private static prefix
# (`no-shared`: the crate omits files a shared build needs), then kryoptic from its crate
# sources (pinned, `--locked`) against it with pkg-config. Only AES and the sqlite store are
# compiled in (what the tests use).
#
# Cache: $XKI_KRYOPTIC_CACHE (default /var/cache/xki-kryoptic) / a key made of both versions,
# the features and a hash of the build recipe, so a fresh clone on the same machine reuses the
# build and any change to the recipe rebuilds. A missing or incomplete cache entry is rebuilt, never skipped;
# concurrent builds are serialised with flock. First build: about 3.5 CPU-minutes.
#
# As root, missing build packages (libclang-dev for bindgen, pkg-config, make, perl, gcc,
# libsqlite3-dev, opensc for pkcs11-tool) are installed with apt-get; as another user the
# script fails with the command to run.
set -euo pipefail

KRYOPTIC_VERSION=1.5.4
OPENSSL_SRC_VERSION=300.6.1+3.6.3
FEATURES=kryoptic-lib/dynamic,kryoptic-lib/sqlitedb,kryoptic-lib/aes

say() { echo "kryoptic.sh: $*" >&2; }

ensure_packages() {
    local missing=()
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v perl >/dev/null 2>&1 || missing+=(perl)
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    command -v pkcs11-tool >/dev/null 2>&1 || missing+=(opensc)
    command -v flock >/dev/null 2>&1 || missing+=(util-linux)
    pkg-config --exists sqlite3 2>/dev/null || missing+=(libsqlite3-dev)
    # bindgen (in ossl-sys) loads libclang at build time and needs clang's own headers.
    if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null &&
        ! compgen -G '/usr/lib/*/libclang-[0-9]*.so*' >/dev/null; then
        missing+=(libclang-dev)
    fi
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        say "ERROR: missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

cargo_home() { echo "${CARGO_HOME:-$HOME/.cargo}"; }

# Print the unpacked registry source directory of crate $1 version $2 (fetched by cargo).
crate_src() {
    local found
    found=$(compgen -G "$(cargo_home)/registry/src/*/$1-$2" | head -1 || true)
    [[ -n $found ]] || { say "ERROR: cargo did not unpack $1 $2"; exit 1; }
    echo "$found"
}

# The cache key: both versions, the features and a hash of the build recipe (the functions
# below as bash prints them), so editing the token setup does not force a rebuild but any
# change to how the library is built does.
cache_dir() {
    local root=${XKI_KRYOPTIC_CACHE:-/var/cache/xki-kryoptic}
    local hash
    hash=$({
        declare -f ensure_packages crate_src build
        echo "$KRYOPTIC_VERSION $OPENSSL_SRC_VERSION $FEATURES"
    } | sha256sum | cut -c1-16)
    echo "$root/kryoptic-$KRYOPTIC_VERSION-openssl-src-$OPENSSL_SRC_VERSION-$hash"
}

build() {
    local out lib
    out=$(cache_dir)
    lib=$out/libkryoptic_pkcs11.so
    if [[ -f $out/complete && -f $lib ]]; then
        say "cached: $lib"
        echo "$lib"
        return 0
    fi
    ensure_packages
    mkdir -p "$(dirname "$out")"
    exec 9>"$(dirname "$out")/.lock"
    flock 9
    if [[ -f $out/complete && -f $lib ]]; then # built by a concurrent run meanwhile
        echo "$lib"
        return 0
    fi
    local start=$SECONDS work
    work=$(mktemp -d "$(dirname "$out")/build.XXXXXX")
    # shellcheck disable=SC2064 # expand now: $work is local
    trap "rm -rf '$work'" EXIT

    # 1. Fetch both crates' sources through cargo (a scratch project pins the versions).
    mkdir -p "$work/fetch/src"
    cat >"$work/fetch/Cargo.toml" <<TOML
[package]
name = "xki-kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
openssl-src = "=$OPENSSL_SRC_VERSION"
kryoptic = "=$KRYOPTIC_VERSION"
TOML
    echo 'fn main() {}' >"$work/fetch/src/main.rs"
    (cd "$work/fetch" && cargo fetch -q) >&2
    local ossl_src kry_src
    ossl_src=$(crate_src openssl-src "$OPENSSL_SRC_VERSION")/openssl
    kry_src=$(crate_src kryoptic "$KRYOPTIC_VERSION")

    # 2. OpenSSL into a private static prefix (built in a copy: the registry stays pristine).
    local prefix=$out/openssl
    rm -rf "$out"
    mkdir -p "$out"
    cp -a "$ossl_src" "$work/openssl"
    say "building OpenSSL $OPENSSL_SRC_VERSION into $prefix"
    (
        cd "$work/openssl"
        ./Configure --prefix="$prefix" --libdir=lib no-shared no-docs no-tests no-legacy \
            no-fips no-module
        # Libraries, headers and pkg-config files only: the openssl command is not needed.
        make -j2 build_libs
        make install_dev
    ) >"$work/openssl.log" 2>&1 || {
        tail -40 "$work/openssl.log" >&2
        say "ERROR: OpenSSL build failed (log above)"
        exit 1
    }

    # 3. kryoptic from its crate sources (its own Cargo.lock) against that prefix.
    cp -a "$kry_src" "$work/kryoptic"
    say "building kryoptic $KRYOPTIC_VERSION"
    (
        cd "$work/kryoptic"
        PKG_CONFIG_PATH=$prefix/lib/pkgconfig CARGO_TARGET_DIR=$work/target \
            cargo build --locked --no-default-features --features "$FEATURES"
    ) >&2
    # The debug profile builds in about half the time of release; the token's cryptography
    # and storage are OpenSSL's and SQLite's C code either way.
    cp "$work/target/debug/libkryoptic_pkcs11.so" "$lib"
    # The private OpenSSL is linked in statically: the system's 3.0 must not be loaded.
    if ldd "$lib" | grep -E 'libcrypto|libssl' >/dev/null; then
        say "ERROR: $lib links a shared OpenSSL:"
        ldd "$lib" >&2
        exit 1
    fi
    touch "$out/complete"
    # Entries of older recipes or versions are never used again.
    find "$(dirname "$out")" -mindepth 1 -maxdepth 1 -name 'kryoptic-*' ! -path "$out" \
        -exec rm -rf {} + 2>/dev/null || true
    say "built in $((SECONDS - start)) s: $lib"
    echo "$lib"
}

new_token() {
    if [[ $# -lt 2 || $# -gt 4 ]]; then
        say "usage: $0 new-token DIR LABEL [PIN] [SO_PIN]"
        exit 2
    fi
    local dir=$1 label=$2 pin=${3:-1234} so_pin=${4:-5678} lib
    lib=${XKI_KRYOPTIC_LIB:-$(build | tail -1)}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ -e $dir/token.sql ]]; then
        say "ERROR: $dir/token.sql exists: pick a new DIR"
        exit 1
    fi
    cat >"$dir/kryoptic.conf" <<CONF
# Written by tests/scripts/kryoptic.sh (throwaway test token).
[[slots]]
slot = 1
description = "xki test token"
dbtype = "sqlite"
dbargs = "$dir/token.sql"
CONF
    export KRYOPTIC_CONF=$dir/kryoptic.conf
    pkcs11-tool --module "$lib" --slot 1 --init-token --label "$label" --so-pin "$so_pin" >&2
    pkcs11-tool --module "$lib" --slot 1 --login --login-type so --so-pin "$so_pin" \
        --init-pin --pin "$pin" >&2
    (
        umask 077
        printf '%s' "$pin" >"$dir/user.pin"
    )
    echo "export KRYOPTIC_CONF=$KRYOPTIC_CONF"
}

case "${1:-}" in
    build) build ;;
    new-token)
        shift
        new_token "$@"
        ;;
    *)
        say "usage: $0 build | new-token DIR LABEL [PIN] [SO_PIN]"
        exit 2
        ;;
esac
