#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 internal snapshots written by vdisk-img (snapshot -c/-a/-d) and
# images with snapshots written by vdisk-img:
#   - on vdisk-made images (compat 1.1 and 0.10, 512-byte clusters with
#     64-bit refcounts, extended L2): snapshot -c, vdisk writes after it (the
#     snapshot reads unchanged through qemu-img's `convert -l`, the current
#     state reads the new data), a second snapshot, -a back to the first
#     (size too), -d of both; `qemu-img check` and `vdisk-img check` clean
#     after every step, `qemu-img snapshot -l` lists what vdisk made as
#     `vdisk-img snapshot -l` does;
#   - on qemu-made images: qemu's snapshots applied and deleted by vdisk,
#     vdisk's applied by qemu-img; qemu-io writes after a vdisk snapshot;
#   - errors as qemu-img 7.2 reports them (a missing snapshot for -a and -d);
#   - check: an L2 entry with OFLAG_COPIED cleared is qemu's "ERROR
#     OFLAG_COPIED data cluster" for both checkers, and `check -r all` mends it.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SZ=$((4 * M))

qio() { "$QEMU_IO" -f qcow2 "$@" >/dev/null; }

# clean IMAGE DESC: both checkers find nothing
clean() {
        run "$QEMU_IMG" check -f qcow2 "$1"
        if [[ $RC -eq 0 ]]; then ok "$2: qemu-img check clean"
        else notok "$2: qemu-img check clean" "$(head -c 600 "$T/out") $(last_err)"; fi
        vimg check -f qcow2 "$1"
        if [[ $RC -eq 0 ]]; then ok "$2: vdisk-img check clean"
        else notok "$2: vdisk-img check clean" "$(head -c 600 "$T/out") $(last_err)"; fi
}

# reads IMAGE SPEC REF DESC: qemu-img reads snapshot SPEC (or the current
# state for "-") as REF
reads() {
        local f=$1 spec=$2 ref=$3 desc=$4
        if [[ $spec == - ]]; then run "$QEMU_IMG" convert -O raw "$f" got.raw
        else run "$QEMU_IMG" convert -l "$spec" -O raw "$f" got.raw; fi
        if [[ $RC -ne 0 ]]; then notok "$desc" "$(last_err)"; return; fi
        expect_cmp "$desc" "$ref" got.raw
        rm -f got.raw
}

# lists IMAGE DESC: vdisk-img snapshot -l prints what qemu-img prints
lists() {
        "$QEMU_IMG" snapshot -l "$1" >q.txt
        vimg snapshot -l "$1"
        if [[ $RC -eq 0 ]] && cmp -s q.txt "$T/out"; then ok "$2: snapshot -l as qemu-img's"
        else notok "$2: snapshot -l as qemu-img's" "$(diff q.txt "$T/out" | head -c 600)"; fi
}

# three contents of $SZ bytes: p2 and p3 change parts of p1
mkpattern p1.raw $SZ 1
cp p1.raw p2.raw
py edit p2.raw "data:$((M / 2 + 512)):70000:7" "fill:$((3 * M)):4096:0x66" "zero:0:4096"
cp p2.raw p3.raw
py edit p3.raw "data:$((M / 2)):$((M + 4096)):9" "fill:$((SZ - 65536)):65536:0x3c"

