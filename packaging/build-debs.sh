#!/usr/bin/env bash
# Build the two Debian packages from the workspace:
#
#   bash packaging/build-debs.sh            # -> target/debian/libxki-pkcs11_*.deb, xki-proxy_*.deb
#
# Over cargo-deb (crates.io; installed into ~/.cargo/bin when missing). Both packages are built
# from ONE `cargo build` of the release profile (fat LTO, the optimised module and proxy that
# the benchmarks measure); cargo-deb then only packs (--no-build). A second run with nothing
# changed rebuilds nothing. XKI_DEB_PROFILE=<profile> picks another cargo profile: the test
# command (tests/deploy/packages.sh) packs the `dev` build it has already made, because it
# checks the packaging, not speed, and a fat-LTO build costs minutes per CI run (cargo-deb
# warns that it dislikes dev builds; the packages it makes are fine for that purpose).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${XKI_DEB_PROFILE:-release}
out=${XKI_DEB_OUT:-target/debian}

# Pinned: the metadata in Cargo.toml and the flags below are cargo-deb 3.x's.
cargo_deb_version=3.8.0
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo deb --version 2>/dev/null | grep -q "$cargo_deb_version"; then
    echo "build-debs: installing cargo-deb $cargo_deb_version from crates.io (cached in ~/.cargo/bin)" >&2
    cargo install cargo-deb --version "$cargo_deb_version" --locked
fi

# One build for both: the module as a cdylib (its own package) and the proxy binary.
cargo build --profile "$profile" -p xki-pkcs11 --lib -p xki-proxy --bin xki-proxy

mkdir -p "$out"
# --multiarch=same: the module goes to usr/lib/<multiarch>/pkcs11/ (see Cargo.toml).
cargo deb --no-build --profile "$profile" -p xki-pkcs11 --multiarch=same -o "$out" --deb-revision 1
cargo deb --no-build --profile "$profile" -p xki-proxy -o "$out" --deb-revision 1
ls -1 "$out"/libxki-pkcs11_*.deb "$out"/xki-proxy_*.deb
