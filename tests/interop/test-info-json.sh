#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `vdisk-img info --output=json` agrees with `qemu-img info --output=json` on
# virtual-size, format, cluster-size (absent for raw), filename (as given on the
# command line), dirty-flag and actual-size, for raw and VDI files made by
# qemu-img and by vdisk-img, with and without -f, under several spellings of
# the file name.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
KEYS=(virtual-size format cluster-size filename dirty-flag actual-size)

# compare_info NAME [FMT]
compare_info() {
        local name=$1 fmt=${2:-} fopt=()
        [[ -n $fmt ]] && fopt=(-f "$fmt")
        local desc="info ${fopt[*]} $name"
        "$QEMU_IMG" info "${fopt[@]}" --output=json "$name" >q.json 2>/dev/null
        vimg info "${fopt[@]}" --output=json "$name"
        if [[ $RC -ne 0 ]]; then notok "$desc" "exit $RC: $(last_err)"; return; fi
        cp "$T/out" v.json
        run py json-cmp q.json v.json "${KEYS[@]}"
        if [[ $RC -eq 0 ]]; then ok "$desc: same ${KEYS[*]}"
        elif [[ $RC -eq 1 ]]; then notok "$desc: same ${KEYS[*]} (qemu vs vdisk)" "$(cat "$T/out")"
        else notok "$desc: output is one JSON object" "$(head -c 300 v.json)" "$(last_err)"; fi
}

mkdir sub
"$QEMU_IMG" create -q -f raw r64.raw 64M
"$QEMU_IO" -f raw -c "write -P 1 0 1M" r64.raw >/dev/null
"$QEMU_IMG" create -q -f raw sub/r-odd.raw 33554431
head -c 1000001 /dev/urandom >odd.raw
: >empty.raw
"$QEMU_IMG" create -q -f vdi d.vdi $((100 * M + 512))
"$QEMU_IO" -f vdi -c "write -P 2 $M 2M" d.vdi >/dev/null
"$QEMU_IMG" create -q -f vdi -o static=on s.vdi 12M
"$QEMU_IMG" create -q -f vdi sub/small.vdi 1M

for f in r64.raw sub/r-odd.raw odd.raw empty.raw; do
        compare_info "$f" raw
        compare_info "$f"
done
for f in d.vdi s.vdi sub/small.vdi; do
        compare_info "$f" vdi
        compare_info "$f"
done
compare_info "./d.vdi" vdi
compare_info "$T/d.vdi" vdi
compare_info "sub/../s.vdi"
cd sub || exit 1
compare_info small.vdi vdi
compare_info ../r64.raw
cd "$T" || exit 1

# images vdisk-img made
vimg create -f vdi vd.vdi 33554431
if [[ $RC -eq 0 ]]; then compare_info vd.vdi vdi; compare_info vd.vdi
else notok "vdisk-img create -f vdi vd.vdi 33554431" "exit $RC: $(last_err)"; fi
vimg create -f vdi -o static=on vs.vdi 3M
if [[ $RC -eq 0 ]]; then compare_info vs.vdi vdi
else notok "vdisk-img create -f vdi -o static=on vs.vdi 3M" "exit $RC: $(last_err)"; fi
vimg create -f raw vr.raw 5M
if [[ $RC -eq 0 ]]; then compare_info vr.raw raw
else notok "vdisk-img create -f raw vr.raw 5M" "exit $RC: $(last_err)"; fi

# a missing file is an error in both
expect_fail "info on a missing file fails with a message" "$VDISK_IMG" info --output=json nonexistent.vdi

finish
