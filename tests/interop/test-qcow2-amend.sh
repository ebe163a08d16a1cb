#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# qcow2 amend, "Format specific information" and external data files against
# qemu-img 7.2:
#   - vdisk-img amend on qemu-made and vdisk-made images with data (zero
#     clusters, a backing file): refcount_bits 1/2/4/8/16/64, compat=0.10 and back
#     to 1.1 with lazy_refcounts: after each step `qemu-img check` is clean,
#     `qemu-img compare` finds the content unchanged and `qemu-img info` shows
#     the new compat and refcount bits; qemu-io still writes the result;
#   - compat=0.10 of images with internal snapshots (zero clusters shared
#     with a snapshot, over its data, over a backing file): every snapshot
#     reads as before;
#   - refusals with qemu's words: a raw image, options only creation takes,
#     downgrades of images with extended L2, a data file or a snapshot of
#     another size, compat=0.10 with another refcount width; a refused amend
#     leaves the file unchanged;
#   - `vdisk-img info` prints the "Format specific information" (human) and
#     the "format-specific" object (JSON) exactly as qemu-img does for v2, v3,
#     lazy refcounts, 1-bit refcounts, extended L2, zstd and data files;
#   - data files: vdisk-img convert -O qcow2 -o data_file=NAME[,data_file_raw=on]
#     and writes into qemu-made data-file images: qemu-img check clean,
#     compare equal; with data_file_raw the data file is the disk byte for byte;
#   - backing_file/backing_fmt: vdisk-img and qemu-img agree on what amend
#     takes (only the image's own name and format, both given) and refuses;
#   - data_file=NAME renames the data file in the header (short and long
#     names, qemu-made images with a feature table and a backing file):
#     qemu-img info names it, check clean, compare equal; data_file_raw=off
#     clears the bit, data_file_raw=on and data_file on an image without one
#     are refused with qemu's words.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))
SIZE=$((14 * M))

mkpattern pat.raw "$SIZE"

# spec IMAGE KEY...: "format-specific" data fields of qemu-img info's JSON
spec() {
        local f=$1; shift
        "$QEMU_IMG" info -f qcow2 --output=json "$f" |
                "$PY" -c 'import json,sys; d=json.load(sys.stdin)["format-specific"]["data"]; print(" ".join(str(d.get(k)).lower() for k in sys.argv[1:]))' "$@"
}

# amend_ok IMAGE REF OPTS COMPAT BITS: amend succeeds, the image stays clean
# and equal, and qemu-img sees the new compat and refcount width.
amend_ok() {
        local f=$1 ref=$2 opts=$3 compat=$4 bits=$5
        vimg amend -o "$opts" "$f"
        if [[ $RC -ne 0 ]]; then notok "amend -o $opts $f" "exit $RC: $(last_err)"; return; fi
        ok "amend -o $opts $f"
        wcheck "$f" "$ref" "$f after $opts"
        expect_eq "$f after $opts: compat, refcount bits" "$(spec "$f" compat refcount-bits)" "$compat $bits"
}

# amend_refused IMAGE OPTS MESSAGE: fails naming MESSAGE, the file unchanged
amend_refused() {
        local f=$1 opts=$2 msg=$3 sum
        sum=$(md5sum <"$f")
        vimg amend -o "$opts" "$f"
        if [[ $RC -ne 0 ]] && grep -qF "$msg" "$T/err"; then ok "amend -o $opts $f refused: $msg"
        else notok "amend -o $opts $f refused: $msg" "exit $RC" "stderr: $(last_err)"; fi
        expect_eq "$f unchanged by the refused amend" "$(md5sum <"$f")" "$sum"
}

# --- amend: a qemu-made image with data and zero clusters
"$QEMU_IMG" convert -q -f raw -O qcow2 pat.raw q.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 8M 1M" -c "write -z 13M 64k" q.qcow2 >/dev/null
"$QEMU_IMG" convert -q -f qcow2 -O raw q.qcow2 q.ref
amend_ok q.qcow2 q.ref refcount_bits=1 1.1 1
amend_refused q.qcow2 compat=0.10 "compat=0.10 requires refcount_bits=16"
amend_ok q.qcow2 q.ref refcount_bits=16,compat=0.10 0.10 16
amend_ok q.qcow2 q.ref compat=1.1,lazy_refcounts=on 1.1 16
expect_eq "q.qcow2: lazy refcounts on" "$(spec q.qcow2 lazy-refcounts)" "true"
amend_ok q.qcow2 q.ref lazy_refcounts=off,refcount_bits=8 1.1 8
expect_eq "q.qcow2: lazy refcounts off" "$(spec q.qcow2 lazy-refcounts)" "false"
run "$QEMU_IO" -f qcow2 -c "write -P 0x77 5M 200k" q.qcow2
expect_eq "qemu-io writes the amended image" "$RC" 0
qcheck q.qcow2 qcow2

