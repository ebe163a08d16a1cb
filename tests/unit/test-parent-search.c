/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: finding parents by UUID from headers alone, and loops by file
 * identity.
 *
 * vdisk_peek_ids() reads an image's UUIDs from its head without opening it.
 * It must agree with a full open on every input: where an open succeeds, the
 * peek does too and reports the same UUIDs; where the open fails because of
 * the header (or a block map the file does not hold), the peek fails with the
 * same code. Checked on valid base and diff images, on truncations at every
 * header field and through the block map, on header field edits with the
 * codes vdisk.h fixes, and on a seeded bit-flip loop over the header sector.
 * A crafted header claiming a 64 MiB block map is peeked with at most 64 KiB
 * read.
 *
 * The path resolver (real files in a scratch directory): a 3-image chain is
 * found among decoys (not an image, a header cut short and a map cut short
 * that both carry the wanted UUID, a symlink to a copy of the parent outside
 * the directory, a directory and a FIFO with the extension); a hard link of
 * the parent is the same file (no -ENOTUNIQ), a real copy is -ENOTUNIQ. A
 * loop whose parent UUID leads back to the top is -ELOOP for being the same
 * file (st_dev, st_ino), whether the top was opened by its name, through a
 * hard link or through a symlink named differently.
 *
 * VHD's peek (footer copy and dynamic header; a fixed VHD through the core's
 * metadata-only open) agrees with an open on a VHD diff over a VDI, a dynamic
 * and a fixed base, their truncations and bit flips in the headers.
 *
 * VMDK's peek: a twoGbMaxExtentSparse parent renamed after its child was
 * made is found by its ddb.uuid.image (the extent files record no identity);
 * peek agrees with an open on a monolithicSparse diff, its truncations and
 * bit flips in the header and embedded descriptor; after a descriptor
 * file's text and NUL, the tail of an older text is accepted (qemu-img
 * leaves one) and a control byte is refused with its offset and value.
 *
 * Usage: test-parent-search [FUZZ_SEED [FUZZ_ITERATIONS]]
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests.h"
#include "vdi-layout.h"

static uint8_t *base_bytes, *diff_bytes;
static size_t base_len, diff_len;

static void make_samples(void) {
        vdisk_create_opts o = { .size = sizeof o, .block_size = 64 * KiB };
        vdisk_io *bio = mem_io("base.vdi", NULL, 0), *dio = mem_io("diff.vdi", NULL, 0);
        vdisk_disk *d = disk_new();
        uint8_t buf[4096];

        memset(buf, 0x5a, sizeof buf);
        ASSERT_OK(vdisk_disk_create_base(d, bio, "vdi", 1 * MiB, &o));
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 0));
        ASSERT_OK(vdisk_disk_create_diff(d, dio, "vdi", &o));
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 512 * KiB));
        vdisk_disk_unref(d);
        base_bytes = mem_io_copy(bio, &base_len);
        diff_bytes = mem_io_copy(dio, &diff_len);
        vdisk_io_unref(bio);
        vdisk_io_unref(dio);
}

/* ---------------------------------------------------------------- peek against open */

static unsigned n_compared, n_both_ok;

