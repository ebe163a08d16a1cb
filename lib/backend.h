/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The format backend contract.
 *
 * A backend knows one image format and nothing else: not the chain, not the
 * other images, not how files are found. It sees its own state (allocated and
 * zeroed by the core, `state_size` bytes), the vdisk_io of its file, and the
 * helpers of lib/fmt and lib/util. It never logs and never calls open().
 *
 * Who calls what, and what a backend may assume:
 *   - The core holds the image lock around every call (backends are
 *     single-threaded per image; there is no global state to protect).
 *   - The core checks every range before calling map/allocate/mark_zero:
 *     offset < size(), offset + length <= size(). Backends assert, never re-check.
 *   - Everything read from the file is untrusted: open() validates every header
 *     field and table entry it will later use, with overflow-checked
 *     arithmetic, and bounds memory by what the file really holds (a table is
 *     read only when the file contains it; tables are held through
 *     lib/fmt/tablecache under the disk's metadata budget, see open_ctx).
 *   - Allocation is a transaction. allocate() only reserves host space;
 *     the core writes the whole unit's data there (the new bytes overlaid on
 *     what the unit read before) and calls commit() only once that write
 *     succeeded, or release() when it failed. So a failed write never leaves
 *     a table entry behind, in memory or on disk: the image reads exactly as
 *     before the failed call, and at worst the reserved space leaks.
 *   - Write ordering: data first, then the table entries that point to it. A
 *     backend keeps committed table entries in memory (reads see them at
 *     once) and writes them only in flush(), after flushing the data. A
 *     crash may leak space; it may never leave an entry pointing at garbage.
 *
 * Errors are negative errno codes recorded with vdisk_error() (see vdisk.h for
 * the fixed meanings: -EMEDIUMTYPE, -EUCLEAN, -EOPNOTSUPP, -EFBIG, -EROFS ...).
 */
#pragma once

#include <stdint.h>

#include "vdisk/vdisk.h"

typedef struct tc_budget tc_budget;   /* lib/fmt/tablecache.h */

/* How a range of an image reads. */
typedef enum map_kind {
        MAP_DATA,     /* stored in this image's file at host_offset */
        MAP_ZERO,     /* reads as zeros, defined by this image (no fall-through) */
        MAP_UNALLOC,  /* not defined here: the parent's data shows through
                       * (zeros in a base image) */
} map_kind;

typedef struct map_result {
        map_kind kind;
        uint64_t host_offset;   /* MAP_DATA: file offset of the first byte */
        uint64_t length;        /* bytes from the asked offset with this status */
} map_result;

/* Metadata every VD format may carry. `mask` bits say which fields are valid. */
enum {
        META_UUID              = 1u << 0,
        META_MODIFICATION_UUID = 1u << 1,
        META_PARENT_UUID       = 1u << 2,
        META_PARENT_MOD_UUID   = 1u << 3,
        META_COMMENT           = 1u << 4,
        META_PCHS              = 1u << 5,
        META_LCHS              = 1u << 6,
        META_FLAGS             = 1u << 7,   /* VDISK_IMAGE_FLAGS_* */
        META_VERSION           = 1u << 8,
        META_PARENT_NAME       = 1u << 9,   /* file name hint and format of the parent */
};

typedef struct meta {
        uint32_t mask;
        uint8_t uuid[16], modification_uuid[16], parent_uuid[16], parent_modification_uuid[16];
        const char *comment;        /* borrowed from backend state, "" if none */
        vdisk_geometry pchs, lchs;
        uint32_t flags;
        uint32_t version;
        const char *parent_name;    /* borrowed, may be NULL */
        const char *parent_format;  /* borrowed, may be NULL (recorded format) */
} meta;

/* What the core tells open() besides the file. */
typedef struct open_ctx {
        /* The metadata budget of the disk the image is opened for (the whole
         * chain shares it): tables the backend holds go through
         * lib/fmt/tablecache under it, other metadata it keeps in proportion
         * to the image's size is charged with tc_budget_charge(). Never NULL. */
        tc_budget *budget;
        /* VDISK_OPEN_INFO: only metadata will be asked for, no data. */
        int info_only;
} open_ctx;

/* What the core asks create() to make. */
typedef struct create_params {
        uint64_t size;              /* virtual size in bytes (checked: > 0) */
        uint32_t image_flags;       /* VDISK_IMAGE_FLAGS_*; DIFF set for a diff */
        uint32_t block_size;        /* 0 = the format's default */
        const char *comment;        /* may be NULL */
        uint8_t uuid[16];           /* always set (the core generates it) */
        uint8_t parent_uuid[16];    /* diff: the parent's UUID */
        uint8_t parent_modification_uuid[16];
        vdisk_geometry pchs, lchs;  /* zero = none */
        const char *const *options; /* "-o" key/value pairs, NULL-terminated */
        tc_budget *budget;          /* as open_ctx.budget */
} create_params;

/* Compact asks the core, for each allocated block, what may replace it. */
typedef enum compact_verdict {
        COMPACT_KEEP,
        COMPACT_UNALLOC,   /* the block equals what shows through from below */
        COMPACT_ZERO,      /* the block is all zeros but the parent is not */
} compact_verdict;
typedef int (*compact_fn)(void *ctx, uint64_t offset, const void *data, size_t len,
                          compact_verdict *ret);

