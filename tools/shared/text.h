/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Text helpers shared by vdisk-img and vdiskctl (no libvdisk, no sd-bus). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A size as qemu-img takes it: decimal (with an optional fraction when a
 * suffix follows) or 0x hex, optional suffix b/k/M/G/T/P/E (powers of 1024,
 * any case). 0, -EINVAL (malformed) or -ERANGE (above INT64_MAX). */
int parse_size(const char *s, uint64_t *ret);
/* A resize argument as qemu-img resize takes it: SIZE, +SIZE or -SIZE. */
typedef struct SizeChange {
        uint64_t value;
        int sign;          /* 0 absolute, +1 grow by, -1 shrink by */
} SizeChange;
/* 0, or parse_size()'s error. */
int parse_size_change(const char *s, SizeChange *ret);
/* The new size for a current size `cur`: -EFBIG above INT64_MAX, -EINVAL for 0
 * (shrinking by more than the size gives 0 too). */
int size_change_apply(const SizeChange *c, uint64_t cur, uint64_t *ret);
/* "1.5 GiB": three significant digits, as qemu-img info prints sizes. */
void format_size(uint64_t v, char buf[static 32]);
/* Length of the valid UTF-8 sequence at s (0 when invalid, also at the
 * terminating NUL of a truncated sequence), its code point in *ret. */
size_t utf8_next(const unsigned char *s, uint32_t *ret);
/* `name` as the image `child` names it: relative to child's directory unless
 * absolute. */
int path_relative_to(const char *child, const char *name, char **ret);

/* What compare found (libvdisk's vdisk_compare_outcome, vdiskd's Result
 * "difference"). */
typedef enum CompareVerdict {
        VERDICT_EQUAL,
        VERDICT_CONTENT,
        VERDICT_SIZE,           /* strict: the sizes differ */
        VERDICT_BLOCK_STATUS,   /* strict: the allocation differs at offset */
} CompareVerdict;
/* Prints qemu-img compare's verdict on stdout (nothing when quiet): the
 * size warning when only the common part matched, then the verdict line.
 * Returns the exit code: 0 equal, 1 different. */
int compare_print_verdict(CompareVerdict v, uint64_t offset, uint64_t size_a, uint64_t size_b, bool quiet);

/* Equal strings, or both NULL. */
static inline bool streq_ptr(const char *a, const char *b) {
        return a && b ? strcmp(a, b) == 0 : a == b;
}

/* A decimal number up to UINT32_MAX, digits only: 0 or -EINVAL. */
int parse_uint(const char *s, unsigned *ret);
/* The directory part of path ("." when none). */
int path_dirname(const char *path, char **ret);
