/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* One layer of a chain: a backend, its state and its file. */
#include <unistd.h>
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
        img->layout = (image_layout) { .sector_size = VDISK_SECTOR_SIZE };
        if (img->be->get_layout)
                img->be->get_layout(img->state, &img->layout);
        assert(img->layout.sector_size >= VDISK_SECTOR_SIZE);
}

int image_open(const vdisk_backend *be, vdisk_io *io, vdisk_resolver *res, int writable, int info_only,
               tc_budget *budget, vdisk_image **ret) {
        return image_open_snapshot(be, io, res, writable, info_only, budget, NULL, ret);
}

int image_open_snapshot(const vdisk_backend *be, vdisk_io *io, vdisk_resolver *res, int writable, int info_only,
                        tc_budget *budget, const snapshot_sel *snap, vdisk_image **ret) {
        open_ctx c;
        vdisk_image *img;
        int r;

        if (writable && vdisk_io_readonly(io))
                writable = 0;
        if (writable && (be->flags & (BACKEND_READ_ONLY | BACKEND_STREAM)))
                return vdisk_error(-EROFS, "%s: %s images %s", vdisk_io_name(io), be->info.name,
                                   (be->flags & BACKEND_STREAM) ? "are written once, at creation, and cannot be "
                                   "opened for writing" : "are read-only");
        if (snap && writable)
                return vdisk_error(-EROFS, "%s: a snapshot is opened read-only", vdisk_io_name(io));
        if (snap && !be->list_snapshots)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images have no internal snapshots", vdisk_io_name(io),
                                   be->info.name);
        r = image_alloc(be, io, budget, &img);
        if (r < 0)
                return r;
        img->writable = writable;
        img->info_only = !!info_only;
        img->snapshot = !!snap;
        r = files_new(res, vdisk_io_name(io), writable, &img->files);
        if (r < 0) {
                image_free(img);
                return r;
        }
        if (info_only == 2)
                files_set_list_only(img->files);
        c = (open_ctx) { .io = io, .files = img->files, .writable = writable, .info_only = !!info_only,
                      .list_files = info_only == 2, .budget = img->budget, .snapshot = snap };
        r = be->open(img->state, &c);
        files_seal(img->files);
        img->open_ok = 1;   /* close() handles a half-opened state too */
        if (r < 0) {
                img->writable = 0;
                image_free(img);
                return vdisk_error_prefix(r, vdisk_io_name(io));
        }
        image_refresh(img);
        *ret = img;
        return 0;
}

int image_create(const vdisk_backend *be, vdisk_io *io, vdisk_resolver *res, const create_params *p,
                 tc_budget *budget, vdisk_image **ret) {
        _cleanup_free_ const char **rest = NULL;
        create_params bp;
        prealloc_req rq;
        open_ctx c;
        vdisk_image *img;
        uint64_t size;
        int r;

        if (vdisk_io_readonly(io))
                return vdisk_error(-EROFS, "%s: opened read-only", vdisk_io_name(io));
        if (!be->create || (be->flags & BACKEND_READ_ONLY))
                return vdisk_error(-EOPNOTSUPP, "%s: cannot create %s images", vdisk_io_name(io), be->info.name);
        /* Never build an image over existing bytes: they might be someone's data. */
        r = io_get_size(io, &size);
        if (r < 0)
                return r;
        if (size != 0)
                return vdisk_error(-ENOTEMPTY, "%s: not empty (%" PRIu64 " bytes): refusing to create an image over it",
                                   vdisk_io_name(io), size);
        r = prealloc_take_options(be, p->options, &rq, &rest);
        if (r < 0)
                return r;
        r = image_alloc(be, io, budget, &img);
        if (r < 0)
                return r;
        img->writable = 1;
        img->created = 1;
        r = files_new(res, vdisk_io_name(io), 1, &img->files);
        if (r < 0) {
                img->writable = 0;
                image_free(img);
                return r;
        }
        c = (open_ctx) { .io = io, .files = img->files, .writable = 1, .budget = img->budget };
        /* nocow first: the attribute takes only on an empty file */
        if (rq.nocow)
                (void) io_set_nocow(io);
        bp = *p;
        bp.options = rest;
        r = be->create(img->state, &c, &bp);
        files_seal(img->files);
        img->open_ok = 1;
        if (r < 0) {
                img->writable = 0;   /* nothing to flush */
                image_free(img);
                return vdisk_error_prefix(r, vdisk_io_name(io));
        }
        image_refresh(img);
        r = prealloc_after_create(img, &rq);
        if (r < 0) {
                image_free(img);
                return vdisk_error_prefix(r, vdisk_io_name(io));
        }
        *ret = img;
        return 0;
}

