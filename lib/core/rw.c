/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The generic data path.
 *
 * Reads walk the chain from a level down: a range an image maps as DATA is read
 * from its file, ZERO reads zeros, UNALLOC falls through to the parent (zeros
 * below the base). A range past an image's own end reads zeros and does not
 * fall through: a child that was shrunk and grown again must not show its
 * parent's old data.
 *
 * Writes go to one image. Where it has the block, in place; otherwise as a
 * transaction (see backend.h): the backend reserves space for the block, the
 * core writes the whole block there — the new data, and around it
 * (partial-block copy-on-write) what the block read before — and only then
 * does the backend commit the table entry; if any read or write of the block
 * fails, the reservation is released and the image reads as before. Space
 * handed out fresh (past the end of the file) already reads as zeros, so
 * zero pages are not written there: a 4 KiB write into a new 1 MiB block of
 * a base writes 4 KiB. The table entry reaches the disk only at the next
 * flush, after the data.
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

/* Pieces of COW data are moved through a bounded buffer. */
#define COW_CHUNK (1u << 20)
/* Zero detection granularity inside fresh blocks. */
#define ZERO_PAGE 4096u

uint64_t rw_size(vdisk_disk *d, unsigned level) {
        return d->images[level]->size;
}

static int map_checked(vdisk_image *img, uint64_t offset, uint64_t len, map_result *m) {
        int r;

        assert(len > 0 && offset < img->size && len <= img->size - offset);
        *m = (map_result) {};
        r = img->be->map(img->state, offset, len, m);
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        assert(m->length > 0);
        if (m->length > len)
                m->length = len;
        if (m->kind == MAP_ENCODED &&
            (m->unit_offset > offset || offset - m->unit_offset >= m->unit_length ||
             m->length > m->unit_length - (offset - m->unit_offset)))
                return vdisk_error(-EUCLEAN, "%s: encoded unit at %" PRIu64 " does not cover offset %" PRIu64,
                                   vdisk_io_name(img->io), m->unit_offset, offset);
        return 0;
}

int rw_read(vdisk_disk *d, unsigned level, void *buf, size_t len, uint64_t offset) {
        vdisk_image *img = d->images[level];
        uint8_t *p = buf;
        int r;

        if (img->info_only)
                return vdisk_error(-EPERM, "%s: opened for information only", vdisk_io_name(img->io));
        if (img->be->flags & BACKEND_IDENTITY) {
                uint64_t n = offset < img->size ? MIN((uint64_t) len, img->size - offset) : 0;

                memset(p + n, 0, len - n);   /* past the image's end: zeros */
                return n > 0 ? io_pread_zerofill(img->io, p, (size_t) n, offset) : 0;
        }
        while (len > 0) {
                const uint8_t *unit;
                map_result m;
                size_t n;

                if (offset >= img->size) {
                        memset(p, 0, len);
                        return 0;
                }
                r = map_checked(img, offset, MIN((uint64_t) len, img->size - offset), &m);
                if (r < 0)
                        return r;
                n = (size_t) m.length;
                switch (m.kind) {
                case MAP_DATA:
                        r = io_pread_zerofill(image_file(img, m.file), p, n, m.host_offset);
                        break;
                case MAP_ENCODED:
                        r = image_decode_unit(img, &m, &unit);
                        if (r >= 0)
                                memcpy(p, unit + (offset - m.unit_offset), n);
                        break;
                case MAP_ZERO:
                        memset(p, 0, n);
                        r = 0;
                        break;
                case MAP_UNALLOC:
                        if (level == 0) {
                                memset(p, 0, n);
                                r = 0;
                        } else
                                r = rw_read(d, level - 1, p, n, offset);
                        break;
                default:
                        r = vdisk_error(-EUCLEAN, "%s: bad map kind", vdisk_io_name(img->io));
                }
                if (r < 0)
                        return r;
                p += n;
                offset += n;
                len -= n;
        }
        return 0;
}

/* Writes `len` bytes of `data` at host offset `host` of a freshly allocated
 * block, skipping all-zero pages (they already read as zeros). */
