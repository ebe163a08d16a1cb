/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl list, status, monitor and cancel: what vdiskd holds and does.
 * Everything comes from the ObjectManager and the objects' properties;
 * nothing here opens a file.
 */

#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "vdiskctl.h"

/* ---------------------------------------------------------------- objects */

typedef struct Object {
        const char *path;
        const Value *props;     /* of the interface that matters */
        uint64_t id;            /* the trailing number, for sorting */
} Object;

typedef struct Objects {
        Value tree;             /* GetManagedObjects */
        Object *disks, *images, *ops;
        size_t n_disks, n_images, n_ops;
} Objects;

static uint64_t path_id(const char *path) {
        const char *slash = strrchr(path, '/');
        char *end;
        unsigned long long v;

        if (!slash)
                return UINT64_MAX;
        v = strtoull(slash + 1, &end, 10);
        return *end || end == slash + 1 ? UINT64_MAX : v;
}

static int object_cmp(const void *a, const void *b) {
        const Object *x = a, *y = b;

        if (x->id != y->id)
                return x->id < y->id ? -1 : 1;
        return strcmp(x->path, y->path);
}

static int objects_add(Object **l, size_t *n, const char *path, const Value *props) {
        Object *m = realloc(*l, (*n + 1) * sizeof(Object));

        if (!m)
                return -ENOMEM;
        *l = m;
        m[(*n)++] = (Object) { .path = path, .props = props, .id = path_id(path) };
        return 0;
}

static void objects_done(Objects *o) {
        free(o->disks);
        free(o->images);
        free(o->ops);
        value_clear(&o->tree);
        *o = (Objects) {};
}

/* Loads and sorts vdiskd's objects. Logs; exit code. */
static int objects_load(Ctx *ctx, Objects *ret) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(objects_done) Objects o = {};
        int r;

        r = bus_get_objects(ctx, &error, &o.tree);
        if (r < 0)
                return log_bus_error("Could not list vdiskd's objects", &error, r);
        if (o.tree.type != VALUE_DICT) {
                log_error("Bad reply from vdiskd");
                return EXIT_FAILURE;
        }
        for (size_t i = 0; i < o.tree.c.n; i++) {
                const char *path = o.tree.c.keys[i];
                const Value *ifaces = &o.tree.c.items[i], *p;

                r = 0;
                if ((p = value_get(ifaces, VDISK_IFACE_DISK)))
                        r = objects_add(&o.disks, &o.n_disks, path, p);
                else if ((p = value_get(ifaces, VDISK_IFACE_IMAGE)))
                        r = objects_add(&o.images, &o.n_images, path, p);
                else if ((p = value_get(ifaces, VDISK_IFACE_OPERATION)))
                        r = objects_add(&o.ops, &o.n_ops, path, p);
                if (r < 0)
                        return log_oom();
        }
        if (o.n_disks)
                qsort(o.disks, o.n_disks, sizeof(Object), object_cmp);
        if (o.n_images)
                qsort(o.images, o.n_images, sizeof(Object), object_cmp);
        if (o.n_ops)
                qsort(o.ops, o.n_ops, sizeof(Object), object_cmp);
        *ret = o;
        o = (Objects) {};
        return 0;
}

static const Object *objects_find(const Object *l, size_t n, const char *path) {
        for (size_t i = 0; i < n; i++)
                if (streq(l[i].path, path))
                        return &l[i];
        return NULL;
}

/* ---------------------------------------------------------------- tables */

#define TABLE_COLUMNS_MAX 8

typedef struct Table {
        unsigned n_cols;
        char **cells;           /* rows * n_cols */
        size_t n_rows;
} Table;

static int table_add(Table *t, ...) {
        char **cells;
        va_list ap;

        cells = realloc(t->cells, (t->n_rows + 1) * t->n_cols * sizeof(char *));
        if (!cells)
                return -ENOMEM;
        t->cells = cells;
        va_start(ap, t);
        for (unsigned i = 0; i < t->n_cols; i++) {
                const char *s = va_arg(ap, const char *);

                cells[t->n_rows * t->n_cols + i] = strdup(s ? s : "-");
        }
        va_end(ap);
        t->n_rows++;
        for (unsigned i = 0; i < t->n_cols; i++)
                if (!cells[(t->n_rows - 1) * t->n_cols + i])
                        return -ENOMEM;
        return 0;
}

