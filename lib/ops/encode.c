/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The encoding stage of copy, for destinations that store units encoded
 * (BACKEND_STREAM with encode(): VMDK streamOptimized grains).
 *
 * Copy hands over one buffer of source data at a time (up to
 * OP_BUFFER_SIZE, unit aligned). Its units are encoded in parallel by a
 * few threads — encode() is pure, so they share nothing but an atomic
 * counter of the next unit to take — and then written in order by the
 * calling thread. All-zero units are not written: a stream image reads
 * unwritten units as unallocated, and a new image has nothing below it.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"

#define ENCODE_THREADS_MAX 8u

typedef struct encode_unit {
        uint64_t offset;
        size_t len;
        uint8_t *out;
        size_t out_len;
        int r;
        bool zero;
} encode_unit;

typedef struct encode_job {
        const vdisk_backend *be;
        const void *state;
        const uint8_t *buf;
        uint64_t offset;
        encode_unit *units;
        size_t n_units;
        _Atomic size_t next;
} encode_job;

static void *encode_worker(void *arg) {
        encode_job *j = arg;

        for (;;) {
                size_t i = atomic_fetch_add(&j->next, 1);
                encode_unit *u;

                if (i >= j->n_units)
                        return NULL;
                u = &j->units[i];
                u->zero = mem_is_zero(j->buf + (u->offset - j->offset), u->len);
                if (!u->zero)
                        u->r = j->be->encode(j->state, j->buf + (u->offset - j->offset), u->len, u->out, &u->out_len);
        }
}

/* Asked once: sysconf() reads a file in /sys every time, and this is asked
 * for every buffer. */
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

int copy_encode_buffer(vdisk_image *img, const uint8_t *buf, uint64_t len, uint64_t offset) {
        const vdisk_backend *be = img->be;
        uint64_t unit = img->layout.cluster_size;
        pthread_t threads[ENCODE_THREADS_MAX];
        encode_job j = { .be = be, .state = img->state, .buf = buf, .offset = offset };
        unsigned n_threads = 0;
        size_t bound;
        int r = 0;

        assert(be->encode && be->stream_write_encoded && unit > 0);
        if (offset % unit)
                return vdisk_error(-EINVAL, "%s: encoded writes must start at a unit boundary", vdisk_io_name(img->io));
        j.n_units = (size_t) DIV_ROUND_UP(len, unit);
        j.units = calloc(j.n_units, sizeof *j.units);
        if (!j.units)
                return vdisk_error(-ENOMEM, "out of memory");
        bound = be->encode_bound(img->state, (size_t) MIN(unit, len));
        for (size_t i = 0; i < j.n_units; i++) {
                encode_unit *u = &j.units[i];

                u->offset = offset + i * unit;
                u->len = (size_t) MIN(unit, offset + len - u->offset);
                u->out = malloc(bound);
                if (!u->out) {
                        r = vdisk_error(-ENOMEM, "out of memory");
                        goto out;
                }
        }

        /* The calling thread encodes too; helpers only when there is work for them. */
        for (unsigned t = 1; t < encode_threads() && t < j.n_units; t++) {
                if (pthread_create(&threads[n_threads], NULL, encode_worker, &j) != 0)
                        break;
                n_threads++;
        }
        encode_worker(&j);
        for (unsigned t = 0; t < n_threads; t++)
                pthread_join(threads[t], NULL);

        for (size_t i = 0; i < j.n_units; i++) {
                encode_unit *u = &j.units[i];

                if (u->zero)
                        continue;
                if (u->r < 0) {
                        r = vdisk_error_prefix(u->r, vdisk_io_name(img->io));
                        break;
                }
                if (u->out_len > bound) {
                        r = vdisk_error(-EOVERFLOW, "%s: a unit encoded to %zu bytes, above its bound %zu",
                                        vdisk_io_name(img->io), u->out_len, bound);
                        break;
                }
                r = be->stream_write_encoded(img->state, u->offset, u->len, u->out, u->out_len);
                if (r < 0) {
                        r = vdisk_error_prefix(r, vdisk_io_name(img->io));
                        break;
                }
        }
out:
        for (size_t i = 0; i < j.n_units; i++)
                free(j.units[i].out);
        free(j.units);
        return r;
}
