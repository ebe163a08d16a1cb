/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/compact: the parts of "compact" that block formats share (VDI,
 * VHD, VMDK sparse extents).
 *
 *   fmt_scan    asks the core's compact_fn about one allocated unit, piece by
 *               piece through a bounded buffer, and combines the answers:
 *               UNALLOC when every piece equals what shows through from
 *               below, ZERO when every piece is zeros (and the format can
 *               record a zero unit), else KEEP.
 *   fmt_pack    moves the live units that lie highest in the file into the
 *               holes below them, crash-safely, so that the file can be cut
 *               after the last unit. The backend gives the units (a key and a
 *               host offset each, all of one host size), the space that must
 *               stay where it is (headers, tables between the units), where
 *               data may start, and two callbacks: repoint (set the unit's
 *               table entry to its new place, in memory) and commit (write
 *               the entries repointed since the last commit, flushed).
 *
 * The moves of fmt_pack: the plan is made first (the highest unit into the
 * lowest hole below it, until no hole lies below a unit), the destinations
 * are reserved (a full file system fails before anything moves), then in
 * batches: copy every unit of the batch, flush the file, repoint, commit.
 * Every destination was a hole before the pack began (never the place a unit
 * of the same batch left), and every source stays intact until the pack
 * ends: a crash at any point leaves each entry pointing at the old or the
 * new copy, both complete. Moved units keep their order (the lowest source
 * goes to the lowest destination).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "io/io.h"

/* ---- scan */

typedef struct fmt_scan {
        compact_fn fn;
        void *ctx;
        uint8_t *buf;
        size_t buf_size;
        bool unalloc, zero;     /* the verdict of the unit so far */
} fmt_scan;

/* Starts a unit. */
static inline void fmt_scan_begin(fmt_scan *sc) {
        sc->unalloc = sc->zero = true;
}

/* Asks about the unit's data [voff, voff+len) held at `host` in io (read in
 * pieces of at most buf_size; what lies past the end of the file reads as
 * zeros). Stops early once the unit must be kept. */
int fmt_scan_piece(fmt_scan *sc, vdisk_io *io, uint64_t host, uint64_t voff, uint64_t len);

/* Whether the unit must be kept whatever its other pieces hold (parts a
 * sub-block bitmap leaves clear show what is below: they are not asked
 * about at all). */
static inline bool fmt_scan_keep(const fmt_scan *sc) {
        return !sc->unalloc && !sc->zero;
}

static inline compact_verdict fmt_scan_verdict(const fmt_scan *sc) {
        return sc->unalloc ? COMPACT_UNALLOC : sc->zero ? COMPACT_ZERO : COMPACT_KEEP;
}

/* ---- pack */

typedef struct fmt_unit {
        uint64_t key;           /* the backend's name of the unit (block or grain number) */
        uint64_t host;          /* byte offset of its data in the file */
} fmt_unit;

typedef struct fmt_span {
        uint64_t start, len;    /* bytes */
} fmt_span;

typedef struct fmt_pack {
        vdisk_io *io;
        uint64_t unit;          /* host bytes of every unit (> 0) */
        uint64_t floor;         /* no unit goes below */
        fmt_unit *units;        /* the live units (sorted here; no two overlap) */
        size_t n_units;
        const fmt_span *fixed;  /* what stays (any order, may overlap), may be NULL */
        size_t n_fixed;
        size_t batch;           /* moves per commit; 0 = 64 */
        vdisk_progress *p;      /* gets the bytes moved, may be NULL */
        /* Cancel is honoured between batches (each batch complete and
         * committed; the highest units move first): fmt_pack_run() returns
         * the error of progress_add(), and *ret_end says where the file may
         * be cut then. Otherwise progress only reports. */
        bool cancellable;
        /* Points unit `key` (at `from`) at its copy at `to`. */
        int (*repoint)(void *user, uint64_t key, uint64_t from, uint64_t to);
        /* Makes the entries repointed since the last call durable. */
        int (*commit)(void *user);
        void *user;
} fmt_pack;

/* Counts the moves fmt_pack() would make (for progress totals). */
int fmt_pack_count(const fmt_pack *pk, uint64_t *ret_moves);

/* Packs (-EUCLEAN when two units overlap); *ret_end (may be NULL) gets the end of the last unit or fixed span
 * at or above the floor after the pack (at least the floor): where the file
 * may be cut. The caller cuts it (its format may put a footer there). */
int fmt_pack_run(const fmt_pack *pk, uint64_t *ret_end);
