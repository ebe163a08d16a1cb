# SPDX-License-Identifier: LGPL-2.1-or-later
"""Internal snapshots over the bus (Image.Snapshots, SnapshotCount,
CreateSnapshot, DeleteSnapshot, ApplySnapshot; docs/dbus-api.md), with
qemu-img as the oracle, and the `direct-fd` of Resize and Repair:

- CreateSnapshot makes a snapshot `qemu-img snapshot -l` lists under the
  same name; the Image's Snapshots property lists it (id, name, date, disk
  size) and SnapshotCount counts it; ApplySnapshot brings back the data the
  disk held when it was taken (and its size); DeleteSnapshot removes it;
  `qemu-img check` finds the image clean after each step;
- refused: a read-only disk (ReadOnly), a format without snapshots
  (NotSupported), an image below the top (InvalidArgs), an unknown
  snapshot (InvalidArgument), a name beyond 255 bytes or an empty id
  (InvalidArgs), another uid without manage-other-user (AccessDenied),
  `modify` not granted (AccessDenied), the Disk running an operation or
  being the target of another Disk's (Busy); nothing changes in the file then;
- `direct-fd` of Resize and Repair (Disk and Image forms): the written
  image's file opened O_DIRECT works; a twin of another file fails the
  Operation with BadFileDescriptor, leaving the file as it was.
"""

import os
import shutil
import subprocess
import time

import pytest

from harness import (A_MODIFY, A_OPEN, ACCESS_DENIED, DISK, ERR, IMAGE, INVALID_ARGS, OPERATION, REGIONS, UID_A,
                     UID_B, MiB, Open, T, expect_error, finished_ok, frozen_fs, open_disk, unique, wait_until)

VDISK_ENV = dict(daemon_args=['--workers=2'])

BAD_FD = ERR + 'BadFileDescriptor'
BUSY = ERR + 'Busy'
READ_ONLY = ERR + 'ReadOnly'
NOT_SUPPORTED = ERR + 'NotSupported'
INVALID_ARGUMENT = ERR + 'InvalidArgument'
SIZE = 8 * MiB

needs_qemu = pytest.mark.skipif(not shutil.which('qemu-img') or not shutil.which('qemu-io'),
                                reason='qemu-img/qemu-io not installed')


