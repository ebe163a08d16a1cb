/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Header-only helpers shared by the library, the tools and the daemon:
 * cleanup attributes, TAKE_PTR, overflow-checked arithmetic, small macros. */
#pragma once

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _likely_(x) __builtin_expect(!!(x), 1)
#define _unlikely_(x) __builtin_expect(!!(x), 0)

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define DIV_ROUND_UP(x, y) (((x) + (y) - 1) / (y))
#define ALIGN_DOWN(x, a) ((x) / (a) * (a))
#define ALIGN_UP(x, a) (DIV_ROUND_UP((x), (a)) * (a))
#define IS_POWER_OF_2(x) ((x) != 0 && ((x) & ((x) - 1)) == 0)

/* Hands a pointer over, leaving NULL behind (for cleanup variables). */
#define TAKE_PTR(p)                              \
        ({                                       \
                __typeof__(p) _p_ = (p);         \
                (p) = NULL;                      \
                _p_;                             \
        })
#define TAKE_FD(fd)                              \
        ({                                       \
                int _fd_ = (fd);                 \
                (fd) = -1;                       \
                _fd_;                            \
        })

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}
#define _cleanup_close_ _cleanup_(closep)

/* Overflow-checked arithmetic: true on overflow. */
#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow((a), (b), (r))

static inline bool range_within(uint64_t off, uint64_t len, uint64_t limit) {
        uint64_t end;
        return !ADD_OVERFLOW(off, len, &end) && end <= limit;
}

static inline bool mem_is_zero(const void *p, size_t n) {
        const uint8_t *b = p;
        /* Check the first 16 bytes byte-wise, then compare the buffer against
         * itself shifted by 16: equal means every byte equals the first ones. */
        if (n <= 16) {
                for (size_t i = 0; i < n; i++)
                        if (b[i])
                                return false;
                return true;
        }
        for (size_t i = 0; i < 16; i++)
                if (b[i])
                        return false;
        return memcmp(b, b + 16, n - 16) == 0;
}

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}
