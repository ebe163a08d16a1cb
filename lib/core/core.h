/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* lib/core: images (one layer), the disk (the chain), the generic data path.
 * Operations (lib/ops) build on these; backends never see them. */
#pragma once

#include <pthread.h>
#include <stdint.h>

#include "backend.h"
#include "fmt/tablecache.h"
#include "io/io.h"
#include "util/util.h"

/* Decoded encoded units (compressed clusters, DMG chunks), a few per image,
 * so that small reads inside one unit decode it once. */
#define UNIT_CACHE_N 4
typedef struct unit_entry {
        vdisk_io *file;         /* key: where the encoded bytes are, how many, */
        uint64_t host_offset;
        uint32_t encoded_length;
        uint32_t codec;         /* and how they decode */
        uint8_t *data;          /* NULL: empty slot */
        uint32_t length;
        uint64_t last_use;
} unit_entry;

struct vdisk_image {
        vdisk_disk *disk;
        const vdisk_backend *be;
        void *state;            /* be->state_size bytes */
        vdisk_io *io;           /* a reference */
        vdisk_files *files;     /* companion files */
        unsigned index;         /* position in the chain, 0 = base */
        int writable;           /* opened for writing */
        int info_only;          /* VDISK_OPEN_INFO */
        int snapshot;           /* reads an internal snapshot: never written, never reopened writable */
        int open_ok;            /* be->open/create succeeded: close() needed */
        int created;            /* made by image_create() */
        int finished;           /* BACKEND_STREAM: finish() done */
        uint64_t size;          /* cached be->get_size() */
        image_layout layout;    /* cached be->get_layout() */
        int modified;           /* written since open (modification UUID renewed) */
        char *comment_cache;
        unit_entry units[UNIT_CACHE_N];
        uint64_t unit_clock;
        tc_budget *budget;      /* a reference: the disk's, or its own when opened alone */

        int8_t file_holes;      /* image_file_holes(): 0 not decided yet, 1 yes, -1 no */

        /* vdisk_image_set_direct_fd(): the caller's O_DIRECT descriptor of the
         * image's file (our duplicate), given to the io whenever the image is
         * (or becomes, disk_make_writable) writable. */
        bool have_direct;
        int direct_fd;
};

struct vdisk_resolver {
        _Atomic unsigned n_ref;
        vdisk_resolver_ops ops;
        void *user;
};

struct vdisk_disk {
        pthread_mutex_t lock;   /* serializes every call on this disk (see guard.c) */
        vdisk_image *images[VDISK_CHAIN_MAX];
        unsigned n;
        char **warnings;        /* NULL-terminated */
        size_t n_warnings;
        vdisk_resolver *resolver;   /* a reference: reopens images writable on demand; may be NULL */
        int readonly;           /* opened with VDISK_OPEN_READONLY: never reopen writable */
        tc_budget *budget;      /* metadata budget of every image of the chain */
        uint8_t *scratch;       /* COW_CHUNK bytes for assembling new units (rw.c), under the lock */
        /* vdisk_disk_set_snapshot(): the snapshot the next open reads (snapshot.c) */
        struct snap_hold {
                bool set;
                snapshot_sel sel;
                char *id, *name;
        } snap;

        /* Long operations (lib/ops) take the lock per chunk and release it in
         * between; these fields (under the lock) keep the chain as they found
         * it. See guard.c for the rules. */
        unsigned op_users[VDISK_CHAIN_MAX];  /* running operations whose highest level is i */
        int pin;                /* level a running copy writes (and may remove), or -1 */
        bool exclusive;         /* a merge runs: no other operation, no chain change */
        bool top_leaving;       /* that merge removes the top: writes to it are refused */
};

