#!/usr/bin/env bash
# Builds a small seed corpus for fuzz-image in DIR with qemu-img (VDI images
# with data, zero blocks and holes; dynamic and fixed VHDs; single-file VMDKs)
# and a few raw files; QCOW2 v2/v3 images (zero clusters, zlib and zstd
# compressed clusters, extended L2 subclusters, a 512-byte-cluster image).
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
# QCOW2: v2, v3 with zero clusters, compressed (zlib, zstd), extended L2, 512 B clusters
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' -c 'write -z 512k 64k' v2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4096 v3.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x5a 0 8k' -c 'write -z 64k 8k' -c 'write -P 3 900k 4k' v3.qcow2 >/dev/null
qemu-img convert -q -c -f qcow2 -O qcow2 -o cluster_size=4096 v3.qcow2 zlib.qcow2
qemu-img convert -q -c -f qcow2 -O qcow2 -o cluster_size=4096,compression_type=zstd v3.qcow2 zstd.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k xl2.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x5a 1k 2k' -c 'write -z 8k 1k' xl2.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 256k
qemu-io -f qcow2 -c 'write -P 0x5a 0 4k' c512.qcow2 >/dev/null
head -c 4096 /dev/zero > zeros.raw
printf 'not an image' > text.raw
