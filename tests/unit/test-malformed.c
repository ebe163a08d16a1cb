/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `malformed`: corrupt VDI and raw inputs, generated in memory from valid
 * images that the library itself wrote.
 *
 * Every case is opened (read-only unless said otherwise), read in full and
 * checked. The outcome must be a clear error (a negative errno, never -ENOMEM,
 * and a non-empty vdisk_last_error()) or a correct result: the content an
 * independent, lenient reading of the same bytes gives (the "reference"
 * below, zero-filling slots past the end of the file). Inputs the reference
 * calls invalid (the map is not in the file, the disk is larger than its
 * blocks, the map overlaps the header or the data ...) must fail somewhere.
 * Some cases also pin the error code that vdisk.h fixes (-EMEDIUMTYPE,
 * -EOPNOTSUPP, -EFBIG/-EUCLEAN, -ELOOP ...).
 *
 * Cases: truncation at every header field boundary (and +-1), every 512 bytes
 * through the block map and into the first data slot, at each slot's end;
 * header field edits (signature, version, header size, type, block size and
 * extra, block counts, offsets, disk size, sector size, comment without a
 * terminator); map entries out of range and duplicated; parent loops and
 * chains deeper than VDISK_CHAIN_MAX through vdisk_disk_open_chain(); raw
 * images of odd sizes; and a seeded bit-flip fuzz loop over header and map.
 *
 * Memory bound: without sanitizers the address space is limited to the
 * current size + 256 MiB (RLIMIT_AS); under ASan no single allocation may
 * exceed 64 MiB (max_allocation_size_mb, returning NULL). Either way a
 * library that tries a huge allocation fails the case with -ENOMEM, which
 * the clean-error rule rejects.
 *
 * Usage: test-malformed [FUZZ_SEED [FUZZ_ITERATIONS]]
 */
#include <sys/resource.h>

#include "tests.h"
#include "vdi-layout.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif

#ifdef HAVE_ASAN
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
        return "allocator_may_return_null=1:max_allocation_size_mb=64";
}
#endif

#define READ_LIMIT (64 * MiB)   /* read at most this much of a huge disk */

/* The valid images everything is derived from. */
typedef struct sample {
        const char *name;
        uint8_t *bytes;
        size_t len;
        vdi_header h;
} sample;

static sample big;     /* 4 MiB disk, 1 MiB blocks (the VDI default), 3 slots */
static sample small;   /* 1 MiB disk, 64 KiB blocks, several slots */
static sample diff;    /* a diff of a 1 MiB / 64 KiB-block base, one slot */
static sample base64k; /* that base */

static unsigned n_cases, n_opened, n_read_ok, n_refused;

/* ---------------------------------------------------------------- the reference reading */

typedef struct ref {
        int invalid;            /* the library must fail to open or to read it */
        const char *why;        /* why invalid */
        int has_content;        /* content[] is the correct result */
        uint64_t size;          /* virtual size (cbDisk rounded up to a sector) */
        uint64_t raw_size;      /* cbDisk as stored */
        uint8_t *content;
        int map_corrupt;        /* entries out of range or duplicated: check must see it */
} ref;

static void ref_free(ref *r) {
        free(r->content);
        memset(r, 0, sizeof *r);
}

/* A lenient reading of VDI bytes: what a correct reader would show, or why
 * no reader may accept them. */
static void ref_read(const uint8_t *p, size_t len, ref *out) {
        vdi_header h;
        uint64_t map_bytes, blocks_needed, allocated_entries = 0;

        memset(out, 0, sizeof *out);
#define INVALID(reason)                 \
        do {                            \
                out->invalid = 1;       \
                out->why = (reason);    \
                return;                 \
        } while (0)

        if (vdi_parse(p, len, &h) < 0)
                INVALID("file shorter than a v1 header");
        if (h.signature != VDI_SIGNATURE)
                INVALID("bad signature");
        if (h.version >> 16 != 1)
                INVALID("major version is not 1");
        if (h.header_size < 384)
                INVALID("header size below 384");
        if (h.header_size >= 400 && len < VDI_OFF_END_V1PLUS)
                INVALID("file shorter than its v1+ header");
        if (h.type < VDI_TYPE_NORMAL || h.type > VDI_TYPE_DIFF)
                INVALID("unknown image type");
        if (h.block_size < 512 || (h.block_size & (h.block_size - 1)))
                INVALID("block size zero, below 512 or not a power of two");
        blocks_needed = h.disk_size / h.block_size + (h.disk_size % h.block_size != 0);
        if (blocks_needed > h.blocks)
                INVALID("the disk is larger than its blocks");
        map_bytes = (uint64_t) h.blocks * 4;
        if ((uint64_t) h.off_blocks + map_bytes > len)
                INVALID("the block map is not in the file");
        if (h.off_blocks < VDI_OFF_END_V1)
                INVALID("the block map overlaps the header");
        for (uint32_t b = 0; b < h.blocks; b++) {
                uint32_t e = vdi_map_entry(&h, b);
                if (e != VDI_ENTRY_FREE && e != VDI_ENTRY_ZERO)
                        allocated_entries++;
        }
        if (allocated_entries > 0) {
                /* the slots in use: [off_data, end of the highest referenced slot) */
                uint32_t max_slot = 0;
                uint64_t data_end;

                for (uint32_t b = 0; b < h.blocks; b++) {
                        uint32_t e = vdi_map_entry(&h, b);
                        if (e != VDI_ENTRY_FREE && e != VDI_ENTRY_ZERO && e > max_slot)
                                max_slot = e;
                }
                data_end = vdi_slot_offset(&h, max_slot) + h.block_size;
                if (h.off_data < h.off_blocks + map_bytes && data_end > h.off_blocks)
                        INVALID("the data area overlaps the block map");
                if (h.off_data < VDI_OFF_END_V1)
                        INVALID("the data area overlaps the header");
        }
#undef INVALID

        {
                vdi_map_stats st;
                vdi_map_analyse(&h, len, &st);
                out->map_corrupt = st.out_of_range > 0 || st.duplicates > 0;
        }
        out->raw_size = h.disk_size;
        out->size = ALIGN_UP(h.disk_size, 512);
        if (out->size > READ_LIMIT || out->size < h.disk_size)
                return;   /* too big to hold: any clean outcome */
        out->content = calloc(out->size ? out->size : 1, 1);
        ASSERT(out->content);
        out->has_content = 1;
        for (uint64_t b = 0; b * h.block_size < out->size; b++) {
                uint32_t e = vdi_map_entry(&h, (uint32_t) b);
                uint64_t vstart = b * h.block_size, n = MIN((uint64_t) h.block_size, out->size - vstart);
                uint64_t host;

                if (e == VDI_ENTRY_FREE || e == VDI_ENTRY_ZERO)
                        continue;
                host = vdi_slot_offset(&h, e);
                if (host >= len)
                        continue;
                memcpy(out->content + vstart, p + host, MIN(n, len - host));
        }
}

/* ---------------------------------------------------------------- running one case */

enum {
        MUST_OPEN = 1 << 0,      /* a valid image: open, read and check must succeed */
        WRITABLE = 1 << 1,       /* open read-write, write a little, flush */
        PROBE = 1 << 2,          /* format NULL instead of "vdi" */
};

typedef struct outcome {
        int open_r;              /* vdisk_disk_open's result */
        int read_r;              /* first failing read, or 0 */
        int check_r;
        uint64_t corruptions;
} outcome;

#define EXPECT_OPEN(o, code)                                                    \
        do {                                                                    \
                if ((o).open_r != (code))                                       \
                        FAIL("open returned %d (%s), expected %d (%s)", (o).open_r, \
                             strerror(-(o).open_r), (code), strerror(-(code))); \
        } while (0)

