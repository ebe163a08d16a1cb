#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The shared verbs' one command-line front end (tools/shared/front.c): both
# tools refuse the same bad command lines, each in its own words and exit
# codes (vdisk-img qemu-img's; vdiskctl names the verb and exits 2, check and
# repair 1), and vdiskctl does so before it looks for vdiskd.
# Needs neither qemu-img nor a bus: runs everywhere.
#   test-front.sh VDISK_IMG VDISKCTL

set -uo pipefail

IMG=$(realpath "$1") CTL=$(realpath "$2")
TMP=$(mktemp -d /tmp/vdisk-test-front.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP" || exit 1
# no vdiskd there: only the parser can answer
export VDISKCTL_ADDRESS=unix:path=$TMP/no-such-bus

passed=0 failed=0
# t NAME EXPECTED_EXIT EXPECTED_STDERR_LINE TOOL ARGS...
t() {
        local name=$1 want_rc=$2 want_err=$3 rc
        shift 3
        "$@" >out 2>err
        rc=$?
        if [[ $rc == "$want_rc" ]] && grep -qxF -- "$want_err" err; then
                echo "ok - $name"
                passed=$((passed + 1))
        else
                echo "not ok - $name: exit $rc (want $want_rc); stderr:"
                sed 's/^/#   /' err
                failed=$((failed + 1))
        fi
}

t "img info: no file" 1 "vdisk-img: Expecting one image file name" "$IMG" info
t "img info: two files" 1 "vdisk-img: Expecting one image file name" "$IMG" info a b
t "img info: bad --output" 1 "vdisk-img: --output must be used with human or json as argument." \
        "$IMG" info --output=xml a
t "img check: bad -r" 1 "vdisk-img: Unknown option value for -r (expecting 'leaks' or 'all'): x" \
        "$IMG" check -r x a
t "img check: bad -T" 1 "vdisk-img: Invalid source cache option: x" "$IMG" check -T x a
t "img commit: bad -t" 1 "vdisk-img: Invalid cache option: x" "$IMG" commit -t x a
t "img compact: --filename and a file" 1 "vdisk-img: Expecting one image file name" \
        "$IMG" compact --filename a b
t "img resize: no size" 1 "vdisk-img: Expecting image file name and size" "$IMG" resize a
t "img resize: -1k is a size, not an option" 1 "vdisk-img: Could not open 'a': No such file or directory" \
        "$IMG" resize -f raw a -1k
t "img resize: bad --preallocation" 1 "vdisk-img: Invalid preallocation mode 'x'" \
        "$IMG" resize --preallocation=x a 1M
t "img create: no file" 1 "vdisk-img: Expecting image file name" "$IMG" create -f raw
t "img create: three arguments" 1 "vdisk-img: Unexpected argument: c" "$IMG" create a 1M c
t "img create: backing file twice" 1 "vdisk-img: a: The backing file must be given only once" \
        "$IMG" create -f qcow2 -b x -F raw -o backing_file=y a 1M
t "img create: size twice" 1 "vdisk-img: a: The image size must be specified only once" \
        "$IMG" create -o size=1M a 1M
t "img create: bad size" 1 "vdisk-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes." \
        "$IMG" create a 1Q
t "img convert: one file" 1 "vdisk-img: Expecting a source and a destination file name" "$IMG" convert a
t "img convert: three files" 1 "vdisk-img: Concatenating several source images is not supported" \
        "$IMG" convert a b c
t "img convert: -C" 1 "vdisk-img: Copy offloading (-C) is not supported" "$IMG" convert -C a b
t "img convert: --salvage" 1 "vdisk-img: Option '--salvage' is not supported" "$IMG" convert --salvage a b
t "img convert: bad -S" 1 \
        "vdisk-img: Invalid sparse size '7': use a multiple of 512 up to 16 MiB, or 0 to allocate the whole output" \
        "$IMG" convert -S 7 a b
t "img convert: bad -o list" 1 "vdisk-img: Invalid option list: a=b,,,=" "$IMG" convert -o a=b,,,= a b
t "img info: unknown option" 1 "Try 'vdisk-img --help' for more information" "$IMG" info -Z a
# create -o help answers before the file names are checked
"$IMG" create -f qcow2 -o help >out 2>err
if [[ $? == 0 ]] && grep -q "^Supported qcow2 options:" out; then
        echo "ok - img create -o help without a file"; passed=$((passed + 1))
else
        echo "not ok - img create -o help without a file"; failed=$((failed + 1))
fi

t "ctl info: no file" 2 "vdiskctl: info needs one image file name" "$CTL" info
t "ctl info: bad --output" 2 "vdiskctl: --output takes 'human' or 'json', not 'xml'" "$CTL" info --output=xml a
t "ctl check: bad -r exits 1" 1 "vdiskctl: Unknown option value for -r (expecting 'leaks' or 'all'): x" \
        "$CTL" check -r x a
t "ctl repair: no file exits 1" 1 "vdiskctl: repair needs one image file name" "$CTL" repair
t "ctl check: unknown option exits 1" 1 "Try 'vdiskctl --help' for more information." "$CTL" check -Z a
t "ctl commit: two files" 2 "vdiskctl: commit needs one image file name" "$CTL" commit a b
t "ctl compact: bad --image" 2 "vdiskctl: --image takes an image index (0 is the base): x" \
        "$CTL" compact --image x a
t "ctl resize: no size" 2 "vdiskctl: resize needs an image file name and a size" "$CTL" resize a
t "ctl create: -u" 2 "vdiskctl: -u (unsafe) is not supported by vdiskctl: vdiskd opens the whole backing chain" \
        "$CTL" create -u a 1M
t "ctl copy: one file" 2 "vdiskctl: convert needs a source and a destination file name" "$CTL" copy a
t "ctl convert: --target-is-zero without -n" 2 "vdiskctl: --target-is-zero requires -n" \
        "$CTL" convert --target-is-zero a b
t "ctl convert: -B without -n" 2 "vdiskctl: -B requires -n: vdiskctl creates no output with a backing file" \
        "$CTL" convert -B x a b
t "ctl compare: bad -T" 2 "vdiskctl: Invalid source cache option: x" "$CTL" compare -T x a b
t "ctl snapshot: -l and -d" 2 "vdiskctl: Cannot mix '-l', '-a', '-c', '-d'" "$CTL" snapshot -l -d x a
t "ctl snapshot: no file" 2 "vdiskctl: snapshot needs one image file name" "$CTL" snapshot -l
t "ctl compare: one file" 2 "vdiskctl: compare needs two image file names" "$CTL" compare a
t "ctl compare: -f without a value" 2 "Try 'vdiskctl --help' for more information." "$CTL" compare a b -f
t "ctl convert: -S 0" 2 \
        "vdiskctl: -S 0 (allocating the whole output) is not available through vdiskd; use vdisk-img convert -S 0" \
        "$CTL" convert -S 0 a b
t "ctl convert: bad -S" 2 "vdiskctl: Invalid sparse size '7': use a multiple of 512 up to 16 MiB" \
        "$CTL" convert -S 7 a b
# a good command line gets as far as the bus
t "ctl info: a good command line reaches the bus" 69 \
        "vdiskctl: Could not connect to the bus at $VDISKCTL_ADDRESS: No such file or directory" "$CTL" info -q a
t "ctl convert -n: a good command line reaches the bus" 69 \
        "vdiskctl: Could not connect to the bus at $VDISKCTL_ADDRESS: No such file or directory" \
        "$CTL" convert -n --target-is-zero -O vdi a b
t "ctl convert -c -n -B: a good command line reaches the bus" 69 \
        "vdiskctl: Could not connect to the bus at $VDISKCTL_ADDRESS: No such file or directory" \
        "$CTL" convert -c -n -B x -O qcow2 a b
t "ctl snapshot: a good command line reaches the bus" 69 \
        "vdiskctl: Could not connect to the bus at $VDISKCTL_ADDRESS: No such file or directory" \
        "$CTL" snapshot -c x -f qcow2 a
t "ctl compare: a good command line reaches the bus" 69 \
        "vdiskctl: Could not connect to the bus at $VDISKCTL_ADDRESS: No such file or directory" "$CTL" compare -s a b
# merge parses through the front too (it used to parse after connecting)
t "ctl merge: no file" 2 "vdiskctl: merge needs an image file name" "$CTL" merge
t "ctl merge: one index" 2 "vdiskctl: merge needs the images to merge: --from N --to M (0 is the base)" \
        "$CTL" merge a 1
t "ctl merge: --from and two more" 2 "vdiskctl: Unexpected argument: 3" "$CTL" merge --from 1 a 2 3
t "ctl merge: not a number" 2 "vdiskctl: Image indexes are numbers (0 is the base): 'x', '2'" "$CTL" merge a x 2
t "ctl merge: the same image" 2 "vdiskctl: --from and --to name the same image" "$CTL" merge --to 1 --from 1 a
t "ctl merge: no --output" 2 "Try 'vdiskctl --help' for more information." "$CTL" merge --output=json a 1 2
t "ctl merge: a good command line reaches the bus" 69 \
        "vdiskctl: Could not connect to the bus at $VDISKCTL_ADDRESS: No such file or directory" \
        "$CTL" merge -p -q -f vdi --fr 1 --t 0 a
t "ctl merge: FILE N M reaches the bus" 69 \
        "vdiskctl: Could not connect to the bus at $VDISKCTL_ADDRESS: No such file or directory" "$CTL" merge a 1 0

echo "# test-front: $passed passed, $failed failed"
[[ $failed == 0 ]]
