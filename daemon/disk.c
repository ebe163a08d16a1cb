/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Disk objects (/org/vdisk/VDisk1/disk/<n>): one libvdisk container. Every
 * method that touches files runs as a task on the disk's queue, so only one
 * worker at a time holds the container; the cached properties are refreshed
 * from the snapshot the task takes before it lets go.
 */
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

static void client_drop_disk(Disk *d);

int disk_new(Manager *m, uint64_t id, uid_t owner, const char *display_name, vdisk_disk *vd, Disk **ret) {
        Disk *d;

        d = calloc(1, sizeof *d);
        if (!d)
                return -ENOMEM;
        d->manager = m;
        d->n_ref = 1;
        d->id = id;
        d->owner = owner;
        d->vd = vd;
        d->read_only = 1;
        d->display_name = strdup(display_name ?: "");
        d->user = user_get(m, owner);
        if (!d->display_name || !d->user || asprintf(&d->path, ROOT_PATH "/disk/%" PRIu64, id) < 0) {
                user_unref(d->user);
                free(d->display_name);
                free(d);
                return -ENOMEM;
        }
        d->user->n_disks++;
        LIST_PREPEND(disks, m->disks, d);
        m->n_disks++;
        manager_update_idle(m);
        *ret = d;
        return 0;
}

Disk *disk_ref(Disk *d) {
        if (d)
                d->n_ref++;
        return d;
}

Disk *disk_unref(Disk *d) {
        if (!d)
                return NULL;
        assert(d->n_ref > 0);
        if (--d->n_ref > 0)
                return NULL;
        assert(!d->active && !d->queue_head);
        user_unref(d->user);
        free(d->images);
        free(d->display_name);
        free(d->path);
        free(d);
        return NULL;
}

/* ---------------------------------------------------------------- properties */

static int property_get_images(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Disk *d = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "o");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < d->n_images; i++) {
                r = sd_bus_message_append(reply, "o", d->images[i]->path);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_sector_size(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "u", (uint32_t) VDISK_SECTOR_SIZE);
}

static int property_get_geometry(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        const uint32_t *g = userdata;

        return sd_bus_message_append(reply, "(uuu)", g[0], g[1], g[2]);
}

static int property_get_string(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        char **s = userdata;

        return sd_bus_message_append(reply, "s", *s ?: "");
}

static int property_get_operation(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Disk *d = userdata;

        return sd_bus_message_append(reply, "o", d->operation ? d->operation->path : "/");
}

static int property_get_owner(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Disk *d = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) d->owner);
}

static int property_get_persistent(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Disk *d = userdata;

        return sd_bus_message_append(reply, "b", (int) d->persistent);
}

/* ---------------------------------------------------------------- export */

/* Exports the Disk with the properties it has now, then its Images: call it
 * once they are final (disk_apply_info() before), so that InterfacesAdded
 * carries them and no PropertiesChanged has to correct them. */
int disk_export(Disk *d) {
        int r;

        r = sd_bus_add_object_vtable(d->manager->bus, &d->slot, d->path, IFACE_DISK, disk_vtable, d);
        if (r < 0)
                return r;
        d->exported = true;
        emit_object_added(d->manager, OBJECT_DISK, d);
        for (unsigned k = 0; k < d->n_images; k++)
                if (!d->images[k]->exported)
                        (void) image_export(d->images[k]);
        return 0;
}

/* `persist`: the Disk is not tied to its creator's connection; it counts
 * against the owner's --max-persistent-disks-per-user until it is closed. */
void disk_set_persistent(Disk *d) {
        if (d->persistent)
                return;
        d->persistent = true;
        d->user->n_persistent++;
}

static void disk_emit_changed(Disk *d, const char **names) {
        if (!d->exported || !names[0])
                return;
        emit_properties_changed(d->manager, OBJECT_DISK, d, names);
}

static void disk_remove_image_at(Disk *d, unsigned i) {
        Image *img = d->images[i];

        memmove(&d->images[i], &d->images[i + 1], (d->n_images - i - 1) * sizeof(Image *));
        d->n_images--;
        image_remove(img);
}

/* Unexports the disk and its images; a container still open is closed on a
 * worker (on this thread only at exit, when no worker is left). Drops the list
 * reference. Never while a task holds or waits for the disk, unless no worker
 * can run any more. */
void disk_remove(Disk *d) {
        Manager *m = d->manager;
        Trash trash = {};

        if (d->gone)
                return;
        d->gone = d->closing = true;
        while (d->n_images > 0)
                disk_remove_image_at(d, d->n_images - 1);
        if (d->exported) {
                emit_object_removed(m, OBJECT_DISK, d);
                d->slot = sd_bus_slot_unref(d->slot);
                d->exported = false;
        }
        client_drop_disk(d);
        if (d->persistent) {
                assert(d->user->n_persistent > 0);
                d->user->n_persistent--;
                d->persistent = false;
        }
        d->fr = NULL;           /* freed with vd's resolver */
        trash_vd(&trash, TAKE_PTR(d->vd), d->n_fds_charged);
        trash_empty(m, d->user, &trash);
        assert(d->user->n_fds >= d->n_fds_charged && d->user->n_disks > 0);
        user_charge_fds(d->user, 0, d->n_fds_charged);
        d->n_fds_charged = 0;
        d->user->n_disks--;
        LIST_REMOVE(disks, m->disks, d);
        m->n_disks--;
        disk_unref(d);
        manager_update_idle(m);
}

/* One descriptor per image and one per companion file (VMDK extents),
 * charged to the owner. */
static void disk_charge_fds(Disk *d, unsigned n_fds) {
        user_charge_fds(d->user, n_fds, d->n_fds_charged);
        d->n_fds_charged = n_fds;
}

