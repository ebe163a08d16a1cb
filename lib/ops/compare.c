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

/* One side of the comparison (ops/side.c), and where a failure on it is
 * recorded. */
typedef struct side {
        op_side o;
        unsigned index;                 /* 0: a, 1: b */
        vdisk_compare_result *res;
} side;

static int side_failed(side *s, int r, bool status, uint64_t offset) {
        s->res->failed_side = s->index;
        s->res->failed_status = status;
        s->res->failed_offset = offset;
        return r;
}

static int side_status(side *s, uint64_t offset, uint64_t len, vdisk_extent *ret) {
        int r = op_side_status(&s->o, offset, len, ret);

        return r < 0 ? side_failed(s, r, true, offset) : r;
}

static int side_read(side *s, void *buf, size_t len, uint64_t offset) {
        int r = op_side_read(&s->o, buf, len, offset);

        return r < 0 ? side_failed(s, r, false, offset) : r;
}

/* The allocation flags strict mode compares. */
#define STRICT_FLAGS (VDISK_EXTENT_ALLOCATED | VDISK_EXTENT_ZERO | VDISK_EXTENT_DATA)

static int tail_zero(side *s, uint64_t from, uint64_t to, uint64_t *ret_offset, vdisk_progress *p) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        while (from < to) {
                vdisk_extent e;
                size_t n;

                r = side_status(s, from, to - from, &e);
                if (r < 0)
                        return r;
                if (!(e.flags & VDISK_EXTENT_ZERO) || (e.flags & VDISK_EXTENT_DATA)) {
                        n = (size_t) MIN(e.length, (uint64_t) OP_BUFFER_SIZE);
                        if (!buf && !(buf = malloc(OP_BUFFER_SIZE)))
                                return vdisk_error(-ENOMEM, "out of memory");
                        r = side_read(s, buf, n, from);
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

/* Records a difference of kind `outcome` at `offset`: returns 1. */
static int differs(vdisk_compare_result *res, vdisk_compare_outcome outcome, uint64_t offset) {
        res->outcome = outcome;
        res->offset = offset;
        return 1;
}

static int compare_run(side *a, side *b, bool strict, vdisk_compare_result *res, vdisk_progress *p) {
        _cleanup_free_ uint8_t *ba = NULL, *bb = NULL;
        uint64_t sa = a->o.size, sb = b->o.size, common, offset = 0, diff = 0;
        int r;

        common = MIN(sa, sb);
        progress_set_total(p, MAX(sa, sb));
        if (strict && sa != sb)
                return differs(res, VDISK_COMPARE_SIZE, common);
        ba = malloc(OP_BUFFER_SIZE);
        bb = malloc(OP_BUFFER_SIZE);
        if (!ba || !bb)
                return vdisk_error(-ENOMEM, "out of memory");

        while (offset < common) {
                vdisk_extent ea, eb;
                uint64_t len = MIN(common - offset, OP_STATUS_SPAN);
                bool za, zb;

                r = side_status(a, offset, len, &ea);
                if (r < 0)
                        return r;
                r = side_status(b, offset, len, &eb);
                if (r < 0)
                        return r;
                len = MIN(ea.length, eb.length);
                za = (ea.flags & VDISK_EXTENT_ZERO) && !(ea.flags & VDISK_EXTENT_DATA);
                zb = (eb.flags & VDISK_EXTENT_ZERO) && !(eb.flags & VDISK_EXTENT_DATA);
                if (strict && ((ea.flags ^ eb.flags) & STRICT_FLAGS))
                        return differs(res, VDISK_COMPARE_BLOCK_STATUS, offset);
                if (!(za && zb)) {
                        /* Read a buffer at a time; where both read zeros,
                         * the whole common extent goes in one step. */
                        len = MIN(len, (uint64_t) OP_BUFFER_SIZE);
                        r = side_read(a, ba, (size_t) len, offset);
                        if (r < 0)
                                return r;
                        r = side_read(b, bb, (size_t) len, offset);
                        if (r < 0)
                                return r;
                        if (memcmp(ba, bb, (size_t) len) != 0)
                                return differs(res, VDISK_COMPARE_CONTENT,
                                               ALIGN_DOWN(offset + first_difference(ba, bb, (size_t) len), 512));
                }
                r = progress_add(p, len);
                if (r < 0)
                        return r;
                offset += len;
        }
        if (sa != sb) {
                r = tail_zero(sa > sb ? a : b, common, MAX(sa, sb), &diff, p);
                if (r > 0)
                        return differs(res, VDISK_COMPARE_CONTENT, diff);
                if (r < 0)
                        return r;
        }
        return 0;
}

int vdisk_compare_ex(vdisk_disk *a, vdisk_disk *b, uint32_t flags, vdisk_compare_result *ret,
                     vdisk_progress *p) {
        vdisk_compare_result res = { .size = sizeof(res) };
        side sa = { .o.d = a, .index = 0, .res = &res }, sb = { .o.d = b, .index = 1, .res = &res };
        int r;

        if (!a || !b || a == b || (flags & ~VDISK_COMPARE_STRICT) || (ret && ret->size < sizeof(res)))
                return vdisk_error(-EINVAL, "invalid arguments");
        r = op_side_begin(&sa.o, false);
        if (r >= 0)
                r = op_side_begin(&sb.o, false);
        if (r >= 0) {
                res.size_a = sa.o.size;
                res.size_b = sb.o.size;
                r = compare_run(&sa, &sb, flags & VDISK_COMPARE_STRICT, &res, p);
        }
        op_side_end(&sa.o);
        op_side_end(&sb.o);
        if (r == 0)
                progress_finish(p);
        if (ret)
                *ret = res;
        return r;
}

int vdisk_compare(vdisk_disk *a, vdisk_disk *b, int strict, uint64_t *ret_offset, vdisk_progress *p) {
        vdisk_compare_result res = { .size = sizeof(res) };
        int r;

        r = vdisk_compare_ex(a, b, strict ? VDISK_COMPARE_STRICT : 0, &res, p);
        if (r > 0 && ret_offset)
                *ret_offset = res.offset;
        return r;
}
