# SPDX-License-Identifier: LGPL-2.1-or-later
"""Authorization (docs/dbus-api.md "Ownership and authorization", docs/polkit.md)
against the real vdiskd in system mode (uid 61001) with python-dbusmock's
polkitd template:

- every Manager/Disk/Image method, called by a client uid that owns the
  object: denied when polkit refuses exactly the method's action (AccessDenied,
  nothing changes), working when polkit allows exactly that action;
- the same methods on another uid's Disk/Image: the method's action alone is
  not enough, manage-other-user is checked in addition;
- Operation.Wait of one's own operation needs nothing (another uid's: manage-other-user); Cancel/Dismiss of one's own operation need
  nothing, of another uid's operation need cancel-other-user;
- root and the daemon's own uid bypass polkit (polkit denying everything);
- polkit hanging (SimulateHang) on one call: others are still served, and the
  parked call completes after ReleaseHangingCalls; slow polkit (SetDelay);
  polkit gone: AccessDenied.
"""

import os

import pytest

from harness import (A_CANCEL_OTHER, A_MODIFY, A_OPEN, A_OTHER, ACCESS_DENIED, ALL_ACTIONS, DISK, ERR,
                     IMAGE, MANAGER, MiB, REGIONS, ROOT_PATH, UID_A, UID_B, UID_DAEMON, Open,
                     RemoteDBusError, disk_images, expect_error, finished_ok, open_disk, unique,
                     wait_until)

VDISK_ENV = dict(daemon_args=['--workers=2'])

SIZE = 8 * MiB


# ---------------------------------------------------------------------------
# one case per method: setup (as the owner, polkit allowing everything), the
# call (as the caller), and a check of the result when it is allowed.

class Ctx:
    def __init__(self, env, owner, caller, owner_uid, caller_uid):
        self.env = env
        self.owner = owner
        self.caller = caller
        self.owner_uid = owner_uid
        self.caller_uid = caller_uid

    def vdi(self, uid=None, regions=REGIONS):
        return self.env.make_vdi(uid if uid is not None else self.owner_uid, unique('img') + '.vdi', SIZE, regions)

    def disk(self, layers=1):
        paths = [self.vdi()]
        for _ in range(layers - 1):
            paths.append(self.env.make_vdi_diff(self.owner_uid, unique('diff') + '.vdi', paths[-1]))
        d = open_disk(self.env, self.owner, paths, name=unique('disk'))
        return d, paths

    def empty(self, uid=None):
        return self.env.empty_file(uid if uid is not None else self.caller_uid, unique('new') + '.vdi')


def op_done(ctx, op):
    finished_ok(ctx.env, ctx.caller, op)


def setup_manager(ctx):
    return {'file': ctx.vdi(ctx.caller_uid)}


def c_probe(ctx, s):
    return ctx.caller.manager('ProbeFormat', 'ha{sv}', Open(s['file'], os.O_RDONLY), {})


def k_probe(ctx, s, r):
    fmt, media, info = r
    assert (fmt, media) == ('VDI', 'hdd')
    assert info['size'] == SIZE and info['needs-parent'] is False


def c_create_disk(ctx, s):
    return ctx.caller.manager('CreateDisk', 'a{sv}', {'display-name': 'created'})


def k_create_disk(ctx, s, r):
    assert ctx.env.watcher.get(r, DISK, 'OwnerUID') == ctx.caller_uid
    assert ctx.env.watcher.get(r, DISK, 'Images') == []


def c_open_disk(ctx, s):
    return ctx.caller.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(s['file'], os.O_RDWR), 'VDI', {})],
                              {'display-name': 'opened'})


def k_open_disk(ctx, s, r):
    assert len(ctx.env.watcher.get(r, DISK, 'Images')) == 1
    assert ctx.env.watcher.get(r, DISK, 'Size') == SIZE


def setup_empty_disk(ctx):
    d = ctx.owner.manager('CreateDisk', 'a{sv}', {'display-name': unique('empty')})
    return {'disk': d, 'file': ctx.vdi(ctx.caller_uid), 'new': ctx.empty()}


def setup_disk1(ctx):
    d, paths = ctx.disk(1)
    return {'disk': d, 'paths': paths, 'image': disk_images(ctx.env, d)[0], 'new': ctx.empty()}


def setup_disk2(ctx):
    d, paths = ctx.disk(2)
    return {'disk': d, 'paths': paths, 'images': disk_images(ctx.env, d)}


def c_disk_open(ctx, s):
    return ctx.caller.disk(s['disk'], 'Open', 'hsa{sv}', Open(s['file'], os.O_RDWR), '', {})


