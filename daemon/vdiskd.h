/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskd: the objects the daemon publishes and the state shared between its
 * modules. Everything here belongs to the main thread, except the fields a
 * Task's `run` fills in (marked "worker" below), which the main thread reads
 * only in `done`, after the worker pool handed the job back: never from a
 * property getter or any other callback that can run while the task runs.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <vdisk/vdisk.h>

#include "macro.h"
#include "progress.h"
#include "worker.h"

#define BUS_NAME "org.vdisk.VDisk1"
#define ROOT_PATH "/org/vdisk/VDisk1"
#define IFACE_MANAGER "org.vdisk.VDisk1.Manager"
#define IFACE_DISK "org.vdisk.VDisk1.Disk"
#define IFACE_IMAGE "org.vdisk.VDisk1.Image"
#define IFACE_OPERATION "org.vdisk.VDisk1.Operation"
#define IFACE_FILE_SET "org.vdisk.VDisk1.FileSet"
#define ERROR_PREFIX "org.vdisk.VDisk1.Error."

#define IO_MAX (1024u * 1024u)          /* Read/Write limit */
#define VDISKD_EXIT_STOP_TIMEOUT 3     /* left at --stop-timeout-sec with workers still blocked */
#define STOP_TIMEOUT_SEC_DEFAULT 30     /* below the unit's TimeoutStopSec= (data/vdiskd.service.in) */
/* What libvdisk accepts, checked in the method call (InvalidArgs there). */
#define IMAGE_SIZE_MAX (UINT64_C(1) << 62)      /* image and disk sizes */
#define COMMENT_MAX 255u                        /* image comments, bytes */
#define SPARSE_SIZE_MAX (4u << 20)              /* Copy's sparse-size */
#define DISPLAY_NAME_MAX 255u                   /* display-name option, bytes */
#define PARENT_NAME_MAX 1023u                   /* CreateDiff's parent-name, bytes (qcow2 takes 1023) */
/* What an Operation publishes, bounded (docs/dbus-api.md "Limits"). */
#define ERROR_MESSAGE_MAX 1024u                 /* ErrorMessage, bytes */
#define RESULT_MESSAGES_MAX 16u                 /* Result "messages": entries */
#define RESULT_MESSAGE_MAX 256u                 /* each, bytes */
/* Internal snapshots (Image.Snapshots, CreateSnapshot ...). */
#define SNAPSHOT_NAME_MAX 255u                  /* a name or id argument, bytes (qemu's and the library's) */
#define SNAPSHOT_TEXT_MAX 255u                  /* an id or name as listed, bytes (longer ones are cut) */
#define SNAPSHOTS_LISTED_MAX 64u                /* Snapshots: entries (the newest); SnapshotCount has all */

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) - offsetof(type, member)))

