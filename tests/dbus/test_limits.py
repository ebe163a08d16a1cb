# SPDX-License-Identifier: LGPL-2.1-or-later
"""Bounded state (docs/dbus-api.md "Limits"): what one user can make vdiskd
hold, and the argument checks made in the call.

- one uid fires 5,000 operations that end at once: vdiskd stays on the bus
  (whose maximum message size is set low, 1 MiB) and GetManagedObjects
  answers another uid within a second (the acceptance test of issue 10);
- finished operations are reaped oldest first, per uid and in all, and a
  Dismiss in between keeps the bookkeeping right;
- the global limits on Disks and on calls in flight (LimitsExceeded);
- Operation.Wait replies (state, error_name, error_message) like Completed,
  is counted in its caller's calls in flight while it waits, and at most
  MaxWaitsPerOperation wait on one operation;
- an argument error the library finds on the worker is
  org.vdisk.VDisk1.Error.InvalidArgument on the Operation (never InvalidArgs);
- each argument check that can be made in the call is made there:
  InvalidArgs, and no Operation appears.

Nothing waits for time to pass: the flood runs in waves (one operation per
Disk at a time, the next Check once Wait answered), the calls parked in
polkit (SimulateHang) and the Copy held on a frozen file system hold their
state for as long as the test needs.
"""

import json
import os
import subprocess

import pytest

from harness import (A_MODIFY, A_OPEN, A_OTHER, DISK, ERR, IMAGE, INVALID_ARGS, LIMITS_EXCEEDED, MANAGER, OBJMGR,
                     OPERATION, PY, ROOT_PATH, UID_A, UID_B, UNKNOWN_OBJECT, Fd, MiB, Open, T, deadline,
                     disk_images, expect_error, frozen_fs, open_disk, unique, wait_until)

# A low maximum message size: today's 5,000 lingering operations need a
# GetManagedObjects reply of several MiB, and dbus-daemon drops vdiskd's
# connection for it. Everything vdiskd can be made to hold must fit.
BUS_MAX_MESSAGE = 1 * MiB
VDISK_ENV = dict(daemon_args=['--workers=3'], bus_limits={'max_message_size': BUS_MAX_MESSAGE})

FLOOD_OPERATIONS = 5000
FLOOD_DISKS = 24                 # below MaxOperationsPerUser (32): one Check per Disk at a time