static int write_skipping_zeros(vdisk_io *io, const uint8_t *data, size_t len, uint64_t host) {
        size_t i = 0;
        int r;

        while (i < len) {
                size_t start, end;

                /* skip zero pages */
                while (i < len && mem_is_zero(data + i, MIN((size_t) ZERO_PAGE, len - i)))
                        i += MIN((size_t) ZERO_PAGE, len - i);
                if (i >= len)
                        break;
                start = i;
                while (i < len && !mem_is_zero(data + i, MIN((size_t) ZERO_PAGE, len - i)))
                        i += MIN((size_t) ZERO_PAGE, len - i);
                end = i;
                r = io_pwrite(io, data + start, end - start, host + start);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Checks a write into `img`; returns 1 to go on, 0 when there is nothing to
 * do, or an error. */
static int write_prepare(vdisk_image *img, uint64_t offset, uint64_t len) {
        if (!img->writable || img->info_only)
                return vdisk_error(-EROFS, "%s: image is read-only", vdisk_io_name(img->io));
        if (!range_within(offset, len, img->size))
                return vdisk_error(-EINVAL, "%s: write beyond the end of the image", vdisk_io_name(img->io));
        if (len > 0 && img->be->note_write) {
                int r = img->be->note_write(img->state, offset, len);

                if (r < 0)
                        return vdisk_error_prefix(r, vdisk_io_name(img->io));
        }
        return len > 0;
}

/* Writes one newly reserved unit [ustart, uend) of image `level` to `file`
 * at host offset `host`: the new bytes p[0..n) at `offset`, and around them
 * what the unit read before (the view at `level`: zeros for a ZERO block,
 * the parent's data for an unallocated one). The unit is assembled in
 * memory, COW_CHUNK at a time, and written with one pwrite per chunk (per
 * run of non-zero pages when the space is fresh), so a small write into a
 * new 1 MiB block costs one read of the parent and one write. */
static int fill_unit(vdisk_disk *d, unsigned level, uint64_t ustart, uint64_t uend, uint64_t offset,
                     const uint8_t *p, size_t n, vdisk_io *file, uint64_t host, int fresh) {
        vdisk_image *img = d->images[level];
        uint64_t end = offset + n;
        bool zero_before;
        uint8_t *buf;
        map_result m;
        int r;

        /* The new bytes cover the unit: write them as they are. */
        if (offset == ustart && end == uend)
                return fresh ? write_skipping_zeros(file, p, n, host) : io_pwrite(file, p, n, host);

        /* A unit that read zeros (a ZERO block, or nothing below a base)
         * needs no read: in fresh space only the new bytes are written. */
        r = map_checked(img, ustart, uend - ustart, &m);
        if (r < 0)
                return r;
        zero_before = m.length == uend - ustart && (m.kind == MAP_ZERO || (m.kind == MAP_UNALLOC && level == 0));
        if (zero_before && fresh)
                return write_skipping_zeros(file, p, n, host + (offset - ustart));

        /* Assembled in the disk's scratch buffer (the disk lock is held). */
        if (!d->scratch && !(d->scratch = buf_alloc(COW_CHUNK)))
                return vdisk_error(-ENOMEM, "out of memory");
        buf = d->scratch;
        for (uint64_t pos = ustart; pos < uend;) {
                size_t len = (size_t) MIN(uend - pos, (uint64_t) COW_CHUNK);
                uint64_t lo = MAX(pos, offset), hi = MIN(pos + len, end);

                /* Old content only where the new bytes do not cover it. */
                if (zero_before) {
                        memset(buf, 0, len);
                        if (lo < hi)
                                memcpy(buf + (lo - pos), p + (lo - offset), (size_t) (hi - lo));
                } else if (lo < hi) {
                        if (lo > pos) {
                                r = rw_read(d, level, buf, (size_t) (lo - pos), pos);
                                if (r < 0)
                                        return r;
                        }
                        memcpy(buf + (lo - pos), p + (lo - offset), (size_t) (hi - lo));
                        if (hi < pos + len) {
                                r = rw_read(d, level, buf + (hi - pos), (size_t) (pos + len - hi), hi);
                                if (r < 0)
                                        return r;
                        }
                } else {
                        r = rw_read(d, level, buf, len, pos);
                        if (r < 0)
                                return r;
                }
                r = fresh ? write_skipping_zeros(file, buf, len, host + (pos - ustart))
                          : io_pwrite(file, buf, len, host + (pos - ustart));
                if (r < 0)
                        return r;
                pos += len;
        }
        return 0;
}

/* Allocates the unit of image `level` containing `offset` as a transaction:
 * reserve, write the whole unit, and only then commit the table entry. On
 * failure the reservation is released and the image reads as it did before.
 * *ret_n gets the bytes of p consumed. */
static int write_new_unit(vdisk_disk *d, unsigned level, uint64_t offset, const uint8_t *p, size_t len,
                          bool filled, size_t *ret_n) {
        vdisk_image *img = d->images[level];
        reservation res = {};
        uint64_t uend;
        size_t n;
        int r;

        if (!img->be->allocate)
                return vdisk_error(-EOPNOTSUPP, "%s: %s images cannot allocate blocks",
                                   vdisk_io_name(img->io), img->be->info.name);
        r = img->be->allocate(img->state, offset, len, &res);
        if (r < 0)
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        assert(res.unit_offset <= offset && res.length > offset - res.unit_offset);
        uend = MIN(res.unit_offset + res.length, img->size);
        n = (size_t) MIN((uint64_t) len, uend - offset);
        r = fill_unit(d, level, res.unit_offset, uend, offset, p, n, image_file(img, res.file), res.host_offset,
                      res.fresh && !filled);
        /* The data is written (not queued behind: io.h) before the table
         * points at it, so a queued write that fails fails this call. */
        if (r >= 0)
                r = io_drain(image_file(img, res.file));
        if (r < 0) {
                img->be->release(img->state, &res);
                return r;
        }
        r = img->be->commit(img->state, &res);
        if (r < 0) {
                img->be->release(img->state, &res);
                return vdisk_error_prefix(r, vdisk_io_name(img->io));
        }
        *ret_n = n;
        return 0;
}

/* VirtualBox gives an image a new modification UUID on its first write after
 * open. It is renewed once something was written, so a write that failed
 * without changing anything leaves the image's identity alone too. */
static int write_done(vdisk_image *img, bool wrote, int r) {
        int k;

        if (!wrote)
                return r;
        k = image_mark_modified(img);
        return r < 0 ? r : k;
}

/* `filled`: a new unit is written whole, zero pages included (the file
 * holds every byte of it, as after qemu-img convert -S 0). */
static int write_range(vdisk_disk *d, unsigned level, const void *buf, size_t len, uint64_t offset, bool filled) {
        vdisk_image *img = d->images[level];
        const uint8_t *p = buf;
        bool wrote = false;
        int r;

        r = write_prepare(img, offset, len);
        if (r <= 0)
                return r;

        if (img->be->flags & BACKEND_IDENTITY)
                return write_done(img, true, io_pwrite(img->io, buf, len, offset));
        if ((img->be->flags | img->layout.flags) & BACKEND_STREAM) {
                r = img->be->stream_write(img->state, offset, buf, len);
                return write_done(img, r >= 0, r < 0 ? vdisk_error_prefix(r, vdisk_io_name(img->io)) : r);
        }

        while (len > 0) {
                map_result m;
                size_t n = 0;

                r = map_checked(img, offset, len, &m);
                if (r < 0)
                        break;
                if (m.kind == MAP_DATA && !m.shared) {
                        n = (size_t) m.length;
                        r = io_pwrite(image_file(img, m.file), p, n, m.host_offset);
                } else
                        /* UNALLOC, ZERO, and ENCODED: an encoded unit is
                         * never rewritten in place; it gets a new unit.
                         * Shared DATA is copied on write the same way. */
                        r = write_new_unit(d, level, offset, p, len, filled, &n);
                if (r < 0)
                        break;
                wrote = true;
                p += n;
                offset += n;
                len -= n;
        }
        return write_done(img, wrote, r);
}

int rw_write(vdisk_disk *d, unsigned level, const void *buf, size_t len, uint64_t offset) {
        return write_range(d, level, buf, len, offset, false);
}

int rw_write_filled(vdisk_disk *d, unsigned level, const void *buf, size_t len, uint64_t offset) {
        return write_range(d, level, buf, len, offset, true);
}

/* Does the view at `level` read zeros in [offset, offset+len)? */
int rw_is_zero(vdisk_disk *d, int level, uint64_t offset, uint64_t len, bool *ret) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        *ret = true;
        if (level < 0)
                return 0;
        while (len > 0) {
                vdisk_extent e;

                r = rw_status(d, 0, (unsigned) level, offset, len, &e);
                if (r < 0)
                        return r;
                if (!(e.flags & VDISK_EXTENT_ZERO)) {
                        size_t n = (size_t) MIN(e.length, (uint64_t) COW_CHUNK);
                        if (!buf && !(buf = buf_alloc(COW_CHUNK)))
                                return vdisk_error(-ENOMEM, "out of memory");
                        r = rw_read(d, (unsigned) level, buf, n, offset);
                        if (r < 0)
                                return r;
                        if (!mem_is_zero(buf, n)) {
                                *ret = false;
                                return 0;
                        }
                        e.length = n;
                }
                offset += e.length;
                len -= e.length;
        }
        return 0;
}

/* With `discard`, whole zero units that hold something are first offered
 * to the backend's discard() (its space given back); the rest as zeros. */
static int write_zeroes(vdisk_disk *d, unsigned level, int below, uint64_t offset, uint64_t len, bool discard) {
        vdisk_image *img = d->images[level];
        _cleanup_free_ uint8_t *zero = NULL;
        bool wrote = false;
        int r;

        r = write_prepare(img, offset, len);
        if (r <= 0)
                return r;
        if (img->be->flags & BACKEND_IDENTITY)
                return write_done(img, true, io_write_zeroes(img->io, offset, len));

        while (len > 0) {
                /* Whole zero units may become zero entries (mark_zero);
                 * a discard gives back whole clusters where there are none. */
                uint64_t zu = img->layout.zero_unit ? img->layout.zero_unit :
                              discard && img->be->discard ? img->layout.cluster_size : 0;
                uint64_t bstart = zu ? ALIGN_DOWN(offset, zu) : offset;
                uint64_t bend = zu ? MIN(bstart + zu, img->size) : offset + len;
                uint64_t n = MIN(len, bend - offset);
                bool whole = zu && offset == bstart && n == bend - bstart;
                /* discard's sub-units of a zero unit (qcow2 subclusters) */
                uint64_t du = discard && img->be->discard && img->layout.discard_unit &&
                              img->layout.discard_unit < zu ? img->layout.discard_unit : 0;
                uint64_t dn = 0;
                map_result m;

                if (du && !whole) {
                        if (offset % du != 0)
                                /* the piece of a sub-unit before the whole ones: zeros */
                                n = MIN(n, ALIGN_UP(offset, du) - offset);
                        else
                                dn = offset + n == img->size ? n : ALIGN_DOWN(n, du);
                }
                if (discard && (whole || dn > 0) && img->be->discard) {
                        /* the whole unit (or whole sub-units), whatever its parts hold */
                        if (!whole)
                                n = dn;
                        r = img->be->discard(img->state, offset, n);
                        if (r >= 0) {
                                wrote = true;
                                offset += n;
                                len -= n;
                                continue;
                        }
                        if (r != -EOPNOTSUPP) {
                                r = vdisk_error_prefix(r, vdisk_io_name(img->io));
                                break;
                        }
                }
                r = map_checked(img, offset, n, &m);
                if (r < 0)
                        break;
                n = m.length;
                whole = whole && n == bend - bstart;
                switch (m.kind) {
                case MAP_ZERO:
                        break;
                case MAP_DATA:
                        if (!m.shared) {
                                r = io_write_zeroes(image_file(img, m.file), m.host_offset, n);
                                wrote = true;
                                break;
                        }
                        /* shared: a zero entry, or zeros copied on write */
                        __attribute__((fallthrough));
                case MAP_ENCODED:
                case MAP_UNALLOC: {
                        bool below_zero;

                        /* Already zero if what will show through reads zeros. */
                        if (m.kind == MAP_UNALLOC) {
                                r = rw_is_zero(d, below, offset, n, &below_zero);
                                if (r < 0 || below_zero)
                                        break;
                        }
                        if (whole && img->be->mark_zero) {
                                r = img->be->mark_zero(img->state, offset, n);
                                wrote = wrote || r >= 0;
                                if (r != -EOPNOTSUPP)
                                        break;
                        }
                        if (!zero && !(zero = calloc(1, COW_CHUNK))) {
                                r = vdisk_error(-ENOMEM, "out of memory");
                                break;
                        }
                        n = MIN(n, (uint64_t) COW_CHUNK);
                        r = rw_write(d, level, zero, (size_t) n, offset);
                        break;
                }
                }
                if (r < 0) {
                        r = vdisk_error_prefix(r, vdisk_io_name(img->io));
                        break;
                }
                offset += n;
                len -= n;
        }
        return write_done(img, wrote, r);
}

int rw_write_zeroes(vdisk_disk *d, unsigned level, int below, uint64_t offset, uint64_t len) {
        return write_zeroes(d, level, below, offset, len, false);
}

int rw_discard(vdisk_disk *d, uint64_t offset, uint64_t len) {
        return write_zeroes(d, d->n - 1, (int) d->n - 2, offset, len, true);
}

bool extent_file_run(vdisk_io *io, vdisk_extent *e) {
        uint64_t next;

        /* No data after the offset (past the file's end too) is UINT64_MAX. */
        if (io_seek_data(io, e->host_offset, 0, &next) < 0)
                return false;   /* the file cannot tell: data */
        if (next > e->host_offset) {
                e->length = MIN(e->length, next - e->host_offset);
                return true;
        }
        if (io_seek_data(io, e->host_offset, 1, &next) >= 0 && next > e->host_offset)
                e->length = MIN(e->length, next - e->host_offset);
        return false;
}

/* Where image_file_holes() says so, data over a hole of its file reads as
 * zeros: ZERO is added (DATA kept). */
static void file_holes(vdisk_image *img, vdisk_io *io, vdisk_extent *e) {
        if (image_file_holes(img) && extent_file_run(io, e))
                e->flags |= VDISK_EXTENT_ZERO;
}

static int status(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len, bool holes,
                  vdisk_extent *ret) {
        uint64_t length = len;
        bool has_offset = false;
        map_result m = {};
        int r;

        assert(top < d->n && bottom <= top && len > 0);
        for (unsigned level = top;; level--) {
                vdisk_image *img = d->images[level];

                if (offset >= img->size) {
                        /* Past this image's end: zeros, defined here. */
                        *ret = (vdisk_extent) { .offset = offset, .length = length,
                                                .flags = VDISK_EXTENT_ZERO | VDISK_EXTENT_ALLOCATED,
                                                .depth = (int) (top - level) };
                        return 0;
                }
                length = MIN(length, img->size - offset);
                r = map_checked(img, offset, length, &m);
                if (r < 0)
                        return r;
                length = m.length;
                /* An encoded unit has data but no offset it reads from; a
                 * zero or unallocated unit has one where it kept its space. */
                has_offset = m.kind == MAP_DATA || m.space;
                if (m.kind != MAP_UNALLOC) {
                        *ret = (vdisk_extent) {
                                .offset = offset, .length = length,
                                .flags = VDISK_EXTENT_ALLOCATED |
                                         (m.kind == MAP_ZERO ? VDISK_EXTENT_ZERO : VDISK_EXTENT_DATA),
                                .depth = (int) (top - level),
                                .host_offset = m.host_offset,
                                .host_offset_valid = has_offset,
                                .file = has_offset ? vdisk_io_name(m.file ? m.file : img->io) : NULL,
                        };
                        if (holes && m.kind == MAP_DATA)
                                file_holes(img, image_file(img, m.file), ret);
                        /* A raw base "allocates" everything; holes map as ZERO. */
                        return 0;
                }
                if (level == bottom)
                        break;
        }
        /* Defined by none; the bottom image's space there is reported. */
        *ret = (vdisk_extent) { .offset = offset, .length = length,
                                .flags = bottom == 0 ? VDISK_EXTENT_ZERO : 0, .depth = -1,
                                .host_offset = m.host_offset,
                                .host_offset_valid = has_offset,
                                .file = has_offset ? vdisk_io_name(m.file ? m.file : d->images[bottom]->io) : NULL };
        return 0;
}

/* qemu looks into the file under the data of a fixed or preallocated image
 * (a static VDI, a fixed VHD) and where the backend says it does (qcow2's
 * metadata preallocation). Decided once per open, as qemu does; a failure to
 * decide means no. A raw image's holes are ZERO extents already. */
bool image_file_holes(vdisk_image *img) {
        bool holes = false;
        meta m;

        if (img->file_holes)
                return img->file_holes > 0;
        if (img->be->flags & BACKEND_IDENTITY)
                holes = false;
        else if (image_get_meta(img, &m) >= 0 && (m.mask & META_FLAGS) && (m.flags & VDISK_IMAGE_FLAGS_FIXED))
                holes = true;
        else if (img->be->file_holes && img->be->file_holes(img->state, &holes) < 0)
                holes = false;
        img->file_holes = holes ? 1 : -1;
        return holes;
}

int rw_status(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len, vdisk_extent *ret) {
        return status(d, bottom, top, offset, len, false, ret);
}

int rw_status_file(vdisk_disk *d, unsigned bottom, unsigned top, uint64_t offset, uint64_t len,
                   vdisk_extent *ret) {
        return status(d, bottom, top, offset, len, true, ret);
}
