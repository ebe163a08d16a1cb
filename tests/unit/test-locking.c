/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The lock model (docs/architecture.md, "Thread-safety contract"):
 *   - two-disk operations in opposite directions (copy A->B with copy B->A,
 *     compare A B with compare B A) never deadlock, also while other threads
 *     keep both disk locks busy with reads;
 *   - a read of a disk proceeds while a long copy from it is stopped at a chunk
 *     boundary (the operation holds no lock between chunks), and the chain
 *     cannot be taken apart under the operation (-EBUSY);
 *   - closing a disk reports a failed final flush;
 *   - one fd io takes writes from several threads at once, direct and through
 *     the page cache, while its direct descriptor is replaced, and image
 *     getters (the comment's cached copy) run on several threads (for TSan).
 *
 * A watchdog (alarm) turns a hang into a failure with a message. Nothing here
 * depends on timing: every wait is on a condition the other thread sets.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

#include "tests.h"

#define SIZE (8 * MiB)
#ifndef ROUNDS
#define ROUNDS 6
#endif
#ifndef WATCHDOG_SEC
#define WATCHDOG_SEC 120
#endif

static const char *watchdog_what = "";

static void on_alarm(int sig) {
        static const char msg[] = "test-locking: WATCHDOG: still running after the time limit, "
                                   "a thread waits for a lock forever: ";

        (void) sig;
        (void) !write(STDERR_FILENO, msg, sizeof msg - 1);
        (void) !write(STDERR_FILENO, watchdog_what, strlen(watchdog_what));
        (void) !write(STDERR_FILENO, "\n", 1);
        _exit(1);
}

static void watchdog(const char *what) {
        watchdog_what = what;
        alarm(WATCHDOG_SEC);
}

/* Content written into the base image: data blocks, zero blocks and holes. */
static void fill_content(vdisk_disk *d, uint64_t seed) {
        uint8_t *buf = malloc(MiB);
        rng r;

        ASSERT(buf);
        rng_seed(&r, seed);
        for (uint64_t off = 0; off < SIZE; off += MiB) {
                if (rng_chance(&r, 25))
                        continue;   /* a hole */
                rng_fill(&r, buf, MiB);
                if (rng_chance(&r, 30))
                        memset(buf + 64 * KiB, 0, 512 * KiB);   /* a zero run inside data */
                ASSERT_OK(vdisk_disk_write(d, buf, MiB, off));
        }
        free(buf);
}

/* A VDI base with the content of `seed` on a new memory io. */
static vdisk_disk *make_disk(const char *name, uint64_t seed) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io(name, NULL, 0);

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        fill_content(d, seed);
        return d;
}

static vdisk_copy_opts copy_opts(void) {
        vdisk_copy_opts o = { .size = sizeof o, .create = { .size = sizeof o.create },
                              .from_same = -1, .to_same = -1 };
        return o;
}

/* ---- opposite two-disk operations */

typedef struct shared {
        vdisk_disk *a, *b;
        pthread_barrier_t round;
        atomic_int done;          /* worker threads finished (the hog stops at 4) */
} shared;

typedef struct worker {
        shared *s;
        int kind;                 /* 0 copy a->b, 1 copy b->a, 2 compare a b, 3 compare b a */
        int failures;
        char error[512];
} worker;

static void *worker_main(void *arg) {
        worker *w = arg;
        shared *s = w->s;

        for (int i = 0; i < ROUNDS; i++) {
                vdisk_disk *from = (w->kind == 0 || w->kind == 2) ? s->a : s->b;
                vdisk_disk *to = from == s->a ? s->b : s->a;
                uint64_t off = UINT64_MAX;
                int r;

                pthread_barrier_wait(&s->round);
                if (w->kind < 2) {
                        vdisk_copy_opts o = copy_opts();
                        char name[64];
                        vdisk_io *io;

                        /* Into a new differencing image on top of the other
                         * disk: both disks hold the same content, so every
                         * view reads the same at every moment. */
                        snprintf(name, sizeof name, "copy-%d-%d.vdi", w->kind, i);
                        io = mem_io(name, NULL, 0);
                        r = vdisk_copy(from, to, io, "vdi", &o, NULL);
                        vdisk_io_unref(io);
                } else
                        r = vdisk_compare(from, to, 0, &off, NULL);
                if (r != 0 && !w->failures) {
                        snprintf(w->error, sizeof w->error, "round %d: %s returned %d (%s)%s%s", i,
                                 w->kind < 2 ? "vdisk_copy" : "vdisk_compare", r,
                                 r < 0 ? vdisk_last_error() : "different content",
                                 r > 0 ? " at " : "", "");
                        w->failures++;
                }
        }
        atomic_fetch_add(&s->done, 1);
        return NULL;
}

