#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# VDI differencing chains.  qemu cannot open VDI diffs (it refuses a non-null
# parent UUID), so the oracle is the flattened content, compared with a raw
# file and `qemu-img compare` on the base.  vdisk-img has no write command:
# chains here hold no data of their own (test-chain-vdi-data.sh fills diffs
# with `convert -B`; the C model tests write into them).
#   base.vdi <- d1.vdi <- d2.vdi made by `vdisk-img create -b ... -F vdi`
#   - the diff headers: type 4, parent UUID = parent's image UUID, parent
#     modification UUID = parent's modification UUID; `create -b` without -F
#     is refused, as qemu-img 7.2 refuses it
#   - `info --backing-chain` lists the three images, top first
#   - `convert -O raw d2.vdi` equals the base content; `compare` says 0
#   - `commit d2.vdi` succeeds and everything stays readable and equal
#   - a parent moved away: a clear error naming the missing UUID
#   - `--parent-dir DIR` finds parents in other directories
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

mkpattern base.raw $((24 * M + 512)) 5
vimg convert -f raw -O vdi base.raw base.vdi
if [[ $RC -ne 0 ]]; then
        notok "convert base.raw -> base.vdi" "exit $RC: $(last_err)"
        finish
fi
ok "convert base.raw -> base.vdi"
qcheck base.vdi
mkdir orig   # a copy has the same UUID: keep it out of the parent search
cp base.vdi orig/base.vdi
BASESIZE=$(qinfo base.vdi vdi virtual-size)

expect_rc "create -b base.vdi -F vdi d1.vdi" 0 "$VDISK_IMG" create -f vdi -b base.vdi -F vdi d1.vdi
expect_rc "create -b d1.vdi -F vdi d2.vdi" 0 "$VDISK_IMG" create -f vdi -b d1.vdi -F vdi d2.vdi
expect_fail "create -b without -F is refused (as qemu-img 7.2 does)" \
        "$VDISK_IMG" create -f vdi -b base.vdi dx.vdi
expect_fail "create: the backing file given as -b and as -o backing_file= is refused" \
        "$VDISK_IMG" create -f vdi -b base.vdi -F vdi -o backing_file=base.vdi dx.vdi
expect_rc "create -o backing_file=,backing_fmt= is the same as -b -F" 0 \
        "$VDISK_IMG" create -f vdi -o backing_file=base.vdi,backing_fmt=vdi dy.vdi
rm -f dx.vdi dy.vdi
if [[ ! -f d1.vdi || ! -f d2.vdi ]]; then
        notok "no chain to test: the diffs were not created"
        finish
fi
expect_true "creating the diffs left the base unchanged" cmp -s base.vdi orig/base.vdi

for pair in "d1 base" "d2 d1"; do
        read -r child parent <<<"$pair"
        [[ -f $child.vdi ]] || continue
        expect_eq "$child.vdi: image type 4 (diff)" "$(vdi "$child.vdi" type)" 4
        expect_eq "$child.vdi: parent UUID is $parent.vdi's UUID" \
                "$(vdi "$child.vdi" parentuuid)" "$(vdi "$parent.vdi" uuid)"
        expect_eq "$child.vdi: parent modification UUID is $parent.vdi's" \
                "$(vdi "$child.vdi" parentmoduuid)" "$(vdi "$parent.vdi" moduuid)"
        expect_eq "$child.vdi: virtual size of the parent" "$(vdi "$child.vdi" size)" "$(vdi "$parent.vdi" size)"
        expect_eq "$child.vdi: block size of the parent" "$(vdi "$child.vdi" blocksize)" "$(vdi "$parent.vdi" blocksize)"
        expect_eq "$child.vdi: no block allocated" "$(vdi "$child.vdi" allocated)" 0
        expect_true "$child.vdi: UUID differs from the parent's" \
                test "$(vdi "$child.vdi" uuid)" != "$(vdi "$parent.vdi" uuid)"
        rc=0; "$QEMU_IMG" info -f vdi "$child.vdi" >/dev/null 2>&1 || rc=$?
        expect_true "$child.vdi: qemu-img refuses it (a VDI diff, as documented)" test "$rc" -ne 0
done

# --- info --backing-chain
chain_ok() { # DESC: the chain of d2.vdi as seen from the current directory
        local desc=$1; shift
        vimg info --backing-chain --output=json "$@" d2.vdi
        if [[ $RC -ne 0 ]]; then notok "$desc: info --backing-chain" "exit $RC: $(last_err)"; return; fi
        cp "$T/out" chain.json
        expect_eq "$desc: info --backing-chain lists d2, d1, base" \
                "$(py chain-names chain.json 2>&1)" "d2.vdi d1.vdi base.vdi"
        expect_eq "$desc: every image in the chain is vdi" "$(py chain-field chain.json format 2>&1)" "vdi vdi vdi"
        expect_eq "$desc: every image has the base's virtual size" \
                "$(py chain-field chain.json virtual-size 2>&1)" "$BASESIZE $BASESIZE $BASESIZE"
}
chain_ok "chain"
vimg info --backing-chain d2.vdi
expect_eq "human info --backing-chain shows three images" "$(grep -c '^image: ' "$T/out")" 3

vimg info --output=json d2.vdi
cp "$T/out" d2.json
expect_eq "info --output=json d2.vdi: format" "$(py json-get d2.json format 2>&1)" vdi
expect_eq "info --output=json d2.vdi: virtual-size" "$(py json-get d2.json virtual-size 2>&1)" \
        "$(qinfo base.vdi vdi virtual-size)"