void disk_apply_info(Disk *d, const DiskInfo *info, NewImageName *names, size_t n_names) {
        const char *changed[8] = {};
        size_t n_changed = 0;
        bool images_changed = false;
        Image **nv;
        int r;

        if (!info->valid || d->gone)
                return;
        /* Images that left the chain. */
        for (unsigned i = d->n_images; i > 0; i--) {
                bool found = false;

                for (unsigned k = 0; k < info->n_images; k++)
                        if (info->images[k].key == d->images[i - 1]->info.key) {
                                found = true;
                                break;
                        }
                if (!found) {
                        disk_remove_image_at(d, i - 1);
                        images_changed = true;
                }
        }
        /* The new order, with new images for unknown keys. */
        nv = calloc(info->n_images + 1, sizeof(Image *));
        if (!nv) {
                log_oom();
                return;
        }
        for (unsigned k = 0; k < info->n_images; k++) {
                const ImageInfo *ii = &info->images[k];
                Image *img = NULL;

                for (unsigned i = 0; i < d->n_images; i++)
                        if (d->images[i] && d->images[i]->info.key == ii->key) {
                                img = d->images[i];
                                d->images[i] = NULL;
                                break;
                        }
                if (img) {
                        const char *ic[24] = {};

                        if (k != img->info.index || img->info.key != ii->key)
                                images_changed = true;
                        r = image_update(img, ii, ic, ELEMENTSOF(ic));
                        if (r < 0)
                                log_oom();
                        if (ic[0] && img->exported)
                                emit_properties_changed(d->manager, OBJECT_IMAGE, img, ic);
                } else {
                        uint64_t id = 0;
                        const char *dn = ii->io_name;

                        for (size_t j = 0; j < n_names; j++)
                                if (!names[j].used && streq(names[j].io_name, ii->io_name)) {
                                        names[j].used = true;
                                        id = names[j].id;
                                        dn = names[j].display_name;
                                        break;
                                }
                        if (id == 0)
                                id = d->manager->next_image_id++;
                        r = image_new(d->manager, d, id, dn, ii, &img);
                        if (r < 0) {
                                log_error("Failed to create an image object: %s", strerror(-r));
                                continue;
                        }
                        images_changed = true;
                }
                nv[k] = img;
        }
        /* Anything left in the old array was matched twice: cannot happen. */
        free(d->images);
        d->images = nv;
        d->n_images = 0;
        for (unsigned k = 0; k < info->n_images; k++)
                if (nv[k])
                        nv[d->n_images++] = nv[k];
        /* Not exported yet (being published): disk_export() exports them. */
        for (unsigned k = 0; d->exported && k < d->n_images; k++)
                if (!d->images[k]->exported)
                        (void) image_export(d->images[k]);

        if (images_changed)
                changed[n_changed++] = "Images";
        if (d->size != info->size) {
                d->size = info->size;
                changed[n_changed++] = "Size";
        }
        if (d->read_only != info->read_only) {
                d->read_only = info->read_only;
                changed[n_changed++] = "ReadOnly";
        }
        if (memcmp(d->pchs, info->pchs, sizeof d->pchs) != 0) {
                memcpy(d->pchs, info->pchs, sizeof d->pchs);
                changed[n_changed++] = "PCHSGeometry";
        }
        if (memcmp(d->lchs, info->lchs, sizeof d->lchs) != 0) {
                memcpy(d->lchs, info->lchs, sizeof d->lchs);
                changed[n_changed++] = "LCHSGeometry";
        }
        if (info->have_resolver_fds)
                d->n_resolver_fds = info->n_resolver_fds;
        disk_charge_fds(d, MAX(info->n_fds, d->n_images) + d->n_resolver_fds);
        disk_emit_changed(d, changed);
}

/* ---------------------------------------------------------------- client tracking */

static void client_drop_disk(Disk *d) {
        Peer *p = d->peer;

        if (!p)
                return;
        LIST_REMOVE(client_disks, p->disks, d);
        d->peer = NULL;
}

/* Ties d to the connection `name`: when it leaves the bus, d is closed (once
 * no operation runs on it). The peer table's one NameOwnerChanged match
 * watches every connection (peers.c); a name without an entry has left. */
int disk_track_name(Disk *d, const char *name) {
        Peer *p;

        if (!name)
                return 0;   /* direct connection: it lives as long as the daemon */
        if (d->peer)
                return streq(d->peer->name, name) ? 0 : -EEXIST;
        p = peer_find(d->manager, name);
        if (!p)
                return -ENXIO;
        LIST_PREPEND(client_disks, p->disks, d);
        d->peer = p;
        return 0;
}

typedef struct CloseTask {
        Task task;
        Disk *disk;
} CloseTask;

static void close_task_run(Task *t) {
        CloseTask *ct = container_of(t, CloseTask, task);
        vdisk_disk *vd = TAKE_PTR(ct->disk->vd);
        int r;

        /* Nobody is left to tell: the journal has to. */
        r = vdisk_disk_close(vd);
        if (r < 0)
                log_error("Closing %s after its owner left: %s", ct->disk->path, vdisk_last_error());
}

static void close_task_done(Task *t, bool cancelled) {
        CloseTask *ct = container_of(t, CloseTask, task);

        disk_remove(ct->disk);
        disk_unref(ct->disk);
        free(ct);
}

void disk_close_async(Disk *d) {
        CloseTask *ct;
        int r;

        if (d->closing || d->gone || d->operation || d->manager->shutting_down)
                return;
        if (!d->active && !d->queue_head) {
                /* Nothing waits for it: gone from the bus now; the container
                 * is flushed and closed by a worker job charged to the owner. */
                disk_remove(d);
                return;
        }
        /* Calls still queued on it run first; the close comes after them. */
        ct = calloc(1, sizeof *ct);
        if (!ct) {
                log_oom();
                return;
        }
        d->closing = true;
        ct->disk = disk_ref(d);
        ct->task.run = close_task_run;
        ct->task.done = close_task_done;
        r = task_submit(d->manager, &ct->task, d, d->user);
        if (r < 0) {
                /* Only when shutting down: the remaining disks are closed at exit. */
                log_error("Failed to queue the close of %s: %s", d->path, strerror(-r));
                d->closing = false;
                disk_unref(ct->disk);
                free(ct);
        }
}

void disk_operation_finished(Disk *d) {
        if (d->creator_gone)
                disk_close_async(d);
}

/* ---------------------------------------------------------------- common */

static Disk *call_disk(Call *c) {
        return call_target(c);
}

/* Runs at the start of every Disk method: the object exists (call_continue
 * checked) and runs no operation. */
static Disk *disk_usable_for(Call *c, Disk *d) {
        if (!d) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The disk does not exist (any more)");
                return NULL;
        }
        if (d->operation) {
                call_fail(c, -EBUSY, NULL, "%s: the disk runs an operation (%s)",
                          d->display_name[0] ? d->display_name : d->path, d->operation->path);
                return NULL;
        }
        return d;
}

static Disk *disk_usable(Call *c) {
        return disk_usable_for(c, call_disk(c));
}

