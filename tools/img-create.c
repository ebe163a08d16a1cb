/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img create and convert, and the "-o key=value" creation options.
 *
 * Which keys a format takes, their types, defaults and qemu-img's print
 * order are the library's business (the typed create_options of its backend
 * info); this file prints them the way qemu-img does ("Formatting '...'",
 * "-o help") and normalizes the values (sizes in bytes, booleans on/off).
 */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img.h"

/* ---------------------------------------------------------------- what qemu-img prints */

static int cmp_option(const void *a, const void *b) {
        return strcmp((*(const vdisk_option_desc *const *) a)->name, (*(const vdisk_option_desc *const *) b)->name);
}

void print_option_help(const char *name, vdisk_option_type type, const char *help) {
        static const char *const type_names[] = {
                [VDISK_OPTION_STRING] = "str",
                [VDISK_OPTION_SIZE] = "size",
                [VDISK_OPTION_BOOL] = "bool (on/off)",
                [VDISK_OPTION_NUMBER] = "num",
        };
        _cleanup_free_ char *left = NULL;

        if (asprintf(&left, "%s=<%s>", name, type_names[type]) >= 0)
                printf("  %-22s - %s\n", left, help);
}

/* Pair i of l as an option of `type` takes it: a size in bytes (the value
 * replaced), a boolean on/off, a number. Logs ("<prefix>Parameter ...");
 * -EINVAL, or -ENOMEM. */
static int option_normalize(OptList *l, size_t i, vdisk_option_type type, const char *prefix) {
        const char *key = optlist_key(l, i), *value = optlist_value(l, i);
        uint64_t v = 0;
        char *s;

        if (refused(type == VDISK_OPTION_SIZE && parse_size(value, &v) < 0, "%sParameter '%s' expects a size",
                    prefix, key) ||
            refused(type == VDISK_OPTION_BOOL && !streq(value, "on") && !streq(value, "off"),
                    "%sParameter '%s' expects 'on' or 'off'", prefix, key) ||
            refused(type == VDISK_OPTION_NUMBER && (!value[0] || strspn(value, "0123456789") != strlen(value)),
                    "%sParameter '%s' expects a number", prefix, key))
                return -EINVAL;
        if (type != VDISK_OPTION_SIZE)
                return 0;
        /* sizes in bytes, as the library takes them */
        if (asprintf(&s, "%" PRIu64, v) < 0)
                return -ENOMEM;
        optlist_replace_value(l, i, s);
        return 0;
}

/* The format `name` of a new image in *ret (logged when unknown); "-o help"
 * is answered with its options, sorted. -1 to go on, or the exit code. */
static int create_format(const char *name, const OptList *opts, const vdisk_backend_info **ret) {
        const vdisk_backend_info *info = format_lookup(name);
        const vdisk_option_desc *keys[64];
        size_t n = 0;

        *ret = info;
        if (!info)
                return EXIT_ERROR;
        if (!opts->help)
                return -1;
        for (const vdisk_option_desc *o = info->create_options; o && o->name && n < ELEMENTSOF(keys); o++)
                keys[n++] = o;
        qsort(keys, n, sizeof(keys[0]), cmp_option);

        printf("Supported %s options:\n", info->qemu_name);
        for (size_t i = 0; i < n; i++)
                print_option_help(keys[i]->name, keys[i]->type, keys[i]->help);
        return EXIT_OK;
}

int optlist_normalize(OptList *l, const vdisk_backend_info *info, const char *filename) {
        _cleanup_free_ char *prefix = NULL;

        if (asprintf(&prefix, "%s%s", filename ?: "", filename ? ": " : "") < 0)
                return -ENOMEM;
        for (size_t i = 0; i < l->n; i++) {
                const vdisk_option_desc *d = vdisk_backend_option(info, optlist_key(l, i));
                int r;

                if (refused(!d && filename, "%s: Invalid parameter '%s'", filename, optlist_key(l, i)))
                        return -EINVAL;
                r = d ? option_normalize(l, i, d->type, prefix) : 0;
                if (r < 0)
                        return r;
        }
        return 0;
}

/* "Formatting 'f', fmt=vdi size=N ...": the keys in qemu's order, given ones
 * with their values, the others with qemu's defaults. */
