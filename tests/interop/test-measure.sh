#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vdisk-img measure:
#   - raw and qcow2 outputs (cluster sizes 512 B to 2 MiB, refcount_bits 1
#     and 64, extended L2, compat 0.10, preallocation metadata/falloc/full,
#     a backing file) print exactly what qemu-img measure prints, human and
#     JSON, for --size and for inputs qemu-img made: raw with holes, qcow2
#     with zero, compressed and discarded clusters, a qcow2 over a backing
#     file, a qcow2 snapshot (-l), vdi, vmdk and vpc;
#   - raw, and vdi, vpc (dynamic, fixed) and vmdk (monolithicSparse, with and without
#     gt_on_demand), which qemu-img does not measure: `vdisk-img convert`
#     of each input never writes a file larger than the measured "required
#     size", nor with -S 0 (every block) larger than "fully allocated size";
#   - bad arguments fail as qemu-img's.
# (qemu skips data over holes of a qcow2 file only when it takes the file for
# metadata-preallocated, from the clusters with a reference; vdisk from the
# clusters the file spans: the inputs here are far from that threshold.)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((40 * M + 512 * 3))

# same ARGS...: vdisk-img measure ARGS prints what qemu-img measure ARGS
# prints (or fails with the same message, without the program's prefix)
same() {
        local qrc=0
        "$QEMU_IMG" measure "$@" >q.txt 2>q.err || qrc=$?
        vimg measure "$@"
        if (( qrc != 0 )); then
                if [[ $RC -ne 0 ]] && [[ $(sed 's/^qemu-img: //' q.err) == $(sed 's/^vdisk-img: //; s/^qcow2: //' "$T/err") ]]
                then ok "measure $*: fails as qemu-img"
                else notok "measure $*: fails as qemu-img" "qemu: $(cat q.err)" "ours: exit $RC $(last_err)"; fi
        elif [[ $RC -eq 0 ]] && cmp -s q.txt "$T/out"; then ok "measure $*: as qemu-img"
        else notok "measure $*: as qemu-img" "qemu: $(tr '\n' ' ' <q.txt)" "ours: $(tr '\n' ' ' <"$T/out") $(last_err)"; fi
}

mkpattern pat.raw "$SIZE"
"$QEMU_IMG" convert -f raw -O qcow2 pat.raw pat.qcow2
"$QEMU_IMG" create -q -f qcow2 sparse.qcow2 64M
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 100k" -c "write -z 1M 2M" -c "write -c -P 0x22 8M 64k" \
        -c "write -P 0x33 $((20 * M + 512)) 512" -c "write -P 0x44 30M 1M" -c "discard 30M 512k" \
        -c "write -P 0x55 $((64 * M - 4096)) 4096" -c "write -P 0x56 48M 12M" sparse.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c snap sparse.qcow2
"$QEMU_IO" -f qcow2 -c "write -P 0x66 40M 3M" sparse.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b pat.raw -F raw over.qcow2
"$QEMU_IO" -f qcow2 -c "write -P 0x77 $((5 * M)) 100k" over.qcow2 >/dev/null
"$QEMU_IMG" convert -f raw -O vdi pat.raw pat.vdi
"$QEMU_IMG" convert -f raw -O vmdk pat.raw pat.vmdk
"$QEMU_IMG" convert -f raw -O vpc -o force_size=on pat.raw pat.vhd

# --- raw and qcow2: qemu-img's figures
for s in 0 1000 1M 100M 1G 2T; do
        same -O raw --size "$s"
        same -O qcow2 --size "$s"
done
for o in cluster_size=512 cluster_size=4k cluster_size=2M refcount_bits=1 refcount_bits=64 extended_l2=on \
         compat=0.10 preallocation=metadata preallocation=falloc preallocation=full \
         cluster_size=2M,refcount_bits=64,extended_l2=on; do
        same -O qcow2 -o "$o" --size 300M
        same -O qcow2 -o "$o" sparse.qcow2
done
for f in pat.raw pat.qcow2 sparse.qcow2 over.qcow2 pat.vdi pat.vmdk pat.vhd; do
        same -O qcow2 "$f"
        same -O raw "$f"
        same --output=json -O qcow2 "$f"
done
same -O qcow2 -o backing_file=pat.raw,backing_fmt=raw sparse.qcow2
same -O qcow2 -l snap sparse.qcow2
same -O qcow2 -l snapshot.id=1 --output=json sparse.qcow2
same -O qcow2 -o compat=0.10 --output=json sparse.qcow2
same -O qcow2 -o cluster_size=1000 --size 1M
same -O qcow2 -o extended_l2=on,cluster_size=4k --size 1M
same -O qcow2 -o compat=0.10,refcount_bits=8 --size 1M

# --- vdi, vpc, vmdk: the output of convert fits
# fits FMT OPTS: for each input, convert's output <= required, with -S 0 <= fully allocated
fits() {
        local fmt=$1 o=$2 f req full got oo=()
        [[ -n $o ]] && oo=(-o "$o")
        for f in pat.raw pat.qcow2 sparse.qcow2 over.qcow2 pat.vdi; do
                vimg measure --output=json -O "$fmt" "${oo[@]}" "$f"
                if [[ $RC -ne 0 ]]; then notok "measure -O $fmt $o $f" "$(last_err)"; continue; fi
                cp "$T/out" m.json
                req=$(py json-get m.json required)
                full=$(py json-get m.json fully-allocated)
                rm -f out.img
                vimg convert -t unsafe -O "$fmt" "${oo[@]}" "$f" out.img
                got=$(stat -c %s out.img 2>/dev/null || echo missing)
                expect_true "$fmt $o from $f: the copy ($got bytes) fits the required size ($req)" \
                        test "$got" != missing -a "$got" -le "$req"
                rm -f out.img
                vimg convert -t unsafe -S 0 -O "$fmt" "${oo[@]}" "$f" out.img
                got=$(stat -c %s out.img 2>/dev/null || echo missing)
                expect_true "$fmt $o from $f: a full copy ($got bytes) fits the fully allocated size ($full)" \
                        test "$got" != missing -a "$got" -le "$full"
                rm -f out.img
        done
}
fits raw ""
fits vdi ""
fits vdi static=on
fits vpc ""
fits vpc force_size=on
fits vpc subformat=fixed
fits vmdk ""
fits vmdk gt_on_demand=on
# an empty image: exactly its metadata
for fmt in vdi vpc vmdk; do
        vimg measure --output=json -O "$fmt" --size 100M
        cp "$T/out" m.json
        rm -f e.img
        "$VDISK_IMG" create -q -f "$fmt" e.img 100M
        expect_eq "$fmt --size: required is what create makes" "$(py json-get m.json required)" \
                "$(stat -c %s e.img)"
done

# --- errors
expect_fail "--size and a file name" "$VDISK_IMG" measure --size 1M pat.raw
expect_fail "neither --size nor a file name" "$VDISK_IMG" measure -O qcow2
expect_fail "streamOptimized is not measured" "$VDISK_IMG" measure -O vmdk -o subformat=streamOptimized pat.raw
expect_fail "an unknown option" "$VDISK_IMG" measure -O qcow2 -o bogus=1 pat.raw
expect_fail "a snapshot that is not there" "$VDISK_IMG" measure -O qcow2 -l nosuch sparse.qcow2

finish