/* Intrusive doubly linked lists. */
#define LIST_FIELDS(t, name) t *name##_next, *name##_prev
#define LIST_PREPEND(name, head, item)                                  \
        do {                                                            \
                __typeof__(*(head)) **_head = &(head), *_item = (item); \
                if ((_item->name##_next = *_head))                      \
                        _item->name##_next->name##_prev = _item;        \
                _item->name##_prev = NULL;                              \
                *_head = _item;                                         \
        } while (0)
#define LIST_REMOVE(name, head, item)                                   \
        do {                                                            \
                __typeof__(*(head)) **_head = &(head), *_item = (item); \
                if (_item->name##_next)                                 \
                        _item->name##_next->name##_prev = _item->name##_prev; \
                if (_item->name##_prev)                                 \
                        _item->name##_prev->name##_next = _item->name##_next; \
                else                                                    \
                        *_head = _item->name##_next;                    \
                _item->name##_next = _item->name##_prev = NULL;         \
        } while (0)

typedef struct Manager Manager;
typedef struct Disk Disk;
typedef struct Image Image;
typedef struct Operation Operation;
typedef struct Call Call;
typedef struct Task Task;
typedef struct Peer Peer;
typedef struct User User;
typedef struct FileSet FileSet;

#define UID_UNKNOWN ((uid_t) -1)        /* whose the caller is, not known (yet) */

/* ------------------------------------------------------------ logging */

void log_msg(const char *fmt, ...) _printf_(1, 2);
#define log_error(...) log_msg(__VA_ARGS__)
int log_oom(void);

/* ------------------------------------------------------------ snapshots */

/* An image's properties as a worker read them while it held the disk. `key`
 * identifies the library's image (the main thread never dereferences it). */
typedef struct ImageInfo {
        const void *key;
        unsigned index;
        const vdisk_backend_info *backend;   /* static library data */
        uint32_t version, flags;
        char uuid[37], modification_uuid[37], parent_uuid[37], parent_modification_uuid[37];
        char *comment;
        char *variant;
        char *io_name;
        uint64_t size, file_size;
        uint32_t cluster_size;               /* allocation block, 0 = none */
        int dirty;                           /* the format's dirty/in-use flag is set */
        uint32_t pchs[3], lchs[3];
        int read_only;
        unsigned n_files;                    /* companion files held open (VMDK extents) */

        /* Internal snapshots: read at open and by the snapshot methods
         * (disk_info_read_snapshots), not by every task: have_snapshots
         * says whether this copy holds them; when it does not, the cache
         * keeps what it had. */
        bool have_snapshots;
        struct SnapshotInfo *snapshots;      /* the newest, at most SNAPSHOTS_LISTED_MAX, oldest first */
        unsigned n_snapshots;
        unsigned snapshot_count;             /* all the image has */
} ImageInfo;

typedef struct SnapshotInfo {
        char *id, *name;                     /* valid UTF-8, at most SNAPSHOT_TEXT_MAX bytes */
        uint64_t vm_state_size, date_usec, vm_clock_nsec, disk_size;
        uint64_t icount;                     /* UINT64_MAX: not recorded */
} SnapshotInfo;

typedef struct DiskInfo {
        bool valid;
        ImageInfo *images;
        unsigned n_images;
        unsigned n_fds;                      /* descriptors the images hold: each one's and its companions' */
        /* Set by the opens only: the writable descriptors the disk's
         * resolver keeps (to reopen lower images and their extents). */
        bool have_resolver_fds;
        unsigned n_resolver_fds;
        uint64_t size;
        int read_only;
        uint32_t pchs[3], lchs[3];
} DiskInfo;

/* Worker side: reads every property of every image of d. */
int disk_info_read(vdisk_disk *d, DiskInfo *ret);
/* Worker side, after disk_info_read(): the snapshots of every image too. */
int disk_info_read_snapshots(vdisk_disk *d, DiskInfo *info);
int snapshots_copy(ImageInfo *dst, const ImageInfo *src);
bool snapshots_equal(const ImageInfo *a, const ImageInfo *b);
void disk_info_clear(DiskInfo *i);
void image_info_clear(ImageInfo *i);
const char *media_type_name(uint32_t media);

/* ------------------------------------------------------------ users */

/* What one uid holds in the daemon, for the per-uid limits and the fair share
 * of the workers (util.c). A record exists while anything references it (a
 * Call with a known uid, an Operation, a Disk, a Task); records live in a list
 * searched linearly: there is one per uid with something live, i.e. as many as
 * users currently using the daemon (a few thousand at the very most). */
struct User {
        Manager *manager;
        unsigned n_ref;
        uid_t uid;
        unsigned n_disks;                /* Disks owned + Disks that calls/operations will publish */
        unsigned n_persistent;           /* of those, `persist` Disks (and reservations for them) */
        unsigned n_file_sets;            /* FileSets owned */
        unsigned n_calls;                /* Calls past uid lookup: in polkit, queued or running */
        unsigned n_fds;                  /* descriptors the daemon holds for this uid */
        unsigned n_busy;                 /* tasks handed to the worker pool */
        unsigned n_peers;                /* entries in the peer table with this uid */
        uint64_t served;                 /* when it last got a worker (round robin) */
        unsigned n_finished;             /* finished operations still published */
        Operation *finished_head, *finished_tail;   /* oldest first (Operation.user_finished) */
        Task *ready_head, *ready_tail;   /* tasks waiting for a worker */
        LIST_FIELDS(User, users);
};

/* A new reference to uid's record, created if needed (NULL: out of memory). */
User *user_get(Manager *m, uid_t uid);
User *user_ref(User *u);
User *user_unref(User *u);

/* ------------------------------------------------------------ tasks */

typedef enum TaskState {
        TASK_IDLE,                       /* not submitted, or its done has run */
        TASK_DISK_QUEUED,                /* in its disk's FIFO */
        TASK_READY,                      /* in its user's queue, waiting for a worker */
        TASK_POOLED,                     /* handed to the worker pool */
        TASK_FAILED,                     /* the pool refused it; done(cancelled) runs soon */
} TaskState;

/* A piece of blocking work. Tasks on the same Disk run one after another, in
 * order (so a worker holding a disk is the only thread touching it); the head
 * of a disk's FIFO, and tasks without a Disk, wait in their user's queue for a
 * worker. A user gets at most --max-workers-per-user workers at once; free
 * workers go round robin to the users with waiting tasks. */
struct Task {
        worker_job job;
        Manager *manager;
        Disk *disk;                      /* ref held while queued/running, or NULL */
        User *user;                      /* ref held while submitted: whose share it uses */
        Task *disk_next;                 /* the disk's queue */
        Task *ready_next;                /* the user's queue */
        TaskState state;
        void (*run)(Task *t);            /* worker thread */
        void (*done)(Task *t, bool cancelled);   /* main thread; may free the task */
};

int task_submit(Manager *m, Task *t, Disk *d, User *u);
/* Cancels a task that has not started: 1 if removed (done runs with
 * cancelled=true, later for pooled tasks, now for the others). */
int task_cancel_queued(Task *t);
bool task_started(Task *t);
bool task_pending(Task *t);              /* submitted and its done has not run */
bool task_any_waiting(Manager *m);       /* tasks waiting for a worker (not in the pool yet) */
void disk_drain_queue(Disk *d);
/* Ends every task that waits for a worker (done with cancelled=true): for
 * manager_free(), before and after the pool goes. */
void task_cancel_all_ready(Manager *m);

/* Descriptors and containers to close on a worker: close() of a caller's fd
 * can block (FUSE flush), and so can flushing a container on close. */
typedef struct Trash {
        int *fds;
        size_t n_fds;
        vdisk_disk **vds;
        size_t n_vds;
        unsigned n_held;                 /* descriptors in it, charged to the user until closed */
} Trash;

void trash_fd(Trash *t, int fd);                        /* takes fd (-1: nothing) */
void trash_vd(Trash *t, vdisk_disk *vd, unsigned n_fds); /* takes the reference */
/* Closes everything on a worker, charged to u (NULL: the unknown-uid share);
 * on this thread only once the pool is gone (exit). Empties t. */
void trash_empty(Manager *m, User *u, Trash *t);

/* ------------------------------------------------------------ options */

enum {
        OPT_NO_USER_INTERACTION = 1u << 0,
        OPT_DISPLAY_NAME        = 1u << 1,
        OPT_READ_ONLY           = 1u << 2,
        OPT_FILES               = 1u << 3,
        OPT_SKIP_CHECKS         = 1u << 4,
        OPT_VARIANT             = 1u << 5,
        OPT_BLOCK_SIZE          = 1u << 6,
        OPT_UUID                = 1u << 7,
        OPT_COMMENT             = 1u << 8,
        OPT_PCHS                = 1u << 9,
        OPT_LCHS                = 1u << 10,
        OPT_FORMAT_OPTIONS      = 1u << 11,
        OPT_SIZE                = 1u << 12,
        OPT_SPARSE_SIZE         = 1u << 13,
        OPT_OPEN                = 1u << 14,
        OPT_ALLOW_SHRINK        = 1u << 15,
        OPT_DRY_RUN             = 1u << 16,
        OPT_LEAKS_ONLY          = 1u << 17,
        OPT_TOP_ONLY            = 1u << 18,
        OPT_DIRECT_FD           = 1u << 19,
        OPT_PERSIST             = 1u << 20,
        OPT_FILE_SET            = 1u << 21,
        OPT_PREALLOCATION       = 1u << 22,
        OPT_DIRECT_ONLY         = 1u << 23,   /* Copy: large writes direct whatever the format */
        OPT_COMPRESS            = 1u << 28,   /* Copy: compressed clusters */
        /* Compare, CopyTo, CreateDiff (docs/dbus-api.md) */
        OPT_STRICT              = 1u << 25,   /* Compare: sizes and allocation must match */
        OPT_TARGET_IS_ZERO      = 1u << 26,   /* CopyTo: the target reads zeros already */
        OPT_SOURCE_TOP_ONLY     = 1u << 27,   /* CopyTo: only the source's top (convert -n -B) */
        OPT_PARENT_NAME         = 1u << 29,   /* CreateDiff: the parent name the child records */
        OPT_UNSAFE              = 1u << 30,   /* Rebase: the link alone (qemu-img rebase -u) */
};

typedef struct FileArg {
        char *name;
        int fd;                 /* our duplicate */
        int writable;
        dev_t dev;              /* worker: files_vet() */
        ino_t ino;
} FileArg;

typedef struct Options {
        uint32_t set;
        int no_user_interaction, read_only, skip_checks, open, allow_shrink, dry_run, leaks_only, top_only;
        int persist;
        char *display_name, *variant, *comment;
        char *file_set;         /* object path of a FileSet */
        uint8_t uuid[16];
        bool have_uuid;
        uint32_t block_size;
        vdisk_geometry pchs, lchs;
        char **format_options;  /* alternating key, value; NULL-terminated */
        uint64_t size, sparse_size;
        FileArg *files;
        size_t n_files;
        int direct_fd;          /* our duplicate; valid when set & OPT_DIRECT_FD */
        /* Resize: off, metadata, falloc or full (Create, CreateDiff and Copy
         * fold it into format_options) */
        char *preallocation;
        int compress;           /* Copy: store compressed units (qemu-img convert -c) */
        int direct_only;        /* Copy: the output io is VDISK_IO_DIRECT_ONLY (cache=none) */
        /* Compare, CopyTo, CreateDiff */
        int strict, target_is_zero, source_top_only;
        char *parent_name;      /* CreateDiff, Rebase: recorded in the child as its parent's name */
        int unsafe;             /* Rebase */
} Options;

int options_parse(sd_bus_message *m, uint32_t allowed, Options *o, sd_bus_error *error);
/* Reads an a{sh} of named files (option `files`, FileSet.Add), appending to *files. */
int files_read(sd_bus_message *m, const char *what, FileArg **files, size_t *n_files, sd_bus_error *error);
void options_done(Options *o, Trash *t);     /* the files' fds go to t */

/* ------------------------------------------------------------ errors */

/* Outcome of blocking work: the libvdisk code and its message, captured on
 * the worker thread (vdisk_last_error() is thread-local). */
typedef struct Outcome {
        int r;
        char *message;
} Outcome;

void outcome_set(Outcome *o, int r);            /* worker: captures vdisk_last_error() */
void outcome_setf(Outcome *o, int r, const char *fmt, ...) _printf_(3, 4);
/* A failure's message (strerror when none) followed by "; " and what it
 * left behind. */
void outcome_append(Outcome *o, const char *fmt, ...) _printf_(2, 3);
void outcome_clear(Outcome *o);
const char *errno_to_error_name(int r);
int reply_outcome_error(sd_bus_message *m, const Outcome *o);
int reply_error(sd_bus_message *m, const char *name, const char *fmt, ...) _printf_(3, 4);
int set_error(sd_bus_error *e, const char *name, const char *fmt, ...) _printf_(3, 4);
/* Appends the dictionary entry {key: <as>} (type 's') or {key: <ao>} (type
 * 'o') of an a{sv} being built (strv NULL-terminated; NULL: an empty list). */
int bus_append_strv_entry(sd_bus_message *m, const char *key, char type, const char *const *strv);

/* ------------------------------------------------------------ fds */

enum {
        FD_NEED_WRITE = 1u << 0,
        FD_NEED_EMPTY = 1u << 1,
};

/* Main thread, in the method handler: checks what fcntl(F_GETFL) tells (no
 * O_PATH, the access mode, no O_APPEND where we write) and returns our own
 * F_DUPFD_CLOEXEC copy. Nothing here can block on the file. */
int fd_read_failed(int r, sd_bus_error *error);
int fd_accept(int fd, uint32_t flags, const char *what, int *ret_fd, int *ret_writable, sd_bus_error *error);
/* The optional second descriptor of an output, opened O_DIRECT for writing. */
int fd_accept_direct(int fd, const char *what, int *ret_fd, sd_bus_error *error);
/* Worker, before the fd is used: fstat() (can block on FUSE/NFS), a regular
 * file, empty with FD_NEED_EMPTY. Failing: -EBADF with o set. */
int fd_vet(int fd, uint32_t flags, const char *what, struct stat *ret_st, Outcome *o);
int files_vet(FileArg *files, size_t n_files, Outcome *o);   /* fills dev/ino */
/* Takes the fd; flags: vdisk_io_new_fd()'s (VDISK_IO_READONLY, ...). */
int io_from_fd(int fd, uint32_t flags, const char *name, vdisk_io **ret);
/* A resolver over the `files` option of the call that opens a disk: parents
 * are found among them (the files stay owned by the call: call
 * files_resolver_done_opening() before the call frees them). It keeps
 * duplicates of the writable ones (and of whatever files_resolver_add_writable()
 * adds) for the disk's life, to reopen a parent writable when an operation
 * writes into it (FileNeeded when none is the same file). *ret_fr (may be
 * NULL) is valid while the resolver lives. */
typedef struct FilesResolver FilesResolver;
int files_resolver_new(FileArg *files, size_t n_files, FilesResolver **ret_fr, vdisk_resolver **ret);
int files_resolver_add_writable(FilesResolver *fr, int fd, dev_t dev, ino_t ino);
void files_resolver_done_opening(FilesResolver *fr);
/* A later open on the same disk (Disk.Open on a non-empty Disk): the call's
 * files are candidates (companion files by name) until
 * files_resolver_done_opening(); its writable ones are kept like those of the
 * first open. */
int files_resolver_begin_opening(FilesResolver *fr, FileArg *files, size_t n_files);
/* The writable descriptors it keeps. */
unsigned files_resolver_n_writable(const FilesResolver *fr);

/* ------------------------------------------------------------ objects */

typedef enum ObjectType {
        OBJECT_MANAGER,
        OBJECT_DISK,
        OBJECT_IMAGE,
        OBJECT_OPERATION,
        OBJECT_FILE_SET,
} ObjectType;

struct Image {
        Manager *manager;
        unsigned n_ref;
        Disk *disk;                     /* NULL once removed */
        uint64_t id;
        char *path;
        char *display_name;
        ImageInfo info;                 /* cached properties; info.key = the library image */
        bool exported, gone;
        sd_bus_slot *slot;
};

struct Disk {
        Manager *manager;
        unsigned n_ref;
        uint64_t id;
        char *path;
        char *display_name;
        uid_t owner;
        User *user;                      /* the owner's record (ref) */
        unsigned n_fds_charged;          /* descriptors charged to it: one per image and per companion
                                          * file, and the resolver's writable copies */
        unsigned n_resolver_fds;         /* the last count an open reported */
        vdisk_disk *vd;                  /* touched only by the task that holds the disk */
        FilesResolver *fr;               /* the resolver vd keeps, when vdiskd gave it one: likewise */
        Image **images;                  /* chain order */
        unsigned n_images;
        uint64_t size;
        int read_only;
        uint32_t pchs[3], lchs[3];
        Operation *operation;
        bool exported, closing, gone;
        bool persistent;                 /* `persist`: not tied to its creator's connection */
        bool creator_gone;               /* close once no operation runs */
        sd_bus_slot *slot;
        Peer *peer;                      /* the creator's connection; NULL once it went */
        Task *active, *queue_head, *queue_tail;
        LIST_FIELDS(Disk, disks);
        LIST_FIELDS(Disk, client_disks);
};

/* A client connection (unique bus name) that made a call (peers.c): its uid
 * once known, the Disks it created (closed when it leaves the bus). */
struct Peer {
        Manager *manager;
        char *name;
        uid_t uid;                       /* UID_UNKNOWN until the bus said */
        User *user;                      /* ref once the uid is known (counts in n_peers) */
        bool sees_others;                /* its last GetManagedObjects passed manage-other-user (privacy.c) */
        Disk *disks;                     /* LIST client_disks */
        Peer *hash_next;
        LIST_FIELDS(Peer, peers);
};

/* A set of named files a client fills in several calls (a bus message carries
 * only a few descriptors), then hands to OpenDisk or Disk.Open with option
 * `file-set` as the candidates for parents: consumed by that call. Owned by a
 * uid; its descriptors are charged to it. Removed by Close, by the open that
 * consumes it, or after --file-set-timeout-sec. */
struct FileSet {
        Manager *manager;
        uint64_t id;
        char *path;
        uid_t owner;
        User *user;                      /* ref */
        FileArg *files;
        size_t n_files;
        sd_event_source *timer;
        sd_bus_slot *slot;
        LIST_FIELDS(FileSet, file_sets);
};

typedef enum OpKind {
        OP_CREATE,
        OP_CREATE_DIFF,
        OP_COPY,
        OP_MERGE,
        OP_COMPACT,
        OP_RESIZE,
        OP_CHECK,
        OP_REPAIR,
        OP_COMPARE,             /* Disk.Compare: another Disk of the caller, read */
        OP_COPY_TO,             /* Disk.CopyTo: another Disk of the caller, written */
        OP_REBASE,              /* Disk.Rebase: onto another Disk of the caller (read), or none */
        _OP_KIND_MAX,
} OpKind;

typedef enum OpState {
        OP_QUEUED,
        OP_RUNNING,
        OP_CANCELLING,
        OP_SUCCEEDED,
        OP_FAILED,
        OP_CANCELLED,
        _OP_STATE_MAX,
} OpState;

const char *op_kind_to_string(OpKind k);
const char *op_state_to_string(OpState s);

enum {
        OP_STOPPABLE = 0,
        OP_FINISHING = 1,
        OP_CANCEL_REQUESTED = 2,
};

typedef struct OpResult {
        bool have_report;
        vdisk_check_report report;
        char **removed;                  /* object paths, merge */
        bool have_compare;               /* Compare: equal, offset, sizes */
        bool equal;
        uint64_t offset, size, other_size;
        vdisk_compare_outcome difference;   /* Compare, not equal: what differs */
} OpResult;

struct Operation {
        Manager *manager;
        uint64_t id;
        char *path;
        OpKind kind;
        OpState state;
        uid_t uid;
        char *disk_path;
        char **objects, **result_objects;
        OpResult result;
        char *error_name, *error_message;
        int cancelable;
        uint64_t start_time, end_time;   /* realtime µs */
        op_progress progress;
        vdisk_progress *vp;
        /* OP_STOPPABLE, then either OP_CANCEL_REQUESTED (Cancel, compare-and-swap)
         * or OP_FINISHING (the worker, exchange, once it can no longer stop) */
        atomic_int finishing;
        User *user;                      /* the starter's record (ref) */
        unsigned n_fds_charged;
        bool disk_reserved;              /* Copy `open`: counts in the starter's n_disks */
        bool persist_reserved;           /* ... and, with `persist`, in its n_persistent */
        sd_event_source *timer, *linger;
        sd_bus_slot *slot;
        Call **waits;                    /* pending Waits: still counted as the callers' calls */
        size_t n_waits;
        bool exported;
        bool service_stopping;           /* cancelled because vdiskd stops (Error.ServiceStopping) */
        bool finished_listed;            /* in the manager's and its user's finished lists */
        Operation *all_finished_prev, *all_finished_next;
        Operation *user_finished_prev, *user_finished_next;

        Task task;
        Disk *disk;                      /* ref, while not finished */

        /* inputs (set before submit) */
        int fd, fd_writable;
        char *format;
        char *io_name;
        uint64_t new_image_id;           /* reserved for create/copy */
        uint64_t new_disk_id;
        vdisk_create_opts create;
        Options options;
        uint64_t size;
        unsigned from, to, index;
        /* Addressed by Image path: the library images, resolved to indices
         * on the worker (a call queued before may have changed the chain). */
        const void *image_keys[2];
        char *starter;                   /* Copy with `open`: the starter's bus name, or NULL */

        /* outputs (worker): read in `done` only (op_done moves the report into `result`) */
        Outcome outcome;
        DiskInfo info;                   /* the disk after the work */
        vdisk_disk *new_vd;              /* Copy with `open` */
        DiskInfo new_info;
        bool w_have_report;
        vdisk_check_report w_report;

        /* Compare, CopyTo: the other Disk (ref; its `operation` is this one
         * until the end, so nothing else runs on it), and what came out. */
        Disk *other;
        char *other_path;
        DiskInfo other_info;             /* worker: the other disk after the work */
        bool w_have_compare;             /* worker: the comparison ran to its end */
        bool w_equal;
        uint64_t w_offset, w_size, w_other_size;
        vdisk_compare_outcome w_difference;

        LIST_FIELDS(Operation, operations);
};

struct Manager {
        sd_event *event;
        sd_bus *bus;
        worker_pool *pool;
        bool session;
        uid_t own_uid;
        unsigned workers, max_operations, max_operations_per_user;
        unsigned max_disks_per_user, max_calls_per_user, max_fds_per_user, max_workers_per_user;
        unsigned max_finished_operations, max_finished_operations_per_user;
        unsigned max_disks, max_calls, max_waits_per_operation, max_fds;
        unsigned max_persistent_disks_per_user, max_file_sets_per_user, max_fds_per_call;
        uint64_t file_set_timeout_usec;
        uint64_t next_file_set_id;
        FileSet *file_sets;
        uint64_t linger_usec, idle_usec;
        uint64_t next_disk_id, next_image_id, next_operation_id;

        Disk *disks;
        Peer *peers, **peer_buckets;     /* peers.c */
        unsigned n_peers, max_peers, max_peers_per_user;
        sd_bus_slot *name_owner_slot;
        sd_bus_slot *privacy_filter_slot; /* privacy.c */
        sd_bus_message **passed;         /* reads that passed the check, back on the read queue */
        size_t n_passed;
        Operation *operations;
        Call *calls;
        User *users;
        unsigned n_disks, n_operations, n_calls;
        unsigned n_disks_reserved;       /* Disks that calls/operations will publish */
        unsigned n_fds;                  /* descriptors held for all users (sum of User.n_fds) */
        unsigned n_finished;             /* finished operations still published */
        Operation *finished_head, *finished_tail;   /* oldest first (Operation.all_finished) */

        unsigned n_pooled;               /* tasks in the worker pool */
        uint64_t sched_seq;
        Task *failed_head, *failed_tail; /* refused by the pool: done(cancelled) from failed_defer */
        sd_event_source *failed_defer;
        bool pool_closing;               /* manager_free(): the pool goes, nothing more is handed to it */

        sd_event_source *idle_timer, *exit_defer, *shutdown_check, *stop_timer;
        sd_bus_slot *object_manager_slot, *manager_slot, *release_slot, *filter_slot;
        unsigned stop_timeout_sec;       /* --stop-timeout-sec: the bound on a stop */
        bool exiting, shutting_down;
};

/* Moves u's descriptor count (and the manager's total) by +add -sub. */
static inline void user_charge_fds(User *u, unsigned add, unsigned sub) {
        assert(u->n_fds >= sub && u->manager->n_fds >= sub);
        u->n_fds = u->n_fds - sub + add;
        u->manager->n_fds = u->manager->n_fds - sub + add;
}

/* manager.c */
int manager_new(Manager **ret);
Manager *manager_free(Manager *m);
int manager_start(Manager *m);
void manager_update_idle(Manager *m);
void manager_shutdown(Manager *m);
void manager_shutdown_check(Manager *m);
extern const sd_bus_vtable manager_vtable[];
Disk *manager_find_disk(Manager *m, const char *path);
Image *manager_find_image(Manager *m, const char *path);
Operation *manager_find_operation(Manager *m, const char *path);
unsigned manager_count_operations(Manager *m, bool per_uid, uid_t uid);
bool manager_disks_full(Manager *m);

/* fileset.c */
extern const sd_bus_vtable file_set_vtable[];
FileSet *manager_find_file_set(Manager *m, const char *path);
int manager_create_file_set(Call *c);
FileSet *file_set_free(FileSet *fs);
/* Moves the set's files into *files (appended) and frees the set; the
 * descriptors' charge moves to the call. Fails (InvalidArgs) on a name clash. */
int file_set_consume(Call *c, FileSet *fs);
/* manager.c: option `file-set` of OpenDisk/Disk.Open: 1 go on, 0 the call
 * failed (and is freed), < 0 error. */
int call_take_file_set(Call *c);

/* disk.c */
extern const sd_bus_vtable disk_vtable[];
void disk_set_persistent(Disk *d);
int disk_new(Manager *m, uint64_t id, uid_t owner, const char *display_name, vdisk_disk *vd, Disk **ret);
Disk *disk_ref(Disk *d);
Disk *disk_unref(Disk *d);
int disk_export(Disk *d);
/* Applies a worker's snapshot: updates cached properties, exports new Images,
 * removes Images that left the chain, emits PropertiesChanged. `names` maps io
 * names of new images to (id, display name). */
typedef struct NewImageName {
        const char *io_name;
        const char *display_name;
        uint64_t id;
        bool used;
} NewImageName;
void disk_apply_info(Disk *d, const DiskInfo *info, NewImageName *names, size_t n_names);
void disk_remove(Disk *d);                 /* unexport disk and images; main thread */
void disk_operation_finished(Disk *d);      /* after disk->operation was cleared */
/* Image.Compact/Check/Repair: the operation of that kind on the image's Disk. */
int disk_start_image_operation(Call *c, OpKind kind);
/* Closes the disk when the bus name goes away (NULL: a direct connection,
 * never). -ENXIO when the name has no entry in the peer table (gone). */
int disk_track_name(Disk *d, const char *name);
void disk_close_async(Disk *d);             /* the creator went away: close (on a worker) */

/* peers.c */
int peers_start(Manager *m);
void peers_free(Manager *m);
Peer *peer_find(Manager *m, const char *name);
/* Finds or makes the entry of `name`: -E2BIG past --max-peers. */
int peer_get(Manager *m, const char *name, Peer **ret);
/* -E2BIG past --max-peers-per-user. */
int peer_set_uid(Peer *p, uid_t uid);
Peer *peer_free(Peer *p);
void peer_gone(Peer *p);
void peer_lookup_failed(Manager *m, const char *name);

/* privacy.c */
int privacy_start(Manager *m);
void privacy_free(Manager *m);
/* Unicast signals about an object to each connection that may see it. */
void emit_object_added(Manager *m, ObjectType type, void *object);
void emit_object_removed(Manager *m, ObjectType type, void *object);
void emit_properties_changed(Manager *m, ObjectType type, void *object, const char *const *names);
void emit_completed(Operation *o);

/* image.c */
extern const sd_bus_vtable image_vtable[];
int image_new(Manager *m, Disk *d, uint64_t id, const char *display_name, const ImageInfo *info, Image **ret);
Image *image_ref(Image *i);
Image *image_unref(Image *i);
int image_export(Image *i);
void image_remove(Image *i);
/* Copies info into the image's cache; returns a NULL-terminated list of the
 * names of changed properties (static strings) in ret_changed. */
int image_update(Image *i, const ImageInfo *info, const char **ret_changed, size_t max);
int image_info_copy(ImageInfo *dst, const ImageInfo *src);

/* operation.c */
extern const sd_bus_vtable operation_vtable[];
int operation_new(Manager *m, OpKind kind, Disk *d, User *u, Operation **ret);
Operation *operation_free(Operation *o);
int operation_take_call(Operation *o, Call *c);
int operation_start(Operation *o);          /* export + submit */
/* Compare, CopyTo: the other Disk, idle (checked); busy with o from operation_start() on. */
int operation_set_other(Operation *o, Disk *other);
void operation_cancel_for_shutdown(Operation *o);
void operation_abandon(Operation *o, unsigned stop_timeout_sec);   /* the stop bound passed: see manager.c */

/* auth.c / call.c */
typedef int (*call_run_t)(Call *c);

typedef struct MethodSpec {
        const char *operation;          /* polkit detail */
        const char *action;             /* NULL = no check of its own */
        ObjectType target;
        call_run_t run;
        bool read_access;           /* Properties.Get/GetAll: another uid's object needs manage-other-user */
} MethodSpec;

struct Call {
        Manager *manager;
        sd_bus_message *message;
        const MethodSpec *spec;
        uid_t uid;
        User *user;                     /* ref, once the uid is known (counts in n_calls) */
        unsigned n_fds_charged;
        bool disk_reserved;             /* OpenDisk: counts in the user's n_disks */
        bool persist_reserved;          /* ... and, with `persist`, in its n_persistent */
        unsigned auth_step;
        bool auth_interactive;
        bool auth_soft;                 /* a refusal of this check runs spec->run again (auth_refused) */
        bool auth_refused;
        sd_bus_slot *slot;

        /* arguments */
        Options options;
        int fd, fd_writable;
        char *format;
        char *text;                     /* SetComment */
        uint64_t t1, t2;
        uint32_t u1, u2;
        void *data;
        size_t data_size;
        struct ChainElement *chain;
        size_t n_chain;
        char *uuids[4];                 /* SetUuids: NULL = keep, "" = random */
        char *image_paths[2];           /* MergeImages */
        const void *image_keys[2];      /* Image-addressed operations: the library images */

        /* blocking part */
        Task task;
        Disk *disk;                     /* ref */
        Image *image;                   /* ref */
        Outcome outcome;
        DiskInfo info;
        void *result;                   /* method-specific worker output */
        void (*result_free)(void *p);
        vdisk_disk *new_vd;
        FilesResolver *new_fr;           /* new_vd's resolver (OpenDisk) */
        NewImageName *names;
        size_t n_names;

        LIST_FIELDS(Call, calls);
};

typedef struct ChainElement {
        int fd, writable;
        char *format;
        Options options;
        char *io_name;
        uint64_t image_id;
} ChainElement;

int call_new(Manager *m, sd_bus_message *msg, const MethodSpec *spec, Call **ret);
Call *call_free(Call *c);
/* Resolves the caller's uid, authorizes (polkit when needed), re-resolves the
 * target object and runs spec->run. Takes ownership of c. Returns 1 (the
 * method handler's return value: the reply comes later). */
int call_dispatch(Call *c);
void call_reply_outcome(Call *c);           /* replies the error in c->outcome and frees c */
int call_submit(Call *c, Disk *d, void (*run)(Task *t), void (*done)(Task *t, bool cancelled));
void call_fail(Call *c, int r, const char *name, const char *fmt, ...) _printf_(4, 5);
void call_reply_empty(Call *c);

/* Resolves the object a message addresses (NULL if gone). */
void *call_target(Call *c);

void call_auth_granted(Call *c);
void call_rerun(Call *c);                   /* runs spec->run again (after a soft refusal) */

/* auth.c */
/* format/display_name: the target object's; new_format/new_display_name: what the
 * call asks for (its format argument, its display-name option). NULL = absent. */
int auth_check(Call *c, const char *action, uid_t owner, const char *format, const char *display_name,
               const char *new_format, const char *new_display_name);

/* introspect.c */
int introspect_print(const char *interface);

/* time */
uint64_t now_realtime(Manager *m);
uint64_t now_monotonic(Manager *m);

static inline char *mfree_str(char *p) {
        free(p);
        return NULL;
}

static inline void *mfree_ptr(void *p) {
        free(p);
        return NULL;
}

#define IN_SET3(x, a, b, c) ((x) == (a) || (x) == (b) || (x) == (c))

static inline void call_freep(Call **c) {
        if (*c)
                call_free(*c);
}
