/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW2 — QEMU copy-on-write image, versions 2 (compat=0.10) and 3 (compat=1.1).
 *
 * Spec: qemu's docs/interop/qcow2.txt (now qcow2.rst); our reading of it,
 * the limits and the traps in docs/formats/qcow2.md and
 * ../shared/formats/FORMATS.md §3.8. All fields are big-endian.
 *
 *   cluster 0    header (72 bytes in v2, header_length >= 104 in v3), then
 *                header extensions (type u32, length u32, data padded to 8)
 *                up to the backing file name (or the end of the cluster)
 *   L1 table     l1_size u64 entries: bits 9..55 the L2 table's offset
 *   L2 tables    one cluster each: u64 entries (u64 pairs with extended L2:
 *                the entry, then 32 "allocated" and 32 "reads as zero"
 *                subcluster bits)
 *                  bit 62 compressed: host byte offset in the low
 *                         62 - (cluster_bits - 8) bits, the number of extra
 *                         512-byte sectors above
 *                  else   bits 9..55 host cluster offset (in the external
 *                         data file when there is one), bit 0 reads as zero
 *   refcounts, snapshots, bitmaps: not needed for reading.
 *
 * Supported (read-only for now: BACKEND_READ_ONLY): v2 and v3 headers,
 * cluster sizes 512 B .. 2 MiB, zero clusters, extended L2 (subclusters as
 * sub-cluster map results), compressed clusters (deflate and zstd) as
 * MAP_ENCODED units, a backing file (its format from the backing format
 * extension; without it the core probes, never as raw), an external data
 * file through the files handle, internal snapshots listed.
 * Refused: encryption, unknown incompatible feature bits (named from the
 * feature name table), QCOW version 1 (not yet), backing names that are
 * qemu pseudo-protocols (json:, nbd: ...).
 *
 * Decisions:
 *   - The dirty bit (lazy refcounts) and the corrupt bit do not stop a
 *     read-only open: reading needs no refcounts, and qemu too opens a
 *     corrupt image read-only. Both are shown by info.
 *   - L2 tables are checked as they are looked up: aligned, inside the file,
 *     not over the header, the L1 table or the refcount table. A data
 *     cluster must start inside its file; the tail of a cluster past the end
 *     of the file reads as zeros (qemu does the same).
 *   - A compressed cluster must decode to exactly one cluster: a stream that
 *     ends early or goes on past the cluster is -EUCLEAN (no bombs).
 *
 * L2 tables are held through lib/fmt/tablecache: a small set of one-table
 * views (one per L2 table in use, least recently used replaced), so memory
 * stays bounded by the disk's budget whatever the file's size.
 *
 * Threads: none of its own; the core serializes every call on an image.
 * decode() only reads constant fields.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "backend.h"
#include "fmt/tablecache.h"
#include "qcow2-measure.h"
#include "io/io.h"
#include "util/util.h"

#define QCOW2_MAGIC             UINT32_C(0x514649fb)   /* "QFI\xfb" */
#define QCOW2_V2_HEADER         72u
#define QCOW2_V3_HEADER         104u
#define QCOW2_CLUSTER_BITS_MIN  9u
#define QCOW2_CLUSTER_BITS_MAX  21u
#define QCOW2_L1_MAX_BYTES      (UINT64_C(32) << 20)
#define QCOW2_REFT_MAX_BYTES    (UINT64_C(8) << 20)
#define QCOW2_SNAPSHOTS_MAX     65536u
#define QCOW2_SNAP_TABLE_MAX    (UINT64_C(64) << 20)
#define QCOW2_SNAP_EXTRA_MAX    1024u
#define QCOW2_BACKING_NAME_MAX  1023u
#define QCOW2_SIZE_MAX          (UINT64_C(1) << 62)
#define QCOW2_L2_SLOTS          32u
#define QCOW2_SUBCLUSTERS       32u

#define OFFSET_MASK             UINT64_C(0x00fffffffffffe00)
#define L2E_COMPRESSED          (UINT64_C(1) << 62)
#define L2E_ZERO                UINT64_C(1)
#define L2E_COPIED              (UINT64_C(1) << 63)

enum {
        INCOMPAT_DIRTY       = 1u << 0,
        INCOMPAT_CORRUPT     = 1u << 1,
        INCOMPAT_DATA_FILE   = 1u << 2,
        INCOMPAT_COMPRESSION = 1u << 3,
        INCOMPAT_EXTL2       = 1u << 4,
        INCOMPAT_KNOWN       = 0x1f,
        COMPAT_LAZY_REFCOUNTS = 1u << 0,
        AUTOCLEAR_BITMAPS    = 1u << 0,
        AUTOCLEAR_DATA_RAW   = 1u << 1,
};

enum {
        EXT_END          = 0x00000000,
        EXT_BACKING_FMT  = 0xe2792aca,
        EXT_FEATURES     = 0x6803f857,
        EXT_BITMAPS      = 0x23852875,
        EXT_FDE          = 0x0537be77,
        EXT_DATA_FILE    = 0x44415441,
};

enum {
        CODEC_DEFLATE = 1,
        CODEC_ZSTD    = 2,
};

typedef struct l2_slot {
        uint64_t offset;        /* host offset of the L2 table, 0 = free */
        tc_table *t;
        uint64_t used;          /* LRU tick */
} l2_slot;

