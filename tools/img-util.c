/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdisk-img helpers: messages, sizes, progress and cancel, opening images. */

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img.h"

/* ---------------------------------------------------------------- messages */

const char *error_detail(int r) {
        const char *e = vdisk_last_error();

        if (e && *e)
                return e;
        return strerror(r < 0 ? -r : r);
}

/* ---------------------------------------------------------------- cancel and progress */

static volatile sig_atomic_t cancel_requested = 0;

static void cancel_handler(int sig) {
        if (cancel_requested) {
                /* Second signal: the user insists. */
                signal(sig, SIG_DFL);
                raise(sig);
                return;
        }
        cancel_requested = 1;
}

static void install_cancel_handlers(void) {
        struct sigaction sa = {
                .sa_handler = cancel_handler,
                .sa_flags = SA_RESTART,
        };

        sigemptyset(&sa.sa_mask);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);
        (void) sigaction(SIGHUP, &sa, NULL);
}

/* Prints a percentage (0..100) when it moved by at least the step. */
static void progress_bar_print(ProgressBar *b, double percent) {
        if (!b || !b->enabled)
                return;
        if (percent > 100)
                percent = 100;
        if (percent - b->last < b->min_step && !(percent >= 100 && b->last < 100))
                return;
        b->last = percent;
        printf("    (%4.2f/100%%)\r", percent);
        fflush(stdout);
}

static void progress_fn(vdisk_progress *p, void *user) {
        ProgressBar *b = user;
        uint64_t total;

        if (cancel_requested)
                vdisk_progress_cancel(p);

        total = vdisk_progress_total(p);
        if (total > 0)
                progress_bar_print(b, (double) vdisk_progress_done(p) * 100.0 / (double) total);
}

int progress_bar_init(ProgressBar *b, bool enabled) {
        int r;

        install_cancel_handlers();
        *b = (ProgressBar) {
                .enabled = enabled,
                .last = 0,
                .min_step = 1.0,
        };
        r = vdisk_progress_new(progress_fn, b, &b->p);
        if (r < 0) {
                log_error("Could not set up progress: %s", strerror(-r));
                return r;
        }
        if (enabled) {
                printf("    (%4.2f/100%%)\r", 0.0);
                fflush(stdout);
                b->started = true;
        }
        return 0;
}

void progress_bar_done(ProgressBar *b, bool success) {
        if (b->enabled && b->started) {
                if (success)
                        printf("    (%4.2f/100%%)\r", 100.0);
                putchar('\n');
                fflush(stdout);
        }
        b->p = vdisk_progress_free(b->p);
}

/* ---------------------------------------------------------------- formats and images */

const vdisk_backend_info *format_lookup(const char *name) {
        const vdisk_backend_info *info = vdisk_backend_find(name);

        if (!info)
                log_error("Unknown file format '%s'", name);
        return info;
}

/* A guessed raw image must never get another format's signature into its
 * first sector (a guest could otherwise turn itself into, say, a qcow2 image
 * naming any host file as its backing file). This io wraps the real one (its
 * `user`) and refuses every write that touches sector 0. */
static int guard_pread(void *user, void *buf, size_t len, uint64_t offset) {
        return vdisk_io_pread(user, buf, len, offset);
}

static int guard_pwrite(void *user, const void *buf, size_t len, uint64_t offset) {
        if (len > 0 && offset < VDISK_SECTOR_SIZE)
                return -EPERM;
        return vdisk_io_pwrite(user, buf, len, offset);
}

static int guard_flush(void *user) {
        return vdisk_io_flush(user);
}

static int guard_get_size(void *user, uint64_t *ret_size) {
        return vdisk_io_get_size(user, ret_size);
}

static int guard_truncate(void *user, uint64_t size) {
        /* Shrinking to less than a sector would change sector 0 too. */
        if (size < VDISK_SECTOR_SIZE)
                return -EPERM;
        return vdisk_io_truncate(user, size);
}

static void guard_close(void *user) {
        vdisk_io_unref(user);
}

static int raw_guard_new(vdisk_io *inner, const char *name, vdisk_io **ret) {
        static const vdisk_io_ops ops = {
                .size = sizeof(vdisk_io_ops),
                .pread = guard_pread,
                .pwrite = guard_pwrite,
                .flush = guard_flush,
                .get_size = guard_get_size,
                .truncate = guard_truncate,
                .close = guard_close,
        };
        int r;

        r = vdisk_io_new_ops(&ops, vdisk_io_ref(inner), name, 0, ret);
        if (r < 0)
                vdisk_io_unref(inner);
        return r;
}

