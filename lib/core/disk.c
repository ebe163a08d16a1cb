/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The container (VD's "HDD container"): a base image and a chain of
 * differencing images above it. Images are numbered from 0 (the base); the
 * top is the only one the public write path writes to. Parents are linked by
 * UUID: a child records its parent's image UUID (and modification UUID).
 */
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

int vdisk_disk_new(vdisk_disk **ret) {
        vdisk_disk *d;
        int r;

        if (!ret)
                return vdisk_error(-EINVAL, "invalid arguments");
        d = calloc(1, sizeof *d);
        if (!d)
                return vdisk_error(-ENOMEM, "out of memory");
        d->warnings = calloc(1, sizeof(char *));
        if (!d->warnings) {
                free(d);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        r = tc_budget_new(0, &d->budget);
        if (r < 0) {
                free(d->warnings);
                free(d);
                return r;
        }
        pthread_mutex_init(&d->lock, NULL);
        d->pin = -1;
        *ret = d;
        return 0;
}

/* Closes the images top down; returns the first flush error. */
static int disk_free(vdisk_disk *d) {
        int r = 0, k;

        /* An operation on another thread still uses d: freeing it now would be
         * a use after free there. A programming error: vdisk_disk_close()
         * refuses it with -EBUSY, unref cannot. */
        assert(!disk_op_running(d));
        while (d->n > 0) {
                d->n--;
                k = image_close(d->images[d->n]);
                d->images[d->n] = NULL;
                if (k < 0 && r == 0)
                        r = k;
        }
        vdisk_strv_free(d->warnings);
        snap_hold_done(&d->snap);
        free(d->scratch);
        vdisk_resolver_unref(d->resolver);
        tc_budget_unref(d->budget);
        pthread_mutex_destroy(&d->lock);
        free(d);
        return r;
}

vdisk_disk *vdisk_disk_unref(vdisk_disk *d) {
        if (d)
                (void) disk_free(d);
        return NULL;
}

int vdisk_disk_close(vdisk_disk *d) {
        if (!d)
                return 0;
        pthread_mutex_lock(&d->lock);
        if (disk_op_running(d)) {
                int r = vdisk_error(-EBUSY, "%s: cannot close: an operation runs on this disk",
                                    d->n > 0 ? vdisk_io_name(d->images[d->n - 1]->io) : "(empty container)");
                pthread_mutex_unlock(&d->lock);
                return r;
        }
        pthread_mutex_unlock(&d->lock);
        return disk_free(d);
}

int disk_add_warning(vdisk_disk *d, const char *fmt, ...) {
        char *s, **w;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        if (!s)
                return -ENOMEM;
        w = reallocarray(d->warnings, d->n_warnings + 2, sizeof(char *));
        if (!w) {
                free(s);
                return -ENOMEM;
        }
        w[d->n_warnings++] = s;
        w[d->n_warnings] = NULL;
        d->warnings = w;
        return 0;
}

const char *const *vdisk_disk_warnings(vdisk_disk *d) {
        return d ? (const char *const *) d->warnings : NULL;
}

int vdisk_disk_set_metadata_budget(vdisk_disk *d, uint64_t bytes) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        return tc_budget_set_limit(d->budget, bytes);
}

int vdisk_disk_get_metadata_stats(vdisk_disk *d, vdisk_metadata_stats *ret) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        vdisk_metadata_stats s = {};
        size_t n;

        if (!d || !ret || ret->size < sizeof(size_t))
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        tc_budget_stats(d->budget, &s);
        n = MIN(ret->size, sizeof s);
        s.size = ret->size;
        memcpy(ret, &s, n);
        return 0;
}

