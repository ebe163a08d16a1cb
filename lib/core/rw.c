/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The generic data path.
 *
 * Reads walk the chain from a level down: a range an image maps as DATA is read
 * from its file, ZERO reads zeros, UNALLOC falls through to the parent (zeros
 * below the base). A range past an image's own end reads zeros and does not
 * fall through: a child that was shrunk and grown again must not show its
 * parent's old data.
 *
 * Writes go to one image. Where it has the block, in place; otherwise the
 * backend allocates the block and the core fills it: the new data, and around
 * it (partial-block copy-on-write) what the block showed before, read from the
 * view below. Space the backend hands out fresh (past the end of the file)
 * already reads as zeros, so zero pieces are not written there: a 4 KiB write
 * into a new 1 MiB block writes 4 KiB. The table entry reaches the disk only
 * at the next flush, after the data (see backend.h).
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

/* Pieces of COW data are moved through a bounded buffer. */
#define COW_CHUNK (1u << 20)
/* Zero detection granularity inside fresh blocks. */
#define ZERO_PAGE 4096u

uint64_t rw_size(vdisk_disk *d, unsigned level) {
        return d->images[level]->size;
}

static int map_checked(vdisk_image *img, uint64_t offset, uint64_t len, map_result *m) {
        int r;

        assert(len > 0 && offset < img->size && len <= img->size - offset);
        r = img->be->map(img->state, offset, len, m);
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        assert(m->length > 0);
        if (m->length > len)
                m->length = len;
        return 0;
}

int rw_read(vdisk_disk *d, unsigned level, void *buf, size_t len, uint64_t offset) {
        vdisk_image *img = d->images[level];
        uint8_t *p = buf;
        int r;

        if (img->info_only)
                return vdisk_error(-EPERM, "%s: opened for information only", vdisk_io_name(img->io));
        while (len > 0) {
                map_result m;
                size_t n;

                if (offset >= img->size) {
                        memset(p, 0, len);
                        return 0;
                }
                r = map_checked(img, offset, MIN((uint64_t) len, img->size - offset), &m);
                if (r < 0)
                        return r;
                n = (size_t) m.length;
                switch (m.kind) {
                case MAP_DATA:
                        r = io_pread_zerofill(img->io, p, n, m.host_offset);
                        break;
                case MAP_ZERO:
                        memset(p, 0, n);
                        r = 0;
                        break;
                case MAP_UNALLOC:
                        if (level == 0) {
                                memset(p, 0, n);
                                r = 0;
                        } else
                                r = rw_read(d, level - 1, p, n, offset);
                        break;
                default:
                        r = vdisk_error(-EUCLEAN, "%s: bad map kind", vdisk_io_name(img->io));
                }
                if (r < 0)
                        return r;
                p += n;
                offset += n;
                len -= n;
        }
        return 0;
}

/* Writes `len` bytes of `data` at host offset `host` of a freshly allocated
 * block, skipping all-zero pages (they already read as zeros). */
