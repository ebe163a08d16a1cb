/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The I/O questions of issue 13, measured without the library around them
 * (bench/pipeline.sh builds and runs it; docs/performance.md has the figures):
 *
 *   iobench disk FILE MIB BS_KIB QD [OVER]
 *       MIB of O_DIRECT writes of BS_KIB each, QD in flight (io_uring), then
 *       one fdatasync: the disk's bandwidth at that queue depth. Into a new
 *       file (blocks allocated as it goes), or with OVER 1 over the blocks
 *       of the existing FILE (no allocation).
 *   iobench copy MODE SRC DST FLUSH [QD CHUNK_KIB]
 *       SRC copied into a new DST through the page cache, as `convert -t
 *       writeback` (FLUSH 1: one fdatasync at the end) or `-t unsafe`
 *       (FLUSH 0) does: MODE sync (pread 4 MiB, pwrite), uring (pread 4 MiB,
 *       the writes queued through io_uring on the cached descriptor, QD x
 *       CHUNK in flight, the reader goes on), pool (pread 4 MiB, each CHUNK
 *       copied into one of 2 x QD buffers and written with pwrite by one of
 *       QD threads, disjoint ranges at once, the reader goes on) or cfr
 *       (copy_file_range(2) in 4 MiB steps: no copy through user space).
 *       Holes of SRC are skipped (SEEK_DATA) in every mode, as the copy does.
 *   iobench cmp MODE A B
 *       A and B read in 4 MiB steps and compared, as `compare` does: MODE
 *       plain, fadvise (POSIX_FADV_SEQUENTIAL on both first) or threads (B
 *       read by a second thread, so two reads are in flight).
 *
 * Prints the wall time in seconds (copy: and the process's user + system
 * CPU seconds). Not installed, not a test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STEP (4u << 20)

static void die(const char *what) {
        perror(what);
        exit(1);
}

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void *abuf(size_t n) {
        void *p;

        if (posix_memalign(&p, 4096, n))
                die("posix_memalign");
        memset(p, 0x5a, n);
        return p;
}

static void full_pread(int fd, void *buf, size_t len, off_t off) {
        while (len > 0) {
                ssize_t n = pread(fd, buf, len, off);
                if (n <= 0)
                        die("pread");
                buf = (char *) buf + n;
                len -= (size_t) n;
                off += n;
        }
}

static void full_pwrite(int fd, const void *buf, size_t len, off_t off) {
        while (len > 0) {
                ssize_t n = pwrite(fd, buf, len, off);
                if (n <= 0)
                        die("pwrite");
                buf = (const char *) buf + n;
                len -= (size_t) n;
                off += n;
        }
}

/* A ring of qd buffers of `chunk` bytes; submit() waits for a free one. */
typedef struct ring {
        struct io_uring ring;
        unsigned qd, busy;
        size_t chunk;
        char **bufs;
        int *used;
} ring;

static void ring_init(ring *r, unsigned qd, size_t chunk) {
        if (io_uring_queue_init(qd, &r->ring, 0) < 0)
                die("io_uring_queue_init");
        r->qd = qd;
        r->busy = 0;
        r->chunk = chunk;
        r->bufs = calloc(qd, sizeof *r->bufs);
        r->used = calloc(qd, sizeof *r->used);
        for (unsigned i = 0; i < qd; i++)
                r->bufs[i] = abuf(chunk);
}

static void ring_reap(ring *r, unsigned min) {
        while (min > 0 || r->busy > 0) {
                struct io_uring_cqe *cqe;
                int k = min > 0 ? io_uring_wait_cqe(&r->ring, &cqe) : io_uring_peek_cqe(&r->ring, &cqe);

                if (k == -EAGAIN)
                        return;
                if (k < 0) {
                        errno = -k;
                        die("io_uring_wait_cqe");
                }
                if (cqe->res < 0) {
                        errno = -cqe->res;
                        die("queued write");
                }
                r->used[(uintptr_t) io_uring_cqe_get_data(cqe)] = 0;
                r->busy--;
                io_uring_cqe_seen(&r->ring, cqe);
                if (min > 0)
                        min--;
        }
}

/* The caller fills the returned buffer, then calls ring_go(). */
static unsigned ring_slot(ring *r) {
        if (r->busy == r->qd)
                ring_reap(r, 1);
        for (unsigned i = 0; i < r->qd; i++)
                if (!r->used[i])
                        return i;
        abort();
}

static void ring_go(ring *r, unsigned i, int fd, size_t len, off_t off) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);

        if (!sqe)
                abort();
        io_uring_prep_write(sqe, fd, r->bufs[i], (unsigned) len, (uint64_t) off);
        io_uring_sqe_set_data(sqe, (void *) (uintptr_t) i);
        r->used[i] = 1;
        r->busy++;
        if (io_uring_submit(&r->ring) < 0)
                die("io_uring_submit");
}

