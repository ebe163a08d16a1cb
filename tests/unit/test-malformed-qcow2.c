/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `malformed`: hostile QCOW2 images.
 *
 * The samples are built here byte by byte from the specification: a v3 image of 1 MiB with 4 KiB
 * clusters, a header extension area (feature name table, end marker), a
 * refcount table and block, an L1 table of one entry, one L2 table, plain
 * data clusters, a zero cluster, a preallocated zero cluster and a
 * compressed cluster at an unaligned offset: deflate in one sample, zstd in
 * the other; and an extended-L2 sample (16 KiB clusters, subclusters
 * allocated, zero and unallocated).
 *
 * The pristine samples must read their content. Then: truncation at every
 * 512 bytes through the metadata and around each header field end; header
 * field edits (version, cluster_bits, size, L1 size and offset, refcount
 * table, header length, refcount order, encryption, feature bits,
 * compression type, snapshot count and offset, backing name offset and
 * size, json: backing names); header extensions that lie (lengths past the
 * header, a data file bit without a name, an oversized backing format);
 * L1 entries into the header, the L1 and refcount tables, past the end or
 * unaligned; L2 entries past the end, unaligned or over the header;
 * compressed entries whose size lies, whose offset lies, whose stream is
 * damaged, or that decode past their cluster (a decompression bomb: a
 * cluster of zeros compressed 4x over), subclusters both allocated and
 * zero; a snapshot table (a copy of the active L1, and an empty one) whose
 * snapshots read what they hold, and whose entries lie (L1 offsets and sizes,
 * id, name and extra data lengths, NUL bytes in ids, counts past the table);
 * persistent bitmaps (extension, directory entries and bitmap tables that
 * lie: counts, sizes, offsets, flags, types, granularities, names,
 * padding, duplicate names; a sound sample's enabled bitmap records the
 * writes, its disabled one does not); and random bit flips over the
 * metadata. Each case opens or fails
 * cleanly, reads cleanly (whatever it reads) and never allocates hugely.
 * Writes: the sound samples written (data, zero, compressed and unallocated
 * clusters) read back, also after a reopen; refcount table entries out of
 * range, overlapping or unaligned, a misplaced, empty or huge refcount
 * table, refcount orders above 6 or disagreeing, refcounts at 0 or at their
 * maximum, the dirty and corrupt bits: each fails cleanly or writes.
 *
 * Usage: test-malformed-qcow2 [SEED [ITERATIONS]]
 */
#include <sys/resource.h>
#include <zlib.h>
#include <zstd.h>

#include "tests.h"

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

#define DISK (1 * MiB)

typedef struct sample {
        const char *name;
        uint8_t *bytes;
        size_t len;
        uint8_t *content;
        uint32_t cluster;
        uint64_t l1, l2, reft, comp;   /* offsets; comp: the compressed cluster's L2 entry index */
} sample;

static sample s_zlib, s_zstd, s_xl2;
static unsigned n_cases, n_opened, n_refused;
static const char *g_snapshot;   /* try_image() opens this snapshot (vdisk_disk_set_snapshot) */

static void put32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) (v >> 24), p[1] = (uint8_t) (v >> 16), p[2] = (uint8_t) (v >> 8), p[3] = (uint8_t) v;
}
static void put64(uint8_t *p, uint64_t v) {
        put32(p, (uint32_t) (v >> 32));
        put32(p + 4, (uint32_t) v);
}
static uint64_t be64(const uint8_t *p) {
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
                v = v << 8 | p[i];
        return v;
}

typedef enum { ANY, MUST_REFUSE, MUST_READ, MUST_FAIL } expect;   /* MUST_FAIL: at open or read */

static int try_image(const char *label, const uint8_t *bytes, size_t len, expect e, const uint8_t *content) {
        vdisk_io *io = mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        bool failed = false;
        int r;

        n_cases++;
        test_set_context("case %s (%zu bytes)", label, len);
        vdisk_clear_error();
        if (g_snapshot)
                ASSERT(vdisk_disk_set_snapshot(d, g_snapshot) == 0);
        r = vdisk_disk_open(d, io, n_cases % 2 ? "qcow2" : NULL, VDISK_OPEN_READONLY);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, r);
                if (e == MUST_READ)
                        FAIL("%s: a valid image was refused: %d (%s)", label, r, vdisk_last_error());
                n_refused++;
                goto out;
        }
        if (e == MUST_REFUSE)
                FAIL("%s: opened, but it must be refused", label);
        n_opened++;
        {
                uint64_t size = vdisk_disk_size(d);
                uint8_t *buf = malloc(64 * KiB);
                vdisk_snapshot *sn = NULL;
                size_t n_sn = 0;

                ASSERT(buf);
                if (size > 4 * MiB)
                        size = 4 * MiB;   /* a lying size: read the start only */
                for (uint64_t off = 0; off < size; off += 64 * KiB) {
                        size_t n = (size_t) MIN((uint64_t) 64 * KiB, size - off);

                        r = vdisk_disk_read(d, buf, n, off);
                        if (r < 0) {
                                test_check_clean_error(__FILE__, __LINE__, "read", r);
                                if (e == MUST_READ)
                                        FAIL("%s: reading a valid image failed: %d (%s)", label, r,
                                             vdisk_last_error());
                                failed = true;
                                continue;   /* the other clusters may still read */
                        }
                        if (content && memcmp(buf, content + off, n) != 0)
                                FAIL("%s: content differs at %" PRIu64, label, off);
                }
                vdisk_clear_error();
                r = vdisk_image_list_snapshots(vdisk_disk_image(d, 0), &sn, &n_sn);
                if (r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "list snapshots", r);
                vdisk_snapshots_free(sn, n_sn);
                free(buf);
        }
        if (e == MUST_FAIL && !failed)
                FAIL("%s: read in full, but it must fail", label);
out:
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        return r;
}

/* ---------------------------------------------------------------- samples */

static size_t deflate_raw(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
        z_stream z = {};

        ASSERT(deflateInit2(&z, 9, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) == Z_OK);
        z.next_in = (Bytef *) in;
        z.avail_in = (uInt) len;
        z.next_out = out;
        z.avail_out = (uInt) cap;
        ASSERT(deflate(&z, Z_FINISH) == Z_STREAM_END);
        deflateEnd(&z);
        return z.total_out;
}

static size_t compress_unit(bool zstd, const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
        if (zstd) {
                size_t n = ZSTD_compress(out, cap, in, len, 3);
                ASSERT(!ZSTD_isError(n));
                return n;
        }
        return deflate_raw(in, len, out, cap);
}

/* The L2 entry of a compressed cluster of `bytes` bytes at host offset `off`. */
static uint64_t comp_entry(unsigned cluster_bits, uint64_t off, uint64_t bytes) {
        unsigned shift = 62 - (cluster_bits - 8);
        uint64_t sectors = (off + bytes - 1) / 512 - off / 512;   /* additional sectors */

        return UINT64_C(1) << 62 | sectors << shift | off;
}

/* v3, cluster 4 KiB (or 16 KiB with extended L2), 1 MiB:
 *   cluster 0 header + extensions, 1 refcount table, 2 refcount block,
 *   3 L1, 4 L2, 5.. data. */
static void fill(rng *r, uint8_t *p, size_t len) {
        for (size_t i = 0; i < len; i++)
                p[i] = (uint8_t) rng_next(r);
}

