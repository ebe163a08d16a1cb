#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Real ENOSPC for VMDK, VHD and QCOW2 (test-enospc.sh does VDI): the images
# live on a small tmpfs (a private mount namespace), a filler file leaves
# 256 KiB free, and each writing command needs more than that:
#   convert -n   2 MiB of new data into an existing image
#   commit       a diff whose 2 MiB of new data must be allocated in the base
#   resize       a grow whose new tables (VHD BAT, QCOW2 L1 with 512-byte
#                clusters, VMDK grain directories) pass the 64 KiB left free
#   compact      a zero block stored as data and punched into a hole: the last
#                block moves into it (VMDK and QCOW2; VHD moves blocks too)
#   snapshot -c  (QCOW2) an internal snapshot copies a 512 KiB L1 table
#   amend        (QCOW2) refcount_bits=64 on 8 Ki clusters of 512 bytes: new
#                refcount structures of 64 KiB (32 KiB left free)
# Each must fail with a message naming the file and "No space left on
# device"; the chain (flattened to raw outside the tmpfs) reads exactly as
# before (convert -n: each sector as before or as the source); vdisk-img
# check and qemu-img check (VMDK, QCOW2; qemu-img has no vpc check) report at
# most leaks (exit 0 or 3). Then the filler goes, the same command succeeds,
# and the content is what was intended. Needs root; skips otherwise.
# shellcheck source-path=SCRIPTDIR source=lib.sh
VDISK_TMPFS_TEST=1 source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
K=1024
mkdir fs prep

