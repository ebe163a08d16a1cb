#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A 15 TiB VDI holding 2 MiB of data, and a 3-deep chain of VDI diffs over it
# (issue 13: cost follows the data, not the virtual size).  vdisk-img alone:
# qemu-img's compare of these takes minutes (it is only the oracle for
# `check`); the oracle for content is the sparse raw files themselves.
#   s.raw   2 MiB of data at 8 places of 15 TiB; x.vdi its conversion
#   m1..m3  s.raw plus small writes; m2 also punches 256 KiB of s.raw's data
#           (d2's zero block must hide x.vdi's data there)
#   x.vdi <- d1.vdi <- d2.vdi <- d3.vdi   (convert -B: dN reads as mN)
# - compare: each image against its raw (identical), and against the wrong
#   raw (the first differing offset, exactly)
# - convert -n: a sparse raw into an existing VDI that has data where the
#   source has holes (zeroed), into an empty VDI, into a sparse raw target,
#   and --target-is-zero
# - commit down the chain, rebase onto the base and onto nothing: content kept
# Each step takes seconds; walking the holes took minutes to hours.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

K=1024
T40=$((1 << 40))
SIZE=$((15 * T40))

truncate -s $SIZE s.raw 2>/dev/null || skip "the file system here cannot hold a 15 TiB sparse file"
# put FILE OFFSET BYTES: random data (OFFSET and BYTES multiples of 512)
put() { head -c "$3" /dev/urandom | dd of="$1" bs=512 seek=$(($2 / 512)) conv=notrunc status=none; }
for off in 0 $((1 << 30)) $((100 << 30)) $T40 $((3 * T40)) $((7 * T40)) $((11 * T40)) $((SIZE - (1 << 30))); do
        put s.raw "$off" $((256 * K))
done
cp --sparse=always s.raw m1.raw
put m1.raw $((5 * T40)) $((64 * K))
cp --sparse=always m1.raw m2.raw
put m2.raw $((9 * T40)) $((4 * K))
fallocate -p -o $((1 << 30)) -l $((256 * K)) m2.raw
cp --sparse=always m2.raw m3.raw
put m3.raw $((13 * T40 + 1536)) 512
D3=$((13 * T40 + 1536))   # the first offset where m3 differs from m2

vimg convert -f raw -O vdi s.raw x.vdi
if [[ $RC -ne 0 ]]; then notok "convert s.raw -> x.vdi" "exit $RC: $(last_err)"; finish; fi
ok "convert s.raw -> x.vdi"
qcheck x.vdi
prev=x.vdi
for i in 1 2 3; do
        expect_rc "convert -B $prev m$i.raw -> d$i.vdi" 0 \
                "$VDISK_IMG" convert -f raw -O vdi -B "$prev" -F vdi "m$i.raw" "d$i.vdi"
        prev=d$i.vdi
done
[[ -f d3.vdi ]] || { notok "no chain to test"; finish; }

# --- compare
expect_rc "compare x.vdi s.raw: identical" 0 "$VDISK_IMG" compare x.vdi s.raw
expect_rc "compare -f raw -F vdi s.raw x.vdi: identical" 0 "$VDISK_IMG" compare -f raw -F vdi s.raw x.vdi
for i in 1 2 3; do
        expect_rc "compare d$i.vdi m$i.raw (through the chain): identical" 0 "$VDISK_IMG" compare "d$i.vdi" "m$i.raw"
done
expect_rc "compare d2.vdi s.raw: different (d2's zero block hides x.vdi's data at 1 GiB)" 1 \
        "$VDISK_IMG" compare d2.vdi s.raw
expect_eq "compare d2.vdi s.raw names 1 GiB" "$(cat "$T/out")" "Content mismatch at offset $((1 << 30))!"
expect_rc "compare d3.vdi m2.raw: different" 1 "$VDISK_IMG" compare d3.vdi m2.raw
expect_eq "compare d3.vdi m2.raw names the first differing sector" "$(cat "$T/out")" \
        "Content mismatch at offset $D3!"
expect_rc "compare d3.vdi d2.vdi (two chains): different" 1 "$VDISK_IMG" compare d3.vdi d2.vdi
expect_eq "compare d3.vdi d2.vdi names the first differing sector" "$(cat "$T/out")" \
        "Content mismatch at offset $D3!"
expect_rc "compare -s x.vdi x.vdi: identical" 0 "$VDISK_IMG" compare -s x.vdi x.vdi

# --- convert -n
mkdir n && cd n
vimg convert -f raw -O vdi ../m3.raw t.vdi
expect_rc "convert -n s.raw into a VDI holding m3 (data where s.raw has holes)" 0 \
        "$VDISK_IMG" convert -n -f raw -O vdi ../s.raw t.vdi
expect_rc "... the target reads as s.raw: m3's extra data was zeroed" 0 "$VDISK_IMG" compare t.vdi ../s.raw
qcheck t.vdi
vimg create -f vdi e.vdi $SIZE
expect_rc "convert -n m3.raw into an empty 15 TiB VDI" 0 "$VDISK_IMG" convert -n -f raw -O vdi ../m3.raw e.vdi
expect_rc "... reads as m3.raw" 0 "$VDISK_IMG" compare e.vdi ../m3.raw
vimg create -f vdi z.vdi $SIZE
expect_rc "convert -n --target-is-zero m2.raw into an empty VDI" 0 \
        "$VDISK_IMG" convert -n --target-is-zero -f raw -O vdi ../m2.raw z.vdi
expect_rc "... reads as m2.raw" 0 "$VDISK_IMG" compare z.vdi ../m2.raw
cp --sparse=always ../m3.raw r.raw
expect_rc "convert -n x.vdi into a sparse raw holding m3" 0 "$VDISK_IMG" convert -n -f vdi -O raw ../x.vdi r.raw
expect_rc "... the raw reads as s.raw" 0 "$VDISK_IMG" compare -f raw -F raw r.raw ../s.raw
expect_true "... and stays sparse (under 16 MiB allocated)" test "$(du -k r.raw | cut -f1)" -lt $((16 * K))
cd ..

# --- rebase (on copies of the chain, in their own directory)
mkdir rb && cp --sparse=always x.vdi d1.vdi d2.vdi d3.vdi rb/ && cd rb
expect_rc "rebase d3.vdi onto x.vdi (safe: copies what d1 and d2 held)" 0 \
        "$VDISK_IMG" rebase -f vdi -b x.vdi -F vdi d3.vdi
expect_rc "... d3.vdi still reads as m3.raw" 0 "$VDISK_IMG" compare d3.vdi ../m3.raw
expect_rc "rebase d2.vdi onto nothing" 0 "$VDISK_IMG" rebase -f vdi -b "" d2.vdi
expect_rc "... d2.vdi still reads as m2.raw" 0 "$VDISK_IMG" compare d2.vdi ../m2.raw
cd ..

# --- commit down the chain
expect_rc "commit d3.vdi" 0 "$VDISK_IMG" commit d3.vdi
expect_rc "... d2.vdi reads as m3.raw" 0 "$VDISK_IMG" compare d2.vdi m3.raw
expect_rc "commit d2.vdi" 0 "$VDISK_IMG" commit d2.vdi
expect_rc "commit d1.vdi" 0 "$VDISK_IMG" commit d1.vdi
expect_rc "... x.vdi reads as m3.raw (the zero block went down too)" 0 "$VDISK_IMG" compare x.vdi m3.raw
qcheck x.vdi
finish
