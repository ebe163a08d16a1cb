/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdisk-img dd: qemu-img 7.2's dd.
 *
 *   dd [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output
 *
 * The output is always created (an existing file is replaced), in the output
 * format, with qemu-img's size: the input's size, cut to count*bs when count
 * is given, minus skip*bs (count counts from the start of the input, not
 * from the skipped offset: qemu-img's arithmetic, kept). The bytes are the
 * input's from skip*bs on. The copy goes through vdisk_copy (its src_offset),
 * so ranges of zeros or holes in the input stay unallocated in the output;
 * qemu-img writes every block, the content is the same.
 */

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "img.h"

/* An operand "name=...": a number up to max, or (max 0) a file name. */
typedef struct DdOperand {
        const char *name;
        uint64_t max;
        uint64_t value;
        const char *file;
        bool given;
} DdOperand;

/* "bs=N", "count=N", "skip=N": qemu-img's messages for bad values. */
static int dd_number(DdOperand *o, const char *arg) {
        uint64_t max = o->max;
        int r = parse_size(arg, &o->value);

        if (r < 0 && r != -ERANGE) {
                log_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", o->name);
                log_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
                return -EINVAL;
        }
        if (refused(r == -ERANGE || o->value > max || (max != UINT64_MAX && o->value == 0),
                    "Invalid %s specified. Must be between 1 and %" PRIu64 ".", o->name, max))
                return -EINVAL;
        o->given = true;
        return 0;
}

/* Writes zeros over [from, to) of the disk (the part of the last sector that
 * qemu-img leaves zero when bs*count is not a whole number of sectors). */
static int zero_tail(vdisk_disk *d, uint64_t from, uint64_t to) {
        uint8_t zeros[VDISK_SECTOR_SIZE] = {};

        if (from >= to)
                return 0;
        assert(to - from <= sizeof(zeros));
        return vdisk_disk_write(d, zeros, (size_t) (to - from), from);
}

int cmd_dd(Request *req) {
        DdOperand ops[] = {
                { "bs", INT32_MAX, 512 }, { "count", UINT64_MAX }, { "skip", UINT64_MAX }, { "if" }, { "of" },
        };
        const DdOperand *bs = &ops[0], *count = &ops[1], *skip = &ops[2];
        const char *fmt = req->format, *out_fmt = req->out_format, *in, *out;
        _cleanup_(vdisk_io_unrefp) vdisk_io *out_io = NULL;
        _cleanup_(vdisk_disk_unrefp) vdisk_disk *dst = NULL;
        _cleanup_(vdisk_resolver_unrefp) vdisk_resolver *create_res = NULL;
        const vdisk_backend_info *out_info;
        uint64_t in_size, size, offset = 0;
        bool created = false, skip_past_end = false;
        ProgressBar bar = {};
        Img src = {};
        int r, ex = EXIT_ERROR;

        for (unsigned i = 0; i < req->n_args; i++) {
                const char *arg = req->args[i], *eq = strchr(arg, '=');
                size_t klen = eq ? (size_t) (eq - arg) : strlen(arg);
                DdOperand *o = NULL;

                for (size_t k = 0; eq && k < ELEMENTSOF(ops); k++)
                        if (strlen(ops[k].name) == klen && strncmp(arg, ops[k].name, klen) == 0)
                                o = &ops[k];
                if (refused(!o, "unrecognized operand %.*s", (int) klen, arg))
                        return EXIT_ERROR;
                if (o->max == 0)
                        o->file = eq + 1;
                else if (dd_number(o, eq + 1) < 0)
                        return EXIT_ERROR;
        }
        in = ops[3].file;
        out = ops[4].file;
        if (refused(!in || !out, "Must specify both input and output files"))
                return EXIT_ERROR;

        r = img_open(in, fmt, IMG_CHAIN, &src);
        if (r < 0)
                return EXIT_ERROR;
        out_info = format_lookup(out_fmt);
        if (!out_info)
                return img_close_exit(&src, EXIT_ERROR);
        if (refused(!(out_info->caps & (VDISK_CAP_CREATE_DYNAMIC | VDISK_CAP_CREATE_FIXED)),
                    "Format driver '%s' does not support image creation", out_info->qemu_name))
                return img_close_exit(&src, EXIT_ERROR);
        /* qemu-img would truncate its own input before reading it. */
        if (chain_refuse(src.disk, out, "The output is one of the input images") < 0)
                return img_close_exit(&src, EXIT_ERROR);

        /* qemu-img's size arithmetic (overflows mean "past the end"). */
        in_size = vdisk_disk_size(src.disk);
        size = in_size;
        if (count->given && count->value <= INT64_MAX / bs->value && count->value * bs->value < size)
                size = count->value * bs->value;
        if (skip->given) {
                if (skip->value > INT64_MAX / bs->value || size < skip->value * bs->value)
                        skip_past_end = true;
                else
                        offset = skip->value * bs->value;
        }
        size = skip_past_end ? 0 : size - offset;

        if (progress_bar_init(&bar, false) < 0)
                return img_close_exit(&src, EXIT_ERROR);

        vdisk_clear_error();
        r = vdisk_io_open_path(out, VDISK_PATH_WRITE | VDISK_PATH_CREATE | VDISK_PATH_TRUNC | VDISK_PATH_DIRECT,
                               &out_io);
        if (r < 0) {
                log_error("%s: error while creating output image: Could not create '%s': %s", out, out,
                          strerror(-r));
                goto finish;
        }
        created = true;
        r = vdisk_resolver_new_path(NULL, &create_res);
        if (r >= 0)
                r = vdisk_disk_new(&dst);
        if (r < 0) {
                log_error("Out of memory");
                goto finish;
        }

        vdisk_copy_opts copts = {
                .size = sizeof(copts),
                .new_size = ALIGN_UP(size, (uint64_t) VDISK_SECTOR_SIZE),
                .create = {
                        .size = sizeof(vdisk_create_opts),
                        .resolver = create_res,
                },
                .from_same = -1,
                .to_same = -1,
                .src_offset = offset,
        };

        vdisk_clear_error();
        if (size == 0) {
                /* Nothing to copy. An empty file is an empty raw image; the
                 * other formats take no size 0 (the library says so). */
                if (!streq(out_info->qemu_name, "raw"))
                        r = vdisk_disk_create_base(dst, out_io, out_info->name, 0, &copts.create);
        } else {
                r = vdisk_copy(src.disk, dst, out_io, out_info->name, &copts, bar.p);
                if (r >= 0 && copts.new_size > size && offset + size < in_size) {
                        vdisk_clear_error();
                        r = zero_tail(dst, size, copts.new_size);
                        if (r >= 0)
                                r = vdisk_disk_flush(dst);
                }
        }
        if (r < 0) {
                if (r == -ECANCELED)
                        log_error("Copy of '%s' to '%s' cancelled", in, out);
                else
                        log_error("%s: error while writing to output image file: %s", out, error_detail(r));
                goto finish;
        }
        if (skip_past_end)
                log_error("%s: cannot skip to specified offset", in);
        ex = EXIT_OK;

finish:
        progress_bar_done(&bar, ex == EXIT_OK);
        if (created)
                ex = new_image_finish(&dst, &out_io, out, true, ex);
        return img_close_exit(&src, ex);
}
