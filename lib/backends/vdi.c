/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VDI — VirtualBox Virtual Disk Image, header version 1.1.
 *
 * Spec: there is no published spec; the layout is VirtualBox's VDICore.h,
 * summarized with our own limits in docs/formats/vdi.md and
 * ../shared/formats/FORMATS.md §3.3. All fields are little-endian.
 *
 *   0x000  pre-header: 64 bytes of text, signature 0xBEDA107F, version 1.1
 *   0x048  header (cbHeader 384, or 400 with the LCHS geometry)
 *   ...    padding up to offBlocks (512-aligned)
 *   offBlocks  block map: cBlocks u32 entries, padded to a sector
 *              0xFFFFFFFF FREE  (unallocated: a diff shows its parent here)
 *              0xFFFFFFFE ZERO  (reads zeros, never falls through)
 *              otherwise  slot index: data at offData + index * cbBlock
 *   offData    data slots 0 .. cBlocksAllocated-1, appended in order
 *
 *   +--------+-----+------------+---------+---------+---------+-----
 *   | header | pad | block map  | slot 0  | slot 1  | slot 2  | ...
 *   +--------+-----+------------+---------+---------+---------+-----
 *   0        0x1D8 offBlocks    offData
 *
 * Supported: images of type NORMAL (dynamic), FIXED (static) and DIFF, any
 * power-of-two block size from 512 bytes to 64 MiB (qemu reads only 1 MiB),
 * create/read/write, ZERO blocks, resize (grow, moving the block map when it
 * outgrows its room, and shrink), compact, check and repair.
 * Refused: version other than 1.1 (v0 headers, whose layout we do not know),
 * UNDO images, cbBlockExtra != 0, sector sizes other than 512, a block map
 * above 64 MiB (16 TiB with 1 MiB blocks).
 *
 * Quirks:
 *   - New blocks go to slot max(cBlocksAllocated, highest referenced slot+1),
 *     so a header count that fell behind the map never makes us hand out a
 *     referenced slot. qemu and VirtualBox allocate at cBlocksAllocated.
 *   - Flush writes the header (count) before the map: a crash between the
 *     two leaves the count ahead of the map (leaked slots, which `qemu-img
 *     check` calls "allocated blocks mismatch"); the other order would let
 *     qemu or VirtualBox allocate over a referenced slot. See vdi_flush().
 *   - Corrupt map entries (out of range, or a slot used by two blocks) do not
 *     stop open, so that check and repair can run: reads of those blocks fail
 *     with -EUCLEAN and no block is allocated until the image is repaired.
 *   - A cbDisk that is not a multiple of 512 (VBoxManage convertfromraw has
 *     made them; VirtualBox refuses such sizes on create and resize, and its
 *     repair rounds them) is read rounded up, like qemu does, and reported as
 *     a corruption by check; repair rounds it.
 *   - UUIDs are the 16 bytes of the file (RTUUID layout), untouched.
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
#include "fmt/tablecache.h"
#include "fmt/compact.h"
#include "fmt/hostalloc.h"
#include "io/io.h"
#include "util/util.h"

#define VDI_SIGNATURE           UINT32_C(0xBEDA107F)
#define VDI_VERSION_1_1         UINT32_C(0x00010001)
#define VDI_PREHEADER_SIZE      72u
#define VDI_HEADER_V1_SIZE      384u
#define VDI_HEADER_V1PLUS_SIZE  400u
#define VDI_SECTOR              512u
#define VDI_COMMENT_SIZE        256u

#define VDI_TYPE_NORMAL         1u
#define VDI_TYPE_FIXED          2u
#define VDI_TYPE_UNDO           3u
#define VDI_TYPE_DIFF           4u

#define VDI_FLAG_ZERO_EXPAND    UINT32_C(1)   /* fFlags bit 0 = VD_VDI_IMAGE_FLAGS_ZERO_EXPAND >> 8 */

#define VDI_ENTRY_FREE          UINT32_C(0xFFFFFFFF)
#define VDI_ENTRY_ZERO          UINT32_C(0xFFFFFFFE)

#define VDI_BLOCK_DEFAULT       (UINT32_C(1) << 20)
#define VDI_BLOCK_MAX           (UINT32_C(64) << 20)
#define VDI_DATA_ALIGN          (UINT32_C(1) << 20)   /* where create puts offData */
#define VDI_IO_CHUNK            (UINT32_C(4) << 20)   /* copy/compact buffer */
#define VDI_MOVE_BATCH          4096u                 /* block moves per flush pair */
#define VDI_CHECK_MESSAGES      16u                   /* detailed messages per kind */

/* Header field offsets (absolute, in the first sector). */
enum {
        OFF_TEXT               = 0x000,
        OFF_SIGNATURE          = 0x040,
        OFF_VERSION            = 0x044,
        OFF_CB_HEADER          = 0x048,
        OFF_TYPE               = 0x04C,
        OFF_FLAGS              = 0x050,
        OFF_COMMENT            = 0x054,
        OFF_OFF_BLOCKS         = 0x154,
        OFF_OFF_DATA           = 0x158,
        OFF_PCHS               = 0x15C,   /* cylinders, heads, sectors, cbSector */
        OFF_DUMMY              = 0x16C,
        OFF_DISK_SIZE          = 0x170,
        OFF_BLOCK_SIZE         = 0x178,
        OFF_BLOCK_EXTRA        = 0x17C,
        OFF_BLOCKS             = 0x180,
        OFF_BLOCKS_ALLOCATED   = 0x184,
        OFF_UUID               = 0x188,
        OFF_UUID_MODIFY        = 0x198,
        OFF_UUID_LINK          = 0x1A8,
        OFF_UUID_PARENT_MODIFY = 0x1B8,
        OFF_LCHS               = 0x1C8,   /* v1.1 "plus" (cbHeader 400) only */
        OFF_HEADER_END         = 0x1D8,
};

static const char vdi_text[] = "<<< vdisk Virtual Disk Image >>>\n";

/* The header fields we use. Bytes we do not manage (text, the dummy field,
 * padding) are kept in vdi_state.raw and written back unchanged. */
typedef struct vdi_header {
        uint32_t cb_header;
        uint32_t type;
        uint32_t flags;
        char comment[VDI_COMMENT_SIZE + 1];
        uint32_t off_blocks, off_data;
        vdisk_geometry pchs;
        uint64_t disk_size;             /* cbDisk as stored (may be odd) */
        uint32_t block_size;
        uint32_t n_blocks;
        uint32_t n_allocated;           /* cBlocksAllocated: the allocation frontier */
        uint8_t uuid[16], uuid_modify[16], uuid_link[16], uuid_parent_modify[16];
        vdisk_geometry lchs;            /* cb_header >= 400 only */
} vdi_header;

typedef struct vdi_state {
        vdisk_io *io;
        int writable;
        uint8_t raw[VDI_SECTOR];        /* the header sector as last read or written */
        vdi_header h;                   /* in memory; on disk after the next flush */
        bool header_dirty;
        uint64_t size;                  /* virtual size: cbDisk rounded up to 512 */
        tc_budget *budget;              /* the disk's metadata budget (borrowed) */
        tc_table *map;                  /* the block map, paged through the table cache */
        /* Derived from the map by vdi_scan() (writable opens, check, repair),
         * then kept up to date; charged to the budget. Read-only opens do
         * not scan: entries are checked as they are looked up. */
        bool scanned;
        uint64_t charged;               /* bytes of the two bitmaps */
        uint64_t *slot_used;            /* bit per slot < n_blocks: referenced by a valid entry */
        uint64_t *bad;                  /* bit per block: unusable entry (NULL when none) */
        bool live_known;                /* n_live is valid (always after a scan) */
        bool alloc_ready;               /* vdi_prepare_writes() ran: bitmaps and alloc stay */
        uint32_t n_bad;
        uint32_t n_live;                /* valid data entries */
        uint32_t hi;                    /* no valid entry references a slot >= hi */
        hostalloc alloc;                /* next slot offset and freshness */
        bool reserved;                  /* vdi_allocate() handed out reserved_slot */
        uint32_t reserved_slot;
} vdi_state;

typedef struct vdi_move {
        uint32_t block, src, dst;
} vdi_move;

/* ---------------------------------------------------------------- helpers */

static bool entry_is_data(uint32_t e) {
        return e < VDI_ENTRY_ZERO;
}

/* Map entry b, through the cache: a page that cannot be read is an error. */
static int map_get(vdi_state *s, uint64_t b, uint32_t *ret) {
        uint64_t v;
        int r;

        r = tc_get(s->map, b, &v);
        if (r < 0)
                return r;
        *ret = (uint32_t) v;
        return 0;
}

static int map_set(vdi_state *s, uint64_t b, uint32_t v, uint32_t flags) {
        return tc_set(s->map, b, v, flags);
}

/* After a scan: the scan's verdict (out of range, or a slot an earlier block
 * uses). Before: only what the entry itself shows (out of range). */
static bool block_is_bad(const vdi_state *s, uint64_t b, uint32_t e) {
        if (s->scanned)
                return s->bad && bitmap_get(s->bad, b);
        return entry_is_data(e) && e >= s->h.n_blocks;
}

/* Offsets stay far from overflow: off_data < 2^32, slot < 2^32, block <= 2^26. */
static uint64_t slot_offset(const vdi_state *s, uint64_t slot) {
        return (uint64_t) s->h.off_data + slot * s->h.block_size;
}

/* The slot the next allocation takes when it is below n_blocks. */
static uint32_t frontier(const vdi_state *s) {
        return MAX(s->h.n_allocated, s->hi);
}

static map_kind entry_kind(uint32_t e) {
        if (e == VDI_ENTRY_FREE)
                return MAP_UNALLOC;
        if (e == VDI_ENTRY_ZERO)
                return MAP_ZERO;
        return MAP_DATA;
}

static int bad_entry_error(uint64_t b, uint32_t e) {
        return vdisk_error(-EUCLEAN, "vdi: block %" PRIu64 " has a corrupt block map entry (%#" PRIx32
                           "); check and repair the image", b, e);
}

/* Lowest slot in [from, n_blocks) that no valid entry references. */
static bool find_free_slot(const vdi_state *s, uint32_t from, uint32_t *ret) {
        uint32_t n = s->h.n_blocks;

        for (uint32_t i = from; i < n;) {
                if (i % 64 == 0 && s->slot_used[i / 64] == UINT64_MAX) {
                        i += 64;
                        continue;
                }
                if (!bitmap_get(s->slot_used, i)) {
                        *ret = i;
                        return true;
                }
                i++;
        }
        return false;
}

/* Rebuilds slot_used, bad, n_live, n_bad and hi from the map. A data entry is
 * valid when its slot is below cBlocks (VirtualBox and qemu refuse others)
 * and no earlier block uses the same slot; qemu's check reports the later
 * block of a duplicate pair too, and repair frees that one. */
