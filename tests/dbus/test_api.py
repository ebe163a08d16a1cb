# SPDX-License-Identifier: LGPL-2.1-or-later
"""The API a VM manager scripts (docs/dbus-api.md): `persist` Disks that
outlive their creator's connection (and their per-uid cap), objects exported
complete (InterfacesAdded carries the final properties), the methods that act
on one image addressed by the Image's object path, and a FileSet so that a
chain of any length opens in one step, with a clean LimitsExceeded for a call
carrying more descriptors than MaxFdsPerCall.

Nothing here depends on timing: a disconnect is observed through the
InterfacesRemoved of a non-persistent Disk of the same connection (both are
closed in the same main-loop callback, so a later reply orders after both).
"""

import os
import struct
import subprocess
import uuid

import pytest

from harness import (ACCESS_DENIED, DISK, ERR, FILE_SET, IMAGE, INVALID_ARGS, LIMITS_EXCEEDED,
                     MANAGER, ROOT_PATH, UID_A, UID_B, UNKNOWN_OBJECT, Fd, Open, RemoteDBusError, T, deadline,
                     disk_images, expect_error, finished_ok, frozen_fs, open_disk, tool, unique)

MAX_PERSISTENT = 3
MAX_FDS_PER_CALL = 16
BUS_FDS = 64            # the test bus lets more fds through than vdiskd takes

VDISK_ENV = dict(daemon_args=[f'--max-persistent-disks-per-user={MAX_PERSISTENT}',
                              f'--max-fds-per-call={MAX_FDS_PER_CALL}'],
                 bus_limits={'max_message_unix_fds': BUS_FDS})

MiB = 1024 * 1024
SMALL = 8 * MiB

pytestmark = pytest.mark.usefixtures('policy')


@pytest.fixture(scope='module')
def other(env):
    return env.agent(UID_B, 'B')


def roundtrip(env):
    """A reply from vdiskd: every signal it sent before is in the watcher's list."""
    env.watcher.managed_objects()
    env.watcher.pump()


def persistent_disks(env, uid):
    objs = env.watcher.managed_objects()
    return [p for p, itf in objs.items()
            if DISK in itf and itf[DISK]['OwnerUID'] == uid and itf[DISK].get('Persistent')]


def close_all_persistent(env, uid):
    root = env.agent(0, unique('root'))
    try:
        for p in persistent_disks(env, uid):
            root.disk(p, 'Close', 'a{sv}', {})
    finally:
        root.close()


# ---------------------------------------------------------------- 1. persist


def test_persist_disk_survives_creator_and_serves_another_connection(env):
    a1 = env.agent(UID_A, unique('creator'))
    img = env.make_vdi(UID_A, unique('p') + '.vdi', SMALL, regions=((0, 4096, 0x5a),))
    plain = a1.manager('CreateDisk', 'a{sv}', {'display-name': 'plain'})
    kept = open_disk(env, a1, [img], name='kept', options={'persist': True})
    props = env.watcher.get_all(kept, DISK)
    assert props['Persistent'] is True
    assert env.watcher.get(plain, DISK, 'Persistent') is False
    since = env.watcher.mark()

    a1.close()     # the creator's connection goes
    env.watcher.wait_removed(plain, since=since)
    roundtrip(env)
    removed = [e[4][0] for e in env.watcher.events_since(since) if e[3] == 'InterfacesRemoved']
    assert kept not in removed, removed
    assert env.watcher.exists(kept)
    images = disk_images(env, kept)
    assert len(images) == 1 and env.watcher.exists(images[0])

    # A second connection of the same uid uses it: Read, Write, Read back, Close.
    a2 = env.agent(UID_A, unique('second'))
    try:
        data = a2.disk(kept, 'Read', 'tua{sv}', 0, 4096, {})
        assert bytes(data) == b'\x5a' * 4096
        a2.disk(kept, 'Write', 'taya{sv}', 8192, b'\xa5' * 512, {})
        assert bytes(a2.disk(kept, 'Read', 'tua{sv}', 8192, 512, {})) == b'\xa5' * 512
        since = env.watcher.mark()
        a2.disk(kept, 'Close', 'a{sv}', {})
        env.watcher.wait_removed(kept, since=since)
        assert not env.watcher.exists(images[0])
    finally:
        a2.close()


