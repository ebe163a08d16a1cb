# SPDX-License-Identifier: LGPL-2.1-or-later
"""Client connections and privacy (docs/dbus-api.md "Client connections" and
"Privacy"): one watch of the bus for all client connections, whatever their
number, and objects of one uid kept from the others.

The private bus allows 64 match rules per connection (harness.PrivateBus);
vdiskd's connection is bound by it like any other.
"""

import os
import select
import signal
import subprocess
import time

import pytest

from harness import (A_MODIFY, A_OPEN, A_OTHER, ACCESS_DENIED, DISK, IMAGE, LIMITS_EXCEEDED, MANAGER, MiB,
                     OBJMGR, OPERATION, PROPS, ROOT_PATH, UID_A, UID_B, RemoteDBusError, deadline, disk_images,
                     expect_error, open_disk, tool)

FILE_SET = 'org.vdisk.VDisk1.FileSet'
BUS_MATCH_LIMIT = 64          # harness.PrivateBus: max_match_rules_per_connection
PEERS_PER_USER = BUS_MATCH_LIMIT + 16

VDISK_ENV = dict(daemon_args=[f'--max-peers-per-user={PEERS_PER_USER}'])


@pytest.fixture(autouse=True)
def policy(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    yield


def create_disk_on_new_connection(agent, name):
    """CreateDisk over a fresh connection of the agent's uid that stays open."""
    unique_name, body = agent.rpc('raw_call', ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}',
                                  [{'display-name': ('s', name)}], keep=True)
    return body[0]


def test_more_connections_than_bus_match_rules(env, daemon_alive):
    """More client connections than the bus lets vdiskd have match rules each
    create a Disk: vdiskd stays on the bus, every connection up to its own
    per-uid limit succeeds and the next one is refused with LimitsExceeded;
    closing the connections closes their Disks, and frees their entries."""
    a = env.agent(UID_A, 'A-many-connections')
    b = env.agent(UID_B, 'B-bystander')
    mark = env.watcher.mark()
    disks = [create_disk_on_new_connection(a, f'conn-{i}') for i in range(PEERS_PER_USER)]
    assert len(set(disks)) == PEERS_PER_USER > BUS_MATCH_LIMIT
    e = expect_error(LIMITS_EXCEEDED, create_disk_on_new_connection, a, 'one-too-many')
    assert 'connections' in e.message
    assert env.daemon.alive()
    # another uid is still served (its own budget), and everything is listed
    other = b.manager('CreateDisk', 'a{sv}', {'display-name': 'bystander'}, timeout=20)
    listed = env.watcher.managed_objects()
    assert all(d in listed for d in disks) and other in listed
    # closing the connections closes their Disks
    a.rpc('close_kept')
    for d in disks:
        env.watcher.wait_removed(d, since=mark, timeout=30)
    assert other in env.watcher.managed_objects()
    # their entries are gone: the uid may connect again
    again = create_disk_on_new_connection(a, 'again')
    assert again in env.watcher.managed_objects()
    a.rpc('close_kept')
    env.watcher.wait_removed(again, since=mark, timeout=30)
    b.disk(other, 'Close', 'a{sv}', {}, timeout=20)
    a.close()
    b.close()


# ---------------------------------------------------------------------------
# privacy

SECRET_NAME = 'alice-secret-taxes.vdi'
SECRET_COMMENT = 'alice: tax return 2026'


@pytest.fixture(scope='module')
def alice(env):
    """uid A's Disk (a VDI with a comment) and a finished Check operation of it."""
    env.polkit.allow(A_OPEN, A_MODIFY)
    a = env.agent(UID_A, 'alice')
    a.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')   # receives signals from now on
    path = env.make_vdi(UID_A, SECRET_NAME, 4 * MiB)
    disk = open_disk(env, a, [path], name=SECRET_NAME)
    [image] = disk_images(env, disk)
    a.image(image, 'SetComment', 'sa{sv}', SECRET_COMMENT, {})
    op = a.disk(disk, 'Check', 'ua{sv}', 0, {})
    assert a.wait_op(op) is None
    uuid = env.watcher.get(image, IMAGE, 'Uuid')
    assert uuid
    return dict(agent=a, disk=disk, image=image, op=op, uuid=uuid)


def names_of(alice):
    return (alice['disk'], alice['image'], alice['op'], SECRET_NAME, SECRET_COMMENT, alice['uuid'])


def leaks(value, alice):
    """The secrets of alice's objects that appear anywhere in value."""
    text = repr(value)
    return [n for n in names_of(alice) if n in text]


