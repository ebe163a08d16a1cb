/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `malformed`: hostile QCOW version 1 and QED images.
 *
 * Samples built here byte by byte from the layouts (docs/formats/qcow.md,
 * qed.md):
 *   qcow  1 MiB, 4 KiB clusters, 512-entry L2 tables: header, L1 of one
 *         entry, one L2 table, data clusters 0, 3, 200 and a compressed
 *         cluster 11 (raw deflate) at an unaligned offset;
 *   qed   1 MiB, 4 KiB clusters, table size 1: header cluster, L1, one L2,
 *         data clusters 0, 3, 200, a zero cluster 7.
 * The pristine samples read their content. Then: truncation at every 512
 * bytes through the metadata and inside the header; header fields out of
 * range (cluster_bits, l2_bits, table size, header size, huge sizes, L1
 * offsets, encryption, feature bits, backing names with json:/protocols,
 * lengths past the header); table entries out of range, unaligned, over
 * the header or the L1 table, overlapping each other; compressed sizes and
 * offsets that lie, damaged streams and a decompression bomb; random bit
 * flips. Each case opens or fails cleanly, reads cleanly (whatever it
 * reads), and never allocates hugely (run under ASan with a 64 MiB
 * allocation cap). QED cases are also opened writable with NEED_CHECK
 * set: the repair at open leaves an image that reads cleanly and checks
 * clean.
 *
 * Usage: test-malformed-qcow-qed [SEED [ITERATIONS]]
 */
#include <sys/resource.h>
#include <zlib.h>

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
#define C 4096u

typedef struct sample {
        const char *name, *fmt;
        bool qed;
        uint8_t *bytes;
        size_t len;
        uint8_t *content;
        uint64_t l1, l2, comp_off;
        size_t comp_len;
} sample;

static sample s_qcow, s_qed;
static unsigned n_cases, n_opened, n_refused, n_repaired;

typedef enum { ANY, MUST_REFUSE, MUST_READ, MUST_FAIL } expect;

static void be32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) (v >> 24), p[1] = (uint8_t) (v >> 16), p[2] = (uint8_t) (v >> 8), p[3] = (uint8_t) v;
}
static void be64(uint8_t *p, uint64_t v) {
        be32(p, (uint32_t) (v >> 32));
        be32(p + 4, (uint32_t) v);
}
static void le32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) v, p[1] = (uint8_t) (v >> 8), p[2] = (uint8_t) (v >> 16), p[3] = (uint8_t) (v >> 24);
}
static void le64(uint8_t *p, uint64_t v) {
        le32(p, (uint32_t) v);
        le32(p + 4, (uint32_t) (v >> 32));
}
static void put(const sample *s, uint8_t *p, unsigned width, uint64_t v) {
        if (width == 1)
                *p = (uint8_t) v;
        else if (width == 4)
                s->qed ? le32(p, (uint32_t) v) : be32(p, (uint32_t) v);
        else
                s->qed ? le64(p, v) : be64(p, v);
}

/* Reads (up to 4 MiB of) the disk; with writable, QED's open repairs and the
 * image must then check clean. */
static int try_image(const sample *s, const char *label, const uint8_t *bytes, size_t len, expect e,
                     const uint8_t *content, bool writable) {
        vdisk_io *io = mem_io(label, bytes, len);
        vdisk_disk *d = disk_new();
        bool failed = false;
        int r;

        n_cases++;
        test_set_context("case %s (%zu bytes%s)", label, len, writable ? ", writable" : "");
        vdisk_clear_error();
        r = vdisk_disk_open(d, io, n_cases % 2 ? s->fmt : NULL, writable ? 0 : VDISK_OPEN_READONLY);
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
                uint64_t size = MIN(vdisk_disk_size(d), 4 * MiB);
                uint8_t *buf = malloc(64 * KiB);

                ASSERT(buf);
                for (uint64_t off = 0; off < size; off += 64 * KiB) {
                        size_t n = (size_t) MIN((uint64_t) 64 * KiB, size - off);

                        r = vdisk_disk_read(d, buf, n, off);
                        if (r < 0) {
                                test_check_clean_error(__FILE__, __LINE__, "read", r);
                                if (e == MUST_READ)
                                        FAIL("%s: reading a valid image failed: %d (%s)", label, r,
                                             vdisk_last_error());
                                failed = true;
                                continue;
                        }
                        if (content && memcmp(buf, content + off, n) != 0)
                                FAIL("%s: content differs at %" PRIu64, label, off);
                }
                if (writable) {
                        vdisk_check_report rep = { .size = sizeof rep };

                        /* a write into a cluster of its own, then the tables must check clean */
                        memset(buf, 0x6b, 4096);
                        r = vdisk_disk_write(d, buf, 4096, 100 * 4096);
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, "write", r);
                        r = vdisk_check(d, 0, 0, &rep, NULL);
                        if (r < 0)
                                test_check_clean_error(__FILE__, __LINE__, "check", r);
                        else if (rep.corruptions != 0)
                                FAIL("%s: %" PRIu64 " corruptions left after the repair at open", label,
                                     rep.corruptions);
                        else
                                n_repaired++;
                        vdisk_check_report_clear(&rep);
                }
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

