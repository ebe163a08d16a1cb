#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 images made by qemu-img read by vdisk-img (writing: see
# test-qcow2-write.sh):
#   - compat 0.10 and 1.1, cluster sizes 512, 4k, 64k, 2M, refcount_bits 1,
#     16, 64, lazy_refcounts (also left dirty), extended_l2 (subclusters over
#     a backing file), zlib and zstd compression (also mixed with plain
#     clusters, and an odd-sized last cluster), preallocation
#     metadata/falloc/full, an external data file (raw and not), backing
#     chains of depth 4 over raw, vmdk and qcow2, a 2 TiB sparse image:
#     each converts to raw byte-identically with qemu-img's own convert, and
#     `vdisk-img map --output=json` equals qemu-img's;
#   - the qcow2 images of ../shared/corpus/real read with their README
#     sha256 (skipped when the corpus is absent);
#   - a json: backing name, an unknown incompatible bit (named from the
#     feature table) and encryption are refused clearly; the corrupt bit
#     still reads; a resize checks clean.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((40 * M + 512 * 3))      # not a multiple of any cluster size above 512

mkpattern pat.raw "$SIZE"

# qread IMAGE DESC [MAPOPT]: vdisk-img reads IMAGE as qemu-img does, data and map.
qread() {
        local f=$1 desc=$2 mapopt=()
        [[ -n ${3:-} ]] && mapopt=("$3")
        "$QEMU_IMG" convert -f qcow2 -O raw "$f" ref.raw
        vimg convert -O raw "$f" out.raw
        if [[ $RC -eq 0 ]]; then expect_cmp "$desc: reads byte-identical" ref.raw out.raw
        else notok "$desc: reads byte-identical" "$(last_err)"; fi
        "$QEMU_IMG" map -f qcow2 --output=json "$f" >qmap.json
        vimg map --output=json "$f"
        if [[ $RC -ne 0 ]]; then notok "$desc: map" "$(last_err)"
        else
                cp "$T/out" vmap.json
                if py map-cmp qmap.json vmap.json "${mapopt[@]}" >"$T/mapdiff"; then ok "$desc: map equals qemu-img's"
                else notok "$desc: map equals qemu-img's" "$(head -c 600 "$T/mapdiff")"; fi
        fi
        rm -f ref.raw out.raw
}

# --- versions and cluster sizes
for compat in 0.10 1.1; do
        for cs in 512 4096 65536 2097152; do
                "$QEMU_IMG" convert -f raw -O qcow2 -o "compat=$compat,cluster_size=$cs" pat.raw "c-$compat-$cs.qcow2"
                qread "c-$compat-$cs.qcow2" "compat=$compat cluster_size=$cs"
        done
done

# --- refcount widths, lazy refcounts (clean and left dirty), zero clusters
for rb in 1 16 64; do
        "$QEMU_IMG" convert -f raw -O qcow2 -o "refcount_bits=$rb" pat.raw "rb-$rb.qcow2"
        qread "rb-$rb.qcow2" "refcount_bits=$rb"
done
"$QEMU_IMG" convert -f raw -O qcow2 -o lazy_refcounts=on pat.raw lazy.qcow2
# qemu-io's abort leaves the image dirty (bash's own "Aborted" notice stays in the subshell)
( "$QEMU_IO" -f qcow2 -c "write -P 0x33 $((2 * M)) 4096" -c "write -z 0 $((3 * M))" -c abort lazy.qcow2 \
        >/dev/null 2>&1 || true ) 2>/dev/null
vimg info --output=json lazy.qcow2
expect_eq "lazy_refcounts image left dirty: info says so" "$(py json-get "$T/out" dirty-flag 2>/dev/null)" true
qread lazy.qcow2 "lazy_refcounts, dirty" --no-offset
"$QEMU_IMG" convert -f raw -O qcow2 -o compat=0.10 pat.raw z2.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 0 $M" -c "write -z $((8 * M)) $((2 * M))" z2.qcow2 >/dev/null
qread z2.qcow2 "compat=0.10 zero writes"
"$QEMU_IMG" convert -f raw -O qcow2 pat.raw z3.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 0 $M" -c "write -z -u $((8 * M)) $((2 * M))" z3.qcow2 >/dev/null
qread z3.qcow2 "compat=1.1 zero clusters (with and without unmap)" --no-offset
# runs of unallocated and zero clusters (found by one scan of the L2 table)
# that end at a table's end and at the end of a disk whose last table and
# cluster are partial (4 KiB clusters: a table covers 2 MiB); check too
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=4096 runs.qcow2 $((5 * M + 7 * 512))
"$QEMU_IO" -f qcow2 -c "write -P 0x51 $((2 * M - 12288)) 4096" -c "write -z $((2 * M - 8192)) 8192" \
        -c "write -P 0x52 $((4 * M)) 4096" -c "write -z $((4 * M + 8192)) $((M + 7 * 512 - 8192))" \
        runs.qcow2 >/dev/null
