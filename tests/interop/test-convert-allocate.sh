#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# convert -S 0 allocates the whole output as qemu-img does: every block
# written, zeros included, so the host file holds the full size.
#   for raw, vdi, qcow2, vmdk (monolithicSparse, streamOptimized), vpc and
#   qed outputs, from a patterned raw (holes, written zeros, data) and from a
#   qcow2 with zero clusters:
#   - `qemu-img map --output=json` of vdisk-img's output equals qemu-img's for
#     the same command (host offsets left out, since the layouts differ:
#     qcow2 and QED metadata placement, VDI data offset), so no range reads
#     as a hole of the host file ("zero": true) where qemu's does not
#   - st_blocks covers the virtual size (no hole in the host file; not for
#     streamOptimized or -c, whose units are compressed: every one is data)
#   - qemu-img compare equal to the source and qemu-img check clean
#   - -S 0 -B: only the top written, the map as qemu-img's
#   - -c -S 0 (qcow2): every cluster compressed, zeros too, new and -n;
#     -n over an allocated cluster fails as qemu-img's does
#   - the same with convert -n -S 0 into an image qemu-img created, after
#     data was written where the source has holes and zeros (not into
#     streamOptimized, which takes no writes once made)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((32 * M))

alloc() { stat -c '%b %B' "$1" | awk '{ print $1 * $2 }'; }

# same_map DESC QFILE VFILE FMT: qemu-img map of both, host offsets ignored
same_map() {
        local desc=$1 q=$2 v=$3 fmt=$4
        "$QEMU_IMG" map -f "$fmt" --output=json "$q" >mq.json
        "$QEMU_IMG" map -f "$fmt" --output=json "$v" >mv.json
        run py map-cmp mq.json mv.json --no-offset
        if [[ $RC -eq 0 ]]; then ok "$desc: qemu-img map equals that of qemu-img's output"
        else notok "$desc: qemu-img map equals that of qemu-img's output (qemu first)" "$(cat "$T/out")"; fi
}

# full_alloc DESC FILE FMT: the host file holds at least the virtual size
full_alloc() {
        local desc=$1 f=$2 fmt=$3 size got
        size=$(qinfo "$f" "$fmt" virtual-size)
        got=$(alloc "$f")
        expect_true "$desc: $got bytes allocated >= virtual size $size" test "$got" -ge "$size"
}

# check_out DESC SRC SRCFMT QFILE VFILE FMT [compressed]
check_out() {
        local desc=$1 src=$2 sfmt=$3 q=$4 v=$5 fmt=$6
        same_map "$desc" "$q" "$v" "$fmt"
        [[ -n ${7:-} ]] || full_alloc "$desc" "$v" "$fmt"
        qcompare "$src" "$sfmt" "$v" "$fmt"
        # (qemu-img check knows no raw or vpc)
        [[ $fmt == raw || $fmt == vpc ]] || qcheck "$v" "$fmt"
}

mkpattern p.raw $SIZE 7
"$QEMU_IMG" create -q -f qcow2 z.qcow2 $SIZE
"$QEMU_IO" -f qcow2 \
        -c "write -P 0x31 0 64k" \
        -c "write -z $M $((3 * M))" \
        -c "write -P 0 $((6 * M)) $M" \
        -c "write -P 0x32 $((20 * M - 512)) 4k" z.qcow2 >/dev/null

