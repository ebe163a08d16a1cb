/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdisk_io over a file descriptor: pread/pwrite, fdatasync, fallocate. */
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#ifndef HAVE_LIBURING
#define HAVE_LIBURING 0
#endif
#if HAVE_LIBURING
#include <liburing.h>
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"
#include "util/util.h"

/* One io may be used by several threads at once (two disks sharing a parent,
 * a copy's reader next to a caller's reads, the daemon's workers). pread and
 * pwrite are positional, so `fd` needs no lock; the two fields that change do:
 *   - dfd can be closed (the file system refused O_DIRECT) or replaced
 *     (vdisk_io_set_direct_fd) while another thread writes through it. Closing
 *     a descriptor under a write in flight would let the number be reused by an
 *     unrelated open() and the write land in some other file. So a write holds
 *     `dlock` for reading while it may use dfd, and dfd changes only under the
 *     write lock. A read-write lock, not a mutex: writes through one io run in
 *     parallel; uncontended it costs two atomic operations per write call.
 *   - unsynced is a counter for a heuristic (when to start writeback): an
 *     atomic, and whoever takes it past the step starts the writeback. */
/* Write-behind (io_queue_begin() in io.h): a ring of `depth` chunks the io
 * owns, each holding one direct write in flight through io_uring. The queue
 * is set and freed under dlock held for writing; writers and drains use it
 * under dlock held for reading, and its own lock for the slots and the ring
 * (lock order: dlock, then lock). A direct write in flight holds the number
 * of dfd, so dfd is replaced or closed only after a drain. */
typedef struct wq_slot {
        uint8_t *buf;
        size_t len;
        uint64_t offset;
        int busy;
        int inject;             /* tests: complete with this error, write nothing */
} wq_slot;

typedef struct write_queue {
        pthread_mutex_t lock;
        unsigned depth;
        size_t chunk;
        int ready;              /* ring and slots set up (lazily, at the first queued write) */
        int broken;             /* setting up failed: writes stay synchronous */
#if HAVE_LIBURING
        struct io_uring ring;
#endif
        wq_slot *slots;
        unsigned n_busy;
        int error;              /* the first failed queued write, sticky */
        uint64_t error_offset;
        size_t error_len;
        unsigned inject_at;     /* io_fd_queue_inject(): countdown + 1, 0 when off */
        int inject_error;
} write_queue;

typedef struct fd_io {
        int fd;
        int own;
        pthread_rwlock_t dlock;
        int dfd;                /* the same file opened O_DIRECT (VDISK_IO_DIRECT), or -1; under dlock */
        _Atomic int no_direct;  /* a queued direct write was refused (EINVAL): no more direct writes */
        write_queue *wq;        /* under dlock */
        _Atomic uint64_t unsynced;  /* bytes written through the page cache since writeback was last started */
        int nosync;             /* VDISK_IO_NOSYNC: flushes are skipped, so is early writeback */
} fd_io;

static void wq_reap(fd_io *f, write_queue *q, unsigned min);

/* Direct writes. A durable bulk write through the page cache costs a copy
 * into the cache and then the kernel's writeback; O_DIRECT hands the pages to
 * the disk instead, which on the machines we measured is 2-4x faster for the
 * same durability (docs/performance.md). Only large writes whose buffer,
 * offset and length are aligned go direct; everything else (headers, tables,
 * the 4 KiB pages of a sparse block) goes through the page cache, where small
 * writes are cheap and get merged. Mixing the two on one file is coherent:
 * the kernel writes back and drops cached pages in the range of a direct
 * write. DIRECT_ALIGN is the strictest alignment Linux file systems ask for. */
#define DIRECT_ALIGN 4096u
#define DIRECT_MIN (128u << 10)

/* Large copies end in one flush. To keep that flush short, writeback is
 * started (not waited for) every WRITEBACK_STEP bytes, so the disk works
 * while the copy goes on. Durability still comes only from the flush. */
#define WRITEBACK_STEP (32u << 20)

