/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2: where the host space goes. Reuse of free clusters, discard, resize
 * (grow and shrink) and compact; docs/formats/qcow2.md "Space".
 *
 * Every change keeps qcow2's rule: a cluster a table points to has a
 * refcount of at least one on disk. So a new place is counted before the
 * table that points to it is written, and an old place loses its count only
 * after the table that pointed to it was written and flushed (the
 * pending_free list, emptied by qcow2_flush()). A crash in between leaks a
 * cluster at worst; qemu-img check -r leaks gives it back.
 *
 *   reuse     a new cluster (data, L2 table) goes into the lowest cluster
 *             with refcount 0 at or above a hint, below the end of the file;
 *             the hint only moves forward while searching and back when a
 *             refcount drops to 0. Refcount blocks, the refcount table and
 *             L1 tables (several clusters in a row) are still appended.
 *   discard   a whole cluster: its L2 entry becomes 0 (no backing file) or a
 *             zero cluster (v3 with a backing file: the parent must not show
 *             through); v2 with a backing file has no zero clusters: the
 *             core writes zeros into the cluster instead (it keeps its
 *             space). The old cluster is freed at the next flush.
 *   resize    grow: a larger L1 table is written at the end of the file
 *             and counted, flushed, then the header switches to it (size, L1
 *             size and offset in one write), flushed, then the old L1's
 *             clusters are freed. Shrink: the header's size and L1 size
 *             first, flushed (what lies past the end is unreachable from
 *             then on: the rest can only leak), then the entries past the
 *             end are dropped (L2 entries, whole L2 tables from the L1),
 *             flushed, the clusters lose their counts (and the L1 table's
 *             clusters past its new size), flushed, and the file is cut
 *             after its last referenced cluster. Refused with internal
 *             snapshots (as qemu does).
 *   compact   every data cluster is asked about (the core's compact_fn):
 *             equal to what shows through below, it is unallocated; all
 *             zeros over a parent with data, a zero cluster (v3); zero
 *             clusters give up the space they kept; L2 tables left empty are
 *             dropped. Flushed. With an external data file (not raw), the
 *             ranges of the clusters the tables do not map are punched out
 *             of it then. Then the metadata moves down (L2 tables, bitmap
 *             tables and directory, the snapshots' own L2 tables, their L1
 *             tables and the snapshot table, refcount blocks, the L1 table,
 *             the refcount table: each into the lowest free clusters below it,
 *             by qcow2_table_place, the pointer switched, the old place
 *             freed; refcount blocks that count nothing leave the refcount
 *             table), fmt_pack moves the highest data clusters and bitmap
 *             data clusters into the lowest free clusters (copy, flush, the
 *             new place counted, the L2 or bitmap table entry, flushed, the
 *             old place freed, flushed), the metadata moves once more (and,
 *             while that moved or dropped something, the data packs and the
 *             metadata moves again, a few rounds at most), and the file is
 *             cut after its last referenced cluster. A cancel
 *             stops between batches and moves; every step is a valid image.
 *             With internal snapshots, L2 tables and data clusters with a
 *             refcount above 1 are neither changed nor moved; what one
 *             snapshot holds alone (its tables, its data clusters of
 *             refcount 1) moves, its pointer switched in place.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backends/qcow2-int.h"
#include "fmt/compact.h"
#include "util/util.h"

#define HDR_SIZE        24u     /* size (8), crypt_method (4), l1_size (4), l1_table_offset (8) */

/* ---------------------------------------------------------------- reuse */

void qcow2_note_free(qcow2_state *s, uint64_t host) {
        if (host < s->free_hint)
                s->free_hint = host;
}

static bool in_range(uint64_t off, uint64_t start, uint64_t len) {
        return len > 0 && off >= start && off < start + len;
}

/* Metadata that never holds data, whatever the refcounts say. */
static bool is_fixed(const qcow2_state *s, uint64_t off) {
        return off < s->cluster_size ||
               in_range(off, s->l1_offset & ~(s->cluster_size - 1),
                        ALIGN_UP((s->l1_offset & (s->cluster_size - 1)) + (uint64_t) s->l1_size * 8,
                                 s->cluster_size)) ||
               in_range(off, s->reft_offset, s->reft_bytes) ||
               (s->nb_snapshots > 0 && off == s->snapshots_offset);
}

/* Held by the reservation in progress (commit may allocate an L2 table). */
static bool is_reserved(const qcow2_state *s, uint64_t off) {
        return s->reserved && in_range(off, s->res_host, s->res_clusters * s->cluster_size);
}

static int is_free(qcow2_state *s, uint64_t off, bool *ret) {
        uint64_t rc;
        int r;

        *ret = false;
        if (is_fixed(s, off) || is_reserved(s, off))
                return 0;
        r = qcow2_rc_get(s, off, &rc);
        if (r < 0)
                return r;
        *ret = rc == 0;
        return 0;
}

/* Up to `max` contiguous free clusters (*ret_n of them, at least one): the
 * lowest free one and the free ones right after it, or else new space at
 * the end of the file. */
int qcow2_alloc_run(qcow2_state *s, uint64_t max, uint64_t *ret, uint64_t *ret_n, int *ret_fresh) {
        uint64_t cs = s->cluster_size, end = MIN(hostalloc_next(&s->alloc), ALIGN_DOWN(s->file_size, cs));
        int r;

        assert(max >= 1);
        for (uint64_t off = ALIGN_UP(s->free_hint, cs); off < end; off += cs) {
                uint64_t n = 1;
                bool fr;

                r = is_free(s, off, &fr);
                if (r < 0)
                        return r;
                s->free_hint = off + cs;
                if (!fr)
                        continue;
                for (; n < max && off + n * cs < end; n++) {
                        r = is_free(s, off + n * cs, &fr);
                        if (r < 0)
                                return r;
                        if (!fr)
                                break;
                }
                s->free_hint = off + n * cs;
                *ret = off;
                *ret_n = n;
                if (ret_fresh)
                        *ret_fresh = 0;
                return 0;
        }
        if (end > s->free_hint)
                s->free_hint = end;
        r = hostalloc_alloc(&s->alloc, max * cs, QCOW2_HOST_LIMIT, ret, ret_fresh);
        if (r < 0)
                return r;
        *ret_n = max;
        return 0;
}

int qcow2_alloc_cluster(qcow2_state *s, uint64_t *ret, int *ret_fresh) {
        uint64_t n;

        return qcow2_alloc_run(s, 1, ret, &n, ret_fresh);
}

/* A refcount block covers the cluster at `off` (a new place without one
 * would make one at the end of the file). */
static bool has_block(qcow2_state *s, uint64_t off) {
        uint64_t rti = off / s->cluster_size / s->rb_entries, e = 0;

        return rti < tc_table_entries(s->reft) && tc_get(s->reft, rti, &e) >= 0 && e != 0;
}

/* The lowest free run (compact's metadata moves); the hint moves only over
 * clusters found in use (or without a refcount block). */
int qcow2_alloc_low(qcow2_state *s, uint64_t bytes, uint64_t limit, uint64_t *ret) {
        uint64_t cs = s->cluster_size, start = 0, run = 0;
        bool first = true;
        int r;

        assert(bytes > 0 && bytes % cs == 0);
        for (uint64_t off = ALIGN_UP(MAX(s->free_hint, cs), cs); off + cs <= limit; off += cs) {
                uint64_t rc = 1;

                if (!is_fixed(s, off) && !is_reserved(s, off) && has_block(s, off)) {
                        r = qcow2_rc_get(s, off, &rc);
                        if (r < 0)
                                return r;
                }
                if (rc != 0) {
                        run = 0;
                        if (first)
                                s->free_hint = off + cs;
                        continue;
                }
                first = false;
                if (run == 0)
                        start = off;
                run += cs;
                if (run == bytes) {
                        hostalloc_note_used(&s->alloc, start, bytes);
                        *ret = start;
                        return 0;
                }
        }
        return -ENOSPC;
}

static void queue_free(qcow2_state *s, uint64_t host) {
        qcow2_queue_free(s, host);
}

/* Drops what entry `e` references (at the next flush). */
static void queue_free_entry(qcow2_state *s, uint64_t e) {
        /* data clusters in an external data file have no refcounts */
        if (s->data_io)
                return;
        if (e & L2E_COMPRESSED)
                qcow2_queue_free_compressed(s, e);
        else if (e & OFFSET_MASK)
                queue_free(s, e & OFFSET_MASK);
}

/* Refcounts, then the file cut after the last cluster with a reference. */
static int trim_tail(qcow2_state *s) {
        uint64_t cs = s->cluster_size, ci = DIV_ROUND_UP(s->file_size, cs), end;
        int r;

        r = qcow2_flush(s);
        if (r < 0)
                return r;
        while (ci > 1) {
                uint64_t rc;

                if (is_fixed(s, (ci - 1) * cs))
                        break;
                r = qcow2_rc_get(s, (ci - 1) * cs, &rc);
                if (r < 0)
                        return r;
                if (rc > 0)
                        break;
                ci--;
        }
        end = ci * cs;
        if (end >= s->file_size)
                return 0;
        r = io_truncate(s->io, end);
        if (r < 0)
                return r;
        s->file_size = end;
        if (!s->data_io)
                s->data_size = end;   /* else the data file's, unchanged */
        hostalloc_truncated(&s->alloc, end);
        hostalloc_rewind(&s->alloc, end);
        if (s->free_hint > end)
                s->free_hint = end;
        return 0;
}

/* ---------------------------------------------------------------- discard */

/* Whole subclusters [offset, offset+len) of one cluster (extended L2, not
 * the whole cluster): their allocation bits cleared, their zero bits set
 * over a backing file (the parent must not show through) and cleared
 * without one; a cluster left with no allocated subcluster gives up its
 * host cluster (the entry's offset goes, the zero bits stay). The L2 entry
 * (16 aligned bytes) is written before the refcount drops (at the next
 * flush): a crash leaks, never corrupts. */
static int discard_subclusters(qcow2_state *s, uint64_t offset, uint64_t len) {
        uint64_t cl = offset >> s->cluster_bits, in = offset - (cl << s->cluster_bits), e, bitmap, ne, nb;
        uint64_t l1i = cl / s->l2_entries, l2i = cl % s->l2_entries;
        unsigned first = (unsigned) (in / s->subcluster_size);
        unsigned end = (unsigned) DIV_ROUND_UP(in + len, s->subcluster_size);
        uint32_t mask = (uint32_t) (((UINT64_C(1) << end) - 1) & ~((UINT64_C(1) << first) - 1));
        uint32_t alloc, zeros;
        tc_table *l2;
        int r;

        assert(end <= QCOW2_SUBCLUSTERS && first < end);
        /* a raw data file must read as the disk does: the core writes zeros */
        if (s->data_io && (s->autoclear & AUTOCLEAR_DATA_RAW))
                return -EOPNOTSUPP;
        r = qcow2_l2_entry(s, cl, &e, &bitmap);
        if (r < 0)
                return r;
        if (e & L2E_COMPRESSED)
                return -EOPNOTSUPP;     /* no subclusters: the core writes zeros */
        alloc = (uint32_t) bitmap & ~mask;
        zeros = s->backing_name ? (uint32_t) (bitmap >> 32) | mask : (uint32_t) (bitmap >> 32) & ~mask;
        ne = alloc == 0 ? 0 : e;
        nb = (uint64_t) zeros << 32 | alloc;
        if (ne == e && nb == bitmap)
                return 0;
        r = qcow2_mark_dirty(s);
        if (r < 0)
                return r;
        r = qcow2_l2_for_write(s, l1i, &l2);
        if (r >= 0)
                r = tc_set(l2, 2 * l2i, ne, 0);
        if (r >= 0)
                r = tc_set(l2, 2 * l2i + 1, nb, 0);
        if (r < 0)
                return r;
        if (ne != e)
                queue_free_entry(s, e);
        return 0;
}

int qcow2_discard(void *state, uint64_t offset, uint64_t len) {
        qcow2_state *s = state;
        uint64_t first = offset >> s->cluster_bits, end = DIV_ROUND_UP(offset + len, s->cluster_size);
        bool zero = s->backing_name != NULL;
        int r;

        assert(s->writable);
        if (offset % s->cluster_size != 0 || (len < s->cluster_size && offset + len < s->size)) {
                /* whole subclusters within one cluster (layout.discard_unit) */
                assert(s->extended_l2 && offset % s->subcluster_size == 0 &&
                       (offset + len - 1) / s->cluster_size == offset / s->cluster_size);
                return discard_subclusters(s, offset, len);
        }
        if (zero && s->version < 3)
                return -EOPNOTSUPP;   /* the core writes zeros */
        r = qcow2_mark_dirty(s);
        if (r < 0)
                return r;
        for (uint64_t cl = first; cl < end; cl++) {
                uint64_t l1i = cl / s->l2_entries, l2i = cl % s->l2_entries, e, bitmap, ne = 0, nb = 0;
                tc_table *l2;

                r = qcow2_l2_entry(s, cl, &e, &bitmap);
                if (r < 0)
                        return r;
                if (zero) {
                        if (s->extended_l2)
                                nb = (uint64_t) UINT32_MAX << 32;
                        else
                                ne = L2E_ZERO;
                }
                if (e == ne && bitmap == nb)
                        continue;
                r = qcow2_l2_for_write(s, l1i, &l2);
                if (r < 0)
                        return r;
                r = tc_set(l2, s->extended_l2 ? 2 * l2i : l2i, ne, 0);
                if (r >= 0 && s->extended_l2)
                        r = tc_set(l2, 2 * l2i + 1, nb, 0);
                if (r < 0)
                        return r;
                queue_free_entry(s, e);
        }
        return 0;
}

/* ---------------------------------------------------------------- resize */

/* The switch: size, L1 size and offset in one write. Once written, the
 * state follows it (a failed flush after it may or may not have made it
 * durable: the file says the new values, and so does the state). Returns
 * the flush's error after the state changed, with *ret_written set. */
static int write_header_size(qcow2_state *s, uint64_t size, uint32_t l1_size, uint64_t l1_offset,
                             bool *ret_written) {
        uint8_t b[HDR_SIZE];
        int r;

        *ret_written = false;
        put_be64(b, size);
        put_be32(b + 8, 0);     /* crypt_method: 0 (checked at open) */
        put_be32(b + 12, l1_size);
        put_be64(b + 16, l1_offset);
        r = io_pwrite(s->io, b, sizeof b, 24);
        if (r < 0)
                return r;
        *ret_written = true;
        s->size = size;
        s->l1_size = l1_size;
        s->l1_offset = l1_offset;
        return io_flush(s->io);
}

static uint64_t l1_clusters(const qcow2_state *s, uint64_t l1_size) {
        return DIV_ROUND_UP(l1_size * 8, s->cluster_size);
}

static int grow_l1(qcow2_state *s, uint64_t new_size, uint32_t new_l1) {
        uint64_t cs = s->cluster_size, bytes = l1_clusters(s, new_l1) * cs, off;
        uint64_t old_off = s->l1_offset, old_n = s->l1_size;
        _cleanup_free_ uint8_t *tbl = calloc(1, bytes);
        bool written;
        int r;

        if (!tbl)
                return -ENOMEM;
        if (old_n > 0) {
                r = tc_read(s->l1, 0, tbl, old_n * 8);
                if (r < 0)
                        return r;
        }
        r = qcow2_table_place(s, tbl, bytes, 0, 0, 0, &off);
        if (r < 0)
                return r;
        /* the switch (a failed flush after it: the old table leaks) */
        r = write_header_size(s, new_size, new_l1, off, &written);
        if (written) {
                int rv = qcow2_l1_view(s);

                if (r >= 0)
                        r = rv;
        }
        if (r < 0)
                return r;
        /* The image has its new size now, whatever follows: the old table's
         * clusters are freed, and should that fail they leak (the refcount
         * blocks stay dirty: the next flush tries again), which is no reason
         * to fail a resize that is done. */
        for (uint64_t c = 0; c < l1_clusters(s, old_n); c++)
                queue_free(s, (old_off & ~(cs - 1)) + c * cs);
        if (qcow2_flush(s) < 0)
                vdisk_clear_error();
        return 0;
}

/* The header first: once it says the new size, what lies past it is
 * unreachable, so dropping it (entries, whole L2 tables, the L1 table's
 * tail) can only leak if it fails; a failed call before the switch changed
 * nothing. */
static int shrink(qcow2_state *s, uint64_t new_size, uint32_t new_l1) {
        uint64_t cs = s->cluster_size, first_cl = DIV_ROUND_UP(new_size, cs), old_l1 = s->l1_size;
        uint64_t l1_base = s->l1_offset & ~(cs - 1);
        bool written;
        int r;

        if (s->nb_snapshots > 0)
                return vdisk_error(-EOPNOTSUPP, "qcow2: an image with internal snapshots cannot shrink");
        r = write_header_size(s, new_size, new_l1, s->l1_offset, &written);
        if (r < 0)
                return r;   /* after the write: leaks at worst, the state says the new size */
        /* s->l1 is still the old table's view (old_l1 entries) */
        for (uint64_t l1i = first_cl / s->l2_entries; l1i < old_l1; l1i++) {
                uint64_t l1e, l2off;
                tc_table *l2;

                r = tc_get(s->l1, l1i, &l1e);
                if (r < 0)
                        goto leak;
                l2off = l1e & OFFSET_MASK;
                if (l2off == 0)
                        continue;
                r = qcow2_get_l2(s, l2off, &l2);
                if (r < 0)
                        goto leak;
                for (uint64_t l2i = 0; l2i < s->l2_entries; l2i++) {
                        uint64_t cl = l1i * s->l2_entries + l2i, e;

                        if (cl < first_cl)
                                continue;
                        r = tc_get(l2, s->extended_l2 ? 2 * l2i : l2i, &e);
                        if (r < 0)
                                goto leak;
                        if (e == 0)
                                continue;
                        if (l1i < new_l1) {
                                r = tc_set(l2, s->extended_l2 ? 2 * l2i : l2i, 0, 0);
                                if (r >= 0 && s->extended_l2)
                                        r = tc_set(l2, 2 * l2i + 1, 0, 0);
                                if (r < 0)
                                        goto leak;
                        }
                        queue_free_entry(s, e);
                }
                if (l1i >= new_l1) {
                        r = tc_set(s->l1, l1i, 0, 0);
                        if (r >= 0)
                                r = qcow2_drop_table(s, l2off);
                        if (r < 0)
                                goto leak;
                        queue_free(s, l2off);
                }
        }
        /* the tables without the entries, on disk before the view shrinks
         * (and before any refcount drops: qcow2_flush writes tables first) */
        r = qcow2_flush_tables(s);
        if (r < 0)
                goto leak;
        r = qcow2_l1_view(s);
        if (r < 0)
                return r;   /* no view: the image cannot go on */
        for (uint64_t c = l1_clusters(s, new_l1); c < l1_clusters(s, old_l1); c++)
                queue_free(s, l1_base + c * cs);
        r = trim_tail(s);
leak:
        /* done all the same: what was not dropped leaks */
        if (r < 0)
                vdisk_clear_error();
        if (s->l1 && tc_table_entries(s->l1) != s->l1_size && !tc_table_is_dirty(s->l1))
                return qcow2_l1_view(s);
        return 0;
}

/* Growing: the part of the last cluster past the old end must read zeros
 * (a reused cluster keeps what it held there), before the header says so. */
static int zero_tail(qcow2_state *s, uint64_t new_size) {
        uint64_t cs = s->cluster_size, in = s->size % cs, cl = s->size / cs, e, b, host, len;
        int r;

        if (in == 0)
                return 0;
        r = qcow2_l2_entry(s, cl, &e, &b);
        if (r < 0)
                return r;
        host = e & OFFSET_MASK;
        if (s->data_io) {
                /* in the external data file (where offset 0 is a cluster
                 * too, marked by COPIED); its size is not this file's */
                if (host == 0 && !(e & L2E_COPIED))
                        return 0;
                len = MIN(cs - in, new_size - s->size);
                r = io_write_zeroes(s->data_io, host + in, len);
                return r < 0 ? r : io_flush(s->data_io);
        }
        if ((e & L2E_COMPRESSED) || host == 0)
                return 0;
        len = MIN(cs - in, new_size - s->size);
        r = io_write_zeroes(s->io, host + in, len);
        if (r < 0)
                return r;
        if (host + in + len > s->file_size)
                s->file_size = s->data_size = host + in + len;
        return io_flush(s->io);
}

/* An external data file holds every cluster at its guest offset, and is made
 * as large as the disk (create; qemu does the same): it grows with the disk,
 * before the header says the new size, or a cluster allocated in the new
 * range but never written (zeros) would lie past its end. */
static int grow_data_file(qcow2_state *s, uint64_t new_size) {
        int r;

        if (!s->data_io || s->data_size >= new_size)
                return 0;
        r = io_truncate(s->data_io, new_size);
        if (r >= 0)
                r = io_flush(s->data_io);
        if (r < 0)
                return r;
        s->data_size = new_size;
        return 0;
}

/* The resize proper; the header switches at one point (s->size follows). */
static int resize_switch(qcow2_state *s, uint64_t new_size, uint32_t need) {
        bool written;
        int r;

        if (new_size < s->size)
                return shrink(s, new_size, need);
        r = zero_tail(s, new_size);
        if (r < 0)
                return r;
        r = grow_data_file(s, new_size);
        if (r < 0)
                return r;
        if (need > s->l1_size)
                return grow_l1(s, new_size, need);
        return write_header_size(s, new_size, s->l1_size, s->l1_offset, &written);
}

int qcow2_resize(void *state, uint64_t new_size, vdisk_progress *p) {
        qcow2_state *s = state;
        uint64_t need = DIV_ROUND_UP(new_size, s->l2_coverage);
        int r;

        assert(s->writable);
        if (need * 8 > QCOW2_L1_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: %" PRIu64 " bytes need an L1 table of more than %" PRIu64
                                   " bytes", new_size, QCOW2_L1_MAX_BYTES);
        if (new_size < s->size && s->nb_snapshots > 0)
                return vdisk_error(-EOPNOTSUPP, "qcow2: an image with internal snapshots cannot shrink");
        r = qcow2_mark_dirty(s);
        if (r >= 0)
                r = qcow2_flush(s);
        if (r < 0)
                return r;
        if (s->nb_bitmaps == 0 || new_size == s->size)
                return resize_switch(s, new_size, (uint32_t) need);
        /* persistent bitmaps follow the size: their new tables first (marked
         * in use), then the switch, then the marks cleared (or, when the
         * header still says the old size, the old tables put back) */
        r = qcow2_bitmaps_resize_begin(s, new_size);
        if (r < 0)
                return r;
        r = resize_switch(s, new_size, (uint32_t) need);
        (void) qcow2_bitmaps_resize_end(s, s->size == new_size);
        return r;
}

/* ---------------------------------------------------------------- compact */

typedef struct cpack {
        qcow2_state *s;
} cpack;

/* A pack unit's key: a data cluster's virtual cluster number, or, with this
 * bit, a bitmap data cluster (bitmap i, table entry j: i << 32 | j), or,
 * with KEY_SNAP, a data cluster a snapshot holds alone (the file offset of
 * its entry in the snapshot's L2 table). */
#define KEY_BITMAP      (UINT64_C(1) << 63)
#define KEY_SNAP        (UINT64_C(1) << 62)

int qcow2_entry_switch(qcow2_state *s, uint64_t at, uint64_t from, uint64_t to, const char *what) {
        uint8_t b[8];
        uint64_t e;
        int r;

        r = io_pread(s->io, b, sizeof b, at);
        if (r < 0)
                return r;
        e = get_be64(b);
        if ((e & OFFSET_MASK) != from || (e & L2E_COMPRESSED))
                return vdisk_error(-EUCLEAN, "qcow2: %s: the cluster at %" PRIu64 " changed during compact", what,
                                   from);
        r = qcow2_rc_update(s, to, +1, NULL);
        if (r >= 0)
                r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;
        put_be64(b, (e & ~OFFSET_MASK) | to);
        r = io_pwrite(s->io, b, sizeof b, at);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        hostalloc_note_used(&s->alloc, to, s->cluster_size);
        queue_free(s, from);
        return 0;
}

/* Data cluster `key` (its virtual cluster number) moves: the new place is
 * counted now (written with the refcounts before the L2 table), the old
 * one freed after the L2 table is on disk. */
static int cpack_repoint(void *user, uint64_t key, uint64_t from, uint64_t to) {
        qcow2_state *s = ((cpack *) user)->s;
        uint64_t l1i = key / s->l2_entries, l2i = key % s->l2_entries, i = s->extended_l2 ? 2 * l2i : l2i, e;
        tc_table *l2;
        int r;

        if (key & KEY_BITMAP)
                return qcow2_bitmap_data_switch(s, (uint32_t) ((key & ~KEY_BITMAP) >> 32), (uint32_t) key, from, to);
        if (key & KEY_SNAP)
                return qcow2_entry_switch(s, key & ~KEY_SNAP, from, to, "a snapshot's L2 table");
        r = qcow2_l2_for_write(s, l1i, &l2);
        if (r >= 0)
                r = tc_get(l2, i, &e);
        if (r < 0)
                return r;
        if ((e & OFFSET_MASK) != from || (e & L2E_COMPRESSED))
                return vdisk_error(-EUCLEAN, "qcow2: the cluster at %" PRIu64 " changed during compact", from);
        r = qcow2_l2_set_counted(s, l2, i, (e & ~OFFSET_MASK) | to, to, 0);
        if (r < 0)
                return r;
        hostalloc_note_used(&s->alloc, to, s->cluster_size);
        queue_free(s, from);
        return 0;
}

static int cpack_commit(void *user) {
        return qcow2_flush(((cpack *) user)->s);
}

/* Whether the table or data cluster at `off` is referenced from elsewhere
 * too (an internal snapshot's tree): compact neither changes nor moves it. */
static int is_shared(qcow2_state *s, uint64_t off, bool *ret) {
        uint64_t rc = 1;
        int r = 0;

        if (s->nb_snapshots > 0)
                r = qcow2_rc_get(s, off, &rc);
        *ret = rc != 1;
        return r;
}

/* The verdicts for one cluster; *ret_e, *ret_b: the new entry (unchanged
 * when kept). */
static int compact_cluster(qcow2_state *s, fmt_scan *sc, uint64_t cl, uint64_t e, uint64_t b,
                           uint64_t *ret_e, uint64_t *ret_b) {
        uint64_t cs = s->cluster_size, voff = cl * cs, vlen = MIN(cs, s->size - voff), host = e & OFFSET_MASK;
        vdisk_io *io = s->data_io ? s->data_io : s->io;
        compact_verdict v;
        int r;

        *ret_e = e, *ret_b = b;
        if (e & L2E_COMPRESSED)
                return 0;       /* kept as it is: it shares its host clusters */
        if (!s->extended_l2) {
                if (e & L2E_ZERO) {
                        *ret_e = L2E_ZERO;      /* a zero cluster keeps no space */
                        return 0;
                }
                fmt_scan_begin(sc);
                r = fmt_scan_piece(sc, io, host, voff, vlen);
                if (r < 0)
                        return r;
                v = fmt_scan_verdict(sc);
                if (v == COMPACT_UNALLOC)
                        *ret_e = 0;
                else if (v == COMPACT_ZERO && s->version >= 3)
                        *ret_e = L2E_ZERO;
                return 0;
        }
        /* extended L2: only the allocated subclusters are asked about */
        uint32_t alloc = (uint32_t) b, zeros = (uint32_t) (b >> 32);
        uint64_t sc_size = s->subcluster_size;

        fmt_scan_begin(sc);
        for (unsigned i = 0; i < QCOW2_SUBCLUSTERS && !fmt_scan_keep(sc); i++) {
                uint64_t so = i * sc_size;

                if (!((alloc >> i) & 1) || so >= vlen)
                        continue;
                r = fmt_scan_piece(sc, io, host + so, voff + so, MIN(sc_size, vlen - so));
                if (r < 0)
                        return r;
        }
        v = fmt_scan_verdict(sc);
        if (v == COMPACT_UNALLOC) {
                *ret_e = 0;
                *ret_b = (uint64_t) zeros << 32;
        } else if (v == COMPACT_ZERO) {
                *ret_e = 0;
                *ret_b = (uint64_t) (zeros | alloc) << 32;
        }
        return 0;
}

/* The cluster's host space: in an external data file offset 0 is a cluster
 * too, when COPIED is set. */
static bool has_space(const qcow2_state *s, uint64_t e) {
        return (e & OFFSET_MASK) != 0 || (s->data_io && !(e & L2E_COMPRESSED) && (e & L2E_COPIED));
}

/* Phase 1: the verdicts, applied to the tables in memory (each change is a
 * valid image on its own); L2 tables left empty leave the L1 table. A raw
 * data file must keep reading as the disk: not scanned at all. *ret_ident:
 * every cluster with space in an external data file lies at its guest
 * offset. */
static int compact_scan(qcow2_state *s, compact_fn fn, void *ctx, vdisk_progress *p, bool *ret_ident) {
        uint64_t cs = s->cluster_size, n_cl = DIV_ROUND_UP(s->size, cs);
        size_t buf_size = (size_t) MIN(cs, UINT64_C(1) << 20);
        _cleanup_free_ uint8_t *buf = buf_alloc(buf_size);
        fmt_scan sc = { .fn = fn, .ctx = ctx, .buf = buf, .buf_size = buf_size };
        int r;

        if (!buf)
                return vdisk_error(-ENOMEM, "out of memory");
        if (s->data_io && (s->autoclear & AUTOCLEAR_DATA_RAW))
                return progress_add(p, s->size);
        for (uint64_t l1i = 0; l1i < s->l1_size; l1i++) {
                uint64_t l1e, l2off, first = l1i * s->l2_entries;
                bool empty = true, shared;
                tc_table *l2;

                if (first >= n_cl)
                        break;
                r = tc_get(s->l1, l1i, &l1e);
                if (r < 0)
                        return r;
                l2off = l1e & OFFSET_MASK;
                r = l2off ? is_shared(s, l2off, &shared) : 0;
                if (r < 0)
                        return r;
                if (l2off == 0 || shared) {
                        r = progress_add(p, MIN(s->l2_coverage, s->size - first * cs));
                        if (r < 0)
                                return r;
                        continue;
                }
                for (uint64_t l2i = 0; l2i < s->l2_entries; l2i++) {
                        uint64_t cl = first + l2i, e, b = 0, ne, nb;

                        r = qcow2_get_l2(s, l2off, &l2);
                        if (r >= 0)
                                r = qcow2_l2_get(s, l2, l2i, &e, &b);
                        if (r < 0)
                                return r;
                        if (has_space(s, e) && (e & OFFSET_MASK) != cl * cs)
                                *ret_ident = false;
                        if (cl < n_cl && (has_space(s, e) || (e & L2E_COMPRESSED))) {
                                r = compact_cluster(s, &sc, cl, e, b, &ne, &nb);
                                if (r < 0)
                                        return r;
                                if (ne != e || nb != b) {
                                        r = qcow2_get_l2(s, l2off, &l2);
                                        if (r >= 0)
                                                r = tc_set(l2, s->extended_l2 ? 2 * l2i : l2i, ne, 0);
                                        if (r >= 0 && s->extended_l2)
                                                r = tc_set(l2, 2 * l2i + 1, nb, 0);
                                        if (r < 0)
                                                return r;
                                        if ((ne & OFFSET_MASK) == 0)
                                                queue_free_entry(s, e);
                                        e = ne, b = nb;
                                }
                        }
                        if (e != 0 || b != 0)
                                empty = false;
                        if (cl < n_cl) {
                                r = progress_add(p, MIN(cs, s->size - cl * cs));
                                if (r < 0)
                                        return r;
                        }
                }
                if (empty) {
                        r = tc_set(s->l1, l1i, 0, 0);
                        if (r >= 0)
                                r = qcow2_drop_table(s, l2off);
                        if (r < 0)
                                return r;
                        queue_free(s, l2off);
                }
        }
        return 0;
}

static int punch(qcow2_state *s, uint64_t start, uint64_t end) {
        int r;

        end = MIN(end, s->size);
        if (start >= end)
                return 0;
        r = io_punch_hole(s->data_io, start, end - start);
        return r == -EOPNOTSUPP ? 0 : r;   /* the space stays; the disk reads the same */
}

/* An external data file holds each cluster at its guest offset (the spec's
 * rule): once the tables are durable, the range of every cluster they do not
 * map is punched out of it. That gives back what the scan unallocated, and
 * what a compact cut before its punches left. Only when every cluster with
 * space lies at its guest offset (else a range could be another cluster's). */
static int punch_unmapped(qcow2_state *s) {
        uint64_t cs = s->cluster_size, n_cl = DIV_ROUND_UP(s->size, cs), run = 0;
        int r;

        for (uint64_t l1i = 0; l1i < s->l1_size && l1i * s->l2_entries < n_cl; l1i++) {
                uint64_t l1e;
                tc_table *l2;

                r = tc_get(s->l1, l1i, &l1e);
                if (r < 0)
                        return r;
                if ((l1e & OFFSET_MASK) == 0)
                        continue;       /* the run goes on */
                for (uint64_t l2i = 0; l2i < s->l2_entries && l1i * s->l2_entries + l2i < n_cl; l2i++) {
                        uint64_t cl = l1i * s->l2_entries + l2i, e;

                        r = qcow2_get_l2(s, l1e & OFFSET_MASK, &l2);
                        if (r >= 0)
                                r = tc_get(l2, s->extended_l2 ? 2 * l2i : l2i, &e);
                        if (r < 0)
                                return r;
                        if (!has_space(s, e))
                                continue;
                        r = punch(s, run, cl * cs);
                        if (r < 0)
                                return r;
                        run = (cl + 1) * cs;
                }
        }
        r = punch(s, run, s->size);
        return r < 0 ? r : io_flush(s->data_io);
}

/* Phase 2: the metadata moves down into the lowest free clusters, each
 * table on its own (qcow2_table_place: the copy, counted, durable; the
 * switch, flushed; the old place uncounted, flushed with the next step):
 * L2 tables (the L1 entry switches), bitmap tables and the bitmap
 * directory (the directory entry; the header extension), refcount blocks
 * (the refcount table entry; a block counting its own new place holds that
 * count, since the copy is taken after the counts are written), the L1
 * table and the refcount table (the header's offset). A table with no free
 * place below it stays. */
static int move_done(qcow2_state *s, int r, bool *ret_moved) {
        *ret_moved = r >= 0;
        if (r == -ENOSPC) {
                vdisk_clear_error();
                return 0;   /* no room below: it stays */
        }
        return r;
}

/* L2 tables move in batches: each copied into the lowest free cluster
 * below it and counted (not yet durable), then the whole batch made durable
 * at once, the L1 entries switched (flags kept), flushed, the old places
 * uncounted. */
#define L2_BATCH 64u

typedef struct l2_move {
        uint64_t l1i, from, to;
} l2_move;

/* The table's content from the cache (counting a new place does not change
 * an L2 table: no refcount write is needed before the copy, unlike a
 * refcount block's move) */
static int place_l2(qcow2_state *s, uint64_t from, uint8_t *buf, uint64_t *ret_to, bool *ret_moved) {
        tc_table *l2;
        int r;

        r = qcow2_get_l2(s, from, &l2);
        if (r >= 0)
                r = tc_read(l2, 0, buf, s->cluster_size);
        if (r >= 0)
                r = qcow2_drop_table(s, from);   /* written back when dirty */
        if (r < 0)
                return r;
        return move_done(s, qcow2_table_place(s, buf, s->cluster_size, 0, from,
                                              QCOW2_PLACE_LOW | QCOW2_PLACE_NOSYNC, ret_to), ret_moved);
}

static int switch_l2s(qcow2_state *s, const l2_move *m, size_t n) {
        int r;

        if (n == 0)
                return 0;
        r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                uint64_t l1e;

                r = tc_get(s->l1, m[i].l1i, &l1e);
                if (r >= 0)
                        r = tc_set(s->l1, m[i].l1i, (l1e & ~OFFSET_MASK) | m[i].to, 0);
                if (r < 0)
                        return r;
        }
        r = qcow2_flush_tables(s);
        if (r >= 0)
                r = io_flush(s->io);
        for (size_t i = 0; i < n && r >= 0; i++)
                r = qcow2_uncount(s, m[i].from, s->cluster_size);
        return r;
}

