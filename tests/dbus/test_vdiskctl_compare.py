# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl compare (Disk.Compare) and vdiskctl convert -n (Disk.CopyTo):
the same stdout and exit code as vdisk-img for identical, differing and
size-mismatched images, strict mode included; convert -n's content checked
with qemu-img compare."""

import os

import pytest

from harness import A_MODIFY, A_OPEN, UID_A, MiB, user_path, vdiskctl

SIZE = 8 * MiB


@pytest.fixture(scope='module')
def a(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    return env.agent(UID_A, 'A')


def p(env, name):
    return user_path(env, name)


def same_as_vdisk_img(env, *args):
    """vdiskctl compare ARGS against vdisk-img compare ARGS (run in the user's
    directory, by absolute paths): same stdout, same exit code. Returns them."""
    ctl = vdiskctl(env, 'compare', *args, check=False)
    img = env.vdisk_img('compare', *[p(env, x) if str(x).endswith(('.vdi', '.raw')) else x for x in args],
                        check=False)
    out = '\n'.join(l for l in img.stdout.splitlines() if not l.startswith('vdisk-img:'))
    assert (ctl.returncode, ctl.stdout.strip()) == (img.returncode, out.strip()), (ctl.stderr, img.stdout)
    return ctl.returncode, ctl.stdout.strip()


def test_compare_like_vdisk_img(env, a):
    regions = ((0, 65536, 0x11), (3 * MiB + 512, 100000, 0x22))
    env.make_vdi(UID_A, 'c1.vdi', SIZE, regions)
    env.make_raw(UID_A, 'c1.raw', SIZE, regions=regions)
    env.make_raw(UID_A, 'c2.raw', SIZE, regions=regions + ((5 * MiB + 1024, 512, 0x01),))
    env.make_raw(UID_A, 'long0.raw', SIZE + MiB, regions=regions)
    env.make_raw(UID_A, 'long1.raw', SIZE + MiB, regions=regions + ((SIZE + 4096, 512, 0x7f),))

    assert same_as_vdisk_img(env, 'c1.vdi', 'c1.raw') == (0, 'Images are identical.')
    assert same_as_vdisk_img(env, 'c1.vdi', 'c2.raw') == (1, f'Content mismatch at offset {5 * MiB + 1024}!')
    assert same_as_vdisk_img(env, 'c1.vdi', 'long0.raw') == (0, 'Warning: Image size mismatch!\n'
                                                             'Images are identical.')
    assert same_as_vdisk_img(env, 'long1.raw', 'c1.vdi') == (1, 'Warning: Image size mismatch!\n'
                                                             f'Content mismatch at offset {SIZE + 4096}!')
    assert same_as_vdisk_img(env, '-s', 'c1.vdi', 'long0.raw') == (1, 'Strict mode: Image size mismatch!')
    # the VDI allocates 1 MiB blocks, the raw file is allocated everywhere
    rc, out = same_as_vdisk_img(env, '-s', 'c1.vdi', 'c1.raw')
    assert rc == 1 and out.startswith('Strict mode: Offset ') and out.endswith(' block status mismatch!')
    assert same_as_vdisk_img(env, '-q', 'c1.vdi', 'c2.raw') == (1, '')
    assert same_as_vdisk_img(env, '-f', 'vdi', '-F', 'raw', 'c1.vdi', 'c1.raw') == (0, 'Images are identical.')
    # an image that cannot be opened: 2, as qemu-img
    assert vdiskctl(env, 'compare', 'c1.vdi', 'missing.raw', check=False).returncode == 2
    assert vdiskctl(env, 'compare', 'c1.vdi', check=False).returncode == 2   # a bad command line


def test_convert_n(env, a):
    regions = ((0, 65536, 0x31), (2 * MiB, 1 * MiB, 0x32), (6 * MiB + 4096, 8192, 0x33))
    src = env.make_raw(UID_A, 'n-src.raw', SIZE, regions=regions)
    # the target holds other data, some of it under the source's holes
    dst = env.make_vdi(UID_A, 'n-dst.vdi', SIZE, ((1 * MiB, 1 * MiB, 0x44), (2 * MiB, 4096, 0x45)))
    r = vdiskctl(env, 'convert', '-n', '-f', 'raw', '-O', 'vdi', 'n-src.raw', 'n-dst.vdi')
    assert r.stdout == ''
    env.qemu_img('compare', '-f', 'raw', '-F', 'vdi', src, dst)
    env.qemu_img('check', '-f', 'vdi', dst)
    assert os.path.getsize(dst) < SIZE   # still sparse

    # --target-is-zero into a fresh, empty target
    env.vdisk_img('create', '-f', 'vdi', p(env, 'n-zero.vdi'), str(SIZE))
    env.chown(p(env, 'n-zero.vdi'), UID_A)
    vdiskctl(env, 'convert', '-n', '--target-is-zero', '-O', 'vdi', 'n-src.raw', 'n-zero.vdi')
    env.qemu_img('compare', '-f', 'raw', '-F', 'vdi', src, p(env, 'n-zero.vdi'))

    # what vdisk-img refuses, vdiskctl refuses
    r = vdiskctl(env, 'convert', '--target-is-zero', 'n-src.raw', 'n-out.raw', check=False)
    assert r.returncode != 0 and '--target-is-zero requires -n' in r.stderr
    r = vdiskctl(env, 'convert', '-n', '-o', 'static=on', '-O', 'vdi', 'n-src.raw', 'n-dst.vdi', check=False)
    assert r.returncode != 0 and '-o has no effect' in r.stderr
    # a target smaller than the source
    env.make_raw(UID_A, 'n-small.raw', SIZE // 2)
    r = vdiskctl(env, 'convert', '-n', 'n-src.raw', 'n-small.raw', check=False)
    assert r.returncode != 0
    assert os.path.getsize(p(env, 'n-small.raw')) == SIZE // 2
