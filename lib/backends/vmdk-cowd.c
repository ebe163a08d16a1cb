/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK vmfsSparse extents ("COWD": ESX Server 3/4 sparse extents, the redo
 * logs of snapshots), read-only.
 *
 * Spec: VMware "Virtual Disk Format 5.0", section "ESX Server Sparse
 * Extents"; our own reading of it, no code taken from anywhere. All fields
 * little-endian u32.
 *
 *   sector 0..3  header (2048 bytes): magic "COWD", version 1, flags,
 *                capacity (sectors), grain size (sectors; ESX uses 1),
 *                GD offset (sectors), GD entries, free sector, then either
 *                the root geometry or the parent's file name (1024 bytes)
 *                and generation, the generation, a name and a description,
 *                the saved generation, an unclean-shutdown flag.
 *   GD           u32 sector offsets of the grain tables (0: none, the
 *                range reads unallocated).
 *   GT           4096 u32 entries: the grain's sector, 0 unallocated (the
 *                parent shows through; ESX redo logs always have one).
 *
 * The parent of a redo log is named by the descriptor (parentFileNameHint),
 * as for the other extent kinds; the name in the header is not followed.
 * Every field and entry is untrusted: the GD inside the file, each table
 * and grain inside the file and outside the header and GD, checked when
 * looked up; tables through the table cache (metadata budget).
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backends/vmdk-cowd.h"
#include "fmt/grainmap.h"
#include "fmt/tablecache.h"
#include "io/io.h"
#include "util/util.h"

#define COWD_MAGIC        UINT32_C(0x44574f43)   /* "COWD" */
#define COWD_SECTOR       512u
#define COWD_HEADER       2048u
#define COWD_GTES         4096u
#define COWD_GRAIN_MAX    UINT32_C(32768)        /* sectors: 16 MiB, as hosted sparse */
#define COWD_GD_BYTES_MAX (UINT64_C(64) << 20)

enum {
        CH_MAGIC    = 0,
        CH_VERSION  = 4,
        CH_CAPACITY = 12,
        CH_GRAIN    = 16,
        CH_GD       = 20,
        CH_GD_N     = 24,
};

struct vmdk_cowd {
        vdisk_io *io;
        uint64_t file_size;
        uint64_t size, grain;           /* bytes */
        uint64_t n_gd;                  /* GD entries used */
        uint64_t meta_end;              /* bytes: header and GD end here */
        tc_table *gd, *view;
};

vmdk_cowd *vmdk_cowd_free(vmdk_cowd *c) {
        if (c) {
                tc_table_free(c->gd);
                tc_table_free(c->view);
                free(c);
        }
        return NULL;
}

uint64_t vmdk_cowd_grain(const vmdk_cowd *c) {
        return c->grain;
}