/* Refcount table entry `rti` switched from the block at `from` to its copy
 * at `to` (placed, written and durable: qcow2_table_place()), made durable,
 * and the old cluster's reference dropped. */
int qcow2_refblock_switch(qcow2_state *s, uint64_t rti, uint64_t from, uint64_t to) {
        int r;

        r = tc_set(s->reft, rti, to, 0);
        if (r >= 0)
                r = tc_table_flush(s->reft);
        if (r >= 0)
                r = io_flush(s->io);
        /* the view of the old place is stale (and clean: flushed above) */
        if (r >= 0)
                r = qcow2_drop_table(s, from);
        return r < 0 ? r : qcow2_uncount(s, from, s->cluster_size);
}

static int move_rb(qcow2_state *s, uint64_t rti, uint64_t from, bool *ret_moved) {
        uint64_t to;
        int r;

        r = qcow2_flush_refcounts(s);
        if (r < 0)
                return r;
        r = move_done(s, qcow2_table_place(s, NULL, s->cluster_size, from, from, QCOW2_PLACE_LOW, &to), ret_moved);
        if (r < 0 || !*ret_moved)
                return r;
        return qcow2_refblock_switch(s, rti, from, to);
}

/* A refcount block that counts nothing but perhaps itself (it covers only
 * free clusters: past the compacted end, or a hole) leaves the refcount
 * table: the entry cleared, flushed, then the block uncounted (a block
 * counting itself is then counted nowhere: nothing more to do). */
