#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# VMDK extent kinds and links beyond the hosted sparse/flat ones:
#   - seSparse: the real extent of ../shared/corpus/real (dissect-hypervisor,
#     skipped when the corpus is absent; never copied into the tree) reads
#     512 MiB with the README's sha256 through a descriptor written here,
#     as qemu-img reads it; the bare extent probes as raw (as qemu's does);
#     a writable open is refused with a message; a vdisk-made diff on top of
#     the seSparse image reads the same through vdisk-img and qemu-img.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh" "$@"

CORPUS=${VDISK_CORPUS:-$(cd "$HERE/../../.." && pwd)/shared/corpus/real}

# --- seSparse (read-only, through a descriptor)
SE=dissect-hypervisor/vmdk/sesparse.vmdk.xz
SE_SHA=3afa48010241335528fe402f083fc9f3a1013a49485221443a78d9a8604e2f90
if [[ -f $CORPUS/$SE ]] && command -v xz >/dev/null; then
        xz -dc "$CORPUS/$SE" > sesparse.vmdk
        vimg info --output=json sesparse.vmdk
        expect_eq "the bare seSparse extent probes as raw" "$(py json-get "$T/out" format)" raw
        cat > se.vmdk <<'DESC'
# Disk DescriptorFile
version=1
CID=5e5e5e5e
parentCID=ffffffff
createType="seSparse"

# Extent description
RW 1048576 SESPARSE "sesparse.vmdk"

# The Disk Data Base
ddb.virtualHWVersion = "14"
ddb.uuid.image = "6b2455a8-c318-4d21-9a0b-5e5e5e5e5e5e"
DESC
        vimg info --output=json se.vmdk
        expect_eq "seSparse through a descriptor: virtual size" "$(py json-get "$T/out" virtual-size)" 536870912
        expect_eq "seSparse: cluster size 4 KiB" "$(py json-get "$T/out" cluster-size)" 4096
        vimg convert -O raw se.vmdk se.raw
        if [[ $RC -eq 0 ]]; then
                expect_eq "seSparse reads with the README's sha256" "$(sha256sum se.raw | cut -c1-64)" "$SE_SHA"
        else
                notok "seSparse converts to raw" "$(last_err)"
        fi
        qcompare se.vmdk vmdk se.raw raw
        expect_rc "seSparse check is clean" 0 "$VDISK_IMG" check se.vmdk
        expect_fail "seSparse: a writable open is refused" "$VDISK_IMG" resize se.vmdk +1M
        expect_true "the message says read-only" grep -q "read-only" "$T/err"
        expect_cmp "the refused open changed nothing" sesparse.vmdk <(xz -dc "$CORPUS/$SE")
        # A diff over the seSparse image: vdisk-img and qemu-img read it alike.
        vimg create -f vmdk -b se.vmdk -F vmdk top.vmdk
        if [[ $RC -eq 0 ]]; then
                expect_rc "qemu-io writes into the diff" 0 "$QEMU_IO" -f vmdk -c "write -P 0x33 1M 64k" \
                        -c "write -P 0x44 600k 8k" top.vmdk
                vimg convert -O raw top.vmdk top.raw
                qcompare top.vmdk vmdk top.raw raw
                expect_true "the diff over seSparse keeps the base's data" \
                        cmp -s <(head -c 512k top.raw) <(head -c 512k se.raw)
                rm -f top.raw
        else
                notok "a diff over a seSparse image" "$(last_err)"
        fi
        rm -f se.raw sesparse.vmdk
else
        echo "# $CORPUS/$SE absent: seSparse corpus test skipped"
fi

finish
