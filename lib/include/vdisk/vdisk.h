/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libvdisk — virtual disk image containers (a base image plus a chain of
 * differencing images), every format backend and the long operations on them.
 *
 * Conventions (the whole API follows them):
 *   - Every function that can fail returns a negative errno-style code (0 or a
 *     non-negative value on success) and records a human message that names the
 *     file and the cause; vdisk_last_error() returns it (thread-local).
 *   - ret_ parameters come last and are written only on success.
 *   - unref/free functions accept NULL and return NULL.
 *   - Offsets and sizes are uint64_t bytes; booleans are int.
 *   - Option structs start with a `size` member (set it to sizeof the struct);
 *     they only ever grow by appending, so old callers keep working.
 *   - Thread safety: every call on a vdisk_disk (and on its images) takes the
 *     disk's lock, so any thread may call in. Long operations (copy, compare,
 *     merge) take it per chunk, so reads and writes of the same disk go on
 *     while they run; while one runs, the images it uses cannot be closed or
 *     merged away (-EBUSY). No call holds two disks' locks at once. A
 *     vdisk_progress may be read and cancelled from any thread while an
 *     operation runs on another; its callback runs without any disk lock held
 *     (except in compact, check and resize, which hold the lock throughout).
 *     vdisk_disk_unref()/close() must not race with other calls on the disk.
 *
 * Codes used with a fixed meaning:
 *   -EMEDIUMTYPE not this format / unknown format      -EOPNOTSUPP unsupported feature
 *   -EUCLEAN     corrupt metadata                      -EFBIG      too large
 *   -ELOOP       parent loop / chain too deep          -ENOENT     parent not found
 *   -EROFS       write to a read-only image            -EBUSY      busy
 *   -ECANCELED   cancelled                             -E2BIG      a limit was reached
 *   -ENOTUNIQ    two candidate parents with one UUID   -ESTALE     parent UUID mismatch
 */
#ifndef VDISK_VDISK_H
#define VDISK_VDISK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VDISK_SECTOR_SIZE 512u

/* ---------------------------------------------------------------- errors */

/* The detail message of the last failure on this thread ("" if none). */
const char *vdisk_last_error(void);
/* Clears the detail message of this thread. */
void vdisk_clear_error(void);
/* Library version string, e.g. "0.1.0". */
const char *vdisk_version(void);

/* ---------------------------------------------------------------- I/O */

typedef struct vdisk_io vdisk_io;

/* Caller-supplied I/O. Every callback returns 0 or a negative errno. pread and
 * pwrite transfer the whole range or fail (a read past the end of the file is
 * -EIO unless the callback zero-fills). */
typedef struct vdisk_io_ops {
        size_t size;
        int (*pread)(void *user, void *buf, size_t len, uint64_t offset);
        int (*pwrite)(void *user, const void *buf, size_t len, uint64_t offset);
        int (*flush)(void *user);
        int (*get_size)(void *user, uint64_t *ret_size);
        int (*truncate)(void *user, uint64_t size);                 /* optional */
        int (*punch_hole)(void *user, uint64_t offset, uint64_t len); /* optional */
        void (*close)(void *user);                                  /* optional */
} vdisk_io_ops;

enum {
        VDISK_IO_READONLY = 1u << 0, /* refuse writes with -EROFS */
        VDISK_IO_OWN_FD   = 1u << 1, /* vdisk_io_new_fd: close the fd with the io */
        VDISK_IO_NOSYNC   = 1u << 2, /* flushes write metadata but never wait for the disk
                                      * (qemu's cache=unsafe): for throwaway outputs */
        VDISK_IO_DIRECT   = 1u << 3, /* large aligned writes bypass the page cache (O_DIRECT,
                                      * through a second descriptor of the same file, opened
                                      * via /proc/self/fd; silently off where that fails):
                                      * for bulk writes that end in a flush */
        VDISK_IO_DIRECT_ONLY = 1u << 4, /* with VDISK_IO_DIRECT (or a descriptor from
                                         * vdisk_io_set_direct_fd()): a copy's large writes stay
                                         * direct even into a format that appends its blocks,
                                         * where the copy would take the page cache (the
                                         * caller asked for cache=none or directsync) */
};

/* Flags of vdisk_io_open_path(). */
enum {
        VDISK_PATH_READ   = 0,
        VDISK_PATH_WRITE  = 1u << 0, /* open read-write */
        VDISK_PATH_CREATE = 1u << 1, /* create; fails with -EEXIST if it exists */
        VDISK_PATH_TRUNC  = 1u << 2, /* with CREATE: replace an existing regular file */
        VDISK_PATH_NOSYNC = 1u << 3, /* the io gets VDISK_IO_NOSYNC */
        VDISK_PATH_DIRECT = 1u << 4, /* with WRITE: the io gets VDISK_IO_DIRECT */
        VDISK_PATH_NOFOLLOW = 1u << 5, /* a symlink as the last component is -ELOOP */
        VDISK_PATH_DIRECT_ONLY = 1u << 6, /* with DIRECT: the io gets VDISK_IO_DIRECT_ONLY */
};

/* An io over a file descriptor (must be a regular file or block device). The
 * fd is duplicated unless VDISK_IO_OWN_FD is given; `name` (may be NULL) is
 * used in error messages. */
int vdisk_io_new_fd(int fd, const char *name, uint32_t flags, vdisk_io **ret);
/* Gives a writable fd io a descriptor of the same file opened with O_DIRECT,
 * for its large aligned writes: what VDISK_IO_DIRECT does by reopening the
 * file, for callers that cannot reopen it (a service handed descriptors by its
 * clients). `fd` is duplicated. -EINVAL if io is not a writable fd io or fd is
 * not open for writing with O_DIRECT (or has O_APPEND); -EBADF if it is
 * another file. Call it before the io is shared with other threads. */
int vdisk_io_set_direct_fd(vdisk_io *io, int fd);
/* Opens a path (O_CLOEXEC; refuses anything but a regular file or block device). */
int vdisk_io_open_path(const char *path, uint32_t path_flags, vdisk_io **ret);
/* An io over a growable memory buffer; `data` (may be NULL) is copied. */
int vdisk_io_new_memory(const void *data, size_t len, const char *name, uint32_t flags, vdisk_io **ret);
/* Borrows the memory io's buffer (valid until the next write or unref). */
int vdisk_io_memory_data(vdisk_io *io, const void **ret_data, size_t *ret_len);
int vdisk_io_new_ops(const vdisk_io_ops *ops, void *user, const char *name, uint32_t flags, vdisk_io **ret);

vdisk_io *vdisk_io_ref(vdisk_io *io);
vdisk_io *vdisk_io_unref(vdisk_io *io);
const char *vdisk_io_name(const vdisk_io *io);
int vdisk_io_readonly(const vdisk_io *io);
int vdisk_io_pread(vdisk_io *io, void *buf, size_t len, uint64_t offset);
int vdisk_io_pwrite(vdisk_io *io, const void *buf, size_t len, uint64_t offset);
int vdisk_io_flush(vdisk_io *io);
int vdisk_io_get_size(vdisk_io *io, uint64_t *ret_size);
int vdisk_io_truncate(vdisk_io *io, uint64_t size);
/* The identity of the file under a fd io (fstat's st_dev and st_ino), so a
 * resolver can tell whether another descriptor is the same file. -EOPNOTSUPP
 * for ios that are not over a file descriptor. */
int vdisk_io_get_file_id(vdisk_io *io, uint64_t *ret_dev, uint64_t *ret_ino);

