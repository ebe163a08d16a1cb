/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * QED — the QEMU Enhanced Disk format.
 *
 * Spec: qemu's docs/interop/qed_spec.txt; our reading of it, the limits and
 * the traps in docs/formats/qed.md. All fields are little-endian.
 *
 *   0   magic "QED\0"        u32     24  compat features       u64
 *   4   cluster size         u32     32  autoclear features    u64
 *   8   table size (clusters) u32    40  L1 table offset       u64
 *   12  header size (clusters) u32   48  image size            u64
 *   16  features             u64     56  backing name offset   u32
 *                                    60  backing name length   u32
 *
 *   features  1 backing file, 2 NEED_CHECK (tables may be inconsistent:
 *             check before writing), 4 backing format no probe (the backing
 *             file is raw)
 *   L1, L2    table_size clusters each of u64 byte offsets: L1 → L2 table,
 *             L2 → data cluster; 0 = not allocated, 1 (L2 only) = reads as
 *             zeros
 *
 * Supported: read, write, create (cluster_size, table_size, backing file,
 * raw backing without probing), diffs, zero clusters, grow, check and
 * repair (invalid or overlapping entries dropped, leaked clusters at the
 * end of the file cut off), NEED_CHECK: set on disk before the first
 * allocation after a flush, cleared when a flush leaves the tables
 * consistent; an image found with it set is checked and repaired at a
 * writable open (read-only opens just read it).
 *
 * Writes: data clusters and L2 tables are appended at the end of the file,
 * cluster-aligned. A new L2 table is written before the L1 entry points at
 * it; entries are set through the table cache with TC_AFTER_DATA.
 *
 * Threads: none of its own; the core serializes every call on an image.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "fmt/hostalloc.h"
#include "fmt/l2slots.h"
#include "fmt/tablecache.h"
#include "fmt/units.h"
#include "io/io.h"
#include "util/util.h"

#define QED_MAGIC               UINT32_C(0x00444551)
#define QED_HEADER              64u
#define QED_CLUSTER_MIN         (UINT32_C(4) << 10)
#define QED_CLUSTER_MAX         (UINT32_C(64) << 20)
#define QED_CLUSTER_DEFAULT     (UINT32_C(64) << 10)
#define QED_TABLE_MAX           16u
#define QED_TABLE_DEFAULT       4u
#define QED_HEADER_MAX_BYTES    (UINT64_C(64) << 20)
#define QED_BACKING_NAME_MAX    4095u
#define QED_ZERO                UINT64_C(1)

enum {
        QED_F_BACKING_FILE   = 1u << 0,
        QED_F_NEED_CHECK     = 1u << 1,
        QED_F_NO_PROBE       = 1u << 2,
        QED_F_KNOWN          = 0x7,
};

typedef struct qed_state {
        vdisk_io *io;
        tc_budget *budget;
        bool writable;
        uint64_t file_size;
        uint32_t cluster_size, table_size, header_size, cluster_bits;
        uint64_t features, compat, autoclear;
        uint64_t l1_offset, size;
        uint32_t backing_offset, backing_len;
        uint64_t table_bytes, entries, coverage, meta_end;
        tc_table *l1;
        l2slots l2;
        hostalloc alloc;
        bool alloc_ready, reserved;
        uint64_t res_l2;
        bool res_linked;        /* commit set an entry: release must not hand the space out again */
        bool need_check_on_disk;
        char *backing_name;
} qed_state;

/* ---------------------------------------------------------------- header */

static int qed_probe(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                     uint64_t file_size, const char *name) {
        return head_len >= 4 && get_le32(head) == QED_MAGIC ? 100 : 0;
}

static uint64_t max_size(uint64_t cluster, uint64_t table) {
        uint64_t entries = table * cluster / 8;

        /* at most 2^21 * 2^21 * 2^26: saturate */
        if (entries * entries > UINT64_MAX / cluster)
                return UINT64_MAX;
        return entries * entries * cluster;
}

