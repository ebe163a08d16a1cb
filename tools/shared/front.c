/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The shared verbs' command line: tables and the one parser (see front.h). */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front.h"
#include "log.h"
#include "macro.h"
#include "text.h"

/* What each tool defines (img.h, vdiskctl.h). */
int common_option(int c, const char *arg, int *ret_exit);
void print_help(void);

static bool is_img(void) {
        return front_dialect.tool == FRONT_IMG;
}

char **arg_parent_dirs = NULL;
static size_t n_parent_dirs = 0;

static int parent_dirs_add(const char *dir) {
        char **l;

        l = realloc(arg_parent_dirs, (n_parent_dirs + 2) * sizeof(char *));
        if (!l)
                return -ENOMEM;
        arg_parent_dirs = l;
        l[n_parent_dirs] = strdup(dir);
        if (!l[n_parent_dirs])
                return -ENOMEM;
        l[++n_parent_dirs] = NULL;
        return 0;
}

int front_common_option(int c, const char *arg, int *ret_exit) {
        switch (c) {
        case 'h':
                print_help();
                *ret_exit = 0;
                return 2;
        case ARG_PARENT_DIR:
                if (parent_dirs_add(arg) < 0) {
                        log_error("Out of memory");
                        *ret_exit = 1;
                        return 2;
                }
                return 1;
        case '?':
                *ret_exit = usage_hint();
                return 2;
        default:
                return 0;
        }
}

/* ---------------------------------------------------------------- options */

/* One row per option the shared verbs take; a verb lists its options by
 * these ids, per tool. */
typedef enum OptId {
        O_h, O_f, O_O, O_o, O_b, O_B, O_F, O_t, O_T, O_S, O_p, O_q, O_n, O_c, O_l, O_r, O_m, O_W, O_C,
        O_u, O_d, O_U, O_s,
        O_FORMAT, O_FILENAME, O_QUIET, O_FORCE_SHARE, O_OUTPUT, O_BACKING_CHAIN, O_PARENT_DIR,
        O_IMAGE_OPTS, O_OBJECT, O_SHRINK, O_PREALLOCATION, O_DRY_RUN, O_IMAGE, O_TARGET_IS_ZERO,
        O_TARGET_IMAGE_OPTS, O_SALVAGE, O_BITMAPS, O_SKIP_BROKEN_BITMAPS,
        O_START_OFFSET, O_MAX_LENGTH, O_SNAP_l, O_SNAP_a, O_SNAP_c, O_SNAP_d, O_SIZE, O_FORCE,
        O_g, O_BM_ADD, O_BM_REMOVE, O_BM_CLEAR, O_BM_ENABLE, O_BM_DISABLE, O_BM_MERGE, O_BM_DISABLED,
        O_UUID, O_PARENT_UUID, O_ZERO_PARENT_UUID, O_MODIFICATION_UUID, O_PARENT_MODIFICATION_UUID, O_CLEAR,
        O_FROM, O_TO,
        _O_MAX,
} OptId;

/* A verb's options: a list of ids, ended by _O_MAX. */
#define OPTS(...) ((const OptId[]) { __VA_ARGS__, _O_MAX })

typedef struct OptSpec {
        char short_name;          /* 0: long only */
        const char *long_name;    /* NULL: short only */
        bool has_arg;
        int key;                  /* what getopt returns: the short letter, or ARG_* */
        /* Options that only set a Request field: the offset of that bool
         * (set to true) or string (set to the argument); 0: handle_option()
         * does the rest. */
        size_t flag, value;
} OptSpec;

#define FLAG(field) .flag = offsetof(Request, field)
#define VALUE(field) .value = offsetof(Request, field)

