#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `vdisk-img resize` and `vdisk-img compact` on VDI images (qemu-img can do
# neither on VDI, so qemu-img check / info / compare are the oracle):
#  - grow (absolute and +N) keeps the data, passes qemu-img check, and qemu-img
#    info shows the new size; growing a qemu-made VDI whose block map must
#    move (map at 512, data at 1024) works too
#  - shrink without --shrink is refused (image untouched); with --shrink it
#    works when the cut tail holds no data and fails with a clear error (image
#    untouched) when it does; raw resize behaves like qemu-img's
#  - compact of a VDI with blocks of zeros written as data shrinks the file,
#    keeps the content and passes qemu-img check
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

# same_as_padded IMG SRC SIZE DESC: IMG reads as SRC padded with zeros to SIZE
same_as_padded() {
        local img=$1 src=$2 size=$3 desc=$4
        cp "$src" pad.raw
        truncate -s "$size" pad.raw
        expect_eq "$desc: qemu-img info virtual-size" "$(qinfo "$img" vdi virtual-size 2>&1)" "$size"
        qcheck "$img"
        qcompare pad.raw raw "$img" vdi
        rm -f pad.raw
}

# --- grow
mkpattern src.raw 32M 4
vimg convert -f raw -O vdi src.raw a.vdi
if [[ $RC -ne 0 ]]; then notok "convert src.raw -> a.vdi" "exit $RC: $(last_err)"; finish; fi
expect_rc "resize a.vdi 64M" 0 "$VDISK_IMG" resize a.vdi 64M
same_as_padded a.vdi src.raw $((64 * M)) "grown to 64M"
expect_rc "resize a.vdi +16M" 0 "$VDISK_IMG" resize a.vdi +16M
same_as_padded a.vdi src.raw $((80 * M)) "grown by 16M"
expect_rc "resize -f vdi a.vdi to 81M+512 (not a block multiple)" 0 "$VDISK_IMG" resize -f vdi a.vdi $((81 * M + 512))
same_as_padded a.vdi src.raw $((81 * M + 512)) "grown to 81M+512"

"$QEMU_IMG" create -q -f vdi q.vdi 4M
"$QEMU_IO" -f vdi -c "write -P 0x31 0 1M" -c "write -P 0x32 $((2 * M + 512)) 4k" \
        -c "write -P 0x33 $((4 * M - 512)) 512" q.vdi >/dev/null
"$QEMU_IMG" convert -f vdi -O raw q.vdi q.raw
expect_eq "qemu vdi: block map at 512, data at 1024 (fixture)" \
        "$(vdi q.vdi offblocks) $(vdi q.vdi offdata)" "512 1024"
expect_rc "resize a qemu-made vdi to 1G (block map outgrows its room)" 0 "$VDISK_IMG" resize q.vdi 1G
same_as_padded q.vdi q.raw $((1 << 30)) "qemu vdi grown to 1G"
expect_eq "qemu vdi grown to 1G: 1024 blocks" "$(vdi q.vdi blocks)" 1024

# --- shrink
cp a.vdi a-before.vdi
expect_fail "resize a.vdi 48M without --shrink is refused" "$VDISK_IMG" resize a.vdi 48M
expect_true "refused shrink left a.vdi unchanged" cmp -s a.vdi a-before.vdi
expect_fail "resize a.vdi -- -8M without --shrink is refused" "$VDISK_IMG" resize a.vdi -- -8M
expect_true "refused relative shrink left a.vdi unchanged" cmp -s a.vdi a-before.vdi

expect_rc "resize --shrink a.vdi 40M (the tail holds no data)" 0 "$VDISK_IMG" resize --shrink a.vdi 40M
same_as_padded a.vdi src.raw $((40 * M)) "shrunk to 40M"
expect_rc "resize --shrink a.vdi -- -6M (relative, to 34M)" 0 "$VDISK_IMG" resize --shrink a.vdi -- -6M
same_as_padded a.vdi src.raw $((34 * M)) "shrunk to 34M"
expect_rc "resize --shrink a.vdi 32M (exactly the data's end)" 0 "$VDISK_IMG" resize --shrink a.vdi 32M
same_as_padded a.vdi src.raw $((32 * M)) "shrunk to 32M"

cp a.vdi a-before.vdi
expect_fail "resize --shrink a.vdi 16M fails: the tail holds data" "$VDISK_IMG" resize --shrink a.vdi 16M
expect_true "failed shrink left a.vdi unchanged" cmp -s a.vdi a-before.vdi
expect_fail "resize --shrink a.vdi 32M-512 fails: the last sector holds data" \
        "$VDISK_IMG" resize --shrink a.vdi $((32 * M - 512))
expect_true "failed shrink left a.vdi unchanged" cmp -s a.vdi a-before.vdi

# --- static vdi: either grows and stays fully allocated, or refuses cleanly
vimg create -f vdi -o static=on st.vdi 3M
if [[ $RC -eq 0 ]]; then
        cp st.vdi st-before.vdi
        vimg resize st.vdi 5M
        if [[ $RC -eq 0 ]]; then
                ok "static vdi grown"
                qcheck st.vdi
                expect_eq "grown static vdi: virtual size" "$(qinfo st.vdi vdi virtual-size)" $((5 * M))
                expect_eq "grown static vdi: still static" "$(vdi st.vdi type)" 2
                expect_eq "grown static vdi: every block allocated" "$(vdi st.vdi allocated)" 5
        elif [[ -s $T/err ]] && cmp -s st.vdi st-before.vdi; then
                ok "static vdi resize refused with a message, image unchanged"
        else
                notok "static vdi resize refused cleanly" "exit $RC, stderr: $(last_err)"
        fi
