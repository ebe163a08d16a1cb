/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2 persistent dirty bitmaps (header extension 0x23852875).
 *
 * Spec: qemu's docs/interop/qcow2.txt, "Bitmaps"; our reading in
 * docs/formats/qcow2.md. All fields big-endian.
 *
 *   extension    nb_bitmaps u32, reserved u32 (0), directory size u64,
 *                directory offset u64 (cluster-aligned); valid only while
 *                the autoclear bit 0 is set (a writer unaware of bitmaps
 *                clears it, and they are then stale: ignored)
 *   directory    per bitmap, 8-aligned: table offset u64, table size u32
 *                (entries), flags u32 (0 in_use, 1 auto, 2
 *                extra_data_compatible), type u8 (1 dirty tracking),
 *                granularity bits u8, name size u16, extra data size u32,
 *                extra data, name, zero padding
 *   table        one u64 per cluster of content: bits 9..55 the cluster's
 *                offset; 0 with bit 0 set reads all ones, 0 alone all zeros
 *   content      bit i covers bytes [i*g, (i+1)*g) of the disk, least
 *                significant bit first in each byte
 *
 * Everything read is checked before use (counts, sizes, offsets, names,
 * flags, padding); an invalid directory makes a writable open fail and a
 * read-only one ignore the bitmaps. Memory: the directory (at most ~64 MiB,
 * qemu's limit) and the content of the bitmaps being changed (at most
 * QCOW2_BITMAP_MEM_MAX for all of them).
 *
 * Writing (an enabled bitmap — auto, not in_use — records the writes):
 *   - before the first write after a flush, each enabled bitmap's flags
 *     get in_use, in place (a 4-byte aligned write), flushed: a crash from
 *     now on leaves them in_use (inconsistent), as qemu leaves them;
 *   - writes set bits in memory;
 *   - at flush: the new content goes to new clusters and a new table,
 *     their refcounts, flush; then the entry's table offset (8 bytes, in
 *     place), flush; then the old clusters are unreferenced, flush; then
 *     in_use is cleared, flush. A crash anywhere leaks at most clusters.
 *   - unlike qemu, which keeps in_use set until it closes the image, the
 *     bitmaps are consistent on disk after every flush.
 * Disabled and in_use bitmaps are never written. Adding and removing a
 * bitmap writes a whole new directory, then the header extension, then
 * frees the old directory.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "qcow2-int.h"
#include "io/io.h"
#include "util/util.h"

enum {
        BME_IN_USE       = 1u << 0,
        BME_AUTO         = 1u << 1,
        BME_EXTRA_COMPAT = 1u << 2,
        BME_KNOWN        = 0x7,
        BME_TYPE_DIRTY   = 1,
        BMT_ALL_ONES     = 1,
        BM_ENTRY_FIXED   = 24,
        BM_EXT_LEN       = 24,
};

#define BMT_RESERVED    (~(OFFSET_MASK | UINT64_C(1)))

static void *mfree(void *p) {
        free(p);
        return NULL;
}

static uint64_t bm_granularity(const qcow2_bitmap *b) {
        return UINT64_C(1) << b->gran_bits;
}

/* Bytes of content a bitmap of granularity 2^gran_bits has for the disk. */
static uint64_t content_bytes(const qcow2_state *s, unsigned gran_bits) {
        uint64_t nbits = DIV_ROUND_UP(s->size, UINT64_C(1) << gran_bits);

        return DIV_ROUND_UP(nbits, UINT64_C(8));
}

static uint64_t table_entries(const qcow2_state *s, unsigned gran_bits) {
        return DIV_ROUND_UP(content_bytes(s, gran_bits), s->cluster_size);
}

/* A bitmap qemu would use: consistent, a dirty-tracking one, no extra data
 * we must not touch. */
static bool bm_usable(const qcow2_bitmap *b) {
        return !(b->flags & BME_IN_USE) && b->type == BME_TYPE_DIRTY &&
               (b->extra_size == 0 || (b->flags & BME_EXTRA_COMPAT));
}

static void bm_free_all(qcow2_state *s) {
        for (uint32_t i = 0; s->bm && i < s->nb_bitmaps; i++) {
                free(s->bm[i].name);
                free(s->bm[i].extra);
                free(s->bm[i].bits);
                free(s->bm[i].new_bits);
        }
        free(s->bm);
        s->bm = NULL;
        s->bm_mem = 0;
}

void qcow2_bitmaps_close(qcow2_state *s) {
        bm_free_all(s);
}

static qcow2_bitmap *bm_find(qcow2_state *s, const char *name) {
        for (uint32_t i = 0; s->bm && i < s->nb_bitmaps; i++)
                if (streq(s->bm[i].name, name))
                        return &s->bm[i];
        return NULL;
}

