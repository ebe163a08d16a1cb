#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Checks the configured systemd unit and the sysusers.d file.
# Usage: check-unit.sh UNIT SYSUSERS VDISKD_INSTALL_PATH [VDISKD_BUILD_BINARY]
#
# 1. The unit's shape: Type=dbus, BusName, User/Group vdiskd, ExecStart = the
#    installed daemon path + --system, no [Install] section (activation only).
# 2. `systemd-analyze verify` prints nothing (it exits 0 even for unknown keys
#    and unparsable values, which it only warns about, so any output fails).
#    verify also insists that ExecStart's binary exists. On systemd 252,
#    `--root=DESTDIR` does not help: it loads the unit's implicit dependencies
#    (dbus.socket, sysinit.target) from that root as well and fails with
#    "Unit dbus.socket not found" in a DESTDIR that holds only our files. So a
#    copy of the unit is verified with ExecStart pointing at the build tree's
#    daemon (or /bin/true while the daemon is not built); the real ExecStart
#    path is checked by step 1. `--man=no` because vdiskd(8) is not installed.
# 3. `systemd-analyze security --offline=true` rates the unit at most 2.0.
# 4. systemd-sysusers, into an empty root, creates user and group vdiskd.
# Exit 0 pass, 1 fail, 77 skip (no systemd-analyze).
set -u

unit=$1
sysusers=$2
vdiskd_path=$3
binary=${4:-}
max_exposure=2.0

if ! command -v systemd-analyze >/dev/null; then
        echo "systemd-analyze missing (package systemd): skipped"
        exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() { echo "FAIL: $*"; failed=1; }
ok() { echo "ok: $*"; }

# 1. shape
key() { sed -n "s/^$1=//p" "$unit"; }
[ "$(key Type)" = dbus ] || fail "Type=$(key Type), want dbus"
[ "$(key BusName)" = org.vdisk.VDisk1 ] || fail "BusName=$(key BusName)"
[ "$(key User)" = vdiskd ] && [ "$(key Group)" = vdiskd ] || fail "User/Group are not vdiskd"
[ "$(key ExecStart)" = "$vdiskd_path --system" ] || fail "ExecStart=$(key ExecStart), want '$vdiskd_path --system'"
grep -q '^\[Install\]' "$unit" && fail "the unit has an [Install] section; it is started by bus activation only"
grep -q '^@[A-Z_]*@\|@[A-Z_]*@$' "$unit" && fail "unsubstituted @VARIABLE@ in $unit"
[ "$failed" = 0 ] && ok "unit shape (Type=dbus, BusName, User, ExecStart $vdiskd_path, no [Install])"

# 2. verify
if [ -n "$binary" ] && [ -x "$binary" ]; then
        standin=$binary
else
        standin=/bin/true
        echo "note: the daemon is not built; verifying with ExecStart=$standin"
fi
mkdir "$tmp/unit"
sed "s|^ExecStart=$vdiskd_path |ExecStart=$standin |" "$unit" > "$tmp/unit/vdiskd.service"
out=$(systemd-analyze verify --man=no "$tmp/unit/vdiskd.service" 2>&1)
rc=$?
if [ $rc -ne 0 ] || [ -n "$out" ]; then
        fail "systemd-analyze verify (exit $rc):"
        echo "$out"
else
        ok "systemd-analyze verify: no warnings"
fi

# 3. security
out=$(systemd-analyze security --offline=true --no-pager "$tmp/unit/vdiskd.service" 2>&1)
rc=$?
level=$(echo "$out" | sed -n 's/.*Overall exposure level for vdiskd\.service: \([0-9][0-9.]*\).*/\1/p')
if [ $rc -ne 0 ] || [ -z "$level" ]; then
        fail "systemd-analyze security (exit $rc) gave no exposure level:"
        echo "$out"
elif ! awk -v l="$level" -v m="$max_exposure" 'BEGIN { exit !(l <= m) }'; then
        fail "exposure $level > $max_exposure; the items that count:"
        echo "$out" | grep '✗'
else
        ok "systemd-analyze security: exposure $level (at most $max_exposure)"
fi
if echo "$out" | grep -qi 'ignoring\|unknown'; then
        fail "systemd-analyze security warned:"
        echo "$out" | grep -i 'ignoring\|unknown'
fi

# 4. sysusers
if command -v systemd-sysusers >/dev/null; then
        mkdir -p "$tmp/root/etc"
        # With --root, file arguments are looked up under the root too: pass it on stdin.
        out=$(systemd-sysusers --root="$tmp/root" - < "$sysusers" 2>&1)
        rc=$?
        if [ $rc -ne 0 ] || echo "$out" | grep -qi 'ignoring\|failed\|invalid'; then
                fail "systemd-sysusers (exit $rc): $out"
        elif ! grep -q '^vdiskd:x:[0-9]*:[0-9]*:vdisk image service:' "$tmp/root/etc/passwd" ||
             ! grep -q '^vdiskd:x:' "$tmp/root/etc/group"; then
                fail "systemd-sysusers did not create user and group vdiskd"
                cat "$tmp/root/etc/passwd" "$tmp/root/etc/group"
        else
                ok "systemd-sysusers creates $(grep '^vdiskd:' "$tmp/root/etc/passwd")"
        fi
else
        echo "note: systemd-sysusers missing: sysusers.d file not checked"
fi

exit $failed
