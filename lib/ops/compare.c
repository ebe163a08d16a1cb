/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Content comparison (qemu-img compare): ranges both sides know to be zero are
 * not read; the larger disk's tail must read zeros unless strict. */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

static uint64_t first_difference(const uint8_t *a, const uint8_t *b, size_t n) {
        size_t i = 0;

        while (i + 4096 <= n && memcmp(a + i, b + i, 4096) == 0)
                i += 4096;
        while (i < n && a[i] == b[i])
                i++;
        return i;
}

static int tail_zero(vdisk_disk *d, uint64_t from, uint64_t to, uint64_t *ret_offset) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        while (from < to) {
                vdisk_extent e;
                size_t n;

                r = rw_status(d, 0, d->n - 1, from, to - from, &e);
                if (r < 0)
                        return r;
                if (!(e.flags & VDISK_EXTENT_ZERO) || (e.flags & VDISK_EXTENT_DATA)) {
                        n = (size_t) MIN(e.length, (uint64_t) OP_BUFFER_SIZE);
                        if (!buf && !(buf = malloc(OP_BUFFER_SIZE)))
                                return vdisk_error(-ENOMEM, "out of memory");
                        r = rw_read(d, d->n - 1, buf, n, from);
                        if (r < 0)
                                return r;
                        for (size_t i = 0; i < n; i++)
                                if (buf[i]) {
                                        *ret_offset = ALIGN_DOWN(from + i, 512);
                                        return 1;
                                }
                        e.length = n;
                }
                from += e.length;
        }
        return 0;
}

int vdisk_compare(vdisk_disk *a, vdisk_disk *b, int strict, uint64_t *ret_offset, vdisk_progress *p) {
        _cleanup_(disk_unlockp) vdisk_disk *la = NULL, *lb = NULL;
        _cleanup_free_ uint8_t *ba = NULL, *bb = NULL;
        uint64_t sa, sb, common, offset = 0, diff = 0;
        int r;

        if (!a || !b || a == b)
                return vdisk_error(-EINVAL, "invalid arguments");
        la = disk_lock(a);
        lb = disk_lock(b);
        if (a->n == 0 || b->n == 0)
                return vdisk_error(-EINVAL, "empty container");
        sa = a->images[a->n - 1]->size;
        sb = b->images[b->n - 1]->size;
        common = MIN(sa, sb);
        progress_set_total(p, MAX(sa, sb));
        if (strict && sa != sb) {
                if (ret_offset)
                        *ret_offset = common;
                return 1;
        }
        ba = malloc(OP_BUFFER_SIZE);
        bb = malloc(OP_BUFFER_SIZE);
        if (!ba || !bb)
                return vdisk_error(-ENOMEM, "out of memory");

        while (offset < common) {
                vdisk_extent ea, eb;
                uint64_t len = MIN(common - offset, (uint64_t) OP_BUFFER_SIZE);
                bool za, zb;

                r = rw_status(a, 0, a->n - 1, offset, len, &ea);
                if (r < 0)
                        return r;
                r = rw_status(b, 0, b->n - 1, offset, len, &eb);
                if (r < 0)
                        return r;
                len = MIN(ea.length, eb.length);
                za = (ea.flags & VDISK_EXTENT_ZERO) && !(ea.flags & VDISK_EXTENT_DATA);
                zb = (eb.flags & VDISK_EXTENT_ZERO) && !(eb.flags & VDISK_EXTENT_DATA);
                if (strict && (ea.flags & VDISK_EXTENT_ALLOCATED) != (eb.flags & VDISK_EXTENT_ALLOCATED)) {
                        if (ret_offset)
                                *ret_offset = offset;
                        return 1;
                }
                if (!(za && zb)) {
                        r = rw_read(a, a->n - 1, ba, (size_t) len, offset);
                        if (r < 0)
                                return r;
                        r = rw_read(b, b->n - 1, bb, (size_t) len, offset);
                        if (r < 0)
                                return r;
                        if (memcmp(ba, bb, (size_t) len) != 0) {
                                if (ret_offset)
                                        *ret_offset = ALIGN_DOWN(offset + first_difference(ba, bb, (size_t) len), 512);
                                return 1;
                        }
                }
                r = progress_add(p, len);
                if (r < 0)
                        return r;
                offset += len;
        }
        if (sa != sb) {
                r = tail_zero(sa > sb ? a : b, common, MAX(sa, sb), &diff);
                if (r != 0) {
                        if (r > 0 && ret_offset)
                                *ret_offset = diff;
                        return r;
                }
        }
        progress_finish(p);
        return 0;
}