def test_persist_cap(env):
    a = env.agent(UID_A, unique('cap'))
    try:
        assert env.watcher.get(ROOT_PATH, MANAGER, 'MaxPersistentDisksPerUser') == MAX_PERSISTENT
        disks = [a.manager('CreateDisk', 'a{sv}', {'persist': True}) for _ in range(MAX_PERSISTENT)]
        expect_error(LIMITS_EXCEEDED, a.manager, 'CreateDisk', 'a{sv}', {'persist': True})
        img = env.make_vdi(UID_A, unique('cap') + '.vdi', SMALL)
        expect_error(LIMITS_EXCEEDED, open_disk, env, a, [img], options={'persist': True})
        # a plain Disk is not capped by it, nor is another uid
        plain = a.manager('CreateDisk', 'a{sv}', {})
        a.disk(plain, 'Close', 'a{sv}', {})
        b = env.agent(UID_B, unique('capb'))
        bd = b.manager('CreateDisk', 'a{sv}', {'persist': True})
        b.disk(bd, 'Close', 'a{sv}', {})
        b.close()
        # Copy `open` with `persist` counts too
        src = open_disk(env, a, [img], name='src')
        dest = env.empty_file(UID_A, unique('copy') + '.vdi')
        expect_error(LIMITS_EXCEEDED, a.disk, src, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI',
                     {'open': True, 'persist': True})
        expect_error(INVALID_ARGS, a.disk, src, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI',
                     {'persist': True})
        # closing one frees a place
        a.disk(disks[0], 'Close', 'a{sv}', {})
        op = a.disk(src, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI', {'open': True, 'persist': True})
        props = finished_ok(env, a, op)
        copy = props['ResultObjects'][0]
        assert env.watcher.get(copy, DISK, 'Persistent') is True
        expect_error(LIMITS_EXCEEDED, a.manager, 'CreateDisk', 'a{sv}', {'persist': True})
        a.disk(src, 'Close', 'a{sv}', {})
    finally:
        a.close()
    roundtrip(env)
    # the Copy's Disk outlived its starter too
    assert len(persistent_disks(env, UID_A)) == MAX_PERSISTENT
    close_all_persistent(env, UID_A)
    assert persistent_disks(env, UID_A) == []


# ---------------------------------------------------------------- 2. exported complete


def added_props(env, since, path, iface):
    for e in env.watcher.events_since(since):
        if e[3] == 'InterfacesAdded' and e[4][0] == path and iface in e[4][1]:
            return e[4][1][iface]
    return None


def changed_props(env, since, path):
    return [e[4] for e in env.watcher.events_since(since) if e[3] == 'PropertiesChanged' and e[1] == path]


def test_open_disk_announced_complete(env):
    a = env.agent(UID_A, unique('complete'))
    try:
        base = env.make_vdi(UID_A, unique('base') + '.vdi', SMALL)
        top = env.make_vdi_diff(UID_A, unique('top') + '.vdi', base)
        since = env.watcher.mark()
        disk = open_disk(env, a, [base, top], name='complete')
        roundtrip(env)
        final = env.watcher.get_all(disk, DISK)
        added = added_props(env, since, disk, DISK)
        assert added is not None, 'no InterfacesAdded for the Disk'
        assert len(final['Images']) == 2
        for k in ('Images', 'Size', 'ReadOnly', 'PCHSGeometry', 'LCHSGeometry'):
            assert added[k] == final[k], (k, added[k], final[k])
        assert added['Size'] == SMALL and added['ReadOnly'] is False
        assert changed_props(env, since, disk) == []
        for img in final['Images']:
            ia = added_props(env, since, img, IMAGE)
            assert ia is not None and ia['Disk'] == disk and ia == env.watcher.get_all(img, IMAGE)

        # Copy `open`: the new Disk is complete when announced as well
        dest = env.empty_file(UID_A, unique('copy') + '.vdi')
        since = env.watcher.mark()
        op = a.disk(disk, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI', {'open': True})
        copy = finished_ok(env, a, op)['ResultObjects'][0]
        roundtrip(env)
        added = added_props(env, since, copy, DISK)
        final = env.watcher.get_all(copy, DISK)
        assert added is not None and len(final['Images']) == 1
        for k in ('Images', 'Size', 'ReadOnly'):
            assert added[k] == final[k], (k, added[k], final[k])
        assert changed_props(env, since, copy) == []
        a.disk(copy, 'Close', 'a{sv}', {})
        a.disk(disk, 'Close', 'a{sv}', {})
    finally:
        a.close()


# ---------------------------------------------------------------- 3. image paths


def three_layers(env, a, tag):
    """base (0x11 at 0), mid (0x22 at 1 MiB), top (0x33 at 2 MiB): a 3-image VDI chain."""
    base = env.make_vdi(UID_A, unique(tag + 'base') + '.vdi', SMALL, regions=((0, 4096, 0x11),))
    mid = env.make_vdi_diff(UID_A, unique(tag + 'mid') + '.vdi', base)
    top = env.make_vdi_diff(UID_A, unique(tag + 'top') + '.vdi', mid)
    d = open_disk(env, a, [base, mid], name='fill')
    a.disk(d, 'Write', 'taya{sv}', MiB, b'\x22' * 4096, {})
    a.disk(d, 'Close', 'a{sv}', {})
    d = open_disk(env, a, [base, mid, top], name=tag)
    a.disk(d, 'Write', 'taya{sv}', 2 * MiB, b'\x33' * 4096, {})
    return d


def expect_content(a, disk):
    for off, byte in ((0, 0x11), (MiB, 0x22), (2 * MiB, 0x33), (3 * MiB, 0)):
        assert bytes(a.disk(disk, 'Read', 'tua{sv}', off, 4096, {})) == bytes([byte]) * 4096, hex(off)


def test_image_methods_by_path(env):
    a = env.agent(UID_A, unique('paths'))
    try:
        d = three_layers(env, a, 'paths')
        base, mid, top = disk_images(env, d)

        # Check by path = Check by index, same report
        op = a.image(mid, 'Check', 'a{sv}', {})
        p = finished_ok(env, a, op)
        assert p['Kind'] == 'check' and mid in p['Objects'], p
        by_index = finished_ok(env, a, a.disk(d, 'Check', 'ua{sv}', 1, {}))
        assert p['Result'] == by_index['Result']
        assert p['Result']['corruptions'] == 0

        p = finished_ok(env, a, a.image(top, 'Repair', 'a{sv}', {'dry-run': True}))
        assert p['Kind'] == 'repair' and top in p['Objects'] and 'corruptions' in p['Result'], p
        expect_error(INVALID_ARGS, a.image, top, 'Repair', 'a{sv}', {'no-such-option': True})

        p = finished_ok(env, a, a.image(top, 'Compact', 'a{sv}', {}))
        assert p['Kind'] == 'compact' and top in p['Objects'], p
        expect_content(a, d)

        # MergeImages: another Disk's image, a stale path, the same image twice -> InvalidArgs
        other = open_disk(env, a, [env.make_vdi(UID_A, unique('o') + '.vdi', SMALL)], name='other')
        foreign = disk_images(env, other)[0]
        expect_error(INVALID_ARGS, a.disk, d, 'MergeImages', 'ooa{sv}', foreign, base, {})
        expect_error(INVALID_ARGS, a.disk, d, 'MergeImages', 'ooa{sv}', mid, foreign, {})
        expect_error(INVALID_ARGS, a.disk, d, 'MergeImages', 'ooa{sv}', mid, mid, {})
        expect_error(INVALID_ARGS, a.disk, d, 'MergeImages', 'ooa{sv}', '/org/vdisk/VDisk1/image/999999', base, {})
        assert disk_images(env, d) == [base, mid, top]

        # mid's data into base: mid leaves the chain, the content stays
        p = finished_ok(env, a, a.disk(d, 'MergeImages', 'ooa{sv}', mid, base, {}))
        assert p['Kind'] == 'merge' and p['Result']['removed'] == [mid], p
        assert disk_images(env, d) == [base, top]
        expect_content(a, d)
        # the merged-away path is stale now
        expect_error(INVALID_ARGS, a.disk, d, 'MergeImages', 'ooa{sv}', mid, base, {})
        # top's data into base by path, although top's index changed meanwhile
        p = finished_ok(env, a, a.disk(d, 'MergeImages', 'ooa{sv}', top, base, {}))
        assert p['Result']['removed'] == [top], p
        assert disk_images(env, d) == [base]
        expect_content(a, d)
        a.disk(other, 'Close', 'a{sv}', {})
        a.disk(d, 'Close', 'a{sv}', {})
    finally:
        a.close()


def test_image_methods_busy_while_disk_runs_operation(env):
    """A Copy whose destination is on a frozen file system holds the Disk's
    operation for as long as the test wants: the path forms are Busy then."""
    frz = frozen_fs(env)
    a = env.agent(UID_A, unique('busy'))
    try:
        base = env.make_vdi(UID_A, unique('bbase') + '.vdi', SMALL, regions=((0, 65536, 0x11),))
        top = env.make_vdi_diff(UID_A, unique('btop') + '.vdi', base)
        d = open_disk(env, a, [base, top], name='busy')
        lower, upper = disk_images(env, d)
        name = unique('frozen')
        a.open(name, frz.empty_file(UID_A, name + '.vdi'), os.O_RDWR)
        frz.freeze()
        op = a.disk(d, 'Copy', 'hsa{sv}', Fd(name), 'VDI', {})
        assert env.watcher.get(d, DISK, 'Operation') == op
        for method, sig, args in (('Check', 'a{sv}', ({},)), ('Compact', 'a{sv}', ({},)),
                                  ('Repair', 'a{sv}', ({'dry-run': True},))):
            expect_error(ERR + 'Busy', a.image, upper, method, sig, *args)
        expect_error(ERR + 'Busy', a.disk, d, 'MergeImages', 'ooa{sv}', upper, lower, {})
        frz.thaw()
        finished_ok(env, a, op)
        assert disk_images(env, d) == [lower, upper]
        finished_ok(env, a, a.image(upper, 'Check', 'a{sv}', {}))
        a.disk(d, 'Close', 'a{sv}', {})
    finally:
        frz.thaw()
        a.close()


# ---------------------------------------------------------------- 4. FileSet, fds per call

DEPTH = 64          # VDISK_CHAIN_MAX
LAYER = 512         # layer k holds byte k at k * LAYER (k >= 1); the base is zeros


VDI_UUIDS = 0x188      # VDI header 1.1: uuidCreate, uuidModify, uuidLinkage, uuidParentModify (16 bytes each)
VDI_OFF_DATA = 0x158


@pytest.fixture(scope='module')
def deep_chain(env):
    """A 64-image VDI chain of 1 MiB (one block); layer k >= 1 holds the flat
    content so far in its block, so every layer has data of its own. vdisk-img
    makes the base and the first diff; the others are that diff with new UUIDs
    linking each to the one below and its own block (63 vdisk-img runs, each
    opening a chain up to 63 deep, took too long under ASan)."""
    d = env.tmp / 'deep'
    d.mkdir(mode=0o755)
    flat = bytearray(MiB)
    src = d / 'src.raw'
    src.write_bytes(flat)
    paths = [d / 'l0.vdi', d / 'l1.vdi']
    env.vdisk_img('convert', '-q', '-f', 'raw', '-O', 'vdi', src, paths[0])
    flat[LAYER:2 * LAYER] = b'\x01' * LAYER
    src.write_bytes(flat)
    env.vdisk_img('convert', '-q', '--parent-dir', d, '-f', 'raw', '-O', 'vdi', '-B', paths[0], '-F', 'vdi',
                  src, paths[1])
    template = paths[1].read_bytes()
    off_data = struct.unpack_from('<I', template, VDI_OFF_DATA)[0]
    assert len(template) == off_data + MiB and template[off_data:] == bytes(flat), 'unexpected VDI layout'
    ids = template[VDI_UUIDS:VDI_UUIDS + 32]          # (create, modify) of l1
    for k in range(2, DEPTH):
        flat[k * LAYER:(k + 1) * LAYER] = bytes([k]) * LAYER
        new = uuid.uuid4().bytes_le + uuid.uuid4().bytes_le
        img = bytearray(template)
        img[VDI_UUIDS:VDI_UUIDS + 64] = new + ids      # own ids, then the parent's (linkage, parent modify)
        img[off_data:] = flat
        paths.append(d / f'l{k}.vdi')
        paths[k].write_bytes(img)
        ids = new
    for p in paths:
        env.chown(p, UID_A)
    return paths, bytes(flat)


def fill_file_set(a, fs, paths, per_call=MAX_FDS_PER_CALL):
    for i in range(0, len(paths), per_call):
        a.call(fs, FILE_SET, 'Add', 'a{sh}a{sv}', {p.name: Open(p, os.O_RDONLY) for p in paths[i:i + per_call]}, {})


def test_deep_chain_opens_in_one_step(env, deep_chain):
    paths, flat = deep_chain
    a = env.agent(UID_A, unique('deep'))
    try:
        assert env.watcher.get(ROOT_PATH, MANAGER, 'MaxFdsPerCall') == MAX_FDS_PER_CALL
        fs = a.manager('CreateFileSet', 'a{sv}', {})
        assert env.watcher.get_all(fs, FILE_SET) == {'OwnerUID': UID_A, 'Count': 0}
        fill_file_set(a, fs, paths[:-1])
        assert env.watcher.get(fs, FILE_SET, 'Count') == DEPTH - 1
        since = env.watcher.mark()
        # one OpenDisk: the chain argument holds the top only
        disk = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(paths[-1], os.O_RDWR), 'VDI', {})],
                         {'display-name': 'deep', 'file-set': T('o', fs)})
        roundtrip(env)
        images = disk_images(env, disk)
        assert len(images) == DEPTH
        assert [env.watcher.get(i, IMAGE, 'Index') for i in (images[0], images[-1])] == [0, DEPTH - 1]
        # published once, complete: no intermediate chain states
        added = [e for e in env.watcher.events_since(since) if e[3] == 'InterfacesAdded' and e[4][0] == disk]
        assert len(added) == 1 and len(added[0][4][1][DISK]['Images']) == DEPTH
        assert changed_props(env, since, disk) == []
        # the open consumed the set
        assert not env.watcher.exists(fs)
        assert bytes(a.disk(disk, 'Read', 'tua{sv}', 0, MiB, {})) == flat
        # the top is writable (the same bytes back: the fixture's chain is shared)
        a.disk(disk, 'Write', 'taya{sv}', LAYER, b'\x01' * LAYER, {})
        assert env.watcher.get(disk, DISK, 'ReadOnly') is False
        a.disk(disk, 'Close', 'a{sv}', {})
    finally:
        a.close()