@pytest.fixture(autouse=True)
def policy(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    yield
    for f in env.freezers:       # a failed test must not leave the next one frozen
        f.thaw()
    try:
        env.polkit.mock.SimulateHang(False)
        env.polkit.mock.ReleaseHangingCalls()
    except Exception:   # noqa: BLE001
        pass
    assert env.daemon.alive(), f'vdiskd died:\n{env.daemon.output()[-4000:]}'


def restart(env, clients, *args):
    """A fresh vdiskd with these options (the clients stay connected)."""
    env.stop_daemon()
    env.start_daemon(['--workers=3'] + list(args))


def manager_props(env):
    return env.watcher.get_all(ROOT_PATH, MANAGER)


def operations_of(objects, uid=None):
    return sorted(p for p, ifaces in objects.items()
                  if OPERATION in ifaces and (uid is None or ifaces[OPERATION]['StartedByUID'] == uid))


def small_disk(env, agent, uid, name=None):
    p = env.make_vdi(uid, unique('lim') + '.vdi', 1 * MiB, [(0, 4096, 0x5a)])
    return open_disk(env, agent, [p], name=name or p.name), p


def check_op(agent, disk):
    """A Check that ends at once; returns its path after Wait."""
    op = agent.disk(disk, 'Check', 'ua{sv}', 0, {})
    assert agent.wait_op_raw(op) == ('succeeded', '', '')
    return op


# ---------------------------------------------------------------------------
# the flood


FLOOD = r'''
import json, sys
import dbus, dbus.mainloop.glib
from gi.repository import GLib

address, target, disks = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
bus = dbus.bus.BusConnection(address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
loop = GLib.MainLoop()
st = {'started': 0, 'waited': 0, 'inflight': 0, 'refused': {}, 'fatal': None}
RETRY = ('org.freedesktop.DBus.Error.LimitsExceeded', 'org.vdisk.VDisk1.Error.Busy')

def call(path, iface, method, sig, args, ok, err):
    bus.call_async('org.vdisk.VDisk1', path, iface, method, sig, args, ok, err, timeout=600)

def next_check(d):
    if st['fatal'] or st['started'] >= target:
        if st['inflight'] == 0:
            loop.quit()
        return False
    st['inflight'] += 1
    call(d, 'org.vdisk.VDisk1.Disk', 'Check', 'ua{sv}', (0, {}),
         lambda op: started(d, op), lambda e: refused(d, e))
    return False

def started(d, op):
    st['started'] += 1
    call(op, 'org.vdisk.VDisk1.Operation', 'Wait', 'a{sv}', ({},),
         lambda *r: waited(d), lambda e: waited(d))

def waited(d):
    st['waited'] += 1
    st['inflight'] -= 1
    next_check(d)

def refused(d, e):
    name = e.get_dbus_name()
    st['inflight'] -= 1
    st['refused'][name] = st['refused'].get(name, 0) + 1
    if name not in RETRY:
        st['fatal'] = f'{name}: {e.get_dbus_message()}'
    GLib.idle_add(next_check, d)

for d in disks:
    next_check(d)
loop.run()
print(json.dumps(st))
'''


PROBE = r'''
import json, sys, time
from gi.repository import Gio, GLib

address = sys.argv[1]
flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
c = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
call = Gio.DBusMessage.new_method_call('org.vdisk.VDisk1', '/org/vdisk/VDisk1',
                                       'org.freedesktop.DBus.ObjectManager', 'GetManagedObjects')
t0 = time.monotonic()
reply, _ = c.send_message_with_reply_sync(call, Gio.DBusSendMessageFlags.NONE, 60000, None)
elapsed = time.monotonic() - t0
reply.to_gerror()
NONE = Gio.DBusCapabilityFlags.NONE


def body_size(entries):
    m = Gio.DBusMessage.new_method_call('a.b', '/', 'a.b', 'c')
    if entries:
        arr = GLib.Variant.new_array(None, entries)
    else:
        arr = GLib.Variant('a{oa{sa{sv}}}', {})
    m.set_body(GLib.Variant.new_tuple(arr))
    return len(m.to_blob(NONE))


objs = reply.get_body().get_child_value(0)
empty = body_size([])
largest = {}
for i in range(objs.n_children()):
    entry = objs.get_child_value(i)
    path = entry.get_child_value(0).get_string()
    kind = path.split('/')[4] if path.count('/') >= 4 else 'manager'
    largest[kind] = max(largest.get(kind, 0), body_size([entry]) - empty)
print(json.dumps({'elapsed': elapsed, 'size': len(reply.to_blob(NONE)), 'objects': objs.n_children(),
                  'largest': largest}))
'''


def probe_managed_objects(env, uid):
    """GetManagedObjects on a fresh connection of `uid`: {elapsed (s), size
    (reply bytes on the wire), objects, largest: {kind: largest entry, bytes}}."""
    r = subprocess.run(['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups', '--', PY, '-c', PROBE,
                        env.bus.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env={'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8'},
                       cwd=str(env.tmp), timeout=deadline(120))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)



def run_flood(env, uid, disks, target):
    cmd = ['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups', '--', PY, '-c', FLOOD,
           env.bus.address, str(target)] + list(disks)
    aenv = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8', 'PYTHONDONTWRITEBYTECODE': '1'}
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=aenv, cwd=str(env.tmp),
                       timeout=deadline(300))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_flood_of_finished_operations(env, clients):
    """Acceptance: one uid fires 5,000 operations that end at once; vdiskd
    stays on the bus and GetManagedObjects answers another uid within 1 s,
    holding no more than the limits allow."""
    a, b = clients[UID_A], clients[UID_B]
    owner = env.watcher.name_owner('org.vdisk.VDisk1')
    disks = [small_disk(env, a, UID_A)[0] for _ in range(FLOOD_DISKS)]
    mark = env.watcher.mark()

    st = run_flood(env, UID_A, disks, FLOOD_OPERATIONS)
    assert st['fatal'] is None, st
    assert st['started'] >= FLOOD_OPERATIONS and st['waited'] == st['started'], st

    assert env.daemon.alive(), f'vdiskd died:\n{env.daemon.output()[-4000:]}'
    assert env.watcher.name_owner('org.vdisk.VDisk1') == owner, 'vdiskd lost its bus name'
    probe = probe_managed_objects(env, UID_B)
    print('after the flood:', probe)
    assert probe['elapsed'] < deadline(1.0), probe
    assert probe['size'] < BUS_MAX_MESSAGE // 4, probe
    # (another uid sees none of A's objects: docs/dbus-api.md "Privacy"; root counts them)
    assert operations_of(b.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '', timeout=30), UID_A) == []
    objects = env.watcher.managed_objects()
    props = manager_props(env)
    # the defaults are what the flood met
    assert props['MaxFinishedOperationsPerUser'] == 64
    assert props['MaxFinishedOperations'] == 512
    ops = operations_of(objects, UID_A)
    assert 0 < len(ops) <= props['MaxFinishedOperationsPerUser'], len(ops)
    # the newest survive, the oldest were removed (InterfacesRemoved)
    ids = sorted(int(p.rsplit('/', 1)[1]) for p in ops)
    assert ids[-1] - ids[0] < 2 * props['MaxFinishedOperationsPerUser'], ids
    def removed(events):
        n = sum(1 for e in events if e[0] > mark and e[3] == 'InterfacesRemoved' and '/operation/' in e[4][0])
        return n >= st['started'] - props['MaxFinishedOperationsPerUser']
    env.watcher.wait(removed, 60, 'InterfacesRemoved of every reaped operation')
    # still serving: a new operation works
    check_op(a, disks[0])


