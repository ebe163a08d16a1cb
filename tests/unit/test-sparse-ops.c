/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Operations on huge, nearly empty images follow the data, not the virtual
 * size: compare, merge (commit, both directions) and copy of 2 TiB VDI disks
 * holding a few MiB, and of a 1 TiB VHD. The proof is not a time but the metadata work: every
 * block map page look-up counts in the disk's metadata statistics (hits +
 * misses), and a walk that stepped through the holes a few MiB at a time, or
 * looked at each block's entry on its own, makes millions of them (2 TiB is
 * 2 million 1 MiB blocks); following the data makes a few thousand.
 *
 * And the results stay exact: a differencing image's zero block hides its
 * parent's data (compare says equal to a disk without that data; strict
 * compare sees the different allocation), a difference in the last sector is
 * found, merges keep every byte.
 */
#include "tests.h"

#define SIZE (UINT64_C(2) << 40)
#define GiB (UINT64_C(1) << 30)
/* Look-ups an operation may make on 2 TiB: some 2048 status steps of 1 GiB
 * per image, a few look-ups each. Stepping 4 MiB at a time takes 512k steps. */
#define LOOKUPS_MAX 60000

/* The places that hold data: start, a partial block, a whole block (the one
 * the diff zeroes), the last sector. */
static const struct {
        uint64_t offset, length;
        uint8_t byte;
} places[] = {
        { 0,                         64 * KiB,  0x11 },
        { GiB + 12345 * 512,         300 * KiB, 0x22 },
        { 700 * GiB,                 1 * MiB,   0x33 },
        { SIZE - 512,                512,       0x44 },
};
#define ZEROED 2   /* places[ZEROED] is a whole 1 MiB block */

static void fill(vdisk_disk *d, uint64_t off, uint64_t len, uint8_t v) {
        uint8_t *buf = malloc(len);

        ASSERT(buf);
        memset(buf, v, len);
        ASSERT_OK(vdisk_disk_write(d, buf, len, off));
        free(buf);
}

static uint64_t lookups(vdisk_disk *d) {
        vdisk_metadata_stats s = { .size = sizeof s };

        ASSERT_OK(vdisk_disk_get_metadata_stats(d, &s));
        return s.hits + s.misses;
}

static vdisk_disk *big_base(const char *name) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io(name, NULL, 0);

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        return d;
}

/* A base holding `places` (but the one numbered `skip`, if >= 0), written in
 * rising or falling order (so two of them place their blocks differently). */
static vdisk_disk *big_disk(const char *name, bool falling, int skip) {
        vdisk_disk *d = big_base(name);
        size_t n = ELEMENTSOF(places);

        for (size_t k = 0; k < n; k++) {
                size_t i = falling ? n - 1 - k : k;

                if ((int) i != skip)
                        fill(d, places[i].offset, places[i].length, places[i].byte);
        }
        return d;
}

/* Adds a differencing image whose zero block hides places[ZEROED]. */
static void add_zeroing_diff(vdisk_disk *d, const char *name) {
        vdisk_io *io = mem_io(name, NULL, 0);

        ASSERT_OK(vdisk_disk_create_diff(d, io, "vdi", NULL));
        vdisk_io_unref(io);
        ASSERT_OK(vdisk_disk_discard(d, places[ZEROED].offset, places[ZEROED].length));
}

static uint64_t lookups_max = LOOKUPS_MAX;

static void check_bounded(const char *what, uint64_t n) {
        printf("# %s: %" PRIu64 " block map look-ups\n", what, n);
        if (n > lookups_max)
                FAIL("%s made %" PRIu64 " block map look-ups on a huge disk holding a few MiB (at most %"
                     PRIu64 "): it walks the holes, not the data", what, n, lookups_max);
}

/* compare(a, b): its result, with the look-ups of both disks checked. */
static int compare_counted(const char *what, vdisk_disk *a, vdisk_disk *b, int strict, uint64_t *ret_offset) {
        uint64_t before = lookups(a) + lookups(b);
        int r;

        r = vdisk_compare(a, b, strict, ret_offset, NULL);
        ASSERT(r >= 0);
        check_bounded(what, lookups(a) + lookups(b) - before);
        return r;
}

static void test_compare(void) {
        vdisk_disk *a = big_disk("a.vdi", false, -1), *b = big_disk("b.vdi", true, -1);
        uint64_t off = 0;

        ASSERT(compare_counted("compare, same content", a, b, 0, NULL) == 0);
        ASSERT(compare_counted("strict compare, same content", a, b, 1, NULL) == 0);

        /* One byte in the last sector differs. */
        fill(b, SIZE - 100, 1, 0x45);
        ASSERT(compare_counted("compare, last sector differs", a, b, 0, &off) == 1);
        ASSERT_EQ_U64(off, SIZE - 512);
        vdisk_disk_unref(a);
        vdisk_disk_unref(b);
}

/* A zero block of a diff hides the parent's data: equal to a disk that never
 * had it; strict compare sees the zero block's allocation. */
