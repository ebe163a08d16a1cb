/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The per-disk metadata budget, end to end through the public API:
 *
 *  1. A 16-deep chain of crafted sparse VDIs, each claiming a 16 TiB disk
 *     with a 64 MiB block map that is a hole in the file, linked by UUID and
 *     opened with vdisk_disk_open_chain() and the path resolver (read-only,
 *     and with a writable top), then every image's block count asked for:
 *     run in a child process whose peak RSS (ru_maxrss) must stay under
 *     256 MiB, and the disk's metadata peak within its 64 MiB budget. Before
 *     the table cache this cost over 1 GiB.
 *  2. A legitimate chain of 8 VDIs of 16 TiB each (1 MiB blocks: 64 MiB maps,
 *     the files sparse except their maps; ~520 MiB of $TMPDIR, skipped when
 *     there is less) with scattered 4 KiB writes at every level, read back
 *     through the chain with the budget at 64 MiB: every written range holds
 *     the newest level's bytes, sampled other offsets read zeros, the block
 *     counts match, the peak stays within the budget and pages were evicted.
 */
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests.h"
#include "vdi-layout.h"

#if defined(__SANITIZE_ADDRESS__)
#  define SANITIZED 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define SANITIZED 1
#  endif
#endif
#ifndef SANITIZED
#  define SANITIZED 0
#endif

#define TiB (UINT64_C(1) << 40)
#define DISK_SIZE (16 * TiB)
#define BLOCK (1 * MiB)
#define N_BLOCKS ((uint32_t) (DISK_SIZE / BLOCK))
#define BUDGET (64 * MiB)

static char dir[4096];

static void make_dir(const char *name) {
        const char *tmp = getenv("TMPDIR");

        snprintf(dir, sizeof dir, "%s/vdisk-%s-XXXXXX", tmp && tmp[0] ? tmp : "/tmp", name);
        ASSERT(mkdtemp(dir));
}

static void remove_dir(void) {
        char cmd[4200];

        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        ASSERT(system(cmd) == 0);
}

static void uuid_of(unsigned level, uint8_t u[16]) {
        memset(u, 0, 16);
        u[0] = 0x5a;
        u[1] = (uint8_t) level;
        u[15] = 0xa5;
}

/* ---------------------------------------------------------------- 1. crafted */

static void craft(unsigned level) {
        uint8_t h[512] = {}, u[16];
        char path[4200];
        int fd;

        memcpy(h, "<<< crafted sparse VDI >>>\n", 27);
        vdi_put32(h, VDI_OFF_SIGNATURE, VDI_SIGNATURE);
        vdi_put32(h, VDI_OFF_VERSION, VDI_VERSION_1_1);
        vdi_put32(h, VDI_OFF_HEADER_SIZE, 400);
        vdi_put32(h, VDI_OFF_TYPE, level == 0 ? VDI_TYPE_NORMAL : VDI_TYPE_DIFF);
        vdi_put32(h, VDI_OFF_BLOCKS_OFFSET, 512);
        vdi_put32(h, VDI_OFF_DATA_OFFSET, (uint32_t) (65 * MiB));
        vdi_put32(h, VDI_OFF_SECTOR_SIZE, 512);
        vdi_put64(h, VDI_OFF_DISK_SIZE, DISK_SIZE);
        vdi_put32(h, VDI_OFF_BLOCK_SIZE, BLOCK);
        vdi_put32(h, VDI_OFF_BLOCKS, N_BLOCKS);
        uuid_of(level, u);
        memcpy(h + VDI_OFF_UUID_CREATE, u, 16);
        if (level > 0) {
                uuid_of(level - 1, u);
                memcpy(h + VDI_OFF_UUID_LINKAGE, u, 16);
        }
        snprintf(path, sizeof path, "%s/c%02u.vdi", dir, level);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        ASSERT(fd >= 0);
        ASSERT(pwrite(fd, h, sizeof h, 0) == (ssize_t) sizeof h);
        /* The map and everything after it: a hole. */
        ASSERT(ftruncate(fd, (off_t) (65 * MiB)) == 0);
        close(fd);
}

