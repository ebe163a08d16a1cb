#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 persistent dirty bitmaps, against qemu-img 7.2 and qemu-io:
#   - qemu-made bitmaps (granularities 512 B to 1 MiB, one disabled) in an
#     image vdisk-img writes (commit of a qemu-io-written top): qemu-img
#     check clean, the flags qemu-img info shows, and the content equal to
#     what qemu records for the same commit (64 KiB-aligned writes: qemu's
#     commit copies 64 KiB chunks), read by qcow2-bitmaps.py, a parser of its
#     own; with 4 KiB clusters in the top, exactly the ranges written;
#   - a bitmap left in use by a crashed qemu (qemu-io abort) stays as it is
#     when vdisk-img writes; convert --bitmaps refuses it, and leaves it out
#     with --skip-broken-bitmaps; bitmap --remove drops it, --clear refuses;
#   - vdisk-img bitmap --add [-g] [--disable] / --remove / --clear / --enable
#     / --disable / --merge [-b file]: the same sequence as qemu-img bitmap
#     on a copy gives the same bitmaps; check clean;
#   - convert --bitmaps copies them as qemu-img convert --bitmaps does, and
#     measure's "bitmaps size" is qemu-img's;
#   - refusals: convert --bitmaps to a format without bitmaps, bitmap on a
#     raw image and on a version 2 qcow2.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

# same_bitmaps DESC A B: both files hold the same bitmaps (names, flags, granularity, bits)
same_bitmaps() {
        local desc=$1 a b
        a=$(BM dump "$2")
        b=$(BM dump "$3")
        expect_eq "$desc" "$a" "$b"
}
qcheck2() { expect_rc "qemu-img check $(basename "$1") clean" 0 "$QEMU_IMG" check -f qcow2 "$1"; }

# --- writes into an image with bitmaps (commit), against qemu's own commit
qimg create -f qcow2 base.qcow2 64M
qimg bitmap --add -g 512 base.qcow2 g512
qimg bitmap --add -g 4096 base.qcow2 g4k
qimg bitmap --add base.qcow2 g64k
qimg bitmap --add -g 1M base.qcow2 g1m
qimg bitmap --add base.qcow2 off --disable
cp base.qcow2 fine.qcow2
qimg create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
run "$QEMU_IO" -c "write -P 1 1M 64k" -c "write -P 2 $((10 * M)) 128k" -c "write -P 3 $((40 * M - 65536)) 256k" \
        -c "write -z $((50 * M)) 64k" -c "write -P 4 $((64 * M - 65536)) 64k" top.qcow2
expect_rc "qemu-io writes the top" 0 true
cp base.qcow2 base-q.qcow2
cp top.qcow2 top-q.qcow2
qimg rebase -u -f qcow2 -b base-q.qcow2 -F qcow2 top-q.qcow2
expect_rc "vdisk-img commit into a base with bitmaps" 0 "$VDISK_IMG" commit -f qcow2 top.qcow2
expect_rc "qemu-img commit (the reference)" 0 "$QEMU_IMG" commit -f qcow2 top-q.qcow2
qcheck2 base.qcow2
qcompare base.qcow2 qcow2 base-q.qcow2 qcow2
same_bitmaps "bitmaps record what qemu records" base.qcow2 base-q.qcow2
expect_eq "qemu-img info flags after the write" "$(qflags base.qcow2)" \
        "g512:auto:512 g4k:auto:4096 g64k:auto:65536 g1m:auto:1048576 off::65536"
expect_true "the enabled bitmaps are not empty" grep -q "g512 gran=512 flags=2 ranges=1048576-" <<<"$(BM dump base.qcow2)"
expect_rc "vdisk-img check clean" 0 "$VDISK_IMG" check -f qcow2 base.qcow2

# a second write session over the written bitmaps (their clusters replaced and freed)
qimg create -f qcow2 -b base.qcow2 -F qcow2 top2.qcow2
cp base-q.qcow2 base2-q.qcow2
qimg create -f qcow2 -b base2-q.qcow2 -F qcow2 top2-q.qcow2
for f in top2.qcow2 top2-q.qcow2; do
        run "$QEMU_IO" -c "write -P 5 $((20 * M)) 64k" -c "write -P 6 $((63 * M)) 192k" "$f"
done
expect_rc "vdisk-img commit again" 0 "$VDISK_IMG" commit -f qcow2 top2.qcow2
qimg commit -f qcow2 top2-q.qcow2
qcheck2 base.qcow2
same_bitmaps "bitmaps after a second session" base.qcow2 base2-q.qcow2