static void table_print(const Table *t) {
        size_t width[TABLE_COLUMNS_MAX] = {};

        assert(t->n_cols <= TABLE_COLUMNS_MAX);
        for (size_t r = 0; r < t->n_rows; r++)
                for (unsigned c = 0; c < t->n_cols; c++)
                        width[c] = MAX(width[c], strlen(t->cells[r * t->n_cols + c]));
        for (size_t r = 0; r < t->n_rows; r++) {
                for (unsigned c = 0; c < t->n_cols; c++) {
                        const char *s = t->cells[r * t->n_cols + c];

                        if (c + 1 == t->n_cols)
                                printf("%s\n", s);
                        else
                                printf("%-*s  ", (int) width[c], s);
                }
        }
}

static void table_done(Table *t) {
        for (size_t i = 0; i < t->n_rows * t->n_cols; i++)
                free(t->cells[i]);
        free(t->cells);
        *t = (Table) {};
}

/* ---------------------------------------------------------------- list */

static void list_json(const Objects *o) {
        Json j;

        json_begin(&j, stdout, true);
        json_object_open(&j, NULL);
        json_array_open(&j, "disks");
        for (size_t i = 0; i < o->n_disks; i++) {
                const Value *d = o->disks[i].props, *images = value_get(d, "Images");
                uint32_t owner = (uint32_t) value_uint(d, "OwnerUID", 0);
                const char *op = value_str(d, "Operation", "/");
                char user[64];

                format_uid(owner, user);
                json_object_open(&j, NULL);
                json_string(&j, "object", o->disks[i].path);
                json_string(&j, "display-name", value_str(d, "DisplayName", ""));
                json_uint(&j, "size", value_uint(d, "Size", 0));
                json_uint(&j, "owner-uid", owner);
                json_string(&j, "owner", user);
                json_bool(&j, "read-only", value_bool(d, "ReadOnly", false));
                if (streq(op, "/"))
                        json_null(&j, "operation");
                else
                        json_string(&j, "operation", op);
                json_array_open(&j, "images");
                for (size_t k = 0; images && images->type == VALUE_ARRAY && k < images->c.n; k++) {
                        const Object *img;
                        const Value *ip;

                        if (images->c.items[k].type != VALUE_STRING)
                                continue;
                        img = objects_find(o->images, o->n_images, images->c.items[k].s);
                        json_object_open(&j, NULL);
                        json_string(&j, "object", images->c.items[k].s);
                        if (img) {
                                ip = img->props;
                                json_uint(&j, "index", value_uint(ip, "Index", k));
                                json_string(&j, "display-name", value_str(ip, "DisplayName", ""));
                                json_string(&j, "format", value_str(ip, "QemuFormat", ""));
                                json_uint(&j, "size", value_uint(ip, "Size", 0));
                                json_uint(&j, "file-size", value_uint(ip, "FileSize", 0));
                                json_string(&j, "variant", value_str(ip, "Variant", ""));
                                json_string(&j, "uuid", value_str(ip, "Uuid", ""));
                                json_string(&j, "parent-uuid", value_str(ip, "ParentUuid", ""));
                                json_bool(&j, "read-only", value_bool(ip, "ReadOnly", false));
                        }
                        json_object_close(&j);
                }
                json_array_close(&j);
                json_object_close(&j);
        }
        json_array_close(&j);
        json_array_open(&j, "operations");
        for (size_t i = 0; i < o->n_ops; i++) {
                const Value *p = o->ops[i].props;
                uint32_t uid = (uint32_t) value_uint(p, "StartedByUID", 0);
                char user[64];

                format_uid(uid, user);
                json_object_open(&j, NULL);
                json_string(&j, "object", o->ops[i].path);
                json_string(&j, "kind", value_str(p, "Kind", ""));
                json_string(&j, "state", value_str(p, "State", ""));
                json_double(&j, "progress", value_double(p, "Progress", 0));
                json_uint(&j, "bytes-done", value_uint(p, "BytesDone", 0));
                json_uint(&j, "bytes-total", value_uint(p, "BytesTotal", 0));
                json_string(&j, "disk", value_str(p, "Disk", "/"));
                json_uint(&j, "started-by-uid", uid);
                json_string(&j, "started-by", user);
                json_string(&j, "error-name", value_str(p, "ErrorName", ""));
                json_string(&j, "error-message", value_str(p, "ErrorMessage", ""));
                json_object_close(&j);
        }
        json_array_close(&j);
        json_object_close(&j);
        json_end(&j);
}

