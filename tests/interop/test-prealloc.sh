#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Preallocation, nocow, the first block of a raw create, resize --shrink and
# --version, each against what qemu-img does (issue 13's drop-in gaps).
#   create  every format x off/metadata/falloc/full/bogus: the same exit
#           code as qemu-img and, on refusal, the same stderr byte for byte
#           (vdisk-img runs under the name qemu-img, as a drop-in install
#           does, and both write the same file name in their own directory);
#           on success: content equal (qemu-img compare), qemu-img check as
#           for qemu's image, allocation (st_blocks) within 64 KiB of
#           qemu's, `qemu-img map --output=json` equal for raw and qcow2;
#           the "Formatting" line equal
#   convert qcow2 with data -> raw, qcow2, vdi x the modes: as for create
#   resize  raw grown with each mode, qed refusing falloc: exit code,
#           stderr, map and allocation as qemu-img's; a shrink without
#           --shrink and with --preallocation refused with qemu-img's words;
#           --shrink drops a raw file's data past the new end, as qemu-img
#   first block   a new raw file has data (zeros) in its first 4 KiB and a
#           hole after (SEEK_DATA / SEEK_HOLE), like qemu-img's
#   nocow   accepted on this file system as qemu-img accepts it; on a btrfs
#           (loop-mounted in a private mount namespace, root and mkfs.btrfs
#           needed, else that part skips) the new file has the C attribute
#   ENOSPC  falloc and full on a 2 MiB tmpfs fail like qemu-img's, naming
#           "No space left on device" (root only)
#   version under the name qemu-img: "qemu-img version 7.2.0", then vdisk's line
if [[ -z ${VDISK_PREALLOC_NS:-} && $(id -u) -eq 0 ]] && unshare -m true 2>/dev/null; then
        VDISK_PREALLOC_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

K=1024
M=$((1 << 20))
mkdir bin q v
ln -s "$VDISK_IMG" bin/qemu-img
VQ=$T/bin/qemu-img      # vdisk-img under qemu-img's name

alloc() { stat -c '%b %B' "$1" | awk '{ print $1 * $2 }'; }
# same_alloc DESC QFILE VFILE [QBASE VBASE]: st_blocks within 64 KiB of each
# other; with the base files (the same image made without preallocation),
# what the mode adds (the formats' own layouts differ where qemu-img's and
# vdisk-img's images differ without preallocation too)
same_alloc() {
        local a b d
        a=$(alloc "$2"); b=$(alloc "$3")
        if [[ -n ${4:-} ]]; then a=$((a - $(alloc "$4"))); b=$((b - $(alloc "$5"))); fi
        d=$((a > b ? a - b : b - a))
        if (( d <= 64 * K )); then ok "$1: allocation${4:+ added} $b bytes (qemu-img: $a)"
        else notok "$1: allocation${4:+ added} within 64 KiB of qemu-img's" "vdisk-img: $b, qemu-img: $a"; fi
}
# both DESC WHERE CMD...: runs CMD in q/ with qemu-img and in v/ with
# vdisk-img-as-qemu-img; the exit codes and the stderr must be equal
both() {
        local desc=$1 qrc; shift
        echo "# \$ $*"
        qrc=0; (cd q && "$QEMU_IMG" "$@" >/dev/null 2>"$T/qerr") || qrc=$?
        RC=0; (cd v && "$VQ" "$@" >/dev/null 2>"$T/verr") || RC=$?
        if [[ $qrc != "$RC" ]]; then
                notok "$desc: exit $qrc as qemu-img" "vdisk-img: exit $RC: $(tr '\n' ' ' <"$T/verr")" \
                        "qemu-img: $(tr '\n' ' ' <"$T/qerr")"
        elif ! cmp -s "$T/qerr" "$T/verr"; then
                notok "$desc: stderr as qemu-img's" "vdisk-img: $(tr '\n' ' ' <"$T/verr")" \
                        "qemu-img: $(tr '\n' ' ' <"$T/qerr")"
        else
                ok "$desc: exit $RC$([[ -s $T/qerr ]] && echo ", stderr: $(head -c 120 "$T/qerr" | tr '\n' ' ')")"
        fi
}
# result DESC FILE FMT [BASE]: the two images match: content, qemu-img check,
# allocation (or what the mode adds over BASE, the same made with
# preallocation=off), and for raw and qcow2 with preallocation the map
result() {
        local desc=$1 f=$2 fmt=$3 base=${4:-} qc vc
        [[ -e q/$f && -e v/$f ]] || { notok "$desc: both images exist"; return; }
        expect_rc "$desc: content equal" 0 "$QEMU_IMG" compare -f "$fmt" -F "$fmt" "q/$f" "v/$f"
        "$QEMU_IMG" check -f "$fmt" "q/$f" >/dev/null 2>&1 && qc=0 || qc=$?
        "$QEMU_IMG" check -f "$fmt" "v/$f" >/dev/null 2>&1 && vc=0 || vc=$?
        expect_eq "$desc: qemu-img check exit as for qemu's image" "$vc" "$qc"
        if [[ -n $base ]]; then same_alloc "$desc" "q/$f" "v/$f" "q/$base" "v/$base"
        else same_alloc "$desc" "q/$f" "v/$f"; fi
        # (qcow2 without preallocation: vdisk-img's first data cluster lies
        # after its own table layout, not at qemu-img's offset)
        if [[ $fmt == raw || ($fmt == qcow2 && $f != *-off) ]]; then
                expect_eq "$desc: qemu-img map as qemu's" \
                        "$("$QEMU_IMG" map -f "$fmt" --output=json "v/$f")" \
                        "$("$QEMU_IMG" map -f "$fmt" --output=json "q/$f")"
        fi
}