/* A file on a small device: for writable opens, where a corrupt header may
 * place new blocks at any offset a real (sparse) file could hold, the test's
 * own buffer is bounded by refusing growth past 64 MiB with -ENOSPC (a memory
 * io would try to allocate the whole range). */
typedef struct small_file {
        uint8_t *data;
        size_t len;
} small_file;

#define SMALL_FILE_MAX (64 * MiB)

static int sf_pread(void *user, void *buf, size_t len, uint64_t offset) {
        small_file *f = user;

        if (!range_within(offset, len, f->len))
                return -EIO;
        memcpy(buf, f->data + offset, len);
        return 0;
}

static int sf_truncate(void *user, uint64_t size) {
        small_file *f = user;
        uint8_t *p;

        if (size > SMALL_FILE_MAX)
                return -ENOSPC;
        p = realloc(f->data, size ? size : 1);
        if (!p)
                return -ENOMEM;
        if (size > f->len)
                memset(p + f->len, 0, size - f->len);
        f->data = p;
        f->len = size;
        return 0;
}

static int sf_pwrite(void *user, const void *buf, size_t len, uint64_t offset) {
        small_file *f = user;
        int r;

        if (!range_within(offset, len, SMALL_FILE_MAX))
                return -ENOSPC;
        if (offset + len > f->len) {
                r = sf_truncate(f, offset + len);
                if (r < 0)
                        return r;
        }
        memcpy(f->data + offset, buf, len);
        return 0;
}

static int sf_punch_hole(void *user, uint64_t offset, uint64_t len) {
        small_file *f = user;

        if (offset < f->len)
                memset(f->data + offset, 0, (size_t) MIN(len, f->len - offset));
        return 0;
}

static int sf_flush(void *user) {
        return 0;
}

static int sf_get_size(void *user, uint64_t *ret) {
        *ret = ((small_file *) user)->len;
        return 0;
}

static void sf_close(void *user) {
        small_file *f = user;

        free(f->data);
        free(f);
}

static vdisk_io *small_file_io(const char *name, const uint8_t *bytes, size_t len) {
        static const vdisk_io_ops ops = {
                .size = sizeof ops, .pread = sf_pread, .pwrite = sf_pwrite, .flush = sf_flush,
                .get_size = sf_get_size, .truncate = sf_truncate, .punch_hole = sf_punch_hole,
                .close = sf_close,
        };
        small_file *f = calloc(1, sizeof *f);
        vdisk_io *io = NULL;

        ASSERT(f);
        f->data = malloc(len ? len : 1);
        ASSERT(f->data);
        memcpy(f->data, bytes, len);
        f->len = len;
        ASSERT_OK(vdisk_io_new_ops(&ops, f, name, 0, &io));
        return io;
}

static outcome try_vdi(const char *label, const uint8_t *bytes, size_t len, unsigned mode) {
        outcome o = { 0 };
        vdisk_io *io = mode & WRITABLE ? small_file_io(label, bytes, len) : mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        uint32_t flags = mode & WRITABLE ? 0 : VDISK_OPEN_READONLY;
        ref rf;
        int r;

        n_cases++;
        test_set_context("case %s (%zu bytes)", label, len);
        ref_read(bytes, len, &rf);

        vdisk_clear_error();
        o.open_r = vdisk_disk_open(d, io, mode & PROBE ? NULL : "vdi", flags);
        if (o.open_r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, o.open_r);
                if (mode & MUST_OPEN)
                        FAIL("%s: a valid image failed to open: %d (%s)", label, o.open_r,
                             strerror(-o.open_r));
                n_refused++;
                goto out;
        }
        n_opened++;
        ASSERT_EQ_U64(vdisk_disk_count(d), 1);

        {
                vdisk_image *img = vdisk_disk_image(d, 0);
                const char *comment = NULL;

                r = vdisk_image_get_comment(img, &comment);
                if (r == 0)
                        ASSERT(comment && strlen(comment) <= 255);
        }

        if (mode & WRITABLE) {
                /* a write and a flush on whatever opened: any clean result */
                uint8_t sector[512];
                uint64_t size = vdisk_disk_size(d);

                memset(sector, 0xe7, sizeof sector);
                if (size >= 512) {
                        r = vdisk_disk_write(d, sector, sizeof sector, ALIGN_DOWN(size / 2, 512));
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, "write", r);
                        r = vdisk_disk_flush(d);
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, "flush", r);
                }
        }

        /* read everything (or, for huge disks, the first and last 32 MiB) */
        {
                uint64_t size = vdisk_disk_size(d);
                uint8_t *buf = malloc(4 * MiB);
                int compare = rf.has_content && !(mode & WRITABLE);

                ASSERT(buf);
                if (compare && size != rf.size && size != rf.raw_size)
                        FAIL("%s: opened with size %" PRIu64 ", the header says %" PRIu64, label, size,
                             rf.raw_size);
                for (uint64_t off = 0; off < size; off += 4 * MiB) {
                        size_t n = (size_t) MIN(4 * MiB, size - off);

                        if (size > READ_LIMIT && off == READ_LIMIT / 2)
                                off = MAX(ALIGN_DOWN(size - READ_LIMIT / 2, 512), off);
                        n = (size_t) MIN(4 * MiB, size - off);
                        r = vdisk_disk_read(d, buf, n, off);
                        if (r < 0) {
                                test_check_clean_error(__FILE__, __LINE__, "read", r);
                                o.read_r = r;
                                break;
                        }
                        if (compare && off < rf.size &&
                            memcmp(buf, rf.content + off, (size_t) MIN((uint64_t) n, rf.size - off)) != 0) {
                                size_t i = 0;
                                while (buf[i] == rf.content[off + i])
                                        i++;
                                FAIL("%s: read 0x%02x at 0x%" PRIx64 ", the bytes say 0x%02x", label, buf[i],
                                     off + i, rf.content[off + i]);
                        }
                }
                free(buf);
                if (o.read_r == 0) {
                        n_read_ok++;
                        if (rf.invalid)
                                FAIL("%s: opened and read in full, but the image is invalid: %s", label,
                                     rf.why);
                }
                if (o.read_r < 0 && (mode & MUST_OPEN))
                        FAIL("%s: reading a valid image failed: %d", label, o.read_r);
        }

        {
                vdisk_check_report rep = { .size = sizeof rep };

                o.check_r = vdisk_check(d, 0, 0, &rep, NULL);
                if (o.check_r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "check", o.check_r);
                else {
                        o.corruptions = rep.corruptions;
                        if (rf.map_corrupt && rep.corruptions == 0 && !(mode & WRITABLE))
                                FAIL("%s: the block map has entries out of range or duplicated, but check "
                                     "reports no corruption", label);
                        if ((mode & MUST_OPEN) && (rep.corruptions || rep.leaks || rep.check_errors)) {
                                print_check_messages(&rep);
                                FAIL("%s: check of a valid image: %" PRIu64 " corruptions, %" PRIu64
                                     " leaks",
                                     label, rep.corruptions, rep.leaks);
                        }
                }
                vdisk_check_report_clear(&rep);
        }
out:
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        ref_free(&rf);
        return o;
}

/* A copy of a sample with one 32-bit field replaced. */
static outcome try_field32(const sample *s, const char *what, size_t off, uint32_t v, unsigned mode) {
        uint8_t *b = malloc(s->len);
        char label[128];
        outcome o;

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        vdi_put32(b, off, v);
        snprintf(label, sizeof label, "%s-%s=%#" PRIx32 ".vdi", s->name, what, v);
        o = try_vdi(label, b, s->len, mode);
        free(b);
        return o;
}

