# shellcheck shell=bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Sourced by every interop test:  source "$(dirname "$0")/lib.sh" "$@"
#
# $1 (or $VDISK_IMG) is the vdisk-img binary under test; qemu-img may stand in
# for it while vdisk-img is being written (VDISK_IMG=qemu-img).
# Exit status of a test: 0 pass, 1 fail, 77 skip (qemu-img, qemu-io or
# /usr/bin/python3 missing).  Every assertion prints one "ok"/"not ok" line;
# a failing assertion does not stop the script, so one run shows them all.
# KEEP_TMP=1 keeps the scratch directory for a post-mortem.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEST_NAME=$(basename "$0" .sh)
PY=/usr/bin/python3
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
VDISK_IMG=${1:-${VDISK_IMG:-build/tools/vdisk-img}}

skip() { FINISHED=1; echo "SKIP $TEST_NAME: $*"; exit 77; }

# Real-ENOSPC tests set VDISK_TMPFS_TEST=1 before sourcing this file: the
# script runs again in a private mount namespace (so that its tmpfs is
# nobody else's and goes with it), which needs root; skipped otherwise. See
# newfs, fill, flat and enospc_fails below.
if [[ -n ${VDISK_TMPFS_TEST:-} && -z ${VDISK_ENOSPC_NS:-} ]]; then
        [[ $(id -u) -eq 0 ]] || skip "needs root to mount a tmpfs"
        unshare -m true 2>/dev/null || skip "unshare -m is not possible"
        VDISK_ENOSPC_NS=1 exec unshare -m --propagation private bash "$0" "$@"
fi

# bytes N: 64M, 1G, 512K, 0x100 or plain numbers to a byte count
bytes() {
        local n=$1 m=1
        case $n in
        *[kK]) m=1024; n=${n%?} ;;
        *[mM]) m=$((1 << 20)); n=${n%?} ;;
        *[gG]) m=$((1 << 30)); n=${n%?} ;;
        esac
        echo $((n * m))
}

command -v "$QEMU_IMG" >/dev/null 2>&1 || skip "qemu-img not found"
command -v "$QEMU_IO" >/dev/null 2>&1 || skip "qemu-io not found"
[[ -x $PY ]] || skip "$PY not found"