/* registry.c */
const vdisk_backend *backend_lookup(const char *name);
size_t backend_table_size(void);
const vdisk_backend *backend_table_get(size_t i);
const vdisk_backend *backend_from_info(const vdisk_backend_info *info);
/* Checks "-o" pairs against the backend's typed options: known keys (not
 * size/backing_file/backing_fmt, which are arguments of their own), booleans
 * "on"/"off", sizes and numbers in decimal. -EINVAL naming the key. */
int backend_check_options(const vdisk_backend *be, const char *const *options);

/* probe.c: best backend for io, or -EMEDIUMTYPE. */
/* probe_backend() for a parent candidate of a UUID search (never raw): from
 * the head alone when that identifies the format, so that a sparse file
 * that merely claims a huge size is read no further than its head; the
 * tail only when the head says nothing (a fixed VHD's footer). */
int probe_candidate(vdisk_io *io, const char *name, const vdisk_backend **ret);
int probe_backend(vdisk_io *io, const char *name, int allow_raw, const vdisk_backend **ret,
                  int *ret_guessed_raw);

/* files.c: the companion files of one image. The resolver and the image
 * name are borrowed until files_seal(), at the end of open/create. */
int files_new(vdisk_resolver *res, const char *image_name, int writable, vdisk_files **ret);
void files_seal(vdisk_files *f);
/* Lends a resolver and name again until files_seal(): for a resize, which
 * may add companion files (the disk's resolver; NULL: none can be opened). */
void files_unseal(vdisk_files *f, vdisk_resolver *res, const char *image_name);
vdisk_files *files_free(vdisk_files *f);
/* VDISK_OPEN_LIST_FILES: files_open() records the name and returns 0 with
 * *ret = NULL (a backend that sees open_ctx.list_files skips what it would
 * read from the companion). */
void files_set_list_only(vdisk_files *f);
const char *files_name(const vdisk_files *f, size_t i);
size_t files_count(const vdisk_files *f);
vdisk_io *files_get(const vdisk_files *f, size_t i);

/* probe.c: the identity fields (META_UUID, META_MODIFICATION_UUID,
 * META_PARENT_UUID, META_PARENT_MOD_UUID, META_PARENT_NAME) of the `be` image
 * on io, from its first PEEK_HEAD_MAX bytes through be->peek, without opening
 * it; backends without peek are opened metadata-only instead (UUIDs only).
 * Strings in *ret point into *ret_head, which the caller frees (may be NULL). */
int image_peek(const vdisk_backend *be, vdisk_io *io, meta *ret, uint8_t **ret_head);

/* image.c */
/* `res` (may be NULL) opens companion files during the open. `budget` is
 * the metadata budget the image's tables count against (its disk's, so that
 * the whole chain shares one); NULL gives the image a default budget of its
 * own (images looked at outside a disk). */
/* info_only: 0, 1 (VDISK_OPEN_INFO), or 2 (VDISK_OPEN_LIST_FILES too). */
int image_open(const vdisk_backend *be, vdisk_io *io, vdisk_resolver *res, int writable, int info_only,
               tc_budget *budget, vdisk_image **ret);
/* The same, reading the internal snapshot `snap` (NULL: the current state). */
int image_open_snapshot(const vdisk_backend *be, vdisk_io *io, vdisk_resolver *res, int writable, int info_only,
                        tc_budget *budget, const snapshot_sel *snap, vdisk_image **ret);

/* snapshot.c: what vdisk_disk_set_snapshot() set, taken by the open that
 * uses it (the disk forgets it), and freed. */
void snap_hold_take(vdisk_disk *d, struct snap_hold *ret);
void snap_hold_done(struct snap_hold *h);
int image_create(const vdisk_backend *be, vdisk_io *io, vdisk_resolver *res, const create_params *p,
                 tc_budget *budget, vdisk_image **ret);
/* Finishes a stream, flushes if writable, then closes and frees; returns the
 * first error of those (the image is gone either way). image_free() is the
 * same for cleanup paths that have an error to report already. */
