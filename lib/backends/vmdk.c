/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMDK — VMware Virtual Disk, hosted ("Workstation") formats.
 *
 * Spec: VMware "Virtual Disk Format 5.0" technote (sparse extent header,
 * grain directory and tables, descriptor, stream-optimized markers); our
 * reading of it, limits and traps in docs/formats/vmdk.md and
 * ../shared/formats/FORMATS.md §3.4. All header fields little-endian.
 *
 * An image is a descriptor (text: lib/fmt/vmdk-desc.c) and extents:
 *   - a file starting with the sparse magic "KDMV" holds its descriptor
 *     embedded (monolithicSparse, streamOptimized) and is its own extent;
 *   - a text descriptor file names its extents (monolithicFlat,
 *     twoGbMaxExtent*, vmfs), each opened through the files handle — never
 *     by path (names with ".." or absolute are refused by the parser).
 *
 * Hosted sparse extent:
 *   sector 0       header (512 bytes): magic, version 1..3, flags, capacity,
 *                  grain size, descriptor offset/size, GTEs per GT, rgd/gd
 *                  offsets (sectors), overhead, newline test chars, compression
 *   descriptor     (embedded, NUL-padded)
 *   rgd, gd        redundant and primary grain directories: u32 sector
 *                  offsets of the grain tables (0 = no table)
 *   GTs            u32 grain entries: 0 unallocated, 1 zeroed (flags bit 2,
 *                  version >= 2), else the grain's sector
 *   grains
 * streamOptimized (flags bits 16 + 17): gd offset "at end" in the header,
 * the real header is the footer at EOF-1024; each grain is a marker
 * (u64 lba, u32 size) then `size` bytes of zlib data (MAP_ENCODED).
 *
 * Grain tables are read through lib/fmt/tablecache: the GD as its own
 * table, the GTs (which lie anywhere in the file) through one LE32 view of
 * the whole extent file, 4 KiB pages.
 *
 * Supported so far: reading monolithicSparse (header v1/v2/v3, zeroed-grain
 * GTEs), monolithicFlat, twoGbMaxExtentSparse/Flat, vmfs (flat), ZERO
 * extents, streamOptimized; diffs by parentFileNameHint; grain tables
 * allocated on demand (GD entries of 0); resize in the last extent; check
 * and repair; compact of hosted sparse extents. Refused clearly: vmfsSparse, seSparse, raw-device
 * descriptors, NOACCESS extents.
 *
 * Threads: none of its own; the core serializes every call on an image.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>
#ifdef HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "backend.h"
#include "backends/vmdk-cowd.h"
#include "backends/vmdk-sesparse.h"
#include "fmt/compact.h"
#include "fmt/hostalloc.h"
#include "fmt/tablecache.h"
#include "fmt/units.h"
#include "fmt/vmdk-desc.h"
#include "io/io.h"
#include "util/util.h"

#define VMDK_MAGIC              UINT32_C(0x564d444b)   /* "KDMV" little-endian */
#define VMDK_SECTOR             512u
#define VMDK_GD_AT_END          UINT64_MAX
#define VMDK_GRAIN_MAX_SECTORS  UINT64_C(32768)        /* 16 MiB */
#define VMDK_GTES_MAX           512u
#define VMDK_CAPACITY_MAX       (UINT64_C(64) << 31)   /* sectors: 64 TiB */
#define VMDK_GD_BYTES_MAX       (UINT64_C(64) << 20)
#define VMDK_PAGE               4096u
#define VMDK_MARKER_SIZE        12u

enum {
        VMDK_FLAG_NL_TEST     = 1u << 0,
        VMDK_FLAG_RGD         = 1u << 1,
        VMDK_FLAG_ZEROED_GTE  = 1u << 2,
        VMDK_FLAG_COMPRESSED  = 1u << 16,
        VMDK_FLAG_MARKERS     = 1u << 17,
};

/* Header field offsets. */
enum {
        H_MAGIC        = 0,
        H_VERSION      = 4,
        H_FLAGS        = 8,
        H_CAPACITY     = 12,
        H_GRAIN        = 20,
        H_DESC_OFFSET  = 28,
        H_DESC_SIZE    = 36,
        H_GTES         = 44,
        H_RGD          = 48,
        H_GD           = 56,
        H_OVERHEAD     = 64,
        H_UNCLEAN      = 72,
        H_NL_CHARS     = 73,   /* '\n', ' ', '\r', '\n' */
        H_COMPRESS     = 77,
};

#define CODEC_DEFLATE 1u

typedef struct vmdk_header {
        uint32_t version, flags;
        uint64_t capacity, grain, desc_offset, desc_size;   /* sectors */
        uint32_t gtes;
        uint64_t rgd, gd, overhead;                          /* sectors */
        uint16_t compress;
} vmdk_header;

typedef struct vmdk_extent {
        vmdk_extent_type type;
        vmdk_access access;
        uint64_t start, size;           /* virtual bytes */
        vdisk_io *io;                   /* the extent's file (s->io for the embedded case) */
        uint64_t flat_offset;           /* FLAT/VMFS: bytes into io */
        uint64_t file_size;
        /* SPARSE */
        vmdk_header h;
        uint64_t grain;                 /* bytes */
        uint64_t n_gd;
        tc_table *gd, *rgd;
        tc_table *view;                 /* LE32 view of the file as opened: the GTs */
        /* Grain tables allocated since open (past the view), sorted by sector. */
        struct vmdk_new_gt {
                uint64_t sector;
                tc_table *t;
        } *new_gt;
        size_t n_new_gt;
        bool zeroed_gte, compressed;
        bool alloc_ready;
        hostalloc alloc;                /* new grains go at the end of the file */
        vmdk_se *se;                    /* SESPARSE (vmdk-sesparse.c) */
        vmdk_cowd *cowd;                /* VMFSSPARSE (vmdk-cowd.c) */
        grain_map gm;                   /* either one's tables (lib/fmt/grainmap) */
} vmdk_extent;

typedef struct vmdk_state {
        vdisk_io *io;
        int writable;
        tc_budget *budget;
        vmdk_desc desc;
        bool embedded;                  /* the descriptor lives in the sparse header's file */
        vmdk_extent *ext;
        size_t n_ext;
        uint64_t size;
        uint32_t cid, parent_cid;
        const char *create_type;
        const char *parent_hint;
        uint8_t uuid[16], parent_uuid[16];
        bool has_uuid, has_parent_uuid;
        vdisk_geometry lchs;
        bool desc_dirty;                /* changed (CID, sizes, links): rewrite it at flush */
        vdisk_files *files;             /* the companions (extents); creating only in resize */
        vmdk_extent *reserved;          /* the extent of the open reservation */
        uint64_t res_gt, res_rgt;       /* its new grain tables (sectors; 0 = none) */
        /* streamOptimized being created: grains appended in order, each GT
         * written once the stream has passed it, the GD and footer at finish. */
        bool stream, stream_done;
        uint64_t stream_next;           /* file offset where the next marker goes */
        uint8_t *stream_wbuf;           /* VMDK_WBUF bytes: what goes at [stream_wbuf_off, stream_next) */
        uint64_t stream_wbuf_off;
        uint64_t stream_min;            /* virtual offset the next grain must reach */
        uint64_t stream_cur_gt;         /* index of the GT being filled, UINT64_MAX = none */
        uint32_t *stream_gt;            /* its entries */
        uint32_t *stream_gd;            /* n_gd entries (charged to the budget) */
        uint64_t stream_charged;
        uint64_t stream_capacity, stream_n_gd;
        uint8_t stream_header[VMDK_SECTOR];
} vmdk_state;

/* ---------------------------------------------------------------- header */

static void header_decode(const uint8_t *p, vmdk_header *h) {
        *h = (vmdk_header) {
                .version = get_le32(p + H_VERSION),
                .flags = get_le32(p + H_FLAGS),
                .capacity = get_le64(p + H_CAPACITY),
                .grain = get_le64(p + H_GRAIN),
                .desc_offset = get_le64(p + H_DESC_OFFSET),
                .desc_size = get_le64(p + H_DESC_SIZE),
                .gtes = get_le32(p + H_GTES),
                .rgd = get_le64(p + H_RGD),
                .gd = get_le64(p + H_GD),
                .overhead = get_le64(p + H_OVERHEAD),
                .compress = get_le16(p + H_COMPRESS),
        };
}

/* The header checks that do not need the rest of the file. `name` for messages. */
static int header_check(const uint8_t *p, const vmdk_header *h, uint64_t file_size, const char *name) {
        if (get_le32(p + H_MAGIC) != VMDK_MAGIC)
                return vdisk_error(-EMEDIUMTYPE, "vmdk: %s: no sparse extent magic", name);
        if (h->version < 1 || h->version > 3)
                return vdisk_error(-EOPNOTSUPP, "vmdk: %s: sparse header version %" PRIu32 " (1 to 3 supported)",
                                   name, h->version);
        if ((h->flags & VMDK_FLAG_NL_TEST) &&
            (p[H_NL_CHARS] != '\n' || p[H_NL_CHARS + 1] != ' ' || p[H_NL_CHARS + 2] != '\r' ||
             p[H_NL_CHARS + 3] != '\n'))
                return vdisk_error(-EUCLEAN, "vmdk: %s: newline test characters damaged (transferred in text mode?)",
                                   name);
        if (h->capacity == 0 || h->capacity > VMDK_CAPACITY_MAX)
                return vdisk_error(-EUCLEAN, "vmdk: %s: capacity of %" PRIu64 " sectors (1 to %" PRIu64 ")", name,
                                   h->capacity, VMDK_CAPACITY_MAX);
        if (h->grain == 0 || h->grain > VMDK_GRAIN_MAX_SECTORS || (h->grain & (h->grain - 1)))
                return vdisk_error(-EUCLEAN, "vmdk: %s: grain of %" PRIu64 " sectors (a power of two up to %" PRIu64
                                   ")", name, h->grain, VMDK_GRAIN_MAX_SECTORS);
        if (h->gtes == 0 || h->gtes > VMDK_GTES_MAX)
                return vdisk_error(-EUCLEAN, "vmdk: %s: %" PRIu32 " entries per grain table (1 to %u)", name,
                                   h->gtes, VMDK_GTES_MAX);
        if (h->desc_size > VMDK_DESC_MAX / VMDK_SECTOR)
                return vdisk_error(-EUCLEAN, "vmdk: %s: embedded descriptor of %" PRIu64 " sectors (at most %u)",
                                   name, h->desc_size, VMDK_DESC_MAX / VMDK_SECTOR);
        if (h->desc_size && (h->desc_offset == 0 || h->desc_offset > file_size / VMDK_SECTOR ||
                             h->desc_offset + h->desc_size > DIV_ROUND_UP(file_size, VMDK_SECTOR)))
                return vdisk_error(-EUCLEAN, "vmdk: %s: embedded descriptor at sector %" PRIu64 " (%" PRIu64
                                   " sectors) is not within the file", name, h->desc_offset, h->desc_size);
        if (h->flags & VMDK_FLAG_COMPRESSED) {
                if (h->compress != CODEC_DEFLATE)
                        return vdisk_error(-EOPNOTSUPP, "vmdk: %s: compression algorithm %u", name, h->compress);
                if (!(h->flags & VMDK_FLAG_MARKERS))
                        return vdisk_error(-EOPNOTSUPP, "vmdk: %s: compressed grains without markers", name);
        }
        return 0;
}

/* The grain directories of a checked header (the footer's for a stream)
 * within a file of file_size bytes; their entry count in *ret_n_gd. */
static int directories_check(const vmdk_header *h, uint64_t file_size, const char *name, uint64_t *ret_n_gd) {
        uint64_t n_gd = DIV_ROUND_UP(h->capacity, h->grain * h->gtes), gd_bytes = n_gd * 4;

        if (gd_bytes > VMDK_GD_BYTES_MAX)
                return vdisk_error(-EFBIG, "vmdk: %s: grain directory of %" PRIu64 " entries is too big", name,
                                   n_gd);
        if (h->gd == 0 || h->gd > file_size / VMDK_SECTOR ||
            !range_within(h->gd * VMDK_SECTOR, gd_bytes, file_size))
                return vdisk_error(-EUCLEAN, "vmdk: %s: grain directory at sector %" PRIu64 " (%" PRIu64
                                   " entries) is not within the file (%" PRIu64 " bytes)", name, h->gd, n_gd,
                                   file_size);
        if ((h->flags & VMDK_FLAG_RGD) &&
            (h->rgd == 0 || h->rgd > file_size / VMDK_SECTOR ||
             !range_within(h->rgd * VMDK_SECTOR, gd_bytes, file_size)))
                return vdisk_error(-EUCLEAN, "vmdk: %s: redundant grain directory at sector %" PRIu64
                                   " is not within the file", name, h->rgd);
        *ret_n_gd = n_gd;
        return 0;
}

/* ---------------------------------------------------------------- extents */

static int sparse_open(vmdk_state *s, vmdk_extent *e, const char *name, uint8_t *hdr) {
        uint64_t gd_bytes;
        int r;

        header_decode(hdr, &e->h);
        r = header_check(hdr, &e->h, e->file_size, name);
        if (r < 0)
                return r;
        if (e->h.gd == VMDK_GD_AT_END) {
                uint8_t foot[VMDK_SECTOR];
                vmdk_header fh;

                /* streamOptimized: footer marker, footer, end-of-stream marker. */
                if (e->file_size < 3 * VMDK_SECTOR + VMDK_SECTOR)
                        return vdisk_error(-EUCLEAN, "vmdk: %s: grain directory at the end, but no footer", name);
                r = io_pread(e->io, foot, VMDK_SECTOR, e->file_size - 2 * VMDK_SECTOR);
                if (r < 0)
                        return r;
                header_decode(foot, &fh);
                r = header_check(foot, &fh, e->file_size, name);
                if (r < 0)
                        return r == -EMEDIUMTYPE ? vdisk_error(-EUCLEAN, "vmdk: %s: no footer at the end", name) : r;
                if (fh.gd == VMDK_GD_AT_END || fh.capacity != e->h.capacity || fh.grain != e->h.grain ||
                    fh.gtes != e->h.gtes)
                        return vdisk_error(-EUCLEAN, "vmdk: %s: footer disagrees with the header", name);
                e->h = fh;
        }
        e->grain = e->h.grain * VMDK_SECTOR;
        e->size = e->h.capacity * VMDK_SECTOR;
        r = directories_check(&e->h, e->file_size, name, &e->n_gd);
        if (r < 0)
                return r;
        gd_bytes = e->n_gd * 4;
        e->zeroed_gte = e->h.version >= 2 && (e->h.flags & VMDK_FLAG_ZEROED_GTE);
        e->compressed = e->h.flags & VMDK_FLAG_COMPRESSED;

        tc_table_params gp = {
                .offset = e->h.gd * VMDK_SECTOR,
                .size = gd_bytes,
                .page_size = VMDK_PAGE,
                .entry = TC_LE32,
                .name = "vmdk grain directory",
        };
        r = tc_table_new(s->budget, e->io, &gp, &e->gd);
        if (r < 0)
                return r;
        if (e->h.flags & VMDK_FLAG_RGD) {
                gp.offset = e->h.rgd * VMDK_SECTOR;
                gp.name = "vmdk redundant grain directory";
                r = tc_table_new(s->budget, e->io, &gp, &e->rgd);
                if (r < 0)
                        return r;
        }
        tc_table_params vp = {
                .offset = 0,
                .size = e->file_size & ~UINT64_C(3),
                .page_size = VMDK_PAGE,
                .entry = TC_LE32,
                .name = "vmdk grain tables",
        };
        return tc_table_new(s->budget, e->io, &vp, &e->view);
}

static void extent_free(vmdk_extent *e) {
        e->gd = tc_table_free(e->gd);
        e->rgd = tc_table_free(e->rgd);
        e->view = tc_table_free(e->view);
        e->se = vmdk_se_free(e->se);
        e->cowd = vmdk_cowd_free(e->cowd);
        for (size_t i = 0; i < e->n_new_gt; i++)
                tc_table_free(e->new_gt[i].t);
        free(e->new_gt);
        e->new_gt = NULL;
        e->n_new_gt = 0;
}

/* Where entry `i` of the grain table at sector `gts` is: a table and the
 * index in it. GTs the file held at open are in the view; those allocated
 * since are tables of their own. */