static uint64_t comp_entry(uint64_t off, uint64_t len) {
        return UINT64_C(1) << 63 | len << (63 - 12) | off;
}

static void fill(rng *r, uint8_t *p, size_t len) {
        for (size_t i = 0; i < len; i++)
                p[i] = (uint8_t) rng_next(r);
}

static void make_sample(sample *s, bool qed) {
        size_t cap = 16 * C;
        uint8_t *b = calloc(1, cap), *c = calloc(1, DISK);
        static const unsigned data[] = { 0, 3, 200 };
        uint64_t next;
        rng r;

        ASSERT(b && c);
        rng_seed(&r, 99 + qed);
        s->qed = qed;
        s->name = qed ? "qed" : "qcow";
        s->fmt = qed ? "qed" : "qcow";
        if (qed) {
                /* cluster 0 header, 1 L1, 2 L2, 3.. data */
                memcpy(b, "QED\0", 4);
                le32(b + 4, C);
                le32(b + 8, 1);
                le32(b + 12, 1);
                s->l1 = C, s->l2 = 2 * C;
                le64(b + 40, s->l1);
                le64(b + 48, DISK);
                le64(b + s->l1, s->l2);
                next = 3 * C;
        } else {
                /* header 48 bytes, L1 at 48 (one entry), L2 at 4096, data from 8192 */
                memcpy(b, "QFI\xfb", 4);
                be32(b + 4, 1);
                be64(b + 24, DISK);
                b[32] = 12;
                b[33] = 9;
                s->l1 = 48, s->l2 = C;
                be64(b + 40, s->l1);
                be64(b + s->l1, s->l2);
                next = 2 * C;
        }
        for (size_t i = 0; i < ELEMENTSOF(data); i++) {
                fill(&r, c + data[i] * C, C);
                memcpy(b + next, c + data[i] * C, C);
                put(s, b + s->l2 + data[i] * 8, 8, next);
                next += C;
        }
        if (qed) {
                put(s, b + s->l2 + 7 * 8, 8, 1);
        } else {
                fill(&r, c + 11 * C, C / 2);
                for (uint32_t i = C / 2; i < C; i++)
                        c[11 * C + i] = (uint8_t) "compressible text "[i % 18];
                s->comp_off = next + 100;
                s->comp_len = deflate_raw(c + 11 * C, C, b + s->comp_off, cap - s->comp_off);
                be64(b + s->l2 + 11 * 8, comp_entry(s->comp_off, s->comp_len));
                next = ALIGN_UP(s->comp_off + s->comp_len, (uint64_t) C);
        }
        s->len = (size_t) next;
        s->bytes = b;
        s->content = c;
}

/* ---------------------------------------------------------------- cases */

static void edit(const sample *s, const char *what, size_t off, unsigned width, uint64_t v, expect e, bool need_check) {
        uint8_t *b = malloc(s->len);
        char label[128];

        ASSERT(b);
        memcpy(b, s->bytes, s->len);
        put(s, b + off, width, v);
        snprintf(label, sizeof label, "%s-%s=%#" PRIx64, s->name, what, v);
        try_image(s, label, b, s->len, e, e == MUST_READ ? s->content : NULL, false);
        if (s->qed && need_check) {
                /* NEED_CHECK set: a writable open repairs first */
                b[16] |= 2;
                snprintf(label, sizeof label, "%s-%s=%#" PRIx64 "-needcheck", s->name, what, v);
                try_image(s, label, b, s->len, e == MUST_READ ? MUST_READ : ANY, NULL, true);
        }
        free(b);
}

