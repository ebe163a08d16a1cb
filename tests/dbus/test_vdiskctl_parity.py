# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl at parity with vdisk-img for what vdiskd runs (issues 12, 13),
qemu-img as the oracle:

- convert -c -n (Disk.CopyTo `compress`): into an empty qcow2 made by
  qemu-img, compressed clusters (`qemu-img map` says so), check clean,
  compare equal; an allocated cluster in the way and a format without
  compressed clusters refused in vdisk-img's words;
- convert -n -B (CopyTo `source-top-only`): only the source's top is copied;
- snapshot -l/-c/-a/-d over the Image's snapshot methods: -l prints what
  vdisk-img and qemu-img print, the others change what qemu-img lists;
- info lists the snapshots as vdisk-img info does (human and JSON);
- resize, check -r, repair and convert -n pass a `direct-fd` (unless -t/-T
  ask for the page cache); convert -t none/directsync adds Copy's
  `direct-only` (a VDI output's data never enters the page cache);
- create -b passes the backing name (`parent-name`);
- compare -T/-U accepted as vdisk-img accepts them.
"""

import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from agentproto import Open, T
from harness import A_MODIFY, A_OPEN, INVALID_ARGS, UID_A, MiB, expect_error, open_disk, unique, user_path, vdiskctl

SIZE = 8 * MiB

pytestmark = pytest.mark.skipif(not shutil.which('qemu-img') or not shutil.which('qemu-io'),
                                reason='qemu-img/qemu-io not installed')


@pytest.fixture(scope='module')
def a(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return env.agent(UID_A, 'A')


def qemu_io(env, path, *cmds, fmt='qcow2'):
    args = ['qemu-io', '-f', fmt]
    for c in cmds:
        args += ['-c', c]
    subprocess.run(args + [str(path)], check=True, stdout=subprocess.DEVNULL)


def qcow2(env, name, size=SIZE, writes=()):
    """A qcow2 image of uid A made by qemu-img, `writes` done by qemu-io."""
    path = user_path(env, name)
    env.qemu_img('create', '-q', '-f', 'qcow2', path, str(size))
    if writes:
        qemu_io(env, path, *writes)
    env.chown(path, UID_A)
    return path


def errors(text, prog):
    """The messages of `prog` in text, without the program's prefix."""
    return [l[len(prog) + 2:] for l in text.splitlines() if l.startswith(prog + ': ')]


# ---------------------------------------------------------------- convert -c -n

def test_convert_compress_into(env, a):
    src = env.make_raw(UID_A, 'c-src.raw', SIZE, regions=((0, 3 * 65536, 0x31), (2 * MiB, MiB, 0x32),
                                                         (6 * MiB + 4096, 8192, 0x33)))
    # a different pattern per cluster, so compressed data differs from plain
    with open(src, 'r+b') as f:
        f.seek(4 * MiB)
        f.write(bytes(range(256)) * 1024)
    dst = qcow2(env, 'c-dst.qcow2')
    r = vdiskctl(env, 'convert', '-c', '-n', '-f', 'raw', '-O', 'qcow2', 'c-src.raw', 'c-dst.qcow2')
    assert r.stdout == '' and r.stderr == '', r
    out = env.qemu_img('check', '-f', 'qcow2', dst).stdout
    assert '% compressed clusters' in out and ' 0.00% compressed' not in out, out
    env.qemu_img('compare', '-f', 'raw', '-F', 'qcow2', src, dst)
    # qemu-img 7.2's map gives no host offset for compressed data; vdisk-img
    # compresses the same clusters
    m = json.loads(env.qemu_img('map', '--output=json', '-f', 'qcow2', dst).stdout)
    assert [e for e in m if e['data'] and 'offset' not in e], m
    ref = qcow2(env, 'c-ref.qcow2')
    env.vdisk_img('convert', '-c', '-n', '-O', 'qcow2', src, ref)
    assert m == json.loads(env.qemu_img('map', '--output=json', '-f', 'qcow2', ref).stdout)

    # an allocated cluster in the way: vdisk-img's refusal, same exit code
    for tool in ('ctl', 'img'):
        qcow2(env, f'c-busy-{tool}.qcow2', writes=('write -P 0x55 2M 64k',))
    ctl = vdiskctl(env, 'convert', '-c', '-n', '-O', 'qcow2', 'c-src.raw', 'c-busy-ctl.qcow2', check=False)
    img = env.vdisk_img('convert', '-c', '-n', '-O', 'qcow2', src, user_path(env, 'c-busy-img.qcow2'), check=False)
    assert ctl.returncode == img.returncode == 1, (ctl, img)
    # vdiskd says what is left behind
    mix = "; the target holds a mix of its old content and the source's"
    want = [w.replace(str(user_path(env, '')) + '/', '').replace('-img.', '-ctl.') + mix
            for w in errors(img.stdout, 'vdisk-img')]
    assert want and errors(ctl.stderr, 'vdiskctl') == want, (ctl.stderr, img.stdout)
    assert 'the cluster at 2097152 is allocated' in want[0]
    env.qemu_img('check', '-f', 'qcow2', user_path(env, 'c-busy-ctl.qcow2'))

    # a format without compressed clusters: refused before anything is written
    env.vdisk_img('create', '-f', 'vdi', user_path(env, 'c-dst.vdi'), str(SIZE))
    env.chown(user_path(env, 'c-dst.vdi'), UID_A)
    before = open(user_path(env, 'c-dst.vdi'), 'rb').read()
    ctl = vdiskctl(env, 'convert', '-c', '-n', '-O', 'vdi', 'c-src.raw', 'c-dst.vdi', check=False)
    img = env.vdisk_img('convert', '-c', '-n', '-O', 'vdi', src, user_path(env, 'c-dst.vdi'), check=False)
    assert img.returncode == 1 and errors(img.stdout, 'vdisk-img') == ['Compression not supported for this file format']
    assert ctl.returncode == 6 and errors(ctl.stderr, 'vdiskctl') == \
        ['c-dst.vdi: Compression not supported for this file format'], ctl
    assert open(user_path(env, 'c-dst.vdi'), 'rb').read() == before


# ---------------------------------------------------------------- snapshot

def snapshot_l(env, name):
    """vdiskctl snapshot -l's stdout, checked against vdisk-img's and
    qemu-img's for the same file."""
    ctl = vdiskctl(env, 'snapshot', '-l', name)
    assert ctl.stderr == '', ctl
    assert ctl.stdout == env.vdisk_img('snapshot', '-l', user_path(env, name)).stdout
    assert ctl.stdout == env.qemu_img('snapshot', '-l', user_path(env, name)).stdout
    return ctl.stdout


def listed(out):
    """(id, tag) of each row of a snapshot table."""
    return [tuple(l.split()[:2]) for l in out.splitlines()[2:]]


def test_snapshot_list(env, a):
    for n in (0, 1, 3):
        path = qcow2(env, f'l{n}.qcow2', writes=('write -P 0x11 0 1M',))
        for k in range(n):
            env.qemu_img('snapshot', '-c', f'snap-{k}', path)
        if n == 3:
            # a tag wider than its column
            env.qemu_img('snapshot', '-c', 'x' * 20, path)
        out = snapshot_l(env, f'l{n}.qcow2')
        assert listed(out) == [(str(k + 1), f'snap-{k}') for k in range(n)] + ([('4', 'x' * 20)] if n == 3 else [])
    assert vdiskctl(env, 'snapshot', '-q', '-l', 'l3.qcow2').stdout == ''
    # a format without snapshots lists none, as vdisk-img
    env.make_raw(UID_A, 'l.raw', SIZE)
    assert vdiskctl(env, 'snapshot', '-l', 'l.raw').stdout == ''


def test_snapshot_change(env, a):
    path = qcow2(env, 'ch.qcow2', writes=('write -P 0x11 0 1M',))
    assert vdiskctl(env, 'snapshot', '-c', 'first', 'ch.qcow2').stdout == ''
    qemu_io(env, path, 'write -P 0x22 0 64k')
    vdiskctl(env, 'snapshot', '-c', 'second', 'ch.qcow2')
    env.qemu_img('check', path)
    assert listed(snapshot_l(env, 'ch.qcow2')) == [('1', 'first'), ('2', 'second')]

    # -a: the data of the snapshot (by name or id) is back
    qemu_io(env, path, 'write -P 0x33 0 64k')
    vdiskctl(env, 'snapshot', '-a', 'first', 'ch.qcow2')
    env.qemu_img('check', path)
    qemu_io(env, path, 'read -P 0x11 0 1M')
    vdiskctl(env, 'snapshot', '-a', '2', 'ch.qcow2')
    qemu_io(env, path, 'read -P 0x22 0 64k', 'read -P 0x11 64k 960k')

    # -d by id and by name
    vdiskctl(env, 'snapshot', '-d', '1', 'ch.qcow2')
    assert listed(snapshot_l(env, 'ch.qcow2')) == [('2', 'second')]
    vdiskctl(env, 'snapshot', '-d', 'second', 'ch.qcow2')
    assert snapshot_l(env, 'ch.qcow2') == ''
    env.qemu_img('check', path)

    # failures: vdisk-img's messages and exit codes
    env.make_raw(UID_A, 'ch.raw', SIZE)
    env.vdisk_img('create', '-q', '-f', 'vdi', user_path(env, 'ch.vdi'), str(SIZE))
    env.chown(user_path(env, 'ch.vdi'), UID_A)
    for args in (('-a', 'nope', 'ch.qcow2'), ('-d', 'nope', 'ch.qcow2'), ('-c', 'x', 'ch.vdi'),
                 ('-a', 'x', 'ch.vdi'), ('-d', 'x', 'ch.vdi'), ('-c', 'x', '-f', 'raw', 'ch.raw')):
        ctl = vdiskctl(env, 'snapshot', *args, check=False)
        img = env.vdisk_img('snapshot', *[user_path(env, x) if x.startswith('ch.') else x for x in args], check=False)
        assert (ctl.returncode, errors(ctl.stderr, 'vdiskctl')) == (img.returncode, errors(img.stdout, 'vdisk-img')), \
            (args, ctl, img)
        assert ctl.returncode == 1
    assert snapshot_l(env, 'ch.qcow2') == ''
    # a bad command line
    r = vdiskctl(env, 'snapshot', '-l', '-d', 'x', 'ch.qcow2', check=False)
    assert r.returncode == 2 and "Cannot mix '-l', '-a', '-c', '-d'" in r.stderr, r


def test_info_snapshots(env, a):
    """vdiskctl info lists the snapshots as vdisk-img info does (and
    qemu-img); vdiskd gives no "Format specific information", the rest is
    the same."""
    path = qcow2(env, 'i.qcow2', writes=('write -P 0x11 0 1M',))
    env.qemu_img('snapshot', '-c', 'one', path)
    qemu_io(env, path, 'write -P 0x22 0 64k')
    env.qemu_img('snapshot', '-c', 'x' * 20, path)
    ctl = vdiskctl(env, 'info', str(path))
    img = env.vdisk_img('info', path).stdout
    assert ctl.stderr == '', ctl
    assert img.split('Format specific information:')[0] == ctl.stdout, (img, ctl.stdout)
    assert listed(ctl.stdout[ctl.stdout.index('Snapshot list:'):]) == [('1', 'one'), ('2', 'x' * 20)], ctl.stdout
    assert env.qemu_img('info', path).stdout.startswith(ctl.stdout)

    ctl = json.loads(vdiskctl(env, 'info', '--output=json', str(path)).stdout)
    img = json.loads(env.vdisk_img('info', '--output=json', path).stdout)
    del img['format-specific']
    assert ctl == img and len(ctl['snapshots']) == 2, (ctl, img)
    # qemu-img's values (its keys, dates to the nanosecond)
    q = json.loads(env.qemu_img('info', '--output=json', path).stdout)['snapshots']
    assert ctl['snapshots'] == [{k: s[k] for k in ctl['snapshots'][0]} for s in q], (ctl, q)

    # with --backing-chain each image lists its own; a format without
    # snapshots lists none
    top = overlay(env, 'i-top.qcow2', 'i.qcow2')
    out = vdiskctl(env, 'info', '--backing-chain', str(top)).stdout
    assert out.count('Snapshot list:') == 1 and out.index('Snapshot list:') > out.index('image: ' + str(path)), out
    chain = json.loads(vdiskctl(env, 'info', '--output=json', '--backing-chain', str(top)).stdout)
    assert ['snapshots' in i for i in chain] == [False, True], chain
    env.make_raw(UID_A, 'i.raw', SIZE)
    assert vdiskctl(env, 'info', 'i.raw').stdout == env.vdisk_img('info', user_path(env, 'i.raw')).stdout.replace(
        str(user_path(env, 'i.raw')), 'i.raw')


# ---------------------------------------------------------------- direct-fd

def traced(env, *args, key='direct-fd'):
    """vdiskctl ARGS under strace: (result, whether a message it sent
    carried a descriptor it had opened O_DIRECT, or a duplicate of one,
    together with `key`, by default `direct-fd`)."""
    log = env.tmp / unique('strace')
    cmd = ['strace', '-f', '-qq', '-s', '65536', '-e', 'trace=openat,fcntl,sendmsg', '-o', str(log),
           'setpriv', f'--reuid={UID_A}', f'--regid={UID_A}', '--clear-groups', '--', os.environ['VDISKCTL'],
           f'--address={env.bus.address}', '--no-ask-password'] + [str(x) for x in args]
    r = subprocess.run(cmd, cwd=env.dirs[UID_A], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120, env={'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8',
                                         # an ASan build's leak check refuses to run under ptrace
                                         'ASAN_OPTIONS': 'detect_leaks=0'})
    direct, passed = set(), False
    for line in log.read_text().splitlines():
        m = re.search(r'openat\(AT_FDCWD, "/proc/self/fd/\d+", [A-Z_|]*O_DIRECT[A-Z_|]*\)\s+= (\d+)', line)
        if m:
            direct.add(m.group(1))
        m = re.search(r'fcntl\((\d+), F_DUPFD(?:_CLOEXEC)?, \d+\)\s+= (\d+)', line)   # sd-bus keeps a duplicate
        if m and m.group(1) in direct:
            direct.add(m.group(2))
        m = re.search(r'SCM_RIGHTS, cmsg_data=\[([0-9, ]+)\]', line)
        if m and 'direct-fd' in line and key in line and direct & {x.strip() for x in m.group(1).split(',')}:
            passed = True
    return r, passed


def leaky_qcow2(env, name):
    """A qcow2 image made by qemu-img with one leaked cluster (a refcount
    of 1 for a cluster nothing maps, past the metadata)."""
    path = qcow2(env, name, size=MiB)
    with open(path, 'r+b') as f:
        rt = struct.unpack('>Q', f.read(56)[48:56])[0]
        f.seek(rt)
        rb = struct.unpack('>Q', f.read(8))[0]
        n = (os.path.getsize(path) + 65535) // 65536
        f.seek(rb + 2 * n)
        f.write(struct.pack('>H', 1))
        f.truncate((n + 1) * 65536)
    assert env.qemu_img('check', path, check=False).returncode == 3
    return path


def test_direct_fd_resize_repair(env, a):
    path = qcow2(env, 'd.qcow2', writes=('write -P 0x11 0 1M',))
    r, passed = traced(env, 'resize', 'd.qcow2', '+2M')
    assert r.returncode == 0 and r.stdout == 'Image resized.\n' and passed, (r, passed)
    assert json.loads(env.qemu_img('info', '--output=json', path).stdout)['virtual-size'] == SIZE + 2 * MiB
    env.qemu_img('check', path)
    qemu_io(env, path, 'read -P 0x11 0 1M', f'read -P 0 1M {SIZE + MiB}')
    # preallocation=full writes the new part
    raw = env.make_raw(UID_A, 'd.raw', SIZE, regions=((0, MiB, 0x11),))
    r, passed = traced(env, 'resize', '-f', 'raw', '--preallocation=full', 'd.raw', '+1M')
    assert r.returncode == 0 and passed, (r, passed)
    assert os.path.getsize(raw) == SIZE + MiB and os.stat(raw).st_blocks * 512 >= MiB + MiB
    qemu_io(env, raw, 'read -P 0x11 0 1M', f'read -P 0 1M {SIZE}', fmt='raw')

    for args, direct in ((('check', '-r', 'leaks'), True), (('check', '-r', 'all', '-T', 'writeback'), False),
                         (('repair',), True)):
        path = leaky_qcow2(env, 'leak.qcow2')
        r, passed = traced(env, *args, 'leak.qcow2')
        assert r.returncode == 0 and passed == direct, (args, r, passed)
        env.qemu_img('check', path)
    # a check alone writes nothing: no descriptor for writing
    r, passed = traced(env, 'check', 'leak.qcow2')
    assert r.returncode == 0 and not passed, r

    # convert -n: the target's top, as convert without -n does for its output
    src = env.make_raw(UID_A, 'dn.raw', SIZE, regions=((0, MiB, 0x61),))
    for cache, direct in ((None, True), ('writeback', False)):
        dst = qcow2(env, unique('dn') + '.qcow2')
        r, passed = traced(env, 'convert', '-n', *(('-t', cache) if cache else ()), '-O', 'qcow2', 'dn.raw', dst.name)
        assert r.returncode == 0 and passed == direct, (cache, r, passed)
        env.qemu_img('compare', '-f', 'raw', '-F', 'qcow2', src, dst)


def resident(path):
    """Bytes of the file in the page cache (fincore)."""
    out = subprocess.run(['fincore', '--bytes', '--noheadings', '--output', 'RES', str(path)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return int(out.split()[0])


@pytest.mark.skipif(not shutil.which('fincore'), reason='fincore (util-linux) not installed')
def test_convert_direct_only(env, a):
    """-t none and directsync keep a copy into a format that appends its
    blocks direct: vdiskctl sends Copy's `direct-only` with its `direct-fd`,
    and a VDI output's data never was in the page cache (by default, and
    with -t writeback, it went through it)."""
    size = 32 * MiB
    src = user_path(env, 'do.raw')
    with open(src, 'wb') as f:
        f.write(os.urandom(size))
    env.chown(src, UID_A)
    for fmt, cache, direct_only in (('vdi', 'none', True), ('vdi', 'directsync', True), ('vpc', 'none', True),
                                    ('vmdk', 'directsync', True), ('vdi', None, False), ('vdi', 'writeback', False)):
        name = unique('do') + '.' + fmt
        r, sent = traced(env, 'convert', *(('-t', cache) if cache else ()), '-O', fmt, 'do.raw', name,
                         key='direct-only')
        assert r.returncode == 0 and r.stderr == '' and sent == direct_only, (fmt, cache, r, sent)
        out = user_path(env, name)
        # before anything reads it; the data of VHD (after each block's
        # bitmap) and VMDK is not aligned for direct writes (as vdisk-img's)
        cached = resident(out)
        if fmt == 'vdi' and direct_only:
            assert cached < size // 8, (fmt, cache, cached)     # metadata only
        elif fmt == 'vdi':
            assert cached >= size // 2, (fmt, cache, cached)
        if fmt != 'vpc':   # qemu-img checks no VHD
            env.qemu_img('check', '-f', fmt, out)
        env.qemu_img('compare', '-f', 'raw', '-F', fmt, src, out)
    # direct-only without a direct-fd says nothing: refused in the call
    d = open_disk(env, a, [src], fmt='RAW', name='do', flags=os.O_RDONLY)
    dest = user_path(env, 'do-bad.vdi')
    open(dest, 'wb').close()
    env.chown(dest, UID_A)
    expect_error(INVALID_ARGS, a.disk, d, 'Copy', 'hsa{sv}', Open(dest, os.O_RDWR), 'VDI',
                 {'direct-only': T('b', True)})
    a.disk(d, 'Close', 'a{sv}', {})
    assert os.path.getsize(dest) == 0


# ---------------------------------------------------------------- convert -n -B

def top_map(env, path):
    """What the top image of path's chain defines, as qemu-img maps it."""
    return [(e['start'], e['length'], e['zero']) for e in
            json.loads(env.qemu_img('map', '--output=json', path).stdout) if e['depth'] == 0 and e['present']]


def overlay(env, name, backing):
    """A qcow2 image of uid A over `backing` (a name in the same directory), made by qemu-img."""
    path = user_path(env, name)
    env.qemu_img('create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', path)
    env.chown(path, UID_A)
    return path


def test_convert_into_top_only(env, a):
    base = qcow2(env, 'b-base.qcow2', writes=('write -P 0x11 0 4M',))
    top = overlay(env, 'b-top.qcow2', 'b-base.qcow2')
    qemu_io(env, top, 'write -P 0x22 1M 64k', 'write -z 2M 64k', 'write -P 0x23 6M 128k')
    # the targets: overlays over a copy of the source's base, as qemu-img convert -n -B expects
    for t in ('ctl', 'img'):
        shutil.copy(base, user_path(env, f'b-tbase-{t}.qcow2'))
        env.chown(user_path(env, f'b-tbase-{t}.qcow2'), UID_A)
    dst, ref = overlay(env, 'b-t-ctl.qcow2', 'b-tbase-ctl.qcow2'), overlay(env, 'b-t-img.qcow2', 'b-tbase-img.qcow2')

    r = vdiskctl(env, 'convert', '-n', '-B', 'b-tbase-ctl.qcow2', '-O', 'qcow2', 'b-top.qcow2', 'b-t-ctl.qcow2')
    assert r.stdout == '' and r.stderr == '', r
    env.qemu_img('check', dst)
    env.qemu_img('compare', top, dst)
    # only the source's top was copied: the target's top defines what it does, no more
    assert top_map(env, dst) == top_map(env, top)
    env.vdisk_img('convert', '-n', '-B', user_path(env, 'b-tbase-img.qcow2'), '-O', 'qcow2', top, ref)
    assert top_map(env, dst) == top_map(env, ref)
    # without -B the whole source is copied into the target's top
    full = overlay(env, 'b-full.qcow2', 'b-tbase-ctl.qcow2')
    vdiskctl(env, 'convert', '-n', '-O', 'qcow2', 'b-top.qcow2', 'b-full.qcow2')
    assert top_map(env, full) != top_map(env, top)

    # -B makes a new image with a backing file: vdisk-img's business
    r = vdiskctl(env, 'convert', '-B', 'b-tbase-ctl.qcow2', '-O', 'qcow2', 'b-top.qcow2', 'b-new.qcow2', check=False)
    assert r.returncode == 2 and '-B requires -n' in r.stderr, r
    assert not os.path.exists(user_path(env, 'b-new.qcow2'))
    # -c takes the whole source
    r = vdiskctl(env, 'convert', '-c', '-n', '-B', 'b-tbase-ctl.qcow2', '-O', 'qcow2', 'b-top.qcow2', 'b-t-ctl.qcow2',
                 check=False)
    assert r.returncode != 0 and "'compress' and 'source-top-only'" in r.stderr, r


def test_create_diff_names_backing(env, a):
    """vdiskctl create -b passes the backing name as given (CreateDiff
    `parent-name`): a qcow2 diff records it as qemu-img does."""
    base = qcow2(env, 'cb-base.qcow2', writes=('write -P 0x11 0 1M',))
    r = vdiskctl(env, 'create', '-f', 'qcow2', '-b', 'cb-base.qcow2', '-F', 'qcow2', 'cb-top.qcow2')
    assert r.returncode == 0 and r.stderr == '', r
    top = user_path(env, 'cb-top.qcow2')
    info = json.loads(env.qemu_img('info', '--output=json', top).stdout)
    assert (info['backing-filename'], info['backing-filename-format']) == ('cb-base.qcow2', 'qcow2'), info
    env.qemu_img('check', top)
    env.qemu_img('compare', base, top)


# ---------------------------------------------------------------- compare -T/-U

def test_compare_cache_and_share(env, a):
    env.make_raw(UID_A, 't1.raw', SIZE, regions=((0, 4096, 0x41),))
    env.make_raw(UID_A, 't2.raw', SIZE, regions=((0, 4096, 0x41), (5 * MiB, 512, 0x42)))
    for args in (('-T', 'writeback', 't1.raw', 't2.raw'), ('-U', 't1.raw', 't1.raw'),
                 ('--force-share', '-T', 'none', '-f', 'raw', 't1.raw', 't2.raw')):
        ctl = vdiskctl(env, 'compare', *args, check=False)
        img = env.vdisk_img('compare', *[user_path(env, x) if x.endswith('.raw') else x for x in args], check=False)
        assert (ctl.returncode, ctl.stdout) == (img.returncode, img.stdout), (args, ctl, img)
        assert ctl.returncode in (0, 1) and ctl.stdout, ctl
    # a cache mode that is none: both refuse it (vdiskctl: a bad command line, 2)
    ctl = vdiskctl(env, 'compare', '-T', 'bogus', 't1.raw', 't2.raw', check=False)
    img = env.vdisk_img('compare', '-T', 'bogus', user_path(env, 't1.raw'), user_path(env, 't2.raw'), check=False)
    assert errors(ctl.stderr, 'vdiskctl') == errors(img.stdout, 'vdisk-img') == ['Invalid source cache option: bogus']
    assert (ctl.returncode, img.returncode) == (2, 1)
