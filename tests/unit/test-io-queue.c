/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: the fd io's write-behind queue (io_queue_begin(), io.h).
 *
 * - Content: a random mix of queued direct writes (aligned, from 128 KiB to
 *   several chunks), small and unaligned writes through the page cache,
 *   reads through the io, size queries and truncation, on one file with the
 *   queue on, reads exactly like an in-memory model at every step, and the
 *   file reads so through a plain descriptor after the queue ends; writes
 *   over writes still in flight leave the last one's bytes.
 * - Errors: a queued write that fails (an injected completion error, in
 *   place of the write) is reported by the next write, by a drain and by a
 *   flush, naming the file, the range and the cause; it stays reported until
 *   the queue ends; after that the range written again reads right.
 * - The core's transaction: a write into a new VDI block whose queued data
 *   write fails fails in that call (the core drains before the table points
 *   at the data), and the disk, and reopened, reads exactly as before the
 *   call; the write again (over that block and others) succeeds.
 * - Merge (commit) queues its writes into the target: a queued write that
 *   fails fails the merge, the chain (and reopened) reads as before and
 *   checks clean, and the merge again succeeds with the same content.
 * - Fallback: with VDISK_IO_URING=0 writes are synchronous (an injected
 *   failure never fires) and the content is the same.
 * - A copy into a raw file and into a VDI file with the queue at depth 1,
 *   2 and 8 and chunks of 128 KiB to 4 MiB gives the source's bytes.
 * - A cancelled copy has ended (drained) its queue when it returns, and the
 *   file holds source data or zeros, page by page; a new copy works.
 * - The write path per output (image_copy_path()): a copy into a format
 *   that appends its blocks (VDI, dynamic VHD, sparse VMDK, qcow2, QED,
 *   QCOW) writes through the page cache and the write-behind window; into
 *   raw and fixed images, and a merge into any target, direct through the
 *   queue. Seen from the io during the copy (io_fd_writes_direct()) and in
 *   its window counters afterwards (cached data is counted, direct is not);
 *   writes are direct again after the copy. With VDISK_IO_DIRECT_WRITES=0 or
 *   1 in the environment (the io-queue-direct-writes-* tests) only these
 *   tests run, and every copy takes the forced path.
 * - A copy into VDI whose window wait fails (an injected EIO) fails, naming
 *   the file; the image left checks clean and reads source data or zeros,
 *   block by block; the copy again gives the source's bytes.
 * Runs in $TMPDIR (or /tmp); skips (77) where O_DIRECT or io_uring is
 * unavailable.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "io/io.h"
#include "tests.h"

#define FILE_SIZE (24 * MiB)

static char dir[4096];

static uint8_t *aligned_buf(size_t len) {
        void *p = NULL;

        ASSERT(posix_memalign(&p, 4096, len) == 0);
        return p;
}

static vdisk_io *open_file_flags(const char *name, uint32_t flags) {
        char path[4200];
        vdisk_io *io = NULL;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_DIRECT | flags, &io));
        return io;
}

static vdisk_io *open_file(const char *name, bool create) {
        return open_file_flags(name, create ? VDISK_PATH_CREATE | VDISK_PATH_TRUNC : 0);
}

static void read_plain(const char *name, uint8_t *buf, size_t len) {
        char path[4200];
        int fd;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        ASSERT(fd >= 0);
        ASSERT(pread(fd, buf, len, 0) == (ssize_t) len);
        close(fd);
}

static void check_io(vdisk_io *io, const uint8_t *model, uint64_t size) {
        _cleanup_free_ uint8_t *back = malloc(size);
        uint64_t s;

        ASSERT(back);
        ASSERT_OK(io_get_size(io, &s));
        ASSERT_EQ_U64(s, size);
        ASSERT_OK(io_pread(io, back, size, 0));
        ASSERT_MEMEQ(back, model, size);
}

