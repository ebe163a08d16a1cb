#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `vdisk-img map --output=json` equals `qemu-img map --output=json` (parsed:
# start, length, data, zero, depth, present and offset) on VDI and raw images
# qemu-img made (and qcow2 ones whose files have holes under data, which qemu
# asks the file system about), with holes, data, zeros written as data, a ZERO (0xFFFFFFFE)
# block map entry, sizes not a multiple of the block size; also with
# --start-offset / --max-length.  `vdisk-img compare` exit codes (0 same,
# 1 different, 2 cannot open) equal qemu-img compare's on the same pairs.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

# map_same DESC FMT IMG [MAP OPTIONS...]
map_same() {
        local desc=$1 fmt=$2 img=$3; shift 3
        "$QEMU_IMG" map -f "$fmt" --output=json "$@" "$img" >mq.json
        vimg map -f "$fmt" --output=json "$@" "$img"
        if [[ $RC -ne 0 ]]; then notok "$desc: vdisk-img map" "exit $RC: $(last_err)"; return; fi
        cp "$T/out" mv.json
        run py map-cmp mq.json mv.json
        if [[ $RC -eq 0 ]]; then ok "$desc: map --output=json equals qemu-img's"
        else notok "$desc: map --output=json equals qemu-img's (qemu first)" "$(cat "$T/out")" "$(last_err)"; fi
}

# --- map
"$QEMU_IMG" create -q -f vdi a.vdi $((24 * M + 512))
"$QEMU_IO" -f vdi \
        -c "write -P 0x11 0 4k" \
        -c "write -P 0x12 $((M - 4096)) 8k" \
        -c "write -P 0 $((3 * M)) $M" \
        -c "write -z $((4 * M)) $M" \
        -c "write -P 0x13 $((7 * M)) $((3 * M))" \
        -c "write -P 0x14 $((15 * M + 512)) 512" \
        -c "write -P 0x15 $((20 * M)) $M" \
        -c "write -P 0x16 $((24 * M)) 512" a.vdi >/dev/null
map_same "qemu vdi with holes, data and zeros" vdi a.vdi
map_same "same, probed" vdi a.vdi
map_same "same, --start-offset 5M --max-length 11M" vdi a.vdi --start-offset $((5 * M)) --max-length $((11 * M))
map_same "same, --start-offset in the middle of a block" vdi a.vdi --start-offset $((7 * M + 4096))

cp a.vdi z.vdi
py vdi-set-entry z.vdi 9 free    # not consistent with the counter, but map does not care
py vdi-set-entry z.vdi 12 zero
map_same "vdi with FREE and ZERO entries" vdi z.vdi
cp a.vdi z3.vdi
py vdi-set-entry z3.vdi 3 zero
map_same "vdi with a ZERO entry between data blocks" vdi z3.vdi

"$QEMU_IMG" create -q -f vdi -o static=on s.vdi 6M
"$QEMU_IO" -f vdi -c "write -P 0x21 $M $M" s.vdi >/dev/null
map_same "qemu static vdi" vdi s.vdi

"$QEMU_IMG" create -q -f vdi e.vdi 3M
map_same "empty vdi" vdi e.vdi

# qcow2: qemu looks into the file under data clusters when the image looks
# metadata-preallocated (far fewer clusters allocated in the file than it
# references), and reports the host offset of a zero cluster that kept its
# space and of unallocated subclusters of an allocated cluster. The same
# rule decides what measure counts.
"$QEMU_IMG" create -q -f qcow2 -o preallocation=metadata pm.qcow2 8M
"$QEMU_IO" -f qcow2 -c "write -P 0x31 $M 64k" pm.qcow2 >/dev/null
# written back before either tool looks: the test reads the file's allocated
# size, and ext4 counts an extent-tree block in it only from then
sync pm.qcow2
map_same "qcow2 with metadata preallocation, written in part" qcow2 pm.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=65536 ph.qcow2 8M
# a fresh cluster written in part: qemu leaves the rest a hole of the file
"$QEMU_IO" -f qcow2 -c "write -P 0x32 $((M + 4096)) 8k" -c "write -P 0x33 $((3 * M)) 4k" \
        -c "write -P 0x34 $((5 * M)) 64k" -c "write -z $((5 * M)) 64k" ph.qcow2 >/dev/null
sync ph.qcow2
map_same "qcow2 clusters written in part, a zero cluster that kept its space" qcow2 ph.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=65536,extended_l2=on px.qcow2 8M
"$QEMU_IO" -f qcow2 -c "write -P 0x35 $((M + 2048)) 2k" -c "write -z $((2 * M)) 8k" \
        -c "write -P 0x36 $((2 * M + 16384)) 2k" px.qcow2 >/dev/null
