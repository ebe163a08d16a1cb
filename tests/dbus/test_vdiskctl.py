# SPDX-License-Identifier: LGPL-2.1-or-later
"""End to end through vdiskctl (docs/vdiskctl.1) against the real vdiskd in
system mode: vdiskctl runs as client uid 61002 in its own directory, polkit
allows open and modify. A chain of three VDI images is made with vdiskctl,
data goes into each layer with Disk.Write over the bus (python), and the
results of convert, commit, merge, compact, resize and check are compared
with a flat reference by qemu-img (an independent reader). The service
commands (list, status, cancel, monitor) are checked line by line against
what the bus says."""

import json
import os
import re
import signal
import subprocess

import pytest

from harness import A_MODIFY, A_OPEN, DISK, UID_A, MiB, Open, tool, user_path, vdiskctl

SIZE = 64 * MiB

# (layer, kind, offset, length, byte)
WRITES = [
    ('base', 'w', 0, 1 * MiB, 0x10),
    ('base', 'w', 10 * MiB + 4096, 300000, 0x11),
    ('base', 'w', 40 * MiB, 2 * MiB, 0x12),
    ('base', 'w', 50 * MiB, 1 * MiB, 0x13),
    ('mid', 'w', 512 * 1024, 1 * MiB, 0x20),
    ('mid', 'w', 20 * MiB, 4096, 0x21),
    ('top', 'w', 10 * MiB, 8192, 0x30),
    ('top', 'w', 63 * MiB, 1 * MiB, 0x31),
    ('top', 'd', 40 * MiB, 1 * MiB, 0),
]


@pytest.fixture(scope='module')
def a(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return env.agent(UID_A, 'A')


def ctl(env, *args, check=True):
    return vdiskctl(env, *args, check=check, timeout=120)


def p(env, name):
    return user_path(env, name)


def write_layers(env, a, chain, layer, ref):
    """Opens the chain (files base first) and writes `layer`'s entries into its top."""
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}',
                  [(Open(p(env, f), os.O_RDONLY if f != chain[-1] else os.O_RDWR), 'VDI', {}) for f in chain], {})
    for lay, kind, off, length, byte in WRITES:
        if lay != layer:
            continue
        if kind == 'w':
            done = 0
            while done < length:
                n = min(length - done, 1 * MiB)
                a.disk(d, 'Write', 'taya{sv}', off + done, bytes([byte]) * n, {})
                done += n
            ref[off:off + length] = bytes([byte]) * length
        else:
            a.disk(d, 'Discard', 'tta{sv}', off, length, {})
            ref[off:off + length] = bytes(length)
            assert a.disk(d, 'Read', 'tua{sv}', off, 65536, {}) == bytes(65536)
    a.disk(d, 'Close', 'a{sv}', {})


def save_ref(env, ref, name='ref.raw'):
    path = env.tmp / name
    path.write_bytes(bytes(ref))
    return path