static int fd_pread(void *u, void *buf, size_t len, uint64_t off) {
        fd_io *f = u;
        uint8_t *p = buf;

        while (len > 0) {
                ssize_t n = pread(f->fd, p, len, (off_t) off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;   /* past the end of the file */
                p += n;
                off += (uint64_t) n;
                len -= (size_t) n;
        }
        return 0;
}

/* With dlock held (for reading at least). */
static bool direct_ok(fd_io *f, const void *p, size_t len, uint64_t off) {
        return f->dfd >= 0 && !atomic_load(&f->no_direct) && len >= DIRECT_MIN &&
               ((uintptr_t) p | len | off) % DIRECT_ALIGN == 0;
}

/* The file system refused a direct write to `dfd`: stop using it. Called and
 * returns with dlock held for reading. */
static void direct_give_up(fd_io *f, int dfd) {
        pthread_rwlock_unlock(&f->dlock);
        pthread_rwlock_wrlock(&f->dlock);
        if (f->dfd == dfd && f->wq) {   /* queued writes name it */
                pthread_mutex_lock(&f->wq->lock);
                wq_reap(f, f->wq, f->wq->n_busy);
                pthread_mutex_unlock(&f->wq->lock);
        }
        if (f->dfd == dfd) {   /* not replaced meanwhile, nor given up by another writer */
                close(f->dfd);
                f->dfd = -1;
        }
        pthread_rwlock_unlock(&f->dlock);
        pthread_rwlock_rdlock(&f->dlock);
}

static int fd_pwrite(void *u, const void *buf, size_t len, uint64_t off) {
        fd_io *f = u;
        const uint8_t *p = buf;
        uint64_t cached = 0;
        int r = 0;

        pthread_rwlock_rdlock(&f->dlock);
        while (len > 0) {
                bool direct = direct_ok(f, p, len, off);
                int wfd = direct ? f->dfd : f->fd;
                ssize_t n = pwrite(wfd, p, len, (off_t) off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (direct && errno == EINVAL) {
                                /* The file system wants another alignment:
                                 * go on through the page cache. */
                                direct_give_up(f, wfd);
                                continue;
                        }
                        r = -errno;
                        break;
                }
                if (n == 0) {
                        r = -ENOSPC;
                        break;
                }
                p += n;
                off += (uint64_t) n;
                len -= (size_t) n;
                if (!direct)
                        cached += (uint64_t) n;
        }
        pthread_rwlock_unlock(&f->dlock);
        if (cached > 0 && !f->nosync &&
            atomic_fetch_add(&f->unsynced, cached) + cached >= WRITEBACK_STEP &&
            atomic_exchange(&f->unsynced, 0) >= WRITEBACK_STEP)
                (void) sync_file_range(f->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        return r;
}

/* ---- write-behind */

static int write_all(int fd, const uint8_t *p, size_t len, uint64_t off) {
        while (len > 0) {
                ssize_t n = pwrite(fd, p, len, (off_t) off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -ENOSPC;
                p += n;
                off += (uint64_t) n;
                len -= (size_t) n;
        }
        return 0;
}

static void wq_free(write_queue *q) {
        if (!q)
                return;
#if HAVE_LIBURING
        if (q->ready)
                io_uring_queue_exit(&q->ring);
#endif
        for (unsigned i = 0; q->slots && i < q->depth; i++)
                free(q->slots[i].buf);
        free(q->slots);
        pthread_mutex_destroy(&q->lock);
        free(q);
}

/* With q->lock held. */
static int wq_setup(write_queue *q) {
        const char *e = getenv("VDISK_IO_URING");
        int r;

        if (q->ready || q->broken)
                return q->ready ? 0 : -EOPNOTSUPP;
        q->broken = 1;
        if (!HAVE_LIBURING || (e && strcmp(e, "0") == 0))
                return -EOPNOTSUPP;
        q->slots = calloc(q->depth, sizeof *q->slots);
        if (!q->slots)
                return -ENOMEM;
        for (unsigned i = 0; i < q->depth; i++) {
                q->slots[i].buf = buf_alloc(q->chunk);
                if (!q->slots[i].buf)
                        return -ENOMEM;
        }
#if HAVE_LIBURING
        r = io_uring_queue_init(q->depth, &q->ring, 0);
#else
        r = -EOPNOTSUPP;
#endif
        if (r < 0)
                return r;
        q->ready = 1;
        q->broken = 0;
        return 0;
}

/* With q->lock held: a completion of slot s, res as io_uring gives it. A
 * short write is finished, and a direct write the file system refused is
 * done again, through the page cache. */
static void wq_complete(fd_io *f, write_queue *q, wq_slot *s, int res) {
        int r = 0;

        if (s->inject)
                r = s->inject;
        else if (res == -EINVAL) {
                atomic_store(&f->no_direct, 1);
                r = write_all(f->fd, s->buf, s->len, s->offset);
        } else if (res < 0)
                r = res == -EAGAIN || res == -EINTR ? write_all(f->fd, s->buf, s->len, s->offset) : res;
        else if ((size_t) res < s->len)
                r = write_all(f->fd, s->buf + res, s->len - (size_t) res, s->offset + (uint64_t) res);
        if (r < 0 && q->error == 0) {
                q->error = r;
                q->error_offset = s->offset;
                q->error_len = s->len;
        }
        s->busy = 0;
        s->inject = 0;
        q->n_busy--;
}

/* With q->lock held: reaps completions, waiting for at least `min` of them. */
static void wq_reap(fd_io *f, write_queue *q, unsigned min) {
#if HAVE_LIBURING
        struct io_uring_cqe *cqe;
        wq_slot *s;
        int r;

        while (q->n_busy > 0) {
                if (min > 0) {
                        r = io_uring_wait_cqe(&q->ring, &cqe);
                        if (r == -EINTR)
                                continue;
                } else
                        r = io_uring_peek_cqe(&q->ring, &cqe);
                if (r < 0) {
                        if (min == 0 && r == -EAGAIN)
                                return;
                        /* The ring itself failed: nothing more will come. */
                        if (q->error == 0)
                                q->error = r;
                        return;
                }
                s = io_uring_cqe_get_data(cqe);
                if (s)
                        wq_complete(f, q, s, cqe->res);
                io_uring_cqe_seen(&q->ring, cqe);
                if (!s)
                        continue;
                if (min > 0)
                        min--;
        }
#else
        (void) f, (void) q, (void) min;   /* nothing is ever in flight */
#endif
}

/* With q->lock held: does [off, off+len) overlap a write in flight? */
static bool wq_overlaps(const write_queue *q, uint64_t off, size_t len) {
        for (unsigned i = 0; i < q->depth; i++) {
                const wq_slot *s = &q->slots[i];

                if (s->busy && off < s->offset + s->len && s->offset < off + len)
                        return true;
        }
        return false;
}

static int fd_queue_set(void *u, unsigned depth, size_t chunk) {
        fd_io *f = u;
        write_queue *q = NULL;
        int r = 0;

        if (depth > 0) {
                q = calloc(1, sizeof *q);
                if (!q)
                        return -ENOMEM;
                pthread_mutex_init(&q->lock, NULL);
                q->depth = depth;
                q->chunk = chunk;
        }
        pthread_rwlock_wrlock(&f->dlock);
        if (depth > 0 && (f->dfd < 0 || f->wq))
                r = -EOPNOTSUPP;
        else if (depth == 0 && f->wq) {
                pthread_mutex_lock(&f->wq->lock);
                wq_reap(f, f->wq, f->wq->n_busy);
                pthread_mutex_unlock(&f->wq->lock);
                wq_free(f->wq);
                f->wq = NULL;
        } else if (depth > 0) {
                f->wq = q;
                q = NULL;
        }
        pthread_rwlock_unlock(&f->dlock);
        wq_free(q);
        return r;
}

static int fd_queue_write(void *u, const void *buf, size_t len, uint64_t off) {
        fd_io *f = u;
        const uint8_t *p = buf;
        write_queue *q;
        int r = 1;

        pthread_rwlock_rdlock(&f->dlock);
        q = f->wq;
        if (!q || !direct_ok(f, p, len, off)) {
                pthread_rwlock_unlock(&f->dlock);
                return 0;
        }
        pthread_mutex_lock(&q->lock);
        wq_reap(f, q, 0);
        if (q->error < 0)
                r = q->error;
        else if (wq_setup(q) < 0)
                r = 0;   /* no io_uring: synchronous */
        while (r > 0 && len > 0) {
                size_t n = MIN(len, q->chunk);
#if HAVE_LIBURING
                struct io_uring_sqe *sqe;
#endif
                wq_slot *s = NULL;

                /* io_uring completes requests in any order: a write that
                 * overlaps one in flight waits for it. */
                while (q->n_busy > 0 && q->error == 0 && (q->n_busy == q->depth || wq_overlaps(q, off, n)))
                        wq_reap(f, q, 1);
                if (q->error < 0) {
                        r = q->error;
                        break;
                }
                for (unsigned i = 0; i < q->depth && !s; i++)
                        if (!q->slots[i].busy)
                                s = &q->slots[i];
#if HAVE_LIBURING
                sqe = s ? io_uring_get_sqe(&q->ring) : NULL;
                if (!sqe) {   /* cannot happen: a free slot means a free entry */
                        r = q->error = -EIO;
                        break;
                }
                memcpy(s->buf, p, n);
                s->len = n;
                s->offset = off;
                s->busy = 1;
                if (q->inject_at > 0 && --q->inject_at == 0) {
                        s->inject = q->inject_error;
                        io_uring_prep_nop(sqe);
                } else
                        io_uring_prep_write(sqe, f->dfd, s->buf, (unsigned) n, off);
                io_uring_sqe_set_data(sqe, s);
                q->n_busy++;
                if (io_uring_submit(&q->ring) < 0) {
                        /* Not submitted: write it here; the entry goes
                         * later as a no-op nobody waits for. */
                        io_uring_prep_nop(sqe);
                        io_uring_sqe_set_data(sqe, NULL);
                        wq_complete(f, q, s, write_all(f->dfd, s->buf, n, off) < 0 ? -EIO : (int) n);
                        r = q->error < 0 ? q->error : r;
                }
#endif
                p += n;
                off += n;
                len -= n;
        }
        pthread_mutex_unlock(&q->lock);
        pthread_rwlock_unlock(&f->dlock);
        return r;
}

static int fd_drain(void *u, uint64_t *ret_offset, size_t *ret_len) {
        fd_io *f = u;
        int r = 0;

        pthread_rwlock_rdlock(&f->dlock);
        if (f->wq) {
                pthread_mutex_lock(&f->wq->lock);
                wq_reap(f, f->wq, f->wq->n_busy);
                r = f->wq->error;
                *ret_offset = f->wq->error_offset;
                *ret_len = f->wq->error_len;
                pthread_mutex_unlock(&f->wq->lock);
        }
        pthread_rwlock_unlock(&f->dlock);
        return r;
}

int io_fd_queue_inject(vdisk_io *io, unsigned n, int err) {
        fd_io *f;

        if (!io || io->kind != IO_KIND_FD || err >= 0)
                return -EINVAL;
        f = io->user;
        pthread_rwlock_rdlock(&f->dlock);
        if (f->wq) {
                pthread_mutex_lock(&f->wq->lock);
                f->wq->inject_at = n + 1;
                f->wq->inject_error = err;
                pthread_mutex_unlock(&f->wq->lock);
        }
        pthread_rwlock_unlock(&f->dlock);
        return f->wq ? 0 : -EOPNOTSUPP;
}

static int fd_flush(void *u) {
        fd_io *f = u;

        if (fdatasync(f->fd) < 0)
                return errno == EINVAL ? 0 : -errno;   /* EINVAL: a special file without sync */
        return 0;
}

static int fd_get_size(void *u, uint64_t *ret) {
        fd_io *f = u;
        struct stat st;

        if (fstat(f->fd, &st) < 0)
                return -errno;
        if (S_ISBLK(st.st_mode)) {
                off_t end = lseek(f->fd, 0, SEEK_END);
                if (end < 0)
                        return -errno;
                *ret = (uint64_t) end;
                return 0;
        }
        *ret = (uint64_t) st.st_size;
        return 0;
}

static int fd_truncate(void *u, uint64_t size) {
        fd_io *f = u;

        if (size > INT64_MAX)
                return -EFBIG;
        if (ftruncate(f->fd, (off_t) size) < 0)
                return -errno;
        return 0;
}

static int fd_punch_hole(void *u, uint64_t off, uint64_t len) {
        fd_io *f = u;

        if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) off, (off_t) len) < 0)
                return errno == EOPNOTSUPP || errno == ENOSYS ? -EOPNOTSUPP : -errno;
        return 0;
}