/* Peeks and opens `bytes` and checks that they agree. Returns the peek's result. */
static int peek_vs_open(const uint8_t *bytes, size_t len, const char *what) {
        vdisk_image_ids ids = { .size = sizeof ids };
        vdisk_io *io = mem_io("case.vdi", bytes, len);
        vdisk_disk *d = disk_new();
        int rp, ro;

        test_set_context("%s (%zu bytes)", what, len);
        vdisk_clear_error();
        rp = vdisk_peek_ids(io, "vdi", &ids);
        if (rp < 0)
                test_check_clean_error(__FILE__, __LINE__, "vdisk_peek_ids", rp);
        vdisk_clear_error();
        ro = vdisk_disk_open(d, io, "vdi", VDISK_OPEN_READONLY | VDISK_OPEN_INFO);
        if (ro < 0)
                test_check_clean_error(__FILE__, __LINE__, "vdisk_disk_open", ro);
        n_compared++;
        if (ro >= 0) {
                vdisk_image *img = vdisk_disk_image(d, 0);
                uint8_t u[16];

                if (rp < 0)
                        FAIL("the image opens but the peek fails with %d (%s)", rp, strerror(-rp));
                ASSERT(ids.mask & VDISK_IDS_UUID);
                ASSERT(ids.mask & VDISK_IDS_PARENT_UUID);
                ASSERT(ids.mask & VDISK_IDS_MODIFICATION_UUID);
                ASSERT(ids.mask & VDISK_IDS_PARENT_MOD_UUID);
                ASSERT_OK(vdisk_image_get_uuid(img, u));
                ASSERT_MEMEQ(ids.uuid, u, 16);
                ASSERT_OK(vdisk_image_get_parent_uuid(img, u));
                ASSERT_MEMEQ(ids.parent_uuid, u, 16);
                ASSERT_OK(vdisk_image_get_modification_uuid(img, u));
                ASSERT_MEMEQ(ids.modification_uuid, u, 16);
                ASSERT_OK(vdisk_image_get_parent_modification_uuid(img, u));
                ASSERT_MEMEQ(ids.parent_modification_uuid, u, 16);
                n_both_ok++;
        } else if (rp >= 0)
                FAIL("the peek accepts what open refuses with %d (%s)", ro, strerror(-ro));
        else if (rp != ro)
                FAIL("the peek fails with %d (%s), open with %d (%s)", rp, strerror(-rp), ro, strerror(-ro));
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        test_set_context("%s", "");
        return rp;
}

static int edited(const uint8_t *src, size_t len, size_t off, uint32_t v, const char *what) {
        uint8_t *b = malloc(len);
        int r;

        ASSERT(b);
        memcpy(b, src, len);
        vdi_put32(b, off, v);
        r = peek_vs_open(b, len, what);
        free(b);
        return r;
}

static void test_peek_cases(void) {
        vdisk_image_ids ids = { .size = sizeof ids }, bids = { .size = sizeof ids };
        vdi_header h;
        vdisk_io *io;
        uint64_t map_end;

        ASSERT_OK(peek_vs_open(base_bytes, base_len, "base"));
        ASSERT_OK(peek_vs_open(diff_bytes, diff_len, "diff"));
        io = mem_io("d.vdi", diff_bytes, diff_len);
        ASSERT_OK(vdisk_peek_ids(io, NULL, &ids));   /* probed */
        vdisk_io_unref(io);
        io = mem_io("b.vdi", base_bytes, base_len);
        ASSERT_OK(vdisk_peek_ids(io, "VDI", &bids));
        ASSERT_MEMEQ(ids.parent_uuid, bids.uuid, 16);
        ASSERT(vdisk_uuid_is_null(bids.parent_uuid));
        ids.size = 4;
        ASSERT_ERR(vdisk_peek_ids(io, "vdi", &ids), -EINVAL);
        ids.size = sizeof ids;
        ASSERT_ERR(vdisk_peek_ids(io, "no-such-format", &ids), -EMEDIUMTYPE);
        vdisk_io_unref(io);

        /* truncations: every 4 bytes through the header sector, every 512
         * through the map and a little past it */
        ASSERT(vdi_parse(base_bytes, base_len, &h) == 0);
        map_end = (uint64_t) h.off_blocks + (uint64_t) h.blocks * 4;
        ASSERT(map_end < base_len);
        for (size_t len = 0; len <= 512; len += 4)
                (void) peek_vs_open(base_bytes, len, "base cut in the header");
        for (size_t len = 512; len <= map_end + 1024 && len <= base_len; len += 512) {
                (void) peek_vs_open(base_bytes, len, "base cut in the map");
                (void) peek_vs_open(base_bytes, len - 1, "base cut in the map");
        }
        ASSERT_ERR(peek_vs_open(base_bytes, 0, "empty"), -EMEDIUMTYPE);
        ASSERT_ERR(peek_vs_open(base_bytes, VDI_OFF_SIGNATURE + 3, "no signature"), -EMEDIUMTYPE);
        ASSERT_ERR(peek_vs_open(base_bytes, 0x100, "header cut"), -EUCLEAN);
        ASSERT_ERR(peek_vs_open(base_bytes, (size_t) map_end - 1, "map cut"), -EUCLEAN);
        ASSERT_OK(peek_vs_open(base_bytes, (size_t) map_end, "map complete, no data"));

        /* field edits, with the codes vdisk.h fixes */
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_SIGNATURE, 0x12345678, "signature"), -EMEDIUMTYPE);
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_VERSION, 0x00020000, "version"), -EOPNOTSUPP);
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_HEADER_SIZE, 200, "header size"), -EOPNOTSUPP);
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_TYPE, 9, "type"), -EUCLEAN);
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_BLOCK_SIZE, 3000, "block size"), -EUCLEAN);
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_BLOCKS, h.blocks + 1, "block count"), -EUCLEAN);
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_BLOCKS_OFFSET, 256, "map offset"), -EUCLEAN);
        ASSERT_ERR(edited(base_bytes, base_len, VDI_OFF_SECTOR_SIZE, 4096, "sector size"), -EOPNOTSUPP);
        /* a map of 2^25 entries (128 MiB): too large, before anything is read */
        {
                uint8_t *b = malloc(base_len);

                ASSERT(b);
                memcpy(b, base_bytes, base_len);
                vdi_put64(b, VDI_OFF_DISK_SIZE, (UINT64_C(1) << 25) * h.block_size);
                vdi_put32(b, VDI_OFF_BLOCKS, UINT32_C(1) << 25);
                vdi_put32(b, VDI_OFF_DATA_OFFSET, UINT32_C(0xfffffe00));
                ASSERT_ERR(peek_vs_open(b, base_len, "map of 2^25 entries"), -EFBIG);
                free(b);
        }
}