static int list_human(const Objects *o) {
        Table t = { .n_cols = 7 };
        int r = 0;

        if (o->n_disks == 0 && o->n_ops == 0 && !arg_quiet)
                printf("No disks.\n");
        if (o->n_disks > 0)
                r = table_add(&t, "OBJECT", "NAME", "FORMAT", "SIZE", "OWNER", "ACCESS", "DETAILS");
        for (size_t i = 0; r >= 0 && i < o->n_disks; i++) {
                const Value *d = o->disks[i].props, *images = value_get(d, "Images");
                const char *op = value_str(d, "Operation", "/"), *top_format = "-";
                size_t n_images = images && images->type == VALUE_ARRAY ? images->c.n : 0;
                char size[32], user[64], details[128];

                if (n_images > 0 && images->c.items[n_images - 1].type == VALUE_STRING) {
                        const Object *top =
                                objects_find(o->images, o->n_images, images->c.items[n_images - 1].s);

                        if (top)
                                top_format = value_str(top->props, "QemuFormat", "-");
                }
                format_size(value_uint(d, "Size", 0), size);
                format_uid((uint32_t) value_uint(d, "OwnerUID", 0), user);
                if (!streq(op, "/"))
                        snprintf(details, sizeof details, "busy: %s", object_short(op));
                else
                        snprintf(details, sizeof details, "%zu image%s", n_images, n_images == 1 ? "" : "s");
                r = table_add(&t, object_short(o->disks[i].path), value_str(d, "DisplayName", ""),
                              top_format, size, user, value_bool(d, "ReadOnly", false) ? "ro" : "rw",
                              details);

                for (size_t k = 0; r >= 0 && k < n_images; k++) {
                        const Object *img;
                        _cleanup_free_ char *obj = NULL;
                        char isize[32], idetails[128];

                        if (images->c.items[k].type != VALUE_STRING)
                                continue;
                        img = objects_find(o->images, o->n_images, images->c.items[k].s);
                        if (!img)
                                continue;
                        if (asprintf(&obj, "  %s", object_short(img->path)) < 0) {
                                obj = NULL;
                                r = -ENOMEM;
                                break;
                        }
                        format_size(value_uint(img->props, "Size", 0), isize);
                        snprintf(idetails, sizeof idetails, "#%" PRIu64 " %s",
                                 value_uint(img->props, "Index", k), value_str(img->props, "Variant", ""));
                        r = table_add(&t, obj, value_str(img->props, "DisplayName", ""),
                                      value_str(img->props, "QemuFormat", "-"), isize, user,
                                      value_bool(img->props, "ReadOnly", false) ? "ro" : "rw", idetails);
                }
        }
        if (r < 0)
                goto oom;
        table_print(&t);
        table_done(&t);

        if (o->n_ops > 0) {
                t = (Table) { .n_cols = 6 };
                if (o->n_disks > 0)
                        putchar('\n');
                r = table_add(&t, "OPERATION", "KIND", "STATE", "PROGRESS", "DISK", "STARTED BY");
                for (size_t i = 0; r >= 0 && i < o->n_ops; i++) {
                        const Value *p = o->ops[i].props;
                        char pct[32], user[64];

                        snprintf(pct, sizeof pct, "%.1f%%", value_double(p, "Progress", 0) * 100.0);
                        format_uid((uint32_t) value_uint(p, "StartedByUID", 0), user);
                        r = table_add(&t, object_short(o->ops[i].path), value_str(p, "Kind", "-"),
                                      value_str(p, "State", "-"), pct,
                                      object_short(value_str(p, "Disk", "/")), user);
                }
                if (r < 0)
                        goto oom;
                table_print(&t);
                table_done(&t);
        }
        if (!arg_quiet && (o->n_disks > 0 || o->n_ops > 0))
                printf("\n%zu disk%s, %zu operation%s.\n", o->n_disks, o->n_disks == 1 ? "" : "s", o->n_ops,
                       o->n_ops == 1 ? "" : "s");
        return EXIT_OK;

oom:
        table_done(&t);
        return log_oom();
}

