#!/usr/bin/env bash
# Builds a small seed corpus for fuzz-image in DIR with qemu-img (VDI images
# with data, zero blocks and holes; dynamic and fixed VHDs; single-file VMDKs)
# and a few raw files.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
command -v qemu-img >/dev/null || exit 0
qemu-img create -q -f vdi empty.vdi 4M
qemu-img create -q -f vdi data.vdi 4M
qemu-io -f vdi -c 'write -P 0x5a 0 64k' -c 'write -z 1M 1M' -c 'write -P 1 3M 4k' data.vdi >/dev/null
qemu-img create -q -f vdi -o static=on static.vdi 2M
qemu-img create -q -f vpc -o force_size=on data.vhd 4M
qemu-io -f vpc -c 'write -P 0x5a 0 64k' -c 'write -P 1 3M 4k' data.vhd >/dev/null
qemu-img create -q -f vpc -o subformat=fixed,force_size=on fixed.vhd 1M
# VMDK: monolithicSparse (v1 and zeroed-grain v2) and streamOptimized, one file each
qemu-img create -q -f vmdk sparse.vmdk 1M
qemu-io -f vmdk -c 'write -P 0x5a 0 64k' -c 'write -P 2 512k 4k' sparse.vmdk >/dev/null
qemu-img create -q -f vmdk -o zeroed_grain=on zg.vmdk 1M
qemu-io -f vmdk -c 'write -P 0x33 64k 64k' -c 'write -z 0 64k' zg.vmdk >/dev/null
qemu-img convert -f vmdk -O vmdk -o subformat=streamOptimized sparse.vmdk stream.vmdk
head -c 4096 /dev/zero > zeros.raw
printf 'not an image' > text.raw