static void test_peek_fuzz(uint64_t seed, unsigned iterations) {
        uint8_t *b = malloc(base_len);
        rng r;

        ASSERT(b);
        rng_seed(&r, seed);
        for (unsigned i = 0; i < iterations; i++) {
                const uint8_t *src = rng_chance(&r, 50) ? base_bytes : diff_bytes;
                size_t len = src == base_bytes ? base_len : diff_len;
                unsigned flips = (unsigned) rng_range(&r, 1, 4);
                char what[96];

                memcpy(b, src, len);
                for (unsigned k = 0; k < flips; k++) {
                        size_t off = (size_t) rng_below(&r, VDI_OFF_END_V1PLUS);
                        b[off] ^= (uint8_t) (1u << rng_below(&r, 8));
                }
                snprintf(what, sizeof what, "fuzz seed %" PRIu64 " iteration %u", seed, i);
                (void) peek_vs_open(b, len, what);
        }
        free(b);
}

/* An io that claims 512 + 64 MiB (a header whose block map is 64 MiB) and
 * serves the header and zeros, counting the bytes it is asked for. */
typedef struct claim_io {
        uint8_t header[512];
        uint64_t size, bytes_read;
} claim_io;

static int claim_pread(void *user, void *buf, size_t len, uint64_t off) {
        claim_io *c = user;

        if (off > c->size || len > c->size - off)
                return -EIO;
        c->bytes_read += len;
        memset(buf, 0, len);
        if (off < sizeof c->header)
                memcpy(buf, c->header + off, MIN(len, sizeof c->header - (size_t) off));
        return 0;
}

static int claim_get_size(void *user, uint64_t *ret) {
        *ret = ((claim_io *) user)->size;
        return 0;
}

static void test_peek_reads_the_head_only(void) {
        vdisk_io_ops ops = { .size = sizeof ops, .pread = claim_pread, .get_size = claim_get_size };
        vdisk_image_ids ids = { .size = sizeof ids };
        claim_io c = {};
        vdisk_io *io;
        uint8_t u[16];
        uint32_t n = (64u << 20) / 4;

        memcpy(c.header, base_bytes, sizeof c.header);
        vdi_put32(c.header, VDI_OFF_BLOCK_SIZE, 1u << 20);
        vdi_put32(c.header, VDI_OFF_BLOCKS, n);
        vdi_put64(c.header, VDI_OFF_DISK_SIZE, (uint64_t) n << 20);
        vdi_put32(c.header, VDI_OFF_BLOCKS_OFFSET, 512);
        vdi_put32(c.header, VDI_OFF_DATA_OFFSET, 512 + (64u << 20));
        vdi_put32(c.header, VDI_OFF_BLOCKS_ALLOCATED, 0);
        c.size = 512 + (64u << 20);
        ASSERT_OK(vdisk_io_new_ops(&ops, &c, "claims-64MiB-map.vdi", VDISK_IO_READONLY, &io));
        ASSERT_OK(vdisk_peek_ids(io, "vdi", &ids));
        memcpy(u, base_bytes + VDI_OFF_UUID_CREATE, 16);
        ASSERT_MEMEQ(ids.uuid, u, 16);
        if (c.bytes_read > 64 * KiB)
                FAIL("the peek read %" PRIu64 " bytes of a file whose header claims a 64 MiB map", c.bytes_read);
        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- the path resolver */

static char dir[256];

static char *path_of(const char *name) {
        return dir_path(dir, name);
}

static void write_file(const char *path, const uint8_t *b, size_t len) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        ASSERT(fd >= 0);
        ASSERT((size_t) write(fd, b, len) == len);
        ASSERT(close(fd) == 0);
}