@pytest.fixture(scope='module')
def clients(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return {UID_A: env.agent(UID_A, 'A'), UID_B: env.agent(UID_B, 'B')}


@pytest.fixture(autouse=True)
def policy(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    yield
    for f in env.freezers:
        f.thaw()
    assert env.daemon.alive(), f'vdiskd died:\n{env.daemon.output()[-4000:]}'


def qcow2(env, size=SIZE):
    """A qcow2 image of uid A made by qemu-img, 1 MiB of 0x11 at 0."""
    p = env.path(UID_A, unique('s') + '.qcow2')
    env.qemu_img('create', '-q', '-f', 'qcow2', p, str(size))
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 1M', str(p)], check=True,
                   stdout=subprocess.DEVNULL)
    env.chown(p, UID_A)
    return p


def qemu_snapshots(env, path):
    """(id, name) of each snapshot `qemu-img snapshot -l` lists."""
    out = env.qemu_img('snapshot', '-l', path).stdout.splitlines()
    rows = []
    for line in out:
        f = line.split()
        if len(f) >= 2 and f[0].isdigit():
            rows.append((f[0], f[1]))
    return rows


def top_image(env, d):
    return env.watcher.get(d, DISK, 'Images')[-1]


def snapshots(env, img):
    return [tuple(s) for s in env.watcher.get(img, IMAGE, 'Snapshots')]


@needs_qemu
def test_create_apply_delete(env, clients):
    a = clients[UID_A]
    p = qcow2(env)
    d = open_disk(env, a, [p], fmt='QCOW2', name=p.name)
    img = top_image(env, d)
    assert env.watcher.get(img, IMAGE, 'SnapshotCount') == 0
    assert snapshots(env, img) == []
    # Explicit: not in GetAll (so not in GetManagedObjects either).
    assert 'Snapshots' not in env.watcher.get_all(img, IMAGE)

    since = env.watcher.mark()
    t0 = time.time()
    a.image(img, 'CreateSnapshot', 'sa{sv}', 'before', {})
    t1 = time.time()
    # Signalled: Snapshots invalidated, SnapshotCount with its new value.
    [changed] = env.watcher.wait(lambda evs: [e[4] for e in evs if e[0] > since and e[1] == img and
                                              e[3] == 'PropertiesChanged' and 'Snapshots' in e[4][2]],
                                 30, 'Snapshots invalidated')
    assert changed[1]['SnapshotCount'] == 1 and 'Snapshots' not in changed[1]
    assert qemu_snapshots(env, p) == [('1', 'before')]
    env.qemu_img('check', '-f', 'qcow2', p)
    assert env.watcher.get(img, IMAGE, 'SnapshotCount') == 1
    [(sid, name, vmstate, date_us, vmclock, dsize, icount)] = snapshots(env, img)
    assert (sid, name, vmstate, vmclock, dsize, icount) == ('1', 'before', 0, 0, SIZE, 0)   # qemu-img records 0 too
    assert int(t0) * 1000000 <= date_us <= (int(t1) + 1) * 1000000

    # New data, a second snapshot (names need not be unique in qemu; ids are).
    a.disk(d, 'Write', 'taya{sv}', 0, bytes([0x22]) * 65536, {})
    a.image(img, 'CreateSnapshot', 'sa{sv}', 'after', {})
    assert qemu_snapshots(env, p) == [('1', 'before'), ('2', 'after')]
    env.qemu_img('check', '-f', 'qcow2', p)
    assert [s[:2] for s in snapshots(env, img)] == [('1', 'before'), ('2', 'after')]

    # Apply by name: the data of the first snapshot is back.
    a.image(img, 'ApplySnapshot', 'sa{sv}', 'before', {})
    assert a.disk(d, 'Read', 'tua{sv}', 0, 65536, {}) == bytes([0x11]) * 65536
    env.qemu_img('check', '-f', 'qcow2', p)
    # ... and by id the second one's.
    a.image(img, 'ApplySnapshot', 'sa{sv}', '2', {})
    assert a.disk(d, 'Read', 'tua{sv}', 0, 65536, {}) == bytes([0x22]) * 65536

    # Unknown: InvalidArgument, nothing changes.
    expect_error(INVALID_ARGUMENT, a.image, img, 'ApplySnapshot', 'sa{sv}', 'nope', {})
    expect_error(INVALID_ARGUMENT, a.image, img, 'DeleteSnapshot', 'sa{sv}', '7', {})
    assert qemu_snapshots(env, p) == [('1', 'before'), ('2', 'after')]

    a.image(img, 'DeleteSnapshot', 'sa{sv}', '1', {})
    assert qemu_snapshots(env, p) == [('2', 'after')]
    env.qemu_img('check', '-f', 'qcow2', p)
    assert env.watcher.get(img, IMAGE, 'SnapshotCount') == 1
    a.image(img, 'DeleteSnapshot', 'sa{sv}', 'after', {})
    assert qemu_snapshots(env, p) == []
    assert snapshots(env, img) == []
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', '-f', 'qcow2', p)
    r = subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'read -P 0x22 0 64k', str(p)], stdout=subprocess.PIPE,
                       text=True, check=True)
    assert 'Pattern verification failed' not in r.stdout


@needs_qemu
def test_apply_restores_size_and_open_lists(env, clients):
    """A snapshot of a smaller disk: Apply gives the disk its size back (Disk
    Size follows); opening an image made by qemu-img lists its snapshots."""
    a = clients[UID_A]
    p = qcow2(env)
    env.qemu_img('snapshot', '-c', 'small', p)
    env.qemu_img('resize', '-f', 'qcow2', p, str(2 * SIZE))
    d = open_disk(env, a, [p], fmt='QCOW2', name=p.name)
    img = top_image(env, d)
    assert [s[:2] for s in snapshots(env, img)] == [('1', 'small')]
    assert snapshots(env, img)[0][5] == SIZE
    assert env.watcher.get(d, DISK, 'Size') == 2 * SIZE
    a.image(img, 'ApplySnapshot', 'sa{sv}', 'small', {})
    assert env.watcher.get(d, DISK, 'Size') == SIZE
    assert env.watcher.get(img, IMAGE, 'Size') == SIZE
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', '-f', 'qcow2', p)
    assert 'virtual size: 8 MiB' in env.qemu_img('info', '-f', 'qcow2', p).stdout


