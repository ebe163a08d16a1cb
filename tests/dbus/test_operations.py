# SPDX-License-Identifier: LGPL-2.1-or-later
"""Operations (docs/dbus-api.md "org.vdisk.VDisk1.Operation"): progress,
cancel, Wait, a client that disconnects, many operations at once, limits.

Nothing here depends on timing. To hold a worker for as long as a test needs,
a Copy writes to a file on a frozen file system (harness.FrozenFs: its first
write blocks in the kernel until the test thaws it). With both workers
(--workers=2) held that way, a third operation stays `queued` for sure.
"""

import os
import shutil

import pytest

from harness import (A_CANCEL_OTHER, A_MODIFY, A_OPEN, ACCESS_DENIED, DISK, ERR, LIMITS_EXCEEDED, MANAGER, MiB,
                     OPERATION, REGIONS, ROOT_PATH, UID_A, UID_B, Fd, Open, RemoteDBusError, disk_images,
                     T, expect_error, finished_ok, frozen_fs, open_disk, op_props, unique, wait_until)

VDISK_ENV = dict(daemon_args=['--workers=2', '--max-workers-per-user=2'])

SMALL = 16 * MiB
BIG = 256 * MiB
CANCELLED = ERR + 'Cancelled'

pytestmark = pytest.mark.usefixtures('policy')


@pytest.fixture(scope='module')
def frz(env):
    return frozen_fs(env)


def src_disk(env, agent, uid, size=SMALL, regions=REGIONS, name=None):
    p = env.make_vdi(uid, unique('src') + '.vdi', size, regions)
    return open_disk(env, agent, [p], name=name or p.name), p


def state(env, op):
    return env.watcher.get(op, OPERATION, 'State')


def wait_state(env, op, want, timeout=60):
    wait_until(lambda: state(env, op) == want, timeout, f'{op} to be {want}')


def frozen_copy(env, frz, agent, uid, disk):
    """Starts a Copy of `disk` into a file on the frozen fs (opened before the
    freeze by the caller: see hold()). Returns (op, dest path)."""
    name = unique('frozen')
    dest = frz.empty_file(uid, name + '.vdi')
    agent.open(name, dest, os.O_RDWR)
    return name, dest


def hold(env, frz, pairs):
    """pairs: [(agent, uid, disk)]. Opens the destinations, freezes, starts the
    copies and waits until each runs (its worker is then blocked in a write).
    Returns [(op, dest)]."""
    prepared = [(a, frozen_copy(env, frz, a, uid, d), d) for a, uid, d in pairs]
    frz.freeze()
    out = []
    for a, (name, dest), d in prepared:
        op = a.disk(d, 'Copy', 'hsa{sv}', Fd(name), 'VDI', {})
        out.append((op, dest))
    for op, _ in out:
        wait_state(env, op, 'running')
    return out


def completed_args(env, op):
    """(state, error_name, error_message) of the op's Completed signal."""
    e = env.watcher.wait_completed(op)
    return tuple(e[4])


def op_events(env, op, since=0):
    """The op's property history: InterfacesAdded's values, then each PropertiesChanged."""
    out = []
    for seq, path, iface, member, args in env.watcher.events_since(since):
        if member == 'InterfacesAdded' and args[0] == op:
            out.append(('props', args[1].get(OPERATION, {})))
        elif path == op and member == 'PropertiesChanged' and args[0] == OPERATION:
            out.append(('props', args[1]))
        elif path == op and member == 'Completed':
            out.append(('completed', tuple(args)))
    return out


# ---------------------------------------------------------------------------