/* Parses and checks the directory `dir` of `size` bytes holding `n` entries. */
static int parse_directory(qcow2_state *s, const uint8_t *dir, uint64_t size, uint32_t n, qcow2_bitmap **ret) {
        _cleanup_free_ qcow2_bitmap *v = calloc(n, sizeof *v);
        uint64_t pos = 0;
        int r = 0;

        if (!v)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
                qcow2_bitmap *b = &v[i];
                uint64_t len, want;
                uint16_t name_size;

                if (size - pos < BM_ENTRY_FIXED) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap directory entry %" PRIu32 " runs past the "
                                        "directory", i);
                        goto fail;
                }
                b->dir_pos = pos;
                b->table_offset = get_be64(dir + pos);
                b->table_size = get_be32(dir + pos + 8);
                b->flags = get_be32(dir + pos + 12);
                b->type = dir[pos + 16];
                b->gran_bits = dir[pos + 17];
                name_size = get_be16(dir + pos + 18);
                b->extra_size = get_be32(dir + pos + 20);
                if (name_size == 0 || name_size > QCOW2_BITMAP_NAME_MAX || b->extra_size > QCOW2_BITMAP_EXTRA_MAX) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap %" PRIu32 " has a name of %u bytes (1 to %u) or "
                                        "%" PRIu32 " bytes of extra data (at most %u)", i, name_size,
                                        QCOW2_BITMAP_NAME_MAX, b->extra_size, QCOW2_BITMAP_EXTRA_MAX);
                        goto fail;
                }
                len = ALIGN_UP(BM_ENTRY_FIXED + (uint64_t) b->extra_size + name_size, UINT64_C(8));
                if (len > size - pos) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap directory entry %" PRIu32 " runs past the "
                                        "directory", i);
                        goto fail;
                }
                if (!mem_is_zero(dir + pos + BM_ENTRY_FIXED + b->extra_size + name_size,
                                 len - (BM_ENTRY_FIXED + b->extra_size + name_size))) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap directory entry %" PRIu32 " has non-zero padding",
                                        i);
                        goto fail;
                }
                b->name = strndup((const char *) dir + pos + BM_ENTRY_FIXED + b->extra_size, name_size);
                if (!b->name) {
                        r = -ENOMEM;
                        goto fail;
                }
                if (strlen(b->name) != name_size) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap %" PRIu32 " has a NUL in its name", i);
                        goto fail;
                }
                if (b->extra_size) {
                        b->extra = malloc(b->extra_size);
                        if (!b->extra) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        memcpy(b->extra, dir + pos + BM_ENTRY_FIXED, b->extra_size);
                }
                for (uint32_t k = 0; k < i; k++)
                        if (streq(v[k].name, b->name)) {
                                r = vdisk_error(-EUCLEAN, "qcow2: two bitmaps are named '%.64s'", b->name);
                                goto fail;
                        }
                if (b->flags & ~(uint32_t) BME_KNOWN) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s' has reserved flags 0x%" PRIx32, b->name,
                                        b->flags & ~(uint32_t) BME_KNOWN);
                        goto fail;
                }
                if (b->type != BME_TYPE_DIRTY) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s' has type %u (1, dirty tracking, is the "
                                        "only one)", b->name, b->type);
                        goto fail;
                }
                if (b->gran_bits < QCOW2_BITMAP_GRAN_MIN || b->gran_bits > QCOW2_BITMAP_GRAN_MAX) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s' has granularity bits %u (%u to %u)",
                                        b->name, b->gran_bits, QCOW2_BITMAP_GRAN_MIN, QCOW2_BITMAP_GRAN_MAX);
                        goto fail;
                }
                want = table_entries(s, b->gran_bits);
                if (b->table_size != want && !(b->flags & BME_IN_USE)) {
                        r = vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s' has a table of %" PRIu32 " entries, "
                                        "its disk needs %" PRIu64, b->name, b->table_size, want);
                        goto fail;
                }
                if (b->table_offset % s->cluster_size != 0 || b->table_offset < s->cluster_size ||
                    !range_within(b->table_offset, (uint64_t) b->table_size * 8, s->file_size)) {
                        r = vdisk_error(-EUCLEAN, "qcow2: the table of bitmap '%.64s' at %" PRIu64 " (%" PRIu32
                                        " entries) is not cluster-aligned within the file", b->name,
                                        b->table_offset, b->table_size);
                        goto fail;
                }
                pos += len;
        }
        if (pos != size) {
                r = vdisk_error(-EUCLEAN, "qcow2: the bitmap directory has %" PRIu64 " bytes, its %" PRIu32
                                " entries %" PRIu64, size, n, pos);
                goto fail;
        }
        *ret = TAKE_PTR(v);
        return 0;
fail:
        for (uint32_t i = 0; i < n; i++) {
                free(v[i].name);
                free(v[i].extra);
        }
        return r;
}

/* Reads a table entry range [first, first+n) of bitmap b into t, checked. */
static int read_table(qcow2_state *s, const qcow2_bitmap *b, uint64_t *t) {
        _cleanup_free_ uint8_t *raw = malloc((size_t) b->table_size * 8 + 1);
        int r;

        if (!raw)
                return -ENOMEM;
        r = io_pread(s->io, raw, (size_t) b->table_size * 8, b->table_offset);
        if (r < 0)
                return r;
        for (uint32_t j = 0; j < b->table_size; j++) {
                uint64_t e = get_be64(raw + (size_t) j * 8), off = e & OFFSET_MASK;

                if ((e & BMT_RESERVED) || (off && (e & BMT_ALL_ONES)) ||
                    (off && (off % s->cluster_size != 0 || !range_within(off, s->cluster_size, s->file_size))))
                        return vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s': table entry %" PRIu32 " (0x%016" PRIx64
                                           ") is invalid", b->name, j, e);
                t[j] = e;
        }
        return 0;
}

/* Loads the content of b into memory (bounded by QCOW2_BITMAP_MEM_MAX). */
static int load_bits(qcow2_state *s, qcow2_bitmap *b) {
        uint64_t len = content_bytes(s, b->gran_bits), cs = s->cluster_size, nbits;
        _cleanup_free_ uint64_t *t = NULL;
        _cleanup_free_ uint8_t *bits = NULL;
        int r;

        if (b->bits)
                return 0;
        if (b->flags & BME_IN_USE)
                return vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s' is inconsistent (in use)", b->name);
        if (len > QCOW2_BITMAP_MEM_MAX - s->bm_mem)
                return vdisk_error(-E2BIG, "qcow2: bitmap '%.64s' (%" PRIu64 " bytes) does not fit in the %" PRIu64
                                   " bytes of memory for bitmaps", b->name, len, QCOW2_BITMAP_MEM_MAX);
        t = calloc(b->table_size ? b->table_size : 1, sizeof *t);
        bits = calloc(1, len ? len : 1);
        if (!t || !bits)
                return -ENOMEM;
        r = read_table(s, b, t);
        if (r < 0)
                return r;
        for (uint64_t j = 0; j < b->table_size; j++) {
                uint64_t at = j * cs, n = MIN(cs, len - at), off = t[j] & OFFSET_MASK;

                if (off) {
                        r = io_pread_zerofill(s->io, bits + at, (size_t) n, off);
                        if (r < 0)
                                return r;
                } else if (t[j] & BMT_ALL_ONES)
                        memset(bits + at, 0xff, (size_t) n);
        }
        /* the tail bits past the disk's end stay zero */
        nbits = DIV_ROUND_UP(s->size, bm_granularity(b));
        if (nbits % 8)
                bits[len - 1] &= (uint8_t) ((1u << (nbits % 8)) - 1);
        b->bits = TAKE_PTR(bits);
        b->bits_len = len;
        s->bm_mem += len;
        return 0;
}

