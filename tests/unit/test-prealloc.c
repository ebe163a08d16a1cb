/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: preallocation and nocow (lib/core/prealloc.c), without qemu.
 *
 * On files in a temporary directory:
 *   - raw create: off writes the first 4 KiB (data at 0, a hole after);
 *     falloc and full allocate the whole file; every mode reads zeros;
 *   - metadata on raw, VDI, VHD, VMDK, QCOW, QED: -EOPNOTSUPP with qemu-img's
 *     "Unsupported preallocation mode: metadata"; an unknown word -EINVAL
 *     with "invalid parameter value: WORD" (qcow2: "Parameter
 *     'preallocation' does not accept value 'WORD'");
 *   - falloc and full on VDI, VMDK, VHD, QCOW, QED: accepted, the file as
 *     with off (qemu's file layer has nothing to preallocate);
 *   - qcow2 metadata maps every cluster to data in the file yet leaves it
 *     sparse; falloc and full allocate that space, and data written then
 *     reads back; a preallocated diff needs extended_l2 (qemu's words
 *     otherwise) and its parent's data shows through;
 *   - nocow=on and off are accepted everywhere (the attribute is a hint);
 *   - resize of raw: falloc/full allocate the new range, metadata is
 *     refused, a mode on a shrink is -EINVAL; a shrink over data is
 *     -ENOTEMPTY unless VDISK_RESIZE_DISCARD_DATA, which cuts the file and
 *     keeps what lies before the new end; QED refuses falloc in its words.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests.h"

static char dir[] = "/tmp/vdisk-test-prealloc.XXXXXX";

static uint64_t allocated(const char *path) {
        struct stat st;

        ASSERT(stat(path, &st) == 0);
        return (uint64_t) st.st_blocks * 512;
}

/* Creates `name` in the test directory; returns the create's result. The
 * disk is closed; *ret_path (may be NULL) gets the path. */
static int create(const char *name, const char *fmt, uint64_t size, const char *const *opts, char **ret_path) {
        _cleanup_free_ char *path = strdup(dir_path(dir, name));
        vdisk_create_opts o = { .size = sizeof o, .options = opts };
        vdisk_disk *d = disk_new();
        vdisk_io *io = NULL;
        int r;

        ASSERT(path);
        unlink(path);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_CREATE, &io));
        vdisk_clear_error();
        r = vdisk_disk_create_base(d, io, fmt, size, &o);
        if (r >= 0)
                ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        if (ret_path)
                *ret_path = TAKE_PTR(path);
        return r;
}

static vdisk_disk *open_rw(const char *path, const char *fmt) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = NULL;

        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE, &io));
        ASSERT_OK(vdisk_disk_open(d, io, fmt, 0));
        vdisk_io_unref(io);
        return d;
}

static void assert_reads_zero(const char *path, const char *fmt) {
        vdisk_disk *d = open_rw(path, fmt);
        uint64_t size;
        uint8_t *buf = disk_read_all(d, &size);

        ASSERT(buf_is_zero(buf, size));
        free(buf);
        vdisk_disk_unref(d);
}

static void test_raw_create(void) {
        const uint64_t size = 8 * MiB;
        _cleanup_free_ char *p_off = NULL, *p_falloc = NULL, *p_full = NULL;
        int fd;

        ASSERT_OK(create("off.raw", "raw", size, NULL, &p_off));
        fd = open(p_off, O_RDONLY);
        ASSERT(fd >= 0);
        ASSERT(lseek(fd, 0, SEEK_DATA) == 0);
        ASSERT(lseek(fd, 0, SEEK_HOLE) == 4096);
        close(fd);
        ASSERT(allocated(p_off) < 64 * KiB);
        assert_reads_zero(p_off, "raw");

        ASSERT_OK(create("falloc.raw", "raw", size, (const char *const[]) { "preallocation", "falloc", NULL },
                         &p_falloc));
        ASSERT(allocated(p_falloc) >= size);
        assert_reads_zero(p_falloc, "raw");

        ASSERT_OK(create("full.raw", "raw", size,
                         (const char *const[]) { "preallocation", "full", "nocow", "on", NULL }, &p_full));
        ASSERT(allocated(p_full) >= size);
        fd = open(p_full, O_RDONLY);
        ASSERT(fd >= 0);
        ASSERT(lseek(fd, 0, SEEK_HOLE) == (off_t) size);   /* written, no hole */
        close(fd);
        assert_reads_zero(p_full, "raw");
}