/* Checks that `child` may sit on top of `parent`. */
static int check_linkage(vdisk_disk *d, vdisk_image *parent, vdisk_image *child) {
        meta pm, cm;
        char a[37], b[37];
        int r;

        r = image_get_meta(parent, &pm);
        if (r < 0)
                return r;
        r = image_get_meta(child, &cm);
        if (r < 0)
                return r;
        if (!(cm.mask & META_PARENT_UUID) && !(cm.mask & META_PARENT_NAME))
                return vdisk_error(-EINVAL, "%s: %s images cannot be differencing images",
                                   vdisk_io_name(child->io), child->be->info.name);
        /* The parent's content changed after the child was made against it
         * (VMDK: its CID is not the child's parentCID): the child's data no
         * longer fits what shows through. VMware and qemu refuse such a
         * chain too (qemu fails every read); found by name or by UUID alike. */
        if ((cm.mask & META_PARENT_CONTENT_ID) && (pm.mask & META_CONTENT_ID) &&
            cm.parent_content_id != VDISK_CONTENT_ID_NONE && cm.parent_content_id != pm.content_id)
                return vdisk_error(-ESTALE, "%s: its parent '%s' was modified after this image was made on it "
                                   "(the parent's content ID is %08" PRIx32 ", this image expects %08" PRIx32
                                   "); relink it (rebase -u) only if the change kept this image's view valid",
                                   vdisk_io_name(child->io), vdisk_io_name(parent->io), pm.content_id,
                                   cm.parent_content_id);
        if ((cm.mask & META_PARENT_UUID) && (pm.mask & META_UUID)) {
                if (vdisk_uuid_is_null(cm.parent_uuid))
                        return vdisk_error(-EINVAL, "%s: not a differencing image (no parent UUID)",
                                           vdisk_io_name(child->io));
                if (memcmp(cm.parent_uuid, pm.uuid, 16) != 0) {
                        vdisk_uuid_format(cm.parent_uuid, a);
                        vdisk_uuid_format(pm.uuid, b);
                        return vdisk_error(-ESTALE, "%s: parent UUID {%s} does not match '%s' {%s}",
                                           vdisk_io_name(child->io), a, vdisk_io_name(parent->io), b);
                }
                if ((cm.mask & META_PARENT_MOD_UUID) && (pm.mask & META_MODIFICATION_UUID) &&
                    !vdisk_uuid_is_null(cm.parent_modification_uuid) &&
                    memcmp(cm.parent_modification_uuid, pm.modification_uuid, 16) != 0)
                        (void) disk_add_warning(d, "%s: parent '%s' was modified after this image was created "
                                                "(modification UUID differs)",
                                                vdisk_io_name(child->io), vdisk_io_name(parent->io));
        }
        return 0;
}

int disk_push(vdisk_disk *d, vdisk_image *img, int skip_checks) {
        int r;

        if (d->n >= VDISK_CHAIN_MAX)
                return vdisk_error(-ELOOP, "%s: chain deeper than %d images", vdisk_io_name(img->io),
                                   VDISK_CHAIN_MAX);
        if (d->n > 0 && !skip_checks) {
                r = check_linkage(d, d->images[d->n - 1], img);
                if (r < 0)
                        return r;
        }
        img->disk = d;
        img->index = d->n;
        d->images[d->n++] = img;
        return 0;
}