for src in p.raw:raw z.qcow2:qcow2; do
        sfile=${src%%:*} sfmt=${src##*:}
        for spec in raw vdi qcow2 vmdk vmdk:subformat=streamOptimized vpc qed; do
                fmt=${spec%%:*} opts=() stream=
                [[ $spec == *:* ]] && opts=(-o "${spec#*:}")
                [[ $spec == *streamOptimized ]] && stream=1
                # a new output
                rm -f q.$fmt v.$fmt
                qimg convert -f "$sfmt" -O "$fmt" "${opts[@]}" -S 0 "$sfile" q.$fmt
                [[ $RC -eq 0 ]] || notok "qemu-img convert -S 0 $sfile -> $spec" "exit $RC"
                vimg convert -f "$sfmt" -O "$fmt" "${opts[@]}" -S 0 "$sfile" v.$fmt
                if [[ $RC -eq 0 ]]; then
                        ok "convert -S 0 $sfile -> $spec"
                        check_out "convert -S 0 $sfile -> $spec" "$sfile" "$sfmt" q.$fmt v.$fmt "$fmt" $stream
                else
                        notok "convert -S 0 $sfile -> $spec" "exit $RC: $(last_err)"
                fi
                [[ -z $stream ]] || continue

                # into an existing image (-n) holding data under the
                # source's holes and zeros
                rm -f q.$fmt v.$fmt
                "$QEMU_IMG" create -q -f "$fmt" q.$fmt "$(qinfo "$sfile" "$sfmt" virtual-size)"
                "$QEMU_IO" -f "$fmt" -c "write -P 0x77 $((2 * M)) $((3 * M))" \
                        -c "write -P 0x78 $((12 * M)) 4k" q.$fmt >/dev/null
                cp q.$fmt v.$fmt
                qimg convert -n -f "$sfmt" -O "$fmt" -S 0 "$sfile" q.$fmt
                [[ $RC -eq 0 ]] || notok "qemu-img convert -n -S 0 $sfile -> $fmt" "exit $RC"
                vimg convert -n -f "$sfmt" -O "$fmt" -S 0 "$sfile" v.$fmt
                if [[ $RC -eq 0 ]]; then
                        ok "convert -n -S 0 $sfile -> $fmt"
                        check_out "convert -n -S 0 $sfile -> $fmt" "$sfile" "$sfmt" q.$fmt v.$fmt "$fmt"
                else
                        notok "convert -n -S 0 $sfile -> $fmt" "exit $RC: $(last_err)"
                fi
        done
done

# -S 0 -B: only the source's top is written (qemu-img's map, backing
# included; the content equal)
"$QEMU_IMG" create -q -f qcow2 -b z.qcow2 -F qcow2 t.qcow2
"$QEMU_IO" -f qcow2 -c "write -P 0x41 $((4 * M)) 64k" -c "write -z $((8 * M)) $M" t.qcow2 >/dev/null
rm -f q.qcow2 v.qcow2
qimg convert -S 0 -O qcow2 -B z.qcow2 -F qcow2 t.qcow2 q.qcow2
vimg convert -S 0 -O qcow2 -B z.qcow2 -F qcow2 t.qcow2 v.qcow2
if [[ $RC -eq 0 ]]; then
        ok "convert -S 0 -B"
        same_map "convert -S 0 -B" q.qcow2 v.qcow2 qcow2
        qcompare t.qcow2 qcow2 v.qcow2 qcow2
        qcheck v.qcow2 qcow2
else
        notok "convert -S 0 -B" "exit $RC: $(last_err)"
fi

# -c -S 0: every cluster compressed, zeros too (qemu's map: data everywhere);
# -n -c -S 0 into an empty qcow2 the same, and over an allocated cluster it
# fails as qemu-img does (a compressed write never overwrites)
for sfile in p.raw:raw z.qcow2:qcow2; do
        sfmt=${sfile##*:} sfile=${sfile%%:*}
        rm -f q.qcow2 v.qcow2
        qimg convert -c -S 0 -f "$sfmt" -O qcow2 "$sfile" q.qcow2
        vimg convert -c -S 0 -f "$sfmt" -O qcow2 "$sfile" v.qcow2
        if [[ $RC -eq 0 ]]; then
                ok "convert -c -S 0 $sfile -> qcow2"
                check_out "convert -c -S 0 $sfile -> qcow2" "$sfile" "$sfmt" q.qcow2 v.qcow2 qcow2 compressed
        else
                notok "convert -c -S 0 $sfile -> qcow2" "exit $RC: $(last_err)"
        fi
        size=$(qinfo "$sfile" "$sfmt" virtual-size)
        rm -f q.qcow2 v.qcow2
        "$QEMU_IMG" create -q -f qcow2 q.qcow2 "$size"
        "$QEMU_IMG" create -q -f qcow2 v.qcow2 "$size"
        qimg convert -n -c -S 0 -f "$sfmt" -O qcow2 "$sfile" q.qcow2
        vimg convert -n -c -S 0 -f "$sfmt" -O qcow2 "$sfile" v.qcow2
        if [[ $RC -eq 0 ]]; then
                ok "convert -n -c -S 0 $sfile -> qcow2"
                check_out "convert -n -c -S 0 $sfile -> qcow2" "$sfile" "$sfmt" q.qcow2 v.qcow2 qcow2 compressed
        else
                notok "convert -n -c -S 0 $sfile -> qcow2" "exit $RC: $(last_err)"
        fi
        rm -f q.qcow2 v.qcow2
        "$QEMU_IMG" create -q -f qcow2 q.qcow2 "$size"
        "$QEMU_IO" -f qcow2 -c "write -P 0x79 $((12 * M)) 64k" q.qcow2 >/dev/null
        cp q.qcow2 v.qcow2
        qimg convert -n -c -S 0 -f "$sfmt" -O qcow2 "$sfile" q.qcow2
        want=$RC
        vimg convert -n -c -S 0 -f "$sfmt" -O qcow2 "$sfile" v.qcow2
        expect_eq "convert -n -c -S 0 $sfile over an allocated cluster: qemu-img's exit code" "$RC" "$want"
        qcheck v.qcow2 qcow2
done

finish