int qcow2_bitmaps_open(qcow2_state *s, bool writable) {
        _cleanup_free_ uint8_t *dir = NULL;
        int r;

        if (!s->bm_ext)
                return 0;
        if (!(s->autoclear & AUTOCLEAR_BITMAPS)) {
                /* a program unaware of bitmaps wrote the image: stale, ignored (qemu too) */
                s->nb_bitmaps = 0;
                return 0;
        }
        if (s->bm_ext_len != BM_EXT_LEN || s->bm_ext_reserved != 0 || s->nb_bitmaps == 0 ||
            s->nb_bitmaps > QCOW2_BITMAPS_MAX) {
                r = vdisk_error(-EUCLEAN, "qcow2: bitmaps extension of %" PRIu32 " bytes with %" PRIu32
                                " bitmaps (1 to %u) is invalid", s->bm_ext_len, s->nb_bitmaps, QCOW2_BITMAPS_MAX);
                goto broken;
        }
        if (s->bm_dir_size < BM_ENTRY_FIXED || s->bm_dir_size > QCOW2_BITMAP_DIR_MAX ||
            s->bm_dir_offset % s->cluster_size != 0 || s->bm_dir_offset < s->cluster_size ||
            !range_within(s->bm_dir_offset, s->bm_dir_size, s->file_size)) {
                r = vdisk_error(-EUCLEAN, "qcow2: bitmap directory at %" PRIu64 " (%" PRIu64 " bytes) is not "
                                "cluster-aligned within the file", s->bm_dir_offset, s->bm_dir_size);
                goto broken;
        }
        dir = malloc((size_t) s->bm_dir_size);
        if (!dir)
                return -ENOMEM;
        r = io_pread(s->io, dir, (size_t) s->bm_dir_size, s->bm_dir_offset);
        if (r < 0)
                return r;
        r = parse_directory(s, dir, s->bm_dir_size, s->nb_bitmaps, &s->bm);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                goto broken;
        if (!writable)
                return 0;
        if (s->version < 3)
                return vdisk_error(-EUCLEAN, "qcow2: a version 2 image with bitmaps");
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];

                if (!(b->flags & BME_AUTO) || !bm_usable(b))
                        continue;
                r = load_bits(s, b);
                if (r < 0)
                        return r;
                b->tracking = true;
        }
        return 0;
broken:
        if (writable)
                return r;
        /* read-only: the data reads without the bitmaps; check and a
         * caller asking for them are told why */
        s->bm_broken = true;
        snprintf(s->bm_broken_why, sizeof s->bm_broken_why, "%s", vdisk_last_error());
        s->nb_bitmaps = 0;
        return 0;
}

/* Sets bits first..last (clipped to the content: the disk's size at load). */
static void set_bits(qcow2_bitmap *b, uint64_t first, uint64_t last) {
        if (b->bits_len == 0 || first >= b->bits_len * 8)
                return;
        last = MIN(last, b->bits_len * 8 - 1);
        for (uint64_t i = first; i <= last;) {
                if (i % 8 == 0 && last - i >= 7) {
                        uint64_t n = (last - i + 1) / 8;

                        memset(b->bits + i / 8, 0xff, (size_t) n);
                        i += n * 8;
                        continue;
                }
                b->bits[i / 8] |= (uint8_t) (1u << (i % 8));
                i++;
        }
}

/* Writes the 4-byte flags of bitmap b in place. */
static int write_flags(qcow2_state *s, const qcow2_bitmap *b, uint32_t flags) {
        uint8_t f[4];

        put_be32(f, flags);
        return io_pwrite(s->io, f, sizeof f, s->bm_dir_offset + b->dir_pos + 12);
}

int qcow2_bitmaps_note_write(qcow2_state *s, uint64_t offset, uint64_t len) {
        bool any = false;
        int r;

        assert(len > 0);
        for (uint32_t i = 0; i < s->nb_bitmaps; i++)
                any = any || s->bm[i].tracking;
        if (!any)
                return 0;
        if (!s->bm_marked) {
                for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                        if (!s->bm[i].tracking)
                                continue;
                        r = write_flags(s, &s->bm[i], s->bm[i].flags | BME_IN_USE);
                        if (r < 0)
                                return r;
                }
                r = io_flush(s->io);
                if (r < 0)
                        return r;
                s->bm_marked = true;
        }
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];

                if (!b->tracking)
                        continue;
                set_bits(b, offset >> b->gran_bits, (offset + len - 1) >> b->gran_bits);
                b->dirty = true;
        }
        return 0;
}

/* Unreferences the table of b (as it is on disk) and the clusters it names. */
static int free_table(qcow2_state *s, uint64_t table_offset, uint32_t table_size, const char *name) {
        qcow2_bitmap tmp = { .name = (char *) name, .table_offset = table_offset, .table_size = table_size };
        _cleanup_free_ uint64_t *t = calloc(table_size ? table_size : 1, sizeof *t);
        int r;

        if (!t)
                return -ENOMEM;
        r = read_table(s, &tmp, t);
        if (r < 0)
                return r;
        for (uint32_t j = 0; j < table_size; j++)
                if (t[j] & OFFSET_MASK) {
                        r = qcow2_rc_update(s, t[j] & OFFSET_MASK, -1, NULL);
                        if (r < 0)
                                return r;
                }
        return qcow2_uncount(s, table_offset, (uint64_t) table_size * 8);
}

/* Appends `len` bytes (rounded up to clusters) at the end of the file with
 * their refcounts (not yet durable); returns where. */
static int append_clusters(qcow2_state *s, const void *data, uint64_t len, uint64_t *ret) {
        return qcow2_table_place(s, data, len, 0, 0, QCOW2_PLACE_NOSYNC, ret);
}

/* Writes b's content to new clusters and a new table; returns the table's
 * offset (its refcounts counted, not yet flushed). */
