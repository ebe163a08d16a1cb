/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: the public API basics, on memory ios only.
 *
 * Creating raw and VDI (fixed and dynamic) images; every metadata getter and
 * setter and their persistence across a reopen; -EOPNOTSUPP for UUIDs on raw;
 * the backend table and vdisk_backend_find(); vdisk_probe() and the rule that a
 * writable open never picks raw; block status; read/write/discard edge cases;
 * UUID text form; chain linkage checks and warnings; error messages naming the
 * file; the memory and fault ios themselves; companion files (a split VMDK on
 * memory ios): vdisk_image_file_count()/_name() and VDISK_OPEN_LIST_FILES.
 */
#include <ctype.h>
#include <stddef.h>
#include <strings.h>

#include "tests.h"

static const uint8_t uuid_bytes[16] = {
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
};
/* VirtualBox's text form of those bytes: the first three fields are little-endian. */
static const char uuid_text[] = "33221100-5544-7766-8899-aabbccddeeff";

static void assert_error_names(const char *name) {
        if (!strstr(vdisk_last_error(), name))
                FAIL("the error message does not name the file \"%s\"", name);
}

/* ---------------------------------------------------------------- errors, version */

static void test_errors(void) {
        uint8_t u[16];

        ASSERT(vdisk_version());
        ASSERT(vdisk_version()[0] != '\0');
        vdisk_clear_error();
        ASSERT_STREQ(vdisk_last_error(), "");
        ASSERT_ERR(vdisk_uuid_parse("not a uuid", u), -EINVAL);
        vdisk_clear_error();
        ASSERT_STREQ(vdisk_last_error(), "");
}

/* ---------------------------------------------------------------- backends */

static int has_extension(const vdisk_backend_info *b, const char *ext) {
        for (const char *const *e = b->extensions; e && *e; e++)
                if (strcasecmp(*e, ext) == 0)
                        return 1;
        return 0;
}

static void test_backends(void) {
        size_t n = vdisk_backend_count();
        const vdisk_backend_info *vdi, *raw, *vhd = NULL;

        ASSERT(n >= 2);
        for (size_t i = 0; i < n; i++) {
                const vdisk_backend_info *b = vdisk_backend_get(i);
                char upper[64], lower[64];
                size_t k;

                ASSERT(b);
                ASSERT(b->name && b->name[0]);
                ASSERT(b->qemu_name && b->qemu_name[0]);
                ASSERT(b->extensions);
                ASSERT(vdisk_backend_find(b->name) == b);
                ASSERT(vdisk_backend_find(b->qemu_name) == b);
                for (k = 0; b->name[k] && k < sizeof upper - 1; k++) {
                        upper[k] = (char) toupper((unsigned char) b->name[k]);
                        lower[k] = (char) tolower((unsigned char) b->name[k]);
                }
                upper[k] = lower[k] = '\0';
                ASSERT(vdisk_backend_find(upper) == b);
                ASSERT(vdisk_backend_find(lower) == b);
                if (strcmp(b->name, "VHD") == 0)
                        vhd = b;
        }
        ASSERT(!vdisk_backend_get(n));

        vdi = vdisk_backend_find("VDI");
        ASSERT(vdi);
        ASSERT(vdisk_backend_find("vdi") == vdi);
        ASSERT(vdisk_backend_find("Vdi") == vdi);
        ASSERT_STREQ(vdi->name, "VDI");
        ASSERT_STREQ(vdi->qemu_name, "vdi");
        ASSERT(has_extension(vdi, "vdi"));
        ASSERT(vdi->media & VDISK_MEDIA_HDD);
        for (uint32_t cap = 1; cap; cap <<= 1) {
                uint32_t want = VDISK_CAP_UUID | VDISK_CAP_CREATE_FIXED | VDISK_CAP_CREATE_DYNAMIC |
                                VDISK_CAP_DIFF | VDISK_CAP_FILE | VDISK_CAP_DISCARD | VDISK_CAP_COMPACT |
                                VDISK_CAP_RESIZE | VDISK_CAP_CHECK;
                if ((want & cap) && !(vdi->caps & cap))
                        FAIL("the VDI backend lacks capability 0x%x (caps 0x%x)", cap, vdi->caps);
        }

        raw = vdisk_backend_find("raw");
        ASSERT(raw);
        ASSERT(raw != vdi);
        ASSERT(vdisk_backend_find("RAW") == raw);
        ASSERT_STREQ(raw->name, "RAW");
        ASSERT_STREQ(raw->qemu_name, "raw");
        ASSERT(!(raw->caps & VDISK_CAP_UUID));
        ASSERT(!(raw->caps & VDISK_CAP_DIFF));

        /* VHD is found exactly when the table has it (not yet: NULL). */
        ASSERT(vdisk_backend_find("VHD") == vhd);
        ASSERT(vdisk_backend_find("vpc") == vhd);
        ASSERT(!vdisk_backend_find("no-such-format"));
        ASSERT(!vdisk_backend_find(""));
        ASSERT(!vdisk_backend_find("vdi "));
}

/* ---------------------------------------------------------------- raw */

static void test_raw(void) {
        vdisk_io *io = mem_io("api-raw.img", NULL, 0), *io2;
        vdisk_disk *d = disk_new();
        vdisk_image *img;
        vdisk_image_info info = { .size = sizeof info };
        vdisk_extent e;
        uint8_t u[16] = { 1 }, buf[4096], back[4096];
        const char *comment;
        const void *data;
        size_t len;
        rng r;

        ASSERT_OK(vdisk_disk_create_base(d, io, "raw", 1 * MiB, NULL));
        ASSERT_EQ_U64(vdisk_disk_count(d), 1);
        ASSERT_EQ_U64(vdisk_disk_size(d), 1 * MiB);
        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        ASSERT_EQ_U64(len, 1 * MiB);
        img = vdisk_disk_image(d, 0);
        ASSERT(img);
        ASSERT(vdisk_image_backend(img) == vdisk_backend_find("raw"));
        ASSERT_STREQ(vdisk_image_name(img), "api-raw.img");
        ASSERT_EQ_U64(vdisk_image_index(img), 0);
        ASSERT_EQ_U64(vdisk_image_size(img), 1 * MiB);
        ASSERT(!vdisk_image_readonly(img));
        ASSERT_OK(vdisk_image_get_info(img, &info));
        ASSERT_EQ_U64(info.virtual_size, 1 * MiB);
        ASSERT_EQ_U64(info.cluster_size, 0);

        /* raw has no UUIDs and no comment */
        ASSERT_ERR(vdisk_image_get_uuid(img, u), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_get_modification_uuid(img, u), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_get_parent_uuid(img, u), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_get_parent_modification_uuid(img, u), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_set_uuid(img, uuid_bytes), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_set_modification_uuid(img, uuid_bytes), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_set_parent_uuid(img, uuid_bytes), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_set_parent_modification_uuid(img, uuid_bytes), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_get_comment(img, &comment), -EOPNOTSUPP);
        ASSERT_ERR(vdisk_image_set_comment(img, "x"), -EOPNOTSUPP);

        /* data lands at the same offset of the file */
        rng_seed(&r, 7);
        rng_fill(&r, buf, sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 64 * KiB + 512));
        ASSERT_OK(vdisk_disk_read(d, back, sizeof back, 64 * KiB + 512));
        ASSERT_MEMEQ(back, buf, sizeof buf);
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        ASSERT_MEMEQ((const uint8_t *) data + 64 * KiB + 512, buf, sizeof buf);

        ASSERT_OK(vdisk_disk_block_status(d, 0, 1 * MiB, &e));
        ASSERT_EQ_U64(e.offset, 0);
        ASSERT(e.length > 0 && e.length <= 1 * MiB);
        ASSERT(e.flags & VDISK_EXTENT_DATA);

        /* raw cannot be a differencing image */
        io2 = mem_io("api-raw-diff.img", NULL, 0);
        ASSERT_FAILS(vdisk_disk_create_diff(d, io2, "raw", NULL));
        ASSERT_EQ_U64(vdisk_disk_count(d), 1);
        vdisk_io_unref(io2);

        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- create arguments */