# checks_clean DESC FMT IMG...: at most leaks, ours and qemu-img's
checks_clean() {
        local desc=$1 fmt=$2 f; shift 2
        for f in "$@"; do
                run "$VDISK_IMG" check -f "$fmt" "$f"
                if [[ $RC -eq 0 || $RC -eq 3 ]]; then ok "$desc: vdisk-img check $f (exit $RC)"
                else notok "$desc: vdisk-img check $f" "exit $RC: $(head -c 300 "$T/out") $(last_err)"; fi
                [[ $fmt == vpc ]] && continue
                run "$QEMU_IMG" check -f "$fmt" "$f"
                if [[ $RC -eq 0 || $RC -eq 3 ]]; then ok "$desc: qemu-img check -f $fmt $f (exit $RC)"
                else notok "$desc: qemu-img check -f $fmt $f" "exit $RC: $(head -c 300 "$T/out") $(last_err)"; fi
        done
}
same() { expect_cmp "$1" "$2" "$3"; }
old_or_new() {
        local desc=$1 msg
        if msg=$("$PY" - "$2" "$3" "$4" <<'EOF'
import sys
got, old, new = (open(p, 'rb').read() for p in sys.argv[1:4])
if not (len(got) == len(old) == len(new)):
    sys.exit("sizes differ: %d %d %d" % (len(got), len(old), len(new)))
for o in range(0, len(got), 512):
    g = got[o:o + 512]
    if g != old[o:o + 512] and g != new[o:o + 512]:
        sys.exit("sector %d (offset %d) reads neither its old nor its new content%s" %
                 (o // 512, o, " (zeros)" if not g.strip(b"\0") else ""))
EOF
        ); then ok "$desc"; else notok "$desc" "$msg"; fi
}
# opts FMT: create options (VHD: exact sizes)
opts() { [[ $1 == vpc ]] && echo "-o force_size=on" || true; }

for F in vmdk vpc qcow2; do
        echo "# ---------------- $F"
        # ------------------------------------------------------------ convert -n
        "$PY" "$HERE/helper.py" mkraw prep/t.raw $((8 * M)) "fill:$((6 * M)):$((64 * K)):0x61"
        "$PY" "$HERE/helper.py" mkraw prep/s.raw $((8 * M)) "fill:0:$((2 * M)):0x71" "fill:$((6 * M)):4096:0x72"
        # shellcheck disable=SC2046
        vimg convert -f raw -O "$F" $(opts "$F") prep/t.raw "prep/t.$F"
        newfs $((8 * M))
        cp --sparse=always "prep/t.$F" fs/
        fill
        enospc_fails "$F: convert -n s.raw t.$F" "t.$F" "$VDISK_IMG" convert -n -f raw -O "$F" prep/s.raw "fs/t.$F"
        flat "fs/t.$F" convert-after.raw
        old_or_new "$F: convert -n failed: each sector reads its old content or the source's" \
                convert-after.raw prep/t.raw prep/s.raw
        checks_clean "$F: convert -n failed" "$F" "fs/t.$F"
        rm fs/filler
        expect_rc "$F: convert -n with space again" 0 "$VDISK_IMG" convert -n -f raw -O "$F" prep/s.raw "fs/t.$F"
        flat "fs/t.$F" convert-done.raw
        same "$F: convert -n done: reads as the source" convert-done.raw prep/s.raw
        checks_clean "$F: convert -n done" "$F" "fs/t.$F"

        # ------------------------------------------------------------ commit
        "$PY" "$HERE/helper.py" mkraw prep/cbase.raw $((8 * M)) "fill:0:$M:0x11" "fill:$((5 * M)):$((64 * K)):0x12"
        cp prep/cbase.raw prep/cnew.raw
        "$PY" "$HERE/helper.py" edit prep/cnew.raw "fill:$((2 * M)):$((2 * M)):0x21" "fill:4096:4096:0x22" \
                "fill:$((5 * M + 512)):512:0x23"
        # shellcheck disable=SC2046
        vimg convert -f raw -O "$F" $(opts "$F") prep/cbase.raw "prep/cbase.$F"
        # shellcheck disable=SC2046
        vimg convert -f raw -O "$F" $(opts "$F") -B "cbase.$F" -F "$F" prep/cnew.raw "prep/cdiff.$F"
        [[ $RC -eq 0 ]] || notok "$F: commit fixture: convert -B" "exit $RC: $(last_err)"
        newfs $((12 * M))
        cp --sparse=always "prep/cbase.$F" "prep/cdiff.$F" fs/
        flat "fs/cdiff.$F" commit-before.raw
        same "$F: commit: the diff reads its content (fixture)" commit-before.raw prep/cnew.raw
        fill
        enospc_fails "$F: commit cdiff.$F" "cbase.$F" "$VDISK_IMG" commit -f "$F" "fs/cdiff.$F"
        flat "fs/cdiff.$F" commit-after.raw
        same "$F: commit failed: the chain reads exactly as before" commit-after.raw commit-before.raw
        # (the base may hold part of the diff's data now: what the diff
        # covers, so the chain's view is the same)
        flat "fs/cbase.$F" commit-base-after.raw
        old_or_new "$F: commit failed: each sector of the base reads its old content or the diff's" \
                commit-base-after.raw prep/cbase.raw prep/cnew.raw
        checks_clean "$F: commit failed" "$F" "fs/cbase.$F" "fs/cdiff.$F"
        rm fs/filler
        expect_rc "$F: commit with space again" 0 "$VDISK_IMG" commit -f "$F" "fs/cdiff.$F"
        flat "fs/cbase.$F" commit-done.raw
        same "$F: commit done: the base reads the diff's content" commit-done.raw prep/cnew.raw
        checks_clean "$F: commit done" "$F" "fs/cbase.$F"

        # ------------------------------------------------------------ resize (grow)
        # (64 KiB free: what the new tables need is written, zeros too)
        case $F in
        vpc) grow=$((120 * 1024 * M)); ropts="-o force_size=on" ;;  # BAT: 60 Ki entries, 240 KiB
        qcow2) grow=$((2048 * M)); ropts="-o cluster_size=512" ;;   # L1: 64 Ki entries, 512 KiB
        vmdk) grow=$((1024 * 1024 * M)); ropts="" ;;                # both directories: 32 Ki entries, 128 KiB
        esac
        "$PY" "$HERE/helper.py" mkraw prep/g.raw $((4 * M)) "fill:0:$M:0x31" "fill:$((3 * M)):$((64 * K)):0x32"
        # shellcheck disable=SC2086
        vimg convert -f raw -O "$F" $ropts prep/g.raw "prep/g.$F"
        newfs $((8 * M))
        cp --sparse=always "prep/g.$F" fs/
        flat "fs/g.$F" resize-before.raw
        fill $((64 * K))
        enospc_fails "$F: resize g.$F $grow" "g.$F" "$VDISK_IMG" resize -f "$F" "fs/g.$F" "$grow"
        flat "fs/g.$F" resize-after.raw
        same "$F: resize failed: the image reads exactly as before (same size too)" resize-after.raw resize-before.raw
        checks_clean "$F: resize failed" "$F" "fs/g.$F"
        rm fs/filler
        expect_rc "$F: resize with space again" 0 "$VDISK_IMG" resize -f "$F" "fs/g.$F" "$grow"
        expect_eq "$F: resize done: qemu-img info virtual-size" "$(qinfo "fs/g.$F" "$F" virtual-size 2>&1)" "$grow"
        # (the first 4 MiB only: the rest of the grown image is address space)
        rm -f resize-done.raw
        vimg dd -f "$F" -O raw bs=1M count=4 if="fs/g.$F" of=resize-done.raw
        expect_true "$F: resize done: the old content is still there" \
                cmp resize-done.raw resize-before.raw
        rm -f resize-done.raw resize-after.raw resize-before.raw
        checks_clean "$F: resize done" "$F" "fs/g.$F"

        # ------------------------------------------------------------ compact
        # blocks 0, 2: data; block 1: zeros written as data, a hole once copied
        case $F in vpc) B=$((2 * M)) ;; *) B=$M ;; esac
        "$PY" "$HERE/helper.py" mkraw prep/k.raw $((4 * B)) "fill:0:$B:0x41" "fill:$((2 * B)):$B:0x42"
        # shellcheck disable=SC2046
        vimg create -q -f "$F" $(opts "$F") "prep/k.$F" $((4 * B))
        "$QEMU_IO" -f "$F" -c "write -P 0x41 0 $B" -c "write -P 0x00 $B $B" \
                -c "write -P 0x42 $((2 * B)) $B" "prep/k.$F" >/dev/null
        newfs $((16 * M))
        cp --sparse=always "prep/k.$F" fs/
        flat "fs/k.$F" compact-before.raw
        same "$F: compact: the image reads its content (fixture)" compact-before.raw prep/k.raw
        fill
        enospc_fails "$F: compact k.$F" "k.$F" "$VDISK_IMG" compact -f "$F" "fs/k.$F"
        flat "fs/k.$F" compact-after.raw
        same "$F: compact failed: the image reads exactly as before" compact-after.raw compact-before.raw
        checks_clean "$F: compact failed" "$F" "fs/k.$F"
        rm fs/filler
        expect_rc "$F: compact with space again" 0 "$VDISK_IMG" compact -f "$F" "fs/k.$F"
        flat "fs/k.$F" compact-done.raw
        same "$F: compact done: the image reads as before" compact-done.raw compact-before.raw
        checks_clean "$F: compact done" "$F" "fs/k.$F"
