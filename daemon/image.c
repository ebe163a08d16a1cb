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

        n.comment = strdup(src->comment ?: "");
        n.variant = strdup(src->variant ?: "");
        n.io_name = strdup(src->io_name ?: "");
        if (!n.comment || !n.variant || !n.io_name) {
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
#undef CHANGED
        changed[k] = NULL;
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

/* ---------------------------------------------------------------- methods */

/* What identifies the target image, copied from the cache when the call is
 * queued (the worker never reads the Image object). */
typedef struct ImageRef {
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
        if (c->text) {   /* SetComment */
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

static int method_set_comment(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Image *i = userdata;
        _cleanup_(call_freep) Call *c = NULL;
        const char *comment;
        int r;

        r = call_new(i->manager, msg, &spec_set_comment, &c);
        if (r >= 0)
                r = sd_bus_message_read(msg, "s", &comment);
        if (r < 0)
                return r;
        if (strlen(comment) > COMMENT_MAX)
                return set_error(error, SD_BUS_ERROR_INVALID_ARGS, "The comment is longer than %u bytes",
                                 COMMENT_MAX);
        c->text = strdup(comment);
        if (!c->text)
                return -ENOMEM;
        r = options_parse(msg, 0, &c->options, error);
        if (r < 0)
                return r;
        return call_dispatch(TAKE_PTR(c));
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
        SD_BUS_VTABLE_END,
};