static void test_create_args(void) {
        static const char *const bad_option[] = { "no-such-key", "1", NULL };
        vdisk_create_opts o = { .size = sizeof o };
        vdisk_io *io = mem_io("api-create.vdi", NULL, 0);
        vdisk_disk *d = disk_new();
        const void *data;
        size_t len;

        ASSERT_FAILS(vdisk_disk_create_base(d, io, "vdi", 0, NULL));
        ASSERT_ERR(vdisk_disk_create_base(d, io, "no-such-format", 1 * MiB, NULL), -EMEDIUMTYPE);
        o.options = bad_option;
        ASSERT_ERR(vdisk_disk_create_base(d, io, "vdi", 1 * MiB, &o), -EINVAL);
        o.options = NULL;
        o.block_size = 3000;
        ASSERT_FAILS(vdisk_disk_create_base(d, io, "vdi", 1 * MiB, &o));
        ASSERT_EQ_U64(vdisk_disk_count(d), 0);
        /* nothing was left behind: the io is still empty and usable */
        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        ASSERT_EQ_U64(len, 0);
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 1 * MiB, NULL));
        ASSERT_EQ_U64(vdisk_disk_size(d), 1 * MiB);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- VDI metadata */

static void assert_geometry(const vdisk_geometry *g, uint32_t c, uint32_t h, uint32_t s) {
        if (g->cylinders != c || g->heads != h || g->sectors != s)
                FAIL("geometry %u/%u/%u, expected %u/%u/%u", g->cylinders, g->heads, g->sectors, c, h, s);
}

typedef struct meta_values {
        uint8_t uuid[16], mod[16], parent[16], parent_mod[16];
        char comment[256];
        vdisk_geometry pchs, lchs;
        uint32_t flags;
} meta_values;

static void get_all(vdisk_image *img, meta_values *m) {
        const char *comment = NULL;

        memset(m, 0, sizeof *m);
        ASSERT_OK(vdisk_image_get_uuid(img, m->uuid));
        ASSERT_OK(vdisk_image_get_modification_uuid(img, m->mod));
        ASSERT_OK(vdisk_image_get_parent_uuid(img, m->parent));
        ASSERT_OK(vdisk_image_get_parent_modification_uuid(img, m->parent_mod));
        ASSERT_OK(vdisk_image_get_comment(img, &comment));
        ASSERT(comment);
        ASSERT(strlen(comment) <= 255);
        strcpy(m->comment, comment);
        ASSERT_OK(vdisk_image_get_pchs(img, &m->pchs));
        ASSERT_OK(vdisk_image_get_lchs(img, &m->lchs));
        ASSERT_OK(vdisk_image_get_flags(img, &m->flags));
}

static void assert_meta_equal(const meta_values *a, const meta_values *b) {
        ASSERT_MEMEQ(a->uuid, b->uuid, 16);
        ASSERT_MEMEQ(a->mod, b->mod, 16);
        ASSERT_MEMEQ(a->parent, b->parent, 16);
        ASSERT_MEMEQ(a->parent_mod, b->parent_mod, 16);
        ASSERT_STREQ(a->comment, b->comment);
        assert_geometry(&a->pchs, b->pchs.cylinders, b->pchs.heads, b->pchs.sectors);
        assert_geometry(&a->lchs, b->lchs.cylinders, b->lchs.heads, b->lchs.sectors);
        ASSERT_EQ_U64(a->flags, b->flags);
}

static void test_vdi_metadata(void) {
        static const uint8_t u2[16] = { 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
        static const uint8_t u3[16] = { 0xca, 0xfe, 0xba, 0xbe, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13 };
        static const uint8_t u4[16] = { 0x12, 0x34, 0x56, 0x78, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14 };
        vdisk_create_opts o = {
                .size = sizeof o,
                .comment = "created by test-api",
                .uuid = uuid_bytes,
                .pchs = { 16, 16, 63 },
        };
        vdisk_io *io = mem_io("api-meta.vdi", NULL, 0);
        vdisk_disk *d = disk_new();
        vdisk_image *img;
        vdisk_image_info info = { .size = sizeof info };
        vdisk_geometry g;
        meta_values m, after;
        const char *comment;
        char c255[256], c300[301];
        uint32_t version, flags;
        int r;

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 8 * MiB, &o));
        img = vdisk_disk_image(d, 0);
        ASSERT(vdisk_image_backend(img) == vdisk_backend_find("vdi"));
        get_all(img, &m);
        ASSERT_MEMEQ(m.uuid, uuid_bytes, 16);
        ASSERT(!vdisk_uuid_is_null(m.mod));
        ASSERT(vdisk_uuid_is_null(m.parent));
        ASSERT(vdisk_uuid_is_null(m.parent_mod));
        ASSERT_STREQ(m.comment, "created by test-api");
        assert_geometry(&m.pchs, 16, 16, 63);
        ASSERT(!(m.flags & (VDISK_IMAGE_FLAGS_FIXED | VDISK_IMAGE_FLAGS_DIFF)));
        ASSERT_OK(vdisk_image_get_version(img, &version));
        ASSERT_EQ_U64(version, 0x00010001);

        ASSERT_OK(vdisk_image_get_info(img, &info));
        ASSERT_EQ_U64(info.virtual_size, 8 * MiB);
        ASSERT_EQ_U64(info.cluster_size, 1 * MiB);
        ASSERT_EQ_U64(info.blocks_total, 8);
        ASSERT_EQ_U64(info.blocks_allocated, 0);
        ASSERT(info.variant && info.variant[0]);
        ASSERT(info.file_size < 8 * MiB);
        ASSERT(!info.dirty);

        /* setters */
        ASSERT_OK(vdisk_image_set_uuid(img, u2));
        ASSERT_OK(vdisk_image_set_modification_uuid(img, u3));
        ASSERT_OK(vdisk_image_set_parent_uuid(img, u4));
        ASSERT_OK(vdisk_image_set_parent_modification_uuid(img, uuid_bytes));
        ASSERT_OK(vdisk_image_set_comment(img, NULL));
        ASSERT_OK(vdisk_image_get_comment(img, &comment));
        ASSERT_STREQ(comment, "");
        ASSERT_OK(vdisk_image_set_comment(img, "short"));
        ASSERT_OK(vdisk_image_get_comment(img, &comment));
        ASSERT_STREQ(comment, "short");
        memset(c255, 'a', 255);
        c255[0] = 'B';
        c255[254] = 'Z';
        c255[255] = '\0';
        ASSERT_OK(vdisk_image_set_comment(img, c255));
        ASSERT_OK(vdisk_image_get_comment(img, &comment));
        ASSERT_STREQ(comment, c255);
        /* Too long for the 256-byte field (vdisk.h does not say whether it is
         * refused or truncated): either -EINVAL-style refusal that keeps the old
         * comment, or a stored prefix of at most 255 bytes. */
        memset(c300, 'q', 300);
        c300[300] = '\0';
        r = vdisk_image_set_comment(img, c300);
        ASSERT_OK(vdisk_image_get_comment(img, &comment));
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, "set_comment(300 bytes)", r);
                ASSERT_STREQ(comment, c255);
        } else {
                ASSERT(strlen(comment) <= 255);
                ASSERT(strncmp(comment, c300, strlen(comment)) == 0);
                ASSERT_OK(vdisk_image_set_comment(img, c255));
        }
        g = (vdisk_geometry) { 1024, 16, 63 };
        ASSERT_OK(vdisk_image_set_pchs(img, &g));
        g = (vdisk_geometry) { 1024, 255, 63 };
        ASSERT_OK(vdisk_image_set_lchs(img, &g));
        /* (a parent UUID may have made the image a diff: keep the other bits) */
        ASSERT_OK(vdisk_image_get_flags(img, &flags));
        ASSERT(!(flags & VDISK_IMAGE_FLAGS_ZERO_EXPAND));
        ASSERT_OK(vdisk_image_set_flags(img, flags | VDISK_IMAGE_FLAGS_ZERO_EXPAND));
        ASSERT_OK(vdisk_image_get_flags(img, &flags));
        ASSERT(flags & VDISK_IMAGE_FLAGS_ZERO_EXPAND);
        /* only ZERO_EXPAND may change */
        ASSERT_FAILS(vdisk_image_set_flags(img, flags | VDISK_IMAGE_FLAGS_FIXED));
        ASSERT_OK(vdisk_image_get_flags(img, &flags));
        ASSERT(!(flags & VDISK_IMAGE_FLAGS_FIXED));

        get_all(img, &m);
        ASSERT_MEMEQ(m.uuid, u2, 16);
        ASSERT_MEMEQ(m.mod, u3, 16);
        ASSERT_MEMEQ(m.parent, u4, 16);
        ASSERT_MEMEQ(m.parent_mod, uuid_bytes, 16);
        ASSERT_STREQ(m.comment, c255);
        assert_geometry(&m.pchs, 1024, 16, 63);
        assert_geometry(&m.lchs, 1024, 255, 63);
        ASSERT(m.flags & VDISK_IMAGE_FLAGS_ZERO_EXPAND);

        /* everything persists (the parent UUID makes the image link to a parent
         * we do not have, so reopen with SKIP_CHECKS) */
        d = vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "vdi", VDISK_OPEN_SKIP_CHECKS));
        get_all(vdisk_disk_image(d, 0), &after);
        assert_meta_equal(&after, &m);

        /* clearing ZERO_EXPAND persists too; read-only images refuse setters */
        ASSERT_OK(vdisk_image_set_flags(vdisk_disk_image(d, 0),
                                        m.flags & ~(uint32_t) VDISK_IMAGE_FLAGS_ZERO_EXPAND));
        d = vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "vdi", VDISK_OPEN_READONLY | VDISK_OPEN_SKIP_CHECKS));
        img = vdisk_disk_image(d, 0);
        ASSERT(vdisk_image_readonly(img));
        ASSERT_OK(vdisk_image_get_flags(img, &flags));
        ASSERT(!(flags & VDISK_IMAGE_FLAGS_ZERO_EXPAND));
        ASSERT_ERR(vdisk_image_set_comment(img, "read-only"), -EROFS);
        ASSERT_ERR(vdisk_image_set_uuid(img, u3), -EROFS);

        /* metadata-only open: metadata yes, data no */
        d = vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "vdi", VDISK_OPEN_INFO | VDISK_OPEN_SKIP_CHECKS));
        get_all(vdisk_disk_image(d, 0), &after);
        ASSERT_MEMEQ(after.uuid, u2, 16);
        {
                uint8_t sector[512];
                ASSERT_FAILS(vdisk_disk_read(d, sector, sizeof sector, 0));
        }
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- VDI fixed */