static void test_refusals(void) {
        static const char *const formats[] = { "raw", "vdi", "vpc", "vmdk", "qcow", "qed" };
        static const char *const metadata[] = { "preallocation", "metadata", NULL };
        static const char *const bogus[] = { "preallocation", "bogus", NULL };

        for (size_t i = 0; i < ELEMENTSOF(formats); i++) {
                test_set_context("%s", formats[i]);
                ASSERT_ERR(create("refused", formats[i], MiB, metadata, NULL), -EOPNOTSUPP);
                ASSERT_STREQ(vdisk_last_error(), "Unsupported preallocation mode: metadata");
                ASSERT_ERR(create("refused", formats[i], MiB, bogus, NULL), -EINVAL);
                ASSERT_STREQ(vdisk_last_error(), "invalid parameter value: bogus");
        }
        test_set_context("qcow2");
        ASSERT_ERR(create("refused", "qcow2", MiB, bogus, NULL), -EINVAL);
        ASSERT_STREQ(vdisk_last_error(), "Parameter 'preallocation' does not accept value 'bogus'");
        test_set_context("%s", "");
}

/* falloc/full where qemu's file layer has nothing to do: the file is as with off */
static void test_file_layer_noop(void) {
        static const char *const formats[] = { "vdi", "vpc", "vmdk", "qcow", "qed" };

        for (size_t i = 0; i < ELEMENTSOF(formats); i++) {
                _cleanup_free_ char *p_off = NULL, *p_full = NULL, *a = NULL, *b = NULL;
                size_t na, nb;

                test_set_context("%s", formats[i]);
                ASSERT_OK(create("noop-off", formats[i], 4 * MiB, NULL, &p_off));
                ASSERT_OK(create("noop-full", formats[i], 4 * MiB,
                                 (const char *const[]) { "preallocation", "full", "nocow", "off", NULL }, &p_full));
                ASSERT(allocated(p_full) <= allocated(p_off) + 64 * KiB);
                a = (char *) file_read_all(p_off, &na);
                b = (char *) file_read_all(p_full, &nb);
                ASSERT_EQ_U64(na, nb);
                assert_reads_zero(p_full, formats[i]);
                ASSERT_OK(create("noop-falloc", formats[i], 4 * MiB,
                                 (const char *const[]) { "preallocation", "falloc", NULL }, NULL));
        }
        test_set_context("%s", "");
}

static void test_qcow2(void) {
        const uint64_t size = 4 * MiB;
        static const char *const modes[] = { "metadata", "falloc", "full" };

        for (size_t i = 0; i < ELEMENTSOF(modes); i++) {
                _cleanup_free_ char *path = NULL;
                uint8_t buf[4096], back[4096];
                vdisk_extent e;
                vdisk_disk *d;

                test_set_context("qcow2 %s", modes[i]);
                ASSERT_OK(create("p.qcow2", "qcow2", size, (const char *const[]) { "preallocation", modes[i], NULL },
                                 &path));
                if (i == 0)
                        ASSERT(allocated(path) < size / 2);    /* mapped, yet sparse */
                else
                        ASSERT(allocated(path) >= size);
                d = open_rw(path, "qcow2");
                /* every cluster mapped to the image's own data */
                for (uint64_t off = 0; off < size; off += e.length) {
                        ASSERT_OK(vdisk_disk_block_status(d, off, size - off, &e));
                        ASSERT(e.length > 0);
                        ASSERT(e.flags & VDISK_EXTENT_DATA);
                }
                memset(buf, 0x5c, sizeof buf);
                ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, MiB + 512));
                ASSERT_OK(vdisk_disk_flush(d));
                ASSERT_OK(vdisk_disk_read(d, back, sizeof back, MiB + 512));
                ASSERT_MEMEQ(buf, back, sizeof buf);
                vdisk_disk_unref(d);
        }
        test_set_context("%s", "");
}

/* A preallocated qcow2 diff: only with extended L2 entries (qemu's rule),
 * and the parent's data still shows through every cluster. */