static int fd_reserve(void *u, uint64_t off, uint64_t len) {
        fd_io *f = u;

        if (off > INT64_MAX || len > INT64_MAX - off)
                return -EFBIG;
        if (fallocate(f->fd, FALLOC_FL_KEEP_SIZE, (off_t) off, (off_t) len) < 0)
                return errno == EOPNOTSUPP || errno == ENOSYS ? -EOPNOTSUPP : -errno;
        return 0;
}

static int fd_get_allocated(void *u, uint64_t *ret) {
        fd_io *f = u;
        struct stat st;

        if (fstat(f->fd, &st) < 0)
                return -errno;
        *ret = (uint64_t) st.st_blocks * 512;
        return 0;
}

static int fd_seek_data(void *u, uint64_t off, int hole, uint64_t *ret) {
        fd_io *f = u;
        off_t r = lseek(f->fd, (off_t) off, hole ? SEEK_HOLE : SEEK_DATA);

        if (r < 0) {
                if (errno == ENXIO) {   /* no data after off */
                        *ret = UINT64_MAX;
                        return 0;
                }
                return -errno;
        }
        *ret = (uint64_t) r;
        return 0;
}

static int fd_get_identity(void *u, io_identity *ret) {
        fd_io *f = u;
        struct stat st;

        if (fstat(f->fd, &st) < 0)
                return -errno;
        *ret = (io_identity) { .dev = (uint64_t) st.st_dev, .ino = (uint64_t) st.st_ino };
        return 0;
}