static const OptSpec opt_specs[_O_MAX] = {
        [O_h] = { 'h', "help", false, 'h' },
        [O_f] = { 'f', NULL, true, 'f', VALUE(format) },
        [O_O] = { 'O', NULL, true, 'O', VALUE(out_format) },
        [O_o] = { 'o', NULL, true, 'o' },
        [O_b] = { 'b', NULL, true, 'b' },
        [O_B] = { 'B', NULL, true, 'B', VALUE(backing) },   /* vdiskctl: with -n only (CopyTo's source-top-only) */
        [O_F] = { 'F', NULL, true, 'F' },
        [O_t] = { 't', NULL, true, 't' },
        [O_T] = { 'T', NULL, true, 'T' },
        [O_S] = { 'S', NULL, true, 'S' },
        [O_p] = { 'p', NULL, false, 'p', FLAG(progress) },
        [O_q] = { 'q', NULL, false, 'q', FLAG(quiet) },
        [O_n] = { 'n', NULL, false, 'n', FLAG(no_create) },
        [O_c] = { 'c', NULL, false, 'c', FLAG(compress) },
        [O_l] = { 'l', NULL, true, 'l', VALUE(snapshot) },
        [O_r] = { 'r', NULL, true, 'r' },
        [O_m] = { 'm', NULL, true, 'm' },
        [O_W] = { 'W', NULL, false, 'W' },
        [O_C] = { 'C', NULL, false, 'C' },
        [O_u] = { 'u', NULL, false, 'u' },
        [O_d] = { 'd', NULL, false, 'd', FLAG(drop) },
        [O_U] = { 'U', NULL, false, 'U' },
        [O_s] = { 's', NULL, false, 's', FLAG(strict) },
        [O_FORMAT] = { 0, "format", true, 'f', VALUE(format) },
        [O_FILENAME] = { 0, "filename", true, 'F' },   /* compact: the image, not -F */
        [O_QUIET] = { 0, "quiet", false, 'q', FLAG(quiet) },
        [O_FORCE_SHARE] = { 0, "force-share", false, 'U' },
        [O_OUTPUT] = { 0, "output", true, ARG_OUTPUT },
        [O_BACKING_CHAIN] = { 0, "backing-chain", false, ARG_BACKING_CHAIN, FLAG(backing_chain) },
        [O_PARENT_DIR] = { 0, "parent-dir", true, ARG_PARENT_DIR },
        [O_IMAGE_OPTS] = { 0, "image-opts", false, ARG_IMAGE_OPTS },
        [O_OBJECT] = { 0, "object", true, ARG_OBJECT },
        [O_SHRINK] = { 0, "shrink", false, ARG_SHRINK, FLAG(shrink) },
        [O_PREALLOCATION] = { 0, "preallocation", true, ARG_PREALLOCATION },
        [O_DRY_RUN] = { 0, "dry-run", false, ARG_DRY_RUN },
        [O_IMAGE] = { 0, "image", true, ARG_IMAGE },
        [O_TARGET_IS_ZERO] = { 0, "target-is-zero", false, ARG_TARGET_IS_ZERO, FLAG(target_is_zero) },
        [O_TARGET_IMAGE_OPTS] = { 0, "target-image-opts", false, ARG_TARGET_IMAGE_OPTS },
        [O_SALVAGE] = { 0, "salvage", false, ARG_SALVAGE },
        [O_BITMAPS] = { 0, "bitmaps", false, ARG_BITMAPS, FLAG(bitmaps) },
        [O_SKIP_BROKEN_BITMAPS] = { 0, "skip-broken-bitmaps", false, ARG_SKIP_BROKEN_BITMAPS,
                                    FLAG(skip_broken_bitmaps) },
        [O_START_OFFSET] = { 0, "start-offset", true, ARG_START_OFFSET },
        [O_MAX_LENGTH] = { 0, "max-length", true, ARG_MAX_LENGTH },
        /* snapshot's actions (-l takes no argument there, -c and -d one) */
        [O_SNAP_l] = { 'l', NULL, false, 'l' },
        [O_SNAP_a] = { 'a', NULL, true, 'a' },
        [O_SNAP_c] = { 'c', NULL, true, 'c' },
        [O_SNAP_d] = { 'd', NULL, true, 'd' },
        [O_SIZE] = { 0, "size", true, ARG_SIZE, VALUE(size_arg) },
        [O_FORCE] = { 0, "force", false, ARG_FORCE },
        [O_g] = { 'g', NULL, true, 'g' },
        [O_BM_ADD] = { 0, "add", false, ARG_BM_ADD },
        [O_BM_REMOVE] = { 0, "remove", false, ARG_BM_REMOVE },
        [O_BM_CLEAR] = { 0, "clear", false, ARG_BM_CLEAR },
        [O_BM_ENABLE] = { 0, "enable", false, ARG_BM_ENABLE },
        [O_BM_DISABLE] = { 0, "disable", false, ARG_BM_DISABLE },
        [O_BM_MERGE] = { 0, "merge", true, ARG_BM_MERGE },
        [O_BM_DISABLED] = { 0, "disabled", false, ARG_BM_DISABLED, FLAG(bitmap_disabled) },
        [O_UUID] = { 0, "uuid", true, ARG_UUID },
        [O_PARENT_UUID] = { 0, "parentuuid", true, ARG_PARENT_UUID },
        [O_ZERO_PARENT_UUID] = { 0, "zeroparentuuid", false, ARG_ZERO_PARENT_UUID },
        [O_MODIFICATION_UUID] = { 0, "modificationuuid", true, ARG_MODIFICATION_UUID },
        [O_PARENT_MODIFICATION_UUID] = { 0, "parentmodificationuuid", true, ARG_PARENT_MODIFICATION_UUID },
        [O_CLEAR] = { 0, "clear", false, ARG_CLEAR, FLAG(clear) },
        [O_FROM] = { 0, "from", true, ARG_FROM, VALUE(from_arg) },
        [O_TO] = { 0, "to", true, ARG_TO, VALUE(to_arg) },
};

