/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2's state and on-disk constants, shared by the parts of the backend
 * (qcow2.c: open, reads, writes, refcounts, check, create; further parts
 * in qcow2-*.c). Functions one part lends another are declared here, with
 * a qcow2_ prefix; everything else stays static in its file.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "fmt/hostalloc.h"
#include "fmt/tablecache.h"
#include "io/io.h"
#include "vdisk/vdisk.h"

#define QCOW2_MAGIC             UINT32_C(0x514649fb)   /* "QFI\xfb" */
#define QCOW2_V2_HEADER         72u
#define QCOW2_V3_HEADER         104u
#define QCOW2_CLUSTER_BITS_MIN  9u
#define QCOW2_CLUSTER_BITS_MAX  21u
#define QCOW2_L1_MAX_BYTES      (UINT64_C(32) << 20)
#define QCOW2_REFT_MAX_BYTES    (UINT64_C(8) << 20)
#define QCOW2_SNAPSHOTS_MAX     65536u
#define QCOW2_SNAP_TABLE_MAX    (UINT64_C(64) << 20)
#define QCOW2_SNAP_EXTRA_MAX    1024u
#define QCOW2_BACKING_NAME_MAX  1023u
#define QCOW2_SIZE_MAX          (UINT64_C(1) << 62)
#define QCOW2_L2_SLOTS          32u
#define QCOW2_SUBCLUSTERS       32u
#define QCOW2_RB_SLOTS          8u
#define QCOW2_HOST_LIMIT        (UINT64_C(1) << 56)   /* host offsets have bits 9..55 */

#define OFFSET_MASK             UINT64_C(0x00fffffffffffe00)
#define L2E_COMPRESSED          (UINT64_C(1) << 62)
#define L2E_ZERO                UINT64_C(1)
#define L2E_COPIED              (UINT64_C(1) << 63)

enum {
        INCOMPAT_DIRTY       = 1u << 0,
        INCOMPAT_CORRUPT     = 1u << 1,
        INCOMPAT_DATA_FILE   = 1u << 2,
        INCOMPAT_COMPRESSION = 1u << 3,
        INCOMPAT_EXTL2       = 1u << 4,
        INCOMPAT_KNOWN       = 0x1f,
        COMPAT_LAZY_REFCOUNTS = 1u << 0,
        AUTOCLEAR_BITMAPS    = 1u << 0,
        AUTOCLEAR_DATA_RAW   = 1u << 1,
};

enum {
        EXT_END          = 0x00000000,
        EXT_BACKING_FMT  = 0xe2792aca,
        EXT_FEATURES     = 0x6803f857,
        EXT_BITMAPS      = 0x23852875,
        EXT_FDE          = 0x0537be77,
        EXT_DATA_FILE    = 0x44415441,
};

enum {
        CODEC_DEFLATE = 1,
        CODEC_ZSTD    = 2,
};

typedef struct l2_slot {
        uint64_t offset;        /* host offset of the L2 table, 0 = free */
        tc_table *t;
        uint64_t used;          /* LRU tick */
} l2_slot;

typedef struct qcow2_state {
        vdisk_io *io;
        vdisk_io *data_io;              /* external data file, NULL = none */
        tc_budget *budget;
        uint64_t file_size, data_size;
        uint32_t version, cluster_bits, header_length, refcount_order;
        uint64_t cluster_size, size;
        uint64_t incompat, compat, autoclear;
        uint32_t compression_type;
        bool extended_l2;
        uint64_t l2_entries;            /* per L2 table */
        uint64_t l2_coverage;           /* virtual bytes one L2 table maps */
        uint64_t subcluster_size;
        uint32_t csize_shift;
        uint64_t csize_mask, coffset_mask;
        uint32_t l1_size;
        uint64_t l1_offset;
        uint64_t reft_offset, reft_bytes;
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
        uint32_t nb_bitmaps;
        tc_table *l1;
        l2_slot slots[QCOW2_L2_SLOTS];
        uint64_t tick;
        char *backing_name, *backing_format, *data_file_name;

        /* write side (qcow2 writes below) */
        bool writable;
        tc_table *reft;                 /* the refcount table */
        l2_slot rb_slots[QCOW2_RB_SLOTS];
        uint64_t rb_entries;            /* refcounts per refcount block */
        hostalloc alloc;                /* clusters are appended at the end */
        bool reserved;                  /* one reservation at a time */
        bool res_new;                   /* it takes a new host cluster */
        uint64_t res_host;              /* first host cluster of the reservation */
        uint64_t res_clusters;          /* how many (contiguous; > 1 only for new ones) */
        bool marked_dirty;              /* lazy refcounts: dirty bit set on disk */
        uint64_t *pending_free;         /* host byte ranges to unreference at flush */
        size_t n_pending_free, cap_pending_free;

        /* resize, discard, compact, free-cluster reuse (qcow2-space.c) */
        uint64_t free_hint;             /* no cluster below this host offset has refcount 0 */

        /* internal snapshots (qcow2-snapshot.c): writes copy shared clusters */
        uint64_t res_cow;               /* the reservation replaces this shared cluster (0: none) */
        bool res_counted;               /* commit counted new clusters: release must not reuse them */

        /* persistent bitmaps (qcow2-bitmap.c) */
        bool bm_ext;                    /* the header has a bitmaps extension */
        uint32_t bm_ext_len, bm_ext_reserved;
        uint64_t bm_dir_offset, bm_dir_size;
        struct qcow2_bitmap *bm;        /* the directory, in its order (nb_bitmaps entries) */
        bool bm_broken;                 /* the directory is invalid: bitmaps ignored (read-only) */
        char bm_broken_why[256];        /* ... and why (the error at open) */
        bool bm_marked;                 /* tracking bitmaps are marked in_use on disk */
        uint64_t bm_mem;                /* bytes of bitmap content held in memory */

        /* compressed writing (qcow2-compress.c): the host cluster being
         * packed with compressed clusters, 0 = none; bytes of it used; how
         * many compressed clusters it holds (its refcount) */
        uint64_t comp_host, comp_used, comp_refs;
} qcow2_state;