static void print_formatting(const char *filename, const vdisk_backend_info *info, uint64_t size,
                             const char *backing, const char *backing_fmt, const OptList *l) {
        printf("Formatting '%s', fmt=%s", filename, info->qemu_name);
        for (const vdisk_option_desc *o = info->create_options; o && o->name; o++) {
                const char *v;

                if (streq(o->name, "size"))
                        printf(" size=%" PRIu64, size);
                else if (streq(o->name, "backing_file")) {
                        if (backing)
                                printf(" backing_file=%s", backing);
                } else if (streq(o->name, "backing_fmt")) {
                        if (backing_fmt)
                                printf(" backing_fmt=%s", backing_fmt);
                } else if ((v = optlist_get(l, o->name) ?: o->def))
                        printf(" %s=%s", o->name, v);
        }
        /* qemu's file layer options, after the format's own, when given */
        for (const char *const *k = (const char *const[]) { "nocow", "preallocation", NULL }; *k; k++) {
                const char *v = optlist_get(l, *k);
                bool own = false;

                for (const vdisk_option_desc *o = info->create_options; o && o->name; o++)
                        own = own || streq(o->name, *k);
                if (v && !own)
                        printf(" %s=%s", *k, v);
        }
        putchar('\n');
        fflush(stdout);
}

/* A new image's options: the "-o" pairs the library takes (all but size and
 * the backing file, arguments of their own), the parent as the user named it
 * (VMDK records it as parentFileNameHint, VDI links by UUID and ignores it)
 * and a resolver that creates companion files (VMDK extents) next to the
 * image. Logs; free with create_opts_done(). */
static int create_opts_init(const OptList *l, const char *backing, const char *backing_fmt, vdisk_create_opts *ret) {
        const char **v;
        size_t k = 0;

        *ret = (vdisk_create_opts) {
                .size = sizeof(*ret),
                .parent_name = backing,
                .parent_format = backing ? backing_fmt : NULL,
        };
        v = calloc(2 * l->n + 1, sizeof(char *));
        if (!v || vdisk_resolver_new_path(NULL, &ret->resolver) < 0) {
                free(v);
                log_error("Out of memory");
                return -ENOMEM;
        }
        for (size_t i = 0; i < l->n; i++) {
                const char *key = optlist_key(l, i);

                if (streq(key, "size") || streq(key, "backing_file") || streq(key, "backing_fmt"))
                        continue;
                v[k++] = key;
                v[k++] = optlist_value(l, i);
        }
        ret->options = v;
        return 0;
}

static void create_opts_done(vdisk_create_opts *o) {
        free((void *) o->options);
        vdisk_resolver_unref(o->resolver);
}

/* qemu-img 7.2 wants the backing format spelled out (a probe could be
 * fooled by a raw parent's content); so does vdisk-img. Says what a probe
 * finds, to help. */
static void log_missing_backing_format(const char *child, const char *backing, bool probe) {
        _cleanup_(vdisk_io_unrefp) vdisk_io *io = NULL;
        _cleanup_free_ char *path = NULL;
        const vdisk_backend_info *info;
        int guessed = 0;

        log_error("%s: Backing file specified without backing format", child);
        if (!probe || path_relative_to(child, backing, &path) < 0)
                return;
        if (vdisk_io_open_path(path, VDISK_PATH_READ, &io) >= 0 &&
            vdisk_probe(io, path, 1, &info, &guessed) >= 0)
                fprintf(stderr, "Detected format of %s.\n", info->qemu_name);
}

/* Opens the parent chain for a new differencing image. `backing` is
 * relative to the directory of `child`, as in qemu-img. A chain that holds
 * `child` itself is refused ("child: <self>"). */
static int open_backing(const char *child, const char *backing, const char *backing_fmt, bool unsafe,
                        const char *self, char **ret_path, Img *ret) {
        _cleanup_free_ char *path = NULL;
        int r;

        r = path_relative_to(child, backing, &path);
        if (r < 0) {
                log_error("Out of memory");
                return r;
        }
        /* -u: the parent's own parents need not be there; the new image
         * only records the parent's identity. */
        assert(backing_fmt);
        r = img_open(path, backing_fmt, IMG_PLAIN_NAME | (unsafe ? IMG_SKIP_CHECKS : IMG_CHAIN), ret);
        if (r < 0)
                return r;
        r = chain_refuse(ret->disk, child, self);
        if (r < 0) {
                img_close(ret);
                return r;
        }
        *ret_path = TAKE_PTR(path);
        return 0;
}

/* ---------------------------------------------------------------- create */