/* Flushes the companion files the backend wrote through (after its own flush). */
static int files_flush(vdisk_image *img) {
        for (size_t i = 0; i < files_count(img->files); i++) {
                vdisk_io *f = files_get(img->files, i);
                int r;

                if (vdisk_io_readonly(f))
                        continue;
                r = io_flush(f);
                if (r < 0)
                        return r;
        }
        return 0;
}

int image_flush(vdisk_image *img) {
        int r;

        if (!img->writable || img->info_only)
                return 0;
        r = img->be->flush ? img->be->flush(img->state) : io_flush(img->io);
        if (r < 0)
                return r;
        return files_flush(img);
}

void image_queue_begin(vdisk_image *img, io_path path) {
        if (!vdisk_io_readonly(img->io))
                (void) io_queue_begin(img->io, path, 0, 0);
        for (size_t i = 0; i < files_count(img->files); i++)
                if (!vdisk_io_readonly(files_get(img->files, i)))
                        (void) io_queue_begin(files_get(img->files, i), path, 0, 0);
}

int image_queue_end(vdisk_image *img) {
        int r = io_queue_end(img->io);

        for (size_t i = 0; i < files_count(img->files); i++) {
                int k = io_queue_end(files_get(img->files, i));
                if (r >= 0)
                        r = k;
        }
        return r;
}

io_path image_copy_path(const vdisk_image *img) {
        return (img->be->flags | img->layout.flags) & BACKEND_APPENDS ? IO_PATH_CACHED : IO_PATH_DIRECT;
}

int image_finish(vdisk_image *img) {
        int r;

        if (!((img->be->flags | img->layout.flags) & BACKEND_STREAM) || !img->created || img->finished ||
            !img->writable)
                return 0;
        r = img->be->finish(img->state);
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        img->finished = 1;
        return 0;
}

int image_close(vdisk_image *img) {
        int r = 0;

        if (!img)
                return 0;
        if (img->open_ok && img->writable) {
                int k;

                r = image_finish(img);
                k = image_flush(img);
                if (r >= 0 && k < 0)
                        r = vdisk_error_prefix(k, vdisk_io_name(img->io));
        }
        if (img->open_ok && img->be->close)
                img->be->close(img->state);
        for (unsigned i = 0; i < UNIT_CACHE_N; i++)
                free(img->units[i].data);
        free(img->state);
        free(img->comment_cache);
        files_free(img->files);
        if (img->have_direct)
                close(img->direct_fd);
        tc_budget_unref(img->budget);
        vdisk_io_unref(img->io);
        free(img);
        return r;
}

vdisk_image *image_free(vdisk_image *img) {
        (void) image_close(img);
        return NULL;
}

/* A small LRU keyed by where the encoded bytes are. Units are immutable
 * while cached: an image with encoded units never rewrites one in place (a
 * write allocates a new unit elsewhere), and the cache dies with the image. */