static outcome try_field64(const sample *s, const char *what, size_t off, uint64_t v, unsigned mode) {
        uint8_t *b = malloc(s->len);
        char label[128];
        outcome o;

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        vdi_put64(b, off, v);
        snprintf(label, sizeof label, "%s-%s=%#" PRIx64 ".vdi", s->name, what, v);
        o = try_vdi(label, b, s->len, mode);
        free(b);
        return o;
}

/* ---------------------------------------------------------------- samples */

static void sample_take(sample *s, const char *name, vdisk_io *io) {
        s->name = name;
        s->bytes = mem_io_copy(io, &s->len);
        ASSERT(vdi_parse(s->bytes, s->len, &s->h) == 0);
        ASSERT(s->h.map);
}

static void make_samples(void) {
        vdisk_create_opts o64 = { .size = sizeof o64, .block_size = 64 * KiB };
        vdisk_io *io, *bio;
        vdisk_disk *d;
        uint8_t *buf = malloc(1 * MiB);
        rng r;

        ASSERT(buf);
        rng_seed(&r, 1234);

        /* big: blocks 0 and 2 full, block 3 partly (three slots), block 1 free */
        io = mem_io("malformed-big.vdi", NULL, 0);
        d = disk_new();
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 4 * MiB, NULL));
        rng_fill(&r, buf, 1 * MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, 1 * MiB, 2 * MiB));
        rng_fill(&r, buf, 1 * MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, 1 * MiB, 0));
        rng_fill(&r, buf, 64 * KiB);
        ASSERT_OK(vdisk_disk_write(d, buf, 64 * KiB, 3 * MiB + 4096));
        vdisk_disk_unref(d);
        sample_take(&big, "big", io);
        vdisk_io_unref(io);
        ASSERT_EQ_U64(big.h.blocks, 4);
        ASSERT_EQ_U64(big.h.blocks_allocated, 3);

        /* small: 64 KiB blocks, every other block written, one discarded */
        io = mem_io("malformed-small.vdi", NULL, 0);
        d = disk_new();
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", 1 * MiB, &o64));
        for (unsigned b = 0; b < 16; b += 2) {
                rng_fill(&r, buf, 64 * KiB);
                ASSERT_OK(vdisk_disk_write(d, buf, 64 * KiB - 512 * (b % 3), b * 64 * KiB));
        }
        ASSERT_OK(vdisk_disk_discard(d, 4 * 64 * KiB, 64 * KiB));
        vdisk_disk_unref(d);
        sample_take(&small, "small", io);
        vdisk_io_unref(io);
        ASSERT_EQ_U64(small.h.blocks, 16);

        /* base64k + diff (one slot in the diff) */
        bio = mem_io("malformed-base64k.vdi", NULL, 0);
        io = mem_io("malformed-diff.vdi", NULL, 0);
        d = disk_new();
        ASSERT_OK(vdisk_disk_create_base(d, bio, "vdi", 1 * MiB, &o64));
        rng_fill(&r, buf, 1 * MiB);
        ASSERT_OK(vdisk_disk_write(d, buf, 1 * MiB, 0));
        ASSERT_OK(vdisk_disk_create_diff(d, io, "vdi", &o64));
        rng_fill(&r, buf, 4096);
        ASSERT_OK(vdisk_disk_write(d, buf, 4096, 128 * KiB));
        vdisk_disk_unref(d);
        sample_take(&base64k, "base64k", bio);
        sample_take(&diff, "diff", io);
        vdisk_io_unref(io);
        vdisk_io_unref(bio);
        free(buf);
}

/* ---------------------------------------------------------------- cases */

static void test_pristine(void) {
        const sample *all[] = { &big, &small, &base64k, &diff };

        for (size_t i = 0; i < ELEMENTSOF(all); i++) {
                char label[64];

                snprintf(label, sizeof label, "%s-pristine.vdi", all[i]->name);
                try_vdi(label, all[i]->bytes, all[i]->len, MUST_OPEN);
                try_vdi(label, all[i]->bytes, all[i]->len, MUST_OPEN | PROBE);
        }
}

static void try_truncated(const sample *s, size_t len) {
        char label[96];
        ref rf;

        if (len > s->len)
                return;
        snprintf(label, sizeof label, "%s-truncated-%zu.vdi", s->name, len);
        ref_read(s->bytes, len, &rf);
        if (len < VDI_OFF_END_V1 || len < s->h.off_blocks + (uint64_t) s->h.blocks * 4)
                ASSERT(rf.invalid);   /* the reference agrees that this must fail */
        ref_free(&rf);
        try_vdi(label, s->bytes, len, 0);
        if (len < 1024)
                try_vdi(label, s->bytes, len, PROBE);
}

static void test_truncation(const sample *s) {
        static const size_t fields[] = {
                0, VDI_OFF_SIGNATURE, VDI_OFF_VERSION, VDI_OFF_HEADER_SIZE, VDI_OFF_TYPE, VDI_OFF_FLAGS,
                VDI_OFF_COMMENT, VDI_OFF_BLOCKS_OFFSET, VDI_OFF_DATA_OFFSET, VDI_OFF_CYLINDERS,
                VDI_OFF_HEADS,
                VDI_OFF_SECTORS, VDI_OFF_SECTOR_SIZE, VDI_OFF_DUMMY, VDI_OFF_DISK_SIZE, VDI_OFF_BLOCK_SIZE,
                VDI_OFF_BLOCK_EXTRA, VDI_OFF_BLOCKS, VDI_OFF_BLOCKS_ALLOCATED, VDI_OFF_UUID_CREATE,
                VDI_OFF_UUID_MODIFY, VDI_OFF_UUID_LINKAGE, VDI_OFF_UUID_PARENT_MODIFY, VDI_OFF_LCHS,
                VDI_OFF_END_V1PLUS,
        };
        const vdi_header *h = &s->h;
        size_t map_end = h->off_blocks + (size_t) h->blocks * 4;
        size_t slot0 = (size_t) vdi_slot_offset(h, 0);
        size_t data_end = MIN(s->len, (size_t) vdi_slot_offset(h, 1) + 512);

        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                if (fields[i] > 0)
                        try_truncated(s, fields[i] - 1);
                try_truncated(s, fields[i]);
                try_truncated(s, fields[i] + 1);
        }
        /* every 512 bytes through the map and 64 KiB into the first slot, then
         * every 32 KiB to the start of the second */
        for (size_t len = 512; len <= data_end; len += len < slot0 + 64 * KiB ? 512 : 32 * KiB)
                try_truncated(s, len);
        try_truncated(s, data_end);
        try_truncated(s, map_end - 1);
        try_truncated(s, map_end);
        /* each slot's end, +-1 */
        for (uint32_t i = 0; i < h->blocks_allocated; i++) {
                size_t end = (size_t) vdi_slot_offset(h, i) + h->block_size;
                try_truncated(s, end - 1);
                try_truncated(s, end);
                try_truncated(s, end + 1);
        }
        try_truncated(s, s->len - 1);
        /* the whole file is a valid image */
        try_vdi("truncated-not-at-all.vdi", s->bytes, s->len, MUST_OPEN);
}