static void make_sample(sample *s, const char *name, bool zstd, bool xl2) {
        unsigned bits = xl2 ? 14 : 12;
        uint32_t C = 1u << bits;
        size_t cap = 16 * (size_t) C;
        uint8_t *b = calloc(1, cap), *c = calloc(1, DISK);
        uint64_t next = 5 * (uint64_t) C;
        size_t l2e = xl2 ? 16 : 8;
        rng r;

        ASSERT(b && c);
        rng_seed(&r, 77 + zstd + 2 * xl2);
        s->name = name;
        s->cluster = C;
        s->reft = C, s->l1 = 3 * (uint64_t) C, s->l2 = 4 * (uint64_t) C;

        memcpy(b, "QFI\xfb", 4);
        put32(b + 4, 3);
        put32(b + 20, bits);
        put64(b + 24, DISK);
        put32(b + 36, 1);                       /* l1_size */
        put64(b + 40, s->l1);
        put64(b + 48, s->reft);
        put32(b + 56, 1);
        put64(b + 72, (zstd ? 8 : 0) | (xl2 ? 16 : 0));
        put32(b + 96, 4);
        put32(b + 100, 112);
        b[104] = zstd ? 1 : 0;
        /* feature name table: two entries, then the end marker */
        put32(b + 112, 0x6803f857);
        put32(b + 116, 96);
        b[120] = 0, b[121] = 0;
        memcpy(b + 122, "dirty bit", 9);
        b[168] = 0, b[169] = 3;
        memcpy(b + 170, "compression type", 16);
        /* b + 216: 8 zero bytes = end of extensions */
        put64(b + s->reft, 2 * (uint64_t) C);
        put64(b + s->l1, s->l2 | UINT64_C(1) << 63);

        if (!xl2) {
                /* clusters 0, 3, 200: data; 7: zero; 9: preallocated zero; 11: compressed */
                static const unsigned data[] = { 0, 3, 200 };
                for (size_t i = 0; i < ELEMENTSOF(data); i++) {
                        fill(&r, c + data[i] * C, C);
                        memcpy(b + next, c + data[i] * C, C);
                        put64(b + s->l2 + data[i] * 8, next | UINT64_C(1) << 63);
                        next += C;
                }
                put64(b + s->l2 + 7 * 8, 1);
                put64(b + s->l2 + 9 * 8, next | 1 | UINT64_C(1) << 63);
                memset(b + next, 0x99, C);      /* what a preallocated zero cluster must not read */
                next += C;
                /* half noise, half text: a stream of some sectors */
                fill(&r, c + 11 * C, C / 2);
                for (uint32_t i = C / 2; i < C; i++)
                        c[11 * C + i] = (uint8_t) "compressible text "[i % 18];
                uint64_t off = next + 100;
                size_t n = compress_unit(zstd, c + 11 * C, C, b + off, cap - off);
                put64(b + s->l2 + 11 * 8, comp_entry(bits, off, n));
                s->comp = 11;
                next = ALIGN_UP(off + n, C);
        } else {
                /* cluster 0: subclusters 0-3 allocated, 4-5 zero, the rest unallocated;
                 * cluster 2: unallocated with zero subclusters 0-31 */
                uint32_t sc = C / 32;

                fill(&r, c, 4 * sc);
                memcpy(b + next, c, 4 * sc);
                put64(b + s->l2, next | UINT64_C(1) << 63);
                put64(b + s->l2 + 8, UINT64_C(0x30) << 32 | 0xf);
                memset(b + next + 4 * sc, 0x55, C - 4 * sc);   /* not to be read */
                next += C;
                put64(b + s->l2 + 2 * l2e + 8, UINT64_C(0xffffffff) << 32);
                s->comp = 0;
        }
        s->len = (size_t) next;
        s->bytes = b;
        s->content = c;
        /* exact refcounts (16 bits): every cluster of the file is in use once */
        for (uint64_t k = 0; k < next / C; k++)
                b[2 * (size_t) C + 2 * k + 1] = 1;
}

/* A check of an image with thousands of leaked clusters: the counts are
 * exact, the message list stops at 1000 lines and says so (a hostile image
 * must not make the report, which goes to terminals and over the bus, grow
 * without bound; the fuzzer once ran out of memory on it). */
static void test_check_messages(const sample *s) {
        uint32_t C = s->cluster, n = C / 2;   /* one refcount block: C/2 16-bit entries */
        size_t len = (size_t) n * C;
        uint8_t *b = calloc(1, len);
        vdisk_check_report rep = { .size = sizeof rep };
        vdisk_io *io;
        vdisk_disk *d = disk_new();
        size_t lines = 0;

        ASSERT(b && s->len <= len);
        memcpy(b, s->bytes, s->len);
        for (uint32_t k = (uint32_t) (s->len / C); k < n; k++)
                b[2 * (size_t) C + 2 * k + 1] = 1;
        io = mem_io("leaky", b, len);
        test_set_context("check of %u leaked clusters", n - (uint32_t) (s->len / C));
        ASSERT(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY) == 0);
        ASSERT(vdisk_check(d, 0, 0, &rep, NULL) >= 0);
        ASSERT(rep.leaks == n - s->len / C);
        ASSERT(rep.corruptions == 0);
        while (rep.messages && rep.messages[lines])
                lines++;
        ASSERT(lines == 1001);
        ASSERT(strstr(rep.messages[1000], "further messages suppressed"));
        vdisk_check_report_clear(&rep);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        free(b);
}

/* Reads of [lo, hi) counted: a memory io under a caller-ops io. */
typedef struct counting {
        vdisk_io *mem;
        uint64_t lo, hi;
        unsigned reads;
} counting;

static int counting_pread(void *user, void *buf, size_t len, uint64_t offset) {
        counting *c = user;

        c->reads += offset < c->hi && offset + len > c->lo;
        return vdisk_io_pread(c->mem, buf, len, offset);
}

static int counting_pwrite(void *user, const void *buf, size_t len, uint64_t offset) {
        return vdisk_io_pwrite(((counting *) user)->mem, buf, len, offset);
}

static int counting_flush(void *user) {
        return vdisk_io_flush(((counting *) user)->mem);
}

static int counting_get_size(void *user, uint64_t *ret) {
        return vdisk_io_get_size(((counting *) user)->mem, ret);
}

static int counting_truncate(void *user, uint64_t size) {
        return vdisk_io_truncate(((counting *) user)->mem, size);
}

static const vdisk_io_ops counting_ops = {
        .size = sizeof counting_ops,
        .pread = counting_pread,
        .pwrite = counting_pwrite,
        .flush = counting_flush,
        .get_size = counting_get_size,
        .truncate = counting_truncate,
};

/* Check reads the L2 table once on a sound image (the OFLAG_COPIED test
 * needs no second look when the counts agree with every flag), and still
 * finds a data cluster whose COPIED is missing, which -r all mends. */
static bool report_has(const vdisk_check_report *rep, const char *text);

static void test_check_reads_l2_once(const sample *s) {
        size_t e0 = (size_t) s->l2;     /* guest cluster 0: data, refcount 1, COPIED */
        counting c = { .lo = s->l2, .hi = s->l2 + s->cluster };
        vdisk_check_report rep = { .size = sizeof rep };
        uint8_t *b = malloc(s->len);
        vdisk_io *io;
        vdisk_disk *d;

        ASSERT(b);
        test_set_context("%s", "check reads each L2 table once");
        c.mem = mem_io("sound", s->bytes, s->len);
        ASSERT_OK(vdisk_io_new_ops(&counting_ops, &c, "sound", 0, &io));
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY));
        c.reads = 0;
        ASSERT_OK(vdisk_check(d, 0, 0, &rep, NULL));
        ASSERT(rep.corruptions == 0 && rep.leaks == 0);
        vdisk_check_report_clear(&rep);
        ASSERT_EQ_U64(c.reads, 1);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        vdisk_io_unref(c.mem);

        memcpy(b, s->bytes, s->len);
        put64(b + e0, be64(b + e0) & ~(UINT64_C(1) << 63));
        io = mem_io("copied-missing", b, s->len);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY));
        ASSERT_OK(vdisk_check(d, 0, 0, &rep, NULL));
        if (rep.corruptions != 1 || !report_has(&rep, "ERROR OFLAG_COPIED data cluster")) {
                print_check_messages(&rep);
                FAIL("COPIED missing: %" PRIu64 " corruptions", rep.corruptions);
        }
        vdisk_check_report_clear(&rep);
        vdisk_disk_unref(d);
        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "qcow2", 0));
        ASSERT_OK(vdisk_check(d, 0, VDISK_CHECK_REPAIR_ALL, &rep, NULL));
        ASSERT(rep.corruptions_fixed == 1);
        vdisk_check_report_clear(&rep);
        ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(d, 0), 0);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        free(b);
        test_set_context("%s", "");
        n_cases++;
}

/* ---------------------------------------------------------------- writes */

/* Opens writable and writes into a data cluster, a zero cluster, the
 * compressed one, unallocated clusters and the last sector, flushes and
 * closes. A damaged image may refuse any step, cleanly; a sound one
 * (must_work) reads what was written, also after a reopen. */