int image_close(vdisk_image *img);
vdisk_image *image_free(vdisk_image *img);
int image_flush(vdisk_image *img);
/* BACKEND_STREAM images the core created: writes the tables and footer, once. */
int image_finish(vdisk_image *img);
/* Write-behind (io.h) on the files of an image an operation writes in bulk
 * (copy, merge), with its large writes on `path`: IO_PATH_DIRECT, they go
 * behind while the caller goes on; IO_PATH_CACHED, the page cache with the
 * write-behind window. Under the disk's lock. image_queue_end() drains and
 * ends every queue of the image and returns the first queued write's error;
 * it runs on every way out of the operation, so nothing is written after it
 * returns. */
void image_queue_begin(vdisk_image *img, io_path path);
int image_queue_end(vdisk_image *img);
/* The path of a copy's writes into img: the page cache where the format
 * appends its new blocks (BACKEND_APPENDS), direct otherwise. Merge writes
 * direct whatever the format: it overwrites the target's allocated blocks. */
io_path image_copy_path(const vdisk_image *img);
/* The decoded bytes of the encoded unit `m` maps (cached); borrowed until
 * the next call on the image. */
int image_decode_unit(vdisk_image *img, const map_result *m, const uint8_t **ret);
/* The file a map result or reservation names. */
static inline vdisk_io *image_file(vdisk_image *img, vdisk_io *file) {
        return file ? file : img->io;
}
/* Operations reach the backend's optional callbacks through these: each
 * says -EOPNOTSUPP, naming the file, when the format lacks it. */
int image_resize(vdisk_image *img, uint64_t new_size, vdisk_progress *p);
int image_compact(vdisk_image *img, compact_fn fn, void *ctx, vdisk_progress *p);
int image_amend(vdisk_image *img, const char *const *options, vdisk_progress *p);
int image_check(vdisk_image *img, uint32_t flags, vdisk_check_report *r, vdisk_progress *p);
int image_get_info(vdisk_image *img, vdisk_image_info *ret);
static inline bool image_can_check(const vdisk_image *img) {
        return img->be->check;
}
static inline bool image_can_compact(const vdisk_image *img) {
        return img->be->compact;
}
int image_get_meta(vdisk_image *img, meta *m);
int image_set_meta(vdisk_image *img, const meta *m, uint32_t mask);
/* Re-reads the cached size and layout after a resize. */
void image_refresh(vdisk_image *img);
/* Before the first write: renews the modification UUID (VirtualBox does). */
int image_mark_modified(vdisk_image *img);

/* disk.c */
int disk_add_warning(vdisk_disk *d, const char *fmt, ...) _printf_(2, 3);
/* Pushes an opened image on top; checks linkage unless skip_checks. */
int disk_push(vdisk_disk *d, vdisk_image *img, int skip_checks);
/* Makes image `level` writable before an operation writes into it: a no-op
 * when it is; else reopens its file writable through the disk's resolver
 * (same file, checked) and swaps a fresh open of the backend into the chain
 * at the same index (nothing was written through the read-only one). -EROFS
 * when the disk has no resolver or was opened read-only; -EPERM for an
 * info-only image. */
int disk_make_writable(vdisk_disk *d, unsigned level);
/* Takes images [lo, hi] out of the chain, closing them; renumbers the rest.
 * Returns the first flush error of the closed images (they are gone anyway). */
int disk_remove_range(vdisk_disk *d, unsigned lo, unsigned hi);
/* vdisk_disk_create_base/diff without taking the lock. */
int disk_create_base(vdisk_disk *d, vdisk_io *io, const char *format, uint64_t size,
                     const vdisk_create_opts *opts);
int disk_create_diff(vdisk_disk *d, vdisk_io *io, const char *format, const vdisk_create_opts *opts);
/* ops/resize.c: resizes image `level` alone (no checks of the content). */
int resize_image(vdisk_disk *d, unsigned level, uint64_t new_size, vdisk_progress *p);
/* ops/merge.c: vdisk_merge(); with `keep` (the top merged into `to`: from
 * is the top, from > to) the top stays, relinked onto `to` (vdisk_commit).
 * *ret_copied (may be NULL): whether the data reached `to` (flushed). */