static void test_header_fields(const sample *s) {
        const vdi_header *h = &s->h;
        uint64_t bs = h->block_size;
        outcome o;

        /* signature: not a VDI */
        o = try_field32(s, "signature", VDI_OFF_SIGNATURE, 0, 0);
        EXPECT_OPEN(o, -EMEDIUMTYPE);
        o = try_field32(s, "signature", VDI_OFF_SIGNATURE, VDI_SIGNATURE ^ 1, 0);
        EXPECT_OPEN(o, -EMEDIUMTYPE);
        o = try_field32(s, "signature", VDI_OFF_SIGNATURE, VDI_SIGNATURE ^ 1, PROBE);
        EXPECT_OPEN(o, -EMEDIUMTYPE);

        /* version: a later major version is valid but unsupported */
        o = try_field32(s, "version", VDI_OFF_VERSION, 0x00020001, 0);
        EXPECT_OPEN(o, -EOPNOTSUPP);
        try_field32(s, "version", VDI_OFF_VERSION, 0x00000001, 0);
        try_field32(s, "version", VDI_OFF_VERSION, 0x00010000, 0);
        try_field32(s, "version", VDI_OFF_VERSION, 0xFFFFFFFF, 0);

        /* header size: 384 is qemu's v1.1 header without LCHS and must open */
        try_field32(s, "header-size", VDI_OFF_HEADER_SIZE, 384, MUST_OPEN);
        try_field32(s, "header-size", VDI_OFF_HEADER_SIZE, 0, 0);
        try_field32(s, "header-size", VDI_OFF_HEADER_SIZE, 16, 0);
        try_field32(s, "header-size", VDI_OFF_HEADER_SIZE, 383, 0);
        try_field32(s, "header-size", VDI_OFF_HEADER_SIZE, 401, 0);
        try_field32(s, "header-size", VDI_OFF_HEADER_SIZE, 0x100000, 0);
        try_field32(s, "header-size", VDI_OFF_HEADER_SIZE, 0xFFFFFFFF, 0);

        /* type and flags */
        try_field32(s, "type", VDI_OFF_TYPE, 0, 0);
        try_field32(s, "type", VDI_OFF_TYPE, VDI_TYPE_FIXED, 0);
        try_field32(s, "type", VDI_OFF_TYPE, VDI_TYPE_UNDO, 0);
        try_field32(s, "type", VDI_OFF_TYPE, VDI_TYPE_DIFF, 0);
        try_field32(s, "type", VDI_OFF_TYPE, 5, 0);
        try_field32(s, "type", VDI_OFF_TYPE, 0xFFFFFFFF, 0);
        try_field32(s, "flags", VDI_OFF_FLAGS, 0xFFFFFFFF, 0);

        /* block size: 0, not a power of two, tiny, huge */
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, 0, 0);
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, 1000000, 0);
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, 3 << 20, 0);
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, 256, 0);
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, 1u << 30, 0);
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, 1u << 31, 0);
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, (uint32_t) bs * 2, 0);
        try_field32(s, "block-size", VDI_OFF_BLOCK_SIZE, (uint32_t) bs / 2, 0);
        try_field32(s, "block-extra", VDI_OFF_BLOCK_EXTRA, 512, 0);
        try_field32(s, "block-extra", VDI_OFF_BLOCK_EXTRA, 0xFFFFFFFF, 0);
        try_field32(s, "sector-size", VDI_OFF_SECTOR_SIZE, 0, 0);
        try_field32(s, "sector-size", VDI_OFF_SECTOR_SIZE, 4096, 0);

        /* block counts */
        try_field32(s, "blocks", VDI_OFF_BLOCKS, 0, 0);
        try_field32(s, "blocks", VDI_OFF_BLOCKS, h->blocks - 1, 0);
        try_field32(s, "blocks", VDI_OFF_BLOCKS, h->blocks + 1, 0);
        try_field32(s, "blocks", VDI_OFF_BLOCKS, 0x40000000, 0);
        try_field32(s, "blocks", VDI_OFF_BLOCKS, 0xFFFFFFFF, 0);
        try_field32(s, "blocks-allocated", VDI_OFF_BLOCKS_ALLOCATED, 0, 0);
        try_field32(s, "blocks-allocated", VDI_OFF_BLOCKS_ALLOCATED, h->blocks_allocated - 1, 0);
        try_field32(s, "blocks-allocated", VDI_OFF_BLOCKS_ALLOCATED, h->blocks_allocated + 1, 0);
        try_field32(s, "blocks-allocated", VDI_OFF_BLOCKS_ALLOCATED, h->blocks + 1, 0);
        try_field32(s, "blocks-allocated", VDI_OFF_BLOCKS_ALLOCATED, 0xFFFFFFFF, 0);

        /* offsets: out of the file, overlapping, unaligned */
        try_field32(s, "off-blocks", VDI_OFF_BLOCKS_OFFSET, 0, 0);
        try_field32(s, "off-blocks", VDI_OFF_BLOCKS_OFFSET, 0x100, 0);
        try_field32(s, "off-blocks", VDI_OFF_BLOCKS_OFFSET, h->off_blocks + 1, 0);
        try_field32(s, "off-blocks", VDI_OFF_BLOCKS_OFFSET, h->off_data, 0);
        try_field32(s, "off-blocks", VDI_OFF_BLOCKS_OFFSET, (uint32_t) s->len, 0);
        try_field32(s, "off-blocks", VDI_OFF_BLOCKS_OFFSET, (uint32_t) s->len - 4, 0);
        try_field32(s, "off-blocks", VDI_OFF_BLOCKS_OFFSET, 0xFFFFFE00, 0);
        try_field32(s, "off-data", VDI_OFF_DATA_OFFSET, 0, 0);
        try_field32(s, "off-data", VDI_OFF_DATA_OFFSET, 0x200, 0);
        try_field32(s, "off-data", VDI_OFF_DATA_OFFSET, h->off_blocks, 0);
        try_field32(s, "off-data", VDI_OFF_DATA_OFFSET, h->off_data + 1, 0);
        try_field32(s, "off-data", VDI_OFF_DATA_OFFSET, h->off_data + 512, 0);
        try_field32(s, "off-data", VDI_OFF_DATA_OFFSET, (uint32_t) s->len + 512, 0);
        try_field32(s, "off-data", VDI_OFF_DATA_OFFSET, 0xFFFFFE00, 0);

        /* disk size */
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, 0, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, 1, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, h->disk_size - 512, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, h->disk_size - 1, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, h->disk_size + 1, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, h->disk_size + bs, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, UINT64_C(1) << 63, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, UINT64_MAX, 0);
        try_field64(s, "disk-size", VDI_OFF_DISK_SIZE, UINT64_MAX - 511, 0);

        /* geometry and UUID fields are metadata only */
        try_field32(s, "cylinders", VDI_OFF_CYLINDERS, 0xFFFFFFFF, 0);
        try_field32(s, "heads", VDI_OFF_HEADS, 0xFFFFFFFF, 0);
        try_field32(s, "lchs-heads", VDI_OFF_LCHS + 4, 0xFFFFFFFF, 0);
        try_field32(s, "linkage", VDI_OFF_UUID_LINKAGE, 0x12345678, 0);

        /* a comment filling its field, no terminator */
        {
                uint8_t *b = malloc(s->len);
                ASSERT(b);
                memcpy(b, s->bytes, s->len);
                memset(b + VDI_OFF_COMMENT, 'A', 256);
                try_vdi("comment-unterminated.vdi", b, s->len, 0);
                try_vdi("comment-unterminated-rw.vdi", b, s->len, WRITABLE);
                free(b);
        }
}

/* The memory bound: a header claiming a map of 2^32 entries (16 GiB) must
 * fail at once with -EFBIG or -EUCLEAN, never by trying the allocation. */
