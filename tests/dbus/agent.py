# SPDX-License-Identifier: LGPL-2.1-or-later
"""A bus client process for the dbus suite, running as some uid.

The test process (root) starts one with setpriv as a client uid and drives it
over a socketpair: each request is a pickled (op, args, kwargs), each answer a
pickled ('ok', value) or ('err', exception). The agent opens files with its own
rights (so vdiskd gets fds the client could really open) and keeps one
python-dbus connection for its whole life (vdiskd ties Disks to it).

Values crossing the socketpair are plain Python plus the markers of
agentproto.py; dbus values are converted at this end.
"""

import os
import pickle
import socket
import struct
import sys
import traceback

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

import agentproto as P
import rawbus


def to_dbus(v):
    """Markers -> dbus values (fds opened here, with this process's rights)."""
    if isinstance(v, P.Open):
        fd = os.open(v.path, v.flags, v.mode)
        AGENT.temp_fds.append(fd)
        return dbus.types.UnixFd(fd)
    if isinstance(v, P.Fd):
        return dbus.types.UnixFd(AGENT.fds[v.name])
    if isinstance(v, P.T):
        return P.typed(v.sig, v.value, to_dbus)
    if isinstance(v, dict) and not isinstance(v, dbus.Dictionary):
        return {k: to_dbus(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_dbus(x) for x in v]
    if isinstance(v, tuple) and not isinstance(v, dbus.Struct):
        return tuple(to_dbus(x) for x in v)
    return v


def from_dbus(v):
    """dbus values -> plain Python (so that they pickle with their meaning)."""
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, (dbus.ByteArray, bytes)):
        return bytes(v)
    if isinstance(v, (dbus.String, dbus.ObjectPath, dbus.Signature)):
        return str(v)
    if isinstance(v, dbus.Double):
        return float(v)
    if isinstance(v, (dbus.Byte, dbus.Int16, dbus.UInt16, dbus.Int32, dbus.UInt32, dbus.Int64, dbus.UInt64)):
        return int(v)
    if isinstance(v, dbus.types.UnixFd):
        return P.ReceivedFd(v.take())
    if isinstance(v, dict):
        return {from_dbus(k): from_dbus(x) for k, x in v.items()}
    if isinstance(v, dbus.Struct) or isinstance(v, tuple):
        return tuple(from_dbus(x) for x in v)
    if isinstance(v, list):
        if isinstance(v, dbus.Array) and v.signature == 'y':
            return bytes(int(x) for x in v)
        return [from_dbus(x) for x in v]
    return v


def remote_error(e):
    if isinstance(e, dbus.exceptions.DBusException):
        return P.RemoteDBusError(e.get_dbus_name() or '', e.get_dbus_message() or '')
    if isinstance(e, rawbus.RawError):
        return P.RemoteDBusError(e.name, e.message)
    if isinstance(e, OSError):
        return P.RemoteOSError(e.errno, str(e))
    return P.RemoteError(type(e).__name__, ''.join(traceback.format_exception(e)))