int merge_images(vdisk_disk *d, unsigned from, unsigned to, bool keep, vdisk_progress *p, bool *ret_copied,
                 char ***ret_removed);

/* api.c: the parent UUID of `img` and, when `name` is not NULL, its parent
 * name (and format) in one metadata write, so that a format naming its
 * parent (qcow2) is never left between two links, or with none. */
int image_set_link(vdisk_image *img, const uint8_t uuid[16], const char *name, const char *format);

/* rw.c: the generic data path. `level` is an image index: the view at level L
 * is what image L shows with its ancestors below it. */

/* Reads the view at `level`. Past an image's end, reads zeros. */
int rw_read(vdisk_disk *d, unsigned level, void *buf, size_t len, uint64_t offset);
/* Writes into image `level`, copying partial blocks from the view at level-1. */
int rw_write(vdisk_disk *d, unsigned level, const void *buf, size_t len, uint64_t offset);
/* rw_write, but the blocks it allocates are written whole, zero pages too
 * (rw_write leaves them as holes of the file where the space is new):
 * convert -S 0, whose output takes its full size on the host. */
int rw_write_filled(vdisk_disk *d, unsigned level, const void *buf, size_t len, uint64_t offset);
/* Makes [offset, offset+len) of image `level` read zeros, using the format's
 * zero marker for whole blocks where it has one. `below` is the level whose
 * view will show through unallocated ranges of `level` (normally level - 1;
 * -1: nothing, zeros): where it reads zeros, nothing needs writing. A merge
 * that is about to relink `level` passes the future parent. */
int rw_write_zeroes(vdisk_disk *d, unsigned level, int below, uint64_t offset, uint64_t len);
/* Discards at the top: reads zero afterwards; host space is released. */
int rw_discard(vdisk_disk *d, uint64_t offset, uint64_t len);
/* Status of the view restricted to images [bottom, top]: ret->depth counts
 * from `top` down (0 = image top) and is -1 when none of them defines the range. */
int rw_status(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len,
              vdisk_extent *ret);
/* Cuts the data extent `e` (its host offset in `io`) where the run of the
 * file at its start, hole or data, ends; returns whether that run is a hole
 * (past the file's end is one). Left whole where the io cannot tell. */
bool extent_file_run(vdisk_io *io, vdisk_extent *e);
/* Whether qemu takes holes in the image's own file under its data for zeros
 * (qemu-img map's "zero": true, "data": true; measure does not count them). */
bool image_file_holes(vdisk_image *img);
/* rw_status(), then where image_file_holes() says so, data over a hole of the
 * file holding it (the image's or a companion) reads as zeros: the extent
 * gains ZERO (keeping DATA) and ends where the file's hole or data ends. */
int rw_status_file(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len,
                   vdisk_extent *ret);
/* Does the view at `level` read zeros in the range? (level -1: yes) */
int rw_is_zero(vdisk_disk *d, int level, uint64_t offset, uint64_t len, bool *ret);
/* Size of the view at `level` (= image level's size). */
uint64_t rw_size(vdisk_disk *d, unsigned level);

/* ops/copy.c: copies the view of src's images [src_bottom, top] into image
 * `level` of dst (new, reading zeros), then finishes and flushes it. Called
 * with no disk lock held: it takes each disk's lock per chunk (guard.c);
 * vdisk_copy registers both disks first, so their chains stay put. */
int copy_run(vdisk_disk *src, unsigned src_bottom, vdisk_disk *dst, unsigned level, uint64_t size,
             uint64_t sparse, vdisk_progress *p);