/* A copy of `src` with the given UUID and parent UUID (NULL: keep). */
static void write_image(const char *name, const uint8_t *src, size_t len, const uint8_t *uuid,
                        const uint8_t *parent) {
        uint8_t *b = malloc(len);

        ASSERT(b);
        memcpy(b, src, len);
        memcpy(b + VDI_OFF_UUID_CREATE, uuid, 16);
        if (parent)
                memcpy(b + VDI_OFF_UUID_LINKAGE, parent, 16);
        write_file(path_of(name), b, len);
        free(b);
}

static void set_parent_uuid(const char *name, const uint8_t *parent) {
        int fd = open(path_of(name), O_WRONLY | O_CLOEXEC);

        ASSERT(fd >= 0);
        ASSERT(pwrite(fd, parent, 16, VDI_OFF_UUID_LINKAGE) == 16);
        ASSERT(close(fd) == 0);
}

/* Opens the chain whose top is dir/name with the path resolver. */
static int open_chain(const char *name, vdisk_disk **ret) {
        return open_chain_path(path_of(name), "vdi", VDISK_OPEN_READONLY, ret);
}

static void expect_chain(const char *top, const uint8_t (*uuids)[16], unsigned n) {
        vdisk_disk *d = NULL;

        ASSERT_OK(open_chain(top, &d));
        ASSERT_EQ_U64(vdisk_disk_count(d), n);
        for (unsigned i = 0; i < n; i++) {
                uint8_t u[16];

                ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, i), u));
                ASSERT_MEMEQ(u, uuids[i], 16);
        }
        vdisk_disk_unref(d);
}

static void expect_same_file_loop(const char *top, const char *also_named) {
        const char *e;

        ASSERT_ERR(open_chain(top, NULL), -ELOOP);
        e = vdisk_last_error();
        if (!strstr(e, "same file") || !strstr(e, top) || !strstr(e, also_named))
                FAIL("opening '%s': the loop is not reported as the same file named '%s' and '%s': \"%s\"",
                     top, top, also_named, e);
}

