#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The I/O pipeline of issue 13, measured A B A B on this machine: the disk at
# queue depth 1 and 16, the page-cache path (-t unsafe / -t writeback) with
# and without queued writes and against copy_file_range(2), compare's
# reads, and commit with and without the write queue, plus the queue depth x
# chunk matrix of commit; the write path per output (page cache or direct,
# chosen by the format) against one path for all, and page-cache writes
# from a pool of threads. Figures and conclusions: docs/performance.md,
# "The I/O pipeline" and "The write path per output".
#
#   bench/pipeline.sh [-n PAIRS] [--mib MIB] [--only LIST]
#
# LIST: disk,cache,cfr,cmp,commit,matrix,path,pool (default: all). Every output is
# checked (cmp, or vdisk-img compare for images). Needs liburing's headers
# (bench/iobench.c) and a file system with O_DIRECT in BENCH_DIR.
set -euo pipefail

PAIRS=5
MRUNS=3   # runs per cell of the matrix
MIB=1024
ONLY=disk,cache,cfr,cmp,commit,matrix,path,pool
while (($#)); do
        case $1 in
        -n) PAIRS=${2:?}; shift 2 ;;
        --mib) MIB=${2:?}; shift 2 ;;
        --only) ONLY=${2:?}; shift 2 ;;
        *) echo "usage: $0 [-n PAIRS] [--mib MIB] [--only disk,cache,cfr,cmp,commit,matrix,path,pool]" >&2; exit 2 ;;
        esac
