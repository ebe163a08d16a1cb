/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `crash`: a QED run whose commit fails after it set some entries
 * (lib/backends/qed.c, res_linked).
 *
 * A run of four new clusters whose L2 entries lie on two pages of the table
 * cache (8 KiB clusters, 16-cluster tables: 16384 entries, 8192 to a 64 KiB
 * page; the run is clusters 8190..8193). The test drives the backend's
 * allocate / commit / release itself, as lib/core/rw.c does, so that between
 * the data write and the commit it can push the L2 table out of the QED's
 * table slots (reads of sixteen other L2 tables) and make the reads of its
 * second page fail. Commit then sets the entries of the first page and
 * fails on the second; release must keep the run's space. A second write
 * then allocates, and after a flush and a reopen:
 *   - no two guest clusters share a host cluster,
 *   - every cluster of the run reads old (zeros) or new data, the other
 *     clusters what was written to them,
 *   - our check and `qemu-img check` (when installed) report at most leaks.
 * With release rewinding the allocator under the set entries (the code before
 * res_linked), the second write gets the run's first cluster again.
 */
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "core/core.h"
#include "tests.h"

#define QEMU_IMG "/usr/bin/qemu-img"
#define CLUSTER (8 * KiB)
#define ENTRIES 16384u                          /* 16 clusters of u64 */
#define COVER ((uint64_t) ENTRIES * CLUSTER)    /* 128 MiB per L2 table */
#define TABLES 17u
#define SIZE (TABLES * COVER)
#define RUN_FIRST 8190u                         /* clusters 8190, 8191 | 8192, 8193 */
#define RUN_N 4u
#define SECOND 100u                             /* the cluster the second write allocates */

/* A memory io whose reads of [fail_lo, fail_hi) fail with -EIO while armed
 * (every attempt: io_pread_zerofill reads again after a failure). */
typedef struct flaky {
        vdisk_io *mem;
        uint64_t fail_lo, fail_hi;
        bool armed, fired;
} flaky;

static int flaky_pread(void *user, void *buf, size_t len, uint64_t offset) {
        flaky *f = user;

        if (f->armed && offset < f->fail_hi && offset + len > f->fail_lo) {
                f->fired = true;
                return -EIO;
        }
        return vdisk_io_pread(f->mem, buf, len, offset);
}

static int flaky_pwrite(void *user, const void *buf, size_t len, uint64_t offset) {
        flaky *f = user;

        return vdisk_io_pwrite(f->mem, buf, len, offset);
}

static int flaky_flush(void *user) {
        flaky *f = user;

        return vdisk_io_flush(f->mem);
}

static int flaky_get_size(void *user, uint64_t *ret) {
        flaky *f = user;

        return vdisk_io_get_size(f->mem, ret);
}

static int flaky_truncate(void *user, uint64_t size) {
        flaky *f = user;

        return vdisk_io_truncate(f->mem, size);
}

static const vdisk_io_ops flaky_ops = {
        .size = sizeof flaky_ops,
        .pread = flaky_pread,
        .pwrite = flaky_pwrite,
        .flush = flaky_flush,
        .get_size = flaky_get_size,
        .truncate = flaky_truncate,
};

static uint8_t cluster_fill(uint64_t cl) {
        return (uint8_t) (0x10 + cl % 200);
}

/* A QED with one written cluster at the start of each of its 17 L2 tables. */
static vdisk_io *make_image(void) {
        static const char *const opts[] = { "cluster_size", "8192", "table_size", "16", NULL };
        vdisk_create_opts o = { .size = sizeof o, .options = opts };
        vdisk_io *io = mem_io("linked.qed", NULL, 0);
        vdisk_disk *d = disk_new();
        uint8_t buf[CLUSTER];

        ASSERT_OK(vdisk_disk_create_base(d, io, "qed", SIZE, &o));
        for (uint64_t t = 0; t < TABLES; t++) {
                memset(buf, cluster_fill(t * ENTRIES), sizeof buf);
                ASSERT_OK(vdisk_disk_write(d, buf, CLUSTER, t * COVER));
        }
        ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        return io;
}

static uint64_t l2_table_offset(vdisk_io *io) {
        uint8_t h[64], e[8];
        uint64_t l1 = 0, l2 = 0;

        ASSERT_OK(vdisk_io_pread(io, h, sizeof h, 0));
        for (int i = 7; i >= 0; i--)
                l1 = l1 << 8 | h[40 + i];
        ASSERT_OK(vdisk_io_pread(io, e, sizeof e, l1));
        for (int i = 7; i >= 0; i--)
                l2 = l2 << 8 | e[i];
        ASSERT(l2 != 0);
        return l2;
}

static void run_qemu_check(vdisk_io *io) {
        char path[] = "/tmp/vdisk-qed-linked-XXXXXX.qed";
        const void *data;
        size_t len;
        int fd, status;
        pid_t pid;

        if (access(QEMU_IMG, X_OK) != 0) {
                printf("%s not found: skipping the qemu-img check oracle\n", QEMU_IMG);
                return;
        }
        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        fd = mkstemps(path, 4);
        ASSERT(fd >= 0);
        ASSERT(write(fd, data, len) == (ssize_t) len);
        close(fd);
        pid = fork();
        ASSERT(pid >= 0);
        if (pid == 0) {
                execl(QEMU_IMG, QEMU_IMG, "check", "-f", "qed", path, (char *) NULL);
                _exit(127);
        }
        ASSERT(waitpid(pid, &status, 0) == pid);
        ASSERT(WIFEXITED(status));
        /* 0: clean, 3: leaked clusters only */
        if (WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 3)
                FAIL("qemu-img check -f qed exited with %d (image kept as %s)", WEXITSTATUS(status), path);
        unlink(path);
}

