/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Generic D-Bus values: vdiskctl reads property dictionaries, ProbeFormat's
 * info, an Operation's Result and GetManagedObjects into one small tree, so
 * that each command looks keys up by name and JSON output can show whatever
 * the daemon sent, including keys this vdiskctl does not know yet.
 */

#include <errno.h>
#include <string.h>

#include "vdiskctl.h"

/* Nesting limit (D-Bus allows 64; the daemon's values are shallow). */
#define VALUE_DEPTH_MAX 32u

static int value_read_depth(sd_bus_message *m, Value *ret, unsigned depth);

static int container_append(Value *v, Value *item, char *key) {
        Value *items;
        char **keys;

        items = realloc(v->c.items, (v->c.n + 1) * sizeof(Value));
        if (!items)
                return -ENOMEM;
        v->c.items = items;
        if (v->type == VALUE_DICT) {
                keys = realloc(v->c.keys, (v->c.n + 1) * sizeof(char *));
                if (!keys)
                        return -ENOMEM;
                v->c.keys = keys;
                keys[v->c.n] = key;
        }
        items[v->c.n++] = *item;
        return 0;
}

/* A dictionary key as a string, whatever its basic type. */
static int key_to_string(const Value *k, char **ret) {
        char buf[64];

        if (k->type == VALUE_STRING)
                *ret = strdup(k->s);
        else {
                if (k->type == VALUE_BOOL)
                        snprintf(buf, sizeof buf, "%s", k->b ? "true" : "false");
                else if (k->type == VALUE_INT)
                        snprintf(buf, sizeof buf, "%" PRIi64, k->i);
                else if (k->type == VALUE_UINT)
                        snprintf(buf, sizeof buf, "%" PRIu64, k->u);
                else if (k->type == VALUE_DOUBLE)
                        snprintf(buf, sizeof buf, "%g", k->d);
                else
                        return -EINVAL;
                *ret = strdup(buf);
        }
        return *ret ? 0 : -ENOMEM;
}

static int read_container_items(sd_bus_message *m, Value *v, bool dict, unsigned depth) {
        int r;

        for (;;) {
                _cleanup_value_ Value item = {};
                _cleanup_free_ char *key = NULL;

                if (dict) {
                        char type;
                        const char *contents;

                        r = sd_bus_message_peek_type(m, &type, &contents);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                return 0;
                        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, contents);
                        if (r < 0)
                                return r;
                        {
                                _cleanup_value_ Value k = {};

                                r = value_read_depth(m, &k, depth + 1);
                                if (r < 0)
                                        return r;
                                r = key_to_string(&k, &key);
                                if (r < 0)
                                        return r;
                        }
                        r = value_read_depth(m, &item, depth + 1);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                } else {
                        r = sd_bus_message_at_end(m, false);
                        if (r < 0)
                                return r;
                        if (r > 0)
                                return 0;
                        r = value_read_depth(m, &item, depth + 1);
                        if (r < 0)
                                return r;
                }
                r = container_append(v, &item, key);
                if (r < 0)
                        return r;
                item = (Value) {};
                key = NULL;
        }
}