done

echo "# ---------------- qcow2 snapshot -c, amend"
# ---------------------------------------------------------------- snapshot -c
"$PY" "$HERE/helper.py" mkraw prep/n.raw $((4 * M)) "fill:0:$M:0x51"
vimg convert -f raw -O qcow2 -o cluster_size=512 prep/n.raw prep/n.qcow2
vimg resize -f qcow2 prep/n.qcow2 $((2048 * M))
newfs $((8 * M))
cp --sparse=always prep/n.qcow2 fs/
flat fs/n.qcow2 snap-before.raw
fill
enospc_fails "qcow2: snapshot -c s1" n.qcow2 "$VDISK_IMG" snapshot -c s1 fs/n.qcow2
flat fs/n.qcow2 snap-after.raw
same "qcow2: snapshot -c failed: the image reads exactly as before" snap-after.raw snap-before.raw
run "$VDISK_IMG" snapshot -l fs/n.qcow2
expect_true "qcow2: snapshot -c failed: no snapshot s1 listed" test "$(grep -c ' s1 ' "$T/out" || true)" -eq 0
checks_clean "qcow2: snapshot -c failed" qcow2 fs/n.qcow2
rm fs/filler
expect_rc "qcow2: snapshot -c s1 with space again" 0 "$VDISK_IMG" snapshot -c s1 fs/n.qcow2
run "$QEMU_IMG" snapshot -l fs/n.qcow2
expect_true "qcow2: snapshot -c done: qemu-img lists s1" grep -q ' s1 ' "$T/out"
flat fs/n.qcow2 snap-done.raw
same "qcow2: snapshot -c done: the image reads as before" snap-done.raw snap-before.raw
rm -f snap-*.raw
checks_clean "qcow2: snapshot -c done" qcow2 fs/n.qcow2

# ---------------------------------------------------------------- amend refcount_bits=64
# 4 MiB of data in 512-byte clusters: 8 Ki clusters, whose 64-bit refcounts
# take 64 KiB (built beside the 16-bit ones, then switched); 32 KiB left free
"$PY" "$HERE/helper.py" mkraw prep/a.raw $((6 * M)) "fill:0:$((4 * M)):0x61"
vimg convert -f raw -O qcow2 -o cluster_size=512 prep/a.raw prep/a.qcow2
newfs $((16 * M))
cp --sparse=always prep/a.qcow2 fs/
refbits() { "$QEMU_IMG" info -f qcow2 "$1" | sed -n 's/^ *refcount bits: //p'; }
fill $((32 * K))
enospc_fails "qcow2: amend -o refcount_bits=64 a.qcow2" a.qcow2 \
        "$VDISK_IMG" amend -f qcow2 -o refcount_bits=64 fs/a.qcow2
flat fs/a.qcow2 amend-after.raw
same "qcow2: amend failed: the image reads exactly as before" amend-after.raw prep/a.raw
expect_eq "qcow2: amend failed: still 16-bit refcounts" "$(refbits fs/a.qcow2)" 16
checks_clean "qcow2: amend failed" qcow2 fs/a.qcow2
rm fs/filler
expect_rc "qcow2: amend with space again" 0 "$VDISK_IMG" amend -f qcow2 -o refcount_bits=64 fs/a.qcow2
expect_eq "qcow2: amend done: 64-bit refcounts" "$(refbits fs/a.qcow2)" 64
flat fs/a.qcow2 amend-done.raw
same "qcow2: amend done: the image reads as before" amend-done.raw prep/a.raw
rm -f amend-*.raw
checks_clean "qcow2: amend done" qcow2 fs/a.qcow2

umount fs
finish