/* What every verb of a tool takes. */
#define IMG_COMMON OPTS(O_h, O_FORCE_SHARE, O_PARENT_DIR, O_IMAGE_OPTS, O_OBJECT)
#define CTL_COMMON OPTS(O_h, O_q, O_QUIET, O_PARENT_DIR)

/* ---------------------------------------------------------------- verbs */

typedef struct FrontVerb {
        const char *name;
        const OptId *img_opts, *ctl_opts;   /* beyond IMG_COMMON / CTL_COMMON; NULL: none */
        /* The file names it wants, in each tool's words: "Expecting %s"
         * (vdisk-img, qemu-img's) and "<verb> needs %s" (vdiskctl); both
         * NULL: its cmd_X checks its arguments. */
        const char *img_what, *ctl_what;
} FrontVerb;

static const FrontVerb verbs[_VERB_MAX] = {
        [VERB_INFO] = {
                "info",
                OPTS(O_f, O_U, O_OUTPUT, O_BACKING_CHAIN),
                OPTS(O_f, O_U, O_FORCE_SHARE, O_OUTPUT, O_BACKING_CHAIN),
                "one image file name", "one image file name",
        },
        [VERB_CHECK] = {
                "check",
                OPTS(O_f, O_q, O_r, O_T, O_U, O_OUTPUT),
                OPTS(O_f, O_r, O_T, O_U, O_FORMAT, O_FORCE_SHARE, O_OUTPUT),
                "one image file name", "one image file name",
        },
        [VERB_REPAIR] = {
                "repair",
                OPTS(O_f, O_q, O_U, O_FORMAT, O_DRY_RUN),
                OPTS(O_f, O_U, O_FORMAT, O_FORCE_SHARE, O_OUTPUT, O_DRY_RUN),
                "one image file name", "one image file name",
        },
        [VERB_COMMIT] = {
                "commit",
                OPTS(O_f, O_t, O_b, O_d, O_p, O_q, O_r),
                OPTS(O_f, O_p, O_t),
                "one image file name", "one image file name",
        },
        [VERB_COMPACT] = {
                "compact",
                OPTS(O_f, O_p, O_q, O_FORMAT, O_FILENAME),
                OPTS(O_f, O_p, O_FORMAT, O_FILENAME, O_IMAGE),
                "one image file name", "one image file name",
        },
        [VERB_RESIZE] = {
                "resize",
                OPTS(O_f, O_q, O_U, O_SHRINK, O_PREALLOCATION),
                OPTS(O_f, O_U, O_FORCE_SHARE, O_SHRINK, O_PREALLOCATION),
                "image file name and size", "an image file name and a size",
        },
        [VERB_CREATE] = {
                "create",
                OPTS(O_f, O_F, O_b, O_o, O_q, O_u),
                OPTS(O_f, O_F, O_b, O_o, O_u),
                "image file name", "an image file name",
        },
        [VERB_CONVERT] = {
                "convert",
                OPTS(O_f, O_O, O_o, O_B, O_F, O_S, O_p, O_q, O_n, O_c, O_t, O_T, O_m, O_W, O_U, O_l, O_r, O_C,
                     O_TARGET_IS_ZERO, O_TARGET_IMAGE_OPTS, O_SALVAGE, O_BITMAPS, O_SKIP_BROKEN_BITMAPS),
                OPTS(O_f, O_O, O_o, O_S, O_p, O_t, O_T, O_U, O_n, O_B, O_c, O_FORCE_SHARE, O_TARGET_IS_ZERO),
                "a source and a destination file name", "a source and a destination file name",
        },
        [VERB_COMPARE] = {
                "compare",
                OPTS(O_f, O_F, O_T, O_p, O_q, O_s, O_U),
                OPTS(O_f, O_F, O_T, O_p, O_s, O_U, O_FORCE_SHARE),
                "two image file names", "two image file names",
        },
        [VERB_MAP] = {
                "map",
                OPTS(O_f, O_U, O_OUTPUT, O_START_OFFSET, O_MAX_LENGTH),
                NULL,
                "one image file name", "one image file name",
        },
        [VERB_SNAPSHOT] = {
                "snapshot",
                OPTS(O_f, O_q, O_U, O_SNAP_l, O_SNAP_a, O_SNAP_c, O_SNAP_d),
                OPTS(O_f, O_U, O_FORCE_SHARE, O_SNAP_l, O_SNAP_a, O_SNAP_c, O_SNAP_d),
                "one image file name", "one image file name",
        },
        /* dd, measure and amend check their own arguments (dd's are operands) */
        [VERB_DD] = {
                "dd", OPTS(O_f, O_O, O_U), NULL, NULL, NULL,
        },
        [VERB_MEASURE] = {
                "measure", OPTS(O_f, O_O, O_o, O_l, O_U, O_OUTPUT, O_SIZE), NULL, NULL, NULL,
        },
        [VERB_AMEND] = {
                /* -t: vdisk-img always flushes at the end; --force is for encryption key slots */
                "amend", OPTS(O_f, O_o, O_p, O_q, O_t, O_U, O_FORCE), NULL, NULL, NULL,
        },
        [VERB_BITMAP] = {
                "bitmap",
                OPTS(O_f, O_b, O_F, O_g, O_q, O_U, O_BM_ADD, O_BM_REMOVE, O_BM_CLEAR, O_BM_ENABLE, O_BM_DISABLE,
                     O_BM_MERGE, O_BM_DISABLED),
                NULL, NULL, NULL,
        },
        [VERB_REBASE] = {
                "rebase", OPTS(O_f, O_F, O_b, O_u, O_p, O_q, O_t, O_T, O_U),
                OPTS(O_f, O_F, O_b, O_u, O_p, O_t, O_T, O_U),
                "one image file name", "one image file name",
        },
        [VERB_SETUUID] = {
                "setuuid",
                OPTS(O_f, O_q, O_FILENAME, O_FORMAT, O_UUID, O_PARENT_UUID, O_ZERO_PARENT_UUID, O_MODIFICATION_UUID,
                     O_PARENT_MODIFICATION_UUID),
                NULL, "one image file name", NULL,
        },
        [VERB_COMMENT] = {
                "comment", OPTS(O_f, O_FILENAME, O_FORMAT, O_CLEAR), NULL, NULL, NULL,
        },
        /* vdiskctl's own: merge FILE [N M] checks its image indexes in front_check_files() */
        [VERB_MERGE] = { "merge", NULL, OPTS(O_f, O_p, O_FROM, O_TO), NULL, "an image file name" },
        /* vdiskctl's service commands check their own arguments */
        [VERB_LIST] = { "list", NULL, OPTS(O_OUTPUT), NULL, NULL },
        [VERB_STATUS] = { "status", NULL, OPTS(O_OUTPUT), NULL, NULL },
        [VERB_MONITOR] = { "monitor", NULL, OPTS(O_OUTPUT), NULL, NULL },
        [VERB_CANCEL] = { "cancel", NULL, NULL, NULL, NULL },
};

