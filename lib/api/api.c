/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Public entry points of the data path and the image accessors: argument
 * checks, the per-disk lock, and nothing else. */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

static int check_range(vdisk_disk *d, uint64_t offset, uint64_t len) {
        if (d->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        if (!range_within(offset, len, d->images[d->n - 1]->size))
                return vdisk_error(-EINVAL, "%s: range %" PRIu64 "+%" PRIu64 " beyond the end of the disk (%" PRIu64
                                   " bytes)", vdisk_io_name(d->images[d->n - 1]->io), offset, len,
                                   d->images[d->n - 1]->size);
        return 0;
}

/* A merge that takes the top out of the chain has copied what the top held:
 * a write into it now would be lost. */
static int check_writable_now(vdisk_disk *d) {
        if (d->top_leaving)
                return vdisk_error(-EBUSY, "%s: a merge is moving this image's data into its parent",
                                   vdisk_io_name(d->images[d->n - 1]->io));
        return 0;
}

int vdisk_disk_read(vdisk_disk *d, void *buf, size_t len, uint64_t offset) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!d || (!buf && len))
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        r = check_range(d, offset, len);
        if (r < 0 || len == 0)
                return r;
        return rw_read(d, d->n - 1, buf, len, offset);
}

int vdisk_disk_write(vdisk_disk *d, const void *buf, size_t len, uint64_t offset) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!d || (!buf && len))
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        r = check_range(d, offset, len);
        if (r < 0 || len == 0)
                return r;
        r = check_writable_now(d);
        if (r < 0)
                return r;
        return rw_write(d, d->n - 1, buf, len, offset);
}

int vdisk_disk_flush(vdisk_disk *d) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        for (unsigned i = 0; i < d->n; i++) {
                r = image_flush(d->images[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int vdisk_disk_discard(vdisk_disk *d, uint64_t offset, uint64_t len) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        r = check_range(d, offset, len);
        if (r < 0 || len == 0)
                return r;
        r = check_writable_now(d);
        if (r < 0)
                return r;
        return rw_discard(d, offset, len);
}

typedef int (*status_fn)(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len,
                         vdisk_extent *ret);

static int disk_status(vdisk_disk *d, uint64_t offset, uint64_t max_len, status_fn status, vdisk_extent *ret) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        uint64_t size;
        int r;

        if (!d || !ret || max_len == 0)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        if (d->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        size = d->images[d->n - 1]->size;
        if (offset >= size)
                return vdisk_error(-EINVAL, "offset %" PRIu64 " beyond the end of the disk", offset);
        max_len = MIN(max_len, size - offset);
        r = status(d, 0, d->n - 1, offset, max_len, ret);
        if (r < 0)
                return r;
        /* Merge following extents with the same status. */
        while (ret->length < max_len) {
                vdisk_extent next;

                r = status(d, 0, d->n - 1, offset + ret->length, max_len - ret->length, &next);
                if (r < 0)
                        return r;
                if (next.flags != ret->flags || next.depth != ret->depth ||
                    next.host_offset_valid != ret->host_offset_valid ||
                    (ret->host_offset_valid && (next.host_offset != ret->host_offset + ret->length ||
                                                next.file != ret->file)))
                        break;
                ret->length += next.length;
        }
        return 0;
}

int vdisk_disk_block_status(vdisk_disk *d, uint64_t offset, uint64_t max_len, vdisk_extent *ret) {
        return disk_status(d, offset, max_len, rw_status, ret);
}

int vdisk_disk_map_status(vdisk_disk *d, uint64_t offset, uint64_t max_len, vdisk_extent *ret) {
        return disk_status(d, offset, max_len, rw_status_file, ret);
}

/* ---- images */

const char *vdisk_image_name(vdisk_image *img) {
        return img ? vdisk_io_name(img->io) : NULL;
}

const vdisk_backend_info *vdisk_image_backend(vdisk_image *img) {
        return img ? &img->be->info : NULL;
}

/* The image's disk, locked (NULL for an image outside any disk). */
static vdisk_disk *image_lock(vdisk_image *img) {
        return img->disk ? disk_lock(img->disk) : NULL;
}

unsigned vdisk_image_index(vdisk_image *img) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!img)
                return 0;
        l = image_lock(img);
        return img->index;
}

