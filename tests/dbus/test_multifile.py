# SPDX-License-Identifier: LGPL-2.1-or-later
"""Images of several files through vdiskd (docs/dbus-api.md "Images of
several files"): a twoGbMaxExtentSparse VMDK (a descriptor and its 2 GiB
extents) and a chain of them (base + diff), made by qemu-img.

- ProbeFormat names the extents (`files`) without opening them; vdiskctl
  opens them with the user's rights and passes them by name; a missing extent
  is `FileNeeded` naming the extent, not the descriptor; an extent the caller
  cannot read stops vdiskctl, and vdiskd never opens it (it opens no path).
- A 70 GiB image (35 extents, more than one call's 16 descriptors) opens
  through a FileSet.
- The acceptance path: the chain opened, read, written over the bus, then
  converted by `vdiskctl convert` to raw, VDI and VHD with progress, compared
  with qemu-img's own conversion of the same chain byte for byte; a cancelled
  conversion (its worker held on a frozen fs) leaves every image valid.
- Creating multi-file outputs: Copy into twoGbMaxExtentSparse and
  twoGbMaxExtentFlat VMDKs with one fd per output file (`files`), a missing one
  `FileNeeded` naming every missing file.
- Bounds: a Disk holds one descriptor per file, extents included: one past
  `--max-fds-per-user` is `LimitsExceeded`.
"""

import json
import os
import subprocess

import pytest

from harness import (A_MODIFY, A_OPEN, ERR, LIMITS_EXCEEDED, UID_A, MiB, Fd, Open, T, deadline, expect_error,
                     frozen_fs, tool, unique, user_path, vdiskctl, wait_until)

GiB = 1024 * MiB

MAX_FDS_PER_USER = 80
VDISK_ENV = dict(daemon_args=['--max-fds-per-call=16', f'--max-fds-per-user={MAX_FDS_PER_USER}'])

FILE_NEEDED = ERR + 'FileNeeded'
SPLIT = 'twoGbMaxExtentSparse'
SIZE = 5 * GiB                 # three extents: 2 + 2 + 1 GiB

# (offset, length, byte): the base's data, across both extent boundaries
BASE_DATA = [(0, 1 * MiB, 0x11), (2 * GiB - 64 * 1024, 256 * 1024, 0x12), (4 * GiB + 4096, 70000, 0x13),
             (SIZE - 1 * MiB, 1 * MiB, 0x14)]
# written into the diff over the bus
DIFF_DATA = [(512 * 1024, 1 * MiB, 0x21), (2 * GiB - 4096, 8192, 0x22), (3 * GiB, 65536, 0x23)]

pytestmark = pytest.mark.usefixtures('policy')


@pytest.fixture(scope='module')
def a(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return env.agent(UID_A, 'A')


def ctl(env, *args, check=True):
    return vdiskctl(env, *args, check=check, timeout=300)


def p(env, name):
    return user_path(env, name)


def own_all(env, stem):
    for f in env.dirs[UID_A].iterdir():
        if f.name.startswith(stem):
            env.chown(f, UID_A)


def extents(env, stem, kind='s'):
    return sorted(f.name for f in env.dirs[UID_A].iterdir() if f.name.startswith(f'{stem}-{kind}'))


def make_base(env, stem, size=SIZE, data=BASE_DATA):
    """A twoGbMaxExtentSparse base made by qemu-img convert from a raw file holding `data`."""
    raw = env.tmp / f'.{stem}.raw'
    with open(raw, 'wb') as f:
        f.truncate(size)
        for off, length, byte in data:
            f.seek(off)
            f.write(bytes([byte]) * length)
    env.qemu_img('convert', '-f', 'raw', '-O', 'vmdk', '-o', f'subformat={SPLIT}', raw, p(env, stem + '.vmdk'))
    raw.unlink()
    own_all(env, stem)
    return p(env, stem + '.vmdk')


def make_diff(env, stem, base):
    env.qemu_img('create', '-f', 'vmdk', '-o', f'subformat={SPLIT}', '-b', base.name, '-F', 'vmdk',
                 p(env, stem + '.vmdk'))
    own_all(env, stem)
    return p(env, stem + '.vmdk')


def opened(path, flags=os.O_RDONLY):
    """The `files` of an OpenDisk: every extent of the descriptor at `path`."""
    stem = path.name[:-len('.vmdk')]
    return {f.name: Open(f, flags) for f in sorted(path.parent.iterdir()) if f.name.startswith(stem + '-s')}


def ref_raw(env, top, name):
    """qemu-img's flattening of the chain whose top is `top`."""
    out = env.tmp / name
    env.qemu_img('convert', '-f', 'vmdk', '-O', 'raw', top, out)
    return out


def data_ranges(path):
    """The ranges of `path` that hold data (SEEK_DATA/SEEK_HOLE); the rest reads as zeros."""
    out = []
    with open(path, 'rb') as f:
        fd, end, off = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while off < end:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, stop))
            off = stop
    return out