# exact ranges: a top with 4 KiB clusters, writes of 4 KiB multiples
qimg create -f qcow2 -o cluster_size=4096 -b fine.qcow2 -F qcow2 ftop.qcow2
run "$QEMU_IO" -c "write -P 2 $((10 * M + 8192)) 12k" -c "write -P 4 $((64 * M - 4096)) 4k" ftop.qcow2
expect_rc "vdisk-img commit of 4 KiB clusters" 0 "$VDISK_IMG" commit -f qcow2 ftop.qcow2
a=$((10 * M + 8192)); b=$((10 * M + 20480)); c=$((64 * M - 4096)); e=$((64 * M))
expect_eq "exactly the written ranges" "$(BM dump fine.qcow2)" "g512 gran=512 flags=2 ranges=$a-$b,$c-$e
g4k gran=4096 flags=2 ranges=$a-$b,$c-$e
g64k gran=65536 flags=2 ranges=$((10 * M))-$((10 * M + 65536)),$((64 * M - 65536))-$e
g1m gran=1048576 flags=2 ranges=$((10 * M))-$((11 * M)),$((63 * M))-$e
off gran=65536 flags=0 ranges=-"
qcheck2 fine.qcow2

# --- a bitmap left in use by a crash
qimg create -f qcow2 crash.qcow2 16M
qimg bitmap --add crash.qcow2 live
qimg bitmap --add crash.qcow2 other
# (in a shell of its own, which reports the abort to /dev/null)
run bash -c '"$0" "$@" 2>/dev/null; true' "$QEMU_IO" -c "write -P 7 0 64k" -c abort crash.qcow2
expect_true "qemu-io abort leaves the bitmaps in use" grep -q "live gran=65536 flags=3" <<<"$(BM dump crash.qcow2)"
qimg check -r leaks -f qcow2 crash.qcow2
before=$(BM dump crash.qcow2)
qimg create -f qcow2 -b crash.qcow2 -F qcow2 ctop.qcow2
run "$QEMU_IO" -c "write -P 8 1M 64k" ctop.qcow2
expect_rc "vdisk-img commit into an image with in-use bitmaps" 0 "$VDISK_IMG" commit -f qcow2 ctop.qcow2
expect_eq "in-use bitmaps are left as they were" "$(BM dump crash.qcow2)" "$before"
qcheck2 crash.qcow2
expect_fail "convert --bitmaps refuses an in-use bitmap" "$VDISK_IMG" convert -f qcow2 -O qcow2 --bitmaps crash.qcow2 cc.qcow2
expect_true "... naming it as qemu-img does" grep -q "Cannot copy inconsistent bitmap 'live'" "$T/err"
expect_true "... and creating no output" test ! -e cc.qcow2
expect_rc "convert --bitmaps --skip-broken-bitmaps" 0 \
        "$VDISK_IMG" convert -f qcow2 -O qcow2 --bitmaps --skip-broken-bitmaps crash.qcow2 cc.qcow2
expect_eq "... leaves the in-use ones out" "$(qflags cc.qcow2)" "-"
qcheck2 cc.qcow2
expect_fail "bitmap --clear refuses an in-use bitmap" "$VDISK_IMG" bitmap --clear crash.qcow2 live
expect_rc "bitmap --remove drops an in-use bitmap" 0 "$VDISK_IMG" bitmap --remove crash.qcow2 live
expect_eq "... the other stays" "$(qflags crash.qcow2)" "other:in-use,auto:65536"
qcheck2 crash.qcow2

# --- the bitmap verb, against qemu-img bitmap doing the same
qimg create -f qcow2 v.qcow2 32M
run "$QEMU_IO" -c "write -P 1 0 64k" -c "write -P 2 5M 1M" v.qcow2
qimg create -f qcow2 src.qcow2 32M
qimg bitmap --add -g 8192 src.qcow2 theirs
run "$QEMU_IO" -c "write -P 3 $((7 * M + 8192)) 8k" src.qcow2
cp v.qcow2 v-q.qcow2
verb() {
        local tool=$1 f=$2
        "$tool" bitmap --add "$f" a &&
        "$tool" bitmap --add -g 16384 "$f" b &&
        "$tool" bitmap --add "$f" c --disable &&
        "$QEMU_IO" -c "write -P 4 $((2 * M)) 100k" -c "write -P 5 $((30 * M)) 512" "$f" >/dev/null &&
        "$tool" bitmap --merge a "$f" c &&
        "$tool" bitmap --disable "$f" a &&
        "$tool" bitmap --merge theirs -b src.qcow2 -F qcow2 "$f" b &&
        "$tool" bitmap --add -g 65536 "$f" d --disable --enable &&
        "$tool" bitmap --clear "$f" b &&
        "$tool" bitmap --enable "$f" c &&
        "$tool" bitmap --remove "$f" a
}
run verb "$VDISK_IMG" v.qcow2
expect_eq "vdisk-img bitmap sequence" "$RC" 0
run verb "$QEMU_IMG" v-q.qcow2
expect_eq "qemu-img bitmap sequence (the reference)" "$RC" 0
same_bitmaps "bitmap verbs give qemu-img's bitmaps" v.qcow2 v-q.qcow2
expect_eq "qemu-img info flags" "$(qflags v.qcow2)" "b:auto:16384 c:auto:65536 d:auto:65536"
qcheck2 v.qcow2
qcompare v.qcow2 qcow2 v-q.qcow2 qcow2
expect_fail "adding an existing name fails" "$VDISK_IMG" bitmap --add v.qcow2 b
expect_fail "removing a missing bitmap fails" "$VDISK_IMG" bitmap --remove v.qcow2 nope
expect_fail "granularity 1000 is refused" "$VDISK_IMG" bitmap --add -g 1000 v.qcow2 e
expect_fail "-g without --add is refused" "$VDISK_IMG" bitmap --clear -g 4096 v.qcow2 b
qcheck2 v.qcow2
# a merge from a source with another granularity
BM dump src.qcow2 >/dev/null
expect_true "b merged 'theirs' then was cleared" grep -q "^b gran=16384 flags=2 ranges=-" <<<"$(BM dump v.qcow2)"

