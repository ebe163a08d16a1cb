# SPDX-License-Identifier: LGPL-2.1-or-later
"""polkit challenge, interaction flag, subject and details, against a local
dbusmock template (polkitd_challenge.py) that answers challenge for every
action not explicitly allowed and records each CheckAuthorization.

The detail tests make the template refuse a check by one detail's value, as a
rule's `action.lookup(key) == value` would: they prove the value is canonical
(the backend's one name for formats, whatever alias or case the call used),
and that it describes what docs/polkit.md says.

python-dbus cannot set ALLOW_INTERACTIVE_AUTHORIZATION, so the calls that need
it go through rawbus.py (a hand-written client) in the agent, as the same uid.
"""

import os

import dbus
import pytest

from harness import (A_CANCEL_OTHER, A_MODIFY, A_OPEN, A_OTHER, ACCESS_DENIED, DISK, ERR,
                     INTERACTIVE_REQUIRED, MANAGER, OBJMGR, PROPS, MiB, REGIONS, ROOT_PATH, UID_A, UID_B,
                     Open, RemoteDBusError, expect_error, open_disk, unique)
import rawbus

VDISK_ENV = dict(template='polkitd_challenge.py')

FLAG_INTERACTIVE = rawbus.FLAG_ALLOW_INTERACTIVE_AUTHORIZATION
POLKIT_ALLOW_USER_INTERACTION = 1


def set_result(env, authorized, challenge, details):
    env.polkit.mock.SetResult(authorized, challenge, dbus.Dictionary(details, signature='ss'))


def set_allowed(env, *actions):
    env.polkit.mock.SetAllowed(dbus.Array(actions, signature='s'))


@pytest.fixture
def pk(env):
    set_result(env, False, True, {})
    env.polkit.mock.AllowUnknown(False)
    set_allowed(env)
    env.polkit.mock.SetDenyDetails(dbus.Dictionary({}, signature='ss'))
    env.polkit.mock.ClearCalls()
    return env.polkit


def calls(env):
    out = []
    for kind, sdet, action, details, flags, cancel_id in env.polkit.mock.GetCalls():
        out.append(dict(kind=str(kind), subject={str(k): str(v) for k, v in sdet.items()}, action=str(action),
                        details={str(k): str(v) for k, v in details.items()}, flags=int(flags),
                        cancellation_id=str(cancel_id)))
    return out


def only_call(env):
    c = calls(env)
    assert len(c) == 1, c
    return c[0]


def check_common(call, unique_name, action, owner_uid, flags):
    assert call['kind'] == 'system-bus-name', call
    assert call['subject'].get('name') == unique_name, call
    assert call['action'] == action, call
    assert call['flags'] == flags, call
    assert call['details'].get('owner-uid') == str(owner_uid), call
    assert call['details'].get('operation'), call
    assert call['details'].get('polkit.message'), call


def raw(agent, method, signature, args, path=ROOT_PATH, iface=MANAGER, flags=0, fds=()):
    """A call through rawbus in the agent; returns (unique_name, error name or None)."""
    try:
        name, _ = agent.rpc('raw_call', path, iface, method, signature, list(args), flags=flags, fds=list(fds))
        return name, None
    except RemoteDBusError as e:
        return e.unique_name, e.name


def a_disk(env, a, name):
    """A's disk with one VDI (needs the open action allowed)."""
    p = env.make_vdi(UID_A, unique('c') + '.vdi', 8 * MiB, REGIONS)
    return open_disk(env, a, [p], name=name)


def test_challenge_without_interactive_flag(env, clients, pk):
    """python-dbus sends no ALLOW_INTERACTIVE_AUTHORIZATION: challenge ->
    InteractiveAuthorizationRequired, and vdiskd asked without AllowUserInteraction."""
    a = clients[UID_A]
    expect_error(INTERACTIVE_REQUIRED, a.manager, 'CreateDisk', 'a{sv}', {'display-name': 'dn-create'})
    c = only_call(env)
    check_common(c, a.unique_name, A_OPEN, UID_A, 0)
    assert c['details'].get('display-name') == 'dn-create', c