static void try_write(const sample *s, const char *label, const uint8_t *bytes, size_t len, bool must_work) {
        static const uint64_t at[][2] = {
                { 100, 3000 }, { 7 * 4096 + 512, 4096 }, { 11 * 4096 + 10, 20 }, { 20 * 4096, 5 * 4096 + 7 },
                { 300 * 1024 + 1, 70000 }, { DISK - 512, 512 },
        };
        vdisk_io *io = mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        uint8_t *want = malloc(DISK), *buf = malloc(DISK);
        int r = 0;
        rng g;

        ASSERT(want && buf);
        n_cases++;
        test_set_context("write case %s (%zu bytes)", label, len);
        rng_seed(&g, len);
        memcpy(want, s->content, DISK);
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, "qcow2", 0);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, r);
                if (must_work)
                        FAIL("%s: a sound image was refused writable: %d (%s)", label, r, vdisk_last_error());
                n_refused++;
                goto out;
        }
        n_opened++;
        for (size_t i = 0; i < ELEMENTSOF(at) && r >= 0; i++) {
                fill(&g, want + at[i][0], (size_t) at[i][1]);
                r = vdisk_disk_write(d, want + at[i][0], (size_t) at[i][1], at[i][0]);
        }
        if (r >= 0)
                r = vdisk_disk_flush(d);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, "write", r);
                if (must_work)
                        FAIL("%s: writing a sound image failed: %d (%s)", label, r, vdisk_last_error());
                goto out;
        }
        if (must_work) {
                ASSERT_OK(vdisk_disk_read(d, buf, DISK, 0));
                if (memcmp(buf, want, DISK) != 0)
                        FAIL("%s: does not read what was written", label);
                d = vdisk_disk_unref(d);
                d = disk_new();
                ASSERT_OK(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY));
                ASSERT_OK(vdisk_disk_read(d, buf, DISK, 0));
                if (memcmp(buf, want, DISK) != 0)
                        FAIL("%s: does not read what was written after a reopen", label);
        }
out:
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        free(want);
        free(buf);
}

static void write_edit(const sample *s, const char *what, size_t off, unsigned width, uint64_t v) {
        uint8_t *b = malloc(s->len);
        char label[128];

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        if (width == 8)
                put64(b + off, v);
        else if (width == 4)
                put32(b + off, (uint32_t) v);
        else if (width == 2)
                b[off] = (uint8_t) (v >> 8), b[off + 1] = (uint8_t) v;
        else
                b[off] = (uint8_t) v;
        snprintf(label, sizeof label, "%s-w-%s=%#" PRIx64 ".qcow2", s->name, what, v);
        try_write(s, label, b, s->len, false);
        free(b);
}

/* Refcount metadata that lies, seen by a writable open. */
static void test_writes(const sample *s) {
        uint64_t C = s->cluster;
        size_t reft = (size_t) s->reft, rb = 2 * (size_t) C;

        try_write(s, s->name, s->bytes, s->len, true);
        /* refcount table entries: out of range, overlapping, unaligned, missing */
        write_edit(s, "reft-entry", reft, 8, 0);
        write_edit(s, "reft-entry", reft, 8, C);               /* the refcount table itself */
        write_edit(s, "reft-entry", reft, 8, s->l1);           /* the L1 table */
        write_edit(s, "reft-entry", reft, 8, 512);             /* the header */
        write_edit(s, "reft-entry", reft, 8, 2 * C + 512);     /* unaligned */
        write_edit(s, "reft-entry", reft, 8, s->len);          /* past the end */
        write_edit(s, "reft-entry", reft, 8, UINT64_C(0x00fffffffffff000));
        write_edit(s, "reft-entry", reft, 8, UINT64_MAX);
        /* the table itself: misplaced, empty, huge */
        write_edit(s, "reft-offset", 48, 8, 0);
        write_edit(s, "reft-offset", 48, 8, s->l1);
        write_edit(s, "reft-offset", 48, 8, s->len);
        write_edit(s, "reft-offset", 48, 8, C + 8);
        write_edit(s, "reft-clusters", 56, 4, 0);
        write_edit(s, "reft-clusters", 56, 4, 3);              /* over the refcount block and L1 */
        write_edit(s, "reft-clusters", 56, 4, UINT32_MAX);
        write_edit(s, "refcount-order", 96, 4, 7);
        write_edit(s, "refcount-order", 96, 4, UINT32_MAX);
        write_edit(s, "refcount-order", 96, 4, 0);             /* widths that disagree with the block */
        write_edit(s, "refcount-order", 96, 4, 6);
        /* refcounts that lie: a used cluster at 0 (a decrement would underflow), at the maximum */
        for (uint64_t k = 0; k < s->len / C; k++) {
                write_edit(s, "refcount-zero", rb + 2 * k, 2, 0);
                write_edit(s, "refcount-max", rb + 2 * k, 2, 0xffff);
        }
        /* dirty and corrupt bits: refused writable */
        write_edit(s, "incompat", 72, 8, be64(s->bytes + 72) | 1);
        write_edit(s, "incompat", 72, 8, be64(s->bytes + 72) | 2);
}

/* ---------------------------------------------------------------- bitmaps */

/* The zlib sample with two persistent bitmaps (extension, autoclear bit 0):
 * "b0" (granularity 64 KiB, auto; bits 0 and 2 set, its data in a cluster)
 * and "dis" (512 bytes, disabled; an all-zero table entry). Appended: the
 * directory, b0's table, b0's data, dis's table. */
typedef struct bm_sample {
        uint8_t *bytes;
        size_t len;
        size_t ext, dir, t0, data0, t1;   /* offsets */
} bm_sample;

static bm_sample s_bm;

static void make_bm_sample(const sample *s, bm_sample *m) {
        uint32_t C = s->cluster;
        size_t base = s->len, len = base + 4 * (size_t) C;
        uint8_t *b = calloc(1, len);

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        m->ext = 216, m->dir = base, m->t0 = base + C, m->data0 = base + 2 * (size_t) C, m->t1 = base + 3 * (size_t) C;
        put64(b + 88, 1);                               /* autoclear: bitmaps */
        put32(b + m->ext, 0x23852875);
        put32(b + m->ext + 4, 24);
        put32(b + m->ext + 8, 2);
        put64(b + m->ext + 16, 64);                     /* directory size */
        put64(b + m->ext + 24, m->dir);
        /* b + 248: end of extensions */
        put64(b + m->dir, m->t0);
        put32(b + m->dir + 8, 1);
        put32(b + m->dir + 12, 2);                      /* auto */
        b[m->dir + 16] = 1, b[m->dir + 17] = 16;
        b[m->dir + 19] = 2;
        memcpy(b + m->dir + 24, "b0", 2);
        put64(b + m->dir + 32, m->t1);
        put32(b + m->dir + 40, 1);
        put32(b + m->dir + 44, 0);
        b[m->dir + 48] = 1, b[m->dir + 49] = 9;
        b[m->dir + 51] = 3;
        memcpy(b + m->dir + 56, "dis", 3);
        put64(b + m->t0, m->data0);
        b[m->data0] = 0x05;
        for (uint64_t k = base / C; k < len / C; k++)
                b[2 * (size_t) C + 2 * k + 1] = 1;
        m->bytes = b;
        m->len = len;
}

/* Opens writable, writes, flushes, closes: the bitmaps of a sound image
 * hold what was written, the disabled one nothing, none in use, and the
 * check is clean; a damaged one fails cleanly at any step. */
