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
 * - COMPRESS (convert -c -n) into existing qcow2 images (a file, so that
 *   qemu-img checks it when /usr/bin/qemu-img is there): compressible
 *   clusters stored compressed (the file grows by far less than the data),
 *   random ones plain, zeros over the destination's data read zeros, an odd
 *   last cluster compressed; refcounts exact (vdisk_check: no leak, no
 *   corruption; qemu-img check clean, qemu-img compare equal); a cluster
 *   allocated in the destination where the source has compressible data
 *   fails the copy with -EOPNOTSUPP naming it (qemu's rule: compression
 *   never overwrites; a cluster that does not shrink is written plain, over
 *   an allocated one too, as qemu does),
 *   the clusters before it kept and the image still clean; a VDI
 *   destination and COMPRESS with TOP_ONLY are refused.
 * - ALLOCATE (convert -S 0): VDI and qcow2 files get every block allocated
 *   and written whole, zeros included (st_blocks covers the virtual size);
 *   with COMPRESS every cluster is stored compressed, zeros too. Every write
 *   of an ALLOCATE copy into a qcow2 failing in turn, once or for good: no
 *   corruption, each sector old or new, a retry completes.
 */
#include <sys/stat.h>
#include <unistd.h>

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

static vdisk_disk *big_base_fmt(const char *name, const char *format, uint64_t size) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io(name, NULL, 0);

        ASSERT_OK(vdisk_disk_create_base(d, io, format, size, NULL));
        vdisk_io_unref(io);
        return d;
}

static vdisk_disk *big_base(const char *name, uint64_t size) {
        return big_base_fmt(name, "vdi", size);
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

/* ---------------------------------------------------------------- COMPRESS */

#define CSIZE (4 * MiB + 12 * KiB)   /* an odd last cluster */
#define CL (64 * KiB)

static char tdir[4096];

static void text_fill(uint8_t *p, size_t len, unsigned seed) {
        for (size_t i = 0; i < len; i++)
                p[i] = (uint8_t) "the quick brown fox jumps over the lazy dog "[(i + seed) % 44];
}

static vdisk_disk *raw_src(uint8_t **ret_content) {
        uint8_t *c = calloc(1, CSIZE);
        rng r;
        vdisk_disk *d = disk_new();
        vdisk_io *io;

        ASSERT(c);
        text_fill(c, 4 * CL, 1);                        /* clusters 0-3: compressible */
        rng_seed(&r, 5);
        rng_fill(&r, c + 8 * CL, CL);                   /* cluster 8: random */
        text_fill(c + 20 * CL + 100, 3000, 2);          /* cluster 20: partly */
        text_fill(c + 64 * CL, 12 * KiB, 3);            /* the odd last cluster */
        io = mem_io("src.raw", c, CSIZE);
        ASSERT_OK(vdisk_disk_open(d, io, "raw", VDISK_OPEN_READONLY));
        vdisk_io_unref(io);
        *ret_content = c;
        return d;
}

static vdisk_disk *qcow2_dst(const char *path, uint64_t *ret_file_size) {
        vdisk_disk *d = disk_new();
        vdisk_io *io;
        uint8_t *junk = malloc(CL);

        ASSERT(junk);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC, &io));
        ASSERT_OK(vdisk_disk_create_base(d, io, "qcow2", CSIZE, NULL));
        vdisk_io_unref(io);
        memset(junk, 0x5a, CL);
        ASSERT_OK(vdisk_disk_write(d, junk, CL, 30 * CL));   /* data where the source has zeros */
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(d, 0), ret_file_size));
        free(junk);
        return d;
}

static void qemu_img_ok(const char *args) {
        char cmd[8400];

        if (access("/usr/bin/qemu-img", X_OK) != 0)
                return;
        snprintf(cmd, sizeof cmd, "/usr/bin/qemu-img %s >/dev/null 2>&1", args);
        if (system(cmd) != 0)
                FAIL("qemu-img %s failed", args);
}