static int write_content(qcow2_state *s, const qcow2_bitmap *b, uint64_t *ret_table) {
        uint64_t cs = s->cluster_size, n = DIV_ROUND_UP(b->bits_len, cs);
        _cleanup_free_ uint8_t *t = calloc(n ? n : 1, 8);
        int r;

        if (!t)
                return -ENOMEM;
        for (uint64_t j = 0; j < n; j++) {
                uint64_t at = j * cs, len = MIN(cs, b->bits_len - at), off;

                if (mem_is_zero(b->bits + at, (size_t) len))
                        continue;
                r = append_clusters(s, b->bits + at, len, &off);
                if (r < 0)
                        return r;
                put_be64(t + j * 8, off);
        }
        return append_clusters(s, t, n * 8, ret_table);
}

static int resize_unmark(qcow2_state *s);

/* Writes back every bitmap whose content changed, then clears the in_use
 * marks of the first write (see the top of the file). */
int qcow2_bitmaps_flush(qcow2_state *s) {
        bool any = false;
        int r;

        for (uint32_t i = 0; i < s->nb_bitmaps; i++)
                any = any || s->bm[i].dirty || s->bm[i].resize_marked;
        if (!any && !s->bm_marked)
                return 0;
        /* new content and tables, durable with their refcounts */
        _cleanup_free_ uint64_t *newt = calloc(s->nb_bitmaps, sizeof *newt);
        if (!newt)
                return -ENOMEM;
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                if (!s->bm[i].dirty)
                        continue;
                r = write_content(s, &s->bm[i], &newt[i]);
                if (r < 0)
                        return r;
        }
        r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;
        /* the switch, bitmap by bitmap (8 aligned bytes each) */
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];
                uint8_t e[12];

                if (!b->dirty)
                        continue;
                put_be64(e, newt[i]);
                put_be32(e + 8, (uint32_t) DIV_ROUND_UP(b->bits_len, s->cluster_size));
                r = io_pwrite(s->io, e, sizeof e, s->bm_dir_offset + b->dir_pos);
                if (r < 0)
                        return r;
        }
        r = io_flush(s->io);
        if (r < 0)
                return r;
        /* the old clusters */
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];

                if (!b->dirty)
                        continue;
                r = free_table(s, b->table_offset, b->table_size, b->name);
                b->table_offset = newt[i];
                b->table_size = (uint32_t) DIV_ROUND_UP(b->bits_len, s->cluster_size);
                if (r < 0)
                        return r;
                b->dirty = false;
        }
        r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;
        if (s->bm_marked) {
                for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                        if (!s->bm[i].tracking)
                                continue;
                        r = write_flags(s, &s->bm[i], s->bm[i].flags);
                        if (r < 0)
                                return r;
                }
                r = io_flush(s->io);
                if (r < 0)
                        return r;
                s->bm_marked = false;
        }
        return resize_unmark(s);
}

/* ---------------------------------------------------------------- resize */

/* Writes the table pointer of b's directory entry in place (offset and
 * size, 12 bytes of an 8-aligned entry). */
static int write_entry_table(qcow2_state *s, const qcow2_bitmap *b, uint64_t table_offset, uint32_t table_size) {
        uint8_t e[12];

        put_be64(e, table_offset);
        put_be32(e + 8, table_size);
        return io_pwrite(s->io, e, sizeof e, s->bm_dir_offset + b->dir_pos);
}

/* A bitmap a resize marked in use whose entry is final: the resize ended
 * (its new table is the bitmap's) and the entry fits the disk's size. */
static bool resize_done(const qcow2_state *s, const qcow2_bitmap *b) {
        return b->resize_marked && b->new_table_offset == 0 && b->table_size == table_entries(s, b->gran_bits);
}

/* Clears the in_use marks a resize left (a failed write after the switch)
 * on the bitmaps whose entries are final; never inside the resize's window. */
static int resize_unmark(qcow2_state *s) {
        bool any = false;
        int r;

        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];

                if (!resize_done(s, b))
                        continue;
                r = write_flags(s, b, b->flags);
                if (r < 0)
                        return r;
                any = true;
        }
        if (!any)
                return 0;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < s->nb_bitmaps; i++)
                if (resize_done(s, &s->bm[i]))
                        s->bm[i].resize_marked = false;
        return 0;
}

/* The content of b for a disk of new_size bytes: the bits of the range both
 * sizes share, none past it (qemu-img 7.2 leaves a grown range clean and
 * drops what a shrink cuts off). */
static int resized_bits(qcow2_state *s, qcow2_bitmap *b, uint64_t new_size, uint8_t **ret, uint64_t *ret_len) {
        uint64_t nbits = DIV_ROUND_UP(new_size, bm_granularity(b)), len = DIV_ROUND_UP(nbits, UINT64_C(8));
        bool loaded = b->bits != NULL;
        uint8_t *v = NULL;
        int r;

        r = load_bits(s, b);
        if (r < 0)
                return r;
        if (len > QCOW2_BITMAP_MEM_MAX - s->bm_mem)
                r = vdisk_error(-E2BIG, "qcow2: bitmap '%.64s' (%" PRIu64 " bytes for the new size) does not fit "
                                "in the %" PRIu64 " bytes of memory for bitmaps", b->name, len,
                                QCOW2_BITMAP_MEM_MAX);
        else if (!(v = calloc(1, len ? len : 1)))
                r = -ENOMEM;
        if (r >= 0) {
                memcpy(v, b->bits, (size_t) MIN(len, b->bits_len));
                if (nbits % 8)
                        v[len - 1] &= (uint8_t) ((1u << (nbits % 8)) - 1);
                *ret = v;
                *ret_len = len;
        }
        if (!loaded) {
                s->bm_mem -= b->bits_len;
                b->bits = mfree(b->bits);
                b->bits_len = 0;
        }
        return r;
}

