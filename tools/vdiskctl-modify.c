/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl create, convert (copy), merge, commit, compact and resize: the
 * commands that start a long Operation in vdiskd and follow it.
 *
 * Outputs are created by vdiskctl itself, with the user's rights: O_CREAT |
 * O_EXCL for a new file, or an existing regular file truncated (qemu-img
 * replaces outputs too), after checking it is none of the source images.
 * vdiskd truncates a failed or cancelled output to 0; vdiskctl then removes
 * the file if it created it.
 */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "vdiskctl.h"

/* ---------------------------------------------------------------- -o options */

/* Options whose values are sizes: normalized to bytes like vdisk-img does. */
static bool key_is_size(const char *key) {
        static const char *const size_keys[] = {
                "size", "cluster_size", "block_size", "log_size", "extent_size_hint", "table_size",
        };

        for (size_t i = 0; i < ELEMENTSOF(size_keys); i++)
                if (streq(key, size_keys[i]))
                        return true;
        return false;
}

static void print_create_help(const char *format, const Value *info) {
        const Value *opts = value_get(info, "create-options");

        printf("Supported %s options:\n", value_str(info, "qemu-name", format));
        printf("  size=<size>            - Virtual disk size\n");
        if (opts && opts->type == VALUE_ARRAY)
                for (size_t i = 0; i < opts->c.n; i++)
                        if (opts->c.items[i].type == VALUE_STRING && !streq(opts->c.items[i].s, "size"))
                                printf("  %s\n", opts->c.items[i].s);
}

/* What vdiskctl makes of -o: `static` becomes the variant, `size` and the
 * backing keys are the caller's, the rest goes to the format. Checks keys
 * against the backend's create-options. Logs; exit code. */
typedef struct CreateOpts {
        const char *variant;     /* NULL: the format's default */
        OptList *format_options;
        size_t n_format_options;
} CreateOpts;

static bool backend_takes(const Value *info, const char *key) {
        const Value *opts = value_get(info, "create-options");

        if (!opts)
                return true;   /* nothing known: vdiskd judges */
        for (size_t i = 0; opts->type == VALUE_ARRAY && i < opts->c.n; i++)
                if (opts->c.items[i].type == VALUE_STRING && streq(opts->c.items[i].s, key))
                        return true;
        return false;
}

static bool key_is_ours(const char *key) {
        return streq(key, "size") || streq(key, "backing_file") || streq(key, "backing_fmt") ||
               streq(key, "static");
}

static int create_opts_check(OptList *l, const Value *info, const char *file, CreateOpts *ret) {
        const char *st = optlist_get(l, "static");

        *ret = (CreateOpts) { .format_options = l };
        if (st) {
                if (streq(st, "on"))
                        ret->variant = "fixed";
                else if (streq(st, "off"))
                        ret->variant = "dynamic";
                else {
                        log_error("%s: Parameter 'static' expects 'on' or 'off'", file);
                        return EXIT_USAGE;
                }
        }
        for (size_t i = 0; i < l->n; i++) {
                if (key_is_ours(optlist_key(l, i)))
                        continue;
                if (!backend_takes(info, optlist_key(l, i))) {
                        log_error("%s: Invalid parameter '%s'", file, optlist_key(l, i));
                        return EXIT_USAGE;
                }
                if (key_is_size(optlist_key(l, i))) {
                        uint64_t v;
                        char *s;

                        if (parse_size(optlist_value(l, i), &v) < 0) {
                                log_error("%s: Parameter '%s' expects a size", file, optlist_key(l, i));
                                return EXIT_USAGE;
                        }
                        if (asprintf(&s, "%" PRIu64, v) < 0)
                                return log_oom();
                        optlist_replace_value(l, i, s);
                }
                ret->n_format_options++;
        }
        return 0;
}

/* Appends `variant` and `format-options` to an open options array. */
static int append_create_opts(sd_bus_message *m, const CreateOpts *o) {
        int r = 0;

        if (o->variant)
                r = bus_append_opt_string(m, "variant", o->variant);
        if (r < 0 || o->n_format_options == 0)
                return r;
        r = sd_bus_message_open_container(m, 'e', "sv");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", "format-options");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'v', "a{ss}");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{ss}");
        for (size_t i = 0; r >= 0 && i < o->format_options->n; i++)
                if (!key_is_ours(optlist_key(o->format_options, i)))
                        r = sd_bus_message_append(m, "{ss}", optlist_key(o->format_options, i),
                                                  optlist_value(o->format_options, i));
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

