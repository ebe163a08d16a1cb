/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Rebase (qemu-img rebase): the top image of a disk gets another parent.
 *
 * Safe mode first makes the top read through the new chain what it read
 * through the old one: wherever the top does not define the data and the
 * two chains differ, the old chain's sectors are written into the top.
 * The old chain's block status is asked first; where it reads zeros the new
 * chain's is asked too, and a range both read as zeros is passed without a
 * read, so the cost follows the data, not the virtual size. Only then, after
 * a flush, does the link switch: a failure or cancel before it leaves the
 * top on its old chain, reading as before (what was copied there equals what
 * the old chain shows below it). Unsafe mode switches the link alone.
 *
 * Both disks are registered as running a shared operation while the data
 * moves (ops/side.c), each step taking one disk's lock alone. */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

typedef struct rebase_ctx {
        op_side top;                    /* d at its top: the old chain, written */
        op_side new;                    /* the new chain; !new.d: none */
        vdisk_rebase_result *res;
        vdisk_progress *p;
} rebase_ctx;

static int failed(rebase_ctx *c, int r, vdisk_rebase_step step, unsigned side, uint64_t offset) {
        c->res->failed_step = step;
        c->res->failed_side = side;
        c->res->failed_offset = offset;
        return r;
}

static int top_write(rebase_ctx *c, const void *buf, size_t len, uint64_t offset) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(c->top.d);
        int r = rw_write(c->top.d, c->top.top, buf, len, offset);

        return r < 0 ? failed(c, r, VDISK_REBASE_STEP_WRITE, 0, offset) : 0;
}

/* What the new chain reads at [offset, offset+len): zeros past its end or
 * without a new chain. */
static int new_read(rebase_ctx *c, uint8_t *buf, size_t len, uint64_t offset) {
        size_t n = 0;
        int r;

        memset(buf, 0, len);
        if (c->new.d && offset < c->new.size)
                n = (size_t) MIN((uint64_t) len, c->new.size - offset);
        if (n == 0)
                return 0;
        r = op_side_read(&c->new, buf, n, offset);
        return r < 0 ? failed(c, r, VDISK_REBASE_STEP_READ, 1, offset) : 0;
}

/* Does the new chain read zeros from `offset` on? *ret_len: how far that
 * is known to hold (at most len). */
static int new_is_zero(rebase_ctx *c, uint64_t offset, uint64_t len, bool *ret, uint64_t *ret_len) {
        vdisk_extent e;
        int r;

        *ret = true;
        *ret_len = len;
        if (!c->new.d || offset >= c->new.size)
                return 0;
        r = op_side_status(&c->new, offset, MIN(len, c->new.size - offset), &e);
        if (r < 0)
                return failed(c, r, VDISK_REBASE_STEP_STATUS, 1, offset);
        *ret = (e.flags & VDISK_EXTENT_ZERO) && !(e.flags & VDISK_EXTENT_DATA);
        if (e.length > 0)
                *ret_len = MIN(len, e.length);
        return 0;
}

/* Writes into the top each run of sectors of `old` that differs from `new`
 * (`n` bytes at `offset`). Zeros are written as data: a discard would let
 * the new chain show through. */
static int write_differences(rebase_ctx *c, const uint8_t *old, const uint8_t *new, size_t n, uint64_t offset) {
        for (size_t s = 0; s < n;) {
                size_t run;
                int r;

                if (memcmp(old + s, new + s, MIN((size_t) VDISK_SECTOR_SIZE, n - s)) == 0) {
                        s += VDISK_SECTOR_SIZE;
                        continue;
                }
                for (run = s; run < n; run += VDISK_SECTOR_SIZE)
                        if (memcmp(old + run, new + run, MIN((size_t) VDISK_SECTOR_SIZE, n - run)) == 0)
                                break;
                run = MIN(run, n);
                r = top_write(c, old + s, run - s, offset + s);
                if (r < 0)
                        return r;
                s = run;
        }
        return 0;
}

static int copy_differences(rebase_ctx *c) {
        _cleanup_free_ uint8_t *old_buf = NULL, *new_buf = NULL;
        uint64_t size = c->top.size, offset = 0;
        int r;

        progress_set_total(c->p, size);
        old_buf = malloc(OP_BUFFER_SIZE);
        new_buf = malloc(OP_BUFFER_SIZE);
        if (!old_buf || !new_buf)
                return vdisk_error(-ENOMEM, "out of memory");

        while (offset < size) {
                vdisk_extent e;
                size_t n;

                r = progress_check(c->p);
                if (r < 0)
                        return r;
                r = op_side_status(&c->top, offset, MIN(size - offset, OP_STATUS_SPAN), &e);
                if (r < 0)
                        return failed(c, r, VDISK_REBASE_STEP_STATUS, 0, offset);
                if (e.length == 0 || e.length > size - offset)
                        e.length = size - offset;
                if (e.depth != 0 && (e.flags & VDISK_EXTENT_ZERO) && !(e.flags & VDISK_EXTENT_DATA)) {
                        bool zero;

                        r = new_is_zero(c, offset, e.length, &zero, &e.length);
                        if (r < 0)
                                return r;
                        if (zero)
                                e.depth = 0;    /* zeros in both chains: nothing to copy */
                }
                if (e.depth == 0) {
                        /* The top defines this range, or both chains read zeros. */
                        r = progress_add(c->p, e.length);
                        if (r < 0)
                                return r;
                        offset += e.length;
                        continue;
                }

                n = (size_t) MIN(e.length, (uint64_t) OP_BUFFER_SIZE);
                r = op_side_read(&c->top, old_buf, n, offset);
                if (r < 0)
                        return failed(c, r, VDISK_REBASE_STEP_READ, 0, offset);
                r = new_read(c, new_buf, n, offset);
                if (r < 0)
                        return r;
                r = write_differences(c, old_buf, new_buf, n, offset);
                if (r < 0)
                        return r;
                r = progress_add(c->p, n);
                if (r < 0)
                        return r;
                offset += n;
        }
        return 0;
}