def test_progress_monotonic_and_final(env, clients):
    """A 256 MiB copy: every Progress/BytesDone published is monotonic and in
    range, the last Progress is 1.0 with BytesDone == BytesTotal, the final
    properties come before Completed, and Completed comes once."""
    a = clients[UID_A]
    regions = [(0, BIG, 0x5a)]       # every block allocated and non-zero
    d, src = src_disk(env, a, UID_A, BIG, regions)
    dest = env.empty_file(UID_A, unique('big') + '.vdi')
    mark = env.watcher.mark()
    op = a.disk(d, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI', {})
    assert completed_args(env, op)[:2] == ('succeeded', '')
    ev = op_events(env, op, mark)
    assert ev and ev[0][0] == 'props', 'InterfacesAdded of the operation was not seen before its updates'
    completed = [i for i, e in enumerate(ev) if e[0] == 'completed']
    assert len(completed) == 1, ev
    before = [e[1] for e in ev[:completed[0]]]
    progress = [p['Progress'] for p in before if 'Progress' in p]
    done = [p['BytesDone'] for p in before if 'BytesDone' in p]
    assert progress, 'no Progress published'
    assert all(0.0 <= x <= 1.0 for x in progress), progress
    assert progress == sorted(progress), f'Progress went backwards: {progress}'
    assert done == sorted(done), f'BytesDone went backwards: {done}'
    assert progress[-1] == 1.0, progress
    states = [p['State'] for p in before if 'State' in p]
    assert states[-1] == 'succeeded', states
    final = op_props(env, op)
    assert final['Progress'] == 1.0 and final['State'] == 'succeeded'
    assert final['BytesTotal'] > 0 and final['BytesDone'] == final['BytesTotal'], final
    assert final['EndTime'] >= final['StartTime'] > 0, final
    assert final['Cancelable'] is False
    assert final['Kind'] == 'copy' and final['StartedByUID'] == UID_A and final['Disk'] == d
    env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, dest)
    env.qemu_img('check', '-f', 'vdi', dest)
    # a later round trip: still exactly one Completed
    a.get(ROOT_PATH, 'org.vdisk.VDisk1.Manager', 'Version')
    env.watcher.get(op, OPERATION, 'State')
    assert len([e for e in op_events(env, op, mark) if e[0] == 'completed']) == 1