static int drop_empty_rb(qcow2_state *s, uint64_t rti, uint64_t off, uint8_t *buf, bool *ret_dropped) {
        uint64_t ci = off / s->cluster_size;
        bool self = ci / s->rb_entries == rti;
        int r;

        *ret_dropped = false;
        r = qcow2_flush_refcounts(s);
        if (r >= 0)
                r = io_pread(s->io, buf, s->cluster_size, off);
        if (r < 0)
                return r;
        if (self) {
                if (qcow2_rc_entry_get(buf, ci % s->rb_entries, s->refcount_order) != 1)
                        return 0;
                qcow2_rc_entry_set(buf, ci % s->rb_entries, s->refcount_order, 0);
        }
        if (!mem_is_zero(buf, s->cluster_size))
                return 0;
        r = tc_set(s->reft, rti, 0, 0);
        if (r >= 0)
                r = tc_table_flush(s->reft);
        if (r >= 0)
                r = io_flush(s->io);
        if (r >= 0)
                r = qcow2_drop_table(s, off);
        if (r < 0)
                return r;
        *ret_dropped = true;
        if (self) {
                qcow2_note_free(s, off);
                return 0;
        }
        return qcow2_uncount(s, off, s->cluster_size);
}

/* Each bitmap table, then the bitmap directory, into the lowest free
 * clusters below it: the copy counted and durable, the pointer switched (the
 * directory entry's table offset, the extension's directory offset),
 * flushed, the old place uncounted. */
