/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The lock model: who may change a chain while long operations run.
 *
 * Every call on a disk takes its mutex (d->lock). Short calls (read, write,
 * flush, metadata) hold it for the whole call. Long operations (copy, compare,
 * merge) hold it only for one chunk at a time (≤ OP_BUFFER_SIZE of I/O) and
 * release it in between, so a reader or writer of the same disk waits for one
 * chunk, not for the whole operation, and the progress callback runs without
 * any disk lock. An operation never holds two disk locks at once: a copy
 * reads a chunk under the source's lock and writes it under the
 * destination's, a compare reads each side under its own lock. So there is
 * no lock order between disks to get wrong, and copy A->B next to copy B->A
 * cannot deadlock.
 *
 * Between chunks an operation relies on the chain staying as it found it: the
 * images of the levels it uses stay where they are. It registers on the disk
 * (disk_op_begin) with the highest level it uses, and while it runs:
 *   - images at or above a level in use cannot be removed (close, close_top,
 *     merge): -EBUSY. Removing images only ever renumbers those above.
 *   - images can be added on top (open, create_diff): levels below do not
 *     move and d->images never moves in memory, so the operation reads what it
 *     read before. Not while a copy writes into this disk, though: that copy
 *     may have to remove its image again (d->pin), which must be the top.
 *   - operations starting on a disk a copy writes into use the levels below
 *     the copy's image: it is not complete, and it may go away.
 *   - sizes cannot change (resize): -EBUSY.
 * A merge is exclusive: it starts only when no operation runs, and while it
 * runs no other operation starts and the chain does not change; when it
 * removes the top, writes to the disk are refused (they would land in an
 * image whose data was already copied).
 *
 * Compact, check/repair and resize are driven by the backend's own walk over
 * its tables; a backend's state is not safe to change in the middle of that
 * walk, so they hold the lock for their whole run (they are refused while a
 * merge runs, resize also while any operation runs).
 *
 * Backends are single-threaded (every backend today): the disk lock is what
 * serializes calls into them, reads included. A backend that declares itself
 * thread-safe could let reads of one disk run in parallel; none does yet.
 */
#include "core/core.h"

bool disk_op_running(vdisk_disk *d) {
        if (d->exclusive)
                return true;
        for (unsigned i = 0; i < VDISK_CHAIN_MAX; i++)
                if (d->op_users[i] > 0)
                        return true;
        return false;
}

int disk_op_top(vdisk_disk *d, unsigned *ret) {
        unsigned top;

        if (d->n == 0)
                return vdisk_error(-EINVAL, "the container is empty");
        top = d->n - 1;
        if (d->pin >= 0 && (unsigned) d->pin <= top) {
                if (d->pin == 0)
                        return vdisk_error(-EBUSY, "%s: a copy is still creating this disk's base image",
                                           vdisk_io_name(d->images[0]->io));
                top = (unsigned) d->pin - 1;
        }
        *ret = top;
        return 0;
}

static const char *disk_name(vdisk_disk *d) {
        return d->n > 0 ? vdisk_io_name(d->images[d->n - 1]->io) : "(empty container)";
}

int disk_op_begin(vdisk_disk *d, op_kind kind, unsigned top) {
        assert(top < VDISK_CHAIN_MAX);
        if (d->exclusive)
                return vdisk_error(-EBUSY, "%s: a merge runs on this disk", disk_name(d));
        if (kind == OP_EXCLUSIVE) {
                if (disk_op_running(d))
                        return vdisk_error(-EBUSY, "%s: another operation runs on this disk", disk_name(d));
                d->exclusive = true;
                return 0;
        }
        d->op_users[top]++;
        return 0;
}

void disk_op_end(vdisk_disk *d, op_kind kind, unsigned top) {
        if (kind == OP_EXCLUSIVE) {
                assert(d->exclusive);
                d->exclusive = false;
                d->top_leaving = false;
                return;
        }
        assert(top < VDISK_CHAIN_MAX && d->op_users[top] > 0);
        d->op_users[top]--;
}

int disk_may_add(vdisk_disk *d) {
        if (d->exclusive)
                return vdisk_error(-EBUSY, "%s: a merge runs on this disk", disk_name(d));
        if (d->pin >= 0)
                return vdisk_error(-EBUSY, "%s: a copy is writing this disk's top image", disk_name(d));
        return 0;
}

int disk_may_remove(vdisk_disk *d, unsigned lo) {
        if (d->exclusive)
                return vdisk_error(-EBUSY, "%s: a merge runs on this disk", disk_name(d));
        for (unsigned i = lo; i < VDISK_CHAIN_MAX; i++)
                if (d->op_users[i] > 0)
                        return vdisk_error(-EBUSY, "%s: an operation is using the image (copy, compare)",
                                           lo < d->n ? vdisk_io_name(d->images[lo]->io) : disk_name(d));
        return 0;
}

int disk_no_merge(vdisk_disk *d) {
        if (d->exclusive)
                return vdisk_error(-EBUSY, "%s: a merge runs on this disk", disk_name(d));
        return 0;
}

int disk_may_reshape(vdisk_disk *d) {
        if (disk_op_running(d))
                return vdisk_error(-EBUSY, "%s: an operation runs on this disk", disk_name(d));
        return 0;
}