static int cmd_disk(int argc, char **argv) {
        size_t bs;
        uint64_t total;
        unsigned qd;
        ring r;
        double t;
        int fd;

        if (argc != 6 && argc != 7)
                return 2;
        total = strtoull(argv[3], NULL, 10) << 20;
        bs = strtoull(argv[4], NULL, 10) << 10;
        qd = (unsigned) strtoul(argv[5], NULL, 10);
        fd = open(argv[2], O_RDWR | O_CREAT | O_DIRECT | (argc == 7 && atoi(argv[6]) ? 0 : O_TRUNC), 0644);
        if (fd < 0)
                die(argv[2]);
        ring_init(&r, qd, bs);
        t = now();
        for (uint64_t off = 0; off < total; off += bs)
                ring_go(&r, ring_slot(&r), fd, bs, (off_t) off);
        ring_reap(&r, r.busy);
        if (fdatasync(fd) < 0)
                die("fdatasync");
        printf("%.3f\n", now() - t);
        close(fd);
        return 0;
}

/* Page-cache writes from a pool of threads: the caller copies each chunk
 * into a free buffer and goes on; a worker writes it with pwrite. */
typedef struct pool {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        unsigned n_bufs, n_busy, n_threads;
        size_t chunk;
        char **bufs;
        size_t *len;
        off_t *off;
        int *state;             /* 0 free, 1 filled, 2 being written */
        int fd, stop;
        pthread_t *threads;
} pool;

static void *pool_main(void *u) {
        pool *p = u;

        pthread_mutex_lock(&p->lock);
        for (;;) {
                unsigned i;

                for (i = 0; i < p->n_bufs && p->state[i] != 1; i++)
                        ;
                if (i == p->n_bufs) {
                        if (p->stop)
                                break;
                        pthread_cond_wait(&p->cond, &p->lock);
                        continue;
                }
                p->state[i] = 2;
                pthread_mutex_unlock(&p->lock);
                full_pwrite(p->fd, p->bufs[i], p->len[i], p->off[i]);
                pthread_mutex_lock(&p->lock);
                p->state[i] = 0;
                p->n_busy--;
                pthread_cond_broadcast(&p->cond);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

static void pool_init(pool *p, int fd, unsigned threads, size_t chunk) {
        *p = (pool) { .n_bufs = 2 * threads, .n_threads = threads, .chunk = chunk, .fd = fd };
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->cond, NULL);
        p->bufs = calloc(p->n_bufs, sizeof *p->bufs);
        p->len = calloc(p->n_bufs, sizeof *p->len);
        p->off = calloc(p->n_bufs, sizeof *p->off);
        p->state = calloc(p->n_bufs, sizeof *p->state);
        p->threads = calloc(threads, sizeof *p->threads);
        for (unsigned i = 0; i < p->n_bufs; i++)
                p->bufs[i] = abuf(chunk);
        for (unsigned i = 0; i < threads; i++)
                if (pthread_create(&p->threads[i], NULL, pool_main, p))
                        die("pthread_create");
}

static void pool_write(pool *p, const char *buf, size_t len, off_t off) {
        unsigned i;

        pthread_mutex_lock(&p->lock);
        while (p->n_busy == p->n_bufs)
                pthread_cond_wait(&p->cond, &p->lock);
        for (i = 0; p->state[i] != 0; i++)
                ;
        p->n_busy++;
        pthread_mutex_unlock(&p->lock);
        memcpy(p->bufs[i], buf, len);   /* the slot is ours until state 1 */
        pthread_mutex_lock(&p->lock);
        p->len[i] = len;
        p->off[i] = off;
        p->state[i] = 1;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
}

static void pool_finish(pool *p) {
        pthread_mutex_lock(&p->lock);
        p->stop = 1;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i < p->n_threads; i++)
                pthread_join(p->threads[i], NULL);
}