static int move_bitmaps(qcow2_state *s, vdisk_progress *p, uint64_t *ret_moved) {
        uint64_t to;
        bool moved;
        int r;

        if (s->nb_bitmaps == 0)
                return 0;
        for (uint32_t i = 0; i <= s->nb_bitmaps; i++) {
                bool dir = i == s->nb_bitmaps;
                uint64_t from = dir ? s->bm_dir_offset : s->bm[i].table_offset;
                uint64_t len = dir ? s->bm_dir_size : (uint64_t) s->bm[i].table_size * 8;

                if (len == 0 || from <= s->free_hint)
                        continue;
                r = progress_check(p);
                if (r >= 0)
                        r = move_done(s, qcow2_table_place(s, NULL, len, from, from, QCOW2_PLACE_LOW, &to), &moved);
                if (r < 0)
                        return r;
                if (!moved)
                        continue;
                r = dir ? qcow2_bitmap_dir_switch(s, to) : qcow2_bitmap_table_switch(s, i, to);
                if (r >= 0)
                        r = qcow2_uncount(s, from, len);
                if (r < 0)
                        return r;
                (*ret_moved)++;
        }
        return 0;
}

/* Whether the snapshot table or table at [off, off + len) is held by one
 * pointer alone (every cluster refcount 1, none of the active tree's fixed
 * metadata): only then may it move and its old place be uncounted. */