int qcow2_bitmaps_resize_begin(qcow2_state *s, uint64_t new_size) {
        int r;

        assert(!s->bm_marked);
        for (uint32_t i = 0; i < s->nb_bitmaps; i++)
                if (!bm_usable(&s->bm[i]))
                        /* qemu-img: "Bitmap '...' is inconsistent and cannot be used" */
                        return vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s' is inconsistent (in use) or of a kind "
                                           "this program does not know: remove it before resizing", s->bm[i].name);
        /* 1. the new content and tables, durable with their refcounts */
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i], tmp = { .name = b->name };

                r = resized_bits(s, b, new_size, &tmp.bits, &tmp.bits_len);
                if (r < 0)
                        goto fail;
                r = write_content(s, &tmp, &b->new_table_offset);
                if (r < 0) {
                        free(tmp.bits);
                        goto fail;
                }
                b->new_table_size = (uint32_t) DIV_ROUND_UP(tmp.bits_len, s->cluster_size);
                if (b->tracking) {
                        b->new_bits = tmp.bits;
                        b->new_bits_len = tmp.bits_len;
                        s->bm_mem += tmp.bits_len;
                } else
                        free(tmp.bits);
        }
        r = qcow2_flush_refcounts(s);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                goto fail;
        /* 2. in_use: from here until the header says the new size, the
         * entries may not match it (as qemu's bitmaps stay in use while it
         * has the image open) */
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                s->bm[i].resize_marked = true;
                r = write_flags(s, &s->bm[i], s->bm[i].flags | BME_IN_USE);
                if (r < 0)
                        goto fail;
        }
        r = io_flush(s->io);
        if (r < 0)
                goto fail;
        /* 3. the entries point at the new tables */
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                r = write_entry_table(s, &s->bm[i], s->bm[i].new_table_offset, s->bm[i].new_table_size);
                if (r < 0)
                        goto fail;
        }
        r = io_flush(s->io);
        if (r < 0)
                goto fail;
        return 0;
fail:
        (void) qcow2_bitmaps_resize_end(s, false);
        return r;
}

/* Not switched: the old entries and flags back, the new tables freed. What
 * cannot be put back stays in use (on disk and here): the bitmap is lost,
 * as after a crash. */
static void resize_rollback(qcow2_state *s) {
        bool marked = false;
        int r = 0;

        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];

                if (!b->resize_marked)
                        continue;
                marked = true;
                r = write_entry_table(s, b, b->table_offset, b->table_size);
                if (r >= 0)
                        r = write_flags(s, b, b->flags);
                if (r < 0)
                        break;
        }
        if (marked && r >= 0)
                r = io_flush(s->io);
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];

                if (b->new_bits) {
                        s->bm_mem -= b->new_bits_len;
                        b->new_bits = mfree(b->new_bits);
                        b->new_bits_len = 0;
                }
                if (b->resize_marked && r < 0) {
                        b->flags |= BME_IN_USE;
                        b->tracking = false;
                        if (b->bits) {
                                s->bm_mem -= b->bits_len;
                                b->bits = mfree(b->bits);
                                b->bits_len = 0;
                        }
                        b->dirty = false;
                } else if (b->new_table_offset && free_table(s, b->new_table_offset, b->new_table_size, b->name) < 0)
                        vdisk_clear_error();    /* they leak */
                b->resize_marked = false;
                b->new_table_offset = 0;
                b->new_table_size = 0;
        }
        if (qcow2_flush_refcounts(s) < 0)
                vdisk_clear_error();
        vdisk_clear_error();
}

int qcow2_bitmaps_resize_end(qcow2_state *s, bool switched) {
        int r;

        if (!switched) {
                resize_rollback(s);
                return 0;
        }
        /* the header says the new size: the new tables are the bitmaps' */
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];
                uint64_t old_off = b->table_offset;
                uint32_t old_size = b->table_size;

                b->table_offset = b->new_table_offset;
                b->table_size = b->new_table_size;
                b->new_table_offset = 0;
                b->new_table_size = 0;
                if (b->bits) {
                        s->bm_mem -= b->bits_len;
                        free(b->bits);
                }
                b->bits = TAKE_PTR(b->new_bits);
                b->bits_len = b->new_bits_len;
                b->new_bits_len = 0;
                /* the old table and clusters: nothing points at them since 3. */
                if (free_table(s, old_off, old_size, b->name) < 0)
                        vdisk_clear_error();    /* they leak */
        }
        /* 4. the marks cleared (should that fail, the next flush tries again:
         * the resize is done all the same) */
        r = resize_unmark(s);
        if (r >= 0)
                r = qcow2_flush_refcounts(s);
        if (r < 0)
                vdisk_clear_error();
        return 0;
}

/* ---------------------------------------------------------------- check */

int qcow2_bitmaps_count(qcow2_state *s, qcow2_ref_fn ref, void *ctx, vdisk_check_report *rep) {
        int r;

        if (s->bm_broken) {
                rep->corruptions++;
                return check_report_add(rep, "ERROR the bitmap directory is invalid: %s", s->bm_broken_why);
        }
        if (s->nb_bitmaps == 0)
                return 0;
        ref(ctx, s->bm_dir_offset, s->bm_dir_size, "bitmap directory");
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                qcow2_bitmap *b = &s->bm[i];
                _cleanup_free_ uint64_t *t = calloc(b->table_size ? b->table_size : 1, sizeof *t);

                if (!t)
                        return -ENOMEM;
                ref(ctx, b->table_offset, (uint64_t) b->table_size * 8, "bitmap table");
                r = read_table(s, b, t);
                if (r < 0) {
                        rep->corruptions++;
                        r = check_report_add(rep, "ERROR %s", vdisk_last_error());
                        if (r < 0)
                                return r;
                        continue;
                }
                for (uint32_t j = 0; j < b->table_size; j++)
                        if (t[j] & OFFSET_MASK)
                                ref(ctx, t[j] & OFFSET_MASK, s->cluster_size, "bitmap data cluster");
        }
        return 0;
}

/* ---------------------------------------------------------------- the verb */

