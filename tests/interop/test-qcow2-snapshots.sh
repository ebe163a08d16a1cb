#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# QCOW2 internal snapshots made by qemu-img, read by vdisk-img:
#   - several snapshots with different data between them (plain, zero,
#     compressed clusters, discarded ranges, a resize between two
#     snapshots: read at the current size, as qemu-img does), in compat 1.1 and 0.10, 512-byte and 2 MiB clusters,
#     extended L2, zstd, over a backing file: `vdisk-img convert -l` of each
#     snapshot (by snapshot.id=, snapshot.name=, both, and a bare id or
#     name) is byte-identical with qemu-img's `convert -l`, and the current
#     state still reads as qemu-img reads it;
#   - `snapshot -l` prints what qemu-img prints, `info` the same snapshot
#     table (ICOUNT included), `info --output=json` the same "snapshots";
#   - a snapshot that is not there and a bad -l parameter fail like
#     qemu-img's; snapshot -a/-d of a snapshot that is not there fail and
#     leave the file untouched (-c/-a/-d: test-qcow2-snapshot-write.sh);
#   - the corpus image with two snapshots reads each with the README's sha256.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

M=$((1 << 20))

# snapread IMAGE DESC SPEC...: each -l SPEC reads as qemu-img reads it
snapread() {
        local f=$1 desc=$2 spec
        shift 2
        for spec in "$@"; do
                "$QEMU_IMG" convert -l "$spec" -O raw "$f" ref.raw
                vimg convert -t unsafe -l "$spec" -O raw "$f" out.raw
                if [[ $RC -eq 0 ]]; then expect_cmp "$desc: -l $spec reads as qemu-img's" ref.raw out.raw
                else notok "$desc: -l $spec reads as qemu-img's" "$(last_err)"; fi
                rm -f ref.raw out.raw
        done
        "$QEMU_IMG" convert -O raw "$f" ref.raw
        vimg convert -t unsafe -O raw "$f" out.raw
        if [[ $RC -eq 0 ]]; then expect_cmp "$desc: the current state reads as qemu-img's" ref.raw out.raw
        else notok "$desc: the current state reads as qemu-img's" "$(last_err)"; fi
        rm -f ref.raw out.raw
}

# listing IMAGE DESC: snapshot -l, info and info --output=json as qemu-img's
listing() {
        local f=$1 desc=$2
        "$QEMU_IMG" snapshot -l "$f" >q.txt
        vimg snapshot -l "$f"
        if [[ $RC -eq 0 ]] && cmp -s q.txt "$T/out"; then ok "$desc: snapshot -l prints qemu-img's table"
        else notok "$desc: snapshot -l prints qemu-img's table" "$(diff q.txt "$T/out" | head -c 600)"; fi
        "$QEMU_IMG" info "$f" | sed -n '/^Snapshot list:/,/^Format specific/p' | grep -v '^Format specific' >q.txt
        vimg info "$f"
        sed -n '/^Snapshot list:/,/^Format specific/p' "$T/out" | grep -v '^Format specific' >v.txt || true
        if [[ $RC -eq 0 ]] && cmp -s q.txt v.txt; then ok "$desc: info prints qemu-img's snapshot table"
        else notok "$desc: info prints qemu-img's snapshot table" "$(diff q.txt v.txt | head -c 600)"; fi
        "$QEMU_IMG" info --output=json "$f" >q.json
        vimg info --output=json "$f"
        cp "$T/out" v.json
        if py json-cmp q.json v.json snapshots virtual-size >"$T/jd"; then ok "$desc: info JSON snapshots equal qemu-img's"
        else notok "$desc: info JSON snapshots equal qemu-img's" "$(head -c 600 "$T/jd")"; fi
}

qio() { "$QEMU_IO" -f qcow2 "$@" >/dev/null; }

# --- several snapshots, data of every kind in between, a resize (grow)
# build IMAGE CREATE-OPTIONS [BACKING]: four snapshots over changing data
build() {
        local f=$1 o=$2 b=${3:-} sz=$((6 * M)) hi=$((8 * M)) cs=65536
        # compressed writes are of whole clusters
        case $o in *cluster_size=512*) cs=512 ;; *cluster_size=2M*) cs=$((2 * M)) ;; esac
        if [[ -n $b ]]; then "$QEMU_IMG" create -q -f qcow2 -o "$o" -b "$b" -F raw "$f" "$sz"
        else "$QEMU_IMG" create -q -f qcow2 -o "$o" "$f" "$sz"; fi
        qio -c "write -P 0x11 0 $((2 * M))" -c "write -P 0x12 $((5 * M)) 4096" "$f"
        "$QEMU_IMG" snapshot -c first "$f"
        qio -c "write -P 0x21 $((M / 2)) $((M / 2))" -c "write -z $((M + 4096)) 65536" \
            -c "write -c -P 0x22 $((2 * M)) $cs" -c "discard $((5 * M)) 65536" "$f"
        "$QEMU_IMG" snapshot -c second "$f"
        # qemu cannot resize a v2 image with snapshots
        if [[ $o == *compat=0.10* ]]; then hi=$((5 * M + 8192)); else "$QEMU_IMG" resize -q "$f" $((9 * M)); fi
        qio -c "write -P 0x31 $hi 12345" -c "write -z 0 65536" "$f"
        "$QEMU_IMG" snapshot -c "third one" "$f"
        # (a compressed write needs a cluster never allocated: none is left with 2 MiB clusters)
        local c2=(-c "write -c -P 0x42 $((3 * M)) $cs")
        (( cs < 2 * M )) || c2=(-c "write -P 0x42 $((3 * M)) 4096")
        qio -c "write -P 0x41 $((2 * M + cs)) $((M / 2))" "${c2[@]}" "$f"
        "$QEMU_IMG" snapshot -c 4 "$f"   # a name that is another snapshot's id
        "$QEMU_IMG" snapshot -d second "$f"
        qio -c "write -P 0x51 $((5 * M + 4096)) 4096" "$f"
}