qread runs.qcow2 "runs of zero and unallocated clusters to a table's end and the disk's"
vimg check runs.qcow2
if [[ $RC -eq 0 ]]; then ok "runs.qcow2: check finds nothing"; else notok "runs.qcow2: check finds nothing" "$(last_err)"; fi

# --- extended L2: subclusters, also partially written over a backing file
"$QEMU_IMG" convert -f raw -O qcow2 -o extended_l2=on pat.raw xl2.qcow2
qread xl2.qcow2 "extended_l2" --no-offset
"$QEMU_IMG" create -f qcow2 -o extended_l2=on,cluster_size=32768 -b pat.raw -F raw xl2d.qcow2 >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 0x41 4096 1024" -c "write -P 0x42 $((M + 1024)) 3000" \
        -c "write -z $((8 * M + 2048)) 4096" -c "write -z $((12 * M)) 65536" -c "write -P 0x43 $((33 * M)) 70000" \
        xl2d.qcow2 >/dev/null
qread xl2d.qcow2 "extended_l2 subclusters over a raw backing file" --no-offset

# --- compression: zlib, zstd, mixed with plain clusters, odd-sized last cluster
for ct in zlib zstd; do
        "$QEMU_IMG" convert -c -f raw -O qcow2 -o "compression_type=$ct" pat.raw "cz-$ct.qcow2"
        qread "cz-$ct.qcow2" "compressed $ct"
        cp "cz-$ct.qcow2" "mix-$ct.qcow2"
        "$QEMU_IO" -f qcow2 -c "write -P 0x77 $((8 * M + 4096)) 100000" -c "write -z $((12 * M)) $M" \
                "mix-$ct.qcow2" >/dev/null
        qread "mix-$ct.qcow2" "compressed $ct mixed with plain and zero clusters" --no-offset
done
"$QEMU_IMG" convert -c -f raw -O qcow2 -o cluster_size=4096 pat.raw cz-4k.qcow2
qread cz-4k.qcow2 "compressed, 4 KiB clusters"

# --- preallocation
for pa in metadata falloc full; do
        "$QEMU_IMG" convert -f raw -O qcow2 -o "preallocation=$pa" pat.raw "pa-$pa.qcow2"
        qread "pa-$pa.qcow2" "preallocation=$pa" --alloc
done

# --- external data file (names are resolved next to the image: run from here)
"$QEMU_IMG" convert -f raw -O qcow2 -o data_file=df.bin pat.raw df.qcow2
qread df.qcow2 "external data file" --no-offset
"$QEMU_IMG" convert -f raw -O qcow2 -o data_file=dfr.bin,data_file_raw=on pat.raw dfr.qcow2
qread dfr.qcow2 "external data file, data_file_raw" --no-offset
mv df.bin df-moved.bin
expect_fail "a missing data file is a clear error" "$VDISK_IMG" convert -O raw df.qcow2 out.raw
if grep -q "df.bin" "$T/err"; then ok "the error names the data file"; else notok "the error names the data file" "$(last_err)"; fi
mv df-moved.bin df.bin

# --- backing chains of depth 4 over raw, vmdk and qcow2
mkpattern base.raw "$SIZE" 7
"$QEMU_IMG" convert -f raw -O vmdk base.raw base.vmdk
"$QEMU_IMG" convert -f raw -O qcow2 -o cluster_size=4096 base.raw base.qcow2
for bf in raw vmdk qcow2; do
        parent=base.$bf pfmt=$bf
        for lvl in 1 2 3; do
                "$QEMU_IMG" create -f qcow2 -b "$parent" -F "$pfmt" "ch-$bf-$lvl.qcow2" >/dev/null
                "$QEMU_IO" -f qcow2 -c "write -P $((lvl + 16)) $(((lvl * 5) * M + lvl * 4096)) $((M + 777))" \
                        -c "write -z $((lvl * 3 * M)) 65536" "ch-$bf-$lvl.qcow2" >/dev/null
                parent=ch-$bf-$lvl.qcow2 pfmt=qcow2
        done
        qread "ch-$bf-3.qcow2" "chain of 4 over $bf"
