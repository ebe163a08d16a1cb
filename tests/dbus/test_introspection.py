# SPDX-License-Identifier: LGPL-2.1-or-later
"""The interface files are the daemon's interfaces, and the contract's.

- `vdiskd --bus-introspect=IFACE` equals introspection/IFACE.xml for every
  interface, and `--bus-introspect=list` names exactly those files;
- the live Introspect of the Manager, a Disk, an Image and an Operation equals
  them too (the standard org.freedesktop.DBus.* interfaces aside);
- the XML agrees with docs/dbus-api.md: every method's argument names and
  types, every property's type and its const / emits-change flag, the signal.

Compared after canonicalizing: interfaces, members, argument names, types and
directions, annotations; comments, whitespace, order of members and the
standard interfaces are ignored, and EmitsChangedSignal="true" (the D-Bus
default) counts as no annotation.
"""

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import (DISK, FILE_SET, IMAGE, MANAGER, OPERATION, ROOT_PATH, MiB, Open, finished_ok, tool,
                     unique)

IFACES = [MANAGER, DISK, IMAGE, OPERATION, FILE_SET]
EMITS = 'org.freedesktop.DBus.Property.EmitsChangedSignal'


def source_root():
    return Path(tool('VDISK_SOURCE_ROOT'))


def canonical(text):
    """XML text -> {iface: {...}} without the standard interfaces."""
    root = ET.fromstring(text)
    out = {}
    for itf in root.findall('interface'):
        name = itf.get('name')
        if name.startswith('org.freedesktop.DBus.'):
            continue
        entry = {'annotations': annotations(itf), 'methods': {}, 'signals': {}, 'properties': {}}
        for m in itf.findall('method'):
            args = [(a.get('name'), a.get('type'), a.get('direction', 'in')) for a in m.findall('arg')]
            entry['methods'][m.get('name')] = {'args': args, 'annotations': annotations(m)}
        for s in itf.findall('signal'):
            args = [(a.get('name'), a.get('type')) for a in s.findall('arg')]
            entry['signals'][s.get('name')] = {'args': args, 'annotations': annotations(s)}
        for p in itf.findall('property'):
            ann = annotations(p)
            if ann.get(EMITS) == 'true':
                del ann[EMITS]
            entry['properties'][p.get('name')] = {'type': p.get('type'), 'access': p.get('access'),
                                                  'annotations': ann}
        out[name] = entry
    return out


def annotations(el):
    return {a.get('name'): a.get('value') for a in el.findall('annotation')}


def diff(a, b, path=''):
    """Human-readable differences between two canonical structures."""
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f'{path}/{k}: only in the second')
            elif k not in b:
                out.append(f'{path}/{k}: only in the first')
            else:
                out += diff(a[k], b[k], f'{path}/{k}')
    elif a != b:
        out.append(f'{path}: {a!r} != {b!r}')
    return out


def xml_file(iface):
    return (source_root() / 'introspection' / f'{iface}.xml').read_text()


