/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QCOW version 1 — QEMU's first copy-on-write format.
 *
 * There is no written spec beyond qemu's block driver; the layout (our
 * reading, all fields big-endian) and the traps are in docs/formats/qcow.md.
 *
 *   0   magic "QFI\xfb"       u32      24  size (bytes)         u64
 *   4   version (1)           u32      32  cluster_bits         u8
 *   8   backing name offset   u64      33  l2_bits              u8
 *   16  backing name length   u32      36  crypt_method         u32
 *   20  mtime                 u32      40  L1 table offset      u64
 *
 *   L1 table   ceil(size / 2^(cluster_bits + l2_bits)) u64 entries: the
 *              L2 table's host offset, 0 = none
 *   L2 table   2^l2_bits u64 entries: the cluster's host offset, 0 = not
 *              allocated (the backing file shows through); bit 63 set:
 *              compressed — host byte offset in the low 63 - cluster_bits
 *              bits, the compressed byte count above (raw deflate, one
 *              cluster)
 *
 * Supported: read, write, create, diffs (backing file name in the header;
 * the format is probed, never raw), compressed clusters as MAP_ENCODED
 * units, written by convert -c (see "compressed writes" below). Refused: AES encryption (crypt_method 1), backing names that are
 * qemu pseudo-protocols (json:, nbd: ...). Create makes what qemu-img
 * makes (4 KiB clusters, 512-byte ones in a diff, L2 tables of 4 KiB and
 * 32 KiB) unless the library's block_size asks for a cluster size. A write into a compressed
 * cluster puts the whole cluster in a new place (the old bytes are left
 * behind: the format has no refcounts).
 *
 * Writes: data clusters and L2 tables are appended at the end of the file,
 * cluster-aligned (qemu does the same). A new L2 table is written whole
 * before the L1 entry points at it; L1 and L2 entries are set through the
 * table cache with TC_AFTER_DATA, so no entry reaches the disk before the
 * data it points at was flushed.
 *
 * Threads: none of its own; the core serializes every call on an image.
 * decode() only reads constant fields.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "backend.h"
#include "fmt/hostalloc.h"
#include "fmt/l2slots.h"
#include "fmt/tablecache.h"
#include "fmt/units.h"
#include "io/io.h"
#include "util/util.h"

#define QCOW_MAGIC             UINT32_C(0x514649fb)
#define QCOW_VERSION           1u
#define QCOW_HEADER            48u
#define QCOW_CLUSTER_BITS_MIN  9u
#define QCOW_CLUSTER_BITS_MAX  16u
#define QCOW_L2_BITS_MIN       6u
#define QCOW_L2_BITS_MAX       13u
#define QCOW_L1_MAX_BYTES      (UINT64_C(32) << 20)
#define QCOW_BACKING_NAME_MAX  1023u
#define QCOW_SIZE_MAX          (UINT64_C(1) << 62)
#define QCOW_COMPRESSED        (UINT64_C(1) << 63)

typedef struct qcow_state {
        vdisk_io *io;
        tc_budget *budget;
        bool writable;
        uint64_t file_size;
        uint64_t size;
        uint32_t cluster_bits, l2_bits, mtime;
        uint64_t cluster_size, l2_entries, l2_bytes, l2_coverage;
        uint64_t l1_offset, l1_entries, meta_end;
        uint64_t coffset_mask;
        tc_table *l1;
        l2slots l2;
        hostalloc alloc;
        bool alloc_ready;
        bool reserved;
        uint64_t res_l2;        /* host offset of the reserved new L2 table, 0 = none */
        char *backing_name;
        uint64_t backing_offset;
        uint32_t backing_room;
        /* compressed writing (convert -c): the cluster being packed, 0 =
         * none, and the bytes of it used */
        uint64_t comp_host, comp_used;
} qcow_state;

/* ---------------------------------------------------------------- header */

/* qemu reads "proto:..." backing names as protocols, "json:{...}" as block
 * options: neither is a file name. */
bool vdisk_backing_name_is_protocol(const char *name) {
        static const char *const protocols[] = {
                "json:", "nbd:", "nbd+", "http:", "https:", "ftp:", "ftps:", "ssh:", "iscsi:", "rbd:", "gluster:",
                "gluster+", "nfs:", "file:", "host_device:", "null-co:", "vvfat:", "fat:", "blkdebug:", "quorum:",
                NULL,
        };

        for (const char *const *p = protocols; *p; p++)
                if (strncasecmp(name, *p, strlen(*p)) == 0)
                        return true;
        return false;
}