static const char *disk_name(Disk *d) {
        return d->display_name[0] ? d->display_name : d->path;
}

/* Worker side: the container, or NULL (and the outcome set) if it was closed
 * while the task waited. */
static vdisk_disk *task_vd(Call *c) {
        vdisk_disk *vd = c->disk ? c->disk->vd : NULL;

        vdisk_clear_error();
        if (!vd)
                outcome_setf(&c->outcome, -ENXIO, "the disk was closed");
        return vd;
}

static bool call_disk_gone(Call *c, bool cancelled) {
        if (cancelled) {
                call_fail(c, -ESHUTDOWN, NULL, "vdiskd is stopping");
                return true;
        }
        if (c->outcome.r == -ENXIO && (!c->disk->vd || c->disk->gone)) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The disk was closed");
                return true;
        }
        return false;
}

/* Done hook of the simple methods: apply the snapshot, then reply. */
static void simple_done(Task *t, bool cancelled) {
        Call *c = container_of(t, Call, task);

        if (call_disk_gone(c, cancelled))
                return;
        disk_apply_info(c->disk, &c->info, c->names, c->n_names);
        if (c->outcome.r < 0)
                call_reply_outcome(c);
        else
                call_reply_empty(c);
}

static int disk_submit(Call *c, Disk *d, void (*run)(Task *t), void (*done)(Task *t, bool cancelled)) {
        c->disk = disk_ref(d);
        return call_submit(c, d, run, done);
}

/* ---------------------------------------------------------------- Open */

static void open_run(Task *t) {
        Call *c = container_of(t, Call, task);
        vdisk_disk *vd = task_vd(c);
        vdisk_resolver *res = NULL;
        vdisk_io *io = NULL;
        FilesResolver *fr = NULL;
        bool ro = c->options.read_only || !c->fd_writable;
        /* An O_RDONLY fd makes only its image read-only: an operation may
         * still write into a parent the caller gave a writable fd for. The
         * option read-only makes the whole disk read-only. */
        uint32_t flags = c->options.read_only ? VDISK_OPEN_READONLY : 0;
        const char *format = c->format[0] ? c->format : NULL;
        int r;

        if (!vd)
                return;
        /* The checks the handler could not make without asking the file system. */
        r = fd_vet(c->fd, 0, "fd", NULL, &c->outcome);
        if (r >= 0)
                r = files_vet(c->options.files, c->options.n_files, &c->outcome);
        if (r < 0) {
                (void) disk_info_read(vd, &c->info);
                return;
        }
        if (ro && !format)
                flags |= VDISK_OPEN_ALLOW_PROBE_RAW;
        r = io_from_fd(TAKE_FD(c->fd), ro ? VDISK_IO_READONLY : 0, c->names[0].io_name, &io);
        if (r >= 0) {
                if (vdisk_disk_count(vd) == 0) {
                        r = files_resolver_new(c->options.files, c->options.n_files, &fr, &res);
                        if (r >= 0) {
                                /* The disk keeps the resolver (and drops the one
                                 * it had): later opens add their files to it. */
                                r = vdisk_disk_open_chain(vd, res, io, format, flags);
                                c->disk->fr = r >= 0 ? fr : NULL;
                        }
                } else if (c->options.n_files > 0) {
                        /* The image's companion files (or the candidates its
                         * format looks for) come with this call: through the
                         * disk's resolver, which libvdisk asks. */
                        if (!c->disk->fr) {
                                r = files_resolver_new(NULL, 0, &fr, &res);
                                if (r >= 0)
                                        r = vdisk_disk_set_resolver(vd, res);
                                if (r >= 0)
                                        c->disk->fr = fr;
                        }
                        fr = c->disk->fr;
                        if (r >= 0 && fr)
                                r = files_resolver_begin_opening(fr, c->options.files, c->options.n_files);
                        if (r >= 0)
                                r = vdisk_disk_open(vd, io, format, flags);
                } else
                        r = vdisk_disk_open(vd, io, format, flags);
                files_resolver_done_opening(fr);
        }
        outcome_set(&c->outcome, r);
        if (disk_info_read(vd, &c->info) >= 0)
                (void) disk_info_read_snapshots(vd, &c->info);
        c->info.have_resolver_fds = true;
        c->info.n_resolver_fds = files_resolver_n_writable(c->disk->fr);
        vdisk_io_unref(io);
        vdisk_resolver_unref(res);
}

static void open_done(Task *t, bool cancelled) {
        Call *c = container_of(t, Call, task);
        Disk *d;
        int r;

        if (call_disk_gone(c, cancelled))
                return;
        d = c->disk;
        disk_apply_info(d, &c->info, c->names, c->n_names);
        if (c->outcome.r < 0 || d->n_images == 0) {
                call_reply_outcome(c);
                return;
        }
        r = sd_bus_reply_method_return(c->message, "o", d->images[d->n_images - 1]->path);
        if (r < 0)
                log_error("Failed to reply to Open: %s", strerror(-r));
        call_free(c);
}

/* One new image: reserve its id and its io name. */
static int call_name_new_image(Call *c) {
        Manager *m = c->manager;
        char *name;
        uint64_t id = m->next_image_id++;

        c->names = calloc(1, sizeof(NewImageName));
        if (!c->names)
                return -ENOMEM;
        if (c->options.display_name && c->options.display_name[0])
                name = strdup(c->options.display_name);
        else if (asprintf(&name, "image %" PRIu64, id) < 0)
                name = NULL;
        if (!name)
                return -ENOMEM;
        free(c->data);
        c->data = name;   /* owns the io name */
        c->names[0] = (NewImageName) {
                .io_name = name,
                .display_name = c->options.display_name ?: "",
                .id = id,
        };
        c->n_names = 1;
        return 0;
}

static int open_start(Call *c) {
        Disk *d = disk_usable(c);
        int r;

        if (!d)
                return 0;
        r = call_take_file_set(c);
        if (r <= 0)
                return r;
        r = call_name_new_image(c);
        if (r < 0)
                return r;
        return disk_submit(c, d, open_run, open_done);
}

/* ---------------------------------------------------------------- Close */

