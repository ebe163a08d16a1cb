#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Round trips through vdisk-img alone are lossless:
#   raw -> vdi -> raw, raw -> vdi static -> raw,
#   vdi dynamic -> vdi static -> vdi dynamic -> raw,
# byte-identical (cmp) to the source, and every VDI on the way passes
# `qemu-img check` and `qemu-img compare`.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

# roundtrip SRC DESC
roundtrip() {
        local src=$1 desc=$2
        local step
        vimg convert -f raw -O vdi "$src" a.vdi
        step="$desc: raw -> vdi"
        if [[ $RC -ne 0 ]]; then notok "$step" "exit $RC: $(last_err)"; return; fi
        ok "$step"
        qcheck a.vdi
        qcompare "$src" raw a.vdi vdi

        vimg convert -f vdi -O raw a.vdi back.raw
        step="$desc: vdi -> raw"
        if [[ $RC -eq 0 ]]; then ok "$step"; expect_cmp "$desc: raw -> vdi -> raw identical" "$src" back.raw
        else notok "$step" "exit $RC: $(last_err)"; fi
        rm -f back.raw

        vimg convert -f raw -O vdi -o static=on "$src" s0.vdi
        step="$desc: raw -> vdi static"
        if [[ $RC -eq 0 ]]; then
                ok "$step"
                qcheck s0.vdi
                expect_eq "$desc: static output has image type 2" "$(vdi s0.vdi type)" 2
                vimg convert -f vdi -O raw s0.vdi back.raw
                if [[ $RC -eq 0 ]]; then expect_cmp "$desc: raw -> vdi static -> raw identical" "$src" back.raw
                else notok "$desc: vdi static -> raw" "exit $RC: $(last_err)"; fi
                rm -f back.raw s0.vdi
        else notok "$step" "exit $RC: $(last_err)"; fi

        vimg convert -f vdi -O vdi -o static=on a.vdi s.vdi
        step="$desc: vdi dynamic -> vdi static"
        if [[ $RC -ne 0 ]]; then notok "$step" "exit $RC: $(last_err)"; rm -f a.vdi; return; fi
        ok "$step"
        qcheck s.vdi
        qcompare "$src" raw s.vdi vdi
        expect_eq "$desc: static output has image type 2" "$(vdi s.vdi type)" 2
        expect_eq "$desc: static output allocates every block" \
                "$(vdi s.vdi allocated)" "$(vdi s.vdi blocks)"

        vimg convert -f vdi -O vdi s.vdi d.vdi
        step="$desc: vdi static -> vdi dynamic"
        if [[ $RC -ne 0 ]]; then notok "$step" "exit $RC: $(last_err)"; rm -f a.vdi s.vdi; return; fi
        ok "$step"
        qcheck d.vdi
        qcompare "$src" raw d.vdi vdi
        expect_eq "$desc: dynamic output has image type 1" "$(vdi d.vdi type)" 1
        expect_eq "$desc: dynamic again allocates what the first dynamic did" \
                "$(vdi d.vdi allocated)" "$(vdi a.vdi allocated)"

        vimg convert -f vdi -O raw d.vdi back.raw
        if [[ $RC -eq 0 ]]; then
                expect_cmp "$desc: raw -> vdi -> static -> dynamic -> raw identical" "$src" back.raw
        else notok "$desc: final vdi -> raw" "exit $RC: $(last_err)"; fi
        rm -f a.vdi s.vdi d.vdi back.raw
}

mkpattern p64.raw 64M 1
roundtrip p64.raw "pattern 64M"
rm -f p64.raw

mkpattern p100.raw $((100 * M + 512)) 2
roundtrip p100.raw "pattern 100M+512"
rm -f p100.raw

mkpattern p5.raw $((5 * M + 3584)) 3
roundtrip p5.raw "pattern 5M+3584"
rm -f p5.raw

head -c $((6 * M)) /dev/urandom >rnd.raw
roundtrip rnd.raw "random 6M (every block full)"
rm -f rnd.raw

truncate -s 24M hole.raw
roundtrip hole.raw "empty 24M (all holes)"
rm -f hole.raw

head -c $((8 * M)) /dev/zero >zero.raw
roundtrip zero.raw "8M of written zeros"
rm -f zero.raw

head -c 512 /dev/urandom >one.raw
roundtrip one.raw "one sector"
rm -f one.raw

# a VDI qemu-img made goes through vdisk-img vdi -> vdi unchanged
"$QEMU_IMG" create -q -f vdi q.vdi 10M
"$QEMU_IO" -f vdi -c "write -P 0x12 0 4k" -c "write -P 0x34 $((3 * M - 4096)) 12k" \
        -c "write -P 0 $((5 * M)) $M" -c "write -P 0x56 $((10 * M - 512)) 512" q.vdi >/dev/null
"$QEMU_IMG" convert -f vdi -O raw q.vdi q.raw
vimg convert -f vdi -O vdi q.vdi q2.vdi
if [[ $RC -eq 0 ]]; then
        ok "qemu vdi -> vdisk vdi"
        qcheck q2.vdi
        qcompare q.vdi vdi q2.vdi vdi
        vimg convert -f vdi -O raw q2.vdi q2.raw
        expect_cmp "qemu vdi -> vdisk vdi -> raw equals qemu's raw" q2.raw q.raw
else notok "qemu vdi -> vdisk vdi" "exit $RC: $(last_err)"; fi

finish
