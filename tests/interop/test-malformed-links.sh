#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Hostile images that need a whole file (or several) to build, checked end to
# end through vdisk-img: every case must be refused with exit status 1 and a
# message naming the file, within a minute (no hang), and under the ASan+UBSan
# build with no report (this test is in the malformed suite too, which CI runs
# under the sanitizers; an ASan report aborts, which is not exit 1).
#
# - streamOptimized VMDK grains that lie: a size past the end of the file, a
#   size of 4 GiB, a size cut in half, garbage instead of deflate data, a
#   stream that inflates to more than a grain (a small decompression bomb) or
#   to less, and a grain marker that is really a metadata marker;
# - parent loops: a VMDK diff and a VHD diff that name themselves as parent,
#   and two diffs that name each other.
source "$(dirname "$0")/lib.sh" "$@"

# refused DESC FILE CMD...: exit 1 (vdisk-img's error status, never a signal,
# an ASan abort or the timeout's 124) and stderr naming FILE
refused() {
        local desc=$1 file=$2; shift 2
        run timeout 60 "$@"
        if [[ $RC -eq 1 ]] && grep -q -- "$file" "$T/err"; then ok "$desc"
        else notok "$desc" "exit $RC, want 1 with a message naming $file" "stderr: $(last_err)"; fi
}

# --- streamOptimized grains that lie
mkpattern pat.raw 4M
vimg convert -O vmdk -o subformat=streamOptimized pat.raw so.vmdk
expect_eq "vdisk-img makes a streamOptimized image" "$RC" 0
vimg convert -O raw so.vmdk so.raw
expect_cmp "the pristine image reads back" pat.raw so.raw

# so-patch IN OUT KIND: edits the first compressed grain of IN (found through
# the footer's grain directory) and writes OUT
cat >"$T/so-patch.py" <<'EOF'
import struct, sys, zlib
src, dst, kind = sys.argv[1:4]
b = bytearray(open(src, 'rb').read())
footer = b[-1024:-512]
assert footer[:4] == b'KDMV', 'no footer'
grain, gtes, gd = struct.unpack_from('<Q', footer, 20)[0], struct.unpack_from('<I', footer, 44)[0], \
    struct.unpack_from('<Q', footer, 56)[0]
first = None
for gde in struct.unpack_from('<%dI' % 4, b, gd * 512):
    if gde:
        for gte in struct.unpack_from('<%dI' % gtes, b, gde * 512):
            if gte > 1:
                first = gte * 512
                break
    if first:
        break
assert first, 'no allocated grain'
size = struct.unpack_from('<I', b, first + 8)[0]
assert 0 < size < grain * 512 * 2, size
if kind == 'past-eof':
    struct.pack_into('<I', b, first + 8, len(b) - first)
elif kind == 'huge':
    struct.pack_into('<I', b, first + 8, 0xffffffff)
