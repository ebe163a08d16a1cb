# SPDX-License-Identifier: LGPL-2.1-or-later
"""VHD and VMDK end to end through vdiskctl and vdiskd (issue 11): a raw
file converted to a dynamic VHD and to a monolithicSparse VMDK, a diff
created over each, data written into it over the bus, then rebase onto
another base and onto nothing, or commit. After each step qemu-img
checks the files (VMDK; qemu-img checks no VHD) and compares what they read
with a flat reference. qemu-img reads a VHD diff without its parent, so a
VHD chain is flattened by vdisk-img first; the links themselves are read
back from the files (the VMDK's parentFileNameHint and parentCID, the VHD's
locator as vdisk-img names it)."""

import json
import os
import re
import shutil
import struct

import pytest

from harness import A_MODIFY, A_OPEN, UID_A, MiB, Open, unique, user_path, vdiskctl

SIZE = 8 * MiB
BASE = ((0, MiB, 0x11), (3 * MiB + 512, 100000, 0x12), (6 * MiB, MiB, 0x13))
NEW = ((0, 65536, 0x11), (5 * MiB, 4096, 0x44))
TOP = ((512 * 1024, 4096, 0x21), (3 * MiB, 2 * MiB + 4096, 0x22), (8 * MiB - 65536, 65536, 0x23))

# vdiskctl's format, the backend name over the bus, the create options
FORMATS = (('vpc', 'VHD', 'subformat=dynamic'), ('vmdk', 'VMDK', 'subformat=monolithicSparse'))

pytestmark = pytest.mark.skipif(not shutil.which('qemu-img'), reason='qemu-img not installed')


