/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/blockmap: a flat allocation table held in memory (VDI block map,
 * VHD BAT, Parallels BAT, VHDX BAT, L1 tables).
 *
 * The table is kept as the exact bytes of its on-disk image, padded to whole
 * 512-byte sectors, so writing back needs no conversion and preserves the
 * padding the file had. Entries are u32 or u64, little- or big-endian, decoded
 * on access. A dirty bit per 512-byte sector of the table (relative to the
 * table start) records what blockmap_write_dirty() must write.
 *
 * Memory is bounded: a table above BLOCKMAP_MAX_BYTES is -EFBIG, and a table
 * is loaded only when the file holds all of its entries (-EUCLEAN otherwise).
 * Indices passed to get/set are the caller's responsibility (asserted).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "vdisk/vdisk.h"

#define BLOCKMAP_SECTOR 512u
#define BLOCKMAP_MAX_BYTES (UINT64_C(64) << 20)

typedef enum blockmap_format {
        BLOCKMAP_LE32,
        BLOCKMAP_BE32,
        BLOCKMAP_LE64,
        BLOCKMAP_BE64,
} blockmap_format;

typedef struct blockmap {
        uint8_t *raw;            /* on-disk bytes, raw_size long */
        uint64_t raw_size;       /* n * entry size, rounded up to a sector */
        uint64_t n;              /* entries */
        uint64_t offset;         /* file offset of the table */
        blockmap_format format;
        uint64_t *dirty;         /* one bit per sector of raw */
        uint64_t n_dirty;        /* dirty sectors */
} blockmap;

/* Bytes one entry takes on disk (4 or 8). */
unsigned blockmap_entry_size(blockmap_format format);

/* Bytes of a table of n entries on disk, padded to a sector; -EFBIG above
 * BLOCKMAP_MAX_BYTES. */
int blockmap_table_size(uint64_t n, blockmap_format format, uint64_t *ret);

/* Makes a new table of n entries at `offset`, every entry (and the sector
 * padding after the last one) set to `fill`, all sectors dirty. bm must be
 * zeroed or released. */
int blockmap_init(blockmap *bm, uint64_t offset, uint64_t n, blockmap_format format, uint64_t fill);

/* Reads a table of n entries at `offset` from io. The file must hold every
 * entry (-EUCLEAN); the padding of the last sector reads as zeros where the
 * file ends before it. Nothing is dirty afterwards. */
int blockmap_load(blockmap *bm, vdisk_io *io, uint64_t offset, uint64_t n, blockmap_format format);

/* Frees the table; bm may be zeroed or half built. Leaves it zeroed. */
void blockmap_done(blockmap *bm);

uint64_t blockmap_get(const blockmap *bm, uint64_t i);
/* Sets entry i; marks its sector dirty when the value changes. */
void blockmap_set(blockmap *bm, uint64_t i, uint64_t v);

/* Changes the number of entries. New entries, and the bytes of the last
 * sector past the last entry when shrinking, are set to `fill`; their sectors
 * become dirty. */
int blockmap_resize(blockmap *bm, uint64_t n, uint64_t fill);

/* Moves the table to a new file offset; every sector becomes dirty. */
void blockmap_set_offset(blockmap *bm, uint64_t offset);

void blockmap_mark_all_dirty(blockmap *bm);
bool blockmap_is_dirty(const blockmap *bm);

/* Writes the dirty sectors (adjacent ones in one pwrite) and clears their
 * dirty bits. On failure the sectors not yet written stay dirty. No flush. */
int blockmap_write_dirty(blockmap *bm, vdisk_io *io);

/* Copies a table (same entries, offset and dirty state). */
int blockmap_copy(const blockmap *src, blockmap *ret);
