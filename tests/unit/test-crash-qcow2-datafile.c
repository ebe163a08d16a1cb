/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `crash`: compact of a qcow2 image with an external data file
 * (lib/backends/qcow2-space.c, compact_scan). Clusters that read as what
 * shows through are unallocated in L2 and their ranges punched out of the
 * data file, only once the tables without them are durable; the image
 * file's tables move down and the file is cut.
 *
 * Images (4 KiB clusters: an L2 table maps 2 MiB; memory companions through
 * a resolver): standalone, with zeros written as data over the whole range
 * of one L2 table (dropped, so a later table moves down) and over part of
 * another; and a diff over a raw base with the base's data written again
 * (one range inside a table that keeps other data, so that its L2 table is
 * written in place, not dropped; the whole range of another). For each, for
 * every N:
 *   - POWER_CUT of the image file after N writes, the data file a plain
 *     memory io (every punch lands at once: a punch before the L2 entry
 *     that dropped the cluster is durable would read as zeros); and
 *     POWER_CUT of the data file after N writes (punches count), the image
 *     file plain. Crash images for several seeds (seed 0: unflushed writes
 *     lost; others a random subset, torn at 512 bytes) open, read as before
 *     and pass vdisk_check with no corruption (leaks allowed);
 *   - EIO at write N of either file, once: the disk reads as before, a
 *     second compact succeeds and reads the same.
 * After a compact that succeeds, the diff's data file reads zeros where the
 * base's data was written again (punched).
 */
#include "tests.h"

#define SIZE (8 * MiB)
#define SEEDS 4u

static test_chain_files g_files;
static vdisk_resolver *g_res;
static uint8_t *g_content;

/* The chain of `img` with `data` as its data file. */
static vdisk_disk *open_top(vdisk_io *img, vdisk_io *data, uint32_t flags) {
        vdisk_disk *d = disk_new();

        g_files.data = data;
        ASSERT_OK(vdisk_disk_open_chain(d, g_res, img, "qcow2", flags));
        g_files.data = NULL;
        return d;
}

static void write_at(vdisk_disk *d, const uint8_t *buf, uint64_t len, uint64_t off) {
        ASSERT_OK(vdisk_disk_write(d, buf, len, off));
}

static void build(bool backing, vdisk_io **ret_img, vdisk_io **ret_data) {
        static const char *const opts[] = { "cluster_size", "4096", "data_file", "d.dat", NULL };
        vdisk_create_opts o = { .size = sizeof o, .options = opts, .resolver = g_res };
        vdisk_io *img = mem_io("t.qcow2", NULL, 0), *data = mem_io("d.dat", NULL, 0);
        uint8_t *buf = malloc(2 * MiB), *zero = calloc(1, 2 * MiB);
        const void *base;
        size_t base_len;
        vdisk_disk *d = disk_new();
        rng r;

        ASSERT(buf && zero);
        g_files.data = data;
        rng_seed(&r, backing ? 2 : 1);
        if (backing) {
                ASSERT_OK(vdisk_io_memory_data(g_files.base, &base, &base_len));
                ASSERT_OK(vdisk_disk_open(d, g_files.base, "raw", VDISK_OPEN_READONLY));
                o.parent_name = "base.raw";
                o.parent_format = "raw";
                ASSERT_OK(vdisk_disk_create_diff(d, img, "qcow2", &o));
                /* L2 tables made in the order 1, 0, 2, 3 */
                rng_fill(&r, buf, 64 * KiB);
                write_at(d, buf, 64 * KiB, 3 * MiB);
                rng_fill(&r, buf, 64 * KiB);
                write_at(d, buf, 64 * KiB, 0);
                write_at(d, (const uint8_t *) base + 1 * MiB, 128 * KiB, 1 * MiB);   /* the base's again */
                write_at(d, (const uint8_t *) base + 4 * MiB, 2 * MiB, 4 * MiB);     /* a whole table's */
                rng_fill(&r, buf, 64 * KiB);
                write_at(d, buf, 64 * KiB, 7 * MiB);
        } else {
                ASSERT_OK(vdisk_disk_create_base(d, img, "qcow2", SIZE, &o));
                rng_fill(&r, buf, 256 * KiB);
                write_at(d, buf, 256 * KiB, 2 * MiB);
                rng_fill(&r, buf, 512 * KiB);
                write_at(d, buf, 512 * KiB, 0);
                rng_fill(&r, buf, 64 * KiB);
                write_at(d, buf, 64 * KiB, 6 * MiB);
                ASSERT_OK(vdisk_disk_flush(d));
                write_at(d, zero, 256 * KiB, 2 * MiB);      /* table 1: all zeros */
                write_at(d, zero, 64 * KiB, 256 * KiB);     /* part of table 0 */
        }
        ASSERT_OK(vdisk_disk_close(d));
        g_files.data = NULL;
        free(buf);
        free(zero);
        d = open_top(img, data, VDISK_OPEN_READONLY);
        free(g_content);
        g_content = disk_read_all(d, &(uint64_t) { 0 });
        vdisk_disk_unref(d);
        *ret_img = img;
        *ret_data = data;
}

