#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Helpers for the interop shell tests (run with /usr/bin/python3, standard
# library only).  Subcommands:
#
#   mkraw FILE SIZE ITEM...      sparse raw file of SIZE bytes, then each ITEM:
#                                  data:OFF:LEN[:SEED]  seeded random bytes
#                                  fill:OFF:LEN:BYTE    one byte value (0x.. ok)
#                                  zero:OFF:LEN         real zero bytes (allocated)
#                                  hole:OFF:LEN         punched hole (reads zeros)
#   edit FILE ITEM...            applies ITEMs to an existing file
#   json-get FILE KEY            prints one top-level key of a JSON object
#                                ("<absent>" when missing); FILE - is stdin
#   json-len FILE                length of a JSON array
#   json-cmp A B KEY...          compares the KEYs of two JSON objects
#   map-cmp A B [--no-offset|--alloc]  compares two `map --output=json` lists;
#                                --no-offset ignores host offsets, --alloc also
#                                ignores "zero" on data extents (host holes)
#   check-counts FILE            "corruptions leaks check-errors" of a check JSON
#   chain-names FILE             basenames of `info --backing-chain` entries
#   vdi-get FILE FIELD           a VDI header field (type, flags, offblocks,
#                                offdata, blocksize, blocks, allocated, size,
#                                uuid, moduuid, parentuuid, parentmoduuid, map)
#   vdi-set-entry FILE IDX VAL   sets block map entry IDX (VAL may be free/zero)
#   vdi-patch FILE KIND          oor | dup | count | leak (see test-check.sh)
#
# Numbers accept K/M/G suffixes (binary) and simple "+"/"-" sums: 1M-4K.

import json
import os
import random
import re
import struct
import sys
import uuid

FREE = 0xFFFFFFFF
ZERO = 0xFFFFFFFE