static void test_vdi_fixed(void) {
        vdisk_create_opts o = { .size = sizeof o, .image_flags = VDISK_IMAGE_FLAGS_FIXED };
        vdisk_io *io = mem_io("api-fixed.vdi", NULL, 0);
        vdisk_disk *d = disk_new();
        vdisk_image *img;
        vdisk_image_info info = { .size = sizeof info };
        vdisk_extent e;
        uint8_t *all, buf[8192];
        uint64_t size, fsize;
        uint32_t flags;
        int r;

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 4 * MiB, &o));
        img = vdisk_disk_image(d, 0);
        ASSERT_OK(vdisk_image_get_flags(img, &flags));
        ASSERT(flags & VDISK_IMAGE_FLAGS_FIXED);
        ASSERT_OK(vdisk_image_get_info(img, &info));
        ASSERT_EQ_U64(info.blocks_total, 4);
        ASSERT_EQ_U64(info.blocks_allocated, 4);
        ASSERT_OK(vdisk_image_file_size(img, &fsize));
        ASSERT(fsize >= 4 * MiB + 512);

        all = disk_read_all(d, &size);
        ASSERT_EQ_U64(size, 4 * MiB);
        ASSERT(buf_is_zero(all, size));
        free(all);
        ASSERT_OK(vdisk_disk_block_status(d, 1 * MiB, 3 * MiB, &e));
        ASSERT_EQ_U64(e.offset, 1 * MiB);
        ASSERT(e.flags & VDISK_EXTENT_ALLOCATED);

        memset(buf, 0xab, sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 3 * MiB - 4096));
        /* a fixed image does not grow */
        ASSERT_OK(vdisk_disk_flush(d));
        {
                uint64_t after;
                ASSERT_OK(vdisk_image_file_size(img, &after));
                ASSERT_EQ_U64(after, fsize);
        }

        /* FIXED cannot be dropped; ZERO_EXPAND can be added */
        r = vdisk_image_set_flags(img, VDISK_IMAGE_FLAGS_ZERO_EXPAND);
        if (r < 0)
                test_check_clean_error(__FILE__, __LINE__, "set_flags(ZERO_EXPAND) on a fixed image", r);
        ASSERT_OK(vdisk_image_set_flags(img, VDISK_IMAGE_FLAGS_FIXED | VDISK_IMAGE_FLAGS_ZERO_EXPAND));
        ASSERT_OK(vdisk_image_get_flags(img, &flags));
        ASSERT(flags & VDISK_IMAGE_FLAGS_FIXED);
        ASSERT(flags & VDISK_IMAGE_FLAGS_ZERO_EXPAND);

        d = vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, NULL, 0));
        img = vdisk_disk_image(d, 0);
        ASSERT_OK(vdisk_image_get_flags(img, &flags));
        ASSERT(flags & VDISK_IMAGE_FLAGS_FIXED);
        {
                uint8_t back[sizeof buf];
                ASSERT_OK(vdisk_disk_read(d, back, sizeof back, 3 * MiB - 4096));
                ASSERT_MEMEQ(back, buf, sizeof buf);
        }
        ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(d, 0), 0);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- block status */

