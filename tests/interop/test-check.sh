#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `vdisk-img check` agrees with `qemu-img check` (exit code, and the JSON
# corruptions / leaks / check-errors counts) on a clean VDI and on VDIs
# qemu-img made and this script then damaged:
#   oor    a block map entry points past the data area
#   dup    two map entries share one data slot
#   count  the allocated-blocks counter (header 0x184) is wrong
#   leak   a data slot past the last referenced one, referenced by nobody
# and on raw (63: "does not support checks").  qemu's VDI check never looks for
# leaks, so for "leak" vdisk-img must agree on 0 corruptions and report the
# leak itself: exit 3, leaks >= 1.
# Then `vdisk-img check -r all` repairs each damaged image: it exits 0 (the
# state after the repair, as qemu-img does) and afterwards both checks report
# a clean image and the undamaged blocks still hold their data.
# Exit codes: 0 clean, 2 corruptions, 3 leaks only, 63 not supported.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

mkvdi() { # FILE: 16 MiB, blocks 0,1 = 0x01, block 5 = 0x02
        "$QEMU_IMG" create -q -f vdi "$1" 16M
        "$QEMU_IO" -f vdi -c "write -P 1 0 $((2 * M))" -c "write -P 2 $((5 * M)) $M" "$1" >/dev/null
}

# counts FILE TOOL...: "exit corruptions leaks check-errors" of a JSON check
counts() {
        local f=$1; shift
        local rc=0
        "$@" check -f vdi --output=json "$f" >c.json 2>c.err || rc=$?
        local c
        c=$(py check-counts c.json 2>/dev/null) || c="(no JSON: $(head -c 200 c.json) $(head -c 200 c.err))"
        echo "$rc $c"
}

# the data that must survive: blocks 0, 1 (0x01) and block 5 (0x02)
# (for dup, block 0 may lose to the duplicate: only blocks 1 and 5 are checked)
data_intact() {
        local f=$1 what=$2
        local cmds=(-c "read -P 1 $M $M" -c "read -P 2 $((5 * M)) $M")
        [[ $what != dup ]] && cmds+=(-c "read -P 1 0 $M")
        expect_rc "$what: undamaged blocks keep their data after repair" 0 "$QEMU_IO" -f vdi "${cmds[@]}" "$f"
}

# --- clean images
mkvdi clean.vdi
expect_eq "clean vdi: human check exit codes (qemu, vdisk)" \
        "$("$QEMU_IMG" check -f vdi clean.vdi >/dev/null 2>&1; echo $?) $("$VDISK_IMG" check -f vdi clean.vdi >/dev/null 2>&1; echo $?)" "0 0"
expect_eq "clean vdi: JSON check (exit corruptions leaks check-errors)" \
        "$(counts clean.vdi "$VDISK_IMG")" "$(counts clean.vdi "$QEMU_IMG")"
cp clean.vdi clean-orig.vdi
"$VDISK_IMG" check -f vdi clean.vdi >/dev/null 2>&1 || true
expect_true "clean vdi: the check changes nothing" cmp -s clean.vdi clean-orig.vdi

"$QEMU_IMG" create -q -f vdi -o static=on static.vdi 5M
expect_eq "clean static vdi: JSON check" "$(counts static.vdi "$VDISK_IMG")" "$(counts static.vdi "$QEMU_IMG")"

mkpattern p.raw 20M
vimg convert -f raw -O vdi p.raw own.vdi
if [[ $RC -eq 0 ]]; then
        expect_eq "vdisk-made vdi: JSON check" "$(counts own.vdi "$VDISK_IMG")" "0 0 0 0"
else notok "vdisk-img convert -O vdi (for the check of its own output)" "exit $RC: $(last_err)"; fi

# --- raw: no checks
"$QEMU_IMG" create -q -f raw r.raw 4M
qrc=0; "$QEMU_IMG" check -f raw r.raw >/dev/null 2>&1 || qrc=$?
expect_eq "qemu-img check on raw exits 63" "$qrc" 63
expect_rc "vdisk-img check on raw exits 63 like qemu-img" 63 "$VDISK_IMG" check -f raw r.raw
expect_true "vdisk-img check on raw says why" test -s "$T/err"
expect_rc "vdisk-img check --output=json on raw exits 63" 63 "$VDISK_IMG" check -f raw --output=json r.raw

