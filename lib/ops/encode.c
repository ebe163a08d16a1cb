/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The encoding stage of copy, for destinations that store units encoded
 * (BACKEND_STREAM with encode(): VMDK streamOptimized grains; and a copy
 * that compresses into a format with encode(): qcow2 compressed clusters).
 *
 * Copy hands over its buffers of source data one at a time (up to
 * OP_BUFFER_SIZE each, unit aligned) and gets them back, oldest first, once
 * every unit of the buffer is written. A pool of worker threads, one per
 * core, started once per copy, encodes the units — encode() is pure, so they
 * share nothing but the index of the next unit to take — while the calling
 * thread writes the encoded units in order as they become ready, and encodes
 * one itself whenever the next to write is not ready and one is still
 * untaken. Up to `buffers` buffers are in the pool at once: the workers go on
 * with the units of the next buffer while the last units of the one before
 * are encoded and written, and while copy's reader fills the next (no
 * barrier at the end of a buffer). All-zero units are not written: a stream
 * image reads unwritten units as unallocated, and a new image has nothing
 * below it.
 *
 * Failure: the first failed encode() or write stops the writing for good; no
 * unit is written after it, and every later call returns it.
 *
 * Memory: a ring of `buffers` x (units per buffer) unit records; each gets
 * its encoded-unit buffer (encode_bound()) when first encoded, so at most
 * `buffers` x OP_BUFFER_SIZE (and a bit: the bound) of encoded data, besides
 * copy's own buffers.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

#define ENCODE_THREADS_MAX 64u

typedef struct encode_unit {
        const uint8_t *in;
        uint64_t offset;
        size_t len;
        uint8_t *out;                   /* bound bytes, from its first encode on */
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
        size_t max_units, bound;

        /* Under lock. Units are numbered from the start of the copy;
         * unit n is units[n % cap]; written <= next <= queued. */
        encode_unit *units;
        size_t cap;                     /* buffers * max_units */
        uint64_t written;               /* the next unit to write */
        uint64_t next;                  /* the next unit to encode */
        uint64_t queued;                /* units handed over */
        uint64_t end;                   /* destination offset after the last unit handed over */
        int error;                      /* the first failure: nothing written since */

        /* Buffers in the pool, oldest first: the unit number after each one's last. */
        uint64_t buf_end[ENCODE_BUFFERS_MAX];
        unsigned buf_head, buf_count, buffers;
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

/* Takes the next unit and encodes it without the lock; returns with the
 * lock held and the unit marked done. */
static void encode_next(encode_pool *p) {
        encode_unit *u = &p->units[p->next++ % p->cap];

        pthread_mutex_unlock(&p->lock);
        u->r = 0;
        u->zero = !p->zeros_matter && mem_is_zero(u->in, u->len);
        if (!u->zero && !u->out) {
                u->out = malloc(p->bound);
                if (!u->out)
                        u->r = -ENOMEM;
        }
        if (!u->zero && u->r == 0)
                u->r = p->img->be->encode(p->img->state, u->in, u->len, u->out, &u->out_len);
        pthread_mutex_lock(&p->lock);
        u->done = true;
        pthread_cond_broadcast(&p->done);
}

static void *encode_worker(void *arg) {
        encode_pool *p = arg;

        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (!p->quit && p->error == 0 && p->next >= p->queued)
                        pthread_cond_wait(&p->work, &p->lock);
                if (p->quit)
                        break;
                if (p->error == 0)
                        encode_next(p);
                else
                        pthread_cond_wait(&p->work, &p->lock);   /* nothing more is needed */
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
                for (size_t i = 0; i < p->cap; i++)
                        free(p->units[i].out);
        free(p->units);
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->work);
        pthread_mutex_destroy(&p->lock);
        free(p);
}

