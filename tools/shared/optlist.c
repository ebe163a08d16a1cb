/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qemu-img's "-o k=v,..." lists (see optlist.h). */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "optlist.h"

static int optlist_set(OptList *l, const char *key, size_t key_len, const char *value, size_t value_len) {
        _cleanup_free_ char *k = strndup(key, key_len), *v = NULL;
        char **kv;

        if (!k)
                return -ENOMEM;
        /* ",," stands for one comma inside a value. */
        v = malloc(value_len + 1);
        if (!v)
                return -ENOMEM;
        size_t j = 0;
        for (size_t i = 0; i < value_len; i++) {
                v[j++] = value[i];
                if (value[i] == ',' && i + 1 < value_len && value[i + 1] == ',')
                        i++;
        }
        v[j] = '\0';

        for (size_t i = 0; i < l->n; i++)
                if (streq(l->kv[2 * i], k)) {
                        free(l->kv[2 * i + 1]);
                        l->kv[2 * i + 1] = TAKE_PTR(v);
                        return 0;
                }

        kv = realloc(l->kv, (2 * l->n + 3) * sizeof(char *));
        if (!kv)
                return -ENOMEM;
        l->kv = kv;
        kv[2 * l->n] = TAKE_PTR(k);
        kv[2 * l->n + 1] = TAKE_PTR(v);
        l->n++;
        kv[2 * l->n] = NULL;
        return 0;
}

int optlist_parse(OptList *l, const char *arg) {
        const char *p = arg;
        int r;

        while (*p) {
                const char *start = p, *eq = NULL;

                /* An item ends at a single comma; ",," is an escaped comma. */
                for (; *p; p++) {
                        if (*p == ',') {
                                if (p[1] == ',') {
                                        p++;
                                        continue;
                                }
                                break;
                        }
                        if (*p == '=' && !eq)
                                eq = p;
                }

                if (p > start) {
                        if (!eq) {
                                if ((size_t) (p - start) == 4 && strncmp(start, "help", 4) == 0)
                                        l->help = true;
                                else if ((size_t) (p - start) == 1 && *start == '?')
                                        l->help = true;
                                else {
                                        /* A bare key switches a boolean on. */
                                        r = optlist_set(l, start, (size_t) (p - start), "on", 2);
                                        if (r < 0)
                                                return r;
                                }
                        } else {
                                if (eq == start)
                                        return -EINVAL;
                                r = optlist_set(l, start, (size_t) (eq - start),
                                                eq + 1, (size_t) (p - eq - 1));
                                if (r < 0)
                                        return r;
                        }
                }
                if (*p == ',')
                        p++;
        }
        return 0;
}

const char *optlist_get(const OptList *l, const char *key) {
        for (size_t i = 0; i < l->n; i++)
                if (streq(l->kv[2 * i], key))
                        return l->kv[2 * i + 1];
        return NULL;
}

int optlist_fold_backing(const OptList *l, const char **backing, const char **backing_fmt,
                         const char **ret_what) {
        const char *b = optlist_get(l, "backing_file"), *f = optlist_get(l, "backing_fmt");

        if (b && *backing) {
                *ret_what = "backing file";
                return -EEXIST;
        }
        if (f && *backing_fmt) {
                *ret_what = "backing format";
                return -EEXIST;
        }
        if (b)
                *backing = b;
        if (f)
                *backing_fmt = f;
        return 0;
}

int optlist_remove(OptList *l, const char *key) {
        for (size_t i = 0; i < l->n; i++)
                if (streq(l->kv[2 * i], key)) {
                        free(l->kv[2 * i]);
                        free(l->kv[2 * i + 1]);
                        memmove(l->kv + 2 * i, l->kv + 2 * i + 2, (2 * (l->n - i - 1) + 1) * sizeof(char *));
                        l->n--;
                        return 1;
                }
        return 0;
}

void optlist_done(OptList *l) {
        for (size_t i = 0; i < 2 * l->n; i++)
                free(l->kv[i]);
        free(l->kv);
        *l = (OptList) {};
}

void optlist_replace_value(OptList *l, size_t i, char *value) {
        free(l->kv[2 * i + 1]);
        l->kv[2 * i + 1] = value;
}