int vmdk_cowd_open(tc_budget *budget, vdisk_io *io, uint64_t file_size, uint64_t sectors, const char *name,
                   vmdk_cowd **ret) {
        uint8_t h[32];
        uint32_t capacity, grain, gd, gd_n;
        uint64_t n_gd;
        vmdk_cowd *c;
        int r;

        if (file_size < COWD_HEADER)
                return vdisk_error(-EUCLEAN, "vmdk: vmfsSparse extent \"%s\" is too short (%" PRIu64 " bytes)", name,
                                   file_size);
        r = io_pread(io, h, sizeof h, 0);
        if (r < 0)
                return r;
        if (get_le32(h + CH_MAGIC) != COWD_MAGIC)
                return vdisk_error(-EUCLEAN, "vmdk: \"%s\" is no vmfsSparse extent (no COWD magic)", name);
        if (get_le32(h + CH_VERSION) != 1)
                return vdisk_error(-EOPNOTSUPP, "vmdk: vmfsSparse extent \"%s\": version %" PRIu32 " (1 is read)",
                                   name, get_le32(h + CH_VERSION));
        capacity = get_le32(h + CH_CAPACITY);
        grain = get_le32(h + CH_GRAIN);
        gd = get_le32(h + CH_GD);
        gd_n = get_le32(h + CH_GD_N);
        if (capacity == 0 || capacity != sectors)
                return vdisk_error(-EUCLEAN, "vmdk: vmfsSparse extent \"%s\" holds %" PRIu32 " sectors, the "
                                   "descriptor says %" PRIu64, name, capacity, sectors);
        if (grain == 0 || grain > COWD_GRAIN_MAX || (grain & (grain - 1)))
                return vdisk_error(-EUCLEAN, "vmdk: vmfsSparse extent \"%s\": grain of %" PRIu32 " sectors (a power "
                                   "of two up to %" PRIu32 ")", name, grain, COWD_GRAIN_MAX);
        n_gd = DIV_ROUND_UP((uint64_t) capacity, (uint64_t) grain * COWD_GTES);
        if (gd_n < n_gd)
                return vdisk_error(-EUCLEAN, "vmdk: vmfsSparse extent \"%s\": grain directory of %" PRIu32
                                   " entries, %" PRIu64 " needed", name, gd_n, n_gd);
        if (n_gd * 4 > COWD_GD_BYTES_MAX)
                return vdisk_error(-EFBIG, "vmdk: vmfsSparse extent \"%s\": grain directory too big", name);
        if ((uint64_t) gd * COWD_SECTOR < COWD_HEADER ||
            !range_within((uint64_t) gd * COWD_SECTOR, n_gd * 4, file_size))
                return vdisk_error(-EUCLEAN, "vmdk: vmfsSparse extent \"%s\": grain directory at sector %" PRIu32
                                   " is not within the file (%" PRIu64 " bytes) past the header", name, gd,
                                   file_size);

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        *c = (vmdk_cowd) {
                .io = io,
                .file_size = file_size,
                .size = (uint64_t) capacity * COWD_SECTOR,
                .grain = (uint64_t) grain * COWD_SECTOR,
                .n_gd = n_gd,
                .meta_end = (uint64_t) gd * COWD_SECTOR + n_gd * 4,
        };
        tc_table_params p = {
                .offset = (uint64_t) gd * COWD_SECTOR,
                .size = n_gd * 4,
                .page_size = 4096,
                .entry = TC_LE32,
                .name = "vmdk vmfsSparse grain directory",
        };
        r = tc_table_new(budget, io, &p, &c->gd);
        if (r >= 0) {
                p = (tc_table_params) {
                        .offset = 0,
                        .size = file_size & ~UINT64_C(3),
                        .page_size = 4096,
                        .entry = TC_LE32,
                        .name = "vmdk vmfsSparse grain tables",
                };
                r = tc_table_new(budget, io, &p, &c->view);
        }
        if (r < 0) {
                vmdk_cowd_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

/* The byte offset of GT `i`, 0 when it has none. */
static int gt_lookup(vmdk_cowd *c, uint64_t i, uint64_t *ret) {
        uint64_t e;
        int r;

        r = tc_get(c->gd, i, &e);
        if (r < 0)
                return r;
        if (e != 0 && (e * COWD_SECTOR < c->meta_end ||
                       !range_within(e * COWD_SECTOR, COWD_GTES * 4, c->file_size)))
                return vdisk_error(-EUCLEAN, "vmdk: vmfsSparse grain directory entry %" PRIu64 " (sector %" PRIu64
                                   ") is not within the file past the header", i, e);
        *ret = e * COWD_SECTOR;
        return 0;
}

/* Grain g of the table at byte `gt`: its host offset, 0 when unallocated. */
static int grain_lookup(vmdk_cowd *c, uint64_t gt, uint64_t g, uint64_t *ret) {
        uint64_t e, len = MIN(c->grain, c->size - g * c->grain);
        int r;

        if (gt == 0) {
                *ret = 0;
                return 0;
        }
        r = tc_get(c->view, gt / 4 + g % COWD_GTES, &e);
        if (r < 0)
                return r;
        if (e != 0 && (e * COWD_SECTOR < c->meta_end || !range_within(e * COWD_SECTOR, len, c->file_size)))
                return vdisk_error(-EUCLEAN, "vmdk: vmfsSparse grain %" PRIu64 " at sector %" PRIu64
                                   " is not within the file past the header", g, e);
        *ret = e * COWD_SECTOR;
        return 0;
}

/* The lookups of lib/fmt/grainmap: a table is its byte offset. */
static int gm_table(void *ctx, uint64_t i, uint64_t *ret) {
        int r = gt_lookup(ctx, i, ret);

        if (r >= 0 && *ret == 0)
                *ret = GRAIN_MAP_NO_TABLE;
        return r;
}

static int gm_grain(void *ctx, uint64_t t, uint64_t g, map_kind *kind, uint64_t *host) {
        int r = grain_lookup(ctx, t, g, host);

        *kind = r >= 0 && *host ? MAP_DATA : MAP_UNALLOC;
        return r;
}

grain_map vmdk_cowd_grain_map(vmdk_cowd *c) {
        return (grain_map) {
                .ctx = c, .size = c->size, .grain = c->grain, .gtes = COWD_GTES, .n_gd = c->n_gd,
                .table = gm_table, .grain_at = gm_grain,
        };
}
