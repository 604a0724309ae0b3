#!/usr/bin/env bash
# Make sure SoftHSM2 (and optionally opensc / p11-kit) is installed.
#
# Usage: softhsm/ensure-installed.sh [opensc] [p11-kit]
#
# As root, missing packages are installed with apt-get. As another user the script fails
# loudly with the command to run; it never silently skips, so CI cannot pass without SoftHSM2.
set -euo pipefail

LIB=/usr/lib/softhsm/libsofthsm2.so
packages=()

if [[ ! -e "$LIB" ]] || ! command -v softhsm2-util >/dev/null 2>&1; then
    packages+=(softhsm2)
fi
for extra in "$@"; do
    case "$extra" in
        opensc)
            command -v pkcs11-tool >/dev/null 2>&1 || packages+=(opensc)
            ;;
        p11-kit)
            command -v p11-kit >/dev/null 2>&1 || packages+=(p11-kit)
            ;;
        *)
            echo "ensure-installed.sh: unknown extra '$extra' (known: opensc, p11-kit)" >&2
            exit 2
            ;;
    esac
done

if [[ ${#packages[@]} -eq 0 ]]; then
    echo "SoftHSM2 present: $LIB, $(command -v softhsm2-util)"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "ERROR: missing packages: ${packages[*]}" >&2
    echo "Install them as root, e.g.:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y "${packages[@]}"

if [[ ! -e "$LIB" ]] || ! command -v softhsm2-util >/dev/null 2>&1; then
    echo "ERROR: softhsm2 installed but $LIB or softhsm2-util is still missing" >&2
    exit 1
fi
echo "Installed: ${packages[*]}"
