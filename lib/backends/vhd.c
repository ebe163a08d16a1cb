/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VHD — Microsoft Virtual PC / Hyper-V "Virtual Hard Disk" (qemu: vpc).
 *
 * Spec: Microsoft "Virtual Hard Disk Image Format Specification" 1.0
 * (2006-10-11); our summary, limits and traps in docs/formats/vhd.md and
 * ../shared/formats/FORMATS.md §3.5 (T1, T2, T3, T14, T16). Big-endian.
 *
 *   fixed:    | data (current size) ............................ | footer |
 *   dynamic:  | footer copy | dyn header | BAT | block | block | ... | footer |
 *             0             512         1536
 *   block:    | sector bitmap (MSB first, padded to 512) | data (block size) |
 *
 * The footer (512 bytes; 511 in images older than Virtual PC 2004) sits at
 * the end of every VHD; dynamic and differencing images keep a copy at 0.
 * The BAT holds u32 sector offsets of blocks, 0xFFFFFFFF = not present.
 *
 * Supported: fixed and dynamic, read, write, create (qemu's subformat and
 * force_size options); the sector bitmap as sub-block allocation: a clear
 * bit maps UNALLOC (zeros in a base image). Differencing images (type 4)
 * open with their parent found by UUID (the core's search): read and write;
 * create writes the parent UUID, Unicode name and a W2ru locator. Resize
 * (growing past the BAT moves it behind the last block), compact, check and
 * repair. Block sizes: powers of two from 512 bytes to 64 MiB.
 *
 * Size (trap T1): current_size, except for the creators that size the disk
 * by its CHS geometry (Virtual PC 'vpc ' and qemu 'qemu', as qemu does),
 * unless the geometry is the maximum 65535/16/255.
 *
 * Allocation: new blocks go where the footer was (the end of the last block
 * or of the BAT) and the footer moves behind them in flush(). A write into a
 * new block reserves the block and fills only the 4 KiB-aligned part it
 * writes (the rest is fresh space and reads zeros); the bitmap marks only
 * that part. A write into clear sectors of an allocated block reserves that
 * sector run. flush(): data, then the moved footer and the bitmaps, flush,
 * then the BAT (table cache), flush.
 *
 * Threads: none of its own; the core serializes every call on an image.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "fmt/compact.h"
#include "fmt/hostalloc.h"
#include "fmt/tablecache.h"
#include "io/io.h"
#include "util/util.h"

#define VHD_SECTOR              512u
#define VHD_FOOTER_SIZE         512u
#define VHD_DYN_SIZE            1024u
#define VHD_VERSION             UINT32_C(0x00010000)
#define VHD_TYPE_FIXED          2u
#define VHD_TYPE_DYNAMIC        3u
#define VHD_TYPE_DIFF           4u
#define VHD_BAT_FREE            UINT32_C(0xFFFFFFFF)
#define VHD_NO_OFFSET           UINT64_C(0xFFFFFFFFFFFFFFFF)
#define VHD_BLOCK_DEFAULT       (UINT32_C(2) << 20)
#define VHD_BLOCK_MAX           (UINT32_C(64) << 20)
/* 16 Mi entries (64 MiB of BAT; 32 TiB in 2 MiB blocks): qemu refuses more
 * too, and the bound keeps every offset far from overflow. */
#define VHD_BAT_ENTRIES_MAX     (UINT32_C(1) << 24)
#define VHD_MAX_GEOMETRY        (UINT64_C(65535) * 16 * 255)
/* What the CHS geometry can address, and the largest image we create. */
#define VHD_CREATE_MAX          (VHD_MAX_GEOMETRY * VHD_SECTOR)
#define VHD_EPOCH               INT64_C(946684800)   /* 2000-01-01 00:00:00 UTC */
#define VHD_COW_UNIT            4096u
#define VHD_BM_SLOTS            32u
/* The data space of each locator vdisk writes: 2 sectors, 511 UTF-16
 * units of a name; a longer name is not recorded. */
#define VHD_LOC_SECTORS         2u
#define VHD_LOC_BYTES           (VHD_LOC_SECTORS * 512u)

/* Footer fields. */
enum {
        F_COOKIE      = 0,
        F_FEATURES    = 8,
        F_VERSION     = 12,
        F_DATA_OFFSET = 16,
        F_TIMESTAMP   = 24,
        F_CREATOR_APP = 28,
        F_CREATOR_VER = 32,
        F_CREATOR_OS  = 36,
        F_ORIG_SIZE   = 40,
        F_CUR_SIZE    = 48,
        F_CYLINDERS   = 56,
        F_HEADS       = 58,
        F_SPT         = 59,
        F_TYPE        = 60,
        F_CHECKSUM    = 64,
        F_UUID        = 68,
        F_SAVED_STATE = 84,
};

/* Dynamic header fields. */
enum {
        D_COOKIE       = 0,
        D_DATA_OFFSET  = 8,
        D_TABLE_OFFSET = 16,
        D_VERSION      = 24,
        D_MAX_ENTRIES  = 28,
        D_BLOCK_SIZE   = 32,
        D_CHECKSUM     = 36,
        D_PARENT_UUID  = 40,
        D_PARENT_TIME  = 56,
        D_PARENT_NAME  = 64,     /* 512 bytes of UTF-16BE */
        D_LOCATORS     = 576,    /* 8 x 24 bytes */
};

typedef struct vhd_bm {
        uint32_t block;
        bool used, dirty;
        uint64_t tick;
        uint64_t host;          /* file offset of the bitmap */
        uint8_t *bits;
} vhd_bm;

typedef struct vhd_state {
        vdisk_io *io;
        int writable;
        tc_budget *budget;
        uint8_t footer[VHD_FOOTER_SIZE];
        uint8_t dyn[VHD_DYN_SIZE];
        uint32_t type;
        uint64_t size;
        uint64_t footer_offset;         /* where the footer at the end is */
        uint32_t footer_len;            /* 512, or 511 for old images */
        bool meta_dirty;                /* footer fields / dyn header changed */

        /* dynamic and differencing */
        uint64_t dyn_offset, bat_offset;
        uint32_t max_entries, block_size, bm_size, n_blocks;
        uint64_t meta_end;              /* end of the header and BAT (sector aligned) */
        uint64_t alloc_floor;           /* new blocks go past this: meta_end and locator data */
        tc_table *bat;
        char parent_name[1024];         /* UTF-8, from the header's Unicode name */
        char parent_rel[1024];          /* UTF-8, from the W2ru locator ("" if none) */
        char parent_abs[1024];          /* UTF-8, from the W2ku locator ("" if none) */
        char link_rel[1024];            /* parent_rel as a POSIX name ("" if none) */
        char link_abs[1024];            /* parent_abs if it is a POSIX absolute name */
        /* Locator data set_meta() changed, written by vhd_write_meta()
         * before the header that points at it. */
        struct {
                uint64_t off;
                uint32_t len;
                uint8_t data[VHD_LOC_BYTES];
        } loc_w[2];
        unsigned n_loc_w;

        vhd_bm bms[VHD_BM_SLOTS];
        uint64_t tick, charged;

        bool alloc_ready;
        uint32_t n_bad;
        uint64_t data_end;              /* end of the last block (new footer goes here) */
        bool footer_moved;              /* the footer must be written at data_end */
        hostalloc alloc;
        bool reserved, res_new;
        uint32_t res_block;
        uint64_t res_host;              /* new block: its bitmap's offset */
} vhd_state;

/* ---------------------------------------------------------------- helpers */

static uint32_t vhd_checksum(const uint8_t *p, size_t len, size_t field) {
        uint32_t sum = 0;

        for (size_t i = 0; i < len; i++)
                if (i < field || i >= field + 4)
                        sum += p[i];
        return ~sum;
}

static bool creator_is(const uint8_t *footer, const char *app) {
        return memcmp(footer + F_CREATOR_APP, app, 4) == 0;
}

static uint64_t footer_chs_sectors(const uint8_t *f) {
        return (uint64_t) get_be16(f + F_CYLINDERS) * f[F_HEADS] * f[F_SPT];
}

/* Trap T1: the virtual size. Virtual PC and qemu (before force_size) size
 * the disk by its geometry; everybody else (Hyper-V, Windows, Disk2VHD,
 * VirtualBox, XenServer, Azure, qemu's 'qem2') by current_size. */
static uint64_t footer_size(const uint8_t *f) {
        uint64_t chs = footer_chs_sectors(f);

        if ((creator_is(f, "vpc ") || creator_is(f, "qemu")) && chs != VHD_MAX_GEOMETRY)
                return chs * VHD_SECTOR;
        return get_be64(f + F_CUR_SIZE);
}

/* The footer's own checks: cookie, checksum, version, type. `len` is 512 or 511. */
static int footer_parse(const uint8_t *f, const char *where) {
        uint32_t type;

        if (memcmp(f + F_COOKIE, "conectix", 8) != 0)
                return vdisk_error(-EMEDIUMTYPE, "vhd: no footer cookie %s", where);
        if (get_be32(f + F_CHECKSUM) != vhd_checksum(f, VHD_FOOTER_SIZE, F_CHECKSUM))
                return vdisk_error(-EUCLEAN, "vhd: footer checksum mismatch %s (stored %08" PRIx32
                                   ", computed %08" PRIx32 ")", where, get_be32(f + F_CHECKSUM),
                                   vhd_checksum(f, VHD_FOOTER_SIZE, F_CHECKSUM));
        if (get_be32(f + F_VERSION) >> 16 != 1)
                return vdisk_error(-EOPNOTSUPP, "vhd: format version %08" PRIx32 " is not supported",
                                   get_be32(f + F_VERSION));
        type = get_be32(f + F_TYPE);
        if (type != VHD_TYPE_FIXED && type != VHD_TYPE_DYNAMIC && type != VHD_TYPE_DIFF)
                return vdisk_error(-EOPNOTSUPP, "vhd: disk type %" PRIu32 " is not supported", type);
        if (get_be64(f + F_CUR_SIZE) % VHD_SECTOR != 0 && footer_size(f) == get_be64(f + F_CUR_SIZE))
                return vdisk_error(-EUCLEAN, "vhd: disk size %" PRIu64 " is not a multiple of 512",
                                   get_be64(f + F_CUR_SIZE));
        if (footer_size(f) == 0)
                return vdisk_error(-EUCLEAN, "vhd: disk size is 0");
        return 0;
}

static void footer_seal(uint8_t *f) {
        put_be32(f + F_CHECKSUM, 0);
        put_be32(f + F_CHECKSUM, vhd_checksum(f, VHD_FOOTER_SIZE, F_CHECKSUM));
}

static void dyn_seal(uint8_t *d) {
        put_be32(d + D_CHECKSUM, 0);
        put_be32(d + D_CHECKSUM, vhd_checksum(d, VHD_DYN_SIZE, D_CHECKSUM));
}

/* The dynamic header's checks against the footer and the file. */
static int dyn_parse(const uint8_t *d, uint64_t dyn_offset, uint64_t size, uint64_t file_size,
                     uint64_t *ret_bat, uint32_t *ret_entries, uint32_t *ret_bs) {
        uint64_t bat = get_be64(d + D_TABLE_OFFSET), n_blocks;
        uint32_t entries = get_be32(d + D_MAX_ENTRIES), bs = get_be32(d + D_BLOCK_SIZE);

        if (memcmp(d + D_COOKIE, "cxsparse", 8) != 0)
                return vdisk_error(-EUCLEAN, "vhd: no dynamic header at %" PRIu64, dyn_offset);
        if (get_be32(d + D_CHECKSUM) != vhd_checksum(d, VHD_DYN_SIZE, D_CHECKSUM))
                return vdisk_error(-EUCLEAN, "vhd: dynamic header checksum mismatch (stored %08" PRIx32
                                   ", computed %08" PRIx32 ")", get_be32(d + D_CHECKSUM),
                                   vhd_checksum(d, VHD_DYN_SIZE, D_CHECKSUM));
        if (get_be32(d + D_VERSION) >> 16 != 1)
                return vdisk_error(-EOPNOTSUPP, "vhd: dynamic header version %08" PRIx32 " is not supported",
                                   get_be32(d + D_VERSION));
        if (bs < VHD_SECTOR || !IS_POWER_OF_2(bs))
                return vdisk_error(-EUCLEAN, "vhd: invalid block size %" PRIu32, bs);
        if (bs > VHD_BLOCK_MAX)
                return vdisk_error(-EOPNOTSUPP, "vhd: block size %" PRIu32 " is above the 64 MiB we support", bs);
        if (entries > VHD_BAT_ENTRIES_MAX)
                return vdisk_error(-EFBIG, "vhd: max table entries %" PRIu32 " is too large (at most %" PRIu32 ")",
                                   entries, VHD_BAT_ENTRIES_MAX);
        /* entries <= 2^24 and bs <= 2^26: no overflow, and n_blocks below
         * cannot overflow either once the size fits. */
        if (size > (uint64_t) entries * bs)
                return vdisk_error(-EUCLEAN, "vhd: the BAT has %" PRIu32 " entries of %" PRIu32 " bytes, too few "
                                   "for the disk size %" PRIu64, entries, bs, size);
        n_blocks = DIV_ROUND_UP(size, bs);
        assert(n_blocks <= entries);
        if (bat % VHD_SECTOR != 0)
                return vdisk_error(-EUCLEAN, "vhd: BAT offset %" PRIu64 " is not sector-aligned", bat);
        if (!range_within(bat, (uint64_t) entries * 4, file_size))
                return vdisk_error(-EUCLEAN, "vhd: BAT at %" PRIu64 " (%" PRIu32 " entries) extends past the "
                                   "end of the file (%" PRIu64 " bytes)", bat, entries, file_size);
        if (bat < VHD_FOOTER_SIZE || (bat < dyn_offset + VHD_DYN_SIZE && bat + (uint64_t) entries * 4 > dyn_offset))
                return vdisk_error(-EUCLEAN, "vhd: BAT at %" PRIu64 " overlaps the headers", bat);
        *ret_bat = bat;
        *ret_entries = entries;
        *ret_bs = bs;
        return 0;
}

/* Parent Unicode name (UTF-16BE, NUL-padded) to UTF-8. */
static void utf16be_to_utf8(const uint8_t *in, size_t n_units, char *out, size_t out_size) {
        size_t o = 0;

        for (size_t i = 0; i < n_units; i++) {
                uint32_t c = get_be16(in + 2 * i);

                if (c == 0)
                        break;
                if (c >= 0xD800 && c < 0xDC00 && i + 1 < n_units) {
                        uint32_t lo = get_be16(in + 2 * (i + 1));
                        if (lo >= 0xDC00 && lo < 0xE000) {
                                c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
                                i++;
                        }
                }
                if (o + 5 > out_size)
                        break;
                if (c < 0x80)
                        out[o++] = (char) c;
                else if (c < 0x800) {
                        out[o++] = (char) (0xC0 | c >> 6);
                        out[o++] = (char) (0x80 | (c & 0x3F));
                } else if (c < 0x10000) {
                        out[o++] = (char) (0xE0 | c >> 12);
                        out[o++] = (char) (0x80 | ((c >> 6) & 0x3F));
                        out[o++] = (char) (0x80 | (c & 0x3F));
                } else {
                        out[o++] = (char) (0xF0 | c >> 18);
                        out[o++] = (char) (0x80 | ((c >> 12) & 0x3F));
                        out[o++] = (char) (0x80 | ((c >> 6) & 0x3F));
                        out[o++] = (char) (0x80 | (c & 0x3F));
                }
        }
        out[o] = 0;
}

/* UTF-8 (ASCII and 2/3-byte sequences) to UTF-16 in either byte order;
 * returns the code units written. */
static size_t utf8_to_utf16(const char *in, uint8_t *out, size_t max_units, bool big_endian) {
        const unsigned char *p = (const unsigned char *) in;
        size_t n = 0;

        while (*p && n < max_units) {
                uint32_t c = *p++;

                if (c >= 0xE0 && p[0] && p[1]) {
                        c = ((c & 0x0F) << 12) | ((uint32_t) (p[0] & 0x3F) << 6) | (p[1] & 0x3F);
                        p += 2;
                } else if (c >= 0xC0 && p[0]) {
                        c = ((c & 0x1F) << 6) | (p[0] & 0x3F);
                        p++;
                }
                if (big_endian)
                        put_be16(out + 2 * n, (uint16_t) c);
                else
                        put_le16(out + 2 * n, (uint16_t) c);
                n++;
        }
        return n;
}

/* ---------------------------------------------------------------- probe and peek */

static bool footer_looks_valid(const uint8_t *f) {
        return memcmp(f, "conectix", 8) == 0 &&
               get_be32(f + F_CHECKSUM) == vhd_checksum(f, VHD_FOOTER_SIZE, F_CHECKSUM);
}

static int vhd_probe(const uint8_t *head, size_t head_len, const uint8_t *tail, size_t tail_len,
                     uint64_t file_size, const char *name) {
        uint8_t f[VHD_FOOTER_SIZE] = {};

        if (head_len >= 8 && memcmp(head, "conectix", 8) == 0)
                return 100;
        /* Trap T2: a fixed VHD has only its footer, at EOF-512 (or EOF-511). */
        if (tail_len >= VHD_FOOTER_SIZE && footer_looks_valid(tail + tail_len - VHD_FOOTER_SIZE))
                return 100;
        if (tail_len >= VHD_FOOTER_SIZE - 1) {
                memcpy(f, tail + tail_len - (VHD_FOOTER_SIZE - 1), VHD_FOOTER_SIZE - 1);
                if (footer_looks_valid(f))
                        return 100;
        }
        return 0;
}

/* The identity from the head: the footer copy at 0 and the dynamic header
 * (dynamic and differencing images), checked as open() checks them before it
 * reads the BAT. open() decides by the footer at the end first (a fixed
 * image's data may begin with another VHD's footer), so the head alone is
 * exact only when it holds the whole file: for a larger file, a fixed image
 * (footer at the end only) and an image whose copy at 0 is damaged, peek
 * says -ENODATA and the core opens the file metadata-only, which reads the
 * footers, the dynamic header and the locators (no BAT). The locators'
 * names lie past the BAT: not reported. */
static int vhd_peek(const uint8_t *head, size_t head_len, uint64_t file_size, meta *ret) {
        uint64_t dyn_offset, size, bat;
        uint32_t type, entries, bs;
        int r;

        assert(head || head_len == 0);
        assert(ret);

        if (head_len < VHD_FOOTER_SIZE || memcmp(head, "conectix", 8) != 0 || !footer_looks_valid(head))
                return -ENODATA;
        /* The footer at the end, as open() reads it: a fixed one wins. */
        if ((uint64_t) head_len < file_size)
                return -ENODATA;
        if ((head_len >= 2 * VHD_FOOTER_SIZE && footer_looks_valid(head + head_len - VHD_FOOTER_SIZE) &&
             get_be32(head + head_len - VHD_FOOTER_SIZE + F_TYPE) == VHD_TYPE_FIXED) ||
            memcmp(head + head_len - VHD_FOOTER_SIZE, "conectix", 8) != 0)
                return -ENODATA;
        type = get_be32(head + F_TYPE);
        if (type == VHD_TYPE_FIXED)
                return -ENODATA;
        r = footer_parse(head, "at offset 0");
        if (r < 0)
                return r;
        size = footer_size(head);
        if (size % VHD_SECTOR != 0)
                return vdisk_error(-EUCLEAN, "vhd: disk size %" PRIu64 " is not a multiple of 512", size);
        if (file_size < 2 * VHD_FOOTER_SIZE)
                return vdisk_error(-EUCLEAN, "vhd: file too short for a dynamic image (%" PRIu64 " bytes)",
                                   file_size);
        dyn_offset = get_be64(head + F_DATA_OFFSET);
        if (dyn_offset % VHD_SECTOR != 0 || dyn_offset < VHD_FOOTER_SIZE)
                return vdisk_error(-EUCLEAN, "vhd: dynamic header offset %" PRIu64 " is invalid", dyn_offset);
        if (!range_within(dyn_offset, VHD_DYN_SIZE, file_size))
                return vdisk_error(-EUCLEAN, "vhd: dynamic header at %" PRIu64 " extends past the end of the "
                                   "file (%" PRIu64 " bytes)", dyn_offset, file_size);
        if (!range_within(dyn_offset, VHD_DYN_SIZE, head_len))
                return -ENODATA;
        r = dyn_parse(head + dyn_offset, dyn_offset, size, file_size, &bat, &entries, &bs);
        if (r < 0)
                return r;
        if (type == VHD_TYPE_DIFF && vdisk_uuid_is_null(head + dyn_offset + D_PARENT_UUID))
                return vdisk_error(-EUCLEAN, "vhd: differencing image without a parent UUID");

        *ret = (meta) { .mask = META_UUID | META_PARENT_UUID };
        memcpy(ret->uuid, head + F_UUID, 16);
        if (type == VHD_TYPE_DIFF)
                memcpy(ret->parent_uuid, head + dyn_offset + D_PARENT_UUID, 16);
        return 0;
}

/* ---------------------------------------------------------------- bitmaps */

static vhd_bm *bm_find(vhd_state *s, uint32_t b) {
        for (unsigned i = 0; i < VHD_BM_SLOTS; i++)
                if (s->bms[i].used && s->bms[i].block == b) {
                        s->bms[i].tick = ++s->tick;
                        return &s->bms[i];
                }
        return NULL;
}

static int vhd_write_meta(vhd_state *s);

/* Forgets the cached bitmap of a block whose BAT entry goes away or changes
 * (shrink, repair, a new block): it described other space. */
static void bm_drop(vhd_state *s, uint32_t b) {
        for (unsigned i = 0; i < VHD_BM_SLOTS; i++)
                if (s->bms[i].used && s->bms[i].block == b) {
                        s->bms[i].used = false;
                        s->bms[i].dirty = false;
                }
}

/* A free slot for a bitmap: the least recently used clean one. When every
 * slot is dirty, they are written first (data flushed before them). */
static int bm_slot(vhd_state *s, vhd_bm **ret) {
        vhd_bm *best = NULL;
        int r;

        for (int pass = 0; pass < 2; pass++) {
                for (unsigned i = 0; i < VHD_BM_SLOTS; i++) {
                        vhd_bm *m = &s->bms[i];

                        if (!m->used) {
                                best = m;
                                break;
                        }
                        if (!m->dirty && (!best || m->tick < best->tick))
                                best = m;
                }
                if (best)
                        break;
                r = vhd_write_meta(s);
                if (r < 0)
                        return r;
        }
        assert(best);
        if (!best->bits) {
                r = tc_budget_charge(s->budget, s->bm_size);
                if (r < 0)
                        return r;
                s->charged += s->bm_size;
                best->bits = malloc(s->bm_size);
                if (!best->bits)
                        return vdisk_error(-ENOMEM, "out of memory");
        }
        best->used = false;
        best->dirty = false;
        *ret = best;
        return 0;
}

static int check_entry(vhd_state *s, uint64_t b, uint32_t e, uint64_t file_size);

/* The bitmap of allocated block b, whose BAT entry is e. The entry is checked
 * against the file when its bitmap is read; a cached bitmap was checked then,
 * and an entry we change drops it (bm_drop()), so a block mapped again costs
 * no fstat (nor does one inside what the io knows the file holds: io_covers()).
 * A file that shrank since reads zeros past its end
 * (io_pread_zerofill), never out of range. */
static int bm_get(vhd_state *s, uint32_t b, uint32_t e, vhd_bm **ret) {
        vhd_bm *m = bm_find(s, b);
        uint64_t file_size;
        int r;

        if (m && m->host != (uint64_t) e * VHD_SECTOR) {
                /* Another writer changed the BAT (a page of it read again):
                 * a clean bitmap is read again from the new place. */
                if (m->dirty)
                        return vdisk_error(-EUCLEAN, "vhd: the BAT entry of block %" PRIu32 " changed under the "
                                           "open image (sector %" PRIu32 ", was %" PRIu64 ")", b, e,
                                           m->host / VHD_SECTOR);
                bm_drop(s, b);
                m = NULL;
        }
        if (m) {
                *ret = m;
                return 0;
        }
        /* the file's size, asked only past what the io knows it holds */
        r = io_covers(s->io, (uint64_t) e * VHD_SECTOR + s->bm_size, &file_size);
        if (r < 0)
                return r;
        r = check_entry(s, b, e, file_size);
        if (r < 0)
                return r;
        r = bm_slot(s, &m);
        if (r < 0)
                return r;
        r = io_pread_zerofill(s->io, m->bits, s->bm_size, (uint64_t) e * VHD_SECTOR);
        if (r < 0)
                return r;
        m->used = true;
        m->block = b;
        m->host = (uint64_t) e * VHD_SECTOR;
        m->tick = ++s->tick;
        *ret = m;
        return 0;
}

static bool bit_get(const uint8_t *bits, uint64_t i) {
        return bits[i / 8] & (0x80u >> (i % 8));
}

static void bit_set(uint8_t *bits, uint64_t i) {
        bits[i / 8] |= (uint8_t) (0x80u >> (i % 8));
}

/* How many sectors from `i` (below `end`) have the same bit as sector i. */
static uint64_t bit_run(const uint8_t *bits, uint64_t i, uint64_t end) {
        bool v = bit_get(bits, i);
        uint64_t j = i + 1;

        while (j < end) {
                if (j % 8 == 0 && end - j >= 8 && bits[j / 8] == (v ? 0xFF : 0x00)) {
                        j += 8;
                        continue;
                }
                if (bit_get(bits, j) != v)
                        break;
                j++;
        }
        return j - i;
}

/* ---------------------------------------------------------------- the BAT */

static int bat_get(vhd_state *s, uint64_t b, uint32_t *ret) {
        uint64_t v;
        int r;

        r = tc_get(s->bat, b, &v);
        if (r < 0)
                return r;
        *ret = (uint32_t) v;
        return 0;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
        return a < b + blen && b < a + alen;
}

/* Whether [start, start+len) touches the footer copy, the dynamic header or
 * the BAT (which may lie after blocks once a grow has moved it). */
static bool hits_meta(const vhd_state *s, uint64_t start, uint64_t len) {
        return start < VHD_FOOTER_SIZE || ranges_overlap(start, len, s->dyn_offset, VHD_DYN_SIZE) ||
               ranges_overlap(start, len, s->bat_offset, ALIGN_UP((uint64_t) s->max_entries * 4, (uint64_t) VHD_SECTOR));
}

/* A block's place must leave the headers and the BAT alone, and the file
 * must hold its bitmap (its data may end past the end: zeros). */
static int check_entry(vhd_state *s, uint64_t b, uint32_t e, uint64_t file_size) {
        uint64_t start = (uint64_t) e * VHD_SECTOR;

        /* Blocks allocated since the last flush may lie past the end yet. */
        if (s->alloc_ready)
                file_size = MAX(file_size, s->data_end);
        if (hits_meta(s, start, s->bm_size) || !range_within(start, s->bm_size, file_size))
                return vdisk_error(-EUCLEAN, "vhd: block %" PRIu64 " has a corrupt BAT entry (sector %" PRIu32
                                   "): outside the data area; check and repair the image", b, e);
        return 0;
}

static int vhd_before_bat_write(void *user) {
        return vhd_write_meta(user);
}

/* ---------------------------------------------------------------- open */

static int vhd_read_footer_at_end(vdisk_io *io, uint64_t file_size, uint8_t *f, uint64_t *ret_off,
                                  uint32_t *ret_len) {
        int r;

        if (file_size < VHD_FOOTER_SIZE - 1)
                return vdisk_error(-EMEDIUMTYPE, "vhd: file too short (%" PRIu64 " bytes)", file_size);
        if (file_size >= VHD_FOOTER_SIZE) {
                r = io_pread(io, f, VHD_FOOTER_SIZE, file_size - VHD_FOOTER_SIZE);
                if (r < 0)
                        return r;
                if (memcmp(f, "conectix", 8) == 0) {
                        *ret_off = file_size - VHD_FOOTER_SIZE;
                        *ret_len = VHD_FOOTER_SIZE;
                        return 0;
                }
        }
        memset(f, 0, VHD_FOOTER_SIZE);
        r = io_pread(io, f, VHD_FOOTER_SIZE - 1, file_size - (VHD_FOOTER_SIZE - 1));
        if (r < 0)
                return r;
        *ret_off = file_size - (VHD_FOOTER_SIZE - 1);
        *ret_len = VHD_FOOTER_SIZE - 1;
        return 0;
}


/* The locators' names as the core follows them: the relative one (".\\a\\b"
 * or "..\\a") with slashes, the absolute one only when it is a POSIX name
 * (Windows names, "C:\\...", lead nowhere here). */
static void links_from_locators(vhd_state *s) {
        const char *r = s->parent_rel;

        s->link_rel[0] = s->link_abs[0] = 0;
        if (r[0] == '.' && (r[1] == '\\' || r[1] == '/'))
                r += 2;
        if (r[0] && r[0] != '\\' && r[0] != '/' && !(r[0] && r[1] == ':')) {
                snprintf(s->link_rel, sizeof s->link_rel, "%s", r);
                for (char *c = s->link_rel; *c; c++)
                        if (*c == '\\')
                                *c = '/';
        }
        if (s->parent_abs[0] == '/')
                snprintf(s->link_abs, sizeof s->link_abs, "%s", s->parent_abs);
}

/* Parent locators: 8 entries of {platform code, data space, data length,
 * reserved, data offset}. Their data (usually between the BAT and the first
 * block) counts as metadata: no new block may go over it. The W2ru entry
 * (relative path, UTF-16LE) is read for information; the parent itself is
 * found by its UUID. Entries whose data lies outside the file are ignored. */
#define VHD_LOCATOR_DATA_MAX 4096u
static int vhd_read_locators(vhd_state *s, uint64_t file_size) {
        for (unsigned i = 0; i < 8; i++) {
                const uint8_t *l = s->dyn + D_LOCATORS + 24 * i;
                uint32_t code = get_be32(l), space = get_be32(l + 4), len = get_be32(l + 8);
                uint64_t off = get_be64(l + 16), bytes;

                if (code == 0)
                        continue;
                /* The space is in sectors (spec); some writers store bytes. */
                bytes = space <= 8 ? (uint64_t) space * VHD_SECTOR : space;
                bytes = ALIGN_UP(MAX(bytes, (uint64_t) len), (uint64_t) VHD_SECTOR);
                if (off < VHD_FOOTER_SIZE || !range_within(off, bytes, file_size) || bytes > (UINT64_C(1) << 20))
                        continue;
                s->alloc_floor = MAX(s->alloc_floor, off + bytes);
                if ((memcmp(l, "W2ru", 4) == 0 || memcmp(l, "W2ku", 4) == 0) && len > 0 &&
                    len <= VHD_LOCATOR_DATA_MAX && len % 2 == 0) {
                        bool rel = memcmp(l, "W2ru", 4) == 0;
                        uint8_t buf[VHD_LOCATOR_DATA_MAX];
                        int r = io_pread(s->io, buf, len, off);

                        if (r < 0)
                                return r;
                        /* UTF-16LE: swap into BE for the converter. */
                        for (uint32_t k = 0; k + 1 < len; k += 2) {
                                uint8_t t = buf[k];
                                buf[k] = buf[k + 1];
                                buf[k + 1] = t;
                        }
                        if (rel)
                                utf16be_to_utf8(buf, len / 2, s->parent_rel, sizeof s->parent_rel);
                        else
                                utf16be_to_utf8(buf, len / 2, s->parent_abs, sizeof s->parent_abs);
                }
        }
        links_from_locators(s);
        return 0;
}

static int vhd_open(void *state, const open_ctx *c) {
        vhd_state *s = state;
        uint8_t head[VHD_FOOTER_SIZE], tail[VHD_FOOTER_SIZE];
        uint64_t file_size, bat_bytes;
        int r, r_head = -EMEDIUMTYPE, r_tail;

        s->io = c->io;
        s->writable = c->writable && !c->info_only;
        s->budget = c->budget;

        r = io_get_size(s->io, &file_size);
        if (r < 0)
                return r;
        r = vhd_read_footer_at_end(s->io, file_size, tail, &s->footer_offset, &s->footer_len);
        if (r < 0)
                return r;
        r_tail = footer_parse(tail, "at the end of the file");
        if (file_size >= VHD_FOOTER_SIZE) {
                r = io_pread(s->io, head, VHD_FOOTER_SIZE, 0);
                if (r < 0)
                        return r;
                if (memcmp(head, "conectix", 8) == 0)
                        r_head = footer_parse(head, "at offset 0");
        }
        /* The copy at 0 first (as qemu), else the one at the end (a copy at
         * 0 that is damaged is what VirtualBox repairs from the end). */
        /* A fixed image's footer is at the end only: its data may begin
         * with anything, another VHD's footer included. */
        if (r_tail >= 0 && get_be32(tail + F_TYPE) == VHD_TYPE_FIXED)
                memcpy(s->footer, tail, sizeof s->footer);
        else if (r_head >= 0)
                memcpy(s->footer, head, sizeof s->footer);
        else if (r_tail >= 0)
                memcpy(s->footer, tail, sizeof s->footer);
        else {
                /* Report the better reason: a footer that is there but bad. */
                r = r_head != -EMEDIUMTYPE ? footer_parse(head, "at offset 0") : footer_parse(tail, "at the end of the file");
                return r;
        }

        s->type = get_be32(s->footer + F_TYPE);
        s->size = footer_size(s->footer);
        if (s->size % VHD_SECTOR != 0)
                return vdisk_error(-EUCLEAN, "vhd: disk size %" PRIu64 " is not a multiple of 512", s->size);

        if (s->type != VHD_TYPE_FIXED && r_tail < 0) {
                /* No footer at the end (a crash between a new block's data
                 * and its footer): the next one is appended. */
                s->footer_offset = file_size;
                s->footer_len = VHD_FOOTER_SIZE;
        }
        if (s->type == VHD_TYPE_FIXED) {
                if (r_head >= 0 && r_tail < 0)
                        return vdisk_error(-EUCLEAN, "vhd: fixed image without a footer at its end");
                if (s->size > s->footer_offset)
                        return vdisk_error(-EUCLEAN, "vhd: fixed image of %" PRIu64 " bytes in a file of %" PRIu64
                                           " bytes", s->size, file_size);
                if (r_tail >= 0)
                        memcpy(s->footer, tail, sizeof s->footer);
                return 0;
        }

        /* Dynamic and differencing. */
        if (file_size < 2 * VHD_FOOTER_SIZE)
                return vdisk_error(-EUCLEAN, "vhd: file too short for a dynamic image (%" PRIu64 " bytes)",
                                   file_size);
        s->dyn_offset = get_be64(s->footer + F_DATA_OFFSET);
        if (s->dyn_offset % VHD_SECTOR != 0 || s->dyn_offset < VHD_FOOTER_SIZE)
                return vdisk_error(-EUCLEAN, "vhd: dynamic header offset %" PRIu64 " is invalid", s->dyn_offset);
        if (!range_within(s->dyn_offset, VHD_DYN_SIZE, file_size))
                return vdisk_error(-EUCLEAN, "vhd: dynamic header at %" PRIu64 " extends past the end of the "
                                   "file (%" PRIu64 " bytes)", s->dyn_offset, file_size);
        r = io_pread(s->io, s->dyn, VHD_DYN_SIZE, s->dyn_offset);
        if (r < 0)
                return r;
        r = dyn_parse(s->dyn, s->dyn_offset, s->size, file_size, &s->bat_offset, &s->max_entries, &s->block_size);
        if (r < 0)
                return r;
        s->n_blocks = (uint32_t) DIV_ROUND_UP(s->size, s->block_size);
        s->bm_size = (uint32_t) ALIGN_UP(DIV_ROUND_UP(s->block_size / VHD_SECTOR, 8), VHD_SECTOR);
        bat_bytes = ALIGN_UP((uint64_t) s->max_entries * 4, (uint64_t) VHD_SECTOR);
        s->meta_end = MAX(s->dyn_offset + VHD_DYN_SIZE, s->bat_offset + bat_bytes);
        s->alloc_floor = s->meta_end;
        r = vhd_read_locators(s, file_size);
        if (r < 0)
                return r;
        if (s->type == VHD_TYPE_DIFF) {
                if (vdisk_uuid_is_null(s->dyn + D_PARENT_UUID))
                        return vdisk_error(-EUCLEAN, "vhd: differencing image without a parent UUID");
                utf16be_to_utf8(s->dyn + D_PARENT_NAME, 256, s->parent_name, sizeof s->parent_name);
        }

        tc_table_params p = {
                .offset = s->bat_offset,
                .size = (uint64_t) s->max_entries * 4,
                .page_size = UINT32_C(64) << 10,
                .entry = TC_BE32,
                .before_write = vhd_before_bat_write,
                .user = s,
                .name = "vhd BAT",
        };
        return tc_table_new(s->budget, s->io, &p, &s->bat);
}

static void vhd_close(void *state) {
        vhd_state *s = state;

        for (unsigned i = 0; i < VHD_BM_SLOTS; i++) {
                free(s->bms[i].bits);
                s->bms[i].bits = NULL;
        }
        if (s->budget && s->charged)
                tc_budget_uncharge(s->budget, s->charged);
        s->charged = 0;
        s->bat = tc_table_free(s->bat);
}

static uint64_t vhd_get_size(void *state) {
        vhd_state *s = state;

        return s->size;
}

static void vhd_get_layout(void *state, image_layout *ret) {
        vhd_state *s = state;

        *ret = (image_layout) {
                .cluster_size = s->type == VHD_TYPE_FIXED ? 0 : s->block_size,
                .zero_unit = 0,           /* VHD has no zero marker (T14) */
                .sector_size = VHD_SECTOR,
                .flags = s->type == VHD_TYPE_FIXED ? 0 : BACKEND_APPENDS,
        };
}

/* ---------------------------------------------------------------- data path */

static int vhd_map(void *state, uint64_t offset, uint64_t len, map_result *ret) {
        vhd_state *s = state;
        uint64_t bs, b, in, length, sec, end_sec;
        uint32_t e;
        vhd_bm *m;
        int r;

        assert(len > 0);
        assert(offset < s->size);

        if (s->type == VHD_TYPE_FIXED) {
                *ret = (map_result) { .kind = MAP_DATA, .host_offset = offset, .length = len };
                return 0;
        }

        bs = s->block_size;
        b = offset / bs;
        in = offset % bs;
        r = bat_get(s, b, &e);
        if (r < 0)
                return r;
        if (e == VHD_BAT_FREE) {
                uint64_t to = MIN(s->n_blocks, (offset + len - 1) / bs + 1), nb = to;

                /* The run of free entries, a word at a time. */
                length = bs - in;
                if (length < len) {
                        r = tc_find_other(s->bat, b + 1, to, VHD_BAT_FREE, &nb);
                        if (r < 0)
                                return r;
                        length += (nb - b - 1) * bs;
                }
                *ret = (map_result) { .kind = MAP_UNALLOC, .length = MIN(length, len) };
                return 0;
        }

        r = bm_get(s, (uint32_t) b, e, &m);
        if (r < 0)
                return r;
        sec = in / VHD_SECTOR;
        end_sec = DIV_ROUND_UP(MIN(in + len, bs), VHD_SECTOR);
        length = bit_run(m->bits, sec, end_sec) * VHD_SECTOR - in % VHD_SECTOR;
        *ret = (map_result) {
                .kind = bit_get(m->bits, sec) ? MAP_DATA : MAP_UNALLOC,
                .host_offset = (uint64_t) e * VHD_SECTOR + s->bm_size + in,
                .length = MIN(length, len),
        };
        if (ret->kind != MAP_DATA)
                ret->host_offset = 0;
        return 0;
}

static int cmp_u32(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
        return x < y ? -1 : x > y;
}

/* Before the first allocation: the allocation frontier (the end of the last
 * block, or of the BAT), and whether any entry is corrupt. */
static int vhd_prepare_writes(vhd_state *s) {
        uint64_t file_size, end = s->alloc_floor, unit = (uint64_t) s->bm_size + s->block_size;
        _cleanup_free_ uint32_t *starts = NULL;
        size_t n = 0;
        int r;

        if (s->alloc_ready)
                return 0;
        r = io_get_size(s->io, &file_size);
        if (r < 0)
                return r;
        r = tc_budget_charge(s->budget, (uint64_t) s->n_blocks * 4);
        if (r < 0)
                return r;
        starts = malloc(MAX(s->n_blocks, 1u) * sizeof(uint32_t));
        if (!starts) {
                tc_budget_uncharge(s->budget, (uint64_t) s->n_blocks * 4);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        s->n_bad = 0;
        for (uint32_t b = 0; b < s->n_blocks; b++) {
                uint32_t e;

                r = bat_get(s, b, &e);
                if (r < 0)
                        goto out;
                if (e == VHD_BAT_FREE)
                        continue;
                if (hits_meta(s, (uint64_t) e * VHD_SECTOR, unit)) {
                        s->n_bad++;
                        continue;
                }
                starts[n++] = e;
                end = MAX(end, (uint64_t) e * VHD_SECTOR + unit);
        }
        /* Overlapping blocks: sort the starts and compare neighbours. */
        qsort(starts, n, sizeof *starts, cmp_u32);
        for (size_t i = 1; i < n; i++)
                if ((uint64_t) starts[i] * VHD_SECTOR < (uint64_t) starts[i - 1] * VHD_SECTOR + unit)
                        s->n_bad++;
        s->data_end = end;
        /* The footer at the end is where the next block's bitmap goes: the
         * block's data lies past the end of the file, fresh. */
        hostalloc_init(&s->alloc, end, s->footer_offset == end ? end : file_size, VHD_SECTOR);
        s->alloc_ready = true;
        r = 0;
out:
        tc_budget_uncharge(s->budget, (uint64_t) s->n_blocks * 4);
        return r;
}

/* The largest host offset a BAT entry can name (0xFFFFFFFF is "free"). */
#define VHD_HOST_LIMIT ((uint64_t) VHD_BAT_FREE * VHD_SECTOR)

/* Reserves space for the block of `offset`:
 *   - a free BAT entry: a new block at the frontier. In fresh space the unit
 *     is the 4 KiB-aligned part of the block the write covers (the rest of
 *     the block reads zeros, its bitmap bits stay clear); otherwise the
 *     whole block, so that no stale byte stays behind in it.
 *   - clear sectors of an allocated block: the run of clear sectors from
 *     offset's sector on, as far as the write goes. */
static int vhd_allocate(void *state, uint64_t offset, uint64_t len, reservation *ret) {
        vhd_state *s = state;
        uint64_t bs, b, bstart, bend, start, end, host;
        uint32_t e;
        int fresh, r;

        assert(!s->reserved);
        assert(offset < s->size);

        if (s->type == VHD_TYPE_FIXED)
                return vdisk_error(-EOPNOTSUPP, "vhd: fixed images allocate nothing");
        r = vhd_prepare_writes(s);
        if (r < 0)
                return r;
        if (s->n_bad > 0)
                return vdisk_error(-EUCLEAN, "vhd: the BAT has %" PRIu32 " corrupt entries; repair the image "
                                   "before writing to it", s->n_bad);

        bs = s->block_size;
        b = offset / bs;
        bstart = b * bs;
        bend = MIN(bstart + bs, s->size);
        r = bat_get(s, b, &e);
        if (r < 0)
                return r;

        if (e == VHD_BAT_FREE) {
                r = hostalloc_alloc(&s->alloc, (uint64_t) s->bm_size + bs, VHD_HOST_LIMIT, &host, &fresh);
                if (r < 0)
                        return vdisk_error(r, "vhd: the image cannot grow past 2 TiB of file");
                if (fresh) {
                        start = MAX(bstart, offset / VHD_COW_UNIT * VHD_COW_UNIT);
                        end = MIN(bend, ALIGN_UP(MIN(offset + len, bend), (uint64_t) VHD_COW_UNIT));
                } else {
                        start = bstart;
                        end = bend;
                }
                s->res_new = true;
                s->res_host = host;
                *ret = (reservation) {
                        .unit_offset = start,
                        .length = end - start,
                        .host_offset = host + s->bm_size + (start - bstart),
                        .fresh = fresh,
                };
        } else {
                uint64_t sec, end_sec;
                vhd_bm *m;

                r = bm_get(s, (uint32_t) b, e, &m);
                if (r < 0)
                        return r;
                sec = (offset - bstart) / VHD_SECTOR;
                end_sec = DIV_ROUND_UP(MIN(offset + len, bend) - bstart, VHD_SECTOR);
                assert(!bit_get(m->bits, sec));
                start = bstart + sec * VHD_SECTOR;
                end = start + bit_run(m->bits, sec, end_sec) * VHD_SECTOR;
                s->res_new = false;
                *ret = (reservation) {
                        .unit_offset = start,
                        .length = end - start,
                        .host_offset = (uint64_t) e * VHD_SECTOR + s->bm_size + (start - bstart),
                        .fresh = 0,
                };
        }
        s->reserved = true;
        s->res_block = (uint32_t) b;
        return 0;
}

static void bits_set_range(vhd_state *s, uint8_t *bits, const reservation *res) {
        uint64_t bstart = (uint64_t) s->res_block * s->block_size;
        uint64_t first = (res->unit_offset - bstart) / VHD_SECTOR;
        uint64_t n = DIV_ROUND_UP(res->length, VHD_SECTOR);

        for (uint64_t i = first; i < first + n; i++)
                bit_set(bits, i);
}

static int vhd_commit(void *state, const reservation *res) {
        vhd_state *s = state;
        vhd_bm *m;
        int r;

        assert(s->reserved);

        if (s->res_new) {
                bm_drop(s, s->res_block);
                r = bm_slot(s, &m);
                if (r < 0)
                        return r;
                memset(m->bits, 0, s->bm_size);
                bits_set_range(s, m->bits, res);
                r = tc_set(s->bat, s->res_block, s->res_host / VHD_SECTOR, TC_AFTER_DATA);
                if (r < 0)
                        return r;
                m->used = true;
                m->dirty = true;
                m->block = s->res_block;
                m->host = s->res_host;
                m->tick = ++s->tick;
                s->data_end = MAX(s->data_end, s->res_host + s->bm_size + s->block_size);
                s->footer_moved = true;
        } else {
                uint32_t e;

                r = bat_get(s, s->res_block, &e);
                if (r < 0)
                        return r;
                r = bm_get(s, s->res_block, e, &m);
                if (r < 0)
                        return r;
                bits_set_range(s, m->bits, res);
                m->dirty = true;
        }
        s->reserved = false;
        return 0;
}

static void vhd_release(void *state, const reservation *res) {
        vhd_state *s = state;

        assert(s->reserved);
        s->reserved = false;
        if (s->res_new)
                hostalloc_rewind(&s->alloc, s->data_end);
}

/* Everything but the BAT, after the data it describes:
 *   1. flush the data;
 *   2. a moved footer goes to the new end first, and is flushed, because
 *      the first new block's bitmap overwrites the old one;
 *   3. the dirty bitmaps, the changed headers; flush.
 * The BAT goes out after this (the table cache calls it first). */
static int vhd_write_meta(vhd_state *s) {
        bool bms_dirty = false;
        int r;

        for (unsigned i = 0; i < VHD_BM_SLOTS; i++)
                if (s->bms[i].used && s->bms[i].dirty)
                        bms_dirty = true;
        if (!s->footer_moved && !bms_dirty && !s->meta_dirty)
                return 0;

        r = io_flush(s->io);
        if (r < 0)
                return r;
        if (s->footer_moved) {
                footer_seal(s->footer);
                r = io_pwrite(s->io, s->footer, VHD_FOOTER_SIZE, s->data_end);
                if (r < 0)
                        return r;
                r = io_flush(s->io);
                if (r < 0)
                        return r;
                s->footer_offset = s->data_end;
                s->footer_len = VHD_FOOTER_SIZE;
                s->footer_moved = false;
        }
        for (unsigned i = 0; i < VHD_BM_SLOTS; i++) {
                vhd_bm *m = &s->bms[i];

                if (!m->used || !m->dirty)
                        continue;
                r = io_pwrite(s->io, m->bits, s->bm_size, m->host);
                if (r < 0)
                        return r;
                m->dirty = false;
        }
        if (s->meta_dirty) {
                if (s->n_loc_w > 0) {
                        for (unsigned i = 0; i < s->n_loc_w; i++) {
                                r = io_pwrite(s->io, s->loc_w[i].data, s->loc_w[i].len, s->loc_w[i].off);
                                if (r < 0)
                                        return r;
                        }
                        r = io_flush(s->io);
                        if (r < 0)
                                return r;
                        s->n_loc_w = 0;
                }
                footer_seal(s->footer);
                r = io_pwrite(s->io, s->footer, s->footer_len, s->footer_offset);
                if (r < 0)
                        return r;
                if (s->type != VHD_TYPE_FIXED) {
                        r = io_pwrite(s->io, s->footer, VHD_FOOTER_SIZE, 0);
                        if (r < 0)
                                return r;
                        dyn_seal(s->dyn);
                        r = io_pwrite(s->io, s->dyn, VHD_DYN_SIZE, s->dyn_offset);
                        if (r < 0)
                                return r;
                }
                s->meta_dirty = false;
        }
        return io_flush(s->io);
}

static int vhd_flush(void *state) {
        vhd_state *s = state;

        if (!s->writable)
                return 0;
        if (s->bat && tc_table_is_dirty(s->bat))
                return tc_table_flush(s->bat);   /* calls vhd_write_meta() first */
        return vhd_write_meta(s) ?: io_flush(s->io);
}

/* Records the parent's names: a W2ru locator (relative: ".\\name",
 * "..\\dir\\name") and, when the absolute name is known, a W2ku locator (the
 * name as it is: a POSIX path here, as VirtualBox writes it on Linux), in
 * the data space the image's locators already have (first fit); other
 * locators name the old parent and are dropped. A name longer than the space
 * is not recorded: the parent is still found by its UUID. The Unicode name
 * in the header becomes the parent's file name. Written by the next flush:
 * the data first, then the header that points at it. */
static int vhd_set_links(vhd_state *s, const char *rel, const char *abs) {
        struct { uint64_t off, bytes; bool used; } areas[8];
        const char *names[2] = { rel && rel[0] ? rel : NULL, abs && abs[0] ? abs : NULL };
        static const char codes[2][5] = { "W2ru", "W2ku" };
        unsigned n_areas = 0, slot = 0;
        uint64_t file_size;
        const char *base;
        int r;

        r = io_get_size(s->io, &file_size);
        if (r < 0)
                return r;
        file_size = MAX(file_size, s->alloc_floor);
        for (unsigned i = 0; i < 8; i++) {
                uint8_t *l = s->dyn + D_LOCATORS + 24 * i;
                uint32_t space = get_be32(l + 4), len = get_be32(l + 8);
                uint64_t off = get_be64(l + 16), bytes;

                if (get_be32(l) == 0)
                        continue;
                bytes = space <= 8 ? (uint64_t) space * VHD_SECTOR : space;
                bytes = ALIGN_UP(MAX(bytes, (uint64_t) len), (uint64_t) VHD_SECTOR);
                if (off >= VHD_FOOTER_SIZE && off % VHD_SECTOR == 0 && range_within(off, bytes, file_size) &&
                    bytes <= (UINT64_C(1) << 20) && !ranges_overlap(off, bytes, 0, s->meta_end))
                        areas[n_areas++] = (typeof(areas[0])) { off, bytes, false };
        }
        memset(s->dyn + D_LOCATORS, 0, 8 * 24);
        s->n_loc_w = 0;
        s->parent_rel[0] = s->parent_abs[0] = 0;
        for (unsigned k = 0; k < 2; k++) {
                uint8_t *d = s->loc_w[s->n_loc_w].data;
                char text[1024];
                size_t units, n;

                if (!names[k])
                        continue;
                if (k == 0 && !(names[k][0] == '.' && (names[k][1] == '/' || (names[k][1] == '.' && names[k][2] == '/'))))
                        n = (size_t) snprintf(text, sizeof text, ".\\%s", names[k]);
                else
                        n = (size_t) snprintf(text, sizeof text, "%s", names[k]);
                if (n >= sizeof text)
                        continue;
                if (k == 0)
                        for (char *c = text; *c; c++)
                                if (*c == '/')
                                        *c = '\\';
                memset(d, 0, VHD_LOC_BYTES);
                units = utf8_to_utf16(text, d, VHD_LOC_BYTES / 2, false);
                if (units >= VHD_LOC_BYTES / 2)
                        continue;   /* too long for the space vdisk gives a locator */
                for (unsigned a = 0; a < n_areas; a++) {
                        uint8_t *l = s->dyn + D_LOCATORS + 24 * slot;

                        if (areas[a].used || areas[a].bytes < units * 2)
                                continue;
                        areas[a].used = true;
                        memcpy(l, codes[k], 4);
                        put_be32(l + 4, (uint32_t) (areas[a].bytes / VHD_SECTOR));
                        put_be32(l + 8, (uint32_t) (units * 2));
                        put_be64(l + 16, areas[a].off);
                        s->loc_w[s->n_loc_w].off = areas[a].off;
                        s->loc_w[s->n_loc_w].len = (uint32_t) (units * 2);
                        s->n_loc_w++;
                        slot++;
                        snprintf(k == 0 ? s->parent_rel : s->parent_abs, sizeof s->parent_rel, "%s", text);
                        break;
                }
        }
        links_from_locators(s);
        memset(s->dyn + D_PARENT_NAME, 0, 512);
        if (names[0] || names[1]) {
                const char *name = names[0] ?: names[1];

                base = strrchr(name, '/');
                utf8_to_utf16(base ? base + 1 : name, s->dyn + D_PARENT_NAME, 255, true);
                put_be32(s->dyn + D_PARENT_TIME, (uint32_t) ((int64_t) time(NULL) - VHD_EPOCH));
        }
        utf16be_to_utf8(s->dyn + D_PARENT_NAME, 256, s->parent_name, sizeof s->parent_name);
        s->meta_dirty = true;
        return 0;
}

/* ---------------------------------------------------------------- metadata */

static uint32_t vhd_image_flags(const vhd_state *s) {
        return s->type == VHD_TYPE_FIXED ? VDISK_IMAGE_FLAGS_FIXED :
               s->type == VHD_TYPE_DIFF ? VDISK_IMAGE_FLAGS_DIFF : 0;
}

static int vhd_get_meta(void *state, meta *m) {
        vhd_state *s = state;

        m->mask = META_UUID | META_PCHS | META_FLAGS | META_VERSION;
        memcpy(m->uuid, s->footer + F_UUID, 16);
        m->pchs = (vdisk_geometry) {
                .cylinders = get_be16(s->footer + F_CYLINDERS),
                .heads = s->footer[F_HEADS],
                .sectors = s->footer[F_SPT],
        };
        m->flags = vhd_image_flags(s);
        m->version = get_be32(s->footer + F_VERSION);
        /* A base reports the null parent UUID (as VDI does). */
        m->mask |= META_PARENT_UUID;
        memset(m->parent_uuid, 0, 16);
        if (s->type == VHD_TYPE_DIFF)
                memcpy(m->parent_uuid, s->dyn + D_PARENT_UUID, 16);
        /* The locators, as hints: the core tries them, then the UUID. */
        if (s->type == VHD_TYPE_DIFF && (s->link_rel[0] || s->link_abs[0])) {
                m->mask |= META_PARENT_NAME;
                m->parent_name = s->link_rel[0] ? s->link_rel : s->link_abs;
                m->parent_abs_name = s->link_abs[0] ? s->link_abs : NULL;
                m->parent_format = NULL;
        }
        return 0;
}

static int vhd_set_meta(void *state, const meta *m, uint32_t mask) {
        vhd_state *s = state;
        const uint32_t supported = META_UUID | META_PCHS | META_PARENT_UUID | META_PARENT_NAME;
        int r;

        /* VHD has no parent modification UUID: clearing it is nothing. */
        if ((mask & META_PARENT_MOD_UUID) && vdisk_uuid_is_null(m->parent_modification_uuid))
                mask &= ~META_PARENT_MOD_UUID;
        if (mask & ~supported)
                return vdisk_error(-EOPNOTSUPP, "vhd: the format has no such field (mask %#" PRIx32 ")",
                                   mask & ~supported);
        if ((mask & META_PARENT_UUID) && s->type == VHD_TYPE_FIXED && !vdisk_uuid_is_null(m->parent_uuid))
                return vdisk_error(-EOPNOTSUPP, "vhd: a fixed image cannot have a parent");
        if ((mask & META_PARENT_NAME) && s->type == VHD_TYPE_FIXED)
                return vdisk_error(-EOPNOTSUPP, "vhd: a fixed image cannot have a parent");
        if ((mask & META_PCHS) && (m->pchs.cylinders > 65535 || m->pchs.heads > 255 || m->pchs.sectors > 255))
                return vdisk_error(-EINVAL, "vhd: geometry %" PRIu32 "/%" PRIu32 "/%" PRIu32 " does not fit",
                                   m->pchs.cylinders, m->pchs.heads, m->pchs.sectors);
        if (mask & META_PCHS) {
                uint8_t f[VHD_FOOTER_SIZE];

                /* The geometry sizes the disk for some creators (T1). */
                memcpy(f, s->footer, sizeof f);
                put_be16(f + F_CYLINDERS, (uint16_t) m->pchs.cylinders);
                f[F_HEADS] = (uint8_t) m->pchs.heads;
                f[F_SPT] = (uint8_t) m->pchs.sectors;
                if (footer_size(f) != s->size)
                        return vdisk_error(-EINVAL, "vhd: this image's size follows its geometry; "
                                           "a new geometry would change the size");
                memcpy(s->footer, f, sizeof f);
        }
        if (mask & META_UUID)
                memcpy(s->footer + F_UUID, m->uuid, 16);
        /* A parent makes a dynamic image differencing, none makes a
         * differencing image dynamic (a merge made it the base). */
        if ((mask & META_PARENT_UUID) && s->type != VHD_TYPE_FIXED) {
                bool null = vdisk_uuid_is_null(m->parent_uuid);

                memcpy(s->dyn + D_PARENT_UUID, m->parent_uuid, 16);
                s->type = null ? VHD_TYPE_DYNAMIC : VHD_TYPE_DIFF;
                put_be32(s->footer + F_TYPE, s->type);
                /* A base names no parent. */
                if (null && !(mask & META_PARENT_NAME)) {
                        r = vhd_set_links(s, NULL, NULL);
                        if (r < 0)
                                return r;
                }
        }
        if ((mask & META_PARENT_NAME) && s->type != VHD_TYPE_FIXED) {
                r = vhd_set_links(s, m->parent_name, m->parent_abs_name);
                if (r < 0)
                        return r;
        }
        s->meta_dirty = true;
        return 0;
}

static int vhd_get_info(void *state, vdisk_image_info *ret) {
        vhd_state *s = state;
        uint64_t n = 0;
        int r;

        ret->image_flags = vhd_image_flags(s);
        ret->variant = s->type == VHD_TYPE_FIXED ? "fixed" : s->type == VHD_TYPE_DIFF ? "diff" : "dynamic";
        if (s->type == VHD_TYPE_FIXED)
                return 0;
        ret->cluster_size = s->block_size;
        for (uint32_t b = 0; b < s->n_blocks; b++) {
                uint32_t e;

                r = bat_get(s, b, &e);
                if (r < 0)
                        return r;
                n += e != VHD_BAT_FREE;
        }
        ret->blocks_total = s->n_blocks;
        ret->blocks_allocated = n;
        return 0;
}

static int vhd_get_format_info(void *state, strv_builder *kv) {
        vhd_state *s = state;
        char app[5] = {};
        int r;

        memcpy(app, s->footer + F_CREATOR_APP, 4);
        for (int i = 0; i < 4; i++)
                if ((unsigned char) app[i] < 0x20 || (unsigned char) app[i] > 0x7e)
                        app[i] = app[i] ? '?' : ' ';
        r = strv_push_pair(kv, "creator", "%s", app);
        if (r < 0)
                return r;
        if (s->type == VHD_TYPE_DIFF && s->parent_name[0]) {
                r = strv_push_pair(kv, "parent-name", "%s", s->parent_name);
                if (r < 0)
                        return r;
        }
        if (s->type == VHD_TYPE_DIFF && s->parent_rel[0])
                return strv_push_pair(kv, "parent-relative-path", "%s", s->parent_rel);
        return 0;
}

/* ---------------------------------------------------------------- create */

/* The geometry of the spec's appendix: CHS for `sectors`, rounded down. */
static void chs_for(uint64_t sectors, uint32_t *ret_c, uint32_t *ret_h, uint32_t *ret_s) {
        uint64_t cth;
        uint32_t spt, heads;

        if (sectors > VHD_MAX_GEOMETRY)
                sectors = VHD_MAX_GEOMETRY;
        if (sectors >= UINT64_C(65535) * 16 * 63) {
                spt = 255;
                heads = 16;
                cth = sectors / spt;
        } else {
                spt = 17;
                cth = sectors / spt;
                heads = (uint32_t) ((cth + 1023) / 1024);
                if (heads < 4)
                        heads = 4;
                if (cth >= (uint64_t) heads * 1024 || heads > 16) {
                        spt = 31;
                        heads = 16;
                        cth = sectors / spt;
                }
                if (cth >= (uint64_t) heads * 1024) {
                        spt = 63;
                        heads = 16;
                        cth = sectors / spt;
                }
        }
        *ret_c = (uint32_t) (cth / heads);
        *ret_h = heads;
        *ret_s = spt;
}

static int vhd_parse_options(const char *const *o, bool *fixed, bool *force_size) {
        for (; o && o[0]; o += 2) {
                if (streq(o[0], "subformat")) {
                        if (streq(o[1], "fixed"))
                                *fixed = true;
                        else if (streq(o[1], "dynamic")) {
                                if (*fixed)
                                        return vdisk_error(-EINVAL, "vpc: subformat=dynamic conflicts with "
                                                           "a fixed image");
                        } else
                                return vdisk_error(-EINVAL, "vpc: invalid subformat '%s' (dynamic or fixed)", o[1]);
                } else if (streq(o[0], "force_size"))
                        *force_size = streq(o[1], "on");
        }
        return 0;
}

static void geometry_for_size(uint64_t size, uint8_t *f);

static int vhd_free_entry(void *ctx, uint64_t i, uint64_t *ret) {
        *ret = VHD_BAT_FREE;
        return 0;
}

static int vhd_create(void *state, const open_ctx *c, const create_params *p) {
        vhd_state *s = state;
        bool fixed = p->image_flags & VDISK_IMAGE_FLAGS_FIXED;
        bool diff = p->image_flags & VDISK_IMAGE_FLAGS_DIFF;
        bool force_size = false;
        uint32_t bs = p->block_size ?: VHD_BLOCK_DEFAULT, cyl, heads, spt;
        uint64_t size, sectors, n_blocks, bat_bytes, now;
        uint8_t *f = s->footer;
        int r;

        r = vhd_parse_options(p->options, &fixed, &force_size);
        if (r < 0)
                return r;
        if (p->image_flags & ~(VDISK_IMAGE_FLAGS_FIXED | VDISK_IMAGE_FLAGS_DIFF))
                return vdisk_error(-EOPNOTSUPP, "vhd: image flags %#" PRIx32 " are not supported", p->image_flags);
        if (fixed && diff)
                return vdisk_error(-EOPNOTSUPP, "vhd: a differencing image cannot be fixed");
        if (diff && vdisk_uuid_is_null(p->parent_uuid))
                return vdisk_error(-EOPNOTSUPP, "vhd: a differencing image records its parent's UUID, and the "
                                   "parent%s%s%s has none", p->parent_name ? " '" : "",
                                   p->parent_name ? p->parent_name : "", p->parent_name ? "'" : "");
        if (bs < VHD_SECTOR || bs > VHD_BLOCK_MAX || !IS_POWER_OF_2(bs))
                return vdisk_error(-EINVAL, "vhd: block size %" PRIu32 " is not a power of two from 512 bytes "
                                   "to 64 MiB", bs);

        /* Size (T1): qemu's default rounds up to a whole CHS geometry, which
         * every reader agrees on; force_size=on keeps the size exact and
         * stores the maximum geometry, which makes qemu read current_size
         * too (as its own force_size does). */
        sectors = DIV_ROUND_UP(p->size, VHD_SECTOR);
        if (force_size) {
                cyl = 65535;
                heads = 16;
                spt = 255;
        } else if (diff) {
                /* A diff has its parent's size, exactly. */
                cyl = heads = spt = 0;   /* set below by geometry_for_size() */
        } else {
                if (sectors > VHD_MAX_GEOMETRY)
                        return vdisk_error(-EFBIG, "vpc: size %" PRIu64 " is too large for a CHS geometry "
                                           "(use force_size=on)", p->size);
                chs_for(sectors, &cyl, &heads, &spt);
                for (uint64_t i = 1; (uint64_t) cyl * heads * spt < sectors; i++) {
                        if (sectors + i > VHD_MAX_GEOMETRY)
                                return vdisk_error(-EFBIG, "vpc: size %" PRIu64 " is too large for a CHS "
                                                   "geometry (use force_size=on)", p->size);
                        chs_for(sectors + i, &cyl, &heads, &spt);
                }
                sectors = (uint64_t) cyl * heads * spt;
        }
        if (sectors > VHD_CREATE_MAX / VHD_SECTOR)
                return vdisk_error(-EFBIG, "vpc: size %" PRIu64 " is too large (at most %" PRIu64 " bytes)",
                                   p->size, VHD_CREATE_MAX);
        size = sectors * VHD_SECTOR;

        s->io = c->io;
        s->writable = 1;
        s->budget = c->budget;
        s->size = size;
        s->type = diff ? VHD_TYPE_DIFF : fixed ? VHD_TYPE_FIXED : VHD_TYPE_DYNAMIC;

        now = (uint64_t) ((int64_t) time(NULL) - VHD_EPOCH);
        memset(f, 0, VHD_FOOTER_SIZE);
        memcpy(f + F_COOKIE, "conectix", 8);
        put_be32(f + F_FEATURES, 2);
        put_be32(f + F_VERSION, VHD_VERSION);
        put_be64(f + F_DATA_OFFSET, fixed ? VHD_NO_OFFSET : VHD_FOOTER_SIZE);
        put_be32(f + F_TIMESTAMP, (uint32_t) now);
        memcpy(f + F_CREATOR_APP, "vdsk", 4);
        put_be32(f + F_CREATOR_VER, 0x00010000);
        memcpy(f + F_CREATOR_OS, "Wi2k", 4);
        put_be64(f + F_ORIG_SIZE, size);
        put_be64(f + F_CUR_SIZE, size);
        put_be16(f + F_CYLINDERS, (uint16_t) cyl);
        f[F_HEADS] = (uint8_t) heads;
        f[F_SPT] = (uint8_t) spt;
        if (diff && !force_size)
                geometry_for_size(size, f);
        put_be32(f + F_TYPE, s->type);
        memcpy(f + F_UUID, p->uuid, 16);
        footer_seal(f);

        if (fixed) {
                r = io_truncate(s->io, size);
                if (r < 0)
                        return r;
                r = io_pwrite(s->io, f, VHD_FOOTER_SIZE, size);
                if (r < 0)
                        return r;
                s->footer_offset = size;
                s->footer_len = VHD_FOOTER_SIZE;
                return 0;
        }

        n_blocks = DIV_ROUND_UP(size, bs);
        if (n_blocks > VHD_BAT_ENTRIES_MAX)
                return vdisk_error(-EFBIG, "vhd: %" PRIu64 " blocks of %" PRIu32 " bytes are too many", n_blocks, bs);
        bat_bytes = ALIGN_UP(n_blocks * 4, (uint64_t) VHD_SECTOR);

        uint8_t *d = s->dyn;
        memset(d, 0, VHD_DYN_SIZE);
        memcpy(d + D_COOKIE, "cxsparse", 8);
        put_be64(d + D_DATA_OFFSET, VHD_NO_OFFSET);
        put_be64(d + D_TABLE_OFFSET, VHD_FOOTER_SIZE + VHD_DYN_SIZE);
        put_be32(d + D_VERSION, VHD_VERSION);
        put_be32(d + D_MAX_ENTRIES, (uint32_t) n_blocks);
        put_be32(d + D_BLOCK_SIZE, bs);
        if (diff) {
                memcpy(d + D_PARENT_UUID, p->parent_uuid, 16);
                put_be32(d + D_PARENT_TIME, (uint32_t) now);
        }
        dyn_seal(d);

        s->dyn_offset = VHD_FOOTER_SIZE;
        s->bat_offset = VHD_FOOTER_SIZE + VHD_DYN_SIZE;
        s->max_entries = (uint32_t) n_blocks;
        s->block_size = bs;
        s->n_blocks = (uint32_t) n_blocks;
        s->bm_size = (uint32_t) ALIGN_UP(DIV_ROUND_UP(bs / VHD_SECTOR, 8), VHD_SECTOR);
        s->meta_end = s->bat_offset + bat_bytes;
        s->alloc_floor = s->meta_end;
        if (diff) {
                /* Locators after the BAT: W2ru (relative to this image's
                 * directory) and W2ku (absolute), each in 2 sectors, where
                 * the names are known: the core's (both files opened by
                 * path), else the name the caller gave (relative, as qemu
                 * takes a backing name: to the child's directory). */
                const char *rel = p->parent_rel_name, *abs = p->parent_abs_name;
                unsigned n = 0;

                if (!rel && p->parent_name && p->parent_name[0] && p->parent_name[0] != '/')
                        rel = p->parent_name;
                if (!rel && p->parent_name && p->parent_name[0]) {
                        const char *base = strrchr(p->parent_name, '/');
                        rel = base ? base + 1 : p->parent_name;
                }
                if (!abs && p->parent_name && p->parent_name[0] == '/')
                        abs = p->parent_name;
                for (unsigned k = 0; k < 2; k++) {
                        uint8_t *l = d + D_LOCATORS + 24 * n;

                        if (!(k == 0 ? rel : abs))
                                continue;
                        memcpy(l, k == 0 ? "W2ru" : "W2ku", 4);
                        put_be32(l + 4, VHD_LOC_SECTORS);
                        put_be64(l + 16, s->meta_end + (uint64_t) n * VHD_LOC_BYTES);
                        n++;
                }
                s->alloc_floor = s->meta_end + (uint64_t) n * VHD_LOC_BYTES;
                r = vhd_set_links(s, rel, abs);
                if (r < 0)
                        return r;
                for (unsigned i = 0; i < s->n_loc_w; i++) {
                        r = io_pwrite(s->io, s->loc_w[i].data, s->loc_w[i].len, s->loc_w[i].off);
                        if (r < 0)
                                return r;
                }
                s->n_loc_w = 0;
                s->meta_dirty = false;
                dyn_seal(d);
        }

        r = io_pwrite(s->io, f, VHD_FOOTER_SIZE, 0);
        if (r < 0)
                return r;
        r = io_pwrite(s->io, d, VHD_DYN_SIZE, s->dyn_offset);
        if (r < 0)
                return r;
        r = tc_write_entries(s->io, s->bat_offset, n_blocks, TC_BE32, VHD_BAT_FREE, vhd_free_entry, NULL);
        if (r < 0)
                return r;
        s->alloc_floor = MAX(s->alloc_floor, s->meta_end);
        r = io_pwrite(s->io, f, VHD_FOOTER_SIZE, s->alloc_floor);
        if (r < 0)
                return r;
        s->footer_offset = s->alloc_floor;
        s->footer_len = VHD_FOOTER_SIZE;

        tc_table_params tp = {
                .offset = s->bat_offset,
                .size = n_blocks * 4,
                .page_size = UINT32_C(64) << 10,
                .entry = TC_BE32,
                .before_write = vhd_before_bat_write,
                .user = s,
                .name = "vhd BAT",
        };
        r = tc_table_new(s->budget, s->io, &tp, &s->bat);
        if (r < 0)
                return r;
        s->data_end = s->alloc_floor;
        hostalloc_init(&s->alloc, s->alloc_floor, s->alloc_floor, VHD_SECTOR);
        s->alloc_ready = true;
        return 0;
}


/* ---------------------------------------------------------------- resize */

/* The geometry for a new size: the spec's CHS when it covers the size
 * exactly, else the maximum geometry, which every reader (qemu included)
 * takes as "use current_size" (T1). */
static void geometry_for_size(uint64_t size, uint8_t *f) {
        uint64_t sectors = size / VHD_SECTOR;
        uint32_t c, h, spt;

        chs_for(sectors, &c, &h, &spt);
        if ((uint64_t) c * h * spt != sectors) {
                c = 65535;
                h = 16;
                spt = 255;
        }
        put_be16(f + F_CYLINDERS, (uint16_t) c);
        f[F_HEADS] = (uint8_t) h;
        f[F_SPT] = (uint8_t) spt;
}


static int vhd_copy_entry(void *ctx, uint64_t i, uint64_t *ret) {
        vhd_state *s = ctx;

        if (i >= s->max_entries) {
                *ret = VHD_BAT_FREE;
                return 0;
        }
        return tc_get(s->bat, i, ret);
}

/* A larger BAT for a grow: written after the last block, with the footer
 * behind it first (the BAT overwrites the old footer); then the header
 * points at it. A crash before the header write leaves the old BAT in use
 * and the new one as leaked space. The old BAT's space is left as it is. */
static int vhd_move_bat(vhd_state *s, uint64_t n_entries) {
        uint64_t bytes, off;
        uint8_t d[VHD_DYN_SIZE];
        tc_table *t = NULL;
        int fresh, r;

        if (n_entries > VHD_BAT_ENTRIES_MAX)
                return vdisk_error(-EFBIG, "vhd: %" PRIu64 " BAT entries are too many", n_entries);
        r = vhd_prepare_writes(s);
        if (r < 0)
                return r;
        if (s->n_bad > 0)
                return vdisk_error(-EUCLEAN, "vhd: the BAT has %" PRIu32 " corrupt entries; repair the image "
                                   "before resizing it", s->n_bad);
        /* Room for growing again: entries for whole BAT sectors. */
        n_entries = ALIGN_UP(n_entries, (uint64_t) VHD_SECTOR / 4);
        bytes = n_entries * 4;
        r = hostalloc_alloc(&s->alloc, bytes, VHD_HOST_LIMIT, &off, &fresh);
        if (r < 0)
                return r;
        assert(off == s->data_end);

        footer_seal(s->footer);
        r = io_pwrite(s->io, s->footer, VHD_FOOTER_SIZE, off + bytes);
        if (r < 0)
                goto fail;
        r = io_flush(s->io);
        if (r < 0)
                goto fail;
        r = tc_write_entries(s->io, off, n_entries, TC_BE32, VHD_BAT_FREE, vhd_copy_entry, s);
        if (r < 0)
                goto fail;
        r = io_flush(s->io);
        if (r < 0)
                goto fail;
        memcpy(d, s->dyn, sizeof d);
        put_be64(d + D_TABLE_OFFSET, off);
        put_be32(d + D_MAX_ENTRIES, (uint32_t) n_entries);
        dyn_seal(d);
        r = io_pwrite(s->io, d, VHD_DYN_SIZE, s->dyn_offset);
        if (r < 0)
                goto fail;
        r = io_flush(s->io);
        if (r < 0)
                goto fail;

        tc_table_params p = {
                .offset = off,
                .size = bytes,
                .page_size = UINT32_C(64) << 10,
                .entry = TC_BE32,
                .before_write = vhd_before_bat_write,
                .user = s,
                .name = "vhd BAT",
        };
        r = tc_table_new(s->budget, s->io, &p, &t);
        if (r < 0)
                return r;   /* the header is written: the image is valid, this open is not */
        tc_table_free(s->bat);
        s->bat = t;
        memcpy(s->dyn, d, sizeof d);
        s->bat_offset = off;
        s->max_entries = (uint32_t) n_entries;
        s->footer_offset = off + bytes;
        s->footer_len = VHD_FOOTER_SIZE;
        s->data_end = off + bytes;
        s->meta_end = MAX(s->meta_end, off + bytes);
        s->alloc_floor = MAX(s->alloc_floor, off + bytes);
        return 0;

fail:
        hostalloc_rewind(&s->alloc, s->data_end);
        return r;
}

static int vhd_resize(void *state, uint64_t new_size, vdisk_progress *p) {
        vhd_state *s = state;
        uint8_t f[VHD_FOOTER_SIZE];
        int r;

        if (!s->writable)
                return vdisk_error(-EROFS, "vhd: image is read-only");
        if (new_size == 0 || new_size % VHD_SECTOR != 0)
                return vdisk_error(-EINVAL, "vhd: size %" PRIu64 " is not a positive multiple of 512", new_size);
        if (new_size > VHD_CREATE_MAX)
                return vdisk_error(-EFBIG, "vhd: size %" PRIu64 " is too large (at most %" PRIu64 " bytes)",
                                   new_size, VHD_CREATE_MAX);
        r = vhd_flush(s);
        if (r < 0)
                return r;

        memcpy(f, s->footer, sizeof f);
        put_be64(f + F_CUR_SIZE, new_size);
        geometry_for_size(new_size, f);
        footer_seal(f);

        if (s->type == VHD_TYPE_FIXED) {
                uint64_t old = s->footer_offset;
                uint32_t old_len = s->footer_len;

                /* The new footer first, then the old one becomes zeros (a
                 * grown disk reads zeros there) or is cut off. */
                r = io_pwrite(s->io, f, VHD_FOOTER_SIZE, new_size);
                if (r < 0)
                        return r;
                r = io_flush(s->io);
                if (r < 0)
                        return r;
                memcpy(s->footer, f, sizeof f);
                s->footer_offset = new_size;
                s->footer_len = VHD_FOOTER_SIZE;
                s->size = new_size;
                if (new_size > old) {
                        r = io_write_zeroes(s->io, old, MIN((uint64_t) old_len, new_size - old));
                        if (r < 0)
                                return r;
                } else {
                        r = io_truncate(s->io, new_size + VHD_FOOTER_SIZE);
                        if (r < 0)
                                return r;
                }
                return io_flush(s->io);
        }

        uint64_t n_new = DIV_ROUND_UP(new_size, s->block_size);
        if (n_new > s->max_entries) {
                r = vhd_move_bat(s, n_new);
                if (r < 0)
                        return r;
        }
        if (new_size > s->size && s->size % s->block_size != 0) {
                /* The grown part of the old last block must read zeros, for
                 * us and for qemu (which ignores the bitmap): its bytes
                 * become zeros (what a shrink left there read zeros then,
                 * but may lie over a parent's data in a diff). */
                uint64_t b = s->size / s->block_size, in = s->size % s->block_size;
                uint32_t e;

                r = bat_get(s, b, &e);
                if (r < 0)
                        return r;
                if (e != VHD_BAT_FREE) {
                        uint64_t host = (uint64_t) e * VHD_SECTOR + s->bm_size + in;

                        r = io_write_zeroes(s->io, host, s->block_size - in);
                        if (r < 0)
                                return r;
                        r = io_flush(s->io);
                        if (r < 0)
                                return r;
                }
        }
        /* Shrinking: the core checked that the dropped blocks hold nothing;
         * their entries go (the space leaks). */
        for (uint64_t b = n_new; b < s->n_blocks; b++) {
                bm_drop(s, (uint32_t) b);
                r = tc_set(s->bat, b, VHD_BAT_FREE, 0);
                if (r < 0)
                        return r;
        }
        {
                uint8_t old_footer[VHD_FOOTER_SIZE];
                uint64_t old_size = s->size;
                uint32_t old_n = s->n_blocks;

                memcpy(old_footer, s->footer, sizeof old_footer);
                memcpy(s->footer, f, sizeof f);
                s->size = new_size;
                s->n_blocks = (uint32_t) n_new;
                s->meta_dirty = true;
                r = vhd_flush(s);
                if (r < 0) {
                        /* The footers may be half written: the next flush
                         * writes the old ones again (a moved BAT stays: it
                         * is valid and larger). Dropped blocks of a shrink
                         * read zeros, so they stay dropped. */
                        memcpy(s->footer, old_footer, sizeof old_footer);
                        s->size = old_size;
                        s->n_blocks = old_n;
                        s->meta_dirty = true;
                }
                return r;
        }
}


/* ---------------------------------------------------------------- check and repair */

#define VHD_CHECK_MESSAGES 16u

/* Writes the footer at `end` (right after the last block), then cuts the
 * file after it: what lay between was referenced by nothing (repair of
 * leaked room, the tail compact frees). The footer goes first, flushed: a
 * crash before the cut leaves a valid footer at the end of the file or,
 * where the old one is gone with the cut, the copy at 0 and the new one. */
static int vhd_cut_at(vhd_state *s, uint64_t end) {
        int r;

        footer_seal(s->footer);
        r = io_pwrite(s->io, s->footer, VHD_FOOTER_SIZE, end);
        if (r < 0)
                return r;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        r = io_truncate(s->io, end + VHD_FOOTER_SIZE);
        if (r < 0)
                return r;
        r = io_flush(s->io);
        if (r < 0)
                return r;
        s->footer_offset = end;
        s->footer_len = VHD_FOOTER_SIZE;
        s->data_end = end;
        if (s->alloc_ready) {
                /* The footer sector is where the next block's bitmap goes
                 * (written whole): from there on, fresh space. */
                hostalloc_truncated(&s->alloc, end);
                hostalloc_rewind(&s->alloc, end);
        }
        return 0;
}

typedef struct vhd_span {
        uint64_t start;
        uint32_t block;
} vhd_span;

static int cmp_span(const void *a, const void *b) {
        const vhd_span *x = a, *y = b;
        return x->start < y->start ? -1 : x->start > y->start;
}

/* Corruptions: a BAT entry into the headers/BAT, past the end of the file,
 * or overlapping another block; a bad footer copy at 0 (dynamic). Leaks:
 * space between the blocks (and the locator data) that no entry uses, and a
 * missing footer at the end (a crash between a block's data and the footer
 * that follows it: the copy at 0 still describes the image). Repair: leaks
 * by writing the footer at the end of the last block and cutting the file
 * there when nothing referenced lies beyond; all by freeing the corrupt
 * entries and rewriting both footers. Gaps between blocks are reported, not
 * reclaimed (that needs compact). */
static int vhd_check(void *state, uint32_t flags, vdisk_check_report *rep, vdisk_progress *p) {
        vhd_state *s = state;
        bool repair_all = flags & VDISK_CHECK_REPAIR_ALL;
        bool repair_leaks = repair_all || (flags & VDISK_CHECK_REPAIR_LEAKS);
        bool dry = flags & VDISK_CHECK_DRY_RUN;
        uint64_t file_size, unit, n_live = 0, n_bad = 0, gaps = 0, frag = 0, end;
        uint8_t head[VHD_FOOTER_SIZE], tail[VHD_FOOTER_SIZE] = {};
        bool head_bad = false, tail_bad = false;
        _cleanup_free_ vhd_span *spans = NULL;
        _cleanup_free_ uint64_t *bad = NULL;
        int r;

        if (repair_leaks && !dry && !s->writable)
                return vdisk_error(-EROFS, "vhd: image is read-only; cannot repair");
        r = vhd_flush(s);
        if (r < 0)
                return r;
        r = io_get_size(s->io, &file_size);
        if (r < 0)
                return r;

        if (s->type == VHD_TYPE_FIXED) {
                rep->image_end_offset = s->footer_offset + s->footer_len;
                return 0;
        }

        /* The two footers. */
        if (file_size >= VHD_FOOTER_SIZE) {
                r = io_pread(s->io, tail, VHD_FOOTER_SIZE, file_size - VHD_FOOTER_SIZE);
                if (r < 0)
                        return r;
        }
        tail_bad = file_size < VHD_FOOTER_SIZE || !footer_looks_valid(tail);
        r = io_pread(s->io, head, VHD_FOOTER_SIZE, 0);
        if (r < 0)
                return r;
        head_bad = !footer_looks_valid(head);
        if (head_bad) {
                check_report_add(rep, "the footer copy at offset 0 is damaged");
                rep->corruptions++;
        }

        /* The BAT. */
        unit = (uint64_t) s->bm_size + s->block_size;
        r = tc_budget_charge(s->budget, (uint64_t) s->n_blocks * (sizeof(vhd_span) + 1));
        if (r < 0)
                return r;
        spans = malloc(MAX(s->n_blocks, 1u) * sizeof(vhd_span));
        bad = bitmap_new(MAX(s->n_blocks, 1u));
        if (!spans || !bad) {
                r = vdisk_error(-ENOMEM, "out of memory");
                goto out;
        }
        for (uint32_t b = 0; b < s->n_blocks; b++) {
                uint32_t e;
                uint64_t start;

                r = bat_get(s, b, &e);
                if (r < 0)
                        goto out;
                if (e == VHD_BAT_FREE)
                        continue;
                start = (uint64_t) e * VHD_SECTOR;
                if (hits_meta(s, start, unit) || !range_within(start, s->bm_size, file_size)) {
                        if (n_bad < VHD_CHECK_MESSAGES)
                                check_report_add(rep, "block %" PRIu32 ": BAT entry %#" PRIx32 " points %s", b, e,
                                                 hits_meta(s, start, unit) ? "into the headers or the BAT" :
                                                 "past the end of the file");
                        bitmap_set(bad, b);
                        n_bad++;
                        continue;
                }
                spans[n_live++] = (vhd_span) { .start = start, .block = b };
        }
        qsort(spans, n_live, sizeof *spans, cmp_span);
        end = s->alloc_floor;
        for (uint64_t i = 0; i < n_live; i++) {
                if (i > 0 && spans[i].start < spans[i - 1].start + unit) {
                        if (n_bad < VHD_CHECK_MESSAGES)
                                check_report_add(rep, "block %" PRIu32 " overlaps block %" PRIu32,
                                                 spans[i].block, spans[i - 1].block);
                        if (!bitmap_get(bad, spans[i].block)) {
                                bitmap_set(bad, spans[i].block);
                                n_bad++;
                        }
                        continue;
                }
                /* Writers pad (Windows aligns blocks to 4 KiB): only room
                 * for a whole block counts as leaked. */
                if (spans[i].start >= end + unit)
                        gaps += spans[i].start - end;
                if (i > 0 && spans[i].block != spans[i - 1].block + 1)
                        frag++;
                end = MAX(end, spans[i].start + unit);
        }
        n_live -= MIN(n_live, n_bad);
        rep->corruptions += n_bad;
        if (gaps > 0) {
                check_report_add(rep, "%" PRIu64 " bytes between blocks are not used by any block", gaps);
                rep->leaks += gaps / unit;
        }
        /* What follows the last block: the footer, nothing else. */
        if (tail_bad || file_size < end + VHD_FOOTER_SIZE || file_size >= end + unit + VHD_FOOTER_SIZE) {
                if (tail_bad)
                        check_report_add(rep, "no valid footer at the end of the file (the copy at 0 is used)");
                else
                        check_report_add(rep, "%" PRIu64 " bytes between the last block and the footer",
                                         file_size > end + VHD_FOOTER_SIZE ? file_size - end - VHD_FOOTER_SIZE : 0);
                rep->leaks++;
                if (repair_leaks && !dry && !head_bad && n_bad == 0) {
                        /* The footer right after the last block, the file cut there. */
                        memcpy(s->footer, head, sizeof s->footer);
                        r = vhd_cut_at(s, end);
                        if (r < 0)
                                goto out;
                        rep->leaks_fixed++;
                } else if (repair_leaks && dry)
                        rep->leaks_fixed++;
        }
        if (repair_all && (n_bad > 0 || head_bad)) {
                if (!dry) {
                        for (uint32_t b = 0; b < s->n_blocks; b++)
                                if (bitmap_get(bad, b)) {
                                        bm_drop(s, b);
                                        r = tc_set(s->bat, b, VHD_BAT_FREE, 0);
                                        if (r < 0)
                                                goto out;
                                }
                        s->meta_dirty = true;   /* both footers and the header, sealed */
                        s->alloc_ready = false; /* rescan before the next allocation */
                        r = vhd_flush(s);
                        if (r < 0)
                                goto out;
                }
                rep->corruptions_fixed += n_bad + head_bad;
        }
        if (repair_leaks && dry)
                check_report_add(rep, "dry run: nothing was written");

        rep->total_clusters = s->n_blocks;
        rep->allocated_clusters = n_live;
        rep->fragmented_clusters = frag;
        rep->image_end_offset = end + VHD_FOOTER_SIZE;
        r = 0;
out:
        tc_budget_uncharge(s->budget, (uint64_t) s->n_blocks * (sizeof(vhd_span) + 1));
        return r;
}


/* ---------------------------------------------------------------- compact */

static int vhd_compact_repoint(void *user, uint64_t key, uint64_t from, uint64_t to) {
        vhd_state *s = user;

        (void) from;
        bm_drop(s, (uint32_t) key);     /* the cached bitmap names the old place */
        return tc_set(s->bat, key, to / VHD_SECTOR, 0);
}

static int vhd_compact_commit(void *user) {
        vhd_state *s = user;

        return tc_table_flush(s->bat);
}

/* Asks `fn` about the sectors a block holds (set bitmap bits; clear ones
 * already show what is below). VHD has no zero marker: a block is dropped
 * only when all it holds equals what shows through without it. Then (not
 * cancellable) the dropped entries are freed and flushed, the blocks
 * highest in the file move into whole-block holes below them (fmt_pack:
 * copy, flush, BAT entries, flush; the old copy stays valid until the entry
 * points at the new one), and the footer goes after the last block, the
 * file cut there (vhd_cut_at). */
static int vhd_compact(void *state, compact_fn fn, void *ctx, vdisk_progress *p) {
        vhd_state *s = state;
        uint64_t bs, unit, end = 0, n_live = 0, n_drop = 0;
        _cleanup_free_ uint8_t *buf = NULL;
        _cleanup_free_ uint64_t *drop = NULL;
        _cleanup_free_ fmt_unit *units = NULL;
        fmt_span fixed[2];
        fmt_scan sc = { .fn = fn, .ctx = ctx };
        int r;

        if (!s->writable)
                return vdisk_error(-EROFS, "vhd: image is read-only");
        if (s->type == VHD_TYPE_FIXED)
                return vdisk_error(-EOPNOTSUPP, "vhd: fixed images cannot be compacted");
        r = vhd_flush(s);
        if (r < 0)
                return r;
        r = vhd_prepare_writes(s);
        if (r < 0)
                return r;
        if (s->n_bad > 0)
                return vdisk_error(-EUCLEAN, "vhd: the BAT has %" PRIu32 " corrupt entries; repair the image "
                                   "before compacting it", s->n_bad);

        bs = s->block_size;
        unit = (uint64_t) s->bm_size + bs;
        sc.buf_size = (size_t) MIN(unit, (uint64_t) 4 << 20);
        buf = buf_alloc(sc.buf_size);
        drop = bitmap_new(MAX(s->n_blocks, 1u));
        units = malloc(MAX(s->n_blocks, 1u) * sizeof(fmt_unit));
        if (!buf || !drop || !units)
                return vdisk_error(-ENOMEM, "out of memory");
        sc.buf = buf;
        progress_set_total(p, s->size);

        for (uint32_t b = 0; b < s->n_blocks; b++) {
                uint64_t voff = (uint64_t) b * bs, len = MIN(bs, s->size - voff), end_sec = DIV_ROUND_UP(len, VHD_SECTOR);
                vhd_bm *m;
                uint32_t e;

                r = progress_check(p);
                if (r < 0)
                        return vdisk_error(r, "vhd: compact cancelled (nothing changed)");
                r = bat_get(s, b, &e);
                if (r < 0)
                        return r;
                if (e != VHD_BAT_FREE) {
                        uint64_t host = (uint64_t) e * VHD_SECTOR;

                        r = bm_get(s, b, e, &m);
                        if (r < 0)
                                return r;
                        fmt_scan_begin(&sc);
                        for (uint64_t sec = 0; sec < end_sec && sc.unalloc;) {
                                uint64_t run = bit_run(m->bits, sec, end_sec);

                                if (bit_get(m->bits, sec)) {
                                        uint64_t off = sec * VHD_SECTOR, stop = MIN((sec + run) * VHD_SECTOR, len);

                                        r = fmt_scan_piece(&sc, s->io, host + s->bm_size + off, voff + off,
                                                           stop - off);
                                        if (r < 0)
                                                return r;
                                }
                                sec += run;
                        }
                        if (sc.unalloc) {
                                bitmap_set(drop, b);
                                n_drop++;
                        } else
                                units[n_live++] = (fmt_unit) { .key = b, .host = host };
                }
                r = progress_add(p, len);
                if (r < 0)
                        return vdisk_error(r, "vhd: compact cancelled (nothing changed)");
        }

        /* Drop. */
        for (uint32_t b = 0; n_drop > 0 && b < s->n_blocks; b++)
                if (bitmap_get(drop, b)) {
                        bm_drop(s, b);
                        r = tc_set(s->bat, b, VHD_BAT_FREE, 0);
                        if (r < 0)
                                return r;
                }
        r = vhd_flush(s);
        if (r < 0)
                return r;

        /* Pack. Below alloc_floor: the headers, the locators' data and a BAT
         * a grow moved; the BAT and the header stay wherever they are. */
        fixed[0] = (fmt_span) { .start = s->bat_offset,
                                .len = ALIGN_UP((uint64_t) s->max_entries * 4, (uint64_t) VHD_SECTOR) };
        fixed[1] = (fmt_span) { .start = s->dyn_offset, .len = VHD_DYN_SIZE };
        fmt_pack pk = {
                .io = s->io,
                .unit = unit,
                .floor = s->alloc_floor,
                .units = units,
                .n_units = n_live,
                .fixed = fixed,
                .n_fixed = 2,
                .repoint = vhd_compact_repoint,
                .commit = vhd_compact_commit,
                .user = s,
        };
        r = fmt_pack_run(&pk, &end);
        if (r < 0)
                return r;

        /* The footer after the last block; the rest goes (also room that
         * no block references any more, before the footer: a shrink frees
         * the blocks past the end without cutting the file). */
        if (end < MAX(s->data_end, s->footer_offset))
                return vhd_cut_at(s, end);
        return 0;
}

/* ---------------------------------------------------------------- table */

/* As vhd_create() lays it out: the size rounded up to a CHS geometry
 * (unless force_size), then a fixed image is the data and its footer; a
 * dynamic one the footer copy, the dynamic header, the BAT (and a diff's two
 * parent locators), then per allocated block its sector bitmap and data,
 * and the footer. Over a parent (a diff) every block is counted. */
static int vhd_measure(const measure_params *p, measure_result *ret) {
        bool fixed = false, force_size = false;
        uint64_t sectors = DIV_ROUND_UP(p->size, VHD_SECTOR), size, n_blocks, head, unit, used = 0;
        uint32_t cyl, heads, spt, bs = VHD_BLOCK_DEFAULT;
        int r;

        r = vhd_parse_options(p->options, &fixed, &force_size);
        if (r < 0)
                return r;
        if (fixed && p->has_backing)
                return vdisk_error(-EOPNOTSUPP, "vhd: a differencing image cannot be fixed");
        if (!force_size && !p->has_backing) {
                if (sectors > VHD_MAX_GEOMETRY)
                        return vdisk_error(-EFBIG, "vpc: size %" PRIu64 " is too large for a CHS geometry "
                                           "(use force_size=on)", p->size);
                chs_for(sectors, &cyl, &heads, &spt);
                for (uint64_t i = 1; (uint64_t) cyl * heads * spt < sectors; i++) {
                        if (sectors + i > VHD_MAX_GEOMETRY)
                                return vdisk_error(-EFBIG, "vpc: size %" PRIu64 " is too large for a CHS "
                                                   "geometry (use force_size=on)", p->size);
                        chs_for(sectors + i, &cyl, &heads, &spt);
                }
                sectors = (uint64_t) cyl * heads * spt;
        }
        if (sectors > VHD_CREATE_MAX / VHD_SECTOR)
                return vdisk_error(-EFBIG, "vpc: size %" PRIu64 " is too large (at most %" PRIu64 " bytes)",
                                   p->size, VHD_CREATE_MAX);
        size = sectors * VHD_SECTOR;
        if (fixed) {
                *ret = (measure_result) { .required = size + VHD_FOOTER_SIZE,
                                          .fully_allocated = size + VHD_FOOTER_SIZE };
                return 0;
        }
        n_blocks = DIV_ROUND_UP(size, bs);
        head = VHD_FOOTER_SIZE + VHD_DYN_SIZE + ALIGN_UP(n_blocks * 4, (uint64_t) VHD_SECTOR) +
               (p->has_backing ? 2 * (uint64_t) VHD_LOC_BYTES : 0);
        unit = ALIGN_UP(DIV_ROUND_UP(bs / VHD_SECTOR, 8), (uint64_t) VHD_SECTOR) + bs;
        if (p->has_backing)
                used = n_blocks;
        else if (p->has_input) {
                r = p->count_units(p->ctx, bs, &used);
                if (r < 0)
                        return r;
        }
        *ret = (measure_result) {
                .required = head + used * unit + VHD_FOOTER_SIZE,
                .fully_allocated = head + n_blocks * unit + VHD_FOOTER_SIZE,
        };
        return 0;
}

static const char *const vhd_extensions[] = { "vhd", NULL };
static const char *const vhd_aliases[] = { "vpc", NULL };
static const vdisk_option_desc vhd_create_options[] = {
        { "size",       VDISK_OPTION_SIZE, "Virtual disk size" },
        { "subformat",  VDISK_OPTION_STRING, "Type of virtual hard disk file. Allowed values are 'dynamic' "
                                             "(default) and 'fixed'", "dynamic" },
        { "force_size", VDISK_OPTION_BOOL, "Keep the exact size (stored with the maximum geometry) "
                                           "instead of rounding it up to a CHS geometry", "off" },
        {}
};

const vdisk_backend backend_vhd = {
        .info = {
                .name = "VHD",
                .qemu_name = "vpc",
                .caps = VDISK_CAP_UUID | VDISK_CAP_CREATE_FIXED | VDISK_CAP_CREATE_DYNAMIC | VDISK_CAP_DIFF |
                        VDISK_CAP_FILE | VDISK_CAP_PREFERRED | VDISK_CAP_RESIZE |
                        VDISK_CAP_CHECK | VDISK_CAP_REPAIR | VDISK_CAP_COMPACT,
                .media = VDISK_MEDIA_HDD,
                .extensions = vhd_extensions,
                .create_options = vhd_create_options,
        },
        .aliases = vhd_aliases,
        .state_size = sizeof(vhd_state),
        .probe = vhd_probe,
        .peek = vhd_peek,
        .open = vhd_open,
        .create = vhd_create,
        .close = vhd_close,
        .get_size = vhd_get_size,
        .get_layout = vhd_get_layout,
        .map = vhd_map,
        .allocate = vhd_allocate,
        .commit = vhd_commit,
        .release = vhd_release,
        .flush = vhd_flush,
        .get_meta = vhd_get_meta,
        .set_meta = vhd_set_meta,
        .get_info = vhd_get_info,
        .get_format_info = vhd_get_format_info,
        .resize = vhd_resize,
        .check = vhd_check,
        .compact = vhd_compact,
        .measure = vhd_measure,
        /* falloc/full: qemu's file layer preallocates the empty file (no effect) */
        .prealloc_create = PREALLOC_BIT(PREALLOC_FALLOC) | PREALLOC_BIT(PREALLOC_FULL),
};
