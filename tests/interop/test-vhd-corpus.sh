#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The real VHDs of ../shared/corpus/real (relative to the source root; the
# test skips when it is absent, and never copies the images into the tree):
# each reads with the sha256 its README gives, the size rule of trap T1
# included (Disk2VHD, Hyper-V and Windows by current_size; Virtual PC and
# qemu by CHS); a fixed VHD is found by its footer (trap T2); the two 127 GiB
# sparse images read as qemu-img reads them (through a VDI copy and
# `qemu-img compare`, not a 127 GiB raw file); the bad-checksum, AFL-found
# and parentless images are refused with a clear message.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

CORPUS=${VDISK_CORPUS:-$HERE/../../../shared/corpus/real}
[[ -d $CORPUS ]] || skip "no real-image corpus at $CORPUS"
command -v xz >/dev/null && command -v bzip2 >/dev/null || skip "xz or bzip2 missing"

unpack() { # SRC DST
        case $1 in
        *.xz) xz -dc "$CORPUS/$1" >"$2" ;;
        *.bz2) bzip2 -dc "$CORPUS/$1" >"$2" ;;
        esac
}

# expect_sha FILE FMT SHA SIZE
expect_sha() {
        local f=$1 fmt=$2 want=$3 size=$4 got
        local fa=(); [[ $fmt != probed ]] && fa=(-f "$fmt")
        vimg info "${fa[@]}" --output=json "$f"
        if [[ $RC -ne 0 ]]; then notok "$f ($fmt): info" "$(last_err)"; return; fi
        expect_eq "$f ($fmt): virtual size" "$(py json-get "$T/out" virtual-size)" "$size"
        expect_eq "$f ($fmt): probed as vpc" "$(py json-get "$T/out" format)" vpc
        vimg convert "${fa[@]}" -O raw "$f" out.raw
        if [[ $RC -ne 0 ]]; then notok "$f ($fmt): convert" "$(last_err)"; return; fi
        got=$(sha256sum out.raw | cut -d' ' -f1)
        expect_eq "$f ($fmt): sha256 of the content" "$got" "$want"
        rm -f out.raw
}

# expect_refused FILE PATTERN
expect_refused() {
        local f=$1 pat=$2
        vimg convert -O raw "$f" out.raw
        if [[ $RC -ne 0 ]] && grep -qiE "$pat" "$T/err"; then ok "$f refused: $(last_err)"
        else notok "$f refused with a message matching '$pat'" "exit $RC: $(last_err)"; fi
        rm -f out.raw
}

have() { [[ -f $CORPUS/$1 ]]; }

if have dissect-hypervisor/vhd/dynamic.vhd.xz; then
        unpack dissect-hypervisor/vhd/dynamic.vhd.xz dynamic.vhd
        expect_sha dynamic.vhd probed ecff2ef6615a3cddc6a6885f1c6d9cf13a232697e1dc6575f2c2f01f57247784 10485760
fi
if have dissect-hypervisor/vhd/fixed.vhd.xz; then
        unpack dissect-hypervisor/vhd/fixed.vhd.xz fixed.vhd
        expect_sha fixed.vhd vpc 459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463 10485760
        expect_sha fixed.vhd probed 459325ab1fcd1d5ec9854cba790ee26378317cda177ffc1072008a1df88e6463 10485760
fi
if have dfvfs/ext2.vhd.xz; then
        unpack dfvfs/ext2.vhd.xz ext2.vhd
        expect_sha ext2.vhd probed 870be7ae16c1fa8faab05c6eb9205dc9a7ae35c5f552c5cf8a267c0bc6a5cb99 4212736
fi
if have qemu-iotests/d2v-zerofilled.vhd.bz2; then
        unpack qemu-iotests/d2v-zerofilled.vhd.bz2 d2v.vhd
        expect_sha d2v.vhd probed 1ba076be94a8a64541c25aae8d5a5f8b0da758c3797af597e03acb431ff8d143 263454720
        rm -f d2v.vhd
fi
for n in hyperv2012r2-dynamic:136365211648 virtualpc-dynamic:136363130880; do
        f=${n%%:*}; size=${n#*:}
        have qemu-iotests/$f.vhd.bz2 || continue
        unpack qemu-iotests/$f.vhd.bz2 $f.vhd
        vimg info --output=json $f.vhd
        expect_eq "$f: virtual size (T1)" "$(py json-get "$T/out" virtual-size)" "$size"
        vimg convert -O vdi $f.vhd $f.vdi
        if [[ $RC -eq 0 ]]; then qcompare $f.vhd vpc $f.vdi vdi
        else notok "$f: convert to vdi" "$(last_err)"; fi
        rm -f $f.vhd $f.vdi
done

if have dfvfs/image.vhd.xz; then
        unpack dfvfs/image.vhd.xz image.vhd
        expect_refused image.vhd "vhd: .*checksum"
fi
if have dfvfs/image-differential.vhd.xz; then
        unpack dfvfs/image-differential.vhd.xz image-differential.vhd
        expect_refused image-differential.vhd "vhd: .*checksum"
fi
if have qemu-iotests/afl5.img.bz2; then
        unpack qemu-iotests/afl5.img.bz2 afl5.img
        expect_refused afl5.img "vhd: .*(table|header|BAT)"
        vimg info -f vpc afl5.img
        expect_true "afl5.img refused with -f vpc too" test "$RC" -ne 0
fi
if have dfvfs/fat-differential.vhd.xz; then
        # Trap T3: a differencing VHD without its parent is refused (qemu
        # reads it as if it had none); with -f vpc too.
        unpack dfvfs/fat-differential.vhd.xz fat-differential.vhd
        expect_refused fat-differential.vhd "parent"
        vimg info --output=json fat-differential.vhd
        expect_eq "fat-differential.vhd: info still works (metadata only)" "$RC" 0
fi

finish