static int write_skipping_zeros(vdisk_io *io, const uint8_t *data, size_t len, uint64_t host) {
        size_t i = 0;
        int r;

        while (i < len) {
                size_t start, end;

                /* skip zero pages */
                while (i < len && mem_is_zero(data + i, MIN((size_t) ZERO_PAGE, len - i)))
                        i += MIN((size_t) ZERO_PAGE, len - i);
                if (i >= len)
                        break;
                start = i;
                while (i < len && !mem_is_zero(data + i, MIN((size_t) ZERO_PAGE, len - i)))
                        i += MIN((size_t) ZERO_PAGE, len - i);
                end = i;
                r = io_pwrite(io, data + start, end - start, host + start);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Fills [from, to) of a newly allocated block of image `level` (virtual
 * offsets; host offset of `from` is `host`) with what the view showed before:
 * zeros if `zero`, else the view at level-1. */
static int cow_fill(vdisk_disk *d, unsigned level, uint64_t from, uint64_t to, uint64_t host, int zero,
                    int fresh) {
        vdisk_image *img = d->images[level];
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        if (from >= to)
                return 0;
        if (zero || level == 0) {
                if (fresh)
                        return 0;
                return io_write_zeroes(img->io, host, to - from);
        }
        buf = buf_alloc((size_t) MIN(to - from, (uint64_t) COW_CHUNK));
        if (!buf)
                return vdisk_error(-ENOMEM, "out of memory");
        while (from < to) {
                size_t n = (size_t) MIN(to - from, (uint64_t) COW_CHUNK);

                r = rw_read(d, level - 1, buf, n, from);
                if (r < 0)
                        return r;
                r = fresh ? write_skipping_zeros(img->io, buf, n, host) : io_pwrite(img->io, buf, n, host);
                if (r < 0)
                        return r;
                from += n;
                host += n;
        }
        return 0;
}

/* Checks a write into `img`; returns 1 to go on, 0 when there is nothing to
 * do, or an error. Renews the modification UUID before the first write. */
static int write_prepare(vdisk_image *img, uint64_t offset, uint64_t len) {
        int r;

        if (!img->writable || img->info_only)
                return vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io));
        if (!range_within(offset, len, img->size))
                return vdisk_error(-EINVAL, "%s: write beyond the end of the image", vdisk_io_name(img->io));
        if (len == 0)
                return 0;
        r = image_mark_modified(img);
        if (r < 0)
                return r;
        return 1;
}

int rw_write(vdisk_disk *d, unsigned level, const void *buf, size_t len, uint64_t offset) {
        vdisk_image *img = d->images[level];
        const uint8_t *p = buf;
        int r;

        r = write_prepare(img, offset, len);
        if (r <= 0)
                return r;

        if (img->block_size == 0)      /* everything allocated (raw) */
                return io_pwrite(img->io, buf, len, offset);

        while (len > 0) {
                uint64_t bstart, bend, host;
                map_result m;
                size_t n;
                int fresh = 0;

                r = map_checked(img, offset, len, &m);
                if (r < 0)
                        return r;
                if (m.kind == MAP_DATA) {
                        n = (size_t) m.length;
                        r = io_pwrite(img->io, p, n, m.host_offset);
                        if (r < 0)
                                return r;
                        p += n;
                        offset += n;
                        len -= n;
                        continue;
                }

                /* Allocate the block and fill it. */
                bstart = ALIGN_DOWN(offset, (uint64_t) img->block_size);
                bend = MIN(bstart + img->block_size, img->size);
                n = (size_t) MIN((uint64_t) len, bend - offset);
                if (!img->be->allocate)
                        return vdisk_error(-EOPNOTSUPP, "%s: %s images cannot allocate blocks",
                                           vdisk_io_name(img->io), img->be->info.name);
                {
                        map_result a;
                        r = img->be->allocate(img->state, offset, &a, &fresh);
                        if (r < 0)
                                return vdisk_error_prefix(r, vdisk_io_name(img->io));
                        host = a.host_offset;
                }
                r = cow_fill(d, level, bstart, offset, host, m.kind == MAP_ZERO, fresh);
                if (r < 0)
                        return r;
                r = fresh ? write_skipping_zeros(img->io, p, n, host + (offset - bstart))
                          : io_pwrite(img->io, p, n, host + (offset - bstart));
                if (r < 0)
                        return r;
                r = cow_fill(d, level, offset + n, bend, host + (offset + n - bstart), m.kind == MAP_ZERO, fresh);
                if (r < 0)
                        return r;
                p += n;
                offset += n;
                len -= n;
        }
        return 0;
}

/* Does the view at `level` read zeros in [offset, offset+len)? */
int rw_is_zero(vdisk_disk *d, int level, uint64_t offset, uint64_t len, bool *ret) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        *ret = true;
        if (level < 0)
                return 0;
        while (len > 0) {
                vdisk_extent e;

                r = rw_status(d, 0, (unsigned) level, offset, len, &e);
                if (r < 0)
                        return r;
                if (!(e.flags & VDISK_EXTENT_ZERO)) {
                        size_t n = (size_t) MIN(e.length, (uint64_t) COW_CHUNK);
                        if (!buf && !(buf = buf_alloc(COW_CHUNK)))
                                return vdisk_error(-ENOMEM, "out of memory");
                        r = rw_read(d, (unsigned) level, buf, n, offset);
                        if (r < 0)
                                return r;
                        if (!mem_is_zero(buf, n)) {
                                *ret = false;
                                return 0;
                        }
                        e.length = n;
                }
                offset += e.length;
                len -= e.length;
        }
        return 0;
}