/* The backend name of a format the user named; logs when unknown. */
static int lookup_format(Ctx *ctx, const char *name, const char **ret_backend, const Value **ret_info) {
        const Value *info = backend_find(ctx, name, ret_backend);

        if (!info) {
                if (!ctx->have_backends)
                        return EXIT_UNAVAILABLE;   /* logged by bus_backends() */
                log_error("Unknown file format '%s'", name);
                return EXIT_NOT_SUPPORTED;
        }
        if (ret_info)
                *ret_info = info;
        return 0;
}

/* ---------------------------------------------------------------- outputs */

typedef struct Output {
        const char *path;
        int fd;
        bool created;
        struct stat st;
} Output;

/* Creates `path`, or truncates it when it is an existing regular file that is
 * none of the images of `avoid`. Logs; exit code. */
static int output_open(const char *path, const Chain *avoid, Output *ret) {
        Output o = { .path = path, .fd = -1 };

        /* An existing file first: O_CREAT would wait for a frozen file
         * system even when the file exists. O_NONBLOCK: never hang on a
         * FIFO; refused below anyway. */
        o.fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (o.fd < 0 && errno == ENOENT) {
                o.fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0644);
                if (o.fd >= 0)
                        o.created = true;
                else if (errno == EEXIST)
                        o.fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        }
        if (o.fd < 0) {
                int err = errno;

                log_error("%s: Could not create the file: %s", path, strerror(err));
                return err == EACCES || err == EPERM || err == EROFS ? EXIT_PERMISSION
                       : err == ENOENT                                ? EXIT_NOT_FOUND
                                                                      : EXIT_FAILURE;
        }
        if (fstat(o.fd, &o.st) < 0 || !S_ISREG(o.st.st_mode) || fcntl(o.fd, F_SETFL, 0) < 0) {
                log_error("%s: Exists and is not a regular file; vdiskctl writes only regular files", path);
                close(o.fd);
                return EXIT_FAILURE;
        }
        if (avoid && chain_contains(avoid, &o.st)) {
                log_error("%s: The output is one of the source images", path);
                close(o.fd);
                return EXIT_FAILURE;
        }
        /* An empty file is left alone: truncating it changes nothing, but
         * would wait for a frozen file system. */
        if (!o.created && o.st.st_size != 0 && ftruncate(o.fd, 0) < 0) {
                log_error("%s: Could not truncate the file: %m", path);
                close(o.fd);
                return EXIT_FAILURE;
        }
        *ret = o;
        return 0;
}

/* On failure: removes the output if vdiskctl created it (and the name still
 * leads to that file). */
static void output_close(Output *o, bool success) {
        struct stat st;

        if (o->fd < 0)
                return;
        close(o->fd);
        o->fd = -1;
        if (success || !o->created)
                return;
        if (lstat(o->path, &st) >= 0 && st.st_dev == o->st.st_dev && st.st_ino == o->st.st_ino &&
            unlink(o->path) >= 0)
                log_notice("%s: Removed the incomplete output", o->path);
}

/* ---------------------------------------------------------------- outputs of several files */

/* The files a new image consists of besides its own (the extents of a split
 * VMDK), created by vdiskctl next to the output and passed by name: vdiskd
 * creates nothing itself. The names follow libvdisk's rule, documented in
 * docs/dbus-api.md ("Images of several files"): an image whose display name
 * is STEM.vmdk (the output's base name), subformat twoGbMaxExtentSparse or
 * twoGbMaxExtentFlat, of SIZE bytes, has ceil(SIZE / 2 GiB) extents
 * STEM-s001.vmdk, STEM-s002.vmdk, ... (Flat: STEM-f001.vmdk ...);
 * monolithicFlat has one, STEM-flat.vmdk. */
typedef struct Companions {
        char **names;           /* as the image will record them */
        char **paths;           /* next to the output */
        Output *out;
        size_t n;
        char *file_set;         /* when they do not fit in the call */
} Companions;

#define VMDK_EXTENT_BYTES (UINT64_C(2) << 30)

