#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 resize and snapshot apply of images with persistent bitmaps, against
# qemu-img 7.2 (what it does is the reference; docs/formats/qcow2.md):
#   - `vdisk-img resize` (grow, and --shrink after the tail was zeroed) of a
#     vdisk-made image with 512-byte clusters (the bitmap tables grow and
#     shrink) holding an enabled and a disabled bitmap with bits near the
#     end: the same bitmaps (names, flags, granularity, bits, read by
#     qcow2-bitmaps.py) as `qemu-img resize` leaves on a copy; qemu-img
#     check clean, qemu-img info the new size with both bitmaps; qemu-io
#     writes into the grown range afterwards are recorded the same way;
#   - qemu-img's own resize of the vdisk-resized image gives what it gives
#     on its own copy (the tables vdisk wrote are ones qemu reads);
#   - a bitmap left in use is refused by both;
#   - snapshot -a of an image with a bitmap (enabled or disabled) is refused
#     by both and changes nothing; without bitmaps it applies.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

K=1024
M=$((1 << 20))
same_bitmaps() { expect_eq "$1" "$(BM dump "$2")" "$(BM dump "$3")"; }
qcheck2() { expect_rc "qemu-img check $(basename "$1") clean" 0 "$QEMU_IMG" check -f qcow2 "$1"; }
qio() { run "$QEMU_IO" -f qcow2 "$@"; expect_true "qemu-io $*" test "$RC" -eq 0; }

# --- grow and shrink, vdisk-img against qemu-img on a copy
vimg create -f qcow2 -o cluster_size=512 v.qcow2 10M
vimg bitmap --add -g 512 v.qcow2 on
vimg bitmap --add -g 4096 --disable v.qcow2 off
qio -c "write -P 1 0 64k" -c "write -P 2 $((10 * M - 128 * K)) 128k" -c "write -P 3 $((5 * M)) 4k" v.qcow2
qimg bitmap --merge on v.qcow2 off
expect_true "the bitmaps hold bits near the end" grep -q "^on gran=512 flags=2 ranges=.*-$((10 * M))$" \
        <<<"$(BM dump v.qcow2)"
cp v.qcow2 q.qcow2

expect_rc "vdisk-img resize 10M -> 20M with bitmaps" 0 "$VDISK_IMG" resize -f qcow2 v.qcow2 20M
qimg resize -f qcow2 q.qcow2 20M
same_bitmaps "grown: the bitmaps qemu-img resize leaves" v.qcow2 q.qcow2
qcheck2 v.qcow2
expect_eq "grown: qemu-img info size" "$(qinfo v.qcow2 qcow2 virtual-size)" $((20 * M))
expect_eq "grown: qemu-img info bitmaps" "$(qflags v.qcow2)" "on:auto:512 off::4096"
qcompare v.qcow2 qcow2 q.qcow2 qcow2
qio -c "write -P 4 $((15 * M)) 8k" v.qcow2
qio -c "write -P 4 $((15 * M)) 8k" q.qcow2
same_bitmaps "grown: a write in the new range recorded as qemu records it" v.qcow2 q.qcow2

# the tail zeroed first (the library shrinks only what reads zeros)
qio -c "write -z $((9 * M)) $((11 * M))" v.qcow2
qio -c "write -z $((9 * M)) $((11 * M))" q.qcow2
expect_rc "vdisk-img resize --shrink 20M -> 9M+4k" 0 "$VDISK_IMG" resize -f qcow2 --shrink v.qcow2 $((9 * M + 4 * K))
qimg resize -f qcow2 --shrink q.qcow2 $((9 * M + 4 * K))
same_bitmaps "shrunk: the bits past the end dropped as qemu-img does" v.qcow2 q.qcow2
qcheck2 v.qcow2
expect_eq "shrunk: qemu-img info size" "$(qinfo v.qcow2 qcow2 virtual-size)" $((9 * M + 4 * K))
expect_eq "shrunk: qemu-img info bitmaps" "$(qflags v.qcow2)" "on:auto:512 off::4096"
qcompare v.qcow2 qcow2 q.qcow2 qcow2

# qemu-img resizes what vdisk resized, as it resizes its own
qimg resize -f qcow2 v.qcow2 12M
qimg resize -f qcow2 q.qcow2 12M
same_bitmaps "qemu-img resize of the vdisk-resized image" v.qcow2 q.qcow2
qcheck2 v.qcow2
expect_rc "vdisk-img check of it" 0 "$VDISK_IMG" check -f qcow2 v.qcow2

# 64 KiB clusters (one table entry either way), grown by vdisk-img twice
vimg create -f qcow2 v64.qcow2 3M
vimg bitmap --add v64.qcow2 a
qio -c "write -P 5 $((3 * M - 64 * K)) 64k" v64.qcow2
cp v64.qcow2 q64.qcow2
expect_rc "vdisk-img resize +5M" 0 "$VDISK_IMG" resize -f qcow2 v64.qcow2 +5M
expect_rc "vdisk-img resize +1G" 0 "$VDISK_IMG" resize -f qcow2 v64.qcow2 +1G
qimg resize -f qcow2 q64.qcow2 +5M
qimg resize -f qcow2 q64.qcow2 +1G
same_bitmaps "64 KiB clusters, grown twice" v64.qcow2 q64.qcow2
qcheck2 v64.qcow2

# --- a bitmap in use: both refuse, the image unchanged
cp v64.qcow2 iu.qcow2
BM patch iu.qcow2 a flags 3
cp iu.qcow2 iu-before.qcow2
expect_fail "vdisk-img resize refuses an in-use bitmap" "$VDISK_IMG" resize -f qcow2 iu.qcow2 +1M
expect_cmp "... and changes nothing" iu.qcow2 iu-before.qcow2
expect_fail "qemu-img resize refuses it too" "$QEMU_IMG" resize -f qcow2 iu-before.qcow2 +1M

# --- snapshot -a: refused with any bitmap (qemu: "Device has active dirty bitmaps")
vimg create -f qcow2 s.qcow2 4M
qio -c "write -P 6 0 64k" s.qcow2
vimg snapshot -c s1 s.qcow2
qio -c "write -P 7 0 64k" s.qcow2
vimg bitmap --add --disable s.qcow2 d
cp s.qcow2 sq.qcow2
cp s.qcow2 s-before.qcow2
expect_fail "vdisk-img snapshot -a refuses an image with a disabled bitmap" "$VDISK_IMG" snapshot -a s1 s.qcow2
expect_cmp "... and changes nothing" s.qcow2 s-before.qcow2
expect_fail "qemu-img snapshot -a refuses it too" "$QEMU_IMG" snapshot -a s1 sq.qcow2
vimg bitmap --remove s.qcow2 d
vimg bitmap --add s.qcow2 e
expect_fail "... and one with an enabled bitmap" "$VDISK_IMG" snapshot -a s1 s.qcow2
vimg bitmap --remove s.qcow2 e
expect_rc "without bitmaps snapshot -a applies" 0 "$VDISK_IMG" snapshot -a s1 s.qcow2
qio -c "read -P 6 0 64k" s.qcow2
qcheck2 s.qcow2

finish
