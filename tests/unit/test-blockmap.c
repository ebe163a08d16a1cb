/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of lib/fmt/blockmap and lib/fmt/hostalloc: entry encodings,
 * sizing limits, loading only what the file holds, dirty-sector tracking and
 * coalesced write-back, resize, relocation, and freshness of appended host
 * space. Uses the library's internal headers and the memory and fault ios. */
#include "fmt/blockmap.h"
#include "fmt/hostalloc.h"
#include "io/io.h"
#include "tests.h"
#include "util/util.h"

static vdisk_io *memory_io(const void *data, size_t len) {
        vdisk_io *io;

        ASSERT_OK(vdisk_io_new_memory(data, len, "table", 0, &io));
        return io;
}

/* A fault io that never fails, over a memory io: it counts pwrites. */
static vdisk_io *counting_io(vdisk_io *inner) {
        vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_NONE };
        vdisk_io *io;

        ASSERT_OK(vdisk_io_new_fault(inner, &f, &io));
        return io;
}

static const uint8_t *memory_bytes(vdisk_io *io, size_t *ret_len) {
        const void *p;

        ASSERT_OK(vdisk_io_memory_data(io, &p, ret_len));
        return p;
}

static void test_table_size(void) {
        uint64_t n;

        ASSERT_OK(blockmap_table_size(0, BLOCKMAP_LE32, &n));
        ASSERT(n == 0);
        ASSERT_OK(blockmap_table_size(1, BLOCKMAP_LE32, &n));
        ASSERT(n == 512);
        ASSERT_OK(blockmap_table_size(128, BLOCKMAP_BE32, &n));
        ASSERT(n == 512);
        ASSERT_OK(blockmap_table_size(129, BLOCKMAP_LE32, &n));
        ASSERT(n == 1024);
        ASSERT_OK(blockmap_table_size(65, BLOCKMAP_LE64, &n));
        ASSERT(n == 1024);
        ASSERT_OK(blockmap_table_size(16 * MiB, BLOCKMAP_LE32, &n));
        ASSERT(n == 64 * MiB);
        ASSERT_ERR(blockmap_table_size(16 * MiB + 1, BLOCKMAP_LE32, &n), -EFBIG);
        ASSERT_ERR(blockmap_table_size(8 * MiB + 1, BLOCKMAP_BE64, &n), -EFBIG);
        ASSERT_ERR(blockmap_table_size(UINT64_MAX / 2, BLOCKMAP_LE64, &n), -EFBIG);
}

static void test_encodings(void) {
        static const struct {
                blockmap_format format;
                uint64_t value;
                uint8_t bytes[8];
        } cases[] = {
                { BLOCKMAP_LE32, 0x11223344, { 0x44, 0x33, 0x22, 0x11 } },
                { BLOCKMAP_BE32, 0x11223344, { 0x11, 0x22, 0x33, 0x44 } },
                { BLOCKMAP_LE64, UINT64_C(0x1122334455667788),
                  { 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11 } },
                { BLOCKMAP_BE64, UINT64_C(0x1122334455667788),
                  { 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88 } },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                unsigned es = blockmap_entry_size(cases[i].format);
                blockmap bm = {};

                ASSERT_OK(blockmap_init(&bm, 0, 10, cases[i].format, 0));
                blockmap_set(&bm, 3, cases[i].value);
                ASSERT(blockmap_get(&bm, 3) == cases[i].value);
                ASSERT(memcmp(bm.raw + 3 * es, cases[i].bytes, es) == 0);
                ASSERT(blockmap_get(&bm, 2) == 0 && blockmap_get(&bm, 4) == 0);
                blockmap_done(&bm);
        }
}