static void print_disk_warnings(vdisk_disk *d) {
        const char *const *w = vdisk_disk_warnings(d);

        for (; w && *w; w++)
                log_warning("%s", *w);
}

#define LOG(...) do { if (!quiet) log_error(__VA_ARGS__); } while (0)

uint32_t img_cache_flags(const char *mode) {
        if (streq_ptr(mode, "unsafe"))
                return IMG_CACHED | IMG_NOSYNC;
        if (!cache_mode_direct(mode))
                return IMG_CACHED;
        return cache_mode_direct_only(mode) ? IMG_DIRECT_ONLY : 0;
}

int img_open(const char *filename, const char *fmt, uint32_t flags, Img *ret) {
        return img_open_snapshot(filename, fmt, flags, NULL, ret);
}

int img_open_snapshot(const char *filename, const char *fmt, uint32_t flags, const char *snapshot, Img *ret) {
        _cleanup_(vdisk_io_unrefp) vdisk_io *io = NULL;
        _cleanup_(vdisk_disk_unrefp) vdisk_disk *d = NULL;
        _cleanup_(vdisk_resolver_unrefp) vdisk_resolver *resolver = NULL;
        const vdisk_backend_info *info = NULL;
        bool writable = flags & IMG_WRITE, quiet = flags & IMG_QUIET;
        /* How written images open: the top now, the others when reopened. */
        uint32_t write_flags = ((flags & IMG_CACHED) ? 0 : VDISK_PATH_DIRECT) |
                               ((flags & IMG_DIRECT_ONLY) ? VDISK_PATH_DIRECT_ONLY : 0) |
                               ((flags & IMG_NOSYNC) ? VDISK_PATH_NOSYNC : 0);
        uint32_t open_flags = 0;
        int guessed = 0, r;

        assert(filename);
        assert(ret);

        if (arg_image_opts && !(flags & IMG_PLAIN_NAME)) {
                const char *path, *opts_fmt, *opts_snapshot;

                if (fmt) {
                        LOG("--image-opts and --format are mutually exclusive");
                        return -EINVAL;
                }
                r = image_opts_parse(filename, quiet, &path, &opts_fmt, &opts_snapshot);
                if (r < 0)
                        return r;
                if (snapshot && opts_snapshot) {
                        LOG("Could not open '%s': a snapshot is given twice (-l and snapshot.*)", filename);
                        return -EINVAL;
                }
                return img_open_snapshot(path, opts_fmt, flags | IMG_PLAIN_NAME, snapshot ?: opts_snapshot, ret);
        }

        if (fmt) {
                info = quiet ? vdisk_backend_find(fmt) : format_lookup(fmt);
                if (!info)
                        return -EMEDIUMTYPE;
        }

        vdisk_clear_error();
        r = vdisk_io_open_path(filename, writable ? VDISK_PATH_WRITE | write_flags : VDISK_PATH_READ, &io);
        if (r < 0) {
                LOG("Could not open '%s': %s", filename, error_detail(r));
                return r;
        }

        if (!info) {
                vdisk_clear_error();
                r = vdisk_probe(io, filename, 1, &info, &guessed);
                if (r < 0) {
                        LOG("Could not open '%s': %s", filename,
                                  r == -EMEDIUMTYPE ? "Could not determine the image format"
                                                    : error_detail(r));
                        return r;
                }
                if (guessed && writable) {
                        _cleanup_(vdisk_io_unrefp) vdisk_io *guard = NULL;

                        if (!(flags & (IMG_NO_PROBE_WARNING | IMG_QUIET))) {
                                fflush(stdout);
                                fprintf(stderr,
                                        "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
                                        "         Automatically detecting the format is dangerous for raw images, "
                                        "write operations on block 0 will be restricted.\n"
                                        "         Specify the 'raw' format explicitly to remove the restrictions.\n",
                                        filename);
                        }
                        r = raw_guard_new(io, filename, &guard);
                        if (r < 0) {
                                LOG("Could not open '%s': %s", filename, strerror(-r));
                                return r;
                        }
                        vdisk_io_unref(io);
                        io = TAKE_PTR(guard);
                }
        }

        /* Without READONLY, an image below the top is reopened writable
         * when an operation writes into it; parents are always opened
         * read-only. */
        if (!writable && !(flags & IMG_WRITE_BELOW))
                open_flags |= VDISK_OPEN_READONLY;
        if (flags & IMG_INFO)
                open_flags |= VDISK_OPEN_INFO;
        if (flags & IMG_SKIP_CHECKS)
                open_flags |= VDISK_OPEN_SKIP_CHECKS;

        r = vdisk_disk_new(&d);
        if (r < 0) {
                LOG("Could not open '%s': %s", filename, strerror(-r));
                return r;
        }
        if (snapshot) {
                vdisk_clear_error();
                r = vdisk_disk_set_snapshot(d, snapshot);
                if (r < 0) {
                        LOG("Failed in parsing snapshot param '%s': %s", snapshot, error_detail(r));
                        return r;
                }
        }

        /* Without IMG_CHAIN no parents, but the image's own companion files
         * (VMDK extents). */
        vdisk_clear_error();
        r = vdisk_resolver_new_path(flags & IMG_CHAIN ? (const char *const *) arg_parent_dirs : NULL, &resolver);
        if (r >= 0)
                r = vdisk_resolver_set_write_flags(resolver, write_flags);
        if (r >= 0 && (flags & IMG_CHAIN))
                r = vdisk_disk_open_chain(d, resolver, io, info->name, open_flags);
        else if (r >= 0) {
                r = vdisk_disk_set_resolver(d, resolver);
                if (r >= 0)
                        r = vdisk_disk_open(d, io, info->name, open_flags);
        }
        if (r < 0 && snapshot && r == -ENOENT && strstr(error_detail(r), "no snapshot with")) {
                LOG("Failed to load snapshot: %s", error_detail(r));
                return r;
        }
        if (r < 0) {
                LOG("Could not open '%s': %s", filename, error_detail(r));
                return r;
        }
        if (!quiet)
                print_disk_warnings(d);

        *ret = (Img) {
                .disk = TAKE_PTR(d),
                .backend = info,
                .guessed_raw = guessed,
                .filename = filename,
        };
        return 0;
}

