#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# VMDK both ways against qemu-img:
#   - every subformat qemu-img creates (monolithicSparse, monolithicFlat,
#     twoGbMaxExtentSparse/Flat, streamOptimized; zeroed_grain, compat6,
#     hwversion, adapter types) converts to raw with vdisk-img byte for byte;
#   - every subformat vdisk-img creates (streamOptimized by convert) passes `qemu-img check` and
#     `qemu-img compare`, including writes into an existing image, a size
#     that is not a grain multiple and a split image of three extents;
#   - diffs: a vdisk-made diff (convert -B) is read by qemu-img with its
#     parent; a qemu-made diff is read by vdisk-img with its parent;
#   - the real VMDKs of ../shared/corpus/real read with their README sha256
#     (skipped when the corpus is absent), afl9.vmdk is refused;
#   - hostile descriptors (extent names with .. or absolute) are refused.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((40 * M + 512 * 3))      # not a multiple of the 64 KiB grain

mkpattern pat.raw "$SIZE"

# --- qemu-img creates, vdisk-img reads
for spec in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized \
            "monolithicSparse,zeroed_grain=on" "monolithicSparse,compat6=on" \
            "monolithicSparse,hwversion=8" "monolithicFlat,adapter_type=lsilogic"; do
        name=q-${spec//[,=]/_}.vmdk
        "$QEMU_IMG" convert -f raw -O vmdk -o "subformat=$spec" pat.raw "$name"
        vimg convert -O raw "$name" out.raw
        if [[ $RC -eq 0 ]]; then expect_cmp "qemu-made $spec reads byte-identical" pat.raw out.raw
        else notok "qemu-made $spec reads byte-identical" "$(last_err)"; fi
        rm -f out.raw
done

# zeroed-grain entries over data: qemu writes them for write -z on zeroed_grain images
"$QEMU_IMG" convert -f raw -O vmdk -o zeroed_grain=on pat.raw qz.vmdk
"$QEMU_IO" -f vmdk -c "write -z 0 $M" -c "write -z $((8 * M)) $M" qz.vmdk >/dev/null
"$QEMU_IMG" convert -f vmdk -O raw qz.vmdk qz-ref.raw
vimg convert -O raw qz.vmdk qz.raw
expect_cmp "zeroed-grain GTEs read as zeros" qz-ref.raw qz.raw

# --- vdisk-img creates, qemu-img checks and compares
for sf in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
        vimg convert -O vmdk -o subformat=$sf pat.raw "v-$sf.vmdk"
        expect_eq "vdisk-img convert to $sf" "$RC" 0
        qcheck "v-$sf.vmdk" vmdk
        qcompare pat.raw raw "v-$sf.vmdk" vmdk
done
vimg convert -O raw v-streamOptimized.vmdk so.raw
expect_cmp "vdisk-made streamOptimized reads back" pat.raw so.raw

# Grains deflate cannot shrink are stored (stored deflate blocks), the rest
# deflated: 1 MiB of random bytes, 1 MiB of text, a grain half random and
# half text. Both tools read it back; the random MiB takes its full size, the
# text shrinks (the output stays below random + a third of the rest).
python3 - mix.raw <<'PYEOF'
import random, sys
rng = random.Random(7)
words = [bytes(rng.choice(b'abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randrange(2, 9))) for _ in range(500)]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b' '
    return bytes(out[:n])
with open(sys.argv[1], 'wb') as f:
    f.write(rng.randbytes(1 << 20) + text(1 << 20) + rng.randbytes(32768) + text(32768))
    f.truncate(4 << 20)
PYEOF
vimg convert -O vmdk -o subformat=streamOptimized mix.raw v-mix.vmdk
expect_eq "vdisk-img convert of mixed grains to streamOptimized" "$RC" 0
qcheck v-mix.vmdk vmdk
qcompare mix.raw raw v-mix.vmdk vmdk
vimg convert -O raw v-mix.vmdk mix-back.raw
expect_cmp "vdisk-made streamOptimized of mixed grains reads back" mix.raw mix-back.raw
# The first grain (random) begins, after its 12-byte marker, with a zlib
# header and a stored block of 65535 bytes: 78 01 00 ff ff 00 00.
over=$(od -An -tu8 -j64 -N8 v-mix.vmdk | tr -d ' ')
expect_eq "a random grain is a stored deflate block" \
        "$(od -An -tx1 -j$((over * 512 + 12)) -N7 v-mix.vmdk | tr -d ' ')" "780100ffff0000"
mix_size=$(stat -c %s v-mix.vmdk)
# Stored, the 17 grains holding text would take 17 x 66048 bytes more.
expect_true "text grains are deflated ($mix_size bytes < 1 MiB + 768 KiB)" test "$mix_size" -lt $(((1 << 20) + 768 * 1024))
expect_fail "an existing streamOptimized image is not written" "$VDISK_IMG" convert -n -O vmdk pat.raw v-streamOptimized.vmdk
vimg convert -O vmdk -o zeroed_grain=on,adapter_type=lsilogic,hwversion=6 pat.raw v-zg.vmdk
qcheck v-zg.vmdk vmdk
qcompare pat.raw raw v-zg.vmdk vmdk
expect_eq "zeroed_grain makes a version 2 header" "$(od -An -tu4 -j4 -N4 v-zg.vmdk | tr -d ' ')" 2

# Grain tables on demand: an empty 2 TiB image holds no grain tables; writes
# allocate them (in both directories); qemu-img reads and checks the result.
vimg create -f vmdk -o gt_on_demand=on od-big.vmdk 2T
expect_eq "gt_on_demand: an empty 2 TiB monolithicSparse is under 1 MiB" "$(( $(stat -c %s od-big.vmdk) < M ))" 1
qcheck od-big.vmdk vmdk
rm -f od-big.vmdk
for sf in monolithicSparse twoGbMaxExtentSparse; do
        vimg create -f vmdk -o "subformat=$sf,gt_on_demand=on" "od-$sf.vmdk" "$SIZE"
        vimg convert -n -O vmdk pat.raw "od-$sf.vmdk"
        expect_eq "gt_on_demand $sf: vdisk-img writes into it" "$RC" 0
        qcheck "od-$sf.vmdk" vmdk
        qcompare pat.raw raw "od-$sf.vmdk" vmdk
done
# a GD entry of 0 in a qemu-made image (what VirtualBox may leave): vdisk-img
# allocates the table, qemu-img reads the result
"$QEMU_IMG" create -f vmdk -q od-q.vmdk "$SIZE"
python3 - od-q.vmdk <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    rgd, gd = struct.unpack_from('<QQ', f.read(512), 48)
    for d in (rgd, gd):
        f.seek(d * 512)
        f.write(b'\0' * 4)
PY
vimg convert -n -O vmdk pat.raw od-q.vmdk
expect_eq "a grain table missing from both directories is allocated" "$RC" 0
qcheck od-q.vmdk vmdk
qcompare pat.raw raw od-q.vmdk vmdk

# Resize: every writable subformat grows (from a size that is no grain
# multiple; monolithicSparse to 5 GiB: its GD outgrows its sector and moves), qemu-img checks it and
# reads the old content and zeros after it; qemu writes into the new range of
# a monolithicSparse (preallocated GTs there); shrink back (twoGbMaxExtent*
# past its last extent: test-vmdk-extents.sh).
for sf in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
        vimg convert -O vmdk -o "subformat=$sf" pat.raw "rs-$sf.vmdk"
        case $sf in     # the GD outgrows its sector past 4 GiB
        monolithicSparse) big=$((5 << 30)) ;;
        twoGbMaxExtentSparse) big=$((2 << 30)) ;;
        *) big=$((300 * M)) ;;
        esac
        vimg resize "rs-$sf.vmdk" "$big"
        expect_eq "resize $sf to $big" "$RC" 0
        qcheck "rs-$sf.vmdk" vmdk
        cp pat.raw rs.raw && truncate -s "$big" rs.raw
        qcompare rs.raw raw "rs-$sf.vmdk" vmdk
        vimg resize --shrink "rs-$sf.vmdk" "$SIZE"
        expect_eq "shrink $sf back to $SIZE" "$RC" 0
        qcheck "rs-$sf.vmdk" vmdk
        qcompare pat.raw raw "rs-$sf.vmdk" vmdk
        rm -f rs.raw
done
vimg resize rs-monolithicSparse.vmdk 3G
"$QEMU_IO" -f vmdk -c "write -P 0x5a $((2900 * M)) $M" rs-monolithicSparse.vmdk >/dev/null
qcheck rs-monolithicSparse.vmdk vmdk
vimg convert -O raw rs-monolithicSparse.vmdk rs.raw
expect_eq "qemu writes into the grown range; vdisk-img reads it" \
        "$(dd if=rs.raw bs=1M skip=2900 count=1 status=none | tr -d Z | wc -c)" 0   # 0x5a is 'Z'
expect_eq "the old content is kept" "$(head -c "$SIZE" rs.raw | cmp - pat.raw && echo same)" same
rm -f rs.raw rs-*

# map and "disk size" of multi-file images: data past the first 2 GiB extent,
# JSON and human output (which names each extent's file) equal to qemu-img's;
# the disk size counts every file.
truncate -s $((3 << 30)) mx.raw
dd if=pat.raw of=mx.raw bs=1M count=5 conv=notrunc status=none
dd if=pat.raw of=mx.raw bs=1M count=2 seek=2100 conv=notrunc status=none
for sf in twoGbMaxExtentSparse twoGbMaxExtentFlat monolithicFlat; do
        "$QEMU_IMG" convert -f raw -O vmdk -o "subformat=$sf" mx.raw "mx-$sf.vmdk"
        for o in json human; do
                expect_eq "map --output=$o of a qemu-made $sf equals qemu-img's" \
                        "$("$VDISK_IMG" map --output=$o -f vmdk "mx-$sf.vmdk" 2>&1)" \
                        "$("$QEMU_IMG" map --output=$o -f vmdk "mx-$sf.vmdk" 2>&1)"
        done
        sync mx-"$sf"*.vmdk     # st_blocks settle at writeback (ext4 extent blocks)
        expect_eq "disk size of $sf counts every file" \
                "$("$VDISK_IMG" info --output=json "mx-$sf.vmdk" | grep '"actual-size"')" \
                "$("$QEMU_IMG" info --output=json "mx-$sf.vmdk" | grep '"actual-size"')"
done
# info's format-specific section is qemu-img's (cid, parent cid, create type,
# extents), which tools read to vet a VMDK's create type: the human output
# equals qemu-img's, and every key qemu-img gives in JSON is there, the same
"$QEMU_IMG" convert -f raw -O vmdk -o subformat=streamOptimized pat.raw mx-streamOptimized.vmdk
"$QEMU_IMG" create -q -f vmdk -b mx-twoGbMaxExtentSparse.vmdk -F vmdk mx-diff.vmdk
for f in mx-twoGbMaxExtentSparse mx-twoGbMaxExtentFlat mx-monolithicFlat mx-streamOptimized mx-diff; do
        expect_eq "info of a qemu-made $f equals qemu-img's" \
                "$("$VDISK_IMG" info "$f.vmdk" 2>&1 | grep -v '^backing file format')" \
                "$("$QEMU_IMG" info "$f.vmdk" 2>&1 | grep -v '^backing file format')"
        "$QEMU_IMG" info --output=json "$f.vmdk" >iq.json
        "$VDISK_IMG" info --output=json "$f.vmdk" >iv.json
        expect_true "info --output=json of a qemu-made $f has qemu-img's format-specific data" "$PY" -c '
import json, sys
q = json.load(open(sys.argv[1]))["format-specific"]["data"]
v = json.load(open(sys.argv[2]))["format-specific"]["data"]
sys.exit(any(v.get(k) != q[k] for k in q))' iq.json iv.json
done
rm -f mx.raw mx-*

# Check and repair of images corrupted here: the redundant GT disagreeing,
# a grain past the end of the file, two grains on the same sectors, a grain
# table in the redundant directory only, garbage past the last grain.
# vdisk-img check finds each, `check -r all` fixes them following the primary
# tables (lost grains read unallocated), and qemu-img check then passes.
"$PY" -c 'import random, sys; random.seed(11); sys.stdout.buffer.write(random.randbytes(36 << 20))' > rp.raw
vimg convert -O vmdk rp.raw rp.vmdk
"$PY" - rp.vmdk <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    rgd, gd = struct.unpack_from('<QQ', f.read(512), 48)
    def get(sec, i):
        f.seek(sec * 512 + 4 * i)
        return struct.unpack('<I', f.read(4))[0]
    def put(sec, i, v):
        f.seek(sec * 512 + 4 * i)
        f.write(struct.pack('<I', v))
    gt, rgt = get(gd, 0), get(rgd, 0)
    put(rgt, 0, get(gt, 0) + 128 * 7)            # redundant disagrees
    for t in (gt, rgt):
        put(t, 1, 0x7fffff00)                    # past the end of the file
        put(t, 3, get(gt, 2))                    # on grain 2's sectors
    put(rgd, 1, 0)                               # GT 1: in the primary GD only
    f.seek(0, 2)
    f.write(b'x' * 200000)                       # a leaked tail
PY
vimg check rp.vmdk
expect_eq "check finds the corruptions (exit 2)" "$RC" 2
expect_eq "check names the 3 corruptions" \
        "$("$VDISK_IMG" check rp.vmdk 2>&1 | grep -c 'is at sector\|not within\|overlaps')" 3
expect_eq "check names the grain table missing from the redundant GD" \
        "$("$VDISK_IMG" check rp.vmdk 2>&1 | grep -c 'in the primary grain directory only')" 1
expect_fail "qemu-img check fails on the corrupted image" "$QEMU_IMG" check -f vmdk rp.vmdk
vimg check -r all rp.vmdk
expect_eq "check -r all repairs" "$RC" 0
vimg check rp.vmdk
expect_eq "vdisk-img check is clean after repair" "$RC" 0
qcheck rp.vmdk vmdk
# what reads: grains 1 and 3 lost (zeros), every other grain as written
"$PY" - rp.raw rp-want.raw <<'PY'
import sys
d = bytearray(open(sys.argv[1], 'rb').read())
for g in (1, 3):
    d[g * 65536:(g + 1) * 65536] = bytes(65536)
open(sys.argv[2], 'wb').write(d)
PY
qcompare rp-want.raw raw rp.vmdk vmdk
rm -f rp.raw rp-want.raw rp.vmdk

# Writes into an existing image (create, then convert -n).
vimg create -f vmdk e.vmdk "$SIZE"
vimg convert -n -O vmdk pat.raw e.vmdk
expect_eq "vdisk-img writes into an existing monolithicSparse" "$RC" 0
qcheck e.vmdk vmdk
qcompare pat.raw raw e.vmdk vmdk

# A split image of three extents, sparse: only the metadata is written.
vimg create -f vmdk -o subformat=twoGbMaxExtentSparse big.vmdk 5G
expect_eq "three extents created" "$(ls big-s00?.vmdk | wc -l)" 3
"$QEMU_IO" -f vmdk -c "write -P 0x61 $((2048 * M - 4096)) 8192" -c "write -P 0x62 $((5120 * M - 512)) 512" \
        big.vmdk >/dev/null
# The same writes into a sparse raw file; qemu-img compare skips what both
# say is zero, so this reads only the written grains.
truncate -s 5G big-ref.raw
"$QEMU_IO" -f raw -c "write -P 0x61 $((2048 * M - 4096)) 8192" -c "write -P 0x62 $((5120 * M - 512)) 512" \
        big-ref.raw >/dev/null
vimg convert -O raw big.vmdk big.raw
expect_eq "split image converts" "$RC" 0
qcompare big-ref.raw raw big.raw raw
vimg compare -f vmdk -F raw big.vmdk big-ref.raw
expect_eq "vdisk-img compare split image with the raw reference" "$RC" 0
rm -f big.raw big-ref.raw

# --- diffs
"$QEMU_IMG" convert -f raw -O vmdk pat.raw base.vmdk
mkpattern pat2.raw "$SIZE" 2
# pat2 differs from pat in parts; convert -B writes only what differs
vimg convert -O vmdk -B base.vmdk -F vmdk pat2.raw vdiff.vmdk
expect_eq "vdisk-img convert -B into a VMDK diff" "$RC" 0
expect_eq "qemu-img sees the parent" "$(qinfo vdiff.vmdk vmdk backing-filename)" base.vmdk
qcheck vdiff.vmdk vmdk
qcompare pat2.raw raw vdiff.vmdk vmdk
vimg info vdiff.vmdk
# (as numbers: qemu writes the CID without leading zeros)
expect_eq "the diff records the parent's CID" \
        "$((16#$(grep -a '^parentCID=' vdiff.vmdk | cut -d= -f2)))" "$((16#$(grep -a '^CID=' base.vmdk | cut -d= -f2)))"

"$QEMU_IMG" create -q -f vmdk -b base.vmdk -F vmdk qdiff.vmdk
"$QEMU_IO" -f vmdk -c "write -P 0x77 $((5 * M + 1000)) 70000" -c "write -z $((8 * M)) 65536" qdiff.vmdk >/dev/null
"$QEMU_IMG" convert -f vmdk -O raw qdiff.vmdk qdiff-ref.raw
vimg convert -O raw qdiff.vmdk qdiff.raw
expect_cmp "qemu-made diff reads with its parent" qdiff-ref.raw qdiff.raw

# --- hostile descriptors
printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "../escape-flat.vmdk" 0\n' > dotdot.vmdk
expect_fail "extent name with .. refused" "$VDISK_IMG" info dotdot.vmdk
expect_true "the message names the descriptor line" grep -q "line 6" "$T/err"
printf '# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "/etc/passwd" 0\n' > abs.vmdk
expect_fail "absolute extent name refused" "$VDISK_IMG" info abs.vmdk
printf '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "missing-flat.vmdk" 0\n' > missing.vmdk
expect_fail "missing extent named" "$VDISK_IMG" info missing.vmdk
expect_true "the message names the missing extent" grep -q "missing-flat.vmdk" "$T/err"

# --- the real images
CORPUS=$(cd "$HERE/../../.." && pwd)/shared/corpus/real
if [[ -d $CORPUS ]]; then
        while read -r rel sha; do
                [[ -f $CORPUS/$rel ]] || { echo "# corpus file $rel absent"; continue; }
                f=$(basename "${rel%.*}")
                case $rel in *.bz2) bzcat "$CORPUS/$rel" >"$f" ;; *.xz) xzcat "$CORPUS/$rel" >"$f" ;; esac
                vimg convert -O raw "$f" c.raw
                if [[ $RC -ne 0 ]]; then
                        notok "corpus $rel reads" "$(last_err)"
                elif (( $(stat -c %s c.raw) <= (1 << 30) )) || [[ -n ${VDISK_SLOW:-} ]]; then
                        expect_eq "corpus $rel sha256" "$(sha256sum c.raw | cut -c1-64)" "$sha"
                else
                        # Hashing 8 and 16 GiB of mostly holes takes minutes:
                        # compare with qemu-img (whose reading the README's
                        # sha256 records) instead; VDISK_SLOW=1 hashes them.
                        qcompare "$f" vmdk c.raw raw
                fi
                rm -f c.raw "$f"
        done <<'LIST'
qemu-iotests/iotest-version3.vmdk.bz2 0859bb3397bc1d30fa979c80a289ce98bfd6c1141a64594d6f3cc8cd68218faf
dfvfs/ext2.vmdk.xz a6c2f0e39afe6c6ab432ca5465349fcefe8dc944398e97b2d957d3f89dbb5d80
cot/blank.vmdk.xz 9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767
cot/input.vmdk.xz 49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14
cot/ubuntu.2.0-disk1.vmdk.xz ebfb4ef19ae410f190327b5ebd312711263bc7579970e87d9c1e2d84e06b3c25
LIST
        if [[ -f $CORPUS/qemu-iotests/afl9.vmdk.bz2 ]]; then
                bzcat "$CORPUS/qemu-iotests/afl9.vmdk.bz2" > afl9.vmdk
                expect_fail "afl9.vmdk refused" "$VDISK_IMG" convert -O raw afl9.vmdk afl9.raw
        fi
else
        echo "# $CORPUS absent: real images not tested"
fi

finish
