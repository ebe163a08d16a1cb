/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A streaming JSON writer. Pretty mode puts one member per line with four
 * spaces per level, as qemu-img prints; compact mode (monitor) keeps a
 * document on one line. Strings are escaped per RFC 8259: quotes, backslash
 * and control characters always, every non-ASCII character as \uXXXX (a
 * surrogate pair beyond the BMP), and bytes that are not valid UTF-8 as
 * U+FFFD, so the output is valid whatever an image's comment holds.
 */

#include <math.h>
#include <string.h>

#include "vdiskctl.h"

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

static void json_quoted(FILE *f, const char *s) {
        const unsigned char *p = (const unsigned char *) (s ? s : "");

        fputc('"', f);
        while (*p) {
                uint32_t c;
                size_t n = utf8_next(p, &c);

                if (n == 0) {
                        c = 0xfffd;
                        n = 1;
                }
                p += n;
                switch (c) {
                case '"':
                        fputs("\\\"", f);
                        break;
                case '\\':
                        fputs("\\\\", f);
                        break;
                case '\n':
                        fputs("\\n", f);
                        break;
                case '\r':
                        fputs("\\r", f);
                        break;
                case '\t':
                        fputs("\\t", f);
                        break;
                case '\b':
                        fputs("\\b", f);
                        break;
                case '\f':
                        fputs("\\f", f);
                        break;
                default:
                        if (c >= 0x20 && c < 0x7f)
                                fputc((int) c, f);
                        else if (c < 0x10000)
                                fprintf(f, "\\u%04x", (unsigned) c);
                        else {
                                c -= 0x10000;
                                fprintf(f, "\\u%04x\\u%04x", (unsigned) (0xd800 | (c >> 10)),
                                        (unsigned) (0xdc00 | (c & 0x3ff)));
                        }
                }
        }
        fputc('"', f);
}

static void json_prefix(Json *j, const char *key) {
        if (j->need_comma) {
                fputc(',', j->f);
                if (!j->pretty)
                        fputc(' ', j->f);
        }
        if (j->started)
                json_newline(j);
        j->started = true;
        j->need_comma = true;
        if (key) {
                json_quoted(j->f, key);
                fputs(": ", j->f);
        }
}

void json_object_open(Json *j, const char *key) {
        json_prefix(j, key);
        fputc('{', j->f);
        j->depth++;
        j->need_comma = false;
}

static void json_close(Json *j, char c) {
        bool empty = !j->need_comma;

        assert(j->depth > 0);
        j->depth--;
        if (!empty)
                json_newline(j);
        fputc(c, j->f);
        j->need_comma = true;
}

void json_object_close(Json *j) {
        json_close(j, '}');
}

void json_array_open(Json *j, const char *key) {
        json_prefix(j, key);
        fputc('[', j->f);
        j->depth++;
        j->need_comma = false;
}

void json_array_close(Json *j) {
        json_close(j, ']');
}

void json_string(Json *j, const char *key, const char *value) {
        json_prefix(j, key);
        json_quoted(j->f, value);
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

void json_value(Json *j, const char *key, const Value *v) {
        switch (v->type) {
        case VALUE_NONE:
                json_null(j, key);
                break;
        case VALUE_BOOL:
                json_bool(j, key, v->b);
                break;
        case VALUE_INT:
                json_int(j, key, v->i);
                break;
        case VALUE_UINT:
                json_uint(j, key, v->u);
                break;
        case VALUE_DOUBLE:
                json_double(j, key, v->d);
                break;
        case VALUE_STRING:
                json_string(j, key, v->s);
                break;
        case VALUE_ARRAY:
                json_array_open(j, key);
                for (size_t i = 0; i < v->c.n; i++)
                        json_value(j, NULL, &v->c.items[i]);
                json_array_close(j);
                break;
        case VALUE_DICT:
                json_object_open(j, key);
                for (size_t i = 0; i < v->c.n; i++)
                        json_value(j, v->c.keys[i], &v->c.items[i]);
                json_object_close(j);
                break;
        }
}

void json_end(Json *j) {
        fputc('\n', j->f);
        *j = (Json) { .f = j->f, .pretty = j->pretty };
}