# --- content through the chain
content_ok() { # DESC: d2.vdi, d1.vdi read as base.raw
        local desc=$1; shift
        vimg convert "$@" -O raw d2.vdi flat.raw
        if [[ $RC -eq 0 ]]; then expect_cmp "$desc: convert -O raw d2.vdi equals the base content" flat.raw base.raw
        else notok "$desc: convert -O raw d2.vdi" "exit $RC: $(last_err)"; fi
        rm -f flat.raw
        expect_rc "$desc: compare d2.vdi base.raw is 0" 0 "$VDISK_IMG" compare "$@" -F raw d2.vdi base.raw
}
content_ok "chain"
expect_rc "compare -f vdi -F raw d1.vdi base.raw is 0" 0 "$VDISK_IMG" compare -f vdi -F raw d1.vdi base.raw
cp base.raw other.raw
printf '\xff' | dd of=other.raw bs=1 seek=$((13 * M)) conv=notrunc status=none
expect_rc "compare d2.vdi with a different raw is 1" 1 "$VDISK_IMG" compare -F raw d2.vdi other.raw
vimg convert -O vdi d2.vdi flat.vdi
if [[ $RC -eq 0 ]]; then
        ok "convert -O vdi d2.vdi (flatten)"
        qcheck flat.vdi
        qcompare base.raw raw flat.vdi vdi
        expect_eq "the flattened vdi is not a diff" "$(vdi flat.vdi type)" 1
else notok "convert -O vdi d2.vdi (flatten)" "exit $RC: $(last_err)"; fi
rm -f flat.vdi

# --- a parent moved away
mkdir elsewhere
mv d1.vdi elsewhere/
d1uuid=$(vdi elsewhere/d1.vdi uuid)
# plain info does not open the parents (qemu-img info neither)
expect_rc "d1.vdi moved away: plain 'info d2.vdi' still works" 0 "$VDISK_IMG" info d2.vdi
# (check reads one image's metadata only; qemu-img check would fail on a
# missing backing file, vdisk-img may check d2 alone: not asserted)
for cmd in "info --backing-chain" "convert -O raw" "compare -F raw" "map --output=json"; do
        args=(d2.vdi)
        [[ $cmd == convert* ]] && args=(d2.vdi nope.raw)
        [[ $cmd == compare* ]] && args=(d2.vdi base.raw)
        # shellcheck disable=SC2086
        run "$VDISK_IMG" $cmd "${args[@]}"
        desc="d1.vdi moved away: '$cmd d2.vdi' fails"
        if [[ $RC -ne 0 ]]; then ok "$desc"; else notok "$desc" "exit 0"; fi
        if grep -qi -- "$d1uuid" "$T/err"; then ok "$desc with a message naming the missing UUID $d1uuid"
        else notok "$desc with a message naming the missing UUID $d1uuid" "stderr: $(last_err)"; fi
        [[ $cmd == convert* ]] && expect_true "nothing was left by the failed convert" test ! -e nope.raw
        rm -f nope.raw
done

# --- --parent-dir
# base.vdi's child d1 now lives in elsewhere/: the UUID search looks in the
# child's directory and the named ones, so "." must be named for base.vdi
chain_ok "d1.vdi in elsewhere/, --parent-dir elsewhere --parent-dir ." --parent-dir elsewhere --parent-dir .
content_ok "d1.vdi in elsewhere/, --parent-dir elsewhere --parent-dir ." --parent-dir elsewhere --parent-dir .
mv base.vdi elsewhere/
chain_ok "d1.vdi and base.vdi in elsewhere/, --parent-dir elsewhere" --parent-dir elsewhere
mkdir third
mv elsewhere/base.vdi third/
chain_ok "d1 in elsewhere/, base in third/, two --parent-dir" --parent-dir elsewhere --parent-dir third
content_ok "d1 in elsewhere/, base in third/, two --parent-dir" --parent-dir elsewhere --parent-dir third
mv elsewhere/d1.vdi third/base.vdi .
rmdir elsewhere third

# a file with the parent's name but another UUID is not the parent
mv base.vdi base-real.vdi
"$QEMU_IMG" create -q -f vdi base.vdi "$(vdi base-real.vdi size)"
mkdir real
mv base-real.vdi real/base.vdi
baseuuid=$(vdi real/base.vdi uuid)
run "$VDISK_IMG" convert -O raw d2.vdi nope.raw
if [[ $RC -ne 0 ]] && grep -qi -- "$baseuuid" "$T/err"; then
        ok "a base.vdi with another UUID is not taken for the parent; the error names $baseuuid"
else notok "a base.vdi with another UUID is not taken for the parent; the error names $baseuuid" \
        "exit $RC, stderr: $(last_err)"; fi
rm -f nope.raw base.vdi
mv real/base.vdi base.vdi
rmdir real

# --- commit d2 into d1
expect_rc "commit d2.vdi" 0 "$VDISK_IMG" commit d2.vdi
expect_true "d2.vdi still exists after commit (qemu-img keeps the top)" test -f d2.vdi
content_ok "after commit"
chain_ok "after commit"
expect_rc "compare -f vdi -F raw d1.vdi base.raw is 0 after commit" 0 "$VDISK_IMG" compare -f vdi -F raw d1.vdi base.raw
qcheck base.vdi
qcompare base.raw raw base.vdi vdi
expect_rc "vdisk-img check d2.vdi after commit" 0 "$VDISK_IMG" check d2.vdi
expect_rc "vdisk-img check d1.vdi after commit" 0 "$VDISK_IMG" check d1.vdi
expect_rc "commit d1.vdi onto the base" 0 "$VDISK_IMG" commit d1.vdi
content_ok "after the second commit"
qcheck base.vdi
qcompare base.raw raw base.vdi vdi

finish