static void test_huge_map(const sample *s) {
        static const uint32_t counts[] = { 0xFFFFFFFF, 0x80000000, 0x10000000, 0x01000001 };

        for (size_t i = 0; i < ELEMENTSOF(counts); i++) {
                uint8_t *b = malloc(s->len);
                char label[64];
                outcome o;

                ASSERT(b);
                memcpy(b, s->bytes, s->len);
                vdi_put32(b, VDI_OFF_BLOCKS, counts[i]);
                /* consistent: the disk really is that large */
                vdi_put64(b, VDI_OFF_DISK_SIZE, (uint64_t) counts[i] * s->h.block_size);
                snprintf(label, sizeof label, "huge-map-%#" PRIx32 ".vdi", counts[i]);
                o = try_vdi(label, b, s->len, 0);
                if (o.open_r != -EFBIG && o.open_r != -EUCLEAN)
                        FAIL("%s: open returned %d (%s), expected -EFBIG or -EUCLEAN", label, o.open_r,
                             strerror(-o.open_r));
                o = try_vdi(label, b, s->len, WRITABLE);
                if (o.open_r != -EFBIG && o.open_r != -EUCLEAN)
                        FAIL("%s (writable): open returned %d (%s), expected -EFBIG or -EUCLEAN", label,
                             o.open_r, strerror(-o.open_r));
                free(b);
        }
}

static void test_map_entries(const sample *s) {
        const vdi_header *h = &s->h;
        size_t mo = h->off_blocks;
        uint32_t first_used = UINT32_MAX, first_free = UINT32_MAX;
        uint8_t *b = malloc(s->len);
        outcome o;

        ASSERT(b);
        for (uint32_t i = 0; i < h->blocks; i++) {
                uint32_t e = vdi_map_entry(h, i);
                if (e < h->blocks_allocated && first_used == UINT32_MAX)
                        first_used = i;
                if (e == VDI_ENTRY_FREE && first_free == UINT32_MAX)
                        first_free = i;
        }
        ASSERT(first_used != UINT32_MAX && first_free != UINT32_MAX);

        /* out of range: reads of that block fail, or the open does; check sees it */
        static const uint32_t bad[] = { 0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFD };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                uint32_t v = bad[i] < 3 ? h->blocks_allocated + bad[i] : bad[i];
                char label[64];

                memcpy(b, s->bytes, s->len);
                vdi_put32(b, mo + 4 * (size_t) first_used, v);
                snprintf(label, sizeof label, "%s-entry-out-of-range-%#" PRIx32 ".vdi", s->name, v);
                o = try_vdi(label, b, s->len, 0);
                if (o.open_r == 0)
                        ASSERT(o.read_r < 0 || o.corruptions > 0);
                try_vdi(label, b, s->len, WRITABLE);
        }

        /* two blocks naming one slot */
        memcpy(b, s->bytes, s->len);
        vdi_put32(b, mo + 4 * (size_t) first_free, vdi_map_entry(h, first_used));
        o = try_vdi("entry-duplicated.vdi", b, s->len, 0);
        if (o.open_r == 0 && o.check_r >= 0)
                ASSERT(o.corruptions > 0);
        try_vdi("entry-duplicated-rw.vdi", b, s->len, WRITABLE);

        /* every entry the same slot */
        memcpy(b, s->bytes, s->len);
        for (uint32_t i = 0; i < h->blocks; i++)
                vdi_put32(b, mo + 4 * (size_t) i, 0);
        try_vdi("entries-all-slot-0.vdi", b, s->len, 0);

        /* the map says ZERO everywhere: a valid image of zeros */
        memcpy(b, s->bytes, s->len);
        for (uint32_t i = 0; i < h->blocks; i++)
                vdi_put32(b, mo + 4 * (size_t) i, VDI_ENTRY_ZERO);
        vdi_put32(b, VDI_OFF_BLOCKS_ALLOCATED, 0);
        o = try_vdi("entries-all-zero.vdi", b, s->len, 0);
        EXPECT_OPEN(o, 0);
        free(b);
}

/* ---------------------------------------------------------------- chains */

typedef struct cand {
        uint8_t uuid[16];
        vdisk_io *io;
} cand;

typedef struct resolver_ctx {
        cand *v;
        size_t n;
        unsigned calls;
} resolver_ctx;

static int res_find_uuid(void *user, const uint8_t uuid[16], const char *format, const char *child_name,
                         int writable, vdisk_io **ret_io) {
        resolver_ctx *c = user;
        vdisk_io *found = NULL;

        if (++c->calls > 10000)
                FAIL("the resolver was asked 10000 times: the chain walk does not end");
        for (size_t i = 0; i < c->n; i++) {
                if (memcmp(c->v[i].uuid, uuid, 16) != 0)
                        continue;
                if (found)
                        return -ENOTUNIQ;
                found = c->v[i].io;
        }
        if (!found)
                return -ENOENT;
        *ret_io = vdisk_io_ref(found);
        return 0;
}

static int res_open_name(void *user, const char *name, const char *child_name, int writable,
                         vdisk_io **ret_io) {
        return -ENOENT;
}

static void uuid_n(uint8_t u[16], unsigned n) {
        memset(u, 0, 16);
        u[0] = 0xc4;
        u[1] = 0x1a;
        u[12] = (uint8_t) (n >> 8);
        u[13] = (uint8_t) n;
        u[15] = 1;
}

/* A candidate: the diff sample (or the base) with the given UUID and parent UUID. */
static void cand_make(cand *c, const sample *s, unsigned id, const uint8_t *parent) {
        uint8_t *b = malloc(s->len);
        char name[64];

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        uuid_n(c->uuid, id);
        memcpy(b + VDI_OFF_UUID_CREATE, c->uuid, 16);
        if (parent)
                memcpy(b + VDI_OFF_UUID_LINKAGE, parent, 16);
        snprintf(name, sizeof name, "chain-%u.vdi", id);
        c->io = mem_io(name, b, s->len);
        free(b);
}

static int open_chain(resolver_ctx *ctx, vdisk_io *top, vdisk_disk **ret) {
        vdisk_resolver_ops ops = {
                .size = sizeof ops, .open_name = res_open_name, .find_uuid = res_find_uuid,
        };
        vdisk_resolver *r = NULL;
        vdisk_disk *d = disk_new();
        int ret_r;

        ASSERT_OK(vdisk_resolver_new_ops(&ops, ctx, &r));
        ctx->calls = 0;
        vdisk_clear_error();
        ret_r = vdisk_disk_open_chain(d, r, top, "vdi", VDISK_OPEN_READONLY);
        vdisk_resolver_free(r);
        if (ret_r < 0)
                test_check_clean_error(__FILE__, __LINE__, "vdisk_disk_open_chain", ret_r);
        if (ret)
                *ret = d;
        else
                vdisk_disk_unref(d);
        return ret_r;
}

static void cands_free(cand *v, size_t n) {
        for (size_t i = 0; i < n; i++)
                vdisk_io_unref(v[i].io);
}

