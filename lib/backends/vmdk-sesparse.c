/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK seSparse extents (ESXi 6.5+ snapshots and linked clones), read-only.
 *
 * There is no published spec; this follows the public descriptions of the
 * layout and was checked against a real extent (corpus:
 * dissect-hypervisor/vmdk/sesparse.vmdk). No code was taken from any other
 * implementation. All fields are little-endian u64.
 *
 *   sector 0   constant header: magic 0xcafebabe, version 0x2_00000001,
 *              capacity (sectors), grain size (8 sectors: 4 KiB), grain table
 *              size (64 sectors: 4096 entries), flags (0), 4 reserved, then
 *              (offset, size) pairs in sectors of: the volatile header, the
 *              journal header, the journal, the grain directory, the grain
 *              tables, the free bitmap, the back map, the grains.
 *   volatile   magic 0xcafecafe, free GT number, next transaction number,
 *              replay-journal flag (must be 0: a journal to replay means the
 *              extent was not closed cleanly; VMware replays it at its next
 *              open, and we refuse rather than read stale tables).
 *   GD         one entry per 16 MiB (4096 grains): 0 no table (the whole
 *              range is unallocated), else type 1 in the top 4 bits and the
 *              index of the table in the grain-tables area below.
 *   GT         one entry per 4 KiB grain; type in the top 4 bits:
 *              0 unallocated (the parent shows through), 1 unmapped and
 *              2 zeroed (both read zeros), 3 allocated: grain index =
 *              bits 48..59 | bits 0..47 << 12, the grain at
 *              grains_offset + index * grain size. Other types are corrupt.
 *
 * Every field and entry is untrusted: the regions must lie inside the file
 * and not overlap the grains; each table index and grain is checked when it
 * is looked up; the tables go through the table cache (metadata budget).
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backends/vmdk-sesparse.h"
#include "fmt/grainmap.h"
#include "fmt/tablecache.h"
#include "io/io.h"
#include "util/util.h"

#define SE_SECTOR        512u
#define SE_VERSION       UINT64_C(0x200000001)
#define SE_VOLATILE_MAGIC UINT64_C(0xcafecafe)
#define SE_GRAIN_SECTORS 8u
#define SE_GT_SECTORS    64u
#define SE_GTES          (SE_GT_SECTORS * SE_SECTOR / 8)     /* 4096 */
#define SE_CAPACITY_MAX  (UINT64_C(64) << 31)               /* sectors: 64 TiB, as other extents */
#define SE_TYPE(e)       ((e) >> 60)
#define SE_LOW60(e)      ((e) & ((UINT64_C(1) << 60) - 1))

enum {
        SE_GT_UNALLOC  = 0,
        SE_GT_UNMAPPED = 1,
        SE_GT_ZERO     = 2,
        SE_GT_ALLOC    = 3,
};

/* Constant header field offsets. */
enum {
        SH_MAGIC     = 0x00,
        SH_VERSION   = 0x08,
        SH_CAPACITY  = 0x10,
        SH_GRAIN     = 0x18,
        SH_GT_SIZE   = 0x20,
        SH_FLAGS     = 0x28,
        SH_VOLATILE  = 0x50,   /* each region: offset, then size */
        SH_JOURNAL_H = 0x60,
        SH_JOURNAL   = 0x70,
        SH_GD        = 0x80,
        SH_GT        = 0x90,
        SH_FREE_BMP  = 0xa0,
        SH_BACKMAP   = 0xb0,
        SH_GRAINS    = 0xc0,
        SH_END       = 0xd0,
};

/* Volatile header. */
enum {
        SV_MAGIC     = 0x00,
        SV_REPLAY    = 0x18,
        SV_END       = 0x20,
};

struct vmdk_se {
        vdisk_io *io;
        uint64_t file_size;
        uint64_t size;                  /* bytes */
        uint64_t n_gd;                  /* GD entries used */
        uint64_t n_gts;                 /* tables the GT area holds */
        uint64_t grains_off;            /* bytes */
        uint64_t n_grains;              /* grain indexes the grains area holds */
        tc_table *gd, *gt;
};

typedef struct se_region {
        uint64_t off, size;             /* sectors, as stored */
} se_region;

static se_region region(const uint8_t *h, unsigned at) {
        return (se_region) { get_le64(h + at), get_le64(h + at + 8) };
}

/* The region in the file, past the header; *ret_* in bytes. */
static int region_in_file(const se_region *rg, const char *what, uint64_t file_size, const char *name) {
        if (rg->off == 0 || rg->size == 0 || rg->off > file_size / SE_SECTOR || rg->size > file_size / SE_SECTOR ||
            !range_within(rg->off * SE_SECTOR, rg->size * SE_SECTOR, file_size))
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\": %s at sector %" PRIu64 " (%" PRIu64
                                   " sectors) is not within the file (%" PRIu64 " bytes)", name, what, rg->off,
                                   rg->size, file_size);
        return 0;
}

