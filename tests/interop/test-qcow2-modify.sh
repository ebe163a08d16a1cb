#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 images changed in place by vdisk: discard (through vdisk-discard, the
# API: vdisk-img has no discard verb), `vdisk-img compact`, `vdisk-img resize`
# (grow, and shrink with --shrink), on images qemu-img makes and images
# vdisk-img makes: compat 0.10 and 1.1, clusters of 512 B, 64 KiB and 2 MiB,
# extended L2, and diffs over a backing file (v2 and v3). After every step
# `qemu-img check` finds no leak and no corruption, `qemu-img compare`
# equals the expected content (a raw file changed the same way), and
# `qemu-img info` gives the new virtual size. Compact makes the file smaller;
# shrinking an image with internal snapshots is refused.
#   tests/interop/test-qcow2-modify.sh build/tools/vdisk-img build/tests/interop/vdisk-discard
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"
need_discard

M=$((1 << 20))
K=1024

# zero_raw FILE OFF LEN: the expected effect of a discard or zero write
zero_raw() { dd if=/dev/zero of="$1" bs=512 seek=$(($2 / 512)) count=$(($3 / 512)) conv=notrunc status=none; }

# verify IMG REF SIZE DESC: qemu-img check clean, the content equals REF, the
# virtual size is SIZE (- : not asked)
verify() {
        local img=$1 ref=$2 size=$3 desc=$4
        expect_rc "$desc: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 "$img"
        expect_rc "$desc: qemu-img compare equal" 0 "$QEMU_IMG" compare -f qcow2 -F raw "$img" "$ref"
        [[ $size == - ]] || expect_eq "$desc: virtual size" "$(qinfo "$img" qcow2 virtual-size 2>&1)" "$size"
}

fsize() { stat -c %s "$1"; }

# base_case NAME MAKER OPTS: an 8 MiB image made by MAKER (qemu or vdisk)
# with OPTS, data written by qemu-io (zeros written as data too), then
# discard, compact, grow, write, discard, shrink.
base_case() {
        local name=$1 maker=$2 opts=$3 img=$1.qcow2 ref=$1.raw before
        rm -f "$img" "$ref"
        truncate -s 8M empty.raw
        if [[ $maker == qemu ]]; then
                "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$img" 8M
        else
                run "$VDISK_IMG" create -f qcow2 -o "$opts" "$img" 8M
                [[ $RC -eq 0 ]] || { notok "$name: vdisk-img create" "$(last_err)"; return; }
        fi
        "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 1M" -c "write -P 0x22 $((2 * M + 512)) 4k" \
                -c "write -P 0 $((3 * M)) 1M" -c "write -P 0x33 $((4 * M)) 2M" \
                -c "write -P 0x44 $((8 * M - 512)) 512" "$img" >/dev/null
        "$QEMU_IMG" convert -f qcow2 -O raw "$img" "$ref"

        # discard: whole clusters go, partial ones read zeros
        expect_rc "$name: discard 2M+1M, 4M+64k+512" 0 "$DISCARD" "$img" qcow2 \
                $((2 * M)):$M $((4 * M + 64 * K)):$((64 * K + 512))
        zero_raw "$ref" $((2 * M)) $M
        zero_raw "$ref" $((4 * M + 64 * K)) $((64 * K + 512))
        verify "$img" "$ref" - "$name: discarded"
        [[ $opts == *2M* ]] || expect_no_data "$img" $((2 * M)) $M "$name: discarded clusters hold no data"

        # compact: the zeros written as data go, the file shrinks
        before=$(fsize "$img")
        expect_rc "$name: compact" 0 "$VDISK_IMG" compact "$img"
        verify "$img" "$ref" - "$name: compacted"
        expect_true "$name: compact made the file smaller ($before -> $(fsize "$img"))" \
                test "$(fsize "$img")" -lt "$before"

        # grow (512-byte clusters: the L1 table moves), write in the new part
        expect_rc "$name: resize 20M" 0 "$VDISK_IMG" resize "$img" 20M
        truncate -s 20M "$ref"
        verify "$img" "$ref" $((20 * M)) "$name: grown"
        "$QEMU_IO" -f qcow2 -c "write -P 0x55 $((18 * M)) 1M" "$img" >/dev/null
        "$QEMU_IO" -f raw -c "write -P 0x55 $((18 * M)) 1M" "$ref" >/dev/null
        verify "$img" "$ref" - "$name: written after the grow"

        # the tail still holds data: refused, unchanged
        expect_fail "$name: shrink over data refused" "$VDISK_IMG" resize --shrink "$img" 10M
        verify "$img" "$ref" - "$name: refused shrink"
        expect_rc "$name: discard the new data" 0 "$DISCARD" "$img" qcow2 $((18 * M)):$M
        zero_raw "$ref" $((18 * M)) $M
        expect_rc "$name: shrink to 8M" 0 "$VDISK_IMG" resize --shrink "$img" 8M
        truncate -s 8M "$ref"
        verify "$img" "$ref" $((8 * M)) "$name: shrunk"
        expect_rc "$name: discard the last sector" 0 "$DISCARD" "$img" qcow2 \
                $((8 * M - 512)):512
        expect_rc "$name: shrink to 7M+512" 0 "$VDISK_IMG" resize --shrink "$img" $((7 * M + 512))
        truncate -s $((7 * M + 512)) "$ref"
        verify "$img" "$ref" $((7 * M + 512)) "$name: shrunk to an odd size"
        # grown again: the cut part reads zeros
        expect_rc "$name: grow back to 8M" 0 "$VDISK_IMG" resize "$img" 8M
        truncate -s 8M "$ref"
        verify "$img" "$ref" $((8 * M)) "$name: grown again"
        expect_rc "$name: vdisk-img check" 0 "$VDISK_IMG" check -f qcow2 "$img"
}

