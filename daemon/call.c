/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A method call in flight. Every method that does more than answer from
 * memory becomes a Call: its arguments are parsed and vetted in the handler,
 * then, without ever blocking the main loop:
 *
 *   1. the caller's uid is asked from the bus (GetConnectionUnixUser: the
 *      peer credentials the bus took at connect time; no /proc), and the
 *      per-uid limits are checked: calls in progress, descriptors held,
 *   2. polkit is asked, asynchronously, when the method's action or the
 *      object's owner requires it (auth.c),
 *   3. the target object is looked up again from the message path (it may
 *      have gone meanwhile → UnknownObject) and the method runs.
 *
 * The handler returns 1 at once; the reply is sent when the work is done.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

int call_new(Manager *m, sd_bus_message *msg, const MethodSpec *spec, Call **ret) {
        Call *c;

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->manager = m;
        c->message = sd_bus_message_ref(msg);
        c->spec = spec;
        c->fd = -1;
        LIST_PREPEND(calls, m->calls, c);
        m->n_calls++;
        manager_update_idle(m);
        *ret = c;
        return 0;
}

static void chain_free(ChainElement *chain, size_t n, Trash *t) {
        for (size_t i = 0; i < n; i++) {
                trash_fd(t, chain[i].fd);
                free(chain[i].format);
                free(chain[i].io_name);
                options_done(&chain[i].options, t);
        }
        free(chain);
}

/* The descriptors the call holds (our duplicates). */
static unsigned call_count_fds(Call *c) {
        unsigned n = (c->fd >= 0) + c->options.n_files + !!(c->options.set & OPT_DIRECT_FD);

        for (size_t i = 0; i < c->n_chain; i++)
                n += (c->chain[i].fd >= 0) + c->chain[i].options.n_files;
        return n;
}

Call *call_free(Call *c) {
        Trash trash = {};
        Manager *m;

        if (!c)
                return NULL;
        m = c->manager;
        assert(!task_pending(&c->task));   /* never freed while queued or running */
        LIST_REMOVE(calls, m->calls, c);
        m->n_calls--;
        sd_bus_slot_unref(c->slot);
        /* sd-bus closes its own copies of the message's fds here, on this
         * thread: unavoidable (docs/architecture.md, known limits). */
        sd_bus_message_unref(c->message);
        options_done(&c->options, &trash);
        trash_fd(&trash, c->fd);
        free(c->format);
        free(c->text);
        free(c->data);
        chain_free(c->chain, c->n_chain, &trash);
        for (size_t i = 0; i < ELEMENTSOF(c->uuids); i++)
                free(c->uuids[i]);
        for (size_t i = 0; i < ELEMENTSOF(c->image_paths); i++)
                free(c->image_paths[i]);
        disk_unref(c->disk);
        image_unref(c->image);
        outcome_clear(&c->outcome);
        disk_info_clear(&c->info);
        if (c->result_free)
                c->result_free(c->result);
        trash_vd(&trash, c->new_vd, c->n_chain);
        free(c->names);
        /* Our duplicates are closed on a worker, charged to the caller (or to
         * the unknown-uid share when the call failed before its uid was known). */
        trash_empty(m, c->user, &trash);
        if (c->user) {
                assert(c->user->n_calls > 0 && c->user->n_fds >= c->n_fds_charged);
                c->user->n_calls--;
                user_charge_fds(c->user, 0, c->n_fds_charged);
                if (c->disk_reserved) {
                        c->user->n_disks--;
                        m->n_disks_reserved--;
                }
                if (c->persist_reserved)
                        c->user->n_persistent--;
                user_unref(c->user);
        }
        free(c);
        manager_update_idle(m);
        return NULL;
}

/* Fails the call from the main thread: an EINVAL here is an argument the call
 * got wrong (checked before any work), InvalidArgs. */
void call_fail(Call *c, int r, const char *name, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        if (!name)
                name = r == -EINVAL ? SD_BUS_ERROR_INVALID_ARGS : errno_to_error_name(r);
        (void) reply_error(c->message, name, "%s", s ? s : strerror(-r));
        call_free(c);
}

void call_reply_outcome(Call *c) {
        (void) reply_outcome_error(c->message, &c->outcome);
        call_free(c);
}

void call_reply_empty(Call *c) {
        int r;

        r = sd_bus_reply_method_return(c->message, NULL);
        if (r < 0)
                log_error("Failed to send a reply: %s", strerror(-r));
        call_free(c);
}

/* Queues the blocking part of the call (on the disk's queue when d is set). */
int call_submit(Call *c, Disk *d, void (*run)(Task *t), void (*done)(Task *t, bool cancelled)) {
        User *unknown = NULL;
        int r;

        c->task.run = run;
        c->task.done = done;
        if (!c->user) {
                /* A direct connection's call always knows its uid; kept for safety. */
                unknown = user_get(c->manager, UID_UNKNOWN);
                if (!unknown)
                        return -ENOMEM;
        }
        r = task_submit(c->manager, &c->task, d, c->user ?: unknown);
        user_unref(unknown);
        return r;
}

