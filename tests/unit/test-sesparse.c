/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK seSparse extents (lib/backends/vmdk-sesparse.c), opened through a
 * descriptor naming them, the extent built here byte by byte from the layout
 * in docs/formats/vmdk.md:
 *   - a pristine extent reads what was put there: allocated grains (the grain
 *     index split over the entry's bits 48..59 and 0..47, index 4097 among
 *     them), zeroed and unmapped grains as zeros, unallocated grains and whole
 *     unallocated tables as the parent (a library-made monolithicSparse base
 *     filled with 0x5a), a partial last grain;
 *   - a writable open is refused (read-only extent kind), the bare extent
 *     probes as no VMDK;
 *   - malformed: truncation at every sector through the metadata and at the
 *     grains, every header field and region edited, grain directory and
 *     grain table entries of every type and out of range, a journal to
 *     replay, a descriptor whose size disagrees: each a clean error (a
 *     negative errno with a message, never -ENOMEM), never a crash, and
 *     the open ones read without reading outside the file.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests.h"

#define S 512u
#define GRAIN 4096u
#define GTES 4096u
/* Capacity: three grain tables' worth and 2.5 grains (a partial last grain). */
#define CAP_SECTORS (3u * 32768u + 20u)
#define CAP_BYTES ((uint64_t) CAP_SECTORS * S)
#define N_GRAINS ((CAP_BYTES + GRAIN - 1) / GRAIN)
/* Layout, in sectors. */
#define VOL_OFF 1u
#define JH_OFF 2u
#define J_OFF 4u
#define GD_OFF 8u
#define GD_SIZE 1u
#define GT_OFF 16u
#define GT_SIZE (64u * 4u)            /* room for 4 tables */
#define FB_OFF 272u
#define BM_OFF 280u
#define GRAINS_OFF 288u
#define N_DATA_GRAINS 4098u           /* indexes 0 .. 4097 in the big file */
#define N_SMALL_GRAINS 9u

static uint8_t *big_ext;              /* the extent, with grain indexes up to 4097 */
static size_t big_len;
static uint8_t *ext;                  /* the same without grains past index 8 (malformed cases) */
static size_t ext_len;
static unsigned n_data_grains;
static uint8_t *want;                 /* what the disk reads over the 0x5a parent */
static uint8_t defined[N_GRAINS];     /* the grain is defined by the extent (not unallocated) */
static uint8_t *parent_bytes;
static size_t parent_len;
static unsigned n_cases, n_opened, n_refused;
static int n_read_failed;             /* the last case's failed read, 0 if none */