static void test_init_and_write(void) {
        vdisk_io *mem = memory_io(NULL, 0), *io = counting_io(mem);
        const uint8_t *p;
        blockmap bm = {};
        size_t len;

        /* 200 entries: 800 bytes, two sectors; the padding takes the fill too. */
        ASSERT_OK(blockmap_init(&bm, 1024, 200, BLOCKMAP_LE32, 0xFFFFFFFF));
        ASSERT(bm.raw_size == 1024 && blockmap_is_dirty(&bm));
        ASSERT(blockmap_get(&bm, 0) == 0xFFFFFFFF && blockmap_get(&bm, 199) == 0xFFFFFFFF);

        ASSERT_OK(blockmap_write_dirty(&bm, io));
        ASSERT(vdisk_io_fault_writes(io) == 1);     /* both sectors in one pwrite */
        ASSERT(!blockmap_is_dirty(&bm));
        p = memory_bytes(mem, &len);
        ASSERT(len == 2048);
        for (size_t i = 1024; i < 2048; i++)
                ASSERT(p[i] == 0xFF);

        /* Nothing dirty: no write at all. */
        ASSERT_OK(blockmap_write_dirty(&bm, io));
        ASSERT(vdisk_io_fault_writes(io) == 1);

        /* Setting an unchanged value dirties nothing. */
        blockmap_set(&bm, 5, 0xFFFFFFFF);
        ASSERT(!blockmap_is_dirty(&bm));

        blockmap_done(&bm);
        blockmap_done(&bm);  /* twice is fine */
        vdisk_io_unref(io);
        vdisk_io_unref(mem);
}

static void test_dirty_coalescing(void) {
        vdisk_io *mem = memory_io(NULL, 0), *io = counting_io(mem);
        const uint8_t *p;
        blockmap bm = {};
        uint64_t w;
        size_t len;

        /* 8 sectors of 128 LE32 entries at offset 512. */
        ASSERT_OK(blockmap_init(&bm, 512, 1024, BLOCKMAP_LE32, 0));
        ASSERT_OK(blockmap_write_dirty(&bm, io));
        w = vdisk_io_fault_writes(io);

        blockmap_set(&bm, 0, 1);        /* sector 0 */
        blockmap_set(&bm, 130, 2);      /* sector 1 */
        blockmap_set(&bm, 127, 3);      /* sector 0 again */
        blockmap_set(&bm, 3 * 128, 4);  /* sector 3 */
        blockmap_set(&bm, 1023, 5);     /* sector 7 */
        ASSERT(bm.n_dirty == 4);

        ASSERT_OK(blockmap_write_dirty(&bm, io));
        ASSERT(vdisk_io_fault_writes(io) == w + 3);   /* {0,1}, {3}, {7} */
        ASSERT(!blockmap_is_dirty(&bm));

        p = memory_bytes(mem, &len);
        ASSERT(len == 512 + 4096);
        ASSERT(get_le32(p + 512) == 1);
        ASSERT(get_le32(p + 512 + 127 * 4) == 3);
        ASSERT(get_le32(p + 512 + 130 * 4) == 2);
        ASSERT(get_le32(p + 512 + 384 * 4) == 4);
        ASSERT(get_le32(p + 512 + 1023 * 4) == 5);

        blockmap_done(&bm);
        vdisk_io_unref(io);
        vdisk_io_unref(mem);
}