static void test_compress(void) {
        const char *tmp = getenv("TMPDIR");
        char path[4200], raw[4200], args[8600];
        uint8_t *content, *got;
        uint64_t before, after, size;
        vdisk_disk *src = raw_src(&content), *dst;
        vdisk_io *rio;

        snprintf(tdir, sizeof tdir, "%s/vdisk-cinto-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        ASSERT(mkdtemp(tdir));
        snprintf(path, sizeof path, "%s/dst.qcow2", tdir);
        snprintf(raw, sizeof raw, "%s/src.raw", tdir);
        ASSERT_OK(vdisk_io_open_path(raw, VDISK_PATH_WRITE | VDISK_PATH_CREATE, &rio));
        ASSERT_OK(vdisk_io_pwrite(rio, content, CSIZE, 0));
        vdisk_io_unref(rio);

        /* into an image with data where the source reads zeros */
        dst = qcow2_dst(path, &before);
        ASSERT_OK(vdisk_copy_into(src, dst, VDISK_COPY_INTO_COMPRESS, NULL));
        got = disk_read_all(dst, &size);
        ASSERT_EQ_U64(size, CSIZE);
        ASSERT_MEMEQ(got, content, CSIZE);
        free(got);
        ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(dst, 0), 0);
        ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(dst, 0), &after));
        /* 7 clusters of data: the random one plain, the rest a few KiB each */
        printf("# compressed into an existing qcow2: the file grew by %" PRIu64 " bytes for %u clusters of data\n",
               after - before, 7);
        ASSERT(after - before < 3 * CL);
        ASSERT_OK(vdisk_disk_close(dst));
        snprintf(args, sizeof args, "check -q -f qcow2 '%s'", path);
        qemu_img_ok(args);
        snprintf(args, sizeof args, "compare -q -f raw -F qcow2 '%s' '%s'", raw, path);
        qemu_img_ok(args);

        /* a cluster allocated where the source has data: refused there */
        dst = qcow2_dst(path, &before);
        {
                uint8_t *junk = malloc(CL);

                ASSERT(junk);
                memset(junk, 0x6b, CL);
                ASSERT_OK(vdisk_disk_write(dst, junk, CL, 2 * CL));
                free(junk);
        }
        vdisk_clear_error();
        ASSERT_ERR(vdisk_copy_into(src, dst, VDISK_COPY_INTO_COMPRESS, NULL), -EOPNOTSUPP);
        ASSERT(strstr(vdisk_last_error(), "131072"));   /* 2 * 64 KiB */
        got = disk_read_all(dst, &size);
        ASSERT_MEMEQ(got, content, 2 * CL);              /* written before the refusal */
        free(got);
        ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(dst, 0), 0);
        ASSERT_OK(vdisk_disk_close(dst));
        snprintf(args, sizeof args, "check -q -f qcow2 '%s'", path);
        qemu_img_ok(args);

        /* refusals */
        {
                vdisk_disk *v = big_base("dst.vdi", CSIZE);

                ASSERT_ERR(vdisk_copy_into(src, v, VDISK_COPY_INTO_COMPRESS, NULL), -EOPNOTSUPP);
                ASSERT_ERR(vdisk_copy_into(src, v, VDISK_COPY_INTO_COMPRESS | VDISK_COPY_INTO_TOP_ONLY, NULL),
                           -EINVAL);
                vdisk_disk_unref(v);
        }
        vdisk_disk_unref(src);
        free(content);
        snprintf(args, sizeof args, "rm -rf '%s'", tdir);
        ASSERT(system(args) == 0);
}

/* ---------------------------------------------------------------- ALLOCATE */

#define ASIZE (4 * MiB)

/* A VDI source: data in block 1, written zeros in block 2, holes elsewhere. */
static vdisk_disk *alloc_src(void) {
        vdisk_disk *d = big_base("asrc.vdi", ASIZE);

        fill(d, MiB + 4 * KiB, 8 * KiB, 0x5d);
        fill(d, 2 * MiB, MiB, 0);
        return d;
}

static void assert_all_data(vdisk_disk *d) {
        for (uint64_t off = 0; off < ASIZE;) {
                vdisk_extent e;

                ASSERT_OK(vdisk_disk_block_status(d, off, ASIZE - off, &e));
                if (!(e.flags & VDISK_EXTENT_DATA))
                        FAIL("[%" PRIu64 ", +%" PRIu64 ") is not allocated (flags %#x)", off, e.length, e.flags);
                off += e.length;
        }
}

/* convert -S 0: every block of a VDI and a qcow2 file allocated and written
 * whole, zeros included, so that the file takes the virtual size on the
 * host (st_blocks: no hole), as qemu-img's output does. */
static void test_allocate(void) {
        static const char *const formats[] = { "vdi", "qcow2" };
        const char *tmp = getenv("TMPDIR");
        vdisk_disk *src = alloc_src();
        char dir[4096], path[4200];

        snprintf(dir, sizeof dir, "%s/vdisk-alloc-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        ASSERT(mkdtemp(dir));
        for (size_t i = 0; i < ELEMENTSOF(formats); i++) {
                vdisk_disk *dst = disk_new();
                struct stat st;
                vdisk_io *io;

                test_set_context("%s", formats[i]);
                snprintf(path, sizeof path, "%s/dst.%s", dir, formats[i]);
                ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC, &io));
                ASSERT_OK(vdisk_disk_create_base(dst, io, formats[i], ASIZE, NULL));
                vdisk_io_unref(io);
                ASSERT_OK(vdisk_copy_into(src, dst, VDISK_COPY_INTO_ALLOCATE, NULL));
                ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 0);
                assert_all_data(dst);
                ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(dst, 0), 0);
                ASSERT_OK(vdisk_disk_close(dst));
                ASSERT(stat(path, &st) == 0);
                printf("# -S 0 into a new %s: %" PRIu64 " bytes allocated for %" PRIu64 "\n", formats[i],
                       (uint64_t) st.st_blocks * 512, (uint64_t) ASIZE);
                if ((uint64_t) st.st_blocks * 512 < ASIZE)
                        FAIL("%s holds holes: %" PRIu64 " bytes allocated for %" PRIu64, path,
                             (uint64_t) st.st_blocks * 512, (uint64_t) ASIZE);
                ASSERT(unlink(path) == 0);
        }
        test_set_context("%s", "");
        ASSERT(rmdir(dir) == 0);

        /* -c -S 0: every cluster compressed, clusters of zeros too */
        {
                vdisk_disk *dst = big_base_fmt("acomp.qcow2", "qcow2", ASIZE);
                uint64_t fsize;

                ASSERT_OK(vdisk_copy_into(src, dst, VDISK_COPY_INTO_ALLOCATE | VDISK_COPY_INTO_COMPRESS, NULL));
                ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 0);
                assert_all_data(dst);
                ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(dst, 0), 0);
                ASSERT_OK(vdisk_image_file_size(vdisk_disk_image(dst, 0), &fsize));
                /* 64 clusters of 64 KiB, stored compressed: far less than 4 MiB */
                printf("# -c -S 0 into a new qcow2: %" PRIu64 " bytes\n", fsize);
                ASSERT(fsize < ASIZE / 4);
                vdisk_disk_unref(dst);
        }
        vdisk_disk_unref(src);
}