static int gt_ref(vmdk_extent *e, uint64_t gts, uint64_t i, tc_table **ret_t, uint64_t *ret_i) {
        size_t lo = 0, hi = e->n_new_gt;

        assert(i < e->h.gtes);
        if (gts * VMDK_SECTOR + (uint64_t) e->h.gtes * 4 <= tc_table_size(e->view)) {
                *ret_t = e->view;
                *ret_i = gts * (VMDK_SECTOR / 4) + i;
                return 0;
        }
        while (lo < hi) {
                size_t mid = (lo + hi) / 2;

                if (e->new_gt[mid].sector == gts) {
                        *ret_t = e->new_gt[mid].t;
                        *ret_i = i;
                        return 0;
                }
                if (e->new_gt[mid].sector < gts)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return vdisk_error(-EUCLEAN, "vmdk: grain table at sector %" PRIu64 " is past the end of the file", gts);
}

/* Entry i of the grain table at sector gts. */
static int gt_get(vmdk_extent *e, uint64_t gts, uint64_t i, uint64_t *ret) {
        tc_table *t;
        uint64_t ti;
        int r;

        r = gt_ref(e, gts, i, &t, &ti);
        if (r < 0)
                return r;
        return tc_get(t, ti, ret);
}

static int gt_put(vmdk_extent *e, uint64_t gts, uint64_t i, uint64_t v) {
        tc_table *t;
        uint64_t ti;
        int r;

        r = gt_ref(e, gts, i, &t, &ti);
        if (r < 0)
                return r;
        return tc_set(t, ti, v, TC_AFTER_DATA);
}

/* The GT's sector for grain g of a sparse extent, 0 when it has none. */
static int gt_sector(vmdk_extent *e, uint64_t g, tc_table *gd, uint64_t *ret) {
        uint64_t gde;
        int r;

        r = tc_get(gd, g / e->h.gtes, &gde);
        if (r < 0)
                return r;
        if (gde != 0 && !range_within(gde * VMDK_SECTOR, (uint64_t) e->h.gtes * 4, e->file_size))
                return vdisk_error(-EUCLEAN, "vmdk: grain directory entry %" PRIu64 " (sector %" PRIu64
                                   ") points past the end of the file", g / e->h.gtes, gde);
        *ret = gde;
        return 0;
}

static int gte_get(vmdk_extent *e, uint64_t g, uint64_t *ret) {
        uint64_t gts = 0;
        int r;

        r = gt_sector(e, g, e->gd, &gts);
        if (r < 0)
                return r;
        if (gts == 0) {
                *ret = 0;
                return 0;
        }
        return gt_get(e, gts, g % e->h.gtes, ret);
}

/* ---------------------------------------------------------------- probe, open */

static bool looks_like_descriptor(const uint8_t *head, size_t len) {
        static const char sig[] = "# Disk DescriptorFile";
        size_t i = 0;

        if (len >= 3 && head[0] == 0xef && head[1] == 0xbb && head[2] == 0xbf)
                i = 3;
        return len - i >= sizeof sig - 1 && strncasecmp((const char *) head + i, sig, sizeof sig - 1) == 0;
}

static int vmdk_probe(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                      uint64_t file_size, const char *name) {
        if (head_len >= 4 && get_le32(head) == VMDK_MAGIC)
                return 100;
        if (looks_like_descriptor(head, head_len))
                return 100;
        return 0;
}

static int parse_uuid_key(const vmdk_desc *d, const char *key, uint8_t out[16], bool *has) {
        const char *v = vmdk_desc_get(d, key);

        if (!v)
                return 0;
        if (vdisk_uuid_parse(v, out) < 0)
                return vdisk_error(-EUCLEAN, "vmdk: descriptor %s \"%.40s\" is not a UUID", key, v);
        *has = true;
        return 0;
}

static int desc_meta(vmdk_state *s) {
        uint64_t c = 0, h = 0, sct = 0;
        int r;

        r = vmdk_desc_get_cid(&s->desc, "CID", &s->cid);
        if (r == -ENOENT)
                s->cid = 0xfffffffe;
        else if (r < 0)
                return r;
        r = vmdk_desc_get_cid(&s->desc, "parentCID", &s->parent_cid);
        if (r == -ENOENT)
                s->parent_cid = 0xffffffff;
        else if (r < 0)
                return r;
        s->create_type = vmdk_desc_get(&s->desc, "createType");
        s->parent_hint = vmdk_desc_get(&s->desc, "parentFileNameHint");
        if (s->parent_hint && !s->parent_hint[0])
                s->parent_hint = NULL;
        r = parse_uuid_key(&s->desc, "ddb.uuid.image", s->uuid, &s->has_uuid);
        if (r < 0)
                return r;
        r = parse_uuid_key(&s->desc, "ddb.uuid.parent", s->parent_uuid, &s->has_parent_uuid);
        if (r < 0)
                return r;
        if (vmdk_desc_get_u64(&s->desc, "ddb.geometry.cylinders", &c) == 0 &&
            vmdk_desc_get_u64(&s->desc, "ddb.geometry.heads", &h) == 0 &&
            vmdk_desc_get_u64(&s->desc, "ddb.geometry.sectors", &sct) == 0 && c <= UINT32_MAX && h <= 255 &&
            sct <= 255)
                s->lchs = (vdisk_geometry) { .cylinders = (uint32_t) c, .heads = (uint32_t) h,
                                             .sectors = (uint32_t) sct };
        return 0;
}

/* fullDevice / partitionedDevice: FLAT extents on raw devices ("/dev/..."),
 * opened only through a file descriptor the caller hands in (see
 * open_extents). The VMFS raw-device mappings are not read. */
static bool raw_device_type(const char *t) {
        return t && (strcasecmp(t, "fullDevice") == 0 || strcasecmp(t, "partitionedDevice") == 0);
}

static int check_create_type(const char *t) {
        static const char *const unsupported[] = {
                "vmfsRaw", "vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap",
                NULL,
        };

        if (!t)
                return 0;
        for (const char *const *u = unsupported; *u; u++)
                if (strcasecmp(t, *u) == 0)
                        return vdisk_error(-EOPNOTSUPP, "vmdk: createType \"%s\" (raw device) is not supported", t);
        return 0;
}

/* A descriptor file's bytes: text, then a NUL, then only NULs and the tail
 * of an older, longer text. qemu-img pads its descriptor files with NULs to a
 * sector, and (7.2) renews the CID by writing the new text and its NUL over
 * the old one in place: a CID with fewer hex digits (qemu writes no leading
 * zeros) leaves the old text's last bytes after the NUL, e.g.
 * `"2147483647"\n\0\n`, in about 1 of 300 images (this was the rare
 * "binary data" failure on qemu-made twoGbMaxExtentSparse images). qemu
 * reads up to the first NUL; so does vmdk_desc_parse(). Bytes no text has
 * (control characters other than tab, CR, LF) are refused: not a descriptor
 * (an extent or another file named as one). The message gives where. */
static int desc_text_check(const char *text, size_t len) {
        size_t end = strnlen(text, len);

        for (size_t i = end; i < len; i++) {
                uint8_t c = (uint8_t) text[i];

                if ((c < 0x20 && c != 0 && c != '\t' && c != '\r' && c != '\n') || c == 0x7f)
                        return vdisk_error(-EMEDIUMTYPE, "vmdk: binary data in a descriptor file: byte 0x%02x at "
                                           "offset %zu, after the text ends at offset %zu (the file has %zu "
                                           "bytes)", (unsigned) c, i, end, len);
        }
        return 0;
}

/* The identity a parsed descriptor records, with the checks desc_meta()
 * makes. A parent UUID of zeros is no parent (as get_meta() says). */
static int desc_identity(const vmdk_desc *d, meta *ret) {
        bool has_uuid = false, has_parent = false;
        uint32_t cid;
        int r;

        *ret = (meta) {};
        r = check_create_type(vmdk_desc_get(d, "createType"));
        if (r < 0)
                return r;
        r = vmdk_desc_get_cid(d, "CID", &cid);
        if (r >= 0 || r == -ENOENT)
                r = vmdk_desc_get_cid(d, "parentCID", &cid);
        if (r < 0 && r != -ENOENT)
                return r;
        r = parse_uuid_key(d, "ddb.uuid.image", ret->uuid, &has_uuid);
        if (r >= 0)
                r = parse_uuid_key(d, "ddb.uuid.parent", ret->parent_uuid, &has_parent);
        if (r < 0)
                return r;
        if (has_uuid)
                ret->mask |= META_UUID;
        if (has_parent && !vdisk_uuid_is_null(ret->parent_uuid))
                ret->mask |= META_PARENT_UUID;
        return 0;
}

/* The identity (ddb.uuid.image, ddb.uuid.parent) from the head: a text
 * descriptor file the head holds whole, or a sparse extent's embedded
 * descriptor within the head, with the checks open() makes before it reads
 * a table or a companion file. A split image is found by UUID this way
 * (without peek the core would open it metadata-only, with no way to open
 * its extents). An extent of a split image (no embedded descriptor) records
 * no identity: mask 0. A streamOptimized header (the directory in the
 * footer), a descriptor larger than the head: -ENODATA. The parent's name
 * is not reported (the descriptor quotes it, not NUL-terminated). The parsed
 * descriptor is the one allocation (at most the head's 64 KiB of text). */
static int vmdk_peek(const uint8_t *head, size_t head_len, uint64_t file_size, meta *ret) {
        vmdk_desc d = {};
        const char *text;
        size_t len;
        int r;

        assert(head || head_len == 0);
        assert(ret);

        if (file_size < 4)
                return vdisk_error(-EMEDIUMTYPE, "vmdk: file too short (%" PRIu64 " bytes)", file_size);
        if (head_len < 4)
                return -ENODATA;
        if (get_le32(head) == VMDK_MAGIC) {
                vmdk_header h;
                uint64_t n_gd, off;

                if (file_size < VMDK_SECTOR)
                        return vdisk_error(-EUCLEAN, "vmdk: file too short for a sparse header");
                if (head_len < VMDK_SECTOR)
                        return -ENODATA;
                header_decode(head, &h);
                r = header_check(head, &h, file_size, "sparse header");
                if (r < 0)
                        return r;
                if (h.gd == VMDK_GD_AT_END)
                        return -ENODATA;
                r = directories_check(&h, file_size, "sparse header", &n_gd);
                if (r < 0)
                        return r;
                *ret = (meta) {};
                if (h.desc_size == 0)
                        return 0;
                /* open() reads it zero-filled past the end of the file */
                off = h.desc_offset * VMDK_SECTOR;
                len = (size_t) (h.desc_size * VMDK_SECTOR);
                if ((uint64_t) head_len == file_size && off < head_len)
                        len = (size_t) MIN((uint64_t) len, head_len - off);
                if (!range_within(off, len, head_len))
                        return -ENODATA;
                text = (const char *) head + off;
                r = vmdk_desc_parse(text, len, &d);
                if (r < 0)
                        return r == -EMEDIUMTYPE ? vdisk_error(-EUCLEAN, "vmdk: embedded descriptor is empty") : r;
                if (d.n_extents != 1 || d.extents[0].type != VMDK_EXTENT_SPARSE)
                        r = vdisk_error(-EUCLEAN, "vmdk: embedded descriptor must name one SPARSE extent");
        } else {
                if (file_size > VMDK_DESC_MAX)
                        return vdisk_error(-EMEDIUMTYPE, "vmdk: not a sparse extent and too big (%" PRIu64
                                           " bytes) for a descriptor", file_size);
                if ((uint64_t) head_len < file_size)
                        return -ENODATA;
                text = (const char *) head;
                len = head_len;
                r = desc_text_check(text, len);
                if (r < 0)
                        return r;
                r = vmdk_desc_parse(text, len, &d);
                if (r < 0)
                        return r;
        }
        if (r >= 0)
                r = desc_identity(&d, ret);
        vmdk_desc_done(&d);
        return r;
}

/* The steps vmfsSparse and seSparse extents share before their own open:
 * refused writable, opened read-only, only named in list-files mode
 * (returns 0: the extent stays a ZERO one), else sized (returns 1). */
static int readonly_extent_prepare(vmdk_state *s, vdisk_files *files, bool list_files, vmdk_extent *e,
                                   const vmdk_extent_desc *d) {
        int r;

        if (s->writable)
                return vdisk_error(-EROFS, "vmdk: %s extent \"%s\" is read-only (open the image read-only)",
                                   d->type == VMDK_EXTENT_SESPARSE ? "seSparse" : "vmfsSparse", d->file);
        r = files_open(files, d->file, 0, &e->io);
        if (r < 0)
                return r;
        e->size = d->sectors * VMDK_SECTOR;
        if (list_files) {
                e->type = VMDK_EXTENT_ZERO;   /* names only: nothing is read */
                return 0;
        }
        r = io_get_size(e->io, &e->file_size);
        return r < 0 ? r : 1;
}

/* Opens extent i of the descriptor as s->ext[i], starting at virtual offset
 * `start` (open, and a resize that added extents). */
static int open_extent(vmdk_state *s, vdisk_files *files, bool list_files, size_t i, uint64_t start) {
        const vmdk_extent_desc *d = &s->desc.extents[i];
        vmdk_extent *e = &s->ext[i];
        int r;

        e->type = d->type;
        e->access = d->access;
        e->start = start;
        if (d->access == VMDK_ACCESS_NOACCESS)
                return vdisk_error(-EOPNOTSUPP, "vmdk: extent %zu (\"%s\") is NOACCESS", i + 1,
                                   d->file ? d->file : "ZERO");
        if (d->access == VMDK_ACCESS_RDONLY && s->writable)
                return vdisk_error(-EROFS, "vmdk: extent %zu (\"%s\") is read-only", i + 1,
                                   d->file ? d->file : "ZERO");
        /* Raw devices: FLAT extents of fullDevice/partitionedDevice images only. */
        if (d->file && vmdk_desc_name_is_device(d->file) &&
            (d->type != VMDK_EXTENT_FLAT || !raw_device_type(s->create_type)))
                return vdisk_error(-EUCLEAN, "vmdk: extent %zu names a device, but it is no FLAT extent of a "
                                   "fullDevice or partitionedDevice image", i + 1);
        switch (d->type) {
        case VMDK_EXTENT_ZERO:
                e->size = d->sectors * VMDK_SECTOR;
                break;
        case VMDK_EXTENT_FLAT:
        case VMDK_EXTENT_VMFS:
                /* A raw device is never opened by path: the
                 * caller's files handle must hold an fd under that name. */
                r = files_open(files, d->file, s->writable ? FILES_WRITE : 0, &e->io);
                if (r == -EPERM && vmdk_desc_name_is_device(d->file))   /* the path resolver */
                        return vdisk_error(r, "vmdk: extent %zu is the raw device \"%s\": it opens "
                                           "only through a file descriptor handed in for that "
                                           "name (vdisk-img never opens devices)", i + 1, d->file);
                if (r < 0)
                        return r;
                e->size = d->sectors * VMDK_SECTOR;
                if (list_files) {
                        e->type = VMDK_EXTENT_ZERO;   /* names only: nothing is read */
                        break;
                }
                r = io_get_size(e->io, &e->file_size);
                if (r < 0)
                        return r;
                e->flat_offset = d->offset * VMDK_SECTOR;
                if (!range_within(e->flat_offset, e->size, e->file_size))
                        return vdisk_error(-EUCLEAN, "vmdk: flat extent \"%s\" holds %" PRIu64
                                           " bytes, less than the %" PRIu64 " it should",
                                           d->file, e->file_size, e->flat_offset + e->size);
                break;
        case VMDK_EXTENT_SPARSE: {
                uint8_t hdr[VMDK_SECTOR] = {};

                r = files_open(files, d->file, s->writable ? FILES_WRITE : 0, &e->io);
                if (r < 0)
                        return r;
                if (list_files) {
                        e->type = VMDK_EXTENT_ZERO;   /* names only: nothing is read */
                        e->size = d->sectors * VMDK_SECTOR;
                        break;
                }
                r = io_get_size(e->io, &e->file_size);
                if (r < 0)
                        return r;
                if (e->file_size < VMDK_SECTOR)
                        return vdisk_error(-EUCLEAN, "vmdk: sparse extent \"%s\" is too short", d->file);
                r = io_pread(e->io, hdr, VMDK_SECTOR, 0);
                if (r < 0)
                        return r;
                r = sparse_open(s, e, d->file, hdr);
                if (r < 0)
                        return r == -EMEDIUMTYPE ? -EUCLEAN : r;
                if (e->h.capacity != d->sectors)
                        return vdisk_error(-EUCLEAN, "vmdk: sparse extent \"%s\" holds %" PRIu64
                                           " sectors, the descriptor says %" PRIu64, d->file,
                                           e->h.capacity, d->sectors);
                if (e->compressed && s->writable)
                        return vdisk_error(-EROFS, "vmdk: \"%s\" has compressed grains: read-only", d->file);
                break;
        }
        case VMDK_EXTENT_VMFSSPARSE:
        case VMDK_EXTENT_SESPARSE:
                r = readonly_extent_prepare(s, files, list_files, e, d);
                if (r <= 0)
                        return r;
                r = d->type == VMDK_EXTENT_SESPARSE ?
                        vmdk_se_open(s->budget, e->io, e->file_size, d->sectors, d->file, &e->se) :
                        vmdk_cowd_open(s->budget, e->io, e->file_size, d->sectors, d->file, &e->cowd);
                if (r < 0)
                        return r;
                e->gm = e->se ? vmdk_se_grain_map(e->se) : vmdk_cowd_grain_map(e->cowd);
                break;
        default:
                return vdisk_error(-EOPNOTSUPP, "vmdk: %s extents (\"%s\") are not supported yet",
                                   vmdk_extent_type_name(d->type), d->file);
        }
        if (e->size > VMDK_CAPACITY_MAX * VMDK_SECTOR - start)
                return vdisk_error(-EFBIG, "vmdk: extents add up to more than %" PRIu64 " bytes",
                                   VMDK_CAPACITY_MAX * VMDK_SECTOR);
        return 0;
}

static int open_extents(vmdk_state *s, const open_ctx *c) {
        uint64_t start = 0;
        int r;

        if (s->desc.n_extents == 0)
                return vdisk_error(-EUCLEAN, "vmdk: descriptor names no extent");
        s->ext = calloc(s->desc.n_extents, sizeof *s->ext);
        if (!s->ext)
                return -ENOMEM;
        for (size_t i = 0; i < s->desc.n_extents; i++) {
                s->n_ext = i + 1;
                r = open_extent(s, c->files, c->list_files, i, start);
                if (r < 0)
                        return r;
                start += s->ext[i].size;
        }
        s->size = start;
        return 0;
}

static int vmdk_open(void *state, const open_ctx *c) {
        vmdk_state *s = state;
        uint8_t head[VMDK_SECTOR] = {};
        uint64_t file_size;
        int r;

        s->io = c->io;
        s->files = c->files;
        s->writable = c->writable && !c->info_only;
        s->budget = c->budget;

        r = io_get_size(c->io, &file_size);
        if (r < 0)
                return r;
        if (file_size < 4)
                return vdisk_error(-EMEDIUMTYPE, "vmdk: file too short (%" PRIu64 " bytes)", file_size);
        r = io_pread(c->io, head, MIN(file_size, (uint64_t) VMDK_SECTOR), 0);
        if (r < 0)
                return r;

        if (get_le32(head) == VMDK_MAGIC) {
                _cleanup_free_ char *text = NULL;
                vmdk_extent *e;

                s->embedded = true;
                s->ext = calloc(1, sizeof *s->ext);
                if (!s->ext)
                        return -ENOMEM;
                s->n_ext = 1;
                e = s->ext;
                e->type = VMDK_EXTENT_SPARSE;
                e->io = c->io;
                e->file_size = file_size;
                if (file_size < VMDK_SECTOR)
                        return vdisk_error(-EUCLEAN, "vmdk: file too short for a sparse header");
                r = sparse_open(s, e, vdisk_io_name(c->io), head);
                if (r < 0)
                        return r;
                s->size = e->size;
                /* The descriptor: from the (first) header, not the footer. */
                vmdk_header h0;
                header_decode(head, &h0);
                if (h0.desc_size > 0) {
                        size_t n = (size_t) (h0.desc_size * VMDK_SECTOR);

                        text = calloc(1, n + 1);
                        if (!text)
                                return -ENOMEM;
                        r = io_pread_zerofill(c->io, text, n, h0.desc_offset * VMDK_SECTOR);
                        if (r < 0)
                                return r;
                        r = vmdk_desc_parse(text, n, &s->desc);
                        if (r < 0)
                                return r == -EMEDIUMTYPE ? vdisk_error(-EUCLEAN, "vmdk: embedded descriptor is empty") : r;
                        if (s->desc.n_extents != 1 || s->desc.extents[0].type != VMDK_EXTENT_SPARSE)
                                return vdisk_error(-EUCLEAN, "vmdk: embedded descriptor must name one SPARSE extent");
                        r = check_create_type(vmdk_desc_get(&s->desc, "createType"));
                        if (r < 0)
                                return r;
                        r = desc_meta(s);
                        if (r < 0)
                                return r;
                } else {
                        s->cid = 0xfffffffe;
                        s->parent_cid = 0xffffffff;
                }
                if (e->compressed && s->writable)
                        return vdisk_error(-EROFS, "vmdk: streamOptimized images open read-only");
                return 0;
        }

        /* A text descriptor file. */
        if (file_size > VMDK_DESC_MAX)
                return vdisk_error(-EMEDIUMTYPE, "vmdk: not a sparse extent and too big (%" PRIu64
                                   " bytes) for a descriptor", file_size);
        _cleanup_free_ char *text = calloc(1, (size_t) file_size + 1);
        if (!text)
                return -ENOMEM;
        r = io_pread(c->io, text, (size_t) file_size, 0);
        if (r < 0)
                return r;
        r = desc_text_check(text, (size_t) file_size);
        if (r < 0)
                return r;
        r = vmdk_desc_parse(text, (size_t) file_size, &s->desc);
        if (r < 0)
                return r;
        r = check_create_type(vmdk_desc_get(&s->desc, "createType"));
        if (r < 0)
                return r;
        r = desc_meta(s);
        if (r < 0)
                return r;
        return open_extents(s, c);
}

static void vmdk_close(void *state) {
        vmdk_state *s = state;

        for (size_t i = 0; i < s->n_ext; i++)
                extent_free(&s->ext[i]);
        free(s->ext);
        s->ext = NULL;
        s->n_ext = 0;
        vmdk_desc_done(&s->desc);
        free(s->stream_gd);
        free(s->stream_gt);
        free(s->stream_wbuf);
        s->stream_gd = s->stream_gt = NULL;
        s->stream_wbuf = NULL;
        if (s->stream_charged)
                tc_budget_uncharge(s->budget, s->stream_charged);
        s->stream_charged = 0;
}

static uint64_t vmdk_get_size(void *state) {
        vmdk_state *s = state;

        return s->size;
}

static void vmdk_get_layout(void *state, image_layout *ret) {
        vmdk_state *s = state;
        uint64_t grain = 0;
        bool zero = false;

        for (size_t i = 0; i < s->n_ext; i++)
                if (s->ext[i].type == VMDK_EXTENT_SPARSE) {
                        grain = s->ext[i].grain;
                        zero = s->ext[i].zeroed_gte && !s->ext[i].compressed && !s->stream;
                        break;
                } else if (s->ext[i].type == VMDK_EXTENT_SESPARSE) {
                        grain = VMDK_SE_GRAIN;
                        break;
                } else if (s->ext[i].type == VMDK_EXTENT_VMFSSPARSE) {
                        grain = vmdk_cowd_grain(s->ext[i].cowd);
                        break;
                }
        *ret = (image_layout) {
                .cluster_size = grain,
                .zero_unit = zero ? grain : 0,
                /* grains of sparse extents are appended; flat extents are laid out */
                .flags = s->stream ? BACKEND_STREAM : grain ? BACKEND_APPENDS : 0,
                .sector_size = VMDK_SECTOR,
        };
}

/* ---------------------------------------------------------------- data path */

static vmdk_extent *find_extent(vmdk_state *s, uint64_t offset) {
        size_t lo = 0, hi = s->n_ext;

        while (hi - lo > 1) {
                size_t mid = (lo + hi) / 2;

                if (s->ext[mid].start <= offset)
                        lo = mid;
                else
                        hi = mid;
        }
        return &s->ext[lo];
}

static vdisk_io *result_io(vmdk_state *s, vmdk_extent *e) {
        return e->io == s->io ? NULL : e->io;
}

static int sparse_map(vmdk_state *s, vmdk_extent *e, uint64_t off, uint64_t len, map_result *ret) {
        uint64_t g = off / e->grain, in = off % e->grain, gte, length;
        uint64_t grain_len = MIN(e->grain, e->size - g * e->grain);
        map_kind kind;
        int r;

        r = gte_get(e, g, &gte);
        if (r < 0)
                return r;
        if (gte == 0)
                kind = MAP_UNALLOC;
        else if (gte == 1 && e->zeroed_gte)
                kind = MAP_ZERO;
        else if (e->compressed) {
                uint8_t m[VMDK_MARKER_SIZE];
                uint64_t lba;
                uint32_t size;

                if (!range_within(gte * VMDK_SECTOR, VMDK_MARKER_SIZE, e->file_size))
                        return vdisk_error(-EUCLEAN, "vmdk: grain %" PRIu64 " at sector %" PRIu64
                                           " is past the end of the file", g, gte);
                r = io_pread(e->io, m, sizeof m, gte * VMDK_SECTOR);
                if (r < 0)
                        return r;
                lba = get_le64(m);
                size = get_le32(m + 8);
                if (lba != g * e->h.grain)
                        return vdisk_error(-EUCLEAN, "vmdk: compressed grain %" PRIu64 " is marked for sector %"
                                           PRIu64, g, lba);
                if (size == 0 || size > UNIT_MAX || size > 2 * e->grain + 4096 ||
                    !range_within(gte * VMDK_SECTOR + VMDK_MARKER_SIZE, size, e->file_size))
                        return vdisk_error(-EUCLEAN, "vmdk: compressed grain %" PRIu64 " of %" PRIu32
                                           " bytes does not fit in the file", g, size);
                *ret = (map_result) {
                        .kind = MAP_ENCODED,
                        .file = result_io(s, e),
                        .host_offset = gte * VMDK_SECTOR + VMDK_MARKER_SIZE,
                        .length = MIN(len, grain_len - in),
                        .unit_offset = e->start + g * e->grain,
                        .unit_length = (uint32_t) grain_len,
                        .encoded_length = size,
                        .codec = CODEC_DEFLATE,
                };
                return 0;
        } else {
                if (gte > (UINT64_MAX >> 9) || !range_within(gte * VMDK_SECTOR, grain_len, e->file_size) ||
                    gte * VMDK_SECTOR < VMDK_SECTOR)
                        return vdisk_error(-EUCLEAN, "vmdk: grain %" PRIu64 " at sector %" PRIu64
                                           " is not within the file", g, gte);
                kind = MAP_DATA;
        }

        /* Following grains of the same kind (data: contiguous) within this GT. */
        length = grain_len - in;
        for (uint64_t ng = g + 1; length < len && ng / e->h.gtes == g / e->h.gtes && ng * e->grain < e->size;
             ng++) {
                uint64_t next, nlen = MIN(e->grain, e->size - ng * e->grain);

                r = gte_get(e, ng, &next);
                if (r < 0)
                        return r;
                if (kind == MAP_UNALLOC ? next != 0 :
                    kind == MAP_ZERO ? next != 1 :
                    (next != gte + (ng - g) * e->h.grain ||
                     !range_within(next * VMDK_SECTOR, nlen, e->file_size)))
                        break;
                length += nlen;
        }
        *ret = (map_result) {
                .kind = kind,
                .file = result_io(s, e),
                .host_offset = kind == MAP_DATA ? gte * VMDK_SECTOR + in : 0,
                .length = MIN(length, len),
        };
        return 0;
}

static int vmdk_map(void *state, uint64_t offset, uint64_t len, map_result *ret) {
        vmdk_state *s = state;
        vmdk_extent *e;
        uint64_t off;

        assert(offset < s->size);
        assert(len > 0);

        if (s->stream && !s->stream_done) {
                /* Being written: what was written is read back only after finish. */
                *ret = (map_result) { .kind = MAP_UNALLOC, .length = len };
                return 0;
        }
        e = find_extent(s, offset);
        off = offset - e->start;
        len = MIN(len, e->size - off);
        switch (e->type) {
        case VMDK_EXTENT_ZERO:
                *ret = (map_result) { .kind = MAP_ZERO, .length = len };
                return 0;
        case VMDK_EXTENT_FLAT:
        case VMDK_EXTENT_VMFS:
                *ret = (map_result) {
                        .kind = MAP_DATA,
                        .file = result_io(s, e),
                        .host_offset = e->flat_offset + off,
                        .length = len,
                };
                return 0;
        case VMDK_EXTENT_SPARSE:
                return sparse_map(s, e, off, len, ret);
        case VMDK_EXTENT_SESPARSE:
        case VMDK_EXTENT_VMFSSPARSE: {
                map_kind kind;
                uint64_t host = 0, n = 0;
                int r = grain_map_map(&e->gm, off, len, &kind, &host, &n);

                if (r < 0)
                        return r;
                *ret = (map_result) { .kind = kind, .file = result_io(s, e), .host_offset = host, .length = n };
                return 0;
        }
        default:
                return vdisk_error(-EOPNOTSUPP, "vmdk: %s extent", vmdk_extent_type_name(e->type));
        }
}

static int vmdk_decode(const void *state, const map_result *m, const void *in, void *out) {
        /* find_extent() only reads the extent array */
        uint64_t grain = find_extent((vmdk_state *) state, m->unit_offset)->grain;
        z_stream z = {};
        int r, zr;

        if (m->codec != CODEC_DEFLATE)
                return vdisk_error(-EUCLEAN, "vmdk: unknown grain codec %" PRIu32, m->codec);
        if (inflateInit(&z) != Z_OK)
                return -ENOMEM;
        z.next_in = (Bytef *) in;
        z.avail_in = m->encoded_length;
        z.next_out = out;
        z.avail_out = m->unit_length;
        zr = inflate(&z, Z_FINISH);
        /* The last grain of an extent whose capacity is not a grain multiple
         * may hold a whole grain: decode the rest, but never past a grain. A
         * stream that does not end within the grain is corrupt (and would be
         * a decompression bomb). */
        while ((zr == Z_BUF_ERROR || zr == Z_OK) && z.avail_out == 0 && z.total_out <= grain) {
                uint8_t scratch[4096];

                z.next_out = scratch;   /* room for one byte past the grain, to see it */
                z.avail_out = (uInt) MIN((uint64_t) sizeof scratch, grain + 1 - z.total_out);
                zr = inflate(&z, Z_FINISH);
        }
        if (zr == Z_STREAM_END && z.total_out >= m->unit_length && z.total_out <= grain)
                r = 0;
        else if (z.total_out > grain)
                r = vdisk_error(-EUCLEAN, "vmdk: compressed grain at %" PRIu64 " decodes to more than a grain (%"
                                PRIu64 " bytes)", m->unit_offset, grain);
        else
                r = vdisk_error(-EUCLEAN, "vmdk: compressed grain at %" PRIu64 " decodes to %lu bytes, not %" PRIu32
                                " (%s)", m->unit_offset, (unsigned long) z.total_out, m->unit_length,
                                z.msg ? z.msg : "short");
        inflateEnd(&z);
        return r;
}


/* ---------------------------------------------------------------- writing */

static vmdk_extent *res_extent(vmdk_state *s, const reservation *res) {
        return find_extent(s, res->unit_offset);
}

/* Reserves the grain of `offset` at the end of its extent's file. When its
 * grain table does not exist yet (GD entry 0: images created with
 * gt_on_demand=on, or by VirtualBox), the reservation takes room for a new
 * one (and for a new redundant one) just before the grain: commit writes
 * them, and only then points the directories at them. */
static int vmdk_allocate(void *state, uint64_t offset, uint64_t len, reservation *ret) {
        vmdk_state *s = state;
        vmdk_extent *e;
        uint64_t off, g, gts = 0, rgts = 0, grain_len, host = 0;
        int fresh, r;

        assert(offset < s->size);
        assert(!s->reserved);

        e = find_extent(s, offset);
        if (e->type != VMDK_EXTENT_SPARSE)
                return vdisk_error(-EOPNOTSUPP, "vmdk: cannot allocate in a %s extent",
                                   vmdk_extent_type_name(e->type));
        if (e->compressed)
                return vdisk_error(-EROFS, "vmdk: compressed extents are read-only");
        /* Grain tables are written back by whole sectors: a table must fill
         * its sectors, or the write-back would carry stale neighbours. */
        if (e->h.gtes % (VMDK_SECTOR / 4))
                return vdisk_error(-EOPNOTSUPP, "vmdk: cannot write an extent with %" PRIu32
                                   " entries per grain table (a multiple of 128 is needed)", e->h.gtes);
        off = offset - e->start;
        g = off / e->grain;
        r = gt_sector(e, g, e->gd, &gts);
        if (r < 0)
                return r;
        if (e->rgd) {
                r = gt_sector(e, g, e->rgd, &rgts);
                if (r < 0)
                        return r;
        }
        if (!e->alloc_ready) {
                hostalloc_init(&e->alloc, ALIGN_UP(e->file_size, (uint64_t) VMDK_SECTOR), e->file_size,
                               VMDK_SECTOR);
                e->alloc_ready = true;
        }
        /* A new GT when the primary directory has none (a redundant GT
         * without a primary one is what a crash between the two directory
         * writes leaves: it holds nothing the image reads, and is left
         * behind); a new redundant GT (a copy of the primary one) when
         * only the redundant directory lacks it. */
        s->res_gt = s->res_rgt = 0;
        r = 0;
        if (gts == 0) {
                /* Grain entries are u32 sectors: the file stays below 2 TiB. */
                r = hostalloc_alloc(&e->alloc, (uint64_t) e->h.gtes * 4, (UINT64_C(1) << 32) * VMDK_SECTOR, &host,
                                    NULL);
                s->res_gt = host / VMDK_SECTOR;
        }
        if (r >= 0 && e->rgd && (gts == 0 || rgts == 0)) {
                r = hostalloc_alloc(&e->alloc, (uint64_t) e->h.gtes * 4, (UINT64_C(1) << 32) * VMDK_SECTOR, &host,
                                    NULL);
                s->res_rgt = host / VMDK_SECTOR;
        }
        if (r < 0) {
                s->res_gt = s->res_rgt = 0;
                return vdisk_error(r, "vmdk: extent file would pass 2 TiB");
        }
        grain_len = MIN(e->grain, e->size - g * e->grain);
        /* A whole grain's space even for the short last grain of an extent
         * whose size is no multiple of the grain (a grown diff): readers and
         * check take every grain as whole, and the next grain must not
         * begin inside it. Grain entries are u32 sectors: the file stays
         * below 2 TiB. */
        r = hostalloc_alloc(&e->alloc, e->grain,
                            (UINT64_C(1) << 32) * VMDK_SECTOR, &host, &fresh);
        if (r < 0)
                return vdisk_error(r, "vmdk: extent file would pass 2 TiB");
        s->reserved = e;
        *ret = (reservation) {
                .file = result_io(s, e),
                .unit_offset = e->start + g * e->grain,
                .length = grain_len,
                .host_offset = host,
                .fresh = fresh,
        };
        return 0;
}

static int set_gte(vmdk_extent *e, tc_table *gd, uint64_t g, uint64_t v) {
        uint64_t gts = 0;
        int r;

        r = gt_sector(e, g, gd, &gts);
        if (r < 0)
                return r;
        assert(gts != 0);
        return gt_put(e, gts, g % e->h.gtes, v);
}

/* Writes a new grain table at sector `gts`: a copy of the one at sector
 * `from` (0: empty) with grain g at `sector`, and makes it a table of its
 * own. Nothing points at it yet. */
static int new_gt(vmdk_state *s, vmdk_extent *e, uint64_t gts, uint64_t from, uint64_t g, uint64_t sector) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t bytes = (size_t) e->h.gtes * 4, at = e->n_new_gt;
        struct vmdk_new_gt *n;
        tc_table *t = NULL;
        int r;

        buf = calloc(1, bytes);
        if (!buf)
                return -ENOMEM;
        for (uint64_t i = 0; from && i < e->h.gtes; i++) {
                uint64_t v;

                r = gt_get(e, from, i, &v);
                if (r < 0)
                        return r;
                put_le32(buf + 4 * i, (uint32_t) v);
        }
        put_le32(buf + 4 * (g % e->h.gtes), (uint32_t) sector);
        r = io_pwrite(e->io, buf, bytes, gts * VMDK_SECTOR);
        if (r < 0)
                return r;
        n = reallocarray(e->new_gt, e->n_new_gt + 1, sizeof *n);
        if (!n)
                return -ENOMEM;
        e->new_gt = n;
        tc_table_params p = {
                .offset = gts * VMDK_SECTOR,
                .size = bytes,
                .page_size = VMDK_PAGE,
                .entry = TC_LE32,
                .name = "vmdk grain table",
        };
        r = tc_table_new(s->budget, e->io, &p, &t);
        if (r < 0)
                return r;
        while (at > 0 && e->new_gt[at - 1].sector > gts)
                at--;
        memmove(e->new_gt + at + 1, e->new_gt + at, (e->n_new_gt - at) * sizeof *n);
        e->new_gt[at] = (struct vmdk_new_gt) { .sector = gts, .t = t };
        e->n_new_gt++;
        return 0;
}

