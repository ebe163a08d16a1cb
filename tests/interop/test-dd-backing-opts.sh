#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Issue 13's missing commands and options, against qemu-img 7.2:
#   - dd: the same output (content and virtual size) and the same messages,
#     for several operand sets and output formats;
#   - convert -B / -o backing_file: the output reads as the source, passes
#     qemu-img check, and holds only the clusters that differ from the backing
#     file, for every format with differencing images;
#   - snapshot -c/-a/-d and bitmap on formats without them: qemu-img's texts
#     and exit codes;
#   - --image-opts and --object: accepted where qemu-img accepts them, refused
#     with qemu-img's texts where it refuses.

source "$(dirname "$0")/lib.sh" "$@"

mkpattern src.raw 40M 1
mkpattern dd.raw 4M 2

# same_run DESC ARGS...: both tools, exit codes and stderr (program name and
# qemu's internal node names normalized) equal.
same_run() {
        local desc=$1; shift
        local qrc=0 vrc=0
        "$QEMU_IMG" "$@" >q.out 2>q.err || qrc=$?
        "$VDISK_IMG" "$@" >v.out 2>v.err || vrc=$?
        # qemu-img says "Could not open 'f': Could not open 'f': ..." (vdisk-img once)
        sed -i -e 's/^qemu-img: //' -e 's/#block[0-9]*/NODE/' -e "s/^\(Could not open '[^']*': \)\1/\1/" q.err
        sed -i -e 's/^vdisk-img: //' -e 's/to [^ ]*: Operation not supported/to NODE: Operation not supported/' \
            -e 's/vdisk-img/qemu-img/g' v.err
        if [[ $qrc == "$vrc" ]] && diff q.err v.err >/dev/null && diff q.out v.out >/dev/null; then
                ok "$desc: exit $vrc, same messages"
        else
                notok "$desc" "exit $vrc, qemu-img $qrc" "stderr: $(tr '\n' '|' <v.err)" "qemu-img: $(tr '\n' '|' <q.err)" \
                      "stdout: $(tr '\n' '|' <v.out | head -c 200)" "qemu-img: $(tr '\n' '|' <q.out | head -c 200)"
        fi
}

vsize() { "$QEMU_IMG" info -f "$2" --output=json "$1" | py json-get - virtual-size; }

# ---------------------------------------------------------------- dd
for ops in "bs=64k" "bs=64k count=3 skip=1" "bs=1000 count=5" "bs=1M skip=2" "bs=1000 skip=3001" \
           "skip=100000" "count=0"; do
        for fmt in raw vdi qcow2; do
                [[ $fmt != raw && ( $ops == skip=100000 || $ops == count=0 ) ]] && continue   # no size-0 images
                rm -f q.$fmt v.$fmt
                # shellcheck disable=SC2086
                qrc=0; "$QEMU_IMG" dd -O $fmt $ops if=dd.raw of=q.$fmt 2>q.err || qrc=$?
                # shellcheck disable=SC2086
                vrc=0; "$VDISK_IMG" dd -O $fmt $ops if=dd.raw of=v.$fmt 2>v.err || vrc=$?
                expect_eq "dd -O $fmt $ops: exit code" "$vrc" "$qrc"
                expect_eq "dd -O $fmt $ops: stderr" "$(sed 's/^vdisk-img: //' v.err)" "$(sed 's/^qemu-img: //' q.err)"
                expect_eq "dd -O $fmt $ops: virtual size" "$(vsize v.$fmt $fmt)" "$(vsize q.$fmt $fmt)"
                qcompare q.$fmt $fmt v.$fmt $fmt
        done
done
same_run "dd unknown operand" dd foo=1 if=src.raw of=x.raw
same_run "dd operand without =" dd if=src.raw of=x.raw bs
same_run "dd empty operand name" dd =1 if=src.raw of=x.raw
same_run "dd bs=0" dd bs=0 if=src.raw of=x.raw
same_run "dd bs too large" dd bs=3G if=src.raw of=x.raw
same_run "dd bad bs" dd bs=1x if=src.raw of=x.raw
same_run "dd bad count" dd count=-1 if=src.raw of=x.raw
same_run "dd bad skip" dd skip=x if=src.raw of=x.raw
same_run "dd without of=" dd if=src.raw
same_run "dd without if=" dd of=x.raw
same_run "dd missing input" dd if=nonexistent.raw of=x.raw
same_run "dd into a missing directory" dd -O vdi if=src.raw of=nodir/x.vdi
expect_fail "dd -o is no dd option" "$VDISK_IMG" dd -O vdi -o static=on if=src.raw of=x.vdi
sum=$(md5sum <src.raw)
expect_fail "dd onto its own input is refused" "$VDISK_IMG" dd if=src.raw of=src.raw
expect_eq "the input is untouched" "$(md5sum <src.raw)" "$sum"

