/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Copy into an existing disk (qemu-img convert -n): the source's content
 * goes into the destination's top image, which keeps its format, its size
 * and its parents.
 *
 * Both sides' block status is asked for every range, so the cost follows the
 * data of either side, not the virtual size: a range the source reads as
 * zeros costs two block status calls where the destination reads zeros too,
 * however large it is (a 15 TiB hole over a hole is ~15,000 lookups of at
 * most OP_STATUS_SPAN each). Where the destination holds data under a source
 * hole, that range is made to read zeros with the format's zero marker where
 * it has one (rw_write_zeroes). Source data is read and written a buffer at
 * a time; a buffer that turns out to be all zeros is treated like a hole.
 * With VDISK_COPY_INTO_ALLOCATE (-S 0) every byte is written, in order, a
 * buffer at a time, and no block status is asked (without TOP_ONLY).
 *
 * Each step takes one disk's lock alone (never both), as compare does; both
 * disks are registered as running a shared operation for the whole copy, so
 * neither chain changes under it. */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

typedef op_side into_side;

/* With VDISK_COPY_INTO_ALLOCATE the blocks it allocates are written whole,
 * zeros included (-S 0: no hole in the file). */
static int into_write(into_side *s, const void *buf, size_t len, uint64_t offset, uint32_t flags) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(s->d);

        if (flags & VDISK_COPY_INTO_ALLOCATE)
                return rw_write_filled(s->d, s->top, buf, len, offset);
        return rw_write(s->d, s->top, buf, len, offset);
}

static bool extent_reads_zero(const vdisk_extent *e) {
        return (e->flags & VDISK_EXTENT_ZERO) && !(e->flags & VDISK_EXTENT_DATA);
}

/* [offset, offset+len) of the destination must read zeros: nothing to do
 * where it does already; elsewhere zeroed a buffer's length per lock hold. */
static int into_zero(into_side *dst, uint64_t offset, uint64_t len, uint32_t flags, vdisk_progress *p) {
        _cleanup_free_ uint8_t *zeros = NULL;

        if (flags & VDISK_COPY_INTO_ALLOCATE) {
                /* -S 0: the zeros are written, allocated. */
                zeros = calloc(1, OP_BUFFER_SIZE);
                if (!zeros)
                        return vdisk_error(-ENOMEM, "out of memory");
        }
        while (len > 0) {
                vdisk_extent e;
                uint64_t n;
                int r;

                if (zeros) {
                        n = MIN(len, (uint64_t) OP_BUFFER_SIZE);
                        r = into_write(dst, zeros, (size_t) n, offset, flags);
                        if (r < 0)
                                return r;
                } else if (flags & VDISK_COPY_INTO_TARGET_ZERO)
                        n = len;
                else {
                        r = op_side_status(dst, offset, len, &e);
                        if (r < 0)
                                return r;
                        n = e.length > 0 && e.length <= len ? e.length : len;
                        if (!extent_reads_zero(&e)) {
                                _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = NULL;

                                n = MIN(n, (uint64_t) OP_BUFFER_SIZE);
                                l = disk_lock(dst->d);
                                r = rw_write_zeroes(dst->d, dst->top, (int) dst->top - 1, offset, n);
                                if (r < 0)
                                        return r;
                        }
                }
                r = progress_add(p, n);
                if (r < 0)
                        return r;
                offset += n;
                len -= n;
        }
        return 0;
}

/* One cluster of data compressed (or plain when it does not shrink)
 * into the top image, under its disk's lock. */
static int into_write_encoded(into_side *dst, const uint8_t *data, size_t len, uint64_t offset, uint8_t *out) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(dst->d);
        vdisk_image *img = dst->d->images[dst->top];
        size_t out_len = 0;
        int r;

        if (!img->writable || img->info_only)
                return vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io));
        if (len < img->layout.cluster_size && offset + len != img->size)
                return rw_write(dst->d, dst->top, data, len, offset);   /* a partial cluster inside */
        r = img->be->encode(img->state, data, len, out, &out_len);
        if (r >= 0 && img->be->note_write)
                r = img->be->note_write(img->state, offset, len);
        if (r >= 0)
                r = img->be->stream_write_encoded(img->state, offset, len, out, out_len);
        return r < 0 ? vdisk_error_prefix(r, vdisk_io_name(img->io)) : 0;
}

