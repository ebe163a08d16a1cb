/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Snapshots of a container's properties, read by the worker that holds the
 * disk and applied on the main thread: property reads never touch libvdisk.
 */
#include <limits.h>
#include <string.h>

#include "vdiskd.h"

const char *media_type_name(uint32_t media) {
        if (media & VDISK_MEDIA_HDD)
                return "hdd";
        if (media & VDISK_MEDIA_OPTICAL)
                return "dvd";
        if (media & VDISK_MEDIA_FLOPPY)
                return "floppy";
        return "hdd";
}

static void snapshots_free(SnapshotInfo *v, unsigned n) {
        for (unsigned k = 0; k < n; k++) {
                free(v[k].id);
                free(v[k].name);
        }
        free(v);
}

void image_info_clear(ImageInfo *i) {
        snapshots_free(i->snapshots, i->n_snapshots);
        free(i->comment);
        free(i->variant);
        free(i->io_name);
        *i = (ImageInfo) {};
}

void disk_info_clear(DiskInfo *i) {
        for (unsigned k = 0; k < i->n_images; k++)
                image_info_clear(&i->images[k]);
        free(i->images);
        *i = (DiskInfo) {};
}

static void uuid_text(int (*get)(vdisk_image *, uint8_t[16]), vdisk_image *img, char ret[37]) {
        uint8_t u[16];

        if (get(img, u) < 0 || vdisk_uuid_is_null(u))
                ret[0] = 0;
        else
                vdisk_uuid_format(u, ret);
}

static int image_info_read(vdisk_image *img, ImageInfo *ret) {
        vdisk_image_info ii = { .size = sizeof(ii) };
        vdisk_geometry g;
        const char *comment = NULL;
        uint64_t fs;

        *ret = (ImageInfo) {
                .key = img,
                .index = vdisk_image_index(img),
                .backend = vdisk_image_backend(img),
                .size = vdisk_image_size(img),
                .read_only = !!vdisk_image_readonly(img),
                .n_files = (unsigned) MIN(vdisk_image_file_count(img), (size_t) UINT_MAX / 2),
        };
        if (vdisk_image_get_version(img, &ret->version) < 0)
                ret->version = 0;
        if (vdisk_image_get_flags(img, &ret->flags) < 0)
                ret->flags = 0;
        uuid_text(vdisk_image_get_uuid, img, ret->uuid);
        uuid_text(vdisk_image_get_modification_uuid, img, ret->modification_uuid);
        uuid_text(vdisk_image_get_parent_uuid, img, ret->parent_uuid);
        uuid_text(vdisk_image_get_parent_modification_uuid, img, ret->parent_modification_uuid);
        if (vdisk_image_get_comment(img, &comment) < 0 || !comment)
                comment = "";
        if (vdisk_image_get_pchs(img, &g) >= 0) {
                ret->pchs[0] = g.cylinders;
                ret->pchs[1] = g.heads;
                ret->pchs[2] = g.sectors;
        }
        if (vdisk_image_get_lchs(img, &g) >= 0) {
                ret->lchs[0] = g.cylinders;
                ret->lchs[1] = g.heads;
                ret->lchs[2] = g.sectors;
        }
        if (vdisk_image_get_info(img, &ii) < 0)
                ii.variant = NULL;
        else {
                ret->cluster_size = ii.cluster_size;
                ret->dirty = !!ii.dirty;
        }
        if (vdisk_image_file_size(img, &fs) >= 0)
                ret->file_size = fs;
        else
                ret->file_size = ii.file_size;
        ret->comment = strdup(comment);
        ret->variant = strdup(ii.variant ? ii.variant : "");
        ret->io_name = strdup(vdisk_image_name(img) ?: "");
        if (!ret->comment || !ret->variant || !ret->io_name) {
                image_info_clear(ret);
                return -ENOMEM;
        }
        return 0;
}

int disk_info_read(vdisk_disk *d, DiskInfo *ret) {
        DiskInfo info = { .valid = true };
        unsigned n = vdisk_disk_count(d);
        int r;

        if (n > 0) {
                info.images = calloc(n, sizeof(ImageInfo));
                if (!info.images)
                        return -ENOMEM;
        }
        for (unsigned i = 0; i < n; i++) {
                r = image_info_read(vdisk_disk_image(d, i), &info.images[i]);
                if (r < 0) {
                        disk_info_clear(&info);
                        return r;
                }
                info.n_images++;
                info.n_fds += 1 + info.images[i].n_files;
        }
        info.size = vdisk_disk_size(d);
        info.read_only = !!vdisk_disk_readonly(d);
        if (n > 0) {
                memcpy(info.pchs, info.images[n - 1].pchs, sizeof info.pchs);
                memcpy(info.lchs, info.images[n - 1].lchs, sizeof info.lchs);
        }
        *ret = info;
        return 0;
}

/* ---------------------------------------------------------------- snapshots */

/* A copy of s for a D-Bus string: at most max bytes, invalid UTF-8 bytes
 * (a name is whatever the file holds) replaced by '?', cut at a character. */