def test_too_many_fds_in_one_call(env, deep_chain):
    paths, _ = deep_chain
    n = MAX_FDS_PER_CALL + 1      # the test bus lets them through (BUS_FDS); vdiskd refuses cleanly
    assert n <= BUS_FDS
    a = env.agent(UID_A, unique('fds'))
    try:
        files = T('a{sh}', {p.name: Open(p, os.O_RDONLY) for p in paths[:n - 1]})
        expect_error(LIMITS_EXCEEDED, a.manager, 'OpenDisk', 'a(hsa{sv})a{sv}',
                     [(Open(paths[n - 1], os.O_RDONLY), 'VDI', {})], {'files': files, 'read-only': True})
        fs = a.manager('CreateFileSet', 'a{sv}', {})
        expect_error(LIMITS_EXCEEDED, a.call, fs, FILE_SET, 'Add', 'a{sh}a{sv}',
                     {p.name: Open(p, os.O_RDONLY) for p in paths[:n]}, {})
        assert env.watcher.get(fs, FILE_SET, 'Count') == 0
        # the connection is still there, and exactly the limit works
        fill_file_set(a, fs, paths[:MAX_FDS_PER_CALL])
        assert env.watcher.get(fs, FILE_SET, 'Count') == MAX_FDS_PER_CALL
        a.call(fs, FILE_SET, 'Close', 'a{sv}', {})
        assert not env.watcher.exists(fs)
    finally:
        a.close()