static int held_alone(qcow2_state *s, uint64_t off, uint64_t len, bool *ret) {
        int r;

        *ret = false;
        for (uint64_t c = off; c < off + len; c += s->cluster_size) {
                uint64_t rc;

                if (c != s->snapshots_offset && is_fixed(s, c))
                        return 0;
                r = qcow2_rc_get(s, c, &rc);
                if (r < 0)
                        return r;
                if (rc != 1)
                        return 0;
        }
        *ret = true;
        return 0;
}

/* A snapshot's table at `from` (`len` bytes) into the lowest free clusters
 * below it; the switch is the 8-byte pointer at `at` (8-aligned: a
 * snapshot's L1 entry, a snapshot table entry's L1 offset, the header's
 * snapshots_offset) written in place, flushed (and *cur, when given, set);
 * the old place uncounted. */
static int move_snap_table(qcow2_state *s, uint64_t from, uint64_t len, uint64_t at, uint64_t flags,
                           vdisk_progress *p, uint64_t *cur, uint64_t *ret_moved) {
        uint64_t to;
        uint8_t b[8];
        bool alone, moved;
        int r;

        if (from <= s->free_hint)
                return 0;
        r = held_alone(s, from, len, &alone);
        if (r < 0 || !alone)
                return r;
        r = progress_check(p);
        if (r >= 0)
                r = move_done(s, qcow2_table_place(s, NULL, len, from, from, QCOW2_PLACE_LOW, &to), &moved);
        if (r < 0 || !moved)
                return r;
        put_be64(b, to | flags);
        r = io_pwrite(s->io, b, sizeof b, at);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        if (cur)
                *cur = to;
        (*ret_moved)++;
        return qcow2_uncount(s, from, len);
}

