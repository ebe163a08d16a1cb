/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests of lib/fmt/hostalloc: append-at-end allocation, alignment,
 * freshness of appended host space, rewinds, truncation and limits. */
#include "fmt/hostalloc.h"
#include "tests.h"
#include "util/util.h"

static void test_hostalloc(void) {
        hostalloc h;
        uint64_t off;
        int fresh;

        /* next rounds up; the file ends at 10000. */
        hostalloc_init(&h, 9000, 10000, 512);
        ASSERT(hostalloc_next(&h) == 9216);

        /* Straddles the old end: not fresh; the next one is. */
        ASSERT_OK(hostalloc_alloc(&h, 1000, UINT64_MAX, &off, &fresh));
        ASSERT(off == 9216 && !fresh && hostalloc_next(&h) == 10240);
        ASSERT_OK(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh));
        ASSERT(off == 10240 && fresh);
        ASSERT_OK(hostalloc_alloc(&h, 512, UINT64_MAX, &off, NULL));
        ASSERT(off == 14336);

        /* Rewinding hands out used space again: never fresh. */
        hostalloc_rewind(&h, 10240);
        ASSERT_OK(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh));
        ASSERT(off == 10240 && !fresh);

        /* After truncating to 10240, space from there is fresh again. */
        hostalloc_truncated(&h, 10240);
        hostalloc_rewind(&h, 10240);
        ASSERT(hostalloc_is_fresh(&h, 10240));
        ASSERT_OK(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh));
        ASSERT(off == 10240 && fresh);

        /* Space written by other means stops being fresh. */
        hostalloc_note_used(&h, 20000, 1000);
        ASSERT(!hostalloc_is_fresh(&h, 20480) && hostalloc_is_fresh(&h, 21000));
        ASSERT_OK(hostalloc_alloc(&h, 512, UINT64_MAX, &off, &fresh));
        ASSERT(off == 14336 && !fresh);

        /* A limit (a format's 32-bit offsets, say) is -EFBIG, and so is overflow. */
        ASSERT_ERR(hostalloc_alloc(&h, 1 << 20, 15000, &off, &fresh), -EFBIG);
        ASSERT(hostalloc_next(&h) == 14848);
        hostalloc_rewind(&h, UINT64_MAX - 1000);
        ASSERT_ERR(hostalloc_alloc(&h, 4096, UINT64_MAX, &off, &fresh), -EFBIG);
}

int main(void) {
        test_hostalloc();
        printf("ok\n");
        return 0;
}