/* Keeps both disk locks busy with 4 MiB reads, so an operation that takes
 * one disk lock and then waits for the other usually finds it taken. */
static void *hog_main(void *arg) {
        shared *s = arg;
        uint8_t *buf = malloc(4 * MiB);
        uint64_t n = 0;

        ASSERT(buf);
        while (atomic_load(&s->done) < 4) {
                vdisk_disk *d = (n & 1) ? s->a : s->b;
                uint64_t off = (n / 2 * 4 * MiB) % SIZE;

                ASSERT_OK(vdisk_disk_read(d, buf, 4 * MiB, off));
                n++;
        }
        free(buf);
        return NULL;
}

static void test_opposite_operations(void) {
        shared s = {};
        worker w[4] = {};
        pthread_t t[4], hog;
        uint64_t off = 0;

        s.a = make_disk("a.vdi", 1);
        s.b = disk_new();
        {
                vdisk_copy_opts o = copy_opts();
                vdisk_io *io = mem_io("b.vdi", NULL, 0);

                ASSERT_OK(vdisk_copy(s.a, s.b, io, "vdi", &o, NULL));
                vdisk_io_unref(io);
        }
        ASSERT(vdisk_compare(s.a, s.b, 0, NULL, NULL) == 0);
        ASSERT(pthread_barrier_init(&s.round, NULL, 4) == 0);

        watchdog("copy A->B | copy B->A | compare A B | compare B A");
        ASSERT(pthread_create(&hog, NULL, hog_main, &s) == 0);
        for (int i = 0; i < 4; i++) {
                w[i] = (worker) { .s = &s, .kind = i };
                ASSERT(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
        }
        for (int i = 0; i < 4; i++)
                pthread_join(t[i], NULL);
        pthread_join(hog, NULL);
        alarm(0);

        for (int i = 0; i < 4; i++)
                if (w[i].failures)
                        FAIL("worker %d: %s", i, w[i].error);
        /* Every copy added one differencing image, and the content never changed. */
        ASSERT(vdisk_disk_count(s.a) == 1 + ROUNDS);
        ASSERT(vdisk_disk_count(s.b) == 1 + ROUNDS);
        ASSERT(vdisk_compare(s.a, s.b, 0, &off, NULL) == 0);
        {
                vdisk_disk *ref = make_disk("ref.vdi", 1);

                ASSERT(vdisk_compare(ref, s.a, 0, &off, NULL) == 0);
                ASSERT_OK(vdisk_disk_close(ref));
        }
        pthread_barrier_destroy(&s.round);
        ASSERT_OK(vdisk_disk_close(s.a));
        ASSERT_OK(vdisk_disk_close(s.b));
}

/* ---- a read while a long copy from the disk is paused at a chunk boundary */

typedef struct pause {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int paused;               /* the operation waits in its progress callback */
        int release;              /* the test lets it go on */
} pause_ctl;

static void on_progress(vdisk_progress *p, void *user) {
        pause_ctl *c = user;

        (void) p;
        pthread_mutex_lock(&c->lock);
        if (!c->release) {
                c->paused = 1;
                pthread_cond_broadcast(&c->cond);
                while (!c->release)
                        pthread_cond_wait(&c->cond, &c->lock);
        }
        pthread_mutex_unlock(&c->lock);
}

typedef struct copy_job {
        vdisk_disk *src, *dst;
        vdisk_progress *p;
        int r;
        char error[512];
} copy_job;

static void *copy_main(void *arg) {
        copy_job *j = arg;
        vdisk_copy_opts o = copy_opts();
        vdisk_io *io = mem_io("paused-copy.vdi", NULL, 0);

        j->r = vdisk_copy(j->src, j->dst, io, "vdi", &o, j->p);
        if (j->r < 0)
                snprintf(j->error, sizeof j->error, "%s", vdisk_last_error());
        vdisk_io_unref(io);
        return NULL;
}

static void test_read_during_copy(void) {
        pause_ctl c = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
        vdisk_disk *src = make_disk("src.vdi", 2), *dst = disk_new(), *ref = make_disk("ref2.vdi", 2);
        uint8_t *buf = malloc(MiB), *expect = malloc(MiB);
        copy_job j = { .src = src, .dst = dst };
        vdisk_io *io;
        pthread_t t;

        ASSERT(buf && expect);
        ASSERT_OK(vdisk_progress_new(on_progress, &c, &j.p));
        watchdog("a read of a disk while a copy from it is paused in its progress callback");
        ASSERT(pthread_create(&t, NULL, copy_main, &j) == 0);

        pthread_mutex_lock(&c.lock);
        while (!c.paused)
                pthread_cond_wait(&c.cond, &c.lock);
        pthread_mutex_unlock(&c.lock);

        /* The copy is between two chunks: the source serves reads and writes. */
        ASSERT_OK(vdisk_disk_read(src, buf, MiB, 3 * MiB));
        ASSERT_OK(vdisk_disk_read(ref, expect, MiB, 3 * MiB));
        ASSERT_MEMEQ(buf, expect, MiB);
        ASSERT(vdisk_disk_size(src) == SIZE);
        ASSERT(vdisk_disk_count(dst) == 1);
        ASSERT_OK(vdisk_disk_read(dst, buf, MiB, 0));
        /* ... but its chain cannot be taken apart under the copy. */
        ASSERT_ERR(vdisk_disk_close_top(src), -EBUSY);
        ASSERT_ERR(vdisk_disk_close(src), -EBUSY);
        ASSERT_ERR(vdisk_resize(src, 2 * SIZE, NULL), -EBUSY);
        ASSERT_ERR(vdisk_disk_close_top(dst), -EBUSY);
        io = mem_io("other.vdi", NULL, 0);
        ASSERT_ERR(vdisk_disk_create_diff(dst, io, "vdi", NULL), -EBUSY);
        vdisk_io_unref(io);
        /* A new image on top of the source does not disturb the copy (it
         * reads the levels it found), and may go again; writes into the
         * source go on too. */
        io = mem_io("snap.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_diff(src, io, "vdi", NULL));
        vdisk_io_unref(io);
        memset(buf, 0x5a, MiB);
        ASSERT_OK(vdisk_disk_write(src, buf, MiB, 5 * MiB));
        ASSERT_OK(vdisk_disk_close_top(src));
        io = mem_io("snap2.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_diff(src, io, "vdi", NULL));
        vdisk_io_unref(io);
        ASSERT_OK(vdisk_disk_write(src, buf, MiB, 5 * MiB));
        /* Merging the new image down would change what the copy reads. */
        ASSERT_ERR(vdisk_merge(src, 1, 0, NULL, NULL), -EBUSY);

        pthread_mutex_lock(&c.lock);
        c.release = 1;
        pthread_cond_broadcast(&c.cond);
        pthread_mutex_unlock(&c.lock);
        pthread_join(t, NULL);
        alarm(0);
        if (j.r < 0)
                FAIL("the paused copy failed: %d (%s)", j.r, j.error);

        /* The copy holds the content the source had when it started. */
        ASSERT(vdisk_compare(ref, dst, 0, NULL, NULL) == 0);
        ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 1);
        ASSERT_OK(vdisk_disk_close_top(src));
        ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 0);

        vdisk_progress_free(j.p);
        free(buf);
        free(expect);
        ASSERT_OK(vdisk_disk_close(src));
        ASSERT_OK(vdisk_disk_close(dst));
        ASSERT_OK(vdisk_disk_close(ref));
}

/* ---- close reports the final flush */

static void test_close_reports_flush_error(void) {
        vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_EIO, .after = 0, .fail_flush = 1 };
        vdisk_io *mem = mem_io("flaky.vdi", NULL, 0), *io;
        uint8_t buf[4096];
        vdisk_disk *d;

        /* A VDI with some data, closed cleanly: close returns 0. */
        memset(buf, 0x33, sizeof buf);
        d = disk_new();
        ASSERT_OK(vdisk_disk_create_base(d, mem, "vdi", SIZE, NULL));
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 0));
        ASSERT_OK(vdisk_disk_close(d));

        /* Reopened through a fault io: every write and, once one failed,
         * every flush fails. The failed write is reported by the write; the
         * close must report the failed final flush, naming the file. */
        ASSERT_OK(vdisk_io_new_fault(mem, &f, &io));
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "vdi", 0));
        ASSERT_FAILS(vdisk_disk_write(d, buf, sizeof buf, 2 * MiB));
        ASSERT(vdisk_io_fault_fired(io));
        ASSERT_ERR(vdisk_disk_close(d), -EIO);
        if (!strstr(vdisk_last_error(), "flaky.vdi"))
                FAIL("the close error does not name the file: \"%s\"", vdisk_last_error());

        /* A NULL disk is fine, as for unref. */
        ASSERT_OK(vdisk_disk_close(NULL));
        vdisk_io_unref(io);
        vdisk_io_unref(mem);
}