done

# --- 2 TiB sparse: compared through a VDI copy (no 2 TiB raw file; qemu's
# VMDK block status would take minutes)
"$QEMU_IMG" create -f qcow2 big.qcow2 2T >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 1 0 65536" -c "write -P 2 $((1 << 40)) 4096" \
        -c "write -P 3 $(((2 << 40) - 65536)) 65536" big.qcow2 >/dev/null
vimg convert -O vdi big.qcow2 big.vdi
expect_eq "2 TiB sparse: converts" "$RC" 0
qcompare big.qcow2 qcow2 big.vdi vdi
"$QEMU_IMG" map -f qcow2 --output=json big.qcow2 >qmap.json
vimg map --output=json big.qcow2
cp "$T/out" vmap.json
if py map-cmp qmap.json vmap.json >/dev/null; then ok "2 TiB sparse: map equals qemu-img's"
else notok "2 TiB sparse: map equals qemu-img's"; fi

# --- refused or tolerated header bits, hostile backing names
"$QEMU_IMG" create -f qcow2 -b 'json:{"file":{"driver":"file","filename":"/etc/passwd"}}' -F raw -u js.qcow2 1M \
        >/dev/null
expect_fail "json: backing name refused" "$VDISK_IMG" convert -O raw js.qcow2 out.raw
if grep -qi "json" "$T/err"; then ok "the error says json:"; else notok "the error says json:" "$(last_err)"; fi

# Relative names with .. and absolute names are the resolver's business, as
# for every format: vdisk-img's path resolver follows them for parents (the
# companion resolver, for data files, refuses them: see above).
mkdir -p sub
"$QEMU_IMG" create -f qcow2 -b ../base.raw -F raw sub/up.qcow2 >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 0x61 $M 4096" sub/up.qcow2 >/dev/null
qread sub/up.qcow2 "a backing name with .. (resolved next to the image)"
"$QEMU_IMG" create -f qcow2 -b "$T/base.raw" -F raw abs.qcow2 >/dev/null
qread abs.qcow2 "an absolute backing name"
# (qemu resolves a new data file's name against its working directory)
(cd sub && "$QEMU_IMG" convert -f raw -O qcow2 -o data_file=../dfup.bin ../pat.raw dfup.qcow2)
expect_fail "a data file named with .. is refused" "$VDISK_IMG" convert -O raw sub/dfup.qcow2 out.raw
if grep -q "refusing" "$T/err"; then ok "the refusal says why"; else notok "the refusal says why" "$(last_err)"; fi

# an unknown incompatible bit (bit 20) that the feature table names
cp c-1.1-65536.qcow2 inc.qcow2
"$PY" - inc.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], 'r+b')
h = bytearray(f.read(65536))
hl = struct.unpack('>I', h[100:104])[0]
off = hl
while True:          # to the end-of-extensions marker
    t, l = struct.unpack('>II', h[off:off + 8])
    if t == 0:
        break
    off += 8 + (l + 7) // 8 * 8
name = b'frobnicated clusters'.ljust(46, b'\0')
ext = struct.pack('>II', 0x6803f857, 48) + bytes([0, 20]) + name
h[off:off + len(ext) + 8] = ext + b'\0' * 8
inc = struct.unpack('>Q', h[72:80])[0] | (1 << 20)
h[72:80] = struct.pack('>Q', inc)
f.seek(0); f.write(h)
EOF
expect_fail "an unknown incompatible bit is refused" "$VDISK_IMG" convert -O raw inc.qcow2 out.raw
if grep -q "frobnicated clusters" "$T/err"; then ok "the refusal names the feature"; else notok "the refusal names the feature" "$(last_err)"; fi

# the corrupt bit (1): read-only reads go on, as in qemu
cp c-1.1-65536.qcow2 corrupt.qcow2
"$PY" -c "
import struct, sys
f = open('corrupt.qcow2', 'r+b'); f.seek(72); v = struct.unpack('>Q', f.read(8))[0] | 2; f.seek(72); f.write(struct.pack('>Q', v))"
vimg convert -O raw corrupt.qcow2 out.raw
expect_eq "an image marked corrupt still reads" "$RC" 0
[[ $RC -eq 0 ]] && expect_cmp "an image marked corrupt reads its data" pat.raw out.raw
rm -f out.raw

