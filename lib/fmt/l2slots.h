/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/l2slots: second-level tables (QCOW v1 and QED L2 tables) that
 * live anywhere in a file, each held as a tc_table of its own, a few at a
 * time.
 *
 * A table is found by its host offset; the least recently used one is
 * dropped when a new one is needed, after its dirty pages were written back
 * (tc_table_flush keeps the cache's write ordering: entries set with
 * TC_AFTER_DATA wait for a flush of the data). The pages themselves count
 * against the disk's tc_budget like every other table.
 *
 * The caller checks offsets (alignment, inside the file, not over its other
 * metadata) before asking for a table.
 */
#pragma once

#include <stdint.h>

#include "fmt/tablecache.h"

#define L2SLOTS_N 16u

typedef struct l2slots {
        tc_budget *budget;
        vdisk_io *io;
        uint64_t table_bytes;
        uint32_t page_size;
        tc_entry entry;
        const char *name;
        struct {
                uint64_t offset;
                tc_table *t;
                uint64_t used;
        } slot[L2SLOTS_N];
        uint64_t tick;
} l2slots;

/* table_bytes: a multiple of 512; pages of at most 64 KiB. */
void l2slots_init(l2slots *c, tc_budget *b, vdisk_io *io, uint64_t table_bytes, tc_entry entry, const char *name);
/* The table at `offset` (loaded lazily, page by page). */
int l2slots_get(l2slots *c, uint64_t offset, tc_table **ret);
/* Writes back every dirty table. */
int l2slots_flush(l2slots *c);
/* Drops every table (dirty pages included: flush first to keep them). */
void l2slots_drop(l2slots *c);
