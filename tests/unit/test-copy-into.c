/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk_copy_into (qemu-img convert -n, vdiskd's CopyTo): the source's
 * content lands in an existing disk's top image.
 *
 * - The cost follows the data of both sides: 2 TiB VDIs holding a few MiB,
 *   copied into an empty 2 TiB VDI and into one holding other data, make a
 *   few thousand block map look-ups (stepping the holes would make millions).
 * - Exact results: data the destination held under a source hole reads zeros
 *   afterwards; a source buffer of written zeros over destination data too;
 *   the destination's own size is kept (a larger destination keeps its tail).
 * - TOP_ONLY (convert -n -B): only what the source's top defines is copied;
 *   the destination's own parents supply the rest.
 * - Refusals: a smaller destination, the same disk twice, unknown flags; a
 *   cancel stops it with -ECANCELED.
 */
#include "tests.h"

#define SIZE (UINT64_C(2) << 40)
#define GiB (UINT64_C(1) << 30)
#define LOOKUPS_MAX 60000

static const struct {
        uint64_t offset, length;
        uint8_t byte;
} places[] = {
        { 0,                         64 * KiB,  0x11 },
        { GiB + 12345 * 512,         300 * KiB, 0x22 },
        { 700 * GiB,                 1 * MiB,   0x33 },
        { SIZE - 512,                512,       0x44 },
};

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

static vdisk_disk *big_base(const char *name, uint64_t size) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io(name, NULL, 0);

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", size, NULL));
        vdisk_io_unref(io);
        return d;
}

static vdisk_disk *big_disk(const char *name) {
        vdisk_disk *d = big_base(name, SIZE);

        for (size_t i = 0; i < ELEMENTSOF(places); i++)
                fill(d, places[i].offset, places[i].length, places[i].byte);
        return d;
}

static void check_bounded(const char *what, uint64_t n) {
        printf("# %s: %" PRIu64 " block map look-ups\n", what, n);
        if (n > LOOKUPS_MAX)
                FAIL("%s made %" PRIu64 " block map look-ups on a huge disk holding a few MiB (at most %d)",
                     what, n, LOOKUPS_MAX);
}

static void copy_into_counted(const char *what, vdisk_disk *src, vdisk_disk *dst, uint32_t flags) {
        uint64_t before = lookups(src) + lookups(dst);

        ASSERT_OK(vdisk_copy_into(src, dst, flags, NULL));
        check_bounded(what, lookups(src) + lookups(dst) - before);
}

static void assert_reads(vdisk_disk *d, uint64_t off, uint8_t byte) {
        uint8_t sector[512], want[512];

        memset(want, byte, sizeof want);
        ASSERT_OK(vdisk_disk_read(d, sector, sizeof sector, off));
        ASSERT_MEMEQ(sector, want, sizeof want);
}

static void test_into_empty(void) {
        vdisk_disk *src = big_disk("src.vdi"), *dst = big_base("dst.vdi", SIZE);

        copy_into_counted("copy into an empty VDI", src, dst, 0);
        ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 0);
        vdisk_disk_unref(src);
        vdisk_disk_unref(dst);
}

/* The destination's old data goes where the source has holes, or written
 * zeros; its tail past the source's size stays. */
static void test_over_data(void) {
        vdisk_disk *src = big_disk("src.vdi"), *dst = big_base("dst.vdi", SIZE + 4 * MiB);
        uint64_t off = 0;

        fill(src, 300 * GiB, 1 * MiB, 0);                  /* written zeros */
        fill(dst, 5 * GiB, 8 * KiB, 0x99);                 /* under a source hole */
        fill(dst, 300 * GiB + 4096, 4096, 0x98);           /* under the written zeros */
        fill(dst, 700 * GiB + 4096, 4096, 0x97);           /* under source data */
        fill(dst, SIZE + 1 * MiB, 4096, 0x96);             /* past the source's end */

        copy_into_counted("copy over data", src, dst, 0);
        assert_reads(dst, 5 * GiB, 0);
        assert_reads(dst, 300 * GiB + 4096, 0);
        assert_reads(dst, 700 * GiB + 4096, 0x33);
        assert_reads(dst, SIZE + 1 * MiB, 0x96);
        ASSERT_EQ_U64(vdisk_disk_size(dst), SIZE + 4 * MiB);
        /* Equal up to the source's size; the tail differs (non-strict compare
         * wants zeros there). */
        ASSERT(vdisk_compare(src, dst, 0, &off, NULL) == 1);
        ASSERT_EQ_U64(off, SIZE + 1 * MiB);
        vdisk_disk_unref(src);
        vdisk_disk_unref(dst);
}

/* convert -n -B: the destination already has the source's base as its
 * parent; only the source's top lands in the destination's top. */
static void test_top_only(void) {
        vdisk_disk *src = big_disk("base.vdi"), *dst = big_disk("copy-of-base.vdi");
        vdisk_io *io;
        vdisk_image_info info = { .size = sizeof info };

        io = mem_io("src-top.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_diff(src, io, "vdi", NULL));
        vdisk_io_unref(io);
        fill(src, 42 * GiB, 1 * MiB, 0x55);
        fill(src, 700 * GiB, 1 * MiB, 0x33);               /* the same as the base holds */
        io = mem_io("dst-top.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_diff(dst, io, "vdi", NULL));
        vdisk_io_unref(io);

        copy_into_counted("copy of the top only", src, dst, VDISK_COPY_INTO_TOP_ONLY);
        ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 0);
        /* Only the block that differs was written into the destination's top. */
        ASSERT_OK(vdisk_image_get_info(vdisk_disk_image(dst, 1), &info));
        ASSERT_EQ_U64(info.blocks_allocated, 1);
        vdisk_disk_unref(src);
        vdisk_disk_unref(dst);
}

static void test_refusals(void) {
        vdisk_disk *src = big_disk("src.vdi"), *small = big_base("small.vdi", SIZE / 2),
                   *dst = big_base("dst.vdi", SIZE);
        vdisk_progress *p = NULL;

        ASSERT_ERR(vdisk_copy_into(src, small, 0, NULL), -EINVAL);
        ASSERT_ERR(vdisk_copy_into(src, src, 0, NULL), -EINVAL);
        ASSERT_ERR(vdisk_copy_into(src, dst, 1u << 7, NULL), -EINVAL);
        ASSERT_OK(vdisk_progress_new(NULL, NULL, &p));
        vdisk_progress_cancel(p);
        ASSERT_ERR(vdisk_copy_into(src, dst, 0, p), -ECANCELED);
        vdisk_progress_free(p);
        /* Both disks are free again: a plain copy goes through. */
        ASSERT_OK(vdisk_copy_into(src, dst, 0, NULL));
        ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 0);
        vdisk_disk_unref(src);
        vdisk_disk_unref(small);
        vdisk_disk_unref(dst);
}

int main(void) {
        test_into_empty();
        test_over_data();
        test_top_only();
        test_refusals();
        printf("ok\n");
        return 0;
}