size_t vdisk_image_file_count(vdisk_image *img) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!img)
                return 0;
        l = image_lock(img);
        return files_count(img->files);
}

const char *vdisk_image_file_name(vdisk_image *img, size_t index) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!img)
                return NULL;
        l = image_lock(img);
        return files_name(img->files, index);
}

uint64_t vdisk_image_size(vdisk_image *img) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!img)
                return 0;
        l = image_lock(img);
        return img->size;
}

/* Only the top of a chain takes writes through the data path; the images
 * below it are read-only for callers (operations such as merge reopen one
 * writable through the disk's resolver when they write into it). */
int vdisk_image_readonly(vdisk_image *img) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!img)
                return 1;
        l = image_lock(img);
        return !img->writable || img->info_only || (img->disk && img->index + 1 != img->disk->n);
}

int vdisk_image_file_size(vdisk_image *img, uint64_t *ret) {
        if (!img || !ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        return io_get_allocated(img->io, ret);
}

/* With the image's disk locked by the caller. */
static int get_meta_field_locked(vdisk_image *img, uint32_t bit, meta *m) {
        int r;

        r = image_get_meta(img, m);
        if (r < 0)
                return r;
        if (!(m->mask & bit))
                return vdisk_error(-EOPNOTSUPP, "%s: %s images have no such field", vdisk_io_name(img->io),
                                   img->be->info.name);
        return 0;
}

static int get_meta_field(vdisk_image *img, uint32_t bit, meta *m) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!img)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = image_lock(img);
        return get_meta_field_locked(img, bit, m);
}

#define UUID_GETTER(fn, bit, field)                                     \
        int fn(vdisk_image *img, uint8_t ret[16]) {                     \
                meta m;                                                 \
                int r = get_meta_field(img, bit, &m);                   \
                if (r < 0)                                              \
                        return r;                                       \
                memcpy(ret, m.field, 16);                               \
                return 0;                                               \
        }

UUID_GETTER(vdisk_image_get_uuid, META_UUID, uuid)
UUID_GETTER(vdisk_image_get_modification_uuid, META_MODIFICATION_UUID, modification_uuid)
UUID_GETTER(vdisk_image_get_parent_uuid, META_PARENT_UUID, parent_uuid)
UUID_GETTER(vdisk_image_get_parent_modification_uuid, META_PARENT_MOD_UUID, parent_modification_uuid)

/* The backend's string may change with the next set_comment, so the caller
 * gets a copy owned by the image. It is replaced only when the comment
 * changed: a string returned earlier stays valid until then (or until the
 * image closes). All under the disk lock, since two threads may ask at once. */
int vdisk_image_get_comment(vdisk_image *img, const char **ret) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        const char *c;
        char *copy;
        meta m;
        int r;

        if (!img || !ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = image_lock(img);
        r = get_meta_field_locked(img, META_COMMENT, &m);
        if (r < 0)
                return r;
        c = m.comment ? m.comment : "";
        if (!img->comment_cache || !streq(img->comment_cache, c)) {
                copy = strdup(c);
                if (!copy)
                        return vdisk_error(-ENOMEM, "out of memory");
                free(img->comment_cache);
                img->comment_cache = copy;
        }
        *ret = img->comment_cache;
        return 0;
}

int vdisk_image_get_pchs(vdisk_image *img, vdisk_geometry *ret) {
        meta m;
        int r = get_meta_field(img, META_PCHS, &m);

        if (r >= 0)
                *ret = m.pchs;
        return r;
}

