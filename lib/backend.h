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

#include "util/util.h"
#include "vdisk/vdisk.h"

typedef struct tc_budget tc_budget;   /* lib/fmt/tablecache.h */

/* Companion files: the other files an image is made of (VMDK extents and
 * split files, Parallels bundle storages, a qcow2 external data file, the BIN
 * of a CUE sheet). The core hands a backend a files handle at open and
 * create; behind it is the caller's resolver (the path resolver of
 * vdisk-img: names relative to the image's directory, contained in it; the
 * fd table of vdiskd, whose FileNeeded error names what is missing). */
typedef struct vdisk_files vdisk_files;
enum {
        FILES_WRITE  = 1u << 0,   /* open read-write (only when the image is) */
        FILES_CREATE = 1u << 1,   /* create a new, empty file (create() and resize() only) */
};
/* Opens the companion `name`, as the image records it. The io is owned by
 * the handle (closed with the image) and stays valid while the image is
 * open; opening the same name twice returns the same io. Only during open(),
 * create() and resize() (through the disk's resolver: a disk without one
 * gets -ENOENT naming the file). -ENOENT names the missing file. */
int files_open(vdisk_files *f, const char *name, uint32_t flags, vdisk_io **ret);

/* What open() and create() get. */
/* An internal snapshot to open instead of the image's current state
 * (vdisk_disk_set_snapshot(), qemu-img's -l). */
typedef struct snapshot_sel {
        const char *id;         /* NULL: any id */
        const char *name;       /* NULL: any name */
        /* Only `id` is set, and it names an id or, when no id matches, a
         * name (qemu-img's bare "-l X"). */
        int id_or_name;
} snapshot_sel;

/* The index in v[0, n) (list_snapshots() order) of the snapshot `sel`
 * names; the first match wins. -ENOENT (recorded, naming it) when none. */
int snapshot_find(const vdisk_snapshot *v, size_t n, const snapshot_sel *sel, size_t *ret);

typedef struct open_ctx {
        vdisk_io *io;           /* the image's own file; borrowed, outlives the state */
        vdisk_files *files;     /* companion files (never NULL; may have no resolver) */
        int writable;           /* writes will come (always set for create) */
        /* VDISK_OPEN_INFO: only metadata will be asked for, no data. */
        int info_only;
        /* VDISK_OPEN_LIST_FILES (with info_only): files_open() only records
         * the name and gives a NULL io; the backend opens what its own file
         * says and nothing of the companions. Backends with companions
         * must honour it. */
        int list_files;
        /* The metadata budget of the disk the image is opened for (the whole
         * chain shares it): tables the backend holds go through
         * lib/fmt/tablecache under it, other metadata it keeps in proportion
         * to the image's size is charged with tc_budget_charge(). Never NULL. */
        tc_budget *budget;
        /* NULL: the image's current state. Else the internal snapshot to
         * read instead (never with `writable`): the backend finds it with
         * snapshot_find() over its list_snapshots() and from then on maps,
         * sizes and decodes as the snapshot recorded it, checking the
         * snapshot's tables as hostile as the current ones. Only backends
         * with list_snapshots get it (the core refuses it for others). */
        const snapshot_sel *snapshot;
} open_ctx;

/* How a range of an image reads. */
typedef enum map_kind {
        MAP_DATA,     /* stored verbatim in `file` at host_offset */
        MAP_ZERO,     /* reads as zeros, defined by this image (no fall-through) */
        MAP_UNALLOC,  /* not defined here: the parent's data shows through
                       * (zeros in a base image) */
        MAP_ENCODED,  /* inside an encoded unit (compressed cluster or grain,
                       * DMG chunk, cloop block): decode() turns the unit's
                       * encoded bytes into its data */
} map_kind;

typedef struct map_result {
        map_kind kind;
        vdisk_io *file;         /* DATA, ENCODED: the file holding the bytes;
                                 * NULL = the image's own io */
        uint64_t host_offset;   /* DATA: file offset of the first byte asked;
                                 * ENCODED: of the unit's encoded bytes */
        uint64_t length;        /* bytes from the asked offset with this status */
        /* ENCODED only: the unit. The asked offset lies in
         * [unit_offset, unit_offset + unit_length); `length` ends within it. */
        uint64_t unit_offset;   /* virtual offset where the unit starts */
        uint32_t unit_length;   /* decoded bytes (at most UNIT_MAX) */
        uint32_t encoded_length;/* encoded bytes at host_offset (at most UNIT_MAX) */
        uint32_t codec;         /* the backend's own tag for decode() */
        /* DATA only: the bytes are shared (a qcow2 cluster an internal
         * snapshot references too): a write must not go to host_offset but
         * through allocate(), which copies the unit on write. */
        int shared;
        /* ZERO and UNALLOC only: the unit keeps host space at host_offset
         * (a qcow2 cluster written as zeros, or with unallocated subclusters,
         * that kept its host cluster). Only block status reports it, as
         * qemu-img map does; reads and writes ignore it. */
        int space;
} map_result;