int front_verb_find(const char *name, FrontVerbId *ret) {
        if (streq(name, "copy") && !is_img()) {
                *ret = VERB_CONVERT;
                return 0;
        }
        for (size_t i = 0; i < _VERB_MAX; i++)
                if (streq(name, verbs[i].name)) {
                        *ret = (FrontVerbId) i;
                        return 0;
                }
        return -ENOENT;
}

/* ---------------------------------------------------------------- values */

int front_parse_output(const char *s, OutputFormat *ret) {
        if (streq(s, "human"))
                *ret = OUTPUT_HUMAN;
        else if (streq(s, "json"))
                *ret = OUTPUT_JSON;
        else
                return -EINVAL;
        return 0;
}

/* Whether `mode` is a qemu cache mode name (-t / -T). */
static bool cache_mode_valid(const char *mode) {
        static const char *const modes[] = {
                "none", "off", "writeback", "writethrough", "directsync", "unsafe",
        };

        for (size_t i = 0; i < ELEMENTSOF(modes); i++)
                if (streq(mode, modes[i]))
                        return true;
        return false;
}

bool cache_mode_direct(const char *mode) {
        return !streq_ptr(mode, "writeback") && !streq_ptr(mode, "writethrough") && !streq_ptr(mode, "unsafe");
}

