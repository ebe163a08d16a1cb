/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Privacy: a Disk, Image, Operation or FileSet is readable only by its owner, root,
 * the daemon's own uid, and callers polkit authorizes for
 * org.vdisk.vdisk1.manage-other-user (docs/dbus-api.md "Privacy").
 *
 * Reads: sd-bus answers Properties.Get/GetAll and ObjectManager's
 * GetManagedObjects itself, the same for every caller. A bus filter sees every
 * incoming message before that dispatch: it takes those calls on our objects
 * over and runs them as Calls (call.c: the caller's uid, per-uid limits,
 * polkit). An allowed Get/GetAll, and the GetManagedObjects of a caller who
 * may see everything, go back on sd-bus's read queue
 * (sd_bus_enqueue_for_read), marked as passed, for sd-bus to answer as usual;
 * a refused one gets AccessDenied. Another caller's GetManagedObjects is
 * answered here, listing only its own objects, built by walking our
 * sd_bus_vtable arrays (each property's getter appends its value).
 *
 * Signals: InterfacesAdded/Removed, PropertiesChanged and Completed about an
 * object are sent as unicast signals, one per connection in the peer table
 * (peers.c) that may see the object, built with the same vtable walk. A
 * connection is in the table once it made a call vdiskd authorizes (an
 * ObjectManager client's GetManagedObjects, or any method), so a client must
 * make one call before it receives signals. The fan-out is bounded by the
 * table (--max-peers).
 */
#include <string.h>

#include "vdiskd.h"

#define IFACE_PROPERTIES "org.freedesktop.DBus.Properties"
#define IFACE_OBJECT_MANAGER "org.freedesktop.DBus.ObjectManager"

static const char *const standard_interfaces[] = {
        "org.freedesktop.DBus.Peer",
        "org.freedesktop.DBus.Introspectable",
        IFACE_PROPERTIES,
};

/* ---------------------------------------------------------------- objects */

typedef struct ObjectDesc {
        const char *path, *interface;
        const sd_bus_vtable *vtable;
        void *userdata;
        uid_t owner;
} ObjectDesc;

static void object_desc(ObjectType type, void *object, ObjectDesc *ret) {
        switch (type) {
        case OBJECT_DISK: {
                Disk *d = object;
                *ret = (ObjectDesc) { d->path, IFACE_DISK, disk_vtable, d, d->owner };
                return;
        }
        case OBJECT_IMAGE: {
                Image *i = object;
                *ret = (ObjectDesc) { i->path, IFACE_IMAGE, image_vtable, i, i->disk ? i->disk->owner : UID_UNKNOWN };
                return;
        }
        case OBJECT_OPERATION: {
                Operation *o = object;
                *ret = (ObjectDesc) { o->path, IFACE_OPERATION, operation_vtable, o, o->uid };
                return;
        }
        case OBJECT_FILE_SET: {
                FileSet *fs = object;
                *ret = (ObjectDesc) { fs->path, IFACE_FILE_SET, file_set_vtable, fs, fs->owner };
                return;
        }
        default:
                assert(!"no such object type");
        }
}

static bool uid_sees_all(Manager *m, uid_t uid) {
        return uid == 0 || uid == m->own_uid;
}

static bool peer_sees(Manager *m, const Peer *p, uid_t owner) {
        if (p->uid == UID_UNKNOWN)
                return false;
        return p->uid == owner || uid_sees_all(m, p->uid) || p->sees_others;
}

static bool is_property(const sd_bus_vtable *v) {
        return (v->type == _SD_BUS_VTABLE_PROPERTY || v->type == _SD_BUS_VTABLE_WRITABLE_PROPERTY) &&
               !(v->flags & SD_BUS_VTABLE_HIDDEN);
}

/* Appends {sv} for one property: its getter's value, or the field at its
 * offset (properties without a getter are single basic types). */
static int append_property(Manager *m, sd_bus_message *msg, const ObjectDesc *o, const sd_bus_vtable *v) {
        const char *sig = v->x.property.signature;
        void *p = (uint8_t *) o->userdata + v->x.property.offset;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_message_open_container(msg, 'e', "sv");
        if (r < 0)
                return r;
        r = sd_bus_message_append(msg, "s", v->x.property.member);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(msg, 'v', sig);
        if (r < 0)
                return r;
        if (v->x.property.get) {
                r = v->x.property.get(m->bus, o->path, o->interface, v->x.property.member, msg, p, &error);
                sd_bus_error_free(&error);
        } else if (strlen(sig) != 1)
                r = -EINVAL;
        else if (strchr("sog", sig[0]))
                r = sd_bus_message_append_basic(msg, sig[0], *(const char **) p);
        else
                r = sd_bus_message_append_basic(msg, sig[0], p);
        if (r < 0)
                return r;
        r = sd_bus_message_close_container(msg);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(msg);
}

/* a{sa{sv}}: the standard interfaces (no properties), then ours with every
 * property GetAll would give. */
static int append_interfaces(Manager *m, sd_bus_message *msg, const ObjectDesc *o) {
        int r;

        r = sd_bus_message_open_container(msg, 'a', "{sa{sv}}");
        if (r < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(standard_interfaces); i++) {
                r = sd_bus_message_append(msg, "{sa{sv}}", standard_interfaces[i], 0);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_open_container(msg, 'e', "sa{sv}");
        if (r >= 0)
                r = sd_bus_message_append(msg, "s", o->interface);
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'a', "{sv}");
        if (r < 0)
                return r;
        for (const sd_bus_vtable *v = o->vtable; v->type != _SD_BUS_VTABLE_END; v++) {
                if (!is_property(v) || (v->flags & SD_BUS_VTABLE_PROPERTY_EXPLICIT))
                        continue;
                r = append_property(m, msg, o, v);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(msg);
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        return r;
}

/* ---------------------------------------------------------------- signals */

typedef int (*build_t)(Manager *m, sd_bus_message *msg, const ObjectDesc *o, const void *arg);

/* Sends the signal to every connection that may see the object (or, on a
 * direct connection, to the one peer). */
static void emit(Manager *m, const ObjectDesc *o, const char *path, const char *interface, const char *member,
                 build_t build, const void *arg) {
        int r = 0, failed = 0;

        if (!m->peer_buckets) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *msg = NULL;

                r = sd_bus_message_new_signal(m->bus, &msg, path, interface, member);
                if (r >= 0)
                        r = build(m, msg, o, arg);
                if (r >= 0)
                        r = sd_bus_send(m->bus, msg, NULL);
        } else
                for (Peer *p = m->peers; p; p = p->peers_next) {
                        _cleanup_(sd_bus_message_unrefp) sd_bus_message *msg = NULL;

                        if (!peer_sees(m, p, o->owner))
                                continue;
                        r = sd_bus_message_new_signal(m->bus, &msg, path, interface, member);
                        if (r >= 0)
                                r = sd_bus_message_set_destination(msg, p->name);
                        if (r >= 0)
                                r = build(m, msg, o, arg);
                        if (r >= 0)
                                r = sd_bus_send(m->bus, msg, NULL);
                        if (r < 0)   /* the others still get theirs */
                                failed = r;
                }
        if (r >= 0)
                r = failed;
        if (r < 0 && r != -ENOTCONN)   /* (the bus is gone at exit: nobody to tell) */
                log_error("Failed to emit %s for %s: %s", member, o->path, strerror(-r));
}

static int build_added(Manager *m, sd_bus_message *msg, const ObjectDesc *o, const void *arg) {
        int r = sd_bus_message_append(msg, "o", o->path);

        return r < 0 ? r : append_interfaces(m, msg, o);
}

static int build_removed(Manager *m, sd_bus_message *msg, const ObjectDesc *o, const void *arg) {
        int r;

        r = sd_bus_message_append(msg, "o", o->path);
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'a', "s");
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(standard_interfaces); i++)
                r = sd_bus_message_append(msg, "s", standard_interfaces[i]);
        if (r >= 0)
                r = sd_bus_message_append(msg, "s", o->interface);
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        return r;
}

