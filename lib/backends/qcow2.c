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
 * Supported for reading: v2 and v3 headers,
 * cluster sizes 512 B .. 2 MiB, zero clusters, extended L2 (subclusters as
 * sub-cluster map results), compressed clusters (deflate and zstd) as
 * MAP_ENCODED units, a backing file (its format from the backing format
 * extension; without it the core probes, never as raw), an external data
 * file through the files handle, internal snapshots listed.
 * Refused: encryption, unknown incompatible feature bits (named from the
 * feature name table), QCOW version 1 (not yet), backing names that are
 * qemu pseudo-protocols (json:, nbd: ...).
 *
 * Writing (see "refcounts" and "writes" below, docs/formats/qcow2.md):
 * appended clusters with exact refcounts, v3 zero clusters, extended-L2
 * subclusters, compressed clusters replaced; create with qemu-img's options;
 * relinks; check and repair of refcounts; an external data file (each
 * cluster at its guest offset there, uncounted; created by create -o
 * data_file); amend in qcow2-amend.c; internal snapshots (shared
 * clusters copied on write, OFLAG_COPIED kept; snapshot -c/-a/-d in
 * qcow2-snapshot.c); resize, discard, compact in qcow2-space.c;
 * persistent bitmaps kept and updated (qcow2-bitmap.c).
 *
 * Decisions:
 *   - The dirty bit (lazy refcounts) and the corrupt bit do not stop a
 *     read-only open: reading needs no refcounts, and qemu too opens a
 *     corrupt image read-only. Both are shown by info. A writable open
 *     rebuilds the refcounts of a dirty image and refuses a corrupt one.
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
#include <zstd.h>

#include "backend.h"
#include "fmt/hostalloc.h"
#include "fmt/tablecache.h"
#include "fmt/units.h"
#include "qcow2-int.h"
#include "qcow2-measure.h"
#include "io/io.h"
#include "util/util.h"

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
                        /* checked by qcow2_bitmaps_open() */
                        s->bm_ext = true;
                        s->bm_ext_len = len;
                        if (len >= 4)
                                s->nb_bitmaps = get_be32(d);
                        if (len >= 24) {
                                s->bm_ext_reserved = get_be32(d + 4);
                                s->bm_dir_size = get_be64(d + 8);
                                s->bm_dir_offset = get_be64(d + 16);
                        }
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
        /* Version 1 is the QCOW backend's (qcow.c). Any other version (a
         * future v4) is ours: open() refuses what it cannot read, clearly,
         * rather than letting it pass for raw. */
        if (head_len >= 8 && get_be32(head) == QCOW2_MAGIC && get_be32(head + 4) == 1)
                return 0;
        if (head_len >= 4 && get_be32(head) == QCOW2_MAGIC)
                return 100;
        return 0;
}

/* An L1 table (the current one or a snapshot's) of `l1_size` entries is
 * not too large to load. */
static bool l1_size_ok(uint32_t l1_size) {
        return (uint64_t) l1_size * 8 <= QCOW2_L1_MAX_BYTES;
}

/* An L1 table of `l1_size` entries at `l1_offset` is cluster-aligned past the
 * header and within the file (an empty one may be anywhere). */
static bool l1_place_ok(const qcow2_state *s, uint64_t l1_offset, uint32_t l1_size) {
        return l1_size == 0 || (l1_offset >= s->cluster_size && l1_offset % s->cluster_size == 0 &&
                                range_within(l1_offset, (uint64_t) l1_size * 8, s->file_size));
}

static int prepare_writes(qcow2_state *s, const uint8_t *features, size_t n_features);
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
                return vdisk_error(-EOPNOTSUPP, "qcow2: this is a QCOW version 1 image: open it as qcow (-f qcow)");
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
        if (!l1_size_ok(s->l1_size))
                return vdisk_error(-EFBIG, "qcow2: L1 table of %" PRIu32 " entries is too big", s->l1_size);
        if (s->l1_size < needed_l1)
                return vdisk_error(-EUCLEAN, "qcow2: L1 table of %" PRIu32 " entries is too small for %" PRIu64
                                   " bytes", s->l1_size, s->size);
        if (!l1_place_ok(s, s->l1_offset, s->l1_size))
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
                r = files_open(c->files, s->data_file_name, c->writable ? FILES_WRITE : 0, &s->data_io);
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
        r = qcow2_l1_view(s);
        if (r < 0)
                return r;
        r = qcow2_bitmaps_open(s, c->writable);
        if (r < 0)
                return r;
        if (c->writable)
                return prepare_writes(s, features, n_features);
        return 0;
}

static void qcow2_close(void *state) {
        qcow2_state *s = state;

        for (size_t i = 0; i < QCOW2_L2_SLOTS; i++)
                s->slots[i].t = tc_table_free(s->slots[i].t);
        s->l1 = tc_table_free(s->l1);
        for (size_t i = 0; i < QCOW2_RB_SLOTS; i++)
                s->rb_slots[i].t = tc_table_free(s->rb_slots[i].t);
        s->reft = tc_table_free(s->reft);
        qcow2_bitmaps_close(s);
        free(s->pending_free);
        s->pending_free = NULL;
        s->n_pending_free = s->cap_pending_free = 0;
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
                .zero_unit = s->version >= 3 ? s->cluster_size : 0,
                .sector_size = 512,
                /* extended L2: single subclusters are discarded too */
                .discard_unit = s->extended_l2 ? s->subcluster_size : 0,
                /* an external data file holds each cluster at its guest offset */
                .flags = s->data_io ? 0 : BACKEND_APPENDS,
        };
}

/* ---------------------------------------------------------------- tables */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
        return blen && alen && a < b + blen && b < a + alen;
}

/* The cluster-sized table at host offset `off` (checked) in one of the slot
 * caches, as a one-table view; `what` names it in errors, `name` (static) in
 * the table cache's. */
/* Before L2 pages go out: the data they point at in an external data file
 * is durable (TC_AFTER_DATA flushes only the table's own file). */
static int flush_data_file(void *user) {
        qcow2_state *s = user;

        return s->data_io ? io_flush(s->data_io) : 0;
}

static int get_slot_table(qcow2_state *s, l2_slot *slots, size_t n_slots, uint64_t off, tc_entry entry,
                          const char *what, const char *name, tc_table **ret) {
        l2_slot *victim = NULL;
        int r;

        for (size_t i = 0; i < n_slots; i++) {
                l2_slot *sl = &slots[i];

                if (sl->t && sl->offset == off) {
                        sl->used = ++s->tick;
                        *ret = sl->t;
                        return 0;
                }
                if (!victim || !sl->t || (victim->t && sl->used < victim->used))
                        victim = sl;
        }
        if (off % s->cluster_size != 0 || !range_within(off, s->cluster_size, s->file_size))
                return vdisk_error(-EUCLEAN, "qcow2: %s at %" PRIu64 " is not cluster-aligned within the file "
                                   "(%" PRIu64 " bytes)", what, off, s->file_size);
        if (off < s->cluster_size || overlaps(off, s->cluster_size, s->l1_offset, (uint64_t) s->l1_size * 8) ||
            overlaps(off, s->cluster_size, s->reft_offset, s->reft_bytes))
                return vdisk_error(-EUCLEAN, "qcow2: %s at %" PRIu64 " overlaps the header, the L1 table or "
                                   "the refcount table", what, off);
        if (victim->t && tc_table_is_dirty(victim->t)) {
                r = tc_table_flush(victim->t);
                if (r < 0)
                        return r;
        }
        victim->t = tc_table_free(victim->t);
        tc_table_params p = {
                .offset = off,
                .size = s->cluster_size,
                .page_size = (uint32_t) s->cluster_size,
                .entry = entry,
                .before_write = slots == s->slots && s->data_io ? flush_data_file : NULL,
                .user = s,
                .name = name,
        };
        r = tc_table_new(s->budget, s->io, &p, &victim->t);
        if (r < 0)
                return r;
        victim->offset = off;
        victim->used = ++s->tick;
        *ret = victim->t;
        return 0;
}

/* The L2 table at host offset `off` (checked), as a one-table view. */
static int get_l2(qcow2_state *s, uint64_t off, tc_table **ret) {
        return get_slot_table(s, s->slots, QCOW2_L2_SLOTS, off, TC_BE64, "L2 table", "qcow2 L2 table", ret);
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
        r = qcow2_l2_get(s, l2, l2i, &e, &bitmap);
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

        if (!s->extended_l2 && (e == 0 || e == L2E_ZERO)) {
                /* the same entry in the clusters after it: one scan of the
                 * table, not a lookup per cluster (a sparse 1 TiB disk has
                 * 16M of them) */
                uint64_t to = MIN(s->l2_entries, DIV_ROUND_UP(s->size, s->cluster_size) - l1i * s->l2_entries);
                uint64_t next;

                r = tc_find_other(l2, l2i + 1, to, e, &next);
                if (r < 0)
                        return r;
                ret->length = MIN((l1i * s->l2_entries + next) << s->cluster_bits, s->size) - voff;
        }

        if (ret->kind != MAP_DATA && allocated && (s->data_io || host >= s->cluster_size) && host < s->data_size) {
                /* zeros or unallocated subclusters in a cluster that kept its
                 * host cluster: qemu-img map reports where */
                ret->space = 1;
                ret->file = s->data_io;
                ret->host_offset = host + in;
        }
        if (ret->kind == MAP_DATA) {
                uint64_t h0 = host + in;

                if (host < s->cluster_size && !s->data_io)
                        return vdisk_error(-EUCLEAN, "qcow2: cluster at %" PRIu64 " maps onto the header", cstart);
                if (host >= s->data_size)
                        return vdisk_error(-EUCLEAN, "qcow2: cluster at %" PRIu64 " maps to %" PRIu64 ", past the "
                                           "end of its file (%" PRIu64 " bytes)", cstart, host, s->data_size);
                ret->file = s->data_io;
                ret->host_offset = h0;
                /* COPIED clear on the cluster or its L2 table: another
                 * reference (an internal snapshot) may share it, so a write
                 * goes through allocate() (copy on write) */
                ret->shared = s->writable && !s->data_io && (!(l1e & L2E_COPIED) || !(e & L2E_COPIED));
                if (h0 >= s->data_size)
                        /* the tail of a cluster past the end of the file reads zeros */
                        *ret = (map_result) { .kind = MAP_ZERO, .length = ret->length };
                else if (h0 + ret->length > s->data_size)
                        ret->length = s->data_size - h0;
        }
        return 0;
}

static int unit_status_cb(void *state, uint64_t voff, map_result *ret) {
        return unit_status(state, voff, ret);
}

/* qemu takes an image for metadata-preallocated, and then reads holes of its
 * file under data clusters as zeros, when at least max(10/9 of the clusters
 * the file system allocated for the file, 2 more) of the clusters the file
 * spans have a reference. */
static int qcow2_file_holes(void *state, bool *ret) {
        qcow2_state *s = state;
        uint64_t alloc, real, threshold, end, count = 0;
        int r;

        *ret = false;
        if (!s->reft) {
                /* opened read-only: a view of the refcounts for this test */
                if (s->reft_bytes == 0 || !range_within(s->reft_offset, s->reft_bytes, s->file_size))
                        return 0;
                s->rb_entries = (s->cluster_size * 8) >> s->refcount_order;
                r = qcow2_reft_view(s);
                if (r < 0)
                        return r;
        }
        r = io_get_allocated(s->io, &alloc);
        if (r < 0)
                return r;
        real = alloc / s->cluster_size;
        threshold = MAX(real * 10 / 9, real + 2);
        end = DIV_ROUND_UP(s->file_size, s->cluster_size);
        for (uint64_t i = 0; i < end && count < threshold; i++) {
                uint64_t rc;

                r = qcow2_rc_get(s, i * s->cluster_size, &rc);
                if (r < 0)
                        return r;
                count += rc != 0;
        }
        *ret = count >= threshold;
        return 0;
}

static int qcow2_map(void *state, uint64_t offset, uint64_t len, map_result *ret) {
        qcow2_state *s = state;

        return units_map_join(s, unit_status_cb, offset, len, s->size, ret);
}