# ---------------------------------------------------------------- create
# (the formats whose preallocation is qemu's file layer's, where falloc and
# full change nothing: the modes qemu-img refuses, and one it takes)
for fmt in raw vdi vmdk vpc qcow2 qcow qed; do
        modes="off metadata full"
        [[ $fmt == raw || $fmt == qcow2 || $fmt == vdi ]] && modes="off metadata falloc full bogus"
        for m in $modes; do
                f=c-$fmt-$m
                both "create -f $fmt -o preallocation=$m" create -q -f "$fmt" -o "preallocation=$m" "$f" 4M
                [[ $RC -eq 0 && $m != off ]] && result "create -f $fmt -o preallocation=$m" "$f" "$fmt" "c-$fmt-off"
        done
done
# the Formatting line, with the file layer's options after the format's own
for args in "-f raw -o preallocation=falloc,nocow=on" "-f vdi -o nocow=off,preallocation=full" \
            "-f qcow2 -o preallocation=metadata,nocow=on" "-f qcow -o preallocation=full"; do
        # shellcheck disable=SC2086
        (cd q && "$QEMU_IMG" create $args fl.img 1M >"$T/qout" 2>&1) || true
        # shellcheck disable=SC2086
        (cd v && "$VQ" create $args fl.img 1M >"$T/vout" 2>&1) || true
        expect_eq "create $args: the Formatting line as qemu-img's" "$(cat "$T/vout")" "$(cat "$T/qout")"
done
both "create -o nocow=bogus" create -q -f raw -o nocow=bogus nb.img 1M

# ---------------------------------------------------------------- convert
"$QEMU_IMG" create -q -f qcow2 src.qcow2 4M
"$QEMU_IO" -f qcow2 -c 'write -P 5 0 64k' -c 'write -P 9 2M 128k' -c 'write -z 3M 64k' src.qcow2 >/dev/null
for fmt in raw qcow2 vdi; do
        for m in off metadata falloc full; do
                f=k-$fmt-$m
                both "convert -O $fmt -o preallocation=$m" convert -O "$fmt" -o "preallocation=$m" ../src.qcow2 "$f"
                [[ $RC -eq 0 ]] || continue
                if [[ $fmt == vdi ]]; then
                        # qemu-img's VDI convert writes the zero blocks qemu-img
                        # reads from the qcow2; vdisk-img leaves them sparse
                        expect_rc "convert -O vdi -o preallocation=$m: content equal" 0 \
                                "$QEMU_IMG" compare -f vdi -F vdi "q/$f" "v/$f"
                elif [[ $m != off ]]; then
                        result "convert -O $fmt -o preallocation=$m" "$f" "$fmt" "k-$fmt-off"
                fi
        done
done

# ---------------------------------------------------------------- resize
for m in off metadata falloc full bogus; do
        f=r-$m
        "$QEMU_IMG" create -q -f raw "q/$f" 1M
        "$QEMU_IMG" create -q -f raw "v/$f" 1M
        both "resize -f raw --preallocation=$m (grow)" resize -q -f raw "--preallocation=$m" "$f" 3M
        [[ $RC -eq 0 ]] && result "resize -f raw --preallocation=$m" "$f" raw
