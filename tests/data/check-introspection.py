#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Lints introspection/org.vdisk.VDisk1.*.xml and compares them with docs/dbus-api.md.

Usage: check-introspection.py DBUS_API_MD XML...

Per file:
- well-formed, with the introspection DOCTYPE, one <interface> named as the
  file, in the shape sd-bus's Introspect prints: <method>/<property>/<signal>;
  <arg type name direction> in methods, <arg type name> in signals;
  <property name type access="read">, with the EmitsChangedSignal annotation
  "const" or "invalidates" or none (emits-change is the default and sd-bus
  prints nothing for it) and the systemd Explicit annotation or none; no
  other annotations (every vdiskd method is SD_BUS_VTABLE_UNPRIVILEGED,
  so sd-bus prints no org.freedesktop.systemd1.Privileged);
- a doc comment right before every method, property and signal, before the
  in-arguments of every method that has any, and before its out-arguments, and
  before the arguments of every signal that has any;
- valid signatures, CamelCase members, lower_case argument names, and every
  method ends in "a{sv} options".
Against docs/dbus-api.md: the same properties (type, const or emits-change),
methods (argument types and names, in and out) and signals, per interface.
Exit 0 pass, 1 fail.
"""

import os
import re
import sys
import xml.etree.ElementTree as ET

from datacheck import failures, fail, ok

ECS = "org.freedesktop.DBus.Property.EmitsChangedSignal"
EXPLICIT = "org.freedesktop.systemd1.Explicit"


def parse_single_type(sig, i):
    """Returns the index after one complete type starting at sig[i], or -1."""
    if i >= len(sig):
        return -1
    c = sig[i]
    if c in "ybnqiuxtdsoghv":
        return i + 1
    if c == "a":
        if i + 1 < len(sig) and sig[i + 1] == "{":
            j = i + 2
            if j >= len(sig) or sig[j] not in "ybnqiuxtdsogh":
                return -1
            j = parse_single_type(sig, j + 1)
            if j < 0 or j >= len(sig) or sig[j] != "}":
                return -1
            return j + 1
        return parse_single_type(sig, i + 1)
    if c == "(":
        j = i + 1
        if j < len(sig) and sig[j] == ")":
            return -1
        while j < len(sig) and sig[j] != ")":
            j = parse_single_type(sig, j)
            if j < 0:
                return -1
        return j + 1 if j < len(sig) else -1
    return -1


def valid_type(sig):
    return parse_single_type(sig, 0) == len(sig)


def has_comment_before(children, idx):
    return idx > 0 and children[idx - 1].tag is ET.Comment


def lint_file(path):
    """Returns (interface name, {kind: {name: description}}) or None."""
    text = open(path, encoding="utf-8").read()
    if not re.search(r'<!DOCTYPE\s+node\s+PUBLIC\s+"-//freedesktop//DTD D-BUS Object Introspection 1\.0//EN"', text):
        fail(f"{path}: missing introspection DOCTYPE")
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        root = ET.fromstring(text, parser=parser)
    except ET.ParseError as e:
        fail(f"{path}: not well-formed: {e}")
        return None
    if root.tag != "node":
        fail(f"{path}: root element <{root.tag}>, want <node>")
        return None
    ifaces = [c for c in root if c.tag is not ET.Comment]
    if len(ifaces) != 1 or ifaces[0].tag != "interface":
        fail(f"{path}: want exactly one <interface> in <node>")
        return None
    iface = ifaces[0]
    name = iface.get("name")
    base = os.path.basename(path)
    if base != f"{name}.xml":
        fail(f"{path}: interface {name} in a file named {base}")
    members = {"property": {}, "method": {}, "signal": {}}
    children = list(iface)
    for idx, m in enumerate(children):
        if m.tag is ET.Comment:
            continue
        mname = m.get("name", "")
        where = f"{name}.{mname}"
        if m.tag not in members:
            fail(f"{where}: unexpected <{m.tag}>")
            continue
        if mname in members["property"] or mname in members["method"] or mname in members["signal"]:
            fail(f"{where}: defined twice")
        if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", mname):
            fail(f"{where}: member names are CamelCase")
        if not has_comment_before(children, idx):
            fail(f"{where}: no doc comment before the {m.tag}")
        if m.tag == "property":
            if list(m.attrib) != ["name", "type", "access"] or m.get("access") != "read":
                fail(f"{where}: want <property name type access=\"read\">, got {m.attrib}")
            if not valid_type(m.get("type", "")):
                fail(f"{where}: invalid type {m.get('type')!r}")
            signal, explicit = None, False
            for a in m:
                if a.tag is ET.Comment:
                    continue
                if a.tag == "annotation" and a.get("name") == ECS and a.get("value") in ("const", "invalidates"):
                    if signal:
                        fail(f"{where}: annotation given twice")
                    signal = a.get("value")
                elif a.tag == "annotation" and a.get("name") == EXPLICIT and a.get("value") == "true":
                    if explicit:
                        fail(f"{where}: annotation given twice")
                    explicit = True
                else:
                    fail(f"{where}: only the EmitsChangedSignal=const|invalidates and Explicit=true annotations "
                         f"are expected, got <{a.tag} {a.attrib}>")
            flag = signal or "emits-change"
            if explicit:
                flag += ", explicit"
            members["property"][mname] = (m.get("type"), flag)
            continue
        args_in, args_out = [], []
        kids = list(m)
        prev_dir = None
        for j, a in enumerate(kids):
            if a.tag is ET.Comment:
                continue
            if a.tag != "arg":
                fail(f"{where}: unexpected <{a.tag} {a.attrib}> (sd-bus prints no annotation for unprivileged methods)")
                continue
            want_attrs = ["type", "name", "direction"] if m.tag == "method" else ["type", "name"]
            if list(a.attrib) != want_attrs:
                fail(f"{where}: want <arg {' '.join(want_attrs)}>, got {list(a.attrib)}")
            t, n, d = a.get("type", ""), a.get("name", ""), a.get("direction", "in" if m.tag == "method" else None)
            if not valid_type(t):
                fail(f"{where}: argument {n}: invalid type {t!r}")
            if not re.fullmatch(r"[a-z][a-z0-9_]*", n):
                fail(f"{where}: argument name {n!r} is not lower_case")
            if m.tag == "method" and d not in ("in", "out"):
                fail(f"{where}: argument {n}: direction {d!r}")
            if d != prev_dir and not has_comment_before(kids, j):
                fail(f"{where}: no doc comment before the {'arguments' if d is None else d + '-arguments'}")
            if m.tag == "method" and d == "in" and prev_dir == "out":
                fail(f"{where}: in-arguments after out-arguments")
            prev_dir = d
            (args_out if d == "out" else args_in).append((t, n))
        if m.tag == "method" and (not args_in or args_in[-1] != ("a{sv}", "options")):
            fail(f"{where}: the last in-argument must be \"a{{sv}} options\"")
        members[m.tag][mname] = (args_in, args_out) if m.tag == "method" else args_in
    return name, members


def parse_args(s):
    s = (s or "").strip()
    if not s:
        return []
    out = []
    for part in s.split(","):
        t, _, n = part.strip().partition(" ")
        out.append((t, n.strip()))
    return out


def docs_members(md_path):
    """{interface: members} as in lint_file, from docs/dbus-api.md."""
    text = open(md_path, encoding="utf-8").read()
    result = {}
    for sec in re.split(r"^## ", text, flags=re.M)[1:]:
        head = sec.splitlines()[0]
        m = re.match(r"(org\.vdisk\.VDisk1\.[A-Za-z]+)\b", head)
        if not m:
            continue
        iface = m.group(1)
        mem = {"property": {}, "method": {}, "signal": {}}
        all_const = bool(re.search(r"Properties \(all `const`\)", sec))
        for line in sec.splitlines():
            row = re.match(r"\|\s*`([A-Z][A-Za-z0-9]*)`\s*\|\s*([^|]+?)\s*\|(.*)\|\s*$", line)
            if row:
                cells = [c.strip() for c in row.group(3).split("|")]
                if all_const:
                    flag = "const"
                else:
                    flag = cells[0]
                    if flag not in ("const", "emits-change", "invalidates", "const, explicit",
                                    "emits-change, explicit", "invalidates, explicit"):
                        fail(f"docs/dbus-api.md: {iface}.{row.group(1)}: flags {flag!r}")
                mem["property"][row.group(1)] = (row.group(2), flag)
        for call in re.finditer(r"(Signal:\s*)?`([A-Z][A-Za-z0-9]*)\(([^`]*?)\)(?:\s*->\s*\(([^`]*)\))?`", sec):
            name = call.group(2)
            if call.group(1):
                mem["signal"][name] = parse_args(call.group(3))
            else:
                mem["method"][name] = (parse_args(call.group(3)), parse_args(call.group(4)))
        result[iface] = mem
    return result


def compare(iface, xml_mem, doc_mem):
    for kind in ("property", "method", "signal"):
        x, d = xml_mem[kind], doc_mem[kind]
        for name in sorted(set(x) | set(d)):
            if name not in x:
                fail(f"{iface}.{name}: {kind} in docs/dbus-api.md, not in the XML")
            elif name not in d:
                fail(f"{iface}.{name}: {kind} in the XML, not in docs/dbus-api.md")
            elif x[name] != d[name]:
                fail(f"{iface}.{name}: XML has {x[name]}, docs/dbus-api.md has {d[name]}")


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    docs = docs_members(sys.argv[1])
    seen = set()
    for path in sys.argv[2:]:
        before = len(failures)
        r = lint_file(path)
        if r is None:
            continue
        iface, mem = r
        seen.add(iface)
        if iface not in docs:
            fail(f"{iface}: no section in docs/dbus-api.md")
            continue
        compare(iface, mem, docs[iface])
        if len(failures) == before:
            ok(f"{iface}: {len(mem['property'])} properties, {len(mem['method'])} methods, "
               f"{len(mem['signal'])} signals, documented, as in docs/dbus-api.md")
    for iface in sorted(set(docs) - seen):
        fail(f"{iface}: in docs/dbus-api.md but no XML file given")
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
