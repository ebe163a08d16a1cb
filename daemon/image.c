/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Image objects (/org/vdisk/VDisk1/image/<n>): one image file of a Disk. The
 * properties are the cache the disk's tasks refresh; SetComment and SetUuids
 * run on the disk's queue like every other file access.
 */
#include <stdio.h>
#include <string.h>

#include "vdiskd.h"

int image_info_copy(ImageInfo *dst, const ImageInfo *src) {
        ImageInfo n = *src;

        n.snapshots = NULL;
        n.n_snapshots = 0;
        n.comment = strdup(src->comment ?: "");
        n.variant = strdup(src->variant ?: "");
        n.io_name = strdup(src->io_name ?: "");
        if (!n.comment || !n.variant || !n.io_name || snapshots_copy(&n, src) < 0) {
                image_info_clear(&n);
                return -ENOMEM;
        }
        image_info_clear(dst);
        *dst = n;
        return 0;
}

int image_new(Manager *m, Disk *d, uint64_t id, const char *display_name, const ImageInfo *info, Image **ret) {
        Image *i;
        int r;

        i = calloc(1, sizeof *i);
        if (!i)
                return -ENOMEM;
        i->manager = m;
        i->n_ref = 1;
        i->disk = d;
        i->id = id;
        r = image_info_copy(&i->info, info);
        if (r < 0) {
                free(i);
                return r;
        }
        i->display_name = strdup(display_name ?: "");
        if (!i->display_name || asprintf(&i->path, ROOT_PATH "/image/%" PRIu64, id) < 0) {
                i->path = NULL;
                image_unref(i);
                return -ENOMEM;
        }
        *ret = i;
        return 0;
}

Image *image_ref(Image *i) {
        if (i)
                i->n_ref++;
        return i;
}

Image *image_unref(Image *i) {
        if (!i)
                return NULL;
        assert(i->n_ref > 0);
        if (--i->n_ref > 0)
                return NULL;
        image_info_clear(&i->info);
        free(i->display_name);
        free(i->path);
        free(i);
        return NULL;
}

int image_export(Image *i) {
        int r;

        r = sd_bus_add_object_vtable(i->manager->bus, &i->slot, i->path, IFACE_IMAGE, image_vtable, i);
        if (r < 0) {
                log_error("Failed to export %s: %s", i->path, strerror(-r));
                return r;
        }
        i->exported = true;
        emit_object_added(i->manager, OBJECT_IMAGE, i);
        return 0;
}

/* The image left its disk's chain (closed by the library): unexport it and
 * drop the disk's reference. */
void image_remove(Image *i) {
        if (i->exported) {
                emit_object_removed(i->manager, OBJECT_IMAGE, i);
                i->slot = sd_bus_slot_unref(i->slot);
                i->exported = false;
        }
        i->gone = true;
        i->disk = NULL;
        image_unref(i);
}

