#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The daemon stays inside its unit's sandbox: system calls and socket families.

Usage: check-unit-syscalls.py UNIT VDISKD

Runs VDISKD under strace on a private bus (session mode, so no polkit is
needed), drives it through every method (create, write, diff, read, discard,
copy, check, merge, compact, resize, repair, set comment and UUIDs, probe,
close), lets it exit on idle, and checks that
- every system call it made is allowed by the unit's SystemCallFilter= lines
  (the allow list minus the ~ deny list, groups expanded with
  `systemd-analyze syscall-filter`): a call outside it would fail with EPERM
  only in production, under systemd;
- it created AF_UNIX sockets only (RestrictAddressFamilies=AF_UNIX).
Exit 0 pass, 1 fail, 77 skip (strace, dbus-daemon, systemd-analyze or
python3-dbus missing).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from datacheck import failures, fail, ok, stop_all

WORKLOAD = r"""
import os, sys, dbus, dbus.bus

bus = dbus.bus.BusConnection(sys.argv[1])
tmp = sys.argv[2]
N = "org.vdisk.VDisk1"
def obj(path, iface):
    return dbus.Interface(bus.get_object(N, path), iface)
def wait(op):
    obj(op, N + ".Operation").Wait({}, timeout=300)
def new_file(name, flags=os.O_RDWR | os.O_CREAT | os.O_EXCL):
    return dbus.types.UnixFd(os.open(os.path.join(tmp, name), flags, 0o600))
mgr = obj("/org/vdisk/VDisk1", N + ".Manager")
disk = mgr.CreateDisk({"display-name": "sandbox"})
d = obj(disk, N + ".Disk")
wait(d.CreateBase(new_file("base.vdi"), "VDI", dbus.UInt64(16 << 20), {}))
d.Write(dbus.UInt64(4096), dbus.ByteArray(b"x" * 65536), {})
d.Flush({})
wait(d.CreateDiff(new_file("diff.vdi"), "VDI", {}))
d.Write(dbus.UInt64(1 << 20), dbus.ByteArray(b"y" * 65536), {})
d.Discard(dbus.UInt64(0), dbus.UInt64(1 << 20), {})
assert len(d.Read(dbus.UInt64(0), dbus.UInt32(1 << 20), {})) == 1 << 20
wait(d.Copy(new_file("copy.raw"), "RAW", {}))
wait(d.Check(dbus.UInt32(1), {}))
wait(d.Merge(dbus.UInt32(1), dbus.UInt32(0), {}))
wait(d.Compact(dbus.UInt32(0), {}))
wait(d.Resize(dbus.UInt64(32 << 20), {}))
wait(d.Repair(dbus.UInt32(0), {}))
img = obj(disk, "org.freedesktop.DBus.Properties").Get(N + ".Disk", "Images")[0]
i = obj(img, N + ".Image")
i.SetComment("sandbox", {})
i.SetUuids({"uuid": ""}, {})
d.Close({})
mgr.ProbeFormat(new_file("base.vdi", os.O_RDONLY), {})
disk = mgr.OpenDisk([(new_file("base.vdi", os.O_RDONLY), "", {})], {"read-only": True})
obj(disk, N + ".Disk").Close({})
print("workload done", flush=True)
"""


def expand(entry, cache={}):
    """The system calls of a filter entry (a @group, expanded recursively, or a name)."""
    if not entry.startswith("@"):
        return {entry}
    if entry not in cache:
        out = subprocess.run(["systemd-analyze", "syscall-filter", entry], capture_output=True, text=True)
        names = set()
        for line in out.stdout.splitlines()[1:]:
            line = line.strip()
            if line and not line.startswith("#"):
                names |= expand(line)
        cache[entry] = names
    return cache[entry]


def unit_filter(unit):
    allow, deny = set(), set()
    for line in open(unit, encoding="utf-8"):
        m = re.match(r"SystemCallFilter=(.*)", line.strip())
        if not m:
            continue
        value = m.group(1).strip()
        target = allow
        if value.startswith("~"):
            target, value = deny, value[1:]
        for entry in value.split():
            names = expand(entry)
            if not names:
                fail(f"SystemCallFilter entry {entry} expands to nothing")
            target |= names
    return allow, deny


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    unit, vdiskd = sys.argv[1:]
    for tool in ("strace", "dbus-daemon", "systemd-analyze"):
        if not shutil.which(tool):
            print(f"{tool} missing: skipped")
            return 77
    if subprocess.run(["/usr/bin/python3", "-c", "import dbus"], capture_output=True).returncode != 0:
        print("/usr/bin/python3 with python3-dbus missing: skipped")
        return 77

    allow, deny = unit_filter(unit)
    if not allow:
        fail("the unit has no SystemCallFilter= allow list")
        return 1
    allowed = allow - deny

    tmp = tempfile.mkdtemp(prefix="vdisk-syscalls-")
    procs = []
    try:
        bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address",
                                f"--address=unix:path={tmp}/bus"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(bus)
        address = bus.stdout.readline().strip()
        trace = os.path.join(tmp, "strace.out")
        daemon = subprocess.Popen(["strace", "-f", "-qq", "-o", trace, vdiskd, "--session", f"--address={address}",
                                   "--linger-sec=2", "--idle-exit-sec=1"],
                                  stderr=subprocess.PIPE, text=True)
        procs.append(daemon)

        def name_owned():
            r = subprocess.run(["busctl", f"--address={address}", "call", "org.freedesktop.DBus",
                                "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s",
                                "org.vdisk.VDisk1"], capture_output=True, text=True)
            return r.stdout.strip() == "b true"
        end = time.monotonic() + 30
        while not name_owned() and daemon.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        if not name_owned():
            fail(f"vdiskd did not come up: {daemon.stderr.read() if daemon.poll() is not None else 'timeout'}")
            return 1

        os.mkdir(os.path.join(tmp, "files"))
        r = subprocess.run(["/usr/bin/python3", "-c", WORKLOAD, address, os.path.join(tmp, "files")],
                           capture_output=True, text=True, timeout=600)
        sys.stdout.write(r.stdout)
        if r.returncode != 0:
            fail(f"the workload failed: {r.stderr.strip()}")
        try:
            daemon.wait(timeout=60)   # idle exit
        except subprocess.TimeoutExpired:
            fail("vdiskd did not exit when idle")

        used = {}
        families = set()
        for line in open(trace, encoding="utf-8", errors="replace"):
            m = re.match(r"\d+\s+(?:<\.\.\. )?([a-z_0-9]+)[( ]", line)
            if not m:
                continue
            used[m.group(1)] = used.get(m.group(1), 0) + 1
            f = re.match(r"\d+\s+socket\((AF_[A-Z0-9]+)", line)
            if f:
                families.add(f.group(1))
        if not used:
            fail("strace recorded no system calls")
        outside = sorted(s for s in used if s not in allowed)
        if outside:
            fail("system calls outside the unit's SystemCallFilter: " + ", ".join(outside))
        else:
            ok(f"{len(used)} distinct system calls, all allowed by the unit's SystemCallFilter")
        if families - {"AF_UNIX"}:
            fail(f"socket families other than AF_UNIX: {sorted(families)}")
        else:
            ok(f"socket families {sorted(families)}")
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
