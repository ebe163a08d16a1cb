/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of lib/fmt/tablecache: LRU order under one budget shared by
 * several tables, the budget never exceeded (peak), eviction counts, pinning,
 * per-sector dirty write-back, the write order (data flush before the pages
 * that point at it, page dependencies, the owner's hook), early write-back
 * when the budget is full of dirty pages, failed writes that stay dirty and a
 * retry that succeeds, load errors, resize and the streaming table writer.
 * The io under test is a memory io wrapped with vdisk_io_new_ops() so that
 * every pwrite and flush is logged in order. */
#include "fmt/tablecache.h"
#include "io/io.h"
#include "tests.h"
#include "util/util.h"

/* ---------------------------------------------------------------- a logging io */

typedef struct op {
        char kind;              /* 'W' pwrite, 'F' flush, 'H' hook (logged by the test) */
        uint64_t offset, len;
} op;

typedef struct rec {
        vdisk_io *inner;
        op log[4096];
        size_t n;
        int fail_writes, fail_reads, fail_flush;
        unsigned sizes;         /* get_size calls */
} rec;

static int rec_pread(void *user, void *buf, size_t len, uint64_t offset) {
        rec *r = user;

        if (r->fail_reads)
                return -EIO;
        return vdisk_io_pread(r->inner, buf, len, offset);
}

static void rec_log(rec *r, char kind, uint64_t offset, uint64_t len) {
        ASSERT(r->n < ELEMENTSOF(r->log));
        r->log[r->n++] = (op) { kind, offset, len };
}

static int rec_pwrite(void *user, const void *buf, size_t len, uint64_t offset) {
        rec *r = user;

        if (r->fail_writes)
                return -EIO;
        rec_log(r, 'W', offset, len);
        return vdisk_io_pwrite(r->inner, buf, len, offset);
}

static int rec_flush(void *user) {
        rec *r = user;

        if (r->fail_flush)
                return -EIO;
        rec_log(r, 'F', 0, 0);
        return vdisk_io_flush(r->inner);
}

static int rec_get_size(void *user, uint64_t *ret) {
        rec *r = user;

        r->sizes++;
        return vdisk_io_get_size(r->inner, ret);
}

static int rec_truncate(void *user, uint64_t size) {
        rec *r = user;

        return vdisk_io_truncate(r->inner, size);
}

static const vdisk_io_ops rec_ops = {
        .size = sizeof(vdisk_io_ops),
        .pread = rec_pread,
        .pwrite = rec_pwrite,
        .flush = rec_flush,
        .get_size = rec_get_size,
        .truncate = rec_truncate,
};

/* A memory file of `len` bytes where byte i is pattern(i), under a logging io. */
static uint8_t pattern(uint64_t i) {
        return (uint8_t) (i * 7 + (i >> 12));
}

static vdisk_io *rec_io(rec *r, size_t len) {
        uint8_t *b = malloc(MAX(len, (size_t) 1));
        vdisk_io *io;

        ASSERT(b);
        for (size_t i = 0; i < len; i++)
                b[i] = pattern(i);
        *r = (rec) {};
        ASSERT_OK(vdisk_io_new_memory(b, len, "table-file", 0, &r->inner));
        free(b);
        ASSERT_OK(vdisk_io_new_ops(&rec_ops, r, "table-file", 0, &io));
        return io;
}

static const uint8_t *file_bytes(rec *r, size_t *ret_len) {
        const void *p;

        ASSERT_OK(vdisk_io_memory_data(r->inner, &p, ret_len));
        return p;
}

static vdisk_metadata_stats stats(tc_budget *b) {
        vdisk_metadata_stats s = { .size = sizeof s };

        tc_budget_stats(b, &s);
        return s;
}

static tc_table *table(tc_budget *b, vdisk_io *io, uint64_t offset, uint64_t size, uint32_t page_size,
                       tc_entry entry) {
        tc_table_params p = {
                .offset = offset,
                .size = size,
                .page_size = page_size,
                .entry = entry,
                .name = "test table",
        };
        tc_table *t;

        ASSERT_OK(tc_table_new(b, io, &p, &t));
        return t;
}

#define PAGE (UINT32_C(64) << 10)

/* ---------------------------------------------------------------- tests */

static void test_entries(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 64 * KiB);
        tc_budget *b;
        uint64_t v;

        ASSERT_OK(tc_budget_new(0, &b));
        ASSERT_EQ_U64(tc_budget_limit(b), 64 * MiB);
        ASSERT_ERR(tc_budget_new(4096, &(tc_budget *) { NULL }), -EINVAL);

        static const tc_entry kinds[] = { TC_LE32, TC_BE32, TC_LE64, TC_BE64 };
        for (size_t k = 0; k < ELEMENTSOF(kinds); k++) {
                uint64_t base = 1024 + 8192 * k;
                tc_table *t = table(b, io, base, 4096, 512, kinds[k]);
                unsigned es = tc_entry_size(kinds[k]);
                uint8_t raw[8];

                ASSERT_EQ_U64(tc_table_entries(t), 4096 / es);
                for (unsigned j = 0; j < es; j++)
                        raw[j] = pattern(base + 5 * es + j);
                ASSERT_OK(tc_get(t, 5, &v));
                switch (kinds[k]) {
                case TC_LE32: ASSERT_EQ_U64(v, get_le32(raw)); break;
                case TC_BE32: ASSERT_EQ_U64(v, get_be32(raw)); break;
                case TC_LE64: ASSERT_EQ_U64(v, get_le64(raw)); break;
                case TC_BE64: ASSERT_EQ_U64(v, get_be64(raw)); break;
                default: break;
                }
                ASSERT_OK(tc_set(t, 5, 0x0102030405060708ull & (es == 4 ? 0xffffffffull : ~0ull), 0));
                ASSERT_OK(tc_table_flush(t));
                ASSERT_OK(vdisk_io_pread(r.inner, raw, es, base + 5 * es));
                if (kinds[k] == TC_LE32)
                        ASSERT(raw[0] == 0x08 && raw[3] == 0x05);
                if (kinds[k] == TC_BE64)
                        ASSERT(raw[0] == 0x01 && raw[7] == 0x08);
                tc_table_free(t);
        }
        ASSERT_EQ_U64(stats(b).held, 0);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* Pages are dropped least recently used first, across two tables. */
static void test_lru(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 8 * MiB);
        tc_budget *b;
        tc_table *a, *c;
        unsigned fit = 0;
        uint64_t v, m;

        ASSERT_OK(tc_budget_new(TC_BUDGET_MIN, &b));
        a = table(b, io, 0, 4 * MiB, PAGE, TC_LE32);
        c = table(b, io, 4 * MiB, 4 * MiB, PAGE, TC_LE32);

        /* Fill the budget with pages of a, alternating with c's page 0 kept hot. */
        ASSERT_OK(tc_get(c, 0, &v));
        for (unsigned i = 0; stats(b).evictions == 0; i++) {
                ASSERT(i < 64);
                ASSERT_OK(tc_get(a, (uint64_t) i * (PAGE / 4), &v));
                ASSERT_EQ_U64(v, get_le32((uint8_t[]) { pattern((uint64_t) i * PAGE), pattern((uint64_t) i * PAGE + 1),
                                                        pattern((uint64_t) i * PAGE + 2),
                                                        pattern((uint64_t) i * PAGE + 3) }));
                ASSERT_OK(tc_get(c, 0, &v));   /* keeps c's page 0 most recent */
                fit = i;
        }
        /* The first eviction took a's page 0 (the oldest), not c's page 0. */
        ASSERT(fit >= 8);
        ASSERT_EQ_U64(stats(b).evictions, 1);
        m = stats(b).misses;
        ASSERT_OK(tc_get(c, 0, &v));
        ASSERT_EQ_U64(stats(b).misses, m);          /* still there */
        ASSERT_OK(tc_get(a, PAGE / 4, &v));           /* a's page 1: still there */
        ASSERT_EQ_U64(stats(b).misses, m);
        ASSERT_OK(tc_get(a, 0, &v));                  /* a's page 0: gone, read again */
        ASSERT_EQ_U64(stats(b).misses, m + 1);
        ASSERT_EQ_U64(stats(b).evictions, 2);
        /* ... and that evicted a's page 2 (page 1 was touched after it). */
        ASSERT_OK(tc_get(a, 2 * (PAGE / 4), &v));
        ASSERT_EQ_U64(stats(b).misses, m + 2);
        ASSERT(stats(b).peak <= TC_BUDGET_MIN);

        tc_table_free(a);
        tc_table_free(c);
        ASSERT_EQ_U64(stats(b).held, 0);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* Random reads over 16 MiB of tables in a 1 MiB budget: correct values, peak
 * within the budget, hits + misses = look-ups, evictions = misses - held pages. */
static void test_budget_random(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 16 * MiB);
        tc_budget *b;
        tc_table *t[4];
        uint64_t x = 0x9E3779B97F4A7C15ull, lookups = 0;
        vdisk_metadata_stats s;

        ASSERT_OK(tc_budget_new(TC_BUDGET_MIN, &b));
        for (unsigned i = 0; i < 4; i++)
                t[i] = table(b, io, (uint64_t) i * 4 * MiB, 4 * MiB, i % 2 ? 4096 : PAGE, TC_BE64);
        for (unsigned k = 0; k < 20000; k++) {
                unsigned ti;
                uint64_t i, v, off;
                uint8_t raw[8];

                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ti = (unsigned) (x % 4);
                i = (x >> 8) % (4 * MiB / 8);
                ASSERT_OK(tc_get(t[ti], i, &v));
                lookups++;
                off = (uint64_t) ti * 4 * MiB + i * 8;
                for (unsigned j = 0; j < 8; j++)
                        raw[j] = pattern(off + j);
                ASSERT_EQ_U64(v, get_be64(raw));
                ASSERT(stats(b).held <= TC_BUDGET_MIN);
        }
        s = stats(b);
        ASSERT(s.peak <= TC_BUDGET_MIN);
        ASSERT(s.peak > TC_BUDGET_MIN / 2);
        ASSERT_EQ_U64(s.hits + s.misses, lookups);
        ASSERT(s.evictions > 1000);
        ASSERT(s.evictions < s.misses);
        ASSERT_EQ_U64(s.early_writebacks, 0);
        ASSERT(r.n == 0);   /* reads only: nothing written */
        for (unsigned i = 0; i < 4; i++)
                tc_table_free(t[i]);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* A pinned page survives any amount of other traffic; charges count. */
static void test_pinning(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 8 * MiB);
        tc_budget *b;
        tc_table *t;
        tc_page *pg;
        uint64_t v, m;

        ASSERT_OK(tc_budget_new(TC_BUDGET_MIN, &b));
        t = table(b, io, 0, 8 * MiB, PAGE, TC_LE32);
        ASSERT_OK(tc_page_get(t, 3, &pg));
        ASSERT_EQ_U64(tc_page_len(pg), PAGE);
        ASSERT(tc_page_data(pg)[5] == pattern(3 * PAGE + 5));
        for (uint64_t p = 0; p < 8 * MiB / PAGE; p++)
                ASSERT_OK(tc_get(t, p * (PAGE / 4), &v));
        ASSERT(stats(b).evictions > 0);
        m = stats(b).misses;
        ASSERT_OK(tc_get(t, 3 * (PAGE / 4) + 1, &v));
        ASSERT_EQ_U64(stats(b).misses, m);
        tc_page_put(pg);

        /* Charges: what does not fit is -E2BIG; what fits evicts pages. */
        ASSERT_ERR(tc_budget_charge(b, 2 * TC_BUDGET_MIN), -E2BIG);
        ASSERT_OK(tc_budget_charge(b, TC_BUDGET_MIN / 2));
        ASSERT(stats(b).held <= TC_BUDGET_MIN);
        /* With everything pinned, nothing more fits. */
        {
                tc_page *pins[32];
                unsigned n = 0;
                int rr = 0;

                for (; n < 32; n++) {
                        rr = tc_page_get(t, n, &pins[n]);
                        if (rr < 0)
                                break;
                }
                ASSERT(rr == -E2BIG);
                ASSERT(n > 0 && n < 32);
                ASSERT(stats(b).peak <= TC_BUDGET_MIN);
                while (n > 0)
                        tc_page_put(pins[--n]);
        }
        tc_budget_uncharge(b, TC_BUDGET_MIN / 2);
        tc_table_free(t);
        ASSERT_EQ_U64(stats(b).held, 0);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* Only dirty sectors are written; adjacent ones in one write. */
static void test_dirty_sectors(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 1 * MiB);
        tc_budget *b;
        tc_table *t;

        ASSERT_OK(tc_budget_new(0, &b));
        t = table(b, io, 4096, 256 * KiB, PAGE, TC_LE32);
        ASSERT(!tc_table_is_dirty(t));
        ASSERT_OK(tc_set(t, 1, 7, 0));            /* sector 0 */
        ASSERT_OK(tc_set(t, 128, 7, 0));          /* sector 1 */
        ASSERT_OK(tc_set(t, 128 * 9 + 3, 7, 0));  /* sector 9 */
        ASSERT_OK(tc_set(t, 16384 + 5, 7, 0));    /* page 1, sector 128 */
        ASSERT(tc_table_is_dirty(t));
        ASSERT_OK(tc_table_flush(t));
        ASSERT(!tc_table_is_dirty(t));
        ASSERT_EQ_U64(r.n, 4);
        ASSERT(r.log[0].kind == 'W' && r.log[1].kind == 'W' && r.log[2].kind == 'W');
        /* pages in any order, runs in order within a page */
        {
                bool run01 = false, run9 = false, run128 = false;

                for (size_t i = 0; i < 3; i++) {
                        run01 |= r.log[i].offset == 4096 && r.log[i].len == 1024;
                        run9 |= r.log[i].offset == 4096 + 9 * 512 && r.log[i].len == 512;
                        run128 |= r.log[i].offset == 4096 + 128 * 512 && r.log[i].len == 512;
                }
                ASSERT(run01 && run9 && run128);
        }
        ASSERT(r.log[3].kind == 'F');
        /* Setting an entry to its value dirties nothing. */
        r.n = 0;
        ASSERT_OK(tc_set(t, 1, 7, 0));
        ASSERT(!tc_table_is_dirty(t));
        ASSERT_OK(tc_table_flush(t));
        ASSERT_EQ_U64(r.n, 0);
        tc_table_free(t);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

static int hook_calls;
static int hook(void *user) {
        rec *r = user;

        hook_calls++;
        rec_log(r, 'H', 0, 0);
        return 0;
}

static size_t find_op(const rec *r, char kind, uint64_t offset, size_t from) {
        for (size_t i = from; i < r->n; i++)
                if (r->log[i].kind == kind && (kind != 'W' || r->log[i].offset == offset))
                        return i;
        FAIL("no %c at %" PRIu64 " in the log after entry %zu", kind, offset, from);
}

/* refcount-like (rc) before l2 before l1; the l2 change points at new data. */
static void test_order(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 4 * MiB);
        tc_budget *b;
        tc_table *l1, *l2, *rc;
        tc_page *p1, *p2, *p3;
        tc_table_params hp = { .offset = 64 * KiB, .size = 64 * KiB, .page_size = PAGE, .entry = TC_BE64,
                               .before_write = hook, .user = &r, .name = "l2" };
        uint8_t data[4096];
        size_t i_data, i_f1, i_h, i_rc, i_f2, i_l2, i_f3, i_l1, i_f4;

        ASSERT_OK(tc_budget_new(0, &b));
        l1 = table(b, io, 0, 4096, 4096, TC_BE64);
        ASSERT_OK(tc_table_new(b, io, &hp, &l2));
        rc = table(b, io, 128 * KiB, 64 * KiB, PAGE, TC_BE32);

        /* The data, not yet flushed. */
        memset(data, 0xab, sizeof data);
        ASSERT_OK(vdisk_io_pwrite(io, data, sizeof data, 2 * MiB));
        ASSERT_OK(tc_set(rc, 10, 1, 0));
        ASSERT_OK(tc_set(l2, 3, 2 * MiB, TC_AFTER_DATA));
        ASSERT_OK(tc_set(l1, 0, 64 * KiB, 0));
        ASSERT_OK(tc_page_get(l1, 0, &p1));
        ASSERT_OK(tc_page_get(l2, 0, &p2));
        ASSERT_OK(tc_page_get(rc, 0, &p3));
        ASSERT_OK(tc_page_depends(p1, p2));
        ASSERT_OK(tc_page_depends(p2, p3));
        ASSERT_OK(tc_page_depends(p2, p3));   /* twice is once */
        tc_page_put(p1);
        tc_page_put(p2);
        tc_page_put(p3);

        /* Flushing l1 alone writes what it waits for first. */
        ASSERT_OK(tc_table_flush(l1));
        i_data = find_op(&r, 'W', 2 * MiB, 0);
        i_rc = find_op(&r, 'W', 128 * KiB, 0);
        i_f1 = find_op(&r, 'F', 0, i_data);
        ASSERT(i_f1 > i_rc);                  /* rc alone in the first round */
        i_f2 = find_op(&r, 'F', 0, i_f1 + 1); /* the data barrier of l2 */
        i_h = find_op(&r, 'H', 0, i_f1);
        i_l2 = find_op(&r, 'W', 64 * KiB, 0);
        i_f3 = find_op(&r, 'F', 0, i_l2);
        i_l1 = find_op(&r, 'W', 0, 0);
        i_f4 = find_op(&r, 'F', 0, i_l1);
        ASSERT(i_data < i_f1 && i_f1 < i_f2 && i_f2 < i_h && i_h < i_l2 && i_l2 < i_f3 && i_f3 < i_l1 &&
               i_l1 < i_f4);
        ASSERT_EQ_U64(hook_calls, 1);
        ASSERT_EQ_U64(r.n, 9);   /* data, rc, F, F, H, l2, F, l1, F */
        ASSERT(!tc_table_is_dirty(l1) && !tc_table_is_dirty(l2) && !tc_table_is_dirty(rc));

        /* A clean page is no dependency; a cycle is refused at write-back. */
        ASSERT_OK(tc_set(l1, 1, 5, 0));
        ASSERT_OK(tc_set(l2, 4, 5, 0));
        ASSERT_OK(tc_page_get(l1, 0, &p1));
        ASSERT_OK(tc_page_get(l2, 0, &p2));
        ASSERT_ERR(tc_page_depends(p1, p1), -EDEADLK);
        ASSERT_OK(tc_page_depends(p1, p2));
        ASSERT_OK(tc_page_depends(p2, p1));
        ASSERT_ERR(tc_budget_flush(b), -EDEADLK);
        ASSERT(tc_table_is_dirty(l1) && tc_table_is_dirty(l2));
        /* Dropping l2 ends the dependency of l1 on it. */
        tc_page_put(p2);
        tc_page_put(p1);
        tc_table_free(l2);
        ASSERT_OK(tc_budget_flush(b));
        ASSERT(!tc_table_is_dirty(l1));

        tc_table_free(l1);
        tc_table_free(rc);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* Dirtying 4 MiB of tables in a 1 MiB budget writes back early, in order:
 * the data flush comes before the first table write; the hook ran before. */
static void test_early_writeback(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 8 * MiB);
        tc_budget *b;
        tc_table *t;
        tc_table_params p = { .offset = 1 * MiB, .size = 4 * MiB, .page_size = PAGE, .entry = TC_LE32,
                              .before_write = hook, .user = &r, .name = "map" };
        uint8_t data[512] = { 1 };
        size_t first_w, len;
        const uint8_t *f;

        ASSERT_OK(tc_budget_new(TC_BUDGET_MIN, &b));
        ASSERT_OK(tc_table_new(b, io, &p, &t));
        hook_calls = 0;
        for (uint64_t i = 0; i < 4 * MiB / 4; i += 97) {
                if (i % (97 * 64) == 0)
                        ASSERT_OK(vdisk_io_pwrite(io, data, sizeof data, 6 * MiB + i));
                ASSERT_OK(tc_set(t, i, (uint32_t) i ^ 0x5a5a5a5a, TC_AFTER_DATA));
                ASSERT(stats(b).held <= TC_BUDGET_MIN);
        }
        ASSERT(stats(b).early_writebacks > 0);
        ASSERT(stats(b).peak <= TC_BUDGET_MIN);
        ASSERT(hook_calls > 0);
        /* Before the first table write: a flush and the hook. */
        for (first_w = 0; first_w < r.n; first_w++)
                if (r.log[first_w].kind == 'W' && r.log[first_w].offset < 6 * MiB)
                        break;
        ASSERT(first_w < r.n);
        ASSERT(first_w >= 2 && r.log[first_w - 1].kind == 'H');
        {
                bool flushed = false;

                for (size_t i = 0; i < first_w; i++)
                        if (r.log[i].kind == 'F')
                                flushed = true;
                ASSERT(flushed);
        }
        ASSERT_OK(tc_table_flush(t));
        ASSERT(!tc_table_is_dirty(t));
        f = file_bytes(&r, &len);
        for (uint64_t i = 0; i < 4 * MiB / 4; i++) {
                uint64_t off = 1 * MiB + i * 4;
                uint32_t want = i % 97 == 0 ? (uint32_t) i ^ 0x5a5a5a5a :
                        get_le32((uint8_t[]) { pattern(off), pattern(off + 1), pattern(off + 2), pattern(off + 3) });

                if (get_le32(f + off) != want)
                        FAIL("entry %" PRIu64 ": %#x, expected %#x", i, get_le32(f + off), want);
        }
        tc_table_free(t);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* A failed write or flush leaves the pages dirty; the retry writes them. */
static void test_write_failure(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 1 * MiB);
        tc_budget *b;
        tc_table *t;
        uint8_t buf[4];

        ASSERT_OK(tc_budget_new(0, &b));
        t = table(b, io, 0, 256 * KiB, PAGE, TC_LE32);
        ASSERT_OK(tc_set(t, 1000, 0xdeadbeef, 0));
        ASSERT_OK(tc_set(t, 50000, 0xfeedface, 0));
        r.fail_writes = 1;
        ASSERT_ERR(tc_table_flush(t), -EIO);
        ASSERT(tc_table_is_dirty(t));
        r.fail_writes = 0;
        r.fail_flush = 1;
        ASSERT_ERR(tc_table_flush(t), -EIO);
        ASSERT(tc_table_is_dirty(t));
        r.fail_flush = 0;
        r.n = 0;
        ASSERT_OK(tc_table_flush(t));
        ASSERT(!tc_table_is_dirty(t));
        ASSERT_EQ_U64(r.n, 3);   /* both pages again, one flush */
        ASSERT_OK(vdisk_io_pread(r.inner, buf, 4, 4000));
        ASSERT_EQ_U64(get_le32(buf), 0xdeadbeef);
        ASSERT_OK(vdisk_io_pread(r.inner, buf, 4, 200000));
        ASSERT_EQ_U64(get_le32(buf), 0xfeedface);
        tc_table_free(t);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* Load errors are returned; tables past the end of the file are refused
 * unless the caller says they read as zeros. */
static void test_load_errors(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 100 * KiB);
        tc_budget *b;
        tc_table *t, *z;
        tc_table_params p = { .offset = 96 * KiB, .size = 64 * KiB, .page_size = 4096, .entry = TC_LE32,
                              .zero_past_eof = true, .name = "zeros" };
        uint64_t v;

        ASSERT_OK(tc_budget_new(0, &b));
        t = table(b, io, 64 * KiB, 64 * KiB, 4096, TC_LE32);
        ASSERT_OK(tc_get(t, 0, &v));                       /* held by the file */
        ASSERT_ERR(tc_get(t, 9 * 1024, &v), -EUCLEAN);     /* page 9: past the end */
        r.fail_reads = 1;
        ASSERT_ERR(tc_get(t, 1024, &v), -EIO);
        ASSERT_OK(tc_get(t, 0, &v));                       /* cached */
        r.fail_reads = 0;
        ASSERT_OK(tc_get(t, 1024, &v));
        ASSERT_OK(tc_table_new(b, io, &p, &z));
        ASSERT_OK(tc_get(z, 1023, &v));                    /* inside the file */
        ASSERT_EQ_U64(v, get_le32((uint8_t[]) { pattern(100 * KiB - 4), pattern(100 * KiB - 3),
                                                pattern(100 * KiB - 2), pattern(100 * KiB - 1) }));
        ASSERT_OK(tc_get(z, 1024, &v));
        ASSERT_EQ_U64(v, 0);
        ASSERT_OK(tc_get(z, 16383, &v));
        ASSERT_EQ_U64(v, 0);
        /* A table whose directory alone passes the budget. */
        {
                tc_budget *small;
                tc_table *huge;
                tc_table_params hp = { .offset = 0, .size = UINT64_C(1) << 40, .page_size = 512,
                                       .entry = TC_LE64, .name = "huge" };

                ASSERT_OK(tc_budget_new(TC_BUDGET_MIN, &small));
                ASSERT_ERR(tc_table_new(small, io, &hp, &huge), -E2BIG);
                /* the budget's message, quoted whole (not overwritten as it is formatted) */
                ASSERT(strstr(vdisk_last_error(), "512-byte pages: ") &&
                       strstr(vdisk_last_error(), "exceed the budget of 1048576 bytes"));
                ASSERT_EQ_U64(stats(small).held, 0);
                tc_budget_unref(small);
        }
        tc_table_free(t);
        tc_table_free(z);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* The file's size is asked once, not per page loaded; a table the file was
 * cut under (through its io) is refused past the new end as before, and one
 * that the io's own writes extended is read without asking. */
static void test_file_size(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 1 * MiB);
        uint8_t page[4096];
        tc_budget *b;
        tc_table *t;
        uint64_t v;

        ASSERT_OK(tc_budget_new(0, &b));
        t = table(b, io, 64 * KiB, 512 * KiB, 4096, TC_LE32);
        for (uint64_t i = 0; i < 128; i++)
                ASSERT_OK(tc_get(t, i * 1024, &v));
        ASSERT_EQ_U64(stats(b).misses, 128);
        ASSERT(r.sizes <= 1);
        tc_table_free(t);

        /* Cut at 128 KiB: the table's second page on are past the end. */
        ASSERT_OK(vdisk_io_truncate(io, 128 * KiB));
        t = table(b, io, 96 * KiB, 64 * KiB, 4096, TC_LE32);
        ASSERT_OK(tc_get(t, 0, &v));
        ASSERT_OK(tc_get(t, 7 * 1024, &v));                /* page 7 ends at 128 KiB */
        ASSERT_ERR(tc_get(t, 8 * 1024, &v), -EUCLEAN);
        ASSERT(strstr(vdisk_last_error(), "131072 bytes"));
        tc_table_free(t);

        /* Written on through the same io: covered, with no more questions. */
        memset(page, 0x5a, sizeof page);
        r.sizes = 0;
        for (uint64_t off = 128 * KiB; off < 192 * KiB; off += sizeof page)
                ASSERT_OK(vdisk_io_pwrite(io, page, sizeof page, off));
        t = table(b, io, 96 * KiB, 64 * KiB, 4096, TC_LE32);
        for (uint64_t i = 0; i < 16; i++)
                ASSERT_OK(tc_get(t, i * 1024, &v));
        ASSERT_EQ_U64(v, 0x5a5a5a5a);
        ASSERT_EQ_U64(r.sizes, 0);
        tc_table_free(t);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

static void test_resize(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 1 * MiB);
        tc_budget *b;
        tc_table *t;
        size_t len;
        const uint8_t *f;
        uint64_t v;

        ASSERT_OK(tc_budget_new(0, &b));
        /* 100 entries (400 bytes) at 4096, in 4 KiB pages. */
        t = table(b, io, 4096, 400, 4096, TC_LE32);
        ASSERT_OK(tc_table_resize(t, 4 * 3000, 0xffffffff));
        ASSERT_EQ_U64(tc_table_entries(t), 3000);
        ASSERT_OK(tc_get(t, 99, &v));
        ASSERT_EQ_U64(v, get_le32((uint8_t[]) { pattern(4096 + 396), pattern(4096 + 397), pattern(4096 + 398),
                                                pattern(4096 + 399) }));
        ASSERT_OK(tc_get(t, 100, &v));
        ASSERT_EQ_U64(v, 0xffffffff);
        ASSERT_OK(tc_get(t, 2999, &v));
        ASSERT_EQ_U64(v, 0xffffffff);
        r.n = 0;
        ASSERT_OK(tc_table_flush(t));
        f = file_bytes(&r, &len);
        /* Entry 100 up to the end of the last sector (12288 -> 12288). */
        for (uint64_t o = 400; o < 12288; o++)
                ASSERT(f[4096 + o] == 0xff);
        ASSERT(f[4096 + 399] == pattern(4096 + 399));
        ASSERT(f[4096 + 12288] == pattern(4096 + 12288));   /* nothing past the table */

        /* Shrink to 10 entries: the rest of its sector is filled, later bytes stay. */
        ASSERT_OK(tc_set(t, 5, 1, 0));
        ASSERT_OK(tc_set(t, 2000, 1, 0));   /* dropped with its page */
        ASSERT_OK(tc_table_resize(t, 40, 0));
        ASSERT_EQ_U64(tc_table_entries(t), 10);
        ASSERT_OK(tc_table_flush(t));
        f = file_bytes(&r, &len);
        ASSERT_EQ_U64(get_le32(f + 4096 + 20), 1);
        for (uint64_t o = 40; o < 512; o++)
                ASSERT(f[4096 + o] == 0);
        ASSERT(f[4096 + 512] == 0xff);
        ASSERT_EQ_U64(get_le32(f + 4096 + 8000), 0xffffffff);
        tc_table_free(t);
        tc_budget_unref(b);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

static int entry_fn(void *ctx, uint64_t i, uint64_t *ret) {
        *ret = i * 3;
        return i == *(uint64_t *) ctx ? vdisk_error(-EIO, "entry %" PRIu64 " unreadable", i) : 0;
}

static void test_write_entries(void) {
        rec r;
        vdisk_io *io = rec_io(&r, 0);
        uint64_t fail = UINT64_MAX, n = 300000;
        size_t len;
        const uint8_t *f;

        ASSERT_OK(tc_write_entries(io, 512, n, TC_BE32, 0xfffffffe, entry_fn, &fail));
        f = file_bytes(&r, &len);
        ASSERT_EQ_U64(len, 512 + ALIGN_UP(n * 4, 512));
        for (uint64_t i = 0; i < n; i++)
                ASSERT_EQ_U64(get_be32(f + 512 + i * 4), i * 3);
        for (uint64_t o = 512 + n * 4; o < len; o += 4)
                ASSERT_EQ_U64(get_be32(f + o), 0xfffffffe);
        fail = 70000;
        ASSERT_ERR(tc_write_entries(io, 512, n, TC_BE32, 0, entry_fn, &fail), -EIO);
        vdisk_io_unref(io);
        vdisk_io_unref(r.inner);
}

/* tc_find_other() finds the same entry as a walk with tc_get(), for every
 * entry kind, at unaligned starts and ends, across page boundaries, with the
 * differing entry anywhere (first, inside a word, last), and over a table
 * that starts at an odd file offset (the word compare must not assume the
 * page data aligned to the entry pattern beyond the entry size). */
static void test_find_other(void) {
        static const tc_entry kinds[] = { TC_LE32, TC_BE32, TC_LE64, TC_BE64 };
        rng g;

        rng_seed(&g, 13);
        for (size_t k = 0; k < ELEMENTSOF(kinds); k++) {
                rec r;
                vdisk_io *io = rec_io(&r, 64 * KiB);
                unsigned es = tc_entry_size(kinds[k]);
                uint64_t fill = es == 4 ? 0xfffffffe : UINT64_C(0xfffffffffffffffe), n, got;
                tc_budget *b;
                tc_table *t;

                ASSERT_OK(tc_budget_new(0, &b));
                t = table(b, io, 1028, 16 * KiB, 512, kinds[k]);
                n = tc_table_entries(t);
                for (uint64_t i = 0; i < n; i++)
                        ASSERT_OK(tc_set(t, i, fill, 0));
                ASSERT_OK(tc_find_other(t, 0, n, fill, &got));
                ASSERT_EQ_U64(got, n);
                ASSERT_OK(tc_find_other(t, 7, 7, fill, &got));
                ASSERT_EQ_U64(got, 7);

                for (unsigned round = 0; round < 300; round++) {
                        uint64_t at = round < 3 ? (uint64_t[]) { 0, n - 1, 512 / es }[round] : rng_below(&g, n);
                        uint64_t from = rng_below(&g, n), to = from + rng_below(&g, n - from + 1), want = to;

                        ASSERT_OK(tc_set(t, at, round & 1 ? 0 : fill - 1, 0));
                        for (uint64_t i = from; i < to; i++) {
                                uint64_t v;

                                ASSERT_OK(tc_get(t, i, &v));
                                if (v != fill) {
                                        want = i;
                                        break;
                                }
                        }
                        ASSERT_OK(tc_find_other(t, from, to, fill, &got));
                        test_set_context("kind %zu, entry %" PRIu64 ", [%" PRIu64 ", %" PRIu64 ")", k, at, from,
                                         to);
                        ASSERT_EQ_U64(got, want);
                        /* From the changed entry itself, and just after it. */
                        ASSERT_OK(tc_find_other(t, at, n, fill, &got));
                        ASSERT_EQ_U64(got, at);
                        ASSERT_OK(tc_set(t, at, fill, 0));
                        ASSERT_OK(tc_find_other(t, at, n, fill, &got));
                        ASSERT_EQ_U64(got, n);
                }
                test_set_context("%s", "");
                tc_table_free(t);
                tc_budget_unref(b);
                vdisk_io_unref(io);
                vdisk_io_unref(r.inner);
        }
}

int main(void) {
        test_entries();
        test_lru();
        test_budget_random();
        test_pinning();
        test_dirty_sectors();
        test_order();
        test_early_writeback();
        test_write_failure();
        test_load_errors();
        test_file_size();
        test_resize();
        test_write_entries();
        test_find_other();
        printf("ok\n");
        return 0;
}
