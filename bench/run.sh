#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vdisk-img vs qemu-img on the same workloads, in one run.  See bench/README.md.
#
#   bench/run.sh [-n PAIRS] [--quick | --size GIB] [--only LIST] [--drop-caches] [--keep]
#
# --only pipe: the rows of issue 13's I/O pipeline (raw->vdi, vdi->raw,
# vdi->vdi, vmdk->raw, vpc->raw at both pairings of equal durability, the
# commit row) and the disk's O_DIRECT bandwidth at queue depth 1 and 16
# (bench/iobench.c), measured in the same run.
#
# Environment: VDISK_IMG (default build/tools/vdisk-img of this checkout),
# QEMU_IMG, QEMU_IO (default from PATH), BENCH_DIR (scratch, default
# /tmp/vdisk-bench; the full run needs about 15 GiB free there).
set -euo pipefail

usage() {
        cat <<EOF
usage: $0 [-n PAIRS] [--quick | --size GIB] [--only LIST] [--drop-caches] [--keep]
  -n PAIRS        timed vdisk-img/qemu-img pairs per workload (default 5)
  --quick         256 MiB disk, data scaled down by 32 (smoke test, a few minutes)
  --size GIB      disk of GIB GiB (1-8), data scaled by GIB/8 (default 8)
  --only LIST     comma-separated workload groups to run, of
                  a,b,c,d,vmdk,vpc,stream,compress,qcow2 (default: all), or
                  pipe (issue 13's rows: a durable/unsafe, vmdk->raw, vpc->raw, c,
                  and the disk at queue depth 1 and 16)
  --drop-caches   drop the page cache before every timed run (needs root);
                  default: warm cache
  --keep          keep the scratch directory
env: VDISK_IMG QEMU_IMG QEMU_IO BENCH_DIR
EOF
}

PAIRS=5
QUICK=0
SIZE_GIB=8
ONLY=a,b,c,d,vmdk,vpc,stream,compress,qcow2
DROP=0
KEEP=0
while (($#)); do
        case $1 in
        -n) PAIRS=${2:?-n needs a number}; shift 2 ;;
        -n*) PAIRS=${1#-n}; shift ;;
        --quick) QUICK=1; shift ;;
        --size) SIZE_GIB=${2:?--size needs a number}; shift 2 ;;
        --only) ONLY=${2:?--only needs a list}; shift 2 ;;
        --drop-caches) DROP=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
        esac