/* The CID: the core gives the image a new one (set_meta) on the first write
 * of an open, whatever the write does (image_mark_modified). */

static int vmdk_commit(void *state, const reservation *res) {
        vmdk_state *s = state;
        vmdk_extent *e = res_extent(s, res);
        uint64_t g = (res->unit_offset - e->start) / e->grain, sector = res->host_offset / VMDK_SECTOR;
        uint64_t end, size;
        int r;

        assert(s->reserved == e);
        s->reserved = NULL;
        /* The core writes only the non-zero pages of fresh space: make the
         * file hold the whole grain before an entry points at it. */
        end = res->host_offset + e->grain;   /* a short last grain too (see allocate) */
        r = io_get_size(e->io, &size);
        if (r < 0)
                return r;
        if (size < end) {
                r = io_truncate(e->io, end);
                if (r < 0)
                        return r;
        }
        e->file_size = MAX(e->file_size, end);
        /* New grain tables are written whole now (nothing points at them
         * yet); the directory entries reach the disk only after a flush of
         * the extent's file (TC_AFTER_DATA). Redundant side first: reads go
         * by the primary, so a failure part way leaves what reads unchanged. */
        if (s->res_rgt) {
                uint64_t gts = 0;

                r = s->res_gt ? 0 : gt_sector(e, g, e->gd, &gts);
                if (r >= 0)
                        r = new_gt(s, e, s->res_rgt, gts, g, sector);
                if (r >= 0)
                        r = tc_set(e->rgd, g / e->h.gtes, s->res_rgt, TC_AFTER_DATA);
        } else if (e->rgd)
                r = set_gte(e, e->rgd, g, sector);
        if (r >= 0 && s->res_gt) {
                r = new_gt(s, e, s->res_gt, 0, g, sector);
                if (r >= 0)
                        r = tc_set(e->gd, g / e->h.gtes, s->res_gt, TC_AFTER_DATA);
        } else if (r >= 0)
                r = set_gte(e, e->gd, g, sector);
        s->res_gt = s->res_rgt = 0;
        if (r < 0)
                return r;
        return 0;
}

static void vmdk_release(void *state, const reservation *res) {
        vmdk_state *s = state;

        /* Also after a commit that failed (it already dropped the reservation). */
        s->reserved = NULL;
        s->res_gt = s->res_rgt = 0;
}

/* Zeroed-grain entries (version 2+ extents with the flag): whole grains. */
static int vmdk_mark_zero(void *state, uint64_t offset, uint64_t len) {
        vmdk_state *s = state;

        while (len > 0) {
                vmdk_extent *e = find_extent(s, offset);
                uint64_t off = offset - e->start, g, n, gts = 0;
                int r;

                if (e->type == VMDK_EXTENT_ZERO) {
                        n = MIN(len, e->size - off);
                        offset += n;
                        len -= n;
                        continue;
                }
                if (e->type != VMDK_EXTENT_SPARSE || !e->zeroed_gte || e->compressed || off % e->grain ||
                    e->h.gtes % (VMDK_SECTOR / 4))
                        return -EOPNOTSUPP;
                g = off / e->grain;
                n = MIN(e->grain, e->size - off);
                if (n > len)
                        return -EOPNOTSUPP;
                r = gt_sector(e, g, e->gd, &gts);
                if (r < 0)
                        return r;
                if (gts == 0)
                        return -EOPNOTSUPP;
                r = set_gte(e, e->gd, g, 1);
                if (r >= 0 && e->rgd)
                        r = set_gte(e, e->rgd, g, 1);
                if (r < 0)
                        return r;
                offset += n;
                len -= n;
        }
        return 0;
}

static int write_desc(vmdk_state *s) {
        _cleanup_free_ char *text = NULL;
        size_t len;
        int r;

        r = vmdk_desc_format(&s->desc, &text, &len);
        if (r < 0)
                return r;
        if (s->embedded) {
                vmdk_header h0;
                uint8_t head[VMDK_SECTOR];
                _cleanup_free_ char *pad = NULL;
                size_t room;

                r = io_pread(s->io, head, VMDK_SECTOR, 0);
                if (r < 0)
                        return r;
                header_decode(head, &h0);
                room = (size_t) (h0.desc_size * VMDK_SECTOR);
                if (len >= room)
                        return vdisk_error(-ENOSPC, "vmdk: the descriptor no longer fits in its %zu bytes", room);
                /* Only the sectors the new text or the old one uses: the
                 * NUL padding past them is left as it is (it may be a hole in
                 * the file, which a write of zeros would have to allocate:
                 * ENOSPC on a full file system for a descriptor that fits). */
                size_t used, n;

                pad = calloc(1, room);
                if (!pad)
                        return -ENOMEM;
                r = io_pread(s->io, pad, room, h0.desc_offset * VMDK_SECTOR);
                if (r < 0)
                        return r;
                for (used = room; used > 0 && pad[used - 1] == 0; used--)
                        ;
                n = MIN(ALIGN_UP(MAX(used, len), (size_t) VMDK_SECTOR), room);
                memset(pad, 0, n);
                memcpy(pad, text, len);
                return io_pwrite(s->io, pad, n, h0.desc_offset * VMDK_SECTOR);
        }
        r = io_pwrite(s->io, text, len, 0);
        if (r < 0)
                return r;
        return io_truncate(s->io, len);
}

/* Data, then the grain tables (the cache flushes the data first: every
 * entry was set TC_AFTER_DATA), then the descriptor with its new CID. */
static int vmdk_flush(void *state) {
        vmdk_state *s = state;
        int r;

        if (s->stream)
                return io_flush(s->io);

        for (size_t i = 0; i < s->n_ext; i++) {
                vmdk_extent *e = &s->ext[i];

                if (!e->view)
                        continue;
                for (size_t j = 0; j < e->n_new_gt; j++) {
                        r = tc_table_flush(e->new_gt[j].t);
                        if (r < 0)
                                return r;
                }
                r = tc_table_flush(e->view);
                if (r >= 0 && e->rgd)
                        r = tc_table_flush(e->rgd);
                if (r >= 0)
                        r = tc_table_flush(e->gd);
                if (r < 0)
                        return r;
        }
        if (s->desc_dirty) {
                r = write_desc(s);
                if (r < 0)
                        return r;
                r = io_flush(s->io);
                if (r < 0)
                        return r;
                s->desc_dirty = false;
        }
        return 0;
}

/* ---------------------------------------------------------------- create */

typedef struct vmdk_create_opts {
        const char *subformat;
        const char *adapter;
        const char *hwversion;
        bool compat6, zeroed_grain, gt_on_demand;
        bool adapter_given;
} vmdk_create_opts;

