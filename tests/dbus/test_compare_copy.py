# SPDX-License-Identifier: LGPL-2.1-or-later
"""Disk.Compare and Disk.CopyTo (docs/dbus-api.md), and the `direct-fd` of
every operation that writes an image (Merge, MergeImages, Compact, CopyTo):

- Compare says what qemu-img compare says: equal, or the first differing
  sector; with `strict`, different sizes differ at the smaller size; the
  Result carries both sizes;
- CopyTo copies a Disk's content into another open Disk's top image (qemu-img
  convert -n): the target keeps its format, qemu-img finds it clean and equal
  to the source, its old data under the source's holes reads zeros;
  `source-top-only` writes only what the source's top image defines;
- a 15 TiB VDI holding 2 MiB (with a 3-deep chain of diffs over it) against
  its sparse raw, and that raw copied into an empty 15 TiB VDI: both at
  metadata speed (the times are printed, never asserted);
- the other Disk must be the caller's own, idle, not this Disk; while the
  operation runs it is busy (its methods get Busy); the operations count in
  the per-uid operation limit like every other;
- `direct-fd` of Merge/Compact/CopyTo: the written image's file opened
  O_DIRECT; one without O_DIRECT fails the call, one of another file fails
  the Operation with BadFileDescriptor before anything is written.
"""

import os
import time

import pytest

from harness import (A_MODIFY, A_OPEN, DISK, ERR, INVALID_ARGS, LIMITS_EXCEEDED, OPERATION, REGIONS, UID_A,
                     UID_B, Fd, MiB, Open, T, expect_error, finished_ok, frozen_fs, op_props, open_disk, unique,
                     wait_until)

VDISK_ENV = dict(daemon_args=['--workers=3', '--max-workers-per-user=3'])

BAD_FD = ERR + 'BadFileDescriptor'
BUSY = ERR + 'Busy'
READ_ONLY = ERR + 'ReadOnly'
SIZE = 8 * MiB
TiB = 1 << 40

pytestmark = pytest.mark.usefixtures('policy')


def vdi(env, regions=REGIONS, size=SIZE, uid=UID_A):
    return env.make_vdi(uid, unique('c') + '.vdi', size, regions)


def disk(env, agent, path, fmt='VDI', flags=os.O_RDWR):
    return open_disk(env, agent, [path], fmt=fmt, name=path.name, flags=flags)


def compare(env, a, d, other, **opts):
    op = a.disk(d, 'Compare', 'oa{sv}', other, {k.replace('_', '-'): v for k, v in opts.items()})
    p = finished_ok(env, a, op)
    assert p['Kind'] == 'compare'
    assert env.watcher.get(d, DISK, 'Operation') == '/'
    assert env.watcher.get(other, DISK, 'Operation') == '/'
    return p['Result']


def test_compare(env, clients):
    a = clients[UID_A]
    s1, s2 = vdi(env), vdi(env)
    raw = env.make_raw(UID_A, unique('c') + '.raw', SIZE, regions=REGIONS)
    changed = vdi(env, list(REGIONS) + [(5 * MiB + 1000, 1, 0x77)])
    bigger = vdi(env, size=SIZE + MiB)
    d1, d2, dr, dc, db = (disk(env, a, s1), disk(env, a, s2), disk(env, a, raw, 'RAW'), disk(env, a, changed),
                          disk(env, a, bigger))

    r = compare(env, a, d1, d2)
    assert r == {'equal': True, 'size': SIZE, 'other-size': SIZE}, r
    assert compare(env, a, d1, dr)['equal'] is True
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', s1, raw)

    r = compare(env, a, d1, dc)
    assert r['equal'] is False and r['offset'] == 5 * MiB + 512, r
    q = env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', s1, changed, check=False)
    assert q.returncode == 1 and str(5 * MiB + 512) in q.stdout, q.stdout

    # Different sizes: equal unless strict (the tail reads zeros)
    r = compare(env, a, d1, db)
    assert r == {'equal': True, 'size': SIZE, 'other-size': SIZE + MiB}, r
    r = compare(env, a, d1, db, strict=True)
    assert r['equal'] is False and r['offset'] == SIZE, r
    for d in (d1, d2, dr, dc, db):
        a.disk(d, 'Close', 'a{sv}', {})


