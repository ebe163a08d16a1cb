/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img: the offline image tool, command-line compatible with qemu-img
 * (plus vbox-img extras). Internal declarations shared by tools/img-*.c.
 *
 * The tool uses the public libvdisk API only. Output goes to stdout, errors
 * and warnings to stderr, always prefixed with "vdisk-img: ".
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "macro.h"
#include "vdisk/vdisk.h"
#include "shared/check.h"
#include "shared/front.h"
#include "shared/info.h"
#include "shared/json.h"
#include "shared/log.h"
#include "shared/optlist.h"
#include "shared/text.h"

#define PROGRAM_NAME "vdisk-img"

/* Exit codes shared by most commands (check and compare have their own). */
#define EXIT_OK 0
#define EXIT_ERROR 1

/* ---- logging (img-util.c) */

/* log_error(), log_warning(), usage_hint() and usage_error(): shared/log.h
 * (messages start with front_dialect.program: PROGRAM_NAME, or "qemu-img"
 * under that name; a bad command line ends with EXIT_ERROR). */
/* The best description of failure r: the library's detail when it has one,
 * else strerror(-r). */
const char *error_detail(int r);

/* ---- signals and progress (img-util.c) */

typedef struct ProgressBar {
        bool enabled;       /* -p given and not -q */
        bool started;
        double last;        /* last printed percentage */
        double min_step;    /* print when moved by this much (default 1%) */
        vdisk_progress *p;  /* handed to library operations (cancel works without -p too) */
} ProgressBar;

/* Creates the vdisk_progress and installs SIGINT/SIGTERM/SIGHUP handlers that
 * cancel it (a second signal terminates at once); prints the 0% line when
 * enabled. */
int progress_bar_init(ProgressBar *b, bool enabled);
/* Prints the final line ("100%" on success) and frees the vdisk_progress. */
void progress_bar_done(ProgressBar *b, bool success);

/* ---- formats and images (img-util.c) */

/* Looks a format up by qemu's or VirtualBox's name; logs
 * "Unknown file format 'x'" and returns NULL when unknown. */
const vdisk_backend_info *format_lookup(const char *name);

enum {
        IMG_WRITE       = 1u << 0,   /* the top image is opened read-write */
        IMG_CHAIN       = 1u << 1,   /* open every parent too */
        IMG_INFO        = 1u << 2,   /* metadata only */
        IMG_SKIP_CHECKS = 1u << 3,   /* do not check the parent linkage */
        IMG_NO_PROBE_WARNING = 1u << 4,
        IMG_QUIET       = 1u << 5,   /* no error messages or warnings */
        IMG_PLAIN_NAME  = 1u << 7,   /* a file name even under --image-opts (outputs, backing files) */
        IMG_WRITE_BELOW = 1u << 6,   /* with IMG_CHAIN: every image opens read-only (the top too,
                                      * unless IMG_WRITE), and the library reopens writable just
                                      * the ones an operation writes into (commit's base) */
        IMG_CACHED      = 1u << 8,   /* written through the page cache (-t writeback, unsafe) */
        IMG_NOSYNC      = 1u << 9,   /* no flushes (-t unsafe) */
        IMG_DIRECT_ONLY = 1u << 10,  /* every aligned write direct (-t none, directsync) */
};

/* The IMG_CACHED/NOSYNC/DIRECT_ONLY flags of a -t cache mode, for the images
 * a command writes (opened or reopened). */
uint32_t img_cache_flags(const char *mode);

typedef struct Img {
        vdisk_disk *disk;
        const vdisk_backend_info *backend;   /* the top image's */
        bool guessed_raw;                    /* probed, nothing matched */
        const char *filename;                /* borrowed from argv */
} Img;

/* Opens `filename` (format `fmt`, or probed when NULL) and, with IMG_CHAIN,
 * its parents. Logs "Could not open 'file': cause" on failure. When the
 * probe guessed raw for a writable open, prints qemu's warning and refuses
 * any write to the first sector. Disk warnings go to stderr. */
int img_open(const char *filename, const char *fmt, uint32_t flags, Img *ret);
/* The same, reading the internal snapshot `snapshot` of the top image
 * (qemu-img's -l: "snapshot.id=ID", "snapshot.name=NAME" or a bare id or
 * name; NULL: the current state). Needs a read-only open. */
int img_open_snapshot(const char *filename, const char *fmt, uint32_t flags, const char *snapshot, Img *ret);
/* Closes the image's disk, flushing it. A failed final flush is logged
 * (naming the file) and returned. */