/* Fault injection (tests). A fault io wraps another io and counts its writes
 * (pwrite, truncate and punch_hole each count as one write) and its flushes.
 *
 * Persistent faults (once == 0) model a device that stays broken: from write
 * `after` on, writes keep failing. Transient faults (once != 0) model a full
 * file system that gets space back, or a single I/O error: only write number
 * `after` fails, everything before and after it succeeds. A caller that
 * meets a transient fault must leave nothing behind that a later successful
 * flush could make durable. */
typedef enum vdisk_fault_kind {
        VDISK_FAULT_NONE,
        VDISK_FAULT_EIO,        /* the Nth and every later write/read fails with -EIO */
        VDISK_FAULT_ENOSPC,     /* the Nth and later writes that grow the file fail with -ENOSPC */
        VDISK_FAULT_SHORT,      /* the Nth write stores only its first half (rounded down
                                 * to 512 bytes), then fails -EIO */
        VDISK_FAULT_POWER_CUT,  /* after N writes every call fails with -EIO; see crash image */
} vdisk_fault_kind;

typedef struct vdisk_fault {
        size_t size;             /* sizeof(vdisk_fault); an older, smaller struct reads the
                                  * fields it lacks as 0 */
        vdisk_fault_kind kind;
        uint64_t after;          /* 0-based index of the first failing write */
        int fail_reads;          /* VDISK_FAULT_EIO, persistent: reads fail too */
        int fail_flush;          /* VDISK_FAULT_EIO, persistent: flushes fail too */
        /* Appended later: */
        int once;                /* EIO, ENOSPC, SHORT: transient. Only write number `after`
                                  * fails (ENOSPC too whether or not it grows the file: on a
                                  * sparse file or tmpfs, filling a hole needs space as well);
                                  * all other writes, reads and flushes succeed.
                                  * fail_reads and fail_flush are ignored. */
        uint64_t fail_flush_at;  /* non-zero: flush number fail_flush_at (1-based, counted
                                  * from the io's creation) fails once with -EIO and flushes
                                  * nothing; later flushes succeed. Works with any kind,
                                  * VDISK_FAULT_NONE included. */
} vdisk_fault;

/* The inner io must be a memory io for POWER_CUT. */
int vdisk_io_new_fault(vdisk_io *inner, const vdisk_fault *fault, vdisk_io **ret);
/* Number of writes seen so far (pwrite, truncate, punch_hole; flushes are not counted). */
uint64_t vdisk_io_fault_writes(vdisk_io *io);
/* Number of flushes seen so far (failed ones included). */
uint64_t vdisk_io_fault_flushes(vdisk_io *io);
/* Whether the fault (a write fault or fail_flush_at) has fired. */
int vdisk_io_fault_fired(vdisk_io *io);
/* After a POWER_CUT: a new memory io holding what a disk could hold after the
 * cut: everything flushed, plus a random subset (chosen by `seed`) of the
 * writes since the last flush, each of which may be torn at a 512-byte
 * boundary. `seed` 0 drops every unflushed write. */
int vdisk_io_fault_crash_image(vdisk_io *io, uint64_t seed, vdisk_io **ret);

/* ---------------------------------------------------------------- progress */

typedef struct vdisk_progress vdisk_progress;
/* Called from the operation's thread at most every 1/256 of the work and at the
 * end; may call vdisk_progress_cancel(). */
typedef void (*vdisk_progress_fn)(vdisk_progress *p, void *user);

int vdisk_progress_new(vdisk_progress_fn fn, void *user, vdisk_progress **ret);
vdisk_progress *vdisk_progress_free(vdisk_progress *p);
uint64_t vdisk_progress_done(const vdisk_progress *p);   /* bytes, monotonic */
uint64_t vdisk_progress_total(const vdisk_progress *p);  /* bytes, 0 = not known yet */
void vdisk_progress_cancel(vdisk_progress *p);           /* any thread */
int vdisk_progress_cancelled(const vdisk_progress *p);

/* ---------------------------------------------------------------- backends */

/* Capabilities (VD_CAP_* bit values). */
enum {
        VDISK_CAP_UUID           = 1u << 0,
        VDISK_CAP_CREATE_FIXED   = 1u << 1,
        VDISK_CAP_CREATE_DYNAMIC = 1u << 2,
        VDISK_CAP_CREATE_SPLIT_2G = 1u << 3,
        VDISK_CAP_DIFF           = 1u << 4,
        VDISK_CAP_FILE           = 1u << 6,
        VDISK_CAP_DISCARD        = 1u << 10,
        VDISK_CAP_PREFERRED      = 1u << 11,
        /* vdisk's own, above VD's range */
        VDISK_CAP_COMPACT        = 1u << 16,
        VDISK_CAP_RESIZE         = 1u << 17,
        VDISK_CAP_CHECK          = 1u << 18,
        VDISK_CAP_REPAIR         = 1u << 19,
        /* writes compressed units when a copy asks (vdisk_copy_opts.compress) */
        VDISK_CAP_COMPRESS       = 1u << 23,
};

/* Media types. */
enum {
        VDISK_MEDIA_HDD     = 1u << 0,
        VDISK_MEDIA_OPTICAL = 1u << 1,
        VDISK_MEDIA_FLOPPY  = 1u << 2,
};

/* Image flags (VD_IMAGE_FLAGS_* values). */
enum {
        VDISK_IMAGE_FLAGS_NONE        = 0,
        VDISK_IMAGE_FLAGS_ZERO_EXPAND = 0x100,   /* VDI: stored as header fFlags bit 0 */
        VDISK_IMAGE_FLAGS_FIXED       = 0x10000,
        VDISK_IMAGE_FLAGS_DIFF        = 0x20000,
};

/* A creation option ("-o key=value") a format takes, typed, with the
 * default the format applies when it is not given. */
typedef enum vdisk_option_type {
        VDISK_OPTION_STRING,
        VDISK_OPTION_SIZE,      /* bytes, with qemu's suffixes (k, M, G, T ...) */
        VDISK_OPTION_BOOL,      /* "on" / "off" */
        VDISK_OPTION_NUMBER,    /* an unsigned decimal number */
} vdisk_option_type;

typedef struct vdisk_option_desc {
        const char *name;       /* qemu-img's key */
        vdisk_option_type type;
        const char *help;       /* one line */
        const char *def;        /* the default as qemu-img create prints it
                                 * unasked ("off", "65536"); NULL = printed
                                 * only when given */
} vdisk_option_desc;

typedef struct vdisk_backend_info {
        const char *name;                   /* VirtualBox's name: "RAW", "VDI", ... */
        const char *qemu_name;              /* qemu-img's name: "raw", "vdi", ... */
        uint32_t caps;                      /* VDISK_CAP_* */
        uint32_t media;                     /* VDISK_MEDIA_* */
        const char *const *extensions;      /* NULL-terminated, without dots */
        /* Every "-o" key it takes, "size" and (for formats with DIFF)
         * "backing_file"/"backing_fmt" included, in the order qemu-img
         * prints them; ends with a { NULL } entry. */
        const vdisk_option_desc *create_options;
} vdisk_backend_info;

/* The option `key` of a backend, or NULL. */
const vdisk_option_desc *vdisk_backend_option(const vdisk_backend_info *info, const char *key);

/* Number of backends, and each one's description (index from 0). */
size_t vdisk_backend_count(void);
const vdisk_backend_info *vdisk_backend_get(size_t index);
/* Finds a backend by qemu's or VirtualBox's name, any case; NULL if unknown. */
const vdisk_backend_info *vdisk_backend_find(const char *name);

/* Probes the image on io. Returns the backend or -EMEDIUMTYPE. `name` (may be
 * NULL) lets extension-only probes (floppy) decide. Raw is reported only when
 * allow_raw is set, and then *ret_guessed_raw tells that nothing matched. */
int vdisk_probe(vdisk_io *io, const char *name, int allow_raw,
                const vdisk_backend_info **ret, int *ret_guessed_raw);