static void close_run(Task *t) {
        Call *c = container_of(t, Call, task);
        vdisk_disk *vd = task_vd(c);
        int r;

        if (!vd)
                return;
        if (c->options.top_only) {
                r = vdisk_disk_close_top(vd);
                outcome_set(&c->outcome, r);
                (void) disk_info_read(vd, &c->info);
                return;
        }
        /* VDCloseAll closes even when a flush fails; say so then (the
         * message names the file). -EBUSY cannot happen: calls on a Disk run
         * one at a time, so no operation runs on it now. */
        r = vdisk_disk_close(vd);
        outcome_set(&c->outcome, r);
        if (r != -EBUSY) {
                c->disk->vd = NULL;
                c->disk->fr = NULL;
        }
}

static void close_done(Task *t, bool cancelled) {
        Call *c = container_of(t, Call, task);

        if (call_disk_gone(c, cancelled))
                return;
        if (c->options.top_only) {
                simple_done(t, cancelled);
                return;
        }
        disk_remove(c->disk);
        if (c->outcome.r < 0) {
                _cleanup_free_ char *msg = c->outcome.message;

                c->outcome.message = NULL;
                if (asprintf(&c->outcome.message, "%s; the disk was closed anyway",
                             msg ? msg : strerror(-c->outcome.r)) < 0)
                        c->outcome.message = NULL;
                call_reply_outcome(c);
                return;
        }
        call_reply_empty(c);
}

static int close_start(Call *c) {
        Disk *d = disk_usable(c);

        if (!d)
                return 0;
        if (c->options.top_only && d->n_images == 0) {
                call_fail(c, -EINVAL, NULL, "%s: the disk holds no image", disk_name(d));
                return 0;
        }
        if (!c->options.top_only)
                d->closing = true;   /* later calls see UnknownObject */
        return disk_submit(c, d, close_run, close_done);
}

/* ---------------------------------------------------------------- Flush, Read, Write, Discard */

static void flush_run(Task *t) {
        Call *c = container_of(t, Call, task);
        vdisk_disk *vd = task_vd(c);

        if (!vd)
                return;
        outcome_set(&c->outcome, vdisk_disk_flush(vd));
        (void) disk_info_read(vd, &c->info);
}

static int flush_start(Call *c) {
        Disk *d = disk_usable(c);

        if (!d)
                return 0;
        return disk_submit(c, d, flush_run, simple_done);
}

static void read_run(Task *t) {
        Call *c = container_of(t, Call, task);
        vdisk_disk *vd = task_vd(c);

        if (!vd)
                return;
        c->data = malloc(c->u1 ? c->u1 : 1);
        if (!c->data) {
                outcome_set(&c->outcome, -ENOMEM);
                return;
        }
        c->data_size = c->u1;
        outcome_set(&c->outcome, vdisk_disk_read(vd, c->data, c->u1, c->t1));
}

static void read_done(Task *t, bool cancelled) {
        Call *c = container_of(t, Call, task);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        if (call_disk_gone(c, cancelled))
                return;
        if (c->outcome.r < 0) {
                call_reply_outcome(c);
                return;
        }
        r = sd_bus_message_new_method_return(c->message, &reply);
        if (r >= 0)
                r = sd_bus_message_append_array(reply, 'y', c->data, c->data_size);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                log_error("Failed to reply to Read: %s", strerror(-r));
        call_free(c);
}

static bool check_range(Call *c, Disk *d, uint64_t offset, uint64_t length) {
        if (d->n_images == 0) {
                call_fail(c, -EINVAL, NULL, "%s: the disk holds no image", disk_name(d));
                return false;
        }
        if (!range_within(offset, length, d->size)) {
                call_fail(c, -EINVAL, NULL, "%s: range %" PRIu64 "+%" PRIu64 " beyond the end of the disk (%" PRIu64
                          " bytes)", disk_name(d), offset, length, d->size);
                return false;
        }
        return true;
}

static int read_start(Call *c) {
        Disk *d = disk_usable(c);

        if (!d || !check_range(c, d, c->t1, c->u1))
                return 0;
        return disk_submit(c, d, read_run, read_done);
}

static void write_run(Task *t) {
        Call *c = container_of(t, Call, task);
        vdisk_disk *vd = task_vd(c);

        if (!vd)
                return;
        outcome_set(&c->outcome, vdisk_disk_write(vd, c->data, c->data_size, c->t1));
        (void) disk_info_read(vd, &c->info);
}

static int write_start(Call *c) {
        Disk *d = disk_usable(c);

        if (!d || !check_range(c, d, c->t1, c->data_size))
                return 0;
        if (d->read_only) {
                call_fail(c, -EROFS, NULL, "%s: the disk is read-only", disk_name(d));
                return 0;
        }
        return disk_submit(c, d, write_run, simple_done);
}

static void discard_run(Task *t) {
        Call *c = container_of(t, Call, task);
        vdisk_disk *vd = task_vd(c);

        if (!vd)
                return;
        outcome_set(&c->outcome, vdisk_disk_discard(vd, c->t1, c->t2));
        (void) disk_info_read(vd, &c->info);
}

static int discard_start(Call *c) {
        Disk *d = disk_usable(c);

        if (!d || !check_range(c, d, c->t1, c->t2))
                return 0;
        if (d->read_only) {
                call_fail(c, -EROFS, NULL, "%s: the disk is read-only", disk_name(d));
                return 0;
        }
        return disk_submit(c, d, discard_run, simple_done);
}

/* ---------------------------------------------------------------- operations */

static bool check_limits(Call *c, OpKind kind) {
        Manager *m = c->manager;

        if (manager_count_operations(m, false, 0) >= m->max_operations) {
                call_fail(c, -E2BIG, NULL, "Too many operations (at most %u at once)", m->max_operations);
                return false;
        }
        if (manager_count_operations(m, true, c->uid) >= m->max_operations_per_user) {
                call_fail(c, -E2BIG, NULL, "Too many operations for user %u (at most %u at once)",
                          (unsigned) c->uid, m->max_operations_per_user);
                return false;
        }
        if (kind == OP_COPY && c->options.open && c->user->n_disks >= m->max_disks_per_user) {
                call_fail(c, -E2BIG, NULL, "Too many disks for user %u (at most %u)", (unsigned) c->uid,
                          m->max_disks_per_user);
                return false;
        }
        if (kind == OP_COPY && c->options.open && manager_disks_full(m)) {
                call_fail(c, -E2BIG, NULL, "Too many disks (at most %u in all)", m->max_disks);
                return false;
        }
        if (kind == OP_COPY && c->options.open && c->options.persist &&
            c->user->n_persistent >= m->max_persistent_disks_per_user) {
                call_fail(c, -E2BIG, NULL, "Too many persistent disks for user %u (at most %u)", (unsigned) c->uid,
                          m->max_persistent_disks_per_user);
                return false;
        }
        return true;
}