def test_chain_convert_commit_merge_compact_resize_check(env, a):
    ref = bytearray(SIZE)
    r = ctl(env, 'create', '-f', 'vdi', 'base.vdi', '64M')
    assert "Formatting 'base.vdi'" in r.stdout
    assert os.stat(p(env, 'base.vdi')).st_uid == UID_A
    env.qemu_img('check', '-f', 'vdi', p(env, 'base.vdi'))
    write_layers(env, a, ['base.vdi'], 'base', ref)
    ctl(env, 'create', '-q', '-f', 'vdi', '-b', 'base.vdi', '-F', 'vdi', 'mid.vdi')
    write_layers(env, a, ['base.vdi', 'mid.vdi'], 'mid', ref)
    ctl(env, 'create', '-q', '-f', 'vdi', '-b', 'mid.vdi', '-F', 'vdi', 'top.vdi')
    write_layers(env, a, ['base.vdi', 'mid.vdi', 'top.vdi'], 'top', ref)
    refpath = save_ref(env, ref)

    info = json.loads(ctl(env, 'info', '--output=json', '--backing-chain', 'top.vdi').stdout)
    assert [i['virtual-size'] for i in info] == [SIZE] * 3, info
    # qemu-img info's keys with its values (qemu opens no VDI diff: the base
    # stands for all three, whose block size the diffs inherit)
    q = json.loads(env.qemu_img('info', '--output=json', '-f', 'vdi', p(env, 'base.vdi')).stdout)
    assert [(i['cluster-size'], i['dirty-flag']) for i in info] == [(q['cluster-size'], q['dirty-flag'])] * 3, \
        (info, q)

    # the whole chain, flattened
    ctl(env, 'convert', '-O', 'raw', 'top.vdi', 'out.raw')
    env.qemu_img('compare', '-f', 'raw', '-F', 'raw', p(env, 'out.raw'), refpath)
    ctl(env, 'convert', '-O', 'vdi', 'top.vdi', 'flat.vdi')
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', p(env, 'flat.vdi'), refpath)
    env.qemu_img('check', '-f', 'vdi', p(env, 'flat.vdi'))
    # -c: compressed clusters (zstd), checked and read by qemu-img
    ctl(env, 'convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'top.vdi', 'flat-c.qcow2')
    env.qemu_img('compare', '-f', 'qcow2', '-F', 'raw', p(env, 'flat-c.qcow2'), refpath)
    out = env.qemu_img('check', '-f', 'qcow2', p(env, 'flat-c.qcow2')).stdout
    assert '% compressed clusters' in out and ' 0.00% compressed' not in out, out
    for f in ('top.vdi', 'mid.vdi', 'base.vdi'):
        ctl(env, 'check', f)
    env.qemu_img('check', '-f', 'vdi', p(env, 'base.vdi'))

    # commit top into mid: mid alone now reads as the whole chain did
    r = ctl(env, 'commit', 'top.vdi')
    assert 'Image committed.' in r.stdout
    ctl(env, 'convert', '-O', 'raw', 'mid.vdi', 'out2.raw')
    env.qemu_img('compare', '-f', 'raw', '-F', 'raw', p(env, 'out2.raw'), refpath)
    # top keeps its data and still reads the same on its parent
    ctl(env, 'convert', '-O', 'raw', 'top.vdi', 'out2b.raw')
    env.qemu_img('compare', '-f', 'raw', '-F', 'raw', p(env, 'out2b.raw'), refpath)

    # merge mid into base: qemu-img reads the base VDI itself
    ctl(env, 'merge', 'mid.vdi', '--from', '1', '--to', '0')
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', p(env, 'base.vdi'), refpath)
    env.qemu_img('check', '-f', 'vdi', p(env, 'base.vdi'))
    ctl(env, 'check', 'base.vdi')

    # compact: zero two allocated blocks through the bus, then compact
    d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(p(env, 'base.vdi'), os.O_RDWR), 'VDI', {})], {})
    for off in (40 * MiB, 41 * MiB):
        a.disk(d, 'Write', 'taya{sv}', off, bytes(1 * MiB), {})
        ref[off:off + MiB] = bytes(MiB)
    a.disk(d, 'Close', 'a{sv}', {})
    refpath = save_ref(env, ref, 'ref2.raw')
    before = os.path.getsize(p(env, 'base.vdi'))
    r = ctl(env, 'compact', 'base.vdi')
    assert 'Image compacted.' in r.stdout
    after = os.path.getsize(p(env, 'base.vdi'))
    assert after <= before - 2 * MiB, (before, after)
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', p(env, 'base.vdi'), refpath)
    env.qemu_img('check', '-f', 'vdi', p(env, 'base.vdi'))

    # resize: grow, then shrink back (the tail holds no data); shrinking over data fails
    r = ctl(env, 'resize', 'base.vdi', '128M')
    assert 'Image resized.' in r.stdout
    qinfo = json.loads(env.qemu_img('info', '--output=json', '-f', 'vdi', p(env, 'base.vdi')).stdout)
    assert qinfo['virtual-size'] == 128 * MiB
    env.qemu_img('check', '-f', 'vdi', p(env, 'base.vdi'))
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', p(env, 'base.vdi'), refpath)   # extra area reads zero
    ctl(env, 'resize', '--shrink', 'base.vdi', '64M')
    qinfo = json.loads(env.qemu_img('info', '--output=json', '-f', 'vdi', p(env, 'base.vdi')).stdout)
    assert qinfo['virtual-size'] == SIZE
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', p(env, 'base.vdi'), refpath)
    r = ctl(env, 'resize', '--shrink', 'base.vdi', '32M', check=False)
    assert r.returncode != 0 and 'data' in r.stderr, (r.returncode, r.stderr)
    env.qemu_img('compare', '-f', 'vdi', '-F', 'raw', p(env, 'base.vdi'), refpath)
    ctl(env, 'check', 'base.vdi')

    listing = json.loads(ctl(env, '--output=json', 'list').stdout)
    assert 'disks' in listing and 'operations' in listing
    assert env.daemon.alive()


