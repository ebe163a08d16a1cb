/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of lib/fmt/compact: how fmt_scan combines the verdicts of a
 * unit's pieces, and fmt_pack's plan (the highest units into the lowest
 * holes that hold a whole unit, around fixed spans, never below the floor),
 * its copies and repoints, the cut point, overlapping units refused, and a
 * cancel between batches (the top batch moved first, the cut point then). */
#include "fmt/compact.h"
#include "tests.h"
#include "util/util.h"

/* ---- scan */

typedef struct script {
        compact_verdict v[8];
        unsigned calls;
} script;

static int scripted(void *ctx, uint64_t offset, const void *data, size_t len, compact_verdict *ret) {
        script *s = ctx;

        (void) offset;
        (void) data;
        (void) len;
        ASSERT(s->calls < 8);
        *ret = s->v[s->calls++];
        return 0;
}

/* Four pieces of 512 bytes (buf_size 512) of `data`; the verdict. */
static compact_verdict scan4(script *s, vdisk_io *io) {
        uint8_t buf[512];
        fmt_scan sc = { .fn = scripted, .ctx = s, .buf = buf, .buf_size = sizeof buf };

        s->calls = 0;
        fmt_scan_begin(&sc);
        ASSERT_OK(fmt_scan_piece(&sc, io, 0, 0, 2048));
        return fmt_scan_verdict(&sc);
}

static void test_scan(void) {
        vdisk_io *zeros, *data;
        uint8_t d[2048];
        script s = {};

        memset(d, 0x5a, sizeof d);
        ASSERT_OK(vdisk_io_new_memory(NULL, 0, "zeros", 0, &zeros));
        ASSERT_OK(vdisk_io_pwrite(zeros, (uint8_t[2048]) {}, 2048, 0));
        ASSERT_OK(vdisk_io_new_memory(d, sizeof d, "data", 0, &data));

        /* every piece equals what is below: UNALLOC, whatever the data */
        s = (script) { .v = { COMPACT_UNALLOC, COMPACT_UNALLOC, COMPACT_UNALLOC, COMPACT_UNALLOC } };
        ASSERT(scan4(&s, data) == COMPACT_UNALLOC && s.calls == 4);
        /* zeros, some pieces over non-zero parent data: ZERO */
        s = (script) { .v = { COMPACT_UNALLOC, COMPACT_ZERO, COMPACT_UNALLOC, COMPACT_ZERO } };
        ASSERT(scan4(&s, zeros) == COMPACT_ZERO && s.calls == 4);
        /* a piece equal to the parent's non-zero data next to a zero piece: KEEP */
        s = (script) { .v = { COMPACT_UNALLOC, COMPACT_ZERO, COMPACT_UNALLOC, COMPACT_UNALLOC } };
        ASSERT(scan4(&s, data) == COMPACT_KEEP);
        /* KEEP stops the scan of the unit */
        s = (script) { .v = { COMPACT_UNALLOC, COMPACT_KEEP, COMPACT_UNALLOC, COMPACT_UNALLOC } };
        ASSERT(scan4(&s, data) == COMPACT_KEEP && s.calls == 2);

        vdisk_io_unref(zeros);
        vdisk_io_unref(data);
}

/* ---- pack */

#define U 4096u

typedef struct table {
        uint64_t host[16];      /* by key */
        unsigned repoints, commits, pending;
        uint64_t last_to;
} table;

static int t_repoint(void *user, uint64_t key, uint64_t from, uint64_t to) {
        table *t = user;

        ASSERT(key < 16 && t->host[key] == from);
        t->host[key] = to;
        t->repoints++;
        t->pending++;
        return 0;
}

static int t_commit(void *user) {
        table *t = user;

        ASSERT(t->pending > 0);
        t->pending = 0;
        t->commits++;
        return 0;
}

/* floor 4096; a fixed table at [12288, 14336); units (key = slot) in slots
 * 2, 5, 6, 8, 9 of 4 KiB, each filled with its key. */
static vdisk_io *layout(table *t, fmt_unit *units, size_t *n) {
        static const unsigned slots[] = { 2, 5, 6, 8, 9 };
        uint8_t buf[U];
        vdisk_io *io;

        memset(t, 0, sizeof *t);
        ASSERT_OK(vdisk_io_new_memory(NULL, 0, "pack", 0, &io));
        ASSERT_OK(vdisk_io_pwrite(io, (uint8_t[U]) {}, U, 9 * U));     /* the file: 10 slots */
        *n = 0;
        for (size_t i = ELEMENTSOF(slots); i-- > 0;) {                 /* given out of order */
                memset(buf, (int) slots[i], U);
                ASSERT_OK(vdisk_io_pwrite(io, buf, U, slots[i] * U));
                t->host[slots[i]] = slots[i] * U;
                units[(*n)++] = (fmt_unit) { .key = slots[i], .host = slots[i] * U };
        }
        return io;
}

static void assert_holds(vdisk_io *io, uint64_t host, unsigned key) {
        uint8_t buf[U], want[U];

        memset(want, (int) key, U);
        ASSERT_OK(vdisk_io_pread(io, buf, U, host));
        if (memcmp(buf, want, U) != 0)
                FAIL("unit %u at %" PRIu64 " does not hold its data", key, host);
}