/* The largest encoded unit the core decodes (either side). */
#define UNIT_MAX (UINT32_C(32) << 20)

/* A reservation made by allocate(): host space for the virtual range
 * [unit_offset, unit_offset + length), which contains the asked offset.
 * The unit is the format's copy-on-write unit there: a whole block (VDI,
 * VHD, qcow2 cluster), or a part of an allocated block whose space already
 * exists (a qcow2 subcluster, VHD sectors) — sub-block allocation is the same
 * transaction, and the core fills the unit exactly. */
typedef struct reservation {
        vdisk_io *file;         /* NULL = the image's own io */
        uint64_t unit_offset;   /* virtual */
        uint64_t length;
        uint64_t host_offset;   /* where unit_offset's byte goes */
        int fresh;              /* the space reads as zeros: zero pages need no write */
} reservation;

/* Granularities, each its own number. */
typedef struct image_layout {
        uint64_t cluster_size;  /* reported (qemu's cluster_size); 0 = none */
        uint64_t zero_unit;     /* mark_zero() takes whole multiples of it; 0 = none */
        uint32_t sector_size;   /* logical sector: 512, 2048 (optical) or 4096 */
        /* BACKEND_STREAM or BACKEND_APPENDS for this image alone, in a
         * format whose other variants are not (a VMDK streamOptimized image
         * the backend is creating, a dynamic VDI): the core treats it as the
         * flag of the backend. */
        uint32_t flags;
        /* discard() also takes whole multiples of it inside a zero unit, one
         * zero unit at most per call (qcow2 subclusters); 0 = whole zero
         * units only */
        uint64_t discard_unit;
} image_layout;

/* vdisk_backend.flags */
enum {
        /* Virtual offset = host offset of the image's own io, everything
         * allocated (raw): the core reads and writes it directly. */
        BACKEND_IDENTITY  = 1u << 0,
        /* No writes at all (DMG, cloop, bochs, VHDX differencing ...):
         * a writable open is refused with -EROFS. */
        BACKEND_READ_ONLY = 1u << 1,
        /* Written once, in order (VMDK streamOptimized): existing images open
         * read-only; a new one takes stream_write() of whole units at rising
         * offsets, then finish(). */
        BACKEND_STREAM    = 1u << 2,
        /* info's actual size is the image's own file's alone, companions not
         * counted (qemu's qcow2 with an external data file). */
        BACKEND_SIZE_OWN_FILE = 1u << 3,
        /* New data blocks are appended at the end of the file that holds
         * them (hostalloc), rather than written where space was laid out
         * already (raw, fixed and flat images, an external data file): a
         * copy into such an image writes its data through the page cache
         * with the write-behind window, which is faster there than direct
         * writes (image_copy_path(), docs/performance.md). */
        BACKEND_APPENDS = 1u << 4,
};

/* The most a backend's probe() or peek() gets of a file's head. */
#define PEEK_HEAD_MAX (64u * 1024)

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
        /* A number the image renews when its content changes (VMDK CID), and
         * the parent's number a child recorded (VMDK parentCID;
         * VDISK_CONTENT_ID_NONE: not recorded). A child whose recorded number
         * differs from its parent's is refused at open (the parent changed
         * under it); relinking sets it. */
        META_CONTENT_ID        = 1u << 10,
        META_PARENT_CONTENT_ID = 1u << 11,
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
        /* META_PARENT_NAME: a second name of the parent, tried after
         * parent_name (VHD's absolute W2ku locator); borrowed, may be NULL.
         * Where the image records its parent's UUID too, the names are hints:
         * the core skips a named file with another UUID and then searches by
         * UUID. On set_meta, the absolute name of the new parent when the
         * core knows it (images opened by path), else NULL. */
        const char *parent_abs_name;
        uint32_t content_id, parent_content_id;
} meta;

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
        const char *parent_name;    /* diff: the parent's file name as the child
                                     * records it (formats that link by UUID
                                     * only ignore it); may be NULL */
        const char *parent_format;  /* diff: the parent's format, may be NULL */
        /* diff: the parent's file name relative to the child's directory and
         * its absolute name, when the core knows them (both images opened by
         * path: vdisk-img); NULL otherwise (vdiskd's fds, memory ios). For
         * formats that record several names (VHD's W2ru and W2ku locators). */
        const char *parent_rel_name;
        const char *parent_abs_name;
        /* diff: the parent's content ID (META_CONTENT_ID), when it has one */
        int has_parent_content_id;
        uint32_t parent_content_id;
        /* "-o" key/value pairs, NULL-terminated, each key one of the
         * backend's info.create_options (the core checked) and each value
         * normalized by type (sizes in bytes, booleans "on"/"off"). */
        const char *const *options;
} create_params;