/* The one launch path of every long method, once its arguments and the
 * Disk's state are checked: within the operation limits, an Operation of
 * `kind` on d (and `other`, busy with it until the end: Compare, CopyTo)
 * takes over the call's arguments and fds, is exported and queued, and the
 * call's reply is its path. A failure here is the call's error reply. */
static int operation_launch(Call *c, Disk *d, OpKind kind, Disk *other) {
        Operation *o;
        int r;

        if (!check_limits(c, kind))
                return 0;
        r = operation_new(c->manager, kind, d, c->user, &o);
        if (r < 0)
                return r;
        r = operation_take_call(o, c);
        if (r >= 0 && other)
                r = operation_set_other(o, other);
        if (r >= 0)
                r = operation_start(o);
        if (r < 0) {
                operation_free(o);
                return r;
        }
        r = sd_bus_reply_method_return(c->message, "o", o->path);
        if (r < 0)
                log_error("Failed to reply: %s", strerror(-r));
        call_free(c);
        return 0;
}

static bool check_image_index(Call *c, Disk *d, uint32_t index, const char *what) {
        if (index >= d->n_images) {
                call_fail(c, -EINVAL, NULL, "%s: %s %" PRIu32 " out of range (the disk holds %u images)",
                          disk_name(d), what, index, d->n_images);
                return false;
        }
        return true;
}

static int start_operation_on(Call *c, Disk *d, OpKind kind) {
        switch (kind) {
        case OP_CREATE:
                if (d->n_images > 0) {
                        call_fail(c, -EINVAL, NULL, "%s: the disk already holds images; CreateBase needs an empty "
                                  "disk", disk_name(d));
                        return 0;
                }
                break;
        case OP_MERGE:
                if (!check_image_index(c, d, c->u1, "image") || !check_image_index(c, d, c->u2, "image"))
                        return 0;
                if (c->u1 == c->u2) {
                        call_fail(c, -EINVAL, NULL, "%s: merge needs two different images", disk_name(d));
                        return 0;
                }
                break;
        case OP_COMPACT:
        case OP_CHECK:
        case OP_REPAIR:
                if (!check_image_index(c, d, c->u1, "image"))
                        return 0;
                /* A read-only top fails at once; whether a lower image can be
                 * written depends on its fd and shows when the work runs. */
                if (kind != OP_CHECK && !(kind == OP_REPAIR && c->options.dry_run) &&
                    c->u1 + 1 == d->n_images && d->read_only) {
                        call_fail(c, -EROFS, NULL, "%s: the image is read-only", disk_name(d));
                        return 0;
                }
                break;
        case OP_RESIZE:
        case OP_COPY:
        case OP_CREATE_DIFF:
                if (d->n_images == 0) {
                        call_fail(c, -EINVAL, NULL, "%s: the disk holds no image", disk_name(d));
                        return 0;
                }
                if (kind == OP_COPY && c->options.size != 0 && c->options.size < d->size) {
                        call_fail(c, -EINVAL, NULL, "%s: option 'size' is smaller than the disk (%" PRIu64
                                  " bytes)", disk_name(d), d->size);
                        return 0;
                }
                if (kind == OP_RESIZE && d->read_only) {
                        call_fail(c, -EROFS, NULL, "%s: the disk is read-only", disk_name(d));
                        return 0;
                }
                if (kind == OP_RESIZE && c->t1 < d->size && !c->options.allow_shrink) {
                        call_fail(c, -EINVAL, NULL, "%s: shrinking needs option 'allow-shrink'", disk_name(d));
                        return 0;
                }
                break;
        default:
                break;
        }
        /* A destination fd is checked (a regular file, empty) when the work
         * starts, on the worker: the Operation fails with BadFileDescriptor
         * then, leaving the file as it was. */
        return operation_launch(c, d, kind, NULL);
}

static int start_operation(Call *c, OpKind kind) {
        Disk *d = disk_usable(c);
        int r;

        if (!d)
                return 0;
        /* CreateBase, CreateDiff, Copy: the output's companion files
         * (`files`, `file-set`). */
        r = call_take_file_set(c);
        if (r <= 0)
                return r;
        return start_operation_on(c, d, kind);
}

/* The index of the Image at `path` in d's chain, or -1. */
static int disk_image_index(Disk *d, const char *path) {
        for (unsigned i = 0; i < d->n_images; i++)
                if (streq(d->images[i]->path, path))
                        return (int) i;
        return -1;
}

/* Image.Compact, Image.Check, Image.Repair: the Disk's index method on the
 * image's place in the chain; the worker finds the image again by identity. */
int disk_start_image_operation(Call *c, OpKind kind) {
        Image *i = call_target(c);
        Disk *d = disk_usable_for(c, i ? i->disk : NULL);
        int k;

        if (!d)
                return 0;
        k = disk_image_index(d, i->path);
        if (k < 0) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The image is not open any more");
                return 0;
        }
        c->u1 = (uint32_t) k;
        c->image_keys[0] = i->info.key;
        return start_operation_on(c, d, kind);
}

static int merge_images_start(Call *c) {
        Disk *d = disk_usable(c);
        int k[2];

        if (!d)
                return 0;
        for (unsigned j = 0; j < 2; j++) {
                k[j] = disk_image_index(d, c->image_paths[j]);
                if (k[j] < 0) {
                        call_fail(c, 0, SD_BUS_ERROR_INVALID_ARGS, "%s: %s is not an image of this disk",
                                  disk_name(d), c->image_paths[j]);
                        return 0;
                }
                c->image_keys[j] = d->images[k[j]]->info.key;
        }
        c->u1 = (uint32_t) k[0];
        c->u2 = (uint32_t) k[1];
        return start_operation_on(c, d, OP_MERGE);
}

/* Compare, CopyTo and Rebase: an operation on two Disks. The other one
 * (named by path in the call) must be an open Disk of the caller's own (root
 * and vdiskd's uid may name anyone's), idle: no operation, no call queued on
 * it. It becomes busy with this operation too (its `Operation` is set), so
 * nothing else runs on it until the end; the work itself runs on this
 * Disk's queue. Rebase onto "/" (no new parent) runs on this Disk alone. */