# ---------------------------------------------------------------------------
# reaping


def test_reaping_oldest_first(env, clients):
    """Per-uid limit 3, global limit 5: the starter's oldest finished
    operation goes when its fourth ends; past the global limit the oldest of
    all goes, whoever started it; Dismiss keeps the counts right."""
    a, b = clients[UID_A], clients[UID_B]
    restart(env, clients, '--max-finished-operations-per-user=3', '--max-finished-operations=5')
    props = manager_props(env)
    assert (props['MaxFinishedOperationsPerUser'], props['MaxFinishedOperations']) == (3, 5)
    da, _ = small_disk(env, a, UID_A)
    db, _ = small_disk(env, b, UID_B)

    mark = env.watcher.mark()
    a_ops = [check_op(a, da) for _ in range(3)]
    assert operations_of(env.watcher.managed_objects(), UID_A) == sorted(a_ops)
    a_ops.append(check_op(a, da))
    env.watcher.wait_removed(a_ops[0], since=mark)
    expect_error(UNKNOWN_OBJECT, a.get, a_ops[0], OPERATION, 'State')
    assert operations_of(env.watcher.managed_objects(), UID_A) == sorted(a_ops[1:])

    # B: 3 + 1, 3 + 2 finished: within the global limit; 3 + 3: A's oldest goes
    b_ops = [check_op(b, db) for _ in range(2)]
    objects = env.watcher.managed_objects()
    assert operations_of(objects, UID_A) == sorted(a_ops[1:]) and operations_of(objects, UID_B) == sorted(b_ops)
    b_ops.append(check_op(b, db))
    env.watcher.wait_removed(a_ops[1], since=mark)
    objects = env.watcher.managed_objects()
    assert operations_of(objects, UID_A) == sorted(a_ops[2:])
    assert operations_of(objects, UID_B) == sorted(b_ops)

    # Dismiss unlinks: B holds 2, all hold 4; B's next one is within both limits
    b.operation(b_ops[0], 'Dismiss')
    env.watcher.wait_removed(b_ops[0], since=mark)
    b_ops.append(check_op(b, db))
    assert operations_of(env.watcher.managed_objects()) == sorted(a_ops[2:] + b_ops[1:])
    # the one after exceeds B's limit only: B's oldest goes, A's stay
    b_ops.append(check_op(b, db))
    env.watcher.wait_removed(b_ops[1], since=mark)
    assert operations_of(env.watcher.managed_objects()) == sorted(a_ops[2:] + b_ops[2:])


