/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The peer table: every client connection (unique bus name) that made a call
 * vdiskd authorizes, with its uid once the bus told it, and the Disks it
 * created. One match rule watches them all: NameOwnerChanged from the bus
 * driver with an empty new owner (arg2 = ''), installed once at start, so that
 * no number of clients costs vdiskd more than that one match (the bus refuses
 * matches past max_match_rules_per_connection, and vdiskd would lose its
 * connection).
 *
 * The race of a peer leaving before it is in the table: an entry is made when
 * the peer's call is dispatched, before its uid is asked from the bus
 * (GetConnectionUnixUser). The bus answers that question after it has handled
 * whatever happened earlier: a peer that left before gets an error (and its
 * entry goes), one that leaves afterwards is announced by NameOwnerChanged
 * after the answer, and finds its entry. Unique names are never reused, so the
 * uid cached in an entry stays valid until the name goes.
 *
 * The table is bounded: --max-peers entries in all, --max-peers-per-user per
 * uid. A call from a connection that would need an entry beyond either is
 * refused with LimitsExceeded before anything else is done for it.
 */
#include <string.h>

#include "vdiskd.h"

#define PEER_BUCKETS 1024u

static unsigned name_hash(const char *s) {
        /* FNV-1a */
        uint32_t h = 2166136261u;

        for (; *s; s++) {
                h ^= (uint8_t) *s;
                h *= 16777619u;
        }
        return h % PEER_BUCKETS;
}

Peer *peer_find(Manager *m, const char *name) {
        if (!m->peer_buckets || !name)
                return NULL;
        for (Peer *p = m->peer_buckets[name_hash(name)]; p; p = p->hash_next)
                if (streq(p->name, name))
                        return p;
        return NULL;
}

int peer_get(Manager *m, const char *name, Peer **ret) {
        Peer *p;
        unsigned h;

        if (!m->peer_buckets)
                return -ENOMEDIUM;   /* no bus driver (direct connection) */
        p = peer_find(m, name);
        if (p) {
                *ret = p;
                return 0;
        }
        if (m->n_peers >= m->max_peers)
                return -E2BIG;
        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->manager = m;
        p->uid = UID_UNKNOWN;
        p->name = strdup(name);
        if (!p->name) {
                free(p);
                return -ENOMEM;
        }
        h = name_hash(name);
        p->hash_next = m->peer_buckets[h];
        m->peer_buckets[h] = p;
        LIST_PREPEND(peers, m->peers, p);
        m->n_peers++;
        *ret = p;
        return 0;
}

int peer_set_uid(Peer *p, uid_t uid) {
        Manager *m = p->manager;
        User *u;

        if (p->uid != UID_UNKNOWN)
                return p->uid == uid ? 0 : -EINVAL;
        u = user_get(m, uid);
        if (!u)
                return -ENOMEM;
        if (u->n_peers >= m->max_peers_per_user) {
                user_unref(u);
                return -E2BIG;
        }
        u->n_peers++;
        p->user = u;
        p->uid = uid;
        return 0;
}

Peer *peer_free(Peer *p) {
        Manager *m;
        Peer **pp;

        if (!p)
                return NULL;
        m = p->manager;
        assert(!p->disks);
        for (pp = &m->peer_buckets[name_hash(p->name)]; *pp; pp = &(*pp)->hash_next)
                if (*pp == p) {
                        *pp = p->hash_next;
                        break;
                }
        LIST_REMOVE(peers, m->peers, p);
        m->n_peers--;
        if (p->user) {
                assert(p->user->n_peers > 0);
                p->user->n_peers--;
                user_unref(p->user);
        }
        free(p->name);
        free(p);
        return NULL;
}

/* The connection left the bus: its Disks close (once no operation runs on
 * them), its entry goes. */
void peer_gone(Peer *p) {
        while (p->disks) {
                Disk *d = p->disks;

                LIST_REMOVE(client_disks, p->disks, d);
                d->peer = NULL;
                d->creator_gone = true;
                /* Close once no operation runs (else disk_operation_finished() does). */
                disk_close_async(d);
        }
        peer_free(p);
}

/* A failed uid lookup: the name is gone (or the bus will not say who it is);
 * an entry that holds nothing goes. */
void peer_lookup_failed(Manager *m, const char *name) {
        Peer *p = peer_find(m, name);

        if (p && p->uid == UID_UNKNOWN && !p->disks)
                peer_free(p);
}

static int on_name_owner_changed(sd_bus_message *msg, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        const char *name, *old_owner, *new_owner;
        Peer *p;

        if (sd_bus_message_read(msg, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (name[0] != ':' || new_owner[0])
                return 0;
        p = peer_find(m, name);
        if (p)
                peer_gone(p);
        return 0;
}

int peers_start(Manager *m) {
        int r;

        if (sd_bus_is_bus_client(m->bus) <= 0)
                return 0;   /* a direct connection: the one peer lives as long as we do */
        m->peer_buckets = calloc(PEER_BUCKETS, sizeof *m->peer_buckets);
        if (!m->peer_buckets)
                return -ENOMEM;
        /* Synchronous: the bus has the rule before any call is served. */
        r = sd_bus_add_match(m->bus, &m->name_owner_slot,
                             "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                             "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg2=''",
                             on_name_owner_changed, m);
        if (r < 0) {
                log_error("Failed to watch the clients' connections: %s", strerror(-r));
                return r;
        }
        return 0;
}

void peers_free(Manager *m) {
        m->name_owner_slot = sd_bus_slot_unref(m->name_owner_slot);
        while (m->peers) {
                Peer *p = m->peers;

                /* Their Disks are gone already (manager_free). */
                while (p->disks) {
                        Disk *d = p->disks;

                        LIST_REMOVE(client_disks, p->disks, d);
                        d->peer = NULL;
                }
                peer_free(p);
        }
        m->peer_buckets = mfree_ptr(m->peer_buckets);
}