/* What measure() gets (vdisk_measure(), qemu-img measure). */
typedef struct measure_params {
        uint64_t size;              /* the virtual size (the input's, when there is one) */
        /* "-o" pairs as create_params.options (checked against
         * info.create_options and normalized). */
        const char *const *options;
        int has_input;              /* the content of an input disk is measured */
        int has_backing;            /* "-o backing_file": the new image would be a diff */
        int input_is_qcow2;         /* the input's top image can hold persistent bitmaps */
        /* With an input: how many `unit`-byte units (aligned from offset 0)
         * hold data, from the input's block status (an extent with data and
         * not known to be zero), each unit counted once: qemu's count. */
        int (*count_units)(void *ctx, uint64_t unit, uint64_t *ret);
        void *ctx;
        /* The persistent bitmaps of the input's top image (convert --bitmaps
         * would copy them), n_bitmaps of them; NULL when none. */
        const vdisk_bitmap *bitmaps;
        size_t n_bitmaps;
} measure_params;

typedef struct measure_result {
        uint64_t required;          /* the new image with the input's data (or empty) */
        uint64_t fully_allocated;   /* the new image with every block allocated */
        int has_bitmaps;            /* print "bitmaps size" (qcow2 v3 from an input that can have them) */
        uint64_t bitmaps;
} measure_result;

/* Compact asks the core, for each allocated block, what may replace it. */
typedef enum compact_verdict {
        COMPACT_KEEP,
        COMPACT_UNALLOC,   /* the block equals what shows through from below */
        COMPACT_ZERO,      /* the block is all zeros but the parent is not */
} compact_verdict;
typedef int (*compact_fn)(void *ctx, uint64_t offset, const void *data, size_t len,
                          compact_verdict *ret);

/* Preallocation (qemu-img's -o preallocation=, resize --preallocation=).
 * The core parses the option, refuses modes a backend does not take with
 * qemu-img's words, and does the file work itself (lib/core/prealloc.c). */
typedef enum prealloc_mode {
        PREALLOC_OFF,
        PREALLOC_METADATA,   /* every block mapped to space in the file (sparse) */
        PREALLOC_FALLOC,     /* that, and the file's space allocated (fallocate) */
        PREALLOC_FULL,       /* that, and the file's space written with zeros */
        _PREALLOC_MAX,
} prealloc_mode;
#define PREALLOC_BIT(m) (1u << (m))

/* vdisk_backend.prealloc_flags */
enum {
        /* falloc/full allocate or zero every hole of the file after create()
         * (and a resize's new range): raw, and qcow2 over its metadata
         * preallocation. Without it, falloc/full are accepted and change
         * nothing, as qemu-img's file layer preallocates the empty file
         * before the format writes its header. */
        PREALLOC_FILE         = 1u << 0,
        /* metadata is the backend's own: it lists "preallocation" in its
         * create_options and gets "metadata" (also for falloc/full) there. */
        PREALLOC_BACKEND_META = 1u << 1,
        /* A new image's first 4 KiB are written (zeros), as qemu-img does for
         * a file it grows from empty (raw): probes of the storage's block
         * size read there. */
        PREALLOC_FIRST_BLOCK  = 1u << 2,
        /* resize refuses a mode as qemu's QED does ("Unsupported
         * preallocation mode 'falloc'"), not as its file layer does. */
        PREALLOC_RESIZE_QUOTED = 1u << 3,
};

