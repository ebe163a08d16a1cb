/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The progress path of an Operation: the main thread samples the worker's
 * vdisk_progress (atomic counters) from a timer and feeds the samples here.
 * This decides what is published: monotonic overall progress, bytes, rate
 * and expected end time, coalesced to at most 5 updates per second. Pure
 * logic, no bus, no threads: unit-tested on its own.
 */
#pragma once

#include <stdint.h>

#define OP_PROGRESS_MIN_INTERVAL_USEC 200000u   /* ≤ 5 updates per second */
#define OP_PROGRESS_SAMPLES 32u
/* The rate is measured over the samples of this last stretch of time (over the
 * last two samples when no earlier one falls inside it). */
#define OP_PROGRESS_RATE_WINDOW_USEC 5000000u
/* While running, the fraction stays below 1.0: 1.0 means finished. */
#define OP_PROGRESS_RUNNING_MAX 0.999

typedef struct op_progress {
        /* what is published (the Operation's properties) */
        double fraction;           /* 0..1, never goes down */
        uint64_t bytes_done;       /* never goes down */
        uint64_t bytes_total;      /* 0 = unknown */
        uint64_t rate;             /* bytes/s, 0 = unknown */
        uint64_t expected_end;     /* µs (same clock as `now`), 0 = unknown */
        /* internal */
        uint64_t last_publish;     /* µs; 0 = never published */
        uint64_t start;            /* µs */
        unsigned n_samples, head;
        struct { uint64_t t, done; } samples[OP_PROGRESS_SAMPLES];
} op_progress;

/*
 * Details of the rules below (how the fields move):
 * - bytes_total is the sample's total; a sample with total 0 keeps the total
 *   known so far (a known total never becomes unknown again).
 * - bytes_done is the highest done seen, capped at bytes_total when that is
 *   known, and never goes down (not even when the total shrinks below it).
 * - fraction is bytes_done / bytes_total, at most OP_PROGRESS_RUNNING_MAX until
 *   op_progress_finish(success), and never goes down; it stays put while the
 *   total is unknown.
 * - rate is the growth of the highest done seen over the samples of the last
 *   OP_PROGRESS_RATE_WINDOW_USEC; it needs two samples at different times.
 * - expected_end is now + (bytes_total - bytes_done) / rate, 0 when either the
 *   rate or the total is unknown.
 * - The fields always hold the last published values: a sample that returns 0
 *   leaves them untouched (its counters still feed the rate and the highest
 *   done, so nothing is lost for the next publication).
 * - `now` should not go backwards; a sample older than the previous one is
 *   taken as happening at the previous one's time.
 * - No sample after op_progress_finish().
 */
void op_progress_init(op_progress *p, uint64_t now);
/* Feeds a sample of the worker's counters (done may exceed total, total may
 * change or be 0). Returns 1 when the published values changed and at least
 * OP_PROGRESS_MIN_INTERVAL_USEC passed since the last publication (the caller
 * then emits PropertiesChanged), else 0 (nothing to emit yet). */
int op_progress_sample(op_progress *p, uint64_t done, uint64_t total, uint64_t now);
/* The final values: success sets fraction 1.0 and bytes_done to the total (if
 * known), failure keeps the last values; rate and expected_end become 0.
 * (Precisely: on success bytes_total becomes total, or the last known total
 * when total is 0, and bytes_done becomes that total, or stays higher in the
 * odd case that it already was; with no total known it becomes the highest done
 * seen. On failure fraction, bytes_done and bytes_total are the last published
 * ones and done/total are ignored.)
 * Always returns 1 (the caller emits the final values, without the rate limit). */
int op_progress_finish(op_progress *p, int success, uint64_t done, uint64_t total, uint64_t now);
