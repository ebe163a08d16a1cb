# SPDX-License-Identifier: LGPL-2.1-or-later
"""A QCOW2 image with an external data file through vdiskd (docs/dbus-api.md
"Images of several files"), made by qemu-img:

- ProbeFormat names the data file (`files`) without opening it;
- OpenDisk without it is `FileNeeded` naming the data file; with it, the disk
  reads what qemu-img reads (data in the data file, zero clusters, holes);
- vdiskctl opens the data file with the user's rights and passes it like a
  VMDK extent: `vdiskctl convert -O raw` equals qemu-img's own raw conversion
  byte for byte, also with data_file_raw=on; a data file the user cannot read
  stops vdiskctl (vdiskd opens no path);
- writes through a writable OpenDisk land in the data file given O_RDWR (a
  read-only one is refused): qemu-img check finds the image clean and reads
  what was written, and with data_file_raw=on the data file alone is the disk;
- `vdiskctl convert -O qcow2 -o data_file=NAME` creates the data file next to
  the output and passes it: qemu-img reads the copy as the source.
"""

import os
import subprocess

import pytest

from harness import A_MODIFY, A_OPEN, ERR, UID_A, MiB, Open, T, deadline, expect_error, tool, unique

FILE_NEEDED = ERR + 'FileNeeded'
SIZE = 48 * MiB
WRITES = [('write -P 0x11 0 1M', 0, MiB, 0x11), ('write -P 0x22 5M 70000', 5 * MiB, 70000, 0x22),
          ('write -P 0x33 47M 1M', 47 * MiB, MiB, 0x33)]

pytestmark = pytest.mark.usefixtures('policy')


@pytest.fixture(scope='module')
def a(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return env.agent(UID_A, 'A')


def ctl(env, *args, check=True):
    cmd = ['setpriv', f'--reuid={UID_A}', f'--regid={UID_A}', '--clear-groups', '--', tool('VDISKCTL'),
           f'--address={env.bus.address}', '--no-ask-password'] + [str(x) for x in args]
    r = subprocess.run(cmd, cwd=env.dirs[UID_A], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=deadline(300), env={'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8'})
    if check and r.returncode != 0:
        raise AssertionError(f'vdiskctl {" ".join(map(str, args))} exit {r.returncode}\n{r.stdout}\n{r.stderr}')
    return r


def make(env, raw_flag=False):
    """A qcow2 image and its data file (named relative to it), with data,
    a zero cluster run and holes."""
    stem = unique('df')
    img, dat = env.path(UID_A, stem + '.qcow2'), env.path(UID_A, stem + '.dat')
    o = f'data_file={dat.name}' + (',data_file_raw=on' if raw_flag else '')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', o, img.name, str(SIZE)], cwd=img.parent,
                   check=True)
    args = ['qemu-io', '-f', 'qcow2']
    for cmd, *_ in WRITES:
        args += ['-c', cmd]
    args += ['-c', 'write -z 10M 2M', img.name]
    subprocess.run(args, cwd=img.parent, check=True, stdout=subprocess.DEVNULL)
    env.chown(img, UID_A)
    env.chown(dat, UID_A)
    return img, dat


def test_probe_names_data_file(env, a):
    img, dat = make(env)
    fmt, media, info = a.manager('ProbeFormat', 'ha{sv}', Open(img, os.O_RDONLY), {})
    assert (fmt, media) == ('QCOW2', 'hdd')
    assert info['files'] == [dat.name], info
    assert info['size'] == SIZE


def test_open_needs_and_reads_data_file(env, a):
    img, dat = make(env)
    e = expect_error(FILE_NEEDED, a.manager, 'OpenDisk', 'a(hsa{sv})a{sv}', [(Open(img, os.O_RDONLY), 'QCOW2', {})],
                     {})
    assert dat.name in e.message, e.message
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(img, os.O_RDONLY), 'QCOW2', {})],
                  {'files': T('a{sh}', {dat.name: Open(dat, os.O_RDONLY)})})
    for _, off, length, byte in WRITES:
        assert a.disk(d, 'Read', 'tua{sv}', off, length, {}) == bytes([byte]) * length
    assert a.disk(d, 'Read', 'tua{sv}', 10 * MiB, 65536, {}) == bytes(65536)
    assert a.disk(d, 'Read', 'tua{sv}', 20 * MiB, 4096, {}) == bytes(4096)
    a.disk(d, 'Close', 'a{sv}', {})


