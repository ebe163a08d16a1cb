/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * --image-opts and --object, as qemu-img takes them.
 *
 * With --image-opts, the image names a command opens are option lists
 * ("driver=qcow2,file.filename=x.qcow2") instead of file names. vdisk-img
 * opens local files only, so it takes the keys that say which file and which
 * format (and which internal snapshot, and a few that change nothing here)
 * and refuses every other key with qemu-img's message, naming the list.
 *
 * --object defines QOM objects. The only ones an image command could use are
 * secrets (for encrypted images, which vdisk does not open anyway): they are
 * checked as qemu-img checks them and kept, so a consumer that always passes
 * its secret works; the other types qemu-img knows are refused, unknown ones
 * with qemu-img's text.
 */

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "img.h"

bool arg_image_opts = false;

/* ---------------------------------------------------------------- --object */

typedef struct ObjectEntry {
        char *id;
        struct ObjectEntry *next;
} ObjectEntry;

/* Whether `s` is one of the strings of the NULL-terminated `list`. */
static bool str_in(const char *s, const char *const *list) {
        for (; *list; list++)
                if (streq(s, *list))
                        return true;
        return false;
}

/* The ids defined so far (reachable until exit: the tool ends soon). */
static ObjectEntry *objects = NULL;

static bool object_defined(const char *id) {
        for (ObjectEntry *o = objects; o; o = o->next)
                if (streq(o->id, id))
                        return true;
        return false;
}

/* qemu's identifiers: a letter, then letters, digits, '-', '.', '_'. */
static bool id_valid(const char *id) {
        if (!isalpha((unsigned char) id[0]))
                return false;
        for (const char *p = id; *p; p++)
                if (!isalnum((unsigned char) *p) && !strchr("-._", *p))
                        return false;
        return true;
}

static int object_check_secret(const OptList *l) {
        static const char *const keys[] = { "id", "data", "file", "format", "keyid", "iv", "loaded", NULL };
        const char *data = optlist_get(l, "data"), *file = optlist_get(l, "file"),
                   *format = optlist_get(l, "format"), *keyid = optlist_get(l, "keyid");

        for (size_t i = 0; i < l->n; i++)
                if (refused(!str_in(optlist_key(l, i), keys), "Parameter '%s' is unexpected", optlist_key(l, i)))
                        return -EINVAL;
        if (refused(format && !streq(format, "raw") && !streq(format, "base64"),
                    "Parameter 'format' does not accept value '%s'", format) ||
            refused(data && file, "'file' and 'data' are mutually exclusive") ||
            refused(!data && !file, "Either 'file' or 'data' must be provided"))
                return -EINVAL;
        if (file && access(file, R_OK) < 0) {
                int r = -errno;

                log_error("Unable to read %s: %s", file, strerror(-r));
                return r;
        }
        if (refused(keyid && !object_defined(keyid), "No secret with id '%s'", keyid))
                return -ENOENT;
        return 0;
}

int object_add(const char *arg) {
        /* The object types qemu-img 7.2 creates, and what vdisk-img does
         * with them: secrets are kept (encrypted images are refused when
         * opened), throttle groups change nothing offline, the rest would
         * need what vdisk-img does not have. */
        static const char *const unsupported[] = {
                "authz-list", "authz-list-file", "authz-simple", "main-loop", "pr-manager-helper",
                "secret_keyring", "thread-context", "tls-cipher-suites", "tls-creds-anon", "tls-creds-psk",
                "tls-creds-x509", NULL,
        };
        _cleanup_(optlist_done) OptList l = {};
        _cleanup_free_ char *type = NULL;
        size_t first;
        const char *id;
        ObjectEntry *e;

        if (arg[0] == '{') {
                log_error("--object: the JSON syntax is not supported by vdisk-img; "
                          "use 'TYPE,id=ID,key=value,...'");
                return -EOPNOTSUPP;
        }
        if (streq(arg, "help") || streq(arg, "?")) {
                printf("List of user creatable objects:\n  secret\n  throttle-group\n");
                return 1;
        }
        /* The first item without '=' is the type ("secret,id=s0"). */
        first = strcspn(arg, ",");
        if (!memchr(arg, '=', first)) {
                type = strndup(arg, first);
                if (!type)
                        return -ENOMEM;
                arg += first + (arg[first] == ',');
        }
        if (refused(optlist_parse(&l, arg) < 0, "Invalid object option list: %s", arg))
                return -EINVAL;
        if (!type) {
                if (refused(!optlist_get(&l, "qom-type"), "Parameter 'qom-type' is missing"))
                        return -EINVAL;
                type = strdup(optlist_get(&l, "qom-type"));
                if (!type)
                        return -ENOMEM;
        }
        (void) optlist_remove(&l, "qom-type");

        id = optlist_get(&l, "id");
        if (refused(!id, "Parameter 'id' is missing"))
                return -EINVAL;
        if (!id_valid(id)) {
                log_error("Parameter 'id' expects an identifier");
                fprintf(stderr, "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.\n");
                return -EINVAL;
        }

        if (streq(type, "secret")) {
                int r = object_check_secret(&l);
                if (r < 0)
                        return r;
        } else if (streq(type, "throttle-group")) {
                /* Rate limits: vdisk-img copies at the disk's speed. */
        } else if (str_in(type, unsupported)) {
                log_error("Object type '%s' is not supported by vdisk-img", type);
                return -EOPNOTSUPP;
        } else {
                log_error("Parameter 'qom-type' does not accept value '%s'", type);
                return -EINVAL;
        }

        if (refused(object_defined(id), "attempt to add duplicate property '%s' to object (type 'container')", id))
                return -EEXIST;
        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->id = strdup(id);
        if (!e->id) {
                free(e);
                return -ENOMEM;
        }
        e->next = objects;
        objects = e;
        return 0;
}

