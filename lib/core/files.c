/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The files handle a backend gets at open and create: the companion files of
 * an image (VMDK extents, a qcow2 data file, the BIN of a CUE sheet), opened
 * through the caller's resolver by the name the image records, and kept open
 * (one io per distinct name) for as long as the image is.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

/* At most this many companions per image: a VMDK split in 2 GiB extents of a
 * 64 TiB disk has 32768; a header claiming more is refused before any open. */
#define FILES_MAX 65536u

typedef struct file_entry {
        char *name;
        vdisk_io *io;
} file_entry;

struct vdisk_files {
        vdisk_resolver *resolver;   /* borrowed; only during open/create */
        const char *image_name;     /* borrowed likewise */
        int writable;
        int list_only;              /* VDISK_OPEN_LIST_FILES: names only, no io */
        file_entry *v;
        size_t n;
};

int files_new(vdisk_resolver *res, const char *image_name, int writable, vdisk_files **ret) {
        vdisk_files *f;

        f = calloc(1, sizeof *f);
        if (!f)
                return vdisk_error(-ENOMEM, "out of memory");
        f->resolver = res;
        f->image_name = image_name;
        f->writable = writable;
        *ret = f;
        return 0;
}

void files_seal(vdisk_files *f) {
        if (!f)
                return;
        f->resolver = NULL;
        f->image_name = NULL;
}

void files_unseal(vdisk_files *f, vdisk_resolver *res, const char *image_name) {
        if (!f)
                return;
        f->resolver = res;
        f->image_name = image_name;
}

vdisk_files *files_free(vdisk_files *f) {
        if (!f)
                return NULL;
        for (size_t i = 0; i < f->n; i++) {
                free(f->v[i].name);
                vdisk_io_unref(f->v[i].io);
        }
        free(f->v);
        free(f);
        return NULL;
}

void files_set_list_only(vdisk_files *f) {
        f->list_only = 1;
}

const char *files_name(const vdisk_files *f, size_t i) {
        return f && i < f->n ? f->v[i].name : NULL;
}

size_t files_count(const vdisk_files *f) {
        return f ? f->n : 0;
}

vdisk_io *files_get(const vdisk_files *f, size_t i) {
        return f && i < f->n ? f->v[i].io : NULL;
}

int files_open(vdisk_files *f, const char *name, uint32_t flags, vdisk_io **ret) {
        file_entry *v;
        vdisk_io *io = NULL;
        uint32_t cf = 0;
        int r;

        assert(f);
        assert(name);
        if (!name[0])
                return vdisk_error(-EUCLEAN, "an empty companion file name");
        for (size_t i = 0; i < f->n; i++)
                if (strcmp(f->v[i].name, name) == 0) {
                        if (flags & FILES_CREATE)
                                return vdisk_error(-EEXIST, "companion file '%s' named twice", name);
                        *ret = f->v[i].io;
                        return 0;
                }
        if ((flags & FILES_WRITE) && !f->writable)
                return vdisk_error(-EROFS, "companion file '%s': the image is opened read-only", name);
        if (f->n >= FILES_MAX)
                return vdisk_error(-E2BIG, "more than %u companion files", FILES_MAX);
        if (f->list_only) {
                v = reallocarray(f->v, f->n + 1, sizeof *v);
                if (!v)
                        return vdisk_error(-ENOMEM, "out of memory");
                f->v = v;
                f->v[f->n].io = NULL;
                f->v[f->n].name = strdup(name);
                if (!f->v[f->n].name)
                        return vdisk_error(-ENOMEM, "out of memory");
                f->n++;
                *ret = NULL;
                return 0;
        }
        if (!f->resolver || !f->resolver->ops.open_companion)
                return vdisk_error(-ENOENT, "%s: needs the file '%s', and no way to open it was given",
                                   f->image_name ? f->image_name : "image", name);
        if (flags & FILES_WRITE)
                cf |= VDISK_COMPANION_WRITE;
        if (flags & FILES_CREATE)
                cf |= VDISK_COMPANION_CREATE | VDISK_COMPANION_WRITE;
        vdisk_clear_error();
        r = f->resolver->ops.open_companion(f->resolver->user, name, f->image_name, cf, &io);
        if (r < 0) {
                if (!vdisk_last_error()[0])
                        return vdisk_error(r, "%s: cannot open '%s': %s", f->image_name, name, strerror(-r));
                return r;
        }
        if ((flags & FILES_WRITE) && vdisk_io_readonly(io)) {
                vdisk_io_unref(io);
                return vdisk_error(-EROFS, "%s: '%s' was opened read-only", f->image_name, name);
        }
        v = reallocarray(f->v, f->n + 1, sizeof *v);
        if (!v) {
                vdisk_io_unref(io);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        f->v = v;
        f->v[f->n].name = strdup(name);
        if (!f->v[f->n].name) {
                vdisk_io_unref(io);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        f->v[f->n++].io = io;
        *ret = io;
        return 0;
}