def test_interactive_flag_passed_to_polkit(env, clients, pk):
    """With the header flag, vdiskd sets AllowUserInteraction (1); a challenge
    polkit could not resolve then ends in AccessDenied."""
    a = clients[UID_A]
    name, err = raw(a, 'CreateDisk', 'a{sv}', [{'display-name': ('s', 'dn-flag')}], flags=FLAG_INTERACTIVE)
    assert err == ACCESS_DENIED, err
    c = only_call(env)
    check_common(c, name, A_OPEN, UID_A, POLKIT_ALLOW_USER_INTERACTION)
    assert c['details'].get('display-name') == 'dn-flag'


def test_raw_without_flag(env, clients, pk):
    """The same raw call without the flag: InteractiveAuthorizationRequired, flags 0
    (so the flag above, and nothing else, made the difference)."""
    a = clients[UID_A]
    name, err = raw(a, 'CreateDisk', 'a{sv}', [{}])
    assert err == INTERACTIVE_REQUIRED, err
    check_common(only_call(env), name, A_OPEN, UID_A, 0)


def test_no_user_interaction_option(env, clients, pk):
    """auth.no_user_interaction=true wins over the header flag."""
    a = clients[UID_A]
    name, err = raw(a, 'CreateDisk', 'a{sv}', [{'auth.no_user_interaction': ('b', True)}], flags=FLAG_INTERACTIVE)
    assert err == INTERACTIVE_REQUIRED, err
    check_common(only_call(env), name, A_OPEN, UID_A, 0)


def test_authorized_with_flag(env, clients, pk):
    a = clients[UID_A]
    set_allowed(env, A_OPEN)
    name, err = raw(a, 'CreateDisk', 'a{sv}', [{}], flags=FLAG_INTERACTIVE)
    assert err is None
    check_common(only_call(env), name, A_OPEN, UID_A, POLKIT_ALLOW_USER_INTERACTION)


def test_details_disk_write(env, clients, pk):
    """Disk.Write on A's own disk: action modify, operation write, format VDI,
    owner-uid, display-name of the disk."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN)
    d = a_disk(env, a, 'dn-write')
    env.polkit.mock.ClearCalls()
    name, err = raw(a, 'Write', 'taya{sv}', [0, b'\x01' * 512, {}], path=d, iface=DISK, flags=FLAG_INTERACTIVE)
    assert err == ACCESS_DENIED
    c = only_call(env)
    check_common(c, name, A_MODIFY, UID_A, POLKIT_ALLOW_USER_INTERACTION)
    assert c['details'].get('operation') == 'write', c
    assert c['details'].get('format') == 'VDI', c
    assert c['details'].get('display-name') == 'dn-write', c


def test_details_copy(env, clients, pk):
    """Disk.Copy: operation copy; format and display-name are the target
    disk's (what is acted on), new-format and new-display-name the call's."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN)
    d = a_disk(env, a, 'dn-src')
    new = env.empty_file(UID_A, unique('copy') + '.raw')
    env.polkit.mock.ClearCalls()
    name, err = raw(a, 'Copy', 'hsa{sv}', [0, 'RAW', {'display-name': ('s', 'dn-copy')}], path=d, iface=DISK,
                    fds=[Open(new, os.O_RDWR)])
    assert err == INTERACTIVE_REQUIRED
    c = only_call(env)
    check_common(c, name, A_MODIFY, UID_A, 0)
    assert c['details'].get('operation') == 'copy', c
    assert c['details'].get('format') == 'VDI', c
    assert c['details'].get('display-name') == 'dn-src', c
    assert c['details'].get('new-format') == 'RAW', c
    assert c['details'].get('new-display-name') == 'dn-copy', c
    assert os.path.getsize(new) == 0


def test_details_read(env, clients, pk):
    a = clients[UID_A]
    set_allowed(env, A_OPEN)
    d = a_disk(env, a, 'dn-read')
    set_allowed(env)
    env.polkit.mock.ClearCalls()
    expect_error(INTERACTIVE_REQUIRED, a.disk, d, 'Read', 'tua{sv}', 0, 512, {})
    c = only_call(env)
    check_common(c, a.unique_name, A_OPEN, UID_A, 0)
    assert c['details'].get('operation') == 'read', c
    assert c['details'].get('format') == 'VDI', c


