#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 extended L2: discards of whole subclusters that are not whole
# clusters (through vdisk-discard, the API), on images qemu-img and vdisk-img
# make (64 KiB clusters: 2 KiB subclusters; 512 KiB: 16 KiB), standalone and
# over a backing file. After each: qemu-img check clean (no leak), the
# content equal to a raw file zeroed the same way (never the parent's data),
# qemu-img map shows no data in the discarded subclusters, and a cluster all
# of whose subclusters were discarded (in two calls) is given back (qemu-img
# check's allocated count drops by one).
#   tests/interop/test-qcow2-subcluster-discard.sh build/tools/vdisk-img build/tests/interop/vdisk-discard
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"
need_discard

K=1024
M=$((1 << 20))

zero_raw() { dd if=/dev/zero of="$1" bs=512 seek=$(($2 / 512)) count=$(($3 / 512)) conv=notrunc status=none; }
# allocated IMG: qemu-img check's count of allocated clusters
allocated() { "$QEMU_IMG" check -f qcow2 --output=json "$1" | py json-get - allocated-clusters; }
# one_case NAME MAKER CLUSTER BACKING(0/1)
one_case() {
        local name=$1 maker=$2 cs=$3 backing=$4 img=$1.qcow2 ref=$1.raw sc before after
        local -a bopt=()
        sc=$((cs / 32))
        rm -f "$img" "$ref" "$name-base.qcow2"
        if [[ $backing == 1 ]]; then
                "$QEMU_IMG" create -q -f qcow2 "$name-base.qcow2" 4M
                "$QEMU_IO" -f qcow2 -c "write -P 0x55 0 4M" "$name-base.qcow2" >/dev/null
                bopt=(-b "$name-base.qcow2" -F qcow2)
        fi
        if [[ $maker == qemu ]]; then
                "$QEMU_IMG" create -q -f qcow2 -o "extended_l2=on,cluster_size=$cs" "${bopt[@]}" "$img" 4M
        else
                run "$VDISK_IMG" create -f qcow2 -o "extended_l2=on,cluster_size=$cs" "${bopt[@]}" "$img" 4M
                [[ $RC -eq 0 ]] || { notok "$name: vdisk-img create" "$(last_err)"; return; }
        fi
        # data in the first three clusters
        run "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 $((3 * cs))" "$img"
        expect_true "$name: qemu-io writes" test "$RC" -eq 0
        "$QEMU_IMG" convert -f qcow2 -O raw "$img" "$ref"
        before=$(allocated "$img")
        # subclusters 1-2 of cluster 0; 16-31 then 0-15 of cluster 1 (two
        # calls: the cluster goes); the last subcluster of cluster 2 and a
        # piece of the one before (read as zeros, not discarded)
        expect_rc "$name: discard subclusters" 0 "$DISCARD" "$img" qcow2 \
                "$sc:$((2 * sc))" "$((cs + 16 * sc)):$((16 * sc))" "$cs:$((16 * sc))" \
                "$((3 * cs - sc - 512)):$((sc + 512))"
        zero_raw "$ref" "$sc" $((2 * sc))
        zero_raw "$ref" "$cs" "$cs"
        zero_raw "$ref" $((3 * cs - sc - 512)) $((sc + 512))
        expect_rc "$name: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 "$img"
        expect_rc "$name: reads as the raw file zeroed there" 0 "$QEMU_IMG" compare -f qcow2 -F raw "$img" "$ref"
        expect_no_data "$img" "$sc" $((2 * sc)) "$name: the discarded subclusters hold no data"
        expect_no_data "$img" $((3 * cs - sc)) "$sc" "$name: ... nor the last one of cluster 2"
        after=$(allocated "$img")
        expect_eq "$name: the cluster whose subclusters all went is given back" "$after" $((before - 1))
}

one_case q64 qemu 65536 0
one_case v64 vdisk 65536 0
one_case q64b qemu 65536 1
one_case v512b vdisk 524288 1

finish
