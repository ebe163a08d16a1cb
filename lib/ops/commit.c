/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Commit (qemu-img commit): the top's data goes into an image below it
 * (ops/merge.c), then the top is made valid on that image again, so that no
 * file is left naming a parent that changed under it (a VMDK's parentCID):
 *
 * - kept (qemu-img commit -d, -b): the merge relinks the top onto `to`
 *   instead of dropping it: one metadata write, then a flush;
 * - emptied (the default): a new differencing image with the top's identity
 *   (format, size, cluster size, comment, UUID, modification UUID, VMDK CID)
 *   is written over `to` into a file the caller made; the caller renames it
 *   over the top's file. The library opens no file by itself (vdiskd has
 *   fds only), so the file and the rename stay with the caller; the old top
 *   is never written, and until the rename its path holds a valid image.
 *
 * Both name the parent by one rule (resolver_parent_name()).
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

typedef struct top_identity {
        const char *format;
        bool have_uuid, have_mod_uuid, have_cid, have_parent_cid;
        uint8_t uuid[16], mod_uuid[16];
        uint32_t cid;
        char *comment;
        uint32_t cluster_size;
        uint64_t size;
        char *parent_name, *parent_abs;
        vdisk_io *io;                   /* the old top's */
} top_identity;

static void top_identity_done(top_identity *id) {
        free(id->comment);
        free(id->parent_name);
        free(id->parent_abs);
        vdisk_io_unref(id->io);
}

/* What the emptied top keeps of the old one, and how it names `to`
 * (computed from the old top's io: the new file's io carries its name but
 * is another file). Not under the lock: the getters take it. */
static int top_identity_get(vdisk_disk *d, unsigned to, top_identity *id) {
        vdisk_image *top = vdisk_disk_image(d, vdisk_disk_count(d) - 1);
        vdisk_image_info ii = { .size = sizeof(ii) };
        const char *comment = NULL;
        int r;

        id->format = top->be->info.name;
        id->have_uuid = vdisk_image_get_uuid(top, id->uuid) >= 0;
        id->have_mod_uuid = vdisk_image_get_modification_uuid(top, id->mod_uuid) >= 0;
        id->have_cid = vdisk_image_get_content_id(top, &id->cid) >= 0;
        id->have_parent_cid = vdisk_image_get_parent_content_id(top, &(uint32_t) { 0 }) >= 0;
        if (vdisk_image_get_comment(top, &comment) >= 0 && comment && *comment &&
            !(id->comment = strdup(comment)))
                return vdisk_error(-ENOMEM, "out of memory");
        if (vdisk_image_get_info(top, &ii) >= 0) {
                id->cluster_size = ii.cluster_size;
                id->size = ii.virtual_size;
        }
        vdisk_clear_error();
        id->io = vdisk_io_ref(top->io);
        r = resolver_parent_name(d->resolver, top->io, vdisk_disk_image(d, to)->io, &id->parent_name,
                                 &id->parent_abs);
        if (r < 0)
                return vdisk_error(r, "out of memory");
        return 0;
}

/* Writes the emptied top into `io` over the disk's top (`to` after the
 * merge); on failure the disk is left without it. */