for o in compat=1.1 compat=0.10 cluster_size=512,refcount_bits=64 extended_l2=on,cluster_size=64k,lazy_refcounts=on; do
        d="vdisk-made $o"
        rm -f v.qcow2
        vimg create -f qcow2 -o "$o" v.qcow2 $SZ
        vimg convert -n -O qcow2 p1.raw v.qcow2
        expect_rc "$d: snapshot -c one" 0 "$VDISK_IMG" snapshot -c one v.qcow2
        clean v.qcow2 "$d, after -c one"
        expect_eq "$d: qemu-img sees snapshot 1 'one'" \
                "$("$QEMU_IMG" snapshot -l v.qcow2 | awk 'NR == 3 { print $1, $2 }')" "1 one"
        vimg convert -n -O qcow2 p2.raw v.qcow2
        clean v.qcow2 "$d, written after the snapshot"
        reads v.qcow2 snapshot.name=one p1.raw "$d: the snapshot still reads as before the writes"
        reads v.qcow2 - p2.raw "$d: the current state reads the writes"
        expect_rc "$d: snapshot -c two" 0 "$VDISK_IMG" snapshot -c two v.qcow2
        vimg convert -n -O qcow2 p3.raw v.qcow2
        clean v.qcow2 "$d, two snapshots and writes"
        lists v.qcow2 "$d"
        reads v.qcow2 snapshot.id=2 p2.raw "$d: snapshot 2 reads its content"
        reads v.qcow2 snapshot.id=1 p1.raw "$d: snapshot 1 reads its content"
        expect_rc "$d: snapshot -a one" 0 "$VDISK_IMG" snapshot -a one v.qcow2
        clean v.qcow2 "$d, after -a one"
        reads v.qcow2 - p1.raw "$d: the current state is snapshot one's"
        expect_rc "$d: snapshot -d 1" 0 "$VDISK_IMG" snapshot -d 1 v.qcow2
        clean v.qcow2 "$d, after -d 1"
        expect_eq "$d: snapshot 2 is left" \
                "$("$QEMU_IMG" snapshot -l v.qcow2 | awk 'NR > 2 { print $1, $2 }')" "2 two"
        reads v.qcow2 snapshot.id=2 p2.raw "$d: snapshot 2 still reads its content"
        reads v.qcow2 - p1.raw "$d: the current state is unchanged by -d"
        expect_rc "$d: snapshot -d two" 0 "$VDISK_IMG" snapshot -d two v.qcow2
        clean v.qcow2 "$d, no snapshots left"
        expect_eq "$d: no snapshots left" "$("$QEMU_IMG" snapshot -l v.qcow2)" ""
        # the next id after deleting every snapshot starts again at 1, as qemu's
        vimg snapshot -c again v.qcow2
        expect_eq "$d: the next id" "$("$QEMU_IMG" snapshot -l v.qcow2 | awk 'NR == 3 { print $1 }')" "1"
        clean v.qcow2 "$d, created again"
done

# --- apply restores the size the snapshot was taken at
vimg create -f qcow2 r.qcow2 $SZ
vimg convert -n -O qcow2 p1.raw r.qcow2
vimg snapshot -c small r.qcow2
"$QEMU_IMG" resize -q r.qcow2 $((6 * M))
qio -c "write -P 0x71 $((5 * M)) 65536" r.qcow2
expect_rc "snapshot -a of a smaller snapshot" 0 "$VDISK_IMG" snapshot -a small r.qcow2
expect_eq "... the virtual size is the snapshot's" "$(qinfo r.qcow2 qcow2 virtual-size)" "$SZ"
reads r.qcow2 - p1.raw "... and the content"
clean r.qcow2 "applied across a resize"

# --- qemu-made snapshots, applied and deleted by vdisk; vdisk's applied by qemu
"$QEMU_IMG" create -q -f qcow2 q.qcow2 $SZ
qio -c "write -P 0x11 0 $((2 * M))" -c "write -c -P 0x12 $((3 * M)) 65536" q.qcow2
"$QEMU_IMG" snapshot -c qa q.qcow2
qio -c "write -P 0x21 $((M / 2)) 8192" -c "write -z $M 65536" q.qcow2
"$QEMU_IMG" snapshot -c qb q.qcow2
qio -c "write -P 0x31 4096 4096" q.qcow2
"$QEMU_IMG" convert -l snapshot.name=qa -O raw q.qcow2 qa.raw
"$QEMU_IMG" convert -l snapshot.name=qb -O raw q.qcow2 qb.raw
"$QEMU_IMG" convert -O raw q.qcow2 qcur.raw
expect_rc "qemu-made: vdisk writes into an image with qemu's snapshots" 0 \
        "$VDISK_IMG" convert -n -O qcow2 p2.raw q.qcow2