def bus_introspect(arg):
    return subprocess.run([tool('VDISKD'), f'--bus-introspect={arg}'], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_list_matches_files():
    r = bus_introspect('list')
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split()
    files = sorted(p.stem for p in (source_root() / 'introspection').glob('*.xml'))
    assert sorted(listed) == files == sorted(IFACES), (listed, files)


def test_unknown_interface_fails():
    r = bus_introspect('org.vdisk.VDisk1.NoSuchThing')
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize('iface', IFACES)
def test_bus_introspect_equals_file(iface):
    r = bus_introspect(iface)
    assert r.returncode == 0, r.stderr
    daemon = canonical(r.stdout)
    ref = canonical(xml_file(iface))
    assert list(ref) == [iface], f'{iface}.xml describes {list(ref)}'
    assert list(daemon) == [iface], f'--bus-introspect={iface} printed {list(daemon)}'
    d = diff(daemon, ref)
    assert not d, f'vdiskd --bus-introspect={iface} (first) vs introspection/{iface}.xml (second):\n' + '\n'.join(d)


def test_live_objects_equal_files(env):
    """Introspect on the bus of one object of each kind (made by root: no polkit)."""
    root = env.agent(0, 'root-intro')
    d = root.manager('CreateDisk', 'a{sv}', {'display-name': 'intro'})
    img_file = env.make_vdi(0, unique('intro') + '.vdi', 4 * MiB)
    image = root.disk(d, 'Open', 'hsa{sv}', Open(img_file, os.O_RDWR), 'VDI', {})
    op = root.disk(d, 'Check', 'ua{sv}', 0, {})
    finished_ok(env, root, op)
    fs = root.manager('CreateFileSet', 'a{sv}', {})
    for path, iface in ((ROOT_PATH, MANAGER), (d, DISK), (image, IMAGE), (op, OPERATION), (fs, FILE_SET)):
        text = env.watcher.introspect(path)
        live = canonical(text)
        assert list(live) == [iface], f'{path} exposes {list(live)}'
        dd = diff(live, canonical(xml_file(iface)))
        assert not dd, f'live Introspect of {path} (first) vs {iface}.xml (second):\n' + '\n'.join(dd)
        raw = {i.get('name') for i in ET.fromstring(text).findall('interface')}
        assert {'org.freedesktop.DBus.Properties', 'org.freedesktop.DBus.Introspectable'} <= raw, raw
    assert 'org.freedesktop.DBus.ObjectManager' in env.watcher.introspect(ROOT_PATH)
    root.close()


# ---------------------------------------------------------------------------
# docs/dbus-api.md


def contract_sections():
    text = (source_root() / 'docs' / 'dbus-api.md').read_text()
    parts = re.split(r'^## (org\.vdisk\.VDisk1\.\w+)', text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def split_top(s):
    out, depth, cur = [], 0, ''
    for ch in s:
        if ch in '({':
            depth += 1
        elif ch in ')}':
            depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur.strip())
            cur = ''
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return [tuple(reversed(x.rsplit(' ', 1))) for x in out]   # (name, type)


def contract_members(section):
    members = {}
    for span in re.findall(r'`([^`]+)`', section):
        m = re.match(r'^([A-Z]\w*)\((.*?)\)\s*->\s*\((.*)\)$', span) or re.match(r'^([A-Z]\w*)\((.*)\)$', span)
        if not m:
            continue
        ins = split_top(m.group(2))
        outs = split_top(m.group(3)) if m.lastindex == 3 else []
        if all(len(a) == 2 for a in ins + outs):
            members[m.group(1)] = (ins, outs)
    return members


def contract_properties(section, all_const):
    props = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) < 3 or not re.match(r'^`\w+`$', cells[0]):
            continue
        name, sig = cells[0].strip('`'), cells[1]
        if all_const:
            flag = 'const'
        else:
            flag = cells[2]
        props[name] = (sig, flag)
    return props


@pytest.mark.parametrize('iface', IFACES)
def test_xml_matches_contract(iface):
    section = contract_sections()[iface]
    ref = canonical(xml_file(iface))[iface]
    problems = []
    members = contract_members(section)
    signals = {k: v for k, v in members.items() if k in ref['signals'] or k == 'Completed'}
    methods = {k: v for k, v in members.items() if k not in signals}
    for name, (ins, outs) in methods.items():
        x = ref['methods'].get(name)
        if not x:
            problems.append(f'method {name} of the contract is not in the XML')
            continue
        got_in = [(n, t) for n, t, d in x['args'] if d == 'in']
        got_out = [(n, t) for n, t, d in x['args'] if d == 'out']
        if got_in != ins:
            problems.append(f'{name} in-args: XML {got_in} != contract {ins}')
        if got_out != outs:
            problems.append(f'{name} out-args: XML {got_out} != contract {outs}')
    for name in ref['methods']:
        if name not in methods:
            problems.append(f'method {name} of the XML is not in the contract')
    for name, (ins, _) in signals.items():
        x = ref['signals'].get(name)
        if not x:
            problems.append(f'signal {name} of the contract is not in the XML')
        elif x['args'] != ins:
            problems.append(f'signal {name}: XML {x["args"]} != contract {ins}')
    for name in ref['signals']:
        if name not in signals:
            problems.append(f'signal {name} of the XML is not in the contract')
    props = contract_properties(section, all_const=(iface == MANAGER))
    for name, (sig, flag) in props.items():
        x = ref['properties'].get(name)
        if not x:
            problems.append(f'property {name} of the contract is not in the XML')
            continue
        if x['type'] != sig:
            problems.append(f'property {name}: XML type {x["type"]} != contract {sig}')
        if x['access'] != 'read':
            problems.append(f'property {name}: access {x["access"]}, the contract has read-only properties')
        emits = x['annotations'].get(EMITS, 'true')
        want = 'const' if flag == 'const' else 'invalidates' if flag.startswith('invalidates') else 'true'
        if emits != want:
            problems.append(f'property {name}: EmitsChangedSignal={emits}, contract says {flag}')
        explicit = x['annotations'].get('org.freedesktop.systemd1.Explicit', 'false') == 'true'
        if explicit != ('explicit' in flag):
            problems.append(f'property {name}: Explicit={explicit}, contract says {flag}')
    for name in ref['properties']:
        if name not in props:
            problems.append(f'property {name} of the XML is not in the contract')
    assert not problems, f'{iface}:\n' + '\n'.join(problems)
    # every method ends in a{sv} options
    for name, m in ref['methods'].items():
        ins = [a for a in m['args'] if a[2] == 'in']
        assert ins and ins[-1][:2] == ('options', 'a{sv}'), f'{iface}.{name} does not end in a{{sv}} options'
