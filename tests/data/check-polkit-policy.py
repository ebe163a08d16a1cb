#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Checks policy/org.vdisk.vdisk1.policy against the API contract.

Usage: check-polkit-policy.py POLICY DBUS_API_MD POLKIT_MD EXAMPLE_RULES

- well-formed, with the policyconfig DOCTYPE; valid against polkit's
  policyconfig-1.dtd when it is installed (package polkitd), otherwise the same
  element order is checked here;
- the actions are exactly those of the table in docs/dbus-api.md, with its
  defaults, a description and a message each, and the owner annotation
  unix-user:vdiskd (the daemon is not root);
- the table in docs/polkit.md says the same;
- the sample rules file parses as JavaScript and its rules decide as their
  comments say (needs node; skipped without it).
Exit 0 pass, 1 fail.
"""

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

from datacheck import failures, fail, ok

DTD = "/usr/share/polkit-1/policyconfig-1.dtd"
OWNER = "unix-user:vdiskd"
RESULTS = {"no", "auth_self", "auth_admin", "auth_self_keep", "auth_admin_keep", "yes"}


def table_actions(md_path):
    """Action rows of a markdown table: | `org.vdisk.vdisk1.X` | ... | a / b / c |."""
    actions = {}
    for line in open(md_path, encoding="utf-8"):
        m = re.match(r"\|\s*`(org\.vdisk\.vdisk1\.[a-z-]+)`\s*\|.*\|\s*([a-z_]+)\s*/\s*([a-z_]+)\s*/\s*([a-z_]+)\s*\|\s*$",
                     line)
        if m:
            actions[m.group(1)] = tuple(m.group(2, 3, 4))
    return actions


def check_policy(path, want):
    text = open(path, encoding="utf-8").read()
    if not re.search(r'<!DOCTYPE\s+policyconfig\s+PUBLIC\s+"-//freedesktop//DTD PolicyKit Policy Configuration 1\.0//EN"\s+'
                     r'"http://www\.freedesktop\.org/standards/PolicyKit/1/policyconfig\.dtd"\s*>', text):
        fail("missing or wrong policyconfig DOCTYPE")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        fail(f"not well-formed: {e}")
        return
    ok("well-formed")

    if os.path.exists(DTD) and shutil.which("xmllint"):
        r = subprocess.run(["xmllint", "--noout", "--dtdvalid", DTD, path])
        if r.returncode != 0:
            fail(f"not valid against {DTD}")
        else:
            ok(f"valid against {DTD}")
    else:
        print(f"note: {DTD} or xmllint missing: element order checked here only")

    if root.tag != "policyconfig":
        fail(f"root element <{root.tag}>")
    order = re.compile(r"^(vendor )?(vendor_url )?(description )+(message )+(icon_name )?defaults (annotate )*$")
    got = {}
    for action in root.findall("action"):
        aid = action.get("id")
        if aid in got:
            fail(f"action {aid} defined twice")
        seq = "".join(child.tag + " " for child in action)
        if not order.match(seq):
            fail(f"{aid}: children in the wrong order or missing: {seq}")
        for tag in ("description", "message"):
            texts = [e.text.strip() for e in action.findall(tag) if e.text and e.text.strip()]
            if not texts:
                fail(f"{aid}: empty or no <{tag}>")
        d = action.find("defaults")
        vals = tuple((d.findtext(k) or "").strip() if d is not None else "" for k in
                     ("allow_any", "allow_inactive", "allow_active"))
        for v in vals:
            if v not in RESULTS:
                fail(f"{aid}: default {v!r} is not a polkit result")
        got[aid] = vals
        owners = [a.text.strip() for a in action.findall("annotate")
                  if a.get("key") == "org.freedesktop.policykit.owner" and a.text]
        if owners != [OWNER]:
            fail(f"{aid}: owner annotation {owners}, want [{OWNER}]")

    if not want:
        fail("no action table found in docs/dbus-api.md")
    for aid in sorted(set(want) | set(got)):
        if aid not in got:
            fail(f"{aid} is in docs/dbus-api.md but not in the policy")
        elif aid not in want:
            fail(f"{aid} is in the policy but not in docs/dbus-api.md")
        elif got[aid] != want[aid]:
            fail(f"{aid}: defaults {got[aid]}, docs/dbus-api.md says {want[aid]}")
        else:
            ok(f"{aid}: {' / '.join(got[aid])}, owner {OWNER}")


# Each case: action id, details, subject -> the result the sample rules give
# (first rule that does not return NOT_HANDLED wins, as in polkitd).
RULES_HARNESS = r"""
const fs = require("fs");
const rules = [];
const polkit = {
    Result: { NO: "no", YES: "yes", AUTH_SELF: "auth_self", AUTH_SELF_KEEP: "auth_self_keep",
              AUTH_ADMIN: "auth_admin", AUTH_ADMIN_KEEP: "auth_admin_keep", NOT_HANDLED: null },
    addRule: function(f) { rules.push(f); },
    log: function() {},
};
const [rulesPath, casesJson] = process.argv.slice(-2);   /* node -e: no script name in argv */
new Function("polkit", fs.readFileSync(rulesPath, "utf8"))(polkit);
function decide(id, details, groups, local, active) {
    const action = { id: id, lookup: function(k) { return details[k]; } };
    const subject = { user: "u", groups: groups, local: local, active: active,
                      isInGroup: function(g) { return groups.indexOf(g) >= 0; },
                      isInNetGroup: function() { return false; } };
    for (const r of rules) {
        const res = r(action, subject);
        if (res !== null && res !== undefined)
            return res;
    }
    return "default";
}
const cases = JSON.parse(casesJson);
let bad = 0;
for (const c of cases) {
    const got = decide(c[0], c[1], c[2], c[3], c[4]);
    if (got !== c[5]) {
        console.log("FAIL: rules: " + JSON.stringify(c.slice(0, 5)) + " gives " + got + ", want " + c[5]);
        bad++;
    }
}
console.log("rules: " + rules.length + " rules, " + cases.length + " cases, " + bad + " wrong");
process.exit(bad ? 1 : 0);
"""

P = "org.vdisk.vdisk1."
RULE_CASES = [
    # modify: group vdisk required (rule 1)
    [P + "modify", {"operation": "write", "format": "VDI"}, [], True, True, "no"],
    [P + "modify", {"operation": "write", "format": "VDI"}, ["vdisk"], True, True, "default"],
    [P + "open", {"operation": "open", "format": "VDI"}, [], True, True, "default"],
    # vdisk-admins manage other users' disks, not root's (rule 2)
    [P + "manage-other-user", {"owner-uid": "1000"}, ["vdisk-admins"], True, True, "yes"],
    [P + "manage-other-user", {"owner-uid": "0"}, ["vdisk-admins"], True, True, "default"],
    [P + "cancel-other-user", {"owner-uid": "1000"}, ["vdisk-admins"], False, False, "yes"],
    [P + "manage-other-user", {"owner-uid": "1000"}, [], True, True, "default"],
    # no raw creates or copies (rule 3)
    [P + "modify", {"operation": "create", "format": "RAW"}, ["vdisk"], True, True, "no"],
    [P + "modify", {"operation": "copy", "format": "raw"}, ["vdisk"], True, True, "no"],
    [P + "modify", {"operation": "copy", "new-format": "RAW", "format": "VDI"}, ["vdisk"], True, True, "no"],
    [P + "modify", {"operation": "write", "format": "RAW"}, ["vdisk"], True, True, "default"],
    [P + "modify", {"operation": "create"}, ["vdisk"], True, True, "default"],
    # remote or inactive sessions authenticate to modify (rule 4)
    [P + "modify", {"operation": "write", "format": "VDI"}, ["vdisk"], False, True, "auth_admin"],
    [P + "modify", {"operation": "write", "format": "VDI"}, ["vdisk"], True, False, "auth_admin"],
]


def check_rules(path):
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        print("note: node missing: the sample rules file is not evaluated")
        return
    import json
    r = subprocess.run([node, "-e", RULES_HARNESS, path, json.dumps(RULE_CASES)], capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        fail(f"sample rules: {r.stderr.strip() or 'wrong decisions'}")
    else:
        ok("sample rules parse and decide as documented")


def main():
    if len(sys.argv) != 5:
        print(__doc__)
        return 2
    policy, api_md, polkit_md, rules = sys.argv[1:]
    want = table_actions(api_md)
    check_policy(policy, want)
    doc = table_actions(polkit_md)
    if doc != want:
        fail(f"docs/polkit.md's action table {doc} differs from docs/dbus-api.md's {want}")
    else:
        ok("docs/polkit.md's action table matches docs/dbus-api.md")
    check_rules(rules)
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
