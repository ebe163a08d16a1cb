/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* One disk of a two-disk operation (compare, copy into): registered as
 * running a shared operation at the level it is read or written at, so its
 * chain stays put; every step takes that disk's lock alone (core/guard.c),
 * never both disks' at once. */
#include "core/core.h"

int op_side_begin(op_side *s, bool write) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(s->d);
        int r;

        r = disk_op_top(s->d, &s->top);
        if (r < 0)
                return r;
        for (unsigned i = 0; i <= s->top; i++)
                if (s->d->images[i]->info_only)
                        return vdisk_error(-EPERM, "%s: opened for information only",
                                           vdisk_io_name(s->d->images[i]->io));
        if (write) {
                if (s->top + 1 != s->d->n)
                        return vdisk_error(-EBUSY, "%s: a copy is still writing the top image",
                                           vdisk_io_name(s->d->images[s->d->n - 1]->io));
                if (s->d->top_leaving)
                        return vdisk_error(-EBUSY, "%s: a merge is moving this image's data into its parent",
                                           vdisk_io_name(s->d->images[s->top]->io));
                r = disk_make_writable(s->d, s->top);
                if (r < 0)
                        return r;
        }
        r = disk_op_begin(s->d, OP_SHARED, s->top);
        if (r < 0)
                return r;
        s->registered = true;
        s->size = s->d->images[s->top]->size;
        return 0;
}

void op_side_end(op_side *s) {
        if (!s->registered)
                return;
        pthread_mutex_lock(&s->d->lock);
        disk_op_end(s->d, OP_SHARED, s->top);
        pthread_mutex_unlock(&s->d->lock);
        s->registered = false;
}

int op_side_status(op_side *s, uint64_t offset, uint64_t len, vdisk_extent *ret) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(s->d);

        return rw_status(s->d, 0, s->top, offset, len, ret);
}

int op_side_read(op_side *s, void *buf, size_t len, uint64_t offset) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(s->d);

        return rw_read(s->d, s->top, buf, len, offset);
}
