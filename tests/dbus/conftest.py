# SPDX-License-Identifier: LGPL-2.1-or-later
"""pytest fixtures of the dbus suite (see harness.py).

A test module sets VDISK_ENV = dict(template=..., daemon_args=[...]) to
choose its polkit template and vdiskd options; `env` is shared by the module's
tests. At teardown vdiskd gets SIGTERM and must exit 0 without a sanitizer
report, or the module's last test errors.
"""

import os

import pytest

import harness


def pytest_configure(config):
    if os.geteuid() != 0:
        pytest.exit('the dbus suite runs as root (it starts vdiskd and clients as other uids)', returncode=77)


@pytest.fixture(scope='module')
def env(request):
    opts = dict(getattr(request.module, 'VDISK_ENV', {}))
    opts.setdefault('name', request.module.__name__.replace('test_', ''))
    e = harness.VdiskEnv(**opts)
    yield e
    problems = e.close()
    assert not problems, '\n'.join(problems)


@pytest.fixture
def polkit(env):
    """The polkit mock, reset to 'allow open and modify' after each test."""
    yield env.polkit
    try:
        env.polkit.mock.SimulateHang(False)
        env.polkit.mock.ReleaseHangingCalls()
        env.polkit.mock.SetDelay(0.0)
    except Exception:   # noqa: BLE001 - local templates lack these
        pass


@pytest.fixture
def daemon_alive(env):
    """After the test, vdiskd must still run (no crash)."""
    yield
    assert env.daemon is None or env.daemon.alive(), \
        f'vdiskd died (exit {env.daemon.proc.returncode}):\n{env.daemon.output()[-4000:]}'


@pytest.fixture(scope='module')
def clients(env):
    """A client of each test uid (A and B), shared by the module's tests."""
    return {harness.UID_A: env.agent(harness.UID_A, 'A'), harness.UID_B: env.agent(harness.UID_B, 'B')}


@pytest.fixture
def policy(env):
    """polkit allows open and modify during the test; after it, harness.after_test().
    A module takes it for every test with pytestmark = pytest.mark.usefixtures('policy')."""
    env.polkit.allow(harness.A_OPEN, harness.A_MODIFY)
    yield
    harness.after_test(env)