/* The identity an image records in its header. */
enum {
        VDISK_IDS_UUID              = 1u << 0,
        VDISK_IDS_MODIFICATION_UUID = 1u << 1,
        VDISK_IDS_PARENT_UUID       = 1u << 2,
        VDISK_IDS_PARENT_MOD_UUID   = 1u << 3,
};
typedef struct vdisk_image_ids {
        size_t size;                /* sizeof(vdisk_image_ids), set by the caller */
        uint32_t mask;              /* VDISK_IDS_*: the fields the format records */
        uint8_t uuid[16], modification_uuid[16], parent_uuid[16], parent_modification_uuid[16];
} vdisk_image_ids;

/* Reads the UUIDs of the image on io from its header alone, without opening
 * it: at most 64 KiB are read and no table is loaded, so it is cheap on any
 * file. For picking a parent among candidates; the match must then be opened
 * (vdisk_disk_open and friends), which validates everything else. `format`
 * NULL probes (never raw). -EMEDIUMTYPE when the file is not that format,
 * -EUCLEAN/-EOPNOTSUPP for headers an open would refuse. */
int vdisk_peek_ids(vdisk_io *io, const char *format, vdisk_image_ids *ret);

/* ---------------------------------------------------------------- containers */

typedef struct vdisk_disk vdisk_disk;
typedef struct vdisk_image vdisk_image;

/* Open flags (VD_OPEN_FLAGS_* bit positions). */
enum {
        VDISK_OPEN_READONLY    = 1u << 0,
        VDISK_OPEN_INFO        = 1u << 3,  /* metadata only; reads and writes fail */
        VDISK_OPEN_SKIP_CHECKS = 1u << 10, /* do not check parent UUID linkage */
        VDISK_OPEN_ALLOW_PROBE_RAW = 1u << 16, /* format==NULL may pick raw (read-only opens only) */
        /* Metadata only (implies INFO and READONLY) and without the
         * companion files: they are not opened, their names are only
         * recorded (vdisk_image_file_name()). What the image's own file says
         * (size, UUIDs, parent) is reported; what only a companion holds
         * is not. For a service that must ask its client for the files
         * before it can open the image. Only vdisk_disk_open(). */
        VDISK_OPEN_LIST_FILES = 1u << 17,
};

/* The maximum number of images in one chain. */
#define VDISK_CHAIN_MAX 64

int vdisk_disk_new(vdisk_disk **ret);
/* Flushes and closes every image (top down) and frees the container. Returns
 * the first error of those final flushes (the message names the file): the
 * container is gone all the same, and what was written may not be durable.
 * The one exception: -EBUSY while an operation (copy, compare, merge ...)
 * still runs on the disk on another thread; then nothing was closed. NULL: 0. */
int vdisk_disk_close(vdisk_disk *d);
/* Like vdisk_disk_close(), for cleanup paths: flush errors are not reported.
 * Use vdisk_disk_close() where the data matters. */
vdisk_disk *vdisk_disk_unref(vdisk_disk *d);

/* VDOpen: puts one more image on top of the chain. format NULL probes (raw is
 * never probed for a writable open). The new image must be a differencing image
 * whose parent UUID is the current top's UUID (unless SKIP_CHECKS or the format
 * has no UUIDs); the previous top becomes read-only. A parent-modification-UUID
 * mismatch is accepted: vdisk_disk_open_warnings() reports it.
 * Takes a reference on io on success. */
int vdisk_disk_open(vdisk_disk *d, vdisk_io *io, const char *format, uint32_t open_flags);

/* Locating parents for vdisk_disk_open_chain(). */
typedef struct vdisk_resolver vdisk_resolver;
typedef struct vdisk_resolver_ops {
        size_t size;
        /* Opens the file a child image names (qcow2 backing file, VHD locator ...),
         * relative to the child `child_name`. */
        int (*open_name)(void *user, const char *name, const char *child_name, int writable,
                         vdisk_io **ret_io);
        /* Finds the image whose UUID is `uuid` among the candidates for a child
         * named `child_name` of format `format` (VDI and VHD diffs link by UUID).
         * The parent may be of any format (chains mix them: a VHD diff on a VDI
         * base): consider candidates of every format, e.g. with
         * vdisk_peek_ids(io, NULL, ...), which probes. The library probes the
         * match's format (never raw). Returns -ENOENT when none matches and
         * -ENOTUNIQ when two do. */
        int (*find_uuid)(void *user, const uint8_t uuid[16], const char *format,
                         const char *child_name, int writable, vdisk_io **ret_io);
        void (*free)(void *user);
        /* Opens a companion file of the image `image_name`: a VMDK extent, a
         * qcow2 data file, the BIN of a CUE sheet, named as the image records
         * it. `flags`: VDISK_COMPANION_*. Optional (NULL: -ENOENT). */
        int (*open_companion)(void *user, const char *name, const char *image_name, uint32_t flags,
                              vdisk_io **ret_io);
        /* Optional. Returns a writable io on the same file as `io` (an image the
         * chain opened read-only), for an operation that must write into it
         * (merge into an ancestor, relinking a child, compact or repair of a
         * lower image). Must make sure it is the same file (device and inode),
         * not whatever the name points to now. Returns -ESTALE when the file was
         * replaced, -EACCES or -EROFS when writing is not permitted, -ENOENT when
         * the resolver has no writable handle for it; records a message naming
         * the file. Without it, images below the top cannot be written. */
        int (*reopen)(void *user, vdisk_io *io, vdisk_io **ret_io);
} vdisk_resolver_ops;

enum {
        VDISK_COMPANION_WRITE  = 1u << 0,   /* read-write */
        VDISK_COMPANION_CREATE = 1u << 1,   /* a new file; an existing one is -EEXIST */
};

/* A resolver for local paths, used by vdisk-img: names relative to the child's
 * directory; UUID search among the regular files with any format's extension
 * (raw's aside: a chain may mix formats) in the child's directory and in
 * `extra_dirs` (NULL-terminated, may be NULL). The
 * UUID search never follows symlinks and opens nothing but regular files.
 * Parents are opened read-only; reopen opens the same name O_RDWR|O_NOFOLLOW
 * (a symlink's target when the name is a symlink) and checks that it is the
 * same file. Reopened parents get VDISK_IO_DIRECT (merges write them in bulk; see
 * vdisk_resolver_set_write_flags()).
 * Companion files (extents, data files) must be named relative to the image,
 * inside its directory: an absolute name or one with a ".." component is -EPERM. */
int vdisk_resolver_new_path(const char *const *extra_dirs, vdisk_resolver **ret);
/* For a resolver of vdisk_resolver_new_path(): how reopen opens an image an
 * operation writes into: VDISK_PATH_DIRECT (the default), with
 * VDISK_PATH_DIRECT_ONLY, or neither (the page cache), and VDISK_PATH_NOSYNC
 * (flushes skipped: qemu-img's -t unsafe). -EINVAL for other resolvers. */
int vdisk_resolver_set_write_flags(vdisk_resolver *r, uint32_t path_flags);
/* A resolver over caller ops; `ops->free(user)` runs when the last reference
 * goes. */
int vdisk_resolver_new_ops(const vdisk_resolver_ops *ops, void *user, vdisk_resolver **ret);
/* Resolvers are reference counted: a disk opened with one keeps a reference
 * (to reopen images writable later), so the caller may drop its own at once. */
vdisk_resolver *vdisk_resolver_ref(vdisk_resolver *r);
vdisk_resolver *vdisk_resolver_unref(vdisk_resolver *r);
/* The same as vdisk_resolver_unref() (the name of older releases). */
vdisk_resolver *vdisk_resolver_free(vdisk_resolver *r);

