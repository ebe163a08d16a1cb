#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Chains that mix formats: a VDI base with VHD, VMDK and VDI diffs above it,
# and a VMDK base under a VHD diff under a VDI diff.  Each diff is made with
# `convert -O FMT -B PARENT -F PFMT SRC DIFF` (it reads as SRC) and records
# the link its own format can express: VHD the parent's UUID and W2ru/W2ku
# locators, VMDK parentFileNameHint and ddb.uuid.parent, VDI the parent's
# UUID.  Opening finds each parent in whatever format it is.  Oracle: the
# flattened content (raw files written at each step); qemu-img only where it
# reads the images alone (a VHD or VMDK that is no diff, a flattened copy).
# Then every operation on the mixed chain: convert, compare, map, check,
# compact, resize, rebase (a VHD diff onto a parent in another directory:
# found by its relative locator, by its absolute one once the child moved,
# by UUID once both are stale) and commit (VMDK into VHD, VHD into VDI and
# into VMDK).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((10 * M))

mkpattern base.raw $SIZE 11
cp base.raw m1.raw
py edit m1.raw data:$((1 * M + 4096)):$((M / 2)):21 zero:$((8 * M)):$((M + 512)) data:$((SIZE - 512)):512:22
cp m1.raw m2.raw
py edit m2.raw data:$((2 * M + 100)):1000:31 hole:$((M)):$M data:$((6 * M)):$((3 * M)):32
cp m2.raw m3.raw
py edit m3.raw zero:0:$((2 * M)) data:$((5 * M - 512)):4096:41

# flat_is IMG RAW DESC: IMG, through its chain, reads as RAW
flat_is() {
        local img=$1 raw=$2 desc=$3
        vimg convert -O raw "$img" flat.raw
        if [[ $RC -eq 0 ]]; then expect_cmp "$desc: $img reads as $(basename "$raw")" flat.raw "$raw"
        else notok "$desc: convert -O raw $img" "exit $RC: $(last_err)"; fi
        rm -f flat.raw
        expect_rc "$desc: compare $img $(basename "$raw") is 0" 0 "$VDISK_IMG" compare -F raw "$img" "$raw"
}
# mkdiff FMT PARENT PFMT SRC OUT
mkdiff() {
        vimg convert -f raw -O "$1" -B "$2" -F "$3" "$4" "$5"
        if [[ $RC -ne 0 ]]; then notok "convert -O $1 -B $2 -F $3 $4 $5" "exit $RC: $(last_err)"; finish; fi
        ok "convert -O $1 -B $2 -F $3 $4 $5"
}
# has_utf16 FILE TEXT: FILE holds TEXT in UTF-16LE (a VHD locator)
has_utf16() {
        "$PY" -c 'import sys; sys.exit(0 if sys.argv[2].encode("utf-16-le") in open(sys.argv[1], "rb").read() else 1)' "$1" "$2"
}
chain_of() {
        vimg info --backing-chain --output=json "$1" >/dev/null
        cp "$T/out" chain.json
        py chain-names chain.json 2>&1
}
checks_clean() {
        local f
        for f in "$@"; do expect_rc "check $f is clean" 0 "$VDISK_IMG" check "$f"; done
}

# ---------------------------------------------------------------- VDI <- VHD <- VMDK <- VDI
vimg convert -f raw -O vdi base.raw base.vdi
if [[ $RC -ne 0 ]]; then notok "convert base.raw -> base.vdi" "exit $RC: $(last_err)"; finish; fi
mkdiff vpc base.vdi vdi m1.raw d1.vhd
mkdiff vmdk d1.vhd vpc m2.raw d2.vmdk
mkdiff vdi d2.vmdk vmdk m3.raw d3.vdi

expect_eq "d1.vhd's parent UUID is base.vdi's" "$("$VDISK_IMG" info d1.vhd | sed -n 's/^Parent UUID: //p')" \
        "$(vdi base.vdi uuid)"
expect_true "d1.vhd has a W2ru locator naming .\\base.vdi" has_utf16 d1.vhd '.\base.vdi'
expect_true "d1.vhd has a W2ku locator naming $T/base.vdi" has_utf16 d1.vhd "$T/base.vdi"
expect_true "d2.vmdk names d1.vhd (parentFileNameHint)" grep -aq 'parentFileNameHint="d1.vhd"' d2.vmdk
expect_true "d2.vmdk records d1.vhd's UUID (ddb.uuid.parent)" grep -aq \
        "ddb.uuid.parent = \"$("$VDISK_IMG" info d1.vhd | sed -n 's/^UUID: //p')\"" d2.vmdk