/* Internal snapshots: for each snapshot, its L2 tables held by it alone
 * (refcount 1: the switch is the snapshot's L1 entry, flags kept), then its
 * L1 table (the entry's l1_table_offset); last the snapshot table (the
 * header's snapshots_offset; nb_snapshots unchanged). Their data clusters
 * stay where they are. */
static int move_snapshots(qcow2_state *s, vdisk_progress *p, uint64_t *ret_moved) {
        vdisk_snapshot *v = NULL;
        _cleanup_free_ qcow2_snap *e = NULL;
        size_t n = 0;
        int r;

        if (s->nb_snapshots == 0)
                return 0;
        r = qcow2_read_snapshots(s, &v, &e, &n);
        vdisk_snapshots_free(v, n);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                uint64_t len = (uint64_t) e[i].l1_size * 8;
                _cleanup_free_ uint8_t *l1 = NULL;

                if (len == 0)
                        continue;
                if (!qcow2_l1_ok(s, e[i].l1_offset, e[i].l1_size))
                        return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu has its L1 table at %" PRIu64 " (%" PRIu32
                                           " entries), not cluster-aligned within the file", i, e[i].l1_offset,
                                           e[i].l1_size);
                l1 = malloc(len);
                if (!l1)
                        return vdisk_error(-ENOMEM, "out of memory");
                r = io_pread(s->io, l1, len, e[i].l1_offset);
                if (r < 0)
                        return r;
                for (uint32_t j = 0; j < e[i].l1_size; j++) {
                        uint64_t l1e = get_be64(l1 + (size_t) j * 8), l2 = l1e & OFFSET_MASK;

                        if (l2 == 0)
                                continue;
                        if (l2 % s->cluster_size != 0 || !range_within(l2, s->cluster_size, s->file_size))
                                return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu names an L2 table at %" PRIu64
                                                   ", not cluster-aligned within the file", i, l2);
                        r = move_snap_table(s, l2, s->cluster_size, e[i].l1_offset + (uint64_t) j * 8,
                                            l1e & ~OFFSET_MASK, p, NULL, ret_moved);
                        if (r < 0)
                                return r;
                }
                r = move_snap_table(s, e[i].l1_offset, len, e[i].start, 0, p, NULL, ret_moved);
                if (r < 0)
                        return r;
        }
        return move_snap_table(s, s->snapshots_offset, e[n - 1].next - s->snapshots_offset, 64, 0, p,
                               &s->snapshots_offset, ret_moved);
}

static int move_l1(qcow2_state *s, bool *ret_moved) {
        uint64_t from = s->l1_offset, len = (uint64_t) s->l1_size * 8, to;
        uint8_t b[8];
        int r;

        *ret_moved = false;
        if (len == 0 || from % s->cluster_size != 0)
                return 0;
        r = qcow2_flush_tables(s);
        if (r < 0)
                return r;
        r = move_done(s, qcow2_table_place(s, NULL, len, from, from, QCOW2_PLACE_LOW, &to), ret_moved);
        if (r < 0 || !*ret_moved)
                return r;
        put_be64(b, to);
        r = qcow2_header_switch(s, 40, b, sizeof b);   /* l1_table_offset */
        if (r < 0)
                return r;
        s->l1_offset = to;
        r = qcow2_l1_view(s);
        return r < 0 ? r : qcow2_uncount(s, from, len);
}