static void test_chains(void) {
        cand v[VDISK_CHAIN_MAX + 2];
        resolver_ctx ctx = { .v = v };
        vdisk_disk *d;
        uint8_t u[16];
        int r;

        /* a self loop */
        uuid_n(u, 1);
        cand_make(&v[0], &diff, 1, u);
        ctx.n = 1;
        ASSERT_ERR(open_chain(&ctx, v[0].io, NULL), -ELOOP);
        cands_free(v, 1);

        /* two diffs naming each other */
        uuid_n(u, 2);
        cand_make(&v[0], &diff, 1, u);
        uuid_n(u, 1);
        cand_make(&v[1], &diff, 2, u);
        ctx.n = 2;
        ASSERT_ERR(open_chain(&ctx, v[0].io, NULL), -ELOOP);
        ASSERT_ERR(open_chain(&ctx, v[1].io, NULL), -ELOOP);
        cands_free(v, 2);

        /* a tail leading into a 3-cycle: 10 -> 11 -> 12 -> 13 -> 11 */
        for (unsigned i = 0; i < 4; i++) {
                uuid_n(u, i == 3 ? 11 : 11 + i);
                cand_make(&v[i], &diff, 10 + i, u);
        }
        ctx.n = 4;
        ASSERT_ERR(open_chain(&ctx, v[0].io, NULL), -ELOOP);
        cands_free(v, 4);

        /* a missing parent, and two candidates with one UUID */
        uuid_n(u, 99);
        cand_make(&v[0], &diff, 1, u);
        ctx.n = 1;
        ASSERT_ERR(open_chain(&ctx, v[0].io, NULL), -ENOENT);
        cand_make(&v[1], &base64k, 99, NULL);
        cand_make(&v[2], &base64k, 99, NULL);
        ctx.n = 3;
        ASSERT_ERR(open_chain(&ctx, v[0].io, NULL), -ENOTUNIQ);
        /* one of them: a valid chain */
        ctx.n = 2;
        ASSERT_OK(open_chain(&ctx, v[0].io, &d));
        ASSERT_EQ_U64(vdisk_disk_count(d), 2);
        vdisk_disk_unref(d);
        cands_free(v, 3);

        /* VDISK_CHAIN_MAX images open; one more is refused */
        for (unsigned depth = VDISK_CHAIN_MAX; depth <= VDISK_CHAIN_MAX + 1; depth++) {
                cand_make(&v[0], &base64k, 1000, NULL);
                for (unsigned i = 1; i < depth; i++)
                        cand_make(&v[i], &diff, 1000 + i, v[i - 1].uuid);
                ctx.n = depth;
                r = open_chain(&ctx, v[depth - 1].io, &d);
                if (depth <= VDISK_CHAIN_MAX) {
                        uint8_t *all;
                        uint64_t size;

                        if (r < 0)
                                FAIL("a chain of %u images failed to open: %d (%s)", depth, r, strerror(-r));
                        ASSERT_EQ_U64(vdisk_disk_count(d), depth);
                        all = disk_read_all(d, &size);
                        free(all);
                } else if (r != -ELOOP && r != -E2BIG)
                        FAIL("a chain of %u images: open_chain returned %d (%s), expected -ELOOP or -E2BIG",
                             depth, r, strerror(-r));
                vdisk_disk_unref(d);
                cands_free(v, depth);
        }

        /* pushing image 65 by hand */
        cand_make(&v[0], &base64k, 2000, NULL);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, v[0].io, "vdi", VDISK_OPEN_READONLY));
        for (unsigned i = 1; i <= VDISK_CHAIN_MAX; i++) {
                cand_make(&v[i], &diff, 2000 + i, v[i - 1].uuid);
                r = vdisk_disk_open(d, v[i].io, "vdi", VDISK_OPEN_READONLY);
                if (i < VDISK_CHAIN_MAX)
                        ASSERT_OK(r);
                else {
                        if (r != -ELOOP && r != -E2BIG)
                                FAIL("opening image %u by hand returned %d, expected -E2BIG or -ELOOP",
                                     i + 1, r);
                        test_check_clean_error(__FILE__, __LINE__, "open of image 65", r);
                }
        }
        ASSERT_EQ_U64(vdisk_disk_count(d), VDISK_CHAIN_MAX);
        vdisk_disk_unref(d);
        cands_free(v, VDISK_CHAIN_MAX + 1);
}

/* ---------------------------------------------------------------- raw */

static void test_raw(void) {
        static const size_t sizes[] = { 0, 1, 511, 1000, 4097 };
        uint8_t *bytes = malloc(8192);
        rng r;

        ASSERT(bytes);
        rng_seed(&r, 77);
        rng_fill(&r, bytes, 8192);
        for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
                size_t len = sizes[i];
                char label[64];
                vdisk_io *io;
                vdisk_disk *d = disk_new();
                int rr;

                snprintf(label, sizeof label, "raw-%zu.img", len);
                test_set_context("raw of %zu bytes", len);
                io = mem_io(label, bytes, len);
                rr = vdisk_disk_open(d, io, "raw", VDISK_OPEN_READONLY);
                if (rr < 0)
                        test_check_clean_error(__FILE__, __LINE__, label, rr);
                else {
                        uint64_t size = vdisk_disk_size(d);
                        uint8_t *all;

                        /* the size is the file's, rounded to a sector either way */
                        ASSERT(size == len || size == ALIGN_DOWN(len, 512) || size == ALIGN_UP(len, 512));
                        all = disk_read_all(d, &size);
                        ASSERT_MEMEQ(all, bytes, MIN(size, len));
                        if (size > len)
                                ASSERT(buf_is_zero(all + len, size - len));
                        free(all);
                }
                vdisk_disk_unref(d);
                /* a writable open never guesses raw */
                d = disk_new();
                ASSERT_FAILS(vdisk_disk_open(d, io, NULL, 0));
                vdisk_disk_unref(d);
                vdisk_io_unref(io);
        }

        /* VDI bytes named as raw are raw bytes */
        {
                vdisk_io *io = mem_io("vdi-as-raw.img", big.bytes, big.len);
                vdisk_disk *d = disk_new();
                uint8_t *all;
                uint64_t size;

                ASSERT_OK(vdisk_disk_open(d, io, "raw", VDISK_OPEN_READONLY));
                all = disk_read_all(d, &size);
                ASSERT_EQ_U64(size, big.len);
                ASSERT_MEMEQ(all, big.bytes, big.len);
                free(all);
                vdisk_disk_unref(d);
                vdisk_io_unref(io);
        }
        free(bytes);
        test_set_context("%s", "");
}

/* ---------------------------------------------------------------- fuzz */

static void fuzz(const sample *s, uint64_t seed, unsigned iterations) {
        size_t map_end = s->h.off_blocks + (size_t) s->h.blocks * 4;
        uint8_t *b = malloc(s->len);
        unsigned opened_before = n_opened;
        rng r;

        ASSERT(b);
        rng_seed(&r, seed);
        for (unsigned it = 0; it < iterations; it++) {
                unsigned flips = (unsigned) rng_range(&r, 1, 8);
                char label[96];

                memcpy(b, s->bytes, s->len);
                for (unsigned f = 0; f < flips; f++) {
                        size_t at;
                        /* mostly the header fields, sometimes the map */
                        if (rng_chance(&r, 70))
                                at = (size_t) rng_range(&r, VDI_OFF_SIGNATURE, VDI_OFF_END_V1PLUS - 1);
                        else
                                at = (size_t) rng_range(&r, s->h.off_blocks, map_end - 1);
                        b[at] ^= (uint8_t) (1u << rng_below(&r, 8));
                }
                snprintf(label, sizeof label, "fuzz-%s-seed%" PRIu64 "-iter%u.vdi", s->name, seed, it);
                try_vdi(label, b, s->len, rng_chance(&r, 25) ? WRITABLE : 0);
        }
        printf("fuzz %s seed %" PRIu64 ": %u iterations, %u opened\n", s->name, seed, iterations,
               n_opened - opened_before);
        free(b);
}


/* ---------------------------------------------------------------- VMDK */

static uint32_t t_le32(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}
static uint64_t t_le64(const uint8_t *p) {
        return t_le32(p) | (uint64_t) t_le32(p + 4) << 32;
}
static void t_put32(uint8_t *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t) (v >> (8 * i));
}
static void t_put64(uint8_t *p, uint64_t v) {
        t_put32(p, (uint32_t) v);
        t_put32(p + 4, (uint32_t) (v >> 32));
}

/* A monolithicSparse VMDK (zeroed-grain GTEs on) that the library wrote:
 * 1 MiB, 64 KiB grains, grains 0, 3 and 15 written (15 partly), grain 5
 * marked zero. Its expected content is kept to check the pristine case. */
