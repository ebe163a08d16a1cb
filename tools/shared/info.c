/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qemu-img info's output for both tools (see info.h). */

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "info.h"
#include "log.h"
#include "macro.h"
#include "text.h"

/* Formats without VirtualBox-style metadata (raw) get none of vdisk's
 * additions, so their output stays exactly qemu-img's. */
static bool has_specific(const InfoView *v) {
        return v->uuid || v->mod_uuid || v->parent_uuid || v->comment;
}

static bool has_fmt_kv(const InfoView *v) {
        return v->fmt_kv && v->fmt_kv[0];
}

/* A key of a list of objects, "<list>.<i>.<field>": the list name's length,
 * the index and the field. */
static bool fmt_list_key(const char *key, size_t *ret_len, unsigned long *ret_index, const char **ret_field) {
        const char *dot = strchr(key, '.'), *end;

        if (!dot || dot == key || !isdigit((unsigned char) dot[1]))
                return false;
        *ret_index = strtoul(dot + 1, (char **) &end, 10);
        if (*end != '.' || !end[1])
                return false;
        *ret_len = (size_t) (dot - key);
        *ret_field = end + 1;
        return true;
}

/* A field that is a list of strings: "name[]", the value joined by ','. */
static bool fmt_strings_key(const char *field) {
        size_t n = strlen(field);

        return n > 2 && streq(field + n - 2, "[]");
}

/* Whether key `k` starts another list than `list` (of `len` bytes; NULL: none open). */
static bool fmt_new_list(const char *list, size_t len, const char *k, size_t k_len) {
        return !list || len != k_len || strncmp(list, k, len) != 0;
}

static const char *full_backing(const InfoView *v) {
        return v->full_backing ? v->full_backing : v->backing;
}

static void info_print_human(const InfoView *v) {
        char a[32], b[32];

        printf("image: %s\n", v->filename);
        printf("file format: %s\n", v->format);
        if (v->have_sizes) {
                format_size(v->virtual_size, a);
                format_size(v->actual_size, b);
                printf("virtual size: %s (%" PRIu64 " bytes)\n", a, v->virtual_size);
                printf("disk size: %s\n", b);
                if (v->cluster_size > 0)
                        printf("cluster_size: %" PRIu64 "\n", v->cluster_size);
                if (v->dirty)
                        printf("cleanly shut down: no\n");
        } else
                printf("disk size: unavailable\n");
        if (v->backing) {
                printf("backing file: %s", v->backing);
                if (!streq(v->backing, full_backing(v)))
                        printf(" (actual path: %s)", full_backing(v));
                putchar('\n');
                if (v->backing_format)
                        printf("backing file format: %s\n", v->backing_format);
        }
        if (v->uuid)
                printf("UUID: %s\n", v->uuid);
        if (v->parent_uuid)
                printf("Parent UUID: %s\n", v->parent_uuid);
        if (v->mod_uuid)
                printf("Modification UUID: %s\n", v->mod_uuid);
        if (v->parent_mod_uuid)
                printf("Parent modification UUID: %s\n", v->parent_mod_uuid);
        /* qemu's own section names the variant where it has one (VMDK's create type) */
        if (has_specific(v) && v->variant && !has_fmt_kv(v))
                printf("Variant: %s\n", v->variant);
        if (v->comment && *v->comment)
                printf("Comment: %s\n", v->comment);
        snapshot_list_print(v->snapshots, v->n_snapshots);
        if (has_fmt_kv(v)) {
                const char *list = NULL, *field;
                size_t len = 0, k_len;
                unsigned long index = 0, k_index, item;

                printf("Format specific information:\n");
                for (size_t i = 0; v->fmt_kv[i] && v->fmt_kv[i + 1]; i += 2) {
                        const char *k = v->fmt_kv[i];

                        if (!fmt_list_key(k, &k_len, &k_index, &field)) {
                                list = NULL;
                                printf("    %s: %s\n", k, v->fmt_kv[i + 1]);
                                continue;
                        }
                        if (fmt_new_list(list, len, k, k_len)) {
                                printf("    %.*s:\n", (int) k_len, k);
                                list = k, len = k_len, index = ULONG_MAX;
                        }
                        if (k_index != index)
                                printf("        [%lu]:\n", k_index);
                        index = k_index;
                        if (!fmt_strings_key(field)) {
                                printf("            %s: %s\n", field, v->fmt_kv[i + 1]);
                                continue;
                        }
                        printf("            %.*s:\n", (int) (strlen(field) - 2), field);
                        item = 0;
                        for (const char *p = v->fmt_kv[i + 1]; *p;) {
                                const char *e = strchrnul(p, ',');

                                printf("                [%lu]: %.*s\n", item++, (int) (e - p), p);
                                p = *e ? e + 1 : e;
                        }
                }
        }
        if (v->have_pchs)
                printf("PCHS geometry: %" PRIu32 "/%" PRIu32 "/%" PRIu32 "\n", v->pchs[0], v->pchs[1], v->pchs[2]);
        if (v->have_lchs)
                printf("LCHS geometry: %" PRIu32 "/%" PRIu32 "/%" PRIu32 "\n", v->lchs[0], v->lchs[1], v->lchs[2]);
}

