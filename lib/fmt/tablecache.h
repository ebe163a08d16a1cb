/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/tablecache: on-disk tables (VDI block maps, VHD/VHDX BATs, qcow2
 * L1/L2 and refcount tables, VMDK grain tables) held as fixed-size pages
 * under one memory budget per disk.
 *
 *   tc_budget   one per vdisk_disk (the whole chain): a byte limit, the LRU
 *               of every page of every table under it, the statistics.
 *               Reference counted: the disk and each image hold one.
 *   tc_table    one table of one file: where it is (io, offset, bytes), its
 *               page size (a power of two, >= 512) and its entry format
 *               (u32/u64, little/big endian, or raw bytes).
 *   tc_page     page_size bytes of a table as the file holds them (the last
 *               page is shorter: the table's bytes rounded up to 512). Pages
 *               are loaded on first use and dropped least-recently-used first
 *               when a new one would pass the budget.
 *
 * Dirty tracking is per 512-byte sector of a page (sectors counted from the
 * table start), so write-back writes only the sectors that changed, as the
 * formats themselves do; a torn write tears at a sector boundary.
 *
 * Write ordering. A dirty page is written back only when
 *   - the pages it depends on (tc_page_depends: "write `on` and flush before
 *     me" - refcount block before the L2 that needs it, L2 before L1) are
 *     clean, and
 *   - if it was changed with TC_AFTER_DATA (it points at newly written data),
 *     its io was flushed after that change, and
 *   - its table's before_write() hook (if any) ran (VDI writes its header
 *     there: the allocated count goes out before the map entries).
 * Write-back goes in rounds: every page that is ready is written, each io
 * written is flushed once, and the pages that waited for those become ready.
 * Flushes and early write-back (when the budget is full of dirty pages) take
 * the same path, so the order holds whichever triggers it. A page is marked
 * clean only after its io was flushed: a failed write or flush leaves it
 * dirty and the next write-back writes it again.
 *
 * Memory: pages (data, dirty bits and bookkeeping), each table's page
 * directory and whatever the owner charges with tc_budget_charge() (VDI's
 * slot bitmaps) count against the budget. Pinned and dirty pages are never
 * evicted; when nothing can be evicted and written back, the request that
 * needs memory fails with -E2BIG (the budget is too small for the work at
 * hand; it never silently grows).
 *
 * Threads: none. A budget is used under its disk's lock (lib/core serializes
 * every call on a disk); images opened outside a disk get a budget of their own.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

#define TC_SECTOR 512u
#define TC_BUDGET_DEFAULT (UINT64_C(64) << 20)
#define TC_BUDGET_MIN (UINT64_C(1) << 20)
#define TC_PAGE_MAX (UINT32_C(4) << 20)

typedef enum tc_entry {
        TC_RAW,      /* bytes; tc_get/tc_set refuse it, use pages or tc_read/tc_write */
        TC_LE32,
        TC_BE32,
        TC_LE64,
        TC_BE64,
} tc_entry;

typedef struct tc_budget tc_budget;
typedef struct tc_table tc_table;
typedef struct tc_page tc_page;

/* Flags of tc_set / tc_write / tc_page_dirty. */
enum {
        TC_AFTER_DATA = 1u << 0,   /* the change points at data written since the last
                                    * flush of the table's io: flush it first */
};

/* ---- budget */

/* limit 0 = TC_BUDGET_DEFAULT; below TC_BUDGET_MIN is -EINVAL. */
int tc_budget_new(uint64_t limit, tc_budget **ret);
tc_budget *tc_budget_ref(tc_budget *b);
tc_budget *tc_budget_unref(tc_budget *b);
static inline void tc_budget_unrefp(tc_budget **b) {
        tc_budget_unref(*b);
}
/* Changes the limit (0 = default). Lowering it evicts clean pages down to the
 * new limit where it can; what cannot go yet goes as soon as it is clean. */
int tc_budget_set_limit(tc_budget *b, uint64_t limit);
uint64_t tc_budget_limit(const tc_budget *b);
/* Bytes held / peak / hits / misses / evictions / early write-backs. */
void tc_budget_stats(const tc_budget *b, vdisk_metadata_stats *ret);
/* Charges `bytes` of other metadata to the budget, evicting (and if needed
 * writing back) pages to make room; -E2BIG when it does not fit. */
int tc_budget_charge(tc_budget *b, uint64_t bytes);
void tc_budget_uncharge(tc_budget *b, uint64_t bytes);
/* Writes back every dirty page of every table under b, in order. */
int tc_budget_flush(tc_budget *b);

