#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 images written by vdisk-img, read and checked by qemu-img 7.2:
#   - vdisk-img convert -O qcow2 for compat 0.10/1.1 x cluster sizes 512,
#     4k, 64k, 2M x refcount_bits 1/16/64 (refcount table growth with 512-byte
#     clusters), extended_l2, lazy_refcounts, zstd, preallocation=metadata:
#     `qemu-img check` clean (no leaks, no corruptions) and `qemu-img compare`
#     equal to the source;
#   - vdisk-img create, then convert -n writes into it; qemu-io writes into a
#     vdisk-made image and vdisk reads it back;
#   - qemu-made images (v2, v3, 512-byte clusters with 1-bit refcounts,
#     extended L2; with qemu's zero clusters) and compressed ones (zlib/zstd,
#     host clusters shared) written by vdisk-img stay clean and read as
#     written;
#   - diffs (create -b; v3, v3 with extended L2, v2) over raw, vdi and qcow2
#     parents: every other 64 KiB written, a few KiB inside a cluster
#     (subclusters with extended L2), explicit zeros over parent data (T14),
#     read by qemu-img with their parent; the parent left alone;
#   - lazy_refcounts: the dirty bit is clear after a clean close; a dirty
#     image (qemu-io abort) reads as is and gets its refcounts rebuilt before
#     vdisk writes it; a corrupt-marked image is refused writable;
#   - vdisk-img check finds a leak and a missing refcount as qemu-img does,
#     and check -r all repairs them.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((12 * M + 512 * 3))

mkpattern pat.raw "$SIZE"
mkpattern pat2.raw "$SIZE" 2

# --- convert -O qcow2: the option matrix
for compat in 0.10 1.1; do
        for cs in 512 4096 65536 2097152; do
                for rb in 1 16 64; do
                        [[ $compat == 0.10 && $rb != 16 ]] && continue
                        d="compat=$compat cluster_size=$cs refcount_bits=$rb"
                        rm -f m.qcow2
                        vimg convert -O qcow2 -o "compat=$compat,cluster_size=$cs,refcount_bits=$rb" pat.raw m.qcow2
                        if [[ $RC -ne 0 ]]; then notok "$d: convert" "$(last_err)"; continue; fi
                        wcheck m.qcow2 pat.raw "$d"
                        # and written again in place: every cluster rewritten, zeros over data
                        vimg convert -n -O qcow2 pat2.raw m.qcow2
                        if [[ $RC -ne 0 ]]; then notok "$d: convert -n" "$(last_err)"; continue; fi
                        wcheck m.qcow2 pat2.raw "$d, rewritten"
                done
        done
done
expect_eq "512-byte clusters: the refcount table moved (grew)" \
        "$("$PY" -c 'import struct,sys; d=open(sys.argv[1],"rb").read(60); print(struct.unpack(">Q",d[48:56])[0] > 512)' m.qcow2)" True
for o in extended_l2=on,cluster_size=65536 extended_l2=on,cluster_size=16384 lazy_refcounts=on \
         compression_type=zstd "extended_l2=on,refcount_bits=1,cluster_size=2097152"; do
        rm -f m.qcow2
        vimg convert -O qcow2 -o "$o" pat.raw m.qcow2
        if [[ $RC -ne 0 ]]; then notok "$o: convert" "$(last_err)"; continue; fi
        wcheck m.qcow2 pat.raw "$o"
done
# incompatible features at byte 72 (u64 BE): bit 0 dirty, bit 1 corrupt
incompat() { "$PY" -c 'import struct,sys; print(struct.unpack(">Q", open(sys.argv[1],"rb").read(80)[72:80])[0])' "$1"; }
rm -f m.qcow2
vimg convert -O qcow2 -o lazy_refcounts=on pat.raw m.qcow2
expect_eq "lazy_refcounts: the dirty bit is clear after close" "$(incompat m.qcow2)" 0
expect_fail "compat=0.10 with lazy_refcounts is refused" \
        "$VDISK_IMG" convert -O qcow2 -o compat=0.10,lazy_refcounts=on pat.raw bad1.qcow2
expect_fail "extended_l2 with 4k clusters is refused" \
        "$VDISK_IMG" convert -O qcow2 -o extended_l2=on,cluster_size=4096 pat.raw bad2.qcow2
expect_fail "refcount_bits=3 is refused" "$VDISK_IMG" convert -O qcow2 -o refcount_bits=3 pat.raw bad3.qcow2

