/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* One layer of a chain: a backend, its state and its file. */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

static int image_alloc(const vdisk_backend *be, vdisk_io *io, tc_budget *budget, vdisk_image **ret) {
        vdisk_image *img;
        int r;

        img = calloc(1, sizeof *img);
        if (!img)
                return vdisk_error(-ENOMEM, "out of memory");
        img->state = calloc(1, MAX(be->state_size, (size_t) 1));
        if (!img->state) {
                free(img);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        if (budget)
                img->budget = tc_budget_ref(budget);
        else {
                r = tc_budget_new(0, &img->budget);
                if (r < 0) {
                        free(img->state);
                        free(img);
                        return r;
                }
        }
        img->be = be;
        img->io = vdisk_io_ref(io);
        *ret = img;
        return 0;
}

void image_refresh(vdisk_image *img) {
        img->size = img->be->get_size(img->state);
        img->block_size = img->be->block_size ? img->be->block_size(img->state) : 0;
}

int image_open(const vdisk_backend *be, vdisk_io *io, int writable, int info_only, tc_budget *budget,
               vdisk_image **ret) {
        vdisk_image *img;
        open_ctx ctx;
        int r;

        if (writable && vdisk_io_readonly(io))
                writable = 0;
        r = image_alloc(be, io, budget, &img);
        if (r < 0)
                return r;
        img->writable = writable;
        img->info_only = info_only;
        ctx = (open_ctx) { .budget = img->budget, .info_only = info_only };
        r = be->open(img->state, io, writable, &ctx);
        img->open_ok = 1;   /* close() handles a half-opened state too */
        if (r < 0) {
                image_free(img);
                return vdisk_error_prefix(r, vdisk_io_name(io));
        }
        image_refresh(img);
        *ret = img;
        return 0;
}

int image_create(const vdisk_backend *be, vdisk_io *io, const create_params *p, tc_budget *budget,
                 vdisk_image **ret) {
        vdisk_image *img;
        create_params cp;
        uint64_t size;
        int r;

        if (vdisk_io_readonly(io))
                return vdisk_error(-EROFS, "%s: opened read-only", vdisk_io_name(io));
        if (!be->create)
                return vdisk_error(-EOPNOTSUPP, "%s: cannot create %s images", vdisk_io_name(io), be->info.name);
        /* Never build an image over existing bytes: they might be someone's data. */
        r = io_get_size(io, &size);
        if (r < 0)
                return r;
        if (size != 0)
                return vdisk_error(-ENOTEMPTY, "%s: not empty (%" PRIu64 " bytes): refusing to create an image over it",
                                   vdisk_io_name(io), size);
        r = image_alloc(be, io, budget, &img);
        if (r < 0)
                return r;
        img->writable = 1;
        cp = *p;
        cp.budget = img->budget;
        r = be->create(img->state, io, &cp);
        img->open_ok = 1;
        if (r < 0) {
                img->writable = 0;   /* nothing to flush */
                image_free(img);
                return vdisk_error_prefix(r, vdisk_io_name(io));
        }
        image_refresh(img);
        *ret = img;
        return 0;
}

int image_flush(vdisk_image *img) {
        if (!img->writable || img->info_only)
                return 0;
        if (img->be->flush)
                return img->be->flush(img->state);
        return io_flush(img->io);
}

vdisk_image *image_free(vdisk_image *img) {
        if (!img)
                return NULL;
        if (img->open_ok && img->writable)
                (void) image_flush(img);
        if (img->open_ok && img->be->close)
                img->be->close(img->state);
        free(img->state);
        free(img->comment_cache);
        tc_budget_unref(img->budget);
        vdisk_io_unref(img->io);
        free(img);
        return NULL;
}

int image_get_meta(vdisk_image *img, meta *m) {
        *m = (meta) {};
        if (!img->be->get_meta)
                return 0;
        return img->be->get_meta(img->state, m);
}

int image_set_meta(vdisk_image *img, const meta *m, uint32_t mask) {
        if (!img->writable)
                return vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io));
        if (!img->be->set_meta)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images have no such metadata", vdisk_io_name(img->io),
                                   img->be->info.name);
        return img->be->set_meta(img->state, m, mask);
}

/* VirtualBox gives an image a new modification UUID on its first write after
 * open, so children can tell that their parent changed under them. */
int image_mark_modified(vdisk_image *img) {
        meta m = {};
        int r;

        if (img->modified)
                return 0;
        img->modified = 1;
        r = image_get_meta(img, &m);
        if (r < 0 || !(m.mask & META_MODIFICATION_UUID))
                return r < 0 ? r : 0;
        vdisk_uuid_generate(m.modification_uuid);
        return image_set_meta(img, &m, META_MODIFICATION_UUID);
}