def test_other_uid_cannot_read(env, alice, daemon_alive):
    """Another uid, without manage-other-user: GetManagedObjects does not list
    alice's objects (nor her FileSet), Get/GetAll on them are refused; its own
    objects and the Manager's properties stay readable."""
    env.polkit.allow(A_OPEN, A_MODIFY)
    b = env.agent(UID_B, 'bob')
    own = b.manager('CreateDisk', 'a{sv}', {'display-name': 'bob-own'})
    listed = b.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')
    assert own in listed and listed[own][DISK]['DisplayName'] == 'bob-own'
    assert leaks(listed, alice) == []
    # nor below the ObjectManager's path
    for below in (f'{ROOT_PATH}/disk', f'{ROOT_PATH}/image', f'{ROOT_PATH}/operation', alice['disk']):
        try:
            got = b.call(below, OBJMGR, 'GetManagedObjects', '')
        except RemoteDBusError as e:
            got = e.message
        assert leaks(got, alice) == [], below
    for path, iface, prop in ((alice['disk'], DISK, 'DisplayName'), (alice['image'], IMAGE, 'Comment'),
                              (alice['image'], IMAGE, 'Uuid'), (alice['image'], IMAGE, 'DisplayName'),
                              (alice['op'], OPERATION, 'State')):
        expect_error(ACCESS_DENIED, b.call, path, PROPS, 'Get', 'ss', iface, prop)
        expect_error(ACCESS_DENIED, b.call, path, PROPS, 'GetAll', 's', iface)
    assert b.get(own, DISK, 'DisplayName') == 'bob-own'
    assert b.get(ROOT_PATH, MANAGER, 'MaxDisksPerUser') > 0
    # a FileSet is its owner's too
    fs = alice['agent'].manager('CreateFileSet', 'a{sv}', {})
    assert fs not in b.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')
    expect_error(ACCESS_DENIED, b.call, fs, PROPS, 'GetAll', 's', FILE_SET)
    assert fs in alice['agent'].call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')
    assert alice['agent'].get(fs, FILE_SET, 'OwnerUID') == UID_A
    alice['agent'].call(fs, FILE_SET, 'Close', 'a{sv}', {})
    b.disk(own, 'Close', 'a{sv}', {})
    b.close()


def test_signals_reach_only_who_may_see(env, alice, daemon_alive):
    """A change of alice's image and a new Disk of hers: alice's watcher and
    root's receive the signals, bob's (which made a call, so it receives
    signals) receives none naming them; bob's own Disk's signals reach him."""
    env.polkit.allow(A_OPEN, A_MODIFY)
    a = alice['agent']
    b = env.agent(UID_B, 'bob-watcher')
    b.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')
    a_mark = a.rpc('events')[-1][0] if a.rpc('events') else 0
    w_mark = env.watcher.mark()
    a.image(alice['image'], 'SetComment', 'sa{sv}', SECRET_COMMENT + ' (amended)', {})
    second = a.manager('CreateDisk', 'a{sv}', {'display-name': SECRET_NAME + '-2'})
    a.disk(second, 'Close', 'a{sv}', {})
    # the last event, on bob's own object: everything vdiskd sent bob before
    # it has arrived once this has (one sender, one receiver: in order)
    own = b.manager('CreateDisk', 'a{sv}', {'display-name': 'bob-last'})
    b_events = b.rpc('wait_event', 'InterfacesAdded', ROOT_PATH, 0, timeout=30)
    assert any(e[4] == 'InterfacesAdded' and e[5][0] == own for e in b_events)
    assert leaks(b_events, alice) == [] and SECRET_NAME not in repr(b_events)
    # the owner and root got them
    a_events = a.rpc('wait_event', 'InterfacesRemoved', ROOT_PATH, a_mark, timeout=30)
    assert any(e[4] == 'PropertiesChanged' and e[2] == alice['image'] and
               e[5][1].get('Comment') == SECRET_COMMENT + ' (amended)' for e in a_events)
    assert any(e[4] == 'InterfacesAdded' and e[5][0] == second for e in a_events)
    assert not any(e[2] == own or (e[5] and e[5][0] == own) for e in a_events), 'bob\'s disk reached alice'
    env.watcher.wait_removed(second, since=w_mark, timeout=30)
    w_events = env.watcher.events_since(w_mark)
    assert any(e[3] == 'PropertiesChanged' and e[1] == alice['image'] for e in w_events)
    b.disk(own, 'Close', 'a{sv}', {})
    b.close()