def same_bytes(a, b):
    """Byte for byte, reading only where either file holds data (holes read
    as zeros in both): a 5 GiB mostly sparse pair costs what its data does."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False, f'sizes differ: {os.path.getsize(a)} != {os.path.getsize(b)}'
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        for start, stop in sorted(data_ranges(a) + data_ranges(b)):
            off = start
            while off < stop:
                n = min(stop - off, 4 * MiB)
                fa.seek(off)
                fb.seek(off)
                if fa.read(n) != fb.read(n):
                    return False, f'differ in [{off}, {off + n})'
                off += n
    return True, ''


# ---------------------------------------------------------------------------


def test_probe_names_extents(env, a):
    """ProbeFormat of a descriptor names its extents, in order, without
    opening them (vdiskd got only the descriptor's fd)."""
    base = make_base(env, unique('probe'))
    stem = base.name[:-5]
    fmt, media, info = a.manager('ProbeFormat', 'ha{sv}', Open(base, os.O_RDONLY), {})
    assert (fmt, media) == ('VMDK', 'hdd')
    assert info['files'] == [f'{stem}-s001.vmdk', f'{stem}-s002.vmdk', f'{stem}-s003.vmdk'], info
    assert info['size'] == SIZE and info['variant'] != ''
    assert not info['needs-parent']
    # A monolithic image has no companions.
    mono = p(env, unique('mono') + '.vmdk')
    env.qemu_img('create', '-f', 'vmdk', mono, '64M')
    env.chown(mono, UID_A)
    assert a.manager('ProbeFormat', 'ha{sv}', Open(mono, os.O_RDONLY), {})[2]['files'] == []


def test_missing_extent_is_file_needed(env, a):
    """OpenDisk without one extent: FileNeeded naming that extent (the
    descriptor was given); with all of them the disk reads the data."""
    base = make_base(env, unique('miss'))
    files = opened(base)
    missing = sorted(files)[1]
    del files[missing]
    e = expect_error(FILE_NEEDED, a.manager, 'OpenDisk', 'a(hsa{sv})a{sv}',
                     [(Open(base, os.O_RDONLY), 'VMDK', {})], {'files': T('a{sh}', files)})
    assert missing in e.message, e.message
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(base, os.O_RDONLY), 'VMDK', {})],
                  {'files': T('a{sh}', opened(base))})
    off, length, byte = BASE_DATA[1]
    assert a.disk(d, 'Read', 'tua{sv}', off, length, {}) == bytes([byte]) * length
    a.disk(d, 'Close', 'a{sv}', {})
    # vdiskctl: the missing file is the user's problem, named by vdiskctl (exit 5).
    os.rename(p(env, missing), p(env, missing + '.away'))
    r = ctl(env, 'info', base, check=False)
    assert r.returncode == 5, (r.returncode, r.stderr)
    assert missing in r.stderr, r.stderr


def test_unreadable_extent_never_opened(env, a):
    """An extent the user cannot read: vdiskctl stops with a permission error
    naming it (exit 4); vdiskd (its own uid) had no way to open it either and
    never tried: it opens no path."""
    base = make_base(env, unique('perm'))
    stem = base.name[:-5]
    secret = p(env, f'{stem}-s002.vmdk')
    os.chown(secret, 0, 0)
    os.chmod(secret, 0o600)
    r = ctl(env, 'info', base, check=False)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert secret.name in r.stderr, r.stderr


def test_more_extents_than_one_call(env, a):
    """A 70 GiB twoGbMaxExtentSparse image has 35 extents: 36 descriptors,
    more than one call's 16. vdiskctl fills a FileSet and opens it in one
    OpenDisk; the data across extents reads back, and convert to VDI equals
    qemu-img's reading (qemu-img compare)."""
    size = 70 * GiB
    data = [(0, 65536, 0x41), (34 * 2 * GiB + 4096, 65536, 0x42), (size - 65536, 65536, 0x43)]
    stem = unique('big')
    base = make_base(env, stem, size, data)
    assert len(extents(env, stem)) == 35
    info = json.loads(ctl(env, 'info', '--output=json', base).stdout)
    assert info['virtual-size'] == size, info
    out = p(env, unique('big-out') + '.vdi')
    ctl(env, 'convert', '-O', 'vdi', base, out)
    env.qemu_img('compare', '-f', 'vmdk', '-F', 'vdi', base, out)