def test_parent_not_found_exit_status(env, a):
    """A diff whose parent is not in the directory: exit 5 (FileNeeded)."""
    ctl(env, 'create', '-q', '-f', 'vdi', 'lonely-base.vdi', '8M')
    ctl(env, 'create', '-q', '-f', 'vdi', '-b', 'lonely-base.vdi', '-F', 'vdi', 'lonely.vdi')
    os.unlink(p(env, 'lonely-base.vdi'))
    r = ctl(env, 'convert', '-O', 'raw', 'lonely.vdi', 'lonely.raw', check=False)
    assert r.returncode == 5, (r.returncode, r.stderr)
    assert not p(env, 'lonely.raw').exists()


def test_denied_exit_status(env, a):
    """polkit refusing modify: vdiskctl exits 4 and leaves no output behind."""
    ctl(env, 'create', '-q', '-f', 'vdi', 'deny.vdi', '8M')
    env.polkit.allow(A_OPEN)
    try:
        r = ctl(env, 'convert', '-O', 'raw', 'deny.vdi', 'deny.raw', check=False)
        assert r.returncode == 4, (r.returncode, r.stderr)
        assert not p(env, 'deny.raw').exists()
    finally:
        env.polkit.allow(A_OPEN, A_MODIFY)


def short(path):
    return path.replace('/org/vdisk/VDisk1/', '')


