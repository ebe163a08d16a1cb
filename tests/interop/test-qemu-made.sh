#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# What qemu-img writes, vdisk-img reads byte for byte: VDI images (dynamic and
# static; sizes not a multiple of the 1 MiB block; data in the last sector;
# zeros written explicitly with `write -z` and `write -P 0`; holes; a block
# map entry 0xFFFFFFFE "zero" over a stale data block, as VirtualBox leaves
# after a discard) and raw images convert to raw exactly as qemu-img converts
# them.  qemu only makes 1 MiB VDI blocks, so no other block size is tested
# here (raw has no blocks).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

# qemu_fill IMG FMT SIZE: the qemu-io writes every image below gets
qemu_fill() {
        local img=$1 fmt=$2 size=$3
        local cmds=(
                -c "write -P 0x11 0 512"                       # first sector
                -c "write -P 0x22 $((M - 512)) 1024"           # straddles block 0/1
                -c "write -z $((2 * M)) $M"                    # explicit zero block
                -c "write -P 0 $((3 * M)) $M"                  # zeros written as data
                -c "write -P 0x33 $((4 * M + 4096)) 8192"
                -c "write -P 0x44 $((size - 512)) 512"         # last sector
        )
        if (( size > 12 * M )); then
                cmds+=(-c "write -P 0x55 $((9 * M - 4096)) $((2 * M + 8192))"  # spans 4 blocks
                       -c "write -z $((9 * M)) 4096"                          # zero inside data
                       -c "write -P 0x66 $((12 * M - 512)) 512")
        fi
        "$QEMU_IO" -f "$fmt" "${cmds[@]}" "$img" >/dev/null
}

# check_convert IMG FMT DESC: vdisk-img convert -O raw (with -f and probed)
# equals qemu-img convert -O raw
check_convert() {
        local img=$1 fmt=$2 desc=$3
        "$QEMU_IMG" convert -f "$fmt" -O raw "$img" ref.raw
        vimg convert -f "$fmt" -O raw "$img" out.raw
        if [[ $RC -eq 0 ]]; then
                ok "$desc: vdisk-img convert -f $fmt -O raw"
                expect_cmp "$desc: raw output identical to qemu-img's" out.raw ref.raw
        else
                notok "$desc: vdisk-img convert -f $fmt -O raw" "exit $RC: $(last_err)"
        fi
        rm -f out.raw
        if [[ $fmt != raw ]]; then
                vimg convert -O raw "$img" out.raw
                if [[ $RC -eq 0 ]]; then
                        ok "$desc: vdisk-img convert -O raw (format probed)"
                        expect_cmp "$desc: probed raw output identical to qemu-img's" out.raw ref.raw
                else
                        notok "$desc: vdisk-img convert -O raw (format probed)" "exit $RC: $(last_err)"
                fi
                rm -f out.raw
        fi
        rm -f ref.raw
}

for size in $((16 * M)) $((20 * M + 512)) $((13 * M + 3 * 4096)) 33554431 $((5 * M)); do
        for kind in vdi vdi-static raw; do
                fmt=${kind%-static}
                opts=()
                [[ $kind == vdi-static ]] && opts=(-o static=on)
                img=q-$kind-$size.$fmt
                "$QEMU_IMG" create -q -f "$fmt" "${opts[@]}" "$img" "$size"
                # qemu rounds the size up to a sector: write the last real sector
                vsize=$(qinfo "$img" "$fmt" virtual-size)
                qemu_fill "$img" "$fmt" "$vsize"
                check_convert "$img" "$fmt" "qemu $kind $size"
                rm -f "$img"
        done
done

# An empty dynamic VDI and a fully written one
"$QEMU_IMG" create -q -f vdi empty.vdi 7M
check_convert empty.vdi vdi "qemu empty vdi"
head -c $((3 * M + 1536)) /dev/urandom >full.raw
"$QEMU_IMG" convert -f raw -O vdi full.raw full.vdi
check_convert full.vdi vdi "qemu fully allocated vdi"
vimg convert -f vdi -O raw full.vdi full-out.raw
expect_cmp "qemu fully allocated vdi: vdisk output equals the original raw" full-out.raw full.raw

# A block whose map entry says ZERO (0xFFFFFFFE) although its old data is
# still in the file: both tools must read zeros there.
"$QEMU_IMG" create -q -f vdi z.vdi 8M
"$QEMU_IO" -f vdi -c "write -P 0x77 0 $((3 * M))" -c "write -P 0x78 $((5 * M)) $M" z.vdi >/dev/null
py vdi-set-entry z.vdi 1 zero
"$PY" - z.vdi <<'EOF'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(0x184); n = struct.unpack('<I', f.read(4))[0]
    f.seek(0x184); f.write(struct.pack('<I', n - 1))
EOF
qcheck z.vdi
expect_rc "qemu reads the ZERO block as zeros" 0 "$QEMU_IO" -f vdi -c "read -P 0 $M $M" z.vdi
check_convert z.vdi vdi "vdi with a ZERO map entry over stale data"

# An odd-length raw file (qemu rounds the virtual size up to 512)
head -c 1000001 /dev/urandom >odd.raw
check_convert odd.raw raw "raw of 1000001 bytes"

finish