static void bm_try_write(const sample *s, const char *label, const uint8_t *bytes, size_t len, bool must_work) {
        static const uint64_t at[][2] = { { 100, 3000 }, { 5 * 65536 + 7, 65536 }, { DISK - 512, 512 } };
        vdisk_io *io = mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        int r;

        n_cases++;
        test_set_context("bitmap write case %s (%zu bytes)", label, len);
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, "qcow2", 0);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, label, r);
                if (must_work)
                        FAIL("%s: refused writable: %d (%s)", label, r, vdisk_last_error());
                n_refused++;
                goto out;
        }
        n_opened++;
        for (size_t i = 0; i < ELEMENTSOF(at) && r >= 0; i++)
                r = vdisk_disk_write(d, s->content + at[i][0], (size_t) at[i][1], at[i][0]);
        if (r >= 0)
                r = vdisk_disk_flush(d);
        if (r < 0) {
                test_check_clean_error(__FILE__, __LINE__, "write", r);
                if (must_work)
                        FAIL("%s: writing failed: %d (%s)", label, r, vdisk_last_error());
                goto out;
        }
        if (must_work) {
                vdisk_check_report rep = { .size = sizeof rep };
                vdisk_bitmap *v = NULL;
                uint8_t *bits = NULL;
                size_t n = 0, blen = 0;
                uint64_t g = 0;

                d = vdisk_disk_unref(d);
                d = disk_new();
                ASSERT_OK(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY));
                ASSERT_OK(vdisk_image_list_bitmaps(vdisk_disk_image(d, 0), &v, &n));
                ASSERT(n == 2 && streq(v[0].name, "b0") && v[0].flags == VDISK_BITMAP_AUTO &&
                       v[0].granularity == 65536 && streq(v[1].name, "dis") && v[1].flags == 0);
                vdisk_bitmaps_free(v, n);
                /* b0: its bits 0 and 2, and the writes: 64 KiB units 0, 5, 6, 15 */
                ASSERT_OK(vdisk_image_read_bitmap(vdisk_disk_image(d, 0), "b0", &bits, &blen, &g));
                ASSERT(blen == 2 && g == 65536);
                ASSERT(bits[0] == (0x01 | 0x04 | 0x20 | 0x40) && bits[1] == 0x80);
                free(bits);
                ASSERT_OK(vdisk_image_read_bitmap(vdisk_disk_image(d, 0), "dis", &bits, &blen, &g));
                ASSERT(blen == 256 && g == 512);
                for (size_t i = 0; i < blen; i++)
                        ASSERT(bits[i] == 0);
                free(bits);
                ASSERT_OK(vdisk_check(d, 0, 0, &rep, NULL));
                if (rep.leaks || rep.corruptions)
                        FAIL("%s: check after the writes: %" PRIu64 " leaks, %" PRIu64 " corruptions (%s)", label,
                             rep.leaks, rep.corruptions, rep.messages && rep.messages[0] ? rep.messages[0] : "");
                vdisk_check_report_clear(&rep);
        }
out:
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* An edited bitmap sample: read-only it reads its data (broken bitmaps are
 * ignored; listing and checking them fail or work cleanly), writable it
 * works or fails cleanly. */
static void bm_case(const sample *s, const char *what, size_t off, unsigned width, uint64_t v, expect e) {
        uint8_t *b = malloc(s_bm.len);
        vdisk_check_report rep = { .size = sizeof rep };
        vdisk_bitmap *bl = NULL;
        size_t nb = 0;
        vdisk_disk *d;
        vdisk_io *io;
        char label[128];
        int r;

        ASSERT(b);
        memcpy(b, s_bm.bytes, s_bm.len);
        if (width == 8)
                put64(b + off, v);
        else if (width == 4)
                put32(b + off, (uint32_t) v);
        else if (width == 2)
                b[off] = (uint8_t) (v >> 8), b[off + 1] = (uint8_t) v;
        else
                b[off] = (uint8_t) v;
        snprintf(label, sizeof label, "bitmaps-%s=%#" PRIx64 ".qcow2", what, v);
        try_image(label, b, s_bm.len, e, e == MUST_READ ? s->content : NULL);
        io = mem_io(label, b, s_bm.len);
        d = disk_new();
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY);
        if (r >= 0) {
                r = vdisk_image_list_bitmaps(vdisk_disk_image(d, 0), &bl, &nb);
                if (r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "list bitmaps", r);
                for (size_t i = 0; i < nb; i++) {
                        uint8_t *bits = NULL;
                        size_t blen;

                        r = vdisk_image_read_bitmap(vdisk_disk_image(d, 0), bl[i].name, &bits, &blen, NULL);
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, "read bitmap", r);
                        free(bits);
                }
                vdisk_bitmaps_free(bl, nb);
                r = vdisk_check(d, 0, 0, &rep, NULL);
                if (r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "check", r);
                vdisk_check_report_clear(&rep);
        } else
                test_check_clean_error(__FILE__, __LINE__, label, r);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        bm_try_write(s, label, b, s_bm.len, false);
        free(b);
}

static void test_bitmaps(const sample *s) {
        size_t e = s_bm.ext + 8, d0 = s_bm.dir, d1 = s_bm.dir + 32;
        uint64_t C = s->cluster;

        try_image("bitmaps.qcow2", s_bm.bytes, s_bm.len, MUST_READ, s->content);
        bm_try_write(s, "bitmaps.qcow2", s_bm.bytes, s_bm.len, true);
        for (size_t len = s->len; len < s_bm.len; len += 512)
                try_image("bitmaps-truncated.qcow2", s_bm.bytes, len, MUST_READ, s->content);
        /* the extension */
        bm_case(s, "ext-len", s_bm.ext + 4, 4, 16, MUST_READ);
        bm_case(s, "ext-len", s_bm.ext + 4, 4, 32, MUST_READ);
        bm_case(s, "ext-len", s_bm.ext + 4, 4, UINT32_MAX, ANY);
        bm_case(s, "nb", e, 4, 0, MUST_READ);
        bm_case(s, "nb", e, 4, 1, MUST_READ);
        bm_case(s, "nb", e, 4, 3, MUST_READ);
        bm_case(s, "nb", e, 4, 65536, MUST_READ);
        bm_case(s, "nb", e, 4, UINT32_MAX, MUST_READ);
        bm_case(s, "reserved", e + 4, 4, 1, MUST_READ);
        bm_case(s, "dir-size", e + 8, 8, 0, MUST_READ);
        bm_case(s, "dir-size", e + 8, 8, 8, MUST_READ);
        bm_case(s, "dir-size", e + 8, 8, 63, MUST_READ);
        bm_case(s, "dir-size", e + 8, 8, 72, MUST_READ);
        bm_case(s, "dir-size", e + 8, 8, C * 4, MUST_READ);
        bm_case(s, "dir-size", e + 8, 8, UINT64_C(1) << 40, MUST_READ);
        bm_case(s, "dir-size", e + 8, 8, UINT64_MAX, MUST_READ);
        bm_case(s, "dir-offset", e + 16, 8, 0, MUST_READ);
        bm_case(s, "dir-offset", e + 16, 8, d0 + 8, MUST_READ);
        bm_case(s, "dir-offset", e + 16, 8, s_bm.len, MUST_READ);
        bm_case(s, "dir-offset", e + 16, 8, UINT64_MAX - C + 1, MUST_READ);
        bm_case(s, "dir-offset", e + 16, 8, s_bm.t0, MUST_READ);      /* a table read as a directory */
        bm_case(s, "autoclear", 88, 8, 0, MUST_READ);                 /* stale: ignored, leaks in check */
        /* directory entries */
        bm_case(s, "table-offset", d0, 8, 0, MUST_READ);
        bm_case(s, "table-offset", d0, 8, s_bm.t0 + 8, MUST_READ);
        bm_case(s, "table-offset", d0, 8, s_bm.len, MUST_READ);
        bm_case(s, "table-offset", d0, 8, UINT64_MAX, MUST_READ);
        bm_case(s, "table-offset", d0, 8, s->l1, MUST_READ);          /* an L1 table read as a bitmap table */
        bm_case(s, "table-size", d0 + 8, 4, 0, MUST_READ);
        bm_case(s, "table-size", d0 + 8, 4, 2, MUST_READ);
        bm_case(s, "table-size", d0 + 8, 4, UINT32_MAX, MUST_READ);
        bm_case(s, "flags", d0 + 12, 4, 1 | 2, MUST_READ);            /* in use */
        bm_case(s, "flags", d0 + 12, 4, 8 | 2, MUST_READ);
        bm_case(s, "flags", d0 + 12, 4, UINT32_MAX, MUST_READ);
        bm_case(s, "type", d0 + 16, 1, 0, MUST_READ);
        bm_case(s, "type", d0 + 16, 1, 2, MUST_READ);
        bm_case(s, "gran", d0 + 17, 1, 8, MUST_READ);
        bm_case(s, "gran", d0 + 17, 1, 9, MUST_READ);                 /* a table too small for it */
        bm_case(s, "gran", d0 + 17, 1, 32, MUST_READ);
        bm_case(s, "gran", d0 + 17, 1, 63, MUST_READ);
        bm_case(s, "gran", d0 + 17, 1, 255, MUST_READ);
        bm_case(s, "name-size", d0 + 18, 2, 0, MUST_READ);
        bm_case(s, "name-size", d0 + 18, 2, 3, MUST_READ);
        bm_case(s, "name-size", d0 + 18, 2, 9, MUST_READ);
        bm_case(s, "name-size", d0 + 18, 2, 1024, MUST_READ);
        bm_case(s, "name-size", d0 + 18, 2, 0xffff, MUST_READ);
        bm_case(s, "extra-size", d0 + 20, 4, 8, MUST_READ);
        bm_case(s, "extra-size", d0 + 20, 4, 4096, MUST_READ);
        bm_case(s, "extra-size", d0 + 20, 4, UINT32_MAX, MUST_READ);
        bm_case(s, "name", d0 + 24, 1, 0, MUST_READ);                 /* NUL in a name */
        bm_case(s, "padding", d0 + 30, 1, 1, MUST_READ);
        bm_case(s, "dup-name", d1 + 24, 2, ('b' << 8) | '0', MUST_READ);
        bm_case(s, "dup-name", d1 + 19, 1, 2, MUST_READ);              /* "di" */
        bm_case(s, "second-gran", d1 + 17, 1, 30, MUST_READ);
        /* table entries */
        bm_case(s, "table-entry", s_bm.t0, 8, s_bm.data0 | 1, MUST_READ);
        bm_case(s, "table-entry", s_bm.t0, 8, s_bm.data0 + 512, MUST_READ);
        bm_case(s, "table-entry", s_bm.t0, 8, s_bm.data0 | UINT64_C(1) << 63, MUST_READ);
        bm_case(s, "table-entry", s_bm.t0, 8, s_bm.len, MUST_READ);
        bm_case(s, "table-entry", s_bm.t0, 8, 1, MUST_READ);           /* all ones: fine */
        bm_case(s, "table-entry", s_bm.t0, 8, 0, MUST_READ);
        bm_case(s, "table-entry", s_bm.t0, 8, 0, MUST_READ);
        bm_case(s, "table-entry", s_bm.t0, 8, 2, MUST_READ);
        bm_case(s, "table-entry", s_bm.t0, 8, s->l2, MUST_READ);       /* shared with an L2 table */
        bm_case(s, "table-entry", s_bm.t1, 8, UINT64_MAX, MUST_READ);
}