int image_decode_unit(vdisk_image *img, const map_result *m, const uint8_t **ret) {
        vdisk_io *file = image_file(img, m->file);
        _cleanup_free_ uint8_t *in = NULL, *out = NULL;
        unit_entry *e = &img->units[0];
        int r;

        assert(m->kind == MAP_ENCODED);
        for (unsigned i = 0; i < UNIT_CACHE_N; i++) {
                unit_entry *u = &img->units[i];

                if (u->data && u->file == file && u->host_offset == m->host_offset &&
                    u->encoded_length == m->encoded_length && u->codec == m->codec &&
                    u->length == m->unit_length) {
                        u->last_use = ++img->unit_clock;
                        *ret = u->data;
                        return 0;
                }
                if (!u->data || (e->data && u->last_use < e->last_use))
                        e = u;
        }
        if (!img->be->decode || m->unit_length == 0 || m->unit_length > UNIT_MAX ||
            m->encoded_length == 0 || m->encoded_length > UNIT_MAX)
                return vdisk_error(-EUCLEAN, "%s: encoded unit at %" PRIu64 " of %" PRIu32 " bytes (decoding to %"
                                   PRIu32 ") cannot be decoded", vdisk_io_name(img->io), m->host_offset,
                                   m->encoded_length, m->unit_length);
        in = malloc(m->encoded_length);
        out = malloc(m->unit_length);
        if (!in || !out)
                return vdisk_error(-ENOMEM, "out of memory");
        r = io_pread(file, in, m->encoded_length, m->host_offset);
        if (r < 0)
                return r;
        r = img->be->decode(img->state, m, in, out);
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        free(e->data);
        *e = (unit_entry) { .file = file, .host_offset = m->host_offset, .encoded_length = m->encoded_length,
                            .codec = m->codec, .data = TAKE_PTR(out), .length = m->unit_length,
                            .last_use = ++img->unit_clock };
        *ret = e->data;
        return 0;
}

int image_resize(vdisk_image *img, uint64_t new_size, vdisk_progress *p) {
        int r;

        if (!img->be->resize)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images cannot be resized", vdisk_io_name(img->io),
                                   img->be->info.name);
        r = img->be->resize(img->state, new_size, p);
        image_refresh(img);
        return r < 0 ? vdisk_error_prefix(r, vdisk_io_name(img->io)) : 0;
}

int image_compact(vdisk_image *img, compact_fn fn, void *ctx, vdisk_progress *p) {
        int r;

        if (!img->be->compact)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images cannot be compacted", vdisk_io_name(img->io),
                                   img->be->info.name);
        r = img->be->compact(img->state, fn, ctx, p);
        image_refresh(img);
        return r < 0 ? vdisk_error_prefix(r, vdisk_io_name(img->io)) : 0;
}

int image_amend(vdisk_image *img, const char *const *options, vdisk_progress *p) {
        int r;

        if (!img->be->amend)
                return vdisk_error(-EOPNOTSUPP, "Format driver '%s' does not support option amendment",
                                   img->be->info.qemu_name);
        r = img->be->amend(img->state, options, p);
        image_refresh(img);
        return r < 0 ? vdisk_error_prefix(r, vdisk_io_name(img->io)) : 0;
}

int image_check(vdisk_image *img, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p) {
        if (!img->be->check)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images cannot be checked", vdisk_io_name(img->io),
                                   img->be->info.name);
        return img->be->check(img->state, flags, rep, p);
}

int image_get_info(vdisk_image *img, vdisk_image_info *ret) {
        return img->be->get_info ? img->be->get_info(img->state, ret) : 0;
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
 * open, VMware and qemu a new content ID (VMDK CID), so children can tell
 * that their parent changed under them. Every write path ends here (data in
 * place, new units, zero entries, stream units), so an overwrite in place and
 * a write into a flat extent renew it too; a read-only open never does.
 * 0xffffffff (not recorded) and 0xfffffffe (qemu's "no CID" mark) are never
 * given out. */
int image_mark_modified(vdisk_image *img) {
        meta m = {};
        uint32_t mask = 0;
        int r;

        if (img->modified)
                return 0;
        img->modified = 1;
        r = image_get_meta(img, &m);
        if (r < 0)
                return r;
        if (m.mask & META_MODIFICATION_UUID) {
                vdisk_uuid_generate(m.modification_uuid);
                mask |= META_MODIFICATION_UUID;
        }
        if (m.mask & META_CONTENT_ID) {
                uint32_t old = m.content_id;
                uint8_t u[16];

                do {
                        vdisk_uuid_generate(u);
                        memcpy(&m.content_id, u, sizeof m.content_id);
                } while (m.content_id >= UINT32_C(0xfffffffe) || m.content_id == old);
                mask |= META_CONTENT_ID;
        }
        if (!mask)
                return 0;
        return image_set_meta(img, &m, mask);
}
