/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "fmt/units.h"
#include "util/util.h"

int units_map_join(void *state, units_status_fn unit, uint64_t offset, uint64_t len, uint64_t size,
                   map_result *ret) {
        uint64_t done;
        int r;

        assert(offset < size);
        assert(len > 0);

        r = unit(state, offset, ret);
        if (r < 0)
                return r;
        if (ret->kind == MAP_ENCODED) {
                ret->length = MIN(ret->length, len);
                return 0;
        }
        done = ret->length;
        while (done < len && offset + done < size) {
                map_result n = {};

                r = unit(state, offset + done, &n);
                if (r < 0)
                        return r;
                if (n.kind != ret->kind || n.space != ret->space ||
                    ((n.kind == MAP_DATA || n.space) &&
                     (n.file != ret->file || n.host_offset != ret->host_offset + done || n.shared != ret->shared)))
                        break;
                done += n.length;
        }
        ret->length = MIN(done, len);
        return 0;
}

int units_inflate(uint64_t cluster, const map_result *m, const void *in, void *out, uint64_t *ret_total,
                  bool *ret_end, bool *ret_bad) {
        z_stream z = {};
        uint8_t scratch[4096];
        int zr;

        if (inflateInit2(&z, -12) != Z_OK)
                return -ENOMEM;
        z.next_in = (Bytef *) in;
        z.avail_in = m->encoded_length;
        z.next_out = out;
        z.avail_out = m->unit_length;
        zr = inflate(&z, Z_FINISH);
        while ((zr == Z_BUF_ERROR || zr == Z_OK) && z.avail_out == 0 && z.total_out <= cluster) {
                z.next_out = scratch;
                z.avail_out = (uInt) MIN((uint64_t) sizeof scratch, cluster + 1 - z.total_out);
                zr = inflate(&z, Z_FINISH);
        }
        *ret_total = z.total_out;
        *ret_end = zr == Z_STREAM_END;
        *ret_bad = zr != Z_STREAM_END && zr != Z_BUF_ERROR && zr != Z_OK;
        inflateEnd(&z);
        return 0;
}

int units_check_backing_name(const char *fmt, const char *name) {
        if (vdisk_backing_name_is_protocol(name))
                return vdisk_error(-EOPNOTSUPP, "%s: backing file '%.64s' is a qemu protocol or json: name, not a "
                                   "file name: refused", fmt, name);
        return 0;
}

int units_peek_backing_name(const char *fmt, const uint8_t *head, size_t head_len, uint64_t off, uint32_t len,
                            const char **ret) {
        int r;

        /* a name not NUL-terminated within the head cannot be borrowed */
        if (off + len >= head_len || head[off + len] != 0)
                return -ENODATA;
        if (memchr(head + off, 0, len))
                return vdisk_error(-EUCLEAN, "%s: backing file name holds a NUL byte", fmt);
        r = units_check_backing_name(fmt, (const char *) head + off);
        if (r < 0)
                return r;
        *ret = (const char *) head + off;
        return 0;
}

int units_read_backing_name(const char *fmt, vdisk_io *io, uint64_t off, uint32_t len, char **ret) {
        _cleanup_free_ char *name = calloc(1, (size_t) len + 1);
        int r;

        if (!name)
                return -ENOMEM;
        r = io_pread(io, name, len, off);
        if (r < 0)
                return r;
        if (strlen(name) != len)
                return vdisk_error(-EUCLEAN, "%s: backing file name holds a NUL byte", fmt);
        r = units_check_backing_name(fmt, name);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(name);
        return 0;
}

/* Deflate and zstd gain nothing on bytes whose values are all about equally
 * frequent (data compressed or encrypted already), and deflate is at its
 * slowest on them. The test: the chance that two bytes picked at random
 * are equal, sum(count^2) / len^2, at most 1.1/256 (uniform random bytes
 * give about 1.004/256, text some 15/256). */
static bool window_incompressible(const uint8_t *p, size_t len) {
        uint32_t count[256] = {};
        uint64_t sq = 0;

        for (size_t i = 0; i < len; i++)
                count[p[i]]++;
        for (unsigned v = 0; v < 256; v++)
                sq += (uint64_t) count[v] * count[v];
        return sq * 256 * 10 <= (uint64_t) len * len * 11;
}

