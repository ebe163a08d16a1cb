/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The one command-line front end of the verbs vdisk-img and vdiskctl share
 * (info, check, repair, commit, compact, resize, create, convert): a table of
 * verbs and of options, and one parser that turns a verb's arguments into a
 * Request. vdisk-img runs the Request through libvdisk, vdiskctl sends it over
 * the bus. A new qemu-img option lands here once: a row in the option table,
 * its id in the option lists of the verbs that take it, a field in the Request.
 *
 * Each tool still decides which options it takes for a verb (vdisk-img takes
 * qemu-img's; vdiskctl the ones vdiskd can honour), and keeps its own words
 * where the two have always differed (vdisk-img speaks qemu-img's; vdiskctl
 * names the verb and exits 2 on a bad command line).
 *
 * The parser uses what each tool defines with the same name and meaning:
 * common_option() (-h, --parent-dir, --image-opts, --object and getopt's '?')
 * and front_dialect below.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "optlist.h"

/* The tools, as bits (which tool takes an option for a verb). */
typedef enum FrontTool {
        FRONT_IMG = 1u << 0,   /* vdisk-img */
        FRONT_CTL = 1u << 1,   /* vdiskctl */
} FrontTool;

/* Defined by each tool: which one it is, how its messages start, and how it
 * ends on a bad command line (vdisk-img 1 like qemu-img, vdiskctl 2). */
typedef struct FrontDialect {
        FrontTool tool;
        const char *program;       /* what messages start with ("qemu-img" under that name) */
        const char *hint;          /* the line after a bad command line */
        int exit_usage;
        bool drop_repeated_name;   /* "'a.vdi': a.vdi: bad" -> "'a.vdi': bad" (libvdisk names the file too) */
} FrontDialect;
extern FrontDialect front_dialect;

/* The keys getopt returns for options without a short form (shared by the
 * tools' own verbs too). */
enum {
        ARG_PARENT_DIR = 0x100,
        ARG_OUTPUT,
        ARG_IMAGE_OPTS,
        ARG_OBJECT,
        ARG_BACKING_CHAIN,
        ARG_SHRINK,
        ARG_START_OFFSET,
        ARG_MAX_LENGTH,
        ARG_PREALLOCATION,
        ARG_TARGET_IS_ZERO,
        ARG_UUID,
        ARG_PARENT_UUID,
        ARG_ZERO_PARENT_UUID,
        ARG_MODIFICATION_UUID,
        ARG_PARENT_MODIFICATION_UUID,
        ARG_CLEAR,
        ARG_DRY_RUN,
        ARG_FORCE,
        ARG_TARGET_IMAGE_OPTS,
        ARG_SALVAGE,
        ARG_BITMAPS,
        ARG_SKIP_BROKEN_BITMAPS,
        ARG_SIZE,
        ARG_FROM,
        ARG_TO,
        ARG_IMAGE,
        ARG_SYSTEM,
        ARG_SESSION,
        ARG_ADDRESS,
        ARG_NO_ASK_PASSWORD,
        ARG_VERSION,
        ARG_BM_ADD,
        ARG_BM_REMOVE,
        ARG_BM_CLEAR,
        ARG_BM_ENABLE,
        ARG_BM_DISABLE,
        ARG_BM_MERGE,
        ARG_BM_DISABLED,
};

typedef enum OutputFormat {
        OUTPUT_HUMAN,
        OUTPUT_JSON,
} OutputFormat;

/* Extra directories searched for parents named by UUID only (--parent-dir),
 * NULL-terminated. */
extern char **arg_parent_dirs;

/* What every command of both tools takes: -h (the tool's print_help()),
 * --parent-dir, and getopt's '?' for a bad option. Returns 0 when c is none
 * of them, 1 when handled, 2 when the command must end with *ret_exit. Each
 * tool's common_option() handles its own first, then calls this. */
int front_common_option(int c, const char *arg, int *ret_exit);

/* "human" or "json"; -EINVAL (nothing logged) otherwise. */
int front_parse_output(const char *s, OutputFormat *ret);
/* Whether writes under cache mode `mode` (NULL: the default) bypass the page
 * cache: all but writeback, writethrough and unsafe. */
bool cache_mode_direct(const char *mode);
/* Whether `mode` asks for direct writes whatever the output format (none,
 * off, directsync), where the default lets a format that appends its blocks
 * take the page cache. */
bool cache_mode_direct_only(const char *mode);

typedef enum FrontVerbId {
        VERB_INFO,
        VERB_CHECK,
        VERB_REPAIR,
        VERB_COMMIT,
        VERB_COMPACT,
        VERB_RESIZE,
        VERB_CREATE,
        VERB_CONVERT,
        VERB_COMPARE,
        VERB_MAP,
        VERB_SNAPSHOT,
        VERB_DD,
        VERB_MEASURE,
        VERB_AMEND,
        VERB_BITMAP,
        VERB_REBASE,
        VERB_SETUUID,
        VERB_COMMENT,
        /* vdiskctl's own */
        VERB_MERGE,
        VERB_LIST,
        VERB_STATUS,
        VERB_MONITOR,
        VERB_CANCEL,
        _VERB_MAX,
} FrontVerbId;

typedef enum CheckMode {
        CHECK_ONLY,
        CHECK_REPAIR_LEAKS,   /* check -r leaks */
        CHECK_REPAIR_ALL,     /* check -r all, repair */
        CHECK_DRY_RUN,        /* repair --dry-run */
} CheckMode;

#define ACTIONS_MAX 64

/* A shared verb's command line, parsed. Strings point into argv. */
typedef struct Request {
        FrontVerbId verb;
        const char *format;           /* -f (create: default "raw") */
        const char *out_format;       /* -O (convert: default "raw") */
        const char *backing;          /* create -b, convert -B, commit -b (the base) */
        const char *backing_format;   /* -F */
        const char *cache;            /* -t */
        const char *src_cache;        /* -T */
        const char *snapshot;         /* convert -l */
        const char *prealloc;         /* resize --preallocation (checked) */
        const char *size_arg;         /* create [size], resize [+|-]size, measure --size */
        const char *sparse_arg;       /* convert -S as given; its value in sparse */
        uint64_t sparse;
        OptList opts;                 /* -o */
        const char *files[2];         /* the file names: the image, or convert's source and output */
        char **args;                  /* every positional argument (files[] and size_arg among them) */
        unsigned n_args;
        unsigned image;               /* vdiskctl compact --image (UINT32_MAX: the top) */
        CheckMode check_mode;
        OutputFormat output;
        bool quiet, progress;         /* -q, -p (-q turns -p off) */
        bool unsafe;                  /* create -u */
        bool shrink;                  /* resize --shrink */
        bool backing_chain;           /* info --backing-chain */
        bool drop;                    /* commit -d (or -b) */
        bool compress;                /* convert -c */
        bool no_create;               /* convert -n */
        bool target_is_zero, bitmaps, skip_broken_bitmaps;   /* convert */
        /* compare */
        const char *format2;          /* -F: the second image's format */
        bool strict;                  /* -s */
        /* map */
        uint64_t start_offset;        /* --start-offset */
        uint64_t max_length;          /* --max-length (UINT64_MAX: to the end) */
        /* snapshot: -l, -a, -c or -d (0: list), and its argument */
        char action;
        const char *action_arg;
        bool have_opts;               /* -o was given (amend needs it) */
        /* Options whose order matters, as given: bitmap's actions
         * (ARG_BM_ADD..ARG_BM_MERGE, with --merge's source), setuuid's
         * (ARG_UUID..ARG_PARENT_MODIFICATION_UUID, with the value). */
        struct {
                int key;
                const char *arg;
        } actions[ACTIONS_MAX];
        unsigned n_actions;
        /* bitmap: -g, --add among the actions, --disabled; -b/-F are backing/backing_format */
        uint64_t granularity;
        bool bitmap_add, bitmap_disabled;
        bool clear;                   /* comment --clear */
        /* vdiskctl merge: --from and --to (or the positional N M), checked */
        const char *from_arg, *to_arg;
        unsigned merge_from, merge_to;
} Request;

/* The verb named `name` (vdiskctl's "copy" is convert) or -ENOENT. */
int front_verb_find(const char *name, FrontVerbId *ret);

/* Parses a shared verb's options and file names (argv[0] is the program
 * name for getopt's messages) into *req, which the caller has zeroed or
 * preset (vdiskctl presets quiet and output from its global options).
 * Returns -1 to go on, or the exit code to end with (help printed, or the
 * error logged). Create's file names are checked after the format's
 * "-o help" could be answered: call front_check_files() then. */
int front_parse(FrontVerbId verb, int argc, char **argv, Request *req);
/* Checks the count of file names (create: and folds -o backing_file= and
 * backing_fmt= into backing and backing_format): -1 to go on, or the exit
 * code (logged). */
int front_check_files(Request *req);
/* create's size: [size] or -o size= (not both), needed unless there is a
 * backing file. -1 with *ret_size and *ret_have_size set, or the exit code. */
int front_create_size(const Request *req, uint64_t *ret_size, bool *ret_have_size);
/* A size argument that parse_size() refused with r: vdisk-img says it in
 * qemu-img's words, vdiskctl names `what` and the argument `s`. */
void log_bad_size(const char *what, const char *s, int r);
void request_done(Request *req);