int image_update(Image *i, const ImageInfo *n, const char **changed, size_t max) {
        const ImageInfo *o = &i->info;
        ImageInfo kept;
        size_t k = 0;

#define CHANGED(name) do { if (k + 1 < max) changed[k++] = name; } while (0)
        if (o->index != n->index)
                CHANGED("Index");
        if (o->version != n->version)
                CHANGED("Version");
        if (!streq(o->uuid, n->uuid))
                CHANGED("Uuid");
        if (!streq(o->modification_uuid, n->modification_uuid))
                CHANGED("ModificationUuid");
        if (!streq(o->parent_uuid, n->parent_uuid))
                CHANGED("ParentUuid");
        if (!streq(o->parent_modification_uuid, n->parent_modification_uuid))
                CHANGED("ParentModificationUuid");
        if (!streq(o->comment ?: "", n->comment ?: ""))
                CHANGED("Comment");
        if (!streq(o->variant ?: "", n->variant ?: ""))
                CHANGED("Variant");
        if (o->flags != n->flags)
                CHANGED("Flags");
        if (o->size != n->size)
                CHANGED("Size");
        if (o->file_size != n->file_size)
                CHANGED("FileSize");
        if (o->cluster_size != n->cluster_size)
                CHANGED("ClusterSize");
        if (o->dirty != n->dirty)
                CHANGED("Dirty");
        if (memcmp(o->pchs, n->pchs, sizeof o->pchs) != 0)
                CHANGED("PCHSGeometry");
        if (memcmp(o->lchs, n->lchs, sizeof o->lchs) != 0)
                CHANGED("LCHSGeometry");
        if (o->read_only != n->read_only)
                CHANGED("ReadOnly");
        if (n->have_snapshots && !snapshots_equal(o, n)) {
                CHANGED("Snapshots");
                if (o->snapshot_count != n->snapshot_count)
                        CHANGED("SnapshotCount");
        }
#undef CHANGED
        changed[k] = NULL;
        if (!n->have_snapshots) {
                /* This read left the snapshots out: they are as they were. */
                kept = *n;
                kept.have_snapshots = o->have_snapshots;
                kept.snapshots = o->snapshots;
                kept.n_snapshots = o->n_snapshots;
                kept.snapshot_count = o->snapshot_count;
                n = &kept;
        }
        return image_info_copy(&i->info, n);
}

/* ---------------------------------------------------------------- properties */

static int property_get_disk(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Image *i = userdata;

        return sd_bus_message_append(reply, "o", i->disk ? i->disk->path : "/");
}

static int property_get_format(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Image *i = userdata;
        const vdisk_backend_info *b = i->info.backend;

        if (streq(property, "Format"))
                return sd_bus_message_append(reply, "s", b->name);
        if (streq(property, "QemuFormat"))
                return sd_bus_message_append(reply, "s", b->qemu_name);
        return sd_bus_message_append(reply, "s", media_type_name(b->media));
}

static int property_get_text(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", (const char *) userdata);
}

static int property_get_string_ptr(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        char **s = userdata;

        return sd_bus_message_append(reply, "s", *s ?: "");
}

static int property_get_geometry(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        const uint32_t *g = userdata;

        return sd_bus_message_append(reply, "(uuu)", g[0], g[1], g[2]);
}

static int property_get_index(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Image *i = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) i->info.index);
}

/* a(ssttttt): id, name, vm-state size, date (µs), vm clock (ns), disk size,
 * icount (UINT64_MAX: not recorded). */
static int property_get_snapshots(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Image *i = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(ssttttt)");
        if (r < 0)
                return r;
        for (unsigned k = 0; k < i->info.n_snapshots; k++) {
                const SnapshotInfo *e = &i->info.snapshots[k];

                r = sd_bus_message_append(reply, "(ssttttt)", e->id, e->name, e->vm_state_size, e->date_usec,
                                          e->vm_clock_nsec, e->disk_size, e->icount);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_snapshot_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Image *i = userdata;

        return sd_bus_message_append(reply, "u", (uint32_t) i->info.snapshot_count);
}

/* ---------------------------------------------------------------- methods */

/* The short methods of an Image, which run as image tasks. */
typedef enum ImageTaskKind {
        IMAGE_SET_COMMENT,
        IMAGE_SET_UUIDS,
        IMAGE_SNAPSHOT_CREATE,          /* the snapshot methods last (image_snapshot_run) */
        IMAGE_SNAPSHOT_DELETE,
        IMAGE_SNAPSHOT_APPLY,
} ImageTaskKind;

/* What identifies the target image, copied from the cache when the call is
 * queued (the worker never reads the Image object), and what to do. */
typedef struct ImageRef {
        ImageTaskKind kind;
        const void *key;
        unsigned index;
        char uuid[37];
        bool missing;                   /* worker: not in the chain any more */
} ImageRef;

static void image_task_done(Task *t, bool cancelled) {
        Call *c = container_of(t, Call, task);
        ImageRef *ref = c->result;

        if (cancelled) {
                call_fail(c, -ESHUTDOWN, NULL, "vdiskd is stopping");
                return;
        }
        if (c->image->gone || !c->disk->vd) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The image was closed");
                return;
        }
        disk_apply_info(c->disk, &c->info, NULL, 0);
        if (ref->missing) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The image is not part of its disk any more");
                return;
        }
        if (c->outcome.r < 0)
                call_reply_outcome(c);
        else
                call_reply_empty(c);
}