static void vdi_scan_drop(vdi_state *s) {
        free(s->slot_used);
        s->slot_used = NULL;
        free(s->bad);
        s->bad = NULL;
        tc_budget_uncharge(s->budget, s->charged);
        s->charged = 0;
        s->scanned = false;
}

static uint64_t bitmap_bytes(uint64_t n) {
        return DIV_ROUND_UP(MAX(n, (uint64_t) 1), 64) * sizeof(uint64_t);
}

/* The scan reads the map in chunks of this many entries (through the cache,
 * so it never holds more of the map than the budget allows). */
#define VDI_SCAN_CHUNK 16384u

static int vdi_scan(vdi_state *s) {
        uint32_t n = s->h.n_blocks, n_live = 0, n_bad = 0, hi = 0;
        uint64_t bytes = bitmap_bytes(n), charged = 0;
        _cleanup_free_ uint64_t *used = NULL, *bad = NULL;
        _cleanup_free_ uint8_t *chunk = NULL;
        int r;

        vdi_scan_drop(s);
        r = tc_budget_charge(s->budget, bytes);
        if (r < 0)
                return r;
        charged = bytes;
        used = bitmap_new(MAX(n, 1u));
        chunk = malloc(VDI_SCAN_CHUNK * 4);
        if (!used || !chunk) {
                r = vdisk_error(-ENOMEM, "out of memory");
                goto fail;
        }

        for (uint32_t first = 0; first < n; first += VDI_SCAN_CHUNK) {
                uint32_t cnt = MIN(n - first, VDI_SCAN_CHUNK);

                r = tc_read(s->map, (uint64_t) first * 4, chunk, (size_t) cnt * 4);
                if (r < 0)
                        goto fail;
                for (uint32_t j = 0; j < cnt; j++) {
                        uint32_t b = first + j, e = get_le32(chunk + (size_t) j * 4);

                        if (!entry_is_data(e))
                                continue;
                        if (e < n && !bitmap_get(used, e)) {
                                bitmap_set(used, e);
                                n_live++;
                                hi = MAX(hi, e + 1);
                                continue;
                        }
                        if (!bad) {
                                r = tc_budget_charge(s->budget, bytes);
                                if (r < 0)
                                        goto fail;
                                charged += bytes;
                                bad = bitmap_new(n);
                                if (!bad) {
                                        r = vdisk_error(-ENOMEM, "out of memory");
                                        goto fail;
                                }
                        }
                        bitmap_set(bad, b);
                        n_bad++;
                }
        }

        s->slot_used = TAKE_PTR(used);
        s->bad = TAKE_PTR(bad);
        s->charged = charged;
        s->scanned = true;
        s->n_live = n_live;
        s->live_known = true;
        s->n_bad = n_bad;
        s->hi = hi;
        return 0;

fail:
        tc_budget_uncharge(s->budget, charged);
        return r;
}

/* ---------------------------------------------------------------- header */

/* Bytes of a map of n entries on disk, padded to a sector. Above 64 MiB
 * (16 TiB in 1 MiB blocks) is -EFBIG: neither qemu nor VirtualBox makes such
 * maps, and the limit keeps every slot index and offset far from overflow. */
#define VDI_MAP_MAX (UINT64_C(64) << 20)
static int vdi_map_bytes(uint64_t n, uint64_t *ret) {
        if (n > VDI_MAP_MAX / 4)
                return vdisk_error(-EFBIG, "allocation table of %" PRIu64 " entries exceeds %" PRIu64 " MiB",
                                   n, VDI_MAP_MAX >> 20);
        *ret = ALIGN_UP(n * 4, (uint64_t) VDI_SECTOR);
        return 0;
}

static void get_geometry(const uint8_t *p, vdisk_geometry *g) {
        g->cylinders = get_le32(p);
        g->heads = get_le32(p + 4);
        g->sectors = get_le32(p + 8);
}

static void put_geometry(uint8_t *p, const vdisk_geometry *g) {
        put_le32(p, g->cylinders);
        put_le32(p + 4, g->heads);
        put_le32(p + 8, g->sectors);
        put_le32(p + 12, VDI_SECTOR);
}

/* Validates the header sector against the file size and fills *ret. The block
 * map's entries are checked as they are used (and all at once by vdi_scan()). */
static int vdi_header_parse(const uint8_t *raw, uint64_t file_size, vdi_header *ret) {
        vdi_header h = {};
        uint32_t version, block_extra, sector;
        uint64_t n_blocks, map_bytes;
        int r;

        if (get_le32(raw + OFF_SIGNATURE) != VDI_SIGNATURE)
                return vdisk_error(-EMEDIUMTYPE, "vdi: bad signature %08" PRIx32,
                                   get_le32(raw + OFF_SIGNATURE));

        version = get_le32(raw + OFF_VERSION);
        if (version != VDI_VERSION_1_1)
                return vdisk_error(-EOPNOTSUPP, "vdi: header version %" PRIu32 ".%" PRIu32
                                   " is not supported (only 1.1)", version >> 16, version & 0xffff);

        h.cb_header = get_le32(raw + OFF_CB_HEADER);
        if (h.cb_header != VDI_HEADER_V1_SIZE && h.cb_header != VDI_HEADER_V1PLUS_SIZE)
                return vdisk_error(-EOPNOTSUPP, "vdi: header size %" PRIu32 " is not supported (384 or 400)",
                                   h.cb_header);
        if (file_size < VDI_PREHEADER_SIZE + h.cb_header)
                return vdisk_error(-EUCLEAN, "vdi: file too short for its header (%" PRIu64 " bytes)",
                                   file_size);

        h.type = get_le32(raw + OFF_TYPE);
        if (h.type == VDI_TYPE_UNDO)
                return vdisk_error(-EOPNOTSUPP, "vdi: undo images are not supported");
        if (h.type != VDI_TYPE_NORMAL && h.type != VDI_TYPE_FIXED && h.type != VDI_TYPE_DIFF)
                return vdisk_error(-EUCLEAN, "vdi: unknown image type %" PRIu32, h.type);

        h.flags = get_le32(raw + OFF_FLAGS);
        /* The comment need not be NUL-terminated on disk. */
        memcpy(h.comment, raw + OFF_COMMENT, VDI_COMMENT_SIZE);
        h.comment[VDI_COMMENT_SIZE - 1] = 0;   /* a C string of at most 255 bytes */
        h.off_blocks = get_le32(raw + OFF_OFF_BLOCKS);
        h.off_data = get_le32(raw + OFF_OFF_DATA);
        get_geometry(raw + OFF_PCHS, &h.pchs);
        sector = get_le32(raw + OFF_PCHS + 12);
        h.disk_size = get_le64(raw + OFF_DISK_SIZE);
        h.block_size = get_le32(raw + OFF_BLOCK_SIZE);
        block_extra = get_le32(raw + OFF_BLOCK_EXTRA);
        h.n_blocks = get_le32(raw + OFF_BLOCKS);
        h.n_allocated = get_le32(raw + OFF_BLOCKS_ALLOCATED);
        memcpy(h.uuid, raw + OFF_UUID, 16);
        memcpy(h.uuid_modify, raw + OFF_UUID_MODIFY, 16);
        memcpy(h.uuid_link, raw + OFF_UUID_LINK, 16);
        memcpy(h.uuid_parent_modify, raw + OFF_UUID_PARENT_MODIFY, 16);
        if (h.cb_header >= VDI_HEADER_V1PLUS_SIZE)
                get_geometry(raw + OFF_LCHS, &h.lchs);

        if (sector != VDI_SECTOR)
                return vdisk_error(-EOPNOTSUPP, "vdi: sector size %" PRIu32 " is not supported (512)",
                                   sector);
        if (h.block_size < VDI_SECTOR || !IS_POWER_OF_2(h.block_size))
                return vdisk_error(-EUCLEAN, "vdi: invalid block size %" PRIu32, h.block_size);
        if (h.block_size > VDI_BLOCK_MAX)
                return vdisk_error(-EOPNOTSUPP, "vdi: block size %" PRIu32 " is above the 64 MiB we support",
                                   h.block_size);
        if (block_extra != 0)
                return vdisk_error(-EOPNOTSUPP, "vdi: per-block extra data (%" PRIu32 " bytes) "
                                   "is not supported", block_extra);
        if (h.off_blocks % VDI_SECTOR != 0 || h.off_data % VDI_SECTOR != 0)
                return vdisk_error(-EUCLEAN, "vdi: block map offset %" PRIu32 " or data offset %" PRIu32
                                   " is not sector-aligned", h.off_blocks, h.off_data);
        /* Aligned and past the header means the map starts at 512 or later:
         * the first sector holds only the header. */
        if (h.off_blocks < VDI_PREHEADER_SIZE + h.cb_header)
                return vdisk_error(-EUCLEAN, "vdi: block map offset %" PRIu32 " overlaps the header",
                                   h.off_blocks);

        if (h.disk_size > UINT64_MAX - VDI_SECTOR)
                return vdisk_error(-EFBIG, "vdi: disk size %" PRIu64 " is too large", h.disk_size);
        n_blocks = h.disk_size / h.block_size + (h.disk_size % h.block_size != 0);
        if (n_blocks != h.n_blocks)
                return vdisk_error(-EUCLEAN, "vdi: block count %" PRIu32 " does not match the disk size %"
                                   PRIu64 " with %" PRIu32 "-byte blocks",
                                   h.n_blocks, h.disk_size, h.block_size);

        r = vdi_map_bytes(h.n_blocks, &map_bytes);
        if (r < 0)
                return vdisk_error(r, "vdi: block map of %" PRIu32 " entries exceeds 64 MiB", h.n_blocks);
        if ((uint64_t) h.off_blocks + (uint64_t) h.n_blocks * 4 > h.off_data)
                return vdisk_error(-EUCLEAN, "vdi: block map (%" PRIu32 " entries at %" PRIu32
                                   ") overlaps the data area at %" PRIu32,
                                   h.n_blocks, h.off_blocks, h.off_data);

        *ret = h;
        return 0;
}

static void vdi_header_encode(const vdi_header *h, uint8_t *raw) {
        put_le32(raw + OFF_CB_HEADER, h->cb_header);
        put_le32(raw + OFF_TYPE, h->type);
        put_le32(raw + OFF_FLAGS, h->flags);
        memset(raw + OFF_COMMENT, 0, VDI_COMMENT_SIZE);
        memcpy(raw + OFF_COMMENT, h->comment, strnlen(h->comment, VDI_COMMENT_SIZE - 1));
        put_le32(raw + OFF_OFF_BLOCKS, h->off_blocks);
        put_le32(raw + OFF_OFF_DATA, h->off_data);
        put_geometry(raw + OFF_PCHS, &h->pchs);
        put_le64(raw + OFF_DISK_SIZE, h->disk_size);
        put_le32(raw + OFF_BLOCK_SIZE, h->block_size);
        put_le32(raw + OFF_BLOCK_EXTRA, 0);
        put_le32(raw + OFF_BLOCKS, h->n_blocks);
        put_le32(raw + OFF_BLOCKS_ALLOCATED, h->n_allocated);
        memcpy(raw + OFF_UUID, h->uuid, 16);
        memcpy(raw + OFF_UUID_MODIFY, h->uuid_modify, 16);
        memcpy(raw + OFF_UUID_LINK, h->uuid_link, 16);
        memcpy(raw + OFF_UUID_PARENT_MODIFY, h->uuid_parent_modify, 16);
        if (h->cb_header >= VDI_HEADER_V1PLUS_SIZE)
                put_geometry(raw + OFF_LCHS, &h->lchs);
}