static int companion_names(const char *backend, OptList *opts, const char *display, uint64_t size, char ***ret) {
        _cleanup_(strv_freep) char **l = NULL;
        _cleanup_free_ char *stem = NULL;
        const char *sub = optlist_get(opts, "subformat");
        size_t n = 0, len;
        uint64_t count;
        bool mono;

        *ret = NULL;
        if (strcasecmp(backend, "QCOW2") == 0 && optlist_get(opts, "data_file")) {
                /* the external data file, by the name the image records */
                const char *df = optlist_get(opts, "data_file");

                if (!df[0] || strchr(df, '/') || streq(df, ".") || streq(df, ".."))
                        return -EINVAL;
                if (strv_push(&l, &n, df) < 0)
                        return -ENOMEM;
                *ret = TAKE_PTR(l);
                return 0;
        }
        if (strcasecmp(backend, "VMDK") != 0 || !sub ||
            (strncmp(sub, "twoGbMaxExtent", 14) != 0 && !streq(sub, "monolithicFlat")))
                return 0;
        mono = streq(sub, "monolithicFlat");
        stem = strdup(display);
        if (!stem)
                return -ENOMEM;
        len = strlen(stem);
        if (len > 5 && strcasecmp(stem + len - 5, ".vmdk") == 0)
                stem[len - 5] = 0;
        count = mono ? 1 : (ALIGN_UP(size, UINT64_C(512)) + VMDK_EXTENT_BYTES - 1) / VMDK_EXTENT_BYTES;
        if (count > 65536)
                return -E2BIG;
        for (uint64_t i = 1; i <= count; i++) {
                _cleanup_free_ char *name = NULL;

                if ((mono ? asprintf(&name, "%s-flat.vmdk", stem)
                          : asprintf(&name, "%s-%c%03" PRIu64 ".vmdk", stem, strstr(sub, "Flat") ? 'f' : 's', i)) < 0) {
                        name = NULL;
                        return -ENOMEM;
                }
                if (strv_push(&l, &n, name) < 0)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

static void companions_close(Companions *c, bool success) {
        for (size_t i = 0; i < c->n; i++)
                output_close(&c->out[i], success);
        strv_free(c->names);
        strv_free(c->paths);
        free(c->out);
        free(c->file_set);
        *c = (Companions) {};
}

/* Plans and creates (or truncates) the companion files of the output `file`.
 * Logs; exit code. */
static int companions_open(const char *backend, OptList *opts, const char *file, const char *display, uint64_t size,
                           const Chain *avoid, Companions *ret) {
        _cleanup_free_ char *dir = NULL;
        Companions c = {};
        int r;

        *ret = (Companions) {};
        r = companion_names(backend, opts, display, size, &c.names);
        if (r < 0) {
                log_error("%s: %s", file, r == -E2BIG ? "Too many extents" :
                          r == -EINVAL ? "The data file must be named inside the image's directory" :
                          "Out of memory");
                return EXIT_FAILURE;
        }
        if (!c.names)
                return 0;
        c.n = strv_length(c.names);
        c.paths = calloc(c.n + 1, sizeof(char *));
        c.out = calloc(c.n, sizeof(Output));
        if (!c.paths || !c.out || path_dirname(file, &dir) < 0) {
                free(c.out);
                c.out = NULL;
                c.n = 0;
                companions_close(&c, false);
                return log_oom();
        }
        for (size_t i = 0; i < c.n; i++)
                c.out[i].fd = -1;
        for (size_t i = 0; i < c.n; i++) {
                if (asprintf(&c.paths[i], "%s/%s", dir, c.names[i]) < 0) {
                        c.paths[i] = NULL;
                        companions_close(&c, false);
                        return log_oom();
                }
                r = output_open(c.paths[i], avoid, &c.out[i]);
                if (r != 0) {
                        companions_close(&c, false);
                        return r;
                }
        }
        *ret = c;
        return 0;
}

/* Appends the companions to an open options array: option `files`, or a
 * FileSet (option `file-set`) when they and the call's own `used`
 * descriptors exceed what one call carries. Logs; exit code. */
static int companions_append(Ctx *ctx, sd_bus_message *m, Companions *c, unsigned used, const char *what) {
        NamedFd *l = NULL;
        size_t n = 0;
        unsigned per_call;
        int r;

        if (c->n == 0)
                return 0;
        for (size_t i = 0; i < c->n; i++)
                if (named_fds_push(&l, &n, strdup(c->names[i]), c->out[i].fd) < 0) {
                        named_fds_free(l, n);
                        return log_oom();
                }
        per_call = call_fds_max(ctx);
        if (used + n <= per_call)
                r = bus_append_opt_files(m, l, n) < 0 ? log_build_failed(NULL, -ENOMEM) : 0;
        else {
                r = file_set_new_filled(ctx, l, n, per_call, what, &c->file_set);
                if (r == -EOPNOTSUPP) {
                        log_error("%s: The output has more files (%zu) than one call may carry, and vdiskd has "
                                  "no FileSets", what, n + used);
                        r = EXIT_NOT_SUPPORTED;
                } else if (r == 0 && sd_bus_message_append(m, "{sv}", "file-set", "o", c->file_set) < 0)
                        r = log_build_failed(NULL, -ENOMEM);
        }
        named_fds_free(l, n);
        return r;
}

/* Ends the options of a call that writes a new image (create, convert) with
 * its companions, and runs it. Returns the exit code (logged). */
static int run_creating(Ctx *ctx, sd_bus_message *m, Companions *c, unsigned used, bool progress,
                        const char *what, OpWatch *w) {
        int r = companions_append(ctx, m, c, used, what);

        if (r != 0)
                return r;
        r = bus_options_close(m);
        if (r < 0)
                return log_build_failed(NULL, r);
        return op_finish(w, what, op_run(ctx, m, progress, what, w));
}

/* ---------------------------------------------------------------- create */

int cmd_create(Ctx *ctx, Request *req) {
        const char *fmt = req->format, *backing, *backing_fmt, *file, *backend;
        OptList *opts = &req->opts;
        _cleanup_free_ char *backing_path = NULL, *disk = NULL, *display = NULL;
        _cleanup_msg_ sd_bus_message *m = NULL;
        const Value *info;
        CreateOpts copts;
        Output out = { .fd = -1 };
        Companions comp = {};
        Chain chain = {};
        OpWatch w = {};
        uint64_t size = 0;
        bool have_size = false;
        int r, ex = EXIT_FAILURE;

        r = lookup_format(ctx, fmt, &backend, &info);
        if (r != 0)
                return r;
        if (opts->help) {
                print_create_help(backend, info);
                return EXIT_OK;
        }
        ex = front_check_files(req);
        if (ex >= 0)
                return ex;
        ex = EXIT_FAILURE;
        file = req->files[0];
        backing = req->backing;
        backing_fmt = req->backing_format;
        if (backing && !backing_fmt) {
                log_error("%s: Backing file specified without backing format (give -F)", file);
                return EXIT_USAGE;
        }
        ex = front_create_size(req, &size, &have_size);
        if (ex >= 0)
                return ex;
        ex = EXIT_FAILURE;
        r = create_opts_check(opts, info, file, &copts);
        if (r != 0)
                return r;
        display = utf8_sanitize(path_basename(file));
        if (!display)
                return log_oom();

        if (backing) {
                if (path_relative_to(file, backing, &backing_path) < 0)
                        return log_oom();
                r = chain_open(ctx, backing_path, backing_fmt, 0, false, &chain);
                if (r != 0)
                        return r;
                if (!have_size) {
                        /* vdiskd takes the parent's; read it for the message. */
                        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                        _cleanup_value_ Value props = {};

                        if (bus_get_all(ctx, chain.disk, VDISK_IFACE_DISK, &error, &props) >= 0)
                                size = value_uint(&props, "Size", 0);
                }
        }

        if (!arg_quiet) {
                printf("Formatting '%s', fmt=%s size=%" PRIu64, file, value_str(info, "qemu-name", fmt),
                       size);
                if (backing)
                        printf(" backing_file=%s backing_fmt=%s", backing, backing_fmt);
                if (!copts.variant && streq(value_str(info, "qemu-name", ""), "vdi"))
                        printf(" static=off");
                for (size_t i = 0; i < opts->n; i++)
                        if (!streq(optlist_key(opts, i), "size") &&
                            !streq(optlist_key(opts, i), "backing_file") &&
                            !streq(optlist_key(opts, i), "backing_fmt"))
                                printf(" %s=%s", optlist_key(opts, i), optlist_value(opts, i));
                putchar('\n');
                fflush(stdout);
        }
        /* Like qemu-img: the image gets the size rounded up to whole sectors. */
        size = ALIGN_UP(size, UINT64_C(512));

        r = output_open(file, backing ? &chain : NULL, &out);
        if (r != 0) {
                ex = r;
                goto finish;
        }
        r = companions_open(backend, opts, file, display, size, backing ? &chain : NULL, &comp);
        if (r != 0) {
                ex = r;
                goto finish;
        }

        if (backing) {
                r = bus_new_call(ctx, chain.disk, VDISK_IFACE_DISK, "CreateDiff", &m);
                if (r >= 0)
                        r = sd_bus_message_append(m, "hs", out.fd, backend);
                if (r >= 0)
                        r = bus_options_open(m);
                if (r >= 0 && have_size)
                        r = bus_append_opt_u64(m, "size", size);
                /* The name as given (relative to the new image, as qemu
                 * reads it) for the formats that record one: qcow2's
                 * backing file, VMDK's parentFileNameHint, VHD's locator. */
                if (r >= 0)
                        r = bus_append_opt_string(m, "parent-name", backing);
        } else {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_msg_ sd_bus_message *cm = NULL, *reply = NULL;
                const char *path;

                r = bus_new_call(ctx, VDISK_PATH, VDISK_IFACE_MANAGER, "CreateDisk", &cm);
                if (r >= 0)
                        r = bus_options_open(cm);
                if (r >= 0)
                        r = bus_append_opt_string(cm, "display-name", display);
                if (r >= 0)
                        r = bus_options_close(cm);
                if (r < 0) {
                        ex = log_build_failed(NULL, r);
                        goto finish;
                }
                r = bus_call(ctx, cm, 0, &error, &reply);
                if (r < 0) {
                        ex = log_bus_error(file, &error, r);
                        goto finish;
                }
                r = sd_bus_message_read(reply, "o", &path);
                if (r < 0 || !(disk = strdup(path))) {
                        log_error("%s: Bad reply from vdiskd", file);
                        goto finish;
                }
                chain.disk = TAKE_PTR(disk);   /* closed with the chain */

                r = bus_new_call(ctx, chain.disk, VDISK_IFACE_DISK, "CreateBase", &m);
                if (r >= 0)
                        r = sd_bus_message_append(m, "hst", out.fd, backend, size);
                if (r >= 0)
                        r = bus_options_open(m);
        }
        if (r >= 0)
                r = append_create_opts(m, &copts);
        if (r >= 0)
                r = bus_append_opt_string(m, "display-name", display);
        if (r < 0) {
                ex = log_build_failed(NULL, r);
                goto finish;
        }
        ex = run_creating(ctx, m, &comp, 1, progress_wanted(false), file, &w);

finish:
        op_watch_done(&w);
        chain_done(ctx, &chain);
        output_close(&out, ex == EXIT_OK);
        companions_close(&comp, ex == EXIT_OK);
        return ex;
}

/* ---------------------------------------------------------------- convert */

/* convert -n through vdiskd (Disk.CopyTo): the source's content into the
 * existing image `out`, which keeps its format, size and parents. */
static int convert_into(Ctx *ctx, Request *req) {
        const char *in = req->files[0], *out = req->files[1];
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_close_ int direct_fd = -1;
        Chain src = {}, dst = {};
        OpWatch w = {};
        int r, ex;

        if (req->opts.n > 0 || req->opts.help) {
                log_error("-o has no effect when skipping image creation");
                return EXIT_USAGE;
        }
        ex = chain_open(ctx, in, req->format, 0, true, &src);
        if (ex != 0)
                return ex;
        ex = chain_open(ctx, out, req->out_format, CHAIN_TOP_WRITABLE, false, &dst);
        if (ex != 0)
                goto finish;
        /* As convert without -n: direct writes unless -t asks for the cache. */
        if (cache_mode_direct(req->cache))
                direct_fd = open_direct(dst.elems[dst.n - 1].fd);

        r = bus_new_call(ctx, src.disk, VDISK_IFACE_DISK, "CopyTo", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "o", dst.disk);
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0 && req->target_is_zero)
                r = bus_append_opt_bool(m, "target-is-zero", true);
        if (r >= 0 && req->compress)
                r = bus_append_opt_bool(m, "compress", true);
        if (r >= 0 && req->backing)
                r = bus_append_opt_bool(m, "source-top-only", true);
        if (r >= 0 && direct_fd >= 0)
                r = sd_bus_message_append(m, "{sv}", "direct-fd", "h", direct_fd);
        if (r >= 0)
                r = bus_options_close(m);
        if (r < 0) {
                ex = log_build_failed(NULL, r);
                goto finish;
        }
        r = op_run(ctx, m, progress_wanted(req->progress), out, &w);
        if (r == -EIO) {
                /* A copy that failed, in vdisk-img's words (convert -c -n
                 * over an allocated cluster among others): exit 1. */
                log_error("Could not convert '%s' to '%s': %s", in, out,
                          w.st.error_message && *w.st.error_message ? w.st.error_message
                          : w.st.error_name                         ? w.st.error_name
                                                                    : "unknown error");
                ex = EXIT_FAILURE;
        } else
                ex = op_finish(&w, out, r);
        op_watch_done(&w);

finish:
        chain_done(ctx, &dst);
        chain_done(ctx, &src);
        return ex;
}

int cmd_convert(Ctx *ctx, Request *req) {
        const char *fmt = req->format, *out_fmt = req->out_format, *in = req->files[0], *out_name = req->files[1],
                   *backend, *sparse_arg = req->sparse_arg;
        OptList *opts = &req->opts;
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_close_ int direct_fd = -1;
        uint64_t sparse = req->sparse, new_size = 0, disk_size = 0;
        /* As vdisk-img: direct writes unless the page cache is asked for
         * (by default vdiskd lets a format that appends its blocks take the
         * page cache; -t none/directsync say direct-only). vdiskd flushes
         * the output at the end either way. The source's cache mode (-T)
         * and locks (-U) are vdiskd's business. */
        bool progress = req->progress, compress = req->compress, direct = cache_mode_direct(req->cache);
        const Value *info;
        _cleanup_free_ char *display = NULL;
        CreateOpts copts;
        Output out = { .fd = -1 };
        Companions comp = {};
        Chain chain = {};
        OpWatch w = {};
        int r, ex = EXIT_FAILURE;

        r = lookup_format(ctx, out_fmt, &backend, &info);
        if (r != 0)
                return r;
        if (req->no_create)
                return convert_into(ctx, req);
        if (opts->help) {
                print_create_help(backend, info);
                return EXIT_OK;
        }
        if (optlist_get(opts, "backing_file") || optlist_get(opts, "backing_fmt")) {
                log_error("%s: A backing file for the output is not supported by vdiskctl", out_name);
                return EXIT_USAGE;
        }
        if (optlist_get(opts, "size")) {
                r = parse_size(optlist_get(opts, "size"), &new_size);
                if (r < 0) {
                        log_bad_size("size", optlist_get(opts, "size"), r);
                        return EXIT_USAGE;
                }
                new_size = ALIGN_UP(new_size, UINT64_C(512));
        }
        r = create_opts_check(opts, info, out_name, &copts);
        if (r != 0)
                return r;

        r = chain_open(ctx, in, fmt, 0, true, &chain);
        if (r != 0)
                return r;
        r = output_open(out_name, &chain, &out);
        if (r != 0) {
                ex = r;
                goto finish;
        }
        display = utf8_sanitize(path_basename(out_name));
        if (!display) {
                log_oom();
                goto finish;
        }
        if (new_size == 0) {
                _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_value_ Value props = {};

                if (bus_get_all(ctx, chain.disk, VDISK_IFACE_DISK, &error, &props) >= 0)
                        disk_size = value_uint(&props, "Size", 0);
        }
        r = companions_open(backend, opts, out_name, display, new_size ?: disk_size, &chain, &comp);
        if (r != 0) {
                ex = r;
                goto finish;
        }

        /* vdiskd cannot reopen our file: hand it a second, O_DIRECT
         * descriptor for its large writes. Where the file system has no
         * direct I/O, the copy goes through the page cache. */
        if (direct)
                direct_fd = open_direct(out.fd);

        r = bus_new_call(ctx, chain.disk, VDISK_IFACE_DISK, "Copy", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "hs", out.fd, backend);
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0)
                r = append_create_opts(m, &copts);
        if (r >= 0 && new_size > 0)
                r = bus_append_opt_u64(m, "size", new_size);
        if (r >= 0 && sparse_arg)
                r = bus_append_opt_u64(m, "sparse-size", sparse);
        if (r >= 0 && compress)
                r = bus_append_opt_bool(m, "compress", true);
        if (r >= 0 && direct_fd >= 0)
                r = sd_bus_message_append(m, "{sv}", "direct-fd", "h", direct_fd);
        /* -t none/directsync: direct even where vdiskd would let the
         * format's appended blocks take the page cache, as vdisk-img. */
        if (r >= 0 && direct_fd >= 0 && cache_mode_direct_only(req->cache))
                r = bus_append_opt_bool(m, "direct-only", true);
        if (r >= 0 && comp.n > 0)
                r = bus_append_opt_string(m, "display-name", display);
        if (r < 0) {
                ex = log_build_failed(NULL, r);
                goto finish;
        }
        ex = run_creating(ctx, m, &comp, 1 + (direct_fd >= 0), progress_wanted(progress), out_name, &w);

finish:
        op_watch_done(&w);
        chain_done(ctx, &chain);
        output_close(&out, ex == EXIT_OK);
        companions_close(&comp, ex == EXIT_OK);
        return ex;
}

