#!/usr/bin/env bash
# Builds a small seed corpus for fuzz-image in DIR with qemu-img (VDI images
# with data, zero blocks and holes; dynamic and fixed VHDs; single-file VMDKs)
# and a few raw files; QCOW2 v2/v3 images (zero clusters, zlib and zstd
# compressed clusters, extended L2 subclusters, a 512-byte-cluster image);
# QCOW v1 and QED images.
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
# QCOW v1 (plain, compressed, a diff) and QED (zero clusters, a diff)
qemu-img create -q -f qcow v1.qcow 1M
qemu-io -f qcow -c 'write -P 0x5a 0 8k' -c 'write -P 3 900k 4k' v1.qcow >/dev/null
qemu-img convert -q -c -f qcow -O qcow v1.qcow v1c.qcow || true   # qemu-img 7.2 exits 1 after writing it
qemu-img create -q -f qcow -b v1.qcow -F qcow v1d.qcow
qemu-io -f qcow -c 'write -P 0x44 1k 2k' v1d.qcow >/dev/null
qemu-img create -q -f qed -o cluster_size=4096,table_size=2 data.qed 1M
qemu-io -f qed -c 'write -P 0x5a 0 8k' -c 'write -z 64k 8k' -c 'write -P 3 900k 4k' data.qed >/dev/null
qemu-img create -q -f qed -o cluster_size=4096,table_size=2 -b data.qed -F qed diff.qed 1M
head -c 4096 /dev/zero > zeros.raw
printf 'not an image' > text.raw
# VMDK seSparse extent (fuzz-image also opens every input as one, through a
# descriptor): 4 MiB, a grain directory with one table, three grains
# (allocated, zeroed, allocated), the layout of docs/formats/vmdk.md.
/usr/bin/python3 - <<'PY' || true
import struct
cap = 8192                        # sectors
h = struct.pack('<6Q', 0xcafebabe, 0x200000001, cap, 8, 64, 0) + bytes(32)
h += struct.pack('<16Q', 1, 1, 2, 2, 4, 4, 8, 1, 16, 64, 80, 8, 88, 8, 96, cap)
b = bytearray(96 * 512 + 2 * 4096)
b[0:len(h)] = h
b[512:512 + 32] = struct.pack('<4Q', 0xcafecafe, 1, 3, 0)
b[8 * 512:8 * 512 + 8] = struct.pack('<Q', 1 << 60)
gt = 16 * 512
b[gt:gt + 24] = struct.pack('<3Q', 3 << 60, 2 << 60, (3 << 60) | (1 << 48))
b[96 * 512:] = b'\x5a' * 4096 + b'\x02' * 4096
open('sesparse.bin', 'wb').write(bytes(b))
PY
# VMDK vmfsSparse (COWD) extent: 64 KiB of 512-byte grains, one table, two grains.
/usr/bin/python3 - <<'PY' || true
import struct
b = bytearray(40 * 512)
b[0:32] = struct.pack('<8I', 0x44574f43, 1, 3, 128, 1, 4, 1, 40)
b[4 * 512:4 * 512 + 4] = struct.pack('<I', 8)
b[8 * 512:8 * 512 + 8] = struct.pack('<2I', 38, 39)
b[38 * 512:] = b'\x5a' * 512 + b'\x03' * 512
open('cowd.bin', 'wb').write(bytes(b))
PY