static void test_load(void) {
        uint8_t file[4096];
        vdisk_io *io;
        blockmap bm = {};

        memset(file, 0xAB, sizeof file);
        for (unsigned i = 0; i < 100; i++)
                put_be32(file + 512 + 4 * i, i * 3);

        /* 100 BE32 entries at 512: the padding of the sector is kept. */
        io = memory_io(file, sizeof file);
        ASSERT_OK(blockmap_load(&bm, io, 512, 100, BLOCKMAP_BE32));
        ASSERT(!blockmap_is_dirty(&bm));
        for (unsigned i = 0; i < 100; i++)
                ASSERT(blockmap_get(&bm, i) == i * 3);
        ASSERT(bm.raw[400] == 0xAB && bm.raw[511] == 0xAB);
        blockmap_done(&bm);

        /* The file ends right after the entries: the padding reads zeros. */
        vdisk_io_unref(io);
        io = memory_io(file, 512 + 400);
        ASSERT_OK(blockmap_load(&bm, io, 512, 100, BLOCKMAP_BE32));
        ASSERT(blockmap_get(&bm, 99) == 297);
        ASSERT(bm.raw[400] == 0 && bm.raw[511] == 0);
        blockmap_done(&bm);

        /* One entry past the end of the file: corrupt, nothing allocated. */
        ASSERT_ERR(blockmap_load(&bm, io, 512, 101, BLOCKMAP_BE32), -EUCLEAN);
        ASSERT(bm.raw == NULL);
        ASSERT_ERR(blockmap_load(&bm, io, UINT64_MAX - 2, 1, BLOCKMAP_BE32), -EUCLEAN);
        /* Too big to hold, whatever the file says. */
        ASSERT_ERR(blockmap_load(&bm, io, 0, UINT64_C(1) << 40, BLOCKMAP_LE32), -EFBIG);

        /* An empty table. */
        ASSERT_OK(blockmap_load(&bm, io, 512, 0, BLOCKMAP_LE32));
        ASSERT(bm.n == 0 && bm.raw_size == 0 && !blockmap_is_dirty(&bm));
        blockmap_done(&bm);
        vdisk_io_unref(io);
}

static void test_resize_and_move(void) {
        vdisk_io *mem = memory_io(NULL, 0), *io = counting_io(mem);
        const uint8_t *p;
        blockmap bm = {}, copy = {};
        size_t len;

        ASSERT_OK(blockmap_init(&bm, 0, 100, BLOCKMAP_LE32, 0xFFFFFFFF));
        for (unsigned i = 0; i < 100; i++)
                blockmap_set(&bm, i, i);
        ASSERT_OK(blockmap_write_dirty(&bm, io));

        /* Grow into a second sector: the new entries take the fill. */
        ASSERT_OK(blockmap_resize(&bm, 300, 0xFFFFFFFE));
        ASSERT(bm.n == 300 && bm.raw_size == 1536);
        ASSERT(blockmap_get(&bm, 99) == 99 && blockmap_get(&bm, 100) == 0xFFFFFFFE &&
               blockmap_get(&bm, 299) == 0xFFFFFFFE);
        ASSERT(bm.n_dirty == 3);  /* sector 0 (new entries 100..127) and the two new ones */
        ASSERT_OK(blockmap_write_dirty(&bm, io));
        p = memory_bytes(mem, &len);
        ASSERT(len == 1536 && get_le32(p + 4 * 200) == 0xFFFFFFFE && get_le32(p + 4 * 50) == 50);

        /* Shrink back: vacated bytes of the last sector take the fill. */
        ASSERT_OK(blockmap_resize(&bm, 50, 0xFFFFFFFF));
        ASSERT(bm.n == 50 && bm.raw_size == 512 && bm.n_dirty == 1);
        ASSERT(get_le32(bm.raw + 4 * 60) == 0xFFFFFFFF);
        ASSERT_OK(blockmap_write_dirty(&bm, io));
        p = memory_bytes(mem, &len);
        ASSERT(get_le32(p + 4 * 49) == 49 && get_le32(p + 4 * 60) == 0xFFFFFFFF);
        /* The sectors past the new end are not written. */
        ASSERT(get_le32(p + 4 * 200) == 0xFFFFFFFE);

        /* Grow again after a shrink: no stale dirty bits. */
        ASSERT_OK(blockmap_resize(&bm, 200, 7));
        ASSERT(bm.n_dirty == 2);
        ASSERT_OK(blockmap_write_dirty(&bm, io));
        ASSERT(!blockmap_is_dirty(&bm));

        /* Copy, then move the copy: the original stays where it was. */
        ASSERT_OK(blockmap_copy(&bm, &copy));
        blockmap_set_offset(&copy, 4096);
        ASSERT(copy.n_dirty == 2 && !blockmap_is_dirty(&bm));
        blockmap_set(&copy, 0, 1234);
        ASSERT(blockmap_get(&bm, 0) == 0);
        ASSERT_OK(blockmap_write_dirty(&copy, io));
        p = memory_bytes(mem, &len);
        ASSERT(len == 4096 + 1024 && get_le32(p + 4096) == 1234 && get_le32(p + 4096 + 4 * 150) == 7);
        ASSERT(get_le32(p) == 0);

        blockmap_done(&copy);
        blockmap_done(&bm);
        vdisk_io_unref(io);
        vdisk_io_unref(mem);
}

