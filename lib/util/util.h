/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* lib/util: error detail, progress with cancel, endian helpers, CRC32,
 * UUID byte orders, bitmaps, extent lists. Used by every other layer. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"
#include "vdisk/vdisk.h"

/* ---- error detail (thread-local) */

/* Records the message and returns r (a negative errno), so callers can write
 * `return vdisk_error(-EUCLEAN, "vdi: ...")`. */
int vdisk_error(int r, const char *fmt, ...) _printf_(2, 3);
/* Prefixes the current detail with "name: " (used once at the API edge). */
int vdisk_error_prefix(int r, const char *name);

/* ---- buffers */

/* Data buffers for bulk I/O: page aligned, so that writes from them can go
 * direct (lib/io/io-fd.c). Free with free(). */
void *buf_alloc(size_t size);

/* ---- progress */

struct vdisk_progress {
        _Atomic uint64_t done;
        _Atomic uint64_t total;
        _Atomic int cancelled;
        vdisk_progress_fn fn;
        void *user;
        uint64_t last_report;
};

/* Work helpers for operations; p may be NULL. */
void progress_set_total(vdisk_progress *p, uint64_t total);
/* Adds `n` bytes of work done and calls the callback when due.
 * Returns -ECANCELED when cancel was requested. */
int progress_add(vdisk_progress *p, uint64_t n);
int progress_check(vdisk_progress *p);
/* Marks all work done (final report). */
void progress_finish(vdisk_progress *p);

/* ---- endian */

static inline uint16_t get_le16(const void *p) {
        const uint8_t *b = p;
        return (uint16_t) (b[0] | b[1] << 8);
}
static inline uint32_t get_le32(const void *p) {
        const uint8_t *b = p;
        return (uint32_t) b[0] | (uint32_t) b[1] << 8 | (uint32_t) b[2] << 16 | (uint32_t) b[3] << 24;
}
static inline uint64_t get_le64(const void *p) {
        return (uint64_t) get_le32(p) | (uint64_t) get_le32((const uint8_t *) p + 4) << 32;
}
static inline uint16_t get_be16(const void *p) {
        const uint8_t *b = p;
        return (uint16_t) (b[0] << 8 | b[1]);
}
static inline uint32_t get_be32(const void *p) {
        const uint8_t *b = p;
        return (uint32_t) b[0] << 24 | (uint32_t) b[1] << 16 | (uint32_t) b[2] << 8 | (uint32_t) b[3];
}
static inline uint64_t get_be64(const void *p) {
        return (uint64_t) get_be32(p) << 32 | get_be32((const uint8_t *) p + 4);
}
static inline void put_le16(void *p, uint16_t v) {
        uint8_t *b = p;
        b[0] = (uint8_t) v;
        b[1] = (uint8_t) (v >> 8);
}
static inline void put_le32(void *p, uint32_t v) {
        uint8_t *b = p;
        b[0] = (uint8_t) v;
        b[1] = (uint8_t) (v >> 8);
        b[2] = (uint8_t) (v >> 16);
        b[3] = (uint8_t) (v >> 24);
}
static inline void put_le64(void *p, uint64_t v) {
        put_le32(p, (uint32_t) v);
        put_le32((uint8_t *) p + 4, (uint32_t) (v >> 32));
}
static inline void put_be16(void *p, uint16_t v) {
        uint8_t *b = p;
        b[0] = (uint8_t) (v >> 8);
        b[1] = (uint8_t) v;
}
static inline void put_be32(void *p, uint32_t v) {
        uint8_t *b = p;
        b[0] = (uint8_t) (v >> 24);
        b[1] = (uint8_t) (v >> 16);
        b[2] = (uint8_t) (v >> 8);
        b[3] = (uint8_t) v;
}
static inline void put_be64(void *p, uint64_t v) {
        put_be32(p, (uint32_t) (v >> 32));
        put_be32((uint8_t *) p + 4, (uint32_t) v);
}

/* ---- checksums (zlib) */

uint32_t crc32_update(uint32_t crc, const void *buf, size_t len);

/* ---- UUIDs
 * "GUID layout" (VDI, VHDX, VBox RTUUID): the first three fields little-endian.
 * "RFC layout" (VHD footers as Windows writes them, qcow2): all big-endian.
 * In memory and in the API we keep the bytes exactly as the format stores them;
 * these convert between the two when a format needs it. */
void uuid_swap_guid_rfc(uint8_t u[16]);

/* ---- bitmaps */

static inline bool bitmap_get(const uint64_t *b, uint64_t i) {
        return (b[i / 64] >> (i % 64)) & 1;
}
static inline void bitmap_set(uint64_t *b, uint64_t i) {
        b[i / 64] |= (uint64_t) 1 << (i % 64);
}
static inline void bitmap_clear(uint64_t *b, uint64_t i) {
        b[i / 64] &= ~((uint64_t) 1 << (i % 64));
}
/* Allocates a zeroed bitmap of n bits (NULL on overflow or ENOMEM). */
uint64_t *bitmap_new(uint64_t n);

/* ---- extent lists: sorted, non-overlapping [offset, offset+length) ranges */

typedef struct extent_list {
        struct { uint64_t offset, length; } *v;
        size_t n, allocated;
} extent_list;

/* Appends a range at or after the last one, merging with it when adjacent. */
int extent_list_append(extent_list *l, uint64_t offset, uint64_t length);
void extent_list_clear(extent_list *l);

/* ---- strings */

/* A growing NULL-terminated string list. */
typedef struct strv_builder {
        char **v;               /* NULL until the first push */
        size_t n;
} strv_builder;
int strv_push(strv_builder *b, const char *s);
/* Pushes `key` and the formatted value. */
int strv_push_pair(strv_builder *b, const char *key, const char *fmt, ...) _printf_(3, 4);
/* Hands the list over (an empty list, never NULL, when nothing was pushed). */
int strv_builder_steal(strv_builder *b, char ***ret);
void strv_builder_done(strv_builder *b);

/* Adds a formatted message to a check report (backends' check()). */
int check_report_add(vdisk_check_report *r, const char *fmt, ...) _printf_(2, 3);

char *strdup_printf(const char *fmt, ...) _printf_(1, 2);