/* Random operations with the queue on; returns the final size. */
static uint64_t mix(vdisk_io *io, uint8_t *model, uint64_t size, uint64_t seed, unsigned n_ops) {
        _cleanup_free_ uint8_t *buf = aligned_buf(8 * MiB + 4096), *back = aligned_buf(8 * MiB);
        rng r;

        rng_seed(&r, seed);
        for (unsigned i = 0; i < n_ops; i++) {
                unsigned what = (unsigned) rng_below(&r, 100);
                uint64_t off, len;

                test_set_context("seed %" PRIu64 " op %u", seed, i);
                if (what < 55) {            /* a direct write, queued */
                        len = rng_range(&r, 32, 256) * 4096;   /* 128 KiB .. 1 MiB */
                        off = rng_below(&r, (FILE_SIZE - len) / 4096 + 1) * 4096;
                        rng_fill(&r, buf, len);
                        ASSERT_OK(io_pwrite(io, buf, len, off));
                } else if (what < 75) {     /* small or unaligned: the page cache */
                        len = rng_range(&r, 1, 300000);
                        off = rng_below(&r, FILE_SIZE - len + 1);
                        rng_fill(&r, buf + 1, len);
                        ASSERT_OK(io_pwrite(io, buf + 1, len, off));
                        memcpy(model + off, buf + 1, len);
                        if (off + len > size)
                                size = off + len;
                        continue;
                } else if (what < 95) {     /* a read, maybe of queued data */
                        if (size == 0)
                                continue;
                        off = rng_below(&r, size);
                        len = rng_range(&r, 1, 8 * MiB);   /* not inside MIN(): it evaluates twice */
                        len = MIN(size - off, len);
                        ASSERT_OK(io_pread(io, back, len, off));
                        ASSERT_MEMEQ(back, model + off, len);
                        continue;
                } else if (what < 98) {     /* the size */
                        uint64_t s;

                        ASSERT_OK(io_get_size(io, &s));
                        ASSERT_EQ_U64(s, size);
                        continue;
                } else {                    /* truncate */
                        uint64_t ns = rng_below(&r, FILE_SIZE / 4096 + 1) * 4096;

                        ASSERT_OK(io_truncate(io, ns));
                        if (ns > size)
                                memset(model + size, 0, ns - size);
                        else
                                memset(model + ns, 0, FILE_SIZE - ns);
                        size = ns;
                        continue;
                }
                memcpy(model + off, buf, len);
                if (off + len > size)
                        size = off + len;
        }
        test_set_context("seed %" PRIu64 " end", seed);
        return size;
}

static void test_content(unsigned depth, size_t chunk, uint64_t seed) {
        _cleanup_free_ uint8_t *model = calloc(1, FILE_SIZE), *back = malloc(FILE_SIZE);
        vdisk_io *io = open_file("mix", true);
        uint64_t size;

        ASSERT(model && back);
        ASSERT_OK(io_queue_begin(io, IO_PATH_DIRECT, depth, chunk));
        size = mix(io, model, 0, seed, 250);
        check_io(io, model, size);
        size = mix(io, model, size, seed + 1, 100);
        ASSERT_OK(io_flush(io));
        size = mix(io, model, size, seed + 2, 100);
        ASSERT_OK(io_queue_end(io));
        vdisk_io_unref(io);
        read_plain("mix", back, size);
        ASSERT_MEMEQ(back, model, size);
}

/* Writes over writes still in flight: the last one wins, as without a queue.
 * Without the overlap rule this fails only when the disk happens to complete
 * out of order: it did in one run of two here (and the mix above with
 * writes of up to 8 MiB in one of one); no deterministic check exists. */
static void test_overlap(void) {
        const uint64_t size = 16 * MiB;
        _cleanup_free_ uint8_t *model = calloc(1, size), *buf = aligned_buf(8 * MiB), *back = malloc(size);
        vdisk_io *io = open_file("overlap", true);
        rng r;

        ASSERT(model && back);
        rng_seed(&r, 4);
        /* Allocated first: overwrites are issued at once and may complete
         * in any order (writes that allocate wait in io_uring's workers, one
         * file's one at a time). */
        for (uint64_t off = 0; off < size; off += 4 * MiB) {
                rng_fill(&r, buf, 4 * MiB);
                ASSERT_OK(io_pwrite(io, buf, 4 * MiB, off));
                memcpy(model + off, buf, 4 * MiB);
        }
        ASSERT_OK(io_flush(io));
        ASSERT_OK(io_queue_begin(io, IO_PATH_DIRECT, 8, MiB));
        for (unsigned i = 0; i < 120; i++) {
                uint64_t len = rng_range(&r, 1, 32) * 256 * 1024;   /* up to 8 chunks */
                uint64_t off = rng_below(&r, (size - len) / 4096 + 1) * 4096;

                test_set_context("overlap %u", i);
                rng_fill(&r, buf, len);
                ASSERT_OK(io_pwrite(io, buf, len, off));
                memcpy(model + off, buf, len);
        }
        ASSERT_OK(io_queue_end(io));
        vdisk_io_unref(io);
        read_plain("overlap", back, size);
        ASSERT_MEMEQ(back, model, size);
}

static void test_close_drains(void) {
        _cleanup_free_ uint8_t *buf = aligned_buf(16 * MiB), *back = malloc(16 * MiB);
        vdisk_io *io = open_file("close", true);
        rng r;

        rng_seed(&r, 77);
        rng_fill(&r, buf, 16 * MiB);
        ASSERT_OK(io_queue_begin(io, IO_PATH_DIRECT, 4, MiB));
        ASSERT_OK(io_pwrite(io, buf, 16 * MiB, 0));
        vdisk_io_unref(io);   /* no end, no flush: close waits */
        read_plain("close", back, 16 * MiB);
        ASSERT_MEMEQ(back, buf, 16 * MiB);
}