if [[ $VDISK_IMG == */* ]]; then
        [[ -x $VDISK_IMG ]] || { echo "FAIL $TEST_NAME: $VDISK_IMG is not an executable"; exit 1; }
        VDISK_IMG=$(cd "$(dirname "$VDISK_IMG")" && pwd)/$(basename "$VDISK_IMG")
else
        VDISK_IMG=$(command -v "$VDISK_IMG") || { echo "FAIL $TEST_NAME: vdisk-img not found"; exit 1; }
fi

# The second argument (a test's helper binary: need_discard) and the
# directory relative paths in the arguments start from.
ARG2=${2:-}
START_DIR=$PWD

T=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-interop-$TEST_NAME.XXXXXX")
FINISHED=0
cleanup() {
        local rc=$?
        cd /
        if [[ $FINISHED -eq 0 ]]; then
                echo "not ok - $TEST_NAME aborted (exit $rc) before finishing: an unexpected command failed"
                rc=1
        fi
        if [[ -n ${KEEP_TMP:-} ]]; then echo "kept $T"; else rm -rf "$T"; fi
        exit $rc
}
trap cleanup EXIT
cd "$T"

echo "# $TEST_NAME: vdisk-img=$VDISK_IMG qemu-img=$(command -v "$QEMU_IMG") dir=$T"

NPASS=0
NFAIL=0
FAILED=()

ok() { NPASS=$((NPASS + 1)); echo "ok $((NPASS + NFAIL)) - $*"; }
notok() {
        local desc=$1; shift
        NFAIL=$((NFAIL + 1))
        FAILED+=("$desc")
        echo "not ok $((NPASS + NFAIL)) - $desc"
        local l
        for l in "$@"; do echo "#   $l"; done
}

# run CMD...: runs a command, never aborts; sets RC, stdout in $T/out, stderr in $T/err.
run() {
        echo "# \$ $*" | sed "s|$T/||g"
        RC=0
        "$@" >"$T/out" 2>"$T/err" || RC=$?
        # (|| true: a long stderr makes sed die of SIGPIPE once head is done)
        if [[ $RC -ne 0 && -s $T/err ]]; then sed 's/^/#   stderr: /' "$T/err" | head -n 5 || true; fi
        return 0
}
vimg() { run "$VDISK_IMG" "$@"; }
qimg() { run "$QEMU_IMG" "$@"; }

# The stdout / stderr of the last run, one line.
last_err() { tr '\n' ' ' <"$T/err" | cut -c1-300; }

# expect_rc DESC WANT CMD...
expect_rc() {
        local desc=$1 want=$2; shift 2
        run "$@"
        if [[ $RC -eq $want ]]; then ok "$desc"; else notok "$desc" "exit $RC, want $want" "stderr: $(last_err)"; fi
}
# expect_fail DESC CMD...: nonzero exit and a non-empty error message
expect_fail() {
        local desc=$1; shift
        run "$@"
        if [[ $RC -ne 0 && -s $T/err ]]; then ok "$desc"
        elif [[ $RC -eq 0 ]]; then notok "$desc" "exit 0, want failure"
        else notok "$desc" "exit $RC but no error message on stderr"; fi
}
expect_eq() {
        local desc=$1 got=$2 want=$3
        if [[ "$got" == "$want" ]]; then ok "$desc"; else notok "$desc" "got:  $got" "want: $want"; fi
}
expect_true() {
        local desc=$1; shift
        if "$@"; then ok "$desc"; else notok "$desc" "condition false: $*"; fi
}

# qemu-img check passes (exit 0) on FILE [FMT]
qcheck() {
        local f=$1 fmt=${2:-vdi}
        expect_rc "qemu-img check $(basename "$f") clean" 0 "$QEMU_IMG" check -f "$fmt" "$f"
}
# qemu-img compare A B (formats FA FB) reports identical content
qcompare() {
        local a=$1 fa=$2 b=$3 fb=$4
        expect_rc "qemu-img compare $(basename "$a") $(basename "$b") identical" 0 \
                "$QEMU_IMG" compare -f "$fa" -F "$fb" "$a" "$b"
}
# expect_cmp DESC A B: byte-identical files
expect_cmp() {
        local desc=$1 a=$2 b=$3
        run cmp "$a" "$b"
        if [[ $RC -eq 0 ]]; then ok "$desc"; else notok "$desc" "$(head -c 300 "$T/out") $(last_err)"; fi
}

py() { "$PY" "$HERE/helper.py" "$@"; }
qinfo() { "$QEMU_IMG" info -f "$2" --output=json "$1" | py json-get - "$3"; }
vdi() { py vdi-get "$@"; }

# mkpattern FILE SIZE [SEED]: the standard patterned raw file: data in the first
# and last sector, holes, explicitly written zero bytes, random data at offsets
# straddling 1 MiB blocks and sectors, a one-byte fill.  Only items that fit.
mkpattern() {
        local f=$1 size=$2 s=${3:-1} items=()
        local M=$((1 << 20))
        size=$(bytes "$size")
        add() { # KIND OFF LEN [ARG]
                local off=$(($2)) len=$(($3))
                (( off + len <= size )) && items+=("$1:$off:$len${4:+:$4}")
                return 0
        }
        add data 0 512 $((s * 100 + 1))
        add data $((M - 4096)) 8192 $((s * 100 + 2))        # straddles block 0/1
        add data $((3 * M - 100)) 300 $((s * 100 + 3))      # unaligned, straddles 2/3
        add zero $((4 * M)) $((2 * M))                      # two whole zero blocks
        add data $((8 * M)) $M $((s * 100 + 4))             # a full block
        add zero $((8 * M + 256 * 1024)) $((256 * 1024))    # zeros inside it
        add fill $((10 * M)) 4096 0x5a
        add data $((12 * M + 512)) $((3 * M + 123)) $((s * 100 + 5)) # spans 4 blocks
        add zero $((20 * M)) $((M / 2))                     # zero half block
        add data $((33 * M - 1000)) 2000 $((s * 100 + 6))
        if (( size >= 512 )); then
                items+=("data:$((size - 512)):512:$((s * 100 + 7))")    # last sector
        fi
        py mkraw "$f" "$size" "${items[@]}"
}

# Real ENOSPC (VDISK_TMPFS_TEST=1): images on a small tmpfs at $T/fs, a
# filler file leaving FREE bytes (default 256 KiB) free.
FREE=$((256 * 1024))
# newfs SIZE: a fresh, empty tmpfs of SIZE bytes on fs/
newfs() {
        mountpoint -q fs && umount fs
        mount -t tmpfs -o "size=$1,mode=0755" vdisk-enospc fs || skip "cannot mount a tmpfs"
}
# fill [FREE]: a filler file leaves exactly FREE (default $FREE) bytes free on fs/
fill() {
        local avail free=${1:-$FREE}
        avail=$(df -B1 --output=avail fs | tail -n 1 | tr -d ' ')
        (( avail > free )) || { notok "fill: only $avail bytes free before filling"; return; }
        fallocate -l $((avail - free)) fs/filler
        expect_eq "fill: $free bytes left free" "$(df -B1 --output=avail fs | tail -n 1 | tr -d ' ')" "$free"
}
# flat IMG OUT: IMG's chain as raw, written outside the tmpfs
flat() {
        rm -f "$2"
        vimg convert -O raw "$1" "$2"
        [[ $RC -eq 0 ]] || notok "convert -O raw $1" "exit $RC: $(last_err)"
}
# enospc_fails DESC FILE CMD...: the command fails, naming FILE and ENOSPC
enospc_fails() {
        local desc=$1 file=$2; shift 2
        run "$@"
        if [[ $RC -eq 0 ]]; then notok "$desc fails on a full file system" "exit 0"
        elif ! grep -q "No space left on device" "$T/err"; then
                notok "$desc fails with \"No space left on device\"" "exit $RC, stderr: $(last_err)"
        elif ! grep -qF "$file" "$T/err"; then
                notok "$desc: the message names $file" "stderr: $(last_err)"
        else ok "$desc fails: $(last_err)"; fi
}

# --- QCOW2 helpers

# need_discard: DISCARD is the vdisk-discard helper (tests/interop/vdisk-discard.c),
# the test's second argument (default build/tests/interop/vdisk-discard); the
# test fails when it is missing.
need_discard() {
        DISCARD=${ARG2:-build/tests/interop/vdisk-discard}
        [[ $DISCARD == /* ]] || DISCARD=$START_DIR/$DISCARD
        [[ -x $DISCARD ]] || { notok "vdisk-discard not found at $DISCARD"; finish; }
}

# wcheck IMAGE REF DESC: qemu-img check is clean and IMAGE (qcow2) reads as raw REF.
wcheck() {
        local f=$1 ref=$2 desc=$3
        run "$QEMU_IMG" check -f qcow2 "$f"
        if [[ $RC -eq 0 ]]; then ok "$desc: qemu-img check clean"
        else notok "$desc: qemu-img check clean" "$(tr '\n' ' ' <"$T/out" | cut -c1-400)"; fi
        run "$QEMU_IMG" compare -f raw -F qcow2 "$ref" "$f"
        if [[ $RC -eq 0 ]]; then ok "$desc: qemu-img compare equal"
        else notok "$desc: qemu-img compare equal" "$(tr '\n' ' ' <"$T/out" | cut -c1-300) $(last_err)"; fi
}

# expect_no_data IMG OFF LEN DESC: qemu-img map shows no data in the range
# (a discard gave the clusters back instead of writing zeros into them)
expect_no_data() {
        local img=$1 off=$2 len=$3 desc=$4 got
        got=$("$QEMU_IMG" map -f qcow2 --output=json "$img" | "$PY" -c '
import json, sys
off, end = int(sys.argv[1]), int(sys.argv[1]) + int(sys.argv[2])
bad = [e for e in json.load(sys.stdin) if e["data"] and e["start"] < end and off < e["start"] + e["length"]]
print("data at " + ", ".join(str(e["start"]) for e in bad) if bad else "no data")' "$off" "$len" 2>&1)
        expect_eq "$desc" "$got" "no data"
}

# BM ARGS...: the tests' own QCOW2 bitmap reader and writer (qcow2-bitmaps.py)
BM() { "$PY" "$HERE/qcow2-bitmaps.py" "$@"; }
# qflags FILE: "name:flag,flag:granularity ..." as qemu-img info --output=json lists them
qflags() {
        "$QEMU_IMG" info -f qcow2 --output=json "$1" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
bms = d.get("format-specific", {}).get("data", {}).get("bitmaps", [])
print(" ".join("%s:%s:%d" % (b["name"], ",".join(b["flags"]), b["granularity"]) for b in bms) or "-")'
}

finish() {
        FINISHED=1
        echo "# $TEST_NAME: $NPASS passed, $NFAIL failed"
        if (( NFAIL > 0 )); then
                local d
                for d in "${FAILED[@]}"; do echo "# FAILED: $d"; done
                exit 1
        fi
        exit 0
}