def test_root_and_manage_other_user_can_read(env, alice, daemon_alive):
    """Root reads everything; a uid polkit authorizes for manage-other-user
    gets alice's objects listed and readable, and from then on their signals;
    without the authorization its listing shrinks back to its own objects."""
    assert env.watcher.get(alice['disk'], DISK, 'DisplayName') == SECRET_NAME
    assert env.watcher.get(alice['image'], IMAGE, 'Comment').startswith(SECRET_COMMENT)
    assert alice['disk'] in env.watcher.managed_objects()
    env.polkit.allow(A_OPEN, A_MODIFY, A_OTHER)
    b = env.agent(UID_B, 'bob-admin')
    listed = b.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')
    assert listed[alice['disk']][DISK]['DisplayName'] == SECRET_NAME
    assert listed[alice['image']][IMAGE]['Uuid'] == alice['uuid']
    assert alice['op'] in listed
    assert b.get(alice['disk'], DISK, 'DisplayName') == SECRET_NAME
    assert b.call(alice['image'], PROPS, 'GetAll', 's', IMAGE)['Comment'].startswith(SECRET_COMMENT)
    assert b.get(alice['op'], OPERATION, 'State') == 'succeeded'
    # signals about alice's objects now reach bob
    alice['agent'].image(alice['image'], 'SetComment', 'sa{sv}', 'seen by the admin', {})
    b.rpc('wait_event', 'PropertiesChanged', alice['image'], 0, timeout=30)
    # authorization withdrawn: the next listing is bob's own, and so are the signals
    env.polkit.allow(A_OPEN, A_MODIFY)
    listed = b.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')
    assert leaks(listed, alice) == []
    expect_error(ACCESS_DENIED, b.get, alice['disk'], DISK, 'DisplayName')
    b.close()


class Monitor:
    """`vdiskctl monitor` (human output) as `uid`, read line by line."""

    def __init__(self, env, uid):
        cmd = ['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups', '--', tool('VDISKCTL'),
               f'--address={env.bus.address}', '--no-ask-password', 'monitor']
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
                                     env={'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8'})
        env.track(self.proc.pid)
        self.lines = []
        self.partial = b''

    def wait_line(self, text, timeout=30):
        """Reads until a line holds `text` (it registered with vdiskd before its first line)."""
        end = time.monotonic() + deadline(timeout)
        fd = self.proc.stdout.fileno()
        while not any(text in line for line in self.lines):
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f'vdiskctl monitor printed no line with {text!r}: {self.lines}')
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f'vdiskctl monitor exited ({self.proc.wait()}): {self.lines}')
            *done, self.partial = (self.partial + chunk).split(b'\n')
            self.lines += [line.decode(errors='replace') for line in done]
        return self.lines

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(deadline(30)) == 0


def test_vdiskctl_monitor_sees_own_objects(env, alice, daemon_alive):
    """vdiskctl monitor of another uid (it registers with a GetManagedObjects
    before it prints its first line) shows that uid's Disk, nothing of alice's;
    alice's monitor shows hers."""
    env.polkit.allow(A_OPEN, A_MODIFY)
    b = env.agent(UID_B, 'bob-monitor')
    mon_b = Monitor(env, UID_B)
    mon_a = Monitor(env, UID_A)
    mon_b.wait_line('Monitoring vdiskd')
    mon_a.wait_line('Monitoring vdiskd')
    a = alice['agent']
    hers = a.manager('CreateDisk', 'a{sv}', {'display-name': SECRET_NAME + '-mon'})
    a.image(alice['image'], 'SetComment', 'sa{sv}', SECRET_COMMENT + ' (monitored)', {})
    own = b.manager('CreateDisk', 'a{sv}', {'display-name': 'bob-mon'})
    lines = mon_b.wait_line('"bob-mon"')
    assert SECRET_NAME not in ''.join(lines) and 'monitored' not in ''.join(lines), lines
    mon_a.wait_line(f'"{SECRET_NAME}-mon"')
    mon_a.wait_line('monitored')
    assert 'bob-mon' not in ''.join(mon_a.lines)
    mon_a.stop()
    mon_b.stop()
    a.disk(hers, 'Close', 'a{sv}', {})
    b.disk(own, 'Close', 'a{sv}', {})
    b.close()


def test_global_peer_limit(env):
    """--max-peers bounds the table over all uids: past it, a new connection's
    call gets LimitsExceeded (vdiskd lives on); a connection that left frees
    its entry. (Restarts vdiskd: the module's last test.)"""
    env.stop_daemon()
    env.start_daemon(['--max-peers=4'])   # the watcher's connection is one of them
    a = env.agent(UID_A, 'A-global')
    b = env.agent(UID_B, 'B-global')
    mark = env.watcher.mark()
    disks = [create_disk_on_new_connection(a, f'g{i}') for i in range(2)]
    disks.append(create_disk_on_new_connection(b, 'g-b'))
    e = expect_error(LIMITS_EXCEEDED, create_disk_on_new_connection, b, 'one-too-many')
    assert 'connections' in e.message
    assert env.daemon.alive()
    a.rpc('close_kept')
    for d in disks[:2]:
        env.watcher.wait_removed(d, since=mark, timeout=30)
    create_disk_on_new_connection(b, 'fits-again')
    b.rpc('close_kept')
    a.close()
    b.close()
