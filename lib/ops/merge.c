/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Merge (VDMerge): the data of images `from`..`to` ends up in `to`; the
 * images between them and `from` itself leave the chain.
 *
 * Forward (from > to): every range that images to+1..from define is copied
 * into `to`. Those images still shadow `to` while this happens, so the chain
 * reads the same at every moment; only then is the child above `from` (if
 * any) relinked to `to` — one header write. A crash before the relink leaves
 * the old chain, valid, with `to` holding extra (shadowed) data.
 *
 * Backward (from < to): every range `to` does not define but from..to-1 do is
 * copied into `to` (the same data it read through them), then `to` takes over
 * the parent link of `from`. Again the chain reads the same at every moment.
 *
 * Files are never deleted; the caller gets the names of the images that left.
 *
 * Locks (core/guard.c): a merge is exclusive (no other operation, no change
 * of the chain while it runs) but takes the disk lock only per chunk, so the
 * disk serves reads meanwhile; writes too, unless the top is merged away
 * (they would land in an image whose data was already copied down).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

/* One chunk of copy_defined() at `offset` (at most `len` bytes); *ret_len
 * gets how far it went. */
static int copy_chunk(vdisk_disk *d, unsigned lo, unsigned hi, unsigned target, int skip_level, int below,
                      uint64_t offset, uint64_t len, uint8_t *buf, uint64_t *ret_len) {
        vdisk_extent e;
        int r;

        if (skip_level >= 0) {
                r = rw_status(d, (unsigned) skip_level, (unsigned) skip_level, offset, len, &e);
                if (r < 0)
                        return r;
                if (e.depth == 0) {
                        *ret_len = e.length;
                        return 0;
                }
                len = e.length;
        }
        r = rw_status(d, lo, hi, offset, len, &e);
        if (r < 0)
                return r;
        len = e.length;
        if (e.depth >= 0) {
                /* What is copied or zeroed goes a buffer at a time; what
                 * none of the images defines is passed in one step. */
                len = MIN(len, (uint64_t) OP_BUFFER_SIZE);
                if (e.flags & VDISK_EXTENT_DATA) {
                        r = rw_read(d, hi, buf, (size_t) len, offset);
                        if (r >= 0)
                                r = rw_write(d, target, buf, (size_t) len, offset);
                } else
                        r = rw_write_zeroes(d, target, below, offset, len);
                if (r < 0)
                        return r;
        }
        *ret_len = len;
        return 0;
}

/* Copies the ranges defined by images [lo, hi] (as the view at hi reads
 * them) into image `target`, within [0, size). Skips ranges `skip_level`
 * (if >= 0) defines itself. `below` is the level that will show through
 * `target` once the merge is done. */
static int copy_defined(vdisk_disk *d, unsigned lo, unsigned hi, unsigned target, int skip_level,
                        int below, uint64_t size, vdisk_progress *p) {
        _cleanup_free_ uint8_t *buf = NULL;
        uint64_t offset = 0;
        int r;

        buf = buf_alloc(OP_BUFFER_SIZE);
        if (!buf)
                return vdisk_error(-ENOMEM, "out of memory");
        while (offset < size) {
                uint64_t len;

                /* One chunk under the lock: a write into `target` between the
                 * status and the copy would otherwise be overwritten. */
                pthread_mutex_lock(&d->lock);
                r = copy_chunk(d, lo, hi, target, skip_level, below, offset, MIN(size - offset,
                               (uint64_t) OP_STATUS_SPAN), buf, &len);
                pthread_mutex_unlock(&d->lock);
                if (r < 0)
                        return r;
                r = progress_add(p, len);
                if (r < 0)
                        return r;
                offset += len;
        }
        return 0;
}

/* Makes the ranges of [offset, end) that image `level` does not define read
 * zeros in it, as they read now, before `below` shows through them. */
static int shadow_unallocated(vdisk_disk *d, unsigned level, int below, uint64_t offset, uint64_t end) {
        int r;

        while (offset < end) {
                vdisk_extent e;

                r = rw_status(d, level, level, offset, end - offset, &e);
                if (r < 0)
                        return r;
                if (e.depth < 0) {
                        r = rw_write_zeroes(d, level, below, offset, e.length);
                        if (r < 0)
                                return r;
                }
                offset += e.length;
        }
        return 0;
}

static int collect_names(vdisk_disk *d, unsigned lo, unsigned hi, char ***ret) {
        char **v;

        v = calloc(hi - lo + 2, sizeof(char *));
        if (!v)
                return vdisk_error(-ENOMEM, "out of memory");
        for (unsigned i = lo; i <= hi; i++)
                if (!(v[i - lo] = strdup(vdisk_io_name(d->images[i]->io)))) {
                        vdisk_strv_free(v);
                        return vdisk_error(-ENOMEM, "out of memory");
                }
        *ret = v;
        return 0;
}

