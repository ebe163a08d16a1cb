/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/blockmap.h"
#include "io/io.h"
#include "util/util.h"

unsigned blockmap_entry_size(blockmap_format format) {
        switch (format) {
        case BLOCKMAP_LE32:
        case BLOCKMAP_BE32:
                return 4;
        case BLOCKMAP_LE64:
        case BLOCKMAP_BE64:
                return 8;
        }
        assert(!"bad blockmap format");
        return 0;
}

int blockmap_table_size(uint64_t n, blockmap_format format, uint64_t *ret) {
        uint64_t bytes;

        assert(ret);

        if (MUL_OVERFLOW(n, (uint64_t) blockmap_entry_size(format), &bytes) ||
            bytes > BLOCKMAP_MAX_BYTES)
                return vdisk_error(-EFBIG, "allocation table of %" PRIu64 " entries exceeds %" PRIu64 " MiB",
                                   n, BLOCKMAP_MAX_BYTES >> 20);
        *ret = ALIGN_UP(bytes, (uint64_t) BLOCKMAP_SECTOR);
        return 0;
}

static void put_entry(uint8_t *p, blockmap_format format, uint64_t v) {
        switch (format) {
        case BLOCKMAP_LE32:
                put_le32(p, (uint32_t) v);
                break;
        case BLOCKMAP_BE32:
                put_be32(p, (uint32_t) v);
                break;
        case BLOCKMAP_LE64:
                put_le64(p, v);
                break;
        case BLOCKMAP_BE64:
                put_be64(p, v);
                break;
        }
}

static uint64_t get_entry(const uint8_t *p, blockmap_format format) {
        switch (format) {
        case BLOCKMAP_LE32:
                return get_le32(p);
        case BLOCKMAP_BE32:
                return get_be32(p);
        case BLOCKMAP_LE64:
                return get_le64(p);
        case BLOCKMAP_BE64:
                return get_be64(p);
        }
        return 0;
}

static uint64_t n_sectors(uint64_t raw_size) {
        return raw_size / BLOCKMAP_SECTOR;
}

static void mark_dirty(blockmap *bm, uint64_t sector) {
        if (!bitmap_get(bm->dirty, sector)) {
                bitmap_set(bm->dirty, sector);
                bm->n_dirty++;
        }
}

/* Fills raw bytes [from, to) with the entry pattern of `fill`, keeping the
 * pattern aligned to entry boundaries (to is a sector end, from an entry
 * boundary). */
static void fill_range(blockmap *bm, uint64_t from, uint64_t to, uint64_t fill) {
        unsigned es = blockmap_entry_size(bm->format);

        assert(from % es == 0);
        for (uint64_t o = from; o + es <= to; o += es)
                put_entry(bm->raw + o, bm->format, fill);
}

int blockmap_init(blockmap *bm, uint64_t offset, uint64_t n, blockmap_format format, uint64_t fill) {
        uint64_t raw_size;
        int r;

        assert(bm);

        r = blockmap_table_size(n, format, &raw_size);
        if (r < 0)
                return r;

        _cleanup_free_ uint8_t *raw = malloc(MAX(raw_size, (uint64_t) 1));
        _cleanup_free_ uint64_t *dirty = bitmap_new(MAX(n_sectors(raw_size), (uint64_t) 1));
        if (!raw || !dirty)
                return -ENOMEM;

        *bm = (blockmap) {
                .raw = TAKE_PTR(raw),
                .raw_size = raw_size,
                .n = n,
                .offset = offset,
                .format = format,
                .dirty = TAKE_PTR(dirty),
        };
        fill_range(bm, 0, raw_size, fill);
        blockmap_mark_all_dirty(bm);
        return 0;
}

int blockmap_load(blockmap *bm, vdisk_io *io, uint64_t offset, uint64_t n, blockmap_format format) {
        uint64_t raw_size, file_size;
        int r;

        assert(bm);
        assert(io);

        r = blockmap_table_size(n, format, &raw_size);
        if (r < 0)
                return r;

        r = io_get_size(io, &file_size);
        if (r < 0)
                return r;
        if (!range_within(offset, n * blockmap_entry_size(format), file_size))
                return vdisk_error(-EUCLEAN, "allocation table at %" PRIu64 " (%" PRIu64 " entries) "
                                   "extends past the end of the file (%" PRIu64 " bytes)",
                                   offset, n, file_size);

        _cleanup_free_ uint8_t *raw = malloc(MAX(raw_size, (uint64_t) 1));
        _cleanup_free_ uint64_t *dirty = bitmap_new(MAX(n_sectors(raw_size), (uint64_t) 1));
        if (!raw || !dirty)
                return -ENOMEM;

        if (raw_size > 0) {
                r = io_pread_zerofill(io, raw, raw_size, offset);
                if (r < 0)
                        return r;
        }

        *bm = (blockmap) {
                .raw = TAKE_PTR(raw),
                .raw_size = raw_size,
                .n = n,
                .offset = offset,
                .format = format,
                .dirty = TAKE_PTR(dirty),
        };
        return 0;
}