static bool regions_overlap(const se_region *a, const se_region *b) {
        /* Sizes were checked against the file or bounded below, no overflow. */
        return a->off < b->off + b->size && b->off < a->off + a->size;
}

vmdk_se *vmdk_se_free(vmdk_se *se) {
        if (se) {
                tc_table_free(se->gd);
                tc_table_free(se->gt);
                free(se);
        }
        return NULL;
}

int vmdk_se_open(tc_budget *budget, vdisk_io *io, uint64_t file_size, uint64_t sectors, const char *name,
                 vmdk_se **ret) {
        uint8_t h[SH_END], v[SV_END];
        se_region vol, gd, gt, grains;
        uint64_t capacity, n_gd;
        vmdk_se *se;
        int r;

        if (file_size < SE_SECTOR)
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\" is too short (%" PRIu64 " bytes)", name,
                                   file_size);
        r = io_pread(io, h, sizeof h, 0);
        if (r < 0)
                return r;
        if (get_le64(h + SH_MAGIC) != VMDK_SE_MAGIC)
                return vdisk_error(-EUCLEAN, "vmdk: \"%s\" is no seSparse extent (no 0xcafebabe magic)", name);
        if (get_le64(h + SH_VERSION) != SE_VERSION)
                return vdisk_error(-EOPNOTSUPP, "vmdk: seSparse extent \"%s\": version 0x%" PRIx64
                                   " (only 0x200000001 is read)", name, get_le64(h + SH_VERSION));
        capacity = get_le64(h + SH_CAPACITY);
        if (capacity == 0 || capacity > SE_CAPACITY_MAX)
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\": capacity of %" PRIu64
                                   " sectors (1 to %" PRIu64 ")", name, capacity, SE_CAPACITY_MAX);
        if (capacity != sectors)
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\" holds %" PRIu64
                                   " sectors, the descriptor says %" PRIu64, name, capacity, sectors);
        if (get_le64(h + SH_GRAIN) != SE_GRAIN_SECTORS || get_le64(h + SH_GT_SIZE) != SE_GT_SECTORS)
                return vdisk_error(-EOPNOTSUPP, "vmdk: seSparse extent \"%s\": grains of %" PRIu64
                                   " sectors and tables of %" PRIu64 " sectors (only 8 and 64 are read)", name,
                                   get_le64(h + SH_GRAIN), get_le64(h + SH_GT_SIZE));
        if (get_le64(h + SH_FLAGS) != 0)
                return vdisk_error(-EOPNOTSUPP, "vmdk: seSparse extent \"%s\": unknown flags 0x%" PRIx64, name,
                                   get_le64(h + SH_FLAGS));

        vol = region(h, SH_VOLATILE);
        gd = region(h, SH_GD);
        gt = region(h, SH_GT);
        grains = region(h, SH_GRAINS);
        r = region_in_file(&vol, "the volatile header", file_size, name);
        if (r >= 0)
                r = region_in_file(&gd, "the grain directory", file_size, name);
        if (r >= 0)
                r = region_in_file(&gt, "the grain tables", file_size, name);
        if (r < 0)
                return r;
        /* The grains area is address space: the file holds only the grains
         * written so far. Its start must lie in the file (a grain is checked
         * against the file when looked up) and its size fit in 2^60 grains. */
        if (grains.off == 0 || grains.off > file_size / SE_SECTOR || grains.size > (UINT64_C(1) << 60) ||
            grains.size < SE_GRAIN_SECTORS)
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\": grains area at sector %" PRIu64
                                   " (%" PRIu64 " sectors) is not valid", name, grains.off, grains.size);
        if (regions_overlap(&gd, &gt) || regions_overlap(&gd, &grains) || regions_overlap(&gt, &grains) ||
            regions_overlap(&vol, &gd) || regions_overlap(&vol, &gt) || regions_overlap(&vol, &grains))
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\": its volatile header, grain directory, "
                                   "grain tables and grains overlap", name);

        r = io_pread(io, v, sizeof v, vol.off * SE_SECTOR);
        if (r < 0)
                return r;
        if (get_le64(v + SV_MAGIC) != SE_VOLATILE_MAGIC)
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\": volatile header damaged (magic 0x%"
                                   PRIx64 ")", name, get_le64(v + SV_MAGIC));
        if (get_le64(v + SV_REPLAY) != 0)
                return vdisk_error(-EOPNOTSUPP, "vmdk: seSparse extent \"%s\" has a journal to replay (it was not "
                                   "closed cleanly); open it once in VMware", name);

        n_gd = DIV_ROUND_UP(capacity, (uint64_t) SE_GRAIN_SECTORS * SE_GTES);
        if (gd.size * (SE_SECTOR / 8) < n_gd)
                return vdisk_error(-EUCLEAN, "vmdk: seSparse extent \"%s\": grain directory of %" PRIu64
                                   " entries, %" PRIu64 " needed", name, gd.size * (SE_SECTOR / 8), n_gd);

        se = calloc(1, sizeof *se);
        if (!se)
                return -ENOMEM;
        *se = (vmdk_se) {
                .io = io,
                .file_size = file_size,
                .size = capacity * SE_SECTOR,
                .n_gd = n_gd,
                .n_gts = gt.size / SE_GT_SECTORS,
                .grains_off = grains.off * SE_SECTOR,
                .n_grains = grains.size / SE_GRAIN_SECTORS,
        };
        tc_table_params p = {
                .offset = gd.off * SE_SECTOR,
                .size = n_gd * 8,
                .page_size = 4096,
                .entry = TC_LE64,
                .name = "vmdk seSparse grain directory",
        };
        r = tc_table_new(budget, io, &p, &se->gd);
        if (r >= 0 && se->n_gts > 0) {
                p = (tc_table_params) {
                        .offset = gt.off * SE_SECTOR,
                        .size = se->n_gts * SE_GT_SECTORS * SE_SECTOR,
                        .page_size = 4096,
                        .entry = TC_LE64,
                        .name = "vmdk seSparse grain tables",
                };
                r = tc_table_new(budget, io, &p, &se->gt);
        }
        if (r < 0) {
                vmdk_se_free(se);
                return r;
        }
        *ret = se;
        return 0;
}

