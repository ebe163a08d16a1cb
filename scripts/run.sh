#!/usr/bin/env bash
# Installs what is needed, builds, and runs the main job: a short vdisk-img
# demo on images in a temporary directory.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null

img="$top/build/tools/vdisk-img"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "vdisk-img demo in $dir"
head -c 3M /dev/urandom > "$dir/data"
truncate -s 64M "$dir/disk.raw"
dd if="$dir/data" of="$dir/disk.raw" bs=1M seek=8 conv=notrunc status=none
say "$img" convert -p -f raw -O vdi "$dir/disk.raw" "$dir/disk.vdi"
say "$img" info "$dir/disk.vdi"
say "$img" create -f vdi -b "$dir/disk.vdi" -F vdi "$dir/snap1.vdi"
say "$img" create -f vdi -b "$dir/snap1.vdi" -F vdi "$dir/snap2.vdi"
say "$img" info --backing-chain "$dir/snap2.vdi"
say "$img" map --output=json "$dir/snap2.vdi"
say "$img" compare -f vdi -F raw "$dir/snap2.vdi" "$dir/disk.raw"
say "$img" commit "$dir/snap2.vdi"
say "$img" resize "$dir/disk.vdi" 128M
say "$img" check "$dir/disk.vdi"
say "$img" compact "$dir/disk.vdi"
say "$img" convert -O raw "$dir/snap2.vdi" "$dir/flat.raw"
say cmp -n 67108864 "$dir/flat.raw" "$dir/disk.raw"
echo
echo "demo finished: every step succeeded"