/* Each write of an ALLOCATE copy into a qcow2 failing in turn, once
 * (transient) or from there on (persistent): the copy fails, the destination
 * has no corruption (leaks allowed) and reads each sector as before or as
 * the source; a retry completes, every cluster allocated. (A VDI would keep
 * the count-ahead state of a failed flush, vdi.c, until repaired.) */
static void test_allocate_faults(void) {
        vdisk_disk *src = alloc_src();
        uint8_t *want;
        uint64_t size;

        want = disk_read_all(src, &size);
        for (int once = 0; once <= 1; once++) {
                uint64_t n;

                for (n = 0;; n++) {
                        vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_EIO, .after = n, .once = once };
                        vdisk_io *mio = mem_io("adst.qcow2", NULL, 0), *fio;
                        vdisk_disk *dst = disk_new();
                        uint8_t *got;
                        int r;

                        test_set_context("%s fault at write %" PRIu64, once ? "transient" : "persistent", n);
                        ASSERT_OK(vdisk_disk_create_base(dst, mio, "qcow2", ASIZE, NULL));
                        fill(dst, 100 * KiB, 4 * KiB, 0x77);           /* under a source hole */
                        fill(dst, 2 * MiB + 8 * KiB, 4 * KiB, 0x78);   /* under written zeros */
                        ASSERT_OK(vdisk_disk_close(dst));
                        ASSERT_OK(vdisk_io_new_fault(mio, &f, &fio));
                        dst = disk_new();
                        ASSERT_OK(vdisk_disk_open(dst, fio, "qcow2", 0));
                        r = vdisk_copy_into(src, dst, VDISK_COPY_INTO_ALLOCATE, NULL);
                        if (!vdisk_io_fault_fired(fio)) {
                                /* past the copy's last write */
                                ASSERT_OK(r);
                                vdisk_disk_unref(dst);
                                vdisk_io_unref(fio);
                                vdisk_io_unref(mio);
                                break;
                        }
                        ASSERT(r < 0);
                        vdisk_disk_unref(dst);
                        vdisk_io_unref(fio);

                        dst = disk_new();
                        ASSERT_OK(vdisk_disk_open(dst, mio, "qcow2", 0));
                        (void) CHECK_IMAGE_CLEAN(dst, 0);
                        got = disk_read_all(dst, &size);
                        ASSERT_EQ_U64(size, ASIZE);
                        for (uint64_t s = 0; s < ASIZE; s += 512) {
                                /* the old content: 0x77 and 0x78 where filled above, zeros elsewhere */
                                uint8_t o = s >= 100 * KiB && s < 104 * KiB ? 0x77 :
                                            s >= 2 * MiB + 8 * KiB && s < 2 * MiB + 12 * KiB ? 0x78 : 0;
                                bool is_new = memcmp(got + s, want + s, 512) == 0, is_old = true;

                                for (unsigned i = 0; i < 512; i++)
                                        is_old = is_old && got[s + i] == o;
                                if (!is_new && !is_old)
                                        FAIL("sector at %" PRIu64 " holds neither the old nor the new data", s);
                        }
                        free(got);
                        ASSERT_OK(vdisk_copy_into(src, dst, VDISK_COPY_INTO_ALLOCATE, NULL));
                        ASSERT(vdisk_compare(src, dst, 0, NULL, NULL) == 0);
                        assert_all_data(dst);
                        (void) CHECK_IMAGE_CLEAN(dst, 0);   /* leaks of the failed copy allowed */
                        ASSERT_OK(vdisk_disk_close(dst));
                        vdisk_io_unref(mio);
                }
                printf("# ALLOCATE copy: each of %" PRIu64 " writes failed %s\n", n, once ? "once" : "for good");
                ASSERT(n >= ASIZE / MiB);
        }
        test_set_context("%s", "");
        free(want);
        vdisk_disk_unref(src);
}

int main(void) {
        test_into_empty();
        test_over_data();
        test_top_only();
        test_refusals();
        test_compress();
        test_allocate();
        test_allocate_faults();
        printf("ok\n");
        return 0;
}
