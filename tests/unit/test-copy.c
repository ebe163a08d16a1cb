/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk_copy (VDCopyEx): resize on copy, the same-content shortcut for chain
 * clones, copies into a differencing destination (zeros must shadow the
 * parent), sparse output (zero data is never allocated), a source offset
 * (dd) and copies that skip what the destination's parent already holds,
 * and sources whose blocks lie in part in holes of their file (not read).
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests.h"

#define SIZE (8 * MiB)

static vdisk_copy_opts copy_opts(void) {
        vdisk_copy_opts o = { .size = sizeof o, .create = { .size = sizeof o.create },
                              .from_same = -1, .to_same = -1 };
        return o;
}

static void fill(vdisk_disk *d, uint64_t off, uint64_t len, uint8_t v) {
        uint8_t *buf = malloc(len);

        ASSERT(buf);
        memset(buf, v, len);
        ASSERT_OK(vdisk_disk_write(d, buf, len, off));
        free(buf);
}

static uint64_t allocated_bytes(vdisk_disk *d, unsigned depth) {
        uint64_t off = 0, total = 0, size = vdisk_disk_size(d);

        while (off < size) {
                vdisk_extent e;

                ASSERT_OK(vdisk_disk_block_status(d, off, size - off, &e));
                if ((e.flags & VDISK_EXTENT_DATA) && e.depth == (int) depth)
                        total += e.length;
                off += e.length;
        }
        return total;
}

static void assert_same_content(vdisk_disk *a, vdisk_disk *b) {
        uint64_t sa, sb;
        uint8_t *x = disk_read_all(a, &sa), *y = disk_read_all(b, &sb);

        ASSERT_EQ_U64(sa, sb);
        ASSERT(memcmp(x, y, sa) == 0);
        ASSERT(vdisk_compare(a, b, 0, NULL, NULL) == 0);
        free(x);
        free(y);
}