elif kind == 'half':
    struct.pack_into('<I', b, first + 8, size // 2)
elif kind == 'garbage':
    b[first + 12:first + 12 + size] = b'\xff' * size
elif kind in ('bomb', 'short'):
    data = zlib.compress(bytes(grain * 512 * 4 if kind == 'bomb' else grain * 512 // 2), 9)
    assert len(data) <= size, (len(data), size)
    b[first + 12:first + 12 + len(data)] = data
    struct.pack_into('<I', b, first + 8, len(data))
elif kind == 'marker':
    struct.pack_into('<IIII', b, first + 8, 0, 1, 0, 0)
else:
    sys.exit('unknown kind ' + kind)
open(dst, 'wb').write(b)
EOF
for kind in past-eof huge half garbage bomb short marker; do
        "$PY" "$T/so-patch.py" so.vmdk "so-$kind.vmdk" "$kind"
        refused "streamOptimized grain: $kind" "so-$kind.vmdk" "$VDISK_IMG" convert -O raw "so-$kind.vmdk" out.raw
done
run timeout 60 "$VDISK_IMG" compare -f raw -F vmdk pat.raw so-bomb.vmdk
if [[ $RC -eq 4 ]] && grep -q so-bomb.vmdk "$T/err"; then ok "compare: the lying grain is a read error (exit 4, as qemu-img)"
else notok "compare: the lying grain is a read error (exit 4, as qemu-img)" "exit $RC" "stderr: $(last_err)"; fi

# --- parent loops. Names of one length, so that the links are edited in place.
# relink FMT CHILD NEWPARENT: CHILD's link (name, UUID/CID) now names NEWPARENT
cat >"$T/relink.py" <<'EOF'
import re, struct, sys
fmt, child, parent, old = sys.argv[1:5]
b = bytearray(open(child, 'rb').read())
p = open(parent, 'rb').read()

def swap(buf, a, c):
    i = buf.find(a)
    assert i >= 0, (a, child)
    buf[i:i + len(a)] = c

def vhd_sum(h):
    return (~sum(h) & 0xffffffff)

if fmt == 'vpc':
    foot = p[-512:]
    uid = foot[68:84]
    dyn = struct.unpack_from('>Q', b, 16)[0]
    h = b[dyn:dyn + 1024]
    h[40:56] = uid
    swap(h, old.encode('utf-16-be'), parent.encode('utf-16-be'))
    for loc in range(8):
        e = 576 + loc * 24
        code, space, length, _, off = struct.unpack_from('>4sIII Q', h, e)
        if code in (b'W2ru', b'W2ku'):
            swap(b, old.encode('utf-16-le'), parent.encode('utf-16-le'))
    struct.pack_into('>I', h, 36, 0)
    struct.pack_into('>I', h, 36, vhd_sum(h))
    b[dyn:dyn + 1024] = h
else:
    text = p[512:512 * 21].split(b'\0')[0].decode()
    cid = re.search(r'^CID=([0-9a-fA-F]+)', text, re.M).group(1).encode()
    d = b[512:512 * 21]
    swap(d, ('"%s"' % old).encode(), ('"%s"' % parent).encode())
    m = re.search(rb'parentCID=([0-9a-fA-F]+)', d)
    assert len(m.group(1)) == len(cid), (m.group(1), cid)
    d[m.start(1):m.end(1)] = cid
    m = re.search(rb'ddb\.uuid\.image="([^"]+)"', p[512:512 * 21])
    n = re.search(rb'ddb\.uuid\.parent="([^"]+)"', d)
    if m and n:
        assert len(m.group(1)) == len(n.group(1))
        d[n.start(1):n.end(1)] = m.group(1)
    b[512:512 * 21] = d
open(child, 'wb').write(b)
EOF
for f in vpc vmdk; do
        e=$([[ $f == vpc ]] && echo vhd || echo vmdk)
        vimg create -f $f "b1.$e" 4M
        vimg create -f $f -b "b1.$e" -F $f "d1.$e"
        vimg create -f $f -b "d1.$e" -F $f "d2.$e"
        vimg convert -O raw "d2.$e" chain.raw
        expect_eq "$f: the chain b1 <- d1 <- d2 reads (exit $RC)" "$RC" 0
        # alone in its directory, so that no other file carries its UUID
        mkdir "self-$f"
        cp "d1.$e" "self-$f/s1.$e"      # a name as long as b1/d1/d2
        (cd "self-$f" && "$PY" "$T/relink.py" $f "s1.$e" "s1.$e" "b1.$e")
        refused "$f: a diff whose parent is itself" "s1.$e" "$VDISK_IMG" info --backing-chain "self-$f/s1.$e"
        refused "$f: a diff whose parent is itself (convert)" "s1.$e" \
                "$VDISK_IMG" convert -O raw "self-$f/s1.$e" out.raw
        "$PY" "$T/relink.py" $f "d1.$e" "d2.$e" "b1.$e"
        refused "$f: two diffs that name each other" ".$e" "$VDISK_IMG" convert -O raw "d2.$e" out.raw
        refused "$f: two diffs that name each other (info)" ".$e" "$VDISK_IMG" info --backing-chain "d1.$e"
done
finish