typedef struct qcow2_state {
        vdisk_io *io;
        vdisk_io *data_io;              /* external data file, NULL = none */
        tc_budget *budget;
        uint64_t file_size, data_size;
        uint32_t version, cluster_bits, header_length, refcount_order;
        uint64_t cluster_size, size;
        uint64_t incompat, compat, autoclear;
        uint32_t compression_type;
        bool extended_l2;
        uint64_t l2_entries;            /* per L2 table */
        uint64_t l2_coverage;           /* virtual bytes one L2 table maps */
        uint64_t subcluster_size;
        uint32_t csize_shift;
        uint64_t csize_mask, coffset_mask;
        uint32_t l1_size;
        uint64_t l1_offset;
        uint64_t reft_offset, reft_bytes;
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
        uint32_t nb_bitmaps;
        tc_table *l1;
        l2_slot slots[QCOW2_L2_SLOTS];
        uint64_t tick;
        char *backing_name, *backing_format, *data_file_name;
} qcow2_state;

/* ---------------------------------------------------------------- header */

static const char *feature_name(const uint8_t *tbl, size_t n, unsigned type, unsigned bit, char buf[47]) {
        for (size_t i = 0; i < n; i++) {
                const uint8_t *e = tbl + i * 48;

                if (e[0] == type && e[1] == bit) {
                        size_t len = strnlen((const char *) e + 2, 46);

                        /* only printable ASCII of a hostile name */
                        for (size_t k = 0; k < len; k++)
                                buf[k] = e[2 + k] >= 0x20 && e[2 + k] < 0x7f ? (char) e[2 + k] : '?';
                        buf[len] = 0;
                        return buf;
                }
        }
        return NULL;
}

static int refuse_incompat(uint64_t unknown, const uint8_t *tbl, size_t n) {
        char msg[512] = "", name[47];
        size_t used = 0;

        for (unsigned bit = 0; bit < 64 && used < sizeof msg - 80; bit++) {
                const char *nm;

                if (!(unknown & (UINT64_C(1) << bit)))
                        continue;
                nm = feature_name(tbl, n, 0, bit, name);
                used += (size_t) snprintf(msg + used, sizeof msg - used, "%s%s%s(bit %u)", used ? ", " : "",
                                          nm ? nm : "", nm ? " " : "", bit);
        }
        return vdisk_error(-EOPNOTSUPP, "qcow2: unsupported incompatible feature(s): %s", msg);
}

static bool has_protocol_prefix(const char *name) {
        static const char *const protocols[] = {
                "json:", "nbd:", "nbd+", "http:", "https:", "ftp:", "ftps:", "ssh:", "iscsi:", "rbd:", "gluster:",
                "gluster+", "nfs:", "file:", "host_device:", "null-co:", "vvfat:", "blkdebug:", "quorum:", NULL,
        };

        for (const char *const *p = protocols; *p; p++)
                if (strncasecmp(name, *p, strlen(*p)) == 0)
                        return true;
        return false;
}

/* A name from the file: `len` bytes without NUL inside. */
static int dup_name(const uint8_t *p, size_t len, const char *what, char **ret) {
        char *s;

        if (len == 0 || memchr(p, 0, len))
                return vdisk_error(-EUCLEAN, "qcow2: %s is empty or holds a NUL byte", what);
        s = strndup((const char *) p, len);
        if (!s)
                return -ENOMEM;
        free(*ret);
        *ret = s;
        return 0;
}

static int parse_extensions(qcow2_state *s, const uint8_t *buf, size_t start, size_t end,
                            const uint8_t **ret_features, size_t *ret_n_features) {
        size_t off = start;
        int r;

        *ret_features = NULL;
        *ret_n_features = 0;
        while (off + 8 <= end) {
                uint32_t type = get_be32(buf + off), len = get_be32(buf + off + 4);
                const uint8_t *d = buf + off + 8;

                if (type == EXT_END)
                        return 0;
                if (len > end - off - 8)
                        return vdisk_error(-EUCLEAN, "qcow2: header extension 0x%08" PRIx32 " of %" PRIu32
                                           " bytes runs past the header area", type, len);
                switch (type) {
                case EXT_BACKING_FMT:
                        if (len >= 16)
                                return vdisk_error(-EUCLEAN, "qcow2: backing format extension of %" PRIu32
                                                   " bytes (at most 15)", len);
                        r = dup_name(d, len, "backing format", &s->backing_format);
                        if (r < 0)
                                return r;
                        break;
                case EXT_FEATURES:
                        *ret_features = d;
                        *ret_n_features = len / 48;
                        break;
                case EXT_DATA_FILE:
                        r = dup_name(d, len, "external data file name", &s->data_file_name);
                        if (r < 0)
                                return r;
                        break;
                case EXT_BITMAPS:
                        /* tolerated: bitmaps are not read (nor written yet) */
                        if (len >= 4)
                                s->nb_bitmaps = get_be32(d);
                        break;
                default:
                        break;   /* EXT_FDE (encryption is refused anyway), unknown: ignored */
                }
                off += 8 + ALIGN_UP((size_t) len, 8);
        }
        return 0;
}

static int qcow2_probe(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                       uint64_t file_size, const char *name) {
        /* Any version (QCOW v1, a future v4): open() refuses what it cannot
         * read, clearly, rather than letting it pass for raw. */
        if (head_len >= 4 && get_be32(head) == QCOW2_MAGIC)
                return 100;
        return 0;
}

static int select_snapshot(qcow2_state *s, const snapshot_sel *sel);