/* FS_NOCOW_FL only takes effect on an empty file (btrfs); other file
 * systems refuse the flag or the ioctl: that is no error of the caller's. */
static int fd_set_nocow(void *u) {
        fd_io *f = u;
        int attr = 0;

        if (ioctl(f->fd, FS_IOC_GETFLAGS, &attr) < 0)
                return -EOPNOTSUPP;
        if (attr & FS_NOCOW_FL)
                return 0;
        attr |= FS_NOCOW_FL;
        if (ioctl(f->fd, FS_IOC_SETFLAGS, &attr) < 0)
                return -EOPNOTSUPP;
        return 0;
}

static void fd_close(void *u) {
        fd_io *f = u;

        (void) fd_queue_set(f, 0, 0);   /* waits for the writes in flight */
        if (f->own)
                close(f->fd);
        if (f->dfd >= 0)
                close(f->dfd);
        pthread_rwlock_destroy(&f->dlock);
        free(f);
}

static const io_vtable fd_vtable = {
        .pread = fd_pread,
        .pwrite = fd_pwrite,
        .flush = fd_flush,
        .get_size = fd_get_size,
        .truncate = fd_truncate,
        .punch_hole = fd_punch_hole,
        .reserve = fd_reserve,
        .get_allocated = fd_get_allocated,
        .seek_data = fd_seek_data,
        .set_nocow = fd_set_nocow,
        .get_identity = fd_get_identity,
        .queue_set = fd_queue_set,
        .queue_write = fd_queue_write,
        .drain = fd_drain,
        .close = fd_close,
};

