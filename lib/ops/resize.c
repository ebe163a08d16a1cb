/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Resize (VDResize) of the top image. Growing: the new range reads zeros —
 * also in a differencing image whose parent is larger (it gets zero blocks
 * there). Shrinking: only when the cut-off range reads zeros, so nothing a
 * user wrote is lost — unless the caller consents (VDISK_RESIZE_DISCARD_DATA,
 * qemu-img's --shrink) for raw, whose shrink is a plain truncate. The new
 * range of a raw file can be preallocated (falloc, full), as qemu-img does.
 */
#include "core/core.h"

/* A resize may add companion files (a split VMDK grows by extent files):
 * for its duration the image's files handle opens and creates them through
 * the disk's resolver, as at open and create. */
int resize_image(vdisk_disk *d, unsigned level, uint64_t new_size, vdisk_progress *p) {
        vdisk_image *img = d->images[level];
        int r;

        files_unseal(img->files, d->resolver, vdisk_io_name(img->io));
        r = image_resize(img, new_size, p);
        files_seal(img->files);
        return r;
}

int vdisk_resize(vdisk_disk *d, uint64_t new_size, vdisk_progress *p) {
        return vdisk_resize_ex(d, new_size, NULL, p);
}

int vdisk_resize_ex(vdisk_disk *d, uint64_t new_size, const vdisk_resize_opts *opts, vdisk_progress *p) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        const char *mode = NULL;
        prealloc_mode pm = PREALLOC_OFF;
        uint32_t flags = 0;
        vdisk_image *img;
        uint64_t old;
        unsigned top;
        bool zero;
        int r;

        if (opts) {
                if (opts->size < offsetof(vdisk_resize_opts, flags) + sizeof(opts->flags))
                        return vdisk_error(-EINVAL, "vdisk_resize_opts.size not set");
                mode = opts->preallocation;
                flags = opts->flags;
        }

        if (!d || new_size == 0 || new_size > ((uint64_t) 1 << 62))
                return vdisk_error(-EINVAL, "invalid size %" PRIu64, new_size);
        l = disk_lock(d);
        if (d->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        /* The operations that run read the sizes they found. */
        r = disk_may_reshape(d);
        if (r < 0)
                return r;
        top = d->n - 1;
        if (d->images[top]->info_only)
                return vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(d->images[top]->io));
        r = disk_make_writable(d, top);
        if (r < 0)
                return r;
        img = d->images[top];
        old = img->size;
        r = prealloc_check_resize(img->be, mode, old, new_size, &pm);
        if (r < 0)
                return r;
        progress_set_total(p, 1);
        if (new_size == old) {
                progress_finish(p);
                return 0;
        }
        /* raw: qemu-img's --shrink is the consent to drop what lies there */
        if (new_size < old && !((flags & VDISK_RESIZE_DISCARD_DATA) && (img->be->flags & BACKEND_IDENTITY))) {
                r = rw_is_zero(d, (int) top, new_size, old - new_size, &zero);
                if (r < 0)
                        return r;
                if (!zero)
                        return vdisk_error(-ENOTEMPTY, "%s: cannot shrink to %" PRIu64 " bytes: "
                                           "the range to cut off holds data", vdisk_io_name(img->io), new_size);
        }
        r = image_flush(img);
        if (r < 0)
                return r;
        r = resize_image(d, top, new_size, p);
        if (r < 0)
                return r;
        /* the new range of the file (the modes the backend takes; a raw
         * file grows by exactly that range) */
        if (new_size > old && pm != PREALLOC_OFF && (img->be->prealloc_flags & PREALLOC_FILE) &&
            (img->be->flags & BACKEND_IDENTITY)) {
                r = prealloc_range(img->io, old, new_size, pm);
                if (r < 0)
                        return r;
        }
        if (new_size > old && top > 0) {
                r = rw_is_zero(d, (int) top - 1, old, new_size - old, &zero);
                if (r >= 0 && !zero)
                        r = rw_write_zeroes(d, top, (int) top - 1, old, new_size - old);
                if (r < 0)
                        return r;
        }
        r = image_flush(img);
        if (r < 0)
                return r;
        progress_finish(p);
        return 0;
}