done
[[ $PAIRS =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: -n wants a positive number" >&2; exit 2; }
[[ $SIZE_GIB =~ ^[1-8]$ ]] || { echo "run.sh: --size wants 1 to 8 (GiB)" >&2; exit 2; }
for g in ${ONLY//,/ }; do
        case $g in
        a|b|c|d|vmdk|vpc|stream|compress|qcow2|pipe) ;;
        *) echo "run.sh: --only: unknown workload group '$g' (a b c d vmdk vpc stream compress qcow2)" >&2; exit 2 ;;
        esac
done
want() { [[ ,$ONLY, == *,$1,* ]]; } # GROUP -> true when it is to run

die() { echo "run.sh: $*" >&2; exit 1; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
resolve() { # NAME -> absolute path of an executable
        if [[ $1 == */* ]]; then
                [[ -x $1 ]] || return 1
                echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
        else
                command -v "$1"
        fi
}
VDISK_IMG=$(resolve "${VDISK_IMG:-$REPO/build/tools/vdisk-img}") ||
        die "vdisk-img not found (build it: meson setup build && ninja -C build; or set VDISK_IMG)"
QEMU_IMG=$(resolve "${QEMU_IMG:-qemu-img}") || die "qemu-img not found (apt-get install qemu-utils)"
QEMU_IO=$(resolve "${QEMU_IO:-qemu-io}") || die "qemu-io not found (apt-get install qemu-utils)"
PY=/usr/bin/python3
[[ -x $PY ]] || die "$PY not found"
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time)"
if ((DROP)); then
        [[ -w /proc/sys/vm/drop_caches ]] || die "--drop-caches needs root"
fi

MiB=$((1 << 20))
if ((QUICK)); then
        DISK=$((256 * MiB)); NDATA=64; NZERO=32; NSMALL=1024; NCOMMIT=32; NEED=$((1 << 30))
        NBIG=128
else
        # 8 GiB by default; --size N scales every count by N/8
        DISK=$((SIZE_GIB << 30)); NDATA=$((256 * SIZE_GIB)); NZERO=$((128 * SIZE_GIB))
        NSMALL=$((4096 * SIZE_GIB)); NCOMMIT=$((128 * SIZE_GIB)); NEED=$(((15 << 30) * SIZE_GIB / 8))
        NBIG=4096 # 64 KiB pieces on the 1 TiB disk of group qcow2: 256 MiB, whatever --size
fi

BENCH_DIR=${BENCH_DIR:-/tmp/vdisk-bench}
mkdir -p "$BENCH_DIR"
avail=$(df -B1 --output=avail "$BENCH_DIR" | tail -n 1 | tr -d ' ')
((avail >= NEED)) || die "$BENCH_DIR has $((avail >> 20)) MiB free, the run needs $((NEED >> 20)) MiB (set BENCH_DIR)"
W=$(mktemp -d "$BENCH_DIR/run.XXXXXX")
cleanup() {
        local rc=$?
        if ((KEEP)); then echo "scratch kept in $W"; else rm -rf "$W"; fi
        exit $rc
}
trap cleanup EXIT

mkdir -p "$REPO/bench/out"
DATE=$(date +%Y%m%d-%H%M%S)
RESULTS=$REPO/bench/out/results-$DATE.txt
: >"$RESULTS"
say() { echo "$*" | tee -a "$RESULTS"; }
note() { echo "$*" >&2; }

# ------------------------------------------------------------ data generator
cat >"$W/gen.py" <<'EOF'
import os, random, struct, sys

MiB = 1 << 20

def scattered(path, size, ndata, nzero, seed, zero_list):
    # ndata 1 MiB extents of seeded random data and nzero 1 MiB extents of
    # written zero bytes, at distinct random 1 MiB-aligned offsets
    rng = random.Random(seed)
    blocks = rng.sample(range(size // MiB), ndata + nzero)
    with open(path, 'wb') as f:
        f.truncate(size)
        for b in blocks[:ndata]:
            f.seek(b * MiB)
            f.write(rng.randbytes(MiB))
        zero = bytes(MiB)
        for b in blocks[ndata:]:
            f.seek(b * MiB)
            f.write(zero)
    with open(zero_list, 'w') as z:
        for b in sorted(blocks[ndata:]):
            z.write('%d\n' % (b * MiB))

def small(path, size, n, seed):
    # n writes of 4 KiB of random data at random 4 KiB-aligned offsets
    rng = random.Random(seed)
    with open(path, 'wb') as f:
        f.truncate(size)
        for _ in range(n):
            f.seek(rng.randrange(size // 4096) * 4096)
            f.write(rng.randbytes(4096))

def pieces(path, size, n, piece, seed):
    # n pieces of piece bytes of seeded random data at distinct random
    # piece-aligned offsets of a sparse file of size bytes
    rng = random.Random(seed)
    with open(path, 'wb') as f:
        f.truncate(size)
        for p in sorted(rng.sample(range(size // piece), n)):
            f.seek(p * piece)
            f.write(rng.randbytes(piece))

def extents(d, size, n, seed):
    # n files of 1 MiB random data and the offsets they go to
    rng = random.Random(seed)
    blocks = sorted(rng.sample(range(size // MiB), n))
    with open(os.path.join(d, 'list'), 'w') as lst:
        for i, b in enumerate(blocks):
            name = os.path.join(d, 'e%05d.bin' % i)
            with open(name, 'wb') as f:
                f.write(rng.randbytes(MiB))
            lst.write('%s %d\n' % (name, b * MiB))

def filldiff(vdi, d):
    # puts the extents of d into an empty VDI differencing image, the way a
    # writer would: data blocks appended after the data offset, then the
    # block map entries, then the allocated-blocks counter
    with open(vdi, 'r+b') as f:
        h = f.read(512)
        if struct.unpack_from('<I', h, 0x40)[0] != 0xBEDA107F:
            sys.exit('%s: not a VDI' % vdi)
        offb, offd = struct.unpack_from('<II', h, 0x154)
        bs, extra, nblocks, nalloc = struct.unpack_from('<IIII', h, 0x178)
        if bs != MiB or extra != 0 or nalloc != 0:
            sys.exit('%s: want an empty VDI with 1 MiB blocks' % vdi)
        f.seek(offb)
        bmap = list(struct.unpack('<%dI' % nblocks, f.read(4 * nblocks)))
        k = 0
        with open(os.path.join(d, 'list')) as lst:
            for line in lst:
                name, off = line.split()
                with open(name, 'rb') as e:
                    data = e.read()
                f.seek(offd + k * bs)
                f.write(data)
                bmap[int(off) // bs] = k
                k += 1
        f.flush()
        os.fsync(f.fileno())
        f.seek(offb)
        f.write(struct.pack('<%dI' % nblocks, *bmap))
        f.seek(0x184)
        f.write(struct.pack('<I', k))

def mixed(path, size, ndata, seed):
    # ndata 1 MiB extents at distinct random 1 MiB-aligned offsets, in turn
    # random bytes, word text, bytes of 16 values and zero bytes (what an
    # OS image holds, roughly): the input of the compressed rows
    rng = random.Random(seed)
    words = [bytes(rng.choice(b'abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randrange(2, 10)))
             for _ in range(4096)]
    text = b' '.join(rng.choice(words) for _ in range(800000))
    sixteen = bytes(range(16)) * 16
    blocks = rng.sample(range(size // MiB), ndata)
    with open(path, 'wb') as f:
        f.truncate(size)
        for i, b in enumerate(blocks):
            f.seek(b * MiB)
            k = i % 4
            if k == 0:
                f.write(rng.randbytes(MiB))
            elif k == 1:
                at = rng.randrange(len(text) - MiB)
                f.write(text[at:at + MiB])
            elif k == 2:
                f.write(rng.randbytes(MiB).translate(sixteen))
            else:
                f.write(bytes(MiB))

def stats(*vals):
    # pairs "v q" -> median, min, max of v/q
    import statistics
    r = [float(v) / float(q) if float(q) > 0 else float('inf')
         for v, q in zip(vals[0::2], vals[1::2])]
    print('%.3f %.3f %.3f' % (statistics.median(r), min(r), max(r)))

def median(*vals):
    import statistics
    print('%.3f' % statistics.median(float(v) for v in vals))

cmd, a = sys.argv[1], sys.argv[2:]
if cmd == 'scattered':
    scattered(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5])
elif cmd == 'small':
    small(a[0], int(a[1]), int(a[2]), int(a[3]))
elif cmd == 'pieces':
    pieces(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]))
elif cmd == 'extents':
    extents(a[0], int(a[1]), int(a[2]), int(a[3]))
elif cmd == 'filldiff':
    filldiff(a[0], a[1])
elif cmd == 'mixed':
    mixed(a[0], int(a[1]), int(a[2]), int(a[3]))
elif cmd == 'stats':
    stats(*a)
elif cmd == 'median':
    median(*a)
else:
    sys.exit('gen.py: unknown command ' + cmd)
EOF
gen() { "$PY" "$W/gen.py" "$@"; }

# ------------------------------------------------------------ timing
# timed CMD...: runs CMD, sets ELAPSED (s), CPU (user + system s) and RSS
# (KiB); aborts on failure
timed() {
        if ((DROP)); then sync; echo 3 >/proc/sys/vm/drop_caches; fi
        local t0 t1
        t0=$EPOCHREALTIME
        if ! /usr/bin/time -f '%U %S %M' -o "$W/time.out" "$@" >"$W/cmd.log" 2>&1; then
                cat "$W/cmd.log" >&2
                die "command failed: $*"
        fi
        t1=$EPOCHREALTIME
        ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
        local u sy
        read -r u sy RSS < <(tail -n 1 "$W/time.out")
        CPU=$(awk -v a="$u" -v b="$sy" 'BEGIN { printf "%.2f", a + b }')
}

# verify FMT OUT REF_FMT REF: qemu-img compare, abort on mismatch
verify() {
        if ! "$QEMU_IMG" compare -q -f "$1" -F "$3" "$2" "$4" >"$W/cmp.log" 2>&1; then
                cat "$W/cmp.log" >&2
                die "MISMATCH: $2 ($1) differs from the reference $4 ($3)"
        fi
}

# A workload is a set of hook functions, TOOL being vdisk or qemu:
#   <w>_prep TOOL   untimed setup; sets CMD=(...) and OUT (the output file)
#   <w>_verify TOOL checks the output against the reference (aborts if wrong)
#   <w>_clean TOOL  removes the outputs
# run_workload W LABEL runs one untimed warm-up pair, then PAIRS timed pairs,
# in the order A B, B A, A B ... (vdisk-img first in odd pairs), and prints the table row.
HEADER=$(printf '%-36s %6s %7s %6s %6s %9s %9s %7s %7s %9s %9s' \
        workload pairs 'median' min max 'vdisk s' 'qemu s' 'cpu' 'size' 'vdisk RSS' 'qemu RSS')
run_workload() {
        local w=$1 label=$2 i tool
        local -a times=() tv=() tq=() cv=() cq=()
        local size_v=0 size_q=0 app_v=0 app_q=0 rss_v=0 rss_q=0
        note "== $label"
        for ((i = 0; i <= PAIRS; i++)); do
                # A B, then B A: whoever runs first after the previous output was
                # deleted meets a different memory state, so alternate.
                local order="vdisk qemu"
                ((i % 2 == 0)) && order="qemu vdisk"
                for tool in $order; do
                        "${w}_prep" $tool
                        timed "${CMD[@]}"
                        "${w}_verify" $tool
                        if ((i > 0)); then
                                if [[ $tool == vdisk ]]; then
                                        tv+=("$ELAPSED"); cv+=("$CPU"); ((RSS > rss_v)) && rss_v=$RSS
                                        if [[ -n $OUT ]]; then # empty: the command writes no image
                                                size_v=$(du -B1 "$OUT" | cut -f1)
                                                app_v=$(stat -c %s "$OUT")
                                        fi
                                else
                                        tq+=("$ELAPSED"); cq+=("$CPU"); ((RSS > rss_q)) && rss_q=$RSS
                                        if [[ -n $OUT ]]; then
                                                size_q=$(du -B1 "$OUT" | cut -f1)
                                                app_q=$(stat -c %s "$OUT")
                                        fi
                                fi
                                times+=("$ELAPSED")
                        fi
                        note "   $( ((i)) && echo "pair $i" || echo warm-up) $tool: ${ELAPSED}s, cpu ${CPU}s, peak RSS ${RSS} KiB"
                        "${w}_clean" $tool
                done
        done
        local pairs=() cpairs=() s
        for ((i = 0; i < PAIRS; i++)); do pairs+=("${tv[i]}" "${tq[i]}"); cpairs+=("${cv[i]}" "${cq[i]}"); done
        s=$(gen stats "${pairs[@]}")
        read -r med mn mx <<<"$s"
        s=$(gen stats "${cpairs[@]}")
        read -r cmed _ _ <<<"$s"
        local sr
        sr=$(awk -v a="$size_v" -v b="$size_q" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }')
        say "$(printf '%-36s %6d %7s %6s %6s %9s %9s %7s %7s %8dM %8dM' "$label" "$PAIRS" "$med" "$mn" "$mx" \
                "$(gen median "${tv[@]}")" "$(gen median "${tq[@]}")" "$cmed" "$sr" $((rss_v / 1024)) $((rss_q / 1024)))"
        DETAILS+=("$label: vdisk ${tv[*]} | qemu ${tq[*]} | cpu vdisk ${cv[*]} | qemu ${cq[*]} | output allocated (du -B1) vdisk $size_v qemu $size_q, apparent (stat) vdisk $app_v qemu $app_q")
}
DETAILS=()

# ------------------------------------------------------------ header
say "vdisk-img vs qemu-img benchmark, $(date -Iseconds)"
say "machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(awk '/MemTotal/ { printf "%d MiB RAM", $2 / 1024 }' /proc/meminfo), kernel $(uname -r)"
say "scratch: $W ($(findmnt -n -o FSTYPE -T "$W" 2>/dev/null || echo '?'))"
say "vdisk-img: $VDISK_IMG ($("$VDISK_IMG" --version 2>/dev/null | head -n 1 || echo '?'))"
say "qemu-img:  $QEMU_IMG ($("$QEMU_IMG" --version | head -n 1))"
say "disk: $((DISK >> 20)) MiB$( ((QUICK)) && echo ' (--quick: scaled down, smoke test only)'); workloads: $ONLY; pairs: $PAIRS + 1 warm-up pair; cache: $( ((DROP)) && echo 'dropped before every run' || echo 'warm (page cache not dropped)')"
say "method: pairs alternate the order (A B, B A, ...); ratio = vdisk time / qemu time per pair;"
say "        median/min/max over the pairs; every output verified with qemu-img compare"
say ""

# ------------------------------------------------------------ workload data
note "generating workloads in $W ..."
mkdir -p "$W/a" "$W/b" "$W/c" "$W/d"
gen scattered "$W/src.raw" $DISK $NDATA $NZERO 1 "$W/zero-extents"
note "   src.raw: $((DISK >> 20)) MiB, $NDATA MiB random data, $NZERO MiB written zeros"
if want a || want c || want d || want qcow2 || want pipe; then
        "$QEMU_IMG" convert -f raw -O vdi "$W/src.raw" "$W/src.vdi"
        verify vdi "$W/src.vdi" raw "$W/src.raw"
fi

# --- a: convert raw->vdi, vdi->raw, vdi->vdi
a1_prep() { OUT=$W/a/out-$1.vdi; CMD=("$(tool "$1")" convert -f raw -O vdi "$W/src.raw" "$OUT"); }
a1_verify() { verify vdi "$OUT" raw "$W/src.raw"; }
a1_clean() { rm -f "$OUT"; sync; }
a2_prep() { OUT=$W/a/out-$1.raw; CMD=("$(tool "$1")" convert -f vdi -O raw "$W/src.vdi" "$OUT"); }
a2_verify() { verify raw "$OUT" raw "$W/src.raw"; }
a2_clean() { rm -f "$OUT"; sync; }
a3_prep() { OUT=$W/a/out-$1.vdi; CMD=("$(tool "$1")" convert -f vdi -O vdi "$W/src.vdi" "$OUT"); }
a3_verify() { verify vdi "$OUT" raw "$W/src.raw"; }
a3_clean() { rm -f "$OUT"; sync; }
hs() { if (($1 % 1024 == 0)); then echo "$(($1 / 1024))G"; else echo "${1}M"; fi; } # MiB -> text
tool() { if [[ $1 == vdisk ]]; then echo "$VDISK_IMG"; else echo "$QEMU_IMG"; fi; }

# The same three conversions with the durability made equal. By default
# vdisk-img flushes its output once at the end (it is durable when the command
# returns) while qemu-img convert does not flush at all (cache=unsafe). Rows
# marked "durable" run qemu-img with -t writeback (one flush at the end, like
# vdisk-img); rows marked "unsafe" run both with -t unsafe (no flush). Rows
# marked "direct" run qemu-img with -t none (O_DIRECT, flushed at the end):
# the technique vdisk-img uses by default, so the two tools' copy loops meet
# on equal terms.
cache_args() { # TOOL MODE -> the -t option for that tool in that mode
        case "$2" in
        durable) if [[ $1 == qemu ]]; then echo "-t writeback"; fi ;;
        direct) if [[ $1 == qemu ]]; then echo "-t none"; fi ;;
        unsafe) echo "-t unsafe" ;;
        esac
        return 0
}
for m in durable direct unsafe; do
        eval "a1${m}_prep() { OUT=\$W/a/out-\$1.vdi; CMD=(\"\$(tool \"\$1\")\" convert \$(cache_args \$1 $m) -f raw -O vdi \"\$W/src.raw\" \"\$OUT\"); }"
        eval "a2${m}_prep() { OUT=\$W/a/out-\$1.raw; CMD=(\"\$(tool \"\$1\")\" convert \$(cache_args \$1 $m) -f vdi -O raw \"\$W/src.vdi\" \"\$OUT\"); }"
        eval "a3${m}_prep() { OUT=\$W/a/out-\$1.vdi; CMD=(\"\$(tool \"\$1\")\" convert \$(cache_args \$1 $m) -f vdi -O vdi \"\$W/src.vdi\" \"\$OUT\"); }"
        for k in 1 2 3; do
                eval "a$k${m}_verify() { a${k}_verify \"\$@\"; }; a$k${m}_clean() { a${k}_clean \"\$@\"; }"
        done
done

# pipe: the disk itself, O_DIRECT 1 MiB writes at queue depth 1 and 16 into a
# new file and over its allocated blocks, alternating (bench/iobench.c)
if want pipe; then
        if cc -O2 -o "$W/iobench" "$REPO/bench/iobench.c" -luring -lpthread 2>"$W/cmd.log"; then
                declare -A QD=()
                for ((i = 0; i < PAIRS; i++)); do
                        for over in 0 1; do
                                for q in 1 16; do
                                        ((over)) || rm -f "$W/qd.bin"
                                        sync
                                        QD[$over.$q]+=" $("$W/iobench" disk "$W/qd.bin" $((DISK >> 21)) 1024 $q $over)"
                                done
                        done
                done
                rm -f "$W/qd.bin"
                for over in 0 1; do
                        for q in 1 16; do
                                # shellcheck disable=SC2086 # a list of times
                                say "$(printf 'disk: O_DIRECT 1 MiB writes, %d MiB, QD %2d, %s: median %s s = %s MB/s (runs:%s)' \
                                        $((DISK >> 21)) $q "$( ((over)) && echo 'over written blocks' || echo 'new file')" \
                                        "$(gen median ${QD[$over.$q]})" \
                                        "$(awk -v m=$((DISK >> 21)) -v t="$(gen median ${QD[$over.$q]})" 'BEGIN { printf "%.0f", m * 1.048576 / t }')" \
                                        "${QD[$over.$q]}")"
                        done
                done
                say ""
        else
                say "disk: bench/iobench.c does not build (liburing headers?): $(head -c 200 "$W/cmd.log")"
        fi
fi
say "$HEADER"
if want pipe; then
        run_workload a1durable "a. raw->vdi, both durable"
        run_workload a2durable "a. vdi->raw, both durable"
        run_workload a3durable "a. vdi->vdi, both durable"
        # qemu-img convert's default for the output is cache=unsafe: this is
        # the pairing "vdisk-img -t unsafe vs qemu-img's default"
        run_workload a1unsafe "a. raw->vdi, both -t unsafe"
        run_workload a2unsafe "a. vdi->raw, both -t unsafe"
        run_workload a3unsafe "a. vdi->vdi, both -t unsafe"
fi
if want a; then
run_workload a1 "a. raw->vdi ($(hs $NDATA) data+$(hs $NZERO) 0s)"
run_workload a2 "a. vdi->raw"
run_workload a3 "a. vdi->vdi"
run_workload a1durable "a. raw->vdi, both durable"
run_workload a2durable "a. vdi->raw, both durable"
run_workload a3durable "a. vdi->vdi, both durable"
run_workload a1direct "a. raw->vdi, qemu -t none"
run_workload a2direct "a. vdi->raw, qemu -t none"
run_workload a3direct "a. vdi->vdi, qemu -t none"
run_workload a1unsafe "a. raw->vdi, both -t unsafe"
run_workload a2unsafe "a. vdi->raw, both -t unsafe"
run_workload a3unsafe "a. vdi->vdi, both -t unsafe"
fi

# --- e, f, g: raw<->vmdk (monolithicSparse), raw<->vpc (dynamic), and
# raw->vmdk streamOptimized, each at the two pairings of equal durability:
#   durable: vdisk-img's default (durable when it returns) vs qemu-img -t writeback
#   unsafe:  vdisk-img -t unsafe (no flush) vs qemu-img's default (which does not flush)
# The sources of vmdk->raw and vpc->raw are what qemu-img makes of src.raw.
pair_args() { # TOOL MODE -> the -t option for that tool in that pairing
        case "$2" in
        durable) if [[ $1 == qemu ]]; then echo "-t writeback"; fi ;;
        unsafe) if [[ $1 == vdisk ]]; then echo "-t unsafe"; fi ;;
        esac
        return 0
}
fmt_prep() { # TOOL MODE IN_FMT IN OUT_FMT OUT_EXT [-o OPTIONS]
        local tool=$1 mode=$2 ifmt=$3 in=$4 ofmt=$5 ext=$6
        shift 6
        OUT=$W/f/out-$tool.$ext
        # shellcheck disable=SC2046 # pair_args gives zero or two words
        CMD=("$(tool "$tool")" convert $(pair_args "$tool" "$mode") -f "$ifmt" -O "$ofmt" "$@" "$in" "$OUT")
}
fmt_clean() { rm -f "$OUT"; sync; }
for m in durable unsafe; do
        eval "e1${m}_prep() { fmt_prep \$1 $m raw \"\$W/src.raw\" vmdk vmdk; }"
        eval "e1${m}_verify() { verify vmdk \"\$OUT\" raw \"\$W/src.raw\"; }"
        eval "e2${m}_prep() { fmt_prep \$1 $m vmdk \"\$W/f/src.vmdk\" raw raw; }"
        eval "e2${m}_verify() { verify raw \"\$OUT\" raw \"\$W/src.raw\"; }"
        eval "f1${m}_prep() { fmt_prep \$1 $m raw \"\$W/src.raw\" vpc vhd; }"
        eval "f1${m}_verify() { verify vpc \"\$OUT\" raw \"\$W/src.raw\"; }"
        eval "f2${m}_prep() { fmt_prep \$1 $m vpc \"\$W/f/src.vhd\" raw raw; }"
        eval "f2${m}_verify() { verify raw \"\$OUT\" raw \"\$W/src.raw\"; }"
        eval "g${m}_prep() { fmt_prep \$1 $m raw \"\$W/src.raw\" vmdk vmdk -o subformat=streamOptimized; }"
        eval "g${m}_verify() { verify vmdk \"\$OUT\" raw \"\$W/src.raw\"; }"
        for k in e1 e2 f1 f2 g; do eval "$k${m}_clean() { fmt_clean; }"; done
done
mkdir -p "$W/f"
if want vmdk || want pipe; then
        "$QEMU_IMG" convert -f raw -O vmdk "$W/src.raw" "$W/f/src.vmdk"
        verify vmdk "$W/f/src.vmdk" raw "$W/src.raw"
        if want vmdk; then
                run_workload e1durable "e. raw->vmdk, both durable"
                run_workload e1unsafe "e. raw->vmdk, v -t unsafe/q default"
        fi
        run_workload e2durable "e. vmdk->raw, both durable"
        run_workload e2unsafe "e. vmdk->raw, v -t unsafe/q default"
        rm -f "$W/f/src.vmdk"
fi
if want vpc || want pipe; then
        "$QEMU_IMG" convert -f raw -O vpc "$W/src.raw" "$W/f/src.vhd"
        verify vpc "$W/f/src.vhd" raw "$W/src.raw"
        if want vpc; then
                run_workload f1durable "f. raw->vpc, both durable"
                run_workload f1unsafe "f. raw->vpc, v -t unsafe/q default"
        fi
        run_workload f2durable "f. vpc->raw, both durable"
        run_workload f2unsafe "f. vpc->raw, v -t unsafe/q default"
        rm -f "$W/f/src.vhd"
fi
if want stream; then
        run_workload gdurable "g. raw->vmdk stream, both durable"
        run_workload gunsafe "g. raw->vmdk stream, v unsafe/q dflt"
fi
rm -rf "$W/f"

# --- b: raw->vdi of a disk with scattered 4 KiB writes
# h. convert -c into qcow2 (zlib, zstd), at the pairings of equal durability
for m in durable unsafe; do
        for ct in zlib zstd; do
                eval "h${ct}${m}_prep() { fmt_prep \$1 $m raw \"\$W/h/mixed.raw\" qcow2 qcow2 -c -o compression_type=$ct; }"
                eval "h${ct}${m}_verify() { verify qcow2 \"\$OUT\" raw \"\$W/h/mixed.raw\"; }"
                eval "h${ct}${m}_clean() { fmt_clean; }"
        done
        # and into VMDK streamOptimized (zlib grains, compressed always)
        eval "hvmdk${m}_prep() { fmt_prep \$1 $m raw \"\$W/h/mixed.raw\" vmdk vmdk -o subformat=streamOptimized; }"
        eval "hvmdk${m}_verify() { verify vmdk \"\$OUT\" raw \"\$W/h/mixed.raw\"; }"
        eval "hvmdk${m}_clean() { fmt_clean; }"
done
if want compress; then
        mkdir -p "$W/h" "$W/f"
        gen mixed "$W/h/mixed.raw" $DISK $NDATA 3
        note "   mixed.raw: $((DISK >> 20)) MiB, $NDATA MiB of random, text, 16-value and zero extents"
        run_workload hzlibdurable "h. raw->qcow2 -c zlib, both durable"
        run_workload hzlibunsafe "h. raw->qcow2 -c zlib, v unsafe/q dflt"
        run_workload hzstddurable "h. raw->qcow2 -c zstd, both durable"
        run_workload hzstdunsafe "h. raw->qcow2 -c zstd, v unsafe/q dflt"
        run_workload hvmdkdurable "h. raw->vmdk streamOptimized, both durable"
        run_workload hvmdkunsafe "h. raw->vmdk streamOpt, v unsafe/q dflt"
        rm -rf "$W/h" "$W/f"
fi

# --- qcow2: issue 12's rows. raw->qcow2, qcow2->raw, vdi->qcow2,
# qcow2->qcow2, raw->qed and the 4 KiB-scattered raw->qcow2 at the two
# pairings of equal durability (pair_args); the commit of the top of a 3-deep
# qcow2 chain; compare, map and check of a 1 TiB sparse qcow2. Every qcow2 or
# QED output must also pass qemu-img check.
check_clean() { # FMT IMAGE: qemu-img check, abort unless it finds nothing (no leaks either)
        if ! "$QEMU_IMG" check -q -f "$1" "$2" >"$W/chk.log" 2>&1; then
                cat "$W/chk.log" >&2
                die "CHECK: $2 ($1) is not clean"
        fi
}
commit_args() { # TOOL MODE -> the -t option of commit (qemu-img commit's default is writeback)
        case "$2" in
        durable) if [[ $1 == qemu ]]; then echo "-t writeback"; fi ;;
        unsafe) echo "-t unsafe" ;;
        esac
        return 0
}
for m in durable unsafe; do
        eval "q1${m}_prep() { fmt_prep \$1 $m raw \"\$W/src.raw\" qcow2 qcow2; }"
        eval "q1${m}_verify() { verify qcow2 \"\$OUT\" raw \"\$W/src.raw\"; check_clean qcow2 \"\$OUT\"; }"
        eval "q2${m}_prep() { fmt_prep \$1 $m qcow2 \"\$W/q/src.qcow2\" raw raw; }"
        eval "q2${m}_verify() { verify raw \"\$OUT\" raw \"\$W/src.raw\"; }"
        eval "q3${m}_prep() { fmt_prep \$1 $m vdi \"\$W/src.vdi\" qcow2 qcow2; }"
        eval "q3${m}_verify() { verify qcow2 \"\$OUT\" raw \"\$W/src.raw\"; check_clean qcow2 \"\$OUT\"; }"
        eval "q4${m}_prep() { fmt_prep \$1 $m qcow2 \"\$W/q/src.qcow2\" qcow2 qcow2; }"
        eval "q4${m}_verify() { verify qcow2 \"\$OUT\" raw \"\$W/src.raw\"; check_clean qcow2 \"\$OUT\"; }"
        eval "q5${m}_prep() { fmt_prep \$1 $m raw \"\$W/src.raw\" qed qed; }"
        eval "q5${m}_verify() { verify qed \"\$OUT\" raw \"\$W/src.raw\"; check_clean qed \"\$OUT\"; }"
        eval "q6${m}_prep() { fmt_prep \$1 $m raw \"\$W/q/small.raw\" qcow2 qcow2; }"
        eval "q6${m}_verify() { verify qcow2 \"\$OUT\" raw \"\$W/q/small.raw\"; check_clean qcow2 \"\$OUT\"; }"
        for k in q1 q2 q3 q4 q5 q6; do eval "$k${m}_clean() { fmt_clean; }"; done
        # commit of top.qcow2 into mid.qcow2, each run on a fresh copy of the chain
        eval "qc${m}_prep() { qc_prep \$1 $m; }"
        eval "qc${m}_verify() { qc_verify; }; qc${m}_clean() { qc_clean; }"
done
qc_prep() { # TOOL MODE
        local d=$W/q/chain-$1
        cp -r --sparse=always "$W/q/chain" "$d"
        sync
        OUT=$d/mid.qcow2
        # shellcheck disable=SC2046 # commit_args gives zero or two words
        CMD=("$(tool "$1")" commit $(commit_args "$1" "$2") -f qcow2 "$d/top.qcow2")
}
qc_verify() { # mid now holds top's data; top (emptied or not) still reads the same
        verify qcow2 "$OUT" raw "$W/q/chain.raw"
        verify qcow2 "${OUT%/*}/top.qcow2" raw "$W/q/chain.raw"
        check_clean qcow2 "$OUT"
        check_clean qcow2 "${OUT%/*}/top.qcow2"
        check_clean qcow2 "${OUT%/*}/base.qcow2"
}
qc_clean() { rm -rf "${OUT%/*}"; sync; }
# the read-only rows on the 1 TiB image: the timed command fails (and stops the
# run) unless compare finds the images equal and check finds nothing; map's
# JSON must be qemu-img's, byte for byte
qbig_prep() { local t=$1; shift; OUT=; CMD=("$(tool "$t")" "$@"); }
qcmp_prep() { qbig_prep "$1" compare -f qcow2 -F raw "$W/q/big.qcow2" "$W/q/big.raw"; }
qmap_prep() { qbig_prep "$1" map -f qcow2 --output=json "$W/q/big.qcow2"; }
qchk_prep() { qbig_prep "$1" check -f qcow2 "$W/q/big.qcow2"; }
qcmp_verify() { :; }
qchk_verify() { :; }
qmap_verify() {
        cmp -s "$W/cmd.log" "$W/q/big.map" || die "MISMATCH: $1's map of big.qcow2 differs from qemu-img's (diff $W/cmd.log $W/q/big.map)"
}
qcmp_clean() { :; }
qmap_clean() { :; }
qchk_clean() { :; }
if want qcow2; then
        mkdir -p "$W/q/chain" "$W/f"
        "$QEMU_IMG" convert -f raw -O qcow2 "$W/src.raw" "$W/q/src.qcow2"
        verify qcow2 "$W/q/src.qcow2" raw "$W/src.raw"
        run_workload q1durable "q. raw->qcow2, both durable"
        run_workload q1unsafe "q. raw->qcow2, v -t unsafe/q default"
        run_workload q2durable "q. qcow2->raw, both durable"
        run_workload q2unsafe "q. qcow2->raw, v -t unsafe/q default"
        run_workload q3durable "q. vdi->qcow2, both durable"
        run_workload q3unsafe "q. vdi->qcow2, v -t unsafe/q default"
        run_workload q4durable "q. qcow2->qcow2, both durable"
        run_workload q4unsafe "q. qcow2->qcow2, v -t unsafe/q dflt"
        run_workload q5durable "q. raw->qed, both durable"
        run_workload q5unsafe "q. raw->qed, v -t unsafe/q default"
        gen small "$W/q/small.raw" $DISK $NSMALL 2
        run_workload q6durable "q. raw->qcow2 ($NSMALL x 4K), durable"
        run_workload q6unsafe "q. raw->qcow2 (4K), v unsafe/q dflt"
        rm -f "$W/q/small.raw"
        # the chain: base.qcow2 (src.raw's data) <- mid.qcow2 <- top.qcow2,
        # mid and top each holding NCOMMIT MiB in 1 MiB extents at random
        # offsets (overlapping in part); relative backing names, so a copy
        # of the directory is the same chain
        mkdir -p "$W/q/ext"
        mv "$W/q/src.qcow2" "$W/q/chain/base.qcow2"
        (cd "$W/q/chain" &&
                "$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 &&
                "$QEMU_IMG" create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2)
        for img in mid top; do
                rm -f "$W/q/ext/"*
                gen extents "$W/q/ext" $DISK $NCOMMIT $([[ $img == mid ]] && echo 4 || echo 5)
                awk -v m=$MiB '{ print "write -q -s " $1 " " $2 " " m }' "$W/q/ext/list" |
                        "$QEMU_IO" -f qcow2 "$W/q/chain/$img.qcow2" >/dev/null
        done
        rm -rf "$W/q/ext"
        "$QEMU_IMG" convert -f qcow2 -O raw "$W/q/chain/top.qcow2" "$W/q/chain.raw"
        run_workload qcdurable "q. commit 3-deep chain, both durable"
        run_workload qcunsafe "q. commit 3-deep chain, both unsafe"
        rm -rf "$W/q/chain" "$W/q/chain.raw"
        # 1 TiB: NBIG 64 KiB pieces of random data at random offsets, as a
        # sparse raw and as the qcow2 qemu-img makes of it
        gen pieces "$W/q/big.raw" $((1 << 40)) $NBIG 65536 6
        note "   big.raw: 1 TiB sparse, $NBIG x 64 KiB of random data"
        "$QEMU_IMG" convert -f raw -O qcow2 "$W/q/big.raw" "$W/q/big.qcow2"
        "$QEMU_IMG" map -f qcow2 --output=json "$W/q/big.qcow2" >"$W/q/big.map"
        run_workload qcmp "q. compare 1T qcow2/raw ($((NBIG / 16))M data)"
        run_workload qmap "q. map --output=json 1T qcow2"
        run_workload qchk "q. check 1T qcow2"
        rm -rf "$W/q" "$W/f"
fi

if want b; then
gen small "$W/b/small.raw" $DISK $NSMALL 2
b_prep() { OUT=$W/b/out-$1.vdi; CMD=("$(tool "$1")" convert -f raw -O vdi "$W/b/small.raw" "$OUT"); }
b_verify() { verify vdi "$OUT" raw "$W/b/small.raw"; }
b_clean() { rm -f "$OUT"; sync; }
run_workload b "b. raw->vdi ($NSMALL x 4K writes)"
rm -rf "$W/b"
fi

# --- d: compact (qemu stand-in: convert -O vdi)
# src.vdi plus its zero extents written as data blocks
if want d; then
cp --sparse=always "$W/src.vdi" "$W/d/in.vdi"
sed "s/.*/write -q -P 0 & $MiB/" "$W/zero-extents" | "$QEMU_IO" -f vdi "$W/d/in.vdi" >/dev/null
verify vdi "$W/d/in.vdi" raw "$W/src.raw"
d_supported=1
cp --sparse=always "$W/d/in.vdi" "$W/d/probe.vdi"
if ! "$VDISK_IMG" compact "$W/d/probe.vdi" >"$W/cmd.log" 2>&1; then
        d_supported=0
        d_why=$(head -c 200 "$W/cmd.log")
fi
rm -f "$W/d/probe.vdi"
d_prep() {
        if [[ $1 == vdisk ]]; then
                OUT=$W/d/work.vdi
                cp --sparse=always "$W/d/in.vdi" "$OUT"
                sync
                CMD=("$VDISK_IMG" compact "$OUT")
        else
                OUT=$W/d/out-qemu.vdi
                CMD=("$QEMU_IMG" convert -f vdi -O vdi "$W/d/in.vdi" "$OUT")
        fi
}
d_verify() { verify vdi "$OUT" raw "$W/src.raw"; }
d_clean() { rm -f "$OUT"; sync; }
if ((d_supported)); then
        run_workload d "d. compact (q: convert -O vdi)*"
else
        say "$(printf '%-36s skipped: vdisk-img compact failed: %s' "d. compact" "$d_why")"
fi
rm -rf "$W/d"
fi

# --- c: commit of a diff holding 1 GiB in 1 MiB extents onto the base
# vdisk: base = src.vdi (2 GiB data + holes), diff made by `vdisk-img create
# -b` and filled by gen.py filldiff; qemu stand-in: a qcow2 overlay holding the
# same extents committed onto a raw base (qemu cannot read VDI diffs).
# Reference: the pristine qcow2 overlay over src.raw.
if want c || want pipe; then
mkdir -p "$W/c/ext"
gen extents "$W/c/ext" $DISK $NCOMMIT 3
"$QEMU_IMG" create -q -f qcow2 -b "$W/src.raw" -F raw "$W/c/ref.qcow2"
awk -v m=$MiB '{ print "write -q -s " $1 " " $2 " " m }' "$W/c/ext/list" |
        "$QEMU_IO" -f qcow2 "$W/c/ref.qcow2" >/dev/null
c_supported=1
mkdir -p "$W/c/v" "$W/c/pristine"
cp --sparse=always "$W/src.vdi" "$W/c/v/base.vdi"
if "$VDISK_IMG" create -f vdi -b "$W/c/v/base.vdi" -F vdi "$W/c/v/diff.vdi" >"$W/cmd.log" 2>&1 &&
   gen filldiff "$W/c/v/diff.vdi" "$W/c/ext" >>"$W/cmd.log" 2>&1 &&
   "$VDISK_IMG" check "$W/c/v/diff.vdi" >>"$W/cmd.log" 2>&1 &&
   "$VDISK_IMG" convert -O raw "$W/c/v/diff.vdi" "$W/c/flat.raw" >>"$W/cmd.log" 2>&1 &&
   "$QEMU_IMG" compare -f raw -F qcow2 "$W/c/flat.raw" "$W/c/ref.qcow2" >>"$W/cmd.log" 2>&1; then
        mv "$W/c/v/diff.vdi" "$W/c/pristine/diff.vdi"
else
        c_supported=0
        c_why=$(tr '\n' ' ' <"$W/cmd.log" | head -c 300)
fi
rm -rf "$W/c/ext" "$W/c/flat.raw"
c_prep() {
        if [[ $1 == vdisk ]]; then
                OUT=$W/c/v/base.vdi
                cp --sparse=always "$W/src.vdi" "$OUT"
                cp --sparse=always "$W/c/pristine/diff.vdi" "$W/c/v/diff.vdi"
                sync
                CMD=("$VDISK_IMG" commit "$W/c/v/diff.vdi")
        else
                OUT=$W/c/qbase.raw
                cp --sparse=always "$W/src.raw" "$OUT"
                cp --sparse=always "$W/c/ref.qcow2" "$W/c/ov.qcow2"
                "$QEMU_IMG" rebase -u -f qcow2 -b "$OUT" -F raw "$W/c/ov.qcow2"
                sync
                CMD=("$QEMU_IMG" commit -f qcow2 "$W/c/ov.qcow2")
        fi
}
c_verify() {
        if [[ $1 == vdisk ]]; then verify vdi "$OUT" qcow2 "$W/c/ref.qcow2"
        else verify raw "$OUT" qcow2 "$W/c/ref.qcow2"; fi
}
c_clean() { rm -f "$OUT" "$W/c/v/diff.vdi" "$W/c/ov.qcow2"; sync; }
if ((c_supported)); then
        run_workload c "c. commit $(hs $NCOMMIT) diff (q: qcow2->raw)*"
else
        say "$(printf '%-36s skipped: needs a way to fill a VDI diff: %s' "c. commit" "$c_why")"
fi
rm -rf "$W/c"
fi

say ""
say "median/min/max: vdisk-img time / qemu-img time, per pair (< 1: vdisk-img faster)"
say "vdisk s, qemu s: median wall time; cpu: median per-pair ratio of CPU time (user + system,"
say "  of the process; the kernel's background writeback is not counted);"
say "size: output size ratio vdisk/qemu (du -B1, allocated bytes);"
say "RSS: largest peak resident set size over the timed runs"
say "* stand-ins: qemu-img has no compact (a qemu user runs convert -O vdi) and cannot"
say "  read VDI diffs (its figure is the commit of a qcow2 overlay holding the same data"
say "  onto a raw base). Those ratios compare different work: read them as orientation."
say ""
say "per-run times (s):"
for d in "${DETAILS[@]}"; do say "  $d"; done
note "results written to $RESULTS"