int disk_make_writable(vdisk_disk *d, unsigned level) {
        vdisk_image *img, *fresh = NULL;
        vdisk_files *files;
        vdisk_io *io = NULL;
        void *state;
        int r;

        assert(level < d->n);
        img = d->images[level];
        if (img->info_only)
                return vdisk_error(-EPERM, "%s: opened for information only", vdisk_io_name(img->io));
        if (img->writable)
                return 0;
        if (img->snapshot)
                return vdisk_error(-EROFS, "%s: a snapshot is read-only", vdisk_io_name(img->io));
        if (d->readonly)
                return vdisk_error(-EROFS, "%s: image is read-only (the chain was opened read-only)",
                                   vdisk_io_name(img->io));
        r = resolver_reopen(d->resolver, img->io, &io);
        if (r < 0)
                return r;
        r = image_open(img->be, io, d->resolver, 1, 0, d->budget, &fresh);
        if (r < 0) {
                vdisk_io_unref(io);
                return r;
        }
        /* Same file, opened again: its size and metadata are what the chain
         * already checked. Callers hold pointers to `img` (vdisk_disk_image()),
         * so it stays; the backend state and the io change places, and
         * freeing `fresh` closes the read-only open. */
        state = img->state;
        img->state = fresh->state;
        fresh->state = state;
        files = img->files;          /* the companions come along, writable too */
        img->files = fresh->files;
        fresh->files = files;
        for (unsigned i = 0; i < UNIT_CACHE_N; i++) {
                free(img->units[i].data);   /* keyed by the old ios */
                img->units[i] = (unit_entry) {};
        }
        vdisk_io_unref(fresh->io);   /* img takes over our reference to io */
        fresh->io = img->io;
        img->io = io;
        img->writable = 1;
        fresh->writable = 0;
        image_refresh(img);
        image_free(fresh);
        if (img->have_direct) {
                /* vdisk_image_set_direct_fd() checked it is the same file. */
                r = vdisk_io_set_direct_fd(img->io, img->direct_fd);
                if (r < 0)
                        return r;
        }
        return 0;
}

int vdisk_image_set_direct_fd(vdisk_image *img, int fd) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        uint64_t dev, ino;
        struct stat st;
        int fl, copy, r;

        if (!img)
                return vdisk_error(-EINVAL, "invalid arguments");
        if (img->disk)
                l = disk_lock(img->disk);
        if (fd < 0) {
                if (img->have_direct) {
                        if (img->writable)
                                io_drop_direct_fd(img->io);
                        close(img->direct_fd);
                        img->have_direct = false;
                }
                return 0;
        }
        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || !(fl & O_DIRECT) || (fl & (O_PATH | O_APPEND)) || (fl & O_ACCMODE) == O_RDONLY)
                return vdisk_error(-EINVAL, "%s: the direct descriptor must be open for writing with O_DIRECT "
                                   "and without O_APPEND", vdisk_io_name(img->io));
        r = vdisk_io_get_file_id(img->io, &dev, &ino);
        if (r < 0)
                return r;
        if (fstat(fd, &st) < 0)
                return vdisk_error(-errno, "%s: cannot stat the direct descriptor: %m", vdisk_io_name(img->io));
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_dev != dev || (uint64_t) st.st_ino != ino)
                return vdisk_error(-EBADF, "%s: the direct descriptor is not the same file", vdisk_io_name(img->io));
        if (img->writable) {
                r = vdisk_io_set_direct_fd(img->io, fd);
                if (r < 0)
                        return r;
        }
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0) {
                r = vdisk_error(-errno, "%s: cannot duplicate the direct descriptor: %m", vdisk_io_name(img->io));
                if (img->writable)
                        io_drop_direct_fd(img->io);
                return r;
        }
        if (img->have_direct)
                close(img->direct_fd);
        img->direct_fd = copy;
        img->have_direct = true;
        return 0;
}

int vdisk_disk_set_resolver(vdisk_disk *d, vdisk_resolver *r) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        vdisk_resolver_ref(r);
        vdisk_resolver_unref(d->resolver);
        d->resolver = r;
        return 0;
}

int disk_remove_range(vdisk_disk *d, unsigned lo, unsigned hi) {
        unsigned k = hi - lo + 1;
        int r = 0, c;

        assert(lo <= hi && hi < d->n);
        for (unsigned i = lo; i <= hi; i++) {
                c = image_close(d->images[i]);
                if (c < 0 && r == 0)
                        r = c;
        }
        memmove(&d->images[lo], &d->images[hi + 1], (d->n - hi - 1) * sizeof(d->images[0]));
        d->n -= k;
        for (unsigned i = d->n; i < d->n + k; i++)
                d->images[i] = NULL;
        for (unsigned i = 0; i < d->n; i++)
                d->images[i]->index = i;
        return r;
}