def test_fd_bound_counts_extents(env, a):
    """A Disk holds a descriptor per file: the 36 of a 35-extent image count
    against --max-fds-per-user (80 here). With that Disk open, FileSets of 16
    + 16 descriptors fit (68), 16 more (84) are LimitsExceeded; had the Disk
    been charged one descriptor, they would have fit (49)."""
    size = 70 * GiB
    stem = unique('bound')
    base = make_base(env, stem, size, [(0, 4096, 0x51)])
    first = a.manager('CreateFileSet', 'a{sv}', {})
    names = sorted(opened(base))
    for i in range(0, len(names), 15):
        a.call(first, 'org.vdisk.VDisk1.FileSet', 'Add', 'a{sh}a{sv}',
               {n: Open(p(env, n), os.O_RDONLY) for n in names[i:i + 15]}, {})
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(base, os.O_RDONLY), 'VMDK', {})],
                  {'file-set': T('o', first), 'read-only': True})
    assert a.disk(d, 'Read', 'tua{sv}', 0, 4096, {}) == bytes([0x51]) * 4096
    second = a.manager('CreateFileSet', 'a{sv}', {})

    def add16(tag):
        a.call(second, 'org.vdisk.VDisk1.FileSet', 'Add', 'a{sh}a{sv}',
               {f'{tag}-{n}': Open(p(env, n), os.O_RDONLY) for n in names[:16]}, {})

    def settled():
        # The OpenDisk's own copies of the descriptors are closed on a worker
        # after its reply (they count until then: 36 + 36 + 16 > 80).
        try:
            add16('x')
            return True
        except Exception as e:      # noqa: BLE001
            assert LIMITS_EXCEEDED in str(e), e
            return False
    wait_until(settled, 30, 'the descriptors of the OpenDisk call to be closed')
    add16('y')                                       # 36 + 32 = 68
    expect_error(LIMITS_EXCEEDED, add16, 'z')        # 36 + 48 = 84 > 80
    a.call(second, 'org.vdisk.VDisk1.FileSet', 'Close', 'a{sv}', {})
    a.disk(d, 'Close', 'a{sv}', {})


# --------------------------------------------------------------------------- the acceptance path


@pytest.fixture(scope='module')
def chain(env, a):
    """base (qemu-img, data) <- diff (qemu-img, empty), both twoGbMaxExtentSparse;
    DIFF_DATA written into the diff over the bus (OpenDisk with the extents)."""
    base = make_base(env, 'cbase')
    diff = make_diff(env, 'cdiff', base)
    files = opened(base)
    files.update(opened(diff, os.O_RDWR))
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}',
                  [(Open(base, os.O_RDONLY), 'VMDK', {}), (Open(diff, os.O_RDWR), 'VMDK', {})],
                  {'files': T('a{sh}', files)})
    for off, length, byte in DIFF_DATA:
        a.disk(d, 'Write', 'taya{sv}', off, bytes([byte]) * length, {})
    # read back across the layers
    for off, length, byte in DIFF_DATA + BASE_DATA[:1]:
        got = a.disk(d, 'Read', 'tua{sv}', off, min(length, 1 * MiB), {})
        want = bytes([byte]) * min(length, 1 * MiB)
        if (off, length, byte) == BASE_DATA[0]:
            # the diff's first write covers part of it
            want = bytearray(want)
            o, n, b = DIFF_DATA[0]
            want[o:o + n] = bytes([b]) * (min(len(want), o + n) - o)
            want = bytes(want)
        assert got == want, (off, length)
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', base)
    env.qemu_img('check', diff)
    return base, diff, ref_raw(env, diff, 'chain-ref.raw')


@pytest.mark.parametrize('fmt', ['raw', 'vdi', 'vpc'])
def test_chain_convert_equals_qemu(env, a, chain, fmt):
    """vdiskctl convert -p of the chain (opened by its top: vdiskctl finds the
    base by parentFileNameHint and every extent) equals qemu-img's flattening of
    the same chain: raw byte for byte, VDI and VHD by qemu-img compare
    (and check)."""
    base, diff, ref = chain
    out = p(env, unique('conv') + '.' + fmt)
    r = ctl(env, 'convert', '-p', '-O', fmt, diff, out)
    assert '100.0%' in r.stderr, (r.stdout, r.stderr)     # the progress bar (-p) ended at 100%
    if fmt == 'raw':
        ok, why = same_bytes(ref, out)
        assert ok, why
    else:
        if fmt == 'vdi':        # qemu-img has no check for vpc
            env.qemu_img('check', '-f', fmt, out)
        env.qemu_img('compare', '-f', 'raw', '-F', fmt, ref, out)