static void test_truncation(const sample *s) {
        static const size_t qcow_fields[] = { 4, 8, 16, 20, 24, 32, 33, 36, 40, 48 };
        static const size_t qed_fields[] = { 4, 8, 12, 16, 40, 48, 56, 64 };
        const size_t *f = s->qed ? qed_fields : qcow_fields;
        size_t nf = s->qed ? ELEMENTSOF(qed_fields) : ELEMENTSOF(qcow_fields);

        for (size_t len = 0; len < s->len; len += 512)
                try_image(s, s->name, s->bytes, len, ANY, NULL, false);
        for (size_t i = 0; i < nf; i++)
                for (size_t d = 0; d < 2; d++)
                        try_image(s, s->name, s->bytes, f[i] - 1 - d, MUST_REFUSE, NULL, false);
        try_image(s, s->name, s->bytes, s->len - C, ANY, NULL, false);
}

static void test_header_qcow(const sample *s) {
        edit(s, "version", 4, 4, 2, ANY, false);   /* QCOW2's then: refused, no header for it */
        edit(s, "version", 4, 4, 0, MUST_REFUSE, false);
        for (uint64_t v = 0; v < 70; v += 5)
                edit(s, "cluster_bits", 32, 1, v, ANY, false);
        edit(s, "cluster_bits", 32, 1, 8, MUST_REFUSE, false);
        edit(s, "cluster_bits", 32, 1, 17, MUST_REFUSE, false);
        edit(s, "cluster_bits", 32, 1, 255, MUST_REFUSE, false);
        edit(s, "l2_bits", 33, 1, 5, MUST_REFUSE, false);
        edit(s, "l2_bits", 33, 1, 14, MUST_REFUSE, false);
        edit(s, "l2_bits", 33, 1, 200, MUST_REFUSE, false);
        edit(s, "l2_bits", 33, 1, 13, ANY, false);
        edit(s, "size", 24, 8, 0, MUST_REFUSE, false);
        edit(s, "size", 24, 8, UINT64_MAX, MUST_REFUSE, false);
        edit(s, "size", 24, 8, UINT64_C(1) << 62, MUST_REFUSE, false);   /* L1 far beyond the file */
        edit(s, "size", 24, 8, UINT64_C(1) << 40, MUST_REFUSE, false);
        edit(s, "size", 24, 8, 4 * MiB, ANY, false);   /* 2 L1 entries: the second is a zero in the L1 sector */
        edit(s, "crypt", 36, 4, 1, MUST_REFUSE, false);
        edit(s, "crypt", 36, 4, 2, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, 0, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, 47, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, 52, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, s->len, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, UINT64_MAX - 7, MUST_REFUSE, false);
        edit(s, "backing_size", 16, 4, 10, ANY, false);            /* offset 0: no name */
        edit(s, "backing_offset", 8, 8, 3000, ANY, false);         /* size 0: no name */
        {
                /* names: plain (reads through a missing parent: fails cleanly), json:, a protocol, too long */
                static const char *const names[] = { "json:{\"file.filename\":\"x\"}", "nbd:localhost:10809",
                                                     "../../etc/passwd", "/etc/passwd", "base.qcow" };
                for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                        uint8_t *b = malloc(s->len);
                        size_t n = strlen(names[i]);

                        ASSERT(b);
                        memcpy(b, s->bytes, s->len);
                        memcpy(b + 1024, names[i], n);
                        be64(b + 8, 1024);
                        be32(b + 16, (uint32_t) n);
                        try_image(s, names[i], b, s->len, i < 2 ? MUST_REFUSE : ANY, NULL, false);
                        be32(b + 16, 5000);
                        try_image(s, "name too long", b, s->len, MUST_REFUSE, NULL, false);
                        be64(b + 8, 40);    /* over the L1 table */
                        be32(b + 16, (uint32_t) n);
                        try_image(s, "name over the L1", b, s->len, MUST_REFUSE, NULL, false);
                        free(b);
                }
        }
}

