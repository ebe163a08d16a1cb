/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What vdisk-img says where a format has no internal snapshots or no
 * persistent bitmaps: qemu-img 7.2's texts and exit codes, which consumers
 * match, kept in one place per capability. The formats that have them plug
 * in through format_has_internal_snapshots() / format_has_persistent_bitmaps().
 * The `bitmap` verb itself is img-bitmap.c.
 */

#include <errno.h>
#include <string.h>

#include "img.h"

/* ---------------------------------------------------------------- capabilities */

bool format_has_internal_snapshots(const vdisk_backend_info *info) {
        /* qemu-img creates, applies and deletes internal snapshots in qcow2
         * only; vdisk lists (and reads) the ones of other formats too. */
        return info && streq(info->qemu_name, "qcow2");
}

bool format_has_persistent_bitmaps(const vdisk_backend_info *info) {
        return info && streq(info->qemu_name, "qcow2");
}

/* ---------------------------------------------------------------- refusals */

int bitmap_refuse(const char *op, const char *bitmap, const char *filename) {
        /* qemu names its internal node ("#block123"); the file is the
         * stable name of the same thing. */
        if (streq(op, "add"))
                log_error("Operation add on bitmap %s failed: Can't store persistent bitmaps to %s: %s",
                          bitmap, filename, strerror(EOPNOTSUPP));
        else
                log_error("Operation %s on bitmap %s failed: Dirty bitmap '%s' not found", op, bitmap, bitmap);
        return EXIT_ERROR;
}