/* ---- lent by qcow2.c to the other parts */

/* The backend's flush(): data, refcounts, L2, L1, then the dirty bit. */
int qcow2_flush(void *state);
int qcow2_check(void *state, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p);
int qcow2_flush_refcounts(qcow2_state *s);
int qcow2_flush_tables(qcow2_state *s);
int qcow2_mark_dirty(qcow2_state *s);
/* Adds delta (+1/-1) to the refcount of the cluster holding `host` (blocks
 * made as needed); with ret_pg the refcount block's page, pinned. */
int qcow2_rc_update(qcow2_state *s, uint64_t host, int delta, tc_page **ret_pg);
/* Entry i of the L2 table `l2` set to `e` (tc_set's flags) once `host`, the
 * new cluster it names, is counted: the L2 page goes to the disk after the
 * refcount block's page. */
int qcow2_l2_set_counted(qcow2_state *s, tc_table *l2, uint64_t i, uint64_t e, uint64_t host, uint32_t flags);
/* Entry i of a refcount block of width 2^order bits. */
uint64_t qcow2_rc_entry_get(const uint8_t *b, uint64_t i, uint32_t order);
void qcow2_rc_entry_set(uint8_t *b, uint64_t i, uint32_t order, uint64_t v);
int qcow2_l2_entry(qcow2_state *s, uint64_t cl, uint64_t *ret_e, uint64_t *ret_bitmap);
/* Entry l2i of the L2 table `l2` and, with extended L2, its subcluster
 * bitmap (left alone otherwise). */
static inline int qcow2_l2_get(const qcow2_state *s, tc_table *l2, uint64_t l2i, uint64_t *ret_e,
                               uint64_t *ret_bitmap) {
        int r = tc_get(l2, s->extended_l2 ? 2 * l2i : l2i, ret_e);

        if (r >= 0 && s->extended_l2)
                r = tc_get(l2, 2 * l2i + 1, ret_bitmap);
        return r;
}
int qcow2_l2_for_write(qcow2_state *s, uint64_t l1i, tc_table **ret);
/* The L2 table at host offset `off` (checked), from the slot cache. */
int qcow2_get_l2(qcow2_state *s, uint64_t off, tc_table **ret);
/* The cluster holding `host` loses a reference at the next flush (after the
 * tables that dropped it); out of memory: it leaks. */
void qcow2_queue_free(qcow2_state *s, uint64_t host);
void qcow2_queue_free_compressed(qcow2_state *s, uint64_t e);
/* Drops the cached view of a freed or moved table (written back first). */
int qcow2_drop_table(qcow2_state *s, uint64_t off);
/* Makes the file hold [0, end) (sparse). */
int qcow2_cover_file(qcow2_state *s, uint64_t end);
/* The refcount of the cluster holding `host` as the refcounts say now (in
 * memory), without making a refcount block: 0 where there is none; the
 * largest one the width takes. */