/* Points image `child` at `parent` (or makes it a base when parent < 0):
 * its parent UUIDs, and where its format records them, the parent's names
 * and content ID (VMDK parentFileNameHint and parentCID, VHD locators). */
static int relink(vdisk_disk *d, unsigned child, int parent) {
        _cleanup_free_ char *name = NULL, *abs = NULL;
        meta pm = {}, m = {}, cm = {};
        uint32_t mask = META_PARENT_UUID;
        int r;

        r = image_get_meta(d->images[child], &cm);
        if (r < 0)
                return r;
        if (parent >= 0) {
                r = image_get_meta(d->images[parent], &pm);
                if (r < 0)
                        return r;
                if (cm.mask & META_PARENT_CONTENT_ID) {
                        m.parent_content_id = pm.mask & META_CONTENT_ID ? pm.content_id : VDISK_CONTENT_ID_NONE;
                        mask |= META_PARENT_CONTENT_ID;
                }
        }
        memcpy(m.parent_uuid, pm.uuid, 16);
        if (pm.mask & META_MODIFICATION_UUID) {
                memcpy(m.parent_modification_uuid, pm.modification_uuid, 16);
                mask |= META_PARENT_MOD_UUID;
        } else if (parent < 0)
                mask |= META_PARENT_MOD_UUID;
        /* A child whose format records no parent modification UUID (VHD,
         * VMDK) keeps none, whatever its new parent has (a VDI). */
        if (!(cm.mask & META_PARENT_MOD_UUID))
                mask &= ~META_PARENT_MOD_UUID;
        /* A child that names its parent (VMDK's parentFileNameHint, VHD's
         * locators) gets the new parent's names: relative to the child's
         * directory and absolute where both were opened by path, else the
         * base name the new parent was opened by (vdiskd's fds); a recorded
         * parent format becomes the new parent's. A new parent without a
         * UUID (the QCOW family) can be named only: a VMDK child that linked
         * by UUID alone (made where no names were known) gets its name too,
         * or the null parent UUID would make it a base. */
        if (parent >= 0 && (((cm.mask & META_PARENT_NAME) && cm.parent_name && cm.parent_name[0]) ||
                            ((cm.mask & META_PARENT_CONTENT_ID) && !(pm.mask & META_UUID)))) {
                r = resolver_parent_name(d->resolver, d->images[child]->io, d->images[parent]->io, &name, &abs);
                if (r < 0)
                        return vdisk_error(r, "out of memory");
                m.parent_name = name;
                m.parent_abs_name = abs;
                m.parent_format = cm.parent_format ? d->images[parent]->be->info.qemu_name : NULL;
                mask |= META_PARENT_NAME;
        }
        r = image_set_meta(d->images[child], &m, mask);
        if (r < 0)
                return r;
        return image_flush(d->images[child]);
}

/* A commit's kept top, relinked onto `parent`: what the call reports is what
 * the file holds. A write that fails is tried once more (a transient fault:
 * the link is then on disk and the commit succeeds). When the second try
 * fails too, the old link is put back and written again (best effort: a
 * write may have landed before its flush failed), so that no later flush
 * (the close's) writes the new one after the commit reported the failure:
 * the top keeps naming its old parent (a VMDK its base's old CID, which
 * `rebase -u` mends). */
static int relink_kept(vdisk_disk *d, unsigned child, int parent) {
        _cleanup_free_ char *name = NULL, *abs = NULL, *format = NULL, *msg = NULL;
        meta old = {};
        int r;

        r = image_get_meta(d->images[child], &old);
        if (r < 0)
                return r;
        if ((old.parent_name && !(name = strdup(old.parent_name))) ||
            (old.parent_abs_name && !(abs = strdup(old.parent_abs_name))) ||
            (old.parent_format && !(format = strdup(old.parent_format))))
                return vdisk_error(-ENOMEM, "out of memory");
        old.parent_name = name;
        old.parent_abs_name = abs;
        old.parent_format = format;
        r = relink(d, child, parent);
        if (r >= 0)
                return 0;
        r = relink(d, child, parent);
        if (r >= 0)
                return 0;
        msg = strdup(vdisk_last_error());
        if (image_set_meta(d->images[child], &old,
                           old.mask & (META_PARENT_UUID | META_PARENT_MOD_UUID | META_PARENT_NAME |
                                       META_PARENT_CONTENT_ID)) >= 0)
                (void) image_flush(d->images[child]);
        return vdisk_error(r, "%s", msg ?: "");
}