static void test_block_status(void) {
        vdisk_io *io = mem_io("api-status.vdi", NULL, 0);
        vdisk_disk *d = disk_new();
        vdisk_extent e;
        uint8_t buf[4096];
        const void *data;
        size_t len;

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 8 * MiB, NULL));

        /* a fresh image: one extent, zeros, nothing allocated */
        ASSERT_OK(vdisk_disk_block_status(d, 0, 8 * MiB, &e));
        ASSERT_EQ_U64(e.offset, 0);
        ASSERT_EQ_U64(e.length, 8 * MiB);
        ASSERT(e.flags & VDISK_EXTENT_ZERO);
        ASSERT(!(e.flags & VDISK_EXTENT_DATA));
        ASSERT(!(e.flags & VDISK_EXTENT_ALLOCATED));
        ASSERT_EQ_U64((uint64_t) e.depth, (uint64_t) -1);
        ASSERT_OK(vdisk_disk_block_status(d, 512, 4096, &e));
        ASSERT_EQ_U64(e.offset, 512);
        ASSERT_EQ_U64(e.length, 4096);

        /* 4 KiB of data in block 1 */
        memset(buf, 0x5c, sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 1 * MiB + 8192));
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_disk_block_status(d, 0, 8 * MiB, &e));
        ASSERT_EQ_U64(e.length, 1 * MiB);
        ASSERT(!(e.flags & VDISK_EXTENT_DATA));
        ASSERT_OK(vdisk_disk_block_status(d, 1 * MiB, 7 * MiB, &e));
        ASSERT_EQ_U64(e.offset, 1 * MiB);
        ASSERT_EQ_U64(e.length, 1 * MiB);
        ASSERT(e.flags & VDISK_EXTENT_DATA);
        ASSERT(e.flags & VDISK_EXTENT_ALLOCATED);
        ASSERT(!(e.flags & VDISK_EXTENT_ZERO));
        ASSERT_EQ_U64(e.depth, 0);
        ASSERT(e.host_offset_valid);
        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        ASSERT(e.host_offset + 1 * MiB <= len || e.host_offset + 8192 + sizeof buf <= len);
        ASSERT_MEMEQ((const uint8_t *) data + e.host_offset + 8192, buf, sizeof buf);
        ASSERT(buf_is_zero((const uint8_t *) data + e.host_offset, 8192));
        ASSERT_OK(vdisk_disk_block_status(d, 2 * MiB, 6 * MiB, &e));
        ASSERT_EQ_U64(e.length, 6 * MiB);
        ASSERT(!(e.flags & VDISK_EXTENT_ALLOCATED));

        /* discarded: reads zeros; a block that stays mapped holds zeros in the file */
        ASSERT_OK(vdisk_disk_discard(d, 1 * MiB, 1 * MiB));
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, 1 * MiB + 8192));
        ASSERT(buf_is_zero(buf, sizeof buf));
        ASSERT_OK(vdisk_disk_flush(d));
        ASSERT_OK(vdisk_disk_block_status(d, 1 * MiB, 1 * MiB, &e));
        ASSERT_EQ_U64(e.offset, 1 * MiB);
        if (e.flags & VDISK_EXTENT_DATA) {
                ASSERT(e.host_offset_valid);
                ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
                ASSERT(buf_is_zero((const uint8_t *) data + e.host_offset,
                                   (size_t) MIN(e.length, len - e.host_offset)));
        } else
                ASSERT(e.flags & VDISK_EXTENT_ZERO);

        /* out of range */
        ASSERT_FAILS(vdisk_disk_block_status(d, 8 * MiB, 512, &e));
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- probe */

static void test_probe(void) {
        const vdisk_backend_info *vdi = vdisk_backend_find("vdi"), *raw = vdisk_backend_find("raw"), *b;
        vdisk_io *vio = mem_io("api-probe.vdi", NULL, 0), *zio, *eio;
        vdisk_disk *d = disk_new();
        uint8_t *zeros = calloc(1, 1 * MiB);
        int guessed = -1;

        ASSERT(zeros);
        ASSERT_OK(vdisk_disk_create_base(d, vio, "vdi", 2 * MiB, NULL));
        d = vdisk_disk_unref(d);

        b = NULL;
        ASSERT_OK(vdisk_probe(vio, "api-probe.vdi", 0, &b, &guessed));
        ASSERT(b == vdi);
        b = NULL;
        guessed = -1;
        ASSERT_OK(vdisk_probe(vio, NULL, 1, &b, &guessed));
        ASSERT(b == vdi);
        ASSERT_EQ_U64(guessed, 0);

        zio = mem_io("api-zeros.img", zeros, 1 * MiB);
        b = NULL;
        ASSERT_ERR(vdisk_probe(zio, NULL, 0, &b, &guessed), -EMEDIUMTYPE);
        ASSERT(!b);
        ASSERT_OK(vdisk_probe(zio, NULL, 1, &b, &guessed));
        ASSERT(b == raw);
        ASSERT_EQ_U64(guessed, 1);
        eio = mem_io("api-empty.img", NULL, 0);
        ASSERT_ERR(vdisk_probe(eio, NULL, 0, &b, &guessed), -EMEDIUMTYPE);
        vdisk_io_unref(eio);

        /* format NULL: VDI is found; raw never for a writable open */
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, vio, NULL, 0));
        ASSERT(vdisk_image_backend(vdisk_disk_image(d, 0)) == vdi);
        d = vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_ERR(vdisk_disk_open(d, zio, NULL, 0), -EMEDIUMTYPE);
        ASSERT_FAILS(vdisk_disk_open(d, zio, NULL, VDISK_OPEN_ALLOW_PROBE_RAW));
        ASSERT_EQ_U64(vdisk_disk_count(d), 0);
        ASSERT_OK(vdisk_disk_open(d, zio, NULL, VDISK_OPEN_READONLY | VDISK_OPEN_ALLOW_PROBE_RAW));
        ASSERT(vdisk_image_backend(vdisk_disk_image(d, 0)) == raw);
        ASSERT(vdisk_disk_readonly(d));
        ASSERT_EQ_U64(vdisk_disk_size(d), 1 * MiB);
        d = vdisk_disk_unref(d);

        /* unknown format names */
        d = disk_new();
        ASSERT_ERR(vdisk_disk_open(d, vio, "no-such-format", 0), -EMEDIUMTYPE);
        /* a VDI opened explicitly as raw is read as raw bytes */
        ASSERT_OK(vdisk_disk_open(d, vio, "raw", VDISK_OPEN_READONLY));
        {
                const void *data;
                size_t len;
                uint8_t head[512];

                ASSERT_OK(vdisk_io_memory_data(vio, &data, &len));
                ASSERT_EQ_U64(vdisk_disk_size(d), len);
                ASSERT_OK(vdisk_disk_read(d, head, sizeof head, 0));
                ASSERT_MEMEQ(head, data, sizeof head);
        }
        vdisk_disk_unref(d);
        vdisk_io_unref(zio);
        vdisk_io_unref(vio);
        free(zeros);
}

/* ---------------------------------------------------------------- I/O edge cases */

