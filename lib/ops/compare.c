/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Content comparison (qemu-img compare): ranges both sides know to be zero are
 * not read, and are passed in steps of OP_STATUS_SPAN, so the cost follows
 * the data, not the virtual size; the larger disk's tail must read zeros
 * unless strict. */
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

/* One side of the comparison: the disk and the level it is read at
 * (ops/side.c). */
typedef op_side side;

static int tail_zero(side *s, uint64_t from, uint64_t to, uint64_t *ret_offset, vdisk_progress *p) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        while (from < to) {
                vdisk_extent e;
                size_t n;

                r = op_side_status(s, from, to - from, &e);
                if (r < 0)
                        return r;
                if (!(e.flags & VDISK_EXTENT_ZERO) || (e.flags & VDISK_EXTENT_DATA)) {
                        n = (size_t) MIN(e.length, (uint64_t) OP_BUFFER_SIZE);
                        if (!buf && !(buf = malloc(OP_BUFFER_SIZE)))
                                return vdisk_error(-ENOMEM, "out of memory");
                        r = op_side_read(s, buf, n, from);
                        if (r < 0)
                                return r;
                        for (size_t i = 0; i < n; i++)
                                if (buf[i]) {
                                        *ret_offset = ALIGN_DOWN(from + i, 512);
                                        return 1;
                                }
                        e.length = n;
                }
                r = progress_add(p, e.length);
                if (r < 0)
                        return r;
                from += e.length;
        }
        return 0;
}

static int compare_run(side *a, side *b, int strict, uint64_t *ret_offset, vdisk_progress *p) {
        _cleanup_free_ uint8_t *ba = NULL, *bb = NULL;
        uint64_t sa = a->size, sb = b->size, common, offset = 0, diff = 0;
        int r;

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
                uint64_t len = MIN(common - offset, OP_STATUS_SPAN);
                bool za, zb;

                r = op_side_status(a, offset, len, &ea);
                if (r < 0)
                        return r;
                r = op_side_status(b, offset, len, &eb);
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
                        /* Read a buffer at a time; where both read zeros,
                         * the whole common extent goes in one step. */
                        len = MIN(len, (uint64_t) OP_BUFFER_SIZE);
                        r = op_side_read(a, ba, (size_t) len, offset);
                        if (r < 0)
                                return r;
                        r = op_side_read(b, bb, (size_t) len, offset);
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
                r = tail_zero(sa > sb ? a : b, common, MAX(sa, sb), &diff, p);
                if (r != 0) {
                        if (r > 0 && ret_offset)
                                *ret_offset = diff;
                        return r;
                }
        }
        return 0;
}

int vdisk_compare(vdisk_disk *a, vdisk_disk *b, int strict, uint64_t *ret_offset, vdisk_progress *p) {
        side sa = { .d = a }, sb = { .d = b };
        int r;

        if (!a || !b || a == b)
                return vdisk_error(-EINVAL, "invalid arguments");
        r = op_side_begin(&sa, false);
        if (r >= 0)
                r = op_side_begin(&sb, false);
        if (r >= 0)
                r = compare_run(&sa, &sb, strict, ret_offset, p);
        op_side_end(&sa);
        op_side_end(&sb);
        if (r == 0)
                progress_finish(p);
        return r;
}