static int parse_create_options(const char *const *o, vmdk_create_opts *ret) {
        static const char *const subformats[] = {
                "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
                "streamOptimized", "vmfs", NULL,
        };
        static const char *const adapters[] = { "ide", "buslogic", "lsilogic", "legacyESX", NULL };
        bool ok;

        *ret = (vmdk_create_opts) { .subformat = "monolithicSparse", .adapter = "ide", .hwversion = NULL };
        for (; o && o[0]; o += 2) {
                if (streq(o[0], "subformat"))
                        ret->subformat = o[1];
                else if (streq(o[0], "adapter_type")) {
                        ret->adapter = o[1];
                        ret->adapter_given = true;
                }
                else if (streq(o[0], "hwversion"))
                        ret->hwversion = streq(o[1], "undefined") ? NULL : o[1];
                else if (streq(o[0], "compat6"))
                        ret->compat6 = streq(o[1], "on");
                else if (streq(o[0], "zeroed_grain"))
                        ret->zeroed_grain = streq(o[1], "on");
                else if (streq(o[0], "gt_on_demand"))
                        ret->gt_on_demand = streq(o[1], "on");
        }
        ok = false;
        for (const char *const *f = subformats; *f; f++)
                if (streq(*f, ret->subformat))
                        ok = true;
        if (!ok)
                return vdisk_error(-EINVAL, "vmdk: unknown subformat '%s'", ret->subformat);
        ok = false;
        for (const char *const *a = adapters; *a; a++)
                if (streq(*a, ret->adapter))
                        ok = true;
        if (!ok)
                return vdisk_error(-EINVAL, "vmdk: unknown adapter type '%s'", ret->adapter);
        if (ret->hwversion) {
                uint64_t v;
                char *end;

                v = strtoull(ret->hwversion, &end, 10);
                if (*end || !*ret->hwversion || v == 0 || v > 99)
                        return vdisk_error(-EINVAL, "vmdk: bad hwversion '%s'", ret->hwversion);
                if (ret->compat6)
                        return vdisk_error(-EINVAL, "vmdk: compat6 cannot be used with hwversion");
        }
        return 0;
}

/* The sparse layout we create: header, descriptor (desc_sectors), then the
 * redundant GD and its GTs, then the GD and its GTs (qemu-img's layout);
 * grains from `overhead` (a grain multiple) on. With GTs on demand
 * (n_gt = 0) the directories are all zeros and nothing follows them. */
typedef struct sparse_layout {
        uint64_t capacity, grain, n_gd, n_gt, gd_sectors, gt_sectors;
        uint64_t desc_offset, desc_sectors, rgd, gd, overhead;
} sparse_layout;

static void sparse_layout_plan(uint64_t capacity, uint64_t desc_sectors, bool gt_on_demand, sparse_layout *l) {
        const uint64_t grain = 128, gtes = VMDK_GTES_MAX;

        *l = (sparse_layout) {
                .capacity = capacity,
                .grain = grain,
                .n_gd = DIV_ROUND_UP(capacity, grain * gtes),
                .gt_sectors = gtes * 4 / VMDK_SECTOR,
                .desc_offset = desc_sectors ? 1 : 0,
                .desc_sectors = desc_sectors,
        };
        l->n_gt = gt_on_demand ? 0 : l->n_gd;
        l->gd_sectors = DIV_ROUND_UP(l->n_gd * 4, VMDK_SECTOR);
        l->rgd = 1 + desc_sectors;
        l->gd = l->rgd + l->gd_sectors + l->n_gt * l->gt_sectors;
        l->overhead = ALIGN_UP(l->gd + l->gd_sectors + l->n_gt * l->gt_sectors, grain);
}

typedef struct gd_fill {
        uint64_t first_gt, gt_sectors;
} gd_fill;

static int gd_entry(void *ctx, uint64_t i, uint64_t *ret) {
        const gd_fill *f = ctx;

        *ret = f->gt_sectors ? f->first_gt + i * f->gt_sectors : 0;
        return 0;
}

static int sparse_write_new(vdisk_io *io, const sparse_layout *l, uint32_t version, uint32_t flags,
                            const char *desc, size_t desc_len) {
        uint8_t h[VMDK_SECTOR] = {};
        gd_fill f = { .gt_sectors = l->n_gt ? l->gt_sectors : 0 };
        int r;

        if (l->n_gt * l->gt_sectors + l->overhead > UINT32_MAX)
                return vdisk_error(-EFBIG, "vmdk: image too big for a sparse extent");
        put_le32(h + H_MAGIC, VMDK_MAGIC);
        put_le32(h + H_VERSION, version);
        put_le32(h + H_FLAGS, flags);
        put_le64(h + H_CAPACITY, l->capacity);
        put_le64(h + H_GRAIN, l->grain);
        put_le64(h + H_DESC_OFFSET, l->desc_offset);
        put_le64(h + H_DESC_SIZE, l->desc_sectors);
        put_le32(h + H_GTES, VMDK_GTES_MAX);
        put_le64(h + H_RGD, l->rgd);
        put_le64(h + H_GD, l->gd);
        put_le64(h + H_OVERHEAD, l->overhead);
        h[H_NL_CHARS] = '\n';
        h[H_NL_CHARS + 1] = ' ';
        h[H_NL_CHARS + 2] = '\r';
        h[H_NL_CHARS + 3] = '\n';
        r = io_truncate(io, l->overhead * VMDK_SECTOR);
        if (r < 0)
                return r;
        f.first_gt = l->rgd + l->gd_sectors;
        r = tc_write_entries(io, l->rgd * VMDK_SECTOR, l->n_gd, TC_LE32, 0, gd_entry, &f);
        if (r < 0)
                return r;
        f.first_gt = l->gd + l->gd_sectors;
        r = tc_write_entries(io, l->gd * VMDK_SECTOR, l->n_gd, TC_LE32, 0, gd_entry, &f);
        if (r < 0)
                return r;
        if (desc_len) {
                if (desc_len >= l->desc_sectors * VMDK_SECTOR)
                        return vdisk_error(-E2BIG, "vmdk: descriptor too long to embed");
                r = io_pwrite(io, desc, desc_len, l->desc_offset * VMDK_SECTOR);
                if (r < 0)
                        return r;
        }
        return io_pwrite(io, h, sizeof h, 0);
}

static const char *base_name(const char *path) {
        const char *b = strrchr(path, '/');

        return b ? b + 1 : path;
}

/* The parent's CID, when its descriptor can be read through the files handle. */
static uint32_t parent_cid_of(const open_ctx *c, const char *name) {
        vdisk_io *pio;
        uint8_t head[VMDK_SECTOR] = {};
        uint64_t size;
        vmdk_desc d = {};
        uint32_t cid = 0xffffffff;
        _cleanup_free_ char *text = NULL;
        size_t n;

        if (!name || !vmdk_desc_name_valid(name) || files_open(c->files, name, 0, &pio) < 0 ||
            io_get_size(pio, &size) < 0 || size < 4 || io_pread(pio, head, MIN(size, (uint64_t) VMDK_SECTOR), 0) < 0) {
                vdisk_clear_error();
                return cid;
        }
        if (get_le32(head) == VMDK_MAGIC) {
                vmdk_header h;

                header_decode(head, &h);
                if (header_check(head, &h, size, name) < 0 || h.desc_size == 0) {
                        vdisk_clear_error();
                        return cid;
                }
                n = (size_t) (h.desc_size * VMDK_SECTOR);
                text = calloc(1, n + 1);
                if (!text || io_pread_zerofill(pio, text, n, h.desc_offset * VMDK_SECTOR) < 0)
                        goto out;
        } else {
                if (size > VMDK_DESC_MAX)
                        return cid;
                n = (size_t) size;
                text = calloc(1, n + 1);
                if (!text || io_pread(pio, text, n, 0) < 0)
                        goto out;
        }
        if (vmdk_desc_parse(text, n, &d) >= 0 && vmdk_desc_get_cid(&d, "CID", &cid) < 0)
                cid = 0xffffffff;
        vmdk_desc_done(&d);
out:
        vdisk_clear_error();
        return cid;
}

#define VMDK_2G_EXTENT (UINT64_C(2) << 30)
#define VMDK_DESC_SECTORS 20u

static int stream_create(vmdk_state *s, const open_ctx *c, uint64_t capacity, const char *desc, size_t desc_len);

static int vmdk_create(void *state, const open_ctx *c, const create_params *p) {
        vmdk_state *s = state;
        vmdk_create_opts o;
        vmdk_desc d = {};
        uint64_t capacity = DIV_ROUND_UP(p->size, VMDK_SECTOR);
        bool split, flat, sparse_mono, stream, vmfs;
        _cleanup_free_ char *stem = NULL, *text = NULL;
        char buf[64], uuid[37];
        uint32_t version = 1, flags = VMDK_FLAG_NL_TEST | VMDK_FLAG_RGD;
        size_t len;
        vdisk_geometry g = p->lchs;
        int r;

        r = parse_create_options(p->options, &o);
        if (r < 0)
                return r;
        if (capacity > VMDK_CAPACITY_MAX)
                return vdisk_error(-EFBIG, "vmdk: at most %" PRIu64 " bytes", VMDK_CAPACITY_MAX * VMDK_SECTOR);
        split = strncmp(o.subformat, "twoGb", 5) == 0;
        /* ESX: a descriptor and NAME-flat.vmdk named by a VMFS extent line,
         * createType "vmfs", an LSI Logic adapter unless one is asked for
         * (ESX has no IDE default). */
        vmfs = streq(o.subformat, "vmfs");
        if (vmfs && !o.adapter_given)
                o.adapter = "lsilogic";
        flat = strstr(o.subformat, "Flat") != NULL || vmfs;
        stream = streq(o.subformat, "streamOptimized");
        sparse_mono = streq(o.subformat, "monolithicSparse") || stream;
        if (stream && (p->image_flags & VDISK_IMAGE_FLAGS_DIFF))
                return vdisk_error(-EOPNOTSUPP, "vmdk: a streamOptimized image cannot be a differencing image");
        if ((stream || flat) && o.gt_on_demand)
                return vdisk_error(-EOPNOTSUPP, "vmdk: gt_on_demand applies to sparse subformats only");
        if (stream && o.zeroed_grain)
                return vdisk_error(-EOPNOTSUPP, "vmdk: zeroed_grain does not apply to streamOptimized");
        if (o.zeroed_grain) {
                version = 2;
                flags |= VMDK_FLAG_ZEROED_GTE;
        }
        if (flat && (p->image_flags & VDISK_IMAGE_FLAGS_DIFF))
                return vdisk_error(-EOPNOTSUPP, "vmdk: a %s image cannot be a differencing image", o.subformat);

        stem = strdup(base_name(vdisk_io_name(c->io)));
        if (!stem)
                return -ENOMEM;
        if (strlen(stem) > 5 && strcasecmp(stem + strlen(stem) - 5, ".vmdk") == 0)
                stem[strlen(stem) - 5] = 0;

        snprintf(buf, sizeof buf, "%d", 1);
        r = vmdk_desc_set(&d, "version", buf, false);
        do {
                uint8_t u[16];
                vdisk_uuid_generate(u);
                s->cid = get_le32(u);
        } while (s->cid >= 0xfffffffe);
        snprintf(buf, sizeof buf, "%08" PRIx32, s->cid);
        if (r >= 0)
                r = vmdk_desc_set(&d, "CID", buf, false);
        /* The parent's CID from the core (its open image), else from its
         * descriptor when the files handle reaches it. */
        snprintf(buf, sizeof buf, "%08" PRIx32,
                 !(p->image_flags & VDISK_IMAGE_FLAGS_DIFF) ? 0xffffffffu :
                 p->has_parent_content_id ? p->parent_content_id : parent_cid_of(c, p->parent_name));
        if (r >= 0)
                r = vmdk_desc_set(&d, "parentCID", buf, false);
        if (r >= 0)
                r = vmdk_desc_set(&d, "createType", o.subformat, true);
        if (r >= 0 && (p->image_flags & VDISK_IMAGE_FLAGS_DIFF) && p->parent_name)
                r = vmdk_desc_set(&d, "parentFileNameHint", p->parent_name, true);
        if (r < 0)
                goto out;

        /* Extents: one, or 2 GiB pieces. */
        for (uint64_t done = 0, i = 1; done < capacity; i++) {
                uint64_t n = split ? MIN(capacity - done, VMDK_2G_EXTENT / VMDK_SECTOR) : capacity;
                _cleanup_free_ char *name = NULL;

                if (sparse_mono)
                        name = strdup(base_name(vdisk_io_name(c->io)));
                else if (split)
                        name = strdup_printf("%s-%c%03" PRIu64 ".vmdk", stem, flat ? 'f' : 's', i);
                else
                        name = strdup_printf("%s-flat.vmdk", stem);
                if (!name) {
                        r = -ENOMEM;
                        goto out;
                }
                if (i > 999) {
                        r = vdisk_error(-EFBIG, "vmdk: more than 999 extents");
                        goto out;
                }
                r = vmdk_desc_add_extent(&d, VMDK_ACCESS_RW,
                                         vmfs ? VMDK_EXTENT_VMFS : flat ? VMDK_EXTENT_FLAT : VMDK_EXTENT_SPARSE,
                                         n, name, 0);
                if (r < 0)
                        goto out;
                done += n;
        }

        /* DDB. */
        snprintf(buf, sizeof buf, "%s", o.hwversion ? o.hwversion : o.compat6 ? "6" : "4");
        r = vmdk_desc_set(&d, "ddb.virtualHWVersion", buf, true);
        if (!g.cylinders) {
                g.heads = streq(o.adapter, "ide") ? 16 : 255;
                g.sectors = 63;
                g.cylinders = (uint32_t) MIN(capacity / (g.heads * g.sectors), (uint64_t) 16383);
                if (!g.cylinders)
                        g.cylinders = 1;
        }
        snprintf(buf, sizeof buf, "%" PRIu32, g.cylinders);
        if (r >= 0)
                r = vmdk_desc_set(&d, "ddb.geometry.cylinders", buf, true);
        snprintf(buf, sizeof buf, "%" PRIu32, g.heads);
        if (r >= 0)
                r = vmdk_desc_set(&d, "ddb.geometry.heads", buf, true);
        snprintf(buf, sizeof buf, "%" PRIu32, g.sectors);
        if (r >= 0)
                r = vmdk_desc_set(&d, "ddb.geometry.sectors", buf, true);
        if (r >= 0)
                r = vmdk_desc_set(&d, "ddb.adapterType", o.adapter, true);
        vdisk_uuid_format(p->uuid, uuid);
        if (r >= 0)
                r = vmdk_desc_set(&d, "ddb.uuid.image", uuid, true);
        if (r >= 0 && (p->image_flags & VDISK_IMAGE_FLAGS_DIFF) && !vdisk_uuid_is_null(p->parent_uuid)) {
                vdisk_uuid_format(p->parent_uuid, uuid);
                r = vmdk_desc_set(&d, "ddb.uuid.parent", uuid, true);
        }
        if (r < 0)
                goto out;
        r = vmdk_desc_format(&d, &text, &len);
        if (r < 0)
                goto out;

        if (stream) {
                r = stream_create(s, c, capacity, text, len);
                vmdk_desc_done(&d);
                return r;
        }
        if (sparse_mono) {
                sparse_layout l;

                sparse_layout_plan(capacity, VMDK_DESC_SECTORS, o.gt_on_demand, &l);
                r = sparse_write_new(c->io, &l, version, flags, text, len);
                if (r < 0)
                        goto out;
        } else {
                r = io_pwrite(c->io, text, len, 0);
                if (r < 0)
                        goto out;
                for (size_t i = 0; i < d.n_extents; i++) {
                        vdisk_io *eio;

                        r = files_open(c->files, d.extents[i].file, FILES_CREATE | FILES_WRITE, &eio);
                        if (r < 0)
                                goto out;
                        if (flat)
                                r = io_truncate(eio, d.extents[i].sectors * VMDK_SECTOR);
                        else {
                                sparse_layout l;

                                sparse_layout_plan(d.extents[i].sectors, 0, o.gt_on_demand, &l);
                                r = sparse_write_new(eio, &l, version, flags, NULL, 0);
                        }
                        if (r < 0)
                                goto out;
                }
        }
        vmdk_desc_done(&d);
        return vmdk_open(state, c);
out:
        vmdk_desc_done(&d);
        return r;
}


/* ---------------------------------------------------------------- streamOptimized creation */

#define VMDK_MARKER_EOS   0u
#define VMDK_MARKER_GT    1u
#define VMDK_MARKER_GD    2u
#define VMDK_MARKER_FOOTER 3u
#define VMDK_STREAM_GRAIN (UINT64_C(128) * VMDK_SECTOR)

static size_t vmdk_encode_bound(const void *state, size_t len) {
        return VMDK_MARKER_SIZE + compressBound(VMDK_STREAM_GRAIN);
}

/* Deflate cannot shrink bytes whose values are all about equally frequent
 * (data that is compressed or encrypted already), and it is at its slowest
 * on them: some 16 MB/s a core here, against a memcpy for a stored block.
 * units_incompressible() samples four 4 KiB windows of the grain (the byte
 * histogram of the whole grain cost 2 % of a streamOptimized copy's CPU). */
static bool grain_incompressible(const uint8_t *p, size_t len) {
        return units_incompressible(p, len);
}

/* A zlib stream of stored deflate blocks (RFC 1950/1951): the header, blocks
 * of at most 65535 bytes, each with its length and the length's complement,
 * then the Adler-32 of the data. Returns its size. */
static size_t zlib_store(const uint8_t *in, size_t len, uint8_t *out) {
        size_t o = 0;

        out[o++] = 0x78;        /* deflate, 32 KiB window */
        out[o++] = 0x01;        /* no dictionary, fastest; (0x7801 % 31) == 0 */
        do {
                size_t n = MIN(len, (size_t) 65535);

                out[o++] = n == len ? 1 : 0;    /* BFINAL on the last block, BTYPE 00 */
                put_le16(out + o, (uint16_t) n);
                put_le16(out + o + 2, (uint16_t) ~n);
                o += 4;
                memcpy(out + o, in, n);
                o += n;
                in += n;
                len -= n;
        } while (len > 0);
        return o;
}

/* Every thread that encodes keeps one deflate stream and resets it per
 * grain: setting one up costs some 270 KiB of allocations, and freeing them
 * again per grain cost the copy a third of its time in page faults and TLB
 * shootdowns. Freed when the thread ends. */
static pthread_key_t deflate_key;
static pthread_once_t deflate_once = PTHREAD_ONCE_INIT;
static bool deflate_key_ok;

static void deflate_free(void *p) {
        deflateEnd(p);
        free(p);
}

static void deflate_key_init(void) {
        deflate_key_ok = pthread_key_create(&deflate_key, deflate_free) == 0;
}

static z_stream *thread_deflate(void) {
        z_stream *z;

        pthread_once(&deflate_once, deflate_key_init);
        if (!deflate_key_ok)
                return NULL;
        z = pthread_getspecific(deflate_key);
        if (z)
                return deflateReset(z) == Z_OK ? z : NULL;
        z = calloc(1, sizeof *z);
        if (!z)
                return NULL;
        if (deflateInit(z, Z_DEFAULT_COMPRESSION) != Z_OK) {
                free(z);
                return NULL;
        }
        if (pthread_setspecific(deflate_key, z) != 0) {
                deflate_free(z);
                return NULL;
        }
        return z;
}

#ifdef HAVE_LIBDEFLATE
/* With libdeflate (a whole-buffer deflate): the same kind of zlib stream
 * (RFC 1950, 32 KiB window, which any inflate reads; qemu inflates grains
 * with zlib's defaults) at the same level, for some 40 % of zlib's CPU and a
 * few % smaller grains (docs/performance.md). It cannot write qcow2's
 * compressed clusters: their readers inflate with a 4 KiB window, and
 * libdeflate cannot be held to one. Each encoding thread keeps a compressor
 * and a grain buffer for a short last grain's zero padding. */
typedef struct grain_deflater {
        struct libdeflate_compressor *c;
        uint8_t padded[VMDK_STREAM_GRAIN];
} grain_deflater;

static pthread_key_t libdeflate_key;
static pthread_once_t libdeflate_once = PTHREAD_ONCE_INIT;
static bool libdeflate_key_ok;