/* ---------------------------------------------------------------- --image-opts */

typedef struct ParsedName {
        char *path;
        char *format;
        char *snapshot;
        struct ParsedName *next;
} ParsedName;

/* Kept until exit: an Img borrows the path as its file name. */
static ParsedName *parsed_names = NULL;

#define LOG(...) do { if (!quiet) log_error(__VA_ARGS__); } while (0)

int image_opts_parse(const char *spec, bool quiet, const char **ret_path, const char **ret_format,
                     const char **ret_snapshot) {
        _cleanup_(optlist_done) OptList l = {};
        _cleanup_free_ char *snapshot = NULL;
        const char *driver, *proto, *path, *sid, *sname;
        ParsedName *p;
        bool format_is_file;

        if (optlist_parse(&l, spec) < 0 || l.help) {
                LOG("Could not open '%s': Invalid image options", spec);
                return -EINVAL;
        }
        /* A bare word is a key switched on: qemu looks for a device of that
         * name, which an offline tool never has. */
        if (l.n == 1 && streq(optlist_value(&l, 0), "on") && !strchr(spec, '=')) {
                LOG("Could not open '%s': Cannot find device='%s' nor node-name='%s'", spec, spec, spec);
                return -ENOENT;
        }

        driver = optlist_get(&l, "driver");
        proto = optlist_get(&l, "file.driver");
        format_is_file = driver && streq(driver, "file");
        if (driver && !format_is_file && !vdisk_backend_find(driver)) {
                LOG("Could not open '%s': Unknown driver '%s'", spec, driver);
                return -EMEDIUMTYPE;
        }
        if (proto && !streq(proto, "file")) {
                LOG("Could not open '%s': Block protocol '%s' is not supported by vdisk-img "
                          "(it opens local files: file.driver=file)", spec, proto);
                return -EOPNOTSUPP;
        }

        path = format_is_file ? optlist_get(&l, "filename") : optlist_get(&l, "file.filename");
        if (!path) {
                if (format_is_file)
                        LOG("Could not open '%s': Parameter 'filename' is required", spec);
                else
                        LOG("Could not open '%s': A block device must be specified for \"file\"", spec);
                return -EINVAL;
        }
        sid = optlist_get(&l, "snapshot.id");
        sname = optlist_get(&l, "snapshot.name");

        for (size_t i = 0; i < l.n; i++) {
                /* Keys that change nothing for vdisk-img (its own defaults
                 * already do what they ask, or they concern a running VM). */
                static const char *const ignored[] = {
                        "read-only", "auto-read-only", "force-share", "cache.direct", "cache.no-flush",
                        "discard", "detect-zeroes", "node-name", "file.node-name", "file.aio", "file.locking",
                        "file.cache.direct", "file.cache.no-flush", "file.read-only", "file.auto-read-only",
                        "file.discard", "file.pr-manager", "file.x-check-cache-dropped", NULL,
                };
                const char *key = optlist_key(&l, i);

                if (streq(key, "driver") || str_in(key, ignored))
                        continue;
                if (format_is_file ? streq(key, "filename")
                                   : streq(key, "file.filename") || streq(key, "file.driver") ||
                                     streq(key, "snapshot.id") || streq(key, "snapshot.name"))
                        continue;
                if (strstr(key, "encrypt.") == key || streq(key, "key-secret")) {
                        LOG("Could not open '%s': Encrypted images are not supported by vdisk-img "
                                  "(option '%s')", spec, key);
                        return -EOPNOTSUPP;
                }
                if (strncmp(key, "file.", 5) == 0 || format_is_file)
                        LOG("Could not open '%s': Block protocol 'file' doesn't support the option '%s'",
                                  spec, format_is_file ? key : key + 5);
                else
                        LOG("Could not open '%s': Block format '%s' does not support the option '%s'",
                                  spec, driver ?: "raw", key);
                return -EINVAL;
        }

        /* The -l spec of the keys given: "snapshot.id=ID", "snapshot.name=NAME" or both. */
        if ((sid || sname) && asprintf(&snapshot, "%s%s%s%s%s", sid ? "snapshot.id=" : "", sid ?: "",
                                       sid && sname ? "," : "", sname ? "snapshot.name=" : "", sname ?: "") < 0) {
                snapshot = NULL;
                return -ENOMEM;
        }

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->path = strdup(path);
        p->format = driver && !format_is_file ? strdup(driver) : format_is_file ? strdup("raw") : NULL;
        p->snapshot = TAKE_PTR(snapshot);
        p->next = parsed_names;
        parsed_names = p;
        if (!p->path || (driver && !p->format))
                return -ENOMEM;
        *ret_path = p->path;
        *ret_format = p->format;
        *ret_snapshot = p->snapshot;
        return 0;
}

#undef LOG