def test_file_set_rules(env, deep_chain, other):
    paths, _ = deep_chain
    a = env.agent(UID_A, unique('rules'))
    try:
        limit = env.watcher.get(ROOT_PATH, MANAGER, 'MaxFileSetsPerUser')
        sets = [a.manager('CreateFileSet', 'a{sv}', {}) for _ in range(limit)]
        expect_error(LIMITS_EXCEEDED, a.manager, 'CreateFileSet', 'a{sv}', {})
        fs = sets[0]
        fill_file_set(a, fs, paths[:3])
        # a name twice
        expect_error(INVALID_ARGS, a.call, fs, FILE_SET, 'Add', 'a{sh}a{sv}',
                     {paths[0].name: Open(paths[0], os.O_RDONLY)}, {})
        # another uid neither fills it nor opens with it, nor closes it without manage-other-user
        expect_error(ACCESS_DENIED, other.call, fs, FILE_SET, 'Add', 'a{sh}a{sv}', {}, {})
        expect_error(ACCESS_DENIED, other.call, fs, FILE_SET, 'Close', 'a{sv}', {})
        b_file = env.make_vdi(UID_B, unique('b') + '.vdi', SMALL)
        expect_error(ACCESS_DENIED, other.manager, 'OpenDisk', 'a(hsa{sv})a{sv}',
                     [(Open(b_file, os.O_RDONLY), 'VDI', {})], {'file-set': T('o', fs)})
        assert env.watcher.get(fs, FILE_SET, 'Count') == 3
        # no such set
        expect_error(INVALID_ARGS, a.manager, 'OpenDisk', 'a(hsa{sv})a{sv}',
                     [(Open(paths[2], os.O_RDONLY), 'VDI', {})], {'file-set': T('o', ROOT_PATH + '/fileset/999999')})
        # a name both in `files` and in the set; the set is consumed all the same
        expect_error(INVALID_ARGS, a.manager, 'OpenDisk', 'a(hsa{sv})a{sv}',
                     [(Open(paths[3], os.O_RDONLY), 'VDI', {})],
                     {'file-set': T('o', fs), 'files': T('a{sh}', {paths[0].name: Open(paths[0], os.O_RDONLY)})})
        # Disk.Open takes a set too; a failed open consumes it as well
        d = a.manager('CreateDisk', 'a{sv}', {})
        fs2 = sets[1]
        fill_file_set(a, fs2, paths[:2])
        expect_error('org.vdisk.VDisk1.Error.FileNeeded', a.disk, d, 'Open', 'hsa{sv}',
                     Open(paths[3], os.O_RDONLY), 'VDI', {'file-set': T('o', fs2)})
        assert not env.watcher.exists(fs2)
        fs3 = sets[2]
        fill_file_set(a, fs3, paths[:3])
        img = a.disk(d, 'Open', 'hsa{sv}', Open(paths[3], os.O_RDONLY), 'VDI', {'file-set': T('o', fs3)})
        assert len(disk_images(env, d)) == 4 and disk_images(env, d)[-1] == img
        assert not env.watcher.exists(fs3)
        a.disk(d, 'Close', 'a{sv}', {})
        # Close drops; a place is free again
        for s in sets[3:]:
            a.call(s, FILE_SET, 'Close', 'a{sv}', {})
        assert not any(env.watcher.exists(s) for s in sets)
        a.call(a.manager('CreateFileSet', 'a{sv}', {}), FILE_SET, 'Close', 'a{sv}', {})
    finally:
        a.close()


