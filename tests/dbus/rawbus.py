# SPDX-License-Identifier: LGPL-2.1-or-later
"""A minimal D-Bus client speaking the wire protocol itself.

python-dbus cannot set the ALLOW_INTERACTIVE_AUTHORIZATION header flag, and no
library lets a caller send a handle (`h`) whose index points past the fds it
attached. The tests need both, so this module marshals messages by hand:
little endian, SASL EXTERNAL authentication, unix fd passing over SCM_RIGHTS.
It is a test tool: one connection, blocking, one call at a time.
"""

import array
import os
import socket
import struct

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
FLAG_NO_REPLY_EXPECTED = 0x1
FLAG_NO_AUTO_START = 0x2
FLAG_ALLOW_INTERACTIVE_AUTHORIZATION = 0x4

# header field codes
F_PATH, F_INTERFACE, F_MEMBER, F_ERROR_NAME, F_REPLY_SERIAL, F_DESTINATION, F_SENDER, F_SIGNATURE, \
    F_UNIX_FDS = range(1, 10)

_ALIGN = {'y': 1, 'b': 4, 'n': 2, 'q': 2, 'i': 4, 'u': 4, 'x': 8, 't': 8, 'd': 8, 'h': 4,
          's': 4, 'o': 4, 'g': 1, 'a': 4, '(': 8, '{': 8, 'v': 1}
_FIXED = {'y': '<B', 'b': '<I', 'n': '<h', 'q': '<H', 'i': '<i', 'u': '<I', 'x': '<q', 't': '<Q',
          'd': '<d', 'h': '<I'}


class Handle(int):
    """An index into the message's fd array, marshalled as is (`h`)."""


def split_signature(sig):
    """'sa{sv}(ii)' -> ['s', 'a{sv}', '(ii)']"""
    out, i = [], 0
    while i < len(sig):
        j = _complete_type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _complete_type_end(sig, i):
    c = sig[i]
    if c == 'a':
        return _complete_type_end(sig, i + 1)
    if c in '({':
        close = ')' if c == '(' else '}'
        i += 1
        while sig[i] != close:
            i = _complete_type_end(sig, i)
        return i + 1
    return i + 1


class _Writer:
    def __init__(self):
        self.buf = bytearray()

    def pad(self, n):
        while len(self.buf) % n:
            self.buf.append(0)

    def write(self, t, v):
        c = t[0]
        self.pad(_ALIGN[c])
        if c in _FIXED:
            if c == 'b':
                v = 1 if v else 0
            self.buf += struct.pack(_FIXED[c], v)
        elif c in 'so':
            b = v.encode()
            self.buf += struct.pack('<I', len(b)) + b + b'\0'
        elif c == 'g':
            b = v.encode()
            self.buf += struct.pack('<B', len(b)) + b + b'\0'
        elif c == 'v':
            sig, val = v
            self.write('g', sig)
            self.write(sig, val)
        elif c == 'a':
            elem = t[1:]
            len_pos = len(self.buf)
            self.buf += b'\0\0\0\0'
            self.pad(_ALIGN[elem[0]])
            start = len(self.buf)
            if elem[0] == '{':
                kt, vt = split_signature(elem[1:-1])
                for k, val in (v.items() if isinstance(v, dict) else v):
                    self.pad(8)
                    self.write(kt, k)
                    self.write(vt, val)
            elif elem == 'y' and isinstance(v, (bytes, bytearray)):
                self.buf += v
            else:
                for val in v:
                    self.write(elem, val)
            struct.pack_into('<I', self.buf, len_pos, len(self.buf) - start)
        elif c == '(':
            for st, val in zip(split_signature(t[1:-1]), v):
                self.write(st, val)
        else:
            raise ValueError('cannot marshal type ' + t)