static int pick_backend(vdisk_io *io, const char *format, uint32_t flags, const vdisk_backend **ret) {
        int writable = !(flags & VDISK_OPEN_READONLY) && !vdisk_io_readonly(io);

        if (format) {
                *ret = backend_lookup(format);
                if (!*ret)
                        return vdisk_error(-EMEDIUMTYPE, "Unknown file format '%s'", format);
                return 0;
        }
        return probe_backend(io, vdisk_io_name(io), !writable && (flags & VDISK_OPEN_ALLOW_PROBE_RAW), ret, NULL);
}

int vdisk_disk_open(vdisk_disk *d, vdisk_io *io, const char *format, uint32_t open_flags) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        _cleanup_(snap_hold_done) struct snap_hold snap = {};
        const vdisk_backend *be;
        vdisk_image *img;
        int r;

        if (!d || !io)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        snap_hold_take(d, &snap);
        r = disk_may_add(d);
        if (r < 0)
                return r;
        r = pick_backend(io, format, open_flags, &be);
        if (r < 0)
                return r;
        /* Companion files (VMDK extents) through the disk's resolver, if it has one. */
        if (open_flags & VDISK_OPEN_LIST_FILES)
                open_flags |= VDISK_OPEN_INFO | VDISK_OPEN_READONLY;
        r = image_open_snapshot(be, io, d->resolver, !(open_flags & VDISK_OPEN_READONLY),
                                (open_flags & VDISK_OPEN_LIST_FILES) ? 2 : !!(open_flags & VDISK_OPEN_INFO), d->budget,
                                snap.set ? &snap.sel : NULL, &img);
        if (r < 0)
                return r;
        r = disk_push(d, img, !!(open_flags & VDISK_OPEN_SKIP_CHECKS));
        if (r < 0) {
                img->writable = 0;
                image_free(img);
                return r;
        }
        return 0;
}

/* Is `io`, about to become chain[n], the same file as an image already in
 * chain[0..n-1]? Then the chain loops, whatever name led to it (a hard link,
 * a symlink, a second fd of the same file) and whatever its header says by
 * now; it is caught before the file is opened a second time. Ios that are no
 * host file have no identity: for them the UUID check below is the guard. */
static int check_not_in_chain(vdisk_image *const *chain, const io_identity *ids, const bool *have_id, unsigned n,
                              vdisk_io *io, io_identity *ret_id, bool *ret_have) {
        *ret_have = io_get_identity(io, ret_id) >= 0;
        if (!*ret_have)
                return 0;
        for (unsigned i = 0; i < n; i++)
                if (have_id[i] && io_identity_equal(&ids[i], ret_id))
                        return vdisk_error(-ELOOP, "%s: parent loop: its parent '%s' is the same file as '%s'",
                                           vdisk_io_name(chain[n - 1]->io), vdisk_io_name(io),
                                           vdisk_io_name(chain[i]->io));
        return 0;
}

/* The backend of a parent the child names without its format (VMDK's
 * parentFileNameHint, VHD's locators) or links by UUID alone (VDI, VHD):
 * probed, never raw. In a chain that mixes formats a VDI diff may sit on a
 * VMDK, a VHD diff on a VDI: the child's own format says nothing. */
static int parent_backend(vdisk_io *io, const meta *m, const vdisk_backend **ret) {
        if ((m->mask & META_PARENT_NAME) && m->parent_format) {
                *ret = backend_lookup(m->parent_format);
                if (!*ret)
                        return vdisk_error(-EMEDIUMTYPE, "unknown parent format '%s'", m->parent_format);
                return 0;
        }
        return probe_backend(io, vdisk_io_name(io), 0, ret, NULL);
}

/* Does the file on `io` (of backend `be`) record the UUID `uuid`? From its
 * header alone. A file whose format records no UUID (qemu's VMDKs), or
 * whose identity cannot be read without opening it with its companions (a
 * VMDK descriptor with extents), cannot say no: the linkage check after the
 * open decides. */
