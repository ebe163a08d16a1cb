/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img commit, resize, rebase (qemu-img's commands) and compact,
 * setuuid, comment (vbox-img's): the commands that change existing images.
 *
 * Every change leaves each file a valid image at every step: data first,
 * then the links that make it visible; a file is replaced only by rename().
 */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img.h"

/* ---------------------------------------------------------------- commit */

/* The index of `base` (a path as the user gave it, or relative to the top's
 * directory) in the chain below the top, or -ENOENT. */
static int chain_find(Img *img, const char *base) {
        unsigned n = vdisk_disk_count(img->disk);
        _cleanup_free_ char *rel = NULL;

        if (path_relative_to(img->filename, base, &rel) < 0)
                return -ENOMEM;
        for (unsigned i = 0; i + 1 < n; i++) {
                const char *name = vdisk_image_name(vdisk_disk_image(img->disk, i));

                if (streq(name, base) || same_file(name, base) > 0 || same_file(name, rel) > 0)
                        return (int) i;
        }
        return -ENOENT;
}

/* A new file beside the top's (the target's, when the top is a symbolic
 * link), with its mode (and owner, as root), for vdisk_commit() to write the
 * emptied top into; *ret_io carries the top's name. */
static int commit_temp_file(const char *filename, uint32_t io_flags, char **ret_tmp, char **ret_target,
                            vdisk_io **ret_io) {
        _cleanup_free_ char *tmp = NULL, *target = NULL;
        _cleanup_close_ int fd = -1;
        struct stat st, lst;
        int r;

        if (stat(filename, &st) < 0)
                return -errno;
        /* Replace the file a symbolic link points to, not the link. */
        if (lstat(filename, &lst) >= 0 && S_ISLNK(lst.st_mode)) {
                target = realpath(filename, NULL);
                if (!target)
                        return -errno;
        } else if (!(target = strdup(filename)))
                return -ENOMEM;
        if (asprintf(&tmp, "%s.vdisk-img-XXXXXX", target) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        (void) fchmod(fd, st.st_mode & 07777);
        if (geteuid() == 0)
                (void) fchown(fd, st.st_uid, st.st_gid);
        /* The io carries the final name, for messages (the library names
         * the parent as the old top's file sees it). */
        r = vdisk_io_new_fd(fd, filename, VDISK_IO_OWN_FD | io_flags, ret_io);
        if (r < 0) {
                (void) unlink(tmp);
                return r;
        }
        TAKE_FD(fd);
        *ret_tmp = TAKE_PTR(tmp);
        *ret_target = TAKE_PTR(target);
        return 0;
}

int cmd_commit(Request *req) {
        const char *fmt = req->format, *base = req->backing;
        _cleanup_(vdisk_io_unrefp) vdisk_io *new_top = NULL;
        _cleanup_free_ char *tmp = NULL, *target = NULL;
        bool quiet = req->quiet, progress = req->progress, drop = req->drop;
        vdisk_commit_result res = { .size = sizeof(res) };
        ProgressBar bar = {};
        unsigned n;
        int r, to, ex = EXIT_ERROR;
        Img img = {};

        /* The top is only read: its data goes into the base, then the top is
         * replaced by a new empty file or (with -d/-b) relinked, reopened
         * writable. Everything opens read-only; the library reopens what it
         * writes. */
        r = img_open(req->files[0], fmt, IMG_WRITE_BELOW | IMG_CHAIN | img_cache_flags(req->cache), &img);
        if (r < 0)
                return EXIT_ERROR;

        n = vdisk_disk_count(img.disk);
        if (refused(n < 2, "Image does not have a backing file"))
                goto finish;
        to = base ? chain_find(&img, base) : (int) n - 2;
        if (refused(to < 0, "Did not find '%s' in the backing chain of '%s'", base, img.filename))
                goto finish;

        if (!drop) {
                r = commit_temp_file(img.filename, streq_ptr(req->cache, "unsafe") ? VDISK_IO_NOSYNC : 0, &tmp,
                                     &target, &new_top);
                if (r < 0) {
                        log_error("Could not commit '%s': %s", img.filename, strerror(-r));
                        goto finish;
                }
        }

        if (progress_bar_init(&bar, progress) < 0)
                goto finish;
        vdisk_clear_error();
        r = vdisk_commit(img.disk, (unsigned) to, &(vdisk_commit_opts) {
                                 .size = sizeof(vdisk_commit_opts),
                                 .flags = drop ? VDISK_COMMIT_KEEP_TOP : 0,
                                 .new_top = new_top,
                         }, bar.p, &res);
        progress_bar_done(&bar, r >= 0 || res.failed_step == VDISK_COMMIT_STEP_TOP);
        /* The emptied top is durable: it replaces the old one. */
        if (r >= 0 && !drop) {
                res.failed_step = VDISK_COMMIT_STEP_TOP;
                r = vdisk_disk_close_top(img.disk);
                if (r >= 0 && rename(tmp, target) < 0)
                        r = -errno;
                if (r >= 0)
                        fsync_parent_dir(target);
        }
        if (r < 0 && res.failed_step == VDISK_COMMIT_STEP_TOP) {
                /* The data is in the base now; the top left the chain untouched. */
                log_error("The data of '%s' was committed, but %s failed: %s", img.filename,
                          drop ? "linking it to its new backing file" : "emptying it", error_detail(r));
                log_error("'%s' was left as it was; it still reads correctly on its backing chain",
                          img.filename);
                goto finish;
        }
        if (r < 0) {
                log_error("Could not commit '%s': %s", img.filename,
                          r == -ECANCELED ? "cancelled (every image is still valid)" : error_detail(r));
                goto finish;
        }

        if (!quiet)
                printf("Image committed.\n");
        ex = EXIT_OK;

finish:
        if (tmp && ex != EXIT_OK)
                (void) unlink(tmp);
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- resize */

int cmd_resize(Request *req) {
        const char *fmt = req->format, *size_arg = req->size_arg, *prealloc = req->prealloc;
        bool quiet = req->quiet, shrink = req->shrink;
        uint64_t cur, new_size;
        SizeChange change;
        ProgressBar bar = {};
        Img img = {};
        int r, ex = EXIT_ERROR;

        if (parse_size_change(size_arg, &change) < 0) {
                log_error("Parameter 'size' expects a non-negative number below 2^64");
                log_error("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-");
                log_error("and exabytes, respectively.");
                return EXIT_ERROR;
        }

        r = img_open(req->files[0], fmt, IMG_WRITE | IMG_CHAIN, &img);
        if (r < 0)
                return EXIT_ERROR;

        cur = vdisk_disk_size(img.disk);
        r = size_change_apply(&change, cur, &new_size);
        if (r < 0) {
                log_error(r == -EFBIG ? "Image size too large" : "New image size must be positive");
                goto finish;
        }
        /* qemu-img's order and words */
        if (refused(new_size < cur && prealloc && !streq(prealloc, "off"),
                    "Preallocation can only be used for growing images"))
                goto finish;
        if (new_size < cur && !shrink) {
                log_error("Use the --shrink option to perform a shrink operation.");
                log_warning("Shrinking an image will delete all data beyond the shrunken image's end. "
                            "Before performing such an operation, make sure there is no important data there.");
                goto finish;
        }

        if (progress_bar_init(&bar, false) < 0)
                goto finish;
        vdisk_clear_error();
        /* --shrink consents to dropping what lies past the new end (raw;
         * the other formats shrink only over blocks without data) */
        vdisk_resize_opts ropts = {
                .size = sizeof(ropts),
                .preallocation = prealloc,
                .flags = shrink ? VDISK_RESIZE_DISCARD_DATA : 0,
        };
        r = vdisk_resize_ex(img.disk, new_size, &ropts, bar.p);
        progress_bar_done(&bar, r >= 0);
        /* For -EOPNOTSUPP qemu-img's words, then why (a VMDK shrink that
         * would drop extents ...) */
        if (refused(r == -EOPNOTSUPP && strncmp(vdisk_last_error(), "Unsupported preallocation mode", 30) == 0,
                    "%s", vdisk_last_error()) ||
            refused(r == -EOPNOTSUPP && vdisk_last_error()[0], "Image format driver does not support resize: %s",
                    vdisk_last_error()) ||
            refused(r == -EOPNOTSUPP, "Image format driver does not support resize") ||
            refused(r == -ENOTEMPTY, "Could not shrink '%s': the range past the new end holds data", img.filename) ||
            refused(r < 0, "Error resizing image: %s", error_detail(r)))
                goto finish;
        if (!quiet)
                printf("Image resized.\n");
        ex = EXIT_OK;

finish:
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- rebase */

/* The message for a failed vdisk_rebase(), naming the file and offset. */
static void rebase_error(int r, const vdisk_rebase_result *res, Img *img, Img *new_chain, const char *backing) {
        const char *file = res->failed_side ? new_chain->filename : img->filename;

        switch (r == -ECANCELED ? VDISK_REBASE_STEP_NONE : res->failed_step) {
        case VDISK_REBASE_STEP_STATUS:
                log_error("Could not read the allocation of '%s' at offset %" PRIu64 ": %s", file,
                          res->failed_offset, error_detail(r));
                break;
        case VDISK_REBASE_STEP_READ:
                log_error("Could not read '%s' at offset %" PRIu64 ": %s", file, res->failed_offset,
                          error_detail(r));
                break;
        case VDISK_REBASE_STEP_WRITE:
                log_error("Could not write '%s' at offset %" PRIu64 ": %s", file, res->failed_offset,
                          error_detail(r));
                break;
        case VDISK_REBASE_STEP_FLUSH:
                log_error("Could not flush '%s': %s", file, error_detail(r));
                break;
        default:
                if (r == -ECANCELED)
                        log_error("Rebase cancelled; '%s' still uses its old backing file", img->filename);
                else if (r == -ELOOP)
                        log_error("Could not change the backing file to '%s': '%s' would become its own "
                                  "ancestor", backing, img->filename);
                else
                        log_error("Could not change the backing file to '%s': %s", backing, error_detail(r));
        }
}

int cmd_rebase(Request *req) {
        const char *fmt = req->format, *backing = req->backing, *backing_fmt = req->backing_format;
        _cleanup_free_ char *backing_path = NULL;
        bool unsafe = req->unsafe, progress = req->progress;
        vdisk_rebase_result res = { .size = sizeof(res) };
        ProgressBar bar = {};
        Img img = {}, new_chain = {};
        int r, ex = EXIT_ERROR;

        if (!backing)
                return usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
        if (backing_fmt && !format_lookup(backing_fmt))
                return EXIT_ERROR;

        r = img_open(req->files[0], fmt,
                     IMG_WRITE | (unsafe ? IMG_SKIP_CHECKS : IMG_CHAIN) | img_cache_flags(req->cache), &img);
        if (r < 0)
                return EXIT_ERROR;
        /* As qemu-img 7.2: a new backing file needs its format named. */
        if (refused(*backing && !backing_fmt,
                    "Could not change the backing file to '%s': backing format must be specified", backing))
                goto finish;

        if (*backing) {
                if (path_relative_to(img.filename, backing, &backing_path) < 0) {
                        log_error("Out of memory");
                        goto finish;
                }
                /* Unsafe: the new chain as far as it opens (the loop check
                 * looks at it), else the new backing file alone. */
                r = -1;
                if (unsafe)
                        r = img_open(backing_path, backing_fmt, IMG_CHAIN | IMG_INFO | IMG_QUIET | IMG_PLAIN_NAME,
                                     &new_chain);
                if (r < 0)
                        r = img_open(backing_path, backing_fmt,
                                     IMG_PLAIN_NAME | (unsafe ? IMG_INFO | IMG_SKIP_CHECKS : IMG_CHAIN), &new_chain);
                if (r < 0)
                        goto finish;
        }

        if (!unsafe && progress_bar_init(&bar, progress) < 0)
                goto finish;
        vdisk_rebase_opts opts = {
                .size = sizeof(opts),
                .flags = unsafe ? VDISK_REBASE_UNSAFE : 0,
                .parent_name = *backing ? backing : NULL,
        };
        vdisk_clear_error();
        r = vdisk_rebase(img.disk, new_chain.disk, &opts, &res, bar.p);
        if (!unsafe)
                progress_bar_done(&bar, r >= 0 || res.failed_step == VDISK_REBASE_STEP_LINK);
        if (r < 0) {
                rebase_error(r, &res, &img, &new_chain, backing);
                goto finish;
        }
        ex = EXIT_OK;

finish:
        img_close(&new_chain);
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- compact */

int cmd_compact(Request *req) {
        const char *fmt = req->format, *filename = req->files[0];
        bool progress = req->progress, quiet = req->quiet;
        ProgressBar bar = {};
        Img img = {};
        int r, ex = EXIT_ERROR;

        /* The parents are needed: blocks equal to the parent's go too. */
        r = img_open(filename, fmt, IMG_WRITE | IMG_CHAIN, &img);
        if (r < 0)
                return EXIT_ERROR;

        if (progress_bar_init(&bar, progress) < 0)
                goto finish;
        vdisk_clear_error();
        r = vdisk_compact(img.disk, vdisk_disk_count(img.disk) - 1, bar.p);
        progress_bar_done(&bar, r >= 0);
        if (refused(r == -EOPNOTSUPP, "The format of '%s' (%s) does not support compacting", filename,
                    img.backend->qemu_name) ||
            refused(r < 0, "Could not compact '%s': %s", filename,
                    r == -ECANCELED ? "cancelled (the image is still valid)" : error_detail(r)))
                goto finish;
        if (!quiet)
                printf("Image compacted.\n");
        ex = EXIT_OK;

finish:
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- setuuid */

typedef struct UuidChange {
        int key;                  /* the option that sets it (ARG_*) */
        const char *label, *what; /* in the report, in the message for a bad value */
        int (*get)(vdisk_image *img, uint8_t ret[16]);
        int (*set)(vdisk_image *img, const uint8_t uuid[16]);
        bool wanted;
        uint8_t value[16];
} UuidChange;

int cmd_setuuid(Request *req) {
        UuidChange changes[] = {
                { ARG_UUID, "UUID", "UUID", vdisk_image_get_uuid, vdisk_image_set_uuid },
                { ARG_PARENT_UUID, "Parent UUID", "parent UUID", vdisk_image_get_parent_uuid,
                  vdisk_image_set_parent_uuid },
                { ARG_MODIFICATION_UUID, "Modification UUID", "modification UUID",
                  vdisk_image_get_modification_uuid, vdisk_image_set_modification_uuid },
                { ARG_PARENT_MODIFICATION_UUID, "Parent modification UUID", "parent modification UUID",
                  vdisk_image_get_parent_modification_uuid, vdisk_image_set_parent_modification_uuid },
        };
        const char *fmt = req->format, *filename = req->files[0];
        bool quiet = req->quiet, any = false;
        vdisk_image *top;
        Img img = {};
        int r, ex = EXIT_ERROR;

        for (unsigned i = 0; i < req->n_actions; i++) {
                const char *arg = req->actions[i].arg;

                any = true;
                if (req->actions[i].key == ARG_ZERO_PARENT_UUID) {
                        memset(changes[1].value, 0, 16);
                        memset(changes[3].value, 0, 16);
                        changes[1].wanted = changes[3].wanted = true;
                        continue;
                }
                for (size_t c = 0; c < ELEMENTSOF(changes); c++) {
                        if (changes[c].key != req->actions[i].key)
                                continue;
                        if (refused(vdisk_uuid_parse(arg, changes[c].value) < 0,
                                    "Invalid %s '%s'", changes[c].what, arg))
                                return EXIT_ERROR;
                        changes[c].wanted = true;
                }
        }

        /* Like vbox-img: without any option the image gets a new random UUID. */
        if (!any) {
                vdisk_uuid_generate(changes[0].value);
                changes[0].wanted = true;
        }

        r = img_open(filename, fmt, IMG_WRITE | IMG_SKIP_CHECKS, &img);
        if (r < 0)
                return EXIT_ERROR;
        top = vdisk_disk_image(img.disk, 0);

        for (size_t i = 0; i < ELEMENTSOF(changes); i++) {
                char old_text[37] = "", new_text[37];
                uint8_t old[16];

                if (!changes[i].wanted)
                        continue;
                if (changes[i].get(top, old) >= 0)
                        vdisk_uuid_format(old, old_text);
                vdisk_uuid_format(changes[i].value, new_text);
                vdisk_clear_error();
                r = changes[i].set(top, changes[i].value);
                if (r < 0) {
                        log_error("Could not set the %s of '%s': %s", changes[i].label, filename,
                                  r == -EOPNOTSUPP ? "the format has no such field" : error_detail(r));
                        goto finish;
                }
                if (!quiet)
                        printf("%s changed from %s to %s\n", changes[i].label,
                               *old_text ? old_text : "(none)", new_text);
        }
        vdisk_clear_error();
        r = vdisk_disk_flush(img.disk);
        if (r < 0) {
                log_error("Could not write '%s': %s", filename, error_detail(r));
                goto finish;
        }
        ex = EXIT_OK;

finish:
        return img_close_exit(&img, ex);
}

/* ---------------------------------------------------------------- comment */

int cmd_comment(Request *req) {
        const char *fmt = req->format, *filename = req->files[0], *text = NULL, *comment = NULL;
        bool clear = req->clear, change;
        unsigned i = 0;
        Img img = {};
        int r, ex = EXIT_ERROR;

        if (!filename)
                return usage_error("Expecting an image file name");
        if (req->n_args > 0 && filename == req->args[0])
                i++;   /* the name came first, not from --filename */
        if (i < req->n_args)
                text = req->args[i++];
        if (i < req->n_args)
                return usage_error("Unexpected argument: %s", req->args[i]);
        if (clear && text)
                return usage_error("--clear takes no comment text");

        change = text || clear;
        r = img_open(filename, fmt, (change ? IMG_WRITE : IMG_INFO) | IMG_SKIP_CHECKS, &img);
        if (r < 0)
                return EXIT_ERROR;
        vdisk_clear_error();
        if (change) {
                r = vdisk_image_set_comment(vdisk_disk_image(img.disk, 0), text);
                if (r >= 0)
                        r = vdisk_disk_flush(img.disk);
        } else {
                r = vdisk_image_get_comment(vdisk_disk_image(img.disk, 0), &comment);
                if (r >= 0)
                        printf("%s\n", comment ? comment : "");
        }
        if (r < 0) {
                log_error("Could not %s the comment of '%s': %s", change ? "set" : "read", filename,
                          r == -EOPNOTSUPP ? "the format has no comment field" : error_detail(r));
                goto finish;
        }
        ex = EXIT_OK;

finish:
        return img_close_exit(&img, ex);
}