typedef struct vdisk_backend {
        /* Name, qemu's name, caps, media, extensions, create options. */
        vdisk_backend_info info;
        /* Other accepted names (any case), NULL-terminated, may be NULL. */
        const char *const *aliases;
        /* Bytes of per-image state the core allocates (zeroed) for the backend. */
        size_t state_size;

        /* Scores how likely `head` (the first head_len bytes, at most 64 KiB,
         * fewer for small files) and `tail` (the last tail_len bytes, at most
         * 1 KiB) are this format: 0 no, 100 certain. `name` may be NULL. Must
         * not trust anything; no I/O. */
        int (*probe)(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                     uint64_t file_size, const char *name);

        /* Opens an existing image. `io` is borrowed and outlives the state.
         * `writable` says whether writes will come. Validates all metadata
         * it uses at open; tables may be validated entry by entry as they are
         * looked up (a read-only open of a huge image reads only its header). */
        int (*open)(void *state, vdisk_io *io, int writable, const open_ctx *ctx);

        /* Creates a new image on the empty io and leaves the state open
         * writable, as open() would. Data must be durable only after flush(). */
        int (*create)(void *state, vdisk_io *io, const create_params *p);

        /* Frees what open/create allocated. No I/O: the core flushed before.
         * Called for a half-opened state too (after a failed open/create). */
        void (*close)(void *state);

        /* Virtual size in bytes. */
        uint64_t (*get_size)(void *state);

        /* Allocation granularity in bytes (the block/cluster size), a power of
         * two multiple of 512; 0 when everything is always allocated (raw). */
        uint32_t (*block_size)(void *state);

        /* Describes how [offset, offset+len) starts: the status at `offset`
         * and how far it goes (ret->length in 1..len). */
        int (*map)(void *state, uint64_t offset, uint64_t len, map_result *ret);

        /* Reserves host space for the block containing `offset` (which maps
         * UNALLOC or ZERO) and returns its extent (ret->host_offset is the
         * start of the block's data, ret->length the block size). The table
         * does not change: reads still see the old mapping. *ret_fresh is set
         * when the space is known to read as zeros (e.g. appended past the
         * old end of the file), so the core can skip writing zeros into it.
         * The core holds at most one reservation per image and ends it with
         * commit() or release() before any other call. Optional: NULL means
         * the format cannot allocate (read-only or fixed-only formats); then
         * commit and release are NULL too. */
        int (*allocate)(void *state, uint64_t offset, map_result *ret, int *ret_fresh);

        /* Records the reserved block `res` for `offset` in the table (in
         * memory; on disk at the next flush, after the data). Called only
         * after the whole block's data was written. */
        int (*commit)(void *state, uint64_t offset, const map_result *res);

        /* Gives back a reservation whose data write failed. Never fails: at
         * worst the space leaks (the file may already have grown). */
        void (*release)(void *state, uint64_t offset, const map_result *res);

        /* Marks whole blocks [offset, offset+len) (block aligned) as reading
         * zeros without data, dropping their data (VDI ZERO blocks). Optional. */
        int (*mark_zero)(void *state, uint64_t offset, uint64_t len);

        /* Makes the image durable: flush data, then write the dirty table
         * entries and header fields, then flush again. Required for writable
         * formats. */
        int (*flush)(void *state);

        /* Metadata. get_meta fills what the format has (sets m->mask).
         * set_meta changes the fields in `mask` (in memory and on disk at the
         * next flush); fields the format lacks are -EOPNOTSUPP. */
        int (*get_meta)(void *state, meta *m);
        int (*set_meta)(void *state, const meta *m, uint32_t mask);

        /* Facts for `info`: cluster size, variant, dirty flag, block counts.
         * The core fills sizes. Optional. */
        int (*get_info)(void *state, vdisk_image_info *ret);

        /* Changes the virtual size. Growing keeps all data; the new range maps
         * UNALLOC. Shrinking drops the blocks past the end (the core checked
         * that they hold nothing). `p` (may be NULL) is for reporting the
         * bytes of data moved, if any: the backend may set its total before
         * adding to it; resize is never cancelled in the middle. Optional
         * (-EOPNOTSUPP). */
        int (*resize)(void *state, uint64_t new_size, vdisk_progress *p);

        /* Compacts: asks `fn` about every allocated block, drops what it may,
         * moves the remaining blocks down, and truncates the file. Every step
         * on disk is a valid image. Optional (-EOPNOTSUPP). */
        int (*compact)(void *state, compact_fn fn, void *ctx, vdisk_progress *p);

        /* Checks the metadata; with VDISK_CHECK_REPAIR_* fixes it (unless
         * VDISK_CHECK_DRY_RUN). Fills the report; messages are added with
         * check_report_add(). `p` (may be NULL) as for resize: a repair that
         * moves data reports its bytes. Optional (-EOPNOTSUPP). */
        int (*check)(void *state, uint32_t flags, vdisk_check_report *r, vdisk_progress *p);
} vdisk_backend;

/* Adds a formatted message to a check report (lib/core). */
int check_report_add(vdisk_check_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The backend table (lib/core/registry.c). */
extern const vdisk_backend backend_raw;
extern const vdisk_backend backend_vdi;