static bool records_parent_content_id(vdisk_image *img) {
        meta m = {};

        return image_get_meta(img, &m) >= 0 && (m.mask & META_PARENT_CONTENT_ID);
}

/* Checks the arguments and registers the merge (under the lock). */
static int merge_begin(vdisk_disk *d, unsigned from, unsigned to, bool keep) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(d);
        int r;

        if (from >= d->n || to >= d->n)
                return vdisk_error(-EINVAL, "image index out of range (the chain has %u images)", d->n);
        if (from == to)
                return vdisk_error(-EINVAL, "nothing to merge: from and to are the same image");
        if (keep && (from < to || from + 1 != d->n))
                return vdisk_error(-EINVAL, "image %u is not the top any more (the chain has %u images)", from, d->n);
        for (unsigned i = 0; i < d->n; i++)
                if (d->images[i]->info_only)
                        return vdisk_error(-EPERM, "%s: opened for information only",
                                           vdisk_io_name(d->images[i]->io));
        r = disk_op_begin(d, OP_EXCLUSIVE, 0);
        if (r < 0)
                return r;
        /* Only the images the merge writes are made writable (reopened
         * through the disk's resolver when the chain opened them read-only),
         * all before the first byte is written: `to`, and in a forward merge
         * the child relinked onto it. */
        r = disk_make_writable(d, to);
        if (r >= 0 && keep)
                r = disk_make_writable(d, from);
        if (r >= 0 && from > to && from + 1 < d->n)
                r = disk_make_writable(d, from + 1);
        /* A forward merge writes into `to`, which gives it a new content ID:
         * a child that records its parent's (VMDK's parentCID) must get it,
         * or the chain no longer opens. */
        if (r >= 0 && from < to && to + 1 < d->n && records_parent_content_id(d->images[to + 1]))
                r = disk_make_writable(d, to + 1);
        /* A backward merge into a larger `to` writes zero blocks into
         * `from + 1` (see merge_run): its child must get its new content ID. */
        if (r >= 0 && from > to && from + 2 < d->n && d->images[to]->size > d->images[from]->size &&
            records_parent_content_id(d->images[from + 2]))
                r = disk_make_writable(d, from + 2);
        if (r < 0) {
                disk_op_end(d, OP_EXCLUSIVE, 0);
                return r;
        }
        d->top_leaving = from > to && from + 1 == d->n;
        return 0;
}

/* Write-behind (io.h) for the copy into `to`: its large direct writes go
 * behind while the merge reads the next chunk; the core drains before a
 * table points at new data, and copy_end() before the relink. Direct,
 * whatever the format: most of a merge overwrites blocks the target has
 * (docs/performance.md, "The write path per output"). Only where
 * no caller's write can land in `to` meanwhile (it is not the top, or the
 * top leaves and refuses writes): a caller's write must never meet an
 * error of the merge's queued writes. Under the lock. */
static void copy_begin(vdisk_disk *d, unsigned to) {
        if (to + 1 < d->n || d->top_leaving)
                image_queue_begin(d->images[to], IO_PATH_DIRECT);
}

/* Whatever was copied must be durable, also on cancel and failure: flushes
 * `to`, ends its queue (nothing is written after this returns), and returns
 * the first error of the copy `r`, the flush and the queue, with its
 * message. Under the lock. */
static int copy_end(vdisk_disk *d, unsigned to, int r) {
        char msg[1024] = "";
        int k;

        if (r < 0)
                snprintf(msg, sizeof msg, "%s", vdisk_last_error());
        k = image_flush(d->images[to]);
        if (r >= 0 && k < 0) {
                r = k;
                snprintf(msg, sizeof msg, "%s", vdisk_last_error());
        }
        k = image_queue_end(d->images[to]);
        if (r >= 0)
                return k;
        return vdisk_error(r, "%s", msg);
}

