/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A small streaming JSON writer whose pretty output is byte-for-byte what
 * qemu-img prints for --output=json: four-space indentation, "key": value,
 * one member per line, closing brackets on their own line, and every
 * character outside printable ASCII escaped as \uXXXX.
 */

#include <assert.h>
#include <inttypes.h>
#include <string.h>

#include "img.h"

void json_init(JsonWriter *w, FILE *f) {
        *w = (JsonWriter) { .f = f };
}

static void json_newline(JsonWriter *w) {
        fputc('\n', w->f);
        for (unsigned i = 0; i < w->depth; i++)
                fputs("    ", w->f);
}

/* Decodes one UTF-8 sequence at s; returns its length (0 if invalid). */
static size_t utf8_decode(const unsigned char *s, uint32_t *ret) {
        uint32_t c;
        size_t n;

        if (s[0] < 0x80) {
                *ret = s[0];
                return 1;
        }
        if ((s[0] & 0xe0) == 0xc0) {
                c = s[0] & 0x1f;
                n = 2;
        } else if ((s[0] & 0xf0) == 0xe0) {
                c = s[0] & 0x0f;
                n = 3;
        } else if ((s[0] & 0xf8) == 0xf0) {
                c = s[0] & 0x07;
                n = 4;
        } else
                return 0;

        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                c = c << 6 | (s[i] & 0x3f);
        }
        /* Reject overlong forms, surrogates and values past U+10FFFF. */
        if ((n == 2 && c < 0x80) || (n == 3 && c < 0x800) || (n == 4 && c < 0x10000) ||
            (c >= 0xd800 && c <= 0xdfff) || c > 0x10ffff)
                return 0;
        *ret = c;
        return n;
}

void json_write_quoted(FILE *f, const char *s) {
        const unsigned char *p = (const unsigned char *) s;

        fputc('"', f);
        while (*p) {
                uint32_t c;
                size_t n = utf8_decode(p, &c);

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
                case '\b':
                        fputs("\\b", f);
                        break;
                case '\f':
                        fputs("\\f", f);
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
                default:
                        if (c >= 0x20 && c < 0x7f)
                                fputc((int) c, f);
                        else if (c < 0x10000)
                                fprintf(f, "\\u%04" PRIX32, c);
                        else {
                                c -= 0x10000;
                                fprintf(f, "\\u%04" PRIX32 "\\u%04" PRIX32,
                                        0xd800 | (c >> 10), 0xdc00 | (c & 0x3ff));
                        }
                }
        }
        fputc('"', f);
}

static void json_value_prefix(JsonWriter *w, const char *key) {
        if (w->need_comma) {
                fputc(',', w->f);
                json_newline(w);
        } else if (w->started)
                json_newline(w);
        w->started = true;
        w->need_comma = true;
        if (key) {
                json_write_quoted(w->f, key);
                fputs(": ", w->f);
        }
}

void json_object_begin(JsonWriter *w, const char *key) {
        json_value_prefix(w, key);
        fputc('{', w->f);
        w->depth++;
        w->need_comma = false;
}

void json_object_end(JsonWriter *w) {
        assert(w->depth > 0);
        w->depth--;
        json_newline(w);
        fputc('}', w->f);
        w->need_comma = true;
}

void json_array_begin(JsonWriter *w, const char *key) {
        json_value_prefix(w, key);
        fputc('[', w->f);
        w->depth++;
        w->need_comma = false;
}

void json_array_end(JsonWriter *w) {
        assert(w->depth > 0);
        w->depth--;
        json_newline(w);
        fputc(']', w->f);
        w->need_comma = true;
}

void json_string(JsonWriter *w, const char *key, const char *value) {
        json_value_prefix(w, key);
        json_write_quoted(w->f, value);
}

void json_uint(JsonWriter *w, const char *key, uint64_t value) {
        json_value_prefix(w, key);
        fprintf(w->f, "%" PRIu64, value);
}

void json_int(JsonWriter *w, const char *key, int64_t value) {
        json_value_prefix(w, key);
        fprintf(w->f, "%" PRIi64, value);
}

void json_bool(JsonWriter *w, const char *key, bool value) {
        json_value_prefix(w, key);
        fputs(value ? "true" : "false", w->f);
}

void json_finish(JsonWriter *w) {
        fputc('\n', w->f);
}