# ---------------------------------------------------------------------------
# Disks and calls in all


def test_global_disk_limit(env, clients):
    a, b = clients[UID_A], clients[UID_B]
    restart(env, clients, '--max-disks=3', '--max-disks-per-user=2')
    assert manager_props(env)['MaxDisks'] == 3
    a1 = a.manager('CreateDisk', 'a{sv}', {})
    a.manager('CreateDisk', 'a{sv}', {})
    e = expect_error(LIMITS_EXCEEDED, a.manager, 'CreateDisk', 'a{sv}', {})
    assert 'for user' in e.message, e.message
    b.manager('CreateDisk', 'a{sv}', {})
    e = expect_error(LIMITS_EXCEEDED, b.manager, 'CreateDisk', 'a{sv}', {})
    assert 'in all' in e.message, e.message
    p = env.make_vdi(UID_B, unique('lim') + '.vdi', 1 * MiB)
    expect_error(LIMITS_EXCEEDED, open_disk, env, b, [p])
    mark = env.watcher.mark()
    a.disk(a1, 'Close', 'a{sv}', {})
    env.watcher.wait_removed(a1, since=mark)
    b.manager('CreateDisk', 'a{sv}', {})


def test_global_fd_limit(env, clients):
    """--max-fds bounds the descriptors of all users together (every Image
    holds one): uid B is refused once uid A and B hold 16 in all, well below
    B's own limit, and served again once A closes a Disk."""
    a, b = clients[UID_A], clients[UID_B]
    restart(env, clients, '--max-fds=16', '--max-fds-per-user=16')
    a_disks = [open_disk(env, a, [env.make_vdi(UID_A, unique('fd') + '.vdi', 1 * MiB)]) for _ in range(9)]
    for _ in range(7):
        open_disk(env, b, [env.make_vdi(UID_B, unique('fd') + '.vdi', 1 * MiB)])
    p = env.make_vdi(UID_B, unique('fd') + '.vdi', 1 * MiB)
    e = expect_error(LIMITS_EXCEEDED, open_disk, env, b, [p])
    assert 'in all' in e.message and 'at most 16' in e.message, e.message
    mark = env.watcher.mark()
    a.disk(a_disks[0], 'Close', 'a{sv}', {})
    env.watcher.wait_removed(a_disks[0], since=mark)
    d = open_disk(env, b, [p])
    assert len(disk_images(env, d)) == 1


def test_global_call_limit(env, clients):
    """Two calls parked in polkit fill --max-calls=2: a third, of another uid,
    is refused at once; once they return, calls are served again."""
    a, b = clients[UID_A], clients[UID_B]
    restart(env, clients, '--max-calls=2')
    assert manager_props(env)['MaxCalls'] == 2
    env.polkit.mock.SimulateHang(True)
    a.call_async('p1', ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}', {})
    a.call_async('p2', ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}', {})
    a.get(ROOT_PATH, MANAGER, 'Mode')     # vdiskd has both calls: they were sent before
    e = expect_error(LIMITS_EXCEEDED, b.manager, 'CreateDisk', 'a{sv}', {})
    assert 'at most 2 at once' in e.message, e.message
    assert not a.has_result('p1') and not a.has_result('p2')
    env.polkit.mock.SimulateHang(False)
    env.polkit.mock.ReleaseHangingCalls()
    assert a.result('p1').startswith(ROOT_PATH + '/disk/')
    assert a.result('p2').startswith(ROOT_PATH + '/disk/')
    assert b.manager('CreateDisk', 'a{sv}', {}).startswith(ROOT_PATH + '/disk/')


