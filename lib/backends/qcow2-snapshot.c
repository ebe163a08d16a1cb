/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2 internal snapshots written: qemu-img snapshot -c (create), -a
 * (apply), -d (delete), and the OFLAG_COPIED part of check.
 *
 * A snapshot is an entry of the snapshot table (header: nb_snapshots,
 * snapshots_offset) naming a copy of an L1 table; the L2 tables and data
 * clusters it references are shared with the active tree and with other
 * snapshots. A cluster's refcount counts its references per L1 table (an L2
 * table two L1 tables name counts 2, and so does every data cluster in it),
 * as qemu counts them. OFLAG_COPIED (bit 63) in an active L1 or L2 entry
 * says "refcount exactly 1": such a cluster is written in place; any other
 * is copied on write (qcow2.c: allocate/commit and l2_for_write).
 *
 * Crash ordering (qcow2.md): references are counted before anything points
 * at them and uncounted only after the pointer is gone from the disk; every
 * table (the snapshot table, a new active L1) is written to new clusters
 * (qcow2_table_place: counted and written, made durable together) and made
 * current by one small header write:
 *   create  COPIED cleared in the active tables, flush; the L1 copy and the
 *           new table placed, the active tree +1, flush; header
 *           (nb_snapshots, snapshots_offset), flush; the old table's
 *           clusters -1.
 *   apply   the new active L1 (the snapshot's, COPIED clear) placed, the
 *           snapshot's tree +1, flush; header (size, l1_size,
 *           l1_table_offset), flush; the old active tree -1, flush; COPIED
 *           set where a refcount came down to 1.
 *   delete  the new table written (its clusters counted), flush; header,
 *           flush; the snapshot's tree, its L1 and the old table -1, flush;
 *           COPIED set in the active tables where a refcount came to 1.
 * A cut leaves the old or the new state with at most leaked clusters, with
 * one exception qemu shares (the flag and the refcount live in different
 * clusters, and qemu's check wants them to agree): a cut (a crash; a create
 * that fails gives the flags back, create_undo_copied()) in create between
 * the COPIED clearing and the increments, or in delete between the
 * decrements and the COPIED update, leaves active entries with refcount 1
 * and COPIED clear. `qemu-img check` calls that an OFLAG_COPIED error; it
 * is harmless (the next write copies that cluster needlessly, or sets the
 * flag when it finds refcount 1) and `check -r all` sets the flag. The other
 * order would leave COPIED set on shared clusters, which is not harmless.
 *
 * Limits: snapshots with VM state are applied and deleted like any other
 * (the state's clusters live in the L1 table past the disk); vdisk writes
 * none. Refcounts of 1 bit cannot share a cluster: -EOPNOTSUPP.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "qcow2-int.h"
#include "util/util.h"

#define SNAP_HEADER             40u
#define SNAP_EXTRA              24u      /* vm_state_size_large, disk_size, icount: what qemu 7.2 writes */
#define SNAP_NAME_MAX           255u     /* qemu's QEMUSnapshotInfo.name */
#define HDR_SIZE                24u
#define HDR_NB_SNAPSHOTS        60u

/* An L1 table from the disk, host-endian (NULL and 0 entries: none). */
static int read_l1(qcow2_state *s, uint64_t off, uint32_t n, uint64_t **ret) {
        _cleanup_free_ uint64_t *l1 = NULL;
        int r;

        *ret = NULL;
        if (n == 0)
                return 0;
        if (!qcow2_l1_ok(s, off, n))
                return vdisk_error(-EUCLEAN, "qcow2: L1 table at %" PRIu64 " (%" PRIu32 " entries) is not "
                                   "cluster-aligned within the file", off, n);
        l1 = malloc((size_t) n * 8);
        if (!l1)
                return -ENOMEM;
        r = io_pread(s->io, l1, (size_t) n * 8, off);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < n; i++)
                l1[i] = get_be64((const uint8_t *) &l1[i]);
        *ret = TAKE_PTR(l1);
        return 0;
}