static void assert_queue_error(int r, const char *file, uint64_t offset) {
        char want[64];

        ASSERT_EQ_U64((uint64_t) -r, EIO);
        snprintf(want, sizeof want, "at offset %" PRIu64 " ", offset);
        ASSERT(strstr(vdisk_last_error(), file));
        if (offset != UINT64_MAX)   /* the host offset of a block: where the format put it */
                ASSERT(strstr(vdisk_last_error(), want));
        ASSERT(strstr(vdisk_last_error(), strerror(EIO)));
}

static void test_error(void) {
        _cleanup_free_ uint8_t *buf = aligned_buf(4 * MiB), *back = aligned_buf(4 * MiB),
                               *before = aligned_buf(4 * MiB);
        vdisk_io *io = open_file("err", true);
        rng r;

        rng_seed(&r, 5);
        rng_fill(&r, before, 4 * MiB);
        ASSERT_OK(io_pwrite(io, before, 4 * MiB, 0));   /* synchronous: no queue yet */
        ASSERT_OK(io_queue_begin(io, IO_PATH_DIRECT, 4, MiB));
        /* The third queued write (the third MiB of this one) fails. */
        ASSERT_OK(io_fd_queue_inject(io, 2, -EIO));
        rng_fill(&r, buf, 4 * MiB);
        (void) io_pwrite(io, buf, 4 * MiB, 0);   /* may see it already, or not yet */
        assert_queue_error(io_drain(io), "err", 2 * MiB);
        /* Sticky: the next write, drain, flush and read say so too. */
        assert_queue_error(io_pwrite(io, buf, MiB, 8 * MiB), "err", 2 * MiB);
        assert_queue_error(io_drain(io), "err", 2 * MiB);
        assert_queue_error(io_flush(io), "err", 2 * MiB);
        assert_queue_error(io_pread(io, back, 4096, 0), "err", 2 * MiB);
        assert_queue_error(io_queue_end(io), "err", 2 * MiB);
        /* The failed range was not written; the others were. */
        ASSERT_OK(io_pread(io, back, 4 * MiB, 0));
        ASSERT_MEMEQ(back, buf, 2 * MiB);
        ASSERT_MEMEQ(back + 2 * MiB, before + 2 * MiB, MiB);
        ASSERT_MEMEQ(back + 3 * MiB, buf + 3 * MiB, MiB);
        /* A retry, queue on again, works. */
        ASSERT_OK(io_queue_begin(io, IO_PATH_DIRECT, 4, MiB));
        ASSERT_OK(io_pwrite(io, buf, 4 * MiB, 0));
        ASSERT_OK(io_queue_end(io));
        ASSERT_OK(io_pread(io, back, 4 * MiB, 0));
        ASSERT_MEMEQ(back, buf, 4 * MiB);
        vdisk_io_unref(io);
}

/* The core drains before a table points at new data. */
static void test_transaction(void) {
        const uint64_t size = 16 * MiB;
        _cleanup_free_ uint8_t *buf = aligned_buf(4 * MiB), *back = aligned_buf(size), *before = aligned_buf(size);
        vdisk_disk *d = disk_new();
        vdisk_io *io = open_file("tx.vdi", true);
        rng r;

        rng_seed(&r, 9);
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", size, NULL));
        rng_fill(&r, buf, MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, MiB, 0));   /* block 0 allocated */
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_disk_read(d, before, size, 0));

        ASSERT_OK(io_queue_begin(io, IO_PATH_DIRECT, 4, MiB));
        ASSERT_OK(io_fd_queue_inject(io, 0, -EIO));
        rng_fill(&r, buf, 4 * MiB);
        /* Block 6 is new: its data is queued, fails, and the call fails
         * before the table points at it. */
        assert_queue_error(vdisk_disk_write(d, buf, MiB, 6 * MiB), "tx.vdi", UINT64_MAX);
        (void) io_queue_end(io);
        ASSERT_OK(vdisk_disk_read(d, back, size, 0));
        ASSERT_MEMEQ(back, before, size);
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(io);

        /* Reopened: the same. */
        io = open_file("tx.vdi", false);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "vdi", 0));
        ASSERT_OK(vdisk_disk_read(d, back, size, 0));
        ASSERT_MEMEQ(back, before, size);
        /* The retry, queued again. */
        ASSERT_OK(io_queue_begin(io, IO_PATH_DIRECT, 4, MiB));
        ASSERT_OK(vdisk_disk_write(d, buf, 4 * MiB, 4 * MiB));   /* blocks 4..7, 6 among them */
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(io_queue_end(io));
        memcpy(before + 4 * MiB, buf, 4 * MiB);
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(io);
        io = open_file("tx.vdi", false);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "vdi", 0));
        ASSERT_OK(vdisk_disk_read(d, back, size, 0));
        ASSERT_MEMEQ(back, before, size);
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(io);
}