def test_copy_open_result_objects(env, clients):
    """Copy with open=true: ResultObjects = [new disk, its image], owned by the starter."""
    a = clients[UID_A]
    d, src = src_disk(env, a, UID_A)
    dest = env.empty_file(UID_A, unique('opened') + '.vdi')
    op = a.disk(d, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI', {'open': True})
    p = finished_ok(env, a, op)
    new_disk, new_image = p['ResultObjects']
    assert env.watcher.get(new_disk, DISK, 'OwnerUID') == UID_A
    assert disk_images(env, new_disk) == [new_image]
    assert a.disk(new_disk, 'Read', 'tua{sv}', 0, 4096, {}) == b'\x11' * 4096


def test_copy_compress(env, clients):
    """Copy with compress=true into QCOW2 writes compressed clusters (zlib
    and zstd by format-options), which qemu-img checks clean and reads as the
    source; into a format without compressed units the operation fails
    NotSupported and writes nothing."""
    a = clients[UID_A]
    d, src = src_disk(env, a, UID_A)
    for ct in ('zlib', 'zstd'):
        dest = env.empty_file(UID_A, unique('compressed') + '.qcow2')
        op = a.disk(d, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'QCOW2',
                    {'compress': True, 'format-options': T('a{ss}', {'compression_type': ct})})
        finished_ok(env, a, op)
        env.qemu_img('compare', '-f', 'vdi', '-F', 'qcow2', src, dest)
        out = env.qemu_img('check', '-f', 'qcow2', dest).stdout
        assert 'No errors were found' in out and '% compressed clusters' in out and ' 0.00% compressed' not in out, out
    dest = env.empty_file(UID_A, unique('notcompressed') + '.vdi')
    op = a.disk(d, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI', {'compress': True})
    e = expect_error(ERR + 'NotSupported', a.wait_op, op)
    assert 'Compression not supported' in e.message, e.message
    assert dest.stat().st_size == 0


def test_wait_subscribed_after_reply(env, clients, frz):
    """Wait called after the Copy reply (by the starter and by a second
    connection of its uid, with polkit refusing everything) replies when the
    operation ends; called again after the end (the operation lingers) it
    replies at once. Another uid's Wait is refused at once: it would read the
    operation (privacy)."""
    a, b = clients[UID_A], clients[UID_B]
    a2 = env.agent(UID_A, unique('A2'))
    d, src = src_disk(env, a, UID_A)
    [(op, dest)] = hold(env, frz, [(a, UID_A, d)])
    env.polkit.deny_all()
    a.call_async('wait-a', op, OPERATION, 'Wait', 'a{sv}', {})
    a2.call_async('wait-a2', op, OPERATION, 'Wait', 'a{sv}', {})
    expect_error(ACCESS_DENIED, b.call, op, OPERATION, 'Wait', 'a{sv}', {}, timeout=20)
    # both Wait calls reach vdiskd before the thaw: a round trip on each connection
    a.get(op, OPERATION, 'State')
    a2.get(op, OPERATION, 'State')
    assert not a.has_result('wait-a') and not a2.has_result('wait-a2'), 'Wait replied before the end'
    frz.thaw()
    assert tuple(a.result('wait-a')) == ('succeeded', '', '')
    assert tuple(a2.result('wait-a2')) == ('succeeded', '', '')
    assert state(env, op) == 'succeeded'
    # after the end, during linger
    assert tuple(a2.call(op, OPERATION, 'Wait', 'a{sv}', {}, timeout=10)) == ('succeeded', '', '')
    assert tuple(a.call(op, OPERATION, 'Wait', 'a{sv}', {}, timeout=10)) == ('succeeded', '', '')
    a2.kill()
    env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, dest)


def test_cancel_running_copy(env, clients, frz):
    """Cancel a Copy that is running (its worker blocked in a write): State
    cancelling, then after the thaw cancelled with Error.Cancelled, Completed
    with the same, the destination truncated to 0, the source untouched."""
    a = clients[UID_A]
    d, src = src_disk(env, a, UID_A)
    pristine = env.tmp / (src.name + '.pristine')
    shutil.copy(src, pristine)
    mark = env.watcher.mark()
    [(op, dest)] = hold(env, frz, [(a, UID_A, d)])
    p = op_props(env, op)
    assert p['Cancelable'] is True and p['Kind'] == 'copy', p
    assert env.watcher.get(d, DISK, 'Operation') == op
    # the disk is busy while its operation runs
    expect_error(ERR + 'Busy', a.disk, d, 'Read', 'tua{sv}', 0, 512, {})
    expect_error(ERR + 'Busy', a.disk, d, 'Close', 'a{sv}', {})
    assert a.operation(op, 'Cancel') is None
    assert state(env, op) == 'cancelling', 'the worker is blocked: the operation cannot have stopped yet'
    assert a.operation(op, 'Cancel') is None, 'Cancel is idempotent while cancelling'
    frz.thaw()
    st, name, msg = completed_args(env, op)
    assert (st, name) == ('cancelled', CANCELLED), (st, name, msg)
    p = op_props(env, op)
    assert p['State'] == 'cancelled' and p['ErrorName'] == CANCELLED, p
    assert p['ErrorMessage'] == msg and 'truncat' in msg.lower(), p
    assert p['Cancelable'] is False and p['EndTime'] > 0
    assert p['Progress'] < 1.0
    assert [e for e in op_events(env, op, mark) if e[0] == 'completed'] == [('completed', (st, name, msg))]
    assert os.path.getsize(dest) == 0, 'a cancelled Copy must truncate its destination'
    with pytest.raises(RemoteDBusError) as ei:
        a.wait_op(op)
    assert ei.value.name == CANCELLED
    expect_error(ERR + 'NotCancelable', a.operation, op, 'Cancel')
    # the disk is usable again, the source is unchanged and valid
    assert env.watcher.get(d, DISK, 'Operation') == '/'
    assert a.disk(d, 'Read', 'tua{sv}', 0, 512, {}) == b'\x11' * 512
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', '-f', 'vdi', src)
    env.run('cmp', src, pristine)


def test_cancel_queued(env, clients, frz):
    """Both workers held: a third Copy is queued; Cancel ends it at once
    (State cancelled in the Cancel reply's aftermath, never running); another
    uid needs cancel-other-user; the held copies then finish fine."""
    a, b = clients[UID_A], clients[UID_B]
    da, srca = src_disk(env, a, UID_A)
    db, srcb = src_disk(env, b, UID_B)
    # opened before the workers are held: OpenDisk itself runs on a worker
    d3, src3 = src_disk(env, a, UID_A)
    d4, src4 = src_disk(env, a, UID_A)
    held = hold(env, frz, [(a, UID_A, da), (b, UID_B, db)])
    dest3 = env.empty_file(UID_A, unique('q') + '.vdi')
    dest4 = env.empty_file(UID_A, unique('q') + '.vdi')
    mark = env.watcher.mark()
    op3 = a.disk(d3, 'Copy', 'hsa{sv}', Open(dest3, os.O_RDWR), 'VDI', {})
    op4 = a.disk(d4, 'Copy', 'hsa{sv}', Open(dest4, os.O_RDWR), 'VDI', {})
    for op in (op3, op4):
        p = op_props(env, op)
        assert p['State'] == 'queued' and p['Cancelable'] is True, p
    assert a.operation(op3, 'Cancel') is None
    p = op_props(env, op3)
    assert (p['State'], p['ErrorName']) == ('cancelled', CANCELLED), p
    assert completed_args(env, op3)[:2] == ('cancelled', CANCELLED)
    states = [e[1]['State'] for e in op_events(env, op3, mark) if e[0] == 'props' and 'State' in e[1]]
    assert 'running' not in states, states
    assert os.path.getsize(dest3) == 0
    # another uid: refused without cancel-other-user, then allowed
    env.polkit.allow(A_OPEN, A_MODIFY)
    expect_error(ACCESS_DENIED, b.operation, op4, 'Cancel')
    assert state(env, op4) == 'queued'
    env.polkit.allow(A_CANCEL_OTHER)
    assert b.operation(op4, 'Cancel') is None
    assert state(env, op4) == 'cancelled'
    assert completed_args(env, op4)[:2] == ('cancelled', CANCELLED)
    frz.thaw()
    for (op, dest), src, who in zip(held, (srca, srcb), (a, b)):
        finished_ok(env, who, op)
        env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, dest)
    for src in (srca, srcb, src3, src4):
        env.qemu_img('check', '-f', 'vdi', src)