static bool candidate_has_uuid(const vdisk_backend *be, vdisk_io *io, const uint8_t uuid[16]) {
        _cleanup_free_ uint8_t *head = NULL;
        meta pm;

        if (image_peek(be, io, &pm, &head) < 0) {
                vdisk_clear_error();
                return true;
        }
        return !(pm.mask & META_UUID) || memcmp(pm.uuid, uuid, 16) == 0;
}

/* Finds the parent of `child` (whose metadata is `m`): by the names it
 * records (VMDK parentFileNameHint; VHD's relative then absolute locator),
 * relative to the child; where the child also records the parent's UUID, a
 * named file that has another UUID is stale and skipped, and when no name
 * leads to the parent the UUID search of the resolver finds it among the
 * candidates of every format. The parent's format is the one recorded with
 * its name, else a probe (never raw). */
static int find_parent(vdisk_resolver *res, vdisk_image *child, const meta *m, const vdisk_backend **ret_be,
                       vdisk_io **ret_io) {
        const char *child_name = vdisk_io_name(child->io);
        bool by_uuid = (m->mask & META_PARENT_UUID) && !vdisk_uuid_is_null(m->parent_uuid);
        const char *names[2] = {};
        _cleanup_free_ char *first_error = NULL;
        int first_r = 0, r;

        if ((m->mask & META_PARENT_NAME) && m->parent_name && m->parent_name[0])
                names[0] = m->parent_name;
        if ((m->mask & META_PARENT_NAME) && m->parent_abs_name && m->parent_abs_name[0])
                names[1] = m->parent_abs_name;

        for (unsigned i = 0; i < ELEMENTSOF(names); i++) {
                const vdisk_backend *be;
                vdisk_io *io = NULL;

                if (!names[i])
                        continue;
                r = resolver_open_name(res, names[i], child_name, 0, &io);
                if (r >= 0) {
                        r = parent_backend(io, m, &be);
                        if (r >= 0 && by_uuid && !candidate_has_uuid(be, io, m->parent_uuid))
                                r = vdisk_error(-ESTALE, "%s: '%s' is not its parent (another UUID)",
                                                child_name, names[i]);
                        if (r >= 0) {
                                *ret_be = be;
                                *ret_io = io;
                                return 0;
                        }
                        vdisk_io_unref(io);
                }
                /* A recorded format that is unknown is no stale name. */
                if (r == -EMEDIUMTYPE && m->parent_format)
                        return r;
                if (first_r == 0) {
                        first_r = r;
                        first_error = strdup(vdisk_last_error());
                }
        }
        if (!by_uuid) {
                if (first_error)
                        (void) vdisk_error(first_r, "%s", first_error);
                return first_r;
        }
        r = resolver_find_uuid(res, m->parent_uuid, child->be->info.name, child_name, 0, ret_io);
        if (r < 0) {
                /* The name's failure says more (the file it names is gone)
                 * when there was a name. */
                if (first_r < 0 && r == -ENOENT && first_error)
                        (void) vdisk_error(first_r, "%s", first_error);
                return first_r < 0 && r == -ENOENT ? first_r : r;
        }
        r = parent_backend(*ret_io, m, ret_be);
        if (r < 0)
                *ret_io = vdisk_io_unref(*ret_io);
        return r;
}

