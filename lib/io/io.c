/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The generic half of struct vdisk_io: reference counting, range checks and
 * error messages that name the file. */
#include <stdlib.h>
#include <string.h>

#include "io/io.h"
#include "util/util.h"

int io_new(const io_vtable *vt, void *user, const char *name, uint32_t flags, int kind, vdisk_io **ret) {
        vdisk_io *io;

        io = calloc(1, sizeof *io);
        if (!io)
                return vdisk_error(-ENOMEM, "out of memory");
        io->name = strdup(name ? name : "(anonymous)");
        if (!io->name) {
                free(io);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        atomic_init(&io->n_ref, 1);
        io->vt = vt;
        io->user = user;
        io->flags = flags;
        io->kind = kind;
        *ret = io;
        return 0;
}

vdisk_io *vdisk_io_ref(vdisk_io *io) {
        if (io)
                atomic_fetch_add(&io->n_ref, 1);
        return io;
}

vdisk_io *vdisk_io_unref(vdisk_io *io) {
        if (!io)
                return NULL;
        if (atomic_fetch_sub(&io->n_ref, 1) != 1)
                return NULL;
        if (io->vt->close)
                io->vt->close(io->user);
        free(io->name);
        free(io);
        return NULL;
}

const char *vdisk_io_name(const vdisk_io *io) {
        return io ? io->name : "(null)";
}

int vdisk_io_readonly(const vdisk_io *io) {
        return io && (io->flags & VDISK_IO_READONLY);
}

/* ---- write-behind */

static unsigned long long env_number(const char *name, unsigned long long def, unsigned long long max) {
        const char *v = getenv(name);
        unsigned long long n;
        char *end;

        if (!v || !*v)
                return def;
        errno = 0;
        n = strtoull(v, &end, 10);
        if (errno || end == v)
                return def;
        if (*end == 'k' || *end == 'K')
                n <<= 10, end++;
        else if (*end == 'm' || *end == 'M')
                n <<= 20, end++;
        if (*end)
                return def;
        return MIN(n, max);
}

void io_queue_params(unsigned *ret_depth, size_t *ret_chunk) {
        *ret_depth = (unsigned) env_number("VDISK_IO_QUEUE_DEPTH", IO_QUEUE_DEPTH, IO_QUEUE_MAX_DEPTH);
        *ret_chunk = (size_t) env_number("VDISK_IO_QUEUE_CHUNK", IO_QUEUE_CHUNK, IO_QUEUE_MAX_CHUNK);
}

int io_queue_begin(vdisk_io *io, io_path path, unsigned depth, size_t chunk) {
        unsigned d;
        size_t c;
        int r;

        if (!io->vt->queue_begin || (io->flags & VDISK_IO_READONLY) || atomic_load(&io->queued))
                return -EOPNOTSUPP;
        io_queue_params(&d, &c);
        depth = depth ? MIN(depth, IO_QUEUE_MAX_DEPTH) : d;
        chunk = chunk ? MIN(chunk, (size_t) IO_QUEUE_MAX_CHUNK) : c;
        if (chunk < 4096 || chunk % 4096)
                depth = 0;
        r = io->vt->queue_begin(io->user, path, depth, chunk);
        if (r < 0)
                return r == -EOPNOTSUPP ? r : vdisk_error(r, "%s: cannot start the write queue: %s", io->name,
                                                          strerror(-r));
        atomic_store(&io->queued, 1);
        return 0;
}

int io_drain(vdisk_io *io) {
        uint64_t offset = 0;
        size_t len = 0;
        int r;

        if (!atomic_load(&io->queued))
                return 0;
        r = io->vt->drain(io->user, &offset, &len);
        if (r < 0)
                return vdisk_error(r, "%s: write of %zu bytes at offset %" PRIu64 " failed: %s", io->name, len,
                                   offset, strerror(-r));
        return 0;
}

int io_queue_end(vdisk_io *io) {
        int r;

        if (!atomic_load(&io->queued))
                return 0;
        r = io_drain(io);
        /* Waits again (a writer on another thread may have queued since),
         * then frees the queue. */
        io->vt->queue_end(io->user);
        atomic_store(&io->queued, 0);
        return r;
}

int io_pread(vdisk_io *io, void *buf, size_t len, uint64_t offset) {
        int r;

        r = io_drain(io);
        if (r < 0)
                return r;
        if (len == 0)
                return 0;
        if (offset > UINT64_MAX - len)
                return vdisk_error(-EINVAL, "%s: read range overflows", io->name);
        r = io->vt->pread(io->user, buf, len, offset);
        if (r < 0)
                return vdisk_error(r, "%s: read of %zu bytes at offset %" PRIu64 " failed: %s",
                                   io->name, len, offset, strerror(-r));
        return 0;
}

int io_pread_zerofill(vdisk_io *io, void *buf, size_t len, uint64_t offset) {
        uint64_t size;
        size_t n;
        int r;

        r = io_drain(io);
        if (r < 0)
                return r;
        /* The common case: the whole range is inside the file. */
        if (len > 0 && offset <= UINT64_MAX - len && io->vt->pread(io->user, buf, len, offset) >= 0)
                return 0;
        r = io_get_size(io, &size);
        if (r < 0)
                return r;
        n = offset >= size ? 0 : (size_t) MIN((uint64_t) len, size - offset);
        r = io_pread(io, buf, n, offset);
        if (r < 0)
                return r;
        memset((uint8_t *) buf + n, 0, len - n);
        return 0;
}

/* The file holds at least `end` bytes (a write ended there). */
static void size_floor_raise(vdisk_io *io, uint64_t end) {
        uint64_t cur = atomic_load(&io->size_floor);

        while (cur < end && !atomic_compare_exchange_weak(&io->size_floor, &cur, end))
                ;
}

int io_pwrite(vdisk_io *io, const void *buf, size_t len, uint64_t offset) {
        int r;

        if (io->flags & VDISK_IO_READONLY)
                return vdisk_error(-EROFS, "%s: opened read-only", io->name);
        if (len == 0)
                return 0;
        if (offset > UINT64_MAX - len)
                return vdisk_error(-EINVAL, "%s: write range overflows", io->name);
        if (atomic_load(&io->queued)) {
                r = io->vt->queue_write(io->user, buf, len, offset);
                if (r > 0)
                        return 0;
                /* Not queueable, or a queued write failed: wait for the
                 * others, so that this write lands after them. */
                r = io_drain(io);
                if (r < 0)
                        return r;
        }
        r = io->vt->pwrite(io->user, buf, len, offset);
        if (r < 0)
                return vdisk_error(r, "%s: write of %zu bytes at offset %" PRIu64 " failed: %s",
                                   io->name, len, offset, strerror(-r));
        size_floor_raise(io, offset + len);
        return 0;
}

int io_flush(vdisk_io *io) {
        int r;

        /* Even without syncs (VDISK_IO_NOSYNC): a flush orders what follows
         * after what came before. */
        r = io_drain(io);
        if (r < 0)
                return r;
        if (io->flags & (VDISK_IO_READONLY | VDISK_IO_NOSYNC))
                return 0;
        r = io->vt->flush(io->user);
        if (r < 0)
                return vdisk_error(r, "%s: flush failed: %s", io->name, strerror(-r));
        return 0;
}

int io_get_size(vdisk_io *io, uint64_t *ret) {
        int r;

        r = io_drain(io);   /* a queued write may grow the file */
        if (r < 0)
                return r;
        r = io->vt->get_size(io->user, ret);
        if (r < 0)
                return vdisk_error(r, "%s: cannot get size: %s", io->name, strerror(-r));
        atomic_store(&io->size_floor, *ret);
        return 0;
}

int io_covers(vdisk_io *io, uint64_t end, uint64_t *ret_size) {
        uint64_t size = atomic_load(&io->size_floor);
        int r;

        if (size < end) {
                r = io_get_size(io, &size);
                if (r < 0)
                        return r;
        }
        if (ret_size)
                *ret_size = size;
        return size >= end;
}

int io_truncate(vdisk_io *io, uint64_t size) {
        int r;

        if (io->flags & VDISK_IO_READONLY)
                return vdisk_error(-EROFS, "%s: opened read-only", io->name);
        if (!io->vt->truncate)
                return vdisk_error(-EOPNOTSUPP, "%s: cannot change the file size", io->name);
        r = io_drain(io);
        if (r < 0)
                return r;
        r = io->vt->truncate(io->user, size);
        if (r < 0)
                return vdisk_error(r, "%s: truncate to %" PRIu64 " failed: %s", io->name, size, strerror(-r));
        atomic_store(&io->size_floor, size);
        return 0;
}

int io_reserve(vdisk_io *io, uint64_t offset, uint64_t len) {
        int r;

        if (io->flags & VDISK_IO_READONLY)
                return vdisk_error(-EROFS, "%s: opened read-only", io->name);
        if (!io->vt->reserve)
                return -EOPNOTSUPP;
        r = io_drain(io);
        if (r < 0)
                return r;
        r = io->vt->reserve(io->user, offset, len);
        if (r < 0 && r != -EOPNOTSUPP)
                return vdisk_error(r, "%s: reserving %" PRIu64 " bytes at offset %" PRIu64 " failed: %s", io->name,
                                   len, offset, strerror(-r));
        return r;
}

int io_punch_hole(vdisk_io *io, uint64_t offset, uint64_t len) {
        int r;

        if (io->flags & VDISK_IO_READONLY)
                return vdisk_error(-EROFS, "%s: opened read-only", io->name);
        if (!io->vt->punch_hole)
                return -EOPNOTSUPP;
        r = io_drain(io);
        if (r < 0)
                return r;
        r = io->vt->punch_hole(io->user, offset, len);
        if (r < 0 && r != -EOPNOTSUPP)
                return vdisk_error(r, "%s: punching a hole failed: %s", io->name, strerror(-r));
        return r;
}

int io_write_zeroes(vdisk_io *io, uint64_t offset, uint64_t len) {
        static const uint8_t zero[65536];
        int r;

        r = io_punch_hole(io, offset, len);
        if (r != -EOPNOTSUPP)
                return r;
        while (len > 0) {
                size_t n = (size_t) MIN(len, (uint64_t) sizeof zero);
                r = io_pwrite(io, zero, n, offset);
                if (r < 0)
                        return r;
                offset += n;
                len -= n;
        }
        return 0;
}

int io_write_zero_data(vdisk_io *io, uint64_t offset, uint64_t len) {
        static const uint8_t zero[65536];
        int r;

        while (len > 0) {
                size_t n = (size_t) MIN(len, (uint64_t) sizeof zero);
                r = io_pwrite(io, zero, n, offset);
                if (r < 0)
                        return r;
                offset += n;
                len -= n;
        }
        return 0;
}

int io_set_nocow(vdisk_io *io) {
        if (io->flags & VDISK_IO_READONLY)
                return vdisk_error(-EROFS, "%s: opened read-only", io->name);
        if (!io->vt->set_nocow)
                return -EOPNOTSUPP;
        return io->vt->set_nocow(io->user);
}

int io_get_allocated(vdisk_io *io, uint64_t *ret) {
        int r = io_drain(io);

        if (r < 0)
                return r;
        if (io->vt->get_allocated)
                return io->vt->get_allocated(io->user, ret);
        return io_get_size(io, ret);
}

int io_seek_data(vdisk_io *io, uint64_t offset, int hole, uint64_t *ret) {
        int r = io_drain(io);

        if (r < 0)
                return r;
        if (!io->vt->seek_data)
                return -EOPNOTSUPP;
        return io->vt->seek_data(io->user, offset, hole, ret);
}

int io_get_identity(vdisk_io *io, io_identity *ret) {
        if (!io->vt->get_identity)
                return -EOPNOTSUPP;
        return io->vt->get_identity(io->user, ret);
}

int io_is_hole(vdisk_io *io, uint64_t offset, uint64_t len) {
        uint64_t next;

        if (!io->vt->seek_data || io_drain(io) < 0)
                return 0;
        if (io->vt->seek_data(io->user, offset, 0, &next) < 0)
                return 0;
        return next >= offset + len;
}

/* ---- public wrappers */

int vdisk_io_pread(vdisk_io *io, void *buf, size_t len, uint64_t offset) {
        if (!io || (!buf && len))
                return vdisk_error(-EINVAL, "invalid arguments");
        return io_pread(io, buf, len, offset);
}

int vdisk_io_pwrite(vdisk_io *io, const void *buf, size_t len, uint64_t offset) {
        if (!io || (!buf && len))
                return vdisk_error(-EINVAL, "invalid arguments");
        return io_pwrite(io, buf, len, offset);
}

int vdisk_io_flush(vdisk_io *io) {
        if (!io)
                return vdisk_error(-EINVAL, "invalid arguments");
        return io_flush(io);
}

int vdisk_io_get_size(vdisk_io *io, uint64_t *ret) {
        if (!io || !ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        return io_get_size(io, ret);
}

int vdisk_io_truncate(vdisk_io *io, uint64_t size) {
        if (!io)
                return vdisk_error(-EINVAL, "invalid arguments");
        return io_truncate(io, size);
}

/* ---- caller-supplied ops */

typedef struct ops_io {
        vdisk_io_ops ops;
        void *user;
} ops_io;

static int ops_pread(void *u, void *buf, size_t len, uint64_t off) {
        ops_io *o = u;
        return o->ops.pread(o->user, buf, len, off);
}
static int ops_pwrite(void *u, const void *buf, size_t len, uint64_t off) {
        ops_io *o = u;
        return o->ops.pwrite ? o->ops.pwrite(o->user, buf, len, off) : -EROFS;
}
static int ops_flush(void *u) {
        ops_io *o = u;
        return o->ops.flush ? o->ops.flush(o->user) : 0;
}
static int ops_get_size(void *u, uint64_t *ret) {
        ops_io *o = u;
        return o->ops.get_size(o->user, ret);
}
static int ops_truncate(void *u, uint64_t size) {
        ops_io *o = u;
        return o->ops.truncate ? o->ops.truncate(o->user, size) : -EOPNOTSUPP;
}
static int ops_punch_hole(void *u, uint64_t off, uint64_t len) {
        ops_io *o = u;
        return o->ops.punch_hole ? o->ops.punch_hole(o->user, off, len) : -EOPNOTSUPP;
}
static void ops_close(void *u) {
        ops_io *o = u;
        if (o->ops.close)
                o->ops.close(o->user);
        free(o);
}

static const io_vtable ops_vtable = {
        .pread = ops_pread,
        .pwrite = ops_pwrite,
        .flush = ops_flush,
        .get_size = ops_get_size,
        .truncate = ops_truncate,
        .punch_hole = ops_punch_hole,
        .close = ops_close,
};

int vdisk_io_new_ops(const vdisk_io_ops *ops, void *user, const char *name, uint32_t flags, vdisk_io **ret) {
        ops_io *o;
        int r;

        if (!ops || !ret || ops->size < offsetof(vdisk_io_ops, truncate) || !ops->pread || !ops->get_size)
                return vdisk_error(-EINVAL, "invalid io ops");
        o = calloc(1, sizeof *o);
        if (!o)
                return vdisk_error(-ENOMEM, "out of memory");
        memcpy(&o->ops, ops, MIN(ops->size, sizeof o->ops));
        o->ops.size = sizeof o->ops;
        o->user = user;
        r = io_new(&ops_vtable, o, name, flags & (VDISK_IO_READONLY | VDISK_IO_NOSYNC), IO_KIND_OPS, ret);
        if (r < 0)
                free(o);
        return r;
}