# ---------------------------------------------------------------------------
# Wait


def test_wait_replies_like_completed(env, clients):
    a, b = clients[UID_A], clients[UID_B]
    env.polkit.allow(A_OPEN, A_MODIFY, A_OTHER)   # B may read A's operation (privacy)
    da, src = small_disk(env, a, UID_A)
    op = check_op(a, da)
    assert b.wait_op_raw(op) == ('succeeded', '', '')     # another uid, after the end
    # a failure is a reply too, with the names Completed carries
    full = env.path(UID_A, unique('full') + '.vdi')
    full.write_bytes(b'x' * 4096)
    env.chown(full, UID_A)
    mark = env.watcher.mark()
    op = a.disk(da, 'Copy', 'hsa{sv}', Open(full, os.O_RDWR), 'VDI', {})
    state, name, message = a.wait_op_raw(op)
    assert (state, name) == ('failed', ERR + 'BadFileDescriptor'), (state, name, message)
    assert message
    assert tuple(env.watcher.wait_completed(op, since=mark)[4]) == (state, name, message)
    # an error reply is about the Wait call itself
    expect_error(UNKNOWN_OBJECT, a.wait_op_raw, ROOT_PATH + '/operation/999999')
    expect_error(INVALID_ARGS, a.call, op, OPERATION, 'Wait', 'a{sv}', {'bogus': True})


def test_wait_counted(env, clients):
    """--max-calls-per-user=2, --max-waits-per-operation=3, an operation held
    running: A's two Waits fill A's calls (a third is refused although the
    operation takes more waiters), B's first Wait is the third waiter, B's
    second is refused by the waiter limit. Thawed, every pending Wait gets
    ('succeeded', '', '') and A can call again."""
    a, b = clients[UID_A], clients[UID_B]
    env.polkit.allow(A_OPEN, A_MODIFY, A_OTHER)   # B may read A's operation (privacy)
    frz = frozen_fs(env)
    restart(env, clients, '--max-calls-per-user=2', '--max-waits-per-operation=3')
    props = manager_props(env)
    assert (props['MaxCallsPerUser'], props['MaxWaitsPerOperation']) == (2, 3)
    da, _ = small_disk(env, a, UID_A)
    dest = frz.empty_file(UID_A, unique('frozen') + '.vdi')
    a.open('dest', dest, os.O_RDWR)
    frz.freeze()
    op = a.disk(da, 'Copy', 'hsa{sv}', Fd('dest'), 'VDI', {})
    wait_until(lambda: env.watcher.get(op, OPERATION, 'State') == 'running', 60, 'the copy to run')
    # vdiskd accounts calls in the order they came (each asks the bus for
    # its caller's uid, and the bus answers in order): A's third comes after
    # A's two Waits, B's second after B's first
    a.call_async('w1', op, OPERATION, 'Wait', 'a{sv}', {})
    a.call_async('w2', op, OPERATION, 'Wait', 'a{sv}', {})
    e = expect_error(LIMITS_EXCEEDED, a.wait_op_raw, op, timeout=30)
    assert 'for user' in e.message, e.message
    b.call_async('w3', op, OPERATION, 'Wait', 'a{sv}', {})
    e = expect_error(LIMITS_EXCEEDED, b.wait_op_raw, op, timeout=30)
    assert 'wait for' in e.message, e.message
    assert not any(c.has_result(k) for c, k in ((a, 'w1'), (a, 'w2'), (b, 'w3')))
    frz.thaw()
    for c, k in ((a, 'w1'), (a, 'w2'), (b, 'w3')):
        assert tuple(c.result(k)) == ('succeeded', '', '')
    assert a.wait_op_raw(op) == ('succeeded', '', '')


# ---------------------------------------------------------------------------
# error names of an Operation