static void test_header_qed(const sample *s) {
        edit(s, "magic", 0, 4, 0x00444552, MUST_REFUSE, false);
        for (uint64_t v = 0; v < 33; v++)
                edit(s, "cluster_size", 4, 4, UINT64_C(1) << v, v == 12 ? MUST_READ : ANY, false);
        edit(s, "cluster_size", 4, 4, 4097, MUST_REFUSE, false);
        edit(s, "cluster_size", 4, 4, 0, MUST_REFUSE, false);
        edit(s, "cluster_size", 4, 4, UINT32_MAX, MUST_REFUSE, false);
        for (uint64_t v = 0; v < 40; v += 3)
                edit(s, "table_size", 8, 4, v, ANY, false);
        edit(s, "table_size", 8, 4, 0, MUST_REFUSE, false);
        edit(s, "table_size", 8, 4, 3, MUST_REFUSE, false);
        edit(s, "table_size", 8, 4, 32, MUST_REFUSE, false);
        edit(s, "table_size", 8, 4, UINT32_MAX, MUST_REFUSE, false);
        edit(s, "header_size", 12, 4, 0, MUST_REFUSE, false);
        edit(s, "header_size", 12, 4, 2, MUST_REFUSE, false);   /* over the L1 */
        edit(s, "header_size", 12, 4, UINT32_MAX, MUST_REFUSE, false);
        edit(s, "features", 16, 8, 8, MUST_REFUSE, false);
        edit(s, "features", 16, 8, UINT64_MAX, MUST_REFUSE, false);
        edit(s, "features", 16, 8, 2, MUST_READ, true);          /* NEED_CHECK: reads; writable repairs */
        edit(s, "features", 16, 8, 1, MUST_REFUSE, false);       /* backing file at offset 0 */
        edit(s, "compat", 24, 8, UINT64_MAX, ANY, false);
        edit(s, "autoclear", 32, 8, UINT64_MAX, MUST_READ, true);
        edit(s, "l1_offset", 40, 8, 0, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, 100, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, s->len, MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, UINT64_MAX & ~(uint64_t) (C - 1), MUST_REFUSE, false);
        edit(s, "l1_offset", 40, 8, 2 * C, ANY, true);            /* the L2 as L1 */
        edit(s, "size", 48, 8, 0, MUST_REFUSE, false);
        edit(s, "size", 48, 8, 1000001, MUST_REFUSE, false);
        edit(s, "size", 48, 8, UINT64_MAX, MUST_REFUSE, false);
        edit(s, "size", 48, 8, UINT64_C(1) << 30, ANY, true);   /* the largest for 4 KiB x 1: 2^9 * 2^9 * 2^12 */
        edit(s, "size", 48, 8, (UINT64_C(1) << 30) + 512, MUST_REFUSE, false);
        {
                static const char *const names[] = { "json:{\"file.filename\":\"x\"}", "nbd:localhost:10809",
                                                     "../../etc/passwd", "/etc/passwd", "base.qed" };
                for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                        uint8_t *b = malloc(s->len);
                        size_t n = strlen(names[i]);

                        ASSERT(b);
                        memcpy(b, s->bytes, s->len);
                        memcpy(b + 64, names[i], n);
                        b[16] |= 1;
                        le32(b + 56, 64);
                        le32(b + 60, (uint32_t) n);
                        try_image(s, names[i], b, s->len, i < 2 ? MUST_REFUSE : ANY, NULL, false);
                        b[16] |= 4;
                        try_image(s, names[i], b, s->len, i < 2 ? MUST_REFUSE : ANY, NULL, false);
                        le32(b + 60, C);    /* past the header cluster */
                        try_image(s, "name past the header", b, s->len, MUST_REFUSE, NULL, false);
                        le32(b + 56, 10);   /* over the header fields */
                        le32(b + 60, (uint32_t) n);
                        try_image(s, "name over the header", b, s->len, MUST_REFUSE, NULL, false);
                        le32(b + 56, UINT32_MAX);
                        try_image(s, "name offset huge", b, s->len, MUST_REFUSE, NULL, false);
                        free(b);
                }
        }
}

