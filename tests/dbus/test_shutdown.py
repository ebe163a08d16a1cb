# SPDX-License-Identifier: LGPL-2.1-or-later
"""Stopping vdiskd (docs/architecture.md "Stopping", docs/vdiskd.8): on SIGTERM
the bus name is released at once, new calls of vdiskd's interfaces get
Error.ServiceStopping, calls parked in polkit or queued end with it, running
operations are cancelled with it (not with a user's Error.Cancelled), and the
process leaves within --stop-timeout-sec even when a worker is blocked in a
file system.

Each test starts its own vdiskd and stops it. A worker is held in a write to a
frozen file system (harness.FrozenFs), so "running" and "blocked" are certain;
nothing waits for time to pass (the deadlines only turn a hang into a failure).
"""

import os
import shutil
import signal
import time

import pytest

import harness
from harness import (A_MODIFY, A_OPEN, DISK, ERR, MANAGER, OPERATION, REGIONS, ROOT_PATH, UID_A, UID_B, Fd,
                     Open, RemoteDBusError, deadline, expect_error, frozen_fs, open_disk, unique, wait_until)

VDISK_ENV = dict(start_daemon=False)

STOPPING = ERR + 'ServiceStopping'
CANCELLED = ERR + 'Cancelled'
SMALL = 16 * harness.MiB
EXIT_STOP_TIMEOUT = 3


@pytest.fixture(scope='module')
def frz(env):
    return frozen_fs(env)


