#!/usr/bin/env bash
# Installs what is needed, builds, and runs the main job: vdiskd in session
# mode on a private D-Bus bus, driven by vdiskctl through a short demo on
# images in a temporary directory. Everything stops and is removed at the end.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null

b="$top/build"
dir=$(mktemp -d)
bus_pid=
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [ -n "$bus_pid" ] && kill "$bus_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# A private bus: nothing on this machine's session or system bus is touched.
cat > "$dir/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$dir/bus</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$dir/bus.conf" --nofork --nopidfile &
bus_pid=$!
export VDISKCTL_ADDRESS="unix:path=$dir/bus"
for _ in $(seq 100); do [ -S "$dir/bus" ] && break; sleep 0.05; done

"$b/daemon/vdiskd" --session --address="$VDISKCTL_ADDRESS" &
daemon_pid=$!
for _ in $(seq 100); do
    "$b/tools/vdiskctl" list >/dev/null 2>&1 && break
    sleep 0.05
done

ctl="$b/tools/vdiskctl"
echo "vdiskd demo: a private bus at $dir/bus, images in $dir"
cd "$dir"
head -c 3M /dev/urandom > data
truncate -s 64M disk.raw
dd if=data of=disk.raw bs=1M seek=8 conv=notrunc status=none
say "$ctl" convert -p -f raw -O vdi disk.raw disk.vdi
say "$ctl" info disk.vdi
say "$ctl" create -f vdi -b disk.vdi -F vdi snap1.vdi
say "$ctl" create -f vdi -b snap1.vdi -F vdi snap2.vdi
say "$ctl" info --backing-chain snap2.vdi
say "$ctl" convert -O raw snap2.vdi flat.raw
say cmp -n 67108864 flat.raw disk.raw
say "$ctl" merge snap2.vdi 2 0
say "$ctl" resize disk.vdi 128M
say "$ctl" compact disk.vdi
say "$ctl" check disk.vdi
say "$ctl" list
echo
echo "demo finished: every step succeeded"