static char *text_for_bus(const char *s, size_t max) {
        size_t n = strlen(s), o = 0;
        char *t = malloc(MIN(n, max) + 1);

        if (!t)
                return NULL;
        for (size_t i = 0; i < n;) {
                const unsigned char *p = (const unsigned char *) s + i;
                unsigned char lo = 0x80, hi = 0xBF;
                size_t len = 1;

                if (p[0] >= 0xC2 && p[0] <= 0xDF)
                        len = 2;
                else if (p[0] >= 0xE0 && p[0] <= 0xEF) {
                        len = 3;
                        lo = p[0] == 0xE0 ? 0xA0 : 0x80;
                        hi = p[0] == 0xED ? 0x9F : 0xBF;
                } else if (p[0] >= 0xF0 && p[0] <= 0xF4) {
                        len = 4;
                        lo = p[0] == 0xF0 ? 0x90 : 0x80;
                        hi = p[0] == 0xF4 ? 0x8F : 0xBF;
                } else if (p[0] >= 0x80)
                        len = 0;        /* not a lead byte */
                if (len > 1 && (i + len > n || p[1] < lo || p[1] > hi ||
                                (len > 2 && (p[2] & 0xC0) != 0x80) || (len > 3 && (p[3] & 0xC0) != 0x80)))
                        len = 0;
                if (o + MAX(len, (size_t) 1) > max)
                        break;
                if (len == 0) {
                        t[o++] = '?';
                        i++;
                } else {
                        memcpy(t + o, p, len);
                        o += len;
                        i += len;
                }
        }
        t[o] = 0;
        return t;
}

static int image_snapshots_read(vdisk_image *img, ImageInfo *ii) {
        vdisk_snapshot *v = NULL;
        size_t n = 0, first;

        ii->have_snapshots = true;
        /* A format without snapshots, or a table that cannot be read: none
         * listed (CreateSnapshot and the others say why). */
        if (vdisk_image_list_snapshots(img, &v, &n) < 0 || n == 0)
                return 0;
        first = n > SNAPSHOTS_LISTED_MAX ? n - SNAPSHOTS_LISTED_MAX : 0;
        ii->snapshots = calloc(n - first, sizeof(SnapshotInfo));
        if (!ii->snapshots) {
                vdisk_snapshots_free(v, n);
                return -ENOMEM;
        }
        ii->snapshot_count = (unsigned) MIN(n, (size_t) UINT32_MAX);
        for (size_t k = first; k < n; k++) {
                SnapshotInfo *e = &ii->snapshots[ii->n_snapshots++];

                e->id = text_for_bus(v[k].id ?: "", SNAPSHOT_TEXT_MAX);
                e->name = text_for_bus(v[k].name ?: "", SNAPSHOT_TEXT_MAX);
                e->vm_state_size = v[k].vm_state_size;
                e->date_usec = v[k].date_sec < 0 ? 0 :
                        (uint64_t) v[k].date_sec * UINT64_C(1000000) + v[k].date_nsec / 1000;
                e->vm_clock_nsec = v[k].vm_clock_nsec;
                e->disk_size = v[k].disk_size;
                e->icount = v[k].icount;
                if (!e->id || !e->name) {
                        vdisk_snapshots_free(v, n);
                        return -ENOMEM;
                }
        }
        vdisk_snapshots_free(v, n);
        return 0;
}

int disk_info_read_snapshots(vdisk_disk *d, DiskInfo *info) {
        int r;

        if (!info->valid)
                return -EINVAL;
        for (unsigned i = 0; i < info->n_images && i < vdisk_disk_count(d); i++) {
                r = image_snapshots_read(vdisk_disk_image(d, i), &info->images[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int snapshots_copy(ImageInfo *dst, const ImageInfo *src) {
        dst->have_snapshots = src->have_snapshots;
        dst->snapshot_count = src->snapshot_count;
        dst->n_snapshots = 0;
        dst->snapshots = NULL;
        if (src->n_snapshots == 0)
                return 0;
        dst->snapshots = calloc(src->n_snapshots, sizeof(SnapshotInfo));
        if (!dst->snapshots)
                return -ENOMEM;
        for (unsigned k = 0; k < src->n_snapshots; k++) {
                SnapshotInfo *e = &dst->snapshots[dst->n_snapshots++];

                *e = src->snapshots[k];
                e->id = strdup(src->snapshots[k].id);
                e->name = strdup(src->snapshots[k].name);
                if (!e->id || !e->name)
                        return -ENOMEM;
        }
        return 0;
}

bool snapshots_equal(const ImageInfo *a, const ImageInfo *b) {
        if (a->snapshot_count != b->snapshot_count || a->n_snapshots != b->n_snapshots)
                return false;
        for (unsigned k = 0; k < a->n_snapshots; k++) {
                const SnapshotInfo *x = &a->snapshots[k], *y = &b->snapshots[k];

                if (!streq(x->id, y->id) || !streq(x->name, y->name) || x->vm_state_size != y->vm_state_size ||
                    x->date_usec != y->date_usec || x->vm_clock_nsec != y->vm_clock_nsec ||
                    x->disk_size != y->disk_size || x->icount != y->icount)
                        return false;
        }
        return true;
}