static const sd_bus_vtable *find_property(const sd_bus_vtable *vt, const char *name) {
        for (const sd_bus_vtable *v = vt; v->type != _SD_BUS_VTABLE_END; v++)
                if (is_property(v) && streq(v->x.property.member, name))
                        return v;
        return NULL;
}

static int build_changed(Manager *m, sd_bus_message *msg, const ObjectDesc *o, const void *arg) {
        const char *const *names = arg;
        int r;

        r = sd_bus_message_append(msg, "s", o->interface);
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'a', "{sv}");
        for (size_t i = 0; r >= 0 && names[i]; i++) {
                const sd_bus_vtable *v = find_property(o->vtable, names[i]);

                if (!v)
                        return -ENOENT;
                if (!(v->flags & SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION))
                        r = append_property(m, msg, o, v);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'a', "s");
        for (size_t i = 0; r >= 0 && names[i]; i++) {
                const sd_bus_vtable *v = find_property(o->vtable, names[i]);

                if (v->flags & SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION)
                        r = sd_bus_message_append(msg, "s", names[i]);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        return r;
}

static int build_completed(Manager *m, sd_bus_message *msg, const ObjectDesc *o, const void *arg) {
        const Operation *op = o->userdata;

        return sd_bus_message_append(msg, "sss", op_state_to_string(op->state), op->error_name ?: "",
                                     op->error_message ?: "");
}

