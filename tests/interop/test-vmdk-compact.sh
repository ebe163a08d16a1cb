#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `vdisk-img compact` on VMDK, checked by qemu-img:
#   - qemu-made monolithicSparse and twoGbMaxExtentSparse images with grains
#     of zeros written as data, and a vdisk-made one whose grain tables lie
#     among its grains (gt_on_demand): after compact they pass `qemu-img
#     check`, `qemu-img compare` finds them identical to the copy taken
#     before, and the files are smaller (each extent of the split image);
#   - diffs (qemu-made, with and without zeroed_grain, and vdisk-made): a
#     grain equal to the parent's is dropped, zeros over the parent's data
#     become a zeroed-grain entry where the extent has them and stay data
#     where it has not (the parent's data must not show through); the
#     chain reads as before, through qemu-img;
#   - a compacted image takes writes again (qemu-io), and a second compact
#     finds nothing left to do; a redundant grain table entry set alone (a
#     crash inside an allocation) is made to agree and its room cut;
#   - streamOptimized and flat images are refused with a message, unchanged.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
fsize() { stat -c %s "$1"; }

# compacted NAME FILE... : compact NAME; qemu-img check and compare with the
# copy taken before; every FILE (default NAME) smaller than before
compacted() {
        local name=$1; shift
        local files=("$@") before=() i
        [[ ${#files[@]} -gt 0 ]] || files=("$name")
        "$QEMU_IMG" convert -O raw "$name" "pre-$name.raw"
        for f in "${files[@]}"; do before+=("$(fsize "$f")"); done
        expect_rc "compact $name" 0 "$VDISK_IMG" compact "$name"
        qcheck "$name" vmdk
        qcompare "pre-$name.raw" raw "$name" vmdk
        expect_rc "vdisk-img check $name clean" 0 "$VDISK_IMG" check "$name"
        for i in "${!files[@]}"; do
                expect_true "${files[$i]} shrank (${before[$i]} -> $(fsize "${files[$i]}"))" \
                        test "$(fsize "${files[$i]}")" -lt "${before[$i]}"
        done
}

# --- qemu-made monolithicSparse: zeros written over data, data at the end
"$QEMU_IMG" create -q -f vmdk s.vmdk $((64 * M))
"$QEMU_IO" -f vmdk -c "write -P 0x11 0 $((8 * M))" -c "write -P 0 $M $((2 * M))" \
        -c "write -P 0x22 $((40 * M)) $((4 * M))" -c "write -P 0 $((41 * M)) $M" \
        -c "write -P 0x33 $((63 * M)) $M" s.vmdk >/dev/null
compacted s.vmdk
# what remains is 10 MiB of data and the metadata
expect_true "s.vmdk holds little more than its data" test "$(fsize s.vmdk)" -lt $((11 * M))
# it takes writes again, and a second compact has nothing to move
"$QEMU_IO" -f vmdk -c "write -P 0x44 $((20 * M)) $M" s.vmdk >/dev/null
qcheck s.vmdk vmdk
sz=$(fsize s.vmdk)
"$QEMU_IMG" convert -O raw s.vmdk s2.raw
expect_rc "compact s.vmdk again" 0 "$VDISK_IMG" compact s.vmdk
qcompare s2.raw raw s.vmdk vmdk
expect_eq "a second compact changes nothing" "$(fsize s.vmdk)" "$sz"

# --- what a crash inside a grain's allocation leaves: a redundant grain
# table entry set alone, its grain's room past the last grain; compact
# makes the tables agree and cuts that room
"$QEMU_IMG" create -q -f vmdk r.vmdk $((64 * M))
"$QEMU_IO" -f vmdk -c "write -P 0x11 0 $((8 * M))" -c "write -P 0 $M $((2 * M))" r.vmdk >/dev/null
"$PY" - r.vmdk <<'PYEOF'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    d = bytearray(f.read())
    rgd, gd = struct.unpack_from('<QQ', d, 48)
    rgt = struct.unpack_from('<I', d, rgd * 512)[0]
    assert struct.unpack_from('<I', d, struct.unpack_from('<I', d, gd * 512)[0] * 512 + 300 * 4)[0] == 0
    struct.pack_into('<I', d, rgt * 512 + 300 * 4, len(d) // 512)
    d += b'\x77' * 65536
    f.seek(0)
    f.write(d)
PYEOF
run "$VDISK_IMG" check r.vmdk
expect_true "r.vmdk: check finds the one-sided entry" grep -q "in one grain table only" "$T/out" "$T/err"
compacted r.vmdk
run "$VDISK_IMG" check r.vmdk
expect_true "r.vmdk: no leak left" test "$RC" -eq 0

# --- qemu-made twoGbMaxExtentSparse with zeroed grains: each extent compacted
"$QEMU_IMG" create -q -f vmdk -o subformat=twoGbMaxExtentSparse,zeroed_grain=on t.vmdk $((5 << 30))
"$QEMU_IO" -f vmdk -c "write -P 0x11 0 $((8 * M))" -c "write -P 0 $M $((2 * M))" \
        -c "write -P 0x22 $((3 << 30)) $((4 * M))" -c "write -P 0 $(((3 << 30) + M)) $M" \
        -c "write -P 0x33 $(((4 << 30) + 600 * M)) $M" t.vmdk >/dev/null
compacted t.vmdk t-s001.vmdk t-s002.vmdk

# --- vdisk-made, grain tables among the grains (gt_on_demand): zeros
# written by vdisk-img itself (convert into the existing image)
mkpattern p.raw $((48 * M))
vimg convert -O vmdk -o gt_on_demand=on p.raw g.vmdk
expect_eq "vdisk-img convert -o gt_on_demand=on" "$RC" 0
"$PY" - p.raw p0.raw <<'PYEOF'
import sys
data = bytearray(open(sys.argv[1], 'rb').read())
M = 1 << 20
for off in (0, 5 * M, 6 * M, 20 * M):       # zeros where the pattern has data
    data[off:off + M] = bytes(M)
open(sys.argv[2], 'wb').write(data)
PYEOF
expect_rc "convert -n writes the zeros into g.vmdk" 0 "$VDISK_IMG" convert -n -O vmdk p0.raw g.vmdk
qcompare p0.raw raw g.vmdk vmdk
compacted g.vmdk

# --- diffs over a qemu-made base
"$QEMU_IMG" create -q -f vmdk base.vmdk $((64 * M))
"$QEMU_IO" -f vmdk -c "write -P 0x11 0 $((16 * M))" base.vmdk >/dev/null
for zg in on off; do
        d=d-$zg.vmdk
        "$QEMU_IMG" create -q -f vmdk -o zeroed_grain=$zg -b base.vmdk -F vmdk "$d"
        # 2 MiB equal to the parent's, 2 MiB of zeros over its data, new data
        "$QEMU_IO" -f vmdk -c "write -P 0x11 0 $((2 * M))" -c "write -P 0 $((4 * M)) $((2 * M))" \
                -c "write -P 0x44 $((8 * M)) $M" -c "write -P 0 $((20 * M)) $M" \
                -c "write -P 0x55 $((30 * M)) $M" "$d" >/dev/null
        compacted "$d"
        # the zeros over the parent's data still read as zeros
        "$QEMU_IO" -f vmdk -c "read -P 0 $((4 * M)) $((2 * M))" "$d" >"$T/out" 2>&1 || true
        expect_true "$d: zeros over the parent's data still read as zeros" \
                grep -q "read $((2 * M))/$((2 * M)) bytes" "$T/out"
done
# with zeroed grains the zeros take no room; without, they stay data
expect_true "zeroed grains make the smaller diff" test "$(fsize d-on.vmdk)" -lt "$(fsize d-off.vmdk)"

# a vdisk-made diff
expect_rc "vdisk-img create a diff" 0 "$VDISK_IMG" create -f vmdk -b base.vmdk -F vmdk vd.vmdk
"$QEMU_IO" -f vmdk -c "write -P 0x11 $M $((3 * M))" -c "write -P 0x66 $((12 * M)) $((2 * M))" \
        -c "write -P 0x77 $((40 * M)) $M" vd.vmdk >/dev/null
compacted vd.vmdk

# --- refused: streamOptimized (read-only) and flat (nothing to compact)
"$QEMU_IMG" convert -f raw -O vmdk -o subformat=streamOptimized p.raw so.vmdk
cp so.vmdk so-before.vmdk
expect_fail "compact of a streamOptimized image is refused" "$VDISK_IMG" compact so.vmdk
expect_cmp "the refused streamOptimized image is unchanged" so-before.vmdk so.vmdk
"$QEMU_IMG" create -q -f vmdk -o subformat=monolithicFlat fl.vmdk $((4 * M))
expect_fail "compact of a flat image is refused" "$VDISK_IMG" compact fl.vmdk

finish