def test_other_user_checked_twice(env, clients, pk):
    """B reads A's disk: first the method's action (open), then
    manage-other-user, both with A's uid as owner-uid, neither naming the
    disk or its format (privacy)."""
    a, b = clients[UID_A], clients[UID_B]
    set_allowed(env, A_OPEN)
    d = a_disk(env, a, 'dn-other')
    env.polkit.mock.ClearCalls()
    expect_error(INTERACTIVE_REQUIRED, b.disk, d, 'Read', 'tua{sv}', 0, 512, {})
    c = calls(env)
    assert [x['action'] for x in c] == [A_OPEN, A_OTHER], c
    for x in c:
        check_common(x, b.unique_name, x['action'], UID_A, 0)
        # B may not read A's disk: its name and format stay out of what B's agent shows
        assert 'display-name' not in x['details'] and 'format' not in x['details'], x
        assert 'dn-other' not in x['details']['polkit.message'], x
    # and a refusal of the first check ends the call without asking the second
    set_allowed(env)
    env.polkit.mock.ClearCalls()
    expect_error(INTERACTIVE_REQUIRED, b.disk, d, 'Read', 'tua{sv}', 0, 512, {})
    assert [x['action'] for x in calls(env)] == [A_OPEN]


def test_read_other_user_details(env, clients, pk):
    """B reads A's disk's properties (docs/dbus-api.md "Privacy"): one check,
    manage-other-user with operation read-properties and A's uid, naming
    neither the disk nor its format; B's GetManagedObjects asks it without
    interaction (list-objects) and, refused, lists nothing of A's."""
    a, b = clients[UID_A], clients[UID_B]
    set_allowed(env, A_OPEN)
    d = a_disk(env, a, 'dn-secret-read')
    env.polkit.mock.ClearCalls()
    expect_error(INTERACTIVE_REQUIRED, b.call, d, PROPS, 'Get', 'ss', DISK, 'DisplayName')
    c = only_call(env)
    check_common(c, b.unique_name, A_OTHER, UID_A, 0)
    assert c['details']['operation'] == 'read-properties', c
    assert 'display-name' not in c['details'] and 'format' not in c['details'], c
    assert 'dn-secret-read' not in c['details']['polkit.message'], c
    env.polkit.mock.ClearCalls()
    listed = b.call(ROOT_PATH, OBJMGR, 'GetManagedObjects', '')
    c = only_call(env)
    check_common(c, b.unique_name, A_OTHER, UID_B, 0)
    assert c['details']['operation'] == 'list-objects', c
    assert d not in listed and 'dn-secret-read' not in repr(listed)


def test_cancel_other_user_details(env, clients, pk):
    a, b = clients[UID_A], clients[UID_B]
    set_allowed(env, A_OPEN, A_MODIFY)
    d = a_disk(env, a, 'dn-op')
    op = a.disk(d, 'Check', 'ua{sv}', 0, {})
    a.wait_op(op)
    env.polkit.mock.ClearCalls()
    expect_error(INTERACTIVE_REQUIRED, b.operation, op, 'Cancel')
    c = only_call(env)
    check_common(c, b.unique_name, A_CANCEL_OTHER, UID_A, 0)
    env.polkit.mock.ClearCalls()
    expect_error(INTERACTIVE_REQUIRED, b.operation, op, 'Dismiss')
    check_common(only_call(env), b.unique_name, A_CANCEL_OTHER, UID_A, 0)
    # the starter's own Wait and Cancel ask nothing
    env.polkit.mock.ClearCalls()
    a.wait_op(op)
    expect_error(ERR + 'NotCancelable', a.operation, op, 'Cancel')
    assert calls(env) == []
    # another uid's Wait reads the operation (its error message may name files): manage-other-user
    expect_error(INTERACTIVE_REQUIRED, b.wait_op, op)
    check_common(only_call(env), b.unique_name, A_OTHER, UID_A, 0)


def test_dismissed(env, clients, pk):
    """polkit says the user dismissed the dialog: NotAuthorizedDismissed."""
    a = clients[UID_A]
    set_result(env, False, False, {'polkit.dismissed': 'true'})
    name, err = raw(a, 'CreateDisk', 'a{sv}', [{}], flags=FLAG_INTERACTIVE)
    assert err == ERR + 'NotAuthorizedDismissed', err
    check_common(only_call(env), name, A_OPEN, UID_A, POLKIT_ALLOW_USER_INTERACTION)


