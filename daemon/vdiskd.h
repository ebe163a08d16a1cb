/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskd: the objects the daemon publishes and the state shared between its
 * modules. Everything here belongs to the main thread, except the fields a
 * Task's `run` fills in (documented at the Task), which the main thread reads
 * only in `done`, after the worker pool handed the job back.
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
#define ERROR_PREFIX "org.vdisk.VDisk1.Error."

#define IO_MAX (1024u * 1024u)          /* Read/Write limit */

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
        uint32_t pchs[3], lchs[3];
        int read_only;
} ImageInfo;

typedef struct DiskInfo {
        bool valid;
        ImageInfo *images;
        unsigned n_images;
        uint64_t size;
        int read_only;
        uint32_t pchs[3], lchs[3];
} DiskInfo;

/* Worker side: reads every property of every image of d. */
int disk_info_read(vdisk_disk *d, DiskInfo *ret);
void disk_info_clear(DiskInfo *i);
void image_info_clear(ImageInfo *i);
const char *media_type_name(uint32_t media);

/* ------------------------------------------------------------ tasks */

/* A piece of blocking work. Tasks on the same Disk run one after another, in
 * order (so a worker holding a disk is the only thread touching it); tasks
 * without a Disk go to the pool at once. */
struct Task {
        worker_job job;
        Manager *manager;
        Disk *disk;                      /* ref held while queued/running, or NULL */
        Task *disk_next;                 /* the disk's queue */
        bool submitted;
        void (*run)(Task *t);            /* worker thread */
        void (*done)(Task *t, bool cancelled);   /* main thread; may free the task */
};

int task_submit(Manager *m, Task *t, Disk *d);
/* Cancels a task that has not started: 1 if removed (done runs with
 * cancelled=true, later for pooled tasks, now for disk-queued ones). */
int task_cancel_queued(Task *t);
bool task_started(Task *t);
void disk_drain_queue(Disk *d);

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
};

typedef struct FileArg {
        char *name;
        int fd;                 /* our duplicate */
        int writable;
        dev_t dev;
        ino_t ino;
} FileArg;

typedef struct Options {
        uint32_t set;
        int no_user_interaction, read_only, skip_checks, open, allow_shrink, dry_run, leaks_only, top_only;
        char *display_name, *variant, *comment;
        uint8_t uuid[16];
        bool have_uuid;
        uint32_t block_size;
        vdisk_geometry pchs, lchs;
        char **format_options;  /* alternating key, value; NULL-terminated */
        uint64_t size, sparse_size;
        FileArg *files;
        size_t n_files;
} Options;

int options_parse(sd_bus_message *m, uint32_t allowed, Options *o, sd_bus_error *error);
void options_done(Options *o);

/* ------------------------------------------------------------ fds */

enum {
        FD_NEED_WRITE = 1u << 0,
        FD_NEED_EMPTY = 1u << 1,
};

/* Vets a caller's fd and returns our own F_DUPFD_CLOEXEC copy. */
int fd_accept(int fd, uint32_t flags, const char *what, int *ret_fd, int *ret_writable, sd_bus_error *error);
int io_from_fd(int fd, int writable, const char *name, vdisk_io **ret);   /* takes the fd */
/* A resolver over the `files` option; the files stay owned by the caller. */
int files_resolver_new(FileArg *files, size_t n_files, vdisk_resolver **ret);

/* ------------------------------------------------------------ errors */

/* Outcome of blocking work: the libvdisk code and its message, captured on
 * the worker thread (vdisk_last_error() is thread-local). */
typedef struct Outcome {
        int r;
        char *message;
} Outcome;

void outcome_set(Outcome *o, int r);            /* worker: captures vdisk_last_error() */
void outcome_setf(Outcome *o, int r, const char *fmt, ...) _printf_(3, 4);
void outcome_clear(Outcome *o);
const char *errno_to_error_name(int r);
int reply_outcome_error(sd_bus_message *m, const Outcome *o);
int reply_error(sd_bus_message *m, const char *name, const char *fmt, ...) _printf_(3, 4);
int set_error(sd_bus_error *e, const char *name, const char *fmt, ...) _printf_(3, 4);

/* ------------------------------------------------------------ objects */

typedef enum ObjectType {
        OBJECT_MANAGER,
        OBJECT_DISK,
        OBJECT_IMAGE,
        OBJECT_OPERATION,
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
        vdisk_disk *vd;                  /* touched only by the task that holds the disk */
        Image **images;                  /* chain order */
        unsigned n_images;
        uint64_t size;
        int read_only;
        uint32_t pchs[3], lchs[3];
        Operation *operation;
        bool exported, closing, gone;
        sd_bus_slot *slot;
        sd_bus_track *track;
        Task *active, *queue_head, *queue_tail;
        LIST_FIELDS(Disk, disks);
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

typedef struct OpResult {
        bool have_report;
        vdisk_check_report report;
        char **removed;                  /* object paths, merge */
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
        atomic_int finishing;            /* set by the worker once it can no longer stop */
        sd_event_source *timer, *linger;
        sd_bus_slot *slot;
        sd_bus_message **waits;
        size_t n_waits;
        bool exported;

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
        sd_bus_track *new_disk_track;    /* Copy with `open`: the starter */

        /* outputs (worker) */
        Outcome outcome;
        DiskInfo info;                   /* the disk after the work */
        vdisk_disk *new_vd;              /* Copy with `open` */
        DiskInfo new_info;

        LIST_FIELDS(Operation, operations);
};

struct Manager {
        sd_event *event;
        sd_bus *bus;
        worker_pool *pool;
        bool session;
        uid_t own_uid;
        unsigned workers, max_operations, max_operations_per_user;
        uint64_t linger_usec, idle_usec;
        uint64_t next_disk_id, next_image_id, next_operation_id;

        Disk *disks;
        Operation *operations;
        Call *calls;
        unsigned n_disks, n_operations, n_calls;

        sd_event_source *idle_timer, *exit_defer, *shutdown_check;
        sd_bus_slot *object_manager_slot, *manager_slot, *release_slot;
        bool exiting, shutting_down;
};

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

/* disk.c */
extern const sd_bus_vtable disk_vtable[];
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
int disk_track_sender(Disk *d, sd_bus_message *m);
void disk_adopt_track(Disk *d, sd_bus_track *t);
void disk_close_async(Disk *d);             /* close on a worker (the client went away) */

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
int operation_new(Manager *m, OpKind kind, Disk *d, uid_t uid, Operation **ret);
Operation *operation_free(Operation *o);
int operation_take_call(Operation *o, Call *c);
int operation_start(Operation *o);          /* export + submit */
void operation_cancel_for_shutdown(Operation *o);

/* auth.c / call.c */
typedef int (*call_run_t)(Call *c);

typedef struct MethodSpec {
        const char *operation;          /* polkit detail */
        const char *action;             /* NULL = no check of its own */
        ObjectType target;
        call_run_t run;
        bool open_to_all;           /* Operation.Wait: open to everyone in system mode */
} MethodSpec;

struct Call {
        Manager *manager;
        sd_bus_message *message;
        const MethodSpec *spec;
        uid_t uid;
        unsigned auth_step;
        bool auth_interactive;
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

        /* blocking part */
        Task task;
        Disk *disk;                     /* ref */
        Image *image;                   /* ref */
        Outcome outcome;
        DiskInfo info;
        void *result;                   /* method-specific worker output */
        void (*result_free)(void *p);
        vdisk_disk *new_vd;
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

/* auth.c */
int auth_check(Call *c, const char *action, uid_t owner, const char *format, const char *display_name);

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
