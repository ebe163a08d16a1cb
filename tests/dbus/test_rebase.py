# SPDX-License-Identifier: LGPL-2.1-or-later
"""Disk.Rebase (docs/dbus-api.md): qemu-img rebase through the bus.

- a VDI diff and a qcow2 top rebased onto a new base (another Disk of the
  caller, opened from its own descriptors): qemu-img finds the top clean,
  linked to the new base, and reading what the old chain read;
- onto nothing ("/"): the top alone holds what the chain read;
- unsafe: the link alone (the content then follows the new base);
- a Cancel while the worker is blocked in a write into the top (on a frozen
  file system): the top still names its old parent and the chain reads as
  before, which the Operation's ErrorMessage says (as for a failure);
- another uid can neither rebase the caller's Disk nor name it as the new
  chain; options are checked; a new chain holding the top fails the
  Operation with ChainBroken; a qcow2 top without parent-name with
  InvalidArgument.
"""

import os
import re
import shutil

import pytest

from harness import (ACCESS_DENIED, DISK, ERR, INVALID_ARGS, OPERATION, UID_A, UID_B, MiB, Open,
                     T, expect_error, finished_ok, frozen_fs, op_props, open_disk, unique, wait_until)

SIZE = 8 * MiB
CANCELLED = ERR + 'Cancelled'
READ_ONLY = ERR + 'ReadOnly'
OLD = ((0, 65536, 0x11), (3 * MiB + 512, 100000, 0x22), (6 * MiB, MiB, 0x33))
NEW = ((0, 65536, 0x11), (5 * MiB, 4096, 0x44))

pytestmark = pytest.mark.usefixtures('policy')


def chain_vdi(env):
    """old.vdi <- top.vdi (written through the bus later), and new.vdi."""
    old = env.make_vdi(UID_A, unique('old') + '.vdi', SIZE, OLD)
    new = env.make_vdi(UID_A, unique('new') + '.vdi', SIZE, NEW)
    top = env.make_vdi_diff(UID_A, unique('top') + '.vdi', old)
    return old, new, top


def flat(env, top):
    """What the chain of `top` reads, as a raw file (vdisk-img: qemu-img
    does not open VDI differencing images)."""
    raw = env.tmp / (unique('flat') + '.raw')
    env.vdisk_img('convert', '-O', 'raw', top, raw)
    return raw


def reads_as(env, top, raw):
    """The chain of the VDI `top` is valid and reads as `raw`: vdisk-img
    check, then qemu-img compare of its flattened content."""
    env.vdisk_img('check', top)
    env.qemu_img('compare', '-f', 'raw', '-F', 'raw', flat(env, top), raw)


def parent_uuid(env, path):
    out = env.vdisk_img('info', path).stdout
    m = re.search(r'^Parent UUID: (\S+)', out, re.M)
    return m.group(1) if m else None


def uuid(env, path):
    return re.search(r'^UUID: (\S+)', env.vdisk_img('info', path).stdout, re.M).group(1)


def rebase(a, d, backing, **opts):
    return a.disk(d, 'Rebase', 'oa{sv}', backing, {k.replace('_', '-'): v for k, v in opts.items()})


def test_rebase_vdi(env, clients):
    a = clients[UID_A]
    old, new, top = chain_vdi(env)
    d = open_disk(env, a, [old, top], name='top')
    a.disk(d, 'Write', 'taya{sv}', 3 * MiB, bytes([0x55]) * 8192, {})
    a.disk(d, 'Flush', 'a{sv}', {})
    before = flat(env, top)
    n = open_disk(env, a, [new], name='new', flags=os.O_RDONLY)

    p = finished_ok(env, a, rebase(a, d, n))
    assert p['Kind'] == 'rebase' and p['BytesTotal'] == SIZE, p
    assert env.watcher.get(n, DISK, 'Operation') == '/'
    # the Disk still reads what it read
    assert a.disk(d, 'Read', 'tua{sv}', 6 * MiB, 512, {}) == bytes([0x33]) * 512
    for x in (d, n):
        a.disk(x, 'Close', 'a{sv}', {})
    assert parent_uuid(env, top) == uuid(env, new)
    reads_as(env, top, before)


def test_rebase_qcow2(env, clients):
    a = clients[UID_A]
    paths = {}
    for name, regions in (('old', OLD), ('new', NEW)):
        raw = env.make_raw(UID_A, unique(name) + '.raw', SIZE, regions=regions)
        paths[name] = env.path(UID_A, unique(name) + '.qcow2')
        env.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw, paths[name])
        env.chown(paths[name], UID_A)
    top = env.path(UID_A, unique('top') + '.qcow2')
    env.qemu_img('create', '-f', 'qcow2', '-b', paths['old'].name, '-F', 'qcow2', top)
    env.run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x66 6M 64k', top)
    env.chown(top, UID_A)
    before = env.tmp / (unique('flat') + '.raw')
    env.qemu_img('convert', '-O', 'raw', top, before)
    d = open_disk(env, a, [paths['old'], top], fmt='QCOW2', name='top')
    n = open_disk(env, a, [paths['new']], fmt='QCOW2', name='new', flags=os.O_RDONLY)

    # a top that names its parent needs the name
    op = rebase(a, d, n)
    with pytest.raises(Exception) as ei:
        a.wait_op(op)
    assert getattr(ei.value, 'name', None) == ERR + 'InvalidArgument', ei.value
    assert 'name' in getattr(ei.value, 'message', str(ei.value)), ei.value
    env.qemu_img('compare', '-F', 'raw', top, before)

    finished_ok(env, a, rebase(a, d, n, parent_name=T('s', paths['new'].name)))
    for x in (d, n):
        a.disk(x, 'Close', 'a{sv}', {})
    info = env.qemu_img('info', top).stdout
    assert f'backing file: {paths["new"].name}' in info, info
    assert 'backing file format: qcow2' in info, info
    env.qemu_img('check', top)
    env.qemu_img('compare', '-F', 'raw', top, before)