typedef struct vdisk_backend {
        /* Name, qemu's name, caps, media, extensions, typed create options
         * (each with its default, in the order qemu-img prints them). */
        vdisk_backend_info info;
        /* Other accepted names (any case), NULL-terminated, may be NULL. */
        const char *const *aliases;
        /* BACKEND_* */
        uint32_t flags;
        /* Bytes of per-image state the core allocates (zeroed) for the backend. */
        size_t state_size;

        /* Scores how likely `head` (the first head_len bytes, at most 64 KiB,
         * fewer for small files) and `tail` (the last tail_len bytes, at most
         * 1 KiB) are this format: 0 no, 100 certain. `name` may be NULL. Must
         * not trust anything; no I/O. */
        int (*probe)(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                     uint64_t file_size, const char *name);

        /* Reads the identity an image records in its first bytes, without
         * opening it: `head` holds the first head_len bytes of the file (at
         * most PEEK_HEAD_MAX, fewer for small files), file_size is its size.
         * Fills whichever of META_UUID, META_MODIFICATION_UUID,
         * META_PARENT_UUID, META_PARENT_MOD_UUID and META_PARENT_NAME the
         * format records within the head (strings borrowed from `head`,
         * NUL-terminated within it) and sets ret->mask accordingly; nothing
         * else. The core calls it on every parent candidate of a UUID search
         * and opens only the match, so it must cost no more than the header:
         * pure, no I/O, no allocation. Trusts nothing: validates the header
         * fields as open() does before it reads any table, so that a file
         * open() would refuse for its header is no candidate (-EMEDIUMTYPE:
         * not this format; -EUCLEAN, -EOPNOTSUPP, -EFBIG as open() says).
         * -ENODATA: the identity is not in the head (a fixed VHD keeps its
         * footer at the end): the core opens that one metadata-only.
         * Optional: without it the core opens candidates metadata-only. */
        int (*peek)(const uint8_t *head, size_t head_len, uint64_t file_size, meta *ret);

        /* Opens an existing image. Validates all metadata it uses at open;
         * tables may be validated entry by entry as they are looked up (a
         * read-only open of a huge image reads only its header). Opens its
         * companion files through c->files (they are writable only when
         * c->writable). Never called writable for a BACKEND_READ_ONLY or
         * BACKEND_STREAM format. */
        int (*open)(void *state, const open_ctx *c);

        /* Creates a new image on the empty c->io (and the companions it
         * creates with FILES_CREATE) and leaves the state open writable, as
         * open() would. Data must be durable only after flush(). Optional
         * (read-only formats). */
        int (*create)(void *state, const open_ctx *c, const create_params *p);

        /* Frees what open/create allocated. No I/O: the core flushed before.
         * Called for a half-opened state too (after a failed open/create). */
        void (*close)(void *state);

        /* Virtual size in bytes. */
        uint64_t (*get_size)(void *state);

        /* The image's granularities (see image_layout). */
        void (*get_layout)(void *state, image_layout *ret);

        /* Describes how [offset, offset+len) starts: the status at `offset`
         * and how far it goes (ret->length in 1..len). Not called for
         * BACKEND_IDENTITY formats on the data path (only for block status). */
        int (*map)(void *state, uint64_t offset, uint64_t len, map_result *ret);

        /* Optional: whether qemu reads holes in the image's own file under
         * its data as zeros although the format does not say so (qcow2's
         * test for metadata preallocation). Block status as qemu-img map
         * reports it only; absent: no (fixed images say so by
         * VDISK_IMAGE_FLAGS_FIXED). */
        int (*file_holes)(void *state, bool *ret);

        /* Turns one encoded unit (m->encoded_length bytes in `in`) into its
         * m->unit_length bytes of data in `out`. Pure: no I/O, no change of
         * state, safe to call from several threads at once. A unit that does
         * not decode to exactly unit_length bytes is -EUCLEAN. Required when
         * map() reports MAP_ENCODED. */
        int (*decode)(const void *state, const map_result *m, const void *in, void *out);

        /* Reserves host space for a unit containing `offset` (which maps
         * UNALLOC or ZERO): see `reservation`. `len` (>= 1) is how far the
         * write goes; a backend may reserve a larger unit but never one that
         * starts after `offset` (qcow2 and QED reserve a run: the clusters
         * after offset's that hold nothing, as far as `len` reaches, within
         * one L2 table; commit then records them all, release frees them
         * all). The table does not change: reads still see
         * the old mapping. The core holds at most one reservation per image
         * and ends it with commit() or release() before any other call.
         * Optional: NULL means the format cannot allocate (read-only,
         * stream-only or fixed-only formats); then commit and release are
         * NULL too. */
        int (*allocate)(void *state, uint64_t offset, uint64_t len, reservation *ret);

        /* Records the reservation in the table (in memory; on disk at the
         * next flush, after the data). Called only after the whole unit's
         * data was written. */
        int (*commit)(void *state, const reservation *res);

        /* Gives back a reservation whose data write failed. Never fails: at
         * worst the space leaks (the file may already have grown). */
        void (*release)(void *state, const reservation *res);

        /* Marks whole zero units [offset, offset+len) (aligned to
         * layout.zero_unit, or ending at the image's end) as reading zeros
         * without data (VDI ZERO blocks, qcow2 zero clusters). Optional;
         * -EOPNOTSUPP where it cannot, and the core writes zeros instead. */
        int (*mark_zero)(void *state, uint64_t offset, uint64_t len);

        /* BACKEND_STREAM only: takes the data of [offset, offset+len), whole
         * units (the last may end at the image's end) at offsets above all
         * earlier ones; ranges never written read as unallocated. Anything
         * else is -EOPNOTSUPP. */
        int (*stream_write)(void *state, uint64_t offset, const void *buf, size_t len);

        /* BACKEND_STREAM formats that store units encoded (VMDK
         * streamOptimized grains), and formats with VDISK_CAP_COMPRESS
         * (qcow2, QCOW v1 compressed clusters, for a copy with
         * vdisk_copy_opts.compress): the largest encoding of `len` bytes, and
         * the encoding itself of one whole unit (layout.cluster_size bytes,
         * less at the image's end) into `out` (encode_bound() bytes). Pure:
         * no I/O, no change of state; copy runs it on several threads at
         * once. Optional: without it, copy hands stream_write() plain data. */
        size_t (*encode_bound)(const void *state, size_t len);
        int (*encode)(const void *state, const void *in, size_t len, void *out, size_t *ret_len);

        /* Takes one unit of `len` data bytes at `offset`, already encoded
         * by encode() (`enc_len` bytes), under the rules of stream_write().
         * For VDISK_CAP_COMPRESS formats (not BACKEND_STREAM) a copy with
         * compress calls it on the new, writable image, whole units at
         * rising offsets; what `enc` holds is the backend's own business
         * (qcow2: enc_len == len says encode() found no gain and `enc` is
         * the data, written as a plain cluster). */
        int (*stream_write_encoded)(void *state, uint64_t offset, size_t len, const void *enc, size_t enc_len);

        /* BACKEND_STREAM only: writes what follows the data (tables, footer,
         * end-of-stream marker). The core calls it once, at close of an
         * image it created, before the final flush(). */
        int (*finish)(void *state);

        /* Makes the image durable: flush data, then write the dirty table
         * entries and header fields, then flush again. Required for writable
         * formats. */
        int (*flush)(void *state);

        /* Metadata. get_meta fills what the format has (sets m->mask).
         * set_meta changes the fields in `mask` (in memory and on disk at the
         * next flush); fields the format lacks are -EOPNOTSUPP. Parent name
         * and format (META_PARENT_NAME) are set on relink by formats that
         * record them. */
        int (*get_meta)(void *state, meta *m);
        int (*set_meta)(void *state, const meta *m, uint32_t mask);

        /* Facts for `info`: variant, dirty flag, block counts. The core fills
         * sizes and the cluster size. Optional. */
        int (*get_info)(void *state, vdisk_image_info *ret);

        /* Format-specific facts as key/value strings (qemu-img info's
         * "Format specific information"), appended to `kv` with
         * strv_push_pair(). A list of objects is keys "<list>.<i>.<key>",
         * consecutive, i from 0 (VMDK's extents); a key ending in "[]" is a
         * list of strings, its value the strings joined by ',' (qcow2's
         * bitmap flags; "" is the empty list). Optional: none. */
        int (*get_format_info)(void *state, strv_builder *kv);

        /* Internal snapshots, oldest first; *ret is a calloc'ed array the
         * core frees with vdisk_snapshots_free(). Optional: none. */
        int (*list_snapshots)(void *state, vdisk_snapshot **ret, size_t *ret_n);

        /* Internal snapshots changed (writable opens only; the core flushed
         * first and refreshes the size after): create one of the current
         * state named `name` (the backend picks its id), make the snapshot
         * at index `i` of list_snapshots() the current state, or delete it.
         * Each is crash-safe on its own: a cut leaves the old or the new
         * table, at worst with leaked space. Optional (all three or none):
         * -EOPNOTSUPP from the core. */
        int (*snapshot_create)(void *state, const char *name, int64_t date_sec, uint32_t date_nsec);
        int (*snapshot_apply)(void *state, size_t i);
        int (*snapshot_delete)(void *state, size_t i);

        /* Optical regions (tracks of a CUE sheet), VD's VDQueryRegions; a
         * calloc'ed array. Optional: the core reports one region covering
         * the disk in layout.sector_size blocks. */
        int (*get_regions)(void *state, vdisk_region **ret, size_t *ret_n);

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

        /* Changes format options of the open, writable image in place
         * (qemu-img amend): `options` are "-o" pairs as for create (keys of
         * info.create_options, checked and normalized by the core; "size"
         * is the core's, never passed). An option that can only be set at
         * creation, or a change that cannot be made safely, is -EINVAL or
         * -EOPNOTSUPP with qemu's words, before anything changes. Every step
         * on disk is a valid image (a crash leaks space at most); `p` counts
         * the data it rewrites, and a cancel is honoured only before the
         * image changes (-ECANCELED). Optional: the core says the format
         * "does not support option amendment". */
        int (*amend)(void *state, const char *const *options, vdisk_progress *p);

        /* Checks the metadata; with VDISK_CHECK_REPAIR_* fixes it (unless
         * VDISK_CHECK_DRY_RUN). Fills the report; messages are added with
         * check_report_add() (lib/util). `p` (may be NULL) as for resize: a
         * repair that moves data reports its bytes. Optional (-EOPNOTSUPP). */
        int (*check)(void *state, uint32_t flags, vdisk_check_report *r, vdisk_progress *p);

        /* The file size a new image would take (qemu-img measure): an upper
         * bound of what create() and then writing the input's data make
         * (with the core's copy, which writes no zero blocks), and qemu's
         * own figures where the layouts are qemu's. No state, no I/O but
         * count_units(). Optional (-EOPNOTSUPP). */
        int (*measure)(const measure_params *p, measure_result *ret);

        /* Preallocation: the modes create() and resize() take, as
         * PREALLOC_BIT()s (0 = off only), and PREALLOC_* flags above. */
        uint32_t prealloc_create;
        uint32_t prealloc_resize;
        uint32_t prealloc_flags;
        /* Discards whole zero units [offset, offset+len) (aligned as for
         * mark_zero; the core calls it for one unit at a time, whatever
         * the unit holds; with layout.discard_unit also whole sub-units
         * within one unit, the last one possibly cut by the image's end)
         * so that they keep no host space: afterwards
         * they read as zeros, as after mark_zero (never the parent's data;
         * in an image without a parent, unallocated), and the space they
         * held is given back at the next flush, after the table entries
         * that dropped it are on disk. vdisk_disk_discard() only. Optional:
         * -EOPNOTSUPP (or NULL) and the core writes zeros instead, as
         * vdisk_disk_write_zeroes() does. */
        int (*discard)(void *state, uint64_t offset, uint64_t len);
        /* Told of every write of [offset, offset+len) (data, zeroes,
         * discard) before anything of it changes: formats that record
         * changed ranges (qcow2 persistent dirty bitmaps) note it, and may
         * first write metadata (mark their bitmaps in use). Optional. */
        int (*note_write)(void *state, uint64_t offset, uint64_t len);

        /* Persistent bitmaps (see vdisk_bitmap in vdisk.h): list them, read
         * one's content, change them (writable images; durable on return).
         * Optional: a format without them has none (list) or -EOPNOTSUPP. */
        int (*list_bitmaps)(void *state, vdisk_bitmap **ret, size_t *ret_n);
        int (*read_bitmap)(void *state, const char *name, uint8_t **ret, size_t *ret_len, uint64_t *ret_granularity);
        int (*change_bitmap)(void *state, const vdisk_bitmap_change *c);
} vdisk_backend;

/* The backend table (lib/core/registry.c). */
extern const vdisk_backend backend_raw;
extern const vdisk_backend backend_vdi;
extern const vdisk_backend backend_vhd;
extern const vdisk_backend backend_vmdk;
extern const vdisk_backend backend_qcow2;
extern const vdisk_backend backend_qcow;
extern const vdisk_backend backend_qed;

/* A backing file name qemu reads as a protocol or json: options, not a file
 * name (lib/backends/qcow.c; for the qemu formats that record names). */
bool vdisk_backing_name_is_protocol(const char *name);
