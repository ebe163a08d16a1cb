/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* JSON output of a decoded D-Bus value (the writer is shared/json.c). */

#include "vdiskctl.h"

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
