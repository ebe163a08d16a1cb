#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# VHD (qemu: vpc) against qemu-img, both ways:
#  - what qemu-img creates (dynamic and fixed, force_size on and off, sizes
#    that are and are not CHS-shaped) and writes with qemu-io converts to raw
#    with vdisk-img byte for byte as qemu-img converts it, with -f vpc, -f VHD
#    and probed (a fixed VHD too: trap T2, found by its footer at the end);
#  - what vdisk-img creates and converts (dynamic, fixed, force_size on/off)
#    passes `qemu-img check` (dynamic) and `qemu-img compare` with its source,
#    and the size qemu reads is the size vdisk-img reports (trap T1);
#  - differencing VHDs (qemu has none: trap T3): vdisk-img creates one over a
#    qemu-made base, finds the base by its UUID, reads through it, writes
#    into the diff (partial blocks: sector bitmaps) and commits it into the
#    base, which qemu then reads as the flattened chain;
#  - trap T1: a VirtualBox-style footer reads at current_size (qemu: by CHS);
#  - map --output=json as qemu-img's; resize past the BAT and compact, read
#    back by qemu;
#  - vdisk-img writes into a qemu-made dynamic VHD (convert -n: in place
#    into allocated blocks, new blocks appended, the footer moved) and qemu
#    reads the result; qemu-io writes into a vdisk-made VHD and vdisk reads it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

qemu_fill() {
        local img=$1 size=$2
        local cmds=(
                -c "write -P 0x11 0 512"
                -c "write -P 0x22 $((2 * M - 512)) 1024"        # straddles block 0/1 (2 MiB blocks)
                -c "write -z $((4 * M)) $M"
                -c "write -P 0 $((5 * M)) 4096"
                -c "write -P 0x33 $((6 * M + 4096)) 8192"
                -c "write -P 0x44 $((size - 512)) 512"
        )
        "$QEMU_IO" -f vpc "${cmds[@]}" "$img" >/dev/null
}

vsize() { "$VDISK_IMG" info --output=json "$1" | py json-get - virtual-size; }

# 1. qemu-img makes, vdisk-img reads.
for sub in dynamic fixed; do
        for fs in off on; do
                for size in $((16 * M)) $((20 * M + 512)) 33554431 $((9 * M + 3 * 4096)); do
                        img=q-$sub-$fs-$size.vhd
                        "$QEMU_IMG" create -q -f vpc -o subformat=$sub,force_size=$fs "$img" "$size"
                        qsize=$(qinfo "$img" vpc virtual-size)
                        qemu_fill "$img" "$qsize"
                        "$QEMU_IMG" convert -f vpc -O raw "$img" ref.raw
                        for f in vpc VHD probed; do
                                if [[ $f == probed ]]; then vimg convert -O raw "$img" out.raw
                                else vimg convert -f $f -O raw "$img" out.raw; fi
                                if [[ $RC -eq 0 ]]; then
                                        expect_cmp "qemu $sub force_size=$fs size $size: vdisk-img ($f) reads what qemu-img reads" out.raw ref.raw
                                else
                                        notok "qemu $sub force_size=$fs size $size: vdisk-img convert ($f)" "exit $RC: $(last_err)"
                                fi
                                rm -f out.raw
                        done
                        expect_rc "qemu $sub force_size=$fs size $size: vdisk-img check clean" 0 \
                                "$VDISK_IMG" check -f vpc "$img"
                        vimg info --output=json "$img"
                        expect_eq "qemu $sub force_size=$fs size $size: same virtual size" \
                                "$(py json-get "$T/out" virtual-size 2>/dev/null || true)" "$qsize"
                        rm -f ref.raw "$img"
                done
        done
done