/* Opens `top` and, through the resolver, every parent below it; pushes them
 * base first. Only the top is opened writable (unless READONLY, or when `top`
 * is a read-only io); every parent is opened read-only. The disk keeps a
 * reference to the resolver: an operation that writes into an image below the
 * top (vdisk_merge into `to` and the relink of the child above the merged
 * range, vdisk_compact or a repair of a lower image, the image setters)
 * reopens just that image writable through the resolver's reopen, unless the
 * chain was opened with VDISK_OPEN_READONLY (then they fail with -EROFS). The
 * recorded parent format is used, never a probe. Bounded by VDISK_CHAIN_MAX,
 * loops are -ELOOP. */
int vdisk_disk_open_chain(vdisk_disk *d, vdisk_resolver *r, vdisk_io *top, const char *format,
                          uint32_t open_flags);
/* Gives the disk a resolver for reopening images writable on demand (see
 * vdisk_disk_open_chain), for chains built image by image with
 * vdisk_disk_open(). Replaces the one it had; NULL drops it. Takes a reference. */
int vdisk_disk_set_resolver(vdisk_disk *d, vdisk_resolver *r);

/* Warnings collected by opens (NULL-terminated, owned by the disk). */
const char *const *vdisk_disk_warnings(vdisk_disk *d);

/* The metadata budget: the memory the tables of every image of the disk (block
 * maps, L2 tables ...) may use together. Above it, table pages are read again
 * when needed (least recently used ones are dropped). 0 = the default, 64 MiB;
 * the minimum is 1 MiB (-EINVAL below). Set it before opening images; lowering
 * it later drops what it can at once and the rest as soon as it is written. */
#define VDISK_METADATA_BUDGET_DEFAULT (UINT64_C(64) << 20)
int vdisk_disk_set_metadata_budget(vdisk_disk *d, uint64_t bytes);

/* Opens an internal snapshot's content instead of the image's current state
 * (qemu-img's `-l`): the next vdisk_disk_open(), or the top image of the
 * next vdisk_disk_open_chain(), reads the disk as it was when the snapshot
 * was taken (its tables and its virtual size; the parent is the image's
 * current one). `spec` is "snapshot.id=ID", "snapshot.name=NAME" or both
 * joined by a comma (both must match then), or a bare string matched as an
 * id first, then as a name. Such opens must be VDISK_OPEN_READONLY (else
 * -EROFS); a format without internal snapshots is -EOPNOTSUPP, a snapshot
 * that is not there -ENOENT (at the open). Used once: the open that takes
 * it clears it, whatever its result. NULL clears it. -EINVAL for a spec
 * with other keys or an empty value. */
int vdisk_disk_set_snapshot(vdisk_disk *d, const char *spec);

typedef struct vdisk_metadata_stats {
        size_t size;                 /* sizeof(vdisk_metadata_stats) */
        uint64_t budget;             /* the limit in bytes */
        uint64_t held;               /* bytes of metadata held now */
        uint64_t peak;               /* the most held at any time since the disk was made */
        uint64_t hits, misses;       /* table page look-ups found in memory / read from the file */
        uint64_t evictions;          /* pages dropped to stay within the budget */
        uint64_t early_writebacks;   /* times a full budget forced dirty pages out before a flush */
} vdisk_metadata_stats;
int vdisk_disk_get_metadata_stats(vdisk_disk *d, vdisk_metadata_stats *ret);

typedef struct vdisk_geometry {
        uint32_t cylinders, heads, sectors;
} vdisk_geometry;

/* Options for creating an image. Unset fields (0/NULL) mean the format's default. */
typedef struct vdisk_create_opts {
        size_t size;                 /* sizeof(vdisk_create_opts) */
        uint32_t image_flags;        /* VDISK_IMAGE_FLAGS_* (FIXED = preallocate) */
        uint32_t block_size;         /* allocation block size (VDI: 1 MiB default) */
        const char *comment;
        const uint8_t *uuid;         /* 16 bytes, NULL = random */
        vdisk_geometry pchs, lchs;   /* zero = computed / none */
        /* Format-specific "-o key=value" pairs, NULL-terminated alternating array
         * (qemu-img's names; unknown keys are -EINVAL). */
        const char *const *options;
        /* vdisk_disk_create_diff only: the new image's virtual size; 0 = the
         * parent's. Past the parent's end a larger child reads zeros; a
         * smaller child simply shows less of its parent. */
        uint64_t diff_size;
        /* vdisk_disk_create_diff only: the parent's file name and format as
         * the child records them (qcow2 backing file, VMDK parentFileNameHint,
         * VHD locators); formats that link by UUID only (VDI) ignore them.
         * NULL = none. */
        const char *parent_name;
        const char *parent_format;
        /* Creates the new image's companion files (extents of a split VMDK)
         * next to it; NULL = formats that need them fail with -ENOENT. */
        vdisk_resolver *resolver;
} vdisk_create_opts;

/* How large a new image would be (qemu-img measure). */
typedef struct vdisk_measure_info {
        uint64_t required;          /* bytes for the new image holding the input's data (or empty) */
        uint64_t fully_allocated;   /* bytes with every block of the image allocated */
        int has_bitmaps;            /* qcow2 v3 from an input that can hold bitmaps: "bitmaps size" */
        uint64_t bitmaps;           /* bytes of persistent bitmaps (vdisk copies none: 0) */
} vdisk_measure_info;
/* Measures a new image of `format` with `options` ("-o" pairs as in
 * vdisk_create_opts, "backing_file" included) that would hold the content of
 * `in` (its whole chain, as a copy writes it; its virtual size), or, when `in`
 * is NULL, an empty image of `size` bytes. The figures bound the file that
 * vdisk_copy into such an image writes, and equal qemu-img measure's for the
 * formats qemu measures (raw, qcow2). -EOPNOTSUPP for formats (or
 * variants) that cannot be measured. */
int vdisk_measure(const char *format, const char *const *options, uint64_t size, vdisk_disk *in,
                  vdisk_measure_info *ret);

/* VDCreateBase: creates a new base image of `size` bytes on io (which must be
 * empty and writable) and opens it as image 0 of an empty container. */
int vdisk_disk_create_base(vdisk_disk *d, vdisk_io *io, const char *format, uint64_t size,
                           const vdisk_create_opts *opts);
/* VDCreateDiff: creates a differencing image on top of the chain (which must
 * not be empty) and opens it read-write; the old top becomes read-only. */
int vdisk_disk_create_diff(vdisk_disk *d, vdisk_io *io, const char *format,
                           const vdisk_create_opts *opts);
/* VDClose: flushes and closes the top image; the one below becomes the top
 * (reopened writable through the disk's resolver if the chain was opened
 * writable; it stays read-only when that fails). */
int vdisk_disk_close_top(vdisk_disk *d);

unsigned vdisk_disk_count(vdisk_disk *d);
/* Borrowed; valid while the image is in the chain. NULL if out of range. */
vdisk_image *vdisk_disk_image(vdisk_disk *d, unsigned index);
uint64_t vdisk_disk_size(vdisk_disk *d);
int vdisk_disk_readonly(vdisk_disk *d);

int vdisk_disk_read(vdisk_disk *d, void *buf, size_t len, uint64_t offset);
int vdisk_disk_write(vdisk_disk *d, const void *buf, size_t len, uint64_t offset);
/* Makes every write so far durable (data, then the tables that point to it). */
int vdisk_disk_flush(vdisk_disk *d);
/* Discards a range: it reads as zeros afterwards (also in a differencing image). */
int vdisk_disk_discard(vdisk_disk *d, uint64_t offset, uint64_t len);

