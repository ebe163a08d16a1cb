#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Real ENOSPC: the images live on a small tmpfs (mounted in a private mount
# namespace), a filler file leaves 256 KiB free, and each writing command
# needs more than that:
#   rebase   a VDI diff onto an empty parent: the old parent's 1 MiB of 0xAB
#            must be copied into the diff (the data-loss reproduction: a failed
#            rebase used to leave a half-filled block that a later flush made
#            permanent, reading 768 KiB of zeros)
#   commit   a diff whose 2 MiB of new data must be allocated in the base
#   resize   a qemu-made VDI (map at 512, data at 1024) grown so far that the
#            map must move, which moves the first data block
#   compact  a VDI whose zero block is a hole in the file: the last block moves
#            into it
#   repair   a VDI with a leaked slot (a hole in the file): the last block moves
#            into it
#   convert -n   into an existing VDI: 2 MiB of new blocks
# Each must fail with a message naming the file and "No space left on device";
# the chain (flattened to raw outside the tmpfs) reads exactly as before
# (convert -n: each sector of the target as before or as the source);
# `vdisk-img check` and `qemu-img check` report at most leaks (exit 0 or 3;
# qemu-img cannot open VDI differencing images, so only bases go through it).
# A VDI can express a leaked slot below the allocated count only as "count
# ahead of the map", which both checks call an error (exit 2). Resize raises
# the count only after its block moves are durable, and compact and repair
# reserve the space of every slot they will move into before they change
# anything, so a failed resize or compact leaves no such state; the repair
# case starts in it (that is what repair fixes), so there the test accepts
# it after the failure and says so in a "# count ahead" line.
# Then the filler goes, the same command succeeds, and the content is what was
# intended. Needs root (for the mount namespace and tmpfs); skips otherwise.
# shellcheck source-path=SCRIPTDIR source=lib.sh
VDISK_TMPFS_TEST=1 source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
K=1024
mkdir fs prep

# count_ahead: the last check's only error is the allocated count above the
# slots the map references (vdisk-img's or qemu-img's wording)
count_ahead() {
        local c
        c=$(cat "$T/out" "$T/err")
        if [[ $c =~ "the map references slot" ]]; then return 1; fi
        if [[ $c =~ allocated\ blocks\ mismatch:\ the\ header\ says\ ([0-9]+),\ the\ map\ references\ ([0-9]+) ]] &&
           (( BASH_REMATCH[1] > BASH_REMATCH[2] )) && [[ $c =~ (^|[^0-9])1\ errors\ were\ found ]]; then
                return 0
        fi
        if [[ $c =~ allocated\ blocks\ mismatch,\ is\ ([0-9]+),\ should\ be\ ([0-9]+) ]] &&
           (( BASH_REMATCH[1] < BASH_REMATCH[2] )) && [[ $(grep -c ERROR <<<"$c") -eq 1 ]]; then
                return 0
        fi
        return 1
}
# checks_clean DESC [--count-ahead-ok] IMG...: our check and qemu-img's (bases
# only) report at most leaks
checks_clean() {
        local desc=$1 ahead_ok=0 f; shift
        if [[ $1 == --count-ahead-ok ]]; then ahead_ok=1; shift; fi
        for f in "$@"; do
                run "$VDISK_IMG" check "$f"
                if [[ $RC -eq 0 || $RC -eq 3 ]]; then ok "$desc: vdisk-img check $f (exit $RC)"
                elif [[ $RC -eq 2 && $ahead_ok -eq 1 ]] && count_ahead; then
                        echo "# count ahead: $desc: vdisk-img check $f: $(last_err)"
                        ok "$desc: vdisk-img check $f (exit 2: the count-ahead state only)"
                else notok "$desc: vdisk-img check $f" "exit $RC: $(head -c 300 "$T/out") $(last_err)"; fi
                [[ $(vdi "$f" type) -eq 4 ]] && continue    # a diff: qemu cannot open it
                run "$QEMU_IMG" check -f vdi "$f"
                if [[ $RC -eq 0 || $RC -eq 3 ]]; then ok "$desc: qemu-img check -f vdi $f (exit $RC)"
                elif [[ $RC -eq 2 && $ahead_ok -eq 1 ]] && count_ahead; then
                        echo "# count ahead: $desc: qemu-img check $f: $(last_err)"
                        ok "$desc: qemu-img check -f vdi $f (exit 2: the count-ahead state only)"
                else notok "$desc: qemu-img check -f vdi $f" "exit $RC: $(head -c 300 "$T/out") $(last_err)"; fi
        done
}
# same DESC A B: byte-identical files
same() { expect_cmp "$1" "$2" "$3"; }
# old_or_new DESC GOT OLD NEW: each 512-byte sector of GOT is OLD's or NEW's
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

