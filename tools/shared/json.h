/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A streaming JSON writer shared by vdisk-img and vdiskctl. Pretty output is
 * byte for byte what qemu-img prints for --output=json: four spaces per level,
 * "key": value, one member per line, closing brackets on their own line, and
 * every character outside printable ASCII escaped as \uXXXX (bytes that are
 * not valid UTF-8 as U+FFFD). Compact output keeps a document on one line.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct Json {
        FILE *f;
        unsigned depth;
        bool pretty;
        bool need_comma;
        bool started;
} Json;

void json_begin(Json *j, FILE *f, bool pretty);
void json_object_open(Json *j, const char *key);
void json_object_close(Json *j);
void json_array_open(Json *j, const char *key);
void json_array_close(Json *j);
void json_string(Json *j, const char *key, const char *value);
void json_uint(Json *j, const char *key, uint64_t value);
void json_int(Json *j, const char *key, int64_t value);
void json_double(Json *j, const char *key, double value);   /* null if not finite */
void json_bool(Json *j, const char *key, bool value);
void json_null(Json *j, const char *key);
/* Ends the document with a newline; the writer can start another. */
void json_end(Json *j);