static void test_path_resolver(void) {
        static const uint8_t uuids[3][16] = {
                { 0xb0, 0x5e, [15] = 1 }, { 0x3d, 0x1d, [15] = 2 }, { 0x70, 0x9a, [15] = 3 },
        };
        const char *tmp = getenv("TMPDIR");
        char outside[300];
        uint8_t *b;

        snprintf(dir, sizeof dir, "%s/vdisk-parent-search-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        ASSERT(mkdtemp(dir));
        snprintf(outside, sizeof outside, "%s/../%s-outside.vdi", dir, strrchr(dir, '/') + 1);

        write_image("base.vdi", base_bytes, base_len, uuids[0], NULL);
        write_image("mid.vdi", diff_bytes, diff_len, uuids[1], uuids[0]);
        write_image("top.vdi", diff_bytes, diff_len, uuids[2], uuids[1]);

        /* decoys: none of them is taken, none makes the search ambiguous */
        write_file(path_of("garbage.vdi"), (const uint8_t *) "not an image\n", 13);
        b = malloc(base_len);
        ASSERT(b);
        memcpy(b, base_bytes, base_len);
        memcpy(b + VDI_OFF_UUID_CREATE, uuids[0], 16);
        write_file(path_of("header-cut.vdi"), b, 0x100);
        {
                vdi_header h;

                ASSERT(vdi_parse(base_bytes, base_len, &h) == 0);
                write_file(path_of("map-cut.vdi"), b, h.off_blocks + 4);
        }
        write_file(outside, b, base_len);   /* a second file with the base's UUID ... */
        free(b);
        ASSERT(symlink(outside, path_of("link-outside.vdi")) == 0);   /* ... behind a symlink */
        ASSERT(mkdir(path_of("a-directory.vdi"), 0755) == 0);
        ASSERT(mkfifo(path_of("a-fifo.vdi"), 0644) == 0);
        expect_chain("top.vdi", uuids, 3);

        /* a hard link of the base is the same file: still one candidate */
        ASSERT(link(path_of("base.vdi"), path_of("base-hardlink.vdi")) == 0);
        expect_chain("top.vdi", uuids, 3);
        /* a real copy is a second parent: ambiguous */
        write_image("base-copy.vdi", base_bytes, base_len, uuids[0], NULL);
        ASSERT_ERR(open_chain("top.vdi", NULL), -ENOTUNIQ);
        ASSERT(unlink(path_of("base-copy.vdi")) == 0);
        expect_chain("top.vdi", uuids, 3);

        /* a loop: the base names the top as its parent */
        set_parent_uuid("base.vdi", uuids[2]);
        expect_same_file_loop("top.vdi", "top.vdi");
        ASSERT(link(path_of("top.vdi"), path_of("top-hardlink.vdi")) == 0);
        expect_same_file_loop("top-hardlink.vdi", "same file");
        ASSERT(unlink(path_of("top-hardlink.vdi")) == 0);
        ASSERT(symlink("top.vdi", path_of("top-symlink.vdi")) == 0);
        expect_same_file_loop("top-symlink.vdi", "top.vdi");
        /* and a loop one level up: the mid names the top */
        set_parent_uuid("base.vdi", (const uint8_t[16]) {});
        set_parent_uuid("mid.vdi", uuids[2]);
        expect_same_file_loop("top-symlink.vdi", "top.vdi");

        {
                const char *names[] = { "base.vdi", "mid.vdi", "top.vdi", "garbage.vdi", "header-cut.vdi",
                                        "map-cut.vdi", "link-outside.vdi", "a-fifo.vdi", "base-hardlink.vdi",
                                        "top-symlink.vdi" };

                for (size_t i = 0; i < ELEMENTSOF(names); i++)
                        ASSERT(unlink(path_of(names[i])) == 0);
                ASSERT(rmdir(path_of("a-directory.vdi")) == 0);
                ASSERT(unlink(outside) == 0);
                ASSERT(rmdir(dir) == 0);
        }
}

/* ---------------------------------------------------------------- VHD peek */

/* vdisk_peek_ids agrees with an open of the image of `format` in `bytes`:
 * the same UUID and parent UUID where the open succeeds, the same error
 * where it fails. `strict`: both fields always reported (VHD records them
 * always); else a field the image does not record (VMDK without ddb.uuid.*)
 * may be left out, never reported wrong. Counts in n[0] (inputs) and n[1]
 * (opened). */
static void fmt_peek_vs_open(const uint8_t *bytes, size_t len, const char *format, bool strict, unsigned n[2],
                             const char *what) {
        vdisk_image_ids ids = { .size = sizeof ids };
        vdisk_io *io = mem_io("case.img", bytes, len);
        vdisk_disk *d = disk_new();
        int rp, ro;

        test_set_context("%s %s (%zu bytes)", format, what, len);
        vdisk_clear_error();
        rp = vdisk_peek_ids(io, format, &ids);
        if (rp < 0 && !strict)
                test_check_clean_error(__FILE__, __LINE__, "vdisk_peek_ids", rp);
        vdisk_clear_error();
        ro = vdisk_disk_open(d, io, format, VDISK_OPEN_READONLY | VDISK_OPEN_INFO | VDISK_OPEN_SKIP_CHECKS);
        n[0]++;
        if (ro >= 0) {
                vdisk_image *img = vdisk_disk_image(d, 0);
                uint8_t u[16];

                if (rp < 0)
                        FAIL("the image opens but the peek fails with %d (%s)", rp, strerror(-rp));
                if (strict) {
                        ASSERT(ids.mask & VDISK_IDS_UUID);
                        ASSERT(ids.mask & VDISK_IDS_PARENT_UUID);
                }
                if (vdisk_image_get_uuid(img, u) >= 0 && (strict || !vdisk_uuid_is_null(u))) {
                        ASSERT(ids.mask & VDISK_IDS_UUID);
                        ASSERT_MEMEQ(ids.uuid, u, 16);
                } else
                        ASSERT(!(ids.mask & VDISK_IDS_UUID) || vdisk_uuid_is_null(ids.uuid));
                if (vdisk_image_get_parent_uuid(img, u) >= 0 && (strict || !vdisk_uuid_is_null(u))) {
                        ASSERT(ids.mask & VDISK_IDS_PARENT_UUID);
                        ASSERT_MEMEQ(ids.parent_uuid, u, 16);
                } else
                        ASSERT(!(ids.mask & VDISK_IDS_PARENT_UUID));
                n[1]++;
        } else if (rp >= 0)
                FAIL("the peek accepts what open refuses with %d (%s)", ro, strerror(-ro));
        else if (rp != ro)
                FAIL("the peek fails with %d (%s), open with %d (%s)", rp, strerror(-rp), ro, strerror(-ro));
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        test_set_context("%s", "");
}

static unsigned vhd_n[2];
static void vhd_peek_vs_open(const uint8_t *bytes, size_t len, const char *what) {
        fmt_peek_vs_open(bytes, len, "vpc", true, vhd_n, what);
}

static void test_vhd_peek(void) {
        static const char *const fixed[] = { "subformat", "fixed", NULL };
        vdisk_create_opts o = { .size = sizeof o };
        vdisk_io *vdi = mem_io("p.vdi", NULL, 0), *dyn = mem_io("b.vhd", NULL, 0),
                 *fix = mem_io("f.vhd", NULL, 0), *diff = mem_io("d.vhd", NULL, 0),
                 *empty = mem_io("e.vhd", NULL, 0);
        /* e.vhd: a diff without data, small enough for the head to hold it
         * whole (peek answers from the head); the others are larger (the
         * core opens them metadata-only). */
        vdisk_io *const all[] = { dyn, fix, diff, empty };
        vdisk_image_ids ids = { .size = sizeof ids }, pids = { .size = sizeof pids };
        vdisk_disk *d = disk_new();
        uint8_t buf[4096];
        rng r;

        /* a VHD diff over a VDI (a mixed chain), a dynamic and a fixed base */
        memset(buf, 0x3c, sizeof buf);
        ASSERT_OK(vdisk_disk_create_base(d, vdi, "vdi", 4 * MiB, &o));
        ASSERT_OK(vdisk_disk_create_diff(d, diff, "vpc", &o));
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 3 * MiB));
        vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, vdi, "vdi", VDISK_OPEN_READONLY));
        ASSERT_OK(vdisk_disk_create_diff(d, empty, "vpc", &o));
        vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_create_base(d, dyn, "vpc", 4 * MiB, &o));
        vdisk_disk_unref(d);
        d = disk_new();
        o.options = fixed;
        ASSERT_OK(vdisk_disk_create_base(d, fix, "vpc", 4 * MiB, &o));
        vdisk_disk_unref(d);

        ASSERT_OK(vdisk_peek_ids(diff, NULL, &ids));   /* probed */
        ASSERT_OK(vdisk_peek_ids(vdi, "vdi", &pids));
        ASSERT_MEMEQ(ids.parent_uuid, pids.uuid, 16);
        ASSERT(!(ids.mask & VDISK_IDS_MODIFICATION_UUID));

        rng_seed(&r, 7);
        for (size_t k = 0; k < ELEMENTSOF(all); k++) {
                size_t len;
                uint8_t *b = mem_io_copy(all[k], &len);
                uint8_t *c = malloc(len);

                ASSERT(b && c);
                vhd_peek_vs_open(b, len, "as made");
                if (all[k] == empty)
                        ASSERT(len <= 64 * KiB);
                /* truncated: through the headers and BAT, sector by sector */
                for (size_t cut = 0; cut < MIN(len, (size_t) 8192); cut += 256)
                        vhd_peek_vs_open(b, cut, "truncated");
                /* bit flips in the footer copy and the dynamic header */
                for (unsigned i = 0; i < 400; i++) {
                        size_t at = (size_t) rng_below(&r, MIN(len, (size_t) 1536));

                        memcpy(c, b, len);
                        c[at] ^= (uint8_t) (1u << rng_below(&r, 8));
                        vhd_peek_vs_open(c, len, "bit flip");
                }
                free(b);
                free(c);
        }
        printf("VHD: peek and open agree on %u inputs (%u opened)\n", vhd_n[0], vhd_n[1]);
        vdisk_io_unref(vdi);
        vdisk_io_unref(dyn);
        vdisk_io_unref(fix);
        vdisk_io_unref(diff);
        vdisk_io_unref(empty);
}