/* The uid is known: count the call and its descriptors, within the limits. */
static bool call_account(Call *c, uid_t uid) {
        Manager *m = c->manager;
        unsigned n_fds = call_count_fds(c);
        User *u;

        c->uid = uid;
        u = user_get(m, uid);
        if (!u) {
                call_fail(c, -ENOMEM, NULL, "Out of memory");
                return false;
        }
        if (u->n_calls >= m->max_calls_per_user) {
                user_unref(u);
                call_fail(c, -E2BIG, NULL, "Too many calls in progress for user %u (at most %u at once)",
                          (unsigned) uid, m->max_calls_per_user);
                return false;
        }
        /* A call that brings no descriptor adds none: never refused here.
         * The uid may stand over the bound for a moment after an OpenDisk
         * (its copies are closed off the bus thread), and a Write sent right
         * after it must not depend on that moment. */
        if (n_fds > 0 && u->n_fds + n_fds > m->max_fds_per_user) {
                user_unref(u);
                call_fail(c, -E2BIG, NULL, "Too many file descriptors held for user %u (at most %u)",
                          (unsigned) uid, m->max_fds_per_user);
                return false;
        }
        /* Every image holds one: this also bounds the Images of all Disks. */
        if (n_fds > 0 && m->n_fds + n_fds > m->max_fds) {
                user_unref(u);
                call_fail(c, -E2BIG, NULL, "Too many file descriptors held (at most %u in all)", m->max_fds);
                return false;
        }
        u->n_calls++;
        user_charge_fds(u, n_fds, 0);
        c->n_fds_charged = n_fds;
        c->user = u;
        return true;
}

void *call_target(Call *c) {
        const char *path = sd_bus_message_get_path(c->message);

        switch (c->spec->target) {
        case OBJECT_MANAGER:
                return c->manager;
        case OBJECT_DISK: {
                Disk *d = manager_find_disk(c->manager, path);
                /* A closing Disk is still on the bus: readable, no more methods. */
                return d && (!d->closing || c->spec->read_access) ? d : NULL;
        }
        case OBJECT_IMAGE: {
                Image *i = manager_find_image(c->manager, path);
                return i && i->disk && (!i->disk->closing || c->spec->read_access) ? i : NULL;
        }
        case OBJECT_OPERATION:
                return manager_find_operation(c->manager, path);
        case OBJECT_FILE_SET:
                return manager_find_file_set(c->manager, path);
        }
        return NULL;
}

static bool uid_trusted(Manager *m, uid_t uid) {
        return uid == 0 || uid == m->own_uid;
}

/* Continues the call: runs the next authorization step or the method. */
static void call_continue(Call *c) {
        Manager *m = c->manager;
        void *target;
        uid_t owner;
        const char *format = NULL, *display_name = NULL, *new_format = NULL, *new_display_name = NULL;
        const char *other_action;
        int r;

        target = call_target(c);
        if (!target) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "Object '%s' does not exist (any more)",
                          sd_bus_message_get_path(c->message));
                return;
        }
        switch (c->spec->target) {
        case OBJECT_DISK: {
                Disk *d = target;
                owner = d->owner;
                display_name = d->display_name;
                if (d->n_images > 0)
                        format = d->images[d->n_images - 1]->info.backend->name;
                other_action = "org.vdisk.vdisk1.manage-other-user";
                break;
        }
        case OBJECT_IMAGE: {
                Image *i = target;
                owner = i->disk->owner;
                display_name = i->display_name;
                format = i->info.backend->name;
                other_action = "org.vdisk.vdisk1.manage-other-user";
                break;
        }
        case OBJECT_OPERATION: {
                Operation *o = target;
                owner = o->uid;
                other_action = "org.vdisk.vdisk1.cancel-other-user";
                break;
        }
        case OBJECT_FILE_SET: {
                FileSet *fs = target;
                owner = fs->owner;
                other_action = "org.vdisk.vdisk1.manage-other-user";
                break;
        }
        default:
                owner = c->uid;
                other_action = NULL;
                break;
        }
        /* Reading another uid's object (privacy.c) is managing it; the check
         * (and its dialog, shown to the caller) must not tell what the caller
         * is not yet allowed to read. */
        if (c->spec->read_access)
                other_action = "org.vdisk.vdisk1.manage-other-user";
        /* Nor may a method on another uid's object: polkit's agent shows the
         * details to the caller, who may not read the object's names (yet). */
        if (c->spec->read_access || (owner != c->uid && !uid_trusted(m, c->uid)))
                display_name = format = NULL;
        /* What the call asks for goes apart from what the object is: a caller
         * must not be able to word the details (and the dialog) of a check
         * about someone else's disk. */
        if (c->format && c->format[0])   /* the format of the file the method was given */
                new_format = c->format;
        if (c->options.display_name && c->options.display_name[0])
                new_display_name = c->options.display_name;
        /* A Manager method has no object yet: what it acts on is the Disk it
         * creates, named by the call. */
        if (c->spec->target == OBJECT_MANAGER)
                display_name = new_display_name;

        if (m->session) {
                if (!uid_trusted(m, c->uid)) {
                        call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED,
                                  "Access denied: this session instance of vdiskd serves only its own user");
                        return;
                }
                c->auth_step = 2;
        } else if (uid_trusted(m, c->uid))
                c->auth_step = 2;

        for (; c->auth_step < 2; c->auth_step++) {
                const char *action = c->auth_step == 0 ? c->spec->action : (owner != c->uid ? other_action : NULL);

                if (!action)
                        continue;
                r = auth_check(c, action, owner, format, display_name, new_format, new_display_name);
                if (r < 0) {
                        call_fail(c, r, SD_BUS_ERROR_ACCESS_DENIED, "Authorization check failed: %s", strerror(-r));
                        return;
                }
                return;   /* resumes from auth_reply() */
        }

        r = c->spec->run(c);
        if (r < 0)
                call_fail(c, r, NULL, "%s", strerror(-r));
}