static int header_parse(qed_state *s, const uint8_t *h, uint64_t file_size) {
        uint64_t hdr_bytes;

        if (file_size < 4 || get_le32(h) != QED_MAGIC)
                return vdisk_error(-EMEDIUMTYPE, "qed: no QED magic");
        if (file_size < QED_HEADER)
                return vdisk_error(-EUCLEAN, "qed: file too short for a header (%" PRIu64 " bytes)", file_size);
        s->cluster_size = get_le32(h + 4);
        s->table_size = get_le32(h + 8);
        s->header_size = get_le32(h + 12);
        s->features = get_le64(h + 16);
        s->compat = get_le64(h + 24);
        s->autoclear = get_le64(h + 32);
        s->l1_offset = get_le64(h + 40);
        s->size = get_le64(h + 48);
        s->backing_offset = get_le32(h + 56);
        s->backing_len = get_le32(h + 60);

        if (s->cluster_size < QED_CLUSTER_MIN || s->cluster_size > QED_CLUSTER_MAX || !IS_POWER_OF_2(s->cluster_size))
                return vdisk_error(-EUCLEAN, "qed: cluster size %" PRIu32 " (a power of two, 4 KiB to 64 MiB)",
                                   s->cluster_size);
        if (s->table_size < 1 || s->table_size > QED_TABLE_MAX || !IS_POWER_OF_2(s->table_size))
                return vdisk_error(-EUCLEAN, "qed: table size %" PRIu32 " clusters (a power of two, 1 to 16)",
                                   s->table_size);
        hdr_bytes = (uint64_t) s->header_size * s->cluster_size;
        if (s->header_size == 0 || hdr_bytes > QED_HEADER_MAX_BYTES)
                return vdisk_error(-EUCLEAN, "qed: header of %" PRIu32 " clusters (1 to 64 MiB)", s->header_size);
        if (s->features & ~(uint64_t) QED_F_KNOWN)
                return vdisk_error(-EOPNOTSUPP, "qed: unsupported feature bits %#" PRIx64,
                                   s->features & ~(uint64_t) QED_F_KNOWN);
        s->cluster_bits = (uint32_t) __builtin_ctz(s->cluster_size);
        s->table_bytes = (uint64_t) s->table_size * s->cluster_size;
        s->entries = s->table_bytes / 8;
        s->coverage = s->entries * s->cluster_size;
        if (s->size % 512 != 0 || s->size == 0 || s->size > max_size(s->cluster_size, s->table_size))
                return vdisk_error(-EUCLEAN, "qed: image size %" PRIu64 " (a multiple of 512 up to %" PRIu64 ")",
                                   s->size, max_size(s->cluster_size, s->table_size));
        if (s->l1_offset % s->cluster_size != 0 || s->l1_offset < hdr_bytes ||
            !range_within(s->l1_offset, s->table_bytes, file_size))
                return vdisk_error(-EUCLEAN, "qed: L1 table at %" PRIu64 " is not cluster-aligned after the header "
                                   "within the file (%" PRIu64 " bytes)", s->l1_offset, file_size);
        s->meta_end = MAX(hdr_bytes, s->l1_offset + s->table_bytes);
        if (s->features & QED_F_BACKING_FILE) {
                if (s->backing_len == 0 || s->backing_len > QED_BACKING_NAME_MAX ||
                    s->backing_offset < QED_HEADER || !range_within(s->backing_offset, s->backing_len, hdr_bytes) ||
                    !range_within(s->backing_offset, s->backing_len, file_size))
                        return vdisk_error(-EUCLEAN, "qed: backing file name at %" PRIu32 " (%" PRIu32 " bytes) is "
                                           "not within the header", s->backing_offset, s->backing_len);
        } else
                s->backing_len = 0;
        return 0;
}

static int qed_peek(const uint8_t *head, size_t head_len, uint64_t file_size, meta *ret) {
        qed_state s = {};
        uint8_t h[QED_HEADER] = {};
        int r;

        memcpy(h, head, MIN(head_len, sizeof h));
        r = header_parse(&s, h, file_size);
        if (r < 0)
                return r;
        *ret = (meta) {};
        if (s.backing_len == 0)
                return 0;
        r = units_peek_backing_name("qed", head, head_len, s.backing_offset, s.backing_len, &ret->parent_name);
        if (r < 0)
                return r;
        ret->mask = META_PARENT_NAME;
        ret->parent_format = s.features & QED_F_NO_PROBE ? "raw" : NULL;
        return 0;
}

static int write_header(qed_state *s) {
        uint8_t h[QED_HEADER] = {};

        put_le32(h, QED_MAGIC);
        put_le32(h + 4, s->cluster_size);
        put_le32(h + 8, s->table_size);
        put_le32(h + 12, s->header_size);
        put_le64(h + 16, s->features);
        put_le64(h + 24, s->compat);
        put_le64(h + 32, s->autoclear);
        put_le64(h + 40, s->l1_offset);
        put_le64(h + 48, s->size);
        put_le32(h + 56, s->backing_len ? s->backing_offset : 0);
        put_le32(h + 60, s->backing_len);
        return io_pwrite(s->io, h, sizeof h, 0);
}

static int set_need_check(qed_state *s, bool on) {
        int r;

        if (on == s->need_check_on_disk)
                return 0;
        if (on)
                s->features |= QED_F_NEED_CHECK;
        else
                s->features &= ~(uint64_t) QED_F_NEED_CHECK;
        r = write_header(s);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        s->need_check_on_disk = on;
        return 0;
}

