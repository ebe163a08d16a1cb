# SPDX-License-Identifier: LGPL-2.1-or-later
"""dbusmock template: a polkit authority that answers "challenge" and records
every CheckAuthorization (subject, action, details, flags).

python-dbusmock's own polkitd template never answers challenge and ignores
details and flags; the dbus suite needs both to prove that vdiskd maps a
challenge to InteractiveAuthorizationRequired, passes AllowUserInteraction
only when the caller allowed it, and sends the documented details.

Answers: a check carrying a detail set with SetDenyDetails() (key and value
equal, as a rule's `action.lookup(key) == value` compares) is refused
(is_authorized=false, is_challenge=false); otherwise actions given to
SetAllowed() (or all, after AllowUnknown(true)) are authorized; any other
action gets the result set with SetResult(), by default
(is_authorized=false, is_challenge=true, {}).

Mock methods (interface org.freedesktop.DBus.Mock):
  SetAllowed(as), AllowUnknown(b), SetResult(bba{ss}), SetDenyDetails(a{ss}),
  GetCalls() -> a(sa{sv}sa{ss}us)  (subject kind, subject details, action,
                                     details, flags, cancellation id)
  ClearCalls()
"""

import dbus

from dbusmock import MOCK_IFACE

BUS_NAME = 'org.freedesktop.PolicyKit1'
MAIN_OBJ = '/org/freedesktop/PolicyKit1/Authority'
MAIN_IFACE = 'org.freedesktop.PolicyKit1.Authority'
SYSTEM_BUS = True


def load(mock, _parameters):
    mock.AddProperties(MAIN_IFACE, dbus.Dictionary({
        'BackendName': 'vdisk-test-challenge',
        'BackendVersion': '0.1',
        'BackendFeatures': dbus.UInt32(1, variant_level=1),
    }, signature='sv'))
    mock.vdisk_allowed = set()
    mock.vdisk_allow_unknown = False
    mock.vdisk_result = (False, True, {})
    mock.vdisk_calls = []
    mock.vdisk_deny_details = {}


@dbus.service.method(MAIN_IFACE, in_signature='(sa{sv})sa{ss}us', out_signature='(bba{ss})')
def CheckAuthorization(self, subject, action_id, details, flags, cancellation_id):
    kind, subject_details = subject
    self.vdisk_calls.append((str(kind), dbus.Dictionary(subject_details, signature='sv'), str(action_id),
                             dbus.Dictionary(details, signature='ss'), dbus.UInt32(flags),
                             str(cancellation_id)))
    for k, v in self.vdisk_deny_details.items():
        if details.get(k) == v:
            return (False, False, dbus.Dictionary({}, signature='ss'))
    if self.vdisk_allow_unknown or action_id in self.vdisk_allowed:
        return (True, False, dbus.Dictionary({}, signature='ss'))
    authorized, challenge, result_details = self.vdisk_result
    return (authorized, challenge, dbus.Dictionary(result_details, signature='ss'))


@dbus.service.method(MAIN_IFACE, in_signature='s', out_signature='')
def CancelCheckAuthorization(self, _cancellation_id):
    pass


@dbus.service.method(MOCK_IFACE, in_signature='as', out_signature='')
def SetAllowed(self, actions):
    self.vdisk_allowed = set(str(a) for a in actions)


@dbus.service.method(MOCK_IFACE, in_signature='b', out_signature='')
def AllowUnknown(self, allow):
    self.vdisk_allow_unknown = bool(allow)


@dbus.service.method(MOCK_IFACE, in_signature='bba{ss}', out_signature='')
def SetResult(self, authorized, challenge, details):
    self.vdisk_result = (bool(authorized), bool(challenge), dict(details))


@dbus.service.method(MOCK_IFACE, in_signature='', out_signature='a(sa{sv}sa{ss}us)')
def GetCalls(self):
    return dbus.Array(self.vdisk_calls, signature='(sa{sv}sa{ss}us)')


@dbus.service.method(MOCK_IFACE, in_signature='', out_signature='')
def ClearCalls(self):
    self.vdisk_calls = []


@dbus.service.method(MOCK_IFACE, in_signature='a{ss}', out_signature='')
def SetDenyDetails(self, details):
    self.vdisk_deny_details = {str(k): str(v) for k, v in details.items()}