static int value_read_depth(sd_bus_message *m, Value *ret, unsigned depth) {
        _cleanup_value_ Value v = {};
        const char *contents;
        char type;
        int r;

        if (depth > VALUE_DEPTH_MAX)
                return -E2BIG;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (r == 0)
                return -ENXIO;
        v.sig = type;

        switch (type) {
        case SD_BUS_TYPE_BOOLEAN:
        case SD_BUS_TYPE_BYTE:
        case SD_BUS_TYPE_INT16:
        case SD_BUS_TYPE_UINT16:
        case SD_BUS_TYPE_INT32:
        case SD_BUS_TYPE_UNIX_FD:
        case SD_BUS_TYPE_UINT32:
        case SD_BUS_TYPE_INT64:
        case SD_BUS_TYPE_UINT64:
        case SD_BUS_TYPE_DOUBLE: {
                /* sd-bus stores each type in its own width. */
                union {
                        int b;
                        uint8_t y;
                        int16_t n;
                        uint16_t q;
                        int32_t i;
                        uint32_t u;
                        int64_t x;
                        uint64_t t;
                        double d;
                } x;

                r = sd_bus_message_read_basic(m, type, &x);
                if (type == SD_BUS_TYPE_BOOLEAN) {
                        v.type = VALUE_BOOL;
                        v.b = x.b;
                } else if (type == SD_BUS_TYPE_DOUBLE) {
                        v.type = VALUE_DOUBLE;
                        v.d = x.d;
                } else if (strchr("nihx", type)) {
                        v.type = VALUE_INT;
                        v.i = type == 'n' ? x.n : type == 'x' ? x.x : x.i;
                } else {
                        v.type = VALUE_UINT;
                        v.u = type == 'y' ? x.y : type == 'q' ? x.q : type == 'u' ? x.u : x.t;
                }
                break;
        }
        case SD_BUS_TYPE_STRING:
        case SD_BUS_TYPE_OBJECT_PATH:
        case SD_BUS_TYPE_SIGNATURE: {
                const char *s;

                r = sd_bus_message_read_basic(m, type, &s);
                if (r < 0)
                        return r;
                v.type = VALUE_STRING;
                v.s = strdup(s);
                if (!v.s)
                        return -ENOMEM;
                break;
        }
        case SD_BUS_TYPE_VARIANT:
                r = sd_bus_message_enter_container(m, type, contents);
                if (r < 0)
                        return r;
                r = value_read_depth(m, ret, depth + 1);
                if (r < 0)
                        return r;
                return sd_bus_message_exit_container(m);
        case SD_BUS_TYPE_ARRAY:
        case SD_BUS_TYPE_STRUCT: {
                bool dict = type == SD_BUS_TYPE_ARRAY && contents[0] == SD_BUS_TYPE_DICT_ENTRY_BEGIN;

                v.type = dict ? VALUE_DICT : VALUE_ARRAY;
                if (type == SD_BUS_TYPE_STRUCT)
                        v.sig = 'r';
                r = sd_bus_message_enter_container(m, type, contents);
                if (r < 0)
                        return r;
                r = read_container_items(m, &v, dict, depth);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                break;
        }
        default:
                return -EBADMSG;
        }
        if (r < 0)
                return r;

        *ret = v;
        v = (Value) {};
        return 0;
}

int value_read(sd_bus_message *m, Value *ret) {
        return value_read_depth(m, ret, 0);
}

void value_clear(Value *v) {
        if (!v)
                return;
        switch (v->type) {
        case VALUE_STRING:
                free(v->s);
                break;
        case VALUE_ARRAY:
        case VALUE_DICT:
                for (size_t i = 0; i < v->c.n; i++) {
                        value_clear(&v->c.items[i]);
                        if (v->c.keys)
                                free(v->c.keys[i]);
                }
                free(v->c.items);
                free(v->c.keys);
                break;
        default:
                break;
        }
        *v = (Value) {};
}

const Value *value_get(const Value *dict, const char *key) {
        if (!dict || dict->type != VALUE_DICT)
                return NULL;
        for (size_t i = 0; i < dict->c.n; i++)
                if (streq(dict->c.keys[i], key))
                        return &dict->c.items[i];
        return NULL;
}

const char *value_str(const Value *dict, const char *key, const char *def) {
        const Value *v = value_get(dict, key);

        return v && v->type == VALUE_STRING ? v->s : def;
}

uint64_t value_uint(const Value *dict, const char *key, uint64_t def) {
        const Value *v = value_get(dict, key);

        if (!v)
                return def;
        if (v->type == VALUE_UINT)
                return v->u;
        if (v->type == VALUE_INT && v->i >= 0)
                return (uint64_t) v->i;
        return def;
}

bool value_bool(const Value *dict, const char *key, bool def) {
        const Value *v = value_get(dict, key);

        return v && v->type == VALUE_BOOL ? v->b : def;
}

double value_double(const Value *dict, const char *key, double def) {
        const Value *v = value_get(dict, key);

        return v && v->type == VALUE_DOUBLE ? v->d : def;
}

bool value_geometry(const Value *dict, const char *key, uint32_t ret[3]) {
        const Value *v = value_get(dict, key);

        if (!v || v->type != VALUE_ARRAY || v->c.n != 3)
                return false;
        for (size_t i = 0; i < 3; i++) {
                if (v->c.items[i].type != VALUE_UINT)
                        return false;
                ret[i] = (uint32_t) v->c.items[i].u;
        }
        return ret[0] || ret[1] || ret[2];
}

/* The writer is shared/json.c. */
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
