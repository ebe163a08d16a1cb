/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img bitmap (qemu-img 7.2's syntax) and the bitmap copy of
 * convert --bitmaps: persistent dirty bitmaps of qcow2 images, through
 * vdisk_image_{list,read,change}_bitmap(s).
 *
 *   bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
 *           --disable)... [-b source_file [-F source_fmt]] [-g granularity]
 *           [-f fmt] filename bitmap
 *
 * The actions run in the order given. --disabled (with --add) adds the
 * bitmap disabled, as "--add --disable" does.
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"

/* The action options, by their key (ARG_BM_ADD..ARG_BM_MERGE): their
 * operation, and qemu-img's word for it in messages. */
typedef struct BitmapAction {
        unsigned op;              /* VDISK_BITMAP_OP_* */
        const char *word;
} BitmapAction;

static const BitmapAction bitmap_actions[] = {
        [ARG_BM_ADD - ARG_BM_ADD]     = { VDISK_BITMAP_OP_ADD,     "add" },
        [ARG_BM_REMOVE - ARG_BM_ADD]  = { VDISK_BITMAP_OP_REMOVE,  "remove" },
        [ARG_BM_CLEAR - ARG_BM_ADD]   = { VDISK_BITMAP_OP_CLEAR,   "clear" },
        [ARG_BM_ENABLE - ARG_BM_ADD]  = { VDISK_BITMAP_OP_ENABLE,  "enable" },
        [ARG_BM_DISABLE - ARG_BM_ADD] = { VDISK_BITMAP_OP_DISABLE, "disable" },
        [ARG_BM_MERGE - ARG_BM_ADD]   = { VDISK_BITMAP_OP_MERGE,   "merge" },
};

/* qemu-img creates persistent bitmaps in qcow2 only. */
static bool format_has_persistent_bitmaps(const vdisk_backend_info *info) {
        return info && streq(info->qemu_name, "qcow2");
}

/* qemu-img 7.2's failure for the bitmap operation `op` on a format without
 * persistent bitmaps, which consumers match; returns EXIT_ERROR. */
static int bitmap_refuse(const char *op, const char *bitmap, const char *filename) {
        /* qemu names its internal node ("#block123"); the file is the
         * stable name of the same thing. */
        if (streq(op, "add"))
                log_error("Operation add on bitmap %s failed: Can't store persistent bitmaps to %s: %s",
                          bitmap, filename, strerror(EOPNOTSUPP));
        else
                log_error("Operation %s on bitmap %s failed: Dirty bitmap '%s' not found", op, bitmap, bitmap);
        return EXIT_ERROR;
}

/* Merges bitmap `source` of the image `file` (format `fmt`) into `name` of `dst`. */
static int merge_from_file(vdisk_image *dst, const char *name, const char *file, const char *fmt,
                           const char *source) {
        uint8_t *bits = NULL;
        size_t len = 0;
        uint64_t g = 0, dsize, ssize;
        Img src = {};
        int r;

        r = img_open(file, fmt, 0, &src);
        if (r < 0)
                return r;
        vdisk_clear_error();
        ssize = vdisk_disk_size(src.disk);
        dsize = vdisk_image_size(dst);
        if (ssize != dsize) {
                log_error("Bitmap '%s' of '%s' covers %" PRIu64 " bytes, the image %" PRIu64, source, file, ssize,
                          dsize);
                r = -EINVAL;
        } else if (r >= 0) {
                r = vdisk_image_read_bitmap(vdisk_disk_image(src.disk, 0), source, &bits, &len, &g);
                if (r < 0)
                        log_error("Could not read bitmap '%s' of '%s': %s", source, file, error_detail(r));
        }
        (void) img_close(&src);
        if (r < 0)
                return r;
        vdisk_bitmap_change c = {
                .size = sizeof c,
                .op = VDISK_BITMAP_OP_MERGE,
                .name = name,
                .bits = bits,
                .bits_len = len,
                .bits_granularity = g,
        };
        r = vdisk_image_change_bitmap(dst, &c);
        free(bits);
        return r;
}