/* ---------------------------------------------------------------- merge and commit */

/* Runs Disk.Merge(from, to) and says which files left the chain. */
static int run_merge(Ctx *ctx, Chain *chain, unsigned from, unsigned to, bool progress, const char *what,
                     const char *done_msg) {
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_(strv_freep) char **images = NULL;
        const Value *removed;
        OpWatch w = {};
        int r, ex;

        /* Image paths before the merge: the images are named by path
         * (MergeImages), and the result says which paths left the chain. */
        r = chain_image_paths(ctx, chain, &images);
        if (r >= 0 && (from >= chain->n || to >= chain->n))
                r = -EBADMSG;
        if (r >= 0)
                r = bus_new_simple_call(ctx, chain->disk, VDISK_IFACE_DISK, "MergeImages", &m, "oo", images[from],
                                        images[to]);
        if (r < 0)
                return log_build_failed(NULL, r);
        r = op_run(ctx, m, progress, what, &w);
        ex = op_finish(&w, what, r);
        if (ex == EXIT_OK && !arg_quiet) {
                printf("%s\n", done_msg);
                removed = value_get(&w.st.result, "removed");
                for (size_t i = 0; removed && removed->type == VALUE_ARRAY && i < removed->c.n; i++) {
                        const char *name =
                                removed->c.items[i].type == VALUE_STRING ? removed->c.items[i].s : "?";

                        for (unsigned k = 0; images && images[k] && k < chain->n; k++)
                                if (streq(images[k], name))
                                        name = chain->elems[k].path;
                        printf("'%s' left the chain (the file is kept).\n", name);
                }
        }
        op_watch_done(&w);
        return ex;
}

