# SPDX-License-Identifier: LGPL-2.1-or-later
"""The dbus suite's machinery: a private system bus, a polkit mock, the real
vdiskd in system mode as an unprivileged uid, and client agents as other uids.

Paths come from the environment (tests/dbus/meson.build sets them):
  VDISKD, VDISKCTL, VDISK_IMG        the built programs
  VDISK_AUDIT_SHIM                   audit-open.so (LD_PRELOAD for vdiskd)
  VDISK_FAKE_USERS_SHIM              fake-users.so (LD_PRELOAD for dbus-daemon)
  VDISK_SOURCE_ROOT                  the source tree (introspection/*.xml)
  VDISK_TEST_KEEP=1                  keep the scratch directory

Nothing here waits for time to pass: every wait is for a condition, with a
deadline that only turns a hang into a failure.
"""

import os
import pickle
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import agentproto as P  # noqa: E402
from agentproto import Open, Fd, T, RemoteDBusError, RemoteOSError, RemoteError  # noqa: E402,F401

PY = '/usr/bin/python3'
BUS_NAME = P.BUS_NAME
ROOT_PATH = '/org/vdisk/VDisk1'
MANAGER = 'org.vdisk.VDisk1.Manager'
DISK = 'org.vdisk.VDisk1.Disk'
IMAGE = 'org.vdisk.VDisk1.Image'
OPERATION = 'org.vdisk.VDisk1.Operation'
FILE_SET = 'org.vdisk.VDisk1.FileSet'
PROPS = 'org.freedesktop.DBus.Properties'
OBJMGR = 'org.freedesktop.DBus.ObjectManager'
ERR = 'org.vdisk.VDisk1.Error.'
ACCESS_DENIED = 'org.freedesktop.DBus.Error.AccessDenied'
INVALID_ARGS = 'org.freedesktop.DBus.Error.InvalidArgs'
UNKNOWN_OBJECT = 'org.freedesktop.DBus.Error.UnknownObject'
INTERACTIVE_REQUIRED = 'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired'
LIMITS_EXCEEDED = 'org.freedesktop.DBus.Error.LimitsExceeded'

POLKIT_NAME = 'org.freedesktop.PolicyKit1'
POLKIT_PATH = '/org/freedesktop/PolicyKit1/Authority'
MOCK_IFACE = 'org.freedesktop.DBus.Mock'
A_OPEN = 'org.vdisk.vdisk1.open'
A_MODIFY = 'org.vdisk.vdisk1.modify'
A_OTHER = 'org.vdisk.vdisk1.manage-other-user'
A_CANCEL_OTHER = 'org.vdisk.vdisk1.cancel-other-user'
ALL_ACTIONS = [A_OPEN, A_MODIFY, A_OTHER, A_CANCEL_OTHER]

# Fixed uids without passwd entries (fake-users.so makes dbus-daemon accept them).
UID_DAEMON = 61001
UID_A = 61002
UID_B = 61003

MiB = 1024 * 1024


def tool(var, default=None):
    v = os.environ.get(var, default)
    if not v:
        raise RuntimeError(f'${var} is not set (run the suite through meson test)')
    return v


def _binary_has(path, marker):
    try:
        with open(path, 'rb') as f:
            return marker in f.read()
    except OSError:
        return False


def sanitizer_kind():
    """'asan', 'tsan' or '' for the vdiskd binary under test."""
    d = tool('VDISKD')
    if _binary_has(d, b'__tsan_init'):
        return 'tsan'
    if _binary_has(d, b'__asan_init'):
        return 'asan'
    return ''


# Deadlines (failure guards only) grow with the sanitizer's slowdown.
SCALE = {'': 1, 'asan': 3, 'tsan': 6}[sanitizer_kind()] if os.environ.get('VDISKD') else 1


def deadline(seconds):
    return seconds * SCALE


def wait_until(cond, timeout, what):
    """Polls cond() (a state that other processes change) until true."""
    end = time.monotonic() + deadline(timeout)
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f'timed out ({deadline(timeout)} s) waiting for {what}')
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# the private system bus


