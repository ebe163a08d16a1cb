/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl: the D-Bus client of vdiskd. Internal declarations shared by
 * tools/vdiskctl*.c.
 *
 * vdiskctl talks to the daemon only through sd-bus (docs/dbus-api.md is the
 * contract); it never links libvdisk. It opens every file itself, with the
 * user's rights, and hands the daemon file descriptors. Output goes to
 * stdout, errors and warnings to stderr, prefixed with "vdiskctl: ".
 */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>

#include "macro.h"
#include "shared/check.h"
#include "shared/front.h"
#include "shared/json.h"
#include "shared/log.h"
#include "shared/optlist.h"
#include "shared/text.h"

#define PROGRAM_NAME "vdiskctl"

#define VDISK_BUS_NAME "org.vdisk.VDisk1"
#define VDISK_PATH "/org/vdisk/VDisk1"
#define VDISK_IFACE_MANAGER "org.vdisk.VDisk1.Manager"
#define VDISK_IFACE_DISK "org.vdisk.VDisk1.Disk"
#define VDISK_IFACE_IMAGE "org.vdisk.VDisk1.Image"
#define VDISK_IFACE_OPERATION "org.vdisk.VDisk1.Operation"
#define VDISK_IFACE_FILE_SET "org.vdisk.VDisk1.FileSet"
#define VDISK_ERROR_PREFIX "org.vdisk.VDisk1.Error."

/* dbus-daemon's system bus accepts at most 16 fds per message. */
#define MESSAGE_FDS_MAX 16u
/* libvdisk's limit on the length of a chain; vdiskctl refuses longer ones. */
#define CHAIN_MAX 64u

/* ---- exit codes (documented in vdiskctl(1)) */

#define EXIT_OK 0
/* EXIT_FAILURE (1): anything not below */
#define EXIT_USAGE 2           /* bad command line (check and repair use 1, see there) */
#define EXIT_PERMISSION 4      /* access denied, authorization needed or dismissed */
#define EXIT_NOT_FOUND 5       /* file, parent or object not found */
#define EXIT_NOT_SUPPORTED 6   /* format or capability not supported */
#define EXIT_BUSY 7            /* disk busy, operation limits reached */
#define EXIT_UNAVAILABLE 69    /* vdiskd not reachable */
#define EXIT_CANCELLED 130     /* interrupted (Ctrl-C) or the operation was cancelled */


/* ---- global options (vdiskctl.c) */

typedef enum BusTransport {
        TRANSPORT_SYSTEM,
        TRANSPORT_SESSION,
        TRANSPORT_ADDRESS,
} BusTransport;

extern BusTransport arg_transport;
extern const char *arg_address;
extern bool arg_ask_password;
extern OutputFormat arg_output;
extern bool arg_quiet;

/* ---- messages, signals, names (vdiskctl-util.c) */

static inline int log_oom(void) {
        log_error("Out of memory");
        return EXIT_FAILURE;
}

/* log_error(), log_warning(), log_set_quiet(), usage_hint() and
 * usage_error(): shared/log.h (a bad command line ends with EXIT_USAGE). */
void log_notice(const char *fmt, ...) _printf_(1, 2);    /* nothing with -q */

/* Number of SIGINT/SIGTERM/SIGHUP requests since the handlers were
 * installed (signals less than a second apart count once). Blocking waits
 * return early (EINTR) when one arrives. */
extern volatile sig_atomic_t signals_received;
void install_signal_handlers(void);

/* The file of fd opened a second time, for writing with O_DIRECT, through
 * /proc/self/fd (the same file whatever happened to its name), for vdiskd's
 * `direct-fd`; -1 if the file system or the environment does not allow it. */
int open_direct(int fd);
/* A copy of s with every byte that is not valid UTF-8 replaced by U+FFFD
 * (D-Bus strings must be UTF-8; file names need not be). */
char *utf8_sanitize(const char *s);
/* The file's base name (a pointer into path). */
const char *path_basename(const char *path);
/* "disk/3" for "/org/vdisk/VDisk1/disk/3" (or the path itself). */
const char *object_short(const char *path);
/* "user" or the uid in decimal. */
void format_uid(uint32_t uid, char buf[static 64]);
/* Microseconds of CLOCK_REALTIME. */
uint64_t now_usec(void);
/* "2024-05-01 12:34:56" local time of a µs timestamp, "-" for 0. */
void format_timestamp(uint64_t usec, char buf[static 64]);
void strv_free(char **l);
int strv_push(char ***l, size_t *n, const char *s);