/* Merge (commit) writes into its target through the queue; a queued write
 * that fails fails the merge, and the chain, and reopened from its files,
 * reads as before; the target checks clean; the merge again works. */
typedef struct merge_watch {
        vdisk_io *io;
        int calls;
        bool queued;
        bool inject;
} merge_watch;

static void merge_progress(vdisk_progress *p, void *user) {
        merge_watch *w = user;

        (void) p;
        if (w->calls++ > 0)
                return;
        w->queued = atomic_load(&w->io->queued);
        if (w->inject)
                ASSERT_OK(io_fd_queue_inject(w->io, 0, -EIO));
}

static vdisk_disk *open_merge_chain(vdisk_io **bio, vdisk_io **dio) {
        vdisk_disk *d = disk_new();

        *bio = open_file("base.vdi", false);
        *dio = open_file("diff.vdi", false);
        ASSERT_OK(vdisk_disk_open(d, *bio, "vdi", 0));
        ASSERT_OK(vdisk_disk_open(d, *dio, "vdi", 0));
        return d;
}

/* A VDI chain in files base.vdi and diff.vdi of `size` bytes: the base holds
 * blocks 0..7, the diff blocks 4..11 (so a merge writes over allocated
 * blocks of the base and into new ones). */
static vdisk_disk *make_merge_chain(uint64_t size, uint64_t seed, vdisk_io **bio, vdisk_io **dio) {
        _cleanup_free_ uint8_t *buf = aligned_buf(8 * MiB);
        vdisk_disk *d = disk_new();
        rng r;

        *bio = open_file("base.vdi", true);
        *dio = open_file("diff.vdi", true);
        rng_seed(&r, seed);
        ASSERT_OK(vdisk_disk_create_base(d, *bio, "vdi", size, NULL));
        rng_fill(&r, buf, 8 * MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, 8 * MiB, 0));
        ASSERT_OK(vdisk_disk_create_diff(d, *dio, "vdi", NULL));
        rng_fill(&r, buf, 8 * MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, 8 * MiB, 4 * MiB));
        ASSERT_OK(vdisk_disk_flush(d));
        return d;
}

static void test_merge(void) {
        const uint64_t size = 32 * MiB;
        _cleanup_free_ uint8_t *back = aligned_buf(size), *before = aligned_buf(size);
        merge_watch w = {};
        vdisk_progress *p = NULL;
        vdisk_io *bio, *dio;
        vdisk_disk *d;

        test_set_context("merge");
        d = make_merge_chain(size, 21, &bio, &dio);
        ASSERT_OK(vdisk_disk_read(d, before, size, 0));

        /* The first queued write of the merge fails. */
        w.io = bio;
        w.inject = true;
        ASSERT_OK(vdisk_progress_new(merge_progress, &w, &p));
        assert_queue_error(vdisk_merge(d, 1, 0, p, NULL), "base.vdi", UINT64_MAX);
        vdisk_progress_free(p);
        ASSERT(w.calls > 0);
        ASSERT(w.queued);                       /* the merge wrote through the queue */
        ASSERT(!atomic_load(&bio->queued));     /* and ended it */
        ASSERT_EQ_U64(vdisk_disk_count(d), 2);
        ASSERT_OK(vdisk_disk_read(d, back, size, 0));
        ASSERT_MEMEQ(back, before, size);
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(bio);
        vdisk_io_unref(dio);

        d = open_merge_chain(&bio, &dio);
        ASSERT_OK(vdisk_disk_read(d, back, size, 0));
        ASSERT_MEMEQ(back, before, size);
        CHECK_IMAGE_CLEAN(d, 0);
        CHECK_IMAGE_CLEAN(d, 1);

        /* Again, without a failure: the chain reads the same, from the base alone. */
        w = (merge_watch) { .io = bio };
        ASSERT_OK(vdisk_progress_new(merge_progress, &w, &p));
        ASSERT_OK(vdisk_merge(d, 1, 0, p, NULL));
        vdisk_progress_free(p);
        ASSERT(w.queued);
        ASSERT(!atomic_load(&bio->queued));
        ASSERT_EQ_U64(vdisk_disk_count(d), 1);
        ASSERT_OK(vdisk_disk_read(d, back, size, 0));
        ASSERT_MEMEQ(back, before, size);
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(bio);
        vdisk_io_unref(dio);
        d = disk_new();
        bio = open_file("base.vdi", false);
        ASSERT_OK(vdisk_disk_open(d, bio, "vdi", 0));
        ASSERT_OK(vdisk_disk_read(d, back, size, 0));
        ASSERT_MEMEQ(back, before, size);
        CHECK_IMAGE_CLEAN(d, 0);
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(bio);
}

