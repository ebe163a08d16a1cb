/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Amend (qemu-img amend): changes format options of the top image in place
 * (qcow2: compat, refcount width, lazy refcounts, the data file name). The backend does the
 * work; "size" is a resize, done here after the backend's part, as qemu's
 * amend does it.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

int vdisk_amend(vdisk_disk *d, const char *const *options, vdisk_progress *p) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        _cleanup_free_ const char **rest = NULL;
        const char *size_arg = NULL;
        vdisk_image *img;
        uint64_t new_size = 0;
        size_t n = 0, k = 0;
        unsigned top;
        int r;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        for (const char *const *o = options; o && o[0]; o += 2)
                n++;
        if (n == 0)
                return vdisk_error(-EINVAL, "Must specify options (-o)");
        rest = calloc(2 * n + 1, sizeof *rest);
        if (!rest)
                return vdisk_error(-ENOMEM, "out of memory");
        for (const char *const *o = options; o[0]; o += 2) {
                if (!o[1])
                        return vdisk_error(-EINVAL, "option '%s' has no value", o[0]);
                if (strcmp(o[0], "size") == 0) {
                        char *end;

                        size_arg = o[1];
                        new_size = strtoull(size_arg, &end, 10);
                        if (!size_arg[0] || *end || new_size == 0 || new_size > ((uint64_t) 1 << 62))
                                return vdisk_error(-EINVAL, "invalid size '%s'", size_arg);
                        continue;
                }
                rest[k++] = o[0];
                rest[k++] = o[1];
        }

        l = disk_lock(d);
        if (d->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        r = disk_may_reshape(d);
        if (r < 0)
                return r;
        top = d->n - 1;
        img = d->images[top];
        if (!img->be->amend)
                return vdisk_error(-EOPNOTSUPP, "Format driver '%s' does not support option amendment",
                                   img->be->info.qemu_name);
        /* backing_file and backing_fmt go to the backend: qcow2 takes them
         * when they name what the image has (qemu-img 7.2's rule) */
        for (size_t i = 0; i < k; i += 2)
                if (!vdisk_backend_option(&img->be->info, rest[i]))
                        return vdisk_error(-EINVAL, "Invalid parameter '%s'", rest[i]);
        /* the value checks of creation, for all but the backing file's keys */
        for (size_t i = 0; i < k; i += 2) {
                const char *one[3] = { rest[i], rest[i + 1], NULL };

                if (strcmp(rest[i], "backing_file") == 0 || strcmp(rest[i], "backing_fmt") == 0)
                        continue;
                r = backend_check_options(img->be, one);
                if (r < 0)
                        return r;
        }
        if (img->info_only)
                return vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io));
        r = disk_make_writable(d, top);
        if (r < 0)
                return r == -EPERM ? vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io)) : r;
        img = d->images[top];
        r = image_flush(img);
        if (r < 0)
                return r;
        if (k > 0) {
                r = image_amend(img, rest, p);
                if (r < 0)
                        return r;
                r = image_flush(img);
                if (r < 0)
                        return r;
        }
        if (size_arg && new_size != img->size) {
                /* the resize's own checks and messages; it takes the lock again */
                pthread_mutex_unlock(&l->lock);
                l = NULL;
                return vdisk_resize(d, new_size, p);
        }
        progress_finish(p);
        return 0;
}