# diff_case NAME COMPAT: a diff over a qemu-made base with data everywhere:
# discards read zeros (never the parent), compact drops clusters equal to
# the parent's, shrink and grow again read zeros past the cut.
diff_case() {
        local name=$1 compat=$2 img=$1-top.qcow2 ref=$1-top.raw base=$1-base.qcow2
        "$QEMU_IMG" create -q -f qcow2 -o compat="$compat" "$base" 8M
        "$QEMU_IO" -f qcow2 -c "write -P 0x66 0 8M" "$base" >/dev/null
        "$QEMU_IMG" create -q -f qcow2 -o compat="$compat" -b "$base" -F qcow2 "$img"
        "$QEMU_IO" -f qcow2 -c "write -P 0x77 0 1M" -c "write -P 0x66 $((2 * M)) 1M" \
                -c "write -P 0x78 $((5 * M)) 1M" "$img" >/dev/null
        "$QEMU_IMG" convert -f qcow2 -O raw "$img" "$ref"
        cp "$base" base-before.qcow2

        expect_rc "$name: discard 512k+1M, 5M+64k" 0 "$DISCARD" "$img" qcow2 $((512 * K)):$M $((5 * M)):$((64 * K))
        zero_raw "$ref" $((512 * K)) $M
        zero_raw "$ref" $((5 * M)) $((64 * K))
        verify "$img" "$ref" - "$name: discarded"
        [[ $compat == 0.10 ]] || expect_no_data "$img" $((M)) $((512 * K)) "$name: discarded clusters hold no data"
        before=$(fsize "$img")
        expect_rc "$name: compact (1M equal to the parent)" 0 "$VDISK_IMG" compact "$img"
        verify "$img" "$ref" - "$name: compacted"
        expect_true "$name: compact made the file smaller ($before -> $(fsize "$img"))" \
                test "$(fsize "$img")" -lt "$before"
        expect_rc "$name: discard the tail" 0 "$DISCARD" "$img" qcow2 $((6 * M)):$((2 * M))
        zero_raw "$ref" $((6 * M)) $((2 * M))
        expect_rc "$name: shrink to 6M" 0 "$VDISK_IMG" resize --shrink "$img" 6M
        truncate -s 6M "$ref"
        verify "$img" "$ref" $((6 * M)) "$name: shrunk"
        expect_rc "$name: grow to 12M (the parent's data past 6M stays hidden)" 0 "$VDISK_IMG" resize "$img" 12M
        truncate -s 12M "$ref"
        verify "$img" "$ref" $((12 * M)) "$name: grown"
        expect_cmp "$name: the base is unchanged" "$base" base-before.qcow2
}

for c in "v2-64k qemu compat=0.10" \
         "v3-64k qemu compat=1.1" \
         "v3-512 qemu compat=1.1,cluster_size=512,refcount_bits=1" \
         "v3-2M qemu compat=1.1,cluster_size=2M" \
         "extl2 qemu compat=1.1,extended_l2=on" \
         "vd-v2-512 vdisk compat=0.10,cluster_size=512" \
         "vd-extl2 vdisk compat=1.1,extended_l2=on,cluster_size=32k" \
         "vd-lazy vdisk compat=1.1,lazy_refcounts=on,refcount_bits=64"; do
        # shellcheck disable=SC2086
        base_case $c
done
diff_case diff-v3 1.1
diff_case diff-v2 0.10

# internal snapshots: no shrink (qemu refuses it too), the image unchanged
"$QEMU_IMG" create -q -f qcow2 snap.qcow2 8M
"$QEMU_IO" -f qcow2 -c "write -P 0x12 0 1M" snap.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s1 snap.qcow2
cp snap.qcow2 snap-before.qcow2
expect_fail "shrink with internal snapshots refused" "$VDISK_IMG" resize --shrink snap.qcow2 4M
expect_cmp "refused shrink left the image unchanged" snap.qcow2 snap-before.qcow2

finish