@pytest.mark.parametrize('sub', ['twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'monolithicFlat'])
def test_convert_into_split_vmdk(env, a, chain, sub):
    """convert into a VMDK of several files: vdiskctl creates the extents
    (three of 2 GiB, or one -flat file) by the documented rule and passes them;
    qemu-img reads the result equal to the chain, and checks it."""
    base, diff, ref = chain
    stem = unique('split')
    out = p(env, stem + '.vmdk')
    ctl(env, 'convert', '-O', 'vmdk', '-o', f'subformat={sub}', diff, out)
    kind = 's' if 'Sparse' in sub else 'f'
    if sub == 'monolithicFlat':
        assert extents(env, stem, kind) == [f'{stem}-flat.vmdk']
    else:
        assert extents(env, stem, kind) == [f'{stem}-{kind}00{i}.vmdk' for i in (1, 2, 3)]
    if 'Sparse' in sub:
        env.qemu_img('check', out)
    env.qemu_img('compare', '-f', 'raw', '-F', 'vmdk', ref, out)


def test_create_split_vmdk(env, a):
    """vdiskctl create of a twoGbMaxExtentSparse base: qemu-img checks it
    and sees the size; a diff on it, also split, is read by qemu-img."""
    stem = unique('cre')
    out = p(env, stem + '.vmdk')
    ctl(env, 'create', '-f', 'vmdk', '-o', f'subformat={SPLIT}', out, str(SIZE))
    assert len(extents(env, stem)) == 3
    env.qemu_img('check', out)
    info = json.loads(env.qemu_img('info', '--output=json', out).stdout)
    assert info['virtual-size'] == SIZE
    top = p(env, stem + '-top.vmdk')
    ctl(env, 'create', '-f', 'vmdk', '-o', f'subformat={SPLIT}', '-b', out.name, '-F', 'vmdk', top)
    env.qemu_img('check', top)
    env.qemu_img('compare', out, top)


def test_copy_missing_output_extent(env, a, chain):
    """Copy into a split VMDK without one of its extent fds: the Operation
    fails with FileNeeded naming that extent, and every output file is left
    empty (truncated)."""
    base, diff, _ = chain
    files = opened(base)
    files.update(opened(diff))
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}',
                  [(Open(base, os.O_RDONLY), 'VMDK', {}), (Open(diff, os.O_RDONLY), 'VMDK', {})],
                  {'files': T('a{sh}', files), 'read-only': True})
    stem = unique('cmiss')
    desc = env.empty_file(UID_A, stem + '.vmdk')
    outs = {f'{stem}-s00{i}.vmdk': env.empty_file(UID_A, f'{stem}-s00{i}.vmdk') for i in (1, 3)}
    op = a.disk(d, 'Copy', 'hsa{sv}', Open(desc, os.O_RDWR), 'VMDK',
                {'format-options': T('a{ss}', {'subformat': SPLIT}), 'display-name': desc.name,
                 'files': T('a{sh}', {n: Open(f, os.O_RDWR) for n, f in outs.items()})})
    state, name, msg = a.wait_op_raw(op)
    assert (state, name) == ('failed', FILE_NEEDED), (state, name, msg)
    assert f'{stem}-s002.vmdk' in msg, msg
    assert desc.stat().st_size == 0 and all(f.stat().st_size == 0 for f in outs.values())
    # With every file it succeeds, and qemu-img reads what vdiskd wrote.
    outs[f'{stem}-s002.vmdk'] = env.empty_file(UID_A, f'{stem}-s002.vmdk')
    op = a.disk(d, 'Copy', 'hsa{sv}', Open(desc, os.O_RDWR), 'VMDK',
                {'format-options': T('a{ss}', {'subformat': SPLIT}), 'display-name': desc.name,
                 'files': T('a{sh}', {n: Open(f, os.O_RDWR) for n, f in outs.items()})})
    assert a.wait_op_raw(op)[:2] == ('succeeded', '')
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', desc)
    env.qemu_img('compare', diff, desc)