def test_other_disk_checked(env, clients):
    a, b = clients[UID_A], clients[UID_B]
    d1, d2 = disk(env, a, vdi(env)), disk(env, a, vdi(env))
    e1 = disk(env, b, vdi(env, uid=UID_B))
    for method in ('Compare', 'CopyTo'):
        e = expect_error(INVALID_ARGS, a.disk, d1, method, 'oa{sv}', d1, {})
        assert 'this disk' in e.message, e.message
        # Another uid's Disk and one that does not exist read the same.
        m1 = expect_error(INVALID_ARGS, a.disk, d1, method, 'oa{sv}', e1, {}).message
        m2 = expect_error(INVALID_ARGS, a.disk, d1, method, 'oa{sv}', '/org/vdisk/VDisk1/disk/999999', {}).message
        assert m1.replace(e1, 'X') == m2.replace('/org/vdisk/VDisk1/disk/999999', 'X'), (m1, m2)
        expect_error(INVALID_ARGS, a.disk, d1, method, 'oa{sv}', d2, {'no-such-option': T('b', True)})
    expect_error(INVALID_ARGS, a.disk, d1, 'Compare', 'oa{sv}', d2, {'target-is-zero': T('b', True)})
    expect_error(INVALID_ARGS, a.disk, d1, 'CopyTo', 'oa{sv}', d2, {'strict': T('b', True)})
    for d in (d1, d2):
        a.disk(d, 'Close', 'a{sv}', {})
    b.disk(e1, 'Close', 'a{sv}', {})