static int write_empty_top(vdisk_disk *d, vdisk_io *io, const top_identity *id) {
        vdisk_image *parent = vdisk_disk_image(d, vdisk_disk_count(d) - 1), *top;
        vdisk_create_opts opts = {
                .size = sizeof(opts),
                .block_size = id->cluster_size,
                .diff_size = id->size,
                .comment = id->comment,
                .uuid = id->have_uuid ? id->uuid : NULL,
                .parent_name = id->parent_name,
                .parent_format = vdisk_image_backend(parent)->qemu_name,
        };
        int r;

        r = vdisk_disk_create_diff(d, io, id->format, &opts);
        if (r < 0)
                return r;
        top = vdisk_disk_image(d, vdisk_disk_count(d) - 1);
        /* The view through the top did not change: it keeps its modification
         * UUID and VMDK CID, so children of the top still match it. */
        if (id->have_mod_uuid) {
                r = vdisk_image_set_modification_uuid(top, id->mod_uuid);
                if (r == -EOPNOTSUPP)
                        r = 0;
        }
        if (r >= 0 && id->have_cid) {
                r = vdisk_image_set_content_id(top, id->cid);
                if (r == -EOPNOTSUPP)
                        r = 0;
        }
        if (r >= 0)
                r = vdisk_disk_flush(d);
        if (r < 0) {
                _cleanup_free_ char *msg = strdup(vdisk_last_error());

                (void) vdisk_disk_close_top(d);
                return vdisk_error(r, "%s", msg ?: "");
        }
        return 0;
}

/* After a failed write_empty_top() over the old top's parent: the old top
 * recorded its parent's old content ID (a VMDK's parentCID), so no tool
 * opens it on the merged parent any more. Relinked onto it (reopened
 * writable through the resolver), it reads what it read. Best effort: the
 * failure stays the error, and the disk's top stays `to`. */
static void relink_old_top(vdisk_disk *d, const top_identity *id) {
        _cleanup_free_ char *msg = strdup(vdisk_last_error());
        vdisk_io *io = NULL;
        vdisk_image *parent = vdisk_disk_image(d, vdisk_disk_count(d) - 1);

        if (!vdisk_io_readonly(id->io))
                io = vdisk_io_ref(id->io);
        else if (resolver_reopen(d->resolver, id->io, &io) < 0)
                io = NULL;
        if (io && vdisk_disk_open(d, io, id->format, VDISK_OPEN_SKIP_CHECKS) >= 0) {
                (void) vdisk_image_set_parent(vdisk_disk_image(d, vdisk_disk_count(d) - 1), parent,
                                              id->parent_name, vdisk_image_backend(parent)->qemu_name);
                (void) vdisk_disk_close_top(d);
        }
        vdisk_io_unref(io);
        (void) vdisk_error(0, "%s", msg ?: "");
}

int vdisk_commit(vdisk_disk *d, unsigned to, const vdisk_commit_opts *opts, vdisk_progress *p,
                 vdisk_commit_result *ret) {
        vdisk_commit_result res = { .size = sizeof(res) };
        uint32_t flags = opts ? opts->flags : 0;
        bool keep = flags & VDISK_COMMIT_KEEP_TOP, copied = false;
        top_identity id = {};
        unsigned n;
        int r;

        if (!d || (opts && opts->size < sizeof(*opts)) || (flags & ~VDISK_COMMIT_KEEP_TOP) ||
            keep == (opts && opts->new_top) || (ret && ret->size < sizeof(res)))
                return vdisk_error(-EINVAL, "invalid arguments");
        n = vdisk_disk_count(d);
        if (n < 2)
                return vdisk_error(-EINVAL, "the image has no backing file");
        if (to >= n - 1)
                return vdisk_error(-EINVAL, "image %u is not below the top (the chain has %u images)", to, n);

        if (!keep) {
                r = top_identity_get(d, to, &id);
                if (r < 0)
                        goto finish;
        }
        r = merge_images(d, n - 1, to, keep, p, &copied, NULL);
        /* A kept top is relinked by the merge, once the data is in `to`. */
        res.failed_step = copied ? VDISK_COMMIT_STEP_TOP : VDISK_COMMIT_STEP_MERGE;
        if (r >= 0 && !keep) {
                res.failed_step = VDISK_COMMIT_STEP_TOP;
                r = write_empty_top(d, opts->new_top, &id);
                if (r < 0 && id.have_parent_cid && to + 2 == n)
                        relink_old_top(d, &id);
        }
        if (r >= 0)
                res.failed_step = VDISK_COMMIT_STEP_NONE;
finish:
        top_identity_done(&id);
        if (ret)
                *ret = res;
        return r;
}
