/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: the fd io on real files, and its direct-write mode.
 *
 * VDISK_IO_DIRECT sends large aligned writes through a second descriptor
 * opened O_DIRECT and everything else through the page cache. Whatever the
 * mix and order of the two kinds, every read (through the io, and through a
 * plain descriptor after it is closed) must return the last bytes written.
 * vdisk_io_set_direct_fd() takes such a descriptor from the caller instead
 * and refuses one without O_DIRECT, of another file, or for a read-only io.
 * Runs in $TMPDIR (or /tmp), and again in /dev/shm: tmpfs refuses O_DIRECT
 * before Linux 6.6, which covers the fallback to the page cache there.
 */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests.h"

#define FILE_SIZE (12 * MiB)

/* Descriptors of this process that carry O_DIRECT (from /proc/self/fdinfo). */
static unsigned count_direct_fds(void) {
        DIR *d = opendir("/proc/self/fdinfo");
        struct dirent *de;
        unsigned n = 0;

        ASSERT(d);
        while ((de = readdir(d))) {
                char path[300], line[256];
                FILE *f;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof path, "/proc/self/fdinfo/%s", de->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                while (fgets(line, sizeof line, f)) {
                        unsigned long flags;

                        if (sscanf(line, "flags: %lo", &flags) == 1 && (flags & O_DIRECT))
                                n++;
                }
                fclose(f);
        }
        closedir(d);
        return n;
}

static uint8_t *aligned_buf(size_t len) {
        void *p = NULL;

        ASSERT(posix_memalign(&p, 4096, len) == 0);
        return p;
}

/* Writes `len` bytes of pattern `seed` at `off` from buf + skew (skew != 0
 * makes the buffer unaligned), into the io and into the model. */
static void put(vdisk_io *io, uint8_t *model, uint8_t *buf, size_t skew, size_t len, uint64_t off,
                uint64_t seed) {
        rng r;

        rng_seed(&r, seed);
        rng_fill(&r, buf + skew, len);
        ASSERT_OK(vdisk_io_pwrite(io, buf + skew, len, off));
        memcpy(model + off, buf + skew, len);
}

static void check_all(vdisk_io *io, const uint8_t *model, uint8_t *back) {
        for (uint64_t off = 0; off < FILE_SIZE; off += MiB) {
                ASSERT_OK(vdisk_io_pread(io, back, MiB, off));
                ASSERT_MEMEQ(back, model + off, MiB);
        }
}

