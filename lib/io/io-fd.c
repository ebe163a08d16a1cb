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
 *   - the write-behind window (wb_*) has a mutex of its own, wlock. */
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
        uint64_t cached_left;   /* IO_PATH_CACHED: large writes the page cache still takes, then direct */
        uint64_t error_offset;
        size_t error_len;
        unsigned inject_at;     /* io_fd_queue_inject(): countdown + 1, 0 when off */
        int inject_error;
} write_queue;

/* The write-behind window (see wb_note_write()). */
#define WB_OPEN 4u
#define WB_KICKED 64u
typedef struct wb_span {
        uint64_t lo, hi;        /* [lo, hi); in kicked[], lo == hi == 0 stands for the whole file */
        uint64_t bytes;         /* kicked spans: bytes it accounts for */
        uint64_t used;          /* open spans: when last extended (a counter), 0 when unused */
        int inject;             /* tests: the wait for it fails with this error */
} wb_span;

typedef struct fd_io {
        int fd;
        int own;
        pthread_rwlock_t dlock;
        int dfd;                /* the same file opened O_DIRECT (VDISK_IO_DIRECT), or -1; under dlock */
        _Atomic int no_direct;  /* a queued direct write was refused (EINVAL): no more direct writes */
        write_queue *wq;        /* under dlock */
        int nosync;             /* VDISK_IO_NOSYNC: flushes are skipped, so is early writeback */
        int direct_only;        /* VDISK_IO_DIRECT_ONLY: a queue takes IO_PATH_DIRECT whatever it is asked */

        /* The write-behind window of page-cache writes (wb_*): under wlock. */
        pthread_mutex_t wlock;
        wb_span open[WB_OPEN];          /* dirty, writeback not started yet */
        wb_span kicked[WB_KICKED];      /* writeback started, not waited for: a FIFO */
        unsigned k_head, k_count;
        uint64_t k_bytes;               /* bytes in kicked[] */
        uint64_t loose;                 /* bytes of small scattered writes in no span */
        int w_error;                    /* a failed wait, also returned by the next flush */
        uint64_t w_clock;               /* for open[].used */
        uint64_t w_step, w_window;      /* w_window 0: no window, a whole-file kick every w_step */
        int direct_writes;              /* large aligned writes may go through dfd; under dlock */
        io_window_stats stats;
        unsigned w_inject_at;           /* io_fd_window_inject(): countdown + 1, 0 when off */
        int w_inject_error;
} fd_io;

static void wq_reap(fd_io *f, write_queue *q, unsigned min);

/* Direct writes. A durable bulk write through the page cache costs a copy
 * into the cache and then the kernel's writeback; O_DIRECT hands the pages to
 * the disk instead. Which is faster depends on the file being written: the
 * idle runs of docs/performance.md put the page cache with the write-behind
 * window below ahead where an image format appends its new blocks to a
 * growing file (a copy into VDI), direct writes (queued through io_uring)
 * ahead for raw outputs and for merge targets. So the operation chooses per
 * file (io_queue_begin()'s path); outside a queue, large writes of an io
 * with an O_DIRECT twin go direct (DIRECT_WRITES). VDISK_IO_DIRECT_WRITES=0|1
 * in the environment forces one path everywhere, for measuring. Only large
 * writes whose buffer, offset and length are aligned go direct; everything
 * else (headers, tables, the 4 KiB pages of a sparse block) goes through the
 * page cache, where small writes are cheap and get merged. Mixing the two on
 * one file is coherent: the kernel writes back and drops cached pages in the
 * range of a direct write. DIRECT_ALIGN is the strictest alignment Linux
 * file systems ask for. */
#define DIRECT_ALIGN 4096u
#define DIRECT_MIN (128u << 10)
#define DIRECT_WRITES 1
/* The page-cache path pays off for a copy of a few hundred MiB into a
 * growing file; with gigabytes to write, the fresh page-cache pages cost more
 * than the direct writes do (docs/performance.md, "At 8 GiB"). So a queue on
 * IO_PATH_CACHED takes that much of large aligned writes through the page
 * cache, and goes direct for the rest. */
#define CACHED_LIMIT (512u << 20)

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

/* With dlock held (for reading at least): could this write go direct? For
 * VDISK_IO_DIRECT_ONLY (-t none, directsync) any aligned write does: the
 * caller asked to keep the page cache out, and qcow2's or sparse VMDK's
 * 64 KiB clusters are below DIRECT_MIN. */