# ---------------------------------------------------------------- convert -B
# mod.raw: src.raw with one changed byte and one zeroed MiB: only those
# clusters may land in the diff.
cp src.raw mod.raw
printf 'X' | dd of=mod.raw bs=1 seek=$((12 * 1048576 + 700)) conv=notrunc status=none
dd if=/dev/zero of=mod.raw bs=1M seek=8 count=1 conv=notrunc status=none
for fmt in qcow2 qed vmdk vdi vpc qcow; do
        rm -f base.$fmt diff.$fmt
        run "$VDISK_IMG" convert -O $fmt src.raw base.$fmt
        expect_eq "convert -O $fmt: base made" "$RC" 0
        expect_rc "convert -O $fmt -B base.$fmt -F $fmt" 0 "$VDISK_IMG" convert -O $fmt -B base.$fmt -F $fmt mod.raw diff.$fmt
        expect_rc "the $fmt diff reads as the source" 0 "$VDISK_IMG" compare -f $fmt -F raw diff.$fmt mod.raw
        case $fmt in
        qcow2|qed|vmdk|qcow)
                qcompare diff.$fmt $fmt mod.raw raw
                [[ $fmt == qcow ]] || qcheck diff.$fmt $fmt ;;
        esac
        # The diff's own data: at most the two changed blocks of its format
        # (VHD: 2 MiB blocks), never the whole 8 MiB of pattern data.
        run "$VDISK_IMG" map -f $fmt --output=json diff.$fmt
        own=$("$PY" -c 'import json,sys; print(sum(e["length"] for e in json.load(open(sys.argv[1])) if e.get("depth") == 0 and e.get("data")))' out)
        expect_true "the $fmt diff holds only changed clusters ($own bytes of data)" test "$own" -le $((4 * 1048576))
done
# qemu-img 7.2's rules
same_run "convert -B without -F" convert -O qcow2 -B base.qcow2 mod.raw x.qcow2
same_run "convert -B into raw" convert -O raw -B base.qcow2 -F qcow2 mod.raw x.raw
same_run "convert -n with -o" convert -n -O qcow2 -o compat=1.1 mod.raw base.qcow2
rm -f b.qcow2 c.qcow2
expect_rc "convert -B and -o backing_file: -B wins" 0 "$VDISK_IMG" convert -O qcow2 -B base.qcow2 -F qcow2 -o backing_file=nonexistent mod.raw b.qcow2
expect_eq "the backing file is -B's" "$(qinfo b.qcow2 qcow2 backing-filename)" base.qcow2
expect_rc "convert -o backing_file=,backing_fmt=" 0 "$VDISK_IMG" convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 mod.raw c.qcow2
qcompare c.qcow2 qcow2 mod.raw raw
qcheck c.qcow2 qcow2

# ---------------------------------------------------------------- snapshot and bitmap refusals
for fmt in vdi vmdk vpc; do
        "$QEMU_IMG" create -q -f $fmt x.$fmt 1M
        same_run "snapshot -c on $fmt" snapshot -c s1 x.$fmt
        same_run "snapshot -a on $fmt" snapshot -a s1 x.$fmt
        same_run "snapshot -d on $fmt" snapshot -d s1 x.$fmt
        same_run "snapshot -l on $fmt" snapshot -l x.$fmt
done
"$QEMU_IMG" create -q -f raw x.raw 1M
for op in --add --remove --clear --enable --disable "--merge b1" "--add -g 3" "--add -g 64k --disable"; do
        for fmt in raw vdi; do
                # shellcheck disable=SC2086
                same_run "bitmap $op on $fmt" bitmap $op -f $fmt x.$fmt b0
        done
done
same_run "bitmap without an operation" bitmap -f raw x.raw b0
same_run "bitmap without a bitmap name" bitmap --add -f raw x.raw
same_run "bitmap -g without --add" bitmap --remove -g 64k -f raw x.raw b0
same_run "bitmap -b without --merge" bitmap --add -b x.vdi -f raw x.raw b0
same_run "bitmap -F without -b" bitmap --merge b1 -F raw -f raw x.raw b0
same_run "bitmap on a missing file" bitmap --add -f raw nonexistent.raw b0
expect_eq "refusals leave the image alone" "$(md5sum <x.raw)" "$(md5sum < <(head -c 1M /dev/zero))"

