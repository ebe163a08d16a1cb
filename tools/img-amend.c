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

        if (refused(!streq(info->qemu_name, "qcow2"), "Format driver '%s' does not support option amendment",
                    info->qemu_name))
                return EXIT_ERROR;
        printf("Amend options for '%s':\n", info->qemu_name);
        for (size_t i = 0; qcow2_keys[i]; i++) {
                const vdisk_option_desc *d = vdisk_backend_option(info, qcow2_keys[i]);

                print_option_help(qcow2_keys[i], d ? d->type : VDISK_OPTION_STRING, d ? d->help : "");
        }
        return EXIT_OK;
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
        if (optlist_normalize(opts, img.backend, NULL) < 0)
                goto finish;

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