# 2. vdisk-img makes, qemu-img reads and checks.
mkpattern src.raw $((40 * M + 4096))
for sub in dynamic fixed; do
        for fs in off on; do
                img=v-$sub-$fs.vhd
                vimg convert -f raw -O vpc -o subformat=$sub,force_size=$fs src.raw "$img"
                if [[ $RC -ne 0 ]]; then notok "vdisk-img convert -O vpc $sub force_size=$fs" "$(last_err)"; continue; fi
                ok "vdisk-img convert -O vpc $sub force_size=$fs"
                qcompare src.raw raw "$img" vpc
                expect_rc "vdisk-img check $img clean" 0 "$VDISK_IMG" check "$img"
                expect_eq "$sub force_size=$fs: qemu reads the size vdisk-img reports" \
                        "$(qinfo "$img" vpc virtual-size)" "$(vsize "$img")"
                if [[ $fs == on ]]; then
                        expect_eq "$sub force_size=on: exact size" "$(vsize "$img")" $((40 * M + 4096))
                fi
                # and back: vpc -> vpc through vdisk-img, then to raw
                vimg convert -f vpc -O vpc "$img" copy.vhd
                expect_rc "$sub force_size=$fs: vdisk-img vpc -> vpc" 0 true
                qcompare "$img" vpc copy.vhd vpc
                rm -f copy.vhd
        done
done

# 3. vdisk-img create, then qemu-io writes, vdisk-img reads; and the
#    reverse: vdisk-img writes into a qemu-made dynamic VHD (convert -n).
vimg create -f vpc small.vhd $((24 * M))
expect_rc "vdisk-img create -f vpc" 0 true
qemu_fill small.vhd "$(qinfo small.vhd vpc virtual-size)"
"$QEMU_IMG" convert -f vpc -O raw small.vhd ref.raw
vimg convert -f vpc -O raw small.vhd out.raw
expect_cmp "vdisk-made, qemu-written dynamic VHD reads back" out.raw ref.raw
rm -f out.raw ref.raw

"$QEMU_IMG" create -q -f vpc qw.vhd $((40 * M + 4096))
qemu_fill qw.vhd "$(qinfo qw.vhd vpc virtual-size)"
vimg convert -n -f raw -O vpc src.raw qw.vhd
expect_rc "vdisk-img convert -n into a qemu-made dynamic VHD" 0 true
[[ $RC -eq 0 ]] || notok "convert -n" "$(last_err)"
"$QEMU_IMG" convert -f vpc -O raw qw.vhd ref.raw
head -c $((40 * M + 4096)) ref.raw > ref-head.raw
expect_cmp "qemu reads what vdisk-img wrote into its VHD" ref-head.raw src.raw
rm -f ref.raw ref-head.raw

# 4. Differencing.
"$QEMU_IMG" create -q -f vpc -o force_size=on base.vhd $((12 * M))
qemu_fill base.vhd $((12 * M))
"$QEMU_IMG" convert -f vpc -O raw base.vhd base.raw
vimg create -f vpc -b base.vhd -F vpc diff.vhd
expect_rc "vdisk-img create -f vpc -b base.vhd (differencing)" 0 true
[[ $RC -eq 0 ]] || notok "create diff" "$(last_err)"
vimg info --output=json diff.vhd
expect_eq "the diff has the base's size" "$(py json-get "$T/out" virtual-size 2>/dev/null || true)" $((12 * M))
vimg convert -O raw diff.vhd out.raw
expect_cmp "an empty diff reads its parent (found by UUID)" out.raw base.raw
mkpattern pat.raw $((12 * M)) 3
# Only every other 64 KiB: the rest must still show the parent.
"$PY" - pat.raw base.raw mixed.raw <<'PYEOF'
import sys
p = open(sys.argv[1], 'rb').read(); b = open(sys.argv[2], 'rb').read()
out = bytearray(b)
for off in range(0, len(p), 128 * 1024):
    out[off:off + 65536] = p[off:off + 65536]
open(sys.argv[3], 'wb').write(out)
PYEOF
vimg convert -n -f raw -O vpc mixed.raw diff.vhd
expect_rc "vdisk-img convert -n into the diff" 0 true
[[ $RC -eq 0 ]] || notok "convert -n into diff" "$(last_err)"
vimg convert -O raw diff.vhd out.raw
expect_cmp "the diff reads what was written over its parent" out.raw mixed.raw
"$QEMU_IMG" convert -f vpc -O raw base.vhd base-after.raw
expect_cmp "writing into the diff left the base alone" base-after.raw base.raw
expect_rc "vdisk-img check diff.vhd clean" 0 "$VDISK_IMG" check diff.vhd
vimg commit diff.vhd
expect_rc "vdisk-img commit diff.vhd" 0 true
[[ $RC -eq 0 ]] || notok "commit" "$(last_err)"
"$QEMU_IMG" convert -f vpc -O raw base.vhd base-after.raw
expect_cmp "qemu reads the committed base as the flattened chain" base-after.raw mixed.raw
rm -f out.raw base-after.raw