def test_vdiskctl_opens_deep_chain_in_one_step(env, deep_chain):
    paths, flat = deep_chain
    out = env.path(UID_A, unique('flat') + '.raw')
    since = env.watcher.mark()
    cmd = ['setpriv', f'--reuid={UID_A}', f'--regid={UID_A}', '--clear-groups', '--', tool('VDISKCTL'),
           f'--address={env.bus.address}', '--no-ask-password', 'convert', '-f', 'vdi', '-O', 'raw',
           str(paths[-1]), str(out)]
    r = subprocess.run(cmd, cwd=env.dirs[UID_A], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=deadline(120), env={'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8'})
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert out.read_bytes() == flat
    roundtrip(env)
    events = env.watcher.events_since(since)
    added = [e[4] for e in events if e[3] == 'InterfacesAdded']
    disks = [a for a in added if DISK in a[1]]
    # one Disk, announced with the whole chain at once, opened through a FileSet
    assert len(disks) == 1 and len(disks[0][1][DISK]['Images']) == DEPTH, [len(d[1][DISK]['Images']) for d in disks]
    assert any(FILE_SET in a[1] for a in added)
    # (the Copy behind convert changes Operation; nothing corrects the chain)
    for ch in changed_props(env, since, disks[0][0]):
        assert not {'Images', 'Size', 'ReadOnly'} & set(ch[1]), ch