int vdisk_image_get_lchs(vdisk_image *img, vdisk_geometry *ret) {
        meta m;
        int r = get_meta_field(img, META_LCHS, &m);

        if (r >= 0)
                *ret = m.lchs;
        return r;
}

int vdisk_image_get_version(vdisk_image *img, uint32_t *ret) {
        meta m;
        int r = get_meta_field(img, META_VERSION, &m);

        if (r >= 0)
                *ret = m.version;
        return r;
}

int vdisk_image_get_flags(vdisk_image *img, uint32_t *ret) {
        meta m;
        int r = get_meta_field(img, META_FLAGS, &m);

        if (r >= 0)
                *ret = m.flags;
        return r;
}

int vdisk_image_get_parent_name(vdisk_image *img, const char **ret_name, const char **ret_format) {
        meta m;
        int r = get_meta_field(img, META_PARENT_NAME, &m);

        if (r < 0)
                return r;
        if (ret_name)
                *ret_name = m.parent_name;
        if (ret_format)
                *ret_format = m.parent_format;
        return 0;
}

static int set_meta_field(vdisk_image *img, const meta *m, uint32_t mask) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!img)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = image_lock(img);
        if (img->disk) {
                /* A merge relinks images at its end: UUIDs must not move under it. */
                if (img->disk->exclusive)
                        return vdisk_error(-EBUSY, "%s: a merge runs on this disk", vdisk_io_name(img->io));
                /* An image below the top is reopened writable for this. */
                if (!img->writable && !img->info_only) {
                        r = disk_make_writable(img->disk, img->index);
                        if (r < 0)
                                return r;
                }
        }
        r = image_set_meta(img, m, mask);
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        /* Metadata changes are small and rare: make them durable at once. */
        return image_flush(img);
}

#define UUID_SETTER(fn, bit, field)                                     \
        int fn(vdisk_image *img, const uint8_t uuid[16]) {              \
                meta m = {};                                            \
                if (!uuid)                                              \
                        return vdisk_error(-EINVAL, "no UUID given");   \
                memcpy(m.field, uuid, 16);                              \
                return set_meta_field(img, &m, bit);                    \
        }

UUID_SETTER(vdisk_image_set_uuid, META_UUID, uuid)
UUID_SETTER(vdisk_image_set_modification_uuid, META_MODIFICATION_UUID, modification_uuid)
UUID_SETTER(vdisk_image_set_parent_uuid, META_PARENT_UUID, parent_uuid)
UUID_SETTER(vdisk_image_set_parent_modification_uuid, META_PARENT_MOD_UUID, parent_modification_uuid)

int vdisk_image_set_comment(vdisk_image *img, const char *comment) {
        meta m = { .comment = comment ? comment : "" };

        if (strlen(m.comment) > 255)
                return vdisk_error(-EINVAL, "comment longer than 255 bytes");
        return set_meta_field(img, &m, META_COMMENT);
}

int vdisk_image_set_pchs(vdisk_image *img, const vdisk_geometry *g) {
        meta m = {};

        if (!g)
                return vdisk_error(-EINVAL, "no geometry given");
        m.pchs = *g;
        return set_meta_field(img, &m, META_PCHS);
}

int vdisk_image_set_lchs(vdisk_image *img, const vdisk_geometry *g) {
        meta m = {};

        if (!g)
                return vdisk_error(-EINVAL, "no geometry given");
        m.lchs = *g;
        return set_meta_field(img, &m, META_LCHS);
}

int vdisk_image_set_flags(vdisk_image *img, uint32_t flags) {
        meta m = { .flags = flags };

        return set_meta_field(img, &m, META_FLAGS);
}