static void put64(uint8_t *p, uint64_t v) {
        for (unsigned i = 0; i < 8; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t alloc_entry(uint64_t idx) {
        return (UINT64_C(3) << 60) | ((idx & 0xfff) << 48) | (idx >> 12);
}

static void grain_pattern(uint64_t idx, uint8_t *out) {
        for (unsigned i = 0; i < GRAIN; i += 8)
                put64(out + i, (idx << 32 | i) ^ UINT64_C(0x9e3779b97f4a7c15));
}

/* GT t, entry e (grain t_base + e) := v. */
static void set_gte(uint8_t *b, unsigned t, unsigned e, uint64_t v) {
        put64(b + (GT_OFF + t * 64u) * S + e * 8u, v);
}

static void map_grain(uint8_t *b, unsigned table, uint64_t g, uint64_t idx) {
        uint64_t n = g * GRAIN + GRAIN <= CAP_BYTES ? GRAIN : CAP_BYTES - g * GRAIN;

        if (idx >= n_data_grains) {
                /* The small extent: this grain stays unallocated. */
                memset(want + g * GRAIN, 0x5a, GRAIN);
                defined[g] = 0;
                return;
        }

        set_gte(b, table, (unsigned) (g % GTES), alloc_entry(idx));
        grain_pattern(idx, want + g * GRAIN);
        memset(want + g * GRAIN + n, 0x5a, GRAIN - n);
        defined[g] = 1;
}

static void make_extent(unsigned n_grains) {
        uint8_t *b;

        n_data_grains = n_grains;
        ext_len = (size_t) (GRAINS_OFF * S + (uint64_t) n_grains * GRAIN);
        b = calloc(1, ext_len);
        if (!want)
                want = malloc(N_GRAINS * GRAIN);
        ASSERT(b && want);
        memset(defined, 0, sizeof defined);
        memset(want, 0x5a, N_GRAINS * GRAIN);
        put64(b + 0x00, 0xcafebabe);
        put64(b + 0x08, UINT64_C(0x200000001));
        put64(b + 0x10, CAP_SECTORS);
        put64(b + 0x18, 8);
        put64(b + 0x20, 64);
        put64(b + 0x50, VOL_OFF);
        put64(b + 0x58, 1);
        put64(b + 0x60, JH_OFF);
        put64(b + 0x68, 2);
        put64(b + 0x70, J_OFF);
        put64(b + 0x78, 4);
        put64(b + 0x80, GD_OFF);
        put64(b + 0x88, GD_SIZE);
        put64(b + 0x90, GT_OFF);
        put64(b + 0x98, GT_SIZE);
        put64(b + 0xa0, FB_OFF);
        put64(b + 0xa8, 8);
        put64(b + 0xb0, BM_OFF);
        put64(b + 0xb8, 8);
        put64(b + 0xc0, GRAINS_OFF);
        put64(b + 0xc8, (uint64_t) CAP_SECTORS + 8);
        put64(b + VOL_OFF * S, 0xcafecafe);
        put64(b + VOL_OFF * S + 8, 4);                  /* free GT number */
        put64(b + VOL_OFF * S + 16, 17);                /* next transaction */
        for (uint64_t i = 0; i < n_grains; i++)
                grain_pattern(i, b + GRAINS_OFF * S + i * GRAIN);

        /* GD: table 0 -> GT 1, table 1 none (all unallocated), table 2 -> GT 0, table 3 -> GT 3. */
        put64(b + GD_OFF * S + 0, (UINT64_C(1) << 60) | 1);
        put64(b + GD_OFF * S + 16, (UINT64_C(1) << 60) | 0);
        put64(b + GD_OFF * S + 24, (UINT64_C(1) << 60) | 3);
        /* Table 0 (grains 0..4095) in GT 1. */
        map_grain(b, 1, 0, 5);
        map_grain(b, 1, 1, 6);                          /* contiguous with grain 0 */
        set_gte(b, 1, 2, UINT64_C(2) << 60);            /* zeroed */
        memset(want + 2 * GRAIN, 0, GRAIN);
        defined[2] = 1;
        set_gte(b, 1, 3, (UINT64_C(1) << 60) | 12345);  /* unmapped (low bits ignored) */
        memset(want + 3 * GRAIN, 0, GRAIN);
        defined[3] = 1;
        /* grain 4: unallocated */
        map_grain(b, 1, 5, 0);
        map_grain(b, 1, 6, 4097);                       /* index with bits 0..47 set */
        map_grain(b, 1, 4095, 4096);
        /* Table 2 (grains 8192..12287) in GT 0. */
        map_grain(b, 0, 8192, 2);
        map_grain(b, 0, 12287, 3);
        /* Table 3 (grains 12288..12290, the last one partial) in GT 3. */
        map_grain(b, 3, 12288, 7);
        map_grain(b, 3, 12290, 8);
        ext = b;
}

static void make_parent(void) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("base.vmdk", NULL, 0);
        uint8_t *buf = malloc(1 * MiB);

        ASSERT(buf);
        memset(buf, 0x5a, 1 * MiB);
        ASSERT_OK(vdisk_disk_create_base(d, io, "vmdk", CAP_BYTES, NULL));
        for (uint64_t off = 0; off < CAP_BYTES; off += 1 * MiB)
                ASSERT_OK(vdisk_disk_write(d, buf, (size_t) MIN(1 * MiB, CAP_BYTES - off), off));
        ASSERT_OK(vdisk_disk_close(d));
        parent_bytes = mem_io_copy(io, &parent_len);
        vdisk_io_unref(io);
        free(buf);
}

/* ---------------------------------------------------------------- resolver */

typedef struct files {
        const uint8_t *ext;
        size_t ext_len;
        unsigned opened;
} files;

static int res_open_name(void *user, const char *name, const char *child_name, int writable, vdisk_io **ret) {
        if (strcmp(name, "base.vmdk") != 0)
                return -ENOENT;
        *ret = mem_io("base.vmdk", parent_bytes, parent_len);
        return 0;
}

static int res_find_uuid(void *user, const uint8_t uuid[16], const char *format, const char *child_name,
                         int writable, vdisk_io **ret) {
        return -ENOENT;
}

static int res_companion(void *user, const char *name, const char *image_name, uint32_t flags, vdisk_io **ret) {
        files *f = user;

        if (strcmp(name, "snap-sesparse.vmdk") != 0)
                return -ENOENT;
        if (flags & VDISK_COMPANION_WRITE)
                return -EACCES;
        f->opened++;
        *ret = mem_io(name, f->ext, f->ext_len);
        return 0;
}

static char *descriptor(uint64_t sectors, int with_parent) {
        char *t = NULL;

        ASSERT(asprintf(&t,
                        "# Disk DescriptorFile\n"
                        "version=1\n"
                        "CID=0badcafe\n"
                        "parentCID=%s\n"
                        "createType=\"seSparse\"\n"
                        "%s"
                        "\n"
                        "RW %" PRIu64 " SESPARSE \"snap-sesparse.vmdk\"\n"
                        "\n"
                        "ddb.virtualHWVersion = \"14\"\n",
                        with_parent ? "ffffffff" : "ffffffff",
                        with_parent ? "parentFileNameHint=\"base.vmdk\"\n" : "", sectors) > 0);
        return t;
}

enum { MUST_OPEN = 1, WRITABLE = 2, PARENT = 4 };

/* Opens the descriptor (with the base below unless NO_PARENT) over the
 * extent bytes; reads the whole disk. Returns the open's result. */
static int try_extent(const char *label, const uint8_t *b, size_t len, uint64_t desc_sectors, unsigned mode) {
        files f = { .ext = b, .ext_len = len };
        vdisk_resolver_ops ops = {
                .size = sizeof ops, .open_name = res_open_name, .find_uuid = res_find_uuid,
                .open_companion = res_companion,
        };
        vdisk_resolver *res = NULL;
        _cleanup_free_ char *text = descriptor(desc_sectors, !!(mode & PARENT));
        vdisk_io *top = mem_io("snap.vmdk", text, strlen(text));
        vdisk_disk *d = disk_new();
        uint8_t *buf;
        int r;

        n_cases++;
        test_set_context("seSparse case %s (%zu bytes)", label, len);
        ASSERT_OK(vdisk_resolver_new_ops(&ops, &f, &res));
        vdisk_clear_error();
        r = vdisk_disk_open_chain(d, res, top, "vmdk", mode & WRITABLE ? 0 : VDISK_OPEN_READONLY);
        vdisk_resolver_unref(res);
        vdisk_io_unref(top);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, r);
                if (mode & MUST_OPEN)
                        FAIL("%s: a valid extent failed to open: %d (%s)", label, r, vdisk_last_error());
                n_refused++;
                vdisk_disk_unref(d);
                return r;
        }
        n_opened++;
        ASSERT(f.opened == 1);
        buf = malloc(1 * MiB);
        ASSERT(buf);
        /* A valid extent is read whole; the others where the sample has
         * its grains and tables (the start of each 16 MiB table and the end). */
        for (uint64_t off = 0; off < vdisk_disk_size(d); off += 1 * MiB) {
                size_t n = (size_t) MIN(1 * MiB, vdisk_disk_size(d) - off);

                if (!(mode & MUST_OPEN) && off % (16 * MiB) != 0 && off % (16 * MiB) != 15 * MiB &&
                    off + n < vdisk_disk_size(d))
                        continue;
                r = vdisk_disk_read(d, buf, n, off);
                if (r < 0) {
                        test_check_clean_error(__FILE__, __LINE__, "read", r);
                        if (mode & MUST_OPEN)
                                FAIL("%s: read at %" PRIu64 " failed: %s", label, off, vdisk_last_error());
                        n_read_failed = r;
                        break;
                }
                if (mode & MUST_OPEN) {
                        if (!(mode & PARENT)) {
                                /* Without the base, unallocated grains read zeros. */
                                for (size_t i = 0; i < n; i++)
                                        if (buf[i] != (defined[(off + i) / GRAIN] ? want[off + i] : 0))
                                                FAIL("%s: byte %" PRIu64 " reads %#x", label, off + i, buf[i]);
                        } else
                                ASSERT_MEMEQ(buf, want + off, n);
                }
        }
        free(buf);
        vdisk_disk_unref(d);
        return 0;
}