/* The steps before and after the data copy run under the lock. */
static int merge_run(vdisk_disk *d, unsigned from, unsigned to, bool keep, vdisk_progress *p, bool *ret_copied,
                     char ***ret_removed) {
        _cleanup_(disk_unlockp) _unused_ vdisk_disk *l = disk_lock(d);
        char **removed = NULL;
        unsigned lo, hi;
        int r;

        if (from > to) {
                uint64_t size = d->images[from]->size;

                /* `to` grows to `from`'s size if it is smaller (the new
                 * range reads zeros: where `to`'s parent has data there, it
                 * gets zero blocks). It never shrinks: its data past `from`'s
                 * end is nobody's to drop (VDMerge does not shrink either).
                 * Where that data would now show through to the images above
                 * `from`, which read zeros there before, they get zero blocks. */
                if (d->images[to]->size < size) {
                        uint64_t old = d->images[to]->size;

                        r = resize_image(d, to, size, NULL);
                        if (r < 0)
                                return r;
                        if (to > 0) {
                                r = rw_write_zeroes(d, to, (int) to - 1, old, size - old);
                                if (r < 0)
                                        return r;
                        }
                } else if (d->images[to]->size > size && from + 1 < d->n) {
                        vdisk_image *child = d->images[from + 1];

                        if (child->size > size) {
                                r = shadow_unallocated(d, from + 1, (int) to, size,
                                                       MIN(child->size, d->images[to]->size));
                                if (r >= 0)
                                        r = image_flush(child);
                                /* `child` got a new content ID (VMDK CID):
                                 * its own child records it. */
                                if (r >= 0 && from + 2 < d->n &&
                                    records_parent_content_id(d->images[from + 2]))
                                        r = relink(d, from + 2, (int) from + 1);
                                if (r < 0)
                                        return r;
                        }
                }
                progress_set_total(p, size);
                copy_begin(d, to);
                pthread_mutex_unlock(&TAKE_PTR(l)->lock);
                r = copy_defined(d, to + 1, from, to, -1, (int) to - 1, size, p);
                l = disk_lock(d);
                r = copy_end(d, to, r);
                if (r < 0) {
                        /* `to` holds part of `from`'s data now and a new
                         * content ID (VMDK CID). Adjacent, `from` reads as
                         * before over it: a child that records its parent's
                         * content ID (VMDK parentCID) gets the new one, or the
                         * chain would no longer open (nor the merge be
                         * retried). Best effort (a commit opened it read-only:
                         * reopened writable through the resolver if it can
                         * be): the failure stays the error. */
                        if (from == to + 1 && records_parent_content_id(d->images[from])) {
                                _cleanup_free_ char *msg = strdup(vdisk_last_error());

                                if (disk_make_writable(d, from) >= 0)
                                        (void) relink(d, from, (int) to);
                                if (msg)
                                        (void) vdisk_error(0, "%s", msg);
                        }
                        return r;
                }
                *ret_copied = true;
                /* Kept (a commit's top), `from` itself is relinked: it
                 * reads what it read, and its VMDK parentCID is `to`'s new
                 * CID. The images between leave. */
                if (keep || from + 1 < d->n) {
                        r = keep ? relink_kept(d, from, (int) to) : relink(d, from + 1, (int) to);
                        if (r < 0)
                                return r;
                }
                lo = to + 1;
                hi = keep ? from - 1 : from;
        } else {
                uint64_t size = d->images[to]->size;

                progress_set_total(p, size);
                copy_begin(d, to);
                pthread_mutex_unlock(&TAKE_PTR(l)->lock);
                r = copy_defined(d, from, to - 1, to, (int) to, (int) from - 1, size, p);
                l = disk_lock(d);
                r = copy_end(d, to, r);
                if (r < 0)
                        return r;
                *ret_copied = true;
                r = relink(d, to, (int) from - 1);
                if (r < 0)
                        return r;
                /* `to` got a new modification UUID: keep its child's record
                 * current when the child can be written (else it only warns
                 * that its parent changed, as after any write into a parent). */
                if (to + 1 < d->n && (records_parent_content_id(d->images[to + 1]) ||
                                      disk_make_writable(d, to + 1) >= 0)) {
                        r = relink(d, to + 1, (int) to);
                        if (r < 0)
                                return r;
                }
                lo = from;
                hi = to - 1;
        }

        if (ret_removed) {
                r = collect_names(d, lo, hi, &removed);
                if (r < 0)
                        return r;
        }
        /* The merge only read the images that leave, and their content is
         * in `to` now (flushed): a flush error here loses nothing. */
        if (lo <= hi)
                (void) disk_remove_range(d, lo, hi);
        if (ret_removed)
                *ret_removed = removed;
        return 0;
}

int merge_images(vdisk_disk *d, unsigned from, unsigned to, bool keep, vdisk_progress *p, bool *ret_copied,
                 char ***ret_removed) {
        bool copied = false;
        int r;

        r = merge_begin(d, from, to, keep);
        if (r < 0)
                return r;
        r = merge_run(d, from, to, keep, p, &copied, ret_removed);
        pthread_mutex_lock(&d->lock);
        disk_op_end(d, OP_EXCLUSIVE, 0);
        pthread_mutex_unlock(&d->lock);
        if (r >= 0)
                progress_finish(p);
        if (ret_copied)
                *ret_copied = copied;
        return r;
}

int vdisk_merge(vdisk_disk *d, unsigned from, unsigned to, vdisk_progress *p, char ***ret_removed) {
        if (!d)
                return vdisk_error(-EINVAL, "invalid arguments");
        return merge_images(d, from, to, false, p, NULL, ret_removed);
}