static inline void strv_freep(char ***l) {
        strv_free(*l);
}

static inline size_t strv_length(char **l) {
        size_t n = 0;

        while (l && l[n])
                n++;
        return n;
}

/* ---- generic D-Bus values (vdiskctl-value.c) */

typedef enum ValueType {
        VALUE_NONE,
        VALUE_BOOL,
        VALUE_INT,      /* n i x h */
        VALUE_UINT,     /* y q u t */
        VALUE_DOUBLE,
        VALUE_STRING,   /* s o g */
        VALUE_ARRAY,    /* arrays that are not dictionaries, structs */
        VALUE_DICT,     /* a{..} (keys as strings) */
} ValueType;

typedef struct Value {
        ValueType type;
        char sig;            /* the D-Bus type code, 'r' for structs */
        union {
                bool b;
                int64_t i;
                uint64_t u;
                double d;
                char *s;
                struct {
                        struct Value *items;
                        char **keys;    /* VALUE_DICT only */
                        size_t n;
                } c;
        };
} Value;

/* Reads the complete value at the message's read position (variants are
 * unwrapped). */
int value_read(sd_bus_message *m, Value *ret);
void value_clear(Value *v);

const Value *value_get(const Value *dict, const char *key);
const char *value_str(const Value *dict, const char *key, const char *def);
uint64_t value_uint(const Value *dict, const char *key, uint64_t def);
bool value_bool(const Value *dict, const char *key, bool def);
double value_double(const Value *dict, const char *key, double def);
/* (uuu) geometry; false when missing or all zero. */
bool value_geometry(const Value *dict, const char *key, uint32_t ret[3]);
/* v as JSON (shared/json.h), under `key` inside an object. */
void json_value(Json *j, const char *key, const Value *v);


/* ---- bus (vdiskctl-bus.c) */

typedef struct Ctx {
        sd_bus *bus;
        char *daemon;           /* vdiskd's unique name, once known */
        Value backends;         /* Manager.Backends, once read */
        bool have_backends;
} Ctx;

int ctx_connect(Ctx *ctx);
void ctx_done(Ctx *ctx);
/* vdiskd's unique name now, without starting it. */
int bus_name_owner(Ctx *ctx, char **ret);
/* vdiskd's unique name (activating it if the bus can). */
int ctx_daemon_name(Ctx *ctx, const char **ret);

/* A method call on vdiskd with the interactive-authorization flag set as the
 * user wants (stdin a tty, no --no-ask-password). */
int bus_new_call(Ctx *ctx, const char *path, const char *iface, const char *member, sd_bus_message **ret);
/* Opens the trailing a{sv}; bus_options_close() adds auth.no_user_interaction
 * when --no-ask-password was given, then closes it. */
int bus_options_open(sd_bus_message *m);
int bus_options_close(sd_bus_message *m);
int bus_append_opt_bool(sd_bus_message *m, const char *key, bool v);
int bus_append_opt_string(sd_bus_message *m, const char *key, const char *v);
int bus_append_opt_u64(sd_bus_message *m, const char *key, uint64_t v);
/* bus_new_call() with the arguments `types` (sd_bus_message_append()) and
 * empty options. */
int bus_new_simple_call(Ctx *ctx, const char *path, const char *iface, const char *member, sd_bus_message **ret,
                        const char *types, ...);
/* Logs "[WHAT: ]Could not build the request: ..."; returns EXIT_FAILURE. */
int log_build_failed(const char *what, int r);

enum {
        CALL_UNINTERRUPTIBLE = 1u << 0,   /* keep waiting for the reply after Ctrl-C */
};
/* Sends m and waits for the reply, dispatching signals meanwhile. Returns
 * -EINTR when interrupted (unless CALL_UNINTERRUPTIBLE), or a negative errno
 * with `error` set on a D-Bus error. */
int bus_call(Ctx *ctx, sd_bus_message *m, unsigned flags, sd_bus_error *error, sd_bus_message **ret);
/* Dispatches one message, or waits up to timeout_usec (or a signal) for
 * one. >= 0, or a negative errno when the connection is lost. */
