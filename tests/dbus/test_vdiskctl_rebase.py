# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl rebase (Disk.Rebase): vdisk-img rebase's arguments, the same
stdout and exit code as vdisk-img rebase for the same case, each tool on its
own copy of the files; the two results read the same (and as the old chain
did) and link to the same parent."""

import os
import re

import pytest

from harness import A_MODIFY, A_OPEN, UID_A, MiB, unique, user_path, vdiskctl

SIZE = 8 * MiB
OLD = ((0, 65536, 0x11), (3 * MiB + 512, 100000, 0x22), (6 * MiB, MiB, 0x33))
NEW = ((0, 65536, 0x11), (5 * MiB, 4096, 0x44))


@pytest.fixture(scope='module')
def a(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return env.agent(UID_A, 'A')


def twin_dirs(env):
    """Two directories of UID_A: one for vdiskctl, one for vdisk-img."""
    out = []
    for tool in ('ctl', 'img'):
        d = user_path(env, unique('rb-' + tool))
        d.mkdir(mode=0o700)
        os.chown(d, UID_A, UID_A)
        out.append(d)
    return out


def bases(env, d, fmt):
    """old.FMT and new.FMT in d, holding OLD and NEW."""
    for name, regions in (('old', OLD), ('new', NEW)):
        raw = env.tmp / (unique(name) + '.raw')
        with open(raw, 'wb') as f:
            f.truncate(SIZE)
            for off, length, byte in regions:
                f.seek(off)
                f.write(bytes([byte]) * length)
        env.qemu_img('convert', '-f', 'raw', '-O', fmt, raw, d / f'{name}.{fmt}')


def vdi_chain(env, d):
    """old.vdi <- top.vdi, and new.vdi, in d."""
    bases(env, d, 'vdi')
    env.vdisk_img('create', '-q', '-f', 'vdi', '-b', 'old.vdi', '-F', 'vdi', d / 'top.vdi')


def qcow2_chain(env, d):
    """old.qcow2 <- top.qcow2 (data of its own at 6 MiB), and new.qcow2, in d."""
    bases(env, d, 'qcow2')
    env.qemu_img('create', '-f', 'qcow2', '-b', 'old.qcow2', '-F', 'qcow2', d / 'top.qcow2')
    env.run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x66 6M 64k', d / 'top.qcow2')


def own(env, d):
    for f in d.iterdir():
        os.chown(f, UID_A, UID_A)


def flat(env, path):
    raw = env.tmp / (unique('flat') + '.raw')
    env.vdisk_img('convert', '-O', 'raw', path, raw)
    return raw


def parent_uuid(env, path):
    m = re.search(r'^Parent UUID: (\S+)', env.vdisk_img('info', path).stdout, re.M)
    return m.group(1) if m else None


def same_as_vdisk_img(env, make, top, *args):
    """Makes the files in two directories, runs vdiskctl rebase ARGS there and
    vdisk-img rebase ARGS in the other (from that directory, as the user
    would); the same exit code and stdout. Returns (rc, ctl dir, img dir)."""
    dc, di = twin_dirs(env)
    for d in (dc, di):
        make(env, d)
        own(env, d)
    before = flat(env, dc / top)
    r_ctl = vdiskctl(env, 'rebase', *args, f'{dc.name}/{top}', check=False)
    cmd = [os.environ['VDISK_IMG'], 'rebase', *args, top]
    r_img = env.run('sh', '-c', 'cd "$0" && exec "$@" 2>/dev/null', di, *cmd, check=False)
    assert (r_ctl.returncode, r_ctl.stdout) == (r_img.returncode, r_img.stdout), (r_ctl, r_img)
    if r_ctl.returncode == 0:
        # both read the same and, but for -u, as before
        env.qemu_img('compare', '-f', 'raw', '-F', 'raw', flat(env, dc / top), flat(env, di / top))
        if '-u' not in args:
            env.qemu_img('compare', '-f', 'raw', '-F', 'raw', flat(env, dc / top), before)
    return r_ctl.returncode, dc, di


def test_rebase_like_vdisk_img(env, a):
    rc, dc, di = same_as_vdisk_img(env, vdi_chain, 'top.vdi', '-f', 'vdi', '-b', 'new.vdi', '-F', 'vdi')
    assert rc == 0
    new_uuid = re.search(r'^UUID: (\S+)', env.vdisk_img('info', dc / 'new.vdi').stdout, re.M).group(1)
    assert parent_uuid(env, dc / 'top.vdi') == new_uuid

    assert same_as_vdisk_img(env, vdi_chain, 'top.vdi', '-q', '-b', 'new.vdi', '-F', 'vdi')[0] == 0
    assert same_as_vdisk_img(env, vdi_chain, 'top.vdi', '-b', '')[0] == 0
    assert same_as_vdisk_img(env, vdi_chain, 'top.vdi', '-u', '-b', 'new.vdi', '-F', 'vdi')[0] == 0

    rc, dc, di = same_as_vdisk_img(env, qcow2_chain, 'top.qcow2', '-f', 'qcow2', '-b', 'new.qcow2', '-F',
                                   'qcow2')
    assert rc == 0
    for d in (dc, di):
        info = env.qemu_img('info', d / 'top.qcow2').stdout
        assert 'backing file: new.qcow2' in info and 'backing file format: qcow2' in info, info
        env.qemu_img('check', d / 'top.qcow2')

    # failures: the same exit code, nothing on stdout
    assert same_as_vdisk_img(env, vdi_chain, 'top.vdi', '-b', 'new.vdi')[0] == 1   # no -F
    # a new backing file that is not there: vdiskctl's own code for "not found"
    dc, di = twin_dirs(env)
    vdi_chain(env, dc)
    own(env, dc)
    r = vdiskctl(env, 'rebase', '-b', 'missing.vdi', '-F', 'vdi', f'{dc.name}/top.vdi', check=False)
    assert (r.returncode, r.stdout) == (5, ''), r
    assert 'missing.vdi' in r.stderr, r.stderr


def test_loop_refused(env, a):
    """old.vdi onto top.vdi, whose chain holds old.vdi itself: refused by both,
    nothing written."""
    dc, di = twin_dirs(env)
    for d in (dc, di):
        vdi_chain(env, d)
        own(env, d)
    before = (dc / 'old.vdi').read_bytes()
    r = vdiskctl(env, 'rebase', '-b', 'top.vdi', '-F', 'vdi', f'{dc.name}/old.vdi', check=False)
    img = env.run('sh', '-c', 'cd "$0" && exec "$@"', di, os.environ['VDISK_IMG'], 'rebase', '-b', 'top.vdi',
                  '-F', 'vdi', 'old.vdi', check=False)
    assert img.returncode == 1 and 'own ancestor' in img.stdout, img
    assert (r.returncode, r.stdout) == (1, '') and 'own ancestor' in r.stderr, r
    assert (dc / 'old.vdi').read_bytes() == before