# --- damaged images
for what in oor dup count leak; do
        mkvdi "$what.vdi"
        py vdi-patch "$what.vdi" "$what"
        cp "$what.vdi" "$what-orig.vdi"
        q=$(counts "$what.vdi" "$QEMU_IMG")
        v=$(counts "$what.vdi" "$VDISK_IMG")
        read -r qrc qc ql qe <<<"$q"
        read -r vrc vc vl ve <<<"$v" || true
        echo "# $what: qemu-img: $q  vdisk-img: $v"
        if [[ $what == leak ]]; then
                expect_eq "leak: the fixture is clean for qemu-img (it does not look for VDI leaks)" "$q" "0 0 0 0"
                expect_eq "leak: vdisk-img check finds no corruption, like qemu-img" "${vc:-?}" 0
                expect_eq "leak: vdisk-img check exits 3 (leaks only)" "$vrc" 3
                expect_true "leak: vdisk-img check counts the leaked block (leaks=${vl:-?})" test "${vl:-0}" -ge 1 2>/dev/null
        else
                expect_eq "$what: qemu-img check exits 2 (fixture sanity)" "$qrc" 2
                expect_eq "$what: vdisk-img check exit code equals qemu-img's" "$vrc" "$qrc"
                expect_eq "$what: JSON corruptions count equals qemu-img's" "${vc:-?}" "$qc"
                expect_eq "$what: JSON leaks count equals qemu-img's" "${vl:-?}" "$ql"
                expect_eq "$what: JSON check-errors equals qemu-img's" "${ve:-?}" "$qe"
        fi
        hrc=0; "$VDISK_IMG" check -f vdi "$what.vdi" >/dev/null 2>&1 || hrc=$?
        expect_eq "$what: human-output check exits like the JSON one" "$hrc" "$vrc"
        expect_true "$what: the check without -r changes nothing" cmp -s "$what.vdi" "$what-orig.vdi"

        # repair
        expect_rc "$what: vdisk-img check -r all exits 0 (clean after the repair)" 0 \
                "$VDISK_IMG" check -f vdi -r all "$what.vdi"
        qcheck "$what.vdi"
        expect_eq "$what: qemu-img check after repair" "$(counts "$what.vdi" "$QEMU_IMG")" "0 0 0 0"
        expect_eq "$what: vdisk-img check after repair" "$(counts "$what.vdi" "$VDISK_IMG")" "0 0 0 0"
        data_intact "$what.vdi" "$what"
        expect_rc "$what: repaired image converts" 0 "$VDISK_IMG" convert -f vdi -O raw "$what.vdi" "$what.raw"
        rm -f "$what.raw"
done

# -r leaks repairs a leak-only image
mkvdi leak2.vdi
py vdi-patch leak2.vdi leak
expect_rc "leak: vdisk-img check -r leaks exits 0" 0 "$VDISK_IMG" check -f vdi -r leaks leak2.vdi
expect_eq "leak: vdisk-img check after -r leaks" "$(counts leak2.vdi "$VDISK_IMG")" "0 0 0 0"
qcheck leak2.vdi
data_intact leak2.vdi leak

# repair --dry-run of a qcow2 with a leaked cluster (qemu-img writes the
# image; its refcount for cluster 60, past the data, is set to 1): it names
# the leak, says a repair would fix it, and writes nothing; the repair then
# fixes it for qemu-img's check too.
"$QEMU_IMG" create -q -f qcow2 lq.qcow2 16M
"$QEMU_IO" -f qcow2 -c 'write -P 7 0 1M' lq.qcow2 >/dev/null
"$PY" - lq.qcow2 <<'PYEOF'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(104)
    f.seek(struct.unpack('>Q', h[48:56])[0])
    block = struct.unpack('>Q', f.read(8))[0]
    f.seek(block + 60 * 2)
    f.write(struct.pack('>H', 1))
    f.truncate(61 * 65536)
PYEOF
expect_rc "leaked qcow2: qemu-img check sees the leak (exit 3)" 3 "$QEMU_IMG" check -f qcow2 lq.qcow2
cp lq.qcow2 lq.orig
out=$("$VDISK_IMG" repair --dry-run lq.qcow2 2>&1) || true   # exit 3: leaks
expect_true "repair --dry-run names the leaked cluster" grep -q 'Leaked cluster 60 refcount=1 reference=0' <<<"$out"
expect_true "repair --dry-run says a repair would fix it" \
        grep -q '0 corruptions and 1 leaked clusters found; a repair would fix 0 and 1 of them' <<<"$out"
expect_true "repair --dry-run wrote nothing" cmp -s lq.qcow2 lq.orig
expect_rc "repair fixes the leak" 0 "$VDISK_IMG" repair lq.qcow2
expect_rc "after repair: qemu-img check is clean" 0 "$QEMU_IMG" check -f qcow2 lq.qcow2
expect_rc "after repair: the data is intact" 0 "$QEMU_IO" -f qcow2 -c 'read -P 7 0 1M' lq.qcow2

# --- the whole report, human and JSON, equals qemu-img's: the statistics
# (fragmented clusters within an L2 table, compressed ones, qcow2's image end
# offset: the end of the last cluster with a reference) on qcow2 and QED images
# with compressed clusters, scattered writes and a discard at the end
"$QEMU_IMG" create -q -f qcow2 st.qcow2 8M
"$QEMU_IO" -f qcow2 -c "write -c -P 4 0 64k" -c "write -P 5 $((3 * M)) 64k" -c "write -P 6 $M 128k" \
        -c "write -P 7 $((6 * M)) 64k" -c "discard $((6 * M)) 64k" st.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qed -o cluster_size=65536 st.qed 8M
"$QEMU_IO" -f qed -c "write -P 5 $((3 * M)) 64k" -c "write -P 6 $M 128k" -c "write -P 7 0 4k" st.qed >/dev/null
for f in st.qcow2 st.qed; do
        for o in human json; do
                want=$("$QEMU_IMG" check --output=$o "$f" 2>&1)
                got=$("$VDISK_IMG" check --output=$o "$f" 2>&1)
                expect_eq "$f: check --output=$o equals qemu-img's" "$got" "$want"
        done
done

finish
