#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# VDI differencing images that hold data, filled through the qemu-img CLI
# contract: `convert -O vdi -B BACKING -F vdi SRC DIFF` makes DIFF a child of
# BACKING that reads as SRC.  Oracle: the flattened content (raw files).
#   base.vdi (base.raw) <- d1.vdi (m1.raw) <- d2.vdi (m2.raw)
# m1/m2 change data in holes, inside data blocks (partial blocks), zero out
# base data (as holes and as written zeros: the diff must record zeros, not
# fall through to the parent) and the last sector.  Then `commit d2.vdi` and
# `commit d1.vdi` move the data down: every image still reads right, and the
# final base.vdi passes `qemu-img check` and `qemu-img compare` with m2.raw.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((20 * M + 1024))

mkpattern base.raw $SIZE 21
cp base.raw m1.raw
py edit m1.raw \
        data:$((14 * M + 4096)):$((M / 2)):31 \
        data:$((8 * M + 512 * 1024)):4096:32 \
        hole:$((12 * M)):$M \
        zero:$((13 * M)):$((M + 512)) \
        data:$((SIZE - 512)):512:33
cp m1.raw m2.raw
py edit m2.raw \
        zero:$((8 * M)):$M \
        data:$((2 * M + 100)):1000:41 \
        hole:$((14 * M)):$M \
        data:$((19 * M)):$((M + 1024)):42

vimg convert -f raw -O vdi base.raw base.vdi
if [[ $RC -ne 0 ]]; then notok "convert base.raw -> base.vdi" "exit $RC: $(last_err)"; finish; fi
ok "convert base.raw -> base.vdi"
mkdir orig   # a copy has the same UUID: keep it out of the parent search
cp base.vdi orig/base.vdi

# flat_is IMG RAW DESC [OPTS]: IMG (through its chain) reads as RAW
flat_is() {
        local img=$1 raw=$2 desc=$3
        vimg convert -O raw "$img" flat.raw
        if [[ $RC -eq 0 ]]; then expect_cmp "$desc: $img reads as $raw" flat.raw "$raw"
        else notok "$desc: convert -O raw $img" "exit $RC: $(last_err)"; fi
        rm -f flat.raw
        expect_rc "$desc: compare $img $raw is 0" 0 "$VDISK_IMG" compare -F raw "$img" "$raw"
}

vimg convert -f raw -O vdi -B base.vdi -F vdi m1.raw d1.vdi
if [[ $RC -ne 0 ]]; then notok "convert -O vdi -B base.vdi -F vdi m1.raw d1.vdi" "exit $RC: $(last_err)"; finish; fi
ok "convert -O vdi -B base.vdi -F vdi m1.raw d1.vdi"
expect_eq "d1.vdi is a diff" "$(vdi d1.vdi type)" 4
expect_eq "d1.vdi's parent UUID is base.vdi's" "$(vdi d1.vdi parentuuid)" "$(vdi base.vdi uuid)"
expect_true "convert -B left the base unchanged" cmp -s base.vdi orig/base.vdi
flat_is d1.vdi m1.raw "d1"
read -ra d1map <<<"$(vdi d1.vdi map)"
d="d1.vdi records the zeroed base blocks 12, 13 as ZERO or as data, not as FREE"
if [[ ${d1map[12]} != free && ${d1map[13]} != free ]]; then ok "$d"
else notok "$d" "block map entries 12, 13: ${d1map[12]} ${d1map[13]}"; fi

vimg convert -f raw -O vdi -B d1.vdi -F vdi m2.raw d2.vdi
if [[ $RC -ne 0 ]]; then notok "convert -O vdi -B d1.vdi -F vdi m2.raw d2.vdi" "exit $RC: $(last_err)"; finish; fi
ok "convert -O vdi -B d1.vdi -F vdi m2.raw d2.vdi"
expect_eq "d2.vdi's parent UUID is d1.vdi's" "$(vdi d2.vdi parentuuid)" "$(vdi d1.vdi uuid)"
flat_is d2.vdi m2.raw "d2"
flat_is d1.vdi m1.raw "d1 under d2"
vimg info --backing-chain --output=json d2.vdi
cp "$T/out" chain.json
expect_eq "info --backing-chain d2.vdi" "$(py chain-names chain.json 2>&1)" "d2.vdi d1.vdi base.vdi"

# commit d2 -> d1
expect_rc "commit d2.vdi" 0 "$VDISK_IMG" commit d2.vdi
flat_is d1.vdi m2.raw "after commit d2"
flat_is d2.vdi m2.raw "after commit d2"
expect_true "commit d2 left the base unchanged" cmp -s base.vdi orig/base.vdi
expect_rc "check d1.vdi after commit" 0 "$VDISK_IMG" check d1.vdi
expect_rc "check d2.vdi after commit" 0 "$VDISK_IMG" check d2.vdi

# commit d1 -> base
expect_rc "commit d1.vdi" 0 "$VDISK_IMG" commit d1.vdi
qcheck base.vdi
qcompare m2.raw raw base.vdi vdi
flat_is base.vdi m2.raw "after commit d1"
flat_is d1.vdi m2.raw "after commit d1"
flat_is d2.vdi m2.raw "after commit d1"

# commit -b: e2 through e1 straight into base (a fresh chain over the committed base)
cp base.raw m3.raw
py edit m3.raw data:$((5 * M)):$((3 * M)):51 hole:0:$M
vimg convert -f raw -O vdi -B base.vdi -F vdi m2.raw e1.vdi
vimg convert -f raw -O vdi -B e1.vdi -F vdi m3.raw e2.vdi
if [[ $RC -eq 0 ]]; then
        expect_rc "commit -b base.vdi e2.vdi" 0 "$VDISK_IMG" commit -b base.vdi e2.vdi
        qcheck base.vdi
        qcompare m3.raw raw base.vdi vdi
        # (qemu-img semantics: the images between top and base are now stale,
        # the top is emptied: neither is checked)
else notok "second chain for commit -b" "exit $RC: $(last_err)"; fi

finish