/* Reads as before, vdisk_check finds no corruption (leaks allowed). */
static void verify(vdisk_io *img, vdisk_io *data) {
        vdisk_disk *d = open_top(img, data, VDISK_OPEN_READONLY);
        uint64_t size;
        uint8_t *got = disk_read_all(d, &size);

        ASSERT_EQ_U64(size, SIZE);
        ASSERT_MEMEQ(got, g_content, SIZE);
        free(got);
        (void) CHECK_IMAGE_CLEAN(d, vdisk_disk_count(d) - 1);
        vdisk_disk_unref(d);
}

static int compact(vdisk_io *img, vdisk_io *data) {
        vdisk_disk *d = open_top(img, data, 0);
        int r;

        vdisk_clear_error();
        r = vdisk_compact(d, vdisk_disk_count(d) - 1, NULL);
        if (r < 0)
                test_check_clean_error(__FILE__, __LINE__, "vdisk_compact", r);
        vdisk_disk_unref(d);
        return r;
}

/* After a compact that succeeded: the diff's clusters that held the base's
 * data again punched out of the data file; no leak unless a fault came
 * first (a failed compact may leak what it had placed). */
static void verify_done(vdisk_io *img, vdisk_io *data, bool backing, bool leaks) {
        vdisk_disk *d = open_top(img, data, VDISK_OPEN_READONLY);
        const void *bytes;
        size_t len;

        verify(img, data);
        if (!leaks)
                ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(d, vdisk_disk_count(d) - 1), 0);
        vdisk_disk_unref(d);
        if (!backing)
                return;
        ASSERT_OK(vdisk_io_memory_data(data, &bytes, &len));
        ASSERT(len >= 6 * MiB);
        ASSERT(buf_is_zero((const uint8_t *) bytes + 1 * MiB, 128 * KiB));
        ASSERT(buf_is_zero((const uint8_t *) bytes + 4 * MiB, 2 * MiB));
}

