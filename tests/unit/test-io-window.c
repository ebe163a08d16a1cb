/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: the write-behind window of a fd io's durable page-cache
 * writes (io-fd.c, wb_note_write(); io_fd_window_*() in io.h). Counted
 * through the io's counters, never timed:
 * - Bound: 32 MiB written sequentially in 256 KiB writes with a 1 MiB step
 *   and a 4 MiB window starts writeback of every step and waits for the
 *   spans older than the window, so the bytes written and not waited for
 *   never exceed window + step + one write; the file reads back right.
 * - Scattered 4 KiB writes over 32 MiB (no span grows) are counted and
 *   kicked and waited for as a whole file: still bounded.
 * - Four threads writing their own regions at once (more streams than open
 *   spans): bounded by window + (open spans + 1) x step + the writes in
 *   flight, and every byte right.
 * - No window (window 0) waits for nothing; a VDISK_IO_NOSYNC io (nothing
 *   will be flushed) counts nothing at all.
 * - Errors: a wait that fails (an injected EIO in place of the kernel's)
 *   fails the write that waited, and the next flush once (the kernel would
 *   not report it again), not the flush after; the write again, and the rest
 *   of the file, succeed and read right.
 * Runs in $TMPDIR (or /tmp); any file system (on tmpfs sync_file_range does
 * nothing, the counting is the same).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "io/io.h"
#include "tests.h"

static char dir[4096];

/* The open spans of io-fd.c (WB_OPEN). */
#define N_OPEN 4

static vdisk_io *open_file(const char *name, uint32_t extra) {
        char path[4200];
        vdisk_io *io = NULL;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC | extra,
                                     &io));
        return io;
}

static void fill(uint8_t *p, size_t len, uint64_t seed) {
        for (size_t i = 0; i < len; i++) {
                seed = seed * 6364136223846793005u + 1442695040888963407u;
                p[i] = (uint8_t) (seed >> 56);
        }
}

static void check_content(vdisk_io *io, const uint8_t *model, uint64_t size) {
        _cleanup_free_ uint8_t *back = malloc(size);

        ASSERT(back);
        ASSERT_OK(io_pread(io, back, size, 0));
        ASSERT_MEMEQ(back, model, size);
}

static void test_sequential(void) {
        const uint64_t size = 32 * MiB, step = MiB, window = 4 * MiB, w = 256 * KiB;
        _cleanup_free_ uint8_t *model = malloc(size);
        vdisk_io *io = open_file("seq", 0);
        io_window_stats st;

        ASSERT(model);
        fill(model, size, 1);
        ASSERT_OK(io_fd_window_set(io, step, window));
        for (uint64_t off = 0; off < size; off += w)
                ASSERT_OK(io_pwrite(io, model + off, w, off));
        ASSERT_OK(io_fd_window_stats(io, &st));
        /* Every step was kicked; all but the last window's worth waited for. */
        ASSERT_EQ_U64(st.kicks, size / step);
        ASSERT(st.waits >= (size - window) / step - 1);
        ASSERT(st.waits <= size / step);
        ASSERT(st.max_pending >= window);
        ASSERT(st.max_pending <= window + step + w);
        ASSERT_EQ_U64(st.wait_errors, 0);
        ASSERT_OK(io_flush(io));
        check_content(io, model, size);
        vdisk_io_unref(io);
}

static void test_scattered(void) {
        const uint64_t size = 32 * MiB, step = MiB, window = 4 * MiB;
        _cleanup_free_ uint8_t *model = calloc(1, size);
        vdisk_io *io = open_file("scattered", 0);
        io_window_stats st;
        uint64_t seed = 7;

        ASSERT(model);
        ASSERT_OK(io_truncate(io, size));
        ASSERT_OK(io_fd_window_set(io, step, window));
        for (unsigned i = 0; i < 2048; i++) {   /* 8 MiB in 4 KiB pages all over the file */
                uint64_t off;

                seed = seed * 6364136223846793005u + 1442695040888963407u;
                off = (seed >> 20) % (size / (4 * KiB)) * 4 * KiB;
                fill(model + off, 4 * KiB, seed);
                ASSERT_OK(io_pwrite(io, model + off, 4 * KiB, off));
        }
        ASSERT_OK(io_fd_window_stats(io, &st));
        ASSERT(st.kicks >= 6);
        ASSERT(st.waits >= 2);
        ASSERT(st.max_pending <= window + step + N_OPEN * MiB);
        ASSERT_OK(io_flush(io));
        check_content(io, model, size);
        vdisk_io_unref(io);
}

typedef struct writer {
        vdisk_io *io;
        const uint8_t *model;
        uint64_t lo, hi, w;
} writer;