class _Reader:
    def __init__(self, data, pos=0):
        self.data = data
        self.pos = pos

    def align(self, n):
        self.pos = (self.pos + n - 1) // n * n

    def read(self, t):
        c = t[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            v = struct.unpack_from(_FIXED[c], self.data, self.pos)[0]
            self.pos += struct.calcsize(_FIXED[c])
            return bool(v) if c == 'b' else v
        if c in 'so':
            n = struct.unpack_from('<I', self.data, self.pos)[0]
            s = self.data[self.pos + 4:self.pos + 4 + n].decode()
            self.pos += 4 + n + 1
            return s
        if c == 'g':
            n = self.data[self.pos]
            s = self.data[self.pos + 1:self.pos + 1 + n].decode()
            self.pos += 1 + n + 1
            return s
        if c == 'v':
            sig = self.read('g')
            return self.read(sig)
        if c == 'a':
            n = struct.unpack_from('<I', self.data, self.pos)[0]
            self.pos += 4
            elem = t[1:]
            self.align(_ALIGN[elem[0]])
            end = self.pos + n
            if elem[0] == '{':
                kt, vt = split_signature(elem[1:-1])
                out = {}
                while self.pos < end:
                    self.align(8)
                    k = self.read(kt)
                    out[k] = self.read(vt)
                return out
            if elem == 'y':
                b = bytes(self.data[self.pos:end])
                self.pos = end
                return b
            out = []
            while self.pos < end:
                out.append(self.read(elem))
            return out
        if c == '(':
            return tuple(self.read(st) for st in split_signature(t[1:-1]))
        raise ValueError('cannot read type ' + t)


class RawError(Exception):
    def __init__(self, name, message):
        super().__init__(f'{name}: {message}')
        self.name = name
        self.message = message


class RawBus:
    """One connection to a unix-socket bus address (unix:path=...)."""

    def __init__(self, address):
        path = None
        for part in address.split(';')[0].split(':', 1)[1].split(','):
            k, _, v = part.partition('=')
            if k == 'path':
                path = v
        if not path:
            raise ValueError('only unix:path= addresses are supported: ' + address)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.serial = 0
        self.inbuf = b''
        self._auth()
        self.unique_name = self.call('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus',
                                     'Hello', '', [])[0]

    def _line(self):
        while b'\r\n' not in self.inbuf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError('bus closed the connection during authentication')
            self.inbuf += chunk
        line, _, self.inbuf = self.inbuf.partition(b'\r\n')
        return line.decode()

    def _auth(self):
        uid = str(os.geteuid()).encode().hex()
        self.sock.sendall(b'\0AUTH EXTERNAL ' + uid.encode() + b'\r\n')
        if not self._line().startswith('OK '):
            raise ConnectionError('EXTERNAL authentication refused')
        self.sock.sendall(b'NEGOTIATE_UNIX_FD\r\n')
        if not self._line().startswith('AGREE_UNIX_FD'):
            raise ConnectionError('the bus does not pass fds')
        self.sock.sendall(b'BEGIN\r\n')

    def close(self):
        self.sock.close()

    def send(self, dest, path, iface, member, signature, args, flags=0, fds=(), unix_fds_header=None):
        """Sends a method call. `fds` are attached with SCM_RIGHTS; `h` arguments are
        indexes (ints) into them, unchecked. `unix_fds_header` overrides the UNIX_FDS
        header field (default: len(fds), omitted when 0)."""
        self.serial += 1
        body = _Writer()
        types = split_signature(signature)
        if len(types) != len(args):
            raise ValueError('signature and arguments differ in count')
        for t, v in zip(types, args):
            body.write(t, v)
        fields = [(F_PATH, ('o', path)), (F_MEMBER, ('s', member))]
        if iface:
            fields.append((F_INTERFACE, ('s', iface)))
        if dest:
            fields.append((F_DESTINATION, ('s', dest)))
        if signature:
            fields.append((F_SIGNATURE, ('g', signature)))
        n_fds = len(fds) if unix_fds_header is None else unix_fds_header
        if n_fds:
            fields.append((F_UNIX_FDS, ('u', n_fds)))
        head = _Writer()
        head.buf += struct.pack('<cBBBII', b'l', METHOD_CALL, flags, 1, len(body.buf), self.serial)
        head.write('a(yv)', fields)
        head.pad(8)
        msg = bytes(head.buf + body.buf)
        if fds:
            self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', fds))])
        else:
            self.sock.sendall(msg)
        return self.serial

    def _recv_message(self):
        fds = []
        while True:
            if len(self.inbuf) >= 16:
                body_len, = struct.unpack_from('<I', self.inbuf, 4)
                fields_len, = struct.unpack_from('<I', self.inbuf, 12)
                head_len = (16 + fields_len + 7) // 8 * 8
                if len(self.inbuf) >= head_len + body_len:
                    break
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array('i')
                    a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                    fds.extend(a)
            if not data:
                raise ConnectionError('bus closed the connection')
            self.inbuf += data
        if self.inbuf[0:1] != b'l':
            raise ValueError('only little-endian messages are handled')
        mtype = self.inbuf[1]
        r = _Reader(self.inbuf, 12)
        fields = dict(r.read('a(yv)'))
        r.align(8)
        body_start = r.pos
        body_end = body_start + body_len
        sig = fields.get(F_SIGNATURE, '')
        br = _Reader(self.inbuf[:body_end], body_start)
        body = [br.read(t) for t in split_signature(sig)]
        self.inbuf = self.inbuf[body_end:]
        for fd in fds:
            os.close(fd)
        return mtype, fields, body

    def wait_reply(self, serial):
        """Returns the reply body of `serial` or raises RawError with the error name."""
        while True:
            mtype, fields, body = self._recv_message()
            if mtype in (METHOD_RETURN, ERROR) and fields.get(F_REPLY_SERIAL) == serial:
                if mtype == ERROR:
                    raise RawError(fields.get(F_ERROR_NAME, ''), body[0] if body and isinstance(body[0], str) else '')
                return body

    def call(self, dest, path, iface, member, signature, args, **kw):
        return self.wait_reply(self.send(dest, path, iface, member, signature, args, **kw))