def test_dismiss_removes(env, clients):
    a = clients[UID_A]
    d, _ = src_disk(env, a, UID_A)
    op = a.disk(d, 'Check', 'ua{sv}', 0, {})
    a.wait_op(op)
    mark = env.watcher.mark()
    a.operation(op, 'Dismiss')
    env.watcher.wait_removed(op, since=mark)
    expect_error('org.freedesktop.DBus.Error.UnknownObject', a.wait_op, op)


def test_client_disconnects_mid_operation(env, clients, frz):
    """The starter is killed while its Copy runs (held): vdiskd keeps serving,
    the idle Disk of the vanished client is closed at once, the busy one once
    its operation has completed, and the operation outlives its client."""
    b = clients[UID_B]
    gone = env.agent(UID_A, 'A-doomed')
    d, src = src_disk(env, gone, UID_A)
    idle_disk, _ = src_disk(env, gone, UID_A)
    [(op, dest)] = hold(env, frz, [(gone, UID_A, d)])
    mark = env.watcher.mark()
    gone.kill()
    # still serving: a new disk from another client, properties, ObjectManager
    other = b.manager('CreateDisk', 'a{sv}', {'display-name': 'meanwhile'}, timeout=20)
    assert env.watcher.get(op, OPERATION, 'State') == 'running'
    assert op in env.watcher.managed_objects()
    b.disk(other, 'Close', 'a{sv}', {}, timeout=20)
    # the idle disk goes at once; the busy one stays while its operation runs
    env.watcher.wait_removed(idle_disk, since=mark, timeout=20)
    assert env.watcher.exists(d) and env.watcher.exists(op)
    frz.thaw()
    assert completed_args(env, op)[:2] == ('succeeded', '')
    env.watcher.wait_removed(d, since=mark)
    assert env.watcher.exists(op), 'the operation outlives its client (linger)'
    assert env.agent(UID_A, unique('A-again')).wait_op(op) is None   # the starter's uid, anew
    env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, dest)


def test_client_disconnects_during_big_copy(env, clients):
    """The same without a held worker: the client is killed right after the
    Copy reply of a 256 MiB copy. The operation completes, the Disk is closed,
    vdiskd serves on. (Where the copy already finished, this is still valid.)"""
    b = clients[UID_B]
    gone = env.agent(UID_A, 'A-doomed2')
    d, src = src_disk(env, gone, UID_A, BIG, [(0, BIG, 0x3c)])
    dest = env.empty_file(UID_A, unique('gone') + '.vdi')
    op = gone.disk(d, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI', {})
    mark = env.watcher.mark()
    gone.kill()
    other = b.manager('CreateDisk', 'a{sv}', {'display-name': 'meanwhile2'}, timeout=20)
    b.disk(other, 'Close', 'a{sv}', {}, timeout=20)
    assert env.agent(UID_A, unique('A-again')).wait_op(op) is None   # the starter's uid, anew
    env.watcher.wait_removed(d, since=mark)
    env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, dest)


def test_many_disks_of_one_client(env, clients):
    """A client's Disks share one watch of its connection (one match rule on
    the bus, whose per-connection limit is 64 here): 100 Disks open fine, and
    all of them close when the client goes."""
    many = env.agent(UID_A, 'A-many')
    disks = [many.manager('CreateDisk', 'a{sv}', {}) for _ in range(100)]
    assert len(set(disks)) == 100
    mark = env.watcher.mark()
    many.kill()
    for d in disks:
        env.watcher.wait_removed(d, since=mark, timeout=20)