/* convert -c -n: the source a buffer at a time, each cluster of it
 * compressed into the destination (see VDISK_COPY_INTO_COMPRESS); with
 * ALLOCATE (-c -S 0) the clusters of zeros too. */
static int into_run_compressed(into_side *src, into_side *dst, uint32_t flags, vdisk_progress *p) {
        _cleanup_free_ uint8_t *buf = NULL, *out = NULL;
        uint64_t size = src->size, offset = 0, cs;
        vdisk_image *img;
        int r;

        pthread_mutex_lock(&dst->d->lock);
        img = dst->d->images[dst->top];
        cs = img->layout.cluster_size;
        if (!(img->be->info.caps & VDISK_CAP_COMPRESS) || !img->be->encode || !img->be->encode_bound ||
            !img->be->stream_write_encoded || cs == 0)
                r = vdisk_error(-EOPNOTSUPP, "Compression not supported for this file format");
        else if (OP_BUFFER_SIZE % cs)
                r = vdisk_error(-EOPNOTSUPP, "%s: a cluster of %" PRIu64 " bytes does not divide the copy buffer",
                                vdisk_io_name(img->io), cs);
        else {
                out = malloc(img->be->encode_bound(img->state, (size_t) cs));
                r = out ? 0 : vdisk_error(-ENOMEM, "out of memory");
        }
        pthread_mutex_unlock(&dst->d->lock);
        if (r < 0)
                return r;
        buf = malloc(OP_BUFFER_SIZE);
        if (!buf)
                return vdisk_error(-ENOMEM, "out of memory");
        progress_set_total(p, size);
        while (offset < size) {
                size_t n = (size_t) MIN(size - offset, (uint64_t) OP_BUFFER_SIZE);
                vdisk_extent e;

                r = flags & VDISK_COPY_INTO_ALLOCATE ? 0 : op_side_status(src, offset, n, &e);
                if (r < 0)
                        return r;
                if (!(flags & VDISK_COPY_INTO_ALLOCATE) && extent_reads_zero(&e) && e.length >= n) {
                        r = into_zero(dst, offset, n, flags, p);
                        if (r < 0)
                                return r;
                        offset += n;
                        continue;
                }
                r = op_side_read(src, buf, n, offset);
                if (r < 0)
                        return r;
                for (size_t k = 0; k < n; k += (size_t) cs) {
                        size_t len = (size_t) MIN((uint64_t) n - k, cs);

                        if (!(flags & VDISK_COPY_INTO_ALLOCATE) && mem_is_zero(buf + k, len))
                                r = into_zero(dst, offset + k, len, flags, p);
                        else {
                                r = into_write_encoded(dst, buf + k, len, offset + k, out);
                                if (r >= 0)
                                        r = progress_add(p, len);
                        }
                        if (r < 0)
                                return r;
                }
                offset += n;
        }
        return 0;
}