static int fd_io_new(int fd, int dfd, const char *name, uint32_t flags, vdisk_io **ret) {
        fd_io *f;
        int r;

        f = calloc(1, sizeof *f);
        if (!f)
                return vdisk_error(-ENOMEM, "out of memory");
        f->fd = fd;
        f->own = 1;
        f->dfd = dfd;
        pthread_rwlock_init(&f->dlock, NULL);
        atomic_init(&f->unsynced, 0);
        f->nosync = !!(flags & VDISK_IO_NOSYNC);
        r = io_new(&fd_vtable, f, name, flags & (VDISK_IO_READONLY | VDISK_IO_NOSYNC), IO_KIND_FD, ret);
        if (r < 0) {
                pthread_rwlock_destroy(&f->dlock);
                free(f);
        }
        return r;
}

/* A second descriptor of the file open on `fd`, with O_DIRECT, reopened
 * through /proc/self/fd so that it is the same file whatever happened to its
 * name. -1 when that is not possible (no /proc, a file system without direct
 * I/O such as tmpfs, no permission): the io then writes through the page
 * cache only. */
static int open_direct(int fd) {
        _cleanup_close_ int dfd = -1;
        char path[64];
        struct stat st, dst;

        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC | O_NOCTTY);
        if (dfd < 0)
                return -1;
        if (fstat(fd, &st) < 0 || fstat(dfd, &dst) < 0 || !S_ISREG(st.st_mode) ||
            st.st_dev != dst.st_dev || st.st_ino != dst.st_ino)
                return -1;
        return TAKE_FD(dfd);
}