class Agent:
    def __init__(self, sock, address):
        self.sock = sock
        self.address = address
        self.fds = {}
        self.temp_fds = []
        self.results = {}
        self.raw_pending = {}
        self.kept = []              # raw connections kept open (op_raw_call keep=True)
        self.events = []            # (seq, sender, path, interface, member, args)
        self.seq = 0
        self.loop_ctx = GLib.MainContext.default()
        self.bus = dbus.bus.BusConnection(address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        self.bus.add_signal_receiver(self._on_signal, sender_keyword='sender', path_keyword='path',
                                     interface_keyword='interface', member_keyword='member',
                                     bus_name=P.BUS_NAME)

    # --- plumbing -------------------------------------------------------
    def _on_signal(self, *args, sender=None, path=None, interface=None, member=None):
        self.seq += 1
        self.events.append((self.seq, str(sender), str(path), str(interface), str(member), from_dbus(list(args))))

    def _drop_temp_fds(self):
        for fd in self.temp_fds:
            os.close(fd)
        self.temp_fds = []

    def _run_until(self, cond, timeout):
        """Iterates the main loop until cond() is true; False on timeout."""
        if cond():
            return True
        fired = []
        tid = GLib.timeout_add(int(timeout * 1000), lambda: fired.append(1) or False)
        try:
            while not cond() and not fired:
                self.loop_ctx.iteration(True)
        finally:
            if not fired:
                GLib.source_remove(tid)
        return cond()

    def _pump(self):
        while self.loop_ctx.iteration(False):
            pass

    # --- operations (called by name from the test process) ---------------
    def op_unique_name(self):
        return str(self.bus.get_unique_name())

    def op_open(self, name, path, flags, mode=0o600):
        if name in self.fds:
            os.close(self.fds.pop(name))
        self.fds[name] = os.open(path, flags, mode)
        return self.fds[name]

    def op_close_fd(self, name):
        os.close(self.fds.pop(name))

    def op_call(self, path, iface, method, signature, args, timeout=120, dest=P.BUS_NAME):
        try:
            obj = self.bus.get_object(dest, path, introspect=False)
            r = obj.get_dbus_method(method, iface)(*to_dbus(list(args)), signature=signature,
                                                   timeout=timeout, byte_arrays=True)
        finally:
            self._drop_temp_fds()
        return from_dbus(r)

    def op_call_async(self, key, path, iface, method, signature, args, timeout=600, dest=P.BUS_NAME):
        """Starts a call; op_result(key) collects its outcome."""
        def ok(*r):
            self.results[key] = ('ok', from_dbus(r[0] if len(r) == 1 else tuple(r)) if r else None)

        def err(e):
            self.results[key] = ('err', remote_error(e))

        self.results.pop(key, None)
        try:
            obj = self.bus.get_object(dest, path, introspect=False)
            obj.get_dbus_method(method, iface)(*to_dbus(list(args)), signature=signature, timeout=timeout,
                                               byte_arrays=True, reply_handler=ok, error_handler=err)
        finally:
            self._drop_temp_fds()

    def op_result(self, key, timeout=120):
        if not self._run_until(lambda: key in self.results, timeout):
            raise TimeoutError(f'no reply for {key} within {timeout} s')
        kind, v = self.results.pop(key)
        if kind == 'err':
            raise v
        return v

    def op_has_result(self, key):
        self._pump()
        return key in self.results

    def op_get(self, path, iface, prop):
        return self.op_call(path, 'org.freedesktop.DBus.Properties', 'Get', 'ss', [iface, prop])

    def op_get_all(self, path, iface):
        return self.op_call(path, 'org.freedesktop.DBus.Properties', 'GetAll', 's', [iface])

    def op_events(self, since=0):
        self._pump()
        return [e for e in self.events if e[0] > since]

    def op_wait_event(self, member, path=None, since=0, timeout=120):
        def found():
            return any(e[0] > since and e[4] == member and (path is None or e[2] == path) for e in self.events)
        if not self._run_until(found, timeout):
            raise TimeoutError(f'no {member} signal for {path} within {timeout} s')
        return self.op_events(since)

    def op_raw_call(self, path, iface, method, signature, args, flags=0, fds=(), unix_fds_header=None,
                    dest=P.BUS_NAME, keep=False):
        """A call over a fresh raw connection (rawbus.py); returns (unique_name, body)
        or raises RemoteDBusError. fds: names of kept fds, or Open markers."""
        real_fds = []
        for f in fds:
            if isinstance(f, P.Open):
                fd = os.open(f.path, f.flags, f.mode)
                self.temp_fds.append(fd)
                real_fds.append(fd)
            else:
                real_fds.append(self.fds[f])
        conn = rawbus.RawBus(self.address)
        try:
            body = conn.call(dest, path, iface, method, signature, list(args), flags=flags, fds=real_fds,
                             unix_fds_header=unix_fds_header)
            return conn.unique_name, body
        except rawbus.RawError as e:
            raise P.RemoteDBusError(e.name, e.message, unique_name=conn.unique_name)
        finally:
            self._drop_temp_fds()
            if keep:
                self.kept.append(conn)
            else:
                conn.close()

    def op_close_kept(self):
        """Closes the raw connections op_raw_call(keep=True) kept open."""
        for conn in self.kept:
            conn.close()
        self.kept = []

    def op_raw_call_async(self, key, path, iface, method, signature, args, flags=0, dest=P.BUS_NAME):
        """Sends a raw call and returns its connection's unique name at once; the reply
        is collected by op_raw_result(key)."""
        conn = rawbus.RawBus(self.address)
        serial = conn.send(dest, path, iface, method, signature, list(args), flags=flags)
        self.raw_pending[key] = (conn, serial)
        return conn.unique_name

    def op_raw_result(self, key, timeout=120):
        conn, serial = self.raw_pending.pop(key)
        conn.sock.settimeout(timeout)
        try:
            return conn.wait_reply(serial)
        except rawbus.RawError as e:
            raise P.RemoteDBusError(e.name, e.message, unique_name=conn.unique_name)
        finally:
            conn.close()

    def op_fstat_size(self, name):
        return os.fstat(self.fds[name]).st_size

    def op_ping(self):
        return os.getuid(), os.geteuid(), os.getgid(), os.getgroups()

    def serve(self):
        while True:
            hdr = _recv_exact(self.sock, 4)
            if not hdr:
                return
            req = pickle.loads(_recv_exact(self.sock, struct.unpack('<I', hdr)[0]))
            op, args, kwargs = req
            if op == 'exit':
                _send(self.sock, ('ok', None))
                return
            try:
                out = ('ok', getattr(self, 'op_' + op)(*args, **kwargs))
            except BaseException as e:  # noqa: B902 - everything goes back to the test
                passthrough = (P.RemoteError, P.RemoteDBusError, P.RemoteOSError)
                out = ('err', e if isinstance(e, passthrough) else remote_error(e))
            _send(self.sock, out)


def _recv_exact(sock, n):
    buf = b''
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return b''
        buf += chunk
    return buf


def _send(sock, obj):
    data = pickle.dumps(obj)
    sock.sendall(struct.pack('<I', len(data)) + data)


AGENT = None

if __name__ == '__main__':
    s = socket.socket(fileno=int(sys.argv[1]))
    try:
        AGENT = Agent(s, os.environ['DBUS_SYSTEM_BUS_ADDRESS'])
    except BaseException as e:  # noqa: B902
        _send(s, ('err', remote_error(e)))
        sys.exit(1)
    _send(s, ('ok', AGENT.op_unique_name()))
    AGENT.serve()