/* The table index of GD entry `i`, or UINT64_MAX when it has none. */
static int gd_lookup(vmdk_se *se, uint64_t i, uint64_t *ret) {
        uint64_t e;
        int r;

        r = tc_get(se->gd, i, &e);
        if (r < 0)
                return r;
        if (e == 0) {
                *ret = UINT64_MAX;
                return 0;
        }
        if (SE_TYPE(e) != 1 || SE_LOW60(e) >= se->n_gts)
                return vdisk_error(-EUCLEAN, "vmdk: seSparse grain directory entry %" PRIu64 " (0x%016" PRIx64
                                   ") names no grain table of the %" PRIu64 " there are", i, e, se->n_gts);
        *ret = SE_LOW60(e);
        return 0;
}

/* Grain g: its kind and, allocated, its host offset. */
static int grain_lookup(vmdk_se *se, uint64_t gt, uint64_t g, map_kind *kind, uint64_t *host) {
        uint64_t e, idx;
        int r;

        if (gt == UINT64_MAX) {
                *kind = MAP_UNALLOC;
                return 0;
        }
        r = tc_get(se->gt, gt * SE_GTES + g % SE_GTES, &e);
        if (r < 0)
                return r;
        switch (SE_TYPE(e)) {
        case SE_GT_UNALLOC:
                *kind = MAP_UNALLOC;
                return 0;
        case SE_GT_UNMAPPED:
        case SE_GT_ZERO:
                *kind = MAP_ZERO;
                return 0;
        case SE_GT_ALLOC:
                idx = ((e >> 48) & 0xfff) | ((e & ((UINT64_C(1) << 48) - 1)) << 12);
                if (idx >= se->n_grains || idx > (UINT64_MAX - se->grains_off) / VMDK_SE_GRAIN ||
                    !range_within(se->grains_off + idx * VMDK_SE_GRAIN, VMDK_SE_GRAIN, se->file_size))
                        return vdisk_error(-EUCLEAN, "vmdk: seSparse grain %" PRIu64 " (entry 0x%016" PRIx64
                                           ") is not within the file", g, e);
                *kind = MAP_DATA;
                *host = se->grains_off + idx * VMDK_SE_GRAIN;
                return 0;
        default:
                return vdisk_error(-EUCLEAN, "vmdk: seSparse grain %" PRIu64 " has an entry of unknown type (0x%016"
                                   PRIx64 ")", g, e);
        }
}

/* The lookups of lib/fmt/grainmap: a table is its index. */
static int gm_table(void *ctx, uint64_t i, uint64_t *ret) {
        return gd_lookup(ctx, i, ret);   /* UINT64_MAX: none (GRAIN_MAP_NO_TABLE) */
}

static int gm_grain(void *ctx, uint64_t t, uint64_t g, map_kind *kind, uint64_t *host) {
        return grain_lookup(ctx, t, g, kind, host);
}

grain_map vmdk_se_grain_map(vmdk_se *se) {
        return (grain_map) {
                .ctx = se, .size = se->size, .grain = VMDK_SE_GRAIN, .gtes = SE_GTES, .n_gd = se->n_gd,
                .table = gm_table, .grain_at = gm_grain,
        };
}