static void test_resize_on_copy(void) {
        vdisk_disk *src = disk_new(), *dst;
        vdisk_io *io;
        vdisk_copy_opts o;
        uint8_t *buf;
        uint64_t size;

        io = mem_io("src.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(src, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        fill(src, 0, 1 * MiB, 0x11);
        fill(src, SIZE - 512, 512, 0x22);

        /* grow: the new tail reads zeros */
        o = copy_opts();
        o.new_size = 2 * SIZE;
        dst = disk_new();
        io = mem_io("grown.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        buf = disk_read_all(dst, &size);
        ASSERT_EQ_U64(size, 2 * SIZE);
        ASSERT(buf[0] == 0x11 && buf[SIZE - 1] == 0x22 && buf_is_zero(buf + SIZE, SIZE));
        free(buf);
        vdisk_disk_unref(dst);

        /* shrink: a prefix */
        o = copy_opts();
        o.new_size = SIZE / 2;
        dst = disk_new();
        io = mem_io("prefix.raw", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "raw", &o, NULL));
        vdisk_io_unref(io);
        buf = disk_read_all(dst, &size);
        ASSERT_EQ_U64(size, SIZE / 2);
        ASSERT(buf[0] == 0x11 && buf[MiB] == 0);
        free(buf);
        vdisk_disk_unref(dst);
        vdisk_disk_unref(src);
}

/* A chain base <- diff is cloned: the destination already holds a copy of the
 * base, so only what the diff defines is copied into a new diff there. */
static void test_same_content(void) {
        vdisk_disk *src = disk_new(), *dst = disk_new(), *base_only = disk_new();
        vdisk_io *base_io, *diff_io, *io;
        vdisk_copy_opts o;

        base_io = mem_io("base.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(src, base_io, "vdi", SIZE, NULL));
        fill(src, 0, 4 * MiB, 0x33);
        diff_io = mem_io("diff.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_diff(src, diff_io, "vdi", NULL));
        fill(src, 1 * MiB, 512, 0x44);          /* one block defined by the diff */
        ASSERT_OK(vdisk_disk_discard(src, 3 * MiB, 1 * MiB));   /* and one zero block */
        ASSERT_OK(vdisk_disk_flush(src));

        /* the destination's base: a copy of the source's base */
        ASSERT_OK(vdisk_disk_open(base_only, base_io, "vdi", VDISK_OPEN_READONLY));
        io = mem_io("clone-base.vdi", NULL, 0);
        o = copy_opts();
        ASSERT_OK(vdisk_copy(base_only, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        vdisk_disk_unref(base_only);

        o = copy_opts();
        o.from_same = 0;
        o.to_same = 0;
        io = mem_io("clone-diff.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        ASSERT_EQ_U64(vdisk_disk_count(dst), 2);
        assert_same_content(src, dst);
        /* only the diff's data block was copied into the new diff */
        ASSERT_EQ_U64(allocated_bytes(dst, 0), 1 * MiB);

        /* out of range same-content indices are refused */
        o.from_same = 5;
        io = mem_io("bad.vdi", NULL, 0);
        ASSERT_FAILS(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);

        vdisk_io_unref(base_io);
        vdisk_io_unref(diff_io);
        vdisk_disk_unref(src);
        vdisk_disk_unref(dst);
}

/* Copies `src` into a new diff over a base full of data: every zero of the
 * source must shadow the base's data. */
static void assert_copies_over_data(vdisk_disk *src) {
        vdisk_disk *dst = disk_new();
        vdisk_copy_opts o = copy_opts();
        vdisk_io *io;

        io = mem_io("other-base.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(dst, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        fill(dst, 0, SIZE, 0x77);

        io = mem_io("over.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        ASSERT_EQ_U64(vdisk_disk_count(dst), 2);
        assert_same_content(src, dst);
        vdisk_disk_unref(dst);
}

/* A full copy into a destination that already has a different parent. */
static void test_copy_over_parent(void) {
        vdisk_disk *src = disk_new();
        vdisk_io *io;

        io = mem_io("src.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(src, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        fill(src, 2 * MiB, 4096, 0x55);
        assert_copies_over_data(src);
        vdisk_disk_unref(src);
}

/* Zero data in the source is not allocated in the destination. */
static void test_sparse(void) {
        vdisk_disk *src = disk_new(), *dst = disk_new();
        vdisk_io *io;
        vdisk_copy_opts o = copy_opts();

        io = mem_io("src.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(src, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        fill(src, 0, 2 * MiB, 0);          /* allocated, all zeros */
        fill(src, 5 * MiB + 4096, 4096, 0x66);

        io = mem_io("sparse.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        assert_same_content(src, dst);
        /* one block allocated; of it only the 4 KiB page was written */
        ASSERT_EQ_U64(allocated_bytes(dst, 0), 1 * MiB);
        vdisk_disk_unref(dst);
        vdisk_io_unref(io);
        vdisk_disk_unref(src);
}

/* dd: the copy starts at src_offset of the source; the destination's size
 * bounds what is copied, the source's end too. */
static void test_src_offset(void) {
        vdisk_disk *src = disk_new(), *dst;
        vdisk_io *io;
        vdisk_copy_opts o;
        uint8_t *buf, *want;
        uint64_t size, want_size;

        io = mem_io("src.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(src, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        fill(src, 0, 1 * MiB, 0x11);
        fill(src, 3 * MiB - 512, 1024, 0x22);     /* straddles the offset below */
        fill(src, SIZE - 4096, 4096, 0x33);
        want = disk_read_all(src, &want_size);

        /* an unaligned offset, up to the end of the source */
        o = copy_opts();
        o.src_offset = 3 * MiB - 512;
        o.new_size = SIZE - o.src_offset;
        dst = disk_new();
        io = mem_io("tail.raw", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "raw", &o, NULL));
        vdisk_io_unref(io);
        buf = disk_read_all(dst, &size);
        ASSERT_EQ_U64(size, o.new_size);
        ASSERT(memcmp(buf, want + o.src_offset, size) == 0);
        ASSERT(buf[0] == 0x22 && buf[1023] == 0x22 && buf[1024] == 0);
        free(buf);
        vdisk_disk_unref(dst);

        /* a destination larger than what is left: the rest reads zeros */
        o = copy_opts();
        o.src_offset = SIZE - 4096;
        o.new_size = 1 * MiB;
        dst = disk_new();
        io = mem_io("past.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        buf = disk_read_all(dst, &size);
        ASSERT_EQ_U64(size, 1 * MiB);
        ASSERT(buf[0] == 0x33 && buf[4095] == 0x33 && buf_is_zero(buf + 4096, size - 4096));
        free(buf);
        vdisk_disk_unref(dst);

        /* an offset past the end copies nothing; with same-content images it is refused */
        o = copy_opts();
        o.src_offset = 2 * SIZE;
        o.new_size = 1 * MiB;
        dst = disk_new();
        io = mem_io("none.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        ASSERT_EQ_U64(allocated_bytes(dst, 0), 0);
        vdisk_disk_unref(dst);

        free(want);
        vdisk_disk_unref(src);
}

/* VDISK_COPY_SKIP_SAME: a copy over a parent writes only the clusters that
 * differ from what the parent reads (convert -B of a modified copy). */
static void test_skip_same(void) {
        vdisk_disk *src = disk_new(), *dst = disk_new(), *plain = disk_new();
        vdisk_io *io, *base_io;
        vdisk_copy_opts o;

        /* the parent: data everywhere */
        base_io = mem_io("base.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(dst, base_io, "vdi", SIZE, NULL));
        fill(dst, 0, SIZE, 0x77);
        /* the source: the same data, but for one byte and one zeroed block */
        io = mem_io("src.vdi", NULL, 0);
        ASSERT_OK(vdisk_disk_create_base(src, io, "vdi", SIZE, NULL));
        vdisk_io_unref(io);
        fill(src, 0, SIZE, 0x77);
        fill(src, 5 * MiB + 100, 1, 0x78);
        fill(src, 2 * MiB, 1 * MiB, 0);

        o = copy_opts();
        o.flags = VDISK_COPY_SKIP_SAME;
        io = mem_io("diff.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, dst, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        ASSERT_EQ_U64(vdisk_disk_count(dst), 2);
        assert_same_content(src, dst);
        /* the block with the changed byte as data, the zeroed block as a
         * zero block (VDI marks it), nothing else */
        ASSERT_EQ_U64(allocated_bytes(dst, 0), 1 * MiB);

        /* without the flag, every block is written */
        ASSERT_OK(vdisk_disk_open(plain, base_io, "vdi", VDISK_OPEN_READONLY));
        o = copy_opts();
        io = mem_io("full.vdi", NULL, 0);
        ASSERT_OK(vdisk_copy(src, plain, io, "vdi", &o, NULL));
        vdisk_io_unref(io);
        assert_same_content(src, plain);
        ASSERT(allocated_bytes(plain, 0) > 1 * MiB);

        /* unknown flags are refused */
        o = copy_opts();
        o.flags = 1u << 31;
        io = mem_io("bad.vdi", NULL, 0);
        ASSERT_FAILS(vdisk_copy(src, plain, io, "vdi", &o, NULL));
        vdisk_io_unref(io);

        vdisk_io_unref(base_io);
        vdisk_disk_unref(plain);
        vdisk_disk_unref(src);
        vdisk_disk_unref(dst);
}

/* Bytes this process has read with read(2) and pread(2), all its threads
 * (the copy's reader too). */
static uint64_t bytes_read(void) {
        FILE *f = fopen("/proc/self/io", "r");
        char line[128];
        uint64_t v = UINT64_MAX;

        ASSERT(f);
        while (fgets(line, sizeof line, f))
                if (sscanf(line, "rchar: %" SCNu64, &v) == 1)
                        break;
        fclose(f);
        ASSERT(v != UINT64_MAX);
        return v;
}

/* A dynamic VHD whose block's bitmap says data over a hole of the file (as
 * qemu's vpc driver leaves a block it wrote in part): the copy does not read
 * the hole, and the hole reads zeros in the copy, also where a parent below
 * the destination holds data. */
static void test_host_holes(void) {
        const char *tmp = getenv("TMPDIR");
        vdisk_disk *src = disk_new(), *dst;
        vdisk_copy_opts o;
        char dir[4096], path[4200];
        uint8_t dyn[1024], ent[4];
        uint64_t bat, hole, before, n;
        vdisk_io *io;
        int fd;

        snprintf(dir, sizeof dir, "%s/vdisk-holes-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        ASSERT(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/src.vhd", dir);
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_WRITE | VDISK_PATH_CREATE, &io));
        ASSERT_OK(vdisk_disk_create_base(src, io, "vpc", SIZE, NULL));
        vdisk_io_unref(io);
        fill(src, 0, 4 * MiB, 0x5a);       /* blocks 0 and 1 (2 MiB), every bit set */
        ASSERT_OK(vdisk_disk_close(src));

        /* Punch 1 MiB out of block 1's data: BAT entry 1, past its bitmap
         * (512 bytes for 2 MiB), 4 KiB aligned. */
        fd = open(path, O_RDWR);
        ASSERT(fd >= 0);
        ASSERT(pread(fd, dyn, sizeof dyn, 512) == (ssize_t) sizeof dyn);
        bat = 0;
        for (int i = 0; i < 8; i++)
                bat = bat << 8 | dyn[16 + i];
        ASSERT(pread(fd, ent, 4, (off_t) bat + 4) == 4);
        hole = ((uint64_t) ent[0] << 24 | (uint64_t) ent[1] << 16 | ent[2] << 8 | ent[3]) * 512 + 512;
        hole = (hole + 4095) / 4096 * 4096;
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) hole, 1 * MiB) < 0 ||
            lseek(fd, (off_t) hole, SEEK_DATA) == (off_t) hole) {
                printf("# no holes here (%s): skipped\n", strerror(errno));
                close(fd);
                goto out;
        }
        close(fd);

        src = disk_new();
        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_READ, &io));
        ASSERT_OK(vdisk_disk_open(src, io, "vpc", VDISK_OPEN_READONLY));
        vdisk_io_unref(io);

        /* into a raw image: 3 MiB of data read, not 4 */
        o = copy_opts();
        dst = disk_new();
        io = mem_io("out.raw", NULL, 0);
        before = bytes_read();
        ASSERT_OK(vdisk_copy(src, dst, io, "raw", &o, NULL));
        n = bytes_read() - before;
        vdisk_io_unref(io);
        printf("# copy read %" PRIu64 " bytes\n", n);
        ASSERT(n < 3 * MiB + 64 * KiB);
        assert_same_content(src, dst);
        vdisk_disk_unref(dst);

        /* into a diff over data: the hole shadows it as zeros */
        assert_copies_over_data(src);
        vdisk_disk_unref(src);
out:
        ASSERT(unlink(path) == 0);
        ASSERT(rmdir(dir) == 0);
}

int main(void) {
        test_resize_on_copy();
        test_same_content();
        test_copy_over_parent();
        test_sparse();
        test_src_offset();
        test_skip_same();
        test_host_holes();
        printf("test-copy: all passed\n");
        return 0;
}