int cmd_list(Ctx *ctx, Request *req) {
        Objects o = {};
        int ex;

        if (req->n_args > 0)
                return usage_error("list takes no arguments");

        ex = objects_load(ctx, &o);
        if (ex != 0)
                return ex;
        if (arg_output == OUTPUT_JSON) {
                list_json(&o);
                ex = EXIT_OK;
        } else
                ex = list_human(&o);
        objects_done(&o);
        return ex;
}

/* ---------------------------------------------------------------- status */

/* A short human form of a property value: sizes, percentages, times and
 * object paths in their short forms. */
static void print_value_short(FILE *f, const char *key, const Value *v) {
        char buf[64];

        switch (v->type) {
        case VALUE_NONE:
                fputs("-", f);
                break;
        case VALUE_BOOL:
                fputs(v->b ? "yes" : "no", f);
                break;
        case VALUE_INT:
                fprintf(f, "%" PRIi64, v->i);
                break;
        case VALUE_UINT:
                if (key && (streq(key, "Size") || streq(key, "FileSize") || strstr(key, "Bytes") ||
                            strstr(key, "bytes"))) {
                        format_size(v->u, buf);
                        fprintf(f, "%s (%" PRIu64 ")", buf, v->u);
                } else if (key && streq(key, "Rate")) {
                        format_size(v->u, buf);
                        fprintf(f, "%s/s", buf);
                } else if (key && strstr(key, "Time")) {
                        format_timestamp(v->u, buf);
                        fputs(buf, f);
                } else if (key && strstr(key, "UID")) {
                        format_uid((uint32_t) v->u, buf);
                        fputs(buf, f);
                } else
                        fprintf(f, "%" PRIu64, v->u);
                break;
        case VALUE_DOUBLE:
                if (key && streq(key, "Progress"))
                        fprintf(f, "%.1f%%", v->d * 100.0);
                else
                        fprintf(f, "%g", v->d);
                break;
        case VALUE_STRING:
                if (v->sig == 'o')
                        fputs(streq(v->s, "/") ? "-" : object_short(v->s), f);
                else
                        fputs(*v->s ? v->s : "-", f);
                break;
        case VALUE_ARRAY:
                if (v->sig == 'r' && v->c.n == 3 && key && strstr(key, "Geometry")) {
                        fprintf(f, "%" PRIu64 "/%" PRIu64 "/%" PRIu64, v->c.items[0].u, v->c.items[1].u,
                                v->c.items[2].u);
                        break;
                }
                if (v->c.n == 0)
                        fputs("-", f);
                for (size_t i = 0; i < v->c.n; i++) {
                        if (i > 0)
                                fputc(' ', f);
                        print_value_short(f, NULL, &v->c.items[i]);
                }
                break;
        case VALUE_DICT:
                if (v->c.n == 0)
                        fputs("-", f);
                for (size_t i = 0; i < v->c.n; i++) {
                        if (i > 0)
                                fputs(", ", f);
                        fprintf(f, "%s=", v->c.keys[i]);
                        print_value_short(f, v->c.keys[i], &v->c.items[i]);
                }
                break;
        }
}

static void print_properties(const Value *props, unsigned indent) {
        size_t w = 0;

        for (size_t i = 0; i < props->c.n; i++)
                w = MAX(w, strlen(props->c.keys[i]));
        for (size_t i = 0; i < props->c.n; i++) {
                printf("%*s%*s: ", (int) indent, "", (int) w, props->c.keys[i]);
                print_value_short(stdout, props->c.keys[i], &props->c.items[i]);
                putchar('\n');
        }
}

static void print_backends(const Value *backends) {
        for (size_t i = 0; backends && backends->type == VALUE_ARRAY && i < backends->c.n; i++) {
                const Value *e = &backends->c.items[i], *caps;

                if (e->type != VALUE_ARRAY || e->c.n != 2 || e->c.items[0].type != VALUE_STRING)
                        continue;
                printf("    %s (%s):", e->c.items[0].s, value_str(&e->c.items[1], "qemu-name", "?"));
                caps = value_get(&e->c.items[1], "capabilities");
                for (size_t k = 0; caps && caps->type == VALUE_ARRAY && k < caps->c.n; k++)
                        if (caps->c.items[k].type == VALUE_STRING)
                                printf(" %s", caps->c.items[k].s);
                putchar('\n');
        }
}