/* Block status (qemu-img map). */
enum {
        VDISK_EXTENT_DATA      = 1u << 0, /* the image stores data for the range */
        VDISK_EXTENT_ZERO      = 1u << 1, /* the range reads as zeros */
        VDISK_EXTENT_ALLOCATED = 1u << 2, /* some image of the chain defines the range */
};
typedef struct vdisk_extent {
        uint64_t offset, length;
        uint32_t flags;          /* VDISK_EXTENT_* */
        int depth;               /* images above the one that defines it; -1 = none */
        uint64_t host_offset;    /* valid with DATA: offset in `file` */
        int host_offset_valid;
        /* With host_offset_valid: the name of the file holding the data, the
         * image's own or one of its companions (a VMDK extent file);
         * borrowed, valid while the image is open. */
        const char *file;
} vdisk_extent;

/* The extent at `offset` up to `max_len` long (merged across blocks while the
 * status stays the same). */
int vdisk_disk_block_status(vdisk_disk *d, uint64_t offset, uint64_t max_len, vdisk_extent *ret);
/* The same as qemu-img map reports it: where qemu looks into the file under
 * an image's data (a fixed or preallocated image: a static VDI, a fixed VHD,
 * a flat VMDK extent; a qcow2 image whose file holds far fewer clusters than
 * it spans, which qemu takes for metadata preallocation), data over a hole
 * of the file reads as zeros: VDISK_EXTENT_DATA | VDISK_EXTENT_ZERO. */
int vdisk_disk_map_status(vdisk_disk *d, uint64_t offset, uint64_t max_len, vdisk_extent *ret);

/* ---------------------------------------------------------------- images */

const char *vdisk_image_name(vdisk_image *img);          /* the io's name */
const vdisk_backend_info *vdisk_image_backend(vdisk_image *img);
unsigned vdisk_image_index(vdisk_image *img);
uint64_t vdisk_image_size(vdisk_image *img);
int vdisk_image_readonly(vdisk_image *img);
int vdisk_image_file_size(vdisk_image *img, uint64_t *ret);   /* bytes the file holds on disk */

/* Getters return 0, -EOPNOTSUPP (format has no such field) or another error. */
int vdisk_image_get_uuid(vdisk_image *img, uint8_t ret[16]);
int vdisk_image_get_modification_uuid(vdisk_image *img, uint8_t ret[16]);
int vdisk_image_get_parent_uuid(vdisk_image *img, uint8_t ret[16]);
int vdisk_image_get_parent_modification_uuid(vdisk_image *img, uint8_t ret[16]);
/* Borrowed string, "" when none; valid until the comment changes or the image
 * is closed. */
int vdisk_image_get_comment(vdisk_image *img, const char **ret);
int vdisk_image_get_pchs(vdisk_image *img, vdisk_geometry *ret);
int vdisk_image_get_lchs(vdisk_image *img, vdisk_geometry *ret);
int vdisk_image_get_version(vdisk_image *img, uint32_t *ret);   /* format's own numbering */
int vdisk_image_get_flags(vdisk_image *img, uint32_t *ret);     /* VDISK_IMAGE_FLAGS_* */
/* The parent a child names: file name (may be NULL) and format (may be NULL). */
int vdisk_image_get_parent_name(vdisk_image *img, const char **ret_name, const char **ret_format);
/* The companion files of the image (VMDK extents ...), as the image names
 * them, in the order it names them: how many, and each one's name (borrowed,
 * valid while the image is open; NULL past the end). Images of one file have
 * none. Each one opened is one more descriptor held for the image. */
size_t vdisk_image_file_count(vdisk_image *img);
const char *vdisk_image_file_name(vdisk_image *img, size_t index);

int vdisk_image_set_uuid(vdisk_image *img, const uint8_t uuid[16]);
int vdisk_image_set_modification_uuid(vdisk_image *img, const uint8_t uuid[16]);
int vdisk_image_set_parent_uuid(vdisk_image *img, const uint8_t uuid[16]);
int vdisk_image_set_parent_modification_uuid(vdisk_image *img, const uint8_t uuid[16]);
int vdisk_image_set_comment(vdisk_image *img, const char *comment);   /* NULL clears */
int vdisk_image_set_pchs(vdisk_image *img, const vdisk_geometry *g);
int vdisk_image_set_lchs(vdisk_image *img, const vdisk_geometry *g);
int vdisk_image_set_flags(vdisk_image *img, uint32_t flags);   /* only ZERO_EXPAND is changeable */

/* Gives an image of a disk the caller's descriptor of its file opened with
 * O_DIRECT for writing: what vdisk_io_set_direct_fd() does for a new image,
 * for an image an operation writes into (merge's target, compact, copy
 * into an existing disk), which a service handed descriptors cannot reopen.
 * Used now if the image is writable, or when an operation reopens it
 * writable. `fd` is duplicated. -EINVAL if it is not open for writing with
 * O_DIRECT (or has O_APPEND); -EBADF if it is another file. fd -1 takes it
 * away again (writes go through the image's own descriptor). Only the
 * image's main file: companion files are written through their own. */
int vdisk_image_set_direct_fd(vdisk_image *img, int fd);

/* Records the parent's file name and format in a child (a relink, like
 * qemu-img rebase -u); -EOPNOTSUPP for formats that link by UUID only. The
 * name is relative to the child's directory (or absolute), as qemu takes a
 * backing name. VHD records it in its W2ru locator and, when the image was
 * opened by path, the parent's absolute name in W2ku; both are hints next to
 * the parent UUID (set that too). */
int vdisk_image_set_parent_name(vdisk_image *img, const char *name, const char *format);

/* Content IDs (VMDK CID / parentCID): a number an image renews when its
 * content changes, and the one a child recorded for its parent, checked when
 * a chain is opened (unless VDISK_OPEN_SKIP_CHECKS). A relink sets the
 * child's to the new parent's. VDISK_CONTENT_ID_NONE: not recorded (never
 * checked). -EOPNOTSUPP for formats without them. */
#define VDISK_CONTENT_ID_NONE UINT32_C(0xffffffff)
int vdisk_image_get_content_id(vdisk_image *img, uint32_t *ret);
int vdisk_image_get_parent_content_id(vdisk_image *img, uint32_t *ret);
int vdisk_image_set_parent_content_id(vdisk_image *img, uint32_t id);
/* For an image that replaces another with the same view (qemu-img commit's
 * emptied top), so that the children made on it still match. */
int vdisk_image_set_content_id(vdisk_image *img, uint32_t id);

/* The logical sector size: 512, 2048 (optical media) or 4096. */
uint32_t vdisk_image_sector_size(vdisk_image *img);

/* Format-specific facts as a NULL-terminated list of alternating keys and
 * values (qemu-img info's "Format specific information"); empty when the
 * format has none. A list of objects comes as consecutive keys
 * "<list>.<i>.<key>", i from 0 (a VMDK's "extents.0.filename" ...); a key
 * ending in "[]" is a list of strings joined by ',' ("" for none: a qcow2
 * bitmap's "bitmaps.0.flags[]"). Free with vdisk_strv_free. */
int vdisk_image_get_format_info(vdisk_image *img, char ***ret_kv);

/* Internal snapshots of an image (qcow2, Parallels, VMDK), oldest first. */
typedef struct vdisk_snapshot {
        char *id;                  /* the format's id ("1", a UUID ...) */
        char *name;                /* may be "" */
        uint64_t disk_size;        /* virtual size when it was taken */
        uint64_t vm_state_size;    /* bytes of saved VM state, 0 if none */
        int64_t date_sec;          /* wall clock time it was taken */
        uint32_t date_nsec;
        uint64_t vm_clock_nsec;    /* guest clock */
        /* Instructions the guest had run (qemu's record/replay icount);
         * VDISK_SNAPSHOT_NO_ICOUNT when the image does not record it. */
        uint64_t icount;
} vdisk_snapshot;
#define VDISK_SNAPSHOT_NO_ICOUNT UINT64_MAX
/* *ret is an array of *ret_n entries (NULL and 0 when there are none). */
int vdisk_image_list_snapshots(vdisk_image *img, vdisk_snapshot **ret, size_t *ret_n);
void vdisk_snapshots_free(vdisk_snapshot *v, size_t n);