expect_eq "d3.vdi's parent UUID is d2.vmdk's" "$(vdi d3.vdi parentuuid)" \
        "$("$VDISK_IMG" info d2.vmdk | sed -n 's/^UUID: //p')"
expect_eq "info --backing-chain d3.vdi" "$(chain_of d3.vdi)" "d3.vdi d2.vmdk d1.vhd base.vdi"
flat_is d1.vhd m1.raw "vdi<-vhd"
flat_is d2.vmdk m2.raw "vdi<-vhd<-vmdk"
flat_is d3.vdi m3.raw "vdi<-vhd<-vmdk<-vdi"
checks_clean base.vdi d1.vhd d2.vmdk d3.vdi
expect_rc "compare d3.vdi d2.vmdk differ (exit 1)" 1 "$VDISK_IMG" compare d3.vdi d2.vmdk

# map of the mixed chain: the ranges cover the disk, and d3 itself defines
# the first sector (zeros over the base's data)
vimg map --output=json d3.vdi >/dev/null
cp "$T/out" map.json
expect_eq "map d3.vdi covers the disk" "$("$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]));
print(sum(e["length"] for e in m), all(a["start"]+a["length"]==b["start"] for a,b in zip(m,m[1:])))' map.json)" \
        "$SIZE True"
expect_eq "map d3.vdi: offset 0 is d3's own (depth 0)" "$("$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]));
print(m[0]["start"], m[0]["depth"])' map.json)" "0 0"

# convert the whole chain into each format; qemu-img reads the flat copies
for f in vdi vpc vmdk; do
        vimg convert -O $f d3.vdi flat3.$f
        if [[ $RC -eq 0 ]]; then ok "convert d3.vdi (mixed chain) -O $f"
        else notok "convert d3.vdi -O $f" "exit $RC: $(last_err)"; continue; fi
        qcompare flat3.$f $f m3.raw raw
        rm -f flat3.$f
done

# compact every image
for f in base.vdi d1.vhd d2.vmdk d3.vdi; do
        expect_rc "compact $f" 0 "$VDISK_IMG" compact "$f"
done
flat_is d3.vdi m3.raw "after compact"
flat_is d1.vhd m1.raw "after compact"
checks_clean base.vdi d1.vhd d2.vmdk d3.vdi

# resize the top VDI over the VMDK: the new range reads zeros
expect_rc "resize d3.vdi +1M" 0 "$VDISK_IMG" resize d3.vdi +1M
cp m3.raw m3big.raw
truncate -s $((SIZE + M)) m3big.raw
flat_is d3.vdi m3big.raw "after resize"
expect_rc "resize --shrink d3.vdi back" 0 "$VDISK_IMG" resize --shrink d3.vdi $SIZE
flat_is d3.vdi m3.raw "after shrink"

# ---------------------------------------------------------------- rebase a VHD diff
# d1.vhd onto p/base2.vmdk (the same content as base.vdi, another format, in
# another directory: only a locator leads there)
mkdir p e
vimg convert -f raw -O vmdk base.raw p/base2.vmdk
expect_rc "rebase -b p/base2.vmdk -F vmdk d1.vhd" 0 "$VDISK_IMG" rebase -b p/base2.vmdk -F vmdk d1.vhd
expect_true "d1.vhd's W2ru names p\\base2.vmdk" has_utf16 d1.vhd '.\p\base2.vmdk'
expect_true "d1.vhd's W2ku names $T/p/base2.vmdk" has_utf16 d1.vhd "$T/p/base2.vmdk"
expect_eq "d1.vhd's parent UUID is base2.vmdk's" "$("$VDISK_IMG" info d1.vhd | sed -n 's/^Parent UUID: //p')" \
        "$("$VDISK_IMG" info p/base2.vmdk | sed -n 's/^UUID: //p')"