void emit_object_added(Manager *m, ObjectType type, void *object) {
        ObjectDesc o;

        object_desc(type, object, &o);
        emit(m, &o, ROOT_PATH, IFACE_OBJECT_MANAGER, "InterfacesAdded", build_added, NULL);
}

void emit_object_removed(Manager *m, ObjectType type, void *object) {
        ObjectDesc o;

        object_desc(type, object, &o);
        emit(m, &o, ROOT_PATH, IFACE_OBJECT_MANAGER, "InterfacesRemoved", build_removed, NULL);
}

void emit_properties_changed(Manager *m, ObjectType type, void *object, const char *const *names) {
        ObjectDesc o;

        if (!names || !names[0])
                return;
        object_desc(type, object, &o);
        emit(m, &o, o.path, IFACE_PROPERTIES, "PropertiesChanged", build_changed, names);
}

void emit_completed(Operation *op) {
        ObjectDesc o;

        object_desc(OBJECT_OPERATION, op, &o);
        emit(op->manager, &o, o.path, IFACE_OPERATION, "Completed", build_completed, NULL);
}

/* ---------------------------------------------------------------- reads */

/* Messages that passed the check and went back on the read queue: the filter
 * lets them through once. */
static bool passed_take(Manager *m, sd_bus_message *msg) {
        for (size_t i = 0; i < m->n_passed; i++)
                if (m->passed[i] == msg) {
                        sd_bus_message_unref(msg);
                        m->passed[i] = m->passed[--m->n_passed];
                        return true;
                }
        return false;
}

static int call_pass(Call *c) {
        Manager *m = c->manager;
        sd_bus_message **p;
        int r;

        p = reallocarray(m->passed, m->n_passed + 1, sizeof *p);
        if (!p)
                return -ENOMEM;
        m->passed = p;
        r = sd_bus_enqueue_for_read(m->bus, c->message);
        if (r < 0)
                return r;
        m->passed[m->n_passed++] = sd_bus_message_ref(c->message);
        call_free(c);
        return 0;
}