/* Faults on the image file (which 0) or the data file (1). */
static uint64_t run_faults(vdisk_io *img, vdisk_io *data, bool backing, unsigned which, uint64_t w,
                           uint64_t *ret_images) {
        for (uint64_t n = 0; n <= w; n++) {
                vdisk_fault cut = { .size = sizeof cut, .kind = VDISK_FAULT_POWER_CUT, .after = n };
                vdisk_io *in[2] = { mem_io_clone(img, "t.qcow2"), mem_io_clone(data, "d.dat") }, *fio;
                int r;

                test_set_context("%s, %s cut after %" PRIu64 " of %" PRIu64 " writes", backing ? "diff" : "base",
                                 which ? "data file" : "image file", n, w);
                ASSERT_OK(vdisk_io_new_fault(in[which], &cut, &fio));
                r = which ? compact(in[0], fio) : compact(fio, in[1]);
                for (unsigned seed = 0; seed < SEEDS; seed++) {
                        vdisk_io *ci;

                        ASSERT_OK(vdisk_io_fault_crash_image(fio, seed, &ci));
                        if (which)
                                verify(in[0], ci);
                        else
                                verify(ci, in[1]);
                        if (r >= 0 && seed == 0) {
                                if (which)
                                        verify_done(in[0], ci, backing, true);
                                else
                                        verify_done(ci, in[1], backing, true);
                        }
                        vdisk_io_unref(ci);
                        (*ret_images)++;
                }
                vdisk_io_unref(fio);
                vdisk_io_unref(in[0]);
                vdisk_io_unref(in[1]);
        }
        for (uint64_t n = 0; n < w; n++) {
                vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_EIO, .after = n, .once = 1 };
                vdisk_io *in[2] = { mem_io_clone(img, "t.qcow2"), mem_io_clone(data, "d.dat") }, *fio;

                test_set_context("%s, %s: transient EIO at write %" PRIu64, backing ? "diff" : "base",
                                 which ? "data file" : "image file", n);
                ASSERT_OK(vdisk_io_new_fault(in[which], &f, &fio));
                if (which)
                        (void) compact(in[0], fio);
                else
                        (void) compact(fio, in[1]);
                vdisk_io_unref(fio);
                verify(in[0], in[1]);
                ASSERT_OK(compact(in[0], in[1]));
                verify_done(in[0], in[1], backing, true);
                vdisk_io_unref(in[0]);
                vdisk_io_unref(in[1]);
        }
        test_set_context("%s", "");
        return w;
}

int main(void) {
        uint8_t *base = malloc(SIZE);
        rng r;

        ASSERT(base);
        rng_seed(&r, 7);
        rng_fill(&r, base, SIZE);
        g_files.base = mem_io("base.raw", base, SIZE);
        free(base);
        ASSERT_OK(vdisk_resolver_new_ops(&test_chain_ops, &g_files, &g_res));
        for (unsigned v = 0; v < 2; v++) {
                vdisk_fault none = { .size = sizeof none, .kind = VDISK_FAULT_NONE };
                bool backing = v == 1;
                vdisk_io *img, *data, *in[2], *fi[2];
                uint64_t w[2], images = 0, before, after;

                build(backing, &img, &data);
                /* the writes each file sees in a compact without faults */
                in[0] = mem_io_clone(img, "t.qcow2");
                in[1] = mem_io_clone(data, "d.dat");
                ASSERT_OK(vdisk_io_new_fault(in[0], &none, &fi[0]));
                ASSERT_OK(vdisk_io_new_fault(in[1], &none, &fi[1]));
                ASSERT_OK(compact(fi[0], fi[1]));
                w[0] = vdisk_io_fault_writes(fi[0]);
                w[1] = vdisk_io_fault_writes(fi[1]);
                verify_done(in[0], in[1], backing, false);
                ASSERT_OK(vdisk_io_get_size(img, &before));
                ASSERT_OK(vdisk_io_get_size(in[0], &after));
                if (after >= before)
                        FAIL("%s: the image file did not shrink (%" PRIu64 " -> %" PRIu64 " bytes)",
                             backing ? "diff" : "base", before, after);
                if (w[1] == 0)
                        FAIL("%s: nothing punched out of the data file", backing ? "diff" : "base");
                for (unsigned k = 0; k < 2; k++) {
                        vdisk_io_unref(fi[k]);
                        vdisk_io_unref(in[k]);
                }
                run_faults(img, data, backing, 0, w[0], &images);
                run_faults(img, data, backing, 1, w[1], &images);
                printf("ok %u - %s: image file %" PRIu64 " -> %" PRIu64 " bytes; %" PRIu64 " image writes, %" PRIu64
                       " data file writes, every cut and transient EIO; %" PRIu64 " crash images\n", v + 1,
                       backing ? "diff over raw" : "standalone", before, after, w[0], w[1], images);
                vdisk_io_unref(img);
                vdisk_io_unref(data);
        }
        vdisk_io_unref(g_files.base);
        vdisk_resolver_unref(g_res);
        free(g_content);
        return 0;
}