static int status_manager(Ctx *ctx) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_value_ Value props = {};
        size_t running = 0, queued = 0, ended = 0;
        Objects o = {};
        int r, ex;

        r = bus_get_all(ctx, VDISK_PATH, VDISK_IFACE_MANAGER, &error, &props);
        if (r < 0)
                return log_bus_error("Could not read vdiskd's state", &error, r);
        ex = objects_load(ctx, &o);
        if (ex != 0)
                return ex;
        for (size_t i = 0; i < o.n_ops; i++) {
                const char *s = value_str(o.ops[i].props, "State", "");

                if (streq(s, "queued"))
                        queued++;
                else if (streq(s, "succeeded") || streq(s, "failed") || streq(s, "cancelled"))
                        ended++;
                else
                        running++;
        }

        if (arg_output == OUTPUT_JSON) {
                Json j;

                json_begin(&j, stdout, true);
                json_object_open(&j, NULL);
                json_value(&j, "properties", &props);
                json_uint(&j, "disks", o.n_disks);
                json_uint(&j, "images", o.n_images);
                json_uint(&j, "operations-running", running);
                json_uint(&j, "operations-queued", queued);
                json_uint(&j, "operations-ended", ended);
                json_object_close(&j);
                json_end(&j);
        } else {
                const Value *ops = value_get(&props, "SupportedOperations");

                printf("vdiskd %s, %s mode\n", value_str(&props, "Version", "?"),
                       value_str(&props, "Mode", "?"));
                printf("  Formats:\n");
                print_backends(value_get(&props, "Backends"));
                printf("  Operations:");
                for (size_t i = 0; ops && ops->type == VALUE_ARRAY && i < ops->c.n; i++)
                        if (ops->c.items[i].type == VALUE_STRING)
                                printf(" %s", ops->c.items[i].s);
                printf("\n  Workers: %" PRIu64 "; at most %" PRIu64 " operations at once, %" PRIu64
                       " per user\n",
                       value_uint(&props, "Workers", 0), value_uint(&props, "MaxOperations", 0),
                       value_uint(&props, "MaxOperationsPerUser", 0));
                printf("  Now: %zu disk%s, %zu image%s; operations: %zu running, %zu queued, %zu ended\n",
                       o.n_disks, o.n_disks == 1 ? "" : "s", o.n_images, o.n_images == 1 ? "" : "s", running,
                       queued, ended);
        }
        objects_done(&o);
        return EXIT_OK;
}

/* "3" and "operation/3" are operations, "disk/3" and "image/3" what they
 * say; object paths as they are. `operation`: operations only, and any
 * other object path is taken as one. */
static int object_parse(const char *s, bool operation, char **ret_path, const char **ret_iface) {
        static const struct {
                const char *prefix;
                const char *iface;
        } kinds[] = {
                { "operation/", VDISK_IFACE_OPERATION },
                { "disk/",      VDISK_IFACE_DISK },
                { "image/",     VDISK_IFACE_IMAGE },
        };
        const char *rest = s;
        unsigned id;

        *ret_iface = VDISK_IFACE_OPERATION;
        if (operation && sd_bus_object_path_is_valid(s))
                return (*ret_path = strdup(s)) ? 0 : -ENOMEM;
        if (strncmp(rest, VDISK_PATH "/", strlen(VDISK_PATH "/")) == 0)
                rest += strlen(VDISK_PATH "/");
        if (parse_uint(rest, &id) >= 0 && rest == s)
                return asprintf(ret_path, VDISK_PATH "/operation/%u", id) < 0 ? -ENOMEM : 0;
        for (size_t i = 0; i < (operation ? 1 : ELEMENTSOF(kinds)); i++)
                if (strncmp(rest, kinds[i].prefix, strlen(kinds[i].prefix)) == 0 &&
                    parse_uint(rest + strlen(kinds[i].prefix), &id) >= 0) {
                        *ret_iface = kinds[i].iface;
                        return asprintf(ret_path, VDISK_PATH "/%s%u", kinds[i].prefix, id) < 0 ? -ENOMEM : 0;
                }
        return -EINVAL;
}

