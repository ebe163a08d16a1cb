/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Preallocation and the other options of qemu's file layer (nocow), for
 * every writable format.
 *
 * qemu-img takes "preallocation" and "nocow" for any format: the format's
 * own driver knows "preallocation" (qcow2: off, metadata, falloc, full) or
 * the file layer does (off, falloc, full; nocow). The file layer acts on
 * the file it creates, which is empty for every format but raw, so for
 * VDI, VMDK, VHD, QCOW and QED falloc and full are accepted and change
 * nothing, and metadata is refused. vdisk follows that: each backend says
 * what it takes (vdisk_backend.prealloc_*), and the core does the file work
 * here: fallocate for falloc (zeros written where the file system has no
 * fallocate), zeros written for full, the holes of the file only (a qcow2
 * file's tables are written already), then one flush.
 */
#include <strings.h>

#include "core/core.h"

static const char *const mode_names[_PREALLOC_MAX] = {
        [PREALLOC_OFF] = "off",
        [PREALLOC_METADATA] = "metadata",
        [PREALLOC_FALLOC] = "falloc",
        [PREALLOC_FULL] = "full",
};

/* qemu's file layer options, which every format that creates files takes
 * (in the order qemu-img prints them after the format's own). */
static const vdisk_option_desc file_options[] = {
        { "nocow",         VDISK_OPTION_BOOL,   "Turn off copy-on-write (valid only on btrfs)" },
        { "preallocation", VDISK_OPTION_STRING, "Preallocation mode (allowed values: off, falloc, full)" },
        {}
};

const vdisk_option_desc *prealloc_file_option(const vdisk_backend *be, const char *key) {
        if (!be || !be->create || (be->flags & BACKEND_READ_ONLY))
                return NULL;
        for (const vdisk_option_desc *o = file_options; o->name; o++)
                if (streq(o->name, key))
                        return o;
        return NULL;
}

int prealloc_mode_parse(const char *s, prealloc_mode *ret) {
        for (int m = 0; m < _PREALLOC_MAX; m++)
                if (s && streq(s, mode_names[m])) {
                        *ret = (prealloc_mode) m;
                        return 0;
                }
        return -EINVAL;
}

const char *prealloc_mode_name(prealloc_mode m) {
        return m >= 0 && m < _PREALLOC_MAX ? mode_names[m] : "?";
}

int prealloc_take_options(const vdisk_backend *be, const char *const *options, prealloc_req *rq,
                          const char ***ret_rest) {
        _cleanup_free_ const char **rest = NULL;
        bool own = be->prealloc_flags & PREALLOC_BACKEND_META;
        size_t n = 0, k = 0;
        const char *mode = NULL;

        *rq = (prealloc_req) { .mode = PREALLOC_OFF };
        for (const char *const *o = options; o && o[0]; o += 2)
                n++;
        rest = calloc(2 * n + 3, sizeof(char *));
        if (!rest)
                return vdisk_error(-ENOMEM, "out of memory");
        for (const char *const *o = options; o && o[0]; o += 2) {
                if (streq(o[0], "nocow") && o[1]) {
                        rq->nocow = streq(o[1], "on");
                        continue;
                }
                if (streq(o[0], "preallocation") && o[1]) {
                        mode = o[1];
                        continue;
                }
                rest[k++] = o[0];
                rest[k++] = o[1];
        }
        if (mode) {
                if (prealloc_mode_parse(mode, &rq->mode) < 0)
                        return own ? vdisk_error(-EINVAL, "Parameter 'preallocation' does not accept value '%s'", mode)
                                   : vdisk_error(-EINVAL, "invalid parameter value: %s", mode);
                if (rq->mode != PREALLOC_OFF && !(be->prealloc_create & PREALLOC_BIT(rq->mode)))
                        return vdisk_error(-EOPNOTSUPP, "Unsupported preallocation mode: %s", mode);
                if (own) {
                        rest[k++] = "preallocation";
                        rest[k++] = rq->mode == PREALLOC_OFF ? "off" : "metadata";
                }
        }
        if (ret_rest)
                *ret_rest = TAKE_PTR(rest);
        return 0;
}

/* Zeros written into the holes of [from, to); an io that cannot tell its
 * holes (memory) has none. */
static int fill_holes(vdisk_io *io, uint64_t from, uint64_t to) {
        uint64_t off = from;
        int r;

        while (off < to) {
                uint64_t data, hole_end;

                r = io_seek_data(io, off, 0, &data);
                if (r == -EOPNOTSUPP)
                        return 0;
                if (r < 0)
                        return r;
                hole_end = MIN(data, to);
                if (hole_end > off) {
                        r = io_write_zero_data(io, off, hole_end - off);
                        if (r < 0)
                                return r;
                }
                if (hole_end >= to)
                        break;
                r = io_seek_data(io, hole_end, 1, &off);
                if (r < 0)
                        return r;
        }
        return 0;
}

int prealloc_range(vdisk_io *io, uint64_t from, uint64_t to, prealloc_mode mode) {
        int r;

        if (to <= from || mode == PREALLOC_OFF || mode == PREALLOC_METADATA)
                return 0;
        if (mode == PREALLOC_FALLOC) {
                r = io_reserve(io, from, to - from);
                /* no fallocate here: the space is taken by writing it */
                if (r == -EOPNOTSUPP)
                        r = fill_holes(io, from, to);
                /* qemu-img's words (scripts match them) */
                if (r < 0)
                        return vdisk_error(r, "Could not preallocate new data: %s", strerror(-r));
                return 0;
        }
        r = fill_holes(io, from, to);
        if (r < 0)
                return vdisk_error(r, "Could not write zeros for preallocation: %s", strerror(-r));
        return 0;
}

int prealloc_first_block(vdisk_io *io, uint64_t size) {
        return io_write_zero_data(io, 0, MIN(size, UINT64_C(4096)));
}

int prealloc_after_create(vdisk_image *img, const prealloc_req *rq) {
        const vdisk_backend *be = img->be;
        uint64_t size, from = 0;
        int r;

        if ((be->prealloc_flags & PREALLOC_FIRST_BLOCK) && rq->mode != PREALLOC_FULL) {
                r = io_get_size(img->io, &size);
                if (r < 0)
                        return r;
                r = prealloc_first_block(img->io, size);
                if (r < 0)
                        return r;
        }
        if (!(be->prealloc_flags & PREALLOC_FILE) || (rq->mode != PREALLOC_FALLOC && rq->mode != PREALLOC_FULL))
                return 0;
        /* the tables first (qcow2): what is left a hole then is data space */
        r = image_flush(img);
        if (r < 0)
                return r;
        r = io_get_size(img->io, &size);
        if (r < 0)
                return r;
        /* Data space starts where the first block went (qcow2 appends the
         * preallocated clusters after its tables): the sparse rest of the
         * tables stays as qemu leaves it. */
        if (!(be->flags & BACKEND_IDENTITY) && be->map && img->size > 0) {
                map_result m;

                r = be->map(img->state, 0, img->size, &m);
                if (r < 0)
                        return r;
                if (m.kind == MAP_DATA && !m.file && m.host_offset < size)
                        from = m.host_offset;
        }
        r = prealloc_range(img->io, from, size, rq->mode);
        if (r < 0)
                return r;
        return io_flush(img->io);
}

int prealloc_check_resize(const vdisk_backend *be, const char *mode, uint64_t old_size, uint64_t new_size,
                          prealloc_mode *ret) {
        prealloc_mode m = PREALLOC_OFF;

        if (mode && prealloc_mode_parse(mode, &m) < 0)
                return vdisk_error(-EINVAL, "Invalid preallocation mode '%s'", mode);
        *ret = m;
        if (m == PREALLOC_OFF)
                return 0;
        if (new_size < old_size)
                return vdisk_error(-EINVAL, "Preallocation can only be used for growing images");
        if (!(be->prealloc_resize & PREALLOC_BIT(m)))
                return be->prealloc_flags & PREALLOC_RESIZE_QUOTED
                               ? vdisk_error(-EOPNOTSUPP, "Unsupported preallocation mode '%s'", mode)
                               : vdisk_error(-EOPNOTSUPP, "Unsupported preallocation mode: %s", mode);
        return 0;
}