def reap(proc, seconds=10):
    """Waits for proc to exit; kills it after `seconds`."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def terminate(proc):
    """SIGTERM to a helper process that still runs (dbus-daemon, the polkit mock), then reap()."""
    if proc.poll() is None:
        proc.terminate()
        reap(proc)


class PrivateBus:
    """dbus-daemon with a config allowing every uid to connect, own and send."""

    def __init__(self, tmp, limits=None):
        """limits: extra dbus-daemon <limit>s, {name: value} (e.g. max_message_size)."""
        self.dir = tmp / 'bus'
        extra = ''.join(f'\n  <limit name="{k}">{v}</limit>' for k, v in (limits or {}).items())
        self.dir.mkdir(mode=0o755)
        sock = self.dir / 'socket'
        conf = self.dir / 'bus.conf'
        conf.write_text(f'''<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <!-- well below the system bus's 512, so that a test can exceed it cheaply -->
  <limit name="max_match_rules_per_connection">64</limit>{extra}
</busconfig>
''')
        env = dict(os.environ)
        env['LD_PRELOAD'] = tool('VDISK_FAKE_USERS_SHIM')
        env['VDISK_TEST_FAKE_UIDS'] = f'{UID_DAEMON},{UID_A},{UID_B}'
        for k in ('ASAN_OPTIONS', 'TSAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS'):
            env.pop(k, None)
        self.log = open(self.dir / 'dbus-daemon.log', 'w')
        self.proc = subprocess.Popen(['dbus-daemon', '--nofork', f'--config-file={conf}', '--print-address=1'],
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            raise RuntimeError('dbus-daemon did not start: ' + (self.dir / 'dbus-daemon.log').read_text())
        os.chmod(sock, 0o777)

    def stop(self):
        terminate(self.proc)
        self.log.close()


# ---------------------------------------------------------------------------
# the root connection: polkit control, property reads, a signal recorder


class Watcher:
    """A root connection with a GLib main loop that records every signal vdiskd
    sends (root sees everyone's objects; watch_sender() makes the call that
    puts it on vdiskd's list of receivers)."""

    def __init__(self, address):
        self.bus = dbus.bus.BusConnection(address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        self.events = []   # (seq, path, interface, member, args)
        self.seq = 0
        self.bus.add_signal_receiver(self._on_signal, path_keyword='path', interface_keyword='interface',
                                     member_keyword='member', sender_keyword='sender')
        self.ctx = GLib.MainContext.default()
        self.daemon_names = set()

    def _on_signal(self, *args, path=None, interface=None, member=None, sender=None):
        if sender not in self.daemon_names:
            return
        self.seq += 1
        self.events.append((self.seq, str(path), str(interface), str(member), _plain(list(args))))

    def watch_sender(self, unique_name):
        self.daemon_names.add(unique_name)
        # vdiskd sends its signals to the connections that made a call
        # (docs/dbus-api.md "Privacy"): this one, as root, receives them all.
        self.managed_objects()

    def pump(self):
        while self.ctx.iteration(False):
            pass

    def mark(self):
        """A position in the event list; events(since=mark) gives what came after."""
        self.pump()
        return self.seq

    def events_since(self, since=0):
        self.pump()
        return [e for e in self.events if e[0] > since]

    def wait(self, cond, timeout, what):
        """Runs the loop until cond(events) is true; returns cond's value."""
        end = time.monotonic() + deadline(timeout)
        while True:
            self.pump()
            v = cond(self.events)
            if v:
                return v
            if time.monotonic() > end:
                raise AssertionError(f'timed out ({deadline(timeout)} s) waiting for {what}')
            # block in the loop until something arrives (or 50 ms: re-check the deadline)
            fired = []
            tid = GLib.timeout_add(50, lambda: fired.append(1) or False)
            self.ctx.iteration(True)
            if not fired:
                GLib.source_remove(tid)

    def wait_completed(self, op_path, timeout=120, since=0):
        def done(events):
            for e in events:
                if e[0] > since and e[1] == op_path and e[3] == 'Completed':
                    return e
            return None
        return self.wait(done, timeout, f'Completed of {op_path}')

    def wait_removed(self, obj_path, timeout=60, since=0):
        def gone(events):
            for e in events:
                if e[0] > since and e[3] == 'InterfacesRemoved' and e[4][0] == obj_path:
                    return e
            return None
        return self.wait(gone, timeout, f'InterfacesRemoved of {obj_path}')

    def get(self, path, iface, prop):
        obj = self.bus.get_object(BUS_NAME, path, introspect=False)
        return _plain(obj.Get(iface, prop, dbus_interface=PROPS))

    def get_all(self, path, iface):
        obj = self.bus.get_object(BUS_NAME, path, introspect=False)
        return _plain(obj.GetAll(iface, dbus_interface=PROPS))

    def managed_objects(self):
        obj = self.bus.get_object(BUS_NAME, ROOT_PATH, introspect=False)
        return _plain(obj.GetManagedObjects(dbus_interface=OBJMGR))

    def exists(self, path):
        return path in self.managed_objects()

    def name_owner(self, name):
        try:
            return str(self.bus.get_name_owner(name))
        except dbus.exceptions.DBusException:
            return None

    def introspect(self, path):
        obj = self.bus.get_object(BUS_NAME, path, introspect=False)
        return str(obj.Introspect(dbus_interface='org.freedesktop.DBus.Introspectable'))


def _plain(v):
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, (dbus.String, dbus.ObjectPath, dbus.Signature)):
        return str(v)
    if isinstance(v, dbus.Double):
        return float(v)
    if isinstance(v, (dbus.Byte, dbus.Int16, dbus.UInt16, dbus.Int32, dbus.UInt32, dbus.Int64, dbus.UInt64)):
        return int(v)
    if isinstance(v, (dbus.ByteArray, bytes)):
        return bytes(v)
    if isinstance(v, dict):
        return {_plain(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (dbus.Struct, tuple)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


# ---------------------------------------------------------------------------
# polkit mock


class Polkit:
    """python-dbusmock's polkitd template (or a local template file) as root."""

    def __init__(self, bus_address, watcher, template, logdir):
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus_address)
        for k in ('ASAN_OPTIONS', 'TSAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS', 'LD_PRELOAD'):
            env.pop(k, None)
        self.log = open(logdir / 'polkit-mock.log', 'a')
        self.proc = subprocess.Popen([PY, '-m', 'dbusmock', '--system', '-t', str(template)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: self.proc.poll() is not None or watcher.name_owner(POLKIT_NAME),
                   30, 'the polkit mock on the bus')
        if self.proc.poll() is not None:
            raise RuntimeError('polkit mock exited: ' + (logdir / 'polkit-mock.log').read_text())
        self.unique_name = watcher.name_owner(POLKIT_NAME)
        self.obj = watcher.bus.get_object(POLKIT_NAME, POLKIT_PATH, introspect=False)
        self.mock = dbus.Interface(self.obj, MOCK_IFACE)

    def allow(self, *actions):
        """Exactly these actions are authorized; everything else is denied."""
        self.mock.AllowUnknown(False)
        self.mock.SetAllowed(dbus.Array(list(actions), signature='s'))

    def allow_all(self):
        self.mock.SetAllowed(dbus.Array(ALL_ACTIONS, signature='s'))
        self.mock.AllowUnknown(True)

    def deny_all(self):
        self.allow()

    def stop(self):
        terminate(self.proc)
        self.log.close()


# ---------------------------------------------------------------------------
# vdiskd

SANITIZER_MARKERS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'WARNING: ThreadSanitizer',
                     'ERROR: ThreadSanitizer', 'runtime error:', 'ERROR: UndefinedBehaviorSanitizer',
                     'SUMMARY: AddressSanitizer', 'SUMMARY: ThreadSanitizer')


def sanitizer_env(env, extra_asan=''):
    """Options that make a sanitizer report fatal and visible on stderr."""
    def merge(name, defaults):
        cur = env.get(name, '')
        keys = {kv.split('=', 1)[0] for kv in cur.split(':') if kv}
        add = [kv for kv in defaults.split(':') if kv.split('=', 1)[0] not in keys]
        env[name] = ':'.join([x for x in [cur] + add if x])
    merge('ASAN_OPTIONS', 'abort_on_error=1:detect_leaks=1' + extra_asan)
    merge('UBSAN_OPTIONS', 'print_stacktrace=1:halt_on_error=1')
    merge('TSAN_OPTIONS', 'halt_on_error=1:second_deadlock_stack=1')
    return env


class Daemon:
    """The real vdiskd: system mode, a private bus, uid UID_DAEMON (setpriv)."""

    count = 0

    def __init__(self, env, args=(), uid=UID_DAEMON, extra_env=None, prefix=(), name='vdiskd', asan_extra=''):
        Daemon.count += 1
        self.env = env
        self.logpath = env.tmp / f'{name}.{Daemon.count}.log'
        self.log = open(self.logpath, 'w')
        cmd = list(prefix)
        if uid != 0:
            cmd += ['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups', '--']
        cmd += [tool('VDISKD'), '--system', f'--address={env.bus.address}', '--idle-exit-sec=0',
                '--linger-sec=3600'] + list(args)
        denv = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'DBUS_SYSTEM_BUS_ADDRESS': env.bus.address,
                'LANG': 'C.UTF-8'}
        for k in ('ASAN_OPTIONS', 'TSAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS'):
            if k in os.environ:
                denv[k] = os.environ[k]
        sanitizer_env(denv, asan_extra)
        denv.update(extra_env or {})
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=denv, cwd='/',
                                     preexec_fn=None)
        self.pid = self.proc.pid
        env.track(self.pid)
        self.ready_ns = None
        try:
            wait_until(lambda: self.proc.poll() is not None or env.watcher.name_owner(BUS_NAME),
                       30, 'vdiskd to own org.vdisk.VDisk1')
        except AssertionError:
            self.proc.kill()
            raise
        if self.proc.poll() is not None:
            raise AssertionError(f'vdiskd exited with {self.proc.returncode} at startup:\n{self.output()}')
        self.unique_name = env.watcher.name_owner(BUS_NAME)
        env.watcher.watch_sender(self.unique_name)
        self.ready_ns = time.monotonic_ns()

    def output(self):
        self.log.flush()
        return self.logpath.read_text(errors='replace')

    def alive(self):
        return self.proc.poll() is None

    def thread_states(self):
        """'tid comm state wchan' of each thread (for hang reports)."""
        out = []
        try:
            for t in sorted(os.listdir(f'/proc/{self.pid}/task')):
                base = f'/proc/{self.pid}/task/{t}'
                with open(base + '/comm') as f:
                    comm = f.read().strip()
                with open(base + '/stat') as f:
                    st = f.read().rsplit(')', 1)[1].split()[0]
                with open(base + '/wchan') as f:
                    wchan = f.read().strip()
                out.append(f'{t} {comm} {st} {wchan}')
        except OSError as e:
            out.append(f'({e})')
        return '; '.join(out)

    def syscall_sample(self):
        """A short strace of the (hung) daemon, for the report."""
        if not shutil.which('strace'):
            return '(no strace)'
        r = subprocess.run(['timeout', '-s', 'INT', '0.3', 'strace', '-f', '-p', str(self.pid)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = r.stdout.splitlines()
        return '\n'.join(lines[:12]) + (f'\n... ({len(lines)} lines in 0.3 s)' if len(lines) > 12 else '')

    def sanitizer_reports(self):
        out = self.output()
        return [line for line in out.splitlines() if any(m in line for m in SANITIZER_MARKERS)]

    def stop(self):
        """SIGTERM, then the exit must be clean: status 0 and no sanitizer report.
        Returns a list of problems (empty when all is well)."""
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(deadline(15))
            except subprocess.TimeoutExpired:
                problems.append('vdiskd did not exit within the deadline after SIGTERM; threads: '
                                + self.thread_states() + '\nsystem calls now: ' + self.syscall_sample()
                                + '\noutput:\n' + self.output()[-3000:])
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        if rc != 0:
            problems.append(f'vdiskd exit status {rc} (expected 0 after SIGTERM)')
        reports = self.sanitizer_reports()
        if reports:
            out = self.output().splitlines()
            first = next(i for i, line in enumerate(out) if any(m in line for m in SANITIZER_MARKERS))
            problems.append('sanitizer report(s) in vdiskd output: ' + ' | '.join(reports[:5])
                            + f'\n(full log: {self.logpath})\n' + '\n'.join(out[first:first + 60]))
        self.log.close()
        return problems


# ---------------------------------------------------------------------------
# client agents


class Agent:
    """A client process (agent.py) running as `uid`, driven over a socketpair."""

    def __init__(self, env, uid, name=None):
        self.env = env
        self.uid = uid
        self.name = name or f'uid{uid}'
        parent, child = socket.socketpair()
        cmd = []
        if uid != 0:
            cmd += ['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups', '--']
        cmd += [PY, str(env.libdir / 'agent.py'), str(child.fileno())]
        aenv = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'DBUS_SYSTEM_BUS_ADDRESS': env.bus.address,
                'PYTHONPATH': str(env.libdir), 'PYTHONDONTWRITEBYTECODE': '1', 'LANG': 'C.UTF-8'}
        self.proc = subprocess.Popen(cmd, pass_fds=[child.fileno()], env=aenv, cwd=str(env.tmp),
                                     stderr=open(env.tmp / f'agent-{self.name}.log', 'a'))
        child.close()
        env.track(self.proc.pid)
        self.sock = parent
        self.unique_name = self._recv()
        env.agents.append(self)

    def _recv(self):
        hdr = self._recv_exact(4)
        if not hdr:
            raise RuntimeError(f'agent {self.name} died (exit {self.proc.poll()})')
        kind, v = pickle.loads(self._recv_exact(struct.unpack('<I', hdr)[0]))
        if kind == 'err':
            raise v
        return v

    def _recv_exact(self, n):
        buf = b''
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return b''
            buf += chunk
        return buf

    def rpc(self, op, *args, **kwargs):
        data = pickle.dumps((op, args, kwargs))
        self.sock.sendall(struct.pack('<I', len(data)) + data)
        return self._recv()

    # conveniences
    def call(self, path, iface, method, signature, *args, timeout=120):
        return self.rpc('call', path, iface, method, signature, list(args), timeout=deadline(timeout))

    def call_async(self, key, path, iface, method, signature, *args, timeout=600):
        return self.rpc('call_async', key, path, iface, method, signature, list(args), timeout=deadline(timeout))

    def result(self, key, timeout=120):
        return self.rpc('result', key, timeout=deadline(timeout))

    def has_result(self, key):
        return self.rpc('has_result', key)

    def get(self, path, iface, prop):
        return self.rpc('get', path, iface, prop)

    def open(self, name, path, flags, mode=0o600):
        return self.rpc('open', name, str(path), flags, mode)

    def manager(self, method, signature, *args, **kw):
        return self.call(ROOT_PATH, MANAGER, method, signature, *args, **kw)

    def disk(self, path, method, signature, *args, **kw):
        return self.call(path, DISK, method, signature, *args, **kw)

    def image(self, path, method, signature, *args, **kw):
        return self.call(path, IMAGE, method, signature, *args, **kw)

    def operation(self, path, method, signature='a{sv}', *args, **kw):
        if not args:
            args = ({},)
        return self.call(path, OPERATION, method, signature, *args, **kw)

    def wait_op_raw(self, op_path, timeout=300):
        """Operation.Wait as it replies: (state, error_name, error_message)."""
        return tuple(self.call(op_path, OPERATION, 'Wait', 'a{sv}', {}, timeout=timeout))

    def wait_op(self, op_path, timeout=300):
        """Operation.Wait; returns None on success or raises RemoteDBusError
        named after the operation's error (Wait replies (sss) like Completed)."""
        return wait_outcome(self.wait_op_raw(op_path, timeout=timeout))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sock.close()
        if self in self.env.agents:
            self.env.agents.remove(self)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.rpc('exit')
            except (OSError, RuntimeError):
                pass
            reap(self.proc)
        self.sock.close()
        if self in self.env.agents:
            self.env.agents.remove(self)


def wait_outcome(reply):
    """An Operation.Wait reply (state, error_name, error_message): None when
    it succeeded, else RemoteDBusError(error_name, error_message)."""
    state, name, message = tuple(reply)
    if state == 'succeeded':
        assert name == '' and message == '', reply
        return None
    assert state in ('failed', 'cancelled') and name.startswith(ERR), reply
    raise RemoteDBusError(name, message)


def expect_error(name, fn, *args, **kwargs):
    """Runs fn and returns the RemoteDBusError, which must carry `name`."""
    try:
        r = fn(*args, **kwargs)
    except RemoteDBusError as e:
        assert e.name == name, f'expected {name}, got {e.name}: {e.message}'
        return e
    raise AssertionError(f'expected {name}, but the call succeeded with {r!r}')


# ---------------------------------------------------------------------------
# the environment of one test module


# Runs in its own session and outlives a test process killed by meson's timeout:
# then it thaws and unmounts the frozen file system (a frozen fs would leave
# processes stuck in the kernel) and kills what the environment started.
GUARDIAN = r'''
import os, signal, subprocess, sys, time
parent, tmp = int(sys.argv[1]), sys.argv[2]
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
def lines(name):
    try:
        with open(os.path.join(tmp, name)) as f:
            return [l.strip() for l in f if l.strip()]
    except OSError:
        return []
for m in lines('.mounts'):
    subprocess.run(['fsfreeze', '-u', m], stderr=subprocess.DEVNULL)
for p in lines('.pids'):
    try:
        os.kill(int(p), signal.SIGKILL)
    except (ProcessLookupError, ValueError):
        pass
for m in lines('.mounts'):
    subprocess.run(['umount', '-l', m], stderr=subprocess.DEVNULL)
'''


class VdiskEnv:
    """Scratch directory, private bus, polkit mock and one vdiskd."""

    def track(self, pid=None, mount=None):
        """Tells the guardian what to clean up if this test process dies."""
        name, value = ('.pids', pid) if pid is not None else ('.mounts', mount)
        with open(self.tmp / name, 'a') as f:
            f.write(f'{value}\n')

    def __init__(self, template='polkitd', daemon_args=(), start_daemon=True, name='env', bus_limits=None):
        base = Path(tempfile.mkdtemp(prefix=f'vdisk-dbus-{name}-'))
        os.chmod(base, 0o755)
        self.tmp = base
        self.agents = []
        self.freezers = []
        self.daemon = None
        self.polkit = None
        self.bus = None
        self.problems = []
        self.libdir = base / 'lib'
        self.libdir.mkdir(mode=0o755)
        for f in ('agent.py', 'agentproto.py', 'rawbus.py'):
            shutil.copy(HERE / f, self.libdir / f)
            os.chmod(self.libdir / f, 0o644)
        # one private directory per client uid, one public, one for root
        self.dirs = {}
        for uid, d in ((UID_A, 'a'), (UID_B, 'b'), (0, 'root')):
            p = base / d
            p.mkdir(mode=0o700)
            os.chown(p, uid, uid)
            self.dirs[uid] = p
        self.pub = base / 'pub'
        self.pub.mkdir(mode=0o755)
        self.guardian = subprocess.Popen([PY, '-c', GUARDIAN, str(os.getpid()), str(base)],
                                         start_new_session=True, stdin=subprocess.DEVNULL)
        self.polkit_template = template if template == 'polkitd' else HERE / template
        try:
            self.bus = PrivateBus(base, bus_limits)
            self.track(self.bus.proc.pid)
            self.watcher = Watcher(self.bus.address)
            self.start_polkit()
            if start_daemon:
                self.start_daemon(daemon_args)
        except BaseException:
            self.close()
            raise

    def start_polkit(self):
        self.polkit = Polkit(self.bus.address, self.watcher, self.polkit_template, self.tmp)
        self.track(self.polkit.proc.pid)
        return self.polkit

    def start_daemon(self, args=(), **kw):
        self.daemon = Daemon(self, args, **kw)
        return self.daemon

    def stop_daemon(self):
        if self.daemon:
            self.problems += self.daemon.stop()
            self.daemon = None

    def agent(self, uid, name=None):
        return Agent(self, uid, name)

    def path(self, uid, name):
        return self.dirs[uid] / name

    # -- files --------------------------------------------------------------
    def chown(self, path, uid, mode=0o600):
        os.chown(path, uid, uid)
        os.chmod(path, mode)

    def run(self, *cmd, check=True):
        r = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and r.returncode != 0:
            raise AssertionError(f'{" ".join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}')
        return r

    def vdisk_img(self, *args, check=True):
        return self.run(tool('VDISK_IMG'), *args, check=check)

    def qemu_img(self, *args, check=True):
        return self.run('qemu-img', *args, check=check)

    def empty_file(self, uid, name, mode=0o600):
        p = self.path(uid, name)
        p.write_bytes(b'')
        self.chown(p, uid, mode)
        return p

    def make_raw(self, uid, name, size, pattern_seed=None, regions=()):
        """A raw file of `size` bytes; `regions` (offset, length, byte) are written."""
        p = self.path(uid, name)
        with open(p, 'wb') as f:
            f.truncate(size)
            for off, length, byte in regions:
                f.seek(off)
                f.write(bytes([byte]) * length)
        self.chown(p, uid)
        return p

    def make_vdi(self, uid, name, size, regions=(), variant='dynamic'):
        """A VDI made with vdisk-img convert from a raw file holding `regions`."""
        raw = self.tmp / f'.src-{name}.raw'
        with open(raw, 'wb') as f:
            f.truncate(size)
            for off, length, byte in regions:
                f.seek(off)
                f.write(bytes([byte]) * length)
        p = self.path(uid, name)
        args = ['convert', '-f', 'raw', '-O', 'vdi']
        if variant == 'fixed':
            args += ['-o', 'static=on']
        self.vdisk_img(*args, raw, p)
        raw.unlink()
        self.chown(p, uid)
        return p

    def make_vdi_diff(self, uid, name, parent):
        p = self.path(uid, name)
        self.vdisk_img('create', '-f', 'vdi', '-b', parent, '-F', 'vdi', p)
        self.chown(p, uid)
        return p

    # -- teardown -------------------------------------------------------------
    def close(self):
        for f in self.freezers:       # first: a frozen write would block everything below
            f.thaw()
        for a in list(self.agents):
            try:
                a.close()
            except Exception:   # noqa: BLE001
                a.kill()
        self.stop_daemon()
        for f in self.freezers:
            f.unmount()
        if self.polkit:
            self.polkit.stop()
        if self.bus:
            self.bus.stop()
        self.guardian.kill()
        self.guardian.wait()
        if os.environ.get('VDISK_TEST_KEEP') or self.problems:
            print(f'scratch kept in {self.tmp}', file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.problems


def file_mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------------------
# holding a worker without timing: a file system that can be frozen


class FrozenFs:
    """A small ext4 on a loop device under the scratch directory. While it is
    frozen (fsfreeze), any write to a file on it blocks in the kernel until it
    is thawed: a Copy whose destination lives here holds its worker for exactly
    as long as the test wants. Open the destination fds *before* freezing
    (creating a file blocks too). env.close() thaws before stopping vdiskd."""

    def __init__(self, env, size=1024 * MiB):
        self.env = env
        self.image = env.tmp / 'freeze.ext4'
        self.mnt = env.tmp / 'frz'
        self.frozen = False
        self.mounted = False
        with open(self.image, 'wb') as f:
            f.truncate(size)
        env.run('mkfs.ext4', '-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', self.image)
        self.mnt.mkdir(mode=0o755)
        r = env.run('mount', '-o', 'loop', self.image, self.mnt, check=False)
        if r.returncode != 0:
            raise OSError(f'cannot loop-mount an ext4 image: {r.stdout.strip()}')
        self.mounted = True
        env.track(mount=self.mnt)
        os.chmod(self.mnt, 0o755)
        self.dirs = {}
        for uid, d in ((UID_A, 'a'), (UID_B, 'b'), (0, 'root')):
            p = self.mnt / d
            p.mkdir(mode=0o700)
            os.chown(p, uid, uid)
            self.dirs[uid] = p
        env.freezers.append(self)

    def empty_file(self, uid, name):
        p = self.dirs[uid] / name
        p.write_bytes(b'')
        os.chown(p, uid, uid)
        os.chmod(p, 0o600)
        return p

    def freeze(self):
        self.env.run('fsfreeze', '-f', self.mnt)
        self.frozen = True

    def thaw(self):
        if self.frozen:
            self.env.run('fsfreeze', '-u', self.mnt)
            self.frozen = False

    def unmount(self):
        self.thaw()
        if self.mounted:
            r = self.env.run('umount', self.mnt, check=False)
            if r.returncode != 0:
                self.env.run('umount', '-l', self.mnt, check=False)
            self.mounted = False


_frozen_fs_error = None


def frozen_fs(env):
    """A FrozenFs, or pytest.skip with the reason when loop mounts are impossible here."""
    global _frozen_fs_error
    import pytest
    if _frozen_fs_error:
        pytest.skip(_frozen_fs_error)
    try:
        return FrozenFs(env)
    except (OSError, AssertionError) as e:
        _frozen_fs_error = f'no freezable file system (loop-mounted ext4 + fsfreeze): {e}'
        pytest.skip(_frozen_fs_error)


# ---------------------------------------------------------------------------
# small building blocks for tests

_names = iter(range(1, 1 << 30))


def after_test(env):
    """The end of every test (the autouse fixtures' teardown): thaws what a
    failed test left frozen, so that it does not block the next one, and
    vdiskd must still run."""
    for f in env.freezers:
        f.thaw()
    assert env.daemon.alive(), f'vdiskd died:\n{env.daemon.output()[-4000:]}'


def unique(prefix):
    return f'{prefix}{next(_names)}'


REGIONS = ((0, 65536, 0x11), (3 * MiB + 512, 100000, 0x22), (7 * MiB, 4096, 0x33))


def vdiskctl(env, *args, check=True, timeout=120, uid=UID_A):
    """Runs vdiskctl as `uid` in its directory against the test bus; raises
    with its output when it fails and `check`."""
    cmd = ['setpriv', f'--reuid={uid}', f'--regid={uid}', '--clear-groups', '--', tool('VDISKCTL'),
           f'--address={env.bus.address}', '--no-ask-password'] + [str(x) for x in args]
    r = subprocess.run(cmd, cwd=env.dirs[uid], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=deadline(timeout),
                       env={'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8'})
    if check and r.returncode != 0:
        raise AssertionError(f'vdiskctl {" ".join(map(str, args))} exit {r.returncode}\n{r.stdout}\n{r.stderr}')
    return r


def user_path(env, name, uid=UID_A):
    """A file in the directory of `uid`."""
    return env.dirs[uid] / name


def open_disk(env, agent, paths, fmt='VDI', name='disk', flags=os.O_RDWR, options=None):
    """OpenDisk with the given image files (base first), opened by the agent."""
    chain = [(Open(p, flags), fmt, {}) for p in paths]
    opts = {'display-name': name}
    opts.update(options or {})
    return agent.manager('OpenDisk', 'a(hsa{sv})a{sv}', chain, opts)


def disk_images(env, disk):
    return env.watcher.get(disk, DISK, 'Images')


def op_props(env, op):
    return env.watcher.get_all(op, OPERATION)


def finished_ok(env, agent, op, timeout=300):
    """Waits for the operation (Operation.Wait) and checks its final properties."""
    agent.wait_op(op, timeout=timeout)
    p = op_props(env, op)
    assert p['State'] == 'succeeded', p
    assert p['Progress'] == 1.0, p
    assert p['ErrorName'] == '', p
    return p