static uint8_t *vmdk_bytes, *vmdk_content;
static size_t vmdk_len;
static uint64_t vmdk_gd, vmdk_rgd, vmdk_gt, vmdk_rgt;   /* byte offsets */

static void make_vmdk_sample(void) {
        static const char *const opts[] = { "zeroed_grain", "on", NULL };
        vdisk_create_opts o = { .size = sizeof o, .options = opts };
        vdisk_io *io = mem_io("malformed.vmdk", NULL, 0);
        vdisk_disk *d = disk_new();
        rng r;

        vmdk_content = calloc(1, 1 * MiB);
        ASSERT(vmdk_content);
        rng_seed(&r, 77);
        rng_fill(&r, vmdk_content, 64 * KiB);
        rng_fill(&r, vmdk_content + 3 * 64 * KiB, 64 * KiB);
        rng_fill(&r, vmdk_content + 15 * 64 * KiB + 4096, 8192);
        rng_fill(&r, vmdk_content + 5 * 64 * KiB, 64 * KiB);
        ASSERT_OK(vdisk_disk_create_base(d, io, "vmdk", 1 * MiB, &o));
        ASSERT_OK(vdisk_disk_write(d, vmdk_content, 1 * MiB, 0));
        ASSERT_OK(vdisk_disk_discard(d, 5 * 64 * KiB, 64 * KiB));
        vdisk_disk_unref(d);
        vmdk_bytes = mem_io_copy(io, &vmdk_len);
        vdisk_io_unref(io);
        ASSERT(vmdk_len > 512 && memcmp(vmdk_bytes, "KDMV", 4) == 0);
        vmdk_rgd = t_le64(vmdk_bytes + 48) * 512;
        vmdk_gd = t_le64(vmdk_bytes + 56) * 512;
        ASSERT(vmdk_gd + 4 <= vmdk_len && vmdk_rgd + 4 <= vmdk_len);
        vmdk_gt = (uint64_t) t_le32(vmdk_bytes + vmdk_gd) * 512;
        vmdk_rgt = (uint64_t) t_le32(vmdk_bytes + vmdk_rgd) * 512;
        ASSERT(vmdk_gt && vmdk_gt + 64 <= vmdk_len && vmdk_rgt && vmdk_rgt + 64 <= vmdk_len);
        /* the discarded grain became a zeroed-grain entry (1) in both GTs */
        printf("vmdk sample: %zu bytes, GTE 5 = %" PRIu32 "\n", vmdk_len, t_le32(vmdk_bytes + vmdk_gt + 5 * 4));
        ASSERT(t_le32(vmdk_bytes + vmdk_gt + 5 * 4) == t_le32(vmdk_bytes + vmdk_rgt + 5 * 4));
        ASSERT(t_le32(vmdk_bytes + vmdk_gt) != 0 && t_le32(vmdk_bytes + vmdk_gt) == t_le32(vmdk_bytes + vmdk_rgt));
        memset(vmdk_content + 5 * 64 * KiB, 0, 64 * KiB);
}

/* Opens the bytes as VMDK, reads everything, maybe writes; any clean result,
 * and with MUST_OPEN the sample's content. */
static void try_vmdk(const char *label, const uint8_t *bytes, size_t len, unsigned mode) {
        vdisk_io *io = mode & WRITABLE ? small_file_io(label, bytes, len) : mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        uint8_t *buf;
        uint64_t size;
        int r;

        n_cases++;
        test_set_context("vmdk case %s (%zu bytes)", label, len);
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, mode & PROBE ? NULL : "vmdk", mode & WRITABLE ? 0 : VDISK_OPEN_READONLY);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, r);
                if (mode & MUST_OPEN)
                        FAIL("%s: a valid image failed to open: %d", label, r);
                n_refused++;
                goto out;
        }
        n_opened++;
        size = vdisk_disk_size(d);
        buf = malloc(64 * KiB);
        ASSERT(buf);
        for (uint64_t off = 0; off < size && off < 4 * MiB; off += 64 * KiB) {
                size_t n = (size_t) MIN(64 * KiB, size - off);

                r = vdisk_disk_read(d, buf, n, off);
                if (r < 0) {
                        test_check_clean_error(__FILE__, __LINE__, "read", r);
                        if (mode & MUST_OPEN)
                                FAIL("%s: read at %" PRIu64 " failed", label, off);
                        break;
                }
                if (mode & MUST_OPEN)
                        ASSERT_MEMEQ(buf, vmdk_content + off, n);
        }
        if (r >= 0)
                n_read_ok++;
        if (mode & WRITABLE) {
                memset(buf, 0xe7, 4096);
                r = vdisk_disk_write(d, buf, 4096, 7 * 64 * KiB + 512);
                if (r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "write", r);
                r = vdisk_disk_flush(d);
                if (r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "flush", r);
        }
        free(buf);
out:
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

static void vmdk_edit32(const char *what, size_t off, uint32_t v, unsigned mode) {
        uint8_t *b = malloc(vmdk_len);
        char label[96];

        ASSERT(b);
        memcpy(b, vmdk_bytes, vmdk_len);
        t_put32(b + off, v);
        snprintf(label, sizeof label, "vmdk-%s=%#" PRIx32 ".vmdk", what, v);
        try_vmdk(label, b, vmdk_len, mode);
        free(b);
}

static void vmdk_edit64(const char *what, size_t off, uint64_t v) {
        uint8_t *b = malloc(vmdk_len);
        char label[96];

        ASSERT(b);
        memcpy(b, vmdk_bytes, vmdk_len);
        t_put64(b + off, v);
        snprintf(label, sizeof label, "vmdk-%s=%#" PRIx64 ".vmdk", what, v);
        try_vmdk(label, b, vmdk_len, 0);
        free(b);
}

static void vmdk_desc_case(const char *what, const char *text) {
        uint8_t *b = malloc(vmdk_len);
        char label[96];

        ASSERT(b);
        memcpy(b, vmdk_bytes, vmdk_len);
        memset(b + 512, 0, 20 * 512);
        memcpy(b + 512, text, MIN(strlen(text), (size_t) 20 * 512));
        snprintf(label, sizeof label, "vmdk-desc-%s.vmdk", what);
        try_vmdk(label, b, vmdk_len, 0);
        free(b);
}