void blockmap_done(blockmap *bm) {
        if (!bm)
                return;
        free(bm->raw);
        free(bm->dirty);
        *bm = (blockmap) {};
}

uint64_t blockmap_get(const blockmap *bm, uint64_t i) {
        assert(bm);
        assert(i < bm->n);

        return get_entry(bm->raw + i * blockmap_entry_size(bm->format), bm->format);
}

void blockmap_set(blockmap *bm, uint64_t i, uint64_t v) {
        unsigned es;

        assert(bm);
        assert(i < bm->n);

        if (blockmap_get(bm, i) == v)
                return;
        es = blockmap_entry_size(bm->format);
        put_entry(bm->raw + i * es, bm->format, v);
        mark_dirty(bm, i * es / BLOCKMAP_SECTOR);
}

int blockmap_resize(blockmap *bm, uint64_t n, uint64_t fill) {
        uint64_t raw_size, old_end, new_end;
        unsigned es;
        int r;

        assert(bm);

        if (n == bm->n)
                return 0;

        r = blockmap_table_size(n, bm->format, &raw_size);
        if (r < 0)
                return r;
        es = blockmap_entry_size(bm->format);

        if (raw_size != bm->raw_size) {
                uint64_t keep = MIN(n_sectors(raw_size), n_sectors(bm->raw_size));
                _cleanup_free_ uint64_t *dirty = bitmap_new(MAX(n_sectors(raw_size), (uint64_t) 1));
                if (!dirty)
                        return -ENOMEM;

                if (raw_size > bm->raw_size) {
                        uint8_t *raw = realloc(bm->raw, raw_size);
                        if (!raw)
                                return -ENOMEM;
                        bm->raw = raw;
                }
                /* When shrinking, the buffer simply stays bigger than needed. */

                bm->n_dirty = 0;
                for (uint64_t s = 0; s < keep; s++)
                        if (bitmap_get(bm->dirty, s)) {
                                bitmap_set(dirty, s);
                                bm->n_dirty++;
                        }
                free(bm->dirty);
                bm->dirty = TAKE_PTR(dirty);
        }

        old_end = bm->n * es;
        new_end = n * es;
        /* Growing fills the new entries and the new padding; shrinking fills
         * the vacated bytes of the last sector. Either way the bytes from the
         * shorter end to the end of the new table change. */
        fill_range(bm, MIN(old_end, new_end), raw_size, fill);
        for (uint64_t s = MIN(old_end, new_end) / BLOCKMAP_SECTOR; s < n_sectors(raw_size); s++)
                mark_dirty(bm, s);

        bm->raw_size = raw_size;
        bm->n = n;
        return 0;
}

void blockmap_set_offset(blockmap *bm, uint64_t offset) {
        assert(bm);

        bm->offset = offset;
        blockmap_mark_all_dirty(bm);
}

void blockmap_mark_all_dirty(blockmap *bm) {
        assert(bm);

        for (uint64_t s = 0; s < n_sectors(bm->raw_size); s++)
                mark_dirty(bm, s);
}

bool blockmap_is_dirty(const blockmap *bm) {
        assert(bm);

        return bm->n_dirty > 0;
}

int blockmap_write_dirty(blockmap *bm, vdisk_io *io) {
        uint64_t total;
        int r;

        assert(bm);
        assert(io);

        total = n_sectors(bm->raw_size);
        for (uint64_t s = 0; s < total && bm->n_dirty > 0;) {
                uint64_t e;

                if (!bitmap_get(bm->dirty, s)) {
                        /* Skip clean words quickly. */
                        if (s % 64 == 0 && bm->dirty[s / 64] == 0)
                                s += 64;
                        else
                                s++;
                        continue;
                }

                for (e = s + 1; e < total && bitmap_get(bm->dirty, e); e++)
                        ;

                r = io_pwrite(io, bm->raw + s * BLOCKMAP_SECTOR, (e - s) * BLOCKMAP_SECTOR,
                              bm->offset + s * BLOCKMAP_SECTOR);
                if (r < 0)
                        return r;

                for (uint64_t i = s; i < e; i++)
                        bitmap_clear(bm->dirty, i);
                bm->n_dirty -= e - s;
                s = e;
        }
        return 0;
}

int blockmap_copy(const blockmap *src, blockmap *ret) {
        uint64_t words;

        assert(src);
        assert(ret);

        words = DIV_ROUND_UP(MAX(n_sectors(src->raw_size), (uint64_t) 1), 64);

        _cleanup_free_ uint8_t *raw = malloc(MAX(src->raw_size, (uint64_t) 1));
        _cleanup_free_ uint64_t *dirty = bitmap_new(words * 64);
        if (!raw || !dirty)
                return -ENOMEM;
        memcpy(raw, src->raw, src->raw_size);
        memcpy(dirty, src->dirty, words * sizeof(uint64_t));

        *ret = *src;
        ret->raw = TAKE_PTR(raw);
        ret->dirty = TAKE_PTR(dirty);
        return 0;
}
