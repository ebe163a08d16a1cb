/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>

#include "fmt/hostalloc.h"
#include "util/util.h"

static int align_up(uint64_t v, uint32_t align, uint64_t *ret) {
        uint64_t t;

        if (ADD_OVERFLOW(v, (uint64_t) align - 1, &t))
                return -EFBIG;
        *ret = t & ~((uint64_t) align - 1);
        return 0;
}

void hostalloc_init(hostalloc *h, uint64_t next, uint64_t file_size, uint32_t align) {
        assert(h);
        assert(IS_POWER_OF_2(align));

        *h = (hostalloc) {
                .zero_from = file_size,
                .align = align,
        };
        if (align_up(next, align, &h->next) < 0)
                h->next = UINT64_MAX & ~((uint64_t) align - 1);
}

int hostalloc_alloc(hostalloc *h, uint64_t len, uint64_t limit, uint64_t *ret_offset, int *ret_fresh) {
        uint64_t end, next;

        assert(h);
        assert(ret_offset);

        if (ADD_OVERFLOW(h->next, len, &end) || end > limit)
                return vdisk_error(-EFBIG, "no host space left: %" PRIu64 " bytes at %" PRIu64
                                   " would pass the format's limit", len, h->next);
        if (align_up(end, h->align, &next) < 0)
                return vdisk_error(-EFBIG, "no host space left at %" PRIu64, end);

        *ret_offset = h->next;
        if (ret_fresh)
                *ret_fresh = h->next >= h->zero_from;
        if (end > h->zero_from)
                h->zero_from = next;
        h->next = next;
        return 0;
}

void hostalloc_rewind(hostalloc *h, uint64_t next) {
        assert(h);

        if (align_up(next, h->align, &h->next) < 0)
                h->next = UINT64_MAX & ~((uint64_t) h->align - 1);
}

void hostalloc_truncated(hostalloc *h, uint64_t size) {
        assert(h);

        h->zero_from = MIN(h->zero_from, size);
}

void hostalloc_note_used(hostalloc *h, uint64_t offset, uint64_t len) {
        uint64_t end;

        assert(h);

        if (ADD_OVERFLOW(offset, len, &end))
                end = UINT64_MAX;
        if (end > h->zero_from)
                h->zero_from = end;
}

int hostalloc_is_fresh(const hostalloc *h, uint64_t offset) {
        assert(h);

        return offset >= h->zero_from;
}