done
"$QEMU_IMG" create -q -f qed q/r.qed 1M
"$QEMU_IMG" create -q -f qed v/r.qed 1M
both "resize -f qed --preallocation=falloc" resize -q -f qed --preallocation=falloc r.qed 2M
for d in q v; do
        "$QEMU_IMG" create -q -f raw "$d/s.raw" 2M
        "$QEMU_IO" -f raw -c 'write -P 7 0 4k' -c 'write -P 8 1536k 4k' "$d/s.raw" >/dev/null
done
both "resize -f raw to a smaller size without --shrink" resize -f raw s.raw 1M
both "resize -f raw --preallocation=falloc to a smaller size" resize -f raw --preallocation=falloc --shrink s.raw 1M
both "resize -f raw --shrink over data" resize -q -f raw --shrink s.raw 1M
expect_eq "resize --shrink: the raw file is cut to 1 MiB" "$(stat -c %s v/s.raw)" "$M"
expect_rc "resize --shrink: what is left reads as qemu-img's" 0 "$QEMU_IMG" compare -f raw -F raw q/s.raw v/s.raw

# ---------------------------------------------------------------- the first block
"$VDISK_IMG" create -q -f raw v/fb.raw 64M
"$QEMU_IMG" create -q -f raw q/fb.raw 64M
expect_eq "create -f raw: data from offset 0, a hole from 4 KiB (SEEK_DATA/SEEK_HOLE)" \
        "$("$PY" -c 'import os,sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE))' v/fb.raw)" "0 4096"
expect_eq "create -f raw: qemu-img map as for qemu-img's file" \
        "$("$QEMU_IMG" map -f raw --output=json v/fb.raw)" "$("$QEMU_IMG" map -f raw --output=json q/fb.raw)"
expect_rc "create -f raw: the first 4 KiB read zeros" 0 cmp -n $((64 * K)) v/fb.raw /dev/zero

# ---------------------------------------------------------------- nocow
both "create -o nocow=on (accepted here)" create -q -f qcow2 -o nocow=on nc.qcow2 1M
if [[ -n ${VDISK_PREALLOC_NS:-} ]] && command -v mkfs.btrfs >/dev/null && command -v lsattr >/dev/null; then
        truncate -s 128M btrfs.img
        if mkfs.btrfs -q btrfs.img >/dev/null 2>&1 && mkdir btr && mount -o loop btrfs.img btr 2>/dev/null; then
                for fmt in raw qcow2 vdi; do
                        "$VDISK_IMG" create -q -f "$fmt" -o nocow=on "btr/n.$fmt" 1M
                        "$VDISK_IMG" create -q -f "$fmt" "btr/c.$fmt" 1M
                        expect_eq "nocow=on on btrfs: $fmt file has the C attribute" \
                                "$(lsattr "btr/n.$fmt" | cut -c1-22 | tr -cd C)" C
                        expect_eq "without nocow: $fmt file has no C attribute" \
                                "$(lsattr "btr/c.$fmt" | cut -c1-22 | tr -cd C)" ""
                done
                umount btr
        else
                ok "# skip nocow on btrfs: cannot make or mount a btrfs here"
        fi
        rm -f btrfs.img
else
        ok "# skip nocow on btrfs: needs root, mkfs.btrfs (btrfs-progs) and lsattr"
fi

# ---------------------------------------------------------------- ENOSPC
if [[ -n ${VDISK_PREALLOC_NS:-} ]]; then
        mkdir -p q/fs v/fs
        if mount -t tmpfs -o size=2M vdisk-q q/fs && mount -t tmpfs -o size=2M vdisk-v v/fs; then
                for m in falloc full; do
                        both "create -o preallocation=$m on a full file system" \
                                create -q -f raw -o "preallocation=$m" "fs/e-$m.raw" 8M
                        if grep -q "No space left on device" "$T/verr"; then ok "preallocation=$m: No space left on device"
                        else notok "preallocation=$m: the message says No space left on device" "$(cat "$T/verr")"; fi
                done
                umount q/fs v/fs
        else
                ok "# skip ENOSPC: cannot mount a tmpfs"
        fi
else
        ok "# skip ENOSPC: needs root and a mount namespace"
fi

# ---------------------------------------------------------------- --version
"$VQ" --version >"$T/out"
expect_eq "--version as qemu-img: qemu-img's first line" "$(sed -n 1p "$T/out")" "qemu-img version 7.2.0"
expect_true "--version as qemu-img: vdisk's own version next" grep -qE '^vdisk-img version [0-9]' <(sed -n 2p "$T/out")
expect_eq "--version as vdisk-img: its own line only" "$("$VDISK_IMG" --version | wc -l)" 1
expect_eq "-V as qemu-img: the same two lines" "$("$VQ" -V)" "$(cat "$T/out")"

finish