mv base.vdi e/base.vdi.away   # the old parent is gone
expect_eq "after rebase: info --backing-chain d3.vdi (W2ru)" "$(chain_of d3.vdi)" "d3.vdi d2.vmdk d1.vhd base2.vmdk"
flat_is d1.vhd m1.raw "after rebase (W2ru)"
flat_is d3.vdi m3.raw "after rebase (W2ru)"
# the child moves: its relative locator leads nowhere, the absolute one does
mv d1.vhd d2.vmdk d3.vdi e/
expect_eq "moved: info --backing-chain e/d3.vdi (W2ku)" "$(chain_of e/d3.vdi)" "d3.vdi d2.vmdk d1.vhd base2.vmdk"
flat_is e/d3.vdi m3.raw "moved child (W2ku)"
# both locators are stale: the parent is found by UUID in the child's directory
mv p/base2.vmdk e/renamed.vmdk
expect_eq "stale locators: info --backing-chain e/d3.vdi (UUID)" "$(chain_of e/d3.vdi)" \
        "d3.vdi d2.vmdk d1.vhd renamed.vmdk"
flat_is e/d1.vhd m1.raw "stale locators (UUID)"
# a stale locator that leads to another image is not taken for the parent
cp e/base.vdi.away e/wrong.vdi
"$VDISK_IMG" rebase -u -b wrong.vdi -F vdi e/d1.vhd >/dev/null 2>&1 || true
"$VDISK_IMG" setuuid --parentuuid "$("$VDISK_IMG" info e/renamed.vmdk | sed -n 's/^UUID: //p')" e/d1.vhd >/dev/null
expect_eq "a locator naming another image is skipped: the UUID decides" "$(chain_of e/d3.vdi)" \
        "d3.vdi d2.vmdk d1.vhd renamed.vmdk"
rm -f e/wrong.vdi

# ---------------------------------------------------------------- commit across formats
expect_rc "commit e/d2.vmdk (VMDK into VHD)" 0 "$VDISK_IMG" commit e/d2.vmdk
flat_is e/d1.vhd m2.raw "after commit d2.vmdk"
flat_is e/d3.vdi m3.raw "after commit d2.vmdk"
expect_rc "commit e/d1.vhd (VHD into VMDK)" 0 "$VDISK_IMG" commit e/d1.vhd
flat_is e/renamed.vmdk m2.raw "after commit d1.vhd"
flat_is e/d3.vdi m3.raw "after commit d1.vhd"
qcheck e/renamed.vmdk vmdk
qcompare e/renamed.vmdk vmdk m2.raw raw
checks_clean e/renamed.vmdk e/d1.vhd e/d2.vmdk e/d3.vdi

# ---------------------------------------------------------------- VMDK <- VHD <- VDI
vimg convert -f raw -O vmdk base.raw b.vmdk
mkdiff vpc b.vmdk vmdk m1.raw c1.vhd
mkdiff vdi c1.vhd vpc m2.raw c2.vdi
expect_eq "info --backing-chain c2.vdi" "$(chain_of c2.vdi)" "c2.vdi c1.vhd b.vmdk"
flat_is c1.vhd m1.raw "vmdk<-vhd"
flat_is c2.vdi m2.raw "vmdk<-vhd<-vdi"
expect_rc "commit c2.vdi (VDI into VHD)" 0 "$VDISK_IMG" commit c2.vdi
flat_is c1.vhd m2.raw "after commit c2.vdi"
expect_rc "commit c1.vhd (VHD into VMDK)" 0 "$VDISK_IMG" commit c1.vhd
flat_is b.vmdk m2.raw "after commit c1.vhd"
qcheck b.vmdk vmdk
qcompare b.vmdk vmdk m2.raw raw

# a parent without a UUID (qemu's VMDKs have none) cannot be named by a VHD
"$QEMU_IMG" convert -f raw -O vmdk base.raw q.vmdk
expect_fail "create -f vpc -b q.vmdk (no UUID to record) is refused" \
        "$VDISK_IMG" create -f vpc -b q.vmdk -F vmdk qd.vhd
expect_fail "create -f vdi -b q.vmdk (no UUID to record) is refused" \
        "$VDISK_IMG" create -f vdi -b q.vmdk -F vmdk qd.vdi
expect_rc "create -f vmdk -b q.vmdk (linked by name) works" 0 "$VDISK_IMG" create -f vmdk -b q.vmdk -F vmdk qd.vmdk

finish
