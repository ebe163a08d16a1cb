#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Each image is opened with the access it needs: every vdisk-img job runs on
# a 3-image VDI chain under `strace -f -y -e trace=open,openat,openat2`, and
# the set of chain images opened for writing (O_RDWR or O_WRONLY, any
# descriptor: the O_DIRECT reopen through /proc/self/fd counts too, strace -y
# names the file it lands on) must be exactly the set the job writes:
#   base.vdi <- d1.vdi <- d2.vdi (each holds data of its own)
# Read-only jobs open nothing writable; commit writes the image it commits
# into and (with -d/-b) the top it relinks, never the images in between;
# jobs on the top write only the top. Exactly: a job that stops writing an
# image it must write fails too. Then, as a user who may not write the
# parent, commit fails with a message naming the parent, and changes nothing.
# Skips (77) without strace, and (lib.sh) without qemu-img/python3.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

command -v strace >/dev/null 2>&1 || skip "strace not found"
strace -f -qq -y -e trace=open,openat,openat2 -o /dev/null true 2>/dev/null ||
        skip "strace cannot trace here (ptrace not permitted?)"

M=$((1 << 20))
IMAGES=(base.vdi d1.vdi d2.vdi d3.vdi)

mkpattern base.raw $((6 * M)) 51
cp base.raw m1.raw
py edit m1.raw data:$((1 * M + 4096)):$((M / 2)):52 zero:$((3 * M)):$M
cp m1.raw m2.raw
py edit m2.raw data:$((2 * M)):8192:53 data:$((5 * M)):$M:54

mkdir pristine
vimg convert -f raw -O vdi base.raw pristine/base.vdi
[[ $RC -eq 0 ]] || { notok "convert base.raw" "exit $RC: $(last_err)"; finish; }
cd pristine
vimg convert -f raw -O vdi -B base.vdi -F vdi ../m1.raw d1.vdi
[[ $RC -eq 0 ]] || { notok "convert -B base.vdi m1.raw d1.vdi" "exit $RC: $(last_err)"; finish; }
vimg convert -f raw -O vdi -B d1.vdi -F vdi ../m2.raw d2.vdi
[[ $RC -eq 0 ]] || { notok "convert -B d1.vdi m2.raw d2.vdi" "exit $RC: $(last_err)"; finish; }
cd "$T"
ok "a 3-image VDI chain with data in every image"

# A fresh copy of the chain in $T/c for every job (pristine/ is outside the
# parent search: the copies have the same UUIDs).
fresh_chain() {
        rm -rf "$T/c"
        mkdir "$T/c"
        cp pristine/base.vdi pristine/d1.vdi pristine/d2.vdi "$T/c/"
}

# Chain images opened for writing in trace file $1, sorted, space-separated.
written_images() {
        local img out=()
        for img in "${IMAGES[@]}"; do
                if grep -E '(open|openat|openat2)\(.*(O_RDWR|O_WRONLY).* = [0-9]+<[^>]*/'"${img//./\\.}"'>$' \
                        "$1" >/dev/null; then
                        out+=("$img")
                fi
        done
        echo "${out[*]:-}"
}

# job "EXPECTED WRITES" ARGS...: runs vdisk-img ARGS in $T/c under strace;
# it must exit $WANT_RC (default 0).
job() {
        local expected=$1 desc want=${WANT_RC:-0}
        shift
        desc="vdisk-img $*"
        fresh_chain
        cd "$T/c"
        RC=0
        strace -f -qq -y -e trace=open,openat,openat2 -o "$T/trace" "$VDISK_IMG" "$@" \
                >"$T/out" 2>"$T/err" || RC=$?
        cd "$T"
        if [[ $RC -ne $want ]]; then
                notok "$desc: exit $want" "exit $RC: $(last_err)"
                return
        fi
        expect_eq "$desc: opens for writing exactly {$expected}" "$(written_images "$T/trace")" "$expected"
        # The trace really saw the job open the images.
        expect_true "$desc: the trace shows the images it opened" grep -qE '/c/d[12]\.vdi>$' "$T/trace"
}

job "" info d2.vdi
job "" info --backing-chain d2.vdi
job "" info --backing-chain --output=json d2.vdi
job "" convert -O raw d2.vdi "$T/flat.raw"
expect_cmp "convert of the chain reads as the flattened content" "$T/flat.raw" m2.raw
WANT_RC=1 job "" compare d2.vdi d1.vdi
job "" compare -F raw d2.vdi "$T/m2.raw"
job "" map d2.vdi
job "" map --output=json d2.vdi
job "" check d2.vdi
job "" check --output=json d1.vdi
job "d1.vdi" commit d2.vdi
expect_rc "after commit d2.vdi: the chain reads as before" 0 "$VDISK_IMG" compare -F raw c/d2.vdi m2.raw
expect_rc "after commit d2.vdi: d1.vdi reads as d2 did" 0 "$VDISK_IMG" compare -F raw c/d1.vdi m2.raw
expect_true "commit d2.vdi left base.vdi as it was" cmp -s c/base.vdi pristine/base.vdi
job "d1.vdi" commit -p d2.vdi
job "d1.vdi d2.vdi" commit -d d2.vdi
job "base.vdi d2.vdi" commit -b base.vdi d2.vdi
expect_rc "after commit -b base.vdi: the chain reads as before" 0 "$VDISK_IMG" compare -F raw c/d2.vdi m2.raw
expect_true "commit -b base.vdi left d1.vdi (skipped over) as it was" cmp -s c/d1.vdi pristine/d1.vdi
job "d1.vdi d2.vdi" commit -b d1.vdi d2.vdi
expect_true "commit -b d1.vdi (the middle image) left base.vdi as it was" cmp -s c/base.vdi pristine/base.vdi
job "d2.vdi" rebase -b base.vdi -F vdi d2.vdi
expect_rc "after rebase: d2.vdi reads as before" 0 "$VDISK_IMG" compare -F raw c/d2.vdi m2.raw
job "d2.vdi" rebase -u -b base.vdi -F vdi d2.vdi
job "d2.vdi" rebase -b "" d2.vdi
job "d2.vdi" resize d2.vdi +1M
job "d2.vdi" compact d2.vdi
job "d1.vdi" compact d1.vdi
job "d2.vdi" check -r all d2.vdi
job "d2.vdi" repair d2.vdi
job "d3.vdi" create -f vdi -b d2.vdi -F vdi d3.vdi
job "" create -f vdi -b "$T/c/d2.vdi" -F vdi "$T/elsewhere.vdi"
rm -f "$T/elsewhere.vdi"
job "d2.vdi" setuuid d2.vdi
job "d2.vdi" comment d2.vdi "a comment"
job "" comment d2.vdi