/* Raw deflate (lib/fmt/units), with the signature decode_zstd has. */
static int decode_deflate(uint64_t cluster, const map_result *m, const void *in, void *out, uint64_t *ret_total,
                          bool *ret_end) {
        bool bad;

        return units_inflate(cluster, m, in, out, ret_total, ret_end, &bad);
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

/* ---------------------------------------------------------------- refcounts
 *
 * Writing keeps the refcounts exact: every cluster the image references
 * (header, L1, L2 tables, data, refcount table and blocks) has refcount 1,
 * nothing else has one, so `qemu-img check` finds neither leaks nor
 * corruptions after any clean flush. New data clusters and L2 tables go
 * into refcount-0 clusters below the end of the file first, else at the
 * end (qcow2-space.c, with discard, resize and compact); refcount blocks
 * and moved tables are appended. Refcount blocks are held through the table cache like L2
 * tables (one cluster-sized page each, a few at a time).
 *
 * Crash ordering: a refcount goes up before anything points at its cluster
 * and down only after the pointer is gone from the disk, so a crash can
 * leak clusters but never leave a referenced cluster with refcount 0.
 *   - data cluster: data, flush, refcount block, flush, L2 entry (the L2 page
 *     depends on the refcount block page and waits for the data flush);
 *   - new L2 table: zeros written, its refcount, flush, L1 entry;
 *   - new refcount block: written whole (covering itself where it can),
 *     flush, then the refcount table entry, flush (at once, synchronously);
 *   - a full refcount table moves: the new table and the blocks it needs
 *     are written and flushed, then the header points at it, flush, then the
 *     old table's clusters are unreferenced;
 *   - decrements (compressed clusters replaced) wait for flush(): after the
 *     L2 tables that dropped the pointers are on disk.
 */

#define REFT_OFFSET_MASK        UINT64_C(0xfffffffffffffe00)
#define HDR_REFT_OFFSET         48u
#define HDR_INCOMPAT            72u
#define HDR_AUTOCLEAR           88u

static uint64_t rc_entry_get(const uint8_t *b, uint64_t i, uint32_t order) {
        switch (order) {
        case 6:
                return get_be64(b + i * 8);
        case 5:
                return get_be32(b + i * 4);
        case 4:
                return get_be16(b + i * 2);
        case 3:
                return b[i];
        default: {
                /* sub-byte widths: entry i starts at bit i*width, bit 0 the
                 * least significant bit of a byte */
                unsigned bits = 1u << order;
                uint64_t bit = i * bits;

                return (b[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
        }
        }
}

/* Sets entry i; ret_off, ret_len: the bytes changed. */
static void rc_entry_set(uint8_t *b, uint64_t i, uint32_t order, uint64_t v, uint32_t *ret_off, uint32_t *ret_len) {
        switch (order) {
        case 6:
                put_be64(b + i * 8, v);
                *ret_off = (uint32_t) (i * 8), *ret_len = 8;
                return;
        case 5:
                put_be32(b + i * 4, (uint32_t) v);
                *ret_off = (uint32_t) (i * 4), *ret_len = 4;
                return;
        case 4:
                put_be16(b + i * 2, (uint16_t) v);
                *ret_off = (uint32_t) (i * 2), *ret_len = 2;
                return;
        case 3:
                b[i] = (uint8_t) v;
                *ret_off = (uint32_t) i, *ret_len = 1;
                return;
        default: {
                unsigned bits = 1u << order, mask = (1u << bits) - 1;
                uint64_t bit = i * bits;

                b[bit / 8] = (uint8_t) ((b[bit / 8] & ~(mask << (bit % 8))) | ((v & mask) << (bit % 8)));
                *ret_off = (uint32_t) (bit / 8), *ret_len = 1;
                return;
        }
        }
}

static uint64_t rc_max(const qcow2_state *s) {
        return s->refcount_order == 6 ? UINT64_MAX : (UINT64_C(1) << (1u << s->refcount_order)) - 1;
}

static void note_file_end(qcow2_state *s, uint64_t end) {
        if (end > s->file_size) {
                s->file_size = end;
                if (!s->data_io)
                        s->data_size = end;
        }
}

/* Makes sure the file holds [0, end) (sparse where nothing was written).
 * A new cluster's data write has mostly extended the file already, and the
 * io knows where its writes ended: no system call then. Otherwise asking the
 * size costs less than a truncate to the same size, which ext4 handles as a
 * truncate (one per cluster a copy allocates). */
static int cover_file(qcow2_state *s, uint64_t end) {
        uint64_t size;
        int r;

        if (end <= s->file_size)
                return 0;
        r = io_covers(s->io, end, &size);
        if (r < 0)
                return r;
        if (r == 0) {
                r = io_truncate(s->io, end);
                if (r < 0)
                        return r;
        }
        note_file_end(s, MAX(size, end));
        return 0;
}

static int write_zero_cluster(qcow2_state *s, uint64_t off) {
        _cleanup_free_ uint8_t *z = calloc(1, s->cluster_size);
        int r;

        if (!z)
                return -ENOMEM;
        r = io_pwrite(s->io, z, s->cluster_size, off);
        if (r < 0)
                return r;
        note_file_end(s, off + s->cluster_size);
        return 0;
}

/* The refcount block at host offset `off` (checked), as a one-table view. */
static int get_rb(qcow2_state *s, uint64_t off, tc_table **ret) {
        return get_slot_table(s, s->rb_slots, QCOW2_RB_SLOTS, off, TC_RAW, "refcount block", "qcow2 refcount block", ret);
}

/* Writes back the refcount blocks and the refcount table. */
static int flush_refcounts(qcow2_state *s) {
        int r;

        for (size_t i = 0; i < QCOW2_RB_SLOTS; i++)
                if (s->rb_slots[i].t && tc_table_is_dirty(s->rb_slots[i].t)) {
                        r = tc_table_flush(s->rb_slots[i].t);
                        if (r < 0)
                                return r;
                }
        return s->reft && tc_table_is_dirty(s->reft) ? tc_table_flush(s->reft) : 0;
}

static int rc_update(qcow2_state *s, uint64_t host, int delta, tc_page **ret_pg);

static int reft_entry(void *ctx, uint64_t i, uint64_t *ret) {
        *ret = get_be64((const uint8_t *) ctx + i * 8);
        return 0;
}

/* Moves the refcount table to the end of the file, big enough for index
 * `need` (and room to grow), with the refcount blocks its own clusters need. */
static int grow_reft(qcow2_state *s, uint64_t need) {
        uint64_t old_n = tc_table_entries(s->reft), old_off = s->reft_offset, old_bytes = s->reft_bytes;
        uint64_t cs = s->cluster_size, bytes, n, roff, end, first, nb = 0, cap_nb;
        _cleanup_free_ uint8_t *tbl = NULL, *blocks = NULL;
        _cleanup_free_ uint64_t *boff = NULL;
        uint8_t hdr[12];
        int r;

        bytes = ALIGN_UP(MAX(need + 1, old_n * 2) * 8, cs);
        if (bytes > QCOW2_REFT_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: the refcount table would grow past %" PRIu64 " bytes",
                                   QCOW2_REFT_MAX_BYTES);
        n = bytes / 8;
        r = flush_refcounts(s);
        if (r < 0)
                return r;
        tbl = calloc(1, bytes);
        if (!tbl)
                return -ENOMEM;
        r = tc_read(s->reft, 0, tbl, old_n * 8);
        if (r < 0)
                return r;
        r = hostalloc_alloc(&s->alloc, bytes, QCOW2_HOST_LIMIT, &roff, NULL);
        if (r < 0)
                return r;
        /* Blocks for the new clusters whose range has none; they are new
         * clusters too, so the loop runs to the end of what it appends. */
        first = roff / cs;
        end = roff + bytes;
        cap_nb = DIV_ROUND_UP(bytes / cs, s->rb_entries) + 2;
        boff = calloc(cap_nb, sizeof *boff);
        if (!boff)
                return -ENOMEM;
        for (uint64_t c = first; c < end / cs; c++) {
                uint64_t rti = c / s->rb_entries, b;

                if (rti >= n)
                        return vdisk_error(-EFBIG, "qcow2: the refcount table cannot cover its own clusters");
                if (get_be64(tbl + rti * 8) != 0)
                        continue;
                if (nb == cap_nb)
                        return vdisk_error(-EFBIG, "qcow2: too many refcount blocks for a new refcount table");
                r = hostalloc_alloc(&s->alloc, cs, QCOW2_HOST_LIMIT, &b, NULL);
                if (r < 0)
                        return r;
                put_be64(tbl + rti * 8, b);
                boff[nb++] = b;
                end = b + cs;
        }
        blocks = calloc(nb ? nb : 1, cs);
        if (!blocks)
                return -ENOMEM;
        for (uint64_t c = first; c < end / cs; c++) {
                uint64_t rti = c / s->rb_entries, b = get_be64(tbl + rti * 8) & REFT_OFFSET_MASK;
                size_t k;
                uint32_t o, l;

                for (k = 0; k < nb && boff[k] != b; k++)
                        ;
                if (k < nb)
                        rc_entry_set(blocks + k * cs, c % s->rb_entries, s->refcount_order, 1, &o, &l);
                else {
                        r = rc_update(s, c * cs, +1, NULL);
                        if (r < 0)
                                return r;
                }
        }
        for (size_t k = 0; k < nb; k++) {
                r = io_pwrite(s->io, blocks + k * cs, cs, boff[k]);
                if (r < 0)
                        return r;
        }
        r = tc_write_entries(s->io, roff, n, TC_BE64, 0, reft_entry, tbl);
        if (r < 0)
                return r;
        r = cover_file(s, end);
        if (r >= 0)
                r = qcow2_sync_refcounts(s);
        if (r < 0)
                return r;
        /* the switch */
        put_be64(hdr, roff);
        put_be32(hdr + 8, (uint32_t) (bytes / cs));
        r = qcow2_header_switch(s, HDR_REFT_OFFSET, hdr, sizeof hdr);
        if (r < 0)
                return r;
        s->reft_offset = roff;
        s->reft_bytes = bytes;
        r = qcow2_reft_view(s);
        if (r < 0)
                return r;
        /* the old table's clusters are no longer referenced */
        return qcow2_uncount(s, old_off, old_bytes);
}

/* A new refcount block for refcount table index `rti`, written and linked
 * at once (see above). */
static int new_refblock(qcow2_state *s, uint64_t rti, uint64_t *ret) {
        uint64_t cs = s->cluster_size, off, bi;
        _cleanup_free_ uint8_t *buf = calloc(1, cs);
        uint32_t o, l;
        int r;

        if (!buf)
                return -ENOMEM;
        r = hostalloc_alloc(&s->alloc, cs, QCOW2_HOST_LIMIT, &off, NULL);
        if (r < 0)
                return r;
        bi = off / cs;
        if (bi / s->rb_entries == rti)
                rc_entry_set(buf, bi % s->rb_entries, s->refcount_order, 1, &o, &l);
        r = io_pwrite(s->io, buf, cs, off);
        if (r < 0)
                return r;
        note_file_end(s, off + cs);
        if (bi / s->rb_entries != rti) {
                /* it falls into the next block's range: counted there */
                r = rc_update(s, off, +1, NULL);
                if (r >= 0)
                        r = flush_refcounts(s);
                if (r < 0)
                        return r;
        }
        r = io_flush(s->io);
        if (r < 0)
                return r;
        r = tc_set(s->reft, rti, off, 0);
        if (r >= 0)
                r = tc_table_flush(s->reft);
        if (r < 0)
                return r;
        *ret = off;
        return 0;
}

/* The refcount block holding cluster index `ci`, made when missing. */
static int rb_for(qcow2_state *s, uint64_t ci, tc_table **ret) {
        uint64_t rti = ci / s->rb_entries, e, off;
        int r;

        if (rti >= tc_table_entries(s->reft)) {
                r = grow_reft(s, rti);
                if (r < 0)
                        return r;
        }
        r = tc_get(s->reft, rti, &e);
        if (r < 0)
                return r;
        off = e & REFT_OFFSET_MASK;
        if (off == 0) {
                r = new_refblock(s, rti, &off);
                if (r < 0)
                        return r;
        }
        return get_rb(s, off, ret);
}

/* The page (the whole block) of the refcount block holding cluster index
 * `ci`, pinned (tc_page_put() it); the block is made when missing. */
static int rb_page_for(qcow2_state *s, uint64_t ci, tc_page **ret) {
        tc_table *t = NULL;
        int r;

        r = rb_for(s, ci, &t);
        if (r < 0)
                return r;
        return tc_page_get(t, 0, ret);
}

/* Adds delta (+1/-1) to the refcount of the cluster holding `host`. With
 * ret_pg, returns the refcount block's page pinned (tc_page_put() it). */
static int rc_update(qcow2_state *s, uint64_t host, int delta, tc_page **ret_pg) {
        uint64_t ci = host / s->cluster_size, v;
        tc_page *pg;
        uint32_t o, l;
        int r;

        r = rb_page_for(s, ci, &pg);
        if (r < 0)
                return r;
        v = rc_entry_get(tc_page_data(pg), ci % s->rb_entries, s->refcount_order);
        if ((delta < 0 && v == 0) || (delta > 0 && v == rc_max(s))) {
                tc_page_put(pg);
                return vdisk_error(-EUCLEAN, "qcow2: the refcount of the cluster at %" PRIu64 " is %" PRIu64
                                   ", it cannot %s", ci * s->cluster_size, v, delta < 0 ? "drop" : "grow");
        }
        rc_entry_set(tc_page_data(pg), ci % s->rb_entries, s->refcount_order, delta < 0 ? v - 1 : v + 1, &o, &l);
        tc_page_dirty(pg, o, l, 0);
        if (delta < 0 && v == 1)
                qcow2_note_free(s, ci * s->cluster_size);
        if (ret_pg)
                *ret_pg = pg;
        else
                tc_page_put(pg);
        return 0;
}

/* The refcount of the cluster holding `host` (0 where no block covers it). */
static int rc_get(qcow2_state *s, uint64_t host, uint64_t *ret) {
        uint64_t ci = host / s->cluster_size, rti = ci / s->rb_entries, e;
        tc_table *t;
        tc_page *pg;
        int r;

        *ret = 0;
        if (rti >= tc_table_entries(s->reft))
                return 0;
        r = tc_get(s->reft, rti, &e);
        if (r < 0 || (e & REFT_OFFSET_MASK) == 0)
                return r;
        r = get_rb(s, e & REFT_OFFSET_MASK, &t);
        if (r >= 0)
                r = tc_page_get(t, 0, &pg);
        if (r < 0)
                return r;
        *ret = rc_entry_get(tc_page_data(pg), ci % s->rb_entries, s->refcount_order);
        tc_page_put(pg);
        return 0;
}

/* ---------------------------------------------------------------- writes */

static int write_header_u64(qcow2_state *s, uint32_t at, uint64_t v) {
        uint8_t b[8];
        int r;

        put_be64(b, v);
        r = io_pwrite(s->io, b, sizeof b, at);
        return r < 0 ? r : io_flush(s->io);
}

/* Lazy refcounts: the dirty bit is set on disk before the first change
 * after a flush and cleared by the flush that makes everything durable.
 * vdisk keeps the refcounts exact anyway, so qemu's repair of a dirty image
 * finds nothing to fix. */
static int mark_dirty(qcow2_state *s) {
        int r;

        if (!(s->compat & COMPAT_LAZY_REFCOUNTS) || s->marked_dirty)
                return 0;
        r = write_header_u64(s, HDR_INCOMPAT, s->incompat | INCOMPAT_DIRTY);
        if (r < 0)
                return r;
        s->incompat |= INCOMPAT_DIRTY;
        s->marked_dirty = true;
        return 0;
}

static int prepare_writes(qcow2_state *s, const uint8_t *features, size_t n_features) {
        uint64_t known_autoclear = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_RAW;
        int r;

        if (s->incompat & INCOMPAT_CORRUPT)
                return vdisk_error(-EUCLEAN, "qcow2: the image is marked corrupt; it opens read-only only "
                                   "(repair it first)");
        if (s->reft_bytes == 0 || s->reft_offset < s->cluster_size ||
            !range_within(s->reft_offset, s->reft_bytes, s->file_size) ||
            overlaps(s->reft_offset, s->reft_bytes, s->l1_offset, (uint64_t) s->l1_size * 8))
                return vdisk_error(-EUCLEAN, "qcow2: refcount table at %" PRIu64 " (%" PRIu64 " bytes) is not "
                                   "within the file or overlaps the header or the L1 table", s->reft_offset,
                                   s->reft_bytes);
        s->rb_entries = (s->cluster_size * 8) >> s->refcount_order;
        r = qcow2_reft_view(s);
        if (r < 0)
                return r;
        hostalloc_init(&s->alloc, ALIGN_UP(s->file_size, s->cluster_size), s->file_size,
                       (uint32_t) s->cluster_size);
        /* Unknown autoclear bits say "extra data a writer unaware of it
         * leaves inconsistent": cleared before the first write. */
        if (s->autoclear & ~known_autoclear) {
                r = write_header_u64(s, HDR_AUTOCLEAR, s->autoclear & known_autoclear);
                if (r < 0)
                        return r;
                s->autoclear &= known_autoclear;
        }
        s->writable = true;
        if (s->incompat & INCOMPAT_DIRTY) {
                /* lazy refcounts left dirty: rebuilt before anything is written */
                vdisk_check_report rep = { .size = sizeof rep };
                uint64_t left;

                r = qcow2_check(s, VDISK_CHECK_REPAIR_ALL, &rep, NULL);
                left = rep.corruptions - rep.corruptions_fixed;
                vdisk_check_report_clear(&rep);
                if (r < 0)
                        return r;
                if (left > 0)
                        return vdisk_error(-EUCLEAN, "qcow2: the refcounts of the dirty image could not be rebuilt "
                                           "(%" PRIu64 " errors left)", left);
                r = write_header_u64(s, HDR_INCOMPAT, s->incompat & ~(uint64_t) INCOMPAT_DIRTY);
                if (r < 0)
                        return r;
                s->incompat &= ~(uint64_t) INCOMPAT_DIRTY;
        }
        return 0;
}

/* L2 entry (and subcluster bitmap) of cluster `cl`; zeros when no L2 table. */
static int l2_entry(qcow2_state *s, uint64_t cl, uint64_t *ret_e, uint64_t *ret_bitmap) {
        uint64_t l1i = cl / s->l2_entries, l2i = cl % s->l2_entries, l1e;
        tc_table *l2;
        int r;

        *ret_e = *ret_bitmap = 0;
        r = tc_get(s->l1, l1i, &l1e);
        if (r < 0 || (l1e & OFFSET_MASK) == 0)
                return r;
        r = get_l2(s, l1e & OFFSET_MASK, &l2);
        if (r < 0)
                return r;
        return qcow2_l2_get(s, l2, l2i, ret_e, ret_bitmap);
}

static int rc_get(qcow2_state *s, uint64_t host, uint64_t *ret);
static void queue_free(qcow2_state *s, uint64_t host);

/* A copy of the shared L2 table at `old` in a new cluster (its data
 * clusters keep their counts: the copy takes over the active tree's
 * references, the old table keeps the snapshot's). */
static int copy_l2(qcow2_state *s, uint64_t old, uint64_t off) {
        _cleanup_free_ uint8_t *buf = malloc(s->cluster_size);
        tc_table *l2;
        int r;

        if (!buf)
                return -ENOMEM;
        r = get_l2(s, old, &l2);
        if (r >= 0)
                r = tc_read(l2, 0, buf, s->cluster_size);
        if (r >= 0)
                r = io_pwrite(s->io, buf, s->cluster_size, off);
        if (r < 0)
                return r;
        note_file_end(s, off + s->cluster_size);
        return 0;
}

/* The L2 table for L1 index l1i, made (zeroed, counted, linked) when
 * missing, copied first when shared (refcount > 1: an internal snapshot
 * references it too); the old table is unreferenced at the next flush. */
static int l2_for_write(qcow2_state *s, uint64_t l1i, tc_table **ret) {
        uint64_t l1e, off, old = 0;
        tc_page *rbpg = NULL, *l1pg = NULL;
        int r;

        r = tc_get(s->l1, l1i, &l1e);
        if (r < 0)
                return r;
        if ((l1e & OFFSET_MASK) && !(l1e & L2E_COPIED)) {
                uint64_t rc;

                r = rc_get(s, l1e & OFFSET_MASK, &rc);
                if (r < 0)
                        return r;
                if (rc == 0)
                        return vdisk_error(-EUCLEAN, "qcow2: the L2 table at %" PRIu64 " has refcount 0",
                                           l1e & OFFSET_MASK);
                if (rc == 1) {
                        /* not shared: the flag was missing */
                        r = tc_set(s->l1, l1i, (l1e & OFFSET_MASK) | L2E_COPIED, 0);
                        if (r < 0)
                                return r;
                        l1e |= L2E_COPIED;
                } else
                        old = l1e & OFFSET_MASK;
        }
        if ((l1e & OFFSET_MASK) && !old)
                return get_l2(s, l1e & OFFSET_MASK, ret);
        r = qcow2_alloc_cluster(s, &off, NULL);
        if (r < 0)
                return r;
        r = old ? copy_l2(s, old, off) : write_zero_cluster(s, off);
        if (r < 0)
                return r;
        r = rc_update(s, off, +1, &rbpg);
        if (r < 0)
                return r;
        /* The zeros are "data" for the L1 page: flushed before it. */
        r = tc_set(s->l1, l1i, off | L2E_COPIED, TC_AFTER_DATA);
        if (r >= 0)
                r = tc_page_get(s->l1, l1i * 8 / 4096, &l1pg);
        if (r >= 0)
                r = tc_page_depends(l1pg, rbpg);
        if (l1pg)
                tc_page_put(l1pg);
        tc_page_put(rbpg);
        if (r < 0)
                return r;
        if (old)
                queue_free(s, old);
        return get_l2(s, off, ret);
}

/* The cluster holding `host` loses a reference at the next flush (after
 * the tables that dropped the pointer are on disk). */
static void queue_free(qcow2_state *s, uint64_t host) {
        if (s->n_pending_free == s->cap_pending_free) {
                size_t cap = MAX(s->cap_pending_free * 2, (size_t) 64);
                uint64_t *n = realloc(s->pending_free, cap * sizeof *n);

                if (!n)
                        return;   /* at worst a leak */
                s->pending_free = n;
                s->cap_pending_free = cap;
        }
        s->pending_free[s->n_pending_free++] = host;
}

static void queue_free_compressed(qcow2_state *s, uint64_t e) {
        uint64_t coff = e & s->coffset_mask, nsec = ((e >> s->csize_shift) & s->csize_mask) + 1;
        uint64_t start = coff & ~UINT64_C(511), last = start + nsec * 512 - 1;

        for (uint64_t c = start / s->cluster_size; c <= last / s->cluster_size; c++)
                queue_free(s, c * s->cluster_size);
}

static int qcow2_allocate(void *state, uint64_t offset, uint64_t len, reservation *ret) {
        qcow2_state *s = state;
        uint64_t cl = offset >> s->cluster_bits, cstart = cl << s->cluster_bits;
        uint64_t cend = MIN(cstart + s->cluster_size, s->size), ustart = cstart, uend = cend;
        uint64_t e, bitmap, host, k = 1;
        bool has_host;
        int fresh = 0, r;

        assert(s->writable);
        assert(!s->reserved);
        assert(offset < s->size && len > 0);

        r = mark_dirty(s);
        if (r < 0)
                return r;
        r = l2_entry(s, cl, &e, &bitmap);
        if (r < 0)
                return r;
        host = e & L2E_COMPRESSED ? 0 : e & OFFSET_MASK;
        /* in an external data file offset 0 is allocated when COPIED is set */
        has_host = host != 0 || (s->data_io && !(e & L2E_COMPRESSED) && (e & L2E_COPIED));
        s->res_cow = 0;
        if (host != 0 && !s->data_io && !(e & L2E_COPIED)) {
                /* maybe shared with a snapshot: copied on write, as a whole
                 * cluster (with extended L2 every subcluster becomes
                 * allocated, holding what it read) */
                uint64_t rc;

                r = rc_get(s, host, &rc);
                if (r < 0)
                        return r;
                if (rc == 0)
                        return vdisk_error(-EUCLEAN, "qcow2: the cluster at %" PRIu64 " maps to %" PRIu64
                                           ", which has refcount 0", cstart, host);
                if (rc > 1) {
                        s->res_cow = host;
                        host = 0;
                        has_host = false;
                }
        }
        if (s->res_cow) {
                ustart = cstart;
                uend = cend;
        } else if (s->extended_l2 && !(e & L2E_COMPRESSED)) {
                /* the run of not-allocated subclusters the write covers */
                uint64_t sc0 = (offset - cstart) / s->subcluster_size;
                uint64_t last = (MIN(offset + len, cend) - 1 - cstart) / s->subcluster_size, sc1 = sc0 + 1;
                uint32_t alloc = (uint32_t) bitmap;

                while (sc1 <= last && !((alloc >> sc1) & 1))
                        sc1++;
                ustart = cstart + sc0 * s->subcluster_size;
                uend = MIN(cstart + sc1 * s->subcluster_size, cend);
        }
        /* A run: a cluster holding nothing, which the write fills to its
         * end, takes the clusters after it that hold nothing either (no
         * host, no flags, no subcluster bits) as far as the write goes,
         * within its L2 table: one unit of contiguous new host clusters. */
        if (!has_host && !s->res_cow && !(e & L2E_COMPRESSED) && uend == cend && offset + len > cend) {
                uint64_t wend = MIN(offset + len, s->size);
                uint64_t max = MIN(DIV_ROUND_UP(wend - cstart, s->cluster_size), s->l2_entries - cl % s->l2_entries);

                while (k < max) {
                        uint64_t e2, b2;

                        r = l2_entry(s, cl + k, &e2, &b2);
                        if (r < 0)
                                return r;
                        if (e2 != 0 || b2 != 0)
                                break;
                        k++;
                }
        }
        if (!has_host && s->data_io) {
                /* an external data file holds every cluster at its guest
                 * offset, and has no refcounts */
                host = cstart;
                fresh = host >= s->data_size;
                s->res_new = true;
        } else if (!has_host) {
                r = qcow2_alloc_run(s, k, &host, &k, &fresh);
                if (r < 0)
                        return r;
                s->res_new = true;
        } else
                s->res_new = false;
        if (k > 1) {
                uint64_t last = (cl + k - 1) << s->cluster_bits;

                uend = MIN(last + s->cluster_size, s->size);
                /* with subclusters, the last cluster's as far as the write goes */
                if (s->extended_l2)
                        uend = MIN(last + ALIGN_UP(MIN(offset + len, uend) - last, s->subcluster_size), uend);
        }
        s->reserved = true;
        s->res_host = host;
        s->res_clusters = k;
        *ret = (reservation) {
                .file = s->data_io,
                .unit_offset = ustart,
                .length = uend - ustart,
                .host_offset = host + (ustart - cstart),
                .fresh = fresh,
        };
        return 0;
}

/* Commits cluster i of the reservation (entry `e`, bitmap `bitmap` before):
 * a new host cluster counted, then its L2 entry and subcluster bitmap (the
 * L2 page written after the refcount page). */
static int commit_cluster(qcow2_state *s, tc_table *l2, const reservation *res, uint64_t i, uint64_t e,
                          uint64_t bitmap) {
        uint64_t cl = (res->unit_offset >> s->cluster_bits) + i, cstart = cl << s->cluster_bits;
        uint64_t l2i = cl % s->l2_entries, host = s->res_host + i * s->cluster_size;
        tc_page *rbpg = NULL, *l2pg = NULL;
        int r;

        if (s->res_new && !s->data_io) {
                r = rc_update(s, host, +1, &rbpg);
                if (r < 0)
                        return r;
                /* counted: a release now leaks them rather than hand them out again */
                s->res_counted = true;
        }
        if ((e & L2E_COMPRESSED) || s->res_cow)
                bitmap = UINT32_MAX;   /* the unit was the whole cluster */
        else if (s->extended_l2) {
                uint64_t lo = MAX(res->unit_offset, cstart);
                uint64_t hi = MIN(res->unit_offset + res->length, cstart + s->cluster_size);
                uint64_t sc0 = (lo - cstart) / s->subcluster_size, n = DIV_ROUND_UP(hi - lo, s->subcluster_size);
                uint32_t bits = (uint32_t) (n >= 32 ? UINT32_MAX : ((UINT32_C(1) << n) - 1) << sc0);

                bitmap = (bitmap | bits) & ~((uint64_t) bits << 32);
        }
        r = tc_set(l2, s->extended_l2 ? 2 * l2i : l2i, host | L2E_COPIED, TC_AFTER_DATA);
        if (r >= 0 && s->extended_l2)
                r = tc_set(l2, 2 * l2i + 1, bitmap, TC_AFTER_DATA);
        if (r >= 0 && rbpg) {
                r = tc_page_get(l2, 0, &l2pg);
                if (r >= 0)
                        r = tc_page_depends(l2pg, rbpg);
        }
        if (l2pg)
                tc_page_put(l2pg);
        if (rbpg)
                tc_page_put(rbpg);
        return r;
}

/* Commits the unit's clusters in order, each as a single cluster would be.
 * The clusters after the first of a run held nothing (allocate() checked,
 * and the core makes no other call in between). A failure part way leaves
 * the clusters before it committed (their data is written) and leaks the
 * counted rest. */
static int qcow2_commit(void *state, const reservation *res) {
        qcow2_state *s = state;
        uint64_t cl = res->unit_offset >> s->cluster_bits;
        uint64_t l1i = cl / s->l2_entries, l2i = cl % s->l2_entries, e, bitmap = 0;
        tc_table *l2;
        bool drop;
        int r;

        assert(s->reserved);
        assert(l2i + s->res_clusters <= s->l2_entries);
        r = l2_for_write(s, l1i, &l2);
        if (r < 0)
                return r;
        r = qcow2_l2_get(s, l2, l2i, &e, &bitmap);
        if (r < 0)
                return r;
        if (s->data_io)
                s->data_size = MAX(s->data_size, res->host_offset + res->length);
        else {
                r = cover_file(s, s->res_host + s->res_clusters * s->cluster_size);
                if (r < 0)
                        return r;
        }
        /* the snapshot keeps a copied cluster; this table drops it (the L2
         * entry may have changed since allocate(): only if it still points
         * there) */
        drop = s->res_cow && (e & OFFSET_MASK) == s->res_cow;
        for (uint64_t i = 0; r >= 0 && i < s->res_clusters; i++)
                r = commit_cluster(s, l2, res, i, i == 0 ? e : 0, i == 0 ? bitmap : 0);
        if (r < 0)
                return r;
        /* (a compressed or copied cluster is a unit of its own) */
        if (e & L2E_COMPRESSED)
                queue_free_compressed(s, e);
        else if (drop)
                queue_free(s, s->res_cow);
        s->reserved = false;
        s->res_cow = 0;
        s->res_counted = false;
        return 0;
}

/* The clusters stay unreferenced; the next reservation takes them again (no
 * longer fresh). */
static void qcow2_release(void *state, const reservation *res) {
        qcow2_state *s = state;
        uint64_t end = s->res_host + s->res_clusters * s->cluster_size;

        assert(s->reserved);
        s->reserved = false;
        s->res_cow = 0;
        if (s->res_counted)
                s->res_counted = false;
        else if (s->res_new && !s->data_io && hostalloc_next(&s->alloc) == end)
                hostalloc_rewind(&s->alloc, s->res_host);
        else if (s->res_new && !s->data_io)
                qcow2_note_free(s, s->res_host);   /* reused clusters: free again */
}

/* v3 zero clusters: an allocated cluster keeps its space (zero flag, or all
 * subclusters zero), a compressed one is freed. */
static int qcow2_mark_zero(void *state, uint64_t offset, uint64_t len) {
        qcow2_state *s = state;
        uint64_t first = offset >> s->cluster_bits, end = DIV_ROUND_UP(offset + len, s->cluster_size);
        int r;

        assert(s->writable);
        if (s->version < 3)
                return vdisk_error(-EOPNOTSUPP, "qcow2: version 2 images have no zero clusters");
        /* a raw data file must read as the disk does: the core writes zeros */
        if (s->data_io && (s->autoclear & AUTOCLEAR_DATA_RAW))
                return -EOPNOTSUPP;
        r = mark_dirty(s);
        if (r < 0)
                return r;
        for (uint64_t cl = first; cl < end; cl++) {
                uint64_t l1i = cl / s->l2_entries, l2i = cl % s->l2_entries, e, bitmap, ne, nb = 0;
                tc_table *l2;

                r = l2_entry(s, cl, &e, &bitmap);
                if (r < 0)
                        return r;
                /* in an image without a backing file, nothing reads zeros already */
                if (!s->backing_name && !(e & L2E_COMPRESSED) && (e & OFFSET_MASK) == 0 &&
                    !(s->data_io && (e & L2E_COPIED)) && (s->extended_l2 ? (uint32_t) bitmap == 0 : true))
                        continue;
                r = l2_for_write(s, l1i, &l2);
                if (r < 0)
                        return r;
                if (e & L2E_COMPRESSED) {
                        queue_free_compressed(s, e);
                        e = 0;
                }
                if (s->extended_l2) {
                        ne = e & (OFFSET_MASK | L2E_COPIED);
                        nb = (uint64_t) UINT32_MAX << 32;
                } else
                        ne = (e & (OFFSET_MASK | L2E_COPIED)) | L2E_ZERO;
                r = tc_set(l2, s->extended_l2 ? 2 * l2i : l2i, ne, 0);
                if (r >= 0 && s->extended_l2)
                        r = tc_set(l2, 2 * l2i + 1, nb, 0);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int flush_tables(qcow2_state *s) {
        int r;

        r = flush_refcounts(s);
        if (r < 0)
                return r;
        for (size_t i = 0; i < QCOW2_L2_SLOTS; i++)
                if (s->slots[i].t && tc_table_is_dirty(s->slots[i].t)) {
                        r = tc_table_flush(s->slots[i].t);
                        if (r < 0)
                                return r;
                }
        return s->l1 && tc_table_is_dirty(s->l1) ? tc_table_flush(s->l1) : 0;
}

int qcow2_flush(void *state) {
        qcow2_state *s = state;
        int r;

        if (!s->writable)
                return 0;
        if (s->data_io) {
                r = io_flush(s->data_io);
                if (r < 0)
                        return r;
        }
        r = flush_tables(s);
        if (r < 0)
                return r;
        /* the L2 entries that pointed at freed clusters are on disk now */
        while (s->n_pending_free > 0) {
                r = rc_update(s, s->pending_free[s->n_pending_free - 1], -1, NULL);
                if (r < 0)
                        return r;
                s->n_pending_free--;
        }
        r = flush_tables(s);
        if (r < 0)
                return r;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        r = qcow2_bitmaps_flush(s);
        if (r < 0)
                return r;
        if (s->marked_dirty) {
                r = write_header_u64(s, HDR_INCOMPAT, s->incompat & ~(uint64_t) INCOMPAT_DIRTY);
                if (r < 0)
                        return r;
                s->incompat &= ~(uint64_t) INCOMPAT_DIRTY;
                s->marked_dirty = false;
        }
        return 0;
}

/* Lent to the other parts (qcow2-int.h): qcow2-space.c, qcow2-amend.c,
 * qcow2-compress.c. */
int qcow2_rc_update(qcow2_state *s, uint64_t host, int delta, tc_page **ret_pg) {
        return rc_update(s, host, delta, ret_pg);
}

int qcow2_flush_refcounts(qcow2_state *s) {
        return flush_refcounts(s);
}

int qcow2_l2_set_counted(qcow2_state *s, tc_table *l2, uint64_t i, uint64_t e, uint64_t host, uint32_t flags) {
        tc_page *rbpg = NULL, *l2pg = NULL;
        int r;

        r = rc_update(s, host, +1, &rbpg);
        if (r < 0)
                return r;
        /* the refcount block reaches the disk before the L2 table (an early
         * write-back of the L2 page included); rc_update keeps the L2 views */
        r = tc_set(l2, i, e, flags);
        if (r >= 0)
                r = tc_page_get(l2, 0, &l2pg);
        if (r >= 0)
                r = tc_page_depends(l2pg, rbpg);
        if (l2pg)
                tc_page_put(l2pg);
        tc_page_put(rbpg);
        return r;
}

int qcow2_flush_tables(qcow2_state *s) {
        return flush_tables(s);
}

int qcow2_mark_dirty(qcow2_state *s) {
        return mark_dirty(s);
}

void qcow2_note_file_end(qcow2_state *s, uint64_t end) {
        note_file_end(s, end);
}

int qcow2_l2_entry(qcow2_state *s, uint64_t cl, uint64_t *ret_e, uint64_t *ret_bitmap) {
        return l2_entry(s, cl, ret_e, ret_bitmap);
}

int qcow2_l2_for_write(qcow2_state *s, uint64_t l1i, tc_table **ret) {
        return l2_for_write(s, l1i, ret);
}

int qcow2_get_l2(qcow2_state *s, uint64_t off, tc_table **ret) {
        return get_l2(s, off, ret);
}

void qcow2_queue_free(qcow2_state *s, uint64_t host) {
        queue_free(s, host);
}

void qcow2_queue_free_compressed(qcow2_state *s, uint64_t e) {
        queue_free_compressed(s, e);
}

uint64_t qcow2_rc_entry_get(const uint8_t *b, uint64_t i, uint32_t order) {
        return rc_entry_get(b, i, order);
}

void qcow2_rc_entry_set(uint8_t *b, uint64_t i, uint32_t order, uint64_t v) {
        uint32_t o, l;

        rc_entry_set(b, i, order, v, &o, &l);
}

int qcow2_cover_file(qcow2_state *s, uint64_t end) {
        return cover_file(s, end);
}

/* Drops the cached view of the cluster-sized table at `off` (an L2 table or
 * refcount block that was freed or moved), writing it back first when dirty. */
int qcow2_drop_table(qcow2_state *s, uint64_t off) {
        l2_slot *sets[2] = { s->slots, s->rb_slots };
        size_t n[2] = { QCOW2_L2_SLOTS, QCOW2_RB_SLOTS };
        int r;

        for (size_t k = 0; k < 2; k++)
                for (size_t i = 0; i < n[k]; i++) {
                        l2_slot *sl = &sets[k][i];

                        if (!sl->t || sl->offset != off)
                                continue;
                        if (tc_table_is_dirty(sl->t)) {
                                r = tc_table_flush(sl->t);
                                if (r < 0)
                                        return r;
                        }
                        sl->t = tc_table_free(sl->t);
                        sl->offset = 0;
                }
        return 0;
}

int qcow2_allocate_unit(qcow2_state *s, uint64_t offset, uint64_t len, reservation *ret) {
        return qcow2_allocate(s, offset, len, ret);
}

int qcow2_commit_unit(qcow2_state *s, const reservation *res) {
        return qcow2_commit(s, res);
}

void qcow2_release_unit(qcow2_state *s, const reservation *res) {
        qcow2_release(s, res);
}

/* ---------------------------------------------------------------- check
 *
 * Counts every reference the image makes (header, L1 and refcount tables,
 * refcount blocks, L2 tables, data and compressed clusters, the snapshot
 * table and each snapshot's tables), then compares the counts with the
 * refcounts on disk: a refcount above its count is a leak, below it a
 * corruption (qemu-img check's words). Repair sets the refcounts to the
 * counts (leaks with REPAIR_LEAKS, both with REPAIR_ALL); the same repair
 * rebuilds the refcounts of a dirty (lazy refcounts) image at writable open.
 * Memory: one u32 per cluster of the file while it runs, and two bits.
 *
 * The OFLAG_COPIED test (qcow2_check_copied) comes last, against the
 * refcounts as the repair left them. So that it need not read every L2 table
 * again, the count notes which clusters the active L2 tables name with the
 * flag and which without; where the final refcounts agree with all of them
 * (refcount 1 exactly where flagged: a sound image), it reads no L2 table.
 */

typedef struct qcount {
        qcow2_state *s;
        uint32_t *n;
        uint64_t clusters;
        vdisk_check_report *rep;
        uint64_t allocated, fragmented, compressed;   /* of the active tables, as qemu counts them */
        uint64_t *copied, *plain;   /* per cluster: named by an active L2 entry with / without COPIED */
        bool copied_suspect;        /* an active L2 entry may disagree with its refcount */
} qcount;

/* The active L2 entry e names cluster `host` (not compressed, not 0). */
static void note_copied(qcount *q, uint64_t host, uint64_t e) {
        uint64_t c = host / q->s->cluster_size;

        if (host % q->s->cluster_size != 0 || c >= q->clusters) {
                q->copied_suspect = true;
                return;
        }
        bitmap_set(e & L2E_COPIED ? q->copied : q->plain, c);
}

/* Cluster c ends with refcount rc: does an active L2 entry's flag disagree? */
static void copied_against(qcount *q, uint64_t c, uint64_t rc) {
        if (c < q->clusters && (rc == 1 ? bitmap_get(q->plain, c) : bitmap_get(q->copied, c)))
                q->copied_suspect = true;
}

static void count_ref(qcount *q, uint64_t off, uint64_t len, const char *what) {
        uint64_t cs = q->s->cluster_size;

        if (len == 0)
                return;
        for (uint64_t c = off / cs; c <= (off + len - 1) / cs; c++) {
                if (c >= q->clusters) {
                        q->rep->corruptions++;
                        (void) check_report_add(q->rep, "ERROR %s at %" PRIu64 " is outside the file", what, off);
                        return;
                }
                if (q->n[c] < UINT32_MAX)
                        q->n[c]++;
        }
}

/* A data cluster of the active tables at `host`; *next: where the one
 * before it in its L2 table ended (0: none yet). */
static void count_data(qcount *q, uint64_t host, uint64_t *next) {
        q->allocated++;
        if (*next != 0 && host != *next)
                q->fragmented++;
        *next = host + q->s->cluster_size;
}

/* The L2 tables of an L1 table and the clusters they reference. */
static int count_l1(qcount *q, uint64_t l1_off, uint32_t l1_size, bool active) {
        qcow2_state *s = q->s;
        uint64_t cs = s->cluster_size, next;
        _cleanup_free_ uint8_t *l1 = NULL, *l2 = NULL;
        int r;

        if (l1_size == 0)
                return 0;
        if ((uint64_t) l1_size * 8 > QCOW2_L1_MAX_BYTES || !range_within(l1_off, (uint64_t) l1_size * 8, s->file_size)) {
                q->rep->corruptions++;
                return check_report_add(q->rep, "ERROR L1 table at %" PRIu64 " (%" PRIu32 " entries) is outside "
                                        "the file", l1_off, l1_size);
        }
        count_ref(q, l1_off, (uint64_t) l1_size * 8, "L1 table");
        l1 = malloc((size_t) l1_size * 8);
        l2 = malloc(cs);
        if (!l1 || !l2)
                return -ENOMEM;
        r = io_pread(s->io, l1, (size_t) l1_size * 8, l1_off);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < l1_size; i++) {
                uint64_t l2_off = get_be64(l1 + (size_t) i * 8) & OFFSET_MASK;

                if (l2_off == 0)
                        continue;
                if (l2_off % cs != 0 || !range_within(l2_off, cs, s->file_size)) {
                        q->rep->corruptions++;
                        r = check_report_add(q->rep, "ERROR L2 table at %" PRIu64 " is not cluster-aligned within "
                                             "the file", l2_off);
                        if (r < 0)
                                return r;
                        continue;
                }
                count_ref(q, l2_off, cs, "L2 table");
                r = io_pread(s->io, l2, cs, l2_off);
                if (r < 0)
                        return r;
                /* qemu's fragmentation: within an L2 table, a data cluster
                 * not right after the one before it; every compressed one */
                next = 0;
                for (uint64_t k = 0; k < s->l2_entries; k++) {
                        uint64_t e = get_be64(l2 + k * (s->extended_l2 ? 16 : 8)), host;

                        if (e & L2E_COMPRESSED) {
                                uint64_t coff = e & s->coffset_mask;
                                uint64_t nsec = ((e >> s->csize_shift) & s->csize_mask) + 1;

                                count_ref(q, coff & ~UINT64_C(511), nsec * 512, "compressed cluster");
                                q->allocated += active;
                                q->compressed += active;
                                q->fragmented += active;
                                continue;
                        }
                        host = e & OFFSET_MASK;
                        if (s->data_io) {
                                /* the external data file has no refcounts */
                                if (active && (host != 0 || (e & L2E_COPIED)))
                                        count_data(q, host, &next);
                                continue;
                        }
                        if (host == 0)
                                continue;
                        if (active)
                                note_copied(q, host, e);
                        if (host % cs != 0) {
                                q->rep->corruptions++;
                                r = check_report_add(q->rep, "ERROR cluster at %" PRIu64 " is not aligned", host);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        count_ref(q, host, cs, "data cluster");
                        if (active)
                                count_data(q, host, &next);
                }
        }
        return 0;
}

static int count_snapshots(qcount *q) {
        qcow2_state *s = q->s;
        uint64_t off = s->snapshots_offset;
        int r;

        for (uint32_t n = 0; n < s->nb_snapshots; n++) {
                uint8_t e[40];
                uint64_t entry_len;

                if (off - s->snapshots_offset > QCOW2_SNAP_TABLE_MAX || !range_within(off, sizeof e, s->file_size))
                        return vdisk_error(-EUCLEAN, "qcow2: snapshot table entry %" PRIu32 " is outside the file",
                                           n);
                r = io_pread(s->io, e, sizeof e, off);
                if (r < 0)
                        return r;
                if (get_be32(e + 36) > QCOW2_SNAP_EXTRA_MAX)
                        return vdisk_error(-EUCLEAN, "qcow2: snapshot %" PRIu32 " has too much extra data", n);
                entry_len = ALIGN_UP(sizeof e + get_be32(e + 36) + get_be16(e + 12) + get_be16(e + 14),
                                     UINT64_C(8));
                r = count_l1(q, get_be64(e), get_be32(e + 8), false);
                if (r < 0)
                        return r;
                off += entry_len;
        }
        count_ref(q, s->snapshots_offset, off - s->snapshots_offset, "snapshot table");
        return 0;
}

static void count_ref_cb(void *ctx, uint64_t off, uint64_t len, const char *what) {
        count_ref(ctx, off, len, what);
}

/* Sets the refcount of cluster c to v (through the cache; blocks made as
 * needed). */
static int rc_set_value(qcow2_state *s, uint64_t c, uint64_t v) {
        tc_page *pg;
        uint32_t o, l;
        int r;

        r = rb_page_for(s, c, &pg);
        if (r < 0)
                return r;
        rc_entry_set(tc_page_data(pg), c % s->rb_entries, s->refcount_order, MIN(v, rc_max(s)), &o, &l);
        tc_page_dirty(pg, o, l, 0);
        tc_page_put(pg);
        return 0;
}

/* A refcount block that something else points at too (an L2 entry,
 * another table) is corruption: qemu-img check's "ERROR refcount block N
 * refcount=R", repaired by -r all with a rebuild of the refcounts. Here the
 * block is copied to a new cluster at the end of the file (counted, written,
 * made durable), the refcount table entry switched to it and flushed, and
 * the old cluster loses the block's reference: what pointed at it keeps a
 * cluster of its own, which no refcount update changes any more. */
static int move_shared_rb(qcow2_state *s, uint64_t rti, uint64_t from, uint64_t *ret_to) {
        uint64_t to;
        int r;

        r = qcow2_flush_refcounts(s);
        if (r >= 0)
                r = qcow2_table_place(s, NULL, s->cluster_size, from, 0, 0, &to);
        if (r >= 0)
                r = qcow2_refblock_switch(s, rti, from, to);
        if (r < 0)
                return r;
        *ret_to = to;
        return 0;
}

int qcow2_check(void *state, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p) {
        qcow2_state *s = state;
        bool fix_all = flags & VDISK_CHECK_REPAIR_ALL, fix_leaks = fix_all || (flags & VDISK_CHECK_REPAIR_LEAKS);
        bool dry = flags & VDISK_CHECK_DRY_RUN;
        uint64_t cs = s->cluster_size, rb_entries = (cs * 8) >> s->refcount_order, n_reft;
        _cleanup_free_ uint8_t *reft = NULL, *blk = NULL;
        _cleanup_free_ uint32_t *cnt = NULL;
        _cleanup_free_ uint64_t *copied = NULL, *plain = NULL;
        qcount q = { .s = s, .rep = rep };
        uint64_t shared[64];   /* refcount blocks referenced more than once */
        uint64_t end = 0;      /* clusters up to the last one with a refcount or a reference */
        size_t n_shared = 0;
        int r;

        if ((fix_leaks && !dry) && !s->writable)
                return vdisk_error(-EROFS, "qcow2: image is read-only; cannot repair");
        if (s->writable) {
                r = qcow2_flush(s);
                if (r < 0)
                        return r;
        }
        q.clusters = DIV_ROUND_UP(s->file_size, cs);
        cnt = calloc(q.clusters ? q.clusters : 1, sizeof *cnt);
        copied = calloc(DIV_ROUND_UP(q.clusters, 64u) + 1, sizeof *copied);
        plain = calloc(DIV_ROUND_UP(q.clusters, 64u) + 1, sizeof *plain);
        n_reft = s->reft_bytes / 8;
        reft = malloc(s->reft_bytes ? s->reft_bytes : 1);
        blk = malloc(cs);
        if (!cnt || !copied || !plain || !reft || !blk)
                return -ENOMEM;
        q.n = cnt;
        q.copied = copied;
        q.plain = plain;
        if (!range_within(s->reft_offset, s->reft_bytes, s->file_size))
                return vdisk_error(-EUCLEAN, "qcow2: the refcount table is outside the file");
        r = io_pread(s->io, reft, s->reft_bytes, s->reft_offset);
        if (r < 0)
                return r;

        count_ref(&q, 0, cs, "header");
        count_ref(&q, s->reft_offset, s->reft_bytes, "refcount table");
        for (uint64_t i = 0; i < n_reft; i++) {
                uint64_t b = get_be64(reft + i * 8) & REFT_OFFSET_MASK;

                if (b == 0)
                        continue;
                if (b % cs != 0) {
                        rep->corruptions++;
                        r = check_report_add(rep, "ERROR refcount block %" PRIu64 " is not cluster aligned", i);
                        if (r < 0)
                                return r;
                        continue;
                }
                count_ref(&q, b, cs, "refcount block");
        }
        r = count_l1(&q, s->l1_offset, s->l1_size, true);
        if (r < 0)
                return r;
        if (s->nb_snapshots > 0) {
                r = count_snapshots(&q);
                if (r < 0)
                        return r;
        }
        r = qcow2_bitmaps_count(s, count_ref_cb, &q, rep);
        if (r < 0)
                return r;

        /* each refcount block referenced once, by the table */
        for (uint64_t i = 0; i < n_reft; i++) {
                uint64_t b = get_be64(reft + i * 8) & REFT_OFFSET_MASK;

                if (b == 0 || b % cs != 0 || !range_within(b, cs, s->file_size) || b / cs >= q.clusters ||
                    cnt[b / cs] == 1)
                        continue;
                rep->corruptions++;
                r = check_report_add(rep, "ERROR refcount block %" PRIu64 " refcount=%" PRIu32, i, cnt[b / cs]);
                if (r < 0)
                        return r;
                if (cnt[b / cs] > 1 && n_shared < ELEMENTSOF(shared))
                        shared[n_shared++] = i;
        }

        /* compare: clusters in a refcount block, then referenced ones without */
        for (uint64_t i = 0; i < n_reft; i++) {
                uint64_t b = get_be64(reft + i * 8) & REFT_OFFSET_MASK;

                if (b == 0 || b % cs != 0 || !range_within(b, cs, s->file_size))
                        continue;
                r = io_pread(s->io, blk, cs, b);
                if (r < 0)
                        return r;
                for (uint64_t k = 0; k < rb_entries; k++) {
                        uint64_t c = i * rb_entries + k, disk = rc_entry_get(blk, k, s->refcount_order);
                        uint64_t want = c < q.clusters ? cnt[c] : 0;
                        bool leak = disk > want, fix = !dry && (leak ? fix_leaks : fix_all);

                        if (c < q.clusters && (disk != 0 || want != 0))
                                end = MAX(end, c + 1);

                        copied_against(&q, c, fix ? MIN(want, rc_max(s)) : disk);
                        if (disk == want)
                                continue;
                        if (leak)
                                rep->leaks++;
                        else
                                rep->corruptions++;
                        r = check_report_add(rep, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
                                             leak ? "Leaked" : "ERROR", c, disk, want);
                        if (r < 0)
                                return r;
                        /* a dry run counts what a repair would fix */
                        if (leak ? fix_leaks : fix_all) {
                                r = dry ? 0 : rc_set_value(s, c, want);
                                if (r < 0)
                                        return r;
                                if (leak)
                                        rep->leaks_fixed++;
                                else
                                        rep->corruptions_fixed++;
                        }
                }
        }
        for (uint64_t c = 0; c < q.clusters; c++) {
                uint64_t i = c / rb_entries, b = i < n_reft ? get_be64(reft + i * 8) & REFT_OFFSET_MASK : 0;

                if (cnt[c] == 0 || (b != 0 && b % cs == 0 && range_within(b, cs, s->file_size)))
                        continue;
                end = MAX(end, c + 1);
                copied_against(&q, c, fix_all && !dry ? MIN(cnt[c], rc_max(s)) : 0);
                rep->corruptions++;
                r = check_report_add(rep, "ERROR cluster %" PRIu64 " refcount=0 reference=%" PRIu32, c, cnt[c]);
                if (r < 0)
                        return r;
                if (fix_all) {
                        r = dry ? 0 : rc_set_value(s, c, cnt[c]);
                        if (r < 0)
                                return r;
                        rep->corruptions_fixed++;
                }
        }
        if (dry && fix_all)
                rep->corruptions_fixed += n_shared;   /* each would move */
        if (dry && fix_leaks) {
                r = check_report_add(rep, "dry run: nothing was written");
                if (r < 0)
                        return r;
        }
        if (!dry && s->writable && (rep->leaks_fixed || rep->corruptions_fixed)) {
                r = flush_tables(s);
                if (r < 0)
                        return r;
                r = io_flush(s->io);
                if (r < 0)
                        return r;
        }
        /* shared refcount blocks move out, once the counts are right */
        for (size_t k = 0; !dry && fix_all && k < n_shared; k++) {
                uint64_t b = get_be64(reft + shared[k] * 8) & REFT_OFFSET_MASK, to;

                r = move_shared_rb(s, shared[k], b, &to);
                if (r < 0)
                        return r;
                rep->corruptions_fixed++;
                r = check_report_add(rep, "Repairing refcount block %" PRIu64 ": moved from %" PRIu64 " to %" PRIu64
                                     " (the old cluster stays with the other reference)", shared[k], b, to);
                if (r < 0)
                        return r;
        }
        if (n_shared > 0 && !dry && fix_all) {
                r = qcow2_flush(s);
                if (r < 0)
                        return r;
        }
        /* OFLAG_COPIED against the refcounts as they are now; -r leaks
         * mends it too once nothing else is left (qemu's rule) */
        r = qcow2_check_copied(s, rep, !dry && s->writable &&
                               (fix_all || (fix_leaks && rep->corruptions == rep->corruptions_fixed &&
                                            rep->leaks == rep->leaks_fixed && !rep->check_errors)),
                               q.copied_suspect || (n_shared > 0 && !dry && fix_all));
        if (r < 0)
                return r;
        rep->total_clusters = DIV_ROUND_UP(s->size, cs);
        rep->allocated_clusters = q.allocated;
        rep->fragmented_clusters = q.fragmented;
        rep->compressed_clusters = q.compressed;
        /* qemu's: the end of the last cluster referenced or counted */
        rep->image_end_offset = end * cs;
        return 0;
}

/* ---------------------------------------------------------------- create */

typedef struct qcow2_opts {
        uint32_t version, cluster_size, refcount_bits, compression_type;
        bool lazy, extl2, prealloc_metadata;
        const char *data_file;          /* external data file, NULL = none */
        bool data_file_raw;
} qcow2_opts;

static int qcow2_parse_options(const create_params *p, qcow2_opts *o) {
        *o = (qcow2_opts) { .version = 3, .cluster_size = 65536, .refcount_bits = 16 };
        bool have_cs = false, have_rb = false;

        for (const char *const *kv = p->options; kv && kv[0]; kv += 2) {
                const char *k = kv[0], *v = kv[1];

                if (streq(k, "compat")) {
                        if (streq(v, "0.10") || streq(v, "v2"))
                                o->version = 2;
                        else if (streq(v, "1.1") || streq(v, "v3"))
                                o->version = 3;
                        else
                                return vdisk_error(-EINVAL, "qcow2: compat '%s' (0.10 or 1.1)", v);
                } else if (streq(k, "cluster_size")) {
                        unsigned long long n = strtoull(v, NULL, 10);

                        if (n < 512 || n > (2u << 20) || !IS_POWER_OF_2(n))
                                return vdisk_error(-EINVAL, "qcow2: cluster size must be a power of two between "
                                                   "512 and 2048k");
                        o->cluster_size = (uint32_t) n;
                        have_cs = true;
                } else if (streq(k, "refcount_bits")) {
                        unsigned long long n = strtoull(v, NULL, 10);

                        if (n < 1 || n > 64 || !IS_POWER_OF_2(n))
                                return vdisk_error(-EINVAL, "qcow2: refcount width must be a power of two and "
                                                   "may not exceed 64 bits");
                        o->refcount_bits = (uint32_t) n;
                        have_rb = true;
                } else if (streq(k, "lazy_refcounts"))
                        o->lazy = streq(v, "on");
                else if (streq(k, "extended_l2"))
                        o->extl2 = streq(v, "on");
                else if (streq(k, "compression_type")) {
                        if (streq(v, "zlib"))
                                o->compression_type = 0;
                        else if (streq(v, "zstd"))
                                o->compression_type = 1;
                        else
                                return vdisk_error(-EINVAL, "qcow2: compression type '%s' (zlib or zstd)", v);
                } else if (streq(k, "data_file")) {
                        if (!v[0] || strlen(v) > QCOW2_BACKING_NAME_MAX)
                                return vdisk_error(-EINVAL, "qcow2: data file name of %zu bytes (1 to %u)",
                                                   strlen(v), QCOW2_BACKING_NAME_MAX);
                        o->data_file = v;
                } else if (streq(k, "data_file_raw"))
                        o->data_file_raw = streq(v, "on");
                else if (streq(k, "encrypt.format") || (streq(k, "encryption") && streq(v, "on"))) {
                        return vdisk_error(-EOPNOTSUPP, "qcow2: creating images with %s is not supported yet", k);
                } else if (streq(k, "preallocation")) {
                        if (streq(v, "metadata"))
                                o->prealloc_metadata = true;
                        else if (!streq(v, "off"))
                                return vdisk_error(-EOPNOTSUPP, "qcow2: preallocation=%s is not supported yet "
                                                   "(off, metadata)", v);
                }
        }
        /* the caller's block size (a diff made like its image) when no
         * cluster_size was given and it is a qcow2 cluster size */
        if (!have_cs && p->block_size >= 512 && p->block_size <= (2u << 20) && IS_POWER_OF_2(p->block_size))
                o->cluster_size = p->block_size;
        if (o->version == 2) {
                if (have_rb && o->refcount_bits != 16)
                        return vdisk_error(-EINVAL, "qcow2: different refcount widths than 16 bits require "
                                           "compatibility level 1.1 or above (use compat=1.1 or greater)");
                if (o->lazy)
                        return vdisk_error(-EINVAL, "qcow2: lazy refcounts only supported with compatibility "
                                           "level 1.1 and above (use compat=1.1 or greater)");
                if (o->extl2)
                        return vdisk_error(-EINVAL, "qcow2: extended L2 entries are only supported with "
                                           "compatibility level 1.1 and above (use compat=1.1 or greater)");
                if (o->compression_type)
                        return vdisk_error(-EINVAL, "qcow2: compression type zstd requires compatibility "
                                           "level 1.1 and above (use compat=1.1 or greater)");
        }
        if (o->data_file_raw && !o->data_file)
                return vdisk_error(-EINVAL, "qcow2: data-file-raw requires data-file");
        if (o->data_file && o->version == 2)
                return vdisk_error(-EINVAL, "qcow2: External data files are only supported with compatibility "
                                   "level 1.1 and above (use version=v3 or greater)");
        if (o->data_file_raw && (p->parent_name || p->parent_rel_name))
                return vdisk_error(-EINVAL, "qcow2: Backing file and data-file-raw cannot be used at the same time");
        if (o->data_file_raw)
                o->prealloc_metadata = true;   /* the data file must read as the disk: qemu does the same */
        if (o->extl2 && o->cluster_size < 16384)
                return vdisk_error(-EINVAL, "qcow2: extended L2 entries are only supported with cluster sizes "
                                   "of at least 16384 bytes");
        /* a preallocated cluster of a diff must let the backing file
         * show through: only subclusters can say so; qemu's words */
        if (o->prealloc_metadata && (p->image_flags & VDISK_IMAGE_FLAGS_DIFF) && !o->extl2)
                return vdisk_error(-EINVAL, "Backing file and preallocation can only be used at the same time "
                                   "if extended_l2 is on");
        return 0;
}

/* preallocation=metadata: every cluster gets its L2 entry and host space
 * (appended, sparse: it reads zeros until written). */
static int preallocate_metadata(qcow2_state *s, bool diff) {
        uint64_t n = DIV_ROUND_UP(s->size, s->cluster_size);
        int r;

        for (uint64_t cl = 0; cl < n; cl++) {
                uint64_t l2i = cl % s->l2_entries, host;
                tc_table *l2;
                tc_page *rbpg = NULL, *l2pg = NULL;

                r = l2_for_write(s, cl / s->l2_entries, &l2);
                if (r < 0)
                        return r;
                if (s->data_io)
                        host = cl * s->cluster_size;   /* uncounted, at its guest offset */
                else {
                        r = hostalloc_alloc(&s->alloc, s->cluster_size, QCOW2_HOST_LIMIT, &host, NULL);
                        if (r < 0)
                                return r;
                        r = rc_update(s, host, +1, &rbpg);
                        if (r < 0)
                                return r;
                }
                r = tc_set(l2, s->extended_l2 ? 2 * l2i : l2i, host | L2E_COPIED, 0);
                /* a diff's subclusters stay unallocated: the backing file
                 * shows through until they are written (as qemu) */
                if (r >= 0 && s->extended_l2)
                        r = tc_set(l2, 2 * l2i + 1, diff ? 0 : UINT32_MAX, 0);
                if (r >= 0 && rbpg)
                        r = tc_page_get(l2, 0, &l2pg);
                if (r >= 0 && rbpg)
                        r = tc_page_depends(l2pg, rbpg);
                if (l2pg)
                        tc_page_put(l2pg);
                if (rbpg)
                        tc_page_put(rbpg);
                if (r < 0)
                        return r;
        }
        return cover_file(s, hostalloc_next(&s->alloc));
}

static int qcow2_create(void *state, const open_ctx *c, const create_params *p) {
        qcow2_opts o;
        uint64_t cs, l2_entries, l1_size, l1_c, rt_c = 1, rb_c = 1, total, rb_entries, l1_off;
        uint32_t cbits, order, hlen;
        size_t pos, name_len = 0, fmt_len = 0, df_len;
        _cleanup_free_ uint8_t *buf = NULL;
        const char *pname = p->parent_name ?: p->parent_rel_name;
        vdisk_io *data_io = NULL;
        int r;

        r = qcow2_parse_options(p, &o);
        if (r < 0)
                return r;
        if (p->size > QCOW2_SIZE_MAX)
                return vdisk_error(-EFBIG, "qcow2: virtual size %" PRIu64 " is too big", p->size);
        cs = o.cluster_size;
        cbits = (uint32_t) __builtin_ctzll(cs);
        order = (uint32_t) __builtin_ctz(o.refcount_bits);
        l2_entries = cs / (o.extl2 ? 16 : 8);
        l1_size = DIV_ROUND_UP(ALIGN_UP(p->size, UINT64_C(512)), l2_entries * cs);
        if (l1_size * 8 > QCOW2_L1_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow2: %" PRIu64 " bytes need an L1 table of %" PRIu64 " entries, "
                                   "too big for %" PRIu64 "-byte clusters", p->size, l1_size, cs);
        l1_c = DIV_ROUND_UP(MAX(l1_size, UINT64_C(1)) * 8, cs);
        rb_entries = (cs * 8) >> order;
        for (;;) {
                uint64_t nrb, nrt;

                total = 1 + rt_c + rb_c + l1_c;
                nrb = DIV_ROUND_UP(total, rb_entries);
                nrt = DIV_ROUND_UP(nrb * 8, cs);
                if (nrb <= rb_c && nrt <= rt_c)
                        break;
                rb_c = MAX(rb_c, nrb);
                rt_c = MAX(rt_c, nrt);
        }
        l1_off = (1 + rt_c + rb_c) * cs;

        /* qcow2 links its backing file by name only: a diff needs one (the
         * caller's, else the parent's name relative to the child's directory) */
        if (!pname && (p->image_flags & VDISK_IMAGE_FLAGS_DIFF))
                return vdisk_error(-EINVAL, "qcow2: a differencing image needs its backing file's name "
                                   "(qcow2 records no UUIDs)");
        if (pname) {
                name_len = strlen(pname);
                if (name_len == 0 || name_len > QCOW2_BACKING_NAME_MAX)
                        return vdisk_error(-EINVAL, "qcow2: backing file name of %zu bytes (1 to %u)", name_len,
                                           QCOW2_BACKING_NAME_MAX);
                if (p->parent_format) {
                        fmt_len = strlen(p->parent_format);
                        if (fmt_len == 0 || fmt_len >= 16)
                                return vdisk_error(-EINVAL, "qcow2: backing format '%s'", p->parent_format);
                }
        }
        hlen = o.version == 3 ? 112 : QCOW2_V2_HEADER;
        df_len = o.data_file ? strlen(o.data_file) : 0;
        if (hlen + (fmt_len ? 8 + ALIGN_UP(fmt_len, (size_t) 8) : 0) + (df_len ? 8 + ALIGN_UP(df_len, (size_t) 8) : 0) +
            8 + name_len > cs)
                return vdisk_error(-EINVAL, "qcow2: the backing file name does not fit in a %" PRIu64
                                   "-byte header cluster", cs);

        /* header cluster, refcount table, refcount blocks */
        buf = calloc(1 + rt_c + rb_c, cs);
        if (!buf)
                return -ENOMEM;
        put_be32(buf, QCOW2_MAGIC);
        put_be32(buf + 4, o.version);
        put_be32(buf + 20, cbits);
        put_be64(buf + 24, p->size);
        put_be32(buf + 36, (uint32_t) l1_size);
        put_be64(buf + 40, l1_off);
        put_be64(buf + 48, cs);
        put_be32(buf + 56, (uint32_t) rt_c);
        if (o.version == 3) {
                put_be64(buf + 72, (o.extl2 ? INCOMPAT_EXTL2 : 0) | (o.compression_type ? INCOMPAT_COMPRESSION : 0) |
                                   (o.data_file ? INCOMPAT_DATA_FILE : 0));
                put_be64(buf + 88, o.data_file_raw ? AUTOCLEAR_DATA_RAW : 0);
                put_be64(buf + 80, o.lazy ? COMPAT_LAZY_REFCOUNTS : 0);
                put_be32(buf + 96, order);
                put_be32(buf + 100, hlen);
                buf[104] = (uint8_t) o.compression_type;
        }
        pos = hlen;
        if (fmt_len) {
                put_be32(buf + pos, EXT_BACKING_FMT);
                put_be32(buf + pos + 4, (uint32_t) fmt_len);
                memcpy(buf + pos + 8, p->parent_format, fmt_len);
                pos += 8 + ALIGN_UP(fmt_len, (size_t) 8);
        }
        if (df_len) {
                put_be32(buf + pos, EXT_DATA_FILE);
                put_be32(buf + pos + 4, (uint32_t) df_len);
                memcpy(buf + pos + 8, o.data_file, df_len);
                pos += 8 + ALIGN_UP(df_len, (size_t) 8);
        }
        pos += 8;   /* end of extensions */
        if (name_len) {
                memcpy(buf + pos, pname, name_len);
                put_be64(buf + 8, pos);
                put_be32(buf + 16, (uint32_t) name_len);
        }
        for (uint64_t i = 0; i < rb_c; i++)
                put_be64(buf + cs + i * 8, (1 + rt_c + i) * cs);
        for (uint64_t ci = 0; ci < total; ci++) {
                uint32_t off, len;

                rc_entry_set(buf + (1 + rt_c + ci / rb_entries) * cs, ci % rb_entries, order, 1, &off, &len);
        }
        r = io_pwrite(c->io, buf, (1 + rt_c + rb_c) * cs, 0);
        if (r < 0)
                return r;
        /* the L1 table: zeros, sparse */
        r = io_truncate(c->io, total * cs);
        if (r < 0)
                return r;
        if (o.data_file) {
                /* new, next to the image (the files handle's rules), as long
                 * as the disk (qemu makes it so) */
                r = files_open(c->files, o.data_file, FILES_CREATE | FILES_WRITE, &data_io);
                if (r < 0)
                        return r;
                r = io_truncate(data_io, p->size);
                if (r < 0)
                        return r;
        }
        r = qcow2_open(state, c);
        if (r < 0 || !o.prealloc_metadata)
                return r;
        return preallocate_metadata(state, p->image_flags & VDISK_IMAGE_FLAGS_DIFF);
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

/* Relinks (META_PARENT_NAME): the header cluster's extensions are written
 * again without the old backing format, with the new one, and the new
 * backing file name after them; everything written before is flushed first,
 * so a relinked child never points at a parent its data does not yet cover. */
/* A new header cluster `hdr` (zeroed, cluster_size bytes) gets the header
 * of `old` and its extensions but those of type `drop`, in their order;
 * they end at the old backing file name or at the end marker. Returns where
 * the next extension goes. */
size_t qcow2_ext_copy(qcow2_state *s, const uint8_t *old, uint8_t *hdr, uint32_t drop) {
        size_t cs = (size_t) s->cluster_size, pos = s->header_length, end;
        uint64_t boff = get_be64(old + 8), bsize = get_be32(old + 16);

        memcpy(hdr, old, s->header_length);
        end = boff != 0 && bsize != 0 && boff < cs ? (size_t) boff : cs;
        for (size_t off = s->header_length; off + 8 <= end;) {
                uint32_t type = get_be32(old + off), len = get_be32(old + off + 4);
                size_t step = 8 + ALIGN_UP((size_t) len, 8);

                if (type == EXT_END || step > end - off)
                        break;
                if (type != drop) {
                        memcpy(hdr + pos, old + off, step);
                        pos += step;
                }
                off += step;
        }
        return pos;
}

static int qcow2_set_meta(void *state, const meta *m, uint32_t mask) {
        qcow2_state *s = state;
        size_t cs = (size_t) s->cluster_size, pos, name_len = 0, fmt_len = 0;
        _cleanup_free_ uint8_t *old = NULL, *hdr = NULL;
        _cleanup_free_ char *nname = NULL, *nfmt = NULL;
        int r;

        bool unlink = (mask & META_PARENT_UUID) && vdisk_uuid_is_null(m->parent_uuid) &&
                      !(mask & META_PARENT_NAME);

        /* qcow2 links its backing file by name only: the parent's UUIDs and
         * content ID a relink passes along are not recorded; a null parent
         * UUID without a name (the child becomes a base) drops the link */
        if (mask & ~(uint32_t) (META_PARENT_NAME | META_PARENT_UUID | META_PARENT_MOD_UUID | META_PARENT_CONTENT_ID))
                return vdisk_error(-EOPNOTSUPP, "qcow2: only the backing file can be changed");
        if (!(mask & META_PARENT_NAME) && !unlink)
                return 0;
        if (!s->writable)
                return vdisk_error(-EROFS, "qcow2: the image is read-only");
        if ((mask & META_PARENT_NAME) && m->parent_name && m->parent_name[0]) {
                name_len = strlen(m->parent_name);
                if (name_len > QCOW2_BACKING_NAME_MAX)
                        return vdisk_error(-EINVAL, "qcow2: backing file name of %zu bytes (at most %u)", name_len,
                                           QCOW2_BACKING_NAME_MAX);
                nname = strdup(m->parent_name);
                if (!nname)
                        return -ENOMEM;
                if (m->parent_format && m->parent_format[0]) {
                        fmt_len = strlen(m->parent_format);
                        if (fmt_len >= 16)
                                return vdisk_error(-EINVAL, "qcow2: backing format '%s'", m->parent_format);
                        nfmt = strdup(m->parent_format);
                        if (!nfmt)
                                return -ENOMEM;
                }
        }
        old = calloc(1, cs);
        hdr = calloc(1, cs);
        if (!old || !hdr)
                return -ENOMEM;
        r = io_pread_zerofill(s->io, old, cs, 0);
        if (r < 0)
                return r;
        pos = qcow2_ext_copy(s, old, hdr, EXT_BACKING_FMT);
        if (fmt_len) {
                if (pos + 8 + 16 > cs)
                        return vdisk_error(-ENOSPC, "qcow2: no room for the backing format in the header cluster");
                put_be32(hdr + pos, EXT_BACKING_FMT);
                put_be32(hdr + pos + 4, (uint32_t) fmt_len);
                memcpy(hdr + pos + 8, nfmt, fmt_len);
                pos += 8 + ALIGN_UP(fmt_len, (size_t) 8);
        }
        pos += 8;   /* end marker (zeros) */
        if (pos + name_len > cs)
                return vdisk_error(-ENOSPC, "qcow2: the backing file name does not fit in the header cluster");
        memcpy(hdr + pos, nname ?: "", name_len);
        put_be64(hdr + 8, name_len ? pos : 0);
        put_be32(hdr + 16, (uint32_t) name_len);

        r = qcow2_flush(s);
        if (r < 0)
                return r;
        r = io_pwrite(s->io, hdr, MAX(pos + name_len, (size_t) s->header_length), 0);
        if (r < 0)
                return r;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        free(s->backing_name);
        free(s->backing_format);
        s->backing_name = TAKE_PTR(nname);
        s->backing_format = TAKE_PTR(nfmt);
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

/* The keys and their order are qemu-img 7.2's "Format specific information"
 * (its dictionary's order; `vdisk-img info` prints them as they come, JSON
 * keys with '-' for ' '): compression type for v2 too, lazy refcounts and
 * bitmaps only in v3, the data file before "corrupt". */
static int qcow2_get_format_info(void *state, strv_builder *kv) {
        qcow2_state *s = state;
        int r;

        r = strv_push_pair(kv, "compat", "%s", s->version == 2 ? "0.10" : "1.1");
        if (r >= 0)
                r = strv_push_pair(kv, "compression type", "%s", s->compression_type ? "zstd" : "zlib");
        if (r >= 0 && s->version >= 3)
                r = strv_push_pair(kv, "lazy refcounts", "%s",
                                   s->compat & COMPAT_LAZY_REFCOUNTS ? "true" : "false");
        if (r >= 0)
                r = qcow2_bitmaps_format_info(s, kv);
        if (r >= 0)
                r = strv_push_pair(kv, "refcount bits", "%u", 1u << s->refcount_order);
        if (r >= 0 && s->data_file_name)
                r = strv_push_pair(kv, "data file", "%s", s->data_file_name);
        if (r >= 0 && s->data_file_name)
                r = strv_push_pair(kv, "data file raw", "%s", s->autoclear & AUTOCLEAR_DATA_RAW ? "true" : "false");
        if (r >= 0 && s->version >= 3)
                r = strv_push_pair(kv, "corrupt", "%s", s->incompat & INCOMPAT_CORRUPT ? "true" : "false");
        if (r >= 0 && s->version >= 3)
                r = strv_push_pair(kv, "extended l2", "%s", s->extended_l2 ? "true" : "false");
        return r;
}

/* One snapshot table entry (40 bytes, then extra data, id and name; the
 * next entry starts 8-aligned). */
typedef qcow2_snap snap_entry;

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
                .start = off,
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

int qcow2_read_snapshots(qcow2_state *s, vdisk_snapshot **ret, qcow2_snap **ret_e, size_t *ret_n) {
        return read_snapshots(s, ret, ret_e, ret_n);
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
        if (!l1_size_ok(e[i].l1_size))
                return vdisk_error(-EFBIG, "qcow2: snapshot %zu has an L1 table of %" PRIu32 " entries, too big", i,
                                   e[i].l1_size);
        if (!l1_place_ok(s, e[i].l1_offset, e[i].l1_size))
                return vdisk_error(-EUCLEAN, "qcow2: snapshot %zu has its L1 table at %" PRIu64 " (%" PRIu32
                                   " entries), not cluster-aligned within the file (%" PRIu64 " bytes)", i,
                                   e[i].l1_offset, e[i].l1_size, s->file_size);
        s->l1_offset = e[i].l1_offset;
        s->l1_size = e[i].l1_size;
        return 0;
}

/* ---------------------------------------------------------------- lent to qcow2-snapshot.c (and qcow2-int.h) */

int qcow2_rc_get(qcow2_state *s, uint64_t host, uint64_t *ret) {
        return rc_get(s, host, ret);
}

uint64_t qcow2_rc_max(const qcow2_state *s) {
        return rc_max(s);
}

bool qcow2_l1_ok(const qcow2_state *s, uint64_t l1_offset, uint32_t l1_size) {
        return l1_size_ok(l1_size) && l1_place_ok(s, l1_offset, l1_size);
}

/* The L2 tables held (flushed first by the caller) are dropped: the active
 * L1 table changed. */
void qcow2_drop_l2_cache(qcow2_state *s) {
        for (size_t i = 0; i < QCOW2_L2_SLOTS; i++)
                s->slots[i].t = tc_table_free(s->slots[i].t);
}

/* ---------------------------------------------------------------- new tables: place, switch, uncount */

/* Every table that moves (an L1 table on resize or snapshot apply, the
 * snapshot table, the bitmap directory and tables, the refcount table, and
 * compact's moves of L2 tables, refcount blocks, the L1 and refcount
 * tables) goes the same way:
 *
 *   1. qcow2_table_place(): new clusters, counted, the content written,
 *      both durable (unless QCOW2_PLACE_NOSYNC: the caller places more and
 *      calls qcow2_sync_refcounts() once);
 *   2. the switch: one write of the pointer (a header field, an L1 or
 *      refcount table entry, a directory entry), flushed;
 *   3. qcow2_uncount() on the old place (or queue_free: at the next flush).
 *
 * A cut before 2 leaves counted clusters nothing points to (a leak); after
 * it, the old place at worst leaks. Never a pointer to unwritten or
 * uncounted clusters. */

int qcow2_sync_refcounts(qcow2_state *s) {
        int r;

        r = flush_refcounts(s);
        return r < 0 ? r : io_flush(s->io);
}

int qcow2_table_place(qcow2_state *s, const void *buf, uint64_t len, uint64_t from, uint64_t below,
                      uint32_t flags, uint64_t *ret) {
        uint64_t cs = s->cluster_size, bytes = ALIGN_UP(MAX(len, UINT64_C(1)), cs), off;
        _cleanup_free_ uint8_t *tmp = NULL;
        int r;

        if (flags & QCOW2_PLACE_LOW)
                r = qcow2_alloc_low(s, bytes, below, &off);
        else
                r = hostalloc_alloc(&s->alloc, bytes, QCOW2_HOST_LIMIT, &off, NULL);
        if (r < 0)
                return r;
        tmp = calloc(1, (size_t) bytes);
        if (!tmp)
                return -ENOMEM;
        /* the clusters are in the file before their refcounts */
        r = cover_file(s, off + bytes);
        if (r < 0)
                return r;
        for (uint64_t c = 0; c < bytes; c += cs) {
                r = rc_update(s, off + c, +1, NULL);
                if (r < 0)
                        return r;
        }
        if (!buf) {
                /* a move: the refcounts go to the disk first, so a refcount
                 * block (or table) copied from `from` holds the counts just
                 * made, its new place's included; past the end of the file
                 * (qemu ends it after the snapshot table's last entry,
                 * without its padding) zeros */
                r = flush_refcounts(s);
                if (r >= 0)
                        r = io_pread_zerofill(s->io, tmp, (size_t) len, from);
        } else
                memcpy(tmp, buf, (size_t) len);
        if (r >= 0)
                r = io_pwrite(s->io, tmp, (size_t) bytes, off);
        if (r < 0)
                return r;
        if (!(flags & QCOW2_PLACE_NOSYNC)) {
                r = qcow2_sync_refcounts(s);
                if (r < 0)
                        return r;
        }
        *ret = off;
        return 0;
}

int qcow2_header_switch(qcow2_state *s, uint32_t at, const void *buf, size_t len) {
        int r;

        r = io_pwrite(s->io, buf, len, at);
        return r < 0 ? r : io_flush(s->io);
}

int qcow2_uncount(qcow2_state *s, uint64_t off, uint64_t len) {
        int r;

        for (uint64_t c = ALIGN_DOWN(off, s->cluster_size); c < off + len; c += s->cluster_size) {
                r = rc_update(s, c, -1, NULL);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The cached views of the L1 and refcount tables, made again after a
 * switch moved them. */
int qcow2_l1_view(qcow2_state *s) {
        s->l1 = tc_table_free(s->l1);
        if (s->l1_size == 0)
                return 0;
        tc_table_params p = {
                .offset = s->l1_offset,
                .size = (uint64_t) s->l1_size * 8,
                .page_size = 4096,
                .entry = TC_BE64,
                .name = "qcow2 L1 table",
        };
        return tc_table_new(s->budget, s->io, &p, &s->l1);
}

int qcow2_reft_view(qcow2_state *s) {
        s->reft = tc_table_free(s->reft);
        tc_table_params p = {
                .offset = s->reft_offset,
                .size = s->reft_bytes,
                .page_size = (uint32_t) MIN(s->cluster_size, UINT64_C(4096)),
                .entry = TC_BE64,
                .name = "qcow2 refcount table",
        };
        return tc_table_new(s->budget, s->io, &p, &s->reft);
}

static int qcow2_note_write(void *state, uint64_t offset, uint64_t len) {
        return qcow2_bitmaps_note_write(state, offset, len);
}

/* ---------------------------------------------------------------- table */

static const char *const qcow2_extensions[] = { "qcow2", NULL };
/* qcow2_create_options: qcow2-measure.c (measure takes the same options) */

const vdisk_backend backend_qcow2 = {
        .info = {
                .name = "QCOW2",
                .qemu_name = "qcow2",
                .caps = VDISK_CAP_FILE | VDISK_CAP_DIFF | VDISK_CAP_CREATE_DYNAMIC | VDISK_CAP_CHECK |
                        VDISK_CAP_REPAIR | VDISK_CAP_COMPRESS,
                .media = VDISK_MEDIA_HDD,
                .extensions = qcow2_extensions,
                .create_options = qcow2_create_options,
        },
        .flags = BACKEND_SIZE_OWN_FILE,
        .state_size = sizeof(qcow2_state),
        .probe = qcow2_probe,
        .open = qcow2_open,
        .create = qcow2_create,
        .close = qcow2_close,
        .get_size = qcow2_get_size,
        .get_layout = qcow2_get_layout,
        .map = qcow2_map,
        .file_holes = qcow2_file_holes,
        .decode = qcow2_decode,
        .allocate = qcow2_allocate,
        .commit = qcow2_commit,
        .release = qcow2_release,
        .mark_zero = qcow2_mark_zero,
        .discard = qcow2_discard,
        .resize = qcow2_resize,
        .compact = qcow2_compact,
        .flush = qcow2_flush,
        .amend = qcow2_amend,
        .check = qcow2_check,
        .get_meta = qcow2_get_meta,
        .set_meta = qcow2_set_meta,
        .get_info = qcow2_get_info,
        .get_format_info = qcow2_get_format_info,
        .list_snapshots = qcow2_list_snapshots,
        .snapshot_create = qcow2_snapshot_create,
        .snapshot_apply = qcow2_snapshot_apply,
        .snapshot_delete = qcow2_snapshot_delete,
        .measure = qcow2_measure,
        .prealloc_create = PREALLOC_BIT(PREALLOC_METADATA) | PREALLOC_BIT(PREALLOC_FALLOC) |
                           PREALLOC_BIT(PREALLOC_FULL),
        .prealloc_flags = PREALLOC_FILE | PREALLOC_BACKEND_META,
        .note_write = qcow2_note_write,
        .list_bitmaps = qcow2_list_bitmaps,
        .read_bitmap = qcow2_bitmap_read,
        .change_bitmap = qcow2_bitmap_change,
        .encode_bound = qcow2_encode_bound,
        .encode = qcow2_encode,
        .stream_write_encoded = qcow2_write_encoded,
};