# --- amend: a vdisk-made image, and a qemu-made diff with zero clusters over
# its backing file's data (a downgrade gives them zeroed clusters)
vimg convert -f raw -O qcow2 -o cluster_size=4096 pat.raw v.qcow2
expect_eq "vdisk-img convert -O qcow2 v.qcow2" "$RC" 0
amend_ok v.qcow2 pat.raw refcount_bits=2 1.1 2
amend_ok v.qcow2 pat.raw refcount_bits=16,compat=0.10 0.10 16
amend_ok v.qcow2 pat.raw compat=1.1,refcount_bits=64 1.1 64
"$QEMU_IMG" create -q -f qcow2 -b q.qcow2 -F qcow2 d.qcow2
"$QEMU_IO" -f qcow2 -c "write -P 0x31 1M 64k" -c "write -z 0 512k" -c "write -z 12M 1M" d.qcow2 >/dev/null
"$QEMU_IMG" convert -q -f qcow2 -O raw d.qcow2 d.ref
amend_ok d.qcow2 d.ref compat=0.10 0.10 16
amend_ok d.qcow2 d.ref compat=1.1,refcount_bits=4 1.1 4
expect_eq "d.qcow2 keeps its backing file" "$("$QEMU_IMG" info --output=json d.qcow2 | py json-get - backing-filename)" "q.qcow2"

# --- compat=0.10 with internal snapshots (qemu keeps them, and their 24
# bytes of extra data): zero clusters in a table the snapshot shares
# (dropped in place), over the snapshot's data after it (the active tree's
# copied table: the shared cluster keeps the snapshot's data, qemu-img 7.2
# zeroes it), and in a diff over a backing file after the snapshot (new
# zeroed clusters). Content and every snapshot unchanged, the snapshot list
# the same, check clean; a snapshot of another size and shared zero
# clusters over a backing file are refused, the file unchanged.
# snaps_save IMAGE [SUFFIX]: snapshot s1's content (IMAGE.s1SUFFIX) and the
# snapshot list without dates (IMAGE.listSUFFIX); without SUFFIX, the
# content too (IMAGE.ref)
snaps_save() {
        "$QEMU_IMG" convert -q -f qcow2 -l s1 -O raw "$1" "$1.s1${2-}"
        "$QEMU_IMG" snapshot -l "$1" | sed 1d | awk '{print $1, $2, $3, $4}' >"$1.list${2-}"
        [[ -n ${2-} ]] || "$QEMU_IMG" convert -q -f qcow2 -O raw "$1" "$1.ref"
}
# downgrade_snaps IMAGE: compat=0.10 (clean, the same content), then s1 and
# the snapshot list as they were
downgrade_snaps() {
        snaps_save "$1"
        amend_ok "$1" "$1.ref" compat=0.10 0.10 16
        snaps_save "$1" .after
        expect_cmp "$1: snapshot s1 unchanged" "$1.s1" "$1.s1.after"
        expect_cmp "$1: snapshot list unchanged" "$1.list" "$1.list.after"
}
"$QEMU_IMG" create -q -f qcow2 sn.qcow2 16M
"$QEMU_IO" -f qcow2 -c "write -P 0x41 0 2M" -c "write -z 4M 1M" sn.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s1 sn.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 0 128k" -c "write -P 0x42 8M 64k" sn.qcow2 >/dev/null
downgrade_snaps sn.qcow2
"$QEMU_IMG" create -q -f qcow2 -b q.qcow2 -F qcow2 snd.qcow2
"$QEMU_IO" -f qcow2 -c "write -P 0x43 1M 64k" snd.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s1 snd.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 0 512k" -c "write -z 1M 64k" snd.qcow2 >/dev/null
downgrade_snaps snd.qcow2
"$QEMU_IMG" create -q -f qcow2 -b q.qcow2 -F qcow2 sns.qcow2
"$QEMU_IO" -f qcow2 -c "write -z 0 512k" sns.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s1 sns.qcow2
amend_refused sns.qcow2 compat=0.10 "Cannot downgrade an image whose zero clusters are shared with internal snapshots"
"$QEMU_IMG" create -q -f qcow2 snr.qcow2 8M
"$QEMU_IMG" snapshot -c s1 snr.qcow2
"$QEMU_IMG" resize -q snr.qcow2 16M
amend_refused snr.qcow2 compat=0.10 "Internal snapshots prevent downgrade of image"

