/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* CRC32, UUIDs, bitmaps, extent lists, strings. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>
#include <zlib.h>

#include "util/util.h"

void *buf_alloc(size_t size) {
        void *p;

        if (posix_memalign(&p, 4096, MAX(size, (size_t) 1)) != 0)
                return NULL;
        return p;
}

uint32_t crc32_update(uint32_t crc, const void *buf, size_t len) {
        const uint8_t *p = buf;

        /* zlib takes uInt lengths; feed it in pieces. */
        while (len > 0) {
                uInt n = (uInt) MIN(len, (size_t) 1 << 30);
                crc = (uint32_t) crc32(crc, p, n);
                p += n;
                len -= n;
        }
        return crc;
}

void uuid_swap_guid_rfc(uint8_t u[16]) {
        uint8_t t;

        t = u[0], u[0] = u[3], u[3] = t;
        t = u[1], u[1] = u[2], u[2] = t;
        t = u[4], u[4] = u[5], u[5] = t;
        t = u[6], u[6] = u[7], u[7] = t;
}

/* Text form: VirtualBox prints RTUUIDs with the first three fields read as
 * little-endian numbers, so the stored bytes 78 56 34 12 ... print as 12345678-... */
void vdisk_uuid_format(const uint8_t uuid[16], char ret[37]) {
        uint8_t u[16];

        memcpy(u, uuid, 16);
        uuid_swap_guid_rfc(u);
        uuid_unparse_lower(u, ret);
}

int vdisk_uuid_parse(const char *s, uint8_t ret[16]) {
        uint8_t u[16];

        if (!s || !ret || uuid_parse(s, u) < 0)
                return vdisk_error(-EINVAL, "invalid UUID '%s'", s ? s : "(null)");
        uuid_swap_guid_rfc(u);
        memcpy(ret, u, 16);
        return 0;
}

int vdisk_uuid_is_null(const uint8_t uuid[16]) {
        return mem_is_zero(uuid, 16);
}

void vdisk_uuid_generate(uint8_t ret[16]) {
        uuid_generate_random(ret);
        uuid_swap_guid_rfc(ret);
}

uint64_t *bitmap_new(uint64_t n) {
        uint64_t words = n / 64 + (n % 64 != 0);

        /* Callers size bitmaps from validated metadata; anything near this
         * bound (4 GiB of bitmap) is a bug or hostile input, never a request. */
        if (n > ((uint64_t) 1 << 35))
                return NULL;
        return calloc(words ? words : 1, sizeof(uint64_t));
}

int extent_list_append(extent_list *l, uint64_t offset, uint64_t length) {
        if (length == 0)
                return 0;
        if (l->n > 0) {
                __typeof__(l->v[0]) *last = &l->v[l->n - 1];
                if (last->offset + last->length == offset) {
                        last->length += length;
                        return 0;
                }
        }
        if (l->n == l->allocated) {
                size_t na = l->allocated ? l->allocated * 2 : 16;
                void *v = reallocarray(l->v, na, sizeof l->v[0]);
                if (!v)
                        return vdisk_error(-ENOMEM, "out of memory");
                l->v = v;
                l->allocated = na;
        }
        l->v[l->n].offset = offset;
        l->v[l->n].length = length;
        l->n++;
        return 0;
}

void extent_list_clear(extent_list *l) {
        free(l->v);
        *l = (extent_list) {};
}

char *strdup_printf(const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        return s;
}

/* Appends an owned string. */
static int strv_push_owned(strv_builder *b, char *s) {
        char **v;

        if (!s)
                return -ENOMEM;
        v = reallocarray(b->v, b->n + 2, sizeof(char *));
        if (!v) {
                free(s);
                return -ENOMEM;
        }
        v[b->n++] = s;
        v[b->n] = NULL;
        b->v = v;
        return 0;
}

int strv_push(strv_builder *b, const char *s) {
        return strv_push_owned(b, strdup(s));
}

int strv_push_pair(strv_builder *b, const char *key, const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        r = strv_push(b, key);
        if (r < 0)
                return r;
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        return strv_push_owned(b, s);
}

int strv_builder_steal(strv_builder *b, char ***ret) {
        if (!b->v && !(b->v = calloc(1, sizeof(char *))))
                return -ENOMEM;
        *ret = b->v;
        *b = (strv_builder) {};
        return 0;
}

void strv_builder_done(strv_builder *b) {
        vdisk_strv_free(b->v);
        *b = (strv_builder) {};
}

/* Messages go into a NULL-terminated list the report owns. A hostile image
 * can have millions of bad entries: the counts in the report stay exact, but
 * the list stops at CHECK_MESSAGES_MAX lines and a last line says so (the
 * list goes to terminals and over the bus). */
#define CHECK_MESSAGES_MAX 1000

int check_report_add(vdisk_check_report *r, const char *fmt, ...) {
        strv_builder b = { .v = r->messages };
        va_list ap;
        char *s;
        int k;

        while (b.v && b.v[b.n])
                b.n++;
        if (b.n > CHECK_MESSAGES_MAX)
                return 0;
        if (b.n == CHECK_MESSAGES_MAX) {
                k = strv_push(&b, "further messages suppressed (the counts are complete)");
                r->messages = b.v;
                return k;
        }
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        k = strv_push_owned(&b, s);
        r->messages = b.v;
        return k;
}

void vdisk_strv_free(char **strv) {
        if (!strv)
                return;
        for (char **s = strv; *s; s++)
                free(*s);
        free(strv);
}

const char *vdisk_version(void) {
        return "0.1.0";
}