def k_disk_open(ctx, s, r):
    assert ctx.env.watcher.get(s['disk'], DISK, 'Images') == [r]


def c_create_base(ctx, s):
    return ctx.caller.disk(s['disk'], 'CreateBase', 'hsta{sv}', Open(s['new'], os.O_RDWR), 'VDI', SIZE, {})


def k_create_base(ctx, s, r):
    op_done(ctx, r)
    ctx.env.qemu_img('check', '-f', 'vdi', s['new'])


def c_create_diff(ctx, s):
    return ctx.caller.disk(s['disk'], 'CreateDiff', 'hsa{sv}', Open(s['new'], os.O_RDWR), 'VDI', {})


def k_create_diff(ctx, s, r):
    op_done(ctx, r)
    assert len(ctx.env.watcher.get(s['disk'], DISK, 'Images')) == 2


def c_close(ctx, s):
    return ctx.caller.disk(s['disk'], 'Close', 'a{sv}', {})


def k_close(ctx, s, r):
    assert not ctx.env.watcher.exists(s['disk'])


def c_copy(ctx, s):
    return ctx.caller.disk(s['disk'], 'Copy', 'hsa{sv}', Open(s['new'], os.O_RDWR), 'VDI', {})


def k_copy(ctx, s, r):
    op_done(ctx, r)
    ctx.env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', s['paths'][0], s['new'])


def c_merge(ctx, s):
    return ctx.caller.disk(s['disk'], 'Merge', 'uua{sv}', 1, 0, {})


def k_merge(ctx, s, r):
    op_done(ctx, r)
    assert ctx.env.watcher.get(s['disk'], DISK, 'Images') == s['images'][:1]


def c_compact(ctx, s):
    return ctx.caller.disk(s['disk'], 'Compact', 'ua{sv}', 0, {})


def c_resize(ctx, s):
    return ctx.caller.disk(s['disk'], 'Resize', 'ta{sv}', 2 * SIZE, {})


def k_resize(ctx, s, r):
    op_done(ctx, r)
    assert ctx.env.watcher.get(s['disk'], DISK, 'Size') == 2 * SIZE


def c_check(ctx, s):
    return ctx.caller.disk(s['disk'], 'Check', 'ua{sv}', 0, {})


def k_check(ctx, s, r):
    p = finished_ok(ctx.env, ctx.caller, r)
    assert p['Result'].get('corruptions', 0) == 0, p['Result']


def c_repair(ctx, s):
    return ctx.caller.disk(s['disk'], 'Repair', 'ua{sv}', 0, {'dry-run': True})


def c_flush(ctx, s):
    return ctx.caller.disk(s['disk'], 'Flush', 'a{sv}', {})


def c_read(ctx, s):
    return ctx.caller.disk(s['disk'], 'Read', 'tua{sv}', 0, 4096, {})


def k_read(ctx, s, r):
    assert r == b'\x11' * 4096


def c_write(ctx, s):
    return ctx.caller.disk(s['disk'], 'Write', 'taya{sv}', 8192, b'\x5a' * 4096, {})


def k_write(ctx, s, r):
    assert ctx.owner.disk(s['disk'], 'Read', 'tua{sv}', 8192, 4096, {}) == b'\x5a' * 4096


def c_discard(ctx, s):
    return ctx.caller.disk(s['disk'], 'Discard', 'tta{sv}', 0, 1 * MiB, {})


def k_discard(ctx, s, r):
    assert ctx.owner.disk(s['disk'], 'Read', 'tua{sv}', 0, 65536, {}) == bytes(65536)


def c_set_comment(ctx, s):
    return ctx.caller.image(s['image'], 'SetComment', 'sa{sv}', 'hello', {})


def k_set_comment(ctx, s, r):
    assert ctx.env.watcher.get(s['image'], IMAGE, 'Comment') == 'hello'


NEW_UUID = '01234567-89ab-cdef-0123-456789abcdef'


def c_set_uuids(ctx, s):
    return ctx.caller.image(s['image'], 'SetUuids', 'a{ss}a{sv}', {'uuid': NEW_UUID}, {})


def k_set_uuids(ctx, s, r):
    assert ctx.env.watcher.get(s['image'], IMAGE, 'Uuid') == NEW_UUID


def k_none(ctx, s, r):
    assert r is None


def k_op(ctx, s, r):
    op_done(ctx, r)