# --- refusals
"$QEMU_IMG" create -q -f raw r.raw 1M
amend_refused r.raw size=2M "Format driver 'raw' does not support option amendment"
amend_refused q.qcow2 cluster_size=4096 "Invalid parameter 'cluster_size'"
amend_refused q.qcow2 foo=bar "Invalid parameter 'foo'"
amend_refused q.qcow2 refcount_bits=3 "Refcount width must be a power of two"
amend_refused q.qcow2 compat=2.0 "Unknown compatibility level 2.0"
"$QEMU_IMG" create -q -f qcow2 -o extended_l2=on x.qcow2 4M
amend_refused x.qcow2 compat=0.10 "Cannot downgrade an image with incompatible features 0x10 set"
"$QEMU_IMG" create -q -f qcow2 -o data_file=xd.raw xd.qcow2 4M
amend_refused xd.qcow2 compat=0.10 "Cannot downgrade an image with a data file"
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 v2.qcow2 4M
amend_refused v2.qcow2 lazy_refcounts=on "Lazy refcounts only supported with compatibility level 1.1"
expect_fail "amend without -o" "$VDISK_IMG" amend q.qcow2

# --- info: "Format specific information" as qemu-img prints it
"$QEMU_IMG" create -q -f qcow2 i-v3.qcow2 4M
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 i-v2.qcow2 4M
"$QEMU_IMG" create -q -f qcow2 -o lazy_refcounts=on,refcount_bits=1 i-lazy.qcow2 4M
"$QEMU_IMG" create -q -f qcow2 -o extended_l2=on,compression_type=zstd i-x.qcow2 4M
"$QEMU_IMG" create -q -f qcow2 -o data_file=i-df.raw,data_file_raw=on i-df.qcow2 4M
for f in i-v3.qcow2 i-v2.qcow2 i-lazy.qcow2 i-x.qcow2 i-df.qcow2 q.qcow2 xd.qcow2; do
        "$QEMU_IMG" info --output=json "$f" >q.json
        vimg info --output=json "$f"
        cp "$T/out" v.json
        run py json-cmp q.json v.json format-specific
        if [[ $RC -eq 0 ]]; then ok "info --output=json $f: format-specific as qemu-img's"
        else notok "info --output=json $f: format-specific as qemu-img's" "$(cat "$T/out")"; fi
        "$QEMU_IMG" info "$f" | sed -n '/^Format specific information:/,$p' >q.txt
        vimg info "$f"
        sed -n '/^Format specific information:/,$p' "$T/out" >v.txt
        if [[ -s q.txt ]] && cmp -s q.txt v.txt; then ok "info $f: Format specific information as qemu-img's"
        else notok "info $f: Format specific information as qemu-img's" "$(diff q.txt v.txt | tr '\n' ' ' | cut -c1-300)"; fi
done

# --- external data files written by vdisk-img
vimg convert -f raw -O qcow2 -o data_file=c1.dat pat.raw c1.qcow2
expect_eq "vdisk-img convert -o data_file=c1.dat" "$RC" 0
wcheck c1.qcow2 pat.raw "c1.qcow2 (data file)"
expect_eq "c1.qcow2 names its data file" "$(spec c1.qcow2 data-file)" "c1.dat"
vimg convert -f raw -O qcow2 -o data_file=c2.dat,data_file_raw=on pat.raw c2.qcow2
expect_eq "vdisk-img convert -o data_file=c2.dat,data_file_raw=on" "$RC" 0
wcheck c2.qcow2 pat.raw "c2.qcow2 (raw data file)"
expect_cmp "c2.dat is the disk, byte for byte" c2.dat pat.raw
"$QEMU_IMG" create -q -f qcow2 -o data_file=qd.dat qd.qcow2 "$SIZE"
"$QEMU_IO" -f qcow2 -c "write -P 0x11 0 3M" -c "write -z 4M 1M" qd.qcow2 >/dev/null
vimg convert -n -f raw -O qcow2 pat.raw qd.qcow2
expect_eq "vdisk-img writes into a qemu-made data-file image" "$RC" 0
wcheck qd.qcow2 pat.raw "qd.qcow2 (qemu-made data file, written by vdisk)"
"$QEMU_IMG" create -q -f qcow2 -o data_file=qr.dat,data_file_raw=on qr.qcow2 "$SIZE"
"$QEMU_IO" -f qcow2 -c "write -P 0x22 2M 2M" qr.qcow2 >/dev/null
vimg convert -n -f raw -O qcow2 pat.raw qr.qcow2
expect_eq "vdisk-img writes into a qemu-made raw data-file image" "$RC" 0
wcheck qr.qcow2 pat.raw "qr.qcow2 (qemu-made raw data file, written by vdisk)"
expect_cmp "qr.dat is the disk, byte for byte" qr.dat pat.raw
expect_fail "a data file outside the image's directory is refused" \
        "$VDISK_IMG" create -f qcow2 -o data_file=../outside.dat o.qcow2 1M
expect_true "nothing was created outside" test ! -e ../outside.dat