static void test_fallback(void) {
        _cleanup_free_ uint8_t *buf = aligned_buf(4 * MiB), *back = malloc(4 * MiB);
        vdisk_io *io = open_file("sync", true);
        rng r;

        setenv("VDISK_IO_URING", "0", 1);
        rng_seed(&r, 3);
        rng_fill(&r, buf, 4 * MiB);
        if (io_queue_begin(io, IO_PATH_DIRECT, 4, MiB) >= 0)
                ASSERT_OK(io_fd_queue_inject(io, 0, -EIO));   /* never fires: nothing is queued */
        ASSERT_OK(io_pwrite(io, buf, 4 * MiB, 0));
        ASSERT_OK(io_queue_end(io));
        vdisk_io_unref(io);
        read_plain("sync", back, 4 * MiB);
        ASSERT_MEMEQ(back, buf, 4 * MiB);
        unsetenv("VDISK_IO_URING");
}

static void test_copy(const char *format, const char *depth, const char *chunk) {
        const uint64_t size = 40 * MiB;
        _cleanup_free_ uint8_t *data = calloc(1, size), *back = malloc(size);
        vdisk_disk *src = disk_new(), *dst = disk_new(), *chk;
        vdisk_io *sio, *dio;
        rng r;

        test_set_context("copy to %s, depth %s, chunk %s", format, depth, chunk);
        ASSERT(data && back);
        rng_seed(&r, 11);
        /* 1 MiB extents of data, some half-filled, between holes. */
        for (uint64_t off = 0; off < size; off += MiB)
                if (rng_chance(&r, 60))
                        rng_fill(&r, data + off, rng_chance(&r, 30) ? MiB / 2 : MiB);
        sio = mem_io("src", data, size);
        ASSERT_OK(vdisk_disk_open(src, sio, "raw", 0));
        setenv("VDISK_IO_QUEUE_DEPTH", depth, 1);
        setenv("VDISK_IO_QUEUE_CHUNK", chunk, 1);
        dio = open_file("copy", true);
        ASSERT_OK(vdisk_copy(src, dst, dio, format, NULL, NULL));
        unsetenv("VDISK_IO_QUEUE_DEPTH");
        unsetenv("VDISK_IO_QUEUE_CHUNK");
        ASSERT_OK(vdisk_disk_close(dst));
        vdisk_io_unref(dio);
        dio = open_file("copy", false);
        chk = disk_new();
        ASSERT_OK(vdisk_disk_open(chk, dio, format, 0));
        ASSERT_OK(vdisk_disk_read(chk, back, size, 0));
        ASSERT_MEMEQ(back, data, size);
        ASSERT_OK(vdisk_disk_close(chk));
        ASSERT_OK(vdisk_disk_close(src));
        vdisk_io_unref(dio);
        vdisk_io_unref(sio);
}

static void cancel_early(vdisk_progress *p, void *user) {
        (void) user;
        if (vdisk_progress_done(p) > 0 && vdisk_progress_done(p) < vdisk_progress_total(p))
                vdisk_progress_cancel(p);
}

/* A cancelled copy ends its queue (drained: nothing lands after it returns);
 * what it wrote is source data or zeros, page by page; a new copy works. */
static void test_cancel(void) {
        const uint64_t size = 40 * MiB;
        _cleanup_free_ uint8_t *data = malloc(size), *back = malloc(size);
        vdisk_disk *src = disk_new(), *dst = disk_new();
        vdisk_progress *p = NULL;
        vdisk_io *sio, *dio;
        rng r;
        int k;

        test_set_context("cancel");
        ASSERT(data && back);
        rng_seed(&r, 12);
        rng_fill(&r, data, size);
        sio = mem_io("src", data, size);
        ASSERT_OK(vdisk_disk_open(src, sio, "raw", 0));
        ASSERT_OK(vdisk_progress_new(cancel_early, NULL, &p));
        dio = open_file("cancel", true);
        k = vdisk_copy(src, dst, dio, "raw", NULL, p);
        ASSERT(k < 0);
        ASSERT(vdisk_progress_cancelled(p));
        ASSERT(!atomic_load(&dio->queued));
        ASSERT(io_fd_queue_inject(dio, 0, -EIO) == -EOPNOTSUPP);   /* the queue is gone */
        read_plain("cancel", back, size);
        for (uint64_t off = 0; off < size; off += 4096)
                ASSERT(memcmp(back + off, data + off, 4096) == 0 || buf_is_zero(back + off, 4096));
        vdisk_progress_free(p);
        ASSERT_OK(vdisk_disk_close(dst));
        vdisk_io_unref(dio);

        dst = disk_new();
        dio = open_file("cancel", true);
        ASSERT_OK(vdisk_copy(src, dst, dio, "raw", NULL, NULL));
        ASSERT_OK(vdisk_disk_close(dst));
        vdisk_io_unref(dio);
        read_plain("cancel", back, size);
        ASSERT_MEMEQ(back, data, size);
        ASSERT_OK(vdisk_disk_close(src));
        vdisk_io_unref(sio);
}