bool cache_mode_direct_only(const char *mode) {
        return streq_ptr(mode, "none") || streq_ptr(mode, "off") || streq_ptr(mode, "directsync");
}

/* A bad option value: vdisk-img logs it and fails (qemu-img prints no
 * hint); vdiskctl treats it as a bad command line. */
_printf_(1, 2) static int bad_value(const char *fmt, ...) {
        va_list ap;
        char *s = NULL;
        int ex;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        if (is_img()) {
                log_error("%s", s ?: "Out of memory");
                ex = front_dialect.exit_usage;
        } else
                ex = usage_error("%s", s ?: "Out of memory");
        free(s);
        return ex;
}

/* What vdiskctl cannot pass on to vdiskd, and what neither tool does. */
static int refuse(int c, const char *as_given) {
        if (c == 'u')
                log_error("-u (unsafe) is not supported by vdiskctl: vdiskd opens the whole backing chain");
        else if (c == 'C')
                log_error("Copy offloading (-C) is not supported");
        else
                log_error("Option '%s' is not supported", as_given);
        return front_dialect.exit_usage;
}

#define SPARSE_SIZE_MAX (UINT64_C(16) << 20)

static int parse_sparse(Request *req, const char *arg) {
        int r;

        req->sparse_arg = arg;
        r = parse_size(arg, &req->sparse);
        if (r < 0 || req->sparse % 512 != 0 || req->sparse > SPARSE_SIZE_MAX)
                return is_img() ? bad_value("Invalid sparse size '%s': use a multiple of 512 up to 16 MiB, "
                                            "or 0 to allocate the whole output", arg)
                                : bad_value("Invalid sparse size '%s': use a multiple of 512 up to 16 MiB",
                                            arg);
        /* vdiskd takes 0 as its default (4 KiB), not as "allocate all". */
        if (req->sparse == 0 && !is_img())
                return usage_error("-S 0 (allocating the whole output) is not available through vdiskd; "
                                   "use vdisk-img convert -S 0");
        return -1;
}

/* One option of a shared verb (spec: its row, NULL for getopt's '?'): -1 to
 * go on, or the exit code. */