static int move_reft(qcow2_state *s, bool *ret_moved) {
        uint64_t from = s->reft_offset, len = s->reft_bytes, to;
        uint8_t b[8];
        int r;

        *ret_moved = false;
        r = qcow2_flush_refcounts(s);
        if (r < 0)
                return r;
        r = move_done(s, qcow2_table_place(s, NULL, len, from, from, QCOW2_PLACE_LOW, &to), ret_moved);
        if (r < 0 || !*ret_moved)
                return r;
        if (s->reft_offset != from) {
                /* counting the copy grew (moved) the table: the copy is stale */
                *ret_moved = false;
                return qcow2_uncount(s, to, len);
        }
        put_be64(b, to);
        r = qcow2_header_switch(s, 48, b, sizeof b);   /* refcount_table_offset */
        if (r < 0)
                return r;
        s->reft_offset = to;
        r = qcow2_reft_view(s);
        return r < 0 ? r : qcow2_uncount(s, from, len);
}

static int compact_meta(qcow2_state *s, vdisk_progress *p, uint64_t *ret_moved) {
        _cleanup_free_ uint8_t *buf = malloc(s->cluster_size);
        _cleanup_free_ l2_move *batch = calloc(L2_BATCH, sizeof *batch);
        uint64_t n_moved = 0;
        size_t nb = 0;
        bool moved, shared;
        int r = 0, rt;

        if (!buf || !batch)
                return vdisk_error(-ENOMEM, "out of memory");

        s->free_hint = 0;
        for (uint64_t l1i = 0; l1i < s->l1_size; l1i++) {
                uint64_t l1e, to;

                if (nb == 0) {
                        r = progress_check(p);
                        if (r < 0)
                                return r;
                }
                r = tc_get(s->l1, l1i, &l1e);
                if (r < 0)
                        break;
                if ((l1e & OFFSET_MASK) == 0 || (l1e & OFFSET_MASK) <= s->free_hint)
                        continue;
                r = is_shared(s, l1e & OFFSET_MASK, &shared);
                if (r < 0)
                        break;
                if (shared)
                        continue;
                r = place_l2(s, l1e & OFFSET_MASK, buf, &to, &moved);
                if (r < 0)
                        break;
                if (!moved)
                        continue;
                batch[nb++] = (l2_move) { .l1i = l1i, .from = l1e & OFFSET_MASK, .to = to };
                n_moved++;
                if (nb == L2_BATCH) {
                        r = switch_l2s(s, batch, nb);
                        nb = 0;
                        if (r < 0)
                                return r;
                }
        }
        /* the rest of the batch (after a failed copy too: those placed are
         * sound) */
        rt = switch_l2s(s, batch, nb);
        if (r < 0 || rt < 0)
                return r < 0 ? r : rt;
        r = move_bitmaps(s, p, &n_moved);
        if (r >= 0)
                r = move_snapshots(s, p, &n_moved);
        if (r < 0)
                return r;
        for (uint64_t rti = 0; rti < tc_table_entries(s->reft); rti++) {
                uint64_t e;

                r = tc_get(s->reft, rti, &e);
                if (r < 0)
                        return r;
                e &= OFFSET_MASK;
                if (e == 0)
                        continue;
                r = progress_check(p);
                if (r >= 0)
                        r = drop_empty_rb(s, rti, e, buf, &moved);
                if (r < 0)
                        return r;
                n_moved += moved;
                if (moved || e <= s->free_hint)
                        continue;
                r = move_rb(s, rti, e, &moved);
                if (r < 0)
                        return r;
                n_moved += moved;
        }
        r = progress_check(p);
        if (r >= 0)
                r = move_l1(s, &moved);
        if (r < 0)
                return r;
        n_moved += moved;
        r = progress_check(p);
        if (r >= 0)
                r = move_reft(s, &moved);
        if (r < 0)
                return r;
        n_moved += moved;
        *ret_moved = n_moved;
        return qcow2_flush(s);
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

static int push_unit(fmt_unit **units, size_t *n, size_t *cap, uint64_t key, uint64_t host) {
        if (*n == *cap) {
                size_t nc = MAX(*cap * 2, (size_t) 256);
                fmt_unit *nu = realloc(*units, nc * sizeof *nu);

                if (!nu)
                        return vdisk_error(-ENOMEM, "out of memory");
                *units = nu, *cap = nc;
        }
        (*units)[(*n)++] = (fmt_unit) { .key = key, .host = host };
        return 0;
}

/* The data clusters snapshot i holds alone: in its L2 tables held alone
 * (refcount 1), each uncompressed cluster with refcount 1, a unit keyed by
 * its entry's file offset (the entry is switched in place). */
static int snapshot_units(qcow2_state *s, const qcow2_snap *sn, size_t i, fmt_unit **units, size_t *n,
                          size_t *cap) {
        uint64_t cs = s->cluster_size, len = (uint64_t) sn->l1_size * 8, stride = s->extended_l2 ? 16 : 8;
        _cleanup_free_ uint8_t *l1 = NULL, *l2 = NULL;
        bool alone;
        int r;

        if (len == 0)
                return 0;
        if (!qcow2_l1_ok(s, sn->l1_offset, sn->l1_size))
                return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu has its L1 table at %" PRIu64 " (%" PRIu32
                                   " entries), not cluster-aligned within the file", i, sn->l1_offset, sn->l1_size);
        l1 = malloc(len);
        l2 = malloc(cs);
        if (!l1 || !l2)
                return vdisk_error(-ENOMEM, "out of memory");
        r = io_pread(s->io, l1, len, sn->l1_offset);
        if (r < 0)
                return r;
        for (uint32_t j = 0; j < sn->l1_size; j++) {
                uint64_t l2off = get_be64(l1 + (size_t) j * 8) & OFFSET_MASK;

                if (l2off == 0 || l2off % cs != 0 || !range_within(l2off, cs, s->file_size))
                        continue;   /* (move_snapshots refused a misplaced one) */
                r = held_alone(s, l2off, cs, &alone);
                if (r < 0)
                        return r;
                if (!alone)
                        continue;   /* shared: so is every cluster in it */
                r = io_pread(s->io, l2, cs, l2off);
                if (r < 0)
                        return r;
                for (uint64_t k = 0; k < s->l2_entries; k++) {
                        uint64_t e = get_be64(l2 + k * stride), host = e & OFFSET_MASK;

                        if ((e & L2E_COMPRESSED) || host == 0 || host % cs != 0 ||
                            !range_within(host, cs, s->file_size))
                                continue;
                        r = held_alone(s, host, cs, &alone);
                        if (r >= 0 && alone)
                                r = push_unit(units, n, cap, KEY_SNAP | (l2off + k * stride), host);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* Phase 2: the data clusters and the bitmaps' and the snapshots' (units)
 * and everything else that has a reference (fixed), for fmt_pack. */
static int compact_layout(qcow2_state *s, fmt_unit **ret_units, size_t *ret_n, fmt_span **ret_fixed,
                          size_t *ret_nf) {
        uint64_t cs = s->cluster_size, n_file = DIV_ROUND_UP(s->file_size, cs);
        _cleanup_free_ fmt_unit *units = NULL;
        _cleanup_free_ fmt_span *fixed = NULL;
        _cleanup_free_ uint64_t *hosts = NULL;
        size_t n = 0, cap = 0, nf = 0, capf = 0;
        int r;

        /* (the data clusters of an external data file are not this file's) */
        /* (and a snapshot's clusters stay where they are) */
        for (uint64_t l1i = 0; l1i < s->l1_size && !s->data_io; l1i++) {
                uint64_t l1e;
                bool shared;
                tc_table *l2;

                r = tc_get(s->l1, l1i, &l1e);
                if (r < 0)
                        return r;
                if ((l1e & OFFSET_MASK) == 0)
                        continue;
                r = is_shared(s, l1e & OFFSET_MASK, &shared);
                if (r < 0)
                        return r;
                if (shared)
                        continue;
                for (uint64_t l2i = 0; l2i < s->l2_entries; l2i++) {
                        uint64_t e;

                        r = qcow2_get_l2(s, l1e & OFFSET_MASK, &l2);
                        if (r >= 0)
                                r = tc_get(l2, s->extended_l2 ? 2 * l2i : l2i, &e);
                        if (r >= 0 && !(e & L2E_COMPRESSED) && (e & OFFSET_MASK) != 0)
                                r = is_shared(s, e & OFFSET_MASK, &shared);
                        if (r < 0)
                                return r;
                        if ((e & L2E_COMPRESSED) || (e & OFFSET_MASK) == 0 || shared)
                                continue;
                        r = push_unit(&units, &n, &cap, l1i * s->l2_entries + l2i, e & OFFSET_MASK);
                        if (r < 0)
                                return r;
                }
        }
        if (s->nb_snapshots > 0 && !s->data_io) {
                vdisk_snapshot *v = NULL;
                _cleanup_free_ qcow2_snap *e = NULL;
                size_t ns = 0;

                r = qcow2_read_snapshots(s, &v, &e, &ns);
                vdisk_snapshots_free(v, ns);
                for (size_t i = 0; r >= 0 && i < ns; i++)
                        r = snapshot_units(s, &e[i], i, &units, &n, &cap);
                if (r < 0)
                        return r;
        }
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                _cleanup_free_ uint64_t *t = NULL;

                r = qcow2_bitmap_table(s, i, &t);
                if (r < 0)
                        return r;
                for (uint32_t j = 0; j < s->bm[i].table_size; j++) {
                        if ((t[j] & OFFSET_MASK) == 0)
                                continue;
                        r = push_unit(&units, &n, &cap, KEY_BITMAP | (uint64_t) i << 32 | j, t[j] & OFFSET_MASK);
                        if (r < 0)
                                return r;
                }
        }
        hosts = malloc((n + 1) * sizeof *hosts);
        if (!hosts)
                return vdisk_error(-ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++)
                hosts[i] = units[i].host;
        qsort(hosts, n, sizeof *hosts, cmp_u64);
        for (size_t i = 1; i < n; i++)
                if (hosts[i] == hosts[i - 1])
                        return vdisk_error(-EUCLEAN, "qcow2: the cluster at %" PRIu64 " is referenced twice with a "
                                           "refcount of 1; repair the image before compacting it", hosts[i]);
        for (uint64_t ci = 0; ci < n_file; ci++) {
                uint64_t rc, off = ci * cs;

                r = qcow2_rc_get(s, off, &rc);
                if (r < 0)
                        return r;
                if (bsearch(&off, hosts, n, sizeof *hosts, cmp_u64)) {
                        if (rc != 1)
                                return vdisk_error(-EUCLEAN, "qcow2: the data cluster at %" PRIu64 " has a refcount "
                                                   "of %" PRIu64 "; repair the image before compacting it", off, rc);
                        continue;
                }
                if (rc == 0 && !is_fixed(s, off))
                        continue;
                if (nf > 0 && fixed[nf - 1].start + fixed[nf - 1].len == off) {
                        fixed[nf - 1].len += cs;
                        continue;
                }
                if (nf == capf) {
                        size_t nc = MAX(capf * 2, (size_t) 64);
                        fmt_span *nx = realloc(fixed, nc * sizeof *nx);

                        if (!nx)
                                return vdisk_error(-ENOMEM, "out of memory");
                        fixed = nx, capf = nc;
                }
                fixed[nf++] = (fmt_span) { .start = off, .len = cs };
        }
        *ret_units = TAKE_PTR(units);
        *ret_n = n;
        *ret_fixed = TAKE_PTR(fixed);
        *ret_nf = nf;
        return 0;
}

/* Data packs again after a metadata round moved or dropped a table (a
 * refcount block dropped after the data moved leaves a hole below it): at
 * most this many more times (each round only moves clusters down, so it
 * ends anyway; the bound keeps the scans few). */
#define PACK_ROUNDS 4u

/* One pack (fmt_pack) of the data and bitmap clusters into the lowest free
 * clusters. *done: the progress reported so far; the moves report past it.
 * *ret_moves: how many clusters it moved. */
static int pack_data(qcow2_state *s, vdisk_progress *p, uint64_t *done, uint64_t *ret_moves) {
        _cleanup_free_ fmt_unit *units = NULL;
        _cleanup_free_ fmt_span *fixed = NULL;
        size_t n = 0, nf = 0;
        cpack cp = { .s = s };
        int r;

        r = compact_layout(s, &units, &n, &fixed, &nf);
        if (r < 0)
                return r;
        fmt_pack pk = {
                .io = s->io,
                .unit = s->cluster_size,
                .floor = s->cluster_size,
                .units = units,
                .n_units = n,
                .fixed = fixed,
                .n_fixed = nf,
                .p = p,
                .cancellable = true,
                .repoint = cpack_repoint,
                .commit = cpack_commit,
                .user = &cp,
        };
        r = fmt_pack_count(&pk, ret_moves);
        if (r < 0)
                return r;
        progress_set_total(p, *done + *ret_moves * s->cluster_size);
        (void) progress_add(p, *done);   /* a cancel: seen by the pack */
        *done += *ret_moves * s->cluster_size;
        return fmt_pack_run(&pk, NULL);
}

/* Compact frees and moves clusters by their refcounts. Where the check finds
 * counts that contradict the tables (a cluster counted below its references,
 * named twice), a free or a move could put one cluster over another's data:
 * refused, before anything is written, until a repair makes them agree.
 * Leaks (counted, not referenced) are harmless: they stay where they are. */
static int compact_precheck(qcow2_state *s) {
        vdisk_check_report rep = { .size = sizeof(rep) };
        uint64_t bad;
        int r;

        r = qcow2_check(s, 0, &rep, NULL);
        bad = rep.corruptions;
        vdisk_check_report_clear(&rep);
        if (r < 0)
                return r;
        if (bad > 0)
                return vdisk_error(-EUCLEAN, "qcow2: the image's check finds %" PRIu64 " corruption%s: repair it "
                                   "(check -r all) before compacting", bad, bad == 1 ? "" : "s");
        return 0;
}

int qcow2_compact(void *state, compact_fn fn, void *ctx, vdisk_progress *p) {
        qcow2_state *s = state;
        uint64_t done, moves, meta_moves = 0;
        bool ident = true;
        int r, rt;

        assert(s->writable && fn);
        r = compact_precheck(s);
        if (r < 0)
                return r;
        r = qcow2_mark_dirty(s);
        if (r >= 0)
                r = qcow2_flush(s);
        if (r < 0)
                return r;
        r = compact_scan(s, fn, ctx, p, &ident);
        if (r < 0) {
                /* what was decided is valid: kept */
                rt = qcow2_flush(s);
                return rt < 0 ? rt : r;
        }
        r = qcow2_flush(s);
        /* (a snapshot's tables may name what the active ones do not) */
        if (r >= 0 && s->data_io && !(s->autoclear & AUTOCLEAR_DATA_RAW) && ident && s->nb_snapshots == 0)
                r = punch_unmapped(s);
        if (r < 0)
                return r;
        r = compact_meta(s, p, &meta_moves);
        if (r < 0) {
                rt = qcow2_flush(s);
                if (rt >= 0)
                        rt = trim_tail(s);
                return rt < 0 ? rt : r;
        }
        /* the scan is done: the moves report past the disk's size */
        done = s->size;
        r = pack_data(s, p, &done, &moves);
        /* again: refcount blocks left counting nothing (past the packed
         * data, or whose old place counted only itself) go, and what still
         * lies above a hole moves down; where that freed clusters below the
         * data, the data packs again */
        if (r >= 0)
                r = compact_meta(s, p, &meta_moves);
        for (unsigned i = 0; r >= 0 && meta_moves > 0 && i < PACK_ROUNDS; i++) {
                r = pack_data(s, p, &done, &moves);
                if (r < 0 || moves == 0)
                        break;
                r = compact_meta(s, p, &meta_moves);
        }
        /* after a cancel too: what the moves left free at the end goes */
        rt = trim_tail(s);
        return r < 0 ? r : rt;
}