static void *writer_main(void *u) {
        writer *t = u;

        for (uint64_t off = t->lo; off < t->hi; off += t->w)
                ASSERT_OK(io_pwrite(t->io, t->model + off, t->w, off));
        return NULL;
}

static void test_threads(void) {
        const uint64_t size = 48 * MiB, step = MiB, window = 8 * MiB, w = 128 * KiB;
        const unsigned n = 6;   /* more streams than open spans */
        _cleanup_free_ uint8_t *model = malloc(size);
        vdisk_io *io = open_file("threads", 0);
        pthread_t th[6];
        writer t[6];
        io_window_stats st;

        ASSERT(model);
        fill(model, size, 3);
        ASSERT_OK(io_fd_window_set(io, step, window));
        for (unsigned i = 0; i < n; i++) {
                t[i] = (writer) { .io = io, .model = model, .lo = size / n * i, .hi = size / n * (i + 1), .w = w };
                ASSERT(pthread_create(&th[i], NULL, writer_main, &t[i]) == 0);
        }
        for (unsigned i = 0; i < n; i++)
                ASSERT(pthread_join(th[i], NULL) == 0);
        ASSERT_OK(io_fd_window_stats(io, &st));
        ASSERT(st.waits > 0);
        ASSERT(st.max_pending <= window + (N_OPEN + 1) * step + n * w);
        ASSERT_OK(io_flush(io));
        check_content(io, model, size);
        vdisk_io_unref(io);
}

static void test_off_and_nosync(void) {
        const uint64_t size = 16 * MiB;
        _cleanup_free_ uint8_t *model = malloc(size);
        io_window_stats st;
        vdisk_io *io;

        ASSERT(model);
        fill(model, size, 5);
        io = open_file("off", 0);
        ASSERT_OK(io_fd_window_set(io, MiB, 0));
        for (uint64_t off = 0; off < size; off += MiB)
                ASSERT_OK(io_pwrite(io, model + off, MiB, off));
        ASSERT_OK(io_fd_window_stats(io, &st));
        ASSERT_EQ_U64(st.kicks, size / MiB);   /* a whole-file kick every step, */
        ASSERT_EQ_U64(st.waits, 0);           /* never a wait */
        ASSERT_OK(io_flush(io));
        check_content(io, model, size);
        vdisk_io_unref(io);

        io = open_file("nosync", VDISK_PATH_NOSYNC);
        ASSERT_OK(io_fd_window_set(io, MiB, 2 * MiB));
        for (uint64_t off = 0; off < size; off += MiB)
                ASSERT_OK(io_pwrite(io, model + off, MiB, off));
        ASSERT_OK(io_fd_window_stats(io, &st));
        ASSERT_EQ_U64(st.kicks, 0);
        ASSERT_EQ_U64(st.waits, 0);
        ASSERT_EQ_U64(st.max_pending, 0);
        check_content(io, model, size);
        vdisk_io_unref(io);
}

static void test_error(int err) {
        const uint64_t size = 16 * MiB, step = MiB, window = 4 * MiB, w = 256 * KiB;
        _cleanup_free_ uint8_t *model = malloc(size);
        vdisk_io *io = open_file("error", 0);
        io_window_stats st;
        uint64_t failed = UINT64_MAX;

        ASSERT(model);
        fill(model, size, 9);
        ASSERT_OK(io_fd_window_set(io, step, window));
        ASSERT_OK(io_fd_window_inject(io, 2, err));   /* the third span started from now */
        for (uint64_t off = 0; off < size; off += w) {
                int r = io_pwrite(io, model + off, w, off);

                if (r < 0) {
                        ASSERT(r == err);
                        ASSERT(failed == UINT64_MAX);   /* once */
                        failed = off;
                        /* The span waited for is older than the window. */
                        ASSERT(off >= window + 2 * step);
                        ASSERT_OK(io_pwrite(io, model + off, w, off));   /* again: works */
                }
        }
        ASSERT(failed != UINT64_MAX);
        ASSERT_OK(io_fd_window_stats(io, &st));
        ASSERT_EQ_U64(st.wait_errors, 1);
        ASSERT(io_flush(io) == err);   /* the next flush reports it, once */
        ASSERT_OK(io_flush(io));
        check_content(io, model, size);
        vdisk_io_unref(io);
}

int main(void) {
        const char *tmp = getenv("TMPDIR");
        char cmd[4200];

        snprintf(dir, sizeof dir, "%s/vdisk-io-window.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        ASSERT(mkdtemp(dir));

        test_sequential();
        test_scattered();
        test_threads();
        test_off_and_nosync();
        test_error(-EIO);
        test_error(-ENOSPC);

        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        ASSERT(system(cmd) == 0);
        return 0;
}
