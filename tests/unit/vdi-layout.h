/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The tests' own reading of the VDI layout (FORMATS.md §3.3), independent of
 * the library: header field offsets, a header parser and a block-map analysis.
 * The malformed suite edits fields with it; the crash suite uses it to tell the
 * documented "allocated-block count ahead of the map" state from corruption.
 */
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VDI_SIGNATURE 0xBEDA107Fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_ENTRY_FREE 0xFFFFFFFFu
#define VDI_ENTRY_ZERO 0xFFFFFFFEu

/* Absolute file offsets of the header fields (pre-header + header v1.1+). */
enum {
        VDI_OFF_FILE_INFO = 0x000,
        VDI_OFF_SIGNATURE = 0x040,
        VDI_OFF_VERSION = 0x044,
        VDI_OFF_HEADER_SIZE = 0x048,
        VDI_OFF_TYPE = 0x04C,
        VDI_OFF_FLAGS = 0x050,
        VDI_OFF_COMMENT = 0x054,
        VDI_OFF_BLOCKS_OFFSET = 0x154,
        VDI_OFF_DATA_OFFSET = 0x158,
        VDI_OFF_CYLINDERS = 0x15C,
        VDI_OFF_HEADS = 0x160,
        VDI_OFF_SECTORS = 0x164,
        VDI_OFF_SECTOR_SIZE = 0x168,
        VDI_OFF_DUMMY = 0x16C,
        VDI_OFF_DISK_SIZE = 0x170,
        VDI_OFF_BLOCK_SIZE = 0x178,
        VDI_OFF_BLOCK_EXTRA = 0x17C,
        VDI_OFF_BLOCKS = 0x180,
        VDI_OFF_BLOCKS_ALLOCATED = 0x184,
        VDI_OFF_UUID_CREATE = 0x188,
        VDI_OFF_UUID_MODIFY = 0x198,
        VDI_OFF_UUID_LINKAGE = 0x1A8,
        VDI_OFF_UUID_PARENT_MODIFY = 0x1B8,
        VDI_OFF_LCHS = 0x1C8,
        VDI_OFF_END_V1 = 0x1C8,     /* 0x48 + 384 */
        VDI_OFF_END_V1PLUS = 0x1D8, /* 0x48 + 400 */
};

enum { VDI_TYPE_NORMAL = 1, VDI_TYPE_FIXED = 2, VDI_TYPE_UNDO = 3, VDI_TYPE_DIFF = 4 };

static inline uint32_t vdi_get32(const uint8_t *p, size_t off) {
        return (uint32_t) p[off] | (uint32_t) p[off + 1] << 8 | (uint32_t) p[off + 2] << 16 |
               (uint32_t) p[off + 3] << 24;
}
static inline uint64_t vdi_get64(const uint8_t *p, size_t off) {
        return (uint64_t) vdi_get32(p, off) | (uint64_t) vdi_get32(p, off + 4) << 32;
}
static inline void vdi_put32(uint8_t *p, size_t off, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[off + i] = (uint8_t) (v >> (8 * i));
}
static inline void vdi_put64(uint8_t *p, size_t off, uint64_t v) {
        vdi_put32(p, off, (uint32_t) v);
        vdi_put32(p, off + 4, (uint32_t) (v >> 32));
}

typedef struct vdi_header {
        uint32_t signature, version, header_size, type, flags;
        uint32_t off_blocks, off_data;
        uint32_t sector_size;
        uint64_t disk_size;
        uint32_t block_size, block_extra, blocks, blocks_allocated;
        const uint8_t *map;   /* the block map when the file holds all of it, else NULL */
} vdi_header;

/* Reads the header fields (no validation beyond "the bytes are there").
 * Returns 0, or -1 when the file is too short to hold a v1 header. */
static inline int vdi_parse(const uint8_t *p, size_t len, vdi_header *h) {
        memset(h, 0, sizeof *h);
        if (len < VDI_OFF_END_V1)
                return -1;
        h->signature = vdi_get32(p, VDI_OFF_SIGNATURE);
        h->version = vdi_get32(p, VDI_OFF_VERSION);
        h->header_size = vdi_get32(p, VDI_OFF_HEADER_SIZE);
        h->type = vdi_get32(p, VDI_OFF_TYPE);
        h->flags = vdi_get32(p, VDI_OFF_FLAGS);
        h->off_blocks = vdi_get32(p, VDI_OFF_BLOCKS_OFFSET);
        h->off_data = vdi_get32(p, VDI_OFF_DATA_OFFSET);
        h->sector_size = vdi_get32(p, VDI_OFF_SECTOR_SIZE);
        h->disk_size = vdi_get64(p, VDI_OFF_DISK_SIZE);
        h->block_size = vdi_get32(p, VDI_OFF_BLOCK_SIZE);
        h->block_extra = vdi_get32(p, VDI_OFF_BLOCK_EXTRA);
        h->blocks = vdi_get32(p, VDI_OFF_BLOCKS);
        h->blocks_allocated = vdi_get32(p, VDI_OFF_BLOCKS_ALLOCATED);
        if ((uint64_t) h->off_blocks + (uint64_t) h->blocks * 4 <= len)
                h->map = p + h->off_blocks;
        return 0;
}

static inline uint32_t vdi_map_entry(const vdi_header *h, uint32_t block) {
        return vdi_get32(h->map, (size_t) block * 4);
}

/* File offset of the data of slot `index`. */
static inline uint64_t vdi_slot_offset(const vdi_header *h, uint32_t index) {
        return (uint64_t) h->off_data + (uint64_t) index * ((uint64_t) h->block_size + h->block_extra) +
               h->block_extra;
}

typedef struct vdi_map_stats {
        uint32_t referenced;     /* entries holding a slot index */
        uint32_t out_of_range;   /* index >= blocks_allocated */
        uint32_t duplicates;     /* entries naming a slot another entry names */
        uint32_t past_eof;       /* entries whose slot is not wholly in the file */
} vdi_map_stats;

/* Analyses the block map (h->map must be set). */
static inline void vdi_map_analyse(const vdi_header *h, size_t file_len, vdi_map_stats *s) {
        uint8_t *seen = calloc((size_t) h->blocks + 1, 1);

        memset(s, 0, sizeof *s);
        for (uint32_t b = 0; b < h->blocks; b++) {
                uint32_t e = vdi_map_entry(h, b);

                if (e == VDI_ENTRY_FREE || e == VDI_ENTRY_ZERO)
                        continue;
                s->referenced++;
                if (e >= h->blocks_allocated) {
                        s->out_of_range++;
                        continue;
                }
                if (seen && e < h->blocks) {
                        if (seen[e])
                                s->duplicates++;
                        seen[e] = 1;
                }
                if (vdi_slot_offset(h, e) + h->block_size > file_len)
                        s->past_eof++;
        }
        free(seen);
}

/* The state a crash may leave by design (the library writes the allocated
 * count before the map entries): the count is ahead of the map, and nothing
 * else is wrong. (A slot reaching past the end of the file is not counted as
 * wrong: space appended at the end reads as zeros, and the content oracle
 * catches any data that should be there and is not.) */
static inline int vdi_count_ahead_only(const uint8_t *p, size_t len) {
        vdi_header h;
        vdi_map_stats s;

        if (vdi_parse(p, len, &h) < 0 || !h.map)
                return 0;
        vdi_map_analyse(&h, len, &s);
        return s.out_of_range == 0 && s.duplicates == 0 && h.blocks_allocated > s.referenced;
}