static int handle_option(Request *req, const OptSpec *spec, int c, const char *arg, const char *as_given) {
        bool img = is_img();
        int ex = -1;

        if (req->verb == VERB_SNAPSHOT && (c == 'l' || c == 'a' || c == 'c' || c == 'd')) {
                if (req->action) {
                        log_error("Cannot mix '-l', '-a', '-c', '-d'");
                        return usage_hint();
                }
                req->action = (char) c;
                req->action_arg = arg;
                return -1;
        }
        if (spec && spec->flag) {
                *(bool *) ((char *) req + spec->flag) = true;
                return -1;
        }
        if (spec && spec->value) {
                *(const char **) ((char *) req + spec->value) = arg;
                return -1;
        }
        switch (c) {
        case 'F':
                if (req->verb == VERB_COMPACT || req->verb == VERB_SETUUID || req->verb == VERB_COMMENT)
                        req->files[0] = arg;   /* --filename */
                else if (req->verb == VERB_COMPARE)
                        req->format2 = arg;
                else
                        req->backing_format = arg;
                break;
        case 'b':
                req->backing = arg;
                /* commit: the images between the base and the top become
                 * invalid, so the top keeps its data (qemu-img: -b implies -d). */
                if (req->verb == VERB_COMMIT)
                        req->drop = true;
                break;
        case 'o':
                if (optlist_parse(&req->opts, arg) < 0)
                        return bad_value("Invalid option list: %s", arg);
                req->have_opts = true;
                break;
        case 't':
        case 'T':
                /* vdiskd takes no cache modes: vdiskctl checks the word and
                 * decides only whether to pass a direct-fd; amend takes any
                 * (it always flushes). */
                if (req->verb != VERB_AMEND && !cache_mode_valid(arg)) {
                        log_error("Invalid %scache option: %s",
                                  req->verb == VERB_CHECK || req->verb == VERB_COMPARE ? "source " : "", arg);
                        return front_dialect.exit_usage;
                }
                if (c == 't')
                        req->cache = arg;
                else
                        req->src_cache = arg;
                break;
        case 'S':
                return parse_sparse(req, arg);
        case 'r':
                if (req->verb != VERB_CHECK)
                        break;   /* a rate limit: vdisk-img and vdiskd copy at full speed */
                if (streq(arg, "leaks"))
                        req->check_mode = CHECK_REPAIR_LEAKS;
                else if (streq(arg, "all"))
                        req->check_mode = CHECK_REPAIR_ALL;
                else
                        return usage_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s", arg);
                break;
        case 'm':
        case 'W':
        case 'U':
                break;   /* parallelism; locks: neither tool takes image locks to share */
        case 'C':
        case 'u':
                /* vdiskctl rebase -u: vdiskd relinks the chains vdiskctl opened */
                if (c == 'C' || (!img && req->verb != VERB_REBASE))
                        return refuse(c, as_given);
                req->unsafe = true;
                break;
        case ARG_OUTPUT:
                if (front_parse_output(arg, &req->output) < 0)
                        return img ? bad_value("--output must be used with human or json as argument.")
                                   : bad_value("--output takes 'human' or 'json', not '%s'", arg);
                break;
        case 'g':
                if (parse_size(arg, &req->granularity) < 0 || req->granularity == 0) {
                        log_error("Invalid granularity specified");
                        return front_dialect.exit_usage;
                }
                break;
        case ARG_BM_ADD:
        case ARG_BM_REMOVE:
        case ARG_BM_CLEAR:
        case ARG_BM_ENABLE:
        case ARG_BM_DISABLE:
        case ARG_BM_MERGE:
        case ARG_UUID:
        case ARG_PARENT_UUID:
        case ARG_ZERO_PARENT_UUID:
        case ARG_MODIFICATION_UUID:
        case ARG_PARENT_MODIFICATION_UUID:
                if (req->n_actions == ACTIONS_MAX) {
                        log_error("Too many actions (at most %d)", ACTIONS_MAX);
                        return front_dialect.exit_usage;
                }
                req->actions[req->n_actions].key = c;
                req->actions[req->n_actions++].arg = arg;
                req->bitmap_add = req->bitmap_add || c == ARG_BM_ADD;
                break;
        case ARG_FORCE:
                break;

        case ARG_START_OFFSET:
        case ARG_MAX_LENGTH:
                if (parse_size(arg, c == ARG_START_OFFSET ? &req->start_offset : &req->max_length) < 0) {
                        log_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for",
                                  c == ARG_START_OFFSET ? "start offset" : "max length");
                        log_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
                        return front_dialect.exit_usage;
                }
                break;
        case ARG_PREALLOCATION:
                /* qemu-img checks the word before it opens anything */
                if (!streq(arg, "off") && !streq(arg, "metadata") && !streq(arg, "falloc") &&
                    !streq(arg, "full")) {
                        log_error("Invalid preallocation mode '%s'", arg);
                        return 1;
                }
                req->prealloc = arg;
                break;
        case ARG_DRY_RUN:
                req->check_mode = CHECK_DRY_RUN;
                break;
        case ARG_IMAGE:
                if (parse_uint(arg, &req->image) < 0)
                        return usage_error("--image takes an image index (0 is the base): %s", arg);
                break;
        case ARG_TARGET_IMAGE_OPTS:
        case ARG_SALVAGE:
                return refuse(c, as_given);
        default:
                /* -h, --parent-dir, --image-opts, --object, '?': the tool's. */
                if (common_option(c, arg, &ex) == 2)
                        return ex;
        }
        return -1;
}