int cmd_create(Request *req) {
        const char *fmt = req->format, *backing, *backing_fmt, *filename;
        OptList *opts = &req->opts;
        _cleanup_(vdisk_io_unrefp) vdisk_io *io = NULL;
        _cleanup_free_ char *backing_path = NULL;
        _cleanup_(create_opts_done) vdisk_create_opts copts = {};
        const vdisk_backend_info *info;
        bool quiet = req->quiet, unsafe = req->unsafe, have_size = false;
        Img parent = {};
        vdisk_disk *d = NULL;
        uint64_t size = 0;
        int r, ex;

        /* qemu-img create names the file it creates: no option list. */
        if (arg_image_opts)
                return usage_error("unrecognized option '--image-opts'");

        ex = create_format(fmt, opts, &info);
        if (ex >= 0)
                return ex;
        ex = front_check_files(req);
        if (ex >= 0)
                return ex;
        filename = req->files[0];
        backing = req->backing;
        backing_fmt = req->backing_format;
        if (backing_fmt && !format_lookup(backing_fmt))
                return EXIT_ERROR;
        if (refused(backing && !(info->caps & VDISK_CAP_DIFF), "%s: Backing file not supported for file format '%s'",
                    filename, info->qemu_name))
                return EXIT_ERROR;
        if (backing && !backing_fmt) {
                log_missing_backing_format(filename, backing, !unsafe);
                return EXIT_ERROR;
        }
        if (optlist_normalize(opts, info, filename) < 0)
                return EXIT_ERROR;

        ex = front_create_size(req, &size, &have_size);
        if (ex >= 0)
                return ex;
        ex = EXIT_ERROR;

        if (backing) {
                r = open_backing(filename, backing, backing_fmt, unsafe,
                                 "The new image would overwrite its own backing file", &backing_path, &parent);
                if (r < 0)
                        return EXIT_ERROR;
                if (!have_size)
                        size = vdisk_disk_size(parent.disk);
                d = TAKE_PTR(parent.disk);
        } else if (vdisk_disk_new(&d) < 0) {
                log_error("Out of memory");
                return EXIT_ERROR;
        }

        if (create_opts_init(opts, backing, backing_fmt, &copts) < 0)
                goto finish;
        if (!quiet)
                print_formatting(filename, info, size, backing, backing ? backing_fmt : NULL, opts);

        /* Like qemu-img: the line shows the size asked for, the image gets it
         * rounded up to whole sectors. */
        size = ALIGN_UP(size, (uint64_t) VDISK_SECTOR_SIZE);

        vdisk_clear_error();
        r = vdisk_io_open_path(filename, VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC, &io);
        if (r < 0) {
                log_error("%s: Could not create the file: %s", filename, error_detail(r));
                goto finish;
        }

        vdisk_clear_error();
        if (backing) {
                if (have_size)
                        copts.diff_size = size;
                r = vdisk_disk_create_diff(d, io, info->name, &copts);
        } else
                r = vdisk_disk_create_base(d, io, info->name, size, &copts);
        if (r >= 0) {
                vdisk_clear_error();
                r = vdisk_disk_flush(d);
        }
        if (r < 0) {
                log_error("%s: %s", filename, error_detail(r));
                remove_created_file(filename);
                goto finish;
        }
        fsync_parent_dir(filename);
        ex = EXIT_OK;

finish:
        vdisk_clear_error();
        r = vdisk_disk_close(d);
        if (r < 0 && ex == EXIT_OK) {
                log_error("%s: %s", filename, error_detail(r));
                remove_created_file(filename);
                ex = EXIT_ERROR;
        }
        return ex;
}

/* ---------------------------------------------------------------- convert */

/* convert -n (an existing target) and convert -S 0 (a new target, every
 * byte written): vdisk_copy_into() copies, asking both sides' block status
 * (a hole over a hole costs two look-ups however large). With -B (`flags`
 * has VDISK_COPY_INTO_TOP_ONLY) what the source's parents define is left to
 * the target's backing file. */
static int convert_into(const char *in, Img *src, vdisk_disk *dst, const char *out, uint32_t flags,
                        ProgressBar *bar) {
        int r;

        vdisk_clear_error();
        r = vdisk_copy_into(src->disk, dst, flags, bar->p);
        if (r == -ECANCELED)
                log_error("Conversion cancelled");
        else if (r < 0)
                log_error("Could not convert '%s' to '%s': %s", in, out, error_detail(r));
        return r;
}