/* qemu-img snapshot -c/-a/-d on the top image of `d` (reopened writable
 * when needed): create a snapshot of its current state named `name` (the
 * id is the next free number; names need not be unique, as in qemu), apply
 * the snapshot `id_or_name` (an id first, else a name: it becomes the
 * current state, its disk size too), or delete it. -ENOENT when no
 * snapshot matches, -EOPNOTSUPP for formats without writable snapshots. */
int vdisk_disk_snapshot_create(vdisk_disk *d, const char *name);
int vdisk_disk_snapshot_apply(vdisk_disk *d, const char *id_or_name);
int vdisk_disk_snapshot_delete(vdisk_disk *d, const char *id_or_name);
/* Persistent dirty bitmaps (qcow2): a bit per `granularity` bytes of the
 * disk, set when the range was written while the bitmap was enabled. */
enum {
        VDISK_BITMAP_IN_USE = 1u << 0,    /* not saved consistently: the content is unreliable */
        VDISK_BITMAP_AUTO   = 1u << 1,    /* enabled: records every write */
};
typedef struct vdisk_bitmap {
        char *name;
        uint64_t granularity;      /* bytes per bit */
        uint32_t flags;            /* VDISK_BITMAP_* */
} vdisk_bitmap;
/* *ret is an array of *ret_n entries (NULL and 0 when there are none, and
 * for formats without bitmaps). */
int vdisk_image_list_bitmaps(vdisk_image *img, vdisk_bitmap **ret, size_t *ret_n);
void vdisk_bitmaps_free(vdisk_bitmap *v, size_t n);
/* A bitmap's content: ceil(ceil(size / granularity) / 8) bytes, bit i of
 * the bitmap is bit i % 8 (least significant first) of byte i / 8. */
int vdisk_image_read_bitmap(vdisk_image *img, const char *name, uint8_t **ret, size_t *ret_len,
                            uint64_t *ret_granularity);
enum {
        VDISK_BITMAP_OP_ADD,       /* name, granularity (0: the format's default), flags (AUTO: enabled) */
        VDISK_BITMAP_OP_REMOVE,
        VDISK_BITMAP_OP_CLEAR,
        VDISK_BITMAP_OP_ENABLE,
        VDISK_BITMAP_OP_DISABLE,
        VDISK_BITMAP_OP_MERGE,     /* source (a bitmap of the same image) or bits: ORed into name */
};
typedef struct vdisk_bitmap_change {
        size_t size;               /* sizeof(vdisk_bitmap_change) */
        unsigned op;               /* VDISK_BITMAP_OP_* */
        const char *name;
        uint64_t granularity;
        uint32_t flags;
        const char *source;
        const uint8_t *bits;       /* MERGE without source: content as vdisk_image_read_bitmap() gives */
        size_t bits_len;
        uint64_t bits_granularity;
} vdisk_bitmap_change;
/* Changes the bitmaps of a writable image, durably (flushed) when it
 * returns. -EOPNOTSUPP for formats without bitmaps, -ENOENT for an unknown
 * name, -EEXIST when adding a name that exists. */
int vdisk_image_change_bitmap(vdisk_image *img, const vdisk_bitmap_change *c);

/* Regions of a disk (VD's VDQueryRegions): a hard disk or a plain ISO is
 * one region; a CUE sheet has a region per track. */
enum {
        VDISK_REGION_DATA_RAW = 0,        /* hard disk sectors */
        VDISK_REGION_DATA_MODE1_2048,     /* CD-ROM mode 1 user data */
        VDISK_REGION_DATA_MODE1_2352,
        VDISK_REGION_DATA_MODE2_2352,
        VDISK_REGION_DATA_AUDIO,
};
typedef struct vdisk_region {
        uint64_t offset;           /* bytes, in the disk's address space */
        uint64_t length;
        uint32_t block_size;       /* bytes per block of this region */
        uint32_t data_type;        /* VDISK_REGION_DATA_* */
} vdisk_region;
/* The regions of the top image of the chain; free *ret with free(). */
int vdisk_disk_query_regions(vdisk_disk *d, vdisk_region **ret, size_t *ret_n);

/* Format-specific facts for `info`. */
typedef struct vdisk_image_info {
        size_t size;
        uint64_t virtual_size;
        uint64_t actual_size;      /* bytes allocated on the host file system (all the image's files) */
        uint64_t file_size;        /* apparent file size */
        uint32_t cluster_size;     /* allocation block size, 0 if none */
        uint32_t image_flags;
        int dirty;                 /* format has a dirty/in-use flag and it is set */
        const char *variant;       /* "dynamic", "static", "diff", "fixed", ... */
        uint64_t blocks_total, blocks_allocated;
} vdisk_image_info;
int vdisk_image_get_info(vdisk_image *img, vdisk_image_info *ret);

/* UUID text form (VirtualBox's: the 16 bytes as stored are RTUUID/GUID layout). */
void vdisk_uuid_format(const uint8_t uuid[16], char ret[37]);
int vdisk_uuid_parse(const char *s, uint8_t ret[16]);
int vdisk_uuid_is_null(const uint8_t uuid[16]);
void vdisk_uuid_generate(uint8_t ret[16]);

/* ---------------------------------------------------------------- operations */

typedef struct vdisk_copy_opts {
        size_t size;                     /* sizeof(vdisk_copy_opts) */
        uint64_t new_size;               /* 0 = the source's size (resize on copy) */
        vdisk_create_opts create;        /* for the new image; create.size must be set */
        /* Same-content shortcut (VDCopyEx nImageFromSame/nImageToSame): the
         * destination container already holds images whose content equals the
         * source's images 0..from_same; only what the source images above
         * from_same define is copied. -1 = none (full copy). */
        int from_same;
        int to_same;
        /* Ranges of at least this many bytes of zeros are not written (qemu-img
         * -S); 0 = default 4 KiB. The destination must read as zero where not
         * written (it is new). */
        uint64_t sparse_size;
        /* Store the data compressed where the destination format can (qcow2
         * compressed clusters, zlib or zstd by its compression_type: qemu-img
         * convert -c); -EOPNOTSUPP for a format that cannot. Clusters that do
         * not shrink are stored plain. */
        int compress;
        /* Threads that encode (compress, or VMDK streamOptimized grains);
         * 0 = one per online CPU. */
        unsigned threads;
        /* dd: the copy starts at this offset of the source; the destination
         * gets the source's bytes from there on (up to its own size) at
         * offset 0. 0 = from the start. With from_same: must be 0. */
        uint64_t src_offset;
        uint32_t flags;                  /* VDISK_COPY_* */
} vdisk_copy_opts;

enum {
        /* Into a differencing destination (one with parents below the new
         * image): a cluster whose content equals what the parents already
         * read there is not written (convert -B: only what differs from the
         * backing file lands in the new image). Costs a read of the parents
         * for every range the source defines. */
        VDISK_COPY_SKIP_SAME = 1u << 0,
};

/* VDCopyEx: copies the content of `src` into a new image created on dst_io and
 * opened on top of `dst` (empty or holding the same-content images). The
 * destination is flushed once at the end. On failure or cancel, the new image is
 * closed and left incomplete: the caller removes the file. */
int vdisk_copy(vdisk_disk *src, vdisk_disk *dst, vdisk_io *dst_io, const char *format,
               const vdisk_copy_opts *opts, vdisk_progress *p);

