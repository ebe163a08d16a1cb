# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the test process and its client agents (agent.py) exchange.

Markers stand for things only the agent can make (an fd it opened with its
own rights) or for dbus types that would lose their signature when pickled.
"""

BUS_NAME = 'org.vdisk.VDisk1'


class Open:
    """An fd the agent opens for one call: Open(path, os.O_RDWR)."""

    def __init__(self, path, flags, mode=0o600):
        self.path = str(path)
        self.flags = flags
        self.mode = mode

    def __repr__(self):
        return f'Open({self.path!r}, {self.flags:#o})'


class Fd:
    """An fd the agent opened earlier with Agent.open(name, ...)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f'Fd({self.name!r})'


class T:
    """A value with an explicit D-Bus type, for values inside variants:
    T('t', 5), T('a{ss}', {...}), T('(uuu)', (1, 2, 3)), T('a{sh}', {'p': Open(...)})."""

    def __init__(self, sig, value):
        self.sig = sig
        self.value = value

    def __repr__(self):
        return f'T({self.sig!r}, {self.value!r})'


class ReceivedFd(int):
    """An fd that came back in a reply (the number is the agent's)."""


def typed(sig, value, convert):
    """Builds the dbus value for T (in the agent; imports dbus lazily)."""
    import dbus
    basic = {'y': dbus.Byte, 'b': dbus.Boolean, 'n': dbus.Int16, 'q': dbus.UInt16, 'i': dbus.Int32,
             'u': dbus.UInt32, 'x': dbus.Int64, 't': dbus.UInt64, 'd': dbus.Double, 's': dbus.String,
             'o': dbus.ObjectPath, 'g': dbus.Signature}
    if sig in basic:
        return basic[sig](value)
    if sig == 'h':
        return convert(value)
    if sig.startswith('a{'):
        kt, vt = _split_pair(sig[2:-1])
        return dbus.Dictionary({typed(kt, k, convert): typed(vt, v, convert) for k, v in value.items()},
                               signature=kt + vt)
    if sig == 'ay':
        return dbus.ByteArray(bytes(value))
    if sig.startswith('a'):
        return dbus.Array([typed(sig[1:], v, convert) for v in value], signature=sig[1:])
    if sig.startswith('('):
        parts = _split_all(sig[1:-1])
        return dbus.Struct(tuple(typed(t, v, convert) for t, v in zip(parts, value)), signature=sig[1:-1])
    if sig == 'v':
        return convert(value)
    raise ValueError('unsupported type ' + sig)


def _end(sig, i):
    if sig[i] == 'a':
        return _end(sig, i + 1)
    if sig[i] in '({':
        close = ')' if sig[i] == '(' else '}'
        i += 1
        while sig[i] != close:
            i = _end(sig, i)
        return i + 1
    return i + 1


def _split_all(sig):
    out, i = [], 0
    while i < len(sig):
        j = _end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _split_pair(sig):
    parts = _split_all(sig)
    assert len(parts) == 2, sig
    return parts


class RemoteError(Exception):
    """Something other than a D-Bus error happened in the agent."""

    def __init__(self, kind, text):
        super().__init__(f'{kind} in agent:\n{text}')
        self.kind = kind
        self.text = text

    def __reduce__(self):
        return (RemoteError, (self.kind, self.text))


class RemoteDBusError(Exception):
    """A D-Bus error reply, with its name."""

    def __init__(self, name, message, unique_name=None):
        super().__init__(f'{name}: {message}')
        self.name = name
        self.message = message
        self.unique_name = unique_name

    def __reduce__(self):
        return (RemoteDBusError, (self.name, self.message, self.unique_name))


class RemoteOSError(Exception):
    def __init__(self, errno, text):
        super().__init__(text)
        self.errno = errno
        self.text = text

    def __reduce__(self):
        return (RemoteOSError, (self.errno, self.text))
