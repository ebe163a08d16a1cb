/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/hostalloc: append-at-end host space allocation.
 *
 * Formats that place new clusters/blocks at the end of the file (VDI, VHD,
 * Parallels, qcow) track two offsets:
 *
 *   next       where the next allocation goes (kept aligned to `align`);
 *   zero_from  from here on, the file reads as zeros and no space has been
 *              handed out since the helper was set up: it starts as the file
 *              size and only moves up past what is handed out, or down when
 *              the caller truncates the file.
 *
 * Space handed out at or after zero_from is "fresh": it reads as zeros, so the
 * caller may skip writing zeros into the parts it does not fill. Space below
 * zero_from (after a rewind, for instance) may hold old data and is never
 * fresh. The helper does no I/O.
 */
#pragma once

#include <stdint.h>

typedef struct hostalloc {
        uint64_t next;
        uint64_t zero_from;
        uint32_t align;          /* power of two, >= 1 */
} hostalloc;

/* `next` is rounded up to `align`; `file_size` is the current end of the file. */
void hostalloc_init(hostalloc *h, uint64_t next, uint64_t file_size, uint32_t align);

/* Hands out [*ret_offset, *ret_offset + len) at `next`; *ret_fresh (may be NULL)
 * tells whether it reads as zeros. -EFBIG when the end would pass `limit`
 * (UINT64_MAX for none). */
int hostalloc_alloc(hostalloc *h, uint64_t len, uint64_t limit, uint64_t *ret_offset, int *ret_fresh);

/* Moves `next` (up or down; rounded up to align). Space below zero_from stays
 * not fresh. */
void hostalloc_rewind(hostalloc *h, uint64_t next);

/* The caller truncated the file to `size`: everything from there reads zeros. */
void hostalloc_truncated(hostalloc *h, uint64_t size);

/* Space [offset, offset+len) was written outside of hostalloc_alloc() (a
 * block moved into a hole, for instance): it is no longer fresh. */
void hostalloc_note_used(hostalloc *h, uint64_t offset, uint64_t len);

/* Whether space starting at `offset` would be fresh (reads zeros, never handed out). */
int hostalloc_is_fresh(const hostalloc *h, uint64_t offset);

static inline uint64_t hostalloc_next(const hostalloc *h) {
        return h->next;
}