/* ---- tables */

typedef struct tc_table_params {
        uint64_t offset;        /* file offset of the table */
        uint64_t size;          /* bytes of the table (entries * entry size for u32/u64) */
        uint32_t page_size;     /* power of two, 512 .. TC_PAGE_MAX */
        tc_entry entry;
        /* Pages (or parts) past the end of the file read as zeros. Otherwise
         * the file must hold the table's bytes (-EUCLEAN): only the padding of
         * the last sector may lie past the end, and reads as zeros. */
        bool zero_past_eof;
        /* Called (when set) before pages of this table are written back, for
         * what must reach the disk before them (VDI: its header). It may do
         * I/O on the io but must not use the cache. */
        int (*before_write)(void *user);
        void *user;
        const char *name;       /* "vdi block map": for error messages; borrowed */
} tc_table_params;

/* The io is borrowed and must outlive the table. Reads nothing yet. */
int tc_table_new(tc_budget *b, vdisk_io *io, const tc_table_params *p, tc_table **ret);
/* Drops the table and its pages, dirty ones included (flush first to keep
 * them). Pages of other tables stop depending on its pages. NULL is fine. */
tc_table *tc_table_free(tc_table *t);
static inline void tc_table_freep(tc_table **t) {
        tc_table_free(*t);
}
uint64_t tc_table_size(const tc_table *t);
uint64_t tc_table_offset(const tc_table *t);
/* Number of u32/u64 entries. */
uint64_t tc_table_entries(const tc_table *t);
bool tc_table_is_dirty(const tc_table *t);
/* Writes back the dirty pages of t (and, first, the pages they depend on). */
int tc_table_flush(tc_table *t);

/* Changes the table's size. Bytes from the shorter end of the two to the end
 * of the new table's last sector become `fill` (the entry pattern, or the
 * byte for TC_RAW) and dirty: new entries, and the vacated part of the last
 * sector when shrinking. Pages wholly past the old end are made, not read. */
int tc_table_resize(tc_table *t, uint64_t size, uint64_t fill);

/* Entry i (asserted < tc_table_entries()). Load errors are returned. */
int tc_get(tc_table *t, uint64_t i, uint64_t *ret);
int tc_set(tc_table *t, uint64_t i, uint64_t v, uint32_t flags);
/* The first entry in [from, to) that is not v, in *ret (to when there is
 * none): a run of equal entries (a hole of unallocated blocks) is found
 * page by page, a machine word at a time, not entry by entry. Loads the
 * pages it passes; load errors are returned. */
int tc_find_other(tc_table *t, uint64_t from, uint64_t to, uint64_t v, uint64_t *ret);
/* Raw bytes at `offset` in the table (asserted inside it). */
int tc_read(tc_table *t, uint64_t offset, void *buf, size_t len);
int tc_write(tc_table *t, uint64_t offset, const void *buf, size_t len, uint32_t flags);

/* ---- pages: for formats that work on whole pages (an L2 table as one page) */

/* Loads (or finds) page `index` and pins it: it stays until tc_page_put(). */
int tc_page_get(tc_table *t, uint64_t index, tc_page **ret);
void tc_page_put(tc_page *pg);
static inline void tc_page_putp(tc_page **pg) {
        if (*pg)
                tc_page_put(*pg);
}
uint8_t *tc_page_data(tc_page *pg);
uint32_t tc_page_len(const tc_page *pg);
/* The bytes [off, off+len) of the page were changed. */
void tc_page_dirty(tc_page *pg, uint32_t off, uint32_t len, uint32_t flags);
/* pg must not be written before `on` is written and flushed. Nothing to do
 * when `on` is clean. pg must be dirty (or become dirty before the next
 * write-back); the dependency ends when `on` is clean. */
int tc_page_depends(tc_page *pg, tc_page *on);
bool tc_page_is_dirty(const tc_page *pg);

/* ---- whole-table helpers (flat tables written outside the cache) */

/* Writes a table of n entries at `offset` straight to io, entry i being
 * fn(ctx, i, &v), padded to a sector with the `pad` entry pattern; in chunks
 * of at most 1 MiB. For new tables (create, relocation) that nothing
 * references yet. No flush. */
int tc_write_entries(vdisk_io *io, uint64_t offset, uint64_t n, tc_entry entry, uint64_t pad,
                     int (*fn)(void *ctx, uint64_t i, uint64_t *ret), void *ctx);

/* Bytes one entry takes (0 for TC_RAW). */
unsigned tc_entry_size(tc_entry entry);