@pytest.mark.parametrize('raw_flag', [False, True], ids=['data_file', 'data_file_raw'])
def test_vdiskctl_convert_equals_qemu(env, a, raw_flag):
    img, dat = make(env, raw_flag)
    ref = env.tmp / (img.name + '.ref.raw')
    r = subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', img.name, str(ref)], cwd=img.parent,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    out = env.path(UID_A, img.name + '.raw')
    env.empty_file(UID_A, out.name)
    out.unlink()
    ctl(env, 'convert', '-O', 'raw', img, out)
    assert out.read_bytes() == ref.read_bytes()


def test_unreadable_data_file_stops_vdiskctl(env, a):
    img, dat = make(env)
    os.chmod(dat, 0)
    r = ctl(env, 'info', img, check=False)
    assert r.returncode != 0
    assert dat.name in r.stderr, r.stderr


def qemu_check(img):
    """qemu-img check, run in the image's directory: qemu-img 7.2's check
    (unlike info) looks for a relative data file name in its working directory."""
    r = subprocess.run(['qemu-img', 'check', img.name], cwd=img.parent, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout


def expected_content(extra=()):
    """What make()'s image holds, with `extra` (offset, bytes) written over it."""
    want = bytearray(SIZE)
    for _, off, length, byte in WRITES:
        want[off:off + length] = bytes([byte]) * length
    want[10 * MiB:12 * MiB] = bytes(2 * MiB)
    for off, data in extra:
        want[off:off + len(data)] = data
    return bytes(want)


@pytest.mark.parametrize('raw_flag', [False, True], ids=['data_file', 'data_file_raw'])
def test_write_through_data_file(env, a, raw_flag):
    img, dat = make(env, raw_flag)
    extra = [(3 * MiB, bytes([0x44]) * 70000),          # new clusters
             (10 * MiB + 4096, bytes([0x55]) * 4096),   # inside the zero clusters
             (47 * MiB + 512, bytes([0x66]) * 512)]     # in place
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(img, os.O_RDWR), 'QCOW2', {})],
                  {'files': T('a{sh}', {dat.name: Open(dat, os.O_RDWR)})})
    for off, data in extra:
        a.disk(d, 'Write', 'taya{sv}', off, data, {})
    a.disk(d, 'Close', 'a{sv}', {})
    want = expected_content(extra)
    qemu_check(img)
    ref = env.tmp / (img.name + '.written.raw')
    r = subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', img.name, str(ref)], cwd=img.parent,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    assert ref.read_bytes() == want
    if raw_flag:
        assert dat.read_bytes() == want


def test_writable_open_needs_writable_data_file(env, a):
    img, dat = make(env)
    before = (img.read_bytes(), dat.read_bytes())
    e = expect_error(ERR + 'ReadOnly', a.manager, 'OpenDisk', 'a(hsa{sv})a{sv}', [(Open(img, os.O_RDWR), 'QCOW2', {})],
                     {'files': T('a{sh}', {dat.name: Open(dat, os.O_RDONLY)})})
    assert dat.name in e.message, e.message
    assert (img.read_bytes(), dat.read_bytes()) == before


def test_vdiskctl_convert_creates_data_file(env, a):
    img, dat = make(env)
    ref = env.tmp / (img.name + '.src.raw')
    r = subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', img.name, str(ref)], cwd=img.parent,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    stem = unique('dfout')
    out, name = env.path(UID_A, stem + '.qcow2'), stem + '.dat'
    ctl(env, 'convert', '-O', 'qcow2', '-o', f'data_file={name}', img, out)
    assert (out.parent / name).exists()
    qemu_check(out)
    r = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', str(ref), out.name], cwd=out.parent,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    r = subprocess.run(['qemu-img', 'info', '--output=json', out.name], cwd=out.parent, stdout=subprocess.PIPE,
                       text=True, check=True)
    assert f'"data-file": "{name}"' in r.stdout, r.stdout