static int status_object(Ctx *ctx, const char *arg) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_value_ Value props = {};
        _cleanup_free_ char *path = NULL;
        bool json = arg_output == OUTPUT_JSON;
        const Value *images = NULL;
        const char *iface;
        Json j;
        int r;

        r = object_parse(arg, false, &path, &iface);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return usage_error(
                        "'%s' is no operation, disk or image (use N, operation/N, disk/N, image/N "
                        "or an object path)",
                        arg);

        r = bus_get_all(ctx, path, iface, &error, &props);
        if (r < 0)
                return log_bus_error(object_short(path), &error, r);
        if (props.type != VALUE_DICT) {
                log_error("%s: Bad reply from vdiskd", object_short(path));
                return EXIT_FAILURE;
        }
        if (streq(iface, VDISK_IFACE_DISK))
                images = value_get(&props, "Images");
        if (images && images->type != VALUE_ARRAY)
                images = NULL;

        if (json) {
                json_begin(&j, stdout, true);
                json_object_open(&j, NULL);
                json_string(&j, "object", path);
                json_string(&j, "interface", iface);
                json_value(&j, "properties", &props);
                if (images)
                        json_array_open(&j, "images");
        } else {
                printf("%s\n", object_short(path));
                print_properties(&props, 4);
        }
        /* A disk's images follow it. */
        for (size_t i = 0; images && i < images->c.n; i++) {
                _cleanup_bus_error_ sd_bus_error e2 = SD_BUS_ERROR_NULL;
                _cleanup_value_ Value ip = {};
                const char *ipath = images->c.items[i].s;

                if (images->c.items[i].type != VALUE_STRING)
                        continue;
                r = bus_get_all(ctx, ipath, VDISK_IFACE_IMAGE, &e2, &ip);
                if (r < 0) {
                        if (!json)
                                (void) log_bus_error(object_short(ipath), &e2, r);
                } else if (json) {
                        json_object_open(&j, NULL);
                        json_string(&j, "object", ipath);
                        json_value(&j, "properties", &ip);
                        json_object_close(&j);
                } else {
                        printf("\n  %s\n", object_short(ipath));
                        print_properties(&ip, 6);
                }
        }
        if (json) {
                if (images)
                        json_array_close(&j);
                json_object_close(&j);
                json_end(&j);
        }
        return EXIT_OK;
}

int cmd_status(Ctx *ctx, Request *req) {
        if (req->n_args == 0)
                return status_manager(ctx);
        if (req->n_args > 1)
                return usage_error("status takes at most one operation, disk or image");
        return status_object(ctx, req->args[0]);
}

/* ---------------------------------------------------------------- monitor */

typedef struct Monitor {
        Ctx *ctx;
        char *owner;      /* vdiskd's unique name, NULL while it is not running */
        Json json;
} Monitor;

static bool from_daemon(Monitor *mon, sd_bus_message *m) {
        return mon->owner && streq_ptr(sd_bus_message_get_sender(m), mon->owner);
}

static void monitor_prefix(void) {
        char buf[64];
        uint64_t now = now_usec();

        format_timestamp(now, buf);
        /* the time of day is enough here */
        printf("%s ", strlen(buf) > 11 ? buf + 11 : buf);
}

static void monitor_json_begin(Monitor *mon, const char *event, const char *path) {
        json_begin(&mon->json, stdout, false);
        json_object_open(&mon->json, NULL);
        json_uint(&mon->json, "time", now_usec());
        json_string(&mon->json, "event", event);
        if (path)
                json_string(&mon->json, "object", path);
}

static void monitor_json_end(Monitor *mon) {
        json_object_close(&mon->json);
        json_end(&mon->json);
        fflush(stdout);
}

