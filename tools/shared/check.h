/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The report of `check` in qemu-img's words and JSON, for vdisk-img and vdiskctl. */
#pragma once

#include <stdint.h>

typedef struct CheckCounts {
        uint64_t corruptions, leaks, check_errors, corruptions_fixed, leaks_fixed;
        uint64_t total_clusters, allocated_clusters, fragmented_clusters, image_end_offset;
} CheckCounts;

/* `fixed` (may be NULL): the pass that repaired, when the report is of the
 * check run again after a repair. */
void check_print_human(const CheckCounts *rep, const CheckCounts *fixed);
/* qemu-img's ImageCheck object: keys in its order, counters that are 0 left out. */
void check_print_json(const CheckCounts *rep, const CheckCounts *fixed, const char *filename,
                      const char *format);