static void test_qcow2_diff(void) {
        vdisk_disk *d = disk_new();
        vdisk_io *base = mem_io("base.raw", NULL, 0), *top = mem_io("top.qcow2", NULL, 0), *top2;
        vdisk_create_opts o = { .size = sizeof o, .parent_name = "base.raw", .parent_format = "raw" };
        uint8_t buf[4096], back[4096];
        vdisk_extent e;

        memset(buf, 0x3c, sizeof buf);
        ASSERT_OK(vdisk_disk_create_base(d, base, "raw", 4 * MiB, NULL));
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 2 * MiB));
        ASSERT_OK(vdisk_disk_flush(d));
        o.options = (const char *const[]) { "preallocation", "metadata", NULL };
        ASSERT_ERR(vdisk_disk_create_diff(d, top, "qcow2", &o), -EINVAL);
        ASSERT_STREQ(vdisk_last_error(),
                     "top.qcow2: Backing file and preallocation can only be used at the same time if extended_l2 is on");
        top2 = mem_io("top2.qcow2", NULL, 0);
        o.options = (const char *const[]) { "preallocation", "full", "extended_l2", "on", NULL };
        ASSERT_OK(vdisk_disk_create_diff(d, top2, "qcow2", &o));
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_disk_read(d, back, sizeof back, 2 * MiB));
        ASSERT_MEMEQ(buf, back, sizeof buf);
        ASSERT_OK(vdisk_disk_block_status(d, 2 * MiB, 4096, &e));
        ASSERT(e.depth == 1);   /* the base defines it */
        vdisk_disk_unref(d);
        vdisk_io_unref(base);
        vdisk_io_unref(top);
        vdisk_io_unref(top2);
}

static int resize(const char *path, const char *fmt, uint64_t size, const char *mode, uint32_t flags) {
        vdisk_disk *d = open_rw(path, fmt);
        vdisk_resize_opts o = { .size = sizeof o, .preallocation = mode, .flags = flags };
        int r;

        vdisk_clear_error();
        r = vdisk_resize_ex(d, size, &o, NULL);
        vdisk_disk_unref(d);
        return r;
}

static void test_resize(void) {
        _cleanup_free_ char *path = NULL, *qed = NULL;
        uint8_t buf[4096], back[4096];
        vdisk_disk *d;
        struct stat st;

        ASSERT_OK(create("r.raw", "raw", MiB, NULL, &path));
        ASSERT_OK(resize(path, "raw", 5 * MiB, "falloc", 0));
        ASSERT(allocated(path) >= 4 * MiB);
        ASSERT_OK(resize(path, "raw", 9 * MiB, "full", 0));
        ASSERT(allocated(path) >= 8 * MiB);
        ASSERT_ERR(resize(path, "raw", 10 * MiB, "metadata", 0), -EOPNOTSUPP);
        ASSERT_STREQ(vdisk_last_error(), "Unsupported preallocation mode: metadata");
        ASSERT_ERR(resize(path, "raw", 10 * MiB, "sparse", 0), -EINVAL);
        ASSERT_STREQ(vdisk_last_error(), "Invalid preallocation mode 'sparse'");
        ASSERT_ERR(resize(path, "raw", MiB, "falloc", VDISK_RESIZE_DISCARD_DATA), -EINVAL);
        ASSERT_STREQ(vdisk_last_error(), "Preallocation can only be used for growing images");

        /* data past the new end: refused, unless the caller consents */
        d = open_rw(path, "raw");
        memset(buf, 0x11, sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 0));
        memset(buf, 0x22, sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 7 * MiB));
        ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        ASSERT_ERR(resize(path, "raw", 2 * MiB, NULL, 0), -ENOTEMPTY);
        ASSERT(stat(path, &st) == 0);
        ASSERT_EQ_U64((uint64_t) st.st_size, 9 * MiB);
        ASSERT_OK(resize(path, "raw", 2 * MiB, "off", VDISK_RESIZE_DISCARD_DATA));
        ASSERT(stat(path, &st) == 0);
        ASSERT_EQ_U64((uint64_t) st.st_size, 2 * MiB);
        d = open_rw(path, "raw");
        ASSERT_OK(vdisk_disk_read(d, back, sizeof back, 0));
        memset(buf, 0x11, sizeof buf);
        ASSERT_MEMEQ(buf, back, sizeof buf);
        vdisk_disk_unref(d);

        /* QED: off only, in qemu's QED words */
        ASSERT_OK(create("r.qed", "qed", MiB, NULL, &qed));
        ASSERT_ERR(resize(qed, "qed", 2 * MiB, "falloc", 0), -EOPNOTSUPP);
        ASSERT_STREQ(vdisk_last_error(), "Unsupported preallocation mode 'falloc'");
        ASSERT_OK(resize(qed, "qed", 2 * MiB, "off", 0));
}

int main(void) {
        _cleanup_free_ char *cmd = NULL;

        ASSERT(mkdtemp(dir));
        test_raw_create();
        test_refusals();
        test_file_layer_noop();
        test_qcow2();
        test_qcow2_diff();
        test_resize();
        ASSERT(asprintf(&cmd, "rm -rf '%s'", dir) > 0);
        ASSERT(system(cmd) == 0);
        printf("prealloc: ok\n");
        return 0;
}