# (name, action, setup, call, check, on another uid's object?)
CASES = [
    ('Manager.ProbeFormat', A_OPEN, setup_manager, c_probe, k_probe, False),
    ('Manager.CreateDisk', A_OPEN, setup_manager, c_create_disk, k_create_disk, False),
    ('Manager.OpenDisk', A_OPEN, setup_manager, c_open_disk, k_open_disk, False),
    ('Disk.Open', A_OPEN, setup_empty_disk, c_disk_open, k_disk_open, True),
    ('Disk.CreateBase', A_MODIFY, setup_empty_disk, c_create_base, k_create_base, True),
    ('Disk.CreateDiff', A_MODIFY, setup_disk1, c_create_diff, k_create_diff, True),
    ('Disk.Close', A_OPEN, setup_disk1, c_close, k_close, True),
    ('Disk.Copy', A_MODIFY, setup_disk1, c_copy, k_copy, True),
    ('Disk.Merge', A_MODIFY, setup_disk2, c_merge, k_merge, True),
    ('Disk.Compact', A_MODIFY, setup_disk1, c_compact, k_op, True),
    ('Disk.Resize', A_MODIFY, setup_disk1, c_resize, k_resize, True),
    ('Disk.Check', A_OPEN, setup_disk1, c_check, k_check, True),
    ('Disk.Repair', A_MODIFY, setup_disk1, c_repair, k_op, True),
    ('Disk.Flush', A_MODIFY, setup_disk1, c_flush, k_none, True),
    ('Disk.Read', A_OPEN, setup_disk1, c_read, k_read, True),
    ('Disk.Write', A_MODIFY, setup_disk1, c_write, k_write, True),
    ('Disk.Discard', A_MODIFY, setup_disk1, c_discard, k_discard, True),
    ('Image.SetComment', A_MODIFY, setup_disk1, c_set_comment, k_set_comment, True),
    ('Image.SetUuids', A_MODIFY, setup_disk1, c_set_uuids, k_set_uuids, True),
]
IDS = [c[0] for c in CASES]
OTHER_CASES = [c for c in CASES if c[5]]
OTHER_IDS = [c[0] for c in OTHER_CASES]


def objects(env):
    return set(env.watcher.managed_objects())


def run_denied(env, ctx, setup, call, allowed):
    env.polkit.allow_all()
    s = setup(ctx)
    env.polkit.allow(*allowed)
    before = objects(env)
    e = expect_error(ACCESS_DENIED, call, ctx, s)
    assert str(env.tmp) not in e.message
    assert objects(env) == before, 'a refused call changed the objects on the bus'


def run_allowed(env, ctx, setup, call, check, allowed):
    env.polkit.allow_all()
    s = setup(ctx)
    env.polkit.allow(*allowed)
    r = call(ctx, s)
    env.polkit.allow_all()   # the checks read back through the bus
    check(ctx, s, r)


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_own_object_denied(env, clients, polkit, daemon_alive, case):
    """polkit refuses the method's action (and allows every other one)."""
    name, action, setup, call, check, _ = case
    ctx = Ctx(env, clients[UID_A], clients[UID_A], UID_A, UID_A)
    run_denied(env, ctx, setup, call, [a for a in ALL_ACTIONS if a != action])


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_own_object_allowed(env, clients, polkit, daemon_alive, case):
    """polkit allows exactly the method's action: the method works."""
    name, action, setup, call, check, _ = case
    ctx = Ctx(env, clients[UID_A], clients[UID_A], UID_A, UID_A)
    run_allowed(env, ctx, setup, call, check, [action])


@pytest.mark.parametrize('case', OTHER_CASES, ids=OTHER_IDS)
def test_other_user_denied(env, clients, polkit, daemon_alive, case):
    """B on A's Disk/Image: the method's action alone is refused, and so is
    manage-other-user alone (the method's own action is checked first)."""
    name, action, setup, call, check, _ = case
    ctx = Ctx(env, clients[UID_A], clients[UID_B], UID_A, UID_B)
    run_denied(env, ctx, setup, call, [action, A_CANCEL_OTHER])
    run_denied(env, ctx, setup, call, [A_OTHER])


@pytest.mark.parametrize('case', OTHER_CASES, ids=OTHER_IDS)
def test_other_user_allowed(env, clients, polkit, daemon_alive, case):
    """B on A's Disk/Image with the method's action and manage-other-user."""
    name, action, setup, call, check, _ = case
    ctx = Ctx(env, clients[UID_A], clients[UID_B], UID_A, UID_B)
    run_allowed(env, ctx, setup, call, check, [action, A_OTHER])


# ---------------------------------------------------------------------------
# Operation methods


