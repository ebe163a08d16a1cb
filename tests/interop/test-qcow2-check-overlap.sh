#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# qcow2 check of L2 entries that point into metadata, against qemu-img 7.2.
# A qemu-made image (64 KiB clusters, data in guest clusters 0-2, an internal
# snapshot, a persistent bitmap, data written after the snapshot) gets guest
# cluster 1's L2 entry (COPIED set) pointed at: the refcount table, a
# refcount block, the L1 table, the L2 table itself, the snapshot table, the
# bitmap directory, another data cluster. For each:
#   - `vdisk-img check --output=json` gives qemu-img's exit code and counts
#     (corruptions, leaks, check errors): the shared cluster is corruption
#     (refcount=1 reference=2; a refcount block also "ERROR refcount block
#     N refcount=2"), the data cluster no longer referenced is a leak;
#   - `vdisk-img check -r all` exits 0 and afterwards qemu-img check is clean,
#     the snapshot and the bitmap are still there (qemu's own repair drops
#     the snapshot when the entry points into the snapshot table), guest
#     clusters 0 and 2 and the snapshot's data read as before;
#   - a write into guest cluster 1 (qemu-io) goes to a cluster of its own:
#     the metadata stays whole (qemu-img check: clean, or for the shared
#     data cluster the OFLAG_COPIED error qemu's repair leaves too), the
#     write reads back.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

K=1024
C=$((64 * K))

"$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 $((3 * C))" base.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c snap1 base.qcow2
"$QEMU_IMG" bitmap --add base.qcow2 bm1
"$QEMU_IO" -f qcow2 -c "write -P 0x22 1M $C" base.qcow2 >/dev/null
qcheck base.qcow2 qcow2

# offsets: refcount table, first refcount block, L1, the active L2, the
# snapshot table, the bitmap directory, guest cluster 0's data cluster
read -r REFT RB L1 L2 SNAPT BMDIR D0 < <("$PY" - base.qcow2 <<'EOF'
import struct, sys
b = open(sys.argv[1], 'rb').read()
q = lambda o: struct.unpack('>Q', b[o:o + 8])[0]
mask = 0x00fffffffffffe00
reft, l1, snapt = q(48), q(40), q(64)
rb = q(reft) & mask
l2 = q(l1) & mask
d0 = q(l2) & mask
off = struct.unpack('>I', b[100:104])[0]
bmdir = 0
while True:
    t, n = struct.unpack('>II', b[off:off + 8])
    if t == 0:
        break
    if t == 0x23852875:
        bmdir = q(off + 8 + 16)
    off += 8 + ((n + 7) & ~7)
print(reft, rb, l1, l2, snapt, bmdir, d0)
EOF
)

# point FILE OFFSET: guest cluster 1's L2 entry -> OFFSET, COPIED set
point() {
        "$PY" - "$1" "$L2" "$2" <<'EOF'
import struct, sys
f, l2, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(f, 'r+b') as fh:
    fh.seek(l2 + 8)
    fh.write(struct.pack('>Q', (1 << 63) | target))
EOF
}

# counts FILE TOOL: "exit corruptions leaks check-errors"
counts() {
        local f=$1 tool=$2 rc=0 c
        "$tool" check -f qcow2 --output=json "$f" >c.json 2>c.err || rc=$?
        c=$(py check-counts c.json 2>/dev/null) || c="(no JSON: $(head -c 200 c.json) $(head -c 200 c.err))"
        echo "$rc $c"
}

for case in "reft:$REFT" "refblock:$RB" "l1:$L1" "l2:$L2" "snapshot-table:$SNAPT" "bitmap-dir:$BMDIR" \
            "data:$D0"; do
        name=${case%%:*} target=${case#*:}
        cp base.qcow2 "$name.qcow2"
        point "$name.qcow2" "$target"
        expect_eq "$name: check (exit corruptions leaks check-errors) as qemu-img's" \
                "$(counts "$name.qcow2" "$VDISK_IMG")" "$(counts "$name.qcow2" "$QEMU_IMG")"
        # the same ERROR and Leaked lines as qemu-img's
        "$QEMU_IMG" check -f qcow2 "$name.qcow2" >q.txt 2>&1 || true
        "$VDISK_IMG" check -f qcow2 "$name.qcow2" >v.txt 2>&1 || true
        expect_eq "$name: the ERROR and Leaked lines of qemu-img check" \
                "$(grep -E '^(ERROR|Leaked)' v.txt | sort | tr '\n' ';')" "$(grep -E '^(ERROR|Leaked)' q.txt | sort | tr '\n' ';')"
        if grep -qE '^ERROR cluster [0-9]+ refcount=[0-9]+ reference=' v.txt; then ok "$name: the shared cluster is reported"
        else notok "$name: the shared cluster is reported" "$(tr '\n' ' ' <v.txt | cut -c1-300)"; fi
        if [[ $name == refblock ]]; then
                if grep -qF "ERROR refcount block 0 refcount=2" v.txt; then ok "$name: the refcount block is shared"
                else notok "$name: the refcount block is shared" "$(tr '\n' ' ' <v.txt | cut -c1-300)"; fi
        fi

        vimg check -r all -f qcow2 "$name.qcow2"
        expect_eq "$name: check -r all exits 0" "$RC" 0
        qcheck "$name.qcow2" qcow2
        expect_eq "$name: the snapshot is still there" \
                "$("$QEMU_IMG" snapshot -l "$name.qcow2" | awk 'NR > 2 { print $2 }')" "snap1"
        expect_eq "$name: the bitmap is still there" \
                "$("$QEMU_IMG" info "$name.qcow2" | sed -n 's/^ *name: //p')" "bm1"
        expect_rc "$name: guest clusters 0 and 2 and the data written later read as before" 0 \
                "$QEMU_IO" -f qcow2 -c "read -P 0x11 0 $C" -c "read -P 0x11 $((2 * C)) $C" -c "read -P 0x22 1M $C" \
                "$name.qcow2"
        rm -f snap.raw
        "$QEMU_IMG" convert -f qcow2 -l snapshot.name=snap1 -O raw "$name.qcow2" snap.raw
        expect_rc "$name: the snapshot reads as it was taken" 0 \
                "$QEMU_IO" -f raw -c "read -P 0x11 0 $((3 * C))" -c "read -P 0 1M $C" snap.raw

        expect_rc "$name: a write into guest cluster 1" 0 "$QEMU_IO" -f qcow2 -c "write -P 0x5c $C $C" "$name.qcow2"
        rc=0
        "$QEMU_IMG" check -f qcow2 "$name.qcow2" >chk.out 2>&1 || rc=$?
        if [[ $rc -eq 0 ]] || { [[ $name == data ]] && [[ $rc -eq 2 ]] &&
                [[ $(grep -c . chk.out) -gt 0 ]] && grep -q "ERROR OFLAG_COPIED data cluster" chk.out &&
                ! grep -q "refcount=.*reference=" chk.out; }; then
                ok "$name: after the write, qemu-img check clean (data: only qemu's own OFLAG_COPIED leftover)"
        else notok "$name: after the write, qemu-img check clean" "exit $rc: $(tr '\n' ' ' <chk.out | cut -c1-300)"; fi
        expect_rc "$name: the write reads back, the rest as before" 0 \
                "$QEMU_IO" -f qcow2 -c "read -P 0x5c $C $C" -c "read -P 0x11 0 $C" -c "read -P 0x11 $((2 * C)) $C" \
                "$name.qcow2"
done

finish
