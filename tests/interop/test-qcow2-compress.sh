#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vdisk-img convert -c (compressed clusters), checked by qemu-img 7.2:
#   - a mixed source (random, text, zeros, a low-entropy byte mix, a tail
#     that ends inside a cluster) into qcow2 v2 and v3, zlib and zstd,
#     cluster sizes 512, 64k and 2M: `qemu-img check` clean (no leaks, no
#     corruptions), `qemu-img compare` equal, compressed clusters in the map
#     and in check's count, the file smaller than the uncompressed convert;
#   - refcount_bits=1 (one compressed cluster per host cluster) and
#     extended L2;
#   - the output does not depend on the number of threads (VDISK_THREADS=1
#     and the default give the same bytes);
#   - qemu-made compressed images converted by vdisk-img -c compare equal;
#   - writes into vdisk's compressed clusters afterwards (qemu-io, and
#     vdisk-img convert -n) stay check-clean and read as written;
#   - QCOW v1 (zlib) -c: qemu-img reads it, qemu-io writes into it;
#   - -c -n into an existing qcow2: compressed clusters, check-clean, equal;
#     over an allocated cluster refused as qemu-img refuses it;
#   - -c into a format without compressed clusters is refused with
#     qemu-img's message and leaves no file behind.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

K=1024
M=$((1 << 20))

# mixed.raw: 64 KiB pieces cycling through random, text, zeros and a
# low-entropy mix; 6 MiB and a 10000-byte tail.
"$PY" - "$T/mixed.raw" "$T/other.raw" <<'EOF'
import random, sys
rnd = random.Random(12)
words = b"the quick brown fox jumps over a lazy dog while qemu and vdisk compress clusters ".split()
def piece(k):
    if k == 0:
        return rnd.randbytes(65536)
    if k == 1:
        out = bytearray()
        while len(out) < 65536:
            out += rnd.choice(words) + b" "
        return bytes(out[:65536])
    if k == 2:
        return bytes(65536)
    return bytes(b & 0x0f for b in rnd.randbytes(65536))
for name, shift in ((sys.argv[1], 0), (sys.argv[2], 1)):
    with open(name, "wb") as f:
        for i in range(96):
            f.write(piece((i + shift) % 4))
        f.write(piece(1)[:10000])
EOF

# compressed_entries IMAGE: map entries with data and no host offset (qemu
# gives no offset for compressed clusters)
compressed_entries() { compressed_entries_fmt "$1" qcow2; }
compressed_entries_fmt() {
        "$QEMU_IMG" map -f "$2" --output=json "$1" | "$PY" -c '
import json, sys
print(sum(1 for e in json.load(sys.stdin) if e["data"] and "offset" not in e))'
}

for compat in 0.10 1.1; do
        for ct in zlib zstd; do
                [[ $compat == 0.10 && $ct == zstd ]] && continue   # zstd needs v3
                for cs in 512 65536 2097152; do
                        d="compat=$compat $ct cluster_size=$cs"
                        o="compat=$compat,cluster_size=$cs"
                        [[ $ct == zstd ]] && o+=",compression_type=zstd"
                        rm -f c.qcow2 u.qcow2
                        vimg convert -c -O qcow2 -o "$o" mixed.raw c.qcow2
                        if [[ $RC -ne 0 ]]; then notok "$d: convert -c" "$(last_err)"; continue; fi
                        wcheck c.qcow2 mixed.raw "$d"
                        run "$QEMU_IMG" check -f qcow2 c.qcow2
                        expect_true "$d: qemu-img check counts compressed clusters" \
                                grep -Eq '[1-9][0-9.]*% compressed clusters' "$T/out"
                        n=$(compressed_entries c.qcow2)
                        expect_true "$d: the map shows compressed clusters ($n)" test "$n" -gt 0
                        if [[ $ct == zstd ]]; then
                                expect_eq "$d: compression type zstd" \
                                        "$("$QEMU_IMG" info -f qcow2 --output=json c.qcow2 | "$PY" -c '