/* ---- one fd io, several writing threads */

#define IO_THREADS 4
#define IO_REGION (2 * MiB)   /* per thread */

typedef struct io_job {
        vdisk_io *io;
        unsigned index;
        int r;
} io_job;

/* Each thread fills its own region: 256 KiB aligned writes (direct when the
 * io has a direct descriptor) alternating with odd-sized ones (page cache). */
static void *io_writer_main(void *arg) {
        io_job *j = arg;
        uint8_t *buf = NULL;
        uint64_t base = j->index * IO_REGION, off = 0;

        if (posix_memalign((void **) &buf, 4096, 256 * KiB) != 0)
                return NULL;
        memset(buf, 0x10 + j->index, 256 * KiB);
        for (unsigned k = 0; off < IO_REGION && j->r >= 0; k++) {
                size_t n = k % 2 ? 256 * KiB : 4096 + 512;

                n = MIN(n, IO_REGION - off);
                j->r = vdisk_io_pwrite(j->io, buf, n, base + off);
                off += n;
        }
        free(buf);
        return NULL;
}

static void test_io_concurrent_writes(void) {
        const char *t = getenv("TMPDIR");
        char path[512];
        io_job jobs[IO_THREADS];
        pthread_t th[IO_THREADS];
        uint8_t *buf = malloc(IO_REGION);
        vdisk_io *io;
        int fd, dfd;

        ASSERT(buf);
        snprintf(path, sizeof path, "%s/vdisk-locking-XXXXXX", t && t[0] ? t : "/tmp");
        fd = mkostemp(path, O_CLOEXEC);
        ASSERT(fd >= 0);
        ASSERT_OK(vdisk_io_new_fd(fd, "shared.img", VDISK_IO_DIRECT, &io));
        dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);   /* -1 where O_DIRECT is refused (tmpfs) */

        watchdog("writes through one fd io from several threads");
        for (unsigned i = 0; i < IO_THREADS; i++) {
                jobs[i] = (io_job) { .io = io, .index = i };
                ASSERT(pthread_create(&th[i], NULL, io_writer_main, &jobs[i]) == 0);
        }
        /* Meanwhile the direct descriptor is replaced, again and again. */
        for (int k = 0; dfd >= 0 && k < 50; k++)
                ASSERT_OK(vdisk_io_set_direct_fd(io, dfd));
        for (unsigned i = 0; i < IO_THREADS; i++) {
                pthread_join(th[i], NULL);
                ASSERT_OK(jobs[i].r);
        }
        alarm(0);
        ASSERT_OK(vdisk_io_flush(io));
        for (unsigned i = 0; i < IO_THREADS; i++) {
                ASSERT_OK(vdisk_io_pread(io, buf, IO_REGION, i * IO_REGION));
                for (size_t k = 0; k < IO_REGION; k++)
                        if (buf[k] != 0x10 + i)
                                FAIL("region %u byte %zu: 0x%02x", i, k, buf[k]);
        }
        vdisk_io_unref(io);
        if (dfd >= 0)
                close(dfd);
        close(fd);
        unlink(path);
        free(buf);
}