/* delta on the refcount of the cluster holding `host`, which must lie
 * within the file (past the header) */
static int adjust(qcow2_state *s, uint64_t host, int delta, const char *what) {
        if (host < s->cluster_size || host >= s->file_size)
                return vdisk_error(-EUCLEAN, "qcow2: %s at %" PRIu64 " is outside the file (%" PRIu64 " bytes)",
                                   what, host, s->file_size);
        return qcow2_rc_update(s, host, delta, NULL);
}

static int adjust_range(qcow2_state *s, uint64_t off, uint64_t len, int delta, const char *what) {
        int r;

        if (len == 0)
                return 0;
        for (uint64_t c = off / s->cluster_size; c <= (off + len - 1) / s->cluster_size; c++) {
                r = adjust(s, c * s->cluster_size, delta, what);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* delta on the refcount of every cluster the L1 table `l1` (n entries)
 * references: its L2 tables and their data and compressed clusters, once
 * per reference (as check counts them). The L2 tables are read from the
 * disk: the caller flushed. */
static int adjust_tree(qcow2_state *s, const uint64_t *l1, uint32_t n, int delta) {
        uint64_t cs = s->cluster_size, stride = s->extended_l2 ? 16 : 8;
        _cleanup_free_ uint8_t *l2 = NULL;
        int r;

        if (n == 0)
                return 0;
        l2 = malloc(cs);
        if (!l2)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
                uint64_t off = l1[i] & OFFSET_MASK;

                if (off == 0)
                        continue;
                if (off % cs != 0 || !range_within(off, cs, s->file_size))
                        return vdisk_error(-EUCLEAN, "qcow2: L2 table at %" PRIu64 " is not cluster-aligned within "
                                           "the file", off);
                r = io_pread(s->io, l2, cs, off);
                if (r < 0)
                        return r;
                r = adjust(s, off, delta, "L2 table");
                if (r < 0)
                        return r;
                for (uint64_t k = 0; k < s->l2_entries; k++) {
                        uint64_t e = get_be64(l2 + k * stride), host;

                        if (e & L2E_COMPRESSED) {
                                uint64_t coff = e & s->coffset_mask;
                                uint64_t nsec = ((e >> s->csize_shift) & s->csize_mask) + 1;

                                r = adjust_range(s, coff & ~UINT64_C(511), nsec * 512, delta, "compressed cluster");
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        host = e & OFFSET_MASK;
                        if (host == 0)
                                continue;
                        if (host % cs != 0)
                                return vdisk_error(-EUCLEAN, "qcow2: data cluster at %" PRIu64 " is not aligned",
                                                   host);
                        r = adjust(s, host, delta, "data cluster");
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* The next L2 entry from index *k on that is not 0, found in one scan of
 * the table over a run of unallocated clusters, not a lookup per entry
 * (extended L2 entries alternate with their bitmaps: one at a time). Its
 * index goes to *k, its place in the table to *ret_idx, its value to
 * *ret_e; returns 1, or 0 at the end of the table. */
static int next_used(qcow2_state *s, tc_table *l2, uint64_t *k, uint64_t *ret_idx, uint64_t *ret_e) {
        int r;

        if (!s->extended_l2) {
                r = tc_find_other(l2, *k, s->l2_entries, 0, k);
                if (r < 0)
                        return r;
        }
        if (*k >= s->l2_entries)
                return 0;
        *ret_idx = s->extended_l2 ? 2 * *k : *k;
        r = tc_get(l2, *ret_idx, ret_e);
        return r < 0 ? r : 1;
}

/* COPIED in the active L1 and L2 tables exactly where the refcount is 1
 * (`clear`: nowhere). An L2 table still shared only has its flags cleared
 * (never set: the other table that names it sees the same entries).
 * Through the caches; the caller flushes. */
static int update_copied(qcow2_state *s, bool clear) {
        int r;

        for (uint32_t i = 0; i < s->l1_size; i++) {
                uint64_t l1e, off, rc, idx, e;
                tc_table *l2;

                r = tc_get(s->l1, i, &l1e);
                if (r < 0)
                        return r;
                off = l1e & OFFSET_MASK;
                if (off == 0)
                        continue;
                r = qcow2_rc_get(s, off, &rc);
                if (r < 0)
                        return r;
                if (clear)
                        rc = 2;
                if (!!(l1e & L2E_COPIED) != (rc == 1)) {
                        r = tc_set(s->l1, i, rc == 1 ? l1e | L2E_COPIED : l1e & ~L2E_COPIED, 0);
                        if (r < 0)
                                return r;
                }
                r = qcow2_get_l2(s, off, &l2);
                if (r < 0)
                        return r;
                for (uint64_t k = 0; (r = next_used(s, l2, &k, &idx, &e)) > 0; k++) {
                        uint64_t drc;

                        if ((e & L2E_COMPRESSED) || (e & OFFSET_MASK) == 0)
                                continue;
                        if (clear)
                                drc = 2;
                        else {
                                r = qcow2_rc_get(s, e & OFFSET_MASK, &drc);
                                if (r < 0)
                                        return r;
                        }
                        if (drc == 1 && !(e & L2E_COPIED) && rc == 1)
                                r = tc_set(l2, idx, e | L2E_COPIED, 0);
                        else if (drc != 1 && (e & L2E_COPIED))
                                r = tc_set(l2, idx, e & ~L2E_COPIED, 0);
                        if (r < 0)
                                return r;
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

static int flush_tables_sync(qcow2_state *s) {
        int r;

        r = qcow2_flush_tables(s);
        return r < 0 ? r : io_flush(s->io);
}

/* An L1 table of n entries: the entries given (COPIED cleared: every L2
 * table it names is shared), zeros up to `total`, in new clusters, counted
 * (not yet durable: the caller syncs). */
static int place_l1_copy(qcow2_state *s, const uint64_t *l1, uint32_t n, uint32_t total, uint64_t *ret) {
        _cleanup_free_ uint8_t *buf = calloc(total, 8);

        if (!buf)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++)
                put_be64(buf + (size_t) i * 8, l1[i] & ~L2E_COPIED);
        return qcow2_table_place(s, buf, (uint64_t) total * 8, 0, 0, QCOW2_PLACE_NOSYNC, ret);
}

/* The header's snapshot fields: nb_snapshots, snapshots_offset. */
static int switch_table(qcow2_state *s, uint32_t nb, uint64_t off) {
        uint8_t h[12];
        int r;

        put_be32(h, nb);
        put_be64(h + 4, off);
        r = qcow2_header_switch(s, HDR_NB_SNAPSHOTS, h, sizeof h);
        if (r < 0)
                return r;
        s->nb_snapshots = nb;
        s->snapshots_offset = off;
        return 0;
}

/* The snapshot table as it is: bytes, entries. */
typedef struct snap_table {
        vdisk_snapshot *v;
        qcow2_snap *e;
        size_t n;
        uint64_t len;           /* bytes from snapshots_offset to the end of the last entry (padded) */
} snap_table;

static void snap_table_done(snap_table *t) {
        vdisk_snapshots_free(t->v, t->n);
        free(t->e);
        *t = (snap_table) {};
}

static int snap_table_read(qcow2_state *s, snap_table *t) {
        int r;

        *t = (snap_table) {};
        r = qcow2_read_snapshots(s, &t->v, &t->e, &t->n);
        if (r < 0)
                return r;
        t->len = t->n ? t->e[t->n - 1].next - s->snapshots_offset : 0;
        return 0;
}

static int begin(qcow2_state *s) {
        assert(s->writable);
        if (qcow2_rc_max(s) < 2)
                return vdisk_error(-EOPNOTSUPP, "qcow2: refcounts of 1 bit cannot count a snapshot's references");
        return qcow2_flush(s);
}

/* A create that failed before its switch (ENOSPC placing the L1 copy, say)
 * gives back the COPIED flags its step 1 cleared, wherever the refcount is
 * still 1 (a tree already counted +1 keeps them clear: leaks only), so the
 * failed call leaves an image `qemu-img check` finds clean but for leaks.
 * Best effort: a crash is what the ordering above is for. Returns r. */
static int create_undo_copied(qcow2_state *s, int r) {
        char why[1024];

        snprintf(why, sizeof why, "%s", vdisk_last_error());
        if (update_copied(s, false) >= 0)
                (void) flush_tables_sync(s);
        return vdisk_error(r, "%s", why);
}

int qcow2_snapshot_create(void *state, const char *name, int64_t date_sec, uint32_t date_nsec) {
        qcow2_state *s = state;
        uint64_t cs = s->cluster_size, id_max = 0, entry_len, new_len, l1_copy = 0, tbl_off, old_off;
        _cleanup_(snap_table_done) snap_table t = {};
        _cleanup_free_ uint8_t *tbl = NULL;
        _cleanup_free_ uint64_t *l1 = NULL;
        size_t name_len = MIN(strlen(name), (size_t) SNAP_NAME_MAX), id_len;
        char id[24];
        uint8_t *p;
        int r;

        /* qemu's rule: a data file holds the active disk only, at guest
         * offsets, so nothing could keep a snapshot's clusters */
        if (s->incompat & INCOMPAT_DATA_FILE)
                return vdisk_error(-EOPNOTSUPP, "qcow2: internal snapshots are not supported with an external "
                                   "data file");
        r = begin(s);
        if (r < 0)
                return r;
        if (s->nb_snapshots >= QCOW2_SNAPSHOTS_MAX)
                return vdisk_error(-EFBIG, "qcow2: %" PRIu32 " snapshots already (at most %u)", s->nb_snapshots,
                                   QCOW2_SNAPSHOTS_MAX);
        r = snap_table_read(s, &t);
        if (r < 0)
                return r;
        /* qemu's rule: one above the largest numeric id */
        for (size_t i = 0; i < t.n; i++)
                id_max = MAX(id_max, (uint64_t) strtoull(t.v[i].id, NULL, 10));
        snprintf(id, sizeof id, "%" PRIu64, id_max + 1);
        id_len = strlen(id);
        entry_len = ALIGN_UP(SNAP_HEADER + SNAP_EXTRA + id_len + name_len, (size_t) 8);
        new_len = t.len + entry_len;
        if (new_len > QCOW2_SNAP_TABLE_MAX)
                return vdisk_error(-EFBIG, "qcow2: the snapshot table would grow past %" PRIu64 " bytes",
                                   QCOW2_SNAP_TABLE_MAX);
        tbl = calloc(1, ALIGN_UP(new_len, cs));
        if (!tbl)
                return -ENOMEM;
        if (t.len > 0) {
                r = io_pread_zerofill(s->io, tbl, (size_t) t.len, s->snapshots_offset);
                if (r < 0)
                        return r;
        }
        r = read_l1(s, s->l1_offset, s->l1_size, &l1);
        if (r < 0)
                return r;

        /* 1. the active tree is about to be shared: COPIED cleared first
         * (a cut now leaves refcount-1 clusters without COPIED: copied on
         * their next write, harmless; qemu-img check calls it an error) */
        r = update_copied(s, true);
        if (r >= 0)
                r = flush_tables_sync(s);
        if (r < 0)
                return r;

        /* 2. the snapshot's L1 table and the new snapshot table in new
         * clusters, and every new reference counted, durable (a cut from
         * here on leaks) */
        if (s->l1_size > 0) {
                r = place_l1_copy(s, l1, s->l1_size, s->l1_size, &l1_copy);
                if (r < 0)
                        return create_undo_copied(s, r);
        }
        p = tbl + t.len;
        put_be64(p, l1_copy);
        put_be32(p + 8, s->l1_size);
        put_be16(p + 12, (uint16_t) id_len);
        put_be16(p + 14, (uint16_t) name_len);
        put_be32(p + 16, (uint32_t) date_sec);
        put_be32(p + 20, date_nsec);
        /* vm clock, 32-bit vm state size: 0 */
        put_be32(p + 36, SNAP_EXTRA);
        /* extra: vm_state_size_large 0, disk_size, icount 0 (as qemu-img) */
        put_be64(p + SNAP_HEADER + 8, s->size);
        memcpy(p + SNAP_HEADER + SNAP_EXTRA, id, id_len);
        memcpy(p + SNAP_HEADER + SNAP_EXTRA + id_len, name, name_len);
        r = qcow2_table_place(s, tbl, new_len, 0, 0, QCOW2_PLACE_NOSYNC, &tbl_off);
        if (r >= 0)
                r = adjust_tree(s, l1, s->l1_size, +1);
        if (r >= 0)
                r = qcow2_sync_refcounts(s);
        if (r < 0)
                return create_undo_copied(s, r);

        /* 3. the switch */
        old_off = s->snapshots_offset;
        r = switch_table(s, s->nb_snapshots + 1, tbl_off);
        if (r < 0)
                return r;

        /* 4. the old table is no longer referenced */
        r = adjust_range(s, old_off, t.len, -1, "snapshot table");
        return r < 0 ? r : qcow2_sync_refcounts(s);
}

int qcow2_snapshot_apply(void *state, size_t i) {
        qcow2_state *s = state;
        uint64_t size, needed, new_l1 = 0, old_l1_off = s->l1_offset;
        uint32_t new_n, old_n = s->l1_size;
        _cleanup_(snap_table_done) snap_table t = {};
        _cleanup_free_ uint64_t *sl1 = NULL, *ol1 = NULL;
        uint8_t h[HDR_SIZE];
        int r;

        /* qemu-img 7.2 refuses any image with persistent bitmaps, enabled
         * or not ("Device has active dirty bitmaps"): the snapshot's content
         * would change the disk behind them. Refused before anything changes. */
        if (s->nb_bitmaps > 0)
                return vdisk_error(-EBUSY, "qcow2: cannot apply a snapshot to an image with persistent bitmaps "
                                   "(%" PRIu32 "): remove them first", s->nb_bitmaps);
        r = begin(s);
        if (r < 0)
                return r;
        r = snap_table_read(s, &t);
        if (r < 0)
                return r;
        assert(i < t.n);
        size = t.v[i].disk_size;
        if (size > QCOW2_SIZE_MAX)
                return vdisk_error(-EUCLEAN, "qcow2: snapshot '%s' has a disk size of %" PRIu64 " bytes", t.v[i].id,
                                   size);
        needed = DIV_ROUND_UP(size, s->l2_coverage);
        if (needed * 8 > QCOW2_L1_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: snapshot '%s' needs an L1 table of %" PRIu64 " entries",
                                   t.v[i].id, needed);
        new_n = (uint32_t) MAX((uint64_t) t.e[i].l1_size, needed);
        r = read_l1(s, t.e[i].l1_offset, t.e[i].l1_size, &sl1);
        if (r < 0)
                return r;
        r = read_l1(s, s->l1_offset, s->l1_size, &ol1);
        if (r < 0)
                return r;

        /* 1. the new active L1 (the snapshot's, every L2 table shared) in
         * new clusters, and the snapshot's tree counted, durable */
        if (new_n > 0) {
                r = place_l1_copy(s, sl1, t.e[i].l1_size, new_n, &new_l1);
                if (r < 0)
                        return r;
        }
        r = adjust_tree(s, sl1, t.e[i].l1_size, +1);
        if (r >= 0)
                r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;

        /* 2. the switch: size, L1 size and offset (one write) */
        r = io_pread(s->io, h, sizeof h, HDR_SIZE);
        if (r < 0)
                return r;
        put_be64(h, size);
        put_be32(h + 12, new_n);
        put_be64(h + 16, new_l1);
        r = qcow2_header_switch(s, HDR_SIZE, h, sizeof h);
        if (r < 0)
                return r;
        qcow2_drop_l2_cache(s);
        s->l1_offset = new_l1;
        s->l1_size = new_n;
        s->size = size;
        r = qcow2_l1_view(s);
        if (r < 0)
                return r;

        /* 3. the old active tree is no longer referenced */
        r = adjust_tree(s, ol1, old_n, -1);
        if (r >= 0)
                r = adjust_range(s, old_l1_off, (uint64_t) old_n * 8, -1, "L1 table");
        if (r >= 0)
                r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;

        /* 4. where a cluster is the active tree's alone now (a hostile or
         * odd table), COPIED */
        r = update_copied(s, false);
        return r < 0 ? r : flush_tables_sync(s);
}

int qcow2_snapshot_delete(void *state, size_t i) {
        qcow2_state *s = state;
        uint64_t cs = s->cluster_size, ent_len, new_len, tbl_off = 0, old_off = s->snapshots_offset;
        _cleanup_(snap_table_done) snap_table t = {};
        _cleanup_free_ uint8_t *old = NULL, *tbl = NULL;
        _cleanup_free_ uint64_t *sl1 = NULL;
        uint64_t start;
        int r;

        r = begin(s);
        if (r < 0)
                return r;
        r = snap_table_read(s, &t);
        if (r < 0)
                return r;
        assert(i < t.n);
        r = read_l1(s, t.e[i].l1_offset, t.e[i].l1_size, &sl1);
        if (r < 0)
                return r;
        start = t.e[i].start - old_off;
        ent_len = t.e[i].next - t.e[i].start;
        new_len = t.len - ent_len;
        old = calloc(1, t.len);
        tbl = calloc(1, ALIGN_UP(MAX(new_len, UINT64_C(1)), cs));
        if (!old || !tbl)
                return -ENOMEM;
        r = io_pread_zerofill(s->io, old, (size_t) t.len, old_off);
        if (r < 0)
                return r;
        memcpy(tbl, old, (size_t) start);
        memcpy(tbl + start, old + start + ent_len, (size_t) (t.len - start - ent_len));

        /* 1. the new table, counted, written */
        if (new_len > 0) {
                r = qcow2_table_place(s, tbl, new_len, 0, 0, 0, &tbl_off);
                if (r < 0)
                        return r;
        }

        /* 2. the switch */
        r = switch_table(s, (uint32_t) (t.n - 1), tbl_off);
        if (r < 0)
                return r;

        /* 3. the snapshot's tree, its L1 table and the old table uncounted */
        r = adjust_tree(s, sl1, t.e[i].l1_size, -1);
        if (r >= 0)
                r = adjust_range(s, t.e[i].l1_offset, (uint64_t) t.e[i].l1_size * 8, -1, "L1 table");
        if (r >= 0)
                r = adjust_range(s, old_off, t.len, -1, "snapshot table");
        if (r >= 0)
                r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;

        /* 4. what the active tree now holds alone gets COPIED */
        r = update_copied(s, false);
        return r < 0 ? r : flush_tables_sync(s);
}

/* ---------------------------------------------------------------- check */

/* Refcounts read from the disk (check runs read-only too): the refcount
 * table, one block at a time. */
typedef struct rc_reader {
        qcow2_state *s;
        uint8_t *reft, *blk;
        uint64_t n_reft, blk_off;
} rc_reader;

static int disk_rc(rc_reader *rr, uint64_t host, uint64_t *ret) {
        qcow2_state *s = rr->s;
        uint64_t rb_entries = (s->cluster_size * 8) >> s->refcount_order, ci = host / s->cluster_size;
        uint64_t rti = ci / rb_entries, b;
        int r;

        *ret = 0;
        if (rti >= rr->n_reft)
                return 0;
        b = get_be64(rr->reft + rti * 8) & UINT64_C(0xfffffffffffffe00);
        if (b == 0 || b % s->cluster_size != 0 || !range_within(b, s->cluster_size, s->file_size))
                return 0;
        if (b != rr->blk_off) {
                r = io_pread(s->io, rr->blk, s->cluster_size, b);
                if (r < 0)
                        return r;
                rr->blk_off = b;
        }
        *ret = qcow2_rc_entry_get(rr->blk, ci % rb_entries, s->refcount_order);
        return 0;
}

static int copied_mismatch(vdisk_check_report *rep, bool repair, const char *fmt, ...) _printf_(3, 4);
static int copied_mismatch(vdisk_check_report *rep, bool repair, const char *fmt, ...) {
        char msg[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        rep->corruptions++;
        if (repair)
                rep->corruptions_fixed++;
        return check_report_add(rep, "%s %s", repair ? "Repairing" : "ERROR", msg);
}

/* qemu-img check's OFLAG_COPIED test: in the active L1 and L2 tables the
 * flag is set exactly where the cluster's refcount is 1 (L2 tables, and
 * data clusters, also the preallocated zero ones); with `repair`, set or
 * cleared to match. Runs after the refcounts were compared (and mended).
 * Without `scan_l2` (the count found every data cluster's flag in agreement
 * with its final refcount) only the L1 entries are looked at. */
int qcow2_check_copied(qcow2_state *s, vdisk_check_report *rep, bool repair, bool scan_l2) {
        _cleanup_free_ uint8_t *reft = NULL, *blk = NULL;
        rc_reader rr = { .s = s };
        bool fixed = false;
        int r;

        if (s->data_io || !s->l1 || s->reft_bytes == 0 || !range_within(s->reft_offset, s->reft_bytes, s->file_size))
                return 0;
        reft = malloc(s->reft_bytes);
        blk = malloc(s->cluster_size);
        if (!reft || !blk)
                return -ENOMEM;
        r = io_pread(s->io, reft, s->reft_bytes, s->reft_offset);
        if (r < 0)
                return r;
        rr = (rc_reader) { .s = s, .reft = reft, .blk = blk, .n_reft = s->reft_bytes / 8, .blk_off = 0 };

        for (uint32_t i = 0; i < s->l1_size; i++) {
                uint64_t l1e, off, rc, idx, e;
                tc_table *l2;

                r = tc_get(s->l1, i, &l1e);
                if (r < 0)
                        return r;
                off = l1e & OFFSET_MASK;
                if (off == 0)
                        continue;
                r = disk_rc(&rr, off, &rc);
                if (r < 0)
                        return r;
                if ((rc == 1) != !!(l1e & L2E_COPIED)) {
                        r = copied_mismatch(rep, repair, "OFLAG_COPIED L2 cluster: l1_index=%" PRIu32 " l1_entry=%"
                                            PRIx64 " refcount=%" PRIu64, i, l1e, rc);
                        if (r >= 0 && repair)
                                r = tc_set(s->l1, i, rc == 1 ? l1e | L2E_COPIED : l1e & ~L2E_COPIED, 0);
                        if (r < 0)
                                return r;
                        fixed = fixed || repair;
                }
                /* a table check already called misplaced is left to it */
                if (!scan_l2 || off % s->cluster_size != 0 || !range_within(off, s->cluster_size, s->file_size))
                        continue;
                r = qcow2_get_l2(s, off, &l2);
                if (r == -EUCLEAN)
                        continue;
                if (r < 0)
                        return r;
                for (uint64_t k = 0; (r = next_used(s, l2, &k, &idx, &e)) > 0; k++) {
                        uint64_t drc;

                        if ((e & L2E_COMPRESSED) || (e & OFFSET_MASK) == 0)
                                continue;
                        r = disk_rc(&rr, e & OFFSET_MASK, &drc);
                        if (r < 0)
                                return r;
                        if ((drc == 1) == !!(e & L2E_COPIED))
                                continue;
                        r = copied_mismatch(rep, repair, "OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
                                            PRIu64, e, drc);
                        if (r >= 0 && repair)
                                r = tc_set(l2, idx, drc == 1 ? e | L2E_COPIED : e & ~L2E_COPIED, 0);
                        if (r < 0)
                                return r;
                        fixed = fixed || repair;
                }
                if (r < 0)
                        return r;
        }
        return fixed ? flush_tables_sync(s) : 0;
}