/* The path each output format's copy takes, as the core chooses it. */
static void test_path_policy(void) {
        static const char *const vpc_fixed[] = { "subformat", "fixed", NULL };
        static const struct {
                const char *format;
                uint32_t image_flags;
                const char *const *options;
                io_path want;
        } cases[] = {
                { "raw",   0,                       NULL,      IO_PATH_DIRECT },
                { "vdi",   0,                       NULL,      IO_PATH_CACHED },
                { "vdi",   VDISK_IMAGE_FLAGS_FIXED, NULL,      IO_PATH_DIRECT },
                { "vpc",   0,                       NULL,      IO_PATH_CACHED },
                { "vpc",   0,                       vpc_fixed, IO_PATH_DIRECT },
                { "vmdk",  0,                       NULL,      IO_PATH_CACHED },
                { "qcow2", 0,                       NULL,      IO_PATH_CACHED },
                { "qed",   0,                       NULL,      IO_PATH_CACHED },
                { "qcow",  0,                       NULL,      IO_PATH_CACHED },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                vdisk_create_opts o = { .size = sizeof o, .image_flags = cases[i].image_flags,
                                        .options = cases[i].options };
                vdisk_disk *d = disk_new();
                vdisk_io *io = mem_io("policy", NULL, 0);

                test_set_context("path of %s #%zu", cases[i].format, i);
                ASSERT_OK(vdisk_disk_create_base(d, io, cases[i].format, 16 * MiB, &o));
                ASSERT_EQ_U64(image_copy_path(d->images[0]), cases[i].want);
                ASSERT_OK(vdisk_disk_close(d));
                vdisk_io_unref(io);
        }
}

/* VDISK_IO_DIRECT_WRITES: -1 unset, else the path it forces (0 cached, 1 direct). */
static int forced_direct(void) {
        const char *e = getenv("VDISK_IO_DIRECT_WRITES");

        return e && (streq(e, "0") || streq(e, "1")) ? e[0] == '1' : -1;
}

/* VDISK_IO_CACHED_LIMIT in bytes (how much of a copy the page cache takes
 * before it goes direct), 0 unset. */
static uint64_t cached_limit(void) {
        const char *e = getenv("VDISK_IO_CACHED_LIMIT");

        return e ? strtoull(e, NULL, 10) * MiB : 0;
}

typedef struct path_watch {
        vdisk_io *io;
        int calls;
        int direct;     /* io_fd_writes_direct() during the operation */
} path_watch;

static void path_progress(vdisk_progress *p, void *user) {
        path_watch *w = user;

        (void) p;
        if (w->calls++ == 0)
                w->direct = io_fd_writes_direct(w->io);
}

/* 40 MiB: 1 MiB extents of data, some half-filled, between holes. */
static vdisk_disk *open_source(uint8_t *data, uint64_t size, vdisk_io **ret_io) {
        vdisk_disk *src = disk_new();
        rng r;

        rng_seed(&r, 11);
        for (uint64_t off = 0; off < size; off += MiB)
                if (rng_chance(&r, 60))
                        rng_fill(&r, data + off, rng_chance(&r, 30) ? MiB / 2 : MiB);
        *ret_io = mem_io("src", data, size);
        ASSERT_OK(vdisk_disk_open(src, *ret_io, "raw", 0));
        return src;
}

static void check_copy(const char *name, const char *format, const uint8_t *data, uint64_t size) {
        _cleanup_free_ uint8_t *back = malloc(size);
        vdisk_disk *chk = disk_new();
        vdisk_io *io = open_file(name, false);

        ASSERT(back);
        ASSERT_OK(vdisk_disk_open(chk, io, format, 0));
        ASSERT_OK(vdisk_disk_read(chk, back, size, 0));
        ASSERT_MEMEQ(back, data, size);
        if (!streq(format, "raw"))
                CHECK_IMAGE_CLEAN(chk, 0);
        ASSERT_OK(vdisk_disk_close(chk));
        vdisk_io_unref(io);
}

/* The output as vdiskd builds it for Copy `direct-only`: a fd io with
 * VDISK_IO_DIRECT_ONLY, given its O_DIRECT twin afterwards. */