# 5. map --output=json as qemu-img reports it (unallocated blocks of a base
#    are present zeros in qemu's vpc driver).
"$QEMU_IMG" create -q -f vpc -o force_size=on m.vhd $((8 * M))
"$QEMU_IO" -f vpc -c "write -P 1 0 4k" -c "write -P 2 $((5 * M)) 4k" m.vhd >/dev/null
"$QEMU_IMG" map --output=json -f vpc m.vhd > qmap.json
vimg map --output=json -f vpc m.vhd
expect_eq "map --output=json equals qemu-img's" "$(cat "$T/out")" "$(cat qmap.json)"
rm -f m.vhd qmap.json

# 6. Trap T1: a VirtualBox-style footer (creator 'vbox', the requested size
#    in current_size, the spec's CHS rounded down) reads at current_size;
#    qemu reads it short, by its geometry.
"$QEMU_IMG" create -q -f vpc -o force_size=on vb.vhd $((100 * M))
"$QEMU_IO" -f vpc -c "write -P 0x42 $((100 * M - 4096)) 4096" vb.vhd >/dev/null
"$PY" - vb.vhd <<'PYEOF'
import struct, sys
path = sys.argv[1]
with open(path, 'r+b') as f:
    data = bytearray(f.read())
    def patch(off):
        ft = data[off:off + 512]
        ft[28:32] = b'vbox'
        ft[56:60] = struct.pack('>HBB', 1003, 12, 17)   # 1003*12*17*512 = 104,761,344
        ft[64:68] = b'\0\0\0\0'
        ft[64:68] = struct.pack('>I', ~sum(ft) & 0xffffffff)
        data[off:off + 512] = ft
    patch(0)
    patch(len(data) - 512)
    f.seek(0)
    f.write(data)
PYEOF
vimg info --output=json vb.vhd
expect_eq "T1: creator vbox reads at current_size" "$(py json-get "$T/out" virtual-size 2>/dev/null || true)" $((100 * M))
expect_eq "T1: qemu reads it by CHS (short)" "$(qinfo vb.vhd vpc virtual-size)" 104761344
vimg convert -O raw vb.vhd vb.raw
expect_eq "T1: the last sector is there" "$(tail -c 4096 vb.raw | od -An -tx1 | tr -d ' \n' | head -c 8)" 42424242
rm -f vb.vhd vb.raw

# 7. Resize and compact, read back by qemu.
"$QEMU_IMG" create -q -f vpc -o force_size=on grow.vhd $((4 * M))
"$QEMU_IO" -f vpc -c "write -P 0x5a 0 1M" -c "write -P 0x5b $((3 * M + 512)) 4096" grow.vhd >/dev/null
"$QEMU_IMG" convert -f vpc -O raw grow.vhd grow.raw
vimg resize grow.vhd $((64 * M))
expect_rc "vdisk-img resize of a qemu-made VHD past its BAT" 0 true
[[ $RC -eq 0 ]] || notok "resize" "$(last_err)"
truncate -s $((64 * M)) grow.raw
qcompare grow.raw raw grow.vhd vpc
expect_eq "qemu reads the grown size" "$(qinfo grow.vhd vpc virtual-size)" $((64 * M))
"$QEMU_IO" -f vpc -c "write -P 0x77 $((50 * M)) 4096" grow.vhd >/dev/null
expect_rc "vdisk-img check after qemu wrote past the moved BAT" 0 "$VDISK_IMG" check grow.vhd
rm -f grow.vhd grow.raw

vimg convert -f raw -O vpc -o force_size=on src.raw c.vhd
"$QEMU_IO" -f vpc -c "write -z 0 $((8 * M))" -c "write -P 0 $((12 * M)) $((4 * M))" c.vhd >/dev/null
"$QEMU_IMG" convert -f vpc -O raw c.vhd c.raw
before=$(stat -c %s c.vhd)
vimg compact c.vhd
expect_rc "vdisk-img compact" 0 true
[[ $RC -eq 0 ]] || notok "compact" "$(last_err)"
expect_true "compact made the file smaller" test "$(stat -c %s c.vhd)" -lt "$before"
qcompare c.raw raw c.vhd vpc
expect_rc "vdisk-img check after compact" 0 "$VDISK_IMG" check c.vhd
rm -f c.vhd c.raw

finish