int rw_write_zeroes(vdisk_disk *d, unsigned level, int below, uint64_t offset, uint64_t len) {
        vdisk_image *img = d->images[level];
        _cleanup_free_ uint8_t *zero = NULL;
        int r;

        r = write_prepare(img, offset, len);
        if (r <= 0)
                return r;
        if (img->block_size == 0)
                return io_write_zeroes(img->io, offset, len);

        while (len > 0) {
                uint64_t bstart = ALIGN_DOWN(offset, (uint64_t) img->block_size);
                uint64_t bend = MIN(bstart + img->block_size, img->size);
                uint64_t n = MIN(len, bend - offset);
                bool whole = offset == bstart && n == bend - bstart;
                map_result m;

                r = map_checked(img, offset, n, &m);
                if (r < 0)
                        return r;
                n = m.length;
                whole = whole && n == bend - bstart;
                switch (m.kind) {
                case MAP_ZERO:
                        break;
                case MAP_DATA:
                        r = io_write_zeroes(img->io, m.host_offset, n);
                        break;
                case MAP_UNALLOC: {
                        bool below_zero;

                        /* Already zero if what will show through reads zeros. */
                        r = rw_is_zero(d, below, offset, n, &below_zero);
                        if (r < 0 || below_zero)
                                break;
                        if (whole && img->be->mark_zero) {
                                r = img->be->mark_zero(img->state, offset, n);
                                if (r != -EOPNOTSUPP)
                                        break;
                        }
                        if (!zero && !(zero = calloc(1, COW_CHUNK))) {
                                r = vdisk_error(-ENOMEM, "out of memory");
                                break;
                        }
                        n = MIN(n, (uint64_t) COW_CHUNK);
                        r = rw_write(d, level, zero, (size_t) n, offset);
                        break;
                }
                }
                if (r < 0)
                        return vdisk_error_prefix(r, vdisk_io_name(img->io));
                offset += n;
                len -= n;
        }
        return 0;
}

int rw_discard(vdisk_disk *d, uint64_t offset, uint64_t len) {
        return rw_write_zeroes(d, d->n - 1, (int) d->n - 2, offset, len);
}

int rw_status(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len, vdisk_extent *ret) {
        uint64_t length = len;
        int r;

        assert(top < d->n && bottom <= top && len > 0);
        for (unsigned level = top;; level--) {
                vdisk_image *img = d->images[level];
                map_result m;

                if (offset >= img->size) {
                        /* Past this image's end: zeros, defined here. */
                        *ret = (vdisk_extent) { .offset = offset, .length = length,
                                                .flags = VDISK_EXTENT_ZERO | VDISK_EXTENT_ALLOCATED,
                                                .depth = (int) (top - level) };
                        return 0;
                }
                length = MIN(length, img->size - offset);
                r = map_checked(img, offset, length, &m);
                if (r < 0)
                        return r;
                length = m.length;
                if (m.kind == MAP_DATA || m.kind == MAP_ZERO) {
                        *ret = (vdisk_extent) {
                                .offset = offset, .length = length,
                                .flags = VDISK_EXTENT_ALLOCATED |
                                         (m.kind == MAP_DATA ? VDISK_EXTENT_DATA : VDISK_EXTENT_ZERO),
                                .depth = (int) (top - level),
                                .host_offset = m.host_offset,
                                .host_offset_valid = m.kind == MAP_DATA,
                        };
                        /* A raw base "allocates" everything; holes map as ZERO. */
                        return 0;
                }
                if (level == bottom)
                        break;
        }
        *ret = (vdisk_extent) { .offset = offset, .length = length,
                                .flags = bottom == 0 ? VDISK_EXTENT_ZERO : 0, .depth = -1 };
        return 0;
}