/* In the child: opens the chain and counts every image's blocks. */
static int crafted_child(int writable) {
        vdisk_metadata_stats st = { .size = sizeof st };
        vdisk_image_info info = { .size = sizeof info };
        vdisk_resolver *res;
        vdisk_disk *d;
        vdisk_io *top;
        char path[4200];

        snprintf(path, sizeof path, "%s/c15.vdi", dir);
        ASSERT_OK(vdisk_io_open_path(path, writable ? VDISK_PATH_WRITE : VDISK_PATH_READ, &top));
        ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_OK(vdisk_disk_open_chain(d, res, top, "vdi", writable ? 0 : VDISK_OPEN_READONLY));
        ASSERT_EQ_U64(vdisk_disk_count(d), 16);
        for (unsigned i = 0; i < 16; i++) {
                ASSERT_OK(vdisk_image_get_info(vdisk_disk_image(d, i), &info));
                /* Every entry of a hole map is slot 0: one valid block. */
                ASSERT_EQ_U64(info.blocks_total, N_BLOCKS);
                ASSERT_EQ_U64(info.blocks_allocated, 1);
        }
        ASSERT_OK(vdisk_disk_get_metadata_stats(d, &st));
        ASSERT_EQ_U64(st.budget, BUDGET);
        if (st.peak > BUDGET)
                FAIL("metadata peak %" PRIu64 " above the budget", st.peak);
        ASSERT(st.evictions > 0);
        printf("crafted chain (%s): metadata peak %" PRIu64 " KiB, %" PRIu64 " misses, %" PRIu64 " evictions\n",
               writable ? "writable top" : "read-only", st.peak >> 10, st.misses, st.evictions);
        vdisk_disk_unref(d);
        vdisk_resolver_free(res);
        vdisk_io_unref(top);
        return 0;
}

static void test_crafted_chain(void) {
        make_dir("crafted");
        for (unsigned i = 0; i < 16; i++)
                craft(i);
        for (int writable = 0; writable <= 1; writable++) {
                struct rusage ru;
                int status;
                pid_t pid;

                fflush(stdout);
                pid = fork();
                ASSERT(pid >= 0);
                if (pid == 0)
                        _exit((crafted_child(writable), fflush(stdout), 0));
                ASSERT(wait4(pid, &status, 0, &ru) == pid);
                ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
                printf("crafted chain (%s): peak RSS %ld KiB\n", writable ? "writable top" : "read-only",
                       ru.ru_maxrss);
                /* ASan's quarantine keeps freed buffers resident: RSS says
                 * nothing there (the metadata peak, checked in the child, does). */
                if (!SANITIZED && (uint64_t) ru.ru_maxrss * 1024 >= 256 * MiB)
                        FAIL("peak RSS %ld KiB opening 16 crafted images", ru.ru_maxrss);
        }
        remove_dir();
}

/* ---------------------------------------------------------------- 2. legitimate */

#define LEVELS 8
#define WRITES 24   /* per level */

typedef struct wr {
        uint64_t offset;
        unsigned level;
} wr;