done
want() { [[ ,$ONLY, == *,$1,* ]]; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
V=${VDISK_IMG:-$REPO/build/tools/vdisk-img}
[[ -x $V ]] || { echo "build vdisk-img first (meson setup build && ninja -C build)" >&2; exit 1; }
BENCH_DIR=${BENCH_DIR:-/tmp/vdisk-bench}
mkdir -p "$BENCH_DIR"
W=$(mktemp -d "$BENCH_DIR/pipe.XXXXXX")
trap 'rm -rf "$W"' EXIT
IOB=$W/iobench
cc -O2 -o "$IOB" "$REPO/bench/iobench.c" -luring -lpthread

say() { echo "$*"; }
# drop FILE...: drops the files' pages from the page cache (no root needed)
drop() { /usr/bin/python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"; }
# t CMD...: runs CMD, sets T (wall s) and C (user + system s of the process and its threads)
t() {
        local t0=$EPOCHREALTIME
        /usr/bin/time -f '%U %S' -o "$W/time" "$@" >"$W/out" 2>&1 || { cat "$W/out" >&2; exit 1; }
        T=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
        C=$(awk '{ printf "%.2f", $1 + $2 }' "$W/time")
}
stats() { /usr/bin/python3 -c 'import statistics, sys
v = [float(x) for x in sys.argv[1:]]
a, b = v[0::2], v[1::2]
r = [x / y for x, y in zip(a, b)]
print("A %.3f s, B %.3f s (medians); A/B median %.2f (min %.2f, max %.2f)" % (statistics.median(a), statistics.median(b), statistics.median(r), min(r), max(r)))' "$@"; }

# ab LABEL PREP A-CMD -- B-CMD: PAIRS pairs after one warm-up pair, order
# alternating (A B, B A, ...); PREP runs untimed before each command (it
# gets the side, A or B, as $1), CHECK after it. Prints the medians and the
# median of the per-pair ratios A/B, of wall and CPU time.
ab() {
        local label=$1 prep=$2 check=$3
        shift 3
        local -a A=() B=()
        while [[ $1 != -- ]]; do A+=("$1"); shift; done
        shift
        B=("$@")
        local -a wt=() ct=() ta tb ca cb i side
        for ((i = 0; i <= PAIRS; i++)); do
                local order="A B"
                ((i % 2)) && order="B A"
                for side in $order; do
                        $prep $side
                        if [[ $side == A ]]; then t "${A[@]}"; ta=$T; ca=$C; else t "${B[@]}"; tb=$T; cb=$C; fi
                        $check $side
                done
                ((i)) && wt+=("$ta" "$tb") && ct+=("$ca" "$cb")
        done
        say "$label"
        say "    wall: $(stats "${wt[@]}")"
        say "    cpu:  $(stats "${ct[@]}")"
        say "    wall per pair (A B): ${wt[*]}"
}

say "pipeline bench, $(date -Iseconds), $(nproc) CPUs, kernel $(uname -r), $(findmnt -n -o FSTYPE -T "$W")"
say "vdisk-img: $V ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')); pairs: $PAIRS + 1 warm-up; data: $MIB MiB"
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
say ""

head -c $((MIB << 20)) /dev/urandom >"$W/dense.raw"
cp "$W/dense.raw" "$W/dense2.raw"
none() { :; }
rmout() { rm -f "$W/o.raw" "$W/o.vdi"; sync; }
okraw() { cmp -s "$W/o.raw" "$W/dense.raw" || { echo "MISMATCH" >&2; exit 1; }; rm -f "$W/o.raw"; sync; }

if want disk; then
        rmdisk() { rm -f "$W/d.bin"; sync; }
        ab "disk: O_DIRECT writes of 1 MiB, $MIB MiB, one fdatasync; A = queue depth 1, B = queue depth 16" \
                rmdisk none "$IOB" disk "$W/d.bin" "$MIB" 1024 1 -- "$IOB" disk "$W/d.bin" "$MIB" 1024 16
        ab "disk: O_DIRECT writes of 128 KiB; A = queue depth 1, B = queue depth 16" \
                rmdisk none "$IOB" disk "$W/d.bin" "$MIB" 128 1 -- "$IOB" disk "$W/d.bin" "$MIB" 128 16
        rm -f "$W/d.bin"
fi

# The page-cache rows compare the write queue on the cached descriptor
# (VDISK_IO_QUEUE_CACHED=1) with the synchronous writes; that queue was
# measured at commit a0bff82 and left out (docs/performance.md): at later
# commits both sides run the synchronous path, and the row is a noise check.
if want cache; then
        for mode in unsafe writeback; do
                ab "page-cache path: vdisk-img convert -t $mode raw->raw (dense); A = queued writes (8 x 1 MiB, io_uring on the cached fd), B = synchronous (VDISK_IO_QUEUE_CACHED=0)" \
                        rmout okraw \
                        env VDISK_IO_QUEUE_CACHED=1 "$V" convert -t $mode -f raw -O raw "$W/dense.raw" "$W/o.raw" -- \
                        env VDISK_IO_QUEUE_CACHED=0 "$V" convert -t $mode -f raw -O raw "$W/dense.raw" "$W/o.raw"
        done
        "$V" convert -O vdi "$W/dense.raw" "$W/dense.vdi"
        okvdi() { "$V" compare -f raw -F raw "$W/o.raw" "$W/dense.raw" >/dev/null || { echo MISMATCH >&2; exit 1; }; rm -f "$W/o.raw"; sync; }
        ab "page-cache path: vdisk-img convert -t unsafe vdi->raw; A = queued, B = synchronous" \
                rmout okvdi \
                env VDISK_IO_QUEUE_CACHED=1 "$V" convert -t unsafe -f vdi -O raw "$W/dense.vdi" "$W/o.raw" -- \
                env VDISK_IO_QUEUE_CACHED=0 "$V" convert -t unsafe -f vdi -O raw "$W/dense.vdi" "$W/o.raw"
        rm -f "$W/dense.vdi"
fi

if want cfr; then
        for fl in 0 1; do
                ab "copy loop alone (bench/iobench.c), raw->raw, flush=$fl; A = copy_file_range(2), B = pread+pwrite 4 MiB" \
                        rmout okraw "$IOB" copy cfr "$W/dense.raw" "$W/o.raw" $fl -- "$IOB" copy sync "$W/dense.raw" "$W/o.raw" $fl
                ab "copy loop alone, raw->raw, flush=$fl; A = pread + io_uring writes 8 x 1 MiB, B = pread+pwrite 4 MiB" \
                        rmout okraw "$IOB" copy uring "$W/dense.raw" "$W/o.raw" $fl 8 1024 -- "$IOB" copy sync "$W/dense.raw" "$W/o.raw" $fl
        done
fi

if want cmp; then
        cold() { drop "$W/dense.raw" "$W/dense2.raw"; }
        for m in threads fadvise; do
                ab "compare's reads (bench/iobench.c), two $MIB MiB files, cold cache; A = $m, B = plain (one read at a time)" \
                        cold none "$IOB" cmp $m "$W/dense.raw" "$W/dense2.raw" -- "$IOB" cmp plain "$W/dense.raw" "$W/dense2.raw"
                ab "compare's reads, warm cache; A = $m, B = plain" \
                        none none "$IOB" cmp $m "$W/dense.raw" "$W/dense2.raw" -- "$IOB" cmp plain "$W/dense.raw" "$W/dense2.raw"
        done
        ab "vdisk-img compare, cold cache; A = vdisk-img, B = the plain loop alone" \
                cold none "$V" compare -f raw -F raw "$W/dense.raw" "$W/dense2.raw" -- "$IOB" cmp plain "$W/dense.raw" "$W/dense2.raw"
fi

# The path per output (the default) against the path forced for every file
# (VDISK_IO_DIRECT_WRITES): into VDI the default takes the page cache, into
# raw direct writes, so each row's B is the other path.
if want path; then
        okv() { "$V" compare -f vdi -F raw "$W/o.vdi" "$W/dense.raw" >/dev/null || { echo MISMATCH >&2; exit 1; }; rm -f "$W/o.vdi"; sync; }
        ab "durable convert raw->vdi; A = the path per output (page cache + window), B = direct (VDISK_IO_DIRECT_WRITES=1, the old default)" \
                rmout okv "$V" convert -f raw -O vdi "$W/dense.raw" "$W/o.vdi" -- \
                env VDISK_IO_DIRECT_WRITES=1 "$V" convert -f raw -O vdi "$W/dense.raw" "$W/o.vdi"
        "$V" convert -O vdi "$W/dense.raw" "$W/dense.vdi"
        okr() { "$V" compare -f raw -F raw "$W/o.raw" "$W/dense.raw" >/dev/null || { echo MISMATCH >&2; exit 1; }; rm -f "$W/o.raw"; sync; }
        ab "durable convert vdi->raw; A = the path per output (direct), B = page cache + window (VDISK_IO_DIRECT_WRITES=0)" \
                rmout okr "$V" convert -f vdi -O raw "$W/dense.vdi" "$W/o.raw" -- \
                env VDISK_IO_DIRECT_WRITES=0 "$V" convert -f vdi -O raw "$W/dense.vdi" "$W/o.raw"
        rm -f "$W/dense.vdi"
fi

# Several page-cache writes at once: the copy loop alone, 1 MiB chunks
# written by a pool of threads while the reader goes on, against one writer
# thread beside the reader (the shape of vdisk-img's copy: a reader thread
# and a writing thread).
if want pool; then
        for th in 2 4; do
                ab "copy loop alone (bench/iobench.c), raw->raw, one fdatasync; A = pool of $th threads writing 1 MiB chunks, B = one writer thread" \
                        rmout okraw "$IOB" copy pool "$W/dense.raw" "$W/o.raw" 1 $th 1024 -- "$IOB" copy pool "$W/dense.raw" "$W/o.raw" 1 1 1024
        done
fi

if want commit || want matrix; then
        # A VDI base holding the dense data and a VDI diff holding new random
        # data over its first half (convert -n -B writes only what differs
        # from the base into the diff).
        mkdir -p "$W/p"   # pristine copies, away from the UUID search of the chain's directory
        "$V" convert -O vdi "$W/dense.raw" "$W/base.vdi"
        head -c $((MIB << 19)) /dev/urandom >"$W/half.raw"
        cp "$W/dense.raw" "$W/want.raw"
        dd if="$W/half.raw" of="$W/want.raw" conv=notrunc status=none
        rm -f "$W/half.raw"
        "$V" create -q -f vdi -b "$W/base.vdi" -F vdi "$W/diff.vdi"
        "$V" convert -n -B "$W/base.vdi" -O vdi "$W/want.raw" "$W/diff.vdi"
        mv "$W/base.vdi" "$W/p/base0.vdi"
        mv "$W/diff.vdi" "$W/p/diff0.vdi"
        prepc() { cp --sparse=always "$W/p/base0.vdi" "$W/base.vdi"; cp --sparse=always "$W/p/diff0.vdi" "$W/diff.vdi"; sync; drop "$W/base.vdi" "$W/diff.vdi"; }
        okc() { "$V" compare -f vdi -F raw "$W/base.vdi" "$W/want.raw" >/dev/null || { echo "commit MISMATCH" >&2; exit 1; }; }
fi
if want commit; then
        ab "commit of a VDI diff holding $((MIB / 2)) MiB onto its VDI base; A = queue 8 x 1 MiB (default), B = synchronous (VDISK_IO_QUEUE_DEPTH=0)" \
                prepc okc env VDISK_IO_QUEUE_DEPTH=8 "$V" commit "$W/diff.vdi" -- env VDISK_IO_QUEUE_DEPTH=0 "$V" commit "$W/diff.vdi"
fi
if want matrix; then
        say "commit, queue depth x chunk: median wall s of $MRUNS runs each (base and diff copied afresh, their pages dropped)"
        for ch in 1M 4M; do
                line="    chunk $ch:"
                for qd in 0 1 2 4 8 16; do
                        ts=()
                        for ((i = 0; i < MRUNS; i++)); do
                                prepc
                                t env VDISK_IO_QUEUE_DEPTH=$qd VDISK_IO_QUEUE_CHUNK=$ch "$V" commit "$W/diff.vdi"
                                okc
                                ts+=("$T")
                        done
                        line+=" qd$qd $(/usr/bin/python3 -c 'import statistics, sys; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' "${ts[@]}")"
                done
                say "$line"
        done
fi
say ""
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
