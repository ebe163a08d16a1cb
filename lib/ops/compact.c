/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Compact (VDCompact): the backend walks its allocated blocks and asks us what
 * each may become. All zeros: unallocated in a base, or where the parent also
 * reads zeros; else a zero block. In a differencing image, a block equal to
 * what the parent shows is dropped. The backend then moves blocks down and
 * truncates the file.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

typedef struct compact_ctx {
        vdisk_disk *d;
        unsigned index;
        uint8_t *buf;
        size_t buf_len;
} compact_ctx;

static int compact_decide(void *userdata, uint64_t offset, const void *data, size_t len, compact_verdict *ret) {
        compact_ctx *c = userdata;
        bool zero = mem_is_zero(data, len), below_zero;
        int r;

        if (c->index == 0) {
                *ret = zero ? COMPACT_UNALLOC : COMPACT_KEEP;
                return 0;
        }
        if (zero) {
                r = rw_is_zero(c->d, (int) c->index - 1, offset, len, &below_zero);
                if (r < 0)
                        return r;
                *ret = below_zero ? COMPACT_UNALLOC : COMPACT_ZERO;
                return 0;
        }
        if (c->buf_len < len) {
                free(c->buf);
                c->buf = malloc(len);
                if (!c->buf) {
                        c->buf_len = 0;
                        return vdisk_error(-ENOMEM, "out of memory");
                }
                c->buf_len = len;
        }
        r = rw_read(c->d, c->index - 1, c->buf, len, offset);
        if (r < 0)
                return r;
        *ret = memcmp(c->buf, data, len) == 0 ? COMPACT_UNALLOC : COMPACT_KEEP;
        return 0;
}

int vdisk_compact(vdisk_disk *d, unsigned index, vdisk_progress *p) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        compact_ctx c = {};
        vdisk_image *img;
        int r, fr;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        r = disk_no_merge(d);
        if (r < 0)
                return r;
        if (index >= d->n)
                return vdisk_error(-EINVAL, "image index %u out of range", index);
        img = d->images[index];
        if (!image_can_compact(img))
                return vdisk_error(-EOPNOTSUPP, "%s: %s images cannot be compacted", vdisk_io_name(img->io),
                                   img->be->info.name);
        r = disk_make_writable(d, index);
        if (r < 0)
                return r == -EPERM ? vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io)) : r;
        /* Pending table updates reach the disk before blocks move. */
        r = image_flush(img);
        if (r < 0)
                return r;
        progress_set_total(p, img->size);
        c.d = d;
        c.index = index;
        r = image_compact(img, compact_decide, &c, p);
        free(c.buf);
        fr = image_flush(img);
        if (r < 0)
                return r;
        if (fr < 0)
                return fr;
        progress_finish(p);
        return 0;
}