int vdisk_image_get_info(vdisk_image *img, vdisk_image_info *ret) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        size_t size;
        int r;

        if (!img || !ret || ret->size < sizeof(vdisk_image_info))
                return vdisk_error(-EINVAL, "invalid arguments (info size not set?)");
        l = image_lock(img);
        size = ret->size;
        memset(ret, 0, sizeof *ret);
        ret->size = size;
        ret->virtual_size = img->size;
        ret->cluster_size = (uint32_t) MIN(img->layout.cluster_size, (uint64_t) UINT32_MAX);
        ret->variant = "";
        r = io_get_allocated(img->io, &ret->actual_size);
        if (r < 0)
                return r;
        /* A multi-file image (VMDK extents) takes the space of all its files,
         * as qemu-img info counts it; files only named (VDISK_OPEN_LIST_FILES)
         * are not open and count nothing. */
        for (size_t i = 0; img->files && !(img->be->flags & BACKEND_SIZE_OWN_FILE) && i < files_count(img->files); i++) {
                vdisk_io *f = files_get(img->files, i);
                uint64_t n = 0;

                if (!f)
                        continue;
                r = io_get_allocated(f, &n);
                if (r < 0)
                        return r;
                ret->actual_size += n;
        }
        r = io_get_size(img->io, &ret->file_size);
        if (r < 0)
                return r;
        return image_get_info(img, ret);
}

/* Sets the parent name (and with META_PARENT_UUID in `mask`, the parent
 * UUID: one metadata write) from m->parent_name and m->parent_format. */
static int set_parent_name(vdisk_image *img, meta *m, uint32_t mask) {
        _cleanup_free_ char *abs = NULL;

        /* Formats that record an absolute name too (VHD's W2ku) get it when
         * the image was opened by path. */
        if (img->disk) {
                _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = image_lock(img);

                abs = resolver_abs_name(img->disk->resolver, img->io, m->parent_name);
        }
        m->parent_abs_name = abs;
        return set_meta_field(img, m, mask | META_PARENT_NAME);
}

int vdisk_image_set_parent_name(vdisk_image *img, const char *name, const char *format) {
        meta m = { .parent_name = name, .parent_format = format };

        if (!img || !name || !name[0])
                return vdisk_error(-EINVAL, "invalid arguments");
        return set_parent_name(img, &m, 0);
}

int image_set_link(vdisk_image *img, const uint8_t uuid[16], const char *name, const char *format) {
        meta m = { .parent_name = name, .parent_format = format };

        memcpy(m.parent_uuid, uuid, 16);
        if (!name)
                return set_meta_field(img, &m, META_PARENT_UUID);
        return set_parent_name(img, &m, META_PARENT_UUID);
}

int vdisk_image_get_content_id(vdisk_image *img, uint32_t *ret) {
        meta m;
        int r = get_meta_field(img, META_CONTENT_ID, &m);

        if (r >= 0 && ret)
                *ret = m.content_id;
        return r;
}

int vdisk_image_get_parent_content_id(vdisk_image *img, uint32_t *ret) {
        meta m;
        int r = get_meta_field(img, META_PARENT_CONTENT_ID, &m);

        if (r >= 0 && ret)
                *ret = m.parent_content_id;
        return r;
}

int vdisk_image_set_content_id(vdisk_image *img, uint32_t id) {
        meta m = { .content_id = id };

        return set_meta_field(img, &m, META_CONTENT_ID);
}

int vdisk_image_set_parent_content_id(vdisk_image *img, uint32_t id) {
        meta m = { .parent_content_id = id };

        return set_meta_field(img, &m, META_PARENT_CONTENT_ID);
}

uint32_t vdisk_image_sector_size(vdisk_image *img) {
        return img ? img->layout.sector_size : 0;
}

int vdisk_image_get_format_info(vdisk_image *img, char ***ret_kv) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        strv_builder b = {};
        int r;

        if (!img || !ret_kv)
                return vdisk_error(-EINVAL, "invalid arguments");
        if (img->disk)
                l = disk_lock(img->disk);
        if (img->be->get_format_info) {
                r = img->be->get_format_info(img->state, &b);
                if (r < 0) {
                        strv_builder_done(&b);
                        return vdisk_error_prefix(r, vdisk_io_name(img->io));
                }
        }
        r = strv_builder_steal(&b, ret_kv);
        return r < 0 ? vdisk_error(r, "out of memory") : 0;
}