static void test_io_edges(void) {
        vdisk_io *io = mem_io("api-edges.vdi", NULL, 0);
        vdisk_disk *d = disk_new();
        uint64_t size = 8 * MiB;
        uint8_t buf[1024], back[1024];
        int r;

        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", size, NULL));
        memset(buf, 0x77, sizeof buf);

        /* length 0: a no-op or -EINVAL, never a crash */
        r = vdisk_disk_read(d, back, 0, 0);
        ASSERT(r == 0 || r == -EINVAL);
        r = vdisk_disk_write(d, buf, 0, 4096);
        ASSERT(r == 0 || r == -EINVAL);
        r = vdisk_disk_discard(d, 4096, 0);
        ASSERT(r == 0 || r == -EINVAL);
        r = vdisk_disk_read(d, back, 0, size);
        ASSERT(r == 0 || r == -EINVAL);

        /* past the end, straddling the end, wrapping around */
        ASSERT_FAILS(vdisk_disk_read(d, back, 512, size));
        ASSERT_FAILS(vdisk_disk_read(d, back, 1024, size - 512));
        ASSERT_FAILS(vdisk_disk_write(d, buf, 512, size));
        ASSERT_FAILS(vdisk_disk_write(d, buf, 1024, size - 512));
        ASSERT_FAILS(vdisk_disk_discard(d, size, 512));
        ASSERT_FAILS(vdisk_disk_discard(d, size - 512, 1024));
        ASSERT_FAILS(vdisk_disk_read(d, back, 512, UINT64_MAX - 100));
        ASSERT_FAILS(vdisk_disk_write(d, buf, 512, UINT64_MAX - 100));
        ASSERT_FAILS(vdisk_disk_discard(d, UINT64_MAX - 100, 512));
        ASSERT_FAILS(vdisk_disk_discard(d, 512, UINT64_MAX - 100));
        /* the refused write did not touch the last sector */
        ASSERT_OK(vdisk_disk_read(d, back, 512, size - 512));
        ASSERT(buf_is_zero(back, 512));

        /* the last sector and the first one work */
        ASSERT_OK(vdisk_disk_write(d, buf, 512, size - 512));
        ASSERT_OK(vdisk_disk_read(d, back, 512, size - 512));
        ASSERT_MEMEQ(back, buf, 512);
        ASSERT_OK(vdisk_disk_write(d, buf, 512, 0));

        /* byte-granular I/O: either supported exactly or refused with -EINVAL */
        r = vdisk_disk_write(d, "xyz", 3, 1 * MiB + 1);
        if (r == 0) {
                ASSERT_OK(vdisk_disk_read(d, back, 5, 1 * MiB));
                ASSERT_MEMEQ(back, "\0xyz\0", 5);
        } else
                ASSERT_ERR(r, -EINVAL);

        /* read-only */
        d = vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "vdi", VDISK_OPEN_READONLY));
        ASSERT(vdisk_disk_readonly(d));
        ASSERT_ERR(vdisk_disk_write(d, buf, 512, 0), -EROFS);
        ASSERT_ERR(vdisk_disk_discard(d, 0, 1 * MiB), -EROFS);
        ASSERT_OK(vdisk_disk_read(d, back, 512, size - 512));
        ASSERT_MEMEQ(back, buf, 512);
        ASSERT_FAILS(vdisk_resize(d, 2 * size, NULL));
        vdisk_disk_unref(d);

        /* a read-only io refuses a writable open (or at least every write) */
        {
                const void *data;
                size_t len;
                vdisk_io *rio;

                ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
                ASSERT_OK(vdisk_io_new_memory(data, len, "api-ro.vdi", VDISK_IO_READONLY, &rio));
                ASSERT(vdisk_io_readonly(rio));
                d = disk_new();
                r = vdisk_disk_open(d, rio, "vdi", 0);
                if (r == 0)
                        ASSERT_ERR(vdisk_disk_write(d, buf, 512, 0), -EROFS);
                else
                        ASSERT_ERR(r, -EROFS);
                vdisk_disk_unref(d);
                vdisk_io_unref(rio);
        }
        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- UUIDs */

static void test_uuid(void) {
        static const char *const bad[] = {
                "",
                "33221100-5544-7766-8899-aabbccddeef",
                "33221100-5544-7766-8899-aabbccddeeff0",
                "3322110g-5544-7766-8899-aabbccddeeff",
                "33221100x5544-7766-8899-aabbccddeeff",
                "332211005544-7766-8899-aabbccddeeff0",
                " 33221100-5544-7766-8899-aabbccddeeff",
        };
        uint8_t u[16], v[16];
        char text[37], upper[37];

        vdisk_uuid_format(uuid_bytes, text);
        ASSERT_EQ_U64(strlen(text), 36);
        if (strcasecmp(text, uuid_text) != 0)
                FAIL("uuid text \"%s\", expected \"%s\"", text, uuid_text);
        ASSERT_OK(vdisk_uuid_parse(text, u));
        ASSERT_MEMEQ(u, uuid_bytes, 16);
        for (size_t i = 0; i < sizeof upper; i++)
                upper[i] = (char) toupper((unsigned char) uuid_text[i]);
        ASSERT_OK(vdisk_uuid_parse(upper, u));
        ASSERT_MEMEQ(u, uuid_bytes, 16);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                memcpy(v, uuid_bytes, 16);
                if (vdisk_uuid_parse(bad[i], v) != -EINVAL)
                        FAIL("vdisk_uuid_parse(\"%s\") did not fail with -EINVAL", bad[i]);
                ASSERT_MEMEQ(v, uuid_bytes, 16);
        }

        memset(u, 0, 16);
        ASSERT(vdisk_uuid_is_null(u));
        u[15] = 1;
        ASSERT(!vdisk_uuid_is_null(u));

        vdisk_uuid_generate(u);
        vdisk_uuid_generate(v);
        ASSERT(!vdisk_uuid_is_null(u));
        ASSERT(memcmp(u, v, 16) != 0);
        vdisk_uuid_format(u, text);
        ASSERT_OK(vdisk_uuid_parse(text, v));
        ASSERT_MEMEQ(u, v, 16);
        ASSERT(text[8] == '-' && text[13] == '-' && text[18] == '-' && text[23] == '-');
}

/* ---------------------------------------------------------------- chains */

static void test_chain_linkage(void) {
        vdisk_io *base = mem_io("api-base.vdi", NULL, 0), *diff = mem_io("api-diff.vdi", NULL, 0);
        vdisk_io *other = mem_io("api-other.vdi", NULL, 0), *io;
        vdisk_disk *d = disk_new();
        uint8_t bu[16], bmod[16], du[16], dp[16], dpm[16], u[16];
        uint8_t buf[4096], back[4096];
        const char *pname = NULL, *pformat = NULL;
        const char *const *w;
        uint32_t flags;
        size_t n_warn = 0;
        int r;

        ASSERT_FAILS(vdisk_disk_create_diff(d, diff, "vdi", NULL));
        ASSERT_FAILS(vdisk_disk_close_top(d));

        ASSERT_OK(vdisk_disk_create_base(d, base, "vdi", 4 * MiB, NULL));
        /* create_base wants an empty container */
        io = mem_io("api-second-base.vdi", NULL, 0);
        ASSERT_FAILS(vdisk_disk_create_base(d, io, "vdi", 4 * MiB, NULL));
        ASSERT_EQ_U64(vdisk_disk_count(d), 1);
        vdisk_io_unref(io);

        memset(buf, 0x42, sizeof buf);
        ASSERT_OK(vdisk_disk_write(d, buf, sizeof buf, 0));
        ASSERT_OK(vdisk_disk_create_diff(d, diff, "vdi", NULL));
        ASSERT_EQ_U64(vdisk_disk_count(d), 2);
        ASSERT(vdisk_image_readonly(vdisk_disk_image(d, 0)));
        ASSERT(!vdisk_image_readonly(vdisk_disk_image(d, 1)));
        ASSERT(!vdisk_disk_image(d, 2));
        ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, 0), bu));
        ASSERT_OK(vdisk_image_get_modification_uuid(vdisk_disk_image(d, 0), bmod));
        ASSERT_OK(vdisk_image_get_uuid(vdisk_disk_image(d, 1), du));
        ASSERT_OK(vdisk_image_get_parent_uuid(vdisk_disk_image(d, 1), dp));
        ASSERT_OK(vdisk_image_get_parent_modification_uuid(vdisk_disk_image(d, 1), dpm));
        ASSERT_MEMEQ(dp, bu, 16);
        ASSERT_MEMEQ(dpm, bmod, 16);
        ASSERT(memcmp(du, bu, 16) != 0);
        ASSERT_OK(vdisk_image_get_flags(vdisk_disk_image(d, 1), &flags));
        ASSERT(flags & VDISK_IMAGE_FLAGS_DIFF);
        r = vdisk_image_get_parent_name(vdisk_disk_image(d, 1), &pname, &pformat);
        ASSERT(r == 0 || r == -EOPNOTSUPP);
        if (r == 0 && pname)
                FAIL("a VDI diff names a parent file (\"%s\"); VDI links by UUID only", pname);

        /* the diff shows the parent's data until written */
        ASSERT_OK(vdisk_disk_read(d, back, sizeof back, 0));
        ASSERT_MEMEQ(back, buf, sizeof back);
        memset(buf, 0x17, 512);
        ASSERT_OK(vdisk_disk_write(d, buf, 512, 0));

        /* close_top: the base is the writable top again and shows its own data */
        ASSERT_OK(vdisk_disk_close_top(d));
        ASSERT_EQ_U64(vdisk_disk_count(d), 1);
        ASSERT(!vdisk_disk_readonly(d));
        ASSERT_OK(vdisk_disk_read(d, back, 512, 0));
        ASSERT_EQ_U64(back[0], 0x42);
        d = vdisk_disk_unref(d);

        /* the diff on a base with another UUID: -ESTALE, unless SKIP_CHECKS */
        d = disk_new();
        ASSERT_OK(vdisk_disk_create_base(d, other, "vdi", 4 * MiB, NULL));
        ASSERT_ERR(vdisk_disk_open(d, diff, "vdi", 0), -ESTALE);
        ASSERT_EQ_U64(vdisk_disk_count(d), 1);
        ASSERT_OK(vdisk_disk_open(d, diff, "vdi", VDISK_OPEN_SKIP_CHECKS));
        ASSERT_EQ_U64(vdisk_disk_count(d), 2);
        d = vdisk_disk_unref(d);

        /* the right base: no warning */
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, base, "vdi", 0));
        ASSERT_OK(vdisk_disk_open(d, diff, "vdi", 0));
        w = vdisk_disk_warnings(d);
        ASSERT(w);
        for (; *w; w++)
                n_warn++;
        ASSERT_EQ_U64(n_warn, 0);
        ASSERT_OK(vdisk_disk_read(d, back, 512, 0));
        ASSERT_EQ_U64(back[0], 0x17);
        d = vdisk_disk_unref(d);

        /* a changed parent modification UUID is accepted with a warning */
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, base, "vdi", 0));
        vdisk_uuid_generate(u);
        ASSERT_OK(vdisk_image_set_modification_uuid(vdisk_disk_image(d, 0), u));
        d = vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, base, "vdi", 0));
        ASSERT_OK(vdisk_disk_open(d, diff, "vdi", 0));
        w = vdisk_disk_warnings(d);
        ASSERT(w && w[0]);
        ASSERT(w[0][0] != '\0');
        vdisk_disk_unref(d);

        vdisk_io_unref(base);
        vdisk_io_unref(diff);
        vdisk_io_unref(other);
}