static void edit64(const char *what, size_t off, uint64_t v, int expect) {
        uint8_t *b = malloc(ext_len);
        char label[96];
        int r;

        ASSERT(b);
        memcpy(b, ext, ext_len);
        put64(b + off, v);
        snprintf(label, sizeof label, "%s=%#" PRIx64, what, v);
        r = try_extent(label, b, ext_len, CAP_SECTORS, 0);
        if (expect < 0 && r != expect)
                FAIL("%s: open returned %d, want %d", label, r, expect);
        free(b);
}

/* An edit that opens but whose reads must fail cleanly (-EUCLEAN) somewhere. */
static void edit_read_fails(const char *what, size_t off, uint64_t v) {
        uint8_t *b = malloc(ext_len);
        int r;

        ASSERT(b);
        memcpy(b, ext, ext_len);
        put64(b + off, v);
        n_read_failed = 0;
        r = try_extent(what, b, ext_len, CAP_SECTORS, 0);
        ASSERT(r == 0);
        if (n_read_failed != -EUCLEAN)
                FAIL("%s: the reads returned %d, want -EUCLEAN", what, n_read_failed);
        printf("%s: refused at read: %s\n", what, vdisk_last_error());
        free(b);
}

int main(void) {
        const uint64_t gd = GD_OFF * S, gt1 = (GT_OFF + 64) * S;
        uint64_t file_sectors;
        int r;

        make_parent();
        make_extent(N_DATA_GRAINS);
        big_ext = ext;
        big_len = ext_len;
        try_extent("pristine", big_ext, big_len, CAP_SECTORS, MUST_OPEN | PARENT);
        try_extent("pristine-no-parent", big_ext, big_len, CAP_SECTORS, MUST_OPEN);
        free(big_ext);
        make_extent(N_SMALL_GRAINS);
        file_sectors = ext_len / S;
        printf("extent: %zu bytes, %" PRIu64 " grains of virtual disk\n", ext_len, (uint64_t) N_GRAINS);

        try_extent("small", ext, ext_len, CAP_SECTORS, MUST_OPEN);
        try_extent("small-parent", ext, ext_len, CAP_SECTORS, MUST_OPEN | PARENT);

        /* Read-only extent kind: a writable open is -EROFS with a message. */
        r = try_extent("writable", ext, ext_len, CAP_SECTORS, WRITABLE);
        ASSERT(r == -EROFS);
        ASSERT(strstr(vdisk_last_error(), "read-only"));

        /* The bare extent is no image of its own: probed, it is not VMDK. */
        {
                vdisk_io *io = mem_io("bare", ext, ext_len);
                vdisk_disk *d = disk_new();

                r = vdisk_disk_open(d, io, NULL, VDISK_OPEN_READONLY);
                ASSERT(r < 0);          /* never raw without VDISK_OPEN_ALLOW_PROBE_RAW */
                vdisk_disk_unref(d);
                d = disk_new();
                ASSERT_OK(vdisk_disk_open(d, io, NULL, VDISK_OPEN_READONLY | VDISK_OPEN_ALLOW_PROBE_RAW));
                ASSERT_EQ_U64(vdisk_disk_size(d), ext_len);
                vdisk_disk_unref(d);
                d = disk_new();
                r = vdisk_disk_open(d, io, "vmdk", VDISK_OPEN_READONLY);
                ASSERT(r < 0);
                test_check_clean_error(__FILE__, __LINE__, "bare as vmdk", r);
                vdisk_disk_unref(d);
                vdisk_io_unref(io);
        }

        /* Listing the files (VDISK_OPEN_LIST_FILES): the extent is named, not opened. */
        {
                files f = { .ext = ext, .ext_len = ext_len };
                vdisk_resolver_ops ops = {
                        .size = sizeof ops, .open_name = res_open_name, .find_uuid = res_find_uuid,
                        .open_companion = res_companion,
                };
                vdisk_resolver *res = NULL;
                _cleanup_free_ char *text = descriptor(CAP_SECTORS, 0);
                vdisk_io *top = mem_io("snap.vmdk", text, strlen(text));
                vdisk_disk *d = disk_new();

                ASSERT_OK(vdisk_resolver_new_ops(&ops, &f, &res));
                ASSERT_OK(vdisk_disk_set_resolver(d, res));
                vdisk_resolver_unref(res);
                ASSERT_OK(vdisk_disk_open(d, top, "vmdk",
                                          VDISK_OPEN_READONLY | VDISK_OPEN_INFO | VDISK_OPEN_LIST_FILES));
                ASSERT(f.opened == 0);
                ASSERT(vdisk_image_file_count(vdisk_disk_image(d, 0)) >= 1);
                vdisk_disk_unref(d);
                vdisk_io_unref(top);
        }

        /* The descriptor's size must be the extent's. */
        ASSERT(try_extent("desc-size-less", ext, ext_len, CAP_SECTORS - 8, 0) == -EUCLEAN);
        ASSERT(try_extent("desc-size-more", ext, ext_len, CAP_SECTORS + 8, 0) == -EUCLEAN);

        /* Truncation: every sector through the metadata, then through the grains. */
        for (size_t l = 0; l <= ext_len; l += S) {
                char label[64];

                snprintf(label, sizeof label, "trunc-%zu", l);
                r = try_extent(label, ext, l, CAP_SECTORS, 0);
                if (l < (GT_OFF + GT_SIZE) * S)
                        ASSERT(r == -EUCLEAN);
                if (l > 0) {
                        snprintf(label, sizeof label, "trunc-%zu", l - 1);
                        try_extent(label, ext, l - 1, CAP_SECTORS, 0);
                }
        }

        /* Header fields. */
        static const uint64_t any[] = { 0, 1, 2, 7, 8, 64, 4096, UINT64_C(1) << 32, UINT64_C(1) << 59,
                                        UINT64_MAX / 512, UINT64_MAX - 1, UINT64_MAX };
        static const struct { const char *name; size_t off; } fields[] = {
                { "magic", 0x00 }, { "version", 0x08 }, { "capacity", 0x10 }, { "grain", 0x18 },
                { "gt-size", 0x20 }, { "flags", 0x28 }, { "vol-off", 0x50 }, { "vol-size", 0x58 },
                { "gd-off", 0x80 }, { "gd-size", 0x88 }, { "gt-off", 0x90 }, { "gt-area", 0x98 },
                { "grains-off", 0xc0 }, { "grains-size", 0xc8 }, { "journal-off", 0x70 },
        };
        for (size_t f = 0; f < ELEMENTSOF(fields); f++)
                for (size_t i = 0; i < ELEMENTSOF(any); i++)
                        edit64(fields[f].name, fields[f].off, any[i], 0);
        edit64("magic", 0x00, UINT64_C(0xcafebabe) | (UINT64_C(1) << 32), -EUCLEAN);
        edit64("version", 0x08, UINT64_C(0x100000001), -EOPNOTSUPP);
        edit64("grain", 0x18, 16, -EOPNOTSUPP);
        edit64("flags", 0x28, 1, -EOPNOTSUPP);
        edit64("gd-onto-gt", 0x80, GT_OFF, -EUCLEAN);
        edit64("gt-onto-grains", 0x90, GRAINS_OFF - 64, -EUCLEAN);
        edit64("grains-onto-gd", 0xc0, GD_OFF, -EUCLEAN);
        edit64("vol-onto-gd", 0x50, GD_OFF, -EUCLEAN);
        edit64("gd-past-eof", 0x80, file_sectors, -EUCLEAN);
        edit64("gt-area-past-eof", 0x98, file_sectors, -EUCLEAN);
        edit64("vol-magic", VOL_OFF * S, 0xcafebabe, -EUCLEAN);
        edit64("replay-journal", VOL_OFF * S + 0x18, 1, -EOPNOTSUPP);
        ASSERT(strstr(vdisk_last_error(), "journal"));

        /* Grain directory entries: a table of the GD out of range or of an
         * unknown type is refused where it is looked up. */
        edit_read_fails("gde-index-past-area", gd, (UINT64_C(1) << 60) | 4);
        edit_read_fails("gde-index-huge", gd, (UINT64_C(1) << 60) | ((UINT64_C(1) << 60) - 1));
        edit_read_fails("gde-type-2", gd, (UINT64_C(2) << 60) | 1);
        edit_read_fails("gde-type-0-bits", gd + 16, 5);
        edit_read_fails("gde-type-15", gd + 24, UINT64_MAX);
        /* Grain table entries. */
        for (unsigned t = 4; t < 16; t++) {
                char label[48];

                snprintf(label, sizeof label, "gte-type-%u", t);
                edit_read_fails(label, gt1 + 8, (uint64_t) t << 60);
        }
        edit_read_fails("gte-grain-past-eof", gt1, alloc_entry(N_SMALL_GRAINS));
        edit_read_fails("gte-grain-past-area", gt1, alloc_entry((uint64_t) CAP_SECTORS / 8 + 1));
        edit_read_fails("gte-grain-huge", gt1, (UINT64_C(3) << 60) | ((UINT64_C(1) << 60) - 1));
        /* Two entries on one grain read, both (nothing is written through them). */
        edit64("gte-dup", gt1 + 8, alloc_entry(5), 0);

        printf("test-sesparse: %u cases, %u opened, %u refused at open\n", n_cases, n_opened, n_refused);
        ASSERT(n_refused > 100 && n_opened > 10);
        free(ext);
        free(want);
        free(parent_bytes);
        return 0;
}