/* -c: the formats that store compressed units (qemu-img's message for the
 * others; VMDK decides by its subformat: streamOptimized compresses). With
 * -n the library decides by the existing image (VDISK_COPY_INTO_COMPRESS:
 * qemu's rule, compressed writes only into unallocated clusters). */
static int convert_compress_check(const vdisk_backend_info *out_info, bool no_create) {
        if (refused(!(out_info->caps & VDISK_CAP_COMPRESS) && (no_create || !streq(out_info->qemu_name, "vmdk")),
                    "Compression not supported for this file format"))
                return -EOPNOTSUPP;
        return 0;
}

/* Encoding (compression) threads: $VDISK_THREADS, else one per CPU (0). */
static unsigned convert_threads(void) {
        const char *e = getenv("VDISK_THREADS");
        unsigned long n;
        char *end;

        if (!e || !*e)
                return 0;
        errno = 0;
        n = strtoul(e, &end, 10);
        if (errno || *end || n == 0 || n > 64) {
                log_warning("Ignoring VDISK_THREADS=%s (use 1 to 64)", e);
                return 0;
        }
        return (unsigned) n;
}

int cmd_convert(Request *req) {
        const char *fmt = req->format, *out_fmt = req->out_format, *backing = req->backing,
                   *backing_fmt = req->backing_format, *snapshot = req->snapshot, *in = req->files[0],
                   *out = req->files[1];
        OptList *opts = &req->opts;
        _cleanup_(vdisk_io_unrefp) vdisk_io *out_io = NULL;
        _cleanup_(vdisk_disk_unrefp) vdisk_disk *dst = NULL;
        _cleanup_free_ char *backing_path = NULL;
        _cleanup_(create_opts_done) vdisk_create_opts create = {};
        const vdisk_backend_info *out_info;
        bool bitmaps = req->bitmaps, skip_broken_bitmaps = req->skip_broken_bitmaps;
        bool progress = req->progress, no_create = req->no_create,
             target_is_zero = req->target_is_zero, created = false, compress = req->compress;
        /* -t unsafe: like qemu-img, the output is not flushed to the disk.
         * -t writeback/writethrough: written through the page cache and
         * flushed once. Default: large writes go direct, or through the page
         * cache with early writeback where the output format appends its
         * blocks (the faster path there); none, directsync: always direct. */
        bool unsafe = streq_ptr(req->cache, "unsafe"), direct = cache_mode_direct(req->cache),
             direct_only = cache_mode_direct_only(req->cache);
        uint64_t sparse = req->sparse, new_size = 0;
        ProgressBar bar = {};
        Img src = {}, existing = {}, parent = {};
        int r, ex = EXIT_ERROR;

        ex = create_format(out_fmt, opts, &out_info);
        if (ex >= 0)
                return ex;
        ex = EXIT_ERROR;
        /* qemu-img 7.2: -B and -F win over -o backing_file= / backing_fmt=. */
        if (optlist_get(opts, "backing_file") && !backing)
                backing = optlist_get(opts, "backing_file");
        if (optlist_get(opts, "backing_fmt") && !backing_fmt)
                backing_fmt = optlist_get(opts, "backing_fmt");
        if (backing_fmt && !format_lookup(backing_fmt))
                return EXIT_ERROR;
        if (refused(no_create && opts->n > 0, "-o has no effect when skipping image creation") ||
            refused(backing && !no_create && !(out_info->caps & VDISK_CAP_DIFF),
                    "Backing file not supported for file format '%s'", out_info->qemu_name) ||
            refused(backing && !no_create && !backing_fmt, "Use of backing file requires explicit backing format") ||
            refused(target_is_zero && !no_create, "--target-is-zero requires -n") ||
            refused(skip_broken_bitmaps && !bitmaps, "--skip-broken-bitmaps requires --bitmaps") ||
            refused(bitmaps && no_create, "--bitmaps cannot be combined with -n") ||
            refused(bitmaps && !streq(out_info->qemu_name, "qcow2"), "Destination lacks bitmap support"))
                return EXIT_ERROR;
        if (optlist_normalize(opts, out_info, out) < 0)
                return EXIT_ERROR;
        if (compress && convert_compress_check(out_info, no_create) < 0)
                return EXIT_ERROR;
        if (optlist_get(opts, "size")) {
                if (parse_size(optlist_get(opts, "size"), &new_size) < 0)
                        return EXIT_ERROR;
                new_size = ALIGN_UP(new_size, (uint64_t) VDISK_SECTOR_SIZE);
        }

        r = img_open_snapshot(in, fmt, IMG_CHAIN, snapshot, &src);
        if (r < 0)
                return EXIT_ERROR;

        if (chain_refuse(src.disk, out, "The destination is one of the source images") < 0)
                goto finish;

        if (bitmaps) {
                vdisk_image *top = img_at_depth(&src, 0);

                if (refused(!top || !streq(vdisk_image_backend(top)->qemu_name, "qcow2"),
                            "Source lacks bitmap support") ||
                    convert_bitmaps_check(top, in, skip_broken_bitmaps) < 0)
                        goto finish;
        }

        if (progress_bar_init(&bar, progress) < 0)
                goto finish;

        if (no_create) {
                r = img_open(out, out_fmt, IMG_WRITE | IMG_CHAIN | IMG_PLAIN_NAME, &existing);
                if (r >= 0)
                        r = convert_into(in, &src, existing.disk, out,
                                         (target_is_zero ? VDISK_COPY_INTO_TARGET_ZERO : 0) |
                                         (backing ? VDISK_COPY_INTO_TOP_ONLY : 0) |
                                         (compress ? VDISK_COPY_INTO_COMPRESS : 0) |
                                         (sparse == 0 ? VDISK_COPY_INTO_ALLOCATE : 0), &bar);
                progress_bar_done(&bar, r >= 0);
                if (img_close(&existing) >= 0 && r >= 0)
                        ex = EXIT_OK;
                goto finish;
        }

        if (create_opts_init(opts, backing, backing_fmt, &create) < 0) {
                progress_bar_done(&bar, false);
                goto finish;
        }
        vdisk_copy_opts copts = {
                .size = sizeof(copts),
                .new_size = new_size,
                .create = create,
                .from_same = -1,
                .to_same = -1,
                /* libvdisk looks for zeros in runs of at most 4 MiB; a larger
                 * -S only asks for fewer holes, which changes no content. */
                .sparse_size = MIN(sparse, (uint64_t) (4u << 20)),
                .compress = compress,
                .threads = convert_threads(),
                /* -B: the new image holds only what differs from its
                 * backing file (qemu-img writes all the source's data). */
                .flags = backing ? VDISK_COPY_SKIP_SAME : 0,
        };

        if (backing) {
                unsigned n_src = vdisk_disk_count(src.disk);

                r = open_backing(out, backing, backing_fmt, false, "The destination is its own backing file",
                                 &backing_path, &parent);
                if (r < 0) {
                        progress_bar_done(&bar, false);
                        goto finish;
                }
                /* qemu's contract for -B: the backing file holds what the
                 * source's backing chain holds, so only the source's top
                 * image needs copying. */
                if (n_src >= 2) {
                        copts.from_same = (int) n_src - 2;
                        copts.to_same = (int) vdisk_disk_count(parent.disk) - 1;
                }
                dst = TAKE_PTR(parent.disk);
        } else if (vdisk_disk_new(&dst) < 0) {
                log_error("Out of memory");
                progress_bar_done(&bar, false);
                goto finish;
        }

        vdisk_clear_error();
        r = vdisk_io_open_path(out, VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC |
                               (unsafe ? VDISK_PATH_NOSYNC : 0) | (direct ? VDISK_PATH_DIRECT : 0) |
                                       (direct_only ? VDISK_PATH_DIRECT_ONLY : 0),
                               &out_io);
        if (r < 0) {
                progress_bar_done(&bar, false);
                log_error("%s: Could not create the file: %s", out, error_detail(r));
                goto finish;
        }
        created = true;

        vdisk_clear_error();
        if (sparse == 0 && (!compress || (!backing && (out_info->caps & VDISK_CAP_COMPRESS)))) {
                /* -S 0: create the image, then write every byte of it
                 * (-c: every cluster compressed, as qemu-img does; a VMDK
                 * decides by its subformat in vdisk_copy below). */
                uint64_t size = new_size > 0 ? new_size : vdisk_disk_size(src.disk);

                if (backing)
                        r = vdisk_disk_create_diff(dst, out_io, out_info->name, &copts.create);
                else
                        r = vdisk_disk_create_base(dst, out_io, out_info->name, size, &copts.create);
                if (r < 0)
                        log_error("%s: %s", out, error_detail(r));
                else
                        r = convert_into(in, &src, dst, out, VDISK_COPY_INTO_ALLOCATE |
                                         (backing ? VDISK_COPY_INTO_TOP_ONLY : 0) |
                                         (compress ? VDISK_COPY_INTO_COMPRESS : 0), &bar);
                progress_bar_done(&bar, r >= 0);
                if (r < 0)
                        goto finish;
                r = 0;
        } else {
                r = vdisk_copy(src.disk, dst, out_io, out_info->name, &copts, bar.p);
                progress_bar_done(&bar, r >= 0);
        }
        if (r < 0) {
                if (r == -ECANCELED)
                        log_error("Conversion of '%s' to '%s' cancelled", in, out);
                else if (strncmp(error_detail(r), "Unsupported preallocation mode", 30) == 0 ||
                         strncmp(error_detail(r), "Parameter 'preallocation'", 25) == 0 ||
                         strncmp(error_detail(r), "invalid parameter value: ", 25) == 0)
                        /* qemu-img's words, which KubeVirt CDI matches */
                        log_error("%s: error while converting %s: %s", out, out_info->qemu_name, error_detail(r));
                else
                        log_error("Could not convert '%s' to '%s': %s", in, out, error_detail(r));
                goto finish;
        }
        if (bitmaps) {
                vdisk_clear_error();
                r = convert_bitmaps_copy(img_at_depth(&src, 0), vdisk_disk_image(dst, vdisk_disk_count(dst) - 1),
                                         skip_broken_bitmaps);
                if (r < 0)
                        goto finish;
        }
        ex = EXIT_OK;

finish:
        /* vdisk_copy flushed the image; closing flushes it once more. Its
         * directory entry is made durable too, not with -t unsafe, which
         * promises nothing (a directory fsync commits the file system's
         * journal). */
        if (created)
                ex = new_image_finish(&dst, &out_io, out, !unsafe, ex);
        return img_close_exit(&src, ex);
}