else notok "create -o static=on st.vdi 3M" "exit $RC: $(last_err)"; fi

# --- raw: like qemu-img: --shrink is the consent to cut a tail that holds
# data (vdisk-img(1)); without it both refuse.
for op in "|20M" "|+3M" "|10M" "|-1M" "--shrink|10M" "--shrink|-1M"; do
        opt=${op%%|*} sz=${op#*|}
        "$QEMU_IMG" create -q -f raw rq.raw 16M
        "$QEMU_IO" -f raw -c "write -P 0x41 0 16M" rq.raw >/dev/null
        cp rq.raw rv.raw
        qrc=0
        # shellcheck disable=SC2086
        "$QEMU_IMG" resize -f raw $opt rq.raw -- "$sz" >/dev/null 2>&1 || qrc=$?
        # shellcheck disable=SC2086
        expect_rc "raw resize $opt $sz: exit $qrc like qemu-img" "$qrc" "$VDISK_IMG" resize -f raw $opt rv.raw -- "$sz"
        expect_true "raw resize $opt $sz: same file as qemu-img's" cmp -s rq.raw rv.raw
done
"$QEMU_IMG" create -q -f raw rv.raw 16M
"$QEMU_IO" -f raw -c "write -P 0x41 0 8M" rv.raw >/dev/null
"$QEMU_IMG" create -q -f raw rq.raw 16M
"$QEMU_IO" -f raw -c "write -P 0x41 0 8M" rq.raw >/dev/null
"$QEMU_IMG" resize -q -f raw --shrink rq.raw 8M
expect_rc "raw resize --shrink 8M: the tail is all zeros" 0 "$VDISK_IMG" resize -f raw --shrink rv.raw 8M
expect_true "raw shrink of a zero tail: same file as qemu-img's" cmp -s rq.raw rv.raw

# --- compact
"$QEMU_IMG" create -q -f vdi c.vdi $((12 * M + 512))
"$QEMU_IO" -f vdi \
        -c "write -P 0x51 0 $M" \
        -c "write -P 0 $M $M" \
        -c "write -P 0x52 $((2 * M)) 4k" \
        -c "write -P 0 $((3 * M)) $M" \
        -c "write -P 0x53 $((5 * M + 4096)) 512" \
        -c "write -P 0 $((7 * M)) $M" \
        -c "write -P 0x54 $((9 * M)) $M" \
        -c "write -P 0 $((11 * M)) $((M + 512))" c.vdi >/dev/null
"$QEMU_IMG" convert -f vdi -O raw c.vdi c.raw
before=$(stat -c %s c.vdi)
expect_eq "compact fixture: 9 blocks allocated" "$(vdi c.vdi allocated)" 9
expect_rc "compact c.vdi" 0 "$VDISK_IMG" compact c.vdi
after=$(stat -c %s c.vdi)
expect_true "compact shrank the file by the 5 zero blocks ($before -> $after bytes)" \
        test "$after" -le $((before - 5 * M))
expect_eq "compacted: 4 blocks allocated" "$(vdi c.vdi allocated)" 4
qcheck c.vdi
qcompare c.raw raw c.vdi vdi
expect_eq "compacted: virtual size unchanged" "$(qinfo c.vdi vdi virtual-size)" $((12 * M + 512))
"$QEMU_IMG" map -f vdi --output=json c.vdi >cm.json
expect_eq "compacted: qemu-img map shows 4 MiB of data" \
        "$("$PY" -c 'import json,sys; print(sum(e["length"] for e in json.load(open(sys.argv[1])) if e["data"]))' cm.json)" \
        $((4 * M))
cp c.vdi c2.vdi
expect_rc "compact of a compact vdi" 0 "$VDISK_IMG" compact c2.vdi
expect_eq "compact of a compact vdi keeps the size" "$(stat -c %s c2.vdi)" "$after"
qcompare c.raw raw c2.vdi vdi

# compact a vdisk-made vdi where every block holds data, zeros included
head -c $((6 * M)) /dev/urandom >r.raw
"$PY" "$HERE/helper.py" edit r.raw zero:$((2 * M)):$((2 * M))
vimg convert -f raw -O vdi -o static=on r.raw rs.vdi
vimg convert -f vdi -O vdi -S 0 rs.vdi rd.vdi
if [[ $RC -eq 0 && $(vdi rd.vdi allocated) == 6 ]]; then
        b=$(stat -c %s rd.vdi)
        expect_rc "compact a vdisk-made vdi with written zeros" 0 "$VDISK_IMG" compact rd.vdi
        expect_true "it shrank by the 2 zero blocks" test "$(stat -c %s rd.vdi)" -le $((b - 2 * M))
        qcheck rd.vdi
        qcompare r.raw raw rd.vdi vdi
else
        echo "# (no vdisk-made dynamic vdi with stored zero blocks: convert -S 0 unsupported or sparse; skipped)"
fi

finish