def test_copy_to(env, clients):
    a = clients[UID_A]
    src = vdi(env)
    # The target holds data where the source has holes, and a different
    # format; it is larger (its tail stays).
    tgt = env.make_raw(UID_A, unique('t') + '.raw', SIZE + MiB,
                       regions=[(1 * MiB, 8192, 0x99), (3 * MiB, 4096, 0x98), (SIZE + 4096, 512, 0x97)])
    ds, dt = disk(env, a, src), disk(env, a, tgt, 'RAW')
    op = a.disk(ds, 'CopyTo', 'oa{sv}', dt, {})
    p = finished_ok(env, a, op)
    assert p['Kind'] == 'copy-to'
    assert dt in p['Objects'] and ds in p['Objects'], p['Objects']
    assert a.disk(dt, 'Read', 'tua{sv}', 1 * MiB, 8192, {}) == bytes(8192)
    assert a.disk(dt, 'Read', 'tua{sv}', SIZE + 4096, 512, {}) == bytes([0x97]) * 512
    a.disk(dt, 'Close', 'a{sv}', {})
    with open(tgt, 'rb') as f:
        data = f.read()
    assert data[SIZE + 4096:SIZE + 4608] == bytes([0x97]) * 512
    with open(tgt, 'r+b') as f:
        f.truncate(SIZE)
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', src, tgt)

    # Into a VDI: it stays a VDI, clean, equal to the source.
    tv = vdi(env, regions=[(2 * MiB, 4096, 0x55)])
    dv = disk(env, a, tv)
    finished_ok(env, a, a.disk(ds, 'CopyTo', 'oa{sv}', dv, {}))
    a.disk(dv, 'Close', 'a{sv}', {})
    env.qemu_img('check', '-f', 'vdi', tv)
    env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, tv)

    # Refusals: a read-only target, a smaller one.
    ro = disk(env, a, vdi(env), flags=os.O_RDONLY)
    expect_error(READ_ONLY, a.disk, ds, 'CopyTo', 'oa{sv}', ro, {})
    small = disk(env, a, vdi(env, size=SIZE // 2))
    e = expect_error(INVALID_ARGS, a.disk, ds, 'CopyTo', 'oa{sv}', small, {})
    assert 'smaller' in e.message, e.message
    for d in (ds, ro, small):
        a.disk(d, 'Close', 'a{sv}', {})


def test_copy_to_source_top_only(env, clients):
    """convert -n -B: the target already has the source's base under it."""
    a = clients[UID_A]
    base = vdi(env)
    top = env.make_vdi_diff(UID_A, unique('top') + '.vdi', base)
    tbase = env.path(UID_A, unique('tb') + '.vdi')
    tbase.write_bytes(base.read_bytes())
    env.chown(tbase, UID_A)
    ttop = env.make_vdi_diff(UID_A, unique('tt') + '.vdi', tbase)
    ds = open_disk(env, a, [base, top])
    a.disk(ds, 'Write', 'taya{sv}', 5 * MiB, bytes([0x66]) * 4096, {})
    dt = open_disk(env, a, [tbase, ttop])
    finished_ok(env, a, a.disk(ds, 'CopyTo', 'oa{sv}', dt, {'source-top-only': T('b', True)}))
    assert compare(env, a, ds, dt)['equal'] is True
    # Only the one block the source's top holds landed in the target's top.
    timgs = env.watcher.get(dt, DISK, 'Images')
    top_size = env.watcher.get(timgs[1], 'org.vdisk.VDisk1.Image', 'FileSize')
    assert top_size < 2 * MiB + 64 * 1024, top_size
    for d in (ds, dt):
        a.disk(d, 'Close', 'a{sv}', {})
    env.vdisk_img('check', '-f', 'vdi', ttop)   # qemu-img opens no VDI diff


def test_huge_sparse(env, clients):
    """15 TiB VDI with 2 MiB of data and a 3-deep chain of diffs over it,
    against its sparse raw; the raw copied into an empty 15 TiB VDI."""
    a = clients[UID_A]
    size = 15 * TiB
    regions = [(0, MiB, 0x11), (7 * TiB + 12345 * 512, 512 * 1024, 0x22), (size - 512 * 1024, 512 * 1024, 0x33)]
    raw = env.make_raw(UID_A, unique('huge') + '.raw', size, regions=regions)
    base = env.make_vdi(UID_A, unique('huge') + '.vdi', size, regions)
    chain = [base]
    for _ in range(3):
        chain.append(env.make_vdi_diff(UID_A, unique('hd') + '.vdi', chain[-1]))
    dc = open_disk(env, a, chain, flags=os.O_RDONLY, options={'read-only': True})
    dr = disk(env, a, raw, 'RAW', flags=os.O_RDONLY)

    t0 = time.monotonic()
    r = compare(env, a, dc, dr)
    t_compare = time.monotonic() - t0
    assert r == {'equal': True, 'size': size, 'other-size': size}, r

    empty = env.path(UID_A, unique('empty') + '.vdi')
    env.vdisk_img('create', '-f', 'vdi', empty, str(size))
    env.chown(empty, UID_A)
    de = disk(env, a, empty)
    t0 = time.monotonic()
    finished_ok(env, a, a.disk(dr, 'CopyTo', 'oa{sv}', de, {}))
    t_copy = time.monotonic() - t0
    assert compare(env, a, de, dr)['equal'] is True
    print(f'# 15 TiB (2 MiB of data): Compare of a 4-image VDI chain with its raw {t_compare:.2f} s; '
          f'CopyTo of the raw into an empty VDI {t_copy:.2f} s (through the bus, op start to Wait)')
    for d in (dc, dr, de):
        a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', '-f', 'vdi', empty)


def direct(path):
    return T('h', Open(path, os.O_WRONLY | os.O_DIRECT))


def test_direct_fd_merge_compact_copy_to(env, clients):
    a = clients[UID_A]
    src = vdi(env)
    flat = env.make_raw(UID_A, unique('flat') + '.raw', SIZE, regions=list(REGIONS) + [(6 * MiB, MiB, 0x44)])

    # Merge the top into the base through the base's O_DIRECT twin (the base
    # is written: it comes O_RDWR in `files`).
    base = vdi(env)
    top = env.make_vdi_diff(UID_A, unique('top') + '.vdi', base)
    d = open_disk(env, a, [top], options={'files': T('a{sh}', {base.name: Open(base, os.O_RDWR)})})
    a.disk(d, 'Write', 'taya{sv}', 6 * MiB, bytes([0x44]) * MiB, {})
    finished_ok(env, a, a.disk(d, 'Merge', 'uua{sv}', 1, 0, {'direct-fd': direct(base)}))
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', '-f', 'vdi', base)
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', base, flat)

    # MergeImages and Compact: a twin of another file fails the Operation
    # before anything is written; without O_DIRECT, the call.
    base2 = vdi(env)
    top2 = env.make_vdi_diff(UID_A, unique('top') + '.vdi', base2)
    d = open_disk(env, a, [top2], options={'files': T('a{sh}', {base2.name: Open(base2, os.O_RDWR)})})
    a.disk(d, 'Write', 'taya{sv}', 6 * MiB, bytes([0x44]) * MiB, {})
    before = base2.read_bytes()
    imgs = env.watcher.get(d, DISK, 'Images')
    e = expect_error(BAD_FD, a.disk, d, 'MergeImages', 'ooa{sv}', imgs[1], imgs[0],
                     {'direct-fd': T('h', Open(base2, os.O_RDWR))})
    assert 'direct-fd' in e.message, e.message
    op = a.disk(d, 'MergeImages', 'ooa{sv}', imgs[1], imgs[0], {'direct-fd': direct(src)})
    with pytest.raises(Exception) as ei:
        a.wait_op(op)
    assert getattr(ei.value, 'name', '') == BAD_FD, ei.value
    assert base2.read_bytes() == before
    assert env.watcher.get(d, DISK, 'Images') == imgs
    finished_ok(env, a, a.disk(d, 'MergeImages', 'ooa{sv}', imgs[1], imgs[0], {'direct-fd': direct(base2)}))
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', base2, flat)

    # Compact (Disk and Image forms) of a VDI with zeroed blocks.
    c = vdi(env, regions=[(0, 4 * MiB, 0x21), (6 * MiB, MiB, 0x22)])
    d = disk(env, a, c)
    a.disk(d, 'Discard', 'tta{sv}', 0, 3 * MiB, {})
    size_before = os.path.getsize(c)
    op = a.disk(d, 'Compact', 'ua{sv}', 0, {'direct-fd': direct(src)})
    with pytest.raises(Exception) as ei:
        a.wait_op(op)
    assert getattr(ei.value, 'name', '') == BAD_FD, ei.value
    finished_ok(env, a, a.disk(d, 'Compact', 'ua{sv}', 0, {'direct-fd': direct(c)}))
    img = env.watcher.get(d, DISK, 'Images')[0]
    finished_ok(env, a, a.image(img, 'Compact', 'a{sv}', {'direct-fd': direct(c)}))
    assert a.disk(d, 'Read', 'tua{sv}', 6 * MiB, 4096, {}) == bytes([0x22]) * 4096
    a.disk(d, 'Close', 'a{sv}', {})
    assert os.path.getsize(c) < size_before
    env.qemu_img('check', '-f', 'vdi', c)

    # CopyTo through the target's twin; another file's twin leaves the target alone.
    tgt = vdi(env, regions=[(MiB, 4096, 0x99)])
    ds, dt = disk(env, a, src), disk(env, a, tgt)
    before = tgt.read_bytes()
    op = a.disk(ds, 'CopyTo', 'oa{sv}', dt, {'direct-fd': direct(src)})
    with pytest.raises(Exception) as ei:
        a.wait_op(op)
    assert getattr(ei.value, 'name', '') == BAD_FD, ei.value
    assert tgt.read_bytes() == before
    finished_ok(env, a, a.disk(ds, 'CopyTo', 'oa{sv}', dt, {'direct-fd': direct(tgt)}))
    for x in (ds, dt):
        a.disk(x, 'Close', 'a{sv}', {})
    env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, tgt)


def test_busy_and_bounded(env, clients):
    """A CopyTo whose target lives on a frozen file system holds its worker:
    meanwhile the target answers Busy, a Compare naming it is Busy, and with
    --max-operations-per-user=1 a Compare or CopyTo of two idle Disks is
    LimitsExceeded. After the thaw everything completes. (Restarts vdiskd.)"""
    frz = frozen_fs(env)
    env.stop_daemon()
    env.start_daemon(['--workers=3', '--max-workers-per-user=3', '--max-operations-per-user=1'])
    a = env.agent(UID_A, 'A-busy')
    env.polkit.allow(A_OPEN, A_MODIFY)
    src = vdi(env)
    tpath = frz.dirs[UID_A] / (unique('frz') + '.vdi')
    tpath.write_bytes(vdi(env, regions=[(MiB, 4096, 0x99)]).read_bytes())
    env.chown(tpath, UID_A)
    ds, dt = disk(env, a, src), disk(env, a, tpath)
    d3, d4 = disk(env, a, vdi(env)), disk(env, a, vdi(env))
    frz.freeze()
    op = a.disk(ds, 'CopyTo', 'oa{sv}', dt, {})
    wait_until(lambda: env.watcher.get(op, OPERATION, 'State') == 'running', 60, 'the CopyTo to run')
    assert env.watcher.get(dt, DISK, 'Operation') == op
    assert env.watcher.get(ds, DISK, 'Operation') == op
    expect_error(BUSY, a.disk, dt, 'Read', 'tua{sv}', 0, 512, {})
    expect_error(BUSY, a.disk, dt, 'Close', 'a{sv}', {})
    expect_error(BUSY, a.disk, d3, 'Compare', 'oa{sv}', dt, {})
    expect_error(BUSY, a.disk, d3, 'CopyTo', 'oa{sv}', ds, {})
    expect_error(LIMITS_EXCEEDED, a.disk, d3, 'Compare', 'oa{sv}', d4, {})
    expect_error(LIMITS_EXCEEDED, a.disk, d3, 'CopyTo', 'oa{sv}', d4, {})
    frz.thaw()
    finished_ok(env, a, op)
    assert env.watcher.get(dt, DISK, 'Operation') == '/'
    assert compare(env, a, d3, d4)['equal'] is True
    for x in (ds, dt, d3, d4):
        a.disk(x, 'Close', 'a{sv}', {})
    env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, tpath)
    a.close()