int qcow2_bitmaps_format_info(qcow2_state *s, strv_builder *kv) {
        int r = 0;

        for (uint32_t i = 0; r >= 0 && i < s->nb_bitmaps; i++) {
                const qcow2_bitmap *b = &s->bm[i];
                char key[64];

                /* qemu's flags in its order, as a list of strings ("[]") */
                snprintf(key, sizeof key, "bitmaps.%" PRIu32 ".flags[]", i);
                r = strv_push_pair(kv, key, "%s%s%s", b->flags & BME_IN_USE ? "in-use" : "",
                                   (b->flags & BME_IN_USE) && (b->flags & BME_AUTO) ? "," : "",
                                   b->flags & BME_AUTO ? "auto" : "");
                snprintf(key, sizeof key, "bitmaps.%" PRIu32 ".name", i);
                if (r >= 0)
                        r = strv_push_pair(kv, key, "%s", b->name);
                snprintf(key, sizeof key, "bitmaps.%" PRIu32 ".granularity", i);
                if (r >= 0)
                        r = strv_push_pair(kv, key, "%" PRIu64, UINT64_C(1) << b->gran_bits);
        }
        return r;
}

int qcow2_list_bitmaps(void *state, vdisk_bitmap **ret, size_t *ret_n) {
        qcow2_state *s = state;
        vdisk_bitmap *v;

        if (s->bm_broken)
                return vdisk_error(-EUCLEAN, "%s", s->bm_broken_why);
        if (s->nb_bitmaps == 0) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        v = calloc(s->nb_bitmaps, sizeof *v);
        if (!v)
                return -ENOMEM;
        for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
                const qcow2_bitmap *b = &s->bm[i];

                v[i].name = strdup(b->name);
                if (!v[i].name) {
                        vdisk_bitmaps_free(v, i);
                        return -ENOMEM;
                }
                v[i].granularity = bm_granularity(b);
                /* a bitmap marked in use by our own writes is ours, consistent in memory */
                v[i].flags = ((b->flags & BME_IN_USE) ? VDISK_BITMAP_IN_USE : 0) |
                             ((b->flags & BME_AUTO) ? VDISK_BITMAP_AUTO : 0);
        }
        *ret = v;
        *ret_n = s->nb_bitmaps;
        return 0;
}

int qcow2_bitmap_read(void *state, const char *name, uint8_t **ret, size_t *ret_len, uint64_t *ret_granularity) {
        qcow2_state *s = state;
        qcow2_bitmap *b = bm_find(s, name);
        bool loaded;
        uint8_t *copy;
        int r;

        if (!b)
                return vdisk_error(-ENOENT, "qcow2: no bitmap named '%.64s'", name);
        loaded = b->bits != NULL;
        r = load_bits(s, b);
        if (r < 0)
                return r;
        copy = malloc(b->bits_len ? b->bits_len : 1);
        if (copy)
                memcpy(copy, b->bits, b->bits_len);
        *ret_len = b->bits_len;
        if (ret_granularity)
                *ret_granularity = bm_granularity(b);
        if (!loaded) {
                s->bm_mem -= b->bits_len;
                b->bits = mfree(b->bits);
                b->bits_len = 0;
        }
        if (!copy)
                return -ENOMEM;
        *ret = copy;
        return 0;
}

/* Rewrites the header cluster's extensions with the bitmaps extension for
 * (n, dir_off, dir_size), or without it when n == 0; the backing file name
 * follows them. */
static int write_header_ext(qcow2_state *s, uint32_t n, uint64_t dir_off, uint64_t dir_size) {
        size_t cs = (size_t) s->cluster_size, pos, name_len = s->backing_name ? strlen(s->backing_name) : 0;
        _cleanup_free_ uint8_t *old = calloc(1, cs), *hdr = calloc(1, cs);
        uint64_t autoclear;
        int r;

        if (!old || !hdr)
                return -ENOMEM;
        r = io_pread_zerofill(s->io, old, cs, 0);
        if (r < 0)
                return r;
        pos = qcow2_ext_copy(s, old, hdr, EXT_BITMAPS);
        if (n > 0) {
                if (pos + 8 + BM_EXT_LEN > cs)
                        return vdisk_error(-ENOSPC, "qcow2: no room for the bitmaps extension in the header cluster");
                put_be32(hdr + pos, EXT_BITMAPS);
                put_be32(hdr + pos + 4, BM_EXT_LEN);
                put_be32(hdr + pos + 8, n);
                put_be32(hdr + pos + 12, 0);
                put_be64(hdr + pos + 16, dir_size);
                put_be64(hdr + pos + 24, dir_off);
                pos += 8 + BM_EXT_LEN;
        }
        pos += 8;   /* end marker */
        if (pos + name_len > cs)
                return vdisk_error(-ENOSPC, "qcow2: the backing file name does not fit in the header cluster");
        if (name_len)
                memcpy(hdr + pos, s->backing_name, name_len);
        put_be64(hdr + 8, name_len ? pos : 0);
        put_be32(hdr + 16, (uint32_t) name_len);
        autoclear = n > 0 ? s->autoclear | AUTOCLEAR_BITMAPS : s->autoclear & ~(uint64_t) AUTOCLEAR_BITMAPS;
        put_be64(hdr + 88, autoclear);
        r = io_pwrite(s->io, hdr, MAX(pos + name_len, (size_t) s->header_length), 0);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        s->autoclear = autoclear;
        s->bm_ext = n > 0;
        s->bm_ext_len = BM_EXT_LEN;
        s->bm_ext_reserved = 0;
        return 0;
}

/* Writes the directory of v[0..n) to new clusters, points the header at it,
 * frees the old one. v takes the place of s->bm (taken over on success). */
static int replace_directory(qcow2_state *s, qcow2_bitmap *v, uint32_t n) {
        uint64_t size = 0, off = 0, old_off = s->bm_dir_offset, old_size = s->bm_dir_size;
        bool had = s->nb_bitmaps > 0;
        _cleanup_free_ uint8_t *dir = NULL;
        int r;

        for (uint32_t i = 0; i < n; i++) {
                v[i].dir_pos = size;
                size += ALIGN_UP(BM_ENTRY_FIXED + (uint64_t) v[i].extra_size + strlen(v[i].name), UINT64_C(8));
        }
        if (size > QCOW2_BITMAP_DIR_MAX)
                return vdisk_error(-E2BIG, "qcow2: the bitmap directory would exceed %" PRIu64 " bytes",
                                   QCOW2_BITMAP_DIR_MAX);
        dir = calloc(1, size ? size : 1);
        if (!dir)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
                uint8_t *e = dir + v[i].dir_pos;
                size_t nl = strlen(v[i].name);

                put_be64(e, v[i].table_offset);
                put_be32(e + 8, v[i].table_size);
                put_be32(e + 12, v[i].flags);
                e[16] = v[i].type;
                e[17] = v[i].gran_bits;
                put_be16(e + 18, (uint16_t) nl);
                put_be32(e + 20, v[i].extra_size);
                if (v[i].extra_size)
                        memcpy(e + BM_ENTRY_FIXED, v[i].extra, v[i].extra_size);
                memcpy(e + BM_ENTRY_FIXED + v[i].extra_size, v[i].name, nl);
        }
        if (n > 0) {
                r = append_clusters(s, dir, size, &off);
                if (r < 0)
                        return r;
        }
        r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;
        r = write_header_ext(s, n, off, size);
        if (r < 0)
                return r;
        s->bm_dir_offset = off;
        s->bm_dir_size = size;
        return had ? qcow2_uncount(s, old_off, old_size) : 0;
}