/* ---------------------------------------------------------------- the parser */

static int files_error(const Request *req) {
        const FrontVerb *v = &verbs[req->verb];

        if (is_img())
                return usage_error("Expecting %s", v->img_what);
        return usage_error("%s needs %s", v->name, v->ctl_what);
}

int front_check_files(Request *req) {
        const char *what;

        if (!verbs[req->verb].img_what && !verbs[req->verb].ctl_what)
                return -1;   /* it checks its own in its cmd_X */
        switch (req->verb) {
        case VERB_CREATE:
                if (req->n_args < 1)
                        return files_error(req);
                if (req->n_args > 2)
                        return usage_error("Unexpected argument: %s", req->args[2]);
                if (optlist_fold_backing(&req->opts, &req->backing, &req->backing_format, &what) < 0) {
                        log_error("%s: The %s must be given only once", req->files[0], what);
                        return front_dialect.exit_usage;
                }
                return -1;
        case VERB_CONVERT:
                /* (vdisk-img says so after the format checks, as it always did) */
                if (req->target_is_zero && !req->no_create && !is_img())
                        return usage_error("--target-is-zero requires -n");
                if (req->backing && !req->no_create && !is_img())
                        return usage_error("-B requires -n: vdiskctl creates no output with a backing file");
                if (req->n_args > 2 && is_img()) {
                        log_error("Concatenating several source images is not supported");
                        return front_dialect.exit_usage;
                }
                return req->n_args == 2 ? -1 : files_error(req);
        case VERB_MERGE:
                /* merge FILE [N [M]]: the indexes not given by --from and --to, in that order */
                if (req->n_args < 1)
                        return files_error(req);
                for (unsigned i = 1; i < req->n_args; i++) {
                        const char **slot = !req->from_arg ? &req->from_arg : !req->to_arg ? &req->to_arg : NULL;

                        if (!slot)
                                return usage_error("Unexpected argument: %s", req->args[i]);
                        *slot = req->args[i];
                }
                if (!req->from_arg || !req->to_arg)
                        return usage_error("merge needs the images to merge: --from N --to M (0 is the base)");
                if (parse_uint(req->from_arg, &req->merge_from) < 0 || parse_uint(req->to_arg, &req->merge_to) < 0)
                        return usage_error("Image indexes are numbers (0 is the base): '%s', '%s'", req->from_arg,
                                           req->to_arg);
                if (req->merge_from == req->merge_to)
                        return usage_error("--from and --to name the same image");
                return -1;
        case VERB_COMPACT:
        case VERB_SETUUID:
                /* --filename names the image instead */
                return (req->files[0] ? req->n_args == 0 : req->n_args == 1) ? -1 : files_error(req);
        case VERB_RESIZE:
                return req->n_args == 1 && req->size_arg ? -1 : files_error(req);
        case VERB_COMPARE:
                return req->n_args == 2 ? -1 : files_error(req);
        default:
                return req->n_args == 1 ? -1 : files_error(req);
        }
}

