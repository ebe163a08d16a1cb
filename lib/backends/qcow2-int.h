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

#include "fmt/hostalloc.h"
#include "fmt/tablecache.h"
#include "io/io.h"

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
        uint64_t res_host;              /* host cluster of the reservation */
        bool marked_dirty;              /* lazy refcounts: dirty bit set on disk */
        uint64_t *pending_free;         /* host byte ranges to unreference at flush */
        size_t n_pending_free, cap_pending_free;

        /* compressed writing (qcow2-compress.c): the host cluster being
         * packed with compressed clusters, 0 = none; bytes of it used; how
         * many compressed clusters it holds (its refcount) */
        uint64_t comp_host, comp_used, comp_refs;
} qcow2_state;


/* Lent by qcow2.c to qcow2-compress.c: thin wrappers of its static helpers. */
typedef struct reservation reservation;
int qcow2_mark_dirty(qcow2_state *s);
int qcow2_rc_update(qcow2_state *s, uint64_t host, int delta, tc_page **ret_pg);
uint64_t qcow2_rc_max(const qcow2_state *s);
void qcow2_note_file_end(qcow2_state *s, uint64_t end);
int qcow2_l2_entry(qcow2_state *s, uint64_t cl, uint64_t *ret_e, uint64_t *ret_bitmap);
int qcow2_l2_for_write(qcow2_state *s, uint64_t l1i, tc_table **ret);
void qcow2_queue_free_compressed(qcow2_state *s, uint64_t e);
int qcow2_allocate_unit(qcow2_state *s, uint64_t offset, uint64_t len, reservation *ret);
int qcow2_commit_unit(qcow2_state *s, const reservation *res);
void qcow2_release_unit(qcow2_state *s, const reservation *res);

/* qcow2-compress.c: the backend's encode_bound, encode and
 * stream_write_encoded (convert -c). */
size_t qcow2_encode_bound(const void *state, size_t len);
int qcow2_encode(const void *state, const void *in, size_t len, void *out, size_t *ret_len);
int qcow2_write_encoded(void *state, uint64_t offset, size_t len, const void *enc, size_t enc_len);
