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

void op_progress_init(op_progress *p, uint64_t now);
/* Feeds a sample of the worker's counters (done may exceed total, total may
 * change or be 0). Returns 1 when the published values changed and at least
 * OP_PROGRESS_MIN_INTERVAL_USEC passed since the last publication (the caller
 * then emits PropertiesChanged), else 0 (nothing to emit yet). */
int op_progress_sample(op_progress *p, uint64_t done, uint64_t total, uint64_t now);
/* The final values: success sets fraction 1.0 and bytes_done to the total (if
 * known), failure keeps the last values; rate and expected_end become 0.
 * Always returns 1 (the caller emits the final values, without the rate limit). */
int op_progress_finish(op_progress *p, int success, uint64_t done, uint64_t total, uint64_t now);
