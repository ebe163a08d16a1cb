/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * lib/fmt/units: pieces the cluster-table backends (QCOW v1, QCOW2, QED)
 * share around their map and decode entry points.
 *
 * units_map_join: a backend that knows how one unit (cluster or subcluster)
 * reads, through `unit`, answers map() with the first unit joined to the
 * units after it of the same kind (data: contiguous in the same file), up
 * to `len` bytes and the disk's end. An encoded unit stands alone.
 *
 * units_inflate: one compressed cluster of raw deflate (window 2^12, no
 * header) into out[0, m->unit_length); what the stream gives past the unit
 * goes to a scratch buffer, up to one byte more than `cluster`, so the
 * caller sees a stream that overruns its cluster (*ret_total > cluster), one
 * that ends (*ret_end) and one that is damaged (*ret_bad: inflate failed).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"

typedef int (*units_status_fn)(void *state, uint64_t voff, map_result *ret);

int units_map_join(void *state, units_status_fn unit, uint64_t offset, uint64_t len, uint64_t size,
                   map_result *ret);

int units_inflate(uint64_t cluster, const map_result *m, const void *in, void *out, uint64_t *ret_total,
                  bool *ret_end, bool *ret_bad);