int bus_step(Ctx *ctx, uint64_t timeout_usec);
/* Properties.GetAll of one interface as a dictionary. */
int bus_get_all(Ctx *ctx, const char *path, const char *iface, sd_bus_error *error, Value *ret);
/* Properties.Get of one property (those GetAll leaves out too). */
int bus_get_property(Ctx *ctx, const char *path, const char *iface, const char *name, sd_bus_error *error,
                     Value *ret);
/* ObjectManager.GetManagedObjects: path -> interface -> properties. */
int bus_get_objects(Ctx *ctx, sd_bus_error *error, Value *ret);
/* Manager.Backends (cached). NULL on failure (logged). */
const Value *bus_backends(Ctx *ctx);
/* The backend info of a format known by its vdiskd or qemu name (any
 * case), or NULL. ret_name gets the backend name. */
const Value *backend_find(Ctx *ctx, const char *name, const char **ret_name);

/* Logs "vdiskctl: WHAT: message" for a failed call and returns the exit code
 * it maps to. */
int log_bus_error(const char *what, const sd_bus_error *error, int r);
int exit_code_from_error(const sd_bus_error *error, int r);
bool error_is(const sd_bus_error *error, const char *short_name);   /* org.vdisk.VDisk1.Error.<short> */

static inline void sd_bus_message_unrefp_(sd_bus_message **m) {
        sd_bus_message_unref(*m);
}
#define _cleanup_msg_ _cleanup_(sd_bus_message_unrefp_)
static inline void sd_bus_error_freep_(sd_bus_error *e) {
        sd_bus_error_free(e);
}
#define _cleanup_bus_error_ _cleanup_(sd_bus_error_freep_)
static inline void value_clearp(Value *v) {
        value_clear(v);
}
#define _cleanup_value_ _cleanup_(value_clearp)

/* ---- chains (vdiskctl-chain.c) */

typedef struct ChainElem {
        char *path;            /* as opened */
        char *name;            /* base name of path as valid UTF-8: the display name */
        int fd;
        bool writable;
        bool follow;           /* path may be a symlink (given by the user or recorded by name) */
        char *format;          /* vdiskd's backend name */
        char *qemu_format;
        Value info;            /* ProbeFormat's info */
        struct stat st;
        /* Companion files (VMDK extents): the names the image records
         * (ProbeFormat's `files`), opened relative to its directory with the
         * same access as the image; passed in OpenDisk's `files` by name. */
        char **files;
        int *file_fds;
        struct stat *file_st;
        size_t n_files;
} ChainElem;

typedef struct Chain {
        ChainElem elems[CHAIN_MAX];   /* base first */
        unsigned n;
        char *disk;                   /* the Disk path once opened */
        bool guessed_raw;             /* the top's format was guessed */
} Chain;

/* A descriptor passed by name (option `files`, FileSet.Add); the fd is borrowed. */
typedef struct NamedFd {
        char *key;
        int fd;
} NamedFd;
void named_fds_free(NamedFd *l, size_t n);
/* Takes key (NULL: -ENOMEM). */
int named_fds_push(NamedFd **l, size_t *n, char *key, int fd);
/* Descriptors one call may carry (vdiskd's MaxFdsPerCall, at most the bus's 16). */
unsigned call_fds_max(Ctx *ctx);
/* CreateFileSet, then Add in calls of at most per_call descriptors. 0 with
 * *ret set, -EOPNOTSUPP when vdiskd has no FileSets, or an exit code (logged,
 * naming `what`). */
int file_set_new_filled(Ctx *ctx, const NamedFd *l, size_t n, unsigned per_call, const char *what, char **ret);
/* Appends the option `files` (a{sh}) to an open options array. */
int bus_append_opt_files(sd_bus_message *m, const NamedFd *l, size_t n);

enum {
        CHAIN_TOP_WRITABLE = 1u << 0,   /* the top is opened O_RDWR */
        CHAIN_ALL_WRITABLE = 1u << 1,   /* every element is opened O_RDWR */
        CHAIN_TOP_ONLY     = 1u << 2,   /* do not look for parents */
        /* A writable top whose format was guessed raw is refused (what is
         * written could give it another format's signature) unless the
         * command writes no data into it (resize): then only a warning. */
        CHAIN_GUESSED_RAW_OK = 1u << 3,
};

