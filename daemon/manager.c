/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The Manager object (/org/vdisk/VDisk1): the object maps, idle exit, and the
 * Manager methods ProbeFormat, CreateDisk and OpenDisk.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "config.h"
#include "vdiskd.h"

int manager_new(Manager **ret) {
        Manager *m;

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->next_disk_id = m->next_image_id = m->next_operation_id = 1;
        m->own_uid = geteuid();
        *ret = m;
        return 0;
}

Disk *manager_find_disk(Manager *m, const char *path) {
        if (!path)
                return NULL;
        for (Disk *d = m->disks; d; d = d->disks_next)
                if (streq(d->path, path))
                        return d;
        return NULL;
}

Image *manager_find_image(Manager *m, const char *path) {
        if (!path)
                return NULL;
        for (Disk *d = m->disks; d; d = d->disks_next)
                for (unsigned i = 0; i < d->n_images; i++)
                        if (streq(d->images[i]->path, path))
                                return d->images[i];
        return NULL;
}

Operation *manager_find_operation(Manager *m, const char *path) {
        if (!path)
                return NULL;
        for (Operation *o = m->operations; o; o = o->operations_next)
                if (streq(o->path, path))
                        return o;
        return NULL;
}

/* Disks published plus those that calls and operations will publish. */
bool manager_disks_full(Manager *m) {
        return m->n_disks + m->n_disks_reserved >= m->max_disks;
}

unsigned manager_count_operations(Manager *m, bool per_uid, uid_t uid) {
        unsigned n = 0;

        for (Operation *o = m->operations; o; o = o->operations_next)
                if (IN_SET3(o->state, OP_QUEUED, OP_RUNNING, OP_CANCELLING) && (!per_uid || o->uid == uid))
                        n++;
        return n;
}

/* ---------------------------------------------------------------- idle exit */

static bool manager_is_idle(Manager *m) {
        return !m->disks && !m->operations && !m->calls && !m->file_sets && !task_any_waiting(m) &&
               (!m->pool || worker_pool_pending(m->pool) == 0);
}

static int on_name_reacquired(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        if (sd_bus_message_is_method_error(reply, NULL))
                log_error("Could not re-acquire the name %s after a call raced with idle exit: %s", BUS_NAME,
                          sd_bus_message_get_error(reply)->message ?: "unknown error");
        return 0;
}

static int on_exit_defer(sd_event_source *s, void *userdata) {
        Manager *m = userdata;

        m->exit_defer = sd_event_source_disable_unref(m->exit_defer);
        if (m->shutting_down)
                return 0;   /* a signal came meanwhile: manager_shutdown() leaves */
        if (manager_is_idle(m)) {
                sd_event_exit(m->event, 0);
                return 0;
        }
        /* A call reached us before the name was gone: serve it, and take the
         * name back. */
        m->exiting = false;
        (void) sd_bus_request_name_async(m->bus, NULL, BUS_NAME, 0, on_name_reacquired, m);
        (void) sd_notify(false, "READY=1");
        manager_update_idle(m);
        return 0;
}

static int on_name_released(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        int r;

        m->release_slot = sd_bus_slot_unref(m->release_slot);
        /* Everything sent to the name before the release is queued before this
         * reply: let the bus dispatch it first, then decide. */
        r = sd_event_add_defer(m->event, &m->exit_defer, on_exit_defer, m);
        if (r >= 0)
                r = sd_event_source_set_priority(m->exit_defer, SD_EVENT_PRIORITY_IDLE);
        if (r < 0)
                sd_event_exit(m->event, 0);
        return 0;
}

static int on_idle_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        int r;

        m->idle_timer = sd_event_source_disable_unref(m->idle_timer);
        if (!manager_is_idle(m) || m->exiting)
                return 0;
        m->exiting = true;
        (void) sd_notify(false, "STOPPING=1");
        r = sd_bus_release_name_async(m->bus, &m->release_slot, BUS_NAME, on_name_released, m);
        if (r < 0) {
                log_error("Failed to release the bus name: %s", strerror(-r));
                sd_event_exit(m->event, 0);
        }
        return 0;
}

void manager_update_idle(Manager *m) {
        int r;

        if (!m->event || m->idle_usec == 0 || m->exiting || m->shutting_down)
                return;
        if (!manager_is_idle(m)) {
                m->idle_timer = sd_event_source_disable_unref(m->idle_timer);
                return;
        }
        if (m->idle_timer)
                return;
        r = sd_event_add_time_relative(m->event, &m->idle_timer, CLOCK_MONOTONIC, m->idle_usec, 0,
                                       on_idle_timer, m);
        if (r < 0)
                log_error("Failed to arm the idle timer: %s", strerror(-r));
}

/* ---------------------------------------------------------------- properties */

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", VDISK_VERSION);
}

static int property_get_mode(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "s", m->session ? "session" : "system");
}