clean q.qcow2 "qemu-made, written by vdisk"
reads q.qcow2 snapshot.name=qa qa.raw "qemu-made: snapshot qa unchanged by vdisk's writes"
reads q.qcow2 snapshot.name=qb qb.raw "qemu-made: snapshot qb unchanged by vdisk's writes"
expect_rc "qemu-made: vdisk applies qa" 0 "$VDISK_IMG" snapshot -a qa q.qcow2
clean q.qcow2 "qemu-made, qa applied by vdisk"
reads q.qcow2 - qa.raw "qemu-made: the current state is qa's"
expect_rc "qemu-made: vdisk deletes qa" 0 "$VDISK_IMG" snapshot -d qa q.qcow2
clean q.qcow2 "qemu-made, qa deleted by vdisk"
reads q.qcow2 - qa.raw "qemu-made: the current state is still qa's"
reads q.qcow2 snapshot.name=qb qb.raw "qemu-made: qb still reads as before"
expect_rc "vdisk creates a snapshot of it" 0 "$VDISK_IMG" snapshot -c vd q.qcow2
qio -c "write -P 0x44 0 $M" q.qcow2
clean q.qcow2 "qemu-io writes after vdisk's snapshot"
reads q.qcow2 snapshot.name=vd qa.raw "vdisk's snapshot unchanged by qemu's writes"
expect_rc "qemu-img applies vdisk's snapshot" 0 "$QEMU_IMG" snapshot -a vd q.qcow2
reads q.qcow2 - qa.raw "... and reads its content"
expect_rc "qemu-img deletes vdisk's snapshot" 0 "$QEMU_IMG" snapshot -d vd q.qcow2
clean q.qcow2 "qemu-made, vdisk's snapshot deleted by qemu"
lists q.qcow2 "qemu-made after all that"

# --- errors, as qemu-img 7.2 words them
for a in -a -d; do
        "$QEMU_IMG" snapshot $a nope q.qcow2 2>q.err && true
        qrc=$?
        run "$VDISK_IMG" snapshot $a nope q.qcow2
        expect_eq "snapshot $a of a missing snapshot: exit code as qemu-img's" "$RC" "$qrc"
        expect_eq "... and its message" "$(sed 's/^vdisk-img: //' "$T/err")" "$(sed 's/^qemu-img: //' q.err)"
done

# --- an external data file holds the active disk only: qemu-img refuses a
# snapshot there (and its check calls one corruption); so does vdisk-img
"$QEMU_IMG" create -q -f qcow2 -o data_file=df.raw df.qcow2 $SZ
cp df.qcow2 df0.qcow2
"$QEMU_IMG" snapshot -c s1 df.qcow2 2>q.err && true
qrc=$?
vimg snapshot -c s1 df.qcow2
expect_eq "snapshot -c of an image with a data file: exit code as qemu-img's" "$RC" "$qrc"
expect_eq "... refused before anything is written" "$(cmp -s df.qcow2 df0.qcow2 && echo same)" same
expect_eq "... with qemu-img's errno" "$(grep -o -- '-95' "$T/err" | head -1)" "$(grep -o -- '-95' q.err | head -1)"
clean df.qcow2 "refused snapshot with a data file"

# --- check: OFLAG_COPIED
vimg create -f qcow2 k.qcow2 $SZ
vimg convert -n -O qcow2 p1.raw k.qcow2
# clear COPIED in the first L2 entry of the first L2 table
"$PY" - k.qcow2 <<'EOF'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(72)
    l1_off = struct.unpack('>Q', h[40:48])[0]
    f.seek(l1_off); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
    f.seek(l2); e = struct.unpack('>Q', f.read(8))[0]
    assert e & (1 << 63)
    f.seek(l2); f.write(struct.pack('>Q', e & ~(1 << 63)))
EOF
"$QEMU_IMG" check k.qcow2 >q.out 2>&1 && true
qrc=$?
vimg check k.qcow2
expect_eq "a cleared OFLAG_COPIED: check's exit code as qemu-img's" "$RC" "$qrc"
expect_eq "... and its ERROR line" "$(grep -h 'OFLAG_COPIED' "$T/out" "$T/err" | head -1)" \
        "$(grep 'OFLAG_COPIED' q.out | head -1)"
expect_rc "check -r all mends it" 0 "$VDISK_IMG" check -r all k.qcow2
clean k.qcow2 "mended OFLAG_COPIED"
reads k.qcow2 - p1.raw "... with the content unchanged"

finish