int img_close(Img *img);
/* img_close(), then the exit code to use: a failed close turns success into
 * EXIT_ERROR (the data may not be on disk). */
int img_close_exit(Img *img, int ex);

/* The image at qemu's "depth" (0 = the top). */
vdisk_image *img_at_depth(Img *img, unsigned depth);

/* Removes a file this command created, if it is a regular file (never a
 * device node the user named as output). */
void remove_created_file(const char *path);
/* The end of a command that created the image `path` on *io (its disk *d):
 * after success (ex EXIT_OK) closes it (a failed final flush is logged and
 * fails the command) and, with sync_dir, makes its directory entry durable;
 * after a failure drops it and removes the file. Returns the exit code. */
int new_image_finish(vdisk_disk **d, vdisk_io **io, const char *path, bool sync_dir, int ex);
/* fsync()s the directory holding `path` (best effort). */
void fsync_parent_dir(const char *path);
/* Whether two paths name the same file (1), not (0), or an error. */
int same_file(const char *a, const char *b);
/* Refuses (logs "path: why", -EEXIST) a `path` that is one of the files of
 * the chain in `d`; logs the cause when that cannot be told. */
int chain_refuse(vdisk_disk *d, const char *path, const char *why);

/* ---- commands */

int cmd_info(Request *req);
int cmd_create(Request *req);
/* A creation option's line of "-o help" ("  size=<size>  - help"). */
void print_option_help(const char *name, vdisk_option_type type, const char *help);
/* Normalizes each value of l by its type in the backend's options, as qemu
 * does (sizes in bytes, booleans on/off). With `filename`, a key the backend
 * does not take is refused and messages start with "filename: "; without, such
 * keys are left to the library. Logs; -EINVAL, or -ENOMEM. */
int optlist_normalize(OptList *l, const vdisk_backend_info *info, const char *filename);
int cmd_convert(Request *req);
int cmd_check(Request *req);
int cmd_commit(Request *req);
int cmd_compare(Request *req);
int cmd_map(Request *req);
int cmd_resize(Request *req);
int cmd_rebase(Request *req);
int cmd_compact(Request *req);
int cmd_setuuid(Request *req);
int cmd_comment(Request *req);
int cmd_snapshot(Request *req);
int cmd_measure(Request *req);
int cmd_amend(Request *req);
int cmd_bitmap(Request *req);   /* img-bitmap.c */
/* convert --bitmaps (img-bitmap.c): refuses (logged) a source with
 * inconsistent bitmaps unless skip_broken; then copies them. */
int convert_bitmaps_check(vdisk_image *src, const char *src_name, bool skip_broken);
int convert_bitmaps_copy(vdisk_image *src, vdisk_image *dst, bool skip_broken);
int cmd_dd(Request *req);

/* Prints the full help text (used by --help and "COMMAND --help"). */
void print_help(void);

/* Handles -U, --image-opts, --object, then front_common_option()'s (-h,
 * --parent-dir, getopt's '?') for every verb parsed in shared/front.c.
 * Returns 0 when c is not one of them, 1 when it was handled and parsing goes
 * on, 2 when the command must end with exit code *ret_exit (help printed,
 * bad option). */
int common_option(int c, const char *arg, int *ret_exit);

/* ---- --image-opts and --object (img-opts.c) */

/* --image-opts was given: img_open() takes image names as option lists. */
extern bool arg_image_opts;
/* Parses an --image-opts list ("driver=qcow2,file.filename=x.qcow2"): the
 * file, its format (NULL: probe) and the internal snapshot spec (NULL: none).
 * The strings live until exit. Logs qemu-img's message for a key vdisk-img
 * does not take (unless quiet) and returns a negative errno. */
int image_opts_parse(const char *spec, bool quiet, const char **ret_path, const char **ret_format,
                     const char **ret_snapshot);
/* Checks and records one --object definition: 0, 1 when "help" was printed,
 * or a negative errno (logged). */
int object_add(const char *arg);

/* ---- cleanup helpers for library objects (their unref takes NULL) */

static inline void vdisk_io_unrefp(vdisk_io **p) {
        vdisk_io_unref(*p);
}
static inline void vdisk_disk_unrefp(vdisk_disk **p) {
        vdisk_disk_unref(*p);
}
static inline void vdisk_resolver_unrefp(vdisk_resolver **p) {
        vdisk_resolver_unref(*p);
}
