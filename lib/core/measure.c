/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdisk_measure(): the size of a new image (qemu-img measure). */
#include <errno.h>
#include <string.h>

#include "core/core.h"

typedef struct measure_ctx {
        vdisk_disk *in;
        uint64_t size;
} measure_ctx;

/* The units [first, last] that [off, off + len) touches, counted unless
 * the walk counted them already (*next: the first unit not yet counted). */
static void touch(uint64_t unit, uint64_t off, uint64_t len, uint64_t *next, uint64_t *n) {
        uint64_t first = MAX(off / unit, *next), last = (off + len - 1) / unit;

        if (len == 0 || last < first)
                return;
        *n += last - first + 1;
        *next = last + 1;
}

/* qemu's count: an extent with data counts every unit it touches, each unit
 * once; data over holes of its file that qemu reads as zeros does not count
 * (vdisk_disk_map_status()). */
static int count_units(void *user, uint64_t unit, uint64_t *ret) {
        measure_ctx *m = user;
        uint64_t off = 0, n = 0, next = 0;
        int r;

        if (unit == 0 || !m->in)
                return vdisk_error(-EINVAL, "invalid arguments");
        while (off < m->size) {
                vdisk_extent e;

                r = vdisk_disk_map_status(m->in, off, m->size - off, &e);
                if (r < 0)
                        return r;
                if (e.length == 0)
                        return vdisk_error(-EIO, "block status made no progress at %" PRIu64, off);
                if ((e.flags & VDISK_EXTENT_DATA) && !(e.flags & VDISK_EXTENT_ZERO))
                        touch(unit, off, e.length, &next, &n);
                off += e.length;
        }
        *ret = n;
        return 0;
}

int vdisk_measure(const char *format, const char *const *options, uint64_t size, vdisk_disk *in,
                  vdisk_measure_info *ret) {
        const vdisk_backend *be;
        measure_ctx m = { .in = in };
        measure_result res = {};
        vdisk_bitmap *bitmaps = NULL;
        size_t n = 0, k = 0;
        int r;

        if (!format || !ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        be = backend_lookup(format);
        if (!be)
                return vdisk_error(-EMEDIUMTYPE, "Unknown file format '%s'", format);
        if (!be->measure)
                return vdisk_error(-EOPNOTSUPP, "Block driver '%s' does not support size measurement",
                                   be->info.qemu_name);
        if (in) {
                if (vdisk_disk_count(in) == 0)
                        return vdisk_error(-EINVAL, "the input disk is empty");
                size = vdisk_disk_size(in);
        }
        if (size > ((uint64_t) 1 << 62))
                return vdisk_error(-EFBIG, "invalid image size %" PRIu64, size);
        m.size = size;

        /* backing_file/backing_fmt are generic keys: the backend sees the rest */
        for (const char *const *o = options; o && o[0]; o += 2)
                n++;
        _cleanup_free_ const char **rest = calloc(2 * n + 1, sizeof(char *));
        if (!rest)
                return vdisk_error(-ENOMEM, "out of memory");
        measure_params p = { .size = size, .options = rest, .has_input = !!in, .count_units = count_units,
                             .ctx = &m };
        for (const char *const *o = options; o && o[0]; o += 2) {
                if (streq(o[0], "backing_file") || streq(o[0], "backing_fmt")) {
                        if (!(be->info.caps & VDISK_CAP_DIFF))
                                return vdisk_error(-EINVAL, "%s: Backing file not supported for file format",
                                                   be->info.qemu_name);
                        if (streq(o[0], "backing_file"))
                                p.has_backing = 1;
                        continue;
                }
                if (streq(o[0], "size"))
                        continue;
                /* the file layer's: the backend measures without them */
                if (streq(o[0], "nocow") ||
                    (streq(o[0], "preallocation") && !(be->prealloc_flags & PREALLOC_BACKEND_META)))
                        continue;
                rest[k++] = o[0];
                rest[k++] = o[1];
        }
        r = backend_check_options(be, rest);
        if (r < 0)
                return r;
        if (in) {
                const vdisk_backend_info *top = vdisk_image_backend(vdisk_disk_image(in, vdisk_disk_count(in) - 1));

                vdisk_image *img = vdisk_disk_image(in, vdisk_disk_count(in) - 1);

                p.input_is_qcow2 = top && streq(top->qemu_name, "qcow2");
                if (img && img->be->list_bitmaps && !img->info_only) {
                        r = img->be->list_bitmaps(img->state, &bitmaps, &p.n_bitmaps);
                        if (r < 0)
                                return r;
                        p.bitmaps = bitmaps;
                }
        }
        r = be->measure(&p, &res);
        vdisk_bitmaps_free(bitmaps, p.n_bitmaps);
        if (r < 0)
                return r;
        *ret = (vdisk_measure_info) {
                .required = res.required,
                .fully_allocated = res.fully_allocated,
                .has_bitmaps = res.has_bitmaps,
                .bitmaps = res.bitmaps,
        };
        return 0;
}