/* Is the file of `img` one of the images of `chain`? Files without an
 * identity (memory ios) are told apart by their io. */
static bool chain_holds(vdisk_disk *chain, vdisk_image *img) {
        io_identity a, b;
        bool have = io_get_identity(img->io, &a) >= 0;

        for (unsigned i = 0; i < vdisk_disk_count(chain); i++) {
                vdisk_io *io = vdisk_disk_image(chain, i)->io;

                if (io == img->io || (have && io_get_identity(io, &b) >= 0 && io_identity_equal(&a, &b)))
                        return true;
        }
        return false;
}

int vdisk_image_set_parent(vdisk_image *child, vdisk_image *parent, const char *name, const char *format) {
        const char *pname = NULL;
        uint8_t uuid[16] = {}, mod_uuid[16] = {};
        bool by_name;
        uint32_t cid;
        int r;

        if (!child || child == parent)
                return vdisk_error(-EINVAL, "invalid arguments");
        by_name = vdisk_image_get_parent_name(child, &pname, NULL) >= 0 && pname && *pname;
        if (parent) {
                r = vdisk_image_get_uuid(parent, uuid);
                if (r == -EOPNOTSUPP && !by_name)
                        return vdisk_error(r, "the backing file has no UUID");
                if (r < 0 && r != -EOPNOTSUPP)
                        return r;
                if (by_name && !name)
                        return vdisk_error(-EINVAL, "%s names its parent: the new parent's name is needed",
                                           vdisk_io_name(child->io));
                if (vdisk_image_get_modification_uuid(parent, mod_uuid) < 0)
                        memset(mod_uuid, 0, sizeof mod_uuid);
        }
        r = image_set_link(child, uuid, by_name && parent ? name : NULL, format);
        if (r < 0)
                return r;
        r = vdisk_image_set_parent_modification_uuid(child, mod_uuid);
        if (r < 0 && r != -EOPNOTSUPP)
                return r;
        if (by_name && parent && vdisk_image_get_parent_content_id(child, NULL) >= 0) {
                if (vdisk_image_get_content_id(parent, &cid) < 0)
                        cid = VDISK_CONTENT_ID_NONE;
                r = vdisk_image_set_parent_content_id(child, cid);
                if (r < 0 && r != -EOPNOTSUPP)
                        return r;
        }
        return 0;
}

int vdisk_rebase(vdisk_disk *d, vdisk_disk *backing, const vdisk_rebase_opts *opts, vdisk_rebase_result *ret,
                 vdisk_progress *p) {
        vdisk_rebase_result res = { .size = sizeof(res) };
        rebase_ctx c = { .top.d = d, .new.d = backing, .res = &res, .p = p };
        uint32_t flags = opts ? opts->flags : 0;
        const char *name = opts ? opts->parent_name : NULL, *format = opts ? opts->parent_format : NULL;
        vdisk_image *top, *parent = NULL;
        int r;

        if (!d || d == backing || vdisk_disk_count(d) == 0 || (backing && vdisk_disk_count(backing) == 0) ||
            (opts && opts->size < sizeof(*opts)) || (flags & ~VDISK_REBASE_UNSAFE) ||
            (ret && ret->size < sizeof(res)))
                return vdisk_error(-EINVAL, "invalid arguments");
        top = vdisk_disk_image(d, vdisk_disk_count(d) - 1);
        if (backing) {
                parent = vdisk_disk_image(backing, vdisk_disk_count(backing) - 1);
                if (!format)
                        format = vdisk_image_backend(parent)->qemu_name;
                if (chain_holds(backing, top)) {
                        r = vdisk_error(-ELOOP, "'%s' would become its own ancestor", vdisk_io_name(top->io));
                        goto finish;
                }
        }

        if (!(flags & VDISK_REBASE_UNSAFE)) {
                r = op_side_begin(&c.top, true);
                if (r >= 0 && backing)
                        r = op_side_begin(&c.new, false);
                if (r >= 0)
                        r = copy_differences(&c);
                op_side_end(&c.top);
                op_side_end(&c.new);
                if (r < 0)
                        goto finish;
                /* Everything copied is durable before the link switches. */
                r = vdisk_disk_flush(d);
                if (r < 0) {
                        failed(&c, r, VDISK_REBASE_STEP_FLUSH, 0, 0);
                        goto finish;
                }
        }

        r = vdisk_image_set_parent(top, parent, name, format);
        if (r >= 0)
                r = vdisk_disk_flush(d);
        if (r < 0)
                failed(&c, r, VDISK_REBASE_STEP_LINK, 0, 0);
        else
                progress_finish(p);
finish:
        if (ret)
                *ret = res;
        return r;
}