void vdisk_snapshots_free(vdisk_snapshot *v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++) {
                free(v[i].id);
                free(v[i].name);
        }
        free(v);
}

int vdisk_image_list_snapshots(vdisk_image *img, vdisk_snapshot **ret, size_t *ret_n) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        vdisk_snapshot *v = NULL;
        size_t n = 0;
        int r;

        if (!img || !ret || !ret_n)
                return vdisk_error(-EINVAL, "invalid arguments");
        if (img->disk)
                l = disk_lock(img->disk);
        if (img->be->list_snapshots) {
                r = img->be->list_snapshots(img->state, &v, &n);
                if (r < 0)
                        return vdisk_error_prefix(r, vdisk_io_name(img->io));
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

int vdisk_disk_query_regions(vdisk_disk *d, vdisk_region **ret, size_t *ret_n) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        vdisk_image *top;
        vdisk_region *v;
        int r;

        if (!d || !ret || !ret_n)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        if (d->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        top = d->images[d->n - 1];
        if (top->be->get_regions) {
                size_t n = 0;

                v = NULL;
                r = top->be->get_regions(top->state, &v, &n);
                if (r < 0)
                        return vdisk_error_prefix(r, vdisk_io_name(top->io));
                *ret = v;
                *ret_n = n;
                return 0;
        }
        /* One region: the whole disk, in the image's sectors. */
        v = calloc(1, sizeof *v);
        if (!v)
                return vdisk_error(-ENOMEM, "out of memory");
        *v = (vdisk_region) {
                .offset = 0,
                .length = top->size,
                .block_size = top->layout.sector_size,
                .data_type = top->layout.sector_size == 2048 ? VDISK_REGION_DATA_MODE1_2048 : VDISK_REGION_DATA_RAW,
        };
        *ret = v;
        *ret_n = 1;
        return 0;
}

/* ---------------------------------------------------------------- bitmaps */

void vdisk_bitmaps_free(vdisk_bitmap *v, size_t n) {
        if (!v)
                return;
        for (size_t i = 0; i < n; i++)
                free(v[i].name);
        free(v);
}

int vdisk_image_list_bitmaps(vdisk_image *img, vdisk_bitmap **ret, size_t *ret_n) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        vdisk_bitmap *v = NULL;
        size_t n = 0;
        int r;

        if (!img || !ret || !ret_n)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = image_lock(img);
        if (img->be->list_bitmaps && !img->info_only) {
                r = img->be->list_bitmaps(img->state, &v, &n);
                if (r < 0)
                        return vdisk_error_prefix(r, vdisk_io_name(img->io));
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

int vdisk_image_read_bitmap(vdisk_image *img, const char *name, uint8_t **ret, size_t *ret_len,
                            uint64_t *ret_granularity) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!img || !name || !ret || !ret_len)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = image_lock(img);
        if (!img->be->read_bitmap || img->info_only)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images have no bitmaps", vdisk_io_name(img->io),
                                   img->be->info.name);
        r = img->be->read_bitmap(img->state, name, ret, ret_len, ret_granularity);
        return r < 0 ? vdisk_error_prefix(r, vdisk_io_name(img->io)) : 0;
}

int vdisk_image_change_bitmap(vdisk_image *img, const vdisk_bitmap_change *c) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!img || !c || c->size < sizeof *c || !c->name || c->op > VDISK_BITMAP_OP_MERGE)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = image_lock(img);
        if (!img->be->change_bitmap)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images have no bitmaps", vdisk_io_name(img->io),
                                   img->be->info.name);
        if (!img->writable || img->info_only)
                return vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io));
        if (img->disk && img->disk->exclusive)
                return vdisk_error(-EBUSY, "%s: a merge runs on this disk", vdisk_io_name(img->io));
        r = img->be->change_bitmap(img->state, c);
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        return image_flush(img);
}