build s.qcow2 compat=1.1
snapread s.qcow2 "compat=1.1" snapshot.id=1 snapshot.id=3 snapshot.id=4 snapshot.name=first \
        "snapshot.name=third one" snapshot.id=3,snapshot.name=third\ one 1 "third one" 4
listing s.qcow2 "compat=1.1"
# the bare "4" is an id first (snapshot 4 has the name "4" too: take one
# whose id and name differ) — qemu-img's order
"$QEMU_IMG" snapshot -c 1 s.qcow2 2>/dev/null || true
snapread s.qcow2 "id before name" 1 snapshot.name=1
for o in compat=0.10 cluster_size=512 cluster_size=2M extended_l2=on,cluster_size=64k compression_type=zstd; do
        build "o.qcow2" "$o"
        snapread o.qcow2 "$o" snapshot.id=1 snapshot.id=3 snapshot.name=4
        listing o.qcow2 "$o"
        rm -f o.qcow2
done
# over a backing file: a snapshot reads through to the current backing file
mkpattern base.raw $((6 * M))
build c.qcow2 compat=1.1 base.raw
snapread c.qcow2 "over a backing file" snapshot.id=1 snapshot.id=3

# --- errors
expect_fail "a snapshot that is not there" "$VDISK_IMG" convert -l snapshot.id=99 -O raw s.qcow2 x.raw
if grep -q "Failed to load snapshot" "$T/err"; then ok "... is reported as qemu-img does"
else notok "... is reported as qemu-img does" "$(last_err)"; fi
expect_fail "no id 1 named 'first' and 'third one' at once" "$VDISK_IMG" convert \
        -l "snapshot.id=1,snapshot.name=third one" -O raw s.qcow2 x.raw
expect_fail "a bad -l parameter" "$VDISK_IMG" convert -l snapshot.foo=1 -O raw s.qcow2 x.raw
expect_fail "an empty snapshot.id" "$VDISK_IMG" convert -l snapshot.id= -O raw s.qcow2 x.raw
expect_fail "-l on a format without snapshots" "$VDISK_IMG" convert -l 1 -f raw -O raw base.raw x.raw
[[ -e x.raw ]] && notok "no output file is left behind" "x.raw exists" || ok "no output file is left behind"
sum=$(sha256sum s.qcow2)
for a in "-a nosuch" "-d nosuch"; do
        # shellcheck disable=SC2086
        expect_fail "snapshot $a (not there) fails" "$VDISK_IMG" snapshot $a s.qcow2
done
expect_eq "... and the file is untouched" "$(sha256sum s.qcow2)" "$sum"
expect_fail "snapshot -l -c cannot be mixed" "$VDISK_IMG" snapshot -l -c x s.qcow2
"$QEMU_IMG" create -q -f qcow2 none.qcow2 1M
expect_rc "snapshot -l of an image without snapshots" 0 "$VDISK_IMG" snapshot -l none.qcow2
expect_eq "... prints nothing (as qemu-img)" "$(cat "$T/out")" ""

# --- the corpus image with two snapshots
CORPUS=${VDISK_CORPUS:-$HERE/../../../shared/corpus/real}
D=$CORPUS/dissect-hypervisor/qcow2
if [[ -f $D/snapshot.qcow2.xz ]] && command -v xz >/dev/null; then
        xz -dc "$D/snapshot.qcow2.xz" >corpus.qcow2
        for p in "1 dcaa5c00cf9dd477e4f866cc492007d28800938c634db39710f6634afef69aee" \
                 "2 0b3429b0a152c45d87f4e1068b9030c47490da4f29089bf8152d526944e771a7"; do
                vimg convert -l "snapshot.id=${p%% *}" -O raw corpus.qcow2 out.raw
                if [[ $RC -ne 0 ]]; then notok "corpus snapshot ${p%% *}: reads" "$(last_err)"
                else expect_eq "corpus snapshot ${p%% *}: sha256 of the content" \
                        "$(sha256sum out.raw | cut -d' ' -f1)" "${p#* }"; fi
                rm -f out.raw
        done
        vimg convert -l "you can't see me" -O raw corpus.qcow2 out.raw
        expect_eq "corpus snapshot by its name" "$(sha256sum out.raw | cut -d' ' -f1)" \
                dcaa5c00cf9dd477e4f866cc492007d28800938c634db39710f6634afef69aee
        listing corpus.qcow2 "corpus snapshot.qcow2"
        rm -f corpus.qcow2 out.raw
else
        echo "# corpus snapshot.qcow2 not found: skipped"
fi

finish