static void grain_deflater_free(void *p) {
        grain_deflater *g = p;

        libdeflate_free_compressor(g->c);
        free(g);
}

static void libdeflate_key_init(void) {
        libdeflate_key_ok = pthread_key_create(&libdeflate_key, grain_deflater_free) == 0;
}

static grain_deflater *thread_grain_deflater(void) {
        grain_deflater *g;

        pthread_once(&libdeflate_once, libdeflate_key_init);
        if (!libdeflate_key_ok)
                return NULL;
        g = pthread_getspecific(libdeflate_key);
        if (g)
                return g;
        g = calloc(1, sizeof *g);
        if (!g)
                return NULL;
        g->c = libdeflate_alloc_compressor(6);          /* zlib's default level */
        if (!g->c || pthread_setspecific(libdeflate_key, g) != 0) {
                libdeflate_free_compressor(g->c);
                free(g);
                return NULL;
        }
        return g;
}

/* The zlib stream of one whole grain (`in` zero-padded) into o[0, cap);
 * its size, or 0 when it does not fit. */
static size_t grain_libdeflate(grain_deflater *g, const void *in, size_t len, uint8_t *o, size_t cap) {
        if (len < VMDK_STREAM_GRAIN) {
                memcpy(g->padded, in, len);
                memset(g->padded + len, 0, VMDK_STREAM_GRAIN - len);
                in = g->padded;
        }
        return libdeflate_zlib_compress(g->c, in, VMDK_STREAM_GRAIN, o, cap);
}
#endif

/* One grain: the marker (lba filled by the writer, size) and the zlib data
 * of the grain, zero-padded to a whole grain (qemu wants whole grains).
 * Incompressible grains are stored (see grain_incompressible()). */
static int vmdk_encode(const void *state, const void *in, size_t len, void *out, size_t *ret_len) {
        static const uint8_t zeros[4096];
        uint8_t *o = (uint8_t *) out + VMDK_MARKER_SIZE;
        size_t n, bound = compressBound(VMDK_STREAM_GRAIN);
        z_stream *z;
        int zr;

        if (len > VMDK_STREAM_GRAIN)
                return -EINVAL;
        if (len == VMDK_STREAM_GRAIN && grain_incompressible(in, len)) {
                n = zlib_store(in, len, o);
                put_be32(o + n, (uint32_t) adler32(adler32(0, NULL, 0), in, (uInt) len));
                n += 4;
                goto done;
        }
#ifdef HAVE_LIBDEFLATE
        grain_deflater *g = thread_grain_deflater();

        if (!g)
                return vdisk_error(-ENOMEM, "vmdk: cannot set up libdeflate");
        n = grain_libdeflate(g, in, len, o, bound);
        if (n > 0)
                goto done;
        /* Out of room (it would not shrink): stored, zero-padded, by zlib. */
#endif
        z = thread_deflate();
        if (!z)
                return vdisk_error(-ENOMEM, "vmdk: cannot set up deflate");
        z->next_out = o;
        z->avail_out = (uInt) bound;
        z->next_in = (Bytef *) in;
        z->avail_in = (uInt) len;
        zr = len == 0 ? Z_OK : deflate(z, len == VMDK_STREAM_GRAIN ? Z_FINISH : Z_NO_FLUSH);
        /* The zero padding of a short last grain, a page at a time. */
        for (size_t pad = VMDK_STREAM_GRAIN - len; zr == Z_OK && pad > 0;) {
                size_t k = MIN(pad, sizeof zeros);

                z->next_in = (Bytef *) zeros;
                z->avail_in = (uInt) k;
                pad -= k;
                zr = deflate(z, pad == 0 ? Z_FINISH : Z_NO_FLUSH);
        }
        if (zr != Z_STREAM_END)
                return vdisk_error(-EIO, "vmdk: deflate failed");
        n = z->total_out;
done:
        put_le64(out, 0);
        put_le32((uint8_t *) out + 8, (uint32_t) n);
        *ret_len = VMDK_MARKER_SIZE + n;
        return 0;
}

/* The stream is written sequentially through a buffer of VMDK_WBUF bytes
 * (charged to the budget at creation): grains are some 64 KiB and markers
 * 512 bytes, and one write each cost a syscall and a trip through the page
 * cache apiece. The buffer goes out in large writes that start and end on
 * 4 KiB boundaries, which the fd io sends direct; the tail of less than
 * 4 KiB stays in the buffer for the next write. */
#define VMDK_WBUF (UINT64_C(2) << 20)
#define VMDK_WBUF_ALIGN UINT64_C(4096)

/* Writes what the buffer holds up to the last 4 KiB boundary, or all of it. */
static int stream_drain(vmdk_state *s, bool all) {
        uint64_t held = s->stream_next - s->stream_wbuf_off, n;
        int r;

        if (all)
                n = held;
        else if (ALIGN_DOWN(s->stream_next, VMDK_WBUF_ALIGN) > s->stream_wbuf_off)
                n = ALIGN_DOWN(s->stream_next, VMDK_WBUF_ALIGN) - s->stream_wbuf_off;
        else
                n = 0;
        if (n == 0)
                return 0;
        r = io_pwrite(s->io, s->stream_wbuf, (size_t) n, s->stream_wbuf_off);
        if (r < 0)
                return r;
        memmove(s->stream_wbuf, s->stream_wbuf + n, (size_t) (held - n));
        s->stream_wbuf_off += n;
        return 0;
}

/* Appends `len` bytes of `data` and `pad` zero bytes at stream_next. */
static int stream_append(vmdk_state *s, const void *data, size_t len, size_t pad) {
        uint64_t total = (uint64_t) len + pad;
        int r;

        if (s->stream_next - s->stream_wbuf_off + total > VMDK_WBUF) {
                r = stream_drain(s, false);
                if (r < 0)
                        return r;
        }
        if (s->stream_next - s->stream_wbuf_off + total > VMDK_WBUF) {
                /* Larger than the buffer (a GD of a huge disk): written as it is. */
                _cleanup_free_ uint8_t *buf = NULL;

                r = stream_drain(s, true);
                if (r < 0)
                        return r;
                buf = calloc(1, (size_t) total);
                if (!buf)
                        return -ENOMEM;
                memcpy(buf, data, len);
                r = io_pwrite(s->io, buf, (size_t) total, s->stream_next);
                if (r < 0)
                        return r;
                s->stream_next += total;
                s->stream_wbuf_off = s->stream_next;
                return 0;
        }
        memcpy(s->stream_wbuf + (s->stream_next - s->stream_wbuf_off), data, len);
        memset(s->stream_wbuf + (s->stream_next - s->stream_wbuf_off) + len, 0, pad);
        s->stream_next += total;
        return 0;
}

/* A marker sector of `type` saying `sectors` sectors of metadata follow. */
static int stream_marker(vmdk_state *s, uint32_t type, uint64_t sectors) {
        uint8_t m[VMDK_SECTOR] = {};

        put_le64(m, sectors);
        put_le32(m + 12, type);
        return stream_append(s, m, sizeof m, 0);
}

static int stream_write_meta(vmdk_state *s, uint32_t type, const void *data, size_t len) {
        size_t padded = ALIGN_UP(len, (size_t) VMDK_SECTOR);
        int r;

        r = stream_marker(s, type, padded / VMDK_SECTOR);
        if (r < 0)
                return r;
        return len == 0 ? 0 : stream_append(s, data, len, padded - len);
}

/* Writes the GT being filled (if any) and records it in the GD. */
static int stream_close_gt(vmdk_state *s) {
        uint8_t gt[VMDK_GTES_MAX * 4];
        int r;

        if (s->stream_cur_gt == UINT64_MAX)
                return 0;
        for (unsigned i = 0; i < VMDK_GTES_MAX; i++)
                put_le32(gt + 4 * i, s->stream_gt[i]);
        r = stream_marker(s, VMDK_MARKER_GT, sizeof gt / VMDK_SECTOR);
        if (r < 0)
                return r;
        s->stream_gd[s->stream_cur_gt] = (uint32_t) (s->stream_next / VMDK_SECTOR);
        r = stream_append(s, gt, sizeof gt, 0);
        if (r < 0)
                return r;
        s->stream_cur_gt = UINT64_MAX;
        return 0;
}

static int vmdk_stream_write_encoded(void *state, uint64_t offset, size_t len, const void *enc, size_t enc_len) {
        vmdk_state *s = state;
        uint64_t g = offset / VMDK_STREAM_GRAIN, gt = g / VMDK_GTES_MAX;
        size_t padded = ALIGN_UP(enc_len, (size_t) VMDK_SECTOR);
        uint8_t marker[VMDK_MARKER_SIZE];
        uint64_t at;
        int r;

        if (!s->stream || s->stream_done || offset % VMDK_STREAM_GRAIN || offset < s->stream_min ||
            enc_len < VMDK_MARKER_SIZE || s->stream_next / VMDK_SECTOR + padded / VMDK_SECTOR > UINT32_MAX)
                return vdisk_error(-EOPNOTSUPP, "vmdk: streamOptimized images take whole grains in order");
        if (gt != s->stream_cur_gt) {
                r = stream_close_gt(s);
                if (r < 0)
                        return r;
                memset(s->stream_gt, 0, VMDK_GTES_MAX * 4);
                s->stream_cur_gt = gt;
        }
        /* The marker: the grain's lba, then the size encode() put there. */
        memcpy(marker, enc, VMDK_MARKER_SIZE);
        put_le64(marker, g * (VMDK_STREAM_GRAIN / VMDK_SECTOR));
        at = s->stream_next;
        r = stream_append(s, marker, VMDK_MARKER_SIZE, 0);
        if (r < 0)
                return r;
        r = stream_append(s, (const uint8_t *) enc + VMDK_MARKER_SIZE, enc_len - VMDK_MARKER_SIZE, padded - enc_len);
        if (r < 0)
                return r;
        s->stream_gt[g % VMDK_GTES_MAX] = (uint32_t) (at / VMDK_SECTOR);
        s->stream_min = offset + len;
        return 0;
}

static int vmdk_stream_write(void *state, uint64_t offset, const void *buf, size_t len) {
        vmdk_state *s = state;

        while (len > 0) {
                size_t n = (size_t) MIN((uint64_t) len, VMDK_STREAM_GRAIN - offset % VMDK_STREAM_GRAIN);
                _cleanup_free_ uint8_t *enc = NULL;
                size_t enc_len;
                int r;

                if (offset % VMDK_STREAM_GRAIN || (n < VMDK_STREAM_GRAIN && offset + n < s->size))
                        return vdisk_error(-EOPNOTSUPP, "vmdk: streamOptimized images take whole grains in order");
                enc = malloc(vmdk_encode_bound(s, n));
                if (!enc)
                        return -ENOMEM;
                r = vmdk_encode(s, buf, n, enc, &enc_len);
                if (r < 0)
                        return r;
                r = vmdk_stream_write_encoded(s, offset, n, enc, enc_len);
                if (r < 0)
                        return r;
                offset += n;
                buf = (const uint8_t *) buf + n;
                len -= n;
        }
        return 0;
}

/* GT of the last grains, the GD, the footer (the header with the GD's
 * place), the end-of-stream marker; then reads come from the file. */
static int vmdk_finish(void *state) {
        vmdk_state *s = state;
        _cleanup_free_ uint8_t *gd = NULL;
        uint8_t foot[VMDK_SECTOR];
        uint64_t gd_sector;
        int r;

        if (!s->stream || s->stream_done)
                return 0;
        r = stream_close_gt(s);
        if (r < 0)
                return r;
        gd = calloc(1, ALIGN_UP(s->stream_n_gd * 4, (uint64_t) VMDK_SECTOR));
        if (!gd)
                return -ENOMEM;
        for (uint64_t i = 0; i < s->stream_n_gd; i++)
                put_le32(gd + 4 * i, s->stream_gd[i]);
        r = stream_marker(s, VMDK_MARKER_GD, DIV_ROUND_UP(s->stream_n_gd * 4, VMDK_SECTOR));
        if (r < 0)
                return r;
        gd_sector = s->stream_next / VMDK_SECTOR;
        r = stream_append(s, gd, (size_t) ALIGN_UP(s->stream_n_gd * 4, (uint64_t) VMDK_SECTOR), 0);
        if (r < 0)
                return r;
        memcpy(foot, s->stream_header, VMDK_SECTOR);
        put_le64(foot + H_GD, gd_sector);
        r = stream_marker(s, VMDK_MARKER_FOOTER, 1);
        if (r < 0)
                return r;
        r = stream_append(s, foot, sizeof foot, 0);
        if (r < 0)
                return r;
        r = stream_write_meta(s, VMDK_MARKER_EOS, NULL, 0);
        if (r < 0)
                return r;
        r = stream_drain(s, true);
        if (r < 0)
                return r;
        free(s->stream_wbuf);
        s->stream_wbuf = NULL;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        if (s->desc_dirty) {
                r = write_desc(s);
                if (r < 0)
                        return r;
                s->desc_dirty = false;
        }
        s->stream_done = true;
        /* From now on the image reads from what was written. */
        extent_free(&s->ext[0]);
        r = io_get_size(s->io, &s->ext[0].file_size);
        if (r < 0)
                return r;
        r = sparse_open(s, &s->ext[0], vdisk_io_name(s->io), s->stream_header);
        if (r < 0)
                return r;
        return 0;
}

static int stream_create(vmdk_state *s, const open_ctx *c, uint64_t capacity, const char *desc, size_t desc_len) {
        uint8_t *h = s->stream_header;
        int r;

        s->io = c->io;
        s->writable = 1;
        s->budget = c->budget;
        s->embedded = true;
        s->stream = true;
        s->stream_capacity = capacity;
        s->stream_n_gd = DIV_ROUND_UP(capacity, (VMDK_STREAM_GRAIN / VMDK_SECTOR) * VMDK_GTES_MAX);
        s->stream_cur_gt = UINT64_MAX;
        s->size = capacity * VMDK_SECTOR;
        s->stream_charged = s->stream_n_gd * 4 + VMDK_GTES_MAX * 4 + VMDK_WBUF;
        r = tc_budget_charge(s->budget, s->stream_charged);
        if (r < 0) {
                s->stream_charged = 0;
                return r;
        }
        s->stream_gd = calloc(s->stream_n_gd, 4);
        s->stream_gt = calloc(VMDK_GTES_MAX, 4);
        s->stream_wbuf = buf_alloc(VMDK_WBUF);
        s->ext = calloc(1, sizeof *s->ext);
        if (!s->stream_gd || !s->stream_gt || !s->stream_wbuf || !s->ext)
                return -ENOMEM;
        s->n_ext = 1;
        s->ext[0] = (vmdk_extent) { .type = VMDK_EXTENT_SPARSE, .io = c->io, .size = s->size,
                                    .grain = VMDK_STREAM_GRAIN };
        memset(h, 0, VMDK_SECTOR);
        put_le32(h + H_MAGIC, VMDK_MAGIC);
        put_le32(h + H_VERSION, 3);
        put_le32(h + H_FLAGS, VMDK_FLAG_NL_TEST | VMDK_FLAG_COMPRESSED | VMDK_FLAG_MARKERS);
        put_le64(h + H_CAPACITY, capacity);
        put_le64(h + H_GRAIN, VMDK_STREAM_GRAIN / VMDK_SECTOR);
        put_le64(h + H_DESC_OFFSET, 1);
        put_le64(h + H_DESC_SIZE, VMDK_DESC_SECTORS);
        put_le32(h + H_GTES, VMDK_GTES_MAX);
        put_le64(h + H_GD, VMDK_GD_AT_END);
        put_le64(h + H_OVERHEAD, VMDK_STREAM_GRAIN / VMDK_SECTOR);
        h[H_NL_CHARS] = '\n';
        h[H_NL_CHARS + 1] = ' ';
        h[H_NL_CHARS + 2] = '\r';
        h[H_NL_CHARS + 3] = '\n';
        put_le16(h + H_COMPRESS, CODEC_DEFLATE);
        if (desc_len >= VMDK_DESC_SECTORS * VMDK_SECTOR)
                return vdisk_error(-E2BIG, "vmdk: descriptor too long to embed");
        r = io_pwrite(c->io, h, VMDK_SECTOR, 0);
        if (r < 0)
                return r;
        r = io_truncate(c->io, VMDK_STREAM_GRAIN);
        if (r < 0)
                return r;
        r = io_pwrite(c->io, desc, desc_len, VMDK_SECTOR);
        if (r < 0)
                return r;
        s->stream_next = s->stream_wbuf_off = VMDK_STREAM_GRAIN;
        return vmdk_desc_parse(desc, desc_len, &s->desc) < 0 ? -EINVAL : 0;
}


/* ---------------------------------------------------------------- resize */

/* Rebuilds the extent's tables from the file (after everything was flushed):
 * the GD and redundant GD where the header says, one view of the whole file. */
static int sparse_reload(vmdk_state *s, vmdk_extent *e, const char *name) {
        uint8_t hdr[VMDK_SECTOR];
        int r;

        extent_free(e);
        r = io_get_size(e->io, &e->file_size);
        if (r < 0)
                return r;
        r = io_pread(e->io, hdr, VMDK_SECTOR, 0);
        if (r < 0)
                return r;
        e->alloc_ready = false;
        return sparse_open(s, e, name, hdr);
}

static int gd_copy_entry(void *ctx, uint64_t i, uint64_t *ret) {
        const uint64_t *v = ctx;

        *ret = v[i];
        return 0;
}

/* Before a sparse extent grows to `capacity` sectors: entries past the old
 * end in its last grain table are cleared (a shrink leaves them), and a
 * last grain shorter than a grain (a capacity that was no grain multiple)
 * whose space may be followed by another grain is copied to a whole grain at
 * the end of the file. Both through the tables, flushed: the extent reads
 * the same before the header changes. */
static int grow_last_grain(vmdk_state *s, vmdk_extent *e, uint64_t capacity) {
        uint64_t old_grains = DIV_ROUND_UP(e->h.capacity, e->h.grain);
        uint64_t new_grains = DIV_ROUND_UP(capacity, e->h.grain), gts = 0, v = 0, host;
        _cleanup_free_ uint8_t *buf = NULL;
        size_t old_len;
        int r;

        for (uint64_t g = old_grains; g < new_grains && g / e->h.gtes < e->n_gd; g++) {
                r = gte_get(e, g, &v);
                if (r < 0)
                        return r;
                if (v == 0)
                        continue;
                if (e->rgd)
                        r = set_gte(e, e->rgd, g, 0);
                if (r >= 0)
                        r = set_gte(e, e->gd, g, 0);
                if (r < 0)
                        return r;
        }
        if (e->h.capacity % e->h.grain) {
                uint64_t g = old_grains - 1;

                r = gt_sector(e, g, e->gd, &gts);
                if (r >= 0 && gts)
                        r = gte_get(e, g, &v);
                if (r < 0)
                        return r;
                if (gts && v > 1) {
                        old_len = (size_t) ((e->h.capacity - g * e->h.grain) * VMDK_SECTOR);
                        buf = calloc(1, e->grain);
                        if (!buf)
                                return -ENOMEM;
                        r = io_pread(e->io, buf, old_len, v * VMDK_SECTOR);
                        if (r < 0)
                                return r;
                        r = io_get_size(e->io, &host);
                        if (r < 0)
                                return r;
                        host = ALIGN_UP(host, (uint64_t) VMDK_SECTOR);
                        if ((host + e->grain) / VMDK_SECTOR > UINT32_MAX)
                                return vdisk_error(-EFBIG, "vmdk: the extent file would pass 2 TiB");
                        r = io_pwrite(e->io, buf, e->grain, host);
                        if (r < 0)
                                return r;
                        e->file_size = host + e->grain;
                        if (e->rgd)
                                r = set_gte(e, e->rgd, g, host / VMDK_SECTOR);
                        if (r >= 0)
                                r = set_gte(e, e->gd, g, host / VMDK_SECTOR);
                        if (r < 0)
                                return r;
                }
        }
        return vmdk_flush(s);
}

/* Grows a hosted sparse extent to `capacity` sectors. The grain directories
 * grow in place when their last sector has room, else new ones go to the
 * end of the file (the old ones leak); when the extent had every grain
 * table preallocated (qemu-img's layout, which qemu needs to write), the new
 * range gets preallocated tables too. The header is rewritten last, in one
 * sector: a crash before it leaves the extent as it was. */