@pytest.fixture(scope='module')
def a(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return env.agent(UID_A, 'A')


def apply(ref, regions):
    for off, length, byte in regions:
        ref[off:off + length] = bytes([byte]) * length


def raw_of(env, regions, name):
    """A raw file of uid A holding `regions`, and its content."""
    ref = bytearray(SIZE)
    apply(ref, regions)
    env.make_raw(UID_A, name, SIZE, regions=regions)
    return ref


def write_top(env, a, files, backend, regions):
    """Opens the chain `files` (base first) over the bus and writes `regions`
    into its top with Disk.Write."""
    chain = [(Open(user_path(env, f), os.O_RDWR if f == files[-1] else os.O_RDONLY), backend, {}) for f in files]
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', chain, {})
    for off, length, byte in regions:
        for k in range(off, off + length, MiB):
            n = min(MiB, off + length - k)
            a.disk(d, 'Write', 'taya{sv}', k, bytes([byte]) * n, {})
    a.disk(d, 'Close', 'a{sv}', {})


def reads_as(env, fmt, name, ref, qemu=True):
    """The chain of `name` is valid and reads as `ref`: qemu-img check
    (VMDK), and qemu-img compare of the chain (VMDK) or of vdisk-img's
    flattening (a VHD diff, which qemu-img reads without its parent; and
    without `qemu`)."""
    path = user_path(env, name)
    want = env.tmp / (unique('ref') + '.raw')
    want.write_bytes(bytes(ref))
    env.vdisk_img('check', '-f', fmt, path)
    if fmt == 'vmdk' and qemu:
        env.qemu_img('check', '-f', 'vmdk', path)
        env.qemu_img('compare', '-f', 'raw', '-F', 'vmdk', want, path)
    else:
        flat = env.tmp / (unique('flat') + '.raw')
        env.vdisk_img('convert', '-O', 'raw', path, flat)
        env.qemu_img('compare', '-f', 'raw', '-F', 'raw', want, flat)


def backing(env, fmt, name):
    """The parent the top names: qemu-img's backing file for a VMDK,
    vdisk-img's (the VHD locator) for a VHD; None when it names none."""
    tool = env.qemu_img if fmt == 'vmdk' else env.vdisk_img
    return json.loads(tool('info', '--output=json', '-f', fmt, user_path(env, name)).stdout).get('backing-filename')


def descriptor(env, name):
    """The embedded descriptor of a monolithicSparse VMDK: {key: value}."""
    with open(user_path(env, name), 'rb') as f:
        head = f.read(512)
        off, size = struct.unpack('<QQ', head[28:44])
        f.seek(off * 512)
        text = f.read(size * 512).split(b'\0')[0].decode()
    return dict(re.findall(r'^(\w+)\s*=\s*"?([^"\n]*)"?$', text, re.M))


def vhd_type(env, name):
    """The disk type in a VHD's footer (3: dynamic, 4: differencing)."""
    with open(user_path(env, name), 'rb') as f:
        f.seek(-512, os.SEEK_END)
        return struct.unpack('>I', f.read(512)[60:64])[0]


def bases_and_diff(env, a, fmt, backend, opts, tag):
    """raw -> FMT base and new (vdiskctl convert), a diff over base
    (vdiskctl create -b) holding TOP written over the bus; each checked.
    Returns (base, new, top, what the top reads, what new reads)."""
    base, new, top = (f'{fmt}-{tag}-{n}.{fmt}' for n in ('base', 'new', 'top'))
    ref = raw_of(env, BASE, f'{fmt}-{tag}-base.raw')
    new_ref = raw_of(env, NEW, f'{fmt}-{tag}-new.raw')

    # raw -> dynamic VHD / monolithicSparse VMDK
    for raw, out, want in ((f'{fmt}-{tag}-base.raw', base, ref), (f'{fmt}-{tag}-new.raw', new, new_ref)):
        r = vdiskctl(env, 'convert', '-f', 'raw', '-O', fmt, '-o', opts, raw, out)
        assert r.stdout == '' and r.stderr == '', r
        reads_as(env, fmt, out, want)
        env.qemu_img('compare', '-f', 'raw', '-F', fmt, user_path(env, raw), user_path(env, out))
    if fmt == 'vpc':
        assert vhd_type(env, base) == 3
    else:
        assert descriptor(env, base)['createType'] == 'monolithicSparse'

    # a diff over it, naming it as given, written over the bus
    vdiskctl(env, 'create', '-q', '-f', fmt, '-b', base, '-F', fmt, top)
    assert backing(env, fmt, top) == base
    if fmt == 'vpc':
        assert vhd_type(env, top) == 4
    else:
        assert descriptor(env, top)['parentCID'] == descriptor(env, base)['CID']
    reads_as(env, fmt, top, ref)
    write_top(env, a, [base, top], backend, TOP)
    apply(ref, TOP)
    reads_as(env, fmt, top, ref)
    return base, new, top, ref, new_ref


@pytest.mark.parametrize('fmt,backend,opts', FORMATS, ids=[f[0] for f in FORMATS])
def test_diff_rebase(env, a, fmt, backend, opts):
    base, new, top, ref, _ = bases_and_diff(env, a, fmt, backend, opts, 'rb')

    # rebase onto the other base: the top reads as before and names it
    r = vdiskctl(env, 'rebase', '-f', fmt, '-b', new, '-F', fmt, top)
    assert r.stdout == '' and r.stderr == '', r
    assert backing(env, fmt, top) == new
    if fmt == 'vmdk':
        assert descriptor(env, top)['parentCID'] == descriptor(env, new)['CID']
    reads_as(env, fmt, top, ref)
    reads_as(env, fmt, base, raw_of(env, BASE, unique('b') + '.raw'))    # untouched

    # onto nothing: a standalone image, which qemu-img reads as it is
    r = vdiskctl(env, 'rebase', '-f', fmt, '-b', '', top)
    assert r.stdout == '' and r.stderr == '', r
    assert backing(env, fmt, top) is None
    if fmt == 'vpc':
        assert vhd_type(env, top) == 3
    reads_as(env, fmt, top, ref)
    want = env.tmp / (unique('ref') + '.raw')
    want.write_bytes(bytes(ref))
    env.qemu_img('compare', '-f', 'raw', '-F', fmt, want, user_path(env, top))


@pytest.mark.parametrize('fmt,backend,opts', FORMATS, ids=[f[0] for f in FORMATS])
def test_diff_commit(env, a, fmt, backend, opts):
    base, _, top, ref, _ = bases_and_diff(env, a, fmt, backend, opts, 'cm')

    r = vdiskctl(env, 'commit', '-f', fmt, top)
    assert r.stdout == f"Image committed.\n'{top}' left the chain (the file is kept).\n" and r.stderr == '', r
    # the base alone reads what the chain read (qemu-img check and compare)
    reads_as(env, fmt, base, ref)
    # the top, kept (relinked onto the base), still reads the same over it
    reads_as(env, fmt, top, ref)


def test_vmdk_top_after_commit(env, a):
    """The top, writable, is relinked onto the base before it leaves the
    chain (qemu-img commit leaves a VMDK top naming the base's old CID,
    which neither qemu-img nor vdisk-img reads): its parentCID is the base's
    new CID, it still names the base, and qemu-img reads the same through it."""
    fmt, backend, opts = FORMATS[1]
    base, _, top, ref, _ = bases_and_diff(env, a, fmt, backend, opts, 'cx')
    old_cid = descriptor(env, base)['CID']
    vdiskctl(env, 'commit', '-q', '-f', fmt, top)
    assert descriptor(env, base)['CID'] != old_cid
    assert descriptor(env, top)['parentCID'] == descriptor(env, base)['CID']
    assert backing(env, fmt, top) == base
    reads_as(env, fmt, top, ref)
    want = env.tmp / (unique('ref') + '.raw')
    want.write_bytes(bytes(ref))
    env.qemu_img('compare', '-f', 'raw', '-F', fmt, want, user_path(env, top))
    env.qemu_img('compare', '-f', fmt, '-F', fmt, user_path(env, base), user_path(env, top))
