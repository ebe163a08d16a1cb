# SPDX-License-Identifier: LGPL-2.1-or-later
"""Runs one test file of the dbus suite with pytest, or exits 77 (skipped)
when the suite cannot run here at all: not root, a Python module or a
program missing. Usage: /usr/bin/python3 run-pytest.py tests/dbus/test_x.py"""

import importlib
import os
import shutil
import sys


def skip(why):
    print(f'SKIP: {why}')
    sys.exit(77)


if os.geteuid() != 0:
    skip('needs root: vdiskd and its clients run as other uids (setpriv)')
for mod in ('dbus', 'dbus.mainloop.glib', 'dbusmock', 'pytest', 'gi'):
    try:
        importlib.import_module(mod)
    except ImportError as e:
        skip(f'python module {mod} missing ({e}); scripts/install-deps.sh --test installs it')
for prog in ('dbus-daemon', 'setpriv'):
    if not shutil.which(prog):
        skip(f'{prog} not found')
for var in ('VDISKD', 'VDISKCTL', 'VDISK_IMG', 'VDISK_AUDIT_SHIM', 'VDISK_FAKE_USERS_SHIM'):
    if not os.environ.get(var):
        sys.exit(f'${var} is not set: run through meson test (tests/dbus/meson.build)')

import pytest  # noqa: E402


def stage_binaries():
    """The daemon and the shims it preloads run as other uids, which may not
    be able to enter the build tree (a clone in a mode-0700 mktemp directory,
    as CI makes). Copies them, with the libvdisk that vdiskd's $ORIGIN/../lib
    runpath names, into a world-readable directory and points the variables
    there. Returns the directory (removed at exit)."""
    import atexit
    import tempfile
    stage = tempfile.mkdtemp(prefix='vdisk-dbus-bin-')
    atexit.register(shutil.rmtree, stage, ignore_errors=True)
    os.chmod(stage, 0o755)
    for sub in ('bin', 'lib'):
        os.mkdir(os.path.join(stage, sub), 0o755)
    vdiskd = os.environ['VDISKD']
    lib = os.path.join(os.path.dirname(os.path.dirname(vdiskd)), 'lib', 'libvdisk.so.0')
    if os.path.exists(lib):
        shutil.copy(lib, os.path.join(stage, 'lib', 'libvdisk.so.0'))   # follows the symlink
    for var in ('VDISKD', 'VDISKCTL', 'VDISK_IMG', 'VDISK_AUDIT_SHIM', 'VDISK_FAKE_USERS_SHIM'):
        dest = os.path.join(stage, 'bin', os.path.basename(os.environ[var]))
        shutil.copy(os.environ[var], dest)
        os.chmod(dest, 0o755)
        os.environ[var] = dest
    return stage


stage_binaries()

here = os.path.dirname(os.path.abspath(__file__))
args = ['-q', '-p', 'no:cacheprovider', '-o', 'console_output_style=classic', '-rfEs',
        '--rootdir', here] + sys.argv[1:]
sys.exit(pytest.main(args))
