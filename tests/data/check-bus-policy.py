#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Checks data/org.vdisk.VDisk1.conf and the bus activation file.

Usage: check-bus-policy.py POLICY_CONF ACTIVATION_FILE VDISKD_PATH

1. Static: the policy is well-formed, has the busconfig DOCTYPE, validates
   against busconfig.dtd when a copy is installed (Debian's dbus packages do
   not ship one), and has the intended shape: only user vdiskd may own
   org.vdisk.VDisk1, the default context may send to it, and nothing narrows
   the send rule to interfaces, members or paths (no per-method allow lists
   that can drift from the daemon's vtables).
2. The activation file names the bus name, the daemon, the user and the unit.
3. With dbus-daemon: a private bus of type "system" whose default policy
   follows the stock system.conf (deny owning names and method calls; allow
   signals, requested replies and receiving) includes the policy and loads the
   activation file; ListActivatableNames lists org.vdisk.VDisk1.
4. As root, with setpriv and /usr/bin/python3 with python3-dbus and
   python3-dbusmock: behaviour on that bus, with the policy's user replaced by
   "nobody" (the stand-in service user). The stand-in can own the name,
   another uid and root cannot; another uid can call methods on the owner and
   receives its signals.
Exit 0 pass, 1 fail, 77 skip (only when even the static checks cannot run).
"""

import configparser
import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from datacheck import failures, fail, ok, stop_all

NAME = "org.vdisk.VDisk1"
SERVICE_USER = "vdiskd"
STANDIN_UID = 65534     # nobody: plays the service user in part 4
OTHER_USERS = ("daemon", "bin", "sys", "games", "man", "lp", "mail")   # one of them plays "another uid"


def check_static(path):
    text = open(path, encoding="utf-8").read()
    if not re.search(r'<!DOCTYPE\s+busconfig\s+PUBLIC\s+"-//freedesktop//DTD D-Bus Bus Configuration 1\.0//EN"\s+'
                     r'"http://www\.freedesktop\.org/standards/dbus/1\.0/busconfig\.dtd"\s*>', text):
        fail("missing or wrong busconfig DOCTYPE")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        fail(f"not well-formed: {e}")
        return
    ok("well-formed")

    dtds = [p for p in ("/usr/share/xml/dbus-1/busconfig.dtd", "/usr/share/dbus-1/busconfig.dtd",
                        *glob.glob("/usr/share/xml/dbus*/**/busconfig.dtd", recursive=True))
            if os.path.exists(p)]
    if dtds and shutil.which("xmllint"):
        r = subprocess.run(["xmllint", "--noout", "--dtdvalid", dtds[0], path])
        if r.returncode != 0:
            fail(f"not valid against {dtds[0]}")
        else:
            ok(f"valid against {dtds[0]}")
    else:
        print("note: no busconfig.dtd installed; dbus-daemon's own parser checks the file below")

    if root.tag != "busconfig":
        fail(f"root element is <{root.tag}>, not <busconfig>")
    for child in root:
        if child.tag != "policy":
            fail(f"unexpected top-level element <{child.tag}>: a system.d snippet holds policies only")

    owner_rules = []
    send_rules = []
    for policy in root.iter("policy"):
        attrs = dict(policy.attrib)
        if len(attrs) != 1 or not (attrs.get("user") == SERVICE_USER or attrs.get("context") == "default"):
            fail(f"unexpected <policy {attrs}>: only user={SERVICE_USER} and context=default are wanted")
        for rule in policy:
            if rule.tag not in ("allow", "deny"):
                fail(f"unexpected <{rule.tag}> in a policy")
                continue
            a = dict(rule.attrib)
            for key in a:
                if key.startswith("send_") and key != "send_destination":
                    fail(f"{rule.tag} rule {a} narrows sending by {key}: no per-method lists")
                if key.startswith("receive_") or key in ("user", "group", "eavesdrop"):
                    fail(f"{rule.tag} rule {a}: not needed (the system default allows receiving)")
            if "own" in a or "own_prefix" in a:
                owner_rules.append((attrs, rule.tag, a))
            if "send_destination" in a:
                send_rules.append((attrs, rule.tag, a))

    if owner_rules != [({"user": SERVICE_USER}, "allow", {"own": NAME})]:
        fail(f"name ownership rules are {owner_rules}; want exactly <allow own=\"{NAME}\"/> for user {SERVICE_USER}")
    else:
        ok(f"only {SERVICE_USER} may own {NAME}")
    if send_rules != [({"context": "default"}, "allow", {"send_destination": NAME})]:
        fail(f"send rules are {send_rules}; want exactly one blanket <allow send_destination=\"{NAME}\"/> "
             "in the default context")
    else:
        ok(f"the default context may send to {NAME}, with no per-method rules")


def check_activation(path, vdiskd):
    cp = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    cp.optionxform = str
    try:
        cp.read(path, encoding="utf-8")
    except configparser.Error as e:
        fail(f"activation file does not parse: {e}")
        return
    if cp.sections() != ["D-BUS Service"]:
        fail(f"activation file sections {cp.sections()}, want [D-BUS Service]")
        return
    s = cp["D-BUS Service"]
    want = {"Name": NAME, "Exec": f"{vdiskd} --system", "User": SERVICE_USER, "SystemdService": "vdiskd.service"}
    if dict(s) != want:
        fail(f"activation file has {dict(s)}, want {want}")
    else:
        ok("activation file names the bus name, daemon, user and unit")


BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{servicedir}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""

RECEIVER = r"""
import sys, dbus, dbus.bus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
DBusGMainLoop(set_as_default=True)
bus = dbus.bus.BusConnection(sys.argv[1])
loop = GLib.MainLoop()
got = []
def on_signal(*args):
    got.append(args)
    loop.quit()
bus.add_signal_receiver(on_signal, signal_name="Completed", dbus_interface="org.vdisk.VDisk1.Operation",
                        bus_name="org.vdisk.VDisk1")
print("ready", flush=True)
GLib.timeout_add_seconds(20, loop.quit)
loop.run()
sys.exit(0 if got else 1)
"""


def busctl(address, *args, uid=None, check=False):
    cmd = ["busctl", f"--address={address}", "--timeout=10", *args]
    if uid is not None:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        fail(f"{' '.join(args)} (uid {uid}): {r.stderr.strip()}")
    return r


def can_run_behaviour():
    if os.geteuid() != 0:
        return "not root (setpriv is needed to act as other uids)"
    if not shutil.which("setpriv"):
        return "setpriv missing"
    if other_uid() is None:
        return "no system user to play another uid (dbus-daemon refuses uids without a passwd entry)"
    if not os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3 missing"
    r = subprocess.run(["/usr/bin/python3", "-c", "import dbus, dbusmock, gi.repository.GLib"],
                       capture_output=True)
    if r.returncode != 0:
        return "python3-dbus, python3-dbusmock or python3-gi missing"
    return None


def other_uid():
    for name in OTHER_USERS:
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        if uid not in (0, STANDIN_UID):
            return uid
    return None


def wait_for(pred, seconds=20):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def check_with_bus(conf, activation):
    daemon = shutil.which("dbus-daemon")
    if not daemon or not shutil.which("busctl"):
        print("note: dbus-daemon or busctl missing: bus checks skipped")
        return
    tmp = tempfile.mkdtemp(prefix="vdisk-bus-policy-")
    procs = []
    try:
        os.chmod(tmp, 0o755)
        servicedir = os.path.join(tmp, "services")
        os.mkdir(servicedir)
        shutil.copy(activation, os.path.join(servicedir, NAME + ".service"))
        skip_why = can_run_behaviour()
        policy = os.path.join(tmp, "policy.conf")
        text = open(conf, encoding="utf-8").read()
        if skip_why is None:
            # Part 4 needs an existing user to stand in for vdiskd.
            text = text.replace(f'user="{SERVICE_USER}"', 'user="nobody"')
        open(policy, "w", encoding="utf-8").write(text)
        socket = os.path.join(tmp, "bus")
        cfg = os.path.join(tmp, "bus.conf")
        open(cfg, "w").write(BUS_CONFIG.format(socket=socket, servicedir=servicedir, policy=policy))
        bus = subprocess.Popen([daemon, f"--config-file={cfg}", "--nofork", "--nopidfile", "--print-address"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(bus)
        address = bus.stdout.readline().strip()
        if not address:
            fail(f"dbus-daemon refused the configuration: {bus.stderr.read().strip()}")
            return
        ok("dbus-daemon accepts the policy")
        r = busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                   "ListActivatableNames", check=True)
        if f'"{NAME}"' not in r.stdout:
            fail(f"{NAME} is not activatable: {r.stdout.strip()}")
        else:
            ok(f"dbus-daemon loads the activation file ({NAME} is activatable)")

        if skip_why is not None:
            print(f"note: behaviour checks skipped: {skip_why}")
            return

        def request_name(uid):
            return busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                          "RequestName", "su", NAME, "4", uid=uid)

        other = other_uid()
        for uid in (other, 0):
            r = request_name(uid)
            if r.returncode == 0 or "access denied" not in (r.stderr + r.stdout).lower():
                fail(f"uid {uid} could own {NAME} ({r.stdout.strip()} {r.stderr.strip()})")
            else:
                ok(f"uid {uid} may not own {NAME}")

        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
        owner = subprocess.Popen(["setpriv", f"--reuid={STANDIN_UID}", f"--regid={STANDIN_UID}", "--clear-groups",
                                  "/usr/bin/python3", "-m", "dbusmock", "--system", NAME, "/org/vdisk/VDisk1",
                                  "org.vdisk.VDisk1.Manager"],
                                 env=env, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(owner)

        def owned():
            r = busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                       "NameHasOwner", "s", NAME)
            return r.stdout.strip() == "b true" or owner.poll() is not None
        wait_for(owned)
        if owner.poll() is not None or not owned():
            fail(f"the service user could not own {NAME}: {owner.stderr.read().strip() if owner.poll() is not None else 'timeout'}")
            return
        ok(f"the service user owns {NAME}")

        r = busctl(address, "call", NAME, "/org/vdisk/VDisk1", "org.freedesktop.DBus.Properties", "GetAll", "s",
                   "org.vdisk.VDisk1.Manager", uid=other, check=True)
        if r.returncode == 0:
            ok(f"another uid may call methods on {NAME}")

        recv = subprocess.Popen(["setpriv", f"--reuid={other}", f"--regid={other}", "--clear-groups",
                                 "/usr/bin/python3", "-c", RECEIVER, address],
                                cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(recv)
        if recv.stdout.readline().strip() != "ready":
            fail(f"signal receiver did not start: {recv.stderr.read().strip()}")
            return
        busctl(address, "call", NAME, "/org/vdisk/VDisk1", "org.freedesktop.DBus.Mock", "EmitSignal", "sssav",
               "org.vdisk.VDisk1.Operation", "Completed", "sss", "3", "s", "succeeded", "s", "", "s", "", check=True)
        try:
            rc = recv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = -1
        if rc != 0:
            fail(f"another uid did not receive the service's signal: {recv.stderr.read().strip()}")
        else:
            ok("another uid receives the service's signals")
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    conf, activation, vdiskd = sys.argv[1:]
    check_static(conf)
    check_activation(activation, vdiskd)
    check_with_bus(conf, activation)
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