def finished_op(env, a):
    """A finished Check operation started by client a."""
    env.polkit.allow_all()
    ctx = Ctx(env, a, a, UID_A, UID_A)
    d, _ = ctx.disk(1)
    op = a.disk(d, 'Check', 'ua{sv}', 0, {})
    a.wait_op(op)
    return op


def test_operation_wait_own_needs_no_authorization_other_needs_manage_other_user(env, clients, polkit,
                                                                               daemon_alive):
    """Wait reads an operation's outcome (its error message may name files):
    one's own needs nothing, another uid's is a read of its object and needs
    manage-other-user, like Properties.Get on it."""
    a, b = clients[UID_A], clients[UID_B]
    op = finished_op(env, a)
    env.polkit.deny_all()
    assert a.wait_op(op) is None
    with pytest.raises(RemoteDBusError) as ei:
        b.wait_op(op)
    assert ei.value.name == ACCESS_DENIED, ei.value
    env.polkit.allow('org.vdisk.vdisk1.manage-other-user')
    assert b.wait_op(op) is None


def test_operation_cancel_own_needs_no_authorization(env, clients, polkit, daemon_alive):
    """Cancel of one's own finished operation gets past authorization (polkit
    denying everything) and fails with NotCancelable. (A real cancel of a running
    and a queued operation: test_operations.py.)"""
    a = clients[UID_A]
    op = finished_op(env, a)
    env.polkit.deny_all()
    expect_error(ERR + 'NotCancelable', a.operation, op, 'Cancel')


def test_operation_cancel_other_user(env, clients, polkit, daemon_alive):
    a, b = clients[UID_A], clients[UID_B]
    op = finished_op(env, a)
    env.polkit.allow(A_OPEN, A_MODIFY, A_OTHER)
    expect_error(ACCESS_DENIED, b.operation, op, 'Cancel')
    env.polkit.allow(A_CANCEL_OTHER)
    # authorized: it reaches the operation, which has finished
    expect_error(ERR + 'NotCancelable', b.operation, op, 'Cancel')


def test_operation_dismiss(env, clients, polkit, daemon_alive):
    a, b = clients[UID_A], clients[UID_B]
    own = finished_op(env, a)
    other = finished_op(env, a)
    env.polkit.deny_all()
    assert a.operation(own, 'Dismiss') is None
    assert not env.watcher.exists(own)
    env.polkit.allow(A_OPEN, A_MODIFY, A_OTHER)
    expect_error(ACCESS_DENIED, b.operation, other, 'Dismiss')
    assert env.watcher.exists(other)
    env.polkit.allow(A_CANCEL_OTHER)
    assert b.operation(other, 'Dismiss') is None
    assert not env.watcher.exists(other)


# ---------------------------------------------------------------------------
# root and the daemon's uid need no polkit


@pytest.mark.parametrize('uid', [0, UID_DAEMON], ids=['root', 'daemon-uid'])
def test_privileged_bypass(env, clients, polkit, daemon_alive, uid):
    """With polkit denying everything, root (and vdiskd's own uid) can use every
    kind of method, on its own objects and on another uid's."""
    a = clients[UID_A]
    p = env.agent(uid, f'priv{uid}')
    try:
        env.polkit.allow_all()
        a_disk, a_paths = Ctx(env, a, a, UID_A, UID_A).disk(1)
        a_op = finished_op(env, a)
        env.polkit.deny_all()
        env.polkit.mock.AllowUnknown(False)
        d = p.manager('CreateDisk', 'a{sv}', {'display-name': 'root-disk'})
        # root's files: in the root-only directory; the daemon-uid client uses the public one
        if uid == 0:
            new = env.empty_file(0, unique('rootnew') + '.vdi')
        else:
            new = env.pub / (unique('dnew') + '.vdi')
            new.write_bytes(b'')
            os.chown(new, uid, uid)
        op = p.disk(d, 'CreateBase', 'hsta{sv}', Open(new, os.O_RDWR), 'VDI', SIZE, {})
        finished_ok(env, p, op)
        p.disk(d, 'Write', 'taya{sv}', 0, b'\x77' * 512, {})
        assert p.disk(d, 'Read', 'tua{sv}', 0, 512, {}) == b'\x77' * 512
        img = disk_images(env, d)[0]
        p.image(img, 'SetComment', 'sa{sv}', 'by a privileged caller', {})
        assert p.manager('ProbeFormat', 'ha{sv}', Open(a_paths[0] if uid == 0 else new, os.O_RDONLY), {})[0] == 'VDI'
        # another uid's objects
        assert p.disk(a_disk, 'Read', 'tua{sv}', 0, 4096, {}) == b'\x11' * 4096
        p.disk(a_disk, 'Write', 'taya{sv}', 0, b'\x12' * 512, {})
        expect_error(ERR + 'NotCancelable', p.operation, a_op, 'Cancel')
        assert p.operation(a_op, 'Dismiss') is None
        p.disk(d, 'Close', 'a{sv}', {})
        p.disk(a_disk, 'Close', 'a{sv}', {})
    finally:
        p.close()