/* ---------------------------------------------------------------- error messages */

static void test_error_names(void) {
        uint8_t junk[8192];
        vdisk_io *io, *full;
        vdisk_disk *d = disk_new();
        rng r;

        rng_seed(&r, 99);
        rng_fill(&r, junk, sizeof junk);
        io = mem_io("garbage-disk-image.vdi", junk, sizeof junk);
        ASSERT_ERR(vdisk_disk_open(d, io, "vdi", VDISK_OPEN_READONLY), -EMEDIUMTYPE);
        assert_error_names("garbage-disk-image.vdi");
        ASSERT_ERR(vdisk_disk_open(d, io, NULL, 0), -EMEDIUMTYPE);
        assert_error_names("garbage-disk-image.vdi");

        /* create_base wants an empty io */
        full = mem_io("not-empty-image.vdi", junk, sizeof junk);
        ASSERT_FAILS(vdisk_disk_create_base(d, full, "vdi", 4 * MiB, NULL));
        assert_error_names("not-empty-image.vdi");
        ASSERT_EQ_U64(vdisk_disk_count(d), 0);
        {
                const void *data;
                size_t len;
                ASSERT_OK(vdisk_io_memory_data(full, &data, &len));
                ASSERT_EQ_U64(len, sizeof junk);
                ASSERT_MEMEQ(data, junk, sizeof junk);
        }
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        vdisk_io_unref(full);
}

/* ---------------------------------------------------------------- compare */

static void test_compare(void) {
        vdisk_io *a = mem_io("api-cmp-a.vdi", NULL, 0), *b = mem_io("api-cmp-b.img", NULL, 0);
        vdisk_disk *da = disk_new(), *db = disk_new();
        uint8_t buf[65536];
        uint64_t at = 0;
        rng r;

        rng_seed(&r, 5);
        rng_fill(&r, buf, sizeof buf);
        ASSERT_OK(vdisk_disk_create_base(da, a, "vdi", 4 * MiB, NULL));
        ASSERT_OK(vdisk_disk_create_base(db, b, "raw", 4 * MiB, NULL));
        ASSERT_OK(vdisk_disk_write(da, buf, sizeof buf, 1 * MiB - 4096));
        ASSERT_OK(vdisk_disk_write(db, buf, sizeof buf, 1 * MiB - 4096));
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare(da, db, 0, &at, NULL)), 0);
        buf[0] ^= 0xff;
        ASSERT_OK(vdisk_disk_write(db, buf, 512, 3 * MiB + 1024));
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare(da, db, 0, &at, NULL)), 1);
        ASSERT_EQ_U64(at, 3 * MiB + 1024);
        /* strict: raw is allocated everywhere, the VDI is not */
        ASSERT_OK(vdisk_disk_write(da, buf, 512, 3 * MiB + 1024));
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare(da, db, 0, NULL, NULL)), 0);
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare(da, db, 1, NULL, NULL)), 1);
        vdisk_disk_unref(da);
        vdisk_disk_unref(db);
        vdisk_io_unref(a);
        vdisk_io_unref(b);
}

/* vdisk_compare_ex says what differs: content, size (strict), block status
 * (strict), and a longer disk's tail. */
static void test_compare_ex(void) {
        vdisk_io *a = mem_io("api-cmpx-a.vdi", NULL, 0), *b = mem_io("api-cmpx-b.img", NULL, 0);
        vdisk_io *c = mem_io("api-cmpx-c.img", NULL, 0);
        vdisk_disk *da = disk_new(), *db = disk_new(), *dc = disk_new();
        vdisk_compare_result res = { .size = sizeof(res) };
        uint8_t buf[4096];

        memset(buf, 0x5a, sizeof buf);
        ASSERT_OK(vdisk_disk_create_base(da, a, "vdi", 4 * MiB, NULL));
        ASSERT_OK(vdisk_disk_create_base(db, b, "raw", 4 * MiB, NULL));
        ASSERT_OK(vdisk_disk_create_base(dc, c, "raw", 6 * MiB, NULL));
        ASSERT_OK(vdisk_disk_write(da, buf, sizeof buf, 2 * MiB));
        ASSERT_OK(vdisk_disk_write(db, buf, sizeof buf, 2 * MiB));
        ASSERT_OK(vdisk_disk_write(dc, buf, sizeof buf, 2 * MiB));

        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare_ex(da, db, 0, &res, NULL)), 0);
        ASSERT_EQ_U64(res.outcome, VDISK_COMPARE_EQUAL);
        ASSERT_EQ_U64(res.size_a, 4 * MiB);
        /* raw is allocated everywhere, the VDI at 2 MiB only */
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare_ex(da, db, VDISK_COMPARE_STRICT, &res, NULL)), 1);
        ASSERT_EQ_U64(res.outcome, VDISK_COMPARE_BLOCK_STATUS);
        ASSERT_EQ_U64(res.offset, 0);
        /* a longer disk whose tail reads zeros: equal, unless strict */
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare_ex(da, dc, 0, &res, NULL)), 0);
        ASSERT_EQ_U64(res.size_b, 6 * MiB);
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare_ex(dc, db, VDISK_COMPARE_STRICT, &res, NULL)), 1);
        ASSERT_EQ_U64(res.outcome, VDISK_COMPARE_SIZE);
        ASSERT_EQ_U64(res.offset, 4 * MiB);
        /* data in the tail: a content difference past the common size */
        ASSERT_OK(vdisk_disk_write(dc, buf, 512, 5 * MiB + 1024));
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare_ex(db, dc, 0, &res, NULL)), 1);
        ASSERT_EQ_U64(res.outcome, VDISK_COMPARE_CONTENT);
        ASSERT_EQ_U64(res.offset, 5 * MiB + 1024);
        /* in the common part */
        ASSERT_OK(vdisk_disk_write(db, buf, 512, 1 * MiB + 512));
        ASSERT_EQ_U64(ASSERT_OK(vdisk_compare_ex(da, db, 0, &res, NULL)), 1);
        ASSERT_EQ_U64(res.outcome, VDISK_COMPARE_CONTENT);
        ASSERT_EQ_U64(res.offset, 1 * MiB + 512);
        ASSERT_ERR(vdisk_compare_ex(da, db, 1u << 5, &res, NULL), -EINVAL);
        res.size = 8;
        ASSERT_ERR(vdisk_compare_ex(da, db, 0, &res, NULL), -EINVAL);
        vdisk_disk_unref(da);
        vdisk_disk_unref(db);
        vdisk_disk_unref(dc);
        vdisk_io_unref(a);
        vdisk_io_unref(b);
        vdisk_io_unref(c);
}