/* Writes the header sector built from *h (no flush). On success it becomes
 * the sector we keep; the caller decides whether *h becomes s->h. */
static int vdi_write_header(vdi_state *s, const vdi_header *h) {
        uint8_t buf[VDI_SECTOR];
        int r;

        memcpy(buf, s->raw, sizeof buf);
        vdi_header_encode(h, buf);
        r = io_pwrite(s->io, buf, sizeof buf, 0);
        if (r < 0)
                return r;
        memcpy(s->raw, buf, sizeof buf);
        return 0;
}

/* ---------------------------------------------------------------- the map in the cache */

static int vdi_before_map_write(void *user);

/* 64 KiB pages: 16384 blocks (16 GiB in 1 MiB blocks) a page. */
#define VDI_MAP_PAGE (UINT32_C(64) << 10)

static int vdi_map_new(vdi_state *s, uint32_t off_blocks, uint32_t n_blocks, tc_table **ret) {
        tc_table_params p = {
                .offset = off_blocks,
                .size = (uint64_t) n_blocks * 4,
                .page_size = VDI_MAP_PAGE,
                .entry = TC_LE32,
                .before_write = vdi_before_map_write,
                .user = s,
                .name = "vdi block map",
        };

        return tc_table_new(s->budget, s->io, &p, ret);
}

static int vdi_map_open(vdi_state *s) {
        assert(!s->map);
        return vdi_map_new(s, s->h.off_blocks, s->h.n_blocks, &s->map);
}

/* ---------------------------------------------------------------- probe, open, close */