# --- -t: how commit and rebase write (the image they write opens, or is
# reopened, as the cache mode says; unsafe never flushes)
# cache_job MODE ARGS...: vdisk-img ARGS on a fresh chain under strace; sets
# SYNCS (fsync/fdatasync calls on chain images) and DIRECT (chain images
# opened O_DIRECT).
cache_job() {
        local mode=$1
        shift
        fresh_chain
        cd "$T/c"
        RC=0
        strace -f -qq -y -e trace=open,openat,openat2,fsync,fdatasync -o "$T/trace" "$VDISK_IMG" "$@" \
                >"$T/out" 2>"$T/err" || RC=$?
        cd "$T"
        expect_eq "vdisk-img $* ($mode): exit 0" "$RC" 0
        SYNCS=$(grep -cE 'f(data)?sync\([0-9]+<[^>]*/c/[a-z0-9]+\.vdi>' "$T/trace" || true)
        DIRECT=$(grep -cE 'O_DIRECT.* = [0-9]+<[^>]*/c/[a-z0-9]+\.vdi>$' "$T/trace" || true)
}
cache_job default commit d2.vdi
expect_true "commit: flushed (fsync/fdatasync: $SYNCS)" test "$SYNCS" -gt 0
expect_true "commit: the base written direct (O_DIRECT opens: $DIRECT)" test "$DIRECT" -gt 0
cache_job unsafe commit -t unsafe d2.vdi
expect_eq "commit -t unsafe: never flushed" "$SYNCS" 0
expect_eq "commit -t unsafe: through the page cache" "$DIRECT" 0
expect_rc "after commit -t unsafe: the chain reads as before" 0 "$VDISK_IMG" compare -F raw c/d2.vdi m2.raw
expect_rc "after commit -t unsafe: d1.vdi reads as d2 did" 0 "$VDISK_IMG" compare -F raw c/d1.vdi m2.raw
cache_job writeback commit -t writeback -d d2.vdi
expect_true "commit -t writeback: flushed (fsync/fdatasync: $SYNCS)" test "$SYNCS" -gt 0
expect_eq "commit -t writeback: through the page cache" "$DIRECT" 0
expect_rc "after commit -t writeback -d: d1.vdi reads as d2 did" 0 "$VDISK_IMG" compare -F raw c/d1.vdi m2.raw
cache_job unsafe rebase -t unsafe -b base.vdi -F vdi d2.vdi
expect_eq "rebase -t unsafe: never flushed" "$SYNCS" 0
expect_rc "after rebase -t unsafe: d2.vdi reads as before" 0 "$VDISK_IMG" compare -F raw c/d2.vdi m2.raw

# --- a parent the user may not write: commit names it and changes nothing
denied() { # runs vdisk-img as a user who cannot write c/d1.vdi
        if [[ $(id -u) -eq 0 ]]; then
                setpriv --reuid=65534 --regid=65534 --clear-groups "$VDISK_IMG" "$@"
        else
                "$VDISK_IMG" "$@"
        fi
}
if [[ $(id -u) -eq 0 ]] && ! command -v setpriv >/dev/null 2>&1; then
        echo "# root without setpriv: the permission case is not run"
elif ! denied --version >/dev/null 2>&1; then
        # A build tree inside a mode-0700 directory (a mktemp clone) is out of
        # reach of uid 65534: running the case would test "command not found".
        echo "# vdisk-img cannot be run by uid 65534 here: the permission case is not run"
else
        fresh_chain
        chmod 0755 "$T/c"
        [[ $(id -u) -eq 0 ]] && chmod 0755 "$T" && chown 65534:65534 "$T/c" "$T/c/d2.vdi"
        chmod 0444 "$T/c/d1.vdi"
        cd "$T/c"
        RC=0
        denied commit d2.vdi >"$T/out" 2>"$T/err" || RC=$?
        cd "$T"
        expect_true "commit into a parent the user may not write fails" test "$RC" -ne 0
        expect_true "the error names the parent and says it cannot be written" \
                grep -q "d1\.vdi.*cannot be opened for writing" "$T/err"
        expect_true "the failed commit left d1.vdi as it was" cmp -s c/d1.vdi pristine/d1.vdi
        expect_true "the failed commit left d2.vdi as it was" cmp -s c/d2.vdi pristine/d2.vdi
        RC=0
        (cd "$T/c" && denied info --backing-chain d2.vdi) >"$T/out" 2>"$T/err" || RC=$?
        expect_eq "reading the chain needs no write permission on the parent" "$RC" 0
        chmod -R u+w "$T/c"
fi

finish