def test_not_authorized_plain(env, clients, pk):
    """Neither authorized nor challenge: AccessDenied, with or without the flag."""
    a = clients[UID_A]
    set_result(env, False, False, {})
    expect_error(ACCESS_DENIED, a.manager, 'CreateDisk', 'a{sv}', {})
    assert raw(a, 'CreateDisk', 'a{sv}', [{}], flags=FLAG_INTERACTIVE)[1] == ACCESS_DENIED


def test_root_never_asks_polkit(env, clients, pk):
    root = env.agent(0, 'root-chal')
    try:
        d = root.manager('CreateDisk', 'a{sv}', {})
        root.disk(d, 'Close', 'a{sv}', {})
        assert raw(root, 'CreateDisk', 'a{sv}', [{}], flags=FLAG_INTERACTIVE)[1] is None
        assert calls(env) == []
    finally:
        root.close()


# ---------------------------------------------------------------------------
# details, one refusing rule each (docs/polkit.md "Details passed to rules")

RAW_SPELLINGS = ('file', 'FILE', 'raw', 'Raw', 'RAW')


def deny_detail(env, key, value):
    env.polkit.mock.SetDenyDetails(dbus.Dictionary({key: value}, signature='ss'))


def test_detail_new_format_canonical(env, clients, pk):
    """A polkit that refuses new-format == "RAW" refuses Copy, CreateBase and
    Open with every spelling of raw, the alias "file" included (the check
    carries "RAW"); nothing is written. VDI in any case passes, as "VDI"."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN, A_MODIFY)
    d = a_disk(env, a, 'dn-nf')
    empty = a.manager('CreateDisk', 'a{sv}', {'display-name': 'dn-nf-empty'})
    deny_detail(env, 'new-format', 'RAW')
    for spelling in RAW_SPELLINGS:
        for method, sig, args, path in (
                ('Copy', 'hsa{sv}', (spelling, {}), d),
                ('CreateBase', 'hsta{sv}', (spelling, 1 * MiB, {}), empty),
                ('Open', 'hsa{sv}', (spelling, {}), empty)):
            new = env.empty_file(UID_A, unique('nf') + '.img')
            env.polkit.mock.ClearCalls()
            expect_error(ACCESS_DENIED, a.disk, path, method, sig, Open(new, os.O_RDWR), *args)
            c = only_call(env)
            assert c['details'].get('new-format') == 'RAW', (method, spelling, c)
            assert os.path.getsize(new) == 0
    for spelling in ('vdi', 'Vdi', 'VDI'):
        new = env.empty_file(UID_A, unique('nf') + '.vdi')
        env.polkit.mock.ClearCalls()
        op = a.disk(d, 'Copy', 'hsa{sv}', Open(new, os.O_RDWR), spelling, {})
        assert only_call(env)['details'].get('new-format') == 'VDI'
        a.wait_op(op)
        env.qemu_img('check', '-f', 'vdi', new)


def test_unknown_format_refused_before_polkit(env, clients, pk):
    """An unknown format name is UnknownFormat in the call: polkit is not asked."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN, A_MODIFY)
    d = a_disk(env, a, 'dn-unknown')
    new = env.empty_file(UID_A, unique('uf') + '.img')
    p = env.make_vdi(UID_A, unique('uf') + '.vdi', 1 * MiB)
    env.polkit.mock.ClearCalls()
    expect_error(ERR + 'UnknownFormat', a.disk, d, 'Copy', 'hsa{sv}', Open(new, os.O_RDWR), 'qcow9', {})
    expect_error(ERR + 'UnknownFormat', a.manager, 'OpenDisk', 'a(hsa{sv})a{sv}',
                 [(Open(p, os.O_RDWR), 'nosuch', {})], {})
    assert calls(env) == []