int vdisk_io_new_fd(int fd, const char *name, uint32_t flags, vdisk_io **ret) {
        _cleanup_close_ int copy = -1, dfd = -1;
        struct stat st;
        int fl, r;

        if (fd < 0 || !ret)
                return vdisk_error(-EINVAL, "invalid file descriptor");
        fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return vdisk_error(-errno, "%s: bad file descriptor: %m", name ? name : "fd");
        if (fl & O_PATH)
                return vdisk_error(-EBADF, "%s: O_PATH descriptors cannot be read", name ? name : "fd");
        if (fstat(fd, &st) < 0)
                return vdisk_error(-errno, "%s: %m", name ? name : "fd");
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return vdisk_error(-EBADF, "%s: not a regular file or block device", name ? name : "fd");
        if ((fl & O_ACCMODE) == O_RDONLY)
                flags |= VDISK_IO_READONLY;
        if (!(flags & VDISK_IO_OWN_FD)) {
                copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                if (copy < 0)
                        return vdisk_error(-errno, "%s: cannot duplicate descriptor: %m", name ? name : "fd");
                fd = copy;
        }
        if ((flags & VDISK_IO_DIRECT) && !(flags & VDISK_IO_READONLY))
                dfd = open_direct(fd);
        r = fd_io_new(fd, dfd, name, flags, ret);
        if (r < 0)
                return r;
        TAKE_FD(copy);
        TAKE_FD(dfd);
        return 0;
}

int vdisk_io_set_direct_fd(vdisk_io *io, int fd) {
        const char *name = io ? vdisk_io_name(io) : "fd";
        struct stat st, dst;
        fd_io *f;
        int fl, copy;

        if (!io || io->kind != IO_KIND_FD || (io->flags & VDISK_IO_READONLY))
                return vdisk_error(-EINVAL, "%s: direct writes need a writable file descriptor io", name);
        f = io->user;
        fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return vdisk_error(-EINVAL, "%s: the direct descriptor is not usable: %m", name);
        if (!(fl & O_DIRECT) || (fl & (O_PATH | O_APPEND)) || (fl & O_ACCMODE) == O_RDONLY)
                return vdisk_error(-EINVAL, "%s: the direct descriptor must be open for writing with "
                                   "O_DIRECT and without O_APPEND", name);
        if (fstat(f->fd, &st) < 0 || fstat(fd, &dst) < 0)
                return vdisk_error(-errno, "%s: cannot stat the direct descriptor: %m", name);
        if (!S_ISREG(dst.st_mode) || st.st_dev != dst.st_dev || st.st_ino != dst.st_ino)
                return vdisk_error(-EBADF, "%s: the direct descriptor is not the same file", name);
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return vdisk_error(-errno, "%s: cannot duplicate the direct descriptor: %m", name);
        pthread_rwlock_wrlock(&f->dlock);
        if (f->wq) {   /* writes in flight name the old descriptor */
                pthread_mutex_lock(&f->wq->lock);
                wq_reap(f, f->wq, f->wq->n_busy);
                pthread_mutex_unlock(&f->wq->lock);
        }
        if (f->dfd >= 0)
                close(f->dfd);
        f->dfd = copy;
        pthread_rwlock_unlock(&f->dlock);
        return 0;
}