void call_rerun(Call *c) {
        int r;

        r = c->spec->run(c);
        if (r < 0)
                call_fail(c, r, NULL, "%s", strerror(-r));
}

void call_auth_granted(Call *c) {
        c->auth_step++;
        call_continue(c);
}

static int on_unix_user(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Call *c = userdata;
        const char *sender = sd_bus_message_get_sender(c->message);
        Peer *p;
        uint32_t uid;
        int r;

        c->slot = sd_bus_slot_unref(c->slot);
        if (sd_bus_message_is_method_error(reply, NULL)) {
                peer_lookup_failed(c->manager, sender);
                call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Cannot determine the caller's user: %s",
                          sd_bus_message_get_error(reply)->message ?: "unknown error");
                return 0;
        }
        r = sd_bus_message_read(reply, "u", &uid);
        if (r < 0) {
                peer_lookup_failed(c->manager, sender);
                call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Cannot determine the caller's user");
                return 0;
        }
        /* Cached for the connection's next calls. No entry: the connection
         * left meanwhile, or another of its calls found it over the limit. */
        p = peer_find(c->manager, sender);
        if (p && p->uid == UID_UNKNOWN) {
                r = peer_set_uid(p, (uid_t) uid);
                if (r < 0) {
                        if (!p->disks)
                                peer_free(p);
                        p = NULL;
                }
        }
        if (!p) {
                call_fail(c, -E2BIG, NULL, "Too many client connections of user %u (at most %u)",
                          (unsigned) uid, c->manager->max_peers_per_user);
                return 0;
        }
        if (call_account(c, (uid_t) uid))
                call_continue(c);
        return 0;
}

int call_dispatch(Call *c) {
        const char *sender = sd_bus_message_get_sender(c->message);
        Peer *p = NULL;
        unsigned n_fds = call_count_fds(c);
        int r;

        /* Our own per-message bound, below the bus's (a message the bus
         * refuses never reaches us: the bus disconnects its sender). */
        if (n_fds > c->manager->max_fds_per_call) {
                call_fail(c, -E2BIG, NULL, "Too many file descriptors in one call (%u, at most %u): "
                          "pass the files in several calls, e.g. through a FileSet", n_fds,
                          c->manager->max_fds_per_call);
                return 1;
        }

        /* Bounds what all callers together hold, before even the uid is
         * known (this call is counted in n_calls already). */
        if (c->manager->n_calls > c->manager->max_calls) {
                call_fail(c, -E2BIG, NULL, "Too many calls in progress (at most %u at once)",
                          c->manager->max_calls);
                return 1;
        }
        if (!sender) {
                /* A direct (peer-to-peer) connection: the peer is whoever
                 * connected; no bus driver to ask. */
                sd_bus_creds *creds = NULL;
                uid_t uid;

                r = sd_bus_get_owner_creds(c->manager->bus, SD_BUS_CREDS_EUID, &creds);
                if (r >= 0)
                        r = sd_bus_creds_get_euid(creds, &uid);
                sd_bus_creds_unref(creds);
                if (r < 0) {
                        call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Cannot determine the caller's user");
                        return 1;
                }
                if (call_account(c, uid))
                        call_continue(c);
                return 1;
        }
        /* The connection's entry in the peer table, made before its uid is
         * asked from the bus (peers.c explains the order). */
        r = peer_get(c->manager, sender, &p);
        if (r == -E2BIG) {
                call_fail(c, r, NULL, "Too many client connections (at most %u)", c->manager->max_peers);
                return 1;
        }
        if (r < 0 && r != -ENOMEDIUM) {
                call_fail(c, r, NULL, "%s", strerror(-r));
                return 1;
        }
        if (r >= 0 && p->uid != UID_UNKNOWN) {
                if (call_account(c, p->uid))
                        call_continue(c);
                return 1;
        }
        r = sd_bus_call_method_async(c->manager->bus, &c->slot, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus", "GetConnectionUnixUser", on_unix_user, c, "s", sender);
        if (r < 0) {
                call_fail(c, r, SD_BUS_ERROR_ACCESS_DENIED, "Cannot determine the caller's user: %s", strerror(-r));
                return 1;
        }
        return 1;
}