def num(s):
    s = s.strip()
    total = 0
    for sign, val in re.findall(r'([+-]?)\s*([0-9a-fA-Fx]+[KMGkmg]?)', s):
        mult = 1
        if val[-1] in 'KMGkmg':
            mult = {'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30}[val[-1].lower()]
            val = val[:-1]
        v = int(val, 0) * mult
        total += -v if sign == '-' else v
    return total


def punch(f, off, length):
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    f.flush()
    # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if libc.fallocate(f.fileno(), 3, off, length) != 0:
        # no hole punching here: zeros read the same
        f.seek(off)
        f.write(bytes(length))


def mkraw(path, size, items, edit=False):
    if edit:
        size = os.path.getsize(path)
    else:
        size = num(size)
    with open(path, 'r+b' if edit else 'wb') as f:
        if not edit:
            f.truncate(size)
        for it in items:
            parts = it.split(':')
            kind = parts[0]
            off, length = num(parts[1]), num(parts[2])
            if off < 0 or length < 0 or off + length > size:
                sys.exit('mkraw: item %s outside the %d-byte file' % (it, size))
            if kind == 'data':
                seed = num(parts[3]) if len(parts) > 3 else off
                buf = random.Random(seed).randbytes(length)
            elif kind == 'fill':
                buf = bytes([num(parts[3]) & 0xff]) * length
            elif kind == 'zero':
                buf = bytes(length)
            elif kind == 'hole':
                punch(f, off, length)
                continue
            else:
                sys.exit('mkraw: unknown item kind ' + kind)
            f.seek(off)
            f.write(buf)


def load(path):
    if path == '-':
        return json.load(sys.stdin)
    with open(path) as f:
        return json.load(f)


def fmtval(v):
    if v is None:
        return '<absent>'
    if isinstance(v, bool):
        return 'true' if v else 'false'
    return str(v)


def json_cmp(a, b, keys):
    ja, jb = load(a), load(b)
    bad = 0
    for k in keys:
        va, vb = ja.get(k), jb.get(k)
        if va != vb:
            print('  %s: %s vs %s' % (k, fmtval(va), fmtval(vb)))
            bad = 1
    return bad


MAP_KEYS = ('start', 'length', 'data', 'zero', 'depth', 'present')


def norm_map(lst, with_offset, alloc_only=False):
    out = []
    for e in lst:
        d = {k: e.get(k) for k in MAP_KEYS}
        if with_offset:
            d['offset'] = e.get('offset')
        if alloc_only and d['data']:
            # whether a data extent reads as zero depends on holes in the
            # host file (qemu asks the file system), not on the image
            d['zero'] = None
        # merge neighbours that became equal once the offset is ignored
        if out and not with_offset:
            p = out[-1]
            if all(p[k] == d[k] for k in MAP_KEYS if k not in ('start', 'length')) \
                    and p['start'] + p['length'] == d['start']:
                p['length'] += d['length']
                continue
        out.append(d)
    return out


def map_cmp(a, b, with_offset, alloc_only=False):
    ma = norm_map(load(a), with_offset, alloc_only)
    mb = norm_map(load(b), with_offset, alloc_only)
    if ma == mb:
        return 0
    print('  maps differ (%s has %d extents, %s has %d)' % (a, len(ma), b, len(mb)))
    for i in range(max(len(ma), len(mb))):
        ea = ma[i] if i < len(ma) else None
        eb = mb[i] if i < len(mb) else None
        if ea != eb:
            print('  first difference at extent %d:\n    %s\n    %s' % (i, ea, eb))
            break
    return 1


def vdi_header(f):
    f.seek(0)
    h = f.read(512)
    if len(h) < 0x1C8 or struct.unpack_from('<I', h, 0x40)[0] != 0xBEDA107F:
        sys.exit('not a VDI file')
    return h


def vdi_map(f, h):
    offb = struct.unpack_from('<I', h, 0x154)[0]
    nb = struct.unpack_from('<I', h, 0x180)[0]
    f.seek(offb)
    return offb, list(struct.unpack('<%dI' % nb, f.read(4 * nb)))


def vdi_get(path, field):
    with open(path, 'rb') as f:
        h = vdi_header(f)
        ints = {'type': 0x4C, 'flags': 0x50, 'offblocks': 0x154, 'offdata': 0x158,
                'blocksize': 0x178, 'blocks': 0x180, 'allocated': 0x184}
        uuids = {'uuid': 0x188, 'moduuid': 0x198, 'parentuuid': 0x1A8, 'parentmoduuid': 0x1B8}
        if field in ints:
            return str(struct.unpack_from('<I', h, ints[field])[0])
        if field == 'size':
            return str(struct.unpack_from('<Q', h, 0x170)[0])
        if field in uuids:
            return str(uuid.UUID(bytes_le=h[uuids[field]:uuids[field] + 16]))
        if field == 'map':
            _, m = vdi_map(f, h)
            return ' '.join('free' if e == FREE else 'zero' if e == ZERO else str(e) for e in m)
    sys.exit('unknown VDI field ' + field)


def vdi_set_entry(path, idx, val):
    v = FREE if val == 'free' else ZERO if val == 'zero' else num(val)
    with open(path, 'r+b') as f:
        h = vdi_header(f)
        offb, m = vdi_map(f, h)
        if not 0 <= idx < len(m):
            sys.exit('block index out of range')
        f.seek(offb + 4 * idx)
        f.write(struct.pack('<I', v))


def vdi_patch(path, kind):
    with open(path, 'r+b') as f:
        h = vdi_header(f)
        offb, m = vdi_map(f, h)
        bs = struct.unpack_from('<I', h, 0x178)[0]
        extra = struct.unpack_from('<I', h, 0x17C)[0]
        nalloc = struct.unpack_from('<I', h, 0x184)[0]
        used = [i for i, e in enumerate(m) if e < ZERO]
        free = [i for i, e in enumerate(m) if e >= ZERO]
        if kind == 'oor':
            # a free entry now points far past the data area
            m[free[0]] = len(m) + 5
        elif kind == 'dup':
            # a free entry now points to the slot of the first used block
            m[free[0]] = m[used[0]]
        elif kind == 'count':
            f.seek(0x184)
            f.write(struct.pack('<I', nalloc + 2))
        elif kind == 'leak':
            # one more data slot past the last referenced one, referenced by
            # nobody, counters untouched
            offd = struct.unpack_from('<I', h, 0x158)[0]
            slots = max(m[i] for i in used) + 1 if used else 0
            f.seek(offd + slots * (bs + extra))
            f.write(b'\xa5' * (bs + extra))
        else:
            sys.exit('unknown patch ' + kind)
        if kind in ('oor', 'dup'):
            f.seek(offb)
            f.write(struct.pack('<%dI' % len(m), *m))


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == 'mkraw':
        mkraw(args[0], args[1], args[2:])
    elif cmd == 'edit':
        mkraw(args[0], None, args[1:], edit=True)
    elif cmd == 'json-get':
        print(fmtval(load(args[0]).get(args[1])))
    elif cmd == 'json-len':
        print(len(load(args[0])))
    elif cmd == 'json-cmp':
        return json_cmp(args[0], args[1], args[2:])
    elif cmd == 'map-cmp':
        return map_cmp(args[0], args[1], '--no-offset' not in args[2:] and '--alloc' not in args[2:],
                       '--alloc' in args[2:])
    elif cmd == 'check-counts':
        j = load(args[0])
        print(j.get('corruptions', 0), j.get('leaks', 0), j.get('check-errors', 0))
    elif cmd == 'chain-names':
        print(' '.join(os.path.basename(e.get('filename', '?')) for e in load(args[0])))
    elif cmd == 'chain-field':
        print(' '.join(fmtval(e.get(args[1])) for e in load(args[0])))
    elif cmd == 'vdi-get':
        print(vdi_get(args[0], args[1]))
    elif cmd == 'vdi-set-entry':
        vdi_set_entry(args[0], int(args[1]), args[2])
    elif cmd == 'vdi-patch':
        vdi_patch(args[0], args[1])
    else:
        sys.exit('unknown helper command ' + cmd)
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        print('helper.py %s: %s' % (' '.join(sys.argv[1:3]), e), file=sys.stderr)
        sys.exit(3)