def test_abandoned_file_set_is_dropped(env, deep_chain):
    """FileSets filled and never used are dropped --file-set-timeout-sec after
    their last Add, and their descriptors closed: vdiskd holds as many fds as
    before, and the owner's places are free again. Nothing depends on how soon
    the timer fires: a set may go before it is filled (an Add then finds no
    object), and "gone" is awaited within the watcher's deadline."""
    paths, _ = deep_chain
    env.stop_daemon()
    env.start_daemon(VDISK_ENV['daemon_args'] + ['--file-set-timeout-sec=1'])
    a = env.agent(UID_A, unique('abandon'))
    fd_dir = f'/proc/{env.daemon.pid}/fd'
    try:
        held = len(os.listdir(fd_dir))
        limit = env.watcher.get(ROOT_PATH, MANAGER, 'MaxFileSetsPerUser')
        mark = env.watcher.mark()
        sets = [a.manager('CreateFileSet', 'a{sv}', {}) for _ in range(limit)]
        for fs in sets:
            try:
                fill_file_set(a, fs, paths[:2])
            except RemoteDBusError as e:
                assert e.name == UNKNOWN_OBJECT, f'{e.name}: {e.message}'
        for fs in sets:
            env.watcher.wait_removed(fs, since=mark)
        assert not any(env.watcher.exists(fs) for fs in sets)
        assert len(os.listdir(fd_dir)) == held
        expect_error(UNKNOWN_OBJECT, fill_file_set, a, sets[0], paths[:1])
        again = [a.manager('CreateFileSet', 'a{sv}', {}) for _ in range(limit)]
        for fs in again:
            try:
                a.call(fs, FILE_SET, 'Close', 'a{sv}', {})
            except RemoteDBusError as e:
                assert e.name == UNKNOWN_OBJECT, f'{e.name}: {e.message}'
    finally:
        a.close()
        env.stop_daemon()
        env.start_daemon(VDISK_ENV['daemon_args'])