static void run_in(const char *dir, bool want_direct) {
        _cleanup_free_ uint8_t *model = calloc(1, FILE_SIZE), *buf = aligned_buf(4 * MiB + 4096),
                               *back = aligned_buf(MiB);
        char path[512];
        unsigned before;
        vdisk_io *io;
        uint64_t size;
        int fd;

        ASSERT(model && buf && back);
        snprintf(path, sizeof path, "%s/vdisk-io-fd-XXXXXX", dir);
        fd = mkstemp(path);
        if (fd < 0) {
                printf("test-io-fd: cannot create a file in %s (%m), skipped there\n", dir);
                return;
        }
        test_set_context("file %s", path);
        ASSERT(ftruncate(fd, FILE_SIZE) == 0);

        before = count_direct_fds();
        ASSERT_OK(vdisk_io_new_fd(fd, path, VDISK_IO_OWN_FD | VDISK_IO_DIRECT, &io));
        if (want_direct)
                ASSERT(count_direct_fds() == before + 1);
        else
                ASSERT(count_direct_fds() == before);

        /* direct: aligned and large */
        put(io, model, buf, 0, MiB, 0, 1);
        put(io, model, buf, 0, 4 * MiB, 4 * MiB, 2);
        /* page cache: small, unaligned offset or length, unaligned buffer */
        put(io, model, buf, 0, 512, 4096 + 512, 3);
        put(io, model, buf, 0, 128 * KiB + 512, 2 * MiB + 4096, 4);
        put(io, model, buf, 512, MiB, 9 * MiB, 5);
        put(io, model, buf, 0, 4096, 10 * MiB, 6);
        /* a direct write over pages dirty in the cache, and a cached write
         * over data that went direct */
        put(io, model, buf, 0, 256 * KiB, 2 * MiB, 7);
        put(io, model, buf, 0, 1000, 5 * MiB + 77, 8);
        put(io, model, buf, 0, 2 * MiB, 9 * MiB, 9);
        check_all(io, model, back);

        /* extending the file, directly and through the cache */
        ASSERT_OK(vdisk_io_truncate(io, 8 * MiB));
        memset(model + 8 * MiB, 0, FILE_SIZE - 8 * MiB);
        put(io, model, buf, 0, 2 * MiB, 10 * MiB, 11);
        put(io, model, buf, 0, 512, 9 * MiB + 512, 12);
        ASSERT_OK(vdisk_io_get_size(io, &size));
        ASSERT_EQ_U64(size, FILE_SIZE);
        check_all(io, model, back);
        ASSERT_OK(vdisk_io_flush(io));
        vdisk_io_unref(io);
        ASSERT(count_direct_fds() == before);

        /* what a fresh descriptor sees */
        fd = open(path, O_RDONLY | O_CLOEXEC);
        ASSERT(fd >= 0);
        for (uint64_t off = 0; off < FILE_SIZE; off += MiB) {
                ASSERT(pread(fd, back, MiB, (off_t) off) == (ssize_t) MiB);
                ASSERT_MEMEQ(back, model + off, MiB);
        }
        close(fd);

        /* vdisk_io_open_path() with VDISK_PATH_DIRECT, and without */
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_DIRECT, &io));
        ASSERT(count_direct_fds() == before + (want_direct ? 1 : 0));
        put(io, model, buf, 0, MiB, 3 * MiB, 13);
        check_all(io, model, back);
        vdisk_io_unref(io);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE, &io));
        ASSERT(count_direct_fds() == before);
        check_all(io, model, back);
        vdisk_io_unref(io);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_READ | VDISK_PATH_DIRECT, &io));
        ASSERT(count_direct_fds() == before);   /* read-only: nothing to write direct */
        vdisk_io_unref(io);

        /* vdisk_io_set_direct_fd(): the caller brings the O_DIRECT descriptor */
        if (want_direct) {
                char other[512];
                vdisk_io *mem;
                int dfd, plain, ofd;

                ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE, &io));
                dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
                plain = open(path, O_RDWR | O_CLOEXEC);
                snprintf(other, sizeof other, "%s/vdisk-io-other-XXXXXX", dir);
                ofd = mkstemp(other);
                ASSERT(dfd >= 0 && plain >= 0 && ofd >= 0);
                ASSERT(fcntl(ofd, F_SETFL, fcntl(ofd, F_GETFL) | O_DIRECT) == 0);
                ASSERT_ERR(vdisk_io_set_direct_fd(io, plain), -EINVAL);    /* no O_DIRECT */
                ASSERT_ERR(vdisk_io_set_direct_fd(io, ofd), -EBADF);       /* another file */
                ASSERT_ERR(vdisk_io_set_direct_fd(io, -1), -EINVAL);
                ASSERT_OK(vdisk_io_new_memory(NULL, 0, "mem", 0, &mem));
                ASSERT_ERR(vdisk_io_set_direct_fd(mem, dfd), -EINVAL);     /* not an fd io */
                vdisk_io_unref(mem);
                ASSERT(count_direct_fds() == before + 2);   /* dfd and ofd: ours */
                ASSERT_OK(vdisk_io_set_direct_fd(io, dfd));
                ASSERT(count_direct_fds() == before + 3);   /* plus the io's duplicate */
                close(dfd);
                put(io, model, buf, 0, 2 * MiB, 6 * MiB, 14);
                put(io, model, buf, 0, 512, 6 * MiB + 512, 15);
                check_all(io, model, back);
                vdisk_io_unref(io);
                ASSERT(count_direct_fds() == before + 1);   /* ofd */
                ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_READ, &io));
                dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
                ASSERT(dfd >= 0);
                ASSERT_ERR(vdisk_io_set_direct_fd(io, dfd), -EINVAL);      /* read-only io */
                check_all(io, model, back);
                vdisk_io_unref(io);
                close(dfd);
                close(plain);
                close(ofd);
                ASSERT(unlink(other) == 0);
                ASSERT(count_direct_fds() == before);
        }

        ASSERT(unlink(path) == 0);
        test_set_context("%s", "");
        printf("test-io-fd: %s: %s\n", dir, want_direct ? "direct writes" : "page cache only");
}

/* Can this directory's file system do O_DIRECT at all? */
static bool supports_direct(const char *dir) {
        char path[512];
        int fd;

        snprintf(path, sizeof path, "%s/vdisk-io-probe-XXXXXX", dir);
        fd = mkstemp(path);
        if (fd < 0)
                return false;
        close(fd);
        fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
        unlink(path);
        if (fd < 0)
                return false;
        close(fd);
        return true;
}

int main(void) {
        const char *t = getenv("TMPDIR");
        const char *dir = t && t[0] ? t : "/tmp";
        struct stat st;

        run_in(dir, supports_direct(dir));
        if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode))
                run_in("/dev/shm", supports_direct("/dev/shm"));
        printf("test-io-fd: all passed\n");
        return 0;
}