/* ---------------------------------------------------------------- measure */

int cmd_measure(Request *req) {
        const char *fmt = req->format, *out_fmt = req->out_format, *snapshot = req->snapshot,
                   *filename = req->files[0], *size_arg = req->size_arg;
        OptList *opts = &req->opts;
        const vdisk_backend_info *out_info;
        OutputFormat output = req->output;
        vdisk_measure_info mi = {};
        uint64_t size = 0;
        Img src = {};
        Json w;
        int r, ex = EXIT_ERROR;

        if (req->n_args > 1)
                return usage_error("Expecting one image file name");
        if (refused(size_arg && filename, "--size N cannot be used together with a filename.") ||
            refused(!size_arg && !filename, "Either --size N or one filename must be specified.") ||
            refused(size_arg && snapshot, "--size N cannot be used together with -l."))
                return usage_hint();
        ex = create_format(out_fmt, opts, &out_info);
        if (ex >= 0)
                return ex;
        ex = EXIT_ERROR;
        if (optlist_normalize(opts, out_info, filename ?: "measure") < 0)
                return EXIT_ERROR;
        if (size_arg) {
                r = parse_size(size_arg, &size);
                if (r < 0) {
                        log_error("Invalid image size specified. Must be between 0 and 9223372036854775807.");
                        return EXIT_ERROR;
                }
        }
        if (filename) {
                r = img_open_snapshot(filename, fmt, IMG_CHAIN, snapshot, &src);
                if (r < 0)
                        return EXIT_ERROR;
        }
        /* every -o pair, backing_file too: a diff's clusters are all counted */
        vdisk_clear_error();
        r = vdisk_measure(out_info->name, (const char *const *) opts->kv, size, src.disk, &mi);
        if (r < 0) {
                log_error("%s", error_detail(r));
                goto finish;
        }
        if (output == OUTPUT_JSON) {
                json_begin(&w, stdout, true);
                json_object_open(&w, NULL);
                if (mi.has_bitmaps)
                        json_uint(&w, "bitmaps", mi.bitmaps);
                json_uint(&w, "required", mi.required);
                json_uint(&w, "fully-allocated", mi.fully_allocated);
                json_object_close(&w);
                json_end(&w);
        } else {
                printf("required size: %" PRIu64 "\n", mi.required);
                printf("fully allocated size: %" PRIu64 "\n", mi.fully_allocated);
                if (mi.has_bitmaps)
                        printf("bitmaps size: %" PRIu64 "\n", mi.bitmaps);
        }
        ex = EXIT_OK;
finish:
        if (filename)
                return img_close_exit(&src, ex);
        return ex;
}
