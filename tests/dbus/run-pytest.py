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

here = os.path.dirname(os.path.abspath(__file__))
args = ['-q', '-p', 'no:cacheprovider', '-o', 'console_output_style=classic', '-rfEs',
        '--rootdir', here] + sys.argv[1:]
sys.exit(pytest.main(args))