static int change_add(qcow2_state *s, const vdisk_bitmap_change *c) {
        /* the default as qemu picks it: the cluster size, within 4 KiB .. 64 KiB */
        uint64_t g = c->granularity ? c->granularity
                                    : MIN(MAX(s->cluster_size, UINT64_C(4096)), UINT64_C(65536));
        qcow2_bitmap *v;
        qcow2_bitmap nb = {};
        unsigned gb = 0;
        int r;

        if (bm_find(s, c->name))
                return vdisk_error(-EEXIST, "qcow2: a bitmap named '%.64s' exists already", c->name);
        if (strlen(c->name) == 0 || strlen(c->name) > QCOW2_BITMAP_NAME_MAX)
                return vdisk_error(-EINVAL, "qcow2: a bitmap name has 1 to %u bytes", QCOW2_BITMAP_NAME_MAX);
        if (s->nb_bitmaps >= QCOW2_BITMAPS_MAX)
                return vdisk_error(-E2BIG, "qcow2: the image has %u bitmaps already", QCOW2_BITMAPS_MAX);
        while (gb < 63 && (UINT64_C(1) << gb) < g)
                gb++;
        if ((UINT64_C(1) << gb) != g || gb < QCOW2_BITMAP_GRAN_MIN || gb > QCOW2_BITMAP_GRAN_MAX)
                return vdisk_error(-EINVAL, "qcow2: granularity must be a power of 2 between 512 and 2147483648");
        nb.type = BME_TYPE_DIRTY;
        nb.gran_bits = (uint8_t) gb;
        nb.flags = c->flags & VDISK_BITMAP_AUTO ? BME_AUTO : 0;
        nb.name = strdup(c->name);
        nb.bits_len = content_bytes(s, gb);
        if (nb.bits_len > QCOW2_BITMAP_MEM_MAX - s->bm_mem) {
                free(nb.name);
                return vdisk_error(-E2BIG, "qcow2: a bitmap of granularity %" PRIu64 " is too large", g);
        }
        nb.bits = calloc(1, nb.bits_len ? nb.bits_len : 1);
        v = realloc(s->bm, ((size_t) s->nb_bitmaps + 1) * sizeof *v);
        if (!nb.name || !nb.bits || !v) {
                free(nb.name);
                free(nb.bits);
                if (v)
                        s->bm = v;
                return -ENOMEM;
        }
        s->bm = v;
        r = write_content(s, &nb, &nb.table_offset);
        if (r < 0) {
                free(nb.name);
                free(nb.bits);
                return r;
        }
        nb.table_size = (uint32_t) table_entries(s, gb);
        s->bm_mem += nb.bits_len;
        nb.tracking = nb.flags & BME_AUTO;
        if (!nb.tracking) {
                s->bm_mem -= nb.bits_len;
                nb.bits = mfree(nb.bits);
                nb.bits_len = 0;
        }
        v[s->nb_bitmaps] = nb;
        r = replace_directory(s, v, s->nb_bitmaps + 1);
        if (r < 0) {
                /* not recorded: the entry goes (its clusters leak) */
                if (nb.bits)
                        s->bm_mem -= nb.bits_len;
                free(nb.name);
                free(nb.bits);
                return r;
        }
        s->nb_bitmaps++;
        return 0;
}

static int change_remove(qcow2_state *s, qcow2_bitmap *b) {
        qcow2_bitmap gone = *b;
        uint32_t i = (uint32_t) (b - s->bm);
        int r;

        memmove(b, b + 1, (s->nb_bitmaps - i - 1) * sizeof *b);
        r = replace_directory(s, s->bm, s->nb_bitmaps - 1);
        if (r < 0) {
                memmove(s->bm + i + 1, s->bm + i, (s->nb_bitmaps - i - 1) * sizeof *b);
                s->bm[i] = gone;
                /* the positions were renumbered for the new directory: restore them */
                for (uint32_t k = 0, pos = 0; k < s->nb_bitmaps; k++) {
                        s->bm[k].dir_pos = pos;
                        pos += (uint32_t) ALIGN_UP(BM_ENTRY_FIXED + (uint64_t) s->bm[k].extra_size +
                                                   strlen(s->bm[k].name), UINT64_C(8));
                }
                return r;
        }
        s->nb_bitmaps--;
        r = free_table(s, gone.table_offset, gone.table_size, gone.name);
        if (gone.bits)
                s->bm_mem -= gone.bits_len;
        free(gone.name);
        free(gone.extra);
        free(gone.bits);
        if (r < 0)
                return r;
        return qcow2_flush_refcounts(s);
}

/* ORs the content `src` (granularity 2^sg) into b's. */
static void merge_bits(qcow2_state *s, qcow2_bitmap *b, const uint8_t *src, uint64_t src_len, unsigned sg) {
        uint64_t nbits = MIN(src_len * 8, DIV_ROUND_UP(s->size, UINT64_C(1) << sg));

        for (uint64_t i = 0; i < nbits; i++) {
                uint64_t start, end;

                if (!(src[i / 8] >> (i % 8) & 1))
                        continue;
                start = i << sg;
                end = MIN(start + (UINT64_C(1) << sg), s->size);
                if (start >= end)
                        break;
                set_bits(b, start >> b->gran_bits, (end - 1) >> b->gran_bits);
        }
}