static vdisk_io *open_fd_direct_only(const char *name) {
        char path[4200];
        vdisk_io *io = NULL;
        int fd, dfd;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ASSERT(fd >= 0);
        ASSERT_OK(vdisk_io_new_fd(fd, name, VDISK_IO_OWN_FD | VDISK_IO_DIRECT_ONLY, &io));
        dfd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
        ASSERT(dfd >= 0);
        ASSERT_OK(vdisk_io_set_direct_fd(io, dfd));
        close(dfd);
        return io;
}

/* direct_only: the output opened as for -t none (VDISK_PATH_DIRECT_ONLY;
 * 2: as vdiskd builds it, open_fd_direct_only()), which keeps every
 * format's copy direct. */
static void test_copy_path(const char *format, bool want_direct, int direct_only) {
        const uint64_t size = 40 * MiB;
        _cleanup_free_ uint8_t *data = calloc(1, size);
        vdisk_disk *dst = disk_new(), *src;
        vdisk_progress *p = NULL;
        io_window_stats st;
        path_watch w = {};
        int outside = forced_direct() >= 0 ? forced_direct() : 1;   /* direct outside a queue */
        vdisk_io *sio, *dio;

        test_set_context("copy path to %s%s", format, direct_only ? ", direct only" : "");
        ASSERT(data);
        src = open_source(data, size, &sio);
        if (forced_direct() >= 0)
                want_direct = forced_direct();
        dio = direct_only == 2 ? open_fd_direct_only("path")
                               : open_file_flags("path", VDISK_PATH_CREATE | VDISK_PATH_TRUNC |
                                                                 (direct_only ? VDISK_PATH_DIRECT_ONLY : 0));
        ASSERT_EQ_U64(io_fd_writes_direct(dio), outside);
        /* A window larger than the copy: every cached byte stays counted. */
        ASSERT_OK(io_fd_window_set(dio, MiB, 64 * MiB));
        w.io = dio;
        ASSERT_OK(vdisk_progress_new(path_progress, &w, &p));
        ASSERT_OK(vdisk_copy(src, dst, dio, format, NULL, p));
        vdisk_progress_free(p);
        ASSERT(w.calls > 0);
        ASSERT_EQ_U64(w.direct, want_direct);
        ASSERT_EQ_U64(io_fd_writes_direct(dio), outside);   /* as before the copy again */
        ASSERT_OK(io_fd_window_stats(dio, &st));
        if (!want_direct && cached_limit() > 0 && streq(format, "vdi")) {
                /* The page cache's share of the ~24 MiB of blocks, then
                 * direct: VDI's blocks are large and aligned (a dynamic
                 * VHD's are not: all cached). */
                ASSERT(st.max_pending >= cached_limit() / 2);
                ASSERT(st.max_pending < cached_limit() + 2 * MiB);
        }
        if (want_direct && (streq(format, "raw") || direct_only))
                ASSERT(st.max_pending < MiB);          /* no data went through the cache */
        else if (!want_direct && cached_limit() == 0)
                ASSERT(st.max_pending >= 8 * MiB);     /* the data */
        ASSERT_EQ_U64(st.wait_errors, 0);
        ASSERT_OK(vdisk_disk_close(dst));
        vdisk_io_unref(dio);
        check_copy("path", format, data, size);
        ASSERT_OK(vdisk_disk_close(src));
        vdisk_io_unref(sio);
}

/* Merge writes its target direct, whatever the format (a VDI here). */
static void test_merge_path(void) {
        vdisk_progress *p = NULL;
        path_watch w = {};
        vdisk_io *bio, *dio;
        vdisk_disk *d;

        test_set_context("merge path");
        d = make_merge_chain(16 * MiB, 31, &bio, &dio);
        w.io = bio;
        ASSERT_OK(vdisk_progress_new(path_progress, &w, &p));
        ASSERT_OK(vdisk_merge(d, 1, 0, p, NULL));
        vdisk_progress_free(p);
        ASSERT(w.calls > 0);
        ASSERT_EQ_U64(w.direct, forced_direct() >= 0 ? forced_direct() : 1);
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(bio);
        vdisk_io_unref(dio);
}

/* Once the copy runs (the queue exists): its 4th direct write fails. */
static void inject_progress(vdisk_progress *p, void *user) {
        path_watch *w = user;

        (void) p;
        if (w->calls++ == 0)
                ASSERT_OK(io_fd_queue_inject(w->io, 3, -EIO));
}

/* A copy into VDI writes through the window, and with VDISK_IO_CACHED_LIMIT
 * past its share direct through the queue: a failed wait, or a failed queued
 * write, fails the copy; what is left is a valid image holding source data
 * or zeros per block, and the copy again works. */
