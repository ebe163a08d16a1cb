/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qemu-img's "-o k=v,..." option lists, for vdisk-img and vdiskctl. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct OptList {
        char **kv;      /* alternating keys and values, NULL-terminated */
        size_t n;       /* number of pairs */
        bool help;      /* "help" or "?" was given */
} OptList;

/* Parses one -o argument ("k=v,k2=v2", ",," escapes a comma); a key given
 * again replaces the earlier value. */
int optlist_parse(OptList *l, const char *arg);
const char *optlist_get(const OptList *l, const char *key);
int optlist_remove(OptList *l, const char *key);
/* qemu-img takes the backing file and its format as -b/-F and as -o
 * backing_file=/backing_fmt=. Folds the -o values into *backing and
 * *backing_fmt; -EEXIST, with *ret_what naming the one ("backing file" or
 * "backing format"), when both ways give it. */
int optlist_fold_backing(const OptList *l, const char **backing, const char **backing_fmt,
                         const char **ret_what);
void optlist_done(OptList *l);

static inline const char *optlist_key(const OptList *l, size_t i) {
        return l->kv[2 * i];
}

static inline const char *optlist_value(const OptList *l, size_t i) {
        return l->kv[2 * i + 1];
}

/* Replaces the value of pair i by `value` (taking ownership). */
void optlist_replace_value(OptList *l, size_t i, char *value);