static void describe_added(const char *path, const Value *ifaces) {
        const Value *p;
        char size[32], user[64];

        if ((p = value_get(ifaces, VDISK_IFACE_DISK))) {
                format_size(value_uint(p, "Size", 0), size);
                format_uid((uint32_t) value_uint(p, "OwnerUID", 0), user);
                printf("+ %s \"%s\" %s, owner %s\n", object_short(path), value_str(p, "DisplayName", ""),
                       size, user);
        } else if ((p = value_get(ifaces, VDISK_IFACE_IMAGE))) {
                format_size(value_uint(p, "Size", 0), size);
                printf("+ %s \"%s\" %s %s, %s #%" PRIu64 "\n", object_short(path),
                       value_str(p, "DisplayName", ""), value_str(p, "QemuFormat", "?"), size,
                       object_short(value_str(p, "Disk", "/")), value_uint(p, "Index", 0));
        } else if ((p = value_get(ifaces, VDISK_IFACE_OPERATION))) {
                format_uid((uint32_t) value_uint(p, "StartedByUID", 0), user);
                printf("+ %s %s on %s by %s (%s)\n", object_short(path), value_str(p, "Kind", "?"),
                       object_short(value_str(p, "Disk", "/")), user, value_str(p, "State", "?"));
        } else {
                printf("+ %s", object_short(path));
                for (size_t i = 0; ifaces && i < ifaces->c.n; i++)
                        printf(" %s", ifaces->c.keys[i]);
                putchar('\n');
        }
}

/* InterfacesAdded (o, a{sa{sv}}) and InterfacesRemoved (o, as) alike. */
static int on_interfaces(sd_bus_message *m, Monitor *mon, bool added) {
        _cleanup_value_ Value ifaces = {};
        const char *path;

        if (!from_daemon(mon, m))
                return 0;
        if (sd_bus_message_read(m, "o", &path) < 0 || value_read(m, &ifaces) < 0)
                return 0;
        if (arg_output == OUTPUT_JSON) {
                monitor_json_begin(mon, added ? "added" : "removed", path);
                json_value(&mon->json, "interfaces", &ifaces);
                monitor_json_end(mon);
                return 0;
        }
        monitor_prefix();
        if (added)
                describe_added(path, &ifaces);
        else
                printf("- %s\n", object_short(path));
        fflush(stdout);
        return 0;
}

static int on_interfaces_added(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        return on_interfaces(m, userdata, true);
}

static int on_interfaces_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        return on_interfaces(m, userdata, false);
}

static int on_monitor_properties(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        _cleanup_value_ Value changed = {};
        const char *iface, *path = sd_bus_message_get_path(m);

        if (!from_daemon(mon, m) || !path)
                return 0;
        if (sd_bus_message_read(m, "s", &iface) < 0 || value_read(m, &changed) < 0 ||
            changed.type != VALUE_DICT || changed.c.n == 0)
                return 0;
        if (arg_output == OUTPUT_JSON) {
                monitor_json_begin(mon, "changed", path);
                json_string(&mon->json, "interface", iface);
                json_value(&mon->json, "properties", &changed);
                monitor_json_end(mon);
                return 0;
        }
        monitor_prefix();
        printf("~ %s", object_short(path));
        for (size_t i = 0; i < changed.c.n; i++) {
                printf(" %s=", changed.c.keys[i]);
                print_value_short(stdout, changed.c.keys[i], &changed.c.items[i]);
        }
        putchar('\n');
        fflush(stdout);
        return 0;
}

static int on_monitor_completed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *state, *name, *message, *path = sd_bus_message_get_path(m);

        if (!from_daemon(mon, m) || !path)
                return 0;
        if (sd_bus_message_read(m, "sss", &state, &name, &message) < 0)
                return 0;
        if (arg_output == OUTPUT_JSON) {
                monitor_json_begin(mon, "completed", path);
                json_string(&mon->json, "state", state);
                json_string(&mon->json, "error-name", name);
                json_string(&mon->json, "error-message", message);
                monitor_json_end(mon);
                return 0;
        }
        monitor_prefix();
        if (*name)
                printf("* %s %s: %s (%s)\n", object_short(path), state, *message ? message : name, name);
        else
                printf("* %s %s\n", object_short(path), state);
        fflush(stdout);
        return 0;
}

/* vdiskd sends its signals only to connections that made a call (docs/dbus-api.md
 * "Privacy"): one GetManagedObjects, without starting vdiskd, its reply unused.
 * `wait`: until vdiskd answered (it sends us every event from then on). */
static void monitor_register(Ctx *ctx, bool wait) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_message_new_method_call(ctx->bus, &m, VDISK_BUS_NAME, VDISK_PATH,
                                           "org.freedesktop.DBus.ObjectManager", "GetManagedObjects");
        if (r >= 0)
                r = sd_bus_message_set_auto_start(m, false);
        if (r >= 0)
                r = wait ? sd_bus_call(ctx->bus, m, 0, &error, NULL) : sd_bus_send(ctx->bus, m, NULL);
        if (r < 0)
                log_error("Could not register with vdiskd for its signals: %s",
                          error.message ?: strerror(-r));
}

