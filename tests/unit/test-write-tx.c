/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Suite `unit`: writes as transactions (lib/core/rw.c, backend.h).
 *
 * A VDI diff over a base full of 0xAB. Writes into new blocks of the diff go
 * through a fault io:
 *   - a 4 KiB write into a new 1 MiB block costs exactly one pwrite (the
 *     block is assembled in memory from the parent's data and the new bytes);
 *   - a write that fails at its Nth pwrite, for every N, leaves no table
 *     entry behind: the disk reads every sector as old or new data (never
 *     the zeros of a half-filled block), and neither a later flush nor the
 *     close persists an entry for the failed block; a retry then completes.
 */
#include "tests.h"

#define SIZE (8 * MiB)
#define BLOCK MiB

static vdisk_io *make_base(void) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("base.vdi", NULL, 0);
        uint8_t *buf = malloc(SIZE);

        ASSERT(buf);
        memset(buf, 0xAB, SIZE);
        ASSERT_OK(vdisk_disk_create_base(d, io, "vdi", SIZE, NULL));
        ASSERT_OK(vdisk_disk_write(d, buf, SIZE, 0));
        ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        free(buf);
        return io;
}

/* An empty diff of `base`, as the bytes of a memory io. */
static vdisk_io *make_diff(vdisk_io *base) {
        vdisk_disk *d = disk_new();
        vdisk_io *io = mem_io("diff.vdi", NULL, 0);

        ASSERT_OK(vdisk_disk_open(d, base, "vdi", VDISK_OPEN_READONLY));
        ASSERT_OK(vdisk_disk_create_diff(d, io, "vdi", NULL));
        ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        return io;
}

static vdisk_disk *open_chain(vdisk_io *base, vdisk_io *top) {
        vdisk_disk *d = disk_new();

        ASSERT_OK(vdisk_disk_open(d, base, "vdi", VDISK_OPEN_READONLY));
        ASSERT_OK(vdisk_disk_open(d, top, "vdi", 0));
        return d;
}

static vdisk_io *fault_io(vdisk_io *inner, uint64_t after) {
        vdisk_fault f = { .size = sizeof f, .kind = VDISK_FAULT_EIO, .after = after };
        vdisk_io *io = NULL;

        ASSERT_OK(vdisk_io_new_fault(inner, &f, &io));
        return io;
}

static void test_one_write_per_small_write(vdisk_io *base) {
        vdisk_io *diff = make_diff(base);
        vdisk_io *fio = fault_io(diff, UINT64_MAX);
        vdisk_disk *d = open_chain(base, fio);
        uint8_t data[4096], *all;
        uint64_t before, size;

        memset(data, 0x5C, sizeof data);
        /* Renewing the modification UUID writes nothing until the flush. */
        before = vdisk_io_fault_writes(fio);
        ASSERT_OK(vdisk_disk_write(d, data, sizeof data, 3 * BLOCK + 100 * KiB));
        ASSERT_EQ_U64(vdisk_io_fault_writes(fio) - before, 1);

        all = disk_read_all(d, &size);
        for (uint64_t i = 0; i < size; i++) {
                bool inside = i >= 3 * BLOCK + 100 * KiB && i < 3 * BLOCK + 100 * KiB + sizeof data;
                if (all[i] != (inside ? 0x5C : 0xAB))
                        FAIL("byte %" PRIu64 " reads %#x", i, all[i]);
        }
        free(all);
        ASSERT_OK(vdisk_disk_flush(d));
        vdisk_disk_unref(d);
        vdisk_io_unref(fio);
        vdisk_io_unref(diff);
}

/* Every 512-byte sector of `got` equals `old` or `new`, and the sectors
 * outside [lo, hi) equal `old`. */
static void assert_old_or_new(const uint8_t *got, uint8_t old, uint8_t new, uint64_t lo, uint64_t hi) {
        for (uint64_t s = 0; s < SIZE; s += 512) {
                bool is_old = true, is_new = s >= lo && s < hi;

                for (unsigned i = 0; i < 512; i++) {
                        is_old = is_old && got[s + i] == old;
                        is_new = is_new && got[s + i] == new;
                }
                if (!is_old && !is_new)
                        FAIL("sector at %" PRIu64 " holds neither the old nor the new data (byte 0: %#x)",
                             s, got[s]);
        }
}

static void test_failed_write_leaves_no_entry(vdisk_io *base) {
        /* From 0.5 MiB to 3.5 MiB: a partial block, two whole ones and a partial one. */
        const uint64_t lo = BLOCK / 2, hi = 3 * BLOCK + BLOCK / 2;
        uint8_t *data = malloc(hi - lo);
        uint64_t writes;

        ASSERT(data);
        memset(data, 0x5C, hi - lo);

        /* How many pwrites the write takes without a fault. */
        {
                vdisk_io *diff = make_diff(base);
                vdisk_io *fio = fault_io(diff, UINT64_MAX);
                vdisk_disk *d = open_chain(base, fio);
                uint64_t before = vdisk_io_fault_writes(fio);

                ASSERT_OK(vdisk_disk_write(d, data, hi - lo, lo));
                writes = vdisk_io_fault_writes(fio) - before;
                ASSERT(writes >= 4);
                vdisk_disk_unref(d);
                vdisk_io_unref(fio);
                vdisk_io_unref(diff);
        }

        for (uint64_t n = 0; n < writes; n++) {
                vdisk_io *diff = make_diff(base);
                vdisk_io *fio = fault_io(diff, vdisk_io_fault_writes(diff) + n);
                vdisk_disk *d = open_chain(base, fio);
                uint64_t size;
                uint8_t *all;
                int r;

                test_set_context("pwrite %" PRIu64 " of %" PRIu64 " fails", n, writes);
                r = vdisk_disk_write(d, data, hi - lo, lo);
                ASSERT(r == -EIO);
                all = disk_read_all(d, &size);
                assert_old_or_new(all, 0xAB, 0x5C, lo, hi);
                free(all);
                /* Neither the flush nor the close may persist a half-filled block. */
                (void) vdisk_disk_flush(d);
                vdisk_disk_unref(d);
                vdisk_io_unref(fio);

                d = open_chain(base, diff);
                all = disk_read_all(d, &size);
                assert_old_or_new(all, 0xAB, 0x5C, lo, hi);
                free(all);
                (void) CHECK_IMAGE_CLEAN(d, 1);
                /* The retry completes and reads as intended. */
                ASSERT_OK(vdisk_disk_write(d, data, hi - lo, lo));
                ASSERT_OK(vdisk_disk_flush(d));
                all = disk_read_all(d, &size);
                assert_old_or_new(all, 0xAB, 0x5C, lo, hi);
                for (uint64_t i = lo; i < hi; i++)
                        if (all[i] != 0x5C)
                                FAIL("after the retry, byte %" PRIu64 " reads %#x", i, all[i]);
                free(all);
                (void) CHECK_IMAGE_CLEAN(d, 1);
                vdisk_disk_unref(d);
                vdisk_io_unref(diff);
        }
        test_set_context("%s", "");
        free(data);
}

int main(void) {
        vdisk_io *base = make_base();

        test_one_write_per_small_write(base);
        test_failed_write_leaves_no_entry(base);
        vdisk_io_unref(base);
        printf("write-tx: ok\n");
        return 0;
}