int cmd_merge(Ctx *ctx, Request *req) {
        const char *file = req->files[0];
        unsigned from = req->merge_from, to = req->merge_to;
        _cleanup_free_ char *msg = NULL;
        Chain chain = {};
        int r, ex = EXIT_FAILURE;

        /* Every image a merge may write is opened read-write. */
        r = chain_resolve(ctx, file, req->format, CHAIN_ALL_WRITABLE, &chain);
        if (r != 0)
                return r;
        if (from >= chain.n || to >= chain.n) {
                log_error("%s: The chain has %u image%s (0 to %u); cannot merge %u into %u", file, chain.n,
                          chain.n == 1 ? "" : "s", chain.n - 1, from, to);
                ex = EXIT_USAGE;
                goto finish;
        }
        r = chain_open_disk(ctx, &chain, false);
        if (r != 0) {
                ex = r;
                goto finish;
        }
        if (asprintf(&msg, "Merged '%s' into '%s'.", chain.elems[from].path, chain.elems[to].path) < 0) {
                msg = NULL;
                log_oom();
                goto finish;
        }
        ex = run_merge(ctx, &chain, from, to, progress_wanted(req->progress), file, msg);

finish:
        chain_done(ctx, &chain);
        return ex;
}

int cmd_commit(Ctx *ctx, Request *req) {
        const char *fmt = req->format, *file = req->files[0];
        bool progress = req->progress;   /* -t: the cache mode is vdiskd's business */
        Chain chain = {};
        int r, ex = EXIT_FAILURE;

        r = chain_resolve(ctx, file, fmt, CHAIN_TOP_WRITABLE, &chain);
        if (r != 0)
                return r;
        if (chain.n < 2) {
                log_error("%s: Image does not have a backing file", file);
                goto finish;
        }
        r = chain_make_writable(&chain, chain.n - 2);
        if (r == 0)
                r = chain_open_disk(ctx, &chain, false);
        if (r != 0) {
                ex = r;
                goto finish;
        }
        ex = run_merge(ctx, &chain, chain.n - 1, chain.n - 2, progress_wanted(progress), file,
                       "Image committed.");

finish:
        chain_done(ctx, &chain);
        return ex;
}

