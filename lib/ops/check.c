/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Check and repair: the backend inspects its metadata and fills a report;
 * the tools map it to qemu-img's exit codes. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

void vdisk_check_report_clear(vdisk_check_report *r) {
        size_t size;

        if (!r)
                return;
        size = r->size;
        vdisk_strv_free(r->messages);
        memset(r, 0, sizeof *r);
        r->size = size;
}

int vdisk_check(vdisk_disk *d, unsigned index, uint32_t flags, vdisk_check_report *ret, vdisk_progress *p) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int repair = (flags & (VDISK_CHECK_REPAIR_LEAKS | VDISK_CHECK_REPAIR_ALL)) && !(flags & VDISK_CHECK_DRY_RUN);
        vdisk_image *img;
        int r, fr;

        if (!d || !ret || ret->size < sizeof(vdisk_check_report))
                return vdisk_error(-EINVAL, "invalid arguments (report size not set?)");
        l = disk_lock(d);
        r = disk_no_merge(d);
        if (r < 0)
                return r;
        if (index >= d->n)
                return vdisk_error(-EINVAL, "image index %u out of range", index);
        img = d->images[index];
        vdisk_check_report_clear(ret);
        if (!image_can_check(img))
                return vdisk_error(-EOPNOTSUPP, "%s: %s images do not support checks", vdisk_io_name(img->io),
                                   img->be->info.name);
        if (repair) {
                r = disk_make_writable(d, index);
                if (r == -EPERM || (r < 0 && !vdisk_last_error()[0]))
                        return vdisk_error(-EROFS, "%s: image is read-only: cannot repair",
                                           vdisk_io_name(img->io));
                if (r < 0)
                        return r;
        }
        progress_set_total(p, 1);
        r = image_check(img, flags, ret, p);
        if (repair) {
                fr = image_flush(img);
                image_refresh(img);
                if (r >= 0 && fr < 0)
                        r = fr;
        }
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        progress_finish(p);
        return 0;
}