int encode_pool_new(vdisk_image *img, unsigned threads, bool zeros_matter, unsigned buffers, encode_pool **ret) {
        uint64_t unit = img->layout.cluster_size;
        encode_pool *p;

        assert(img->be->encode && img->be->encode_bound && img->be->stream_write_encoded && unit > 0);
        assert(buffers >= 1 && buffers <= ENCODE_BUFFERS_MAX);
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
        p->buffers = buffers;
        p->cap = p->max_units * buffers;
        p->units = calloc(p->cap, sizeof *p->units);
        if (!p->units) {
                encode_pool_free(p);
                return vdisk_error(-ENOMEM, "out of memory");
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
}

/* Writes one encoded unit (the lock dropped meanwhile). */
static int write_unit(encode_pool *p, const encode_unit *u) {
        vdisk_image *img = p->img;
        int r;

        if (u->zero)
                return 0;
        if (u->r < 0)
                return vdisk_error_prefix(u->r, vdisk_io_name(img->io));
        if (u->out_len > p->bound)
                return vdisk_error(-EOVERFLOW, "%s: a unit encoded to %zu bytes, above its bound %zu",
                                   vdisk_io_name(img->io), u->out_len, p->bound);
        pthread_mutex_unlock(&p->lock);
        r = img->be->stream_write_encoded(img->state, u->offset, u->len, u->out, u->out_len);
        if (r < 0)
                r = vdisk_error_prefix(r, vdisk_io_name(img->io));
        pthread_mutex_lock(&p->lock);
        return r;
}

/* Under the lock: writes the units in order, encoding too while the next
 * to write is not ready, until at most `keep` buffers are left in the pool;
 * then goes on with the units already encoded, up to the first that is not.
 * Returns the number of buffers done (retired, oldest first). */
static int pool_write(encode_pool *p, unsigned keep) {
        int n = 0, r;

        if (p->error < 0)
                return p->error;
        for (;;) {
                while (p->buf_count > 0 && p->buf_end[p->buf_head] <= p->written) {
                        p->buf_head = (p->buf_head + 1) % ENCODE_BUFFERS_MAX;
                        p->buf_count--;
                        n++;
                }
                if (p->written == p->queued)
                        return n;

                encode_unit *u = &p->units[p->written % p->cap];

                if (!u->done) {
                        if (p->buf_count <= keep)
                                return n;
                        if (p->next < p->queued)
                                encode_next(p);
                        else
                                pthread_cond_wait(&p->done, &p->lock);
                        continue;
                }
                r = write_unit(p, u);
                if (r < 0) {
                        p->error = r;
                        pthread_cond_broadcast(&p->work);
                        return r;
                }
                p->written++;
        }
}

int encode_pool_submit(encode_pool *p, const uint8_t *buf, uint64_t len, uint64_t offset) {
        vdisk_image *img = p->img;
        uint64_t unit = img->layout.cluster_size;
        size_t n = (size_t) DIV_ROUND_UP(len, unit);
        int done, r;

        if (len > 0 && offset % unit)
                return vdisk_error(-EINVAL, "%s: encoded writes must start at a unit boundary", vdisk_io_name(img->io));
        if (n > p->max_units)
                return vdisk_error(-EINVAL, "%s: a buffer of %" PRIu64 " bytes is larger than the encoder's",
                                   vdisk_io_name(img->io), len);

        pthread_mutex_lock(&p->lock);
        if (len > 0 && offset < p->end) {
                pthread_mutex_unlock(&p->lock);
                return vdisk_error(-EINVAL, "%s: encoded writes must come at rising offsets",
                                   vdisk_io_name(img->io));
        }
        /* Room for one more buffer (and so for its units in the ring). */
        done = pool_write(p, p->buffers - 1);
        if (done < 0) {
                pthread_mutex_unlock(&p->lock);
                return done;
        }
        for (size_t i = 0; i < n; i++) {
                encode_unit *u = &p->units[(p->queued + i) % p->cap];

                u->offset = offset + i * unit;
                u->in = buf + i * unit;
                u->len = (size_t) MIN(unit, offset + len - u->offset);
                u->out_len = 0;
                u->zero = u->done = false;
        }
        p->queued += n;
        if (len > 0)
                p->end = offset + len;
        p->buf_end[(p->buf_head + p->buf_count) % ENCODE_BUFFERS_MAX] = p->queued;
        p->buf_count++;
        pthread_cond_broadcast(&p->work);
        /* What is ready already goes out now. */
        r = pool_write(p, p->buffers);
        pthread_mutex_unlock(&p->lock);
        return r < 0 ? r : done + r;
}

int encode_pool_drain(encode_pool *p) {
        int r;

        pthread_mutex_lock(&p->lock);
        r = pool_write(p, 0);
        pthread_mutex_unlock(&p->lock);
        return r;
}

unsigned encode_pool_pending(encode_pool *p) {
        unsigned n;

        pthread_mutex_lock(&p->lock);
        n = p->buf_count;
        pthread_mutex_unlock(&p->lock);
        return n;
}
