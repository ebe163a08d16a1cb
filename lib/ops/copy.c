/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Copy / convert (VDCopyEx).
 *
 * A two-stage pipeline: a reader thread walks the source's block status and
 * reads the ranges that hold data into a ring of large buffers; the calling
 * thread finds the zero runs in each buffer and writes only the rest. Ranges
 * the source does not define, or defines as zeros, are never read and never
 * written: a new image already reads zeros there. (Into a differencing
 * destination, zeros are written as zeros, since a parent below may not be
 * zero there.) The destination is flushed once, at the end.
 *
 * Locks (core/guard.c): the reader takes the source's lock for one chunk
 * (block status + one read), the writer the destination's for one buffer;
 * never both at once, and neither while waiting for the ring or calling the
 * progress callback. Both disks register the operation, so their chains stay
 * put in between: the source is read at the levels it had at the start, the
 * new image is the destination's top until the copy ends.
 *
 * Memory: RING_SLOTS buffers of OP_BUFFER_SIZE (16 MiB in all), one more with
 * VDISK_COPY_SKIP_SAME (the parents' content of the buffer being written).
 * An encoding copy (compressed clusters, stream grains) hands up to
 * RING_SLOTS - 1 slots to the encode pool at once (encode.c), which holds
 * as much again of encoded units at most (~12 MiB): about 30 MiB in all.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

#define RING_SLOTS 4
#define DEFAULT_SPARSE 4096u

typedef enum slot_kind { SLOT_DATA, SLOT_ZERO, SLOT_SKIP, SLOT_END, SLOT_ERROR } slot_kind;

typedef struct slot {
        slot_kind kind;
        uint64_t offset, length;
        uint8_t *buf;
} slot;

typedef struct pipeline {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        slot ring[RING_SLOTS];
        unsigned head, count;     /* consumer reads ring[head], count slots filled */
        int stop;                 /* consumer gave up */
        int error;                /* reader's error code */
        char error_msg[1024];

        vdisk_disk *src;
        unsigned src_bottom, src_top;
        uint64_t size;
        uint64_t src_offset;      /* the source offset of destination offset 0 (dd) */
        int zeros_matter;         /* destination is a diff: zeros must be written */
        uint64_t unit;            /* destination is a stream: slots hold whole units (0: no) */
        uint64_t same_unit;       /* SKIP_SAME: compare with the parents in units of this size (0: off) */
        uint8_t *parent_buf;      /* ... reading them into this buffer (OP_BUFFER_SIZE) */
        bool encode;              /* ... that copy encodes (encode()) */
        unsigned threads;         /* encoding threads (0: one per CPU) */
} pipeline;

/* Producer: waits for a free slot; returns NULL when the consumer stopped. */
static slot *slot_get_free(pipeline *pl) {
        slot *s = NULL;

        pthread_mutex_lock(&pl->lock);
        while (pl->count == RING_SLOTS && !pl->stop)
                pthread_cond_wait(&pl->cond, &pl->lock);
        if (!pl->stop)
                s = &pl->ring[(pl->head + pl->count) % RING_SLOTS];
        pthread_mutex_unlock(&pl->lock);
        return s;
}

static void slot_publish(pipeline *pl) {
        pthread_mutex_lock(&pl->lock);
        pl->count++;
        pthread_cond_broadcast(&pl->cond);
        pthread_mutex_unlock(&pl->lock);
}

/* A DATA extent of the source at `top` may lie in a hole of the image's own
 * file: a block qemu's vpc driver allocated and wrote in part, a fixed or
 * preallocated image never written. The hole reads zeros, so it need not be
 * read, nor scanned for zeros: `e` becomes ZERO over the hole at its start,
 * or is cut where such a hole begins. Only where the io can tell (SEEK_DATA);
 * a host offset past the file's end reads zeros too. */
static void skip_host_hole(vdisk_disk *src, unsigned top, vdisk_extent *e) {
        vdisk_image *img;

        if (e->depth < 0 || !(e->flags & VDISK_EXTENT_DATA) || !e->host_offset_valid)
                return;
        img = src->images[top - (unsigned) e->depth];
        /* Holes of an identity image (raw) are ZERO extents already. */
        if ((img->be->flags & BACKEND_IDENTITY) || e->file != vdisk_io_name(img->io))
                return;
        if (extent_file_run(img->io, e))
                e->flags = (e->flags & ~(uint32_t) VDISK_EXTENT_DATA) | VDISK_EXTENT_ZERO;
}

static void *reader_main(void *arg) {
        pipeline *pl = arg;
        uint64_t offset = 0;
        slot *s;
        int r = 0;

        while (offset < pl->size) {
                vdisk_extent e;
                uint64_t len = 0;

                s = slot_get_free(pl);
                if (!s)
                        return NULL;
                /* One chunk under the source's lock: what it is, and its data. */
                pthread_mutex_lock(&pl->src->lock);
                r = rw_status(pl->src, pl->src_bottom, pl->src_top, pl->src_offset + offset,
                              MIN(pl->size - offset, (uint64_t) 1 << 30), &e);
                if (r >= 0)
                        skip_host_hole(pl->src, pl->src_top, &e);
                if (r >= 0 && pl->unit) {
                        /* Whole units only: skip whole units of nothing,
                         * read any unit that holds some data in full. */
                        bool nothing = e.depth < 0 || !(e.flags & VDISK_EXTENT_DATA);
                        uint64_t whole = ALIGN_DOWN(e.length, pl->unit);

                        if (nothing && whole > 0)
                                e.length = whole;
                        else {
                                e.flags |= VDISK_EXTENT_DATA;
                                e.depth = MAX(e.depth, 0);
                                e.length = MIN(ALIGN_UP(e.length, pl->unit), pl->size - offset);
                        }
                }
                if (r >= 0 && e.depth >= 0 && (e.flags & VDISK_EXTENT_DATA)) {
                        len = MIN(e.length, (uint64_t) OP_BUFFER_SIZE);
                        /* Keep later reads aligned to the buffer size. */
                        if (len == OP_BUFFER_SIZE && offset % OP_BUFFER_SIZE)
                                len = OP_BUFFER_SIZE - offset % OP_BUFFER_SIZE;
                        r = rw_read(pl->src, pl->src_top, s->buf, (size_t) len, pl->src_offset + offset);
                }
                pthread_mutex_unlock(&pl->src->lock);
                if (r < 0)
                        break;
                if (len == 0) {
                        /* Not defined by the copied images, or zeros. */
                        int zero = (e.flags & VDISK_EXTENT_ZERO) || e.depth >= 0;
                        s->kind = zero && pl->zeros_matter ? SLOT_ZERO : SLOT_SKIP;
                        s->offset = offset;
                        s->length = e.length;
                        slot_publish(pl);
                        offset += e.length;
                        continue;
                }
                s->kind = SLOT_DATA;
                s->offset = offset;
                s->length = len;
                slot_publish(pl);
                offset += len;
        }

        s = slot_get_free(pl);
        if (!s)
                return NULL;
        if (r < 0) {
                s->kind = SLOT_ERROR;
                pthread_mutex_lock(&pl->lock);
                pl->error = r;
                snprintf(pl->error_msg, sizeof pl->error_msg, "%s", vdisk_last_error());
                pthread_mutex_unlock(&pl->lock);
        } else
                s->kind = SLOT_END;
        slot_publish(pl);
        return NULL;
}

/* Writes a data buffer, skipping runs of at least `sparse` zero bytes (aligned
 * to `sparse`) unless zeros matter, in which case they are written as zeros. */
static int write_data(vdisk_disk *dst, unsigned level, const uint8_t *buf, uint64_t len, uint64_t offset,
                      uint64_t sparse, int zeros_matter) {
        uint64_t i = 0;
        int r;

        while (i < len) {
                uint64_t start = i, n;
                bool zero;

                n = MIN(sparse - (offset + i) % sparse, len - i);
                zero = mem_is_zero(buf + i, (size_t) n);
                i += n;
                while (i < len) {
                        n = MIN(sparse, len - i);
                        if (mem_is_zero(buf + i, (size_t) n) != zero)
                                break;
                        i += n;
                }
                if (!zero)
                        r = rw_write(dst, level, buf + start, (size_t) (i - start), offset + start);
                else if (zeros_matter)
                        r = rw_write_zeroes(dst, level, (int) level - 1, offset + start, i - start);
                else
                        r = 0;
                if (r < 0)
                        return r;
        }
        return 0;
}

/* SKIP_SAME: writes only the units of the buffer whose content differs from
 * what the destination's parents read there (the rest shows through). */
static int write_different(vdisk_disk *dst, unsigned level, const uint8_t *buf, uint8_t *pbuf, uint64_t len,
                           uint64_t offset, uint64_t unit, uint64_t sparse) {
        uint64_t i = 0;
        int r;

        assert(level > 0);
        r = rw_read(dst, level - 1, pbuf, (size_t) len, offset);
        if (r < 0)
                return r;
        while (i < len) {
                uint64_t start = i, n;
                bool same;

                n = MIN(unit - (offset + i) % unit, len - i);
                same = memcmp(buf + i, pbuf + i, (size_t) n) == 0;
                i += n;
                while (i < len) {
                        n = MIN(unit, len - i);
                        if ((memcmp(buf + i, pbuf + i, (size_t) n) == 0) != same)
                                break;
                        i += n;
                }
                if (!same) {
                        r = write_data(dst, level, buf + start, i - start, offset + start, sparse, 1);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* A stream destination takes whole units in order: every unit of the buffer
 * that holds data, in one write; all-zero units are left out (a stream image
 * reads unwritten units as unallocated). */
static int write_units(vdisk_disk *dst, unsigned level, const uint8_t *buf, uint64_t len, uint64_t offset,
                       uint64_t unit) {
        int r;

        for (uint64_t i = 0; i < len; i += unit) {
                size_t n = (size_t) MIN(unit, len - i);

                if (mem_is_zero(buf + i, n))
                        continue;
                r = rw_write(dst, level, buf + i, n, offset + i);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Gives back the ring's oldest `n` slots (done), counting their progress. */
static int slots_release(pipeline *pl, vdisk_progress *p, unsigned n) {
        int r = 0;

        for (unsigned i = 0; i < n; i++) {
                uint64_t length;

                pthread_mutex_lock(&pl->lock);
                assert(pl->count > 0);
                length = pl->ring[pl->head].length;
                pl->head = (pl->head + 1) % RING_SLOTS;
                pl->count--;
                pthread_cond_broadcast(&pl->cond);
                pthread_mutex_unlock(&pl->lock);
                if (r >= 0)
                        r = progress_add(p, length);
        }
        return r;
}

static int run_pipeline(pipeline *pl, vdisk_disk *dst, unsigned level, uint64_t sparse, vdisk_progress *p) {
        encode_pool *pool = NULL;
        unsigned pending = 0;   /* slots ring[head ...] handed to the pool, not done yet */
        pthread_t reader;
        int r = 0, rr;

        for (unsigned i = 0; i < RING_SLOTS; i++) {
                pl->ring[i].buf = buf_alloc(OP_BUFFER_SIZE);
                if (!pl->ring[i].buf) {
                        r = vdisk_error(-ENOMEM, "out of memory");
                        goto out;
                }
        }
        if (pl->same_unit) {
                pl->parent_buf = buf_alloc(OP_BUFFER_SIZE);
                if (!pl->parent_buf) {
                        r = vdisk_error(-ENOMEM, "out of memory");
                        goto out;
                }
        }
        if (pl->encode) {
                /* All slots but one in the pool: the reader fills that one
                 * while the pool encodes and writes the others. */
                pthread_mutex_lock(&dst->lock);
                r = encode_pool_new(dst->images[level], pl->threads, pl->zeros_matter,
                                    MIN(RING_SLOTS - 1, ENCODE_BUFFERS_MAX), &pool);
                pthread_mutex_unlock(&dst->lock);
                if (r < 0)
                        goto out;
        }
        rr = pthread_create(&reader, NULL, reader_main, pl);
        if (rr != 0) {
                r = vdisk_error(-rr, "cannot start the reader thread");
                goto out;
        }

        for (;;) {
                slot *s;

                pthread_mutex_lock(&pl->lock);
                while (pl->count <= pending)
                        pthread_cond_wait(&pl->cond, &pl->lock);
                s = &pl->ring[(pl->head + pending) % RING_SLOTS];
                pthread_mutex_unlock(&pl->lock);

                if (pool && (s->kind == SLOT_DATA || s->kind == SLOT_SKIP)) {
                        /* Into the pool, in order (a skipped range holds
                         * its place); the slots it is done with come back. */
                        pthread_mutex_lock(&dst->lock);
                        r = encode_pool_submit(pool, s->kind == SLOT_DATA ? s->buf : NULL,
                                               s->kind == SLOT_DATA ? s->length : 0, s->offset);
                        pthread_mutex_unlock(&dst->lock);
                        if (r < 0)
                                break;
                        pending++;
                        assert((unsigned) r <= pending);
                        pending -= (unsigned) r;
                        r = slots_release(pl, p, (unsigned) r);
                        if (r < 0)
                                break;
                        continue;
                }
                if (s->kind == SLOT_ERROR) {
                        r = vdisk_error(pl->error, "%s", pl->error_msg);
                        break;
                }
                if (pool && pending > 0) {
                        /* The end, or zeros to write: the pool's units first. */
                        pthread_mutex_lock(&dst->lock);
                        r = encode_pool_drain(pool);
                        pthread_mutex_unlock(&dst->lock);
                        if (r < 0)
                                break;
                        assert((unsigned) r == pending);
                        pending = 0;
                        r = slots_release(pl, p, (unsigned) r);
                        if (r < 0)
                                break;
                }
                if (s->kind == SLOT_END)
                        break;
                pthread_mutex_lock(&dst->lock);
                if (s->kind == SLOT_DATA && pl->unit)
                        r = write_units(dst, level, s->buf, s->length, s->offset, pl->unit);
                else if (s->kind == SLOT_DATA && pl->same_unit)
                        r = write_different(dst, level, s->buf, pl->parent_buf, s->length, s->offset,
                                            pl->same_unit, sparse);
                else if (s->kind == SLOT_DATA)
                        r = write_data(dst, level, s->buf, s->length, s->offset, sparse, pl->zeros_matter);
                else if (s->kind == SLOT_ZERO)
                        r = rw_write_zeroes(dst, level, (int) level - 1, s->offset, s->length);
                pthread_mutex_unlock(&dst->lock);
                if (r < 0)
                        break;
                r = slots_release(pl, p, 1);
                if (r < 0)
                        break;
        }

        /* On failure or cancel the slots still in the pool are dropped:
         * encode_pool_free() below writes nothing. */
        pthread_mutex_lock(&pl->lock);
        pl->stop = 1;
        pthread_cond_broadcast(&pl->cond);
        pthread_mutex_unlock(&pl->lock);
        pthread_join(reader, NULL);
out:
        encode_pool_free(pool);
        free(pl->parent_buf);
        for (unsigned i = 0; i < RING_SLOTS; i++)
                free(pl->ring[i].buf);
        return r;
}

/* copy_run() on the source levels [src_bottom, src_top] found at the start
 * (both disks registered; no lock held). */
static int copy_levels(vdisk_disk *src, unsigned src_bottom, unsigned src_top, uint64_t src_size,
                       uint64_t src_offset, vdisk_disk *dst, unsigned level, uint64_t size, uint64_t sparse,
                       const vdisk_copy_opts *o, vdisk_progress *p) {
        uint32_t flags = o ? o->flags : 0;
        pipeline pl = {};
        char msg[1024];
        int r = 0;

        pl.src = src;
        pl.src_top = src_top;
        pl.src_bottom = src_bottom;
        pl.src_offset = src_offset;
        pl.size = src_offset < src_size ? MIN(size, src_size - src_offset) : 0;
        pl.zeros_matter = level > 0;
        pl.threads = o ? o->threads : 0;
        pthread_mutex_lock(&dst->lock);
        if (o && o->compress && !((dst->images[level]->be->flags | dst->images[level]->layout.flags) &
                                  BACKEND_STREAM)) {
                /* Compressed units (qcow2 compressed clusters): whole
                 * clusters through the encode pool, like a stream. */
                vdisk_image *img = dst->images[level];

                if (!(img->be->info.caps & VDISK_CAP_COMPRESS) || !img->be->encode ||
                    !img->be->stream_write_encoded || img->layout.cluster_size == 0)
                        r = vdisk_error(-EOPNOTSUPP, "Compression not supported for this file format");
                else if (OP_BUFFER_SIZE % img->layout.cluster_size)
                        r = vdisk_error(-EOPNOTSUPP, "%s: a cluster of %" PRIu64 " bytes does not divide the copy "
                                        "buffer", vdisk_io_name(img->io), img->layout.cluster_size);
                pl.unit = img->layout.cluster_size;
                pl.encode = true;
        } else if (((dst->images[level]->be->flags | dst->images[level]->layout.flags) & BACKEND_STREAM) &&
            dst->images[level]->layout.cluster_size > 0) {
                pl.unit = dst->images[level]->layout.cluster_size;
                pl.encode = dst->images[level]->be->encode;
                if (OP_BUFFER_SIZE % pl.unit)
                        r = vdisk_error(-EOPNOTSUPP, "%s: a unit of %" PRIu64 " bytes does not divide the copy "
                                        "buffer", vdisk_io_name(dst->images[level]->io), pl.unit);
        }
        if (r >= 0 && !pl.unit && level > 0 && (flags & VDISK_COPY_SKIP_SAME)) {
                /* Whole clusters: a cluster that differs anywhere is written
                 * whole from the source, one that does not is left out. */
                uint64_t cs = dst->images[level]->layout.cluster_size;
                pl.same_unit = cs > 0 && cs <= OP_BUFFER_SIZE && OP_BUFFER_SIZE % cs == 0 ? cs : sparse;
        }
        if (r >= 0)
                image_queue_begin(dst->images[level], image_copy_path(dst->images[level]));
        pthread_mutex_unlock(&dst->lock);
        if (r < 0)
                return r;
        pthread_mutex_init(&pl.lock, NULL);
        pthread_cond_init(&pl.cond, NULL);
        progress_set_total(p, size);
        if (pl.src_bottom <= pl.src_top && pl.size > 0)
                r = run_pipeline(&pl, dst, level, sparse, p);
        pthread_cond_destroy(&pl.cond);
        pthread_mutex_destroy(&pl.lock);
        pthread_mutex_lock(&dst->lock);
        if (r >= 0) {
                /* A stream image gets its tables and footer, then the one
                 * flush (which drains the queues). */
                r = image_finish(dst->images[level]);
                if (r >= 0)
                        r = image_flush(dst->images[level]);
                if (r >= 0)
                        r = image_queue_end(dst->images[level]);
        }
        if (r < 0) {
                snprintf(msg, sizeof msg, "%s", vdisk_last_error());
                if (image_queue_end(dst->images[level]) < 0)
                        r = vdisk_error(r, "%s", msg);   /* the first error is the one to report */
        }
        pthread_mutex_unlock(&dst->lock);
        return r;
}

int copy_run(vdisk_disk *src, unsigned src_bottom, vdisk_disk *dst, unsigned level, uint64_t size,
             uint64_t sparse, vdisk_progress *p) {
        unsigned top;
        uint64_t src_size;

        pthread_mutex_lock(&src->lock);
        assert(src->n > 0);
        top = src->n - 1;
        src_size = src->images[top]->size;
        pthread_mutex_unlock(&src->lock);
        return copy_levels(src, src_bottom, top, src_size, 0, dst, level, size, sparse, NULL, p);
}

/* Under the destination's lock: the new image, registered and pinned. */
static int copy_create(vdisk_disk *dst, vdisk_io *dst_io, const char *format, const vdisk_copy_opts *o,
                       uint64_t size, unsigned *ret_level) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(dst);
        unsigned level;
        int r;

        if (o->from_same >= 0) {
                if (o->to_same < 0 || (unsigned) o->to_same + 1 != dst->n)
                        return vdisk_error(-EINVAL, "same-content images out of range");
        } else if (dst->n > 0 && o->to_same >= 0)
                return vdisk_error(-EINVAL, "to_same without from_same");
        r = disk_may_add(dst);
        if (r < 0)
                return r;
        if (dst->n == 0)
                r = disk_create_base(dst, dst_io, format, size, o->create.size ? &o->create : NULL);
        else
                r = disk_create_diff(dst, dst_io, format, o->create.size ? &o->create : NULL);
        if (r < 0)
                return r;
        level = dst->n - 1;
        if (dst->images[level]->size != size) {
                r = resize_image(dst, level, size, NULL);
                if (r < 0) {
                        dst->images[level]->writable = 0;
                        (void) disk_remove_range(dst, level, level);
                        return r;
                }
        }
        r = disk_op_begin(dst, OP_SHARED, level);
        assert(r >= 0);   /* no merge: disk_may_add() said so */
        dst->pin = (int) level;
        *ret_level = level;
        return 0;
}

/* Under the destination's lock: the end of the copy. On failure the new image
 * leaves the chain (it is the top: nothing could be added above it). */
static void copy_finish(vdisk_disk *dst, unsigned level, int r) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(dst);

        disk_op_end(dst, OP_SHARED, level);
        dst->pin = -1;
        if (r < 0) {
                /* Leave the incomplete image as it is (the caller removes the file). */
                assert(level == dst->n - 1);
                dst->images[level]->writable = 0;
                (void) disk_remove_range(dst, level, level);
        }
}

int vdisk_copy(vdisk_disk *src, vdisk_disk *dst, vdisk_io *dst_io, const char *format,
               const vdisk_copy_opts *opts, vdisk_progress *p) {
        vdisk_copy_opts o = { .from_same = -1, .to_same = -1 };
        uint64_t size, sparse, src_size;
        unsigned level = 0, src_top;
        int r;

        if (!src || !dst || !dst_io || !format || src == dst)
                return vdisk_error(-EINVAL, "invalid arguments");
        if (opts) {
                if (opts->size < sizeof(vdisk_copy_opts))
                        return vdisk_error(-EINVAL, "vdisk_copy_opts.size not set");
                o = *opts;
        }
        if (o.flags & ~(uint32_t) VDISK_COPY_SKIP_SAME)
                return vdisk_error(-EINVAL, "unknown copy flags 0x%" PRIx32, o.flags);
        sparse = o.sparse_size ? o.sparse_size : DEFAULT_SPARSE;
        if (sparse % 512 || sparse > OP_BUFFER_SIZE)
                return vdisk_error(-EINVAL, "sparse size must be a multiple of 512 up to %u", OP_BUFFER_SIZE);

        if (o.compress) {
                /* Refused before anything is created (qemu-img's words). A
                 * stream format that encodes anyway (VMDK streamOptimized)
                 * is decided on the new image. */
                const vdisk_backend *be = backend_lookup(format);

                if (be && !(be->info.caps & VDISK_CAP_COMPRESS) && !be->encode)
                        return vdisk_error(-EOPNOTSUPP, "Compression not supported for this file format");
        }

        /* The source: checked and registered under its lock alone. */
        pthread_mutex_lock(&src->lock);
        r = disk_op_top(src, &src_top);
        for (unsigned i = 0; r >= 0 && i <= src_top; i++)
                if (src->images[i]->info_only)
                        r = vdisk_error(-EPERM, "%s: opened for information only",
                                        vdisk_io_name(src->images[i]->io));
        if (r >= 0 && o.from_same >= 0 && (unsigned) o.from_same > src_top)
                r = vdisk_error(-EINVAL, "same-content images out of range");
        if (r >= 0 && o.from_same >= 0 && o.src_offset > 0)
                r = vdisk_error(-EINVAL, "a source offset with same-content images");
        if (r >= 0)
                r = disk_op_begin(src, OP_SHARED, src_top);
        src_size = r >= 0 ? src->images[src_top]->size : 0;
        pthread_mutex_unlock(&src->lock);
        if (r < 0)
                return r;

        size = o.new_size ? o.new_size : src_size;
        r = copy_create(dst, dst_io, format, &o, size, &level);
        if (r >= 0) {
                r = copy_levels(src, o.from_same >= 0 ? (unsigned) o.from_same + 1 : 0, src_top, src_size,
                                o.src_offset, dst, level, size, sparse, &o, p);
                copy_finish(dst, level, r);
        }
        pthread_mutex_lock(&src->lock);
        disk_op_end(src, OP_SHARED, src_top);
        pthread_mutex_unlock(&src->lock);
        if (r >= 0)
                progress_finish(p);
        return r;
}