static int qcow_probe(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                      uint64_t file_size, const char *name) {
        if (head_len >= 8 && get_be32(head) == QCOW_MAGIC && get_be32(head + 4) == QCOW_VERSION)
                return 100;
        return 0;
}

/* Header checks shared by peek and open; `h` holds QCOW_HEADER bytes. */
static int header_parse(qcow_state *s, const uint8_t *h, uint64_t file_size) {
        uint32_t crypt;
        uint64_t shift;

        if (file_size < 8 || get_be32(h) != QCOW_MAGIC || get_be32(h + 4) != QCOW_VERSION)
                return vdisk_error(-EMEDIUMTYPE, "qcow: no QFI magic with version 1");
        if (file_size < QCOW_HEADER)
                return vdisk_error(-EUCLEAN, "qcow: file too short for a header (%" PRIu64 " bytes)", file_size);
        s->backing_offset = get_be64(h + 8);
        s->backing_room = get_be32(h + 16);
        s->mtime = get_be32(h + 20);
        s->size = get_be64(h + 24);
        s->cluster_bits = h[32];
        s->l2_bits = h[33];
        crypt = get_be32(h + 36);
        s->l1_offset = get_be64(h + 40);

        if (s->cluster_bits < QCOW_CLUSTER_BITS_MIN || s->cluster_bits > QCOW_CLUSTER_BITS_MAX)
                return vdisk_error(-EUCLEAN, "qcow: cluster_bits %" PRIu32 " (%u to %u)", s->cluster_bits,
                                   QCOW_CLUSTER_BITS_MIN, QCOW_CLUSTER_BITS_MAX);
        if (s->l2_bits < QCOW_L2_BITS_MIN || s->l2_bits > QCOW_L2_BITS_MAX)
                return vdisk_error(-EUCLEAN, "qcow: l2_bits %" PRIu32 " (%u to %u)", s->l2_bits, QCOW_L2_BITS_MIN,
                                   QCOW_L2_BITS_MAX);
        if (crypt != 0)
                return vdisk_error(-EOPNOTSUPP, "qcow: AES-encrypted images (crypt_method %" PRIu32 ") are not "
                                   "supported", crypt);
        if (s->size == 0 || s->size > QCOW_SIZE_MAX)
                return vdisk_error(-EFBIG, "qcow: virtual size %" PRIu64 " (1 byte to 2^62)", s->size);
        /* qemu reads whole sectors: the size rounded up (a cluster size and an
         * L2 table's range are multiples of 512, so the L1 table is the same) */
        s->size = ALIGN_UP(s->size, UINT64_C(512));
        s->cluster_size = UINT64_C(1) << s->cluster_bits;
        s->l2_entries = UINT64_C(1) << s->l2_bits;
        s->l2_bytes = s->l2_entries * 8;
        shift = s->cluster_bits + s->l2_bits;
        s->l2_coverage = UINT64_C(1) << shift;
        s->l1_entries = DIV_ROUND_UP(s->size, s->l2_coverage);
        if (s->l1_entries * 8 > QCOW_L1_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow: an L1 table of %" PRIu64 " entries is too big", s->l1_entries);
        if (s->l1_offset < QCOW_HEADER || s->l1_offset % 8 != 0 ||
            !range_within(s->l1_offset, s->l1_entries * 8, file_size))
                return vdisk_error(-EUCLEAN, "qcow: L1 table at %" PRIu64 " (%" PRIu64 " entries) is not 8-byte "
                                   "aligned within the file (%" PRIu64 " bytes) after the header", s->l1_offset,
                                   s->l1_entries, file_size);
        s->meta_end = s->l1_offset + ALIGN_UP(s->l1_entries * 8, UINT64_C(512));
        s->coffset_mask = (UINT64_C(1) << (63 - s->cluster_bits)) - 1;
        if (s->backing_offset != 0 && s->backing_room != 0) {
                if (s->backing_room > QCOW_BACKING_NAME_MAX)
                        return vdisk_error(-EUCLEAN, "qcow: backing file name of %" PRIu32 " bytes (at most %u)",
                                           s->backing_room, QCOW_BACKING_NAME_MAX);
                if (s->backing_offset < QCOW_HEADER || !range_within(s->backing_offset, s->backing_room, file_size) ||
                    (s->backing_offset < s->l1_offset + s->l1_entries * 8 &&
                     s->l1_offset < s->backing_offset + s->backing_room))
                        return vdisk_error(-EUCLEAN, "qcow: backing file name at %" PRIu64 " (%" PRIu32 " bytes) is "
                                           "not between the header and the end of the file, or overlaps the L1 "
                                           "table", s->backing_offset, s->backing_room);
        } else
                s->backing_room = 0;
        return 0;
}

static int qcow_peek(const uint8_t *head, size_t head_len, uint64_t file_size, meta *ret) {
        qcow_state s = {};
        uint8_t h[QCOW_HEADER] = {};
        int r;

        memcpy(h, head, MIN(head_len, sizeof h));
        r = header_parse(&s, h, file_size);
        if (r < 0)
                return r;
        *ret = (meta) {};
        if (s.backing_room == 0)
                return 0;
        r = units_peek_backing_name("qcow", head, head_len, s.backing_offset, s.backing_room, &ret->parent_name);
        if (r < 0)
                return r;
        ret->mask = META_PARENT_NAME;
        return 0;
}

static int open_tables(qcow_state *s) {
        tc_table_params p = {
                .offset = s->l1_offset,
                .size = s->l1_entries * 8,
                .page_size = 4096,
                .entry = TC_BE64,
                .name = "qcow L1 table",
        };
        int r;

        r = tc_table_new(s->budget, s->io, &p, &s->l1);
        if (r < 0)
                return r;
        l2slots_init(&s->l2, s->budget, s->io, s->l2_bytes, TC_BE64, "qcow L2 table");
        return 0;
}

static int qcow_open(void *state, const open_ctx *c) {
        qcow_state *s = state;
        uint8_t h[QCOW_HEADER] = {};
        int r;

        s->io = c->io;
        s->budget = c->budget;
        s->writable = c->writable && !c->info_only;
        r = io_get_size(c->io, &s->file_size);
        if (r < 0)
                return r;
        r = io_pread_zerofill(c->io, h, sizeof h, 0);
        if (r < 0)
                return r;
        r = header_parse(s, h, s->file_size);
        if (r < 0)
                return r;
        if (s->backing_room) {
                r = units_read_backing_name("qcow", c->io, s->backing_offset, s->backing_room, &s->backing_name);
                if (r < 0)
                        return r;
        }
        return open_tables(s);
}

static void qcow_close(void *state) {
        qcow_state *s = state;

        l2slots_drop(&s->l2);
        s->l1 = tc_table_free(s->l1);
        free(s->backing_name);
        s->backing_name = NULL;
}

static uint64_t qcow_get_size(void *state) {
        qcow_state *s = state;

        return s->size;
}

static void qcow_get_layout(void *state, image_layout *ret) {
        qcow_state *s = state;

        *ret = (image_layout) {
                .cluster_size = s->cluster_size,
                .sector_size = 512,
                .flags = BACKEND_APPENDS,
        };
}

/* ---------------------------------------------------------------- tables */

static bool over_metadata(const qcow_state *s, uint64_t off) {
        return off < s->meta_end;
}

/* The L2 table the L1 entry `l1i` names (0 = none), checked. */
static int l2_offset(qcow_state *s, uint64_t l1i, uint64_t *ret) {
        uint64_t e;
        int r;

        r = tc_get(s->l1, l1i, &e);
        if (r < 0)
                return r;
        if (e != 0 && (e % 512 != 0 || over_metadata(s, e) || !range_within(e, s->l2_bytes, s->file_size)))
                return vdisk_error(-EUCLEAN, "qcow: L1 entry %" PRIu64 " points at %" PRIu64 ": not a 512-byte "
                                   "aligned L2 table after the L1 table within the file (%" PRIu64 " bytes)", l1i, e,
                                   s->file_size);
        *ret = e;
        return 0;
}

static int l2_entry(qcow_state *s, uint64_t cl, uint64_t *ret_l2, uint64_t *ret) {
        uint64_t l2o;
        tc_table *t;
        int r;

        r = l2_offset(s, cl / s->l2_entries, &l2o);
        if (r < 0)
                return r;
        *ret_l2 = l2o;
        if (l2o == 0) {
                *ret = 0;
                return 0;
        }
        r = l2slots_get(&s->l2, l2o, &t);
        if (r < 0)
                return r;
        return tc_get(t, cl % s->l2_entries, ret);
}

/* How the cluster holding `voff` reads, to the end of the cluster (or of the
 * L2 table's range when there is no table). */
static int unit_status(qcow_state *s, uint64_t voff, map_result *ret) {
        uint64_t cl = voff >> s->cluster_bits, cstart = cl << s->cluster_bits;
        uint64_t cend = MIN(cstart + s->cluster_size, s->size), l2o, e;
        int r;

        r = l2_entry(s, cl, &l2o, &e);
        if (r < 0)
                return r;
        if (l2o == 0) {
                uint64_t l1i = cl / s->l2_entries;

                *ret = (map_result) { .kind = MAP_UNALLOC, .length = MIN((l1i + 1) * s->l2_coverage, s->size) - voff };
                return 0;
        }
        if (e == 0) {
                *ret = (map_result) { .kind = MAP_UNALLOC, .length = cend - voff };
                return 0;
        }
        if (e & QCOW_COMPRESSED) {
                uint64_t coff = e & s->coffset_mask;
                uint64_t csize = (e >> (63 - s->cluster_bits)) & (s->cluster_size - 1);

                if (csize == 0 || over_metadata(s, coff) || coff >= s->file_size)
                        return vdisk_error(-EUCLEAN, "qcow: compressed cluster at %" PRIu64 " has %" PRIu64
                                           " bytes at %" PRIu64 ", not within the file (%" PRIu64 " bytes) after "
                                           "the L1 table", cstart, csize, coff, s->file_size);
                *ret = (map_result) {
                        .kind = MAP_ENCODED,
                        .host_offset = coff,
                        .length = cend - voff,
                        .unit_offset = cstart,
                        .unit_length = (uint32_t) (cend - cstart),
                        .encoded_length = (uint32_t) MIN(csize, s->file_size - coff),
                };
                return 0;
        }
        if (e % s->cluster_size != 0 || over_metadata(s, e) || e >= s->file_size)
                return vdisk_error(-EUCLEAN, "qcow: cluster at %" PRIu64 " maps to %" PRIu64 ": not a cluster "
                                   "boundary after the L1 table within the file (%" PRIu64 " bytes)", cstart, e,
                                   s->file_size);
        *ret = (map_result) { .kind = MAP_DATA, .host_offset = e + (voff - cstart), .length = cend - voff };
        /* the tail of a cluster past the end of the file reads zeros */
        if (ret->host_offset >= s->file_size)
                *ret = (map_result) { .kind = MAP_ZERO, .length = cend - voff };
        else if (ret->host_offset + ret->length > s->file_size)
                ret->length = s->file_size - ret->host_offset;
        return 0;
}

static int unit_status_cb(void *state, uint64_t voff, map_result *ret) {
        return unit_status(state, voff, ret);
}

static int qcow_map(void *state, uint64_t offset, uint64_t len, map_result *ret) {
        qcow_state *s = state;

        return units_map_join(s, unit_status_cb, offset, len, s->size, ret);
}

/* One cluster of raw deflate; the stream must give exactly the unit (a
 * whole cluster, or what the image holds of its last one) and no more. */
static int qcow_decode(const void *state, const map_result *m, const void *in, void *out) {
        const qcow_state *s = state;
        uint64_t want = s->cluster_size, total;
        bool end, bad;
        int r;

        /* the last cluster of an image of odd size holds a whole cluster */
        r = units_inflate(want, m, in, out, &total, &end, &bad);
        if (r < 0)
                return r;
        if (total > want || bad || total < m->unit_length)
                return vdisk_error(-EUCLEAN, "qcow: compressed cluster at %" PRIu64 " decodes to %s%" PRIu64
                                   " bytes, not a cluster of %" PRIu64, m->unit_offset,
                                   total > want ? "more than " : "", MIN(total, want), want);
        return 0;
}

/* ---------------------------------------------------------------- writes */

static void prepare_alloc(qcow_state *s) {
        if (s->alloc_ready)
                return;
        /* after the file's end and after the L1 table's last sector (the
         * cache writes the table back by whole sectors) */
        hostalloc_init(&s->alloc, ALIGN_UP(MAX(s->file_size, s->meta_end), s->cluster_size), s->file_size,
                       (uint32_t) s->cluster_size);
        s->alloc_ready = true;
}

static int qcow_allocate(void *state, uint64_t offset, uint64_t len, reservation *ret) {
        qcow_state *s = state;
        uint64_t cl = offset >> s->cluster_bits, cstart = cl << s->cluster_bits, l2o, host, e;
        int fresh, r;

        assert(offset < s->size);
        assert(!s->reserved);

        prepare_alloc(s);
        r = l2_entry(s, cl, &l2o, &e);
        if (r < 0)
                return r;
        s->res_l2 = 0;
        if (l2o == 0) {
                r = hostalloc_alloc(&s->alloc, ALIGN_UP(s->l2_bytes, s->cluster_size), s->coffset_mask, &s->res_l2,
                                    NULL);
                if (r < 0)
                        return vdisk_error(r, "qcow: the file would grow past its largest offset");
        }
        r = hostalloc_alloc(&s->alloc, s->cluster_size, s->coffset_mask, &host, &fresh);
        if (r < 0) {
                if (s->res_l2)
                        hostalloc_rewind(&s->alloc, s->res_l2);
                s->res_l2 = 0;
                return vdisk_error(r, "qcow: the file would grow past its largest offset");
        }
        s->reserved = true;
        *ret = (reservation) {
                .unit_offset = cstart,
                .length = MIN(s->cluster_size, s->size - cstart),
                .host_offset = host,
                .fresh = fresh,
        };
        return 0;
}

static int grow_file(qcow_state *s, uint64_t end) {
        uint64_t size;
        int r;

        if (s->file_size >= end)
                return 0;   /* files only grow while written */
        /* Mostly the new cluster's data write has extended the file already */
        r = io_covers(s->io, end, &size);
        if (r < 0)
                return r;
        if (r == 0) {
                r = io_truncate(s->io, end);
                if (r < 0)
                        return r;
        }
        s->file_size = MAX(s->file_size, MAX(size, end));
        return 0;
}

static int qcow_commit(void *state, const reservation *res) {
        qcow_state *s = state;
        uint64_t cl = res->unit_offset >> s->cluster_bits;
        tc_table *t;
        int r;

        assert(s->reserved);
        /* the core writes only the non-zero pages of fresh space */
        r = grow_file(s, res->host_offset + s->cluster_size);
        if (r < 0)
                return r;
        if (s->res_l2) {
                _cleanup_free_ uint8_t *buf = calloc(1, s->l2_bytes);

                if (!buf)
                        return -ENOMEM;
                put_be64(buf + 8 * (cl % s->l2_entries), res->host_offset);
                r = io_pwrite(s->io, buf, s->l2_bytes, s->res_l2);
                if (r < 0)
                        return r;
                r = tc_set(s->l1, cl / s->l2_entries, s->res_l2, TC_AFTER_DATA);
        } else {
                uint64_t l2o;

                r = l2_offset(s, cl / s->l2_entries, &l2o);
                if (r >= 0)
                        r = l2slots_get(&s->l2, l2o, &t);
                if (r >= 0)
                        r = tc_set(t, cl % s->l2_entries, res->host_offset, TC_AFTER_DATA);
        }
        if (r < 0)
                return r;
        s->reserved = false;
        s->res_l2 = 0;
        return 0;
}

static void qcow_release(void *state, const reservation *res) {
        qcow_state *s = state;

        /* the next reservation takes the space again (no longer fresh) */
        hostalloc_rewind(&s->alloc, s->res_l2 ? s->res_l2 : res->host_offset);
        s->reserved = false;
        s->res_l2 = 0;
}

static int qcow_flush(void *state) {
        qcow_state *s = state;
        int r;

        r = l2slots_flush(&s->l2);
        if (r >= 0)
                r = tc_table_flush(s->l1);
        if (r >= 0)
                r = io_flush(s->io);
        return r;
}

/* ---------------------------------------------------------------- compressed writes (convert -c)
 *
 * Copy's encode pool runs encode() on its workers and hands the units in
 * order to qcow_write_encoded(). A cluster is raw deflate (4 KiB window, as
 * qemu inflates it), the image's last one zero-padded to a whole cluster;
 * one that does not shrink is handed on plain (enc_len == len) and written
 * as an ordinary cluster. Compressed clusters are packed back to back,
 * running on into the next cluster when that is the next one allocated
 * (the format has no refcounts to keep). The L2 entry is set with
 * TC_AFTER_DATA, after the bytes were written. */

static size_t qcow_encode_bound(const void *state, size_t len) {
        const qcow_state *s = state;

        return (size_t) MAX((uint64_t) len, s->cluster_size);
}

static int qcow_encode(const void *state, const void *in, size_t len, void *out, size_t *ret_len) {
        const qcow_state *s = state;
        _cleanup_free_ uint8_t *padded = NULL;
        const void *src = in;
        size_t n = 0;
        int r;

        if (len == 0 || len > s->cluster_size)
                return vdisk_error(-EINVAL, "qcow: a compressed unit is one cluster");
        if (len >= 2 && !units_incompressible(in, len)) {
                if (len < s->cluster_size) {
                        padded = calloc(1, s->cluster_size);
                        if (!padded)
                                return vdisk_error(-ENOMEM, "out of memory");
                        memcpy(padded, in, len);
                        src = padded;
                }
                r = units_compress(UNITS_DEFLATE12, src, s->cluster_size, out, len - 1, &n);
                if (r < 0)
                        return vdisk_error_prefix(r, "qcow");
                if (r == 0) {
                        *ret_len = n;
                        return 0;
                }
        }
        memcpy(out, in, len);
        *ret_len = len;
        return 0;
}

static int qcow_write_encoded(void *state, uint64_t offset, size_t len, const void *enc, size_t enc_len) {
        qcow_state *s = state;
        uint64_t cs = s->cluster_size, cl = offset >> s->cluster_bits, l2o, e, pos, new_host = 0, new_l2 = 0;
        uint64_t pack_host, pack_used;
        reservation res;
        int r;

        assert(s->writable);
        if (offset % cs || len == 0 || len > cs || (len < cs && offset + len != s->size) || enc_len > len)
                return vdisk_error(-EOPNOTSUPP, "qcow: compressed writes take whole clusters");
        prepare_alloc(s);
        if (enc_len == len) {
                r = qcow_allocate(s, offset, len, &res);
                if (r < 0)
                        return r;
                r = io_pwrite(s->io, enc, len, res.host_offset);
                if (r < 0) {
                        qcow_release(s, &res);
                        return r;
                }
                return qcow_commit(s, &res);
        }
        r = l2_entry(s, cl, &l2o, &e);
        if (r < 0)
                return r;
        if (e != 0 && !(e & QCOW_COMPRESSED))
                return vdisk_error(-EOPNOTSUPP, "qcow: compressed writes go to clusters not written yet (the "
                                   "cluster at %" PRIu64 " is allocated)", offset);
        if (s->comp_host != 0 && (s->comp_used + enc_len <= cs || hostalloc_next(&s->alloc) == s->comp_host + cs)) {
                pos = s->comp_host + s->comp_used;
                pack_host = s->comp_host;
                pack_used = s->comp_used + enc_len;
                if (pack_used > cs) {
                        r = hostalloc_alloc(&s->alloc, cs, s->coffset_mask, &new_host, NULL);
                        if (r < 0)
                                return vdisk_error(r, "qcow: the file would grow past its largest offset");
                        pack_host = new_host;
                        pack_used -= cs;
                }
        } else {
                r = hostalloc_alloc(&s->alloc, cs, s->coffset_mask, &new_host, NULL);
                if (r < 0)
                        return vdisk_error(r, "qcow: the file would grow past its largest offset");
                pos = pack_host = new_host;
                pack_used = enc_len;
        }
        r = io_pwrite(s->io, enc, enc_len, pos);
        if (r < 0)
                goto undo;
        r = grow_file(s, pos + enc_len);
        if (r < 0)
                goto undo;
        e = QCOW_COMPRESSED | ((uint64_t) enc_len << (63 - s->cluster_bits)) | pos;
        if (l2o == 0) {
                _cleanup_free_ uint8_t *buf = calloc(1, s->l2_bytes);

                if (!buf) {
                        r = -ENOMEM;
                        goto undo;
                }
                r = hostalloc_alloc(&s->alloc, ALIGN_UP(s->l2_bytes, cs), s->coffset_mask, &new_l2, NULL);
                if (r < 0) {
                        r = vdisk_error(r, "qcow: the file would grow past its largest offset");
                        goto undo;
                }
                put_be64(buf + 8 * (cl % s->l2_entries), e);
                r = io_pwrite(s->io, buf, s->l2_bytes, new_l2);
                if (r >= 0)
                        r = grow_file(s, new_l2 + s->l2_bytes);
                if (r >= 0)
                        r = tc_set(s->l1, cl / s->l2_entries, new_l2, TC_AFTER_DATA);
        } else {
                tc_table *t;

                r = l2slots_get(&s->l2, l2o, &t);
                if (r >= 0)
                        r = tc_set(t, cl % s->l2_entries, e, TC_AFTER_DATA);
        }
        if (r < 0) {
                s->comp_host = 0;   /* space may be lost, nothing points at it */
                return r;
        }
        s->comp_host = pack_host;
        s->comp_used = pack_used;
        return 0;
undo:
        if (new_host != 0 && hostalloc_next(&s->alloc) == new_host + cs)
                hostalloc_rewind(&s->alloc, new_host);
        return r;
}

/* ---------------------------------------------------------------- create */

static int qcow_create(void *state, const open_ctx *c, const create_params *p) {
        qcow_state *s = state;
        uint8_t h[QCOW_HEADER] = {};
        size_t name_len = 0;
        uint64_t l1_off, l1_bytes;
        int r;

        for (const char *const *o = p->options; o && o[0]; o += 2)
                if ((streq(o[0], "encryption") && streq(o[1], "on")) || streq(o[0], "encrypt.format"))
                        return vdisk_error(-EOPNOTSUPP, "qcow: encrypted images are not supported");
        if (p->image_flags & ~VDISK_IMAGE_FLAGS_DIFF)
                return vdisk_error(-EOPNOTSUPP, "qcow: image flags %#" PRIx32 " are not supported", p->image_flags);
        if (p->size > QCOW_SIZE_MAX)
                return vdisk_error(-EFBIG, "qcow: virtual size %" PRIu64 " is too big", p->size);
        if (p->parent_name) {
                name_len = strlen(p->parent_name);
                if (name_len == 0 || name_len > QCOW_BACKING_NAME_MAX)
                        return vdisk_error(-ENAMETOOLONG, "qcow: backing file name of %zu bytes (1 to %u)", name_len,
                                           QCOW_BACKING_NAME_MAX);
                r = units_check_backing_name("qcow", p->parent_name);
                if (r < 0)
                        return r;
        }
        /* qemu's choice: 512-byte clusters in a diff (a small write copies
         * little of the parent), 4 KiB clusters otherwise; L2 tables of
         * 32 KiB and 4 KiB */
        h[32] = p->parent_name ? 9 : 12;
        if (p->block_size) {
                /* a cluster size asked for (the library's block_size) */
                if (!IS_POWER_OF_2(p->block_size) || p->block_size < (1u << QCOW_CLUSTER_BITS_MIN) ||
                    p->block_size > (1u << QCOW_CLUSTER_BITS_MAX))
                        return vdisk_error(-EINVAL, "qcow: cluster size %" PRIu32 " (a power of two, 512 bytes to "
                                           "64 KiB)", p->block_size);
                h[32] = (uint8_t) __builtin_ctz(p->block_size);
        }
        /* L2 tables of one cluster, at least 4 KiB */
        h[33] = (uint8_t) (h[32] == 9 ? 12 : h[32] - 3);
        put_be32(h, QCOW_MAGIC);
        put_be32(h + 4, QCOW_VERSION);
        if (name_len) {
                put_be64(h + 8, QCOW_HEADER);
                put_be32(h + 16, (uint32_t) name_len);
        }
        /* qemu-img rounds sizes up to a sector */
        put_be64(h + 24, ALIGN_UP(p->size, UINT64_C(512)));
        l1_off = ALIGN_UP(QCOW_HEADER + name_len, (size_t) 8);
        put_be64(h + 40, l1_off);
        l1_bytes = DIV_ROUND_UP(p->size, UINT64_C(1) << (h[32] + h[33])) * 8;
        if (l1_bytes > QCOW_L1_MAX_BYTES)
                return vdisk_error(-EFBIG, "qcow: virtual size %" PRIu64 " needs an L1 table above %" PRIu64
                                   " bytes", p->size, QCOW_L1_MAX_BYTES);

        r = io_pwrite(c->io, h, sizeof h, 0);
        if (r >= 0 && name_len)
                r = io_pwrite(c->io, p->parent_name, name_len, QCOW_HEADER);
        if (r >= 0)
                r = io_truncate(c->io, l1_off + ALIGN_UP(l1_bytes, UINT64_C(512)));
        if (r < 0)
                return r;

        s->io = c->io;
        s->budget = c->budget;
        s->writable = true;
        r = io_get_size(c->io, &s->file_size);
        if (r < 0)
                return r;
        r = header_parse(s, h, s->file_size);
        if (r < 0)
                return r;
        if (name_len) {
                s->backing_name = strdup(p->parent_name);
                if (!s->backing_name)
                        return -ENOMEM;
        }
        return open_tables(s);
}

/* ---------------------------------------------------------------- metadata */

static int qcow_get_meta(void *state, meta *m) {
        qcow_state *s = state;

        *m = (meta) { .mask = META_FLAGS | META_VERSION, .version = QCOW_VERSION };
        if (s->backing_name) {
                m->mask |= META_PARENT_NAME;
                m->parent_name = s->backing_name;
                m->flags |= VDISK_IMAGE_FLAGS_DIFF;
        }
        return 0;
}

/* A new parent name: in place where the old name's room (up to the L1
 * table) holds it. */
static int qcow_set_meta(void *state, const meta *m, uint32_t mask) {
        static const meta none = {};
        qcow_state *s = state;
        uint8_t f[12];
        size_t len;
        char *copy;
        int r;

        /* The parent is linked by name alone: its UUIDs have no field here. */
        if (mask & ~(META_PARENT_NAME | META_PARENT_UUID | META_PARENT_MOD_UUID))
                return vdisk_error(-EOPNOTSUPP, "qcow: the format has no such field (mask %#" PRIx32 ")", mask);
        if (!(mask & META_PARENT_NAME)) {
                /* made a base (a merge into it): a null parent UUID drops the link */
                if (!(mask & META_PARENT_UUID) || !vdisk_uuid_is_null(m->parent_uuid))
                        return 0;
                m = &none;
        }
        if (!m->parent_name || !m->parent_name[0]) {
                len = 0;
                copy = NULL;
        } else {
                len = strlen(m->parent_name);
                r = units_check_backing_name("qcow", m->parent_name);
                if (r < 0)
                        return r;
                if (len > QCOW_BACKING_NAME_MAX || QCOW_HEADER + len > s->l1_offset)
                        return vdisk_error(-ENOSPC, "qcow: no room for a backing file name of %zu bytes before "
                                           "the L1 table", len);
                copy = strdup(m->parent_name);
                if (!copy)
                        return -ENOMEM;
                r = io_pwrite(s->io, copy, len, QCOW_HEADER);
                if (r < 0) {
                        free(copy);
                        return r;
                }
        }
        put_be64(f, len ? QCOW_HEADER : 0);
        put_be32(f + 8, (uint32_t) len);
        r = io_pwrite(s->io, f, sizeof f, 8);
        if (r < 0) {
                free(copy);
                return r;
        }
        free(s->backing_name);
        s->backing_name = copy;
        s->backing_offset = len ? QCOW_HEADER : 0;
        s->backing_room = (uint32_t) len;
        return 0;
}

static int qcow_get_info(void *state, vdisk_image_info *ret) {
        qcow_state *s = state;

        ret->cluster_size = (uint32_t) s->cluster_size;
        ret->image_flags = s->backing_name ? VDISK_IMAGE_FLAGS_DIFF : 0;
        return 0;
}

static const char *const qcow_extensions[] = { "qcow", NULL };
static const vdisk_option_desc qcow_create_options[] = {
        { "backing_file", VDISK_OPTION_STRING, "File name of a base image" },
        { "backing_fmt",  VDISK_OPTION_STRING, "Format of the backing image" },
        { "encryption",   VDISK_OPTION_BOOL, "Encrypt the image (not supported: refused when on)" },
        { "size",         VDISK_OPTION_SIZE, "Virtual disk size" },
        {}
};

const vdisk_backend backend_qcow = {
        .info = {
                .name = "QCOW",
                .qemu_name = "qcow",
                .caps = VDISK_CAP_FILE | VDISK_CAP_DIFF | VDISK_CAP_CREATE_DYNAMIC | VDISK_CAP_COMPRESS,
                .media = VDISK_MEDIA_HDD,
                .extensions = qcow_extensions,
                .create_options = qcow_create_options,
        },
        .state_size = sizeof(qcow_state),
        .probe = qcow_probe,
        .peek = qcow_peek,
        .open = qcow_open,
        .create = qcow_create,
        .close = qcow_close,
        .get_size = qcow_get_size,
        .get_layout = qcow_get_layout,
        .map = qcow_map,
        .decode = qcow_decode,
        .allocate = qcow_allocate,
        .commit = qcow_commit,
        .release = qcow_release,
        .encode_bound = qcow_encode_bound,
        .encode = qcow_encode,
        .stream_write_encoded = qcow_write_encoded,
        .flush = qcow_flush,
        .get_meta = qcow_get_meta,
        .set_meta = qcow_set_meta,
        .get_info = qcow_get_info,
        /* falloc/full: qemu's file layer preallocates the empty file (no effect) */
        .prealloc_create = PREALLOC_BIT(PREALLOC_FALLOC) | PREALLOC_BIT(PREALLOC_FULL),
};