int qcow2_rc_get(qcow2_state *s, uint64_t host, uint64_t *ret);
uint64_t qcow2_rc_max(const qcow2_state *s);
bool qcow2_l1_ok(const qcow2_state *s, uint64_t l1_offset, uint32_t l1_size);
/* Drops the L2 tables held (flushed first): the active L1 table changed. */
void qcow2_drop_l2_cache(qcow2_state *s);
/* The snapshot table: each entry's id, name, facts, and where it lies. */
typedef struct qcow2_snap {
        uint64_t l1_offset;
        uint32_t l1_size;
        uint64_t start, next;           /* file offsets of the entry and of the next one */
} qcow2_snap;
int qcow2_read_snapshots(qcow2_state *s, vdisk_snapshot **ret, qcow2_snap **ret_e, size_t *ret_n);

/* A new table's place (see qcow2.c "new tables"): `len` bytes of `buf`
 * (or, buf NULL, a move: the `len` bytes at `from` as they are once the
 * refcounts are written) in new clusters, zero-padded; counted, written and,
 * without QCOW2_PLACE_NOSYNC, durable. QCOW2_PLACE_LOW: into the lowest free
 * clusters ending at or below `below` (-ENOSPC: none), else appended. */
enum {
        QCOW2_PLACE_LOW    = 1u << 0,
        QCOW2_PLACE_NOSYNC = 1u << 1,
};
int qcow2_table_place(qcow2_state *s, const void *buf, uint64_t len, uint64_t from, uint64_t below,
                      uint32_t flags, uint64_t *ret);
/* Refcounts written, then everything flushed: what a switch waits for. */
int qcow2_sync_refcounts(qcow2_state *s);
/* The switch: `len` bytes of the header at `at`, flushed. */
int qcow2_header_switch(qcow2_state *s, uint32_t at, const void *buf, size_t len);
/* The clusters of [off, off + len) lose one reference each (in memory). */
size_t qcow2_ext_copy(qcow2_state *s, const uint8_t *old, uint8_t *hdr, uint32_t drop);
int qcow2_refblock_switch(qcow2_state *s, uint64_t rti, uint64_t from, uint64_t to);
int qcow2_uncount(qcow2_state *s, uint64_t off, uint64_t len);
/* The cached views of the L1 table and refcount table, made from the state's
 * offsets and sizes (after a switch). */
int qcow2_l1_view(qcow2_state *s);
int qcow2_reft_view(qcow2_state *s);

/* ---- qcow2-space.c: resize, discard, compact, free-cluster reuse */
/* The lowest `bytes` of free clusters in a row ending at or below `limit`. */
int qcow2_alloc_low(qcow2_state *s, uint64_t bytes, uint64_t limit, uint64_t *ret);
int qcow2_alloc_cluster(qcow2_state *s, uint64_t *ret, int *ret_fresh);
int qcow2_alloc_run(qcow2_state *s, uint64_t max, uint64_t *ret, uint64_t *ret_n, int *ret_fresh);
void qcow2_note_free(qcow2_state *s, uint64_t host);
int qcow2_discard(void *state, uint64_t offset, uint64_t len);
int qcow2_resize(void *state, uint64_t new_size, vdisk_progress *p);
int qcow2_compact(void *state, compact_fn fn, void *ctx, vdisk_progress *p);

/* A new cluster for the unit at `offset` (the backend's allocate, commit
 * and release, for qcow2-compress.c's plain clusters). */
typedef struct reservation reservation;
int qcow2_allocate_unit(qcow2_state *s, uint64_t offset, uint64_t len, reservation *ret);
int qcow2_commit_unit(qcow2_state *s, const reservation *res);
void qcow2_release_unit(qcow2_state *s, const reservation *res);
void qcow2_note_file_end(qcow2_state *s, uint64_t end);

/* ---- qcow2-compress.c: the backend's encode_bound, encode and
 * stream_write_encoded (convert -c). */
size_t qcow2_encode_bound(const void *state, size_t len);
int qcow2_encode(const void *state, const void *in, size_t len, void *out, size_t *ret_len);
int qcow2_write_encoded(void *state, uint64_t offset, size_t len, const void *enc, size_t enc_len);

/* ---- qcow2-amend.c */
/* The backend's amend(): compat, refcount_bits, lazy_refcounts. */
int qcow2_amend(void *state, const char *const *options, vdisk_progress *p);

/* ---- qcow2-snapshot.c: snapshot -c/-a/-d (backend callbacks) and the
 * OFLAG_COPIED part of check. */
int qcow2_snapshot_create(void *state, const char *name, int64_t date_sec, uint32_t date_nsec);
int qcow2_snapshot_apply(void *state, size_t i);
int qcow2_snapshot_delete(void *state, size_t i);
int qcow2_check_copied(qcow2_state *s, vdisk_check_report *rep, bool repair, bool scan_l2);