static int append_strv(sd_bus_message *reply, const char *const *v) {
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        for (; v && *v; v++) {
                r = sd_bus_message_append(reply, "s", *v);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static const struct {
        uint32_t bit;
        const char *name;
} cap_names[] = {
        { VDISK_CAP_UUID,            "uuid" },
        { VDISK_CAP_CREATE_FIXED,    "create-fixed" },
        { VDISK_CAP_CREATE_DYNAMIC,  "create-dynamic" },
        { VDISK_CAP_CREATE_SPLIT_2G, "create-split-2g" },
        { VDISK_CAP_DIFF,            "diff" },
        { VDISK_CAP_FILE,            "file" },
        { VDISK_CAP_DISCARD,         "discard" },
        { VDISK_CAP_PREFERRED,       "preferred" },
        { VDISK_CAP_COMPACT,         "compact" },
        { VDISK_CAP_RESIZE,          "resize" },
        { VDISK_CAP_CHECK,           "check" },
        { VDISK_CAP_REPAIR,          "repair" },
};

/* The "-o" keys a caller may pass in format-options: the backend's typed
 * options less the ones that are arguments of their own. */
static void option_names(const vdisk_backend_info *b, const char **v, size_t max) {
        size_t n = 0;

        bool own_prealloc = false;

        for (const vdisk_option_desc *o = b->create_options; o && o->name && n + 1 < max; o++)
                if (!streq(o->name, "size") && !streq(o->name, "backing_file") && !streq(o->name, "backing_fmt")) {
                        own_prealloc = own_prealloc || streq(o->name, "preallocation");
                        v[n++] = o->name;
                }
        /* qemu's file layer options, which every writable format takes */
        if (n + 1 < max && vdisk_backend_option(b, "nocow"))
                v[n++] = "nocow";
        if (n + 1 < max && !own_prealloc && vdisk_backend_option(b, "preallocation"))
                v[n++] = "preallocation";
        v[n] = NULL;
}

static int append_backend(sd_bus_message *reply, const vdisk_backend_info *b) {
        const char *caps[ELEMENTSOF(cap_names) + 1] = {}, *media[4] = {}, *variants[4] = {}, *options[64];
        size_t n = 0;
        int r;

        option_names(b, options, ELEMENTSOF(options));
        for (size_t i = 0; i < ELEMENTSOF(cap_names); i++)
                if (b->caps & cap_names[i].bit)
                        caps[n++] = cap_names[i].name;
        n = 0;
        if (b->media & VDISK_MEDIA_HDD)
                media[n++] = "hdd";
        if (b->media & VDISK_MEDIA_OPTICAL)
                media[n++] = "dvd";
        if (b->media & VDISK_MEDIA_FLOPPY)
                media[n++] = "floppy";
        n = 0;
        if (b->caps & VDISK_CAP_CREATE_FIXED)
                variants[n++] = "fixed";
        if (b->caps & VDISK_CAP_CREATE_DYNAMIC)
                variants[n++] = "dynamic";
        if (b->caps & VDISK_CAP_DIFF)
                variants[n++] = "diff";

        r = sd_bus_message_open_container(reply, 'r', "sa{sv}");
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "s", b->name);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "{sv}", "qemu-name", "s", b->qemu_name);
        if (r < 0)
                return r;
        const struct {
                const char *key;
                const char *const *v;
        } lists[] = {
                { "capabilities", caps },
                { "extensions", b->extensions },
                { "media-types", media },
                { "variants", variants },
                { "create-options", options },
        };
        for (size_t i = 0; i < ELEMENTSOF(lists); i++) {
                r = bus_append_strv_entry(reply, lists[i].key, 's', lists[i].v);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(reply);
}

static int property_get_backends(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(sa{sv})");
        if (r < 0)
                return r;
        for (size_t i = 0; i < vdisk_backend_count(); i++) {
                r = append_backend(reply, vdisk_backend_get(i));
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_supported_operations(sd_bus *bus, const char *path, const char *interface,
                                             const char *property, sd_bus_message *reply, void *userdata,
                                             sd_bus_error *error) {
        const char *v[_OP_KIND_MAX + 1] = {};

        for (int k = 0; k < _OP_KIND_MAX; k++)
                v[k] = op_kind_to_string(k);
        return append_strv(reply, v);
}

/* ---------------------------------------------------------------- ProbeFormat */

typedef struct ProbeInfo {
        const vdisk_backend_info *backend;
        int guessed_raw;
        uint64_t size, file_size;
        char *variant, *parent_name, *parent_format;
        char uuid[37], parent_uuid[37];
        bool needs_parent;
        char **files;           /* companion file names (NULL-terminated), as the image records them */
} ProbeInfo;

static void probe_info_free(void *p) {
        ProbeInfo *pi = p;

        if (!pi)
                return;
        free(pi->variant);
        free(pi->parent_name);
        free(pi->parent_format);
        if (pi->files)
                vdisk_strv_free(pi->files);
        free(pi);
}

static void probe_run(Task *t) {
        Call *c = container_of(t, Call, task);
        vdisk_io *io = NULL;
        vdisk_disk *scratch = NULL;
        const vdisk_backend_info *be;
        vdisk_image_info ii = { .size = sizeof(ii) };
        ProbeInfo *pi;
        vdisk_image *img;
        struct stat st;
        const char *pname = NULL, *pformat = NULL;
        uint8_t u[16];
        int guessed = 0, r;

        vdisk_clear_error();
        pi = calloc(1, sizeof *pi);
        if (!pi) {
                outcome_set(&c->outcome, -ENOMEM);
                return;
        }
        /* The checks the handler could not make without asking the file system. */
        r = fd_vet(c->fd, 0, "fd", &st, &c->outcome);
        if (r < 0)
                goto finish;
        pi->file_size = (uint64_t) st.st_size;
        r = io_from_fd(TAKE_FD(c->fd), VDISK_IO_READONLY, "the file", &io);
        if (r >= 0)
                r = vdisk_probe(io, NULL, 1, &be, &guessed);
        if (r >= 0)
                r = vdisk_disk_new(&scratch);
        if (r >= 0)
                /* Companion files (VMDK extents) are not opened, only named:
                 * the client opens them with its own rights and passes them. */
                r = vdisk_disk_open(scratch, io, be->name,
                                    VDISK_OPEN_READONLY | VDISK_OPEN_INFO | VDISK_OPEN_LIST_FILES |
                                            VDISK_OPEN_SKIP_CHECKS);
        if (r < 0) {
                outcome_set(&c->outcome, r);
                goto finish;
        }
        img = vdisk_disk_image(scratch, 0);
        pi->backend = be;
        pi->guessed_raw = !!guessed;
        pi->size = vdisk_image_size(img);
        if (vdisk_image_get_info(img, &ii) >= 0 && ii.variant)
                pi->variant = strdup(ii.variant);
        if (vdisk_image_get_uuid(img, u) >= 0 && !vdisk_uuid_is_null(u))
                vdisk_uuid_format(u, pi->uuid);
        if (vdisk_image_get_parent_uuid(img, u) >= 0 && !vdisk_uuid_is_null(u)) {
                vdisk_uuid_format(u, pi->parent_uuid);
                pi->needs_parent = true;
        }
        if (vdisk_image_get_parent_name(img, &pname, &pformat) >= 0) {
                if (pname && pname[0]) {
                        pi->parent_name = strdup(pname);
                        pi->needs_parent = true;
                }
                if (pformat)
                        pi->parent_format = strdup(pformat);
        }
        if (!pi->parent_format && pi->needs_parent)
                pi->parent_format = strdup(be->name);
        pi->files = calloc(vdisk_image_file_count(img) + 1, sizeof(char *));
        if (!pi->files) {
                outcome_set(&c->outcome, -ENOMEM);
                goto finish;
        }
        for (size_t i = 0; i < vdisk_image_file_count(img); i++) {
                pi->files[i] = strdup(vdisk_image_file_name(img, i));
                if (!pi->files[i]) {
                        outcome_set(&c->outcome, -ENOMEM);
                        goto finish;
                }
        }
        c->result = TAKE_PTR(pi);
        c->result_free = probe_info_free;
        outcome_set(&c->outcome, 0);
finish:
        probe_info_free(pi);
        vdisk_disk_unref(scratch);
        vdisk_io_unref(io);
}

static void probe_done(Task *t, bool cancelled) {
        Call *c = container_of(t, Call, task);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        ProbeInfo *pi = c->result;
        int r;

        if (cancelled) {
                call_fail(c, -ESHUTDOWN, NULL, "vdiskd is stopping");
                return;
        }
        if (c->outcome.r < 0 || !pi) {
                call_reply_outcome(c);
                return;
        }
        r = sd_bus_message_new_method_return(c->message, &reply);
        if (r >= 0)
                r = sd_bus_message_append(reply, "ss", pi->backend->name, media_type_name(pi->backend->media));
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_append(reply, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}",
                                          "qemu-name", "s", pi->backend->qemu_name,
                                          "size", "t", pi->size,
                                          "file-size", "t", pi->file_size,
                                          "variant", "s", pi->variant ?: "",
                                          "uuid", "s", pi->uuid,
                                          "parent-uuid", "s", pi->parent_uuid,
                                          "parent-name", "s", pi->parent_name ?: "",
                                          "parent-format", "s", pi->parent_format ?: "",
                                          "needs-parent", "b", (int) pi->needs_parent,
                                          "guessed-raw", "b", pi->guessed_raw);
        if (r >= 0)
                r = bus_append_strv_entry(reply, "files", 's', (const char *const *) pi->files);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                log_error("Failed to reply to ProbeFormat: %s", strerror(-r));
        call_free(c);
}

static int probe_start(Call *c) {
        return call_submit(c, NULL, probe_run, probe_done);
}

static const MethodSpec spec_probe = { "probe-format", "org.vdisk.vdisk1.open", OBJECT_MANAGER, probe_start };

static int method_probe_format(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int fd, r;

        r = call_new(m, msg, &spec_probe, &c);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "h", &fd);
        if (r < 0)
                return fd_read_failed(r, error);
        r = fd_accept(fd, 0, "fd", &c->fd, &c->fd_writable, error);
        if (r < 0)
                return r;
        r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

/* ---------------------------------------------------------------- CreateDisk */

static void unreserve_disk(Call *c);

/* A new Disk object for a container: exported with its images, complete,
 * before the caller's reply (InterfacesAdded carries the final properties);
 * the caller's connection is tracked unless the Disk is `persist`. */
static int manager_publish_disk(Call *c, vdisk_disk *vd, const DiskInfo *info, NewImageName *names,
                                size_t n_names, Disk **ret) {
        Manager *m = c->manager;
        bool persist = c->persist_reserved;
        Disk *d;
        int r;

        unreserve_disk(c);
        r = disk_new(m, m->next_disk_id++, c->uid, c->options.display_name, vd, &d);
        if (r < 0)
                return r;
        if (persist)
                disk_set_persistent(d);
        if (info)
                disk_apply_info(d, info, names, n_names);
        r = disk_export(d);
        if (r >= 0 && !persist)
                r = disk_track_name(d, sd_bus_message_get_sender(c->message));
        if (r < 0) {
                d->vd = NULL;   /* the caller still owns vd on failure */
                disk_remove(d);
                return r;
        }
        *ret = d;
        return 0;
}

/* A call that will publish a Disk: counted against the caller's limit from
 * now on (call_free() releases an unused reservation). */
static bool reserve_disk(Call *c) {
        Manager *m = c->manager;

        if (c->user->n_disks >= m->max_disks_per_user) {
                call_fail(c, -E2BIG, NULL, "Too many disks for user %u (at most %u)", (unsigned) c->uid,
                          m->max_disks_per_user);
                return false;
        }
        if (manager_disks_full(m)) {
                call_fail(c, -E2BIG, NULL, "Too many disks (at most %u in all)", m->max_disks);
                return false;
        }
        if (c->options.persist && c->user->n_persistent >= m->max_persistent_disks_per_user) {
                call_fail(c, -E2BIG, NULL, "Too many persistent disks for user %u (at most %u)", (unsigned) c->uid,
                          m->max_persistent_disks_per_user);
                return false;
        }
        c->user->n_disks++;
        m->n_disks_reserved++;
        c->disk_reserved = true;
        if (c->options.persist) {
                c->user->n_persistent++;
                c->persist_reserved = true;
        }
        return true;
}

static void unreserve_disk(Call *c) {
        if (!c->disk_reserved)
                return;
        c->disk_reserved = false;
        c->user->n_disks--;
        c->manager->n_disks_reserved--;
        if (c->persist_reserved) {
                assert(c->user->n_persistent > 0);
                c->persist_reserved = false;
                c->user->n_persistent--;
        }
}

static int create_disk_run(Call *c) {
        vdisk_disk *vd = NULL;
        Disk *d;
        int r;

        if (!reserve_disk(c))
                return 0;
        r = vdisk_disk_new(&vd);
        if (r < 0)
                return r;
        r = manager_publish_disk(c, vd, NULL, NULL, 0, &d);
        if (r < 0) {
                vdisk_disk_unref(vd);   /* empty: no file behind it, nothing to flush */
                return r;
        }
        r = sd_bus_reply_method_return(c->message, "o", d->path);
        if (r < 0)
                log_error("Failed to reply to CreateDisk: %s", strerror(-r));
        call_free(c);
        return 0;
}

static const MethodSpec spec_create_disk = { "create-disk", "org.vdisk.vdisk1.open", OBJECT_MANAGER,
                                             create_disk_run };

static int method_create_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(m, msg, &spec_create_disk, &c);
        if (r < 0)
                return r;
        r = options_parse(msg, OPT_DISPLAY_NAME | OPT_PERSIST, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

/* ---------------------------------------------------------------- OpenDisk */

static void open_disk_run(Task *t) {
        Call *c = container_of(t, Call, task);
        FilesResolver *fr = NULL;
        vdisk_resolver *res = NULL;
        vdisk_disk *d = NULL;
        int r;

        vdisk_clear_error();
        /* The checks the handler could not make without asking the file system. */
        for (size_t i = 0; i < c->n_chain; i++) {
                ChainElement *e = &c->chain[i];
                char what[64];

                snprintf(what, sizeof what, "chain element %zu", i);
                r = fd_vet(e->fd, 0, e->options.display_name && e->options.display_name[0] ?
                                             e->options.display_name : what, NULL, &c->outcome);
                if (r < 0)
                        return;
        }
        r = files_vet(c->options.files, c->options.n_files, &c->outcome);
        if (r < 0)
                return;
        r = vdisk_disk_new(&d);
        if (r >= 0)
                r = files_resolver_new(c->options.files, c->options.n_files, &fr, &res);
        for (size_t i = 0; r >= 0 && i < c->n_chain; i++) {
                ChainElement *e = &c->chain[i];
                bool ro = c->options.read_only || e->options.read_only || !e->writable;
                bool top = i + 1 == c->n_chain;
                uint32_t flags = 0;
                vdisk_io *io = NULL;

                /* Only the top opens writable. An element below it whose fd
                 * is O_RDWR opens read-only too; the disk's resolver keeps
                 * that fd and reopens the image writable when an operation
                 * (Merge, Compact, Repair) writes into it. */
                if (c->options.read_only)
                        flags |= VDISK_OPEN_READONLY;
                if (c->options.skip_checks)
                        flags |= VDISK_OPEN_SKIP_CHECKS;
                if (i == 0 && ro && !e->format[0])
                        flags |= VDISK_OPEN_ALLOW_PROBE_RAW;
                if (!top && !ro) {
                        struct stat st;

                        if (fstat(e->fd, &st) < 0)
                                r = -errno;
                        else
                                r = files_resolver_add_writable(fr, e->fd, st.st_dev, st.st_ino);
                        if (r < 0)
                                break;
                }
                r = io_from_fd(TAKE_FD(e->fd), (!ro && top) ? 0 : VDISK_IO_READONLY, e->io_name, &io);
                if (r < 0)
                        break;
                if (i == 0)
                        r = vdisk_disk_open_chain(d, res, io, e->format[0] ? e->format : NULL, flags);
                else
                        r = vdisk_disk_open(d, io, e->format, flags & ~VDISK_OPEN_ALLOW_PROBE_RAW);
                vdisk_io_unref(io);
        }
        files_resolver_done_opening(fr);
        if (r >= 0)
                r = disk_info_read(d, &c->info);
        if (r >= 0)
                r = disk_info_read_snapshots(d, &c->info);
        c->info.have_resolver_fds = true;
        c->info.n_resolver_fds = files_resolver_n_writable(fr);
        if (r < 0) {
                outcome_set(&c->outcome, r);
                vdisk_disk_unref(d);   /* on the worker: closing may write, and close() may block */
        } else {
                outcome_set(&c->outcome, 0);
                c->new_vd = d;
                c->new_fr = fr;
        }
        vdisk_resolver_unref(res);
}

static void open_disk_done(Task *t, bool cancelled) {
        Call *c = container_of(t, Call, task);
        Disk *d;
        int r;

        if (cancelled) {
                call_fail(c, -ESHUTDOWN, NULL, "vdiskd is stopping");
                return;
        }
        if (c->outcome.r < 0) {
                call_reply_outcome(c);
                return;
        }
        r = manager_publish_disk(c, c->new_vd, &c->info, c->names, c->n_names, &d);
        if (r < 0) {
                call_fail(c, r, NULL, "Failed to publish the disk: %s", strerror(-r));
                return;
        }
        d->fr = c->new_fr;
        c->new_vd = NULL;
        c->new_fr = NULL;
        r = sd_bus_reply_method_return(c->message, "o", d->path);
        if (r < 0)
                log_error("Failed to reply to OpenDisk: %s", strerror(-r));
        call_free(c);
}

/* Reserves an image id and io name for each element. */
static int chain_names(Call *c) {
        Manager *m = c->manager;

        c->names = calloc(c->n_chain, sizeof(NewImageName));
        if (!c->names)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_chain; i++) {
                ChainElement *e = &c->chain[i];

                e->image_id = m->next_image_id++;
                if (e->options.display_name && e->options.display_name[0])
                        e->io_name = strdup(e->options.display_name);
                else if (asprintf(&e->io_name, "image %" PRIu64, e->image_id) < 0)
                        e->io_name = NULL;
                if (!e->io_name)
                        return -ENOMEM;
                c->names[i] = (NewImageName) {
                        .io_name = e->io_name,
                        .display_name = e->options.display_name ?: "",
                        .id = e->image_id,
                };
                c->n_names++;
        }
        return 0;
}

/* Option `file-set`: its files join the call's `files` (the set is consumed).
 * Returns 1 to go on, 0 when the call failed and is gone, or < 0. */
int call_take_file_set(Call *c) {
        FileSet *fs;
        int r;

        if (!c->options.file_set)
                return 1;
        fs = manager_find_file_set(c->manager, c->options.file_set);
        if (!fs) {
                call_fail(c, 0, SD_BUS_ERROR_INVALID_ARGS, "Option 'file-set': %s is no file set",
                          c->options.file_set);
                return 0;
        }
        if (fs->owner != c->uid) {
                call_fail(c, 0, SD_BUS_ERROR_ACCESS_DENIED, "Option 'file-set': %s belongs to another user",
                          c->options.file_set);
                return 0;
        }
        r = file_set_consume(c, fs);
        if (r == -EEXIST)
                return 0;
        return r < 0 ? r : 1;
}

static int open_disk_start(Call *c) {
        int r;

        if (!reserve_disk(c))
                return 0;
        r = call_take_file_set(c);
        if (r <= 0)
                return r;
        r = chain_names(c);
        if (r < 0)
                return r;
        return call_submit(c, NULL, open_disk_run, open_disk_done);
}

static const MethodSpec spec_create_file_set = { "create-file-set", "org.vdisk.vdisk1.open", OBJECT_MANAGER,
                                                 manager_create_file_set };

static int method_create_file_set(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(m, msg, &spec_create_file_set, &c);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static const MethodSpec spec_open_disk = { "open-disk", "org.vdisk.vdisk1.open", OBJECT_MANAGER, open_disk_start };

static int method_open_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(m, msg, &spec_open_disk, &c);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(msg, 'a', "(hsa{sv})");
        if (r < 0)
                return r;
        for (;;) {
                ChainElement *e, *nc;
                const char *format;
                char what[64];
                int fd;

                r = sd_bus_message_enter_container(msg, 'r', "hsa{sv}");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (c->n_chain >= VDISK_CHAIN_MAX)
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "A chain holds at most %d images",
                                         VDISK_CHAIN_MAX);
                nc = reallocarray(c->chain, c->n_chain + 1, sizeof(ChainElement));
                if (!nc)
                        return -ENOMEM;
                c->chain = nc;
                e = &c->chain[c->n_chain++];
                *e = (ChainElement) { .fd = -1 };
                r = sd_bus_message_read(msg, "hs", &fd, &format);
                if (r < 0)
                        return fd_read_failed(r, error);
                if (format[0]) {
                        /* Resolved now: the backend's one name, whatever the spelling. */
                        const vdisk_backend_info *be = vdisk_backend_find(format);

                        if (!be)
                                return set_error(error, ERROR_PREFIX "UnknownFormat",
                                                 "Chain element %zu: unknown image format '%s'", c->n_chain - 1,
                                                 format);
                        format = be->name;
                }
                e->format = strdup(format);
                if (!e->format)
                        return -ENOMEM;
                r = options_parse(msg, OPT_READ_ONLY | OPT_DISPLAY_NAME, &e->options, error);
                if (r < 0)
                        return r;
                snprintf(what, sizeof what, "chain element %zu", c->n_chain - 1);
                r = fd_accept(fd, 0, e->options.display_name && e->options.display_name[0] ?
                                             e->options.display_name : what,
                              &e->fd, &e->writable, error);
                if (r < 0)
                        return r;
                if (c->n_chain > 1 && !format[0])
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "Chain element %zu: the format must be given (only the first element "
                                         "may be probed)", c->n_chain - 1);
                r = sd_bus_message_exit_container(msg);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_exit_container(msg);
        if (r < 0)
                return r;
        if (c->n_chain == 0)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The chain is empty");
        r = options_parse(msg, OPT_READ_ONLY | OPT_DISPLAY_NAME | OPT_FILES | OPT_SKIP_CHECKS | OPT_PERSIST |
                          OPT_FILE_SET, &c->options, error);
        if (r < 0)
                return r;
        if (c->options.skip_checks && !c->options.read_only)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                 "Option 'skip-consistency-checks' needs option 'read-only'");
        return call_dispatch(TAKE_PTR(c));
}