/* ops/encode.c: a pool of encoding threads for one copy into `img` (a
 * stream image with encode(), or an image copy compresses into: qcow2).
 * encode_pool_submit() hands over the units of buf (destination offset
 * `offset`, unit aligned, at most OP_BUFFER_SIZE; offsets rising; len 0: a
 * buffer with nothing to write, kept in order) to be encoded on the pool and
 * written in order to the stream_write_encoded() of `img`; all-zero units are
 * left out unless `zeros_matter` (a differencing image: they are encoded
 * too). Up to `buffers` (1..ENCODE_BUFFERS_MAX) buffers are in the pool at
 * once: submit waits (writing, and encoding too) until there is room, and
 * returns how many buffers were done since the last call, oldest first —
 * the caller keeps each buffer untouched until then. encode_pool_drain()
 * writes everything and returns the same count. Both run under the lock of
 * `img`'s disk (they write); after a failure every call returns it.
 * `threads`: workers (0 = one per online CPU). */
#define ENCODE_BUFFERS_MAX 4u
typedef struct encode_pool encode_pool;
int encode_pool_new(vdisk_image *img, unsigned threads, bool zeros_matter, unsigned buffers, encode_pool **ret);
int encode_pool_submit(encode_pool *p, const uint8_t *buf, uint64_t len, uint64_t offset);
int encode_pool_drain(encode_pool *p);
unsigned encode_pool_pending(encode_pool *p);
void encode_pool_free(encode_pool *p);

/* Data buffer size for operations: big enough to keep the disk busy, small
 * enough for the 64 MiB memory bound with two stages in flight. */
#define OP_BUFFER_SIZE (4u << 20)
/* The most an operation asks block status for at once: ranges nothing
 * defines (or both sides read as zeros) are passed in steps of this size,
 * so a hole of terabytes costs a few thousand metadata lookups, each bounded
 * (a VDI map scan of 1024 entries), while the lock is taken per step. */
#define OP_STATUS_SPAN (UINT64_C(1) << 30)

/* A scoped lock: _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(d); */
static inline vdisk_disk *disk_lock(vdisk_disk *d) {
        pthread_mutex_lock(&d->lock);
        return d;
}
static inline void disk_unlockp(vdisk_disk **d) {
        if (*d)
                pthread_mutex_unlock(&(*d)->lock);
}

/* guard.c: running operations and changes of the chain. All with d->lock held. */
typedef enum op_kind {
        OP_SHARED,              /* reads levels 0..top, or writes into a level it does not remove */
        OP_EXCLUSIVE,           /* merge: nothing else may start, nothing may change the chain */
} op_kind;
/* The highest level an operation starting now may use: the top, or the level
 * below an image a running copy is still writing. -EBUSY when there is none. */
int disk_op_top(vdisk_disk *d, unsigned *ret);
/* Registers an operation that uses levels 0..top; -EBUSY during a merge (and
 * for OP_EXCLUSIVE, while any operation runs). */
int disk_op_begin(vdisk_disk *d, op_kind kind, unsigned top);
void disk_op_end(vdisk_disk *d, op_kind kind, unsigned top);
/* ops/side.c: one disk of a two-disk operation (compare, copy into), at
 * the highest level an operation may use now (disk_op_top). begin checks it
 * (no information-only image; for `write`, the top image itself, made
 * writable, with no copy or merge on it) and registers an OP_SHARED
 * operation until end (which is a no-op unless begin succeeded). status and
 * read take the disk's lock per call. */
typedef struct op_side {
        vdisk_disk *d;
        unsigned top;
        uint64_t size;          /* of image `top` */
        bool registered;
} op_side;
int op_side_begin(op_side *s, bool write);
void op_side_end(op_side *s);
int op_side_status(op_side *s, uint64_t offset, uint64_t len, vdisk_extent *ret);
int op_side_read(op_side *s, void *buf, size_t len, uint64_t offset);
/* May an image be put on top of the chain now? (-EBUSY while a copy writes
 * into this disk or a merge runs.) */