void log_bad_size(const char *what, const char *s, int r) {
        if (is_img() && r == -ERANGE)
                log_error("Invalid image size specified. Must be between 0 and %" PRIi64 ".", INT64_MAX);
        else if (is_img()) {
                log_error("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
                log_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        } else if (r == -ERANGE)
                log_error("Invalid %s '%s': must be between 0 and %" PRIi64, what, s, INT64_MAX);
        else
                log_error("Invalid %s '%s': use a number of bytes, optionally with a suffix k, M, G, T, P or E",
                          what, s);
}

int front_create_size(const Request *req, uint64_t *ret_size, bool *ret_have_size) {
        const char *size_arg = req->size_arg, *o = optlist_get(&req->opts, "size");
        int r;

        *ret_size = 0;
        *ret_have_size = false;
        if (o) {
                if (size_arg) {
                        log_error("%s: The image size must be specified only once", req->files[0]);
                        return front_dialect.exit_usage;
                }
                size_arg = o;
        }
        if (size_arg) {
                r = parse_size(size_arg, ret_size);
                if (r < 0) {
                        log_bad_size("image size", size_arg, r);
                        return front_dialect.exit_usage;
                }
                *ret_have_size = true;
        } else if (!req->backing) {
                log_error("%s: Image creation needs a size parameter", req->files[0]);
                return front_dialect.exit_usage;
        }
        return -1;
}

/* Marks the options of `l` (NULL: none) in takes[]. */
static void opts_mark(const OptId *l, bool takes[static _O_MAX]) {
        for (; l && *l != _O_MAX; l++)
                takes[*l] = true;
}

static int parse_options(FrontVerbId verb, int argc, char **argv, Request *req) {
        const FrontVerb *v = &verbs[verb];
        bool takes[_O_MAX] = {};
        struct option longs[_O_MAX + 1] = {};
        char shorts[2 * _O_MAX + 1];
        size_t n_longs = 0, n_shorts = 0;
        int c, ex;

        opts_mark(is_img() ? IMG_COMMON : CTL_COMMON, takes);
        opts_mark(is_img() ? v->img_opts : v->ctl_opts, takes);
        for (size_t i = 0; i < _O_MAX; i++) {
                const OptSpec *s = &opt_specs[i];

                if (!takes[i])
                        continue;
                if (s->short_name) {
                        shorts[n_shorts++] = s->short_name;
                        if (s->has_arg)
                                shorts[n_shorts++] = ':';
                }
                if (s->long_name)
                        longs[n_longs++] = (struct option) {
                                s->long_name, s->has_arg ? required_argument : no_argument, NULL, s->key,
                        };
        }
        shorts[n_shorts] = 0;

        optind = 0;   /* getopt starts afresh at argv[1] */
        while ((c = getopt_long(argc, argv, shorts, longs, NULL)) >= 0) {
                const OptSpec *spec = NULL;

                /* the row of the key among the verb's (rows sharing a key mean the same) */
                for (size_t i = 0; !spec && i < _O_MAX; i++)
                        if (takes[i] && opt_specs[i].key == c)
                                spec = &opt_specs[i];
                ex = handle_option(req, spec, c, optarg, argv[optind - 1]);
                if (ex >= 0)
                        return ex;
        }
        return -1;
}

int front_parse(FrontVerbId verb, int argc, char **argv, Request *req) {
        int ex;

        assert(verb < _VERB_MAX);
        req->verb = verb;
        req->image = UINT32_MAX;
        req->max_length = UINT64_MAX;
        if (verb == VERB_CREATE)
                req->format = "raw";
        if (verb == VERB_REPAIR)
                req->check_mode = CHECK_REPAIR_ALL;   /* --dry-run: CHECK_DRY_RUN */
        if (verb == VERB_DD || verb == VERB_MEASURE)
                req->out_format = "raw";
        if (verb == VERB_CONVERT) {
                req->out_format = "raw";
                req->sparse = 4096;
        }
        /* A negative size ("-1G") would look like an option: take it out first. */
        if (verb == VERB_RESIZE && argc >= 3 && argv[argc - 1][0] == '-' && argv[argc - 1][1] >= '0' &&
            argv[argc - 1][1] <= '9')
                req->size_arg = argv[--argc];

        ex = parse_options(verb, argc, argv, req);
        if (ex < 0) {
                if (req->quiet)
                        req->progress = false;
                req->args = argv + optind;
                req->n_args = (unsigned) (argc - optind);
                if (verb == VERB_RESIZE && !req->size_arg && req->n_args == 2) {
                        req->size_arg = req->args[1];
                        req->n_args = 1;
                }
                /* create's are checked once "-o help" had its chance */
                if (verb != VERB_CREATE)
                        ex = front_check_files(req);
                if (!req->files[0] && req->n_args > 0)
                        req->files[0] = req->args[0];
                if ((verb == VERB_CONVERT || verb == VERB_COMPARE) && req->n_args > 1)
                        req->files[1] = req->args[1];
                if (verb == VERB_CREATE && req->n_args > 1)
                        req->size_arg = req->args[1];
        }
        /* qemu-img check exits 1 on a bad command line: 2 means corruption. */
        if ((verb == VERB_CHECK || verb == VERB_REPAIR) && ex == front_dialect.exit_usage)
                ex = 1;
        return ex;
}

void request_done(Request *req) {
        optlist_done(&req->opts);
}