def test_worker_einval_is_invalid_argument(env, clients):
    """The library refuses a VDI block size of 128 MiB (a power of two, so the
    call's own check lets it through): the Operation fails with
    org.vdisk.VDisk1.Error.InvalidArgument, in its properties, Completed and Wait."""
    a = clients[UID_A]
    d = a.manager('CreateDisk', 'a{sv}', {})
    new = env.empty_file(UID_A, unique('bs') + '.vdi')
    mark = env.watcher.mark()
    op = a.disk(d, 'CreateBase', 'hsta{sv}', Open(new, os.O_RDWR), 'VDI', 64 * MiB,
                {'block-size': T('u', 128 * MiB)})
    state, name, message = a.wait_op_raw(op)
    assert (state, name) == ('failed', ERR + 'InvalidArgument'), (state, name, message)
    assert 'block size' in message, message
    assert env.watcher.get(op, OPERATION, 'ErrorName') == ERR + 'InvalidArgument'
    assert tuple(env.watcher.wait_completed(op, since=mark)[4])[1] == ERR + 'InvalidArgument'


# ---------------------------------------------------------------------------
# argument checks made in the call


BIG = 2 ** 64 - 512
LONG = 'x' * 256


def _bad_calls():
    """(id, method, signature, args builder(dest_fd) -> args)."""
    return [
        ('resize-2^64-512', 'Resize', 'ta{sv}', lambda f: (BIG, {})),
        ('resize-2^62+512', 'Resize', 'ta{sv}', lambda f: (2 ** 62 + 512, {})),
        ('resize-0', 'Resize', 'ta{sv}', lambda f: (0, {})),
        ('resize-odd', 'Resize', 'ta{sv}', lambda f: (4 * MiB + 100, {})),
        ('merge-equal', 'Merge', 'uua{sv}', lambda f: (0, 0, {})),
        ('merge-out-of-range', 'Merge', 'uua{sv}', lambda f: (0, 5, {})),
        ('merge-beyond-chain', 'Merge', 'uua{sv}', lambda f: (2 ** 32 - 1, 0, {})),
        ('compact-index', 'Compact', 'ua{sv}', lambda f: (1, {})),
        ('check-index', 'Check', 'ua{sv}', lambda f: (7, {})),
        ('repair-index', 'Repair', 'ua{sv}', lambda f: (2 ** 32 - 1, {})),
        ('copy-block-size-odd', 'Copy', 'hsa{sv}', lambda f: (f, 'VDI', {'block-size': 1000})),
        ('copy-block-size-small', 'Copy', 'hsa{sv}', lambda f: (f, 'VDI', {'block-size': 256})),
        ('copy-size-huge', 'Copy', 'hsa{sv}', lambda f: (f, 'VDI', {'size': T('t', 2 ** 63)})),
        ('copy-variant', 'Copy', 'hsa{sv}', lambda f: (f, 'VDI', {'variant': 'sparse'})),
        ('copy-comment', 'Copy', 'hsa{sv}', lambda f: (f, 'VDI', {'comment': LONG})),
        ('copy-sparse-size', 'Copy', 'hsa{sv}', lambda f: (f, 'VDI', {'sparse-size': 1000})),
        ('copy-display-name', 'Copy', 'hsa{sv}', lambda f: (f, 'VDI', {'display-name': LONG})),
        ('diff-size-huge', 'CreateDiff', 'hsa{sv}', lambda f: (f, 'VDI', {'size': T('t', 2 ** 64 - 1)})),
        ('diff-block-size', 'CreateDiff', 'hsa{sv}', lambda f: (f, 'VDI', {'block-size': T('u', 3 * MiB)})),
    ]


@pytest.mark.parametrize('case', _bad_calls(), ids=[c[0] for c in _bad_calls()])
def test_argument_checked_in_call(env, clients, case):
    _, method, sig, build = case
    a = clients[UID_A]
    # a Disk of this daemon (earlier tests restart it): one 1 MiB image
    d, _ = small_disk(env, a, UID_A)
    dest = env.empty_file(UID_A, unique('dest') + '.vdi')
    before = operations_of(env.watcher.managed_objects())
    mark = env.watcher.mark()
    expect_error(INVALID_ARGS, a.disk, d, method, sig, *build(Open(dest, os.O_RDWR)))
    assert operations_of(env.watcher.managed_objects()) == before
    assert not [e for e in env.watcher.events_since(mark)
                if e[3] == 'InterfacesAdded' and '/operation/' in e[4][0]]
    assert env.watcher.get(d, DISK, 'Operation') == '/'