@needs_qemu
def test_refused(env, clients):
    a, b = clients[UID_A], clients[UID_B]
    p = qcow2(env)
    env.qemu_img('snapshot', '-c', 'keep', p)
    before = p.read_bytes()

    # Read-only disk: every change is ReadOnly; the listing works.
    d = open_disk(env, a, [p], fmt='QCOW2', name=p.name, flags=os.O_RDONLY)
    img = top_image(env, d)
    assert [s[:2] for s in snapshots(env, img)] == [('1', 'keep')]
    expect_error(READ_ONLY, a.image, img, 'CreateSnapshot', 'sa{sv}', 'x', {})
    expect_error(READ_ONLY, a.image, img, 'ApplySnapshot', 'sa{sv}', 'keep', {})
    expect_error(READ_ONLY, a.image, img, 'DeleteSnapshot', 'sa{sv}', 'keep', {})
    a.disk(d, 'Close', 'a{sv}', {})
    assert p.read_bytes() == before

    # Arguments, in the call.
    d = open_disk(env, a, [p], fmt='QCOW2', name=p.name)
    img = top_image(env, d)
    expect_error(INVALID_ARGS, a.image, img, 'CreateSnapshot', 'sa{sv}', 'n' * 256, {})
    expect_error(INVALID_ARGS, a.image, img, 'DeleteSnapshot', 'sa{sv}', '', {})
    expect_error(INVALID_ARGS, a.image, img, 'ApplySnapshot', 'sa{sv}', 'keep', {'bogus': T('b', True)})
    # Another uid: AccessDenied (manage-other-user is not granted).
    e = expect_error(ACCESS_DENIED, b.image, img, 'DeleteSnapshot', 'sa{sv}', 'keep', {})
    assert str(env.tmp) not in e.message
    expect_error(ACCESS_DENIED, b.image, img, 'CreateSnapshot', 'sa{sv}', 'theirs', {})
    # A name of 255 bytes is fine.
    a.image(img, 'CreateSnapshot', 'sa{sv}', 'n' * 255, {})
    assert qemu_snapshots(env, p)[0] == ('1', 'keep')
    assert snapshots(env, img)[1][1] == 'n' * 255
    a.image(img, 'DeleteSnapshot', 'sa{sv}', 'n' * 255, {})
    a.disk(d, 'Close', 'a{sv}', {})
    assert qemu_snapshots(env, p) == [('1', 'keep')]
    env.qemu_img('check', '-f', 'qcow2', p)

    # A format without snapshots.
    v = env.make_vdi(UID_A, unique('v') + '.vdi', SIZE, REGIONS)
    d = open_disk(env, a, [v], name=v.name)
    img = top_image(env, d)
    assert env.watcher.get(img, IMAGE, 'SnapshotCount') == 0
    e = expect_error(NOT_SUPPORTED, a.image, img, 'CreateSnapshot', 'sa{sv}', 'x', {})
    assert 'snapshot' in e.message
    a.disk(d, 'Close', 'a{sv}', {})

    # An image below the top: InvalidArgs (the library changes the top's).
    top = env.path(UID_A, unique('top') + '.qcow2')
    env.qemu_img('create', '-q', '-f', 'qcow2', '-b', p.name, '-F', 'qcow2', top)
    env.chown(top, UID_A)
    d = open_disk(env, a, [top], fmt='QCOW2', name=top.name,
                  options={'files': T('a{sh}', {p.name: Open(p, os.O_RDWR)})})
    base_img = env.watcher.get(d, DISK, 'Images')[0]
    e = expect_error(INVALID_ARGS, a.image, base_img, 'DeleteSnapshot', 'sa{sv}', 'keep', {})
    assert 'top' in e.message
    a.disk(d, 'Close', 'a{sv}', {})
    assert qemu_snapshots(env, p) == [('1', 'keep')]


def direct(path):
    return T('h', Open(path, os.O_WRONLY | os.O_DIRECT))