int cmd_bitmap(Request *req) {
        const BitmapAction *act[ACTIONS_MAX];
        const char *fmt = req->format, *src_file = req->backing, *src_fmt = req->backing_format, *filename, *name;
        uint64_t granularity = req->granularity;
        bool add = req->bitmap_add, disabled = req->bitmap_disabled, merge = false;
        size_t n = req->n_actions;
        Img img = {};
        int r;

        for (size_t i = 0; i < n; i++) {
                assert(req->actions[i].key >= ARG_BM_ADD && req->actions[i].key <= ARG_BM_MERGE);
                act[i] = &bitmap_actions[req->actions[i].key - ARG_BM_ADD];
        }
        for (size_t i = 0; i < n; i++)
                merge = merge || act[i]->op == VDISK_BITMAP_OP_MERGE;
        if (refused(n == 0, "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge") ||
            refused(granularity && !add, "granularity only supported with --add") ||
            refused(disabled && !add, "--disabled only supported with --add") ||
            refused(src_fmt && !src_file, "-F only supported with -b") ||
            refused(src_file && !merge, "Merge bitmap source file only supported with --merge") ||
            refused(req->n_args != 2, "Expecting filename and bitmap name"))
                return EXIT_ERROR;
        filename = req->args[0];
        name = req->args[1];

        r = img_open(filename, fmt, IMG_WRITE, &img);
        if (r < 0)
                return EXIT_ERROR;
        if (act[0]->op == VDISK_BITMAP_OP_ADD && granularity &&
            (granularity < 512 || granularity > UINT32_MAX || (granularity & (granularity - 1)))) {
                /* qemu-img checks it first, whatever the format */
                log_error("Operation add on bitmap %s failed: Granularity must be power of 2 and at least 512",
                          name);
                return img_close_exit(&img, EXIT_ERROR);
        }
        if (!format_has_persistent_bitmaps(img.backend))
                return img_close_exit(&img, bitmap_refuse(act[0]->word, name, img.filename));
        vdisk_image *top = vdisk_disk_image(img.disk, 0);
        for (size_t i = 0; i < n; i++) {
                vdisk_clear_error();
                if (act[i]->op == VDISK_BITMAP_OP_MERGE && src_file) {
                        r = merge_from_file(top, name, src_file, src_fmt, req->actions[i].arg);
                        if (r < 0 && r != -EINVAL && !strstr(error_detail(r), req->actions[i].arg))
                                log_error("Could not merge bitmap '%s' into '%s': %s", req->actions[i].arg, name,
                                          error_detail(r));
                        if (r < 0)
                                return img_close_exit(&img, EXIT_ERROR);
                        continue;
                }
                vdisk_bitmap_change ch = {
                        .size = sizeof ch,
                        .op = act[i]->op,
                        .name = name,
                        .granularity = granularity,
                        .flags = disabled ? 0 : VDISK_BITMAP_AUTO,
                        .source = req->actions[i].arg,
                };
                r = vdisk_image_change_bitmap(top, &ch);
                if (r >= 0)
                        continue;
                log_error("Operation %s on bitmap %s failed: %s", act[i]->word, name, error_detail(r));
                return img_close_exit(&img, EXIT_ERROR);
        }
        return img_close_exit(&img, EXIT_OK);
}

/* convert --bitmaps: copies the persistent bitmaps of `src` into `dst`
 * (after the data: the copy's own writes are not recorded), each with its
 * granularity and enabled state. A source bitmap in use (inconsistent)
 * stops the copy unless skip_broken, which leaves it out. */
int convert_bitmaps_check(vdisk_image *src, const char *src_name, bool skip_broken) {
        vdisk_bitmap *v = NULL;
        size_t n = 0;
        int r;

        r = vdisk_image_list_bitmaps(src, &v, &n);
        if (r < 0) {
                log_error("Could not list the bitmaps of '%s': %s", src_name, error_detail(r));
                return r;
        }
        for (size_t i = 0; i < n && !skip_broken; i++)
                if (v[i].flags & VDISK_BITMAP_IN_USE) {
                        log_error("Cannot copy inconsistent bitmap '%s'", v[i].name);
                        log_error("Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it");
                        r = -EUCLEAN;
                        break;
                }
        vdisk_bitmaps_free(v, n);
        return r;
}

int convert_bitmaps_copy(vdisk_image *src, vdisk_image *dst, bool skip_broken) {
        vdisk_bitmap *v = NULL;
        size_t n = 0;
        int r;

        r = vdisk_image_list_bitmaps(src, &v, &n);
        if (r < 0) {
                log_error("Could not read the bitmaps of '%s': %s", vdisk_image_name(src), error_detail(r));
                return r;
        }
        for (size_t i = 0; i < n; i++) {
                uint8_t *bits = NULL;
                size_t len = 0;
                uint64_t g = 0;

                if ((v[i].flags & VDISK_BITMAP_IN_USE) && skip_broken)
                        continue;
                r = vdisk_image_read_bitmap(src, v[i].name, &bits, &len, &g);
                if (r < 0) {
                        log_error("Failed to read bitmap %s: %s", v[i].name, error_detail(r));
                        break;
                }
                vdisk_bitmap_change add = {
                        .size = sizeof add,
                        .op = VDISK_BITMAP_OP_ADD,
                        .name = v[i].name,
                        .granularity = v[i].granularity,
                        .flags = v[i].flags & VDISK_BITMAP_AUTO,
                };
                vdisk_bitmap_change merge = {
                        .size = sizeof merge,
                        .op = VDISK_BITMAP_OP_MERGE,
                        .name = v[i].name,
                        .bits = bits,
                        .bits_len = len,
                        .bits_granularity = g,
                };
                r = vdisk_image_change_bitmap(dst, &add);
                if (r >= 0)
                        r = vdisk_image_change_bitmap(dst, &merge);
                free(bits);
                if (r < 0) {
                        log_error("Failed to populate bitmap %s: %s", v[i].name, error_detail(r));
                        break;
                }
        }
        vdisk_bitmaps_free(v, n);
        return r;
}