/* ---------------------------------------------------------------- compact */

int cmd_compact(Ctx *ctx, Request *req) {
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_(strv_freep) char **images = NULL;
        const char *fmt = req->format, *file = req->files[0];
        unsigned image = req->image;
        bool progress = req->progress;
        Chain chain = {};
        OpWatch w = {};
        int r, ex = EXIT_FAILURE;

        /* The parents are needed: blocks equal to the parent's go too. */
        r = chain_resolve(ctx, file, fmt, image == UINT32_MAX ? CHAIN_TOP_WRITABLE : 0, &chain);
        if (r != 0)
                return r;
        if (image == UINT32_MAX)
                image = chain.n - 1;
        if (image >= chain.n) {
                log_error("%s: The chain has %u image%s (0 to %u), not %u", file, chain.n,
                          chain.n == 1 ? "" : "s", chain.n - 1, image);
                ex = EXIT_USAGE;
                goto finish;
        }
        r = chain_make_writable(&chain, image);
        if (r == 0)
                r = chain_open_disk(ctx, &chain, false);
        if (r != 0) {
                ex = r;
                goto finish;
        }

        r = chain_image_paths(ctx, &chain, &images);
        if (r >= 0)
                r = bus_new_simple_call(ctx, images[image], VDISK_IFACE_IMAGE, "Compact", &m, NULL);
        if (r < 0) {
                ex = log_build_failed(NULL, r);
                goto finish;
        }
        r = op_run(ctx, m, progress_wanted(progress), chain.elems[image].path, &w);
        if (r == -EIO && streq_ptr(w.st.error_name, VDISK_ERROR_PREFIX "NotSupported")) {
                log_error("The format of '%s' (%s) does not support compacting", chain.elems[image].path,
                          chain.elems[image].qemu_format);
                ex = EXIT_NOT_SUPPORTED;
                goto finish;
        }
        ex = op_finish(&w, chain.elems[image].path, r);
        if (ex == EXIT_OK && !arg_quiet)
                printf("Image compacted.\n");

finish:
        op_watch_done(&w);
        chain_done(ctx, &chain);
        return ex;
}