static int desc_set_sectors(vmdk_state *s, vmdk_extent_desc *d, uint64_t sectors);

static int sparse_grow(vmdk_state *s, vmdk_extent *e, vmdk_extent_desc *d, uint64_t capacity, const char *name) {
        int k;
        uint64_t n_gd = DIV_ROUND_UP(capacity, e->h.grain * e->h.gtes), gd_bytes = n_gd * 4;
        uint64_t gt_bytes = (uint64_t) e->h.gtes * 4, end, gd_at, rgd_at;
        _cleanup_free_ uint64_t *gd = NULL, *rgd = NULL;
        uint8_t hdr[VMDK_SECTOR];
        bool prealloc = true, move;
        int r;

        if (e->compressed)
                return vdisk_error(-EOPNOTSUPP, "vmdk: %s: compressed extents are not resized", name);
        if (gd_bytes > VMDK_GD_BYTES_MAX)
                return vdisk_error(-EFBIG, "vmdk: %s: a grain directory of %" PRIu64 " entries is too big", name,
                                   n_gd);
        if (gt_bytes % VMDK_SECTOR)
                return vdisk_error(-EOPNOTSUPP, "vmdk: %s: %" PRIu32 " entries per grain table", name, e->h.gtes);
        gd = calloc(n_gd, sizeof *gd);
        rgd = calloc(n_gd, sizeof *rgd);
        if (!gd || !rgd)
                return -ENOMEM;
        for (uint64_t i = 0; i < e->n_gd; i++) {
                r = tc_get(e->gd, i, &gd[i]);
                if (r >= 0 && e->rgd)
                        r = tc_get(e->rgd, i, &rgd[i]);
                if (r < 0)
                        return r;
                if (gd[i] == 0)
                        prealloc = false;
        }
        r = grow_last_grain(s, e, capacity);
        if (r < 0)
                return r;
        r = io_get_size(e->io, &end);
        if (r < 0)
                return r;
        end = ALIGN_UP(end, (uint64_t) VMDK_SECTOR);
        move = DIV_ROUND_UP(gd_bytes, VMDK_SECTOR) > DIV_ROUND_UP(e->n_gd * 4, VMDK_SECTOR);
        gd_at = e->h.gd;
        rgd_at = e->h.rgd;
        if (move) {
                if (e->rgd) {
                        rgd_at = end / VMDK_SECTOR;
                        end += ALIGN_UP(gd_bytes, (uint64_t) VMDK_SECTOR);
                }
                gd_at = end / VMDK_SECTOR;
                end += ALIGN_UP(gd_bytes, (uint64_t) VMDK_SECTOR);
        }
        /* New grain tables: zeros (fresh space at the end of the file). */
        for (uint64_t i = e->n_gd; prealloc && i < n_gd; i++) {
                if (e->rgd) {
                        rgd[i] = end / VMDK_SECTOR;
                        end += gt_bytes;
                }
                gd[i] = end / VMDK_SECTOR;
                end += gt_bytes;
        }
        if (end / VMDK_SECTOR > UINT32_MAX)
                return vdisk_error(-EFBIG, "vmdk: %s: the extent file would pass 2 TiB", name);
        r = io_truncate(e->io, MAX(end, e->file_size));
        if (r < 0)
                return r;
        if (e->rgd) {
                r = tc_write_entries(e->io, rgd_at * VMDK_SECTOR, n_gd, TC_LE32, 0, gd_copy_entry, rgd);
                if (r < 0)
                        return r;
        }
        r = tc_write_entries(e->io, gd_at * VMDK_SECTOR, n_gd, TC_LE32, 0, gd_copy_entry, gd);
        if (r < 0)
                return r;
        r = io_flush(e->io);
        if (r < 0)
                return r;
        r = io_pread(e->io, hdr, VMDK_SECTOR, 0);
        if (r < 0)
                return r;
        put_le64(hdr + H_CAPACITY, capacity);
        put_le64(hdr + H_GD, gd_at);
        if (e->rgd)
                put_le64(hdr + H_RGD, rgd_at);
        /* The descriptor's extent line, then the header: the header is what
         * sizes an embedded extent, so a failure before it changes nothing. */
        uint64_t old_sectors = d->sectors;
        r = desc_set_sectors(s, d, capacity);
        if (r < 0)
                return r;
        r = io_pwrite(e->io, hdr, VMDK_SECTOR, 0);
        if (r < 0) {
                d->sectors = old_sectors;   /* written again at the next flush */
                return r;
        }
        /* Written: the new size holds even if this flush fails (the next
         * one makes it durable). */
        r = io_flush(e->io);
        k = sparse_reload(s, e, name);
        return r < 0 ? r : k;
}

/* Records the extent's new size in the descriptor and writes it; on failure
 * the old size stays in memory (and is written again at the next flush). */
static int desc_set_sectors(vmdk_state *s, vmdk_extent_desc *d, uint64_t sectors) {
        uint64_t old = d->sectors;
        int r;

        d->sectors = sectors;
        s->desc_dirty = true;
        r = vmdk_flush(s);
        if (r < 0)
                d->sectors = old;
        return r;
}

/* Shrinks the last extent to `capacity` sectors (the core checked that the
 * range cut off reads zeros). Sparse: the header's capacity first (one
 * sector), then the descriptor, then the grain entries past the end are
 * cleared (grow clears them too, should a crash leave them); flat: the
 * descriptor, then the file is cut. */
static int shrink_last(vmdk_state *s, vmdk_extent *e, vmdk_extent_desc *d, uint64_t capacity) {
        const char *name = d->file ? d->file : vdisk_io_name(s->io);
        int r;

        r = vmdk_flush(s);
        if (r < 0)
                return r;
        if (e->type == VMDK_EXTENT_SPARSE) {
                uint8_t hdr[VMDK_SECTOR];
                uint64_t first = DIV_ROUND_UP(capacity, e->h.grain), n = DIV_ROUND_UP(e->h.capacity, e->h.grain);

                if (e->compressed)
                        return vdisk_error(-EOPNOTSUPP, "vmdk: %s: compressed extents are not resized", name);
                uint64_t old_sectors = d->sectors;

                r = io_pread(e->io, hdr, VMDK_SECTOR, 0);
                if (r < 0)
                        return r;
                put_le64(hdr + H_CAPACITY, capacity);
                r = desc_set_sectors(s, d, capacity);
                if (r < 0)
                        return r;
                r = io_pwrite(e->io, hdr, VMDK_SECTOR, 0);
                if (r < 0) {
                        d->sectors = old_sectors;
                        return r;
                }
                r = io_flush(e->io);
                if (r < 0) {
                        /* written: the new size holds (the next flush makes it durable) */
                        int k = sparse_reload(s, e, name);

                        s->size = e->start + e->size;
                        return k < 0 ? k : r;
                }
                for (uint64_t g = first; g < n; g++) {
                        uint64_t v;

                        r = gte_get(e, g, &v);
                        if (r < 0)
                                return r;
                        if (v == 0)
                                continue;
                        if (e->rgd)
                                r = set_gte(e, e->rgd, g, 0);
                        if (r >= 0)
                                r = set_gte(e, e->gd, g, 0);
                        if (r < 0)
                                return r;
                }
                r = vmdk_flush(s);
                if (r >= 0)
                        r = sparse_reload(s, e, name);
                if (r < 0)
                        return r;
        } else if (e->type == VMDK_EXTENT_FLAT || e->type == VMDK_EXTENT_VMFS) {
                r = desc_set_sectors(s, d, capacity);
                if (r < 0)
                        return r;
                if (e->flat_offset == 0 && e->file_size > capacity * VMDK_SECTOR) {
                        r = io_truncate(e->io, capacity * VMDK_SECTOR);
                        if (r >= 0)
                                r = io_flush(e->io);
                        if (r < 0)
                                return r;
                        e->file_size = capacity * VMDK_SECTOR;
                }
        } else
                return vdisk_error(-EOPNOTSUPP, "vmdk: a %s extent cannot shrink", vmdk_extent_type_name(e->type));
        e->size = capacity * VMDK_SECTOR;
        s->size = e->start + e->size;
        return 0;
}

/* Grows a twoGbMaxExtent* image past what its last extent can hold: the
 * last extent to 2 GiB, then new extent files of at most 2 GiB each, named as
 * qemu-img and VMware name them (STEM-s00N.vmdk, STEM-f00N.vmdk: N is the
 * extent's number, STEM the descriptor's name without .vmdk) and made
 * through the files handle (the disk's resolver) like create makes them:
 * sparse ones with every grain table preallocated (qemu writes only those),
 * in the last extent's header version and flags. The order keeps a failure
 * readable: first the new files, complete and flushed but named nowhere
 * (a failure leaves them unused: a later attempt is -EEXIST, naming the
 * file); then the last extent grows (header and extent line: a valid image
 * of an intermediate size); then the descriptor names the new extents, in
 * one write. */
static int split_grow(vmdk_state *s, uint64_t new_size) {
        size_t n_old = s->n_ext, n_desc = s->desc.n_extents, n_new;
        vmdk_extent *last = &s->ext[n_old - 1], *ext;
        vmdk_extent_desc *ld = &s->desc.extents[n_old - 1];
        bool flat = last->type == VMDK_EXTENT_FLAT;
        uint64_t at = last->start + MAX(last->size, VMDK_2G_EXTENT), start;
        _cleanup_free_ char *stem = NULL;
        char **names = NULL;
        int r = 0;

        if (last->type != VMDK_EXTENT_SPARSE && last->type != VMDK_EXTENT_FLAT)
                return vdisk_error(-EOPNOTSUPP, "vmdk: the last extent is %s: new extents are not added after it",
                                   vmdk_extent_type_name(last->type));
        if (last->type == VMDK_EXTENT_SPARSE && last->compressed)
                return vdisk_error(-EOPNOTSUPP, "vmdk: compressed extents are not resized");
        n_new = (size_t) DIV_ROUND_UP(new_size - at, VMDK_2G_EXTENT);
        if (n_old + n_new > 999)
                return vdisk_error(-EFBIG, "vmdk: more than 999 extents");
        stem = strdup(base_name(vdisk_io_name(s->io)));
        names = calloc(n_new, sizeof *names);
        ext = reallocarray(s->ext, n_old + n_new, sizeof *s->ext);
        if (ext)
                s->ext = ext;
        if (!stem || !names || !ext) {
                r = -ENOMEM;
                goto out;
        }
        memset(s->ext + n_old, 0, n_new * sizeof *s->ext);
        last = &s->ext[n_old - 1];
        if (strlen(stem) > 5 && strcasecmp(stem + strlen(stem) - 5, ".vmdk") == 0)
                stem[strlen(stem) - 5] = 0;

        /* 1. The new files. */
        for (size_t k = 0; k < n_new; k++) {
                uint64_t sectors = MIN(new_size - at - k * VMDK_2G_EXTENT, VMDK_2G_EXTENT) / VMDK_SECTOR;
                vdisk_io *io;

                names[k] = strdup_printf("%s-%c%03zu.vmdk", stem, flat ? 'f' : 's', n_old + k + 1);
                if (!names[k]) {
                        r = -ENOMEM;
                        goto out;
                }
                r = files_open(s->files, names[k], FILES_CREATE | FILES_WRITE, &io);
                if (r < 0)
                        goto out;
                if (flat)
                        r = io_truncate(io, sectors * VMDK_SECTOR);
                else {
                        uint32_t flags = last->h.flags & (VMDK_FLAG_NL_TEST | VMDK_FLAG_RGD | VMDK_FLAG_ZEROED_GTE);
                        sparse_layout l;

                        sparse_layout_plan(sectors, 0, false, &l);
                        r = sparse_write_new(io, &l, last->h.version, flags, NULL, 0);
                }
                if (r >= 0)
                        r = io_flush(io);
                if (r < 0)
                        goto out;
        }

        /* 2. The last extent to 2 GiB. */
        if (last->size < VMDK_2G_EXTENT) {
                uint64_t capacity = VMDK_2G_EXTENT / VMDK_SECTOR;

                if (flat) {
                        if (last->flat_offset + VMDK_2G_EXTENT > last->file_size) {
                                r = io_truncate(last->io, last->flat_offset + VMDK_2G_EXTENT);
                                if (r >= 0)
                                        r = io_flush(last->io);
                                if (r < 0)
                                        goto out;
                                last->file_size = last->flat_offset + VMDK_2G_EXTENT;
                        }
                        r = desc_set_sectors(s, ld, capacity);
                        if (r >= 0)
                                last->size = VMDK_2G_EXTENT;
                } else
                        r = sparse_grow(s, last, ld, capacity, ld->file ? ld->file : vdisk_io_name(s->io));
                s->size = last->start + last->size;
                if (r < 0)
                        goto out;
        }

        /* 3. The descriptor names them. */
        for (size_t k = 0; k < n_new && r >= 0; k++)
                r = vmdk_desc_add_extent(&s->desc, VMDK_ACCESS_RW, flat ? VMDK_EXTENT_FLAT : VMDK_EXTENT_SPARSE,
                                         MIN(new_size - at - k * VMDK_2G_EXTENT, VMDK_2G_EXTENT) / VMDK_SECTOR,
                                         names[k], 0);
        if (r >= 0) {
                s->desc_dirty = true;
                r = vmdk_flush(s);
        }
        if (r < 0) {
                /* Not named (or the write failed: written again at the
                 * next flush only if the extents are kept, and they are not). */
                for (size_t i = n_desc; i < s->desc.n_extents; i++)
                        free(s->desc.extents[i].file);
                s->desc.n_extents = n_desc;
                goto out;
        }

        /* 4. Opened as at open. */
        start = s->ext[n_old - 1].start + s->ext[n_old - 1].size;
        for (size_t i = n_old; i < n_old + n_new; i++) {
                s->n_ext = i + 1;
                r = open_extent(s, s->files, false, i, start);
                if (r < 0)
                        goto out;
                start += s->ext[i].size;
        }
        s->size = start;
out:
        for (size_t k = 0; names && k < n_new; k++)
                free(names[k]);
        free(names);
        return r;
}

/* Resizes the image in its last extent: growing it (a sparse one as above,
 * a flat one by growing its file), then the descriptor records the new
 * size; or shrinking it. A twoGbMaxExtent* image grows past 2 GiB in its
 * last extent by new extent files (split_grow). Extent files are never
 * dropped: a shrink below the last extent's start is refused (qemu-img
 * refuses to shrink any VMDK). */
static int vmdk_resize(void *state, uint64_t new_size, vdisk_progress *p) {
        vmdk_state *s = state;
        vmdk_extent *e;
        vmdk_extent_desc *d;
        uint64_t capacity, grow;
        const char *name;
        int r;

        if (s->stream)
                return vdisk_error(-EROFS, "vmdk: streamOptimized images are not changed");
        if (new_size == s->size)
                return 0;
        if (new_size % VMDK_SECTOR)
                return vdisk_error(-EINVAL, "vmdk: the size must be a multiple of %u bytes", VMDK_SECTOR);
        if (new_size > VMDK_CAPACITY_MAX * VMDK_SECTOR)
                return vdisk_error(-EFBIG, "vmdk: at most %" PRIu64 " bytes", VMDK_CAPACITY_MAX * VMDK_SECTOR);
        if (s->n_ext == 0 || s->desc.n_extents != s->n_ext)
                return vdisk_error(-EOPNOTSUPP, "vmdk: the image has no descriptor to record the size in");
        e = &s->ext[s->n_ext - 1];
        d = &s->desc.extents[s->n_ext - 1];
        name = d->file ? d->file : vdisk_io_name(s->io);
        if (new_size <= e->start)
                return vdisk_error(-EOPNOTSUPP, "vmdk: shrinking below the last extent would drop extent "
                                   "files: refused (qemu-img refuses to shrink any VMDK; convert the image "
                                   "instead)");
        if (new_size < s->size)
                return shrink_last(s, e, d, (new_size - e->start) / VMDK_SECTOR);
        grow = new_size - s->size;
        capacity = (e->size + grow) / VMDK_SECTOR;
        /* Everything committed goes out first: the tables are rebuilt. */
        r = vmdk_flush(s);
        if (r < 0)
                return r;
        if (s->create_type && strncasecmp(s->create_type, "twoGbMaxExtent", 14) == 0 &&
            e->size + grow > VMDK_2G_EXTENT)
                return split_grow(s, new_size);
        switch (e->type) {
        case VMDK_EXTENT_SPARSE:
                r = sparse_grow(s, e, d, capacity, name);
                break;
        case VMDK_EXTENT_FLAT:
        case VMDK_EXTENT_VMFS:
                if (e->flat_offset + capacity * VMDK_SECTOR > e->file_size) {
                        r = io_truncate(e->io, e->flat_offset + capacity * VMDK_SECTOR);
                        if (r >= 0)
                                r = io_flush(e->io);
                        if (r >= 0)
                                e->file_size = e->flat_offset + capacity * VMDK_SECTOR;
                }
                if (r >= 0)
                        r = desc_set_sectors(s, d, capacity);
                break;
        default:
                return vdisk_error(-EOPNOTSUPP, "vmdk: a %s extent cannot grow", vmdk_extent_type_name(e->type));
        }
        /* A sparse extent's size is its header's (reloaded once written). */
        if (r >= 0 && e->type != VMDK_EXTENT_SPARSE)
                e->size = capacity * VMDK_SECTOR;
        s->size = e->start + e->size;
        return r;
}

/* ---------------------------------------------------------------- check */

typedef struct used_range {
        uint64_t sector, sectors;
        uint64_t g;                     /* the grain, or UINT64_MAX for metadata */
} used_range;

static int cmp_used(const void *a, const void *b) {
        const used_range *x = a, *y = b;

        return x->sector < y->sector ? -1 : x->sector > y->sector;
}

typedef struct check_ctx {
        vmdk_state *s;
        vmdk_extent *e;
        size_t idx;
        vdisk_check_report *rep;
        bool fix_all, fix_leaks;        /* repairs to make (not a dry run) */
        uint64_t msgs, n_alloc;
        used_range *used;
        size_t n_used, cap_used;
} check_ctx;

#define VMDK_CHECK_MESSAGES 16u

static void check_msg(check_ctx *c, const char *fmt, ...) _printf_(2, 3);
static void check_msg(check_ctx *c, const char *fmt, ...) {
        char buf[256];
        va_list ap;

        if (c->msgs++ >= VMDK_CHECK_MESSAGES)
                return;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        check_report_add(c->rep, "extent %zu: %s", c->idx, buf);
}

static int used_add(check_ctx *c, uint64_t sector, uint64_t sectors, uint64_t g) {
        if (c->n_used == c->cap_used) {
                size_t n = c->cap_used ? 2 * c->cap_used : 256;
                used_range *u = reallocarray(c->used, n, sizeof *u);

                if (!u)
                        return -ENOMEM;
                c->used = u;
                c->cap_used = n;
        }
        c->used[c->n_used++] = (used_range) { .sector = sector, .sectors = sectors, .g = g };
        return 0;
}

/* Space for a new grain table at the end of the extent file (repair). */
static int meta_alloc(vmdk_extent *e, uint64_t *ret_sector) {
        uint64_t host;
        int r;

        if (!e->alloc_ready) {
                hostalloc_init(&e->alloc, ALIGN_UP(e->file_size, (uint64_t) VMDK_SECTOR), e->file_size,
                               VMDK_SECTOR);
                e->alloc_ready = true;
        }
        r = hostalloc_alloc(&e->alloc, (uint64_t) e->h.gtes * 4, (UINT64_C(1) << 32) * VMDK_SECTOR, &host, NULL);
        if (r < 0)
                return vdisk_error(r, "vmdk: extent file would pass 2 TiB");
        r = io_truncate(e->io, MAX(e->file_size, host + (uint64_t) e->h.gtes * 4));
        if (r < 0)
                return r;
        e->file_size = MAX(e->file_size, host + (uint64_t) e->h.gtes * 4);
        *ret_sector = host / VMDK_SECTOR;
        return 0;
}

static bool gt_valid(vmdk_extent *e, uint64_t gts) {
        return gts > 0 && gts <= (UINT64_MAX >> 9) &&
               range_within(gts * VMDK_SECTOR, (uint64_t) e->h.gtes * 4, e->file_size);
}