/* ---------------------------------------------------------------- cases */

/* ---------------------------------------------------------------- overlaps */

static bool report_has(const vdisk_check_report *rep, const char *text) {
        for (char **m = rep->messages; m && *m; m++)
                if (strstr(*m, text))
                        return true;
        return false;
}

/* (hB) Guest cluster 3's L2 entry pointed into metadata at `target` (COPIED
 * kept): check counts it as corruption as qemu-img check does ("ERROR
 * cluster N refcount=1 reference=2", plus "ERROR refcount block 0
 * refcount=2" for a refcount block) and the lost data cluster as a leak;
 * -r all mends it (the cluster shared with refcount 2 and no COPIED; a
 * refcount block moved out) and the image checks clean after; a write into
 * guest cluster 3 then leaves the metadata whole (the image opens, checks
 * clean and reads everything else as before) and reads back. */
static void overlap_case(const sample *s, const char *what, const uint8_t *bytes, size_t len, uint64_t target,
                         bool refblock, bool data) {
        uint32_t C = s->cluster;
        size_t e3 = (size_t) s->l2 + 3 * 8;
        uint8_t *b = malloc(len), *buf = malloc(C), *pat = malloc(C);
        vdisk_check_report rep = { .size = sizeof rep };
        char msg[96];
        vdisk_io *io;
        vdisk_disk *d;

        ASSERT(b && buf && pat);
        memcpy(b, bytes, len);
        put64(b + e3, target | UINT64_C(1) << 63);
        io = mem_io(what, b, len);
        test_set_context("L2 entry into the %s (%" PRIu64 ")", what, target);

        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY));
        ASSERT_OK(vdisk_check(d, 0, 0, &rep, NULL));
        snprintf(msg, sizeof msg, "ERROR cluster %" PRIu64 " refcount=1 reference=2", target / C);
        if (!report_has(&rep, msg) || rep.corruptions != 1u + refblock || rep.leaks != 1 ||
            refblock != report_has(&rep, "ERROR refcount block 0 refcount=2")) {
                print_check_messages(&rep);
                FAIL("%" PRIu64 " corruptions, %" PRIu64 " leaks; '%s' wanted", rep.corruptions, rep.leaks, msg);
        }
        vdisk_check_report_clear(&rep);
        vdisk_disk_unref(d);

        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "qcow2", 0));
        ASSERT_OK(vdisk_check(d, 0, VDISK_CHECK_REPAIR_ALL, &rep, NULL));
        ASSERT(rep.corruptions_fixed >= 1u + refblock && rep.leaks_fixed == 1);
        vdisk_check_report_clear(&rep);
        ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(d, 0), 0);
        memset(pat, 0x6b, C);
        ASSERT_OK(vdisk_disk_write(d, pat, C, 3 * (uint64_t) C));
        ASSERT_OK(vdisk_disk_close(d));

        d = disk_new();
        ASSERT_OK(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY));
        if (data) {
                /* the other entry keeps its cluster, now counted once but
                 * without COPIED: qemu-img check says the same after
                 * qemu's repair and a write */
                ASSERT_OK(vdisk_check(d, 0, 0, &rep, NULL));
                ASSERT(rep.corruptions == 1 && rep.leaks == 0 && report_has(&rep, "ERROR OFLAG_COPIED data cluster"));
                vdisk_check_report_clear(&rep);
        } else
                ASSERT_EQ_U64(CHECK_IMAGE_CLEAN(d, 0), 0);
        ASSERT_OK(vdisk_disk_read(d, buf, C, 3 * (uint64_t) C));
        ASSERT_MEMEQ(buf, pat, C);
        ASSERT_OK(vdisk_disk_read(d, buf, C, 0));
        ASSERT_MEMEQ(buf, s->content, C);
        ASSERT_OK(vdisk_disk_read(d, buf, C, 200 * (uint64_t) C));
        ASSERT_MEMEQ(buf, s->content + 200 * (size_t) C, C);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
        test_set_context("%s", "");
        free(b);
        free(buf);
        free(pat);
        n_cases++;
}

static void test_overlaps(const sample *s, const bm_sample *m) {
        uint64_t C = s->cluster;

        overlap_case(s, "refcount table", s->bytes, s->len, s->reft, false, false);
        overlap_case(s, "refcount block", s->bytes, s->len, 2 * C, true, false);
        overlap_case(s, "L1 table", s->bytes, s->len, s->l1, false, false);
        overlap_case(s, "L2 table", s->bytes, s->len, s->l2, false, false);
        overlap_case(s, "another data cluster", s->bytes, s->len, 5 * C, false, true);
        overlap_case(s, "bitmap directory", m->bytes, m->len, m->dir, false, false);
        overlap_case(s, "bitmap table", m->bytes, m->len, m->t0, false, false);
}

static void edit_case(const sample *s, const char *what, size_t off, unsigned width, uint64_t v, expect e) {
        uint8_t *b = malloc(s->len);
        char label[128];

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        if (width == 8)
                put64(b + off, v);
        else if (width == 4)
                put32(b + off, (uint32_t) v);
        else
                b[off] = (uint8_t) v;
        snprintf(label, sizeof label, "%s-%s=%#" PRIx64 ".qcow2", s->name, what, v);
        try_image(label, b, s->len, e, e == MUST_READ ? s->content : NULL);
        free(b);
}

static void test_truncation(const sample *s) {
        static const size_t fields[] = { 4, 8, 20, 24, 36, 48, 72, 100, 104, 112, 216 };

        for (size_t len = 0; len < s->len; len += 512)
                try_image(s->name, s->bytes, len, ANY, NULL);
        for (size_t i = 0; i < ELEMENTSOF(fields); i++)
                for (size_t d = 0; d < 3; d++)
                        if (fields[i] + d >= 1)
                                try_image(s->name, s->bytes, fields[i] + d - 1, MUST_REFUSE, NULL);
        /* without its last data cluster: that cluster must fail, not read garbage */
        try_image(s->name, s->bytes, s->len - s->cluster, ANY, NULL);
}