/* ---- image accessors from several threads */

static void *comment_reader_main(void *arg) {
        vdisk_image *img = arg;

        for (int i = 0; i < 2000; i++) {
                const char *c = NULL;

                if (vdisk_image_get_comment(img, &c) < 0 || !c || strcmp(c, "shared comment") != 0)
                        return (void *) 1;
                if (vdisk_image_size(img) != SIZE || vdisk_image_index(img) != 0)
                        return (void *) 1;
        }
        return NULL;
}

static void test_image_accessors_concurrent(void) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("commented.vdi", NULL, 0);
        pthread_t t[3];
        void *res;

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        ASSERT_OK(vdisk_image_set_comment(vdisk_disk_image(d, 0), "shared comment"));
        watchdog("comment getters on several threads");
        for (int i = 0; i < 3; i++)
                ASSERT(pthread_create(&t[i], NULL, comment_reader_main, vdisk_disk_image(d, 0)) == 0);
        for (int i = 0; i < 3; i++) {
                pthread_join(t[i], &res);
                ASSERT(res == NULL);
        }
        alarm(0);
        ASSERT_OK(vdisk_disk_close(d));
}

/* Runs every test, or the one named by argv[1] (read, opposite, close, io, comment). */
int main(int argc, char **argv) {
        struct sigaction sa = { .sa_handler = on_alarm };
        const char *only = argc > 1 ? argv[1] : NULL;

        sigaction(SIGALRM, &sa, NULL);
        if (!only || streq(only, "read"))
                test_read_during_copy();
        if (!only || streq(only, "opposite"))
                test_opposite_operations();
        if (!only || streq(only, "close"))
                test_close_reports_flush_error();
        if (!only || streq(only, "io"))
                test_io_concurrent_writes();
        if (!only || streq(only, "comment"))
                test_image_accessors_concurrent();
        return 0;
}