# --- preallocation=metadata: every cluster mapped at create (sparse), then written
for o in "" ,extended_l2=on ,cluster_size=512,refcount_bits=1 ,compat=0.10; do
        rm -f pm.qcow2
        vimg create -f qcow2 -o "preallocation=metadata$o" pm.qcow2 "$SIZE"
        if [[ $RC -ne 0 ]]; then notok "preallocation=metadata$o: create" "$(last_err)"; continue; fi
        expect_rc "preallocation=metadata$o: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 pm.qcow2
        vimg convert -n -O qcow2 pat.raw pm.qcow2
        if [[ $RC -ne 0 ]]; then notok "preallocation=metadata$o: convert -n" "$(last_err)"; continue; fi
        wcheck pm.qcow2 pat.raw "preallocation=metadata$o, written"
done
# falloc/full: metadata, then the clusters' space allocated / written (the
# comparison with qemu-img's images is in test-prealloc.sh)
for m in falloc full; do
        vimg create -f qcow2 -o "preallocation=$m" pf.qcow2 1M
        if [[ $RC -eq 0 ]]; then ok "preallocation=$m: created"; else notok "preallocation=$m: created" "$(last_err)"; fi
        expect_rc "preallocation=$m: qemu-img check clean" 0 "$QEMU_IMG" check -f qcow2 pf.qcow2
        rm -f pf.qcow2
done

# --- vdisk-img create, then writes; qemu-io writes into vdisk's image
vimg create -f qcow2 -o cluster_size=4096 c.qcow2 "$SIZE"
expect_rc "vdisk-img create -f qcow2" 0 true
qcheck c.qcow2 qcow2
vimg convert -n -O qcow2 pat.raw c.qcow2
wcheck c.qcow2 pat.raw "vdisk-made, written with convert -n"
"$QEMU_IO" -f qcow2 -c "write -P 0x77 $((2 * M + 512)) 70000" -c "write -z $((8 * M)) $((M + 4096))" c.qcow2 >/dev/null
"$QEMU_IMG" convert -f qcow2 -O raw c.qcow2 ref.raw
vimg convert -O raw c.qcow2 out.raw
expect_cmp "qemu-io writes into a vdisk-made image; vdisk reads them" out.raw ref.raw
vimg convert -n -O qcow2 pat2.raw c.qcow2
wcheck c.qcow2 pat2.raw "vdisk writes after qemu-io's"

# --- qemu-made images written by vdisk-img
for o in compat=0.10 compat=1.1 "refcount_bits=1,cluster_size=512" extended_l2=on; do
        rm -f q.qcow2
        "$QEMU_IMG" convert -f raw -O qcow2 -o "$o" pat.raw q.qcow2
        "$QEMU_IO" -f qcow2 -c "write -z $((4 * M)) $((2 * M))" -c "write -P 9 $((11 * M)) 4096" q.qcow2 >/dev/null
        vimg convert -n -O qcow2 pat2.raw q.qcow2
        if [[ $RC -ne 0 ]]; then notok "qemu-made $o: convert -n" "$(last_err)"; continue; fi
        wcheck q.qcow2 pat2.raw "qemu-made ($o) written by vdisk"
done
for ct in zlib zstd; do
        for cs in 4096 65536; do
                rm -f z.qcow2
                "$QEMU_IMG" convert -c -f raw -O qcow2 -o "compression_type=$ct,cluster_size=$cs" pat.raw z.qcow2
                vimg convert -n -O qcow2 pat2.raw z.qcow2
                if [[ $RC -ne 0 ]]; then notok "compressed $ct $cs: convert -n" "$(last_err)"; continue; fi
                wcheck z.qcow2 pat2.raw "qemu-compressed ($ct, $cs) rewritten by vdisk"
        done
done

# --- diffs over raw, vdi and qcow2 parents
"$PY" - pat.raw pat2.raw mixed.raw <<'PYEOF'
import sys
b = open(sys.argv[1], 'rb').read(); p = open(sys.argv[2], 'rb').read()
out = bytearray(b)
for off in range(0, len(p), 128 * 1024):
    out[off:off + 65536] = p[off:off + 65536]
