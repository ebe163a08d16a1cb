#!/usr/bin/env bash
# Installs what building and testing vdisk needs on Debian 12 (root or sudo).
# Usage: scripts/install-deps.sh [--test]   (--test adds the test tools: qemu-utils, clang ...)
set -euo pipefail

pkgs=(meson ninja-build gcc pkg-config zlib1g-dev libzstd-dev libdeflate-dev uuid-dev libsystemd-dev liburing-dev dbus)
if [ "${1:-}" = "--test" ]; then
    pkgs+=(qemu-utils clang libclang-rt-14-dev python3 time python3-dbus python3-dbusmock python3-gi python3-pytest
           libxml2-utils systemd util-linux strace btrfs-progs)
fi

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "Installing: ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
