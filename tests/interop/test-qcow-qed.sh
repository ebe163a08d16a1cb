#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW version 1 and QED against qemu-img:
#   - images qemu-img makes (odd sizes, QED cluster sizes 4k/64k/1M and
#     table sizes 1/16, QED zero clusters, a compressed QCOW v1 image from
#     `qemu-img convert -c`, diffs over raw (QED, no-probe flag), qcow, qed
#     and vdi parents) convert to raw byte-identically with qemu-img's own
#     convert;
#   - images vdisk-img makes (convert, diffs with convert -B, resize of a
#     QED) are read by qemu-img: `qemu-img compare` identical with their
#     parent, `qemu-img check` clean for QED (qemu has no check for QCOW v1);
#   - QED NEED_CHECK: an image left with the flag and a leaked cluster is
#     reported by check, repaired by `check -r leaks`, and repaired on a
#     writable open; qemu-img check is clean after;
#   - AES-encrypted QCOW and json: backing names are refused clearly.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((40 * M + 512 * 3))      # not a multiple of any cluster size
mkpattern pat.raw "$SIZE"
mkpattern top.raw "$SIZE" 2

# qread FMT IMAGE DESC: vdisk-img reads IMAGE as qemu-img does.
qread() {
        local fmt=$1 f=$2 desc=$3
        "$QEMU_IMG" convert -f "$fmt" -O raw "$f" ref.raw
        vimg convert -O raw "$f" out.raw
        if [[ $RC -eq 0 ]]; then expect_cmp "$desc: reads byte-identical" ref.raw out.raw
        else notok "$desc: reads byte-identical" "$(last_err)"; fi
        rm -f ref.raw out.raw
}

# ---------------------------------------------------------------- qemu-made
for sz in 1 1000001 $SIZE; do
        "$QEMU_IMG" create -q -f qcow "s$sz.qcow" "$sz"
        "$QEMU_IO" -f qcow -c "write -P 0x11 0 512" "s$sz.qcow" >/dev/null
        qread qcow "s$sz.qcow" "qcow of $sz bytes"
        "$QEMU_IMG" create -q -f qed "s$sz.qed" "$sz"
        "$QEMU_IO" -f qed -c "write -P 0x11 0 512" "s$sz.qed" >/dev/null
        qread qed "s$sz.qed" "qed of $sz bytes"
done
"$QEMU_IMG" convert -f raw -O qcow pat.raw pat.qcow
qread qcow pat.qcow "qcow with the pattern"
# qemu-img 7.2 exits 1 at the end of a compressed convert to qcow, silently,
# after writing the whole image: its content is checked with qemu-img compare
"$QEMU_IMG" convert -c -f raw -O qcow pat.raw comp.qcow || true
qcompare pat.raw raw comp.qcow qcow
qread qcow comp.qcow "compressed qcow (qemu-img convert -c)"
vimg map --output=json comp.qcow
expect_true "compressed qcow: map shows compressed clusters (data without an offset)" grep -q '"data": true}' "$T/out"
for cs in 4096 65536 1048576; do
        for ts in 2 16; do   # qemu 7.2 cannot open its own table_size=1 images
                "$QEMU_IMG" convert -f raw -O qed -o "cluster_size=$cs,table_size=$ts" pat.raw "c$cs-$ts.qed"
                qread qed "c$cs-$ts.qed" "qed cluster_size=$cs table_size=$ts"
        done
done
"$QEMU_IMG" convert -f raw -O qed pat.raw z.qed
"$QEMU_IO" -f qed -c "write -z 0 $M" -c "write -z $((8 * M)) $((2 * M))" -c "write -z $((35 * M)) $((1 * M))" \
        z.qed >/dev/null
qread qed z.qed "qed zero clusters"

# diffs qemu-img makes over every parent format
"$QEMU_IMG" convert -f raw -O vdi pat.raw base.vdi
"$QEMU_IMG" convert -f raw -O qed pat.raw base.qed
"$QEMU_IMG" convert -f raw -O qcow pat.raw base.qcow
cp pat.raw base.raw
for fmt in qed qcow; do
        for pf in raw qcow qed vdi; do
                [[ $fmt == qcow && $pf == raw ]] && continue   # a qcow names no format: raw is never probed
                "$QEMU_IMG" create -q -f "$fmt" -b "base.$pf" -F "$pf" "d-$pf.$fmt"
                "$QEMU_IO" -f "$fmt" -c "write -P 0x41 4096 1024" -c "write -P 0x42 $((M + 1024)) 3000" \
                        -c "write -P 0x43 $((33 * M)) 70000" -c "write -P 0x44 $((SIZE - 512)) 512" \
                        "d-$pf.$fmt" >/dev/null
                qread "$fmt" "d-$pf.$fmt" "$fmt diff over $pf"
        done