static int open_tables(qed_state *s) {
        tc_table_params p = {
                .offset = s->l1_offset,
                .size = s->table_bytes,
                .page_size = (uint32_t) MIN(s->table_bytes, UINT64_C(64) << 10),
                .entry = TC_LE64,
                .name = "qed L1 table",
        };
        int r;

        r = tc_table_new(s->budget, s->io, &p, &s->l1);
        if (r < 0)
                return r;
        l2slots_init(&s->l2, s->budget, s->io, s->table_bytes, TC_LE64, "qed L2 table");
        return 0;
}

static int qed_check(void *state, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p);

static int qed_open(void *state, const open_ctx *c) {
        qed_state *s = state;
        uint8_t h[QED_HEADER] = {};
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
        s->need_check_on_disk = s->features & QED_F_NEED_CHECK;
        if (s->backing_len) {
                r = units_read_backing_name("qed", c->io, s->backing_offset, s->backing_len, &s->backing_name);
                if (r < 0)
                        return r;
        }
        r = open_tables(s);
        if (r < 0)
                return r;
        if (s->writable && (s->need_check_on_disk || s->autoclear)) {
                vdisk_check_report rep = { .size = sizeof rep };

                /* unknown autoclear bits: their data is stale once we write */
                s->autoclear = 0;
                if (s->need_check_on_disk) {
                        r = qed_check(s, VDISK_CHECK_REPAIR_ALL, &rep, NULL);
                        vdisk_check_report_clear(&rep);
                        if (r < 0)
                                return r;
                }
                r = write_header(s);
                if (r >= 0)
                        r = io_flush(s->io);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void qed_close(void *state) {
        qed_state *s = state;

        l2slots_drop(&s->l2);
        s->l1 = tc_table_free(s->l1);
        free(s->backing_name);
        s->backing_name = NULL;
}

static uint64_t qed_get_size(void *state) {
        qed_state *s = state;

        return s->size;
}

static void qed_get_layout(void *state, image_layout *ret) {
        qed_state *s = state;

        *ret = (image_layout) {
                .cluster_size = s->cluster_size,
                .zero_unit = s->cluster_size,
                .sector_size = 512,
                .flags = BACKEND_APPENDS,
        };
}

/* ---------------------------------------------------------------- tables */

static bool table_ok(const qed_state *s, uint64_t off) {
        return off % s->cluster_size == 0 && off >= s->meta_end && range_within(off, s->table_bytes, s->file_size);
}

static bool cluster_ok(const qed_state *s, uint64_t off) {
        return off % s->cluster_size == 0 && off >= s->meta_end && off < s->file_size;
}

static int l2_offset(qed_state *s, uint64_t l1i, uint64_t *ret) {
        uint64_t e;
        int r;

        r = tc_get(s->l1, l1i, &e);
        if (r < 0)
                return r;
        if (e != 0 && !table_ok(s, e))
                return vdisk_error(-EUCLEAN, "qed: L1 entry %" PRIu64 " points at %" PRIu64 ": not a cluster-aligned "
                                   "L2 table after the L1 table within the file (%" PRIu64 " bytes)", l1i, e,
                                   s->file_size);
        *ret = e;
        return 0;
}

static int l2_entry(qed_state *s, uint64_t cl, uint64_t *ret_l2, uint64_t *ret) {
        uint64_t l2o;
        tc_table *t;
        int r;

        r = l2_offset(s, cl / s->entries, &l2o);
        if (r < 0)
                return r;
        *ret_l2 = l2o;
        *ret = 0;
        if (l2o == 0)
                return 0;
        r = l2slots_get(&s->l2, l2o, &t);
        if (r < 0)
                return r;
        return tc_get(t, cl % s->entries, ret);
}

static int unit_status(qed_state *s, uint64_t voff, map_result *ret) {
        uint64_t cl = voff >> s->cluster_bits, cstart = cl << s->cluster_bits;
        uint64_t cend = MIN(cstart + s->cluster_size, s->size), l2o, e;
        int r;

        r = l2_entry(s, cl, &l2o, &e);
        if (r < 0)
                return r;
        if (l2o == 0) {
                *ret = (map_result) {
                        .kind = MAP_UNALLOC,
                        .length = MIN((cl / s->entries + 1) * s->coverage, s->size) - voff,
                };
                return 0;
        }
        if (e == 0 || e == QED_ZERO) {
                *ret = (map_result) { .kind = e ? MAP_ZERO : MAP_UNALLOC, .length = cend - voff };
                return 0;
        }
        if (!cluster_ok(s, e))
                return vdisk_error(-EUCLEAN, "qed: cluster at %" PRIu64 " maps to %" PRIu64 ": not a cluster "
                                   "boundary after the L1 table within the file (%" PRIu64 " bytes)", cstart, e,
                                   s->file_size);
        *ret = (map_result) { .kind = MAP_DATA, .host_offset = e + (voff - cstart), .length = cend - voff };
        if (ret->host_offset >= s->file_size)
                *ret = (map_result) { .kind = MAP_ZERO, .length = cend - voff };
        else if (ret->host_offset + ret->length > s->file_size)
                ret->length = s->file_size - ret->host_offset;
        return 0;
}

static int unit_status_cb(void *state, uint64_t voff, map_result *ret) {
        return unit_status(state, voff, ret);
}

static int qed_map(void *state, uint64_t offset, uint64_t len, map_result *ret) {
        qed_state *s = state;

        return units_map_join(s, unit_status_cb, offset, len, s->size, ret);
}

/* ---------------------------------------------------------------- writes */

static void prepare_alloc(qed_state *s) {
        if (s->alloc_ready)
                return;
        hostalloc_init(&s->alloc, ALIGN_UP(MAX(s->file_size, s->meta_end), (uint64_t) s->cluster_size),
                       s->file_size, s->cluster_size);
        s->alloc_ready = true;
}

static int grow_file(qed_state *s, uint64_t end) {
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

/* Writes a new L2 table at `off` (fresh space reads zeros already) holding
 * `n` entries from index `first`: v, v + step, v + 2 * step ... Nothing
 * points at it yet. */
static int write_new_l2(qed_state *s, uint64_t off, uint64_t first, uint64_t n, uint64_t v, uint64_t step) {
        uint8_t buf[64 * 1024];
        int r;

        if (!hostalloc_is_fresh(&s->alloc, off) || off < s->file_size) {
                memset(buf, 0, sizeof buf);
                for (uint64_t done = 0; done < s->table_bytes; done += sizeof buf) {
                        r = io_pwrite(s->io, buf, (size_t) MIN((uint64_t) sizeof buf, s->table_bytes - done),
                                      off + done);
                        if (r < 0)
                                return r;
                }
        }
        r = grow_file(s, off + s->table_bytes);
        if (r < 0)
                return r;
        for (uint64_t i = first; i < first + n;) {
                size_t k = (size_t) MIN(first + n - i, (uint64_t) sizeof buf / 8);

                for (size_t j = 0; j < k; j++)
                        put_le64(buf + 8 * j, v + (i - first + j) * step);
                r = io_pwrite(s->io, buf, k * 8, off + 8 * i);
                if (r < 0)
                        return r;
                i += k;
        }
        return 0;
}

/* A unit is a cluster, or a run of them: the clusters after it that hold
 * nothing (entry 0), as far as the write goes, within its L2 table, in
 * contiguous new space: written, then committed, as one transaction. */
static int qed_allocate(void *state, uint64_t offset, uint64_t len, reservation *ret) {
        qed_state *s = state;
        uint64_t cl = offset >> s->cluster_bits, cstart = cl << s->cluster_bits, l2o, e, host, k = 1, max;
        int fresh, r;

        assert(offset < s->size);
        assert(!s->reserved);

        r = set_need_check(s, true);
        if (r < 0)
                return r;
        prepare_alloc(s);
        r = l2_entry(s, cl, &l2o, &e);
        if (r < 0)
                return r;
        max = MIN(DIV_ROUND_UP(MIN(offset + len, s->size) - cstart, s->cluster_size), s->entries - cl % s->entries);
        if (l2o == 0)
                k = max;
        for (; k < max; k++) {
                uint64_t l2o2, e2;

                r = l2_entry(s, cl + k, &l2o2, &e2);
                if (r < 0)
                        return r;
                if (e2 != 0)
                        break;
        }
        s->res_l2 = 0;
        if (l2o == 0) {
                r = hostalloc_alloc(&s->alloc, s->table_bytes, UINT64_MAX / 2, &s->res_l2, NULL);
                if (r < 0)
                        return r;
        }
        r = hostalloc_alloc(&s->alloc, k * s->cluster_size, UINT64_MAX / 2, &host, &fresh);
        if (r < 0) {
                if (s->res_l2)
                        hostalloc_rewind(&s->alloc, s->res_l2);
                s->res_l2 = 0;
                return r;
        }
        s->reserved = true;
        *ret = (reservation) {
                .unit_offset = cstart,
                .length = MIN(k * s->cluster_size, s->size - cstart),
                .host_offset = host,
                .fresh = fresh,
        };
        return 0;
}

static int qed_commit(void *state, const reservation *res) {
        qed_state *s = state;
        uint64_t cl = res->unit_offset >> s->cluster_bits, k = DIV_ROUND_UP(res->length, s->cluster_size);
        tc_table *t;
        int r;

        assert(s->reserved);
        assert(cl % s->entries + k <= s->entries);
        r = grow_file(s, res->host_offset + k * s->cluster_size);
        if (r < 0)
                return r;
        if (s->res_l2) {
                r = write_new_l2(s, s->res_l2, cl % s->entries, k, res->host_offset, s->cluster_size);
                if (r >= 0)
                        r = tc_set(s->l1, cl / s->entries, s->res_l2, TC_AFTER_DATA);
        } else {
                uint64_t l2o;

                r = l2_offset(s, cl / s->entries, &l2o);
                if (r >= 0)
                        r = l2slots_get(&s->l2, l2o, &t);
                /* A run's entries may span table pages: one that fails to
                 * load leaves the ones before it pointing at the run (their
                 * data is written), so its space is kept, not rewound. */
                for (uint64_t i = 0; r >= 0 && i < k; i++) {
                        r = tc_set(t, cl % s->entries + i, res->host_offset + i * s->cluster_size,
                                   TC_AFTER_DATA);
                        s->res_linked |= r >= 0;
                }
        }
        if (r < 0)
                return r;
        s->reserved = false;
        s->res_l2 = 0;
        s->res_linked = false;
        return 0;
}

static void qed_release(void *state, const reservation *res) {
        qed_state *s = state;

        if (!s->res_linked)
                hostalloc_rewind(&s->alloc, s->res_l2 ? s->res_l2 : res->host_offset);
        s->reserved = false;
        s->res_l2 = 0;
        s->res_linked = false;
}

/* Zero clusters where the cluster holds no data (a data cluster would leak:
 * the core writes zeros into those). */
static int qed_mark_zero(void *state, uint64_t offset, uint64_t len) {
        qed_state *s = state;
        int r;

        assert(offset % s->cluster_size == 0);
        while (len > 0) {
                uint64_t cl = offset >> s->cluster_bits, l2o, e, n;
                tc_table *t;

                n = MIN((uint64_t) s->cluster_size, s->size - offset);
                if (n > len)
                        return -EOPNOTSUPP;
                r = l2_entry(s, cl, &l2o, &e);
                if (r < 0)
                        return r;
                if (l2o == 0) {
                        /* a new table of zero entries for the whole run it covers */
                        uint64_t first = cl % s->entries, k = MIN(s->entries - first, DIV_ROUND_UP(len, s->cluster_size));
                        uint64_t at;

                        r = set_need_check(s, true);
                        if (r < 0)
                                return r;
                        prepare_alloc(s);
                        r = hostalloc_alloc(&s->alloc, s->table_bytes, UINT64_MAX / 2, &at, NULL);
                        if (r >= 0)
                                r = write_new_l2(s, at, first, k, QED_ZERO, 0);
                        if (r >= 0)
                                r = tc_set(s->l1, cl / s->entries, at, TC_AFTER_DATA);
                        if (r < 0)
                                return r;
                        n = MIN(k * s->cluster_size, s->size - offset);
                        offset += n;
                        len -= MIN(n, len);
                        continue;
                }
                if (e != 0 && e != QED_ZERO)
                        return -EOPNOTSUPP;
                if (e == 0) {
                        r = l2slots_get(&s->l2, l2o, &t);
                        if (r >= 0)
                                r = tc_set(t, cl % s->entries, QED_ZERO, 0);
                        if (r < 0)
                                return r;
                }
                offset += n;
                len -= n;
        }
        return 0;
}

/* Data, then tables (the cache flushes the data first), then the header
 * without NEED_CHECK. Space a failed write left at the end is cut off. */
static int qed_flush(void *state) {
        qed_state *s = state;
        uint64_t size;
        int r;

        r = l2slots_flush(&s->l2);
        if (r >= 0)
                r = tc_table_flush(s->l1);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                return r;
        if (s->alloc_ready && !s->reserved) {
                r = io_get_size(s->io, &size);
                if (r < 0)
                        return r;
                if (size > hostalloc_next(&s->alloc)) {
                        r = io_truncate(s->io, hostalloc_next(&s->alloc));
                        if (r < 0)
                                return r;
                        hostalloc_truncated(&s->alloc, hostalloc_next(&s->alloc));
                }
        }
        if (s->writable)
                return set_need_check(s, false);
        return 0;
}

/* ---------------------------------------------------------------- check */

typedef struct qed_check_ctx {
        qed_state *s;
        vdisk_check_report *rep;
        uint64_t *used;           /* one bit per cluster of the file */
        uint64_t n_clusters;
        uint64_t messages;
} qed_check_ctx;

#define QED_CHECK_MESSAGES 20u

static bool mark(qed_check_ctx *c, uint64_t off, uint64_t bytes) {
        uint64_t first = off / c->s->cluster_size, n = DIV_ROUND_UP(bytes, c->s->cluster_size);

        for (uint64_t i = first; i < first + n; i++)
                if (i < c->n_clusters && (c->used[i / 64] >> (i % 64)) & 1)
                        return false;
        for (uint64_t i = first; i < first + n && i < c->n_clusters; i++)
                c->used[i / 64] |= UINT64_C(1) << (i % 64);
        return true;
}

static int qed_check(void *state, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p) {
        qed_state *s = state;
        bool repair_all = flags & VDISK_CHECK_REPAIR_ALL;
        bool repair_leaks = repair_all || (flags & VDISK_CHECK_REPAIR_LEAKS);
        bool dry = flags & VDISK_CHECK_DRY_RUN;
        qed_check_ctx c = { .s = s, .rep = rep };
        uint64_t bitmap_bytes, last_used = 0, leaks = 0, allocated = 0, fragmented = 0, prev, fixed = 0;
        int r;

        if ((repair_all || repair_leaks) && !dry && !s->writable)
                return vdisk_error(-EROFS, "qed: image is read-only; cannot repair");
        r = io_get_size(s->io, &s->file_size);
        if (r < 0)
                return r;
        c.n_clusters = s->file_size / s->cluster_size;
        bitmap_bytes = DIV_ROUND_UP(c.n_clusters + 1, 64) * 8;
        r = tc_budget_charge(s->budget, bitmap_bytes);
        if (r < 0)
                return vdisk_error(r, "qed: the check's cluster bitmap (%" PRIu64 " bytes) does not fit the "
                                   "metadata budget", bitmap_bytes);
        c.used = calloc(1, bitmap_bytes);
        if (!c.used) {
                tc_budget_uncharge(s->budget, bitmap_bytes);
                return -ENOMEM;
        }
        mark(&c, 0, s->meta_end);

#define BAD(...) do {                                                    \
                rep->corruptions++;                                      \
                if (c.messages++ < QED_CHECK_MESSAGES)                   \
                        check_report_add(rep, __VA_ARGS__);              \
        } while (0)

        for (uint64_t i = 0; i < s->entries && r >= 0; i++) {
                uint64_t l2o;
                tc_table *t;

                r = tc_get(s->l1, i, &l2o);
                if (r < 0 || l2o == 0)
                        continue;
                if (!table_ok(s, l2o) || !mark(&c, l2o, s->table_bytes)) {
                        BAD("L1 entry %" PRIu64 ": L2 table at %" PRIu64 " is invalid or overlaps other metadata",
                            i, l2o);
                        if (repair_all && !dry) {
                                r = tc_set(s->l1, i, 0, 0);
                                fixed++;
                        }
                        continue;
                }
                last_used = MAX(last_used, l2o + s->table_bytes);
                r = l2slots_get(&s->l2, l2o, &t);
                /* qemu's fragmentation: within an L2 table, a cluster not
                 * right after the one before it */
                prev = 0;
                for (uint64_t j = 0; j < s->entries && r >= 0; j++) {
                        uint64_t e;

                        r = tc_get(t, j, &e);
                        if (r < 0 || e == 0 || e == QED_ZERO)
                                continue;
                        if (!cluster_ok(s, e) || !mark(&c, e, s->cluster_size)) {
                                BAD("cluster %" PRIu64 ": data at %" PRIu64 " is invalid or used twice",
                                    i * s->entries + j, e);
                                if (repair_all && !dry) {
                                        r = tc_set(t, j, 0, 0);
                                        fixed++;
                                }
                                continue;
                        }
                        allocated++;
                        if (prev != 0 && e != prev + s->cluster_size)
                                fragmented++;
                        prev = e;
                        last_used = MAX(last_used, e + s->cluster_size);
                }
        }
#undef BAD
        if (r >= 0) {
                for (uint64_t i = 0; i < c.n_clusters; i++)
                        if (!((c.used[i / 64] >> (i % 64)) & 1))
                                leaks++;
                rep->leaks += leaks;
                if (leaks)
                        check_report_add(rep, "%" PRIu64 " leaked clusters", leaks);
        }
        free(c.used);
        tc_budget_uncharge(s->budget, bitmap_bytes);
        if (r < 0)
                return r;
        rep->corruptions_fixed += fixed;
        rep->total_clusters = DIV_ROUND_UP(s->size, s->cluster_size);
        rep->allocated_clusters = allocated;
        rep->fragmented_clusters = fragmented;
        rep->image_end_offset = s->file_size;

        if (dry || !(repair_all || repair_leaks))
                return 0;
        r = l2slots_flush(&s->l2);
        if (r >= 0)
                r = tc_table_flush(s->l1);
        if (r < 0)
                return r;
        /* leaked clusters after the last one in use: cut off */
        last_used = ALIGN_UP(MAX(last_used, s->meta_end), (uint64_t) s->cluster_size);
        if (leaks && last_used < s->file_size) {
                uint64_t cut = (s->file_size - last_used) / s->cluster_size;

                r = io_truncate(s->io, last_used);
                if (r < 0)
                        return r;
                s->file_size = last_used;
                rep->leaks_fixed += MIN(cut, leaks);
                if (s->alloc_ready)
                        hostalloc_truncated(&s->alloc, last_used);
                if (s->alloc_ready && hostalloc_next(&s->alloc) > last_used)
                        hostalloc_rewind(&s->alloc, last_used);
        }
        if (rep->corruptions == rep->corruptions_fixed) {
                r = io_flush(s->io);
                if (r >= 0 && s->need_check_on_disk)
                        r = set_need_check(s, false);
        }
        return r;
}

/* ---------------------------------------------------------------- create, resize */

static int qed_create(void *state, const open_ctx *c, const create_params *p) {
        qed_state *s = state;
        uint64_t cluster = QED_CLUSTER_DEFAULT, table = QED_TABLE_DEFAULT, size;
        size_t name_len = p->parent_name ? strlen(p->parent_name) : 0;
        int r;

        for (const char *const *o = p->options; o && o[0]; o += 2) {
                if (streq(o[0], "cluster_size"))
                        cluster = strtoull(o[1], NULL, 10);
                else if (streq(o[0], "table_size"))
                        table = strtoull(o[1], NULL, 10);
        }
        if (cluster < QED_CLUSTER_MIN || cluster > QED_CLUSTER_MAX || !IS_POWER_OF_2(cluster))
                return vdisk_error(-EINVAL, "qed: cluster size %" PRIu64 " (a power of two, 4 KiB to 64 MiB)",
                                   cluster);
        if (table < 1 || table > QED_TABLE_MAX || !IS_POWER_OF_2(table))
                return vdisk_error(-EINVAL, "qed: table size %" PRIu64 " clusters (a power of two, 1 to 16)", table);
        if (p->image_flags & ~VDISK_IMAGE_FLAGS_DIFF)
                return vdisk_error(-EOPNOTSUPP, "qed: image flags %#" PRIx32 " are not supported", p->image_flags);
        /* qemu-img rounds sizes up to a sector */
        size = ALIGN_UP(p->size, UINT64_C(512));
        if (size < p->size || size > max_size(cluster, table))
                return vdisk_error(-EFBIG, "qed: virtual size %" PRIu64 " is above %" PRIu64 " for these cluster "
                                   "and table sizes", p->size, max_size(cluster, table));
        if (name_len) {
                if (name_len > QED_BACKING_NAME_MAX || QED_HEADER + name_len > cluster)
                        return vdisk_error(-ENAMETOOLONG, "qed: backing file name of %zu bytes is too long",
                                           name_len);
                r = units_check_backing_name("qed", p->parent_name);
                if (r < 0)
                        return r;
        }
        s->io = c->io;
        s->budget = c->budget;
        s->writable = true;
        s->cluster_size = (uint32_t) cluster;
        s->table_size = (uint32_t) table;
        s->header_size = 1;
        s->l1_offset = cluster;
        s->size = size;
        if (name_len) {
                s->features = QED_F_BACKING_FILE;
                if (p->parent_format && strcasecmp(p->parent_format, "raw") == 0)
                        s->features |= QED_F_NO_PROBE;
                s->backing_offset = QED_HEADER;
                s->backing_len = (uint32_t) name_len;
                r = io_pwrite(c->io, p->parent_name, name_len, QED_HEADER);
                if (r < 0)
                        return r;
        }
        r = write_header(s);
        if (r >= 0)
                r = io_truncate(c->io, cluster + table * cluster);
        if (r < 0)
                return r;
        r = io_get_size(c->io, &s->file_size);
        if (r < 0)
                return r;
        {
                uint8_t h[QED_HEADER];

                r = io_pread(c->io, h, sizeof h, 0);
                if (r >= 0)
                        r = header_parse(s, h, s->file_size);
                if (r < 0)
                        return r;
        }
        if (name_len) {
                s->backing_name = strdup(p->parent_name);
                if (!s->backing_name)
                        return -ENOMEM;
        }
        return open_tables(s);
}

/* Growing only changes the size (the L1 table covers the most the table
 * size allows). */
static int qed_resize(void *state, uint64_t new_size, vdisk_progress *p) {
        qed_state *s = state;
        uint64_t old = s->size;
        int r;

        if (new_size < s->size)
                return vdisk_error(-EOPNOTSUPP, "qed: images cannot shrink");
        if (new_size % 512 != 0 || new_size > max_size(s->cluster_size, s->table_size))
                return vdisk_error(-EFBIG, "qed: size %" PRIu64 " is not a multiple of 512 up to %" PRIu64, new_size,
                                   max_size(s->cluster_size, s->table_size));
        s->size = new_size;
        r = write_header(s);
        if (r >= 0)
                r = io_flush(s->io);
        if (r < 0)
                s->size = old;
        return r;
}

/* ---------------------------------------------------------------- metadata */

static int qed_get_meta(void *state, meta *m) {
        qed_state *s = state;

        *m = (meta) { .mask = META_FLAGS };
        if (s->backing_name) {
                m->mask |= META_PARENT_NAME;
                m->parent_name = s->backing_name;
                m->parent_format = s->features & QED_F_NO_PROBE ? "raw" : NULL;
                m->flags |= VDISK_IMAGE_FLAGS_DIFF;
        }
        return 0;
}

static int qed_set_meta(void *state, const meta *m, uint32_t mask) {
        static const meta none = {};
        qed_state *s = state;
        size_t len = m->parent_name ? strlen(m->parent_name) : 0;
        char *copy = NULL;
        int r;

        /* The parent is linked by name alone: its UUIDs have no field here. */
        if (mask & ~(META_PARENT_NAME | META_PARENT_UUID | META_PARENT_MOD_UUID))
                return vdisk_error(-EOPNOTSUPP, "qed: the format has no such field (mask %#" PRIx32 ")", mask);
        if (!(mask & META_PARENT_NAME)) {
                /* made a base (a merge into it): a null parent UUID drops the link */
                if (!(mask & META_PARENT_UUID) || !vdisk_uuid_is_null(m->parent_uuid))
                        return 0;
                m = &none;
        }
        if (len) {
                r = units_check_backing_name("qed", m->parent_name);
                if (r < 0)
                        return r;
                if (len > QED_BACKING_NAME_MAX || QED_HEADER + len > (uint64_t) s->header_size * s->cluster_size)
                        return vdisk_error(-ENOSPC, "qed: no room for a backing file name of %zu bytes", len);
                copy = strdup(m->parent_name);
                if (!copy)
                        return -ENOMEM;
                r = io_pwrite(s->io, copy, len, QED_HEADER);
                if (r < 0) {
                        free(copy);
                        return r;
                }
                s->features |= QED_F_BACKING_FILE;
                s->features &= ~(uint64_t) QED_F_NO_PROBE;
                if (m->parent_format && strcasecmp(m->parent_format, "raw") == 0)
                        s->features |= QED_F_NO_PROBE;
                s->backing_offset = QED_HEADER;
        } else
                s->features &= ~(uint64_t) (QED_F_BACKING_FILE | QED_F_NO_PROBE);
        s->backing_len = (uint32_t) len;
        free(s->backing_name);
        s->backing_name = copy;
        return write_header(s);
}

static int qed_get_info(void *state, vdisk_image_info *ret) {
        qed_state *s = state;

        ret->cluster_size = s->cluster_size;
        ret->dirty = !!(s->features & QED_F_NEED_CHECK);
        ret->image_flags = s->backing_name ? VDISK_IMAGE_FLAGS_DIFF : 0;
        return 0;
}

static const char *const qed_extensions[] = { "qed", NULL };
static const vdisk_option_desc qed_create_options[] = {
        { "backing_file", VDISK_OPTION_STRING, "File name of a base image" },
        { "backing_fmt",  VDISK_OPTION_STRING, "Image format of the base image" },
        { "cluster_size", VDISK_OPTION_SIZE, "Cluster size (in bytes)", "65536" },
        { "size",         VDISK_OPTION_SIZE, "Virtual disk size" },
        { "table_size",   VDISK_OPTION_NUMBER, "L1/L2 table size (in clusters)" },
        {}
};

const vdisk_backend backend_qed = {
        .info = {
                .name = "QED",
                .qemu_name = "qed",
                .caps = VDISK_CAP_FILE | VDISK_CAP_DIFF | VDISK_CAP_CREATE_DYNAMIC | VDISK_CAP_RESIZE |
                        VDISK_CAP_CHECK | VDISK_CAP_REPAIR,
                .media = VDISK_MEDIA_HDD,
                .extensions = qed_extensions,
                .create_options = qed_create_options,
        },
        .state_size = sizeof(qed_state),
        .probe = qed_probe,
        .peek = qed_peek,
        .open = qed_open,
        .create = qed_create,
        .close = qed_close,
        .get_size = qed_get_size,
        .get_layout = qed_get_layout,
        .map = qed_map,
        .allocate = qed_allocate,
        .commit = qed_commit,
        .release = qed_release,
        .mark_zero = qed_mark_zero,
        .flush = qed_flush,
        .get_meta = qed_get_meta,
        .set_meta = qed_set_meta,
        .get_info = qed_get_info,
        .resize = qed_resize,
        .check = qed_check,
        /* falloc/full: qemu's file layer preallocates the empty file (no effect) */
        .prealloc_create = PREALLOC_BIT(PREALLOC_FALLOC) | PREALLOC_BIT(PREALLOC_FULL),
        .prealloc_flags = PREALLOC_RESIZE_QUOTED,
};