static void test_header(const sample *s) {
        edit_case(s, "magic", 0, 4, 0x514649fa, MUST_REFUSE);
        edit_case(s, "version", 4, 4, 1, MUST_REFUSE);
        edit_case(s, "version", 4, 4, 4, MUST_REFUSE);
        edit_case(s, "version", 4, 4, 2, ANY);
        for (uint64_t v = 0; v < 64; v += 7)
                edit_case(s, "cluster_bits", 20, 4, v, ANY);
        edit_case(s, "cluster_bits", 20, 4, 8, MUST_REFUSE);
        edit_case(s, "cluster_bits", 20, 4, 22, MUST_REFUSE);
        edit_case(s, "cluster_bits", 20, 4, UINT32_MAX, MUST_REFUSE);
        edit_case(s, "size", 24, 8, UINT64_MAX, MUST_REFUSE);
        edit_case(s, "size", 24, 8, UINT64_C(1) << 62, MUST_REFUSE);
        edit_case(s, "size", 24, 8, (UINT64_C(64) << 30), MUST_REFUSE);   /* L1 too small */
        edit_case(s, "size", 24, 8, 0, ANY);
        edit_case(s, "size", 24, 8, 1000, ANY);
        edit_case(s, "crypt", 32, 4, 1, MUST_REFUSE);
        edit_case(s, "crypt", 32, 4, 2, MUST_REFUSE);
        edit_case(s, "l1_size", 36, 4, 0, MUST_REFUSE);
        edit_case(s, "l1_size", 36, 4, UINT32_MAX, MUST_REFUSE);
        edit_case(s, "l1_size", 36, 4, 0x7fffffff, MUST_REFUSE);
        edit_case(s, "l1_size", 36, 4, 4 * 1024 * 1024, MUST_REFUSE);   /* 32 MiB but not in the file */
        edit_case(s, "l1_offset", 40, 8, 0, MUST_REFUSE);
        edit_case(s, "l1_offset", 40, 8, s->l1 + 8, MUST_REFUSE);
        edit_case(s, "l1_offset", 40, 8, UINT64_MAX - 4095, MUST_REFUSE);
        edit_case(s, "l1_offset", 40, 8, s->l2, ANY);   /* the L2 table read as L1 */
        edit_case(s, "reft_offset", 48, 8, 12345, MUST_REFUSE);
        edit_case(s, "reft_clusters", 56, 4, UINT32_MAX, MUST_REFUSE);
        edit_case(s, "nb_snapshots", 60, 4, UINT32_MAX, MUST_REFUSE);
        edit_case(s, "nb_snapshots", 60, 4, 3, MUST_REFUSE);               /* table offset 0 */
        {
                uint8_t *b = malloc(s->len);
                ASSERT(b);
                memcpy(b, s->bytes, s->len);
                put32(b + 60, 1000);
                put64(b + 64, 2 * (uint64_t) s->cluster);   /* the refcount block: garbage entries */
                try_image("snapshots-garbage", b, s->len, ANY, NULL);
                put64(b + 64, s->len - s->cluster);          /* runs past the end */
                try_image("snapshots-past-end", b, s->len, ANY, NULL);
                free(b);
        }
        edit_case(s, "incompat", 72, 8, be64(s->bytes + 72) | 1, MUST_READ);          /* dirty */
        edit_case(s, "incompat", 72, 8, be64(s->bytes + 72) | 2, MUST_READ);          /* corrupt */
        edit_case(s, "incompat", 72, 8, be64(s->bytes + 72) | 4, MUST_REFUSE);        /* data file, no name */
        edit_case(s, "incompat", 72, 8, be64(s->bytes + 72) | 1u << 5, MUST_REFUSE);
        edit_case(s, "incompat", 72, 8, be64(s->bytes + 72) | UINT64_C(1) << 63, MUST_REFUSE);
        edit_case(s, "incompat", 72, 8, be64(s->bytes + 72) ^ 8, MUST_REFUSE);        /* type vs bit */
        edit_case(s, "compat", 80, 8, UINT64_MAX, MUST_READ);
        edit_case(s, "autoclear", 88, 8, UINT64_MAX, MUST_READ);
        edit_case(s, "refcount_order", 96, 4, 7, MUST_REFUSE);
        edit_case(s, "refcount_order", 96, 4, 0, MUST_READ);
        edit_case(s, "header_length", 100, 4, 0, MUST_REFUSE);
        edit_case(s, "header_length", 100, 4, 103, MUST_REFUSE);
        edit_case(s, "header_length", 100, 4, 104, ANY);
        edit_case(s, "header_length", 100, 4, UINT32_MAX - 7, MUST_REFUSE);
        edit_case(s, "compression_type", 104, 1, 2, MUST_REFUSE);
        edit_case(s, "compression_type", 104, 1, 255, MUST_REFUSE);
        /* header extensions */
        edit_case(s, "ext-len", 116, 4, UINT32_MAX, MUST_REFUSE);
        edit_case(s, "ext-len", 116, 4, s->cluster, MUST_REFUSE);
        edit_case(s, "ext-len", 116, 4, 7, MUST_READ);
        edit_case(s, "ext-type", 112, 4, 0xe2792aca, MUST_REFUSE);     /* a 96-byte backing format */
        edit_case(s, "ext-type", 112, 4, 0x44415441, MUST_REFUSE);     /* a data file name with NULs */
        edit_case(s, "ext-type", 112, 4, 0x23852875, MUST_READ);       /* bitmaps: tolerated */
        edit_case(s, "ext-type", 112, 4, 0x12345678, MUST_READ);       /* unknown: ignored */
        {
                /* backing names: past the cluster, too long, json:, with a NUL */
                uint8_t *b = malloc(s->len);
                static const char js[] = "json:{\"file\":{\"filename\":\"/etc/shadow\"}}";
                ASSERT(b);
                memcpy(b, s->bytes, s->len);
                memcpy(b + 512, js, sizeof js - 1);
                put64(b + 8, 512);
                put32(b + 16, sizeof js - 1);
                try_image("backing-json", b, s->len, MUST_REFUSE, NULL);
                memcpy(b + 512, "base.raw\0x", 10);
                put32(b + 16, 10);
                try_image("backing-nul", b, s->len, MUST_REFUSE, NULL);
                put32(b + 16, 8);
                try_image("backing-missing", b, s->len, ANY, NULL);   /* no resolver */
                put32(b + 16, 2000);
                try_image("backing-long", b, s->len, MUST_REFUSE, NULL);
                put64(b + 8, s->cluster - 4);
                put32(b + 16, 8);
                try_image("backing-past-cluster", b, s->len, MUST_REFUSE, NULL);
                put64(b + 8, UINT64_MAX);
                try_image("backing-huge-offset", b, s->len, MUST_REFUSE, NULL);
                free(b);
        }
}

