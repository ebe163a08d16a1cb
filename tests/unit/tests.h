/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The tiny shared harness of the C test programs: assertion macros that print
 * file:line, the failing expression and vdisk_last_error() and exit 1; exit 77
 * means "skipped" (meson's convention). Plus a xorshift PRNG, a 64-bit hash and
 * a few helpers over the public API. Tests use nothing but <vdisk/vdisk.h>.
 */
#pragma once

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "vdisk/vdisk.h"

#define EXIT_TEST_SKIP 77

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

/* A line printed with every failure: which seed, operation, image ... */
static char test_context[512] __attribute__((unused));

static inline void __attribute__((format(printf, 1, 2))) test_set_context(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(test_context, sizeof test_context, fmt, ap);
        va_end(ap);
}

static inline void __attribute__((noreturn, format(printf, 3, 4)))
test_fail(const char *file, int line, const char *fmt, ...) {
        va_list ap;

        fflush(stdout);
        fprintf(stderr, "%s:%d: ", file, line);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\n  last error: \"%s\"\n", vdisk_last_error());
        if (test_context[0])
                fprintf(stderr, "  context: %s\n", test_context);
        exit(1);
}

#define FAIL(...) test_fail(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT(expr)                                                            \
        do {                                                                    \
                if (!(expr))                                                    \
                        FAIL("assertion failed: %s", #expr);                    \
        } while (0)

/* Evaluates to the (non-negative) result. */
#define ASSERT_OK(expr)                                                         \
        ({                                                                      \
                int _r_ = (expr);                                               \
                if (_r_ < 0)                                                    \
                        FAIL("%s failed: %d (%s)", #expr, _r_, strerror(-_r_)); \
                _r_;                                                            \
        })

/* The call must fail with exactly `code` (a negative errno) and leave a message. */
#define ASSERT_ERR(expr, code)                                                  \
        do {                                                                    \
                int _r_ = (expr), _c_ = (code);                                 \
                if (_r_ != _c_)                                                 \
                        FAIL("%s returned %d (%s), expected %d (%s)", #expr,    \
                             _r_, _r_ < 0 ? strerror(-_r_) : "success", _c_,    \
                             strerror(-_c_));                                   \
                if (vdisk_last_error()[0] == '\0')                              \
                        FAIL("%s failed with %d but left no error message",     \
                             #expr, _r_);                                       \
        } while (0)

/* The call must fail cleanly: a negative code (never -ENOMEM) and a message.
 * Evaluates to the code. */
#define ASSERT_FAILS(expr)                                                      \
        ({                                                                      \
                int _r_ = (expr);                                               \
                if (_r_ >= 0)                                                   \
                        FAIL("%s succeeded (%d), expected an error", #expr, _r_); \
                test_check_clean_error(__FILE__, __LINE__, #expr, _r_);         \
                _r_;                                                            \
        })

#define ASSERT_EQ_U64(a, b)                                                     \
        do {                                                                    \
                uint64_t _a_ = (a), _b_ = (b);                                  \
                if (_a_ != _b_)                                                 \
                        FAIL("%s == %s failed: %" PRIu64 " (0x%" PRIx64 ") != %" \
                             PRIu64 " (0x%" PRIx64 ")", #a, #b, _a_, _a_, _b_, _b_); \
        } while (0)

#define ASSERT_STREQ(a, b)                                                      \
        do {                                                                    \
                const char *_a_ = (a), *_b_ = (b);                              \
                if (!_a_ || !_b_ || strcmp(_a_, _b_) != 0)                      \
                        FAIL("%s == %s failed: \"%s\" != \"%s\"", #a, #b,       \
                             _a_ ? _a_ : "(null)", _b_ ? _b_ : "(null)");       \
        } while (0)

/* Compares two buffers and names the first differing byte. */
#define ASSERT_MEMEQ(a, b, n)                                                   \
        do {                                                                    \
                const uint8_t *_a_ = (const uint8_t *) (a), *_b_ = (const uint8_t *) (b); \
                size_t _n_ = (n);                                               \
                if (memcmp(_a_, _b_, _n_) != 0) {                               \
                        size_t _i_ = 0;                                         \
                        while (_a_[_i_] == _b_[_i_])                            \
                                _i_++;                                          \
                        FAIL("%s and %s differ at byte %zu of %zu: 0x%02x != 0x%02x", \
                             #a, #b, _i_, _n_, _a_[_i_], _b_[_i_]);             \
                }                                                               \
        } while (0)

/* A resolver for crash tests of a qcow2 image with an external data file
 * over an optional raw parent: every companion name is `data`, the parent
 * name "base.raw" is `base` (NULL: no parent). */
typedef struct test_chain_files {
        vdisk_io *data, *base;
} test_chain_files;

static inline int test_chain_companion(void *user, const char *name, const char *image_name, uint32_t flags,
                                       vdisk_io **ret) {
        test_chain_files *f = user;

        (void) name;
        (void) image_name;
        (void) flags;
        if (!f->data)
                return -ENOENT;
        *ret = vdisk_io_ref(f->data);
        return 0;
}

static inline int test_chain_name(void *user, const char *name, const char *child_name, int writable,
                                  vdisk_io **ret) {
        test_chain_files *f = user;

        (void) child_name;
        (void) writable;
        if (!f->base || strcmp(name, "base.raw") != 0)
                return -ENOENT;
        *ret = vdisk_io_ref(f->base);
        return 0;
}

static const vdisk_resolver_ops test_chain_ops = {
        .size = sizeof(vdisk_resolver_ops),
        .open_name = test_chain_name,
        .open_companion = test_chain_companion,
};

/* The value the top image of `d` gives for `key` in its format info
 * ("compat", "refcount bits", "data file"...), or "" when it has none. */
static inline const char *test_format_value(vdisk_disk *d, const char *key, char *buf, size_t len) {
        char **kv = NULL;

        buf[0] = 0;
        ASSERT_OK(vdisk_image_get_format_info(vdisk_disk_image(d, vdisk_disk_count(d) - 1), &kv));
        for (size_t i = 0; kv && kv[i] && kv[i + 1]; i += 2)
                if (strcmp(kv[i], key) == 0)
                        snprintf(buf, len, "%s", kv[i + 1]);
        vdisk_strv_free(kv);
        return buf;
}

/* Failures are negative, never -ENOMEM (inputs must not make the library try
 * huge allocations), and always leave a message. */
static inline void test_check_clean_error(const char *file, int line, const char *what, int r) {
        if (r == -ENOMEM)
                test_fail(file, line, "%s failed with -ENOMEM: the library tried a huge allocation", what);
        if (r >= 0 || r < -4095)
                test_fail(file, line, "%s returned %d, not a negative errno", what, r);
        if (vdisk_last_error()[0] == '\0')
                test_fail(file, line, "%s failed with %d (%s) but left no error message", what, r,
                          strerror(-r));
}

/* ---- xorshift64* PRNG (deterministic across platforms; not rand()) */

typedef struct rng {
        uint64_t s;
} rng;

static inline void rng_seed(rng *r, uint64_t seed) {
        /* splitmix64 of the seed, so that 0 and small seeds work too */
        uint64_t z = seed + UINT64_C(0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        r->s = (z ^ (z >> 31)) | 1;
}

static inline uint64_t rng_next(rng *r) {
        r->s ^= r->s >> 12;
        r->s ^= r->s << 25;
        r->s ^= r->s >> 27;
        return r->s * UINT64_C(0x2545f4914f6cdd1d);
}

/* Uniform in [0, n); n > 0. */
static inline uint64_t rng_below(rng *r, uint64_t n) {
        return rng_next(r) % n;
}

/* Uniform in [lo, hi]. */
static inline uint64_t rng_range(rng *r, uint64_t lo, uint64_t hi) {
        return lo + rng_below(r, hi - lo + 1);
}

/* True with probability percent/100. */
static inline int rng_chance(rng *r, unsigned percent) {
        return rng_below(r, 100) < percent;
}

static inline void rng_fill(rng *r, void *buf, size_t len) {
        uint8_t *p = buf;
        while (len >= 8) {
                uint64_t v = rng_next(r);
                memcpy(p, &v, 8);
                p += 8;
                len -= 8;
        }
        if (len > 0) {
                uint64_t v = rng_next(r);
                memcpy(p, &v, len);
        }
}

/* ---- hashing (content oracles) */

static inline uint64_t hash64(const void *buf, size_t len) {
        const uint8_t *p = buf;
        uint64_t h = UINT64_C(0xcbf29ce484222325) ^ len;

        while (len >= 8) {
                uint64_t v;
                memcpy(&v, p, 8);
                h = (h ^ v) * UINT64_C(0x100000001b3);
                h ^= h >> 29;
                p += 8;
                len -= 8;
        }
        while (len-- > 0)
                h = (h ^ *p++) * UINT64_C(0x100000001b3);
        h ^= h >> 32;
        h *= UINT64_C(0xd6e8feb86659fd93);
        return h ^ (h >> 32);
}

static inline int buf_is_zero(const void *buf, size_t len) {
        const uint8_t *p = buf;
        for (size_t i = 0; i < len; i++)
                if (p[i])
                        return 0;
        return 1;
}

/* ---- helpers over the public API */

/* A new memory io holding a copy of data[0..len). */
static inline vdisk_io *mem_io(const char *name, const void *data, size_t len) {
        vdisk_io *io = NULL;
        ASSERT_OK(vdisk_io_new_memory(data, len, name, 0, &io));
        return io;
}

/* A malloc'ed copy of a memory io's bytes. */
static inline uint8_t *mem_io_copy(vdisk_io *io, size_t *ret_len) {
        const void *data = NULL;
        size_t len = 0;
        uint8_t *copy;

        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        copy = malloc(len ? len : 1);
        ASSERT(copy);
        if (len)
                memcpy(copy, data, len);
        *ret_len = len;
        return copy;
}

/* "dir/name" in one of four rotating static buffers (a few may be in use
 * in one call). */
static inline char *dir_path(const char *dir, const char *name) {
        static char p[4][512];
        static unsigned i;

        i = (i + 1) % 4;
        snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
        return p[i];
}

/* A malloc'ed copy of a file's bytes (one zero byte more, not counted). */
static inline uint8_t *file_read_all(const char *path, size_t *ret_len) {
        vdisk_io *io = NULL;
        uint64_t size = 0;
        uint8_t *b;

        ASSERT_OK(vdisk_io_open_path(path, VDISK_PATH_READ, &io));
        ASSERT_OK(vdisk_io_get_size(io, &size));
        b = calloc(1, (size_t) size + 1);
        ASSERT(b);
        if (size)
                ASSERT_OK(vdisk_io_pread(io, b, (size_t) size, 0));
        vdisk_io_unref(io);
        *ret_len = (size_t) size;
        return b;
}

/* Opens the chain whose top is the file `path` with the path resolver (as
 * vdisk-img does). On success *ret (when given) gets the disk, else it is
 * freed; a failure must come with a clean message. */
static inline int open_chain_path(const char *path, const char *format, uint32_t flags, vdisk_disk **ret) {
        vdisk_resolver *res = NULL;
        vdisk_disk *d = NULL;
        vdisk_io *io = NULL;
        int r;

        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT_OK(vdisk_resolver_new_path(NULL, &res));
        ASSERT_OK(vdisk_io_open_path(path, (flags & VDISK_OPEN_READONLY) ? VDISK_PATH_READ : VDISK_PATH_WRITE,
                                     &io));
        vdisk_clear_error();
        r = vdisk_disk_open_chain(d, res, io, format, flags);
        if (r < 0)
                test_check_clean_error(__FILE__, __LINE__, "vdisk_disk_open_chain", r);
        vdisk_io_unref(io);
        vdisk_resolver_unref(res);
        if (ret && r >= 0)
                *ret = d;
        else
                vdisk_disk_unref(d);
        return r;
}

/* A new memory io with a copy of another memory io's bytes. */
static inline vdisk_io *mem_io_clone(vdisk_io *io, const char *name) {
        const void *data = NULL;
        size_t len = 0;

        ASSERT_OK(vdisk_io_memory_data(io, &data, &len));
        return mem_io(name, data, len);
}

static inline vdisk_disk *disk_new(void) {
        vdisk_disk *d = NULL;
        ASSERT_OK(vdisk_disk_new(&d));
        ASSERT(d);
        return d;
}

/* Writes `len` bytes of `v` at `off`. */
static inline void disk_fill(vdisk_disk *d, uint64_t off, uint64_t len, uint8_t v) {
        uint8_t *buf = malloc(len);

        ASSERT(buf);
        memset(buf, v, len);
        ASSERT_OK(vdisk_disk_write(d, buf, len, off));
        free(buf);
}

/* Reads the whole disk into a new buffer. */
static inline uint8_t *disk_read_all(vdisk_disk *d, uint64_t *ret_size) {
        uint64_t size = vdisk_disk_size(d);
        uint8_t *buf = malloc(size ? size : 1);

        ASSERT(buf);
        for (uint64_t off = 0; off < size; off += 4 * MiB) {
                size_t n = (size_t) (size - off < 4 * MiB ? size - off : 4 * MiB);
                ASSERT_OK(vdisk_disk_read(d, buf + off, n, off));
        }
        *ret_size = size;
        return buf;
}

/* Runs vdisk_check (no repair) on image `index`; *ret gets the report (clear
 * it with vdisk_check_report_clear). */
static inline void check_image_report(vdisk_disk *d, unsigned index, vdisk_check_report *ret) {
        vdisk_check_report rep = { .size = sizeof rep };

        ASSERT_OK(vdisk_check(d, index, 0, &rep, NULL));
        *ret = rep;
}

static inline void print_check_messages(const vdisk_check_report *rep) {
        if (!rep->messages)
                return;
        for (char **m = rep->messages; *m; m++)
                fprintf(stderr, "    check: %s\n", *m);
}

/* Checks image `index`: no corruption, no check error. Returns the leaks. */
#define CHECK_IMAGE_CLEAN(d, index)                                             \
        ({                                                                      \
                vdisk_check_report _rep_;                                       \
                unsigned _i_ = (index);                                         \
                check_image_report((d), _i_, &_rep_);                           \
                if (_rep_.corruptions || _rep_.check_errors) {                  \
                        print_check_messages(&_rep_);                           \
                        FAIL("vdisk_check of image %u: %" PRIu64 " corruptions, %" PRIu64 \
                             " check errors", _i_, _rep_.corruptions, _rep_.check_errors); \
                }                                                               \
                uint64_t _l_ = _rep_.leaks;                                     \
                vdisk_check_report_clear(&_rep_);                               \
                _l_;                                                            \
        })
