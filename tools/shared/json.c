/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The JSON writer (see json.h). */

#include <assert.h>
#include <inttypes.h>
#include <math.h>

#include "json.h"
#include "text.h"

void json_begin(Json *j, FILE *f, bool pretty) {
        *j = (Json) { .f = f, .pretty = pretty };
}

static void json_newline(Json *j) {
        if (!j->pretty)
                return;
        fputc('\n', j->f);
        for (unsigned i = 0; i < j->depth; i++)
                fputs("    ", j->f);
}

/* Writes `s` as a JSON string literal. */
static void json_write_quoted(FILE *f, const char *s) {
        /* the characters with a short escape, and what follows the backslash */
        static const char short_escape[0x60] = {
                ['"'] = '"', ['\\'] = '\\', ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
        };
        const unsigned char *p = (const unsigned char *) s;

        fputc('"', f);
        while (*p) {
                uint32_t c;
                size_t n = utf8_next(p, &c);

                if (n == 0) {
                        c = 0xfffd;
                        n = 1;
                }
                p += n;

                if (c < sizeof short_escape && short_escape[c]) {
                        fputc('\\', f);
                        fputc(short_escape[c], f);
                } else if (c >= 0x20 && c < 0x7f)
                        fputc((int) c, f);
                else if (c < 0x10000)
                        fprintf(f, "\\u%04" PRIX32, c);
                else {
                        c -= 0x10000;
                        fprintf(f, "\\u%04" PRIX32 "\\u%04" PRIX32, 0xd800 | (c >> 10), 0xdc00 | (c & 0x3ff));
                }
        }
        fputc('"', f);
}

static void json_prefix(Json *j, const char *key) {
        if (j->need_comma)
                fputs(j->pretty ? "," : ", ", j->f);
        if (j->started)
                json_newline(j);
        j->started = true;
        j->need_comma = true;
        if (key) {
                json_write_quoted(j->f, key);
                fputs(": ", j->f);
        }
}

static void json_open(Json *j, const char *key, char c) {
        json_prefix(j, key);
        fputc(c, j->f);
        j->depth++;
        j->need_comma = false;
}

static void json_close(Json *j, char c) {
        assert(j->depth > 0);
        j->depth--;
        json_newline(j);
        fputc(c, j->f);
        j->need_comma = true;
}

void json_object_open(Json *j, const char *key) {
        json_open(j, key, '{');
}

void json_object_close(Json *j) {
        json_close(j, '}');
}

void json_array_open(Json *j, const char *key) {
        json_open(j, key, '[');
}

void json_array_close(Json *j) {
        json_close(j, ']');
}

void json_string(Json *j, const char *key, const char *value) {
        json_prefix(j, key);
        json_write_quoted(j->f, value ? value : "");
}

void json_uint(Json *j, const char *key, uint64_t value) {
        json_prefix(j, key);
        fprintf(j->f, "%" PRIu64, value);
}

void json_int(Json *j, const char *key, int64_t value) {
        json_prefix(j, key);
        fprintf(j->f, "%" PRIi64, value);
}

void json_double(Json *j, const char *key, double value) {
        json_prefix(j, key);
        /* JSON has no NaN or infinity. */
        if (isfinite(value))
                fprintf(j->f, "%.6g", value);
        else
                fputs("null", j->f);
}

void json_bool(Json *j, const char *key, bool value) {
        json_prefix(j, key);
        fputs(value ? "true" : "false", j->f);
}

void json_null(Json *j, const char *key) {
        json_prefix(j, key);
        fputs("null", j->f);
}

void json_end(Json *j) {
        fputc('\n', j->f);
        *j = (Json) { .f = j->f, .pretty = j->pretty };
}
