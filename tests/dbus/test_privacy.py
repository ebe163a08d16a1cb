# SPDX-License-Identifier: LGPL-2.1-or-later
"""Client connections and privacy (docs/dbus-api.md "Client connections" and
"Privacy"): one watch of the bus for all client connections, whatever their
number, and objects of one uid kept from the others.

The private bus allows 64 match rules per connection (harness.PrivateBus);
vdiskd's connection is bound by it like any other.
"""

import pytest

from harness import (A_MODIFY, A_OPEN, LIMITS_EXCEEDED, MANAGER, OBJMGR, ROOT_PATH, UID_A, UID_B,
                     expect_error)

BUS_MATCH_LIMIT = 64          # harness.PrivateBus: max_match_rules_per_connection
PEERS_PER_USER = BUS_MATCH_LIMIT + 16

VDISK_ENV = dict(daemon_args=[f'--max-peers-per-user={PEERS_PER_USER}'])


@pytest.fixture(autouse=True)
def policy(env):
    env.polkit.allow(A_OPEN, A_MODIFY)
    yield


def create_disk_on_new_connection(agent, name):
    """CreateDisk over a fresh connection of the agent's uid that stays open."""
    unique_name, body = agent.rpc('raw_call', ROOT_PATH, MANAGER, 'CreateDisk', 'a{sv}',
                                  [{'display-name': ('s', name)}], keep=True)
    return body[0]


def test_more_connections_than_bus_match_rules(env, daemon_alive):
    """More client connections than the bus lets vdiskd have match rules each
    create a Disk: vdiskd stays on the bus, every connection up to its own
    per-uid limit succeeds and the next one is refused with LimitsExceeded;
    closing the connections closes their Disks, and frees their entries."""
    a = env.agent(UID_A, 'A-many-connections')
    b = env.agent(UID_B, 'B-bystander')
    mark = env.watcher.mark()
    disks = [create_disk_on_new_connection(a, f'conn-{i}') for i in range(PEERS_PER_USER)]
    assert len(set(disks)) == PEERS_PER_USER > BUS_MATCH_LIMIT
    e = expect_error(LIMITS_EXCEEDED, create_disk_on_new_connection, a, 'one-too-many')
    assert 'connections' in e.message
    assert env.daemon.alive()
    # another uid is still served (its own budget), and everything is listed
    other = b.manager('CreateDisk', 'a{sv}', {'display-name': 'bystander'}, timeout=20)
    listed = env.watcher.managed_objects()
    assert all(d in listed for d in disks) and other in listed
    # closing the connections closes their Disks
    a.rpc('close_kept')
    for d in disks:
        env.watcher.wait_removed(d, since=mark, timeout=30)
    assert other in env.watcher.managed_objects()
    # their entries are gone: the uid may connect again
    again = create_disk_on_new_connection(a, 'again')
    assert again in env.watcher.managed_objects()
    a.rpc('close_kept')
    env.watcher.wait_removed(again, since=mark, timeout=30)
    b.disk(other, 'Close', 'a{sv}', {}, timeout=20)
    a.close()
    b.close()
