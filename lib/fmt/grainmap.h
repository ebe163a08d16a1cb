/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/grainmap: block status over a two-level grain map (a directory
 * whose entries name grain tables of `gtes` entries, each a grain of `grain`
 * bytes), the lookups given by the format: VMDK's vmfsSparse (COWD) and
 * seSparse extents. map() reports how a range starts, as far as the grains
 * that follow in the same table agree (data: contiguous in the file); count()
 * walks every table.
 */
#pragma once

#include <stdint.h>

#include "backend.h"

#define GRAIN_MAP_NO_TABLE UINT64_MAX

typedef struct grain_map {
        void *ctx;
        uint64_t size;          /* bytes mapped */
        uint64_t grain;         /* bytes per grain */
        uint64_t gtes;          /* grains per table */
        uint64_t n_gd;          /* directory entries */
        /* Directory entry i: a handle for grain_at(), or GRAIN_MAP_NO_TABLE
         * (every grain of its range unallocated). */
        int (*table)(void *ctx, uint64_t i, uint64_t *ret);
        /* Grain g of table t: MAP_DATA at *host (bytes into the file),
         * MAP_ZERO or MAP_UNALLOC. */
        int (*grain_at)(void *ctx, uint64_t t, uint64_t g, map_kind *kind, uint64_t *host);
} grain_map;

/* How [off, off + len) starts (off < size): *kind, *host for MAP_DATA, for
 * *ret_len bytes (1..len), never past the table of the grain at off. */
int grain_map_map(const grain_map *m, uint64_t off, uint64_t len, map_kind *kind, uint64_t *host,
                  uint64_t *ret_len);
/* The grains that hold data, and all grains. */
int grain_map_count(const grain_map *m, uint64_t *ret_alloc, uint64_t *ret_total);