# ---------------------------------------------------------------- rebase
# old.vdi: 1 MiB of 0xAB in block 1; child.vdi: an empty diff of it; new.vdi empty
"$PY" "$HERE/helper.py" mkraw prep/old.raw $((4 * M)) "fill:$M:$M:0xab"
vimg convert -f raw -O vdi prep/old.raw prep/old.vdi
vimg create -q -f vdi -b old.vdi -F vdi prep/child.vdi
vimg create -q -f vdi prep/new.vdi $((4 * M))
newfs $((8 * M))
cp --sparse=always prep/old.vdi prep/child.vdi prep/new.vdi fs/
flat fs/child.vdi rebase-before.raw
same "rebase: the chain reads the old parent (fixture)" rebase-before.raw prep/old.raw
fill
enospc_fails "rebase -b new.vdi" child.vdi "$VDISK_IMG" rebase -f vdi -b new.vdi -F vdi fs/child.vdi
flat fs/child.vdi rebase-after.raw
same "rebase failed: the chain reads exactly as before" rebase-after.raw rebase-before.raw
checks_clean "rebase failed" fs/child.vdi
rm fs/filler
expect_rc "rebase -b new.vdi with space again" 0 "$VDISK_IMG" rebase -f vdi -b new.vdi -F vdi fs/child.vdi
expect_eq "rebase: child.vdi now links to new.vdi" "$(vdi fs/child.vdi parentuuid)" "$(vdi fs/new.vdi uuid)"
flat fs/child.vdi rebase-done.raw
same "rebase done: the chain reads as before" rebase-done.raw rebase-before.raw
checks_clean "rebase done" fs/child.vdi
expect_rc "rebase done: vdisk-img check child.vdi is clean" 0 "$VDISK_IMG" check fs/child.vdi

# ---------------------------------------------------------------- commit
"$PY" "$HERE/helper.py" mkraw prep/cbase.raw $((8 * M)) "fill:0:$M:0x11" "fill:$((5 * M)):$((64 * K)):0x12"
cp prep/cbase.raw prep/cnew.raw
"$PY" "$HERE/helper.py" edit prep/cnew.raw "fill:$((2 * M)):$((2 * M)):0x21" "fill:4096:4096:0x22" \
        "fill:$((5 * M + 512)):512:0x23"
vimg convert -f raw -O vdi prep/cbase.raw prep/cbase.vdi
vimg convert -f raw -O vdi -B cbase.vdi -F vdi prep/cnew.raw prep/cdiff.vdi
[[ $RC -eq 0 ]] || notok "commit fixture: convert -B" "exit $RC: $(last_err)"
newfs $((8 * M))
cp --sparse=always prep/cbase.vdi prep/cdiff.vdi fs/
flat fs/cdiff.vdi commit-before.raw
same "commit: the diff reads its content (fixture)" commit-before.raw prep/cnew.raw
fill
enospc_fails "commit cdiff.vdi" cbase.vdi "$VDISK_IMG" commit -f vdi fs/cdiff.vdi
flat fs/cdiff.vdi commit-after.raw
same "commit failed: the chain reads exactly as before" commit-after.raw commit-before.raw
checks_clean "commit failed" fs/cbase.vdi fs/cdiff.vdi
rm fs/filler
expect_rc "commit cdiff.vdi with space again" 0 "$VDISK_IMG" commit -f vdi fs/cdiff.vdi
flat fs/cbase.vdi commit-done.raw
same "commit done: the base reads the diff's content" commit-done.raw prep/cnew.raw
flat fs/cdiff.vdi commit-done2.raw
same "commit done: the diff still reads its content" commit-done2.raw prep/cnew.raw
checks_clean "commit done" fs/cbase.vdi
qcompare prep/cnew.raw raw fs/cbase.vdi vdi

# ---------------------------------------------------------------- resize
# qemu-img makes the map room for 4 entries (map at 512, data at 1024): 256M
# needs 1 KiB of map, so block 0's data moves to the end of the file first.
"$QEMU_IMG" create -q -f vdi prep/q.vdi $((4 * M))
"$QEMU_IO" -f vdi -c "write -P 0x31 0 1M" -c "write -P 0x32 $((3 * M)) 64k" prep/q.vdi >/dev/null
expect_eq "resize: qemu's vdi has its map at 512, data at 1024 (fixture)" \
        "$(vdi prep/q.vdi offblocks) $(vdi prep/q.vdi offdata)" "512 1024"
newfs $((8 * M))
cp --sparse=always prep/q.vdi fs/
flat fs/q.vdi resize-before.raw
fill
enospc_fails "resize q.vdi 256M" q.vdi "$VDISK_IMG" resize -f vdi fs/q.vdi 256M
flat fs/q.vdi resize-after.raw
same "resize failed: the image reads exactly as before (same size too)" resize-after.raw resize-before.raw
checks_clean "resize failed" fs/q.vdi
rm fs/filler
expect_rc "resize q.vdi 256M with space again" 0 "$VDISK_IMG" resize -f vdi fs/q.vdi 256M
cp resize-before.raw resize-want.raw
truncate -s 256M resize-want.raw
flat fs/q.vdi resize-done.raw
same "resize done: the old content, then zeros up to 256M" resize-done.raw resize-want.raw
checks_clean "resize done" fs/q.vdi
expect_eq "resize done: qemu-img info virtual-size" "$(qinfo fs/q.vdi vdi virtual-size 2>&1)" $((256 * M))