static double cpu_seconds(void) {
        struct rusage ru;

        getrusage(RUSAGE_SELF, &ru);
        return (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int cmd_copy(int argc, char **argv) {
        const char *mode;
        unsigned qd = 8;
        size_t chunk = 1u << 20;
        int in, out, flush;
        char *buf = abuf(STEP);
        struct stat st;
        ring r;
        pool pl;
        double t;
        off_t off = 0;

        if (argc != 6 && argc != 8)
                return 2;
        mode = argv[2];
        flush = atoi(argv[5]);
        if (argc == 8) {
                qd = (unsigned) strtoul(argv[6], NULL, 10);
                chunk = strtoull(argv[7], NULL, 10) << 10;
        }
        in = open(argv[3], O_RDONLY);
        out = open(argv[4], O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (in < 0 || out < 0 || fstat(in, &st) < 0)
                die("open");
        if (ftruncate(out, st.st_size) < 0)
                die("ftruncate");
        if (!strcmp(mode, "uring"))
                ring_init(&r, qd, chunk);
        if (!strcmp(mode, "pool"))
                pool_init(&pl, out, qd, chunk);
        t = now();
        while (off < st.st_size) {
                off_t data = lseek(in, off, SEEK_DATA), hole;
                if (data < 0)
                        break;
                hole = lseek(in, data, SEEK_HOLE);
                for (off = data; off < hole;) {
                        size_t n = (size_t) (hole - off < STEP ? hole - off : STEP);

                        if (!strcmp(mode, "cfr")) {
                                loff_t a = off, b = off;
                                ssize_t k = copy_file_range(in, &a, out, &b, n, 0);
                                if (k <= 0)
                                        die("copy_file_range");
                                n = (size_t) k;
                        } else if (!strcmp(mode, "uring")) {
                                full_pread(in, buf, n, off);
                                for (size_t d = 0; d < n; d += chunk) {
                                        size_t m = n - d < chunk ? n - d : chunk;
                                        unsigned i = ring_slot(&r);
                                        memcpy(r.bufs[i], buf + d, m);
                                        ring_go(&r, i, out, m, off + (off_t) d);
                                }
                        } else if (!strcmp(mode, "pool")) {
                                full_pread(in, buf, n, off);
                                for (size_t d = 0; d < n; d += chunk)
                                        pool_write(&pl, buf + d, n - d < chunk ? n - d : chunk, off + (off_t) d);
                        } else {
                                full_pread(in, buf, n, off);
                                full_pwrite(out, buf, n, off);
                        }
                        off += (off_t) n;
                }
        }
        if (!strcmp(mode, "uring"))
                ring_reap(&r, r.busy);
        if (!strcmp(mode, "pool"))
                pool_finish(&pl);
        if (flush && fdatasync(out) < 0)
                die("fdatasync");
        printf("%.3f %.2f\n", now() - t, cpu_seconds());
        return 0;
}

typedef struct reader {
        int fd;
        off_t off;
        size_t len;
        char *buf;
} reader;

static void *read_job(void *u) {
        reader *j = u;

        full_pread(j->fd, j->buf, j->len, j->off);
        return NULL;
}

static int cmd_cmp(int argc, char **argv) {
        const char *mode;
        char *a = abuf(STEP), *b = abuf(STEP);
        int fa, fb, threads;
        struct stat st;
        uint64_t diff = 0;
        double t;

        if (argc != 5)
                return 2;
        mode = argv[2];
        threads = !strcmp(mode, "threads");
        fa = open(argv[3], O_RDONLY);
        fb = open(argv[4], O_RDONLY);
        if (fa < 0 || fb < 0 || fstat(fa, &st) < 0)
                die("open");
        t = now();
        if (!strcmp(mode, "fadvise")) {
                (void) posix_fadvise(fa, 0, 0, POSIX_FADV_SEQUENTIAL);
                (void) posix_fadvise(fb, 0, 0, POSIX_FADV_SEQUENTIAL);
        }
        for (off_t off = 0; off < st.st_size; off += STEP) {
                size_t n = (size_t) (st.st_size - off < STEP ? st.st_size - off : STEP);

                if (threads) {
                        reader j = { fb, off, n, b };
                        pthread_t th;

                        if (pthread_create(&th, NULL, read_job, &j))
                                die("pthread_create");
                        full_pread(fa, a, n, off);
                        pthread_join(th, NULL);
                } else {
                        full_pread(fa, a, n, off);
                        full_pread(fb, b, n, off);
                }
                if (memcmp(a, b, n))
                        diff++;
        }
        printf("%.3f %s\n", now() - t, diff ? "differ" : "same");
        return 0;
}

int main(int argc, char **argv) {
        int r = 2;

        if (argc > 1 && !strcmp(argv[1], "disk"))
                r = cmd_disk(argc, argv);
        else if (argc > 1 && !strcmp(argv[1], "copy"))
                r = cmd_copy(argc, argv);
        else if (argc > 1 && !strcmp(argv[1], "cmp"))
                r = cmd_cmp(argc, argv);
        if (r == 2)
                fprintf(stderr, "usage: iobench disk FILE MIB BS_KIB QD | copy sync|uring|pool|cfr SRC DST FLUSH "
                        "[QD CHUNK_KIB] | cmp plain|fadvise|threads A B\n");
        return r;
}