# ---------------------------------------------------------------------------
# polkit misbehaving


def test_polkit_hang_others_still_served(env, clients, polkit, daemon_alive):
    """SimulateHang parks A's CheckAuthorization. Meanwhile root's calls (no
    polkit), reads of the Manager's properties, root's reads of everything, and
    B's GetManagedObjects are answered (its manage-other-user question times out
    after 5 s: B gets its own objects, here none); A's call completes after
    ReleaseHangingCalls."""
    a, b = clients[UID_A], clients[UID_B]
    env.polkit.allow(A_OPEN, A_MODIFY)
    env.polkit.mock.SimulateHang(True)
    a.call_async('parked', ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}', {'display-name': 'parked'})
    wait_until(lambda: bool(env.polkit.mock.HaveHangingCalls()), 30, 'the CheckAuthorization call to park')
    root = env.agent(0, 'root-hang')
    try:
        d = root.manager('CreateDisk', 'a{sv}', {'display-name': 'while-hanging'})
        assert env.watcher.get(d, DISK, 'OwnerUID') == 0
        new = env.empty_file(0, unique('hang') + '.vdi')
        op = root.disk(d, 'CreateBase', 'hsta{sv}', Open(new, os.O_RDWR), 'VDI', SIZE, {})
        finished_ok(env, root, op)
        assert b.get(ROOT_PATH, MANAGER, 'Mode') == 'system'
        assert root.get(d, DISK, 'DisplayName') == 'while-hanging'
        assert d in root.call(ROOT_PATH, 'org.freedesktop.DBus.ObjectManager', 'GetManagedObjects', '')
        assert d not in b.call(ROOT_PATH, 'org.freedesktop.DBus.ObjectManager', 'GetManagedObjects', '')
        assert not a.has_result('parked'), 'the parked call was answered while polkit hung'
        env.polkit.mock.SimulateHang(False)
        env.polkit.mock.ReleaseHangingCalls()
        parked = a.result('parked')
        assert env.watcher.get(parked, DISK, 'DisplayName') == 'parked'
        assert env.watcher.get(parked, DISK, 'OwnerUID') == UID_A
    finally:
        root.close()


def test_polkit_hang_denied_after_release(env, clients, polkit, daemon_alive):
    """A parked check that polkit finally refuses ends in AccessDenied."""
    a = clients[UID_A]
    env.polkit.deny_all()
    env.polkit.mock.SimulateHang(True)
    a.call_async('parked-no', ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}', {})
    wait_until(lambda: bool(env.polkit.mock.HaveHangingCalls()), 30, 'the CheckAuthorization call to park')
    env.polkit.mock.SimulateHang(False)
    env.polkit.mock.ReleaseHangingCalls()
    with pytest.raises(RemoteDBusError) as ei:
        a.result('parked-no')
    assert ei.value.name == ACCESS_DENIED


def test_polkit_slow(env, clients, polkit, daemon_alive):
    """A slow polkit (SetDelay) changes nothing but the latency."""
    a = clients[UID_A]
    env.polkit.allow(A_OPEN, A_MODIFY)
    env.polkit.mock.SetDelay(0.3)
    d = a.manager('CreateDisk', 'a{sv}', {'display-name': 'slow'})
    assert env.watcher.get(d, DISK, 'OwnerUID') == UID_A
    env.polkit.mock.SetDelay(0.0)


def test_polkit_unreachable(env, clients, polkit, daemon_alive):
    """polkit not on the bus: AccessDenied (and root still works). Runs last:
    it restarts the mock."""
    a = clients[UID_A]
    env.polkit.stop()
    wait_until(lambda: env.watcher.name_owner('org.freedesktop.PolicyKit1') is None, 30, 'polkit to leave')
    try:
        expect_error(ACCESS_DENIED, a.manager, 'CreateDisk', 'a{sv}', {})
        root = env.agent(0, 'root-nopolkit')
        root.manager('CreateDisk', 'a{sv}', {})
        root.close()
    finally:
        env.start_polkit()