static const char *const uuid_keys[4] = { "uuid", "modification-uuid", "parent-uuid", "parent-modification-uuid" };

/* Worker: the library's image the call is about, looked up in the live chain.
 * The cached key is compared, never dereferenced: if a snapshot failed after
 * the chain changed (Close top-only, merge), it may name a freed image. The
 * UUID guards against a new image allocated at the same address. */
static vdisk_image *image_resolve(vdisk_disk *vd, const ImageRef *ref) {
        unsigned n = vdisk_disk_count(vd);

        for (unsigned i = 0; i < n; i++) {
                vdisk_image *img = vdisk_disk_image(vd, (ref->index + i) % n);
                char uuid[37] = "";
                uint8_t u[16];

                if ((const void *) img != ref->key)
                        continue;
                if (vdisk_image_get_uuid(img, u) >= 0 && !vdisk_uuid_is_null(u))
                        vdisk_uuid_format(u, uuid);
                if (streq(uuid, ref->uuid))
                        return img;
        }
        return NULL;
}

/* Worker: CreateSnapshot, DeleteSnapshot, ApplySnapshot on the top image
 * (the library's snapshot calls act on the top: the start checked that img
 * is it, and the chain cannot have changed since, as calls on a Disk run
 * one at a time). The info read after includes the snapshots. */
static void image_snapshot_run(Call *c, vdisk_disk *vd, vdisk_image *img) {
        ImageRef *ref = c->result;
        unsigned n = vdisk_disk_count(vd);
        int r;

        if (n == 0 || vdisk_disk_image(vd, n - 1) != img) {
                outcome_setf(&c->outcome, -EINVAL, "snapshots are changed in the disk's top image only");
                r = -EINVAL;
        } else if (ref->kind == IMAGE_SNAPSHOT_CREATE)
                r = vdisk_disk_snapshot_create(vd, c->text);
        else if (ref->kind == IMAGE_SNAPSHOT_DELETE)
                r = vdisk_disk_snapshot_delete(vd, c->text);
        else
                r = vdisk_disk_snapshot_apply(vd, c->text);
        /* No such snapshot is an argument the library refused, not a
         * missing file (ENOENT's FileNeeded). */
        if (c->outcome.r >= 0)
                outcome_set(&c->outcome, r == -ENOENT ? -EINVAL : r);
        if (disk_info_read(vd, &c->info) >= 0)
                (void) disk_info_read_snapshots(vd, &c->info);
}

static void image_task_run(Task *t) {
        Call *c = container_of(t, Call, task);
        ImageRef *ref = c->result;
        vdisk_disk *vd = c->disk->vd;
        vdisk_image *img;
        int r = 0;

        vdisk_clear_error();
        if (!vd)
                return;
        img = image_resolve(vd, ref);
        if (!img) {
                ref->missing = true;
                /* The cache was stale: refresh it, which removes the Image. */
                (void) disk_info_read(vd, &c->info);
                return;
        }
        if (ref->kind >= IMAGE_SNAPSHOT_CREATE) {
                image_snapshot_run(c, vd, img);
                return;
        }
        if (ref->kind == IMAGE_SET_COMMENT) {
                r = vdisk_image_set_comment(img, c->text[0] ? c->text : NULL);
        } else {
                static int (*const setters[4])(vdisk_image *, const uint8_t[16]) = {
                        vdisk_image_set_uuid,
                        vdisk_image_set_modification_uuid,
                        vdisk_image_set_parent_uuid,
                        vdisk_image_set_parent_modification_uuid,
                };
                for (size_t k = 0; r >= 0 && k < ELEMENTSOF(setters); k++) {
                        uint8_t u[16];

                        if (!c->uuids[k])
                                continue;
                        if (!c->uuids[k][0])
                                vdisk_uuid_generate(u);
                        else if (vdisk_uuid_parse(c->uuids[k], u) < 0) {
                                r = -EINVAL;
                                break;
                        }
                        r = setters[k](img, u);
                }
        }
        outcome_set(&c->outcome, r);
        (void) disk_info_read(vd, &c->info);
}