/* vdisk_copy_into() flags */
enum {
        /* The destination reads zeros everywhere already (qemu-img convert
         * -n --target-is-zero): source holes are not looked at in it. */
        VDISK_COPY_INTO_TARGET_ZERO = 1u << 0,
        /* convert -n -B: the destination's parents hold what the source's
         * parents hold. Only what the source's top image defines is
         * copied, and data the destination reads already is not rewritten. */
        VDISK_COPY_INTO_TOP_ONLY = 1u << 1,
        /* convert -c -n: data clusters are written compressed (qcow2: the
         * top image's format must take compressed writes, else
         * -EOPNOTSUPP before anything is written). qemu's rule: a
         * compressed write never overwrites, so each cluster written must
         * be unallocated in the top image (zero clusters without a host
         * cluster count as unallocated); an allocated one fails the copy
         * with -EOPNOTSUPP naming its offset, what was written before it
         * kept. Clusters that read zeros are made to read zeros as without
         * the flag (zero markers), clusters that do not shrink are written
         * plain, a partial cluster short of the image's end is written
         * plain. Not with TOP_ONLY. */
        VDISK_COPY_INTO_COMPRESS = 1u << 2,
        /* qemu-img convert -S 0: where the source reads zeros, zeros are
         * written (allocated), and data buffers of zeros are written as
         * they are; nothing is left as a hole, in the image or in its file
         * (the blocks allocated are written whole, zero pages included).
         * Without TOP_ONLY the source is copied a buffer at a time in
         * order, holes read as zeros (a VMDK streamOptimized top takes
         * that). With COMPRESS every cluster is written compressed,
         * clusters of zeros too (qemu's -c -S 0). Wins over TARGET_ZERO. */
        VDISK_COPY_INTO_ALLOCATE = 1u << 3,
};

/* Copies the content of `src` into the existing disk `dst` (qemu-img convert
 * -n): into dst's top image, which is made writable and must be at least
 * src's size (-EINVAL otherwise); dst keeps its format, size and parents.
 * Both sides' block status is asked for every range, so a range both read
 * as zeros costs two metadata lookups however large it is; where dst holds
 * data under a source hole, it is made to read zeros. dst is flushed at the
 * end (a failed flush fails the copy). On failure or cancel dst holds a mix
 * of its old content and the source's: the caller says so. */
int vdisk_copy_into(vdisk_disk *src, vdisk_disk *dst, uint32_t flags, vdisk_progress *p);

/* VDMerge: the data of images `from`..`to` ends up in `to`; the images strictly
 * between them and `from` itself leave the chain (closed, files untouched and
 * not deleted). Forward (from > to): child data into an ancestor; images above
 * `from` are relinked to `to`. Backward (from < to): ancestors' data into the
 * descendant for the blocks it lacks; `to` takes over the parent link of `from`.
 * *ret_removed (may be NULL) gets the names of the images that left the chain
 * (NULL-terminated, free with vdisk_strv_free). Every intermediate state on disk
 * is a valid chain. Sizes: a forward merge grows `to` to `from`'s size when it
 * is smaller and never shrinks it, so merging the top into a larger ancestor
 * leaves a disk of the ancestor's size (as VDMerge does). */
int vdisk_merge(vdisk_disk *d, unsigned from, unsigned to, vdisk_progress *p, char ***ret_removed);

/* vdisk_commit_opts.flags */
enum {
        /* qemu-img commit -d (and -b): the top keeps its data and is relinked
         * onto `to` instead of being emptied. */
        VDISK_COMMIT_KEEP_TOP = 1u << 0,
};

typedef struct vdisk_commit_opts {
        size_t size;                 /* sizeof(vdisk_commit_opts) */
        uint32_t flags;              /* VDISK_COMMIT_* */
        /* Without KEEP_TOP (then required): a new, empty, writable file that
         * gets the emptied top, its io named as the top's file is (the
         * names of the parent are computed from there). The library cannot
         * create a file beside the top nor rename it (vdiskd has fds only):
         * the caller made it and renames it over the top's file after a 0
         * return (and removes it after a failure). Not taken over. */
        vdisk_io *new_top;
} vdisk_commit_opts;

/* Where vdisk_commit() failed. */
typedef enum vdisk_commit_step {
        VDISK_COMMIT_STEP_NONE,      /* before any work (arguments) */
        VDISK_COMMIT_STEP_MERGE,     /* the merge: the chain reads as before */
        VDISK_COMMIT_STEP_TOP,       /* emptying or relinking the top: the data is in `to` */
} vdisk_commit_step;

typedef struct vdisk_commit_result {
        size_t size;                 /* sizeof(vdisk_commit_result), set by the caller */
        vdisk_commit_step failed_step;
} vdisk_commit_result;

/* qemu-img commit: the data of the top and of the images between it and
 * `to` goes into `to` (vdisk_merge()); the images between leave the chain.
 * Then the top is made valid on `to` again: with KEEP_TOP it is relinked
 * onto it (parent UUIDs, names, VMDK parentCID: one metadata write, then a
 * flush), else a differencing image with the top's format, size, cluster
 * size, comment, UUID, modification UUID and VMDK CID is written into
 * opts->new_top over `to` and flushed. Either way the disk's top is then
 * that image, reading what the old top read. A format that names its parent
 * records the name relative to the top's directory where both files were
 * opened by path, else the name the parent's io carries. *ret (may be NULL)
 * says which step failed: after a failed merge the chain reads as before;
 * after a failed relink the top holds its old link or the new one (a VMDK top
 * with its old parentCID then no longer matches `to`: rebase -u); after a
 * failed emptying the old top is as it was, except that one recording the
 * old content ID of `to`, adjacent (a VMDK's parentCID), is relinked onto
 * it, best effort. Progress counts the merge; cancel stops it
 * (-ECANCELED). */
int vdisk_commit(vdisk_disk *d, unsigned to, const vdisk_commit_opts *opts, vdisk_progress *p,
                 vdisk_commit_result *ret);
void vdisk_strv_free(char **strv);

/* VDCompact: drops all-zero blocks (and, in a differencing image, blocks equal
 * to the parent's content) and defragments, leaving a file no larger than
 * header + map + live blocks. */
int vdisk_compact(vdisk_disk *d, unsigned index, vdisk_progress *p);

/* VDResize: changes the size of every image of the chain that needs it (the
 * top must be writable). Shrinking succeeds only when the cut-off range is
 * unallocated or reads as zeros everywhere; else -ENOTEMPTY. Progress counts
 * the data a format has to move (a VDI shrink packs its blocks); a resize is
 * not cancelled once it changes the image. */
int vdisk_resize(vdisk_disk *d, uint64_t new_size, vdisk_progress *p);

/* qemu-img amend: changes format options of the top image in place (which
 * must be writable). `options` are "-o" pairs as in vdisk_create_opts
 * (qemu's names and values; "size" resizes as vdisk_resize does). Formats
 * without amendable options give -EOPNOTSUPP ("Format driver 'raw' does not
 * support option amendment"); an option only creation takes, or a change
 * that cannot be made safely, fails (-EINVAL, -EOPNOTSUPP) before the image
 * changes. qcow2: compat (0.10/1.1), refcount_bits, lazy_refcounts. Progress
 * counts the bytes rewritten; a cancel is honoured before the image changes
 * (-ECANCELED). Every step on disk leaves a valid image. */