int vdisk_io_get_file_id(vdisk_io *io, uint64_t *ret_dev, uint64_t *ret_ino) {
        io_identity id;
        int r;

        if (!io || !ret_dev || !ret_ino)
                return vdisk_error(-EINVAL, "invalid arguments");
        if (io->kind != IO_KIND_FD)
                return vdisk_error(-EOPNOTSUPP, "%s: not a file descriptor io", vdisk_io_name(io));
        r = io_get_identity(io, &id);
        if (r < 0)
                return vdisk_error(r, "Could not stat '%s': %s", vdisk_io_name(io), strerror(-r));
        *ret_dev = id.dev;
        *ret_ino = id.ino;
        return 0;
}

int vdisk_io_open_path(const char *path, uint32_t path_flags, vdisk_io **ret) {
        _cleanup_close_ int fd = -1, dfd = -1;
        struct stat st;
        int oflags = O_CLOEXEC | O_NOCTTY, r;

        if (!path || !ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        oflags |= (path_flags & (VDISK_PATH_WRITE | VDISK_PATH_CREATE)) ? O_RDWR : O_RDONLY;
        if (path_flags & VDISK_PATH_CREATE)
                oflags |= O_CREAT | ((path_flags & VDISK_PATH_TRUNC) ? 0 : O_EXCL);
        if (path_flags & VDISK_PATH_NOFOLLOW)
                oflags |= O_NOFOLLOW;
        fd = open(path, oflags, 0644);
        if (fd < 0)
                return vdisk_error(-errno, "Could not open '%s': %m", path);
        if (fstat(fd, &st) < 0)
                return vdisk_error(-errno, "Could not stat '%s': %m", path);
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return vdisk_error(-EINVAL, "'%s' is not a regular file or block device", path);
        if ((path_flags & VDISK_PATH_TRUNC) && S_ISREG(st.st_mode) && st.st_size > 0) {
                /* ext4 flushes a file that was truncated to zero and rewritten when its
                 * descriptor closes (auto_da_alloc), which would cost a full extra
                 * writeback after a big copy. Truncate, then write through a new
                 * descriptor: the flag is spent on the close of this one. */
                struct stat st2;

                if (ftruncate(fd, 0) < 0)
                        return vdisk_error(-errno, "Could not truncate '%s': %m", path);
                close(TAKE_FD(fd));
                /* The same path (symlinks followed, as the first open did), and it
                 * must still be the same file. */
                fd = open(path, oflags & ~(O_CREAT | O_EXCL), 0644);
                if (fd < 0)
                        return vdisk_error(-errno, "Could not open '%s': %m", path);
                if (fstat(fd, &st2) < 0)
                        return vdisk_error(-errno, "Could not stat '%s': %m", path);
                if (st2.st_dev != st.st_dev || st2.st_ino != st.st_ino || st2.st_size != 0)
                        return vdisk_error(-EBUSY, "'%s' changed while it was being replaced", path);
        }
        if ((path_flags & VDISK_PATH_DIRECT) && (oflags & O_RDWR))
                dfd = open_direct(fd);
        r = fd_io_new(fd, dfd, path,
                      ((path_flags & (VDISK_PATH_WRITE | VDISK_PATH_CREATE)) ? 0 : VDISK_IO_READONLY) |
                      ((path_flags & VDISK_PATH_NOSYNC) ? VDISK_IO_NOSYNC : 0),
                      ret);
        if (r < 0)
                return r;
        TAKE_FD(fd);
        TAKE_FD(dfd);
        return 0;
}