static int append_object(Manager *m, sd_bus_message *reply, ObjectType type, void *object) {
        ObjectDesc o;
        int r;

        object_desc(type, object, &o);
        r = sd_bus_message_open_container(reply, 'e', "oa{sa{sv}}");
        if (r >= 0)
                r = sd_bus_message_append(reply, "o", o.path);
        if (r >= 0)
                r = append_interfaces(m, reply, &o);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

/* GetManagedObjects for a caller who sees only its own objects. */
static int reply_own_objects(Call *c) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = c->manager;
        int r;

        r = sd_bus_message_new_method_return(c->message, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{oa{sa{sv}}}");
        for (Disk *d = m->disks; r >= 0 && d; d = d->disks_next) {
                if (d->owner != c->uid || !d->exported || d->gone)
                        continue;
                r = append_object(m, reply, OBJECT_DISK, d);
                for (unsigned i = 0; r >= 0 && i < d->n_images; i++)
                        if (d->images[i]->exported)
                                r = append_object(m, reply, OBJECT_IMAGE, d->images[i]);
        }
        for (Operation *o = m->operations; r >= 0 && o; o = o->operations_next)
                if (o->uid == c->uid && o->exported)
                        r = append_object(m, reply, OBJECT_OPERATION, o);
        for (FileSet *fs = m->file_sets; r >= 0 && fs; fs = fs->file_sets_next)
                if (fs->owner == c->uid && fs->slot)
                        r = append_object(m, reply, OBJECT_FILE_SET, fs);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_send(m->bus, reply, NULL);
        if (r < 0)
                return r;
        call_free(c);
        return 0;
}

static int run_get_managed_objects(Call *c) {
        Manager *m = c->manager;
        Peer *p = peer_find(m, sd_bus_message_get_sender(c->message));
        int r;

        if (uid_sees_all(m, c->uid))
                return call_pass(c);
        if (c->auth_step > 2) {
                /* polkit authorized manage-other-user: everything, and the
                 * signals about everything from now on. */
                if (p)
                        p->sees_others = true;
                return call_pass(c);
        }
        if (!c->auth_refused && !m->session) {
                /* Never a dialog for a listing: a refusal lists the caller's own. */
                c->options.no_user_interaction = 1;
                c->auth_soft = true;
                r = auth_check(c, "org.vdisk.vdisk1.manage-other-user", c->uid, NULL, NULL, NULL, NULL);
                if (r >= 0)
                        return 0;   /* resumes from on_polkit_reply() */
                c->auth_soft = false;
        }
        if (p)
                p->sees_others = false;
        return reply_own_objects(c);
}

static const MethodSpec spec_get_managed_objects = {
        .operation = "list-objects",
        .target = OBJECT_MANAGER,
        .run = run_get_managed_objects,
};

/* Get/GetAll of one object: call_continue() checked manage-other-user when
 * the caller does not own it. */
static const MethodSpec spec_read[] = {
        [OBJECT_DISK] = { .operation = "read-properties", .target = OBJECT_DISK, .run = call_pass, .read_access = true },
        [OBJECT_IMAGE] = { .operation = "read-properties", .target = OBJECT_IMAGE, .run = call_pass, .read_access = true },
        [OBJECT_OPERATION] = { .operation = "read-properties", .target = OBJECT_OPERATION, .run = call_pass,
                               .read_access = true },
        [OBJECT_FILE_SET] = { .operation = "read-properties", .target = OBJECT_FILE_SET, .run = call_pass,
                              .read_access = true },
};

static int on_filter(sd_bus_message *msg, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        const char *path, *interface, *member;
        const MethodSpec *spec;
        uid_t owner = UID_UNKNOWN;
        Disk *d;
        Image *i;
        Operation *o;
        FileSet *fs;
        Peer *p;
        Call *c;
        int r;

        if (!sd_bus_message_is_method_call(msg, NULL, NULL) || !sd_bus_message_get_sender(msg))
                return 0;   /* direct connections: the one peer is trusted */
        path = sd_bus_message_get_path(msg);
        interface = sd_bus_message_get_interface(msg);
        member = sd_bus_message_get_member(msg);
        if (!path || !member)
                return 0;
        if (streq(member, "GetManagedObjects") && (!interface || streq(interface, IFACE_OBJECT_MANAGER)) &&
            streq(path, ROOT_PATH))
                spec = &spec_get_managed_objects;
        else if ((streq(member, "Get") || streq(member, "GetAll")) && (!interface || streq(interface, IFACE_PROPERTIES))) {
                if ((d = manager_find_disk(m, path))) {
                        spec = &spec_read[OBJECT_DISK];
                        owner = d->owner;
                } else if ((i = manager_find_image(m, path))) {
                        spec = &spec_read[OBJECT_IMAGE];
                        owner = i->disk ? i->disk->owner : UID_UNKNOWN;
                } else if ((o = manager_find_operation(m, path))) {
                        spec = &spec_read[OBJECT_OPERATION];
                        owner = o->uid;
                } else if ((fs = manager_find_file_set(m, path))) {
                        spec = &spec_read[OBJECT_FILE_SET];
                        owner = fs->owner;
                } else
                        return 0;   /* the Manager's (readable by all), or no such object */
        } else
                return 0;
        if (passed_take(m, msg))
                return 0;
        /* The common case, decided at once: a connection whose uid is known
         * reading its own object, or one that sees everything. Not counted
         * as a call. */
        p = peer_find(m, sd_bus_message_get_sender(msg));
        if (p && p->uid != UID_UNKNOWN &&
            (uid_sees_all(m, p->uid) || (spec != &spec_get_managed_objects && owner == p->uid)))
                return 0;
        r = call_new(m, msg, spec, &c);
        if (r < 0) {
                (void) reply_error(msg, SD_BUS_ERROR_NO_MEMORY, "Out of memory");
                return 1;
        }
        (void) call_dispatch(c);
        return 1;
}

int privacy_start(Manager *m) {
        return sd_bus_add_filter(m->bus, &m->privacy_filter_slot, on_filter, m);
}

void privacy_free(Manager *m) {
        m->privacy_filter_slot = sd_bus_slot_unref(m->privacy_filter_slot);
        for (size_t i = 0; i < m->n_passed; i++)
                sd_bus_message_unref(m->passed[i]);
        m->passed = mfree_ptr(m->passed);
        m->n_passed = 0;
}