int vdisk_disk_open_chain(vdisk_disk *d, vdisk_resolver *res, vdisk_io *top, const char *format,
                          uint32_t open_flags) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        _cleanup_(snap_hold_done) struct snap_hold snap = {};
        vdisk_image *chain[VDISK_CHAIN_MAX] = {};
        uint8_t seen[VDISK_CHAIN_MAX][16];
        io_identity ids[VDISK_CHAIN_MAX];
        bool have_id[VDISK_CHAIN_MAX] = {};
        unsigned n = 0, n_seen = 0;
        int writable = !(open_flags & VDISK_OPEN_READONLY);
        const vdisk_backend *be;
        vdisk_io *io;
        int r;

        if (!d || !res || !top)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        snap_hold_take(d, &snap);
        if (d->n > 0)
                return vdisk_error(-EBUSY, "open_chain needs an empty container");
        r = disk_may_add(d);
        if (r < 0)
                return r;
        r = pick_backend(top, format, open_flags, &be);
        if (r < 0)
                return r;

        io = vdisk_io_ref(top);
        for (;;) {
                vdisk_io *parent_io = NULL;
                meta m;

                r = check_not_in_chain(chain, ids, have_id, n, io, &ids[n], &have_id[n]);
                /* Only the top is opened writable: a parent is reopened
                 * writable when an operation writes into it
                 * (disk_make_writable()), so that formats with dirty bits,
                 * logs or in-use flags never write into a parent that is
                 * only read. */
                if (r >= 0)
                        r = image_open_snapshot(be, io, res, writable && n == 0,
                                                !!(open_flags & VDISK_OPEN_INFO), d->budget,
                                                n == 0 && snap.set ? &snap.sel : NULL, &chain[n]);
                vdisk_io_unref(io);
                if (r < 0)
                        goto fail;
                n++;
                r = image_get_meta(chain[n - 1], &m);
                if (r < 0)
                        goto fail;
                if (m.mask & META_UUID) {
                        for (unsigned i = 0; i < n_seen; i++)
                                if (memcmp(seen[i], m.uuid, 16) == 0) {
                                        r = vdisk_error(-ELOOP, "%s: parent loop (UUID seen twice in the chain)",
                                                        vdisk_io_name(chain[n - 1]->io));
                                        goto fail;
                                }
                        memcpy(seen[n_seen++], m.uuid, 16);
                }
                if (!((m.mask & META_PARENT_NAME) && m.parent_name && m.parent_name[0]) &&
                    !((m.mask & META_PARENT_UUID) && !vdisk_uuid_is_null(m.parent_uuid)))
                        break;
                if (n >= VDISK_CHAIN_MAX) {
                        r = vdisk_error(-ELOOP, "%s: chain deeper than %d images", vdisk_io_name(top),
                                        VDISK_CHAIN_MAX);
                        goto fail;
                }
                r = find_parent(res, chain[n - 1], &m, &be, &parent_io);
                if (r < 0)
                        goto fail;
                io = parent_io;
        }

        for (unsigned i = n; i > 0; i--) {
                r = disk_push(d, chain[i - 1], !!(open_flags & VDISK_OPEN_SKIP_CHECKS));
                if (r < 0)
                        goto fail_pushed;
                chain[i - 1] = NULL;
        }
        vdisk_resolver_ref(res);
        vdisk_resolver_unref(d->resolver);
        d->resolver = res;
        d->readonly = !writable;
        return 0;

fail_pushed:
        while (d->n > 0) {
                d->n--;
                d->images[d->n]->writable = 0;
                d->images[d->n] = image_free(d->images[d->n]);
        }
fail:
        for (unsigned i = 0; i < n; i++)
                if (chain[i]) {
                        chain[i]->writable = 0;
                        image_free(chain[i]);
                }
        return r;
}

/* The fields of a caller's vdisk_create_opts its `size` covers. */
#define OPTS_HAS(o, field) ((o)->size >= offsetof(vdisk_create_opts, field) + sizeof((o)->field))

static int create_params_from(const vdisk_create_opts *o, uint64_t size, create_params *p,
                              vdisk_resolver **ret_res) {
        *p = (create_params) { .size = size };
        *ret_res = NULL;
        if (o) {
                if (o->size < offsetof(vdisk_create_opts, options) + sizeof(o->options))
                        return vdisk_error(-EINVAL, "vdisk_create_opts.size not set");
                p->image_flags = o->image_flags & ~VDISK_IMAGE_FLAGS_DIFF;
                p->block_size = o->block_size;
                p->comment = o->comment;
                p->pchs = o->pchs;
                p->lchs = o->lchs;
                p->options = o->options;
                if (o->uuid)
                        memcpy(p->uuid, o->uuid, 16);
                if (o->block_size && (o->block_size < 512 || !IS_POWER_OF_2(o->block_size)))
                        return vdisk_error(-EINVAL, "block size %u is not a power of two of at least 512",
                                           o->block_size);
                if (o->comment && strlen(o->comment) > 255)
                        return vdisk_error(-EINVAL, "comment longer than 255 bytes");
                if (OPTS_HAS(o, parent_format)) {
                        p->parent_name = o->parent_name;
                        p->parent_format = o->parent_format;
                }
                if (OPTS_HAS(o, resolver))
                        *ret_res = o->resolver;
        }
        if (vdisk_uuid_is_null(p->uuid))
                vdisk_uuid_generate(p->uuid);
        return 0;
}