int vdisk_amend(vdisk_disk *d, const char *const *options, vdisk_progress *p);
/* vdisk_resize_opts.flags */
enum {
        /* Shrink a raw image even when the range cut off holds data (qemu-img
         * resize --shrink: the flag is the caller's consent). Formats that
         * can only drop empty blocks still refuse with -ENOTEMPTY. */
        VDISK_RESIZE_DISCARD_DATA = 1u << 0,
};
typedef struct vdisk_resize_opts {
        size_t size;                 /* sizeof(vdisk_resize_opts) */
        /* qemu-img resize --preallocation: NULL or "off", "metadata",
         * "falloc", "full" for the new range, as far as the top image's
         * format takes it (-EOPNOTSUPP with qemu-img's words otherwise;
         * -EINVAL for another word or a shrink). */
        const char *preallocation;
        uint32_t flags;              /* VDISK_RESIZE_* */
} vdisk_resize_opts;
/* vdisk_resize() with options; opts may be NULL (= vdisk_resize()). */
int vdisk_resize_ex(vdisk_disk *d, uint64_t new_size, const vdisk_resize_opts *opts, vdisk_progress *p);

/* Check and repair. */
enum {
        VDISK_CHECK_REPAIR_LEAKS = 1u << 0,  /* qemu-img check -r leaks */
        VDISK_CHECK_REPAIR_ALL   = 1u << 1,  /* qemu-img check -r all / VDRepair */
        VDISK_CHECK_DRY_RUN      = 1u << 2,  /* with REPAIR_*: report what would be fixed */
};
typedef struct vdisk_check_report {
        size_t size;
        uint64_t corruptions, leaks, check_errors;
        uint64_t corruptions_fixed, leaks_fixed;
        uint64_t total_clusters, allocated_clusters, fragmented_clusters;
        uint64_t image_end_offset;
        char **messages;            /* NULL-terminated; free with vdisk_check_report_clear */
        uint64_t compressed_clusters;
} vdisk_check_report;
void vdisk_check_report_clear(vdisk_check_report *r);

/* Checks (and with REPAIR_* flags repairs) image `index` of the chain. Returns
 * -EOPNOTSUPP when the format cannot be checked. The image must be writable to
 * repair. Progress counts the data a repair moves; it is not cancelled in the
 * middle. */
int vdisk_check(vdisk_disk *d, unsigned index, uint32_t flags, vdisk_check_report *ret,
                vdisk_progress *p);

/* Compares the content of two disks (qemu-img compare): returns 0 when equal,
 * 1 when different (then *ret_offset, if not NULL, gets the first differing
 * offset), or a negative error. With strict, allocation and size must match too. */
int vdisk_compare(vdisk_disk *a, vdisk_disk *b, int strict, uint64_t *ret_offset, vdisk_progress *p);

/* vdisk_compare_ex(): what was found, and where a failure happened. */
typedef enum vdisk_compare_outcome {
        VDISK_COMPARE_EQUAL,         /* the same content (the longer disk's tail reads zeros) */
        VDISK_COMPARE_CONTENT,       /* the content differs at `offset` (a 512-byte sector) */
        VDISK_COMPARE_SIZE,          /* strict: the sizes differ (nothing was read) */
        VDISK_COMPARE_BLOCK_STATUS,  /* strict: allocated/zero/data differ at `offset` */
} vdisk_compare_outcome;

typedef struct vdisk_compare_result {
        size_t size;                 /* sizeof(vdisk_compare_result), set by the caller */
        vdisk_compare_outcome outcome;
        uint64_t offset;
        uint64_t size_a, size_b;     /* the two disks' sizes */
        /* On a negative return: the disk that failed (0: a, 1: b), whether its
         * block status (1) or its data (0) could not be read, and at
         * which offset. */
        unsigned failed_side;
        int failed_status;
        uint64_t failed_offset;
} vdisk_compare_result;

/* vdisk_compare_ex() flags */
enum {
        VDISK_COMPARE_STRICT = 1u << 0,   /* sizes and block status must match too */
};

/* vdisk_compare() telling what differs (qemu-img compare's messages): returns
 * 0 when equal, 1 when different, or a negative error; *ret says more in each
 * case. A size mismatch without VDISK_COMPARE_STRICT is not a difference when
 * the longer disk's tail reads zeros (ret->size_a != ret->size_b says it). */
int vdisk_compare_ex(vdisk_disk *a, vdisk_disk *b, uint32_t flags, vdisk_compare_result *ret,
                     vdisk_progress *p);

/* vdisk_rebase_opts.flags */
enum {
        /* qemu-img rebase -u: only the link changes; no data is looked at,
         * and the top's old chain need not be open. */
        VDISK_REBASE_UNSAFE = 1u << 0,
};

typedef struct vdisk_rebase_opts {
        size_t size;                 /* sizeof(vdisk_rebase_opts) */
        uint32_t flags;              /* VDISK_REBASE_* */
        /* The name the top records for its new parent, in formats that name
         * it (qcow2's backing file, VMDK's parentFileNameHint, VHD's
         * locators), as given (relative to the top's directory, as qemu
         * reads it); needed when such a top gets a new parent (-EINVAL
         * otherwise). Formats that link by UUID alone ignore it. */
        const char *parent_name;
        /* With parent_name: the new parent's format as the top records it
         * (qcow2's backing format: qemu's name); NULL: the format the new
         * parent was opened as (qemu-img rebase records -F). */
        const char *parent_format;
} vdisk_rebase_opts;

/* Where vdisk_rebase() failed (for messages naming the file and offset). */
typedef enum vdisk_rebase_step {
        VDISK_REBASE_STEP_NONE,      /* before any work (arguments, loop, cancel) */
        VDISK_REBASE_STEP_STATUS,    /* block status of failed_side at failed_offset */
        VDISK_REBASE_STEP_READ,      /* a read of failed_side at failed_offset */
        VDISK_REBASE_STEP_WRITE,     /* a write into the top at failed_offset */
        VDISK_REBASE_STEP_FLUSH,     /* the flush of the copied data */
        VDISK_REBASE_STEP_LINK,      /* the switch of the link (and its flush) */
} vdisk_rebase_step;

typedef struct vdisk_rebase_result {
        size_t size;                 /* sizeof(vdisk_rebase_result), set by the caller */
        vdisk_rebase_step failed_step;
        unsigned failed_side;        /* 0: d (the top and its old chain), 1: backing */
        uint64_t failed_offset;
} vdisk_rebase_result;

/* Points `child` (writable) at `parent` (NULL: none) as its parent: the
 * parent UUID (null without a parent) and, in formats that name their
 * parent (qcow2's backing file, VMDK's parentFileNameHint, VHD's locators),
 * `name` and `format` as given, in one metadata write; then the parent
 * modification UUID where the format has one, and a VMDK's parentCID. Nothing
 * is read or copied (vdisk_rebase() does that). -EINVAL when the child names
 * its parent and `name` is NULL; -EOPNOTSUPP when it links by UUID alone and
 * the parent has none. Each field is durable when it returns. */
int vdisk_image_set_parent(vdisk_image *child, vdisk_image *parent, const char *name, const char *format);

/* qemu-img rebase: the top image of `d` (which must be writable) gets the
 * top image of `backing` as its parent; backing NULL: none (the top becomes
 * a standalone image). -ELOOP when the top's file is an image of `backing`.
 * Safe (no VDISK_REBASE_UNSAFE): `d` holds the top's whole old chain and
 * `backing` the whole new one (not opened for information only); wherever the
 * top does not define the data and the chains read differently, the old
 * content is written into the top, so that it reads the same on its new
 * chain. The link switches only after that data is flushed: on a failure or
 * cancel (-ECANCELED) before it, the top still names its old parent and the
 * disk reads as before. Progress counts the top's virtual size. `d` keeps
 * its old images below the top: the caller closes it. *ret (may be NULL)
 * says where a failure happened. */
int vdisk_rebase(vdisk_disk *d, vdisk_disk *backing, const vdisk_rebase_opts *opts, vdisk_rebase_result *ret,
                 vdisk_progress *p);

#ifdef __cplusplus
}
#endif
#endif