/* Four 4 KiB windows spread over the buffer must all look random: a
 * cluster that is random in one part and text in another still compresses. */
bool units_incompressible(const void *buf, size_t len) {
        const uint8_t *p = buf;
        const size_t w = 4096;

        if (len < w)
                return false;
        for (unsigned k = 0; k < 4; k++) {
                size_t at = ALIGN_DOWN((len - w) / 3 * k, (size_t) 512);

                if (!window_incompressible(p + at, w))
                        return false;
        }
        return true;
}

/* zstd's default level (qemu's choice too); deflate at zlib's default. */
#define UNITS_ZSTD_LEVEL        3
#define UNITS_DEFLATE_LEVEL     Z_DEFAULT_COMPRESSION

/* Each encoding thread keeps its compressors and resets them per cluster:
 * setting up a deflate stream or a zstd context costs hundreds of KiB of
 * allocations, far more than compressing a small cluster. Freed when the
 * thread ends. */
typedef struct compressors {
        z_stream z;
        bool z_ok;
        ZSTD_CCtx *zc;
} compressors;

static pthread_key_t comp_key;
static pthread_once_t comp_once = PTHREAD_ONCE_INIT;
static bool comp_key_ok;

static void compressors_free(void *p) {
        compressors *c = p;

        if (c->z_ok)
                deflateEnd(&c->z);
        ZSTD_freeCCtx(c->zc);
        free(c);
}

static void comp_key_init(void) {
        comp_key_ok = pthread_key_create(&comp_key, compressors_free) == 0;
}

static compressors *thread_compressors(void) {
        compressors *c;

        pthread_once(&comp_once, comp_key_init);
        if (!comp_key_ok)
                return NULL;
        c = pthread_getspecific(comp_key);
        if (c)
                return c;
        c = calloc(1, sizeof *c);
        if (!c)
                return NULL;
        if (pthread_setspecific(comp_key, c) != 0) {
                free(c);
                return NULL;
        }
        return c;
}

/* Raw deflate of in[0, len) into out[0, cap); 0 and *ret_len, or 1 when it
 * does not fit. */
static int deflate_cluster(compressors *c, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                           size_t *ret_len) {
        int zr;

        if (!c->z_ok) {
                if (deflateInit2(&c->z, UNITS_DEFLATE_LEVEL, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
                        return vdisk_error(-ENOMEM, "cannot set up deflate");
                c->z_ok = true;
        } else if (deflateReset(&c->z) != Z_OK)
                return vdisk_error(-EIO, "cannot reset deflate");
        c->z.next_in = (Bytef *) in;
        c->z.avail_in = (uInt) len;
        c->z.next_out = out;
        c->z.avail_out = (uInt) cap;
        zr = deflate(&c->z, Z_FINISH);
        if (zr == Z_STREAM_END) {
                *ret_len = cap - c->z.avail_out;
                return 0;
        }
        if (zr == Z_OK || zr == Z_BUF_ERROR)
                return 1;   /* out of room: it does not shrink enough */
        return vdisk_error(-EIO, "deflate failed (%d)", zr);
}

static int zstd_cluster(compressors *c, const uint8_t *in, size_t len, uint8_t *out, size_t cap,
                        size_t *ret_len) {
        size_t n;

        if (!c->zc) {
                c->zc = ZSTD_createCCtx();
                if (!c->zc)
                        return vdisk_error(-ENOMEM, "cannot set up zstd");
        }
        n = ZSTD_compressCCtx(c->zc, out, cap, in, len, UNITS_ZSTD_LEVEL);
        if (!ZSTD_isError(n)) {
                *ret_len = n;
                return 0;
        }
        if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall)
                return 1;
        return vdisk_error(-EIO, "zstd failed: %s", ZSTD_getErrorName(n));
}

int units_compress(units_codec codec, const void *in, size_t len, void *out, size_t cap, size_t *ret_len) {
        compressors *c = thread_compressors();

        if (!c)
                return vdisk_error(-ENOMEM, "cannot set up the compressors");
        if (cap == 0)
                return 1;
        if (codec == UNITS_ZSTD)
                return zstd_cluster(c, in, len, out, cap, ret_len);
        return deflate_cluster(c, in, len, out, cap, ret_len);
}