int disk_create_base(vdisk_disk *d, vdisk_io *io, const char *format, uint64_t size,
                     const vdisk_create_opts *opts) {
        const vdisk_backend *be;
        vdisk_image *img;
        create_params p;
        vdisk_resolver *res;
        int r;

        if (d->n > 0)
                return vdisk_error(-EBUSY, "the container already holds a base image");
        be = backend_lookup(format);
        if (!be)
                return vdisk_error(-EMEDIUMTYPE, "Unknown file format '%s'", format);
        if (size == 0 || size > ((uint64_t) 1 << 62))
                return vdisk_error(-EINVAL, "invalid image size %" PRIu64, size);
        r = create_params_from(opts, size, &p, &res);
        if (r < 0)
                return r;
        if (p.parent_name || p.parent_format)
                return vdisk_error(-EINVAL, "a base image has no parent");
        r = backend_check_options(be, p.options);
        if (r < 0)
                return r;
        r = image_create(be, io, res, &p, d->budget, &img);
        if (r < 0)
                return r;
        img->modified = 1;
        return disk_push(d, img, 1);
}

int disk_create_diff(vdisk_disk *d, vdisk_io *io, const char *format, const vdisk_create_opts *opts) {
        const vdisk_backend *be;
        vdisk_image *img, *parent;
        create_params p;
        vdisk_resolver *res;
        _cleanup_free_ char *rel = NULL, *abs = NULL;
        meta pm, cm;
        int r;

        if (d->n == 0)
                return vdisk_error(-EINVAL, "a differencing image needs a parent in the container");
        if (d->n >= VDISK_CHAIN_MAX)
                return vdisk_error(-ELOOP, "chain deeper than %d images", VDISK_CHAIN_MAX);
        be = backend_lookup(format);
        if (!be)
                return vdisk_error(-EMEDIUMTYPE, "Unknown file format '%s'", format);
        if (!(be->info.caps & VDISK_CAP_DIFF))
                return vdisk_error(-EOPNOTSUPP, "%s images cannot be differencing images", be->info.name);
        parent = d->images[d->n - 1];
        r = image_get_meta(parent, &pm);
        if (r < 0)
                return r;
        /* A child that links by name (VMDK parentFileNameHint, qcow2
         * backing file) needs no UUID of its parent (qemu's VMDKs have none). */
        if (!(pm.mask & META_UUID) && !(opts && OPTS_HAS(opts, parent_format) && opts->parent_name))
                return vdisk_error(-EOPNOTSUPP, "%s: a %s image has no UUID a child could name",
                                   vdisk_io_name(parent->io), parent->be->info.name);
        /* The parent must be durable before a child points at it. */
        r = image_flush(parent);
        if (r < 0)
                return r;
        r = create_params_from(opts, opts && OPTS_HAS(opts, diff_size) && opts->diff_size ?
                                             opts->diff_size : parent->size, &p, &res);
        if (r < 0)
                return r;
        if (p.size > ((uint64_t) 1 << 62))
                return vdisk_error(-EINVAL, "invalid image size %" PRIu64, p.size);
        p.image_flags |= VDISK_IMAGE_FLAGS_DIFF;
        p.image_flags &= ~VDISK_IMAGE_FLAGS_FIXED;
        if (pm.mask & META_UUID)
                memcpy(p.parent_uuid, pm.uuid, 16);
        if (pm.mask & META_MODIFICATION_UUID)
                memcpy(p.parent_modification_uuid, pm.modification_uuid, 16);
        if (pm.mask & META_CONTENT_ID) {
                p.has_parent_content_id = 1;
                p.parent_content_id = pm.content_id;
        }
        r = backend_check_options(be, p.options);
        if (r < 0)
                return r;
        /* The parent's names as the child's directory sees them, where both
         * are files opened by path (VHD records a relative and an absolute
         * locator). */
        r = resolver_link_names(res ?: d->resolver, io, parent->io, &rel, &abs);
        if (r < 0)
                return vdisk_error(r, "out of memory");
        p.parent_rel_name = rel;
        p.parent_abs_name = abs;
        r = image_create(be, io, res, &p, d->budget, &img);
        if (r < 0)
                return r;
        /* A child that links by UUID alone (VDI) over a parent without one
         * (qemu's VMDKs) would have no parent at all. */
        r = image_get_meta(img, &cm);
        if (r >= 0 && !(cm.mask & META_PARENT_NAME) && (cm.mask & META_PARENT_UUID) &&
            vdisk_uuid_is_null(cm.parent_uuid))
                r = vdisk_error(-EOPNOTSUPP, "%s: a %s image links its parent by UUID, and '%s' (%s) has none",
                                vdisk_io_name(io), be->info.name, vdisk_io_name(parent->io), parent->be->info.name);
        if (r < 0) {
                img->writable = 0;
                image_free(img);
                return r;
        }
        img->modified = 1;
        return disk_push(d, img, 1);
}