def test_rebase_onto_nothing_and_unsafe(env, clients):
    a = clients[UID_A]
    old, new, top = chain_vdi(env)
    d = open_disk(env, a, [old, top], name='top')
    before = flat(env, top)
    finished_ok(env, a, rebase(a, d, '/'))
    a.disk(d, 'Close', 'a{sv}', {})
    assert parent_uuid(env, top) in (None, '00000000-0000-0000-0000-000000000000')
    env.qemu_img('check', '-f', 'vdi', top)
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', top, before)

    # unsafe: the link alone; the top (empty) now reads the new base
    old, new, top = chain_vdi(env)
    d = open_disk(env, a, [old, top], name='top')
    n = open_disk(env, a, [new], name='new', flags=os.O_RDONLY)
    p = finished_ok(env, a, rebase(a, d, n, unsafe=T('b', True)))
    assert p['Kind'] == 'rebase'
    for x in (d, n):
        a.disk(x, 'Close', 'a{sv}', {})
    assert parent_uuid(env, top) == uuid(env, new)
    env.qemu_img('compare', '-f', 'raw', '-F', 'vdi', flat(env, top), new)


def test_cancel_keeps_old_chain(env, clients):
    """The top on a frozen file system: the worker blocks in its first write
    into it; Cancel, thaw: cancelled, and the top still names its old parent
    and reads as before (what was copied equals what the old parent held)."""
    a = clients[UID_A]
    frz = frozen_fs(env)
    old, new, top = chain_vdi(env)
    before = flat(env, top)
    old_parent = parent_uuid(env, top)
    held = frz.dirs[UID_A] / top.name
    shutil.copy(top, held)
    os.chown(held, UID_A, UID_A)
    d = open_disk(env, a, [old, held], name='top')
    n = open_disk(env, a, [new], name='new', flags=os.O_RDONLY)
    frz.freeze()
    op = rebase(a, d, n)
    wait_until(lambda: op_props(env, op)['State'] == 'running', 60, 'the rebase runs')
    assert a.operation(op, 'Cancel') is None
    frz.thaw()
    with pytest.raises(Exception) as ei:
        a.wait_op(op)
    assert getattr(ei.value, 'name', None) == CANCELLED, ei.value
    p = op_props(env, op)
    assert p['State'] == 'cancelled' and p['Progress'] < 1.0, p
    # the message says what is left behind
    assert ei.value.message == p['ErrorMessage'] and \
        p['ErrorMessage'].endswith("' still uses its old parent"), p
    for x in (d, n):
        a.disk(x, 'Close', 'a{sv}', {})
    # back beside its parent, where vdisk-img finds it
    shutil.copy(held, top)
    assert parent_uuid(env, top) == old_parent
    reads_as(env, top, before)
    # and a rebase after it completes
    d = open_disk(env, a, [old, top], name='top')
    n = open_disk(env, a, [new], name='new', flags=os.O_RDONLY)
    finished_ok(env, a, rebase(a, d, n))
    for x in (d, n):
        a.disk(x, 'Close', 'a{sv}', {})
    assert parent_uuid(env, top) == uuid(env, new)
    reads_as(env, top, before)


def test_refused(env, clients):
    a, b = clients[UID_A], clients[UID_B]
    old, new, top = chain_vdi(env)
    d = open_disk(env, a, [old, top], name='top')
    n = open_disk(env, a, [new], name='new', flags=os.O_RDONLY)
    other = env.make_vdi(UID_B, unique('b') + '.vdi', SIZE)
    e = open_disk(env, b, [other], name='b')
    pristine = env.tmp / (top.name + '.pristine')
    shutil.copy(top, pristine)

    # not the owner: B cannot rebase A's Disk, nor name it as its new chain
    expect_error(ACCESS_DENIED, b.disk, d, 'Rebase', 'oa{sv}', '/', {})
    expect_error(INVALID_ARGS, b.disk, e, 'Rebase', 'oa{sv}', n, {})
    # this Disk itself, unknown options, a read-only Disk
    expect_error(INVALID_ARGS, a.disk, d, 'Rebase', 'oa{sv}', d, {})
    expect_error(INVALID_ARGS, a.disk, d, 'Rebase', 'oa{sv}', n, {'strict': T('b', True)})
    expect_error(INVALID_ARGS, a.disk, d, 'Rebase', 'oa{sv}', n, {'parent-name': T('s', '')})
    expect_error(READ_ONLY, a.disk, n, 'Rebase', 'oa{sv}', '/', {})
    # a new chain that holds the top itself: the Operation fails, nothing written
    loop = open_disk(env, a, [old, top], name='loop', flags=os.O_RDONLY)
    with pytest.raises(Exception) as ei:
        a.wait_op(rebase(a, d, loop))
    assert getattr(ei.value, 'name', None) == ERR + 'ChainBroken', ei.value
    assert 'own ancestor' in ei.value.message and \
        ei.value.message.endswith("' still uses its old parent"), ei.value.message
    a.disk(loop, 'Close', 'a{sv}', {})
    for x in (d, n):
        a.disk(x, 'Close', 'a{sv}', {})
    b.disk(e, 'Close', 'a{sv}', {})
    env.run('cmp', top, pristine)