static void test_pack(void) {
        static const fmt_span fixed[] = { { .start = 3 * U, .len = 2048 }, { .start = 0, .len = 512 } };
        fmt_unit units[8];
        uint64_t end = 0, moves = 0;
        size_t n;
        table t;
        vdisk_io *io = layout(&t, units, &n);
        fmt_pack pk = {
                .io = io, .unit = U, .floor = U, .units = units, .n_units = n,
                .fixed = fixed, .n_fixed = ELEMENTSOF(fixed),
                .repoint = t_repoint, .commit = t_commit, .user = &t,
        };

        /* Holes: slot 1; [14336, 20480) after the table (one unit, not
         * slot-aligned); slot 7 lies above every unit that could move into
         * it. So units 8 and 9 move, 8 into slot 1 and 9 after the table. */
        ASSERT_OK(fmt_pack_count(&pk, &moves));
        ASSERT_EQ_U64(moves, 2);
        ASSERT_OK(fmt_pack_run(&pk, &end));
        ASSERT_EQ_U64(t.repoints, 2);
        ASSERT_EQ_U64(t.commits, 1);
        ASSERT_EQ_U64(t.host[8], U);
        ASSERT_EQ_U64(t.host[9], 3 * U + 2048);
        ASSERT_EQ_U64(t.host[2], 2 * U);
        ASSERT_EQ_U64(t.host[5], 5 * U);
        ASSERT_EQ_U64(t.host[6], 6 * U);
        for (unsigned k = 0; k < 16; k++)
                if (t.host[k])
                        assert_holds(io, t.host[k], k);
        /* the file may end after slot 6 */
        ASSERT_EQ_U64(end, 7 * U);
        /* the table was not touched */
        {
                uint8_t b[2048], z[2048] = {};

                ASSERT_OK(vdisk_io_pread(io, b, sizeof b, 3 * U));
                ASSERT(memcmp(b, z, sizeof b) == 0);
        }
        /* packed: a second plan moves nothing */
        for (size_t i = 0; i < n; i++)
                units[i].host = t.host[units[i].key];
        ASSERT_OK(fmt_pack_count(&pk, &moves));
        ASSERT_EQ_U64(moves, 0);
        vdisk_io_unref(io);

        /* overlapping units are refused before anything moves */
        io = layout(&t, units, &n);
        pk.io = io;
        units[0].host = units[1].host + 512;
        ASSERT_ERR(fmt_pack_run(&pk, &end), -EUCLEAN);
        ASSERT_EQ_U64(t.repoints, 0);
        vdisk_io_unref(io);
}

static void test_pack_cancel(void) {
        fmt_unit units[8];
        uint64_t end = 0;
        size_t n;
        table t;
        vdisk_io *io = layout(&t, units, &n);
        vdisk_progress *p = NULL;
        fmt_pack pk = {
                .io = io, .unit = U, .floor = U, .units = units, .n_units = n, .batch = 1,
                .repoint = t_repoint, .commit = t_commit, .user = &t, .cancellable = true,
        };

        /* Without the fixed table: holes in slots 1, 3, 4; units 9, 8, 6
         * move (the highest first, one a batch). Cancelled from the start:
         * the first batch completes (unit 9 into slot 4, the third hole),
         * then the call stops. */
        ASSERT_OK(vdisk_progress_new(NULL, NULL, &p));
        vdisk_progress_cancel(p);
        pk.p = p;
        ASSERT_ERR(fmt_pack_run(&pk, &end), -ECANCELED);
        ASSERT_EQ_U64(t.repoints, 1);
        ASSERT_EQ_U64(t.commits, 1);
        ASSERT_EQ_U64(t.host[9], 4 * U);
        assert_holds(io, 4 * U, 9);
        ASSERT_EQ_U64(t.host[8], 8 * U);
        /* unit 8 still ends the file's used part: slot 9 may go */
        ASSERT_EQ_U64(end, 9 * U);
        vdisk_progress_free(p);

        /* not cancellable: the progress only reports, the pack completes */
        for (size_t i = 0; i < n; i++)
                units[i].host = t.host[units[i].key];
        ASSERT_OK(vdisk_progress_new(NULL, NULL, &p));
        vdisk_progress_cancel(p);
        pk.p = p;
        pk.cancellable = false;
        /* holes 1 and 3: units 6 and 8 move, the lower into the lower */
        ASSERT_OK(fmt_pack_run(&pk, &end));
        ASSERT_EQ_U64(t.host[6], 1 * U);
        ASSERT_EQ_U64(t.host[8], 3 * U);
        ASSERT_EQ_U64(end, 6 * U);
        for (unsigned k = 0; k < 16; k++)
                if (t.host[k])
                        assert_holds(io, t.host[k], k);
        vdisk_progress_free(p);
        vdisk_io_unref(io);
}

int main(void) {
        test_scan();
        test_pack();
        test_pack_cancel();
        printf("test-fmt-compact: all passed\n");
        return 0;
}