sync px.qcow2
map_same "qcow2 with extended L2, subclusters unallocated in allocated clusters" qcow2 px.qcow2
for f in pm ph px; do
        "$QEMU_IMG" measure -O qcow2 $f.qcow2 >mq.txt
        vimg measure -O qcow2 $f.qcow2
        if [[ $RC -eq 0 ]] && cmp -s mq.txt "$T/out"; then ok "measure of $f.qcow2 equals qemu-img's"
        else notok "measure of $f.qcow2 equals qemu-img's" "$(cat mq.txt)" "$(cat "$T/out")" "$(last_err)"; fi
done

mkpattern p.raw 40M 3
map_same "patterned raw with holes and written zeros" raw p.raw
"$QEMU_IMG" convert -f raw -O vdi p.raw p.vdi
map_same "qemu vdi converted from the patterned raw" vdi p.vdi

# --- compare: exit codes equal qemu-img's
cmp_pair() { # DESC A FA B FB [OPTION...]: exit code, and stdout when the images opened
        local desc=$1 a=$2 fa=$3 b=$4 fb=$5 qout
        shift 5
        local qrc=0
        qout=$("$QEMU_IMG" compare "$@" -f "$fa" -F "$fb" "$a" "$b" 2>/dev/null) || qrc=$?
        expect_rc "compare $* $desc: exit $qrc like qemu-img" "$qrc" "$VDISK_IMG" compare "$@" -f "$fa" -F "$fb" "$a" "$b"
        if [[ $qrc -lt 2 ]]; then
                expect_eq "compare $* $desc: qemu-img's words" "$(cat "$T/out")" "$qout"
        fi
}
"$QEMU_IMG" convert -f vdi -O raw a.vdi a.raw
cp a.raw a1.raw
printf '\x01' | dd of=a1.raw bs=1 seek=$((7 * M + 12345)) conv=notrunc status=none
cp a.raw a2.raw
printf '\x01' | dd of=a2.raw bs=1 seek=$((24 * M + 511)) conv=notrunc status=none   # last byte
cp a.raw a3.raw
printf '\x01' | dd of=a3.raw bs=1 seek=$((2 * M + 7)) conv=notrunc status=none      # in a hole
cp a.raw big0.raw; truncate -s $((30 * M)) big0.raw                                   # zero tail
cp big0.raw big1.raw
printf '\x01' | dd of=big1.raw bs=1 seek=$((29 * M)) conv=notrunc status=none         # data in tail
"$QEMU_IMG" convert -f raw -O vdi a1.raw a1.vdi

cmp_pair "vdi vs its raw (same)" a.vdi vdi a.raw raw
cmp_pair "raw vs the vdi (same)" a.raw raw a.vdi vdi
cmp_pair "vdi vs itself" a.vdi vdi a.vdi vdi
cmp_pair "one byte differs in data" a.vdi vdi a1.raw raw
cmp_pair "last byte differs" a.vdi vdi a2.raw raw
cmp_pair "one byte differs in a hole" a.vdi vdi a3.raw raw
cmp_pair "vdi vs vdi, one byte differs" a.vdi vdi a1.vdi vdi
cmp_pair "longer raw with a zero tail" a.vdi vdi big0.raw raw
cmp_pair "longer raw with data in the tail" a.vdi vdi big1.raw raw
cmp_pair "longer raw with data in the tail, reversed" big1.raw raw a.vdi vdi
cmp_pair "vdi vs a copy with a data block freed" a.vdi vdi z.vdi vdi
cp a.vdi z2.vdi
py vdi-set-entry z2.vdi 3 zero    # the block written with zeros
py vdi-set-entry z2.vdi 4 free    # the block written with write -z
cmp_pair "vdi with zero-filled blocks vs ZERO/FREE entries (same content)" a.vdi vdi z2.vdi vdi
cmp_pair "missing first file" nope.vdi vdi a.vdi vdi
cmp_pair "missing second file" a.vdi vdi nope.raw raw
cmp_pair "raw opened as vdi" a.raw vdi a.vdi vdi
# -s: sizes and block status must match too; the verdict lines are qemu-img's
cmp_pair "longer raw with a zero tail" a.vdi vdi big0.raw raw -s
cmp_pair "vdi vs its raw (allocation differs)" a.vdi vdi a.raw raw -s
cmp_pair "raw vs itself" a.raw raw a.raw raw -s
cmp_pair "raw vs a raw differing in data" a.raw raw a1.raw raw -s
cmp_pair "one byte differs in data" a.vdi vdi a1.raw raw -q

# explicit exit-code values, independent of qemu
expect_rc "compare identical: 0" 0 "$VDISK_IMG" compare a.vdi a.raw
expect_rc "compare different: 1" 1 "$VDISK_IMG" compare a.vdi a1.raw
expect_rc "compare missing: 2" 2 "$VDISK_IMG" compare a.vdi nope.raw

finish