def test_detail_format_canonical(env, clients, pk):
    """format == "RAW" refused: a method on a disk whose top image is raw
    (opened as "file") is refused, and the check says "RAW"; the same method on
    a VDI disk passes."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN, A_MODIFY)
    rawf = env.make_raw(UID_A, unique('fmt') + '.img', 1 * MiB, regions=((0, 512, 0x44),))
    rd = a.manager('OpenDisk', 'a(hsa{sv})a{sv}', [(Open(rawf, os.O_RDWR), 'file', {})], {'display-name': 'dn-raw'})
    vd = a_disk(env, a, 'dn-fmt-vdi')
    deny_detail(env, 'format', 'RAW')
    env.polkit.mock.ClearCalls()
    expect_error(ACCESS_DENIED, a.disk, rd, 'Read', 'tua{sv}', 0, 512, {})
    assert only_call(env)['details'].get('format') == 'RAW'
    assert a.disk(vd, 'Read', 'tua{sv}', 0, 512, {}) == b'\x11' * 512


def test_detail_operation(env, clients, pk):
    """operation == "read" refused: Read is, Flush is not."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN, A_MODIFY)
    d = a_disk(env, a, 'dn-operation')
    deny_detail(env, 'operation', 'read')
    env.polkit.mock.ClearCalls()
    expect_error(ACCESS_DENIED, a.disk, d, 'Read', 'tua{sv}', 0, 512, {})
    assert only_call(env)['details'].get('operation') == 'read'
    a.disk(d, 'Flush', 'a{sv}', {})


def test_detail_owner_uid(env, clients, pk):
    """owner-uid == A refused: A's CreateDisk is; B's is not; B reading A's disk
    is refused too (the owner is the object's, not the caller)."""
    a, b = clients[UID_A], clients[UID_B]
    set_allowed(env, A_OPEN, A_MODIFY, A_OTHER)
    d = a_disk(env, a, 'dn-owner')
    deny_detail(env, 'owner-uid', str(UID_A))
    expect_error(ACCESS_DENIED, a.manager, 'CreateDisk', 'a{sv}', {})
    bd = b.manager('CreateDisk', 'a{sv}', {})
    b.disk(bd, 'Close', 'a{sv}', {})
    env.polkit.mock.ClearCalls()
    expect_error(ACCESS_DENIED, b.disk, d, 'Read', 'tua{sv}', 0, 512, {})
    assert calls(env)[0]['details'].get('owner-uid') == str(UID_A)


def test_detail_display_name(env, clients, pk):
    """display-name == "dn-secret" refused: a method on the disk of that name
    is; on another disk it is not, even when the call's own display-name
    option is "dn-secret" (that is new-display-name)."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN, A_MODIFY)
    secret = a_disk(env, a, 'dn-secret')
    public = a_disk(env, a, 'dn-public')
    deny_detail(env, 'display-name', 'dn-secret')
    expect_error(ACCESS_DENIED, a.disk, secret, 'Read', 'tua{sv}', 0, 512, {})
    assert a.disk(public, 'Read', 'tua{sv}', 0, 512, {}) == b'\x11' * 512
    new = env.empty_file(UID_A, unique('dn') + '.vdi')
    env.polkit.mock.ClearCalls()
    op = a.disk(public, 'Copy', 'hsa{sv}', Open(new, os.O_RDWR), 'VDI', {'display-name': 'dn-secret'})
    c = only_call(env)
    assert (c['details'].get('display-name'), c['details'].get('new-display-name')) == ('dn-public', 'dn-secret')
    a.wait_op(op)


def test_detail_new_display_name(env, clients, pk):
    """new-display-name == "dn-forbidden" refused: CreateDisk and Copy naming
    it are; other names pass."""
    a = clients[UID_A]
    set_allowed(env, A_OPEN, A_MODIFY)
    d = a_disk(env, a, 'dn-ndn')
    deny_detail(env, 'new-display-name', 'dn-forbidden')
    expect_error(ACCESS_DENIED, a.manager, 'CreateDisk', 'a{sv}', {'display-name': 'dn-forbidden'})
    new = env.empty_file(UID_A, unique('ndn') + '.vdi')
    expect_error(ACCESS_DENIED, a.disk, d, 'Copy', 'hsa{sv}', Open(new, os.O_RDWR), 'VDI',
                 {'display-name': 'dn-forbidden'})
    assert os.path.getsize(new) == 0
    ok = a.manager('CreateDisk', 'a{sv}', {'display-name': 'dn-allowed'})
    a.disk(ok, 'Close', 'a{sv}', {})