static bool direct_fits(fd_io *f, const void *p, size_t len, uint64_t off) {
        return f->dfd >= 0 && !atomic_load(&f->no_direct) && len >= (f->direct_only ? DIRECT_ALIGN : DIRECT_MIN) &&
               ((uintptr_t) p | len | off) % DIRECT_ALIGN == 0;
}

/* With dlock held (for reading at least): does it? */
static bool direct_ok(fd_io *f, const void *p, size_t len, uint64_t off) {
        return f->direct_writes && direct_fits(f, p, len, off);
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

/* ---- the write-behind window of page-cache writes
 *
 * A durable write through the page cache only dirties pages; the kernel
 * writes them back when it likes, and the final fdatasync waits for whatever
 * is left. Left alone, a large copy dirties up to the kernel's dirty limit
 * (gigabytes), then the flush writes it all at once while the copy is over
 * (docs/performance.md, "A write-behind window"). Instead the io remembers
 * the ranges written since the last flush: up to WB_OPEN open spans (a copy
 * writes its data sequentially, its tables elsewhere; a span grows while
 * writes touch its end), starts writeback of a span as soon as it holds a
 * step (sync_file_range WRITE: the disk gets one large I/O while the copy
 * goes on), and waits for the oldest started spans once more than the window
 * is under writeback (WAIT_BEFORE|WRITE|WAIT_AFTER), so dirty memory stays
 * about window + a few steps, whatever the size of the copy. Scattered small
 * writes (tables, guest writes) belong to no span: they are counted, and
 * every step of them the whole file is kicked and, a window later, waited
 * for. Durability still comes only from the flush; a failed wait is a write
 * error (EIO, ENOSPC) that the kernel will not report again to this file's
 * fdatasync, so it is returned by the write that waited and by the next flush.
 *
 * The ring is under wlock; the system calls run outside it, so writers that
 * wait do not hold up the others more than the disk does. Reads never wait. */
#define WB_STEP (32u << 20)
#define WB_WINDOW (256u << 20)
#define WB_MIN_SPAN (1u << 20)          /* an evicted open span smaller than this counts as scattered */
#define WB_OFF_STEP (32u << 20)         /* no window (VDISK_IO_WINDOW=0): whole-file kick, never waited for */

typedef struct wb_policy {
        uint64_t step, window;
        int direct_writes;      /* outside a queue */
        int force_direct;       /* VDISK_IO_DIRECT_WRITES: 0 or 1 for every queue too, -1 unset */
        uint64_t cached_limit;  /* IO_PATH_CACHED: bytes of large writes before it goes direct */
} wb_policy;

static wb_policy wb_default;
static pthread_once_t wb_once = PTHREAD_ONCE_INIT;

/* VDISK_IO_WINDOW=STEP,WINDOW (MiB) or 0, VDISK_IO_DIRECT_WRITES=0|1,
 * VDISK_IO_CACHED_LIMIT=MiB: for measuring (bench/run.sh), not for tuning in
 * production. */
static void wb_policy_init(void) {
        const char *e = getenv("VDISK_IO_WINDOW");
        unsigned long step, window, limit;

        wb_default = (wb_policy) { .step = WB_STEP, .window = WB_WINDOW, .direct_writes = DIRECT_WRITES,
                                   .force_direct = -1, .cached_limit = CACHED_LIMIT };
        if (e && strcmp(e, "0") == 0) {
                wb_default.step = WB_OFF_STEP;
                wb_default.window = 0;
        } else if (e && sscanf(e, "%lu,%lu", &step, &window) == 2 && step > 0 && step <= 1024 &&
                   window >= step && window <= 65536) {
                wb_default.step = (uint64_t) step << 20;
                wb_default.window = (uint64_t) window << 20;
        }
        e = getenv("VDISK_IO_DIRECT_WRITES");
        if (e && (strcmp(e, "0") == 0 || strcmp(e, "1") == 0))
                wb_default.direct_writes = wb_default.force_direct = e[0] == '1';
        e = getenv("VDISK_IO_CACHED_LIMIT");
        if (e && sscanf(e, "%lu", &limit) == 1 && limit <= (1ul << 30))
                wb_default.cached_limit = (uint64_t) limit << 20;
}

/* With wlock held: a started span joins the FIFO; the oldest go to `wait`
 * while more than the window is under writeback. */
static void wb_push(fd_io *f, uint64_t lo, uint64_t hi, uint64_t bytes, wb_span *wait, unsigned *n_wait) {
        wb_span *k;

        if (f->k_count == WB_KICKED) {   /* full: the oldest is waited for whatever its size */
                wait[(*n_wait)++] = f->kicked[f->k_head];
                f->k_bytes -= f->kicked[f->k_head].bytes;
                f->k_head = (f->k_head + 1) % WB_KICKED;
                f->k_count--;
        }
        k = &f->kicked[(f->k_head + f->k_count) % WB_KICKED];
        *k = (wb_span) { .lo = lo, .hi = hi, .bytes = bytes };
        if (f->w_inject_at > 0 && --f->w_inject_at == 0)
                k->inject = f->w_inject_error;
        f->k_count++;
        f->k_bytes += bytes;
}

static void wb_clear(fd_io *f) {
        memset(f->open, 0, sizeof f->open);
        f->k_head = f->k_count = 0;
        f->k_bytes = f->loose = 0;
}

/* After a page-cache write of [off, off+n) that a flush will make durable:
 * starts writeback and waits for what the window says. Returns the error of
 * a failed wait. */
static int wb_note_write(fd_io *f, uint64_t off, uint64_t n) {
        wb_span wait[WB_KICKED + 3], kick[3];
        unsigned n_wait = 0, n_kick = 0;
        uint64_t end = off + n, pending;
        wb_span *s = NULL, *lru = NULL;
        int r = 0;

        pthread_mutex_lock(&f->wlock);
        if (f->w_window == 0) {
                f->loose += n;
                if (f->loose >= f->w_step) {
                        f->loose = 0;
                        kick[n_kick++] = (wb_span) {};
                }
                goto unlock;
        }
        for (unsigned i = 0; i < WB_OPEN && !s; i++) {
                wb_span *o = &f->open[i];

                if (o->used > 0 && off <= o->hi && end >= o->lo)
                        s = o;
                else if (!lru || o->used < lru->used)
                        lru = o;
        }
        if (s) {
                s->lo = MIN(s->lo, off);
                s->hi = MAX(s->hi, end);
                /* It may now touch another open span: one span of the two. */
                for (unsigned i = 0; i < WB_OPEN; i++) {
                        wb_span *o = &f->open[i];

                        if (o != s && o->used > 0 && s->lo <= o->hi && s->hi >= o->lo) {
                                s->lo = MIN(s->lo, o->lo);
                                s->hi = MAX(s->hi, o->hi);
                                o->used = 0;
                        }
                }
        } else {
                s = lru;
                if (s->used > 0 && s->hi - s->lo >= WB_MIN_SPAN) {
                        kick[n_kick++] = *s;
                        wb_push(f, s->lo, s->hi, s->hi - s->lo, wait, &n_wait);
                } else if (s->used > 0)
                        f->loose += s->hi - s->lo;
                s->lo = off;
                s->hi = end;
        }
        s->used = ++f->w_clock;
        if (s->hi - s->lo >= f->w_step) {
                kick[n_kick++] = *s;
                wb_push(f, s->lo, s->hi, s->hi - s->lo, wait, &n_wait);
                s->lo = s->hi;   /* stays open at its end, empty */
        }
        if (f->loose >= f->w_step) {
                kick[n_kick++] = (wb_span) {};
                wb_push(f, 0, 0, f->loose, wait, &n_wait);
                f->loose = 0;
        }
        while (f->k_bytes > f->w_window && f->k_count > 0) {
                wait[n_wait++] = f->kicked[f->k_head];
                f->k_bytes -= f->kicked[f->k_head].bytes;
                f->k_head = (f->k_head + 1) % WB_KICKED;
                f->k_count--;
        }
        pending = f->k_bytes + f->loose;
        for (unsigned i = 0; i < WB_OPEN; i++)
                if (f->open[i].used > 0)
                        pending += f->open[i].hi - f->open[i].lo;
        f->stats.max_pending = MAX(f->stats.max_pending, pending);
unlock:
        f->stats.kicks += n_kick;
        f->stats.waits += n_wait;
        pthread_mutex_unlock(&f->wlock);

        for (unsigned i = 0; i < n_kick; i++)
                (void) sync_file_range(f->fd, (off_t) kick[i].lo, (off_t) (kick[i].hi - kick[i].lo),
                                       SYNC_FILE_RANGE_WRITE);
        for (unsigned i = 0; i < n_wait; i++) {
                int q = 0;

                if (sync_file_range(f->fd, (off_t) wait[i].lo, (off_t) (wait[i].hi - wait[i].lo),
                                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                    SYNC_FILE_RANGE_WAIT_AFTER) < 0)
                        q = errno == EIO || errno == ENOSPC || errno == EDQUOT ? -errno : 0;
                if (wait[i].inject)
                        q = wait[i].inject;
                if (q < 0 && r == 0)
                        r = q;
        }
        if (r < 0) {
                pthread_mutex_lock(&f->wlock);
                f->stats.wait_errors++;
                if (f->w_error == 0)
                        f->w_error = r;
                pthread_mutex_unlock(&f->wlock);
        }
        return r;
}

static fd_io *fd_of(vdisk_io *io) {
        return io && io->kind == IO_KIND_FD ? io->user : NULL;
}

int io_fd_window_set(vdisk_io *io, uint64_t step, uint64_t window) {
        fd_io *f = fd_of(io);

        if (!f || step == 0 || (window > 0 && window < step))
                return -EINVAL;
        pthread_mutex_lock(&f->wlock);
        f->w_step = step;
        f->w_window = window;
        wb_clear(f);
        pthread_mutex_unlock(&f->wlock);
        return 0;
}

int io_fd_window_stats(vdisk_io *io, io_window_stats *ret) {
        fd_io *f = fd_of(io);

        if (!f || !ret)
                return -EINVAL;
        pthread_mutex_lock(&f->wlock);
        *ret = f->stats;
        pthread_mutex_unlock(&f->wlock);
        return 0;
}

int io_fd_writes_direct(vdisk_io *io) {
        fd_io *f = fd_of(io);
        int r;

        if (!f)
                return -EINVAL;
        pthread_rwlock_rdlock(&f->dlock);
        r = f->dfd >= 0 && f->direct_writes && !atomic_load(&f->no_direct);
        pthread_rwlock_unlock(&f->dlock);
        return r;
}

int io_fd_window_inject(vdisk_io *io, unsigned n, int err) {
        fd_io *f = fd_of(io);

        if (!f || err >= 0)
                return -EINVAL;
        pthread_mutex_lock(&f->wlock);
        f->w_inject_at = n + 1;
        f->w_inject_error = err;
        pthread_mutex_unlock(&f->wlock);
        return 0;
}

static int fd_pwrite(void *u, const void *buf, size_t len, uint64_t off) {
        fd_io *f = u;
        const uint8_t *p = buf;
        uint64_t cached_lo = UINT64_MAX, cached_hi = 0;
        int r = 0, q;

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
                if (!direct) {
                        cached_lo = MIN(cached_lo, off - (uint64_t) n);
                        cached_hi = MAX(cached_hi, off);
                }
        }
        pthread_rwlock_unlock(&f->dlock);
        if (cached_hi > 0 && !f->nosync) {
                q = wb_note_write(f, cached_lo, cached_hi - cached_lo);
                if (r == 0)
                        r = q;
        }
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

/* The large writes of the queue go direct through io_uring (path
 * IO_PATH_DIRECT, unless the environment forces the page cache), or through
 * the page cache and the window (IO_PATH_CACHED, unless it forces direct or
 * the io is VDISK_IO_DIRECT_ONLY) for the first cached_limit bytes, then
 * direct as well. */
static int fd_queue_begin(void *u, int path, unsigned depth, size_t chunk) {
        fd_io *f = u;
        write_queue *q = NULL;
        bool direct = wb_default.force_direct >= 0 ? wb_default.force_direct
                                                   : path == IO_PATH_DIRECT || f->direct_only;
        bool later = !direct && wb_default.force_direct < 0;
        int r = 0;

        if ((direct || later) && depth > 0) {   /* later: the queue for after the page cache's share */
                q = calloc(1, sizeof *q);
                if (!q)
                        return -ENOMEM;
                pthread_mutex_init(&q->lock, NULL);
                q->depth = depth;
                q->chunk = chunk;
                q->cached_left = direct ? 0 : wb_default.cached_limit;
        }
        pthread_rwlock_wrlock(&f->dlock);
        if (f->wq || (direct && (depth == 0 || f->dfd < 0)))
                r = -EOPNOTSUPP;
        else {
                f->direct_writes = direct;
                if (f->dfd >= 0)   /* else the page cache throughout */
                        f->wq = TAKE_PTR(q);
        }
        pthread_rwlock_unlock(&f->dlock);
        wq_free(q);
        return r;
}

static void fd_queue_end(void *u) {
        fd_io *f = u;

        pthread_rwlock_wrlock(&f->dlock);
        if (f->wq) {
                pthread_mutex_lock(&f->wq->lock);
                wq_reap(f, f->wq, f->wq->n_busy);
                pthread_mutex_unlock(&f->wq->lock);
                wq_free(f->wq);
                f->wq = NULL;
        }
        f->direct_writes = wb_default.direct_writes;
        pthread_rwlock_unlock(&f->dlock);
}

static int fd_queue_write(void *u, const void *buf, size_t len, uint64_t off) {
        fd_io *f = u;
        const uint8_t *p = buf;
        write_queue *q;
        int r = 1;

        pthread_rwlock_rdlock(&f->dlock);
        q = f->wq;
        if (q && !f->direct_writes && direct_fits(f, p, len, off)) {
                /* IO_PATH_CACHED: through the page cache while its share
                 * lasts, then direct from here on. */
                bool cached;

                pthread_mutex_lock(&q->lock);
                cached = q->cached_left >= len;
                if (cached)
                        q->cached_left -= len;
                pthread_mutex_unlock(&q->lock);
                if (!cached) {
                        pthread_rwlock_unlock(&f->dlock);
                        pthread_rwlock_wrlock(&f->dlock);
                        if (f->wq == q)
                                f->direct_writes = 1;
                        pthread_rwlock_unlock(&f->dlock);
                        pthread_rwlock_rdlock(&f->dlock);
                        q = f->wq;
                }
        }
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
        int r;

        pthread_mutex_lock(&f->wlock);
        r = f->w_error;   /* a wait of the window failed: this flush fails too, once */
        f->w_error = 0;
        wb_clear(f);
        pthread_mutex_unlock(&f->wlock);
        if (fdatasync(f->fd) < 0 && errno != EINVAL)   /* EINVAL: a special file without sync */
                return -errno;
        return r;
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

        fd_queue_end(f);   /* waits for the writes in flight */
        if (f->own)
                close(f->fd);
        if (f->dfd >= 0)
                close(f->dfd);
        pthread_rwlock_destroy(&f->dlock);
        pthread_mutex_destroy(&f->wlock);
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
        .queue_begin = fd_queue_begin,
        .queue_end = fd_queue_end,
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
        f->nosync = !!(flags & VDISK_IO_NOSYNC);
        f->direct_only = !!(flags & VDISK_IO_DIRECT_ONLY);
        pthread_mutex_init(&f->wlock, NULL);
        pthread_once(&wb_once, wb_policy_init);
        f->w_step = wb_default.step;
        f->w_window = wb_default.window;
        f->direct_writes = wb_default.direct_writes;
        r = io_new(&fd_vtable, f, name, flags & (VDISK_IO_READONLY | VDISK_IO_NOSYNC), IO_KIND_FD, ret);
        if (r < 0) {
                pthread_rwlock_destroy(&f->dlock);
                pthread_mutex_destroy(&f->wlock);
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

void io_drop_direct_fd(vdisk_io *io) {
        fd_io *f;

        if (!io || io->kind != IO_KIND_FD)
                return;
        f = io->user;
        pthread_rwlock_wrlock(&f->dlock);
        if (f->wq) {   /* writes in flight name the descriptor */
                pthread_mutex_lock(&f->wq->lock);
                wq_reap(f, f->wq, f->wq->n_busy);
                pthread_mutex_unlock(&f->wq->lock);
        }
        if (f->dfd >= 0)
                close(f->dfd);
        f->dfd = -1;
        pthread_rwlock_unlock(&f->dlock);
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
                      ((path_flags & VDISK_PATH_NOSYNC) ? VDISK_IO_NOSYNC : 0) |
                      ((path_flags & VDISK_PATH_DIRECT_ONLY) ? VDISK_IO_DIRECT_ONLY : 0),
                      ret);
        if (r < 0)
                return r;
        TAKE_FD(fd);
        TAKE_FD(dfd);
        return 0;
}