/* A grain directory at sector `gd` lies in front of the grains, as an extent
 * is made. A grow that needed larger directories wrote them past the grains
 * (sparse_grow): those lie in the data area, and check and compact keep the
 * grains apart from them as ranges of their own. Without an overhead, every
 * directory counts as in front. */
static bool gd_in_front(const vmdk_extent *e, uint64_t gd) {
        return e->h.overhead == 0 || gd < e->h.overhead;
}

/* The end of the directories in front of the grains (sectors). */
static uint64_t front_dirs_end(const vmdk_extent *e) {
        uint64_t gd_sectors = DIV_ROUND_UP(e->n_gd * 4, VMDK_SECTOR), end = 0;

        if (gd_in_front(e, e->h.gd))
                end = e->h.gd + gd_sectors;
        if (e->rgd && gd_in_front(e, e->h.rgd))
                end = MAX(end, e->h.rgd + gd_sectors);
        return end;
}

/* One grain directory entry t: both directories, then the grains of its table. */
static int check_gt(check_ctx *c, uint64_t t) {
        vmdk_extent *e = c->e;
        vdisk_check_report *rep = c->rep;
        uint64_t gts = 0, rgts = 0, n_grains = DIV_ROUND_UP(e->size, e->grain);
        uint64_t meta_end = front_dirs_end(e);
        int r;

        r = tc_get(e->gd, t, &gts);
        if (r >= 0 && e->rgd)
                r = tc_get(e->rgd, t, &rgts);
        if (r < 0)
                return r;
        if (gts && !gt_valid(e, gts)) {
                rep->corruptions++;
                check_msg(c, "grain directory entry %" PRIu64 " (sector %" PRIu64 ") points past the end of the file",
                          t, gts);
                if (c->fix_all) {
                        /* the redundant table, when it is sound, else none */
                        gts = rgts && gt_valid(e, rgts) ? rgts : 0;
                        r = tc_set(e->gd, t, gts, 0);
                        if (r < 0)
                                return r;
                        rep->corruptions_fixed++;
                } else
                        return 0;
        }
        if (rgts && !gt_valid(e, rgts)) {
                rep->corruptions++;
                check_msg(c, "redundant grain directory entry %" PRIu64 " (sector %" PRIu64
                          ") points past the end of the file", t, rgts);
                if (c->fix_all) {
                        rgts = 0;
                        r = tc_set(e->rgd, t, 0, 0);
                        if (r < 0)
                                return r;
                        rep->corruptions_fixed++;
                }
        }
        if (e->rgd && !gts != !rgts) {
                /* What a crash between the two directory writes leaves. */
                rep->leaks++;
                check_msg(c, "grain table %" PRIu64 " is in the %s grain directory only", t,
                          gts ? "primary" : "redundant");
                if (c->fix_leaks || c->fix_all) {
                        uint64_t n = 0;

                        if (gts) {
                                r = meta_alloc(e, &n);
                                if (r >= 0) {
                                        uint64_t g0 = t * e->h.gtes, v0 = 0;

                                        r = gt_get(e, gts, 0, &v0);
                                        if (r >= 0)
                                                r = new_gt(c->s, e, n, gts, g0, v0);
                                }
                        }
                        if (r >= 0)
                                r = tc_set(e->rgd, t, n, 0);
                        if (r < 0)
                                return r;
                        rgts = n;
                        rep->leaks_fixed++;
                }
        }
        if (gts) {
                r = used_add(c, gts, DIV_ROUND_UP((uint64_t) e->h.gtes * 4, VMDK_SECTOR), UINT64_MAX);
                if (r < 0)
                        return r;
        }
        if (rgts && rgts != gts) {
                r = used_add(c, rgts, DIV_ROUND_UP((uint64_t) e->h.gtes * 4, VMDK_SECTOR), UINT64_MAX);
                if (r < 0)
                        return r;
        }
        for (uint64_t g = t * e->h.gtes; g < n_grains && g < (t + 1) * e->h.gtes; g++) {
                uint64_t v = 0, rv = 0, i = g % e->h.gtes;
                uint64_t len = DIV_ROUND_UP(MIN(e->grain, e->size - g * e->grain), VMDK_SECTOR);

                if (gts) {
                        r = gt_get(e, gts, i, &v);
                        if (r < 0)
                                return r;
                }
                if (rgts) {
                        r = gt_get(e, rgts, i, &rv);
                        if (r < 0)
                                return r;
                }
                if (v != 0 && !(v == 1 && e->zeroed_gte) && !e->compressed &&
                    (v > (UINT64_MAX >> 9) || !range_within(v * VMDK_SECTOR, len * VMDK_SECTOR, e->file_size) ||
                     v < meta_end)) {
                        rep->corruptions++;
                        check_msg(c, "grain %" PRIu64 " at sector %" PRIu64 " is not within the file's data area", g, v);
                        if (!c->fix_all)
                                continue;
                        /* the grain is lost: it reads unallocated */
                        r = gt_put(e, gts, i, 0);
                        if (r >= 0 && rgts)
                                r = gt_put(e, rgts, i, 0);
                        if (r < 0)
                                return r;
                        rep->corruptions_fixed++;
                        continue;
                }
                if (e->compressed && v > 1 && v * VMDK_SECTOR >= e->file_size) {
                        rep->corruptions++;
                        check_msg(c, "grain %" PRIu64 " at sector %" PRIu64 " is past the end of the file", g, v);
                }
                if (rgts && v != rv) {
                        if (v && rv) {
                                rep->corruptions++;
                                check_msg(c, "grain %" PRIu64 " is at sector %" PRIu64 " in the grain table, %" PRIu64
                                          " in the redundant one", g, v, rv);
                        } else {
                                rep->leaks++;
                                check_msg(c, "grain %" PRIu64 " is set in one grain table only (an interrupted update)",
                                          g);
                        }
                        if (c->fix_all || (!(v && rv) && c->fix_leaks)) {
                                /* the primary table is what reads */
                                r = gt_put(e, rgts, i, v);
                                if (r < 0)
                                        return r;
                                if (v && rv)
                                        rep->corruptions_fixed++;
                                else
                                        rep->leaks_fixed++;
                        }
                }
                if (v == 0 || (v == 1 && e->zeroed_gte))
                        continue;
                c->n_alloc++;
                if (!e->compressed) {
                        r = used_add(c, v, len, g);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* Sparse extents: every GD entry within the file, every grain entry within
 * the file and outside the metadata, no two grains or tables on the same
 * sectors, the redundant tables agreeing (an entry set in one only is what
 * a crash between the two table writes leaves: a leak). Space past the last
 * structure is a leak too. Repairs follow the primary tables (what reads):
 * the redundant ones are made to agree, entries past the end or overlapping
 * are cleared (those grains read unallocated), the tail is cut. */
static int check_extent(vmdk_state *s, vmdk_extent *e, size_t idx, vdisk_check_report *rep, uint32_t flags,
                        uint64_t *n_alloc) {
        bool dry = flags & VDISK_CHECK_DRY_RUN;
        check_ctx c = {
                .s = s, .e = e, .idx = idx, .rep = rep,
                .fix_all = !dry && (flags & VDISK_CHECK_REPAIR_ALL),
                .fix_leaks = !dry && (flags & (VDISK_CHECK_REPAIR_LEAKS | VDISK_CHECK_REPAIR_ALL)),
        };
        uint64_t end, gd_sectors = DIV_ROUND_UP(e->n_gd * 4, VMDK_SECTOR), file_end;
        bool changed = false;
        int r = 0;

        if (c.fix_leaks && e->compressed)
                return vdisk_error(-EROFS, "vmdk: compressed extents are not repaired");
        for (uint64_t t = 0; t < e->n_gd && r >= 0; t++)
                r = check_gt(&c, t);
        /* directories a grow moved past the grains: no grain may overlap them */
        if (r >= 0 && !gd_in_front(e, e->h.gd))
                r = used_add(&c, e->h.gd, gd_sectors, UINT64_MAX);
        if (r >= 0 && e->rgd && !gd_in_front(e, e->h.rgd))
                r = used_add(&c, e->h.rgd, gd_sectors, UINT64_MAX);
        if (r < 0)
                goto out;
        if (c.n_used > 0)               /* qsort(NULL, 0) is undefined */
                qsort(c.used, c.n_used, sizeof *c.used, cmp_used);
        /* the header, descriptor and directories */
        end = MAX(MAX(e->h.gd + gd_sectors, e->rgd ? e->h.rgd + gd_sectors : 0),
                  MAX(e->h.desc_offset + e->h.desc_size, (uint64_t) 1));
        end = MAX(end, e->h.overhead);
        for (size_t i = 0; i < c.n_used; i++) {
                used_range *u = &c.used[i];

                if (i > 0 && u->sector < c.used[i - 1].sector + c.used[i - 1].sectors) {
                        rep->corruptions++;
                        check_msg(&c, "%s at sector %" PRIu64 " overlaps the %s at sector %" PRIu64,
                                  u->g == UINT64_MAX ? "a grain table" : "a grain", u->sector,
                                  c.used[i - 1].g == UINT64_MAX ? "grain table" : "grain", c.used[i - 1].sector);
                        if (c.fix_all && u->g != UINT64_MAX) {
                                uint64_t gts = 0, rgts = 0;

                                r = gt_sector(e, u->g, e->gd, &gts);
                                if (r >= 0 && gts)
                                        r = gt_put(e, gts, u->g % e->h.gtes, 0);
                                if (r >= 0 && e->rgd)
                                        r = gt_sector(e, u->g, e->rgd, &rgts);
                                if (r >= 0 && rgts)
                                        r = gt_put(e, rgts, u->g % e->h.gtes, 0);
                                if (r < 0)
                                        goto out;
                                rep->corruptions_fixed++;
                                c.n_alloc--;
                                changed = true;
                                continue;
                        }
                }
                /* a short last grain (a capacity that is no grain
                 * multiple) takes a whole grain's room, as vdisk and qemu
                 * allocate it: that room is no leak */
                end = MAX(end, u->sector + (u->g == UINT64_MAX ? u->sectors : MAX(u->sectors, e->h.grain)));
        }
        changed = changed || rep->corruptions_fixed || rep->leaks_fixed;
        file_end = DIV_ROUND_UP(e->file_size, VMDK_SECTOR);
        if (!e->compressed && file_end > end) {
                rep->leaks += DIV_ROUND_UP(file_end - end, e->h.grain);
                check_msg(&c, "%" PRIu64 " sectors past the last grain are not used", file_end - end);
                if (c.fix_leaks) {
                        r = vmdk_flush(s);
                        if (r >= 0)
                                r = io_truncate(e->io, end * VMDK_SECTOR);
                        if (r < 0)
                                goto out;
                        rep->leaks_fixed += DIV_ROUND_UP(file_end - end, e->h.grain);
                        changed = true;
                }
        }
        if (changed && (c.fix_all || c.fix_leaks)) {
                r = vmdk_flush(s);
                if (r >= 0)
                        r = sparse_reload(s, e, vdisk_io_name(e->io));
        }
        *n_alloc += c.n_alloc;
out:
        free(c.used);
        return r;
}

static int vmdk_check(void *state, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p) {
        vmdk_state *s = state;
        uint64_t n_alloc = 0, total = 0;
        int r;

        if (s->stream && !s->stream_done)
                return vdisk_error(-EBUSY, "vmdk: the image is being written");
        if ((flags & (VDISK_CHECK_REPAIR_LEAKS | VDISK_CHECK_REPAIR_ALL)) && !(flags & VDISK_CHECK_DRY_RUN) &&
            !s->writable)
                return vdisk_error(-EROFS, "vmdk: the image is open read-only");
        for (size_t i = 0; i < s->n_ext; i++) {
                vmdk_extent *e = &s->ext[i];

                if (e->type == VMDK_EXTENT_SESPARSE || e->type == VMDK_EXTENT_VMFSSPARSE) {
                        uint64_t a = 0, t = 0;

                        r = grain_map_count(&e->gm, &a, &t);
                        if (r == -EUCLEAN) {
                                rep->corruptions++;
                                check_report_add(rep, "extent %zu: %s", i + 1, vdisk_last_error());
                        } else if (r < 0)
                                return r;
                        n_alloc += a;
                        total += t;
                        continue;
                }
                if (e->type != VMDK_EXTENT_SPARSE)
                        continue;
                total += DIV_ROUND_UP(e->size, e->grain);
                r = check_extent(s, e, i + 1, rep, flags, &n_alloc);
                if (r < 0)
                        return r;
        }
        rep->total_clusters = total;
        rep->allocated_clusters = n_alloc;
        if ((flags & VDISK_CHECK_DRY_RUN) && (rep->corruptions || rep->leaks))
                check_report_add(rep, "dry run: nothing was written");
        return 0;
}

/* ---------------------------------------------------------------- compact */

/* Grain entries changed by compact, applied in three flushed rounds so that
 * the two grain tables never disagree with both entries set (what check
 * calls a corruption): first the redundant entries go to 0, then the
 * primary ones (what reads) take their new values, then the redundant ones.
 * A crash between the rounds leaves an entry set in one table only: a leak,
 * and the grain reads the old or the new place, both complete. */
typedef struct vmdk_gte_change {
        uint64_t g, v;
} vmdk_gte_change;

typedef struct vmdk_compact_ctx {
        vmdk_extent *e;
        vmdk_gte_change *ch;
        size_t n_ch;
} vmdk_compact_ctx;

static int extent_tables_flush(vmdk_extent *e) {
        int r;

        for (size_t j = 0; j < e->n_new_gt; j++) {
                r = tc_table_flush(e->new_gt[j].t);
                if (r < 0)
                        return r;
        }
        return tc_table_flush(e->view);
}

static int gte_changes_apply(vmdk_extent *e, const vmdk_gte_change *ch, size_t n) {
        int r;

        for (int round = 0; round < 3; round++) {
                tc_table *gd = round == 1 ? e->gd : e->rgd;

                if (!gd)
                        continue;
                for (size_t i = 0; i < n; i++) {
                        uint64_t gts = 0, v = round == 0 ? 0 : ch[i].v, cur;

                        if (round == 2 && v == 0)
                                continue;       /* done in round 0 */
                        r = gt_sector(e, ch[i].g, gd, &gts);
                        if (r < 0)
                                return r;
                        if (gts == 0)
                                continue;       /* a redundant table missing: a leak check mends */
                        r = gt_get(e, gts, ch[i].g % e->h.gtes, &cur);
                        if (r >= 0 && cur != v)
                                r = gt_put(e, gts, ch[i].g % e->h.gtes, v);
                        if (r < 0)
                                return r;
                }
                r = extent_tables_flush(e);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int vmdk_compact_repoint(void *user, uint64_t key, uint64_t from, uint64_t to) {
        vmdk_compact_ctx *c = user;

        (void) from;
        c->ch[c->n_ch++] = (vmdk_gte_change) { .g = key, .v = to / VMDK_SECTOR };
        return 0;
}

static int vmdk_compact_commit(void *user) {
        vmdk_compact_ctx *c = user;
        int r;

        r = gte_changes_apply(c->e, c->ch, c->n_ch);
        c->n_ch = 0;
        return r;
}

/* One sparse extent's plan: the grains that stay (units) and the entries
 * that change (drops: 0, or 1 for a zeroed grain). */
typedef struct vmdk_compact_extent {
        fmt_unit *units;
        size_t n_units;
        vmdk_gte_change *drops;
        size_t n_drops;
        fmt_span *fixed;
        size_t n_fixed;
        uint64_t floor;
        uint64_t moves;
} vmdk_compact_extent;

static void compact_extent_done(vmdk_compact_extent *x) {
        free(x->units);
        free(x->drops);
        free(x->fixed);
        *x = (vmdk_compact_extent) {};
}

static int push(void **a, size_t *n, size_t *cap, size_t size, const void *v) {
        if (*n == *cap) {
                size_t nc = *cap ? 2 * *cap : 64;
                void *p = reallocarray(*a, nc, size);

                if (!p)
                        return -ENOMEM;
                *a = p;
                *cap = nc;
        }
        memcpy((uint8_t *) *a + *n * size, v, size);
        (*n)++;
        return 0;
}

/* Reads every allocated grain of e and asks fn about it (nothing changes). */
static int compact_scan_extent(vmdk_extent *e, fmt_scan *sc, vmdk_compact_extent *x, vdisk_progress *p) {
        uint64_t n_grains = DIV_ROUND_UP(e->size, e->grain), gd_sectors = DIV_ROUND_UP(e->n_gd * 4, VMDK_SECTOR);
        uint64_t gt_sectors = DIV_ROUND_UP((uint64_t) e->h.gtes * 4, VMDK_SECTOR), meta_end;
        size_t cap_units = 0, cap_drops = 0, cap_fixed = 0;
        int r;

        meta_end = MAX(front_dirs_end(e), MAX(e->h.desc_offset + e->h.desc_size, (uint64_t) 1));
        meta_end = MAX(meta_end, e->h.overhead);
        x->floor = meta_end * VMDK_SECTOR;
        /* directories a grow moved past the grains stay where they are */
        for (int k = 0; k < 2; k++) {
                uint64_t at = k ? e->h.rgd : e->h.gd;
                fmt_span sp = { .start = at * VMDK_SECTOR, .len = gd_sectors * VMDK_SECTOR };

                if ((k && !e->rgd) || gd_in_front(e, at))
                        continue;
                r = push((void **) &x->fixed, &x->n_fixed, &cap_fixed, sizeof sp, &sp);
                if (r < 0)
                        return r;
        }

        for (uint64_t t = 0; t < e->n_gd; t++) {
                uint64_t gts = 0, rgts = 0;

                r = progress_check(p);
                if (r < 0)
                        return vdisk_error(r, "vmdk: compact cancelled (nothing changed)");
                r = gt_sector(e, t * e->h.gtes, e->gd, &gts);
                if (r >= 0 && e->rgd)
                        r = gt_sector(e, t * e->h.gtes, e->rgd, &rgts);
                if (r < 0)
                        return r;
                for (int k = 0; k < 2; k++) {
                        uint64_t s = k ? rgts : gts;
                        fmt_span sp = { .start = s * VMDK_SECTOR, .len = gt_sectors * VMDK_SECTOR };

                        if (s == 0)
                                continue;
                        r = push((void **) &x->fixed, &x->n_fixed, &cap_fixed, sizeof sp, &sp);
                        if (r < 0)
                                return r;
                }
                for (uint64_t g = t * e->h.gtes; gts && g < n_grains && g < (t + 1) * e->h.gtes; g++) {
                        uint64_t v = 0, len = MIN(e->grain, e->size - g * e->grain);
                        compact_verdict verdict;

                        r = gt_get(e, gts, g % e->h.gtes, &v);
                        if (r < 0)
                                return r;
                        if (v == 0 || (v == 1 && e->zeroed_gte)) {
                                uint64_t rv = v;

                                /* a redundant entry set alone (a crash
                                 * inside a grain's allocation): made to
                                 * agree, its grain's room is free here */
                                if (rgts)
                                        r = gt_get(e, rgts, g % e->h.gtes, &rv);
                                if (r >= 0 && rv != v) {
                                        vmdk_gte_change d = { .g = g, .v = v };

                                        r = push((void **) &x->drops, &x->n_drops, &cap_drops, sizeof d, &d);
                                }
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        if (v < meta_end || !range_within(v * VMDK_SECTOR, e->grain, e->file_size))
                                return vdisk_error(-EUCLEAN, "vmdk: %s: grain %" PRIu64 " at sector %" PRIu64
                                                   " is not within the data area; repair the image before "
                                                   "compacting it", vdisk_io_name(e->io), g, v);
                        fmt_scan_begin(sc);
                        r = fmt_scan_piece(sc, e->io, v * VMDK_SECTOR, e->start + g * e->grain, len);
                        if (r < 0)
                                return r;
                        verdict = fmt_scan_verdict(sc);
                        /* zeros over the parent's data: only a zeroed grain
                         * entry says so without the grain */
                        if (verdict == COMPACT_ZERO && !e->zeroed_gte)
                                verdict = COMPACT_KEEP;
                        if (verdict == COMPACT_KEEP) {
                                fmt_unit u = { .key = g, .host = v * VMDK_SECTOR };

                                r = push((void **) &x->units, &x->n_units, &cap_units, sizeof u, &u);
                        } else {
                                vmdk_gte_change d = { .g = g, .v = verdict == COMPACT_ZERO };

                                r = push((void **) &x->drops, &x->n_drops, &cap_drops, sizeof d, &d);
                        }
                        if (r < 0)
                                return r;
                }
                r = progress_add(p, MIN((uint64_t) e->h.gtes * e->grain, e->size - MIN(e->size, t * e->h.gtes * e->grain)));
                if (r < 0)
                        return vdisk_error(r, "vmdk: compact cancelled (nothing changed)");
        }
        return 0;
}

static fmt_pack compact_pack_params(vmdk_extent *e, vmdk_compact_extent *x, vmdk_compact_ctx *c, vdisk_progress *p) {
        return (fmt_pack) {
                .io = e->io,
                .unit = e->grain,
                .floor = x->floor,
                .units = x->units,
                .n_units = x->n_units,
                .fixed = x->fixed,
                .n_fixed = x->n_fixed,
                .p = p,
                .cancellable = true,
                .repoint = vmdk_compact_repoint,
                .commit = vmdk_compact_commit,
                .user = c,
        };
}

/* Cuts the extent's file at `end`: nothing references what lies past it. */
static int vmdk_compact_cut(vmdk_state *s, vmdk_extent *e, uint64_t end) {
        int r;

        end = ALIGN_UP(end, (uint64_t) VMDK_SECTOR);
        if (end >= e->file_size)
                return 0;
        /* Nothing references what lies past `end` any more. */
        r = vmdk_flush(s);
        if (r < 0)
                return r;
        r = io_truncate(e->io, end);
        if (r < 0)
                return r;
        r = io_flush(e->io);
        if (r < 0)
                return r;
        return sparse_reload(s, e, vdisk_io_name(e->io));
}

/* Drops, packs and cuts one extent. */
static int compact_extent(vmdk_state *s, vmdk_extent *e, vmdk_compact_extent *x, vdisk_progress *p) {
        vmdk_compact_ctx c = { .e = e };
        fmt_pack pk = compact_pack_params(e, x, &c, p);
        uint64_t end = 0;
        int r, q;

        if (x->n_drops > 0) {
                r = gte_changes_apply(e, x->drops, x->n_drops);
                if (r < 0)
                        return r;
        }
        c.ch = calloc(64, sizeof *c.ch);        /* fmt_pack's batch */
        if (!c.ch)
                return -ENOMEM;
        pk.batch = 64;
        r = fmt_pack_run(&pk, &end);
        free(c.ch);
        if (r < 0 && (r != -ECANCELED || end == 0))
                return r;
        q = vmdk_compact_cut(s, e, end);
        if (q < 0)
                return q;
        if (r < 0)
                return vdisk_error(r, "vmdk: compact cancelled (the grains moved so far stay moved)");
        return 0;
}


/* Hosted sparse extents: grains that read the same without them are
 * dropped (entry 0; in a diff, zeros over the parent's data become a zeroed
 * grain entry where the extent has them, else they stay), then the grains
 * highest in the file move down into the holes (fmt_pack: the grain tables
 * and directories stay where they are) and the file is cut after the last
 * grain or table. Flat and ZERO extents have nothing to compact; compressed
 * (streamOptimized) ones are read-only. Cancel during the scan changes
 * nothing; during the moves it stops after a complete batch. */
static int vmdk_compact(void *state, compact_fn fn, void *ctx, vdisk_progress *p) {
        vmdk_state *s = state;
        _cleanup_free_ vmdk_compact_extent *xs = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        uint64_t moved = 0, max_grain = 0;
        size_t n_sparse = 0;
        int r = 0;

        if (s->stream)
                return vdisk_error(-EBUSY, "vmdk: the image is being written");
        if (!s->writable)
                return vdisk_error(-EROFS, "vmdk: image is read-only");
        for (size_t i = 0; i < s->n_ext; i++) {
                vmdk_extent *e = &s->ext[i];

                if (e->type == VMDK_EXTENT_SESPARSE || e->type == VMDK_EXTENT_VMFSSPARSE)
                        return vdisk_error(-EOPNOTSUPP, "vmdk: %s extents cannot be compacted",
                                           vmdk_extent_type_name(e->type));
                if (e->type != VMDK_EXTENT_SPARSE)
                        continue;
                if (e->compressed)
                        return vdisk_error(-EOPNOTSUPP, "vmdk: compressed (streamOptimized) extents are read-only");
                if (e->h.gtes % (VMDK_SECTOR / 4))
                        return vdisk_error(-EOPNOTSUPP, "vmdk: cannot write an extent with %" PRIu32
                                           " entries per grain table (a multiple of 128 is needed)", e->h.gtes);
                n_sparse++;
                max_grain = MAX(max_grain, e->grain);
        }
        if (n_sparse == 0)
                return vdisk_error(-EOPNOTSUPP, "vmdk: flat images cannot be compacted");
        r = vmdk_flush(s);
        if (r < 0)
                return r;

        fmt_scan sc = { .fn = fn, .ctx = ctx, .buf_size = (size_t) MIN(max_grain, (uint64_t) 4 << 20) };
        buf = buf_alloc(sc.buf_size);
        xs = calloc(s->n_ext, sizeof *xs);
        if (!buf || !xs)
                return vdisk_error(-ENOMEM, "out of memory");
        sc.buf = buf;
        progress_set_total(p, s->size);
        for (size_t i = 0; i < s->n_ext && r >= 0; i++) {
                vmdk_extent *e = &s->ext[i];

                if (e->type != VMDK_EXTENT_SPARSE) {
                        r = progress_add(p, e->size);
                        if (r < 0)
                                r = vdisk_error(r, "vmdk: compact cancelled (nothing changed)");
                        continue;
                }
                r = compact_scan_extent(e, &sc, &xs[i], p);
                if (r >= 0) {
                        vmdk_compact_ctx c = { .e = e };
                        fmt_pack pk = compact_pack_params(e, &xs[i], &c, p);

                        r = fmt_pack_count(&pk, &xs[i].moves);
                        moved += xs[i].moves * e->grain;
                }
        }
        if (r >= 0) {
                /* the total now knows the moves; the scan stays done */
                progress_set_total(p, s->size + moved);
                r = progress_add(p, s->size);
                if (r < 0)
                        r = vdisk_error(r, "vmdk: compact cancelled (nothing changed)");
                for (size_t i = 0; i < s->n_ext && r >= 0; i++)
                        if (s->ext[i].type == VMDK_EXTENT_SPARSE)
                                r = compact_extent(s, &s->ext[i], &xs[i], p);
        }
        for (size_t i = 0; i < s->n_ext; i++)
                compact_extent_done(&xs[i]);
        return r;
}

/* ---------------------------------------------------------------- metadata */

/* Every extent flat (monolithicFlat, twoGbMaxExtentFlat, vmfs): preallocated. */
static bool all_flat(vmdk_state *s) {
        for (size_t i = 0; i < s->n_ext; i++)
                if (s->ext[i].type != VMDK_EXTENT_FLAT && s->ext[i].type != VMDK_EXTENT_VMFS)
                        return false;
        return s->n_ext > 0;
}

static int vmdk_get_meta(void *state, meta *m) {
        vmdk_state *s = state;

        *m = (meta) { .mask = META_COMMENT | META_FLAGS, .comment = "" };
        if (s->has_uuid) {
                memcpy(m->uuid, s->uuid, 16);
                m->mask |= META_UUID;
        }
        if (s->has_parent_uuid && !vdisk_uuid_is_null(s->parent_uuid)) {
                memcpy(m->parent_uuid, s->parent_uuid, 16);
                m->mask |= META_PARENT_UUID;
        }
        if (s->lchs.cylinders) {
                m->lchs = s->lchs;
                m->mask |= META_LCHS;
        }
        if (s->parent_hint) {
                m->parent_name = s->parent_hint;
                m->mask |= META_PARENT_NAME;
        }
        if (s->parent_hint || (m->mask & META_PARENT_UUID))
                m->flags |= VDISK_IMAGE_FLAGS_DIFF;
        /* CID and parentCID: checked by the core when the chain is opened. */
        if (s->desc.n_kv > 0) {
                m->content_id = s->cid;
                m->mask |= META_CONTENT_ID;
        }
        if (m->flags & VDISK_IMAGE_FLAGS_DIFF) {
                m->parent_content_id = s->parent_cid;
                m->mask |= META_PARENT_CONTENT_ID;
        }
        if (all_flat(s))
                m->flags |= VDISK_IMAGE_FLAGS_FIXED;
        return 0;
}

static int vmdk_get_info(void *state, vdisk_image_info *ret) {
        vmdk_state *s = state;
        image_layout l;

        vmdk_get_layout(s, &l);
        ret->cluster_size = (uint32_t) l.cluster_size;
        ret->dirty = 0;
        ret->variant = s->create_type ? s->create_type : s->stream ? "streamOptimized" : "monolithicSparse";
        ret->image_flags = s->parent_hint || s->has_parent_uuid ? VDISK_IMAGE_FLAGS_DIFF : 0;
        if (all_flat(s))
                ret->image_flags |= VDISK_IMAGE_FLAGS_FIXED;
        return 0;
}

/* Field `field` of extent i in a list of format information: the key
 * "extents.<i>.<field>" (see get_format_info in backend.h). */
static int push_extent(strv_builder *kv, size_t i, const char *field, const char *value) {
        char key[64];

        snprintf(key, sizeof key, "extents.%zu.%s", i, field);
        return strv_push_pair(kv, key, "%s", value);
}

static int vmdk_get_format_info(void *state, strv_builder *kv) {
        vmdk_state *s = state;
        int r;

        r = strv_push_pair(kv, "cid", "%" PRIu32, s->cid);
        if (r >= 0)
                r = strv_push_pair(kv, "parent cid", "%" PRIu32, s->parent_cid);
        if (r >= 0)
                r = strv_push_pair(kv, "create type", "%s", s->create_type ? s->create_type : "monolithicSparse");
        /* qemu-img's list of extents: the type as the descriptor names it,
         * none for the sparse file that holds its own descriptor */
        for (size_t i = 0; r >= 0 && i < s->n_ext; i++) {
                const vmdk_extent *e = &s->ext[i];
                bool flat = e->type == VMDK_EXTENT_FLAT || e->type == VMDK_EXTENT_VMFS;
                char n[24];

                if (e->compressed)
                        r = push_extent(kv, i, "compressed", "true");
                snprintf(n, sizeof n, "%" PRIu64, e->size);
                if (r >= 0)
                        r = push_extent(kv, i, "virtual size", n);
                if (r >= 0 && e->io)
                        r = push_extent(kv, i, "filename", vdisk_io_name(e->io));
                snprintf(n, sizeof n, "%" PRIu64, e->grain);
                if (r >= 0 && !flat && e->grain > 0)
                        r = push_extent(kv, i, "cluster size", n);
                if (r >= 0)
                        r = push_extent(kv, i, "format", s->embedded ? "" : vmdk_extent_type_name(e->type));
        }
        return r;
}


/* Changes descriptor fields; written at the next flush. The format has no
 * modification UUIDs: META_PARENT_MOD_UUID is accepted and ignored (merge
 * sets it with the parent UUID). Relinking to no parent also drops the
 * parent's name and CID. */
static int vmdk_set_meta(void *state, const meta *m, uint32_t mask) {
        vmdk_state *s = state;
        char buf[64];
        int r = 0;

        if (mask & ~(META_UUID | META_PARENT_UUID | META_PARENT_MOD_UUID | META_PARENT_NAME | META_LCHS |
                     META_CONTENT_ID | META_PARENT_CONTENT_ID))
                return vdisk_error(-EOPNOTSUPP, "vmdk: the format has no such field");
        /* A stream being written gets its new CID with its descriptor. */
        if (s->stream && (s->stream_done || (mask & ~META_CONTENT_ID)))
                return vdisk_error(-EROFS, "vmdk: streamOptimized images are not changed");
        if (s->desc.n_kv == 0)
                return vdisk_error(-EOPNOTSUPP, "vmdk: the image has no descriptor to record it in");
        if (mask & META_UUID) {
                vdisk_uuid_format(m->uuid, buf);
                r = vmdk_desc_set(&s->desc, "ddb.uuid.image", buf, true);
        }
        if (r >= 0 && (mask & META_PARENT_UUID)) {
                vdisk_uuid_format(m->parent_uuid, buf);
                r = vmdk_desc_set(&s->desc, "ddb.uuid.parent", buf, true);
                if (r >= 0 && vdisk_uuid_is_null(m->parent_uuid) && !(mask & META_PARENT_NAME)) {
                        r = vmdk_desc_set(&s->desc, "parentFileNameHint", "", true);
                        if (r >= 0)
                                r = vmdk_desc_set(&s->desc, "parentCID", "ffffffff", false);
                        if (r >= 0)
                                s->parent_cid = 0xffffffff;
                }
        }
        if (r >= 0 && (mask & META_PARENT_NAME))
                r = vmdk_desc_set(&s->desc, "parentFileNameHint", m->parent_name ? m->parent_name : "", true);
        if (r >= 0 && (mask & META_CONTENT_ID)) {
                snprintf(buf, sizeof buf, "%08" PRIx32, m->content_id);
                r = vmdk_desc_set(&s->desc, "CID", buf, false);
                if (r >= 0)
                        s->cid = m->content_id;
        }
        if (r >= 0 && (mask & META_PARENT_CONTENT_ID)) {
                snprintf(buf, sizeof buf, "%08" PRIx32, m->parent_content_id);
                r = vmdk_desc_set(&s->desc, "parentCID", buf, false);
                if (r >= 0)
                        s->parent_cid = m->parent_content_id;
        }
        if (r >= 0 && (mask & META_LCHS)) {
                snprintf(buf, sizeof buf, "%" PRIu32, m->lchs.cylinders);
                r = vmdk_desc_set(&s->desc, "ddb.geometry.cylinders", buf, true);
                snprintf(buf, sizeof buf, "%" PRIu32, m->lchs.heads);
                if (r >= 0)
                        r = vmdk_desc_set(&s->desc, "ddb.geometry.heads", buf, true);
                snprintf(buf, sizeof buf, "%" PRIu32, m->lchs.sectors);
                if (r >= 0)
                        r = vmdk_desc_set(&s->desc, "ddb.geometry.sectors", buf, true);
        }
        if (r < 0)
                return r;
        s->has_uuid = s->has_parent_uuid = false;
        r = desc_meta(s);
        if (r < 0)
                return r;
        s->desc_dirty = true;
        return 0;
}

/* ---------------------------------------------------------------- table */

/* monolithicSparse as vmdk_create() lays it out: header, descriptor,
 * redundant and primary grain directories and tables (tables on demand with
 * gt_on_demand: counted for each 32 MiB with data, both copies), then one
 * 64 KiB grain per allocated grain. Over a parent every grain is counted.
 * Other subformats: not measured. */
static int vmdk_measure(const measure_params *p, measure_result *ret) {
        uint64_t capacity = DIV_ROUND_UP(p->size, VMDK_SECTOR), grain_bytes, gt_bytes, used = 0, gts = 0;
        vmdk_create_opts o;
        sparse_layout l;
        int r;

        r = parse_create_options(p->options, &o);
        if (r < 0)
                return r;
        if (!streq(o.subformat, "monolithicSparse"))
                return vdisk_error(-EOPNOTSUPP, "vmdk: only subformat=monolithicSparse can be measured");
        if (capacity > VMDK_CAPACITY_MAX)
                return vdisk_error(-EFBIG, "vmdk: at most %" PRIu64 " bytes", VMDK_CAPACITY_MAX * VMDK_SECTOR);
        sparse_layout_plan(capacity, VMDK_DESC_SECTORS, o.gt_on_demand, &l);
        grain_bytes = l.grain * VMDK_SECTOR;
        gt_bytes = l.gt_sectors * VMDK_SECTOR;
        if (p->has_backing) {
                used = DIV_ROUND_UP(capacity, l.grain);
                gts = l.n_gd;
        } else if (p->has_input) {
                r = p->count_units(p->ctx, grain_bytes, &used);
                if (r >= 0 && o.gt_on_demand)
                        r = p->count_units(p->ctx, grain_bytes * VMDK_GTES_MAX, &gts);
                if (r < 0)
                        return r;
        }
        if (!o.gt_on_demand)
                gts = 0;   /* in the overhead already */
        *ret = (measure_result) {
                .required = l.overhead * VMDK_SECTOR + used * grain_bytes + 2 * gts * gt_bytes,
                .fully_allocated = l.overhead * VMDK_SECTOR + DIV_ROUND_UP(capacity, l.grain) * grain_bytes +
                                   (o.gt_on_demand ? 2 * l.n_gd * gt_bytes : 0),
        };
        return 0;
}

static const char *const vmdk_extensions[] = { "vmdk", NULL };
/* Defaults only where qemu-img 7.2's "Formatting" line shows them unasked. */
static const vdisk_option_desc vmdk_create_options[] = {
        { "size",         VDISK_OPTION_SIZE, "Virtual disk size" },
        { "adapter_type", VDISK_OPTION_STRING, "Virtual adapter type, can be one of ide (default), lsilogic, "
                                               "buslogic or legacyESX" },
        { "backing_file", VDISK_OPTION_STRING, "File name of a base image" },
        { "backing_fmt",  VDISK_OPTION_STRING, "Must be 'vmdk' if it operates on diff images" },
        { "compat6",      VDISK_OPTION_BOOL, "VMDK version 6 image", "off" },
        { "hwversion",    VDISK_OPTION_STRING, "VMDK hardware version", "undefined" },
        { "subformat",    VDISK_OPTION_STRING, "VMDK flat extent format, can be one of {monolithicSparse (default) "
                                               "| monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized}" },
        { "zeroed_grain", VDISK_OPTION_BOOL, "Enable efficient zero writes using the zeroed-grain GTE feature" },
        /* vdisk's own (after qemu's): qemu-img 7.2 reads such images but
         * corrupts them when it writes into a missing grain table. */
        { "gt_on_demand", VDISK_OPTION_BOOL, "Allocate grain tables on first write instead of at creation "
                                             "(qemu-img can read but not write such images)" },
        {}
};

const vdisk_backend backend_vmdk = {
        .info = {
                .name = "VMDK",
                .qemu_name = "vmdk",
                .caps = VDISK_CAP_UUID | VDISK_CAP_CREATE_FIXED | VDISK_CAP_CREATE_DYNAMIC | VDISK_CAP_CREATE_SPLIT_2G |
                        VDISK_CAP_DIFF | VDISK_CAP_FILE | VDISK_CAP_PREFERRED | VDISK_CAP_CHECK |
                        VDISK_CAP_COMPACT,
                .media = VDISK_MEDIA_HDD,
                .extensions = vmdk_extensions,
                .create_options = vmdk_create_options,
        },
        .state_size = sizeof(vmdk_state),
        .probe = vmdk_probe,
        .peek = vmdk_peek,
        .open = vmdk_open,
        .create = vmdk_create,
        .close = vmdk_close,
        .get_size = vmdk_get_size,
        .get_layout = vmdk_get_layout,
        .map = vmdk_map,
        .decode = vmdk_decode,
        .allocate = vmdk_allocate,
        .commit = vmdk_commit,
        .release = vmdk_release,
        .mark_zero = vmdk_mark_zero,
        .flush = vmdk_flush,
        .stream_write = vmdk_stream_write,
        .encode_bound = vmdk_encode_bound,
        .encode = vmdk_encode,
        .stream_write_encoded = vmdk_stream_write_encoded,
        .finish = vmdk_finish,
        .resize = vmdk_resize,
        .check = vmdk_check,
        .measure = vmdk_measure,
        .compact = vmdk_compact,
        .get_meta = vmdk_get_meta,
        .set_meta = vmdk_set_meta,
        .get_info = vmdk_get_info,
        .get_format_info = vmdk_get_format_info,
        /* falloc/full: qemu's file layer preallocates the empty file (no effect) */
        .prealloc_create = PREALLOC_BIT(PREALLOC_FALLOC) | PREALLOC_BIT(PREALLOC_FULL),
};
