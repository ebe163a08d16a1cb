/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdisk_io over a growable memory buffer (tests, fuzzers, the daemon's probes). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "util/util.h"

/* A memory image larger than this is refused: memory ios are for tests and
 * small metadata, never for user disks. */
#define MEMORY_IO_MAX ((uint64_t) 4 << 30)

typedef struct mem_io {
        pthread_mutex_t lock;
        uint8_t *data;
        size_t len, allocated;
} mem_io;

static int mem_reserve(mem_io *m, uint64_t len) {
        size_t na;
        void *p;

        if (len > MEMORY_IO_MAX)
                return -EFBIG;
        if (len <= m->allocated)
                return 0;
        na = MAX((size_t) len, m->allocated + m->allocated / 2);
        p = realloc(m->data, na);
        if (!p)
                return -ENOMEM;
        m->data = p;
        m->allocated = na;
        return 0;
}

static int mem_pread(void *u, void *buf, size_t len, uint64_t off) {
        mem_io *m = u;
        int r = 0;

        pthread_mutex_lock(&m->lock);
        if (off > m->len || len > m->len - off)
                r = -EIO;
        else
                memcpy(buf, m->data + off, len);
        pthread_mutex_unlock(&m->lock);
        return r;
}

static int mem_pwrite(void *u, const void *buf, size_t len, uint64_t off) {
        mem_io *m = u;
        uint64_t end;
        int r = 0;

        if (ADD_OVERFLOW(off, (uint64_t) len, &end))
                return -EFBIG;
        pthread_mutex_lock(&m->lock);
        r = mem_reserve(m, end);
        if (r >= 0) {
                if (off > m->len)
                        memset(m->data + m->len, 0, off - m->len);
                memcpy(m->data + off, buf, len);
                if (end > m->len)
                        m->len = end;
        }
        pthread_mutex_unlock(&m->lock);
        return r;
}

static int mem_flush(void *u) {
        return 0;
}

static int mem_get_size(void *u, uint64_t *ret) {
        mem_io *m = u;

        pthread_mutex_lock(&m->lock);
        *ret = m->len;
        pthread_mutex_unlock(&m->lock);
        return 0;
}

static int mem_truncate(void *u, uint64_t size) {
        mem_io *m = u;
        int r;

        pthread_mutex_lock(&m->lock);
        r = mem_reserve(m, size);
        if (r >= 0) {
                if (size > m->len)
                        memset(m->data + m->len, 0, size - m->len);
                m->len = size;
        }
        pthread_mutex_unlock(&m->lock);
        return r;
}

static int mem_punch_hole(void *u, uint64_t off, uint64_t len) {
        mem_io *m = u;

        pthread_mutex_lock(&m->lock);
        if (off < m->len)
                memset(m->data + off, 0, MIN(len, m->len - off));
        pthread_mutex_unlock(&m->lock);
        return 0;
}

static void mem_close(void *u) {
        mem_io *m = u;

        pthread_mutex_destroy(&m->lock);
        free(m->data);
        free(m);
}

static const io_vtable mem_vtable = {
        .pread = mem_pread,
        .pwrite = mem_pwrite,
        .flush = mem_flush,
        .get_size = mem_get_size,
        .truncate = mem_truncate,
        .punch_hole = mem_punch_hole,
        .close = mem_close,
};

int vdisk_io_new_memory(const void *data, size_t len, const char *name, uint32_t flags, vdisk_io **ret) {
        mem_io *m;
        int r;

        if (!ret || (!data && len))
                return vdisk_error(-EINVAL, "invalid arguments");
        m = calloc(1, sizeof *m);
        if (!m)
                return vdisk_error(-ENOMEM, "out of memory");
        pthread_mutex_init(&m->lock, NULL);
        if (len > 0) {
                r = mem_reserve(m, len);
                if (r < 0) {
                        mem_close(m);
                        return vdisk_error(r, "%s: cannot hold %zu bytes in memory", name ? name : "memory", len);
                }
                memcpy(m->data, data, len);
                m->len = len;
        }
        r = io_new(&mem_vtable, m, name ? name : "memory", flags & VDISK_IO_READONLY, IO_KIND_MEMORY, ret);
        if (r < 0)
                mem_close(m);
        return r;
}

int vdisk_io_memory_data(vdisk_io *io, const void **ret_data, size_t *ret_len) {
        mem_io *m;

        if (!io || io->kind != IO_KIND_MEMORY || !ret_data || !ret_len)
                return vdisk_error(-EINVAL, "not a memory io");
        m = io->user;
        *ret_data = m->data;
        *ret_len = m->len;
        return 0;
}