static int vdi_probe(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                     uint64_t file_size, const char *name) {
        if (head_len < OFF_SIGNATURE + 4)
                return 0;
        return get_le32(head + OFF_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

/* The UUIDs from the header alone, for parent searches: the same header
 * checks as vdi_open(), and the block map must lie within the file (as
 * vdi_open() demands), but the map is not read. */
static int vdi_peek(const uint8_t *head, size_t head_len, uint64_t file_size, meta *ret) {
        uint8_t raw[VDI_SECTOR] = {};
        vdi_header h;
        int r;

        assert(head || head_len == 0);
        assert(ret);

        if (head_len < OFF_SIGNATURE + 4 || file_size < OFF_SIGNATURE + 4)
                return vdisk_error(-EMEDIUMTYPE, "vdi: file too short (%" PRIu64 " bytes)", file_size);
        memcpy(raw, head, MIN(head_len, sizeof raw));
        r = vdi_header_parse(raw, MIN(file_size, (uint64_t) head_len), &h);
        if (r < 0)
                return r;
        if (!range_within(h.off_blocks, (uint64_t) h.n_blocks * 4, file_size))
                return vdisk_error(-EUCLEAN, "vdi: block map at %" PRIu32 " (%" PRIu32 " entries) extends "
                                   "past the end of the file (%" PRIu64 " bytes)",
                                   h.off_blocks, h.n_blocks, file_size);

        *ret = (meta) {
                .mask = META_UUID | META_MODIFICATION_UUID | META_PARENT_UUID | META_PARENT_MOD_UUID,
        };
        memcpy(ret->uuid, h.uuid, 16);
        memcpy(ret->modification_uuid, h.uuid_modify, 16);
        memcpy(ret->parent_uuid, h.uuid_link, 16);
        memcpy(ret->parent_modification_uuid, h.uuid_parent_modify, 16);
        return 0;
}

static int vdi_open(void *state, const open_ctx *c) {
        vdi_state *s = state;
        vdisk_io *io = c->io;
        uint64_t file_size;
        int r;

        assert(s);
        assert(io);

        s->io = io;
        /* An info-only open writes nothing (the core never flushes it). */
        s->writable = c->writable && !c->info_only;
        s->budget = c->budget;

        r = io_get_size(io, &file_size);
        if (r < 0)
                return r;
        if (file_size < OFF_SIGNATURE + 4)
                return vdisk_error(-EMEDIUMTYPE, "vdi: file too short (%" PRIu64 " bytes)", file_size);

        memset(s->raw, 0, sizeof s->raw);
        r = io_pread(io, s->raw, MIN(file_size, (uint64_t) VDI_SECTOR), 0);
        if (r < 0)
                return r;

        r = vdi_header_parse(s->raw, file_size, &s->h);
        if (r < 0)
                return r;
        s->size = ALIGN_UP(s->h.disk_size, (uint64_t) VDI_SECTOR);

        /* The file must hold the map (its size was checked against 64 MiB). */
        if (!range_within(s->h.off_blocks, (uint64_t) s->h.n_blocks * 4, file_size))
                return vdisk_error(-EUCLEAN, "vdi: block map at %" PRIu32 " (%" PRIu32 " entries) extends "
                                   "past the end of the file (%" PRIu64 " bytes)",
                                   s->h.off_blocks, s->h.n_blocks, file_size);
        r = vdi_map_open(s);
        if (r < 0)
                return r;

        /* No map entry is read until one is asked for; a writable image
         * scans the map before its first allocation (vdi_prepare_writes()):
         * a chain is opened writable for merges, but usually only its top
         * is ever written. */
        return 0;
}

/* Before anything allocates or moves blocks: the slot bitmap (which slots
 * are referenced, which entries are corrupt) and the allocation frontier. */
static int vdi_prepare_writes(vdi_state *s) {
        uint64_t file_size;
        int r;

        assert(s->writable);

        if (s->alloc_ready)
                return 0;
        if (!s->scanned) {
                r = vdi_scan(s);
                if (r < 0)
                        return r;
        }
        r = io_get_size(s->io, &file_size);
        if (r < 0)
                return r;
        hostalloc_init(&s->alloc, slot_offset(s, frontier(s)), file_size, VDI_SECTOR);
        s->alloc_ready = true;
        return 0;
}

static void vdi_close(void *state) {
        vdi_state *s = state;

        if (s->budget)
                vdi_scan_drop(s);
        s->map = tc_table_free(s->map);
}

static uint64_t vdi_get_size(void *state) {
        vdi_state *s = state;

        return s->size;
}

/* The block is the allocation, copy-on-write and zero unit alike. */
static void vdi_get_layout(void *state, image_layout *ret) {
        vdi_state *s = state;

        *ret = (image_layout) {
                .cluster_size = s->h.block_size,
                .zero_unit = s->h.block_size,
                .sector_size = VDI_SECTOR,
                .flags = s->h.type == VDI_TYPE_FIXED ? 0 : BACKEND_APPENDS,
        };
}

/* ---------------------------------------------------------------- data path */

static int vdi_map(void *state, uint64_t offset, uint64_t len, map_result *ret) {
        vdi_state *s = state;
        uint64_t bs = s->h.block_size, b = offset / bs, length;
        uint32_t e;
        map_kind kind;
        int r;

        assert(len > 0);
        assert(offset < s->size);
        assert(ret);

        r = map_get(s, b, &e);
        if (r < 0)
                return r;
        if (block_is_bad(s, b, e))
                return bad_entry_error(b, e);
        kind = entry_kind(e);
        length = bs - offset % bs;

        /* A run of unallocated or zero blocks (a hole of terabytes in a
         * large image) is found a word at a time in the cached map pages.
         * Such entries are never bad before a scan; after one, only where
         * the scan says so (then entry by entry, below). */
        if (kind != MAP_DATA && length < len && !(s->scanned && s->bad)) {
                uint64_t to = MIN((uint64_t) s->h.n_blocks, (offset + len - 1) / bs + 1), nb;

                r = tc_find_other(s->map, b + 1, to, e, &nb);
                if (r < 0)
                        return r;
                length += (nb - b - 1) * bs;
                *ret = (map_result) { .kind = kind, .length = MIN(length, len) };
                return 0;
        }

        /* Merge following blocks of the same kind (and, for data, contiguous
         * slots). Bad entries end the run; they fail when asked for. */
        for (uint64_t nb = b + 1; length < len && nb < s->h.n_blocks; nb++) {
                uint32_t next;

                r = map_get(s, nb, &next);
                if (r < 0)
                        return r;
                if (block_is_bad(s, nb, next))
                        break;
                if (entry_kind(next) != kind)
                        break;
                if (kind == MAP_DATA && next != e + (nb - b))
                        break;
                length += bs;
        }

        *ret = (map_result) {
                .kind = kind,
                .host_offset = kind == MAP_DATA ? slot_offset(s, e) + offset % bs : 0,
                .length = MIN(length, len),
        };
        return 0;
}

/* Reserves a slot for the block of `offset`: the next slot at the frontier
 * while there is one below cBlocks, else the lowest unreferenced slot. The
 * count and the map change only in vdi_commit(), once the data is written. */
static int vdi_allocate(void *state, uint64_t offset, uint64_t len, reservation *ret) {
        vdi_state *s = state;
        uint64_t bs = s->h.block_size, b = offset / bs, host;
        uint32_t slot;
        int fresh, r;

        assert(offset < s->size);
        assert(ret);
        assert(!s->reserved);

        r = vdi_prepare_writes(s);
        if (r < 0)
                return r;
        /* With corrupt entries around, a referenced slot may look free:
         * write nothing new until repair has sorted the map out. */
        if (s->n_bad > 0)
                return vdisk_error(-EUCLEAN, "vdi: the block map has %" PRIu32 " corrupt entries; "
                                   "repair the image before writing to it", s->n_bad);

        slot = frontier(s);
        if (slot < s->h.n_blocks) {
                hostalloc_rewind(&s->alloc, slot_offset(s, slot));
                r = hostalloc_alloc(&s->alloc, bs, UINT64_MAX, &host, &fresh);
                if (r < 0)
                        return r;
                assert(host == slot_offset(s, slot));
        } else {
                /* The allocated count reached cBlocks while slots below it are
                 * unreferenced (leaked by a crash, a cancelled compact or a
                 * foreign writer). An index >= cBlocks is corrupt for
                 * VirtualBox and qemu, so reuse the lowest unreferenced slot;
                 * it may hold old data. One exists: this block holds none. */
                if (!find_free_slot(s, 0, &slot))
                        return vdisk_error(-EUCLEAN, "vdi: no free slot although block %" PRIu64
                                           " is unallocated", b);
                host = slot_offset(s, slot);
                fresh = 0;
                hostalloc_note_used(&s->alloc, host, bs);
        }

        s->reserved = true;
        s->reserved_slot = slot;
        *ret = (reservation) {
                .unit_offset = b * bs,
                .length = bs,
                .host_offset = host,
                .fresh = fresh,
        };
        return 0;
}

static int vdi_commit(void *state, const reservation *res) {
        vdi_state *s = state;
        uint64_t b = res->unit_offset / s->h.block_size;
        uint32_t slot = s->reserved_slot;
        int r;

        assert(s->reserved);
        assert(res->host_offset == slot_offset(s, slot));

        /* The entry points at data written since the last flush: the cache
         * flushes it before writing the page. On failure (the map page
         * could not be read) the core releases the reservation. */
        r = map_set(s, b, slot, TC_AFTER_DATA);
        if (r < 0)
                return r;
        s->reserved = false;
        if (slot >= s->h.n_allocated) {
                /* The count goes to disk before the map entry (the map's
                 * before_write hook writes the header). */
                s->h.n_allocated = slot + 1;
                s->header_dirty = true;
        }
        bitmap_set(s->slot_used, slot);
        s->n_live++;
        s->hi = MAX(s->hi, slot + 1);
        return 0;
}

/* The slot stays unreferenced: the next reservation takes it again (no
 * longer fresh: hostalloc remembers that space was handed out). */
static void vdi_release(void *state, const reservation *res) {
        vdi_state *s = state;

        assert(s->reserved);
        assert(res->host_offset == slot_offset(s, s->reserved_slot));
        s->reserved = false;
        hostalloc_rewind(&s->alloc, slot_offset(s, frontier(s)));
}

/* Only blocks without data can become ZERO blocks here. Turning a data block
 * into ZERO would leak its slot, and a leaked slot below the count is what
 * `qemu-img check` reports as "allocated blocks mismatch", a corruption. So
 * data blocks are -EOPNOTSUPP and the core writes zeros into them instead;
 * compact reclaims all-zero blocks later. */
static int vdi_mark_zero(void *state, uint64_t offset, uint64_t len) {
        vdi_state *s = state;
        uint64_t bs = s->h.block_size, first = offset / bs, end;
        int r;

        assert(offset % bs == 0);
        assert(len > 0);
        assert(offset + len <= s->size);
        assert((offset + len) % bs == 0 || offset + len == s->size);

        end = DIV_ROUND_UP(offset + len, bs);
        for (uint64_t b = first; b < end; b++) {
                uint32_t e;

                r = map_get(s, b, &e);
                if (r < 0)
                        return r;
                if (block_is_bad(s, b, e))
                        return bad_entry_error(b, e);
                if (entry_is_data(e))
                        return vdisk_error(-EOPNOTSUPP, "vdi: block %" PRIu64 " holds data; "
                                           "it cannot become a zero block without leaking its slot", b);
        }
        /* A page that cannot be loaded here leaves the earlier blocks ZERO:
         * they held no data, so they read zeros either way (in a diff the
         * caller asked for zeros). */
        for (uint64_t b = first; b < end; b++) {
                r = map_set(s, b, VDI_ENTRY_ZERO, 0);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Makes sure the file holds every referenced slot in full. The core skips
 * writing zeros into fresh space, so the last slot may end early; qemu reads
 * that as zeros, VirtualBox may not. Extending is sparse. */
static int vdi_cover_slots(vdi_state *s, bool *ret_extended) {
        uint64_t need, size;
        int r;

        *ret_extended = false;
        if (s->hi == 0)
                return 0;
        need = slot_offset(s, s->hi);
        r = io_get_size(s->io, &size);
        if (r < 0)
                return r;
        if (size >= need)
                return 0;
        r = io_truncate(s->io, need);
        if (r == -EOPNOTSUPP)
                return 0;
        if (r < 0)
                return r;
        *ret_extended = true;
        return 0;
}

/* Write ordering:
 *   1. flush the data written into newly allocated slots;
 *   2. write the header (cBlocksAllocated, UUIDs, ...) and flush;
 *   3. write the dirty block map sectors and flush.
 * The table cache does 1 (vdi_commit() sets its entries with TC_AFTER_DATA)
 * and 3, and calls vdi_before_map_write() for 2 before any map page goes
 * out, whether in a flush or early because the metadata budget is full.
 * The header and the map are separate sectors, so a crash may leave one of
 * them new and the other old. Count first means the bad case is "count ahead
 * of the map": the slots in between are leaked and `qemu-img check` reports
 * an allocated-blocks mismatch, but every entry points at flushed data and
 * nothing will be allocated over it. The opposite order could leave an entry
 * referencing a slot at or above the on-disk count, and qemu and VirtualBox,
 * which allocate at cBlocksAllocated, would then hand that slot out again and
 * overwrite live data. Operations that lower the count (defrag, shrink) write
 * the map first instead, for the same reason. */
static int vdi_write_header_durable(vdi_state *s, bool flush) {
        int r;

        if (s->header_dirty) {
                r = vdi_write_header(s, &s->h);
                if (r < 0)
                        return r;
                /* Clean now: should the flush below fail, the next flush
                 * flushes before the map again (the cache keeps the data
                 * barrier of its pages until they are written). */
                s->header_dirty = false;
                flush = true;
        }
        return flush ? io_flush(s->io) : 0;
}

static int vdi_before_map_write(void *user) {
        vdi_state *s = user;
        bool extended;
        int r;

        r = vdi_cover_slots(s, &extended);
        if (r < 0)
                return r;
        return vdi_write_header_durable(s, extended);
}

static int vdi_flush(void *state) {
        vdi_state *s = state;
        bool extended;
        int r;

        if (!s->writable || !s->map)   /* !map: a half-opened state */
                return 0;
        if (tc_table_is_dirty(s->map))
                return tc_table_flush(s->map);
        if (!s->header_dirty)
                return io_flush(s->io);

        r = vdi_cover_slots(s, &extended);
        if (r < 0)
                return r;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        return vdi_write_header_durable(s, false);
}

/* ---------------------------------------------------------------- metadata */

static uint32_t vdi_image_flags(const vdi_state *s) {
        uint32_t f = 0;

        if (s->h.flags & VDI_FLAG_ZERO_EXPAND)
                f |= VDISK_IMAGE_FLAGS_ZERO_EXPAND;
        if (s->h.type == VDI_TYPE_FIXED)
                f |= VDISK_IMAGE_FLAGS_FIXED;
        if (s->h.type == VDI_TYPE_DIFF)
                f |= VDISK_IMAGE_FLAGS_DIFF;
        return f;
}

static int vdi_get_meta(void *state, meta *m) {
        vdi_state *s = state;

        assert(m);

        m->mask = META_UUID | META_MODIFICATION_UUID | META_PARENT_UUID | META_PARENT_MOD_UUID |
                  META_COMMENT | META_PCHS | META_FLAGS | META_VERSION;
        memcpy(m->uuid, s->h.uuid, 16);
        memcpy(m->modification_uuid, s->h.uuid_modify, 16);
        memcpy(m->parent_uuid, s->h.uuid_link, 16);
        memcpy(m->parent_modification_uuid, s->h.uuid_parent_modify, 16);
        m->comment = s->h.comment;
        m->pchs = s->h.pchs;
        if (s->h.cb_header >= VDI_HEADER_V1PLUS_SIZE) {
                m->mask |= META_LCHS;
                m->lchs = s->h.lchs;
        }
        m->flags = vdi_image_flags(s);
        m->version = VDI_VERSION_1_1;
        return 0;
}

/* Setting a parent UUID changes the image type: a non-null parent UUID makes
 * a NORMAL image a DIFF (the core relinks a base under a parent), a null one
 * makes a DIFF a NORMAL image (a merge made the diff the new base). VirtualBox
 * keeps the type; but a DIFF without a parent or a NORMAL image with one is
 * what neither tool expects. A static image cannot become a diff. */
static int vdi_set_meta(void *state, const meta *m, uint32_t mask) {
        vdi_state *s = state;
        vdi_header h = s->h;
        const uint32_t supported = META_UUID | META_MODIFICATION_UUID | META_PARENT_UUID |
                                   META_PARENT_MOD_UUID | META_COMMENT | META_PCHS | META_LCHS | META_FLAGS;

        assert(m);

        if (mask & ~supported)
                return vdisk_error(-EOPNOTSUPP, "vdi: the format has no such field (mask %#" PRIx32 ")",
                                   mask & ~supported);

        if (mask & META_UUID)
                memcpy(h.uuid, m->uuid, 16);
        if (mask & META_MODIFICATION_UUID)
                memcpy(h.uuid_modify, m->modification_uuid, 16);
        if (mask & META_PARENT_MOD_UUID)
                memcpy(h.uuid_parent_modify, m->parent_modification_uuid, 16);
        if (mask & META_PARENT_UUID) {
                bool null = vdisk_uuid_is_null(m->parent_uuid);

                if (!null && h.type == VDI_TYPE_FIXED)
                        return vdisk_error(-EOPNOTSUPP, "vdi: a static image cannot have a parent");
                memcpy(h.uuid_link, m->parent_uuid, 16);
                if (!null && h.type == VDI_TYPE_NORMAL)
                        h.type = VDI_TYPE_DIFF;
                else if (null && h.type == VDI_TYPE_DIFF)
                        h.type = VDI_TYPE_NORMAL;
        }
        if (mask & META_COMMENT) {
                const char *c = m->comment ?: "";
                size_t l = strlen(c);

                if (l >= VDI_COMMENT_SIZE)
                        return vdisk_error(-E2BIG, "vdi: comment of %zu bytes is too long (at most %u)",
                                           l, VDI_COMMENT_SIZE - 1);
                memset(h.comment, 0, sizeof h.comment);
                memcpy(h.comment, c, l);
        }
        if (mask & META_PCHS)
                h.pchs = m->pchs;
        if (mask & META_LCHS) {
                if (h.cb_header < VDI_HEADER_V1PLUS_SIZE)
                        return vdisk_error(-EOPNOTSUPP, "vdi: this image's 384-byte header has no "
                                           "logical geometry field");
                h.lchs = m->lchs;
        }
        if (mask & META_FLAGS) {
                const uint32_t fixed_bits = VDISK_IMAGE_FLAGS_FIXED | VDISK_IMAGE_FLAGS_DIFF;

                if ((m->flags & ~(fixed_bits | VDISK_IMAGE_FLAGS_ZERO_EXPAND)) ||
                    (m->flags & fixed_bits) != (vdi_image_flags(s) & fixed_bits))
                        return vdisk_error(-EOPNOTSUPP, "vdi: only the zero-expand flag can be changed");
                if (m->flags & VDISK_IMAGE_FLAGS_ZERO_EXPAND)
                        h.flags |= VDI_FLAG_ZERO_EXPAND;
                else
                        h.flags &= ~VDI_FLAG_ZERO_EXPAND;
        }

        s->h = h;
        s->header_dirty = true;
        return 0;
}

static int vdi_get_info(void *state, vdisk_image_info *ret) {
        vdi_state *s = state;
        int r;

        assert(ret);

        /* An image that was not scanned yet counts its blocks when first
         * asked, streaming the map through the cache, and keeps only the
         * count (the bitmaps stay only for images that write). */
        if (!s->live_known) {
                r = vdi_scan(s);
                if (r < 0)
                        return r;
                if (!s->alloc_ready)
                        vdi_scan_drop(s);
        }

        ret->cluster_size = s->h.block_size;
        ret->image_flags = vdi_image_flags(s);
        ret->dirty = 0;
        ret->variant = s->h.type == VDI_TYPE_FIXED ? "static" :
                       s->h.type == VDI_TYPE_DIFF ? "diff" : "dynamic";
        ret->blocks_total = s->h.n_blocks;
        ret->blocks_allocated = s->n_live;
        return 0;
}

/* ---------------------------------------------------------------- create */

/* qemu-img's vdi options we take: static=on|off (the core checked the
 * keys and values). qemu's preallocation= needs fallocate, which vdisk_io
 * does not offer; the block size comes from create_params.block_size. */
static int vdi_parse_options(const char *const *o, bool *fixed) {
        for (; o && o[0]; o += 2)
                if (streq(o[0], "static")) {
                        bool b = streq(o[1], "on");

                        if (!b && *fixed)
                                return vdisk_error(-EINVAL, "vdi: static=off conflicts with a fixed image");
                        *fixed = b;
                }
        return 0;
}

static int vdi_free_entry(void *ctx, uint64_t i, uint64_t *ret) {
        *ret = VDI_ENTRY_FREE;
        return 0;
}

static int vdi_identity_entry(void *ctx, uint64_t i, uint64_t *ret) {
        *ret = i;
        return 0;
}

/* What vdi_scan() would find in a new map: nothing, or (static) every slot
 * in order. */
static int vdi_scan_fresh(vdi_state *s, bool fixed) {
        uint32_t n = s->h.n_blocks;
        uint64_t bytes = bitmap_bytes(n);
        int r;

        vdi_scan_drop(s);
        r = tc_budget_charge(s->budget, bytes);
        if (r < 0)
                return r;
        s->slot_used = bitmap_new(MAX(n, 1u));
        if (!s->slot_used) {
                tc_budget_uncharge(s->budget, bytes);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        s->charged = bytes;
        if (fixed)
                for (uint32_t i = 0; i < n; i++)
                        bitmap_set(s->slot_used, i);
        s->scanned = true;
        s->live_known = true;
        s->n_live = fixed ? n : 0;
        s->hi = fixed ? n : 0;
        s->n_bad = 0;
        return 0;
}

static int vdi_create(void *state, const open_ctx *c, const create_params *p) {
        vdisk_io *io = c->io;
        vdi_state *s = state;
        bool fixed = p->image_flags & VDISK_IMAGE_FLAGS_FIXED;
        bool diff = p->image_flags & VDISK_IMAGE_FLAGS_DIFF;
        uint32_t bs = p->block_size ?: VDI_BLOCK_DEFAULT;
        uint64_t n_blocks, map_bytes = 0, off_data, data_end;
        vdi_header h = {};
        size_t comment_len = p->comment ? strlen(p->comment) : 0;
        int r;

        assert(io);
        assert(p);

        r = vdi_parse_options(p->options, &fixed);
        if (r < 0)
                return r;
        if (p->image_flags & ~(VDISK_IMAGE_FLAGS_ZERO_EXPAND | VDISK_IMAGE_FLAGS_FIXED |
                               VDISK_IMAGE_FLAGS_DIFF))
                return vdisk_error(-EOPNOTSUPP, "vdi: image flags %#" PRIx32 " are not supported",
                                   p->image_flags);
        if (fixed && diff)
                return vdisk_error(-EOPNOTSUPP, "vdi: a differencing image cannot be static");
        if (bs < VDI_SECTOR || bs > VDI_BLOCK_MAX || !IS_POWER_OF_2(bs))
                return vdisk_error(-EINVAL, "vdi: block size %" PRIu32 " is not a power of two "
                                   "from 512 bytes to 64 MiB", bs);
        /* VirtualBox refuses other sizes; qemu would round them up. */
        if (p->size == 0 || p->size % VDI_SECTOR != 0)
                return vdisk_error(-EINVAL, "vdi: size %" PRIu64 " is not a multiple of 512", p->size);
        if (comment_len >= VDI_COMMENT_SIZE)
                return vdisk_error(-E2BIG, "vdi: comment of %zu bytes is too long (at most %u)",
                                   comment_len, VDI_COMMENT_SIZE - 1);

        n_blocks = p->size / bs + (p->size % bs != 0);
        r = vdi_map_bytes(n_blocks, &map_bytes);
        if (r < 0)
                return vdisk_error(r, "vdi: %" PRIu64 " bytes in %" PRIu32 "-byte blocks need a block map "
                                   "above 64 MiB", p->size, bs);

        /* Map right after the header sector (like qemu), data aligned to
         * 1 MiB (like VirtualBox): aligned blocks suit the host file system,
         * and the gap lets the map grow in place (256 GiB of growth with
         * 1 MiB blocks before the map has to move). */
        off_data = ALIGN_UP(VDI_SECTOR + map_bytes, (uint64_t) VDI_DATA_ALIGN);
        assert(off_data <= UINT32_MAX);

        h = (vdi_header) {
                .cb_header = VDI_HEADER_V1PLUS_SIZE,
                .type = diff ? VDI_TYPE_DIFF : fixed ? VDI_TYPE_FIXED : VDI_TYPE_NORMAL,
                .flags = (p->image_flags & VDISK_IMAGE_FLAGS_ZERO_EXPAND) ? VDI_FLAG_ZERO_EXPAND : 0,
                .off_blocks = VDI_SECTOR,
                .off_data = (uint32_t) off_data,
                /* Zero geometry means "not set": VirtualBox and qemu both
                 * store zeros when the caller gives none, and the BIOS side
                 * computes one. */
                .pchs = p->pchs,
                .lchs = p->lchs,
                .disk_size = p->size,
                .block_size = bs,
                .n_blocks = (uint32_t) n_blocks,
                .n_allocated = fixed ? (uint32_t) n_blocks : 0,
        };
        if (p->comment)
                memcpy(h.comment, p->comment, comment_len);
        memcpy(h.uuid, p->uuid, 16);
        /* VirtualBox gives a new image a random modification UUID too. */
        vdisk_uuid_generate(h.uuid_modify);
        if (diff) {
                memcpy(h.uuid_link, p->parent_uuid, 16);
                memcpy(h.uuid_parent_modify, p->parent_modification_uuid, 16);
        }

        s->io = io;
        s->writable = 1;
        memset(s->raw, 0, sizeof s->raw);
        memcpy(s->raw + OFF_TEXT, vdi_text, sizeof vdi_text - 1);
        put_le32(s->raw + OFF_SIGNATURE, VDI_SIGNATURE);
        put_le32(s->raw + OFF_VERSION, VDI_VERSION_1_1);
        s->h = h;
        s->size = p->size;

        s->budget = c->budget;

        /* A static image gets all its slots at once, as a sparse file (what
         * `qemu-img create -o static=on` does too; VirtualBox writes zeros). */
        data_end = fixed ? slot_offset(s, n_blocks) : off_data;

        r = vdi_write_header(s, &s->h);
        if (r < 0)
                return r;
        /* The map goes out in bounded chunks, not through the cache: a new
         * 16 TiB image's map is 64 MiB of FREE entries. */
        r = tc_write_entries(io, VDI_SECTOR, n_blocks, TC_LE32, VDI_ENTRY_FREE,
                             fixed ? vdi_identity_entry : vdi_free_entry, NULL);
        if (r < 0)
                return r;
        r = io_truncate(io, data_end);
        if (r < 0)
                return r;

        r = vdi_map_open(s);
        if (r < 0)
                return r;
        r = vdi_scan_fresh(s, fixed);
        if (r < 0)
                return r;
        s->alloc_ready = true;

        hostalloc_init(&s->alloc, slot_offset(s, frontier(s)), data_end, VDI_SECTOR);
        return 0;
}

/* ---------------------------------------------------------------- moving blocks */

/* Copies one slot's data into another (through a bounded buffer). The source
 * may end past the end of the file; that part reads as zeros. */
static int vdi_copy_slot(vdi_state *s, uint32_t src, uint32_t dst, uint8_t *buf, size_t buf_size) {
        uint64_t bs = s->h.block_size, from = slot_offset(s, src), to = slot_offset(s, dst);
        int r;

        for (uint64_t done = 0; done < bs;) {
                size_t n = (size_t) MIN((uint64_t) buf_size, bs - done);

                r = io_pread_zerofill(s->io, buf, n, from + done);
                if (r < 0)
                        return r;
                r = io_pwrite(s->io, buf, n, to + done);
                if (r < 0)
                        return r;
                done += n;
        }
        hostalloc_note_used(&s->alloc, to, bs);
        return 0;
}

/* Moves blocks into new slots, crash-safely. Each destination must be
 * unreferenced (in memory and on disk) and below the count on disk. Order:
 * copy the data, flush, point the entries at the copies, write the map,
 * flush. Until the map write lands the old entries still point at the old,
 * intact data and the copies are leaked space; after it, at flushed copies. */
static int vdi_move_blocks(vdi_state *s, const vdi_move *moves, size_t n, uint8_t *buf, size_t buf_size,
                           vdisk_progress *p) {
        int r;

        for (size_t i = 0; i < n; i++) {
                r = vdi_copy_slot(s, moves[i].src, moves[i].dst, buf, buf_size);
                if (r < 0)
                        return r;
                (void) progress_add(p, s->h.block_size);   /* reports only: not a cancel point */
        }
        r = io_flush(s->io);
        if (r < 0)
                return r;

        /* Destinations past the count are covered only now that their data
         * is durable: a failed copy leaves the count as it was (the space it
         * wrote past the count is nobody's). The header goes out before the
         * map (the map's before_write hook). */
        for (size_t i = 0; i < n; i++)
                if (moves[i].dst >= s->h.n_allocated) {
                        s->h.n_allocated = moves[i].dst + 1;
                        s->header_dirty = true;
                }
        for (size_t i = 0; i < n; i++) {
                r = map_set(s, moves[i].block, moves[i].dst, 0);
                if (r < 0)
                        return r;
                bitmap_clear(s->slot_used, moves[i].src);
                bitmap_set(s->slot_used, moves[i].dst);
                s->hi = MAX(s->hi, moves[i].dst + 1);
        }
        /* On failure the entries stay dirty in memory, pointing at flushed
         * copies; the next flush writes them. */
        return tc_table_flush(s->map);
}

/* Raises the count to cover every referenced slot (only a foreign writer or
 * a damaged header leaves it lower) and makes disk match memory. */
static int vdi_sync(vdi_state *s) {
        if (s->h.n_allocated < s->hi) {
                s->h.n_allocated = s->hi;
                s->header_dirty = true;
        }
        return vdi_flush(s);
}

/* How many blocks vdi_defrag() will move: those in slots at or above n_live. */
static int vdi_count_moves(vdi_state *s, uint32_t *ret) {
        uint32_t n = 0;
        int r;

        for (uint32_t b = 0; b < s->h.n_blocks; b++) {
                uint32_t e;

                r = map_get(s, b, &e);
                if (r < 0)
                        return r;
                if (entry_is_data(e) && e >= s->n_live)
                        n++;
        }
        *ret = n;
        return 0;
}

/* For resize and repair, whose progress is the data vdi_defrag() moves. */
static int vdi_progress_moves(vdi_state *s, vdisk_progress *p) {
        uint32_t n;
        int r;

        r = vdi_count_moves(s, &n);
        if (r < 0)
                return r;
        if (n > 0)
                progress_set_total(p, (uint64_t) n * s->h.block_size);
        return 0;
}

/* Reserves the file space of the slots below `n_keep` that a defrag will
 * move blocks into: those no entry references, and those of the blocks in
 * `dropped` (a slot bitmap, may be NULL) that compact is about to drop. A
 * hole there (a sparse copy, a punched block) takes space when it is
 * written, and a defrag that stopped half way for want of it would leave
 * the count ahead of the map, which qemu-img check and ours call a
 * corruption. So the space is taken first, and a full file system fails
 * the operation before it changes anything. Where the host cannot reserve
 * (-EOPNOTSUPP), the moves go ahead as before. */
static int vdi_reserve_holes(vdi_state *s, uint32_t n_keep, const uint64_t *dropped) {
        uint64_t bs = s->h.block_size;
        uint32_t run = 0, start = 0;
        int r;

        for (uint32_t x = 0; x <= n_keep; x++) {
                bool hole = x < n_keep && (!bitmap_get(s->slot_used, x) || (dropped && bitmap_get(dropped, x)));

                if (hole) {
                        if (run++ == 0)
                                start = x;
                        continue;
                }
                if (run == 0)
                        continue;
                r = io_reserve(s->io, slot_offset(s, start), run * bs);
                if (r == -EOPNOTSUPP)
                        return 0;
                if (r < 0)
                        return r;
                run = 0;
        }
        return 0;
}

static int vdi_pack_repoint(void *user, uint64_t key, uint64_t from, uint64_t to) {
        vdi_state *s = user;
        uint32_t src = (uint32_t) ((from - s->h.off_data) / s->h.block_size);
        uint32_t dst = (uint32_t) ((to - s->h.off_data) / s->h.block_size);
        int r;

        r = map_set(s, key, dst, 0);
        if (r < 0)
                return r;
        hostalloc_note_used(&s->alloc, to, s->h.block_size);
        bitmap_clear(s->slot_used, src);
        bitmap_set(s->slot_used, dst);
        s->hi = MAX(s->hi, dst + 1);
        return 0;
}

/* On failure the entries stay dirty in memory, pointing at flushed copies;
 * the next flush writes them. */
static int vdi_pack_commit(void *user) {
        vdi_state *s = user;

        return tc_table_flush(s->map);
}

/* Packs the referenced slots into 0..n_live-1: the blocks in the highest
 * slots move into the lowest unreferenced slots below them (fmt_pack: they
 * keep their order; every destination is below the count on disk, so the
 * header need not change first). Then the count drops to n_live (the map no
 * longer references anything above it, so the header is written after the
 * map here) and the file is cut after the last slot. p (may be NULL) gets
 * the bytes moved. The moves cannot be cancelled: stopping between two
 * batches would leave the count ahead of the map, which qemu-img check and
 * ours call a corruption. Requires a map without bad entries. */
static int vdi_defrag(vdi_state *s, vdisk_progress *p) {
        _cleanup_free_ fmt_unit *units = NULL;
        uint32_t n;
        size_t n_units = 0;
        uint64_t end;
        int r;

        assert(s->n_bad == 0);

        r = vdi_sync(s);
        if (r < 0)
                return r;

        n = s->n_live;
        units = malloc(MAX(n, 1u) * sizeof *units);
        if (!units)
                return -ENOMEM;
        for (uint32_t b = 0; b < s->h.n_blocks; b++) {
                uint32_t e;

                r = map_get(s, b, &e);
                if (r < 0)
                        return r;
                if (!entry_is_data(e))
                        continue;
                if (n_units == n)
                        return vdisk_error(-EUCLEAN, "vdi: more blocks in the map than the %" PRIu32 " counted", n);
                units[n_units++] = (fmt_unit) { .key = b, .host = slot_offset(s, e) };
        }
        fmt_pack pk = {
                .io = s->io,
                .unit = s->h.block_size,
                .floor = slot_offset(s, 0),
                .units = units,
                .n_units = n_units,
                .batch = VDI_MOVE_BATCH,
                .p = p,
                .repoint = vdi_pack_repoint,
                .commit = vdi_pack_commit,
                .user = s,
        };
        r = fmt_pack_run(&pk, NULL);
        if (r < 0)
                return r;

        /* Every referenced slot is below n now (they are exactly 0..n-1). */
        s->hi = n;
        s->h.n_allocated = n;
        r = vdi_write_header(s, &s->h);
        if (r < 0) {
                s->header_dirty = true;
                return r;
        }
        s->header_dirty = false;
        r = io_flush(s->io);
        if (r < 0)
                return r;

        end = slot_offset(s, n);
        r = io_truncate(s->io, end);
        if (r < 0)
                return r;
        hostalloc_truncated(&s->alloc, end);
        hostalloc_rewind(&s->alloc, end);
        return io_flush(s->io);
}

/* ---------------------------------------------------------------- resize */

/* Grows the map where it is: the new entries (FREE) go between the old end
 * of the map and offData, which the current header does not cover, so they
 * are written first and the header (cBlocks, cbDisk) switches to them. */
static int vdi_grow_in_place(vdi_state *s, uint64_t new_size, uint32_t new_blocks) {
        uint32_t old_blocks = s->h.n_blocks;
        vdi_header h = s->h;
        int r;

        assert(!s->header_dirty && !tc_table_is_dirty(s->map));

        r = tc_table_resize(s->map, (uint64_t) new_blocks * 4, VDI_ENTRY_FREE);
        if (r < 0)
                goto undo;
        r = tc_table_flush(s->map);
        if (r < 0)
                goto undo;

        h.n_blocks = new_blocks;
        h.disk_size = new_size;
        r = vdi_write_header(s, &h);
        if (r < 0)
                goto undo;
        s->h = h;
        s->size = new_size;

        r = vdi_scan(s);
        if (r < 0)
                return r;
        return io_flush(s->io);

undo:
        /* Entries past the old cBlocks are outside the image; dropping them
         * again leaves memory matching the unchanged header. */
        (void) tc_table_resize(s->map, (uint64_t) old_blocks * 4, VDI_ENTRY_FREE);
        return r;
}

/* How a map of new_blocks entries that does not fit before offData would be
 * moved: the map takes the place of the first k slots, so offData moves up
 * by k blocks and every slot index drops by k. The live blocks in those
 * slots must first move to free slots at index >= k, below cBlocks (an index
 * >= cBlocks is corrupt for VirtualBox and qemu, and a crash must leave a
 * valid image). */
static int vdi_plan_relocation(const vdi_state *s, uint32_t new_blocks, uint32_t *ret_k,
                               uint32_t *ret_moving, uint32_t *ret_free) {
        uint64_t map_bytes = 0, k, moving = 0, used_above = 0;
        int r;

        r = vdi_map_bytes(new_blocks, &map_bytes);
        if (r < 0)
                return r;
        k = DIV_ROUND_UP(map_bytes, (uint64_t) s->h.block_size);
        if ((uint64_t) s->h.off_data + k * s->h.block_size > UINT32_MAX)
                return vdisk_error(-EFBIG, "vdi: the block map cannot move: "
                                   "the data offset would pass 4 GiB");

        for (uint32_t i = 0; i < s->h.n_blocks; i++)
                if (bitmap_get(s->slot_used, i)) {
                        if (i < k)
                                moving++;
                        else
                                used_above++;
                }

        *ret_k = (uint32_t) k;
        *ret_moving = (uint32_t) moving;
        *ret_free = k >= s->h.n_blocks ? 0 : (uint32_t) (s->h.n_blocks - k - used_above);
        return 0;
}

/* The relocated map: the old entries with slot indices k lower (the map
 * takes slots 0..k-1), FREE for the new blocks. */
typedef struct vdi_renumber {
        vdi_state *s;
        uint32_t k;
} vdi_renumber;

static int vdi_renumbered_entry(void *ctx, uint64_t b, uint64_t *ret) {
        vdi_renumber *rn = ctx;
        uint32_t e;
        int r;

        if (b >= rn->s->h.n_blocks) {
                *ret = VDI_ENTRY_FREE;
                return 0;
        }
        r = map_get(rn->s, b, &e);
        if (r < 0)
                return r;
        if (entry_is_data(e)) {
                assert(e >= rn->k);
                e -= rn->k;
        }
        *ret = e;
        return 0;
}

static int vdi_grow_relocate(vdi_state *s, uint64_t new_size, uint32_t new_blocks) {
        uint32_t k, moving, n_free, from, old_off_blocks, old_off_data;
        size_t n_moves = 0, buf_size;
        tc_table *nm = NULL;
        vdi_renumber rn;
        vdi_header h;
        int r;

        r = vdi_plan_relocation(s, new_blocks, &k, &moving, &n_free);
        if (r < 0)
                return r;
        if (moving > n_free)
                return vdisk_error(-EOPNOTSUPP, "vdi: growing needs the block map to move, which needs %"
                                   PRIu32 " free blocks below the block count; the image has %" PRIu32
                                   " (compact or convert it first)", moving, n_free);

        /* 1. Empty slots 0..k-1. */
        if (moving > 0) {
                buf_size = MIN(s->h.block_size, VDI_IO_CHUNK);
                _cleanup_free_ vdi_move *moves = malloc(moving * sizeof(vdi_move));
                _cleanup_free_ uint8_t *buf = buf_alloc(buf_size);
                if (!moves || !buf)
                        return -ENOMEM;

                from = k;
                for (uint32_t b = 0; b < s->h.n_blocks; b++) {
                        uint32_t e, dst;

                        r = map_get(s, b, &e);
                        if (r < 0)
                                return r;
                        if (!entry_is_data(e) || e >= k)
                                continue;
                        if (!find_free_slot(s, from, &dst))
                                return vdisk_error(-EUCLEAN, "vdi: no free slot to move block %" PRIu32, b);
                        moves[n_moves++] = (vdi_move) { .block = b, .src = e, .dst = dst };
                        from = dst + 1;
                }
                assert(n_moves == moving);

                /* The destinations may lie past the count: vdi_move_blocks()
                 * raises it once their data is durable. */
                r = vdi_move_blocks(s, moves, n_moves, buf, buf_size, NULL);
                if (r < 0)
                        return r;
        }

        /* 2. Write the new map (indices renumbered) into the freed slots.
         * Nothing references that space, so a crash here changes nothing. */
        old_off_blocks = s->h.off_blocks;
        old_off_data = s->h.off_data;
        rn = (vdi_renumber) { .s = s, .k = k };
        r = tc_write_entries(s->io, old_off_data, new_blocks, TC_LE32, VDI_ENTRY_FREE, vdi_renumbered_entry, &rn);
        if (r < 0)
                return r;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        hostalloc_note_used(&s->alloc, old_off_data, ALIGN_UP((uint64_t) new_blocks * 4, (uint64_t) VDI_SECTOR));
        r = vdi_map_new(s, old_off_data, new_blocks, &nm);
        if (r < 0)
                return r;

        /* 3. One header sector write switches map, data offset, size and
         * count together. */
        h = s->h;
        h.off_blocks = old_off_data;
        h.off_data = old_off_data + k * s->h.block_size;
        h.n_blocks = new_blocks;
        h.disk_size = new_size;
        h.n_allocated = h.n_allocated > k ? h.n_allocated - k : 0;
        r = vdi_write_header(s, &h);

        /* The new map is durable whether or not that write made it: adopt the
         * new layout; if the write failed, the next flush writes the header
         * again (its map is clean, so nothing else goes first). */
        tc_table_free(s->map);
        s->map = nm;
        s->h = h;
        s->size = new_size;
        if (r < 0) {
                s->header_dirty = true;
                (void) vdi_scan(s);
                return r;
        }
        r = vdi_scan(s);
        if (r < 0)
                return r;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        hostalloc_rewind(&s->alloc, slot_offset(s, frontier(s)));

        /* The old map's room is unused now; give it back if the host can. */
        (void) io_punch_hole(s->io, old_off_blocks, old_off_data - old_off_blocks);
        return 0;
}

static int vdi_grow(vdi_state *s, uint64_t new_size, uint32_t new_blocks) {
        uint64_t bs = s->h.block_size;
        uint32_t room = (s->h.off_data - s->h.off_blocks) / 4, k, moving, n_free;
        int r;

        if (new_blocks <= room)
                return vdi_grow_in_place(s, new_size, new_blocks);

        /* The map must move and may lack free slots for the blocks in its
         * way. Growing in place first, as far as the map's room allows,
         * adds free slot indices; a crash between the two steps leaves a
         * valid image of the intermediate size. */
        r = vdi_plan_relocation(s, new_blocks, &k, &moving, &n_free);
        if (r < 0)
                return r;
        if (moving > n_free && room > s->h.n_blocks) {
                r = vdi_grow_in_place(s, (uint64_t) room * bs, room);
                if (r < 0)
                        return r;
        }
        return vdi_grow_relocate(s, new_size, new_blocks);
}

/* Shrinking: the core guarantees that the blocks past the new end hold
 * nothing the user needs. Their entries are freed on disk first, the
 * remaining blocks are packed below the new block count (a slot index >=
 * cBlocks is corrupt for qemu and VirtualBox), and only then does the header
 * switch to the new size. */
static int vdi_shrink(vdi_state *s, uint64_t new_size, uint32_t new_blocks, vdisk_progress *p) {
        vdi_header h;
        int r;

        for (uint32_t b = new_blocks; b < s->h.n_blocks; b++) {
                uint32_t e;

                r = map_get(s, b, &e);
                if (r < 0)
                        return r;
                r = map_set(s, b, VDI_ENTRY_FREE, 0);
                if (r < 0)
                        return r;
                if (entry_is_data(e)) {
                        bitmap_clear(s->slot_used, e);
                        s->n_live--;
                }
        }
        r = vdi_flush(s);
        if (r < 0)
                return r;

        r = vdi_progress_moves(s, p);
        if (r < 0)
                return r;
        r = vdi_defrag(s, p);
        if (r < 0)
                return r;

        h = s->h;
        h.n_blocks = new_blocks;
        h.disk_size = new_size;
        r = vdi_write_header(s, &h);
        if (r < 0)
                return r;
        s->h = h;
        s->size = new_size;
        r = io_flush(s->io);
        if (r < 0)
                return r;

        /* Entries past the new end stay on disk, all FREE, as map padding. */
        r = tc_table_resize(s->map, (uint64_t) new_blocks * 4, VDI_ENTRY_FREE);
        if (r < 0)
                return r;
        r = vdi_scan(s);
        if (r < 0)
                return r;
        return vdi_flush(s);
}

static int vdi_resize(void *state, uint64_t new_size, vdisk_progress *p) {
        vdi_state *s = state;
        uint64_t bs = s->h.block_size, n64, map_bytes;
        uint32_t new_blocks;
        int r;

        if (!s->writable)
                return vdisk_error(-EROFS, "vdi: image is read-only");
        r = vdi_prepare_writes(s);
        if (r < 0)
                return r;
        if (s->n_bad > 0)
                return vdisk_error(-EUCLEAN, "vdi: the block map has %" PRIu32 " corrupt entries; "
                                   "repair the image before resizing it", s->n_bad);
        if (new_size == 0 || new_size % VDI_SECTOR != 0)
                return vdisk_error(-EINVAL, "vdi: size %" PRIu64 " is not a multiple of 512", new_size);

        n64 = new_size / bs + (new_size % bs != 0);
        r = vdi_map_bytes(n64, &map_bytes);
        if (r < 0)
                return vdisk_error(r, "vdi: %" PRIu64 " bytes need a block map above 64 MiB", new_size);
        new_blocks = (uint32_t) n64;

        if (new_size == s->h.disk_size)
                return 0;
        /* VirtualBox cannot grow static images either: the new blocks would
         * have to be allocated, and a static image is all allocated. */
        if (s->h.type == VDI_TYPE_FIXED && new_blocks > s->h.n_blocks)
                return vdisk_error(-EOPNOTSUPP, "vdi: static images cannot grow");

        r = vdi_sync(s);
        if (r < 0)
                return r;

        if (new_blocks == s->h.n_blocks) {
                vdi_header h = s->h;

                h.disk_size = new_size;
                r = vdi_write_header(s, &h);
                if (r < 0)
                        return r;
                s->h = h;
                s->size = new_size;
                return io_flush(s->io);
        }
        if (new_blocks < s->h.n_blocks)
                return vdi_shrink(s, new_size, new_blocks, p);
        return vdi_grow(s, new_size, new_blocks);
}

/* ---------------------------------------------------------------- compact */

/* Static images are refused: every block of one is allocated by definition
 * (VirtualBox refuses too). The scan only reads and decides (a 2-bit verdict
 * per block in memory): cancel during the scan changes nothing. Then the
 * drops are written in one flush (their slots become leaks) and vdi_defrag()
 * packs the rest and truncates; that phase is not cancellable, because
 * stopping inside it would leave the header count ahead of the map. Progress
 * counts the scan (the disk's size) plus the bytes moved, which are at most
 * the live blocks: the total says so from the start, and the blocks that need
 * no move are counted when the scan ends. */
static int vdi_compact(void *state, compact_fn fn, void *ctx, vdisk_progress *p) {
        vdi_state *s = state;
        uint64_t bs = s->h.block_size;
        size_t buf_size = MIN(s->h.block_size, VDI_IO_CHUNK);
        _cleanup_free_ uint64_t *verdicts = NULL;   /* 2 bits a block: 0 keep, 1 unalloc, 2 zero */
        _cleanup_free_ uint64_t *dropped = NULL;    /* a bit a slot: its block is dropped */
        uint64_t n_drops = 0, live_before;
        uint32_t n_moves;
        int r;

        assert(fn);

        if (!s->writable)
                return vdisk_error(-EROFS, "vdi: image is read-only");
        if (s->h.type == VDI_TYPE_FIXED)
                return vdisk_error(-EOPNOTSUPP, "vdi: static images cannot be compacted");
        r = vdi_prepare_writes(s);
        if (r < 0)
                return r;
        if (s->n_bad > 0)
                return vdisk_error(-EUCLEAN, "vdi: the block map has %" PRIu32 " corrupt entries; "
                                   "repair the image before compacting it", s->n_bad);

        r = vdi_sync(s);
        if (r < 0)
                return r;

        _cleanup_free_ uint8_t *buf = buf_alloc(buf_size);
        fmt_scan sc = { .fn = fn, .ctx = ctx, .buf = buf, .buf_size = buf_size };
        verdicts = bitmap_new((uint64_t) s->h.n_blocks * 2);
        dropped = bitmap_new(s->h.n_blocks);
        if (!buf || !verdicts || !dropped)
                return vdisk_error(-ENOMEM, "out of memory");
        live_before = s->n_live;
        progress_set_total(p, s->size + live_before * bs);

        for (uint64_t b = 0; b < s->h.n_blocks; b++) {
                uint32_t e;

                r = progress_check(p);
                if (r < 0)
                        return vdisk_error(r, "vdi: compact cancelled (nothing changed)");
                r = map_get(s, b, &e);
                if (r < 0)
                        return r;
                if (entry_is_data(e)) {
                        compact_verdict v;

                        /* in pieces of at most VDI_IO_CHUNK: UNALLOC if every
                         * piece equals what shows through from below, ZERO if
                         * every piece is zeros */
                        fmt_scan_begin(&sc);
                        r = fmt_scan_piece(&sc, s->io, slot_offset(s, e), b * bs, MIN(bs, s->size - b * bs));
                        if (r < 0)
                                return r;
                        v = fmt_scan_verdict(&sc);
                        if (v != COMPACT_KEEP) {
                                bitmap_set(verdicts, 2 * b + (v == COMPACT_ZERO));
                                bitmap_set(dropped, e);
                                n_drops++;
                        }
                }
                r = progress_add(p, MIN(bs, s->size - b * bs));
                if (r < 0)
                        return vdisk_error(r, "vdi: compact cancelled (nothing changed)");
        }

        /* Space for the moves first: nothing has changed if there is none. */
        r = vdi_reserve_holes(s, (uint32_t) (s->n_live - n_drops), dropped);
        if (r < 0)
                return r;

        for (uint64_t b = 0; n_drops > 0 && b < s->h.n_blocks; b++) {
                bool unalloc = bitmap_get(verdicts, 2 * b), zero = bitmap_get(verdicts, 2 * b + 1);
                uint32_t e;

                if (!unalloc && !zero)
                        continue;
                r = map_get(s, b, &e);
                if (r < 0)
                        return r;
                r = map_set(s, b, zero ? VDI_ENTRY_ZERO : VDI_ENTRY_FREE, 0);
                if (r < 0)
                        return r;
                bitmap_clear(s->slot_used, e);
                s->n_live--;
        }
        r = vdi_flush(s);
        if (r < 0)
                return r;
        /* Count now what the defrag will not move. */
        r = vdi_count_moves(s, &n_moves);
        if (r < 0)
                return r;
        (void) progress_add(p, (live_before - n_moves) * bs);
        return vdi_defrag(s, p);
}

/* ---------------------------------------------------------------- check and repair */

#define REPORT(rep, n, ...)                                             \
        do {                                                            \
                if ((n) < VDI_CHECK_MESSAGES) {                         \
                        int _q = check_report_add((rep), __VA_ARGS__);  \
                        if (_q < 0)                                     \
                                return _q;                              \
                }                                                       \
        } while (0)

static int vdi_check(void *state, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p) {
        vdi_state *s = state;
        bool repair_all = flags & VDISK_CHECK_REPAIR_ALL;
        bool repair_leaks = repair_all || (flags & VDISK_CHECK_REPAIR_LEAKS);
        bool dry = flags & VDISK_CHECK_DRY_RUN;
        uint64_t bs = s->h.block_size, file_size, file_slots, keep, trailing = 0, leaks;
        uint64_t out_of_range = 0, duplicates = 0, in_file = 0, fragmented = 0, hi_any;
        bool count_bad, size_bad;
        uint32_t prev = 0;
        bool have_prev = false;
        int r;

        assert(rep);

        if (repair_leaks && !dry && !s->writable)
                return vdisk_error(-EROFS, "vdi: image is read-only; cannot repair");
        if (s->writable) {
                r = vdi_prepare_writes(s);
                if (r < 0)
                        return r;
        }

        r = io_get_size(s->io, &file_size);
        if (r < 0)
                return r;
        /* hi is only an upper bound after compact drops; make it exact. */
        r = vdi_scan(s);
        if (r < 0)
                return r;

        /* Map entries. */
        hi_any = s->hi;
        for (uint32_t b = 0; b < s->h.n_blocks; b++) {
                uint32_t e;

                r = map_get(s, b, &e);
                if (r < 0)
                        return r;
                if (block_is_bad(s, b, e)) {
                        if (e >= s->h.n_blocks) {
                                REPORT(rep, out_of_range, "block %" PRIu32 ": slot index %" PRIu32
                                       " is out of range (the image has %" PRIu32 " blocks)",
                                       b, e, s->h.n_blocks);
                                out_of_range++;
                                hi_any = MAX(hi_any, (uint64_t) e + 1);
                        } else {
                                REPORT(rep, duplicates, "block %" PRIu32 ": slot %" PRIu32
                                       " is also used by an earlier block", b, e);
                                duplicates++;
                        }
                        continue;
                }
                if (!entry_is_data(e))
                        continue;
                if (have_prev && e != prev + 1)
                        fragmented++;
                prev = e;
                have_prev = true;
        }
        if (out_of_range > VDI_CHECK_MESSAGES)
                check_report_add(rep, "... %" PRIu64 " out-of-range entries in all", out_of_range);
        if (duplicates > VDI_CHECK_MESSAGES)
                check_report_add(rep, "... %" PRIu64 " duplicate entries in all", duplicates);
        rep->corruptions += s->n_bad;

        /* The allocated count, compared like qemu does: against the entries
         * in range, duplicates included (a mismatch is one corruption). A
         * count below a referenced slot is worse (others would allocate over
         * it) even when the numbers happen to agree; qemu misses that. */
        count_bad = s->h.n_allocated != s->n_live + duplicates || s->hi > s->h.n_allocated;
        if (s->h.n_allocated != s->n_live + duplicates)
                check_report_add(rep, "allocated blocks mismatch: the header says %" PRIu32
                                 ", the map references %" PRIu64,
                                 s->h.n_allocated, s->n_live + duplicates);
        if (s->hi > s->h.n_allocated)
                check_report_add(rep, "the map references slot %" PRIu32 ", past the allocated count %"
                                 PRIu32 ": other writers would allocate over it",
                                 s->hi - 1, s->h.n_allocated);
        if (count_bad)
                rep->corruptions++;

        /* An odd disk size is read rounded up (like qemu), but VirtualBox
         * never makes one and its repair rounds it: a corruption here too. */
        size_bad = s->h.disk_size % VDI_SECTOR != 0;
        if (size_bad) {
                check_report_add(rep, "disk size %" PRIu64 " is not a multiple of 512", s->h.disk_size);
                rep->corruptions++;
        }

        /* Leaks: slots the file holds that no valid entry references. */
        file_slots = file_size > s->h.off_data ? DIV_ROUND_UP(file_size - s->h.off_data, bs) : 0;
        for (uint64_t i = 0; i < MIN(file_slots, (uint64_t) s->h.n_blocks); i++)
                if (bitmap_get(s->slot_used, i))
                        in_file++;
        leaks = file_slots - in_file;
        if (leaks > 0) {
                check_report_add(rep, "%" PRIu64 " leaked blocks (slots in the file no entry references)",
                                 leaks);
                rep->leaks += leaks;
        }
        if (s->n_live > in_file)
                check_report_add(rep, "%" PRIu64 " blocks have their data past the end of the file "
                                 "(they read as zeros)", s->n_live - in_file);
        /* What cutting the file can reclaim without moving anything: slots
         * past every slot any entry (even a corrupt one) references. */
        keep = MAX(hi_any, (uint64_t) s->hi);
        if (file_slots > keep)
                trailing = file_slots - keep;

        if (repair_leaks && dry) {
                if (repair_all) {
                        rep->corruptions_fixed += s->n_bad + count_bad + size_bad;
                        rep->leaks_fixed += leaks;
                } else
                        rep->leaks_fixed += trailing;
                check_report_add(rep, "dry run: nothing was written");
        } else if (repair_all) {
                uint64_t fixed = s->n_bad + count_bad + size_bad;

                /* 1. Free the corrupt entries, raise the count over every
                 *    referenced slot, round the size; header, then map. */
                for (uint32_t b = 0; b < s->h.n_blocks; b++)
                        if (block_is_bad(s, b, 0)) {
                                r = map_set(s, b, VDI_ENTRY_FREE, 0);
                                if (r < 0)
                                        return r;
                        }
                if (s->bad) {
                        free(s->bad);
                        s->bad = NULL;
                        tc_budget_uncharge(s->budget, bitmap_bytes(s->h.n_blocks));
                        s->charged -= bitmap_bytes(s->h.n_blocks);
                }
                s->n_bad = 0;
                if (size_bad) {
                        s->h.disk_size = ALIGN_UP(s->h.disk_size, (uint64_t) VDI_SECTOR);
                        s->header_dirty = true;
                }
                r = vdi_sync(s);
                if (r < 0)
                        return r;
                /* 2. Pack the slots, set the count, cut the file. */
                r = vdi_progress_moves(s, p);
                if (r < 0)
                        return r;
                r = vdi_defrag(s, p);
                if (r < 0)
                        return r;
                rep->corruptions_fixed += fixed;
                rep->leaks_fixed += leaks;
        } else if (repair_leaks && trailing > 0) {
                uint64_t end = slot_offset(s, keep);

                r = vdi_flush(s);
                if (r < 0)
                        return r;
                r = io_truncate(s->io, end);
                if (r < 0)
                        return r;
                hostalloc_truncated(&s->alloc, end);
                r = io_flush(s->io);
                if (r < 0)
                        return r;
                rep->leaks_fixed += trailing;
        }
        if (repair_leaks && !repair_all && leaks > trailing)
                check_report_add(rep, "%" PRIu64 " leaked blocks lie before used ones; only a full "
                                 "repair or compact reclaims them", leaks - trailing);

        rep->total_clusters = s->h.n_blocks;
        rep->allocated_clusters = s->n_live;
        rep->fragmented_clusters = fragmented;
        rep->image_end_offset = slot_offset(s, s->hi);
        return 0;
}

/* ---------------------------------------------------------------- table */

/* As vdi_create() lays it out: header sector, map, data from a 1 MiB
 * boundary, one slot of a block per allocated block (all with static=on).
 * A copy allocates only blocks that hold data; over a parent (a diff)
 * every block is counted. */
static int vdi_measure(const measure_params *p, measure_result *ret) {
        uint64_t size = ALIGN_UP(p->size, (uint64_t) VDI_SECTOR), n_blocks, map_bytes = 0, off_data, used;
        bool fixed = false;
        int r;

        r = vdi_parse_options(p->options, &fixed);
        if (r < 0)
                return r;
        if (fixed && p->has_backing)
                return vdisk_error(-EOPNOTSUPP, "vdi: a differencing image cannot be static");
        n_blocks = DIV_ROUND_UP(size, (uint64_t) VDI_BLOCK_DEFAULT);
        r = vdi_map_bytes(n_blocks, &map_bytes);
        if (r < 0)
                return r;
        off_data = ALIGN_UP(VDI_SECTOR + map_bytes, (uint64_t) VDI_DATA_ALIGN);
        used = 0;
        if (fixed || p->has_backing)
                used = n_blocks;
        else if (p->has_input) {
                r = p->count_units(p->ctx, VDI_BLOCK_DEFAULT, &used);
                if (r < 0)
                        return r;
        }
        *ret = (measure_result) {
                .required = off_data + used * VDI_BLOCK_DEFAULT,
                .fully_allocated = off_data + n_blocks * VDI_BLOCK_DEFAULT,
        };
        return 0;
}

static const char *const vdi_extensions[] = { "vdi", NULL };
static const vdisk_option_desc vdi_create_options[] = {
        { "size",         VDISK_OPTION_SIZE, "Virtual disk size" },
        { "backing_file", VDISK_OPTION_STRING, "File name of the parent image (linked by its UUID)" },
        { "backing_fmt",  VDISK_OPTION_STRING, "Format of the parent image" },
        { "static",       VDISK_OPTION_BOOL, "Allocate every block at creation (fixed VDI)", "off" },
        {}
};

const vdisk_backend backend_vdi = {
        .info = {
                .name = "VDI",
                .qemu_name = "vdi",
                .caps = VDISK_CAP_UUID | VDISK_CAP_CREATE_FIXED | VDISK_CAP_CREATE_DYNAMIC | VDISK_CAP_DIFF |
                        VDISK_CAP_FILE | VDISK_CAP_DISCARD | VDISK_CAP_PREFERRED | VDISK_CAP_COMPACT |
                        VDISK_CAP_RESIZE | VDISK_CAP_CHECK | VDISK_CAP_REPAIR,
                .media = VDISK_MEDIA_HDD,
                .extensions = vdi_extensions,
                .create_options = vdi_create_options,
        },
        .state_size = sizeof(vdi_state),
        .probe = vdi_probe,
        .peek = vdi_peek,
        .open = vdi_open,
        .create = vdi_create,
        .close = vdi_close,
        .get_size = vdi_get_size,
        .get_layout = vdi_get_layout,
        .map = vdi_map,
        .allocate = vdi_allocate,
        .commit = vdi_commit,
        .release = vdi_release,
        .mark_zero = vdi_mark_zero,
        .flush = vdi_flush,
        .get_meta = vdi_get_meta,
        .set_meta = vdi_set_meta,
        .get_info = vdi_get_info,
        .resize = vdi_resize,
        .compact = vdi_compact,
        .measure = vdi_measure,
        .check = vdi_check,
        /* falloc/full: qemu's file layer preallocates the empty file (no effect) */
        .prealloc_create = PREALLOC_BIT(PREALLOC_FALLOC) | PREALLOC_BIT(PREALLOC_FULL),
};