int disk_may_add(vdisk_disk *d);
/* May images lo..top be taken out of the chain now? (-EBUSY while an
 * operation uses any of them, or a merge runs.) */
int disk_may_remove(vdisk_disk *d, unsigned lo);
/* -EBUSY while a merge runs (compact, check: they hold the lock throughout). */
int disk_no_merge(vdisk_disk *d);
/* May the chain's sizes change now? (-EBUSY while any operation runs.) */
int disk_may_reshape(vdisk_disk *d);
/* Any operation running? */
bool disk_op_running(vdisk_disk *d);

/* resolver.c */
/* The names by which the image on `child` can record its parent on
 * `parent`: relative to the child's directory and absolute, both when the
 * resolver is the path resolver and both ios are the files their names lead
 * to; else both NULL (vdiskd's fds, memory ios). Freed by the caller. */
int resolver_link_names(vdisk_resolver *r, vdisk_io *child, vdisk_io *parent, char **ret_rel, char **ret_abs);
/* The one rule for the name a child records for its parent when a commit,
 * merge or relink names it: resolver_link_names()'s relative name where both
 * are files opened by path (what qemu-img records for `-b NAME` given
 * relative to the child), else the base name the parent's io carries
 * (vdiskd's fds: the caller's name). *ret_abs may get NULL. */
int resolver_parent_name(vdisk_resolver *r, vdisk_io *child, vdisk_io *parent, char **ret_name, char **ret_abs);
/* The absolute, canonical name of the file `name` leads to, named as the
 * image on `child` names its parent (relative to its directory); NULL when
 * the resolver is not the path resolver or the name leads nowhere. */
char *resolver_abs_name(vdisk_resolver *r, vdisk_io *child, const char *name);
int resolver_open_name(vdisk_resolver *r, const char *name, const char *child, int writable, vdisk_io **ret);
int resolver_find_uuid(vdisk_resolver *r, const uint8_t uuid[16], const char *format, const char *child,
                       int writable, vdisk_io **ret);
/* The resolver's reopen: a writable io on the same file as io, or an error
 * naming the file (-EROFS when the resolver cannot reopen at all). */
int resolver_reopen(vdisk_resolver *r, vdisk_io *io, vdisk_io **ret);

/* prealloc.c: qemu's file layer options (preallocation, nocow) for every
 * writable format. */
typedef struct prealloc_req {
        prealloc_mode mode;
        bool nocow;
} prealloc_req;
/* "preallocation" or "nocow" when `be` creates files and `key` is one of
 * them (they are every writable format's options); else NULL. */
const vdisk_option_desc *prealloc_file_option(const vdisk_backend *be, const char *key);
int prealloc_mode_parse(const char *s, prealloc_mode *ret);
const char *prealloc_mode_name(prealloc_mode m);
/* Takes preallocation and nocow out of `options` into *rq, checking the
 * mode against the backend with qemu-img's words; *ret_rest (calloc'ed,
 * strings borrowed) is what the backend gets: its own "preallocation"
 * (off or metadata) when PREALLOC_BACKEND_META. */
int prealloc_take_options(const vdisk_backend *be, const char *const *options, prealloc_req *rq,
                          const char ***ret_rest);
/* Allocates (falloc) or writes zeros into (full) the holes of [from, to)
 * of io; off and metadata do nothing. */
int prealloc_range(vdisk_io *io, uint64_t from, uint64_t to, prealloc_mode mode);
/* Writes zeros into the first 4 KiB (or `size`) of a new file. */
int prealloc_first_block(vdisk_io *io, uint64_t size);
/* After create(): the first block and the file work the request asks for. */
int prealloc_after_create(vdisk_image *img, const prealloc_req *rq);
/* Checks a resize's mode (NULL = off) against the backend, with qemu-img's
 * words; *ret the mode. */
int prealloc_check_resize(const vdisk_backend *be, const char *mode, uint64_t old_size, uint64_t new_size,
                          prealloc_mode *ret);
