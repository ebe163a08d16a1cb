/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The encoding stage of copy, for destinations that store units encoded
 * (BACKEND_STREAM with encode(): VMDK streamOptimized grains; and a copy
 * that compresses into a format with encode(): qcow2 compressed clusters).
 *
 * Copy hands over one buffer of source data at a time (up to
 * OP_BUFFER_SIZE, unit aligned). A pool of worker threads, one per core,
 * started once per copy, encodes its units — encode() is pure, so they share
 * nothing but the index of the next unit to take — while the calling thread
 * writes the encoded units in order as they become ready, and encodes one
 * itself whenever the next to write is not ready and one is still untaken.
 * So writing overlaps encoding, and no thread is started per buffer. All-zero
 * units are not written: a stream image reads unwritten units as
 * unallocated, and a new image has nothing below it.
 *
 * Memory: one encoded-unit buffer (encode_bound()) per unit of a copy buffer.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

#define ENCODE_THREADS_MAX 64u

typedef struct encode_unit {
        uint64_t offset;
        size_t len;
        uint8_t *out;
        size_t out_len;
        int r;
        bool zero, done;
} encode_unit;

struct encode_pool {
        vdisk_image *img;
        pthread_mutex_t lock;
        pthread_cond_t work;            /* a unit to take, or quit */
        pthread_cond_t done;            /* a unit was encoded */
        pthread_t threads[ENCODE_THREADS_MAX];
        unsigned n_threads;
        bool quit;
        bool zeros_matter;              /* zero units are encoded and written too */

        /* the buffer being encoded; under lock: next, units[].done */
        const uint8_t *buf;
        uint64_t offset;
        size_t n_units, next, max_units, bound;
        encode_unit *units;
};

/* Asked once: sysconf() reads a file in /sys every time. */
static unsigned encode_threads(void) {
        static _Atomic unsigned cached;
        unsigned c = atomic_load(&cached);

        if (c == 0) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);

                c = n < 1 ? 1 : MIN((unsigned) n, ENCODE_THREADS_MAX);
                atomic_store(&cached, c);
        }
        return c;
}

/* Encodes unit i (taken under the lock, encoded without it); returns with
 * the lock held and the unit marked done. */
static void encode_one(encode_pool *p, size_t i) {
        encode_unit *u = &p->units[i];
        const uint8_t *in = p->buf + (u->offset - p->offset);

        pthread_mutex_unlock(&p->lock);
        u->zero = !p->zeros_matter && mem_is_zero(in, u->len);
        if (!u->zero)
                u->r = p->img->be->encode(p->img->state, in, u->len, u->out, &u->out_len);
        pthread_mutex_lock(&p->lock);
        u->done = true;
        pthread_cond_broadcast(&p->done);
}

static void *encode_worker(void *arg) {
        encode_pool *p = arg;

        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (!p->quit && p->next >= p->n_units)
                        pthread_cond_wait(&p->work, &p->lock);
                if (p->quit)
                        break;
                encode_one(p, p->next++);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

void encode_pool_free(encode_pool *p) {
        if (!p)
                return;
        pthread_mutex_lock(&p->lock);
        p->quit = true;
        pthread_cond_broadcast(&p->work);
        pthread_mutex_unlock(&p->lock);
        for (unsigned t = 0; t < p->n_threads; t++)
                pthread_join(p->threads[t], NULL);
        if (p->units)
                for (size_t i = 0; i < p->max_units; i++)
                        free(p->units[i].out);
        free(p->units);
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->work);
        pthread_mutex_destroy(&p->lock);
        free(p);
}

int encode_pool_new(vdisk_image *img, unsigned threads, bool zeros_matter, encode_pool **ret) {
        uint64_t unit = img->layout.cluster_size;
        encode_pool *p;

        assert(img->be->encode && img->be->encode_bound && img->be->stream_write_encoded && unit > 0);
        p = calloc(1, sizeof *p);
        if (!p)
                return vdisk_error(-ENOMEM, "out of memory");
        p->img = img;
        p->zeros_matter = zeros_matter;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->work, NULL);
        pthread_cond_init(&p->done, NULL);
        p->max_units = (size_t) DIV_ROUND_UP((uint64_t) OP_BUFFER_SIZE, unit);
        p->bound = img->be->encode_bound(img->state, (size_t) MIN(unit, (uint64_t) OP_BUFFER_SIZE));
        p->units = calloc(p->max_units, sizeof *p->units);
        if (!p->units)
                goto oom;
        for (size_t i = 0; i < p->max_units; i++) {
                p->units[i].out = malloc(p->bound);
                if (!p->units[i].out)
                        goto oom;
        }
        /* One worker per core: the calling thread mostly writes. Fewer
         * workers than asked for (or none) still encode everything. An
         * explicit `threads` counts the calling thread, which encodes too. */
        unsigned n = threads ? MIN(threads - 1, ENCODE_THREADS_MAX) : encode_threads();

        for (unsigned t = 0; t < n; t++) {
                if (pthread_create(&p->threads[p->n_threads], NULL, encode_worker, p) != 0)
                        break;
                p->n_threads++;
        }
        *ret = p;
        return 0;
oom:
        encode_pool_free(p);
        return vdisk_error(-ENOMEM, "out of memory");
}

int encode_pool_buffer(encode_pool *p, const uint8_t *buf, uint64_t len, uint64_t offset) {
        vdisk_image *img = p->img;
        uint64_t unit = img->layout.cluster_size;
        size_t n = (size_t) DIV_ROUND_UP(len, unit);
        int r = 0;

        if (offset % unit)
                return vdisk_error(-EINVAL, "%s: encoded writes must start at a unit boundary", vdisk_io_name(img->io));
        if (n > p->max_units)
                return vdisk_error(-EINVAL, "%s: a buffer of %" PRIu64 " bytes is larger than the encoder's",
                                   vdisk_io_name(img->io), len);

        pthread_mutex_lock(&p->lock);
        p->buf = buf;
        p->offset = offset;
        for (size_t i = 0; i < n; i++) {
                encode_unit *u = &p->units[i];

                u->offset = offset + i * unit;
                u->len = (size_t) MIN(unit, offset + len - u->offset);
                u->r = 0;
                u->out_len = 0;
                u->zero = u->done = false;
        }
        p->next = 0;
        p->n_units = n;
        pthread_cond_broadcast(&p->work);

        for (size_t w = 0; w < n; w++) {
                encode_unit *u = &p->units[w];

                while (!u->done) {
                        if (p->next < p->n_units)
                                encode_one(p, p->next++);
                        else
                                pthread_cond_wait(&p->done, &p->lock);
                }
                if (r < 0 || u->zero)
                        continue;       /* after an error: only wait for the rest */
                pthread_mutex_unlock(&p->lock);
                if (u->r < 0)
                        r = vdisk_error_prefix(u->r, vdisk_io_name(img->io));
                else if (u->out_len > p->bound)
                        r = vdisk_error(-EOVERFLOW, "%s: a unit encoded to %zu bytes, above its bound %zu",
                                        vdisk_io_name(img->io), u->out_len, p->bound);
                else {
                        r = img->be->stream_write_encoded(img->state, u->offset, u->len, u->out, u->out_len);
                        if (r < 0)
                                r = vdisk_error_prefix(r, vdisk_io_name(img->io));
                }
                pthread_mutex_lock(&p->lock);
        }
        /* Every unit is done: no worker touches this buffer any more. */
        p->n_units = 0;
        p->buf = NULL;
        pthread_mutex_unlock(&p->lock);
        return r;
}