static int two_disk_start(Call *c, OpKind kind) {
        Manager *m = c->manager;
        Disk *d = disk_usable(c), *other;

        if (!d)
                return 0;
        if (kind == OP_REBASE && d->read_only) {
                call_fail(c, -EROFS, NULL, "%s: the disk is read-only", disk_name(d));
                return 0;
        }
        if (kind == OP_REBASE && streq(c->image_paths[0], "/")) {
                if (d->n_images == 0) {
                        call_fail(c, -EINVAL, NULL, "%s: the disk holds no image", disk_name(d));
                        return 0;
                }
                return operation_launch(c, d, kind, NULL);
        }
        other = manager_find_disk(m, c->image_paths[0]);
        /* Another uid's Disk reads as absent: the caller learns nothing of it. */
        if (!other || other->closing || other->gone ||
            (other->owner != c->uid && c->uid != 0 && c->uid != m->own_uid)) {
                call_fail(c, 0, SD_BUS_ERROR_INVALID_ARGS, "%s is not an open Disk of the caller",
                          c->image_paths[0]);
                return 0;
        }
        if (other == d) {
                call_fail(c, 0, SD_BUS_ERROR_INVALID_ARGS, "%s: the other disk is this disk", disk_name(d));
                return 0;
        }
        if (d->n_images == 0 || other->n_images == 0) {
                call_fail(c, -EINVAL, NULL, "%s: the disk holds no image", disk_name(d->n_images ? other : d));
                return 0;
        }
        if (other->operation || other->active || other->queue_head) {
                call_fail(c, -EBUSY, NULL, "%s: the other disk is busy (%s)", disk_name(other),
                          other->operation ? other->operation->path : "calls in progress");
                return 0;
        }
        if (kind == OP_COPY_TO) {
                if (other->read_only) {
                        call_fail(c, -EROFS, NULL, "%s: the target is read-only", disk_name(other));
                        return 0;
                }
                if (other->size < d->size) {
                        call_fail(c, -EINVAL, NULL, "%s: the target is smaller than the source (%" PRIu64
                                  " < %" PRIu64 " bytes)", disk_name(other), other->size, d->size);
                        return 0;
                }
                /* convert -c -n: refused before anything is written, in
                 * vdisk-img's (qemu-img's) words. Which clusters may take a
                 * compressed write is the library's check, as it copies. */
                if (c->options.compress &&
                    !(other->images[other->n_images - 1]->info.backend->caps & VDISK_CAP_COMPRESS)) {
                        call_fail(c, -EOPNOTSUPP, NULL, "Compression not supported for this file format");
                        return 0;
                }
                if (c->options.compress && c->options.source_top_only) {
                        call_fail(c, 0, SD_BUS_ERROR_INVALID_ARGS,
                                  "Options 'compress' and 'source-top-only' cannot be combined");
                        return 0;
                }
        }
        return operation_launch(c, d, kind, other);
}

static int compare_start(Call *c) { return two_disk_start(c, OP_COMPARE); }
static int copy_to_start(Call *c) { return two_disk_start(c, OP_COPY_TO); }
static int rebase_start(Call *c) { return two_disk_start(c, OP_REBASE); }

static int create_start(Call *c) { return start_operation(c, OP_CREATE); }
static int create_diff_start(Call *c) { return start_operation(c, OP_CREATE_DIFF); }
static int copy_start(Call *c) { return start_operation(c, OP_COPY); }
static int merge_start(Call *c) { return start_operation(c, OP_MERGE); }
static int compact_start(Call *c) { return start_operation(c, OP_COMPACT); }
static int resize_start(Call *c) { return start_operation(c, OP_RESIZE); }
static int check_start(Call *c) { return start_operation(c, OP_CHECK); }
static int repair_start(Call *c) { return start_operation(c, OP_REPAIR); }

/* ---------------------------------------------------------------- method handlers */

#define ACTION_OPEN "org.vdisk.vdisk1.open"
#define ACTION_MODIFY "org.vdisk.vdisk1.modify"

static const MethodSpec spec_open = { "open", ACTION_OPEN, OBJECT_DISK, open_start };
static const MethodSpec spec_close = { "close", ACTION_OPEN, OBJECT_DISK, close_start };
static const MethodSpec spec_flush = { "flush", ACTION_MODIFY, OBJECT_DISK, flush_start };
static const MethodSpec spec_read = { "read", ACTION_OPEN, OBJECT_DISK, read_start };
static const MethodSpec spec_write = { "write", ACTION_MODIFY, OBJECT_DISK, write_start };
static const MethodSpec spec_discard = { "discard", ACTION_MODIFY, OBJECT_DISK, discard_start };
static const MethodSpec spec_create = { "create", ACTION_MODIFY, OBJECT_DISK, create_start };
static const MethodSpec spec_create_diff = { "create-diff", ACTION_MODIFY, OBJECT_DISK, create_diff_start };
static const MethodSpec spec_copy = { "copy", ACTION_MODIFY, OBJECT_DISK, copy_start };
static const MethodSpec spec_merge = { "merge", ACTION_MODIFY, OBJECT_DISK, merge_start };
static const MethodSpec spec_merge_images = { "merge", ACTION_MODIFY, OBJECT_DISK, merge_images_start };
static const MethodSpec spec_compact = { "compact", ACTION_MODIFY, OBJECT_DISK, compact_start };
static const MethodSpec spec_resize = { "resize", ACTION_MODIFY, OBJECT_DISK, resize_start };
static const MethodSpec spec_check = { "check", ACTION_OPEN, OBJECT_DISK, check_start };
static const MethodSpec spec_repair = { "repair", ACTION_MODIFY, OBJECT_DISK, repair_start };
static const MethodSpec spec_compare = { "compare", ACTION_OPEN, OBJECT_DISK, compare_start };
static const MethodSpec spec_copy_to = { "copy-to", ACTION_MODIFY, OBJECT_DISK, copy_to_start };
static const MethodSpec spec_rebase = { "rebase", ACTION_MODIFY, OBJECT_DISK, rebase_start };

static int read_fd_arg(Call *c, sd_bus_message *msg, uint32_t fd_flags, sd_bus_error *error) {
        int fd, r;

        r = sd_bus_message_read(msg, "h", &fd);
        if (r < 0)
                return fd_read_failed(r, error);
        return fd_accept(fd, fd_flags, "fd", &c->fd, &c->fd_writable, error);
}