# ---------------------------------------------------------------- --image-opts, --object
"$QEMU_IMG" convert -f raw -O qcow2 src.raw src.qcow2
for spec in driver=qcow2,file.filename=src.qcow2 file.filename=src.qcow2 driver=raw,file.driver=file,file.filename=src.raw \
            driver=file,filename=src.raw driver=raw,file.filename=src.raw,read-only=on; do
        run "$VDISK_IMG" info --output=json --image-opts "$spec"
        cp out v.json
        run "$QEMU_IMG" info --output=json --image-opts "$spec"
        cp out q.json
        # driver=file: qemu-img names the protocol driver as the format
        # ("file"); vdisk-img reads the file as raw and says so.
        if [[ $spec == driver=file,* ]]; then
                run py json-cmp q.json v.json virtual-size actual-size
        else
                run py json-cmp q.json v.json format virtual-size actual-size
        fi
        expect_eq "info --image-opts $spec" "$RC" 0
done
same_run "--image-opts with an unknown key" info --image-opts driver=raw,file.filename=src.raw,bogus=1
same_run "--image-opts with an unknown file key" info --image-opts driver=raw,file.filename=src.raw,file.bogus=1
same_run "--image-opts with an unknown driver" info --image-opts driver=foo,file.filename=src.raw
same_run "--image-opts without a file" info --image-opts driver=raw
same_run "--image-opts with a bare name" info --image-opts src.raw
same_run "--image-opts with -f" info --image-opts -f raw driver=raw,file.filename=src.raw
same_run "compare --image-opts" compare --image-opts driver=raw,file.filename=src.raw driver=qcow2,file.filename=src.qcow2
same_run "map --image-opts" map --output=json --image-opts driver=qcow2,file.filename=src.qcow2
same_run "check --image-opts" check --image-opts driver=qcow2,file.filename=src.qcow2
same_run "measure --image-opts" measure -O qcow2 --image-opts driver=qcow2,file.filename=src.qcow2
same_run "create refuses --image-opts" create --image-opts -f raw x2.raw 1M
rm -f io.raw
expect_rc "convert --image-opts" 0 "$VDISK_IMG" convert --image-opts driver=qcow2,file.filename=src.qcow2 -O raw io.raw
qcompare io.raw raw src.raw raw
expect_fail "--image-opts names no other protocol" "$VDISK_IMG" info --image-opts driver=raw,file.driver=nbd,file.host=localhost
expect_fail "--image-opts takes no encryption key" "$VDISK_IMG" info --image-opts driver=qcow2,file.filename=src.qcow2,encrypt.key-secret=s0

echo secret >secret.txt
same_run "--object secret (data)" info -f raw --object secret,id=sec0,data=abc x.raw
same_run "--object secret (file, base64)" info -f raw --object secret,id=sec0,file=secret.txt,format=base64 x.raw
same_run "--object qom-type=secret" info -f raw --object qom-type=secret,id=sec0,data=abc x.raw
same_run "--object throttle-group" info -f raw --object throttle-group,id=t0 x.raw
same_run "--object without an id" info -f raw --object secret,data=abc x.raw
same_run "--object without data" info -f raw --object secret,id=s0 x.raw
same_run "--object with data and file" info -f raw --object secret,id=s0,data=x,file=secret.txt x.raw
same_run "--object with an unknown key" info -f raw --object secret,id=s0,data=abc,bogus=1 x.raw
same_run "--object with a bad format" info -f raw --object secret,id=s0,data=abc,format=hex x.raw
same_run "--object with a missing keyid" info -f raw --object secret,id=s0,data=abc,keyid=k x.raw
same_run "--object with a bad id" info -f raw --object secret,id=0s,data=abc x.raw
same_run "--object twice" info -f raw --object secret,id=s0,data=x --object secret,id=s0,data=y x.raw
same_run "--object of an unknown type" info -f raw --object foo,id=x x.raw
same_run "--object without a type" info -f raw --object id=s0,data=x x.raw
expect_fail "--object of a type vdisk-img cannot use" "$VDISK_IMG" info -f raw --object secret_keyring,id=s0,serial=1 x.raw
expect_fail "--object with a secret file that is not there" "$VDISK_IMG" info -f raw --object secret,id=s0,file=nonexistent x.raw

finish