def test_create_diff_qcow2_parent_name(env, clients):
    """CreateDiff of a qcow2 child records the caller's `parent-name`
    (relative to the child's directory, as qemu reads it) and the parent's
    format: qemu-img opens the chain and reads what vdiskd wrote. Without a
    name (qcow2 links by name only) the Operation fails and the child file is
    left empty."""
    a = clients[UID_A]
    for parent_fmt in ('qcow2', 'vdi'):
        base = env.path(UID_A, unique('qb') + '.' + parent_fmt)
        raw = env.make_raw(UID_A, unique('qb') + '.raw', SIZE, regions=REGIONS)
        env.qemu_img('convert', '-f', 'raw', '-O', parent_fmt, raw, base)
        env.chown(base, UID_A)
        sub = env.path(UID_A, unique('sub'))
        sub.mkdir(mode=0o700)
        os.chown(sub, UID_A, UID_A)
        child = sub / 'child.qcow2'
        child.write_bytes(b'')
        env.chown(child, UID_A)
        d = disk(env, a, base, parent_fmt.upper())

        op = a.disk(d, 'CreateDiff', 'hsa{sv}', Open(child, os.O_RDWR), 'QCOW2', {})
        with pytest.raises(Exception) as ei:
            a.wait_op(op)
        assert 'name' in getattr(ei.value, 'message', str(ei.value)), ei.value
        assert os.path.getsize(child) == 0
        expect_error(INVALID_ARGS, a.disk, d, 'CreateDiff', 'hsa{sv}', Open(child, os.O_RDWR), 'QCOW2',
                     {'parent-name': T('s', '')})

        finished_ok(env, a, a.disk(d, 'CreateDiff', 'hsa{sv}', Open(child, os.O_RDWR), 'QCOW2',
                                   {'parent-name': T('s', '../' + base.name)}))
        a.disk(d, 'Write', 'taya{sv}', 2 * MiB, bytes([0x5c]) * 8192, {})
        a.disk(d, 'Close', 'a{sv}', {})
        info = env.qemu_img('info', '--backing-chain', child).stdout
        assert f'backing file: ../{base.name}' in info, info
        assert f'backing file format: {parent_fmt}' in info, info
        with open(raw, 'r+b') as f:
            f.seek(2 * MiB)
            f.write(bytes([0x5c]) * 8192)
        env.qemu_img('compare', '-F', 'raw', child, raw)
        env.qemu_img('check', child)