/* One pair of the format information as qemu's JSON: the key with '-' for
 * ' ', true/false as booleans, digits as numbers (names stay strings), a
 * "key[]" as an array of strings. */
static void json_fmt_pair(Json *j, const char *key, const char *value) {
        char k[64];
        size_t i;

        for (i = 0; key[i] && i < sizeof k - 1; i++)
                k[i] = key[i] == ' ' ? '-' : key[i];
        k[i] = 0;
        if (fmt_strings_key(k)) {
                k[strlen(k) - 2] = 0;
                json_array_open(j, k);
                for (const char *p = value; *p;) {
                        const char *e = strchrnul(p, ',');
                        _cleanup_free_ char *item = strndup(p, (size_t) (e - p));

                        json_string(j, NULL, item ? item : "");
                        p = *e ? e + 1 : e;
                }
                json_array_close(j);
        } else if (streq(value, "true") || streq(value, "false"))
                json_bool(j, k, streq(value, "true"));
        else if (!streq(key, "data file") && !streq(key, "filename") && !streq(key, "name") && value[0] &&
                 strspn(value, "0123456789") == strlen(value) &&
                 strlen(value) < 20)
                json_uint(j, k, strtoull(value, NULL, 10));
        else
                json_string(j, k, value);
}

/* The format information, lists of objects as JSON arrays. */
static void json_fmt_pairs(Json *j, const InfoView *v) {
        const char *list = NULL, *field;
        size_t len = 0, k_len;
        unsigned long index = 0, k_index;
        char name[64];

        for (size_t i = 0; has_fmt_kv(v) && v->fmt_kv[i] && v->fmt_kv[i + 1]; i += 2) {
                const char *k = v->fmt_kv[i];
                bool in_list = fmt_list_key(k, &k_len, &k_index, &field);

                if (list && (!in_list || fmt_new_list(list, len, k, k_len))) {
                        json_object_close(j);
                        json_array_close(j);
                        list = NULL;
                }
                if (!in_list) {
                        json_fmt_pair(j, k, v->fmt_kv[i + 1]);
                        continue;
                }
                if (!list) {
                        snprintf(name, sizeof name, "%.*s", (int) k_len, k);
                        json_array_open(j, name);
                        json_object_open(j, NULL);
                        list = k, len = k_len, index = k_index;
                } else if (k_index != index) {
                        json_object_close(j);
                        json_object_open(j, NULL);
                        index = k_index;
                }
                json_fmt_pair(j, field, v->fmt_kv[i + 1]);
        }
        if (list) {
                json_object_close(j);
                json_array_close(j);
        }
}

static void json_geometry(Json *j, const char *key, const uint32_t g[3]) {
        json_object_open(j, key);
        json_uint(j, "cylinders", g[0]);
        json_uint(j, "heads", g[1]);
        json_uint(j, "sectors", g[2]);
        json_object_close(j);
}

static void json_specific(Json *j, const InfoView *v) {
        json_object_open(j, "format-specific");
        json_string(j, "type", v->format);
        json_object_open(j, "data");
        json_fmt_pairs(j, v);
        if (v->uuid)
                json_string(j, "uuid", v->uuid);
        if (v->mod_uuid)
                json_string(j, "modification-uuid", v->mod_uuid);
        if (v->parent_uuid)
                json_string(j, "parent-uuid", v->parent_uuid);
        if (v->parent_mod_uuid)
                json_string(j, "parent-modification-uuid", v->parent_mod_uuid);
        if (v->comment)
                json_string(j, "comment", v->comment);
        if (has_specific(v) && v->variant)
                json_string(j, "variant", v->variant);
        if (has_specific(v) && v->have_version)
                json_uint(j, "version", v->version);
        if (v->media_type)
                json_string(j, "media-type", v->media_type);
        if (v->have_pchs)
                json_geometry(j, "pchs", v->pchs);
        if (v->have_lchs)
                json_geometry(j, "lchs", v->lchs);
        json_object_close(j);
        json_object_close(j);
}

