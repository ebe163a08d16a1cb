#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Reads the persistent bitmaps of a qcow2 file on its own (standard library
# only; an oracle independent of lib/backends/qcow2-bitmap.c), for
# test-qcow2-bitmaps.sh:
#
#   dump FILE     one line per bitmap: NAME gran=G flags=F ranges=A-B,C-D...
#                 (byte ranges of the disk whose bits are set, merged)
#   patch FILE NAME FIELD VALUE
#                 sets a directory entry field in place (flags, table_size,
#                 table_offset, gran_bits, type) to break an image on purpose
import struct
import sys


def header(f):
    f.seek(0)
    h = f.read(104)
    magic, version = struct.unpack('>II', h[:8])
    assert magic == 0x514649fb, 'not qcow2'
    cluster_bits = struct.unpack('>I', h[20:24])[0]
    size = struct.unpack('>Q', h[24:32])[0]
    autoclear = struct.unpack('>Q', h[88:96])[0] if version >= 3 else 0
    hlen = struct.unpack('>I', h[100:104])[0] if version >= 3 else 72
    boff, bsize = struct.unpack('>QI', h[8:20])
    cs = 1 << cluster_bits
    f.seek(0)
    buf = f.read(cs)
    end = boff if boff and bsize and boff < cs else cs
    off, ext = hlen, None
    while off + 8 <= end:
        t, ln = struct.unpack('>II', buf[off:off + 8])
        if t == 0:
            break
        if t == 0x23852875:
            ext = struct.unpack('>IIQQ', buf[off + 8:off + 32])
        off += 8 + ((ln + 7) & ~7)
    return cs, size, autoclear, ext


def entries(f):
    cs, size, autoclear, ext = header(f)
    if ext is None or not autoclear & 1:
        return cs, size, []
    nb, _, dsize, doff = ext
    f.seek(doff)
    d = f.read(dsize)
    pos, out = 0, []
    for _ in range(nb):
        toff, tsize, flags, typ, gb, nsize, esize = struct.unpack('>QIIBBHI', d[pos:pos + 24])
        name = d[pos + 24 + esize:pos + 24 + esize + nsize].decode()
        out.append(dict(pos=doff + pos, table_offset=toff, table_size=tsize, flags=flags,
                        type=typ, gran_bits=gb, name=name))
        pos += (24 + esize + nsize + 7) & ~7
    return cs, size, out


def content(f, cs, size, e):
    g = 1 << e['gran_bits']
    nbits = (size + g - 1) // g
    nbytes = (nbits + 7) // 8
    f.seek(e['table_offset'])
    t = struct.unpack('>%dQ' % e['table_size'], f.read(8 * e['table_size']))
    data = bytearray()
    for ent in t:
        off = ent & 0x00fffffffffffe00
        if off:
            f.seek(off)
            data += f.read(cs)
        else:
            data += (b'\xff' if ent & 1 else b'\x00') * cs
    return bytes(data[:nbytes]), nbits, g


def dump(path):
    with open(path, 'rb') as f:
        cs, size, ents = entries(f)
        for e in ents:
            bits, nbits, g = content(f, cs, size, e)
            ranges, start = [], None
            for i in range(nbits + 1):
                on = i < nbits and bits[i // 8] >> (i % 8) & 1
                if on and start is None:
                    start = i
                elif not on and start is not None:
                    ranges.append('%d-%d' % (start * g, min(i * g, size)))
                    start = None
            print('%s gran=%d flags=%d ranges=%s' % (e['name'], g, e['flags'], ','.join(ranges) or '-'))


def patch(path, name, field, value):
    with open(path, 'r+b') as f:
        _, _, ents = entries(f)
        e = [x for x in ents if x['name'] == name][0]
        where = {'table_offset': (0, '>Q'), 'table_size': (8, '>I'), 'flags': (12, '>I'),
                 'type': (16, '>B'), 'gran_bits': (17, '>B')}[field]
        f.seek(e['pos'] + where[0])
        f.write(struct.pack(where[1], int(value, 0)))


if __name__ == '__main__':
    if sys.argv[1] == 'dump':
        dump(sys.argv[2])
    elif sys.argv[1] == 'patch':
        patch(*sys.argv[2:6])
    else:
        sys.exit('unknown command')