static void test_tables(const sample *s) {
        const uint64_t l1e[] = { 1, 8, 512, 0, C / 2, s->l1, s->len, s->len - 8, UINT64_MAX, UINT64_C(1) << 62,
                                 s->l2 + 8 };
        const uint64_t l2e[] = { 1, 2, 512, 0, s->l1, s->l2, s->len, s->len - C + 512, UINT64_MAX,
                                 UINT64_C(1) << 62, s->len - C };

        for (size_t i = 0; i < ELEMENTSOF(l1e); i++)
                edit(s, "l1e", (size_t) s->l1, 8, l1e[i], ANY, true);
        /* entries that must fail to read: past the end, over the header or L1 table, unaligned */
        for (size_t i = 0; i < ELEMENTSOF(l2e); i++)
                edit(s, "l2e3", (size_t) (s->l2 + 3 * 8), 8, l2e[i],
                     (l2e[i] == 0 || l2e[i] == s->len - C || (s->qed && l2e[i] == 1) ||
                      l2e[i] == s->l2) ? ANY : MUST_FAIL, true);
        /* two entries for one cluster, and a data cluster that is the L2 table itself */
        edit(s, "l2e5-dup", (size_t) (s->l2 + 5 * 8), 8, s->len - C, ANY, true);
        edit(s, "l2e6-l2", (size_t) (s->l2 + 6 * 8), 8, s->l2, ANY, true);
        /* all entries of the L2 table point at one cluster */
        {
                uint8_t *b = malloc(s->len);
                ASSERT(b);
                memcpy(b, s->bytes, s->len);
                for (unsigned i = 0; i < 256; i++)
                        put(s, b + s->l2 + 8 * i, 8, s->len - C);
                try_image(s, "all-one-cluster", b, s->len, ANY, NULL, false);
                if (s->qed) {
                        b[16] |= 2;
                        try_image(s, "all-one-cluster-needcheck", b, s->len, ANY, NULL, true);
                }
                free(b);
        }
        if (s->qed)
                return;
        /* compressed: sizes and offsets that lie, damaged streams, a bomb */
        const uint64_t ce = s->l2 + 11 * 8;
        const struct { uint64_t off, len; expect e; } lies[] = {
                { s->comp_off, s->comp_len, MUST_READ },
                { s->comp_off, 1, MUST_FAIL },
                { s->comp_off, s->comp_len / 2, MUST_FAIL },
                { s->comp_off, C - 1, ANY },                 /* more than the stream: qemu reads it too */
                { s->comp_off + 1, s->comp_len, MUST_FAIL },
                { 0, s->comp_len, MUST_FAIL },               /* over the header */
                { s->len, s->comp_len, MUST_FAIL },
                { s->len - 10, C - 1, ANY },
                { (UINT64_C(1) << 51) - 1, C - 1, MUST_FAIL },
                { s->comp_off, 0, MUST_FAIL },
        };
        for (size_t i = 0; i < ELEMENTSOF(lies); i++)
                edit(s, "comp", (size_t) ce, 8, comp_entry(lies[i].off, lies[i].len), lies[i].e, false);
        {
                uint8_t *b = malloc(s->len + 64 * KiB), *zeros = calloc(1, 4 * C);
                size_t n;

                ASSERT(b && zeros);
                /* a damaged stream */
                memcpy(b, s->bytes, s->len);
                b[s->comp_off + s->comp_len / 2] ^= 0xff;
                try_image(s, "comp-damaged", b, s->len, ANY, NULL, false);
                /* a bomb: four clusters of zeros in the place of one */
                memcpy(b, s->bytes, s->len);
                n = deflate_raw(zeros, 4 * C, b + s->len, 64 * KiB);
                be64(b + ce, comp_entry(s->len, n));
                try_image(s, "comp-bomb", b, s->len + n, MUST_FAIL, NULL, false);
                /* a stream one byte short of a cluster */
                n = deflate_raw(zeros, C - 1, b + s->len, 64 * KiB);
                be64(b + ce, comp_entry(s->len, n));
                try_image(s, "comp-short", b, s->len + n, MUST_FAIL, NULL, false);
                free(b);
                free(zeros);
        }
}

static void fuzz(const sample *s, uint64_t seed, unsigned iterations) {
        uint8_t *b = malloc(s->len);
        size_t meta_end = (size_t) (s->l2 + C);
        rng r;

        ASSERT(b);
        rng_seed(&r, seed);
        for (unsigned i = 0; i < iterations; i++) {
                unsigned flips = 1 + (unsigned) rng_below(&r, 4);

                memcpy(b, s->bytes, s->len);
                for (unsigned k = 0; k < flips; k++) {
                        size_t at = rng_chance(&r, 40) ? (size_t) rng_below(&r, 64) : (size_t) rng_below(&r, meta_end);
                        b[at] ^= (uint8_t) (1u << rng_below(&r, 8));
                }
                if (s->qed && i % 8 == 0) {
                        b[16] |= 2;   /* NEED_CHECK: the writable open repairs */
                        try_image(s, "qed-needcheck", b, s->len, ANY, NULL, true);
                } else
                        try_image(s, s->name, b, s->len, ANY, NULL, false);
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

        make_sample(&s_qcow, false);
        make_sample(&s_qed, true);
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
        const sample *all[] = { &s_qcow, &s_qed };
        for (size_t i = 0; i < ELEMENTSOF(all); i++) {
                const sample *s = all[i];

                try_image(s, s->name, s->bytes, s->len, MUST_READ, s->content, false);
                if (s->qed)
                        try_image(s, "qed-writable", s->bytes, s->len, MUST_READ, s->content, true);
                test_truncation(s);
                if (s->qed)
                        test_header_qed(s);
                else
                        test_header_qcow(s);
                test_tables(s);
                fuzz(s, seed + i, iterations);
                free(s->bytes);
                free(s->content);
        }
        printf("test-malformed-qcow-qed: %u cases, %u opened, %u refused at open, %u repaired at open and "
               "checked clean\n", n_cases, n_opened, n_refused, n_repaired);
        return 0;
}