/* ---------------------------------------------------------------- bitmaps */

#define QCOW2_BITMAPS_MAX       65535u
#define QCOW2_BITMAP_DIR_MAX    (UINT64_C(1024) * 65535)
#define QCOW2_BITMAP_NAME_MAX   1023u
#define QCOW2_BITMAP_EXTRA_MAX  4096u
#define QCOW2_BITMAP_MEM_MAX    (UINT64_C(64) << 20)   /* content held in memory, all bitmaps */
#define QCOW2_BITMAP_GRAN_MIN   9u
#define QCOW2_BITMAP_GRAN_MAX   31u

/* One bitmap directory entry and, while it is held, its content. */
typedef struct qcow2_bitmap {
        char *name;
        uint64_t table_offset;
        uint32_t table_size;            /* entries */
        uint32_t flags;                 /* BME_* */
        uint8_t type, gran_bits;
        uint32_t extra_size;
        uint8_t *extra;                 /* kept as it is */
        uint64_t dir_pos;               /* byte offset of the entry in the directory */
        bool tracking;                  /* records every write (auto, consistent, writable open) */
        uint8_t *bits;                  /* content, when loaded (bits_len bytes) */
        uint64_t bits_len;
        bool dirty;                     /* bits differ from what the file holds */

        /* resize (qcow2_bitmaps_resize_begin/_end): the table and content
         * made for the new size; in_use set on disk by the resize (cleared
         * once the entry matches the disk's size again) */
        uint64_t new_table_offset;
        uint32_t new_table_size;
        uint8_t *new_bits;              /* tracking bitmaps only */
        uint64_t new_bits_len;
        bool resize_marked;
} qcow2_bitmap;

/* qcow2-bitmap.c */
int qcow2_bitmaps_open(qcow2_state *s, bool writable);
void qcow2_bitmaps_close(qcow2_state *s);
int qcow2_bitmaps_note_write(qcow2_state *s, uint64_t offset, uint64_t len);
int qcow2_bitmaps_flush(qcow2_state *s);
typedef void (*qcow2_ref_fn)(void *ctx, uint64_t off, uint64_t len, const char *what);
int qcow2_bitmaps_count(qcow2_state *s, qcow2_ref_fn ref, void *ctx, vdisk_check_report *rep);
int qcow2_list_bitmaps(void *state, vdisk_bitmap **ret, size_t *ret_n);
/* qemu-img info's list of bitmaps, as format information (get_format_info). */
int qcow2_bitmaps_format_info(qcow2_state *s, strv_builder *kv);
int qcow2_bitmap_read(void *state, const char *name, uint8_t **ret, size_t *ret_len, uint64_t *ret_granularity);
int qcow2_bitmap_change(void *state, const vdisk_bitmap_change *c);
/* Resize with bitmaps: begin writes every bitmap's table and content for
 * new_size and points the directory at them with the bitmaps marked in use
 * (refused, before anything changes, when one is in use or of an unknown
 * kind); end, once the header says the new size (switched) or not, clears
 * the marks and frees the old tables, or puts the old ones back. */
int qcow2_bitmaps_resize_begin(qcow2_state *s, uint64_t new_size);
int qcow2_bitmaps_resize_end(qcow2_state *s, bool switched);
/* Compact (qcow2-space.c moves, these switch): bitmap i's table as it is on
 * disk (checked; table_size entries, freed by the caller); entry i's table
 * offset pointed at `to`, flushed; the extension's directory offset pointed
 * at `to`, flushed; entry j of bitmap i's table, at `from`, pointed at its
 * copy at `to` (counted and durable first, flushed after; `from` is freed at
 * the next flush). */
int qcow2_bitmap_table(qcow2_state *s, uint32_t i, uint64_t **ret);
int qcow2_bitmap_table_switch(qcow2_state *s, uint32_t i, uint64_t to);
int qcow2_bitmap_dir_switch(qcow2_state *s, uint64_t to);
int qcow2_bitmap_data_switch(qcow2_state *s, uint32_t i, uint32_t j, uint64_t from, uint64_t to);
/* Compact's move of a cluster whose pointer is an 8-byte entry at `at` on
 * disk, in a table no cache holds (a bitmap table, a snapshot's L2 table):
 * the new place `to` counted and durable, the entry switched in place (its
 * flags kept), flushed; `from` is freed at the next flush. `what` names the
 * table when the entry no longer points at `from`. */
int qcow2_entry_switch(qcow2_state *s, uint64_t at, uint64_t from, uint64_t to, const char *what);