/* Every allocated guest cluster has a host cluster of its own; each reads
 * what it should. */
static void verify(vdisk_io *io, const uint8_t *run_data) {
        vdisk_disk *d = disk_new();
        uint64_t *hosts = NULL, n_hosts = 0, off = 0;
        uint8_t buf[CLUSTER], zero[CLUSTER] = {};

        ASSERT_OK(vdisk_disk_open(d, io, "qed", VDISK_OPEN_READONLY));
        while (off < SIZE) {
                vdisk_extent e;

                ASSERT_OK(vdisk_disk_block_status(d, off, SIZE - off, &e));
                if (e.flags & VDISK_EXTENT_DATA) {
                        ASSERT(e.offset % CLUSTER == 0 && e.length % CLUSTER == 0);
                        /* cluster by cluster: an extent may join clusters stored apart */
                        for (uint64_t c = e.offset; c < e.offset + e.length; c += CLUSTER) {
                                vdisk_extent ce;

                                ASSERT_OK(vdisk_disk_block_status(d, c, CLUSTER, &ce));
                                ASSERT((ce.flags & VDISK_EXTENT_DATA) && ce.host_offset_valid);
                                hosts = realloc(hosts, (n_hosts + 1) * sizeof *hosts);
                                ASSERT(hosts);
                                hosts[n_hosts++] = ce.host_offset;
                        }
                }
                off += e.length;
        }
        for (uint64_t i = 0; i < n_hosts; i++)
                for (uint64_t j = i + 1; j < n_hosts; j++)
                        if (hosts[i] == hosts[j])
                                FAIL("two guest clusters map to host cluster %" PRIu64, hosts[i]);
        free(hosts);

        for (uint64_t t = 0; t < TABLES; t++) {
                ASSERT_OK(vdisk_disk_read(d, buf, CLUSTER, t * COVER));
                for (size_t i = 0; i < CLUSTER; i++)
                        if (buf[i] != cluster_fill(t * ENTRIES))
                                FAIL("cluster %" PRIu64 " reads %#x at %zu", t * ENTRIES, buf[i], i);
        }
        ASSERT_OK(vdisk_disk_read(d, buf, CLUSTER, (uint64_t) SECOND * CLUSTER));
        for (size_t i = 0; i < CLUSTER; i++)
                if (buf[i] != cluster_fill(SECOND))
                        FAIL("cluster %u (the second write) reads %#x at %zu", SECOND, buf[i], i);
        for (unsigned k = 0; k < RUN_N; k++) {
                ASSERT_OK(vdisk_disk_read(d, buf, CLUSTER, (uint64_t) (RUN_FIRST + k) * CLUSTER));
                if (memcmp(buf, zero, CLUSTER) != 0 && memcmp(buf, run_data + k * CLUSTER, CLUSTER) != 0)
                        FAIL("cluster %u of the failed run reads neither zeros nor its data (byte 0: %#x)",
                             RUN_FIRST + k, buf[0]);
        }
        (void) CHECK_IMAGE_CLEAN(d, 0);
        vdisk_disk_unref(d);
}

int main(void) {
        flaky f = { .mem = make_image() };
        uint8_t *run_data = malloc(RUN_N * CLUSTER), buf[CLUSTER];
        vdisk_io *io = NULL;
        vdisk_image *img;
        reservation res = {};
        vdisk_disk *d;
        uint64_t l2;
        int r;

        ASSERT(run_data);
        for (unsigned k = 0; k < RUN_N; k++)
                memset(run_data + k * CLUSTER, 0xa0 + k, CLUSTER);
        l2 = l2_table_offset(f.mem);
        f.fail_lo = l2 + 64 * KiB;      /* the second page of L2 table 0 */
        f.fail_hi = l2 + 128 * KiB;

        ASSERT_OK(vdisk_io_new_ops(&flaky_ops, &f, "linked.qed", 0, &io));
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "qed", 0));
        img = d->images[0];

        /* The run, as rw.c writes it: reserve, write the data, commit. */
        ASSERT_OK(img->be->allocate(img->state, (uint64_t) RUN_FIRST * CLUSTER, RUN_N * CLUSTER, &res));
        ASSERT_EQ_U64(res.unit_offset, (uint64_t) RUN_FIRST * CLUSTER);
        ASSERT_EQ_U64(res.length, RUN_N * CLUSTER);
        ASSERT_OK(vdisk_io_pwrite(io, run_data, RUN_N * CLUSTER, res.host_offset));
        /* Sixteen other L2 tables push table 0 out of the slots: commit
         * reads its pages again, and the second one fails. */
        for (uint64_t t = 1; t < TABLES; t++)
                ASSERT_OK(vdisk_disk_read(d, buf, CLUSTER, t * COVER));
        f.armed = true;
        r = img->be->commit(img->state, &res);
        f.armed = false;
        ASSERT(f.fired);
        if (r != -EIO)
                FAIL("commit returned %d, not -EIO", r);
        img->be->release(img->state, &res);
        /* The case at hand: the first page's entries stay set (their data is written). */
        {
                vdisk_extent e;

                ASSERT_OK(vdisk_disk_block_status(d, (uint64_t) RUN_FIRST * CLUSTER, CLUSTER, &e));
                ASSERT(e.flags & VDISK_EXTENT_DATA);
        }

        /* A second write that allocates, then everything to disk. */
        memset(buf, cluster_fill(SECOND), sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, CLUSTER, (uint64_t) SECOND * CLUSTER));
        ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        vdisk_io_unref(io);

        verify(f.mem, run_data);
        run_qemu_check(f.mem);
        vdisk_io_unref(f.mem);
        free(run_data);
        printf("qed-linked: ok\n");
        return 0;
}