def test_cancel_convert_leaves_images_valid(env, a, chain):
    """vdiskctl convert interrupted (SIGINT) while its Copy is held on a frozen
    file system: vdiskctl cancels the operation, which ends `cancelled`; the
    destination is truncated and every image of the chain still checks."""
    base, diff, _ = chain
    frz = frozen_fs(env)
    out = frz.empty_file(UID_A, unique('frozen') + '.vdi')
    frz.freeze()
    cmd = ['setpriv', f'--reuid={UID_A}', f'--regid={UID_A}', '--clear-groups', '--', tool('VDISKCTL'),
           f'--address={env.bus.address}', '--no-ask-password', 'convert', '-O', 'vdi', str(diff), str(out)]
    proc = subprocess.Popen(cmd, cwd=env.dirs[UID_A], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8'})
    try:
        def running_copy():
            for path, ifaces in env.watcher.managed_objects().items():
                o = ifaces.get('org.vdisk.VDisk1.Operation')
                if o and o['Kind'] == 'copy' and o['State'] == 'running' and o['StartedByUID'] == UID_A:
                    return path
            return None
        wait_until(lambda: running_copy() is not None, 60, 'the copy to run (held on the frozen fs)')
        op = running_copy()
        proc.send_signal(2)
        wait_until(lambda: env.watcher.get(op, 'org.vdisk.VDisk1.Operation', 'State') == 'cancelling', 30,
                   'the copy to be cancelling')
    finally:
        frz.thaw()
    stdout, stderr = proc.communicate(timeout=deadline(120))
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    assert env.watcher.get(op, 'org.vdisk.VDisk1.Operation', 'State') == 'cancelled'
    assert out.stat().st_size == 0
    env.qemu_img('check', base)
    env.qemu_img('check', diff)
    ctl(env, 'check', diff)


def test_convert_output_through_file_set(env, a, chain):
    """An output of more files than one call carries: the chain converted into
    a 34 GiB twoGbMaxExtentSparse VMDK (`-o size`) has 17 extents; vdiskctl
    passes them through a FileSet named in Copy's `file-set`. qemu-img reads
    the chain's content and zeros beyond it, and checks the image."""
    base, diff, ref = chain
    stem = unique('fsout')
    out = p(env, stem + '.vmdk')
    ctl(env, 'convert', '-O', 'vmdk', '-o', f'subformat={SPLIT},size={34 * GiB}', diff, out)
    assert len(extents(env, stem)) == 17
    env.qemu_img('check', out)
    info = json.loads(env.qemu_img('info', '--output=json', out).stdout)
    assert info['virtual-size'] == 34 * GiB
    env.qemu_img('compare', '-f', 'raw', '-F', 'vmdk', ref, out)


def test_commit_into_split_base(env, a, chain):
    """vdiskctl commit of the chain (a copy of it, in its own directory):
    the merge writes into the base's extents, which vdiskctl passed O_RDWR and
    vdiskd reopens by name after the open; qemu-img then reads the base equal
    to the chain and checks it."""
    base, diff, ref = chain
    d = p(env, unique('commit'))
    d.mkdir()
    env.chown(d, UID_A, 0o700)
    for f in sorted(env.dirs[UID_A].iterdir()):
        if f.name.startswith(('cbase', 'cdiff')):
            env.run('cp', '--sparse=always', f, d / f.name)
            env.chown(d / f.name, UID_A)
    ctl(env, 'commit', d / diff.name)
    env.qemu_img('check', d / base.name)
    env.qemu_img('compare', '-f', 'raw', '-F', 'vmdk', ref, d / base.name)


def test_disk_open_image_by_image(env, a, chain):
    """A chain built image by image (CreateDisk, then Disk.Open of the base and
    of the diff, each with its own extents in `files`): the later Open finds
    its extents too; without them it is FileNeeded naming one."""
    base, diff, _ = chain
    d = a.manager('CreateDisk', 'a{sv}', {})
    a.disk(d, 'Open', 'hsa{sv}', Open(base, os.O_RDONLY), 'VMDK',
           {'files': T('a{sh}', opened(base)), 'read-only': True})
    e = expect_error(FILE_NEEDED, a.disk, d, 'Open', 'hsa{sv}', Open(diff, os.O_RDONLY), 'VMDK',
                     {'read-only': True})
    assert 'cdiff-s001.vmdk' in e.message, e.message
    a.disk(d, 'Open', 'hsa{sv}', Open(diff, os.O_RDONLY), 'VMDK',
           {'files': T('a{sh}', opened(diff)), 'read-only': True})
    for off, length, byte in DIFF_DATA[1:]:
        assert a.disk(d, 'Read', 'tua{sv}', off, length, {}) == bytes([byte]) * length
    off, length, byte = BASE_DATA[2]
    assert a.disk(d, 'Read', 'tua{sv}', off, length, {}) == bytes([byte]) * length
    a.disk(d, 'Close', 'a{sv}', {})


def test_fd_bound_counts_writable_copies(env, a):
    """Opened writable, the 35 extents are held twice: by the image, and by
    the disk's resolver (the copies that reopen them for a merge), 71 in all
    with the descriptor. With --max-fds-per-user 80, 9 more fit and a 10th is
    LimitsExceeded."""
    size = 70 * GiB
    stem = unique('wbound')
    base = make_base(env, stem, size, [(0, 4096, 0x61)])
    fs = a.manager('CreateFileSet', 'a{sv}', {})
    names = sorted(opened(base))
    for i in range(0, len(names), 15):
        a.call(fs, 'org.vdisk.VDisk1.FileSet', 'Add', 'a{sh}a{sv}',
               {n: Open(p(env, n), os.O_RDWR) for n in names[i:i + 15]}, {})
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(base, os.O_RDWR), 'VMDK', {})], {'file-set': T('o', fs)})
    a.disk(d, 'Write', 'taya{sv}', 34 * 2 * GiB, bytes([0x62]) * 4096, {})
    assert a.disk(d, 'Read', 'tua{sv}', 34 * 2 * GiB, 4096, {}) == bytes([0x62]) * 4096
    second = a.manager('CreateFileSet', 'a{sv}', {})

    def add(tag, k):
        a.call(second, 'org.vdisk.VDisk1.FileSet', 'Add', 'a{sh}a{sv}',
               {f'{tag}-{n}': Open(p(env, n), os.O_RDONLY) for n in names[:k]}, {})

    def settled():
        try:
            add('x', 9)             # 71 + 9 = 80: fits once the OpenDisk's own copies are closed
            return True
        except Exception as e:      # noqa: BLE001
            assert LIMITS_EXCEEDED in str(e), e
            return False
    wait_until(settled, 30, 'the descriptors of the OpenDisk call to be closed')
    expect_error(LIMITS_EXCEEDED, add, 'y', 1)      # 81 > 80
    a.call(second, 'org.vdisk.VDisk1.FileSet', 'Close', 'a{sv}', {})
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', base)


