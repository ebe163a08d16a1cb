#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# What vdisk-img creates and converts, qemu-img accepts:
#  - `vdisk-img create` of raw, vdi dynamic and vdi static at several sizes
#    passes `qemu-img check`, has the virtual size qemu-img itself would give
#    (qemu rounds sizes up to 512 bytes) and the allocation qemu-img reports
#    for its own image of the same kind;
#  - `vdisk-img convert -O vdi` of a patterned raw passes `qemu-img check`,
#    `qemu-img compare` against the source, and allocates what qemu-img's own
#    convert allocates.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZES=(1M 64M $((100 * M + 512)) 33554431 $((5 * M + 4096)))

for size in "${SIZES[@]}"; do
        for kind in raw vdi vdi-static; do
                fmt=${kind%-static}
                opts=()
                [[ $kind == vdi-static ]] && opts=(-o static=on)
                name=c-$kind-$size
                vimg create -f "$fmt" "${opts[@]}" "$name.$fmt" "$size"
                if [[ $RC -ne 0 ]]; then
                        notok "create $kind $size" "exit $RC: $(last_err)"
                        continue
                fi
                ok "create $kind $size"
                # the reference: what qemu-img makes from the same command line
                "$QEMU_IMG" create -q -f "$fmt" "${opts[@]}" "ref-$name.$fmt" "$size"

                [[ $fmt == vdi ]] && qcheck "$name.$fmt" vdi
                got=$(qinfo "$name.$fmt" "$fmt" virtual-size 2>&1 || true)
                want=$(qinfo "ref-$name.$fmt" "$fmt" virtual-size)
                expect_eq "$kind $size: qemu-img info virtual-size" "$got" "$want"

                if [[ $fmt == vdi ]]; then
                        expect_eq "$kind $size: block size 1 MiB" "$(vdi "$name.vdi" blocksize)" $M
                        want_type=1
                        [[ $kind == vdi-static ]] && want_type=2
                        expect_eq "$kind $size: VDI image type" "$(vdi "$name.vdi" type)" $want_type
                        expect_eq "$kind $size: VDI block count" "$(vdi "$name.vdi" blocks)" \
                                "$(vdi "ref-$name.vdi" blocks)"
                        # allocation as qemu-img sees it (all data for static, none for dynamic)
                        "$QEMU_IMG" map -f vdi --output=json "$name.vdi" >m-vdisk.json 2>&1 || true
                        "$QEMU_IMG" map -f vdi --output=json "ref-$name.vdi" >m-ref.json
                        run py map-cmp m-vdisk.json m-ref.json --alloc
                        if [[ $RC -eq 0 ]]; then ok "$kind $size: qemu-img map like qemu's own image"
                        else notok "$kind $size: qemu-img map like qemu's own image" "$(cat "$T/out")"; fi
                else
                        expect_eq "$kind $size: raw file size" "$(stat -c %s "$name.raw")" \
                                "$(stat -c %s "ref-$name.raw")"
                fi
                rm -f "$name.$fmt" "ref-$name.$fmt"
        done
done

# convert of patterned raw files to vdi (dynamic and static)
for size in 64M $((100 * M + 512)) $((3 * M)) 512K; do
        src=src-$size.raw
        mkpattern "$src" "$size" 7
        for kind in vdi vdi-static; do
                opts=()
                [[ $kind == vdi-static ]] && opts=(-o static=on)
                out=conv-$kind-$size.vdi
                vimg convert -f raw -O vdi "${opts[@]}" "$src" "$out"
                if [[ $RC -ne 0 ]]; then
                        notok "convert raw $size -> $kind" "exit $RC: $(last_err)"
                        continue
                fi
                ok "convert raw $size -> $kind"
                qcheck "$out" vdi
                qcompare "$src" raw "$out" vdi
                expect_eq "convert $size -> $kind: virtual size" "$(qinfo "$out" vdi virtual-size)" \
                        "$(qinfo "$src" raw virtual-size)"
                "$QEMU_IMG" convert -f raw -O vdi "${opts[@]}" "$src" ref.vdi
                "$QEMU_IMG" map -f vdi --output=json "$out" >m-vdisk.json
                "$QEMU_IMG" map -f vdi --output=json ref.vdi >m-ref.json
                run py map-cmp m-vdisk.json m-ref.json --alloc
                if [[ $RC -eq 0 ]]; then ok "convert $size -> $kind: allocates what qemu-img convert allocates"
                else notok "convert $size -> $kind: allocates what qemu-img convert allocates" "$(cat "$T/out")"; fi
                # zero blocks are not stored in a dynamic image
                if [[ $kind == vdi && $size == 64M ]]; then
                        read -ra mapv <<<"$(vdi "$out" map)"
                        d="convert $size -> vdi: the all-zero blocks 4 and 5 are not allocated"
                        if [[ ${mapv[4]} == free || ${mapv[4]} == zero ]] &&
                           [[ ${mapv[5]} == free || ${mapv[5]} == zero ]]; then ok "$d"
                        else notok "$d" "block map entries 4, 5: ${mapv[4]} ${mapv[5]}"; fi
                fi
                rm -f "$out" ref.vdi
        done
        rm -f "$src"
done

# a vdi output without -f (probing a raw source is allowed for reading)
mkpattern p.raw 16M 9
vimg convert -O vdi p.raw p.vdi
if [[ $RC -eq 0 ]]; then ok "convert without -f"; qcheck p.vdi; qcompare p.raw raw p.vdi vdi
else notok "convert without -f" "exit $RC: $(last_err)"; fi

finish