# ---------------------------------------------------------------- compact
# blocks 0, 2: data; block 1: zeros written as data, a hole once copied sparsely
"$PY" "$HERE/helper.py" mkraw prep/k.raw $((4 * M)) "fill:0:$M:0x41" "fill:$((2 * M)):$M:0x42"
vimg create -q -f vdi prep/k.vdi $((4 * M))
"$QEMU_IO" -f vdi -c "write -P 0x41 0 1M" -c "write -z $M 1M" -c "write -P 0x00 $M 1M" \
        -c "write -P 0x42 $((2 * M)) 1M" prep/k.vdi >/dev/null
expect_eq "compact: block 1 is stored as data (fixture)" "$(vdi prep/k.vdi map | cut -d' ' -f1-3)" "0 1 2"
newfs $((8 * M))
cp --sparse=always prep/k.vdi fs/
flat fs/k.vdi compact-before.raw
same "compact: the image reads its content (fixture)" compact-before.raw prep/k.raw
fill
enospc_fails "compact k.vdi" k.vdi "$VDISK_IMG" compact -f vdi fs/k.vdi
flat fs/k.vdi compact-after.raw
same "compact failed: the image reads exactly as before" compact-after.raw compact-before.raw
checks_clean "compact failed" fs/k.vdi
rm fs/filler
expect_rc "compact k.vdi with space again" 0 "$VDISK_IMG" compact -f vdi fs/k.vdi
flat fs/k.vdi compact-done.raw
same "compact done: the image reads as before" compact-done.raw compact-before.raw
expect_rc "compact done: vdisk-img check k.vdi is clean" 0 "$VDISK_IMG" check fs/k.vdi
expect_eq "compact done: 2 blocks allocated" "$(vdi fs/k.vdi allocated)" 2

# ---------------------------------------------------------------- repair
# four data blocks; block 1's entry is cleared: its slot leaks, and a sparse
# copy with that slot punched makes it a hole the repair must fill
"$PY" "$HERE/helper.py" mkraw prep/r.raw $((4 * M)) "fill:0:$M:0x51" "fill:$M:$M:0x52" \
        "fill:$((2 * M)):$M:0x53" "fill:$((3 * M)):$M:0x54"
vimg convert -f raw -O vdi prep/r.raw prep/r.vdi
py vdi-set-entry prep/r.vdi 1 free
"$PY" "$HERE/helper.py" edit prep/r.raw "hole:$M:$M"
rdata=$(vdi prep/r.vdi offdata)
fallocate -p -o $((rdata + M)) -l $M prep/r.vdi
newfs $((8 * M))
cp --sparse=always prep/r.vdi fs/
flat fs/r.vdi repair-before.raw
same "repair: the image reads its content (fixture)" repair-before.raw prep/r.raw
run "$VDISK_IMG" check fs/r.vdi
expect_true "repair: check finds the leak (fixture, exit $RC)" test "$RC" -ne 0
fill
enospc_fails "repair r.vdi" r.vdi "$VDISK_IMG" repair -f vdi fs/r.vdi
flat fs/r.vdi repair-after.raw
same "repair failed: the image reads exactly as before" repair-after.raw repair-before.raw
# (the image was in the count-ahead state before: that is what repair fixes)
checks_clean "repair failed" --count-ahead-ok fs/r.vdi
rm fs/filler
expect_rc "repair r.vdi with space again" 0 "$VDISK_IMG" repair -f vdi fs/r.vdi
flat fs/r.vdi repair-done.raw
same "repair done: the image reads as before" repair-done.raw repair-before.raw
expect_rc "repair done: vdisk-img check r.vdi is clean" 0 "$VDISK_IMG" check fs/r.vdi
qcheck fs/r.vdi

# ---------------------------------------------------------------- convert -n
"$PY" "$HERE/helper.py" mkraw prep/t.raw $((4 * M)) "fill:$((3 * M)):$((64 * K)):0x61"
"$PY" "$HERE/helper.py" mkraw prep/s.raw $((4 * M)) "fill:0:$((2 * M)):0x71" "fill:$((3 * M)):4096:0x72"
vimg convert -f raw -O vdi prep/t.raw prep/t.vdi
newfs $((8 * M))
cp --sparse=always prep/t.vdi fs/
fill
enospc_fails "convert -n s.raw t.vdi" t.vdi "$VDISK_IMG" convert -n -f raw -O vdi prep/s.raw fs/t.vdi
flat fs/t.vdi convert-after.raw
old_or_new "convert -n failed: each sector of t.vdi reads its old content or the source's" \
        convert-after.raw prep/t.raw prep/s.raw
checks_clean "convert -n failed" fs/t.vdi
rm fs/filler
expect_rc "convert -n s.raw t.vdi with space again" 0 "$VDISK_IMG" convert -n -f raw -O vdi prep/s.raw fs/t.vdi
flat fs/t.vdi convert-done.raw
same "convert -n done: t.vdi reads as the source" convert-done.raw prep/s.raw
checks_clean "convert -n done" fs/t.vdi

umount fs
finish