int qcow2_bitmap_change(void *state, const vdisk_bitmap_change *c) {
        qcow2_state *s = state;
        qcow2_bitmap *b;
        int r;

        if (!s->writable)
                return vdisk_error(-EROFS, "qcow2: the image is read-only");
        if (s->version < 3)
                return vdisk_error(-EOPNOTSUPP, "qcow2: version 2 images (compat=0.10) cannot store bitmaps");
        /* everything written so far is durable, the bitmaps consistent */
        r = qcow2_flush(s);
        if (r < 0)
                return r;
        if (c->op == VDISK_BITMAP_OP_ADD)
                return change_add(s, c);
        b = bm_find(s, c->name);
        if (!b)
                return vdisk_error(-ENOENT, "qcow2: no bitmap named '%.64s'", c->name);
        if (c->op == VDISK_BITMAP_OP_REMOVE)
                return change_remove(s, b);
        if (!bm_usable(b))
                return vdisk_error(-EUCLEAN, "qcow2: bitmap '%.64s' is inconsistent (in use) or of a kind "
                                   "this program does not know: it can only be removed", b->name);
        switch (c->op) {
        case VDISK_BITMAP_OP_ENABLE:
        case VDISK_BITMAP_OP_DISABLE: {
                uint32_t flags = c->op == VDISK_BITMAP_OP_ENABLE ? b->flags | BME_AUTO : b->flags & ~(uint32_t) BME_AUTO;

                r = write_flags(s, b, flags);
                if (r >= 0)
                        r = io_flush(s->io);
                if (r < 0)
                        return r;
                b->flags = flags;
                if (!b->tracking && (flags & BME_AUTO)) {
                        r = load_bits(s, b);
                        if (r < 0)
                                return r;
                }
                b->tracking = flags & BME_AUTO;
                return 0;
        }
        case VDISK_BITMAP_OP_CLEAR:
                r = load_bits(s, b);
                if (r < 0)
                        return r;
                memset(b->bits, 0, b->bits_len);
                b->dirty = true;
                break;
        case VDISK_BITMAP_OP_MERGE: {
                _cleanup_free_ uint8_t *src = NULL;
                size_t src_len = c->bits_len;
                uint64_t sg = c->bits_granularity;
                unsigned sgb = 0;

                if (c->source) {
                        r = qcow2_bitmap_read(s, c->source, &src, &src_len, &sg);
                        if (r < 0)
                                return r;
                } else if (!c->bits)
                        return vdisk_error(-EINVAL, "qcow2: a merge needs a source");
                while (sgb < 63 && (UINT64_C(1) << sgb) < sg)
                        sgb++;
                if (sg == 0 || (UINT64_C(1) << sgb) != sg)
                        return vdisk_error(-EINVAL, "qcow2: source granularity %" PRIu64 " is not a power of 2", sg);
                r = load_bits(s, b);
                if (r < 0)
                        return r;
                merge_bits(s, b, src ? src : c->bits, src_len, sgb);
                b->dirty = true;
                break;
        }
        default:
                return vdisk_error(-EINVAL, "qcow2: unknown bitmap operation %u", c->op);
        }
        r = qcow2_bitmaps_flush(s);
        if (r < 0)
                return r;
        if (!b->tracking) {
                s->bm_mem -= b->bits_len;
                b->bits = mfree(b->bits);
                b->bits_len = 0;
        }
        return 0;
}

/* ---------------------------------------------------------------- compact */

int qcow2_bitmap_table(qcow2_state *s, uint32_t i, uint64_t **ret) {
        const qcow2_bitmap *b = &s->bm[i];
        _cleanup_free_ uint64_t *t = calloc(b->table_size ? b->table_size : 1, sizeof *t);
        int r;

        if (!t)
                return -ENOMEM;
        r = read_table(s, b, t);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

int qcow2_bitmap_table_switch(qcow2_state *s, uint32_t i, uint64_t to) {
        qcow2_bitmap *b = &s->bm[i];
        int r;

        r = write_entry_table(s, b, to, b->table_size);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        b->table_offset = to;
        return 0;
}

/* Only the extension's directory offset changes (8 aligned bytes of the
 * header cluster, one write): a torn write cannot mix two headers. */
int qcow2_bitmap_dir_switch(qcow2_state *s, uint64_t to) {
        size_t cs = (size_t) s->cluster_size, end;
        _cleanup_free_ uint8_t *hdr = malloc(cs);
        uint64_t boff, bsize;
        uint8_t b[8];
        int r;

        if (!hdr)
                return -ENOMEM;
        r = io_pread_zerofill(s->io, hdr, cs, 0);
        if (r < 0)
                return r;
        boff = get_be64(hdr + 8);
        bsize = get_be32(hdr + 16);
        end = boff != 0 && bsize != 0 && boff < cs ? (size_t) boff : cs;
        for (size_t off = s->header_length; off + 8 <= end;) {
                uint32_t type = get_be32(hdr + off), len = get_be32(hdr + off + 4);
                size_t step = 8 + ALIGN_UP((size_t) len, 8);

                if (type == EXT_END || step > end - off)
                        break;
                if (type == EXT_BITMAPS && len == BM_EXT_LEN) {
                        put_be64(b, to);
                        r = qcow2_header_switch(s, (uint32_t) (off + 8 + 16), b, sizeof b);
                        if (r < 0)
                                return r;
                        s->bm_dir_offset = to;
                        return 0;
                }
                off += step;
        }
        return vdisk_error(-EUCLEAN, "qcow2: the header cluster has no bitmaps extension");
}

int qcow2_bitmap_data_switch(qcow2_state *s, uint32_t i, uint32_t j, uint64_t from, uint64_t to) {
        const qcow2_bitmap *b = i < s->nb_bitmaps ? &s->bm[i] : NULL;
        char what[80];

        if (!b || j >= b->table_size)
                return vdisk_error(-EUCLEAN, "qcow2: the bitmaps changed during compact");
        snprintf(what, sizeof what, "bitmap '%.64s'", b->name);
        return qcow2_entry_switch(s, b->table_offset + (uint64_t) j * 8, from, to, what);
}