/* ---------------------------------------------------------------- memory and fault ios */

static void test_ios(void) {
        vdisk_io *io, *ro, *f;
        vdisk_fault fault = { .size = sizeof fault, .kind = VDISK_FAULT_NONE };
        uint8_t buf[1024], back[1024];
        uint64_t size;
        const void *data;
        size_t len;

        memset(buf, 0x3c, sizeof buf);
        io = mem_io("api-mem", NULL, 0);
        ASSERT_STREQ(vdisk_io_name(io), "api-mem");
        ASSERT(!vdisk_io_readonly(io));
        ASSERT_OK(vdisk_io_get_size(io, &size));
        ASSERT_EQ_U64(size, 0);
        ASSERT_OK(vdisk_io_pwrite(io, buf, sizeof buf, 4096));
        ASSERT_OK(vdisk_io_get_size(io, &size));
        ASSERT_EQ_U64(size, 4096 + sizeof buf);
        ASSERT_OK(vdisk_io_pread(io, back, sizeof back, 4096));
        ASSERT_MEMEQ(back, buf, sizeof buf);
        ASSERT_OK(vdisk_io_pread(io, back, 512, 0));
        ASSERT(buf_is_zero(back, 512));
        ASSERT_ERR(vdisk_io_pread(io, back, 512, 4096 + 768), -EIO);
        ASSERT_OK(vdisk_io_truncate(io, 512));
        ASSERT_OK(vdisk_io_get_size(io, &size));
        ASSERT_EQ_U64(size, 512);
        ASSERT_OK(vdisk_io_flush(io));
        ASSERT(vdisk_io_ref(io) == io);
        vdisk_io_unref(io);

        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        ASSERT_OK(vdisk_io_new_memory(data, len, "api-ro", VDISK_IO_READONLY, &ro));
        ASSERT(vdisk_io_readonly(ro));
        ASSERT_ERR(vdisk_io_pwrite(ro, buf, 512, 0), -EROFS);
        ASSERT(!vdisk_io_unref(ro));
        ASSERT(!vdisk_io_unref(NULL));

        /* the fault io counts writes and flushes */
        ASSERT_OK(vdisk_io_new_fault(io, &fault, &f));
        ASSERT_OK(vdisk_io_pwrite(f, buf, 512, 0));
        ASSERT_OK(vdisk_io_pwrite(f, buf, 512, 512));
        ASSERT_OK(vdisk_io_flush(f));
        ASSERT_OK(vdisk_io_truncate(f, 2048));
        ASSERT_EQ_U64(vdisk_io_fault_writes(f), 3);   /* flushes are not writes */
        ASSERT(!vdisk_io_fault_fired(f));
        vdisk_io_unref(f);

        fault.kind = VDISK_FAULT_EIO;
        fault.after = 1;
        ASSERT_OK(vdisk_io_new_fault(io, &fault, &f));
        ASSERT_OK(vdisk_io_pwrite(f, buf, 512, 0));
        ASSERT(!vdisk_io_fault_fired(f));
        ASSERT_ERR(vdisk_io_pwrite(f, buf, 512, 0), -EIO);
        ASSERT(vdisk_io_fault_fired(f));
        ASSERT_ERR(vdisk_io_pwrite(f, buf, 512, 0), -EIO);
        ASSERT_OK(vdisk_io_pread(f, back, 512, 0));
        vdisk_io_unref(f);

        fault.kind = VDISK_FAULT_SHORT;
        fault.after = 0;
        memset(buf, 0x99, sizeof buf);
        ASSERT_OK(vdisk_io_new_fault(io, &fault, &f));
        ASSERT_ERR(vdisk_io_pwrite(f, buf, 1024, 0), -EIO);
        ASSERT_OK(vdisk_io_pread(io, back, 1024, 0));
        ASSERT_MEMEQ(back, buf, 512);
        ASSERT(back[512] == 0x3c);
        vdisk_io_unref(f);

        /* transient: only write `after` fails, whatever it is; then the io recovers */
        {
                static const vdisk_fault_kind kinds[] = { VDISK_FAULT_EIO, VDISK_FAULT_ENOSPC,
                                                          VDISK_FAULT_SHORT };
                vdisk_fault once = { .size = sizeof once, .after = 1, .once = 1, .fail_reads = 1,
                                     .fail_flush = 1 };

                for (size_t k = 0; k < ELEMENTSOF(kinds); k++) {
                        once.kind = kinds[k];
                        memset(buf, 0x55 + (int) k, sizeof buf);
                        ASSERT_OK(vdisk_io_new_fault(io, &once, &f));
                        ASSERT_OK(vdisk_io_pwrite(f, buf, 512, 0));
                        ASSERT(!vdisk_io_fault_fired(f));
                        /* in place (does not grow the file): ENOSPC fires all the same */
                        ASSERT_ERR(vdisk_io_pwrite(f, buf, 1024, 0),
                                   kinds[k] == VDISK_FAULT_ENOSPC ? -ENOSPC : -EIO);
                        ASSERT(vdisk_io_fault_fired(f));
                        ASSERT_OK(vdisk_io_pread(io, back, 1024, 0));
                        ASSERT(back[511] == buf[0]);
                        if (kinds[k] == VDISK_FAULT_SHORT)
                                ASSERT(back[512] == 0x3c);      /* the first half only */
                        ASSERT_OK(vdisk_io_pread(f, back, 512, 0));
                        ASSERT_OK(vdisk_io_flush(f));
                        ASSERT_OK(vdisk_io_pwrite(f, buf, 1024, 0));
                        ASSERT_OK(vdisk_io_pwrite(f, buf, 512, 1 * MiB));
                        ASSERT_OK(vdisk_io_flush(f));
                        ASSERT_EQ_U64(vdisk_io_fault_writes(f), 4);
                        ASSERT_EQ_U64(vdisk_io_fault_flushes(f), 2);
                        vdisk_io_unref(f);
                        ASSERT_OK(vdisk_io_truncate(io, 2048));
                        memset(buf, 0x3c, sizeof buf);
                        ASSERT_OK(vdisk_io_pwrite(io, buf, sizeof buf, 0));
                        ASSERT_OK(vdisk_io_pwrite(io, buf, sizeof buf, sizeof buf));
                }

                /* one failed flush, then flushes succeed again */
                once = (vdisk_fault) { .size = sizeof once, .fail_flush_at = 2 };
                ASSERT_OK(vdisk_io_new_fault(io, &once, &f));
                ASSERT_OK(vdisk_io_flush(f));
                ASSERT(!vdisk_io_fault_fired(f));
                ASSERT_ERR(vdisk_io_flush(f), -EIO);
                ASSERT(vdisk_io_fault_fired(f));
                ASSERT_OK(vdisk_io_flush(f));
                ASSERT_OK(vdisk_io_pwrite(f, buf, 512, 0));
                ASSERT_EQ_U64(vdisk_io_fault_flushes(f), 3);
                vdisk_io_unref(f);

                /* an older, smaller struct still works (the new fields read 0) */
                once = (vdisk_fault) { .size = offsetof(vdisk_fault, once), .kind = VDISK_FAULT_EIO,
                                       .once = 1, .fail_flush_at = 1 };
                ASSERT_OK(vdisk_io_new_fault(io, &once, &f));
                ASSERT_OK(vdisk_io_flush(f));
                ASSERT_ERR(vdisk_io_pwrite(f, buf, 512, 0), -EIO);
                ASSERT_ERR(vdisk_io_pwrite(f, buf, 512, 0), -EIO);   /* persistent */
                vdisk_io_unref(f);
                once.size = offsetof(vdisk_fault, once) - 1;
                ASSERT_ERR(vdisk_io_new_fault(io, &once, &f), -EINVAL);
                once = (vdisk_fault) { .size = sizeof once, .kind = VDISK_FAULT_POWER_CUT, .once = 1 };
                ASSERT_ERR(vdisk_io_new_fault(io, &once, &f), -EINVAL);
        }

        vdisk_io_unref(io);
}