static int into_run(into_side *src, into_side *dst, uint32_t flags, vdisk_progress *p) {
        _cleanup_free_ uint8_t *buf = NULL, *dbuf = NULL;
        uint64_t size = src->size, offset = 0;
        int r;

        progress_set_total(p, size);
        buf = malloc(OP_BUFFER_SIZE);
        if (!buf)
                return vdisk_error(-ENOMEM, "out of memory");

        while (offset < size) {
                vdisk_extent e;
                uint64_t step;
                size_t n;
                bool write = true;

                if ((flags & VDISK_COPY_INTO_ALLOCATE) && !(flags & VDISK_COPY_INTO_TOP_ONLY)) {
                        /* -S 0: every byte is written, so no status is
                         * needed: the source a buffer at a time, in order
                         * (a stream image takes whole grains in order). */
                        n = (size_t) MIN(size - offset, (uint64_t) OP_BUFFER_SIZE);
                        r = op_side_read(src, buf, n, offset);
                        if (r >= 0)
                                r = into_write(dst, buf, n, offset, flags);
                        if (r >= 0)
                                r = progress_add(p, n);
                        if (r < 0)
                                return r;
                        offset += n;
                        continue;
                }
                r = op_side_status(src, offset, MIN(size - offset, OP_STATUS_SPAN), &e);
                if (r < 0)
                        return r;
                step = e.length > 0 && e.length <= size - offset ? e.length : size - offset;

                if ((flags & VDISK_COPY_INTO_TOP_ONLY) && e.depth != 0) {
                        /* Defined by the source's parents (or by nothing):
                         * the destination's parents hold that already. */
                        r = progress_add(p, step);
                        if (r < 0)
                                return r;
                        offset += step;
                        continue;
                }
                if (extent_reads_zero(&e)) {
                        r = into_zero(dst, offset, step, flags, p);
                        if (r < 0)
                                return r;
                        offset += step;
                        continue;
                }
                n = (size_t) MIN(step, (uint64_t) OP_BUFFER_SIZE);
                r = op_side_read(src, buf, n, offset);
                if (r < 0)
                        return r;
                if (!(flags & (VDISK_COPY_INTO_TOP_ONLY | VDISK_COPY_INTO_ALLOCATE)) && mem_is_zero(buf, n)) {
                        r = into_zero(dst, offset, n, flags, p);
                        if (r < 0)
                                return r;
                        offset += n;
                        continue;
                }
                if (flags & VDISK_COPY_INTO_TOP_ONLY) {
                        /* convert -n -B: data the destination reads already is
                         * not rewritten. */
                        if (!dbuf && !(dbuf = malloc(OP_BUFFER_SIZE)))
                                return vdisk_error(-ENOMEM, "out of memory");
                        r = op_side_read(dst, dbuf, n, offset);
                        if (r < 0)
                                return r;
                        write = memcmp(buf, dbuf, n) != 0;
                }
                if (write) {
                        r = into_write(dst, buf, n, offset, flags);
                        if (r < 0)
                                return r;
                }
                r = progress_add(p, n);
                if (r < 0)
                        return r;
                offset += n;
        }
        return 0;
}

int vdisk_copy_into(vdisk_disk *src, vdisk_disk *dst, uint32_t flags, vdisk_progress *p) {
        into_side s = { .d = src }, t = { .d = dst };
        int r;

        if (!src || !dst || src == dst)
                return vdisk_error(-EINVAL, "invalid arguments");
        if (flags & ~(uint32_t) (VDISK_COPY_INTO_TARGET_ZERO | VDISK_COPY_INTO_TOP_ONLY | VDISK_COPY_INTO_COMPRESS |
                                 VDISK_COPY_INTO_ALLOCATE))
                return vdisk_error(-EINVAL, "unknown copy flags 0x%" PRIx32, flags);
        if ((flags & VDISK_COPY_INTO_COMPRESS) && (flags & VDISK_COPY_INTO_TOP_ONLY))
                return vdisk_error(-EINVAL, "compressed copies into an existing image take the whole source");
        if (src->n == 0 || dst->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        r = op_side_begin(&s, false);
        if (r >= 0)
                r = op_side_begin(&t, true);
        if (r >= 0 && t.size < s.size)
                r = vdisk_error(-EINVAL, "%s: the target is smaller than the source (%" PRIu64 " < %" PRIu64
                                " bytes)", vdisk_io_name(dst->images[t.top]->io), t.size, s.size);
        if (r >= 0)
                r = flags & VDISK_COPY_INTO_COMPRESS ? into_run_compressed(&s, &t, flags, p) : into_run(&s, &t, flags, p);
        op_side_end(&s);
        op_side_end(&t);
        /* Only a final flush makes the copy a success. */
        if (r >= 0)
                r = vdisk_disk_flush(dst);
        if (r >= 0)
                progress_finish(p);
        return r;
}