# --- convert --bitmaps, against qemu-img convert --bitmaps
qimg bitmap --merge theirs -b src.qcow2 v.qcow2 b
expect_rc "convert --bitmaps" 0 "$VDISK_IMG" convert -f qcow2 -O qcow2 --bitmaps v.qcow2 vc.qcow2
qimg convert -f qcow2 -O qcow2 --bitmaps v.qcow2 vc-q.qcow2
same_bitmaps "convert --bitmaps copies as qemu-img does" vc.qcow2 vc-q.qcow2
qcheck2 vc.qcow2
qcompare v.qcow2 qcow2 vc.qcow2 qcow2
expect_rc "convert without --bitmaps" 0 "$VDISK_IMG" convert -f qcow2 -O qcow2 v.qcow2 vn.qcow2
expect_eq "... copies none" "$(qflags vn.qcow2)" "-"

# --- measure: "bitmaps size" as qemu-img counts it (an in-use bitmap too)
for f in v.qcow2 crash.qcow2; do
        for o in cluster_size=65536 cluster_size=4096 cluster_size=2M; do
                want=$("$QEMU_IMG" measure -f qcow2 -O qcow2 -o "$o" "$f" | grep "bitmaps size")
                got=$("$VDISK_IMG" measure -f qcow2 -O qcow2 -o "$o" "$f" | grep "bitmaps size")
                expect_eq "measure $f -o $o: $want" "$got" "$want"
        done
done

# --- refusals
expect_fail "convert --bitmaps to vdi is refused" "$VDISK_IMG" convert -f qcow2 -O vdi --bitmaps v.qcow2 v.vdi
qimg create -f raw r.raw 1M
expect_fail "bitmap on a raw image is refused" "$VDISK_IMG" bitmap --add -f raw r.raw x
qimg create -f qcow2 -o compat=0.10 v2.qcow2 1M
expect_fail "bitmap on a version 2 qcow2 is refused" "$VDISK_IMG" bitmap --add v2.qcow2 x
qcheck2 v2.qcow2

# --- info lists the bitmaps as qemu-img does (libvirt reads them there):
# flags (auto, in-use, none), names, granularities; human output equal, JSON
# equal once parsed
cp v.qcow2 vi.qcow2
qimg bitmap --add -g 1M vi.qcow2 "123"
qimg bitmap --disable vi.qcow2 "123"
cp crash.qcow2 ci.qcow2
for f in vi.qcow2 ci.qcow2; do
        expect_eq "info of $f lists the bitmaps as qemu-img does" \
                "$("$VDISK_IMG" info "$f" 2>&1)" "$("$QEMU_IMG" info "$f" 2>&1)"
        "$QEMU_IMG" info --output=json "$f" >iq.json
        "$VDISK_IMG" info --output=json "$f" >iv.json
        expect_true "info --output=json of $f equals qemu-img's" "$PY" -c '
import json, sys
sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' iq.json iv.json
done

# --- an invalid bitmap directory (qemu refuses to open such an image): the
# data still reads, check names the cause, and what asks for the bitmaps fails
cp v.qcow2 bad.qcow2
BM patch bad.qcow2 "$(BM dump bad.qcow2 | head -n 1 | cut -d' ' -f1)" gran_bits 40
expect_rc "convert of an image with an invalid bitmap directory" 0 "$VDISK_IMG" convert -f qcow2 -O raw bad.qcow2 bad.raw
qcompare v.qcow2 qcow2 bad.raw raw
run "$VDISK_IMG" check -f qcow2 bad.qcow2
expect_true "check names why the bitmap directory is invalid" \
        grep -q "the bitmap directory is invalid: .*granularity" "$T/out" "$T/err"
expect_fail "convert --bitmaps of an image with an invalid bitmap directory" \
        "$VDISK_IMG" convert -f qcow2 -O qcow2 --bitmaps bad.qcow2 badc.qcow2
expect_true "... names the cause" grep -q "granularity" "$T/err"

finish