/* ---------------------------------------------------------------- resize */

int cmd_resize(Ctx *ctx, Request *req) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_value_ Value props = {};
        _cleanup_close_ int direct_fd = -1;
        const char *fmt = req->format, *size_arg = req->size_arg, *file = req->files[0], *prealloc = req->prealloc;
        bool shrink = req->shrink;
        uint64_t cur, new_size;
        SizeChange change;
        Chain chain = {};
        OpWatch w = {};
        int r, ex = EXIT_FAILURE;

        r = parse_size_change(size_arg, &change);
        if (r < 0) {
                log_bad_size("size", size_arg, r);
                return EXIT_USAGE;
        }

        r = chain_open(ctx, file, fmt, CHAIN_TOP_WRITABLE | CHAIN_GUESSED_RAW_OK, false, &chain);
        if (r != 0)
                return r;
        r = bus_get_all(ctx, chain.disk, VDISK_IFACE_DISK, &error, &props);
        if (r < 0) {
                ex = log_bus_error(file, &error, r);
                goto finish;
        }
        cur = value_uint(&props, "Size", 0);
        r = size_change_apply(&change, cur, &new_size);
        if (r < 0) {
                log_error("%s: %s", file,
                          r == -EFBIG ? "Image size too large" : "New image size must be positive");
                goto finish;
        }
        if (chain.guessed_raw && new_size < 512) {
                /* That would cut into the first sector, which a guessed raw
                 * image must keep (its content decides the format). */
                log_error("%s: Cannot shrink an image whose format was guessed raw below one sector; "
                          "give '-f raw'", file);
                goto finish;
        }
        if (new_size < cur && !shrink) {
                log_error("%s: %" PRIu64 " bytes is smaller than the image (%" PRIu64 " bytes): "
                          "give --shrink to shrink it (only when the part cut off holds no data)",
                          file, new_size, cur);
                goto finish;
        }

        /* As vdisk-img, direct writes (preallocation=full writes data). */
        direct_fd = open_direct(chain.elems[chain.n - 1].fd);
        r = bus_new_call(ctx, chain.disk, VDISK_IFACE_DISK, "Resize", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "t", new_size);
        if (r >= 0)
                r = bus_options_open(m);
        if (r >= 0 && new_size < cur)
                r = bus_append_opt_bool(m, "allow-shrink", true);
        if (r >= 0 && prealloc)
                r = bus_append_opt_string(m, "preallocation", prealloc);
        if (r >= 0 && direct_fd >= 0)
                r = sd_bus_message_append(m, "{sv}", "direct-fd", "h", direct_fd);
        if (r >= 0)
                r = bus_options_close(m);
        if (r < 0) {
                ex = log_build_failed(NULL, r);
                goto finish;
        }
        r = op_run(ctx, m, progress_wanted(false), file, &w);
        if (r == -EIO && streq_ptr(w.st.error_name, VDISK_ERROR_PREFIX "NotEmpty")) {
                log_error("Could not shrink '%s': the range past the new end holds data", file);
                goto finish;
        }
        if (r == -EIO && streq_ptr(w.st.error_name, VDISK_ERROR_PREFIX "NotSupported") && w.st.error_message &&
            strncmp(w.st.error_message, "Unsupported preallocation mode", 30) == 0) {
                log_error("%s", w.st.error_message);
                ex = EXIT_NOT_SUPPORTED;
                goto finish;
        }
        if (r == -EIO && streq_ptr(w.st.error_name, VDISK_ERROR_PREFIX "NotSupported")) {
                log_error("%s: The format (%s) does not support resizing", file,
                          chain.elems[chain.n - 1].qemu_format);
                ex = EXIT_NOT_SUPPORTED;
                goto finish;
        }
        ex = op_finish(&w, file, r);
        if (ex == EXIT_OK && !arg_quiet)
                printf("Image resized.\n");

finish:
        op_watch_done(&w);
        chain_done(ctx, &chain);
        return ex;
}