#undef LOG

int img_close(Img *img) {
        vdisk_disk *d;
        int r;

        if (!img || !img->disk)
                return 0;
        d = TAKE_PTR(img->disk);
        vdisk_clear_error();
        r = vdisk_disk_close(d);
        if (r < 0)
                log_error("Could not close '%s': %s", img->filename ? img->filename : "image", error_detail(r));
        return r;
}

int img_close_exit(Img *img, int ex) {
        if (img_close(img) < 0 && ex == EXIT_OK)
                return EXIT_ERROR;
        return ex;
}

vdisk_image *img_at_depth(Img *img, unsigned depth) {
        unsigned n = vdisk_disk_count(img->disk);

        if (depth >= n)
                return NULL;
        return vdisk_disk_image(img->disk, n - 1 - depth);
}

void remove_created_file(const char *path) {
        struct stat st;

        if (lstat(path, &st) >= 0 && S_ISREG(st.st_mode))
                (void) unlink(path);
}

int new_image_finish(vdisk_disk **d, vdisk_io **io, const char *path, bool sync_dir, int ex) {
        int r;

        if (ex == EXIT_OK) {
                vdisk_clear_error();
                r = vdisk_disk_close(TAKE_PTR(*d));
                if (r < 0) {
                        log_error("Could not close '%s': %s", path, error_detail(r));
                        ex = EXIT_ERROR;
                }
        }
        *d = vdisk_disk_unref(*d);
        *io = vdisk_io_unref(*io);
        if (ex != EXIT_OK)
                remove_created_file(path);
        else if (sync_dir)
                fsync_parent_dir(path);
        return ex;
}

void fsync_parent_dir(const char *path) {
        _cleanup_free_ char *dir = NULL;
        _cleanup_close_ int fd = -1;

        if (path_dirname(path, &dir) < 0)
                return;
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0)
                (void) fsync(fd);
}

int same_file(const char *a, const char *b) {
        struct stat sa, sb;

        if (stat(a, &sa) < 0)
                return errno == ENOENT ? 0 : -errno;
        if (stat(b, &sb) < 0)
                return errno == ENOENT ? 0 : -errno;
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int chain_refuse(vdisk_disk *d, const char *path, const char *why) {
        for (unsigned i = 0; i < vdisk_disk_count(d); i++) {
                int r = same_file(vdisk_image_name(vdisk_disk_image(d, i)), path);

                if (r != 0) {
                        log_error("%s: %s", path, r > 0 ? why : strerror(-r));
                        return r > 0 ? -EEXIST : r;
                }
        }
        return 0;
}

int common_option(int c, const char *arg, int *ret_exit) {
        switch (c) {
        case 'U':
                /* vdisk-img takes no locks, so there is nothing to share. */
                return 1;
        case ARG_IMAGE_OPTS:
                arg_image_opts = true;
                return 1;
        case ARG_OBJECT: {
                int r = object_add(arg);
                if (r == 0)
                        return 1;
                *ret_exit = r > 0 ? EXIT_OK : EXIT_ERROR;
                return 2;
        }
        default:
                return front_common_option(c, arg, ret_exit);
        }
}