static int on_monitor_owner(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        Monitor *mon = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || !streq(name, VDISK_BUS_NAME))
                return 0;
        free(mon->owner);
        mon->owner = *new_owner ? strdup(new_owner) : NULL;
        if (*new_owner)
                monitor_register(mon->ctx, false);
        if (arg_output == OUTPUT_JSON) {
                monitor_json_begin(mon, *new_owner ? "started" : "stopped", NULL);
                json_string(&mon->json, "owner", new_owner);
                monitor_json_end(mon);
                return 0;
        }
        monitor_prefix();
        if (*new_owner)
                printf("vdiskd is running (%s)\n", new_owner);
        else
                printf("vdiskd stopped\n");
        fflush(stdout);
        return 0;
}

int cmd_monitor(Ctx *ctx, Request *req) {
        static const char *const rules[] = {
                "type='signal',interface='org.freedesktop.DBus.ObjectManager',member='InterfacesAdded',"
                "path='" VDISK_PATH "'",
                "type='signal',interface='org.freedesktop.DBus.ObjectManager',member='InterfacesRemoved',"
                "path='" VDISK_PATH "'",
                "type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
                "path_namespace='" VDISK_PATH "'",
                "type='signal',interface='" VDISK_IFACE_OPERATION "',member='Completed'",
                "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                "member='NameOwnerChanged',arg0='" VDISK_BUS_NAME "'",
        };
        static const sd_bus_message_handler_t handlers[] = {
                on_interfaces_added,
                on_interfaces_removed,
                on_monitor_properties,
                on_monitor_completed,
                on_monitor_owner,
        };
        sd_bus_slot *slots[ELEMENTSOF(rules)] = {};
        Monitor mon = { .ctx = ctx };
        int r, ex = EXIT_FAILURE;

        if (req->n_args > 0)
                return usage_error("monitor takes no arguments");

        for (size_t i = 0; i < ELEMENTSOF(rules); i++) {
                r = sd_bus_add_match(ctx->bus, &slots[i], rules[i], handlers[i], &mon);
                if (r < 0) {
                        log_error("Could not subscribe to vdiskd's signals: %s", strerror(-r));
                        goto finish;
                }
        }

        /* Who is vdiskd now (without starting it: monitor only watches). */
        if (bus_name_owner(ctx, &mon.owner) >= 0)
                monitor_register(ctx, true);
        if (arg_output == OUTPUT_HUMAN && !arg_quiet) {
                if (mon.owner)
                        printf("Monitoring vdiskd (%s); press Ctrl-C to stop.\n", mon.owner);
                else
                        printf("vdiskd is not running; waiting for it. Press Ctrl-C to stop.\n");
                fflush(stdout);
        }

        while (signals_received == 0) {
                r = bus_step(ctx, UINT64_MAX);
                if (r < 0) {
                        log_error("Lost the connection to the bus: %s", strerror(-r));
                        goto finish;
                }
        }
        ex = EXIT_OK;

finish:
        for (size_t i = 0; i < ELEMENTSOF(slots); i++)
                sd_bus_slot_unref(slots[i]);
        free(mon.owner);
        return ex;
}

/* ---------------------------------------------------------------- cancel */

int cmd_cancel(Ctx *ctx, Request *req) {
        _cleanup_bus_error_ sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_msg_ sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        const char *iface;
        int r;

        if (req->n_args != 1)
                return usage_error("cancel takes one operation");
        r = object_parse(req->args[0], true, &path, &iface);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0)
                return usage_error("'%s' is no operation (use N, operation/N or an object path)",
                                   req->args[0]);

        r = bus_new_simple_call(ctx, path, iface, "Cancel", &m, NULL);
        if (r < 0)
                return log_build_failed(NULL, r);
        r = bus_call(ctx, m, 0, &error, NULL);
        if (r < 0)
                return log_bus_error(object_short(path), &error, r);
        if (!arg_quiet)
                printf("Cancel of %s requested.\n", object_short(path));
        return EXIT_OK;
}