static ImageTaskKind image_task_kind(const MethodSpec *spec);

/* CreateSnapshot, DeleteSnapshot, ApplySnapshot: refused at once (no
 * worker) where the write cannot be done, as Compact is: the disk's top
 * image, writable. */
static bool image_snapshot_allowed(Call *c, Image *i, Disk *d) {
        const char *name = i->display_name[0] ? i->display_name : i->path;

        if (i->info.index + 1 != d->n_images) {
                call_fail(c, -EINVAL, NULL, "%s: snapshots are changed in the disk's top image only (this is "
                          "image %u of %u)", name, i->info.index, d->n_images);
                return false;
        }
        if (d->read_only || i->info.read_only) {
                call_fail(c, -EROFS, NULL, "%s: the image is read-only", name);
                return false;
        }
        return true;
}

static int image_task_start(Call *c) {
        Image *i = call_target(c);
        ImageRef *ref;
        Disk *d;

        if (!i) {
                call_fail(c, 0, SD_BUS_ERROR_UNKNOWN_OBJECT, "The image does not exist (any more)");
                return 0;
        }
        d = i->disk;
        if (d->operation) {
                call_fail(c, -EBUSY, NULL, "%s: the disk runs an operation (%s)",
                          i->display_name[0] ? i->display_name : i->path, d->operation->path);
                return 0;
        }
        ref = calloc(1, sizeof *ref);
        if (!ref)
                return -ENOMEM;
        ref->kind = image_task_kind(c->spec);
        if (ref->kind >= IMAGE_SNAPSHOT_CREATE && !image_snapshot_allowed(c, i, d)) {
                free(ref);
                return 0;
        }
        ref->key = i->info.key;
        ref->index = i->info.index;
        memcpy(ref->uuid, i->info.uuid, sizeof ref->uuid);
        c->result = ref;
        c->result_free = free;
        c->image = image_ref(i);
        c->disk = disk_ref(d);
        return call_submit(c, d, image_task_run, image_task_done);
}

static const MethodSpec spec_set_comment = { "set-comment", "org.vdisk.vdisk1.modify", OBJECT_IMAGE,
                                             image_task_start };
static const MethodSpec spec_set_uuids = { "set-uuids", "org.vdisk.vdisk1.modify", OBJECT_IMAGE,
                                           image_task_start };

static const MethodSpec spec_create_snapshot = { "create-snapshot", "org.vdisk.vdisk1.modify", OBJECT_IMAGE,
                                                 image_task_start };
static const MethodSpec spec_delete_snapshot = { "delete-snapshot", "org.vdisk.vdisk1.modify", OBJECT_IMAGE,
                                                 image_task_start };
static const MethodSpec spec_apply_snapshot = { "apply-snapshot", "org.vdisk.vdisk1.modify", OBJECT_IMAGE,
                                                image_task_start };

static ImageTaskKind image_task_kind(const MethodSpec *spec) {
        if (spec == &spec_set_comment)
                return IMAGE_SET_COMMENT;
        if (spec == &spec_create_snapshot)
                return IMAGE_SNAPSHOT_CREATE;
        if (spec == &spec_delete_snapshot)
                return IMAGE_SNAPSHOT_DELETE;
        if (spec == &spec_apply_snapshot)
                return IMAGE_SNAPSHOT_APPLY;
        return IMAGE_SET_UUIDS;
}