static wr writes[LEVELS * WRITES];
static size_t n_writes;

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint64_t next_rand(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static void fill(uint8_t *buf, uint64_t offset, unsigned level) {
        for (size_t i = 0; i < 4096; i++)
                buf[i] = (uint8_t) (offset / 4096 * 31 + level * 7 + i);
}

/* The newest level that wrote the 4 KiB at `offset`, or -1. */
static int newest(uint64_t offset) {
        int lv = -1;

        for (size_t i = 0; i < n_writes; i++)
                if (writes[i].offset == offset && (int) writes[i].level > lv)
                        lv = (int) writes[i].level;
        return lv;
}

static void test_big_chain(void) {
        vdisk_metadata_stats st = { .size = sizeof st };
        vdisk_image_info info = { .size = sizeof info };
        uint8_t buf[4096], want[4096], zero[4096] = {};
        struct statvfs sv;
        vdisk_resolver *res;
        vdisk_disk *d;
        vdisk_io *io;
        char path[4200];

        make_dir("big");
        ASSERT(statvfs(dir, &sv) == 0);
        if ((uint64_t) sv.f_bavail * sv.f_frsize < 600 * MiB) {
                printf("SKIP: less than 600 MiB free in %s\n", dir);
                remove_dir();
                exit(EXIT_TEST_SKIP);
        }

        ASSERT_OK(vdisk_disk_new(&d));
        for (unsigned lv = 0; lv < LEVELS; lv++) {
                snprintf(path, sizeof path, "%s/l%u.vdi", dir, lv);
                ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_NOSYNC, &io));
                if (lv == 0)
                        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", DISK_SIZE, NULL));
                else
                        ASSERT_OK(vdisk_disk_create_diff(d, io, "vdi", NULL));
                vdisk_io_unref(io);
                for (unsigned k = 0; k < WRITES; k++) {
                        /* Some offsets again from lower levels: overwrites. */
                        uint64_t off = k % 4 == 0 && n_writes > 0 ? writes[next_rand() % n_writes].offset :
                                       next_rand() % (DISK_SIZE / 4096) * 4096;

                        fill(buf, off, lv);
                        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, off));
                        writes[n_writes++] = (wr) { off, lv };
                }
                ASSERT_OK(vdisk_disk_flush(d));
        }
        vdisk_disk_unref(d);

        /* Reopen through the resolver, read-only, budget 64 MiB (the default,
         * set explicitly). */
        snprintf(path, sizeof path, "%s/l%u.vdi", dir, LEVELS - 1);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_READ, &io));
        ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_ERR(vdisk_disk_set_metadata_budget(d, 4096), -EINVAL);
        ASSERT_OK(vdisk_disk_set_metadata_budget(d, BUDGET));
        ASSERT_OK(vdisk_disk_open_chain(d, res, io, "vdi", VDISK_OPEN_READONLY));
        ASSERT_EQ_U64(vdisk_disk_count(d), LEVELS);

        for (size_t i = 0; i < n_writes; i++) {
                uint64_t off = writes[i].offset;

                ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, off));
                fill(want, off, (unsigned) newest(off));
                if (memcmp(buf, want, sizeof buf) != 0)
                        FAIL("4 KiB at %" PRIu64 ": not level %d's data", off, newest(off));
        }
        for (unsigned k = 0; k < 400; k++) {
                uint64_t off = next_rand() % (DISK_SIZE / 4096) * 4096;

                if (newest(off) >= 0)
                        continue;
                ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, off));
                ASSERT_MEMEQ(buf, zero, sizeof buf);
        }
        /* Counting every level's blocks streams all eight 64 MiB maps. */
        for (unsigned lv = 0; lv < LEVELS; lv++) {
                uint64_t blocks = 0;

                for (size_t i = 0; i < n_writes; i++) {
                        bool seen = false;

                        if (writes[i].level != lv)
                                continue;
                        for (size_t j = 0; j < i && !seen; j++)
                                seen = writes[j].level == lv && writes[j].offset / BLOCK == writes[i].offset / BLOCK;
                        blocks += !seen;
                }
                ASSERT_OK(vdisk_image_get_info(vdisk_disk_image(d, lv), &info));
                ASSERT_EQ_U64(info.blocks_total, N_BLOCKS);
                ASSERT_EQ_U64(info.blocks_allocated, blocks);
        }
        /* Reads still right after all that traffic. */
        for (size_t i = 0; i < n_writes; i += 7) {
                uint64_t off = writes[i].offset;

                ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, off));
                fill(want, off, (unsigned) newest(off));
                ASSERT_MEMEQ(buf, want, sizeof buf);
        }

        ASSERT_OK(vdisk_disk_get_metadata_stats(d, &st));
        printf("8 x 16 TiB chain: metadata peak %" PRIu64 " KiB of %" PRIu64 " KiB, %" PRIu64 " hits, %" PRIu64
               " misses, %" PRIu64 " evictions\n", st.peak >> 10, st.budget >> 10, st.hits, st.misses,
               st.evictions);
        if (st.peak > BUDGET)
                FAIL("metadata peak %" PRIu64 " above the budget", st.peak);
        ASSERT(st.evictions > 0);
        ASSERT(st.held <= BUDGET);
        vdisk_disk_unref(d);
        vdisk_resolver_free(res);
        vdisk_io_unref(io);
        remove_dir();
}

int main(void) {
        /* First, while this process is small: the child's RSS is measured. */
        test_crafted_chain();
        test_big_chain();
        printf("ok\n");
        return 0;
}