done
vimg info --output=json d-raw.qed
expect_true "qed over raw: backing format raw (no-probe flag)" grep -q '"backing-filename-format": "raw"' "$T/out"

# ---------------------------------------------------------------- vdisk-made
for fmt in qed qcow; do
        vimg convert -f raw -O "$fmt" pat.raw "v.$fmt"
        expect_rc "convert to $fmt" 0 true
        qcompare pat.raw raw "v.$fmt" "$fmt"
        # a diff holding what differs from its parent, over every parent format
        for pf in qed qcow vdi raw; do
                [[ $fmt == qcow && $pf == raw ]] && continue
                vimg convert -f raw -O "$fmt" -B "base.$pf" -F "$pf" top.raw "vd-$pf.$fmt"
                expect_rc "$fmt diff over $pf written" 0 true
                [[ $RC -eq 0 ]] || notok "$fmt diff over $pf" "$(last_err)"
                qcompare top.raw raw "vd-$pf.$fmt" "$fmt"
                qread "$fmt" "vd-$pf.$fmt" "vdisk-made $fmt diff over $pf"
                [[ $fmt == qed ]] && qcheck "vd-$pf.$fmt" qed
        done
done
qcheck v.qed qed
expect_eq "qed written by vdisk-img: NEED_CHECK clear after close" "$(od -An -tu1 -j16 -N1 v.qed | tr -d ' ')" 0
vimg create -f qed -o cluster_size=4096,table_size=2 small.qed 3000001
expect_eq "qed create: size rounded up to a sector" "$(qinfo small.qed qed virtual-size)" 3000320
expect_eq "qed create: cluster size" "$(qinfo small.qed qed cluster-size)" 4096
vimg create -f qcow odd.qcow 1000001
expect_eq "qcow create: size rounded up to a sector" "$(qinfo odd.qcow qcow virtual-size)" 1000448

# resize (grow) a QED with data
cp v.qed g.qed
vimg resize g.qed +10M
expect_rc "qed grow" 0 true
expect_eq "qed grown size" "$(qinfo g.qed qed virtual-size)" $((SIZE + 10 * M))
qcheck g.qed qed
"$QEMU_IMG" convert -f qed -O raw g.qed g.raw
expect_cmp "qed grown: old data kept" <(head -c "$SIZE" g.raw) pat.raw
expect_eq "qed grown: the new range reads zeros" "$(tail -c $((10 * M)) g.raw | tr -d '\0' | wc -c)" 0

# ---------------------------------------------------------------- NEED_CHECK
nc_image() { # a QED with NEED_CHECK set and one leaked cluster at the end
        cp v.qed "$1"
        printf '\x02' | dd of="$1" bs=1 seek=16 conv=notrunc status=none
        local sz; sz=$(stat -c %s "$1")
        truncate -s $((sz + 65536)) "$1"
}
nc_image nc.qed
vimg info --output=json nc.qed
expect_true "NEED_CHECK: info shows the image dirty" grep -q '"dirty-flag": true' "$T/out"
qread qed nc.qed "NEED_CHECK set: read-only open reads"
vimg check nc.qed
expect_true "check finds the leaked cluster" grep -qi "leak" "$T/out" "$T/err"
vimg check -r leaks nc.qed
expect_rc "check -r leaks" 0 true
qcheck nc.qed qed
nc_image nc2.qed
vimg resize nc2.qed +1M
expect_rc "writable open of a NEED_CHECK image" 0 true
expect_eq "writable open repaired the leak" "$(stat -c %s nc2.qed)" "$(stat -c %s v.qed)"
qcheck nc2.qed qed

# ---------------------------------------------------------------- refusals
cp odd.qcow aes.qcow
printf '\x00\x00\x00\x01' | dd of=aes.qcow bs=1 seek=36 conv=notrunc status=none
expect_fail "AES-encrypted qcow refused" "$VDISK_IMG" info aes.qcow
expect_true "... with a clear message" grep -qi "encrypt" "$T/err"
"$QEMU_IMG" create -q -f qed -u -b 'json:{"file.filename":"base.raw"}' -F raw js.qed 1M
expect_fail "qed json: backing name refused" "$VDISK_IMG" convert -O raw js.qed js.raw
expect_true "... naming json:" grep -q "json:" "$T/err"

finish