static void test_tables(const sample *s) {
        size_t l1 = (size_t) s->l1, l2 = (size_t) s->l2, l2e = s == &s_xl2 ? 16 : 8;
        uint64_t C = s->cluster;

        edit_case(s, "l1e", l1, 8, 0, ANY);
        edit_case(s, "l1e", l1, 8, C / 2, ANY);   /* masked to 0: unallocated */
        edit_case(s, "l1e", l1, 8, C, MUST_FAIL);            /* the refcount table */
        edit_case(s, "l1e", l1, 8, s->l1, MUST_FAIL);        /* itself */
        edit_case(s, "l1e", l1, 8, s->l2 + 512, MUST_FAIL);  /* unaligned */
        edit_case(s, "l1e", l1, 8, UINT64_C(0x00fffffffffff000), MUST_FAIL);
        edit_case(s, "l1e", l1, 8, s->len, MUST_FAIL);
        edit_case(s, "l1e", l1, 8, UINT64_MAX, MUST_FAIL);
        edit_case(s, "l2e", l2, 8, (s->len + C) | UINT64_C(1) << 63, MUST_FAIL);
        edit_case(s, "l2e", l2, 8, 5 * C + 512, MUST_FAIL);
        edit_case(s, "l2e", l2, 8, UINT64_C(0x00fffffffffff000), MUST_FAIL);
        edit_case(s, "l2e", l2, 8, UINT64_MAX, ANY);
        edit_case(s, "l2e", l2, 8, 0x3fffffffffffffffu, ANY);
        edit_case(s, "l2e", l2, 8, C, ANY);   /* data read from the refcount table: allowed, like qemu */
        if (l2e == 16) {
                edit_case(s, "bitmap", l2 + 8, 8, UINT64_C(0x1) << 32 | 1, MUST_FAIL);   /* alloc + zero */
                edit_case(s, "bitmap", l2 + 2 * 16 + 8, 8, 1, MUST_FAIL);   /* unallocated, alloc bit */
                edit_case(s, "bitmap", l2 + 8, 8, UINT64_MAX >> 32, ANY);
                return;
        }
        /* compressed: offsets and sizes that lie, damaged streams, bombs */
        size_t ce = l2 + (size_t) s->comp * 8;
        uint64_t e = be64(s->bytes + ce);
        unsigned shift = 62 - (12 - 8);
        uint64_t off = e & ((UINT64_C(1) << shift) - 1);

        edit_case(s, "comp", ce, 8, e | ((UINT64_C(1) << (62 - shift)) - 1) << shift, ANY);   /* max size */
        edit_case(s, "comp", ce, 8, UINT64_C(1) << 62, MUST_FAIL);                              /* into the header */
        edit_case(s, "comp", ce, 8, UINT64_C(1) << 62 | (s->len + 10), MUST_FAIL);
        edit_case(s, "comp", ce, 8, UINT64_C(1) << 62 | ((UINT64_C(1) << shift) - 1), MUST_FAIL);
        edit_case(s, "comp", ce, 8, e & ~(((UINT64_C(1) << (62 - shift)) - 1) << shift), MUST_FAIL); /* short */
        edit_case(s, "comp", ce, 8, (e & ~((UINT64_C(1) << shift) - 1)) | (off + 1), MUST_FAIL);
        edit_case(s, "comp-data", (size_t) off + 4, 1, s->bytes[off + 4] ^ 0x40, MUST_FAIL);
        edit_case(s, "comp-data", (size_t) off, 4, 0, MUST_FAIL);
        {
                /* a bomb: 4 clusters of zeros in the compressed slot */
                uint8_t *b = calloc(1, s->len + 64 * KiB), *zeros = calloc(1, 4 * C);
                size_t n;
                ASSERT(b && zeros);
                memcpy(b, s->bytes, s->len);
                n = compress_unit(s == &s_zstd, zeros, 4 * C, b + off, 64 * KiB);
                put64(b + ce, comp_entry(12, off, n));
                try_image("comp-bomb", b, (size_t) MAX((uint64_t) s->len, off + n), MUST_FAIL, NULL);
                /* and a stream one cluster minus a byte long: too short */
                n = compress_unit(s == &s_zstd, zeros, C - 1, b + off, 64 * KiB);
                put64(b + ce, comp_entry(12, off, n));
                try_image("comp-short", b, (size_t) MAX((uint64_t) s->len, off + n), MUST_FAIL, NULL);
                free(b);
                free(zeros);
        }
}

/* The sample plus a snapshot table (cluster T = s->len) of two entries:
 * id "1" name "one" over a copy of the active L1 (cluster T + C), and id
 * "2" name "empty" with no L1 table. Returns the buffer (s->len + 2 C). */
static uint8_t *snap_sample(const sample *s, uint64_t *ret_t) {
        uint64_t C = s->cluster, T = s->len;
        uint8_t *b = calloc(1, s->len + 2 * C), *e;

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        put32(b + 60, 2);
        put64(b + 64, T);
        memcpy(b + T + C, b + s->l1, 8);
        e = b + T;
        put64(e, T + C);
        put32(e + 8, 1);
        e[13] = 1, e[15] = 3;                   /* id and name lengths */
        put32(e + 16, 1796614866);
        put32(e + 36, 24);                      /* extra: vm state, disk size, icount */
        put64(e + 40 + 8, DISK);
        put64(e + 40 + 16, 7);
        memcpy(e + 64, "1one", 4);
        e = b + T + 72;
        e[13] = 1, e[15] = 5;
        put32(e + 36, 16);
        put64(e + 40 + 8, DISK);
        memcpy(e + 56, "2empty", 6);
        *ret_t = T;
        return b;
}

/* The same bytes written as an image with snapshots: writes (shared
 * clusters copied when COPIED is clear; here the refcounts do not count
 * the hand-made table, as a hostile image's need not), snapshot -c, -a,
 * -d: each works or fails with a clear error, never crashes or hangs. */
static unsigned n_snap_ops;
static void snap_write_ops(const char *label, const uint8_t *bytes, size_t len) {
        static const char *const ops[] = { "c:new", "a:1", "d:empty", "d:1", "a:new", "d:new" };
        vdisk_io *io = mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        uint8_t buf[4096];
        int r;

        memset(buf, 0x5c, sizeof buf);
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, "qcow2", 0);
        if (r >= 0) {
                r = vdisk_disk_write(d, buf, sizeof buf, 8192);
                if (r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "write", r);
                for (size_t i = 0; i < ELEMENTSOF(ops); i++) {
                        vdisk_clear_error();
                        r = ops[i][0] == 'c' ? vdisk_disk_snapshot_create(d, ops[i] + 2) :
                            ops[i][0] == 'a' ? vdisk_disk_snapshot_apply(d, ops[i] + 2) :
                                               vdisk_disk_snapshot_delete(d, ops[i] + 2);
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, ops[i], r);
                        else
                                n_snap_ops++;
                }
                vdisk_clear_error();
                r = vdisk_disk_flush(d);
                if (r < 0)
                        test_check_clean_error(__FILE__, __LINE__, "flush", r);
        } else
                test_check_clean_error(__FILE__, __LINE__, "open writable", r);
        vdisk_disk_unref(d);
        vdisk_io_unref(io);
}

/* `off`: in the snapshot table, or HDR + an offset in the header */
#define HDR ((size_t) 1 << 40)
static void snap_case(const sample *s, const char *what, const char *snap, size_t off, unsigned width,
                      uint64_t v, expect e, const uint8_t *content) {
        uint64_t T;
        uint8_t *b = snap_sample(s, &T), *p;
        char label[160];

        p = off >= HDR ? b + (off - HDR) : b + T + off;
        if (width == 8)
                put64(p, v);
        else if (width == 4)
                put32(p, (uint32_t) v);
        else if (width == 2)
                p[0] = (uint8_t) (v >> 8), p[1] = (uint8_t) v;
        else if (width == 1)
                p[0] = (uint8_t) v;
        snprintf(label, sizeof label, "%s-snap-%s-%s=%#" PRIx64 ".qcow2", s->name, snap, what, v);
        g_snapshot = snap;
        try_image(label, b, s->len + 2 * s->cluster, e, content);
        g_snapshot = NULL;
        snap_write_ops(label, b, s->len + 2 * s->cluster);
        free(b);
}

static int reopen_calls;
static int count_reopen(void *user, vdisk_io *io, vdisk_io **ret) {
        reopen_calls++;
        return -EACCES;
}