def test_service_commands_output(env, a):
    """list, status, cancel and monitor, human and JSON, on a disk of two VDI
    images and a Check that ended; bad arguments exit 2, unknown objects 5."""
    base = env.make_vdi(UID_A, 'svc-base.vdi', 8 * MiB, regions=[(0, MiB, 1)])
    top = env.make_vdi_diff(UID_A, 'svc-top.vdi', base)
    mon = subprocess.Popen(['setpriv', f'--reuid={UID_A}', f'--regid={UID_A}', '--clear-groups', '--',
                            tool('VDISKCTL'), f'--address={env.bus.address}', 'monitor'],
                           cwd=env.dirs[UID_A], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # printed once vdiskd answered: every event from here on reaches it
        assert mon.stdout.readline().startswith('Monitoring vdiskd (')
        d = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(base, os.O_RDONLY), 'VDI', {}),
                                                      (Open(top, os.O_RDWR), 'VDI', {})], {'display-name': 'svc'})
        imgs = env.watcher.get(d, DISK, 'Images')
        op = a.image(imgs[1], 'Check', 'a{sv}', {})
        a.wait_op(op)
        n = op.rsplit('/', 1)[1]

        out = ctl(env, 'list').stdout
        assert re.search(r'^OBJECT +NAME +FORMAT +SIZE +OWNER +ACCESS +DETAILS$', out, re.M), out
        assert re.search(rf'^{short(d)} +svc +vdi +8 MiB +\S+ +rw +2 images$', out, re.M), out
        assert re.search(rf'^  {short(imgs[0])} +vdi +8 MiB +\S+ +ro +#0 dynamic$', out, re.M), out
        assert re.search(rf'^  {short(imgs[1])} +vdi +8 MiB +\S+ +rw +#1 diff$', out, re.M), out
        assert re.search(rf'^{short(op)} +check +succeeded +100.0% +{short(d)} +\S+$', out, re.M), out
        listing = json.loads(ctl(env, '--output=json', 'list').stdout)
        disk = [x for x in listing['disks'] if x['object'] == d][0]
        assert (disk['display-name'], disk['size'], disk['read-only'], disk['operation']) == \
            ('svc', 8 * MiB, False, None), disk
        assert [(i['object'], i['index'], i['format'], i['variant'], i['read-only']) for i in disk['images']] == \
            [(imgs[0], 0, 'vdi', 'dynamic', True), (imgs[1], 1, 'vdi', 'diff', False)], disk
        o = [x for x in listing['operations'] if x['object'] == op][0]
        assert (o['kind'], o['state'], o['progress'], o['disk'], o['started-by-uid']) == \
            ('check', 'succeeded', 1, d, UID_A), o

        out = ctl(env, 'status', short(d)).stdout.splitlines()
        assert out[0] == short(d) and '     DisplayName: svc' in out and f'  {short(imgs[1])}' in out, out
        assert re.search(r'^ +Variant: diff$', '\n'.join(out), re.M), out
        st = json.loads(ctl(env, '--output=json', 'status', d).stdout)
        assert (st['object'], st['interface'], st['properties']['DisplayName']) == (d, DISK, 'svc'), st
        assert [(i['object'], i['properties']['Index']) for i in st['images']] == [(imgs[0], 0), (imgs[1], 1)], st
        st = json.loads(ctl(env, 'status', '--output=json', n).stdout)
        assert (st['object'], st['properties']['State']) == (op, 'succeeded'), st
        assert 'images' not in st
        out = ctl(env, 'status').stdout
        assert out.startswith('vdiskd ') and '  Formats:\n    VDI (vdi):' in out, out

        r = ctl(env, 'cancel', f'operation/{n}', check=False)
        assert r.returncode == 1 and f'{short(op)}: ' in r.stderr and 'ended' in r.stderr, (r.returncode, r.stderr)
        for args, code in ((('cancel', 'operation/99999'), 5), (('status', 'disk/99999'), 5),
                           (('cancel', short(d)), 2), (('cancel', '--output=json', n), 2),
                           (('status', 'bogus'), 2), (('status', n, n), 2), (('list', 'x'), 2)):
            r = ctl(env, *args, check=False)
            assert r.returncode == code and r.stdout == '', (args, r.returncode, r.stdout, r.stderr)

        a.disk(d, 'Close', 'a{sv}', {})
        seen = []
        while not seen or seen[-1] != f'- {short(d)}':
            line = mon.stdout.readline()
            assert line, seen
            seen.append(line.rstrip('\n').split(' ', 1)[1])   # without the time of day
    finally:
        mon.send_signal(signal.SIGINT)
        mon.wait(timeout=30)
    assert mon.returncode == 0
    events = '\n'.join(seen)
    assert re.search(rf'^\+ {short(d)} "svc" 8 MiB, owner \S+$', events, re.M), seen
    assert f'+ {short(imgs[1])} "" vdi 8 MiB, {short(d)} #1' in seen, seen
    assert re.search(rf'^\+ {short(op)} check on {short(d)} by \S+ \(queued\)$', events, re.M), seen
    assert f'* {short(op)} succeeded' in seen and f'- {short(imgs[0])}' in seen, seen