/* ---------------------------------------------------------------- VMDK peek */

static unsigned vmdk_n[2];
static void vmdk_peek_vs_open(const uint8_t *bytes, size_t len, const char *what) {
        fmt_peek_vs_open(bytes, len, "vmdk", false, vmdk_n, what);
}

static void create_vmdk(const char *name, const char *subformat, const char *parent) {
        const char *opts[] = { "subformat", subformat, NULL };
        vdisk_create_opts o = { .size = sizeof o, .options = opts };
        vdisk_resolver *res = NULL;
        vdisk_disk *d = disk_new();
        vdisk_io *io = NULL, *pio = NULL;
        uint8_t buf[65536];

        ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
        o.resolver = res;
        ASSERT_OK(vdisk_io_open_path(path_of(name), VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC, &io));
        memset(buf, parent ? 0x77 : 0x66, sizeof buf);
        if (parent) {
                ASSERT_OK(vdisk_io_open_path(path_of(parent), VDISK_PATH_READ, &pio));
                ASSERT_OK(vdisk_disk_open_chain(d, res, pio, "vmdk", VDISK_OPEN_READONLY));
                vdisk_io_unref(pio);
                o.parent_name = parent;
                ASSERT_OK(vdisk_disk_create_diff(d, io, "vmdk", &o));
                ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 1 * MiB));
        } else {
                ASSERT_OK(vdisk_disk_create_base(d, io, "vmdk", 4 * MiB, &o));
                ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 0));
        }
        ASSERT_OK(vdisk_disk_close(d));
        vdisk_io_unref(io);
        vdisk_resolver_unref(res);
}