# (a short LUKS iteration time; qemu-img without the crypto support skips this part, saying so)
qimg create -f qcow2 --object secret,id=s0,data=abc \
        -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100 enc.qcow2 1M
if [[ $RC -eq 0 ]]; then
        expect_fail "an encrypted image is refused" "$VDISK_IMG" convert -O raw enc.qcow2 out.raw
        if grep -qi "encrypt" "$T/err"; then ok "the refusal says encrypted"; else notok "the refusal says encrypted" "$(last_err)"; fi
else
        echo "# qemu-img could not make a LUKS qcow2 ($(last_err)): encryption case skipped"
fi
# resize (lib/backends/qcow2-space.c; test-qcow2-modify.sh does the rest)
before=$(qinfo c-1.1-65536.qcow2 qcow2 virtual-size)
expect_rc "resize +1M" 0 "$VDISK_IMG" resize c-1.1-65536.qcow2 +1M
expect_eq "resize +1M: the new virtual size" "$(qinfo c-1.1-65536.qcow2 qcow2 virtual-size)" "$((before + 1048576))"
qcheck c-1.1-65536.qcow2 qcow2

# --- the real images of ../shared/corpus/real
CORPUS=${VDISK_CORPUS:-$HERE/../../../shared/corpus/real}
if [[ -d $CORPUS ]] && command -v xz >/dev/null; then
        # csha FILE WANT: converts FILE (probed) and compares the sha256
        csha() {
                vimg convert -O raw "$1" out.raw
                if [[ $RC -ne 0 ]]; then notok "corpus $1: reads" "$(last_err)"; return; fi
                expect_eq "corpus $1: sha256 of the content" "$(sha256sum out.raw | cut -d' ' -f1)" "$2"
                rm -f out.raw
        }
        D=$CORPUS/dissect-hypervisor/qcow2
        if [[ -d $D ]]; then
                for f in basic basic-zstd data-file backing-chain-1 backing-chain-2 backing-chain-3 snapshot; do
                        xz -dc "$D/$f.qcow2.xz" >"$f.qcow2"
                done
                xz -dc "$D/data-file.bin.xz" >data-file.bin
                csha basic.qcow2 3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f
                csha basic-zstd.qcow2 3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f
                csha data-file.qcow2 3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f
                csha backing-chain-1.qcow2 186334af67c1acb54b08ded0b6a419571000755d4c810c8b768a30281e2ab074
                csha backing-chain-2.qcow2 8e2e850f2a31828f6f053f70f1fbfa71a42ce0571c6d8cd2a7ca0e21e1db8341
                csha backing-chain-3.qcow2 4a57a3a5c273c7c1144743ecafc7b23181f6e23c8abad104493a63a3599bd276
                csha snapshot.qcow2 9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767
                vimg info snapshot.qcow2
                if grep -q "you can't see me" "$T/out" && grep -q confused "$T/out"; then
                        ok "corpus snapshot.qcow2: info lists both snapshots"
                else
                        notok "corpus snapshot.qcow2: info lists both snapshots" "$(head -c 400 "$T/out")"
                fi
                rm -f ./*.qcow2 data-file.bin
        fi
        D=$CORPUS/dfvfs
        if [[ -d $D ]]; then
                xz -dc "$D/ext2.qcow2.xz" >ext2.qcow2
                csha ext2.qcow2 a6c2f0e39afe6c6ab432ca5465349fcefe8dc944398e97b2d957d3f89dbb5d80
                xz -dc "$D/windows_volume.qcow2.xz" >wv.qcow2
                csha wv.qcow2 44abe9deca9658f331a2bdba2deb53192d04f35d157a1fb3ba0597b03f0524f2
                xz -dc "$D/vsstest.qcow2.xz" >vss.qcow2
                csha vss.qcow2 5cba558cfac0916cae697d2231dc1e17874aa262f2890f5236fb9c90b9610d0a
                rm -f ext2.qcow2 wv.qcow2 vss.qcow2
        fi
else
        echo "# no real-image corpus at $CORPUS: corpus part skipped"
fi

finish