/* Opens `filename` (format `format`, or probed) and the parents it names,
 * with the user's rights. Logs and returns an exit code (> 0) on failure, 0
 * on success. */
int chain_resolve(Ctx *ctx, const char *filename, const char *format, unsigned flags, Chain *ret);
/* Reopens element i read-write (the same inode, checked). Logs; exit code. */
int chain_make_writable(Chain *c, unsigned i);
/* Whether st is one of the chain's files. */
bool chain_contains(const Chain *c, const struct stat *st);
/* Manager.OpenDisk; a chain with more files than one call may carry
 * (MaxFdsPerCall) passes its parents through a FileSet, so that it still
 * opens in one step.
 * Logs; returns an exit code. */
int chain_open_disk(Ctx *ctx, Chain *c, bool read_only);
/* chain_resolve() and chain_open_disk(); on failure nothing stays open. */
int chain_open(Ctx *ctx, const char *file, const char *format, unsigned flags, bool read_only, Chain *ret);
/* Disk.Close of the disk opened (errors ignored) and closes the fds. */
void chain_done(Ctx *ctx, Chain *c);
/* The image object paths of the opened disk, base first (Disk.Images), as a
 * NULL-terminated list of c->n; -ENOENT when no disk is open, -EBADMSG when
 * vdiskd lists another number of images. */
int chain_image_paths(Ctx *ctx, Chain *c, char ***ret);

/* ---- operations (vdiskctl-op.c) */

typedef struct OpState {
        char *path;
        char *state, *error_name, *error_message;
        double progress;
        uint64_t bytes_done, bytes_total, rate, expected_end;
        Value result;           /* the Result dictionary */
        bool ended;             /* Completed seen, or a terminal State */
        bool cancel_sent;
} OpState;

typedef struct OpWatch {
        Ctx *ctx;
        sd_bus_slot *props_slot, *completed_slot, *wait_slot, *owner_slot;
        OpState st;
        bool progress;          /* show the progress bar */
        bool bar_shown;
        size_t bar_len;
        uint64_t follow_start;  /* µs, CLOCK_REALTIME */
        bool daemon_gone;
} OpWatch;

void op_watch_done(OpWatch *w);
/* The exit code of op_run()'s result r: r itself when >= 0; an operation
 * that did not succeed is reported ("vdiskctl: WHAT: message"). */
int op_finish(OpWatch *w, const char *what, int r);
/* Whether to show a progress bar: forced by -p, else when stderr is a tty
 * (never with -q). */
bool progress_wanted(bool forced);
/* Sends m (a method that returns an Operation path) and follows the
 * operation. Returns 0 on success, a positive exit code when it could not be
 * started or followed (logged), or -EIO (failed), -ECANCELED (cancelled),
 * -EINTR (stopped waiting) without logging: see op_finish(). The caller
 * calls op_watch_done(w) in every case. */
int op_run(Ctx *ctx, sd_bus_message *m, bool progress, const char *what, OpWatch *w);

/* ---- commands */

int cmd_list(Ctx *ctx, Request *req);
int cmd_status(Ctx *ctx, Request *req);
int cmd_monitor(Ctx *ctx, Request *req);
int cmd_info(Ctx *ctx, Request *req);
int cmd_check(Ctx *ctx, Request *req);
int cmd_create(Ctx *ctx, Request *req);
int cmd_convert(Ctx *ctx, Request *req);
int cmd_merge(Ctx *ctx, Request *req);
int cmd_commit(Ctx *ctx, Request *req);
int cmd_compact(Ctx *ctx, Request *req);
int cmd_rebase(Ctx *ctx, Request *req);    /* vdiskctl-rebase.c */
int cmd_resize(Ctx *ctx, Request *req);
int cmd_compare(Ctx *ctx, Request *req);   /* vdiskctl-image.c */
int cmd_snapshot(Ctx *ctx, Request *req);  /* vdiskctl-image.c */
int cmd_cancel(Ctx *ctx, Request *req);

void print_help(void);

/* Handles -h, -q, --parent-dir and getopt's '?' for a command. Returns 0
 * when c is none of them, 1 when handled, 2 when the command must end with
 * *ret_exit. */
int common_option(int c, const char *arg, int *ret_exit);