/* A split (twoGbMaxExtentSparse) parent renamed after its child was made is
 * found by its ddb.uuid.image: peek reads the descriptor file, the extent
 * files record no identity. Then peek against open on a monolithicSparse
 * diff: as made, truncated, bit flips in the header and the embedded
 * descriptor. */
static void test_vmdk_peek(void) {
        vdisk_image_ids ids = { .size = sizeof ids }, pids = { .size = sizeof pids };
        const char *tmp = getenv("TMPDIR");
        vdisk_resolver *res = NULL;
        vdisk_disk *d;
        vdisk_io *io = NULL;
        uint8_t *b, *c, buf[65536], want[65536];
        size_t len;
        rng r;

        snprintf(dir, sizeof dir, "%s/vdisk-vmdk-peek-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        ASSERT(mkdtemp(dir));
        create_vmdk("split.vmdk", "twoGbMaxExtentSparse", NULL);
        create_vmdk("top.vmdk", "monolithicSparse", "split.vmdk");

        ASSERT_OK(vdisk_io_open_path(path_of("split.vmdk"), VDISK_PATH_READ, &io));
        ASSERT_OK(vdisk_peek_ids(io, NULL, &pids));   /* probed */
        vdisk_io_unref(io);
        ASSERT(pids.mask & VDISK_IDS_UUID);
        ASSERT(!(pids.mask & VDISK_IDS_PARENT_UUID));
        ASSERT_OK(vdisk_io_open_path(path_of("split-s001.vmdk"), VDISK_PATH_READ, &io));
        ASSERT_OK(vdisk_peek_ids(io, "vmdk", &ids));
        vdisk_io_unref(io);
        ASSERT(ids.mask == 0);   /* an extent: no identity of its own */
        ASSERT_OK(vdisk_io_open_path(path_of("top.vmdk"), VDISK_PATH_READ, &io));
        ASSERT_OK(vdisk_peek_ids(io, "vmdk", &ids));
        ASSERT(ids.mask & VDISK_IDS_UUID);
        ASSERT(ids.mask & VDISK_IDS_PARENT_UUID);
        ASSERT_MEMEQ(ids.parent_uuid, pids.uuid, 16);

        /* the parent renamed: its name in the child leads nowhere, its UUID finds it */
        ASSERT(rename(path_of("split.vmdk"), path_of("renamed.vmdk")) == 0);
        ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
        d = disk_new();
        vdisk_clear_error();
        ASSERT_OK(vdisk_disk_open_chain(d, res, io, "vmdk", VDISK_OPEN_READONLY));
        ASSERT(vdisk_disk_count(d) == 2);
        memset(want, 0x66, sizeof want);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, 0));
        ASSERT_MEMEQ(buf, want, sizeof buf);
        memset(want, 0x77, sizeof want);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, 1 * MiB));
        ASSERT_MEMEQ(buf, want, sizeof buf);
        vdisk_disk_unref(d);
        vdisk_resolver_unref(res);
        vdisk_io_unref(io);

        /* peek against open: the diff (one file, embedded descriptor) */
        b = file_read_all(path_of("top.vmdk"), &len);
        c = malloc(len);
        ASSERT(c);
        vmdk_peek_vs_open(b, len, "as made");
        for (size_t cut = 0; cut < MIN(len, (size_t) 8192); cut += 128)
                vmdk_peek_vs_open(b, cut, "truncated");
        rng_seed(&r, 11);
        for (unsigned i = 0; i < 600; i++) {
                size_t at = (size_t) (i % 2 ? rng_below(&r, 80) : rng_below(&r, MIN(len, (size_t) 2048)));

                memcpy(c, b, len);
                c[at] ^= (uint8_t) (1u << rng_below(&r, 8));
                vmdk_peek_vs_open(c, len, "bit flip");
        }
        free(b);
        free(c);
        /* the descriptor file alone, and with bytes after its text */
        b = file_read_all(path_of("renamed.vmdk"), &len);
        vmdk_n[0]++;
        io = mem_io("d.vmdk", b, len);
        ASSERT_OK(vdisk_peek_ids(io, "vmdk", &ids));
        ASSERT_MEMEQ(ids.uuid, pids.uuid, 16);
        vdisk_io_unref(io);
        c = calloc(1, len + 16);
        ASSERT(c);
        memcpy(c, b, len);
        /* the tail of an older text after the NUL (qemu-img's CID renewal) */
        memcpy(c + len + 1, "647\"\r\n\t\xc3\xa9", 9);
        io = mem_io("d.vmdk", c, len + 16);
        ASSERT_OK(vdisk_peek_ids(io, "vmdk", &ids));
        ASSERT_MEMEQ(ids.uuid, pids.uuid, 16);
        vdisk_io_unref(io);
        c[len + 7] = 0x01;
        io = mem_io("d.vmdk", c, len + 16);
        vdisk_clear_error();
        ASSERT_ERR(vdisk_peek_ids(io, "vmdk", &ids), -EMEDIUMTYPE);
        ASSERT(strstr(vdisk_last_error(), "byte 0x01 at offset"));
        vdisk_io_unref(io);
        free(b);
        free(c);
        printf("VMDK: peek and open agree on %u inputs (%u opened)\n", vmdk_n[0], vmdk_n[1]);

        {
                const char *names[] = { "renamed.vmdk", "split-s001.vmdk", "split-s002.vmdk", "top.vmdk" };

                for (size_t i = 0; i < ELEMENTSOF(names); i++)
                        (void) unlink(path_of(names[i]));
                ASSERT(rmdir(dir) == 0);
        }
}

int main(int argc, char **argv) {
        uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 20240611;
        unsigned iterations = argc > 2 ? (unsigned) strtoul(argv[2], NULL, 0) : 3000;

        make_samples();
        test_peek_cases();
        test_peek_reads_the_head_only();
        test_peek_fuzz(seed, iterations);
        printf("peek and open agree on %u inputs (%u opened)\n", n_compared, n_both_ok);
        test_path_resolver();
        test_vhd_peek();
        test_vmdk_peek();
        free(base_bytes);
        free(diff_bytes);
        printf("ok\n");
        return 0;
}