static int qcow2_open(void *state, const open_ctx *c) {
        qcow2_state *s = state;
        _cleanup_free_ uint8_t *buf = NULL;
        const uint8_t *features;
        size_t n_features, buf_len, ext_end;
        uint64_t backing_offset, needed_l1;
        uint32_t backing_size, reft_clusters, crypt;
        int r;

        s->io = c->io;
        s->budget = c->budget;
        r = io_get_size(c->io, &s->file_size);
        if (r < 0)
                return r;
        uint8_t h[QCOW2_V3_HEADER + 8] = {};
        r = io_pread_zerofill(c->io, h, sizeof h, 0);
        if (r < 0)
                return r;
        if (s->file_size < 4 || get_be32(h) != QCOW2_MAGIC)
                return vdisk_error(-EMEDIUMTYPE, "qcow2: no QFI magic");
        /* the magic is there: from now on a short file is a damaged image */
        if (s->file_size < QCOW2_V2_HEADER)
                return vdisk_error(-EUCLEAN, "qcow2: file too short for a header (%" PRIu64 " bytes)",
                                   s->file_size);
        s->version = get_be32(h + 4);
        if (s->version == 1)
                return vdisk_error(-EOPNOTSUPP, "qcow2: QCOW version 1 images are not supported yet");
        if (s->version != 2 && s->version != 3)
                return vdisk_error(-EOPNOTSUPP, "qcow2: version %" PRIu32 " (2 and 3 supported)", s->version);
        backing_offset = get_be64(h + 8);
        backing_size = get_be32(h + 16);
        s->cluster_bits = get_be32(h + 20);
        s->size = get_be64(h + 24);
        crypt = get_be32(h + 32);
        s->l1_size = get_be32(h + 36);
        s->l1_offset = get_be64(h + 40);
        s->reft_offset = get_be64(h + 48);
        reft_clusters = get_be32(h + 56);
        s->nb_snapshots = get_be32(h + 60);
        s->snapshots_offset = get_be64(h + 64);
        if (s->version == 3) {
                if (s->file_size < QCOW2_V3_HEADER)
                        return vdisk_error(-EUCLEAN, "qcow2: file too short for a version 3 header");
                s->incompat = get_be64(h + 72);
                s->compat = get_be64(h + 80);
                s->autoclear = get_be64(h + 88);
                s->refcount_order = get_be32(h + 96);
                s->header_length = get_be32(h + 100);
        } else {
                s->refcount_order = 4;
                s->header_length = QCOW2_V2_HEADER;
        }

        if (s->cluster_bits < QCOW2_CLUSTER_BITS_MIN || s->cluster_bits > QCOW2_CLUSTER_BITS_MAX)
                return vdisk_error(-EUCLEAN, "qcow2: cluster_bits %" PRIu32 " (%u to %u)", s->cluster_bits,
                                   QCOW2_CLUSTER_BITS_MIN, QCOW2_CLUSTER_BITS_MAX);
        s->cluster_size = UINT64_C(1) << s->cluster_bits;
        if (s->version == 3 && (s->header_length < QCOW2_V3_HEADER || s->header_length % 8 != 0 ||
                                s->header_length > s->cluster_size))
                return vdisk_error(-EUCLEAN, "qcow2: header length %" PRIu32 " (a multiple of 8, %u to the "
                                   "cluster size)", s->header_length, QCOW2_V3_HEADER);
        if (s->refcount_order > 6)
                return vdisk_error(-EUCLEAN, "qcow2: refcount order %" PRIu32 " (at most 6)", s->refcount_order);
        if (crypt != 0)
                return vdisk_error(-EOPNOTSUPP, "qcow2: encrypted images (method %" PRIu32 ") are not supported",
                                   crypt);
        if (s->size > QCOW2_SIZE_MAX)
                return vdisk_error(-EFBIG, "qcow2: virtual size %" PRIu64 " is too big", s->size);

        /* The header cluster: extensions and the backing file name. */
        buf_len = (size_t) MIN(s->cluster_size, s->file_size);
        buf = calloc(1, buf_len);
        if (!buf)
                return -ENOMEM;
        r = io_pread(c->io, buf, buf_len, 0);
        if (r < 0)
                return r;
        if (backing_offset != 0 && backing_size != 0) {
                if (backing_size > QCOW2_BACKING_NAME_MAX)
                        return vdisk_error(-EUCLEAN, "qcow2: backing file name of %" PRIu32 " bytes (at most %u)",
                                           backing_size, QCOW2_BACKING_NAME_MAX);
                if (backing_offset < s->header_length || !range_within(backing_offset, backing_size, buf_len))
                        return vdisk_error(-EUCLEAN, "qcow2: backing file name at %" PRIu64 " (%" PRIu32
                                           " bytes) is not within the header cluster", backing_offset,
                                           backing_size);
                r = dup_name(buf + backing_offset, backing_size, "backing file name", &s->backing_name);
                if (r < 0)
                        return r;
                if (has_protocol_prefix(s->backing_name))
                        return vdisk_error(-EOPNOTSUPP, "qcow2: backing file '%.64s' is a qemu protocol or json: "
                                           "name, not a file name: refused", s->backing_name);
        }
        ext_end = backing_offset != 0 && backing_size != 0 && backing_offset < buf_len ? (size_t) backing_offset
                                                                                      : buf_len;
        if (s->header_length <= ext_end) {
                r = parse_extensions(s, buf, s->header_length, ext_end, &features, &n_features);
                if (r < 0)
                        return r;
        } else {
                features = NULL;
                n_features = 0;
        }

        if (s->incompat & ~(uint64_t) INCOMPAT_KNOWN)
                return refuse_incompat(s->incompat & ~(uint64_t) INCOMPAT_KNOWN, features, n_features);
        if (s->header_length > QCOW2_V3_HEADER)
                s->compression_type = h[104];
        if (s->compression_type > 1)
                return vdisk_error(-EOPNOTSUPP, "qcow2: compression type %" PRIu32 " (0 deflate, 1 zstd)",
                                   s->compression_type);
        if (!!(s->incompat & INCOMPAT_COMPRESSION) != (s->compression_type != 0))
                return vdisk_error(-EUCLEAN, "qcow2: compression type %" PRIu32 " disagrees with the compression "
                                   "type feature bit", s->compression_type);
        s->extended_l2 = s->incompat & INCOMPAT_EXTL2;
        if (s->extended_l2 && s->cluster_bits < 14)
                return vdisk_error(-EUCLEAN, "qcow2: extended L2 entries need clusters of 16 KiB or more");

        s->l2_entries = s->cluster_size / (s->extended_l2 ? 16 : 8);
        s->l2_coverage = s->l2_entries << s->cluster_bits;
        s->subcluster_size = s->extended_l2 ? s->cluster_size / QCOW2_SUBCLUSTERS : s->cluster_size;
        s->csize_shift = 62 - (s->cluster_bits - 8);
        s->csize_mask = (UINT64_C(1) << (s->cluster_bits - 8)) - 1;
        s->coffset_mask = (UINT64_C(1) << s->csize_shift) - 1;

        /* L1 table */
        needed_l1 = DIV_ROUND_UP(s->size, s->l2_coverage);
        if ((uint64_t) s->l1_size * 8 > QCOW2_L1_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: L1 table of %" PRIu32 " entries is too big", s->l1_size);
        if (s->l1_size < needed_l1)
                return vdisk_error(-EUCLEAN, "qcow2: L1 table of %" PRIu32 " entries is too small for %" PRIu64
                                   " bytes", s->l1_size, s->size);
        if (s->l1_size > 0 && (s->l1_offset == 0 || s->l1_offset % s->cluster_size != 0 ||
                               !range_within(s->l1_offset, (uint64_t) s->l1_size * 8, s->file_size)))
                return vdisk_error(-EUCLEAN, "qcow2: L1 table at %" PRIu64 " (%" PRIu32 " entries) is not "
                                   "cluster-aligned within the file (%" PRIu64 " bytes)", s->l1_offset, s->l1_size,
                                   s->file_size);
        /* Refcount table: not used for reading, but its place is checked. */
        s->reft_bytes = (uint64_t) reft_clusters << s->cluster_bits;
        if (s->reft_bytes > QCOW2_REFT_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: refcount table of %" PRIu32 " clusters is too big", reft_clusters);
        if (s->reft_offset % s->cluster_size != 0 || (reft_clusters && s->reft_offset == 0))
                return vdisk_error(-EUCLEAN, "qcow2: refcount table at %" PRIu64 " is not cluster-aligned",
                                   s->reft_offset);
        if (s->nb_snapshots > QCOW2_SNAPSHOTS_MAX)
                return vdisk_error(-EUCLEAN, "qcow2: %" PRIu32 " snapshots (at most %u)", s->nb_snapshots,
                                   QCOW2_SNAPSHOTS_MAX);
        if (s->nb_snapshots && (s->snapshots_offset == 0 || s->snapshots_offset % s->cluster_size != 0 ||
                                s->snapshots_offset >= s->file_size))
                return vdisk_error(-EUCLEAN, "qcow2: snapshot table at %" PRIu64 " is not cluster-aligned within "
                                   "the file", s->snapshots_offset);

        /* External data file */
        if (s->incompat & INCOMPAT_DATA_FILE) {
                if (!s->data_file_name)
                        return vdisk_error(-EUCLEAN, "qcow2: the image needs an external data file but names none");
                r = files_open(c->files, s->data_file_name, 0, &s->data_io);
                if (r < 0)
                        return r;
                /* VDISK_OPEN_LIST_FILES: only named, not opened (no data is read) */
                r = s->data_io ? io_get_size(s->data_io, &s->data_size) : 0;
                if (r < 0)
                        return r;
        } else
                s->data_size = s->file_size;

        if (c->snapshot) {
                assert(!c->writable);
                r = select_snapshot(s, c->snapshot);
                if (r < 0)
                        return r;
        }
        if (s->l1_size > 0) {
                tc_table_params p = {
                        .offset = s->l1_offset,
                        .size = (uint64_t) s->l1_size * 8,
                        .page_size = 4096,
                        .entry = TC_BE64,
                        .name = "qcow2 L1 table",
                };
                r = tc_table_new(s->budget, s->io, &p, &s->l1);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void qcow2_close(void *state) {
        qcow2_state *s = state;

        for (size_t i = 0; i < QCOW2_L2_SLOTS; i++)
                s->slots[i].t = tc_table_free(s->slots[i].t);
        s->l1 = tc_table_free(s->l1);
        free(s->backing_name);
        free(s->backing_format);
        free(s->data_file_name);
        s->backing_name = s->backing_format = s->data_file_name = NULL;
}

static uint64_t qcow2_get_size(void *state) {
        qcow2_state *s = state;

        return s->size;
}

static void qcow2_get_layout(void *state, image_layout *ret) {
        qcow2_state *s = state;

        *ret = (image_layout) {
                .cluster_size = s->cluster_size,
                .sector_size = 512,
        };
}

/* ---------------------------------------------------------------- tables */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
        return blen && alen && a < b + blen && b < a + alen;
}

/* The L2 table at host offset `off` (checked), as a one-table view. */
static int get_l2(qcow2_state *s, uint64_t off, tc_table **ret) {
        l2_slot *victim = NULL;
        int r;

        for (size_t i = 0; i < QCOW2_L2_SLOTS; i++) {
                l2_slot *sl = &s->slots[i];

                if (sl->t && sl->offset == off) {
                        sl->used = ++s->tick;
                        *ret = sl->t;
                        return 0;
                }
                if (!victim || !sl->t || (victim->t && sl->used < victim->used))
                        victim = sl;
        }
        if (off % s->cluster_size != 0 || !range_within(off, s->cluster_size, s->file_size))
                return vdisk_error(-EUCLEAN, "qcow2: L2 table at %" PRIu64 " is not cluster-aligned within the file "
                                   "(%" PRIu64 " bytes)", off, s->file_size);
        if (off < s->cluster_size || overlaps(off, s->cluster_size, s->l1_offset, (uint64_t) s->l1_size * 8) ||
            overlaps(off, s->cluster_size, s->reft_offset, s->reft_bytes))
                return vdisk_error(-EUCLEAN, "qcow2: L2 table at %" PRIu64 " overlaps the header, the L1 table or "
                                   "the refcount table", off);
        victim->t = tc_table_free(victim->t);
        tc_table_params p = {
                .offset = off,
                .size = s->cluster_size,
                .page_size = (uint32_t) s->cluster_size,
                .entry = TC_BE64,
                .name = "qcow2 L2 table",
        };
        r = tc_table_new(s->budget, s->io, &p, &victim->t);
        if (r < 0)
                return r;
        victim->offset = off;
        victim->used = ++s->tick;
        *ret = victim->t;
        return 0;
}

/* How the unit (cluster, or subcluster with extended L2) holding `voff`
 * reads, and how far the same status goes within its cluster (or, for an
 * absent L2 table, within the L2 table's range). */
static int unit_status(qcow2_state *s, uint64_t voff, map_result *ret) {
        uint64_t cl = voff >> s->cluster_bits, l1i = cl / s->l2_entries, l2i = cl % s->l2_entries;
        uint64_t in = voff & (s->cluster_size - 1), cstart = cl << s->cluster_bits;
        uint64_t cend = MIN(cstart + s->cluster_size, s->size);
        uint64_t l1e, l2_off, e, bitmap = 0, host;
        bool allocated;
        tc_table *l2 = NULL;
        int r;

        if (l1i >= s->l1_size)
                l1e = 0;   /* past a snapshot's smaller L1 table (the current one covers the disk) */
        else {
                r = tc_get(s->l1, l1i, &l1e);
                if (r < 0)
                        return r;
        }
        l2_off = l1e & OFFSET_MASK;
        if (l2_off == 0) {
                *ret = (map_result) {
                        .kind = MAP_UNALLOC,
                        .length = MIN((l1i + 1) * s->l2_coverage, s->size) - voff,
                };
                return 0;
        }
        r = get_l2(s, l2_off, &l2);
        if (r < 0)
                return r;
        r = tc_get(l2, s->extended_l2 ? 2 * l2i : l2i, &e);
        if (r >= 0 && s->extended_l2)
                r = tc_get(l2, 2 * l2i + 1, &bitmap);
        if (r < 0)
                return r;

        if (e & L2E_COMPRESSED) {
                uint64_t coff = e & s->coffset_mask;
                uint64_t csize = (((e >> s->csize_shift) & s->csize_mask) + 1) * 512 - (coff & 511);

                if (s->data_io)
                        return vdisk_error(-EUCLEAN, "qcow2: compressed cluster at %" PRIu64 " in an image with an "
                                           "external data file", cstart);
                if (coff < s->cluster_size || coff >= s->file_size)
                        return vdisk_error(-EUCLEAN, "qcow2: compressed cluster at %" PRIu64 " has its data at %"
                                           PRIu64 ", outside the file (%" PRIu64 " bytes)", cstart, coff,
                                           s->file_size);
                *ret = (map_result) {
                        .kind = MAP_ENCODED,
                        .host_offset = coff,
                        .length = cend - voff,
                        .unit_offset = cstart,
                        .unit_length = (uint32_t) (cend - cstart),
                        .encoded_length = (uint32_t) MIN(csize, s->file_size - coff),
                        .codec = s->compression_type == 1 ? CODEC_ZSTD : CODEC_DEFLATE,
                };
                return 0;
        }

        host = e & OFFSET_MASK;
        /* In an external data file offset 0 is a cluster like any other: it
         * is allocated when COPIED is set (qemu writes it so). */
        allocated = host != 0 || (s->data_io && (e & L2E_COPIED));
        if (host % s->cluster_size != 0)
                return vdisk_error(-EUCLEAN, "qcow2: cluster at %" PRIu64 " maps to %" PRIu64 ", not a cluster "
                                   "boundary", cstart, host);

        if (s->extended_l2) {
                uint64_t sc = in / s->subcluster_size, end_sc = sc;
                uint32_t alloc = (uint32_t) bitmap, zero = (uint32_t) (bitmap >> 32);
                map_kind kind;

                if (!allocated && alloc)
                        return vdisk_error(-EUCLEAN, "qcow2: unallocated cluster at %" PRIu64 " has allocated "
                                           "subclusters", cstart);
                if (alloc & zero)
                        return vdisk_error(-EUCLEAN, "qcow2: cluster at %" PRIu64 " has subclusters both "
                                           "allocated and zero", cstart);
#define SC_KIND(i) ((zero >> (i)) & 1 ? MAP_ZERO : (alloc >> (i)) & 1 ? MAP_DATA : MAP_UNALLOC)
                kind = SC_KIND(sc);
                while (end_sc + 1 < QCOW2_SUBCLUSTERS && SC_KIND(end_sc + 1) == kind)
                        end_sc++;
#undef SC_KIND
                *ret = (map_result) {
                        .kind = kind,
                        .length = MIN(cstart + (end_sc + 1) * s->subcluster_size, cend) - voff,
                };
        } else if (e & L2E_ZERO)
                *ret = (map_result) { .kind = MAP_ZERO, .length = cend - voff };
        else if (!allocated)
                *ret = (map_result) { .kind = MAP_UNALLOC, .length = cend - voff };
        else
                *ret = (map_result) { .kind = MAP_DATA, .length = cend - voff };

        if (ret->kind == MAP_DATA) {
                uint64_t h0 = host + in;

                if (host < s->cluster_size && !s->data_io)
                        return vdisk_error(-EUCLEAN, "qcow2: cluster at %" PRIu64 " maps onto the header", cstart);
                if (host >= s->data_size)
                        return vdisk_error(-EUCLEAN, "qcow2: cluster at %" PRIu64 " maps to %" PRIu64 ", past the "
                                           "end of its file (%" PRIu64 " bytes)", cstart, host, s->data_size);
                ret->file = s->data_io;
                ret->host_offset = h0;
                if (h0 >= s->data_size)
                        /* the tail of a cluster past the end of the file reads zeros */
                        *ret = (map_result) { .kind = MAP_ZERO, .length = ret->length };
                else if (h0 + ret->length > s->data_size)
                        ret->length = s->data_size - h0;
        }
        return 0;
}

static int qcow2_map(void *state, uint64_t offset, uint64_t len, map_result *ret) {
        qcow2_state *s = state;
        uint64_t done;
        int r;

        assert(offset < s->size);
        assert(len > 0);

        r = unit_status(s, offset, ret);
        if (r < 0)
                return r;
        if (ret->kind == MAP_ENCODED) {
                ret->length = MIN(ret->length, len);
                return 0;
        }
        done = ret->length;
        /* Following units of the same kind (data: contiguous in the same file). */
        while (done < len) {
                map_result n;

                r = unit_status(s, offset + done, &n);
                if (r < 0)
                        return r;
                if (n.kind != ret->kind ||
                    (n.kind == MAP_DATA && (n.file != ret->file || n.host_offset != ret->host_offset + done)))
                        break;
                done += n.length;
        }
        ret->length = MIN(done, len);
        return 0;
}

/* Decodes into out[0, unit_length) and, past it, into scratch up to one byte
 * more than a cluster, to see a stream that goes on past its cluster. */
static int decode_deflate(uint64_t cluster, const map_result *m, const void *in, void *out, uint64_t *ret_total,
                          bool *ret_end) {
        z_stream z = {};
        uint8_t scratch[4096];
        int zr;

        if (inflateInit2(&z, -12) != Z_OK)
                return -ENOMEM;
        z.next_in = (Bytef *) in;
        z.avail_in = m->encoded_length;
        z.next_out = out;
        z.avail_out = m->unit_length;
        zr = inflate(&z, Z_FINISH);
        while ((zr == Z_BUF_ERROR || zr == Z_OK) && z.avail_out == 0 && z.total_out <= cluster) {
                z.next_out = scratch;
                z.avail_out = (uInt) MIN((uint64_t) sizeof scratch, cluster + 1 - z.total_out);
                zr = inflate(&z, Z_FINISH);
        }
        *ret_total = z.total_out;
        *ret_end = zr == Z_STREAM_END;
        inflateEnd(&z);
        return 0;
}

static int decode_zstd(uint64_t cluster, const map_result *m, const void *in, void *out, uint64_t *ret_total,
                       bool *ret_end) {
        ZSTD_DCtx *d = ZSTD_createDCtx();
        uint8_t scratch[4096];
        ZSTD_inBuffer ib = { in, m->encoded_length, 0 };
        ZSTD_outBuffer ob = { out, m->unit_length, 0 };
        uint64_t total = 0;
        size_t zr = 1;

        if (!d)
                return -ENOMEM;
        /* a cluster is at most 2 MiB: no window beyond 4 MiB (bounded memory) */
        ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 22);
        for (;;) {
                zr = ZSTD_decompressStream(d, &ob, &ib);
                if (ZSTD_isError(zr))
                        break;
                if (ob.pos == ob.size) {
                        total += ob.pos;
                        if (total > cluster)
                                break;
                        if (zr == 0)
                                break;   /* frame done exactly at the end of the output */
                        ob = (ZSTD_outBuffer) { scratch, (size_t) MIN((uint64_t) sizeof scratch,
                                                                      cluster + 1 - total), 0 };
                        continue;
                }
                if (zr == 0 || ib.pos == ib.size) {
                        total += ob.pos;
                        break;
                }
        }
        *ret_total = total;
        *ret_end = !ZSTD_isError(zr) && zr == 0;
        ZSTD_freeDCtx(d);
        return 0;
}

static int qcow2_decode(const void *state, const map_result *m, const void *in, void *out) {
        const qcow2_state *s = state;
        uint64_t total = 0;
        bool end = false;
        int r;

        if (m->codec == CODEC_DEFLATE)
                r = decode_deflate(s->cluster_size, m, in, out, &total, &end);
        else if (m->codec == CODEC_ZSTD)
                r = decode_zstd(s->cluster_size, m, in, out, &total, &end);
        else
                return vdisk_error(-EUCLEAN, "qcow2: unknown cluster codec %" PRIu32, m->codec);
        if (r < 0)
                return r;
        /* A compressed cluster holds a whole cluster (the last one zero-padded). */
        if (total > s->cluster_size)
                return vdisk_error(-EUCLEAN, "qcow2: compressed cluster at %" PRIu64 " decodes to more than a "
                                   "cluster (%" PRIu64 " bytes)", m->unit_offset, s->cluster_size);
        if (!end || total != s->cluster_size)
                return vdisk_error(-EUCLEAN, "qcow2: compressed cluster at %" PRIu64 " decodes to %" PRIu64
                                   " bytes%s, not a cluster of %" PRIu64, m->unit_offset, total,
                                   end ? "" : " (damaged or cut short)", s->cluster_size);
        return 0;
}

/* ---------------------------------------------------------------- metadata */

static int qcow2_get_meta(void *state, meta *m) {
        qcow2_state *s = state;

        *m = (meta) { .mask = META_FLAGS | META_VERSION, .version = s->version };
        if (s->backing_name) {
                m->parent_name = s->backing_name;
                m->parent_format = s->backing_format;
                m->mask |= META_PARENT_NAME;
                m->flags |= VDISK_IMAGE_FLAGS_DIFF;
        }
        return 0;
}

static int qcow2_get_info(void *state, vdisk_image_info *ret) {
        qcow2_state *s = state;

        ret->cluster_size = (uint32_t) s->cluster_size;
        ret->dirty = !!(s->incompat & INCOMPAT_DIRTY);
        ret->variant = s->version == 2 ? "v2" : "v3";
        ret->image_flags = s->backing_name ? VDISK_IMAGE_FLAGS_DIFF : 0;
        return 0;
}

static int qcow2_get_format_info(void *state, strv_builder *kv) {
        qcow2_state *s = state;
        int r;

        r = strv_push_pair(kv, "compat", "%s", s->version == 2 ? "0.10" : "1.1");
        if (r >= 0 && s->version >= 3)
                r = strv_push_pair(kv, "compression type", "%s", s->compression_type ? "zstd" : "zlib");
        if (r >= 0 && s->version >= 3)
                r = strv_push_pair(kv, "lazy refcounts", "%s",
                                   s->compat & COMPAT_LAZY_REFCOUNTS ? "true" : "false");
        if (r >= 0)
                r = strv_push_pair(kv, "refcount bits", "%u", 1u << s->refcount_order);
        if (r >= 0)
                r = strv_push_pair(kv, "corrupt", "%s", s->incompat & INCOMPAT_CORRUPT ? "true" : "false");
        if (r >= 0 && s->version >= 3)
                r = strv_push_pair(kv, "extended l2", "%s", s->extended_l2 ? "true" : "false");
        if (r >= 0 && s->data_file_name)
                r = strv_push_pair(kv, "data file", "%s", s->data_file_name);
        if (r >= 0 && s->data_file_name)
                r = strv_push_pair(kv, "data file raw", "%s", s->autoclear & AUTOCLEAR_DATA_RAW ? "true" : "false");
        if (r >= 0 && s->nb_bitmaps)
                r = strv_push_pair(kv, "bitmaps", "%" PRIu32, s->nb_bitmaps);
        return r;
}

/* One snapshot table entry (40 bytes, then extra data, id and name; the
 * next entry starts 8-aligned). */
typedef struct snap_entry {
        uint64_t l1_offset;
        uint32_t l1_size;
        uint64_t next;          /* file offset of the next entry */
} snap_entry;

/* Reads the n-th entry, at `off`, into *sn (id and name allocated, freed by
 * the caller even on failure) and *e. Checks what reading it needs; the L1
 * table is checked only by the open that uses it. */
static int read_snapshot(qcow2_state *s, uint64_t off, size_t n, vdisk_snapshot *sn, snap_entry *e) {
        uint8_t h[40], extra[24] = {};
        uint32_t extra_size;
        uint16_t id_len, name_len;
        uint64_t entry_len;
        int r;

        if (off - s->snapshots_offset > QCOW2_SNAP_TABLE_MAX || !range_within(off, sizeof h, s->file_size))
                return vdisk_error(-EUCLEAN, "qcow2: snapshot table entry %zu is outside the file", n);
        r = io_pread(s->io, h, sizeof h, off);
        if (r < 0)
                return r;
        id_len = get_be16(h + 12);
        name_len = get_be16(h + 14);
        extra_size = get_be32(h + 36);
        if (extra_size > QCOW2_SNAP_EXTRA_MAX)
                return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu has %" PRIu32 " bytes of extra data", n,
                                   extra_size);
        /* the padding after the last entry need not be in the file */
        entry_len = sizeof h + extra_size + id_len + name_len;
        if (!range_within(off, entry_len, s->file_size))
                return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu runs past the end of the file", n);
        sn->id = calloc(1, (size_t) id_len + 1);
        sn->name = calloc(1, (size_t) name_len + 1);
        if (!sn->id || !sn->name)
                return -ENOMEM;
        r = io_pread(s->io, extra, MIN(extra_size, (uint32_t) sizeof extra), off + sizeof h);
        if (r >= 0)
                r = io_pread(s->io, sn->id, id_len, off + sizeof h + extra_size);
        if (r >= 0)
                r = io_pread(s->io, sn->name, name_len, off + sizeof h + extra_size + id_len);
        if (r < 0)
                return r;
        /* an id or a name with a NUL inside could never be asked for */
        if (strlen(sn->id) != id_len || strlen(sn->name) != name_len)
                return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu has a NUL byte in its id or name", n);
        sn->date_sec = get_be32(h + 16);
        sn->date_nsec = get_be32(h + 20);
        sn->vm_clock_nsec = get_be64(h + 24);
        sn->vm_state_size = extra_size >= 8 ? get_be64(extra) : get_be32(h + 32);
        sn->disk_size = extra_size >= 16 ? get_be64(extra + 8) : s->size;
        sn->icount = extra_size >= 24 ? get_be64(extra + 16) : VDISK_SNAPSHOT_NO_ICOUNT;
        *e = (snap_entry) {
                .l1_offset = get_be64(h),
                .l1_size = get_be32(h + 8),
                .next = off + ALIGN_UP(entry_len, UINT64_C(8)),
        };
        return 0;
}

/* The whole table; with `ret_e`, each entry's L1 table too. */
static int read_snapshots(qcow2_state *s, vdisk_snapshot **ret, snap_entry **ret_e, size_t *ret_n) {
        vdisk_snapshot *v;
        _cleanup_free_ snap_entry *e = NULL;
        uint64_t off = s->snapshots_offset;
        size_t n = 0;
        int r = 0;

        *ret = NULL;
        *ret_n = 0;
        if (s->nb_snapshots == 0)
                return 0;
        v = calloc(s->nb_snapshots, sizeof *v);
        e = calloc(s->nb_snapshots, sizeof *e);
        if (!v || !e) {
                free(v);
                return -ENOMEM;
        }
        for (; n < s->nb_snapshots; n++) {
                r = read_snapshot(s, off, n, &v[n], &e[n]);
                if (r < 0) {
                        n++;
                        break;
                }
                off = e[n].next;
        }
        if (r < 0) {
                vdisk_snapshots_free(v, n);
                return r;
        }
        *ret = v;
        if (ret_e)
                *ret_e = TAKE_PTR(e);
        *ret_n = n;
        return 0;
}

static int qcow2_list_snapshots(void *state, vdisk_snapshot **ret, size_t *ret_n) {
        return read_snapshots(state, ret, NULL, ret_n);
}

/* Open: reads the snapshot `sel` names instead of the current state: its
 * L1 table, checked as the current one is. The virtual size stays the
 * image's, as qemu-img reads a snapshot (`convert -l` switches the L1 table
 * only): past the end of a smaller snapshot's L1 table the disk reads
 * unallocated (the backing file shows through), and a snapshot of a larger
 * disk is cut at the current size. */
static int select_snapshot(qcow2_state *s, const snapshot_sel *sel) {
        vdisk_snapshot *v = NULL;
        _cleanup_free_ snap_entry *e = NULL;
        size_t n = 0, i;
        int r;

        r = read_snapshots(s, &v, &e, &n);
        if (r < 0)
                return r;
        r = snapshot_find(v, n, sel, &i);
        vdisk_snapshots_free(v, n);
        if (r < 0)
                return r;
        if ((uint64_t) e[i].l1_size * 8 > QCOW2_L1_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: snapshot %zu has an L1 table of %" PRIu32 " entries, too big", i,
                                   e[i].l1_size);
        if (e[i].l1_size > 0 && (e[i].l1_offset < s->cluster_size || e[i].l1_offset % s->cluster_size != 0 ||
                                 !range_within(e[i].l1_offset, (uint64_t) e[i].l1_size * 8, s->file_size)))
                return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu has its L1 table at %" PRIu64 " (%" PRIu32
                                   " entries), not cluster-aligned within the file (%" PRIu64 " bytes)", i,
                                   e[i].l1_offset, e[i].l1_size, s->file_size);
        s->l1_offset = e[i].l1_offset;
        s->l1_size = e[i].l1_size;
        return 0;
}

/* ---------------------------------------------------------------- table */

static const char *const qcow2_extensions[] = { "qcow2", NULL };

const vdisk_backend backend_qcow2 = {
        .info = {
                .name = "QCOW2",
                .qemu_name = "qcow2",
                .caps = VDISK_CAP_FILE | VDISK_CAP_DIFF,
                .media = VDISK_MEDIA_HDD,
                .extensions = qcow2_extensions,
                .create_options = qcow2_create_options,
        },
        .flags = BACKEND_READ_ONLY,
        .state_size = sizeof(qcow2_state),
        .probe = qcow2_probe,
        .open = qcow2_open,
        .close = qcow2_close,
        .get_size = qcow2_get_size,
        .get_layout = qcow2_get_layout,
        .map = qcow2_map,
        .decode = qcow2_decode,
        .get_meta = qcow2_get_meta,
        .get_info = qcow2_get_info,
        .get_format_info = qcow2_get_format_info,
        .list_snapshots = qcow2_list_snapshots,
        .measure = qcow2_measure,
};