import json, sys
print(json.load(sys.stdin)["format-specific"]["data"].get("compression-type"))')" zstd
                        fi
                        vimg convert -O qcow2 -o "compat=$compat,cluster_size=$cs" mixed.raw u.qcow2
                        cz=$(stat -c %s c.qcow2); uz=$(stat -c %s u.qcow2)
                        expect_true "$d: smaller than the uncompressed convert ($cz < $uz)" test "$cz" -lt "$uz"
                done
        done
done

# --- 1-bit refcounts: a host cluster holds one compressed cluster only;
# extended L2: compressed clusters carry no subcluster bits
for o in refcount_bits=1,cluster_size=512 refcount_bits=1,compression_type=zstd extended_l2=on; do
        rm -f c.qcow2
        vimg convert -c -O qcow2 -o "$o" mixed.raw c.qcow2
        if [[ $RC -ne 0 ]]; then notok "$o: convert -c" "$(last_err)"; continue; fi
        wcheck c.qcow2 mixed.raw "$o"
done

# --- the output does not depend on the threads
for ct in zlib zstd; do
        rm -f t1.qcow2 tn.qcow2
        run env VDISK_THREADS=1 "$VDISK_IMG" convert -c -O qcow2 -o "compression_type=$ct,cluster_size=4k" \
                mixed.raw t1.qcow2
        expect_eq "$ct: convert -c with one thread" "$RC" 0
        run env VDISK_THREADS=4 "$VDISK_IMG" convert -c -O qcow2 -o "compression_type=$ct,cluster_size=4k" \
                mixed.raw tn.qcow2
        expect_eq "$ct: convert -c with four threads" "$RC" 0
        expect_cmp "$ct: one thread and four write the same bytes" t1.qcow2 tn.qcow2
done

# --- qemu-made compressed images, converted by vdisk-img -c
for ct in zlib zstd; do
        rm -f q.qcow2 v.qcow2
        qimg convert -c -O qcow2 -o "compression_type=$ct" mixed.raw q.qcow2
        vimg convert -c -O qcow2 -o "compression_type=$ct" q.qcow2 v.qcow2
        if [[ $RC -ne 0 ]]; then notok "qemu-made $ct: convert -c" "$(last_err)"; continue; fi
        wcheck v.qcow2 mixed.raw "qemu-made $ct, converted -c by vdisk"
        qimg compare -f qcow2 -F qcow2 q.qcow2 v.qcow2
        expect_eq "qemu-made $ct and vdisk's copy compare equal" "$RC" 0
done

# --- writes into vdisk's compressed clusters afterwards
for ct in zlib zstd; do
        for cs in 512 65536; do
                d="$ct cluster_size=$cs"
                rm -f w.qcow2
                vimg convert -c -O qcow2 -o "compression_type=$ct,cluster_size=$cs" mixed.raw w.qcow2
                if [[ $RC -ne 0 ]]; then notok "$d: convert -c" "$(last_err)"; continue; fi
                # qemu-io: inside a compressed cluster, across several, and zeros
                run "$QEMU_IO" -f qcow2 -c "write -P 0x33 $((64 * K + 100)) 5000" \
                        -c "write -P 0x44 $((200 * K)) $((150 * K))" -c "write -z $((400 * K)) $((64 * K))" w.qcow2
                expect_eq "$d: qemu-io writes into compressed clusters" "$RC" 0
                cp mixed.raw ref.raw
                "$PY" - ref.raw $((64 * K + 100)) 5000 0x33 $((200 * K)) $((150 * K)) 0x44 \
                        $((400 * K)) $((64 * K)) 0 <<'EOF'
import sys
a = sys.argv[2:]
with open(sys.argv[1], "r+b") as f:
    for i in range(0, len(a), 3):
        off, n, b = int(a[i]), int(a[i + 1]), int(a[i + 2], 0)
        f.seek(off)
        f.write(bytes([b]) * n)
