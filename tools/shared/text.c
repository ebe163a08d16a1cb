/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Text helpers shared by vdisk-img and vdiskctl (see text.h). */

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "text.h"

int parse_size(const char *s, uint64_t *ret) {
        const char *p = s;
        uint64_t integer = 0, unit = 1, result, extra;
        double fraction = 0;

        assert(s);
        assert(ret);

        while (isspace((unsigned char) *p))
                p++;
        if (*p == '+')
                p++;

        if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
                p += 2;
                if (!isxdigit((unsigned char) *p))
                        return -EINVAL;
                for (; isxdigit((unsigned char) *p); p++) {
                        unsigned d = isdigit((unsigned char) *p)
                                             ? (unsigned) (*p - '0')
                                             : (unsigned) (tolower((unsigned char) *p) - 'a' + 10);
                        if (MUL_OVERFLOW(integer, 16, &integer) || ADD_OVERFLOW(integer, d, &integer))
                                return -ERANGE;
                }
        } else {
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                for (; isdigit((unsigned char) *p); p++)
                        if (MUL_OVERFLOW(integer, 10, &integer) ||
                            ADD_OVERFLOW(integer, (uint64_t) (*p - '0'), &integer))
                                return -ERANGE;
                if (*p == '.') {
                        double scale = 0.1;

                        for (p++; isdigit((unsigned char) *p); p++, scale /= 10)
                                fraction += (*p - '0') * scale;
                }
        }

        if (*p) {
                /* the suffix: 1024 to the power of its place */
                static const char suffixes[] = "bkmgtpe";
                const char *u = strchr(suffixes, tolower((unsigned char) *p));

                if (!u || p[1])
                        return -EINVAL;
                unit = UINT64_C(1) << (10 * (u - suffixes));
        }
        /* A fraction of a byte means nothing. */
        if (fraction != 0 && unit == 1)
                return -EINVAL;

        if (MUL_OVERFLOW(integer, unit, &result))
                return -ERANGE;
        extra = (uint64_t) (fraction * (double) unit);
        if (ADD_OVERFLOW(result, extra, &result))
                return -ERANGE;
        if (result > INT64_MAX)
                return -ERANGE;

        *ret = result;
        return 0;
}

void format_size(uint64_t v, char buf[static 32]) {
        static const char *const prefix[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
        double x = (double) v;
        size_t i = 0;

        /* Three significant digits: move up once four would be needed. */
        while (i + 1 < ELEMENTSOF(prefix) && x >= 1000.0) {
                x /= 1024.0;
                i++;
        }
        snprintf(buf, 32, "%.3g %sB", x, prefix[i]);
}

size_t utf8_next(const unsigned char *s, uint32_t *ret) {
        size_t len;
        uint32_t c, min;

        if (s[0] < 0x80) {
                *ret = s[0];
                return 1;
        }
        /* not a continuation byte, an overlong lead or a lead past U+10FFFF */
        if (s[0] < 0xc2 || s[0] > 0xf4)
                return 0;
        len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : 2;
        c = s[0] & (0x7f >> len);   /* the lead's payload bits */
        min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;   /* also stops at the terminating NUL */
                c = (c << 6) | (s[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
                return 0;
        *ret = c;
        return len;
}

int path_relative_to(const char *child, const char *name, char **ret) {
        const char *slash = strrchr(child, '/');
        char *s;

        if (name[0] == '/' || !slash)
                s = strdup(name);
        else if (asprintf(&s, "%.*s%s", (int) (slash - child + 1), child, name) < 0)
                s = NULL;
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int parse_size_change(const char *s, SizeChange *ret) {
        SizeChange c = {};
        int r;

        if (*s == '+' || *s == '-')
                c.sign = *s++ == '-' ? -1 : 1;
        r = parse_size(s, &c.value);
        if (r < 0)
                return r;
        *ret = c;
        return 0;
}

int size_change_apply(const SizeChange *c, uint64_t cur, uint64_t *ret) {
        uint64_t n;

        if (c->sign == 0)
                n = c->value;
        else if (c->sign < 0)
                n = c->value >= cur ? 0 : cur - c->value;
        else if (ADD_OVERFLOW(cur, c->value, &n) || n > INT64_MAX)
                return -EFBIG;
        if (n == 0)
                return -EINVAL;
        *ret = n;
        return 0;
}

int parse_uint(const char *s, unsigned *ret) {
        unsigned long v;
        char *end;

        if (!isdigit((unsigned char) s[0]))
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || *end || v > UINT32_MAX)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

int path_dirname(const char *path, char **ret) {
        const char *slash = strrchr(path, '/');
        char *s;

        if (!slash)
                s = strdup(".");
        else if (slash == path)
                s = strdup("/");
        else
                s = strndup(path, (size_t) (slash - path));
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

int compare_print_verdict(CompareVerdict v, uint64_t offset, uint64_t size_a, uint64_t size_b, bool quiet) {
        uint64_t common = size_a < size_b ? size_a : size_b;

        if (quiet)
                return v == VERDICT_EQUAL ? 0 : 1;
        if (v == VERDICT_SIZE)
                printf("Strict mode: Image size mismatch!\n");
        else if (v == VERDICT_BLOCK_STATUS)
                printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", offset);
        else {
                /* The warning comes once the common part matched. */
                if (size_a != size_b && (v == VERDICT_EQUAL || offset >= common))
                        printf("Warning: Image size mismatch!\n");
                if (v == VERDICT_CONTENT)
                        printf("Content mismatch at offset %" PRIu64 "!\n", offset);
                else
                        printf("Images are identical.\n");
        }
        return v == VERDICT_EQUAL ? 0 : 1;
}
