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
 *
 * units_peek_backing_name, units_read_backing_name: a backing file name of
 * `len` bytes at `off` (QCOW v1, QED), from the head the library peeks at
 * (borrowed; -ENODATA when it is not NUL-terminated within the head) or read
 * from the file (a string to free). Either way a name holding a NUL byte or
 * naming a qemu protocol is refused; `fmt` ("qcow") begins the messages.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "io/io.h"

typedef int (*units_status_fn)(void *state, uint64_t voff, map_result *ret);

int units_map_join(void *state, units_status_fn unit, uint64_t offset, uint64_t len, uint64_t size,
                   map_result *ret);

int units_inflate(uint64_t cluster, const map_result *m, const void *in, void *out, uint64_t *ret_total,
                  bool *ret_end, bool *ret_bad);

int units_peek_backing_name(const char *fmt, const uint8_t *head, size_t head_len, uint64_t off, uint32_t len,
                            const char **ret);

int units_read_backing_name(const char *fmt, vdisk_io *io, uint64_t off, uint32_t len, char **ret);

/* Refuses a backing file name that names a qemu protocol or is a json: name. */
int units_check_backing_name(const char *fmt, const char *name);

/* Whether the bytes look incompressible (random, compressed or encrypted
 * data): byte histograms of four 4 KiB windows spread over the buffer, so a
 * compressor need not spend its slowest path finding out. Only a hint:
 * false below 4 KiB. */
bool units_incompressible(const void *buf, size_t len);

/* units_compress: one unit (cluster) compressed the way qemu's readers
 * take it: raw deflate with a 4 KiB window (QCOW v1, QCOW2 zlib: qemu
 * inflates with windowBits -12) or one zstd frame (QCOW2 zstd). 0 and
 * *ret_len when the result fits in `cap` bytes, 1 when it does not. Each
 * calling thread keeps its own compressors (freed when it ends), so copy's
 * encode workers call it at once without locks. */
typedef enum units_codec {
        UNITS_DEFLATE12,
        UNITS_ZSTD,
} units_codec;
int units_compress(units_codec codec, const void *in, size_t len, void *out, size_t cap, size_t *ret_len);