def test_direct_fd_resize_repair(env, clients):
    a = clients[UID_A]
    other = env.make_vdi(UID_A, unique('o') + '.vdi', SIZE, REGIONS)

    # Resize: another file's twin fails the Operation, the file as it was.
    v = env.make_vdi(UID_A, unique('r') + '.vdi', SIZE, REGIONS)
    d = open_disk(env, a, [v], name=v.name)
    before = v.read_bytes()
    op = a.disk(d, 'Resize', 'ta{sv}', 2 * SIZE, {'direct-fd': direct(other)})
    with pytest.raises(Exception) as ei:
        a.wait_op(op)
    assert getattr(ei.value, 'name', '') == BAD_FD, ei.value
    assert v.read_bytes() == before
    assert env.watcher.get(d, DISK, 'Size') == SIZE
    # Without O_DIRECT: the call.
    e = expect_error(BAD_FD, a.disk, d, 'Resize', 'ta{sv}', 2 * SIZE, {'direct-fd': T('h', Open(v, os.O_RDWR))})
    assert 'direct-fd' in e.message, e.message
    finished_ok(env, a, a.disk(d, 'Resize', 'ta{sv}', 2 * SIZE, {'direct-fd': direct(v)}))
    assert env.watcher.get(d, DISK, 'Size') == 2 * SIZE

    # Repair (Disk and Image forms), dry run too.
    op = a.disk(d, 'Repair', 'ua{sv}', 0, {'direct-fd': direct(other)})
    with pytest.raises(Exception) as ei:
        a.wait_op(op)
    assert getattr(ei.value, 'name', '') == BAD_FD, ei.value
    p = finished_ok(env, a, a.disk(d, 'Repair', 'ua{sv}', 0, {'direct-fd': direct(v)}))
    assert p['Result']['corruptions'] == 0
    img = top_image(env, d)
    finished_ok(env, a, a.image(img, 'Repair', 'a{sv}', {'direct-fd': direct(v), 'dry-run': T('b', True)}))
    finished_ok(env, a, a.image(img, 'Repair', 'a{sv}', {'direct-fd': direct(v)}))
    assert a.disk(d, 'Read', 'tua{sv}', REGIONS[0][0], 4096, {}) == bytes([REGIONS[0][2]]) * 4096
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', '-f', 'vdi', v)
    assert f'virtual size: {2 * SIZE // MiB} MiB' in env.qemu_img('info', '-f', 'vdi', v).stdout


@needs_qemu
def test_needs_modify(env, clients):
    """The snapshot methods ask `modify` (detail operation create-snapshot,
    ...): with only `open` granted they are AccessDenied, the file untouched;
    the listing (a property read of one's own Image) needs nothing."""
    a = clients[UID_A]
    p = qcow2(env)
    env.qemu_img('snapshot', '-c', 'keep', p)
    d = open_disk(env, a, [p], fmt='QCOW2', name=p.name)
    img = top_image(env, d)
    before = p.read_bytes()
    env.polkit.allow(A_OPEN)
    for method, arg in (('CreateSnapshot', 'x'), ('ApplySnapshot', 'keep'), ('DeleteSnapshot', 'keep')):
        expect_error(ACCESS_DENIED, a.image, img, method, 'sa{sv}', arg, {})
    assert [s[:2] for s in a.get(img, IMAGE, 'Snapshots')] == [('1', 'keep')]
    env.polkit.allow(A_OPEN, A_MODIFY)
    a.disk(d, 'Close', 'a{sv}', {})
    assert p.read_bytes() == before


@needs_qemu
def test_busy(env, clients):
    """While a CopyTo from the qcow2 Disk into a Disk on a frozen file system
    runs, both Disks are busy: the snapshot methods of either's image are
    Busy and the file is untouched; after the thaw they work."""
    a = clients[UID_A]
    frz = frozen_fs(env)
    p = qcow2(env)
    tpath = frz.dirs[UID_A] / (unique('frz') + '.vdi')
    tpath.write_bytes(env.make_vdi(UID_A, unique('t') + '.vdi', SIZE, REGIONS).read_bytes())
    env.chown(tpath, UID_A)
    ds = open_disk(env, a, [p], fmt='QCOW2', name=p.name)
    dt = open_disk(env, a, [tpath], name=tpath.name)
    src_img, tgt_img = top_image(env, ds), top_image(env, dt)
    before = p.read_bytes()
    frz.freeze()
    op = a.disk(ds, 'CopyTo', 'oa{sv}', dt, {})
    wait_until(lambda: env.watcher.get(op, OPERATION, 'State') == 'running', 60, 'the CopyTo to run')
    expect_error(BUSY, a.image, src_img, 'CreateSnapshot', 'sa{sv}', 'x', {})
    expect_error(BUSY, a.image, src_img, 'DeleteSnapshot', 'sa{sv}', '1', {})
    expect_error(BUSY, a.image, tgt_img, 'CreateSnapshot', 'sa{sv}', 'x', {})
    assert p.read_bytes() == before
    frz.thaw()
    finished_ok(env, a, op)
    a.image(src_img, 'CreateSnapshot', 'sa{sv}', 'x', {})
    for d in (ds, dt):
        a.disk(d, 'Close', 'a{sv}', {})
    assert qemu_snapshots(env, p) == [('1', 'x')]
    env.qemu_img('check', '-f', 'qcow2', p)