def test_create_arguments_checked_in_call(env, clients):
    a = clients[UID_A]
    d = a.manager('CreateDisk', 'a{sv}', {})
    new = env.empty_file(UID_A, unique('cb') + '.vdi')
    for size, opts in ((2 ** 62 + 512, {}), (2 ** 64 - 512, {}), (MiB, {'block-size': T('u', 3000)}),
                       (MiB, {'comment': LONG})):
        expect_error(INVALID_ARGS, a.disk, d, 'CreateBase', 'hsta{sv}', Open(new, os.O_RDWR), 'VDI', size, opts)
    expect_error(INVALID_ARGS, a.manager, 'CreateDisk', 'a{sv}', {'display-name': LONG})
    img_disk, _ = small_disk(env, a, UID_A)
    img = env.watcher.get(img_disk, DISK, 'Images')[0]
    expect_error(INVALID_ARGS, a.image, img, 'SetComment', 'sa{sv}', LONG, {})
    a.image(img, 'SetComment', 'sa{sv}', 'y' * 255, {})
    assert env.watcher.get(img, IMAGE, 'Comment') == 'y' * 255


# ---------------------------------------------------------------------------
# the worst-case GetManagedObjects reply


PATH_BYTES = 4 + len('/org/vdisk/VDisk1/operation/') + 20 + 1 + 3   # one more 'o' in an array, padded
DEFAULTS = dict(disks=1024, fds=4096, operations=64, finished=512)


def test_reply_size_bound(env, clients):
    """Measures the largest object of each kind with every caller-chosen
    string at its limit, and computes from them and the default limits the
    largest GetManagedObjects reply (docs/dbus-api.md "Limits"): it stays
    below half of dbus-daemon's default maximum message size (32 MiB)."""
    a = clients[UID_A]
    restart(env, clients)
    name = 'N' * 255
    p = env.make_vdi(UID_A, unique('max') + '.vdi', 1 * MiB, [(0, 4096, 0x5a)])
    d = open_disk(env, a, [p], name=name)
    img = env.watcher.get(d, DISK, 'Images')[0]
    a.image(img, 'SetComment', 'sa{sv}', 'C' * 255, {})
    # a failed operation: the longest error text vdiskd publishes
    full = env.path(UID_A, unique('full') + '.vdi')
    full.write_bytes(b'x' * 4096)
    env.chown(full, UID_A)
    failed = a.disk(d, 'Copy', 'hsa{sv}', Open(full, os.O_RDWR), 'VDI', {'display-name': name})
    assert a.wait_op_raw(failed)[0] == 'failed'
    check_op(a, d)
    probe = probe_managed_objects(env, 0)   # root: every uid's objects (privacy)
    largest = probe['largest']
    slack = 64                                          # object ids up to 20 digits
    image_max = largest['image'] + slack
    disk_base = largest['disk'] + slack                 # with one image path
    op_base = largest['operation'] + slack              # two object paths, report or error
    # what an operation can add: its error message up to 1024 bytes, 16 check
    # messages of 256 bytes, 128 more object paths (Merge of 64 images:
    # Objects + Result 'removed')
    op_max = op_base + 1024 + 16 * (4 + 256 + 1 + 3) + 128 * PATH_BYTES
    manager = largest.get('manager', 0) + 4096
    bound = (manager + DEFAULTS['disks'] * disk_base + DEFAULTS['fds'] * (image_max + PATH_BYTES) +
             (DEFAULTS['operations'] + DEFAULTS['finished']) * op_max)
    print(f'largest entries {largest}; per operation at most {op_max}; '
          f'worst-case reply with the defaults: {bound} bytes ({bound / MiB:.1f} MiB)')
    assert bound < 16 * MiB, bound