static void test_vmdk(uint64_t seed, unsigned iterations) {
        uint64_t file_sectors = vmdk_len / 512;
        unsigned refused_before = n_refused;

        make_vmdk_sample();
        try_vmdk("vmdk-pristine.vmdk", vmdk_bytes, vmdk_len, MUST_OPEN);
        try_vmdk("vmdk-pristine-probed.vmdk", vmdk_bytes, vmdk_len, MUST_OPEN | PROBE);
        try_vmdk("vmdk-pristine-rw.vmdk", vmdk_bytes, vmdk_len, WRITABLE);

        /* truncation: every sector through the metadata and the first grains */
        for (size_t l = 0; l <= vmdk_len; l += (l < 160 * 1024 ? 512 : 16 * 1024)) {
                char label[64];

                snprintf(label, sizeof label, "vmdk-trunc-%zu.vmdk", l);
                try_vmdk(label, vmdk_bytes, l, 0);
                if (l > 0)
                        try_vmdk(label, vmdk_bytes, l - 1, 0);
        }

        /* header fields */
        static const uint32_t versions[] = { 0, 4, 0xffffffff };
        for (size_t i = 0; i < ELEMENTSOF(versions); i++)
                vmdk_edit32("version", 4, versions[i], 0);
        static const uint32_t flags[] = { 0, 1u << 16, (1u << 16) | (1u << 17), 0xffffffff };
        for (size_t i = 0; i < ELEMENTSOF(flags); i++)
                vmdk_edit32("flags", 8, flags[i], 0);
        static const uint64_t caps[] = { 0, 1, 2047, 2049, UINT64_C(1) << 40, UINT64_MAX };
        for (size_t i = 0; i < ELEMENTSOF(caps); i++)
                vmdk_edit64("capacity", 12, caps[i]);
        static const uint64_t grains[] = { 0, 1, 3, 8, 127, 256, UINT64_C(1) << 20, UINT64_C(1) << 40, UINT64_MAX };
        for (size_t i = 0; i < ELEMENTSOF(grains); i++)
                vmdk_edit64("grain", 20, grains[i]);
        const uint64_t descs[] = { 0, 1, file_sectors, UINT64_MAX / 512, UINT64_MAX };
        for (size_t i = 0; i < ELEMENTSOF(descs); i++) {
                vmdk_edit64("desc-offset", 28, descs[i]);
                vmdk_edit64("desc-size", 36, descs[i]);
        }
        static const uint32_t gtes[] = { 0, 1, 4, 511, 513, 0x80000000u };
        for (size_t i = 0; i < ELEMENTSOF(gtes); i++)
                vmdk_edit32("gtes", 44, gtes[i], 0);
        const uint64_t gds[] = { 0, 1, file_sectors - 1, file_sectors, UINT64_MAX - 1, UINT64_MAX };
        for (size_t i = 0; i < ELEMENTSOF(gds); i++) {
                vmdk_edit64("rgd", 48, gds[i]);
                vmdk_edit64("gd", 56, gds[i]);
        }
        vmdk_edit32("newline-chars", 73, 0x0a0d0a0a, 0);

        /* grain directory and table entries */
        static const uint32_t ents[] = { 1, 2, 3, 0x7fffffff, 0xffffffff };
        for (size_t i = 0; i < ELEMENTSOF(ents); i++) {
                uint32_t v = ents[i];

                vmdk_edit32("gde", vmdk_gd, v, 0);
                vmdk_edit32("rgde", vmdk_rgd, v, WRITABLE);
                vmdk_edit32("gte0", vmdk_gt, v, 0);
                vmdk_edit32("gte3", vmdk_gt + 12, v, WRITABLE);
        }
        vmdk_edit32("gte-past-eof", vmdk_gt + 4, (uint32_t) file_sectors, 0);
        vmdk_edit32("gte-partial", vmdk_gt + 4, (uint32_t) file_sectors - 1, 0);
        vmdk_edit32("gte-dup", vmdk_gt + 4, t_le32(vmdk_bytes + vmdk_gt), WRITABLE);
        vmdk_edit32("gte-into-gt", vmdk_gt + 4, (uint32_t) (vmdk_gt / 512), WRITABLE);
        vmdk_edit32("gde-onto-header", vmdk_gd, 0, WRITABLE);

        /* descriptors */
        vmdk_desc_case("garbage", "\x01\x02garbage\xff\xfe");
        vmdk_desc_case("no-extent", "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicSparse\"\n");
        vmdk_desc_case("two-extents", "version=1\nRW 2048 SPARSE \"a.vmdk\"\nRW 2048 SPARSE \"b.vmdk\"\n");
        vmdk_desc_case("flat", "version=1\nRW 2048 FLAT \"a.vmdk\" 0\n");
        vmdk_desc_case("dotdot", "version=1\nRW 2048 SPARSE \"../a.vmdk\"\n");
        vmdk_desc_case("absolute", "version=1\nRW 2048 SPARSE \"/etc/passwd\"\n");
        vmdk_desc_case("bad-cid", "version=1\nCID=zz\nRW 2048 SPARSE \"a.vmdk\"\n");
        vmdk_desc_case("bad-uuid", "version=1\nRW 2048 SPARSE \"a.vmdk\"\nddb.uuid.image=\"nope\"\n");
        vmdk_desc_case("raw-device", "version=1\ncreateType=\"fullDevice\"\nRW 2048 SPARSE \"a.vmdk\"\n");
        vmdk_desc_case("crlf", "version=1\r\nCID=12345678\r\nRW 2048 SPARSE \"a.vmdk\"\r\n");

        /* seeded bit flips in the header, descriptor and tables */
        uint8_t *b = malloc(vmdk_len);
        rng r;

        ASSERT(b);
        rng_seed(&r, seed);
        for (unsigned it = 0; it < iterations; it++) {
                char label[96];
                unsigned nflips = (unsigned) rng_range(&r, 1, 8);

                memcpy(b, vmdk_bytes, vmdk_len);
                for (unsigned f = 0; f < nflips; f++) {
                        size_t at;

                        if (rng_chance(&r, 50))
                                at = (size_t) rng_range(&r, 0, 80);
                        else if (rng_chance(&r, 50))
                                at = (size_t) rng_range(&r, vmdk_gt, vmdk_gt + 64);
                        else
                                at = (size_t) rng_range(&r, 512, 1024);
                        b[at] ^= (uint8_t) (1u << rng_below(&r, 8));
                }
                snprintf(label, sizeof label, "vmdk-fuzz-seed%" PRIu64 "-iter%u.vmdk", seed, it);
                try_vmdk(label, b, vmdk_len, rng_chance(&r, 25) ? WRITABLE : 0);
        }
        free(b);
        printf("vmdk: %u cases refused at open\n", n_refused - refused_before);
        ASSERT(n_refused > refused_before);
        free(vmdk_bytes);
        free(vmdk_content);
}

/* ---------------------------------------------------------------- memory bound */

static void limit_memory(void) {
#ifdef HAVE_ASAN
        printf("ASan build: single allocations are capped at 64 MiB (max_allocation_size_mb)\n");
#else
        FILE *f = fopen("/proc/self/statm", "re");
        unsigned long pages = 0;
        struct rlimit rl;

        if (!f || fscanf(f, "%lu", &pages) != 1) {
                printf("cannot read /proc/self/statm: no address space limit\n");
                if (f)
                        fclose(f);
                return;
        }
        fclose(f);
        ASSERT(getrlimit(RLIMIT_AS, &rl) == 0);
        rl.rlim_cur = (rlim_t) pages * (rlim_t) sysconf(_SC_PAGESIZE) + 256 * MiB;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
                rl.rlim_cur = rl.rlim_max;
        ASSERT(setrlimit(RLIMIT_AS, &rl) == 0);
        printf("address space limited to %lu MiB\n", (unsigned long) (rl.rlim_cur / MiB));
#endif
}

int main(int argc, char **argv) {
        uint64_t seed = 20240601;
        unsigned iterations = 3000;

        if (argc > 1)
                seed = strtoull(argv[1], NULL, 0);
        if (argc > 2)
                iterations = (unsigned) strtoul(argv[2], NULL, 0);

        make_samples();
        limit_memory();

        test_pristine();
        test_truncation(&big);
        test_truncation(&small);
        test_truncation(&diff);
        test_header_fields(&big);
        test_header_fields(&small);
        test_huge_map(&big);
        test_huge_map(&small);
        test_map_entries(&big);
        test_map_entries(&small);
        test_chains();
        test_raw();
        fuzz(&small, seed, iterations);
        fuzz(&big, seed + 1, iterations / 6);
        test_vmdk(seed + 2, iterations / 3);

        printf("test-malformed: %u cases, %u opened, %u read in full, %u refused at open\n", n_cases,
               n_opened,
               n_read_ok, n_refused);
        free(big.bytes);
        free(small.bytes);
        free(diff.bytes);
        free(base64k.bytes);
        return 0;
}
