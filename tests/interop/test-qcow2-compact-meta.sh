#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 compact moves metadata: images whose L2 tables, refcount blocks, L1
# table or refcount table sit late in the file (written last, grown by a
# resize, or made by qemu as the file grew), with a hole below them (a
# discard). After `vdisk-img compact` the file holds only the clusters it
# references, no hole (the data packs again after refcount blocks are
# dropped) and ends at qemu-img check's image end offset, the tables that
# stood above a hole moved down,
# `qemu-img check` is clean and `qemu-img compare` equals the content before.
# Also: persistent bitmaps above the hole (their tables, data clusters and
# directory move; qemu-img info and the bits unchanged), and images with an
# external data file (dropped clusters punched out of it; raw ones kept),
# and images with internal snapshots (the active tree's own clusters and
# tables move, and the snapshots' own tables; every snapshot reads as
# before).
#   tests/interop/test-qcow2-compact-meta.sh build/tools/vdisk-img build/tests/interop/vdisk-discard
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"
need_discard

M=$((1 << 20))
K=1024

# layout IMG: "FILE_CLUSTERS REFERENCED_CLUSTERS L1_OFFSET REFT_OFFSET
# LAST_L2 LAST_REFBLOCK" from the file itself (the refcounts as written)
layout() {
        "$PY" - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
be64 = lambda o: struct.unpack('>Q', d[o:o + 8])[0]
cs = 1 << struct.unpack('>I', d[20:24])[0]
l1_size, l1 = struct.unpack('>I', d[36:40])[0], be64(40)
reft, reft_cl = be64(48), struct.unpack('>I', d[56:60])[0]
order = struct.unpack('>I', d[96:100])[0] if struct.unpack('>I', d[4:8])[0] >= 3 else 4
bits = 1 << order
per = cs * 8 // bits
mask = 0x00fffffffffffe00
l2s = [be64(l1 + 8 * i) & mask for i in range(l1_size)]
rbs = [be64(reft + 8 * i) & mask for i in range(reft_cl * cs // 8)]
n = (len(d) + cs - 1) // cs
used = 0
for c in range(n):
    rti = c // per
    b = rbs[rti] if rti < len(rbs) else 0
    if b == 0:
        continue
    i = c % per
    bitoff = i * bits
    if bits < 8:   # sub-byte widths: the low bits first, as qemu stores them
        chunk = (d[b + bitoff // 8] >> (bitoff % 8)) & ((1 << bits) - 1)
    else:
        chunk = int.from_bytes(d[b + bitoff // 8:b + (bitoff + bits) // 8], 'big')
    if chunk:
        used += 1
print(n, used, l1, reft, max(l2s), max(rbs))
EOF
}

# check_compacted NAME IMG REF BEFORE_LAYOUT MOVED: the file holds only
# referenced clusters (no hole) and ends where qemu-img check says the image
# ends; the tables MOVED names (l2: the last L2 table, rb: the last refcount
# block, l1, reft) lie lower than before
check_compacted() {
        local name=$1 img=$2 ref=$3 n used l1 reft l2 rb end
        local b_n b_l1 b_reft b_l2 b_rb
        read -r b_n _ b_l1 b_reft b_l2 b_rb <<<"$4"
        read -r n used l1 reft l2 rb <<<"$(layout "$img")"
        expect_rc "$name: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 "$img"
        expect_rc "$name: qemu-img compare equal" 0 "$QEMU_IMG" compare -f qcow2 -F raw "$img" "$ref"
        expect_true "$name: $n clusters in the file, $used referenced ($b_n before)" test "$n" -eq "$used"
        end=$("$QEMU_IMG" check -f qcow2 --output=json "$img" | "$PY" -c 'import json, sys
print(json.load(sys.stdin)["image-end-offset"])')
        expect_true "$name: the file ends at qemu-img check's image end offset ($end)" \
                test "$(stat -c %s "$img")" -eq "$end"
        [[ $5 == *l2* ]] && expect_true "$name: the last L2 table moved down ($b_l2 -> $l2)" test "$l2" -lt "$b_l2"
        [[ $5 == *rb* ]] && expect_true "$name: the last refcount block moved down or went ($b_rb -> $rb)" \
                test "$rb" -lt "$b_rb"
        [[ $5 == *l1* ]] && expect_true "$name: the L1 table moved down ($b_l1 -> $l1)" test "$l1" -lt "$b_l1"
        [[ $5 == *reft* ]] && expect_true "$name: the refcount table moved down ($b_reft -> $reft)" \
                test "$reft" -lt "$b_reft"
        expect_rc "$name: vdisk-img check" 0 "$VDISK_IMG" check -f qcow2 "$img"
}

# 1. qemu-made, 64 KiB clusters: L2 tables written late (600M, 1100M) after
# 4 MiB of data that is then discarded
img=late-l2.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$img" 2G
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 1M" -c "write -P 0x22 100M 4M" -c "write -P 0x33 600M 64k" \
        -c "write -P 0x44 1100M 64k" "$img" >/dev/null
expect_rc "late-l2: discard 4M" 0 "$DISCARD" "$img" qcow2 $((100 * M)):$((4 * M))
"$QEMU_IMG" convert -f qcow2 -O raw "$img" late-l2.raw
before=$(layout "$img")
expect_rc "late-l2: compact" 0 "$VDISK_IMG" compact "$img"
check_compacted late-l2 "$img" late-l2.raw "$before" l2

# 2. qemu-made, 512-byte clusters: refcount blocks every 128 KiB of the file
# (self-counting), the refcount table grown past 8 MiB of file (moved to the
# end by qemu), the L1 table grown by vdisk's resize (appended); then the big
# middle discarded
img=late-all.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 "$img" 64M
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 1M" -c "write -P 0x22 8M 10M" -c "write -P 0x33 40M 256k" \
        "$img" >/dev/null
expect_rc "late-all: resize 128M (the L1 table moves to the end)" 0 "$VDISK_IMG" resize "$img" 128M
"$QEMU_IO" -f qcow2 -c "write -P 0x44 100M 64k" "$img" >/dev/null
expect_rc "late-all: discard 10M" 0 "$DISCARD" "$img" qcow2 $((8 * M)):$((10 * M))
"$QEMU_IMG" convert -f qcow2 -O raw "$img" late-all.raw
before=$(layout "$img")
expect_rc "late-all: compact" 0 "$VDISK_IMG" compact "$img"
check_compacted late-all "$img" late-all.raw "$before" l2,rb,l1,reft

# 3. vdisk-made, 4 KiB clusters with 64-bit refcounts (the crash test's
# image): a second refcount block, an L2 table at the end
img=vd-4k.qcow2
run "$VDISK_IMG" create -f qcow2 -o cluster_size=4096,refcount_bits=64 "$img" 8M
"$QEMU_IO" -f qcow2 -c "write -P 1 0 64k" -c "write -P 2 512k 2560k" -c "write -P 5 6M 8k" "$img" >/dev/null
expect_rc "vd-4k: discard 2.5M" 0 "$DISCARD" "$img" qcow2 $((512 * K)):$((2560 * K))
"$QEMU_IMG" convert -f qcow2 -O raw "$img" vd-4k.raw
before=$(layout "$img")
expect_rc "vd-4k: compact" 0 "$VDISK_IMG" compact "$img"
check_compacted vd-4k "$img" vd-4k.raw "$before" l2,rb

# bmlayout IMG: "DIRECTORY_OFFSET LAST_BITMAP_TABLE LAST_BITMAP_DATA_CLUSTER"
bmlayout() {
        "$PY" - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
off = struct.unpack('>I', d[100:104])[0]
while True:
    t, ln = struct.unpack('>II', d[off:off + 8])
    if t == 0x23852875:
        n, _, size, dof = struct.unpack('>IIQQ', d[off + 8:off + 32])
        break
    assert t != 0, 'no bitmaps extension'
    off += 8 + ((ln + 7) & ~7)
pos, tables, data = dof, [], [0]
for _ in range(n):
    toff, tsize, _, _, _, nlen, xlen = struct.unpack('>QIIBBHI', d[pos:pos + 24])
    tables.append(toff)
    data += [struct.unpack('>Q', d[toff + 8 * j:toff + 8 * j + 8])[0] & 0x00fffffffffffe00 for j in range(tsize)]
    pos += (24 + xlen + nlen + 7) & ~7
print(dof, max(tables), max(data))
EOF
}

# 4. persistent bitmaps high in the file (qemu-made, 64 KiB clusters): b1
# (4 KiB granularity) and b2 enabled, b3 disabled with b1 merged into it,
# stored by qemu after the data; then the 4 MiB of data below them
# discarded. Compact moves each bitmap table and the directory down, and the
# bitmaps' data clusters with the data: qemu-img info lists the same
# bitmaps, their bits are the same (our reader on the image, and on qemu's
# `convert --bitmaps` copy of it), the content too, the file is smaller.
img=bitmaps.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$img" 64M
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 1M" -c "write -P 0x22 8M 4M" -c "write -P 0x33 20M 256k" \
        "$img" >/dev/null
"$QEMU_IMG" bitmap --add -g 4096 "$img" b1
"$QEMU_IMG" bitmap --add "$img" b2
"$QEMU_IO" -f qcow2 -c "write -P 0x44 30M 128k" -c "write -P 0x55 1M 64k" "$img" >/dev/null
"$QEMU_IMG" bitmap --add --disable "$img" b3
"$QEMU_IMG" bitmap --merge b1 "$img" b3
expect_rc "bitmaps: discard 4M" 0 "$DISCARD" "$img" qcow2 $((8 * M)):$((4 * M))
"$QEMU_IMG" convert -f qcow2 -O raw "$img" bitmaps.raw
BM dump "$img" >bitmaps.before
"$QEMU_IMG" info "$img" | sed -n '/bitmaps:/,/refcount bits/p' >bitmaps.info
expect_true "bitmaps: three bitmaps with bits set before" test "$(grep -c 'ranges=[0-9]' bitmaps.before)" -eq 3
before=$(layout "$img")
read -r b_dir b_table b_data <<<"$(bmlayout "$img")"
size_before=$(stat -c %s "$img")
expect_rc "bitmaps: compact" 0 "$VDISK_IMG" compact "$img"
check_compacted bitmaps "$img" bitmaps.raw "$before" ""
read -r dir table data <<<"$(bmlayout "$img")"
expect_true "bitmaps: the directory moved down ($b_dir -> $dir)" test "$dir" -lt "$b_dir"
expect_true "bitmaps: the last bitmap table moved down ($b_table -> $table)" test "$table" -lt "$b_table"
expect_true "bitmaps: the last bitmap data cluster moved down ($b_data -> $data)" test "$data" -lt "$b_data"
expect_true "bitmaps: the file shrank ($size_before -> $(stat -c %s "$img"))" \
        test "$(stat -c %s "$img")" -lt "$size_before"
"$QEMU_IMG" info "$img" | sed -n '/bitmaps:/,/refcount bits/p' >bitmaps.info.after
expect_cmp "bitmaps: qemu-img info lists the same bitmaps" bitmaps.info bitmaps.info.after
BM dump "$img" >bitmaps.after
expect_cmp "bitmaps: the same bits (our reader)" bitmaps.before bitmaps.after
run "$QEMU_IMG" convert --bitmaps -f qcow2 -O qcow2 "$img" bitmaps-copy.qcow2
BM dump bitmaps-copy.qcow2 >bitmaps.copy
expect_cmp "bitmaps: the same bits (qemu-img convert --bitmaps)" bitmaps.before bitmaps.copy

# 5. external data files (qemu-made, 64 KiB clusters, 2 GiB): the image
# file holds only metadata; compact gives clusters that read as what shows
# through back to the data file (unallocated in L2, their range punched)
# and moves the image file's tables down.
# blocks FILE: 512-byte blocks the file takes
blocks() { stat -c %b "$1"; }

# 5a. no backing file: zeros written as data at 8M (4 MiB) and as the only
# data of the second L2 table (600M); data at 0, 1100M and 1600M
img=df.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k,data_file=df.data "$img" 2G
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 4M" -c "write -P 0 8M 4M" -c "write -P 0 600M 64k" \
        -c "write -P 0x44 1100M 64k" -c "write -P 0x55 1600M 128k" "$img" >/dev/null
"$QEMU_IMG" convert -f qcow2 -O raw "$img" df.raw
before=$(layout "$img")
data_before=$(blocks df.data)
expect_rc "data file: compact" 0 "$VDISK_IMG" compact "$img"
check_compacted datafile "$img" df.raw "$before" l2
expect_true "data file: the zeros' 4160 KiB punched out of it ($data_before -> $(blocks df.data) blocks)" \
        test "$(blocks df.data)" -le $((data_before - 8320))
expect_no_data "$img" $((8 * M)) $((4 * M)) "data file: no data where the zeros were"
expect_no_data "$img" $((600 * M)) $((64 * K)) "data file: no data in the dropped L2 table's range"

# 5b. over a backing file: 0..1M written again with the parent's data, 4M..5M
# with zeros over the parent's zeros (both show through: unallocated and
# punched), 1M..2M with other data (kept)
"$QEMU_IMG" create -q -f raw dfb-base.raw 64M
"$QEMU_IO" -f raw -c "write -P 0x21 0 2M" dfb-base.raw >/dev/null
cp dfb-base.raw dfb-base.orig
img=dfb.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k,data_file=dfb.data -b dfb-base.raw -F raw "$img"
"$QEMU_IO" -f qcow2 -c "write -P 0x21 0 1M" -c "write -P 0x22 1M 1M" -c "write -P 0 4M 1M" "$img" >/dev/null
"$QEMU_IMG" convert -f qcow2 -O raw "$img" dfb.raw
data_before=$(blocks dfb.data)
expect_rc "data file over a parent: compact" 0 "$VDISK_IMG" compact "$img"
expect_rc "data file over a parent: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 "$img"
expect_rc "data file over a parent: qemu-img compare equal" 0 "$QEMU_IMG" compare -f qcow2 -F raw "$img" dfb.raw
expect_true "data file over a parent: 2 MiB punched ($data_before -> $(blocks dfb.data) blocks)" \
        test "$(blocks dfb.data)" -le $((data_before - 4096))
expect_eq "data file over a parent: only 1M..2M allocated" \
        "$("$QEMU_IMG" map -f qcow2 --output=json "$img" | "$PY" -c '
import json, sys
print([(e["start"], e["length"]) for e in json.load(sys.stdin) if e["depth"] == 0 and e["data"]])')" \
        "[($M, $M)]"
expect_cmp "data file over a parent: the parent unchanged" dfb-base.raw dfb-base.orig

# 5c. data_file_raw=on: the data file must go on reading as the disk (zeros
# written as data stay); only the image file's metadata is compacted
img=dfr.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k,data_file=dfr.data,data_file_raw=on "$img" 64M
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 4M" -c "write -P 0 8M 4M" "$img" >/dev/null
cp dfr.data dfr.orig
expect_rc "raw data file: compact" 0 "$VDISK_IMG" compact "$img"
expect_rc "raw data file: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 "$img"
expect_cmp "raw data file: byte for byte unchanged" dfr.data dfr.orig
expect_rc "raw data file: the image reads as the data file" 0 "$QEMU_IMG" compare -f qcow2 -F raw "$img" dfr.data

# 6. internal snapshots (qemu-made, 64 KiB clusters): s1 over 9 MiB of data
# and a cluster of zeros written as data in a second L2 table (600M) that
# stays shared (compact must not drop it there: s1 would lose it), the
# active tree then written (its L2 table and clusters copied on write),
# s2, more writes, 4 MiB of the active tree's own clusters discarded, a last
# write at the end of the file. Compact moves only what the active tree
# holds alone (clusters and L2 tables of refcount 1); the snapshots' tables
# and clusters stay. Check clean, the active disk and each snapshot read as
# before (`qemu-img convert -l`), the snapshot list unchanged, the file
# smaller, the active tree's last cluster lower.
# snap_save PREFIX IMG: the active disk, s1, s2 and the snapshot list, for
# snap_compact
snap_save() {
        "$QEMU_IMG" convert -f qcow2 -O raw "$2" "$1.raw"
        for sn in s1 s2; do "$QEMU_IMG" convert -f qcow2 -l "$sn" -O raw "$2" "$1-$sn.raw"; done
        "$QEMU_IMG" snapshot -l "$2" >"$1.list"
}

# snap_compact NAME PREFIX IMG: compact; check clean, the active disk, s1,
# s2 and the snapshot list as snap_save found them
snap_compact() {
        local name=$1 pre=$2 img=$3 sn
        expect_rc "$name: compact" 0 "$VDISK_IMG" compact "$img"
        expect_rc "$name: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 "$img"
        expect_rc "$name: the active disk as before" 0 "$QEMU_IMG" compare -f qcow2 -F raw "$img" "$pre.raw"
        for sn in s1 s2; do
                run "$QEMU_IMG" convert -f qcow2 -l "$sn" -O raw "$img" "$pre-$sn.after"
                expect_cmp "$name: $sn reads as before" "$pre-$sn.raw" "$pre-$sn.after"
        done
        "$QEMU_IMG" snapshot -l "$img" >"$pre.list.after"
        expect_cmp "$name: the snapshot list unchanged" "$pre.list" "$pre.list.after"
}

img=snap.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$img" 1G
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 4M" -c "write -P 0x22 8M 4M" -c "write -P 0x33 20M 1M" \
        -c "write -P 0 600M 64k" -c "write -P 0x34 700M 64k" "$img" >/dev/null
"$QEMU_IMG" snapshot -c s1 "$img"
"$QEMU_IO" -f qcow2 -c "write -P 0x44 0 1M" -c "write -P 0x55 30M 4M" "$img" >/dev/null
"$QEMU_IMG" snapshot -c s2 "$img"
"$QEMU_IO" -f qcow2 -c "write -P 0x66 40M 4M" -c "write -P 0 8M 64k" "$img" >/dev/null
expect_rc "snapshots: discard 4M of the active tree's own clusters" 0 "$DISCARD" "$img" qcow2 $((40 * M)):$((4 * M))
"$QEMU_IO" -f qcow2 -c "write -P 0x77 50M 128k" "$img" >/dev/null
snap_save snap "$img"
last_before=$("$QEMU_IMG" map -f qcow2 --output=json "$img" | "$PY" -c '
import json, sys
print(max(e["offset"] for e in json.load(sys.stdin) if e["data"]))')
size_before=$(stat -c %s "$img")
snap_compact snapshots snap "$img"
last=$("$QEMU_IMG" map -f qcow2 --output=json "$img" | "$PY" -c '
import json, sys
print(max(e["offset"] for e in json.load(sys.stdin) if e["data"]))')
expect_true "snapshots: the active tree's last cluster moved down ($last_before -> $last)" \
        test "$last" -lt "$last_before"
expect_true "snapshots: the file shrank ($size_before -> $(stat -c %s "$img"))" \
        test "$(stat -c %s "$img")" -lt "$size_before"
expect_rc "snapshots: vdisk-img check" 0 "$VDISK_IMG" check -f qcow2 "$img"

# 7. the snapshots' own tables and clusters move too (qemu-made, 64 KiB
# clusters): s0 over 4 MiB of data the active tree then overwrites (copied
# on write), s1 and s2 with writes between them (each write copies the
# active L2 table, so s1 and s2 each hold an L2 table alone, and 512 KiB of
# clusters written over), then s0 deleted: its 4 MiB and its tables leave
# a hole below both snapshots' L1 and L2 tables, their clusters and the
# snapshot table. After compact each of those tables lies lower, the file
# holds only referenced clusters (no hole) and ends at qemu-img check's
# image end offset, check clean, the active disk and each snapshot read as
# before, the snapshot list unchanged.
# snap_layout IMG: "SNAPSHOTS_OFFSET L1(s1) MAX_L2(s1) MAX_OWN(s1) L1(s2) ...":
# MAX_OWN, the last data cluster no other L1 table (the active one, another
# snapshot's) reaches
snap_layout() {
        "$PY" - "$1" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
be64 = lambda o: struct.unpack('>Q', d[o:o + 8])[0]
mask = 0x00fffffffffffe00
cs = 1 << struct.unpack('>I', d[20:24])[0]
def tree(l1, l1_size):
    l2s = [be64(l1 + 8 * i) & mask for i in range(l1_size)]
    return l2s, {be64(t + 8 * k) & mask for t in l2s if t for k in range(cs // 8)} - {0}
n, off = struct.unpack('>I', d[60:64])[0], be64(64)
out, l1s, trees = [off], [], [tree(be64(40), struct.unpack('>I', d[36:40])[0])]
for _ in range(n):
    l1, l1_size = be64(off), struct.unpack('>I', d[off + 8:off + 12])[0]
    id_len, name_len = struct.unpack('>HH', d[off + 12:off + 16])
    extra = struct.unpack('>I', d[off + 36:off + 40])[0]
    l1s.append(l1)
    trees.append(tree(l1, l1_size))
    off += (40 + extra + id_len + name_len + 7) & ~7
for i in range(1, n + 1):
    own = trees[i][1] - set().union(*(t[1] for j, t in enumerate(trees) if j != i))
    out += [l1s[i - 1], max(trees[i][0]), max(own, default=0)]
print(*out)
EOF
}
img=snaptab.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=64k "$img" 1G
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 4M" "$img" >/dev/null
"$QEMU_IMG" snapshot -c s0 "$img"
"$QEMU_IO" -f qcow2 -c "write -P 0x22 0 4M" -c "write -P 0x33 20M 1M" "$img" >/dev/null
"$QEMU_IMG" snapshot -c s1 "$img"
"$QEMU_IO" -f qcow2 -c "write -P 0x44 20M 512k" -c "write -P 0x45 30M 1M" "$img" >/dev/null
"$QEMU_IMG" snapshot -c s2 "$img"
"$QEMU_IO" -f qcow2 -c "write -P 0x55 30M 512k" -c "write -P 0x56 40M 1M" "$img" >/dev/null
"$QEMU_IMG" snapshot -d s0 "$img"
snap_save snaptab "$img"
read -r b_tab b_l1a b_l2a b_da b_l1b b_l2b b_db <<<"$(snap_layout "$img")"
size_before=$(stat -c %s "$img")
snap_compact "snapshot tables" snaptab "$img"
read -r tab l1a l2a da l1b l2b db <<<"$(snap_layout "$img")"
expect_true "snapshot tables: the snapshot table moved down ($b_tab -> $tab)" test "$tab" -lt "$b_tab"
expect_true "snapshot tables: s1's L1 table moved down ($b_l1a -> $l1a)" test "$l1a" -lt "$b_l1a"
expect_true "snapshot tables: s1's own L2 table moved down ($b_l2a -> $l2a)" test "$l2a" -lt "$b_l2a"
expect_true "snapshot tables: s1's last own cluster moved down ($b_da -> $da)" test "$da" -lt "$b_da"
expect_true "snapshot tables: s2's L1 table moved down ($b_l1b -> $l1b)" test "$l1b" -lt "$b_l1b"
expect_true "snapshot tables: s2's own L2 table moved down ($b_l2b -> $l2b)" test "$l2b" -lt "$b_l2b"
expect_true "snapshot tables: s2's last own cluster moved down ($b_db -> $db)" test "$db" -lt "$b_db"
expect_true "snapshot tables: the file shrank ($size_before -> $(stat -c %s "$img"))" \
        test "$(stat -c %s "$img")" -lt "$size_before"
end=$("$QEMU_IMG" check -f qcow2 --output=json "$img" | "$PY" -c 'import json, sys
print(json.load(sys.stdin)["image-end-offset"])')
expect_true "snapshot tables: the file ends at qemu-img check's image end offset ($end)" \
        test "$(stat -c %s "$img")" -eq "$end"
expect_rc "snapshot tables: vdisk-img check" 0 "$VDISK_IMG" check -f qcow2 "$img"


# 8. an image whose refcounts contradict its tables (a data cluster counted
# 0: qemu-img check calls it a corruption): compact could place another
# cluster over it, so it refuses before writing anything; after
# `check -r all` it compacts and checks clean
img=corrupt.qcow2
"$QEMU_IMG" create -q -f qcow2 "$img" 16M
"$QEMU_IO" -f qcow2 -c "write -P 0x61 0 1M" -c "write -P 0x62 4M 1M" "$img" >/dev/null
"$QEMU_IMG" convert -f qcow2 -O raw "$img" corrupt-before.raw
host=$("$QEMU_IMG" map -f qcow2 --output=json "$img" | "$PY" -c 'import json, sys
print(next(e["offset"] for e in json.load(sys.stdin) if e["data"]))')
"$PY" - "$img" "$host" <<'EOF'
import struct, sys
f = open(sys.argv[1], 'r+b')
h = f.read(104)
cs = 1 << struct.unpack('>I', h[20:24])[0]
reft = struct.unpack('>Q', h[48:56])[0]
bits = 1 << struct.unpack('>I', h[96:100])[0]
per = cs * 8 // bits
idx = int(sys.argv[2]) // cs
f.seek(reft + 8 * (idx // per))
rb = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(rb + (idx % per) * bits // 8)
f.write(bytes(bits // 8))
EOF
"$QEMU_IMG" check -f qcow2 "$img" >/dev/null 2>&1 && true
expect_eq "corrupt refcount: qemu-img check finds a corruption (exit 2)" "$?" 2
cp "$img" corrupt-copy.qcow2
vimg compact -f qcow2 "$img"
expect_eq "corrupt refcount: compact refuses" "$RC" 1
expect_true "... naming the repair" grep -q "check -r all" "$T/err"
expect_true "... before writing anything" cmp -s "$img" corrupt-copy.qcow2
expect_rc "corrupt refcount: check -r all" 0 "$VDISK_IMG" check -r all -f qcow2 "$img"
expect_rc "corrupt refcount: compact after the repair" 0 "$VDISK_IMG" compact -f qcow2 "$img"
expect_rc "corrupt refcount: qemu-img check clean after" 0 "$QEMU_IMG" check -f qcow2 "$img"
expect_rc "corrupt refcount: content unchanged" 0 "$QEMU_IMG" compare -f qcow2 -F raw "$img" corrupt-before.raw

finish