def test_disk_over_the_fd_bound_stays_usable(env, a):
    """A writable 80 GiB split VMDK (40 extents) under --max-fds-per-user 80:
    its file set (40) and the descriptor fit, but the open Disk holds 81 (every
    extent twice, and the descriptor). The uid stands over the bound for as
    long as the Disk is open: calls that bring descriptors are LimitsExceeded,
    calls that bring none (Write, Read, Flush, Close) still run, since they
    add nothing to what the uid holds."""
    size = 80 * GiB
    stem = unique('over')
    base = make_base(env, stem, size, [(0, 4096, 0x71)])
    fs = a.manager('CreateFileSet', 'a{sv}', {})
    names = sorted(opened(base))
    assert len(names) == 40, names
    for i in range(0, len(names), 15):
        a.call(fs, 'org.vdisk.VDisk1.FileSet', 'Add', 'a{sh}a{sv}',
               {n: Open(p(env, n), os.O_RDWR) for n in names[i:i + 15]}, {})
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(base, os.O_RDWR), 'VMDK', {})], {'file-set': T('o', fs)})
    a.disk(d, 'Write', 'taya{sv}', 39 * 2 * GiB, bytes([0x72]) * 4096, {})
    assert a.disk(d, 'Read', 'tua{sv}', 39 * 2 * GiB, 4096, {}) == bytes([0x72]) * 4096
    assert a.disk(d, 'Read', 'tua{sv}', 0, 4096, {}) == bytes([0x71]) * 4096
    a.disk(d, 'Flush', 'a{sv}', {})
    second = a.manager('CreateFileSet', 'a{sv}', {})
    expect_error(LIMITS_EXCEEDED, a.call, second, 'org.vdisk.VDisk1.FileSet', 'Add', 'a{sh}a{sv}',
                 {'x': Open(p(env, names[0]), os.O_RDONLY)}, {})
    a.call(second, 'org.vdisk.VDisk1.FileSet', 'Close', 'a{sv}', {})
    a.disk(d, 'Close', 'a{sv}', {})
    env.qemu_img('check', base)