/* ---------------------------------------------------------------- vtable */

const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Mode", "s", property_get_mode, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Backends", "a(sa{sv})", property_get_backends, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("SupportedOperations", "as", property_get_supported_operations, 0,
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxOperations", "u", NULL, offsetof(Manager, max_operations), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxOperationsPerUser", "u", NULL, offsetof(Manager, max_operations_per_user),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxDisksPerUser", "u", NULL, offsetof(Manager, max_disks_per_user),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxCallsPerUser", "u", NULL, offsetof(Manager, max_calls_per_user),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxPersistentDisksPerUser", "u", NULL, offsetof(Manager, max_persistent_disks_per_user),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxFileSetsPerUser", "u", NULL, offsetof(Manager, max_file_sets_per_user),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxFdsPerCall", "u", NULL, offsetof(Manager, max_fds_per_call),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Workers", "u", NULL, offsetof(Manager, workers), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxFinishedOperations", "u", NULL, offsetof(Manager, max_finished_operations),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxFinishedOperationsPerUser", "u", NULL,
                        offsetof(Manager, max_finished_operations_per_user), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxDisks", "u", NULL, offsetof(Manager, max_disks), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxCalls", "u", NULL, offsetof(Manager, max_calls), SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxWaitsPerOperation", "u", NULL, offsetof(Manager, max_waits_per_operation),
                        SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_NAMES("ProbeFormat", "ha{sv}", SD_BUS_PARAM(fd) SD_BUS_PARAM(options), "ssa{sv}",
                                 SD_BUS_PARAM(format) SD_BUS_PARAM(media_type) SD_BUS_PARAM(info),
                                 method_probe_format, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("CreateDisk", "a{sv}", SD_BUS_PARAM(options), "o", SD_BUS_PARAM(disk),
                                 method_create_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("OpenDisk", "a(hsa{sv})a{sv}", SD_BUS_PARAM(chain) SD_BUS_PARAM(options), "o",
                                 SD_BUS_PARAM(disk), method_open_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("CreateFileSet", "a{sv}", SD_BUS_PARAM(options), "o", SD_BUS_PARAM(file_set),
                                 method_create_file_set, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* ---------------------------------------------------------------- lifetime */

/* Stopping (SIGTERM/SIGINT): the bus name goes at once, so that calls to it
 * go to bus activation (a replacement) instead of to us; every new call of our
 * interfaces is refused with Error.ServiceStopping (the standard interfaces,
 * Properties, ObjectManager, Introspectable and Peer, still answer from
 * memory: they start no work, and let clients read how their operations
 * ended); calls waiting for polkit or for a worker end with ServiceStopping;
 * running operations are cancelled (Error.ServiceStopping); idle Disks are
 * closed (flushed) on the workers. The loop is left when every worker has
 * returned, or, at the latest, --stop-timeout-sec after the signal: then the
 * process leaves without waiting for workers still blocked in a file system
 * (docs/architecture.md, "Stopping"). */

static int on_stop_filter(sd_bus_message *msg, void *userdata, sd_bus_error *ret_error) {
        Manager *m = userdata;
        const char *iface;

        if (!m->shutting_down || !sd_bus_message_is_method_call(msg, NULL, NULL))
                return 0;
        iface = sd_bus_message_get_interface(msg);
        if (iface && strncmp(iface, BUS_NAME ".", strlen(BUS_NAME ".")) != 0)
                return 0;
        (void) reply_error(msg, ERROR_PREFIX "ServiceStopping", "vdiskd is stopping");
        return 1;
}

static int on_stop_name_released(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        if (sd_bus_message_is_method_error(reply, NULL))
                log_error("Could not release the bus name %s when stopping: %s", BUS_NAME,
                          sd_bus_message_get_error(reply)->message ?: "unknown error");
        return 0;
}

/* Closes the Disks nothing uses any more (on a worker: closing flushes). */
static void shutdown_close_idle_disks(Manager *m) {
        for (Disk *d = m->disks, *next; d; d = next) {
                next = d->disks_next;
                if (!d->active && !d->queue_head && !d->operation)
                        disk_remove(d);
        }
}

static int on_shutdown_check(sd_event_source *s, void *userdata) {
        Manager *m = userdata;

        shutdown_close_idle_disks(m);
        if (worker_pool_pending(m->pool) > 0 || task_any_waiting(m))
                return sd_event_source_set_enabled(s, SD_EVENT_OFF);
        return sd_event_exit(m->event, 0);
}

/* Called after each finished task while shutting down: leaves the loop once
 * every worker is done, so the last Completed signals still reach the bus
 * (sd-bus closes the connection when the loop exits). */
void manager_shutdown_check(Manager *m) {
        if (!m->shutting_down || !m->shutdown_check)
                return;
        (void) sd_event_source_set_enabled(m->shutdown_check, SD_EVENT_ONESHOT);
}

/* The bound: workers still inside the library are blocked in a file system
 * (FUSE, NFS, a frozen fs). Their operations end for the clients now
 * (Completed with ServiceStopping), the calls they run get ServiceStopping,
 * the bus connection is flushed and closed, and the process leaves with
 * _exit(): no destructor runs, nothing a blocked worker uses is freed or
 * closed under it. */
static int on_stop_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        unsigned n_ops = 0, n_calls = 0;

        for (Operation *o = m->operations; o; o = o->operations_next)
                if (IN_SET3(o->state, OP_QUEUED, OP_RUNNING, OP_CANCELLING)) {
                        log_error("Stop timeout: abandoning %s (%s), its worker has not returned.", o->path,
                                  op_kind_to_string(o->kind));
                        operation_abandon(o, m->stop_timeout_sec);
                        n_ops++;
                }
        for (Call *c = m->calls; c; c = c->calls_next) {
                (void) reply_error(c->message, ERROR_PREFIX "ServiceStopping",
                                   "vdiskd stopped before the work of this call returned (it may still complete)");
                n_calls++;
        }
        log_error("Stopping took longer than %u s: exiting with %u worker(s) still busy (%u operation(s), "
                  "%u call(s) abandoned).", m->stop_timeout_sec, m->pool ? worker_pool_running(m->pool) : 0,
                  n_ops, n_calls);
        (void) sd_notify(false, "STATUS=Stop timeout: left with workers blocked in the file system.");
        if (m->bus) {
                (void) sd_bus_flush(m->bus);
                sd_bus_close(m->bus);   /* the socket goes now, whatever still holds the process */
        }
        fflush(NULL);
        _exit(VDISKD_EXIT_STOP_TIMEOUT);
}

/* SIGTERM/SIGINT: see above. */
void manager_shutdown(Manager *m) {
        int r;

        if (m->shutting_down)
                return;
        m->shutting_down = true;
        m->idle_timer = sd_event_source_disable_unref(m->idle_timer);
        m->exit_defer = sd_event_source_disable_unref(m->exit_defer);
        if (m->bus && !m->exiting) {
                /* An idle exit in progress has released it already. */
                r = sd_bus_release_name_async(m->bus, NULL, BUS_NAME, on_stop_name_released, m);
                if (r < 0)
                        log_error("Failed to release the bus name %s: %s", BUS_NAME, strerror(-r));
        }
        m->exiting = true;

        /* Calls that wait for the caller's uid or for polkit end now; so do
         * calls whose work waits for a worker (restart after each: finishing
         * one may end others). Calls that run on a worker reply when it
         * returns. */
        for (bool again = true; again;) {
                again = false;
                for (Call *c = m->calls; c; c = c->calls_next) {
                        if (c->slot) {
                                call_fail(c, -ESHUTDOWN, NULL, "vdiskd is stopping");
                                again = true;
                                break;
                        }
                        if (c->task.state == TASK_DISK_QUEUED || c->task.state == TASK_READY) {
                                (void) task_cancel_queued(&c->task);
                                again = true;
                                break;
                        }
                        if (c->task.state == TASK_POOLED && !task_started(&c->task))
                                (void) task_cancel_queued(&c->task);   /* its done runs later */
                }
        }
        for (Operation *o = m->operations; o; o = o->operations_next)
                operation_cancel_for_shutdown(o);
        for (Disk *d = m->disks, *next; d; d = next) {
                next = d->disks_next;
                disk_drain_queue(d);
        }
        r = sd_event_add_defer(m->event, &m->shutdown_check, on_shutdown_check, m);
        if (r >= 0)
                r = sd_event_source_set_priority(m->shutdown_check, SD_EVENT_PRIORITY_IDLE);
        if (r < 0) {
                (void) sd_event_exit(m->event, 0);
                return;
        }
        r = sd_event_add_time_relative(m->event, &m->stop_timer, CLOCK_MONOTONIC,
                                       (uint64_t) m->stop_timeout_sec * 1000000u, 0, on_stop_timeout, m);
        if (r < 0)
                log_error("Failed to arm the stop timer: %s", strerror(-r));
}

int manager_start(Manager *m) {
        int r;

        r = sd_bus_add_object_manager(m->bus, &m->object_manager_slot, ROOT_PATH);
        if (r < 0)
                return r;
        r = sd_bus_add_object_vtable(m->bus, &m->manager_slot, ROOT_PATH, IFACE_MANAGER, manager_vtable, m);
        if (r < 0)
                return r;
        r = sd_bus_add_filter(m->bus, &m->filter_slot, on_stop_filter, m);
        if (r < 0)
                return r;
        r = peers_start(m);
        if (r < 0)
                return r;
        r = privacy_start(m);
        if (r < 0)
                return r;
        r = sd_bus_request_name(m->bus, BUS_NAME, 0);
        if (r == -EEXIST || r == -EALREADY) {
                log_error("The bus name %s is already owned by another process.", BUS_NAME);
                return r;
        }
        if (r < 0) {
                log_error("Failed to acquire the bus name %s: %s", BUS_NAME, strerror(-r));
                return r;
        }
        manager_update_idle(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        m->shutting_down = true;
        m->idle_timer = sd_event_source_disable_unref(m->idle_timer);
        m->exit_defer = sd_event_source_disable_unref(m->exit_defer);
        m->shutdown_check = sd_event_source_disable_unref(m->shutdown_check);
        m->stop_timer = sd_event_source_disable_unref(m->stop_timer);

        /* Stop what runs, wait for the workers: every `done` runs here. What
         * still waits for a worker ends first: the pool takes nothing more. */
        for (Operation *o = m->operations; o; o = o->operations_next)
                operation_cancel_for_shutdown(o);
        m->pool_closing = true;
        task_cancel_all_ready(m);
        m->pool = worker_pool_free(m->pool);
        task_cancel_all_ready(m);
        m->failed_defer = sd_event_source_disable_unref(m->failed_defer);
        for (Disk *d = m->disks, *next; d; d = next) {
                next = d->disks_next;
                disk_drain_queue(d);
        }

        while (m->operations)
                operation_free(m->operations);
        while (m->calls) {
                Call *c = m->calls;
                (void) reply_error(c->message, ERROR_PREFIX "ServiceStopping", "vdiskd is stopping");
                call_free(c);
        }
        while (m->file_sets)
                file_set_free(m->file_sets);
        while (m->disks) {
                Disk *d = m->disks;
                /* No worker is left: close on this thread (flushes). */
                disk_remove(d);
        }
        peers_free(m);
        privacy_free(m);
        assert(!m->users);
        m->release_slot = sd_bus_slot_unref(m->release_slot);
        m->filter_slot = sd_bus_slot_unref(m->filter_slot);
        m->manager_slot = sd_bus_slot_unref(m->manager_slot);
        m->object_manager_slot = sd_bus_slot_unref(m->object_manager_slot);
        if (m->bus) {
                (void) sd_bus_flush(m->bus);
                m->bus = sd_bus_flush_close_unref(m->bus);
        }
        m->event = sd_event_unref(m->event);
        free(m);
        return NULL;
}
