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

void image_info_clear(ImageInfo *i) {
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