/* ---------------------------------------------------------------- progress */

static void test_progress_object(void) {
        vdisk_progress *p = NULL;

        ASSERT_OK(vdisk_progress_new(NULL, NULL, &p));
        ASSERT(p);
        ASSERT_EQ_U64(vdisk_progress_done(p), 0);
        ASSERT_EQ_U64(vdisk_progress_total(p), 0);
        ASSERT(!vdisk_progress_cancelled(p));
        vdisk_progress_cancel(p);
        ASSERT(vdisk_progress_cancelled(p));
        ASSERT(!vdisk_progress_free(p));
        ASSERT(!vdisk_progress_free(NULL));
        ASSERT(!vdisk_disk_unref(NULL));
}

/* ---------------------------------------------------------------- companion files */

/* Companion files on memory ios, created on demand and kept by name. */
typedef struct MemFiles {
        char names[8][32];
        vdisk_io *ios[8];
        unsigned n;
        unsigned opened;        /* open_companion calls */
} MemFiles;

static int mem_open_companion(void *user, const char *name, const char *image_name, uint32_t flags,
                              vdisk_io **ret) {
        MemFiles *mf = user;

        (void) image_name;
        mf->opened++;
        for (unsigned i = 0; i < mf->n; i++)
                if (streq(mf->names[i], name)) {
                        if (flags & VDISK_COMPANION_CREATE)
                                return -EEXIST;
                        *ret = vdisk_io_ref(mf->ios[i]);
                        return 0;
                }
        if (!(flags & VDISK_COMPANION_CREATE) || mf->n == 8)
                return -ENOENT;
        snprintf(mf->names[mf->n], sizeof mf->names[0], "%s", name);
        ASSERT_OK(vdisk_io_new_memory(NULL, 0, name, 0, &mf->ios[mf->n]));
        *ret = vdisk_io_ref(mf->ios[mf->n++]);
        return 0;
}

static void test_list_files(void) {
        static const vdisk_resolver_ops ops = {
                .size = sizeof(vdisk_resolver_ops),
                .open_companion = mem_open_companion,
        };
        static const char *const split[] = { "subformat", "twoGbMaxExtentSparse", NULL };
        const uint64_t size = UINT64_C(5) << 30;
        MemFiles mf = {};
        vdisk_resolver *res;
        vdisk_disk *d;
        vdisk_io *desc;
        vdisk_image *img;
        char buf[512];
        vdisk_create_opts o = { .size = sizeof(o), .options = split };

        ASSERT_OK(vdisk_resolver_new_ops(&ops, &mf, &res));
        o.resolver = res;
        ASSERT_OK(vdisk_io_new_memory(NULL, 0, "t.vmdk", 0, &desc));
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_OK(vdisk_disk_create_base(d, desc, "vmdk", size, &o));
        img = vdisk_disk_image(d, 0);
        ASSERT(vdisk_image_file_count(img) == 3);
        ASSERT_STREQ(vdisk_image_file_name(img, 0), "t-s001.vmdk");
        ASSERT_STREQ(vdisk_image_file_name(img, 2), "t-s003.vmdk");
        ASSERT(vdisk_image_file_name(img, 3) == NULL);
        ASSERT_OK(vdisk_disk_close(d));

        /* Names only: nothing but the descriptor is read, no resolver needed. */
        mf.opened = 0;
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_OK(vdisk_disk_open(d, desc, "vmdk", VDISK_OPEN_LIST_FILES));
        img = vdisk_disk_image(d, 0);
        ASSERT(vdisk_image_file_count(img) == 3);
        ASSERT_STREQ(vdisk_image_file_name(img, 1), "t-s002.vmdk");
        ASSERT_EQ_U64(vdisk_image_size(img), size);
        {
                /* What vdiskd's ProbeFormat asks: the extents only named
                 * (not open) count no space, and nothing reads them. */
                vdisk_image_info info = { .size = sizeof info };

                ASSERT_OK(vdisk_image_get_info(img, &info));
                ASSERT_EQ_U64(info.virtual_size, size);
        }
        ASSERT(vdisk_disk_readonly(d));
        ASSERT_FAILS(vdisk_disk_read(d, buf, sizeof buf, 0));
        ASSERT_FAILS(vdisk_disk_write(d, buf, sizeof buf, 0));
        ASSERT_OK(vdisk_disk_close(d));
        ASSERT(mf.opened == 0);

        /* A real open without the extents: -ENOENT naming the first one. */
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_ERR(vdisk_disk_open(d, desc, "vmdk", VDISK_OPEN_READONLY | VDISK_OPEN_INFO), -ENOENT);
        assert_error_names("t-s001.vmdk");
        /* With them, every extent is open. */
        ASSERT_OK(vdisk_disk_set_resolver(d, res));
        ASSERT_OK(vdisk_disk_open(d, desc, "vmdk", VDISK_OPEN_READONLY));
        ASSERT(vdisk_image_file_count(vdisk_disk_image(d, 0)) == 3);
        ASSERT_OK(vdisk_disk_read(d, buf, sizeof buf, size - sizeof buf));
        ASSERT_OK(vdisk_disk_close(d));

        /* An image of one file has none. */
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_OK(vdisk_disk_open(d, mf.ios[0], "vmdk", VDISK_OPEN_LIST_FILES));
        ASSERT(vdisk_image_file_count(vdisk_disk_image(d, 0)) == 0);
        ASSERT_OK(vdisk_disk_close(d));

        vdisk_resolver_unref(res);
        vdisk_io_unref(desc);
        for (unsigned i = 0; i < mf.n; i++)
                vdisk_io_unref(mf.ios[i]);
}

int main(void) {
        test_list_files();
        test_errors();
        test_backends();
        test_raw();
        test_create_args();
        test_vdi_metadata();
        test_vdi_fixed();
        test_block_status();
        test_probe();
        test_io_edges();
        test_uuid();
        test_chain_linkage();
        test_error_names();
        test_compare();
        test_compare_ex();
        test_ios();
        test_progress_object();
        printf("test-api: all passed\n");
        return 0;
}