# --- backing_file / backing_fmt: accepted and refused exactly where qemu-img 7.2 does
"$QEMU_IMG" create -q -f qcow2 -b q.qcow2 -F qcow2 bk.qcow2 "$SIZE"
"$QEMU_IMG" create -q -f qcow2 bs.qcow2 4M
for case in "bk.qcow2 backing_file=q.qcow2,backing_fmt=qcow2" "bk.qcow2 backing_file=q.qcow2" \
            "bk.qcow2 backing_fmt=qcow2" "bk.qcow2 backing_file=d.qcow2,backing_fmt=qcow2" \
            "bk.qcow2 backing_file=q.qcow2,backing_fmt=raw" "bs.qcow2 backing_file=" \
            "bs.qcow2 backing_file=q.qcow2,backing_fmt=qcow2"; do
        read -r f opts <<<"$case"
        cp "$f" qemu-copy.qcow2
        qrc=0
        "$QEMU_IMG" amend -o "$opts" qemu-copy.qcow2 2>/dev/null || qrc=$?
        sum=$(md5sum <"$f")
        vimg amend -o "$opts" "$f"
        if [[ $qrc -eq 0 && $RC -eq 0 ]] || { [[ $qrc -ne 0 && $RC -ne 0 ]] && grep -qF "Cannot amend the backing file" "$T/err"; }; then
                ok "amend -o $opts $f: as qemu-img (exit $qrc)"
        else notok "amend -o $opts $f: as qemu-img (exit $qrc)" "vdisk-img exit $RC: $(last_err)"; fi
        expect_eq "amend -o $opts $f leaves the file as it was" "$(md5sum <"$f")" "$sum"
done
expect_eq "bk.qcow2 still names q.qcow2" "$("$QEMU_IMG" info --output=json bk.qcow2 | py json-get - backing-filename)" "q.qcow2"

# --- data_file=NAME: the name in the header changes (qemu-made images: a
# feature table; one with a backing file too; names past the first sector)
long1=$(printf 'p%.0s' {1..200})
long2=$long1/$(printf 'q%.0s' {1..200})
mkdir -p "$long2"
"$QEMU_IMG" create -q -f qcow2 -o data_file=rn.dat rn.qcow2 "$SIZE"
"$QEMU_IO" -f qcow2 -c "write -P 0x44 1M 3M" -c "write -z 6M 1M" rn.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -o data_file=rb.dat -b q.qcow2 -F qcow2 rb.qcow2 "$SIZE"
"$QEMU_IO" -f qcow2 -c "write -P 0x55 2M 1M" rb.qcow2 >/dev/null
for f in rn rb; do
        "$QEMU_IMG" convert -q -f qcow2 -O raw $f.qcow2 $f.ref
        cur=$f.dat
        for new in $f-2.dat "$long1/$f-$(printf 'x%.0s' {1..150}).dat" "$long2/$f-$(printf 'y%.0s' {1..100}).dat" \
                   $f-3.dat; do
                cp "$cur" "$new"
                vimg amend -o "data_file=$new" $f.qcow2
                if [[ $RC -ne 0 ]]; then notok "amend -o data_file=(${#new} bytes) $f.qcow2" "exit $RC: $(last_err)"; continue; fi
                ok "amend -o data_file=(${#new} bytes) $f.qcow2"
                expect_eq "$f.qcow2 names its new data file (${#new} bytes)" "$(spec $f.qcow2 data-file)" "$new"
                rm -f "$cur"
                cur=$new
                wcheck $f.qcow2 $f.ref "$f.qcow2 with data file of ${#new} bytes"
        done
done
expect_eq "rb.qcow2 keeps its backing file" "$("$QEMU_IMG" info --output=json rb.qcow2 | py json-get - backing-filename)" "q.qcow2"
run "$QEMU_IO" -f qcow2 -c "write -P 0x66 5M 64k" rn.qcow2
expect_eq "qemu-io writes rn.qcow2 through its renamed data file" "$RC" 0
qcheck rn.qcow2 qcow2
amend_refused q.qcow2 data_file=x.dat "data-file can only be set for images that use an external data file"
amend_refused rn.qcow2 data_file_raw=on "data-file-raw cannot be set on existing images"
amend_refused rn.qcow2 data_file=/tmp/abs.dat "refusing the absolute data file name"
"$QEMU_IMG" create -q -f qcow2 -o data_file=rw.dat,data_file_raw=on rw.qcow2 4M
vimg amend -o data_file_raw=on rw.qcow2
expect_eq "amend -o data_file_raw=on where it is on already" "$RC" 0
vimg amend -o data_file_raw=off rw.qcow2
expect_eq "amend -o data_file_raw=off" "$RC" 0
expect_eq "rw.qcow2: data file raw off" "$(spec rw.qcow2 data-file-raw)" "false"
qcheck rw.qcow2 qcow2

finish