static void test_snapshots(const sample *s) {
        uint8_t *zeros = calloc(1, DISK);
        uint64_t T, C = s->cluster;
        uint8_t *b = snap_sample(s, &T);

        ASSERT(zeros);
        /* the pristine table: each snapshot reads what it holds, by id or name */
        snap_case(s, "none", "1", 0, 0, 0, MUST_READ, s->content);
        snap_case(s, "none", "snapshot.name=one", 0, 0, 0, MUST_READ, s->content);
        snap_case(s, "none", "empty", 0, 0, 0, MUST_READ, zeros);
        snap_case(s, "none", "snapshot.id=2,snapshot.name=empty", 0, 0, 0, MUST_READ, zeros);
        snap_case(s, "none", "snapshot.id=3", 0, 0, 0, MUST_REFUSE, NULL);
        snap_case(s, "none", "snapshot.id=1,snapshot.name=empty", 0, 0, 0, MUST_REFUSE, NULL);
        try_image("snap-table-current", b, s->len + 2 * C, MUST_READ, s->content);
        {
                /* listed with what the entries say; a snapshot opens read-only only */
                vdisk_io *io = mem_io("snap-list", b, s->len + 2 * C);
                vdisk_disk *d = disk_new();
                vdisk_snapshot *v = NULL;
                size_t n = 0;

                ASSERT(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY) == 0);
                ASSERT(vdisk_image_list_snapshots(vdisk_disk_image(d, 0), &v, &n) == 0);
                ASSERT(n == 2);
                ASSERT(streq(v[0].id, "1") && streq(v[0].name, "one") && streq(v[1].id, "2") &&
                       streq(v[1].name, "empty"));
                ASSERT(v[0].icount == 7 && v[1].icount == VDISK_SNAPSHOT_NO_ICOUNT);
                ASSERT(v[0].date_sec == 1796614866 && v[0].disk_size == DISK);
                vdisk_snapshots_free(v, n);
                vdisk_disk_unref(d);
                d = disk_new();
                ASSERT(vdisk_disk_set_snapshot(d, "1") == 0);
                ASSERT(vdisk_disk_open(d, io, "qcow2", 0) == -EROFS);
                /* used once: the next open reads the current state */
                ASSERT(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY) == 0);
                ASSERT(vdisk_disk_set_snapshot(d, "snapshot.bogus=1") == -EINVAL);
                ASSERT(vdisk_disk_set_snapshot(d, "snapshot.id=") == -EINVAL);
                ASSERT(vdisk_disk_set_snapshot(d, "") == -EINVAL);
                ASSERT(vdisk_disk_set_snapshot(d, "snapshot.id=1,snapshot.id=2") == -EINVAL);
                ASSERT(vdisk_disk_set_snapshot(d, NULL) == 0);
                vdisk_disk_unref(d);
                {
                        /* a snapshot is never reopened writable: a write
                         * would land in the current state */
                        vdisk_resolver_ops ops = { .size = sizeof ops, .reopen = count_reopen };
                        vdisk_resolver *res = NULL;
                        uint8_t sector[512] = { 1 };

                        d = disk_new();
                        ASSERT(vdisk_resolver_new_ops(&ops, NULL, &res) == 0);
                        ASSERT(vdisk_disk_set_resolver(d, res) == 0);
                        vdisk_resolver_unref(res);
                        ASSERT(vdisk_disk_set_snapshot(d, "1") == 0);
                        ASSERT(vdisk_disk_open(d, io, "qcow2", VDISK_OPEN_READONLY) == 0);
                        reopen_calls = 0;
                        ASSERT(vdisk_disk_write(d, sector, sizeof sector, 0) == -EROFS);
                        ASSERT(vdisk_resize(d, 2 * DISK, NULL) == -EROFS);
                        ASSERT(reopen_calls == 0);
                        vdisk_disk_unref(d);
                }
                vdisk_io_unref(io);
        }
        free(b);

        /* the first entry's L1 table */
        snap_case(s, "l1_offset", "1", 0, 8, 0, MUST_REFUSE, NULL);
        snap_case(s, "l1_offset", "1", 0, 8, C / 2, MUST_REFUSE, NULL);           /* in the header, unaligned */
        snap_case(s, "l1_offset", "1", 0, 8, T + C + 8, MUST_REFUSE, NULL);
        snap_case(s, "l1_offset", "1", 0, 8, T + 2 * C, MUST_REFUSE, NULL);       /* past the end */
        snap_case(s, "l1_offset", "1", 0, 8, UINT64_MAX - C + 1, MUST_REFUSE, NULL);
        snap_case(s, "l1_offset", "1", 0, 8, s->l2, ANY, NULL);                   /* an L2 table as L1 */
        snap_case(s, "l1_offset", "1", 0, 8, s->reft, ANY, NULL);                  /* refcounts as L1 */
        snap_case(s, "l1_offset", "2", 0, 8, UINT64_MAX, MUST_READ, zeros);       /* no L1: never read */
        snap_case(s, "l1_size", "1", 8, 4, UINT32_MAX, MUST_REFUSE, NULL);
        snap_case(s, "l1_size", "1", 8, 4, 4 * 1024 * 1024, MUST_REFUSE, NULL);   /* not in the file */
        snap_case(s, "l1_size", "1", 8, 4, C / 8 + 1, MUST_REFUSE, NULL);         /* one past the end */
        snap_case(s, "l1_size", "1", 8, 4, 0, MUST_READ, zeros);
        snap_case(s, "l1_size", "1", 8, 4, C / 8, ANY, NULL);                     /* zeros after the copy */
        /* lengths and counts */
        snap_case(s, "id_len", "1", 12, 2, 0xffff, MUST_REFUSE, NULL);
        snap_case(s, "id_len", "1", 12, 2, 0, MUST_REFUSE, NULL);                 /* "1" is gone */
        snap_case(s, "name_len", "empty", 14, 2, 0xffff, MUST_REFUSE, NULL);
        snap_case(s, "extra", "1", 36, 4, UINT32_MAX, MUST_REFUSE, NULL);
        snap_case(s, "extra", "1", 36, 4, 1025, MUST_REFUSE, NULL);
        snap_case(s, "extra", "1", 36, 4, 0, ANY, NULL);                          /* the id is read elsewhere */
        snap_case(s, "extra2", "1", 72 + 36, 4, UINT32_MAX, MUST_REFUSE, NULL);  /* a bad later entry */
        snap_case(s, "id-nul", "1", 64, 1, 0, MUST_REFUSE, NULL);
        snap_case(s, "count", "1", HDR + 60, 4, 3, ANY, NULL);                    /* a third entry of zeros */
        snap_case(s, "count", "1", HDR + 60, 4, 1000, MUST_REFUSE, NULL);         /* past the table's end */
        snap_case(s, "count", "1", HDR + 60, 4, 1, MUST_READ, s->content);
        snap_case(s, "count", "empty", HDR + 60, 4, 1, MUST_REFUSE, NULL);
        snap_case(s, "offset", "1", HDR + 64, 8, T + 8, MUST_REFUSE, NULL);
        snap_case(s, "offset", "1", HDR + 64, 8, s->l2, ANY, NULL);               /* an L2 table as entries */
        free(zeros);
}

static void fuzz(const sample *s, uint64_t seed, unsigned iterations) {
        uint8_t *b = malloc(s->len);
        size_t meta_end = (size_t) MIN((uint64_t) s->len, 6 * (uint64_t) s->cluster);
        rng r;

        ASSERT(b);
        rng_seed(&r, seed);
        for (unsigned i = 0; i < iterations; i++) {
                unsigned flips = 1 + (unsigned) rng_below(&r, 4);

                memcpy(b, s->bytes, s->len);
                for (unsigned k = 0; k < flips; k++) {
                        size_t at = rng_chance(&r, 50) ? (size_t) rng_below(&r, 232)
                                                       : (size_t) rng_below(&r, meta_end);
                        b[at] ^= (uint8_t) (1u << rng_below(&r, 8));
                }
                try_image(s->name, b, s->len, ANY, NULL);
        }
        free(b);
}

int main(int argc, char **argv) {
        uint64_t seed = 20261207;
        unsigned iterations = 1500;

        if (argc > 1)
                seed = strtoull(argv[1], NULL, 0);
        if (argc > 2)
                iterations = (unsigned) strtoul(argv[2], NULL, 0);

        make_sample(&s_zlib, "zlib", false, false);
        make_sample(&s_zstd, "zstd", true, false);
        make_sample(&s_xl2, "xl2", false, true);
#ifndef HAVE_ASAN
        {
                /* memory bound: 256 MiB more address space than now */
                struct rlimit rl;
                FILE *f = fopen("/proc/self/statm", "re");
                unsigned long pages = 0;

                if (f && fscanf(f, "%lu", &pages) == 1 && getrlimit(RLIMIT_AS, &rl) == 0) {
                        rl.rlim_cur = (rlim_t) pages * (rlim_t) sysconf(_SC_PAGESIZE) + 256 * MiB;
                        if (rl.rlim_max == RLIM_INFINITY || rl.rlim_cur <= rl.rlim_max)
                                (void) setrlimit(RLIMIT_AS, &rl);
                }
                if (f)
                        fclose(f);
        }
#endif

        test_check_messages(&s_zlib);
        test_check_reads_l2_once(&s_zlib);
        make_bm_sample(&s_zlib, &s_bm);
        test_bitmaps(&s_zlib);
        test_overlaps(&s_zlib, &s_bm);
        free(s_bm.bytes);
        const sample *all[] = { &s_zlib, &s_zstd, &s_xl2 };
        for (size_t i = 0; i < ELEMENTSOF(all); i++) {
                const sample *s = all[i];

                try_image(s->name, s->bytes, s->len, MUST_READ, s->content);
                test_truncation(s);
                test_header(s);
                test_tables(s);
                test_writes(s);
                test_snapshots(s);
                fuzz(s, seed + i, iterations);
                free(s->bytes);
                free(s->content);
        }
        printf("test-malformed-qcow2: %u cases, %u opened, %u refused at open; %u snapshot changes of hostile "
               "tables went through\n", n_cases, n_opened, n_refused, n_snap_ops);
        return 0;
}