# a few KiB inside a cluster that otherwise shows the parent
out[5 * 1024 * 1024 + 65536 + 1000:5 * 1024 * 1024 + 65536 + 7000] = p[5 * 1024 * 1024 + 65536 + 1000:5 * 1024 * 1024 + 65536 + 7000]
# explicit zeros over the parent's data (T14), one not cluster-aligned
out[8 * 1024 * 1024:9 * 1024 * 1024] = bytes(1024 * 1024)
out[11 * 1024 * 1024 + 4096:11 * 1024 * 1024 + 12288] = bytes(8192)
assert len(out) == len(b)
open(sys.argv[3], 'wb').write(out)
PYEOF
cp pat.raw base.raw
"$QEMU_IMG" convert -f raw -O vdi pat.raw base.vdi
"$QEMU_IMG" convert -f raw -O qcow2 pat.raw base.qcow2
for pf in raw vdi qcow2; do
        for o in "" extended_l2=on compat=0.10; do
                d="diff over $pf${o:+ ($o)}"
                rm -f diff.qcow2
                vimg create -f qcow2 ${o:+-o "$o"} -b "base.$pf" -F "$pf" diff.qcow2
                if [[ $RC -ne 0 ]]; then notok "$d: create" "$(last_err)"; continue; fi
                vimg convert -n -O qcow2 mixed.raw diff.qcow2
                if [[ $RC -ne 0 ]]; then notok "$d: convert -n" "$(last_err)"; continue; fi
                wcheck diff.qcow2 mixed.raw "$d"
                expect_eq "$d: qemu sees the backing format" "$(qinfo diff.qcow2 qcow2 backing-filename-format)" "$pf"
                run "$QEMU_IMG" compare -f raw -F "$pf" pat.raw "base.$pf"
                expect_eq "$d: the parent is unchanged" "$RC" 0
        done
done

# --- dirty and corrupt images: read, not written
"$QEMU_IMG" convert -f raw -O qcow2 -o lazy_refcounts=on pat.raw dirty.qcow2
( "$QEMU_IO" -f qcow2 -c "write -P 0x33 $((2 * M)) 4096" -c abort dirty.qcow2 >/dev/null 2>&1 ) 2>/dev/null || true
expect_eq "qemu-io left the image dirty" "$(( $(incompat dirty.qcow2) & 1 ))" 1
expect_rc "a dirty image reads" 0 "$VDISK_IMG" convert -O raw dirty.qcow2 out.raw
expect_eq "a read-only open leaves it dirty" "$(( $(incompat dirty.qcow2) & 1 ))" 1
vimg convert -n -O qcow2 pat2.raw dirty.qcow2
if [[ $RC -ne 0 ]]; then notok "a dirty image: refcounts rebuilt, then written" "$(last_err)"
else wcheck dirty.qcow2 pat2.raw "a dirty image: refcounts rebuilt, then written"; fi
expect_eq "the dirty bit is clear after vdisk's writes" "$(( $(incompat dirty.qcow2) & 1 ))" 0
# check: vdisk-img check finds a leak and a missing refcount as qemu-img does, and repairs them
rm -f lk.qcow2
vimg convert -O qcow2 -o cluster_size=4096 pat.raw lk.qcow2
"$PY" - lk.qcow2 <<'PYEOF'
import struct, sys
f = open(sys.argv[1], 'r+b'); d = f.read(64)
reft = struct.unpack('>Q', d[48:56])[0]; f.seek(reft); rb = struct.unpack('>Q', f.read(8))[0]
f.seek(rb + 2 * 5); f.write(struct.pack('>H', 2))   # leak
f.seek(rb + 2 * 4); f.write(struct.pack('>H', 0))   # referenced, refcount 0
PYEOF
run "$VDISK_IMG" check lk.qcow2
expect_eq "vdisk-img check: corruption found (exit 2)" "$RC" 2
expect_true "vdisk-img check reports 1 leaked cluster" grep -q "^1 leaked clusters" "$T/out"
expect_rc "vdisk-img check -r all repairs" 0 "$VDISK_IMG" check -r all lk.qcow2
qcheck lk.qcow2 qcow2
"$QEMU_IMG" convert -f raw -O qcow2 pat.raw corrupt.qcow2
"$PY" - corrupt.qcow2 <<'PYEOF'
import sys
f = open(sys.argv[1], 'r+b'); f.seek(79); b = f.read(1); f.seek(79); f.write(bytes([b[0] | 2]))
PYEOF
expect_fail "a corrupt-marked image is refused writable" "$VDISK_IMG" convert -n -O qcow2 pat2.raw corrupt.qcow2

finish
