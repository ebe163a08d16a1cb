/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img amend: qemu-img amend's command line and messages. The library
 * (vdisk_amend) does the work; here the "-o" list is read and its values
 * normalized (sizes in bytes, booleans on/off) as create does.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"

/* qemu's "Amend options for 'FMT':" list: the keys an existing image of the
 * format can change (qcow2: compat, lazy refcounts, refcount width, size). */
static int print_amend_help(const vdisk_backend_info *info) {
        static const char *const qcow2_keys[] = { "compat", "lazy_refcounts", "refcount_bits", "size", NULL };

        if (!streq(info->qemu_name, "qcow2")) {
                log_error("Format driver '%s' does not support option amendment", info->qemu_name);
                return EXIT_ERROR;
        }
        printf("Amend options for '%s':\n", info->qemu_name);
        for (size_t i = 0; qcow2_keys[i]; i++) {
                const vdisk_option_desc *d = vdisk_backend_option(info, qcow2_keys[i]);
                _cleanup_free_ char *left = NULL;
                const char *type = !d ? "str" : d->type == VDISK_OPTION_SIZE ? "size" :
                                   d->type == VDISK_OPTION_BOOL ? "bool (on/off)" :
                                   d->type == VDISK_OPTION_NUMBER ? "num" : "str";

                if (asprintf(&left, "%s=<%s>", qcow2_keys[i], type) < 0)
                        return EXIT_ERROR;
                printf("  %-22s - %s\n", left, d ? d->help : "");
        }
        return EXIT_OK;
}

/* Values in the library's form; keys the format does not know are left to
 * the library ("Invalid parameter", or the format's refusal). */
static int normalize_options(OptList *l, const vdisk_backend_info *info) {
        for (size_t i = 0; i < l->n; i++) {
                const char *key = optlist_key(l, i), *value = optlist_value(l, i);
                const vdisk_option_desc *d = vdisk_backend_option(info, key);
                char *s;

                if (!d && !streq(key, "size"))
                        continue;
                if (streq(key, "size") || d->type == VDISK_OPTION_SIZE) {
                        uint64_t v;

                        if (parse_size(value, &v) < 0) {
                                log_error("Parameter '%s' expects a size", key);
                                return -EINVAL;
                        }
                        if (asprintf(&s, "%" PRIu64, v) < 0)
                                return -ENOMEM;
                        optlist_replace_value(l, i, s);
                } else if (d->type == VDISK_OPTION_BOOL && !streq(value, "on") && !streq(value, "off")) {
                        log_error("Parameter '%s' expects 'on' or 'off'", key);
                        return -EINVAL;
                } else if (d->type == VDISK_OPTION_NUMBER &&
                           (!value[0] || strspn(value, "0123456789") != strlen(value))) {
                        log_error("Parameter '%s' expects a number", key);
                        return -EINVAL;
                }
        }
        return 0;
}

int cmd_amend(Request *req) {
        OptList *opts = &req->opts;
        const char *fmt = req->format;
        ProgressBar bar = {};
        Img img = {};
        int r, ex = EXIT_ERROR;

        if (!req->have_opts)
                return usage_error("Must specify options (-o)");
        if (req->n_args != 1 && !(opts->help && req->n_args == 0))
                return usage_error("Expecting one image file name");

        if (opts->help) {
                const vdisk_backend_info *info = NULL;

                if (fmt)
                        info = format_lookup(fmt);
                else if (req->n_args > 0) {
                        r = img_open(req->files[0], NULL, IMG_INFO | IMG_SKIP_CHECKS, &img);
                        if (r < 0)
                                return EXIT_ERROR;
                        info = img.backend;
                } else
                        return usage_error("Expecting one image file name");
                ex = info ? print_amend_help(info) : EXIT_ERROR;
                return img.disk ? img_close_exit(&img, ex) : ex;
        }

        r = img_open(req->files[0], fmt, IMG_WRITE | IMG_CHAIN, &img);
        if (r < 0)
                return EXIT_ERROR;
        if (normalize_options(opts, img.backend) < 0)
                goto finish;

        install_cancel_handlers();
        if (progress_bar_init(&bar, req->progress) < 0)
                goto finish;
        vdisk_clear_error();
        r = vdisk_amend(img.disk, (const char *const *) opts->kv, bar.p);
        progress_bar_done(&bar, r >= 0);
        if (r < 0) {
                log_error("%s", error_detail(r));
                goto finish;
        }
        ex = EXIT_OK;

finish:
        return img_close_exit(&img, ex);
}