# ---------------------------------------------------------------- preallocation


def test_preallocation_create_and_resize(env):
    """CreateBase and Resize take qemu-img's preallocation modes (option
    `preallocation`, for a create also in `format-options`, not in both): a
    raw file made with falloc is allocated whole, a Resize with full
    allocates the new range; a mode the format does not take fails the
    Operation with NotSupported and qemu-img's words; another word is
    InvalidArgs."""
    a = env.agent(UID_A, unique('prealloc'))
    try:
        d = a.manager('CreateDisk', 'a{sv}', {})
        new = env.empty_file(UID_A, unique('pre') + '.raw')
        op = a.disk(d, 'CreateBase', 'hsta{sv}', Open(new, os.O_RDWR), 'RAW', SMALL, {'preallocation': 'falloc'})
        finished_ok(env, a, op)
        assert os.stat(new).st_blocks * 512 >= SMALL
        op = a.disk(d, 'Resize', 'ta{sv}', 2 * SMALL, {'preallocation': 'full'})
        finished_ok(env, a, op)
        st = os.stat(new)
        assert st.st_size == 2 * SMALL and st.st_blocks * 512 >= 2 * SMALL, st
        op = a.disk(d, 'Resize', 'ta{sv}', 3 * SMALL, {'preallocation': 'metadata'})
        e = expect_error(ERR + 'NotSupported', a.wait_op, op)
        assert 'Unsupported preallocation mode: metadata' in e.message, e.message
        assert os.stat(new).st_size == 2 * SMALL
        expect_error(INVALID_ARGS, a.disk, d, 'Resize', 'ta{sv}', 3 * SMALL, {'preallocation': 'sparse'})
        a.disk(d, 'Close', 'a{sv}', {})

        d = a.manager('CreateDisk', 'a{sv}', {})
        new = env.empty_file(UID_A, unique('pre') + '.vdi')
        expect_error(INVALID_ARGS, a.disk, d, 'CreateBase', 'hsta{sv}', Open(new, os.O_RDWR), 'VDI', SMALL,
                     {'preallocation': 'full', 'format-options': {'preallocation': 'off'}})
        op = a.disk(d, 'CreateBase', 'hsta{sv}', Open(new, os.O_RDWR), 'VDI', SMALL,
                    {'format-options': {'preallocation': 'metadata'}})
        e = expect_error(ERR + 'NotSupported', a.wait_op, op)
        assert 'Unsupported preallocation mode: metadata' in e.message, e.message
        a.disk(d, 'Close', 'a{sv}', {})
    finally:
        a.close()
