/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The report of `check` in qemu-img's words and JSON, for vdisk-img and vdiskctl. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "front.h"

/* qemu-img check's exit codes (repair's too). */
#define CHECK_EXIT_ERROR 1            /* a bad command line, or the check could not finish */
#define CHECK_EXIT_CORRUPT 2
#define CHECK_EXIT_LEAKS 3
#define CHECK_EXIT_UNSUPPORTED 63

typedef struct CheckCounts {
        uint64_t corruptions, leaks, check_errors, corruptions_fixed, leaks_fixed;
        uint64_t total_clusters, allocated_clusters, fragmented_clusters, compressed_clusters, image_end_offset;
} CheckCounts;

/* check's report of the image `filename` (`qemu_format`: qemu's name of its
 * format) unless quiet: human, or qemu-img's ImageCheck object (keys in its
 * order, counters that are 0 left out). `fixed` (may be NULL): the pass that
 * repaired, when rep is of the check run again after a repair. Returns the
 * exit code (check_exit_code()). */
int check_report(const CheckCounts *rep, const CheckCounts *fixed, OutputFormat output, bool quiet,
                 const char *filename, const char *qemu_format);
/* The exit code a report gives: errors, corruptions, leaks, else 0. */
int check_exit_code(const CheckCounts *rep);
/* repair's summary: `pass` the repair (or dry run) itself, `now` the image
 * after it (the check run again after a repair; `pass` otherwise). */
void repair_print_summary(const CheckCounts *pass, const CheckCounts *now, bool dry_run);