/* Compact, Check, Repair: the Disk's operations on this image (disk.c). */
static int compact_start(Call *c) { return disk_start_image_operation(c, OP_COMPACT); }
static int check_start(Call *c) { return disk_start_image_operation(c, OP_CHECK); }
static int repair_start(Call *c) { return disk_start_image_operation(c, OP_REPAIR); }

static const MethodSpec spec_compact = { "compact", "org.vdisk.vdisk1.modify", OBJECT_IMAGE, compact_start };
static const MethodSpec spec_check = { "check", "org.vdisk.vdisk1.open", OBJECT_IMAGE, check_start };
static const MethodSpec spec_repair = { "repair", "org.vdisk.vdisk1.modify", OBJECT_IMAGE, repair_start };

static int method_image_op(sd_bus_message *msg, void *userdata, sd_bus_error *error, const MethodSpec *spec,
                           uint32_t allowed) {
        Image *i = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(i->manager, msg, spec, &c);
        if (r >= 0)
                r = options_parse(msg, allowed, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_compact(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_image_op(msg, userdata, error, &spec_compact, OPT_DIRECT_FD);
}

static int method_check(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_image_op(msg, userdata, error, &spec_check, 0);
}

static int method_repair(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_image_op(msg, userdata, error, &spec_repair, OPT_DRY_RUN | OPT_LEAKS_ONLY | OPT_DIRECT_FD);
}

/* The methods whose argument is one string (s, a{sv}): SetComment and the
 * snapshot methods. It is checked here (length, empty) and kept in c->text. */
static int method_text(sd_bus_message *msg, void *userdata, sd_bus_error *error, const MethodSpec *spec,
                       const char *what, unsigned max, bool may_be_empty) {
        Image *i = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        const char *arg;
        int r;

        r = call_new(i->manager, msg, spec, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "s", &arg);
        if (r < 0)
                return r;
        if (!may_be_empty && !arg[0])
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The %s must be given", what);
        if (strlen(arg) > max)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The %s is longer than %u bytes", what, max);
        c->text = strdup(arg);
        if (!c->text)
                return -ENOMEM;
        r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

static int method_set_comment(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_text(msg, userdata, error, &spec_set_comment, "comment", COMMENT_MAX, true);
}

static int method_create_snapshot(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_text(msg, userdata, error, &spec_create_snapshot, "snapshot name", SNAPSHOT_NAME_MAX, true);
}

static int method_delete_snapshot(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_text(msg, userdata, error, &spec_delete_snapshot, "snapshot id or name", SNAPSHOT_NAME_MAX,
                           false);
}

static int method_apply_snapshot(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_text(msg, userdata, error, &spec_apply_snapshot, "snapshot id or name", SNAPSHOT_NAME_MAX,
                           false);
}

static int method_set_uuids(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Image *i = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        int r;

        r = call_new(i->manager, msg, &spec_set_uuids, &c);
        if (r >= 0)
                r = sd_bus_message_enter_container(msg, 'a', "{ss}");
        if (r < 0)
                return r;
        for (;;) {
                const char *k, *v;
                size_t idx = ELEMENTSOF(uuid_keys);
                uint8_t u[16];

                r = sd_bus_message_read(msg, "{ss}", &k, &v);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                for (size_t j = 0; j < ELEMENTSOF(uuid_keys); j++)
                        if (streq(uuid_keys[j], k))
                                idx = j;
                if (idx == ELEMENTSOF(uuid_keys))
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown UUID key '%s'", k);
                if (c->uuids[idx])
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "UUID key '%s' given twice", k);
                if (v[0] && vdisk_uuid_parse(v, u) < 0)
                        return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "'%s' is not a valid UUID", k);
                c->uuids[idx] = strdup(v);
                if (!c->uuids[idx])
                        return -ENOMEM;
        }
        r = sd_bus_message_exit_container(msg);
        if (r >= 0)
                r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
}

/* ---------------------------------------------------------------- vtable */

#define EMITS SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE
#define CONST SD_BUS_VTABLE_PROPERTY_CONST
#define INFO(field) (offsetof(Image, info) + offsetof(ImageInfo, field))

const sd_bus_vtable image_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Disk", "o", property_get_disk, 0, CONST),
        SD_BUS_PROPERTY("Index", "u", property_get_index, 0, EMITS),
        SD_BUS_PROPERTY("Format", "s", property_get_format, 0, CONST),
        SD_BUS_PROPERTY("QemuFormat", "s", property_get_format, 0, CONST),
        SD_BUS_PROPERTY("MediaType", "s", property_get_format, 0, CONST),
        SD_BUS_PROPERTY("Version", "u", NULL, INFO(version), EMITS),
        SD_BUS_PROPERTY("Uuid", "s", property_get_text, INFO(uuid), EMITS),
        SD_BUS_PROPERTY("ModificationUuid", "s", property_get_text, INFO(modification_uuid), EMITS),
        SD_BUS_PROPERTY("ParentUuid", "s", property_get_text, INFO(parent_uuid), EMITS),
        SD_BUS_PROPERTY("ParentModificationUuid", "s", property_get_text, INFO(parent_modification_uuid), EMITS),
        SD_BUS_PROPERTY("Comment", "s", property_get_string_ptr, INFO(comment), EMITS),
        SD_BUS_PROPERTY("Variant", "s", property_get_string_ptr, INFO(variant), EMITS),
        SD_BUS_PROPERTY("Flags", "u", NULL, INFO(flags), EMITS),
        SD_BUS_PROPERTY("Size", "t", NULL, INFO(size), EMITS),
        SD_BUS_PROPERTY("FileSize", "t", NULL, INFO(file_size), EMITS),
        SD_BUS_PROPERTY("ClusterSize", "u", NULL, INFO(cluster_size), EMITS),
        SD_BUS_PROPERTY("Dirty", "b", NULL, INFO(dirty), EMITS),
        SD_BUS_PROPERTY("PCHSGeometry", "(uuu)", property_get_geometry, INFO(pchs), EMITS),
        SD_BUS_PROPERTY("LCHSGeometry", "(uuu)", property_get_geometry, INFO(lchs), EMITS),
        SD_BUS_PROPERTY("ReadOnly", "b", NULL, INFO(read_only), EMITS),
        SD_BUS_PROPERTY("DisplayName", "s", property_get_string_ptr, offsetof(Image, display_name), CONST),
        SD_BUS_PROPERTY("SnapshotCount", "u", property_get_snapshot_count, 0, EMITS),
        SD_BUS_PROPERTY("Snapshots", "a(ssttttt)", property_get_snapshots, 0,
                        SD_BUS_VTABLE_PROPERTY_EXPLICIT | SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION),
        SD_BUS_METHOD_WITH_NAMES("SetComment", "sa{sv}", SD_BUS_PARAM(comment) SD_BUS_PARAM(options), "", ,
                                 method_set_comment, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("SetUuids", "a{ss}a{sv}", SD_BUS_PARAM(uuids) SD_BUS_PARAM(options), "", ,
                                 method_set_uuids, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Compact", "a{sv}", SD_BUS_PARAM(options), "o", SD_BUS_PARAM(operation),
                                 method_compact, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Check", "a{sv}", SD_BUS_PARAM(options), "o", SD_BUS_PARAM(operation),
                                 method_check, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Repair", "a{sv}", SD_BUS_PARAM(options), "o", SD_BUS_PARAM(operation),
                                 method_repair, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("CreateSnapshot", "sa{sv}", SD_BUS_PARAM(name) SD_BUS_PARAM(options), "", ,
                                 method_create_snapshot, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("DeleteSnapshot", "sa{sv}", SD_BUS_PARAM(snapshot) SD_BUS_PARAM(options), "", ,
                                 method_delete_snapshot, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("ApplySnapshot", "sa{sv}", SD_BUS_PARAM(snapshot) SD_BUS_PARAM(options), "", ,
                                 method_apply_snapshot, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};