static void info_print_json(Json *j, const InfoView *v) {
        /* qemu-img's keys, in its order */
        json_object_open(j, NULL);
        if (v->backing && v->backing_format)
                json_string(j, "backing-filename-format", v->backing_format);
        json_uint(j, "virtual-size", v->have_sizes ? v->virtual_size : 0);
        json_string(j, "filename", v->filename);
        if (v->cluster_size > 0)
                json_uint(j, "cluster-size", v->cluster_size);
        json_string(j, "format", v->format);
        if (v->have_sizes)
                json_uint(j, "actual-size", v->actual_size);
        if (v->n_snapshots > 0) {
                /* qemu-img's keys, in its order */
                json_array_open(j, "snapshots");
                for (const InfoSnapshot *s = v->snapshots; s < v->snapshots + v->n_snapshots; s++) {
                        json_object_open(j, NULL);
                        if (s->icount != UINT64_MAX)
                                json_uint(j, "icount", s->icount);
                        json_uint(j, "vm-state-size", s->vm_state_size);
                        json_int(j, "date-sec", s->date_sec);
                        json_uint(j, "date-nsec", s->date_nsec);
                        json_uint(j, "vm-clock-nsec", s->vm_clock_nsec % 1000000000);
                        json_string(j, "name", s->name);
                        json_uint(j, "vm-clock-sec", s->vm_clock_nsec / 1000000000);
                        json_string(j, "id", s->id);
                        json_object_close(j);
                }
                json_array_close(j);
        }
        if (has_specific(v) || has_fmt_kv(v))
                json_specific(j, v);
        if (v->backing) {
                json_string(j, "full-backing-filename", full_backing(v));
                json_string(j, "backing-filename", v->backing);
        }
        if (v->have_dirty)
                json_bool(j, "dirty-flag", v->dirty);
        json_object_close(j);
}

void info_print(const InfoView *v, size_t n, OutputFormat output, bool chain) {
        Json j;

        if (output == OUTPUT_HUMAN) {
                for (size_t i = 0; i < n; i++) {
                        if (i > 0)
                                putchar('\n');
                        info_print_human(&v[i]);
                }
                return;
        }
        json_begin(&j, stdout, true);
        if (chain)
                json_array_open(&j, NULL);
        for (size_t i = 0; i < n; i++)
                info_print_json(&j, &v[i]);
        if (chain)
                json_array_close(&j);
        json_end(&j);
}

void snapshot_list_print(const InfoSnapshot *l, size_t n) {
        if (n == 0)
                return;
        printf("Snapshot list:\n");
        printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
        for (const InfoSnapshot *s = l; s < l + n; s++) {
                time_t t = (time_t) s->date_sec;
                uint64_t secs = s->vm_clock_nsec / 1000000000;
                struct tm tm;
                char date[32] = "", size[32], count[32] = "";

                if (localtime_r(&t, &tm))
                        strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
                format_size(s->vm_state_size, size);
                if (s->icount != UINT64_MAX)
                        snprintf(count, sizeof count, "%" PRIu64, s->icount);
                printf("%-9s %-16s %8s %19s %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64 " %10s\n",
                       s->id, s->name, size, date, secs / 3600, secs / 60 % 60, secs % 60,
                       s->vm_clock_nsec / 1000000 % 1000, count);
        }
}

int snapshot_refuse(char action, const char *name) {
        switch (action) {
        case 'c':
                log_error("Could not create snapshot '%s': -%d (%s)", name, EOPNOTSUPP, strerror(EOPNOTSUPP));
                break;
        case 'a':
                log_error("Could not apply snapshot '%s': Block driver does not support snapshots", name);
                break;
        case 'd':
                log_error("Could not delete snapshot '%s': snapshot not found", name);
                break;
        default:
                abort();
        }
        return 1;
}