/* The format argument, resolved here, before polkit: an alias or another
 * spelling ("file", "raw", "Vdi") becomes the backend's one name ("RAW",
 * "VDI"), which is what the `new-format` detail carries and the worker uses. */
static int read_format_arg(Call *c, sd_bus_message *msg, bool required, sd_bus_error *error) {
        const vdisk_backend_info *be = NULL;
        const char *format;
        int r;

        r = sd_bus_message_read(msg, "s", &format);
        if (r < 0)
                return r;
        if (required && !format[0])
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The format must be given");
        if (format[0]) {
                be = vdisk_backend_find(format);
                if (!be)
                        return set_error(error, ERROR_PREFIX "UnknownFormat", "Unknown image format '%s'", format);
        }
        c->format = strdup(be ? be->name : "");
        return c->format ? 0 : -ENOMEM;
}

static int new_call(sd_bus_message *msg, void *userdata, const MethodSpec *spec, Call **ret) {
        Disk *d = userdata;

        return call_new(d->manager, msg, spec, ret);
}

static int method_open(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_open, &c);
        if (r >= 0)
                r = read_fd_arg(c, msg, 0, error);
        if (r >= 0)
                r = read_format_arg(c, msg, false, error);
        if (r >= 0)
                r = options_parse(msg, OPT_READ_ONLY | OPT_DISPLAY_NAME | OPT_FILES | OPT_FILE_SET, &c->options,
                                  error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_create_base(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_create, &c);
        if (r >= 0)
                r = read_fd_arg(c, msg, FD_NEED_WRITE | FD_NEED_EMPTY, error);
        if (r >= 0)
                r = read_format_arg(c, msg, true, error);
        if (r >= 0)
                r = sd_bus_message_read(msg, "t", &c->t1);
        if (r >= 0)
                r = options_parse(msg, OPT_VARIANT | OPT_BLOCK_SIZE | OPT_UUID | OPT_COMMENT | OPT_PCHS | OPT_LCHS |
                                  OPT_FORMAT_OPTIONS | OPT_DISPLAY_NAME | OPT_FILES | OPT_FILE_SET | OPT_PREALLOCATION,
                                  &c->options, error);
        if (r < 0)
                return r;
        if (c->t1 == 0)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The size must not be 0");
        if (c->t1 > IMAGE_SIZE_MAX)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                 "The size is beyond the largest image size (%" PRIu64 " bytes)",
                                 (uint64_t) IMAGE_SIZE_MAX);
        return call_dispatch(TAKE_PTR(c));
}

static int method_create_diff(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_create_diff, &c);
        if (r >= 0)
                r = read_fd_arg(c, msg, FD_NEED_WRITE | FD_NEED_EMPTY, error);
        if (r >= 0)
                r = read_format_arg(c, msg, true, error);
        if (r >= 0)
                r = options_parse(msg, OPT_UUID | OPT_COMMENT | OPT_SIZE | OPT_BLOCK_SIZE | OPT_FORMAT_OPTIONS |
                                  OPT_DISPLAY_NAME | OPT_FILES | OPT_FILE_SET | OPT_PREALLOCATION | OPT_PARENT_NAME,
                                  &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_copy(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_copy, &c);
        if (r >= 0)
                r = read_fd_arg(c, msg, FD_NEED_WRITE | FD_NEED_EMPTY, error);
        if (r >= 0)
                r = read_format_arg(c, msg, true, error);
        if (r >= 0)
                r = options_parse(msg, OPT_SIZE | OPT_VARIANT | OPT_BLOCK_SIZE | OPT_UUID | OPT_COMMENT |
                                  OPT_FORMAT_OPTIONS | OPT_SPARSE_SIZE | OPT_OPEN | OPT_DISPLAY_NAME |
                                  OPT_DIRECT_FD | OPT_PERSIST | OPT_FILES | OPT_FILE_SET | OPT_PREALLOCATION |
                                  OPT_COMPRESS | OPT_DIRECT_ONLY,
                                  &c->options, error);
        if (r < 0)
                return r;
        if (c->options.persist && !c->options.open)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Option 'persist' needs option 'open'");
        if (c->options.direct_only && !(c->options.set & OPT_DIRECT_FD))
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Option 'direct-only' needs option 'direct-fd'");
        return call_dispatch(TAKE_PTR(c));
}

/* Compare(o other, a{sv}), CopyTo(o target, a{sv}). */
static int method_two_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error, const MethodSpec *spec,
                           uint32_t allowed) {
        _cleanup_(call_freep) Call *c = NULL;
        const char *other;
        int r;

        r = new_call(msg, userdata, spec, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "o", &other);
        if (r < 0)
                return r;
        c->image_paths[0] = strdup(other);
        if (!c->image_paths[0])
                return -ENOMEM;
        r = options_parse(msg, allowed, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_compare(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_two_disk(msg, userdata, error, &spec_compare, OPT_STRICT);
}

static int method_copy_to(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_two_disk(msg, userdata, error, &spec_copy_to,
                               OPT_TARGET_IS_ZERO | OPT_SOURCE_TOP_ONLY | OPT_COMPRESS |
                                       OPT_DIRECT_FD);
}

/* Rebase(o backing, a{sv}): backing "/" for none. */
static int method_rebase(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_two_disk(msg, userdata, error, &spec_rebase, OPT_UNSAFE | OPT_PARENT_NAME);
}

static int method_close(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_close, &c);
        if (r >= 0)
                r = options_parse(msg, OPT_TOP_ONLY, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_merge(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_merge, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "uu", &c->u1, &c->u2);
        if (r >= 0)
                r = options_parse(msg, OPT_DIRECT_FD, &c->options, error);
        if (r < 0)
                return r;
        /* The chain may change before the call runs: the indices are checked
         * against it there (start_operation), still before any Operation. */
        if (c->u1 == c->u2)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Merge needs two different images");
        if (c->u1 >= VDISK_CHAIN_MAX || c->u2 >= VDISK_CHAIN_MAX)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "A chain holds at most %d images",
                                 VDISK_CHAIN_MAX);
        return call_dispatch(TAKE_PTR(c));
}

static int method_merge_images(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        const char *from, *to;
        int r;

        r = new_call(msg, userdata, &spec_merge_images, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "oo", &from, &to);
        if (r < 0)
                return r;
        if (streq(from, to))
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Merge needs two different images");
        c->image_paths[0] = strdup(from);
        c->image_paths[1] = strdup(to);
        if (!c->image_paths[0] || !c->image_paths[1])
                return -ENOMEM;
        r = options_parse(msg, OPT_DIRECT_FD, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_index_op(sd_bus_message *msg, void *userdata, sd_bus_error *error, const MethodSpec *spec,
                           uint32_t allowed) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, spec, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "u", &c->u1);
        if (r >= 0)
                r = options_parse(msg, allowed, &c->options, error);
        if (r < 0)
                return r;
        if (c->u1 >= VDISK_CHAIN_MAX)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "A chain holds at most %d images",
                                 VDISK_CHAIN_MAX);
        return call_dispatch(TAKE_PTR(c));
}

