#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `meson install --destdir` puts every system integration file where it belongs.
# Usage: check-install.sh MESON BUILD_ROOT VDISKD_PATH EXPECTED_PATH...
# EXPECTED_PATHs are absolute install paths (prefix included), computed in
# tests/data/meson.build from the same options the install rules use. Also
# checks that the configured files name VDISKD_PATH, and that no file
# landed outside the prefix or the configured systemd/sysusers directories.
# Exit 0 pass, 1 fail.
set -u

meson=$1
build=$2
vdiskd_path=$3
shift 3

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/dest

if ! out=$("$meson" install -C "$build" --destdir "$dest" --no-rebuild 2>&1); then
        echo "FAIL: meson install:"
        echo "$out"
        exit 1
fi

failed=0
for p in "$@"; do
        if [ -f "$dest$p" ] && [ -s "$dest$p" ]; then
                echo "ok: $p"
        else
                echo "FAIL: $p not installed (or empty)"
                failed=1
        fi
done

# The two configured files point at the installed daemon.
for p in "$@"; do
        case "$p" in
        */system-services/org.vdisk.VDisk1.service)
                grep -qx "Exec=$vdiskd_path --system" "$dest$p" || {
                        echo "FAIL: $p: Exec= is not $vdiskd_path --system"; failed=1; } ;;
        */vdiskd.service)
                grep -qx "ExecStart=$vdiskd_path --system" "$dest$p" || {
                        echo "FAIL: $p: ExecStart= is not $vdiskd_path --system"; failed=1; } ;;
        esac
done

# The sample rules must not be installed where polkitd would load them.
if find "$dest" -path '*/polkit-1/rules.d/*' | grep -q .; then
        echo "FAIL: a rules file is installed into a polkit rules.d directory:"
        find "$dest" -path '*/polkit-1/rules.d/*'
        failed=1
fi

[ $failed = 0 ] && echo "all $# files in place"
exit $failed