EOF
                wcheck w.qcow2 ref.raw "$d, qemu-io wrote into it"
                # vdisk-img rewrites every cluster (compressed ones freed)
                vimg convert -n -O qcow2 other.raw w.qcow2
                expect_eq "$d: vdisk-img convert -n over compressed clusters" "$RC" 0
                wcheck w.qcow2 other.raw "$d, rewritten by vdisk"
        done
done

# --- QCOW v1 (zlib): vdisk-img -c, qemu reads it and writes into it
rm -f v1.qcow u1.qcow q1.qcow v1b.qcow
vimg convert -c -O qcow mixed.raw v1.qcow
expect_eq "qcow v1: convert -c" "$RC" 0
qcompare mixed.raw raw v1.qcow qcow
n=$(compressed_entries_fmt v1.qcow qcow)
expect_true "qcow v1: the map shows compressed clusters ($n)" test "$n" -gt 0
vimg convert -O qcow mixed.raw u1.qcow
expect_true "qcow v1: smaller than the uncompressed convert" test "$(stat -c %s v1.qcow)" -lt "$(stat -c %s u1.qcow)"
run "$QEMU_IO" -f qcow -c "write -P 0x55 $((64 * K + 100)) 5000" v1.qcow
expect_eq "qcow v1: qemu-io writes into a compressed cluster" "$RC" 0
cp mixed.raw ref1.raw
"$PY" -c 'import sys; f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); f.write(b"\x55" * 5000)' \
        ref1.raw $((64 * K + 100))
qcompare ref1.raw raw v1.qcow qcow
qimg convert -c -O qcow mixed.raw q1.qcow
vimg convert -c -O qcow q1.qcow v1b.qcow
expect_eq "qcow v1: qemu-made compressed image converted -c" "$RC" 0
qcompare mixed.raw raw v1b.qcow qcow

# --- convert -c -n: compressed writes into an existing image (qemu's rule:
# only into clusters not allocated yet; a cluster that does not shrink is
# written plain)
sz=$(stat -c %s mixed.raw)
qimg create -f qcow2 n.qcow2 "$sz"
vimg convert -c -n -f raw -O qcow2 mixed.raw n.qcow2
expect_eq "-c -n into an empty qcow2" "$RC" 0
qcheck n.qcow2 qcow2
qcompare mixed.raw raw n.qcow2 qcow2
n=$(compressed_entries_fmt n.qcow2 qcow2)
expect_true "-c -n: the map shows compressed clusters ($n)" test "$n" -gt 0
qimg create -f qcow2 a.qcow2 "$sz"
run "$QEMU_IO" -f qcow2 -c "write -P 0x11 64k 64k" a.qcow2   # text there: it compresses
cp a.qcow2 a0.qcow2
expect_fail "-c -n over an allocated cluster refused" "$VDISK_IMG" convert -c -n -f raw -O qcow2 mixed.raw a.qcow2
expect_true "-c -n over an allocated cluster: the message names it" grep -q "is allocated" "$T/err"
expect_fail "qemu-img refuses it too" "$QEMU_IMG" convert -c -n -f raw -O qcow2 mixed.raw a0.qcow2
qcheck a.qcow2 qcow2
qimg create -f vdi n.vdi "$sz"
expect_fail "-c -n into a VDI refused" "$VDISK_IMG" convert -c -n -f raw -O vdi mixed.raw n.vdi
expect_true "-c -n into a VDI: qemu-img's message" grep -q "Compression not supported for this file format" "$T/err"

# --- formats without compressed clusters
for f in raw vdi vpc qed; do
        rm -f "no.$f"
        expect_fail "-c -O $f refused" "$VDISK_IMG" convert -c -O "$f" mixed.raw "no.$f"
        expect_true "-c -O $f: qemu-img's message" grep -q "Compression not supported for this file format" "$T/err"
        expect_true "-c -O $f: no file left" test ! -e "no.$f"
done
# VMDK streamOptimized compresses anyway
vimg convert -c -O vmdk -o subformat=streamOptimized mixed.raw s.vmdk
expect_eq "-c -O vmdk streamOptimized" "$RC" 0
qcompare mixed.raw raw s.vmdk vmdk

finish