static void test_copy_window_error(void) {
        const uint64_t size = 40 * MiB;
        _cleanup_free_ uint8_t *data = calloc(1, size), *back = malloc(size);
        vdisk_disk *dst = disk_new(), *src, *chk;
        vdisk_progress *p = NULL;
        path_watch w = {};
        vdisk_io *sio, *dio;
        int k;

        test_set_context("copy %s error", cached_limit() > 0 ? "queue" : "window");
        ASSERT(data && back);
        src = open_source(data, size, &sio);
        dio = open_file("werr.vdi", true);
        ASSERT_OK(io_fd_window_set(dio, MiB, 2 * MiB));
        if (cached_limit() > 0) {
                w.io = dio;
                ASSERT_OK(vdisk_progress_new(inject_progress, &w, &p));
        } else
                ASSERT_OK(io_fd_window_inject(dio, 3, -EIO));
        k = vdisk_copy(src, dst, dio, "vdi", NULL, p);
        vdisk_progress_free(p);
        ASSERT_EQ_U64((uint64_t) -k, EIO);
        ASSERT(strstr(vdisk_last_error(), "werr.vdi"));
        ASSERT(strstr(vdisk_last_error(), strerror(EIO)));
        (void) vdisk_disk_close(dst);
        vdisk_io_unref(dio);

        dio = open_file("werr.vdi", false);
        chk = disk_new();
        ASSERT_OK(vdisk_disk_open(chk, dio, "vdi", 0));
        CHECK_IMAGE_CLEAN(chk, 0);
        ASSERT_OK(vdisk_disk_read(chk, back, size, 0));
        for (uint64_t off = 0; off < size; off += MiB)
                ASSERT(memcmp(back + off, data + off, MiB) == 0 || buf_is_zero(back + off, MiB));
        ASSERT(memcmp(back, data, size) != 0);   /* the copy stopped short */
        ASSERT_OK(vdisk_disk_close(chk));
        vdisk_io_unref(dio);

        dst = disk_new();
        dio = open_file("werr.vdi", true);
        ASSERT_OK(io_fd_window_set(dio, MiB, 2 * MiB));
        ASSERT_OK(vdisk_copy(src, dst, dio, "vdi", NULL, NULL));
        ASSERT_OK(vdisk_disk_close(dst));
        vdisk_io_unref(dio);
        check_copy("werr.vdi", "vdi", data, size);
        ASSERT_OK(vdisk_disk_close(src));
        vdisk_io_unref(sio);
}

int main(void) {
        const char *tmp = getenv("TMPDIR");
        vdisk_io *io;
        int r;

        snprintf(dir, sizeof dir, "%s/vdisk-io-queue.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        ASSERT(mkdtemp(dir));
        /* Direct writes and io_uring (with a forced path: direct writes),
         * or skip. */
        io = open_file("probe", true);
        r = forced_direct() >= 0 ? (io_fd_writes_direct(io) == forced_direct() ? 1 : -EOPNOTSUPP) :
                                   io_queue_begin(io, IO_PATH_DIRECT, 1, MiB);
        if (r == 0) {
                _cleanup_free_ uint8_t *buf = aligned_buf(MiB);

                memset(buf, 1, MiB);
                ASSERT_OK(io_fd_queue_inject(io, 0, -ENOSPC));
                ASSERT_OK(io_pwrite(io, buf, MiB, 0));
                r = io_drain(io) == -ENOSPC ? 0 : -EOPNOTSUPP;   /* not queued: no io_uring */
                (void) io_queue_end(io);
        }
        vdisk_io_unref(io);
        if (r < 0) {
                char cmd[4200];

                fprintf(stderr, "no O_DIRECT or no io_uring in %s: skipped\n", dir);
                snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
                (void) system(cmd);
                return EXIT_TEST_SKIP;
        }

        test_path_policy();
        test_copy_path("raw", true, 0);
        test_copy_path("vdi", false, 0);
        test_copy_path("vpc", false, 0);
        test_copy_path("vdi", true, 1);
        test_copy_path("vdi", true, 2);
        test_copy_path("qcow2", true, 1);      /* 64 KiB clusters */
        test_copy_path("vmdk", true, 2);       /* 64 KiB grains */
        test_merge_path();
        if (forced_direct() >= 0)
                goto done;
        test_copy_window_error();
        if (cached_limit() > 0)
                goto done;
        test_content(8, MiB, 1);
        test_content(1, 512 * 1024, 10);
        test_content(3, 4 * MiB, 20);
        test_overlap();
        test_close_drains();
        test_error();
        test_transaction();
        test_merge();
        test_fallback();
        test_copy("raw", "1", "128k");
        test_copy("raw", "8", "1m");
        test_copy("vdi", "2", "4m");
        test_copy("vpc", "8", "1m");
        test_cancel();
done:
        {
                char cmd[4200];

                snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
                ASSERT(system(cmd) == 0);
        }
        return 0;
}