static int method_compact(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_index_op(msg, userdata, error, &spec_compact, OPT_DIRECT_FD);
}

static int method_check(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_index_op(msg, userdata, error, &spec_check, 0);
}

static int method_repair(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_index_op(msg, userdata, error, &spec_repair, OPT_DRY_RUN | OPT_LEAKS_ONLY | OPT_DIRECT_FD);
}

static int method_resize(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_resize, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "t", &c->t1);
        if (r >= 0)
                r = options_parse(msg, OPT_ALLOW_SHRINK | OPT_PREALLOCATION | OPT_DIRECT_FD, &c->options, error);
        if (r < 0)
                return r;
        if (c->t1 == 0)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The size must not be 0");
        if (c->t1 > IMAGE_SIZE_MAX)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS,
                                 "The size is beyond the largest image size (%" PRIu64 " bytes)",
                                 (uint64_t) IMAGE_SIZE_MAX);
        /* A Disk's size is whole sectors: an odd size would be rounded. */
        if (c->t1 % 512)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The size must be a multiple of 512");
        return call_dispatch(TAKE_PTR(c));
}

static int method_flush(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_flush, &c);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_read(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_read, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "tu", &c->t1, &c->u1);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        if (c->u1 > IO_MAX)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Read at most %u bytes at once", IO_MAX);
        return call_dispatch(TAKE_PTR(c));
}

static int method_write(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        const void *p;
        size_t n;
        int r;

        r = new_call(msg, userdata, &spec_write, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "t", &c->t1);
        if (r >= 0)
                r = sd_bus_message_read_array(msg, 'y', &p, &n);
        if (r < 0)
                return r;
        if (n > IO_MAX)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Write at most %u bytes at once", IO_MAX);
        c->data = malloc(n ? n : 1);
        if (!c->data)
                return -ENOMEM;
        if (n)
                memcpy(c->data, p, n);
        c->data_size = n;
        r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_discard(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = new_call(msg, userdata, &spec_discard, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "tt", &c->t1, &c->t2);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

/* ---------------------------------------------------------------- vtable */

#define EMITS SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE
#define CONST SD_BUS_VTABLE_PROPERTY_CONST
#define UNPRIV SD_BUS_VTABLE_UNPRIVILEGED

const sd_bus_vtable disk_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Images", "ao", property_get_images, 0, EMITS),
        SD_BUS_PROPERTY("Size", "t", NULL, offsetof(Disk, size), EMITS),
        SD_BUS_PROPERTY("SectorSize", "u", property_get_sector_size, 0, CONST),
        SD_BUS_PROPERTY("ReadOnly", "b", NULL, offsetof(Disk, read_only), EMITS),
        SD_BUS_PROPERTY("PCHSGeometry", "(uuu)", property_get_geometry, offsetof(Disk, pchs), EMITS),
        SD_BUS_PROPERTY("LCHSGeometry", "(uuu)", property_get_geometry, offsetof(Disk, lchs), EMITS),
        SD_BUS_PROPERTY("OwnerUID", "u", property_get_owner, 0, CONST),
        SD_BUS_PROPERTY("DisplayName", "s", property_get_string, offsetof(Disk, display_name), CONST),
        SD_BUS_PROPERTY("Operation", "o", property_get_operation, 0, EMITS),
        SD_BUS_PROPERTY("Persistent", "b", property_get_persistent, 0, CONST),
        SD_BUS_METHOD_WITH_NAMES("Open", "hsa{sv}", SD_BUS_PARAM(fd) SD_BUS_PARAM(format) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(image), method_open, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("CreateBase", "hsta{sv}",
                                 SD_BUS_PARAM(fd) SD_BUS_PARAM(format) SD_BUS_PARAM(size) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_create_base, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("CreateDiff", "hsa{sv}",
                                 SD_BUS_PARAM(fd) SD_BUS_PARAM(format) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_create_diff, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Close", "a{sv}", SD_BUS_PARAM(options), "", , method_close, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Copy", "hsa{sv}", SD_BUS_PARAM(fd) SD_BUS_PARAM(format) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_copy, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Merge", "uua{sv}", SD_BUS_PARAM(from) SD_BUS_PARAM(to) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_merge, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("MergeImages", "ooa{sv}",
                                 SD_BUS_PARAM(from) SD_BUS_PARAM(to) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_merge_images, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Compact", "ua{sv}", SD_BUS_PARAM(image) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_compact, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Resize", "ta{sv}", SD_BUS_PARAM(size) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_resize, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Check", "ua{sv}", SD_BUS_PARAM(image) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_check, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Repair", "ua{sv}", SD_BUS_PARAM(image) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_repair, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Compare", "oa{sv}", SD_BUS_PARAM(other) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_compare, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("CopyTo", "oa{sv}", SD_BUS_PARAM(target) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_copy_to, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Rebase", "oa{sv}", SD_BUS_PARAM(backing) SD_BUS_PARAM(options),
                                 "o", SD_BUS_PARAM(operation), method_rebase, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Flush", "a{sv}", SD_BUS_PARAM(options), "", , method_flush, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Read", "tua{sv}", SD_BUS_PARAM(offset) SD_BUS_PARAM(length) SD_BUS_PARAM(options),
                                 "ay", SD_BUS_PARAM(data), method_read, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Write", "taya{sv}", SD_BUS_PARAM(offset) SD_BUS_PARAM(data) SD_BUS_PARAM(options),
                                 "", , method_write, UNPRIV),
        SD_BUS_METHOD_WITH_NAMES("Discard", "tta{sv}",
                                 SD_BUS_PARAM(offset) SD_BUS_PARAM(length) SD_BUS_PARAM(options),
                                 "", , method_discard, UNPRIV),
        SD_BUS_VTABLE_END,
};