int vdisk_disk_create_base(vdisk_disk *d, vdisk_io *io, const char *format, uint64_t size,
                           const vdisk_create_opts *opts) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!d || !io || !format)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        r = disk_may_add(d);
        if (r < 0)
                return r;
        return disk_create_base(d, io, format, size, opts);
}

int vdisk_disk_create_diff(vdisk_disk *d, vdisk_io *io, const char *format, const vdisk_create_opts *opts) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        int r;

        if (!d || !io || !format)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        r = disk_may_add(d);
        if (r < 0)
                return r;
        return disk_create_diff(d, io, format, opts);
}

int vdisk_disk_close_top(vdisk_disk *d) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;
        vdisk_image *img;
        int r;

        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        l = disk_lock(d);
        if (d->n == 0)
                return vdisk_error(-ENOENT, "the container is empty");
        r = disk_may_remove(d, d->n - 1);
        if (r < 0)
                return r;
        img = d->images[d->n - 1];
        d->n--;
        d->images[d->n] = NULL;
        r = image_close(img);
        /* The new top takes the writes: reopen it writable if the chain may
         * be written. Best effort: without a resolver that can, it stays
         * read-only (vdisk_disk_readonly() says so). */
        if (r >= 0 && d->n > 0 && d->resolver && !d->readonly && !d->images[d->n - 1]->writable &&
            !d->images[d->n - 1]->info_only && disk_make_writable(d, d->n - 1) < 0)
                vdisk_clear_error();
        return r;
}

/* The getters take the lock too: another thread may change the chain. */
unsigned vdisk_disk_count(vdisk_disk *d) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!d)
                return 0;
        l = disk_lock(d);
        return d->n;
}

vdisk_image *vdisk_disk_image(vdisk_disk *d, unsigned index) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!d)
                return NULL;
        l = disk_lock(d);
        return index < d->n ? d->images[index] : NULL;
}

uint64_t vdisk_disk_size(vdisk_disk *d) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!d)
                return 0;
        l = disk_lock(d);
        return d->n > 0 ? d->images[d->n - 1]->size : 0;
}

int vdisk_disk_readonly(vdisk_disk *d) {
        _cleanup_(disk_unlockp) vdisk_disk *l = NULL;

        if (!d)
                return 1;
        l = disk_lock(d);
        return d->n == 0 || !d->images[d->n - 1]->writable || d->images[d->n - 1]->info_only;
}