static void test_zero_block_hides_parent(void) {
        vdisk_disk *a = big_disk("base.vdi", false, -1), *b = big_disk("flat.vdi", true, ZEROED);
        uint64_t off = 0;
        uint8_t sector[512];

        add_zeroing_diff(a, "diff.vdi");
        ASSERT_OK(vdisk_disk_read(a, sector, sizeof sector, places[ZEROED].offset + 4096));
        ASSERT(buf_is_zero(sector, sizeof sector));

        ASSERT(compare_counted("compare, zero block over parent data", a, b, 0, NULL) == 0);
        ASSERT(compare_counted("strict compare, zero block over parent data", a, b, 1, &off) == 1);
        ASSERT_EQ_U64(off, places[ZEROED].offset);
        /* The parent's data does not show: without the diff, they differ there. */
        vdisk_disk_unref(a);
        a = big_disk("base2.vdi", false, -1);
        ASSERT(compare_counted("compare, parent data", a, b, 0, &off) == 1);
        ASSERT_EQ_U64(off, places[ZEROED].offset);
        vdisk_disk_unref(a);
        vdisk_disk_unref(b);
}

static void test_merge(unsigned from, unsigned to) {
        vdisk_disk *d = big_disk("base.vdi", false, -1), *want = big_disk("want.vdi", true, ZEROED);
        uint64_t before;
        char what[64];

        add_zeroing_diff(d, "diff.vdi");
        /* The diff holds data of its own too, past the parent's. */
        fill(d, 1536 * GiB + 4096, 8 * KiB, 0x55);
        fill(want, 1536 * GiB + 4096, 8 * KiB, 0x55);

        before = lookups(d);
        ASSERT_OK(vdisk_merge(d, from, to, NULL, NULL));
        snprintf(what, sizeof what, "merge %u into %u", from, to);
        check_bounded(what, lookups(d) - before);
        ASSERT(vdisk_disk_count(d) == 1);
        ASSERT(compare_counted("compare after the merge", d, want, 0, NULL) == 0);
        vdisk_disk_unref(d);
        vdisk_disk_unref(want);
}

static void test_copy(void) {
        vdisk_disk *a = big_disk("a.vdi", false, -1), *dst = disk_new();
        vdisk_io *io = mem_io("copy.vdi", NULL, 0);
        uint64_t before;

        add_zeroing_diff(a, "diff.vdi");
        before = lookups(a) + lookups(dst);
        ASSERT_OK(vdisk_copy(a, dst, io, "vdi", NULL, NULL));
        vdisk_io_unref(io);
        check_bounded("copy of a two-image chain", lookups(a) + lookups(dst) - before);
        ASSERT(compare_counted("compare after the copy", a, dst, 0, NULL) == 0);
        vdisk_disk_unref(a);
        vdisk_disk_unref(dst);
}

/* VHD's block allocation table takes the same word-wise path: a 127 GiB
 * dynamic VHD (the largest with a CHS geometry; 2 MiB blocks) against a VDI
 * of the same content, and copied into a new VHD. Walking its 65,000 free
 * entries one look-up each would make that many per operation. */
static void test_vhd(void) {
        const uint64_t size = 127 * GiB, at[] = { 0, 70 * GiB + 4096, size - 512 };
        vdisk_disk *a = disk_new(), *b = disk_new(), *c = disk_new();
        vdisk_io *io;
        uint64_t before, off = 0;

        lookups_max = 5000;

        io = mem_io("a.vhd", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(a, io, "vpc", size, NULL));
        vdisk_io_unref(io);
        io = mem_io("b.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(b, io, "vdi", vdisk_disk_size(a), NULL));
        vdisk_io_unref(io);
        for (size_t i = 0; i < ELEMENTSOF(at); i++) {
                uint64_t o = MIN(at[i], vdisk_disk_size(a) - 512);

                fill(a, o, 512, (uint8_t) (0x61 + i));
                fill(b, o, 512, (uint8_t) (0x61 + i));
        }
        ASSERT(compare_counted("compare VHD with VDI", a, b, 0, NULL) == 0);

        io = mem_io("c.vhd", NULL, 0);
        before = lookups(a) + lookups(c);
        ASSERT_OK(vdisk_copy(a, c, io, "vpc", NULL, NULL));
        vdisk_io_unref(io);
        check_bounded("copy of a VHD", lookups(a) + lookups(c) - before);
        ASSERT(compare_counted("compare the VHD copy", c, b, 0, NULL) == 0);
        fill(c, 70 * GiB + 8192, 512, 0x70);
        ASSERT(compare_counted("compare the changed VHD copy", c, b, 0, &off) == 1);
        ASSERT_EQ_U64(off, 70 * GiB + 8192);
        vdisk_disk_unref(a);
        vdisk_disk_unref(b);
        vdisk_disk_unref(c);
}

int main(void) {
        test_compare();
        test_zero_block_hides_parent();
        test_merge(1, 0);
        test_merge(0, 1);
        test_copy();
        test_vhd();
        printf("ok\n");
        return 0;
}