static void test_write_failure(void) {
        vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_EIO, .after = 1 };
        vdisk_io *mem = memory_io(NULL, 0), *bad, *good;
        blockmap bm = {};

        ASSERT_OK(vdisk_io_new_fault(mem, &f, &bad));
        ASSERT_OK(blockmap_init(&bm, 0, 1024, BLOCKMAP_LE32, 0));
        ASSERT_OK(blockmap_write_dirty(&bm, bad));         /* write 0 succeeds */
        blockmap_set(&bm, 0, 1);
        blockmap_set(&bm, 600, 2);
        ASSERT(blockmap_write_dirty(&bm, bad) == -EIO);   /* write 1 fails */
        ASSERT(bm.n_dirty == 2);                          /* nothing lost */

        good = counting_io(mem);
        ASSERT_OK(blockmap_write_dirty(&bm, good));
        ASSERT(!blockmap_is_dirty(&bm) && vdisk_io_fault_writes(good) == 2);

        blockmap_done(&bm);
        vdisk_io_unref(good);
        vdisk_io_unref(bad);
        vdisk_io_unref(mem);
}

static void test_hostalloc(void) {
        hostalloc h;
        uint64_t off;
        int fresh;

        /* next rounds up; the file ends at 10000. */
        hostalloc_init(&h, 9000, 10000, 512);
        ASSERT(hostalloc_next(&h) == 9216);

        /* Straddles the old end: not fresh; the next one is. */
        ASSERT_OK(hostalloc_alloc(&h, 1000, UINT64_MAX, &off, &fresh));
        ASSERT(off == 9216 && !fresh && hostalloc_next(&h) == 10240);
        ASSERT_OK(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh));
        ASSERT(off == 10240 && fresh);
        ASSERT_OK(hostalloc_alloc(&h, 512, UINT64_MAX, &off, NULL));
        ASSERT(off == 14336);

        /* Rewinding hands out used space again: never fresh. */
        hostalloc_rewind(&h, 10240);
        ASSERT_OK(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh));
        ASSERT(off == 10240 && !fresh);

        /* After truncating to 10240, space from there is fresh again. */
        hostalloc_truncated(&h, 10240);
        hostalloc_rewind(&h, 10240);
        ASSERT(hostalloc_is_fresh(&h, 10240));
        ASSERT_OK(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh));
        ASSERT(off == 10240 && fresh);

        /* Space written by other means stops being fresh. */
        hostalloc_note_used(&h, 20000, 1000);
        ASSERT(!hostalloc_is_fresh(&h, 20480) && hostalloc_is_fresh(&h, 21000));
        ASSERT_OK(hostalloc_alloc(&h, 512, UINT64_MAX, &off, &fresh));
        ASSERT(off == 14336 && !fresh);

        /* A limit (a format's 32-bit offsets, say) is -EFBIG, and so is overflow. */
        ASSERT_ERR(hostalloc_alloc(&h, 1 << 20, 15000, &off, &fresh), -EFBIG);
        ASSERT(hostalloc_next(&h) == 14848);
        hostalloc_rewind(&h, UINT64_MAX - 1000);
        ASSERT_ERR(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh), -EFBIG);
}

int main(void) {
        test_table_size();
        test_encodings();
        test_init_and_write();
        test_dirty_coalescing();
        test_load();
        test_resize_and_move();
        test_write_failure();
        test_hostalloc();
        printf("ok\n");
        return 0;
}
