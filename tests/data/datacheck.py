# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the check-*.py scripts of the data suite share: a failure list that
each check appends to (and prints), and the teardown of the processes a
script started."""

import subprocess

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def ok(msg):
    print("ok: " + msg)


def stop_all(procs):
    """Terminates the processes, newest first (a client before its bus)."""
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