def test_twenty_concurrent_operations(env, clients):
    """20 operations from four connections of two uids, each on its own Disk:
    all complete, and every copy equals its source."""
    agents = [clients[UID_A], clients[UID_B], env.agent(UID_A, 'A2'), env.agent(UID_B, 'B2')]
    uids = [UID_A, UID_B, UID_A, UID_B]
    jobs = []
    for i in range(20):
        ag, uid = agents[i % 4], uids[i % 4]
        regions = [(i * 65536, 65536, i + 1), (2 * MiB + i * 4096, 8192, 0xa0 + i)]
        d, src = src_disk(env, ag, uid, 4 * MiB, regions)
        jobs.append((ag, uid, d, src))
    ops = []
    for i, (ag, uid, d, src) in enumerate(jobs):
        if i % 5 == 4:
            ops.append((ag, d, src, None, ag.disk(d, 'Check', 'ua{sv}', 0, {})))
        else:
            dest = env.empty_file(uid, unique('c20-') + '.vdi')
            ops.append((ag, d, src, dest, ag.disk(d, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI', {})))
    assert len({o[4] for o in ops}) == 20
    for ag, d, src, dest, op in ops:
        p = finished_ok(env, ag, op)
        assert p['StartedByUID'] == (UID_A if ag.uid == UID_A else UID_B)
        if dest is None:
            assert p['Result'].get('corruptions', 0) == 0, p['Result']
        else:
            env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', src, dest)
            env.qemu_img('check', '-f', 'vdi', dest)
    for ag in agents[2:]:
        ag.close()


def test_operation_limits(env, clients, frz):
    """--max-operations / --max-operations-per-user count running and queued
    operations: one more gets LimitsExceeded. (Restarts vdiskd with small limits.)"""
    env.stop_daemon()
    env.start_daemon(['--workers=2', '--max-workers-per-user=2', '--max-operations=3', '--max-operations-per-user=2'])
    a = env.agent(UID_A, 'A-lim')
    b = env.agent(UID_B, 'B-lim')
    env.polkit.allow(A_OPEN, A_MODIFY)
    assert env.watcher.get(ROOT_PATH, 'org.vdisk.VDisk1.Manager', 'MaxOperations') == 3
    assert env.watcher.get(ROOT_PATH, 'org.vdisk.VDisk1.Manager', 'MaxOperationsPerUser') == 2
    d1, s1 = src_disk(env, a, UID_A)
    d2, s2 = src_disk(env, a, UID_A)
    d3, s3 = src_disk(env, a, UID_A)
    e1, e2 = src_disk(env, b, UID_B), src_disk(env, b, UID_B)
    held = hold(env, frz, [(a, UID_A, d1), (a, UID_A, d2)])
    expect_error(LIMITS_EXCEEDED, a.disk, d3, 'Check', 'ua{sv}', 0, {})
    op_b = b.disk(e1[0], 'Check', 'ua{sv}', 0, {})          # total 3: queued
    assert state(env, op_b) == 'queued'
    expect_error(LIMITS_EXCEEDED, b.disk, e2[0], 'Check', 'ua{sv}', 0, {})
    frz.thaw()
    for op, dest in held:
        finished_ok(env, a, op)
    finished_ok(env, b, op_b)
    # finished operations do not count any more
    finished_ok(env, a, a.disk(d3, 'Check', 'ua{sv}', 0, {}))
    a.close()
    b.close()


def test_worker_share_per_uid(env, clients, frz):
    """One uid never occupies every worker (files that hang, on FUSE or NFS,
    must not stall everybody): with 2 workers a uid gets 1 at a time by
    default. A's copy is held in a frozen write; A's next operation waits
    `queued` although a worker is free, and B's operation runs and finishes
    meanwhile. (Restarts vdiskd with the default share.)"""
    env.stop_daemon()
    env.start_daemon(['--workers=2'])
    a = env.agent(UID_A, 'A-share')
    b = env.agent(UID_B, 'B-share')
    env.polkit.allow(A_OPEN, A_MODIFY)
    assert env.watcher.get(ROOT_PATH, 'org.vdisk.VDisk1.Manager', 'Workers') == 2
    d1, s1 = src_disk(env, a, UID_A)
    d2, s2 = src_disk(env, a, UID_A)
    e1, t1 = src_disk(env, b, UID_B)
    held = hold(env, frz, [(a, UID_A, d1)])
    op_a = a.disk(d2, 'Check', 'ua{sv}', 0, {})
    op_b = b.disk(e1, 'Check', 'ua{sv}', 0, {})
    finished_ok(env, b, op_b)           # B is served while A holds its share
    assert state(env, op_a) == 'queued'
    frz.thaw()
    for op, dest in held:
        finished_ok(env, a, op)
        env.qemu_img('compare', '-f', 'vdi', '-F', 'vdi', s1, dest)
    finished_ok(env, a, op_a)
    a.close()
    b.close()