@pytest.fixture(autouse=True)
def cleanup(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    yield
    for f in env.freezers:       # a failed test must not leave the next one frozen
        f.thaw()
    for a in list(env.agents):
        a.close()
    try:
        env.polkit.mock.SimulateHang(False)
        env.polkit.mock.ReleaseHangingCalls()
    except Exception:   # noqa: BLE001
        pass
    env.stop_daemon()


def start(env, *args):
    return env.start_daemon(['--workers=2', '--max-workers-per-user=2'] + list(args))


def src_disk(env, agent, uid):
    p = env.make_vdi(uid, unique('src') + '.vdi', SMALL, REGIONS)
    return open_disk(env, agent, [p], name=p.name), p


def state(env, op):
    return env.watcher.get(op, OPERATION, 'State')


def held_copy(env, frz, agent, uid, disk):
    """A Copy of `disk` into a file on the frozen fs, running (its worker
    blocked in the first write). Returns (op, dest)."""
    name = unique('frozen')
    dest = frz.empty_file(uid, name + '.vdi')
    agent.open(name, dest, os.O_RDWR)
    frz.freeze()
    op = agent.disk(disk, 'Copy', 'hsa{sv}', Fd(name), 'VDI', {})
    wait_until(lambda: state(env, op) == 'running', 60, f'{op} to run')
    return op, dest


def completed(env, op, since):
    return tuple(env.watcher.wait_completed(op, since=since)[4])


def name_released(env):
    wait_until(lambda: env.watcher.name_owner(harness.BUS_NAME) is None, 30,
               'vdiskd to release org.vdisk.VDisk1')


def on_bus(env, unique_name):
    drv = env.watcher.bus.get_object('org.freedesktop.DBus', '/org/freedesktop/DBus', introspect=False)
    return bool(drv.NameHasOwner(unique_name, dbus_interface='org.freedesktop.DBus'))


def main_thread_gone(pid):
    """The process called exit: its main thread is a zombie (a thread blocked
    in the kernel may keep the process itself from being reaped) or gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except FileNotFoundError:
        return True


def call_unique(agent, unique_name, path, iface, method, sig, *args):
    return agent.rpc('call', path, iface, method, sig, list(args), timeout=deadline(60), dest=unique_name)


# ---------------------------------------------------------------------------


def test_stop_with_blocked_worker(env, frz):
    """A Copy blocked in a write to a frozen fs, then SIGTERM: the name is
    released while the copy still hangs; a new call (CreateDisk, to the
    daemon's unique name) is refused with ServiceStopping while property reads
    still answer; the operation is `cancelling`; at --stop-timeout-sec the
    operation ends (Completed: cancelled, ServiceStopping; a parked Wait answers
    the same), an idle Disk is closed and flushed, vdiskd leaves the bus and its
    main thread exits, all without the fs being thawed. After the thaw the
    process is reaped with status 3."""
    bound = deadline(10)
    d = start(env, f'--stop-timeout-sec={bound}')
    uniq = d.unique_name
    a = env.agent(UID_A, 'A')
    disk, src = src_disk(env, a, UID_A)
    other, other_file = src_disk(env, a, UID_A)     # idle: closed and flushed by the stop
    a.disk(other, 'Write', 'taya{sv}', 1024 * 1024, b'\x77' * 4096, {})
    op, dest = held_copy(env, frz, a, UID_A, disk)
    a.call_async('wait', op, OPERATION, 'Wait', 'a{sv}', {})
    a.get(op, OPERATION, 'State')    # the Wait reached vdiskd (same connection, in order)
    mark = env.watcher.mark()

    d.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    name_released(env)
    assert frz.frozen and d.alive() and on_bus(env, uniq)
    expect_error(STOPPING, call_unique, a, uniq, ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}', {})
    expect_error(STOPPING, call_unique, a, uniq, disk, DISK, 'Read', 'tua{sv}', 0, 512, {})
    # the well-known name has no owner any more (no activation on this bus)
    with pytest.raises(RemoteDBusError) as ei:
        a.manager('CreateDisk', 'a{sv}', {}, timeout=30)
    assert ei.value.name in ('org.freedesktop.DBus.Error.ServiceUnknown',
                             'org.freedesktop.DBus.Error.NameHasNoOwner'), ei.value
    # property reads answer from memory: the copy is still blocked, cancelling
    p = env.watcher.bus.get_object(uniq, op, introspect=False).GetAll(
        OPERATION, dbus_interface=harness.PROPS)
    assert (str(p['State']), bool(p['Cancelable'])) == ('cancelling', False), p
    assert not a.has_result('wait')

    st, name, msg = completed(env, op, mark)
    assert (st, name) == ('cancelled', STOPPING), (st, name, msg)
    assert 'blocked' in msg, msg
    wst, wname, wmsg = a.result('wait')     # Wait answers (sss), like Completed
    assert (str(wst), str(wname)) == ('cancelled', STOPPING), (wst, wname, wmsg)
    wait_until(lambda: not on_bus(env, uniq) and main_thread_gone(d.pid), bound + deadline(15),
               'vdiskd to leave the bus and exit at the stop timeout')
    elapsed = time.monotonic() - t0
    assert frz.frozen, 'the fs was thawed: the test proves nothing'
    assert elapsed < bound + deadline(15)
    assert 'Stopping took longer than' in d.output()
    # the idle disk was closed (flushed) before the exit, the blocked worker notwithstanding
    env.watcher.wait_removed(other, since=mark)
    env.qemu_img('check', '-f', 'vdi', other_file)
    flat = env.tmp / (unique('flat') + '.raw')
    env.qemu_img('convert', '-f', 'vdi', '-O', 'raw', other_file, flat)
    with open(flat, 'rb') as f:
        f.seek(1024 * 1024)
        assert f.read(4096) == b'\x77' * 4096

    frz.thaw()
    rc = d.proc.wait(deadline(30))
    assert rc == EXIT_STOP_TIMEOUT, f'exit status {rc}\n{d.output()[-3000:]}'
    assert not d.sanitizer_reports(), d.output()[-3000:]
    d.log.close()
    env.daemon = None
    env.qemu_img('check', '-f', 'vdi', src)


def test_stop_cancels_running_and_queued(env, frz):
    """SIGTERM with a Copy running (blocked until the thaw), a Copy queued
    behind it and a CreateDisk parked in polkit: the queued Copy and the parked
    call end with ServiceStopping at once (before the thaw: the queued one never
    ran); after the thaw the running Copy ends cancelled with ServiceStopping,
    its destination truncated as for a cancel; vdiskd exits 0."""
    d = start(env, '--workers=1', '--max-workers-per-user=1', f'--stop-timeout-sec={deadline(120)}')
    a, b = env.agent(UID_A, 'A'), env.agent(UID_B, 'B')
    disk, src = src_disk(env, a, UID_A)
    disk2, src2 = src_disk(env, a, UID_A)
    pristine = env.tmp / (src.name + '.pristine')
    shutil.copy(src, pristine)
    dest2 = env.empty_file(UID_A, unique('queued') + '.vdi')
    op, dest = held_copy(env, frz, a, UID_A, disk)
    op2 = a.disk(disk2, 'Copy', 'hsa{sv}', Open(dest2, os.O_RDWR), 'VDI', {})
    assert state(env, op2) == 'queued'
    env.polkit.mock.SimulateHang(True)
    b.call_async('parked', ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}', {'display-name': 'parked'})
    wait_until(lambda: bool(env.polkit.mock.HaveHangingCalls()), 30, 'the CheckAuthorization call to park')
    mark = env.watcher.mark()

    d.proc.send_signal(signal.SIGTERM)
    name_released(env)
    assert frz.frozen
    with pytest.raises(RemoteDBusError) as ei:
        b.result('parked')
    assert ei.value.name == STOPPING, ei.value
    st2, name2, _ = completed(env, op2, mark)
    assert (st2, name2) == ('cancelled', STOPPING)
    states = [e[4][1].get('State') for e in env.watcher.events_since(mark)
              if e[1] == op2 and e[3] == 'PropertiesChanged' and e[4][0] == OPERATION]
    assert 'running' not in states, states
    assert d.alive(), 'vdiskd left before its running copy returned'

    frz.thaw()
    st, name, msg = completed(env, op, mark)
    assert (st, name) == ('cancelled', STOPPING), (st, name, msg)
    assert 'truncat' in msg.lower(), msg
    rc = d.proc.wait(deadline(60))
    assert rc == 0, f'exit status {rc}\n{d.output()[-3000:]}'
    assert os.path.getsize(dest) == 0, 'a Copy cancelled by the stop must truncate its destination'
    assert os.path.getsize(dest2) == 0
    env.run('cmp', src, pristine)
    env.qemu_img('check', '-f', 'vdi', src)
    env.qemu_img('check', '-f', 'vdi', src2)
    problems = d.stop()     # already exited: checks the status and the sanitizer output
    env.daemon = None
    assert not problems, problems


def test_user_cancel_then_stop_keeps_cancelled(env, frz):
    """A user's Cancel before the SIGTERM keeps its Error.Cancelled: the stop
    does not rename it."""
    d = start(env, f'--stop-timeout-sec={deadline(120)}')
    a = env.agent(UID_A, 'A')
    disk, src = src_disk(env, a, UID_A)
    op, dest = held_copy(env, frz, a, UID_A, disk)
    mark = env.watcher.mark()
    assert a.operation(op, 'Cancel') is None
    d.proc.send_signal(signal.SIGTERM)
    name_released(env)
    frz.thaw()
    assert completed(env, op, mark)[:2] == ('cancelled', CANCELLED)
    assert d.proc.wait(deadline(60)) == 0
    problems = d.stop()
    env.daemon = None
    assert not problems, problems
